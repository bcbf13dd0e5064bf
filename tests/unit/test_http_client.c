/* test_http_client.c — sh_http_client against a small scripted HTTP server in the same loop.
 *
 * The server (uv_tcp on 127.0.0.1, ephemeral port) reads one request at a time and answers by
 * path: /hello, /chunked, /eof, /silent, /garbage, /emptyname, /midbody, /echo, /drop2, /big, /stall, /204,
 * /304, /100, /slow, /extra, /bye, /midrecord. It counts accepted, current, peak and closed
 * connections. Tests run the loop until the callbacks they await have been counted; a watchdog
 * aborts a stuck test.
 *
 * The same server speaks TLS when started with a certificate: OpenSSL over memory BIOs, in the same
 * loop. The certificates come from a throwaway PKI made at start-up with the X509 API (two CAs, a
 * good, a wrong-name, an expired and an unknown-CA leaf); the first CA is written to a temporary
 * PEM file for the client's ca_file.
 *
 *   gcc -g -Wall -Wextra -fsanitize=address,undefined -Isrc -I/usr/share/include/llhttp \
 *       src/http_client.c src/log.c /usr/share/llhttp/\*.c tests/unit/test_http_client.c -luv \
 *       -lssl -lcrypto -o /tmp/test_http_client && /tmp/test_http_client
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <malloc.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "http_client.h"
#include "log.h"

static int failures;
static const char *current_test;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, current_test, #cond); \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

/* ---- the scripted server ------------------------------------------------------------------ */

typedef struct srv srv;

typedef struct sconn {
    uv_tcp_t tcp;        /* accepted socket */
    uv_timer_t delay;    /* for /slow */
    srv *s;              /* owner */
    char in[65536];      /* bytes not yet consumed (plaintext) */
    size_t inlen;
    SSL *ssl;            /* TLS mode: over memory BIOs */
    BIO *rbio, *wbio;
    char raw[65536];     /* TLS mode: ciphertext of one read */
    int nreq;            /* requests seen on this connection */
    int closing;         /* uv_close called */
    int handles;         /* open handles */
} sconn;

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int accepted;        /* connections accepted */
    int current;         /* open now */
    int peak;            /* most open at once */
    int closed;          /* closed (by either side) */
    int requests;        /* complete requests read */
    char last[8192];     /* last request, NUL-terminated */
    int listener_closed;
    SSL_CTX *tls;        /* TLS mode */
    int handshakes;      /* TLS handshakes completed */
    int resumed;         /* of which resumed a session */
    int tls_failed;      /* handshakes that failed */
    char sni[256];       /* server name of the last handshake, "" without SNI */
};

typedef struct {
    uv_write_t req;
    char *data;
    sconn *sc;
    int close_after;     /* close the connection once written */
} swrite;

static void sconn_handle_closed(uv_handle_t *h)
{
    sconn *sc = h->data;
    if (--sc->handles == 0) {
        sc->s->current--;
        sc->s->closed++;
        SSL_free(sc->ssl);
        free(sc);
    }
}

static void sconn_close(sconn *sc)
{
    if (sc->closing)
        return;
    sc->closing = 1;
    uv_close((uv_handle_t *)&sc->tcp, sconn_handle_closed);
    uv_close((uv_handle_t *)&sc->delay, sconn_handle_closed);
}

static void swrite_cb(uv_write_t *req, int status)
{
    swrite *w = (swrite *)req;
    (void)status;
    if (w->close_after)
        sconn_close(w->sc);
    free(w->data);
    free(w);
}

/* Writes n bytes to the socket as they are; closes the connection after them when close_after. */
static void sraw_write(sconn *sc, const char *data, size_t n, int close_after)
{
    if (sc->closing)
        return;
    swrite *w = calloc(1, sizeof *w);
    w->data = malloc(n ? n : 1);
    memcpy(w->data, data, n);
    w->sc = sc;
    w->close_after = close_after;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&sc->tcp, &b, 1, swrite_cb) < 0) {
        free(w->data);
        free(w);
        sconn_close(sc);
    }
}

/* TLS mode: writes out what OpenSSL produced; only the first `keep` bytes of it when keep > 0 (a
 * record cut short). */
static void sflush(sconn *sc, size_t keep, int close_after)
{
    size_t n = BIO_ctrl_pending(sc->wbio);
    char *buf = malloc(n ? n : 1);
    int got = n ? BIO_read(sc->wbio, buf, (int)n) : 0;
    if (got < 0)
        got = 0;
    if (keep && keep < (size_t)got)
        got = (int)keep;
    if (got || close_after)
        sraw_write(sc, buf, (size_t)got, close_after);
    free(buf);
}

/* Writes n bytes of data (encrypted in TLS mode); closes the connection after them when
 * close_after (after a close_notify in TLS mode). */
static void swrite_n(sconn *sc, const char *data, size_t n, int close_after)
{
    if (!sc->ssl) {
        sraw_write(sc, data, n, close_after);
        return;
    }
    if (sc->closing)
        return;
    if (n)
        SSL_write(sc->ssl, data, (int)n);
    if (close_after)
        SSL_shutdown(sc->ssl);
    sflush(sc, 0, close_after);
}

static void swrite_s(sconn *sc, const char *s, int close_after)
{
    swrite_n(sc, s, strlen(s), close_after);
}

#define STALL_PART 700000

#define HELLO "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: a\r\n\r\nhello"

static void slow_cb(uv_timer_t *t)
{
    swrite_s(t->data, HELLO, 0);
}

#define MANY_HEADERS 40 /* headers of /many's answer, besides its Content-Length */

/* Answers one complete request (head + body of len bytes) by its path. */
#define BODY30 "abcdefghijklmnopqrstuvwxyz0123"
#define BODY300 BODY30 BODY30 BODY30 BODY30 BODY30 BODY30 BODY30 BODY30 BODY30 BODY30
static void srv_answer(sconn *sc, const char *req, size_t len)
{
    srv *s = sc->s;
    char method[16] = "", path[256] = "";
    sscanf(req, "%15s %255s", method, path);
    sc->nreq++;
    s->requests++;
    size_t n = len < sizeof s->last - 1 ? len : sizeof s->last - 1;
    memcpy(s->last, req, n);
    s->last[n] = '\0';
    int head = strcmp(method, "HEAD") == 0;
    if (strncmp(path, "/hello", 6) == 0) {
        swrite_s(sc, head ? "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" : HELLO, 0);
    } else if (strcmp(path, "/bye") == 0) { /* advertises keep-alive, then closes anyway */
        swrite_s(sc, HELLO, 1);
    } else if (strcmp(path, "/chunked") == 0) {
        swrite_s(sc, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 0);
        swrite_s(sc, "lo\r\n6\r\n world\r\n", 0);
        swrite_s(sc, "0\r\nX-Trailer: t\r\n\r\n", 0);
    } else if (strcmp(path, "/eof") == 0) {
        swrite_s(sc, "HTTP/1.0 200 OK\r\nX-Test: b\r\n\r\nuntil close", 1);
    } else if (strcmp(path, "/silent") == 0) {
        /* never answers */
    } else if (strcmp(path, "/emptyname") == 0) { /* llhttp takes the lone CR as the line's end */
        swrite_s(sc, "HTTP/1.1 200 OK\rh: 5\r\nX-Test: a\r\n\r\nhello", 0);
    } else if (strcmp(path, "/garbage") == 0) {
        swrite_s(sc, "SSH-2.0-OpenSSH_9.2\r\nnonsense\r\n\r\n", 0);
    } else if (strcmp(path, "/midbody") == 0) {
        swrite_s(sc, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", 1);
    } else if (strncmp(path, "/echo", 5) == 0) {
        char head_buf[128];
        snprintf(head_buf, sizeof head_buf, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
        swrite_s(sc, head_buf, 0);
        swrite_n(sc, req, len, 0);
    } else if (strcmp(path, "/many") == 0) { /* more headers than the delivery's stack array */
        char buf[2048];
        int h = snprintf(buf, sizeof buf, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        for (int i = 0; i < MANY_HEADERS; i++)
            h += snprintf(buf + h, sizeof buf - (size_t)h, "X-H%d: v%d\r\n", i, i);
        h += snprintf(buf + h, sizeof buf - (size_t)h, "\r\nok");
        swrite_n(sc, buf, (size_t)h, 0);
    } else if (strncmp(path, "/f-", 3) == 0) { /* canned answers for test_fast_path */
        static const struct {
            const char *path, *answer;
        } canned[] = {
            {"/f-fast", "HTTP/1.1 201 Created\r\nX-Test: a\r\nContent-Type: text/plain\r\n"
                        "Connection: Keep-Alive\r\nContent-Length: 5\r\n\r\nhello"},
            {"/f-close", "HTTP/1.1 200 OK\r\nX-Test: c\r\nConnection: close\r\n"
                         "Content-Length: 5\r\n\r\nhello"},
            {"/f-10", "HTTP/1.0 200 OK\r\nX-Test: d\r\nContent-Length: 5\r\n\r\nhello"},
            {"/f-twolen", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
                          "hello"},
            {"/f-te", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                      "\r\n5\r\nhello\r\n0\r\n\r\n"},
            {"/f-space", "HTTP/1.1 200 OK\r\nX-Test:  a b \t\r\nContent-Length: 5\r\n\r\nhello"},
            {"/f-empty", "HTTP/1.1 200 OK\r\nX-Test:\r\nContent-Length: 5\r\n\r\nhello"},
            {"/f-obs", "HTTP/1.1 200 OK\r\nX-Test: \xc3\xa9t\xc3\xa9\r\nContent-Length: 5\r\n\r\n"
                       "hello"},
            {"/f-nolen", "HTTP/1.1 200 OK\r\nX-Test: e\r\nContent-Length: 0\r\n\r\n"},
            {"/f-cl", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"},
            {"/f-lf", "HTTP/1.1 200 OK\nX-Test: f\nContent-Length: 5\n\nhello"},
            {"/f-12", "HTTP/1.1 200 OK\r\nX-A1: 0123456789012345678901234567890123456789\r\n"
                      "X-A2: 0123456789012345678901234567890123456789\r\n"
                      "X-A3: 0123456789012345678901234567890123456789\r\n"
                      "X-A4: 0123456789012345678901234567890123456789\r\n"
                      "X-A5: 0123456789012345678901234567890123456789\r\n"
                      "X-A6: 0123456789012345678901234567890123456789\r\n"
                      "X-A7: 0123456789012345678901234567890123456789\r\n"
                      "X-A8: 0123456789012345678901234567890123456789\r\n"
                      "X-A9: 0123456789012345678901234567890123456789\r\n"
                      "X-A10: 0123456789012345678901234567890123456789\r\n"
                      "X-A11: 0123456789012345678901234567890123456789\r\n"
                      "X-Test: twelve\r\nContent-Length: 5\r\n\r\nhello"},
            /* names and values fit the call's room (188 bytes), the lines do not (214) */
            {"/f-room", "HTTP/1.1 200 OK\r\nX-Test: b\r\n"
                        "X-Pa1: 012345678901234567890123456789012345\r\n"
                        "X-Pa2: 012345678901234567890123456789012345\r\n"
                        "X-Pa3: 012345678901234567890123456789012345\r\n"
                        "X-Pa4: 012345678901234567890123456789012345\r\n"
                        "Content-Length: 300\r\n\r\n" BODY300},
        };
        const char *answer = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        for (size_t i = 0; i < sizeof canned / sizeof canned[0]; i++)
            if (strcmp(path, canned[i].path) == 0)
                answer = canned[i].answer;
        swrite_s(sc, answer, 0);
    } else if (strcmp(path, "/chunkbig") == 0) { /* 3 x 200 bytes, no length announced */
        char chunk[256];
        swrite_s(sc, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0);
        for (int i = 0; i < 3; i++) {
            int h = snprintf(chunk, sizeof chunk, "c8\r\n");
            memset(chunk + h, 'a' + i, 200);
            memcpy(chunk + h + 200, "\r\n", 2);
            swrite_n(sc, chunk, (size_t)h + 202, 0);
        }
        swrite_s(sc, "0\r\n\r\n", 0);
    } else if (strcmp(path, "/drop2") == 0) {
        if (sc->nreq >= 2)
            sconn_close(sc); /* as if it timed the idle socket out just as the request came */
        else
            swrite_s(sc, HELLO, 0);
    } else if (strcmp(path, "/big") == 0) {
        size_t body = 100000;
        char *buf = malloc(body + 100);
        int h = snprintf(buf, 100, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", body);
        memset(buf + h, 'x', body);
        swrite_n(sc, buf, (size_t)h + body, 0);
        free(buf);
    } else if (strcmp(path, "/stall") == 0) { /* 700,000 of 1,000,000 announced bytes, then nothing */
        size_t part = STALL_PART;
        char *buf = malloc(part + 100);
        int h = snprintf(buf, 100, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        memset(buf + h, 'y', part);
        swrite_n(sc, buf, (size_t)h + part, 0);
        free(buf);
    } else if (strcmp(path, "/midrecord") == 0) { /* TLS: the head, then half a record, then EOF */
        swrite_s(sc, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 0);
        char body[1000];
        memset(body, 'z', sizeof body);
        SSL_write(sc->ssl, body, (int)sizeof body);
        sflush(sc, 500, 1);
    } else if (strcmp(path, "/204") == 0) {
        swrite_s(sc, "HTTP/1.1 204 No Content\r\n\r\n", 0);
    } else if (strcmp(path, "/304") == 0) { /* a Content-Length but, as always for 304, no body */
        swrite_s(sc, "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 0);
    } else if (strcmp(path, "/100") == 0) {
        swrite_s(sc, "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" HELLO, 0);
    } else if (strcmp(path, "/slow") == 0) {
        uv_timer_start(&sc->delay, slow_cb, 5, 0);
    } else if (strcmp(path, "/extra") == 0) { /* a response followed by bytes nobody asked for */
        swrite_s(sc, HELLO "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0);
    } else {
        swrite_s(sc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0);
    }
}

/* Consumes every complete request in sc->in. */
static void srv_parse(sconn *sc)
{
    for (;;) {
        sc->in[sc->inlen] = '\0';
        char *end = strstr(sc->in, "\r\n\r\n");
        if (!end)
            return;
        size_t head = (size_t)(end - sc->in) + 4, body = 0;
        for (char *p = sc->in; p < end; p++) {
            if (strncasecmp(p, "\r\ncontent-length:", 17) == 0) {
                body = strtoul(p + 17, NULL, 10);
                break;
            }
        }
        if (sc->inlen < head + body)
            return;
        srv_answer(sc, sc->in, head + body);
        if (sc->closing)
            return;
        memmove(sc->in, sc->in + head + body, sc->inlen - head - body);
        sc->inlen -= head + body;
    }
}

static void salloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sconn *sc = h->data;
    (void)suggested;
    if (sc->ssl) {
        buf->base = sc->raw;
        buf->len = sizeof sc->raw;
        return;
    }
    buf->base = sc->in + sc->inlen;
    buf->len = sizeof sc->in - 1 - sc->inlen;
}

/* TLS mode: ciphertext in; handshake, then decrypt into sc->in. Returns -1 when sc is closing. */
static int stls_input(sconn *sc, const char *data, size_t n)
{
    srv *s = sc->s;
    BIO_write(sc->rbio, data, (int)n);
    if (!SSL_is_init_finished(sc->ssl)) {
        int r = SSL_do_handshake(sc->ssl);
        sflush(sc, 0, 0);
        if (r != 1) {
            if (SSL_get_error(sc->ssl, r) != SSL_ERROR_WANT_READ) {
                s->tls_failed++;
                ERR_clear_error();
                sconn_close(sc);
                return -1;
            }
            return 0;
        }
        s->handshakes++;
        s->resumed += SSL_session_reused(sc->ssl) != 0;
        const char *sni = SSL_get_servername(sc->ssl, TLSEXT_NAMETYPE_host_name);
        snprintf(s->sni, sizeof s->sni, "%s", sni ? sni : "");
    }
    for (;;) {
        int r = SSL_read(sc->ssl, sc->in + sc->inlen, (int)(sizeof sc->in - 1 - sc->inlen));
        if (r <= 0)
            break;
        sc->inlen += (size_t)r;
    }
    ERR_clear_error();
    sflush(sc, 0, 0); /* session tickets */
    return 0;
}

static void sread_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    sconn *sc = stream->data;
    if (nread < 0) {
        sconn_close(sc);
        return;
    }
    if (sc->ssl) {
        if (stls_input(sc, buf->base, (size_t)nread) < 0)
            return;
    } else {
        sc->inlen += (size_t)nread;
    }
    srv_parse(sc);
}

static void srv_accept_cb(uv_stream_t *listener, int status)
{
    srv *s = listener->data;
    if (status < 0)
        return;
    sconn *sc = calloc(1, sizeof *sc);
    sc->s = s;
    uv_tcp_init(s->loop, &sc->tcp);
    uv_timer_init(s->loop, &sc->delay);
    sc->tcp.data = sc->delay.data = sc;
    sc->handles = 2;
    s->current++;
    if (uv_accept(listener, (uv_stream_t *)&sc->tcp) < 0) {
        sconn_close(sc);
        return;
    }
    if (s->tls) {
        sc->ssl = SSL_new(s->tls);
        sc->rbio = BIO_new(BIO_s_mem());
        sc->wbio = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(sc->rbio, -1);
        SSL_set_bio(sc->ssl, sc->rbio, sc->wbio);
        SSL_set_accept_state(sc->ssl);
    }
    s->accepted++;
    if (s->current > s->peak)
        s->peak = s->current;
    uv_read_start((uv_stream_t *)&sc->tcp, salloc_cb, sread_cb);
}

/* Starts a server on addr ("127.0.0.1" or "::1"). Returns 0 or a libuv error. */
static int srv_start(srv *s, uv_loop_t *loop, const char *addr)
{
    struct sockaddr_storage ss;
    memset(s, 0, sizeof *s);
    s->loop = loop;
    if (strchr(addr, ':'))
        uv_ip6_addr(addr, 0, (struct sockaddr_in6 *)&ss);
    else
        uv_ip4_addr(addr, 0, (struct sockaddr_in *)&ss);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    int rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 256, srv_accept_cb);
    int len = sizeof ss;
    if (rc == 0)
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    if (rc == 0)
        s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port); /* same offset for in6 */
    return rc;
}

static void srv_listener_closed(uv_handle_t *h)
{
    srv *s = h->data;
    s->listener_closed = 1;
    SSL_CTX_free(s->tls); /* accepted connections hold references of their own */
    s->tls = NULL;
}

/* Closes the listener; accepted connections close when the client closes them. */
static void srv_stop(srv *s)
{
    uv_close((uv_handle_t *)&s->listener, srv_listener_closed);
}

/* ---- a throwaway PKI ------------------------------------------------------------------------ */

static struct {
    EVP_PKEY *ca_key, *other_key, *leaf_key;
    X509 *ca, *other_ca;   /* the trusted CA (in ca_file) and one nobody trusts */
    X509 *good;            /* localhost + 127.0.0.1, valid, by ca */
    X509 *wrong;           /* wrong.example only, by ca */
    X509 *expired;         /* like good, expired yesterday */
    X509 *unknown;         /* like good, by other_ca */
    char ca_file[64];      /* ca as PEM */
} pki;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext || !X509_add_ext(x, ext, -1)) {
        fprintf(stderr, "pki: extension %s=%s failed\n", OBJ_nid2sn(nid), value);
        abort();
    }
    X509_EXTENSION_free(ext);
}

/* A certificate for key named cn, valid from now+from_s to now+to_s, signed by issuer (self-signed
 * CA when issuer is NULL); a leaf has the subjectAltName san. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       long from_s, long to_s, const char *san)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), from_s);
    X509_gmtime_adj(X509_getm_notAfter(x), to_s);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer ? issuer : x;
    add_ext(x, signer, NID_basic_constraints, san ? "critical,CA:FALSE" : "critical,CA:TRUE");
    add_ext(x, signer, NID_key_usage, san ? "critical,digitalSignature" : "critical,keyCertSign,cRLSign");
    add_ext(x, signer, NID_subject_key_identifier, "hash");
    if (san) {
        add_ext(x, signer, NID_ext_key_usage, "serverAuth");
        add_ext(x, signer, NID_subject_alt_name, san);
    }
    if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256())) {
        fprintf(stderr, "pki: signing %s failed\n", cn);
        abort();
    }
    return x;
}

static void pki_init(void)
{
    const char *good_san = "DNS:localhost,IP:127.0.0.1";
    pki.ca_key = EVP_EC_gen("P-256");
    pki.other_key = EVP_EC_gen("P-256");
    pki.leaf_key = EVP_EC_gen("P-256");
    if (!pki.ca_key || !pki.other_key || !pki.leaf_key)
        abort();
    pki.ca = make_cert(pki.ca_key, "statushost test CA", NULL, NULL, -3600, 86400, NULL);
    pki.other_ca = make_cert(pki.other_key, "untrusted test CA", NULL, NULL, -3600, 86400, NULL);
    pki.good = make_cert(pki.leaf_key, "localhost", pki.ca, pki.ca_key, -3600, 86400, good_san);
    pki.wrong = make_cert(pki.leaf_key, "wrong.example", pki.ca, pki.ca_key, -3600, 86400,
                          "DNS:wrong.example");
    pki.expired = make_cert(pki.leaf_key, "localhost", pki.ca, pki.ca_key, -2 * 86400, -86400,
                            good_san);
    pki.unknown = make_cert(pki.leaf_key, "localhost", pki.other_ca, pki.other_key, -3600, 86400,
                            good_san);
    snprintf(pki.ca_file, sizeof pki.ca_file, "/tmp/sh-test-ca-XXXXXX");
    int fd = mkstemp(pki.ca_file);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f || !PEM_write_X509(f, pki.ca) || fclose(f) != 0) {
        fprintf(stderr, "pki: cannot write %s\n", pki.ca_file);
        abort();
    }
}

static void pki_fini(void)
{
    unlink(pki.ca_file);
    X509 *certs[] = {pki.ca, pki.other_ca, pki.good, pki.wrong, pki.expired, pki.unknown};
    for (size_t i = 0; i < sizeof certs / sizeof certs[0]; i++)
        X509_free(certs[i]);
    EVP_PKEY_free(pki.ca_key);
    EVP_PKEY_free(pki.other_key);
    EVP_PKEY_free(pki.leaf_key);
}

/* Makes s a TLS server presenting cert (with the leaf key). */
static void srv_use_tls(srv *s, X509 *cert)
{
    s->tls = SSL_CTX_new(TLS_server_method());
    if (!s->tls || SSL_CTX_use_certificate(s->tls, cert) != 1 ||
        SSL_CTX_use_PrivateKey(s->tls, pki.leaf_key) != 1) {
        fprintf(stderr, "tls server set-up failed\n");
        abort();
    }
}

/* ---- test harness -------------------------------------------------------------------------- */

typedef struct {
    int called;          /* callback count */
    int err;
    char errstr[128];
    int status;
    char body[512];
    size_t body_len;
    char x_test[32];     /* value of X-Test, "" when absent */
    int has_trailer;     /* X-Trailer present among headers */
    int has_interim;     /* X-Interim present among headers */
    int order;           /* global sequence number at callback time */
} result;

static int in_request; /* set while inside sh_http_request: a callback then is a bug */
static int sequence;

static void on_result(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    result *r = arg;
    CHECK(!in_request);
    r->called++;
    r->err = err;
    r->order = ++sequence;
    snprintf(r->errstr, sizeof r->errstr, "%s", errstr ? errstr : "");
    if (err == 0) {
        CHECK(res != NULL);
        CHECK(errstr == NULL);
        CHECK(res->body[res->body_len] == '\0');
        r->status = res->status;
        r->body_len = res->body_len;
        snprintf(r->body, sizeof r->body, "%.*s", (int)res->body_len, res->body);
        r->x_test[0] = '\0';
        for (size_t i = 0; i < res->nheaders; i++) {
            const sh_http_hdr *h = &res->headers[i];
            if (h->name_len == 6 && strncasecmp(h->name, "X-Test", 6) == 0)
                snprintf(r->x_test, sizeof r->x_test, "%.*s", (int)h->value_len, h->value);
            if (h->name_len == 9 && strncasecmp(h->name, "X-Trailer", 9) == 0)
                r->has_trailer = 1;
            if (h->name_len == 9 && strncasecmp(h->name, "X-Interim", 9) == 0)
                r->has_interim = 1;
        }
    } else if (err == SH_HTTP_ETLS) {
        CHECK(res == NULL);
        CHECK(strncmp(errstr, "tls: ", 5) == 0 && strlen(errstr) > 5);
        if (getenv("SH_TEST_DEBUG"))
            fprintf(stderr, "  [%s] %s\n", current_test, errstr);
    } else {
        CHECK(res == NULL);
        CHECK(strcmp(errstr, sh_http_strerror(err)) == 0);
    }
}

typedef struct {
    uv_loop_t loop;
    uv_timer_t watchdog;
    srv s;
    sh_http_client *c;
    int client_done;
    int done_order;      /* sequence number when done ran */
} env;

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    fprintf(stderr, "FAIL [%s]: watchdog: the test did not finish in time\n", current_test);
    abort();
}

static void env_init(env *e, const sh_http_client_opts *opts)
{
    memset(e, 0, sizeof *e);
    CHECK(uv_loop_init(&e->loop) == 0);
    uv_timer_init(&e->loop, &e->watchdog);
    uv_timer_start(&e->watchdog, watchdog_cb, 20000, 0);
    uv_unref((uv_handle_t *)&e->watchdog);
    CHECK(srv_start(&e->s, &e->loop, "127.0.0.1") == 0);
    e->c = sh_http_client_new(&e->loop, opts);
    CHECK(e->c != NULL);
}

/* Runs the loop until cond holds; fails if the loop runs out of work first. */
#define RUN_UNTIL(e, cond)                                                          \
    do {                                                                            \
        while (!(cond)) {                                                           \
            if (uv_run(&(e)->loop, UV_RUN_ONCE) == 0 && !(cond)) {                  \
                CHECK(!"loop ran out of work before: " #cond);                      \
                break;                                                              \
            }                                                                       \
        }                                                                           \
    } while (0)

static void client_done_cb(void *arg)
{
    ((env *)arg)->client_done++;
    ((env *)arg)->done_order = ++sequence;
}

static void env_close_client(env *e)
{
    sh_http_client_close(e->c, client_done_cb, e);
    RUN_UNTIL(e, e->client_done == 1);
    e->c = NULL;
}

/* Closes client (unless closed) and server, drains the loop, checks nothing is left open. */
static void env_fini(env *e)
{
    if (e->c)
        env_close_client(e);
    srv_stop(&e->s);
    RUN_UNTIL(e, e->s.listener_closed && e->s.current == 0);
    uv_close((uv_handle_t *)&e->watchdog, NULL);
    CHECK(uv_run(&e->loop, UV_RUN_DEFAULT) == 0);
    CHECK(e->client_done == 1);
    CHECK(uv_loop_close(&e->loop) == 0);
}

/* Starts a request on path of the test server. Returns sh_http_request's result. */
static int req(env *e, const char *method, const char *path, uint64_t timeout_ms, result *r,
               sh_http_call **out)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", e->s.port, path);
    sh_http_opts o = {.method = method, .url = url, .timeout_ms = timeout_ms};
    in_request = 1;
    int rc = sh_http_request(e->c, &o, on_result, r, out);
    in_request = 0;
    return rc;
}

static sh_http_client_stats stats(env *e)
{
    sh_http_client_stats st;
    sh_http_client_stats_get(e->c, &st);
    return st;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_content_length(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    CHECK(req(&e, NULL, "/hello?a=1", 0, &r, NULL) == 0);
    CHECK(r.called == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.called == 1);
    CHECK(r.err == 0);
    CHECK(r.status == 200);
    CHECK(strcmp(r.body, "hello") == 0 && r.body_len == 5);
    CHECK(strcmp(r.x_test, "a") == 0);
    char want[64];
    snprintf(want, sizeof want, "GET /hello?a=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", e.s.port);
    CHECK(strncmp(e.s.last, want, strlen(want)) == 0);
    CHECK(strstr(e.s.last, "Content-Length") == NULL);
    CHECK(stats(&e).idle == 1 && stats(&e).inflight == 0);
    env_fini(&e);
}

static void test_chunked(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/chunked", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == 0 && r.status == 200);
    CHECK(strcmp(r.body, "hello world") == 0);
    CHECK(!r.has_trailer);
    CHECK(stats(&e).idle == 1); /* a complete chunked response leaves a reusable socket */
    env_fini(&e);
}

/* Second request started from the first one's callback; third one afterwards. */
typedef struct {
    env *e;
    result first, second, third;
} chain;

static void on_first(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    chain *ch = arg;
    on_result(&ch->first, err, errstr, res);
    CHECK(req(ch->e, "GET", "/chunked", 0, &ch->second, NULL) == 0);
}

static void test_keepalive_reuse(void)
{
    env e;
    chain ch = {.e = &e};
    env_init(&e, NULL);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", e.s.port);
    sh_http_opts o = {.url = url};
    CHECK(sh_http_request(e.c, &o, on_first, &ch, NULL) == 0);
    RUN_UNTIL(&e, ch.second.called);
    CHECK(ch.first.err == 0 && strcmp(ch.first.body, "hello") == 0);
    CHECK(ch.second.err == 0 && strcmp(ch.second.body, "hello world") == 0);
    CHECK(req(&e, "GET", "/hello", 0, &ch.third, NULL) == 0);
    RUN_UNTIL(&e, ch.third.called);
    CHECK(ch.third.err == 0);
    CHECK(e.s.accepted == 1);
    CHECK(e.s.requests == 3);
    env_fini(&e);
}

static void test_read_until_close(void)
{
    env e;
    result r = {0}, r2 = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/eof", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == 0 && r.status == 200);
    CHECK(strcmp(r.body, "until close") == 0);
    CHECK(strcmp(r.x_test, "b") == 0);
    CHECK(stats(&e).conns == 0);
    CHECK(req(&e, "GET", "/hello", 0, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == 0 && e.s.accepted == 2);
    env_fini(&e);
}

static void test_no_body_responses(void)
{
    env e;
    result r[4] = {{0}};
    env_init(&e, NULL);
    CHECK(req(&e, "HEAD", "/hello", 0, &r[0], NULL) == 0);
    RUN_UNTIL(&e, r[0].called);
    CHECK(req(&e, "GET", "/204", 0, &r[1], NULL) == 0);
    RUN_UNTIL(&e, r[1].called);
    CHECK(req(&e, "GET", "/304", 0, &r[2], NULL) == 0);
    RUN_UNTIL(&e, r[2].called);
    CHECK(req(&e, "GET", "/100", 0, &r[3], NULL) == 0);
    RUN_UNTIL(&e, r[3].called);
    CHECK(r[0].err == 0 && r[0].status == 200 && r[0].body_len == 0);
    CHECK(r[1].err == 0 && r[1].status == 204 && r[1].body_len == 0);
    CHECK(r[2].err == 0 && r[2].status == 304 && r[2].body_len == 0);
    CHECK(r[3].err == 0 && r[3].status == 200 && strcmp(r[3].body, "hello") == 0);
    CHECK(!r[3].has_interim && strcmp(r[3].x_test, "a") == 0);
    CHECK(e.s.accepted == 1); /* no response was mistaken for having a body */
    env_fini(&e);
}

static void test_post_echo(void)
{
    env e;
    result r = {0}, r2 = {0};
    env_init(&e, NULL);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo?x=1#frag", e.s.port);
    sh_http_hdr hdrs[] = {{"X-A", 3, "1", 1}, {"Content-Type", 12, "application/json", 16}};
    sh_http_opts o = {.method = "POST", .url = url, .headers = hdrs, .nheaders = 2,
                      .body = "{\"a\":1}", .body_len = 7};
    CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == 0 && r.status == 200);
    CHECK(strncmp(r.body, "POST /echo?x=1 HTTP/1.1\r\n", 25) == 0);
    CHECK(strstr(r.body, "\r\nContent-Length: 7\r\n") != NULL);
    CHECK(strstr(r.body, "\r\nX-A: 1\r\n") != NULL);
    CHECK(strstr(r.body, "\r\nContent-Type: application/json\r\n") != NULL);
    CHECK(strstr(r.body, "\r\n\r\n{\"a\":1}") != NULL);
    /* caller's Host wins; a query-only URL gets "/"; an empty POST says Content-Length: 0 */
    snprintf(url, sizeof url, "http://127.0.0.1:%d?q=2", e.s.port);
    sh_http_hdr host[] = {{"host", 4, "example.test", 12}};
    sh_http_opts o2 = {.method = "POST", .url = url, .headers = host, .nheaders = 1};
    CHECK(sh_http_request(e.c, &o2, on_result, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.status == 404);
    CHECK(strncmp(e.s.last, "POST /?q=2 HTTP/1.1\r\n", 21) == 0);
    CHECK(strstr(e.s.last, "\r\nhost: example.test\r\n") != NULL);
    CHECK(strstr(e.s.last, "\r\nHost:") == NULL);
    CHECK(strstr(e.s.last, "\r\nContent-Length: 0\r\n") != NULL);
    env_fini(&e);
}

/* The request's bytes, exactly, as request_build measures then writes them in one buffer: the
 * target's escapes, an empty header value, the caller's Host, Content-Length and Connection (in
 * any case) instead of ours, a length for an empty PATCH, none for a GET. */
static void test_request_bytes(void)
{
    env e;
    env_init(&e, NULL);
    char url[160], want[512];
    result r[3] = {{0}};
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo/a b\xc3\xa9?q= x#frag", e.s.port);
    sh_http_hdr h0[] = {{"X-Empty", 7, NULL, 0}, {"X-N", 3, "42", 2}};
    sh_http_opts o0 = {.url = url, .headers = h0, .nheaders = 2};
    CHECK(sh_http_request(e.c, &o0, on_result, &r[0], NULL) == 0);
    RUN_UNTIL(&e, r[0].called);
    snprintf(want, sizeof want,
             "GET /echo/a%%20b%%C3%%A9?q=%%20x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Empty: \r\n"
             "X-N: 42\r\nConnection: keep-alive\r\n\r\n", e.s.port);
    CHECK(r[0].err == 0 && strcmp(r[0].body, want) == 0);

    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo", e.s.port);
    sh_http_hdr h1[] = {{"content-length", 14, "3", 1}, {"CONNECTION", 10, "Close", 5}};
    sh_http_opts o1 = {.method = "PUT", .url = url, .headers = h1, .nheaders = 2,
                       .body = "abc", .body_len = 3};
    CHECK(sh_http_request(e.c, &o1, on_result, &r[1], NULL) == 0);
    RUN_UNTIL(&e, r[1].called);
    CHECK(r[1].err == 0);
    snprintf(want, sizeof want,
             "PUT /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\ncontent-length: 3\r\n"
             "CONNECTION: Close\r\n\r\nabc", e.s.port);
    CHECK(strcmp(r[1].body, want) == 0);

    sh_http_hdr h2[] = {{"HOST", 4, "h.test", 6}};
    sh_http_opts o2 = {.method = "PATCH", .url = url, .headers = h2, .nheaders = 1};
    CHECK(sh_http_request(e.c, &o2, on_result, &r[2], NULL) == 0);
    RUN_UNTIL(&e, r[2].called);
    CHECK(r[2].err == 0 && strcmp(r[2].body, "PATCH /echo HTTP/1.1\r\nHOST: h.test\r\n"
                                             "Content-Length: 0\r\nConnection: keep-alive\r\n"
                                             "\r\n") == 0);
    env_fini(&e);
}

/* Headers seen by on_many: each X-H<i> in order, with its value. */
static int many_ok, many_called;

static void on_many(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    (void)arg;
    (void)errstr;
    many_called++;
    if (err || res->nheaders != MANY_HEADERS + 1)
        return;
    char name[16], value[16];
    for (int i = 0; i < MANY_HEADERS; i++) {
        const sh_http_hdr *h = &res->headers[i + 1];
        int nl = snprintf(name, sizeof name, "X-H%d", i), vl = snprintf(value, sizeof value, "v%d", i);
        if (h->name_len != (size_t)nl || memcmp(h->name, name, (size_t)nl) != 0 ||
            h->value_len != (size_t)vl || memcmp(h->value, value, (size_t)vl) != 0)
            return;
    }
    many_ok = res->body_len == 2 && strcmp(res->body, "ok") == 0;
}

/* A response's buffers start in the call and move to the heap once outgrown: more headers than
 * their room (and than call_deliver_cb's array on the stack), more header bytes, a chunked body
 * of no announced length longer than its room. All of them arrive whole, and their heap memory
 * is given back to the budget. */
static void test_outgrown_buffers(void)
{
    env e;
    env_init(&e, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/many", e.s.port);
    sh_http_opts o = {.url = url};
    CHECK(sh_http_request(e.c, &o, on_many, NULL, NULL) == 0);
    RUN_UNTIL(&e, many_called);
    CHECK(many_ok);
    CHECK(stats(&e).response_bytes == 0);
    result r = {0};
    CHECK(req(&e, NULL, "/chunkbig", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == 0 && r.status == 200 && r.body_len == 600);
    CHECK(strspn(r.body, "a") == 200 && strspn(r.body + 200, "b") == 200 &&
          strspn(r.body + 400, "c") == 111); /* result.body keeps 511 bytes */
    CHECK(stats(&e).response_bytes == 0);
    env_fini(&e);
}

/* One request of path on a fresh client; its result and the client's counters after it. */
static void fast_one(const char *path, const sh_http_client_opts *opts, result *r,
                     sh_http_client_stats *st)
{
    env e;
    env_init(&e, opts);
    CHECK(req(&e, NULL, path, 0, r, NULL) == 0);
    RUN_UNTIL(&e, r->called);
    *st = stats(&e);
    env_fini(&e);
}

/* The usual response (whole in one read) is parsed without llhttp; anything else goes to llhttp
 * from its first byte: both give what llhttp alone gave. */
static void test_fast_path(void)
{
    result r;
    sh_http_client_stats st;
    struct {
        const char *path;
        int err, status;
        const char *x_test, *body;
        int pooled; /* the socket went back to the pool */
    } cases[] = {
        {"/f-fast", 0, 201, "a", "hello", 1},
        {"/f-close", 0, 200, "c", "hello", 0},
        {"/f-10", 0, 200, "d", "hello", 0},
        {"/f-twolen", SH_HTTP_EBADRESPONSE, 0, "", "", 0},
        {"/f-te", SH_HTTP_EBADRESPONSE, 0, "", "", 0},
        {"/f-space", 0, 200, "a b \t", "hello", 1}, /* llhttp keeps trailing OWS */
        {"/f-empty", 0, 200, "", "hello", 1},
        {"/f-obs", 0, 200, "\xc3\xa9t\xc3\xa9", "hello", 1},
        {"/f-nolen", 0, 200, "e", "", 1},
        {"/f-cl", SH_HTTP_EBADRESPONSE, 0, "", "", 0},
        {"/f-lf", SH_HTTP_EBADRESPONSE, 0, "", "", 0}, /* a bare LF */
        {"/f-12", 0, 200, "twelve", "hello", 1},
        {"/big", 0, 200, "", NULL, 1}, /* a body over several reads */
        {"/100", 0, 200, "a", "hello", 1},
        {"/204", 0, 204, "", "", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&r, 0, sizeof r);
        fast_one(cases[i].path, NULL, &r, &st);
        if (r.err != cases[i].err || r.status != cases[i].status ||
            strcmp(r.x_test, cases[i].x_test) != 0 ||
            (cases[i].body && strcmp(r.body, cases[i].body) != 0) ||
            (int)st.idle != cases[i].pooled || st.response_bytes != 0)
            fprintf(stderr, "  %s: err %d status %d x-test \"%s\" body \"%s\" idle %zu held %zu\n",
                    cases[i].path, r.err, r.status, r.x_test, r.body, st.idle,
                    st.response_bytes);
        CHECK(r.err == cases[i].err && r.status == cases[i].status);
        CHECK(strcmp(r.x_test, cases[i].x_test) == 0);
        CHECK(!cases[i].body || strcmp(r.body, cases[i].body) == 0);
        CHECK((int)st.idle == cases[i].pooled && st.response_bytes == 0);
    }
    CHECK(r.body_len == 0); /* the 204 */
    /* a response over max_response_bytes, and one whose headers outgrow their room past the
     * budget: llhttp takes them and fails them "too large", as before */
    sh_http_client_opts small = {.max_response_bytes = 100};
    memset(&r, 0, sizeof r);
    fast_one("/f-fast", &small, &r, &st);
    CHECK(r.err == SH_HTTP_ETOOLARGE && st.response_bytes == 0);
    sh_http_client_opts budget = {.max_total_response_bytes = 400};
    memset(&r, 0, sizeof r);
    fast_one("/f-12", &budget, &r, &st);
    CHECK(r.err == SH_HTTP_ETOOLARGE && st.response_bytes == 0);
    /* within the budget as llhttp fills the buffers (the header names and values in the call,
     * the body on the heap: 301 bytes), not as the fast path would (the header lines on the heap
     * too): llhttp's answer, not the fast path's refusal */
    sh_http_client_opts tight = {.max_total_response_bytes = 400};
    memset(&r, 0, sizeof r);
    fast_one("/f-room", &tight, &r, &st);
    if (r.err)
        fprintf(stderr, "  /f-room: err %d (%s)\n", r.err, r.errstr);
    CHECK(r.err == 0 && r.status == 200 && r.body_len == 300 && strcmp(r.x_test, "b") == 0);
    CHECK(st.response_bytes == 0);
}

static void test_refused(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    /* a port that was just free: bind, read it, close */
    uv_tcp_t t;
    struct sockaddr_in sin;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    uv_tcp_init(&e.loop, &t);
    CHECK(uv_tcp_bind(&t, (struct sockaddr *)&sin, 0) == 0);
    CHECK(uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len) == 0);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    sh_http_opts o = {.url = url};
    in_request = 1;
    CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
    in_request = 0;
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_EREFUSED && strcmp(r.errstr, "refused") == 0);
    CHECK(stats(&e).conns == 0);
    env_fini(&e);
}

static void test_timeout(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    uint64_t t0 = uv_now(&e.loop);
    CHECK(req(&e, "GET", "/silent", 100, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ETIMEDOUT && strcmp(r.errstr, "timeout") == 0);
    CHECK(uv_now(&e.loop) - t0 >= 100);
    RUN_UNTIL(&e, e.s.closed == 1); /* the socket is closed, not pooled */
    CHECK(stats(&e).conns == 0);
    env_fini(&e);
}

/* A call waiting for a socket (max 1 per host, held by a silent request) still times out. */
static void test_queue_timeout(void)
{
    env e;
    result a = {0}, b = {0};
    sh_http_call *ca = NULL;
    sh_http_client_opts opts = {.max_conns_per_host = 1};
    env_init(&e, &opts);
    CHECK(req(&e, "GET", "/silent", 10000, &a, &ca) == 0);
    CHECK(req(&e, "GET", "/hello", 100, &b, NULL) == 0);
    CHECK(stats(&e).queued == 1);
    RUN_UNTIL(&e, b.called);
    CHECK(b.err == SH_HTTP_ETIMEDOUT);
    CHECK(a.called == 0);
    CHECK(e.s.accepted == 1 && e.s.requests == 1);
    sh_http_call_cancel(ca);
    RUN_UNTIL(&e, e.s.closed == 1);
    CHECK(a.called == 0);
    env_fini(&e);
    CHECK(a.called == 0);
}

static void test_bad_response(void)
{
    env e;
    result r = {0}, r2 = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/garbage", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_EBADRESPONSE && strcmp(r.errstr, "bad response") == 0);
    RUN_UNTIL(&e, e.s.closed == 1);
    /* a header without a name (found by fuzz_http_client) */
    CHECK(req(&e, "GET", "/emptyname", 0, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == SH_HTTP_EBADRESPONSE);
    RUN_UNTIL(&e, e.s.closed == 2);
    env_fini(&e);
}

static void test_closed_mid_body(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/midbody", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ECLOSED && strcmp(r.errstr, "closed") == 0);
    env_fini(&e);
}

static void test_too_large(void)
{
    env e;
    result r = {0}, r2 = {0};
    sh_http_client_opts opts = {.max_response_bytes = 1024};
    env_init(&e, &opts);
    CHECK(req(&e, "GET", "/big", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ETOOLARGE && strcmp(r.errstr, "too large") == 0);
    CHECK(req(&e, "GET", "/hello", 0, &r2, NULL) == 0); /* small ones still pass */
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == 0);
    env_fini(&e);
}

/* F16: a remote that sends most of a big body and stalls must not pin more than the client-wide
 * budget. Each /stall call holds >= 700,000 bytes; a budget of 2 MiB fits two of them, so of six
 * concurrent calls four fail "too large" (their sockets closed) and the total stays within the
 * budget at every loop turn. */
typedef struct {
    env *e;
    size_t max_seen;
} budget_probe;

static void budget_check_cb(uv_check_t *h)
{
    budget_probe *bp = h->data;
    size_t now = stats(bp->e).response_bytes;
    if (now > bp->max_seen)
        bp->max_seen = now;
}

/* Bytes the allocator hands out now (0 where the sanitizer's allocator hides them). */
static size_t heap_in_use(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return 0;
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#endif
}

static void settle_cb(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

static void test_total_budget(void)
{
    enum { N = 6 };
    const size_t budget = (size_t)2 << 20;
    env e;
    static result r[N];
    sh_http_call *calls[N];
    memset(r, 0, sizeof r);
    sh_http_client_opts opts = {.max_conns_per_host = 16, .max_response_bytes = (size_t)1 << 20,
                                .max_total_response_bytes = budget};
    env_init(&e, &opts);
    budget_probe bp = {.e = &e};
    uv_check_t check;
    uv_check_init(&e.loop, &check);
    check.data = &bp;
    uv_check_start(&check, budget_check_cb);
    size_t heap0 = heap_in_use();
    for (int i = 0; i < N; i++)
        CHECK(req(&e, "GET", "/stall", 10000, &r[i], &calls[i]) == 0);
    int too_large = 0, other = 0, late = 0;
    uv_timer_t deadline; /* the failures are awaited; this only bounds the wait */
    uv_timer_init(&e.loop, &deadline);
    deadline.data = &late;
    uv_timer_start(&deadline, settle_cb, 2000, 0);
    while (too_large < N - 2 && !other && !late) {
        if (uv_run(&e.loop, UV_RUN_ONCE) == 0)
            break;
        too_large = other = 0;
        for (int i = 0; i < N; i++) {
            too_large += r[i].called && r[i].err == SH_HTTP_ETOOLARGE;
            other += r[i].called && r[i].err != SH_HTTP_ETOOLARGE;
        }
    }
    /* let every byte the server sent arrive: nothing else may fail, nothing may grow */
    int settled = 0;
    uv_timer_t settle;
    uv_timer_init(&e.loop, &settle);
    settle.data = &settled;
    uv_timer_start(&settle, settle_cb, 300, 0);
    RUN_UNTIL(&e, settled);
    too_large = other = 0;
    for (int i = 0; i < N; i++) {
        too_large += r[i].called && r[i].err == SH_HTTP_ETOOLARGE;
        other += r[i].called && r[i].err != SH_HTTP_ETOOLARGE;
        if (r[i].called && r[i].err == SH_HTTP_ETOOLARGE)
            CHECK(strcmp(r[i].errstr, "too large") == 0);
    }
    CHECK(too_large == N - 2);
    CHECK(other == 0);
    sh_http_client_stats st = stats(&e);
    CHECK(st.response_bytes >= 2 * STALL_PART);
    CHECK(st.response_bytes <= budget);
    CHECK(bp.max_seen <= budget);
    CHECK(st.conns == 2 && st.inflight == 2); /* the failed calls' sockets are closed */
    size_t heap1 = heap_in_use();
    if (heap0 && heap1 > heap0) {
        if (heap1 - heap0 > budget + (budget >> 2))
            fprintf(stderr, "  heap grew by %zu bytes (budget %zu)\n", heap1 - heap0, budget);
        CHECK(heap1 - heap0 <= budget + (budget >> 2)); /* measured, not just reported */
    }
    for (int i = 0; i < N; i++)
        if (!r[i].called)
            sh_http_call_cancel(calls[i]);
    CHECK(stats(&e).response_bytes == 0 && stats(&e).inflight == 0); /* released at once */
    result small = {0};
    CHECK(req(&e, "GET", "/hello", 0, &small, NULL) == 0);
    RUN_UNTIL(&e, small.called);
    CHECK(small.err == 0 && strcmp(small.body, "hello") == 0);
    CHECK(stats(&e).response_bytes == 0);
    uv_close((uv_handle_t *)&check, NULL);
    uv_close((uv_handle_t *)&settle, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    env_fini(&e);
}

static void test_cancel(void)
{
    env e;
    result r1 = {0}, r2 = {0}, r3 = {0};
    sh_http_call *c1 = NULL, *c2 = NULL, *c3 = NULL;
    env_init(&e, NULL);
    /* while connecting */
    CHECK(req(&e, "GET", "/hello", 0, &r1, &c1) == 0);
    CHECK(c1 != NULL);
    sh_http_call_cancel(c1);
    sh_http_call_cancel(NULL);
    /* while waiting for the response */
    CHECK(req(&e, "GET", "/silent", 0, &r2, &c2) == 0);
    RUN_UNTIL(&e, e.s.requests >= 1 && strstr(e.s.last, "/silent"));
    int closed = e.s.closed;
    sh_http_call_cancel(c2);
    RUN_UNTIL(&e, e.s.closed == closed + 1); /* its socket is closed, not pooled */
    /* a third one completes normally after the others */
    CHECK(req(&e, "GET", "/hello", 0, &r3, &c3) == 0);
    RUN_UNTIL(&e, r3.called);
    CHECK(r3.err == 0);
    CHECK(r1.called == 0 && r2.called == 0);
    env_fini(&e);
    CHECK(r1.called == 0 && r2.called == 0 && r3.called == 1);
}

/* A stale keep-alive socket: the server drops the second request on a connection without a byte
 * of answer; the client retries once on a fresh connection. */
static void test_retry_on_stale_socket(void)
{
    env e;
    result r1 = {0}, r2 = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/drop2", 0, &r1, NULL) == 0);
    RUN_UNTIL(&e, r1.called);
    CHECK(r1.err == 0);
    CHECK(req(&e, "GET", "/drop2", 0, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == 0 && strcmp(r2.body, "hello") == 0);
    CHECK(e.s.accepted == 2 && e.s.requests == 3);
    env_fini(&e);
}

/* The peer closes an idle socket: the pool notices (it keeps reading) and drops it. */
static void test_idle_peer_close(void)
{
    env e;
    result r1 = {0}, r2 = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/bye", 0, &r1, NULL) == 0);
    RUN_UNTIL(&e, r1.called);
    CHECK(r1.err == 0);
    RUN_UNTIL(&e, stats(&e).conns == 0);
    CHECK(req(&e, "GET", "/hello", 0, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == 0 && e.s.accepted == 2 && e.s.requests == 2);
    env_fini(&e);
}

/* Bytes after a complete response: the response counts, the socket is not reused. */
static void test_extra_bytes(void)
{
    env e;
    result r1 = {0}, r2 = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/extra", 0, &r1, NULL) == 0);
    RUN_UNTIL(&e, r1.called);
    CHECK(r1.err == 0 && strcmp(r1.body, "hello") == 0);
    CHECK(req(&e, "GET", "/hello", 0, &r2, NULL) == 0);
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == 0 && e.s.accepted == 2);
    env_fini(&e);
}

static void test_idle_timeout(void)
{
    env e;
    result r = {0};
    sh_http_client_opts opts = {.idle_timeout_ms = 50};
    env_init(&e, &opts);
    CHECK(req(&e, "GET", "/hello", 0, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(stats(&e).idle == 1);
    RUN_UNTIL(&e, e.s.closed == 1);
    CHECK(stats(&e).conns == 0);
    env_fini(&e);
}

static void test_concurrency(void)
{
    enum { N = 100 };
    env e;
    static result r[N];
    memset(r, 0, sizeof r);
    sh_http_client_opts opts = {.max_conns_per_host = 8};
    env_init(&e, &opts);
    for (int i = 0; i < N; i++)
        CHECK(req(&e, "GET", "/slow", 0, &r[i], NULL) == 0);
    CHECK(stats(&e).conns == 8 && stats(&e).queued == N - 8 && stats(&e).inflight == N);
    int done = 0;
    while (done < N) {
        if (uv_run(&e.loop, UV_RUN_ONCE) == 0)
            break;
        done = 0;
        for (int i = 0; i < N; i++)
            done += r[i].called;
        CHECK(stats(&e).conns <= 8);
    }
    CHECK(done == N);
    int ok = 0, in_order = 1;
    for (int i = 0; i < N; i++) {
        ok += r[i].called == 1 && r[i].err == 0 && strcmp(r[i].body, "hello") == 0;
        if (i > 0 && r[i].order < r[i - 1].order)
            in_order = 0;
    }
    CHECK(ok == N);
    CHECK(in_order); /* the per-host queue is FIFO */
    CHECK(e.s.peak <= 8);
    CHECK(e.s.accepted == 8);
    CHECK(e.s.requests == N);
    CHECK(stats(&e).idle == 8 && stats(&e).queued == 0);
    env_fini(&e);
}

/* close with calls in flight: every callback gets "closed", then done runs, once. */
static void test_client_close_inflight(void)
{
    env e;
    result idle = {0}, r[3] = {{0}}, late = {0};
    env_init(&e, NULL);
    CHECK(req(&e, "GET", "/hello", 0, &idle, NULL) == 0);
    RUN_UNTIL(&e, idle.called);
    CHECK(req(&e, "GET", "/silent", 0, &r[0], NULL) == 0);
    CHECK(req(&e, "GET", "/silent", 0, &r[1], NULL) == 0);
    CHECK(req(&e, "GET", "/silent", 0, &r[2], NULL) == 0);
    RUN_UNTIL(&e, e.s.requests == 4);
    sh_http_client_close(e.c, client_done_cb, &e);
    CHECK(r[0].called == 0); /* not synchronously */
    CHECK(req(&e, "GET", "/hello", 0, &late, NULL) == SH_HTTP_ECLOSED);
    RUN_UNTIL(&e, e.client_done == 1);
    for (int i = 0; i < 3; i++)
        CHECK(r[i].called == 1 && r[i].err == SH_HTTP_ECLOSED && strcmp(r[i].errstr, "closed") == 0);
    CHECK(late.called == 0);
    for (int i = 0; i < 3; i++)
        CHECK(r[i].order < e.done_order); /* callbacks before done */
    e.c = NULL;
    RUN_UNTIL(&e, e.s.current == 0); /* idle and busy sockets all closed */
    env_fini(&e);
}

/* Cancelling from callbacks: A's callback cancels B (whose outcome is known but not yet
 * delivered), cancels A itself (a no-op), and cancels C (waiting for its response). */
typedef struct {
    env *e;
    result a, b, c;
    sh_http_call *ca, *cb, *cc;
} cancel_ctx;

static void on_cancel_others(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    cancel_ctx *x = arg;
    on_result(&x->a, err, errstr, res);
    CHECK(stats(x->e).inflight == 1); /* B has its outcome already, C is still waiting */
    sh_http_call_cancel(x->ca);
    sh_http_call_cancel(x->cb);
    sh_http_call_cancel(x->cc);
}

static void test_cancel_from_callback(void)
{
    env e;
    cancel_ctx x;
    memset(&x, 0, sizeof x);
    x.e = &e;
    env_init(&e, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/silent", e.s.port);
    sh_http_opts o = {.url = url, .timeout_ms = 50};
    sh_http_opts oc = {.url = url, .timeout_ms = 10000};
    CHECK(sh_http_request(e.c, &o, on_cancel_others, &x, &x.ca) == 0);
    CHECK(sh_http_request(e.c, &o, on_result, &x.b, &x.cb) == 0);
    CHECK(sh_http_request(e.c, &oc, on_result, &x.c, &x.cc) == 0);
    RUN_UNTIL(&e, x.a.called);
    CHECK(x.a.err == SH_HTTP_ETIMEDOUT);
    RUN_UNTIL(&e, e.s.closed == 3 && stats(&e).inflight == 0);
    CHECK(x.b.called == 0 && x.c.called == 0);
    env_fini(&e);
    CHECK(x.a.called == 1 && x.b.called == 0 && x.c.called == 0);
}

/* sh_http_client_close from inside a callback, with another call in flight. */
typedef struct {
    env *e;
    result a, b;
} close_ctx;

static void on_close_client(void *arg, int err, const char *errstr, const sh_http_response *res)
{
    close_ctx *x = arg;
    on_result(&x->a, err, errstr, res);
    sh_http_client_close(x->e->c, client_done_cb, x->e);
}

static void test_close_from_callback(void)
{
    env e;
    close_ctx x;
    memset(&x, 0, sizeof x);
    x.e = &e;
    env_init(&e, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", e.s.port);
    sh_http_opts o = {.url = url};
    CHECK(req(&e, "GET", "/silent", 0, &x.b, NULL) == 0);
    CHECK(sh_http_request(e.c, &o, on_close_client, &x, NULL) == 0);
    RUN_UNTIL(&e, e.client_done == 1);
    CHECK(x.a.called == 1 && x.a.err == 0);
    CHECK(x.b.called == 1 && x.b.err == SH_HTTP_ECLOSED);
    CHECK(x.b.order < e.done_order);
    e.c = NULL;
    RUN_UNTIL(&e, e.s.current == 0);
    env_fini(&e);
}

/* A listener whose accept queue is full never completes a handshake: connect timeout. */
static void test_connect_timeout(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), fill[4];
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    CHECK(bind(lfd, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(lfd, 0) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&sin, &slen) == 0);
    for (int i = 0; i < 4; i++) { /* fill the queue; never accepted */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)!connect(fill[i], (struct sockaddr *)&sin, sizeof sin);
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(sin.sin_port));
    sh_http_opts o = {.url = url, .connect_timeout_ms = 100, .timeout_ms = 5000};
    uint64_t t0 = uv_now(&e.loop);
    CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ETIMEDOUT);
    CHECK(uv_now(&e.loop) - t0 < 4000); /* the connect timeout, not the total one */
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
    env_fini(&e);
}

static void test_bad_args(void)
{
    env e;
    result r = {0};
    env_init(&e, NULL);
    static const struct {
        const char *url;
        int want;
    } cases[] = {
        {"ws://127.0.0.1/", SH_HTTP_EUNSUPPORTED},
        {"httpss://example.com/", SH_HTTP_EUNSUPPORTED},
        {"https://user@example.com/", SH_HTTP_EUNSUPPORTED},
        {"https://example.com:99999/", SH_HTTP_EINVAL},
        {"ftp://example.com/", SH_HTTP_EUNSUPPORTED},
        {"http://user:pw@example.com/", SH_HTTP_EUNSUPPORTED},
        {"example.com/path", SH_HTTP_EINVAL},
        {"http:///path", SH_HTTP_EINVAL},
        {"http://exa mple.com/", SH_HTTP_EINVAL},
        {"http://example.com:70000/", SH_HTTP_EINVAL},
        {"http://example.com:0/", SH_HTTP_EINVAL},
        {"http://example.com:8x/", SH_HTTP_EINVAL},
        {"http://[::1/", SH_HTTP_EINVAL},
        {"http://example.com/a\r\nX: y", SH_HTTP_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sh_http_opts o = {.url = cases[i].url};
        int rc = sh_http_request(e.c, &o, on_result, &r, NULL);
        if (rc != cases[i].want)
            fprintf(stderr, "  url %s: got %d\n", cases[i].url, rc);
        CHECK(rc == cases[i].want);
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", e.s.port);
    sh_http_hdr bad_value[] = {{"X-A", 3, "1\r\nX-B: 2", 10}};
    sh_http_hdr bad_name[] = {{"X A", 3, "1", 1}};
    sh_http_opts o1 = {.url = url, .headers = bad_value, .nheaders = 1};
    sh_http_opts o2 = {.url = url, .headers = bad_name, .nheaders = 1};
    sh_http_opts o3 = {.url = url, .method = "GE T"};
    sh_http_opts o4 = {.url = url, .body_len = 3};
    CHECK(sh_http_request(e.c, &o1, on_result, &r, NULL) == SH_HTTP_EINVAL);
    CHECK(sh_http_request(e.c, &o2, on_result, &r, NULL) == SH_HTTP_EINVAL);
    CHECK(sh_http_request(e.c, &o3, on_result, &r, NULL) == SH_HTTP_EINVAL);
    CHECK(sh_http_request(e.c, &o4, on_result, &r, NULL) == SH_HTTP_EINVAL);
    CHECK(sh_http_request(e.c, NULL, on_result, &r, NULL) == SH_HTTP_EINVAL);
    CHECK(strcmp(sh_http_strerror(SH_HTTP_EUNSUPPORTED), "unsupported") == 0);
    CHECK(strcmp(sh_http_strerror(SH_HTTP_ETLS), "tls: failed") == 0);
    CHECK(strcmp(sh_http_strerror(SH_HTTP_ERESOLVE), "resolve failed") == 0);
    CHECK(strcmp(sh_http_strerror(12345), "unknown error") == 0);
    CHECK(stats(&e).inflight == 0 && stats(&e).conns == 0);
    env_fini(&e);
    CHECK(r.called == 0);
}

static void test_resolve(void)
{
    env e;
    result r = {0}, bad = {0};
    env_init(&e, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://LocalHost:%d/hello", e.s.port);
    sh_http_opts o = {.url = url};
    in_request = 1;
    CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
    in_request = 0;
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == 0 && strcmp(r.body, "hello") == 0);
    char want[64];
    snprintf(want, sizeof want, "\r\nHost: LocalHost:%d\r\n", e.s.port);
    CHECK(strstr(e.s.last, want) != NULL);
    sh_http_opts o2 = {.url = "http://no-such-host.invalid/"};
    CHECK(sh_http_request(e.c, &o2, on_result, &bad, NULL) == 0);
    RUN_UNTIL(&e, bad.called);
    CHECK(bad.err == SH_HTTP_ERESOLVE && strcmp(bad.errstr, "resolve failed") == 0);
    env_fini(&e);
}

/* IPv6 literal, when the machine has ::1 (otherwise the case is reported and passed over). */
static void test_ipv6_literal(void)
{
    uv_loop_t loop;
    srv s;
    result r = {0};
    uv_loop_init(&loop);
    if (srv_start(&s, &loop, "::1") != 0) {
        fprintf(stderr, "  (no ::1 here: IPv6 literal not exercised)\n");
        srv_stop(&s);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return;
    }
    sh_http_client *c = sh_http_client_new(&loop, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://[::1]:%d/hello", s.port);
    sh_http_opts o = {.url = url};
    CHECK(sh_http_request(c, &o, on_result, &r, NULL) == 0);
    while (!r.called && uv_run(&loop, UV_RUN_ONCE))
        ;
    CHECK(r.err == 0 && strcmp(r.body, "hello") == 0);
    char want[64];
    snprintf(want, sizeof want, "\r\nHost: [::1]:%d\r\n", s.port);
    CHECK(strstr(s.last, want) != NULL);
    sh_http_client_close(c, NULL, NULL);
    srv_stop(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(s.current == 0);
    CHECK(uv_loop_close(&loop) == 0);
}

/* ---- HTTPS ---------------------------------------------------------------------------------- */

static void env_init_tls(env *e, const sh_http_client_opts *opts, X509 *cert)
{
    env_init(e, opts);
    srv_use_tls(&e->s, cert);
}

/* Starts GET https://host:port/path on the test server. */
static int treq(env *e, const char *host, const char *path, result *r)
{
    char url[256];
    snprintf(url, sizeof url, "https://%s:%d%s", host, e->s.port, path);
    sh_http_opts o = {.url = url, .timeout_ms = 10000};
    in_request = 1;
    int rc = sh_http_request(e->c, &o, on_result, r, NULL);
    in_request = 0;
    return rc;
}

/* A good certificate: answers, keep-alive on the TLS socket, a resumed session on the next socket,
 * an IP literal (no SNI) with a body of several records, and http:// to the same host:port never
 * handed a TLS socket. */
static void test_tls_good(void)
{
    env e;
    result r[7];
    memset(r, 0, sizeof r);
    sh_http_client_opts opts = {.ca_file = pki.ca_file};
    env_init_tls(&e, &opts, pki.good);
    CHECK(treq(&e, "localhost", "/hello", &r[0]) == 0);
    CHECK(r[0].called == 0);
    RUN_UNTIL(&e, r[0].called);
    CHECK(r[0].err == 0 && r[0].status == 200 && strcmp(r[0].body, "hello") == 0);
    CHECK(strcmp(r[0].x_test, "a") == 0);
    CHECK(strcmp(e.s.sni, "localhost") == 0);
    char want[64];
    snprintf(want, sizeof want, "GET /hello HTTP/1.1\r\nHost: localhost:%d\r\n", e.s.port);
    CHECK(strncmp(e.s.last, want, strlen(want)) == 0);
    CHECK(treq(&e, "localhost", "/chunked", &r[1]) == 0);
    RUN_UNTIL(&e, r[1].called);
    CHECK(r[1].err == 0 && strcmp(r[1].body, "hello world") == 0);
    CHECK(e.s.accepted == 1 && e.s.handshakes == 1 && e.s.resumed == 0);
    /* the server closes after /bye (with a close_notify): the pool drops the socket */
    CHECK(treq(&e, "localhost", "/bye", &r[2]) == 0);
    RUN_UNTIL(&e, r[2].called);
    CHECK(r[2].err == 0);
    RUN_UNTIL(&e, stats(&e).conns == 0);
    CHECK(treq(&e, "localhost", "/hello", &r[3]) == 0);
    RUN_UNTIL(&e, r[3].called);
    CHECK(r[3].err == 0 && strcmp(r[3].body, "hello") == 0);
    CHECK(e.s.accepted == 2 && e.s.handshakes == 2);
    CHECK(e.s.resumed == 1); /* the server saw the session come back */
    CHECK(stats(&e).tls_handshakes == 2 && stats(&e).tls_resumed == 1);
    /* read until close_notify */
    CHECK(treq(&e, "localhost", "/eof", &r[4]) == 0);
    RUN_UNTIL(&e, r[4].called);
    CHECK(r[4].err == 0 && strcmp(r[4].body, "until close") == 0);
    /* an IP literal: checked against the IP address SAN, no SNI, a host of its own */
    CHECK(treq(&e, "127.0.0.1", "/big", &r[5]) == 0);
    RUN_UNTIL(&e, r[5].called);
    CHECK(r[5].err == 0 && r[5].status == 200 && r[5].body_len == 100000);
    CHECK(r[5].body[0] == 'x' && r[5].body[510] == 'x');
    CHECK(strcmp(e.s.sni, "") == 0);
    size_t accepted = (size_t)e.s.accepted, idle = stats(&e).idle;
    CHECK(idle == 1); /* /eof's socket is gone; 127.0.0.1's is pooled */
    /* plain http to the TLS port: a socket of its own (the server drops it), not a pooled TLS one */
    char url[64];
    snprintf(url, sizeof url, "http://localhost:%d/hello", e.s.port);
    sh_http_opts o = {.url = url, .timeout_ms = 5000};
    CHECK(sh_http_request(e.c, &o, on_result, &r[6], NULL) == 0);
    RUN_UNTIL(&e, r[6].called);
    CHECK(r[6].err == SH_HTTP_ECLOSED);
    CHECK((size_t)e.s.accepted == accepted + 1 && e.s.tls_failed == 1);
    CHECK(stats(&e).idle == idle);
    CHECK(stats(&e).response_bytes == 0);
    env_fini(&e);
}

/* One https call to a server presenting cert, with client opts; returns its result. */
static result tls_once(const sh_http_client_opts *opts, X509 *cert, const char *host)
{
    env e;
    result r = {0};
    env_init_tls(&e, opts, cert);
    CHECK(treq(&e, host, "/hello", &r) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.called == 1);
    if (r.err) {
        CHECK(e.s.handshakes == 0 && e.s.requests == 0); /* not a byte of the request left */
        CHECK(stats(&e).conns == 0);
    }
    env_fini(&e);
    return r;
}

static int tls_failed_with(const result *r, const char *why)
{
    if (r->err == SH_HTTP_ETLS && strstr(r->errstr, why))
        return 1;
    fprintf(stderr, "  [%s] expected \"%s\", got %d \"%s\"\n", current_test, why, r->err,
            r->errstr);
    return 0;
}

static void test_tls_verify(void)
{
    sh_http_client_opts ours = {.ca_file = pki.ca_file};
    sh_http_client_opts any = {.tls_no_verify = 1};
    result r;
    r = tls_once(&ours, pki.wrong, "localhost");
    CHECK(tls_failed_with(&r, "tls: certificate verify failed (hostname mismatch)"));
    r = tls_once(&ours, pki.wrong, "127.0.0.1");
    CHECK(tls_failed_with(&r, "tls: certificate verify failed (IP address mismatch)"));
    r = tls_once(&ours, pki.expired, "localhost");
    CHECK(tls_failed_with(&r, "tls: certificate verify failed (certificate has expired)"));
    r = tls_once(&ours, pki.unknown, "localhost");
    CHECK(tls_failed_with(&r, "tls: certificate verify failed (unable to get local issuer"));
    r = tls_once(NULL, pki.good, "localhost"); /* the system store does not know our CA */
    CHECK(tls_failed_with(&r, "tls: certificate verify failed"));
    r = tls_once(&any, pki.unknown, "localhost"); /* only when asked: anything goes */
    CHECK(r.err == 0 && strcmp(r.body, "hello") == 0);
    r = tls_once(&any, pki.expired, "127.0.0.1");
    CHECK(r.err == 0 && strcmp(r.body, "hello") == 0);
}

/* The server sends the head, then half of the body's record, then closes: "closed". */
static void test_tls_mid_record(void)
{
    env e;
    result r = {0}, r2 = {0};
    sh_http_client_opts opts = {.ca_file = pki.ca_file};
    env_init_tls(&e, &opts, pki.good);
    CHECK(treq(&e, "localhost", "/midrecord", &r) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ECLOSED && strcmp(r.errstr, "closed") == 0);
    CHECK(treq(&e, "localhost", "/midbody", &r2) == 0); /* a whole record, then close_notify */
    RUN_UNTIL(&e, r2.called);
    CHECK(r2.err == SH_HTTP_ECLOSED);
    CHECK(stats(&e).response_bytes == 0 && stats(&e).conns == 0);
    env_fini(&e);
}

/* A server that never answers the ClientHello: the connect timeout covers the handshake. */
static void test_tls_not_tls(void)
{
    env e;
    result r = {0};
    sh_http_client_opts opts = {.ca_file = pki.ca_file};
    env_init(&e, &opts);
    char url[64];
    snprintf(url, sizeof url, "https://127.0.0.1:%d/", e.s.port);
    sh_http_opts o = {.url = url, .connect_timeout_ms = 150, .timeout_ms = 5000};
    uint64_t t0 = uv_now(&e.loop);
    CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
    RUN_UNTIL(&e, r.called);
    CHECK(r.err == SH_HTTP_ETIMEDOUT && uv_now(&e.loop) - t0 < 4000);
    CHECK(e.s.requests == 0);
    RUN_UNTIL(&e, e.s.closed == 1);
    env_fini(&e);
}

/* SIGHUP's reconfigure: trust changes for the next call, the idle verified-the-old-way socket and
 * the remembered session are dropped, and a CA file that does not load changes nothing. */
static void test_tls_reconfigure(void)
{
    env e;
    result r[4];
    memset(r, 0, sizeof r);
    sh_http_client_opts any = {.tls_no_verify = 1};
    env_init_tls(&e, &any, pki.unknown);
    CHECK(treq(&e, "localhost", "/hello", &r[0]) == 0);
    RUN_UNTIL(&e, r[0].called);
    CHECK(r[0].err == 0 && strcmp(r[0].body, "hello") == 0);
    CHECK(stats(&e).idle == 1); /* kept alive: without the drop, the next call would reuse it */
    char err[256] = "";
    char path[] = "/tmp/sh-test-notpem-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "not a certificate\n", 18) == 18);
    close(fd);
    sh_http_client_opts garbage = {.ca_file = path};
    CHECK(sh_http_client_reconfigure(e.c, &garbage, err, sizeof err) == -1);
    CHECK(strstr(err, path) != NULL);
    unlink(path);
    CHECK(stats(&e).idle == 1); /* nothing changed */
    sh_http_client_opts ours = {.ca_file = pki.ca_file};
    CHECK(sh_http_client_reconfigure(e.c, &ours, err, sizeof err) == 0);
    RUN_UNTIL(&e, stats(&e).conns == 0);
    CHECK(treq(&e, "localhost", "/hello", &r[1]) == 0);
    RUN_UNTIL(&e, r[1].called);
    CHECK(tls_failed_with(&r[1], "tls: certificate verify failed (unable to get local issuer"));
    CHECK(sh_http_client_reconfigure(e.c, &any, err, sizeof err) == 0);
    CHECK(treq(&e, "localhost", "/hello", &r[2]) == 0);
    RUN_UNTIL(&e, r[2].called);
    CHECK(r[2].err == 0 && strcmp(r[2].body, "hello") == 0);
    env_fini(&e);
}

/* A reload while an https call is in flight (verified the old way, or not at all): once the call
 * is done its socket is not pooled, and the session it brings home (a TLS 1.3 ticket arrives with
 * the response) is not remembered, so the next call is checked against the new trust. */
static void test_tls_reconfigure_inflight(void)
{
    env e;
    result r[2];
    memset(r, 0, sizeof r);
    sh_http_client_opts any = {.tls_no_verify = 1};
    env_init_tls(&e, &any, pki.unknown);
    CHECK(treq(&e, "localhost", "/slow", &r[0]) == 0);
    RUN_UNTIL(&e, e.s.requests == 1); /* handshake done, the answer 5 ms away */
    CHECK(r[0].called == 0);
    char err[256] = "";
    sh_http_client_opts ours = {.ca_file = pki.ca_file};
    CHECK(sh_http_client_reconfigure(e.c, &ours, err, sizeof err) == 0);
    RUN_UNTIL(&e, r[0].called);
    CHECK(r[0].err == 0 && strcmp(r[0].body, "hello") == 0); /* in flight: finishes as it began */
    CHECK(stats(&e).idle == 0);
    CHECK(treq(&e, "localhost", "/hello", &r[1]) == 0);
    RUN_UNTIL(&e, r[1].called);
    CHECK(tls_failed_with(&r[1], "tls: certificate verify failed (unable to get local issuer"));
    CHECK(e.s.resumed == 0);
    env_fini(&e);
}

/* Reloads in a row do not each load the system store (tens of ms of the loop's time each, seconds
 * under a sanitizer), and without verification it is not loaded at all; the next call verifies
 * against it. */
static void test_tls_reconfigure_cheap(void)
{
    uint64_t one = UINT64_MAX; /* one load of the system store, the fastest of 3 */
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = uv_hrtime();
        SSL_CTX *x = SSL_CTX_new(TLS_client_method());
        CHECK(x && SSL_CTX_set_default_verify_paths(x) == 1);
        SSL_CTX_free(x);
        uint64_t t = uv_hrtime() - t0;
        one = t < one ? t : one;
    }
    env e;
    result r[3];
    memset(r, 0, sizeof r);
    env_init_tls(&e, NULL, pki.good);
    CHECK(treq(&e, "localhost", "/hello", &r[0]) == 0); /* the system store does not know our CA */
    RUN_UNTIL(&e, r[0].called);
    CHECK(tls_failed_with(&r[0], "tls: certificate verify failed"));
    char err[256] = "";
    sh_http_client_opts sys = {0}, any = {.tls_no_verify = 1};
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < 20; i++)
        CHECK(sh_http_client_reconfigure(e.c, i % 2 ? &any : &sys, err, sizeof err) == 0);
    uint64_t twenty = uv_hrtime() - t0;
    if (twenty >= 5 * one)
        fprintf(stderr, "  [%s] 20 reloads took %.1f ms, one store load %.1f ms\n", current_test,
                twenty / 1e6, one / 1e6);
    CHECK(twenty < 5 * one);
    CHECK(treq(&e, "localhost", "/hello", &r[1]) == 0); /* the last one: no verification */
    RUN_UNTIL(&e, r[1].called);
    CHECK(r[1].err == 0 && strcmp(r[1].body, "hello") == 0);
    CHECK(sh_http_client_reconfigure(e.c, &sys, err, sizeof err) == 0);
    CHECK(treq(&e, "localhost", "/hello", &r[2]) == 0);
    RUN_UNTIL(&e, r[2].called);
    CHECK(tls_failed_with(&r[2], "tls: certificate verify failed"));
    env_fini(&e);
}

static int releases;
static void count_release(void *arg)
{
    (void)arg;
    releases++;
}

/* A borrowed body (opts.body_release): sent as given, not copied, released once when the call is
 * done with it; over TLS too; and released once for a cancelled call, never for a refused one. */
static void test_post_borrowed(void)
{
    static char big[8000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    for (int tls = 0; tls < 2; tls++) {
        env e;
        result r = {0};
        sh_http_client_opts opts = {.ca_file = pki.ca_file};
        if (tls)
            env_init_tls(&e, &opts, pki.good);
        else
            env_init(&e, NULL);
        char url[128];
        snprintf(url, sizeof url, "%s://localhost:%d/echo", tls ? "https" : "http", e.s.port);
        releases = 0;
        sh_http_opts o = {.method = "POST", .url = url, .body = big, .body_len = sizeof big,
                          .body_release = count_release};
        CHECK(sh_http_request(e.c, &o, on_result, &r, NULL) == 0);
        RUN_UNTIL(&e, r.called);
        CHECK(r.err == 0 && r.status == 200);
        CHECK(strstr(r.body, "\r\nContent-Length: 8000\r\n") != NULL);
        const char *at = strstr(r.body, "\r\n\r\n");
        size_t head = at ? (size_t)(at + 4 - r.body) : 0; /* r.body keeps 511 bytes of it */
        CHECK(at && r.body_len == head + sizeof big &&
              memcmp(at + 4, big, strlen(r.body) - head) == 0);
        RUN_UNTIL(&e, releases == 1); /* once the call is freed, after cb */
        /* cancelled while waiting for its answer: released once */
        result r2 = {0};
        sh_http_call *call;
        snprintf(url, sizeof url, "%s://localhost:%d/silent", tls ? "https" : "http", e.s.port);
        sh_http_opts o2 = {.method = "POST", .url = url, .body = big, .body_len = sizeof big,
                           .body_release = count_release};
        CHECK(sh_http_request(e.c, &o2, on_result, &r2, &call) == 0);
        RUN_UNTIL(&e, e.s.requests >= 2);
        sh_http_call_cancel(call);
        RUN_UNTIL(&e, releases == 2);
        CHECK(r2.called == 0);
        /* refused synchronously (a bad method): never released */
        sh_http_opts o3 = {.method = "P O", .url = url, .body = big, .body_len = sizeof big,
                           .body_release = count_release};
        CHECK(sh_http_request(e.c, &o3, on_result, &r2, NULL) == SH_HTTP_EINVAL);
        env_fini(&e);
        CHECK(releases == 2);
    }
}

static void test_tls_bad_ca_file(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sh_http_client_opts missing = {.ca_file = "/nonexistent/ca.pem"};
    CHECK(sh_http_client_new(&loop, &missing) == NULL);
    char path[] = "/tmp/sh-test-notpem-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "not a certificate\n", 18) == 18);
    close(fd);
    sh_http_client_opts garbage = {.ca_file = path};
    CHECK(sh_http_client_new(&loop, &garbage) == NULL);
    unlink(path);
    sh_http_client_opts good = {.ca_file = pki.ca_file};
    sh_http_client *c = sh_http_client_new(&loop, &good);
    CHECK(c != NULL);
    if (c)
        sh_http_client_close(c, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as statushost does */
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"content_length", test_content_length},
        {"chunked", test_chunked},
        {"keepalive_reuse", test_keepalive_reuse},
        {"read_until_close", test_read_until_close},
        {"no_body_responses", test_no_body_responses},
        {"post_echo", test_post_echo},
        {"post_borrowed", test_post_borrowed},
        {"refused", test_refused},
        {"timeout", test_timeout},
        {"queue_timeout", test_queue_timeout},
        {"bad_response", test_bad_response},
        {"closed_mid_body", test_closed_mid_body},
        {"too_large", test_too_large},
        {"total_budget", test_total_budget},
        {"cancel", test_cancel},
        {"retry_on_stale_socket", test_retry_on_stale_socket},
        {"idle_peer_close", test_idle_peer_close},
        {"extra_bytes", test_extra_bytes},
        {"idle_timeout", test_idle_timeout},
        {"concurrency", test_concurrency},
        {"client_close_inflight", test_client_close_inflight},
        {"cancel_from_callback", test_cancel_from_callback},
        {"close_from_callback", test_close_from_callback},
        {"connect_timeout", test_connect_timeout},
        {"bad_args", test_bad_args},
        {"resolve", test_resolve},
        {"ipv6_literal", test_ipv6_literal},
        {"request_bytes", test_request_bytes},
        {"outgrown_buffers", test_outgrown_buffers},
        {"fast_path", test_fast_path},
        {"tls_good", test_tls_good},
        {"tls_verify", test_tls_verify},
        {"tls_mid_record", test_tls_mid_record},
        {"tls_not_tls", test_tls_not_tls},
        {"tls_bad_ca_file", test_tls_bad_ca_file},
        {"tls_reconfigure", test_tls_reconfigure},
        {"tls_reconfigure_inflight", test_tls_reconfigure_inflight},
        {"tls_reconfigure_cheap", test_tls_reconfigure_cheap},
    };
    sh_log_set_level(getenv("SH_TEST_DEBUG") ? SH_LOG_DEBUG : SH_LOG_ERROR);
    pki_init();
    size_t n = sizeof tests / sizeof tests[0];
    const char *only = getenv("SH_TEST_ONLY"); /* run the tests whose name contains this */
    for (size_t i = 0; i < n; i++) {
        if (only && !strstr(tests[i].name, only))
            continue;
        int before = failures;
        current_test = tests[i].name;
        tests[i].fn();
        printf("%s %s\n", failures == before ? "ok  " : "FAIL", tests[i].name);
    }
    pki_fini();
    printf("%zu tests, %d failed checks\n", n, failures);
    return failures ? 1 : 0;
}
