/* kit_guard.c — see kit_guard.h.
 *
 * The phase's times are read by the SIGPROF handler, which may run on any
 * thread: it reads only hard_ns (atomic) and the two lines written before
 * hard_ns is set (with a signal fence between), and does nothing but
 * write(2) and _exit. Everything else runs on the kit's one thread. */
#include "kit_guard.h"
#include "lua_lib.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#define TICK_MS 20             /* the SIGPROF period */
#define MAX_DEPTH 256          /* Lua's C stack limit (LUAI_MAXCCALLS, 200) comes first */
#define CPU_MS_MAX 86400000ULL /* one day */
#define MAX_MEMORY_MAX ((size_t)64 << 30)

typedef struct guard_state {
    size_t mem;     /* bytes the state holds */
    int inside;     /* depth of sh_kit_guard_enter: no cap */
} guard_state;

static const sh_kit_limits *limits;    /* every state's (one set per run) */
static int64_t soft_ns;                /* the phase's end in process CPU time, 0: none */
static int exceeded;                   /* the phase went past soft_ns */
static char overtime_msg[256];
static _Atomic int64_t hard_ns;        /* the backstop's, 0: none */
static char bail_out[512], bail_err[512];
static size_t bail_out_len, bail_err_len;
/* The threads running now: the state's main thread, then each coroutine resumed
 * (by kit.run, coroutine.resume, wrap or close) until it returns. */
static lua_State *volatile running[MAX_DEPTH];
static volatile sig_atomic_t depth;
static volatile sig_atomic_t armed; /* the hook is set on every running thread */

static void arm(lua_State *L);

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* async-signal-safe */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------ options */

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 19)
        return -1;
    uint64_t v = strtoull(s, NULL, 10);
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int sh_kit_parse_limits(int nargs, char **args, sh_kit_limits *lim, char *err, size_t errsz)
{
    lim->cpu_ms = SH_KIT_CPU_MS_DEFAULT;
    lim->max_memory = SH_KIT_MAX_MEMORY_DEFAULT;
    int i = 0;
    while (i < nargs && strncmp(args[i], "--", 2) == 0) {
        const char *a = args[i];
        if (!strcmp(a, "--"))
            return i + 1;
        int cpu = !strcmp(a, "--cpu-ms"), mem = !strcmp(a, "--max-memory");
        if (!cpu && !mem) {
            snprintf(err, errsz, "--test: unknown option %s (the kit's: --cpu-ms MS, "
                                 "--max-memory BYTES)", a);
            return -1;
        }
        uint64_t v;
        if (i + 1 >= nargs ||
            parse_u64(args[i + 1], cpu ? CPU_MS_MAX : MAX_MEMORY_MAX, &v) != 0 ||
            (mem && v && v < SH_KIT_MAX_MEMORY_MIN)) {
            snprintf(err, errsz, cpu ? "--cpu-ms: a number of milliseconds 0..86400000 "
                                       "expected (0: no limit)"
                                     : "--max-memory: a number of bytes 1048576..68719476736 "
                                       "expected (0: no cap)");
            return -1;
        }
        if (cpu)
            lim->cpu_ms = v;
        else
            lim->max_memory = (size_t)v;
        i += 2;
    }
    return i;
}

/* ------------------------------------------------------------ phases */

void sh_kit_phase(const char *what, const char *ctx)
{
    atomic_store(&hard_ns, 0);
    atomic_signal_fence(memory_order_seq_cst);
    armed = 0; /* hooks left armed remove themselves */
    exceeded = 0;
    soft_ns = 0;
    if (!what || !limits || !limits->cpu_ms)
        return;
    unsigned long long ms = (unsigned long long)limits->cpu_ms;
    snprintf(overtime_msg, sizeof overtime_msg,
             "%s used more than its CPU time (--cpu-ms %llu)", what, ms);
    int n = snprintf(bail_out, sizeof bail_out,
                     "Bail out! %s%s%s is stuck past its CPU time (--cpu-ms %llu) where the "
                     "kit cannot stop it (one long C call, a finalizer)\n",
                     ctx ? ctx : "", ctx ? ": " : "", what, ms);
    bail_out_len = n < 0 ? 0 : (size_t)n < sizeof bail_out ? (size_t)n : sizeof bail_out - 1;
    n = snprintf(bail_err, sizeof bail_err,
                 "statushost --test: %s%s%s is stuck past twice its CPU time (--cpu-ms %llu): "
                 "the run ends, exit status 2\n", ctx ? ctx : "", ctx ? ": " : "", what, ms);
    bail_err_len = n < 0 ? 0 : (size_t)n < sizeof bail_err ? (size_t)n : sizeof bail_err - 1;
    int64_t now = cpu_ns(), limit = (int64_t)ms * 1000000;
    soft_ns = now + limit;
    atomic_signal_fence(memory_order_seq_cst);
    atomic_store(&hard_ns, soft_ns + (limit > 1000000000 ? limit : 1000000000));
}

const char *sh_kit_overtime(void)
{
    if (!soft_ns)
        return NULL;
    if (!exceeded && cpu_ns() < soft_ns)
        return NULL;
    exceeded = 1;
    if (!armed) { /* the tick has not seen it yet */
        armed = 1;
        for (int i = 0; i < depth; i++)
            arm(running[i]);
    }
    return overtime_msg;
}

/* The hook, set on the running threads once the phase is past its time (by
 * the tick): it raises at every instruction, so that a pcall catching the
 * error cannot keep a thread going. One left on a thread by an earlier phase
 * removes itself. */
static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    const char *over = sh_kit_overtime();
    if (!over) {
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    luaL_where(L, 0); /* the line that runs */
    lua_pushstring(L, over);
    lua_concat(L, 2);
    lua_error(L);
}

static void arm(lua_State *L) { lua_sethook(L, hook, LUA_MASKCOUNT, 1); }

void sh_kit_guard_running(lua_State *L)
{
    depth = 0;
    atomic_signal_fence(memory_order_seq_cst);
    running[0] = L;
    atomic_signal_fence(memory_order_seq_cst);
    depth = L ? 1 : 0;
}

int sh_kit_guard_resume(lua_State *co)
{
    if (depth >= MAX_DEPTH)
        return -1;
    running[depth] = co;
    atomic_signal_fence(memory_order_seq_cst);
    depth = depth + 1;
    atomic_signal_fence(memory_order_seq_cst);
    if (armed)
        arm(co);
    return 0;
}

int sh_kit_guard_spent(lua_State *co) { return lua_gethook(co) == hook; }

void sh_kit_guard_resumed(void)
{
    if (depth > 0)
        depth = depth - 1;
}

/* The tick: a phase past its time has the hook armed on its running threads
 * (lua_sethook may be called from a signal handler: the Lua manual says so);
 * one past twice its time is stuck where no hook runs. */
static void on_prof(int sig)
{
    (void)sig;
    int64_t hard = atomic_load(&hard_ns);
    if (!hard)
        return;
    int saved = errno;
    int64_t now = cpu_ns();
    if (now >= soft_ns && !armed) {
        armed = 1;
        atomic_signal_fence(memory_order_seq_cst);
        for (int i = 0; i < depth; i++)
            arm(running[i]);
    }
    if (now >= hard) {
        atomic_signal_fence(memory_order_seq_cst);
        ssize_t w = write(1, bail_out, bail_out_len);
        w = write(2, bail_err, bail_err_len);
        (void)w;
        _exit(2);
    }
    errno = saved;
}

int sh_kit_backstop_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_prof;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPROF, &sa, NULL) != 0)
        return -1;
    struct itimerval it = {
        .it_interval = {0, TICK_MS * 1000},
        .it_value = {0, TICK_MS * 1000},
    };
    return setitimer(ITIMER_PROF, &it, NULL);
}

/* ------------------------------------------------------------ memory */

static void *guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    guard_state *s = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        s->mem -= old;
        return NULL;
    }
    size_t cap = limits ? limits->max_memory : 0;
    if (!s->inside && cap && nsize > old && s->mem - old + nsize > cap)
        return NULL; /* Lua collects in full and asks again once, then raises */
    void *p = realloc(ptr, nsize);
    if (p)
        s->mem = s->mem - old + nsize;
    return p;
}

static guard_state *state_of(lua_State *L)
{
    void *ud;
    return lua_getallocf(L, &ud) == guard_alloc ? ud : NULL;
}

void sh_kit_guard_enter(lua_State *L)
{
    guard_state *s = state_of(L);
    if (s)
        s->inside++;
}

void sh_kit_guard_leave(lua_State *L)
{
    guard_state *s = state_of(L);
    if (s)
        s->inside--;
}

int sh_kit_guard_inside(lua_State *L)
{
    guard_state *s = state_of(L);
    return s && s->inside;
}

size_t sh_kit_memory(lua_State *L)
{
    guard_state *s = state_of(L);
    return s ? s->mem : 0;
}

size_t sh_kit_memory_cap(lua_State *L)
{
    (void)L;
    return limits ? limits->max_memory : 0;
}

/* ------------------------------------------------------------ stdout */

/* s as `# ` comment lines on stdout (the TAP stream) */
static void comment(const char *s, size_t len)
{
    do {
        const char *nl = memchr(s, '\n', len);
        size_t n = nl ? (size_t)(nl - s) : len;
        fputs("# ", stdout);
        fwrite(s, 1, n, stdout);
        fputc('\n', stdout);
        s += n + (nl != NULL);
        len -= n + (nl != NULL);
    } while (len);
}

/* print(...): Lua's, as comment lines */
static int guarded_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    comment(s, len);
    return 0;
}

void sh_kit_guard_stdout(lua_State *L)
{
    lua_pushcfunction(L, guarded_print);
    lua_setglobal(L, "print");
    if (lua_getglobal(L, "io") == LUA_TTABLE) {
        lua_getfield(L, -1, "stderr");
        lua_setfield(L, -2, "stdout");
        lua_getfield(L, -1, "output");
        lua_getfield(L, -2, "stderr");
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
}

/* ------------------------------------------------------------ states */

static int no_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook: not available in a test file (the kit's hook "
                         "bounds each test's CPU time, --cpu-ms)");
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "statushost --test: unprotected Lua error: %s\n", msg ? msg : "?");
    return 0; /* Lua aborts */
}

/* Lua warnings (an error in a __gc, warn()) go to stderr; "@..." controls are ignored. */
static void warn_stderr(void *ud, const char *msg, int tocont)
{
    int *cont = ud;
    if (!*cont && msg[0] == '@')
        return;
    fprintf(stderr, "%s%s%s", *cont ? "" : "Lua warning: ", msg, tocont ? "" : "\n");
    *cont = tocont;
}

/* coroutine.resume and coroutine.close (upvalues: the original, its name): the
 * coroutine is a running thread while it runs (its __close handlers, for a
 * close). */
static int guarded_co(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_State *co = lua_tothread(L, 1);
    int cst = lua_status(co);
    if (cst != LUA_OK && cst != LUA_YIELD && sh_kit_guard_spent(co) &&
        strcmp(lua_tostring(L, lua_upvalueindex(2)), "close") == 0) {
        lua_pushboolean(L, 0); /* as Lua's close of a coroutine that failed, its handlers */
        lua_pushvalue(co, -1); /* left be (sh_kit_guard_spent) */
        lua_xmove(co, L, 1);
        return 2;
    }
    if (sh_kit_guard_resume(co) != 0)
        return luaL_error(L, "coroutines nested too deep");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sh_kit_guard_resumed();
    if (st != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

/* coroutine.wrap closes a dead coroutine as a running thread (sh_lib_guard_wrap). */
static int kit_over(void) { return sh_kit_overtime() != NULL; }

static const sh_lib_co_guard kit_co_guard = {sh_kit_guard_resume, sh_kit_guard_resumed,
                                              sh_kit_guard_spent, kit_over};

static void guard_coroutines(lua_State *L)
{
    lua_getglobal(L, "coroutine");
    for (int i = 0; i < 2; i++) {
        const char *name = i ? "close" : "resume";
        lua_getfield(L, -1, name);
        lua_pushstring(L, name);
        lua_pushcclosure(L, guarded_co, 2);
        lua_setfield(L, -2, name);
    }
    sh_lib_guard_wrap(L, -1, &kit_co_guard);
    sh_lib_guard_xpcall(L, &kit_co_guard);
    lua_pop(L, 1);
}

lua_State *sh_kit_state_new(const sh_kit_limits *lim)
{
    static int warn_cont;
    guard_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    limits = lim;
    s->inside = 1; /* the libraries load whatever the cap */
    lua_State *L = lua_newstate(guard_alloc, s);
    if (!L) {
        free(s);
        return NULL;
    }
    lua_atpanic(L, panic);
    lua_setwarnf(L, warn_stderr, &warn_cont);
    luaL_openlibs(L);
    guard_coroutines(L);
    sh_kit_guard_stdout(L);
    lua_getglobal(L, "debug");
    lua_pushcfunction(L, no_sethook);
    lua_setfield(L, -2, "sethook");
    lua_pop(L, 1);
    s->inside = 0;
    return L;
}

void sh_kit_state_close(lua_State *L, const char *what, const char *ctx)
{
    guard_state *s = state_of(L);
    sh_kit_phase(what, ctx); /* the finalizers run */
    sh_kit_guard_running(L);
    lua_close(L);
    sh_kit_guard_running(NULL);
    sh_kit_phase(NULL, NULL);
    free(s);
}
