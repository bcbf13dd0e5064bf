/* lua_api.c — the `statushost` module: conn objects, logging, metrics,
 * spawn, and the hook calls. I/O bindings are in lua_io.c. */
#include "lua_api.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "metrics.h"
#include "server.h"

#define CONN_MT "statushost.conn"

typedef struct conn_ud {
    sh_conn *c; /* NULL once the connection is freed */
} conn_ud;

/* ------------------------------------------------------------- conn object */

sh_conn *sh_api_check_conn(lua_State *L, int i)
{
    conn_ud *u = luaL_checkudata(L, i, CONN_MT);
    return u->c;
}

/* Build the request table {method, path, query, target, headers, body, peer}. */
static void push_request(lua_State *L, const sh_request *r, const char *peer)
{
    lua_createtable(L, 0, 7);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, r->query);
    lua_setfield(L, -2, "query");
    lua_pushstring(L, r->target);
    lua_setfield(L, -2, "target");
    lua_pushlstring(L, r->body, r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "peer");
    lua_createtable(L, 0, (int)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        char name[128];
        size_t n = strlen(r->headers[i].name);
        if (n >= sizeof name)
            continue;
        for (size_t j = 0; j <= n; j++)
            name[j] = (char)((r->headers[i].name[j] >= 'A' && r->headers[i].name[j] <= 'Z')
                                 ? r->headers[i].name[j] + 32
                                 : r->headers[i].name[j]);
        lua_getfield(L, -1, name);
        if (lua_isstring(L, -1)) { /* repeated header: join with ", " */
            lua_pushstring(L, ", ");
            lua_pushstring(L, r->headers[i].value);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, r->headers[i].value);
        }
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "headers");
}

void sh_conn_push(sh_conn *c, lua_State *L)
{
    if (c->ud_ref == LUA_NOREF) {
        conn_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
        u->c = c;
        luaL_setmetatable(L, CONN_MT);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, c->id);
        lua_setfield(L, -2, "id");
        lua_pushstring(L, c->peer);
        lua_setfield(L, -2, "peer");
        if (c->request_ref != LUA_NOREF)
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->request_ref);
        else
            lua_newtable(L);
        lua_setfield(L, -2, "request");
        lua_newtable(L);
        lua_setfield(L, -2, "state");
        lua_setiuservalue(L, -2, 1);
        lua_pushvalue(L, -1);
        c->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ud_ref);
}

/* conn.x: methods first, then the fields table (id, peer, request, state). */
static int conn_index(lua_State *L)
{
    luaL_checkudata(L, 1, CONN_MT);
    lua_getmetatable(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1))
        return 1;
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* conn.x = v stores into the fields table (policies may attach data). */
static int conn_newindex(lua_State *L)
{
    luaL_checkudata(L, 1, CONN_MT);
    const char *k = lua_tostring(L, 2);
    if (k && (!strcmp(k, "id") || !strcmp(k, "peer") || !strcmp(k, "request")))
        return luaL_error(L, "conn.%s is read-only", k);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    return 0;
}

static int conn_tostring(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    lua_pushfstring(L, "conn %s", c ? c->id : "(closed)");
    return 1;
}

/* conn:send(data [, "binary"]) → true | nil, "closed" | nil, "invalid UTF-8" */
static int conn_send(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *kind = luaL_optstring(L, 3, "text");
    int binary = strcmp(kind, "binary") == 0;
    if (!binary && strcmp(kind, "text") != 0)
        return luaL_argerror(L, 3, "expected \"text\" or \"binary\"");
    if (!binary && !sh_utf8_valid((const uint8_t *)data, len)) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid UTF-8");
        return 2;
    }
    if (!c || sh_conn_send(c, data, len, binary) != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int valid_close_code(lua_Integer code)
{
    return code == 1000 || code == 1001 || code == 1002 || code == 1003 ||
           (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/* conn:close([code [, reason]]) → true | nil, "closed" */
static int conn_close(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    size_t rl;
    const char *reason = luaL_optlstring(L, 3, "", &rl);
    if (!valid_close_code(code))
        return luaL_argerror(L, 2, "not a close code an endpoint may send");
    if (rl > 123)
        return luaL_argerror(L, 3, "close reason over 123 bytes");
    if (!c || !sh_conn_open(c)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    sh_conn_ws_close(c, (uint16_t)code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:is_open() → boolean */
static int conn_is_open(lua_State *L)
{
    sh_conn *c = sh_api_check_conn(L, 1);
    lua_pushboolean(L, c && sh_conn_open(c));
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"send", conn_send},
    {"close", conn_close},
    {"is_open", conn_is_open},
    {"subscribe", sh_io_subscribe},
    {"unsubscribe", sh_io_unsubscribe},
    {NULL, NULL},
};

/* ------------------------------------------------------------ module */

/* The connection of the running task, for log lines. */
static const char *current_conn_id(lua_State *L)
{
    sh_task *t = sh_task_current(L);
    return t && t->log_id[0] ? t->log_id : NULL;
}

static int log_at(lua_State *L, enum sh_log_level level)
{
    if (!sh_log_enabled(level))
        return 0;
    int n = lua_gettop(L); /* before luaL_buffinit, which pushes a placeholder */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    sh_log(level, current_conn_id(L), "%s", lua_tostring(L, -1));
    return 0;
}

static int l_debug(lua_State *L) { return log_at(L, SH_LOG_DEBUG); }
static int l_info(lua_State *L) { return log_at(L, SH_LOG_INFO); }
static int l_warn(lua_State *L) { return log_at(L, SH_LOG_WARN); }
static int l_error(lua_State *L) { return log_at(L, SH_LOG_ERROR); }

/* host.now() → seconds since the epoch, with millisecond precision */
static int l_now(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0);
    return 1;
}

/* host.spawn(fn, ...) → true: run fn(...) in a new task, now, until its
 * first wait; it belongs to the running task's connection, if any. */
static int spawn(lua_State *L, int detached)
{
    sh_gen *g = SH_GEN(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (!g->srv)
        return luaL_error(L, "tasks cannot start while the script loads (start them from a hook)");
    sh_task *cur = sh_task_current(L);
    if (cur && sh_task_doomed(cur)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (g->run_depth >= SH_MAX_RUN_DEPTH) {
        lua_pushnil(L);
        lua_pushliteral(L, "too deep"); /* each spawn runs inside its caller's C stack */
        return 2;
    }
    int n = lua_gettop(L);
    sh_task *t = sh_task_new(g, cur && !detached ? cur->conn : NULL,
                             detached ? "detached function" : "spawned function");
    if (cur && cur->log_id[0])
        snprintf(t->log_id, sizeof t->log_id, "%s", cur->log_id);
    lua_xmove(L, t->co, n);
    sh_task_start(t, n - 1, NULL, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spawn(lua_State *L) { return spawn(L, 0); }

/* host.detach(fn, ...) → true: like spawn, but the task belongs to no
 * connection: it, and the timers it creates, outlive the caller's. */
static int l_detach(lua_State *L) { return spawn(L, 1); }

/* host.hmac_sha256(key, message) → lowercase hex */
static int l_hmac_sha256(lua_State *L)
{
    size_t kl, ml;
    const char *key = luaL_checklstring(L, 1, &kl);
    const char *msg = luaL_checklstring(L, 2, &ml);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!HMAC(EVP_sha256(), key, (int)kl, (const unsigned char *)msg, ml, mac, &n))
        return luaL_error(L, "hmac_sha256: libcrypto failed");
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    lua_pushlstring(L, hex, 2 * (size_t)n);
    return 1;
}

/* host.random_hex(nbytes) → 2*nbytes hex characters from the CSPRNG */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_optinteger(L, 1, 16);
    luaL_argcheck(L, n >= 1 && n <= 256, 1, "1..256 bytes");
    unsigned char r[256];
    if (RAND_bytes(r, (int)n) != 1)
        return luaL_error(L, "random_hex: libcrypto failed");
    char hex[513];
    for (lua_Integer i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    lua_pushlstring(L, hex, 2 * (size_t)n);
    return 1;
}

/* host.secure_compare(a, b) → boolean, in time independent of where they differ */
static int l_secure_compare(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al);
    const char *b = luaL_checklstring(L, 2, &bl);
    lua_pushboolean(L, al == bl && CRYPTO_memcmp(a, b, al) == 0);
    return 1;
}

/* host.metrics.inc(name [, n]) */
static int l_metric_inc(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    const char *name = luaL_checkstring(L, 1);
    lua_Integer by = luaL_optinteger(L, 2, 1);
    if (by < 0)
        return luaL_argerror(L, 2, "must not be negative");
    if (!g->srv)
        return 0;
    if (sh_metrics_inc(&g->srv->metrics, name, (uint64_t)by) != 0)
        return luaL_argerror(L, 1, "unknown counter (jobs_started, jobs_completed, jobs_timed_out, jobs_failed)");
    return 0;
}

/* host.metrics.observe_dispatch(seconds) */
static int l_metric_dispatch(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    double s = luaL_checknumber(L, 1);
    if (g->srv)
        sh_metrics_observe_dispatch(&g->srv->metrics, s);
    return 0;
}

/* host.redis_up() → boolean */
static int l_redis_up(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_pushboolean(L, g->srv && sh_server_redis_up(g->srv));
    return 1;
}

static const luaL_Reg host_funcs[] = {
    {"now", l_now},
    {"spawn", l_spawn},
    {"detach", l_detach},
    {"hmac_sha256", l_hmac_sha256},
    {"random_hex", l_random_hex},
    {"secure_compare", l_secure_compare},
    {"redis_up", l_redis_up},
    {NULL, NULL},
};

static const luaL_Reg log_funcs[] = {
    {"debug", l_debug}, {"info", l_info}, {"warn", l_warn}, {"error", l_error}, {NULL, NULL},
};

static const luaL_Reg metric_funcs[] = {
    {"inc", l_metric_inc}, {"observe_dispatch", l_metric_dispatch}, {NULL, NULL},
};

static int preload_module(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.module");
    return 1;
}

void sh_lua_api_open(lua_State *L, sh_gen *g)
{
    /* conn metatable: methods by name, plus metamethods */
    luaL_newmetatable(L, CONN_MT);
    lua_pushlightuserdata(L, g);
    luaL_setfuncs(L, conn_methods, 1);
    lua_pushcfunction(L, conn_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, conn_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    lua_newtable(L);
    int m = lua_gettop(L);
    lua_pushlightuserdata(L, g);
    luaL_setfuncs(L, host_funcs, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, g);
    luaL_setfuncs(L, log_funcs, 1);
    lua_setfield(L, m, "log");
    lua_newtable(L);
    lua_pushlightuserdata(L, g);
    luaL_setfuncs(L, metric_funcs, 1);
    lua_setfield(L, m, "metrics");
    lua_newtable(L); /* filled with the merged config once the script returns */
    lua_setfield(L, m, "config");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, m, "null"); /* the same value as cjson.null */
    lua_pushstring(L, SH_VERSION);
    lua_setfield(L, m, "version");
    if (g->srv) {
        lua_pushstring(L, g->srv->instance);
        lua_setfield(L, m, "instance");
    }
    sh_io_register(L, m);
    lua_setfield(L, LUA_REGISTRYINDEX, "statushost.module");

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, preload_module);
    lua_setfield(L, -2, "statushost");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------- hooks */

/* A task running hook h for c with conn as first argument, or NULL. */
static sh_task *hook_task(sh_conn *c, enum sh_hook h, sh_conn *owner)
{
    if (!sh_gen_has_hook(c->gen, h))
        return NULL;
    sh_task *t = sh_task_new(c->gen, owner, sh_hook_name(h));
    sh_task_push_hook(t, h);
    sh_conn_push(c, t->co);
    return t;
}

void sh_api_open(sh_conn *c)
{
    sh_task *t = hook_task(c, SH_HOOK_OPEN, c);
    if (t)
        sh_task_start(t, 1, NULL, NULL);
}

void sh_api_message(sh_conn *c, const char *data, size_t len, int binary)
{
    sh_task *t = hook_task(c, binary ? SH_HOOK_BINARY : SH_HOOK_MESSAGE, c);
    if (!t) {
        sh_debug(c->id, "message dropped: the policy has no on_message");
        return;
    }
    lua_pushlstring(t->co, data, len);
    sh_task_start(t, 2, NULL, NULL);
}

/* on_handshake returned: nothing/true accepts; false[, status[, body]] refuses. */
static void handshake_done(sh_task *t, int status, int nres, void *arg)
{
    (void)arg;
    sh_conn *c = t->conn;
    if (!c || status != LUA_OK)
        return; /* gone, or the error path already answered 500 */
    lua_State *co = t->co;
    int base = lua_gettop(co) - nres + 1;
    if (nres == 0 || lua_toboolean(co, base) || lua_isnil(co, base)) {
        sh_conn_handshake_result(c, 1, 0, NULL, 0);
        return;
    }
    lua_Integer code = nres >= 2 ? lua_tointeger(co, base + 1) : 403;
    if (code < 400 || code > 599)
        code = 403;
    size_t len = 0;
    const char *body = nres >= 3 ? lua_tolstring(co, base + 2, &len) : NULL;
    char dflt[32];
    if (!body) {
        len = (size_t)snprintf(dflt, sizeof dflt, "%d\n", (int)code);
        body = dflt;
    }
    sh_conn_handshake_result(c, 0, (int)code, body, len);
}

void sh_api_handshake(sh_conn *c, sh_request *r)
{
    lua_State *L = c->gen->L;
    push_request(L, r, c->peer);
    c->request_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!sh_gen_has_hook(c->gen, SH_HOOK_HANDSHAKE)) {
        sh_conn_handshake_result(c, 1, 0, NULL, 0);
        return;
    }
    sh_task *t = sh_task_new(c->gen, c, "on_handshake");
    sh_task_push_hook(t, SH_HOOK_HANDSHAKE);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, c->request_ref);
    sh_task_start(t, 1, handshake_done, NULL);
}

/* State of a route call. */
struct route_call {
    void (*done)(sh_conn *);
    int keep;
    int head_only;
};

/* Collect "Name: value\r\n" lines from a headers table at index i into out
 * (NUL-terminated); string keys only, values strings or numbers. */
static void route_headers(lua_State *co, int i, sh_buf *out, const char **ctype)
{
    if (!lua_istable(co, i))
        return;
    lua_pushnil(co);
    while (lua_next(co, i)) {
        if (lua_type(co, -2) == LUA_TSTRING && lua_isstring(co, -1)) {
            const char *k = lua_tostring(co, -2), *v = lua_tostring(co, -1);
            if (!strpbrk(k, "\r\n:") && !strpbrk(v, "\r\n")) {
                if (strcasecmp(k, "content-type") == 0)
                    *ctype = v; /* anchored by the table */
                else if (strcasecmp(k, "content-length") && strcasecmp(k, "connection")) {
                    sh_buf_append(out, k, strlen(k));
                    sh_buf_append(out, ": ", 2);
                    sh_buf_append(out, v, strlen(v));
                    sh_buf_append(out, "\r\n", 2);
                }
            }
        }
        lua_pop(co, 1);
    }
    sh_buf_append(out, "", 1);
}

/* A route returned status[, body[, headers]]. */
static void route_done(sh_task *t, int status, int nres, void *arg)
{
    struct route_call *rc = arg;
    sh_conn *c = t->conn;
    if (c && c->phase == SH_PHASE_HTTP) {
        lua_State *co = t->co;
        if (status != LUA_OK) {
            sh_conn_respond(c, 500, "text/plain; charset=utf-8", "500 Internal Server Error\n", 26,
                            NULL, 0, rc->head_only);
        } else {
            int base = lua_gettop(co) - nres + 1;
            lua_Integer code = nres >= 1 ? lua_tointeger(co, base) : 200;
            if (code < 200 || code > 599)
                code = 500;
            size_t len = 0;
            const char *body = nres >= 2 ? lua_tolstring(co, base + 1, &len) : NULL;
            const char *ctype = "text/plain; charset=utf-8";
            sh_buf extra = {0};
            if (nres >= 3)
                route_headers(co, base + 2, &extra, &ctype);
            sh_conn_respond(c, (int)code, ctype, body ? body : "", body ? len : 0,
                            extra.len > 1 ? extra.p : NULL, rc->keep && !c->srv->stopping,
                            rc->head_only);
            sh_buf_free(&extra);
        }
        rc->done(c);
    }
    free(rc);
}

int sh_api_route(sh_conn *c, sh_request *r, int keep, void (*done)(sh_conn *))
{
    sh_gen *g = c->gen;
    if (g->routes_ref == LUA_NOREF)
        return 0;
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->routes_ref);
    lua_pushfstring(L, "%s %s", r->method, r->path);
    lua_rawget(L, -2);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 2);
        return 0;
    }
    struct route_call *rc = malloc(sizeof *rc);
    rc->done = done;
    rc->keep = keep;
    rc->head_only = strcmp(r->method, "HEAD") == 0;
    sh_task *t = sh_task_new(g, c, "route");
    lua_xmove(L, t->co, 1);
    lua_pop(L, 1);
    push_request(t->co, r, c->peer);
    sh_task_start(t, 1, route_done, rc);
    return 1;
}

void sh_api_conn_closing(sh_conn *c, int was_ws)
{
    sh_tasks_release_conn(c);
    sh_io_conn_closing(c);
    if (!was_ws)
        return;
    sh_info(c->id, "websocket closed %u%s%s", c->close_code ? c->close_code : 1006,
            c->close_reason[0] ? " " : "", c->close_reason);
    sh_task *t = hook_task(c, SH_HOOK_CLOSE, NULL);
    if (!t)
        return;
    snprintf(t->log_id, sizeof t->log_id, "%s", c->id);
    lua_pushinteger(t->co, c->close_code ? c->close_code : 1006);
    lua_pushstring(t->co, c->close_reason);
    sh_task_start(t, 3, NULL, NULL);
}

void sh_api_conn_freed(sh_conn *c)
{
    lua_State *L = c->gen->L;
    if (c->ud_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->ud_ref);
        conn_ud *u = lua_touserdata(L, -1);
        u->c = NULL;
        lua_pop(L, 1);
        luaL_unref(L, LUA_REGISTRYINDEX, c->ud_ref);
        c->ud_ref = LUA_NOREF;
    }
    if (c->request_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, c->request_ref);
        c->request_ref = LUA_NOREF;
    }
}

void sh_api_gen_shutdown(sh_gen *g)
{
    sh_io_gen_shutdown(g);
    sh_gen_shutdown(g);
}
