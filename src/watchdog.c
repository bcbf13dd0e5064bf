/* watchdog.c — see watchdog.h. */
#include "watchdog.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uv_timer_t tick;
static uv_thread_t thread;
static uv_mutex_t mu;
static uv_cond_t cv;
static int running, stop_flag;
static uint64_t stall_ns;
static _Atomic uint64_t heartbeat;          /* uv_hrtime() of the last tick */
static _Atomic(const char *) note_what;
static char note_conn[32];

static void on_tick(uv_timer_t *t)
{
    (void)t;
    atomic_store(&heartbeat, uv_hrtime());
}

static void watch(void *arg)
{
    (void)arg;
    uv_mutex_lock(&mu);
    while (!stop_flag) {
        uv_cond_timedwait(&cv, &mu, stall_ns / 4);
        if (stop_flag)
            break;
        uint64_t now = uv_hrtime(), hb = atomic_load(&heartbeat);
        if (now > hb && now - hb > stall_ns) {
            const char *what = atomic_load(&note_what);
            char line[256];
            int n = snprintf(line, sizeof line,
                             "statushost: the event loop has been stuck for %llums (loop_stall_ms) "
                             "in %s%s%s: aborting\n",
                             (unsigned long long)((now - hb) / 1000000),
                             what ? what : "C code (no Lua hook running)",
                             what && note_conn[0] ? " of connection " : "",
                             what ? note_conn : "");
            if (n > 0)
                (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
            abort();
        }
    }
    uv_mutex_unlock(&mu);
}

int sh_watchdog_start(uv_loop_t *loop, uint64_t stall_ms)
{
    if (!stall_ms || running)
        return 0;
    stall_ns = stall_ms * 1000000ull;
    atomic_store(&heartbeat, uv_hrtime());
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, stall_ms / 4 ? stall_ms / 4 : 1, stall_ms / 4 ? stall_ms / 4 : 1);
    uv_unref((uv_handle_t *)&tick);
    if (uv_mutex_init(&mu) || uv_cond_init(&cv))
        return UV_ENOMEM;
    stop_flag = 0;
    int rc = uv_thread_create(&thread, watch, NULL);
    if (rc != 0) {
        uv_close((uv_handle_t *)&tick, NULL);
        return rc;
    }
    running = 1;
    return 0;
}

void sh_watchdog_stop(void)
{
    if (!running)
        return;
    uv_mutex_lock(&mu);
    stop_flag = 1;
    uv_cond_signal(&cv);
    uv_mutex_unlock(&mu);
    uv_thread_join(&thread);
    uv_cond_destroy(&cv);
    uv_mutex_destroy(&mu);
    uv_close((uv_handle_t *)&tick, NULL);
    running = 0;
}

void sh_watchdog_note(const char *what, const char *conn_id)
{
    if (what && conn_id) { /* copied: the id may be gone when the thread reads it */
        size_t n = strnlen(conn_id, sizeof note_conn - 1);
        memcpy(note_conn, conn_id, n);
        note_conn[n] = '\0';
    } else if (what) {
        note_conn[0] = '\0';
    }
    atomic_store(&note_what, what);
}
