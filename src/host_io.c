/* host_io.c — the Lua host's real I/O (sh_host_io, lua_host.h): libuv
 * timers on the host's loop, the server's Redis bus and HTTP client. The
 * server installs it with sh_host_io_real(); the policy test kit (kit.c)
 * installs simulations instead. ctx is the sh_host. */
#include "host_io.h"

#include <stdlib.h>
#include <sys/time.h>

typedef struct real_timer {
    uv_timer_t h;
    void (*fire)(void *arg);
    void *arg;
} real_timer;

static double real_wall(void *ctx)
{
    (void)ctx;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0;
}

static void timer_free(uv_handle_t *h) { free(h->data); }

static void timer_cb(uv_timer_t *h)
{
    real_timer *t = h->data;
    uv_close((uv_handle_t *)h, timer_free);
    t->fire(t->arg);
}

static void *real_timer_start(void *ctx, uint64_t ms, void (*fire)(void *), void *arg)
{
    sh_host *host = ctx;
    real_timer *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    t->fire = fire;
    t->arg = arg;
    uv_timer_init(host->loop, &t->h);
    t->h.data = t;
    uv_update_time(host->loop); /* the cached time may be stale after long Lua work */
    uv_timer_start(&t->h, timer_cb, ms, 0);
    return t;
}

static void real_timer_stop(void *ctx, void *timer)
{
    (void)ctx;
    real_timer *t = timer;
    uv_close((uv_handle_t *)&t->h, timer_free);
}

static int real_redis_up(void *ctx)
{
    sh_host *host = ctx;
    return host->bus && sh_redis_bus_up(host->bus);
}

static int real_redis_command(void *ctx, int argc, const char **argv, const size_t *lens,
                              sh_redis_reply_cb cb, void *arg, void **cmd)
{
    sh_host *host = ctx;
    if (!host->bus)
        return SH_REDIS_EUNAVAILABLE;
    return sh_redis_command(host->bus, argc, argv, lens, cb, arg, (sh_redis_cmd **)cmd);
}

static void real_redis_cancel(void *ctx, void *cmd)
{
    (void)ctx;
    sh_redis_cmd_cancel(cmd);
}

static int real_redis_subscribe(void *ctx, const char *ch, size_t len, sh_redis_msg_cb on_msg,
                                sh_redis_confirm_cb on_confirm, void *arg, void **sub)
{
    sh_host *host = ctx;
    if (!host->bus)
        return SH_REDIS_EUNAVAILABLE;
    return sh_redis_subscribe(host->bus, ch, len, on_msg, on_confirm, arg, (sh_redis_sub **)sub);
}

static void real_redis_unsubscribe(void *ctx, void *sub)
{
    (void)ctx;
    sh_redis_unsubscribe(sub);
}

static int real_http_request(void *ctx, const sh_http_opts *o, sh_http_cb cb, void *arg,
                             void **call)
{
    sh_host *host = ctx;
    return sh_http_request(host->http, o, cb, arg, (sh_http_call **)call);
}

static void real_http_cancel(void *ctx, void *call)
{
    (void)ctx;
    sh_http_call_cancel(call);
}

static const sh_host_io real_io = {
    .wall = real_wall,
    .timer_start = real_timer_start,
    .timer_stop = real_timer_stop,
    .redis_up = real_redis_up,
    .redis_command = real_redis_command,
    .redis_cancel = real_redis_cancel,
    .redis_subscribe = real_redis_subscribe,
    .redis_unsubscribe = real_redis_unsubscribe,
    .http_request = real_http_request,
    .http_cancel = real_http_cancel,
};

void sh_host_io_real(sh_host *h)
{
    h->io = &real_io;
    h->io_ctx = h;
}
