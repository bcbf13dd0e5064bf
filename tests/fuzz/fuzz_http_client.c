/* fuzz_http_client.c — libFuzzer target for the outbound client's response handling:
 * src/http_client.c (over llhttp) against a real loopback server on a real libuv loop.
 *
 * Input: byte 0 holds flags — bit 0: the calls are HEAD (else GET); bit 1: small limits
 * (max_response_bytes 4096, max_total_response_bytes 6144, else the defaults); bit 2: a second
 * call once the first one's callback ran (a reused or a fresh socket); bit 3: the second call is
 * started from inside the first one's callback; bits 4-7: the chunk size, as a power of two
 * (1 .. 32768 bytes). The rest is what the server answers on every connection, once it has read
 * the request head: written one chunk per loop iteration (so the client sees that many reads), then
 * a FIN; the server closes when the client does.
 *
 * Invariants (a violation aborts, so libFuzzer keeps the input):
 * - every call's callback runs exactly once, never inside sh_http_request(); the client's close
 *   callback runs once, after them;
 * - an error is one of the documented codes and errstr is its sh_http_strerror(); a response has
 *   a status llhttp accepted, headers with non-empty names inside the call's memory, a body followed
 *   by a NUL and within max_response_bytes, and HEAD/204/304 responses have no body;
 * - the client's response memory never passes max_total_response_bytes, and is 0 once no call is
 *   in flight; nothing is left in the pool or the loop after the client closed.
 *
 * Build and run: tests/fuzz/run.sh (see there). SH_FUZZ_VERBOSE=1 prints each call's outcome. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "http_client.h"
#include "log.h"

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_http_client: %s:%d: check failed: %s: ", __FILE__,       \
                    __LINE__, #cond);                                                      \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* ---- the server: one loopback listener for the whole run ------------------------------------ */

typedef struct fconn {
    uv_tcp_t tcp;
    uv_idle_t idle;    /* writes one chunk per loop iteration */
    uv_shutdown_t shut;
    char head[4096];   /* the request head, until its blank line */
    size_t headlen;
    int answering;     /* the head is complete */
    size_t sent;       /* bytes of the answer written */
    int handles;       /* open handles */
    int closing;
} fconn;

static uv_loop_t loop;
static uv_tcp_t listener;
static int port;
static int verbose;
static int server_conns; /* open */

static const uint8_t *answer; /* the input's answer, for the run in progress */
static size_t answer_len, chunk;

static void fconn_closed(uv_handle_t *h)
{
    fconn *fc = h->data;
    if (--fc->handles == 0) {
        server_conns--;
        free(fc);
    }
}

static void fconn_close(fconn *fc)
{
    if (fc->closing)
        return;
    fc->closing = 1;
    uv_close((uv_handle_t *)&fc->tcp, fconn_closed);
    uv_close((uv_handle_t *)&fc->idle, fconn_closed);
}

static void fwrite_cb(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* One chunk of the answer per iteration; then FIN. */
static void fidle_cb(uv_idle_t *h)
{
    fconn *fc = h->data;
    if (fc->closing)
        return;
    size_t n = answer_len - fc->sent < chunk ? answer_len - fc->sent : chunk;
    if (n > 0) {
        uv_write_t *w = malloc(sizeof *w);
        uv_buf_t b = uv_buf_init((char *)answer + fc->sent, (unsigned)n);
        if (!w || uv_write(w, (uv_stream_t *)&fc->tcp, &b, 1, fwrite_cb) < 0) {
            free(w);
            fconn_close(fc);
            return;
        }
        fc->sent += n;
    }
    if (fc->sent == answer_len) {
        uv_idle_stop(&fc->idle);
        if (uv_shutdown(&fc->shut, (uv_stream_t *)&fc->tcp, shutdown_cb) < 0)
            fconn_close(fc);
    }
}

static void falloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char sink[65536];
    fconn *fc = h->data;
    (void)suggested;
    if (fc->answering) {
        buf->base = sink;
        buf->len = sizeof sink;
    } else {
        buf->base = fc->head + fc->headlen;
        buf->len = sizeof fc->head - 1 - fc->headlen;
    }
}

static void fread_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    fconn *fc = s->data;
    (void)buf;
    if (nread < 0) {
        fconn_close(fc); /* the client closed */
        return;
    }
    if (fc->answering || nread == 0)
        return; /* a second request on the socket: the answer is already on its way */
    fc->headlen += (size_t)nread;
    fc->head[fc->headlen] = '\0';
    if (strstr(fc->head, "\r\n\r\n") || fc->headlen == sizeof fc->head - 1) {
        fc->answering = 1;
        uv_idle_start(&fc->idle, fidle_cb);
    }
}

static void faccept_cb(uv_stream_t *l, int status)
{
    if (status < 0)
        return;
    fconn *fc = calloc(1, sizeof *fc);
    CHECK(fc, "out of memory");
    uv_tcp_init(&loop, &fc->tcp);
    uv_idle_init(&loop, &fc->idle);
    fc->tcp.data = fc->idle.data = fc;
    fc->handles = 2;
    server_conns++;
    if (uv_accept(l, (uv_stream_t *)&fc->tcp) < 0 ||
        uv_read_start((uv_stream_t *)&fc->tcp, falloc_cb, fread_cb) < 0)
        fconn_close(fc);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN); /* as statushost does */
    verbose = getenv("SH_FUZZ_VERBOSE") != NULL;
    sh_log_set_level(verbose ? SH_LOG_DEBUG : SH_LOG_ERROR);
    CHECK(uv_loop_init(&loop) == 0, "loop");
    struct sockaddr_in sin;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    uv_tcp_init(&loop, &listener);
    CHECK(uv_tcp_bind(&listener, (struct sockaddr *)&sin, 0) == 0, "bind");
    CHECK(uv_listen((uv_stream_t *)&listener, 64, faccept_cb) == 0, "listen");
    CHECK(uv_tcp_getsockname(&listener, (struct sockaddr *)&ss, &len) == 0, "getsockname");
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- the client side ------------------------------------------------------------------------ */

typedef struct {
    int called;
    int err;
} outcome;

static sh_http_client *client;
static sh_http_client_opts copts;
static int in_request, is_head, second, from_cb, closed_done;
static outcome out1, out2;

static void on_done(void *arg, int err, const char *errstr, const sh_http_response *res);

static void start(outcome *o)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/f", port);
    sh_http_opts ho = {.method = is_head ? "HEAD" : "GET", .url = url, .timeout_ms = 10000};
    in_request = 1;
    int rc = sh_http_request(client, &ho, on_done, o, NULL);
    in_request = 0;
    CHECK(rc == 0, "sh_http_request: %d", rc);
}

static void check_response(const sh_http_response *res)
{
    CHECK(res->status >= 0 && res->status <= 999, "status %d", res->status);
    CHECK(res->body && res->body[res->body_len] == '\0', "body not NUL-terminated");
    CHECK(res->body_len <= copts.max_response_bytes, "body %zu", res->body_len);
    if (is_head || res->status == 204 || res->status == 304)
        CHECK(res->body_len == 0, "a body (%zu) on HEAD/204/304", res->body_len);
    CHECK(res->nheaders == 0 || res->headers, "headers");
    size_t bytes = 0;
    for (size_t i = 0; i < res->nheaders; i++) {
        const sh_http_hdr *h = &res->headers[i];
        CHECK(h->name && h->name_len > 0 && h->value, "header %zu: [%.*s] [%.*s]", i, (int)h->name_len, h->name ? h->name : "", (int)h->value_len, h->value ? h->value : "");
        volatile char touch = h->name[h->name_len - 1]; /* ASan: inside the call's memory */
        if (h->value_len)
            touch = h->value[h->value_len - 1];
        (void)touch;
        bytes += h->name_len + h->value_len;
    }
    CHECK(bytes + res->body_len <= copts.max_response_bytes, "response %zu bytes",
          bytes + res->body_len);
}

static void on_done(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    outcome *o = arg;
    CHECK(!in_request, "callback inside sh_http_request");
    CHECK(o->called == 0, "callback twice");
    o->called = 1;
    o->err = err;
    sh_http_client_stats st;
    sh_http_client_stats_get(client, &st);
    CHECK(st.response_bytes <= copts.max_total_response_bytes, "response memory %zu",
          st.response_bytes);
    if (verbose)
        fprintf(stderr, "call %d: %d %s status %d body %zu\n", o == &out1 ? 1 : 2, err,
                errstr ? errstr : "", res ? res->status : 0, res ? res->body_len : 0);
    if (err) {
        CHECK(res == NULL && errstr, "error %d without errstr or with a response", err);
        CHECK(err == SH_HTTP_ECLOSED || err == SH_HTTP_EBADRESPONSE || err == SH_HTTP_ETOOLARGE ||
                  err == SH_HTTP_ETIMEDOUT || err == SH_HTTP_ENOMEM,
              "unexpected error %d %s", err, errstr);
        CHECK(strcmp(errstr, sh_http_strerror(err)) == 0, "errstr %s for %d", errstr, err);
    } else {
        CHECK(res && !errstr, "response without res or with errstr");
        check_response(res);
    }
    if (o == &out1 && second && from_cb)
        start(&out2);
}

static void closed_cb(void *arg)
{
    (void)arg;
    CHECK(out1.called && (!second || out2.called), "close before the callbacks");
    closed_done++;
}

/* Runs the loop until cond; a stuck input is a finding (the timeouts would have fired). */
#define RUN_UNTIL(cond)                                                                    \
    do {                                                                                   \
        while (!(cond))                                                                    \
            CHECK(uv_run(&loop, UV_RUN_ONCE) != 0 || (cond), "loop ran out: %s", #cond);   \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    answer = data + 1;
    answer_len = size - 1;
    chunk = (size_t)1 << (flags >> 4);
    is_head = flags & 1;
    second = (flags >> 2) & 1;
    from_cb = (flags >> 3) & 1;
    memset(&copts, 0, sizeof copts);
    copts.max_conns_per_host = 2;
    if (flags & 2) {
        copts.max_response_bytes = 4096;
        copts.max_total_response_bytes = 6144;
    }
    client = sh_http_client_new(&loop, &copts);
    CHECK(client, "sh_http_client_new");
    if (!copts.max_response_bytes) { /* the defaults, for the checks */
        copts.max_response_bytes = (size_t)16 << 20;
        copts.max_total_response_bytes = (size_t)64 << 20;
    }
    memset(&out1, 0, sizeof out1);
    memset(&out2, 0, sizeof out2);
    closed_done = 0;
    start(&out1);
    RUN_UNTIL(out1.called);
    if (second && !from_cb)
        start(&out2);
    RUN_UNTIL(!second || out2.called);
    sh_http_client_stats st;
    sh_http_client_stats_get(client, &st);
    CHECK(st.inflight == 0 && st.queued == 0 && st.response_bytes == 0,
          "after the calls: inflight %zu queued %zu response_bytes %zu", st.inflight, st.queued,
          st.response_bytes);
    sh_http_client_close(client, closed_cb, NULL);
    RUN_UNTIL(closed_done == 1 && server_conns == 0);
    client = NULL;
    return 0;
}
