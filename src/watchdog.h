/* watchdog.h — a thread that notices a stuck event loop.
 *
 * The loop bumps a heartbeat from an (unreferenced) timer every stall_ms/4.
 * When the heartbeat has not moved for stall_ms — a hook spinning inside one
 * C call the instruction budget cannot see, such as string.match with a
 * pathological pattern on a large message — the thread writes one line
 * naming what was running and aborts the process, for a supervisor (systemd,
 * or the master process) to restart it. Every other client would otherwise
 * wait forever. */
#ifndef SH_WATCHDOG_H
#define SH_WATCHDOG_H

#include <stdint.h>

#include <uv.h>

/* Start watching loop (stall_ms 0: do nothing). Returns 0 or a libuv error. */
int sh_watchdog_start(uv_loop_t *loop, uint64_t stall_ms);
/* Stop the thread and close the timer (the loop runs the close). */
void sh_watchdog_stop(void);
/* What the loop is running now, for the abort line (static strings or a
 * buffer that lives as long as the run); NULL when back in the loop. */
void sh_watchdog_note(const char *what, const char *conn_id);

#endif
