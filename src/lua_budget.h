/* lua_budget.h — lua_max_instructions, counted only for the runs that last.
 *
 * Counting every VM instruction (a count hook armed for every run) costs
 * about a tenth of the CPU of every hook, for the rare run that loops. So a
 * run starts with no hook; a CPU-time tick (ITIMER_VIRTUAL, every
 * SH_BUDGET_TICK_MS of the process's user time, SIGVTALRM) that finds the
 * same run still going as at the tick before arms the count hook, from the
 * signal handler, on every Lua thread the run has going (its own and the
 * coroutines it resumed or closes). From then on the run has
 * lua_max_instructions instructions left, for all its threads together
 * (counted in chunks, lua_budget.c): a run is stopped after between one and
 * two ticks of CPU plus about that many instructions, and never before it
 * has executed lua_max_instructions of them. Once the run exceeds the
 * budget, every thread of the run raises at its next instruction, so neither
 * a pcall, a coroutine resumed again and again, nor a loop of fresh
 * coroutines can outlast it. A hook an earlier run left on a coroutine
 * counts nothing in a later run.
 *
 * Lua runs on the loop's thread only, and never nested: one run at a time.
 * lua_sethook may be called from a signal handler (the Lua manual says so;
 * lua.c stops a script on SIGINT that way). */
#ifndef SH_LUA_BUDGET_H
#define SH_LUA_BUDGET_H

#include <stdint.h>

#include <lua.h>

#define SH_BUDGET_TICK_MS 10

/* Set up the tick in this process (again after a fork: timers are not
 * inherited). Idempotent. Returns 0, or -1 with errno. */
int sh_budget_install(void);

/* A run starts on thread L with budget max instructions (once armed)... */
void sh_budget_begin(lua_State *L, uint64_t max);
/* ... and ends: any hook armed on L is removed. */
void sh_budget_end(lua_State *L);

/* The run resumes or closes coroutine co (coroutine.resume / wrap / close): tracked until
 * sh_budget_leave. Returns 0, or -1 when nested too deep to track. */
int sh_budget_enter(lua_State *co);
void sh_budget_leave(void);

/* Did coroutine co (ended by an error) end over its run's budget, raised by the budget's
 * count hook or about to be? Lua then runs no hook on co any more (a hook that raised
 * leaves its thread's allowhook off, and nothing sets it again), so a pending __close
 * handler of co would run uncounted: the closer (lua_resetthread) must leave them be. */
int sh_budget_spent(lua_State *co);
/* Is the run going on past its budget (every instruction of it raising)? */
int sh_budget_over(void);

/* Charge the running run n instructions for work a C function did that the VM does
 * not count (host.json.decode of a long text: SH_BUDGET_BYTES_PER_INSTRUCTION bytes
 * each). Only a run whose count is armed pays: the others are not counted at all. Past
 * the budget, the run raises at its next instruction. */
void sh_budget_charge(uint64_t n);
#define SH_BUDGET_BYTES_PER_INSTRUCTION 4
/* ... and Lua's full collection after an allocation lua_max_memory refused: by its time,
 * a VM instruction per SH_BUDGET_NS_PER_INSTRUCTION nanoseconds (about the VM's pace) */
#define SH_BUDGET_NS_PER_INSTRUCTION 4

/* The number of the run going on (never the same for two runs in a row), 0 between runs. */
long sh_budget_run(void);

/* How many runs have begun (sh_budget_begin), never wrapping: two equal readings mean that
 * no Lua ran between them (lua_api.c's track memo). */
uint64_t sh_budget_seq(void);

/* Ticks seen and runs armed since start (tests, metrics). */
uint64_t sh_budget_armed_total(void);

#endif
