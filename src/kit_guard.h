/* kit_guard.h — the test kit's containment of a test file's Lua state.
 *
 * A policy under test runs with lua_max_instructions and lua_max_memory; the
 * test file that drives it runs in a Lua state of its own, bounded here:
 *
 *  - memory: the state's allocator counts its bytes and refuses one past
 *    --max-memory, which Lua raises as "not enough memory" in the code that
 *    asked. Not inside a kit call that runs a policy (sh_kit_guard_enter):
 *    the tables the simulation makes there have no Lua frame of the test's
 *    to raise into.
 *  - CPU: the run is a sequence of phases (loading a file, a test, the
 *    report after it, closing a file), each allowed --cpu-ms of the
 *    process's CPU time. Once the phase is past it, a CPU-time tick (SIGPROF,
 *    every 20 ms of the process's CPU) arms a count hook on the threads the
 *    state is running (its main thread, and the coroutines resumed: kit.run,
 *    and coroutine.resume/wrap/close, which the state's are guarded for),
 *    which raises at their every instruction from then on, so a pcall that
 *    catches the error cannot keep a thread going. Until then no hook is set
 *    (a hook makes Lua 5.4 trap every instruction: twice the time). The kit's settle loop checks
 *    too (a policy kept busy by the test). A phase still running at twice its
 *    time (at least one second more) is stuck where no hook runs — one long C
 *    call, a finalizer —: a CPU-time signal (SIGPROF) ends the run with a
 *    `Bail out!` line, exit status 2.
 *  - stdout is the TAP stream: print in a test file or a policy under test
 *    writes `# ` comment lines, and io.write / io.stdout go to stderr.
 *
 * One phase at a time (the kit runs its files one after the other). */
#ifndef SH_KIT_GUARD_H
#define SH_KIT_GUARD_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#define SH_KIT_CPU_MS_DEFAULT 10000
#define SH_KIT_MAX_MEMORY_DEFAULT ((size_t)256 << 20)
#define SH_KIT_MAX_MEMORY_MIN ((size_t)1 << 20)

typedef struct sh_kit_limits {
    uint64_t cpu_ms;   /* CPU time per phase (0: no limit) */
    size_t max_memory; /* bytes of a test file's state (0: no cap) */
} sh_kit_limits;

/* Parse the kit's options at the front of args (--cpu-ms MS, --max-memory
 * BYTES, -- ends them): the number of arguments they took, or -1 with a
 * one-line reason in err. */
int sh_kit_parse_limits(int nargs, char **args, sh_kit_limits *lim, char *err, size_t errsz);

/* A test file's state, bounded by lim (kept by pointer), with its libraries,
 * stdout guarded, debug.sethook refused; NULL when out of memory. Closed with
 * sh_kit_state_close (its finalizers run inside a phase). */
lua_State *sh_kit_state_new(const sh_kit_limits *lim);
void sh_kit_state_close(lua_State *L, const char *what, const char *ctx);

/* Start a phase named `what` ("the test"), in ctx ("FILE, test 3", or
 * NULL): it has the limits' CPU time from now. what NULL: no phase (no
 * limit). Both are copied. */
void sh_kit_phase(const char *what, const char *ctx);

/* NULL while the running phase is within its CPU time; else the reason, and
 * the hook raises from now on. */
const char *sh_kit_overtime(void);

/* The state whose main thread runs now (NULL: none), and a coroutine of it
 * resumed (-1: nested too deep) until resumed() (its resume returned). */
void sh_kit_guard_running(lua_State *L);
int sh_kit_guard_resume(lua_State *co);
void sh_kit_guard_resumed(void);
/* Did co (ended by an error) end with the hook armed, its phase past its time? Lua then
 * runs no hook on co any more (a hook that raised leaves its thread's allowhook off), so
 * its pending __close handlers would run unbounded: they are left be (they would raise at
 * their first instruction). */
int sh_kit_guard_spent(lua_State *co);

/* Around a kit C call that runs a policy: the memory cap is off until the
 * matching leave. inside: in such a call (where a finalizer of the test's
 * may run, and must not call the kit again). */
void sh_kit_guard_enter(lua_State *L);
void sh_kit_guard_leave(lua_State *L);
int sh_kit_guard_inside(lua_State *L);

/* Bytes the state holds; its cap. */
size_t sh_kit_memory(lua_State *L);
size_t sh_kit_memory_cap(lua_State *L);

/* print and io.stdout of a state (a test file's or a policy's) kept off the
 * TAP stream. */
void sh_kit_guard_stdout(lua_State *L);

/* Start the CPU-time signal that ends a stuck run. Returns 0, or -1 with errno. */
int sh_kit_backstop_install(void);

#endif
