/* lua_host.c — generations, tasks and the posted-task scheduler; see
 * lua_host.h. */
#include "lua_host.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <utlist.h>

#include "log.h"
#include "lua_budget.h"
#include "lua_cjson.h"
#include "lua_lib.h"
#include "watchdog.h"


#define POOL_MAX 256

static const char *const hook_names[SH_HOOK_COUNT] = {
    "on_handshake", "on_open", "on_message", "on_binary", "on_publish", "on_close",
};

const char *sh_hook_name(enum sh_hook h) { return hook_names[h]; }

/* ------------------------------------------------------------------ memory */

/* The blocks of a generation's state. A small block (1..264 bytes) is taken whole
 * from its class: from the generation's free list when it has one, else from malloc at
 * the class's size; freed, it goes back on the list unless the lists would then hold
 * more than SH_BLK_HELD_MAX bytes. The classes are malloc's own chunk sizes (glibc: 16-byte steps
 * with an 8-byte header, so 24, 40, 56, ... usable bytes): a block costs what malloc
 * would have charged for the size asked. Lua gives every block's size back when it
 * frees or resizes it (osize), so no header of ours is needed.
 * Under AddressSanitizer a block on a free list is poisoned but for its link (which
 * LeakSanitizer follows: a run that ends at os.exit leaves the lists unfreed but
 * reachable), and so are the bytes of a live block past the size Lua asked for: a use
 * after free or an overflow in C that borrowed a Lua string is still caught. */
#if defined(__SANITIZE_ADDRESS__)
#define SH_BLK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SH_BLK_ASAN 1
#endif
#endif
#ifdef SH_BLK_ASAN
#include <sanitizer/asan_interface.h>
#define BLK_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define BLK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define BLK_POISON(p, n) ((void)(p), (void)(n))
#define BLK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
#define BLK_SIZE(c) (((size_t)(c) + 1) * 16 + 8)  /* usable bytes of class c */
#define BLK_MAX BLK_SIZE(SH_BLK_CLASSES - 1)
#define BLK_CLASS(n) ((n) <= 24 ? 0 : (((n) + 7) >> 4) - 1) /* n in 1..BLK_MAX */

/* p, a block of class c, now holds n bytes: under ASan the rest of it is poisoned. */
static void *blk_fit(void *p, size_t c, size_t n)
{
    BLK_UNPOISON(p, n);
    BLK_POISON((char *)p + n, BLK_SIZE(c) - n);
    return p;
}

/* A block of n bytes (its class's, when small; usable up to n). */
static void *blk_take(sh_gen *g, size_t n)
{
    if (n > BLK_MAX)
        return malloc(n);
    size_t c = BLK_CLASS(n);
    void *p = g->blk_free[c];
    if (p) {
        memcpy(&g->blk_free[c], p, sizeof(void *));
        /* the next block of the list: the collector freed it a while ago, it is out of the
         * cache; fetched now, it is there when it is taken (and written into by Lua) */
        __builtin_prefetch(g->blk_free[c], 1);
        g->blk_bytes -= BLK_SIZE(c);
    } else if (!(p = malloc(BLK_SIZE(c)))) {
        return NULL;
    }
    return blk_fit(p, c, n);
}

/* Give back p, a block of n bytes from blk_take. */
static void blk_give(sh_gen *g, void *p, size_t n)
{
    if (n > BLK_MAX) {
        free(p);
        return;
    }
    size_t c = BLK_CLASS(n);
    BLK_UNPOISON(p, BLK_SIZE(c));
    if (g->blk_bytes + BLK_SIZE(c) > SH_BLK_HELD_MAX) { /* at most SH_BLK_HELD_MAX held */
        free(p);
        return;
    }
    memcpy(p, &g->blk_free[c], sizeof(void *));
    BLK_POISON((char *)p + sizeof(void *), BLK_SIZE(c) - sizeof(void *));
    g->blk_free[c] = p;
    g->blk_bytes += BLK_SIZE(c);
}

/* Return every held block to malloc (the state is closed). */
static void blk_drain(sh_gen *g)
{
    for (int c = 0; c < SH_BLK_CLASSES; c++) {
        void *p = g->blk_free[c], *next;
        for (; p; p = next) {
            BLK_UNPOISON(p, BLK_SIZE(c));
            memcpy(&next, p, sizeof next);
            free(p);
        }
        g->blk_free[c] = NULL;
    }
    g->blk_bytes = 0;
}

/* The allocator of a generation: counts its bytes; past mem_max, while a
 * task runs (or the script loads), an allocation fails, which Lua raises as
 * "not enough memory" in the code that asked. Outside (the host preparing a
 * task) it never fails for the cap, since no Lua frame could catch it. */
/* A refused allocation makes Lua collect in full (an emergency collection) and ask
 * again for the same block. The instruction budget counts no collection, so a policy
 * looping on refused allocations would run full collections until loop_stall_ms aborted
 * the process: each one is charged to the run (lua_budget.h) by the time it took, at
 * SH_BUDGET_NS_PER_INSTRUCTION, when Lua asks again, in the same run. A request that is
 * not that retry (the collector being off, there was none) charges nothing: the time
 * since was the VM's, counted, or another run's. A refused retry is not noted: Lua
 * raises at once. → 1 when this request is Lua's retry. */
static int charge_collection(sh_gen *g, const void *ptr, size_t osize, size_t nsize)
{
    int retry = ptr == g->refused_ptr && osize == g->refused_osize &&
                nsize == g->refused_nsize && g->refused_run == sh_budget_run();
    if (retry)
        sh_budget_charge((uv_hrtime() - g->refused_ns) / SH_BUDGET_NS_PER_INSTRUCTION);
    g->refused_ns = 0;
    return retry;
}

static void *gen_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sh_gen *g = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        if (ptr)
            blk_give(g, ptr, old);
        g->mem -= old;
        return NULL;
    }
    int retry = g->refused_ns && charge_collection(g, ptr, osize, nsize);
    if (g->capped && g->mem_max && nsize > old && g->mem - old + nsize > g->mem_max) {
        if (!retry) {
            g->refused_ns = uv_hrtime();
            g->refused_ptr = ptr;
            g->refused_osize = osize;
            g->refused_nsize = nsize;
            g->refused_run = sh_budget_run();
        }
        return NULL;
    }
    void *p;
    if (!ptr) {
        p = blk_take(g, nsize);
    } else if (old > BLK_MAX && nsize > BLK_MAX) {
        p = realloc(ptr, nsize);
    } else if (old <= BLK_MAX && nsize <= BLK_MAX && BLK_CLASS(old) == BLK_CLASS(nsize)) {
        p = blk_fit(ptr, BLK_CLASS(nsize), nsize); /* the block already has the room */
    } else if ((p = blk_take(g, nsize)) != NULL) {
        memcpy(p, ptr, old < nsize ? old : nsize);
        blk_give(g, ptr, old);
    }
    if (p) {
        g->mem = g->mem - old + nsize;
        g->grows += nsize > old;
    }
    return p;
}

uint64_t sh_host_runs_counted(void) { return sh_budget_armed_total(); }

size_t sh_host_lua_memory(const sh_host *h)
{
    size_t n = 0;
    for (const sh_gen *g = h->gens; g; g = g->next_gen)
        n += g->mem;
    return n;
}

/* --------------------------------------------------------------- loading */

static int msgh_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

/* Store the policy's field `name` as a registry ref if it is a function. */
static int take_hook(lua_State *L, int policy, const char *name, int *ref, char *err,
                     size_t errsz)
{
    lua_getfield(L, policy, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        *ref = LUA_NOREF;
        return 0;
    }
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errsz, "%s must be a function, got %s", name, luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* Check `routes`: keys "METHOD /path", values functions. */
static int take_routes(lua_State *L, int policy, int *ref, char *err, size_t errsz)
{
    *ref = LUA_NOREF;
    lua_getfield(L, policy, "routes");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errsz, "routes must be a table");
        lua_pop(L, 1);
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        /* the method as requests carry it (upper case: "get /x" could never match) */
        size_t ml = k ? strspn(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZ-") : 0;
        if (!k || ml == 0 || k[ml] != ' ' || k[ml + 1] != '/' || !lua_isfunction(L, -1)) {
            snprintf(err, errsz, "routes: each key must be \"METHOD /path\" (the method in upper "
                                 "case, as requests send it) and each value a function");
            lua_pop(L, 3);
            return -1;
        }
        lua_pop(L, 1);
    }
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* The directory of path ("." when it has none), into out. */
static void dir_of(const char *path, char *out, size_t outsz)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, outsz, ".");
    else if (slash == path)
        snprintf(out, outsz, "/");
    else
        snprintf(out, outsz, "%.*s", (int)(slash - path), path);
}

/* package.searchers entry for "statushost.NAME": the shipped policy
 * scripts/NAME.lua, looked up next to the running script's directory
 * (../scripts, as in a checkout and in the installed tree), then in the
 * installed data directory, then next to the binary. */
static int search_shipped(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (strncmp(name, "statushost.", 11) != 0 || !name[11] || strpbrk(name + 11, "/.\\")) {
        lua_pushfstring(L, "\n\tno shipped policy '%s'", name);
        return 1;
    }
    name += 11;
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.script_dir");
    const char *sdir = lua_tostring(L, -1);
    char exe[4096];
    size_t n = sizeof exe;
    char exedir[4096] = "";
    if (uv_exepath(exe, &n) == 0)
        dir_of(exe, exedir, sizeof exedir);
    const char *exed = exedir[0] ? exedir : NULL;
    const char *dirs[] = {sdir, SH_DATADIR, exed, exed};
    const char *fmts[] = {"%s/../scripts/%s.lua", "%s/scripts/%s.lua",
                          "%s/../share/statushost/scripts/%s.lua", "%s/../scripts/%s.lua"};
    luaL_Buffer tried;
    luaL_buffinit(L, &tried);
    for (int i = 0; i < 4; i++) {
        if (!dirs[i])
            continue;
        char path[8192];
        snprintf(path, sizeof path, fmts[i], dirs[i], name);
        FILE *f = fopen(path, "r");
        if (f) {
            fclose(f);
            if (luaL_loadfilex(L, path, "t") != LUA_OK)
                return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
                                  lua_tostring(L, 1), path, lua_tostring(L, -1));
            lua_pushstring(L, path);
            return 2;
        }
        luaL_addstring(&tried, "\n\tno file '");
        luaL_addstring(&tried, path);
        luaL_addstring(&tried, "'");
    }
    luaL_pushresult(&tried);
    return 1;
}

/* package.searchers' searcher of Lua files (loadlib.c's searcher_Lua), text chunks only:
 * the file package.searchpath finds on package.path. */
static int search_text(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, LUA_LOADLIBNAME);
    if (!lua_istable(L, -1))
        return luaL_error(L, "'package' must be a table");
    lua_getfield(L, -1, "searchpath");
    lua_pushvalue(L, 1);
    if (lua_getfield(L, -3, "path") != LUA_TSTRING)
        return luaL_error(L, "'package.path' must be a string");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2))
        return 1; /* where it looked */
    const char *filename = lua_tostring(L, -2);
    if (!filename)
        return luaL_error(L, "'package.searchpath' must return a file name");
    if (luaL_loadfilex(L, filename, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, filename,
                          lua_tostring(L, -1));
    lua_pushstring(L, filename);
    return 2;
}

/* package.path starts with the script's directory; "statushost.NAME"
 * finds the shipped policies (search_shipped); Lua files load as text chunks only
 * (search_text: a binary chunk can crash the VM). */
void sh_host_module_paths(lua_State *L, const char *script)
{
    char dir[4096];
    dir_of(script, dir, sizeof dir);
    lua_pushstring(L, dir);
    lua_setfield(L, LUA_REGISTRYINDEX, "statushost.script_dir");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_getfield(L, -1, "searchers");
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = n; i >= 2; i--) { /* after the preload searcher */
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, search_shipped);
    lua_rawseti(L, -2, 2);
    lua_pushcfunction(L, search_text); /* in place of Lua's, now the third */
    lua_rawseti(L, -2, 3);
    lua_pop(L, 2);
}

/* coroutine.resume / coroutine.close of a task's coroutine: refused. A
 * task is resumed by the host only (its pending wait would otherwise be
 * resumed twice). */
static int is_task_thread(lua_State *co)
{
    sh_task *t = *(sh_task **)lua_getextraspace(co);
    return t && t->co == co;
}

/* coroutine.resume and coroutine.close: refused on a task's coroutine; both
 * are tracked for the instruction budget (lua_budget.h), which must reach the
 * coroutine that runs (a close runs its pending __close handlers). Upvalues:
 * the original and its name. */
static int guarded_co(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD); /* here, where the error can name the function */
    lua_State *co = lua_tothread(L, 1);
    if (is_task_thread(co))
        return luaL_error(L, "coroutine.%s: a hook's coroutine belongs to statushost "
                             "and cannot be resumed or closed from Lua",
                          lua_tostring(L, lua_upvalueindex(2)));
    int cst = lua_status(co);
    if (cst != LUA_OK && cst != LUA_YIELD && sh_budget_spent(co) &&
        strcmp(lua_tostring(L, lua_upvalueindex(2)), "close") == 0) {
        lua_pushboolean(L, 0); /* as Lua's close of a coroutine that failed, its handlers */
        lua_pushvalue(co, -1); /* left be: they would run uncounted (sh_budget_spent) */
        lua_xmove(co, L, 1);
        return 2;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    if (sh_budget_enter(co) != 0)
        return luaL_error(L, "coroutine.%s: coroutines nested too deep",
                          lua_tostring(L, lua_upvalueindex(2)));
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sh_budget_leave();
    if (st != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

static void guard_coroutine(lua_State *L, const char *name)
{
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, name);
    lua_pushstring(L, name);
    lua_pushcclosure(L, guarded_co, 2);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* coroutine.wrap runs its coroutine under the budget too (sh_lib_guard_wrap). */
static const sh_lib_co_guard budget_guard = {sh_budget_enter, sh_budget_leave,
                                              sh_budget_spent, sh_budget_over};

/* setmetatable, refusing a metatable with __gc: Lua runs a finalizer with
 * hooks off (lgc.c GCTM), so the instruction budget could not stop one that
 * loops, and it would block the loop. Upvalue: the original. */
static int no_gc_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        int gc = lua_rawget(L, 2) != LUA_TNIL;
        lua_pop(L, 1);
        if (gc)
            return luaL_error(L, "setmetatable: __gc metamethods are not available to policies "
                                 "(a finalizer runs outside the instruction budget)");
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int no_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook: not available to policies (the instruction budget "
                         "owns the hook)");
}

/* load() of text chunks only: a binary chunk can crash the VM. */
static int text_load(lua_State *L)
{
    int n = lua_gettop(L);
    if (n >= 3 && !lua_isnil(L, 3)) {
        const char *mode = lua_tostring(L, 3);
        if (!mode || strcmp(mode, "t") != 0)
            return luaL_error(L, "load: only text chunks (mode \"t\") are allowed");
    }
    lua_settop(L, n > 4 ? n : 4);
    lua_pushstring(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
}

/* loadfile() of text chunks only, as load (upvalue: the original). */
static int text_loadfile(lua_State *L)
{
    int n = lua_gettop(L);
    if (n >= 2 && !lua_isnil(L, 2)) {
        const char *mode = lua_tostring(L, 2);
        if (!mode || strcmp(mode, "t") != 0)
            return luaL_error(L, "loadfile: only text chunks (mode \"t\") are allowed");
    }
    lua_settop(L, n > 3 ? n : 3);
    lua_pushstring(L, "t");
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 3, LUA_MULTRET);
    return lua_gettop(L);
}

/* dofile() of text chunks only (lbaselib.c's, the mode "t"). */
static int dofile_cont(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L) - 1;
}

static int text_dofile(lua_State *L)
{
    const char *fname = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, fname, "t") != LUA_OK)
        return lua_error(L);
    lua_callk(L, 0, LUA_MULTRET, 0, dofile_cont);
    return dofile_cont(L, 0, 0);
}

/* type(v), as the base library's, but the names are the closure's upvalues:
 * Lua's pushes its result with lua_pushstring, which hashes and looks the name
 * up in the string table at every call (a policy calls type a few times per
 * message). Upvalue t + 1: the name of type t. */
static int fast_type(lua_State *L)
{
    int t = lua_type(L, 1);
    luaL_argcheck(L, t != LUA_TNONE, 1, "value expected");
    lua_pushvalue(L, lua_upvalueindex(t + 1));
    return 1;
}

/* os.setlocale only reads the locale: it is the process's, and a policy's "de_DE" made every
 * number a decimal comma in /metrics ("0,005": refused by Prometheus) and in lua-cjson's JSON
 * ({"a":1,5}), for every generation */
static int query_setlocale(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        return luaL_error(L, "os.setlocale: the locale is the process's and stays \"C\" (numbers "
                             "in /metrics, JSON and logs are written with it); call "
                             "os.setlocale() or os.setlocale(nil, category) to read it");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* os.exit from a policy ends the process: one line says so (it ended with no other), then
 * it exits as Lua's would, without closing the state (a hook's coroutine runs inside it) */
static int logged_exit(lua_State *L)
{
    int status = lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE)
                                     : (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    sh_task *t = sh_task_current(L);
    sh_error(t && t->log_id[0] ? t->log_id : NULL, "the policy called os.exit(%d)%s%s: exiting",
             status, t ? " in " : " while the script loads", t ? t->what : "");
    exit(status);
}

static void open_libs(lua_State *L, sh_gen *g, sh_api_open_fn open_api)
{
    luaL_openlibs(L);
    /* io's file handles have a __gc: with their metatable in reach, a policy could put a
     * finalizer of its own there (Lua runs them with hooks off: no budget stops one) */
    luaL_getmetatable(L, LUA_FILEHANDLE);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    for (int t = 0; t < LUA_NUMTYPES; t++)
        lua_pushstring(L, lua_typename(L, t));
    lua_pushcclosure(L, fast_type, LUA_NUMTYPES);
    lua_setglobal(L, "type");
    sh_cjson_preload(L, g); /* "cjson", "cjson.safe": lua-cjson, guarded (lua_cjson.h) */
    guard_coroutine(L, "resume");
    guard_coroutine(L, "close");
    lua_getglobal(L, "coroutine");
    sh_lib_guard_wrap(L, -1, &budget_guard);
    sh_lib_guard_xpcall(L, &budget_guard);
    lua_pop(L, 1);
    /* debug: traceback only, and sethook raises */
    lua_createtable(L, 0, 2);
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_setfield(L, -3, "traceback");
    lua_pop(L, 1);
    lua_pushcfunction(L, no_sethook);
    lua_setfield(L, -2, "sethook");
    lua_pushvalue(L, -1);
    lua_setglobal(L, "debug");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_insert(L, -2);
    lua_setfield(L, -2, "debug");
    lua_pop(L, 1);
    lua_getglobal(L, "load");
    lua_pushcclosure(L, text_load, 1);
    lua_setglobal(L, "load");
    lua_getglobal(L, "loadfile");
    lua_pushcclosure(L, text_loadfile, 1);
    lua_setglobal(L, "loadfile");
    lua_pushcfunction(L, text_dofile);
    lua_setglobal(L, "dofile");
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, no_gc_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "setlocale");
    lua_pushcclosure(L, query_setlocale, 1);
    lua_setfield(L, -2, "setlocale");
    lua_pushcfunction(L, logged_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
    open_api(L, g);
}

/* Run the script's main chunk; leaves its table on the stack. */
static int run_script(sh_gen *g, const char *script, uint64_t budget, char *err, size_t errsz)
{
    lua_State *L = g->L;
    lua_pushcfunction(L, msgh_traceback);
    int base = lua_gettop(L);
    /* a FIFO put in the script's place would block the loop's reload forever */
    struct stat st;
    int fd = open(script, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    int regular = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (fd >= 0)
        close(fd);
    if (fd >= 0 && !regular) {
        snprintf(err, errsz, "%s: not a regular file", script);
        lua_settop(L, base - 1);
        return -1;
    }
    if (luaL_loadfilex(L, script, "t") != LUA_OK) {
        snprintf(err, errsz, "%s", lua_tostring(L, -1));
        lua_settop(L, base - 1);
        return -1;
    }
    g->loading = 1;
    g->capped = 1;
    sh_budget_begin(L, budget);
    int rc = lua_pcall(L, 0, 1, base);
    sh_budget_end(L);
    g->capped = 0;
    g->loading = 0;
    if (rc == LUA_ERRMEM && g->mem_max) {
        snprintf(err, errsz, "%s: not enough memory (lua_max_memory %zu: the main chunk runs "
                 "under the value --set gives, else the default)", script, g->mem_max);
        lua_settop(L, base - 1);
        return -1;
    }
    if (rc != LUA_OK) {
        snprintf(err, errsz, "%s: %s", script, lua_tostring(L, -1));
        lua_settop(L, base - 1);
        return -1;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errsz, "%s: the script must return a table (got %s)", script,
                 luaL_typename(L, -1));
        lua_settop(L, base - 1);
        return -1;
    }
    lua_remove(L, base);
    return 0;
}

/* ------------------------------------------------------------ the policy */

static const char *const policy_keys[] = {
    "on_handshake", "on_open", "on_message", "on_binary", "on_publish", "on_close",
    "on_config", "routes", "config", "lib", NULL,
};

/* Edit distance of a and b, ASCII case folded; large when either is long. */
static int distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 40 || m > 40)
        return 99;
    int d[41][41];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int ca = a[i - 1] | 0x20, cb = b[j - 1] | 0x20;
            int best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == (b[j - 2] | 0x20) && (a[i - 2] | 0x20) == cb &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1; /* transposition */
            d[i][j] = best;
        }
    return d[n][m];
}

/* Every key of the policy table is a hook, routes, config or lib: a typo is
 * a load error that names the likely key. */
static int check_keys(lua_State *L, int policy, char *err, size_t errsz)
{
    lua_pushnil(L);
    while (lua_next(L, policy)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errsz, "the policy table has a %s key: only hooks (on_*), routes "
                                 "and config belong there", luaL_typename(L, -1));
            lua_pop(L, 1);
            return -1;
        }
        const char *k = lua_tostring(L, -1);
        const char *best = NULL;
        int bestd = 99, known = 0;
        for (const char *const *p = policy_keys; *p; p++) {
            if (strcmp(k, *p) == 0) {
                known = 1;
                break;
            }
            int d = distance(k, *p);
            if (d < bestd) {
                bestd = d;
                best = *p;
            }
        }
        if (!known) {
            if (best && bestd <= 3)
                snprintf(err, errsz, "the policy table has an unknown key \"%s\": did you mean "
                                     "\"%s\"?", k, best);
            else
                snprintf(err, errsz, "the policy table has an unknown key \"%s\" (known: "
                                     "on_handshake, on_open, on_message, on_binary, on_publish, "
                                     "on_close, on_config, routes, config, lib)", k);
            lua_pop(L, 1);
            return -1;
        }
    }
    return 0;
}

static void take_limits(sh_gen *g)
{
    const sh_config *c = &g->cfg;
    g->limits = (sh_limits){
        .max_head_bytes = c->max_head_bytes,
        .max_body_bytes = c->max_body_bytes,
        .max_connections = c->max_connections,
        .max_message_bytes = c->max_message_bytes,
        .max_send_buffer = c->max_send_buffer,
        .handshake_timeout_ms = c->handshake_timeout_ms,
        .keepalive_timeout_ms = c->keepalive_timeout_ms,
        .ping_interval_ms = c->ping_interval_ms,
        .ping_timeout_ms = c->ping_timeout_ms,
        .close_timeout_ms = c->close_timeout_ms,
        .allowed_origins = c->allowed_origins,
        .permessage_deflate = c->permessage_deflate,
    };
    g->mem_max = c->lua_max_memory;
}

/* on_config(cfg), when the policy has it: it sees the merged config once,
 * at every load (start, --check, reload), and may refuse it with
 * false, "why" (or by raising). No waits: it runs like the main chunk. */
static int run_on_config(sh_gen *g, int policy, char *err, size_t errsz)
{
    lua_State *L = g->L;
    lua_pushcfunction(L, msgh_traceback);
    lua_insert(L, -2); /* under on_config, which take_policy left at the top */
    int base = lua_gettop(L) - 1;
    if (lua_isnil(L, -1)) {
        lua_settop(L, policy - 1);
        return 0;
    }
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errsz, "on_config must be a function, got %s", luaL_typename(L, -1));
        lua_settop(L, policy - 1);
        return -1;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.module");
    lua_getfield(L, -1, "config");
    lua_remove(L, -2);
    g->loading = 1;
    g->capped = 1;
    sh_budget_begin(L, g->cfg.lua_max_instructions);
    int rc = lua_pcall(L, 1, 2, base);
    sh_budget_end(L);
    g->capped = 0;
    g->loading = 0;
    int ok = 0;
    if (rc == LUA_ERRMEM && g->mem_max)
        snprintf(err, errsz, "config: not enough memory (lua_max_memory %zu: on_config runs "
                 "under the value --set gives, else the default)", g->mem_max);
    else if (rc != LUA_OK)
        snprintf(err, errsz, "config: %s", lua_tostring(L, -1));
    else if ((lua_isnil(L, -2) && lua_isnil(L, -1)) ||
             (lua_isboolean(L, -2) && lua_toboolean(L, -2)))
        ok = 1;
    else if (lua_isnil(L, -2)) /* Lua's nil, "why" of a failure: not an accept */
        snprintf(err, errsz, "config: on_config must return nothing, true, or false, \"why\" "
                 "(it returned nil, %s)", lua_isstring(L, -1) ? lua_tostring(L, -1)
                                                              : luaL_typename(L, -1));
    else if (lua_isboolean(L, -2))
        snprintf(err, errsz, "config: %s",
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "refused by on_config");
    else
        snprintf(err, errsz, "config: on_config must return nothing, true, or false, \"why\"");
    lua_settop(L, policy - 1);
    return ok ? 0 : -1;
}

/* real_ip_from as parsed CIDR blocks. */
static int take_real_ip(sh_gen *g, char *err, size_t errsz)
{
    size_t n = 0;
    for (char **p = g->cfg.real_ip_from; p && *p; p++)
        n++;
    if (!n)
        return 0;
    g->real_ip = calloc(n, sizeof *g->real_ip);
    if (!g->real_ip) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (sh_cidr_parse(g->cfg.real_ip_from[i], &g->real_ip[i]) != 0) {
            snprintf(err, errsz, "config.real_ip_from: \"%s\" is not an address or CIDR block",
                     g->cfg.real_ip_from[i]);
            return -1;
        }
    g->nreal_ip = n;
    return 0;
}

/* Resolve hooks, routes and config from the policy table at the top. */
static int take_fields(sh_gen *g, const char *const *sets, size_t nsets, char *err, size_t errsz)
{
    lua_State *L = g->L;
    int policy = lua_gettop(L);
    if (check_keys(L, policy, err, errsz) != 0)
        return -1;
    for (int h = 0; h < SH_HOOK_COUNT; h++)
        if (take_hook(L, policy, hook_names[h], &g->hook_ref[h], err, errsz) != 0)
            return -1;
    if (take_routes(L, policy, &g->routes_ref, err, errsz) != 0)
        return -1;
    lua_getfield(L, policy, "config");
    int pc = 0;
    if (lua_istable(L, -1))
        pc = lua_gettop(L);
    else if (!lua_isnil(L, -1)) {
        snprintf(err, errsz, "config must be a table");
        return -1;
    }
    if (sh_config_merge(L, pc, sets, nsets, err, errsz) != 0)
        return -1;
    if (sh_config_read(L, -1, &g->cfg, err, errsz) != 0)
        return -1;
    take_limits(g);
    if (take_real_ip(g, err, errsz) != 0)
        return -1;
    /* fill host.config in place: the script may have kept a reference to it
     * while its main chunk ran (it is empty until now) */
    int merged = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.module");
    lua_getfield(L, -1, "config");
    lua_pushnil(L);
    lua_setmetatable(L, -2); /* drops the "not yet" guard (lua_api.c) */
    lua_pushnil(L);
    while (lua_next(L, merged)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_settop(L, policy);
    lua_getfield(L, policy, "on_config");
    return 0;
}

struct take {
    sh_gen *g;
    const char *const *sets;
    size_t nsets;
    char *err;
    size_t errsz;
    int rc;
};

/* take_fields, called protected: the policy table's metamethods (__index,
 * and its config table's) are policy code, which may raise or loop.
 * Arguments: the struct take, the policy table. → its on_config. */
static int take_protected(lua_State *L)
{
    struct take *t = lua_touserdata(L, 1);
    lua_remove(L, 1);
    t->rc = take_fields(t->g, t->sets, t->nsets, t->err, t->errsz);
    return t->rc == 0 ? 1 : 0;
}

static uint64_t load_budget(const char *const *sets, size_t nsets);

/* Resolve hooks, routes and config from the policy table at the top, under
 * the main chunk's budget, then run on_config. */
static int take_policy(sh_gen *g, const char *const *sets, size_t nsets, char *err, size_t errsz)
{
    lua_State *L = g->L;
    int policy = lua_gettop(L);
    struct take t = {g, sets, nsets, err, errsz, -1};
    lua_pushcfunction(L, msgh_traceback);
    lua_pushcfunction(L, take_protected);
    lua_pushlightuserdata(L, &t);
    lua_pushvalue(L, policy);
    g->loading = 1;
    g->capped = 1;
    sh_budget_begin(L, load_budget(sets, nsets));
    int rc = lua_pcall(L, 2, 1, policy + 1);
    sh_budget_end(L);
    g->capped = 0;
    g->loading = 0;
    if (rc != LUA_OK || t.rc != 0) {
        if (rc != LUA_OK)
            snprintf(err, errsz, "the policy table: %s", lua_tostring(L, -1));
        lua_settop(L, policy - 1);
        return -1;
    }
    lua_remove(L, policy + 1); /* the message handler: on_config is at the top */
    return run_on_config(g, policy, err, errsz);
}



/* The budget of the main chunk: lua_max_instructions as --set gives it, or
 * its default (the script's own config is not known before it has run). */
static uint64_t load_budget(const char *const *sets, size_t nsets)
{
    uint64_t budget = SH_LUA_MAX_INSTRUCTIONS_DEFAULT;
    for (size_t i = 0; i < nsets; i++)
        if (strncmp(sets[i], "lua_max_instructions=", 21) == 0) {
            char *end;
            unsigned long long v = strtoull(sets[i] + 21, &end, 10);
            if (*end == '\0' && v >= 1000)
                budget = v;
        }
    return budget;
}

/* lua_max_memory for the main chunk, the policy table's checks and on_config, which run
 * before the merged config is known: as --set gives it, else the default (0: no cap).
 * A value the config then refuses fails the load anyway. */
static size_t load_memory(const char *const *sets, size_t nsets)
{
    size_t cap = SH_LUA_MAX_MEMORY_DEFAULT;
    for (size_t i = 0; i < nsets; i++)
        if (strncmp(sets[i], "lua_max_memory=", 15) == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(sets[i] + 15, &end, 10);
            if (sets[i][15] >= '0' && sets[i][15] <= '9' && *end == '\0' && errno == 0 &&
                v <= SIZE_MAX) /* strtoull would read "-5" as a huge value */
                cap = (size_t)v;
        }
    return cap;
}

/* An error outside any protected call: the host's own Lua calls are
 * protected where data from outside is pushed (sh_task_pcall), so this is the
 * system running out of memory in a small host-side push. Fatal, by design:
 * one line, then abort() for the supervisor to restart the process. */
static int lua_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "statushost: fatal: Lua error outside a hook (%s): aborting\n",
            msg ? msg : "no message");
    abort();
}

static void gen_free(sh_gen *g)
{
    if (g->L)
        lua_close(g->L);
    blk_drain(g);
    sh_config_free(&g->cfg);
    free(g->real_ip);
    free(g->pool);
    free(g);
}

int sh_gen_load(sh_host *host, sh_api_open_fn open_api, const char *script,
                const char *const *sets, size_t nsets, sh_gen **out, char *err, size_t errsz)
{
    if (sh_budget_install() != 0) {
        snprintf(err, errsz, "the instruction budget's CPU-time tick: %s", strerror(errno));
        return -1;
    }
    sh_gen *g = calloc(1, sizeof *g);
    lua_State **pool = calloc(POOL_MAX, sizeof *pool);
    if (!g || !pool) {
        free(g);
        free(pool);
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    g->pool = pool;
    g->host = host;
    g->refs = 1;
    g->routes_ref = LUA_NOREF;
    for (int h = 0; h < SH_HOOK_COUNT; h++)
        g->hook_ref[h] = LUA_NOREF;
    g->L = lua_newstate(gen_alloc, g);
    if (!g->L) {
        snprintf(err, errsz, "out of memory");
        gen_free(g);
        return -1;
    }
    lua_atpanic(g->L, lua_panic);
    *(sh_task **)lua_getextraspace(g->L) = NULL;
    open_libs(g->L, g, open_api);
    sh_host_module_paths(g->L, script);
    lua_newtable(g->L);
    g->pool_ref = luaL_ref(g->L, LUA_REGISTRYINDEX);
    g->mem_max = load_memory(sets, nsets);
    sh_lib_shared_begin();
    if (run_script(g, script, load_budget(sets, nsets), err, errsz) != 0 ||
        take_policy(g, sets, nsets, err, errsz) != 0) {
        sh_lib_shared_end(0); /* a failed load changes no cap */
        gen_free(g);
        return -1;
    }
    /* the newest generation's config sets the shared dicts' caps, then its host.shared's */
    sh_lib_shared_limits(g->cfg.shared_dict_max_bytes, g->cfg.shared_dict_total_bytes);
    sh_lib_shared_end(1);
    if (host) {
        g->id = ++host->next_gen_id; /* failed loads take no number */
        DL_PREPEND2(host->gens, g, prev_gen, next_gen);
    } else {
        g->id = 1;
    }
    *out = g;
    return 0;
}

void sh_gen_ref(sh_gen *g) { g->refs++; }

void sh_gen_unref(sh_gen *g)
{
    if (!g || --g->refs > 0)
        return;
    assert(g->tasks == NULL);
    if (g->host)
        DL_DELETE2(g->host->gens, g, prev_gen, next_gen);
    gen_free(g);
}

int sh_gen_has_hook(const sh_gen *g, enum sh_hook h) { return g->hook_ref[h] != LUA_NOREF; }

void sh_gen_shutdown(sh_gen *g)
{
    g->closing = 1;
    sh_task *t, *tmp;
    DL_FOREACH_SAFE2(g->tasks, t, tmp, gen_next)
        if (t->state == SH_TASK_SUSPENDED)
            sh_task_abort(t, "closed");
}

/* ----------------------------------------------------------------- tasks */

/* pool[new thread] = true → the thread (run protected: it allocates). */
static int thread_new_p(lua_State *L)
{
    sh_gen *g = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->pool_ref);
    lua_newthread(L);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -4); /* anchor: pool[co] = true */
    return 1;
}

/* A coroutine for a task, or NULL when out of memory. */
static lua_State *thread_take(sh_gen *g)
{
    if (g->npool > 0)
        return g->pool[--g->npool];
    lua_State *L = g->L;
    lua_pushcfunction(L, thread_new_p);
    lua_pushlightuserdata(L, g);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return NULL;
    }
    lua_State *co = lua_tothread(L, -1);
    lua_pop(L, 1);
    return co;
}

int sh_task_pcall(sh_task *t, lua_CFunction build, void *ud)
{
    lua_State *co = t->co;
    int top = lua_gettop(co);
    if (!lua_checkstack(co, 3))
        return -1;
    lua_pushcfunction(co, build);
    lua_pushlightuserdata(co, ud);
    if (lua_pcall(co, 1, LUA_MULTRET, 0) != LUA_OK) {
        lua_settop(co, top);
        return -1;
    }
    return lua_gettop(co) - top;
}

/* sh_task_push_strings pushes strings of this many bytes in all without a protected call */
#define SH_PUSH_DIRECT_MAX 16384

/* sh_task_push_strings's builder. */
static int push_lstring_p(lua_State *L)
{
    const sh_lstring *s = lua_touserdata(L, 1);
    for (size_t i = 0; i < s->n; i++)
        lua_pushlstring(L, s->v[i].p, s->v[i].len);
    return (int)s->n;
}

int sh_task_push_strings(sh_task *t, const sh_lstring *s)
{
    /* The usual case, a few small strings outside any run (the cap off): pushed as they
     * are, without the protected call's cost (a third of a hook's set-up). Lua raises
     * there only if malloc fails for these few bytes: fatal, as every small push of the
     * host (lua_panic). Long ones go protected: their malloc may fail alone. */
    size_t total = 0;
    for (size_t i = 0; i < s->n; i++)
        total += s->v[i].len;
    if (!t->gen->capped && total <= SH_PUSH_DIRECT_MAX && lua_checkstack(t->co, (int)s->n)) {
        for (size_t i = 0; i < s->n; i++)
            lua_pushlstring(t->co, s->v[i].p, s->v[i].len);
        return 0;
    }
    return sh_task_pcall(t, push_lstring_p, (void *)s) < 0 ? -1 : 0;
}

static void thread_release(sh_gen *g, lua_State *co, int reusable)
{
    if (reusable && g->npool < POOL_MAX && lua_status(co) == LUA_OK) {
        lua_settop(co, 0);
        g->pool[g->npool++] = co;
        return;
    }
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->pool_ref);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3); /* unanchor; the collector frees it */
    lua_pop(L, 1);
}

sh_task *sh_task_new(sh_gen *g, sh_owner *owner, const char *what)
{
    sh_task *t = sh_zalloc(sizeof *t);
    if (!t)
        return NULL;
    if (!(t->co = thread_take(g))) {
        free(t);
        return NULL;
    }
    if (!owner)
        owner = &g->detached;
    t->gen = g;
    t->what = what;
    *(sh_task **)lua_getextraspace(t->co) = t;
    sh_gen_ref(g);
    DL_APPEND2(g->tasks, t, gen_prev, gen_next);
    size_t idlen = strnlen(owner->id, sizeof t->log_id - 1);
    memcpy(t->log_id, owner->id, idlen); /* zeroed: terminated */
    if (owner->gone) {
        t->orphaned = 1; /* its owner ended already: the task runs orphaned */
    } else {
        t->owner = owner;
        DL_APPEND2(owner->tasks, t, owner_prev, owner_next);
        owner->ntasks++;
    }
    if (g->host)
        g->host->metrics->lua_tasks_current++;
    return t;
}

static void owner_unlink(sh_task *t)
{
    if (!t->owner)
        return;
    DL_DELETE2(t->owner->tasks, t, owner_prev, owner_next);
    t->owner->ntasks--;
    if (t->state == SH_TASK_SUSPENDED)
        t->owner->nwaiting--;
    t->owner = NULL;
}

void sh_task_push_hook(sh_task *t, enum sh_hook h)
{
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->gen->hook_ref[h]);
}

static void task_free(sh_task *t, int reusable)
{
    sh_gen *g = t->gen;
    owner_unlink(t);
    DL_DELETE2(g->tasks, t, gen_prev, gen_next);
    *(sh_task **)lua_getextraspace(t->co) = NULL;
    thread_release(g, t->co, reusable);
    if (g->host)
        g->host->metrics->lua_tasks_current--;
    free(t);
    sh_gen_unref(g);
}

void sh_task_discard(sh_task *t)
{
    assert(t->state == SH_TASK_NEW);
    lua_settop(t->co, 0);
    task_free(t, 1);
}

static void task_finish(sh_task *t, int status, int nres)
{
    if (t->done)
        t->done(t, status, nres, t->done_arg);
    task_free(t, status == LUA_OK);
}

/* Log a failed run with its traceback and tell the owner. */
static void task_error(sh_task *t, const char *msg)
{
    sh_gen *g = t->gen;
    luaL_traceback(g->L, t->co, msg, 0);
    sh_error(t->log_id[0] ? t->log_id : NULL, "lua error in %s: %s", t->what,
             lua_tostring(g->L, -1));
    lua_pop(g->L, 1);
    if (g->host)
        g->host->metrics->lua_errors++;
    if (t->owner && t->owner->failed)
        t->owner->failed(t->owner);
}

/* A run that failed leaves the to-be-closed variables of its stack open (lua_resume
 * unwinds nothing on an error), and a policy cannot coroutine.close a hook's coroutine:
 * their __close handlers run here, after the error was logged, as a run of their own
 * (budget, cap, watchdog) in which nothing may wait; an error they raise is logged too.
 * Not after a run the budget stopped (spent: sh_budget_spent): they would run uncounted,
 * and they are that run's code, which raises at its next instruction. */
static void task_close(sh_task *t, int spent)
{
    lua_State *co = t->co;
    sh_gen *g = t->gen;
    lua_State *L = g->L;
    if (spent || !lua_checkstack(co, 1) || !lua_checkstack(L, 2))
        return;
    lua_pushvalue(co, -1); /* the run's error (it stays on co for the handlers), */
    lua_xmove(co, L, 1);   /* to tell a handler's from it */
    t->state = SH_TASK_CLOSING;
    sh_budget_begin(co, g->cfg.lua_max_instructions);
    g->capped = 1;
    sh_watchdog_note(t->what, t->log_id);
    g->running = t;
    int st = lua_resetthread(co); /* the run's error status when the handlers raise none */
    g->running = NULL;
    sh_watchdog_note(NULL, NULL);
    sh_budget_end(co);
    g->capped = 0;
    if (st != LUA_OK) {
        lua_xmove(co, L, 1);
        if (!lua_rawequal(L, -1, -2)) {
            const char *msg = lua_tostring(L, -1);
            sh_error(t->log_id[0] ? t->log_id : NULL, "lua error in %s (a __close handler): %s",
                     t->what, msg ? msg : luaL_typename(L, -1));
            if (g->host)
                g->host->metrics->lua_errors++;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_settop(co, 0);
}

/* Resume t with its nargs values: the one place Lua runs after loading. */
static void task_run(sh_task *t)
{
    lua_State *co = t->co;
    sh_gen *g = t->gen;
    int nres = 0;
    t->state = SH_TASK_RUNNING;
    sh_budget_begin(co, g->cfg.lua_max_instructions);
    g->capped = 1;
    sh_watchdog_note(t->what, t->log_id);
    g->running = t;
    int st = lua_resume(co, g->L, t->nargs, &nres);
    int spent = st != LUA_OK && st != LUA_YIELD && sh_budget_spent(co);
    g->running = NULL;
    sh_watchdog_note(NULL, NULL);
    sh_budget_end(co);
    g->capped = 0;
    if (st == LUA_YIELD) {
        if (t->state == SH_TASK_SUSPENDED)
            return; /* in a host call; its completion wakes us */
        lua_pop(co, nres);
        task_error(t, "coroutine.yield() outside a host call (use host.sleep or a coroutine "
                      "of your own)");
        task_finish(t, LUA_ERRRUN, 0);
        return;
    }
    if (st != LUA_OK) {
        const char *msg = lua_tostring(co, -1);
        task_error(t, msg ? msg : luaL_typename(co, -1));
        nres = 0;
        task_close(t, spent);
    }
    task_finish(t, st, nres);
}

static void on_waker(uv_idle_t *i);

static void post(sh_task *t, int nargs)
{
    sh_host *h = t->gen->host;
    if (t->state == SH_TASK_SUSPENDED && t->owner)
        t->owner->nwaiting--;
    assert(t->state != SH_TASK_READY && t->state != SH_TASK_RUNNING);
    t->state = SH_TASK_READY;
    t->nargs = nargs;
    t->ready_next = NULL;
    if (h->ready_tail)
        h->ready_tail->ready_next = t;
    else
        h->ready = t;
    h->ready_tail = t;
    if (h->started && !uv_is_active((uv_handle_t *)&h->waker))
        uv_idle_start(&h->waker, on_waker);
}

void sh_host_run(sh_host *h)
{
    /* The tasks queued when this pass starts; those they queue run at the next pass, one
     * loop iteration later (the waker keeps the loop from waiting meanwhile): a chain of
     * tasks each starting the next (host.spawn) cannot hold the loop. */
    sh_task *last = h->ready_tail;
    while (h->ready) {
        sh_task *t = h->ready;
        h->ready = t->ready_next;
        if (!h->ready)
            h->ready_tail = NULL;
        t->ready_next = NULL;
        task_run(t);
        if (t == last)
            break;
    }
    if (h->started && !h->ready)
        uv_idle_stop(&h->waker);
    if (h->started && h->closing) {
        h->started = 0;
        uv_close((uv_handle_t *)&h->runner, NULL);
        uv_close((uv_handle_t *)&h->waker, NULL);
    }
}

static void on_runner(uv_check_t *c) { sh_host_run(c->data); }
static void on_waker(uv_idle_t *i) { sh_host_run(i->data); }

void sh_host_init(sh_host *h, uv_loop_t *loop, sh_metrics *m, const char *instance)
{
    memset(h, 0, sizeof *h);
    h->loop = loop;
    h->metrics = m;
    snprintf(h->instance, sizeof h->instance, "%s", instance);
    if (!loop)
        return;
    uv_check_init(loop, &h->runner);
    h->runner.data = h;
    uv_check_start(&h->runner, on_runner);
    uv_unref((uv_handle_t *)&h->runner);
    uv_idle_init(loop, &h->waker);
    h->waker.data = h;
    h->started = 1;
}

void sh_host_close(sh_host *h)
{
    if (!h->started || h->closing)
        return;
    h->closing = 1; /* closed by the runner once the posted tasks have run */
    uv_ref((uv_handle_t *)&h->runner);
    if (!uv_is_active((uv_handle_t *)&h->waker))
        uv_idle_start(&h->waker, on_waker);
}

void sh_task_start(sh_task *t, int nargs, sh_task_done_fn done, void *arg)
{
    assert(t->state == SH_TASK_NEW);
    t->done = done;
    t->done_arg = arg;
    post(t, nargs);
}

sh_task *sh_task_current(lua_State *L)
{
    sh_task *t = *(sh_task **)lua_getextraspace(L);
    return t && t->co == L ? t : NULL;
}

sh_task *sh_task_running(sh_gen *g, lua_State *L)
{
    sh_task *t = sh_task_current(L);
    return t ? t : g->running;
}

int sh_task_suspend(lua_State *L, sh_task_cancel_fn cancel, void *op)
{
    sh_task *t = sh_task_current(L);
    if (!t)
        return luaL_error(L, "this call waits, so it must run in a hook's coroutine "
                             "(not in a coroutine of your own)");
    assert(cancel != NULL && t->state == SH_TASK_RUNNING);
    t->cancel = cancel;
    t->op = op;
    t->state = SH_TASK_SUSPENDED;
    if (t->owner)
        t->owner->nwaiting++;
    return lua_yield(L, 0);
}

int sh_task_doomed(const sh_task *t)
{
    return t->gen->closing || t->orphaned;
}

void sh_task_wake(sh_task *t, int nres)
{
    assert(t->state == SH_TASK_SUSPENDED);
    t->cancel = NULL;
    t->op = NULL;
    post(t, nres);
}

void sh_task_abort(sh_task *t, const char *reason)
{
    assert(t->state == SH_TASK_SUSPENDED);
    sh_task_cancel_fn cancel = t->cancel;
    void *op = t->op;
    t->cancel = NULL;
    t->op = NULL;
    cancel(t, op);
    /* often called from inside another task's run (conn:unsubscribe, a close
     * inside conn:send): the pushes are the host's, onto a coroutine with no
     * handler, so the cap must not make them raise */
    int capped = sh_gen_uncap(t->gen);
    lua_pushnil(t->co);
    lua_pushstring(t->co, reason);
    sh_gen_recap(t->gen, capped);
    post(t, 2);
}

void sh_owner_release_tasks(sh_owner *o)
{
    o->gone = 1;
    while (o->tasks) {
        sh_task *t = o->tasks;
        owner_unlink(t);
        t->orphaned = 1;
        if (t->state == SH_TASK_SUSPENDED)
            sh_task_abort(t, "closed");
    }
}

/* Contract in lua_host.h. */
int sh_gen_no_room(sh_gen *g, size_t len)
{
    if (!g->mem_max || g->mem + len <= g->mem_max - g->mem_max / 8)
        return 0;
    uint64_t now = uv_hrtime();
    if (now - g->last_full_gc >= 100000000ull) {
        g->last_full_gc = now;
        g->grows++; /* lua_api.c's track memos are stale: finalizers (Lua code) run now */
        lua_gc(g->L, LUA_GCCOLLECT);
    }
    return g->mem_max && g->mem + len > g->mem_max - g->mem_max / 8;
}
