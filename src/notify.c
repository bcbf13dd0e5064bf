/* notify.c — see notify.h. The datagram to $NOTIFY_SOCKET is sent here, never
 * blocking (libsystemd's sd_notify() waits when nobody reads the socket: the loop
 * then stalled until the watchdog aborted the process); libsystemd parses
 * WATCHDOG_USEC. */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <systemd/sd-daemon.h>
#include <uv.h>

#include "log.h"

static int master_fd = -1; /* a worker's end of the master's notify socket */
static int worker_index;

void sh_notify_to_master(int fd, int index)
{
    master_fd = fd;
    worker_index = index;
    unsetenv("NOTIFY_SOCKET"); /* systemd hears the master only (NotifyAccess=main) */
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

/* state as one datagram to $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace),
 * from a non-blocking socket made once: a socket nobody reads loses the message (EAGAIN)
 * instead of holding the loop. 1 sent, 0 no NOTIFY_SOCKET, or -errno. */
static int notify_send(const char *state)
{
    static int fd = -1;
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path)
        return -EAFNOSUPPORT;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    if (fd < 0 && (fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if (sendto(fd, state, strlen(state), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa,
               len) < 0)
        return -errno;
    return 1;
}

int sh_notify(const char *state)
{
    char buf[512];
    if (master_fd >= 0) {
        int n = snprintf(buf, sizeof buf, "%d %s", worker_index, state);
        if (n > 0 && (size_t)n < sizeof buf && send(master_fd, buf, (size_t)n, MSG_DONTWAIT) == n)
            return 1;
        sh_debug(NULL, "notify master: %s", strerror(errno));
        return -1;
    }
    if (strncmp(state, "RELOADING=1", 11) == 0 && !strstr(state, "MONOTONIC_USEC=")) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(buf, sizeof buf, "%s\nMONOTONIC_USEC=%llu", state,
                 (unsigned long long)ts.tv_sec * 1000000ull +
                     (unsigned long long)ts.tv_nsec / 1000ull);
        state = buf;
    }
    int rc = notify_send(state);
    if (rc < 0) {
        sh_debug(NULL, "notify: %s", strerror(-rc));
        return -1;
    }
    return rc > 0;
}

int sh_notifyf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return sh_notify(buf);
}

uint64_t sh_notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    /* checks WATCHDOG_PID against our pid; 0 when unset or someone else's */
    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec;
}

static uv_timer_t wd_timer;
static int wd_open;

static void on_watchdog(uv_timer_t *h)
{
    (void)h;
    sh_notify("WATCHDOG=1");
}

void sh_notify_watchdog_start(uv_loop_t *loop)
{
    uint64_t usec = sh_notify_watchdog_usec();
    if (usec == 0 || wd_open)
        return;
    uint64_t ms = usec / 2000;
    if (ms == 0)
        ms = 1;
    uv_timer_init(loop, &wd_timer);
    uv_update_time(loop); /* the loop's time is from before the start-up's work: a timer
                           * due from it would ping again at once (seen under valgrind) */
    uv_timer_start(&wd_timer, on_watchdog, ms, ms);
    uv_unref((uv_handle_t *)&wd_timer);
    wd_open = 1;
    sh_notify("WATCHDOG=1");
    sh_info(NULL, "systemd watchdog: pinging every %llums", (unsigned long long)ms);
}

void sh_notify_watchdog_stop(void)
{
    if (!wd_open)
        return;
    uv_timer_stop(&wd_timer);
    uv_close((uv_handle_t *)&wd_timer, NULL);
    wd_open = 0;
}
