/* lua_lib.c — the helpers every policy needs (see lua_lib.h).
 *
 *   argument errors    sh_lib_argerror: "host.f: bad argument #N (...)"
 *   base64             host.encode_base64/decode_base64/encode_base64url/decode_base64url
 *   digests, hex       host.sha256/sha256_hex/hmac_sha256/to_hex/from_hex (libcrypto)
 *   URI                host.escape_uri/unescape_uri/decode_args
 *   addresses          sh_cidr_parse/sh_cidr_match/sh_peer_ip/sh_realip, host.ip_in
 *   shared dicts       host.shared(name): per-process C store (uthash + LRU list),
 *                      bounded in items and in bytes
 *   JSON               host.json.decode (json_decode.c), host.json.encode over a
 *                      private lua-cjson instance
 *
 * Pure functions: no libuv, no server state. The shared dictionaries are the
 * one piece of process state, kept in C so they outlive script generations. */
#define _GNU_SOURCE /* memmem */
#include "lua_lib.h"

#include "config.h" /* the shared dicts' default byte caps */
#include "json_decode.h"
#include "lua_budget.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int hash_oom; /* set by uthash when an insertion ran out of memory */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (hash_oom = 1)
#include <uthash.h>

int luaopen_cjson_safe(lua_State *L); /* in liblua5.4-cjson, not in its header */

/* ============================================================ arguments */

int sh_lib_argerror(lua_State *L, const char *fname, int arg, const char *msg)
{
    return luaL_error(L, "%s: bad argument #%d (%s)", fname, arg, msg);
}

/* Methods ("dict:set") number their arguments after self, as Lua does. */
static int arg_number(const char *fname, int idx)
{
    return strchr(fname, ':') ? idx - 1 : idx;
}

static int type_error(lua_State *L, const char *fname, int idx, const char *want)
{
    const char *msg = lua_pushfstring(L, "%s expected, got %s", want, luaL_typename(L, idx));
    return sh_lib_argerror(L, fname, arg_number(fname, idx), msg);
}

static int arg_error(lua_State *L, const char *fname, int idx, const char *msg)
{
    return sh_lib_argerror(L, fname, arg_number(fname, idx), msg);
}

const char *sh_lib_checklstring(lua_State *L, int arg, const char *fname, size_t *len)
{
    const char *s = lua_tolstring(L, arg, len);
    if (!s)
        type_error(L, fname, arg, "string");
    return s;
}

/* A string proper (numbers refused): for inputs that must be text. */
static const char *check_str(lua_State *L, int idx, const char *fname, size_t *len)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        type_error(L, fname, idx, "string");
    return lua_tolstring(L, idx, len);
}

static lua_Integer opt_integer(lua_State *L, int idx, const char *fname, lua_Integer def)
{
    int ok = 0;
    lua_Integer v = lua_tointegerx(L, idx, &ok); /* the usual case in one call */
    if (ok)
        return v;
    if (lua_isnoneornil(L, idx))
        return def;
    return type_error(L, fname, idx, lua_isnumber(L, idx) ? "integer" : "number");
}

/* ============================================================ coroutine.wrap */

/* The function coroutine.wrap returns (upvalues: its coroutine, the guarded resume,
 * the guard): see sh_lib_guard_wrap. */
static int wrapped_call(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_rotate(L, 1, 2);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    if (lua_toboolean(L, 1)) {
        lua_remove(L, 1);
        return lua_gettop(L);
    }
    lua_settop(L, 2);
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    const sh_lib_co_guard *g = lua_touserdata(L, lua_upvalueindex(3));
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD && !(g->spent && g->spent(co))) {
        if (g->enter(co) != 0)
            return luaL_error(L, "coroutine.wrap: coroutines nested too deep");
        st = lua_resetthread(co);
        g->leave();
        lua_pop(L, 1);
        lua_xmove(co, L, 1); /* the error, or a __close handler's */
    }
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

/* coroutine.wrap (upvalues: the guarded resume, the guard) */
static int guarded_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushcclosure(L, wrapped_call, 3);
    return 1;
}

void sh_lib_guard_wrap(lua_State *L, int coroutine, const sh_lib_co_guard *g)
{
    coroutine = lua_absindex(L, coroutine);
    lua_getfield(L, coroutine, "resume");
    lua_pushlightuserdata(L, (void *)g);
    lua_pushcclosure(L, guarded_wrap, 2);
    lua_setfield(L, coroutine, "wrap");
}

/* ============================================================ xpcall */

/* The message handler xpcall is given (upvalues: the policy's handler, the guard, Lua's
 * debug.traceback). The commonest, debug.traceback, is done here, from the level it would
 * start at (no line for this frame). */
static int guarded_msgh(lua_State *L)
{
    const sh_lib_co_guard *g = lua_touserdata(L, lua_upvalueindex(2));
    if (g->over())
        return 1; /* the error as raised */
    if (lua_rawequal(L, lua_upvalueindex(1), lua_upvalueindex(3))) {
        const char *msg = lua_tostring(L, 1);
        if (msg || lua_isnoneornil(L, 1)) /* else the value as it is, as ldblib.c's */
            luaL_traceback(L, L, msg, 1);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* lbaselib.c's finishpcall */
static int finish_xpcall(lua_State *L, int status, lua_KContext extra)
{
    if (status != LUA_OK && status != LUA_YIELD) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

/* xpcall (upvalues: the guard, Lua's debug.traceback): lbaselib.c's, the handler wrapped */
static int guarded_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushcclosure(L, guarded_msgh, 3);
    lua_replace(L, 2);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_xpcall);
    return finish_xpcall(L, status, 2);
}

void sh_lib_guard_xpcall(lua_State *L, const sh_lib_co_guard *g)
{
    lua_pushlightuserdata(L, (void *)g);
    lua_getglobal(L, "debug");
    if (lua_istable(L, -1))
        lua_getfield(L, -1, "traceback");
    else
        lua_pushnil(L);
    lua_remove(L, -2);
    lua_pushcclosure(L, guarded_xpcall, 2);
    lua_setglobal(L, "xpcall");
}

/* ============================================================ base64 */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64_encode(lua_State *L, const unsigned char *in, size_t n, const char *alpha, int pad)
{
    if (n > (SIZE_MAX / 4) * 3 - 3)
        luaL_error(L, "base64: input too large");
    size_t full = n / 3, rest = n % 3;
    size_t outlen = 4 * full + (rest ? (pad ? 4 : rest + 1) : 0);
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, outlen ? outlen : 1);
    char *p = o;
    for (size_t i = 0; i < full; i++, in += 3) {
        unsigned v = (unsigned)in[0] << 16 | (unsigned)in[1] << 8 | in[2];
        *p++ = alpha[v >> 18];
        *p++ = alpha[(v >> 12) & 63];
        *p++ = alpha[(v >> 6) & 63];
        *p++ = alpha[v & 63];
    }
    if (rest) {
        unsigned v = (unsigned)in[0] << 16 | (rest == 2 ? (unsigned)in[1] << 8 : 0);
        *p++ = alpha[v >> 18];
        *p++ = alpha[(v >> 12) & 63];
        if (rest == 2)
            *p++ = alpha[(v >> 6) & 63];
        else if (pad)
            *p++ = '=';
        if (pad)
            *p++ = '=';
    }
    luaL_pushresultsize(&b, (size_t)(p - o));
}

/* Decode with `alpha`; padding is optional but, when present, must complete
 * the last quantum (nginx accepts missing padding too). Strict otherwise: any
 * byte outside the alphabet, a lone trailing character, or non-zero unused
 * bits in the last character (RFC 4648 §3.5) → -1. Pushes the result. */
static int b64_decode(lua_State *L, const unsigned char *in, size_t n, const char *alpha)
{
    signed char val[256];
    memset(val, -1, sizeof val);
    for (int i = 0; i < 64; i++)
        val[(unsigned char)alpha[i]] = (signed char)i;

    size_t len = n, pads = 0;
    while (len > 0 && in[len - 1] == '=' && pads < 2) {
        len--;
        pads++;
    }
    if (pads && (n % 4 != 0))
        return -1;
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (val[in[i]] < 0)
            return -1;

    luaL_Buffer b;
    size_t outlen = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    unsigned char *o = (unsigned char *)luaL_buffinitsize(L, &b, outlen ? outlen : 1);
    unsigned char *p = o;
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
        unsigned v = (unsigned)val[in[i]] << 18 | (unsigned)val[in[i + 1]] << 12 |
                     (unsigned)val[in[i + 2]] << 6 | (unsigned)val[in[i + 3]];
        *p++ = (unsigned char)(v >> 16);
        *p++ = (unsigned char)(v >> 8);
        *p++ = (unsigned char)v;
    }
    size_t rest = len - i;
    if (rest == 2) {
        unsigned v = (unsigned)val[in[i]] << 18 | (unsigned)val[in[i + 1]] << 12;
        if (v & 0xffff) {
            luaL_pushresultsize(&b, 0);
            lua_pop(L, 1);
            return -1;
        }
        *p++ = (unsigned char)(v >> 16);
    } else if (rest == 3) {
        unsigned v = (unsigned)val[in[i]] << 18 | (unsigned)val[in[i + 1]] << 12 |
                     (unsigned)val[in[i + 2]] << 6;
        if (v & 0xff) {
            luaL_pushresultsize(&b, 0);
            lua_pop(L, 1);
            return -1;
        }
        *p++ = (unsigned char)(v >> 16);
        *p++ = (unsigned char)(v >> 8);
    }
    luaL_pushresultsize(&b, (size_t)(p - o));
    return 0;
}

/* host.encode_base64(s [, no_padding]) — ngx.encode_base64 */
static int l_encode_base64(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.encode_base64", &n);
    b64_encode(L, (const unsigned char *)s, n, b64_std, !lua_toboolean(L, 2));
    return 1;
}

/* host.decode_base64(s) → bytes | nil, "invalid base64" — ngx.decode_base64 */
static int l_decode_base64(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.decode_base64", &n);
    if (b64_decode(L, (const unsigned char *)s, n, b64_std) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid base64");
        return 2;
    }
    return 1;
}

/* host.encode_base64url(s) — ngx.base64.encode_base64url: no padding */
static int l_encode_base64url(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.encode_base64url", &n);
    b64_encode(L, (const unsigned char *)s, n, b64_url, 0);
    return 1;
}

/* host.decode_base64url(s) → bytes | nil, "invalid base64url" —
 * ngx.base64.decode_base64url: padding optional (JWT has none) */
static int l_decode_base64url(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.decode_base64url", &n);
    if (b64_decode(L, (const unsigned char *)s, n, b64_url) < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid base64url");
        return 2;
    }
    return 1;
}

/* ============================================================ digests, hex */

static void push_hex(lua_State *L, const unsigned char *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    if (n > SIZE_MAX / 2)
        luaL_error(L, "to_hex: input too large");
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, n ? 2 * n : 1);
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = digits[in[i] >> 4];
        o[2 * i + 1] = digits[in[i] & 15];
    }
    luaL_pushresultsize(&b, 2 * n);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* host.sha256(s) → 32 raw bytes — like resty.sha256 (ngx.sha1_bin for SHA-1) */
static int sha256_common(lua_State *L, const char *fname, int hex)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, fname, &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL) != 1)
        return luaL_error(L, "%s: libcrypto failed", fname);
    if (hex)
        push_hex(L, md, mdlen);
    else
        lua_pushlstring(L, (const char *)md, mdlen);
    return 1;
}

static int l_sha256(lua_State *L) { return sha256_common(L, "host.sha256", 0); }

/* host.sha256_hex(s) → 64 lowercase hex characters */
static int l_sha256_hex(lua_State *L) { return sha256_common(L, "host.sha256_hex", 1); }

/* host.hmac_sha256(key, msg [, "hex"|"raw"]) → lowercase hex (the default,
 * as before) or 32 raw bytes (as ngx.hmac_sha1 returns for SHA-1) */
static int l_hmac_sha256(lua_State *L)
{
    static const char fn[] = "host.hmac_sha256";
    size_t kl, ml;
    const char *key = sh_lib_checklstring(L, 1, fn, &kl);
    const char *msg = sh_lib_checklstring(L, 2, fn, &ml);
    int hex = 1;
    if (!lua_isnoneornil(L, 3)) {
        const char *mode = check_str(L, 3, fn, NULL);
        if (strcmp(mode, "raw") == 0)
            hex = 0;
        else if (strcmp(mode, "hex") != 0)
            return arg_error(L, fn, 3, "\"hex\" or \"raw\" expected");
    }
    if (kl > INT_MAX)
        return arg_error(L, fn, 1, "key too long");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!HMAC(EVP_sha256(), key, (int)kl, (const unsigned char *)msg, ml, mac, &n))
        return luaL_error(L, "%s: libcrypto failed", fn);
    if (hex)
        push_hex(L, mac, n);
    else
        lua_pushlstring(L, (const char *)mac, n);
    return 1;
}

/* host.to_hex(s) → lowercase hex — resty.string.to_hex */
static int l_to_hex(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.to_hex", &n);
    push_hex(L, (const unsigned char *)s, n);
    return 1;
}

/* host.from_hex(s) → bytes | nil, "invalid hex" (odd length, a non-hex digit;
 * either case accepted) */
static int l_from_hex(lua_State *L)
{
    size_t n;
    const unsigned char *s =
        (const unsigned char *)sh_lib_checklstring(L, 1, "host.from_hex", &n);
    int bad = n % 2 != 0;
    for (size_t i = 0; !bad && i < n; i++)
        bad = hexval(s[i]) < 0;
    if (bad) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid hex");
        return 2;
    }
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, n ? n / 2 : 1);
    for (size_t i = 0; i < n / 2; i++)
        o[i] = (char)(hexval(s[2 * i]) << 4 | hexval(s[2 * i + 1]));
    luaL_pushresultsize(&b, n / 2);
    return 1;
}

/* ============================================================ URI */

/* Bytes ngx.escape_uri leaves alone (its default type 2, a URI component):
 * the same set as JavaScript's encodeURIComponent. */
static int uri_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("-_.!~*'()", c));
}

/* host.escape_uri(s) — ngx.escape_uri: every other byte as %XX, uppercase */
static int l_escape_uri(lua_State *L)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t n;
    const unsigned char *s =
        (const unsigned char *)sh_lib_checklstring(L, 1, "host.escape_uri", &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        if (uri_unreserved(s[i])) {
            luaL_addchar(&b, (char)s[i]);
        } else {
            luaL_addchar(&b, '%');
            luaL_addchar(&b, digits[s[i] >> 4]);
            luaL_addchar(&b, digits[s[i] & 15]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

/* ngx.unescape_uri's rules: "%XY" with two hex digits → the byte, "+" → space,
 * any other "%" (a bad or cut escape) stays as it is. Writes at most n bytes. */
static size_t unescape(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
            hexval((unsigned char)s[i + 2]) >= 0) {
            out[o++] = (char)(hexval((unsigned char)s[i + 1]) << 4 | hexval((unsigned char)s[i + 2]));
            i += 2;
        } else if (c == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

static void push_unescaped(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, n ? n : 1);
    luaL_pushresultsize(&b, unescape(s, n, o));
}

/* host.unescape_uri(s) — ngx.unescape_uri ("b%20r56+7" → "b r56 7") */
static int l_unescape_uri(lua_State *L)
{
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, "host.unescape_uri", &n);
    push_unescaped(L, s, n);
    return 1;
}

/* host.decode_args(query [, max_args]) → table [, "truncated"] — ngx.decode_args.
 * "a=1&b&c=" → {a="1", b=true, c=""}; a repeated key → an array of its values
 * in order; keys and values unescaped as unescape_uri; empty keys ("=x", "&&")
 * are skipped; at most max_args (default 100, 0: no limit) arguments, then
 * "truncated" as the second value. */
static int l_decode_args(lua_State *L)
{
    static const char fn[] = "host.decode_args";
    size_t n;
    const char *s = sh_lib_checklstring(L, 1, fn, &n);
    lua_Integer max = opt_integer(L, 2, fn, 100);
    if (max < 0)
        return arg_error(L, fn, 2, "must not be negative");
    lua_settop(L, 1);
    lua_createtable(L, 0, 4);
    int t = lua_gettop(L);
    lua_Integer count = 0;
    size_t i = 0;
    while (i <= n) {
        size_t end = i;
        while (end < n && s[end] != '&')
            end++;
        const char *seg = s + i;
        size_t seglen = end - i;
        i = end + 1;
        const char *eq = memchr(seg, '=', seglen);
        size_t klen = eq ? (size_t)(eq - seg) : seglen;
        if (klen == 0)
            continue; /* "" or "=value": skipped, as ngx does */
        if (max && count >= max) {
            lua_pushliteral(L, "truncated");
            return 2;
        }
        count++;
        push_unescaped(L, seg, klen);
        if (eq)
            push_unescaped(L, eq + 1, seglen - klen - 1);
        else
            lua_pushboolean(L, 1);
        lua_pushvalue(L, -2);
        lua_rawget(L, t); /* key value old */
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_rawset(L, t);
        } else if (lua_istable(L, -1)) {
            lua_insert(L, -2); /* key old value */
            lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
            lua_pop(L, 2);
        } else {
            lua_createtable(L, 2, 0); /* key value old new */
            lua_insert(L, -2);
            lua_rawseti(L, -2, 1);
            lua_insert(L, -2);
            lua_rawseti(L, -2, 2);
            lua_rawset(L, t);
        }
    }
    return 1;
}

/* ============================================================ addresses */

/* A bare address (no port, no brackets) of n bytes → 16 bytes, IPv4 as
 * ::ffff:a.b.c.d. → AF_INET, AF_INET6, or -1. */
static int parse_ip(const char *s, size_t n, unsigned char out[16])
{
    char buf[64];
    if (n == 0 || n >= sizeof buf || memchr(s, '\0', n))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (memchr(buf, ':', n)) {
        return inet_pton(AF_INET6, buf, out) == 1 ? AF_INET6 : -1;
    }
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    return inet_pton(AF_INET, buf, out + 12) == 1 ? AF_INET : -1;
}

/* An address with an optional port, as nginx's ngx_parse_addr_port reads an
 * X-Forwarded-For element: "1.2.3.4", "1.2.3.4:80", "[::1]", "[::1]:80", "::1". */
static int parse_addr_port(const char *s, size_t n, unsigned char out[16])
{
    const char *host = s;
    size_t hlen = n;
    const char *port = NULL;
    size_t plen = 0;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return -1;
        host = s + 1;
        hlen = (size_t)(close - s) - 1;
        size_t after = n - (size_t)(close - s) - 1;
        if (after > 0) {
            if (close[1] != ':')
                return -1;
            port = close + 2;
            plen = after - 1;
        }
        if (!memchr(host, ':', hlen))
            return -1; /* brackets hold IPv6 only */
    } else {
        const char *c1 = memchr(s, ':', n);
        if (c1 && !memchr(c1 + 1, ':', n - (size_t)(c1 - s) - 1)) { /* one colon: v4:port */
            hlen = (size_t)(c1 - s);
            port = c1 + 1;
            plen = n - hlen - 1;
        }
    }
    if (port) {
        if (plen == 0 || plen > 5)
            return -1;
        unsigned long v = 0;
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9')
                return -1;
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v > 65535)
            return -1;
    }
    return parse_ip(host, hlen, out);
}

static int format_ip(const unsigned char a[16], int family, char *out, size_t outsz)
{
    char buf[SH_IP_MAX];
    if (!inet_ntop(family, family == AF_INET ? a + 12 : a, buf, sizeof buf))
        return -1;
    size_t l = strlen(buf);
    if (l >= outsz)
        return -1;
    memcpy(out, buf, l + 1);
    return 0;
}

int sh_cidr_parse(const char *s, sh_cidr *out)
{
    if (!s || !out)
        return -1;
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    unsigned char a[16];
    int fam = parse_ip(s, alen, a);
    if (fam < 0)
        return -1;
    int maxbits = fam == AF_INET ? 32 : 128;
    int bits = maxbits;
    if (slash) {
        const char *d = slash + 1;
        size_t dl = strlen(d);
        if (dl == 0 || dl > 3)
            return -1;
        bits = 0;
        for (size_t i = 0; i < dl; i++) {
            if (d[i] < '0' || d[i] > '9')
                return -1;
            bits = bits * 10 + (d[i] - '0');
        }
        if (bits > maxbits)
            return -1;
    }
    if (fam == AF_INET)
        bits += 96;
    memset(out, 0, sizeof *out);
    out->bits = bits;
    for (int i = 0; i < 16; i++) {
        int b = bits - 8 * i;
        out->mask[i] = b >= 8 ? 0xff : b <= 0 ? 0 : (unsigned char)(0xff << (8 - b));
        out->addr[i] = a[i] & out->mask[i];
    }
    return 0;
}

static int cidr_match_bytes(const sh_cidr *c, const unsigned char a[16])
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (c->bits < 96 && memcmp(a, v4mapped, sizeof v4mapped) == 0)
        return 0; /* an IPv6 block (::/0 too) holds no IPv4 address: nginx's families */
    for (int i = 0; i < 16; i++)
        if ((a[i] & c->mask[i]) != c->addr[i])
            return 0;
    return 1;
}

int sh_cidr_match(const sh_cidr *c, const char *ip)
{
    unsigned char a[16];
    if (!c || !ip || parse_ip(ip, strlen(ip), a) < 0)
        return 0;
    return cidr_match_bytes(c, a);
}

int sh_peer_ip(const char *peer, char *ip, size_t ipsz)
{
    unsigned char a[16];
    if (ip && ipsz)
        ip[0] = '\0';
    if (!peer || !ip)
        return -1;
    int fam = parse_addr_port(peer, strlen(peer), a);
    if (fam < 0)
        return -1;
    return format_ip(a, fam, ip, ipsz);
}

static int trusted_addr(const unsigned char a[16], const sh_cidr *trusted, size_t ntrusted)
{
    for (size_t i = 0; i < ntrusted; i++)
        if (cidr_match_bytes(&trusted[i], a))
            return 1;
    return 0;
}

static int ows_or_comma(char c) { return c == ' ' || c == '\t' || c == ','; }

int sh_realip(const char *peer_ip, const char *header_value, const sh_cidr *trusted,
              size_t ntrusted, int recursive, char *out, size_t outsz)
{
    unsigned char cur[16];
    if (out && outsz)
        out[0] = '\0';
    if (!peer_ip || !out)
        return -1;
    int fam = parse_ip(peer_ip, strlen(peer_ip), cur);
    if (fam < 0)
        return -1;
    int found = 0;
    if (header_value) {
        /* ngx_http_get_forwarded_addr_internal, element by element from the right */
        const char *xff = header_value;
        size_t len = strlen(xff);
        do {
            if (!trusted_addr(cur, trusted, ntrusted))
                break;
            while (len > 0 && ows_or_comma(xff[len - 1]))
                len--;
            if (len == 0)
                break;
            size_t start = len;
            while (start > 0 && !ows_or_comma(xff[start - 1]))
                start--;
            unsigned char next[16];
            int nfam = parse_addr_port(xff + start, len - start, next);
            if (nfam < 0)
                break; /* not an address: what was found so far stands */
            memcpy(cur, next, sizeof cur);
            fam = nfam;
            found = 1;
            len = start;
        } while (recursive);
    }
    if (format_ip(cur, fam, out, outsz) < 0) {
        if (outsz)
            out[0] = '\0';
        return -1;
    }
    return found;
}

/* host.table_new(narray, nhash) → an empty table with room for narray array
 * members and nhash other keys (LuaJIT's table.new, OpenResty's
 * require "table.new"): a table filled to a known size skips the rehash of each
 * doubling. The room is capped (SH_TABLE_NEW_MAX each) and counts against
 * lua_max_memory like any table; the budget is charged for what it clears. */
#define SH_TABLE_NEW_MAX 16777216 /* 2^24 */
#define SH_STR_(x) #x
#define SH_STR(x) SH_STR_(x)
static int l_table_new(lua_State *L)
{
    static const char fn[] = "host.table_new";
    lua_Integer n[2];
    for (int i = 0; i < 2; i++) {
        n[i] = opt_integer(L, i + 1, fn, 0);
        if (n[i] < 0)
            return arg_error(L, fn, i + 1, "must not be negative");
        if (n[i] > SH_TABLE_NEW_MAX)
            return arg_error(L, fn, i + 1, "too large (max " SH_STR(SH_TABLE_NEW_MAX) ")");
    }
    sh_budget_charge((uint64_t)(n[0] + n[1]) / SH_BUDGET_BYTES_PER_INSTRUCTION);
    lua_createtable(L, (int)n[0], (int)n[1]);
    return 1;
}

/* host.ip_in(ip, cidrs) → boolean: is the address in one of the blocks?
 * cidrs is one string or a list of strings ("10.0.0.0/8", "::1"); a bad block
 * raises; an ip that is not an address is in none. (nginx: the geo/allow
 * CIDR matching; lua-resty-iputils' ip_in_cidrs.) */
static int l_ip_in(lua_State *L)
{
    static const char fn[] = "host.ip_in";
    size_t n;
    const char *ip = check_str(L, 1, fn, &n);
    unsigned char a[16];
    int ok = parse_ip(ip, n, a) >= 0;
    int in = 0;
    sh_cidr c;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *cs = lua_tostring(L, 2);
        if (sh_cidr_parse(cs, &c) < 0)
            return arg_error(L, fn, 2, lua_pushfstring(L, "bad CIDR \"%s\"", cs));
        in = ok && cidr_match_bytes(&c, a);
    } else if (lua_type(L, 2) == LUA_TTABLE) {
        lua_Integer len = (lua_Integer)lua_rawlen(L, 2);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, 2, i);
            const char *cs = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (!cs || sh_cidr_parse(cs, &c) < 0)
                return arg_error(L, fn, 2,
                                 lua_pushfstring(L, "bad CIDR at [%d]: %s", (int)i,
                                                 cs ? cs : luaL_typename(L, -1)));
            lua_pop(L, 1);
            if (ok && cidr_match_bytes(&c, a))
                in = 1; /* keep going: every entry is validated */
        }
    } else {
        return type_error(L, fn, 2, "string or table");
    }
    lua_pushboolean(L, in);
    return 1;
}

/* ============================================================ shared dicts */

/* ngx.shared.DICT in one process: items in a uthash keyed by bytes, on an LRU
 * list (head = most recently used). Keys and values are C copies, outside
 * every Lua state's lua_max_memory, so three caps bound them:
 *   - a count of items (max_items);
 *   - a capacity in bytes (max_bytes; without it shared_dict_max_bytes, which
 *     follows the configuration), counting each item as DICT_ITEM_OVERHEAD +
 *     its key + a string value's bytes (ngx's `lua_shared_dict name 10m`);
 *   - the process total of every dict's items and headers
 *     (shared_dict_total_bytes), so many dicts cannot add up without bound.
 * A write that does not fit removes expired items from the LRU end, then the
 * least recently used live ones (reported as `forcible`, as ngx does); the
 * safe_ variants refuse instead ("no memory"), as does any write that would not
 * fit even in an empty dict. Expiry is lazy (an expired item is dropped when
 * met) plus a bounded sweep from the LRU end on every write. Times are
 * milliseconds on CLOCK_MONOTONIC. */

#define DICT_MT "statushost.shared_dict"
#define DICT_DEFAULT_MAX 10000
#define DICT_MAX_KEY 65535
#define DICT_SWEEP 4           /* expired items checked per write */
#define DICT_FULL_SCAN 32      /* LRU-end items checked for expiry when full */
#define DICT_MIN_BYTES 8192    /* the smallest capacity (ngx's lua_shared_dict too) */
#define DICT_MAX_BYTES (1ull << 40)
/* What an item costs besides its key and value: its struct, the key's NUL,
 * two malloc headers and its share of the hash's buckets. */
#define DICT_ITEM_OVERHEAD (sizeof(dict_item) + 1 + 48)

enum { V_STR, V_INT, V_NUM, V_BOOL };

typedef struct dict_item {
    UT_hash_handle hh;
    struct dict_item *prev, *next; /* LRU: prev toward the head */
    int64_t expires;               /* ms on the dict clock; 0: never */
    int type;
    union {
        lua_Integer i;
        lua_Number n;
        int b;
    } v;
    char *str; /* V_STR: the value (malloc) */
    size_t slen;
    size_t klen;
    char key[]; /* klen bytes + NUL */
} dict_item;

typedef struct sh_dict {
    UT_hash_handle hh;
    dict_item *items;
    dict_item *head, *tail;
    size_t count, max_items;
    size_t used;      /* bytes of its items (item_size) */
    size_t max_bytes; /* 0: g_default_bytes (shared_dict_max_bytes) */
    size_t nlen;
    char name[];
} sh_dict;

typedef struct dict_ud {
    sh_dict *d;
    unsigned epoch;
} dict_ud;

static sh_dict *g_dicts;
static unsigned g_epoch = 1; /* bumped by sh_lib_shutdown: older handles are stale */
static int64_t g_clock_offset_ms;

static int g_clock_virtual;
static size_t g_default_bytes = SH_SHARED_DICT_MAX_BYTES_DEFAULT;
static size_t g_total_max = SH_SHARED_DICT_TOTAL_BYTES_DEFAULT;
static size_t g_total_used; /* every dict's items and headers */

void sh_lib_set_clock_offset_ms(int64_t offset_ms) { g_clock_offset_ms = offset_ms; }
void sh_lib_set_clock_virtual(int on) { g_clock_virtual = on; }

static int64_t dict_now(void)
{
    if (g_clock_virtual)
        return g_clock_offset_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + g_clock_offset_ms;
}

static void lru_unlink(sh_dict *d, dict_item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        d->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        d->tail = it->prev;
    it->prev = it->next = NULL;
}

static void lru_push_head(sh_dict *d, dict_item *it)
{
    it->prev = NULL;
    it->next = d->head;
    if (d->head)
        d->head->prev = it;
    d->head = it;
    if (!d->tail)
        d->tail = it;
}

static size_t item_size(size_t klen, size_t vlen) { return DICT_ITEM_OVERHEAD + klen + vlen; }

static size_t item_bytes(const dict_item *it)
{
    return item_size(it->klen, it->type == V_STR ? it->slen : 0);
}

static size_t dict_header(size_t nlen) { return sizeof(sh_dict) + nlen + 1 + 16; }

static size_t dict_cap(const sh_dict *d) { return d->max_bytes ? d->max_bytes : g_default_bytes; }

/* Item bytes in d: add, then take away sub (of what it already holds). */
static void account(sh_dict *d, size_t add, size_t sub)
{
    d->used = d->used + add - sub;
    g_total_used = g_total_used + add - sub;
}

static void item_free(sh_dict *d, dict_item *it)
{
    account(d, 0, item_bytes(it));
    HASH_DEL(d->items, it);
    lru_unlink(d, it);
    free(it->str);
    free(it);
    d->count--;
}

static int expired(const dict_item *it, int64_t now) { return it->expires && it->expires <= now; }

/* The live item for key, or NULL (an expired one is dropped on the way). */
static dict_item *item_find(sh_dict *d, const char *key, size_t klen, int64_t now)
{
    dict_item *it = NULL;
    HASH_FIND(hh, d->items, key, klen, it);
    if (it && expired(it, now)) {
        item_free(d, it);
        it = NULL;
    }
    return it;
}

static void item_touch(sh_dict *d, dict_item *it)
{
    if (d->head != it) {
        lru_unlink(d, it);
        lru_push_head(d, it);
    }
}

/* Drop expired items among the `n` at the LRU end. → how many were dropped. */
static size_t sweep(sh_dict *d, int64_t now, size_t n)
{
    size_t freed = 0;
    dict_item *it = d->tail;
    while (it && n--) {
        dict_item *prev = it->prev;
        if (expired(it, now)) {
            item_free(d, it);
            freed++;
        }
        it = prev;
    }
    return freed;
}

/* Would an item of `size` bytes fit in d in place of `old` (the key's live
 * item, or NULL)? */
static int fits(const sh_dict *d, const dict_item *old, size_t size)
{
    size_t old_size = old ? item_bytes(old) : 0;
    return d->count - (old != NULL) < d->max_items && d->used - old_size + size <= dict_cap(d) &&
           g_total_used - old_size + size <= g_total_max;
}

/* Make room in d for an item of `size` bytes replacing `old` (the key's live
 * item, or NULL; never evicted here). Expired items at the LRU end go first,
 * then, unless `safe`, the least recently used live ones (*forcible = 1).
 * → 0, or -1 when it cannot fit: bigger than the capacity, or than what the
 * other dicts leave of the process total, or (safe) no expired item to spare.
 * Nothing live is evicted for a write that fails. */
static int make_room(sh_dict *d, dict_item *old, size_t size, int64_t now, int safe, int *forcible)
{
    if (fits(d, old, size))
        return 0;
    if (size > dict_cap(d) || g_total_used - d->used + size > g_total_max)
        return -1;
    sweep(d, now, DICT_FULL_SCAN);
    if (safe)
        return fits(d, old, size) ? 0 : -1;
    while (!fits(d, old, size)) {
        dict_item *victim = d->tail == old ? old->prev : d->tail;
        if (!victim)
            return -1; /* cannot be: the checks above */
        item_free(d, victim);
        *forcible = 1;
    }
    return 0;
}

/* After a cap went down: expired items go, then LRU ones until d fits. */
static void dict_trim(sh_dict *d)
{
    int64_t now = dict_now();
    sweep(d, now, d->count);
    while ((d->count > d->max_items || d->used > dict_cap(d)) && d->tail)
        item_free(d, d->tail);
}

size_t sh_lib_shared_bytes(void) { return g_total_used; }

void sh_lib_shared_limits(size_t dict_bytes, size_t total_bytes)
{
    int smaller = dict_bytes < g_default_bytes;
    g_default_bytes = dict_bytes;
    g_total_max = total_bytes;
    sh_dict *d, *tmp;
    if (smaller)
        HASH_ITER(hh, g_dicts, d, tmp)
        {
            if (!d->max_bytes)
                dict_trim(d);
        }
}

/* Change d's caps to those given (0: not given, kept); excess items go. */
static void dict_set_caps(sh_dict *d, size_t max_items, size_t max_bytes)
{
    size_t cap = dict_cap(d), items = d->max_items;
    if (max_items)
        d->max_items = max_items;
    if (max_bytes)
        d->max_bytes = max_bytes;
    if (d->max_items < items || dict_cap(d) < cap)
        dict_trim(d);
}

/* Caps host.shared asked for while a generation loads (sh_lib_shared_begin), in
 * order: applied when it is committed, dropped when it fails. */
typedef struct cap_req {
    struct cap_req *next;
    size_t max_items, max_bytes; /* 0: not given */
    size_t nlen;
    char name[]; /* the dict's, nlen bytes */
} cap_req;

static int g_loading;                      /* a generation loads: caps are held back */
static cap_req *g_reqs, **g_reqs_end = &g_reqs; /* what it asked for */

/* Hold back the caps asked for d while a generation loads. 0, or -1 out of memory. */
static int cap_hold(const sh_dict *d, size_t max_items, size_t max_bytes)
{
    cap_req *r = malloc(sizeof *r + d->nlen);
    if (!r)
        return -1;
    *r = (cap_req){NULL, max_items, max_bytes, d->nlen};
    memcpy(r->name, d->name, d->nlen);
    *g_reqs_end = r;
    g_reqs_end = &r->next;
    return 0;
}

void sh_lib_shared_begin(void)
{
    sh_lib_shared_end(0);
    g_loading = 1;
}

void sh_lib_shared_end(int commit)
{
    while (g_reqs) {
        cap_req *r = g_reqs;
        sh_dict *d = NULL;
        g_reqs = r->next;
        if (commit)
            HASH_FIND(hh, g_dicts, r->name, r->nlen, d);
        if (d)
            dict_set_caps(d, r->max_items, r->max_bytes);
        free(r);
    }
    g_reqs_end = &g_reqs;
    g_loading = 0;
}

/* A new dict `name` with the caps given (0: the defaults). → NULL with *err when out
 * of memory or when the process total has no room for it. */
static sh_dict *dict_create(const char *name, size_t nlen, size_t max_items, size_t max_bytes,
                            const char **err)
{
    *err = "shared_dict_total_bytes reached";
    if (g_total_used + dict_header(nlen) > g_total_max)
        return NULL;
    *err = "out of memory";
    sh_dict *d = calloc(1, sizeof *d + nlen + 1);
    if (!d)
        return NULL;
    memcpy(d->name, name, nlen);
    d->nlen = nlen;
    d->max_items = max_items ? max_items : DICT_DEFAULT_MAX;
    d->max_bytes = max_bytes;
    hash_oom = 0;
    HASH_ADD_KEYPTR(hh, g_dicts, d->name, d->nlen, d);
    if (hash_oom) {
        free(d);
        return NULL;
    }
    g_total_used += dict_header(nlen);
    return d;
}

/* The dict `name`, created with the caps given (0: not given; max_items then
 * DICT_DEFAULT_MAX, max_bytes the default), or changed to them; while a generation
 * loads, created with the defaults and the caps held back (cap_hold). → NULL with
 * *err when out of memory or when the process total has no room for it. */
static sh_dict *dict_get_or_create(const char *name, size_t nlen, size_t max_items,
                                   size_t max_bytes, const char **err)
{
    sh_dict *d = NULL;
    HASH_FIND(hh, g_dicts, name, nlen, d);
    if (g_loading) {
        if (!d && !(d = dict_create(name, nlen, 0, 0, err)))
            return NULL;
        *err = "out of memory";
        return (max_items || max_bytes) && cap_hold(d, max_items, max_bytes) != 0 ? NULL : d;
    }
    if (!d)
        return dict_create(name, nlen, max_items, max_bytes, err);
    dict_set_caps(d, max_items, max_bytes);
    return d;
}

void sh_lib_shutdown(void)
{
    sh_dict *d, *dtmp;
    HASH_ITER(hh, g_dicts, d, dtmp)
    {
        dict_item *it, *itmp;
        HASH_ITER(hh, d->items, it, itmp)
        {
            HASH_DEL(d->items, it);
            free(it->str);
            free(it);
        }
        HASH_DEL(g_dicts, d);
        free(d);
    }
    g_dicts = NULL;
    sh_lib_shared_end(0);
    g_epoch++;
    g_total_used = 0;
    g_default_bytes = SH_SHARED_DICT_MAX_BYTES_DEFAULT;
    g_total_max = SH_SHARED_DICT_TOTAL_BYTES_DEFAULT;
}

/* One cap of host.shared's options, the value at the top (nil: 0, not given):
 * an integer lo..hi, else raises naming it. Pops it. */
static size_t shared_cap(lua_State *L, const char *what, lua_Integer lo, lua_Integer hi)
{
    lua_Integer v = 0;
    if (!lua_isnil(L, -1)) {
        int ok = 0;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < lo || v > hi)
            sh_lib_argerror(L, "host.shared", 2,
                            lua_pushfstring(L, "%s must be %I..%I", what, (LUAI_UACINT)lo,
                                            (LUAI_UACINT)hi));
    }
    lua_pop(L, 1);
    return (size_t)v;
}

/* host.shared(name [, max_items | {max_items=, max_bytes=}]) → dict —
 * ngx.shared[name]. Created on first use with the caps given (max_items
 * default 10000; max_bytes default shared_dict_max_bytes, following the
 * configuration); a later call that passes a cap changes it (the newest
 * script generation wins; excess LRU items go). Caps asked for while a
 * generation loads take effect when it is committed (sh_lib_shared_end). */
static int l_shared(lua_State *L)
{
    static const char fn[] = "host.shared";
    size_t nlen;
    const char *name = check_str(L, 1, fn, &nlen);
    if (nlen == 0)
        return arg_error(L, fn, 1, "empty name");
    size_t max_items = 0, max_bytes = 0;
    lua_settop(L, 2);
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            lua_pop(L, 1);
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (!k || (strcmp(k, "max_items") && strcmp(k, "max_bytes")))
                return arg_error(L, fn, 2,
                                 lua_pushfstring(L, "unknown option %s (max_items, max_bytes)",
                                                 luaL_tolstring(L, -1, NULL)));
        }
        lua_getfield(L, 2, "max_items");
        max_items = shared_cap(L, "max_items", 1, 100000000);
        lua_getfield(L, 2, "max_bytes");
        max_bytes = shared_cap(L, "max_bytes", DICT_MIN_BYTES, (lua_Integer)DICT_MAX_BYTES);
    } else if (!lua_isnoneornil(L, 2) && !lua_isnumber(L, 2)) {
        return type_error(L, fn, 2, "number or table");
    } else {
        lua_pushvalue(L, 2);
        max_items = shared_cap(L, "max_items", 1, 100000000);
    }
    const char *err = NULL;
    sh_dict *d = dict_get_or_create(name, nlen, max_items, max_bytes, &err);
    if (!d)
        return luaL_error(L, "%s: %s", fn, err);
    dict_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->d = d;
    u->epoch = g_epoch;
    luaL_setmetatable(L, DICT_MT);
    return 1;
}

static sh_dict *check_dict(lua_State *L, const char *fname)
{
    dict_ud *u = luaL_testudata(L, 1, DICT_MT);
    if (!u)
        luaL_error(L, "%s: bad self (shared dict expected, got %s; call it with ':')", fname,
                   luaL_typename(L, 1));
    if (u->epoch != g_epoch)
        luaL_error(L, "%s: the shared dicts were freed (shutdown)", fname);
    return u->d;
}

/* The key at index 2: a string or a number (as tostring). NULL with the
 * ngx error text pushed as "err" for nil, empty or too long keys. */
static const char *dict_key(lua_State *L, const char *fname, size_t *klen, const char **err)
{
    *err = NULL;
    int t = lua_type(L, 2);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        *err = "nil key";
        return NULL;
    }
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        type_error(L, fname, 2, "string");
    const char *k = lua_tolstring(L, 2, klen);
    if (*klen == 0)
        *err = "empty key";
    else if (*klen > DICT_MAX_KEY)
        *err = "key too long";
    return *err ? NULL : k;
}

/* A ttl in seconds at idx (nil/none: `def`) → ms, 0 meaning "never". */
static int64_t ttl_arg(lua_State *L, int idx, const char *fname, int64_t def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    if (lua_type(L, idx) != LUA_TNUMBER)
        type_error(L, fname, idx, "number");
    lua_Number s = lua_tonumber(L, idx);
    if (!(s >= 0))
        arg_error(L, fname, idx, "ttl must be >= 0 seconds");
    if (s == 0)
        return 0;
    if (s > 1e12)
        s = 1e12; /* ~31700 years: no overflow below */
    int64_t ms = (int64_t)(s * 1000);
    return ms > 0 ? ms : 1;
}

static int push_fail(lua_State *L, int first_nil, const char *err, int forcible)
{
    if (first_nil)
        lua_pushnil(L);
    else
        lua_pushboolean(L, 0);
    lua_pushstring(L, err);
    lua_pushboolean(L, forcible);
    return 3;
}

static int push_ok(lua_State *L, int forcible)
{
    lua_pushboolean(L, 1);
    lua_pushnil(L);
    lua_pushboolean(L, forcible);
    return 3;
}

/* Store the value at idx into it (the type was checked), accounting the
 * change of its size (make_room made room). → 0 or -1 (memory). */
static int item_store(sh_dict *d, dict_item *it, lua_State *L, int idx)
{
    size_t before = item_bytes(it);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        char *p = malloc(n ? n : 1);
        if (!p)
            return -1;
        memcpy(p, s, n);
        free(it->str);
        it->str = p;
        it->slen = n;
        it->type = V_STR;
        account(d, item_bytes(it), before);
        return 0;
    }
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            it->type = V_INT;
            it->v.i = lua_tointeger(L, idx);
        } else {
            it->type = V_NUM;
            it->v.n = lua_tonumber(L, idx);
        }
        break;
    default:
        it->type = V_BOOL;
        it->v.b = lua_toboolean(L, idx);
        break;
    }
    free(it->str);
    it->str = NULL;
    it->slen = 0;
    account(d, item_bytes(it), before);
    return 0;
}

static void item_push(lua_State *L, const dict_item *it)
{
    switch (it->type) {
    case V_STR: lua_pushlstring(L, it->str, it->slen); break;
    case V_INT: lua_pushinteger(L, it->v.i); break;
    case V_NUM: lua_pushnumber(L, it->v.n); break;
    default: lua_pushboolean(L, it->v.b); break;
    }
}

/* A new item for key (a boolean until item_store), at the LRU head; NULL when
 * out of memory. make_room made room. */
static dict_item *item_new(sh_dict *d, const char *key, size_t klen)
{
    dict_item *it = calloc(1, sizeof *it + klen + 1);
    if (!it)
        return NULL;
    memcpy(it->key, key, klen);
    it->klen = klen;
    it->type = V_BOOL;
    hash_oom = 0;
    HASH_ADD_KEYPTR(hh, d->items, it->key, it->klen, it);
    if (hash_oom) {
        free(it);
        return NULL;
    }
    lru_push_head(d, it);
    d->count++;
    account(d, item_bytes(it), 0);
    return it;
}

enum { OP_SET, OP_ADD, OP_REPLACE };

/* set / add / replace (key, value [, ttl]) → ok, err, forcible; `safe`
 * (safe_set, safe_add): nil, "no memory" rather than evicting live items */
static int dict_store(lua_State *L, const char *fname, int op, int safe)
{
    sh_dict *d = check_dict(L, fname);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fname, &klen, &err);
    int vt = lua_type(L, 3);
    int64_t ttl = ttl_arg(L, 4, fname, 0);
    if (!key)
        return push_fail(L, 1, err, 0);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN && vt != LUA_TNIL &&
        vt != LUA_TNONE)
        return push_fail(L, 1, "bad value type", 0);
    int64_t now = dict_now();
    sweep(d, now, DICT_SWEEP);
    dict_item *it = item_find(d, key, klen, now);
    if (op == OP_ADD && it)
        return push_fail(L, 0, "exists", 0);
    if (op == OP_REPLACE && !it)
        return push_fail(L, 0, "not found", 0);
    if (vt == LUA_TNIL || vt == LUA_TNONE) { /* set(key, nil) deletes, as ngx */
        if (it)
            item_free(d, it);
        return push_ok(L, 0);
    }
    int forcible = 0;
    size_t size = item_size(klen, vt == LUA_TSTRING ? lua_rawlen(L, 3) : 0);
    if (make_room(d, it, size, now, safe, &forcible) != 0)
        return push_fail(L, 1, "no memory", forcible);
    int fresh = !it;
    if (!it && !(it = item_new(d, key, klen)))
        return push_fail(L, 1, "no memory", forcible);
    if (item_store(d, it, L, 3) < 0) {
        if (fresh)
            item_free(d, it);
        return push_fail(L, 1, "no memory", forcible);
    }
    it->expires = ttl ? now + ttl : 0;
    item_touch(d, it);
    return push_ok(L, forcible);
}

/* dict:set(key, value [, ttl]) → true, nil, forcible — value nil deletes;
 * nil, "no memory" for an item bigger than the dict can hold */
static int d_set(lua_State *L) { return dict_store(L, "dict:set", OP_SET, 0); }
/* dict:add(key, value [, ttl]) → like set, or false, "exists" */
static int d_add(lua_State *L) { return dict_store(L, "dict:add", OP_ADD, 0); }
/* dict:replace(key, value [, ttl]) → like set, or false, "not found" */
static int d_replace(lua_State *L) { return dict_store(L, "dict:replace", OP_REPLACE, 0); }
/* dict:safe_set(key, value [, ttl]) → like set, but nil, "no memory" where
 * set would evict a live item */
static int d_safe_set(lua_State *L) { return dict_store(L, "dict:safe_set", OP_SET, 1); }
/* dict:safe_add(key, value [, ttl]) → like add, but nil, "no memory" where
 * add would evict a live item */
static int d_safe_add(lua_State *L) { return dict_store(L, "dict:safe_add", OP_ADD, 1); }

/* dict:get(key) → value | nil (nil, err for a nil/empty/long key) */
static int d_get(lua_State *L)
{
    static const char fn[] = "dict:get";
    sh_dict *d = check_dict(L, fn);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fn, &klen, &err);
    if (!key) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    dict_item *it = item_find(d, key, klen, dict_now());
    if (!it) {
        lua_pushnil(L);
        return 1;
    }
    item_touch(d, it);
    item_push(L, it);
    return 1;
}

/* dict:incr(key, by [, init [, init_ttl]]) → new value, nil, forcible |
 * nil, "not found" (absent, no init) | nil, "not a number" — ngx semantics:
 * init (+ by) is stored when the key is absent, with init_ttl; an existing
 * item keeps its ttl. Integer + integer stays an integer (wrapping as Lua). */
static int d_incr(lua_State *L)
{
    static const char fn[] = "dict:incr";
    sh_dict *d = check_dict(L, fn);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fn, &klen, &err);
    if (lua_type(L, 3) != LUA_TNUMBER)
        return type_error(L, fn, 3, "number");
    int has_init = !lua_isnoneornil(L, 4);
    if (has_init && lua_type(L, 4) != LUA_TNUMBER)
        return type_error(L, fn, 4, "number");
    int64_t init_ttl = ttl_arg(L, 5, fn, 0);
    if (!lua_isnoneornil(L, 5) && !has_init)
        return arg_error(L, fn, 5, "init_ttl without init");
    if (!key)
        return push_fail(L, 1, err, 0);
    int64_t now = dict_now();
    sweep(d, now, DICT_SWEEP);
    dict_item *it = item_find(d, key, klen, now);
    int base = 4, forcible = 0;
    if (it) {
        if (it->type != V_INT && it->type != V_NUM)
            return push_fail(L, 1, "not a number", 0);
        item_push(L, it);
        base = lua_gettop(L);
    } else if (!has_init) {
        return push_fail(L, 1, "not found", 0);
    }
    /* new = base + by, with Lua's arithmetic (integers wrap, else floats) */
    lua_pushvalue(L, base);
    lua_pushvalue(L, 3);
    lua_arith(L, LUA_OPADD);
    int res = lua_gettop(L);
    if (!it) {
        if (make_room(d, NULL, item_size(klen, 0), now, 0, &forcible) != 0 ||
            !(it = item_new(d, key, klen)))
            return push_fail(L, 1, "no memory", forcible);
        it->expires = init_ttl ? now + init_ttl : 0;
    }
    item_store(d, it, L, res); /* a number: cannot fail, nor grow */
    item_touch(d, it);
    lua_pushnil(L);
    lua_pushboolean(L, forcible);
    return 3;
}

/* dict:delete(key) → true */
static int d_delete(lua_State *L)
{
    static const char fn[] = "dict:delete";
    sh_dict *d = check_dict(L, fn);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fn, &klen, &err);
    if (!key) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    dict_item *it = item_find(d, key, klen, dict_now());
    if (it)
        item_free(d, it);
    lua_pushboolean(L, 1);
    return 1;
}

/* dict:ttl(key) → seconds left (0: no expiry) | nil, "not found" */
static int d_ttl(lua_State *L)
{
    static const char fn[] = "dict:ttl";
    sh_dict *d = check_dict(L, fn);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fn, &klen, &err);
    if (!key) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    int64_t now = dict_now();
    dict_item *it = item_find(d, key, klen, now);
    if (!it) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    if (it->expires)
        lua_pushnumber(L, (lua_Number)(it->expires - now) / 1000.0);
    else
        lua_pushinteger(L, 0);
    return 1;
}

/* dict:expire(key, ttl) → true | nil, "not found"; ttl 0: never expires */
static int d_expire(lua_State *L)
{
    static const char fn[] = "dict:expire";
    sh_dict *d = check_dict(L, fn);
    size_t klen;
    const char *err;
    const char *key = dict_key(L, fn, &klen, &err);
    if (lua_isnoneornil(L, 3))
        return type_error(L, fn, 3, "number");
    int64_t ttl = ttl_arg(L, 3, fn, 0);
    if (!key) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    int64_t now = dict_now();
    dict_item *it = item_find(d, key, klen, now);
    if (!it) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    it->expires = ttl ? now + ttl : 0;
    lua_pushboolean(L, 1);
    return 1;
}

/* dict:flush_all() — every item goes (ngx marks them expired; same effect) */
static int d_flush_all(lua_State *L)
{
    sh_dict *d = check_dict(L, "dict:flush_all");
    while (d->tail)
        item_free(d, d->tail);
    return 0;
}

/* dict:flush_expired([max]) → how many expired items were freed (0: all) */
static int d_flush_expired(lua_State *L)
{
    static const char fn[] = "dict:flush_expired";
    sh_dict *d = check_dict(L, fn);
    lua_Integer max = opt_integer(L, 2, fn, 0);
    if (max < 0)
        return arg_error(L, fn, 2, "must not be negative");
    int64_t now = dict_now();
    lua_Integer freed = 0;
    dict_item *it = d->tail;
    while (it && (max == 0 || freed < max)) {
        dict_item *prev = it->prev;
        if (expired(it, now)) {
            item_free(d, it);
            freed++;
        }
        it = prev;
    }
    lua_pushinteger(L, freed);
    return 1;
}

/* dict:get_keys([max]) → the live keys, most recently used first; at most
 * max (default 1024, 0: all) */
static int d_get_keys(lua_State *L)
{
    static const char fn[] = "dict:get_keys";
    sh_dict *d = check_dict(L, fn);
    lua_Integer max = opt_integer(L, 2, fn, 1024);
    if (max < 0)
        return arg_error(L, fn, 2, "must not be negative");
    int64_t now = dict_now();
    lua_createtable(L, (int)(d->count < 1024 ? d->count : 1024), 0);
    lua_Integer n = 0;
    for (dict_item *it = d->head; it && (max == 0 || n < max); it = it->next) {
        if (expired(it, now))
            continue;
        lua_pushlstring(L, it->key, it->klen);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

/* dict:capacity() → the capacity in bytes (max_bytes, or shared_dict_max_bytes) */
static int d_capacity(lua_State *L)
{
    sh_dict *d = check_dict(L, "dict:capacity");
    lua_pushinteger(L, (lua_Integer)dict_cap(d));
    return 1;
}

/* dict:free_space() → bytes a write can still take without evicting: what the
 * capacity leaves, or less when the process total (shared_dict_total_bytes)
 * leaves less. An item costs its key, its value and DICT_ITEM_OVERHEAD. */
static int d_free_space(lua_State *L)
{
    sh_dict *d = check_dict(L, "dict:free_space");
    size_t cap = dict_cap(d);
    size_t in_dict = d->used < cap ? cap - d->used : 0;
    size_t in_total = g_total_used < g_total_max ? g_total_max - g_total_used : 0;
    lua_pushinteger(L, (lua_Integer)(in_dict < in_total ? in_dict : in_total));
    return 1;
}

static int d_tostring(lua_State *L)
{
    dict_ud *u = luaL_checkudata(L, 1, DICT_MT);
    if (u->epoch != g_epoch)
        lua_pushliteral(L, "shared dict (freed)");
    else
        lua_pushfstring(L, "shared dict \"%s\"", u->d->name);
    return 1;
}

static const luaL_Reg dict_methods[] = {
    {"get", d_get},
    {"set", d_set},
    {"add", d_add},
    {"replace", d_replace},
    {"safe_set", d_safe_set},
    {"safe_add", d_safe_add},
    {"incr", d_incr},
    {"delete", d_delete},
    {"ttl", d_ttl},
    {"expire", d_expire},
    {"flush_all", d_flush_all},
    {"flush_expired", d_flush_expired},
    {"get_keys", d_get_keys},
    {"capacity", d_capacity},
    {"free_space", d_free_space},
    {NULL, NULL},
};

/* ============================================================ JSON */

/* host.json.decode is json_decode.c's strict decoder (integral numbers below
 * 2^53 come back as integers). host.json.encode is lua-cjson 2.1.0's, which
 * writes numbers with "%.14g": an integer of 15+ digits would be written as
 * 1.2345678901235e+17. So before encoding, integers of 15+ digits are swapped
 * for marker strings that are replaced by their digits in the output. Nesting
 * is bounded (JSON_MAX_DEPTH) both ways; NaN, Infinity and hex are refused
 * both ways; a number that overflows a double is refused. */

#define JSON_MAX_DEPTH SH_JSON_MAX_DEPTH
#define JSON_MARK "\001sh-int:"             /* the marker string's prefix */
#define JSON_MARK_ENC "\"\\u0001sh-int:"    /* how cjson writes its start */
#define JSON_BIG ((lua_Integer)100000000000000) /* 1e14: %.14g is exact below */

static int json_big(lua_Integer i) { return i >= JSON_BIG || i <= -JSON_BIG; }

/* host.json.decode(s) → value | nil, err — strict RFC 8259, integers kept */
static int l_json_decode(lua_State *L)
{
    size_t n;
    const char *s = check_str(L, 1, "host.json.decode", &n);
    lua_Integer max = 0;
    if (!lua_isnoneornil(L, 2) && (!lua_isinteger(L, 2) || (max = lua_tointeger(L, 2)) < 0))
        return luaL_error(L, "host.json.decode: bad argument #2 (max_values: an integer >= 0 "
                             "expected, 0 for no limit)");
    lua_settop(L, 1);
    sh_budget_charge(n / SH_BUDGET_BYTES_PER_INSTRUCTION); /* one VM instruction for all this */
    char err[160];
    if (sh_json_decode_max(L, s, n, (size_t)max, err, sizeof err) == 0)
        return 1;
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* Does the value at idx hold an integer cjson would garble? → 1 yes, 0 no,
 * -1 deeper than JSON_MAX_DEPTH (a cycle, say: cjson then reports it). */
static int json_needs_fix(lua_State *L, int idx, int depth)
{
    if (lua_type(L, idx) == LUA_TNUMBER)
        return lua_isinteger(L, idx) && json_big(lua_tointeger(L, idx));
    if (lua_type(L, idx) != LUA_TTABLE)
        return 0;
    if (depth > JSON_MAX_DEPTH)
        return -1;
    luaL_checkstack(L, 4, "json nesting");
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int r = lua_isinteger(L, -2) && json_big(lua_tointeger(L, -2));
        if (!r)
            r = json_needs_fix(L, -1, depth + 1);
        if (r) {
            lua_pop(L, 2);
            return r;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static void json_push_mark(lua_State *L, lua_Integer i)
{
    lua_pushfstring(L, JSON_MARK "%I", (LUAI_UACINT)i);
}

static int has_mark(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return memmem(s, n, JSON_MARK, sizeof JSON_MARK - 1) != NULL;
}

/* Push a copy of the value at idx with big integers as marker strings (big
 * integer keys as their decimal strings). → 0, or -1 with an error message
 * pushed instead. */
static int json_copy(lua_State *L, int idx, int depth)
{
    luaL_checkstack(L, 6, "json nesting");
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx) && json_big(lua_tointeger(L, idx)))
            json_push_mark(L, lua_tointeger(L, idx));
        else
            lua_pushvalue(L, idx);
        return 0;
    case LUA_TSTRING:
        if (has_mark(L, idx)) {
            lua_pushliteral(L, "Cannot serialise string holding the encoder's reserved marker");
            return -1;
        }
        lua_pushvalue(L, idx);
        return 0;
    case LUA_TTABLE:
        break;
    default:
        lua_pushvalue(L, idx);
        return 0;
    }
    if (depth > JSON_MAX_DEPTH) {
        lua_pushfstring(L, "Cannot serialise, excessive nesting (%d)", depth);
        return -1;
    }
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* t key value */
        int k = lua_gettop(L) - 1;
        if (lua_type(L, k) == LUA_TSTRING && has_mark(L, k)) {
            lua_settop(L, t - 1);
            lua_pushliteral(L, "Cannot serialise string holding the encoder's reserved marker");
            return -1;
        }
        if (lua_isinteger(L, k) && json_big(lua_tointeger(L, k))) {
            lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, k));
            lua_pushvalue(L, -1);
            if (lua_rawget(L, idx) != LUA_TNIL) { /* the same JSON key twice: one was lost */
                lua_settop(L, t - 1);
                lua_pushliteral(L, "Cannot serialise table: an integer key and a string key "
                                   "are the same JSON key");
                return -1;
            }
            lua_pop(L, 1);
        } else {
            lua_pushvalue(L, k);
        }
        if (json_copy(L, k + 1, depth + 1) < 0) {
            lua_replace(L, t); /* keep the message */
            lua_settop(L, t);
            return -1;
        }
        lua_rawset(L, t);
        lua_pop(L, 1);
    }
    return 0;
}

/* Replace every "\u0001sh-int:DIGITS" (quotes included) by DIGITS. */
static void json_unmark(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    const size_t ml = sizeof JSON_MARK_ENC - 1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *p = s, *end = s + n;
    const char *m;
    while ((m = memmem(p, (size_t)(end - p), JSON_MARK_ENC, ml)) != NULL) {
        luaL_addlstring(&b, p, (size_t)(m - p));
        const char *d = m + ml;
        const char *q = memchr(d, '"', (size_t)(end - d));
        if (!q) /* cannot happen: cjson closes every string */
            q = end;
        luaL_addlstring(&b, d, (size_t)(q - d));
        p = q < end ? q + 1 : end;
    }
    luaL_addlstring(&b, p, (size_t)(end - p));
    luaL_pushresult(&b);
}

/* host.json.encode(v) → text | nil, err — cjson.safe.encode, with integers
 * written in full */
static int l_json_encode(lua_State *L)
{
    if (lua_gettop(L) < 1)
        return arg_error(L, "host.json.encode", 1, "value expected");
    lua_settop(L, 1);
    int fix = json_needs_fix(L, 1, 1) > 0;
    lua_pushvalue(L, lua_upvalueindex(1));
    if (fix) {
        if (json_copy(L, 1, 1) < 0) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
    } else {
        lua_pushvalue(L, 1);
    }
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2))
        return 2;
    lua_pop(L, 1);
    if (fix)
        json_unmark(L, -1);
    return 1;
}

/* A private cjson.safe instance: its settings are not the script's. It is made as
 * `require "cjson.safe"` makes one (in a generation, guarded: lua_cjson.h). */
static void json_open(lua_State *L, int module)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    if (lua_getfield(L, -1, "cjson.safe") != LUA_TFUNCTION) {
        lua_pop(L, 1);
        lua_pushcfunction(L, luaopen_cjson_safe);
    }
    lua_remove(L, -2);
    lua_call(L, 0, 1);
    int cj = lua_gettop(L);
    static const struct {
        const char *fn;
        int arg;
    } settings[] = {
        {"encode_invalid_numbers", 0},
        {"encode_max_depth", JSON_MAX_DEPTH},
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        lua_getfield(L, cj, settings[i].fn);
        if (settings[i].arg)
            lua_pushinteger(L, settings[i].arg);
        else
            lua_pushboolean(L, 0);
        lua_call(L, 1, 0);
    }
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_json_decode);
    lua_setfield(L, -2, "decode");
    lua_getfield(L, cj, "encode");
    lua_pushcclosure(L, l_json_encode, 1);
    lua_setfield(L, -2, "encode");
    lua_getfield(L, cj, "null");
    lua_setfield(L, -2, "null");
    lua_setfield(L, module, "json");
    lua_pop(L, 1);
}

/* ============================================================ registration */

static const luaL_Reg lib_funcs[] = {
    {"encode_base64", l_encode_base64},
    {"decode_base64", l_decode_base64},
    {"encode_base64url", l_encode_base64url},
    {"decode_base64url", l_decode_base64url},
    {"sha256", l_sha256},
    {"sha256_hex", l_sha256_hex},
    {"hmac_sha256", l_hmac_sha256},
    {"to_hex", l_to_hex},
    {"from_hex", l_from_hex},
    {"escape_uri", l_escape_uri},
    {"unescape_uri", l_unescape_uri},
    {"decode_args", l_decode_args},
    {"ip_in", l_ip_in},
    {"table_new", l_table_new},
    {"shared", l_shared},
    {NULL, NULL},
};

void sh_lib_register(lua_State *L, int module)
{
    module = lua_absindex(L, module);
    int top = lua_gettop(L);
    if (luaL_newmetatable(L, DICT_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, dict_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, d_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_pushvalue(L, module);
    luaL_setfuncs(L, lib_funcs, 0);
    lua_pop(L, 1);
    json_open(L, module);
    lua_settop(L, top);
}
