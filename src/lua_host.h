/* lua_host.h — script generations and the coroutines that run hooks.
 *
 * A generation (sh_gen) is one loaded copy of the policy script: a Lua state,
 * its hooks, its merged config. The server's current generation serves new
 * connections; SIGHUP makes a new one current, and an old generation is
 * closed when its last connection and task are gone (reference counted).
 *
 * A task (sh_task) is one coroutine running one hook call (or a timer
 * callback, or host.spawn). A host call that waits on I/O suspends the task
 * with sh_task_suspend(), naming a cancel function; the I/O completion pushes
 * its results and calls sh_task_wake(). Every suspended task is woken exactly
 * once: with its result, or with nil, "closed" when its connection dies or
 * the generation shuts down (the cancel function then releases the I/O).
 *
 * Threads are pooled per generation, so a hook call costs no allocation in
 * the steady state. A run between two yields is limited to
 * lua_max_instructions; exceeding it is a Lua error. */
#ifndef SH_LUA_HOST_H
#define SH_LUA_HOST_H

#include <lua.h>

#include "config.h"

struct sh_server;
struct sh_conn;
typedef struct sh_task sh_task;

/* Tasks started from inside a running task (host.spawn) nest on the C stack. */
#define SH_MAX_RUN_DEPTH 64

enum sh_hook {
    SH_HOOK_HANDSHAKE, /* on_handshake(req) → false, status[, body] refuses */
    SH_HOOK_OPEN,      /* on_open(conn) */
    SH_HOOK_MESSAGE,   /* on_message(conn, text) */
    SH_HOOK_BINARY,    /* on_binary(conn, data); absent: close 1003 */
    SH_HOOK_PUBLISH,   /* on_publish(conn, channel, payload) */
    SH_HOOK_CLOSE,     /* on_close(conn, code, reason) */
    SH_HOOK_COUNT
};

typedef struct sh_gen {
    struct sh_server *srv;
    lua_State *L;
    unsigned id;                 /* 1, 2, ... per reload */
    int refs;                    /* server (while current) + connections + tasks + timers */
    sh_config cfg;               /* core keys of the merged config */
    int hook_ref[SH_HOOK_COUNT]; /* registry refs, LUA_NOREF when absent */
    int routes_ref;              /* registry ref of `routes`, LUA_NOREF when absent */
    int conn_mt_ref;             /* metatable for conn userdata */
    sh_task *tasks;              /* live tasks (doubly linked) */
    struct sh_timer *timers;     /* host.timer handles not owned by a connection */
    struct gsub *subs;           /* host.subscribe subscriptions (lua_io.c) */
    lua_State **pool;            /* idle threads, anchored in pool_ref table */
    int npool;
    int pool_ref;                /* registry table: thread → true (anchors) */
    int closing;                 /* shutting down: new waits fail with "closed" */
    int run_depth;               /* tasks running inside each other (spawn, hooks) */
    struct sh_gen *next_gen, *prev_gen; /* in srv->gens */
} sh_gen;

/* Called when a task ends. status is LUA_OK (results on t->co: nres of them)
 * or an error (already logged). The callback must not resume the task. */
typedef void (*sh_task_done_fn)(sh_task *t, int status, int nres, void *arg);
/* Releases the I/O a suspended task waits for; must not wake the task. */
typedef void (*sh_task_cancel_fn)(sh_task *t, void *op);

struct sh_task {
    sh_gen *gen;
    lua_State *co;
    struct sh_conn *conn;          /* owning connection; NULL once detached */
    sh_task *conn_prev, *conn_next;
    sh_task *gen_prev, *gen_next;
    sh_task_cancel_fn cancel;      /* set while suspended in a host call */
    void *op;
    sh_task_done_fn done;
    void *done_arg;
    const char *what;              /* hook name for logs */
    int orphaned;                  /* its connection died: new waits fail */
    char log_id[25];               /* connection id for log lines ("" when none) */
};

/* Load the script as a new generation: run it, take its table, merge config
 * (opts' --set overrides), read the core keys. Returns 0 with *out (one
 * reference held for the caller), or -1 with a one-line reason in err. */
int sh_gen_load(struct sh_server *srv, const char *script, const char *const *sets,
                size_t nsets, sh_gen **out, char *err, size_t errsz);

void sh_gen_ref(sh_gen *g);
/* Drop a reference; the state is closed when none remain. */
void sh_gen_unref(sh_gen *g);
/* Wake every suspended task with nil, "closed" and refuse new waits. */
void sh_gen_shutdown(sh_gen *g);
/* 1 when the generation defines the hook. */
int sh_gen_has_hook(const sh_gen *g, enum sh_hook h);

/* Create a task owned by conn (NULL: detached), ready to have a function and
 * its arguments pushed on t->co. */
sh_task *sh_task_new(sh_gen *g, struct sh_conn *conn, const char *what);
/* Push hook h of the task's generation on t->co. */
void sh_task_push_hook(sh_task *t, enum sh_hook h);
/* Run the pushed function with nargs arguments. done (may be NULL) is called
 * when it finishes, now or after later wakes. */
void sh_task_start(sh_task *t, int nargs, sh_task_done_fn done, void *arg);

/* From a host C function running in task coroutine L: the task, or NULL when
 * L is not a task's coroutine (e.g. a user coroutine inside a hook). */
sh_task *sh_task_current(lua_State *L);
/* Suspend: `return sh_task_suspend(L, cancel, op);` from a host C function.
 * Raises a Lua error when L is not a task coroutine. */
int sh_task_suspend(lua_State *L, sh_task_cancel_fn cancel, void *op);
/* 1 when a wait started now must fail at once with nil, "closed"
 * (connection gone, generation closing). */
int sh_task_doomed(const sh_task *t);
/* Resume a suspended task; the caller has pushed nres values on t->co. */
void sh_task_wake(sh_task *t, int nres);
/* Cancel t's wait and wake it with nil, reason. */
void sh_task_abort(sh_task *t, const char *reason);

/* A connection is going away: detach its tasks and wake each suspended one
 * with nil, "closed". */
void sh_tasks_release_conn(struct sh_conn *c);

/* Registry of named hook functions for logs. */
const char *sh_hook_name(enum sh_hook h);

/* Open the `statushost` module into L's package.preload (lua_api.c). */
void sh_lua_api_open(lua_State *L, sh_gen *g);

#endif
