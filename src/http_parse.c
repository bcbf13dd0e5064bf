/* http_parse.c — see http_parse.h.
 *
 * llhttp drives a handful of callbacks that copy the request-target, header
 * names and values into one growing buffer (NUL-separated) and the body into
 * another. Two callbacks pause the parser so feed() learns exact positions:
 * on_headers_complete (the head ends here: count it, check it, build the
 * request) and on_message_complete (the request ends here: *consumed).
 * Pointers into the buffers are set only once the head is complete, because
 * the buffers move while they grow. */
#include "http_parse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "static_files.h"
#include "str.h"

/* Where the parser is in the current request. */
enum {
    PH_HEAD,      /* receiving the request line and headers */
    PH_HEAD_DONE, /* paused at the end of the head, not yet checked */
    PH_BODY,      /* head accepted; receiving the body */
    PH_DONE,      /* a complete request is waiting for reset */
    PH_ERROR      /* failed; err and status say how */
};

/* Bodies larger than this are not kept allocated across requests. */
#define KEEP_BODY_CAP 65536
/* Nor heads past these (bytes of buf; entries of at and headers): a request
 * of 2,000 empty header lines (8 KiB) left its idle keep-alive connection
 * holding 70 KiB for as long as a request came every keepalive_timeout_ms. */
#define KEEP_HEAD_CAP 4096
#define KEEP_HEADERS 64

/* ---------- errors and buffers ---------- */

/* Record the first error (later ones keep the first) and stop the parser.
 * Returns err. */
static int fail(sh_http_parser *p, int err, int status, const char *reason)
{
    if (p->err == 0) {
        p->err = err;
        p->status = status;
        p->reason = reason;
    }
    p->phase = PH_ERROR;
    return err;
}

/* Make room for need elements of size bytes in arr (cap in elements,
 * doubling). Returns the possibly moved array, or NULL with arr untouched. */
static void *grow(void *arr, size_t *cap, size_t need, size_t size)
{
    size_t ncap = *cap ? *cap : 64;
    void *n;

    if (need <= *cap)
        return arr;
    while (ncap < need)
        ncap *= 2;
    n = realloc(arr, ncap * size);
    if (n != NULL)
        *cap = ncap;
    return n;
}

/* Append s[0..n) to the head buffer. 0, or the ENOMEM error. */
static int buf_append(sh_http_parser *p, const char *s, size_t n)
{
    if (n == 0)
        return 0; /* an empty span (e.g. CONNECT's missing target): nothing to grow */
    char *b = grow(p->buf, &p->buf_cap, p->buf_len + n, 1);
    if (b == NULL)
        return fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
    p->buf = b;
    memcpy(p->buf + p->buf_len, s, n);
    p->buf_len += n;
    return 0;
}

/* End the string being received in the head buffer. */
static int buf_terminate(sh_http_parser *p)
{
    return buf_append(p, "", 1);
}

/* ---------- llhttp callbacks: the head ---------- */

/* 0 when the head, counted up to the end of the span [at, at+len) of the
 * bytes being parsed, is within the limit; else fail with 431. */
static int head_span_ok(sh_http_parser *p, const char *at, size_t len)
{
    size_t seen = p->head_bytes + (size_t)(at - p->chunk) + len;
    if (seen > p->max_head)
        return fail(p, SH_PARSE_EHEADSIZE, 431, "request head too large");
    return 0;
}

/* Copy a span of the head after checking the limit. An llhttp callback
 * result: 0, or HPE_USER after fail(). */
static int head_span(sh_http_parser *p, const char *at, size_t len)
{
    if (head_span_ok(p, at, len) < 0 || buf_append(p, at, len) < 0)
        return HPE_USER;
    return 0;
}

/* A trailer span of a chunked body: counted against the head limit, not
 * kept. An llhttp callback result. */
static int trailer_span(sh_http_parser *p, size_t len)
{
    p->trailer_bytes += len;
    if (p->trailer_bytes > p->max_head) {
        fail(p, SH_PARSE_EHEADSIZE, 431, "trailers too large");
        return HPE_USER;
    }
    return 0;
}

/* Open the entry of a new header whose name starts at the end of the
 * buffer. 0 or the ENOMEM error. */
static int start_header(sh_http_parser *p)
{
    struct sh_http_header_at *a = grow(p->at, &p->at_cap, p->nat + 1, sizeof *a);
    if (a == NULL)
        return fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
    p->at = a;
    p->at[p->nat].name = p->buf_len;
    p->at[p->nat].value = SIZE_MAX;
    p->nat++;
    p->in_name = 1;
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t len)
{
    return head_span(ll->data, at, len);
}

static int on_url_complete(llhttp_t *ll)
{
    return buf_terminate(ll->data) < 0 ? HPE_USER : 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len)
{
    sh_http_parser *p = ll->data;
    if (p->phase != PH_HEAD)
        return trailer_span(p, len);
    if (!p->in_name && start_header(p) < 0)
        return HPE_USER;
    return head_span(p, at, len);
}

static int on_header_field_complete(llhttp_t *ll)
{
    sh_http_parser *p = ll->data;
    if (p->phase != PH_HEAD)
        return 0;
    if (!p->in_name && start_header(p) < 0)
        return HPE_USER;
    p->in_name = 0;
    return buf_terminate(p) < 0 ? HPE_USER : 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len)
{
    sh_http_parser *p = ll->data;
    if (p->phase != PH_HEAD)
        return trailer_span(p, len);
    if (p->nat == 0) {
        fail(p, SH_PARSE_EBADREQ, 400, "header value without a name");
        return HPE_USER;
    }
    if (p->at[p->nat - 1].value == SIZE_MAX)
        p->at[p->nat - 1].value = p->buf_len;
    return head_span(p, at, len);
}

/* The value is complete: drop trailing blanks (llhttp drops the leading
 * ones) and terminate it. */
static int on_header_value_complete(llhttp_t *ll)
{
    sh_http_parser *p = ll->data;
    struct sh_http_header_at *h;

    if (p->phase != PH_HEAD)
        return 0;
    if (p->nat == 0) {
        fail(p, SH_PARSE_EBADREQ, 400, "header value without a name");
        return HPE_USER;
    }
    h = &p->at[p->nat - 1];
    if (h->value == SIZE_MAX)
        h->value = p->buf_len;
    while (p->buf_len > h->value &&
           (p->buf[p->buf_len - 1] == ' ' || p->buf[p->buf_len - 1] == '\t'))
        p->buf_len--;
    return buf_terminate(p) < 0 ? HPE_USER : 0;
}

/* Pause so feed() can count and check the head at its exact end. */
static int on_headers_complete(llhttp_t *ll)
{
    sh_http_parser *p = ll->data;
    p->phase = PH_HEAD_DONE;
    return HPE_PAUSED;
}

/* ---------- llhttp callbacks: the body ---------- */

static int on_body(llhttp_t *ll, const char *at, size_t len)
{
    sh_http_parser *p = ll->data;
    char *b;

    if (len > p->max_body - p->body_len) {
        fail(p, SH_PARSE_EBODYSIZE, 413, "request body too large");
        return HPE_USER;
    }
    b = grow(p->body, &p->body_cap, p->body_len + len + 1, 1);
    if (b == NULL) {
        fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
        return HPE_USER;
    }
    p->body = b;
    memcpy(p->body + p->body_len, at, len);
    p->body_len += len;
    return 0;
}

/* A chunk's size line is in: a chunk that cannot fit the body limit is 413
 * now, as a Content-Length over it is, not once its bytes have come (or,
 * when they never come, a drop at the head timeout without an answer). */
static int on_chunk_header(llhttp_t *ll)
{
    sh_http_parser *p = ll->data;

    if (ll->content_length > p->max_body - p->body_len) {
        fail(p, SH_PARSE_EBODYSIZE, 413, "request body too large");
        return HPE_USER;
    }
    return 0;
}

/* Pause so feed() can say where the request ended. */
static int on_message_complete(llhttp_t *ll)
{
    sh_http_parser *p = ll->data;
    p->phase = PH_DONE;
    return HPE_PAUSED;
}

/* ---------- header lists ---------- */

/* Header name a is name (case-insensitive). The first byte, compared
 * first, tells most names of a request apart without strcasecmp's cost
 * (a dozen lookups per upgrade request, each over every header). */
static int name_is(const char *a, const char *name)
{
    return ((unsigned char)(a[0] ^ name[0]) & 0xdf) == 0 && strcasecmp(a, name) == 0;
}

/* Number of header lines called name (case-insensitive). */
static size_t header_count(const sh_request *r, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < r->nheaders; i++)
        n += name_is(r->headers[i].name, name);
    return n;
}

/* Over every header line called name, read as a comma-separated list:
 * *total gets the number of non-empty elements; returns how many equal
 * token (case-insensitive, blanks around elements ignored). */
static size_t list_count(const sh_request *r, const char *name,
                         const char *token, size_t *total)
{
    size_t hits = 0, all = 0, tlen = strlen(token);

    for (size_t i = 0; i < r->nheaders; i++) {
        const char *s = r->headers[i].value;
        if (!name_is(r->headers[i].name, name))
            continue;
        while (*s != '\0') {
            size_t n;
            while (*s == ' ' || *s == '\t' || *s == ',')
                s++;
            n = strcspn(s, ",");
            while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
            if (n > 0) {
                all++;
                hits += n == tlen && strncasecmp(s, token, n) == 0;
            }
            s += strcspn(s, ",");
        }
    }
    if (total != NULL)
        *total = all;
    return hits;
}

int sh_request_has_token(const sh_request *r, const char *name, const char *token)
{
    return list_count(r, name, token, NULL) > 0;
}

const char *sh_request_header(const sh_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (name_is(r->headers[i].name, name))
            return r->headers[i].value;
    return NULL;
}

/* ---------- the head, once complete ---------- */

/* The path and query spans of the target at the start of the buffer, as
 * offsets: origin-form "/p?q", absolute-form "http://host/p?q" (path after
 * the authority), anything else ("*", CONNECT's "host:port") as a path. */
static void split_target(const char *t, size_t *ps, size_t *pe, size_t *qs,
                         size_t *qe)
{
    size_t start = 0, end = strcspn(t, "#");
    const char *scheme = strstr(t, "://");

    if (t[0] != '/' && scheme != NULL && (size_t)(scheme - t) < end) {
        start = (size_t)(scheme - t) + 3;
        start += strcspn(t + start, "/?#");
    }
    *ps = start;
    *pe = start + strcspn(t + start, "?#");
    if (*pe < end && t[*pe] == '?') {
        *qs = *pe + 1;
        *qe = end;
    } else {
        *qs = *qe = end;
    }
}

/* Append the decoded path and the query to the buffer (offsets recorded in
 * path_at and query_at). 0, or 400 for a bad escape, or ENOMEM. */
static int store_path_query(sh_http_parser *p)
{
    size_t ps, pe, qs, qe, n = 0;
    char *b;

    split_target(p->buf, &ps, &pe, &qs, &qe);
    b = grow(p->buf, &p->buf_cap, p->buf_len + (pe - ps) + 2 + (qe - qs) + 1, 1);
    if (b == NULL)
        return fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
    p->buf = b;
    p->path_at = p->buf_len;
    if (pe == ps) { /* "http://host" or "http://host?q" */
        memcpy(p->buf + p->buf_len, "/", 2);
        n = 1;
    } else if (sh_url_decode(p->buf + ps, pe - ps, p->buf + p->buf_len,
                             p->buf_cap - p->buf_len, &n) < 0) {
        return fail(p, SH_PARSE_EBADREQ, 400, "bad percent-escape in path");
    }
    p->buf_len += n + 1;
    p->query_at = p->buf_len;
    memcpy(p->buf + p->buf_len, p->buf + qs, qe - qs);
    p->buf_len += qe - qs;
    p->buf[p->buf_len++] = '\0';
    return 0;
}

/* Fill p->req from the buffer (its final place: no more growth). 0, or
 * an error. */
static int build_request(sh_http_parser *p)
{
    sh_request *r = &p->req;
    int rc;

    if (p->buf_len == 0)
        return fail(p, SH_PARSE_EBADREQ, 400, "empty request-target");
    if ((rc = store_path_query(p)) < 0)
        return rc;
    sh_header *h = grow(p->headers, &p->headers_cap, p->nat, sizeof *h);
    if (h == NULL && p->nat > 0)
        return fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
    p->headers = h;
    for (size_t i = 0; i < p->nat; i++) {
        h[i].name = p->buf + p->at[i].name;
        h[i].value = p->buf + p->at[i].value;
    }
    sh_strtrunc(r->method, sizeof r->method, llhttp_method_name((llhttp_method_t)p->ll.method));
    r->target = p->buf;
    r->path = p->buf + p->path_at;
    r->query = p->buf + p->query_at;
    r->headers = h;
    r->nheaders = p->nat;
    r->http_minor = p->ll.http_minor;
    r->keep_alive = llhttp_should_keep_alive(&p->ll);
    r->upgrade = p->ll.upgrade;
    return 0;
}

/* A Host value of RFC 9112 §3.2's grammar in its characters: uri-host (a
 * reg-name, IPv4 or [IP-literal]) and an optional port. Empty is valid. */
static int host_valid(const char *v)
{
    for (; *v; v++)
        if (!(*v >= 'a' && *v <= 'z') && !(*v >= 'A' && *v <= 'Z') && !(*v >= '0' && *v <= '9') &&
            !strchr("-._~%!$&'()*+,;=:[]", *v))
            return 0;
    return 1;
}

/* Header names with blanks ("Host : x") and Host rules (RFC 9112 §3.2,
 * §5.1): 0 or 400. */
static int check_headers(sh_http_parser *p)
{
    const sh_request *r = &p->req;
    size_t hosts = header_count(r, "Host");

    for (size_t i = 0; i < r->nheaders; i++)
        if (r->headers[i].name[strcspn(r->headers[i].name, " \t")] != '\0')
            return fail(p, SH_PARSE_EBADREQ, 400, "whitespace in a header name");
    if (hosts > 1)
        return fail(p, SH_PARSE_EBADREQ, 400, "more than one Host header");
    if (hosts == 0 && r->http_minor == 1)
        return fail(p, SH_PARSE_EBADREQ, 400, "HTTP/1.1 request without Host");
    if (hosts == 1 && !host_valid(sh_request_header(r, "Host")))
        return fail(p, SH_PARSE_EBADREQ, 400, "invalid Host value");
    return 0;
}

/* Message framing (RFC 9112 §6): 0, or 400 (ambiguous, smuggling), 501
 * (coding we cannot undo), 413 (declared body too large). */
static int check_framing(sh_http_parser *p)
{
    const sh_request *r = &p->req;
    unsigned flags = p->ll.flags;
    size_t codings = 0;

    if ((flags & F_TRANSFER_ENCODING) && (flags & F_CONTENT_LENGTH))
        return fail(p, SH_PARSE_EBADREQ, 400,
                    "Content-Length with Transfer-Encoding");
    if (header_count(r, "Content-Length") > 1)
        return fail(p, SH_PARSE_EBADREQ, 400, "more than one Content-Length");
    if (flags & F_TRANSFER_ENCODING) {
        if (r->http_minor == 0)
            return fail(p, SH_PARSE_EBADREQ, 400, "Transfer-Encoding in HTTP/1.0");
        if (!(flags & F_CHUNKED))
            return fail(p, SH_PARSE_EBADREQ, 400, "chunked is not the final coding");
        if (list_count(r, "Transfer-Encoding", "chunked", &codings) != 1 ||
            codings != 1)
            return fail(p, SH_PARSE_ECODING, 501, "unsupported transfer coding");
    }
    if (p->ll.upgrade && ((flags & F_CHUNKED) || p->ll.content_length > 0))
        return fail(p, SH_PARSE_EBADREQ, 400, "upgrade request with a body");
    if (!(flags & F_CHUNKED) && p->ll.content_length > p->max_body)
        return fail(p, SH_PARSE_EBODYSIZE, 413, "request body too large");
    return 0;
}

/* The head just ended, used bytes into the current chunk: count it, check
 * it, build the request. 0 or an error. */
static int finish_head(sh_http_parser *p, size_t used)
{
    int rc;

    p->head_bytes += used;
    if (p->head_bytes > p->max_head)
        return fail(p, SH_PARSE_EHEADSIZE, 431, "request head too large");
    if (p->ll.http_major != 1 || p->ll.http_minor > 1)
        return fail(p, SH_PARSE_EVERSION, 505, "HTTP version not supported");
    if ((rc = build_request(p)) < 0 || (rc = check_headers(p)) < 0 ||
        (rc = check_framing(p)) < 0)
        return rc;
    const char *expect = sh_request_header(&p->req, "Expect");
    p->continue_due = expect && strcasecmp(expect, "100-continue") == 0 &&
                      p->ll.http_minor == 1 && !p->ll.upgrade &&
                      ((p->ll.flags & F_CHUNKED) || p->ll.content_length > 0);
    p->phase = PH_BODY;
    return 0;
}

int sh_http_parser_take_continue(sh_http_parser *p)
{
    int due = p->continue_due;
    p->continue_due = 0;
    return due;
}

/* The request just ended: terminate the body and hand it out. 0 or ENOMEM. */
static int finish_body(sh_http_parser *p)
{
    char *b = grow(p->body, &p->body_cap, p->body_len + 1, 1);
    if (b == NULL)
        return fail(p, SH_PARSE_ENOMEM, 500, "out of memory");
    p->body = b;
    p->body[p->body_len] = '\0';
    p->req.body = p->body;
    p->req.body_len = p->body_len;
    return 0;
}

/* llhttp stopped with an error: the callback's own, or one mapped from
 * llhttp's code. Returns the error. */
static int parse_failure(sh_http_parser *p, llhttp_errno_t e)
{
    const char *why = llhttp_get_error_reason(&p->ll);

    if (p->err != 0)
        return p->err;
    if (why == NULL)
        why = llhttp_errno_name(e);
    if (e == HPE_INVALID_VERSION || e == HPE_PAUSED_H2_UPGRADE)
        return fail(p, SH_PARSE_EVERSION, 505, why);
    return fail(p, SH_PARSE_EBADREQ, 400, why);
}

/* ---------- public API ---------- */

int sh_http_parser_init(sh_http_parser *p, size_t max_head_bytes,
                        size_t max_body_bytes)
{
    memset(p, 0, sizeof *p);
    p->max_head = max_head_bytes;
    p->max_body = max_body_bytes;
    llhttp_settings_init(&p->settings);
    p->settings.on_url = on_url;
    p->settings.on_url_complete = on_url_complete;
    p->settings.on_header_field = on_header_field;
    p->settings.on_header_field_complete = on_header_field_complete;
    p->settings.on_header_value = on_header_value;
    p->settings.on_header_value_complete = on_header_value_complete;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_body = on_body;
    p->settings.on_chunk_header = on_chunk_header;
    p->settings.on_message_complete = on_message_complete;
    llhttp_init(&p->ll, HTTP_REQUEST, &p->settings);
    p->ll.data = p;
    p->phase = PH_HEAD;
    return 0;
}

void sh_http_parser_free(sh_http_parser *p)
{
    if (p == NULL)
        return;
    free(p->buf);
    free(p->at);
    free(p->headers);
    free(p->body);
    p->buf = NULL;
    p->at = NULL;
    p->headers = NULL;
    p->body = NULL;
    p->buf_cap = p->at_cap = p->headers_cap = p->body_cap = 0;
}

void sh_http_parser_reset(sh_http_parser *p)
{
    if (p->body_cap > KEEP_BODY_CAP) {
        free(p->body);
        p->body = NULL;
        p->body_cap = 0;
    }
    if (p->buf_cap > KEEP_HEAD_CAP) {
        free(p->buf);
        p->buf = NULL;
        p->buf_cap = 0;
    }
    if (p->at_cap > KEEP_HEADERS || p->headers_cap > KEEP_HEADERS) {
        free(p->at);
        free(p->headers);
        p->at = NULL;
        p->headers = NULL;
        p->at_cap = p->headers_cap = 0;
    }
    p->phase = PH_HEAD;
    p->err = p->status = 0;
    p->reason = NULL;
    p->chunk = NULL;
    p->head_bytes = p->trailer_bytes = 0;
    p->buf_len = p->path_at = p->query_at = 0;
    p->nat = 0;
    p->in_name = 0;
    p->continue_due = 0;
    p->body_len = 0;
    memset(&p->req, 0, sizeof p->req);
    llhttp_init(&p->ll, HTTP_REQUEST, &p->settings);
    p->ll.data = p;
}

/* What one run of llhttp ended with. */
enum { STEP_MORE, STEP_HEAD, STEP_REQUEST, STEP_ERROR };

/* Run llhttp over data[*off..len) until it pauses, fails or uses every
 * byte; *off advances past the bytes used. STEP_HEAD means the head was
 * accepted and parsing must go on, even with no bytes left: a request
 * without a body completes without further input. */
static int step(sh_http_parser *p, const char *data, size_t len, size_t *off)
{
    const char *start = data + *off;
    llhttp_errno_t e;
    size_t used;

    p->chunk = start;
    e = llhttp_execute(&p->ll, start, len - *off);
    if (e == HPE_OK) {
        used = len - *off;
        *off = len;
        if (p->phase == PH_HEAD && (p->head_bytes += used) > p->max_head) {
            fail(p, SH_PARSE_EHEADSIZE, 431, "request head too large");
            return STEP_ERROR;
        }
        return STEP_MORE;
    }
    if (e != HPE_PAUSED) {
        parse_failure(p, e);
        return STEP_ERROR;
    }
    used = (size_t)(llhttp_get_error_pos(&p->ll) - start);
    *off += used;
    if (p->phase == PH_HEAD_DONE) {
        if (finish_head(p, used) < 0)
            return STEP_ERROR;
        llhttp_resume(&p->ll);
        return STEP_HEAD;
    }
    return finish_body(p) < 0 ? STEP_ERROR : STEP_REQUEST;
}

int sh_http_parser_feed(sh_http_parser *p, const char *data, size_t len,
                        size_t *consumed, int *status)
{
    size_t off = 0;
    int s = STEP_ERROR;

    *consumed = 0;
    *status = 0;
    if (p->phase == PH_DONE)
        fail(p, SH_PARSE_ESTATE, 500, "request pending: reset first");
    else if (len == 0 && p->phase != PH_ERROR)
        return SH_HTTP_NEED_MORE;
    while (p->phase != PH_ERROR && (s = step(p, data, len, &off)) == STEP_HEAD)
        ;
    if (s == STEP_MORE) {
        *consumed = len;
        return SH_HTTP_NEED_MORE;
    }
    if (s == STEP_REQUEST) {
        *consumed = off;
        return SH_HTTP_REQUEST;
    }
    *status = p->status;
    return p->err;
}

sh_request *sh_http_parser_request(sh_http_parser *p)
{
    return p->phase == PH_DONE ? &p->req : NULL;
}

const char *sh_http_parser_reason(const sh_http_parser *p)
{
    return p->reason != NULL ? p->reason : "";
}

/* ---------- WebSocket opening handshake (RFC 6455 §4.2.1) ---------- */

/* 1 when key is the base64 of exactly 16 bytes: 22 alphabet characters
 * and "==". The unused low bits of the last character are not checked. */
static int ws_key_valid(const char *key)
{
    if (strlen(key) != 24 || key[22] != '=' || key[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++) {
        char c = key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return 0;
    }
    return 1;
}

int sh_ws_handshake_check(const sh_request *r)
{
    const char *version = sh_request_header(r, "Sec-WebSocket-Version");
    const char *key = sh_request_header(r, "Sec-WebSocket-Key");

    if (strcmp(r->method, "GET") != 0 || r->http_minor < 1)
        return 400;
    if (header_count(r, "Host") != 1)
        return 400;
    if (list_count(r, "Upgrade", "websocket", NULL) == 0 ||
        list_count(r, "Connection", "upgrade", NULL) == 0)
        return 400;
    if (version == NULL || header_count(r, "Sec-WebSocket-Version") != 1 ||
        strcmp(version, "13") != 0)
        return 426;
    if (key == NULL || header_count(r, "Sec-WebSocket-Key") != 1 ||
        !ws_key_valid(key))
        return 400;
    return 0;
}

int sh_ws_accept_key(const char *key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    /* fetched and made once: an implicit fetch (EVP_sha1() in DigestInit) looks
     * the provider up at every handshake, a third of this function's cost */
    static EVP_MD *sha1;
    static EVP_MD_CTX *ctx;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!sha1)
        sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    if (!ctx)
        ctx = EVP_MD_CTX_new();
    int ok = sha1 && ctx && EVP_DigestInit_ex2(ctx, sha1, NULL) == 1 &&
             EVP_DigestUpdate(ctx, key, strlen(key)) == 1 &&
             EVP_DigestUpdate(ctx, guid, sizeof guid - 1) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20;
    out[0] = '\0';
    if (!ok)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
    return 0;
}
