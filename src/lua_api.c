/* lua_api.c — the policy layer: the `statushost` module, the conn object,
 * and the transport events turned into hook tasks. See lua_api.h.
 *
 * The whole policy surface is the table `api` below: every host.* and
 * conn:* function, with its qualified name (used in error messages). */
#include "lua_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "lua_budget.h"
#include "lua_io.h"
#include "lua_lib.h"
#include "metrics.h"
#include "str.h"
#include "json_decode.h"
#include "user_metrics.h"
#include "utf8.h"

#define CONN_MT "statushost.conn"

typedef struct conn_ud {
    sh_pconn *p;                 /* NULL once the connection is freed */
    sh_gen *gen;                 /* its generation (whose state holds this userdata) */
} conn_ud;

/* The fields table's key for the saved request of a freed connection whose
 * conn.request was never read (a Lua copy: it is collected with the conn). */
static const char saved_key;

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* ------------------------------------------------------------- conn object */

/* Is the value at idx a conn? mt_up: the upvalue holding CONN_MT (one
 * comparison, not the registry lookup of luaL_testudata). Leaves the stack
 * as it was. */
static conn_ud *to_conn(lua_State *L, int idx, int mt_up)
{
    conn_ud *u = lua_touserdata(L, idx);
    if (!u || !lua_getmetatable(L, idx))
        return NULL;
    int same = lua_rawequal(L, -1, lua_upvalueindex(mt_up));
    lua_pop(L, 1);
    return same ? u : NULL;
}

/* conn methods' upvalues: g, their name (SH_FNAME), CONN_MT. */
static sh_pconn *check_conn(lua_State *L)
{
    conn_ud *u = to_conn(L, 1, 3);
    if (!u)
        luaL_error(L, "%s: expected a conn as self (call it as conn:%s(...))", SH_FNAME(L),
                   strchr(SH_FNAME(L), ':') + 1);
    return u->p;
}

/* The live transport connection of p, or NULL. */
static sh_conn *live(sh_pconn *p)
{
    return p && p->c && p->c->phase != SH_PHASE_CLOSED ? p->c : NULL;
}

/* The client's address: the peer's, or (from a trusted proxy) the one
 * real_ip_header names, as nginx's realip module decides. */
static void client_ip(const sh_gen *g, const sh_request *r, const char *peer, char *out,
                      size_t outsz)
{
    char ip[SH_IP_MAX];
    out[0] = '\0';
    if (sh_peer_ip(peer, ip, sizeof ip) != 0)
        return;
    const char *hv = NULL;
    char joined[4096];
    if (g->cfg.real_ip_header && r && g->nreal_ip) {
        size_t n = 0;
        joined[0] = '\0';
        for (size_t i = 0; i < r->nheaders; i++) /* repeated headers join, in order */
            if (strcasecmp(r->headers[i].name, g->cfg.real_ip_header) == 0) {
                int k = snprintf(joined + n, sizeof joined - n, "%s%s", n ? ", " : "",
                                 r->headers[i].value);
                if (k < 0 || (size_t)k >= sizeof joined - n)
                    break;
                n += (size_t)k;
            }
        hv = n ? joined : NULL;
    }
    int xff = g->cfg.real_ip_header && strcasecmp(g->cfg.real_ip_header, "X-Forwarded-For") == 0;
    if (sh_realip(ip, hv, g->real_ip, g->nreal_ip, xff && g->cfg.real_ip_recursive, out, outsz) < 0)
        snprintf(out, outsz, "%s", ip);
}

/* Build the request table {method, path, query, target, headers, body, peer,
 * client_ip}. */
static void push_request(lua_State *L, const sh_gen *g, const sh_request *r, const char *peer)
{
    lua_createtable(L, 0, 8);
    char ip[SH_IP_MAX];
    client_ip(g, r, peer, ip, sizeof ip);
    lua_pushstring(L, ip);
    lua_setfield(L, -2, "client_ip");
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

/* The upgrade request of a connection whose policy has no on_handshake hook
 * stays one compact block in C until conn.request is first read: most
 * policies never read it, and as Lua tables it takes ~3 times the bytes. */
struct sh_saved_req {
    size_t size; /* of the whole record */
    size_t nheaders, body_len;
    char s[]; /* method, target, path, query, body, then name, value per header: each + NUL */
};

static char *put_str(char *d, const char *s, size_t n)
{
    memcpy(d, s, n);
    d[n] = '\0';
    return d + n + 1;
}

static struct sh_saved_req *save_request(const sh_request *r)
{
    size_t n = strlen(r->method) + strlen(r->target) + strlen(r->path) + strlen(r->query) +
               r->body_len + 5;
    for (size_t i = 0; i < r->nheaders; i++)
        n += strlen(r->headers[i].name) + strlen(r->headers[i].value) + 2;
    struct sh_saved_req *q = malloc(sizeof *q + n);
    if (!q)
        return NULL;
    q->size = sizeof *q + n;
    q->nheaders = r->nheaders;
    q->body_len = r->body_len;
    char *d = q->s;
    d = put_str(d, r->method, strlen(r->method));
    d = put_str(d, r->target, strlen(r->target));
    d = put_str(d, r->path, strlen(r->path));
    d = put_str(d, r->query, strlen(r->query));
    d = put_str(d, r->body, r->body_len);
    for (size_t i = 0; i < r->nheaders; i++) {
        d = put_str(d, r->headers[i].name, strlen(r->headers[i].name));
        d = put_str(d, r->headers[i].value, strlen(r->headers[i].value));
    }
    return q;
}

/* Push the request read from q as a table (push_request). Its header array is a Lua
 * userdata, garbage once the table is made: any of these allocations may raise
 * (lua_max_memory) and nothing is left to free. */
static void push_saved(lua_State *L, sh_gen *g, const struct sh_saved_req *q, const char *peer)
{
    sh_request req, *r = &req;
    memset(r, 0, sizeof *r);
    r->headers = lua_newuserdatauv(L, (q->nheaders ? q->nheaders : 1) * sizeof *r->headers, 0);
    char *s = (char *)q->s;
    snprintf(r->method, sizeof r->method, "%s", s);
    s += strlen(s) + 1;
    r->target = s;
    s += strlen(s) + 1;
    r->path = s;
    s += strlen(s) + 1;
    r->query = s;
    s += strlen(s) + 1;
    r->body = s;
    r->body_len = q->body_len;
    s += q->body_len + 1;
    r->nheaders = q->nheaders;
    for (size_t i = 0; i < q->nheaders; i++) {
        r->headers[i].name = s;
        s += strlen(s) + 1;
        r->headers[i].value = s;
        s += strlen(s) + 1;
    }
    push_request(L, g, r, peer);
    lua_remove(L, -2); /* the header array */
}

/* The request table of p: made from the saved request on first use. Pushes it (nil when out
 * of memory). */
static void push_request_of(sh_pconn *p, lua_State *L)
{
    if (p->request_ref == LUA_NOREF && p->saved) {
        push_saved(L, p->gen, p->saved, p->c ? p->c->peer : "");
        p->request_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may raise: saved is kept */
        free(p->saved);
        p->saved = NULL;
    }
    if (p->request_ref == LUA_NOREF)
        lua_pushnil(L);
    else
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->request_ref);
}

/* Push t[k] for the value t at the top, raw (nil when t is not a table): C
 * reading a table a hook could change, outside the hook's run. */
static void raw_field(lua_State *L, const char *k)
{
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pushnil(L);
        return;
    }
    lua_pushstring(L, k);
    lua_rawget(L, -2);
}

/* Push the conn userdata of p on L (created on first use). conn.request and
 * conn.ip are made when first read (conn_index), from the saved request. */
static void push_conn(sh_pconn *p, lua_State *L)
{
    if (p->ud_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->ud_ref);
        return;
    }
    /* user value 1: the fields table; 2: the channel last given to conn:subscribe (below);
     * 3 and 4: the job and the done statuses given to conn:track */
    conn_ud *u = lua_newuserdatauv(L, sizeof *u, 4);
    u->p = p;
    u->gen = p->gen;
    luaL_setmetatable(L, CONN_MT);
    /* conn.id and conn.peer are answered from C while the connection lives (conn_index),
     * and put in the fields only when it is freed: 150-200 bytes less per idle connection */
    lua_createtable(L, 0, 1);
    if (!(p->request_ref == LUA_NOREF && p->saved)) {
        if (p->request_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, p->request_ref);
            raw_field(L, "client_ip"); /* raw: an on_handshake may have put metamethods on it */
            lua_setfield(L, -3, "ip");
        } else {
            lua_newtable(L);
        }
        lua_setfield(L, -2, "request");
    }
    if (p->protocol) {
        lua_pushstring(L, p->protocol);
        lua_setfield(L, -2, "protocol");
    }
    lua_newtable(L);
    lua_setfield(L, -2, "state");
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -1);
    p->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* conn.request (and conn.ip, its client_ip) made from the saved request, into
 * the fields table at index `fields`; pushes the request table (nil when there
 * is none). Each allocation may raise (lua_max_memory): the saved request goes
 * only once both fields are in, so a later read makes them again. */
static void materialize_request(lua_State *L, conn_ud *u, int fields)
{
    int from_saved = 0;
    if (u->p) {
        push_request_of(u->p, L);
    } else {
        lua_rawgetp(L, fields, &saved_key);
        const struct sh_saved_req *q = lua_touserdata(L, -1);
        if (q) {
            lua_getfield(L, fields, "peer");
            const char *peer = lua_tostring(L, -1);
            push_saved(L, u->gen, q, peer ? peer : "");
            lua_replace(L, -3);
            lua_pop(L, 1);
            from_saved = 1;
        }
    }
    if (lua_isnil(L, -1))
        return;
    lua_getfield(L, -1, "client_ip");
    lua_setfield(L, fields, "ip");
    lua_pushvalue(L, -1);
    lua_setfield(L, fields, "request");
    if (from_saved) { /* an existing key set to nil: no allocation */
        lua_pushnil(L);
        lua_rawsetp(L, fields, &saved_key);
    }
}

/* conn.x: methods first, then the fields table (id, peer, request, state). Only the VM
 * calls it, and with a conn: CONN_MT is hidden from Lua (__metatable), so no policy can
 * get hold of this function to call it with anything else. */
static int conn_index(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) /* upvalue 1: CONN_MT */
        return 1;
    lua_pop(L, 1);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    conn_ud *u = lua_touserdata(L, 1);
    if (u->p && lua_isnil(L, -1) && lua_type(L, 2) == LUA_TSTRING) {
        const char *k = lua_tostring(L, 2);
        if (strcmp(k, "id") == 0) { /* from C while the connection lives (push_conn) */
            lua_pushstring(L, u->p->owner.id);
            return 1;
        }
        if (strcmp(k, "peer") == 0) {
            lua_pushstring(L, u->p->c ? u->p->c->peer : "");
            return 1;
        }
    }
    if (lua_isnil(L, -1) && lua_type(L, 2) == LUA_TSTRING &&
        (u->p ? u->p->saved || u->p->request_ref != LUA_NOREF
              : lua_rawgetp(L, -2, &saved_key) != LUA_TNIL)) {
        if (!u->p)
            lua_pop(L, 1);
        const char *k = lua_tostring(L, 2);
        int ip = strcmp(k, "ip") == 0;
        if (ip || strcmp(k, "request") == 0) { /* first read: made now, kept in the fields */
            lua_pop(L, 1);
            materialize_request(L, u, lua_gettop(L));
            if (ip && lua_istable(L, -1))
                lua_getfield(L, -1, "client_ip");
        }
    }
    return 1;
}

/* conn.x = v stores into the fields table (policies may attach data). */
static int conn_newindex(lua_State *L)
{
    luaL_checkudata(L, 1, CONN_MT);
    const char *k = lua_tostring(L, 2);
    if (k && (!strcmp(k, "id") || !strcmp(k, "peer") || !strcmp(k, "request") ||
              !strcmp(k, "protocol") || !strcmp(k, "ip")))
        return luaL_error(L, "conn.%s is read-only", k);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    return 0;
}

static int conn_tostring(lua_State *L)
{
    conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "conn %s", u->p ? u->p->owner.id : "(closed)");
    return 1;
}

/* conn:send(data [, "binary"]) → true | nil, "closed" | nil, "invalid UTF-8" */
static int conn_send(lua_State *L)
{
    sh_conn *c = live(check_conn(L));
    size_t len;
    const char *data = sh_checklstring(L, 2, &len);
    const char *kind = lua_isnoneornil(L, 3) ? "text" : sh_checklstring(L, 3, NULL);
    int binary = strcmp(kind, "binary") == 0;
    if (!binary && strcmp(kind, "text") != 0)
        return sh_argerror(L, 3, "expected \"text\" or \"binary\"");
    if (!binary && !sh_utf8_valid((const uint8_t *)data, len))
        return fail(L, "invalid UTF-8");
    if (!c || sh_conn_send(c, data, len, binary) != 0)
        return fail(L, "closed");
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
    sh_conn *c = live(check_conn(L));
    lua_Integer code = sh_optinteger(L, 2, 1000);
    size_t rl = 0;
    const char *reason = lua_isnoneornil(L, 3) ? "" : sh_checklstring(L, 3, &rl);
    if (!valid_close_code(code))
        return sh_argerror(L, 2, "not a close code an endpoint may send");
    if (rl > 123)
        return sh_argerror(L, 3, "close reason over 123 bytes");
    /* RFC 6455 §5.5.1: UTF-8 (a browser fails the connection on one that is not) */
    if (memchr(reason, '\0', rl) || !sh_utf8_valid((const uint8_t *)reason, rl))
        return sh_argerror(L, 3, "close reason must be UTF-8 text without NUL bytes");
    if (!c || !sh_conn_open(c))
        return fail(L, "closed");
    sh_conn_ws_close(c, (uint16_t)code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:is_open() → boolean */
static int conn_is_open(lua_State *L)
{
    sh_conn *c = live(check_conn(L));
    lua_pushboolean(L, c && sh_conn_open(c));
    return 1;
}

/* conn:subscribe(channel) → true once Redis confirmed | nil, err */
static int conn_subscribe(lua_State *L)
{
    sh_pconn *p = check_conn(L);
    sh_conn *c = live(p);
    if (!c || !sh_conn_open(c)) {
        sh_checklstring(L, 2, NULL);
        return fail(L, "closed");
    }
    if (lua_type(L, 2) == LUA_TSTRING) { /* kept for owner_deliver; no allocation */
        lua_pushvalue(L, 2);
        lua_setiuservalue(L, 1, 2);
    }
    return sh_io_subscribe_owner(L, &p->owner);
}

/* conn:unsubscribe(channel) → true when it was subscribed: no message of
 * the channel reaches this connection after the call. */
static int conn_unsubscribe(lua_State *L)
{
    sh_pconn *p = check_conn(L);
    size_t len;
    const char *ch = sh_checklstring(L, 2, &len);
    lua_pushboolean(L, p && sh_io_unsubscribe_owner(&p->owner, ch, len));
    return 1;
}

/* conn:track(job, done, on_publish) → true | nil, why; conn:track(nil) → true.
 * The core handles the plain updates of job itself in on_publish's place (track_update):
 * only while the policy's on_publish is the function given, the one they stand in for. */
static int conn_track(lua_State *L)
{
    sh_pconn *p = check_conn(L);
    if (lua_isnoneornil(L, 2)) { /* works on a closed conn too: lets go of the job */
        lua_settop(L, 2);
        lua_pushnil(L);
        lua_setiuservalue(L, 1, 3);
        lua_pushnil(L);
        lua_setiuservalue(L, 1, 4);
        lua_pushboolean(L, 1);
        return 1;
    }
    sh_checktype(L, 2, LUA_TTABLE); /* errors that name conn:track, as the other methods' */
    sh_checktype(L, 3, LUA_TTABLE);
    sh_checktype(L, 4, LUA_TFUNCTION);
    lua_settop(L, 4);
    if (!live(p))
        return fail(L, "closed");
    int ref = p->gen->hook_ref[SH_HOOK_PUBLISH];
    if (ref == LUA_NOREF || lua_rawgeti(L, LUA_REGISTRYINDEX, ref) != LUA_TFUNCTION ||
        !lua_rawequal(L, 4, 5))
        return fail(L, "not the policy's on_publish");
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, 3);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 1, 4);
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------ module */

/* The connection of the running task, for log lines. */
static const char *current_conn_id(lua_State *L)
{
    sh_task *t = sh_task_running(SH_GEN(L), L);
    return t && t->log_id[0] ? t->log_id : NULL;
}

#define LOG_TAKE 32768 /* bytes of a line taken from log arguments (the log keeps 16 KiB) */

static int log_at(lua_State *L, enum sh_log_level level)
{
    if (!sh_log_enabled(level))
        return 0;
    int n = lua_gettop(L); /* before luaL_buffinit, which pushes a placeholder */
    /* strings and numbers (the usual arguments) are joined here, without a Lua
     * string for the line (and without luaL_tolstring's metafield lookups) */
    char line[1024];
    size_t used = 0;
    int a = 1;
    for (; a <= n; a++) {
        int t = lua_type(L, a);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            break;
        size_t len;
        const char *s = lua_tolstring(L, a, &len); /* a number becomes its text, in its slot */
        if (used + len + 1 >= sizeof line)
            break;
        if (a > 1)
            line[used++] = ' ';
        memcpy(line + used, s, len);
        used += len;
    }
    if (a > n) {
        /* the line goes on as a C string: a NUL byte would end it there (a client could
         * hide what follows); it reads as a space, as the other control characters */
        for (char *z = memchr(line, '\0', used); z; z = memchr(z, '\0', used - (size_t)(z - line)))
            *z = ' ';
        line[used] = '\0';
        sh_log_kv(level, current_conn_id(L), line, NULL);
        return 0;
    }
    /* the log cuts a line at 16 KiB: what is past LOG_TAKE is not copied (a policy logging
     * a 64 MiB string copied it four times over, 0.3 s of the loop, seconds under ASan) */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n && luaL_bufflen(&b) < LOG_TAKE; i++) {
        if (i > 1)
            luaL_addchar(&b, ' ');
        size_t len, room = LOG_TAKE - luaL_bufflen(&b);
        const char *s = luaL_tolstring(L, i, &len);
        if (len > room) {
            lua_pushlstring(L, s, room);
            lua_replace(L, -2);
        }
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    char *copy = memchr(s, '\0', len) ? malloc(len + 1) : NULL; /* a Lua string stays as is */
    if (copy) {
        for (size_t i = 0; i <= len; i++)
            copy[i] = i < len && s[i] == '\0' ? ' ' : s[i];
        s = copy;
    }
    sh_log(level, current_conn_id(L), "%s", s);
    free(copy);
    return 0;
}

static int l_debug(lua_State *L) { return log_at(L, SH_LOG_DEBUG); }
static int l_info(lua_State *L) { return log_at(L, SH_LOG_INFO); }
static int l_warn(lua_State *L) { return log_at(L, SH_LOG_WARN); }
static int l_error(lua_State *L) { return log_at(L, SH_LOG_ERROR); }

/* host.now() → seconds since the epoch, with millisecond precision */
static int l_now(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    if (g->host && g->host->io) {
        lua_pushnumber(L, g->host->io->wall(g->host->io_ctx));
        return 1;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0);
    return 1;
}

/* host.spawn(fn, ...) → true: fn(...) runs in a new task once the caller
 * yields or returns; it belongs to the running task's connection, if any. */
static int spawn(lua_State *L, int detached)
{
    sh_gen *g = SH_GEN(L);
    sh_checktype(L, 1, LUA_TFUNCTION);
    if (g->loading || !g->host)
        return luaL_error(L, "%s: tasks cannot start while the script loads (start them from "
                             "a hook)", SH_FNAME(L));
    sh_task *cur = sh_task_running(g, L);
    if (cur && sh_task_doomed(cur))
        return fail(L, "closed");
    int n = lua_gettop(L);
    sh_owner *o = cur && !detached ? cur->owner : NULL;
    sh_task *t = sh_task_new(g, o, detached ? "detached function" : "spawned function");
    if (!t)
        return fail(L, "out of memory");
    if (cur && cur->log_id[0])
        sh_strtrunc(t->log_id, sizeof t->log_id, cur->log_id);
    if (!lua_checkstack(t->co, n)) { /* a new coroutine has room for a few values only */
        sh_task_discard(t);
        return fail(L, "out of memory");
    }
    lua_xmove(L, t->co, n);
    sh_task_start(t, n - 1, NULL, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spawn(lua_State *L) { return spawn(L, 0); }

/* host.detach(fn, ...) → true: like spawn, but the task belongs to no
 * connection: it, and the timers it creates, outlive the caller's. */
static int l_detach(lua_State *L) { return spawn(L, 1); }

/* host.random_hex(nbytes) → 2*nbytes hex characters from the CSPRNG */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = sh_optinteger(L, 1, 16);
    if (n < 1 || n > 256)
        return sh_argerror(L, 1, "1..256 bytes");
    unsigned char r[256];
    if (RAND_bytes(r, (int)n) != 1)
        return luaL_error(L, "%s: libcrypto failed", SH_FNAME(L));
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
    const char *a = sh_checklstring(L, 1, &al);
    const char *b = sh_checklstring(L, 2, &bl);
    lua_pushboolean(L, al == bl && CRYPTO_memcmp(a, b, al) == 0);
    return 1;
}

/* host.metrics.inc(name [, n [, labels]]): a built-in job counter or one the
 * policy defined */
static int l_metric_inc(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    const char *name = sh_checklstring(L, 1, NULL);
    lua_Integer by = sh_optinteger(L, 2, 1);
    if (by < 0)
        return sh_argerror(L, 2, "must not be negative");
    if (!g->host)
        return 0;
    if (sh_metrics_inc(g->host->metrics, name, (uint64_t)by) == 0)
        return 0;
    return sh_user_metric_lua(L, g->host->metrics, name, (double)by, 3, 0);
}

/* host.metrics.observe(name, value [, labels]) */
static int l_metric_observe(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    const char *name = sh_checklstring(L, 1, NULL);
    double v = sh_checknumber(L, 2);
    if (!g->host)
        return 0;
    return sh_user_metric_lua(L, g->host->metrics, name, v, 3, 1);
}

/* host.metrics.define(name, "counter" | "histogram", help [, label_names]) */
static int l_metric_define(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    if (!g->loading)
        return luaL_error(L, "%s: metrics are defined while the script loads (at its top "
                             "level)", SH_FNAME(L));
    return sh_user_metric_define_lua(L);
}

/* host.metrics.observe_dispatch(seconds) */
static int l_metric_dispatch(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    double s = sh_checknumber(L, 1);
    if (g->host)
        sh_metrics_observe_dispatch(g->host->metrics, s);
    return 0;
}

/* host.redis_up() → boolean */
static int l_redis_up(lua_State *L)
{
    sh_gen *g = SH_GEN(L);
    lua_pushboolean(L, g->host && g->host->io && g->host->io->redis_up(g->host->io_ctx));
    return 1;
}

/* host.exiting() → true once this script's generation serves no new connection: a
 * reload replaced it, or the server is stopping (ngx.worker.exiting()). What it started
 * lives on until it ends (a detached host.subscribe loop, say): this is how it learns to. */
static int l_exiting(lua_State *L)
{
    lua_pushboolean(L, SH_GEN(L)->exiting);
    return 1;
}

/* The policy surface. table: "" for host.NAME, "conn" for methods, else
 * host.TABLE.NAME. */
static const struct api_fn {
    const char *table, *name;
    lua_CFunction fn;
} api[] = {
    {"", "now", l_now},
    {"", "sleep", sh_io_sleep},
    {"", "timer", sh_io_timer},
    {"", "spawn", l_spawn},
    {"", "detach", l_detach},
    {"", "subscribe", sh_io_subscribe_fn},
    {"", "redis_up", l_redis_up},
    {"", "exiting", l_exiting},
    {"", "random_hex", l_random_hex},
    {"", "secure_compare", l_secure_compare},
    {"redis", "call", sh_io_redis_call},
    {"http", "request", sh_io_http_request},
    {"log", "debug", l_debug},
    {"log", "info", l_info},
    {"log", "warn", l_warn},
    {"log", "error", l_error},
    {"metrics", "inc", l_metric_inc},
    {"metrics", "observe", l_metric_observe},
    {"metrics", "define", l_metric_define},
    {"metrics", "observe_dispatch", l_metric_dispatch},
    {"conn", "send", conn_send},
    {"conn", "close", conn_close},
    {"conn", "is_open", conn_is_open},
    {"conn", "subscribe", conn_subscribe},
    {"conn", "unsubscribe", conn_unsubscribe},
    {"conn", "track", conn_track},
};

static int preload_module(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.module");
    return 1;
}

static int config_not_yet(lua_State *L)
{
    return luaL_error(L, "host.config.%s: the merged config is filled once the script has "
                         "returned its table; read it inside hooks (or read your own config "
                         "table at load time)", lua_tostring(L, 2));
}

/* track_update_p's upvalues: the names of the job's fields, made once per state, then the
 * status string of the last update it looked up (K_STATUS, nil at first): the next update
 * with the same status, the usual case, pushes that string instead of hashing and looking
 * up its bytes in Lua's string table again */
enum { K_FINISHED = 1, K_CHANNEL, K_TASKS, K_N, K_NDONE, K_DONE, K_STATUS, K_UPVALUES = K_STATUS,
       K_KEYS = K_DONE };
static const char *const track_keys[K_KEYS] = {"finished", "channel", "tasks", "n", "ndone",
                                               "done"};
#define STATUS_KEPT_MAX 64 /* bytes: a longer status is not kept between updates */

static int track_update_p(lua_State *L);

void sh_lua_api_open(lua_State *L, sh_gen *g)
{
    sh_io_open(L);
    for (int k = 0; k < K_KEYS; k++)
        lua_pushstring(L, track_keys[k]);
    for (int k = K_KEYS + 1; k <= K_UPVALUES; k++)
        lua_pushnil(L); /* K_STATUS */
    lua_pushcclosure(L, track_update_p, K_UPVALUES);
    g->track_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* an integer key: no hashing per update */
    luaL_newmetatable(L, CONN_MT);
    int mt = lua_gettop(L);
    lua_pushboolean(L, 0); /* getmetatable(conn) is false: see conn_index */
    lua_setfield(L, mt, "__metatable");
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, conn_index, 1);
    lua_setfield(L, mt, "__index");
    lua_pushcfunction(L, conn_newindex);
    lua_setfield(L, mt, "__newindex");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, mt, "__tostring");

    lua_newtable(L);
    int m = lua_gettop(L);
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
        const struct api_fn *f = &api[i];
        int is_conn = strcmp(f->table, "conn") == 0;
        int t = is_conn ? mt : m;
        if (!is_conn && f->table[0]) {
            lua_getfield(L, m, f->table);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, -1);
                lua_setfield(L, m, f->table);
            }
            t = lua_gettop(L);
        }
        lua_pushlightuserdata(L, g);
        if (is_conn)
            lua_pushfstring(L, "conn:%s", f->name);
        else if (f->table[0])
            lua_pushfstring(L, "host.%s.%s", f->table, f->name);
        else
            lua_pushfstring(L, "host.%s", f->name);
        if (is_conn)
            lua_pushvalue(L, mt);
        lua_pushcclosure(L, f->fn, is_conn ? 3 : 2);
        lua_setfield(L, t, f->name);
        if (t != m && t != mt)
            lua_pop(L, 1);
    }
    sh_lib_register(L, m); /* the helpers: base64, sha256/hmac, hex, URI, shared dicts, json */
    lua_newtable(L); /* filled with the merged config once the script returns */
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, config_not_yet);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, m, "config");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, m, "null"); /* the same value as cjson.null */
    lua_pushstring(L, SH_VERSION);
    lua_setfield(L, m, "version");
    if (g->host) {
        lua_pushstring(L, g->host->instance);
        lua_setfield(L, m, "instance");
    }
    lua_pushvalue(L, m);
    lua_setfield(L, LUA_REGISTRYINDEX, "statushost.module");
    lua_settop(L, mt - 1);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, preload_module);
    lua_setfield(L, -2, "statushost");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------- hooks */

/* A new task running hook h with p's conn as first argument, or NULL. */
static sh_task *hook_task(sh_pconn *p, enum sh_hook h, sh_owner *owner)
{
    sh_task *t = sh_task_new(p->gen, owner, sh_hook_name(h));
    if (!t) {
        sh_error(p->owner.id, "out of memory: %s not run", sh_hook_name(h));
        return NULL;
    }
    sh_task_push_hook(t, h);
    push_conn(p, t->co);
    return t;
}

/* A task of p's raised: 1011 for a WebSocket, 500 for an upgrade waiting on
 * its decision (routes answer 500 themselves). */
static void owner_failed(sh_owner *o)
{
    sh_pconn *p = (sh_pconn *)((char *)o - offsetof(sh_pconn, owner));
    sh_conn *c = live(p);
    if (!c)
        return;
    if (c->phase == SH_PHASE_WS)
        sh_conn_ws_close(c, 1011, "internal error");
    else if (c->phase == SH_PHASE_HANDSHAKE)
        sh_conn_refuse(c, 500, "500 Internal Server Error\n", 26, NULL);
}

static void count_drop(sh_pconn *p, const char *why)
{
    p->gen->host->metrics->updates_dropped++;
    sh_debug(p->owner.id, "update dropped: %s", why);
}

/* An update of a job given to conn:track, as the default policy's on_publish would
 * handle it (see its stock decisions). */
typedef struct track_arg {
    sh_pconn *p;
    const char *channel;
    size_t channel_len;
    sh_json_field f[2]; /* id, status */
    lua_Integer ndone;  /* job.ndone before the update */
    int handled;        /* the core sends it */
    int newly;          /* and it made job.done[id] (undone if the send fails) */
} track_arg;

/* rawget of the field of the table at t (absolute index) named by upvalue k; pushes it */
static int raw_get(lua_State *L, int t, int k)
{
    lua_pushvalue(L, lua_upvalueindex(k));
    return lua_rawget(L, t);
}

/* Is the value at i a table without a metatable? (its metamethods are on_publish's to
 * run: an index or an assignment of the core's would go around them) */
static int plain_table(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TTABLE)
        return 0;
    if (!lua_getmetatable(L, i))
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* Is the value lua_rawget answered (of type t, at the top) true as Lua counts it? */
static int truthy(lua_State *L, int t)
{
    return t != LUA_TNIL && (t != LUA_TBOOLEAN || lua_toboolean(L, -1));
}

/* Push the status string s, the one kept in upvalue K_STATUS when it has these bytes (no
 * hashing, no lookup in Lua's string table); else a new one, then kept (when short). */
static void push_status(lua_State *L, const char *s, size_t len)
{
    size_t kl;
    const char *k = lua_tolstring(L, lua_upvalueindex(K_STATUS), &kl); /* nil: NULL */
    if (k && kl == len && memcmp(k, s, len) == 0) {
        lua_pushvalue(L, lua_upvalueindex(K_STATUS));
        return;
    }
    lua_pushlstring(L, s, len);
    if (len <= STATUS_KEPT_MAX) {
        lua_pushvalue(L, -1);
        lua_replace(L, lua_upvalueindex(K_STATUS));
    }
}

/* A job as the core left it after handling an update of it. Its fields can change only
 * when Lua runs: a task, or a finalizer (__gc) run by a collection step; or when the core
 * handles an update of it for another connection (two may track one job table). While no
 * task has begun since (sh_budget_seq) and the state has not grown (g->grows: a step starts
 * only once allocations have grown the state past the collector's debt, and track_update_p
 * takes the memo right after a check that settles that debt, with no growth after it),
 * the job is as read then: the next update of it is decided on the memo, without checking
 * the job's tables and fields again. One memo per job table (whichever connection's update
 * the core handled: its entry is the memo of every connection tracking the job), with the
 * done set it was read with, in a small table of slots (a job that shares its slot with
 * another, or tracked with another done set, is read in full). */
typedef struct track_memo {
    const void *job;     /* the job table; NULL: none */
    const void *done;    /* the done statuses it was read with */
    const sh_gen *g;
    uint64_t seq;        /* sh_budget_seq() then */
    uint64_t grows;      /* g->grows then */
    const char *channel; /* job.channel's bytes (its string, kept by the unchanged job) */
    size_t channel_len;
    lua_Integer n, ndone; /* job.n, job.ndone as the core left them */
    int has_done;        /* job.done was read: a plain table */
} track_memo;

#define MEMO_SLOTS 64
static track_memo memos[MEMO_SLOTS];

/* The slot of a job table (lua_topointer). */
static track_memo *memo_of(const void *job)
{
    return &memos[((uintptr_t)job / sizeof(void *)) * 2654435761u % MEMO_SLOTS];
}

/* Forget every memo (a full collection ran finalizers with no task begun). */
static void memo_drop_all(void)
{
    memset(memos, 0, sizeof memos);
}

/* The fields of the job (3) read and checked as the default policy's shape, pushing job.tasks
 * → 1, with *n, *ndone, *ch, *chlen; 0 when the job is left to on_publish. */
static int read_job(lua_State *L, lua_Integer *n, lua_Integer *ndone, const char **ch,
                    size_t *chlen)
{
    int top = lua_gettop(L);
    /* lua_getmetatable pushes only when it returns 1 */
    if (lua_getmetatable(L, 3) || lua_getmetatable(L, 4) ||
        raw_get(L, 3, K_FINISHED) != LUA_TNIL || raw_get(L, 3, K_CHANNEL) != LUA_TSTRING ||
        !(*ch = lua_tolstring(L, -1, chlen)) || raw_get(L, 3, K_N) != LUA_TNUMBER ||
        !lua_isinteger(L, -1) || raw_get(L, 3, K_NDONE) != LUA_TNUMBER || !lua_isinteger(L, -1))
        return 0;
    *n = lua_tointeger(L, top + 3);
    *ndone = lua_tointeger(L, top + 4);
    raw_get(L, 3, K_TASKS);
    if (!plain_table(L, -1))
        return 0;
    lua_replace(L, top + 1); /* over finished (nil); the channel's string stays below */
    lua_settop(L, top + 2);
    return 1;
}

/* Protected, under the generation's lua_max_memory (the strings pushed and the job.done
 * entry made are the policy's memory, and may raise). Leaves a->handled 0 for on_publish
 * to decide (a finished job, another channel, an id that is no task of it, the update
 * that completes it, tables not shaped as the default policy's or with metatables).
 * → job.done, id (for track_update to undo the entry). */
static int track_update_p(lua_State *L)
{
    track_arg *a = lua_touserdata(L, 1);
    sh_gen *g = a->p->gen;
    /* 2: conn, 3: job, 4: done statuses (track_update's arguments; both tables, as
     * track_update and conn_track checked). The strings first: a collection step their
     * allocation may start (and the finalizers it runs) comes before the job is read. */
    lua_pushlstring(L, a->f[0].p, a->f[0].len); /* 5: id */
    if (a->f[1].kind == SH_JSON_STRING)
        push_status(L, a->f[1].p, a->f[1].len); /* 6: status */
    else
        lua_pushnil(L);
    uint64_t seq = sh_budget_seq();
    uint64_t grows = g->grows; /* the collector's debt is settled here (lua_pushlstring) */
    lua_Integer n, ndone;
    const char *ch;
    size_t chlen;
    const void *job = lua_topointer(L, 3), *dset = lua_topointer(L, 4);
    track_memo *m = memo_of(job);
    int cached = m->job == job && m->done == dset && m->g == g && m->seq == seq &&
                 m->grows == grows;
    if (cached) { /* the job's tables are plain and its fields of the right types */
        n = m->n;
        ndone = m->ndone;
        ch = m->channel;
        chlen = m->channel_len;
        raw_get(L, 3, K_TASKS); /* 7: job.tasks */
        lua_pushnil(L);         /* 8: (job.channel) */
    } else if (!read_job(L, &n, &ndone, &ch, &chlen)) { /* 7: job.tasks, 8: job.channel */
        return 0;
    }
    if (chlen != a->channel_len || memcmp(ch, a->channel, chlen) != 0)
        return 0;
    lua_pushvalue(L, 5);
    if (!truthy(L, lua_rawget(L, 7))) /* 9: job.tasks[id] */
        return 0; /* not a task of the job: a foreign update */
    int newly = 0, has_done = cached && m->has_done;
    lua_pushnil(L); /* 10: job.done, when the update is a done status */
    if (a->f[1].kind == SH_JSON_STRING) {
        lua_pushvalue(L, 6);
        if (lua_rawget(L, 4) == LUA_TBOOLEAN && lua_toboolean(L, -1)) { /* a done status */
            raw_get(L, 3, K_DONE);
            if (!has_done && !plain_table(L, -1))
                return 0;
            has_done = 1;
            lua_replace(L, 10);
            lua_pushvalue(L, 5);
            newly = !truthy(L, lua_rawget(L, 10));
        }
    }
    /* job.ndone + 1 as Lua counts it: wrapping around (C's signed overflow is undefined) */
    lua_Integer next = (lua_Integer)((lua_Unsigned)ndone + (lua_Unsigned)newly);
    if (next == n)
        return 0; /* complete: on_publish finishes the job */
    if (newly) { /* the new entry first (it may raise), then the count (an existing key) */
        lua_pushvalue(L, 5);
        lua_pushboolean(L, 1);
        lua_rawset(L, 10);
        lua_pushvalue(L, lua_upvalueindex(K_NDONE));
        lua_pushinteger(L, next);
        lua_rawset(L, 3);
    }
    a->ndone = ndone;
    a->newly = newly;
    a->handled = 1;
    /* the entry grew job.done (the debt may be due again), or it was one of the job's own
     * fields (job.done is the job: job.finished set, as on_publish's entry would) */
    if (g->grows != grows || (newly && lua_rawequal(L, 3, 10)))
        m->job = NULL;
    else
        *m = (track_memo){job, dset, g, seq, grows, ch, chlen, n, next, has_done};
    lua_pushvalue(L, 10);
    lua_pushvalue(L, 5);
    return 2;
}

/* Is a task of no connection ready to run, but for an on_close (of a connection that
 * ended)? Such a task (a host.subscribe callback, the timer of a detached task) may end a
 * job. The on_close tasks of a busy server are left out, not to stop every job's tracking
 * at each close. Past 32 ready tasks looked at, the answer is yes. */
static int detached_ready(sh_gen *g)
{
    if (g->detached.ntasks == g->detached.nwaiting || !g->host)
        return 0;
    const char *on_close = sh_hook_name(SH_HOOK_CLOSE);
    int seen = 0;
    for (const sh_task *t = g->host->ready; t; t = t->ready_next)
        if ((t->owner == &g->detached && strcmp(t->what, on_close) != 0) || ++seen == 32)
            return 1;
    return 0;
}

/* → 1 when the core handled the update of a tracked job itself, 0 for on_publish. */
static int track_update(sh_pconn *p, sh_conn *c, const char *channel, size_t channel_len,
                        const char *payload, size_t payload_len)
{
    static const char *const names[2] = {"id", "status"};
    sh_gen *g = p->gen;
    lua_State *L = g->L;
    /* not while a task of the conn, or one of no connection that may end the job, is
     * ready to run: it goes first */
    if (p->ud_ref == LUA_NOREF || p->owner.ntasks != p->owner.nwaiting || detached_ready(g) ||
        !lua_checkstack(L, 16))
        return 0;
    int top = lua_gettop(L);
    track_arg a = {p, channel, channel_len, {{0}}, 0, 0, 0};
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ud_ref);
    int tracked = lua_getiuservalue(L, top + 1, 3) == LUA_TTABLE; /* the job, kept at top + 2 */
    /* a status that is no plain string (a number, true, false, null) may be done too: a
     * done set can hold any key (done_statuses = {"done", 7}), on_publish looks it up */
    if (!tracked || sh_json_flat(payload, payload_len, names, 2, a.f) != 0 ||
        a.f[0].kind != SH_JSON_STRING || a.f[1].kind == SH_JSON_OTHER ||
        !sh_utf8_valid((const uint8_t *)payload, payload_len)) {
        lua_settop(L, top);
        return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->track_ref); /* track_update_p(a, conn, job, done) */
    lua_pushlightuserdata(L, &a);
    lua_pushvalue(L, top + 1);
    lua_pushvalue(L, top + 2);
    lua_getiuservalue(L, top + 1, 4); /* the done statuses */
    int capped = g->capped;
    g->capped = 1;
    if (lua_pcall(L, 4, 2, 0) != LUA_OK) /* → job.done (top + 3), id (top + 4) */
        a.handled = 0; /* out of memory: on_publish decides (and fails the same way) */
    g->capped = capped;
    /* sent outside the protected call: a close inside it (a slow consumer) is the host's
     * work, and no error can unwind the transport's frames */
    if (a.handled && sh_conn_send(c, payload, payload_len, 0) == 0) {
        g->host->metrics->updates_tracked++;
    } else if (a.handled && a.newly) {
        /* not sent: not done, as when conn:send fails in on_publish (an existing key of
         * each table set again: no allocation) */
        lua_pushvalue(L, top + 4);
        lua_pushnil(L);
        lua_rawset(L, top + 3);
        lua_pushliteral(L, "ndone");
        lua_pushinteger(L, a.ndone);
        lua_rawset(L, top + 2);
        memo_of(lua_topointer(L, top + 2))->job = NULL;
    }
    lua_settop(L, top);
    return a.handled;
}

/* A message on one of p's subscriptions: to on_publish, or straight out. */
static void owner_deliver(sh_owner *o, const char *channel, size_t channel_len,
                          const char *payload, size_t payload_len)
{
    sh_pconn *p = (sh_pconn *)((char *)o - offsetof(sh_pconn, owner));
    sh_conn *c = live(p);
    if (!c || !sh_conn_open(c))
        return;
    if (!sh_gen_has_hook(p->gen, SH_HOOK_PUBLISH)) {
        if (!sh_utf8_valid((const uint8_t *)payload, payload_len)) {
            count_drop(p, "not UTF-8 (a text frame must be)");
            return;
        }
        sh_conn_send(c, payload, payload_len, 0);
        return;
    }
    if (track_update(p, c, channel, channel_len, payload, payload_len))
        return;
    if (sh_gen_no_room(p->gen, channel_len + payload_len)) {
        /* as a new message would (on_message): no on_publish task now. Before, one was
         * made anyway; its allocation refused, Lua collected the whole heap for each update
         * of a burst, and the loop stall watchdog aborted the process */
        sh_warn(o->id, "Lua memory %zu of %zu (lua_max_memory): no room for an update: "
                "closing 1013", p->gen->mem, p->gen->mem_max);
        count_drop(p, "no room in lua_max_memory");
        sh_conn_ws_close(c, 1013, "try again later");
        return;
    }
    if (o->nwaiting >= p->gen->cfg.max_tasks_per_conn) {
        sh_warn(o->id, "%zu tasks waiting (max_tasks_per_conn): closing 1008", o->nwaiting);
        sh_conn_ws_close(c, 1008, "too many tasks");
        return;
    }
    sh_task *t = hook_task(p, SH_HOOK_PUBLISH, o);
    if (!t)
        return;
    sh_lstring s = {2, {{channel, channel_len}, {payload, payload_len}}};
    /* the channel the conn last subscribed, kept with it (user value 2), when it is this
     * one: the hook gets that string, not a new one hashed and interned per message */
    if (lua_checkstack(t->co, 1)) {
        size_t kept_len;
        const char *kept = lua_getiuservalue(t->co, -1, 2) == LUA_TSTRING
                               ? lua_tolstring(t->co, -1, &kept_len) : NULL;
        if (kept && kept_len == channel_len && memcmp(kept, channel, channel_len) == 0)
            s = (sh_lstring){1, {{payload, payload_len}}};
        else
            lua_pop(t->co, 1); /* not this channel (or nil): pushed with the message below */
    }
    if (sh_task_push_strings(t, &s) != 0) {
        sh_task_discard(t);
        count_drop(p, "out of memory");
        return;
    }
    sh_task_start(t, 3, NULL, NULL);
}

int sh_policy_attach(sh_conn *c, sh_gen *g)
{
    sh_pconn *p = sh_zalloc(sizeof *p);
    if (!p)
        return -1;
    p->c = c;
    p->gen = g;
    sh_gen_ref(g);
    p->ud_ref = p->request_ref = LUA_NOREF;
    sh_strtrunc(p->owner.id, sizeof p->owner.id, c->id);
    p->owner.failed = owner_failed;
    p->owner.deliver = owner_deliver;
    c->app = p;
    return 0;
}

/* A header a policy may send: the name an RFC 9110 token, the value (k and v may be NULL: not
 * strings) without control characters but HTAB, so that the response stays well-formed. */
static int header_ok(const char *k, size_t kl, const char *v, size_t vl)
{
    static const char tchars[] = "!#$%&'*+-.^_`|~0123456789"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    if (!k || !v || !kl || strspn(k, tchars) != kl)
        return 0;
    for (size_t i = 0; i < vl; i++)
        if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
            return 0;
    return 1;
}

static const char *route_headers(lua_State *co, int i, sh_buf *out, const char **ctype,
                                 char **owned);

/* on_handshake's verdict. Accepted shapes: nothing, nil or true (accept);
 * true, protocol (accept, answering one of the offered subprotocols);
 * false, status[, body[, headers]] (refuse). Anything else is an error:
 * logged, and the client gets 500. */
static const char *handshake_verdict(sh_pconn *p, lua_State *co, int base, int nres)
{
    sh_conn *c = p->c;
    if (nres == 0 || (nres == 1 && lua_isnil(co, base))) {
        sh_conn_upgrade(c, NULL, NULL);
        return NULL;
    }
    if (lua_type(co, base) != LUA_TBOOLEAN)
        return "on_handshake must return nothing, true[, protocol] or false, status[, body[, "
               "headers]]";
    if (lua_toboolean(co, base)) {
        if (nres >= 2 && !lua_isnil(co, base + 1)) {
            size_t plen = 0;
            const char *proto = lua_type(co, base + 1) == LUA_TSTRING
                                    ? lua_tolstring(co, base + 1, &plen) : NULL;
            /* a token (RFC 6455 §4.1), whatever the hook made of req.headers: else the
             * transport left it out of the 101 (CR LF), or cut it (NUL), and said nothing */
            if (proto && !header_ok(proto, plen, "", 0))
                proto = NULL;
            const char *offered = NULL;
            lua_State *L = p->gen->L;
            /* raw: the hook may have put metamethods on the request, and no
             * Lua runs here (outside the hook's run: unprotected, uncounted) */
            lua_rawgeti(L, LUA_REGISTRYINDEX, p->request_ref);
            raw_field(L, "headers");
            raw_field(L, "sec-websocket-protocol");
            offered = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            int ok = 0;
            if (proto && offered) { /* one of the comma-separated tokens (OWS: SP, HTAB) */
                size_t pl = plen;
                for (const char *s = offered; *s;) {
                    while (*s == ' ' || *s == '\t' || *s == ',')
                        s++;
                    size_t n = strcspn(s, ", \t");
                    if (n == pl && n && strncmp(s, proto, n) == 0)
                        ok = 1;
                    s += n;
                }
            }
            lua_pop(L, 3);
            if (!ok)
                return "on_handshake: the protocol returned is not one the client offered in "
                       "Sec-WebSocket-Protocol";
            if (!(p->protocol = strdup(proto)))
                return "out of memory";
        }
        sh_conn_upgrade(c, p->protocol, NULL);
        return NULL;
    }
    if (nres < 2 || lua_isnil(co, base + 1))
        return "on_handshake refused without a status: return false, status[, body[, headers]]";
    if (!lua_isinteger(co, base + 1))
        return "on_handshake: a refusal's status must be an integer 400..599";
    lua_Integer status = lua_tointeger(co, base + 1);
    if (status < 400 || status > 599)
        return "on_handshake: a refusal's status must be 400..599";
    size_t len = 0;
    const char *body = NULL;
    if (nres >= 3 && !lua_isnil(co, base + 2)) {
        if (lua_type(co, base + 2) != LUA_TSTRING)
            return "on_handshake: a refusal's body must be a string";
        body = lua_tolstring(co, base + 2, &len);
    }
    sh_buf extra = {0};
    const char *ctype = NULL;
    char *owned = NULL; /* the policy's Content-Type */
    if (nres >= 4 && !lua_isnil(co, base + 3)) {
        if (!lua_istable(co, base + 3))
            return "on_handshake: a refusal's headers must be a table";
        const char *err = route_headers(co, base + 3, &extra, &ctype, &owned); /* a route's rules */
        if (err) {
            sh_buf_free(&extra);
            free(owned);
            return strcmp(err, "out of memory") ? "on_handshake: refusal headers map token names "
                                                  "to strings or numbers without control characters"
                                                : err;
        }
    }
    char dflt[32];
    if (!body) {
        len = (size_t)snprintf(dflt, sizeof dflt, "%d\n", (int)status);
        body = dflt;
    }
    sh_info(p->owner.id, "handshake refused by policy: %d", (int)status);
    sh_conn_refuse_as(c, (int)status, ctype, body, len, extra.len > 1 ? extra.p : NULL);
    sh_buf_free(&extra);
    free(owned);
    return NULL;
}

static void handshake_done(sh_task *t, int status, int nres, void *arg)
{
    sh_pconn *p = arg;
    if (!live(p) || p->c->phase != SH_PHASE_HANDSHAKE || status != LUA_OK)
        return; /* gone, decided by a timeout, or the error path answered 500 */
    lua_State *co = t->co;
    const char *err = handshake_verdict(p, co, lua_gettop(co) - nres + 1, nres);
    if (err) {
        sh_error(p->owner.id, "lua error in on_handshake: %s", err);
        p->gen->host->metrics->lua_errors++;
        sh_conn_refuse(p->c, 500, "500 Internal Server Error\n", 26, NULL);
    }
}

static void on_upgrade(sh_pconn *p, sh_request *r)
{
    lua_State *L = p->gen->L;
    if (!sh_gen_has_hook(p->gen, SH_HOOK_HANDSHAKE) && (p->saved = save_request(r)) != NULL) {
        sh_conn_upgrade(p->c, NULL, NULL);
        return;
    }
    push_request(L, p->gen, r, p->c->peer);
    p->request_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!sh_gen_has_hook(p->gen, SH_HOOK_HANDSHAKE)) {
        sh_conn_upgrade(p->c, NULL, NULL);
        return;
    }
    sh_task *t = sh_task_new(p->gen, &p->owner, "on_handshake");
    if (!t) {
        sh_conn_refuse(p->c, 503, "503 Service Unavailable\n", 24, "Retry-After: 1\r\n");
        return;
    }
    sh_task_push_hook(t, SH_HOOK_HANDSHAKE);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, p->request_ref);
    sh_task_start(t, 1, handshake_done, p);
}

/* The jobs in flight hold 7/8 of lua_max_memory: a new message of len bytes waits. */
static int near_cap(const sh_gen *g, size_t len)
{
    return g->mem_max && g->mem + len > g->mem_max - g->mem_max / 8;
}

/* Near the cap, what ended jobs and connections left may only wait for the collector
 * (which runs as Lua allocates, and refused work allocates nothing): collect now, at
 * most once per gap_ns. */
static void collect(sh_gen *g, uint64_t gap_ns)
{
    uint64_t now = uv_hrtime();
    if (now - g->last_full_gc < gap_ns)
        return;
    g->last_full_gc = now;
    memo_drop_all(); /* its finalizers are Lua code, run with no task begun */
    lua_gc(g->L, LUA_GCCOLLECT);
}

static int on_message(sh_pconn *p, const sh_conn_event *ev)
{
    enum sh_hook h = ev->binary ? SH_HOOK_BINARY : SH_HOOK_MESSAGE;
    if (!sh_gen_has_hook(p->gen, h))
        return 1003;
    if (p->owner.nwaiting >= p->gen->cfg.max_tasks_per_conn) {
        sh_warn(p->owner.id, "%zu tasks waiting (max_tasks_per_conn): closing 1008",
                p->owner.nwaiting);
        return 1008;
    }
    sh_gen *g = p->gen;
    if (near_cap(g, ev->len))
        collect(g, 100000000ull);
    if (near_cap(g, ev->len)) {
        /* the jobs in flight hold 7/8 of lua_max_memory: new work waits, old work goes on */
        sh_warn(p->owner.id, "Lua memory %zu of %zu (lua_max_memory): no room for a %zu-byte "
                "message: closing 1013", g->mem, g->mem_max, ev->len);
        return 1013;
    }
    sh_task *t = hook_task(p, h, &p->owner);
    if (!t)
        return 1011;
    sh_lstring s = {1, {{ev->data, ev->len}}};
    if (sh_task_push_strings(t, &s) != 0) {
        sh_task_discard(t);
        sh_warn(p->owner.id, "out of memory for a message: closing 1011");
        return 1011;
    }
    sh_task_start(t, 2, NULL, NULL);
    return 0;
}

/* The connection ended: its tasks are woken with nil, "closed", its timers
 * and subscriptions released, and on_close queued for after them. */
static void on_close(sh_pconn *p, const sh_conn_event *ev)
{
    sh_owner_release_tasks(&p->owner);
    sh_io_owner_release(&p->owner);
    if (!ev->was_ws || !sh_gen_has_hook(p->gen, SH_HOOK_CLOSE))
        return;
    sh_task *t = hook_task(p, SH_HOOK_CLOSE, NULL);
    if (!t)
        return;
    sh_strtrunc(t->log_id, sizeof t->log_id, p->owner.id);
    lua_pushinteger(t->co, ev->code);
    lua_pushstring(t->co, ev->reason);
    sh_task_start(t, 3, NULL, NULL);
}

static void on_free(sh_pconn *p)
{
    lua_State *L = p->gen->L;
    if (p->ud_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->ud_ref);
        conn_ud *u = lua_touserdata(L, -1);
        u->p = NULL;
        lua_pop(L, 1);
        luaL_unref(L, LUA_REGISTRYINDEX, p->ud_ref);
    }
    if (p->request_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, p->request_ref);
    /* tasks that still run (orphaned) refer to the owner no more */
    sh_owner_release_tasks(&p->owner);
    sh_io_owner_release(&p->owner);
    if (near_cap(p->gen, 0)) /* its conn.state may be what holds the memory */
        collect(p->gen, 10000000ull);
    sh_gen_unref(p->gen);
    free(p->protocol);
    free(p->saved);
    free(p);
}

static int policy_event(sh_pconn *p, sh_conn *c, const sh_conn_event *ev);

/* The transport reports from the loop, or from inside a task's call (a close
 * inside conn:send): either way the work below is the host's (sh_gen_uncap). */
int sh_policy_event(sh_conn *c, const sh_conn_event *ev)
{
    sh_pconn *p = c->app;
    if (!p)
        return 0;
    sh_gen *g = p->gen;
    sh_gen_ref(g); /* EV_FREE may let p (and the last other reference) go */
    int capped = sh_gen_uncap(g);
    int rc = policy_event(p, c, ev);
    sh_gen_recap(g, capped);
    sh_gen_unref(g);
    return rc;
}

static int policy_event(sh_pconn *p, sh_conn *c, const sh_conn_event *ev)
{
    switch (ev->type) {
    case SH_CONN_EV_UPGRADE:
        on_upgrade(p, ev->req);
        return 0;
    case SH_CONN_EV_OPEN:
        if (sh_gen_has_hook(p->gen, SH_HOOK_OPEN)) {
            sh_task *t = hook_task(p, SH_HOOK_OPEN, &p->owner);
            if (t)
                sh_task_start(t, 1, NULL, NULL);
        }
        return 0;
    case SH_CONN_EV_MESSAGE:
        return on_message(p, ev);
    case SH_CONN_EV_CLOSE:
        on_close(p, ev);
        return 0;
    case SH_CONN_EV_FREE:
        c->app = NULL;
        if (p->ud_ref != LUA_NOREF) { /* the conn object outlives the connection */
            lua_State *L = p->gen->L;
            lua_rawgeti(L, LUA_REGISTRYINDEX, p->ud_ref);
            lua_getiuservalue(L, -1, 1);
            lua_pushstring(L, p->owner.id); /* from now on read from the fields */
            lua_setfield(L, -2, "id");
            lua_pushstring(L, c->peer);
            lua_setfield(L, -2, "peer");
            if (p->saved) {
                void *copy = lua_newuserdatauv(L, p->saved->size, 0); /* made into conn.request */
                memcpy(copy, p->saved, p->saved->size);               /* if ever read */
                lua_rawsetp(L, -2, &saved_key);
            }
            lua_pop(L, 2);
        }
        p->c = NULL;
        on_free(p);
        return 0;
    case SH_CONN_EV_REQUEST:
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------- routes */

struct route_call {
    sh_pconn *p;
    int keep;
    int head_only;
};

/* Collect "Name: value\r\n" lines from a headers table at index i into out
 * (NUL-terminated). Returns NULL or what is wrong. */
static const char *route_headers(lua_State *co, int i, sh_buf *out, const char **ctype,
                                 char **owned)
{
    if (!lua_istable(co, i))
        return "a route's headers must be a table";
    lua_pushnil(co);
    while (lua_next(co, i)) {
        size_t kl = 0, vl = 0;
        const char *k = lua_type(co, -2) == LUA_TSTRING ? lua_tolstring(co, -2, &kl) : NULL;
        if (k && lua_type(co, -1) == LUA_TNUMBER) {
            lua_pushvalue(co, -1);
            lua_tostring(co, -1);
            lua_replace(co, -2); /* the string replaces the number: anchored by the stack */
        }
        const char *v = lua_type(co, -1) == LUA_TSTRING ? lua_tolstring(co, -1, &vl) : NULL;
        if (!header_ok(k, kl, v, vl)) {
            lua_pop(co, 2);
            return "a route's headers map token names to strings without control characters";
        }
        if (strcasecmp(k, "content-type") == 0) {
            free(*owned);
            *owned = strdup(v); /* the table must not change while lua_next walks it */
            if (!*owned) {
                lua_pop(co, 2);
                return "out of memory";
            }
            *ctype = *owned;
        } else if (strcasecmp(k, "content-length") && strcasecmp(k, "connection") &&
                   strcasecmp(k, "transfer-encoding")) {
            if (sh_buf_append(out, k, kl) || sh_buf_append(out, ": ", 2) ||
                sh_buf_append(out, v, vl) || sh_buf_append(out, "\r\n", 2)) {
                lua_pop(co, 2);
                return "out of memory";
            }
        }
        lua_pop(co, 1);
    }
    return sh_buf_append(out, "", 1) ? "out of memory" : NULL;
}

/* A route returned status[, body[, headers]]. */
static void route_done(sh_task *t, int status, int nres, void *arg)
{
    struct route_call *rc = arg;
    sh_conn *c = live(rc->p);
    if (c && c->phase == SH_PHASE_HTTP) {
        lua_State *co = t->co;
        const char *err = status != LUA_OK ? "" : NULL;
        int base = lua_gettop(co) - nres + 1;
        lua_Integer code = 200;
        size_t len = 0;
        const char *body = NULL, *ctype = "text/plain; charset=utf-8";
        char *owned = NULL;
        sh_buf extra = {0};
        if (!err && nres >= 1) {
            if (!lua_isinteger(co, base) || lua_tointeger(co, base) < 200 ||
                lua_tointeger(co, base) > 599)
                err = "a route must return a status 200..599 first";
            else
                code = lua_tointeger(co, base);
        }
        if (!err && nres >= 2 && !lua_isnil(co, base + 1)) {
            if (lua_type(co, base + 1) != LUA_TSTRING)
                err = "a route's body must be a string";
            else
                body = lua_tolstring(co, base + 1, &len);
            if (body && len && (code == 204 || code == 304))
                err = "a 204 or 304 response has no body (RFC 9110 §6.4.1)";
        }
        if (!err && nres >= 3 && !lua_isnil(co, base + 2))
            err = route_headers(co, base + 2, &extra, &ctype, &owned);
        if (err) {
            if (*err) {
                sh_error(rc->p->owner.id, "lua error in route: %s", err);
                rc->p->gen->host->metrics->lua_errors++;
            }
            sh_conn_respond(c, 500, "text/plain; charset=utf-8", "500 Internal Server Error\n",
                            26, NULL, 0, rc->head_only);
        } else {
            sh_conn_respond(c, (int)code, ctype, body ? body : "", body ? len : 0,
                            extra.len > 1 ? extra.p : NULL, rc->keep, rc->head_only);
        }
        sh_buf_free(&extra);
        free(owned);
        sh_conn_request_done(c);
    }
    free(rc);
}

int sh_policy_route(sh_conn *c, sh_request *r, int keep, int head_only)
{
    sh_pconn *p = c->app;
    sh_gen *g = p->gen;
    if (g->routes_ref == LUA_NOREF)
        return 0;
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->routes_ref);
    lua_pushfstring(L, "%s %s", r->method, r->path);
    lua_rawget(L, -2);
    if (!lua_isfunction(L, -1) && head_only) { /* HEAD is GET without the body (RFC 9110 §9.3.2) */
        lua_pop(L, 1);
        lua_pushfstring(L, "GET %s", r->path);
        lua_rawget(L, -2);
    }
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 2);
        return 0;
    }
    struct route_call *rc = malloc(sizeof *rc);
    sh_task *t = rc ? sh_task_new(g, &p->owner, "route") : NULL;
    if (!t) {
        free(rc);
        lua_pop(L, 2);
        sh_conn_respond(c, 503, "text/plain; charset=utf-8", "503 Service Unavailable\n", 24,
                        "Retry-After: 1\r\n", 0, head_only);
        sh_conn_request_done(c);
        return 1;
    }
    rc->p = p;
    rc->keep = keep;
    rc->head_only = head_only;
    lua_xmove(L, t->co, 1);
    lua_pop(L, 1);
    push_request(t->co, g, r, c->peer);
    sh_task_start(t, 1, route_done, rc);
    return 1;
}
