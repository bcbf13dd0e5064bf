/* master.h — several worker processes on one listen address (workers > 1).
 *
 * nginx's model: a small master forks N workers; each is a whole statushost
 * (its own loop, Redis connections, random instance id, Lua states) that
 * listens on the same address with SO_REUSEPORT, so the kernel spreads new
 * connections over them. The master binds nothing (it only test-binds the
 * address once, for a clear error before forking), and then:
 *
 *   SIGHUP          → forwarded to every worker (each reloads its script and
 *                     re-reads --config)
 *   SIGTERM/SIGINT  → SIGTERM to every worker (graceful: 1001, grace period);
 *                     a second one is forwarded again (workers exit at once);
 *                     the master exits when the last worker has: 0, or 1 when
 *                     a worker exited abnormally after the shutdown began
 *   a worker dies   → logged with its pid and exit status or signal, and
 *                     restarted: at once when it had run for 1 s or more,
 *                     else after a delay doubling from 100 ms to 5 s
 *   a worker exits 2 before any worker was ever ready (it could not listen,
 *                   say) → every worker is stopped and the master exits 2
 *
 * Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
 * group: the master turns it into one SIGTERM) and get SIGTERM when the
 * master dies (PR_SET_PDEATHSIG). Readiness: workers send their sd_notify
 * states to the master over a datagram socket (notify.h); the master tells
 * systemd READY=1 once every worker is listening, RELOADING=1 … READY=1
 * around a forwarded SIGHUP (READY=1 once every worker has reloaded or kept
 * its generation), STOPPING=1 at shutdown, and sends WATCHDOG=1 itself. */
#ifndef SH_MASTER_H
#define SH_MASTER_H

#include <stddef.h>

typedef struct sh_master_opts {
    unsigned workers;          /* 2..128 */
    const char *listen_host;   /* from the merged config */
    int listen_port;           /* 0 is refused: each worker would get its own port */
} sh_master_opts;

/* Run the master. In the master, returns its exit status (0, 1 or 2) once
 * every worker has exited. In a forked worker, returns -1 with *index set
 * (0..workers-1): the caller goes on as a server. */
int sh_master_run(const sh_master_opts *mo, int *index);

/* In a worker, once its server handles SIGTERM and SIGHUP: unblock them (they
 * are blocked from the fork on, so one the master forwards while the worker
 * starts is delivered then instead of killing it). */
void sh_master_worker_started(void);

#endif
