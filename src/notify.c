/* notify.c — see notify.h. libsystemd's sd_notify() does the datagram,
 * the abstract-namespace socket names and the credentials. */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    int rc = sd_notify(0, state);
    if (rc < 0) {
        sh_debug(NULL, "sd_notify: %s", strerror(-rc));
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
    sd_notify(0, "WATCHDOG=1");
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
    sd_notify(0, "WATCHDOG=1");
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
