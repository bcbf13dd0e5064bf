/* lua_host.c — generations and tasks; see lua_host.h. */
#include "lua_host.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <uv.h>

#include "conn.h"
#include "log.h"
#include "server.h"

int luaopen_cjson_safe(lua_State *L); /* in liblua5.4-cjson, not in its header */

#define POOL_MAX 256
#define LOAD_BUDGET 100000000 /* instructions for running the script's main chunk */

static const char *const hook_names[SH_HOOK_COUNT] = {
    "on_handshake", "on_open", "on_message", "on_binary", "on_publish", "on_close",
};

const char *sh_hook_name(enum sh_hook h) { return hook_names[h]; }

/* ------------------------------------------------------------------ budget */

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    /* from now on every instruction raises, so a pcall that swallows the
     * error cannot keep the hook running: the first unprotected frame dies */
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "instruction budget exceeded (lua_max_instructions)");
}

static void arm_budget(lua_State *co, uint64_t max)
{
    lua_sethook(co, budget_hook, LUA_MASKCOUNT, max > INT_MAX ? INT_MAX : (int)max);
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
        if (!k || !strchr(k, ' ') || k[strcspn(k, " ") + 1] != '/' || !lua_isfunction(L, -1)) {
            snprintf(err, errsz, "routes: each key must be \"METHOD /path\" and each value a function");
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

/* package.path starts with the script's directory; "statushost.NAME"
 * finds the shipped policies (search_shipped). */
static void set_module_paths(lua_State *L, const char *script)
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
    lua_pop(L, 2);
}

static void open_libs(lua_State *L, sh_gen *g)
{
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
    sh_lua_api_open(L, g);
}

/* Run the script's main chunk; leaves its table on the stack. */
static int run_script(lua_State *L, const char *script, char *err, size_t errsz)
{
    lua_pushcfunction(L, msgh_traceback);
    int base = lua_gettop(L);
    if (luaL_loadfilex(L, script, "t") != LUA_OK) {
        snprintf(err, errsz, "%s", lua_tostring(L, -1));
        lua_settop(L, base - 1);
        return -1;
    }
    arm_budget(L, LOAD_BUDGET);
    int rc = lua_pcall(L, 0, 1, base);
    lua_sethook(L, NULL, 0, 0);
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

/* Resolve hooks, routes and config from the policy table at the top. */
static int take_policy(sh_gen *g, const char *const *sets, size_t nsets, char *err, size_t errsz)
{
    lua_State *L = g->L;
    int policy = lua_gettop(L);
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
    /* fill host.config in place: the script may have kept a reference to it
     * while its main chunk ran (it is empty until now) */
    int merged = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "statushost.module");
    lua_getfield(L, -1, "config");
    lua_pushnil(L);
    while (lua_next(L, merged)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_settop(L, policy - 1);
    return 0;
}

int sh_gen_load(sh_server *srv, const char *script, const char *const *sets, size_t nsets,
                sh_gen **out, char *err, size_t errsz)
{
    sh_gen *g = calloc(1, sizeof *g);
    g->srv = srv;
    g->refs = 1;
    g->id = srv ? ++srv->next_gen_id : 1;
    g->routes_ref = LUA_NOREF;
    for (int h = 0; h < SH_HOOK_COUNT; h++)
        g->hook_ref[h] = LUA_NOREF;
    g->L = luaL_newstate();
    if (!g->L) {
        snprintf(err, errsz, "out of memory");
        free(g);
        return -1;
    }
    *(sh_task **)lua_getextraspace(g->L) = NULL;
    open_libs(g->L, g);
    set_module_paths(g->L, script);
    lua_newtable(g->L);
    g->pool_ref = luaL_ref(g->L, LUA_REGISTRYINDEX);
    g->pool = calloc(POOL_MAX, sizeof *g->pool);
    if (run_script(g->L, script, err, errsz) != 0 || take_policy(g, sets, nsets, err, errsz) != 0) {
        lua_close(g->L);
        sh_config_free(&g->cfg);
        free(g->pool);
        free(g);
        return -1;
    }
    if (srv) {
        g->next_gen = srv->gens;
        if (srv->gens)
            srv->gens->prev_gen = g;
        srv->gens = g;
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
    if (g->srv) {
        if (g->prev_gen)
            g->prev_gen->next_gen = g->next_gen;
        else
            g->srv->gens = g->next_gen;
        if (g->next_gen)
            g->next_gen->prev_gen = g->prev_gen;
    }
    lua_close(g->L);
    sh_config_free(&g->cfg);
    free(g->pool);
    free(g);
}

int sh_gen_has_hook(const sh_gen *g, enum sh_hook h) { return g->hook_ref[h] != LUA_NOREF; }

void sh_gen_shutdown(sh_gen *g)
{
    g->closing = 1;
    /* waking may end tasks (unlinking them); restart the scan each time */
    for (;;) {
        sh_task *t = g->tasks;
        while (t && !t->cancel)
            t = t->gen_next;
        if (!t)
            break;
        sh_task_abort(t, "closed");
    }
}

/* ----------------------------------------------------------------- tasks */

static lua_State *thread_take(sh_gen *g)
{
    if (g->npool > 0)
        return g->pool[--g->npool];
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->pool_ref);
    lua_State *co = lua_newthread(L);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3); /* anchor: pool[co] = true */
    lua_pop(L, 1);
    return co;
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

sh_task *sh_task_new(sh_gen *g, sh_conn *conn, const char *what)
{
    sh_task *t = calloc(1, sizeof *t);
    t->gen = g;
    t->what = what;
    t->co = thread_take(g);
    *(sh_task **)lua_getextraspace(t->co) = t;
    sh_gen_ref(g);
    t->gen_next = g->tasks;
    if (g->tasks)
        g->tasks->gen_prev = t;
    g->tasks = t;
    if (conn && conn->phase == SH_PHASE_CLOSED) {
        /* its connection is gone already: the task runs orphaned */
        snprintf(t->log_id, sizeof t->log_id, "%s", conn->id);
        t->orphaned = 1;
    } else if (conn) {
        snprintf(t->log_id, sizeof t->log_id, "%s", conn->id);
        t->conn = conn;
        t->conn_next = conn->tasks;
        if (conn->tasks)
            conn->tasks->conn_prev = t;
        conn->tasks = t;
    }
    if (g->srv)
        g->srv->metrics.lua_tasks_current++;
    return t;
}

static void conn_unlink(sh_task *t)
{
    if (!t->conn)
        return;
    if (t->conn_prev)
        t->conn_prev->conn_next = t->conn_next;
    else
        t->conn->tasks = t->conn_next;
    if (t->conn_next)
        t->conn_next->conn_prev = t->conn_prev;
    t->conn_prev = t->conn_next = NULL;
    t->conn = NULL;
}

void sh_task_push_hook(sh_task *t, enum sh_hook h)
{
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->gen->hook_ref[h]);
}

static void task_finish(sh_task *t, int status, int nres)
{
    sh_gen *g = t->gen;
    if (t->cancel) { /* ended while a wait was registered (its yield failed) */
        t->cancel(t, t->op);
        t->cancel = NULL;
    }
    if (t->done)
        t->done(t, status, nres, t->done_arg);
    conn_unlink(t);
    if (t->gen_prev)
        t->gen_prev->gen_next = t->gen_next;
    else
        g->tasks = t->gen_next;
    if (t->gen_next)
        t->gen_next->gen_prev = t->gen_prev;
    *(sh_task **)lua_getextraspace(t->co) = NULL;
    thread_release(g, t->co, status == LUA_OK);
    if (g->srv)
        g->srv->metrics.lua_tasks_current--;
    free(t);
    sh_gen_unref(g);
}

/* Log a failed run with its traceback and fail the owning connection. */
static void task_error(sh_task *t, const char *msg)
{
    lua_State *L = t->gen->L;
    luaL_traceback(L, t->co, msg, 0);
    sh_error(t->log_id[0] ? t->log_id : NULL, "lua error in %s: %s", t->what, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (t->gen->srv)
        t->gen->srv->metrics.lua_errors++;
    if (t->conn)
        sh_conn_lua_failed(t->conn);
}

/* Resume t with nargs values on its stack and handle the outcome. */
static void task_run(sh_task *t, int nargs)
{
    lua_State *co = t->co;
    arm_budget(co, t->gen->cfg.lua_max_instructions);
    int nres = 0;
    sh_gen *g = t->gen;
    g->run_depth++;
    int st = lua_resume(co, g->L, nargs, &nres);
    g->run_depth--;
    if (st == LUA_YIELD) {
        if (t->cancel)
            return; /* suspended in a host call; its completion wakes us */
        lua_pop(co, nres);
        task_error(t, "coroutine.yield() outside a host call (use host.sleep or a coroutine of your own)");
        task_finish(t, LUA_ERRRUN, 0);
        return;
    }
    if (st != LUA_OK) {
        const char *msg = lua_tostring(co, -1);
        task_error(t, msg ? msg : luaL_typename(co, -1));
        nres = 0;
    }
    task_finish(t, st, nres);
}

void sh_task_start(sh_task *t, int nargs, sh_task_done_fn done, void *arg)
{
    t->done = done;
    t->done_arg = arg;
    task_run(t, nargs);
}

sh_task *sh_task_current(lua_State *L)
{
    sh_task *t = *(sh_task **)lua_getextraspace(L);
    return t && t->co == L ? t : NULL;
}

int sh_task_suspend(lua_State *L, sh_task_cancel_fn cancel, void *op)
{
    sh_task *t = sh_task_current(L);
    if (!t)
        return luaL_error(L, "this call waits, so it must run in a hook's coroutine "
                             "(not in a coroutine of your own)");
    assert(cancel != NULL);
    t->cancel = cancel;
    t->op = op;
    return lua_yield(L, 0);
}

int sh_task_doomed(const sh_task *t)
{
    return t->gen->closing || t->orphaned;
}

void sh_task_wake(sh_task *t, int nres)
{
    assert(t->cancel != NULL);
    t->cancel = NULL;
    t->op = NULL;
    task_run(t, nres);
}

void sh_task_abort(sh_task *t, const char *reason)
{
    assert(t->cancel != NULL);
    t->cancel(t, t->op);
    lua_pushnil(t->co);
    lua_pushstring(t->co, reason);
    sh_task_wake(t, 2);
}

void sh_tasks_release_conn(sh_conn *c)
{
    while (c->tasks) {
        sh_task *t = c->tasks;
        conn_unlink(t);
        t->orphaned = 1;
        if (t->cancel)
            sh_task_abort(t, "closed");
    }
}
