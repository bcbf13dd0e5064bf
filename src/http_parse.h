/* http_parse.h — HTTP/1.1 request parsing over llhttp, and the WebSocket
 * handshake rules of RFC 6455 §4.2.1.
 *
 * No I/O and no callbacks for the caller: feed the bytes as they arrive and
 * act on the return value.
 *
 *     sh_http_parser hp;
 *     sh_http_parser_init(&hp, 8192, 1 << 20);
 *     on read(buf, n):
 *         while (n > 0) {
 *             size_t used; int status;
 *             int rc = sh_http_parser_feed(&hp, buf, n, &used, &status);
 *             if (rc == SH_HTTP_NEED_MORE) break;
 *             if (rc < 0) { answer status, close; return; }
 *             sh_request *r = sh_http_parser_request(&hp);
 *             buf += used, n -= used;
 *             if (r->upgrade) { ...handshake; buf[0..n) is WebSocket data }
 *             else { ...answer; if (!r->keep_alive) close after the answer }
 *             sh_http_parser_reset(&hp);
 *         }
 *     sh_http_parser_free(&hp);
 *
 * Limits and rules enforced (RFC 9112 where llhttp 8.1 is lenient):
 * - the head (request line, header lines and the blank line, counted from the
 *   first byte) over max_head_bytes: 431, detected while the head streams in
 *   so a 1 MiB head is never buffered; trailers of a chunked body have the
 *   same limit;
 * - a body over max_body_bytes: 413 (from Content-Length before any body
 *   byte is read, or as chunks arrive);
 * - Content-Length with Transfer-Encoding, repeated or list-valued
 *   Content-Length, Transfer-Encoding on HTTP/1.0, chunked not the final
 *   coding: 400 (framing that could smuggle a request);
 * - a transfer coding other than a lone "chunked" (e.g. "gzip, chunked"): 501;
 * - any version other than HTTP/1.0 and HTTP/1.1, and the HTTP/2 preface: 505;
 * - whitespace in a header name, a missing Host on HTTP/1.1, more than one
 *   Host, a malformed or NUL percent-escape in the path: 400;
 * - an upgrade request (or CONNECT) with a body: 400.
 * Anything else llhttp rejects is 400. Obsolete line folding is accepted
 * and joined with a space, as RFC 9112 §5.2 allows. */
#ifndef SH_HTTP_PARSE_H
#define SH_HTTP_PARSE_H

#include <stddef.h>

#include "llhttp.h"

/* sh_http_parser_feed results. */
#define SH_HTTP_NEED_MORE 0 /* all bytes used, no complete request yet */
#define SH_HTTP_REQUEST 1   /* a complete request (head and body) is ready */

/* sh_http_parser_feed errors (negative, the -2xx band; distinct from
 * http_client's SH_HTTP_E* codes); *status gets the HTTP answer. */
enum sh_parse_error {
    SH_PARSE_EBADREQ = -201,   /* 400: bad syntax or framing */
    SH_PARSE_EHEADSIZE = -202, /* 431: head over max_head_bytes */
    SH_PARSE_EBODYSIZE = -203, /* 413: body over max_body_bytes */
    SH_PARSE_ECODING = -204,   /* 501: unsupported Transfer-Encoding */
    SH_PARSE_EVERSION = -205,  /* 505: not HTTP/1.0 or HTTP/1.1 */
    SH_PARSE_ENOMEM = -206,    /* 500: out of memory */
    SH_PARSE_ESTATE = -207,    /* 500: fed while a request was pending (call reset) */
};

/* One header line. */
typedef struct sh_header {
    char *name;  /* as received (case preserved), NUL-terminated */
    char *value; /* leading and trailing blanks removed, NUL-terminated */
} sh_header;

/* A complete request. Every string is NUL-terminated and lives in the
 * parser: valid until sh_http_parser_reset or sh_http_parser_free. */
typedef struct sh_request {
    char method[16];    /* "GET", "POST", ... */
    char *target;       /* the raw request-target: "/a%20b?x=1" */
    char *path;         /* percent-decoded path, not normalised: "/a b";
                         * for absolute-form targets the path part only;
                         * "*" or the authority for the asterisk and
                         * CONNECT forms */
    char *query;        /* raw text after '?' (up to any '#'), or "" */
    sh_header *headers; /* in arrival order */
    size_t nheaders;    /* entries in headers */
    char *body;         /* decoded body (chunks joined); "" when none */
    size_t body_len;    /* bytes in body, not counting the NUL */
    int http_minor;     /* 0 or 1 (the major version is always 1) */
    int keep_alive;     /* 1 when the connection may carry another request */
    int upgrade;        /* llhttp saw Connection: upgrade + Upgrade (or
                         * CONNECT): the bytes after the head are not HTTP */
} sh_request;

/* Internal: where one header's name and value sit in the parser's buffer. */
struct sh_http_header_at {
    size_t name;  /* offset of the name */
    size_t value; /* offset of the value; SIZE_MAX until its first byte */
};

/* The parser. Defined here so it can be embedded in a connection; the
 * fields are private. It must not be moved or copied after init (llhttp
 * points at its settings). */
typedef struct sh_http_parser {
    llhttp_t ll;                 /* the llhttp state machine */
    llhttp_settings_t settings;  /* its callbacks (ll refers to these) */
    size_t max_head;             /* limit on head bytes */
    size_t max_body;             /* limit on decoded body bytes */
    int phase;                   /* where in the request we are (http_parse.c) */
    int err;                     /* the sticky error, or 0 */
    int status;                  /* the HTTP status that goes with err */
    const char *reason;          /* why err, for logs (static string) */
    const char *chunk;           /* start of the bytes llhttp_execute is parsing */
    size_t head_bytes;           /* head bytes counted before chunk */
    size_t trailer_bytes;        /* bytes of trailer names and values */
    char *buf;                   /* target, names, values, path, query: NUL-separated */
    size_t buf_len, buf_cap;     /* bytes used / allocated in buf */
    size_t path_at, query_at;    /* offsets of the decoded path and query in buf */
    struct sh_http_header_at *at; /* one per header, in order */
    size_t nat, at_cap;          /* entries used / allocated in at */
    int in_name;                 /* a header name is being received */
    int continue_due;            /* "Expect: 100-continue" and a body still to come */
    sh_header *headers;          /* the request's header array */
    size_t headers_cap;          /* entries allocated in headers */
    char *body;                  /* the body, NUL-terminated */
    size_t body_len, body_cap;   /* bytes used / allocated in body */
    sh_request req;              /* the request handed out */
} sh_http_parser;

/* Prepare p for the first request of a connection; limits in bytes (the
 * defaults of the spec are 8192 and 1 MiB). Returns 0 (allocates nothing:
 * buffers grow on demand, never past the limits). */
int sh_http_parser_init(sh_http_parser *p, size_t max_head_bytes,
                        size_t max_body_bytes);

/* Release everything p holds. NULL is fine; p may be re-initialised. */
void sh_http_parser_free(sh_http_parser *p);

/* Parse data[0..len). Returns:
 *   SH_HTTP_NEED_MORE — everything was used; feed the next bytes;
 *   SH_HTTP_REQUEST — sh_http_parser_request() is complete; *consumed bytes
 *     of data belong to it, the rest to the next request or (upgrade) to the
 *     new protocol; call sh_http_parser_reset before feeding them;
 *   a negative enum sh_parse_error — answer *status and close; every later
 *     call returns the same error.
 * *status is 0 unless an error is returned. On an error *consumed is
 * meaningless. */
int sh_http_parser_feed(sh_http_parser *p, const char *data, size_t len,
                        size_t *consumed, int *status);

/* The request after SH_HTTP_REQUEST was returned; NULL at any other time. */
sh_request *sh_http_parser_request(sh_http_parser *p);

/* 1 once, when the head just parsed asked "Expect: 100-continue" for a body that
 * is acceptable and has not all arrived: the caller answers "100 Continue" now
 * (RFC 9110 §10.1.1), before the client sends it. 0 otherwise. */
int sh_http_parser_take_continue(sh_http_parser *p);

/* Why the last error happened (a static string, for logs), or "". */
const char *sh_http_parser_reason(const sh_http_parser *p);

/* Forget the current request and get ready for the next one on the same
 * connection. Large buffers are given back; small ones are kept. */
void sh_http_parser_reset(sh_http_parser *p);

/* The value of the first header called name (case-insensitive), or NULL. */
const char *sh_request_header(const sh_request *r, const char *name);

/* 1 when a header line called name, read as a comma-separated list, holds
 * token (case-insensitive), as sh_ws_handshake_check reads Upgrade. */
int sh_request_has_token(const sh_request *r, const char *name, const char *token);

/* 0 when r is a valid RFC 6455 version-13 opening handshake; otherwise the
 * status to answer:
 *   400 — method not GET; HTTP/1.0; Host missing or repeated; no "websocket"
 *         token in Upgrade or no "upgrade" token in Connection (both are
 *         comma-separated lists, case-insensitive, possibly over several
 *         header lines); Sec-WebSocket-Key missing, repeated, or not the
 *         base64 of exactly 16 bytes (24 characters ending in "==");
 *   426 — Sec-WebSocket-Version missing, repeated or not "13" (the answer
 *         must carry "Sec-WebSocket-Version: 13").
 * Origin and subprotocols are the caller's policy. */
int sh_ws_handshake_check(const sh_request *r);

/* out = base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")): 28
 * characters and a NUL, the Sec-WebSocket-Accept value. Returns 0, or -1
 * (out = "") when libcrypto fails. */
int sh_ws_accept_key(const char *key, char out[29]);

#endif
