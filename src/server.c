/* server.c — the top-level object; see server.h. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfgfile.h"
#include "host_io.h"
#include "http_client.h"
#include "log.h"
#include "notify.h"
#include "lua_api.h"
#include "lua_io.h"
#include "lua_lib.h"
#include "redis_bus.h"
#include "static_files.h"
#include "user_metrics.h"
#include "watchdog.h"

static void finish(sh_server *s);

/* ------------------------------------------------------------ listener */

/* Accept one connection with the current generation's limits and policy. */
static void accept_one(sh_server *s)
{
    sh_conn *c = sh_transport_accept(&s->tp, (uv_stream_t *)&s->listener, &s->gen->limits);
    if (!c)
        return;
    if (sh_policy_attach(c, s->gen) != 0) {
        sh_warn(c->id, "out of memory: connection from %s dropped", c->peer);
        sh_conn_close(c);
        return;
    }
    sh_conn_start(c);
}

static void on_connection(uv_stream_t *l, int status)
{
    sh_server *s = l->data;
    if (status < 0) {
        sh_warn(NULL, "accept: %s", uv_strerror(status));
        return;
    }
    if (s->stopping)
        return;
    if (!s->accepting) {
        /* not yet: libuv pauses the listener until uv_accept is called */
        s->accept_pending = 1;
        return;
    }
    accept_one(s);
}

static void closed_noop(uv_handle_t *h) { (void)h; }

static void start_listening(sh_server *s)
{
    if (s->accepting || s->stopping || !s->listening)
        return;
    s->accepting = 1;
    uv_timer_stop(&s->startup_timer);
    if (s->opts.nworkers > 1)
        sh_info(NULL, "listening on %s (worker %d)", s->listen_name, s->opts.worker);
    else
        sh_info(NULL, "listening on %s", s->listen_name);
    sh_notify("READY=1");
    if (s->accept_pending) {
        s->accept_pending = 0;
        accept_one(s); /* the one libuv held back; it resumes the listener */
    }
}

static void on_startup_wait(uv_timer_t *h)
{
    start_listening(h->data);
}

/* Bind host:port (SO_REUSEPORT when asked); logs the address once accepting. */
static int listen_on(sh_server *s, const sh_config *cfg, char *err, size_t errsz)
{
    struct sockaddr_storage ss;
    int family = strchr(cfg->listen_host, ':') ? AF_INET6 : AF_INET;
    int rc = family == AF_INET6
                 ? uv_ip6_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in6 *)&ss)
                 : uv_ip4_addr(strcmp(cfg->listen_host, "localhost") ? cfg->listen_host : "127.0.0.1",
                               cfg->listen_port, (struct sockaddr_in *)&ss);
    if (rc != 0) {
        snprintf(err, errsz, "listen %s:%d: not a numeric address", cfg->listen_host,
                 cfg->listen_port);
        return -1;
    }
    uv_tcp_init_ex(s->loop, &s->listener, (unsigned)family);
    s->listener.data = s;
    s->listening = 1; /* the handle exists: closed by finish() or sh_server_abort() */
    if (cfg->reuseport || s->opts.nworkers > 1) {
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)&s->listener, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    if ((rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)) != 0) {
        snprintf(err, errsz, "listen %s:%d: %s", cfg->listen_host, cfg->listen_port,
                 uv_strerror(rc));
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
    int port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                        : ((struct sockaddr_in *)&bound)->sin_port);
    snprintf(s->listen_name, sizeof s->listen_name, "%s%s%s:%d", family == AF_INET6 ? "[" : "",
             cfg->listen_host, family == AF_INET6 ? "]" : "", port);
    return 0;
}

/* ------------------------------------------------------------ redis */

static void start_listening(sh_server *s);

static void on_redis_state(void *arg, int up)
{
    (void)up;
    start_listening(arg);
}

/* At most one line a second, however often a connection flaps (redis_bus.h). */
static void on_redis_state_line(void *arg, int up, uint64_t changes)
{
    char held[64] = "";
    (void)arg;
    if (changes > 1)
        snprintf(held, sizeof held, " (%llu up/down changes since the last line)",
                 (unsigned long long)changes);
    if (up)
        sh_info(NULL, "redis up%s", held);
    else
        sh_warn(NULL, "redis unavailable: reconnecting%s", held);
}

static int redis_up(const sh_server *s)
{
    return s->host.bus && sh_redis_bus_up(s->host.bus);
}

/* ------------------------------------------------------------ requests */

/* A file sent as a response body (conn.h's sh_body_source). It is read with
 * pread on the loop, one SH_BODY_CHUNK at a time, when the transport has
 * written the previous one, not with uv_fs_read in the thread pool: a read
 * from the page cache takes microseconds, less than the hand-off to a thread
 * and back; a cold disk stalls the loop for one 64 KiB read at most (nginx's
 * default without "aio threads"); and the pool's four threads also do the
 * HTTP client's name lookups, which a slow disk would starve. */
typedef struct static_body {
    sh_body_source src; /* first: the transport hands it back */
    int fd;
    off_t off;          /* of the next byte to read */
} static_body;

static long static_body_read(sh_body_source *src, char *dst, size_t max)
{
    static_body *b = (static_body *)src;
    ssize_t n;
    do
        n = pread(b->fd, dst, max, b->off);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    b->off += n;
    return (long)n;
}

static void static_body_release(sh_body_source *src)
{
    static_body *b = (static_body *)src;
    close(b->fd);
    free(b);
}

/* Open the file a request path names: regular files only, opened without
 * blocking (a FIFO is refused, not waited on); symbolic links are followed
 * (nginx's default, disable_symlinks off) but the path itself cannot leave
 * the root (sh_static_normalise). Returns the fd with *st and rel (the path
 * under the root), or -1: answer 404. */
static int open_static(const sh_config *cfg, const char *path, char *rel, size_t relsz,
                       struct stat *st)
{
    char full[2048];
    if (!cfg->web_root || sh_static_normalise(path, rel, relsz) != 0)
        return -1;
    snprintf(full, sizeof full, "%s/%s", cfg->web_root, rel);
    int fd = open(full, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd >= 0 && (fstat(fd, st) != 0 || !S_ISREG(st->st_mode))) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* 1 when the client's copy is current (RFC 9110 §13.2.2): If-None-Match,
 * on any of its lines, decides when present; else If-Modified-Since, to the
 * second of Last-Modified. */
static int not_modified(const sh_request *r, const char *etag, int64_t mtime)
{
    int asked = 0;
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, "If-None-Match") == 0) {
            if (sh_etag_match(r->headers[i].value, etag))
                return 1;
            asked = 1;
        }
    const char *since = asked ? NULL : sh_request_header(r, "If-Modified-Since");
    int64_t t;
    return since && sh_http_date_parse(since, &t) == 0 && mtime <= t;
}

/* Serve a file from the web root (open_static), streamed (static_body): a
 * connection holds one chunk of it, whatever its size. ETag and
 * Last-Modified on every answer; a conditional request that matches gets 304
 * (its Content-Length is the file's, as RFC 9110 §8.6 allows, and no body). */
static void serve_static(sh_conn *c, const sh_config *cfg, const sh_request *r, int keep,
                         int head_only)
{
    char rel[1024], etag[40], date[30], extra[192];
    struct stat st;
    int fd = open_static(cfg, r->path, rel, sizeof rel, &st);
    if (fd < 0) {
        sh_conn_respond(c, 404, "text/plain; charset=utf-8", "404 Not Found\n", 14, NULL, keep,
                        head_only);
        return;
    }
    sh_static_etag(st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (uint64_t)st.st_size, etag);
    sh_http_date(st.st_mtim.tv_sec, date);
    snprintf(extra, sizeof extra,
             "X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nETag: %s\r\n"
             "Last-Modified: %s\r\n", etag, date);
    static_body *b = NULL;
    if (not_modified(r, etag, st.st_mtim.tv_sec)) {
        sh_conn_respond(c, 304, NULL, NULL, (size_t)st.st_size, extra, keep, 1);
    } else if (head_only || st.st_size == 0) {
        sh_conn_respond(c, 200, sh_mime_type(rel), NULL, (size_t)st.st_size, extra, keep, 1);
    } else if (!(b = malloc(sizeof *b))) {
        sh_conn_respond(c, 503, "text/plain; charset=utf-8", "503 Service Unavailable\n", 24,
                        "Retry-After: 1\r\n", 0, 0);
    } else {
        *b = (static_body){.src = {.read = static_body_read, .release = static_body_release},
                           .fd = fd};
        if (sh_conn_respond_body(c, 200, sh_mime_type(rel), (uint64_t)st.st_size, extra, keep,
                                 &b->src) == 0)
            return; /* the fd is the transport's until static_body_release */
        free(b);
    }
    close(fd);
}

static void serve_metrics(sh_server *s, sh_conn *c, int keep, int head_only)
{
    size_t len;
    sh_metrics m = s->metrics;
    if (s->host.bus) {
        sh_redis_stats rs;
        sh_redis_bus_stats(s->host.bus, &rs);
        m.redis_reconnects = rs.reconnects;
        m.redis_messages_too_large = rs.messages_too_large;
    }
    m.lua_memory_bytes = sh_host_lua_memory(&s->host);
    m.shared_dict_bytes = sh_lib_shared_bytes();
    m.lua_runs_counted = sh_host_runs_counted();
    char *text = sh_metrics_render(&m, redis_up(s), &len);
    size_t cap = len + 1;
    char label[32];
    snprintf(label, sizeof label, "worker=\"%d\"", s->opts.worker);
    if (text && sh_user_metrics_render(&text, &len, &cap) == 0 &&
        (s->opts.nworkers < 2 || sh_metrics_add_label(&text, &len, label) == 0)) {
        sh_conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL,
                        keep, head_only);
    } else {
        sh_conn_respond(c, 503, "text/plain; charset=utf-8", "503 Service Unavailable\n", 24,
                        NULL, 0, head_only);
    }
    free(text);
}

/* A plain request: the built-in endpoints, then the policy's routes, then
 * static files. */
static void serve_request(sh_server *s, sh_conn *c, const sh_conn_event *ev)
{
    sh_request *r = ev->req;
    /* a reserve socket answers once: kept alive, 16 of them would hold the reserve */
    int keep = ev->keep_alive && !SH_HAS(c, SH_CF_OVER_LIMIT), head = ev->head_only;
    int get = head || strcmp(r->method, "GET") == 0;
    if (get && strcmp(r->path, "/healthz") == 0) {
        int up = redis_up(s);
        sh_conn_respond(c, up ? 200 : 503, "text/plain; charset=utf-8",
                        up ? "ok\n" : "redis unavailable\n", up ? 3 : 18, NULL, keep, head);
    } else if (get && strcmp(r->path, "/metrics") == 0) {
        serve_metrics(s, c, keep, head);
    } else if (SH_HAS(c, SH_CF_OVER_LIMIT)) {
        sh_conn_respond(c, 503, "text/plain; charset=utf-8", "503 Service Unavailable\n", 24,
                        "Retry-After: 1\r\n", 0, head);
    } else if (sh_policy_route(c, r, keep, head)) {
        return; /* a route runs: it answers later */
    } else if (get) {
        sh_pconn *p = c->app;
        serve_static(c, &p->gen->cfg, r, keep, head);
    } else {
        sh_conn_respond(c, 405, "text/plain; charset=utf-8", "405 Method Not Allowed\n", 23,
                        "Allow: GET, HEAD\r\n", keep, 0);
    }
    sh_conn_request_done(c);
}

static int on_conn_event(sh_conn *c, const sh_conn_event *ev, void *arg)
{
    sh_server *s = arg;
    if (ev->type == SH_CONN_EV_REQUEST) {
        serve_request(s, c, ev);
        return 0;
    }
    int rc = sh_policy_event(c, ev);
    if (ev->type == SH_CONN_EV_FREE && s->stopping && s->tp.nconns == 0 && !s->finished)
        finish(s);
    return rc;
}

/* ------------------------------------------------------------ signals */

static void on_signal(uv_signal_t *h, int signum)
{
    sh_server *s = h->data;
    if (signum == SIGHUP) {
        sh_server_reload(s);
        return;
    }
    if (signum == SIGINT && s->opts.nworkers > 1)
        return; /* a worker: the master turns Ctrl-C into one SIGTERM */
    if (s->stopping && s->opts.nworkers > 1 && uv_now(s->loop) - s->stop_signal_ms < 500)
        return; /* a worker: the same SIGTERM twice, from its sender (a process group's
                   signal) and forwarded by the master */
    if (s->stopping) {
        sh_warn(NULL, "second signal: exiting now");
        finish(s);
        return;
    }
    s->stop_signal_ms = uv_now(s->loop);
    sh_info(NULL, "signal %d: shutting down (grace %llums)", signum,
            (unsigned long long)s->gen->cfg.shutdown_grace_ms);
    sh_server_shutdown(s);
}

static void start_signal(sh_server *s, uv_signal_t *h, int signum)
{
    uv_signal_init(s->loop, h);
    h->data = s;
    uv_signal_start(h, on_signal, signum);
}

/* ------------------------------------------------------------ lifecycle */

static void make_instance_id(sh_server *s)
{
    unsigned char r[8];
    if (RAND_bytes(r, sizeof r) != 1) {
        uint64_t x = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);
        memcpy(r, &x, sizeof r);
    }
    for (int i = 0; i < 8; i++)
        snprintf(s->instance + 2 * i, 3, "%02x", r[i]);
}

/* The HTTP client's settings from a generation's config (start and SIGHUP). */
static sh_http_client_opts http_opts(const sh_config *cfg)
{
    return (sh_http_client_opts){
        .max_conns_per_host = 1024,
        .max_total_response_bytes = cfg->http_max_total_response_bytes,
        .ca_file = cfg->http_ca_file && *cfg->http_ca_file ? cfg->http_ca_file : NULL,
        .tls_no_verify = !cfg->http_tls_verify,
    };
}

int sh_server_start(sh_server *s, uv_loop_t *loop, const sh_options *opts, char *err,
                    size_t errsz)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->opts = *opts;
    make_instance_id(s);
    sh_host_init(&s->host, loop, &s->metrics, s->instance);
    sh_host_io_real(&s->host);
    if (sh_transport_init(&s->tp, loop, &sh_ws_phase_rfc6455, on_conn_event, s, &s->metrics, s->instance) != 0) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    s->started = 1;
    if (sh_gen_load(&s->host, sh_lua_api_open, opts->script, opts->sets, opts->nsets, &s->gen, err, errsz) != 0)
        return -1;
    sh_config_apply_log(&s->gen->cfg);
    s->metrics.max_connections = s->gen->cfg.max_connections;
    sh_redis_addr addr;
    if (sh_redis_parse_url(s->gen->cfg.redis, &addr) != 0) {
        snprintf(err, errsz, "redis \"%s\": not a redis:// or unix:// URL", s->gen->cfg.redis);
        return -1;
    }
    const char *cluster = s->gen->cfg.redis_cluster;
    if (cluster[0] && sh_redis_check_seeds(cluster, err, errsz) != 0)
        return -1;
    if (listen_on(s, &s->gen->cfg, err, errsz) != 0)
        return -1;
    char name[64];
    snprintf(name, sizeof name, "statushost-%s", s->instance);
    sh_redis_opts ro = {.url = s->gen->cfg.redis, .cluster = cluster, .client_name = name,
                        .sub_connections = (unsigned)s->gen->cfg.redis_sub_connections,
                        .on_state = on_redis_state, .on_state_line = on_redis_state_line,
                        .connect_timeout_ms = s->gen->cfg.redis_timeout_ms,
                        .timeout_ms = s->gen->cfg.redis_timeout_ms, .state_arg = s,
                        .max_reply_bytes = s->gen->cfg.redis_max_reply_bytes};
    int rc = sh_redis_bus_new(loop, &ro, &s->host.bus);
    if (rc != 0) {
        snprintf(err, errsz, "redis%s \"%s\": %s", cluster[0] ? "_cluster" : "",
                 cluster[0] ? cluster : s->gen->cfg.redis, sh_redis_strerror(rc));
        return -1;
    }
    sh_http_client_opts ho = http_opts(&s->gen->cfg);
    s->host.http = sh_http_client_new(loop, &ho);
    if (!s->host.http) {
        snprintf(err, errsz, "http client: cannot load http_ca_file %s (or out of memory)",
                 ho.ca_file ? ho.ca_file : "(system store)");
        return -1;
    }
    /* accept once Redis has answered its first attempt (up or refused), so a
     * job arriving at start-up does not race the bus; at most startup_wait */
    uv_timer_init(loop, &s->startup_timer);
    s->startup_timer.data = s;
    uv_timer_start(&s->startup_timer, on_startup_wait, 3000, 0);
    start_signal(s, &s->sig_term, SIGTERM);
    start_signal(s, &s->sig_int, SIGINT);
    start_signal(s, &s->sig_hup, SIGHUP);
    uv_timer_init(loop, &s->grace_timer);
    s->grace_timer.data = s;
    if (sh_watchdog_start(loop, s->gen->cfg.loop_stall_ms) != 0) {
        snprintf(err, errsz, "cannot start the loop watchdog");
        return -1;
    }
    if (opts->nworkers > 1)
        sh_info(NULL, "statushost %s: %s (instance %s, worker %d, pid %d)", SH_VERSION,
                opts->script, s->instance, opts->worker, (int)uv_os_getpid());
    else
        sh_info(NULL, "statushost %s: %s (instance %s)", SH_VERSION, opts->script, s->instance);
    if (s->gen->cfg.web_root)
        sh_info(NULL, "static files from %s", s->gen->cfg.web_root);
    else
        sh_info(NULL, "no static files: web_root unset and neither ./web nor an installed web/ exists");
    return 0;
}

void sh_server_reload(sh_server *s)
{
    char err[512];
    sh_gen *g;
    if (s->stopping)
        return;
    sh_notify("RELOADING=1");
    size_t metrics_before = sh_user_metrics_count();
    if (sh_options_refresh(&s->opts, err, sizeof err) != 0 ||
        sh_gen_load(&s->host, sh_lua_api_open, s->opts.script, s->opts.sets, s->opts.nsets, &g, err,
                    sizeof err) != 0) {
        sh_user_metrics_forget_from(metrics_before); /* what the failed script defined */
        sh_cfgfile_explain(err, sizeof err);
        sh_error(NULL, "reload failed, keeping generation %u: %s", s->gen->id, err);
        sh_notify("READY=1");
        return;
    }
    if (strcmp(g->cfg.listen_host, s->gen->cfg.listen_host) ||
        g->cfg.listen_port != s->gen->cfg.listen_port || strcmp(g->cfg.redis, s->gen->cfg.redis) ||
        strcmp(g->cfg.redis_cluster, s->gen->cfg.redis_cluster) || g->cfg.workers != s->gen->cfg.workers)
        sh_warn(NULL, "reload: listen, redis and workers changes take effect on restart only");
    sh_http_client_opts ho = http_opts(&g->cfg);
    if (sh_http_client_reconfigure(s->host.http, &ho, err, sizeof err) != 0)
        sh_error(NULL, "reload: http client keeps its previous TLS settings: %s", err);
    sh_gen *old = s->gen;
    old->exiting = 1;
    s->gen = g;
    sh_gen_unref(old); /* it lives on while its connections and tasks do */
    sh_config_apply_log(&g->cfg);
    s->metrics.max_connections = g->cfg.max_connections;
    s->metrics.reloads++;
    sh_info(NULL, "reloaded %s: generation %u serves new connections", s->opts.script, g->id);
    sh_notify("READY=1");
}

static void on_grace(uv_timer_t *h)
{
    sh_server *s = h->data;
    sh_warn(NULL, "grace period over: closing %zu connection(s)", s->tp.nconns);
    finish(s);
}

static void stop_listening(sh_server *s)
{
    if (s->listening)
        uv_close((uv_handle_t *)&s->listener, closed_noop);
    s->listening = 0;
}

/* Close the Redis bus and the HTTP client (their pending callbacks run). */
static void close_clients(sh_server *s)
{
    if (s->host.bus)
        sh_redis_bus_close(s->host.bus, NULL, NULL);
    s->host.bus = NULL;
    if (s->host.http)
        sh_http_client_close(s->host.http, NULL, NULL);
    s->host.http = NULL;
}

void sh_server_shutdown(sh_server *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->gen->exiting = 1;
    sh_notify("STOPPING=1");
    stop_listening(s);
    sh_transport_stop(&s->tp);
    if (s->tp.nconns == 0) {
        finish(s);
        return;
    }
    uv_timer_start(&s->grace_timer, on_grace, s->gen->cfg.shutdown_grace_ms, 0);
}

/* Everything stops: connections, tasks, timers, Redis, HTTP, signals. Tasks
 * woken by this run from the loop afterwards (the host closes its handles
 * once they have). */
static void finish(sh_server *s)
{
    if (s->finished)
        return;
    s->finished = 1;
    s->stopping = 1;
    stop_listening(s);
    sh_transport_close(&s->tp);
    uv_timer_stop(&s->grace_timer);
    uv_close((uv_handle_t *)&s->grace_timer, closed_noop);
    uv_close((uv_handle_t *)&s->startup_timer, closed_noop);
    /* from here, a late SIGHUP (or, in a worker, the master's copy of a SIGTERM the
     * worker already had) must not kill the process with the default action, which
     * closing the handles restores: blocked across the switch to SIG_IGN (a pending
     * one is then discarded) */
    sigset_t late, old;
    sigemptyset(&late);
    sigaddset(&late, SIGHUP);
    if (s->opts.nworkers > 1)
        sigaddset(&late, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &late, &old);
    uv_close((uv_handle_t *)&s->sig_term, closed_noop);
    uv_close((uv_handle_t *)&s->sig_int, closed_noop);
    uv_close((uv_handle_t *)&s->sig_hup, closed_noop);
    signal(SIGHUP, SIG_IGN);
    if (s->opts.nworkers > 1)
        signal(SIGTERM, SIG_IGN);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* wake every suspended task of every live generation; hold a reference
     * so none is freed under the walk */
    for (sh_gen *g = s->host.gens; g; g = g->next_gen)
        sh_gen_ref(g);
    for (sh_gen *g = s->host.gens; g; g = g->next_gen) {
        sh_owner_release_tasks(&g->detached);
        sh_io_owner_release(&g->detached);
        sh_gen_shutdown(g);
    }
    for (sh_gen *g = s->host.gens, *next; g; g = next) {
        next = g->next_gen;
        sh_gen_unref(g);
    }
    close_clients(s);
    sh_host_close(&s->host);
    sh_watchdog_stop();
}

void sh_server_abort(sh_server *s)
{
    sh_watchdog_stop();
    stop_listening(s);
    close_clients(s);
    if (s->started) {
        sh_transport_close(&s->tp);
        sh_host_close(&s->host);
    }
    uv_run(s->loop, UV_RUN_DEFAULT);
}

void sh_server_free(sh_server *s)
{
    if (s->gen)
        sh_gen_unref(s->gen);
    s->gen = NULL;
    sh_user_metrics_free();
}
