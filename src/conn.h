/* conn.h — the transport: accepted TCP connections, their plain HTTP/1.1
 * phase (keep-alive, pipelining) and, after an upgrade, their WebSocket phase
 * (wslay). It knows nothing of Lua or of script generations: it receives its
 * limits as a plain struct (sh_limits) and reports what happens through one
 * callback (sh_conn_cb), the way h2o's websocket layer does.
 *
 * States of a connection (c->phase), with the calls and events that move it:
 *
 *   accept ─► HTTP ──upgrade request: EV_UPGRADE──► HANDSHAKE
 *              ▲ │ EV_REQUEST, answered by           │  sh_conn_upgrade() ─► WS ─► EV_OPEN
 *              └─┘ sh_conn_respond + _request_done   └─ sh_conn_refuse() ─► HTTP (answer, end)
 *
 *   WS: EV_MESSAGE per message; the close handshake completes (or the socket
 *   dies) ─► EV_CLOSE (once, with the code the connection ended with).
 *   any ─ error, EOF, timeout, sh_conn_close() ─► CLOSED ─ handles closed ─► EV_FREE, freed.
 *
 * Output: every response and frame is appended to the connection's output
 * buffer and the connection is marked dirty; dirty connections are written
 * once per loop iteration, before the loop polls (a uv_prepare handle), so
 * the frames one iteration produces leave in one write.
 *
 * Memory: the read buffer is shared by every connection; a connection's
 * output and message buffers are taken on demand and freed once drained.
 *
 * Callback rules: the handler may call any function of this header on the
 * connection it is told about, from inside any event. EV_CLOSE may be
 * reported from inside such a call (a send that finds the socket dead closes
 * it): the handler's EV_CLOSE must therefore only record and queue work,
 * never run application code in place. EV_FREE comes from a libuv close
 * callback only. */
#ifndef SH_CONN_H
#define SH_CONN_H

#include <stdint.h>

#include <uv.h>
#include <wslay/wslay.h>

#include "buf.h"
#include "http_parse.h"
#include "metrics.h"
#include "utf8.h"

#define SH_ID_LEN 24 /* 16 hex of the process instance + 8 hex of a counter */
#define SH_READ_BUF_SIZE (64 * 1024)
#define SH_ADMIN_RESERVE 16 /* sockets over max_connections kept for /healthz, /metrics */

/* What a connection may use; copied nowhere: the pointer given to
 * sh_transport_accept() must stay valid until EV_FREE. */
typedef struct sh_limits {
    size_t max_head_bytes;         /* request head → 431 */
    size_t max_body_bytes;         /* plain-HTTP request body → 413 */
    size_t max_connections;        /* live sockets → 503 (admin endpoints keep a reserve) */
    size_t max_message_bytes;      /* WebSocket message → 1009 */
    size_t max_send_buffer;        /* unsent bytes → 1008 (WebSocket), reading paused (HTTP) */
    uint64_t handshake_timeout_ms; /* request head, and the upgrade decision, within */
    uint64_t keepalive_timeout_ms; /* idle keep-alive connection → closed */
    uint64_t ping_interval_ms;     /* server ping period (0: never) */
    uint64_t ping_timeout_ms;      /* pong deadline → dropped */
    uint64_t close_timeout_ms;     /* wait for the peer's close frame → dropped */
    char **allowed_origins;        /* NULL-terminated; NULL: any Origin */
    int permessage_deflate;        /* accept a permessage-deflate offer (ws_deflate.h) */
} sh_limits;

enum sh_phase {
    SH_PHASE_HTTP,      /* reading requests */
    SH_PHASE_HANDSHAKE, /* an upgrade request waits for the handler's decision */
    SH_PHASE_WS,        /* WebSocket open */
    SH_PHASE_CLOSED     /* handles closing; struct freed in the last close callback */
};

/* Connection flags (c->flags). */
enum {
    SH_CF_READING = 1u << 0,        /* uv_read_start active */
    SH_CF_BUSY = 1u << 1,           /* a request is being answered: parse no further */
    SH_CF_PARSING = 1u << 2,        /* inside the request loop */
    SH_CF_WRITING = 1u << 3,        /* a uv_write is in flight (from inflight) */
    SH_CF_END_AFTER_WRITE = 1u << 4,/* end the connection once out is written */
    SH_CF_LINGERING = 1u << 5,      /* FIN sent; input discarded until EOF or timeout */
    SH_CF_SHUTTING = 1u << 6,       /* uv_shutdown in flight */
    SH_CF_FAILED = 1u << 7,         /* WebSocket protocol failure queued: ignore input */
    SH_CF_CLOSE_QUEUED = 1u << 8,   /* our close frame is queued: send no more data */
    SH_CF_IN_WSLAY = 1u << 9,       /* inside wslay_event_recv: defer frees */
    SH_CF_CLOSE_WAIT = 1u << 10,    /* our close is sent: waiting for the peer's */
    SH_CF_PING_OUT = 1u << 11,      /* a ping was sent, no pong yet */
    SH_CF_DIRTY = 1u << 12,         /* in the transport's flush list */
    SH_CF_OVER_LIMIT = 1u << 13,    /* accepted over max_connections: admin endpoints only */
    SH_CF_ENDED = 1u << 14,         /* EV_CLOSE reported */
    SH_CF_COUNTED = 1u << 15,       /* counts against max_connections */
    SH_CF_PAUSED = 1u << 16,        /* a message was reported: the rest of the input waits
                                       in pending until the next loop iteration */
    SH_CF_REST = 1u << 17,          /* its wslay context was at rest at the last sweep */
    SH_CF_CLOSE_OUT = 1u << 18,     /* our close frame went out without a wslay context */
    SH_CF_CLOSE_IN = 1u << 19,      /* ... and the peer's close answered it: handshake done */
    SH_CF_MUTE = 1u << 20,          /* wslay's output is dropped (a context told of CLOSE_OUT) */
};

/* A WebSocket's wslay context (9.2 KiB) is freed once the connection has been
 * at rest for one to two sweeps of this period (ws_conn.c): a job's frames do
 * not pay for a new context each, an idle connection keeps none. */
#define SH_PARK_SWEEP_MS 250
/* ... while at most this many hold one: past it, a WebSocket at rest is
 * parked at once (a ramp of thousands of connections would otherwise hold a
 * context each for a sweep or two, and the heap keeps that peak). */
#define SH_PARK_HELD_MAX 128

struct sh_transport;

typedef struct sh_conn {
    struct sh_transport *tp;
    uv_tcp_t tcp;
    uv_timer_t timer;            /* head deadline, keep-alive, ping, close wait, linger */
    uint8_t handles_open;        /* freed when this drops to 0 */
    uint8_t phase;               /* enum sh_phase */
    uint8_t timer_mode;          /* what the timer guards (conn.c) */
    uint8_t msg_opcode;          /* 1 text, 2 binary, 0 none: the message arriving */
    uint8_t frame_opcode;        /* opcode of the frame being received */
    uint8_t frame_fin;
    uint16_t fix_empty_close;    /* status to put into wslay's status-less close */
    uint32_t flags;              /* SH_CF_* */
    uint16_t close_code;         /* received, else sent, else 1006 */
    struct sh_conn *prev, *next; /* in tp->conns */
    struct sh_conn *dirty_next;  /* in tp->dirty */
    struct sh_conn *held_prev, *held_next; /* in tp->held while it has a wslay context */
    const sh_limits *lim;
    char id[SH_ID_LEN + 1];
    char peer[56];               /* "ip:port" or "[ip6]:port" */
    uint64_t opened_ms;          /* loop time at accept */
    uint64_t bytes_in, bytes_out;
    uint32_t msgs_in, msgs_out;
    int http_status;             /* last status answered on the HTTP phase */
    uint32_t requests;           /* HTTP requests answered */

    /* input */
    sh_http_parser *hp;          /* HTTP phases only */
    sh_buf pending;              /* bytes read but not yet consumed (pipelining) */
    const uint8_t *in;           /* chunk being fed to wslay */
    size_t in_len;
    uint64_t fr_left;            /* bytes to the end of the current frame part */
    uint8_t fr_hdr[14];          /* the header of the frame arriving, as far as read */
    uint8_t fr_hlen;             /* bytes in fr_hdr; fr_left counts payload once complete */
    uint8_t fr_in_payload;

    /* output: bytes accumulate in out; one write in flight from inflight */
    sh_buf out, inflight;
    uv_write_t *wreq;            /* malloc'ed while a write is queued (rare: uv_try_write first) */
    uv_shutdown_t *shutdown_req; /* malloc'ed while the FIN is queued */

    /* WebSocket */
    wslay_event_context_ptr ws;
    sh_utf8 utf8;                /* validator of the text message arriving */
    sh_buf msg;                  /* the data message being assembled */
    sh_buf ctrl;                 /* close frame payload being received */
    char *close_reason;          /* NULL or the reason the connection ended with */
    char method[16];             /* the last request's method and path (cut at 512 bytes; */
    char *path;                  /* no query: it may hold tokens), for the access line */
    struct sh_pmd *pmd;          /* NULL, or permessage-deflate's state once negotiated */
    struct sh_body_source *body; /* NULL, or the response body being sent (HTTP phase) */

    void *app;                   /* the handler's per-connection state */
} sh_conn;

enum sh_conn_event_type {
    SH_CONN_EV_REQUEST, /* a plain request (req): answer it with sh_conn_respond(), now or
                           later, then call sh_conn_request_done() */
    SH_CONN_EV_UPGRADE, /* a valid upgrade request (req, kept until decided): answer with
                           sh_conn_upgrade() or sh_conn_refuse(), now or later */
    SH_CONN_EV_OPEN,    /* the 101 is queued; the WebSocket is open */
    SH_CONN_EV_MESSAGE, /* a complete data message (data, len, binary), valid during the
                           call; the handler returns 0, or a close code to fail with */
    SH_CONN_EV_CLOSE,   /* the connection ended: the close handshake completed or the
                           socket died (code, reason); was_ws says whether it was open.
                           Reported once for every connection that got past accept */
    SH_CONN_EV_FREE,    /* the struct is about to be freed: drop every pointer to it */
};

typedef struct sh_conn_event {
    enum sh_conn_event_type type;
    sh_request *req;     /* REQUEST, UPGRADE */
    int keep_alive;      /* REQUEST: the answer may keep the connection */
    int head_only;       /* REQUEST: a HEAD request */
    const char *data;    /* MESSAGE */
    size_t len;
    int binary;
    uint16_t code;       /* CLOSE: 1006 when no close frame was exchanged */
    const char *reason;  /* CLOSE: "" when none */
    int was_ws;          /* CLOSE */
} sh_conn_event;

typedef int (*sh_conn_cb)(sh_conn *c, const sh_conn_event *ev, void *arg);
/* A transport without sockets (the policy test kit): what a connection
 * writes is handed here instead of to a socket. */
typedef void (*sh_conn_capture_fn)(sh_conn *c, const char *data, size_t len, void *arg);

/* The transport of a process: the connections, the shared read buffer, the
 * flush list and the handles that drive them. Embedded by its owner. */
/* The WebSocket phase (ws_conn.c), handed to the transport by whoever composes
 * it (server.c, kit.c), so that conn.c calls ws_conn.c only through this
 * table: ws_conn.c depends on conn.c, not the other way (no dependency loop). */
typedef struct sh_ws_phase {
    int (*start)(sh_conn *c);                              /* the 101 is in the output */
    void (*on_read)(sh_conn *c, const char *data, size_t len); /* NULL data: EOF */
    int (*finished)(const sh_conn *c);                     /* all done: end after the write */
    void (*resume)(sh_conn *c);                            /* input that waited behind a hook */
    void (*on_timer)(sh_conn *c);
    void (*free)(sh_conn *c);
    void (*close)(sh_conn *c, uint16_t code, const char *reason); /* sh_conn_ws_close */
} sh_ws_phase;

/* ws_conn.c's. */
extern const sh_ws_phase sh_ws_phase_rfc6455;

typedef struct sh_transport {
    uv_loop_t *loop;
    const sh_ws_phase *ws;       /* the WebSocket phase (sh_ws_phase_rfc6455) */
    sh_conn_cb cb;               /* the one event handler */
    void *cb_arg;
    sh_metrics *metrics;         /* counters this layer keeps */
    char instance[17];           /* id prefix of this process */
    uint64_t conn_seq;           /* connection counter */
    sh_conn *conns;              /* every connection not yet freed */
    size_t nconns;               /* of which ... */
    size_t nlive;                /* ... count against max_connections */
    sh_conn *dirty;              /* connections with output to write */
    uv_prepare_t flusher;        /* writes the dirty connections before the loop polls */
    uv_idle_t resumer;           /* active while paused input waits: the poll does not block */
    size_t npaused;
    sh_conn *held;               /* WebSockets with a wslay context (ws_conn.c) */
    size_t nheld;
    uv_timer_t parker;           /* sweeps held: frees the contexts of those at rest */
    char *read_buf;              /* shared by all connections */
    int read_buf_busy;
    int stopping;                /* no new upgrades; answers end their connection */
    sh_conn_capture_fn capture;  /* non-NULL: every connection is virtual (no socket) */
    const uv_stream_t *nodelay_listener; /* TCP_NODELAY set on it (accepted sockets inherit) */
} sh_transport;

/* Set up tp on loop. Returns 0 or UV_ENOMEM. */
int sh_transport_init(sh_transport *tp, uv_loop_t *loop, const sh_ws_phase *ws, sh_conn_cb cb,
                      void *arg, sh_metrics *metrics, const char *instance);
/* Close every connection now and the transport's handles (after the loop
 * has run their close callbacks the transport can be discarded). */
void sh_transport_close(sh_transport *tp);
/* Stop: WebSockets get close 1001, idle HTTP connections end. */
void sh_transport_stop(sh_transport *tp);

/* Accept one connection from listener with limits lim. Returns the
 * connection (app is NULL: the caller sets it, then calls sh_conn_start), or
 * NULL when accept failed. */
sh_conn *sh_transport_accept(sh_transport *tp, uv_stream_t *listener, const sh_limits *lim);
/* Start reading a freshly accepted connection. */
void sh_conn_start(sh_conn *c);

/* A transport without sockets (the policy test kit): output goes to
 * capture(c, data, len, cb_arg) in place of a socket write; input comes from
 * sh_conn_input. A virtual connection from peer ("ip:port"): like accept. */
void sh_transport_set_capture(sh_transport *tp, sh_conn_capture_fn capture);
sh_conn *sh_transport_open_virtual(sh_transport *tp, const sh_limits *lim, const char *peer);
/* Bytes "read" from a virtual connection's peer (data NULL: the peer's EOF).
 * Call only while it is reading (SH_CF_READING), as a socket would. */
void sh_conn_input(sh_conn *c, const char *data, size_t len);

/* Begin tearing down now (idempotent): EV_CLOSE, then EV_FREE once the
 * handles are closed. */
void sh_conn_close(sh_conn *c);

/* 1 while the WebSocket can still send data frames. */
int sh_conn_open(const sh_conn *c);

/* Queue a text or binary message. Returns 0, or -1 when the connection
 * cannot send (closing). Past max_send_buffer the connection closes 1008. */
int sh_conn_send(sh_conn *c, const char *data, size_t len, int binary);

/* Start the close handshake with code and reason (≤ 123 bytes). */
void sh_conn_ws_close(sh_conn *c, uint16_t code, const char *reason);

/* Answer a plain request. extra: preformatted "Name: value\r\n" lines or
 * NULL; keep 0 ends the connection after the write. Returns 0, or -1 when
 * the head does not fit (over 16 KiB). */
int sh_conn_respond(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                    const char *extra, int keep, int head_only);
/* A response body produced in pieces (a file), pulled by the transport: the
 * next piece is asked for only once the previous one has been handed to the
 * socket, so a connection holds at most SH_BODY_CHUNK bytes of it however
 * large the body and however slow the reader. Embedded in the producer's own
 * struct (the callbacks get it back). */
typedef struct sh_body_source sh_body_source;
struct sh_body_source {
    /* Copy the next bytes of the body, at most max (> 0), to dst. Returns the
     * number copied (> 0), 0 when the source ended early (a file that shrank),
     * or a negative errno; either of the last two closes the connection: the
     * peer sees fewer bytes than announced, never other ones. */
    long (*read)(sh_body_source *src, char *dst, size_t max);
    /* Called once, when the body has been taken whole or the connection went
     * away first: free src and what it holds. */
    void (*release)(sh_body_source *src);
    uint64_t left; /* the transport's: body bytes still to read */
};
#define SH_BODY_CHUNK (64 * 1024)

/* Answer a plain request with a body of exactly len bytes pulled from src
 * (as sh_conn_respond otherwise; no HEAD: that is sh_conn_respond with
 * head_only). Returns 0: src is the transport's until its release; -1 (the
 * connection is closing, or the head is too large: answered 500): src was
 * not taken, release it yourself. While the body is sent, further requests
 * on the connection wait; a body that makes no progress for
 * keepalive_timeout_ms ends the connection. */
int sh_conn_respond_body(sh_conn *c, int status, const char *ctype, uint64_t len,
                         const char *extra, int keep, sh_body_source *src);
/* The request of EV_REQUEST is answered: go on with the next one. */
void sh_conn_request_done(sh_conn *c);

/* Decide an EV_UPGRADE: switch protocols (protocol: the Sec-WebSocket-Protocol
 * to answer, or NULL; extra: header lines or NULL) ... */
void sh_conn_upgrade(sh_conn *c, const char *protocol, const char *extra);
/* ... or answer status (400..599) with body and extra header lines, and end. */
void sh_conn_refuse(sh_conn *c, int status, const char *body, size_t len, const char *extra);
/* The same with a Content-Type (NULL: text/plain; charset=utf-8). */
void sh_conn_refuse_as(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                       const char *extra);

/* The text of an HTTP status code ("Status" when unknown). */
const char *sh_http_status_text(int status);

/* Internal to conn.c and ws_conn.c. */
#define SH_HAS(c, f) (((c)->flags & (f)) != 0)
#define SH_SET(c, f) ((c)->flags |= (f))
#define SH_CLR(c, f) ((c)->flags &= ~(uint32_t)(f))
void sh_conn_mark_dirty(sh_conn *c);
void sh_conn_arm_timer(sh_conn *c, uint64_t ms);
void sh_conn_stop_reading(sh_conn *c);
void sh_conn_start_reading(sh_conn *c);
void sh_conn_flush(sh_conn *c);
int sh_conn_emit(sh_conn *c, const sh_conn_event *ev);

#endif
