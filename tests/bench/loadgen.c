/*
 * sh_loadgen — load generator for statushost (SPEC §1, §5).
 *
 * C concurrent WebSocket clients on one libuv loop. Each client repeats a
 * "job" until the duration ends (or --max-jobs jobs have been started):
 *
 *   TCP connect -> HTTP/1.1 upgrade (checks 101 + Sec-WebSocket-Accept)
 *   -> one text frame: [{"id":"c<client>-<seq>-<i>","status":"进行中"}, ...]
 *   -> count update frames (JSON objects whose "id" is one of the batch)
 *   -> server close frame: job succeeds when the code is 1000, all T ids
 *      were seen and no error frame arrived -> reply to the close, wait for
 *      the server to drop TCP, next job on a new connection.
 *
 * Job latency = batch sent -> close frame received (µs histogram, ~1.6%
 * bucket precision; max is exact).
 *
 * WebSocket framing is wslay's event API in client mode (masked frames, mask
 * keys from RAND_bytes); non-control frames are not buffered by wslay, the
 * loadgen copies each message into a fixed per-client buffer, so the steady
 * state does no per-update allocation on our side.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <uv.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HBUF_CAP 2048        /* HTTP response head (+ any early frame bytes) */
#define MBUF_CAP 2048        /* one update message; longer ones are truncated for parsing */
#define HS_TIMEOUT_MS 10000  /* connect + upgrade */
#define LINGER_MS 2000       /* after our close reply: wait for the server's FIN */
#define BACKOFF_MS 100       /* after a failed job, before the next one */
#define MAX_RECV_MSG (1u << 20)
#define STATUS_SENT "\xe8\xbf\x9b\xe8\xa1\x8c\xe4\xb8\xad" /* 进行中 */

/* ------------------------------------------------------------------ */
/* latency histogram: exact below 128 µs, then 64 sub-buckets per octave */

#define H_BUCKETS 3840
static inline unsigned hist_index(uint64_t v) {
    if (v < 128) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6u;
    return 128u + (shift - 1u) * 64u + (unsigned)((v >> shift) - 64u);
}
static inline uint64_t hist_upper(unsigned idx) {
    if (idx < 128) return idx;
    unsigned shift = (idx - 128u) / 64u + 1u;
    uint64_t sub = (idx - 128u) % 64u + 64u;
    return ((sub + 1u) << shift) - 1u;
}

/* ------------------------------------------------------------------ */

enum cstate { C_IDLE, C_CONNECTING, C_HS_SEND, C_HS_RECV, C_WS, C_LINGER, C_CLOSING, C_DONE };
enum phase { PH_RUN, PH_DRAIN, PH_STOP };
enum mode { M_SEEDFLOW, M_FANOUT, M_IDLE };
#define MAX_STEPS 16
#define OPEN_WINDOW 200      /* fanout/idle: connections in connect+handshake at once */
#define STEP_TIMEOUT_MS 60000

typedef struct client {
    uv_poll_t poll;
    uv_timer_t timer;
    int fd;
    int poll_inited;
    int poll_events;
    unsigned idx;
    uint32_t seq;
    enum cstate st;
    wslay_event_context_ptr ws;

    /* handshake */
    char req[1536];
    size_t req_len, req_off;
    char accept[32];
    char hbuf[HBUF_CAP];
    size_t hlen, hoff; /* after the head: hoff..hlen are early frame bytes */

    /* job */
    uint8_t *seen;
    uint32_t unique;
    int batch_sent, recorded, failed, abort_silent, eof, last_failed;
    int io_errno;
    char reason[80];
    uint64_t t_sent;

    /* fanout / idle: the fid the server POSTed for this connection ("" until then) */
    char fid[72];
    int opening; /* counted in G.opening (connect + handshake in flight) */

    /* message assembly (wslay no-buffering mode) */
    uint8_t mop;
    int in_ctrl, mfin, moverflow;
    size_t mlen;
    char mbuf[MBUF_CAP];
} client_t;

struct reason { char name[80]; uint64_t n; };
#define MAX_REASONS 32

static struct {
    /* options */
    const char *url;
    unsigned conns, tasks;
    double duration, drain;
    long server_pid;
    uint64_t max_jobs;
    int json;
    const char *origin;

    /* target */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host_hdr[300];
    char path[700];

    uv_loop_t loop;
    uv_timer_t t_duration, t_drain;
    uv_signal_t sig_int, sig_term;
    enum phase phase;
    unsigned active;
    int finished;
    client_t *clients;
    char *batch; /* one build buffer: wslay copies the message when it is queued */
    size_t batch_cap, batch_len;

    uint64_t t_start, t_end;

    /* counters */
    uint64_t attempted, started, completed, failed, aborted;
    uint64_t expected, unique, frames_update, dup, foreign, error_frames, unexpected;
    uint64_t linger_timeouts;
    uint64_t lat_sum_us, lat_max_us;
    uint64_t hist[H_BUCKETS];
    struct reason reasons[MAX_REASONS];
    int nreasons;
    uint64_t reasons_other;

    /* server memory, kB; -1 = unavailable */
    long rss0, hwm0, rss1, hwm1;
    /* server CPU (utime+stime, clock ticks); -1 = unavailable */
    long long cpu0, cpu1;
    uint64_t hist_n;

    /* fanout / idle */
    enum mode mode;
    unsigned target, opened, opening, registered;
    unsigned steps[MAX_STEPS], nsteps, step;
    long step_rss[MAX_STEPS];
    int remote_port;
    uv_tcp_t remote;
    const char *redis_url, *prefix;
    char redis_host[256];
    int redis_port;
    redisAsyncContext *pub;
    double rate; /* msgs/s; 0 = max */
    int foreign_mode; /* fanout: payloads for no task of the job (the server must drop them) */
    double hold; /* idle: seconds to keep the last step open (to look at the server) */
    unsigned inflight_max;
    int publishing, pub_failed;
    uv_timer_t t_pub, t_step;
    uint64_t pub_sent, pub_acked, pub_noreceiver, pub_errors, fan_recv, fan_bad;
    uint64_t pub_t0, pub_t1, drain_t1;
    unsigned rr;
} G;

static void start_job(client_t *c);
static void teardown(client_t *c);
static void drive(client_t *c, int events);
static void finish_run(void);

static uint64_t now_us(void) { return uv_hrtime() / 1000u; }

static const char *errname(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

/* ------------------------------------------------------------------ */
/* bookkeeping */

static void reason_add(const char *name) {
    for (int i = 0; i < G.nreasons; i++)
        if (strcmp(G.reasons[i].name, name) == 0) { G.reasons[i].n++; return; }
    if (G.nreasons < MAX_REASONS) {
        snprintf(G.reasons[G.nreasons].name, sizeof G.reasons[0].name, "%s", name);
        G.reasons[G.nreasons++].n = 1;
    } else {
        G.reasons_other++;
    }
}

static void fail(client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(client_t *c, const char *fmt, ...) {
    if (c->failed) return; /* keep the first cause */
    c->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
}

static void record_failure(client_t *c) {
    if (c->recorded) return;
    c->recorded = 1;
    c->last_failed = 1;
    if (!c->failed) fail(c, "unknown");
    G.failed++;
    reason_add(c->reason);
}

static void hist_add(uint64_t lat_us) {
    G.hist_n++;
    G.lat_sum_us += lat_us;
    if (lat_us > G.lat_max_us) G.lat_max_us = lat_us;
    unsigned i = hist_index(lat_us);
    if (i >= H_BUCKETS) i = H_BUCKETS - 1;
    G.hist[i]++;
}

static void record_success(client_t *c, uint64_t lat_us) {
    if (c->recorded) return;
    c->recorded = 1;
    c->last_failed = 0;
    G.completed++;
    hist_add(lat_us);
}

static uint64_t percentile_us(double p) {
    if (G.hist_n == 0) return 0;
    uint64_t rank = (uint64_t)ceil(p * (double)G.hist_n);
    if (rank < 1) rank = 1;
    uint64_t cum = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        cum += G.hist[i];
        if (cum >= rank) {
            uint64_t v = hist_upper(i);
            return v < G.lat_max_us ? v : G.lat_max_us;
        }
    }
    return G.lat_max_us;
}

/* ------------------------------------------------------------------ */
/* poll handling */

static void on_poll(uv_poll_t *h, int status, int events);

static void poll_set(client_t *c, int ev) {
    if (ev == c->poll_events) return;
    c->poll_events = ev;
    if (ev) uv_poll_start(&c->poll, ev, on_poll);
    else uv_poll_stop(&c->poll);
}

static void client_done(client_t *c) {
    c->st = C_DONE;
    uv_timer_stop(&c->timer);
    if (G.active > 0 && --G.active == 0) finish_run();
}

static void on_client_timer(uv_timer_t *t);

static void opened(client_t *c);

static void next_job(client_t *c) {
    if (c->ws) { wslay_event_context_free(c->ws); c->ws = NULL; }
    c->st = C_IDLE;
    if (G.mode != M_SEEDFLOW) { /* one job per connection, never restarted */
        opened(c);
        client_done(c);
        return;
    }
    if (G.phase != PH_RUN) { client_done(c); return; }
    if (c->last_failed) uv_timer_start(&c->timer, on_client_timer, BACKOFF_MS, 0);
    else start_job(c);
}

static void finalize_job(client_t *c) {
    if (!c->recorded) {
        if (!c->batch_sent && c->abort_silent) {
            c->recorded = 1;
            G.aborted++;
        } else {
            if (!c->failed) fail(c, c->eof ? "eof before close frame" : "connection lost");
            record_failure(c);
        }
    }
}

static void on_poll_closed(uv_handle_t *h) {
    client_t *c = h->data;
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    c->poll_inited = 0;
    c->poll_events = 0;
    finalize_job(c);
    next_job(c);
}

static void teardown(client_t *c) {
    if (c->st == C_CLOSING || c->st == C_DONE || c->st == C_IDLE) return;
    c->st = C_CLOSING;
    uv_timer_stop(&c->timer);
    if (c->poll_inited) {
        uv_close((uv_handle_t *)&c->poll, on_poll_closed);
    } else {
        if (c->fd >= 0) { close(c->fd); c->fd = -1; }
        finalize_job(c);
        next_job(c);
    }
}

static void on_client_timer(uv_timer_t *t) {
    client_t *c = t->data;
    switch (c->st) {
    case C_IDLE:
        start_job(c);
        break;
    case C_CONNECTING:
        fail(c, "connect timeout");
        teardown(c);
        break;
    case C_HS_SEND:
    case C_HS_RECV:
        fail(c, "handshake timeout");
        teardown(c);
        break;
    case C_LINGER:
        G.linger_timeouts++; /* server kept TCP open after the close handshake */
        teardown(c);          /* job already recorded */
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ */
/* handshake */

static void b64(const unsigned char *in, int n, char *out) {
    EVP_EncodeBlock((unsigned char *)out, in, n);
}

static int make_request(client_t *c) {
    unsigned char nonce[16];
    char key[32];
    if (RAND_bytes(nonce, sizeof nonce) != 1) return -1;
    b64(nonce, sizeof nonce, key);

    char cat[64 + sizeof WS_GUID];
    int n = snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(cat, (size_t)n, md, &mdlen, EVP_sha1(), NULL)) return -1;
    b64(md, (int)mdlen, c->accept);

    int len = snprintf(c->req, sizeof c->req,
                       "GET %s HTTP/1.1\r\n"
                       "Host: %s\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "%s%s%s"
                       "User-Agent: sh_loadgen\r\n"
                       "\r\n",
                       G.path, G.host_hdr, key,
                       G.origin ? "Origin: " : "", G.origin ? G.origin : "", G.origin ? "\r\n" : "");
    if (len < 0 || (size_t)len >= sizeof c->req) return -1;
    c->req_len = (size_t)len;
    c->req_off = 0;
    return 0;
}

static int has_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < n && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0) return 1;
    }
    return 0;
}

/* returns 0 ok, -1 failure (reason set) */
static int check_response(client_t *c, size_t head_len) {
    const char *p = c->hbuf, *end = c->hbuf + head_len;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (!eol || eol - p < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') {
        fail(c, "handshake: bad status line");
        return -1;
    }
    int code = atoi(p + 9);
    if (code != 101) {
        fail(c, "http %d", code);
        return -1;
    }
    int ok_accept = 0, ok_upgrade = 0, ok_conn = 0;
    p = eol + 2;
    while (p < end) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) eol = end;
        if (eol == p) break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            size_t nlen = (size_t)(colon - p);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            size_t vlen = (size_t)(ve - v);
            if (nlen == 20 && strncasecmp(p, "sec-websocket-accept", 20) == 0) {
                ok_accept = vlen == strlen(c->accept) && memcmp(v, c->accept, vlen) == 0;
            } else if (nlen == 7 && strncasecmp(p, "upgrade", 7) == 0) {
                ok_upgrade = vlen == 9 && strncasecmp(v, "websocket", 9) == 0;
            } else if (nlen == 10 && strncasecmp(p, "connection", 10) == 0) {
                ok_conn = has_token(v, vlen, "upgrade");
            }
        }
        p = eol + 2;
    }
    if (!ok_accept) { fail(c, "handshake: bad Sec-WebSocket-Accept"); return -1; }
    if (!ok_upgrade) { fail(c, "handshake: bad Upgrade header"); return -1; }
    if (!ok_conn) { fail(c, "handshake: bad Connection header"); return -1; }
    return 0;
}

/* ------------------------------------------------------------------ */
/* wslay callbacks */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *ud) {
    (void)flags;
    client_t *c = ud;
    if (c->hoff < c->hlen) {
        size_t n = c->hlen - c->hoff;
        if (n > len) n = len;
        memcpy(buf, c->hbuf + c->hoff, n);
        c->hoff += n;
        return (ssize_t)n;
    }
    ssize_t r;
    do r = recv(c->fd, buf, len, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            c->io_errno = errno;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
    if (r == 0) {
        c->eof = 1;
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                          int flags, void *ud) {
    (void)flags;
    client_t *c = ud;
    ssize_t r;
    do r = send(c->fd, data, len, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            c->io_errno = errno;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
    return r;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
    (void)ud;
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

static void ws_frame_start_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_start_arg *a, void *ud) {
    (void)ctx;
    client_t *c = ud;
    c->in_ctrl = (a->opcode & 0x8) != 0;
    if (c->in_ctrl) return;
    if (a->opcode != WSLAY_CONTINUATION_FRAME) {
        c->mop = a->opcode;
        c->mlen = 0;
        c->moverflow = 0;
    }
    c->mfin = a->fin;
}

static void ws_frame_chunk_cb(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_chunk_arg *a, void *ud) {
    (void)ctx;
    client_t *c = ud;
    if (c->in_ctrl) return;
    size_t room = MBUF_CAP - c->mlen, n = a->data_length;
    if (n > room) { n = room; c->moverflow = 1; }
    memcpy(c->mbuf + c->mlen, a->data, n);
    c->mlen += n;
}

/* Finds "key" <ws> : <ws> " and returns a pointer to the string value's first
 * character (and its length up to the closing quote), or NULL. */
static const char *find_str_key(const char *s, size_t n, const char *key, size_t *vlen) {
    size_t kl = strlen(key);
    const char *end = s + n, *p = s;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), key, kl);
        if (!q) return NULL;
        const char *v = q + kl;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
        if (v < end && *v == ':') {
            v++;
            while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
            if (v < end && *v == '"') {
                v++;
                const char *e = memchr(v, '"', (size_t)(end - v));
                if (e) { *vlen = (size_t)(e - v); return v; }
                return NULL;
            }
        }
        p = q + 1;
    }
    return NULL;
}

static int parse_u32(const char **pp, const char *end, uint32_t *out) {
    const char *p = *pp;
    uint64_t v = 0;
    if (p >= end || *p < '0' || *p > '9') return -1;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX) return -1;
        p++;
    }
    *pp = p;
    *out = (uint32_t)v;
    return 0;
}

/* id "c<client>-<seq>-<i>" of this client's current job → i, else -1 */
static long match_id(client_t *c, const char *v, size_t n) {
    const char *p = v, *end = v + n;
    uint32_t ci, seq, i;
    if (p >= end || *p != 'c') return -1;
    p++;
    if (parse_u32(&p, end, &ci) || p >= end || *p++ != '-') return -1;
    if (parse_u32(&p, end, &seq) || p >= end || *p++ != '-') return -1;
    if (parse_u32(&p, end, &i) || p != end) return -1;
    if (ci != c->idx || seq != c->seq || i >= G.tasks) return -1;
    return (long)i;
}

static void fanout_received(client_t *c);

static void handle_message(client_t *c) {
    if (c->mop != WSLAY_TEXT_FRAME) {
        G.unexpected++;
        fail(c, "unexpected binary frame");
        return;
    }
    size_t vlen;
    const char *v = find_str_key(c->mbuf, c->mlen, "\"id\"", &vlen);
    if (v && G.mode != M_SEEDFLOW && match_id(c, v, vlen) == 0) {
        fanout_received(c);
        return;
    }
    if (v) {
        long i = match_id(c, v, vlen);
        if (i >= 0) {
            G.frames_update++;
            if (!c->seen[i]) {
                c->seen[i] = 1;
                c->unique++;
                G.unique++;
            } else {
                G.dup++;
            }
            return;
        }
    }
    const char *e = find_str_key(c->mbuf, c->mlen, "\"error\"", &vlen);
    if (e) {
        char code[41];
        size_t k = 0;
        for (size_t j = 0; j < vlen && k < sizeof code - 1; j++) {
            char ch = e[j];
            code[k++] = ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                         (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.')
                            ? ch : '?';
        }
        code[k] = 0;
        G.error_frames++;
        fail(c, "error frame: %s", k ? code : "?");
        return;
    }
    if (v) {
        G.foreign++;
        fail(c, "update with an id not in the job");
        return;
    }
    G.unexpected++;
    fail(c, "unexpected text frame");
}

static void ws_frame_end_cb(wslay_event_context_ptr ctx, void *ud) {
    (void)ctx;
    client_t *c = ud;
    if (c->in_ctrl || !c->mfin) return;
    handle_message(c);
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a,
                      void *ud) {
    (void)ctx;
    client_t *c = ud;
    if (a->opcode != WSLAY_CONNECTION_CLOSE) return;
    uint64_t lat = now_us() - c->t_sent;
    unsigned code = a->status_code ? a->status_code : 1005;
    if (G.mode != M_SEEDFLOW) fail(c, "server closed %u", code);
    else if (code != 1000) fail(c, "close %u", code);
    else if (c->unique < G.tasks) fail(c, "close 1000 before all updates");
    if (c->failed) record_failure(c);
    else record_success(c, lat);
}

static const struct wslay_event_callbacks WS_CB = {
    ws_recv_cb, ws_send_cb, ws_genmask_cb,
    ws_frame_start_cb, ws_frame_chunk_cb, ws_frame_end_cb, ws_msg_cb,
};

/* ------------------------------------------------------------------ */
/* job flow */

static char *put_u32(char *p, uint32_t v) {
    char tmp[10];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static void build_batch(client_t *c) {
    char prefix[32], *q = prefix;
    *q++ = 'c';
    q = put_u32(q, c->idx);
    *q++ = '-';
    q = put_u32(q, c->seq);
    *q++ = '-';
    size_t pl = (size_t)(q - prefix);

    static const char A[] = "{\"id\":\"";
    static const char B[] = "\",\"status\":\"" STATUS_SENT "\"}";
    char *p = G.batch;
    *p++ = '[';
    for (uint32_t i = 0; i < G.tasks; i++) {
        if (i) *p++ = ',';
        memcpy(p, A, sizeof A - 1); p += sizeof A - 1;
        memcpy(p, prefix, pl); p += pl;
        p = put_u32(p, i);
        memcpy(p, B, sizeof B - 1); p += sizeof B - 1;
    }
    *p++ = ']';
    G.batch_len = (size_t)(p - G.batch);
}

static void open_ws(client_t *c) {
    uv_timer_stop(&c->timer);
    if (wslay_event_context_client_init(&c->ws, &WS_CB, c) != 0) {
        c->ws = NULL;
        fail(c, "wslay init failed");
        teardown(c);
        return;
    }
    wslay_event_config_set_no_buffering(c->ws, 1);
    wslay_event_config_set_max_recv_msg_length(c->ws, MAX_RECV_MSG);
    build_batch(c);
    struct wslay_event_msg m = { WSLAY_TEXT_FRAME, (const uint8_t *)G.batch, G.batch_len };
    if (wslay_event_queue_msg(c->ws, &m) != 0) {
        fail(c, "wslay queue failed");
        teardown(c);
        return;
    }
    c->st = C_WS;
    c->batch_sent = 1;
    c->t_sent = now_us();
    G.started++;
    if (G.mode == M_SEEDFLOW) G.expected += G.tasks;
    else opened(c);
    drive(c, c->hoff < c->hlen ? UV_READABLE : 0);
}

static void do_linger(client_t *c) {
    c->st = C_LINGER;
    poll_set(c, UV_READABLE);
    uv_timer_start(&c->timer, on_client_timer, LINGER_MS, 0);
}

static void drive(client_t *c, int events) {
    if (events & UV_READABLE) {
        if (wslay_event_recv(c->ws) != 0) {
            if (!c->recorded) {
                if (c->eof) fail(c, "eof before close frame");
                else if (c->io_errno) fail(c, "recv: %s", errname(c->io_errno));
                else fail(c, "websocket receive error");
                record_failure(c);
            }
            teardown(c);
            return;
        }
    }
    if (wslay_event_want_write(c->ws)) {
        if (wslay_event_send(c->ws) != 0) {
            if (!c->recorded) {
                fail(c, "send: %s", c->io_errno ? errname(c->io_errno) : "error");
                record_failure(c);
            }
            teardown(c);
            return;
        }
    }
    int wr = wslay_event_want_read(c->ws), ww = wslay_event_want_write(c->ws);
    if (!wr && !ww) {
        if (!c->recorded) {
            /* wslay closed on its own (protocol error, bad UTF-8, too big) */
            fail(c, "websocket protocol error (sent close %u)",
                 (unsigned)wslay_event_get_status_code_sent(c->ws));
            record_failure(c);
        }
        do_linger(c);
        return;
    }
    poll_set(c, (wr ? UV_READABLE : 0) | (ww ? UV_WRITABLE : 0));
}

static void on_poll(uv_poll_t *h, int status, int events) {
    client_t *c = h->data;
    if (status < 0) {
        /* libuv reports EPOLLERR as UV_EBADF: the socket knows the real cause */
        if (!c->recorded) {
            int err = 0;
            socklen_t el = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = 0;
            const char *what = c->st == C_CONNECTING ? "connect" : c->st == C_WS ? "socket" : "handshake";
            if (err) fail(c, "%s: %s", what, errname(err));
            else fail(c, "%s: poll %s", what, uv_err_name(status));
        }
        teardown(c);
        return;
    }
    switch (c->st) {
    case C_CONNECTING: {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
        if (err) {
            fail(c, "connect: %s", errname(err));
            teardown(c);
            return;
        }
        c->st = C_HS_SEND;
    }
        __attribute__((fallthrough));
    case C_HS_SEND:
        while (c->req_off < c->req_len) {
            ssize_t r = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) { poll_set(c, UV_WRITABLE); return; }
                fail(c, "handshake send: %s", errname(errno));
                teardown(c);
                return;
            }
            c->req_off += (size_t)r;
        }
        c->st = C_HS_RECV;
        poll_set(c, UV_READABLE);
        return;
    case C_HS_RECV:
        for (;;) {
            if (c->hlen >= HBUF_CAP) {
                fail(c, "handshake: response head too large");
                teardown(c);
                return;
            }
            ssize_t r = recv(c->fd, c->hbuf + c->hlen, HBUF_CAP - c->hlen, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return;
                fail(c, "handshake recv: %s", errname(errno));
                teardown(c);
                return;
            }
            if (r == 0) {
                fail(c, "handshake: eof");
                teardown(c);
                return;
            }
            size_t from = c->hlen >= 3 ? c->hlen - 3 : 0;
            c->hlen += (size_t)r;
            const char *e = memmem(c->hbuf + from, c->hlen - from, "\r\n\r\n", 4);
            if (e) {
                size_t head = (size_t)(e - c->hbuf) + 4;
                if (check_response(c, head) != 0) { teardown(c); return; }
                c->hoff = head; /* early frame bytes, if any, go to wslay first */
                open_ws(c);
                return;
            }
        }
    case C_WS:
        drive(c, events);
        return;
    case C_LINGER: {
        char scratch[4096];
        for (;;) {
            ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
            if (r > 0) continue;
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            teardown(c); /* EOF or error: the server has closed */
            return;
        }
    }
    default:
        return;
    }
}

static void start_job(client_t *c) {
    if (G.phase != PH_RUN || (G.max_jobs && G.attempted >= G.max_jobs)) {
        client_done(c);
        return;
    }
    G.attempted++;
    c->seq++;
    c->unique = 0;
    c->batch_sent = c->recorded = c->failed = c->abort_silent = c->eof = 0;
    c->io_errno = 0;
    c->reason[0] = 0;
    c->hlen = c->hoff = 0;
    c->mlen = 0;
    c->in_ctrl = 0;
    c->mop = 0;
    c->poll_events = 0;
    memset(c->seen, 0, G.tasks);
    c->st = C_CONNECTING;

    if (make_request(c) != 0) {
        fail(c, "handshake: request build failed");
        teardown(c);
        return;
    }
    c->fd = socket(G.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail(c, "socket: %s", errname(errno));
        teardown(c);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&G.addr, G.addrlen) < 0 && errno != EINPROGRESS) {
        fail(c, "connect: %s", errname(errno));
        teardown(c);
        return;
    }
    if (uv_poll_init_socket(&G.loop, &c->poll, c->fd) != 0) {
        fail(c, "uv_poll_init_socket failed");
        teardown(c);
        return;
    }
    c->poll.data = c;
    c->poll_inited = 1;
    poll_set(c, UV_WRITABLE);
    uv_timer_start(&c->timer, on_client_timer, HS_TIMEOUT_MS, 0);
}

/* ------------------------------------------------------------------ */
/* fanout and idle modes
 *
 * Both open G.target connections (at most OPEN_WINDOW connecting at once),
 * each sending a 1-task batch [{"id":"c<client>-1-0",...}]. The server under
 * test POSTs {"data":[...],"fid":"<fid>"} to the remote it is given: that is
 * this process (--remote-port), which answers 200 at once and learns the
 * connection's fid. A connection counts as ready (subscribed, waiting) when
 * its POST has arrived.
 *   fanout: a hiredis publisher PUBLISHes {"id":"c<client>-1-0","status":
 *     "进行中","seq":n,"ts":<µs>} to <prefix><fid> round-robin over the
 *     connections, at --rate msgs/s or as fast as --inflight outstanding
 *     PUBLISHes allow (--rate max); latency = arrival − ts (same clock).
 *   idle: ramps through --steps and reads the server's VmRSS at each. */

static int read_mem(long pid, long *rss, long *hwm);
static void json_str(FILE *f, const char *s);

static long long read_cpu(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces */
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

static double cpu_us(long long t0, long long t1) {
    if (t0 < 0 || t1 < 0) return -1;
    return (double)(t1 - t0) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

static void ramp_more(void) {
    while (G.phase == PH_RUN && G.opened < G.target && G.opening < OPEN_WINDOW) {
        client_t *c = &G.clients[G.opened++];
        c->opening = 1;
        G.opening++;
        start_job(c);
    }
}

static void opened(client_t *c) {
    if (!c->opening) return;
    c->opening = 0;
    G.opening--;
    ramp_more();
}

static void publish_one(void);

static void fanout_received(client_t *c) {
    (void)c;
    size_t n = c->mlen;
    const char *p = memmem(c->mbuf, n, "\"ts\":", 5);
    G.fan_recv++;
    if (!p) { G.fan_bad++; return; }
    uint64_t ts = strtoull(p + 5, NULL, 10), now = now_us();
    hist_add(now > ts ? now - ts : 0);
    /* max rate: a closed loop, at most --inflight messages published and not yet received */
    while (G.publishing && G.rate == 0 && G.pub_sent - G.fan_recv < G.inflight_max) publish_one();
    if (!G.publishing && G.pub_acked == G.pub_sent && G.fan_recv >= G.pub_sent) G.drain_t1 = uv_hrtime();
}

/* ---- the remote: POST /remote/message → 200, remembers the fid */

typedef struct rconn {
    uv_tcp_t h;
    size_t len;
    char buf[16384];
} rconn_t;

static void on_registered(void);

static void rconn_closed(uv_handle_t *h) { free(h->data); }

static void remote_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
    (void)hint;
    rconn_t *r = h->data;
    b->base = r->buf + r->len;
    b->len = sizeof r->buf - r->len;
}

static void remote_request(const char *body, size_t n) {
    size_t vl, il;
    const char *fid = find_str_key(body, n, "\"fid\"", &vl);
    const char *id = find_str_key(body, n, "\"id\"", &il);
    uint32_t ci;
    const char *p = id ? id + 1 : NULL;
    if (!fid || !id || vl >= sizeof G.clients[0].fid || *id != 'c' || parse_u32(&p, id + il, &ci) ||
        ci >= G.conns) {
        reason_add("remote: POST without a usable fid / id");
        return;
    }
    client_t *c = &G.clients[ci];
    if (c->fid[0]) return;
    memcpy(c->fid, fid, vl);
    c->fid[vl] = 0;
    G.registered++;
    on_registered();
}

static void remote_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    rconn_t *r = s->data;
    if (nread < 0) { uv_close((uv_handle_t *)s, rconn_closed); return; }
    r->len += (size_t)nread;
    for (;;) {
        char *e = memmem(r->buf, r->len, "\r\n\r\n", 4);
        if (!e) break;
        size_t head = (size_t)(e - r->buf) + 4, cl = 0;
        for (char *h = r->buf; h < e; h++)
            if ((*h == '\n') && strncasecmp(h + 1, "content-length:", 15) == 0) cl = strtoul(h + 16, NULL, 10);
        if (head + cl > sizeof r->buf) { uv_close((uv_handle_t *)s, rconn_closed); return; }
        if (r->len < head + cl) break;
        remote_request(r->buf + head, cl);
        static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                                 "{\"status\":0,\"msg\":\"success\",\"data\":null}";
        uv_buf_t ob = uv_buf_init((char *)OK, sizeof OK - 1);
        if (uv_try_write(s, &ob, 1) != (int)(sizeof OK - 1)) { uv_close((uv_handle_t *)s, rconn_closed); return; }
        memmove(r->buf, r->buf + head + cl, r->len - head - cl);
        r->len -= head + cl;
    }
    if (r->len == sizeof r->buf) uv_close((uv_handle_t *)s, rconn_closed);
}

static void remote_conn(uv_stream_t *srv, int status) {
    if (status < 0) return;
    rconn_t *r = calloc(1, sizeof *r);
    if (!r) return;
    uv_tcp_init(&G.loop, &r->h);
    r->h.data = r;
    if (uv_accept(srv, (uv_stream_t *)&r->h) != 0) { uv_close((uv_handle_t *)&r->h, rconn_closed); return; }
    uv_read_start((uv_stream_t *)&r->h, remote_alloc, remote_read);
}

/* ---- publisher */

static void pub_reply(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    (void)priv;
    redisReply *r = reply;
    G.pub_acked++;
    if (!r || r->type != REDIS_REPLY_INTEGER) G.pub_errors++;
    else if (r->integer < 1) G.pub_noreceiver++;
    if (G.publishing && G.rate == 0 &&
        (G.foreign_mode || !r || r->type != REDIS_REPLY_INTEGER || r->integer < 1))
        publish_one(); /* a message nobody will receive: keep the window full */
    if (!G.publishing && G.pub_acked == G.pub_sent && G.fan_recv >= G.pub_sent) G.drain_t1 = uv_hrtime();
}

static void publish_one(void) {
    client_t *c;
    unsigned tries = 0;
    do {
        c = &G.clients[G.rr++ % G.target];
    } while ((c->st != C_WS || !c->fid[0]) && ++tries < G.target);
    if (c->st != C_WS || !c->fid[0]) { G.publishing = 0; G.pub_failed = 1; return; }
    char chan[128], payload[160];
    int cl = snprintf(chan, sizeof chan, "%s%s", G.prefix, c->fid);
    int pl = snprintf(payload, sizeof payload,
                      G.foreign_mode ? "{\"id\":\"x%u-%u-0\",\"status\":\"" STATUS_SENT "\",\"seq\":%" PRIu64 ",\"ts\":%" PRIu64 "}" :
                      "{\"id\":\"c%u-%u-0\",\"status\":\"" STATUS_SENT "\",\"seq\":%" PRIu64 ",\"ts\":%" PRIu64 "}",
                      c->idx, c->seq, G.pub_sent, now_us());
    if (redisAsyncCommand(G.pub, pub_reply, NULL, "PUBLISH %b %b", chan, (size_t)cl, payload, (size_t)pl) != REDIS_OK) {
        G.publishing = 0;
        G.pub_failed = 1;
        return;
    }
    G.pub_sent++;
}

static void on_pub_tick(uv_timer_t *t) {
    (void)t;
    if (!G.publishing) return;
    uint64_t due = (uint64_t)(G.rate * (double)(uv_hrtime() - G.pub_t0) / 1e9);
    while (G.publishing && G.pub_sent < due && G.pub_sent - G.pub_acked < 100000) publish_one();
}

static void fan_end(void);

static void on_step_timer(uv_timer_t *t);

static void on_drain_check(uv_timer_t *t) {
    (void)t;
    int drained = G.pub_acked == G.pub_sent && G.fan_recv >= G.pub_sent;
    if (G.foreign_mode) /* nothing arrives: give the server a second to drop what Redis sent it */
        drained = G.pub_acked == G.pub_sent && uv_hrtime() - G.pub_t1 > 1000000000u;
    if (drained || uv_hrtime() - G.pub_t1 > (uint64_t)(G.drain * 1e9)) {
        if (!drained || !G.drain_t1) G.drain_t1 = uv_hrtime();
        G.cpu1 = G.server_pid > 0 ? read_cpu(G.server_pid) : -1;
        fan_end();
    }
}

static void on_pub_duration(uv_timer_t *t) {
    (void)t;
    G.publishing = 0;
    G.pub_t1 = uv_hrtime();
    uv_timer_stop(&G.t_pub);
    uv_timer_start(&G.t_pub, on_drain_check, 10, 10);
}

static void pub_connected(const redisAsyncContext *ac, int status) {
    (void)ac;
    if (status != REDIS_OK) {
        fprintf(stderr, "sh_loadgen: cannot connect to Redis at %s\n", G.redis_url);
        G.pub_failed = 1;
        fan_end();
    }
}

static void start_publishing(void) {
    G.pub = redisAsyncConnect(G.redis_host, G.redis_port);
    if (!G.pub || G.pub->err || redisLibuvAttach(G.pub, &G.loop) != REDIS_OK) {
        fprintf(stderr, "sh_loadgen: cannot connect to Redis at %s\n", G.redis_url);
        G.pub_failed = 1;
        fan_end();
        return;
    }
    redisAsyncSetConnectCallback(G.pub, pub_connected);
    G.publishing = 1;
    G.pub_t0 = uv_hrtime();
    G.cpu0 = G.server_pid > 0 ? read_cpu(G.server_pid) : -1;
    if (G.rate > 0) {
        uv_timer_start(&G.t_pub, on_pub_tick, 1, 1);
    } else {
        for (unsigned i = 0; i < G.inflight_max && G.publishing; i++) publish_one();
    }
    uv_timer_start(&G.t_duration, on_pub_duration, (uint64_t)(G.duration * 1000.0), 0);
}

static void on_hold_end(uv_timer_t *t) {
    (void)t;
    fan_end();
}

static void on_settled(uv_timer_t *t) {
    (void)t;
    long rss, hwm;
    read_mem(G.server_pid, &rss, &hwm);
    G.step_rss[G.step] = rss;
    if (!G.json) {
        double kib = rss >= 0 && G.rss0 >= 0 ? (double)(rss - G.rss0) / G.target : -1;
        printf("  idle %6u connections  server VmRSS %8ld kB  %.2f KiB/connection\n", G.target, rss, kib);
        fflush(stdout);
    }
    if (++G.step < G.nsteps) {
        G.target = G.steps[G.step];
        uv_timer_start(&G.t_step, on_step_timer, STEP_TIMEOUT_MS, 0);
        ramp_more();
    } else if (G.hold > 0) {
        uv_timer_start(&G.t_step, on_hold_end, (uint64_t)(G.hold * 1000.0), 0);
        G.hold = 0;
    } else {
        fan_end();
    }
}

static void on_registered(void) {
    if (G.registered != G.target || G.phase != PH_RUN) return;
    uv_timer_stop(&G.t_step);
    if (G.mode == M_FANOUT) start_publishing();
    else uv_timer_start(&G.t_step, on_settled, 1000, 0); /* let the server settle */
}

static void on_step_timer(uv_timer_t *t) {
    (void)t;
    fprintf(stderr, "sh_loadgen: only %u of %u connections ready after %d s (%u opened)\n", G.registered,
            G.target, STEP_TIMEOUT_MS / 1000, G.opened);
    reason_add("connections not ready in time");
    G.failed++;
    fan_end();
}

static void close_rconn(uv_handle_t *h, void *arg) {
    (void)arg;
    if (h->type != UV_TCP || uv_is_closing(h)) return;
    uv_close(h, h == (uv_handle_t *)&G.remote ? NULL : rconn_closed);
}

/* End of a fanout/idle run: close every connection (their jobs are not failures) */
static void fan_end(void) {
    if (G.phase == PH_STOP) return;
    G.phase = PH_STOP;
    G.publishing = 0;
    uv_timer_stop(&G.t_pub);
    uv_timer_stop(&G.t_step);
    uv_timer_stop(&G.t_duration);
    if (G.pub) { redisAsyncDisconnect(G.pub); G.pub = NULL; }
    uv_walk(&G.loop, close_rconn, NULL);
    uv_close((uv_handle_t *)&G.t_pub, NULL);
    uv_close((uv_handle_t *)&G.t_step, NULL);
    for (unsigned i = 0; i < G.conns; i++) {
        client_t *c = &G.clients[i];
        if (c->st == C_IDLE) { client_done(c); continue; }
        if (c->st == C_DONE) continue;
        if (c->st == C_WS || c->st == C_LINGER) c->recorded = 1;
        else c->abort_silent = 1;
        teardown(c);
    }
}

static void fan_report(void) {
    double pub_s = (double)(G.pub_t1 - G.pub_t0) / 1e9;
    double p50 = (double)percentile_us(0.50) / 1000.0, p99 = (double)percentile_us(0.99) / 1000.0;
    double mx = (double)G.lat_max_us / 1000.0;
    uint64_t lost = G.pub_sent > G.fan_recv ? G.pub_sent - G.fan_recv : 0;
    double cpu = cpu_us(G.cpu0, G.cpu1);
    uint64_t denom = G.foreign_mode ? G.pub_sent : G.fan_recv;
    double per = cpu >= 0 && denom ? cpu / (double)denom : -1;
    if (G.foreign_mode) lost = 0; /* nothing may arrive: "received" counts forwarded ones */
    if (G.foreign_mode) G.fan_recv += G.foreign;
    double wall = (double)(G.drain_t1 - G.pub_t0) / 1e9;
    if (G.mode == M_IDLE) {
        long last = G.nsteps ? G.step_rss[G.nsteps - 1] : -1;
        double kib = last >= 0 && G.rss0 >= 0 && G.step == G.nsteps
                         ? (double)(last - G.rss0) / G.steps[G.nsteps - 1] : -1;
        if (G.json) {
            printf("{\"mode\":\"idle\",\"url\":");
            json_str(stdout, G.url);
            printf(",\"rss_kb_start\":%ld,\"steps\":[", G.rss0);
            for (unsigned i = 0; i < G.step && i < G.nsteps; i++)
                printf("%s{\"connections\":%u,\"rss_kb\":%ld,\"kib_per_conn\":%.3f}", i ? "," : "", G.steps[i],
                       G.step_rss[i], (double)(G.step_rss[i] - G.rss0) / G.steps[i]);
            printf("],\"kib_per_conn\":%.3f,\"failed\":%" PRIu64 "}\n", kib, G.failed);
        } else {
            printf("sh_loadgen idle %s: %.2f KiB per connection at %u connections (VmRSS %ld kB -> %ld kB)\n",
                   G.url, kib, G.nsteps ? G.steps[G.nsteps - 1] : 0, G.rss0, last);
        }
    } else if (G.json) {
        printf("{\"mode\":\"fanout\",\"url\":");
        json_str(stdout, G.url);
        printf(",\"connections\":%u,\"rate\":%.0f,\"publish_s\":%.3f,\"published\":%" PRIu64
               ",\"received\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"no_receiver\":%" PRIu64 ",\"publish_errors\":%" PRIu64
               ",\"msgs_per_s\":%.1f,\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f}"
               ",\"server_cpu_us\":%.0f,\"server_cpu_us_per_msg\":%.3f,\"failed\":%" PRIu64 "}\n",
               G.target, G.rate, pub_s, G.pub_sent, G.fan_recv, lost, G.pub_noreceiver, G.pub_errors,
               wall > 0 ? (double)G.fan_recv / wall : 0, p50, p99, mx, cpu, per, G.failed);
    } else {
        printf("sh_loadgen fanout %s  connections=%u rate=%s\n", G.url, G.target, G.rate > 0 ? "fixed" : "max");
        printf("  published         %" PRIu64 " in %.3f s (%" PRIu64 " errors, %" PRIu64 " without receiver)\n",
               G.pub_sent, pub_s, G.pub_errors, G.pub_noreceiver);
        printf("  received          %" PRIu64 " (%.1f msgs/s)\n", G.fan_recv, wall > 0 ? (double)G.fan_recv / wall : 0);
        printf("  lost              %" PRIu64 "\n", lost);
        printf("  latency p50       %.3f ms\n  latency p99       %.3f ms\n  latency max       %.3f ms\n", p50, p99, mx);
        if (per >= 0) printf("  server CPU        %.0f µs, %.3f µs per delivered message\n", cpu, per);
    }
    if (G.nreasons) {
        fprintf(stderr, "sh_loadgen: failures:\n");
        for (int i = 0; i < G.nreasons; i++) fprintf(stderr, "  %8" PRIu64 "  %s\n", G.reasons[i].n, G.reasons[i].name);
    }
}

static int fan_main(void) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", G.remote_port, &a);
    uv_tcp_init(&G.loop, &G.remote);
    int r = uv_tcp_bind(&G.remote, (const struct sockaddr *)&a, 0);
    if (r == 0) r = uv_listen((uv_stream_t *)&G.remote, 1024, remote_conn);
    if (r != 0) {
        fprintf(stderr, "sh_loadgen: --remote-port %d: %s\n", G.remote_port, uv_strerror(r));
        return 1;
    }
    uv_timer_init(&G.loop, &G.t_pub);
    uv_timer_init(&G.loop, &G.t_step);
    G.t_start = uv_hrtime();
    G.phase = PH_RUN;
    G.active = G.conns;
    G.target = G.mode == M_IDLE ? G.steps[0] : G.conns;
    uv_timer_start(&G.t_step, on_step_timer, STEP_TIMEOUT_MS, 0);
    ramp_more();
    uv_run(&G.loop, UV_RUN_DEFAULT);
    G.t_end = uv_hrtime();
    finish_run();
    uv_run(&G.loop, UV_RUN_DEFAULT);
    uv_loop_close(&G.loop);
    fan_report();
    int ok = G.failed == 0 && !G.pub_failed;
    if (G.mode == M_FANOUT)
        ok = ok && G.pub_sent > 0 && G.pub_errors == 0 &&
             (G.foreign_mode ? G.fan_recv + G.foreign + G.unexpected == 0 : G.fan_recv == G.pub_sent);
    else ok = ok && G.step == G.nsteps;
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ */
/* run phases */

static int read_mem(long pid, long *rss, long *hwm) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    *rss = *hwm = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) *rss = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0) *hwm = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return (*rss >= 0 && *hwm >= 0) ? 0 : -1;
}

static void on_drain_timer(uv_timer_t *t) {
    (void)t;
    if (G.phase == PH_STOP) return;
    G.phase = PH_STOP;
    for (unsigned i = 0; i < G.conns; i++) {
        client_t *c = &G.clients[i];
        if (c->st == C_WS) {
            fail(c, "drain timeout");
            record_failure(c);
            teardown(c);
        } else if (c->st == C_LINGER) {
            teardown(c);
        }
    }
}

static void on_duration_timer(uv_timer_t *t) {
    (void)t;
    if (G.phase != PH_RUN) return;
    G.phase = PH_DRAIN;
    uv_timer_start(&G.t_drain, on_drain_timer, (uint64_t)(G.drain * 1000.0), 0);
    for (unsigned i = 0; i < G.conns; i++) {
        client_t *c = &G.clients[i];
        if (c->st == C_IDLE) {
            client_done(c);
        } else if (c->st == C_CONNECTING || c->st == C_HS_SEND || c->st == C_HS_RECV) {
            c->abort_silent = 1; /* never sent its batch: not a job */
            teardown(c);
        } else if (c->st == C_LINGER) {
            teardown(c); /* job already recorded; don't stretch the run waiting for FIN */
        }
    }
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    if (G.mode != M_SEEDFLOW) { fan_end(); return; }
    if (G.phase == PH_RUN) on_duration_timer(NULL);
    else on_drain_timer(NULL);
}

static void finish_run(void) {
    if (G.finished) return;
    G.finished = 1;
    G.t_end = uv_hrtime();
    if (G.server_pid > 0) read_mem(G.server_pid, &G.rss1, &G.hwm1);
    if (G.server_pid > 0 && G.mode == M_SEEDFLOW) G.cpu1 = read_cpu(G.server_pid);
    uv_close((uv_handle_t *)&G.t_duration, NULL);
    uv_close((uv_handle_t *)&G.t_drain, NULL);
    uv_close((uv_handle_t *)&G.sig_int, NULL);
    uv_close((uv_handle_t *)&G.sig_term, NULL);
    for (unsigned i = 0; i < G.conns; i++) uv_close((uv_handle_t *)&G.clients[i].timer, NULL);
}

/* ------------------------------------------------------------------ */
/* output */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static int cmp_reason(const void *a, const void *b) {
    const struct reason *x = a, *y = b;
    return x->n < y->n ? 1 : x->n > y->n ? -1 : strcmp(x->name, y->name);
}

static void report(void) {
    double elapsed = (double)(G.t_end - G.t_start) / 1e9;
    if (elapsed <= 0) elapsed = 1e-9;
    uint64_t lost = G.expected - G.unique;
    double jps = (double)G.completed / elapsed, ups = (double)G.frames_update / elapsed;
    double p50 = (double)percentile_us(0.50) / 1000.0;
    double p90 = (double)percentile_us(0.90) / 1000.0;
    double p99 = (double)percentile_us(0.99) / 1000.0;
    double mx = (double)G.lat_max_us / 1000.0;
    double mean = G.completed ? (double)G.lat_sum_us / (double)G.completed / 1000.0 : 0.0;
    qsort(G.reasons, (size_t)G.nreasons, sizeof G.reasons[0], cmp_reason);

    if (G.json) {
        FILE *f = stdout;
        fprintf(f, "{\"url\":");
        json_str(f, G.url);
        fprintf(f, ",\"connections\":%u,\"tasks\":%u,\"duration_s\":%.3f,\"elapsed_s\":%.3f",
                G.conns, G.tasks, G.duration, elapsed);
        fprintf(f, ",\"jobs_started\":%" PRIu64 ",\"jobs_completed\":%" PRIu64
                   ",\"jobs_failed\":%" PRIu64 ",\"jobs_aborted_unsent\":%" PRIu64,
                G.started, G.completed, G.failed, G.aborted);
        fprintf(f, ",\"jobs_per_s\":%.2f,\"updates_per_s\":%.2f", jps, ups);
        fprintf(f, ",\"updates_expected\":%" PRIu64 ",\"updates_received\":%" PRIu64
                   ",\"lost_updates\":%" PRIu64 ",\"duplicate_updates\":%" PRIu64
                   ",\"error_frames\":%" PRIu64 ",\"unexpected_frames\":%" PRIu64
                   ",\"server_close_lingered\":%" PRIu64,
                G.expected, G.unique, lost, G.dup, G.error_frames, G.unexpected + G.foreign,
                G.linger_timeouts);
        fprintf(f, ",\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"mean\":%.3f}",
                p50, p90, p99, mx, mean);
        fprintf(f, ",\"failures\":{");
        for (int i = 0; i < G.nreasons; i++) {
            if (i) fputc(',', f);
            json_str(f, G.reasons[i].name);
            fprintf(f, ":%" PRIu64, G.reasons[i].n);
        }
        if (G.reasons_other) fprintf(f, "%s\"other\":%" PRIu64, G.nreasons ? "," : "", G.reasons_other);
        fputc('}', f);
        if (G.server_pid > 0) {
            double cpu = cpu_us(G.cpu0, G.cpu1);
            fprintf(f, ",\"server_cpu_us\":%.0f,\"server_cpu_us_per_job\":%.2f", cpu,
                    cpu >= 0 && G.completed ? cpu / (double)G.completed : -1.0);
            fprintf(f, ",\"server\":{\"pid\":%ld", G.server_pid);
            const char *k[4] = { "vmrss_kb_start", "vmrss_kb_end", "vmhwm_kb_start", "vmhwm_kb_end" };
            long v[4] = { G.rss0, G.rss1, G.hwm0, G.hwm1 };
            for (int i = 0; i < 4; i++) {
                if (v[i] >= 0) fprintf(f, ",\"%s\":%ld", k[i], v[i]);
                else fprintf(f, ",\"%s\":null", k[i]);
            }
            fputc('}', f);
        }
        fprintf(f, "}\n");
        return;
    }

    printf("sh_loadgen %s  connections=%u tasks=%u duration=%.1fs\n", G.url, G.conns, G.tasks,
           G.duration);
    printf("  elapsed           %.3f s\n", elapsed);
    printf("  jobs completed    %" PRIu64 "\n", G.completed);
    printf("  jobs failed       %" PRIu64 "\n", G.failed);
    if (G.aborted)
        printf("  jobs not sent     %" PRIu64 " (connecting when the duration ended; not counted)\n",
               G.aborted);
    printf("  jobs/s            %.1f\n", jps);
    printf("  updates/s         %.1f\n", ups);
    printf("  latency p50       %.3f ms\n", p50);
    printf("  latency p90       %.3f ms\n", p90);
    printf("  latency p99       %.3f ms\n", p99);
    printf("  latency max       %.3f ms\n", mx);
    printf("  lost updates      %" PRIu64 " (expected %" PRIu64 ", received %" PRIu64 ")\n", lost,
           G.expected, G.unique);
    if (G.dup) printf("  duplicate updates %" PRIu64 "\n", G.dup);
    if (G.error_frames) printf("  error frames      %" PRIu64 "\n", G.error_frames);
    if (G.unexpected + G.foreign) printf("  unexpected frames %" PRIu64 "\n", G.unexpected + G.foreign);
    if (G.linger_timeouts)
        printf("  server kept TCP open > %d ms after the close handshake: %" PRIu64 " times\n",
               LINGER_MS, G.linger_timeouts);
    if (G.server_pid > 0) {
        char a[32], b[32], x[32], y[32];
        snprintf(a, sizeof a, G.rss0 >= 0 ? "%ld kB" : "n/a", G.rss0);
        snprintf(b, sizeof b, G.rss1 >= 0 ? "%ld kB" : "n/a", G.rss1);
        snprintf(x, sizeof x, G.hwm0 >= 0 ? "%ld kB" : "n/a", G.hwm0);
        snprintf(y, sizeof y, G.hwm1 >= 0 ? "%ld kB" : "n/a", G.hwm1);
        printf("  server %ld VmRSS  start %s, end %s\n", G.server_pid, a, b);
        double cpu = cpu_us(G.cpu0, G.cpu1);
        if (cpu >= 0 && G.completed)
            printf("  server CPU        %.0f µs, %.1f µs per job\n", cpu, cpu / (double)G.completed);
        printf("  server %ld VmHWM  start %s, end %s\n", G.server_pid, x, y);
    }
    if (G.nreasons || G.reasons_other) {
        printf("  failures:\n");
        for (int i = 0; i < G.nreasons; i++)
            printf("    %8" PRIu64 "  %s\n", G.reasons[i].n, G.reasons[i].name);
        if (G.reasons_other) printf("    %8" PRIu64 "  (other)\n", G.reasons_other);
    }
}

/* ------------------------------------------------------------------ */
/* arguments */

static const char USAGE[] =
    "usage: sh_loadgen [--url ws://HOST:PORT/PATH] [--connections C] [--tasks T]\n"
    "                  [--duration SECONDS] [--server-pid PID] [--max-jobs N]\n"
    "                  [--drain SECONDS] [--origin ORIGIN] [--json]\n"
    "                  [--mode seedflow|fanout|idle] [--remote-port PORT] [--redis redis://HOST:PORT]\n"
    "                  [--rate MSGS_PER_S|max] [--inflight N] [--steps N,N,...] [--channel-prefix P]\n"
    "seedflow: C clients repeat jobs (connect, T-task batch, T updates, close 1000).\n"
    "fanout: C connections each send a 1-task batch; the server POSTs it to this process\n"
    "  (--remote-port: point its remote_url at http://127.0.0.1:PORT/remote/message), which\n"
    "  learns each fid; then PUBLISH <prefix><fid> at --rate (or max: at most --inflight\n"
    "  published and not yet received, default 2000) for --duration; latency = arrival - ts in the payload; lost = published -\n"
    "  received. idle: same set-up, ramps through --steps (default 1000,2000,5000,10000) and\n"
    "  reports the server's VmRSS growth per connection (needs --server-pid); --hold S keeps\n"
    "  the last step open S more seconds. fanout --foreign: updates for no task of the job\n"
    "  (the server must drop them; any frame received is a failure); CPU per published message.\n"
    "defaults: --url ws://127.0.0.1:9999/ --connections 100 --tasks 10 --duration 10 --drain 10\n"
    "exit: 0 no failed job and no lost update, 1 otherwise (or nothing completed), 2 bad arguments\n";

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void bad(const char *fmt, ...) {
    va_list ap;
    fputs("sh_loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static uint64_t parse_uint(const char *name, const char *s, uint64_t lo, uint64_t hi) {
    char *e;
    errno = 0;
    if (!s || !*s || *s == '-') bad("%s: expected an integer, got '%s'", name, s ? s : "");
    unsigned long long v = strtoull(s, &e, 10);
    if (errno || *e || v < lo || v > hi)
        bad("%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got '%s'", name, lo, hi, s);
    return v;
}

static double parse_secs(const char *name, const char *s, double lo) {
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno || e == s || *e || !(v >= lo) || v > 1e6)
        bad("%s: expected seconds (%g..1e6), got '%s'", name, lo, s);
    return v;
}

static void parse_url(const char *url) {
    if (strncasecmp(url, "ws://", 5) != 0) bad("--url: only ws:// URLs are supported, got '%s'", url);
    const char *a = url + 5;
    const char *slash = strpbrk(a, "/?");
    size_t alen = slash ? (size_t)(slash - a) : strlen(a);
    if (alen == 0 || alen >= sizeof G.host_hdr) bad("--url: bad host in '%s'", url);
    memcpy(G.host_hdr, a, alen);
    G.host_hdr[alen] = 0;
    const char *path = slash ? slash : "/";
    if (strlen(path) + 2 >= sizeof G.path) bad("--url: path too long");
    if (*path == '?') snprintf(G.path, sizeof G.path, "/%s", path);
    else snprintf(G.path, sizeof G.path, "%s", path);
    for (const char *p = G.path; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) bad("--url: path must not contain spaces or controls");

    char host[256], port[16] = "80";
    const char *h = G.host_hdr, *colon;
    if (*h == '[') {
        const char *rb = strchr(h, ']');
        if (!rb || (size_t)(rb - h - 1) >= sizeof host) bad("--url: bad IPv6 host in '%s'", url);
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = 0;
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if (rb[1] && rb[1] != ':') bad("--url: bad host in '%s'", url);
    } else {
        colon = strrchr(h, ':');
        size_t hl = colon ? (size_t)(colon - h) : strlen(h);
        if (hl == 0 || hl >= sizeof host) bad("--url: bad host in '%s'", url);
        memcpy(host, h, hl);
        host[hl] = 0;
    }
    if (colon) {
        parse_uint("--url port", colon + 1, 1, 65535);
        snprintf(port, sizeof port, "%s", colon + 1);
    }
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r != 0 || !res) bad("--url: cannot resolve '%s': %s", host, gai_strerror(r));
    memcpy(&G.addr, res->ai_addr, res->ai_addrlen);
    G.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

static void parse_args(int argc, char **argv) {
    static const struct option opts[] = {
        { "url", required_argument, 0, 'u' },
        { "connections", required_argument, 0, 'c' },
        { "tasks", required_argument, 0, 't' },
        { "duration", required_argument, 0, 'd' },
        { "server-pid", required_argument, 0, 'p' },
        { "max-jobs", required_argument, 0, 'm' },
        { "drain", required_argument, 0, 'D' },
        { "origin", required_argument, 0, 'o' },
        { "json", no_argument, 0, 'j' },
        { "mode", required_argument, 0, 'M' },
        { "remote-port", required_argument, 0, 'R' },
        { "redis", required_argument, 0, 'r' },
        { "rate", required_argument, 0, 'a' },
        { "inflight", required_argument, 0, 'i' },
        { "steps", required_argument, 0, 's' },
        { "channel-prefix", required_argument, 0, 'P' },
        { "hold", required_argument, 0, 'H' },
        { "foreign", no_argument, 0, 'F' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    G.url = "ws://127.0.0.1:9999/";
    G.conns = 100;
    G.tasks = 10;
    G.duration = 10;
    G.drain = 10;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":u:c:t:d:p:m:D:o:jh", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': G.url = optarg; break;
        case 'c': G.conns = (unsigned)parse_uint("--connections", optarg, 1, 1000000); break;
        case 't': G.tasks = (unsigned)parse_uint("--tasks", optarg, 1, 1000000); break;
        case 'd': G.duration = parse_secs("--duration", optarg, 0.001); break;
        case 'p': G.server_pid = (long)parse_uint("--server-pid", optarg, 1, INT_MAX); break;
        case 'm': G.max_jobs = parse_uint("--max-jobs", optarg, 1, UINT64_MAX / 2); break;
        case 'D': G.drain = parse_secs("--drain", optarg, 0); break;
        case 'o': G.origin = optarg; break;
        case 'j': G.json = 1; break;
        case 'M':
            if (!strcmp(optarg, "seedflow")) G.mode = M_SEEDFLOW;
            else if (!strcmp(optarg, "fanout")) G.mode = M_FANOUT;
            else if (!strcmp(optarg, "idle")) G.mode = M_IDLE;
            else bad("--mode: seedflow, fanout or idle, got '%s'", optarg);
            break;
        case 'R': G.remote_port = (int)parse_uint("--remote-port", optarg, 1, 65535); break;
        case 'r': G.redis_url = optarg; break;
        case 'a': G.rate = strcmp(optarg, "max") ? (double)parse_uint("--rate", optarg, 1, 10000000) : 0; break;
        case 'i': G.inflight_max = (unsigned)parse_uint("--inflight", optarg, 1, 1000000); break;
        case 's': {
            G.nsteps = 0;
            char *save = NULL, *tmp = strdup(optarg);
            for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (G.nsteps == MAX_STEPS) bad("--steps: at most %d steps", MAX_STEPS);
                G.steps[G.nsteps++] = (unsigned)parse_uint("--steps", t, 1, 1000000);
            }
            free(tmp);
            break;
        }
        case 'P': G.prefix = optarg; break;
        case 'H': G.hold = parse_secs("--hold", optarg, 0); break;
        case 'F': G.foreign_mode = 1; break;
        case 'h': fputs(USAGE, stdout); exit(0);
        case ':': bad("option %s needs a value", argv[optind - 1]);
        default:
            if (optopt) bad("unknown option -%c (see --help)", optopt);
            bad("unknown option %s (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) bad("unexpected argument '%s' (see --help)", argv[optind]);
    if (G.mode != M_SEEDFLOW) {
        if (!G.remote_port) bad("--mode fanout/idle needs --remote-port");
        G.tasks = 1;
        if (!G.prefix) G.prefix = "ws:fid:";
        if (!G.inflight_max) G.inflight_max = 2000;
        if (G.mode == M_IDLE) {
            if (!G.nsteps) { G.steps[0] = 1000; G.steps[1] = 2000; G.steps[2] = 5000; G.steps[3] = 10000; G.nsteps = 4; }
            for (unsigned i = 1; i < G.nsteps; i++)
                if (G.steps[i] <= G.steps[i - 1]) bad("--steps must increase");
            G.conns = G.steps[G.nsteps - 1];
            if (G.server_pid <= 0) bad("--mode idle needs --server-pid");
        } else {
            if (!G.redis_url) G.redis_url = "redis://127.0.0.1:6379";
            if (sscanf(G.redis_url, "redis://%255[^:/]:%d", G.redis_host, &G.redis_port) != 2)
                bad("--redis: expected redis://HOST:PORT, got '%s'", G.redis_url);
        }
    }
    if (G.origin && strpbrk(G.origin, "\r\n")) bad("--origin must not contain CR/LF");
    parse_url(G.url);
    if (G.server_pid > 0 && read_mem(G.server_pid, &G.rss0, &G.hwm0) != 0)
        bad("--server-pid %ld: cannot read VmRSS/VmHWM from /proc/%ld/status", G.server_pid,
            G.server_pid);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)G.conns + 64)
        fprintf(stderr, "sh_loadgen: warning: open-file limit %llu is below connections + 64\n",
                (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    /* batch: '[' + T * ('{"id":"' c<u32>-<u32>-<u32> '","status":"进行中"}' ',') + ']' */
    G.batch_cap = 2 + (size_t)G.tasks * (7 + 1 + 3 * 10 + 2 + 12 + 9 + 2 + 1);
    G.clients = calloc(G.conns, sizeof *G.clients);
    G.batch = malloc(G.batch_cap);
    if (!G.clients || !G.batch) { fprintf(stderr, "sh_loadgen: out of memory\n"); return 1; }
    if (uv_loop_init(&G.loop) != 0) { fprintf(stderr, "sh_loadgen: uv_loop_init failed\n"); return 1; }

    uv_timer_init(&G.loop, &G.t_duration);
    uv_timer_init(&G.loop, &G.t_drain);
    uv_signal_init(&G.loop, &G.sig_int);
    uv_signal_init(&G.loop, &G.sig_term);
    uv_signal_start(&G.sig_int, on_signal, SIGINT);
    uv_signal_start(&G.sig_term, on_signal, SIGTERM);

    for (unsigned i = 0; i < G.conns; i++) {
        client_t *c = &G.clients[i];
        c->idx = i;
        c->fd = -1;
        c->st = C_IDLE;
        c->seen = malloc(G.tasks);
        if (!c->seen) { fprintf(stderr, "sh_loadgen: out of memory\n"); return 1; }
        uv_timer_init(&G.loop, &c->timer);
        c->timer.data = c;
    }

    if (G.mode != M_SEEDFLOW) {
        int rc = fan_main();
        for (unsigned i = 0; i < G.conns; i++) free(G.clients[i].seen);
        free(G.clients);
        free(G.batch);
        fflush(stdout);
        return rc;
    }

    G.t_start = uv_hrtime();
    if (G.server_pid > 0) G.cpu0 = read_cpu(G.server_pid);
    G.phase = PH_RUN;
    G.active = G.conns;
    uv_timer_start(&G.t_duration, on_duration_timer, (uint64_t)(G.duration * 1000.0), 0);
    for (unsigned i = 0; i < G.conns && !G.finished; i++)
        if (G.clients[i].st == C_IDLE) start_job(&G.clients[i]);

    uv_run(&G.loop, UV_RUN_DEFAULT);
    if (!G.finished) finish_run(), uv_run(&G.loop, UV_RUN_DEFAULT);
    uv_loop_close(&G.loop);

    report();

    for (unsigned i = 0; i < G.conns; i++) free(G.clients[i].seen);
    free(G.clients);
    free(G.batch);
    fflush(stdout);
    return (G.failed == 0 && G.expected == G.unique && G.completed > 0) ? 0 : 1;
}
