/* fuzz_ws.c — libFuzzer target for the WebSocket receive path: the real
 * src/ws_conn.c (compiled into this binary), the real src/utf8.c and
 * src/log.c, and the system libwslay, with small stand-ins for what
 * ws_conn.c calls outside itself (conn.c, lua_api.c, lua_host.c).
 *
 * Input: byte 0 configures the connection (see fz_config), byte 1 seeds how
 * the client bytes are cut into reads, byte 2 seeds what happens between
 * reads; the rest is what the client sends after the 101 (masked frames:
 * the seed corpus has them, the fuzzer mutates them).
 *
 * Each input is played three times, each on a fresh connection:
 *   1. in one read, nothing in between;
 *   2. cut into reads by byte 1, nothing in between;
 *   3. cut into reads, and between reads, chosen by byte 2: the ping timer
 *      fires, the server sends, the policy closes (conn:close) or fails
 *      (1011), a stalled write completes, the peer half-closes.
 * Runs 1 and 2 must produce the same output bytes and deliver the same
 * messages: frame parsing must not depend on how TCP cut the stream.
 *
 * The message hook (sh_api_message) stands in for a policy: it echoes the
 * message through sh_conn_send, so the send path runs inside wslay's
 * callbacks; the first byte of a message picks another behaviour:
 *   'c' conn:close(1000, "bye") then conn:send(msg)   (the send must be refused)
 *   'C' conn:send(msg) then conn:close(1000, "bye")
 *   'e' the hook raises: sh_conn_lua_failed (close 1011)
 *   'b' conn:send(msg) three times (reaches max_send_buffer sooner)
 *   'B' conn:send of 70000 bytes (the 64-bit length form)
 *   'n' nothing
 *
 * Invariants (a violation aborts):
 * - what the server writes is a sequence of well-formed server frames:
 *   FIN set, RSV clear, a known opcode (never a continuation), not masked,
 *   the shortest length encoding, control payloads <= 125 bytes, text
 *   payloads valid UTF-8, close payloads empty or a sendable code plus a
 *   UTF-8 reason; at most one close frame and nothing after it; out holds
 *   whole frames between reads; every pong carries the payload of one of
 *   the client's pings, in the order they were sent;
 * - a delivered message is within max_message_bytes, a text one is valid
 *   UTF-8 (checked by a separate decoder, not utf8.c), binary ones only when
 *   the policy has on_binary, never after a failure;
 * - ASan/UBSan/LeakSanitizer: every run ends with sh_ws_free and frees all.
 *
 * The stand-ins mirror conn.c at the time of writing (sh_conn_open is a
 * copy; sh_conn_flush, sh_conn_close and the timer follow conn.c's logic
 * with a fake socket instead of libuv). Keep them in step when conn.c
 * changes what ws_conn.c relies on. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "lua_host.h"
#include "server.h"
#include "utf8.h"

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_ws: %s:%d: check failed: %s: ", __FILE__, __LINE__,     \
                    #cond);                                                                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* ------------------------------------------------------------ the world */

/* Byte 0 of the input. */
typedef struct fz_config {
    int binary_hook;          /* bit 0: the policy has on_binary */
    int greet;                /* bit 1: on_open sends "hello" */
    int ping;                 /* bit 2: ping_interval_ms is set */
    int stall;                /* bit 3: writes do not complete until told */
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

/* What one run did. */
static struct {
    fz_config cfg;
    sh_buf wire;       /* bytes the fake socket accepted, in order */
    sh_buf events;     /* messages delivered etc., to compare runs */
    int timer_armed;
    uint64_t timer_ms;
    uint64_t now;
    int opens;
    int trace;         /* SH_FUZZ_VERBOSE, run 3: print events as they happen */
} W;

static sh_server srv;
static sh_gen gen;

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
        CHECK(n - off >= 2, "%s: %zu stray bytes at the end", what, n - off);
        uint8_t b0 = w[off], b1 = w[off + 1];
        unsigned op = b0 & 0x0f;
        off += 2;
        CHECK(b0 & 0x80, "%s: frame without FIN (0x%02x) at %zu", what, b0, start);
        CHECK((b0 & 0x70) == 0, "%s: RSV bits set (0x%02x) at %zu", what, b0, start);
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
        CHECK(len <= n - off, "%s: frame at %zu claims %llu bytes, %zu left", what, start,
              (unsigned long long)len, n - off);
        const uint8_t *pl = w + off;
        off += (size_t)len;
        if (op >= 8)
            CHECK(len <= 125, "%s: control frame of %llu bytes", what, (unsigned long long)len);
        if (op == 1)
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

/* ------------------------------------------------------------ stand-ins */


void sh_conn_arm_timer(sh_conn *c, uint64_t ms)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    W.timer_armed = 1;
    W.timer_ms = ms;
}

int sh_gen_has_hook(const sh_gen *g, enum sh_hook h)
{
    CHECK(g == &gen, "foreign generation");
    return h == SH_HOOK_BINARY ? W.cfg.binary_hook : 1;
}

/* A copy of conn.c's. */
int sh_conn_open(const sh_conn *c)
{
    return c->phase == SH_PHASE_WS && c->ws && !c->failed && !c->close_queued &&
           !wslay_event_get_close_received(c->ws) && !wslay_event_get_close_sent(c->ws) &&
           wslay_event_get_write_enabled(c->ws);
}

/* conn.c's: no more reads are delivered until the linger phase. */
void sh_conn_stop_reading(sh_conn *c) { c->reading = 0; }

/* conn.c's start_reading. */
static void start_reading(sh_conn *c)
{
    if (c->phase != SH_PHASE_CLOSED)
        c->reading = 1;
}

/* conn.c's sh_conn_close, minus libuv and Lua. */
void sh_conn_close(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    int was_ws = c->phase == SH_PHASE_WS;
    c->phase = SH_PHASE_CLOSED;
    c->reading = 0;
    W.timer_armed = 0;
    if (was_ws) {
        c->srv->metrics.websockets_current--;
        sh_ws_free(c);
    }
    /* a write in flight is cancelled by uv_close: its bytes may be lost */
    c->writing = 0;
    c->inflight.len = 0;
    event("closed %u\n", c->close_code);
}

/* conn.c's linger: FIN sent, input discarded until EOF or the timer. */
static void linger(sh_conn *c)
{
    if (c->lingering || c->phase == SH_PHASE_CLOSED)
        return;
    c->lingering = 1;
    c->close_after_write = 0;
    start_reading(c);
    W.timer_armed = 1;
    W.timer_ms = 2000;
}

/* conn.c's sh_conn_flush on a fake socket: it takes everything at once, or
 * (stall) nothing, so the bytes go in flight until the write completes. */
void sh_conn_flush(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED || c->writing)
        return;
    if (c->out.len > 0) {
        if (!W.cfg.stall) {
            sh_buf_append(&W.wire, c->out.p, c->out.len);
            c->out.len = 0;
        } else {
            sh_buf tmp = c->inflight;
            c->inflight = c->out;
            c->out = tmp;
            c->out.len = 0;
            c->writing = 1;
            return;
        }
    }
    if (c->close_after_write || (c->phase == SH_PHASE_WS && sh_ws_finished(c)))
        linger(c);
}

/* conn.c's on_write: the write in flight completed. */
static void write_done(sh_conn *c)
{
    if (!c->writing)
        return;
    sh_buf_append(&W.wire, c->inflight.p, c->inflight.len);
    c->inflight.len = 0;
    c->writing = 0;
    if (c->phase != SH_PHASE_CLOSED)
        sh_conn_flush(c);
}

/* conn.c's on_timer. */
static void timer_fires(sh_conn *c)
{
    if (!W.timer_armed)
        return;
    W.timer_armed = 0;
    W.now += W.timer_ms;
    if (c->phase == SH_PHASE_WS && !c->lingering) {
        sh_ws_on_timer(c);
        return;
    }
    sh_conn_close(c);
}

/* conn.c's sh_conn_lua_failed, for a WebSocket. */
static void policy_failed(sh_conn *c)
{
    if (c->phase == SH_PHASE_WS)
        sh_conn_ws_close(c, 1011, "internal error");
}

void sh_api_open(sh_conn *c)
{
    W.opens++;
    event("open\n");
    if (W.cfg.greet)
        CHECK(sh_conn_send(c, "hello", 5, 0) == 0, "greeting refused on an open connection");
}

/* conn:send from Lua: the string is never NULL. */
static int policy_send(sh_conn *c, const char *data, size_t len, int binary)
{
    int rc = sh_conn_send(c, data ? data : "", len, binary);
    if (W.trace)
        fprintf(stderr, "  send %zu -> %d (out %zu inflight %zu, close sent %d)\n", len, rc,
                c->out.len, c->inflight.len, c->ws ? wslay_event_get_close_sent(c->ws) : -1);
    CHECK(rc == 0 || rc == -1, "sh_conn_send = %d", rc);
    return rc;
}

/* conn:close(code, reason) from Lua: refused once the connection is not
 * open (lua_api.c's conn_close). */
static void policy_close(sh_conn *c, uint16_t code, const char *reason)
{
    if (sh_conn_open(c))
        sh_conn_ws_close(c, code, reason);
}

void sh_api_message(sh_conn *c, const char *data, size_t len, int binary)
{
    CHECK(c->phase == SH_PHASE_WS, "message delivered in phase %d", (int)c->phase);
    CHECK(!c->failed, "message delivered after a protocol failure");
    CHECK(c->in_wslay > 0, "message delivered outside wslay_event_recv");
    CHECK(len <= gen.cfg.max_message_bytes, "message of %zu bytes (max %zu)", len,
          gen.cfg.max_message_bytes);
    CHECK(!binary || W.cfg.binary_hook, "binary message without on_binary");
    CHECK(binary || ref_utf8_valid((const uint8_t *)data, len),
          "text message of %zu bytes is not UTF-8", len);
    event("msg %d %zu %08x\n", binary, len, len ? fnv(data, len) : 0);
    switch (len ? data[0] : 0) {
    case 'c':
        policy_close(c, 1000, "bye");
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

/* Feed one read from a private, exactly sized copy (ASan sees any access
 * past it or after the read). */
static void feed(sh_conn *c, const uint8_t *p, size_t n)
{
    /* libuv delivers nothing while not reading; conn.c's on_read discards
     * input while lingering */
    if (!c->reading || c->lingering)
        return;
    if (W.trace)
        fprintf(stderr, " [read %zu bytes]\n", n);
    char *copy = malloc(n ? n : 1);
    memcpy(copy, p, n);
    sh_ws_on_read(c, copy, n);
    free(copy);
    if (c->phase != SH_PHASE_CLOSED) {
        out_check oc = {0, NULL, 0};
        CHECK(check_frames((const uint8_t *)c->out.p, c->out.len, &oc, "out") == c->out.len,
              "out does not end on a frame boundary");
        CHECK(!c->in_wslay, "in_wslay left at %d", c->in_wslay);
    }
}

/* Something that happens between two reads (run 3). */
static void between(sh_conn *c, uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    static const char *const names[16] = {"timer", "server send", "server close", "lua error",
                                          "write done", "write done", "write done", "eof?"};
    if (W.trace && names[r % 16])
        fprintf(stderr, " [%s] out %zu inflight %zu writing %d\n", names[r % 16], c->out.len,
                c->inflight.len, c->writing);
    switch (r % 16) {
    case 0:
        timer_fires(c);
        break;
    case 1:
        if (c->phase == SH_PHASE_WS && c->ws)
            policy_send(c, "server says hi", 14, (r >> 8) & 1);
        break;
    case 2: {
        static const uint16_t codes[4] = {1000, 1001, 4000, 1008};
        if (c->phase == SH_PHASE_WS && c->ws)
            policy_close(c, codes[(r >> 8) & 3], (r >> 10) & 1 ? "going" : NULL);
        break;
    }
    case 3:
        if (c->phase == SH_PHASE_WS && c->ws)
            policy_failed(c);
        break;
    case 4:
    case 5:
    case 6:
        write_done(c);
        break;
    case 7:
        if ((r >> 8) % 8 == 0)
            sh_ws_on_read(c, NULL, 0); /* the peer half-closed */
        break;
    default:
        break;
    }
}

/* Play data[0..n) on a fresh connection. */
static void run(const uint8_t *data, size_t n, fz_config cfg, uint8_t split, uint8_t actions,
                sh_buf *wire_out, sh_buf *events_out)
{
    memset(&W, 0, sizeof W);
    W.cfg = cfg;
    W.trace = wire_out == NULL && getenv("SH_FUZZ_VERBOSE") != NULL;
    memset(&srv, 0, sizeof srv);
    memset(&gen, 0, sizeof gen);
    gen.srv = &srv;
    gen.id = 1;
    gen.refs = 1;
    gen.cfg.max_message_bytes = cfg.max_message_bytes;
    gen.cfg.max_send_buffer = cfg.max_send_buffer;
    gen.cfg.ping_interval_ms = cfg.ping ? 30000 : 0;
    gen.cfg.ping_timeout_ms = 10000;
    gen.cfg.close_timeout_ms = 5000;

    sh_conn *c = calloc(1, sizeof *c);
    c->srv = &srv;
    c->gen = &gen;
    c->ud_ref = c->request_ref = -2; /* LUA_NOREF */
    snprintf(c->id, sizeof c->id, "fuzz");
    snprintf(c->peer, sizeof c->peer, "fuzz:1");
    c->phase = SH_PHASE_WS; /* as accept_upgrade sets it before sh_ws_start */

    uint64_t rng_split = split, rng_act = actions;
    size_t pos = 0;
    const char *leftover = NULL;
    size_t lolen = 0;
    if (actions & 0x80) { /* bytes that came with the upgrade request */
        lolen = piece_len(split, &rng_split, n);
        leftover = (const char *)data;
        pos = lolen;
    }
    char *lo = NULL;
    if (lolen) {
        lo = malloc(lolen);
        memcpy(lo, leftover, lolen);
    }
    CHECK(sh_ws_start(c, lo, lolen) == 0, "sh_ws_start failed");
    free(lo);
    start_reading(c); /* as accept_upgrade does after sh_ws_start */
    CHECK(W.opens == 1, "on_open ran %d times", W.opens);
    CHECK(srv.metrics.websockets_current == 1, "websockets_current %llu",
          (unsigned long long)srv.metrics.websockets_current);

    while (pos < n && c->phase != SH_PHASE_CLOSED) {
        size_t k = piece_len(split, &rng_split, n - pos);
        if (actions)
            between(c, &rng_act);
        if (c->phase == SH_PHASE_CLOSED)
            break;
        feed(c, data + pos, k);
        pos += k;
    }
    if (actions && c->phase != SH_PHASE_CLOSED)
        between(c, &rng_act);

    /* let every pending write complete, then look at all of it */
    while (c->phase != SH_PHASE_CLOSED && c->writing)
        write_done(c);
    sh_buf pings = {0};
    collect_pings(data, n, &pings);
    out_check oc = {0, &pings, 0};
    check_frames((const uint8_t *)W.wire.p, W.wire.len, &oc, "wire");
    int closes = oc.closes;
    if (c->phase != SH_PHASE_CLOSED) {
        check_frames((const uint8_t *)c->out.p, c->out.len, &oc, "wire+out");
        closes = oc.closes;
        if (c->ws && wslay_event_get_close_sent(c->ws))
            CHECK(closes == 1, "wslay sent a close, the wire has %d", closes);
        /* on_close gets close_code: received, else sent, else 1006 (conn.h);
         * once a close frame went out, "sent" is known */
        if (closes)
            CHECK(c->close_code != 0, "a close frame was sent but close_code is 0 "
                                      "(on_close would report 1006)");
        CHECK(!sh_conn_open(c) || closes == 0, "open after sending a close frame");
        event("end %u %s\n", c->close_code, c->close_reason);
    }

    if (c->phase != SH_PHASE_CLOSED)
        sh_conn_close(c);
    CHECK(c->ws == NULL, "wslay context left after close");
    sh_ws_free(c); /* idempotent */
    CHECK(srv.metrics.websockets_current == 0, "websockets_current %llu",
          (unsigned long long)srv.metrics.websockets_current);
    sh_buf_free(&pings);
    sh_buf_free(&c->out);
    sh_buf_free(&c->inflight);
    sh_buf_free(&c->pending);
    free(c);

    if (wire_out) {
        *wire_out = W.wire;
        *events_out = W.events;
    } else {
        sh_buf_free(&W.wire);
        sh_buf_free(&W.events);
    }
}

static int buf_equal(const sh_buf *a, const sh_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sh_log_set_level(SH_LOG_ERROR);
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

    /* runs 1 and 2: the same bytes, one read or many; with a send buffer
     * limit too large to be reached, the output must be the same */
    fz_config same = cfg;
    same.max_send_buffer = (size_t)1 << 30;
    sh_buf w1, e1, w2, e2;
    run(in, n, same, 0, 0, &w1, &e1);
    if (getenv("SH_FUZZ_VERBOSE")) { /* what a reproducer does, for humans */
        fprintf(stderr, "--- one read: events\n%.*s--- %zu bytes out:", (int)e1.len,
                e1.p ? e1.p : "", w1.len);
        for (size_t i = 0; i < w1.len && i < 256; i++)
            fprintf(stderr, " %02x", (uint8_t)w1.p[i]);
        fprintf(stderr, "\n");
    }
    if (split != 0) {
        run(in, n, same, split, 0, &w2, &e2);
        if ((!buf_equal(&e1, &e2) || !buf_equal(&w1, &w2)) &&
            !has_non_ascii_close_reason(in, n)) {
            fprintf(stderr, "fuzz_ws: the result depends on how the input is cut "
                            "(split seed %u)\n--- one read: %zu bytes out\n%.*s--- cut: %zu "
                            "bytes out\n%.*s",
                    split, w1.len, (int)e1.len, e1.p ? e1.p : "", w2.len, (int)e2.len,
                    e2.p ? e2.p : "");
            fprintf(stderr, "one read out:");
            for (size_t i = 0; i < w1.len && i < 64; i++)
                fprintf(stderr, " %02x", (uint8_t)w1.p[i]);
            fprintf(stderr, "\ncut out:     ");
            for (size_t i = 0; i < w2.len && i < 64; i++)
                fprintf(stderr, " %02x", (uint8_t)w2.p[i]);
            fprintf(stderr, "\n");
            abort();
        }
        sh_buf_free(&w2);
        sh_buf_free(&e2);
    }
    sh_buf_free(&w1);
    sh_buf_free(&e1);

    /* run 3: cut, with things happening between reads, real limits */
    run(in, n, cfg, split, actions ? actions : 1, NULL, NULL);
    return 0;
}
