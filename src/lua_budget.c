/* lua_budget.c — see lua_budget.h.
 *
 * The state below is written by the loop's thread and read by the SIGVTALRM
 * handler, which runs on that same thread (the tick may land on another
 * thread of the process — libuv's thread pool, the watchdog —: the handler
 * then forwards it with pthread_kill). So plain volatile stores with signal
 * fences between them are enough; the orders chosen make every interleaving
 * safe:
 *
 *   begin:  running[0], depth, armed, exceeded  ─fence─►  active = from seq
 *   end:    active = 0  ─fence─►  hooks removed, depth = 0
 *   enter:  an earlier run's hook removed  ─fence─►  running[depth]  ─fence─►
 *           depth + 1  ─fence─►  if armed: arm it (unless it counts already)
 *
 * The handler does nothing while active is 0, and arms only running[0 ..
 * depth), all of them alive: each is on the C stack of the run. The hook
 * (over_budget) runs on the loop's thread too; the handler may interrupt it,
 * but it only writes `left` while not armed, when the hook does not. */
#include "lua_budget.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <lauxlib.h>

#define MAX_DEPTH 256 /* Lua's C stack limit (LUAI_MAXCCALLS, 200) comes first */
/* Once armed, a thread's hook counts in chunks: the first of FIRST_CHUNK
 * instructions, each next one twice the last, up to MAX_CHUNK (the hook's
 * cost stays negligible). What a thread runs after its last whole chunk is
 * not counted: a loop of short coroutines gets at most FIRST_CHUNK - 1
 * uncounted instructions per coroutine, against the few counted ones each
 * costs the loop that makes it (a bound of about 20 times the budget). */
#define FIRST_CHUNK 64
#define MAX_CHUNK 4096

static lua_State *volatile running[MAX_DEPTH];
static volatile sig_atomic_t depth;
static volatile sig_atomic_t active; /* the run's number, 0 between runs */
static volatile sig_atomic_t seen;   /* active at the last tick */
static volatile sig_atomic_t armed;  /* the hook is set on the run's threads */
static volatile sig_atomic_t exceeded; /* the run went over its budget */
static volatile long left;           /* instructions the run has left once armed */
static volatile long count;          /* lua_max_instructions */
static uint64_t seq; /* runs begun (the loop thread's only): 2^64 is never reached */
static pthread_t loop_thread;
static pid_t installed_pid;
static _Atomic uint64_t armed_total;

static void fence(void) { atomic_signal_fence(memory_order_seq_cst); }

static void over_budget(lua_State *L, lua_Debug *ar);

static void arm(lua_State *L, int n) { lua_sethook(L, over_budget, LUA_MASKCOUNT, n); }

static int first_chunk(void)
{
    return count < 1 ? 1 : count < FIRST_CHUNK ? (int)count : FIRST_CHUNK;
}

/* The count hook, at the end of a chunk. The budget is the run's, not a
 * thread's: every thread's chunks come off the same `left`, so neither a
 * coroutine resumed again and again nor a loop of fresh ones starts a count
 * of its own. Over it, this thread and every other thread of the run raise
 * from their next instruction on, so a pcall that catches the error cannot
 * keep the run going. A hook left on a thread by an earlier run (a coroutine
 * it created or left suspended) counts nothing until this run is armed. */
static void over_budget(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (!armed)
        return;
    if (!exceeded) {
        int base = lua_gethookcount(L);
        left -= base;
        if (left > 0) {
            if (base < MAX_CHUNK)
                arm(L, base * 2 < MAX_CHUNK ? base * 2 : MAX_CHUNK);
            return;
        }
        exceeded = 1;
        for (int i = 0; i < depth; i++)
            arm(running[i], 1);
    }
    arm(L, 1);
    luaL_error(L, "instruction budget exceeded (lua_max_instructions)");
}

int sh_budget_over(void) { return active && exceeded; }

int sh_budget_spent(lua_State *co)
{
    return lua_gethook(co) == over_budget && lua_gethookcount(co) == 1; /* arm(co, 1) */
}

static void on_tick(int sig)
{
    if (!pthread_equal(pthread_self(), loop_thread)) {
        pthread_kill(loop_thread, sig); /* async-signal-safe */
        return;
    }
    int saved = errno;
    sig_atomic_t a = active;
    if (a && a == seen && !armed) {
        left = count;
        fence();
        armed = 1;
        fence();
        for (int i = 0; i < depth; i++)
            arm(running[i], first_chunk());
        atomic_fetch_add_explicit(&armed_total, 1, memory_order_relaxed);
    }
    seen = a;
    errno = saved;
}

int sh_budget_install(void)
{
    pid_t pid = getpid();
    if (installed_pid == pid)
        return 0;
    loop_thread = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGVTALRM, &sa, NULL) != 0)
        return -1;
    struct itimerval it = {
        .it_interval = {0, SH_BUDGET_TICK_MS * 1000},
        .it_value = {0, SH_BUDGET_TICK_MS * 1000},
    };
    if (setitimer(ITIMER_VIRTUAL, &it, NULL) != 0)
        return -1;
    installed_pid = pid;
    return 0;
}

void sh_budget_begin(lua_State *L, uint64_t max)
{
    count = max > LONG_MAX ? LONG_MAX : (long)max;
    if (lua_gethook(L) == over_budget)
        lua_sethook(L, NULL, 0, 0); /* left by an earlier run; not published yet */
    running[0] = L;
    depth = 1;
    armed = 0;
    exceeded = 0;
    fence();
    seq++; /* a sig_atomic_t's ++ past its max was undefined, and wrapped back to an old value */
    active = (sig_atomic_t)(seq % SIG_ATOMIC_MAX) + 1; /* nonzero, another than the last */
}

long sh_budget_run(void) { return (long)active; }

uint64_t sh_budget_seq(void) { return seq; }

void sh_budget_end(lua_State *L)
{
    active = 0;
    fence();
    if (armed) {
        lua_sethook(L, NULL, 0, 0);
        armed = 0;
    }
    depth = 0;
}

void sh_budget_charge(uint64_t n)
{
    /* the tick writes `left` only while the run is not armed, and the hook runs on
     * this thread, between instructions: no race with either */
    if (!active || !armed || exceeded)
        return;
    long c = n > (uint64_t)LONG_MAX ? LONG_MAX : (long)n;
    left = left > LONG_MIN + c ? left - c : LONG_MIN; /* ≤ 0: the next count raises */
    if (left <= 0)
        for (int i = 0; i < depth; i++)
            arm(running[i], 1);
}

/* Will co run code when resumed or closed? Not when it is running or
 * waiting on a coroutine it resumed ("cannot resume non-suspended
 * coroutine"): its hook is the count of the frame that called, and arming it
 * again would start that count afresh on every such call. */
static int will_run(lua_State *co)
{
    lua_Debug ar;
    return lua_status(co) != LUA_OK || !lua_getstack(co, 0, &ar);
}

/* A coroutine not started yet: a hook it has came from its creator
 * (lua_newthread copies it, count and all), with nothing of its own counted. */
static int fresh(lua_State *co)
{
    lua_Debug ar;
    return lua_status(co) == LUA_OK && !lua_getstack(co, 0, &ar) && lua_gettop(co) > 0;
}

int sh_budget_enter(lua_State *co)
{
    if (depth >= MAX_DEPTH)
        return -1;
    int runs = will_run(co);
    /* not listed yet, so the tick does not touch it here: a hook left by an
     * earlier run goes (it would count that run's instructions in this one) */
    if (runs && !armed && lua_gethook(co) == over_budget)
        lua_sethook(co, NULL, 0, 0);
    running[depth] = co;
    fence();
    depth = depth + 1;
    fence();
    /* armed (by the tick just now, or before): a coroutine with a count of
     * this run goes on with it; others start one */
    if (runs && armed) {
        if (exceeded)
            arm(co, 1);
        else if (lua_gethook(co) != over_budget || fresh(co) || lua_gethookcount(co) == 1)
            arm(co, first_chunk());
    }
    return 0;
}

void sh_budget_leave(void)
{
    if (depth > 0)
        depth = depth - 1;
}

uint64_t sh_budget_armed_total(void) { return atomic_load(&armed_total); }
