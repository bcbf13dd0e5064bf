/* test_lua_alloc.c — a generation's Lua allocator (lua_host.c: gen_alloc and its pool
 * of small blocks) driven directly, through lua_getallocf of a real generation, and
 * by a Lua chunk that allocates hostilely.
 *
 * - every size 1..300 gets a block with room for it (its class is malloc's chunk size:
 *   24, 40, ... 264 usable bytes; bigger ones exactly), and the state's count moves by
 *   exactly the size asked;
 * - every resize a -> b (1..300 both) keeps min(a, b) bytes, gives room for b and
 *   moves the count by b - a: within a class, across classes, across 264 both ways;
 * - a freed block is taken again by the next allocation of its class (the pool), and
 *   what the pool holds never passes SH_BLK_HELD_MAX however much is freed;
 * - past lua_max_memory (while capped) an allocation or a growth fails and changes
 *   nothing, a shrink still succeeds;
 * - after string.rep of every size, table growth and shrinking, coroutines and full
 *   collections, the count is Lua's own (collectgarbage "count") to the byte;
 * - a closed generation gives its pool back (the ASan build's LeakSanitizer fails the
 *   test otherwise). Under ASan, writing past the size asked is caught too. */
#include <lauxlib.h>
#include <lua.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua_api.h"
#include "lua_host.h"
#include "unit.h"

/* The usable size of the class of n (n <= 264), or n. */
static size_t class_size(size_t n)
{
    if (n > 264) return n;
    size_t s = 24;
    while (s < n) s += 16;
    return s;
}

static sh_gen *load(const char *path)
{
    sh_gen *g = NULL;
    char err[256] = "";
    int rc = sh_gen_load(NULL, sh_lua_api_open, path, NULL, 0, &g, err, sizeof err);
    CHECKF(rc == 0 && g, "load: %s", err);
    if (rc != 0) exit(1);
    return g;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 7);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7)) return 0;
    return 1;
}

static void test_sizes(sh_gen *g, lua_Alloc f, void *ud)
{
    for (size_t n = 1; n <= 300; n++) {
        size_t m0 = g->mem;
        unsigned char *p = f(ud, NULL, LUA_TSTRING, n);
        CHECKF(p != NULL, "size %zu", n);
        if (!p) continue;
        fill(p, n, (unsigned)n);
        CHECKF(g->mem == m0 + n, "size %zu: count %zu, want %zu", n, g->mem, m0 + n);
        CHECKF(malloc_usable_size(p) >= class_size(n), "size %zu: usable %zu, class %zu", n,
               malloc_usable_size(p), class_size(n));
        int pooled = n <= 264 && g->blk_bytes + class_size(n) <= SH_BLK_HELD_MAX;
        CHECK(f(ud, p, n, 0) == NULL);
        CHECKF(g->mem == m0, "size %zu freed: count %zu, want %zu", n, g->mem, m0);
        /* the pool (when it has room): the next block of the class is this one */
        unsigned char *q = f(ud, NULL, LUA_TSTRING, class_size(n));
        if (pooled) CHECKF(q == p, "size %zu: the freed block is taken again", n);
        f(ud, q, class_size(n), 0);
    }
}

static void test_resizes(sh_gen *g, lua_Alloc f, void *ud)
{
    int bad = 0;
    for (size_t a = 1; a <= 300; a++)
        for (size_t b = 1; b <= 300; b++) {
            size_t m0 = g->mem;
            unsigned char *p = f(ud, NULL, LUA_TTABLE, a);
            fill(p, a, (unsigned)(a ^ b));
            unsigned char *q = f(ud, p, a, b);
            size_t keep = a < b ? a : b;
            if (!q || !same(q, keep, (unsigned)(a ^ b)) || g->mem != m0 + b) {
                if (bad++ < 5) printf("resize %zu -> %zu: %p, count %zu want %zu\n", a, b,
                                      (void *)q, g->mem, m0 + b);
                continue;
            }
            fill(q, b, 1); /* the room for b (ASan: the bytes past b are poisoned) */
            f(ud, q, b, 0);
            if (g->mem != m0 && bad++ < 5) printf("resize %zu -> %zu: leaks in the count\n", a, b);
        }
    CHECK_INT(bad, 0);
}

static void test_pool_bound(sh_gen *g, lua_Alloc f, void *ud)
{
    enum { N = SH_BLK_HELD_MAX / 24 + 64 };
    static void *blk[N];
    size_t m0 = g->mem;
    /* the pool filled to just under its bound with 24-byte blocks, then a 264-byte one */
    void *big = f(ud, NULL, LUA_TSTRING, 264);
    for (int i = 0; i < N; i++) blk[i] = f(ud, NULL, LUA_TSTRING, 24);
    int i = 0;
    while (i < N && g->blk_bytes + 24 < SH_BLK_HELD_MAX) f(ud, blk[i++], 24, 0);
    CHECKF(g->blk_bytes < SH_BLK_HELD_MAX && g->blk_bytes + 264 > SH_BLK_HELD_MAX, "held %zu",
           g->blk_bytes);
    f(ud, big, 264, 0);
    CHECKF(g->blk_bytes <= SH_BLK_HELD_MAX, "held %zu > %d", g->blk_bytes, SH_BLK_HELD_MAX);
    while (i < N) f(ud, blk[i++], 24, 0);
    CHECKF(g->blk_bytes <= SH_BLK_HELD_MAX, "held %zu > %d", g->blk_bytes, SH_BLK_HELD_MAX);
    /* every class, far more than the bound */
    for (i = 0; i < N; i++) blk[i] = f(ud, NULL, LUA_TSTRING, (size_t)(1 + i % 264));
    for (i = 0; i < N; i++) f(ud, blk[i], (size_t)(1 + i % 264), 0);
    CHECK_INT(g->mem, m0);
    CHECKF(g->blk_bytes <= SH_BLK_HELD_MAX, "held %zu > %d", g->blk_bytes, SH_BLK_HELD_MAX);
    CHECKF(g->blk_bytes > SH_BLK_HELD_MAX - 264, "held %zu: the pool fills", g->blk_bytes);
}

static void test_cap(sh_gen *g, lua_Alloc f, void *ud)
{
    unsigned char *p = f(ud, NULL, LUA_TSTRING, 100);
    fill(p, 100, 3);
    size_t m0 = g->mem;
    g->capped = 1;
    g->mem_max = m0 + 50;
    CHECK(f(ud, NULL, LUA_TSTRING, 51) == NULL);
    CHECK(f(ud, NULL, LUA_TSTRING, 400) == NULL);
    CHECK(f(ud, p, 100, 151) == NULL); /* growth past the cap, within and across classes */
    CHECK(f(ud, p, 100, 300) == NULL);
    CHECK_INT(g->mem, m0);
    CHECK(same(p, 100, 3));
    unsigned char *q = f(ud, NULL, LUA_TSTRING, 50); /* up to the cap exactly */
    CHECK(q != NULL);
    CHECK_INT(g->mem, m0 + 50);
    g->mem_max = 10; /* over the cap already: shrinking and freeing still work */
    p = f(ud, p, 100, 20);
    CHECK(p != NULL && same(p, 20, 3));
    CHECK_INT(g->mem, m0 + 50 - 80);
    f(ud, q, 50, 0);
    f(ud, p, 20, 0);
    g->capped = 0;
    g->mem_max = 0;
    CHECK_INT(g->mem, m0 - 100);
}

static const char HOSTILE[] =
    "local keep = {}\n"
    "for round = 1, 3 do\n"
    "  for n = 1, 300 do keep[#keep + 1] = string.rep('x', n) end\n"
    "  local t = {}\n"
    "  for i = 1, 5000 do t[i] = i end\n" /* the array part grows through every class */
    "  for i = 5000, 1, -1 do t[i] = nil end\n"
    "  collectgarbage('collect')\n" /* and shrinks */
    "  local h = {}\n"
    "  for i = 1, 300 do h['k' .. i] = {i, tostring(i)} end\n"
    "  for i = 1, 300, 2 do h['k' .. i] = nil end\n"
    "  local cos = {}\n"
    "  for i = 1, 200 do\n"
    "    cos[i] = coroutine.wrap(function(a) local s = string.rep('y', a)\n"
    "      while true do a = coroutine.yield(#s); s = s .. string.rep('z', a % 37) end end)\n"
    "    cos[i](i)\n"
    "  end\n"
    "  for k = 1, 20 do for i = 1, 200 do cos[i](k * i) end end\n"
    "  cos = nil\n"
    "  if round < 3 then keep = {} end\n"
    "  collectgarbage('collect')\n"
    "end\n"
    "return #keep\n";

static void test_lua_count(sh_gen *g)
{
    lua_State *L = g->L;
    int top = lua_gettop(L);
    CHECKF(luaL_dostring(L, HOSTILE) == LUA_OK, "%s", lua_tostring(L, -1));
    CHECK_INT(lua_tointeger(L, -1), 300);
    lua_settop(L, top);
    size_t lua_count = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    CHECKF(g->mem == lua_count, "count %zu, Lua's %zu", g->mem, lua_count);
    CHECKF(g->blk_bytes <= SH_BLK_HELD_MAX, "held %zu", g->blk_bytes);
    lua_gc(L, LUA_GCCOLLECT, 0);
    lua_count = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    CHECKF(g->mem == lua_count, "count %zu, Lua's %zu", g->mem, lua_count);
}

int main(void)
{
    char path[] = "/tmp/test_lua_alloc_XXXXXX";
    int fd = mkstemp(path);
    static const char script[] = "return {}\n";
    if (fd < 0 || write(fd, script, sizeof script - 1) != (ssize_t)(sizeof script - 1)) {
        perror("script");
        return 1;
    }
    close(fd);
    for (int gen = 0; gen < 2; gen++) { /* a reload: the next generation has its own pool */
        sh_gen *g = load(path);
        void *ud = NULL;
        lua_Alloc f = lua_getallocf(g->L, &ud);
        CHECK(ud == g);
        test_pool_bound(g, f, ud); /* first: the pool holds little yet */
        test_sizes(g, f, ud);
        test_resizes(g, f, ud);
        test_cap(g, f, ud);
        test_lua_count(g);
        sh_gen_unref(g); /* closes the state, drains its pool */
    }
    unlink(path);
    return unit_done("test_lua_alloc");
}
