/* conn.c — one accepted connection: socket, buffers, the plain HTTP phase and
 * the upgrade. The WebSocket phase is in ws_conn.c. See conn.h. */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "log.h"
#include "lua_host.h"
#include "redis_bus.h"
#include "lua_api.h"
#include "server.h"
#include "static_files.h"

#define MAX_STATIC_BYTES (16u * 1024 * 1024)

enum timer_mode { TM_NONE, TM_HEAD, TM_KEEPALIVE, TM_LINGER };

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void process_input(sh_conn *c);

/* More answers wait to be written than max_send_buffer: a client that
 * pipelines requests without reading the answers is not served further
 * until it reads. */
static int output_full(const sh_conn *c)
{
    return c->out.len + c->inflight.len > c->gen->cfg.max_send_buffer;
}

/* ---------------------------------------------------------------- timers */

static void on_timer(uv_timer_t *h)
{
    sh_conn *c = h->data;
    if (c->phase == SH_PHASE_WS && !c->lingering) {
        sh_ws_on_timer(c);
        return;
    }
    if (c->timer_mode == TM_HEAD)
        sh_info(c->id, "no complete request head within %llums: dropped",
                (unsigned long long)c->gen->cfg.handshake_timeout_ms);
    sh_conn_close(c);
}

void sh_conn_arm_timer(sh_conn *c, uint64_t ms)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void arm(sh_conn *c, enum timer_mode mode, uint64_t ms)
{
    c->timer_mode = mode;
    sh_conn_arm_timer(c, ms);
}

/* ---------------------------------------------------------------- reading */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sh_conn *c = h->data;
    sh_server *s = c->srv;
    (void)suggested;
    if (s->read_buf_busy) { /* re-entrant read: should not happen on one loop */
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    s->read_buf_busy = 1;
    buf->base = s->read_buf;
    buf->len = SH_READ_BUF_SIZE;
}

static void start_reading(sh_conn *c)
{
    if (!c->reading && c->phase != SH_PHASE_CLOSED) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = 1;
    }
}

void sh_conn_stop_reading(sh_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    sh_conn *c = st->data;
    if (buf->base == c->srv->read_buf)
        c->srv->read_buf_busy = 0;
    if (n == 0)
        return;
    if (n < 0) {
        if (c->phase == SH_PHASE_WS && n == UV_EOF)
            sh_ws_on_read(c, NULL, 0); /* peer half-closed: ends the connection */
        else
            sh_conn_close(c);
        return;
    }
    c->srv->metrics.bytes_in += (uint64_t)n;
    if (c->lingering)
        return; /* discard until EOF or the linger timer */
    if (c->phase == SH_PHASE_WS) {
        sh_ws_on_read(c, buf->base, (size_t)n);
        return;
    }
    if (c->timer_mode == TM_KEEPALIVE)
        arm(c, TM_HEAD, c->gen->cfg.handshake_timeout_ms);
    sh_buf_append(&c->pending, buf->base, (size_t)n);
    process_input(c);
}

/* ---------------------------------------------------------------- writing */

static void linger(sh_conn *c);

static void on_write(uv_write_t *req, int status)
{
    sh_conn *c = req->data;
    c->writing = 0;
    c->srv->metrics.bytes_out += c->inflight.len;
    c->inflight.len = 0;
    if (c->phase == SH_PHASE_CLOSED)
        return;
    if (status < 0) {
        sh_debug(c->id, "write failed: %s", uv_strerror(status));
        sh_conn_close(c);
        return;
    }
    sh_conn_flush(c);
    if (c->phase == SH_PHASE_HTTP && !c->busy && !c->reading && !c->close_after_write &&
        !c->lingering && !output_full(c)) {
        start_reading(c); /* the answers drained: serve the rest */
        if (c->pending.len)
            process_input(c);
    }
}

/* Write what is in out: try a direct write first, queue the rest. When
 * nothing is left and the connection is meant to end, end it. */
void sh_conn_flush(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED || c->writing)
        return;
    if (c->out.len > 0) {
        uv_buf_t b = uv_buf_init(c->out.p, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n > 0) {
            c->srv->metrics.bytes_out += (uint64_t)n;
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
            c->wreq.data = c;
            c->writing = 1;
            if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
                c->writing = 0;
                sh_conn_close(c);
            }
            return;
        }
    }
    if (c->close_after_write || (c->phase == SH_PHASE_WS && sh_ws_finished(c)))
        linger(c);
}

/* Graceful end: send FIN, then discard input until the peer closes or the
 * close timeout passes, so a response is not lost to a reset. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    sh_conn *c = req->data;
    (void)status;
    c->shutting_down = 0;
    if (c->phase == SH_PHASE_CLOSED)
        return;
    if (status < 0)
        sh_conn_close(c);
}

static void linger(sh_conn *c)
{
    if (c->lingering || c->phase == SH_PHASE_CLOSED)
        return;
    c->lingering = 1;
    c->close_after_write = 0;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) == 0)
        c->shutting_down = 1;
    else {
        sh_conn_close(c);
        return;
    }
    start_reading(c);
    arm(c, TM_LINGER, c->gen->cfg.close_timeout_ms < 2000 ? c->gen->cfg.close_timeout_ms : 2000);
}

void sh_conn_end(sh_conn *c)
{
    c->close_after_write = 1;
    sh_conn_flush(c);
}

/* --------------------------------------------------------------- responses */

static const char *status_text(int status)
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

/* Queue a complete response. extra: preformatted header lines ("K: v\r\n")
 * or NULL. keep: 0 ends the connection after the write. */
void sh_conn_respond(sh_conn *c, int status, const char *ctype, const char *body, size_t len,
                     const char *extra, int keep, int head_only)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nServer: statushost\r\nContent-Length: %zu\r\n"
                     "%s%s%sConnection: %s\r\n",
                     status, status_text(status), len, ctype ? "Content-Type: " : "",
                     ctype ? ctype : "", ctype ? "\r\n" : "", keep ? "keep-alive" : "close");
    sh_buf_append(&c->out, head, (size_t)n);
    if (extra)
        sh_buf_append(&c->out, extra, strlen(extra));
    sh_buf_append(&c->out, "\r\n", 2);
    if (!head_only && len)
        sh_buf_append(&c->out, body, len);
    if (!keep)
        c->close_after_write = 1;
    c->srv->metrics.http_requests_total++;
    sh_conn_flush(c);
}

/* A short plain-text answer that ends the connection. */
static void refuse(sh_conn *c, int status, const char *extra)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, status_text(status));
    c->srv->metrics.rejected_total++;
    sh_conn_respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, extra, 0, 0);
}

/* ------------------------------------------------------------ plain HTTP */

/* Serve a file from the web root. */
static void serve_static(sh_conn *c, const sh_request *r, int keep, int head_only)
{
    char rel[1024], full[2048];
    const sh_config *cfg = &c->gen->cfg;
    if (!cfg->web_root || sh_static_normalise(r->path, rel, sizeof rel) != 0)
        goto not_found;
    snprintf(full, sizeof full, "%s/%s", cfg->web_root, rel);
    int fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto not_found;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_STATIC_BYTES) {
        close(fd);
        goto not_found;
    }
    char *data = malloc((size_t)st.st_size + 1);
    ssize_t got = read(fd, data, (size_t)st.st_size);
    close(fd);
    if (got != st.st_size) {
        free(data);
        goto not_found;
    }
    sh_conn_respond(c, 200, sh_mime_type(rel), data, (size_t)got,
                    "X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n", keep,
                    head_only);
    free(data);
    return;
not_found:
    sh_conn_respond(c, 404, "text/plain; charset=utf-8", "404 Not Found\n", 14, NULL, keep,
                    head_only);
}

static void serve_builtin(sh_conn *c, const sh_request *r, int keep, int head_only)
{
    if (strcmp(r->path, "/healthz") == 0) {
        int up = sh_server_redis_up(c->srv);
        sh_conn_respond(c, up ? 200 : 503, "text/plain; charset=utf-8",
                        up ? "ok\n" : "redis unavailable\n", up ? 3 : 18, NULL, keep, head_only);
        return;
    }
    size_t len;
    sh_metrics m = c->srv->metrics;
    if (c->srv->bus)
        m.redis_reconnects = sh_redis_bus_reconnects(c->srv->bus);
    char *text = sh_metrics_render(&m, sh_server_redis_up(c->srv), &len);
    sh_conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, keep,
                    head_only);
    free(text);
}

/* The request is answered: get ready for the next one on this connection. */
static void request_done(sh_conn *c)
{
    c->busy = 0;
    if (c->phase != SH_PHASE_HTTP)
        return;
    sh_http_parser_reset(&c->hp);
    if (!c->close_after_write && !c->lingering) {
        arm(c, c->pending.len ? TM_HEAD : TM_KEEPALIVE,
            c->pending.len ? c->gen->cfg.handshake_timeout_ms : c->gen->cfg.keepalive_timeout_ms);
        if (output_full(c))
            return; /* resumed from on_write once the answers drain */
        start_reading(c);
        if (c->pending.len && !c->parsing)
            process_input(c); /* an answer that came later (a route): go on */
    }
}

static void handle_plain(sh_conn *c, sh_request *r)
{
    int keep = r->keep_alive && !c->srv->stopping;
    int get = strcmp(r->method, "GET") == 0, head = strcmp(r->method, "HEAD") == 0;
    if ((get || head) && (strcmp(r->path, "/healthz") == 0 || strcmp(r->path, "/metrics") == 0)) {
        serve_builtin(c, r, keep, head);
        request_done(c);
        return;
    }
    if (sh_api_route(c, r, keep, request_done)) /* a Lua route runs: answers later */
        return;
    if (get || head)
        serve_static(c, r, keep, head);
    else
        sh_conn_respond(c, 405, "text/plain; charset=utf-8", "405 Method Not Allowed\n", 23,
                        "Allow: GET, HEAD\r\n", keep, 0);
    request_done(c);
}

/* ------------------------------------------------------------- upgrade */

static int origin_allowed(const sh_config *cfg, const char *origin)
{
    if (!cfg->allowed_origins || !origin)
        return 1;
    for (char **o = cfg->allowed_origins; *o; o++)
        if (strcasecmp(*o, origin) == 0)
            return 1;
    return 0;
}

/* Complete the upgrade: 101, then the WebSocket phase. */
static void accept_upgrade(sh_conn *c)
{
    sh_request *r = sh_http_parser_request(&c->hp);
    char accept[29];
    sh_ws_accept_key(sh_request_header(r, "Sec-WebSocket-Key"), accept);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    sh_buf_append(&c->out, head, (size_t)n);
    c->busy = 0;
    c->phase = SH_PHASE_WS;
    uv_timer_stop(&c->timer);
    sh_http_parser_free(&c->hp);
    c->hp_live = 0;
    if (sh_ws_start(c, c->pending.p, c->pending.len) != 0) {
        sh_conn_close(c);
        return;
    }
    c->pending.len = 0;
    start_reading(c);
}

/* on_handshake finished: accept, or answer its status. */
void sh_conn_handshake_result(sh_conn *c, int accept, int status, const char *body, size_t len)
{
    if (c->phase != SH_PHASE_HANDSHAKE)
        return;
    if (accept && c->srv->stopping) {
        accept = 0; /* the policy took its time and the server is stopping meanwhile */
        status = 503;
        body = "503 shutting down\n";
        len = 18;
    }
    if (accept) {
        accept_upgrade(c);
        return;
    }
    c->phase = SH_PHASE_HTTP;
    c->srv->metrics.rejected_total++;
    sh_info(c->id, "handshake refused by policy: %d", status);
    sh_conn_respond(c, status, "text/plain; charset=utf-8", body, len, NULL, 0, 0);
}

static void handle_upgrade(sh_conn *c, sh_request *r)
{
    const sh_config *cfg = &c->gen->cfg;
    int status = sh_ws_handshake_check(r);
    if (status == 426) {
        refuse(c, 426, "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (status != 0) {
        refuse(c, status, NULL);
        return;
    }
    if (!origin_allowed(cfg, sh_request_header(r, "Origin"))) {
        sh_info(c->id, "origin %s not allowed: 403", sh_request_header(r, "Origin"));
        refuse(c, 403, NULL);
        return;
    }
    if (c->srv->stopping) {
        refuse(c, 503, NULL);
        return;
    }
    c->phase = SH_PHASE_HANDSHAKE;
    c->busy = 1;
    sh_conn_stop_reading(c);
    uv_timer_stop(&c->timer);
    sh_api_handshake(c, r); /* calls sh_conn_handshake_result, now or later */
}

/* --------------------------------------------------------------- parsing */

/* Parse and answer the requests in pending, one at a time. */
static void parse_requests(sh_conn *c)
{
    while (c->phase == SH_PHASE_HTTP && !c->busy && !c->close_after_write && !c->lingering &&
           c->pending.len > 0 && !output_full(c)) {
        size_t consumed = 0;
        int status = 0;
        int rc = sh_http_parser_feed(&c->hp, c->pending.p, c->pending.len, &consumed, &status);
        if (rc == SH_HTTP_NEED_MORE) {
            c->pending.len = 0;
            return;
        }
        if (rc < 0) {
            sh_info(c->id, "bad request from %s: %d", c->peer, status);
            c->pending.len = 0;
            refuse(c, status ? status : 400, NULL);
            return;
        }
        sh_buf_consume(&c->pending, consumed);
        sh_request *r = sh_http_parser_request(&c->hp);
        c->busy = 1;
        uv_timer_stop(&c->timer);
        if (r->upgrade)
            handle_upgrade(c, r);
        else
            handle_plain(c, r);
    }
}

static void process_input(sh_conn *c)
{
    c->parsing = 1; /* request_done does not recurse into us meanwhile */
    parse_requests(c);
    c->parsing = 0;
    /* While a request is answered later (a route), reading goes on so the
     * peer's going away is noticed; pipelined input beyond one read's worth
     * waits in the socket instead of in memory. */
    if ((c->busy && c->pending.len > SH_READ_BUF_SIZE) ||
        (c->phase == SH_PHASE_HTTP && output_full(c)))
        sh_conn_stop_reading(c);
}

/* ---------------------------------------------------------------- accept */

static void make_id(sh_server *s, char *out)
{
    snprintf(out, SH_ID_LEN + 1, "%s%08llx", s->instance, (unsigned long long)++s->conn_seq);
}

static void peer_name(sh_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof ip);
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(c->peer, sizeof c->peer, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

void sh_conn_accept(sh_server *s)
{
    sh_conn *c = calloc(1, sizeof *c);
    c->srv = s;
    c->ud_ref = c->request_ref = LUA_NOREF;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->handles_open = 1;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) != 0) {
        sh_conn_close_raw(c);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    c->gen = s->gen;
    sh_gen_ref(c->gen);
    make_id(s, c->id);
    peer_name(c);
    uv_tcp_nodelay(&c->tcp, 1);
    sh_http_parser_init(&c->hp, c->gen->cfg.max_head_bytes, c->gen->cfg.max_body_bytes);
    c->hp_live = 1;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    s->metrics.connections_current++;
    s->metrics.connections_total++;
    if (s->nconns > c->gen->cfg.max_connections) {
        sh_warn(c->id, "at max_connections (%zu): 503 to %s", c->gen->cfg.max_connections, c->peer);
        refuse(c, 503, "Retry-After: 1\r\n");
        start_reading(c);
        return;
    }
    sh_debug(c->id, "accepted %s", c->peer);
    arm(c, TM_HEAD, c->gen->cfg.handshake_timeout_ms);
    start_reading(c);
}

/* ------------------------------------------------------------------ close */

static void on_handle_closed(uv_handle_t *h)
{
    sh_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    if (c->gen) {
        sh_server_conn_gone(c->srv, c);
        sh_api_conn_freed(c);
        sh_gen_unref(c->gen);
    }
    sh_buf_free(&c->pending);
    sh_buf_free(&c->out);
    sh_buf_free(&c->inflight);
    free(c);
}

/* Close handles of a connection that never got further than accept. */
void sh_conn_close_raw(sh_conn *c)
{
    c->phase = SH_PHASE_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void sh_conn_close(sh_conn *c)
{
    if (c->phase == SH_PHASE_CLOSED)
        return;
    int was_ws = c->phase == SH_PHASE_WS;
    c->phase = SH_PHASE_CLOSED;
    sh_conn_stop_reading(c);
    uv_timer_stop(&c->timer);
    if (c->hp_live) {
        sh_http_parser_free(&c->hp);
        c->hp_live = 0;
    }
    if (was_ws) {
        c->srv->metrics.websockets_current--;
        sh_ws_free(c);
    }
    /* Policy state: subscriptions, timers, then suspended tasks (woken with
     * nil, "closed"), then on_close. */
    sh_api_conn_closing(c, was_ws);
    c->srv->metrics.connections_current--;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

int sh_conn_open(const sh_conn *c)
{
    return c->phase == SH_PHASE_WS && c->ws && !c->failed && !c->close_queued &&
           !wslay_event_get_close_received(c->ws) && !wslay_event_get_close_sent(c->ws) &&
           wslay_event_get_write_enabled(c->ws);
}

void sh_conn_lua_failed(sh_conn *c)
{
    if (c->phase == SH_PHASE_WS)
        sh_conn_ws_close(c, 1011, "internal error");
    else if (c->phase == SH_PHASE_HANDSHAKE)
        sh_conn_handshake_result(c, 0, 500, "500 Internal Server Error\n", 26);
}
