/* ws_conn.c — the WebSocket phase of a connection: wslay's event API on a
 * libuv socket (see conn.h).
 *
 * Receiving: wslay parses frames from the bytes of each read (recv_cb) with
 * buffering off; the frame callbacks assemble data messages into c->msg (one
 * buffer reused for every message) and validate UTF-8 per chunk, so an
 * invalid byte fails the connection (1007) while a fragmented message is
 * still arriving. wslay itself answers pings, checks masking, opcodes, RSV
 * bits, control-frame rules and the message size (1009).
 *
 * Sending: data frames of a server are unmasked, so conn:send writes the
 * frame header and payload straight into the output buffer (no allocation
 * per message); wslay sends control frames (pong, ping, close) through
 * send_cb into the same buffer. send_cb accepts every byte, so wslay's queue
 * is empty whenever we write directly, and frames never interleave.
 *
 * Closing: wslay answers a peer's close; once neither side has anything to
 * read or write, the TCP connection ends (server first, as RFC 6455 §7.1.1
 * prefers). */
#include <arpa/inet.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "lua_host.h"
#include "server.h"

/* ------------------------------------------------------------ callbacks */

/* The peer does not read: more than max_send_buffer bytes wait to be
 * written. Drop them, close 1008, and stop reading (its input could only add
 * more output, e.g. pongs). A single message may take the queue past the
 * limit; the next one then finds it over. Returns 1 when it closed. */
static int slow_consumer(sh_conn *c)
{
    size_t pending = c->out.len + c->inflight.len;
    if (pending <= c->gen->cfg.max_send_buffer || wslay_event_get_close_sent(c->ws))
        return 0; /* under the limit, or our close frame is in out: out is final */
    c->srv->metrics.slow_consumer_closes++;
    sh_warn(c->id, "slow consumer: %zu bytes unsent (max_send_buffer %zu): closing 1008", pending,
            c->gen->cfg.max_send_buffer);
    c->out.len = 0; /* unsent frames are dropped; out never holds a partial frame */
    sh_conn_ws_close(c, 1008, "slow consumer");
    wslay_event_shutdown_read(c->ws);
    c->failed = 1;
    return 1;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
    sh_conn *c = user;
    (void)flags;
    if (c->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->in_len ? len : c->in_len;
    memcpy(buf, c->in, n);
    c->in += n;
    c->in_len -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    sh_conn *c = user;
    (void)ctx;
    (void)flags;
    if (c->fix_empty_close && len == 2 && data[0] == 0x88 && data[1] == 0x00) {
        /* wslay closes a frame-level protocol error without a status code;
         * RFC 6455 §7.4.1 has one for it */
        uint8_t frame[4] = {0x88, 0x02, (uint8_t)(c->fix_empty_close >> 8),
                            (uint8_t)(c->fix_empty_close & 0xff)};
        sh_buf_append(&c->out, frame, 4);
        c->fix_empty_close = 0;
        return (ssize_t)len;
    }
    sh_buf_append(&c->out, data, len);
    return (ssize_t)len;
}

/* Fail the connection: close with code, read nothing more. */
static void fail(sh_conn *c, uint16_t code, const char *why)
{
    if (c->failed)
        return;
    c->failed = 1;
    c->close_queued = 1;
    sh_info(c->id, "closing %u: %s", code, why);
    wslay_event_queue_close(c->ws, code, NULL, 0);
    wslay_event_shutdown_read(c->ws);
    if (!c->close_code)
        c->close_code = code;
}

static void on_frame_start(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
    sh_conn *c = user;
    (void)ctx;
    c->frame_opcode = arg->opcode;
    c->frame_fin = arg->fin;
    if (c->failed)
        return;
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
        c->msg_opcode = arg->opcode;
        c->msg.len = 0;
        sh_utf8_init(&c->utf8);
    }
    if (arg->opcode < 8 && c->msg.len + arg->payload_length > c->gen->cfg.max_message_bytes) {
        /* wslay counts only the frame when it does not buffer: the message
         * total is checked here, before any byte of the frame is read */
        fail(c, 1009, "message over max_message_bytes");
        return;
    }
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        c->ctrl.len = 0;
        if (arg->payload_length == 1)
            fail(c, 1002, "close frame with a 1-byte payload");
    }
}

static void on_frame_chunk(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
    sh_conn *c = user;
    (void)ctx;
    if (c->failed || arg->data_length == 0)
        return;
    switch (c->frame_opcode) {
    case WSLAY_TEXT_FRAME:
    case WSLAY_BINARY_FRAME:
    case WSLAY_CONTINUATION_FRAME:
        if (c->msg_opcode == WSLAY_TEXT_FRAME &&
            sh_utf8_feed(&c->utf8, arg->data, arg->data_length) < 0) {
            fail(c, 1007, "invalid UTF-8 in a text message");
            return;
        }
        sh_buf_append(&c->msg, arg->data, arg->data_length);
        break;
    case WSLAY_CONNECTION_CLOSE:
        sh_buf_append(&c->ctrl, arg->data, arg->data_length);
        break;
    default:
        break;
    }
}

/* A close frame arrived whole: check its reason, remember code and reason. */
static void close_frame_end(sh_conn *c)
{
    if (c->ctrl.len < 2) {
        if (!c->close_code)
            c->close_code = 1005; /* RFC 6455 §7.1.5: no status code was present */
        return;
    }
    if (!sh_utf8_valid((const uint8_t *)c->ctrl.p + 2, c->ctrl.len - 2)) {
        fail(c, 1007, "invalid UTF-8 in a close reason");
        return;
    }
    uint16_t code = (uint16_t)(((uint8_t)c->ctrl.p[0] << 8) | (uint8_t)c->ctrl.p[1]);
    if (!c->close_code) {
        c->close_code = code;
        size_t n = c->ctrl.len - 2 < sizeof c->close_reason - 1 ? c->ctrl.len - 2
                                                                  : sizeof c->close_reason - 1;
        memcpy(c->close_reason, c->ctrl.p + 2, n);
        c->close_reason[n] = '\0';
    }
    if (code >= 1012 && code <= 1014) {
        /* registered with IANA after RFC 6455 (service restart, try again
         * later, bad gateway); wslay would answer 1002, so echo it first */
        wslay_event_queue_close(c->ws, code, NULL, 0);
    }
}

static void on_frame_end(wslay_event_context_ptr ctx, void *user)
{
    sh_conn *c = user;
    (void)ctx;
    if (c->failed)
        return;
    if (c->frame_opcode == WSLAY_CONNECTION_CLOSE) {
        close_frame_end(c);
        return;
    }
    if (c->frame_opcode >= 8 || !c->frame_fin)
        return;
    /* a data message is complete */
    if (c->msg_opcode == WSLAY_TEXT_FRAME && !sh_utf8_at_boundary(&c->utf8)) {
        fail(c, 1007, "text message ends inside a UTF-8 sequence");
        return;
    }
    uint8_t op = c->msg_opcode;
    c->msg_opcode = 0;
    c->srv->metrics.messages_in++;
    if (op == WSLAY_BINARY_FRAME && !sh_gen_has_hook(c->gen, SH_HOOK_BINARY)) {
        fail(c, 1003, "binary messages are not accepted by this policy");
        return;
    }
    sh_api_message(c, c->msg.p, c->msg.len, op == WSLAY_BINARY_FRAME);
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
    sh_conn *c = user;
    if (arg->opcode == WSLAY_PING) {
        /* wslay has just queued the pong: put it in the output now, ahead of
         * anything later input produces (a close queued by wslay jumps ahead
         * of queued control frames and would swallow it) */
        wslay_event_send(ctx);
        slow_consumer(c);
        return;
    }
    if (arg->opcode == WSLAY_PONG && c->ping_outstanding) {
        c->ping_outstanding = 0;
        if (c->gen->cfg.ping_interval_ms && !c->close_wait)
            sh_conn_arm_timer(c, c->gen->cfg.ping_interval_ms);
    }
}

static const struct wslay_event_callbacks callbacks = {
    recv_cb, send_cb, NULL, on_frame_start, on_frame_chunk, on_frame_end, on_msg,
};

/* ------------------------------------------------------------ lifecycle */

int sh_ws_start(sh_conn *c, const char *leftover, size_t len)
{
    if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0)
        return -1;
    wslay_event_config_set_no_buffering(c->ws, 1);
    wslay_event_config_set_max_recv_msg_length(c->ws, c->gen->cfg.max_message_bytes);
    sh_server *s = c->srv;
    s->metrics.websockets_current++;
    s->metrics.websockets_total++;
    sh_info(c->id, "websocket open from %s (script generation %u)", c->peer, c->gen->id);
    if (c->gen->cfg.ping_interval_ms)
        sh_conn_arm_timer(c, c->gen->cfg.ping_interval_ms);
    sh_conn_flush(c); /* the 101 */
    if (c->phase != SH_PHASE_WS)
        return 0; /* the write failed: the connection is already closed */
    sh_api_open(c);
    if (len && c->phase == SH_PHASE_WS)
        sh_ws_on_read(c, leftover, len);
    return 0;
}

void sh_ws_free(sh_conn *c)
{
    if (c->in_wslay)
        return; /* freed when wslay_event_recv returns (sh_ws_on_read) */
    if (c->ws)
        wslay_event_context_free(c->ws);
    c->ws = NULL;
    sh_buf_free(&c->msg);
    sh_buf_free(&c->ctrl);
}

/* Send what wslay has queued, then write. */
static void pump(sh_conn *c)
{
    if (wslay_event_want_write(c->ws))
        wslay_event_send(c->ws);
    if (!c->close_code && wslay_event_get_close_sent(c->ws))
        c->close_code = wslay_event_get_status_code_sent(c->ws); /* a close wslay decided */
    if ((c->close_queued || wslay_event_get_close_sent(c->ws)) && !c->close_wait) {
        /* our close is on its way: the peer gets close_timeout_ms to answer
         * it (and to read what is queued), then the connection is dropped */
        c->close_wait = 1;
        sh_conn_arm_timer(c, c->gen->cfg.close_timeout_ms);
    }
    sh_conn_flush(c);
}

void sh_ws_on_read(sh_conn *c, const char *data, size_t len)
{
    if (data == NULL) { /* EOF */
        sh_conn_close(c);
        return;
    }
    if (!wslay_event_want_read(c->ws)) {
        /* after a close or a failure input is not wanted: stop reading it
         * (the linger phase reads again, for the peer's EOF) */
        sh_conn_stop_reading(c);
        return;
    }
    c->in = (const uint8_t *)data;
    c->in_len = len;
    c->in_wslay++;
    int r = wslay_event_recv(c->ws);
    c->in_wslay--;
    c->in_len = 0;
    if (c->phase == SH_PHASE_CLOSED) { /* closed from inside a callback */
        sh_ws_free(c);
        return;
    }
    if (r == WSLAY_ERR_CALLBACK_FAILURE && !c->failed) {
        /* the frame layer rejected the input (bad length encoding, control
         * frame too long or fragmented) and queued a status-less close */
        c->failed = 1;
        c->fix_empty_close = 1002;
        if (!c->close_code)
            c->close_code = 1002;
        sh_info(c->id, "closing 1002: malformed frame");
    } else if (r != 0 && r != WSLAY_ERR_CALLBACK_FAILURE) {
        sh_conn_close(c);
        return;
    }
    if (!wslay_event_want_read(c->ws))
        sh_conn_stop_reading(c);
    pump(c);
}

/* Called by sh_conn_flush when everything is written. */
int sh_ws_finished(sh_conn *c)
{
    return c->ws && !wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws);
}

void sh_ws_on_timer(sh_conn *c)
{
    const sh_config *cfg = &c->gen->cfg;
    if (c->close_wait) {
        sh_info(c->id, "no close frame from the peer within %llums: dropped",
                (unsigned long long)cfg->close_timeout_ms);
        sh_conn_close(c);
        return;
    }
    if (c->ping_outstanding) {
        sh_info(c->id, "no pong within %llums: dropped", (unsigned long long)cfg->ping_timeout_ms);
        sh_conn_close(c);
        return;
    }
    struct wslay_event_msg ping = {WSLAY_PING, (const uint8_t *)"statushost", 10};
    if (wslay_event_queue_msg(c->ws, &ping) == 0) {
        c->ping_outstanding = 1;
        sh_conn_arm_timer(c, cfg->ping_timeout_ms);
        pump(c);
    }
}

/* ------------------------------------------------------------- sending */

/* Append one unmasked frame to the output buffer. */
static void put_frame(sh_conn *c, uint8_t opcode, const char *data, size_t len)
{
    uint8_t h[10];
    size_t hl;
    h[0] = 0x80 | opcode;
    if (len < 126) {
        h[1] = (uint8_t)len;
        hl = 2;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    sh_buf_reserve(&c->out, hl + len);
    memcpy(c->out.p + c->out.len, h, hl);
    memcpy(c->out.p + c->out.len + hl, data, len);
    c->out.len += hl + len;
}

int sh_conn_send(sh_conn *c, const char *data, size_t len, int binary)
{
    if (!sh_conn_open(c))
        return -1;
    if (slow_consumer(c))
        return -1;
    if (wslay_event_want_write(c->ws))
        wslay_event_send(c->ws); /* control frames queued earlier (a pong) go first */
    put_frame(c, binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, data, len);
    c->srv->metrics.messages_out++;
    if (!c->in_wslay)
        sh_conn_flush(c); /* inside a receive, the write follows it */
    return 0;
}

void sh_conn_ws_close(sh_conn *c, uint16_t code, const char *reason)
{
    if (c->phase != SH_PHASE_WS || !c->ws)
        return;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123)
        rl = 123;
    c->close_queued = 1;
    if (wslay_event_queue_close(c->ws, code, (const uint8_t *)reason, rl) == 0 && !c->close_code) {
        c->close_code = code;
        memcpy(c->close_reason, reason ? reason : "", rl);
        c->close_reason[rl] = '\0';
    }
    if (!c->in_wslay)
        pump(c);
}
