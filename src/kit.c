/* kit.c — the policy test kit's worlds and runner; see kit.h.
 *
 * A world (kit_world, the userdata "statushost.world") owns a uv loop that
 * has no socket on it, a transport in capture mode, a Lua host whose I/O
 * backend is the simulation below, and the generation of the policy under
 * test. The test's Lua state calls w:settle() to let the world run until
 * nothing is left to do at the current virtual time, and w:advance(ms) to
 * move the clock, firing timers in order.
 *
 * What the simulated backend cannot answer itself it queues as requests
 * (HTTP to the remote, Redis commands) that scripts/test.lua takes with
 * w:take() and answers (w:answer_http, w:answer_redis...) from the test's
 * route table and Redis store. */
#include "kit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <lauxlib.h>
#include <lualib.h>
#include <utlist.h>

#include "conn.h"
#include "kit_guard.h"
#include "log.h"
#include "lua_api.h"
#include "lua_host.h"
#include "lua_io.h"
#include "lua_lib.h"

#define WORLD_MT "statushost.world"
/* the instance id of every world: connection ids are 7e57000000000000 + a
 * counter, hex as in production ("7e57": test) */
#define KIT_INSTANCE "7e57000000000000"
#define SETTLE_MAX 100000 /* loop iterations before a world is said never to go idle */
#define SETTLE_CLOCK 64   /* iterations between two looks at the test's CPU time */
/* Worlds open at once: each holds a loop (two descriptors) and about 100 KB
 * outside the test file's Lua state, which --max-memory does not see. */
#define KIT_MAX_WORLDS 1000
/* The virtual clock ends at 2^53 ms (285,000 years; exact in a double, as
 * p:time() needs); the shared dictionaries' offset, which every world's clock
 * adds to, stops at 2^62 ms, so their arithmetic cannot overflow. */
#define KIT_MAX_MS ((uint64_t)1 << 53)
#define DICT_MAX_OFFSET_MS ((int64_t)1 << 62)

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

typedef struct kit_world kit_world;

typedef struct kit_timer {
    uint64_t due, seq;            /* fire order: due, then creation */
    void (*fire)(void *arg);
    void *arg;
    struct kit_timer *prev, *next;
} kit_timer;

enum { REQ_HTTP, REQ_REDIS };

typedef struct kit_req {
    kit_world *w;
    int id;
    int kind;                     /* REQ_HTTP, REQ_REDIS */
    int taken;                    /* handed to the test by w:take() */
    sh_http_cb http_cb;
    sh_redis_reply_cb redis_cb;
    void *arg;
    kit_timer *deadline;          /* HTTP: timeout_ms passed → "timeout" */
    int ref;                      /* registry: the request's description table */
    struct kit_req *prev, *next;
} kit_req;

typedef struct kit_sub {
    kit_world *w;
    sh_redis_msg_cb on_msg;
    sh_redis_confirm_cb on_confirm;
    void *arg;
    int confirmed;
    int dead;                     /* unsubscribed while a delivery walks the list */
    struct kit_sub *prev, *next;
    size_t len;
    char channel[];
} kit_sub;

typedef struct kit_client {
    int id;
    sh_conn *c;                   /* NULL once freed */
    sh_buf rx;                    /* what the server wrote, not yet taken */
    sh_buf tx;                    /* what the peer sent, not yet read by the server */
    int eof;                      /* the peer's EOF is to be read */
    int ended;                    /* EV_CLOSE came */
    int code;                     /* ... with this code */
    struct kit_client *prev, *next;
} kit_client;

struct kit_world {
    uv_loop_t loop;
    sh_metrics metrics;
    sh_transport tp;
    sh_host host;
    sh_gen *gen;                  /* a reference held */
    lua_State *L;                 /* the test's state (for request tables) */
    uint64_t now;                 /* virtual milliseconds */
    double epoch;                 /* host.now() at virtual 0 */
    uint64_t seq;
    kit_timer *timers;            /* sorted by (due, seq) */
    kit_req *reqs;                /* pending, in arrival order */
    int next_id;
    kit_sub *subs;
    int delivering;
    int redis_down;
    kit_client *clients;
    int next_client;
    int open;                     /* set up: closed by world_close */
};

/* ------------------------------------------------------------ clock */

/* Virtual time passed in every world, added to the shared dictionaries'
 * clock (host.shared TTLs follow the virtual clock). */
static int64_t dict_ms;

/* Move w's clock to t (>= now). */
static void clock_to(kit_world *w, uint64_t t)
{
    if (t <= w->now)
        return;
    int64_t step = (int64_t)(t - w->now);
    dict_ms = dict_ms > DICT_MAX_OFFSET_MS - step ? DICT_MAX_OFFSET_MS : dict_ms + step;
    sh_lib_set_clock_offset_ms(dict_ms);
    w->now = t;
}

static double kit_wall(void *ctx)
{
    kit_world *w = ctx;
    return w->epoch + (double)w->now / 1000.0;
}

static int timer_before(const kit_timer *a, const kit_timer *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void *kit_timer_start(void *ctx, uint64_t ms, void (*fire)(void *), void *arg)
{
    kit_world *w = ctx;
    kit_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->due = w->now + ms;
    t->seq = ++w->seq;
    t->fire = fire;
    t->arg = arg;
    kit_timer *at = w->timers;
    while (at && !timer_before(t, at))
        at = at->next;
    if (at)
        DL_PREPEND_ELEM(w->timers, at, t);
    else
        DL_APPEND(w->timers, t);
    return t;
}

static void kit_timer_stop(void *ctx, void *timer)
{
    kit_world *w = ctx;
    DL_DELETE(w->timers, (kit_timer *)timer);
    free(timer);
}

/* Fire the earliest timer due by `until`: 1 when one fired. */
static int fire_one(kit_world *w, uint64_t until)
{
    kit_timer *t = w->timers;
    if (!t || t->due > until)
        return 0;
    DL_DELETE(w->timers, t);
    clock_to(w, t->due);
    void (*fire)(void *) = t->fire;
    void *arg = t->arg;
    free(t);
    fire(arg);
    return 1;
}

/* ------------------------------------------------------------ requests */

static kit_req *req_new(kit_world *w, int kind, void *arg)
{
    kit_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->w = w;
    r->id = ++w->next_id;
    r->kind = kind;
    r->arg = arg;
    r->ref = LUA_NOREF;
    DL_APPEND(w->reqs, r);
    return r;
}

static void req_free(kit_req *r)
{
    kit_world *w = r->w;
    DL_DELETE(w->reqs, r);
    if (r->deadline)
        kit_timer_stop(w, r->deadline);
    luaL_unref(w->L, LUA_REGISTRYINDEX, r->ref);
    free(r);
}

static kit_req *req_find(kit_world *w, int id, int kind)
{
    kit_req *r;
    DL_FOREACH(w->reqs, r)
        if (r->id == id && r->kind == kind)
            return r;
    return NULL;
}

/* ------------------------------------------------------------ redis */

static int kit_redis_up(void *ctx) { return !((kit_world *)ctx)->redis_down; }

static int kit_redis_command(void *ctx, int argc, const char **argv, const size_t *lens,
                             sh_redis_reply_cb cb, void *arg, void **cmd)
{
    kit_world *w = ctx;
    if (sh_redis_refusal(argc, argv, lens))
        return SH_REDIS_EINVAL;
    if (w->redis_down)
        return SH_REDIS_EUNAVAILABLE;
    kit_req *r = req_new(w, REQ_REDIS, arg);
    if (!r)
        return SH_REDIS_ENOMEM;
    r->redis_cb = cb;
    lua_State *L = w->L;
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, r->id);
    lua_setfield(L, -2, "id");
    lua_pushliteral(L, "redis");
    lua_setfield(L, -2, "kind");
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushlstring(L, argv[i], lens[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "args");
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    *cmd = r;
    return 0;
}

static void kit_redis_cancel(void *ctx, void *cmd)
{
    (void)ctx;
    req_free(cmd);
}

static int kit_redis_subscribe(void *ctx, const char *ch, size_t len, sh_redis_msg_cb on_msg,
                               sh_redis_confirm_cb on_confirm, void *arg, void **sub)
{
    kit_world *w = ctx;
    if (w->redis_down)
        return SH_REDIS_EUNAVAILABLE;
    kit_sub *s = calloc(1, sizeof *s + len + 1);
    if (!s)
        return SH_REDIS_ENOMEM;
    s->w = w;
    s->on_msg = on_msg;
    s->on_confirm = on_confirm;
    s->arg = arg;
    s->len = len;
    memcpy(s->channel, ch, len);
    DL_APPEND(w->subs, s);
    *sub = s;
    return 0; /* confirmed by the next settle step, as Redis would a moment later */
}

static void sub_free(kit_sub *s)
{
    DL_DELETE(s->w->subs, s);
    free(s);
}

static void kit_redis_unsubscribe(void *ctx, void *sub)
{
    kit_world *w = ctx;
    kit_sub *s = sub;
    if (w->delivering)
        s->dead = 1;
    else
        sub_free(s);
}

/* Confirm the subscriptions made since the last step: 1 when one was. */
static int confirm_subs(kit_world *w)
{
    int any = 0;
    kit_sub *s, *tmp;
    DL_FOREACH_SAFE(w->subs, s, tmp) {
        if (s->confirmed || s->dead)
            continue;
        s->confirmed = 1;
        any = 1;
        if (s->on_confirm)
            s->on_confirm(s->arg, 0);
    }
    return any;
}

/* ------------------------------------------------------------ http */

static int kit_http_request(void *ctx, const sh_http_opts *o, sh_http_cb cb, void *arg,
                            void **call)
{
    kit_world *w = ctx;
    const char *sep = strstr(o->url, "://");
    if (!sep)
        return SH_HTTP_EINVAL;
    size_t slen = (size_t)(sep - o->url);
    if (!((slen == 4 && strncasecmp(o->url, "http", 4) == 0) ||
          (slen == 5 && strncasecmp(o->url, "https", 5) == 0)))
        return SH_HTTP_EUNSUPPORTED;
    if (!sep[3] || sep[3] == '/' || strpbrk(o->url, " \r\n") || sh_http_opts_check(o) != 0)
        return SH_HTTP_EINVAL; /* as the real client refuses them */
    kit_req *r = req_new(w, REQ_HTTP, arg);
    if (!r)
        return SH_HTTP_ENOMEM;
    r->http_cb = cb;
    lua_State *L = w->L;
    uint64_t timeout = o->timeout_ms ? o->timeout_ms : 30000;
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, r->id);
    lua_setfield(L, -2, "id");
    lua_pushliteral(L, "http");
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, o->method ? o->method : "GET");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, o->url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, o->body ? o->body : "", o->body_len);
    lua_setfield(L, -2, "body");
    lua_pushinteger(L, (lua_Integer)timeout);
    lua_setfield(L, -2, "timeout_ms");
    lua_createtable(L, 0, (int)o->nheaders);
    for (size_t i = 0; i < o->nheaders; i++) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (size_t j = 0; j < o->headers[i].name_len; j++) {
            char ch = o->headers[i].name[j];
            luaL_addchar(&b, ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch);
        }
        luaL_pushresult(&b);
        lua_pushlstring(L, o->headers[i].value, o->headers[i].value_len);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    *call = r;
    if (o->body_release) /* the body was copied into the request table */
        o->body_release(o->body_release_arg);
    return 0;
}

static void kit_http_cancel(void *ctx, void *call)
{
    (void)ctx;
    req_free(call);
}

static void http_fail(kit_req *r, int err, const char *why)
{
    sh_http_cb cb = r->http_cb;
    void *arg = r->arg;
    req_free(r);
    cb(arg, err, why, NULL);
}

static void http_deadline(void *arg)
{
    kit_req *r = arg;
    r->deadline = NULL; /* fired: freed by the clock */
    http_fail(r, SH_HTTP_ETIMEDOUT, sh_http_strerror(SH_HTTP_ETIMEDOUT));
}

static const sh_host_io kit_io = {
    .wall = kit_wall,
    .timer_start = kit_timer_start,
    .timer_stop = kit_timer_stop,
    .redis_up = kit_redis_up,
    .redis_command = kit_redis_command,
    .redis_cancel = kit_redis_cancel,
    .redis_subscribe = kit_redis_subscribe,
    .redis_unsubscribe = kit_redis_unsubscribe,
    .http_request = kit_http_request,
    .http_cancel = kit_http_cancel,
};

/* ------------------------------------------------------------ connections */

static kit_client *client_of(kit_world *w, const sh_conn *c)
{
    kit_client *k;
    DL_FOREACH(w->clients, k)
        if (k->c == c)
            return k;
    return NULL;
}

static kit_client *client_find(kit_world *w, lua_Integer id)
{
    kit_client *k;
    DL_FOREACH(w->clients, k)
        if (k->id == id)
            return k;
    return NULL;
}

static void on_capture(sh_conn *c, const char *data, size_t len, void *arg)
{
    kit_client *k = client_of(arg, c);
    if (k && sh_buf_append(&k->rx, data, len) != 0)
        sh_error(c->id, "test kit: out of memory capturing output");
}

static int on_event(sh_conn *c, const sh_conn_event *ev, void *arg)
{
    kit_world *w = arg;
    kit_client *k = client_of(w, c);
    if (ev->type == SH_CONN_EV_REQUEST) {
        if (!sh_policy_route(c, ev->req, ev->keep_alive, ev->head_only)) {
            sh_conn_respond(c, 404, "text/plain; charset=utf-8", "404 Not Found\n", 14, NULL,
                            ev->keep_alive, ev->head_only);
            sh_conn_request_done(c);
        }
        return 0;
    }
    if (ev->type == SH_CONN_EV_CLOSE && k) {
        k->ended = 1;
        k->code = ev->code;
    }
    int rc = sh_policy_event(c, ev);
    if (ev->type == SH_CONN_EV_FREE && k)
        k->c = NULL;
    return rc;
}

/* Hand each connection the peer's bytes while it reads: 1 when some went. */
static int feed_clients(kit_world *w)
{
    int any = 0;
    kit_client *k;
    DL_FOREACH(w->clients, k) {
        while (k->c && SH_HAS(k->c, SH_CF_READING) && (k->tx.len || k->eof)) {
            any = 1;
            if (!k->tx.len) {
                k->eof = 0;
                sh_conn_input(k->c, NULL, 0);
                break;
            }
            size_t n = k->tx.len < SH_READ_BUF_SIZE ? k->tx.len : SH_READ_BUF_SIZE;
            char *chunk = malloc(n);
            if (!chunk)
                break;
            memcpy(chunk, k->tx.p, n);
            sh_buf_consume(&k->tx, n);
            sh_conn_input(k->c, chunk, n);
            free(chunk);
        }
    }
    return any;
}

/* ------------------------------------------------------------ running */

static int busy(kit_world *w)
{
    return w->host.ready || w->tp.dirty || w->tp.npaused;
}

/* Run until nothing is left to do at the current virtual time. */
static int settle(kit_world *w, char *err, size_t errsz)
{
    int idle = 0;
    for (long i = 0; i < SETTLE_MAX; i++) {
        const char *over = i % SETTLE_CLOCK ? NULL : sh_kit_overtime();
        if (over) { /* a policy the test keeps busy */
            snprintf(err, errsz, "%s", over);
            return -1;
        }
        int moved = feed_clients(w);
        moved |= confirm_subs(w);
        moved |= fire_one(w, w->now);
        uv_run(&w->loop, UV_RUN_NOWAIT);
        if (moved || busy(w))
            idle = 0;
        else if (++idle == 2) /* one more turn: close callbacks, deferred frees */
            return 0;
    }
    snprintf(err, errsz, "the policy never goes idle (tasks keep waking each other)");
    return -1;
}

static kit_world *check_world(lua_State *L)
{
    kit_world *w = luaL_checkudata(L, 1, WORLD_MT);
    if (!w->open)
        luaL_error(L, "this policy was closed");
    w->L = L; /* request tables are made on the calling thread */
    return w;
}

static int settle_or_raise(lua_State *L, kit_world *w)
{
    char err[256];
    if (settle(w, err, sizeof err) != 0)
        return luaL_error(L, "%s", err);
    return 0;
}

static int live_worlds; /* open */

static void world_close(kit_world *w)
{
    if (!w->open)
        return;
    w->open = 0;
    live_worlds--;
    sh_transport_close(&w->tp);
    for (sh_gen *g = w->host.gens; g; g = g->next_gen)
        sh_gen_ref(g);
    for (sh_gen *g = w->host.gens; g; g = g->next_gen) {
        sh_owner_release_tasks(&g->detached);
        sh_io_owner_release(&g->detached);
        sh_gen_shutdown(g);
    }
    for (sh_gen *g = w->host.gens, *next; g; g = next) {
        next = g->next_gen;
        sh_gen_unref(g);
    }
    sh_host_close(&w->host);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->gen)
        sh_gen_unref(w->gen);
    w->gen = NULL;
    while (w->reqs)
        req_free(w->reqs);
    while (w->timers)
        kit_timer_stop(w, w->timers);
    while (w->subs)
        sub_free(w->subs);
    while (w->clients) {
        kit_client *k = w->clients;
        DL_DELETE(w->clients, k);
        sh_buf_free(&k->rx);
        sh_buf_free(&k->tx);
        free(k);
    }
    uv_loop_close(&w->loop);
}

/* ------------------------------------------------------------ Lua: worlds */

/* os.exit in a test file or a policy under test: Lua's would end the run
 * with that status (0 included) and the remaining tests unrun and unreported.
 * The run bails out instead, with status 2. */
static int kit_os_exit(lua_State *L)
{
    luaL_where(L, 1);
    const char *where = lua_tostring(L, -1);
    printf("Bail out! %sos.exit called: the test run ends here\n", where);
    fprintf(stderr, "statushost --test: %sos.exit called (by a test or a policy): the run ends "
                    "with its tests unreported, exit status 2\n", where);
    fflush(stdout);
    exit(2);
}

static void replace_os_exit(lua_State *L)
{
    if (lua_getglobal(L, "os") == LUA_TTABLE) {
        lua_pushcfunction(L, kit_os_exit);
        lua_setfield(L, -2, "exit");
    }
    lua_pop(L, 1);
}

/* The policy's API, with os.exit replaced before the script runs. */
static void kit_api_open(lua_State *L, sh_gen *g)
{
    sh_lua_api_open(L, g);
    replace_os_exit(L);
    sh_kit_guard_stdout(L); /* its print and io.write stay off the TAP stream */
}

/* kit.load(script, {"key=value", ...}, log) → world | nil, err */
static int l_load(lua_State *L)
{
    const char *script = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int log = lua_toboolean(L, 3);
    size_t nsets = (size_t)luaL_len(L, 2);
    if (nsets > 256)
        return luaL_error(L, "at most 256 config overrides");
    if (live_worlds >= KIT_MAX_WORLDS) {
        lua_pushnil(L);
        lua_pushfstring(L, "%d policies are open: the most a test may have open at once "
                           "(p:close() the ones it is done with)", KIT_MAX_WORLDS);
        return 2;
    }
    const char *sets[256];
    for (size_t i = 0; i < nsets; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        sets[i] = luaL_checkstring(L, -1); /* anchored in the table */
        lua_pop(L, 1);
    }
    kit_world *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    luaL_setmetatable(L, WORLD_MT);
    w->L = L;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    w->epoch = (double)tv.tv_sec;
    if (uv_loop_init(&w->loop) != 0)
        return luaL_error(L, "cannot create a loop");
    sh_host_init(&w->host, &w->loop, &w->metrics, KIT_INSTANCE);
    w->host.io = &kit_io;
    w->host.io_ctx = w;
    if (sh_transport_init(&w->tp, &w->loop, &sh_ws_phase_rfc6455, on_event, w, &w->metrics, KIT_INSTANCE) != 0) {
        sh_host_close(&w->host);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
        return luaL_error(L, "out of memory");
    }
    sh_transport_set_capture(&w->tp, on_capture);
    w->open = 1;
    live_worlds++;
    char err[1024];
    if (sh_gen_load(&w->host, kit_api_open, script, sets, nsets, &w->gen, err, sizeof err) != 0) {
        world_close(w);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    if (log)
        sh_config_apply_log(&w->gen->cfg);
    if (settle(w, err, sizeof err) != 0) {
        world_close(w);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int w_close(lua_State *L)
{
    kit_world *w = luaL_checkudata(L, 1, WORLD_MT);
    w->L = L;
    world_close(w);
    return 0;
}

/* w:settle() */
static int w_settle(lua_State *L)
{
    return settle_or_raise(L, check_world(L));
}

/* w:advance(ms): the clock moves by ms; timers due on the way fire in order,
 * each at its own time, with the world settled after each. */
static int w_advance(lua_State *L)
{
    kit_world *w = check_world(L);
    lua_Integer ms = luaL_checkinteger(L, 2);
    luaL_argcheck(L, ms >= 0, 2, "must be >= 0");
    if ((uint64_t)ms > KIT_MAX_MS - w->now)
        return luaL_error(L, "p:advance: the virtual clock ends at 2^53 ms (now %I, advance %I)",
                          (lua_Integer)w->now, ms);
    uint64_t until = w->now + (uint64_t)ms;
    settle_or_raise(L, w);
    while (w->timers && w->timers->due <= until) {
        fire_one(w, until);
        settle_or_raise(L, w);
    }
    clock_to(w, until);
    return settle_or_raise(L, w);
}

/* w:now() → virtual milliseconds since the world started */
static int w_now(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_world(L)->now);
    return 1;
}

/* w:wall_ms() → host.now() of the world, in milliseconds */
static int w_wall_ms(lua_State *L)
{
    kit_world *w = check_world(L);
    lua_pushnumber(L, kit_wall(w) * 1000.0);
    return 1;
}

/* w:next_timer() → the virtual time the earliest timer is due at, or nil */
static int w_next_timer(lua_State *L)
{
    kit_world *w = check_world(L);
    if (w->timers)
        lua_pushinteger(L, (lua_Integer)w->timers->due);
    else
        lua_pushnil(L);
    return 1;
}

/* w:take() → the requests not handed out yet, in order (tables: id, kind, ...) */
static int w_take(lua_State *L)
{
    kit_world *w = check_world(L);
    lua_newtable(L);
    int n = 0;
    kit_req *r;
    DL_FOREACH(w->reqs, r) {
        if (r->taken)
            continue;
        r->taken = 1;
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

/* A copy of the header name or value at idx, as a string. Only strings and
 * numbers: a __tostring metamethod could run the test's Lua (and free the
 * request being answered) in the middle of w:answer_http. */
static void push_header_part(lua_State *L, int idx, const char *what)
{
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "answer_http: a header %s must be a string or a number, got %s", what,
                   luaL_typename(L, idx));
    lua_pushvalue(L, idx);
    lua_tolstring(L, -1, NULL); /* the copy becomes a string, not the table's key */
}

/* w:answer_http(id, status, body, {name=value}) → true | false (gone) */
static int w_answer_http(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_req *r = req_find(w, (int)luaL_checkinteger(L, 2), REQ_HTTP);
    int status = (int)luaL_checkinteger(L, 3);
    size_t blen;
    const char *body = luaL_optlstring(L, 4, "", &blen);
    if (!r) {
        lua_pushboolean(L, 0);
        return 1;
    }
    sh_http_hdr hdrs[64];
    size_t nh = 0;
    if (lua_istable(L, 5)) {
        /* names and values, as strings, anchored in a table while used */
        lua_newtable(L);
        int anchor = lua_gettop(L), k = 0;
        lua_pushnil(L);
        while (lua_next(L, 5)) {
            if (k < 2 * 64) {
                push_header_part(L, -2, "name");
                lua_rawseti(L, anchor, ++k);
                push_header_part(L, -1, "value");
                lua_rawseti(L, anchor, ++k);
            }
            lua_pop(L, 1);
        }
        for (int i = 1; i <= k; i += 2, nh++) {
            lua_rawgeti(L, anchor, i);
            hdrs[nh].name = lua_tolstring(L, -1, &hdrs[nh].name_len);
            lua_rawgeti(L, anchor, i + 1);
            hdrs[nh].value = lua_tolstring(L, -1, &hdrs[nh].value_len);
            lua_pop(L, 2);
        }
    }
    sh_http_response res = {.status = status, .headers = hdrs, .nheaders = nh,
                            .body = body, .body_len = blen};
    sh_http_cb cb = r->http_cb;
    void *arg = r->arg;
    req_free(r);
    cb(arg, 0, NULL, &res);
    lua_pushboolean(L, 1);
    return 1;
}

static int http_error_code(const char *why)
{
    static const int codes[] = {SH_HTTP_EREFUSED, SH_HTTP_ETIMEDOUT, SH_HTTP_EBADRESPONSE,
                                SH_HTTP_ECLOSED, SH_HTTP_ERESOLVE, SH_HTTP_ETOOLARGE};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(why, sh_http_strerror(codes[i])) == 0)
            return codes[i];
    return SH_HTTP_ECLOSED;
}

/* w:fail_http(id, why) → true | false: the request fails with why
 * ("refused", "timeout", "closed", ...) */
static int w_fail_http(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_req *r = req_find(w, (int)luaL_checkinteger(L, 2), REQ_HTTP);
    const char *why = luaL_checkstring(L, 3);
    if (r)
        http_fail(r, http_error_code(why), why);
    lua_pushboolean(L, r != NULL);
    return 1;
}

/* w:hang_http(id): no answer; the request's timeout_ms fails it ("timeout") */
static int w_hang_http(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_req *r = req_find(w, (int)luaL_checkinteger(L, 2), REQ_HTTP);
    if (r && !r->deadline) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
        lua_getfield(L, -1, "timeout_ms");
        r->deadline = kit_timer_start(w, (uint64_t)lua_tointeger(L, -1), http_deadline, r);
    }
    return 0;
}

static void reply_free(redisReply *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->elements; i++)
        reply_free(r->element[i]);
    free(r->element);
    free(r->str);
    free(r);
}

/* A Lua value as a Redis reply: string → bulk, integer → integer, true →
 * status OK, kit.null (light userdata NULL) or false → nil, {err = "..."} →
 * error, other tables → arrays, floats → bulk strings. */
static redisReply *reply_of(lua_State *L, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    redisReply *r = calloc(1, sizeof *r);
    if (!r || depth > 16)
        return r;
    size_t len;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            r->type = REDIS_REPLY_INTEGER;
            r->integer = lua_tointeger(L, idx);
            return r;
        }
        /* fall through */
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        r->type = REDIS_REPLY_STRING;
        goto str;
    case LUA_TBOOLEAN:
        if (!lua_toboolean(L, idx)) {
            r->type = REDIS_REPLY_NIL;
            return r;
        }
        s = "OK";
        len = 2;
        r->type = REDIS_REPLY_STATUS;
        goto str;
    case LUA_TTABLE:
        /* raw accesses only: a metamethod could run the test's Lua (and free
         * the request being answered), or raise and leak the reply */
        lua_pushliteral(L, "err");
        if (lua_rawget(L, idx) == LUA_TSTRING) {
            s = lua_tolstring(L, -1, &len);
            r->type = REDIS_REPLY_ERROR;
            lua_pop(L, 1);
            goto str;
        }
        lua_pop(L, 1);
        r->type = REDIS_REPLY_ARRAY;
        r->elements = lua_rawlen(L, idx);
        r->element = calloc(r->elements ? r->elements : 1, sizeof *r->element);
        if (!r->element) {
            r->elements = 0;
            return r;
        }
        for (size_t i = 0; i < r->elements; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i + 1);
            r->element[i] = reply_of(L, -1, depth + 1);
            lua_pop(L, 1);
            if (!r->element[i]) {
                r->elements = i;
                break;
            }
        }
        return r;
    default:
        r->type = REDIS_REPLY_NIL;
        return r;
    }
str:
    r->str = malloc(len + 1);
    if (r->str) {
        memcpy(r->str, s, len);
        r->str[len] = 0;
        r->len = len;
    }
    return r;
}

/* w:answer_redis(id, value) → true | false (gone) */
static int w_answer_redis(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_req *r = req_find(w, (int)luaL_checkinteger(L, 2), REQ_REDIS);
    if (!r) {
        lua_pushboolean(L, 0);
        return 1;
    }
    redisReply *reply = reply_of(L, 3, 0);
    sh_redis_reply_cb cb = r->redis_cb;
    void *arg = r->arg;
    req_free(r);
    if (cb)
        cb(arg, reply, reply ? NULL : "closed");
    reply_free(reply);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:fail_redis(id, why): the command gets no reply (nil, why), as when the
 * connection drops */
static int w_fail_redis(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_req *r = req_find(w, (int)luaL_checkinteger(L, 2), REQ_REDIS);
    const char *why = luaL_checkstring(L, 3);
    if (r) {
        sh_redis_reply_cb cb = r->redis_cb;
        void *arg = r->arg;
        req_free(r);
        if (cb)
            cb(arg, NULL, why);
    }
    lua_pushboolean(L, r != NULL);
    return 1;
}

/* w:publish(channel, message) → receivers (confirmed subscriptions) */
static int w_publish(lua_State *L)
{
    kit_world *w = check_world(L);
    size_t clen, mlen;
    const char *ch = luaL_checklstring(L, 2, &clen);
    const char *msg = luaL_checklstring(L, 3, &mlen);
    lua_Integer n = 0;
    if (!w->redis_down) {
        w->delivering++;
        kit_sub *s;
        DL_FOREACH(w->subs, s) {
            if (s->dead || !s->confirmed || s->len != clen || memcmp(s->channel, ch, clen) != 0)
                continue;
            n++;
            if (s->on_msg)
                s->on_msg(s->arg, ch, clen, msg, mlen);
        }
        if (--w->delivering == 0) {
            kit_sub *tmp;
            DL_FOREACH_SAFE(w->subs, s, tmp)
                if (s->dead)
                    sub_free(s);
        }
    }
    lua_pushinteger(L, n);
    return 1;
}

/* w:subscribers(channel) → confirmed subscriptions to channel (PUBSUB NUMSUB) */
static int w_subscribers(lua_State *L)
{
    kit_world *w = check_world(L);
    size_t clen;
    const char *ch = luaL_checklstring(L, 2, &clen);
    lua_Integer n = 0;
    kit_sub *s;
    DL_FOREACH(w->subs, s)
        n += !s->dead && s->confirmed && s->len == clen && memcmp(s->channel, ch, clen) == 0;
    lua_pushinteger(L, n);
    return 1;
}

/* w:redis_down(bool): Redis unreachable (commands and subscriptions fail
 * "unavailable", host.redis_up() is false) or back */
static int w_redis_down(lua_State *L)
{
    kit_world *w = check_world(L);
    w->redis_down = lua_toboolean(L, 2);
    if (w->redis_down) { /* the subscriber connections drop */
        kit_sub *s, *tmp;
        DL_FOREACH_SAFE(w->subs, s, tmp)
            if (!s->confirmed && !s->dead) {
                DL_DELETE(w->subs, s);
                if (s->on_confirm)
                    s->on_confirm(s->arg, SH_REDIS_EUNAVAILABLE);
                free(s);
            }
    }
    return 0;
}

/* Is peer a socket address as accept() gives one: "ip:port", "[ip6]:port"? */
static int peer_ok(const char *peer)
{
    char ip[SH_IP_MAX];
    const char *colon = strrchr(peer, ':');
    if (!colon || !colon[1] || sh_peer_ip(peer, ip, sizeof ip) != 0)
        return 0;
    return peer[0] == '[' ? colon[-1] == ']' : strchr(peer, ':') == colon;
}

/* w:connect(peer) → client id: a connection accepted from peer ("ip:port") */
static int w_connect(lua_State *L)
{
    kit_world *w = check_world(L);
    const char *peer = luaL_optstring(L, 2, "127.0.0.1:40000");
    if (!peer_ok(peer)) {
        char shown[65];
        snprintf(shown, sizeof shown, "%s", peer);
        return luaL_error(L, "peer \"%s\": an address with a port expected (\"10.0.0.1:5000\", "
                             "\"[2001:db8::1]:5000\")", shown);
    }
    kit_client *k = calloc(1, sizeof *k);
    if (!k)
        return luaL_error(L, "out of memory");
    k->c = sh_transport_open_virtual(&w->tp, &w->gen->limits, peer);
    if (!k->c) {
        free(k);
        return luaL_error(L, "out of memory");
    }
    k->id = ++w->next_client;
    DL_APPEND(w->clients, k);
    if (sh_policy_attach(k->c, w->gen) != 0) {
        sh_conn_close(k->c);
        return luaL_error(L, "out of memory");
    }
    sh_conn_start(k->c);
    lua_pushinteger(L, k->id);
    return 1;
}

static kit_client *check_client(lua_State *L, kit_world *w)
{
    kit_client *k = client_find(w, luaL_checkinteger(L, 2));
    if (!k)
        luaL_error(L, "no such connection");
    return k;
}

/* w:input(client, bytes): the peer sends bytes (nil: the peer's EOF) */
static int w_input(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_client *k = check_client(L, w);
    if (lua_isnoneornil(L, 3)) {
        k->eof = 1;
        return 0;
    }
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    if (sh_buf_append(&k->tx, data, len) != 0)
        return luaL_error(L, "out of memory");
    return 0;
}

/* w:output(client) → bytes the server wrote since the last call, ended,
 * close code (as EV_CLOSE reported it), freed */
static int w_output(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_client *k = check_client(L, w);
    lua_pushlstring(L, k->rx.p ? k->rx.p : "", k->rx.len);
    sh_buf_free(&k->rx);
    lua_pushboolean(L, k->ended);
    if (k->ended)
        lua_pushinteger(L, k->code);
    else
        lua_pushnil(L);
    lua_pushboolean(L, k->c == NULL);
    return 4;
}

/* w:drop(client): the connection dies (a reset, no close frame) */
static int w_drop(lua_State *L)
{
    kit_world *w = check_world(L);
    kit_client *k = check_client(L, w);
    if (k->c)
        sh_conn_close(k->c);
    return 0;
}

#define DEFERRED "statushost.kit.deferred" /* registry: worlds to close after a kit call */

static void close_deferred(lua_State *L);

/* __gc and __close: not through kit_call (a finalizer must not raise). A
 * finalizer that runs inside a kit call (a collection step there) would
 * close a world in the middle of the simulation: the world is kept (listed,
 * so alive) and closed when the call ends. */
static int w_gc(lua_State *L)
{
    kit_world *w = luaL_checkudata(L, 1, WORLD_MT);
    if (w->open && sh_kit_guard_inside(L)) {
        luaL_getsubtable(L, LUA_REGISTRYINDEX, DEFERRED);
        lua_pushvalue(L, 1);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        return 0;
    }
    w->L = L;
    sh_kit_guard_enter(L);
    world_close(w);
    sh_kit_guard_leave(L);
    close_deferred(L); /* a finalizer that ran inside world_close */
    return 0;
}

/* Close the worlds w_gc deferred, each anchored on the stack while it closes
 * (and those deferred meanwhile). */
static void close_deferred(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, DEFERRED) != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    for (lua_Integer n; (n = (lua_Integer)lua_rawlen(L, -1)) > 0;) {
        lua_rawgeti(L, -1, n);
        lua_pushnil(L);
        lua_rawseti(L, -3, n);
        kit_world *w = lua_touserdata(L, -1);
        w->L = L;
        sh_kit_guard_enter(L);
        world_close(w);
        sh_kit_guard_leave(L);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static const luaL_Reg world_methods[] = {
    {"close", w_close},           {"settle", w_settle},       {"advance", w_advance},
    {"now", w_now},               {"take", w_take},           {"next_timer", w_next_timer},
    {"wall_ms", w_wall_ms},           {"answer_http", w_answer_http},
    {"fail_http", w_fail_http},   {"hang_http", w_hang_http}, {"answer_redis", w_answer_redis},
    {"fail_redis", w_fail_redis}, {"publish", w_publish},     {"subscribers", w_subscribers},
    {"redis_down", w_redis_down}, {"connect", w_connect},     {"input", w_input},
    {"output", w_output},         {"drop", w_drop},           {NULL, NULL},
};

/* kit.reset_shared(): forget every shared dictionary (between tests, once
 * their worlds are closed) */
static int l_reset_shared(lua_State *L)
{
    (void)L;
    sh_lib_shutdown();
    return 0;
}

/* A kit function or world method, upvalue 1, called as a kit call: the test
 * state's memory cap is off while it runs policies (their requests become
 * tables of that state from inside the simulation, where an error would break
 * it), and a finalizer of the test's that runs meanwhile cannot call the kit
 * again (it would free what the call is using). */
static int kit_call(lua_State *L)
{
    if (sh_kit_guard_inside(L)) /* only a finalizer runs the test's Lua inside a kit call */
        return luaL_error(L, "the test kit is busy: a finalizer (__gc) that runs inside one "
                             "of its calls cannot call it");
    sh_kit_guard_enter(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sh_kit_guard_leave(L);
    close_deferred(L);
    if (st != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

/* luaL_setfuncs, each function through kit_call */
static void set_kit_calls(lua_State *L, const luaL_Reg *r)
{
    for (; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_pushcclosure(L, kit_call, 1);
        lua_setfield(L, -2, r->name);
    }
}

static int l_run(lua_State *L);
static int l_take_writer(lua_State *L);

static int luaopen_kit(lua_State *L)
{
    luaL_newmetatable(L, WORLD_MT);
    lua_newtable(L);
    set_kit_calls(L, world_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__close");
    lua_pushboolean(L, 0); /* the methods cannot be replaced from a test file */
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    lua_newtable(L);
    static const luaL_Reg calls[] = {{"load", l_load}, {"reset_shared", l_reset_shared},
                                     {NULL, NULL}};
    set_kit_calls(L, calls);
    lua_pushcfunction(L, l_run);
    lua_setfield(L, -2, "run");
    lua_pushcfunction(L, l_take_writer);
    lua_setfield(L, -2, "take_writer");
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.script_dir");
    lua_setfield(L, -2, "dir"); /* the test file's directory */
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_newtable(L);
    sh_lib_register(L, -1); /* the policies' helpers: base64, hmac, sha256, json... */
    lua_setfield(L, -2, "lib");
    return 1;
}

/* ------------------------------------------------------------ runner */

typedef struct kit_file {
    const char *path;
    lua_State *L;
    lua_Integer ntests;
} kit_file;

/* What runs: the file whose tests run (NULL while the files load), the
 * tests kit.run ran of it, and whether one is running. */
static struct {
    kit_file *file;
    lua_Integer last;
    int in_test;
} run;

static int tap_write(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    fwrite(s, 1, len, stdout);
    return 0;
}

/* kit.take_writer() → write(s): s on stdout, the TAP stream (print and
 * io.write do not reach it: kit_guard.h). Once per state: scripts/test.lua
 * takes it. */
static int l_take_writer(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, "statushost.kit.writer") != LUA_TNIL)
        return luaL_error(L, "kit.take_writer: taken already (by scripts/test.lua)");
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "statushost.kit.writer");
    lua_pushcfunction(L, tap_write);
    return 1;
}

static int tostring_call(lua_State *L)
{
    luaL_tolstring(L, 1, NULL);
    return 1;
}

/* The error value at the top of L replaced by its text: a string or a
 * number as it is; a value with __tostring by what that gives, when it
 * gives a string; else what it is, as lua.c says it. */
static void error_text(lua_State *L)
{
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING)
        return;
    if (t == LUA_TNUMBER) {
        lua_tolstring(L, -1, NULL);
        return;
    }
    if (luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushcfunction(L, tostring_call);
        lua_pushvalue(L, -2);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
            lua_replace(L, -2);
            return;
        }
        lua_pop(L, 1);
    }
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
    lua_replace(L, -2);
}

static int traceback(lua_State *L)
{
    lua_settop(L, 1);
    error_text(L);
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/* Push what test coroutine co ended with (st, the resume's status; over,
 * the phase's overtime): true, or false and a message, and for a Failure
 * (a table whose metatable is at failure_idx, with a string msg) its where.
 * → the number of values pushed */
static int outcome(lua_State *L, lua_State *co, int st, const char *over, int failure_idx)
{
    if (st == LUA_OK && !over) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    if (st == LUA_OK) { /* its last call was to C, past the time */
        lua_pushstring(L, over);
        return 2;
    }
    /* the room to say it, past the cap: no code of the test's runs here, but for a
     * __tostring (error_text) */
    sh_kit_guard_enter(L);
    if (st == LUA_YIELD) {
        luaL_traceback(L, co, "the test yielded (coroutine.yield outside a coroutine of its "
                              "own): a test runs to its end", 0);
        sh_kit_guard_leave(L);
        return 2;
    }
    if (st == LUA_ERRMEM) {
        char msg[200];
        snprintf(msg, sizeof msg, "not enough memory: past --max-memory %zu (the test file's "
                 "Lua state held %zu bytes)", sh_kit_memory_cap(L), sh_kit_memory(L));
        luaL_traceback(L, co, msg, 0);
        sh_kit_guard_leave(L);
        return 2;
    }
    lua_xmove(co, L, 1); /* the error value */
    if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
        int failure = lua_rawequal(L, -1, failure_idx);
        lua_pop(L, 1);
        lua_pushliteral(L, "msg");
        lua_rawget(L, -2);
        lua_pushliteral(L, "where");
        lua_rawget(L, -3);
        if (failure && lua_type(L, -2) == LUA_TSTRING &&
            (lua_type(L, -1) == LUA_TSTRING || lua_isnil(L, -1))) {
            lua_remove(L, -3);
            sh_kit_guard_leave(L);
            return 3;
        }
        lua_pop(L, 2);
    }
    sh_kit_guard_leave(L);
    error_text(L); /* under the cap: a __tostring may run */
    sh_kit_guard_enter(L);
    luaL_traceback(L, co, lua_tostring(L, -1), 0);
    lua_remove(L, -2);
    sh_kit_guard_leave(L);
    return 2;
}

/* kit.run(i, fn, Failure) → true | false, message [, where]: the running
 * file's test i (each once, in order; none inside another), fn, on a
 * coroutine of its own, as a phase with its own CPU time. */
static int l_run(lua_State *L)
{
    lua_Integer i = luaL_checkinteger(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_checktype(L, 3, LUA_TTABLE);
    if (!run.file || run.in_test || sh_kit_guard_inside(L) || i != run.last + 1 ||
        i > run.file->ntests)
        return luaL_error(L, "kit.run: the kit's own (it runs each test once, in order)");
    run.last = i;
    lua_settop(L, 3);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 2);
    lua_xmove(L, co, 1);
    run.in_test = 1;
    char ctx[300];
    snprintf(ctx, sizeof ctx, "%s, test %lld", run.file->path, (long long)i);
    sh_kit_phase("the test", ctx);
    int nres, st = LUA_ERRRUN;
    if (sh_kit_guard_resume(co) == 0) {
        st = lua_resume(co, L, 0, &nres);
        sh_kit_guard_resumed();
    } else {
        lua_pushliteral(co, "coroutines nested too deep");
    }
    int n = outcome(L, co, st, sh_kit_overtime(), 3);
    if (st != LUA_OK && !sh_kit_guard_spent(co) && sh_kit_guard_resume(co) == 0) {
        lua_resetthread(co); /* its pending __close handlers run, in the test's time */
        sh_kit_guard_resumed();
    }
    lua_remove(L, 4);
    if (st == LUA_ERRMEM)
        lua_gc(L, LUA_GCCOLLECT); /* what the test held, for the report and the next one */
    run.in_test = 0;
    sh_kit_phase("the kit, closing a test's policies and reporting it", ctx);
    close_deferred(L); /* collected while the outcome was made */
    return n;
}

/* "Bail out!" with the first line of why; the rest as comments; all of it on stderr */
static void bail_out(const char *path, const char *why)
{
    if (!why)
        why = "?";
    size_t first = strcspn(why, "\n");
    printf("Bail out! %s: %.*s\n", path, (int)first, why);
    for (const char *p = why + first; *p;) {
        p++;
        size_t n = strcspn(p, "\n");
        printf("# %.*s\n", (int)n, p);
        p += n;
    }
    fprintf(stderr, "statushost --test: %s: %s\n", path, why);
}

/* The error of a pcall that returned st (at the top of L), for bail_out */
static const char *pcall_error(lua_State *L, int st, char *buf, size_t bufsz)
{
    if (st == LUA_ERRMEM) {
        snprintf(buf, bufsz, "not enough memory: past --max-memory %zu (the test file's Lua "
                 "state held %zu bytes)", sh_kit_memory_cap(L), sh_kit_memory(L));
        return buf;
    }
    return lua_tostring(L, -1);
}

/* The statushost.test module's function `name` pushed; 0 when it is none. */
static int test_module_fn(lua_State *L, const char *name)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    int ok = lua_getfield(L, -1, "statushost.test") == LUA_TTABLE;
    if (ok) {
        lua_pushstring(L, name);
        ok = lua_rawget(L, -2) == LUA_TFUNCTION;
        lua_replace(L, -3);
    }
    lua_pop(L, 1);
    if (!ok)
        lua_pop(L, 1);
    return ok;
}

/* Load a test file: its state, the kit preloaded, the file run (it
 * registers its tests). Returns 0, or -1 with the reason printed. */
static int load_file(kit_file *f, const sh_kit_limits *lim)
{
    lua_State *L = f->L = sh_kit_state_new(lim);
    if (!L) {
        fprintf(stderr, "statushost --test: out of memory\n");
        return -1;
    }
    replace_os_exit(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_kit);
    lua_setfield(L, -2, "statushost.kit");
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
    sh_host_module_paths(L, f->path);
    sh_kit_phase("loading the file", f->path);
    sh_kit_guard_running(L);
    lua_pushcfunction(L, traceback);
    char buf[200];
    int st = luaL_loadfilex(L, f->path, "t");
    if (st == LUA_OK)
        st = lua_pcall(L, 0, 0, -2);
    if (st != LUA_OK) {
        sh_kit_phase(NULL, NULL);
        sh_kit_guard_running(NULL);
        bail_out(f->path, pcall_error(L, st, buf, sizeof buf));
        return -1;
    }
    st = -1;
    if (test_module_fn(L, "_count") && (st = lua_pcall(L, 0, 1, 0)) == LUA_OK)
        f->ntests = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
    sh_kit_phase(NULL, NULL);
    sh_kit_guard_running(NULL);
    if (st != LUA_OK || f->ntests < 0) {
        f->ntests = 0;
        printf("Bail out! %s: no tests (it must require \"statushost.test\")\n", f->path);
        fprintf(stderr, "statushost --test: %s: no tests (it must require "
                        "\"statushost.test\" and call test())\n", f->path);
        return -1;
    }
    lua_settop(L, 0);
    return 0;
}

/* Run a loaded file's tests numbered from first: the number that failed,
 * or -1 when the run bailed out. */
static lua_Integer run_file(kit_file *f, lua_Integer first)
{
    lua_State *L = f->L;
    char buf[200];
    run.file = f;
    run.last = 0;
    run.in_test = 0;
    sh_kit_phase("the kit, starting the file's tests", f->path);
    sh_kit_guard_running(L);
    lua_pushcfunction(L, traceback);
    int st = LUA_ERRRUN;
    if (test_module_fn(L, "_run")) {
        lua_pushinteger(L, first);
        st = lua_pcall(L, 1, 1, 1);
    } else {
        lua_pushliteral(L, "the statushost.test module is gone");
    }
    run.file = NULL;
    sh_kit_phase(NULL, NULL);
    sh_kit_guard_running(NULL);
    if (st != LUA_OK) {
        bail_out(f->path, pcall_error(L, st, buf, sizeof buf));
        return -1;
    }
    if (run.last != f->ntests) {
        snprintf(buf, sizeof buf, "%lld of its %lld tests ran", (long long)run.last,
                 (long long)f->ntests);
        bail_out(f->path, buf);
        return -1;
    }
    return lua_tointeger(L, -1);
}

int sh_kit_main(int nargs, char **args)
{
    static sh_kit_limits lim;
    char err[256];
    int skip = sh_kit_parse_limits(nargs, args, &lim, err, sizeof err);
    if (skip < 0 || skip == nargs) {
        fprintf(stderr, "statushost: %s\n", skip < 0 ? err : "--test needs one or more FILE.lua");
        return 2;
    }
    int nfiles = nargs - skip;
    char **files = args + skip;
    if (lim.cpu_ms && sh_kit_backstop_install() != 0) {
        fprintf(stderr, "statushost --test: the CPU-time signal: %s\n", strerror(errno));
        return 2;
    }
    sh_log_set_level(SH_LOG_WARN);
    sh_log_set_access(0);
    sh_lib_set_clock_virtual(1); /* host.shared TTLs follow the virtual clocks only */
    setvbuf(stdout, NULL, _IOLBF, 0);
    kit_file *f = calloc((size_t)nfiles, sizeof *f);
    if (!f)
        return 2;
    int rc = 0;
    lua_Integer total = 0, failed = 0;
    for (int i = 0; i < nfiles && rc == 0; i++) {
        f[i].path = files[i];
        if (load_file(&f[i], &lim) != 0)
            rc = 2;
        total += f[i].ntests;
    }
    if (rc == 0) {
        printf("1..%lld\n", (long long)total);
        lua_Integer next = 1;
        for (int i = 0; i < nfiles && rc == 0; i++) {
            if (nfiles > 1)
                printf("# %s\n", f[i].path);
            lua_Integer n = run_file(&f[i], next);
            if (n < 0)
                rc = 2;
            else
                failed += n;
            next += f[i].ntests;
            close_deferred(f[i].L);
            sh_kit_state_close(f[i].L, "closing the file", f[i].path); /* its worlds close with it */
            f[i].L = NULL;
        }
        if (failed && rc == 0)
            printf("# %lld of %lld tests failed\n", (long long)failed, (long long)total);
        if (rc == 0)
            rc = failed ? 1 : 0;
    }
    for (int i = 0; i < nfiles; i++)
        if (f[i].L) {
            close_deferred(f[i].L);
            sh_kit_state_close(f[i].L, "closing the file", f[i].path);
        }
    free(f);
    return rc;
}
