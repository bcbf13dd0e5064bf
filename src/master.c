/* master.c — see master.h. Plain POSIX (fork, signalfd, poll): no libuv
 * loop exists in the master, so a forked worker starts with a clean slate. */
#include "master.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

#define RESTART_MIN_MS 100
#define RESTART_MAX_MS 5000
#define STABLE_MS 1000 /* a worker that ran this long is restarted at once */

typedef struct slot {
    pid_t pid;            /* 0: not running */
    uint64_t started_ms;
    uint64_t restart_at;  /* when pid == 0 and not stopping: fork again at this time */
    unsigned delay_ms;    /* the next restart delay after a quick death */
    int ready, reloading;
} slot;

typedef struct master {
    const sh_master_opts *mo;
    slot slots[128];
    int sfd, nfd[2];      /* signalfd; notify socket pair: [0] master, [1] workers */
    sigset_t oldmask;
    pid_t pid;
    int stopping, reloading, ready_sent, ever_ready, exit_status;
} master;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Bind (without listening) the way the workers will, so that an address
 * that cannot work is one clear line before anything is forked. */
static int precheck_address(const sh_master_opts *mo)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    const char *host = strcmp(mo->listen_host, "localhost") ? mo->listen_host : "127.0.0.1";
    int family = strchr(host, ':') ? AF_INET6 : AF_INET;
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)mo->listen_port);
        len = sizeof *a;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            goto bad;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)mo->listen_port);
        len = sizeof *a;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            goto bad;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0) {
        fprintf(stderr, "statushost: listen %s:%d: %s\n", mo->listen_host, mo->listen_port,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
bad:
    fprintf(stderr, "statushost: listen %s:%d: not a numeric address\n", mo->listen_host,
            mo->listen_port);
    return -1;
}

static sigset_t worker_mask; /* a worker's signal mask once it handles signals */

void sh_master_worker_started(void)
{
    sigprocmask(SIG_SETMASK, &worker_mask, NULL);
}

/* In the child: undo the master's signal set-up and tie its life to ours. */
static void become_worker(master *m, int index)
{
    close(m->sfd);
    close(m->nfd[0]);
    signal(SIGINT, SIG_IGN); /* the master turns a terminal's Ctrl-C into SIGTERM */
    /* SIGTERM and SIGHUP stay blocked until the server handles them
     * (sh_master_worker_started): one forwarded meanwhile waits, not kills */
    sigset_t mask = m->oldmask;
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    worker_mask = m->oldmask;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != m->pid) /* the master died before prctl */
        _exit(1);
    sh_notify_to_master(m->nfd[1], index);
}

/* Fork worker i. Returns 1 in the child, 0 in the master. */
static int spawn(master *m, int i)
{
    sh_log_flush();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        sh_error(NULL, "master: fork worker %d: %s; retrying", i, strerror(errno));
        m->slots[i].restart_at = now_ms() + RESTART_MAX_MS;
        return 0;
    }
    if (pid == 0) {
        become_worker(m, i);
        return 1;
    }
    slot *s = &m->slots[i];
    s->pid = pid;
    s->started_ms = now_ms();
    s->ready = s->reloading = 0;
    sh_info(NULL, "master: worker %d started (pid %d)", i, (int)pid);
    return 0;
}

static void forward(master *m, int sig)
{
    for (unsigned i = 0; i < m->mo->workers; i++)
        if (m->slots[i].pid > 0)
            kill(m->slots[i].pid, sig);
}

static unsigned live(const master *m)
{
    unsigned n = 0;
    for (unsigned i = 0; i < m->mo->workers; i++)
        n += m->slots[i].pid > 0;
    return n;
}

static void shutdown_all(master *m, int signum)
{
    if (m->stopping) {
        sh_warn(NULL, "master: second signal: workers exit now");
    } else {
        m->stopping = 1;
        sh_notify("STOPPING=1");
        sh_info(NULL, "master: signal %d: stopping %u worker(s)", signum, live(m));
    }
    forward(m, SIGTERM);
}

/* READY=1 to systemd once every worker is listening (and again after a
 * reload once every worker has answered it). */
static void check_ready(master *m)
{
    if (m->stopping)
        return;
    for (unsigned i = 0; i < m->mo->workers; i++) {
        const slot *s = &m->slots[i];
        if (!s->ready || (m->reloading && s->pid > 0 && s->reloading))
            return;
    }
    if (!m->ready_sent) {
        m->ready_sent = 1;
        sh_info(NULL, "master: %u workers listening on %s:%d", m->mo->workers,
                m->mo->listen_host, m->mo->listen_port);
        sh_notify("READY=1");
    } else if (m->reloading) {
        m->reloading = 0;
        sh_info(NULL, "master: every worker answered the reload");
        sh_notify("READY=1");
    }
}

static void on_notify(master *m)
{
    char buf[512];
    ssize_t n;
    while ((n = recv(m->nfd[0], buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
        buf[n] = '\0';
        char *state;
        long i = strtol(buf, &state, 10);
        if (i < 0 || i >= (long)m->mo->workers || *state != ' ')
            continue;
        slot *s = &m->slots[i];
        if (strstr(state, "READY=1")) {
            s->ready = 1;
            s->reloading = 0;
            if (s->pid > 0)
                m->ever_ready = 1;
        }
    }
    check_ready(m);
}

static void describe(int status, char *out, size_t outsz)
{
    if (WIFEXITED(status))
        snprintf(out, outsz, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, outsz, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(out, outsz, "ended (status 0x%x)", status);
}

static void reap(master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        unsigned i;
        for (i = 0; i < m->mo->workers && m->slots[i].pid != pid; i++)
            ;
        if (i == m->mo->workers)
            continue;
        slot *s = &m->slots[i];
        char how[128];
        describe(status, how, sizeof how);
        s->pid = 0;
        s->reloading = 0;
        int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (m->stopping) {
            if (!clean && m->exit_status == 0)
                m->exit_status = 1;
            sh_log(clean ? SH_LOG_INFO : SH_LOG_WARN, NULL, "master: worker %u (pid %d) %s", i,
                   (int)pid, how);
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2 && !m->ever_ready) {
            sh_error(NULL, "master: worker %u (pid %d) %s before any worker was ready: stopping",
                     i, (int)pid, how);
            m->exit_status = 2;
            shutdown_all(m, SIGTERM);
            continue;
        }
        uint64_t ran = now_ms() - s->started_ms;
        if (ran >= STABLE_MS)
            s->delay_ms = 0;
        else
            s->delay_ms = s->delay_ms ? (s->delay_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS
                                                                          : s->delay_ms * 2)
                                      : RESTART_MIN_MS;
        s->restart_at = now_ms() + s->delay_ms;
        sh_log(SH_LOG_WARN, NULL, "master: worker %u (pid %d) %s after %llu ms; restarting in %u ms",
               i, (int)pid, how, (unsigned long long)ran, s->delay_ms);
    }
    check_ready(m);
}

static void on_signals(master *m)
{
    struct signalfd_siginfo si;
    while (read(m->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap(m);
            break;
        case SIGHUP:
            if (m->stopping)
                break;
            sh_info(NULL, "master: SIGHUP: reloading %u worker(s)", live(m));
            sh_notify("RELOADING=1");
            m->reloading = 1;
            for (unsigned i = 0; i < m->mo->workers; i++)
                m->slots[i].reloading = m->slots[i].pid > 0;
            forward(m, SIGHUP);
            check_ready(m);
            break;
        default:
            shutdown_all(m, (int)si.ssi_signo);
        }
    }
}

int sh_master_run(const sh_master_opts *mo, int *index)
{
    if (mo->listen_port == 0) {
        fprintf(stderr, "statushost: workers=%u needs a fixed port in listen (with port 0 "
                        "each worker would listen on a different one)\n", mo->workers);
        return 2;
    }
    if (mo->workers < 2 || mo->workers > sizeof ((master *)0)->slots / sizeof(slot)) {
        fprintf(stderr, "statushost: workers=%u: expected 2..128 here\n", mo->workers);
        return 2;
    }
    if (precheck_address(mo) != 0)
        return 2;
    static master m;
    memset(&m, 0, sizeof m);
    m.mo = mo;
    m.pid = getpid();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, &m.oldmask) != 0 ||
        (m.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
        socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, m.nfd) != 0) {
        fprintf(stderr, "statushost: master: %s\n", strerror(errno));
        return 2;
    }
    sh_info(NULL, "master: pid %d, starting %u workers on %s:%d", (int)m.pid, mo->workers,
            mo->listen_host, mo->listen_port);
    for (unsigned i = 0; i < mo->workers; i++)
        if (spawn(&m, (int)i)) {
            *index = (int)i;
            return -1;
        }
    uint64_t wd_ms = sh_notify_watchdog_usec() / 2000, wd_next = now_ms();
    while (live(&m) > 0 || !m.stopping) {
        uint64_t now = now_ms(), next = UINT64_MAX;
        if (wd_ms) {
            if (now >= wd_next) {
                sh_notify("WATCHDOG=1");
                wd_next = now + wd_ms;
            }
            next = wd_next;
        }
        for (unsigned i = 0; i < mo->workers && !m.stopping; i++) {
            slot *s = &m.slots[i];
            if (s->pid > 0)
                continue;
            if (s->restart_at <= now) {
                if (spawn(&m, (int)i)) {
                    *index = (int)i;
                    return -1;
                }
            } else if (s->restart_at < next) {
                next = s->restart_at;
            }
        }
        struct pollfd p[2] = {{m.sfd, POLLIN, 0}, {m.nfd[0], POLLIN, 0}};
        int timeout = next == UINT64_MAX ? -1 : (int)(next > now ? next - now : 0);
        if (poll(p, 2, timeout) < 0 && errno != EINTR) {
            sh_error(NULL, "master: poll: %s", strerror(errno));
            break;
        }
        if (p[1].revents & POLLIN)
            on_notify(&m);
        if (p[0].revents & POLLIN)
            on_signals(&m);
    }
    sh_info(NULL, "master: every worker has exited; stopped (status %d)", m.exit_status);
    close(m.sfd);
    close(m.nfd[0]);
    close(m.nfd[1]);
    return m.exit_status;
}
