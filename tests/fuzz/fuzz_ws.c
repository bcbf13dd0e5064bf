/* fuzz_ws.c — libFuzzer target for the WebSocket phase of the real
 * transport: src/conn.c, src/ws_conn.c, src/http_parse.c (+ llhttp),
 * src/static_files.c, src/utf8.c and src/log.c compiled into this binary
 * over the system libwslay and libuv. No Lua and no stand-ins: the fuzzer is
 * one more user of the transport's event interface (sh_conn_cb, conn.h).
 *
 * The world: one libuv loop, one sh_transport and one loopback TCP listener
 * (127.0.0.1, port 0) for the whole process. Each run connects a blocking
 * client socket (then non-blocking), the listener's callback accepts it with
 * sh_transport_accept + sh_conn_start, the client writes the upgrade request
 * and then the fuzzer's bytes in pieces. After every step the loop runs
 * (UV_RUN_NOWAIT) until the transport is quiet: nothing dirty or paused, no
 * unread input on a reading socket, no write or shutdown in progress, and
 * nothing new for the client to read. The transport pauses the input after
 * each delivered message until the next loop iteration (SH_CF_PAUSED,
 * resumed by its uv_prepare flusher), so a piece with many messages takes
 * as many iterations.
 *
 * Input: byte 0 configures the connection (see fz_config), byte 1 seeds how
 * the client bytes are cut into writes, byte 2 seeds what happens between
 * writes (bit 7: the first piece goes out in the same write as the upgrade
 * request; bit 6: the upgrade is decided later, not inside EV_UPGRADE); the
 * rest is what the client sends after the request (masked frames: the seed
 * corpus has them, the fuzzer mutates them).
 *
 * Each input is played three times, each on a fresh connection:
 *   1. in one write, nothing in between;
 *   2. cut into writes by byte 1, nothing in between;
 *   3. cut into writes, and between writes, chosen by byte 2: the
 *      connection's timer fires, the server sends, the handler closes or
 *      fails (1011), the client reads what is waiting (a stalled write
 *      completes), the client half-closes, a deferred upgrade is decided
 *      (switch, or refuse 403).
 * Runs 1 and 2 must produce the same output bytes and report the same
 * events: frame parsing must not depend on how TCP cut the stream.
 *
 * Timers: every limit is 10 minutes, so no timer runs out by itself during a
 * run. The "timer" action fires the connection's armed libuv timer the way
 * libuv does when it expires (uv_timer_stop, then its callback): conn.c's
 * real on_timer runs (ping, pong deadline, close wait, linger end, the
 * upgrade decision's deadline) without the fuzzer waiting real milliseconds.
 * Real expiry of a tiny limit is covered by tests/unit/test_ws_conn.c.
 *
 * Stall (config bit 3): the client's receive buffer and the server socket's
 * send buffer are made as small as the kernel allows and the client reads
 * only when an action says so, so writes stay in flight, output piles up in
 * the connection and max_send_buffer (1008) is reached.
 *
 * The event handler stands in for a policy: EV_UPGRADE switches protocols
 * (unless deferred); EV_OPEN greets when config bit 1 says so; EV_MESSAGE
 * echoes the message through sh_conn_send, inside wslay's callbacks; a
 * binary message without config bit 0 (no on_binary) is refused by
 * returning 1003; the first byte of a message picks another behaviour:
 *   'c' sh_conn_ws_close(1000, "bye") then sh_conn_send (must be refused)
 *   'C' sh_conn_send then sh_conn_ws_close(1000, "bye")
 *   'e' the hook failed: sh_conn_ws_close(1011, "internal error")
 *   'b' sh_conn_send three times (reaches max_send_buffer sooner)
 *   'B' sh_conn_send of 70000 bytes (the 64-bit length form)
 *   'n' nothing
 *
 * Invariants (a violation aborts):
 * - what the server writes is the 101 (with the right Sec-WebSocket-Accept)
 *   followed by a sequence of well-formed server frames: FIN set, RSV
 *   clear, a known opcode (never a continuation), not masked, the shortest
 *   length encoding, control payloads <= 125 bytes, text payloads valid
 *   UTF-8, close payloads empty or a sendable code plus a UTF-8 reason; at
 *   most one close frame and nothing after it; the connection's out buffer
 *   holds whole frames between steps; every pong carries the payload of one
 *   of the client's pings, in the order they were sent; a refused deferred
 *   upgrade writes its 403 and nothing else;
 * - a delivered message is within max_message_bytes, a text one is valid
 *   UTF-8 (checked by a separate decoder, not utf8.c), never after a
 *   failure, only inside wslay_event_recv, only between EV_OPEN and
 *   EV_CLOSE;
 * - events: EV_UPGRADE and EV_OPEN at most once, EV_CLOSE exactly once and
 *   before EV_FREE, EV_FREE exactly once; a WebSocket's EV_CLOSE comes before
 *   the client sees the TCP FIN; once a close frame was written, EV_CLOSE's
 *   code is not 1006; the metrics' current counts return to 0;
 * - the transport settles: no busy loop between steps;
 * - ASan/UBSan/LeakSanitizer: every run ends with the connection freed.
 *
 * fuzz_ws_deflate is this file built with FZ_DEFLATE: the upgrade request
 * offers permessage-deflate and the server accepts it (src/ws_deflate.c is
 * in the binary), so the input's frames with RSV1 go through the inflater
 * (the seeds have compressed messages, a zip bomb, RSV1 misuse) and the
 * echoes through the deflater. The wire check then allows RSV1 on data
 * frames, inflates them with a client inflater kept across the run (the
 * server takes over its context) and checks the text inside; the 101 must
 * carry the extension's answer. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "conn.h"
#include "log.h"
#ifdef FZ_DEFLATE
#include <zlib.h>
#endif

#define FUZZ_NAME "fuzz_ws"
#include "fuzz_check.h"

/* ------------------------------------------------------------ the world */

/* Byte 0 of the input. */
typedef struct fz_config {
    int binary_hook;          /* bit 0: the policy takes binary messages */
    int greet;                /* bit 1: EV_OPEN sends "hello" */
    int ping;                 /* bit 2: ping_interval_ms is set */
    int stall;                /* bit 3: the client reads only when told */
    size_t max_message_bytes; /* bits 4-5 */
    size_t max_send_buffer;   /* bits 6-7 */
} fz_config;

static fz_config decode_config(uint8_t b)
{
    static const size_t msg[4] = {65536, 125, 1 << 20, 16};
    static const size_t send[4] = {1 << 20, 64, 300, 4096};
    fz_config f = {b & 1, (b >> 1) & 1, (b >> 2) & 1, (b >> 3) & 1, msg[(b >> 4) & 3],
                   send[(b >> 6) & 3]};
    return f;
}

#define LONG_MS (600u * 1000) /* no limit runs out during a run */

#ifdef FZ_DEFLATE
#define FZ_EXT "Sec-WebSocket-Extensions: x-foo, permessage-deflate; client_max_window_bits\r\n"
static const char ext_line[] =
    "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n";
#else
#define FZ_EXT ""
#endif
static const char upgrade_request[] =
    "GET /ws HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" FZ_EXT "\r\n";
static const char accept_line[] = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

/* The process-wide part: created once. */
static uv_loop_t loop;
static uv_tcp_t listener;
static struct sockaddr_in listen_addr;
static sh_transport tp;
static sh_metrics metrics;

/* What one run did. */
static struct {
    fz_config cfg;
    sh_limits lim;     /* the connection's: lives until EV_FREE */
    sh_conn *c;        /* the connection, NULL before accept and after EV_FREE */
    int fd;            /* the client's socket */
    int stalled;       /* the client reads only when an action says so */
    int defer;         /* the upgrade is decided by an action, not in EV_UPGRADE */
    int wr_closed;     /* the client half-closed */
    int wr_dead;       /* the client's writes fail (the server reset) */
    int rd_eof;        /* the client read EOF or a reset */
    int refused;       /* the deferred upgrade was refused */
    int output_cut;    /* dropped (not ended by the close handshake) while output
                          waited for a client that did not read */
    int accepted, upgrades, opens, closes, frees;
    uint16_t close_code; /* of EV_CLOSE */
    sh_buf raw;        /* every byte the client read, in order */
    sh_buf events;     /* what the handler saw, to compare runs */
    int trace;         /* SH_FUZZ_VERBOSE, run 3: print events as they happen */
} W;

static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void event(const char *fmt, ...)
{
    char b[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    sh_buf_append(&W.events, b, n < 0 ? 0 : (size_t)n < sizeof b ? (size_t)n : sizeof b - 1);
    if (W.trace)
        fprintf(stderr, "  %s", b);
}

static uint32_t fnv(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

/* An independent UTF-8 check (RFC 3629), not the DFA of utf8.c. */
static int ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        uint32_t cp, min;
        size_t len;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            len = 2, cp = b & 0x1f, min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            len = 3, cp = b & 0x0f, min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* ------------------------------------------------------------ client frames */

/* One frame of the client's bytes, as sent (payload still masked). */
typedef struct client_frame {
    unsigned op;
    int masked;
    const uint8_t *key;     /* 4 bytes when masked */
    const uint8_t *payload; /* have bytes of it are in the input */
    uint64_t len;           /* as announced */
    size_t have;
} client_frame;

/* The frame at *off of d[0..n): 1 with *f filled and *off past it, 0 at
 * the end (or a header cut short). No validity checks beyond the framing. */
static int next_client_frame(const uint8_t *d, size_t n, size_t *off, client_frame *f)
{
    size_t o = *off;
    if (o > n || n - o < 2)
        return 0;
    f->op = d[o] & 0x0f;
    f->masked = d[o + 1] >> 7;
    f->len = d[o + 1] & 0x7f;
    o += 2;
    if (f->len == 126) {
        if (n - o < 2)
            return 0;
        f->len = (uint64_t)d[o] << 8 | d[o + 1];
        o += 2;
    } else if (f->len == 127) {
        if (n - o < 8)
            return 0;
        f->len = 0;
        for (int i = 0; i < 8; i++)
            f->len = f->len << 8 | d[o + i];
        o += 8;
    }
    f->key = d + o;
    if (f->masked) {
        if (n - o < 4)
            return 0;
        o += 4;
    }
    f->payload = d + o;
    f->have = f->len < n - o ? (size_t)f->len : n - o;
    *off = o + f->have;
    return 1;
}

static uint8_t unmask(const client_frame *f, size_t i)
{
    return f->payload[i] ^ (f->masked ? f->key[i % 4] : 0);
}

/* A known libwslay 1.1.1 bug, not ours: wslay_event_recv validates a close
 * reason per received chunk but skips the first two bytes of *every* chunk
 * (meant to skip the status code at the start of the payload). So how a
 * close frame with a non-ASCII reason is cut into reads (or by wslay's
 * 4096-byte input buffer) decides whether a valid reason is refused with
 * 1007, or an invalid byte is missed until ws_conn.c's check at the end of
 * the frame. The comparison of runs 1 and 2 skips inputs with such a close
 * frame: 1 when the client bytes have a close frame with a byte >= 0x80
 * after its status code. */
static int has_non_ascii_close_reason(const uint8_t *d, size_t n)
{
    size_t off = 0;
    client_frame f;
    while (next_client_frame(d, n, &off, &f))
        if (f.op == 8)
            for (size_t i = 2; i < f.have; i++)
                if (unmask(&f, i) >= 0x80)
                    return 1;
    return 0;
}

/* The payloads of the complete pings the client sent, in order: records of
 * one length byte and the unmasked payload. */
static void collect_pings(const uint8_t *d, size_t n, sh_buf *pings)
{
    size_t off = 0;
    client_frame f;
    while (next_client_frame(d, n, &off, &f))
        if (f.op == 9 && f.len <= 125 && f.have == f.len) {
            uint8_t rec[126];
            rec[0] = (uint8_t)f.len;
            for (size_t i = 0; i < f.have; i++)
                rec[1 + i] = unmask(&f, i);
            sh_buf_append(pings, rec, 1 + f.have);
        }
}

/* ------------------------------------------------------------ frame checker */

static int sendable_close_code(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* What check_frames has seen so far of one run's output. */
typedef struct out_check {
    int closes;          /* close frames (at most one, and the last frame) */
    const sh_buf *pings; /* collect_pings of the input, or NULL */
    size_t ping_at;      /* the next ping a pong may answer */
    int cut_ok;          /* the connection was dropped while output waited: the
                            bytes may end inside a frame */
#ifdef FZ_DEFLATE
    z_stream *zin;       /* the client's inflater of compressed frames, or NULL */
#endif
} out_check;

/* Check that w[0..n) is a sequence of whole, well-formed server frames, and
 * that each pong answers one of the client's pings, in order (a ping may go
 * unanswered: after a close, or when max_send_buffer drops the output).
 * Returns n. */
static size_t check_frames(const uint8_t *w, size_t n, out_check *oc, const char *what)
{
    int *closes = &oc->closes;
    size_t off = 0;
    while (off < n) {
        size_t start = off;
        CHECK(*closes == 0, "%s: a frame follows the close frame (offset %zu, byte 0x%02x)",
              what, off, w[off]);
        if (oc->cut_ok && (n - off < 2 || n - off < 2 + ((w[off + 1] & 0x7f) == 126   ? 2u
                                                          : (w[off + 1] & 0x7f) == 127 ? 8u
                                                                                       : 0u)))
            break; /* what got out before the drop ends inside a header */
        CHECK(n - off >= 2, "%s: %zu stray bytes at the end", what, n - off);
        uint8_t b0 = w[off], b1 = w[off + 1];
        unsigned op = b0 & 0x0f;
        off += 2;
        CHECK(b0 & 0x80, "%s: frame without FIN (0x%02x) at %zu", what, b0, start);
#ifdef FZ_DEFLATE
        CHECK((b0 & 0x70) == 0 || ((b0 & 0x70) == 0x40 && (op == 1 || op == 2)),
              "%s: RSV bits set (0x%02x) at %zu", what, b0, start);
#else
        CHECK((b0 & 0x70) == 0, "%s: RSV bits set (0x%02x) at %zu", what, b0, start);
#endif
        CHECK(op == 1 || op == 2 || op == 8 || op == 9 || op == 10,
              "%s: opcode %u at %zu", what, op, start);
        CHECK((b1 & 0x80) == 0, "%s: masked server frame at %zu", what, start);
        uint64_t len = b1 & 0x7f;
        if (len == 126) {
            CHECK(n - off >= 2, "%s: truncated length at %zu", what, start);
            len = (uint64_t)w[off] << 8 | w[off + 1];
            off += 2;
            CHECK(len >= 126, "%s: 16-bit length %llu at %zu", what, (unsigned long long)len,
                  start);
        } else if (len == 127) {
            CHECK(n - off >= 8, "%s: truncated length at %zu", what, start);
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | w[off + i];
            off += 8;
            CHECK(len >= 65536 && !(len >> 63), "%s: 64-bit length %llu at %zu", what,
                  (unsigned long long)len, start);
        }
        if (oc->cut_ok && len > n - off)
            break;
        CHECK(len <= n - off, "%s: frame at %zu claims %llu bytes, %zu left", what, start,
              (unsigned long long)len, n - off);
        const uint8_t *pl = w + off;
        off += (size_t)len;
        if (op >= 8)
            CHECK(len <= 125, "%s: control frame of %llu bytes", what, (unsigned long long)len);
#ifdef FZ_DEFLATE
        if ((b0 & 0x40) && oc->zin) {
            /* inflate as a client does: payload + 00 00 ff ff, one inflater */
            uint8_t *zi = malloc((size_t)len + 4), *zo = NULL;
            memcpy(zi, pl, (size_t)len);
            memcpy(zi + len, "\x00\x00\xff\xff", 4);
            size_t cap = 0, got = 0;
            oc->zin->next_in = zi;
            oc->zin->avail_in = (uInt)len + 4;
            int zr;
            do {
                cap = cap ? cap * 2 : 4096;
                zo = realloc(zo, cap);
                oc->zin->next_out = zo + got;
                oc->zin->avail_out = (uInt)(cap - got);
                zr = inflate(oc->zin, Z_SYNC_FLUSH);
                got = cap - oc->zin->avail_out;
            } while (zr == Z_OK && oc->zin->avail_out == 0);
            CHECK(zr == Z_OK || zr == Z_BUF_ERROR, "%s: compressed frame at %zu does not inflate (%d)",
                  what, start, zr);
            CHECK(oc->zin->avail_in == 0, "%s: compressed frame at %zu: bytes left", what, start);
            if (op == 1)
                CHECK(ref_utf8_valid(zo, got), "%s: compressed text at %zu is not UTF-8", what,
                      start);
            free(zi);
            free(zo);
        } else if (op == 1 && !(b0 & 0x40))
#else
        if (op == 1)
#endif
            CHECK(ref_utf8_valid(pl, (size_t)len), "%s: text frame at %zu is not UTF-8", what,
                  start);
        if (op == 10 && oc->pings) {
            const sh_buf *pg = oc->pings;
            int found = 0;
            while (oc->ping_at < pg->len) {
                size_t plen = (uint8_t)pg->p[oc->ping_at];
                const char *pp = pg->p + oc->ping_at + 1;
                oc->ping_at += 1 + plen;
                if (plen == len && (len == 0 || memcmp(pp, pl, plen) == 0)) {
                    found = 1;
                    break;
                }
            }
            CHECK(found, "%s: pong at %zu (%llu bytes) answers no ping of the client", what,
                  start, (unsigned long long)len);
        }
        if (op == 8) {
            (*closes)++;
            CHECK(len != 1, "%s: close frame with a 1-byte payload", what);
            if (len >= 2) {
                unsigned code = (unsigned)pl[0] << 8 | pl[1];
                CHECK(sendable_close_code(code), "%s: close code %u sent", what, code);
                CHECK(ref_utf8_valid(pl + 2, (size_t)len - 2), "%s: close reason not UTF-8",
                      what);
            }
        }
    }
    return off;
}

/* ------------------------------------------------------------ the handler */

/* sh_conn_send as a policy calls it; the result is 0 or -1. */
static int policy_send(sh_conn *c, const char *data, size_t len, int binary)
{
    int rc = sh_conn_send(c, data, len, binary);
    if (W.trace)
        fprintf(stderr, "  send %zu -> %d (out %zu inflight %zu)\n", len, rc, c->out.len,
                c->inflight.len);
    CHECK(rc == 0 || rc == -1, "sh_conn_send = %d", rc);
    return rc;
}

/* conn:close(code, reason) of a policy: refused once the connection is not
 * open. Returns 1 when it closed. */
static int policy_close(sh_conn *c, uint16_t code, const char *reason)
{
    if (!sh_conn_open(c))
        return 0;
    sh_conn_ws_close(c, code, reason);
    CHECK(!sh_conn_open(c), "still open after sh_conn_ws_close");
    return 1;
}

/* A hook that raised: the connection closes 1011. */
static void policy_failed(sh_conn *c)
{
    if (c->phase == SH_PHASE_WS)
        sh_conn_ws_close(c, 1011, "internal error");
}

static int on_message(sh_conn *c, const sh_conn_event *ev)
{
    const char *data = ev->data;
    size_t len = ev->len;
    int binary = ev->binary;
    CHECK(c->phase == SH_PHASE_WS, "message delivered in phase %d", (int)c->phase);
    CHECK(!SH_HAS(c, SH_CF_FAILED), "message delivered after a protocol failure");
    CHECK(SH_HAS(c, SH_CF_IN_WSLAY), "message delivered outside wslay_event_recv");
    CHECK(W.opens == 1 && W.closes == 0, "message with %d opens, %d closes", W.opens, W.closes);
    CHECK(data != NULL, "message data NULL");
    CHECK(len <= W.lim.max_message_bytes, "message of %zu bytes (max %zu)", len,
          W.lim.max_message_bytes);
    CHECK(binary || ref_utf8_valid((const uint8_t *)data, len),
          "text message of %zu bytes is not UTF-8", len);
    event("msg %d %zu %08x\n", binary, len, len ? fnv(data, len) : 0);
    if (binary && !W.cfg.binary_hook)
        return 1003; /* no on_binary: the policy refuses binary messages */
    switch (len ? data[0] : 0) {
    case 'c':
        if (policy_close(c, 1000, "bye"))
            CHECK(policy_send(c, data, len, binary) == -1, "a send after the close was taken");
        else
            policy_send(c, data, len, binary);
        break;
    case 'C':
        policy_send(c, data, len, binary);
        policy_close(c, 1000, "bye");
        break;
    case 'e':
        policy_failed(c);
        break;
    case 'b':
        for (int i = 0; i < 3; i++)
            policy_send(c, data, len, binary);
        break;
    case 'B': { /* a reply over 64 KiB: the 64-bit length form */
        static char big[70000];
        if (big[0] != 'B')
            memset(big, 'B', sizeof big);
        policy_send(c, big, sizeof big, binary);
        break;
    }
    case 'n':
        break;
    default:
        policy_send(c, data, len, binary);
    }
    return 0;
}

static int on_event(sh_conn *c, const sh_conn_event *ev, void *arg)
{
    CHECK(arg == &W, "callback argument");
    CHECK(c == W.c, "event for an unknown connection");
    switch (ev->type) {
    case SH_CONN_EV_REQUEST:
        CHECK(0, "the upgrade request was reported as a plain request");
        return 0;
    case SH_CONN_EV_UPGRADE:
        CHECK(W.upgrades == 0, "a second EV_UPGRADE");
        CHECK(c->phase == SH_PHASE_HANDSHAKE, "EV_UPGRADE in phase %d", (int)c->phase);
        CHECK(ev->req != NULL, "EV_UPGRADE without the request");
        W.upgrades++;
        event("upgrade\n");
        if (!W.defer)
            sh_conn_upgrade(c, NULL, NULL);
        return 0;
    case SH_CONN_EV_OPEN:
        CHECK(W.opens == 0 && W.closes == 0, "EV_OPEN with %d opens, %d closes", W.opens,
              W.closes);
        CHECK(c->phase == SH_PHASE_WS, "EV_OPEN in phase %d", (int)c->phase);
        W.opens++;
        event("open\n");
        if (W.cfg.greet)
            CHECK(policy_send(c, "hello", 5, 0) == 0, "greeting refused on an open connection");
        return 0;
    case SH_CONN_EV_MESSAGE:
        return on_message(c, ev);
    case SH_CONN_EV_CLOSE:
        CHECK(W.closes == 0, "a second EV_CLOSE");
        CHECK(W.frees == 0, "EV_CLOSE after EV_FREE");
        CHECK(ev->reason != NULL, "EV_CLOSE without a reason string");
        /* a code the peer may send, 1005 (its close had none) or 1006 (no
         * close frame): never an invalid code of a rejected close frame */
        CHECK(sendable_close_code(ev->code) || ev->code == 1005 || ev->code == 1006,
              "EV_CLOSE reports code %u", ev->code);
        CHECK(ev->was_ws == (W.opens == 1), "EV_CLOSE was_ws %d after %d opens", ev->was_ws,
              W.opens);
        CHECK(!sh_conn_open(c), "EV_CLOSE while open");
        W.closes++;
        W.close_code = ev->code;
        /* a drop (close timeout, pong deadline, EOF) while the socket held
         * unsent output: uv_close cancels the write, the kernel may reset;
         * what the client gets can end inside a frame */
        if (c->phase == SH_PHASE_CLOSED &&
            (W.stalled || SH_HAS(c, SH_CF_WRITING) || c->out.len || c->inflight.len))
            W.output_cut = 1;
        event("close %d %u %s\n", ev->was_ws, ev->code, ev->reason);
        return 0;
    case SH_CONN_EV_FREE:
        CHECK(W.frees == 0, "a second EV_FREE");
        CHECK(W.closes == 1, "EV_FREE without EV_CLOSE");
        W.frees++;
        W.c = NULL;
        event("free\n");
        return 0;
    }
    CHECK(0, "unknown event %d", (int)ev->type);
    return 0;
}

/* ------------------------------------------------------------ the client */

static void client_connect(void)
{
    W.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(W.fd >= 0, "socket: %s", strerror(errno));
    int one = 1;
    if (W.cfg.stall) {
        /* a small window, and segments well under it: with loopback's 64 KiB
         * segments a window this small only moves on the persist timer */
        int small = 1, mss = 536; /* 1: the kernel's minimum */
        setsockopt(W.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        setsockopt(W.fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss);
    }
    int rc = connect(W.fd, (struct sockaddr *)&listen_addr, sizeof listen_addr);
    if (rc != 0 && errno == EINTR) {
        /* a signal (libFuzzer's timers) interrupted it: the connection goes
         * on in the background; wait for it and take its result */
        struct pollfd p = {.fd = W.fd, .events = POLLOUT};
        while (poll(&p, 1, -1) < 0 && errno == EINTR)
            ;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(W.fd, SOL_SOCKET, SO_ERROR, &err, &el);
        rc = err ? -1 : 0;
        errno = err;
    }
    CHECK(rc == 0, "connect: %s", strerror(errno));
    setsockopt(W.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    CHECK(fcntl(W.fd, F_SETFL, fcntl(W.fd, F_GETFL) | O_NONBLOCK) == 0, "fcntl");
}

/* Read whatever is waiting. Returns the byte count. */
static size_t client_read(void)
{
    size_t total = 0;
    static char b[65536];
    while (W.fd >= 0 && !W.rd_eof) {
        ssize_t k = recv(W.fd, b, sizeof b, 0);
        if (k > 0) {
            CHECK(sh_buf_append(&W.raw, b, (size_t)k) == 0, "out of memory");
            total += (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0 || errno == ECONNRESET) {
            /* a WebSocket's end is reported before its FIN leaves (a plain
             * HTTP answer's connection reports once it is gone) */
            CHECK(W.closes == 1 || W.opens == 0, "the client got %s before EV_CLOSE",
                  k == 0 ? "the FIN" : "a reset");
            if (W.trace)
                fprintf(stderr, " [client: %s]\n", k == 0 ? "EOF" : "reset");
            W.rd_eof = 1;
        }
        break;
    }
    return total;
}

/* Something in the transport is still moving. */
static int transport_busy(void)
{
    if (tp.dirty || tp.npaused)
        return 1;
    sh_conn *c = W.c;
    if (!c)
        return 0;
    if (SH_HAS(c, SH_CF_SHUTTING))
        return 1;
    if (SH_HAS(c, SH_CF_WRITING) && !W.stalled && !W.rd_eof)
        return 1;
    if (SH_HAS(c, SH_CF_READING)) {
        uv_os_fd_t fd;
        int n = 0;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0)
            return 1;
    }
    return 0;
}

/* Whole frames in the connection's out buffer (inflight may start inside a
 * frame: what the socket took of it is gone). */
static void check_out(void)
{
    sh_conn *c = W.c;
    if (!c || c->phase != SH_PHASE_WS)
        return;
    CHECK(!SH_HAS(c, SH_CF_IN_WSLAY), "IN_WSLAY left set");
    out_check oc = {.pings = NULL};
    CHECK(check_frames((const uint8_t *)c->out.p, c->out.len, &oc, "out") == c->out.len,
          "out does not end on a frame boundary");
}

/* Run the loop until the transport is quiet (two quiet iterations). */
static void settle(void)
{
    int quiet = 0;
    for (long i = 0; quiet < 2; i++) {
        CHECK(i < 200000, "the transport does not settle (dirty %p, paused %zu, flags %#x)",
              (void *)tp.dirty, tp.npaused, W.c ? (unsigned)W.c->flags : 0u);
        uv_run(&loop, UV_RUN_NOWAIT);
        size_t got = W.stalled ? 0 : client_read();
        quiet = got || transport_busy() ? 0 : quiet + 1;
    }
    check_out();
}

/* Send p[0..n) from the client; a server that is gone or does not read
 * makes the rest undeliverable. */
static void client_write(const uint8_t *p, size_t n)
{
    int stuck = 0;
    if (W.trace && n)
        fprintf(stderr, " [write %zu bytes]\n", n);
    while (n > 0 && !W.wr_closed && !W.wr_dead) {
        ssize_t k = send(W.fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            stuck = 0;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && ++stuck < 4) {
            settle();
        } else {
            W.wr_dead = 1; /* reset, or the server stopped reading for good */
        }
    }
}

/* ------------------------------------------------------------ driving */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t piece_len(uint8_t seed, uint64_t *rng, size_t left)
{
    static const size_t maxes[4] = {1, 5, 40, 1500};
    if (seed == 0)
        return left;
    size_t n = 1 + (size_t)(rng_next(rng) % maxes[seed & 3]);
    return n < left ? n : left;
}

/* The connection's timer runs out now: what libuv does for an expired
 * timer (stop it, call its callback), without waiting. */
static void fire_timer(void)
{
    sh_conn *c = W.c;
    if (!c || !uv_is_active((uv_handle_t *)&c->timer))
        return;
    uv_timer_cb cb = c->timer.timer_cb;
    uv_timer_stop(&c->timer);
    cb(&c->timer);
}

/* Decide a deferred upgrade. */
static void decide(int refuse)
{
    sh_conn *c = W.c;
    if (!c || c->phase != SH_PHASE_HANDSHAKE)
        return;
    if (W.trace)
        fprintf(stderr, " [%s]\n", refuse ? "refuse 403" : "upgrade");
    if (refuse) {
        W.refused = 1;
        sh_conn_refuse(c, 403, "403 no\n", 7, NULL);
    } else {
        sh_conn_upgrade(c, "chat", "X-Fuzz: 1\r\n");
    }
}

/* Something that happens between two writes (run 3). */
static void between(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    static const char *const names[16] = {"timer", "server send", "server close", "hook error",
                                          "client reads", "client reads", "client reads",
                                          "eof?", "decide", "decide/refuse"};
    sh_conn *c = W.c;
    if (W.trace && names[r % 16])
        fprintf(stderr, " [%s] out %zu inflight %zu flags %#x\n", names[r % 16],
                c ? c->out.len : 0, c ? c->inflight.len : 0, c ? (unsigned)c->flags : 0);
    switch (r % 16) {
    case 0:
        fire_timer();
        break;
    case 1:
        if (c && c->phase == SH_PHASE_WS)
            policy_send(c, "server says hi", 14, (r >> 8) & 1);
        break;
    case 2: {
        static const uint16_t codes[4] = {1000, 1001, 4000, 1008};
        if (c && c->phase == SH_PHASE_WS)
            policy_close(c, codes[(r >> 8) & 3], (r >> 10) & 1 ? "going" : NULL);
        break;
    }
    case 3:
        if (c)
            policy_failed(c);
        break;
    case 4:
    case 5:
    case 6:
        client_read(); /* a stalled write can go on */
        break;
    case 7:
        if ((r >> 8) % 8 == 0 && !W.wr_closed) {
            if (W.trace)
                fprintf(stderr, " [client: shutdown]\n");
            shutdown(W.fd, SHUT_WR); /* the peer half-closes */
            W.wr_closed = 1;
        }
        break;
    case 8:
        decide(0);
        break;
    case 9:
        decide((r >> 8) % 4 == 0);
        break;
    default:
        break;
    }
    settle();
}

/* The HTTP head at the start of raw: its length (0 when incomplete). */
static size_t head_len(const sh_buf *raw)
{
    for (size_t i = 3; i < raw->len; i++)
        if (memcmp(raw->p + i - 3, "\r\n\r\n", 4) == 0)
            return i + 1;
    return 0;
}

/* Play data[0..n) on a fresh connection. */
static void run(const uint8_t *data, size_t n, fz_config cfg, uint8_t split, uint8_t actions,
                sh_buf *raw_out, sh_buf *events_out)
{
    memset(&W, 0, sizeof W);
    W.fd = -1;
    W.cfg = cfg;
    W.trace = raw_out == NULL && getenv("SH_FUZZ_VERBOSE") != NULL;
    W.stalled = cfg.stall;
    W.defer = (actions & 0x40) != 0;
    W.lim = (sh_limits){
        .max_head_bytes = 8192,
        .max_body_bytes = 65536,
        .max_connections = 16,
        .max_message_bytes = cfg.max_message_bytes,
        .max_send_buffer = cfg.max_send_buffer,
        .handshake_timeout_ms = LONG_MS,
        .keepalive_timeout_ms = LONG_MS,
        .ping_interval_ms = cfg.ping ? LONG_MS : 0,
        .ping_timeout_ms = LONG_MS,
        .close_timeout_ms = LONG_MS,
#ifdef FZ_DEFLATE
        .permessage_deflate = 1,
#endif
    };

    client_connect();
    settle(); /* accepted */
    CHECK(W.accepted == 1 && W.c != NULL, "not accepted");

    uint64_t rng_split = split, rng_act = actions;
    size_t pos = 0;
    if (actions & 0x80) { /* bytes that came with the upgrade request */
        size_t k = piece_len(split, &rng_split, n);
        size_t rl = sizeof upgrade_request - 1;
        uint8_t *first = malloc(rl + k + 1);
        memcpy(first, upgrade_request, rl);
        memcpy(first + rl, data, k);
        client_write(first, rl + k);
        free(first);
        pos = k;
    } else {
        client_write((const uint8_t *)upgrade_request, sizeof upgrade_request - 1);
    }
    settle();
    CHECK(W.upgrades == 1, "no EV_UPGRADE for the upgrade request");
    if (!W.defer)
        CHECK(W.opens == 1, "not open after the upgrade");

    while (pos < n && !W.wr_closed && !W.wr_dead && W.c) {
        size_t k = piece_len(split, &rng_split, n - pos);
        if (actions)
            between(&rng_act);
        client_write(data + pos, k);
        pos += k;
        settle();
    }
    if (actions)
        between(&rng_act);
    decide(0); /* a decision still pending: the bytes that waited go to wslay now */
    settle();

    /* the client reads everything: a stalled write completes */
    W.stalled = 0;
    settle();

    /* the output: a 101 and frames; a 403; or nothing (dropped undecided) */
    sh_buf pings = {0};
    collect_pings(data, n, &pings);
    out_check oc = {.pings = &pings, .cut_ok = W.output_cut};
    size_t hl = head_len(&W.raw);
    if (W.opens) {
        CHECK(hl >= 13 && memcmp(W.raw.p, "HTTP/1.1 101 ", 13) == 0,
              "no 101 ahead of the frames (%zu bytes)", W.raw.len);
#ifdef FZ_DEFLATE
        CHECK(memmem(W.raw.p, hl, ext_line, sizeof ext_line - 1) != NULL,
              "the 101 does not accept permessage-deflate");
        z_stream zin = {0};
        CHECK(inflateInit2(&zin, -15) == Z_OK, "inflateInit2");
        oc.zin = &zin;
#endif
        CHECK(memmem(W.raw.p, hl, accept_line, sizeof accept_line - 1) != NULL,
              "the 101 lacks the right Sec-WebSocket-Accept");
        check_frames((const uint8_t *)W.raw.p + hl, W.raw.len - hl, &oc, "wire");
#ifdef FZ_DEFLATE
        inflateEnd(&zin);
#endif
    } else if (W.refused) {
        CHECK(hl > 0 && memcmp(W.raw.p, "HTTP/1.1 403 ", 13) == 0, "refused without a 403");
        CHECK(W.raw.len == hl + 7, "a 403 head of %zu bytes and %zu bytes after it (want 7)",
              hl, W.raw.len - hl);
    } else {
        CHECK(W.raw.len == 0, "dropped before the decision, yet %zu bytes written", W.raw.len);
    }
    sh_conn *c = W.c;
    if (c && c->phase == SH_PHASE_WS) {
        if (c->ws && wslay_event_get_close_sent(c->ws))
            CHECK(oc.closes == 1, "wslay sent a close, the wire has %d", oc.closes);
        /* EV_CLOSE will report close_code: received, else sent, else 1006
         * (conn.h); once a close frame went out, "sent" is known */
        if (oc.closes)
            CHECK(c->close_code != 0, "a close frame was sent but close_code is 0");
        CHECK(!sh_conn_open(c) || oc.closes == 0, "open after sending a close frame");
        event("end %u %s\n", c->close_code, c->close_reason ? c->close_reason : "");
    }

    /* the client goes away (a reset: no TIME_WAIT on either side); a
     * connection that does not read is closed by its owner */
    struct linger lg = {1, 0};
    setsockopt(W.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(W.fd);
    W.fd = -1;
    settle();
    if (W.c) {
        if (W.trace)
            fprintf(stderr, " [sh_conn_close]\n");
        sh_conn_close(W.c);
        settle();
    }
    CHECK(W.frees == 1 && W.c == NULL, "the connection was not freed");
    CHECK(W.closes == 1, "%d EV_CLOSE", W.closes);
    if (oc.closes)
        CHECK(W.close_code != 1006, "a close frame was written, yet EV_CLOSE reports 1006");
    CHECK(tp.nconns == 0 && tp.nlive == 0 && tp.npaused == 0 && tp.dirty == NULL,
          "transport not empty: %zu conns, %zu live, %zu paused", tp.nconns, tp.nlive,
          tp.npaused);
    CHECK(metrics.connections_current == 0 && metrics.websockets_current == 0,
          "current connections %llu, websockets %llu",
          (unsigned long long)metrics.connections_current,
          (unsigned long long)metrics.websockets_current);
    sh_buf_free(&pings);

    if (raw_out) {
        *raw_out = W.raw;
        *events_out = W.events;
    } else {
        sh_buf_free(&W.raw);
        sh_buf_free(&W.events);
    }
    W.raw = (sh_buf){0};
    W.events = (sh_buf){0};
}

static void on_connection(uv_stream_t *l, int status)
{
    CHECK(status == 0, "listener: %s", uv_strerror(status));
    CHECK(W.c == NULL && W.accepted == 0, "a second connection");
    sh_conn *c = sh_transport_accept(&tp, l, &W.lim);
    CHECK(c != NULL, "sh_transport_accept failed");
    W.c = c;
    W.accepted++;
    if (W.cfg.stall) {
        uv_os_fd_t fd;
        int small = 1; /* the kernel's minimum */
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    }
    sh_conn_start(c);
}

static int buf_equal(const sh_buf *a, const sh_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    sh_log_set_level(getenv("SH_FUZZ_LOG") ? SH_LOG_DEBUG : SH_LOG_ERROR);
    CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
    CHECK(sh_transport_init(&tp, &loop, &sh_ws_phase_rfc6455, on_event, &W, &metrics, "f022f022f022f022") == 0,
          "sh_transport_init");
    CHECK(uv_tcp_init(&loop, &listener) == 0, "uv_tcp_init");
    uv_ip4_addr("127.0.0.1", 0, &listen_addr);
    CHECK(uv_tcp_bind(&listener, (struct sockaddr *)&listen_addr, 0) == 0, "bind");
    CHECK(uv_listen((uv_stream_t *)&listener, 64, on_connection) == 0, "listen");
    int len = sizeof listen_addr;
    CHECK(uv_tcp_getsockname(&listener, (struct sockaddr *)&listen_addr, &len) == 0,
          "getsockname");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    fz_config cfg = decode_config(data[0]);
    uint8_t split = data[1], actions = data[2];
    const uint8_t *in = data + 3;
    size_t n = size - 3;

    /* runs 1 and 2: the same bytes, one write or many; with a send buffer
     * limit too large to be reached, the output must be the same */
    fz_config same = cfg;
    same.max_send_buffer = (size_t)1 << 30;
    sh_buf w1, e1, w2, e2;
    run(in, n, same, 0, 0, &w1, &e1);
    if (getenv("SH_FUZZ_VERBOSE")) { /* what a reproducer does, for humans */
        fprintf(stderr, "--- one write: events\n%.*s--- %zu bytes out:", (int)e1.len,
                e1.p ? e1.p : "", w1.len);
        for (size_t i = 0; i < w1.len && i < 400; i++)
            fprintf(stderr, " %02x", (uint8_t)w1.p[i]);
        fprintf(stderr, "\n--- cut, with actions:\n");
    }
    if (split != 0) {
        run(in, n, same, split, 0, &w2, &e2);
        if ((!buf_equal(&e1, &e2) || !buf_equal(&w1, &w2)) &&
            !has_non_ascii_close_reason(in, n)) {
            fprintf(stderr, "fuzz_ws: the result depends on how the input is cut "
                            "(split seed %u)\n--- one write: %zu bytes out\n%.*s--- cut: %zu "
                            "bytes out\n%.*s",
                    split, w1.len, (int)e1.len, e1.p ? e1.p : "", w2.len, (int)e2.len,
                    e2.p ? e2.p : "");
            fprintf(stderr, "one write out:");
            for (size_t i = 0; i < w1.len && i < 256; i++)
                fprintf(stderr, " %02x", (uint8_t)w1.p[i]);
            fprintf(stderr, "\ncut out:      ");
            for (size_t i = 0; i < w2.len && i < 256; i++)
                fprintf(stderr, " %02x", (uint8_t)w2.p[i]);
            fprintf(stderr, "\n");
            abort();
        }
        sh_buf_free(&w2);
        sh_buf_free(&e2);
    }
    sh_buf_free(&w1);
    sh_buf_free(&e1);

    /* run 3: cut, with things happening between writes, real limits */
    run(in, n, cfg, split, actions ? actions : 1, NULL, NULL);
    return 0;
}
