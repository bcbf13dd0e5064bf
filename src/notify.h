/* notify.h — systemd service notification (sd_notify(3)): readiness, reload,
 * stop, status and the watchdog. Without $NOTIFY_SOCKET (not started by
 * systemd as Type=notify) every call is a no-op.
 *
 * Where the server calls it:
 *   READY=1        once listening and Redis has answered (or the start-up wait passed)
 *   RELOADING=1    when SIGHUP starts a reload (MONOTONIC_USEC= is added), then
 *   READY=1        when it ended (loaded or kept the old generation)
 *   STOPPING=1     when the shutdown starts
 *   WATCHDOG=1     from a loop timer at half of $WATCHDOG_USEC (sh_notify_watchdog_start) */
#ifndef SH_NOTIFY_H
#define SH_NOTIFY_H

#include <stdint.h>

typedef struct uv_loop_s uv_loop_t;

/* Send state ("READY=1", "STOPPING=1", "STATUS=…", several joined by '\n').
 * "RELOADING=1" gets MONOTONIC_USEC=<now> appended (systemd ≥ 253 wants it).
 * Returns 1 when sent, 0 when there is no notify socket, -1 on error. */
int sh_notify(const char *state);

/* In a worker under a master (--workers): send every state to the master
 * instead, as one datagram "<index> <state>" on fd, and forget systemd's
 * NOTIFY_SOCKET and WATCHDOG_* (the master speaks to systemd). */
void sh_notify_to_master(int fd, int index);

/* printf-style sh_notify, e.g. sh_notifyf("STATUS=%zu connections", n). */
int sh_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd asks for (WatchdogSec=), in microseconds, or
 * 0 when the watchdog is off or meant for another process (WATCHDOG_PID). */
uint64_t sh_notify_watchdog_usec(void);

/* Start a loop timer (unreferenced: it never keeps the loop alive) sending
 * WATCHDOG=1 at half the interval; nothing when the watchdog is off. A loop
 * that stalls stops the pings, and systemd restarts the service. */
void sh_notify_watchdog_start(uv_loop_t *loop);
/* Stop and close that timer (the loop must run once more for the close). */
void sh_notify_watchdog_stop(void);

#endif
