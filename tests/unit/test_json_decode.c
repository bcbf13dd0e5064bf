/* test_json_decode.c — the strict JSON decoder (src/json_decode.c).
 *
 * 1. A table of valid texts with the Lua value each must give (types, the
 *    integer/float subtype, values, keys) and of invalid texts with the
 *    message each must give: every grammar rule of json_decode.h; and the
 *    decoder's fast paths against their fall-backs: kept keys and kept
 *    values (repeated, differing in one byte, empty, escaped, long), keys
 *    past the kept ones, duplicate keys (kept, escaped, not kept),
 *    max_values reached inside an object.
 * 2. Long arrays and objects (flushed into their tables in chunks), deep
 *    nesting with many members per level (the stack budget), duplicate keys
 *    across a chunk boundary.
 * 3. Differential: thousands of random valid documents (seeded PRNG: nested
 *    objects and arrays, strings with every escape, surrogate pairs, raw
 *    UTF-8 and raw invalid bytes, numbers of every shape, arrays of records
 *    whose keys and values repeat) decoded by the new
 *    decoder and by the old path of host.json.decode (lua-cjson's
 *    cjson.safe.decode, then integral floats below 2^53 → integers):
 *    exactly the same value.
 * 4. Mutations of those documents (bytes flipped, inserted, deleted, cut):
 *    each decodes (one value pushed, and then cjson's old path agrees: the
 *    new grammar is a subset of cjson's) or fails (nothing pushed, a one-line
 *    message). Under ASan this is the fuzz-style run: no crash, no leak.
 * 5. Lua memory errors: an allocator failing at the Nth allocation, for
 *    every N, raises LUA_ERRMEM out of the decoder (never nil, err) and
 *    leaks nothing; the state stays usable.
 * 6. A locale whose decimal point is ',' (built with localedef when none is
 *    installed) changes no number.
 * 7. A string refused after its escapes outgrew luaL_Buffer's first block
 *    (its to-be-closed box on the stack), at every free stack room a
 *    coroutine's caller can leave: the stack is as it was. */
#define _GNU_SOURCE
#include "unit.h"
#include "json_decode.h"
#include "json_old.h"

#include <ftw.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

/* same(), old_decode() and json_old_state(): the oracle (json_old.h) */

/* Push the value of the Lua expression src. */
static void push_expr(lua_State *L, const char *src)
{
    lua_pushfstring(L, "return %s", src);
    if (luaL_loadstring(L, lua_tostring(L, -1)) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        printf("bad expectation %s: %s\n", src, lua_tostring(L, -1));
        exit(2);
    }
    lua_remove(L, -2);
}

/* ------------------------------------------------------------ 1. tables */

static const struct {
    const char *json;
    const char *lua; /* the expected value, a Lua expression (null: cjson.null) */
} valid[] = {
    {"7", "7"},
    {"7.0", "7"},
    {"7e0", "7"},
    {"7E+0", "7"},
    {"-0", "0"},
    {"-0.0", "0"},
    {"0", "0"},
    {"1e2", "100"},
    {"1E2", "100"},
    {"1e+2", "100"},
    {"2.5e1", "25"},
    {"12345678.9e-1", "1234567.89"},
    {"-1.5e-3", "-1.5e-3"},
    {"0.1", "0.1"},
    {"0.5", "0.5"},
    {"-12.75", "-12.75"},
    {"123456789012345", "123456789012345"},
    {"-123456789012345", "-123456789012345"},
    {"1234567890123456", "1234567890123456"},
    {"9007199254740991", "9007199254740991"},
    {"-9007199254740991", "-9007199254740991"},
    {"9007199254740992", "2.0^53"},
    {"-9007199254740992", "-2.0^53"},
    {"9007199254740993", "2.0^53"}, /* the nearest double, a float */
    {"18014398509481984", "2.0^54"},
    {"123456789012345678", "123456789012345678.0"},
    {"1e15", "1000000000000000"},
    {"1e16", "1e16"}, /* above 2^53: a float */
    {"1e23", "1e23"},
    {"1e22", "1e22"},
    {"1e300", "1e300"},
    {"-1e300", "-1e300"},
    {"1.7976931348623157e308", "1.7976931348623157e308"},
    {"2.2250738585072014e-308", "2.2250738585072014e-308"},
    {"4.9e-324", "4.9e-324"},
    {"1e-400", "0"},  /* underflow: 0.0, then an integer (as before) */
    {"-1e-400", "0"},
    {"0.1000000000000000055511151231257827021181583404541015625", "0.1"},
    {"123456789012345.5", "123456789012345.5"},
    {"0.000000000000000000000000000001", "1e-30"},
    {"1.00000000000000011102230246251565404236316680908203125", "1"}, /* a tie: to even */
    {"1.00000000000000011102230246251565404236316680908203126", "1.0000000000000002"},
    {"100000000000000000000000000000000000000000000000000e-50", "1"},
    {"0e999999999999", "0"},
    {"1e-999999999999", "0"},
    {"true", "true"},
    {"false", "false"},
    {"null", "null"},
    {"\"\"", "''"},
    {"\"x\"", "'x'"},
    {"\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", "'a\"b\\\\c/d\\b\\f\\n\\r\\t'"},
    {"\"\\u00e9\"", "'\\195\\169'"},
    {"\"\\u20AC\\u20ac\"", "'\\u{20AC}\\u{20AC}'"},
    {"\"\\u0041\\u007f\\u0080\\u07ff\\u0800\\uffff\"", "'A\\127\\u{80}\\u{7FF}\\u{800}\\u{FFFF}'"},
    {"\"\\ud83d\\ude00\"", "'\\240\\159\\152\\128'"},
    {"\"\\uD800\\uDC00\\uDBFF\\uDFFF\"", "'\\u{10000}\\u{10FFFF}'"},
    {"\"\\u0000\"", "'\\0'"},
    {"\"é\"", "'é'"},
    {"\"\xff\xfe\x80\"", "'\\255\\254\\128'"}, /* raw invalid UTF-8 passes */
    {"\"\x7f\"", "'\\127'"},
    {"[]", "{}"},
    {"{}", "{}"},
    {" \t\r\n[ 1 , 2 ]\r\n\t ", "{1, 2}"},
    {"[1,2.0,-3,1e2,-0]", "{1, 2, -3, 100, 0}"},
    {"[null,null]", "{null, null}"},
    {"[[],{}]", "{{}, {}}"},
    {"{\"a\":1,\"a\":2}", "{a = 2}"},
    {"{\"a\":1,\"b\":{\"a\":3},\"a\":[4]}", "{a = {4}, b = {a = 3}}"},
    {"{\"\":1}", "{[''] = 1}"},
    {"{\"k\\u0000\":1,\"k\":2}", "{['k\\0'] = 1, k = 2}"},
    {"{\"1\":1}", "{['1'] = 1}"},
    {"{ \"id\" : \"3\" , \"status\" : \"done\" }", "{id = '3', status = 'done'}"},
    {"[{\"id\":7},{\"id\":7.0},{\"id\":\"7\"}]", "{{id = 7}, {id = 7}, {id = '7'}}"},
    {"{\"exp\":1795748474,\"f\":1.5,\"n\":null}", "{exp = 1795748474, f = 1.5, n = null}"},
    {"[[[[7]]]]", "{{{{7}}}}"},
    /* kept keys (the first 8 distinct ones) and the last string value of each: the same
     * value again, values differing in their first byte, their last, their length, an
     * empty one, one spelled with an escape, one that is no string */
    {"[{\"id\":\"a\",\"s\":\"x\"},{\"id\":\"b\",\"s\":\"x\"},{\"s\":\"x\",\"id\":\"b\"}]",
     "{{id = 'a', s = 'x'}, {id = 'b', s = 'x'}, {s = 'x', id = 'b'}}"},
    {"[{\"v\":\"abc\"},{\"v\":\"xbc\"},{\"v\":\"abx\"},{\"v\":\"ab\"},{\"v\":\"\"},{\"v\":\"\"},"
     "{\"v\":\"a\\u0062\"},{\"v\":\"ab\"},{\"v\":1},{\"v\":\"1\"},{\"v\":\"abc\"}]",
     "{{v = 'abc'}, {v = 'xbc'}, {v = 'abx'}, {v = 'ab'}, {v = ''}, {v = ''}, {v = 'ab'}, "
     "{v = 'ab'}, {v = 1}, {v = '1'}, {v = 'abc'}}"},
    {"[{\"a\":\"x\",\"b\":\"x\"},{\"b\":\"y\",\"a\":\"x\"}]", "{{a = 'x', b = 'x'}, {b = 'y', a = 'x'}}"},
    /* duplicates: of a kept key, of a kept key spelled with an escape (either first), of
     * a key past the 8 kept ones, of a key too long to keep (41 bytes) */
    {"{\"id\":1,\"s\":2,\"id\":3}", "{id = 3, s = 2}"},
    {"{\"id\":1,\"i\\u0064\":2}", "{id = 2}"},
    {"{\"i\\u0064\":1,\"id\":2}", "{id = 2}"},
    {"{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,"
     "\"k10\":10,\"k9\":\"9b\",\"k1\":\"1b\"}",
     "{k1 = '1b', k2 = 2, k3 = 3, k4 = 4, k5 = 5, k6 = 6, k7 = 7, k8 = 8, k9 = '9b', k10 = 10}"},
    {"{\"01234567890123456789012345678901234567890\":1,\"a\":2,"
     "\"01234567890123456789012345678901234567890\":3}",
     "{['01234567890123456789012345678901234567890'] = 3, a = 2}"},
    /* nested arrays under kept keys, long string values (not interned by Lua) again */
    {"{\"a\":[[1,2],[3]],\"b\":[[],[[4]]],\"c\":{\"a\":[[5]]}}",
     "{a = {{1, 2}, {3}}, b = {{}, {{4}}}, c = {a = {{5}}}}"},
    {"[{\"t\":\"0123456789012345678901234567890123456789xx\"},"
     "{\"t\":\"0123456789012345678901234567890123456789xx\"},"
     "{\"t\":\"0123456789012345678901234567890123456789xy\"}]",
     "{{t = ('0123456789'):rep(4) .. 'xx'}, {t = ('0123456789'):rep(4) .. 'xx'}, "
     "{t = ('0123456789'):rep(4) .. 'xy'}}"},
};

static const struct {
    const char *json;
    size_t len; /* 0: strlen */
    const char *err;
} invalid[] = {
    {"", 0, "Expected value but found end of input at character 1"},
    /* positions count bytes, as lua-cjson's did: "é" and "中" are 2 and 3 */
    {"[\"\xc3\xa9\xe4\xb8\xad\",x]", 0, "Expected value but found invalid token at character 10"},
    {" ", 0, "Expected value but found end of input at character 2"},
    {"01", 0, "Expected value but found invalid number at character 1"},
    {"-01", 0, "Expected value but found invalid number at character 1"},
    {"[00]", 0, "Expected value but found invalid number at character 2"},
    {"1.", 0, "Expected value but found invalid number at character 1"},
    {"[1.]", 0, "Expected value but found invalid number at character 2"},
    {"1.e5", 0, "Expected value but found invalid number at character 1"},
    {".5", 0, "Expected value but found invalid token at character 1"},
    {"-.5", 0, "Expected value but found invalid number at character 1"},
    {"+1", 0, "Expected value but found invalid token at character 1"},
    {"-", 0, "Expected value but found invalid number at character 1"},
    {"[-]", 0, "Expected value but found invalid number at character 2"},
    {"-a", 0, "Expected value but found invalid number at character 1"},
    {"1e", 0, "Expected value but found invalid number at character 1"},
    {"1e+", 0, "Expected value but found invalid number at character 1"},
    {"1E-x", 0, "Expected value but found invalid number at character 1"},
    {"0x10", 0, "Expected the end but found invalid token at character 2"},
    {"[0x10]", 0, "Expected comma or array end but found invalid token at character 3"},
    {"NaN", 0, "Expected value but found invalid token at character 1"},
    {"[NaN]", 0, "Expected value but found invalid token at character 2"},
    {"nan", 0, "Expected value but found invalid token at character 1"},
    {"Infinity", 0, "Expected value but found invalid token at character 1"},
    {"-Infinity", 0, "Expected value but found invalid number at character 1"},
    {"inf", 0, "Expected value but found invalid token at character 1"},
    {"1e400", 0, "number out of range"},
    {"[1e400]", 0, "number out of range"},
    {"-1e400", 0, "number out of range"},
    {"1.7976931348623159e308", 0, "number out of range"},
    {"[1,]", 0, "Expected value but found ']' at character 4"},
    {"[,1]", 0, "Expected value but found ',' at character 2"},
    {"{\"a\":1,}", 0, "Expected object key string but found '}' at character 8"},
    {"{,}", 0, "Expected object key string but found ',' at character 2"},
    {"{\"a\" 1}", 0, "Expected colon but found number at character 6"},
    {"{\"a\":}", 0, "Expected value but found '}' at character 6"},
    {"{'a':1}", 0, "Expected object key string but found invalid token at character 2"},
    {"{a:1}", 0, "Expected object key string but found invalid token at character 2"},
    {"{1:2}", 0, "Expected object key string but found number at character 2"},
    {"{\"a\":1 \"b\":2}", 0, "Expected comma or object end but found string at character 8"},
    {"[1 2]", 0, "Expected comma or array end but found number at character 4"},
    {"[}", 0, "Expected value but found '}' at character 2"},
    {"{]", 0, "Expected object key string but found ']' at character 2"},
    {"[1] 2", 0, "Expected the end but found number at character 5"},
    {"true false", 0, "Expected the end but found false at character 6"},
    {"{} {}", 0, "Expected the end but found '{' at character 4"},
    {"[", 0, "Expected value but found end of input at character 2"},
    {"[1", 0, "Expected comma or array end but found end of input at character 3"},
    {"[1,2", 0, "Expected comma or array end but found end of input at character 5"},
    {"{", 0, "Expected object key string but found end of input at character 2"},
    {"{\"a\"", 0, "Expected colon but found end of input at character 5"},
    {"{\"a\":", 0, "Expected value but found end of input at character 6"},
    {"{\"a\":1", 0, "Expected comma or object end but found end of input at character 7"},
    {"/* c */ 1", 0, "Expected value but found invalid token at character 1"},
    {"1 // c", 0, "Expected the end but found invalid token at character 3"},
    {"# c\n1", 0, "Expected value but found invalid token at character 1"},
    {"tru", 0, "Expected value but found invalid token at character 1"},
    {"nul", 0, "Expected value but found invalid token at character 1"},
    {"True", 0, "Expected value but found invalid token at character 1"},
    {"falsey", 0, "Expected the end but found invalid token at character 6"},
    {"nulll", 0, "Expected the end but found invalid token at character 5"},
    {"\v1", 0, "Expected value but found invalid token at character 1"},
    {"\f1", 0, "Expected value but found invalid token at character 1"},
    {"\xc2\xa0" "1", 0, "Expected value but found invalid token at character 1"},
    {"\"\\x\"", 0, "Expected value but found invalid escape code at character 2"},
    {"\"ab\\'\"", 0, "Expected value but found invalid escape code at character 4"},
    {"\"\\U0041\"", 0, "Expected value but found invalid escape code at character 2"},
    {"\"\\ud800\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\udc00x\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\ud800\\u0041\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\ud800\\ud800\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\ud800\\n\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\ud800", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\u12\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\u12g4\"", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\u", 0, "Expected value but found invalid unicode escape code at character 2"},
    {"\"\\", 0, "Expected value but found unexpected end of string at character 3"},
    {"\"abc", 0, "Expected value but found unexpected end of string at character 5"},
    {"\"a\\nb", 0, "Expected value but found unexpected end of string at character 6"},
    {"\"a\x01" "b\"", 0, "Expected value but found control character in string at character 3"},
    {"\"a\nb\"", 0, "Expected value but found control character in string at character 3"},
    {"\"a\tb\"", 0, "Expected value but found control character in string at character 3"},
    {"\"\x1f\"", 0, "Expected value but found control character in string at character 2"},
    {"{\"a\x01\":1}", 0, "Expected object key string but found control character in string at character 4"},
    {"{\"\\q\":1}", 0, "Expected object key string but found invalid escape code at character 3"},
    {"\"a\0b\"", 5, "Expected value but found control character in string at character 3"},
    {"\0", 1, "Expected value but found NUL byte at character 1"},
    {"[1]\0", 4, "Expected the end but found NUL byte at character 4"},
    {"[\0]", 3, "Expected value but found NUL byte at character 2"},
    {"1\0", 2, "Expected the end but found NUL byte at character 2"},
    {"{\"a\":1}\0 ", 9, "Expected the end but found NUL byte at character 8"},
};

static void test_tables(lua_State *L)
{
    char err[200];
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        int top = lua_gettop(L);
        int r = sh_json_decode(L, valid[i].json, strlen(valid[i].json), err, sizeof err);
        CHECKF(r == 0, "%s: %s", valid[i].json, err);
        if (r != 0)
            continue;
        CHECK_INT(lua_gettop(L), top + 1);
        push_expr(L, valid[i].lua);
        CHECKF(same(L, -2, -1), "%s: got %s %s, want %s", valid[i].json,
               luaL_typename(L, -2), luaL_tolstring(L, -2, NULL), valid[i].lua);
        lua_settop(L, top);
        /* and the old path agrees, for what cjson reads */
        if (old_decode(L, valid[i].json, strlen(valid[i].json)) == 0) {
            push_expr(L, valid[i].lua);
            CHECKF(same(L, -2, -1), "old path on %s differs from %s", valid[i].json, valid[i].lua);
            lua_settop(L, top);
        }
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        int top = lua_gettop(L);
        size_t n = invalid[i].len ? invalid[i].len : strlen(invalid[i].json);
        strcpy(err, "untouched");
        int r = sh_json_decode(L, invalid[i].json, n, err, sizeof err);
        CHECKF(r == -1, "%s: decoded", invalid[i].json);
        CHECK_INT(lua_gettop(L), top);
        CHECKF(strcmp(err, invalid[i].err) == 0, "%s: got \"%s\", want \"%s\"", invalid[i].json, err,
               invalid[i].err);
        lua_settop(L, top);
    }

    /* null is cjson.null, the NULL lightuserdata */
    CHECK_INT(sh_json_decode(L, "null", 4, err, sizeof err), 0);
    CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
    lua_getglobal(L, "null");
    CHECK(lua_rawequal(L, -1, -2));
    lua_pop(L, 2);

    /* a tiny message buffer: cut, still NUL-terminated; none at all: fine */
    char small[8];
    CHECK_INT(sh_json_decode(L, "[1,]", 4, small, sizeof small), -1);
    CHECK_STR(small, "Expecte");
    CHECK_INT(sh_json_decode(L, "[1,]", 4, NULL, 0), -1);
    CHECK_INT(sh_json_decode(L, "1e400", 5, NULL, 0), -1);

    /* depth: 128 nested arrays or objects pass, 129 do not */
    luaL_Buffer b;
    for (int depth = 127; depth <= 130; depth++) {
        for (int obj = 0; obj < 2; obj++) {
            luaL_buffinit(L, &b);
            for (int i = 0; i < depth; i++)
                luaL_addstring(&b, obj ? "{\"k\":" : "[");
            luaL_addstring(&b, "1");
            for (int i = 0; i < depth; i++)
                luaL_addstring(&b, obj ? "}" : "]");
            luaL_pushresult(&b);
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            int r = sh_json_decode(L, s, n, err, sizeof err);
            if (depth <= SH_JSON_MAX_DEPTH) {
                CHECKF(r == 0, "depth %d: %s", depth, err);
            } else {
                char want[100];
                snprintf(want, sizeof want,
                         "Found too many nested data structures (129) at character %d",
                         obj ? 1 + 5 * 128 : 129);
                CHECKF(r == -1 && strcmp(err, want) == 0, "depth %d: %s", depth, err);
            }
            lua_settop(L, 0);
        }
    }
    /* 100000 open brackets: refused at 129, no deep recursion */
    char *deep = malloc(100000);
    memset(deep, '[', 100000);
    CHECK_INT(sh_json_decode(L, deep, 100000, err, sizeof err), -1);
    CHECK_STR(err, "Found too many nested data structures (129) at character 129");
    free(deep);
    CHECK_INT(lua_gettop(L), 0);

    /* max_values: every value counts (containers and scalars), keys do not */
    static const struct { const char *json; size_t values; size_t at; } counted[] = {
        {"7", 1, 1},
        {"[1,2,3]", 4, 6},
        {"{\"a\":1,\"b\":[true,null]}", 5, 18},
        {"[[],[],{}]", 4, 8},
        {" [ \"x\" , {\"k\":\"v\"} ] ", 4, 15},
        /* reached inside an object, at a value kept for its key */
        {"[{\"id\":\"a\",\"s\":\"x\"},{\"id\":\"b\",\"s\":\"x\"}]", 7, 35},
        {"[{\"id\":\"a\",\"s\":\"x\"},{\"id\":\"b\",\"s\":[[\"x\"]]}]", 9, 37},
    };
    for (size_t i = 0; i < sizeof counted / sizeof counted[0]; i++) {
        const char *js = counted[i].json;
        size_t n = strlen(js), v = counted[i].values;
        CHECKF(sh_json_decode_max(L, js, n, v, err, sizeof err) == 0, "%s max %zu: %s", js, v, err);
        CHECKF(sh_json_decode_max(L, js, n, 0, err, sizeof err) == 0, "%s no max: %s", js, err);
        lua_settop(L, 0);
        char want[100];
        snprintf(want, sizeof want, "Found too many values (more than %zu) at character %zu",
                 v - 1, counted[i].at);
        if (v > 1) {
            CHECKF(sh_json_decode_max(L, js, n, v - 1, err, sizeof err) == -1 &&
                       strcmp(err, want) == 0, "%s max %zu: \"%s\", want \"%s\"", js, v - 1, err, want);
            CHECK_INT(lua_gettop(L), 0);
        }
    }
}

/* ------------------------------------------------------------ 2. big ones */

static int overwritten_overflows; /* see agree() */

/* Decode s with both decoders: both fail, or both give the same value. One
 * difference is expected: a number beyond the double range is an error here
 * wherever it is, while the old path refused it only when it survived into
 * the result, not when a later duplicate key replaced it ({"a":1e400,"a":1}). */
static int agree(lua_State *L, const char *s, size_t n, int *decoded)
{
    char err[200];
    int top = lua_gettop(L);
    int rn = sh_json_decode(L, s, n, err, sizeof err);
    if (rn == 0 && lua_gettop(L) != top + 1)
        return 0;
    if (rn != 0 && lua_gettop(L) != top)
        return 0;
    int ro = old_decode(L, s, n);
    int ok = rn == ro && (rn != 0 || same(L, -2, -1));
    if (rn != 0 && ro == 0 && strcmp(err, "number out of range") == 0) {
        overwritten_overflows++;
        ok = 1;
    }
    if (!ok)
        printf("disagree on %.200s%s: new %s, old %s\n", s, n > 200 ? "..." : "",
               rn ? err : "ok", ro ? "error" : "ok");
    if (decoded)
        *decoded = rn == 0;
    lua_settop(L, top);
    return ok;
}

static void test_big(lua_State *L)
{
    luaL_Buffer b;
    /* arrays and objects around the chunk size (4096), duplicates across chunks */
    static const int sizes[] = {1, 15, 16, 17, 4095, 4096, 4097, 8192, 10001};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k];
        luaL_buffinit(L, &b);
        luaL_addchar(&b, '[');
        for (int i = 0; i < n; i++)
            lua_pushfstring(L, "%s%d", i ? "," : "", i % 3 ? i : -i), luaL_addvalue(&b);
        luaL_addchar(&b, ']');
        luaL_pushresult(&b);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int decoded;
        CHECKF(agree(L, s, len, &decoded) && decoded, "array of %d", n);
        char err[100];
        CHECK_INT(sh_json_decode(L, s, len, err, sizeof err), 0);
        CHECK_INT(lua_rawlen(L, -1), n);
        lua_rawgeti(L, -1, n);
        CHECK_INT(lua_tointeger(L, -1), (n - 1) % 3 ? n - 1 : -(n - 1));
        lua_settop(L, 0);

        luaL_buffinit(L, &b);
        luaL_addchar(&b, '{');
        for (int i = 0; i < n; i++) /* "k0" again at the end: the last wins */
            lua_pushfstring(L, "%s\"k%d\":[%d]", i ? "," : "", i == n - 1 && n > 1 ? 0 : i, i),
                luaL_addvalue(&b);
        luaL_addchar(&b, '}');
        luaL_pushresult(&b);
        s = lua_tolstring(L, -1, &len);
        CHECKF(agree(L, s, len, &decoded) && decoded, "object of %d", n);
        CHECK_INT(sh_json_decode(L, s, len, err, sizeof err), 0);
        lua_getfield(L, -1, "k0");
        lua_rawgeti(L, -1, 1);
        CHECK_INT(lua_tointeger(L, -1), n - 1);
        lua_settop(L, 0);
    }

    /* 128 levels with 300 members each before the next level: more pending
     * members than the stack budget; arrays, then objects */
    for (int obj = 0; obj < 2; obj++) {
        luaL_buffinit(L, &b);
        for (int d = 0; d < SH_JSON_MAX_DEPTH; d++) {
            luaL_addchar(&b, obj ? '{' : '[');
            for (int i = 0; i < 300; i++) {
                if (obj)
                    lua_pushfstring(L, "\"m%d\":%d,", i, d * 1000 + i);
                else
                    lua_pushfstring(L, "%d,", d * 1000 + i);
                luaL_addvalue(&b);
            }
            if (obj)
                luaL_addstring(&b, "\"next\":");
        }
        luaL_addstring(&b, "\"end\"");
        for (int d = 0; d < SH_JSON_MAX_DEPTH; d++)
            luaL_addchar(&b, obj ? '}' : ']');
        luaL_pushresult(&b);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int decoded;
        CHECKF(agree(L, s, len, &decoded) && decoded, "deep and wide (%s)", obj ? "objects" : "arrays");
        lua_settop(L, 0);
    }

    /* 5,000 objects with the same keys (kept by parse_key and pushed again
     * across the array's flushes), some spelled with escapes, nested objects
     * reusing them one level down; then the same text cut in its last
     * object: an error there leaves the stack as it was */
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '[');
    for (int i = 0; i < 5000; i++)
        lua_pushfstring(L, "%s{\"id\":%d,\"i\\u0064x\":1,\"idx\":{\"id\":\"in%d\",\"\":0},"
                           "\"\":[],\"i\":%d,\"id\":%d}", i ? "," : "", i, i, -i, i + 1),
            luaL_addvalue(&b);
    luaL_addchar(&b, ']');
    luaL_pushresult(&b);
    {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int decoded;
        CHECKF(agree(L, s, len, &decoded) && decoded, "5000 objects with kept keys");
        char err[100];
        int top = lua_gettop(L);
        CHECK_INT(sh_json_decode(L, s, len - 3, err, sizeof err), -1);
        CHECK_INT(lua_gettop(L), top);
        CHECK_INT(sh_json_decode(L, s, len, err, sizeof err), 0);
        lua_rawgeti(L, -1, 4321);
        lua_getfield(L, -1, "idx");
        lua_getfield(L, -1, "id");
        CHECK_STR(lua_tostring(L, -1), "in4320");
        lua_getfield(L, -3, "id"); /* the duplicate: the last wins */
        CHECK_INT(lua_tointeger(L, -1), 4321);
        lua_getfield(L, -4, "idx");
        CHECK(lua_istable(L, -1));
        lua_settop(L, 0);
    }

    /* a long string with and without escapes, a long number */
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (int i = 0; i < 20000; i++)
        luaL_addstring(&b, i % 100 == 99 ? "\\u00e9\\n" : "x");
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    CHECK(agree(L, s, len, NULL));
    lua_settop(L, 0);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "[0.");
    for (int i = 0; i < 5000; i++)
        luaL_addchar(&b, (char)('0' + i % 10));
    luaL_addstring(&b, "e3, 1");
    for (int i = 0; i < 400; i++)
        luaL_addchar(&b, '0');
    luaL_addstring(&b, "e-400]");
    luaL_pushresult(&b);
    s = lua_tolstring(L, -1, &len);
    CHECK(agree(L, s, len, NULL));
    lua_settop(L, 0);
}

/* ------------------------------------------------------------ 3. random documents */

static uint64_t rng_state;
static uint32_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}
static uint32_t below(uint32_t n) { return rnd() % n; }

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

static void gen_ws(sbuf *b)
{
    static const char ws[] = " \t\n\r";
    if (below(4) == 0)
        for (uint32_t i = below(3) + 1; i > 0; i--)
            put(b, &ws[below(4)], 1);
}

static void gen_digits(sbuf *b, uint32_t n, int lead_nonzero)
{
    for (uint32_t i = 0; i < n; i++) {
        char c = (char)('0' + (i == 0 && lead_nonzero ? 1 + below(9) : below(10)));
        put(b, &c, 1);
    }
}

static void gen_number(sbuf *b)
{
    if (below(2))
        puts_(b, "-");
    switch (below(8)) {
    case 0:
        puts_(b, "0");
        break;
    case 1:
        gen_digits(b, 1 + below(4), 1);
        break;
    case 2: /* 13 to 20 digits: around 2^53 and the 15-digit fast path */
        gen_digits(b, 13 + below(8), 1);
        break;
    case 3:
        puts_(b, below(2) ? "9007199254740992" : below(2) ? "9007199254740991" : "9007199254740993");
        return;
    default:
        gen_digits(b, 1 + below(17), 1);
    }
    if (below(2)) {
        puts_(b, ".");
        gen_digits(b, 1 + (below(4) ? below(6) : below(30)), 0);
    }
    if (below(3) == 0) {
        puts_(b, below(2) ? "e" : "E");
        uint32_t s = below(3);
        if (s)
            puts_(b, s == 1 ? "+" : "-");
        char e[16];
        uint32_t v = below(4) ? below(25) : below(8) ? below(300) : below(1000);
        snprintf(e, sizeof e, below(5) ? "%u" : "00%u", v);
        puts_(b, e);
    }
}

static void gen_string(sbuf *b)
{
    static const char *const esc[] = {"\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"};
    puts_(b, "\"");
    uint32_t n = below(4) ? below(8) : below(40);
    for (uint32_t i = 0; i < n; i++) {
        char u[16];
        switch (below(12)) {
        case 0:
            puts_(b, esc[below(8)]);
            break;
        case 1: { /* \uXXXX below the surrogates, or above */
            uint32_t cp = below(3) == 0 ? below(0x80) : below(2) ? below(0xD800) : 0xE000 + below(0x2000);
            snprintf(u, sizeof u, below(2) ? "\\u%04x" : "\\u%04X", cp);
            puts_(b, u);
            break;
        }
        case 2: { /* a surrogate pair */
            uint32_t cp = 0x10000 + below(0x100000);
            snprintf(u, sizeof u, "\\u%04x\\u%04X", 0xD800 + ((cp - 0x10000) >> 10),
                     0xDC00 + ((cp - 0x10000) & 0x3FF));
            puts_(b, u);
            break;
        }
        case 3: /* raw UTF-8 */
            puts_(b, below(2) ? "é" : below(2) ? "€" : "😀");
            break;
        case 4: { /* a raw byte 0x80..0xFF: invalid UTF-8 passes through */
            char c = (char)(0x80 + below(0x80));
            put(b, &c, 1);
            break;
        }
        default: {
            char c = (char)(0x20 + below(0x5F));
            if (c == '"' || c == '\\')
                c = 'q';
            put(b, &c, 1);
        }
        }
    }
    puts_(b, "\"");
}

static void gen_value(sbuf *b, int depth);

/* A string value of a small pool: the decoder keeps the last string value of each kept
 * key and pushes it again when the same (push_text); these repeat, differ in the first
 * or the last byte or in length, are empty, spell another one with an escape, are long
 * (not interned by Lua), are UTF-8 */
static void gen_pooled(sbuf *b)
{
    static const char *const pool[] = {
        "\"x\"", "\"y\"", "\"xy\"", "\"yy\"", "\"xx\"", "\"\"", "\"x\\u0079\"", "\"\\\"\"",
        "\"进行中\"", "\"已完成\"", "\"0123456789012345678901234567890123456789xx\"",
        "\"0123456789012345678901234567890123456789xy\"", "\"1\"", "1", "null",
    };
    puts_(b, pool[below(sizeof pool / sizeof pool[0])]);
}

/* An array of records: objects with keys of one small set, in any order, sometimes one
 * twice, values mostly pooled (the common shape of a batch) */
static void gen_records(sbuf *b, int depth)
{
    static const char *const keys[] = {"\"id\"", "\"status\"", "\"s\"", "\"i\\u0064\""};
    puts_(b, "[");
    for (uint32_t i = 0, n = below(12); i < n; i++) {
        puts_(b, i ? ",{" : "{");
        for (uint32_t k = 0, m = below(4); k < m; k++) {
            if (k)
                puts_(b, ",");
            puts_(b, keys[below(sizeof keys / sizeof keys[0])]);
            puts_(b, ":");
            if (below(8) == 0)
                gen_value(b, depth + 2);
            else
                gen_pooled(b);
        }
        puts_(b, "}");
    }
    puts_(b, "]");
}

static void gen_value(sbuf *b, int depth)
{
    gen_ws(b);
    uint32_t kind = depth > 6 ? below(6) : below(9);
    if (depth > 100)
        kind = 0;
    switch (kind) {
    case 0:
    case 1:
        gen_number(b);
        break;
    case 2:
    case 3:
        gen_string(b);
        break;
    case 4:
        puts_(b, below(3) == 0 ? "null" : below(2) ? "true" : "false");
        break;
    case 5: /* rarely: a chain of arrays */
        if (below(20) == 0) {
            uint32_t n = 1 + below(SH_JSON_MAX_DEPTH - depth);
            for (uint32_t i = 0; i < n; i++)
                puts_(b, "[");
            gen_value(b, depth + (int)n);
            for (uint32_t i = 0; i < n; i++)
                puts_(b, "]");
        } else {
            gen_number(b);
        }
        break;
    case 6:
    case 7: {
        if (below(4) == 0) {
            gen_records(b, depth);
            break;
        }
        puts_(b, "[");
        uint32_t n = below(5) ? below(6) : below(40);
        for (uint32_t i = 0; i < n; i++) {
            if (i)
                puts_(b, ",");
            gen_value(b, depth + 1);
        }
        gen_ws(b);
        puts_(b, "]");
        break;
    }
    default: {
        puts_(b, "{");
        uint32_t n = below(5) ? below(6) : below(30);
        for (uint32_t i = 0; i < n; i++) {
            if (i)
                puts_(b, ",");
            gen_ws(b);
            if (below(4) == 0) { /* a short key: duplicates happen */
                char k[8];
                snprintf(k, sizeof k, "\"%c\"", 'a' + below(3));
                puts_(b, k);
            } else if (below(3) == 0) {
                /* a key of a small pool: the decoder keeps the first four
                 * distinct ones and pushes them again (parse_key); these share
                 * prefixes, differ only in length or in the last byte, are
                 * empty, carry escapes spelling another pool key, or are
                 * 40 and 41 bytes long (kept or not) */
                static const char *const pool[] = {
                    "\"\"", "\"i\"", "\"id\"", "\"idx\"", "\"i\\u0064\"", "\"\\u0069d\"",
                    "\"di\"", "\"ie\"",
                    "\"0123456789012345678901234567890123456789\"",
                    "\"0123456789012345678901234567890123456788\"",
                    "\"01234567890123456789012345678901234567890\"",
                    "\"0123456789012345678901234567890123456789\\u0030\"",
                };
                puts_(b, pool[below(sizeof pool / sizeof pool[0])]);
            } else {
                gen_string(b);
            }
            gen_ws(b);
            puts_(b, ":");
            if (below(4) == 0)
                gen_pooled(b);
            else
                gen_value(b, depth + 1);
        }
        gen_ws(b);
        puts_(b, "}");
    }
    }
    gen_ws(b);
}

/* Mutate the document: flip, insert, delete or cut. */
static void mutate(sbuf *b)
{
    static const char interesting[] = "{}[]\",:\\u0123456789-+.eE \t\n\r\0\x01\x7f\xff" "tfnaxUD";
    for (uint32_t k = 1 + below(3); k > 0; k--) {
        size_t at = b->n ? below((uint32_t)b->n) : 0;
        char c = below(2) ? interesting[below(sizeof interesting - 1)] : (char)below(256);
        switch (below(4)) {
        case 0:
            if (b->n)
                b->p[at] = c;
            break;
        case 1:
            put(b, "", 1); /* room for one more */
            memmove(b->p + at + 1, b->p + at, b->n - 1 - at);
            b->p[at] = c;
            break;
        case 2:
            if (b->n) {
                memmove(b->p + at, b->p + at + 1, b->n - at - 1);
                b->n--;
            }
            break;
        default:
            b->n = at;
        }
    }
}

static void test_random(lua_State *L, uint64_t seed, int docs, int mutations)
{
    rng_state = seed;
    sbuf b = {0};
    int disagreements = 0, decoded_mutants = 0, failed_mutants = 0, errors = 0;
    for (int i = 0; i < docs; i++) {
        b.n = 0;
        gen_value(&b, 1);
        int decoded;
        if (!agree(L, b.p, b.n, &decoded))
            disagreements++;
        else if (!decoded)
            errors++; /* a number beyond the double range: both refuse */
        for (int m = 0; m < mutations; m++) {
            sbuf c = {0};
            put(&c, b.p, b.n);
            mutate(&c);
            char err[200];
            int top = lua_gettop(L);
            err[0] = 'x';
            int r = sh_json_decode(L, c.p, c.n, err, sizeof err);
            if (r == 0) {
                decoded_mutants++;
                CHECK_INT(lua_gettop(L), top + 1);
                lua_settop(L, top);
                /* the new grammar is cjson's, stricter: the old path agrees */
                if (!agree(L, c.p, c.n, NULL))
                    disagreements++;
            } else {
                failed_mutants++;
                CHECK_INT(r, -1);
                CHECK_INT(lua_gettop(L), top);
                CHECKF(strchr(err, '\n') == NULL && (strstr(err, " at character ") ||
                                                     strcmp(err, "number out of range") == 0),
                       "message: %s", err);
            }
            free(c.p);
        }
    }
    free(b.p);
    CHECK_INT(disagreements, 0);
    CHECKF(errors < docs / 4, "%d of %d random documents refused", errors, docs);
    CHECKF(decoded_mutants > 0 && failed_mutants > 0, "mutants: %d decoded, %d refused",
           decoded_mutants, failed_mutants);
    printf("random: %d documents (%d out of range, %d of them only in a replaced duplicate), "
           "%d mutants (%d decoded, %d refused)\n",
           docs, errors, overwritten_overflows, docs * mutations, decoded_mutants, failed_mutants);
}

/* ------------------------------------------------------------ 4b. the flat scan */

/* sh_json_flat(text) against the decoder: a 0 must be a text the decoder makes a table of,
 * with each named member's value as the scan reported it. → 1 when the scan gave 0. */
static int flat_agrees(lua_State *L, const char *s, size_t n)
{
    static const char *const names[2] = {"id", "status"};
    sh_json_field f[2];
    if (sh_json_flat(s, n, names, 2, f) != 0)
        return 0;
    char err[200];
    int top = lua_gettop(L);
    int r = sh_json_decode(L, s, n, err, sizeof err);
    CHECKF(r == 0 && lua_type(L, -1) == LUA_TTABLE, "scan 0, decoder: %s: %.*s",
           r ? err : "not a table", (int)n, s);
    if (r == 0 && lua_type(L, -1) == LUA_TTABLE) {
        for (int i = 0; i < 2; i++) {
            int t = lua_getfield(L, -1, names[i]);
            size_t len;
            const char *v = t == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (f[i].kind == SH_JSON_STRING)
                CHECKF(v && len == f[i].len && memcmp(v, f[i].p, len) == 0, "%s of %.*s",
                       names[i], (int)n, s);
            else if (f[i].kind == SH_JSON_ABSENT)
                CHECKF(t == LUA_TNIL, "%s absent in %.*s", names[i], (int)n, s);
            else
                CHECKF(f[i].kind == SH_JSON_OTHER && t != LUA_TNIL && t != LUA_TSTRING &&
                       t != LUA_TTABLE, "%s of %.*s", names[i], (int)n, s);
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    return 1;
}

/* A flat object: members named id, status or else, scalar values, sometimes escapes,
 * duplicates, a nested value or a \u escape (each of which the scan leaves alone). */
static void gen_flat(sbuf *b)
{
    static const char *const keys[] = {"\"id\"", "\"status\"", "\"seq\"", "\"i\\u0064\"",
                                       "\"st\\\"x\""};
    static const char *const vals[] = {"\"t-1\"", "\"已完成\"", "\"a\\nb\"", "\"\\u00e9\"",
                                       "17", "-0.5", "1e2", "true", "false", "null", "[1]", "{}",
                                       "\"\"", "0", "\"\xff\xfe\""};
    gen_ws(b);
    puts_(b, "{");
    uint32_t n = below(5);
    for (uint32_t i = 0; i < n; i++) {
        if (i)
            puts_(b, ",");
        gen_ws(b);
        if (below(4) == 0)
            gen_string(b);
        else
            puts_(b, keys[below(sizeof keys / sizeof *keys)]);
        gen_ws(b);
        puts_(b, ":");
        gen_ws(b);
        if (below(4) == 0)
            gen_value(b, 1);
        else
            puts_(b, vals[below(sizeof vals / sizeof *vals)]);
        gen_ws(b);
    }
    puts_(b, "}");
    gen_ws(b);
}

static void test_flat(lua_State *L, int docs)
{
    static const char *const names[2] = {"id", "status"};
    static const struct { const char *text; int r; int id_kind; } cases[] = {
        {"{\"id\":\"a\",\"status\":\"done\"}", 0, SH_JSON_STRING},
        {" {\"seq\":1.5,\"id\":\"a\"} ", 0, SH_JSON_STRING},
        {"{}", 0, SH_JSON_ABSENT},
        {"{\"id\":7}", 0, SH_JSON_OTHER},
        {"{\"id\":null}", 0, SH_JSON_OTHER},
        {"{\"x\":\"a\\\"b\",\"id\":\"a\"}", 0, SH_JSON_STRING}, /* an escape elsewhere */
        {"{\"id\":\"a\",\"id\":\"b\"}", -1, 0},                    /* twice: the last wins */
        {"{\"i\\u0064\":\"a\"}", -1, 0},                           /* a key spelled with \u */
        {"{\"id\":\"a\\nb\"}", -1, 0},                              /* a value to unescape */
        {"{\"id\":\"a\",\"x\":[]}", -1, 0},                           /* nested */
        {"{\"id\":\"a\",\"x\":1e400}", -1, 0},                        /* exponent */
        {"{\"id\":\"a\",}", -1, 0},
        {"{\"id\":\"a\"} x", -1, 0},
        {"{\"id\":\"a\x01\"}", -1, 0},
        {"[\"id\"]", -1, 0},
        {"{\"id\":\"a\",\"x\":01}", -1, 0},
        {"{\"id\":\"a\",\"x\":tru}", -1, 0},
        {"{\"id\":\"a\"", -1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sh_json_field f[2];
        int r = sh_json_flat(cases[i].text, strlen(cases[i].text), names, 2, f);
        CHECKF(r == cases[i].r, "%s: %d", cases[i].text, r);
        if (r == 0)
            CHECKF(f[0].kind == cases[i].id_kind, "%s: id kind %d", cases[i].text, f[0].kind);
        flat_agrees(L, cases[i].text, strlen(cases[i].text));
    }
    /* a NUL inside: the decoder refuses it, and so must the scan */
    CHECK_INT(sh_json_flat("{\"id\":\"a\0\"}", 10, names, 2, (sh_json_field[2]){0}), -1);
    CHECK_INT(sh_json_flat("{\"id\":\"a\"}\0", 11, names, 2, (sh_json_field[2]){0}), -1);
    int scanned = 0;
    sbuf b = {0};
    for (int i = 0; i < docs; i++) {
        b.n = 0;
        gen_flat(&b);
        scanned += flat_agrees(L, b.p, b.n);
        for (int m = 0; m < 4; m++) {
            sbuf c = {0};
            put(&c, b.p, b.n);
            mutate(&c);
            scanned += flat_agrees(L, c.p, c.n);
            free(c.p);
        }
    }
    free(b.p);
    CHECKF(scanned > docs / 4, "only %d of %d texts scanned", scanned, docs * 5);
    printf("flat: %d texts, %d settled by the scan\n", docs * 5, scanned);
}

/* ------------------------------------------------------------ 5. memory errors */

static long alloc_budget; /* allocations left before failing; < 0: no limit */

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (alloc_budget == 0)
        return NULL;
    if (alloc_budget > 0)
        alloc_budget--;
    return realloc(ptr, nsize);
}

static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[200];
    if (sh_json_decode(L, s, n, err, sizeof err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static void test_memory_errors(void)
{
    /* strings with escapes (luaL_Buffer), long numbers (a userdata), big tables */
    sbuf doc = {0};
    puts_(&doc, "{\"a\":[1,2,3,\"x\\n\\u00e9y\",{\"b\":null}],\"long\":\"");
    for (int i = 0; i < 300; i++)
        puts_(&doc, "ab\\t");
    puts_(&doc, "\",\"n\":0.");
    for (int i = 0; i < 200; i++)
        puts_(&doc, "7");
    puts_(&doc, ",\"arr\":[");
    for (int i = 0; i < 5000; i++)
        puts_(&doc, i ? ",1" : "1");
    puts_(&doc, "]}");

    int raised = 0, worked = 0;
    for (long budget = 0;; budget++) {
        alloc_budget = -1;
        lua_State *L = lua_newstate(limited_alloc, NULL);
        lua_pushcfunction(L, l_decode);
        lua_pushlstring(L, doc.p, doc.n);
        alloc_budget = budget;
        int st = lua_pcall(L, 1, 2, 0);
        alloc_budget = -1;
        if (st == LUA_OK) {
            CHECKF(lua_type(L, -2) == LUA_TTABLE, "budget %ld: %s", budget, lua_tostring(L, -1));
            lua_getfield(L, -2, "arr");
            CHECK_INT(lua_rawlen(L, -1), 5000);
            worked = 1;
        } else {
            /* LUA_ERRMEM; or, when growing the stack failed, luaL_checkstack's
             * "stack overflow (json)": raised either way, never nil, err */
            CHECKF(st == LUA_ERRMEM || (st == LUA_ERRRUN && lua_type(L, -1) == LUA_TSTRING &&
                                        strstr(lua_tostring(L, -1), "stack overflow (json)")),
                   "budget %ld: status %d %s", budget, st, lua_tostring(L, -1));
            raised++;
            /* the state is still usable */
            lua_settop(L, 0);
            lua_pushcfunction(L, l_decode);
            lua_pushliteral(L, "[1,{\"x\":\"y\\n\"}]");
            CHECK_INT(lua_pcall(L, 1, 2, 0), LUA_OK);
            CHECK(lua_type(L, -2) == LUA_TTABLE);
        }
        lua_close(L);
        if (worked)
            break;
    }
    free(doc.p);
    CHECKF(raised > 10, "%d memory errors raised", raised);
    printf("memory errors: raised at each of %d allocations, then decoded\n", raised);
}

/* ------------------------------------------------------------ 7. a failed long string */

static int box_bad_tops; /* decodes that failed with the stack top not where it was */

/* decode(s) → nil, err; counts a failure that moved the stack top. */
static int l_decode_checked(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int top = lua_gettop(L);
    char err[200];
    if (sh_json_decode(L, s, n, err, sizeof err) == 0)
        return 1;
    if (lua_gettop(L) != top) {
        box_bad_tops++;
        return luaL_error(L, "stack top %d after a failed decode, want %d", lua_gettop(L), top);
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* A string with escapes longer than LUAL_BUFFERSIZE lives in a to-be-closed
 * box; refused after that, the box was left to sh_json_decode's lua_settop,
 * which in Lua 5.4.4 (Debian 12) keeps a stack pointer across the __close
 * call: when that call grew the stack, the top was left in the freed one.
 * fails before the fix: yes (stack top 521 after a failed decode, want 1,
 * for one of the stack rooms below). */
static void test_failed_long_string(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_pushcfunction(L, l_decode_checked);
    lua_setglobal(L, "decode");
    static const char code[] =
        "local texts = {}\n"
        "local long = string.rep('\\\\n', 1500)\n"
        "for _, tail in ipairs({ '\\1\"', '\\\\x\"', '\\\\ud800\"', '', '\\\\u12' }) do\n"
        "  texts[#texts + 1] = '[\"' .. long .. tail .. ']'\n"
        "  texts[#texts + 1] = '{\"' .. long .. tail .. ':1}'\n"
        "end\n"
        "local runs = 0\n"
        "for _, text in ipairs(texts) do\n"
        "  for k = 0, 90 do -- k locals below the call: every free room of the stack\n"
        "    local src = 'local decode, text = ...; '\n"
        "    for i = 1, k do src = src .. 'local l' .. i .. ' = ' .. i .. '; ' end\n"
        "    src = src .. 'local v, e = decode(text); return v, e, l1'\n"
        "    local f = assert(load(src))\n"
        "    local ok, v, e = coroutine.resume(coroutine.create(f), decode, text)\n"
        "    assert(ok, v)\n"
        "    assert(v == nil and e:find(' at character %d+$'), tostring(e))\n"
        "    local w, e2 = f(decode, text) -- the main thread too\n"
        "    assert(w == nil and e2 == e)\n"
        "    runs = runs + 1\n"
        "  end\n"
        "end\n"
        "return runs\n";
    int st = luaL_dostring(L, code);
    CHECKF(st == LUA_OK, "%s", lua_tostring(L, -1));
    CHECK_INT(box_bad_tops, 0);
    if (st == LUA_OK)
        CHECK_INT(lua_tointeger(L, -1), 10 * 91);
    lua_close(L);
}

/* ------------------------------------------------------------ 6. locale */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void test_locale(lua_State *L)
{
    static const char *const names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8"};
    const char *got = NULL; /* the name that worked (setlocale's result does not last) */
    for (size_t i = 0; i < 4 && !got; i++)
        if (setlocale(LC_NUMERIC, names[i]))
            got = names[i];
    char dir[] = "/tmp/sh-json-locale.XXXXXX";
    int made = 0;
    if (!got && access("/usr/bin/localedef", X_OK) == 0 && mkdtemp(dir)) {
        made = 1;
        char cmd[256];
        snprintf(cmd, sizeof cmd, "localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8 >/dev/null 2>&1", dir);
        if (system(cmd) == 0) {
            setenv("LOCPATH", dir, 1);
            if (setlocale(LC_NUMERIC, "de_DE.UTF-8"))
                got = "de_DE.UTF-8";
        }
    }
    if (!got || strcmp(localeconv()->decimal_point, ",") != 0) {
        printf("locale: no locale with a ',' decimal point here: not tested\n");
    } else {
        CHECK(strtod("1.5", NULL) == 1.0); /* the locale does bite strtod */
        static const char *const texts[] = {"1.5", "0.1", "-2.5e-3", "1234567890123456.5",
                                            "3.14159265358979323846264338327950288", "1e23",
                                            "[0.5,{\"a\":12345678901234567.25}]"};
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            char err[100];
            CHECK_INT(sh_json_decode(L, texts[i], strlen(texts[i]), err, sizeof err), 0);
            setlocale(LC_NUMERIC, "C");
            CHECK_INT(sh_json_decode(L, texts[i], strlen(texts[i]), err, sizeof err), 0);
            CHECKF(same(L, -2, -1), "%s differs under %s", texts[i], got);
            setlocale(LC_NUMERIC, got);
            lua_settop(L, 0);
        }
        printf("locale: %s (decimal point ',') changes no number\n", got);
    }
    setlocale(LC_NUMERIC, "C");
    if (made) {
        unsetenv("LOCPATH");
        CHECK_INT(nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
    }
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 20261127;
    int docs = argc > 2 ? atoi(argv[2]) : 4000;
    lua_State *L = json_old_state();
    test_tables(L);
    test_big(L);
    test_random(L, seed, docs, 8);
    test_flat(L, docs);
    test_locale(L);
    lua_close(L);
    test_memory_errors();
    test_failed_long_string();
    return unit_done("test_json_decode");
}
