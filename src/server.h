/* server.h — the one top-level object: loop, listener, limits, registries.
 *
 * Ownership: the server owns the listener, the signal handles, the
 * transport (the connections), the Lua host (generations and tasks), the
 * Redis bus and the HTTP client, and composes them: transport events come
 * to server.c, which serves /healthz, /metrics and static files itself and
 * hands everything else to the policy layer (lua_api.h). Nothing below the
 * server calls into it. Connections hold a reference to the generation they were
 * opened with (see lua_host.h), so a reload (SIGHUP) gives new connections a
 * new policy while live ones finish on theirs. */
#ifndef SH_SERVER_H
#define SH_SERVER_H

#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "conn.h"
#include "lua_host.h"
#include "metrics.h"

struct sh_redis_bus;
struct sh_http_client;

/* What main() hands the server: the script and the command-line overrides. */
typedef struct sh_options {
    const char *script;       /* path of the policy script */
    const char **sets;        /* "KEY=VALUE" overrides, including --listen/--redis */
    size_t nsets;
    unsigned nworkers;        /* >1: this process is worker `worker` of a master (master.h) */
    int worker;
} sh_options;

typedef struct sh_server {
    uv_loop_t *loop;
    uv_tcp_t listener;             /* accepting while !stopping */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t grace_timer;        /* shutdown deadline */
    uv_timer_t startup_timer;      /* accept after this even if Redis has not answered */
    int accepting;                 /* connections are accepted (Redis answered) */
    int accept_pending;            /* a connection waits for uv_accept */
    char listen_name[300];         /* "host:port" actually bound */
    sh_options opts;
    sh_transport tp;               /* the connections (conn.h) */
    sh_host host;                  /* the Lua side: generations and tasks (lua_host.h) */
    sh_gen *gen;                   /* current generation: new connections get it */
    sh_metrics metrics;
    char instance[17];             /* 64 random bits, hex: this process */
    int stopping;                  /* SIGTERM/SIGINT seen */
    uint64_t stop_signal_ms;       /* uv_now() of the first one */
    int listening;
    int finished;                  /* everything is closing; the loop is about to end */
    int started;                   /* tp and host are set up */
} sh_server;

/* Load the script, bind the listener, connect Redis. Returns 0, or -1 with
 * the reason in err (the caller prints it and exits 2). */
int sh_server_start(sh_server *s, uv_loop_t *loop, const sh_options *opts, char *err,
                    size_t errsz);

/* Stop accepting, close every WebSocket with 1001, and tear down once they
 * have gone or the grace period ended. */
void sh_server_shutdown(sh_server *s);

/* sh_server_start failed: close what it opened and drain the loop. */
void sh_server_abort(sh_server *s);

/* Release what remains after uv_run returned. */
void sh_server_free(sh_server *s);

/* SIGHUP: load the script again as a new generation. */
void sh_server_reload(sh_server *s);

#endif
