/* server.c — the top-level object; see server.h. */
#include "server.h"

#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "http_client.h"
#include "log.h"
#include "lua_api.h"
#include "lua_host.h"
#include "redis_bus.h"

static void finish(sh_server *s);

/* ------------------------------------------------------------ listener */

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
    sh_conn_accept(s);
}

static void closed_noop(uv_handle_t *h) { (void)h; }

static void start_listening(sh_server *s)
{
    if (s->accepting || s->stopping || !s->listening)
        return;
    s->accepting = 1;
    uv_timer_stop(&s->startup_timer);
    sh_info(NULL, "listening on %s", s->listen_name);
    if (s->accept_pending) {
        s->accept_pending = 0;
        sh_conn_accept(s); /* the one libuv held back; it resumes the listener */
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
    if (cfg->reuseport) {
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
    sh_server *s = arg;
    if (up)
        sh_info(NULL, "redis up");
    else
        sh_warn(NULL, "redis unavailable: reconnecting");
    start_listening(s);
}

int sh_server_redis_up(const sh_server *s)
{
    return s->bus && sh_redis_bus_up(s->bus);
}

/* ------------------------------------------------------------ signals */

static void on_signal(uv_signal_t *h, int signum)
{
    sh_server *s = h->data;
    if (signum == SIGHUP) {
        sh_server_reload(s);
        return;
    }
    if (s->stopping) {
        sh_warn(NULL, "second signal: exiting now");
        finish(s);
        return;
    }
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

int sh_server_start(sh_server *s, uv_loop_t *loop, const sh_options *opts, char *err,
                    size_t errsz)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->opts = *opts;
    make_instance_id(s);
    if (sh_gen_load(s, opts->script, opts->sets, opts->nsets, &s->gen, err, errsz) != 0)
        return -1;
    sh_log_set_level((enum sh_log_level)s->gen->cfg.log_level);
    s->read_buf = malloc(SH_READ_BUF_SIZE);
    sh_redis_addr addr;
    if (sh_redis_parse_url(s->gen->cfg.redis, &addr) != 0) {
        snprintf(err, errsz, "redis \"%s\": not a redis:// or unix:// URL", s->gen->cfg.redis);
        return -1;
    }
    if (listen_on(s, &s->gen->cfg, err, errsz) != 0)
        return -1;
    char name[64];
    snprintf(name, sizeof name, "statushost-%s", s->instance);
    sh_redis_opts ro = {.url = s->gen->cfg.redis, .client_name = name,
                        .on_state = on_redis_state, .state_arg = s};
    int rc = sh_redis_bus_new(loop, &ro, &s->bus);
    if (rc != 0) {
        snprintf(err, errsz, "redis \"%s\": %s", s->gen->cfg.redis, sh_redis_strerror(rc));
        return -1;
    }
    sh_http_client_opts ho = {.max_conns_per_host = 1024};
    s->http = sh_http_client_new(loop, &ho);
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
    sh_info(NULL, "statushost %s: %s (instance %s)", SH_VERSION, opts->script, s->instance);
    return 0;
}

void sh_server_reload(sh_server *s)
{
    char err[512];
    sh_gen *g;
    if (s->stopping)
        return;
    if (sh_gen_load(s, s->opts.script, s->opts.sets, s->opts.nsets, &g, err, sizeof err) != 0) {
        sh_error(NULL, "reload failed, keeping generation %u: %s", s->gen->id, err);
        return;
    }
    if (strcmp(g->cfg.listen_host, s->gen->cfg.listen_host) || g->cfg.listen_port != s->gen->cfg.listen_port ||
        strcmp(g->cfg.redis, s->gen->cfg.redis))
        sh_warn(NULL, "reload: listen and redis changes take effect on restart only");
    sh_gen *old = s->gen;
    s->gen = g;
    sh_gen_unref(old); /* it lives on while its connections and tasks do */
    sh_log_set_level((enum sh_log_level)g->cfg.log_level);
    s->metrics.reloads++;
    sh_info(NULL, "reloaded %s: generation %u serves new connections", s->opts.script, g->id);
}

static void on_grace(uv_timer_t *h)
{
    sh_server *s = h->data;
    sh_warn(NULL, "grace period over: closing %zu connection(s)", s->nconns);
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
    if (s->bus)
        sh_redis_bus_close(s->bus, NULL, NULL);
    s->bus = NULL;
    if (s->http)
        sh_http_client_close(s->http, NULL, NULL);
    s->http = NULL;
}

void sh_server_shutdown(sh_server *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    stop_listening(s);
    for (sh_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->phase == SH_PHASE_WS)
            sh_conn_ws_close(c, 1001, "server shutting down");
        else if (!c->busy)
            sh_conn_close(c);
    }
    if (s->nconns == 0) {
        finish(s);
        return;
    }
    uv_timer_start(&s->grace_timer, on_grace, s->gen->cfg.shutdown_grace_ms, 0);
}

/* Everything stops: connections, tasks, timers, Redis, HTTP, signals. */
static void finish(sh_server *s)
{
    if (s->finished)
        return;
    s->finished = 1;
    s->stopping = 1;
    stop_listening(s);
    for (sh_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        sh_conn_close(c);
    }
    uv_timer_stop(&s->grace_timer);
    uv_close((uv_handle_t *)&s->grace_timer, closed_noop);
    uv_close((uv_handle_t *)&s->startup_timer, closed_noop);
    uv_close((uv_handle_t *)&s->sig_term, closed_noop);
    uv_close((uv_handle_t *)&s->sig_int, closed_noop);
    uv_close((uv_handle_t *)&s->sig_hup, closed_noop);
    /* wake every suspended task of every live generation; hold a reference
     * so none is freed under the walk */
    size_t n = 0;
    for (sh_gen *g = s->gens; g; g = g->next_gen)
        n++;
    sh_gen **all = calloc(n ? n : 1, sizeof *all);
    n = 0;
    for (sh_gen *g = s->gens; g; g = g->next_gen) {
        sh_gen_ref(g);
        all[n++] = g;
    }
    for (size_t i = 0; i < n; i++)
        sh_api_gen_shutdown(all[i]);
    for (size_t i = 0; i < n; i++)
        sh_gen_unref(all[i]);
    free(all);
    close_clients(s);
}

void sh_server_conn_gone(sh_server *s, sh_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    if (s->stopping && s->nconns == 0 && !s->finished)
        finish(s);
}

void sh_server_abort(sh_server *s)
{
    stop_listening(s);
    close_clients(s);
    uv_run(s->loop, UV_RUN_DEFAULT);
}

void sh_server_free(sh_server *s)
{
    if (s->gen)
        sh_gen_unref(s->gen);
    s->gen = NULL;
    free(s->read_buf);
    s->read_buf = NULL;
}
