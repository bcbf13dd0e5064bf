/* lua_io.h — host calls that wait, and what outlives a call: host.sleep,
 * host.timer, host.redis.call, host.http.request, and subscriptions
 * (conn:subscribe and host.subscribe share one mechanism).
 *
 * Each wait follows one cycle: check arguments (misuse raises), fail fast
 * with nil, "reason" when the wait cannot start, start the I/O, then
 * sh_task_suspend() with a cancel function. The completion pushes results on
 * the task's stack and calls sh_task_wake(), which queues the task.
 *
 * The functions below are lua_CFunctions registered by lua_api.c (the one
 * table of the policy surface); each expects upvalue 1 = its generation and
 * upvalue 2 = its qualified name (for error messages). */
#ifndef SH_LUA_IO_H
#define SH_LUA_IO_H

#include <lua.h>

#include "lua_host.h"

int sh_io_sleep(lua_State *L);        /* host.sleep(ms) */
int sh_io_timer(lua_State *L);        /* host.timer(ms, fn, ...) */
int sh_io_redis_call(lua_State *L);   /* host.redis.call(cmd, ...) */
int sh_io_http_request(lua_State *L); /* host.http.request{...} */
int sh_io_subscribe_fn(lua_State *L); /* host.subscribe(channel, fn) */

/* conn:subscribe(channel) for owner o: the channel is at index 2. */
int sh_io_subscribe_owner(lua_State *L, sh_owner *o);
/* conn:unsubscribe(channel) for owner o: 1 when it was subscribed. */
int sh_io_unsubscribe_owner(sh_owner *o, const char *channel, size_t len);

/* Create the metatables of timer and subscription handles in L. */
void sh_io_open(lua_State *L);
/* An owner ends: cancel its timers, drop its subscriptions (a task waiting
 * for a confirmation is woken with nil, "closed"). */
void sh_io_owner_release(sh_owner *o);

/* The running task, or raise: waits need one (and a frame that can yield). */
sh_task *sh_io_need_task(lua_State *L);
/* Argument errors that name the function: "host.sleep: bad argument #1 (…)". */
int sh_argerror(lua_State *L, int arg, const char *msg);
const char *sh_checklstring(lua_State *L, int arg, size_t *len);
lua_Number sh_checknumber(lua_State *L, int arg);
lua_Integer sh_optinteger(lua_State *L, int arg, lua_Integer def);
void sh_checktype(lua_State *L, int arg, int type);
#define SH_GEN(L) ((sh_gen *)lua_touserdata((L), lua_upvalueindex(1)))
#define SH_FNAME(L) lua_tostring((L), lua_upvalueindex(2))

#endif
