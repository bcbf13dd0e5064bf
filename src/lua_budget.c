/* lua_budget.c — see lua_budget.h.
 *
 * The state below is written by the loop's thread and read by the SIGVTALRM
 * handler, which runs on that same thread (the tick may land on another
 * thread of the process — libuv's thread pool, the watchdog —: the handler
 * then forwards it with pthread_kill). So plain volatile stores with signal
 * fences between them are enough; the orders chosen make every interleaving
 * safe:
 *
 *   begin:  running[0], depth, armed, exceeded  ─fence─►  active = seq
 *   end:    active = 0  ─fence─►  hooks removed, depth = 0
 *   enter:  running[depth]  ─fence─►  depth + 1  ─fence─►  if armed: arm it
 *
 * The handler does nothing while active is 0, and arms only running[0 ..
 * depth), all of them alive: each is on the C stack of the run. */
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

static lua_State *volatile running[MAX_DEPTH];
static volatile sig_atomic_t depth;
static volatile sig_atomic_t active; /* the run's number, 0 between runs */
static volatile sig_atomic_t seen;   /* active at the last tick */
static volatile sig_atomic_t armed;  /* the hook is set on the run's threads */
static volatile sig_atomic_t exceeded; /* a thread of the run went over */
static volatile int count;           /* lua_max_instructions, for the hook */
static sig_atomic_t seq;
static pthread_t loop_thread;
static pid_t installed_pid;
static _Atomic uint64_t armed_total;

static void fence(void) { atomic_signal_fence(memory_order_seq_cst); }

static void over_budget(lua_State *L, lua_Debug *ar);

static void arm(lua_State *L, int n) { lua_sethook(L, over_budget, LUA_MASKCOUNT, n); }

/* The count hook, at its count: this thread and every other thread of the
 * run raise from their next instruction on, so a pcall that catches the error
 * or a fresh coroutine cannot keep the run going. */
static void over_budget(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    exceeded = 1;
    for (int i = 0; i < depth; i++)
        arm(running[i], 1);
    arm(L, 1);
    luaL_error(L, "instruction budget exceeded (lua_max_instructions)");
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
        armed = 1;
        fence();
        for (int i = 0; i < depth; i++)
            arm(running[i], exceeded ? 1 : count);
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
    count = max > INT_MAX ? INT_MAX : (int)max;
    running[0] = L;
    depth = 1;
    armed = 0;
    exceeded = 0;
    fence();
    if (++seq <= 0)
        seq = 1;
    active = seq;
}

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

int sh_budget_enter(lua_State *co)
{
    if (depth >= MAX_DEPTH)
        return -1;
    running[depth] = co;
    fence();
    depth = depth + 1;
    fence();
    if (armed)
        arm(co, exceeded ? 1 : count);
    return 0;
}

void sh_budget_leave(void)
{
    if (depth > 0)
        depth = depth - 1;
}

uint64_t sh_budget_armed_total(void) { return atomic_load(&armed_total); }
