/* lua_api.h — the `statushost` Lua module and the calls that run hooks.
 *
 * The module is mechanism only: connections (conn:send, conn:close,
 * conn:subscribe ...), timers, sleep, spawn, logging, metrics, Redis and
 * HTTP. Policy lives in the script's hooks, each run by a task (lua_host.h).
 * Files: lua_api.c (module, conn, hooks), lua_io.c (redis, http, timers). */
#ifndef SH_LUA_API_H
#define SH_LUA_API_H

#include <stddef.h>

#include <lua.h>

#include "conn.h"
#include "http_parse.h"
#include "lua_host.h"

/* WebSocket open: on_open(conn). */
void sh_api_open(sh_conn *c);
/* A complete message: on_message(conn, text) or on_binary(conn, data). */
void sh_api_message(sh_conn *c, const char *data, size_t len, int binary);
/* An upgrade request passed the protocol checks: run on_handshake(req) and
 * answer through sh_conn_handshake_result(), now or later. */
void sh_api_handshake(sh_conn *c, sh_request *r);
/* A plain request: when the script has a route for it, run it and return 1
 * (done(c) is called after the response is queued); else return 0. */
int sh_api_route(sh_conn *c, sh_request *r, int keep, void (*done)(sh_conn *));
/* The connection is closing: release subscriptions, timers and tasks, then
 * run on_close(conn, code, reason) when it was a WebSocket. */
void sh_api_conn_closing(sh_conn *c, int was_ws);
/* The connection struct is about to be freed: drop its Lua objects. */
void sh_api_conn_freed(sh_conn *c);
/* The generation shuts down: cancel its pending timers. */
void sh_api_gen_shutdown(sh_gen *g);

/* lua_io.c: host.redis, host.http, host.sleep, host.timer. */
void sh_io_register(lua_State *L, int module);
void sh_io_conn_closing(sh_conn *c);
void sh_io_gen_shutdown(sh_gen *g);
int sh_io_subscribe(lua_State *L);
int sh_io_unsubscribe(lua_State *L);

/* The conn userdata at index i; raises when it is not one. */
sh_conn *sh_api_check_conn(lua_State *L, int i);
/* The generation whose function is running (upvalue 1 of module functions). */
#define SH_GEN(L) ((sh_gen *)lua_touserdata((L), lua_upvalueindex(1)))

#endif
