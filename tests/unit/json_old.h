/* json_old.h — the oracle of tests/unit/test_json_decode.c and
 * tests/fuzz/fuzz_json.c: the path host.json.decode took before
 * src/json_decode.c (lua-cjson's cjson.safe.decode, then integral floats below
 * 2^53 → integers), and a deep comparison of decoded values. Header-only and
 * static, like unit.h. */
#ifndef SH_JSON_OLD_H
#define SH_JSON_OLD_H

#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "json_decode.h"

int luaopen_cjson_safe(lua_State *L); /* in liblua5.4-cjson, not in its header */

/* Are the values at a and b the same JSON-decoded value: same types, same
 * number subtype and value, same strings, tables with the same keys and
 * values, neither with a metatable? */
static int same(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_type(L, a) != lua_type(L, b))
        return 0;
    switch (lua_type(L, a)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, a) != lua_isinteger(L, b))
            return 0;
        if (lua_isinteger(L, a))
            return lua_tointeger(L, a) == lua_tointeger(L, b);
        return lua_tonumber(L, a) == lua_tonumber(L, b) &&
               signbit(lua_tonumber(L, a)) == signbit(lua_tonumber(L, b));
    case LUA_TSTRING: {
        size_t na, nb;
        const char *sa = lua_tolstring(L, a, &na), *sb = lua_tolstring(L, b, &nb);
        return na == nb && memcmp(sa, sb, na) == 0;
    }
    case LUA_TBOOLEAN:
        return lua_toboolean(L, a) == lua_toboolean(L, b);
    case LUA_TLIGHTUSERDATA:
        return lua_touserdata(L, a) == lua_touserdata(L, b);
    case LUA_TTABLE:
        break;
    default:
        return 0;
    }
    luaL_checkstack(L, 6, "same");
    if (lua_getmetatable(L, a) || lua_getmetatable(L, b)) {
        lua_pop(L, 1);
        return 0;
    }
    size_t na = 0, nb = 0;
    lua_pushnil(L);
    while (lua_next(L, a)) { /* k v */
        na++;
        lua_pushvalue(L, -2);
        lua_rawget(L, b); /* k v v' */
        int ok = same(L, -2, -1);
        lua_pop(L, 2);
        if (!ok) {
            lua_pop(L, 1);
            return 0;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        nb++;
        lua_pop(L, 1);
    }
    return na == nb;
}

/* The old host.json.decode's fix-up, as it was: integral floats below 2^53 →
 * integers, in place. → 0, or -1 when a number is not finite. */
static int old_fix(lua_State *L, int idx)
{
    luaL_checkstack(L, 4, "json nesting");
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number v = lua_tonumber(L, -1);
            if (!isfinite(v)) {
                lua_pop(L, 2);
                return -1;
            }
            if (v == floor(v) && fabs(v) < 9007199254740992.0) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, (lua_Integer)v);
                lua_rawset(L, idx);
            }
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            if (old_fix(L, -1) < 0) {
                lua_pop(L, 2);
                return -1;
            }
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* The old path: cjson.safe.decode (the registry's "old_decode") + old_fix.
 * → 0 with the value pushed, -1 with nothing pushed. */
static int old_decode(lua_State *L, const char *s, size_t n)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "old_decode");
    lua_pushlstring(L, s, n);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) {
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
        lua_Number v = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (!isfinite(v))
            return -1;
        if (v == floor(v) && fabs(v) < 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)v);
        else
            lua_pushnumber(L, v);
    } else if (lua_type(L, -1) == LUA_TTABLE && old_fix(L, -1) < 0) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* A Lua state with the old host.json.decode's cjson.safe instance (NaN,
 * Infinity, hex refused; depth 128) in the registry as "old_decode", and
 * cjson.null as the global `null`. */
static lua_State *json_old_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_invalid_numbers"); /* the old host.json settings */
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode_max_depth");
    lua_pushinteger(L, SH_JSON_MAX_DEPTH);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode");
    lua_setfield(L, LUA_REGISTRYINDEX, "old_decode");
    lua_getfield(L, -1, "null");
    lua_setglobal(L, "null");
    lua_pop(L, 1);
    return L;
}

#endif
