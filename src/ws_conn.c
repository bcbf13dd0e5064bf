/* ws_conn.c — the WebSocket phase of a connection: wslay's event API on a
 * libuv socket (see conn.h).
 *
 * Receiving: wslay parses frames from the bytes of each read (recv_cb) with
 * buffering off; the frame callbacks assemble data messages into c->msg and
 * validate UTF-8 per chunk, so an invalid byte fails the connection (1007)
 * while a fragmented message is still arriving. A complete message is
 * reported (EV_MESSAGE) and its buffer given back. wslay itself answers
 * pings, checks masking, opcodes, RSV bits, control-frame rules and the frame
 * size; the message total is checked here (1009).
 *
 * Sending: data frames of a server are unmasked, so sh_conn_send writes the
 * frame header and payload straight into the output buffer; wslay sends
 * control frames (pong, ping, close) through send_cb into the same buffer.
 * send_cb accepts every byte, so wslay's queue is empty whenever we write
 * directly, and frames never interleave. The buffer is written once per loop
 * iteration (conn.c).
 *
 * Memory: an open WebSocket at rest (no frame or fragmented message half
 * read, nothing queued for wslay, no close under way) keeps no wslay context
 * (9.2 KiB with wslay 1.1) for long: a sweep every SH_PARK_SWEEP_MS frees
 * ("parks") the context of each one found at rest, untouched, at two sweeps
 * in a row, and it is made again when a frame arrives that needs it or a
 * control frame must go out. A connection starts without one, and the common
 * case needs none: whole one-frame messages in, data frames out (put_frame),
 * our close and the peer's answer ("without wslay" below). A busy connection
 * keeps its context meanwhile instead of making one per event.
 *
 * Closing: wslay answers a peer's close; once neither side has anything to
 * read or write, the close handshake is complete: EV_CLOSE is reported and
 * the TCP connection ends (server first, as RFC 6455 §7.1.1 prefers). */
#include <arpa/inet.h>
#include <string.h>

#include <utlist.h>

#include "conn.h"
#include "log.h"
#include "ws_deflate.h"

#define HAS SH_HAS
#define SET SH_SET
#define CLR SH_CLR

/* ------------------------------------------------------------ callbacks */

static int unpark(sh_conn *c);

/* No memory for what c needs next: said, and c dropped. */
static void drop_oom(sh_conn *c)
{
    sh_warn(c->id, "out of memory for the WebSocket state: dropped");
    sh_conn_close(c);
}

/* The peer does not read: more than max_send_buffer bytes wait to be
 * written. Drop them, close 1008, and stop reading (its input could only add
 * more output, e.g. pongs). A single message may take the queue past the
 * limit; the next one then finds it over. Returns 1 when it closed. */
static int slow_consumer(sh_conn *c)
{
    size_t pending = c->out.len + c->inflight.len;
    if (pending <= c->lim->max_send_buffer || HAS(c, SH_CF_CLOSE_OUT) ||
        (c->ws && wslay_event_get_close_sent(c->ws)))
        return 0; /* under the limit, or our close frame is in out: out is final */
    /* output waits for the end of the loop iteration: what the socket takes
     * now is not unsent */
    sh_conn_flush(c);
    if (c->phase != SH_PHASE_WS)
        return 1;
    pending = c->out.len + c->inflight.len;
    if (pending <= c->lim->max_send_buffer)
        return 0;
    c->tp->metrics->slow_consumer_closes++;
    sh_warn(c->id, "slow consumer: %zu bytes unsent (max_send_buffer %zu): closing 1008", pending,
            c->lim->max_send_buffer);
    sh_buf_free(&c->out); /* unsent frames are dropped; out never holds a partial frame */
    if (unpark(c) != 0) { /* (wslay's close: input stops at once) */
        sh_conn_close(c);
        return 1;
    }
    sh_conn_ws_close(c, 1008, "slow consumer");
    if (c->ws)
        wslay_event_shutdown_read(c->ws);
    SET(c, SH_CF_FAILED);
    return 1;
}

static void fail(sh_conn *c, uint16_t code, const char *why);
static void ws_input(sh_conn *c, const char *data, size_t len, int more);
static int ws_finished(const sh_conn *c);

/* The frame with first header byte b0 carries compressed payload: the
 * message total is then checked on the inflated size, as it grows. */
static int compressed_frame(const sh_conn *c, uint8_t b0)
{
    if (!c->pmd)
        return 0;
    return (b0 & 0x0f) == 0 ? c->pmd->receiving && c->msg_opcode : (b0 & 0x40) != 0;
}

/* Bytes of c->in that may go to wslay now: up to the end of the frame header
 * or payload being read, so wslay never holds bytes of the next frame. A
 * message's hook thus runs before any later frame is parsed (SH_CF_PAUSED),
 * and a header announcing too large a message fails before its payload. */
static size_t frame_room(sh_conn *c)
{
    if (c->fr_in_payload)
        return c->fr_left;
    size_t need = 2;
    if (c->fr_hlen >= 2) {
        uint8_t l7 = c->fr_hdr[1] & 0x7f;
        need += (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->fr_hdr[1] & 0x80) ? 4 : 0);
    }
    return need - c->fr_hlen;
}

/* n bytes of c->in went to wslay: advance the frame tracker. */
static void frame_advance(sh_conn *c, const uint8_t *p, size_t n)
{
    if (c->fr_in_payload) {
        c->fr_left -= n;
        if (c->fr_left == 0)
            c->fr_in_payload = 0;
        return;
    }
    memcpy(c->fr_hdr + c->fr_hlen, p, n);
    c->fr_hlen = (uint8_t)(c->fr_hlen + n);
    if (frame_room(c) > 0)
        return;
    uint8_t l7 = c->fr_hdr[1] & 0x7f, op = c->fr_hdr[0] & 0x0f;
    uint64_t len = l7;
    if (l7 == 126)
        len = ((uint64_t)c->fr_hdr[2] << 8) | c->fr_hdr[3];
    else if (l7 == 127)
        for (int i = 0; i < 8; i++)
            len = (len << 8) | c->fr_hdr[2 + i];
    c->fr_hlen = 0;
    /* a length wslay's frame layer rejects (not in its shortest form, or the
     * top bit set) fails 1002 there, before the masking key is read: so it
     * does whatever the cut, and is not judged here */
    int bad_len = (l7 == 126 && len < 126) || (l7 == 127 && (len < 65536 || (len >> 63)));
    if (op < 8 && !bad_len && !HAS(c, SH_CF_FAILED) &&
        (len > c->lim->max_message_bytes ||
         (c->msg.len + len > c->lim->max_message_bytes && !compressed_frame(c, c->fr_hdr[0]))) &&
        (op != 0 || c->msg_opcode)) {
        /* fail before a byte of the payload arrives */
        fail(c, 1009, "message over max_message_bytes");
        return;
    }
    if (len) {
        c->fr_left = len;
        c->fr_in_payload = 1;
    }
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
    sh_conn *c = user;
    (void)flags;
    size_t room = frame_room(c);
    if (c->in_len == 0 || HAS(c, SH_CF_PAUSED) || HAS(c, SH_CF_FAILED) || room == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->in_len ? len : c->in_len;
    if (n > room)
        n = room;
    memcpy(buf, c->in, n);
    frame_advance(c, c->in, n);
    c->in += n;
    c->in_len -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    sh_conn *c = user;
    (void)flags;
    if (HAS(c, SH_CF_MUTE))
        return (ssize_t)len; /* went out already (unpark) */
    int bad;
    if (c->fix_empty_close && len == 2 && data[0] == 0x88 && data[1] == 0x00) {
        /* wslay closes a frame-level protocol error without a status code;
         * RFC 6455 §7.4.1 has one for it */
        uint8_t frame[4] = {0x88, 0x02, (uint8_t)(c->fix_empty_close >> 8),
                            (uint8_t)(c->fix_empty_close & 0xff)};
        bad = sh_buf_append(&c->out, frame, 4);
        c->fix_empty_close = 0;
    } else {
        bad = sh_buf_append(&c->out, data, len);
    }
    if (bad) {
        wslay_event_set_error(ctx, WSLAY_ERR_NOMEM);
        return -1;
    }
    sh_conn_mark_dirty(c);
    return (ssize_t)len;
}

static void set_reason(sh_conn *c, const char *reason, size_t n)
{
    if (c->close_reason || n == 0)
        return;
    c->close_reason = malloc(n + 1);
    if (c->close_reason) {
        memcpy(c->close_reason, reason, n);
        c->close_reason[n] = '\0';
        for (size_t i = 0; i < n; i++) /* kept as a C string: a NUL reads as a space */
            if (c->close_reason[i] == '\0')
                c->close_reason[i] = ' ';
    }
}

/* Fail the connection: close with code, read nothing more. */
static void fail(sh_conn *c, uint16_t code, const char *why)
{
    if (HAS(c, SH_CF_FAILED))
        return;
    SET(c, SH_CF_FAILED | SH_CF_CLOSE_QUEUED);
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
    if (HAS(c, SH_CF_FAILED))
        return;
    if (c->pmd && wslay_get_rsv1(arg->rsv) &&
        (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)) {
        /* RFC 7692 §6.1: RSV1 marks a message's first frame only */
        fail(c, 1002, arg->opcode >= 8 ? "RSV1 set on a control frame"
                                       : "RSV1 set on a continuation frame");
        return;
    }
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
        c->msg_opcode = arg->opcode;
        c->msg.len = 0;
        sh_utf8_init(&c->utf8);
        if (c->pmd)
            sh_pmd_begin(c->pmd, wslay_get_rsv1(arg->rsv));
    }
    if (arg->opcode < 8 && c->msg.len + arg->payload_length > c->lim->max_message_bytes &&
        !(c->pmd && c->pmd->receiving && arg->payload_length <= c->lim->max_message_bytes)) {
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

/* Compressed payload of the message arriving: kept by sh_pmd_inflate until
 * its final frame ends (last), then inflated onto c->msg; validate the text. */
static void take_compressed(sh_conn *c, const uint8_t *p, size_t n, int last)
{
    size_t old = c->msg.len, max = c->lim->max_message_bytes;
    const char *why = NULL;
    int code = sh_pmd_inflate(c->pmd, &c->msg, p, n, last, max, &why);
    /* the text within the limit is checked first, whatever went wrong after
     * it: the close code must not depend on how TCP cut the input */
    size_t end = c->msg.len < max ? c->msg.len : max;
    if (c->msg_opcode == WSLAY_TEXT_FRAME && end > old &&
        sh_utf8_feed(&c->utf8, (const uint8_t *)c->msg.p + old, end - old) < 0)
        fail(c, 1007, "invalid UTF-8 in a text message");
    else if (code)
        fail(c, (uint16_t)code, why);
}

static void on_frame_chunk(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
    sh_conn *c = user;
    (void)ctx;
    if (HAS(c, SH_CF_FAILED) || arg->data_length == 0)
        return;
    switch (c->frame_opcode) {
    case WSLAY_TEXT_FRAME:
    case WSLAY_BINARY_FRAME:
    case WSLAY_CONTINUATION_FRAME:
        if (c->pmd && c->pmd->receiving) {
            take_compressed(c, arg->data, arg->data_length, 0);
            break;
        }
        if (c->msg_opcode == WSLAY_TEXT_FRAME &&
            sh_utf8_feed(&c->utf8, arg->data, arg->data_length) < 0) {
            fail(c, 1007, "invalid UTF-8 in a text message");
            return;
        }
        if (sh_buf_append(&c->msg, arg->data, arg->data_length) != 0)
            fail(c, 1011, "out of memory for a message");
        break;
    case WSLAY_CONNECTION_CLOSE:
        if (sh_buf_append(&c->ctrl, arg->data, arg->data_length) != 0)
            fail(c, 1011, "out of memory for a close frame");
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
        sh_buf_free(&c->ctrl);
        return;
    }
    if (!sh_utf8_valid((const uint8_t *)c->ctrl.p + 2, c->ctrl.len - 2)) {
        fail(c, 1007, "invalid UTF-8 in a close reason");
        sh_buf_free(&c->ctrl);
        return;
    }
    uint16_t code = (uint16_t)(((uint8_t)c->ctrl.p[0] << 8) | (uint8_t)c->ctrl.p[1]);
    int valid = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                (code >= 3000 && code <= 4999);
    if (!c->close_code && valid) { /* an invalid one is answered 1002: that is the code */
        c->close_code = code;
        set_reason(c, c->ctrl.p + 2, c->ctrl.len - 2);
    }
    sh_buf_free(&c->ctrl);
    if (code >= 1012 && code <= 1014) {
        /* registered with IANA after RFC 6455 (service restart, try again
         * later, bad gateway); wslay would answer 1002, so echo it first */
        wslay_event_queue_close(c->ws, code, NULL, 0);
    }
}

static void message_done(sh_conn *c, uint8_t op);

static void on_frame_end(wslay_event_context_ptr ctx, void *user)
{
    sh_conn *c = user;
    (void)ctx;
    if (HAS(c, SH_CF_FAILED))
        return;
    if (c->frame_opcode == WSLAY_CONNECTION_CLOSE) {
        close_frame_end(c);
        return;
    }
    if (c->frame_opcode >= 8 || !c->frame_fin)
        return;
    if (c->pmd && c->pmd->receiving) {
        take_compressed(c, NULL, 0, 1);
        if (HAS(c, SH_CF_FAILED))
            return;
    }
    /* a data message is complete */
    if (c->msg_opcode == WSLAY_TEXT_FRAME && !sh_utf8_at_boundary(&c->utf8)) {
        fail(c, 1007, "text message ends inside a UTF-8 sequence");
        return;
    }
    message_done(c, c->msg_opcode);
}

/* The data message in c->msg (opcode op) is complete: report it. */
static void message_done(sh_conn *c, uint8_t op)
{
    c->msg_opcode = 0;
    c->tp->metrics->messages_in++;
    c->msgs_in++;
    sh_conn_event ev = {.type = SH_CONN_EV_MESSAGE, .data = c->msg.p ? c->msg.p : "",
                        .len = c->msg.len, .binary = op == WSLAY_BINARY_FRAME};
    int code = sh_conn_emit(c, &ev);
    sh_buf_free(&c->msg); /* an idle connection keeps no message buffer */
    if (code && c->phase == SH_PHASE_WS && unpark(c) != 0)
        sh_conn_close(c); /* (taken without wslay: failing needs its context) */
    else if (code && c->phase == SH_PHASE_WS)
        fail(c, (uint16_t)code, code == 1003 ? (op == WSLAY_BINARY_FRAME
                                                    ? "binary messages are not accepted"
                                                    : "text messages are not accepted")
                                             : code == 1013 ? "try again later"
                                                            : "the message was refused");
    else if (!code)
        SET(c, SH_CF_PAUSED); /* its hook runs before the next frame is read */
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
    if (arg->opcode == WSLAY_PONG && HAS(c, SH_CF_PING_OUT)) {
        CLR(c, SH_CF_PING_OUT);
        if (c->lim->ping_interval_ms && !HAS(c, SH_CF_CLOSE_WAIT))
            sh_conn_arm_timer(c, c->lim->ping_interval_ms);
    }
}

static const struct wslay_event_callbacks callbacks = {
    recv_cb, send_cb, NULL, on_frame_start, on_frame_chunk, on_frame_end, on_msg,
};

/* ------------------------------------------------------------ lifecycle */

static void sweep(uv_timer_t *t);

/* The WebSockets holding a wslay context are listed in tp->held; while any
 * is, tp->parker sweeps them every SH_PARK_SWEEP_MS. */
static void held_add(sh_conn *c)
{
    sh_transport *tp = c->tp;
    if (!tp->held)
        uv_timer_start(&tp->parker, sweep, SH_PARK_SWEEP_MS, SH_PARK_SWEEP_MS);
    DL_PREPEND2(tp->held, c, held_prev, held_next);
    tp->nheld++;
}

static void held_remove(sh_conn *c)
{
    sh_transport *tp = c->tp;
    DL_DELETE2(tp->held, c, held_prev, held_next);
    tp->nheld--;
    if (!tp->held)
        uv_timer_stop(&tp->parker);
}

/* The wslay context of c, made if c is parked. Returns 0, or -1 (out of memory). */
static int unpark(sh_conn *c)
{
    CLR(c, SH_CF_REST); /* in use: it stays for at least a whole sweep period */
    if (c->ws)
        return 0;
    if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
        c->ws = NULL;
        return -1;
    }
    wslay_event_config_set_no_buffering(c->ws, 1);
    wslay_event_config_set_max_recv_msg_length(c->ws, c->lim->max_message_bytes);
    if (c->pmd)
        wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
    if (HAS(c, SH_CF_CLOSE_OUT)) {
        /* our close went out without a context (sh_conn_ws_close): this one
         * is told, its copy dropped, so it stands where the connection does */
        SET(c, SH_CF_MUTE);
        wslay_event_queue_close(c->ws, c->close_code, NULL, 0);
        wslay_event_send(c->ws);
        CLR(c, SH_CF_MUTE | SH_CF_CLOSE_OUT);
    }
    held_add(c);
    return 0;
}

/* An open WebSocket whose context is at rest: a fresh context would take
 * over exactly where it stands (between frames, nothing queued). */
static int at_rest(const sh_conn *c)
{
    return c->ws && c->phase == SH_PHASE_WS &&
           !HAS(c, SH_CF_IN_WSLAY | SH_CF_PAUSED | SH_CF_FAILED | SH_CF_CLOSE_QUEUED |
                       SH_CF_CLOSE_WAIT) &&
           c->fr_hlen == 0 && !c->fr_in_payload && c->msg_opcode == 0 && c->ctrl.len == 0 &&
           wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws) &&
           wslay_event_get_read_enabled(c->ws) && wslay_event_get_write_enabled(c->ws) &&
           !wslay_event_get_close_received(c->ws) && !wslay_event_get_close_sent(c->ws);
}

/* Free c's context ("park" it): c is at rest. */
static void park(sh_conn *c)
{
    CLR(c, SH_CF_REST);
    held_remove(c);
    wslay_event_context_free(c->ws);
    c->ws = NULL;
}

/* Free ("park") the context of each WebSocket found at rest at two sweeps
 * in a row, untouched in between. */
static void sweep(uv_timer_t *t)
{
    sh_transport *tp = t->data;
    for (sh_conn *c = tp->held, *next; c; c = next) {
        next = c->held_next;
        if (!at_rest(c))
            CLR(c, SH_CF_REST);
        else if (!HAS(c, SH_CF_REST))
            SET(c, SH_CF_REST);
        else
            park(c);
    }
}

/* After c's event: with too many contexts held, c's goes at once if at rest. */
static void park_if_crowded(sh_conn *c)
{
    if (c->tp->nheld > SH_PARK_HELD_MAX && at_rest(c))
        park(c);
}

/* A parked WebSocket reads, until the peer's close answered ours. */
static int wants_read(const sh_conn *c)
{
    return c->ws ? wslay_event_want_read(c->ws) : !HAS(c, SH_CF_CLOSE_IN);
}

/* The 101 is in the output; bytes after the request head wait in pending. */
static int ws_start(sh_conn *c)
{
    sh_transport *tp = c->tp;
    tp->metrics->websockets_current++;
    tp->metrics->websockets_total++;
    sh_info(c->id, "websocket open from %s", c->peer);
    if (c->lim->ping_interval_ms)
        sh_conn_arm_timer(c, c->lim->ping_interval_ms);
    sh_conn_event ev = {.type = SH_CONN_EV_OPEN};
    sh_conn_emit(c, &ev);
    if (c->phase != SH_PHASE_WS)
        return 0;
    if (c->pending.len) {
        sh_buf early = c->pending; /* the client did not wait for the 101 */
        c->pending = (sh_buf){0};
        ws_input(c, early.p, early.len, 1);
        sh_buf_free(&early);
    }
    if (c->phase == SH_PHASE_WS && !HAS(c, SH_CF_PAUSED) && wants_read(c))
        sh_conn_start_reading(c); /* (paused: resumed after the message's hook, ws_resume) */
    park_if_crowded(c);
    return 0;
}

static void ws_free(sh_conn *c)
{
    if (HAS(c, SH_CF_IN_WSLAY))
        return; /* freed when wslay_event_recv returns (ws_on_read) */
    if (c->ws) {
        held_remove(c);
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    sh_buf_free(&c->msg);
    sh_buf_free(&c->ctrl);
}

/* Send what wslay has queued, start the close wait once our close is out,
 * and have the output written. */
static void pump(sh_conn *c)
{
    if (wslay_event_want_write(c->ws))
        wslay_event_send(c->ws);
    if (!c->close_code && wslay_event_get_close_sent(c->ws))
        c->close_code = wslay_event_get_status_code_sent(c->ws); /* a close wslay decided */
    if ((HAS(c, SH_CF_CLOSE_QUEUED) || wslay_event_get_close_sent(c->ws)) &&
        !HAS(c, SH_CF_CLOSE_WAIT)) {
        /* our close is on its way: the peer gets close_timeout_ms to answer
         * it (and to read what is queued), then the connection is dropped */
        SET(c, SH_CF_CLOSE_WAIT);
        sh_conn_arm_timer(c, c->lim->close_timeout_ms);
    }
    sh_conn_mark_dirty(c);
}

/* ------------------------------------------------------- without wslay */

/* A WebSocket without a wslay context (from the upgrade on, or parked) takes
 * the frames of the common case itself: a whole masked text or binary message
 * in one frame, and the peer's valid close answering ours. Anything else (a
 * frame cut by TCP, a fragment, a control frame, RSV bits, compression, bad
 * UTF-8, a length over the limit or not in its shortest form) goes to wslay in
 * a fresh context, which takes over exactly where the connection stands
 * (unpark) and so decides it as before. A job's connection thus never makes
 * the 9 KiB context: its batch, its updates (put_frame), our close
 * (sh_conn_ws_close) and the client's answer all go without. */

/* dst = src unmasked with key (dst may not overlap src). Returns 1 when
 * every byte of dst is ASCII (and so the text valid UTF-8). */
static int unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4])
{
    uint32_t k4;
    memcpy(&k4, key, 4);
    uint64_t k8 = ((uint64_t)k4 << 32) | k4, w, all = 0;
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        memcpy(&w, src + i, 8);
        w ^= k8;
        all |= w;
        memcpy(dst + i, &w, 8);
    }
    uint8_t tail = 0;
    for (; i < n; i++)
        tail |= dst[i] = src[i] ^ key[i & 3];
    return !(all & UINT64_C(0x8080808080808080)) && !(tail & 0x80);
}

/* The peer's close frame (unmasked payload p, n bytes) answers ours: taken
 * when wslay would take it without a word (a valid code, UTF-8 reason). */
static int light_close(sh_conn *c, const uint8_t *p, size_t n)
{
    if (n >= 2) {
        unsigned code = ((unsigned)p[0] << 8) | p[1];
        if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
              (code >= 3000 && code <= 4999)) ||
            !sh_utf8_valid(p + 2, n - 2))
            return 0;
    }
    /* the code we sent stays the connection's (close_frame_end) */
    SET(c, SH_CF_CLOSE_IN);
    return 1;
}

/* The frame at the start of p (n bytes), when whole and of the common case:
 * taken. Returns its size, or 0 when it is left to wslay. */
static size_t light_frame(sh_conn *c, const uint8_t *p, size_t n)
{
    if (n < 6 || (p[0] & 0xf0) != 0x80 || !(p[1] & 0x80)) /* FIN, no RSV, masked */
        return 0;
    uint8_t op = p[0] & 0x0f;
    uint64_t len = p[1] & 0x7f;
    size_t hl = 6;
    if (len == 126) {
        if (n < 8 || (len = ((uint64_t)p[2] << 8) | p[3]) < 126)
            return 0;
        hl = 8;
    } else if (len == 127) {
        if (n < 14)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | p[2 + i];
        if (len < 65536 || (len >> 63))
            return 0;
        hl = 14;
    }
    if (HAS(c, SH_CF_CLOSE_OUT) ? op != WSLAY_CONNECTION_CLOSE || len > 125
                                : (op != WSLAY_TEXT_FRAME && op != WSLAY_BINARY_FRAME) ||
                                      len > c->lim->max_message_bytes)
        return 0;
    if (n - hl < len)
        return 0;
    const uint8_t *key = p + hl - 4;
    if (op == WSLAY_CONNECTION_CLOSE) {
        uint8_t b[125];
        unmask(b, p + hl, (size_t)len, key);
        return len != 1 && light_close(c, b, (size_t)len) ? hl + (size_t)len : 0;
    }
    if (sh_buf_reserve(&c->msg, (size_t)len) != 0)
        return 0; /* wslay's way says so */
    int ascii = unmask((uint8_t *)c->msg.p, p + hl, (size_t)len, key);
    if (op == WSLAY_TEXT_FRAME && !ascii &&
        !sh_utf8_valid((const uint8_t *)c->msg.p, (size_t)len)) {
        sh_buf_free(&c->msg);
        return 0;
    }
    c->msg.len = (size_t)len;
    message_done(c, op);
    return hl + (size_t)len;
}

/* After a read's frames: the input behind a reported message waits, wslay's
 * output (an answer, a close) is sent, reading stops when nothing more is
 * wanted. r: wslay_event_recv's result (0 when wslay had none of it); more:
 * the socket may be read again before the message's hook runs (see ws_input). */
static void read_done(sh_conn *c, int r, int more)
{
    if (c->phase == SH_PHASE_CLOSED) { /* closed from inside a callback */
        c->in_len = 0;
        ws_free(c);
        return;
    }
    if (HAS(c, SH_CF_PAUSED)) {
        if ((c->in_len == 0 && !more) || HAS(c, SH_CF_FAILED)) {
            CLR(c, SH_CF_PAUSED); /* nothing waits, and nothing is read before the hook */
        } else if (sh_buf_append(&c->pending, c->in, c->in_len) != 0) {
            CLR(c, SH_CF_PAUSED);
            if (unpark(c) != 0) {
                c->in_len = 0;
                sh_conn_close(c);
                return;
            }
            fail(c, 1011, "out of memory for input");
        } else {
            /* the rest is read once the message's hook has run (the next
             * loop iteration): a reply it sends goes out before anything
             * the later frames cause, a protocol error included */
            sh_conn_stop_reading(c);
            c->tp->npaused++;
            sh_conn_mark_dirty(c); /* resumed by the flusher */
        }
    }
    c->in_len = 0;
    if (!c->ws) { /* taken without wslay: nothing queued; a finished close ends at the flush */
        sh_conn_mark_dirty(c);
        return;
    }
    if (r == WSLAY_ERR_CALLBACK_FAILURE && !HAS(c, SH_CF_FAILED)) {
        /* the frame layer rejected the input (bad length encoding, control
         * frame too long or fragmented) and queued a status-less close */
        SET(c, SH_CF_FAILED);
        c->fix_empty_close = 1002;
        if (!c->close_code)
            c->close_code = 1002;
        sh_info(c->id, "closing 1002: malformed frame");
    } else if (r != 0 && r != WSLAY_ERR_CALLBACK_FAILURE) {
        sh_conn_close(c);
        return;
    }
    pump(c);
    if (!wslay_event_want_read(c->ws) && !ws_finished(c))
        sh_conn_stop_reading(c); /* finished: no stop, the linger phase reads on (for EOF) */
    park_if_crowded(c);
}

/* Input of c: a read's bytes, or those that waited (ws_start, ws_resume).
 * more: the socket may be read before a message's hook runs (the hooks run in
 * the loop's check phase, after the poll): after a read that filled the read
 * buffer (libuv reads again at once), or for input taken outside the poll (the
 * next poll comes first). A message then pauses the input even when no byte
 * waits behind it, until the flusher resumes it after the hook ran. */
static void ws_input(sh_conn *c, const char *data, size_t len, int more)
{
    if (data == NULL) { /* EOF */
        sh_conn_close(c);
        return;
    }
    if (HAS(c, SH_CF_PAUSED)) {
        /* a message's hook has yet to run: this input waits behind what
         * already waits for it (taken now, a whole frame would overtake
         * them) */
        sh_conn_stop_reading(c);
        if (sh_buf_append(&c->pending, data, len) != 0) {
            sh_warn(c->id, "out of memory for input: dropped");
            sh_conn_close(c);
        }
        return;
    }
    if (!c->ws && !c->pmd) {
        if (HAS(c, SH_CF_CLOSE_IN)) { /* the handshake is complete: nothing more is read */
            sh_conn_stop_reading(c);
            return;
        }
        SET(c, SH_CF_IN_WSLAY); /* (the message buffer stays while its hook is told) */
        size_t n = light_frame(c, (const uint8_t *)data, len);
        CLR(c, SH_CF_IN_WSLAY);
        if (n > 0) {
            /* after a message its hook runs first (PAUSED), or the
             * connection failed or closed; after the peer's close the
             * rest is not read (wslay reads nothing after a close) */
            c->in = (const uint8_t *)data + n;
            c->in_len = HAS(c, SH_CF_CLOSE_IN) ? 0 : len - n;
            read_done(c, 0, more);
            return;
        }
    }
    if (unpark(c) != 0) {
        drop_oom(c);
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
    SET(c, SH_CF_IN_WSLAY);
    int r = wslay_event_recv(c->ws);
    CLR(c, SH_CF_IN_WSLAY);
    read_done(c, r, more);
}

static void ws_on_read(sh_conn *c, const char *data, size_t len)
{
    ws_input(c, data, len, len == SH_READ_BUF_SIZE);
}

/* The input that waited behind a message: go on with it. */
static void ws_resume(sh_conn *c)
{
    if (!HAS(c, SH_CF_PAUSED))
        return;
    CLR(c, SH_CF_PAUSED);
    c->tp->npaused--;
    sh_buf rest = c->pending;
    c->pending = (sh_buf){0};
    if (c->phase == SH_PHASE_WS && rest.len)
        ws_input(c, rest.p, rest.len, 1);
    sh_buf_free(&rest);
    if (c->phase == SH_PHASE_WS && !HAS(c, SH_CF_PAUSED) && wants_read(c))
        sh_conn_start_reading(c);
}

/* Called by sh_conn_flush when everything is written. */
static int ws_finished(const sh_conn *c)
{
    if (!c->ws)
        return HAS(c, SH_CF_CLOSE_IN);
    return !wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws);
}

static void ws_on_timer(sh_conn *c)
{
    const sh_limits *lim = c->lim;
    if (HAS(c, SH_CF_CLOSE_WAIT)) {
        sh_info(c->id, "no close frame from the peer within %llums: dropped",
                (unsigned long long)lim->close_timeout_ms);
        sh_conn_close(c);
        return;
    }
    if (HAS(c, SH_CF_PING_OUT)) {
        sh_info(c->id, "no pong within %llums: dropped", (unsigned long long)lim->ping_timeout_ms);
        sh_conn_close(c);
        return;
    }
    struct wslay_event_msg ping = {WSLAY_PING, (const uint8_t *)"statushost", 10};
    if (unpark(c) == 0 && wslay_event_queue_msg(c->ws, &ping) == 0) {
        SET(c, SH_CF_PING_OUT);
        sh_conn_arm_timer(c, lim->ping_timeout_ms);
        pump(c);
        park_if_crowded(c);
    }
}

/* ------------------------------------------------------------- sending */

/* Append one unmasked frame to the output buffer. Returns 0 or -1 (OOM). */
static int put_frame(sh_conn *c, uint8_t opcode, const char *data, size_t len)
{
    uint8_t h[10];
    size_t hl = sh_ws_frame_header(h, (uint8_t)(0x80 | opcode), len);
    if (sh_buf_reserve(&c->out, hl + len) != 0)
        return -1;
    memcpy(c->out.p + c->out.len, h, hl);
    if (len)
        memcpy(c->out.p + c->out.len + hl, data, len);
    c->out.len += hl + len;
    return 0;
}

int sh_conn_open(const sh_conn *c)
{
    if (c->phase != SH_PHASE_WS || HAS(c, SH_CF_FAILED | SH_CF_CLOSE_QUEUED))
        return 0;
    return !c->ws || /* parked: open, at rest */
           (!wslay_event_get_close_received(c->ws) && !wslay_event_get_close_sent(c->ws) &&
            wslay_event_get_write_enabled(c->ws));
}

int sh_conn_send(sh_conn *c, const char *data, size_t len, int binary)
{
    if (!sh_conn_open(c))
        return -1;
    if (slow_consumer(c))
        return -1;
    if (c->ws && wslay_event_want_write(c->ws))
        wslay_event_send(c->ws); /* control frames queued earlier (a pong) go first */
    uint8_t op = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
    int z = c->pmd ? sh_pmd_put_message(c->pmd, &c->out, op, data, len) : 0;
    if (z < 0 || (z == 0 && put_frame(c, op, data, len) != 0)) {
        sh_warn(c->id, "out of memory queueing a message: closing 1011");
        sh_conn_ws_close(c, 1011, "out of memory");
        return -1;
    }
    c->tp->metrics->messages_out++;
    c->msgs_out++;
    sh_conn_mark_dirty(c);
    return 0;
}

void sh_conn_ws_close(sh_conn *c, uint16_t code, const char *reason)
{
    if (c->phase != SH_PHASE_WS)
        return;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123)
        rl = 123;
    if (!c->ws && HAS(c, SH_CF_CLOSE_OUT)) { /* ours is out: as wslay, nothing more */
        sh_conn_mark_dirty(c);
        return;
    }
    if (!c->ws && code && !c->close_code && !HAS(c, SH_CF_FAILED)) {
        /* at rest, nothing queued: the frame wslay would send, without it */
        uint8_t payload[125] = {(uint8_t)(code >> 8), (uint8_t)(code & 0xff)};
        if (rl)
            memcpy(payload + 2, reason, rl);
        if (put_frame(c, WSLAY_CONNECTION_CLOSE, (const char *)payload, rl + 2) != 0) {
            drop_oom(c);
            return;
        }
        SET(c, SH_CF_CLOSE_QUEUED | SH_CF_CLOSE_OUT | SH_CF_CLOSE_WAIT);
        c->close_code = code;
        set_reason(c, reason, rl);
        sh_conn_arm_timer(c, c->lim->close_timeout_ms); /* as pump */
        sh_conn_mark_dirty(c);
        return;
    }
    if (unpark(c) != 0) {
        drop_oom(c);
        return;
    }
    SET(c, SH_CF_CLOSE_QUEUED);
    if (wslay_event_queue_close(c->ws, code, (const uint8_t *)reason, rl) == 0 && !c->close_code) {
        c->close_code = code;
        set_reason(c, reason, rl);
    }
    if (!HAS(c, SH_CF_IN_WSLAY))
        pump(c);
}

const sh_ws_phase sh_ws_phase_rfc6455 = {
    .start = ws_start,
    .on_read = ws_on_read,
    .finished = ws_finished,
    .resume = ws_resume,
    .on_timer = ws_on_timer,
    .free = ws_free,
    .close = sh_conn_ws_close,
};
