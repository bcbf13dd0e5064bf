/* http_client.c — see http_client.h.
 *
 * Objects and who owns what:
 *   client  — the pool: a list of hosts, every live call and every live connection. It owns one
 *             handle of its own (`own`) so that sh_http_client_close() finishes asynchronously; it is
 *             freed when its last handle (own, call timers, connection handles) has closed.
 *   host    — one "name:port": its idle sockets, its FIFO of waiting calls and a count of attached
 *             sockets (resolving, connecting, busy or idle). Freed as soon as it has neither.
 *   call    — one request. Its uv_timer is the total deadline and, once the outcome is known, the
 *             zero-delay timer that delivers it: so the user callback always runs from a fresh loop
 *             callback, never from inside an API function, a llhttp callback or the middle of a pool
 *             update. Freed in the timer's close callback.
 *   conn    — one socket: a uv_tcp (reading for as long as it lives, so an idle socket notices the
 *             peer's close) and a uv_timer (connect timeout, then idle timeout). Freed when both
 *             handles have closed. A socket being connected belongs to the call that opened it.
 *             An https socket also owns an SSL object over two memory BIOs (freed with the conn).
 *
 * The llhttp callbacks only copy bytes into the call and set flags; every decision is taken after
 * llhttp_execute() returns (on_message_complete pauses the parser).
 *
 * TLS never touches the socket: ciphertext read by libuv is written into the SSL's read BIO, the
 * handshake and SSL_read() run over it, and whatever OpenSSL put in the write BIO is taken out and
 * handed to uv_write() (tls_flush). Decrypted bytes go through the same path as plain ones
 * (conn_input). The SSL_CTX is made on the first https call (or at creation when ca_file is set);
 * sessions are remembered per host:port (a small cache in the client, fed by OpenSSL's new-session
 * callback, so TLS 1.3 tickets that arrive after the handshake count) and offered on new sockets.
 *
 * Response memory: every call accounts the capacity of its response buffers (header bytes, header
 * table, body) in the client's total, which may not pass max_total_response_bytes; buffers grow by
 * half (never past the announced Content-Length or the per-call limit) and are freed as soon as
 * the call's outcome is delivered, failed or cancelled.
 */
#include "http_client.h"

#include <assert.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "str.h"

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_MAX_CONNS 8
#define DEFAULT_IDLE_TIMEOUT_MS 30000
#define DEFAULT_MAX_RESPONSE ((size_t)16 << 20)
#define DEFAULT_MAX_TOTAL_RESPONSE ((size_t)64 << 20)
#define READ_BUF_SIZE 65536
/* plaintext of one read: at most the read itself plus one partial record left from before */
#define PLAIN_BUF_SIZE (READ_BUF_SIZE + 20480)
#define TLS_SESSION_CACHE 64 /* hosts whose last TLS session is remembered */
#define MAX_METHOD_LEN 32
#define MAX_HOST_LEN 255

typedef struct sh_http_conn sh_http_conn;
typedef struct sh_http_host sh_http_host;

/* A growable byte buffer. */
typedef struct {
    char *p;    /* its room in the call until it outgrows it, then the heap */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} sh_buf;

/* The serialized request, shared by its call (kept for a retry) and a pending write. */
typedef struct {
    unsigned refs; /* holders: the call, and the connection while a write is pending */
    const char *body;              /* a borrowed body (opts.body_release), or NULL */
    size_t body_len;
    void (*release)(void *arg);    /* called when the last reference goes */
    void *release_arg;
    size_t len;    /* bytes in data */
    char data[];   /* request head followed by the body (unless borrowed) */
} sh_http_blob;

/* A response header as offsets into the call's header buffer (which moves as it grows). */
typedef struct {
    size_t name_off, name_len;
    size_t value_off, value_len;
} sh_hdr_ref;

/* A getaddrinfo request; outlives its connection when the connection closes first. */
typedef struct {
    uv_getaddrinfo_t req; /* req.data unused */
    sh_http_conn *conn;   /* NULL once the connection gave up on it */
} sh_http_resolve;

enum call_state {
    CALL_QUEUED,     /* in its host's wait queue */
    CALL_ACTIVE,     /* bound to a connection (resolving, connecting or exchanging) */
    CALL_DONE,       /* outcome known, delivery timer armed */
    CALL_DELIVERING, /* inside the user callback */
    CALL_GONE,       /* timer closing; freed in its close callback */
};

enum conn_state {
    CONN_RESOLVING,  /* getaddrinfo pending */
    CONN_CONNECTING, /* uv_tcp_connect pending */
    CONN_HANDSHAKING, /* https: TLS handshake running (still under the connect timeout) */
    CONN_BUSY,       /* request sent or being sent, response being read */
    CONN_IDLE,       /* in the host's idle list */
    CONN_CLOSING,    /* detached from host and call; handles closing */
};

/* A remembered TLS session. */
typedef struct {
    char key[MAX_HOST_LEN + 8]; /* "name:port"; "" when the slot is free */
    SSL_SESSION *sess;          /* one reference, owned here */
    uint64_t used;              /* client->tls_clock when stored or last offered */
} sh_tls_session;

/* A chunk of ciphertext being written. */
typedef struct {
    uv_write_t req;     /* req.data: the connection */
    size_t len;
    char data[];
} sh_tls_write;

struct sh_http_client {
    uv_loop_t *loop;            /* the loop everything runs on */
    sh_http_client_opts opts;   /* with defaults applied; opts.ca_file is our own copy */
    uv_timer_t own;             /* never started: keeps close asynchronous */
    size_t nhandles;            /* handles initialised and not yet closed */
    int closing;                /* sh_http_client_close() was called */
    void (*done)(void *);       /* close completion */
    void *done_arg;             /* its argument */
    sh_http_host *hosts;        /* every host with sockets or waiters */
    sh_http_call *calls;        /* every call whose timer is open */
    sh_http_conn *conns;        /* every connection not yet freed */
    size_t inflight;            /* calls queued or active */
    size_t resp_total;          /* response buffer capacity held by all calls */
    SSL_CTX *tls;               /* NULL until the first https call (or ca_file) */
    size_t tls_handshakes;      /* completed handshakes */
    size_t tls_resumed;         /* of which resumed a session */
    uint64_t tls_clock;         /* ages the session cache */
    sh_tls_session sessions[TLS_SESSION_CACHE];
    char rbuf[READ_BUF_SIZE];   /* read buffer: each read is consumed before the next */
    char pbuf[PLAIN_BUF_SIZE];  /* decrypted bytes of one read, consumed before the next */
};

struct sh_http_host {
    sh_http_host *next;           /* in client->hosts */
    sh_http_client *client;       /* owner */
    char *name;                   /* lowercased, without IPv6 brackets, NUL-terminated */
    unsigned port;                /* TCP port */
    int tls;                      /* https: a separate pool from http on the same host:port */
    int literal;                  /* name is an IP address: addr is filled, no resolution */
    struct sockaddr_storage addr; /* when literal */
    size_t nconns;                /* attached sockets: resolving, connecting, busy, idle */
    sh_http_conn *idle;           /* idle sockets, most recently used first */
    sh_http_call *qhead, *qtail;  /* waiting calls, FIFO */
    int pumping;                  /* inside host_pump(): no re-entry, no free */
};

struct sh_http_call {
    sh_http_client *client;       /* owner */
    sh_http_call *prev, *next;    /* in client->calls */
    sh_http_call *qprev, *qnext;  /* in host wait queue when CALL_QUEUED */
    sh_http_host *host;           /* while queued or active */
    sh_http_conn *conn;           /* while active */
    uv_timer_t timer;             /* total deadline, then delivery */
    enum call_state state;        /* see enum */
    sh_http_cb cb;                /* user callback */
    void *arg;                    /* its argument */
    int err;                      /* outcome once CALL_DONE */
    char errbuf[128];             /* "tls: <reason>" for SH_HTTP_ETLS */
    sh_http_blob *req;            /* serialized request */
    uint64_t connect_timeout_ms;  /* for a socket opened for this call */
    int is_head;                  /* HEAD: response has no body */
    int idempotent;               /* GET, HEAD, OPTIONS, TRACE, PUT, DELETE: may be resent */
    int no_reuse;                 /* caller asked for Connection: close */
    int retried;                  /* already retried once on a fresh socket */
    int want_fresh;               /* the next socket must be a new one */
    /* response being parsed */
    int status;                   /* status code of the final response */
    int interim;                  /* current message is a 1xx, to be dropped */
    int headers_done;             /* final headers seen: further header callbacks are trailers */
    int in_field;                 /* a header name is being received */
    sh_buf hbuf;                  /* header names and values */
    sh_hdr_ref *hdrs;             /* headers, offsets into hbuf */
    size_t nhdrs, hcap;           /* used and allocated entries of hdrs */
    sh_buf body;                  /* response body; capacity always one past len (the NUL) */
    size_t resp_bytes;            /* accounted toward max_response_bytes */
    uint64_t body_hint;           /* announced Content-Length, 0 when unknown */
    size_t held;                  /* heap capacity of hbuf, hdrs and body: in client->resp_total */
    /* where hbuf, hdrs and body start: the usual response fits, with no malloc; a buffer that
     * outgrows its room moves to the heap, where its capacity is accounted (held). Sized so that
     * the whole call is 1032 bytes at most, the largest allocation malloc's tcache serves fast */
    sh_hdr_ref hdrs_small[6];
    char hbuf_small[192];
    char body_small[128];
};

struct sh_http_conn {
    sh_http_client *client;       /* owner */
    sh_http_conn *prev, *next;    /* in client->conns */
    sh_http_conn *inext;          /* in host->idle when CONN_IDLE */
    sh_http_host *host;           /* NULL once closing */
    sh_http_call *call;           /* while resolving, connecting or busy */
    enum conn_state state;        /* see enum */
    uv_tcp_t tcp;                 /* the socket */
    uv_timer_t timer;             /* connect timeout, then idle timeout */
    int handles;                  /* of tcp and timer, not yet closed */
    int tcp_open;                 /* tcp initialised and uv_close not yet called */
    int reconnect;                /* tcp closing to try the next resolved address */
    uv_connect_t creq;            /* pending connect */
    uv_write_t wreq;              /* pending write */
    sh_http_blob *wblob;          /* the blob being written, a reference */
    sh_http_resolve *resolve;     /* pending resolution */
    struct addrinfo *ai;          /* resolution result, until connected */
    struct addrinfo *ai_next;     /* next address to try */
    int last_err;                 /* last libuv connect error */
    llhttp_t parser;              /* response parser for the current call */
    int reused;                   /* has completed a response before */
    size_t rx_bytes;              /* bytes received for the current call */
    int msg_done;                 /* parser saw the end of the final response */
    int keep_alive;               /* and it allows reuse */
    int too_large;                /* a parser callback hit max_response_bytes */
    int over_budget;              /* ... or max_total_response_bytes */
    int nomem;                    /* a parser callback ran out of memory */
    SSL *ssl;                     /* https only; owns rbio and wbio */
    BIO *rbio;                    /* ciphertext received, for OpenSSL to read */
    BIO *wbio;                    /* ciphertext OpenSSL produced, to be written */
    size_t tls_writes;            /* sh_tls_write chunks in flight */
    int tls_closed;               /* the peer sent close_notify */
    int peer_closed;              /* the socket read EOF or an error: nothing more is written */
    int tls_failed;               /* a TLS error: its session is not to be resumed */
};

_Static_assert(sizeof(void *) != 8 || sizeof(sh_http_call) <= 1032, "a call outgrows the tcache");

static void host_pump(sh_http_host *h);
static void conn_close(sh_http_conn *conn);
static void conn_send(sh_http_conn *conn);
static void conn_connect(sh_http_conn *conn, const struct sockaddr *addr);
static void conn_connect_next(sh_http_conn *conn);
static void conn_resolve(sh_http_conn *conn);
static void conn_io_failed(sh_http_conn *conn, int uverr, int writing);

/* The request is still being written (a plain write or a TLS record in flight). */
static int conn_writing(const sh_http_conn *conn) { return conn->wblob || conn->tls_writes; }
static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void conn_tcp_closed(uv_handle_t *handle);
static void call_finish(sh_http_call *call, int err);
static void conn_fail(sh_http_conn *conn, int err);
static void conn_input(sh_http_conn *conn, const char *data, size_t n);
static void conn_input_end(sh_http_conn *conn, int uverr);
static void conn_io_error(sh_http_conn *conn, int err);
static int tls_flush(sh_http_conn *conn);
static int tls_conn_start(sh_http_conn *conn);
static void tls_handshake(sh_http_conn *conn);
static void tls_drain(sh_http_conn *conn);
static void tls_reason(sh_http_conn *conn, int se, char *buf, size_t n);
static void conn_fail_tls(sh_http_conn *conn, const char *reason);

/* ---- small helpers ---------------------------------------------------------------------- */

/* Drops one reference; frees on the last. Accepts NULL. */
static void blob_unref(sh_http_blob *b)
{
    if (b && --b->refs == 0) {
        if (b->release)
            b->release(b->release_arg);
        free(b);
    }
}

/* 1 when c may appear in an HTTP token (method, header name). */
static int is_tchar(unsigned char c)
{
    /* bit c of these: 0-9 A-Z a-z and !#$%&'*+-.^_`|~ */
    static const uint64_t map[2] = {0x03ff6cfa00000000u, 0x57ffffffc7fffffeu};
    return c < 128 && (map[c >> 6] >> (c & 63) & 1);
}

/* 1 when s[0..n) is a non-empty token. */
static int is_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

/* 1 when s[0..n) may be a header value: no CR, LF or NUL (they would split the request). */
static int is_header_value(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

/* 1 when s[0..n) is name, in any case. */
static int name_is(const char *s, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp(s, name, n) == 0;
}

/* 1 when header h is named name (case-insensitive). */
static int hdr_is(const sh_http_hdr *h, const char *name)
{
    return name_is(h->name, h->name_len, name);
}

/* Contract in http_client.h. */
const char *sh_http_strerror(int err)
{
    switch (err) {
    case 0: return "ok";
    case SH_HTTP_EINVAL: return "invalid argument";
    case SH_HTTP_EUNSUPPORTED: return "unsupported";
    case SH_HTTP_ENOMEM: return "out of memory";
    case SH_HTTP_EREFUSED: return "refused";
    case SH_HTTP_ETIMEDOUT: return "timeout";
    case SH_HTTP_EBADRESPONSE: return "bad response";
    case SH_HTTP_ECLOSED: return "closed";
    case SH_HTTP_ERESOLVE: return "resolve failed";
    case SH_HTTP_ETOOLARGE: return "too large";
    case SH_HTTP_ETLS: return "tls: failed";
    default: return "unknown error";
    }
}

/* ---- URL and request serialisation ------------------------------------------------------ */

/* A parsed URL; pointers into the caller's string. */
typedef struct {
    const char *host; /* without brackets */
    size_t host_len;
    int ipv6;         /* host was [bracketed] */
    int tls;          /* https */
    unsigned port;
    const char *path; /* from the first '/' or '?', up to '#' or the end; may be empty */
    size_t path_len;
} sh_url;

/* Parses http[s]://host[:port][/path][?query][#fragment] into *u. Returns 0,
 * SH_HTTP_EUNSUPPORTED for another scheme or user info, SH_HTTP_EINVAL for anything malformed. */
static int url_parse(const char *url, sh_url *u)
{
    const char *p = strstr(url, "://");
    if (!p || p == url)
        return SH_HTTP_EINVAL;
    for (const char *s = url; s < p; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '+' || *s == '-' || *s == '.'))
            return SH_HTTP_EINVAL;
    int tls = p - url == 5 && strncasecmp(url, "https", 5) == 0;
    if (!tls && (p - url != 4 || strncasecmp(url, "http", 4) != 0))
        return SH_HTTP_EUNSUPPORTED; /* ws, ftp... */
    const char *auth = p + 3;
    const char *end = auth + strcspn(auth, "/?#");
    if (memchr(auth, '@', (size_t)(end - auth)))
        return SH_HTTP_EUNSUPPORTED; /* user info */
    const char *hend, *q;
    memset(u, 0, sizeof *u);
    u->tls = tls;
    if (*auth == '[') {
        hend = memchr(auth, ']', (size_t)(end - auth));
        if (!hend)
            return SH_HTTP_EINVAL;
        u->host = auth + 1;
        u->ipv6 = 1;
        q = hend + 1;
        if (q != end && *q != ':')
            return SH_HTTP_EINVAL;
    } else {
        hend = memchr(auth, ':', (size_t)(end - auth));
        if (!hend)
            hend = end;
        u->host = auth;
        q = hend;
    }
    u->host_len = (size_t)(hend - u->host);
    if (u->host_len == 0 || u->host_len > MAX_HOST_LEN)
        return SH_HTTP_EINVAL;
    for (size_t i = 0; i < u->host_len; i++) {
        unsigned char c = (unsigned char)u->host[i];
        int ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 c == '-' || c == '.' || c == '_' || (u->ipv6 && (c == ':' || c == '%'));
        if (!ok)
            return SH_HTTP_EINVAL;
    }
    u->port = tls ? 443 : 80;
    if (q != end) { /* ":port", possibly empty (RFC 3986: default port) */
        q++;
        if (q != end) {
            unsigned long port = 0;
            for (; q < end; q++) {
                if (*q < '0' || *q > '9')
                    return SH_HTTP_EINVAL;
                port = port * 10 + (unsigned long)(*q - '0');
                if (port > 65535)
                    return SH_HTTP_EINVAL;
            }
            if (port == 0)
                return SH_HTTP_EINVAL;
            u->port = (unsigned)port;
        }
    }
    u->path = end;
    u->path_len = strcspn(end, "#");
    for (size_t i = 0; i < u->path_len; i++) {
        unsigned char c = (unsigned char)u->path[i];
        if (c < 0x20 || c == 0x7f)
            return SH_HTTP_EINVAL; /* control bytes would let the URL rewrite the request */
    }
    return 0;
}

/* The most bytes request_head() writes for o: every path byte escaped, every optional line. */
static size_t request_head_max(const sh_http_opts *o, const char *method, const sh_url *u)
{
    size_t n = strlen(method) + 2 + 3 * u->path_len + sizeof " HTTP/1.1\r\n" +
               sizeof "Host: []:65535\r\n" + u->host_len +
               sizeof "Content-Length: 18446744073709551615\r\n" +
               sizeof "Connection: keep-alive\r\n" + 2;
    for (size_t i = 0; i < o->nheaders; i++)
        n += o->headers[i].name_len + o->headers[i].value_len + 4;
    return n;
}

/* Writes the request head of o (already validated) at w, which has room for request_head_max()
 * bytes, and returns its length. The target is path+query ("/" when empty) with spaces and
 * non-ASCII bytes percent-encoded. */
static size_t request_head(const sh_http_opts *o, const char *method, const sh_url *u,
                           const unsigned has[4], char *w)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
#define PUT(s, len)                                                                            \
    do {                                                                                       \
        size_t put_len_ = (len);                                                               \
        if (put_len_)                                                                          \
            memcpy(w + n, (s), put_len_);                                                      \
        n += put_len_;                                                                         \
    } while (0)
#define PUTS(lit) PUT(lit, sizeof lit - 1)
    char num[24];
    PUT(method, strlen(method));
    PUTS(" ");
    if (u->path_len == 0 || u->path[0] == '?')
        PUTS("/");
    size_t run = 0; /* bytes of the path that go as they are, not yet written */
    for (size_t i = 0; i < u->path_len; i++) {
        unsigned char c = (unsigned char)u->path[i];
        if (c != ' ' && c < 0x80) {
            run++;
            continue;
        }
        PUT(u->path + i - run, run);
        run = 0;
        char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
        PUT(esc, 3);
    }
    PUT(u->path + u->path_len - run, run);
    PUTS(" HTTP/1.1\r\n");
    if (!has[0]) {
        PUTS("Host: ");
        if (u->ipv6)
            PUTS("[");
        PUT(u->host, u->host_len);
        if (u->ipv6)
            PUTS("]");
        if (u->port != (u->tls ? 443u : 80u)) {
            num[0] = ':';
            PUT(num, 1 + sh_fmt_u64(num + 1, u->port));
        }
        PUTS("\r\n");
    }
    for (size_t i = 0; i < o->nheaders; i++) {
        const sh_http_hdr *h = &o->headers[i];
        PUT(h->name, h->name_len);
        PUTS(": ");
        PUT(h->value, h->value_len);
        PUTS("\r\n");
    }
    if (!has[1] && has[3]) {
        PUTS("Content-Length: ");
        PUT(num, sh_fmt_u64(num, o->body_len));
        PUTS("\r\n");
    }
    if (!has[2])
        PUTS("Connection: keep-alive\r\n");
    PUTS("\r\n");
#undef PUTS
#undef PUT
    return n;
}

/* Serialises the request of o (already validated) into a new blob with one reference.
 * Returns 0 or SH_HTTP_ENOMEM. Sets *no_reuse when the caller sent Connection: close. */
static int request_build(const sh_http_opts *o, const char *method, const sh_url *u,
                         sh_http_blob **out, int *no_reuse)
{
    /* given: Host; Content-Length (Transfer-Encoding is refused); Connection. Then: a length
     * is sent */
    unsigned has[4] = {0, 0, 0, 0};
    has[3] = o->body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
             strcmp(method, "PATCH") == 0;
    *no_reuse = 0;
    for (size_t i = 0; i < o->nheaders; i++) {
        const sh_http_hdr *h = &o->headers[i];
        has[0] |= hdr_is(h, "host");
        has[1] |= hdr_is(h, "content-length");
        if (hdr_is(h, "connection")) {
            has[2] = 1;
            for (size_t k = 0; k + 5 <= h->value_len; k++)
                if (strncasecmp(h->value + k, "close", 5) == 0)
                    *no_reuse = 1;
        }
    }
    size_t max = request_head_max(o, method, u);
    sh_http_blob *blob = NULL;
    size_t copied = o->body_release ? 0 : o->body_len;
    if (max <= SIZE_MAX - sizeof *blob - copied)
        blob = malloc(sizeof *blob + max + copied);
    if (!blob)
        return SH_HTTP_ENOMEM;
    *blob = (sh_http_blob){.refs = 1};
    size_t len = request_head(o, method, u, has, blob->data);
    assert(len <= max);
    blob->len = len + copied;
    if (copied)
        memcpy(blob->data + len, o->body, copied);
    if (o->body_release && o->body_len) {
        blob->body = o->body;
        blob->body_len = o->body_len;
    }
    /* the release goes with the blob (even for an empty body): from here the call owns it */
    blob->release = o->body_release;
    blob->release_arg = o->body_release_arg;
    *out = blob;
    return 0;
}

/* Checks o's method and headers. Returns 0 or SH_HTTP_EINVAL. */
static int opts_check(const sh_http_opts *o, const char *method)
{
    if (!is_token(method, strlen(method)) || strlen(method) > MAX_METHOD_LEN)
        return SH_HTTP_EINVAL;
    if (o->body_len > 0 && !o->body)
        return SH_HTTP_EINVAL;
    if (o->nheaders > 0 && !o->headers)
        return SH_HTTP_EINVAL;
    for (size_t i = 0; i < o->nheaders; i++) {
        const sh_http_hdr *h = &o->headers[i];
        if (!h->name || !is_token(h->name, h->name_len) || (h->value_len && !h->value) ||
            !is_header_value(h->value, h->value_len))
            return SH_HTTP_EINVAL;
        /* the caller's Content-Length is sent instead of ours: it must be the body's, or
         * the remote reads past the body into the next request on the socket, or waits */
        /* and the body is sent whole: the caller's Transfer-Encoding would have the remote
         * frame it in chunks (a forwarded "chunked" over a decoded body, say) and read what
         * follows a "0" chunk as the next request on the socket, whose answer would then
         * be read as the next call's */
        if (hdr_is(h, "transfer-encoding"))
            return SH_HTTP_EINVAL;
        if (hdr_is(h, "content-length")) {
            char num[24];
            size_t n = sh_fmt_u64(num, o->body_len);
            if (h->value_len != n || memcmp(h->value, num, n) != 0)
                return SH_HTTP_EINVAL;
        }
    }
    return 0;
}

int sh_http_opts_check(const sh_http_opts *o)
{
    return opts_check(o, o->method ? o->method : "GET");
}

/* ---- client handle accounting ----------------------------------------------------------- */

/* Called once per closed handle of this client; the last one after close frees it. */
static void client_handle_closed(sh_http_client *c)
{
    assert(c->nhandles > 0);
    if (--c->nhandles > 0)
        return;
    assert(c->closing);
    while (c->hosts) { /* normally none left: each is freed when emptied */
        sh_http_host *h = c->hosts;
        c->hosts = h->next;
        free(h->name);
        free(h);
    }
    for (size_t i = 0; i < TLS_SESSION_CACHE; i++)
        SSL_SESSION_free(c->sessions[i].sess);
    SSL_CTX_free(c->tls);
    free((char *)c->opts.ca_file);
    if (c->done)
        c->done(c->done_arg);
    free(c);
}

/* Close callback of the client's own handle. */
static void client_own_closed(uv_handle_t *handle)
{
    client_handle_closed(handle->data);
}

/* ---- hosts -------------------------------------------------------------------------------- */

/* Finds the host for u, creating it when missing. Returns NULL when out of memory. */
static sh_http_host *host_get(sh_http_client *c, const sh_url *u)
{
    char name[MAX_HOST_LEN + 1];
    for (size_t i = 0; i < u->host_len; i++) {
        char ch = u->host[i];
        name[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    name[u->host_len] = '\0';
    for (sh_http_host *h = c->hosts; h; h = h->next)
        if (h->port == u->port && h->tls == u->tls && strcmp(h->name, name) == 0)
            return h;
    sh_http_host *h = calloc(1, sizeof *h);
    if (!h || !(h->name = strdup(name))) {
        free(h);
        return NULL;
    }
    h->client = c;
    h->port = u->port;
    h->tls = u->tls;
    if (u->ipv6)
        h->literal = uv_ip6_addr(name, (int)u->port, (struct sockaddr_in6 *)&h->addr) == 0;
    else
        h->literal = uv_ip4_addr(name, (int)u->port, (struct sockaddr_in *)&h->addr) == 0;
    h->next = c->hosts;
    c->hosts = h;
    return h;
}

/* Frees h when it has no socket and no waiter (and is not being pumped). */
static void host_maybe_free(sh_http_host *h)
{
    if (h->pumping || h->nconns > 0 || h->qhead)
        return;
    sh_http_client *c = h->client;
    for (sh_http_host **pp = &c->hosts; *pp; pp = &(*pp)->next) {
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    }
    free(h->name);
    free(h);
}

/* Appends call to h's wait queue (at the head for a retry) and marks it queued. */
static void queue_push(sh_http_host *h, sh_http_call *call, int at_head)
{
    call->host = h;
    call->state = CALL_QUEUED;
    if (at_head) {
        call->qprev = NULL;
        call->qnext = h->qhead;
        if (h->qhead)
            h->qhead->qprev = call;
        else
            h->qtail = call;
        h->qhead = call;
    } else {
        call->qnext = NULL;
        call->qprev = h->qtail;
        if (h->qtail)
            h->qtail->qnext = call;
        else
            h->qhead = call;
        h->qtail = call;
    }
}

/* Unlinks call from h's wait queue. */
static void queue_remove(sh_http_host *h, sh_http_call *call)
{
    if (call->qprev)
        call->qprev->qnext = call->qnext;
    else
        h->qhead = call->qnext;
    if (call->qnext)
        call->qnext->qprev = call->qprev;
    else
        h->qtail = call->qprev;
    call->qprev = call->qnext = NULL;
}

/* Removes conn from h's idle list. */
static void idle_remove(sh_http_host *h, sh_http_conn *conn)
{
    for (sh_http_conn **pp = &h->idle; *pp; pp = &(*pp)->inext) {
        if (*pp == conn) {
            *pp = conn->inext;
            break;
        }
    }
    conn->inext = NULL;
}

/* ---- TLS ---------------------------------------------------------------------------------- */

static int tls_new_session_cb(SSL *ssl, SSL_SESSION *sess);

/* A TLS context for o: TLS 1.2 or later, the peer verified against ca_file or the system store
 * (unless tls_no_verify), sessions handed to tls_new_session_cb. Returns it, or NULL with a reason
 * in err. */
static SSL_CTX *tls_ctx_new(const sh_http_client_opts *o, char *err, size_t errsz)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle pooled sockets hold no buffers */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, tls_new_session_cb);
    FILE *f = o->ca_file ? fopen(o->ca_file, "r") : NULL;
    if (o->ca_file && !f) {
        snprintf(err, errsz, "cannot read %s: %s", o->ca_file, strerror(errno));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (f)
        fclose(f);
    /* without verification no trust is needed: the system store is not loaded (tens of ms) */
    int ok = o->ca_file          ? SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL)
             : o->tls_no_verify ? 1
                                : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok) {
        unsigned long e = ERR_peek_last_error();
        const char *why = e ? ERR_reason_error_string(e) : NULL;
        snprintf(err, errsz, "cannot load CA certificates from %s: %s",
                 o->ca_file ? o->ca_file : "the system store", why ? why : "unknown");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, o->tls_no_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* Makes c->tls from c->opts. Returns 0, or -1 with a reason in err. */
static int tls_ctx_make(sh_http_client *c, char *err, size_t errsz)
{
    c->tls = tls_ctx_new(&c->opts, err, errsz);
    return c->tls ? 0 : -1;
}

/* The session cache slot of h ("name:port"), or NULL. */
static sh_tls_session *tls_session_find(sh_http_client *c, const sh_http_host *h)
{
    char key[sizeof c->sessions[0].key];
    snprintf(key, sizeof key, "%s:%u", h->name, h->port);
    for (size_t i = 0; i < TLS_SESSION_CACHE; i++)
        if (c->sessions[i].sess && strcmp(c->sessions[i].key, key) == 0)
            return &c->sessions[i];
    return NULL;
}

/* OpenSSL has a new resumable session on ssl (after the handshake for TLS 1.2, with each ticket
 * for TLS 1.3): it replaces the one remembered for the host, or the least recently used one.
 * Returns 1 when the cache took sess's reference. */
static int tls_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    sh_http_conn *conn = SSL_get_app_data(ssl);
    if (!conn || !conn->host || !SSL_SESSION_is_resumable(sess))
        return 0;
    sh_http_client *c = conn->client;
    if (SSL_get_SSL_CTX(ssl) != c->tls)
        return 0; /* a handshake of the trust before a reload */
    sh_tls_session *slot = tls_session_find(c, conn->host);
    if (!slot) { /* a free slot, else the least recently used */
        slot = &c->sessions[0];
        for (size_t i = 0; i < TLS_SESSION_CACHE; i++) {
            if (!c->sessions[i].sess) {
                slot = &c->sessions[i];
                break;
            }
            if (c->sessions[i].used < slot->used)
                slot = &c->sessions[i];
        }
    }
    SSL_SESSION_free(slot->sess);
    snprintf(slot->key, sizeof slot->key, "%s:%u", conn->host->name, conn->host->port);
    slot->sess = sess;
    slot->used = ++c->tls_clock;
    return 1;
}

/* Forgets the session remembered for conn's host (its handshake failed). */
static void tls_session_drop(sh_http_conn *conn)
{
    sh_tls_session *slot = tls_session_find(conn->client, conn->host);
    if (slot) {
        SSL_SESSION_free(slot->sess);
        slot->sess = NULL;
        slot->key[0] = '\0';
    }
}

/* Why the last TLS operation on conn failed (se: its SSL_get_error, or 0), into buf. */
static void tls_reason(sh_http_conn *conn, int se, char *buf, size_t n)
{
    long v = SSL_get_verify_result(conn->ssl);
    if (!conn->client->opts.tls_no_verify && v != X509_V_OK) {
        snprintf(buf, n, "certificate verify failed (%s)", X509_verify_cert_error_string(v));
        return;
    }
    unsigned long e = ERR_peek_last_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    if (why)
        snprintf(buf, n, "%s", why);
    else if (se == SSL_ERROR_SYSCALL || se == SSL_ERROR_ZERO_RETURN)
        snprintf(buf, n, "connection closed during the handshake");
    else
        snprintf(buf, n, "protocol error");
}

/* Fails conn's call with SH_HTTP_ETLS and errstr "tls: <reason>"; or just closes conn. */
static void conn_fail_tls(sh_http_conn *conn, const char *reason)
{
    sh_debug(NULL, "http: tls with %s:%u failed: %s", conn->host->name, conn->host->port, reason);
    ERR_clear_error();
    conn->tls_failed = 1;
    if (conn->call)
        snprintf(conn->call->errbuf, sizeof conn->call->errbuf, "tls: %s", reason);
    conn_fail(conn, SH_HTTP_ETLS);
}

/* Gives a freshly connected https socket its SSL: memory BIOs, SNI for a name, the host name or
 * IP address to verify, and the host's last session. Returns 0, or -1 after failing the call. */
static int tls_conn_start(sh_http_conn *conn)
{
    sh_http_client *c = conn->client;
    sh_http_host *h = conn->host;
    char err[160];
    if (!c->tls && tls_ctx_make(c, err, sizeof err) < 0) {
        sh_error(NULL, "http: %s", err);
        conn_fail_tls(conn, err);
        return -1;
    }
    ERR_clear_error();
    SSL *ssl = SSL_new(c->tls);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (!ssl || !rbio || !wbio) {
        SSL_free(ssl);
        BIO_free(rbio);
        BIO_free(wbio);
        ERR_clear_error();
        conn_fail(conn, SH_HTTP_ENOMEM);
        return -1;
    }
    BIO_set_mem_eof_return(rbio, -1); /* empty means "more to come", not end of stream */
    SSL_set_bio(ssl, rbio, wbio);     /* ssl owns them now */
    conn->ssl = ssl;
    conn->rbio = rbio;
    conn->wbio = wbio;
    SSL_set_app_data(ssl, conn);
    SSL_set_connect_state(ssl);
    int ok = h->literal || SSL_set_tlsext_host_name(ssl, h->name);
    if (ok && !c->opts.tls_no_verify) {
        if (h->literal) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), h->name);
        } else {
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(ssl, h->name);
        }
    }
    if (!ok) {
        conn_fail_tls(conn, "cannot verify this host name or address");
        return -1;
    }
    sh_tls_session *slot = tls_session_find(c, h);
    if (slot && SSL_set_session(ssl, slot->sess) == 1)
        slot->used = ++c->tls_clock;
    ERR_clear_error();
    return 0;
}

/* A ciphertext chunk is written (or not). */
static void tls_write_cb(uv_write_t *req, int status)
{
    sh_http_conn *conn = req->data;
    free(req); /* the chunk starts with its request */
    conn->tls_writes--;
    if (status >= 0 || status == UV_ECANCELED || conn->state == CONN_CLOSING)
        return;
    conn_io_error(conn, status);
}

/* Writes out whatever OpenSSL left in conn's write BIO. Returns 0, SH_HTTP_ENOMEM or a libuv
 * error (the caller fails conn). */
static int tls_flush(sh_http_conn *conn)
{
    size_t n;
    while ((n = BIO_ctrl_pending(conn->wbio)) > 0) {
        if (n > (size_t)1 << 30)
            n = (size_t)1 << 30;
        sh_tls_write *w = malloc(sizeof *w + n);
        if (!w)
            return SH_HTTP_ENOMEM;
        int got = BIO_read(conn->wbio, w->data, (int)n);
        if (got <= 0) { /* a memory BIO with data pending always gives it */
            free(w);
            return SH_HTTP_ENOMEM;
        }
        w->len = (size_t)got;
        w->req.data = conn;
        uv_buf_t b = uv_buf_init(w->data, (unsigned)got);
        int rc = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &b, 1, tls_write_cb);
        if (rc < 0) {
            free(w);
            return rc;
        }
        conn->tls_writes++;
    }
    return 0;
}

/* A socket error, or a failure of tls_flush: out of memory fails the call; in the handshake any
 * other error is a TLS failure; otherwise the socket failed (and the call may be retried). */
static void conn_io_error(sh_http_conn *conn, int err)
{
    if (err == SH_HTTP_ENOMEM)
        conn_fail(conn, SH_HTTP_ENOMEM);
    else if (conn->state == CONN_HANDSHAKING)
        conn_fail_tls(conn, err == UV_EOF ? "connection closed during the handshake"
                                          : uv_strerror(err));
    else
        conn_io_failed(conn, err, conn_writing(conn));
}

/* Runs the handshake as far as the bytes received allow; once done, sends the call's request. */
static void tls_handshake(sh_http_conn *conn)
{
    char reason[96] = "";
    ERR_clear_error();
    int r = SSL_do_handshake(conn->ssl);
    int se = r == 1 ? SSL_ERROR_NONE : SSL_get_error(conn->ssl, r);
    if (r != 1 && se != SSL_ERROR_WANT_READ)
        tls_reason(conn, se, reason, sizeof reason);
    int rc = tls_flush(conn); /* the ClientHello, Finished, or our alert */
    if (reason[0]) {
        tls_session_drop(conn);
        conn_fail_tls(conn, reason);
        return;
    }
    if (rc < 0) {
        conn_io_error(conn, rc);
        return;
    }
    if (r != 1)
        return; /* wants more bytes */
    sh_http_client *c = conn->client;
    int resumed = SSL_session_reused(conn->ssl);
    c->tls_handshakes++;
    c->tls_resumed += resumed != 0;
    sh_debug(NULL, "http: tls with %s:%u established (%s, %s)", conn->host->name, conn->host->port,
             SSL_get_version(conn->ssl), resumed ? "resumed" : "full handshake");
    uv_timer_stop(&conn->timer);
    conn->state = CONN_BUSY;
    conn_send(conn);
}

/* Decrypts everything conn's read BIO holds and passes it on like plain bytes; then a close_notify
 * ends the stream and a TLS error fails the call (or drops an idle socket). */
static void tls_drain(sh_http_conn *conn)
{
    sh_http_client *c = conn->client;
    for (;;) {
        size_t got = 0;
        int end = 0; /* 1: close_notify, -1: error */
        char reason[96] = "";
        ERR_clear_error();
        while (got < sizeof c->pbuf) {
            size_t n = 0;
            if (SSL_read_ex(conn->ssl, c->pbuf + got, sizeof c->pbuf - got, &n) == 1) {
                got += n;
                continue;
            }
            int se = SSL_get_error(conn->ssl, 0);
            if (se == SSL_ERROR_ZERO_RETURN) {
                end = 1;
            } else if (se != SSL_ERROR_WANT_READ) {
                end = -1;
                tls_reason(conn, se, reason, sizeof reason);
            }
            break;
        }
        ERR_clear_error();
        int rc = tls_flush(conn); /* what reading may answer (a key update) */
        if (rc < 0) {
            conn_io_error(conn, rc);
            return;
        }
        if (got) {
            conn_input(conn, c->pbuf, got);
            if (conn->state == CONN_CLOSING)
                return;
        }
        if (end > 0) {
            conn->tls_closed = 1;
            conn_input_end(conn, UV_EOF);
            return;
        }
        if (end < 0) {
            if (conn->state == CONN_BUSY && conn->call)
                conn_fail_tls(conn, reason);
            else
                conn_close(conn);
            return;
        }
        if (got < sizeof c->pbuf)
            return; /* the BIO is empty but for a partial record */
    }
}

/* ---- connections --------------------------------------------------------------------------- */

/* Frees conn once both its handles have closed. */
static void conn_handle_closed(sh_http_conn *conn)
{
    assert(conn->handles > 0);
    if (--conn->handles > 0)
        return;
    sh_http_client *c = conn->client;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        c->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    uv_freeaddrinfo(conn->ai);
    blob_unref(conn->wblob);
    if (conn->ssl && !conn->tls_failed) /* else SSL_free marks its session not resumable */
        SSL_set_shutdown(conn->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(conn->ssl); /* and its BIOs */
    free(conn);
}

/* Close callback of a connection's timer. */
static void conn_timer_closed(uv_handle_t *handle)
{
    sh_http_conn *conn = handle->data;
    sh_http_client *c = conn->client;
    conn_handle_closed(conn);
    client_handle_closed(c);
}

/* Fails conn's call (if any) with err, which closes conn; or just closes conn. */
static void conn_fail(sh_http_conn *conn, int err)
{
    if (conn->call)
        call_finish(conn->call, err); /* detaches and closes conn */
    else
        conn_close(conn);
}

/* Binds call to conn and starts the exchange on an already connected socket. */
static void conn_assign(sh_http_conn *conn, sh_http_call *call)
{
    uv_timer_stop(&conn->timer);
    conn->state = CONN_BUSY;
    conn->call = call;
    call->conn = conn;
    call->state = CALL_ACTIVE;
    sh_debug(NULL, "http: reusing connection to %s:%u", conn->host->name, conn->host->port);
    conn_send(conn);
}

/* The connection timer: connect timeout while connecting, idle timeout while pooled. */
static void conn_timer_cb(uv_timer_t *t)
{
    sh_http_conn *conn = t->data;
    if (conn->state == CONN_IDLE) {
        sh_debug(NULL, "http: idle connection to %s:%u timed out", conn->host->name,
                 conn->host->port);
        conn_close(conn);
    } else if (conn->state == CONN_RESOLVING || conn->state == CONN_CONNECTING ||
               conn->state == CONN_HANDSHAKING) {
        sh_debug(NULL, "http: connect to %s:%u timed out%s", conn->host->name, conn->host->port,
                 conn->state == CONN_HANDSHAKING ? " in the TLS handshake" : "");
        conn_fail(conn, SH_HTTP_ETIMEDOUT);
    }
}

/* Opens a new socket for call on h (a slot is free). Any failure is reported through the call. */
static void conn_open(sh_http_host *h, sh_http_call *call)
{
    sh_http_client *c = h->client;
    sh_http_conn *conn = calloc(1, sizeof *conn);
    if (!conn) {
        call->state = CALL_ACTIVE;
        call->host = h;
        call_finish(call, SH_HTTP_ENOMEM);
        return;
    }
    conn->client = c;
    if (uv_tcp_init(c->loop, &conn->tcp) < 0) { /* only for a bad address family */
        free(conn);
        call->state = CALL_ACTIVE;
        call->host = h;
        call_finish(call, SH_HTTP_ENOMEM);
        return;
    }
    uv_timer_init(c->loop, &conn->timer);
    conn->tcp.data = conn->timer.data = conn->creq.data = conn->wreq.data = conn;
    conn->handles = 2;
    conn->tcp_open = 1;
    c->nhandles += 2;
    conn->next = c->conns;
    if (c->conns)
        c->conns->prev = conn;
    c->conns = conn;
    conn->host = h;
    h->nconns++;
    conn->call = call;
    call->conn = conn;
    call->host = h;
    call->state = CALL_ACTIVE;
    call->want_fresh = 0;
    uv_timer_start(&conn->timer, conn_timer_cb, call->connect_timeout_ms, 0);
    sh_debug(NULL, "http: opening connection to %s:%u", h->name, h->port);
    if (h->literal)
        conn_connect(conn, (const struct sockaddr *)&h->addr);
    else
        conn_resolve(conn);
}

/* Maps a libuv connect error to ours. */
static int connect_err(int uverr)
{
    return uverr == UV_ETIMEDOUT ? SH_HTTP_ETIMEDOUT : SH_HTTP_EREFUSED;
}

/* A connect attempt failed with uverr: try the next resolved address on a new socket, or fail. */
static void conn_connect_failed(sh_http_conn *conn, int uverr)
{
    conn->last_err = uverr;
    if (conn->ai_next) {
        /* the failed socket keeps its family and state: close it, reopen in conn_tcp_closed */
        conn->reconnect = 1;
        conn->tcp_open = 0;
        uv_close((uv_handle_t *)&conn->tcp, conn_tcp_closed);
        return;
    }
    sh_debug(NULL, "http: connect to %s:%u failed: %s", conn->host->name, conn->host->port,
             uv_strerror(uverr));
    conn_fail(conn, connect_err(uverr));
}

/* Connected (or not): start reading for good, then send the call's request. */
static void connect_cb(uv_connect_t *req, int status)
{
    sh_http_conn *conn = req->data;
    if (status == UV_ECANCELED || conn->state != CONN_CONNECTING)
        return; /* closed meanwhile */
    if (status < 0) {
        conn_connect_failed(conn, status);
        return;
    }
    uv_freeaddrinfo(conn->ai);
    conn->ai = conn->ai_next = NULL;
    uv_tcp_nodelay(&conn->tcp, 1);
    if (conn->host->tls) {
        conn->state = CONN_HANDSHAKING; /* the connect timeout runs on until it is done */
        if (tls_conn_start(conn) == 0)
            tls_handshake(conn);
        return;
    }
    uv_timer_stop(&conn->timer);
    conn->state = CONN_BUSY;
    conn_send(conn);
}

/* Starts connecting conn's socket to addr. Failures go through conn_connect_failed(). */
static void conn_connect(sh_http_conn *conn, const struct sockaddr *addr)
{
    conn->state = CONN_CONNECTING;
    int rc = uv_tcp_connect(&conn->creq, &conn->tcp, addr, connect_cb);
    if (rc < 0) {
        conn_connect_failed(conn, rc);
        return;
    }
    /* Read for the socket's whole life (an idle socket must notice the peer closing it),
     * from now: libuv reports the connect before any read, and a watcher that still wants
     * POLLIN when the connect's POLLOUT ends is modified in epoll, not added again (started
     * in connect_cb, every new connection cost a failing EPOLL_CTL_ADD, EEXIST, and a MOD). */
    rc = uv_read_start((uv_stream_t *)&conn->tcp, alloc_cb, read_cb);
    if (rc < 0)
        conn_connect_failed(conn, rc); /* closes the socket: connect_cb gets UV_ECANCELED */
}

/* Connects to the next usable resolved address, or fails the call. */
static void conn_connect_next(sh_http_conn *conn)
{
    while (conn->ai_next) {
        struct addrinfo *a = conn->ai_next;
        conn->ai_next = a->ai_next;
        if (a->ai_family == AF_INET || a->ai_family == AF_INET6) {
            conn_connect(conn, a->ai_addr);
            return;
        }
    }
    conn_fail(conn, conn->last_err ? connect_err(conn->last_err) : SH_HTTP_ERESOLVE);
}

/* Close callback of the socket: either reopen it for the next address, or account for it. */
static void conn_tcp_closed(uv_handle_t *handle)
{
    sh_http_conn *conn = handle->data;
    sh_http_client *c = conn->client;
    if (conn->reconnect && conn->state != CONN_CLOSING) {
        conn->reconnect = 0;
        if (uv_tcp_init(c->loop, &conn->tcp) == 0) {
            conn->tcp.data = conn;
            conn->tcp_open = 1;
            conn_connect_next(conn);
            return;
        }
        conn_handle_closed(conn); /* the timer is still open: conn survives */
        client_handle_closed(c);
        conn_fail(conn, connect_err(conn->last_err));
        return;
    }
    conn_handle_closed(conn);
    client_handle_closed(c);
}

/* Resolution done: connect to the first address, or fail the call. Frees the request. */
static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sh_http_resolve *r = (sh_http_resolve *)req;
    sh_http_conn *conn = r->conn;
    free(r);
    if (!conn) { /* the connection gave up on us */
        uv_freeaddrinfo(res);
        return;
    }
    conn->resolve = NULL;
    if (status < 0) {
        uv_freeaddrinfo(res);
        sh_debug(NULL, "http: resolving %s failed: %s", conn->host->name, uv_strerror(status));
        conn_fail(conn, SH_HTTP_ERESOLVE);
        return;
    }
    conn->ai = conn->ai_next = res;
    conn->last_err = 0;
    conn_connect_next(conn);
}

/* Starts resolving conn's host name. Failures go through the call. */
static void conn_resolve(sh_http_conn *conn)
{
    sh_http_resolve *r = calloc(1, sizeof *r);
    if (!r) {
        conn_fail(conn, SH_HTTP_ENOMEM);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    char port[16];
    snprintf(port, sizeof port, "%u", conn->host->port);
    r->conn = conn;
    conn->resolve = r;
    conn->state = CONN_RESOLVING;
    int rc = uv_getaddrinfo(conn->client->loop, &r->req, resolve_cb, conn->host->name, port,
                            &hints);
    if (rc < 0) {
        conn->resolve = NULL;
        free(r);
        conn_fail(conn, SH_HTTP_ERESOLVE);
    }
}

/* Detaches conn from its host (freeing the slot for a waiter) and closes its handles. conn must
 * have no call. Idempotent. May free conn's host. */
static void conn_close(sh_http_conn *conn)
{
    if (conn->state == CONN_CLOSING)
        return;
    assert(!conn->call);
    sh_http_host *h = conn->host;
    if (conn->state == CONN_IDLE) {
        idle_remove(h, conn);
        if (conn->ssl && !conn->tls_closed && !conn->peer_closed && SSL_shutdown(conn->ssl) >= 0)
            (void)tls_flush(conn); /* a close_notify, best effort */
        ERR_clear_error();
    }
    conn->state = CONN_CLOSING;
    conn->host = NULL;
    if (conn->resolve) {
        conn->resolve->conn = NULL; /* its callback frees it */
        uv_cancel((uv_req_t *)&conn->resolve->req);
        conn->resolve = NULL;
    }
    uv_timer_stop(&conn->timer);
    uv_close((uv_handle_t *)&conn->timer, conn_timer_closed);
    if (conn->tcp_open) {
        conn->tcp_open = 0;
        uv_close((uv_handle_t *)&conn->tcp, conn_tcp_closed);
    }
    h->nconns--;
    host_pump(h);
}

/* An established socket failed (read or write error, or EOF before any response byte). A call on
 * a reused socket that has received nothing is retried once on a fresh socket: the peer most
 * likely closed the idle socket as we sent. Otherwise the call fails with "closed". */
static void conn_io_failed(sh_http_conn *conn, int uverr, int writing)
{
    sh_http_call *call = conn->call;
    sh_http_host *h = conn->host;
    if (!call) {
        conn_close(conn);
        return;
    }
    /* A reused socket the remote had closed: the request goes again on a fresh one, once,
     * if it never got there (its write failed) or may be repeated (RFC 9110 §9.2.2): a
     * POST the remote read whole before closing may have been acted on */
    if (conn->reused && conn->rx_bytes == 0 && !call->retried && !conn->client->closing &&
        (writing || call->idempotent)) {
        sh_debug(NULL, "http: reused connection to %s:%u failed (%s), retrying on a new one",
                 h->name, h->port, uv_strerror(uverr));
        call->retried = 1;
        call->want_fresh = 1;
        call->conn = NULL;
        conn->call = NULL;
        queue_push(h, call, 1);
        conn_close(conn); /* frees a slot: host_pump() opens the fresh socket */
        return;
    }
    sh_debug(NULL, "http: connection to %s:%u failed: %s", h->name, h->port,
             uverr == UV_EOF ? "closed by peer" : uv_strerror(uverr));
    conn_fail(conn, SH_HTTP_ECLOSED);
}

/* The request is written (or not): drop the blob reference; a failure fails the socket. */
static void write_cb(uv_write_t *req, int status)
{
    sh_http_conn *conn = req->data;
    blob_unref(conn->wblob);
    conn->wblob = NULL;
    if (status == UV_ECANCELED || conn->state != CONN_BUSY)
        return;
    if (status < 0)
        conn_io_failed(conn, status, 1);
}

/* Every read lands in the client's buffer, consumed by read_cb before the next read. */
static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    sh_http_conn *conn = handle->data;
    (void)suggested;
    buf->base = conn->client->rbuf;
    buf->len = sizeof conn->client->rbuf;
}

/* ---- response parsing (llhttp callbacks: copy and flag, never free or decide) ------------- */

/* The call whose response parser p is. */
static sh_http_call *parser_call(llhttp_t *p) { return ((sh_http_conn *)p->data)->call; }

/* Accounts n more response bytes; -1 (parse error, too_large set) over the limit. */
static int account(llhttp_t *p, size_t n)
{
    sh_http_conn *conn = p->data;
    sh_http_call *call = conn->call;
    if (n > conn->client->opts.max_response_bytes - call->resp_bytes) {
        conn->too_large = 1;
        return -1;
    }
    call->resp_bytes += n;
    return 0;
}

/* Grows one of conn's call's response buffers (*p, *cap bytes; at first its room in the call,
 * `small`) to hold need bytes: by half, but never past hint when hint suffices (the announced
 * length, the per-call limit), and to exactly need when more would pass the client's budget. The
 * heap capacity is what is accounted: the total of every call's buffers never passes
 * max_total_response_bytes. Returns 0, or -1 with conn->over_budget or conn->nomem set (*p
 * unchanged). */
static int resp_grow(sh_http_conn *conn, void **p, size_t *cap, size_t need, size_t hint,
                     const void *small)
{
    sh_http_client *c = conn->client;
    if (need <= *cap)
        return 0;
    size_t had = *p == small ? 0 : *cap; /* heap bytes held now */
    size_t room = c->opts.max_total_response_bytes - c->resp_total;
    size_t want = *cap + *cap / 2;
    if (want < 256)
        want = 256;
    if (hint && hint >= need && want > hint)
        want = hint;
    if (want < need)
        want = need;
    if (want - had > room)
        want = need;
    if (want - had > room) {
        conn->over_budget = 1;
        return -1;
    }
    void *np = had ? realloc(*p, want) : malloc(want);
    if (!np) {
        conn->nomem = 1;
        return -1;
    }
    if (!had)
        memcpy(np, *p, *cap);
    c->resp_total += want - had;
    conn->call->held += want - had;
    *p = np;
    *cap = want;
    return 0;
}

/* Appends n response bytes (already accounted by account()) to b, one of conn's call's buffers,
 * keeping `spare` bytes free after them. Returns 0 or -1 (flags set by resp_grow). */
static int resp_append(sh_http_conn *conn, sh_buf *b, const char *data, size_t n, size_t spare,
                       size_t hint, const void *small)
{
    void *p = b->p;
    if (resp_grow(conn, &p, &b->cap, b->len + n + spare, hint, small) < 0)
        return -1;
    b->p = p;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* Points call's response buffers, empty, at their room in the call. */
static void call_buffers_small(sh_http_call *call)
{
    call->hbuf = (sh_buf){.p = call->hbuf_small, .cap = sizeof call->hbuf_small};
    call->body = (sh_buf){.p = call->body_small, .cap = sizeof call->body_small};
    call->hdrs = call->hdrs_small;
    call->hcap = sizeof call->hdrs_small / sizeof call->hdrs_small[0];
    call->nhdrs = 0;
}

/* Frees call's response buffers and gives their capacity back to the client's budget. */
static void call_release(sh_http_call *call)
{
    if (call->hbuf.p != call->hbuf_small)
        free(call->hbuf.p);
    if (call->body.p != call->body_small)
        free(call->body.p);
    if (call->hdrs != call->hdrs_small)
        free(call->hdrs);
    call_buffers_small(call);
    call->client->resp_total -= call->held;
    call->held = 0;
}

/* A piece of a header name: a new header starts after the previous name completed. */
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    sh_http_call *call = parser_call(p);
    if (call->headers_done)
        return 0; /* trailers: dropped */
    if (!call->in_field) {
        if (account(p, sizeof(sh_hdr_ref)) < 0)
            return -1;
        if (call->nhdrs == call->hcap) {
            void *h = call->hdrs;
            size_t bytes = call->hcap * sizeof(sh_hdr_ref);
            if (resp_grow(p->data, &h, &bytes, (call->nhdrs + 1) * sizeof(sh_hdr_ref), 0,
                          call->hdrs_small) < 0)
                return -1;
            call->hdrs = h;
            call->hcap = bytes / sizeof(sh_hdr_ref);
        }
        sh_hdr_ref *r = &call->hdrs[call->nhdrs++];
        r->name_off = call->hbuf.len;
        r->name_len = r->value_off = r->value_len = 0;
        call->in_field = 1;
    }
    if (account(p, len) < 0 || resp_append(p->data, &call->hbuf, at, len, 0, 0, call->hbuf_small) < 0)
        return -1;
    call->hdrs[call->nhdrs - 1].name_len += len;
    return 0;
}

/* The header name is complete: the next name piece starts a new header. An empty name (which
 * llhttp lets through after a lone CR ending the status line) makes the response bad. */
static int on_header_field_complete(llhttp_t *p)
{
    sh_http_call *call = parser_call(p);
    if (!call->headers_done && (!call->in_field || call->hdrs[call->nhdrs - 1].name_len == 0))
        return -1;
    call->in_field = 0;
    return 0;
}

/* A piece of the current header's value. */
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    sh_http_call *call = parser_call(p);
    if (call->headers_done || call->nhdrs == 0)
        return 0;
    sh_hdr_ref *r = &call->hdrs[call->nhdrs - 1];
    if (r->value_len == 0)
        r->value_off = call->hbuf.len;
    if (account(p, len) < 0 || resp_append(p->data, &call->hbuf, at, len, 0, 0, call->hbuf_small) < 0)
        return -1;
    r->value_len += len;
    return 0;
}

/* Returns 1 (no body) for HEAD, 1xx, 204 and 304, which llhttp cannot all know by itself. A
 * Content-Length over what is left of max_response_bytes fails at once. */
static int on_headers_complete(llhttp_t *p)
{
    sh_http_conn *conn = p->data;
    sh_http_call *call = conn->call;
    int status = llhttp_get_status_code(p);
    if (status / 100 == 1 && status != 101) {
        call->interim = 1;
        return 1;
    }
    call->status = status;
    call->headers_done = 1;
    if (call->is_head || status == 204 || status == 304)
        return 1;
    if (p->flags & F_CONTENT_LENGTH) {
        if (p->content_length > conn->client->opts.max_response_bytes - call->resp_bytes) {
            conn->too_large = 1;
            return -1;
        }
        call->body_hint = p->content_length + 1; /* and the NUL */
    }
    return 0;
}

/* A piece of the body (already de-chunked). */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    sh_http_conn *conn = p->data;
    sh_http_call *call = conn->call;
    size_t hint = call->body_hint ? call->body_hint : conn->client->opts.max_response_bytes + 1;
    if (account(p, len) < 0 || resp_append(conn, &call->body, at, len, 1, hint, call->body_small) < 0)
        return -1;
    return 0;
}

/* A chunk's size line is in: a chunk that cannot fit max_response_bytes fails now, as a
 * Content-Length over it does, not once its bytes have come (or at the timeout, when they never
 * come). */
static int on_chunk_header(llhttp_t *p)
{
    sh_http_conn *conn = p->data;
    if (p->content_length > conn->client->opts.max_response_bytes - conn->call->resp_bytes) {
        conn->too_large = 1;
        return -1;
    }
    return 0;
}

/* The end of a message: a 1xx is forgotten, a final response pauses the parser. */
static int on_message_complete(llhttp_t *p)
{
    sh_http_conn *conn = p->data;
    sh_http_call *call = conn->call;
    if (call->interim) {
        call->interim = 0;
        call->nhdrs = 0;
        call->hbuf.len = 0;
        call->in_field = 0;
        return 0;
    }
    conn->msg_done = 1;
    conn->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
};

/* ---- the exchange --------------------------------------------------------------------------- */

/* Clears the response state of call, for a first attempt or a retry. */
static void call_reset_response(sh_http_call *call)
{
    call->status = 0;
    call->interim = call->headers_done = call->in_field = 0;
    call->hbuf.len = 0;
    call->nhdrs = 0;
    call->body.len = 0;
    call->resp_bytes = 0;
    call->body_hint = 0;
}

/* ---- the usual response, parsed without llhttp ---------------------------------------------- */

#define FAST_MAX_HDRS 16 /* a response with more goes to llhttp */

/* 1 when c may be in a reason phrase or header value the fast path takes: visible ASCII, SP, HTAB
 * (no obs-text, no control byte: those go to llhttp). */
static int fast_vchar(unsigned char c) { return (c >= 0x20 && c < 0x7f) || c == '\t'; }

/* The usual response, whole in data[0..n), the first bytes read for conn's call: "HTTP/1.1", a
 * status 200..599 but 204 and 304, at most FAST_MAX_HDRS headers of plain visible ASCII (values
 * neither empty nor ending in white space) among them exactly one Content-Length, no
 * Transfer-Encoding, Upgrade, or Connection but "keep-alive", then exactly that many body bytes,
 * within max_response_bytes (the header lines are accounted whole) and the budget. Such a
 * response is parsed here (llhttp's state machine and callbacks cost several times more): the
 * header lines are copied in one piece, the names and values being offsets into it, and the call
 * is complete: returns 0. Anything else returns -1 with the call's response state as it was, for
 * llhttp to parse (and accept or refuse) from the first byte. */
static int fast_response(sh_http_conn *conn, const char *data, size_t n)
{
    sh_http_call *call = conn->call;
    const char *p = data + 9, *end = data + n;
    if (call->is_head || n < 19 || memcmp(data, "HTTP/1.1 ", 9) != 0 || p[0] < '2' ||
        p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9' || p[3] != ' ')
        return -1;
    int status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (status == 204 || status == 304)
        return -1;
    for (p += 4; p < end && fast_vchar((unsigned char)*p); p++)
        ;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return -1;
    p += 2;
    sh_http_hdr h[FAST_MAX_HDRS];
    const char *block = p; /* the header lines, copied whole: names and values point into it */
    size_t nh = 0;
    int has_len = 0;
    uint64_t clen = 0;
    for (;;) {
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            p += 2;
            break;
        }
        if (nh == FAST_MAX_HDRS)
            return -1;
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        if (p == name || p == end || *p != ':')
            return -1;
        size_t name_len = (size_t)(p - name);
        for (p++; p < end && (*p == ' ' || *p == '\t'); p++)
            ;
        const char *value = p;
        while (p < end && fast_vchar((unsigned char)*p))
            p++;
        if (p == value || p[-1] == ' ' || p[-1] == '\t' || end - p < 2 || p[0] != '\r' ||
            p[1] != '\n')
            return -1;
        size_t value_len = (size_t)(p - value);
        p += 2;
        /* the names that change how the message ends or the socket's fate */
        if (name_is(name, name_len, "content-length")) {
            if (has_len || value_len > 15)
                return -1;
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9')
                    return -1;
                clen = clen * 10 + (uint64_t)(value[i] - '0');
            }
            has_len = 1;
        } else if (name_is(name, name_len, "transfer-encoding") ||
                   name_is(name, name_len, "upgrade") ||
                   name_is(name, name_len, "proxy-connection") ||
                   (name_is(name, name_len, "connection") &&
                    !name_is(value, value_len, "keep-alive"))) {
            return -1;
        }
        h[nh++] = (sh_http_hdr){name, name_len, value, value_len};
    }
    size_t block_len = (size_t)(p - block), bytes = block_len + nh * sizeof(sh_hdr_ref);
    if (!has_len || clen != (uint64_t)(end - p))
        return -1;
    sh_http_client *c = conn->client;
    if (bytes + clen > c->opts.max_response_bytes - call->resp_bytes)
        return -1; /* llhttp says which limit, as it would */
    void *hp = call->hdrs;
    size_t cap = call->hcap * sizeof(sh_hdr_ref);
    if (resp_grow(conn, &hp, &cap, nh * sizeof(sh_hdr_ref), 0, call->hdrs_small) < 0)
        goto undo;
    call->hdrs = hp;
    call->hcap = cap / sizeof(sh_hdr_ref);
    size_t base = call->hbuf.len; /* 0: nothing came before */
    if (resp_append(conn, &call->hbuf, block, block_len, 0, 0, call->hbuf_small) < 0 ||
        resp_append(conn, &call->body, p, (size_t)clen, 1, (size_t)clen + 1, call->body_small) < 0)
        goto undo;
    for (size_t i = 0; i < nh; i++)
        call->hdrs[i] = (sh_hdr_ref){base + (size_t)(h[i].name - block), h[i].name_len,
                                     base + (size_t)(h[i].value - block), h[i].value_len};
    call->nhdrs = nh;
    call->resp_bytes += bytes + (size_t)clen;
    call->status = status;
    call->headers_done = 1;
    conn->msg_done = 1;
    conn->keep_alive = 1;
    return 0;
undo: /* out of budget or memory: llhttp meets it again and says so, from the buffers it would
       * have had (the header lines held more than llhttp keeps of them) */
    call_release(call);
    call_reset_response(call);
    conn->over_budget = conn->nomem = 0;
    return -1;
}

/* Sends conn's call's request on conn (connected, busy). Failures go through conn_io_failed(). */
static void conn_send(sh_http_conn *conn)
{
    sh_http_call *call = conn->call;
    assert(call && conn->state == CONN_BUSY && !conn->wblob);
    llhttp_init(&conn->parser, HTTP_RESPONSE, &parser_settings);
    conn->parser.data = conn;
    conn->rx_bytes = 0;
    conn->msg_done = conn->keep_alive = conn->too_large = conn->over_budget = conn->nomem = 0;
    call_reset_response(call);
    if (conn->ssl) { /* encrypted into the write BIO, then written from there */
        size_t written = 0;
        ERR_clear_error();
        if (SSL_write_ex(conn->ssl, call->req->data, call->req->len, &written) != 1 ||
            (call->req->body_len &&
             SSL_write_ex(conn->ssl, call->req->body, call->req->body_len, &written) != 1)) {
            char reason[96];
            tls_reason(conn, 0, reason, sizeof reason);
            conn_fail_tls(conn, reason);
            return;
        }
        int rc = tls_flush(conn);
        if (rc < 0)
            conn_io_error(conn, rc);
        return;
    }
    uv_buf_t buf[2];
    unsigned nbufs = call->req->body_len ? 2 : 1;
    buf[0] = uv_buf_init(call->req->data, (unsigned)call->req->len);
    buf[1] = uv_buf_init((char *)call->req->body, (unsigned)call->req->body_len);
    /* the usual request fits the socket at once: uv_write would, once done, queue a
     * no-op epoll_ctl (libuv stops POLLOUT it never started) */
    int n = uv_try_write((uv_stream_t *)&conn->tcp, buf, nbufs);
    if (n >= 0 && (size_t)n == call->req->len + call->req->body_len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_io_failed(conn, n, 1);
        return;
    }
    uv_buf_t *b = buf;
    if (n > 0) { /* the rest, from where the socket stopped */
        size_t k = (size_t)n;
        while (k >= b->len) {
            k -= b->len;
            b++;
            nbufs--;
        }
        b->base += k;
        b->len -= k;
    }
    conn->wblob = call->req;
    call->req->refs++;
    int rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, b, nbufs, write_cb);
    if (rc < 0) {
        blob_unref(conn->wblob);
        conn->wblob = NULL;
        conn_io_failed(conn, rc, 1);
    }
}

/* conn's call has its final response: hand the call its outcome, then pool or close conn. */
static void conn_complete(sh_http_conn *conn)
{
    sh_http_call *call = conn->call;
    sh_http_client *c = conn->client;
    int reuse = conn->keep_alive && !conn->wblob && !conn->tls_writes && !call->no_reuse &&
                call->status != 101 && !c->closing &&
                (!conn->ssl || SSL_get_SSL_CTX(conn->ssl) == c->tls); /* not of an old trust */
    conn->call = NULL;
    call->conn = NULL;
    call_finish(call, 0);
    conn->reused = 1;
    if (!reuse) {
        conn_close(conn);
        return;
    }
    sh_http_host *h = conn->host;
    conn->state = CONN_IDLE;
    conn->inext = h->idle;
    h->idle = conn;
    uv_timer_start(&conn->timer, conn_timer_cb, c->opts.idle_timeout_ms, 0);
    host_pump(h); /* a waiter takes it at once */
}

/* After llhttp_execute() returned err on data[0..n): complete, fail, or wait for more. */
static void conn_parsed(sh_http_conn *conn, llhttp_errno_t err, const char *data, size_t n)
{
    if (conn->msg_done) {
        const char *pos = llhttp_get_error_pos(&conn->parser);
        if (err != HPE_PAUSED || (pos && pos < data + n))
            conn->keep_alive = 0; /* bytes after the response: the socket is not clean */
        conn_complete(conn);
        return;
    }
    if (err == HPE_OK)
        return;
    if (conn->too_large) {
        sh_debug(NULL, "http: response from %s:%u over %zu bytes", conn->host->name,
                 conn->host->port, conn->client->opts.max_response_bytes);
        conn_fail(conn, SH_HTTP_ETOOLARGE);
        return;
    }
    if (conn->over_budget) {
        sh_warn(NULL, "http: response from %s:%u refused: responses in flight hold %zu bytes "
                "(max_total_response_bytes %zu)", conn->host->name, conn->host->port,
                conn->client->resp_total, conn->client->opts.max_total_response_bytes);
        conn_fail(conn, SH_HTTP_ETOOLARGE);
        return;
    }
    sh_debug(NULL, "http: bad response from %s:%u: %s (%s)", conn->host->name, conn->host->port,
             llhttp_errno_name(err), llhttp_get_error_reason(&conn->parser));
    conn_fail(conn, conn->nomem ? SH_HTTP_ENOMEM : SH_HTTP_EBADRESPONSE);
}

/* The peer ended the stream (EOF) or it broke (nread < 0) while conn was busy. */
static void conn_read_end(sh_http_conn *conn, ssize_t nread)
{
    if (nread == UV_EOF && conn->rx_bytes > 0) {
        /* completes a read-until-close body; over TLS only a close_notify can (else truncation) */
        llhttp_errno_t err = conn->ssl && !conn->tls_closed ? HPE_INVALID_EOF_STATE
                                                             : llhttp_finish(&conn->parser);
        if (conn->msg_done) {
            conn->keep_alive = 0;
            conn_complete(conn);
            return;
        }
        sh_debug(NULL, "http: %s:%u closed mid-response (%s)", conn->host->name,
                 conn->host->port, llhttp_errno_name(err));
        conn_fail(conn, SH_HTTP_ECLOSED);
        return;
    }
    conn_io_failed(conn, (int)nread, conn_writing(conn));
}

/* Response bytes (plain, or decrypted): feed the parser when busy, drop the socket when idle. */
static void conn_input(sh_http_conn *conn, const char *data, size_t n)
{
    if (conn->state != CONN_BUSY || !conn->call) {
        /* idle: bytes nobody asked for; the socket is done */
        sh_debug(NULL, "http: idle connection to %s:%u got unsolicited bytes", conn->host->name,
                 conn->host->port);
        conn_close(conn);
        return;
    }
    if (conn->rx_bytes == 0 && fast_response(conn, data, n) == 0) {
        conn->rx_bytes = n;
        conn_complete(conn);
        return;
    }
    conn->rx_bytes += n;
    llhttp_errno_t err = llhttp_execute(&conn->parser, data, n);
    conn_parsed(conn, err, data, n);
}

/* The stream ended (EOF, close_notify) or broke (uverr < 0) on an established socket. */
static void conn_input_end(sh_http_conn *conn, int uverr)
{
    if (conn->state != CONN_BUSY || !conn->call) {
        sh_debug(NULL, "http: idle connection to %s:%u closed by peer", conn->host->name,
                 conn->host->port);
        conn_close(conn);
        return;
    }
    conn_read_end(conn, uverr);
}

/* Bytes, EOF or an error on a socket. TLS bytes go through the handshake or tls_drain(). */
static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    sh_http_conn *conn = stream->data;
    if (nread == 0 || conn->state == CONN_CLOSING)
        return;
    if (nread < 0) {
        conn->peer_closed = 1;
        if (conn->state == CONN_HANDSHAKING)
            conn_io_error(conn, (int)nread);
        else
            conn_input_end(conn, (int)nread);
        return;
    }
    if (!conn->ssl) {
        conn_input(conn, buf->base, (size_t)nread);
        return;
    }
    if (BIO_write(conn->rbio, buf->base, (int)nread) != (int)nread) {
        conn_fail(conn, SH_HTTP_ENOMEM);
        return;
    }
    if (conn->state == CONN_HANDSHAKING) {
        tls_handshake(conn);
        if (conn->state != CONN_BUSY)
            return;
    }
    tls_drain(conn); /* records after the handshake (session tickets), or the response */
}

/* ---- the pool --------------------------------------------------------------------------------- */

/* Gives waiting calls of h an idle socket or a new one while slots are free; then frees h if it
 * is empty. Callers must not use h afterwards. Does nothing re-entrantly or while closing. */
static void host_pump(sh_http_host *h)
{
    sh_http_client *c = h->client;
    if (h->pumping)
        return;
    h->pumping = 1;
    sh_http_call *call;
    while (!c->closing && (call = h->qhead) != NULL) {
        if (h->idle && !call->want_fresh) {
            sh_http_conn *conn = h->idle;
            h->idle = conn->inext;
            conn->inext = NULL;
            queue_remove(h, call);
            conn_assign(conn, call);
        } else if (h->nconns < c->opts.max_conns_per_host) {
            queue_remove(h, call);
            conn_open(h, call);
        } else if (h->idle) {
            conn_close(h->idle); /* make room for a fresh socket (host_pump re-entry is a no-op) */
        } else {
            break;
        }
    }
    h->pumping = 0;
    host_maybe_free(h);
}

/* ---- calls ------------------------------------------------------------------------------------- */

/* Close callback of a call's timer: the call is freed here and only here. */
static void call_timer_closed(uv_handle_t *handle)
{
    sh_http_call *call = handle->data;
    sh_http_client *c = call->client;
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    blob_unref(call->req);
    call_release(call);
    free(call);
    client_handle_closed(c);
}

/* Takes a queued or active call out of the pool: out of its host's queue, or off its socket,
 * which is closed (a socket whose response completed was detached by conn_complete). */
static void call_unbind(sh_http_call *call)
{
    sh_http_host *h = call->host;
    assert(call->state == CALL_QUEUED || call->state == CALL_ACTIVE);
    call->client->inflight--;
    call->host = NULL;
    if (call->state == CALL_QUEUED) {
        queue_remove(h, call);
        host_maybe_free(h);
    } else if (call->conn) {
        sh_http_conn *conn = call->conn;
        call->conn = NULL;
        conn->call = NULL;
        conn_close(conn);
    }
}

/* Builds the response view and runs the user callback. */
static void call_deliver_cb(uv_timer_t *t)
{
    sh_http_call *call = t->data;
    sh_http_response res;
    sh_http_hdr few[16]; /* the usual response's headers: no malloc */
    sh_http_hdr *hdrs = few;
    int err = call->err;
    call->state = CALL_DELIVERING;
    if (err == 0 && call->nhdrs > sizeof few / sizeof few[0] &&
        !(hdrs = malloc(call->nhdrs * sizeof *hdrs)))
        err = SH_HTTP_ENOMEM;
    if (err == 0) {
        for (size_t i = 0; i < call->nhdrs; i++) {
            const sh_hdr_ref *r = &call->hdrs[i];
            hdrs[i].name = call->hbuf.p + r->name_off;
            hdrs[i].name_len = r->name_len;
            hdrs[i].value = r->value_len ? call->hbuf.p + r->value_off : "";
            hdrs[i].value_len = r->value_len;
        }
        res.status = call->status;
        res.headers = hdrs;
        res.nheaders = call->nhdrs;
        res.body_len = call->body.len;
        call->body.p[call->body.len] = '\0'; /* the body buffer always has room for it */
        res.body = call->body.p;
    }
    const char *errstr = err == SH_HTTP_ETLS && call->errbuf[0] ? call->errbuf
                                                                 : sh_http_strerror(err);
    call->cb(call->arg, err, err ? errstr : NULL, err ? NULL : &res);
    if (hdrs != few)
        free(hdrs);
    call_release(call);
    call->state = CALL_GONE;
    uv_close((uv_handle_t *)&call->timer, call_timer_closed);
}

/* Records the outcome of a queued or active call and arms its delivery on the next loop turn. */
static void call_finish(sh_http_call *call, int err)
{
    call_unbind(call);
    if (err)
        call_release(call); /* nothing to deliver but the error */
    call->state = CALL_DONE;
    call->err = err;
    uv_timer_stop(&call->timer);
    uv_timer_start(&call->timer, call_deliver_cb, 0, 0);
}

/* The total deadline passed. */
static void call_timer_cb(uv_timer_t *t)
{
    sh_http_call *call = t->data;
    if (call->state != CALL_QUEUED && call->state != CALL_ACTIVE)
        return;
    sh_debug(NULL, "http: request %s", call->state == CALL_QUEUED
                                            ? "timed out waiting for a connection"
                                            : "timed out");
    call_finish(call, SH_HTTP_ETIMEDOUT);
}

/* ---- public API ------------------------------------------------------------------------------- */

/* Contract in http_client.h. */
sh_http_client *sh_http_client_new(uv_loop_t *loop, const sh_http_client_opts *opts)
{
    assert(loop);
    sh_http_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    if (opts)
        c->opts = *opts;
    if (!c->opts.max_conns_per_host)
        c->opts.max_conns_per_host = DEFAULT_MAX_CONNS;
    if (!c->opts.idle_timeout_ms)
        c->opts.idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    if (!c->opts.max_response_bytes)
        c->opts.max_response_bytes = DEFAULT_MAX_RESPONSE;
    if (!c->opts.max_total_response_bytes)
        c->opts.max_total_response_bytes = DEFAULT_MAX_TOTAL_RESPONSE;
    c->opts.ca_file = NULL;
    if (opts && opts->ca_file && opts->ca_file[0]) {
        char err[256];
        if (!(c->opts.ca_file = strdup(opts->ca_file))) {
            free(c);
            return NULL;
        }
        if (tls_ctx_make(c, err, sizeof err) < 0) { /* a bad CA file fails now, not per call */
            sh_error(NULL, "http: %s", err);
            free((char *)c->opts.ca_file);
            free(c);
            return NULL;
        }
    }
    uv_timer_init(loop, &c->own);
    c->own.data = c;
    c->nhandles = 1;
    return c;
}

/* Contract in http_client.h. */
int sh_http_client_reconfigure(sh_http_client *c, const sh_http_client_opts *opts, char *err,
                               size_t errsz)
{
    const char *want = opts->ca_file && opts->ca_file[0] ? opts->ca_file : NULL;
    char *ca = want ? strdup(want) : NULL;
    if (want && !ca) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    /* a TLS context with the new CA file, made now (a bad file fails the reload, not calls);
     * without one it is made by the next https call (the system store, tens of ms of loading,
     * is then loaded once for reloads in a row) */
    sh_http_client_opts o = c->opts;
    o.ca_file = ca;
    o.tls_no_verify = opts->tls_no_verify;
    SSL_CTX *ctx = NULL;
    if (ca && !(ctx = tls_ctx_new(&o, err, errsz))) {
        free(ca);
        return -1;
    }
    SSL_CTX_free(c->tls); /* sockets' SSL objects keep their own reference */
    c->tls = ctx;
    free((char *)c->opts.ca_file);
    c->opts.ca_file = ca;
    c->opts.tls_no_verify = opts->tls_no_verify;
    if (opts->max_total_response_bytes)
        c->opts.max_total_response_bytes = opts->max_total_response_bytes;
    for (size_t i = 0; i < TLS_SESSION_CACHE; i++) { /* sessions of the old trust */
        SSL_SESSION_free(c->sessions[i].sess);
        c->sessions[i].sess = NULL;
    }
    sh_http_host *next;
    for (sh_http_host *h = c->hosts; h; h = next) { /* idle https sockets were verified the old way */
        next = h->next;
        if (!h->tls || !h->idle)
            continue;
        h->pumping = 1;
        while (h->idle)
            conn_close(h->idle);
        h->pumping = 0;
        host_maybe_free(h);
    }
    return 0;
}

/* Contract in http_client.h. */
int sh_http_request(sh_http_client *c, const sh_http_opts *o, sh_http_cb cb, void *arg,
                    sh_http_call **out)
{
    if (!c || !o || !o->url || !cb)
        return SH_HTTP_EINVAL;
    if (c->closing)
        return SH_HTTP_ECLOSED;
    const char *method = o->method ? o->method : "GET";
    sh_url u;
    int rc = url_parse(o->url, &u);
    if (rc == 0)
        rc = opts_check(o, method);
    if (rc < 0)
        return rc;
    sh_http_call *call = malloc(sizeof *call);
    if (!call)
        return SH_HTTP_ENOMEM;
    memset(call, 0, offsetof(sh_http_call, hdrs_small)); /* the rooms need no zeroing */
    call_buffers_small(call);
    sh_http_host *h = NULL;
    if ((rc = request_build(o, method, &u, &call->req, &call->no_reuse)) < 0 ||
        !(h = host_get(c, &u))) {
        if (call->req)
            call->req->release = NULL; /* an error: the caller keeps its borrowed body */
        blob_unref(call->req);
        free(call);
        return rc < 0 ? rc : SH_HTTP_ENOMEM;
    }
    /* from here on nothing fails synchronously: every outcome goes through cb */
    call->client = c;
    call->cb = cb;
    call->arg = arg;
    call->is_head = strcmp(method, "HEAD") == 0;
    /* POST, the usual method, is not: no look through the list */
    static const char *const idempotent[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof idempotent / sizeof idempotent[0] && method[0] != 'P'; i++)
        call->idempotent |= strcmp(method, idempotent[i]) == 0;
    call->idempotent |= strcmp(method, "PUT") == 0;
    call->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms
                                                     : DEFAULT_CONNECT_TIMEOUT_MS;
    uv_timer_init(c->loop, &call->timer);
    call->timer.data = call;
    c->nhandles++;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    c->inflight++;
    uv_timer_start(&call->timer, call_timer_cb, o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS,
                   0);
    queue_push(h, call, 0);
    if (out)
        *out = call;
    host_pump(h);
    return 0;
}

/* Contract in http_client.h. */
void sh_http_call_cancel(sh_http_call *call)
{
    if (!call)
        return;
    switch (call->state) {
    case CALL_QUEUED:
    case CALL_ACTIVE:
        call_unbind(call);
        break;
    case CALL_DONE:
        break;
    case CALL_DELIVERING: /* its own callback: it is finishing anyway */
    case CALL_GONE:
        return;
    }
    call_release(call);
    call->state = CALL_GONE;
    uv_timer_stop(&call->timer);
    uv_close((uv_handle_t *)&call->timer, call_timer_closed);
}

/* Contract in http_client.h. */
void sh_http_client_close(sh_http_client *c, void (*done)(void *), void *arg)
{
    assert(c && !c->closing);
    c->closing = 1;
    c->done = done;
    c->done_arg = arg;
    for (sh_http_call *call = c->calls; call; call = call->next)
        if (call->state == CALL_QUEUED || call->state == CALL_ACTIVE)
            call_finish(call, SH_HTTP_ECLOSED); /* stays in c->calls until its timer closes */
    for (sh_http_conn *conn = c->conns; conn; conn = conn->next)
        conn_close(conn); /* idle ones; the others are closing already */
    uv_close((uv_handle_t *)&c->own, client_own_closed);
}

/* Contract in http_client.h. */
void sh_http_client_stats_get(const sh_http_client *c, sh_http_client_stats *out)
{
    memset(out, 0, sizeof *out);
    for (const sh_http_host *h = c->hosts; h; h = h->next) {
        out->conns += h->nconns;
        for (const sh_http_conn *conn = h->idle; conn; conn = conn->inext)
            out->idle++;
        for (const sh_http_call *call = h->qhead; call; call = call->qnext)
            out->queued++;
    }
    out->inflight = c->inflight;
    out->response_bytes = c->resp_total;
    out->tls_handshakes = c->tls_handshakes;
    out->tls_resumed = c->tls_resumed;
}
