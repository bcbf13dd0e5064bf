/* conn.h — one accepted TCP connection: plain HTTP/1.1 (with keep-alive),
 * then, after an upgrade, a WebSocket driven by wslay.
 *
 * Lifetime: the connection owns a uv_tcp_t and a uv_timer_t (embedded).
 * sh_conn_close() marks it closing, releases its subscriptions, timers and
 * tasks, runs on_close, and uv_close()s both handles; the struct is freed in
 * the last close callback. Nothing is freed inside a wslay or llhttp
 * callback: those only set flags that the next proceed() acts on.
 *
 * Files: conn.c (socket, buffers, HTTP phase), ws_conn.c (WebSocket phase). */
#ifndef SH_CONN_H
#define SH_CONN_H

#include <stdint.h>

#include <lua.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "buf.h"
#include "http_parse.h"
#include "utf8.h"

struct sh_server;
struct sh_gen;
struct sh_task;
struct sh_redis_sub;
struct sh_timer;

#define SH_ID_LEN 24 /* 16 hex of the process instance + 8 hex of a counter */

enum sh_phase {
    SH_PHASE_HTTP,      /* reading requests */
    SH_PHASE_HANDSHAKE, /* upgrade accepted by the parser, on_handshake running */
    SH_PHASE_WS,        /* WebSocket open */
    SH_PHASE_CLOSED     /* handles closing; struct freed in the last close callback */
};

/* A subscription a connection holds (conn:subscribe). */
typedef struct sh_conn_sub {
    struct sh_conn_sub *next;
    struct sh_redis_sub *sub;
    struct sh_conn *conn;
    struct sh_task *waiter; /* task suspended until Redis confirms, or NULL */
    size_t channel_len;
    char channel[];
} sh_conn_sub;

typedef struct sh_conn {
    struct sh_server *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;            /* handshake deadline, keep-alive, ping, close wait */
    int handles_open;            /* freed when this drops to 0 */
    struct sh_conn *prev, *next; /* in srv->conns */
    char id[SH_ID_LEN + 1];
    char peer[64];               /* "ip:port" */
    enum sh_phase phase;
    struct sh_gen *gen;          /* the policy this connection runs on (ref held) */

    /* input */
    sh_http_parser hp;
    sh_buf pending;              /* bytes read but not yet consumed (pipelining) */
    const uint8_t *in;           /* chunk being fed to wslay */
    size_t in_len;
    int hp_live;                 /* hp initialised (HTTP phases) */
    int reading;                 /* uv_read_start active */
    int busy;                    /* a request is being answered: parse no further */
    int parsing;                 /* inside process_input */
    int timer_mode;              /* what the timer currently guards (conn.c) */

    /* output: bytes accumulate in out; one write in flight from inflight */
    sh_buf out, inflight;
    uv_write_t wreq;
    int writing;
    int close_after_write;       /* end the connection once out is written */
    int lingering;               /* FIN sent; input discarded until EOF or timeout */
    uv_shutdown_t shutdown_req;
    int shutting_down;

    /* WebSocket */
    wslay_event_context_ptr ws;
    sh_utf8 utf8;                /* validator of the text message arriving */
    sh_buf msg;                  /* the data message being assembled */
    uint8_t msg_opcode;          /* 1 text, 2 binary, 0 none */
    uint8_t frame_opcode;        /* opcode of the frame being received */
    uint8_t frame_fin;
    sh_buf ctrl;                 /* close frame payload being received */
    int failed;                  /* a protocol failure was queued: ignore further input */
    int close_queued;            /* our close frame is queued: send no more data */
    uint16_t fix_empty_close;    /* status to put into wslay's status-less close */
    uint16_t close_code;         /* for on_close: received, else sent, else 1006 */
    char close_reason[124];
    int in_wslay;                /* inside wslay_event_recv: defer writes and frees */
    int close_wait;              /* our close is sent: waiting for the peer's */
    int ping_outstanding;        /* a ping was sent, no pong yet */

    /* Lua */
    int ud_ref;                  /* registry ref of the conn userdata, LUA_NOREF */
    int request_ref;             /* registry ref of the request table, LUA_NOREF */
    struct sh_task *tasks;       /* tasks owned by this connection */
    sh_conn_sub *subs;
    struct sh_timer *timers;     /* host.timer handles owned by this connection */
} sh_conn;

/* Accept a pending connection on the server's listener. */
void sh_conn_accept(struct sh_server *srv);

/* Begin tearing down (idempotent). */
void sh_conn_close(sh_conn *c);

/* Queue a text (or binary) message. Returns 0, or -1 when the connection
 * cannot send (closing). Enforces max_send_buffer (→ close 1008). */
int sh_conn_send(sh_conn *c, const char *data, size_t len, int binary);

/* Start the close handshake with code and reason (reason ≤ 123 bytes). */
void sh_conn_ws_close(sh_conn *c, uint16_t code, const char *reason);

/* Close because a Lua hook failed: 1011 for a WebSocket, 500 for HTTP. */
void sh_conn_lua_failed(sh_conn *c);

/* 1 when the connection can still send. */
int sh_conn_open(const sh_conn *c);

/* Push the conn userdata on L (creating it on first use). */
void sh_conn_push(sh_conn *c, lua_State *L);

/* Queue a complete HTTP response (extra: preformatted "K: v\r\n" lines or
 * NULL; keep 0 ends the connection after the write). */
void sh_conn_respond(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra, int keep, int head_only);
/* on_handshake's verdict: accept the upgrade, or answer status with body. */
void sh_conn_handshake_result(sh_conn *c, int accept, int status, const char *body, size_t len);
/* End the connection gracefully once pending output is written. */
void sh_conn_end(sh_conn *c);
void sh_conn_close_raw(sh_conn *c);

/* Internal to conn.c / ws_conn.c. */
void sh_conn_flush(sh_conn *c);
int sh_ws_start(sh_conn *c, const char *leftover, size_t len);
void sh_ws_on_read(sh_conn *c, const char *data, size_t len);
int sh_ws_finished(sh_conn *c);
void sh_ws_on_timer(sh_conn *c);
void sh_ws_free(sh_conn *c);
void sh_conn_arm_timer(sh_conn *c, uint64_t ms);
void sh_conn_stop_reading(sh_conn *c);

#endif
