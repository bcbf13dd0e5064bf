/* fuzz_json.c — libFuzzer target for the strict JSON decoder (src/json_decode.c,
 * host.json.decode), against the path host.json.decode took before it
 * (lua-cjson's cjson.safe.decode + integral floats → integers:
 * tests/unit/json_old.h).
 *
 * Input: the text, as it is (NUL bytes and all).
 *
 * Invariants (a violation aborts, so libFuzzer keeps the input):
 * - decoded: exactly one value pushed; cjson's old path decodes the text too
 *   (the strict grammar is a subset of cjson's) to the same value: same types,
 *   integer/float subtypes, strings, keys;
 * - refused: nothing pushed, and a one-line message, "... at character N" with
 *   N within the text (+1 for its end), or "number out of range";
 * - the same again on a fresh coroutine holding 0..23 values (its stack
 *   nearly full: a to-be-closed luaL_Buffer box closed by lua_settop once
 *   left the top in the freed stack, Lua 5.4.4): the same result, the
 *   stack top exactly one value (or none) above those;
 * - sh_json_flat (conn:track's scan, for "id" and "status"): a text it accepts the
 *   decoder decodes, to an object of no nested value whose "id" and "status" are
 *   what the scan found (absent: nil; a string: its bytes; other: a number, a
 *   boolean or null);
 * - no crash, leak or undefined behaviour (ASan, LSan, UBSan).
 *
 * Build and run: tests/fuzz/run.sh (see there). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_decode.h"
#include "../unit/json_old.h"

#define FUZZ_NAME "fuzz_json"
#include "fuzz_check.h"

static lua_State *L;

/* sh_json_flat never accepts a text the decoder (whose result r is) refuses or decodes
 * otherwise. */
static void check_flat(const char *s, size_t size, int r)
{
    static const char *const names[2] = {"id", "status"};
    sh_json_field f[2];
    if (sh_json_flat(s, size, names, 2, f) != 0)
        return;
    CHECK(r == 0, "flat: accepted a text the decoder refuses");
    int top = lua_gettop(L);
    CHECK(sh_json_decode(L, s, size, NULL, 0) == 0 && lua_type(L, -1) == LUA_TTABLE,
          "flat: accepted a text that is no object");
    for (lua_pushnil(L); lua_next(L, top + 1); lua_pop(L, 1))
        CHECK(lua_type(L, -1) != LUA_TTABLE, "flat: accepted a nested value");
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, top + 1, names[i]);
        size_t len;
        const char *v;
        switch (f[i].kind) {
        case SH_JSON_ABSENT:
            CHECK(lua_isnil(L, -1), "flat: %s absent, decoded", names[i]);
            break;
        case SH_JSON_STRING:
            v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            CHECK(v && len == f[i].len && memcmp(v, f[i].p, len) == 0,
                  "flat: %s another string than the decoded one", names[i]);
            break;
        case SH_JSON_OTHER:
            CHECK(lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TBOOLEAN ||
                      lua_type(L, -1) == LUA_TLIGHTUSERDATA,
                  "flat: %s a scalar, decoded as %s", names[i], luaL_typename(L, -1));
            break;
        default:
            CHECK(0, "flat: %s of kind %d", names[i], f[i].kind);
        }
        lua_pop(L, 1);
    }
    lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L)
        L = json_old_state();
    const char *s = (const char *)data;
    char err[256];
    int top = lua_gettop(L);
    int r = sh_json_decode(L, s, size, err, sizeof err);
    if (r == 0) {
        CHECK(lua_gettop(L) == top + 1, "decoded: %d values pushed", lua_gettop(L) - top);
        CHECK(old_decode(L, s, size) == 0, "decoded here, refused by the old path");
        CHECK(same(L, -2, -1), "decoded to another value than the old path's");
    } else {
        CHECK(r == -1, "returned %d", r);
        CHECK(lua_gettop(L) == top, "refused: %d values left", lua_gettop(L) - top);
        CHECK(strchr(err, '\n') == NULL, "a message of more than one line: %s", err);
        const char *at = strstr(err, " at character ");
        if (at) {
            unsigned long long n = strtoull(at + 14, NULL, 10);
            CHECK(n >= 1 && n <= (unsigned long long)size + 1, "position %llu of %zu: %s", n, size, err);
        } else {
            CHECK(strcmp(err, "number out of range") == 0, "message: %s", err);
        }
    }
    lua_settop(L, top);
    check_flat(s, size, r);

    lua_State *co = lua_newthread(L);
    int held = (int)(size % 24);
    for (int i = 0; i < held; i++)
        lua_pushnil(co);
    int rc = sh_json_decode(co, s, size, err, sizeof err);
    CHECK(rc == r, "on a coroutine holding %d values: %d, at the top: %d", held, rc, r);
    CHECK(lua_gettop(co) == held + (rc == 0), "on a coroutine holding %d values: top %d after %s",
          held, lua_gettop(co), rc == 0 ? "a decode" : "a refusal");
    lua_settop(L, top);

    /* with max_values: never accepts what the unbounded decode refuses; what it refuses
     * that the other accepts, it refuses for the count */
    size_t max = size % 9 + 1;
    char errm[256];
    int rm = sh_json_decode_max(L, s, size, max, errm, sizeof errm);
    CHECK(rm == 0 || rm == -1, "max %zu: returned %d", max, rm);
    CHECK(lua_gettop(L) == top + (rm == 0), "max %zu: top %d", max, lua_gettop(L) - top);
    CHECK(rm == -1 || r == 0, "max %zu: accepted what the unbounded decode refused", max);
    CHECK(rm == 0 || r == -1 || strncmp(errm, "Found too many values", 21) == 0,
          "max %zu: refused a valid text with: %s", max, errm);
    lua_settop(L, top);
    return 0;
}
