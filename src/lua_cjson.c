/* lua_cjson.c — lua-cjson, guarded for a generation's policies; see lua_cjson.h. */
#include "lua_cjson.h"

#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua-cjson.h>

#include "lua_budget.h"
#include "lua_host.h"

int luaopen_cjson_safe(lua_State *L); /* in liblua5.4-cjson, not in its header */

#define CJSON_GROWTH 48      /* Lua bytes a decode may make per byte of text (nested
                                arrays make 36 at the depth limit) */
#define CJSON_SLACK 65536    /* and beyond them: the stack, small tables' rounding */
#define CJSON_MAX_DEPTH 1000 /* lua-cjson's default; deeper recursion risks the C stack */
#define CJSON_NUMBER_MAX 32  /* the longest number lua-cjson writes ("%.14g" and sign) */

#define BOUND_OVER SIZE_MAX        /* sh_json_encode_bound: more than the limit */
#define BOUND_DEEP (SIZE_MAX - 1)  /* deeper than CJSON_MAX_DEPTH (a cycle, say) */

/* ------------------------------------------------------------ the bound of an encode */

/* Bytes lua-cjson writes for the string s: escapes of 2 and 6 bytes, and the quotes. */
static size_t escaped_len(const char *s, size_t n)
{
    size_t out = n + 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            out += 5; /* \b \f \n \r \t are 2, the others \u00XX: count 6 */
        else if (c == '"' || c == '\\' || c == '/')
            out += 1;
    }
    return out;
}

/* Add to *total what lua-cjson may write for the value at idx (an upper bound: an
 * array's holes as "null", and its keys as an object's too); raw reads only, as
 * lua-cjson. → 0, BOUND_OVER once *total passes limit, BOUND_DEEP past the depth. */
static size_t bound_add(lua_State *L, int idx, int depth, size_t *total, size_t limit);

static int add(size_t *total, size_t n, size_t limit)
{
    *total = n > limit - *total ? limit + 1 : *total + n;
    return *total > limit;
}

static size_t bound_string(lua_State *L, int idx, size_t *total, size_t limit)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    size_t left = limit - *total;
    /* 6 bytes a byte at most: the exact count only when that could matter */
    if (n <= (left - (left < 2 ? left : 2)) / 6)
        return add(total, 6 * n + 2, limit) ? BOUND_OVER : 0;
    return add(total, escaped_len(s, n), limit) ? BOUND_OVER : 0;
}

static size_t bound_table(lua_State *L, int idx, int depth, size_t *total, size_t limit)
{
    if (depth > CJSON_MAX_DEPTH + 1) /* lua-cjson, at most CJSON_MAX_DEPTH, fails first */
        return BOUND_DEEP;
    if (!lua_checkstack(L, 3))
        return BOUND_DEEP; /* lua-cjson would find it too deep first */
    lua_Integer max_index = 0;
    if (add(total, 2, limit))
        return BOUND_OVER;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t r;
        if (lua_type(L, -2) == LUA_TSTRING) {
            r = bound_string(L, -2, total, limit);
        } else {
            if (lua_isinteger(L, -2) && lua_tointeger(L, -2) > max_index)
                max_index = lua_tointeger(L, -2);
            r = add(total, CJSON_NUMBER_MAX + 2, limit) ? BOUND_OVER : 0;
        }
        /* the colon and the comma */
        if (r == 0 && add(total, 2, limit))
            r = BOUND_OVER;
        if (r == 0)
            r = bound_add(L, lua_gettop(L), depth, total, limit);
        if (r) {
            lua_pop(L, 2);
            return r;
        }
        lua_pop(L, 1);
    }
    /* as an array: a "null," for every hole up to the largest index */
    if ((uint64_t)max_index > (uint64_t)(limit - *total) / 5)
        return (*total = limit + 1), BOUND_OVER;
    return add(total, (size_t)max_index * 5, limit) ? BOUND_OVER : 0;
}

static size_t bound_add(lua_State *L, int idx, int depth, size_t *total, size_t limit)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        return bound_string(L, idx, total, limit);
    case LUA_TTABLE:
        return bound_table(L, idx, depth + 1, total, limit);
    case LUA_TNUMBER:
        return add(total, CJSON_NUMBER_MAX, limit) ? BOUND_OVER : 0;
    default: /* true, false, null; others lua-cjson refuses */
        return add(total, 5, limit) ? BOUND_OVER : 0;
    }
}

/* An upper bound of the length of lua-cjson's text of the value at idx, BOUND_OVER when
 * more than limit, BOUND_DEEP when deeper than CJSON_MAX_DEPTH (lua-cjson then fails on
 * its own depth limit, having written no more than what was counted before it). */
static size_t encode_bound(lua_State *L, int idx, size_t limit)
{
    size_t total = 0;
    if (limit >= BOUND_DEEP)
        limit = BOUND_DEEP - 1;
    size_t r = bound_add(L, lua_absindex(L, idx), 0, &total, limit);
    return r ? r : total;
}

/* ------------------------------------------------------------ the guard */

/* Bytes the running code may still allocate; SIZE_MAX when no cap applies. */
static size_t room(const sh_gen *g)
{
    if (!g->capped || !g->mem_max)
        return SIZE_MAX;
    return g->mem < g->mem_max ? g->mem_max - g->mem : 0;
}

/* A full collection, charged to the run by its time. */
static void collect(lua_State *L)
{
    uint64_t t0 = uv_hrtime();
    lua_gc(L, LUA_GCCOLLECT);
    sh_budget_charge((uv_hrtime() - t0) / SH_BUDGET_NS_PER_INSTRUCTION);
}

static int refuse(lua_State *L, int safe)
{
    if (!safe)
        return luaL_error(L, "not enough memory");
    lua_pushnil(L);
    lua_pushliteral(L, "not enough memory");
    return 2;
}

/* Call lua-cjson's function (upvalue 2) on the arguments with the cap lifted, then put
 * it back; its error goes on. No policy Lua can run meanwhile: a collector step there
 * runs only the host's C finalizers (a policy's __gc is refused by setmetatable, and the
 * metatables that have one are out of reach). The collector is not stopped: restarting
 * it clears its debt, a step at the next allocation (+40 % instructions per seed-flow job,
 * the default policy encoding once per job). */
static int call_uncapped(lua_State *L, sh_gen *g)
{
    int capped = sh_gen_uncap(g);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sh_gen_recap(g, capped);
    if (st != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

#define GEN(L) ((sh_gen *)lua_touserdata((L), lua_upvalueindex(1)))
#define SAFE(L) lua_toboolean((L), lua_upvalueindex(3))

/* decode(text). Upvalues: 1 the generation, 2 lua-cjson's decode, 3 true for cjson.safe */
static int guarded_decode(lua_State *L)
{
    sh_gen *g = GEN(L);
    int safe = SAFE(L);
    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    size_t len = 0;
    if (!safe)
        luaL_checklstring(L, 1, &len); /* lua-cjson's own check, named after this function */
    else if (lua_type(L, 1) == LUA_TSTRING)
        lua_tolstring(L, 1, &len);
    sh_budget_charge(len / SH_BUDGET_BYTES_PER_INSTRUCTION);
    size_t need = len > (SIZE_MAX - CJSON_SLACK) / CJSON_GROWTH ? SIZE_MAX
                                                                 : len * CJSON_GROWTH + CJSON_SLACK;
    if (room(g) < need) {
        collect(L);
        if (room(g) < need)
            return refuse(L, safe);
    }
    return call_uncapped(L, g);
}

/* encode(value). Upvalues as guarded_decode's. */
static int guarded_encode(lua_State *L)
{
    sh_gen *g = GEN(L);
    luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
    size_t left = room(g);
    if (left != SIZE_MAX) {
        /* the text is a Lua string at the end: it must fit, with some room to spare */
        size_t b = encode_bound(L, 1, left > CJSON_SLACK ? left - CJSON_SLACK : 0);
        if (b == BOUND_OVER) {
            collect(L);
            left = room(g);
            b = encode_bound(L, 1, left > CJSON_SLACK ? left - CJSON_SLACK : 0);
            if (b == BOUND_OVER)
                return refuse(L, SAFE(L));
        }
        if (b != BOUND_DEEP)
            sh_budget_charge(b / SH_BUDGET_BYTES_PER_INSTRUCTION);
    }
    return call_uncapped(L, g);
}

/* decode_max_depth / encode_max_depth ([depth]): at most CJSON_MAX_DEPTH. Upvalue 2:
 * lua-cjson's setter. */
static int guarded_depth(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TNUMBER && lua_tonumber(L, 1) > CJSON_MAX_DEPTH)
        return luaL_argerror(L, 1, "at most 1000 here (deeper nesting would overflow the C "
                                   "stack of lua-cjson's recursion)");
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* encode_keep_buffer([keep]) → false: the buffer is never kept (the output is the same).
 * Upvalue 2: lua-cjson's setter. */
static int no_keep_buffer(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushboolean(L, 0);
    lua_call(L, 1, 1);
    return 1;
}

/* Replace the field `name` of the instance at idx by fn with upvalues (g, the original,
 * safe). */
static void wrap(lua_State *L, int idx, sh_gen *g, const char *name, lua_CFunction fn, int safe)
{
    lua_pushlightuserdata(L, g);
    lua_getfield(L, idx, name);
    lua_pushboolean(L, safe);
    lua_pushcclosure(L, fn, 3);
    lua_setfield(L, idx, name);
}

static int guarded_new(lua_State *L);

/* Guard the instance at the top (a fresh one: lua-cjson's luaopen_* and new() make one). */
static void guard(lua_State *L, sh_gen *g, int safe)
{
    int t = lua_gettop(L);
    wrap(L, t, g, "decode", guarded_decode, safe);
    wrap(L, t, g, "encode", guarded_encode, safe);
    wrap(L, t, g, "decode_max_depth", guarded_depth, safe);
    wrap(L, t, g, "encode_max_depth", guarded_depth, safe);
    lua_getfield(L, t, "encode_keep_buffer");
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    wrap(L, t, g, "encode_keep_buffer", no_keep_buffer, safe);
    wrap(L, t, g, "new", guarded_new, safe);
}

/* new() of a guarded instance: a guarded instance. Upvalues as guarded_decode's. */
static int guarded_new(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1);
    guard(L, GEN(L), SAFE(L));
    return 1;
}

/* require "cjson" / "cjson.safe". Upvalue 1: the generation. */
static int open_as(lua_State *L, lua_CFunction open, int safe)
{
    lua_pushcfunction(L, open);
    lua_call(L, 0, 1);
    guard(L, lua_touserdata(L, lua_upvalueindex(1)), safe);
    return 1;
}
static int open_cjson(lua_State *L) { return open_as(L, luaopen_cjson, 0); }
static int open_cjson_safe(lua_State *L) { return open_as(L, luaopen_cjson_safe, 1); }

void sh_cjson_preload(lua_State *L, sh_gen *g)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushlightuserdata(L, g);
    lua_pushcclosure(L, open_cjson, 1);
    lua_setfield(L, -2, "cjson");
    lua_pushlightuserdata(L, g);
    lua_pushcclosure(L, open_cjson_safe, 1);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
}
