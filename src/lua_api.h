/* lua_api.h — the policy layer: the `statushost` module (the whole policy
 * surface is registered in one table in lua_api.c), the conn object, and the
 * handlers that turn transport events into hook tasks.
 *
 * Each connection the transport accepts gets a sh_pconn (its c->app): the
 * generation it runs on (a reference held until EV_FREE), the owner of its
 * tasks, timers and subscriptions, and its Lua objects. Events only queue
 * tasks (lua_host.h): no hook runs inside an event. */
#ifndef SH_LUA_API_H
#define SH_LUA_API_H

#include <lua.h>

#include "conn.h"
#include "http_parse.h"
#include "lua_host.h"

/* The policy layer's state of one connection. */
typedef struct sh_pconn {
    sh_conn *c;          /* NULL once the transport freed it */
    sh_gen *gen;         /* a reference is held */
    sh_owner owner;      /* its tasks, timers, subscriptions */
    int ud_ref;          /* registry ref of the conn userdata, LUA_NOREF */
    int request_ref;     /* registry ref of the upgrade request table, LUA_NOREF */
    struct sh_saved_req *saved; /* or the request, compact, until conn.request is read */
    char *protocol;      /* subprotocol chosen by on_handshake, or NULL */
} sh_pconn;

/* A connection was accepted with generation g's limits: attach the policy
 * state. Returns 0, or -1 when out of memory (the caller closes c). */
int sh_policy_attach(sh_conn *c, sh_gen *g);

/* Handle a transport event of a connection (see conn.h); REQUEST events go
 * to sh_policy_route. Returns what the transport expects (a close code for
 * a refused message, else 0). */
int sh_policy_event(sh_conn *c, const sh_conn_event *ev);

/* A plain request: when the script has a route for it, queue it and return
 * 1 (the response and sh_conn_request_done follow when it ends); else 0. */
int sh_policy_route(sh_conn *c, sh_request *r, int keep, int head_only);

/* Open the `statushost` module into L's package.preload. */
void sh_lua_api_open(lua_State *L, sh_gen *g);

#endif
