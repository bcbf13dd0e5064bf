/* kit_guard.c — see kit_guard.h.
 *
 * The phase's times are read by the SIGPROF handler, which may run on any
 * thread: it reads only hard_ns (atomic) and the two lines written before
 * hard_ns is set (with a signal fence between), and does nothing but
 * write(2) and _exit. Everything else runs on the kit's one thread. */
#include "kit_guard.h"

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

#define HOOK_COUNT 10000       /* instructions between two looks at the clock */
#define BACKSTOP_TICK_MS 100   /* the SIGPROF period */
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
    return overtime_msg;
}

/* The count hook: past the phase's time, it raises, and counts 1 from then
 * on, so that a pcall catching the error cannot keep the thread going. A
 * thread left counting 1 by an earlier phase goes back to HOOK_COUNT. */
static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    const char *over = sh_kit_overtime();
    int want = over ? 1 : HOOK_COUNT;
    if (lua_gethookcount(L) != want)
        lua_sethook(L, hook, LUA_MASKCOUNT, want);
    if (over) {
        luaL_where(L, 0); /* the line that runs */
        lua_pushstring(L, over);
        lua_concat(L, 2);
        lua_error(L);
    }
}

static void on_prof(int sig)
{
    (void)sig;
    int64_t hard = atomic_load(&hard_ns);
    if (!hard)
        return;
    int saved = errno;
    if (cpu_ns() >= hard) {
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
        .it_interval = {0, BACKSTOP_TICK_MS * 1000},
        .it_value = {0, BACKSTOP_TICK_MS * 1000},
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
    lua_sethook(L, hook, LUA_MASKCOUNT, HOOK_COUNT); /* every coroutine inherits it */
    luaL_openlibs(L);
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
    lua_close(L);
    sh_kit_phase(NULL, NULL);
    free(s);
}
