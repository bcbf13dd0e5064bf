/* conn.c — the transport: accept, socket I/O, the plain HTTP phase, the
 * upgrade, output and the end of a connection. The WebSocket phase is in
 * ws_conn.c. See conn.h. */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "log.h"
#include "str.h"
#include "ws_deflate.h"

enum timer_mode { TM_NONE, TM_HEAD, TM_KEEPALIVE, TM_DECIDE, TM_LINGER, TM_SEND };

#define HAS SH_HAS
#define SET SH_SET
#define CLR SH_CLR

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void process_input(sh_conn *c);
static void linger(sh_conn *c);
static int pull_body(sh_conn *c);
static void end_body(sh_conn *c);

int sh_conn_emit(sh_conn *c, const sh_conn_event *ev)
{
    return c->tp->cb(c, ev, c->tp->cb_arg);
}

/* More answers wait to be written than max_send_buffer: a client that
 * pipelines requests without reading the answers is not served further
 * until it reads. */
static int output_full(const sh_conn *c)
{
    return c->out.len + c->inflight.len > c->lim->max_send_buffer;
}

/* ---------------------------------------------------------------- timers */

static void on_timer(uv_timer_t *h)
{
    sh_conn *c = h->data;
    if (c->phase == SH_PHASE_WS && !HAS(c, SH_CF_LINGERING)) {
        c->tp->ws->on_timer(c);
        return;
    }
    if (c->timer_mode == TM_HEAD)
        sh_info(c->id, "no complete request head within %llums: dropped",
                (unsigned long long)c->lim->handshake_timeout_ms);
    else if (c->timer_mode == TM_DECIDE)
        sh_warn(c->id, "the upgrade was not decided within %llums: dropped",
                (unsigned long long)c->lim->handshake_timeout_ms);
    else if (c->timer_mode == TM_SEND)
        sh_info(c->id, "response body: no progress within %llums: dropped",
                (unsigned long long)c->lim->keepalive_timeout_ms);
    sh_conn_close(c);
}

void sh_conn_arm_timer(sh_conn *c, uint64_t ms)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    uv_update_time(c->tp->loop); /* the cached time may be stale after long work */
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void arm(sh_conn *c, enum timer_mode mode, uint64_t ms)
{
    c->timer_mode = (uint8_t)mode;
    sh_conn_arm_timer(c, ms);
}

/* ---------------------------------------------------------------- reading */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sh_conn *c = h->data;
    sh_transport *tp = c->tp;
    (void)suggested;
    if (tp->read_buf_busy) { /* re-entrant read: cannot happen on one loop */
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    tp->read_buf_busy = 1;
    buf->base = tp->read_buf;
    buf->len = SH_READ_BUF_SIZE;
}

void sh_conn_start_reading(sh_conn *c)
{
    if (!HAS(c, SH_CF_READING) && c->phase != SH_PHASE_CLOSED) {
        if (c->tp->capture || uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            SET(c, SH_CF_READING);
    }
}

void sh_conn_stop_reading(sh_conn *c)
{
    if (HAS(c, SH_CF_READING)) {
        if (!c->tp->capture)
            uv_read_stop((uv_stream_t *)&c->tcp);
        CLR(c, SH_CF_READING);
    }
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    sh_conn *c = st->data;
    if (buf->base == c->tp->read_buf)
        c->tp->read_buf_busy = 0;
    if (n == 0)
        return;
    if (n < 0) {
        if (c->phase == SH_PHASE_WS && n == UV_EOF && !HAS(c, SH_CF_LINGERING))
            c->tp->ws->on_read(c, NULL, 0); /* peer half-closed: ends the connection */
        else
            sh_conn_close(c);
        return;
    }
    c->tp->metrics->bytes_in += (uint64_t)n;
    c->bytes_in += (uint64_t)n;
    if (HAS(c, SH_CF_LINGERING))
        return; /* discard until EOF or the linger timer */
    if (c->phase == SH_PHASE_WS) {
        c->tp->ws->on_read(c, buf->base, (size_t)n);
        return;
    }
    if (c->phase != SH_PHASE_HANDSHAKE && c->timer_mode == TM_KEEPALIVE)
        arm(c, TM_HEAD, c->lim->handshake_timeout_ms);
    if (c->phase == SH_PHASE_HTTP && HAS(c, SH_CF_END_AFTER_WRITE))
        return; /* the last answer waits to be read: nothing more is parsed, so the
                   input is discarded (kept, it grew without bound while unread) */
    if (sh_buf_append(&c->pending, buf->base, (size_t)n) != 0) {
        sh_warn(c->id, "out of memory reading a request: closed");
        sh_conn_close(c);
        return;
    }
    if (c->phase == SH_PHASE_HANDSHAKE && c->pending.len > SH_READ_BUF_SIZE)
        sh_conn_stop_reading(c); /* the upgrade is being decided: the bytes are the
                                    WebSocket's, kept (every one), but not without bound */
    if (c->phase == SH_PHASE_HTTP)
        process_input(c);
}

/* ---------------------------------------------------------------- writing */

void sh_conn_mark_dirty(sh_conn *c)
{
    if (HAS(c, SH_CF_DIRTY) || c->phase == SH_PHASE_CLOSED)
        return;
    SET(c, SH_CF_DIRTY);
    c->dirty_next = c->tp->dirty;
    c->tp->dirty = c;
}

static void on_write(uv_write_t *req, int status)
{
    sh_conn *c = req->data;
    free(req);
    c->wreq = NULL;
    CLR(c, SH_CF_WRITING);
    c->tp->metrics->bytes_out += c->inflight.len;
    c->bytes_out += c->inflight.len;
    sh_buf_free(&c->inflight); /* an idle connection keeps no output buffer */
    if (c->phase == SH_PHASE_CLOSED)
        return;
    if (status < 0) {
        sh_debug(c->id, "write failed: %s", uv_strerror(status));
        sh_conn_close(c);
        return;
    }
    sh_conn_flush(c);
    if (c->phase == SH_PHASE_HTTP && !HAS(c, SH_CF_BUSY | SH_CF_READING | SH_CF_END_AFTER_WRITE |
                                                 SH_CF_LINGERING) &&
        !output_full(c)) {
        sh_conn_start_reading(c); /* the answers drained: serve the rest */
        if (c->pending.len)
            process_input(c);
    }
}

/* Write what is in out: a direct write first, the rest queued. When nothing
 * is left and the connection is meant to end, end it. */
void sh_conn_flush(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED || HAS(c, SH_CF_WRITING))
        return;
    if (c->body && pull_body(c) != 0)
        return;
    if (c->out.len > 0) {
        uv_buf_t b = uv_buf_init(c->out.p, (unsigned)c->out.len);
        int n = (int)c->out.len;
        if (c->tp->capture)
            c->tp->capture(c, c->out.p, c->out.len, c->tp->cb_arg); /* a virtual peer takes all */
        else
            n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n > 0) {
            c->tp->metrics->bytes_out += (uint64_t)n;
            c->bytes_out += (uint64_t)n;
            sh_buf_consume(&c->out, (size_t)n);
        } else if (n < 0 && n != UV_EAGAIN) {
            sh_conn_close(c);
            return;
        }
        if (c->out.len > 0) {
            sh_buf tmp = c->inflight; /* swap: out's bytes go in flight */
            c->inflight = c->out;
            c->out = tmp;
            c->out.len = 0;
            b = uv_buf_init(c->inflight.p, (unsigned)c->inflight.len);
            c->wreq = malloc(sizeof *c->wreq);
            if (!c->wreq) {
                sh_conn_close(c);
                return;
            }
            c->wreq->data = c;
            SET(c, SH_CF_WRITING);
            if (uv_write(c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
                free(c->wreq);
                c->wreq = NULL;
                CLR(c, SH_CF_WRITING);
                sh_conn_close(c);
            }
            return;
        }
        sh_buf_free(&c->out);
    }
    if (c->body) { /* all written: the next piece in the next iteration (fairness) */
        sh_conn_mark_dirty(c);
        return;
    }
    if (HAS(c, SH_CF_END_AFTER_WRITE) || (c->phase == SH_PHASE_WS && c->tp->ws->finished(c)))
        linger(c);
}

static void on_resumer(uv_idle_t *h) { (void)h; }

static void on_flush(uv_prepare_t *h)
{
    sh_transport *tp = h->data;
    sh_conn *list = tp->dirty;
    tp->dirty = NULL;
    while (list) {
        sh_conn *c = list;
        list = c->dirty_next;
        c->dirty_next = NULL;
        CLR(c, SH_CF_DIRTY);
        if (HAS(c, SH_CF_PAUSED))
            c->tp->ws->resume(c); /* input that waited behind a message's hook */
        sh_conn_flush(c);
    }
    /* connections marked meanwhile are written in the next iteration: the
     * poll must not block until then */
    if (tp->dirty || tp->npaused)
        uv_idle_start(&tp->resumer, on_resumer);
    else
        uv_idle_stop(&tp->resumer);
}

/* Take c out of the dirty list (it is going away). */
static void undirty(sh_conn *c)
{
    if (!HAS(c, SH_CF_DIRTY))
        return;
    for (sh_conn **p = &c->tp->dirty; *p; p = &(*p)->dirty_next)
        if (*p == c) {
            *p = c->dirty_next;
            break;
        }
    c->dirty_next = NULL;
    CLR(c, SH_CF_DIRTY);
}

/* Graceful end: send FIN, then discard input until the peer closes or the
 * close timeout passes, so a response is not lost to a reset. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    sh_conn *c = req->data;
    free(req);
    c->shutdown_req = NULL;
    CLR(c, SH_CF_SHUTTING);
    if (c->phase == SH_PHASE_CLOSED)
        return;
    if (status < 0)
        sh_conn_close(c);
}

/* The connection stops counting against max_connections. */
static void uncount(sh_conn *c)
{
    if (HAS(c, SH_CF_COUNTED)) {
        CLR(c, SH_CF_COUNTED);
        c->tp->nlive--;
    }
}

static void report_close(sh_conn *c, int was_ws);

static void linger(sh_conn *c)
{
    if (HAS(c, SH_CF_LINGERING) || c->phase == SH_PHASE_CLOSED)
        return;
    SET(c, SH_CF_LINGERING);
    CLR(c, SH_CF_END_AFTER_WRITE);
    uncount(c);
    if (c->phase == SH_PHASE_WS)
        report_close(c, 1); /* the close handshake is complete */
    if (c->tp->capture) { /* a virtual peer: no FIN to send, nothing to linger for */
        sh_conn_close(c);
        return;
    }
    uv_os_fd_t fd;
    if (!HAS(c, SH_CF_WRITING) && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        /* nothing queued: the FIN goes now (uv_shutdown would wait a loop iteration
         * for POLLOUT: two epoll_ctl more) */
        if (shutdown(fd, SHUT_WR) != 0) {
            sh_conn_close(c);
            return;
        }
    } else {
        c->shutdown_req = malloc(sizeof *c->shutdown_req);
        if (!c->shutdown_req) {
            sh_conn_close(c);
            return;
        }
        c->shutdown_req->data = c;
        if (uv_shutdown(c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
            free(c->shutdown_req);
            c->shutdown_req = NULL;
            sh_conn_close(c);
            return;
        }
        SET(c, SH_CF_SHUTTING);
    }
    sh_conn_start_reading(c);
    arm(c, TM_LINGER, c->lim->close_timeout_ms < 2000 ? c->lim->close_timeout_ms : 2000);
}

/* --------------------------------------------------------------- responses */

const char *sh_http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

#define MAX_HEAD_OUT (16 * 1024)

int sh_conn_respond(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                    const char *extra, int keep, int head_only)
{
    if (c->phase == SH_PHASE_CLOSED)
        return -1;
    size_t el = extra ? strlen(extra) : 0, cl = ctype ? strlen(ctype) : 0;
    if (el + cl > MAX_HEAD_OUT) {
        sh_warn(c->id, "response head over %d bytes: 500 instead", MAX_HEAD_OUT);
        status = 500;
        ctype = "text/plain; charset=utf-8";
        body = "500 Internal Server Error\n";
        len = 26;
        extra = NULL;
        keep = 0;
    }
    /* 204 and 304 end at the head (RFC 9110 §6.4.1): a body would be read as the next
     * response; a 204 has no Content-Length (§8.6) */
    char clen[48] = "";
    if (status == 204 || status == 304)
        head_only = 1;
    if (status != 204)
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nServer: statushost\r\n%sConnection: %s\r\n", status,
                     sh_http_status_text(status), clen,
                     keep && !c->tp->stopping ? "keep-alive" : "close");
    assert(n > 0 && (size_t)n < sizeof head);
    int bad = sh_buf_append(&c->out, head, (size_t)n);
    if (ctype) {
        bad |= sh_buf_append(&c->out, "Content-Type: ", 14);
        bad |= sh_buf_append(&c->out, ctype, strlen(ctype));
        bad |= sh_buf_append(&c->out, "\r\n", 2);
    }
    if (extra)
        bad |= sh_buf_append(&c->out, extra, strlen(extra));
    bad |= sh_buf_append(&c->out, "\r\n", 2);
    if (!head_only && len)
        bad |= sh_buf_append(&c->out, body, len);
    if (bad) {
        sh_warn(c->id, "out of memory answering: closed");
        sh_conn_close(c);
        return -1;
    }
    if (!keep || c->tp->stopping)
        SET(c, SH_CF_END_AFTER_WRITE);
    c->http_status = status;
    c->requests++;
    c->tp->metrics->http_requests_total++;
    sh_conn_mark_dirty(c);
    return 0;
}

int sh_conn_respond_body(sh_conn *c, int status, const char *ctype, uint64_t len,
                         const char *extra, int keep, sh_body_source *src)
{
    assert(!c->body);
    if (c->phase != SH_PHASE_HTTP)
        return -1;
    if ((extra ? strlen(extra) : 0) + (ctype ? strlen(ctype) : 0) > MAX_HEAD_OUT) {
        sh_conn_respond(c, status, ctype, NULL, 0, extra, keep, 0); /* answers 500 */
        return -1;
    }
    if (sh_conn_respond(c, status, ctype, NULL, (size_t)len, extra, keep, 1) != 0)
        return -1;
    src->left = len;
    c->body = src; /* pulled by sh_conn_flush */
    arm(c, TM_SEND, c->lim->keepalive_timeout_ms);
    return 0;
}

/* Top the output up to SH_BODY_CHUNK bytes with the body's next piece (the
 * previous ones are written: nothing is in flight); at its end, release the
 * source and go on with the next request. Returns 0, or -1 when the
 * connection was closed. */
static int pull_body(sh_conn *c)
{
    sh_body_source *src = c->body;
    if (src->left > 0 && c->out.len < SH_BODY_CHUNK) {
        size_t want = SH_BODY_CHUNK - c->out.len;
        if (want > src->left)
            want = (size_t)src->left;
        long n = sh_buf_reserve(&c->out, want) == 0 ? src->read(src, c->out.p + c->out.len, want)
                                                    : -ENOMEM;
        if (n <= 0) { /* the peer sees fewer bytes than announced, never other ones */
            sh_warn(c->id, "response body ends %llu bytes short (%s): closed",
                    (unsigned long long)src->left, n == 0 ? "source ended" : strerror((int)-n));
            sh_conn_close(c);
            return -1;
        }
        assert((size_t)n <= want);
        c->out.len += (size_t)n;
        src->left -= (uint64_t)n;
        arm(c, TM_SEND, c->lim->keepalive_timeout_ms); /* progress */
    }
    if (src->left == 0) {
        end_body(c);
        if (c->tp->stopping)
            SET(c, SH_CF_END_AFTER_WRITE);
        if (!HAS(c, SH_CF_BUSY)) /* else sh_conn_request_done, when called, goes on */
            sh_conn_request_done(c);
    }
    return c->phase == SH_PHASE_CLOSED ? -1 : 0;
}

/* Give the body's source back: taken whole, or the connection goes. */
static void end_body(sh_conn *c)
{
    sh_body_source *src = c->body;
    if (src) {
        c->body = NULL;
        src->release(src);
    }
}

/* A short plain-text answer that ends the connection. */
static void refuse(sh_conn *c, int status, const char *extra)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, sh_http_status_text(status));
    c->tp->metrics->rejected_total++;
    sh_conn_respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, extra, 0, 0);
}

/* ------------------------------------------------------------ plain HTTP */

void sh_conn_request_done(sh_conn *c)
{
    CLR(c, SH_CF_BUSY);
    if (c->phase != SH_PHASE_HTTP)
        return;
    sh_http_parser_reset(c->hp);
    if (c->body)
        return; /* the next request once the body is taken (pull_body) */
    if (!HAS(c, SH_CF_END_AFTER_WRITE | SH_CF_LINGERING)) {
        arm(c, c->pending.len ? TM_HEAD : TM_KEEPALIVE,
            c->pending.len ? c->lim->handshake_timeout_ms : c->lim->keepalive_timeout_ms);
        if (output_full(c))
            return; /* resumed from on_write once the answers drain */
        sh_conn_start_reading(c);
        if (c->pending.len && !HAS(c, SH_CF_PARSING))
            process_input(c); /* an answer that came later (a route): go on */
    } else if (!HAS(c, SH_CF_LINGERING)) {
        /* the last answer (Connection: close): a reader that does not take it
         * does not hold the socket and the answer's memory for ever */
        arm(c, TM_KEEPALIVE, c->lim->keepalive_timeout_ms);
    }
}

static void handle_plain(sh_conn *c, sh_request *r)
{
    sh_conn_event ev = {.type = SH_CONN_EV_REQUEST, .req = r,
                        .keep_alive = r->keep_alive && !c->tp->stopping,
                        .head_only = strcmp(r->method, "HEAD") == 0};
    sh_conn_emit(c, &ev); /* answers now or later, then sh_conn_request_done */
}

/* ------------------------------------------------------------- upgrade */

static int origin_allowed(const sh_limits *lim, const char *origin)
{
    if (!lim->allowed_origins || !origin)
        return 1;
    for (char **o = lim->allowed_origins; *o; o++)
        if (strcasecmp(*o, origin) == 0)
            return 1;
    return 0;
}

/* Negotiate permessage-deflate from r's Sec-WebSocket-Extensions lines (the
 * first acceptable offer of the first line that has one): set c->pmd and
 * append the response header to c->out. Returns 0, or -1 (out of memory). */
static int negotiate_deflate(sh_conn *c, const sh_request *r)
{
    if (!c->lim->permessage_deflate)
        return 0;
    for (size_t i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, "Sec-WebSocket-Extensions") != 0)
            continue;
        sh_pmd_params prm;
        char resp[160];
        const char *why;
        int rc = sh_pmd_negotiate(r->headers[i].value, &prm, resp, sizeof resp, &why);
        if (rc < 0)
            sh_info(c->id, "malformed Sec-WebSocket-Extensions: no compression");
        else if (rc == 0 && strcmp(why, "no permessage-deflate offer") != 0)
            sh_info(c->id, "permessage-deflate offer declined: %s", why);
        if (rc <= 0)
            continue;
        c->pmd = sh_pmd_new(&prm);
        if (!c->pmd)
            return -1;
        int bad = sh_buf_append(&c->out, "Sec-WebSocket-Extensions: ", 26);
        bad |= sh_buf_append(&c->out, resp, strlen(resp));
        bad |= sh_buf_append(&c->out, "\r\n", 2);
        return bad ? -1 : 0;
    }
    return 0;
}

/* A header line value is safe to echo: no CR, LF or NUL. */
static int header_safe(const char *v)
{
    return v && !strpbrk(v, "\r\n");
}

void sh_conn_upgrade(sh_conn *c, const char *protocol, const char *extra)
{
    if (c->phase != SH_PHASE_HANDSHAKE)
        return;
    if (c->tp->stopping) { /* the decision took its time and the server is stopping */
        sh_conn_refuse(c, 503, "503 shutting down\n", 18, NULL);
        return;
    }
    sh_request *r = sh_http_parser_request(c->hp);
    char accept[29];
    if (sh_ws_accept_key(sh_request_header(r, "Sec-WebSocket-Key"), accept) != 0) {
        sh_conn_refuse(c, 500, "500 Internal Server Error\n", 26, NULL);
        return;
    }
    static const char head[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Accept: ";
    int bad = sh_buf_append(&c->out, head, sizeof head - 1);
    bad |= sh_buf_append(&c->out, accept, 28);
    bad |= sh_buf_append(&c->out, "\r\n", 2);
    if (protocol && header_safe(protocol)) {
        bad |= sh_buf_append(&c->out, "Sec-WebSocket-Protocol: ", 24);
        bad |= sh_buf_append(&c->out, protocol, strlen(protocol));
        bad |= sh_buf_append(&c->out, "\r\n", 2);
    }
    bad |= negotiate_deflate(c, r);
    if (extra)
        bad |= sh_buf_append(&c->out, extra, strlen(extra));
    bad |= sh_buf_append(&c->out, "\r\n", 2);
    if (bad) {
        sh_conn_close(c);
        return;
    }
    CLR(c, SH_CF_BUSY);
    c->phase = SH_PHASE_WS;
    c->http_status = 101;
    uv_timer_stop(&c->timer);
    c->timer_mode = TM_NONE;
    sh_http_parser_free(c->hp); /* the HTTP phase is over: its memory too */
    free(c->hp);
    c->hp = NULL;
    sh_conn_mark_dirty(c);
    if (c->tp->ws->start(c) != 0)
        sh_conn_close(c);
}

void sh_conn_refuse(sh_conn *c, int status, const char *body, size_t len, const char *extra)
{
    sh_conn_refuse_as(c, status, NULL, body, len, extra);
}

void sh_conn_refuse_as(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                       const char *extra)
{
    if (c->phase != SH_PHASE_HANDSHAKE)
        return;
    assert(status >= 400 && status <= 599);
    c->phase = SH_PHASE_HTTP;
    uv_timer_stop(&c->timer);
    c->timer_mode = TM_NONE;
    c->tp->metrics->rejected_total++;
    sh_info(c->id, "handshake refused: %d", status);
    sh_conn_respond(c, status, ctype ? ctype : "text/plain; charset=utf-8", body, len, extra, 0, 0);
}

static void handle_upgrade(sh_conn *c, sh_request *r)
{
    int status = sh_ws_handshake_check(r);
    if (status == 426) {
        refuse(c, 426, "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (status != 0) {
        refuse(c, status, NULL);
        return;
    }
    if (!origin_allowed(c->lim, sh_request_header(r, "Origin"))) {
        sh_info(c->id, "origin %s not allowed: 403", sh_request_header(r, "Origin"));
        refuse(c, 403, NULL);
        return;
    }
    if (c->tp->stopping || HAS(c, SH_CF_OVER_LIMIT)) {
        refuse(c, 503, "Retry-After: 1\r\n");
        return;
    }
    c->phase = SH_PHASE_HANDSHAKE;
    /* the decision may take time (a policy that asks Redis): it gets the
     * handshake timeout, and reading goes on so a client that leaves is
     * noticed */
    arm(c, TM_DECIDE, c->lim->handshake_timeout_ms);
    sh_conn_event ev = {.type = SH_CONN_EV_UPGRADE, .req = r};
    sh_conn_emit(c, &ev);
}

/* --------------------------------------------------------------- parsing */

/* The request's method and path, for the access line. */
static void remember_request(sh_conn *c, const sh_request *r)
{
    sh_strtrunc(c->method, sizeof c->method, r->method);
    size_t n = strnlen(r->path, 512);
    char *p = realloc(c->path, n + 1);
    if (p) {
        memcpy(p, r->path, n);
        p[n] = '\0';
        c->path = p;
    }
}

/* Parse and answer the requests in pending, one at a time. */
static void parse_requests(sh_conn *c)
{
    while (c->phase == SH_PHASE_HTTP && !c->body &&
           !HAS(c, SH_CF_BUSY | SH_CF_END_AFTER_WRITE | SH_CF_LINGERING) && c->pending.len > 0 &&
           !output_full(c)) {
        size_t consumed = 0;
        int status = 0;
        int rc = sh_http_parser_feed(c->hp, c->pending.p, c->pending.len, &consumed, &status);
        if (rc == SH_HTTP_NEED_MORE) {
            c->pending.len = 0;
            if (sh_http_parser_take_continue(c->hp)) { /* the client waits for it to send */
                if (sh_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0) {
                    sh_conn_close(c);
                    return;
                }
                sh_conn_mark_dirty(c);
            }
            return;
        }
        if (rc < 0) {
            sh_info(c->id, "bad request from %s: %d (%s)", c->peer, status,
                    sh_http_parser_reason(c->hp));
            c->pending.len = 0;
            refuse(c, status ? status : 400, NULL);
            return;
        }
        sh_buf_consume(&c->pending, consumed);
        sh_request *r = sh_http_parser_request(c->hp);
        remember_request(c, r);
        SET(c, SH_CF_BUSY);
        uv_timer_stop(&c->timer);
        c->timer_mode = TM_NONE;
        /* an Upgrade header naming websocket without the Connection token
         * is still an upgrade attempt: RFC 6455 §4.2.1 answers it 400, not a
         * page; an upgrade to another protocol (curl --http2's h2c) is
         * ignored (RFC 9110 §7.8): the request is served in HTTP/1.1 */
        if (sh_request_has_token(r, "Upgrade", "websocket"))
            handle_upgrade(c, r);
        else
            handle_plain(c, r);
    }
}

static void process_input(sh_conn *c)
{
    if (HAS(c, SH_CF_PARSING))
        return;
    SET(c, SH_CF_PARSING); /* sh_conn_request_done does not recurse into us */
    parse_requests(c);
    CLR(c, SH_CF_PARSING);
    /* While a request is answered later (a route), reading goes on so the
     * peer's going away is noticed; pipelined input beyond one read's worth
     * waits in the socket instead of in memory. */
    if (((HAS(c, SH_CF_BUSY) || c->body) && c->pending.len > SH_READ_BUF_SIZE) ||
        (c->phase == SH_PHASE_HTTP && output_full(c)))
        sh_conn_stop_reading(c);
    if (c->pending.len == 0)
        sh_buf_free(&c->pending);
}

/* ---------------------------------------------------------------- accept */

static void peer_name(sh_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    ss.ss_family = AF_UNSPEC;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) { /* written here: uv_ip4_name and "%s:%d" cost 2,400
                                        * instructions, a tenth of a job's socket work */
            const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
            const unsigned char *b = (const unsigned char *)&a->sin_addr;
            char *w = c->peer; /* at most "255.255.255.255:65535": fits the 56 bytes */
            for (int i = 0; i < 4; i++) {
                w += sh_fmt_u64(w, b[i]);
                *w++ = i < 3 ? '.' : ':';
            }
            w += sh_fmt_u64(w, ntohs(a->sin_port));
            *w = '\0';
            return;
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(c->peer, sizeof c->peer, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

static void on_handle_closed(uv_handle_t *h)
{
    sh_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    sh_transport *tp = c->tp;
    undirty(c);
    if (c->prev)
        c->prev->next = c->next;
    else if (tp->conns == c)
        tp->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    tp->nconns--;
    sh_conn_event ev = {.type = SH_CONN_EV_FREE};
    sh_conn_emit(c, &ev);
    if (c->ws) /* cannot happen: closing freed it (or the end of its wslay call did) */
        tp->ws->free(c);
    sh_buf_free(&c->pending);
    sh_buf_free(&c->out);
    sh_buf_free(&c->inflight);
    free(c->close_reason);
    free(c->path);
    sh_pmd_free(c->pmd);
    free(c);
}

/* "<instance><seq in hex, 8 digits at least>" cut to size: snprintf's
 * "%s%08llx" without its cost. */
static void conn_id(char *out, size_t size, const char *instance, unsigned long long seq)
{
    char hex[16];
    size_t n = 0;
    do
        hex[n++] = "0123456789abcdef"[seq & 15];
    while ((seq >>= 4) != 0 || n < 8);
    size_t o = strlen(instance); /* (sh_strtrunc: gcc reads its bound as the source's size) */
    if (o > size - 1)
        o = size - 1;
    memcpy(out, instance, o);
    while (n > 0 && o < size - 1)
        out[o++] = hex[--n];
    out[o] = '\0';
}

static sh_conn *conn_new(sh_transport *tp, const sh_limits *lim)
{
    sh_conn *c = sh_zalloc(sizeof *c);
    if (!c) {
        /* refuse: accept into a throwaway handle is not possible without
         * memory either; leave it in the backlog and say so */
        sh_error(NULL, "out of memory accepting a connection");
        return NULL;
    }
    c->tp = tp;
    c->lim = lim;
    uv_tcp_init(tp->loop, &c->tcp);
    c->tcp.data = c;
    uv_timer_init(tp->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    conn_id(c->id, sizeof c->id, tp->instance, ++tp->conn_seq);
    c->next = tp->conns;
    if (tp->conns)
        tp->conns->prev = c;
    tp->conns = c;
    tp->nconns++;
    return c;
}

static void conn_opened(sh_conn *c)
{
    c->opened_ms = uv_now(c->tp->loop);
    c->tp->metrics->connections_current++;
    c->tp->metrics->connections_total++;
}

sh_conn *sh_transport_accept(sh_transport *tp, uv_stream_t *listener, const sh_limits *lim)
{
    sh_conn *c = conn_new(tp, lim);
    if (!c)
        return NULL;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        c->phase = SH_PHASE_CLOSED;
        SET(c, SH_CF_ENDED); /* never got past accept: no EV_CLOSE */
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        return NULL;
    }
    peer_name(c);
#ifdef __linux__
    if (tp->nodelay_listener != listener) {
        /* accepted sockets inherit TCP_NODELAY from their listener: one setsockopt for
         * all of them, not one per accept (this one was accepted before it was set) */
        uv_tcp_nodelay((uv_tcp_t *)listener, 1);
        tp->nodelay_listener = listener;
        uv_tcp_nodelay(&c->tcp, 1);
    }
#else
    uv_tcp_nodelay(&c->tcp, 1);
#endif
    conn_opened(c);
    return c;
}

void sh_transport_set_capture(sh_transport *tp, sh_conn_capture_fn capture)
{
    tp->capture = capture;
}

sh_conn *sh_transport_open_virtual(sh_transport *tp, const sh_limits *lim, const char *peer)
{
    assert(tp->capture);
    sh_conn *c = conn_new(tp, lim);
    if (!c)
        return NULL;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    conn_opened(c);
    return c;
}

void sh_conn_input(sh_conn *c, const char *data, size_t len)
{
    assert(c->tp->capture && HAS(c, SH_CF_READING));
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    on_read((uv_stream_t *)&c->tcp, data ? (ssize_t)len : UV_EOF, &b);
}

void sh_conn_start(sh_conn *c)
{
    sh_transport *tp = c->tp;
    c->hp = malloc(sizeof *c->hp);
    if (!c->hp) {
        sh_warn(c->id, "out of memory: connection from %s dropped", c->peer);
        sh_conn_close(c);
        return;
    }
    sh_http_parser_init(c->hp, c->lim->max_head_bytes, c->lim->max_body_bytes);
    if (tp->nlive >= c->lim->max_connections + SH_ADMIN_RESERVE) {
        sh_warn(c->id, "at max_connections (%zu): 503 to %s", c->lim->max_connections, c->peer);
        refuse(c, 503, "Retry-After: 1\r\n");
        sh_conn_start_reading(c);
        return;
    }
    if (tp->nlive >= c->lim->max_connections)
        SET(c, SH_CF_OVER_LIMIT); /* in the reserve: only /healthz and /metrics are answered */
    SET(c, SH_CF_COUNTED);
    tp->nlive++;
    sh_debug(c->id, "accepted %s", c->peer);
    arm(c, TM_HEAD, c->lim->handshake_timeout_ms);
    sh_conn_start_reading(c);
}

/* ------------------------------------------------------------------ close */

static void report_close(sh_conn *c, int was_ws)
{
    if (HAS(c, SH_CF_ENDED))
        return;
    SET(c, SH_CF_ENDED);
    sh_conn_event ev = {.type = SH_CONN_EV_CLOSE, .was_ws = was_ws,
                        .code = c->close_code ? c->close_code : 1006,
                        .reason = c->close_reason ? c->close_reason : ""};
    if (was_ws)
        sh_info(c->id, "websocket closed %u%s%s", ev.code, ev.reason[0] ? " " : "", ev.reason);
    int ws = was_ws || c->http_status == 101;
    sh_access acc = {.conn_id = c->id, .peer = c->peer, .websocket = ws,
                     .method = c->method[0] ? c->method : NULL, .path = c->path,
                     .http_status = c->http_status, .requests = c->requests,
                     .duration_ms = (double)(uv_now(c->tp->loop) - c->opened_ms),
                     .bytes_in = c->bytes_in, .bytes_out = c->bytes_out,
                     .messages_in = c->msgs_in, .messages_out = c->msgs_out,
                     .close_code = ws ? ev.code : 0, .close_reason = ws ? ev.reason : NULL};
    sh_log_access(&acc);
    sh_conn_emit(c, &ev);
}

void sh_conn_close(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    int was_ws = c->phase == SH_PHASE_WS;
    c->phase = SH_PHASE_CLOSED;
    end_body(c);
    uncount(c);
    undirty(c);
    if (HAS(c, SH_CF_PAUSED)) {
        CLR(c, SH_CF_PAUSED);
        c->tp->npaused--;
    }
    sh_conn_stop_reading(c);
    uv_timer_stop(&c->timer);
    if (c->hp) {
        sh_http_parser_free(c->hp);
        free(c->hp);
        c->hp = NULL;
    }
    if (was_ws) {
        c->tp->metrics->websockets_current--;
        c->tp->ws->free(c);
    }
    c->tp->metrics->connections_current--;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    report_close(c, was_ws && !HAS(c, SH_CF_LINGERING));
}

/* ------------------------------------------------------------ transport */

int sh_transport_init(sh_transport *tp, uv_loop_t *loop, const sh_ws_phase *ws, sh_conn_cb cb,
                      void *arg, sh_metrics *metrics, const char *instance)
{
    memset(tp, 0, sizeof *tp);
    tp->loop = loop;
    tp->ws = ws;
    tp->cb = cb;
    tp->cb_arg = arg;
    tp->metrics = metrics;
    snprintf(tp->instance, sizeof tp->instance, "%s", instance);
    tp->read_buf = malloc(SH_READ_BUF_SIZE);
    if (!tp->read_buf)
        return UV_ENOMEM;
    uv_prepare_init(loop, &tp->flusher);
    tp->flusher.data = tp;
    uv_prepare_start(&tp->flusher, on_flush);
    uv_unref((uv_handle_t *)&tp->flusher);
    uv_idle_init(loop, &tp->resumer);
    tp->resumer.data = tp;
    uv_timer_init(loop, &tp->parker);
    tp->parker.data = tp;
    uv_unref((uv_handle_t *)&tp->parker);
    return 0;
}

static void free_read_buf(uv_handle_t *h)
{
    sh_transport *tp = h->data;
    free(tp->read_buf);
    tp->read_buf = NULL;
}

void sh_transport_close(sh_transport *tp)
{
    tp->stopping = 1;
    for (sh_conn *c = tp->conns, *next; c; c = next) {
        next = c->next;
        sh_conn_close(c);
    }
    if (!uv_is_closing((uv_handle_t *)&tp->flusher)) {
        uv_close((uv_handle_t *)&tp->parker, NULL);
        uv_close((uv_handle_t *)&tp->resumer, NULL);
        uv_close((uv_handle_t *)&tp->flusher, free_read_buf);
    }
}

void sh_transport_stop(sh_transport *tp)
{
    tp->stopping = 1;
    for (sh_conn *c = tp->conns, *next; c; c = next) {
        next = c->next;
        if (c->phase == SH_PHASE_WS)
            c->tp->ws->close(c, 1001, "server shutting down");
        else if (c->phase == SH_PHASE_HTTP && !HAS(c, SH_CF_BUSY) && !c->body)
            sh_conn_close(c); /* a body being sent ends the connection when taken */
    }
}
