/* lua_io.c — host calls that wait, timers and subscriptions; see lua_io.h. */
#include "lua_io.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <utlist.h>

#include "log.h"

#define TIMER_MT "statushost.timer"
#define SUB_MT "statushost.subscription"

/* ------------------------------------------------------------ arguments */

int sh_argerror(lua_State *L, int arg, const char *msg)
{
    const char *name = SH_FNAME(L);
    if (!name)
        return luaL_argerror(L, arg, msg);
    if (strchr(name, ':'))
        arg--; /* a method: self is not counted */
    return luaL_error(L, "%s: bad argument #%d (%s)", name, arg, msg);
}

static int type_error(lua_State *L, int arg, const char *expected)
{
    return sh_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", expected,
                                               luaL_typename(L, arg)));
}

const char *sh_checklstring(lua_State *L, int arg, size_t *len)
{
    const char *s = lua_type(L, arg) == LUA_TSTRING || lua_type(L, arg) == LUA_TNUMBER
                        ? lua_tolstring(L, arg, len)
                        : NULL;
    if (!s)
        type_error(L, arg, "string");
    return s;
}

lua_Number sh_checknumber(lua_State *L, int arg)
{
    int ok;
    lua_Number n = lua_tonumberx(L, arg, &ok);
    if (!ok)
        type_error(L, arg, "number");
    return n;
}

lua_Integer sh_optinteger(lua_State *L, int arg, lua_Integer def)
{
    if (lua_isnoneornil(L, arg))
        return def;
    int ok;
    lua_Integer n = lua_tointegerx(L, arg, &ok);
    if (!ok)
        type_error(L, arg, "integer");
    return n;
}

void sh_checktype(lua_State *L, int arg, int type)
{
    if (lua_type(L, arg) != type)
        type_error(L, arg, lua_typename(L, type));
}

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

sh_task *sh_io_need_task(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    if (g->loading || !g->host)
        luaL_error(L, "%s: cannot run while the script loads (call it from a hook)", SH_FNAME(L));
    sh_task *t = sh_task_current(L);
    if (!t)
        luaL_error(L, "%s: this call waits, so it must run in a hook's coroutine "
                      "(not in a coroutine of your own)", SH_FNAME(L));
    if (t->state == SH_TASK_CLOSING)
        luaL_error(L, "%s: this call waits, and cannot in a __close handler run after an error",
                   SH_FNAME(L));
    if (!lua_isyieldable(L))
        luaL_error(L, "%s: this call waits, and cannot inside a function called from C "
                      "(a table.sort comparator, a gsub callback, a metamethod)", SH_FNAME(L));
    return t;
}

/* ------------------------------------------------------------ host.sleep */

/* The I/O backend of t's host (lua_host.h). */
#define IO(g) ((g)->host->io)
#define IOCTX(g) ((g)->host->io_ctx)

static void sleep_fired(void *arg)
{
    sh_task *t = arg;
    lua_pushboolean(t->co, 1);
    sh_task_wake(t, 1);
}

static void sleep_cancel(sh_task *t, void *timer)
{
    IO(t->gen)->timer_stop(IOCTX(t->gen), timer);
}

/* host.sleep(ms) → true | nil, "closed" */
int sh_io_sleep(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_Number ms = sh_checknumber(L, 1);
    if (!(ms >= 0 && ms < 1e12))
        return sh_argerror(L, 1, "must be a number of milliseconds");
    sh_task *t = sh_io_need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    void *timer = IO(g)->timer_start(IOCTX(g), (uint64_t)ms, sleep_fired, t);
    if (!timer)
        return fail(L, "out of memory");
    return sh_task_suspend(L, sleep_cancel, timer);
}

/* ------------------------------------------------------------ host.timer */

typedef struct sh_timer {
    void *h;                      /* the backend's timer, NULL once fired */
    sh_gen *gen;
    sh_owner *owner;              /* the connection's, or the generation's detached one */
    struct sh_timer *next, *prev; /* in owner->timers */
    int fn_ref;                   /* registry: fn when nargs is 0, else {fn, args...} */
    int nargs;
    struct timer_ud *ud;          /* the Lua handle, NULL once collected */
} sh_timer;

typedef struct timer_ud {
    sh_timer *t; /* NULL once fired or cancelled */
} timer_ud;

/* Unlink, forget the callback, stop the backend's timer, free. */
static void timer_release(sh_timer *t)
{
    sh_gen *g = t->gen;
    DL_DELETE(t->owner->timers, t);
    if (t->ud)
        t->ud->t = NULL;
    luaL_unref(g->L, LUA_REGISTRYINDEX, t->fn_ref);
    if (t->h)
        IO(g)->timer_stop(IOCTX(g), t->h);
    free(t);
    sh_gen_unref(g);
}

static void timer_fired(void *arg)
{
    sh_timer *t = arg;
    sh_owner *o = t->owner;
    t->h = NULL; /* the backend frees a timer that fired */
    sh_task *task = sh_task_new(t->gen, o == &t->gen->detached ? NULL : o, "timer callback");
    if (!task) {
        sh_error(o->id[0] ? o->id : NULL, "out of memory: a timer callback was dropped");
        timer_release(t);
        return;
    }
    lua_State *co = task->co;
    if (!lua_checkstack(co, t->nargs + 2)) { /* the table, fn and its arguments */
        sh_error(o->id[0] ? o->id : NULL, "out of memory: a timer callback was dropped");
        sh_task_discard(task);
        timer_release(t);
        return;
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, t->fn_ref);
    if (t->nargs > 0) {
        for (int i = 1; i <= t->nargs + 1; i++)
            lua_rawgeti(co, -i, i);
        lua_remove(co, -(t->nargs + 2));
    }
    int nargs = t->nargs;
    timer_release(t);
    sh_task_start(task, nargs, NULL, NULL);
}

/* host.timer(ms, fn, ...) → handle: fn(...) runs in its own task after ms,
 * unless handle:cancel() comes first or the owning connection ends. */
int sh_io_timer(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_Number ms = sh_checknumber(L, 1);
    if (!(ms >= 0 && ms < 1e12))
        return sh_argerror(L, 1, "must be a number of milliseconds");
    sh_checktype(L, 2, LUA_TFUNCTION);
    if (g->loading || !g->host)
        return luaL_error(L, "%s: cannot start while the script loads (start it from a hook)",
                          SH_FNAME(L));
    sh_task *cur = sh_task_running(g, L);
    if (cur && sh_task_doomed(cur))
        return fail(L, "closed");
    int n = lua_gettop(L);
    /* the Lua side first: any of it may raise (lua_max_memory), and nothing is to be
     * freed yet (a handle without a timer is garbage) */
    timer_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = NULL;
    luaL_setmetatable(L, TIMER_MT);
    if (n == 2) { /* the usual closure: no table around it (memory per connection) */
        lua_pushvalue(L, 2);
    } else {
        lua_createtable(L, n - 1, 0);
        for (int i = 2; i <= n; i++) {
            lua_pushvalue(L, i);
            lua_rawseti(L, -2, i - 1);
        }
    }
    int fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sh_timer *t = sh_zalloc(sizeof *t);
    if (!t) {
        luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
        return fail(L, "out of memory");
    }
    t->gen = g;
    t->owner = cur && cur->owner ? cur->owner : &g->detached;
    t->nargs = n - 2;
    t->fn_ref = fn_ref;
    t->h = IO(g)->timer_start(IOCTX(g), (uint64_t)ms, timer_fired, t);
    if (!t->h) {
        luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
        free(t);
        return fail(L, "out of memory");
    }
    sh_gen_ref(g);
    DL_APPEND(t->owner->timers, t);
    u->t = t;
    t->ud = u;
    return 1; /* the handle */
}

/* handle:cancel() → true when it was still pending */
static int timer_cancel(lua_State *L)
{
    timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    if (!u->t) {
        lua_pushboolean(L, 0);
        return 1;
    }
    timer_release(u->t);
    lua_pushboolean(L, 1);
    return 1;
}

static int timer_gc(lua_State *L)
{
    timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    if (u->t)
        u->t->ud = NULL; /* the timer still fires; only the handle is gone */
    return 0;
}

/* ------------------------------------------------------------ redis */

static void push_reply(lua_State *L, const redisReply *r, int depth)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        if (depth > 16) {
            lua_pushnil(L);
            break;
        }
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default: /* NIL */
        lua_pushlightuserdata(L, NULL); /* host.null */
        break;
    }
}

static void redis_replied(void *arg, const redisReply *reply, const char *errstr)
{
    sh_task *t = arg;
    if (!reply) {
        lua_pushnil(t->co);
        lua_pushstring(t->co, errstr ? errstr : "closed");
        sh_task_wake(t, 2);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        lua_pushnil(t->co);
        lua_pushlstring(t->co, reply->str, reply->len);
        sh_task_wake(t, 2);
    } else {
        push_reply(t->co, reply, 0);
        sh_task_wake(t, 1);
    }
}

static void redis_cancel(sh_task *t, void *op)
{
    IO(t->gen)->redis_cancel(IOCTX(t->gen), op);
}

/* host.redis.call(cmd, ...) → reply | nil, err ("unavailable", "closed",
 * or Redis' error text). Nil replies are host.null. */
int sh_io_redis_call(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    int n = lua_gettop(L);
    if (n < 1 || n > 64)
        return sh_argerror(L, 1, "expected a command and up to 63 arguments");
    const char *argv[64];
    size_t lens[64];
    for (int i = 1; i <= n; i++) {
        if (lua_type(L, i) != LUA_TSTRING && lua_type(L, i) != LUA_TNUMBER)
            return type_error(L, i, "string or number");
        argv[i - 1] = lua_tolstring(L, i, &lens[i - 1]); /* converted in place: anchored */
    }
    const char *why = sh_redis_refusal(n, argv, lens);
    if (why)
        return luaL_error(L, "%s: %s", SH_FNAME(L), why);
    sh_task *t = sh_io_need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    void *cmd;
    int rc = IO(g)->redis_command(IOCTX(g), n, argv, lens, redis_replied, t, &cmd);
    if (rc == SH_REDIS_EINVAL)
        return luaL_error(L, "%s: %s is reserved for the bus (use conn:subscribe)", SH_FNAME(L),
                          argv[0]);
    if (rc < 0)
        return fail(L, rc == SH_REDIS_EUNAVAILABLE ? "unavailable" : sh_redis_strerror(rc));
    return sh_task_suspend(L, redis_cancel, cmd);
}

/* ------------------------------------------------------------ subscriptions */

/* One subscription: of a connection (conn:subscribe: messages go to its
 * owner's deliver) or of the process (host.subscribe: messages run fn in a
 * task of their own). Either way it belongs to an owner. */
typedef struct sh_sub {
    sh_gen *gen;                  /* a reference is held */
    sh_owner *owner;
    void *rsub;                   /* the backend's, NULL once it released it */
    struct sh_sub *prev, *next;   /* in owner->subs */
    int fn_ref;                   /* host.subscribe's callback, or LUA_NOREF */
    int ud_ref;                   /* the handle, anchored while confirming */
    struct sub_ud *ud;            /* the handle, NULL once collected */
    sh_task *waiter;              /* task suspended until Redis confirms */
    struct sub_follower *followers; /* later conn:subscribe calls of the same channel, waiting too */
    size_t len;
    char channel[];
} sh_sub;

typedef struct sub_ud {
    sh_sub *s; /* NULL once unsubscribed */
} sub_ud;

/* A task that called conn:subscribe on a channel whose subscription is still
 * being confirmed: it gets the same answer as the first caller. */
typedef struct sub_follower {
    struct sub_follower *next;
    sh_sub *s;
    sh_task *t;
} sub_follower;

static void follower_cancel(sh_task *t, void *op)
{
    (void)t;
    sub_follower *f = op;
    LL_DELETE(f->s->followers, f);
    free(f);
}

/* Wake every follower of s: true, or nil, reason. */
static void followers_wake(sh_sub *s, const char *reason)
{
    while (s->followers) {
        sub_follower *f = s->followers;
        s->followers = f->next;
        if (reason) {
            lua_pushnil(f->t->co);
            lua_pushstring(f->t->co, reason);
        } else {
            lua_pushboolean(f->t->co, 1);
        }
        sh_task_wake(f->t, reason ? 2 : 1);
        free(f);
    }
}

static void sub_free(sh_sub *s)
{
    sh_gen *g = s->gen;
    while (s->followers) /* their cancel unlinks them */
        sh_task_abort(s->followers->t, "closed");
    DL_DELETE(s->owner->subs, s);
    if (s->rsub)
        IO(g)->redis_unsubscribe(IOCTX(g), s->rsub);
    if (s->ud)
        s->ud->s = NULL;
    luaL_unref(g->L, LUA_REGISTRYINDEX, s->fn_ref);
    luaL_unref(g->L, LUA_REGISTRYINDEX, s->ud_ref);
    free(s);
    sh_gen_unref(g);
}

/* Drop s; a task waiting for its confirmation gets nil, reason. */
static void sub_end(sh_sub *s, const char *reason)
{
    if (s->waiter)
        sh_task_abort(s->waiter, reason); /* its cancel frees s */
    else
        sub_free(s);
}

static void sub_message(void *arg, const char *channel, size_t channel_len, const char *payload,
                        size_t payload_len)
{
    sh_sub *s = arg;
    if (s->fn_ref == LUA_NOREF) {
        if (s->owner->deliver)
            s->owner->deliver(s->owner, channel, channel_len, payload, payload_len);
        return;
    }
    if (sh_gen_no_room(s->gen, channel_len + payload_len)) {
        /* the callbacks in flight hold 7/8 of lua_max_memory: dropped, counted, said at
         * most once a second. Before, a task was made for it anyway: its allocation
         * refused, Lua collected the whole heap for each message of a burst (~90 ms each
         * at 256 MiB), and the loop stall watchdog aborted the process */
        static uint64_t said_ms, held;
        uint64_t now = uv_now(s->gen->host->loop);
        s->gen->host->metrics->updates_dropped++;
        if (said_ms && now - said_ms < 1000) {
            held++;
            return;
        }
        sh_warn(NULL, "host.subscribe message on channel \"%.*s\" dropped: Lua memory %zu of "
                "%zu (lua_max_memory) held by the work in flight%s", channel_len > 200 ? 200 :
                (int)channel_len, channel, s->gen->mem, s->gen->mem_max,
                held ? " (more dropped since the last line)" : "");
        said_ms = now ? now : 1;
        held = 0;
        return;
    }
    sh_task *t = sh_task_new(s->gen, NULL, "subscription callback");
    if (!t) {
        sh_error(NULL, "out of memory: a subscription message was dropped");
        return;
    }
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, s->fn_ref);
    sh_lstring m = {2, {{channel, channel_len}, {payload, payload_len}}};
    if (sh_task_push_strings(t, &m) != 0) {
        sh_task_discard(t);
        sh_error(NULL, "out of memory: a subscription message was dropped");
        return;
    }
    sh_task_start(t, 2, NULL, NULL);
}

static void sub_confirmed(void *arg, int err)
{
    sh_sub *s = arg;
    sh_task *t = s->waiter;
    s->waiter = NULL;
    if (err < 0) {
        s->rsub = NULL; /* the bus released it */
        followers_wake(s, "unavailable");
        sub_free(s);
        lua_pushnil(t->co);
        lua_pushstring(t->co, "unavailable");
        sh_task_wake(t, 2);
        return;
    }
    if (s->ud_ref != LUA_NOREF) { /* host.subscribe: the handle is the result */
        lua_rawgeti(t->co, LUA_REGISTRYINDEX, s->ud_ref);
        luaL_unref(s->gen->L, LUA_REGISTRYINDEX, s->ud_ref);
        s->ud_ref = LUA_NOREF;
    } else {
        lua_pushboolean(t->co, 1);
    }
    sh_task_wake(t, 1);
    followers_wake(s, NULL); /* after the first caller: they asked later */
}

static void sub_cancel(sh_task *t, void *op)
{
    (void)t;
    sh_sub *s = op;
    s->waiter = NULL;
    sub_free(s);
}

static sh_sub *sub_find(sh_owner *o, const char *ch, size_t len)
{
    sh_sub *s;
    DL_FOREACH(o->subs, s)
        if (s->fn_ref == LUA_NOREF && s->len == len && memcmp(s->channel, ch, len) == 0)
            return s;
    return NULL;
}

/* The registry references of host.subscribe's callback and handle, taken together:
 * if the second raises (lua_max_memory), the first is given back before the error goes
 * on, so no reference outlives a refused call. Taken before Redis is asked: a reference
 * that raised after would leave a subscription without its handle. */
typedef struct sub_refs {
    int fn, ud;
} sub_refs;

static int take_refs_p(lua_State *L)
{
    sub_refs *r = lua_touserdata(L, 3);
    lua_settop(L, 2);                       /* fn, handle */
    r->ud = luaL_ref(L, LUA_REGISTRYINDEX); /* pops the handle */
    r->fn = luaL_ref(L, LUA_REGISTRYINDEX); /* pops fn */
    return 0;
}

static void take_refs(lua_State *L, int fn_at, int ud_at, sub_refs *r)
{
    lua_pushcfunction(L, take_refs_p);
    lua_pushvalue(L, fn_at);
    lua_pushvalue(L, ud_at);
    lua_pushlightuserdata(L, r);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
        luaL_unref(L, LUA_REGISTRYINDEX, r->fn);
        luaL_unref(L, LUA_REGISTRYINDEX, r->ud);
        lua_error(L);
    }
}

/* Subscribe o to the channel at index ci; fn_at: index of the callback or 0.
 * Returns like a Lua function: the result now, or a suspension. */
static int subscribe(lua_State *L, sh_owner *o, int ci, int fn_at)
{
    sh_gen *g = SH_GEN(L);
    size_t len;
    const char *ch = sh_checklstring(L, ci, &len);
    if (len == 0 || len > 512)
        return sh_argerror(L, ci, "channel must be 1..512 bytes");
    if (fn_at)
        sh_checktype(L, fn_at, LUA_TFUNCTION);
    sh_task *t = sh_io_need_task(L);
    if (sh_task_doomed(t) || o->gone)
        return fail(L, "closed");
    sh_sub *have = fn_at ? NULL : sub_find(o, ch, len);
    if (have && !have->waiter) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (have) { /* still being confirmed: wait for the same answer */
        sub_follower *f = malloc(sizeof *f);
        if (!f)
            return fail(L, "out of memory");
        *f = (sub_follower){.s = have, .t = t};
        LL_PREPEND(have->followers, f);
        return sh_task_suspend(L, follower_cancel, f);
    }
    /* the handle and its references first: each may raise (lua_max_memory), and nothing
     * is to be freed yet (a handle without a subscription is garbage) */
    sub_ud *u = NULL;
    sub_refs refs = {LUA_NOREF, LUA_NOREF};
    if (fn_at) {
        u = lua_newuserdatauv(L, sizeof *u, 0);
        u->s = NULL;
        luaL_setmetatable(L, SUB_MT);
        take_refs(L, fn_at, lua_gettop(L), &refs);
    }
    sh_sub *s = sh_zalloc(sizeof *s + len + 1);
    if (!s) {
        luaL_unref(L, LUA_REGISTRYINDEX, refs.fn);
        luaL_unref(L, LUA_REGISTRYINDEX, refs.ud);
        return fail(L, "out of memory");
    }
    s->gen = g;
    s->owner = o;
    s->len = len;
    s->fn_ref = refs.fn;
    s->ud_ref = refs.ud; /* the handle anchored until confirmed */
    memcpy(s->channel, ch, len);
    if (u) {
        u->s = s;
        s->ud = u;
    }
    int rc = IO(g)->redis_subscribe(IOCTX(g), ch, len, sub_message, sub_confirmed, s, &s->rsub);
    if (rc < 0) {
        if (s->ud)
            s->ud->s = NULL;
        luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, s->ud_ref);
        free(s);
        return fail(L, rc == SH_REDIS_EUNAVAILABLE ? "unavailable" : sh_redis_strerror(rc));
    }
    sh_gen_ref(g);
    DL_APPEND(o->subs, s);
    if (rc == 1) { /* already confirmed: no wait */
        luaL_unref(L, LUA_REGISTRYINDEX, s->ud_ref);
        s->ud_ref = LUA_NOREF;
        if (!fn_at)
            lua_pushboolean(L, 1);
        return 1; /* for host.subscribe, the handle on the stack */
    }
    s->waiter = t;
    return sh_task_suspend(L, sub_cancel, s);
}

int sh_io_subscribe_owner(lua_State *L, sh_owner *o) { return subscribe(L, o, 2, 0); }

int sh_io_unsubscribe_owner(sh_owner *o, const char *channel, size_t len)
{
    sh_sub *s = sub_find(o, channel, len);
    if (!s)
        return 0;
    sub_end(s, "unsubscribed");
    return 1;
}

/* host.subscribe(channel, fn) → handle once Redis confirmed | nil, err.
 * fn(channel, payload) runs in a task of its own for every message;
 * handle:unsubscribe() ends it. */
int sh_io_subscribe_fn(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    return subscribe(L, &g->detached, 1, 2);
}

/* handle:unsubscribe() → true when it was subscribed */
static int sub_unsubscribe(lua_State *L)
{
    sub_ud *u = luaL_checkudata(L, 1, SUB_MT);
    int was = u->s != NULL;
    if (u->s)
        sub_end(u->s, "unsubscribed");
    lua_pushboolean(L, was);
    return 1;
}

static int sub_gc(lua_State *L)
{
    sub_ud *u = luaL_checkudata(L, 1, SUB_MT);
    if (u->s)
        u->s->ud = NULL; /* the subscription lives on; only the handle is gone */
    return 0;
}

/* ------------------------------------------------------------ http */

/* Lower-case header names, and values, that most responses carry: held by the registry (a table
 * at key common_http_strings, the same order), http_result_p takes them from there instead of
 * interning (hashing, and allocating when the GC has freed it) each anew for every response. */
static const char *const common_http_strings[] = {
    "content-type", "content-length", "connection", "server", "date", "transfer-encoding",
    "cache-control", "set-cookie", "location", "etag", "last-modified", "vary", "expires",
    "keep-alive", "close", "chunked", "application/json", "text/plain; charset=utf-8",
    "text/html; charset=utf-8", "no-cache",
};

/* Slots of a hash of (length, first byte, last byte): the 1-based index of the string in
 * common_http_strings, 0 for none. Built once (the list is constant); 64 slots for 20 strings. */
static unsigned char common_slots[64];

static size_t common_hash(const char *s, size_t n)
{
    return (n * 31u + (unsigned char)s[0] * 7u + (unsigned char)s[n - 1]) & 63u;
}

static void common_slots_fill(void)
{
    if (common_slots[common_hash("date", 4)])
        return; /* done */
    for (size_t i = 0; i < sizeof common_http_strings / sizeof common_http_strings[0]; i++) {
        const char *str = common_http_strings[i];
        size_t h = common_hash(str, strlen(str));
        while (common_slots[h])
            h = (h + 1) & 63u;
        common_slots[h] = (unsigned char)(i + 1);
    }
}

/* Pushes s[0..n) from the table at index `common` (0: none) when it is one of
 * common_http_strings, else interns it (lua_pushlstring). */
static void push_common(lua_State *co, int common, const char *s, size_t n)
{
    if (common && n > 0) {
        for (size_t h = common_hash(s, n); common_slots[h]; h = (h + 1) & 63u) {
            const char *c = common_http_strings[common_slots[h] - 1];
            if (strlen(c) == n && memcmp(c, s, n) == 0) {
                lua_rawgeti(co, common, common_slots[h]);
                return;
            }
        }
    }
    lua_pushlstring(co, s, n);
}

/* Whether the name of header i of res came before it (in any case). Compared in C for the first
 * HDR_SEEN_MAX headers (cheaper than a look-up in the Lua table), which a long list of
 * headers cannot make quadratic: those after them are looked up in the table. */
#define HDR_SEEN_MAX 32
static int hdr_seen(const sh_http_response *res, size_t i)
{
    const sh_http_hdr *h = &res->headers[i];
    for (size_t j = 0; j < i; j++)
        if (res->headers[j].name_len == h->name_len &&
            strncasecmp(res->headers[j].name, h->name, h->name_len) == 0)
            return 1;
    return 0;
}

/* The response as {status, body, headers} (run protected: it allocates). */
static int http_result_p(lua_State *co)
{
    const sh_http_response *res = lua_touserdata(co, 1);
    lua_createtable(co, 0, 3);
    lua_pushinteger(co, res->status);
    lua_setfield(co, -2, "status");
    lua_pushlstring(co, res->body, res->body_len);
    lua_setfield(co, -2, "body");
    lua_createtable(co, 0, (int)res->nheaders);
    int headers = lua_gettop(co);
    int common = lua_rawgetp(co, LUA_REGISTRYINDEX, common_http_strings) == LUA_TTABLE
                     ? lua_gettop(co) : 0;
    for (size_t i = 0; i < res->nheaders; i++) {
        const sh_http_hdr *h = &res->headers[i];
        /* the name in lower case, whole: the usual short one made on the C stack (a
         * luaL_Buffer costs a box and a copy), a long one in a buffer */
        char small[64];
        luaL_Buffer b;
        char *name = h->name_len <= sizeof small ? small
                                                 : luaL_buffinitsize(co, &b, h->name_len);
        for (size_t j = 0; j < h->name_len; j++) {
            char ch = h->name[j];
            name[j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        if (name == small)
            push_common(co, common, small, h->name_len);
        else
            luaL_pushresultsize(&b, h->name_len);
        if (i < HDR_SEEN_MAX && !hdr_seen(res, i)) {
            /* a first name, as most are: no look-up in the table */
            push_common(co, common, h->value, h->value_len);
            lua_rawset(co, headers);
            continue;
        }
        lua_pushvalue(co, -1);
        if (lua_rawget(co, headers) == LUA_TSTRING) {
            /* a repeated field: one list, its values joined with ", " (RFC 9110 §5.3);
             * set-cookie's with "\n", as its own values hold commas (RFC 6265 §3) */
            int cookie = h->name_len == 10 && memcmp(lua_tostring(co, -2), "set-cookie", 10) == 0;
            lua_pushstring(co, cookie ? "\n" : ", ");
            lua_pushlstring(co, h->value, h->value_len);
            lua_concat(co, 3);
        } else {
            lua_pop(co, 1);
            lua_pushlstring(co, h->value, h->value_len);
        }
        lua_rawset(co, headers);
    }
    lua_pop(co, 1); /* common */
    lua_setfield(co, -2, "headers");
    return 1;
}

static void http_done(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    sh_task *t = arg;
    lua_State *co = t->co;
    if (!err && sh_task_pcall(t, http_result_p, (void *)res) == 1) {
        sh_task_wake(t, 1);
        return;
    }
    lua_pushnil(co);
    lua_pushstring(co, err ? errstr : "out of memory");
    sh_task_wake(t, 2);
}

static void http_cancel(sh_task *t, void *op)
{
    IO(t->gen)->http_cancel(IOCTX(t->gen), op);
}

/* A string field of the options table: a string, a number (converted and
 * anchored in the table's stack slot), or absent. */
static const char *opt_string(lua_State *L, const char *key, size_t *len, const char *def)
{
    int t = lua_getfield(L, 1, key);
    if (t == LUA_TNIL) {
        if (len)
            *len = def ? strlen(def) : 0;
        return def;
    }
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "%s: %s must be a string, got %s", SH_FNAME(L), key, luaL_typename(L, -1));
    return lua_tolstring(L, -1, len); /* stays on the stack: anchored */
}

/* A large request body lent to the HTTP client instead of copied: the
 * string is anchored in the registry until the client releases it. */
typedef struct body_loan {
    sh_gen *gen; /* a reference is held */
    int ref;
} body_loan;

static void body_release(void *arg)
{
    body_loan *b = arg;
    luaL_unref(b->gen->L, LUA_REGISTRYINDEX, b->ref);
    sh_gen_unref(b->gen);
    free(b);
}

#define BODY_LOAN_MIN 4096 /* smaller bodies are copied */

/* The field key of the options table: milliseconds 0..1e12 (0: the default),
 * or def when absent. A negative timeout became 2^64 - 1 ms: never. */
static uint64_t opt_ms(lua_State *L, const char *key, uint64_t def)
{
    int t = lua_getfield(L, 1, key);
    if (t == LUA_TNIL)
        return def;
    lua_Number ms = t == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
    if (!(ms >= 0 && ms < 1e12))
        luaL_error(L, "%s: %s must be a number of milliseconds (0..1e12), got %s", SH_FNAME(L), key,
                   lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_typename(L, -1));
    return (uint64_t)ms;
}

/* host.http.request{method=, url=, headers=, body=, timeout_ms=} →
 * {status, headers, body} | nil, err */
int sh_io_http_request(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    sh_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    sh_http_opts o = {0};
    sh_http_hdr hdrs[64];
    size_t nh = 0;
    o.url = opt_string(L, "url", NULL, NULL);
    if (!o.url)
        return luaL_error(L, "%s: url is required", SH_FNAME(L));
    o.method = opt_string(L, "method", NULL, "GET");
    o.body = opt_string(L, "body", &o.body_len, NULL);
    int body_at = lua_gettop(L); /* the body string, anchored on the stack */
    o.timeout_ms = opt_ms(L, "timeout_ms", 30000);
    o.connect_timeout_ms = opt_ms(L, "connect_timeout_ms", 0);
    int htype = lua_getfield(L, 1, "headers");
    int ht = lua_gettop(L);
    if (htype == LUA_TTABLE) {
        /* the names and string values are held by the headers table, which nothing changes
         * before the request has copied them; a number's string form is kept on the stack */
        lua_pushnil(L);
        while (lua_next(L, ht)) {
            int vt = lua_type(L, -1);
            if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
                return luaL_error(L, "%s: headers must map names to strings", SH_FNAME(L));
            if (nh == sizeof hdrs / sizeof hdrs[0])
                return luaL_error(L, "%s: at most 64 headers", SH_FNAME(L));
            hdrs[nh].name = lua_tolstring(L, -2, &hdrs[nh].name_len);
            hdrs[nh].value = lua_tolstring(L, -1, &hdrs[nh].value_len); /* a number: converted */
            nh++;
            if (vt == LUA_TNUMBER) {
                luaL_checkstack(L, 2, "too many headers");
                lua_insert(L, -2); /* the converted value stays, below the key */
            } else {
                lua_pop(L, 1);
            }
        }
    } else if (htype != LUA_TNIL) {
        return luaL_error(L, "%s: headers must be a table", SH_FNAME(L));
    }
    o.headers = hdrs;
    o.nheaders = nh;
    sh_task *t = sh_io_need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    body_loan *loan = NULL;
    if (o.body_len >= BODY_LOAN_MIN) {
        /* a large body (a job's batch) is held once: this string, not a copy in C */
        lua_pushvalue(L, body_at);
        int ref = luaL_ref(L, LUA_REGISTRYINDEX);
        if (!(loan = malloc(sizeof *loan))) {
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
            return fail(L, "out of memory");
        }
        loan->ref = ref;
        loan->gen = g;
        sh_gen_ref(g);
        o.body_release = body_release;
        o.body_release_arg = loan;
    }
    void *call;
    int rc = IO(g)->http_request(IOCTX(g), &o, http_done, t, &call);
    if (rc < 0 && loan)
        body_release(loan);
    if (rc == SH_HTTP_EINVAL || rc == SH_HTTP_EUNSUPPORTED)
        return luaL_error(L, "%s: %s (%s)", SH_FNAME(L), sh_http_strerror(rc), o.url);
    if (rc < 0)
        return fail(L, sh_http_strerror(rc));
    return sh_task_suspend(L, http_cancel, call);
}

/* ------------------------------------------------------------ lifecycle */

void sh_io_open(lua_State *L)
{
    int n = (int)(sizeof common_http_strings / sizeof common_http_strings[0]);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, common_http_strings[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, common_http_strings);
    common_slots_fill();

    /* __metatable: a policy could otherwise replace a handle's __gc (the C side's
     * pointer to the handle is cleared there) and have it written after it is freed */
    luaL_newmetatable(L, SUB_MT);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushcfunction(L, sub_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, sub_unsubscribe);
    lua_setfield(L, -2, "unsubscribe");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, TIMER_MT);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushcfunction(L, timer_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sh_io_owner_release(sh_owner *o)
{
    while (o->subs)
        sub_end(o->subs, "closed");
    while (o->timers)
        timer_release(o->timers);
}
