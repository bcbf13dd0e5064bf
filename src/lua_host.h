/* lua_host.h — script generations, the tasks that run Lua, and the one
 * place Lua is resumed.
 *
 * A generation (sh_gen) is one loaded copy of the policy script: a Lua state,
 * its hooks, its merged config and the transport limits taken from it. The
 * host's current generation serves new connections; SIGHUP makes a new one
 * current, and an old generation is closed when its last connection, task,
 * timer and subscription are gone (reference counted).
 *
 * A task (sh_task) is one coroutine running one hook call (or a timer
 * callback, a subscription callback, host.spawn). Tasks never run nested:
 * starting a task, and waking one, only queues it (the "posted" queue, as
 * lua-nginx-module's posted threads); the queue is run from the loop (a
 * uv_check handle, with a uv_idle handle keeping the poll from blocking while
 * tasks are ready). So no Lua runs inside a close, inside a transport event,
 * or on another task's C frames.
 *
 * A host call that waits suspends its task with sh_task_suspend(), naming a
 * cancel function; the completion pushes its results and calls
 * sh_task_wake(). Every suspended task is woken exactly once: with its
 * result, or with nil, "closed" when its owner ends or the generation shuts
 * down (the cancel function then releases the I/O).
 *
 * An owner (sh_owner) is what tasks, timers and subscriptions belong to: a
 * connection (embedded in the policy layer's per-connection state), or none.
 * When an owner ends, its suspended tasks are woken with nil, "closed" and
 * its later waits fail at once.
 *
 * Each run between two yields is limited to lua_max_instructions, and each
 * generation's memory to lua_max_memory; exceeding either is a Lua error in
 * the task that did it. */
#ifndef SH_LUA_HOST_H
#define SH_LUA_HOST_H

#include <lua.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "http_client.h"
#include "metrics.h"
#include "redis_bus.h"

struct sh_redis_bus;
struct sh_http_client;
struct sh_timer;
struct sh_sub;
typedef struct sh_task sh_task;
typedef struct sh_gen sh_gen;

enum sh_hook {
    SH_HOOK_HANDSHAKE, /* on_handshake(req) → nil | true | false, status[, body[, headers]] */
    SH_HOOK_OPEN,      /* on_open(conn) */
    SH_HOOK_MESSAGE,   /* on_message(conn, text); absent: close 1003 */
    SH_HOOK_BINARY,    /* on_binary(conn, data); absent: close 1003 */
    SH_HOOK_PUBLISH,   /* on_publish(conn, channel, payload) */
    SH_HOOK_CLOSE,     /* on_close(conn, code, reason) */
    SH_HOOK_COUNT
};

/* The I/O the Lua layer waits on, behind one table of functions: the server
 * fills it with libuv timers, the Redis bus and the HTTP client (host_io.c);
 * the policy test kit (kit.c) with a virtual clock, a simulated Redis and a
 * simulated remote. Callbacks follow the contracts of redis_bus.h and
 * http_client.h: never from inside the call that registered them; a
 * cancelled operation calls nothing. ctx is sh_host.io_ctx. */
typedef struct sh_host_io {
    double (*wall)(void *ctx);    /* seconds since the epoch (host.now) */
    /* a one-shot timer: fire(arg) after ms, unless stopped first (NULL: no memory) */
    void *(*timer_start)(void *ctx, uint64_t ms, void (*fire)(void *arg), void *arg);
    void (*timer_stop)(void *ctx, void *timer);
    int (*redis_up)(void *ctx);
    /* as sh_redis_command / _cmd_cancel / _subscribe / _unsubscribe */
    int (*redis_command)(void *ctx, int argc, const char **argv, const size_t *lens,
                         sh_redis_reply_cb cb, void *arg, void **cmd);
    void (*redis_cancel)(void *ctx, void *cmd);
    int (*redis_subscribe)(void *ctx, const char *ch, size_t len, sh_redis_msg_cb on_msg,
                           sh_redis_confirm_cb on_confirm, void *arg, void **sub);
    void (*redis_unsubscribe)(void *ctx, void *sub);
    /* as sh_http_request / sh_http_call_cancel */
    int (*http_request)(void *ctx, const sh_http_opts *o, sh_http_cb cb, void *arg, void **call);
    void (*http_cancel)(void *ctx, void *call);
} sh_host_io;

/* What the Lua layer uses of the process: given by the server, which owns
 * everything in it. loop is NULL for `--check` (nothing runs). */
typedef struct sh_host {
    uv_loop_t *loop;
    sh_metrics *metrics;
    const sh_host_io *io;         /* the I/O backend (set before a task runs) */
    void *io_ctx;
    struct sh_redis_bus *bus;     /* the server's, for host_io.c (NULL: "unavailable") */
    struct sh_http_client *http;
    char instance[17];            /* this process' id prefix */
    sh_gen *gens;                 /* every live generation */
    unsigned next_gen_id;
    sh_task *ready, *ready_tail;  /* posted tasks, in order */
    uv_check_t runner;            /* runs the posted tasks after each poll */
    uv_idle_t waker;              /* active while tasks are ready: the poll does not block */
    int started;                  /* the handles are open */
    int closing;                  /* close them once the queue is empty */
} sh_host;

/* An owner of tasks, timers and subscriptions. Zero-initialise, then set
 * the callbacks. */
typedef struct sh_owner {
    sh_task *tasks;               /* tasks it owns */
    struct sh_timer *timers;      /* host.timer handles it owns */
    struct sh_sub *subs;          /* subscriptions it holds */
    size_t ntasks;                /* of tasks */
    size_t nwaiting;              /* of which suspended in a host call */
    int gone;                     /* ended: its new waits fail with "closed" */
    char id[SH_ID_LEN + 1];       /* for log lines */
    /* a task it owns raised (logged already) */
    void (*failed)(struct sh_owner *o);
    /* a message arrived on a subscription it holds that has no callback */
    void (*deliver)(struct sh_owner *o, const char *channel, size_t channel_len,
                    const char *payload, size_t payload_len);
} sh_owner;

/* Small Lua blocks (up to 264 bytes, in malloc's 16-byte classes) freed by a state are kept
 * for its next allocations, up to SH_BLK_HELD_MAX bytes: most of what Lua allocates
 * per event (strings, tables, closures) is this small and short-lived. */
#define SH_BLK_CLASSES 16
#define SH_BLK_HELD_MAX (512 * 1024)

struct sh_gen {
    sh_host *host;               /* NULL for --check */
    lua_State *L;
    unsigned id;                 /* 1, 2, ... per successful load */
    int refs;                    /* host (while current) + connections + tasks + timers + subs */
    sh_config cfg;               /* core keys of the merged config */
    sh_limits limits;            /* the transport's view of cfg */
    struct sh_cidr *real_ip;     /* real_ip_from, parsed */
    size_t nreal_ip;
    int hook_ref[SH_HOOK_COUNT]; /* registry refs, LUA_NOREF when absent */
    int routes_ref;              /* registry ref of `routes`, LUA_NOREF when absent */
    int track_ref;               /* registry ref of lua_api.c's track_update_p closure */
    sh_owner detached;           /* owner of what belongs to no connection */
    lua_State **pool;            /* idle threads, anchored in pool_ref table */
    int npool;
    int pool_ref;                /* registry table: thread → true (anchors) */
    int loading;                 /* the main chunk runs: no tasks, timers or waits */
    int closing;                 /* shutting down: new waits fail with "closed" */
    int exiting;                 /* serves no new connection (reloaded, or a graceful stop):
                                  * host.exiting() */
    size_t mem, mem_max;         /* bytes the state uses; cap while tasks run (0: none) */
    uint64_t grows;              /* allocations that grew the state, ever (lua_api.c's track memo) */
    void *blk_free[SH_BLK_CLASSES]; /* freed small blocks of the state, per size class */
    size_t blk_bytes;            /* bytes held in blk_free (at most SH_BLK_HELD_MAX) */
    int capped;                  /* the cap applies now (a task runs) */
    uint64_t refused_ns;         /* uv_hrtime() of the allocation the cap refused (0: none): */
    const void *refused_ptr;     /* Lua collects in full and asks again for the same block */
    size_t refused_osize, refused_nsize;
    long refused_run;            /* sh_budget_run() of that refusal */
    uint64_t last_full_gc;       /* uv_hrtime() of the last collection forced near the cap */
    sh_task *tasks;              /* live tasks */
    sh_task *running;            /* the task whose run is under way (NULL between runs) */
    sh_gen *next_gen, *prev_gen; /* in host->gens */
};

/* Host work done while a task runs (a close the transport reports from inside
 * conn:send, a task aborted by conn:unsubscribe): its Lua allocations are the
 * host's, made where no handler could catch a raise, so lua_max_memory must not
 * refuse them. sh_gen_uncap lifts the cap and returns what sh_gen_recap puts back. */
static inline int sh_gen_uncap(sh_gen *g)
{
    int was = g->capped;
    g->capped = 0;
    return was;
}
static inline void sh_gen_recap(sh_gen *g, int was) { g->capped = was; }

/* 1 when the work in flight holds 7/8 of g's lua_max_memory (the rule of lua_api.c's
 * near_cap), even after a full collection (at most one per 100 ms), so that new work of
 * len bytes (an update for a hook or a host.subscribe callback) is refused before it
 * allocates: a refused allocation collects in full, a cost of the whole heap per refusal,
 * which a burst repeated until the loop stall watchdog aborted the process. */
int sh_gen_no_room(sh_gen *g, size_t len);

/* Called when a task ends. status is LUA_OK (results on t->co: nres of them)
 * or an error (already logged). */
typedef void (*sh_task_done_fn)(sh_task *t, int status, int nres, void *arg);
/* Releases the I/O a suspended task waits for; must not wake the task. */
typedef void (*sh_task_cancel_fn)(sh_task *t, void *op);

/* CLOSING: a failed run's pending __close handlers run (task_close); nothing may wait */
enum sh_task_state {
    SH_TASK_NEW,
    SH_TASK_READY,
    SH_TASK_RUNNING,
    SH_TASK_SUSPENDED,
    SH_TASK_CLOSING
};

struct sh_task {
    sh_gen *gen;
    lua_State *co;
    sh_owner *owner;               /* NULL once its owner ended */
    sh_task *owner_prev, *owner_next;
    sh_task *gen_prev, *gen_next;
    sh_task *ready_next;           /* in host->ready */
    int state;                     /* enum sh_task_state */
    int nargs;                     /* values to resume with, when READY */
    sh_task_cancel_fn cancel;      /* set while SUSPENDED */
    void *op;
    sh_task_done_fn done;
    void *done_arg;
    const char *what;              /* hook name for logs */
    int orphaned;                  /* its owner ended: new waits fail */
    char log_id[SH_ID_LEN + 1];    /* connection id for log lines ("" when none) */
};

/* Set up the host's handles on loop (NULL: --check). */
void sh_host_init(sh_host *h, uv_loop_t *loop, sh_metrics *m, const char *instance);
/* Run every posted task now (the runner does this after each poll). */
void sh_host_run(sh_host *h);
/* Close the host's handles. */
void sh_host_close(sh_host *h);
/* Bytes used by every live generation's Lua state. */
size_t sh_host_lua_memory(const sh_host *h);
/* Runs whose instructions the budget counted (they outlasted a CPU tick). */
uint64_t sh_host_runs_counted(void);

/* Load the script as a new generation: open_api installs the `statushost`
 * module (the layer above passes it in: lua_api.c's sh_lua_api_open); run it, take its table, merge config
 * (--set overrides), read the core keys. Returns 0 with *out (one reference
 * held for the caller), or -1 with a one-line reason in err. */
typedef void (*sh_api_open_fn)(lua_State *L, sh_gen *g);
int sh_gen_load(sh_host *host, sh_api_open_fn open_api, const char *script,
                const char *const *sets, size_t nsets, sh_gen **out, char *err, size_t errsz);
/* package.path of L starts with script's directory, and "statushost.NAME"
 * finds the shipped scripts/NAME.lua (lua_host.c: search_shipped). */
void sh_host_module_paths(lua_State *L, const char *script);
void sh_gen_ref(sh_gen *g);
/* Drop a reference; the state is closed when none remain. */
void sh_gen_unref(sh_gen *g);
/* Wake every suspended task with nil, "closed" and refuse new waits. */
void sh_gen_shutdown(sh_gen *g);
/* 1 when the generation defines the hook. */
int sh_gen_has_hook(const sh_gen *g, enum sh_hook h);
const char *sh_hook_name(enum sh_hook h);

/* A new task owned by owner (NULL: the generation's detached owner), ready
 * to have a function and its arguments pushed on t->co. NULL when out of
 * memory. */
sh_task *sh_task_new(sh_gen *g, sh_owner *owner, const char *what);
/* Push hook h of the task's generation on t->co. */
void sh_task_push_hook(sh_task *t, enum sh_hook h);
/* Queue the pushed function with nargs arguments; it runs from the loop.
 * done (may be NULL) is called when it finishes. */
void sh_task_start(sh_task *t, int nargs, sh_task_done_fn done, void *arg);
/* Drop a task that was created but not started. */
void sh_task_discard(sh_task *t);
/* Run build(L) with ud as its argument, protected, on t's coroutine: the
 * values it returns stay pushed. Returns how many, or -1 when it raised
 * (out of memory: the stack is as it was). Every push of data that came from
 * outside (a message, a payload, a response) goes through this, so an
 * allocation failure is an error for that event, never a Lua panic. */
int sh_task_pcall(sh_task *t, lua_CFunction build, void *ud);
/* Push up to 4 strings protected (sh_task_pcall): 0, or -1 (nothing pushed). */
typedef struct sh_lstring {
    size_t n;
    struct { const char *p; size_t len; } v[4];
} sh_lstring;
int sh_task_push_strings(sh_task *t, const sh_lstring *s);

/* From a host C function running in task coroutine L: the task, or NULL. */
sh_task *sh_task_current(lua_State *L);
/* The task of the run under way in g: L's, or, in a coroutine of the policy's own that the
 * run resumed (coroutine.wrap), the run's — what it starts (host.spawn, host.timer) is that
 * task's connection's. NULL outside any run. */
sh_task *sh_task_running(sh_gen *g, lua_State *L);
/* Suspend: `return sh_task_suspend(L, cancel, op);` from a host C function. */
int sh_task_suspend(lua_State *L, sh_task_cancel_fn cancel, void *op);
/* 1 when a wait started now must fail at once with nil, "closed". */
int sh_task_doomed(const sh_task *t);
/* Queue a suspended task to resume with the nres values pushed on t->co. */
void sh_task_wake(sh_task *t, int nres);
/* Cancel t's wait and queue it to resume with nil, reason. */
void sh_task_abort(sh_task *t, const char *reason);

/* The owner ends: detach its tasks and wake each suspended one with nil,
 * "closed" (timers and subscriptions: sh_io_owner_release). */
void sh_owner_release_tasks(sh_owner *o);

#endif
