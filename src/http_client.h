/* http_client.h — outbound HTTP/1.1 and HTTPS on a libuv loop, with a keep-alive pool.
 *
 * One sh_http_client per process (per loop). sh_http_request() starts one call; its callback runs
 * exactly once, later, from the loop — never from inside an API function — unless the call is
 * cancelled. Sockets are pooled per scheme and "host:port" (an https socket never serves an http
 * call): at most max_conns_per_host sockets (connecting, busy or idle) per host, further calls wait
 * in a FIFO for that host and still honour their deadline.
 *
 * HTTPS (OpenSSL, TLS 1.2+, never blocking the loop): the server's certificate chain is verified
 * against the system store (or opts.ca_file) and its name against the URL's host (DNS name, or
 * IP address for a literal) unless opts.tls_no_verify says otherwise; SNI is sent for names; the
 * last session per host:port is offered again on new sockets. Handshake failures are SH_HTTP_ETLS
 * with errstr "tls: <reason>", e.g. "tls: certificate verify failed (certificate has expired)".
 *
 * Memory: a response is at most max_response_bytes, and the response buffers of all calls together
 * at most max_total_response_bytes: the call that would pass either fails "too large" and its socket
 * is closed. A call's buffers are released as soon as its callback returns (or it fails or is
 * cancelled).
 *
 *   sh_http_client *c = sh_http_client_new(loop, NULL);
 *   sh_http_opts o = { .method = "POST", .url = "http://127.0.0.1:9101/remote/message",
 *                      .body = json, .body_len = len, .timeout_ms = 120000 };
 *   int rc = sh_http_request(c, &o, on_done, job, &job->call);   // rc < 0: on_done never runs
 *   ...
 *   sh_http_client_close(c, on_closed, NULL);  // pending calls get err "closed", then on_closed
 *
 * Not supported (stated, not hidden): TLS client certificates, proxies, chunked request bodies,
 * Expect: 100-continue, automatic redirects, response decompression, pipelining (one request per
 * socket at a time).
 */
#ifndef SH_HTTP_CLIENT_H
#define SH_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Errors: negative, banded so they never collide with libuv's (which are small negative errnos). */
enum {
    SH_HTTP_EINVAL = -3001,       /* "invalid argument": bad URL, method or header (sync only) */
    SH_HTTP_EUNSUPPORTED = -3002, /* "unsupported": a scheme but http/https, user info (sync only) */
    SH_HTTP_ENOMEM = -3003,       /* "out of memory" */
    SH_HTTP_EREFUSED = -3004,     /* "refused": could not connect (ECONNREFUSED, unreachable...) */
    SH_HTTP_ETIMEDOUT = -3005,    /* "timeout": connect timeout or total deadline passed */
    SH_HTTP_EBADRESPONSE = -3006, /* "bad response": the response does not parse as HTTP/1.x */
    SH_HTTP_ECLOSED = -3007,      /* "closed": peer closed/reset mid-response, or client closing */
    SH_HTTP_ERESOLVE = -3008,     /* "resolve failed": the host name did not resolve */
    SH_HTTP_ETOOLARGE = -3009,    /* "too large": response over max_response_bytes, or the client's
                                   * response memory would pass max_total_response_bytes */
    SH_HTTP_ETLS = -3010,         /* "tls: <reason>" in the callback's errstr (unknown CA, host name
                                   * mismatch, expired, protocol error...); strerror: "tls: failed" */
};

typedef struct sh_http_client sh_http_client; /* one per process; owns a keep-alive pool */
typedef struct sh_http_call sh_http_call;     /* one in-flight request (opaque) */

/* A header: not NUL-terminated, lengths given. */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} sh_http_hdr;

typedef struct {
    const char *method;         /* "GET", "POST", ... default GET if NULL; an HTTP token */
    const char *url;            /* http[s]://host[:port][/path][?query]; host may be a name, IPv4
                                 * or [IPv6]; a #fragment is dropped; other schemes ->
                                 * SH_HTTP_EUNSUPPORTED */
    const sh_http_hdr *headers; /* caller's extra headers; Host, Content-Length and Connection are */
    size_t nheaders;            /* set by the client unless given here (case-insensitive match) */
    const char *body;           /* request body, may be NULL when body_len is 0; copied, unless: */
    size_t body_len;
    void (*body_release)(void *arg); /* set: body is borrowed, not copied, and must stay valid
                                      * until body_release(body_release_arg) is called, once, when
                                      * the client is done with it (after cb or a cancel, once no
                                      * write of it is pending). Not called when sh_http_request
                                      * returns an error. */
    void *body_release_arg;
    uint64_t timeout_ms;         /* total deadline (queue+connect+send+response); 0 -> 30000 */
    uint64_t connect_timeout_ms; /* resolve+connect (+TLS handshake) of a new socket; 0 -> 5000 */
} sh_http_opts;

typedef struct {
    int status;           /* e.g. 200; any status is a response (err 0) */
    sh_http_hdr *headers; /* in arrival order, trailers excluded */
    size_t nheaders;
    const char *body; /* body_len bytes, followed by a NUL not counted in body_len */
    size_t body_len;
} sh_http_response;

/* err: 0 on a response (any status), else negative; errstr: sh_http_strerror(err), one of
 * "refused", "timeout", "bad response", "closed", "resolve failed", "too large", or
 * "out of memory" — except for SH_HTTP_ETLS: "tls: <reason>". errstr and res are valid only during
 * the callback; res is non-NULL only when err is 0. */
typedef void (*sh_http_cb)(void *arg, int err, const char *errstr, const sh_http_response *res);

typedef struct {
    size_t max_conns_per_host; /* sockets connecting+busy+idle per host:port; 0 -> 8 */
    uint64_t idle_timeout_ms;  /* an idle pooled socket is closed after this; 0 -> 30000 */
    size_t max_response_bytes; /* status line + headers + body; 0 -> 16 MiB */
    size_t max_total_response_bytes; /* response memory held by all calls together; 0 -> 64 MiB */
    const char *ca_file; /* PEM bundle of trusted CAs for https; NULL or "": the system store.
                          * Copied; loaded by sh_http_client_new (NULL when it cannot be read) */
    int tls_no_verify;   /* 1: accept any certificate and name (tests, private remotes); 0 (the
                          * default, so a zeroed struct verifies): verify */
} sh_http_client_opts;

/* Pool counters, for /metrics and tests. */
typedef struct {
    size_t conns;    /* sockets attached to the pool: connecting, busy or idle */
    size_t idle;     /* of which idle */
    size_t queued;   /* calls waiting for a socket */
    size_t inflight; /* calls started and not yet answered */
    size_t response_bytes; /* response buffer memory held now, by all calls (<= the budget) */
    size_t tls_handshakes; /* TLS handshakes completed since creation */
    size_t tls_resumed;    /* of which resumed a remembered session */
} sh_http_client_stats;

/* Creates a client on loop. opts NULL or zero fields take the defaults above. Returns NULL when out
 * of memory or when opts->ca_file cannot be loaded (logged with the reason). The client owns one
 * handle from here on: the loop is not empty until it is closed. */
sh_http_client *sh_http_client_new(uv_loop_t *loop, const sh_http_client_opts *opts);

/* SIGHUP: new trust (ca_file, tls_no_verify) and max_total_response_bytes for calls from now on
 * (the other fields are kept). The new CA file is loaded now: when it cannot be, returns -1 with
 * the reason in err and nothing changes (the system store is loaded by the next https call). Remembered TLS sessions and idle https sockets, made
 * under the old trust, are dropped; calls in flight finish on the sockets they have, which are
 * then closed, not pooled, and whose sessions are not remembered. */
int sh_http_client_reconfigure(sh_http_client *c, const sh_http_client_opts *opts, char *err,
                               size_t errsz);

/* Starts a request. Returns 0 and calls cb exactly once later (never synchronously inside this
 * call), unless the call is cancelled; or returns a negative error (SH_HTTP_EINVAL,
 * SH_HTTP_EUNSUPPORTED, SH_HTTP_ENOMEM, SH_HTTP_ECLOSED when the client is closing) and never calls
 * cb. *out (optional) receives the handle for sh_http_call_cancel(); it is valid until cb returns or
 * the call is cancelled. The opts and everything they point to are copied before this returns. */
int sh_http_request(sh_http_client *c, const sh_http_opts *o, sh_http_cb cb, void *arg,
                    sh_http_call **out);

/* The checks sh_http_request makes of o's method and headers (a token method; token names,
 * values without control characters but TAB; a Content-Length that is the body's; no
 * Transfer-Encoding), for a stand-in of the client (the test kit's): 0 or SH_HTTP_EINVAL. */
int sh_http_opts_check(const sh_http_opts *o);

/* cb will not be called; the socket it used is closed (not returned to the pool). Safe to call
 * from inside any callback of this client, including that call's own (then it does nothing).
 * Accepts NULL. */
void sh_http_call_cancel(sh_http_call *call);

/* Cancels every in-flight call with err SH_HTTP_ECLOSED (callbacks ARE called, from the loop, before
 * done), closes every socket, then calls done(arg) once all handles are closed; the client is freed
 * after done returns. Requests started meanwhile fail with SH_HTTP_ECLOSED. Call at most once;
 * done may be NULL. */
void sh_http_client_close(sh_http_client *c, void (*done)(void *), void *arg);

/* Fills *out with the pool's current counters. */
void sh_http_client_stats_get(const sh_http_client *c, sh_http_client_stats *out);

/* A static string for any error this module returns; "unknown error" otherwise. */
const char *sh_http_strerror(int err);

#endif
