/* lua_io.c — host calls that wait: host.sleep, host.timer, host.redis.call,
 * host.http.request, conn:subscribe / conn:unsubscribe.
 *
 * Each follows one cycle: check arguments (misuse raises), fail fast with
 * nil, "reason" when the wait cannot start, start the I/O, then
 * sh_task_suspend() with a cancel function. The completion pushes results on
 * the task's stack and calls sh_task_wake(). */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "http_client.h"
#include "log.h"
#include "lua_api.h"
#include "redis_bus.h"
#include "server.h"

#define TIMER_MT "statushost.timer"

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* The running task, or raise: waits need one. */
static sh_task *need_task(lua_State *L)
{
    sh_task *t = sh_task_current(L);
    if (!t)
        luaL_error(L, "this call waits, so it must run in a hook's coroutine "
                      "(not in the main chunk or a coroutine of your own)");
    if (!lua_isyieldable(L))
        luaL_error(L, "this call waits, and cannot inside a function called from C "
                      "(a table.sort comparator, a gsub callback, a metamethod)");
    return t;
}

/* ------------------------------------------------------------ host.sleep */

typedef struct sleep_op {
    uv_timer_t h;
    sh_task *t;
} sleep_op;

static void free_handle(uv_handle_t *h) { free(h->data); }

static void sleep_fired(uv_timer_t *h)
{
    sleep_op *op = h->data;
    sh_task *t = op->t;
    uv_close((uv_handle_t *)h, free_handle);
    lua_pushboolean(t->co, 1);
    sh_task_wake(t, 1);
}

static void sleep_cancel(sh_task *t, void *p)
{
    (void)t;
    sleep_op *op = p;
    uv_close((uv_handle_t *)&op->h, free_handle);
}

/* host.sleep(ms) → true | nil, "closed" */
static int l_sleep(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_Number ms = luaL_checknumber(L, 1);
    luaL_argcheck(L, ms >= 0 && ms < 1e12, 1, "must be a number of milliseconds");
    sh_task *t = need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    sleep_op *op = malloc(sizeof *op);
    op->t = t;
    uv_timer_init(g->srv->loop, &op->h);
    op->h.data = op;
    uv_update_time(g->srv->loop); /* the loop's cached time may be stale after long Lua work */
    uv_timer_start(&op->h, sleep_fired, (uint64_t)ms, 0);
    return sh_task_suspend(L, sleep_cancel, op);
}

/* ------------------------------------------------------------ host.timer */

typedef struct sh_timer {
    uv_timer_t h;
    sh_gen *gen;
    sh_conn *conn;                 /* owner, or NULL */
    struct sh_timer *next, *prev;  /* in conn->timers or the detached list */
    int fn_ref;                    /* registry: {fn, args...} */
    int nargs;
    struct timer_ud *ud;           /* the Lua handle, NULL once collected */
} sh_timer;

typedef struct timer_ud {
    sh_timer *t; /* NULL once fired or cancelled */
} timer_ud;

static sh_timer **timer_list(sh_timer *t)
{
    return t->conn ? &t->conn->timers : &t->gen->timers;
}

static void timer_link(sh_timer *t)
{
    sh_timer **head = timer_list(t);
    t->next = *head;
    if (*head)
        (*head)->prev = t;
    *head = t;
}

static void timer_closed(uv_handle_t *h)
{
    sh_timer *t = h->data;
    sh_gen_unref(t->gen);
    free(t);
}

/* Unlink, forget the callback, close the handle. */
static void timer_release(sh_timer *t)
{
    sh_timer **head = timer_list(t);
    if (t->prev)
        t->prev->next = t->next;
    else
        *head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    if (t->ud)
        t->ud->t = NULL;
    luaL_unref(t->gen->L, LUA_REGISTRYINDEX, t->fn_ref);
    uv_close((uv_handle_t *)&t->h, timer_closed);
}

static void timer_fired(uv_timer_t *h)
{
    sh_timer *t = h->data;
    sh_task *task = sh_task_new(t->gen, t->conn, "timer callback");
    lua_State *co = task->co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, t->fn_ref);
    for (int i = 1; i <= t->nargs + 1; i++)
        lua_rawgeti(co, -i, i);
    lua_remove(co, -(t->nargs + 2));
    int nargs = t->nargs;
    timer_release(t);
    sh_task_start(task, nargs, NULL, NULL);
}

/* host.timer(ms, fn, ...) → handle: fn(...) runs in its own task after ms,
 * unless handle:cancel() comes first or the owning connection closes. */
static int l_timer(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_Number ms = luaL_checknumber(L, 1);
    luaL_argcheck(L, ms >= 0 && ms < 1e12, 1, "must be a number of milliseconds");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!g->srv)
        return luaL_error(L, "timers cannot start while the script loads (start them from a hook)");
    sh_task *cur = sh_task_current(L);
    if (cur && sh_task_doomed(cur))
        return fail(L, "closed");
    int n = lua_gettop(L);
    sh_timer *t = calloc(1, sizeof *t);
    t->gen = g;
    sh_gen_ref(g);
    t->conn = cur ? cur->conn : NULL;
    t->nargs = n - 2;
    lua_createtable(L, n - 1, 0);
    for (int i = 2; i <= n; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i - 1);
    }
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_timer_init(g->srv->loop, &t->h);
    t->h.data = t;
    timer_link(t);
    uv_update_time(g->srv->loop);
    uv_timer_start(&t->h, timer_fired, (uint64_t)ms, 0);
    timer_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = t;
    t->ud = u;
    luaL_setmetatable(L, TIMER_MT);
    return 1;
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

static void timers_release_all(sh_timer **head)
{
    while (*head)
        timer_release(*head);
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
    (void)t;
    sh_redis_cmd_cancel(op);
}

/* host.redis.call(cmd, ...) → reply | nil, err ("unavailable", "closed",
 * or Redis' error text). Nil replies are host.null. */
static int l_redis_call(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    int n = lua_gettop(L);
    luaL_argcheck(L, n >= 1 && n <= 64, 1, "expected a command and up to 63 arguments");
    const char *argv[64];
    size_t lens[64];
    for (int i = 1; i <= n; i++) {
        if (lua_type(L, i) != LUA_TSTRING && lua_type(L, i) != LUA_TNUMBER)
            return luaL_argerror(L, i, "expected a string or a number");
        argv[i - 1] = lua_tolstring(L, i, &lens[i - 1]);
    }
    sh_task *t = need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    if (!g->srv->bus)
        return fail(L, "unavailable");
    sh_redis_cmd *cmd;
    int rc = sh_redis_command(g->srv->bus, n, argv, lens, redis_replied, t, &cmd);
    if (rc == SH_REDIS_EINVAL)
        return luaL_error(L, "host.redis.call: %s is reserved for the bus (use conn:subscribe)",
                          argv[0]);
    if (rc < 0)
        return fail(L, rc == SH_REDIS_EUNAVAILABLE ? "unavailable" : sh_redis_strerror(rc));
    return sh_task_suspend(L, redis_cancel, cmd);
}

/* ------------------------------------------------------------ subscribe */

static void csub_unlink(sh_conn_sub *s)
{
    sh_conn *c = s->conn;
    for (sh_conn_sub **p = &c->subs; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
}

static void csub_free(sh_conn_sub *s)
{
    csub_unlink(s);
    sh_redis_unsubscribe(s->sub);
    free(s);
}

static void on_published(void *arg, const char *channel, size_t channel_len, const char *payload,
                         size_t payload_len)
{
    sh_conn_sub *s = arg;
    sh_conn *c = s->conn;
    if (!sh_conn_open(c))
        return;
    if (!sh_gen_has_hook(c->gen, SH_HOOK_PUBLISH)) {
        sh_conn_send(c, payload, payload_len, 0);
        return;
    }
    sh_task *t = sh_task_new(c->gen, c, "on_publish");
    sh_task_push_hook(t, SH_HOOK_PUBLISH);
    sh_conn_push(c, t->co);
    lua_pushlstring(t->co, channel, channel_len);
    lua_pushlstring(t->co, payload, payload_len);
    sh_task_start(t, 3, NULL, NULL);
}

static void on_confirmed(void *arg, int err)
{
    sh_conn_sub *s = arg;
    sh_task *t = s->waiter;
    s->waiter = NULL;
    if (err < 0) {
        s->sub = NULL; /* the bus released it */
        csub_free(s);
        lua_pushnil(t->co);
        lua_pushstring(t->co, "unavailable");
        sh_task_wake(t, 2);
        return;
    }
    lua_pushboolean(t->co, 1);
    sh_task_wake(t, 1);
}

static void subscribe_cancel(sh_task *t, void *op)
{
    (void)t;
    sh_conn_sub *s = op;
    s->waiter = NULL;
    csub_free(s);
}

static sh_conn_sub *csub_find(sh_conn *c, const char *ch, size_t len)
{
    for (sh_conn_sub *s = c->subs; s; s = s->next)
        if (s->channel_len == len && memcmp(s->channel, ch, len) == 0)
            return s;
    return NULL;
}

/* conn:subscribe(channel) → true once Redis confirmed | nil, "unavailable" |
 * nil, "closed". Messages then reach on_publish(conn, channel, payload). */
int sh_io_subscribe(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    luaL_argcheck(L, len > 0 && len <= 512, 2, "channel must be 1..512 bytes");
    sh_task *t = need_task(L);
    if (!c || sh_task_doomed(t) || !sh_conn_open(c))
        return fail(L, "closed");
    if (csub_find(c, ch, len)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!c->srv->bus || !sh_redis_bus_up(c->srv->bus))
        return fail(L, "unavailable");
    sh_conn_sub *s = calloc(1, sizeof *s + len + 1);
    s->conn = c;
    s->channel_len = len;
    memcpy(s->channel, ch, len);
    int rc = sh_redis_subscribe(c->srv->bus, ch, len, on_published, on_confirmed, s, &s->sub);
    if (rc < 0) {
        free(s);
        return fail(L, rc == SH_REDIS_EUNAVAILABLE ? "unavailable" : sh_redis_strerror(rc));
    }
    s->next = c->subs;
    c->subs = s;
    if (rc == 1) {
        lua_pushboolean(L, 1);
        return 1;
    }
    s->waiter = t;
    return sh_task_suspend(L, subscribe_cancel, s);
}

/* conn:unsubscribe(channel) → true: no message of the channel reaches this
 * connection after the call. */
int sh_io_unsubscribe(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    size_t len;
    const char *ch = luaL_checklstring(L, 2, &len);
    sh_conn_sub *s = c ? csub_find(c, ch, len) : NULL;
    if (s) {
        if (s->waiter)
            sh_task_abort(s->waiter, "unsubscribed"); /* frees s */
        else
            csub_free(s);
    }
    lua_pushboolean(L, s != NULL);
    return 1;
}

/* ------------------------------------------------------ host.subscribe */

#define GSUB_MT "statushost.subscription"

/* A subscription of the process, not of a connection (host.subscribe). */
typedef struct gsub {
    sh_gen *gen;
    sh_redis_sub *sub;
    struct gsub *next, *prev;     /* in gen->subs */
    int fn_ref;                   /* the callback */
    int ud_ref;                   /* the handle, anchored while confirming */
    struct gsub_ud *ud;
    sh_task *waiter;              /* task suspended until Redis confirms */
    size_t len;
    char channel[];
} gsub;

typedef struct gsub_ud {
    gsub *s; /* NULL once unsubscribed */
} gsub_ud;

static void gsub_free(gsub *s)
{
    sh_gen *g = s->gen;
    if (s->prev)
        s->prev->next = s->next;
    else
        g->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    sh_redis_unsubscribe(s->sub);
    if (s->ud)
        s->ud->s = NULL;
    luaL_unref(g->L, LUA_REGISTRYINDEX, s->fn_ref);
    luaL_unref(g->L, LUA_REGISTRYINDEX, s->ud_ref);
    free(s);
    sh_gen_unref(g); /* a subscription keeps its generation alive */
}

static void gsub_message(void *arg, const char *channel, size_t channel_len, const char *payload,
                         size_t payload_len)
{
    gsub *s = arg;
    sh_task *t = sh_task_new(s->gen, NULL, "subscription callback");
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, s->fn_ref);
    lua_pushlstring(t->co, channel, channel_len);
    lua_pushlstring(t->co, payload, payload_len);
    sh_task_start(t, 2, NULL, NULL);
}

static void gsub_confirmed(void *arg, int err)
{
    gsub *s = arg;
    sh_task *t = s->waiter;
    s->waiter = NULL;
    if (err < 0) {
        s->sub = NULL; /* the bus released it */
        gsub_free(s);
        lua_pushnil(t->co);
        lua_pushstring(t->co, "unavailable");
        sh_task_wake(t, 2);
        return;
    }
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, s->ud_ref);
    luaL_unref(s->gen->L, LUA_REGISTRYINDEX, s->ud_ref);
    s->ud_ref = LUA_NOREF;
    sh_task_wake(t, 1);
}

static void gsub_cancel(sh_task *t, void *op)
{
    (void)t;
    gsub *s = op;
    s->waiter = NULL;
    gsub_free(s);
}

/* host.subscribe(channel, fn) → handle once Redis confirmed | nil, err.
 * fn(channel, payload) runs in a task of its own for every message, whatever
 * connection exists; handle:unsubscribe() ends it. */
static int l_subscribe(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    size_t len;
    const char *ch = luaL_checklstring(L, 1, &len);
    luaL_argcheck(L, len > 0 && len <= 512, 1, "channel must be 1..512 bytes");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    sh_task *t = need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    if (!g->srv->bus || !sh_redis_bus_up(g->srv->bus))
        return fail(L, "unavailable");
    gsub *s = calloc(1, sizeof *s + len + 1);
    s->gen = g;
    s->len = len;
    memcpy(s->channel, ch, len);
    lua_pushvalue(L, 2);
    s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    gsub_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = s;
    s->ud = u;
    luaL_setmetatable(L, GSUB_MT);
    int rc = sh_redis_subscribe(g->srv->bus, ch, len, gsub_message, gsub_confirmed, s, &s->sub);
    if (rc < 0) {
        u->s = NULL;
        luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
        free(s);
        return fail(L, rc == SH_REDIS_EUNAVAILABLE ? "unavailable" : sh_redis_strerror(rc));
    }
    sh_gen_ref(g);
    s->next = g->subs;
    if (g->subs)
        g->subs->prev = s;
    g->subs = s;
    if (rc == 1) {
        s->ud_ref = LUA_NOREF;
        return 1; /* the handle on the stack */
    }
    s->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->waiter = t;
    return sh_task_suspend(L, gsub_cancel, s);
}

/* handle:unsubscribe() → true when it was subscribed */
static int gsub_unsubscribe(lua_State *L)
{
    gsub_ud *u = luaL_checkudata(L, 1, GSUB_MT);
    int was = u->s != NULL;
    if (u->s)
        gsub_free(u->s);
    lua_pushboolean(L, was);
    return 1;
}

static int gsub_gc(lua_State *L)
{
    gsub_ud *u = luaL_checkudata(L, 1, GSUB_MT);
    if (u->s)
        u->s->ud = NULL; /* the subscription lives on; only the handle is gone */
    return 0;
}

/* ------------------------------------------------------------ http */

static void http_done(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    sh_task *t = arg;
    lua_State *co = t->co;
    if (err) {
        lua_pushnil(co);
        lua_pushstring(co, errstr);
        sh_task_wake(t, 2);
        return;
    }
    lua_createtable(co, 0, 3);
    lua_pushinteger(co, res->status);
    lua_setfield(co, -2, "status");
    lua_pushlstring(co, res->body, res->body_len);
    lua_setfield(co, -2, "body");
    lua_createtable(co, 0, (int)res->nheaders);
    for (size_t i = 0; i < res->nheaders; i++) {
        const sh_http_hdr *h = &res->headers[i];
        luaL_Buffer b;
        luaL_buffinit(co, &b);
        for (size_t j = 0; j < h->name_len; j++) {
            char ch = h->name[j];
            luaL_addchar(&b, ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch);
        }
        luaL_pushresult(&b);
        lua_pushlstring(co, h->value, h->value_len);
        lua_rawset(co, -3);
    }
    lua_setfield(co, -2, "headers");
    sh_task_wake(t, 1);
}

static void http_cancel(sh_task *t, void *op)
{
    (void)t;
    sh_http_call_cancel(op);
}

/* host.http.request{method=, url=, headers=, body=, timeout_ms=} →
 * {status, headers, body} | nil, err */
static int l_http_request(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    sh_http_opts o = {0};
    sh_http_hdr hdrs[64];
    size_t nh = 0;
    lua_getfield(L, 1, "url");
    o.url = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "method");
    o.method = luaL_optstring(L, -1, "GET");
    lua_getfield(L, 1, "body");
    o.body = luaL_optlstring(L, -1, NULL, &o.body_len);
    lua_getfield(L, 1, "timeout_ms");
    o.timeout_ms = (uint64_t)luaL_optinteger(L, -1, 30000);
    lua_getfield(L, 1, "connect_timeout_ms");
    o.connect_timeout_ms = (uint64_t)luaL_optinteger(L, -1, 0);
    lua_getfield(L, 1, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2) && nh < 64) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                hdrs[nh].name = lua_tolstring(L, -2, &hdrs[nh].name_len);
                hdrs[nh].value = lua_tolstring(L, -1, &hdrs[nh].value_len);
                nh++;
            }
            lua_pop(L, 1);
        }
    }
    o.headers = hdrs;
    o.nheaders = nh;
    sh_task *t = need_task(L);
    if (sh_task_doomed(t))
        return fail(L, "closed");
    sh_http_call *call;
    int rc = sh_http_request(g->srv->http, &o, http_done, t, &call);
    if (rc == SH_HTTP_EINVAL || rc == SH_HTTP_EUNSUPPORTED)
        return luaL_error(L, "host.http.request: %s (%s)", sh_http_strerror(rc), o.url);
    if (rc < 0)
        return fail(L, sh_http_strerror(rc));
    return sh_task_suspend(L, http_cancel, call);
}

/* ------------------------------------------------------------ registry */

void sh_io_register(lua_State *L, int m)
{
    luaL_newmetatable(L, GSUB_MT);
    lua_pushcfunction(L, gsub_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, gsub_unsubscribe);
    lua_setfield(L, -2, "unsubscribe");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, TIMER_MT);
    lua_pushcfunction(L, timer_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    lua_getfield(L, m, "now"); /* any module function: its upvalue is the gen */
    lua_getupvalue(L, -1, 1);
    void *gen = lua_touserdata(L, -1);
    lua_pop(L, 2);

    static const luaL_Reg top[] = {
        {"sleep", l_sleep}, {"timer", l_timer}, {"subscribe", l_subscribe}, {NULL, NULL}};
    lua_pushlightuserdata(L, gen);
    luaL_setfuncs(L, top, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, gen);
    lua_pushcclosure(L, l_redis_call, 1);
    lua_setfield(L, -2, "call");
    lua_setfield(L, m, "redis");
    lua_newtable(L);
    lua_pushlightuserdata(L, gen);
    lua_pushcclosure(L, l_http_request, 1);
    lua_setfield(L, -2, "request");
    lua_setfield(L, m, "http");
}

void sh_io_conn_closing(sh_conn *c)
{
    while (c->subs) {
        sh_conn_sub *s = c->subs;
        if (s->waiter) /* a task of another owner waits for this confirmation */
            sh_task_abort(s->waiter, "closed"); /* frees s */
        else
            csub_free(s);
    }
    timers_release_all(&c->timers);
}

void sh_io_gen_shutdown(sh_gen *g)
{
    timers_release_all(&g->timers);
    while (g->subs) {
        gsub *s = g->subs;
        if (s->waiter)
            sh_task_abort(s->waiter, "closed"); /* frees s */
        else
            gsub_free(s);
    }
}
