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
 * fuzz_http_client_tls (FZ_TLS): the same over HTTPS. The server speaks TLS (OpenSSL over memory
 * BIOs, on the same loop) with a certificate for 127.0.0.1 from a throwaway CA made at start-up;
 * the client trusts that CA (opts.ca_file) and verifies. Byte 1 of the input selects how the
 * server behaves at the TLS level (bits 0-1): 0 the answer is written through TLS one chunk (one
 * SSL_write) per loop iteration, then close_notify and FIN; 1 the same without close_notify; 2 the
 * last record cut in half, then FIN (no close_notify, mid-record); 3 no TLS at all: the answer's
 * raw bytes are written where the ServerHello should be (the call must fail). The answer starts at
 * byte 2.
 *
 * Invariants (a violation aborts, so libFuzzer keeps the input):
 * - every call's callback runs exactly once, never inside sh_http_request(); the client's close
 *   callback runs once, after them;
 * - an error is one of the documented codes and errstr is its sh_http_strerror(); a response has
 *   a status llhttp accepted, headers with non-empty names inside the call's memory, a body followed
 *   by a NUL and within max_response_bytes, and HEAD/204/304 responses have no body;
 * - the client's response memory never passes max_total_response_bytes, and is 0 once no call is
 *   in flight; nothing is left in the pool or the loop after the client closed.
 * - TLS: handshake failures are SH_HTTP_ETLS with errstr "tls: <reason>"; a server that never
 *   completed a handshake produced no response.
 *
 * Build and run: tests/fuzz/run.sh (see there). SH_FUZZ_VERBOSE=1 prints each call's outcome. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#ifdef FZ_TLS
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <unistd.h>
#define FZ_NAME "fuzz_http_client_tls"
#define FZ_IS_TLS 1
#else
#define FZ_NAME "fuzz_http_client"
#define FZ_IS_TLS 0
#endif

#include "http_client.h"
#include "log.h"

#define FUZZ_NAME FZ_NAME
#include "fuzz_check.h"

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
#ifdef FZ_TLS
    SSL *ssl;          /* over memory BIOs; NULL in raw mode */
    BIO *rbio, *wbio;
#endif
} fconn;

static uv_loop_t loop;
static uv_tcp_t listener;
static int port;
static int verbose;
static int server_conns; /* open */

static const uint8_t *answer; /* the input's answer, for the run in progress */
static size_t answer_len, chunk;

enum { TLS_CLOSE_NOTIFY, TLS_NO_CLOSE_NOTIFY, TLS_CUT_RECORD, TLS_RAW };
static int tls_mode;       /* FZ_TLS: one of the above */
static int tls_handshakes; /* completed by the server, for the run in progress */

#ifdef FZ_TLS
/* ---- a throwaway PKI: a CA (in ca_file, for the client) and a leaf for 127.0.0.1 -------------- */

static SSL_CTX *server_ctx;
static char ca_file[64];

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    CHECK(ext && X509_add_ext(x, ext, -1), "extension %s=%s", OBJ_nid2sn(nid), value);
    X509_EXTENSION_free(ext);
}

/* A certificate for key named cn, valid for a day, signed by issuer (self-signed CA when NULL); a
 * leaf has the subjectAltName san. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san)
{
    static long serial = 1;
    X509 *x = X509_new();
    CHECK(x, "X509_new");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer ? issuer : x;
    add_ext(x, signer, NID_basic_constraints, san ? "critical,CA:FALSE" : "critical,CA:TRUE");
    add_ext(x, signer, NID_key_usage,
            san ? "critical,digitalSignature" : "critical,keyCertSign,cRLSign");
    add_ext(x, signer, NID_subject_key_identifier, "hash");
    if (san) {
        add_ext(x, signer, NID_ext_key_usage, "serverAuth");
        add_ext(x, signer, NID_subject_alt_name, san);
    }
    CHECK(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()), "signing %s", cn);
    return x;
}

static void pki_remove(void)
{
    unlink(ca_file);
}

static void pki_init(void)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *leaf_key = EVP_EC_gen("P-256");
    CHECK(ca_key && leaf_key, "EC keys");
    X509 *ca = make_cert(ca_key, "fuzz test CA", NULL, NULL, NULL);
    X509 *leaf = make_cert(leaf_key, "127.0.0.1", ca, ca_key, "IP:127.0.0.1");
    snprintf(ca_file, sizeof ca_file, "/tmp/sh-fuzz-ca-XXXXXX");
    int fd = mkstemp(ca_file);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    CHECK(f && PEM_write_X509(f, ca) && fclose(f) == 0, "cannot write %s", ca_file);
    atexit(pki_remove);
    server_ctx = SSL_CTX_new(TLS_server_method());
    CHECK(server_ctx && SSL_CTX_use_certificate(server_ctx, leaf) == 1 &&
              SSL_CTX_use_PrivateKey(server_ctx, leaf_key) == 1,
          "TLS server set-up");
    X509_free(ca);
    X509_free(leaf); /* the context holds references of its own */
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(leaf_key);
}
#endif

static void fconn_closed(uv_handle_t *h)
{
    fconn *fc = h->data;
    if (--fc->handles == 0) {
        server_conns--;
#ifdef FZ_TLS
        SSL_free(fc->ssl);
#endif
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

/* Writes n bytes as they are: the input's (which outlives the connection) or, with a copy (TLS
 * ciphertext), fresh ones. Returns -1 (and closes fc) on failure. */
static int fwrite_raw(fconn *fc, const char *data, size_t n, int copy)
{
    uv_write_t *w = malloc(sizeof *w + (copy ? n : 0));
    if (w && copy)
        data = memcpy(w + 1, data, n);
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    if (!w || uv_write(w, (uv_stream_t *)&fc->tcp, &b, 1, fwrite_cb) < 0) {
        free(w);
        fconn_close(fc);
        return -1;
    }
    return 0;
}

#ifdef FZ_TLS
/* Writes out the ciphertext OpenSSL produced; only the first half of it when cut. */
static int fflush_tls(fconn *fc, int cut)
{
    char buf[65536];
    int got;
    while ((got = BIO_read(fc->wbio, buf, (int)sizeof buf)) > 0) {
        size_t n = (size_t)got;
        if (cut && BIO_ctrl_pending(fc->wbio) == 0)
            n /= 2;
        if (n && fwrite_raw(fc, buf, n, 1) < 0)
            return -1;
    }
    return 0;
}
#endif

/* One chunk of the answer per iteration; then FIN. */
static void fidle_cb(uv_idle_t *h)
{
    fconn *fc = h->data;
    if (fc->closing)
        return;
    size_t n = answer_len - fc->sent < chunk ? answer_len - fc->sent : chunk;
    int last = fc->sent + n == answer_len;
#ifdef FZ_TLS
    if (fc->ssl) {
        if (n > 0 && SSL_write(fc->ssl, answer + fc->sent, (int)n) != (int)n) {
            ERR_clear_error(); /* the client's alert ended the session: nothing more to say */
            fconn_close(fc);
            return;
        }
        if (last && tls_mode == TLS_CLOSE_NOTIFY)
            SSL_shutdown(fc->ssl);
        if (fflush_tls(fc, last && tls_mode == TLS_CUT_RECORD) < 0)
            return;
    } else
#endif
    if (n > 0 && fwrite_raw(fc, (const char *)answer + fc->sent, n, 0) < 0)
        return;
    fc->sent += n;
    if (last) {
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
#ifdef FZ_TLS
    if (fc->ssl || fc->answering) { /* ciphertext (decrypted into head), or ignored */
#else
    if (fc->answering) {
#endif
        buf->base = sink;
        buf->len = sizeof sink;
    } else {
        buf->base = fc->head + fc->headlen;
        buf->len = sizeof fc->head - 1 - fc->headlen;
    }
}

#ifdef FZ_TLS
/* Ciphertext in: the handshake, then plaintext into head (or nowhere once answering). Returns the
 * plaintext bytes read, or -1 when fc is closing. */
static ssize_t ftls_input(fconn *fc, const char *data, size_t n)
{
    CHECK(BIO_write(fc->rbio, data, (int)n) == (int)n, "BIO_write");
    if (!SSL_is_init_finished(fc->ssl)) {
        int r = SSL_do_handshake(fc->ssl);
        if (fflush_tls(fc, 0) < 0)
            return -1;
        if (r != 1) {
            if (SSL_get_error(fc->ssl, r) != SSL_ERROR_WANT_READ) {
                ERR_clear_error(); /* the client gave up (e.g. its alert) */
                fconn_close(fc);
                return -1;
            }
            return 0;
        }
        tls_handshakes++;
    }
    ssize_t got = 0;
    for (;;) {
        char sink[16384];
        char *to = fc->answering ? sink : fc->head + fc->headlen + (size_t)got;
        size_t room = fc->answering ? sizeof sink : sizeof fc->head - 1 - fc->headlen - (size_t)got;
        if (room == 0)
            break;
        int r = SSL_read(fc->ssl, to, (int)room);
        if (r <= 0)
            break;
        if (!fc->answering)
            got += r;
    }
    ERR_clear_error();
    return fflush_tls(fc, 0) < 0 ? -1 : got; /* session tickets, alerts */
}
#endif

static void fread_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    fconn *fc = s->data;
    if (nread < 0) {
        fconn_close(fc); /* the client closed */
        return;
    }
#ifdef FZ_TLS
    if (fc->ssl) {
        nread = ftls_input(fc, buf->base, (size_t)nread);
        if (nread < 0)
            return;
    } else if (!fc->answering && nread > 0) { /* raw: the ClientHello, answered with the input */
        fc->answering = 1;
        uv_idle_start(&fc->idle, fidle_cb);
        return;
    }
#else
    (void)buf;
#endif
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
#ifdef FZ_TLS
    if (tls_mode != TLS_RAW) {
        fc->ssl = SSL_new(server_ctx);
        fc->rbio = BIO_new(BIO_s_mem());
        fc->wbio = BIO_new(BIO_s_mem());
        CHECK(fc->ssl && fc->rbio && fc->wbio, "SSL_new");
        BIO_set_mem_eof_return(fc->rbio, -1);
        SSL_set_bio(fc->ssl, fc->rbio, fc->wbio);
        SSL_set_accept_state(fc->ssl);
    }
#endif
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
#ifdef FZ_TLS
    pki_init();
#endif
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
#ifdef FZ_TLS
    snprintf(url, sizeof url, "https://127.0.0.1:%d/f", port);
#else
    snprintf(url, sizeof url, "http://127.0.0.1:%d/f", port);
#endif
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
        if (FZ_IS_TLS && err == SH_HTTP_ETLS) {
            CHECK(strncmp(errstr, "tls: ", 5) == 0 && errstr[5], "errstr %s for ETLS", errstr);
        } else {
            CHECK(err == SH_HTTP_ECLOSED || err == SH_HTTP_EBADRESPONSE ||
                      err == SH_HTTP_ETOOLARGE || err == SH_HTTP_ETIMEDOUT || err == SH_HTTP_ENOMEM,
                  "unexpected error %d %s", err, errstr);
            CHECK(strcmp(errstr, sh_http_strerror(err)) == 0, "errstr %s for %d", errstr, err);
        }
    } else {
        CHECK(res && !errstr, "response without res or with errstr");
        CHECK(tls_mode != TLS_RAW && (!FZ_IS_TLS || tls_handshakes > 0),
              "a response without a TLS handshake");
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
    tls_mode = 0;
    tls_handshakes = 0;
#ifdef FZ_TLS
    if (size < 2)
        return 0;
    tls_mode = data[1] & 3;
    answer = data + 2;
    answer_len = size - 2;
#endif
    chunk = (size_t)1 << (flags >> 4);
    is_head = flags & 1;
    second = (flags >> 2) & 1;
    from_cb = (flags >> 3) & 1;
    memset(&copts, 0, sizeof copts);
    copts.max_conns_per_host = 2;
#ifdef FZ_TLS
    copts.ca_file = ca_file;
#endif
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
