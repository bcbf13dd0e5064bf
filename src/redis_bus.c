/* redis_bus.c — see redis_bus.h.
 *
 * Objects:
 *   sh_redis_bus   the process's bus: the command connection, K subscriber
 *                  connections, the channel registry, a timer that runs the
 *                  asynchronous part of close.
 *   struct conn    one hiredis async context plus its retry/watchdog timer.
 *   struct chan    one channel (uthash, keyed by the channel bytes), the
 *                  subscriber connection it lives on (fixed: hash % K), and
 *                  its subs in subscription order.
 *   sh_redis_sub   one subscriber's interest in one channel.
 *   sh_redis_cmd   one pending command's callback.
 *
 * Freeing rules.
 * - hiredis contexts are freed only outside hiredis callbacks: from a timer
 *   callback (watchdog, close) with redisAsyncFree(), from hiredis itself after
 *   an error, or through redisAsyncDisconnect() (which hiredis defers while
 *   REDIS_IN_CALLBACK). Whenever we stop owning a context we set conn->ac to
 *   NULL first, so every callback hiredis still runs for it (NULL replies,
 *   onDisconnect) sees `conn->ac != ac` and does nothing.
 * - Subs and channels are never freed while user code runs over the registry
 *   (bus->busy > 0): they are marked dead / put on the dirty list, and swept
 *   when the outermost callback section ends. This is what makes
 *   sh_redis_unsubscribe() safe from inside on_msg / on_confirm / on_state.
 *
 * Channel bookkeeping. For each channel, `inflight` counts the SUBSCRIBE and
 * UNSUBSCRIBE replies still expected on its current subscriber connection.
 * Redis answers them in order, so when the count drops to 0 the server state
 * is the one we last asked for: subscribed when the channel still has live
 * subs (then pending confirmations resolve), unsubscribed otherwise (then the
 * channel leaves the registry). This keeps a SUBSCRIBE/UNSUBSCRIBE/SUBSCRIBE
 * sequence in flight from confirming the newest sub too early.
 *
 * hiredis 0.14.1 quirks handled here:
 * - adapters/libuv.h ignores a poll error: libuv reports POLLERR (connection
 *   reset, refused asynchronous connect) as status UV_EBADF with the handle
 *   already stopped, and redisLibuvPoll returns without telling hiredis, so the
 *   context would hang forever. We keep redisLibuvAttach (and its cleanup) but
 *   point its add/del hooks at our own poll callback, which on error lets
 *   hiredis read/write so it sees the socket error and disconnects.
 * - onDisconnect is only called for contexts that were connected; a failed
 *   connect calls onConnect(REDIS_ERR) and frees the context right after.
 *   redisAsyncConnect() may also fail at once (ECONNREFUSED on loopback,
 *   ENOENT for a unix path) and returns a context with err set, which we free.
 * - in subscribed mode every reply hiredis cannot match goes to the last
 *   callback it used (redisProcessCallbacks keeps `cb` across replies), and a
 *   spontaneous error reply disconnects: so the subscriber connection sends
 *   SUBSCRIBE only after every handshake reply (AUTH/SELECT/SETNAME) arrived,
 *   and one callback (sub_reply_cb) handles all subscribed-mode replies by
 *   looking at their content.
 * - UNSUBSCRIBE is refused by hiredis unless the context is in subscribed
 *   mode; we only send it for channels whose SUBSCRIBE went out on the same
 *   connection.
 * - redisLibuvAttach leaks its small event struct if uv_poll_init fails (not
 *   reachable with a valid socket; noted, not worked around).
 * - redisAsyncHandleRead reads at most 16 KiB (a stack buffer in
 *   redisBufferRead) per readiness event. A flooded subscriber connection then
 *   advances 16 KiB per loop iteration while Redis' output buffer for it grows
 *   towards `client-output-buffer-limit pubsub`. Our poll callback calls it
 *   again while FIONREAD says bytes are waiting, up to read_budget. */
#include "redis_bus.h"

#include <assert.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

static int hash_oom; /* set by uthash when an insertion ran out of memory */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (hash_oom = 1)
#include <uthash.h>

#include "log.h"
#include "static_files.h"

#define DEFAULT_BACKOFF_MIN_MS 100
#define DEFAULT_BACKOFF_MAX_MS 5000
#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_READ_BUDGET (4u << 20)
#define HIREDIS_READ_SIZE 16384 /* redisBufferRead's buffer */

/* At most one line per interval; counts what it held back. */
struct ratelimit {
    uint64_t last_ms;    /* uv_now of the last line let through, 0: none yet */
    uint64_t suppressed; /* lines held back since */
};

/* 1 when a line may be logged now (then *held receives how many were held
 * back since the last one), 0 when it must be held back. */
static int ratelimit_ok(struct ratelimit *r, uint64_t now, uint64_t *held)
{
    if (r->last_ms && now - r->last_ms < 1000) {
        r->suppressed++;
        return 0;
    }
    r->last_ms = now ? now : 1;
    *held = r->suppressed;
    r->suppressed = 0;
    return 1;
}

enum conn_role { ROLE_CMD, ROLE_SUB };

enum conn_state {
    CONN_IDLE,        /* no context; the timer waits for the next attempt */
    CONN_CONNECTING,  /* connect(2) in progress; the timer is the watchdog */
    CONN_HANDSHAKE,   /* AUTH / SELECT / CLIENT SETNAME sent, replies awaited */
    CONN_SUBSCRIBING, /* (sub) re-subscribe batch sent, confirmations awaited */
    CONN_READY,       /* usable; the timer is stopped */
};

struct conn {
    sh_redis_bus *bus;      /* owner */
    enum conn_role role;    /* command or subscriber connection */
    unsigned index;         /* (sub) 0..K-1, in bus->subs */
    enum conn_state state;  /* see enum conn_state */
    redisAsyncContext *ac;  /* the live context, NULL when none is ours */
    uv_timer_t timer;       /* retry delay while IDLE, watchdog while connecting; while
                               READY the write flush at the next loop iteration */
    int flushing;           /* inside conn_flush_cb: writes left over poll for POLLOUT */
    uint64_t backoff_ms;    /* delay before the next attempt */
    unsigned fails;         /* consecutive failed attempts (log only the first) */
    int hs_left;            /* handshake replies still awaited */
    int hs_failed;          /* a handshake reply was an error */
    size_t resub_left;      /* (sub) confirmations of the re-subscribe batch awaited */
    struct ratelimit rl;    /* for this connection's loss/restore lines */
};

struct chan {
    UT_hash_handle hh;          /* bus->chans, keyed by name[0..len) */
    struct conn *conn;          /* its subscriber connection (bus->subs[hash % K]) */
    sh_redis_sub *head, *tail;  /* subs in subscription order (dead ones until swept) */
    size_t live;                /* live subs; > 0 means Redis should be subscribed */
    unsigned inflight;          /* (UN)SUBSCRIBE replies expected on the sub connection */
    int sent;                   /* SUBSCRIBE is in force (or sent) on the sub connection */
    int confirmed;              /* Redis confirmed it and nothing is in flight */
    int dirty;                  /* on bus->dirty, to be swept */
    struct chan *dirty_next;    /* next on bus->dirty */
    size_t len;                 /* channel name length */
    char name[];                /* channel name, len bytes + NUL */
};

struct sh_redis_sub {
    sh_redis_bus *bus;            /* NULL once orphaned by sh_redis_bus_close */
    struct chan *chan;            /* the channel; NULL once orphaned */
    sh_redis_sub *prev, *next;    /* chan's list */
    sh_redis_msg_cb on_msg;       /* NULL once unsubscribed */
    sh_redis_confirm_cb on_confirm; /* NULL once unsubscribed */
    void *arg;                    /* passed to both callbacks */
    int pending;                  /* confirmation not yet reported */
    int dead;                     /* unsubscribed or failed: freed by the next sweep */
    sh_redis_sub *fail_next;      /* on a local list of failing subs */
};

struct sh_redis_cmd {
    sh_redis_reply_cb cb; /* NULL once cancelled */
    void *arg;            /* passed to cb */
};

struct sh_redis_bus {
    uv_loop_t *loop;                 /* the loop everything runs on */
    sh_redis_addr addr;              /* where Redis is */
    char desc[300];                  /* addr for logs, without credentials */
    char *name;                      /* client name prefix */
    uint64_t backoff_min_ms;         /* first retry delay */
    uint64_t backoff_max_ms;         /* retry delay cap */
    uint64_t connect_timeout_ms;     /* watchdog for connect + handshake */
    void (*on_state)(void *, int);   /* availability callback, may be NULL */
    void *state_arg;                 /* passed to on_state */
    size_t read_budget;              /* bytes per readiness event, see the opts */
    struct conn cmd;                 /* command connection */
    struct conn *subs;               /* subscriber connections, nsubs of them */
    unsigned nsubs;                  /* K */
    uint64_t sub_drops;              /* ready subscriber connections lost */
    uint64_t messages;               /* pub/sub messages received */
    uint64_t messages_dropped;       /* reported by consumers */
    struct ratelimit state_rl;       /* for "bus up" / "bus down" lines */
    struct chan *chans;              /* channel registry (uthash head) */
    struct chan *dirty;              /* channels to sweep once busy is 0 */
    unsigned busy;                   /* depth of user callbacks over the registry */
    int up;                          /* every connection ready */
    int ever_up;                     /* has been up at least once */
    int first_down_reported;         /* on_state(0) sent for a failed first attempt */
    uint64_t reconnects;             /* down→up transitions after the first up */
    int closing;                     /* sh_redis_bus_close was called */
    uv_timer_t close_timer;          /* runs the asynchronous part of close */
    int close_turn;                  /* turns of bus_close_cb already run */
    int handles_open;                /* uv handles not yet closed */
    void (*done)(void *);            /* close completion, may be NULL */
    void *done_arg;                  /* passed to done */
};

/* Forward declarations (contracts at the definitions). */
static void conn_connect(struct conn *c);
static void conn_timer_cb(uv_timer_t *t);
static void sub_reply_cb(redisAsyncContext *ac, void *r, void *privdata);

/* ---- errors ------------------------------------------------------------ */

const char *sh_redis_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case SH_REDIS_EINVAL: return "invalid argument";
    case SH_REDIS_EBADURL: return "bad redis URL";
    case SH_REDIS_ENOMEM: return "out of memory";
    case SH_REDIS_EUNAVAILABLE: return "unavailable";
    case SH_REDIS_ECLOSED: return "closed";
    default: return "unknown error";
    }
}

/* ---- URL --------------------------------------------------------------- */

/* Percent-decode s[0..n) into out (cap bytes, NUL-terminated): the tree's
 * one decoder (static_files.h). 0 or -1 (bad escape, decoded NUL, too long). */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    return sh_url_decode(s, n, out, cap, NULL) == 0 ? 0 : -1;
}

/* Parse decimal digits s[0..n) (n ≥ 1) into *v, no more than max. 0 or -1. */
static int parse_uint(const char *s, size_t n, long max, long *v)
{
    long x = 0;
    if (n == 0) return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        x = x * 10 + (s[i] - '0');
        if (x > max) return -1;
    }
    *v = x;
    return 0;
}

/* Userinfo s[0..n) → a->user, a->password. 0 or -1. */
static int parse_userinfo(const char *s, size_t n, sh_redis_addr *a)
{
    const char *colon = memchr(s, ':', n);
    if (!colon)
        return pct_decode(s, n, a->password, sizeof a->password);
    if (pct_decode(s, (size_t)(colon - s), a->user, sizeof a->user) < 0) return -1;
    return pct_decode(colon + 1, n - (size_t)(colon - s) - 1, a->password, sizeof a->password);
}

/* host[:port] or [v6][:port] in s[0..n) → a->host, a->port. 0 or -1. */
static int parse_hostport(const char *s, size_t n, sh_redis_addr *a)
{
    const char *host = s, *rest;
    size_t hlen;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return -1;
        host = s + 1;
        hlen = (size_t)(close - host);
        rest = close + 1;
    } else {
        const char *colon = memchr(s, ':', n);
        hlen = colon ? (size_t)(colon - s) : n;
        rest = s + hlen;
    }
    if (hlen == 0 || hlen >= sizeof a->host) return -1;
    for (size_t i = 0; i < hlen; i++)
        if ((unsigned char)host[i] <= ' ' || host[i] == '@' || host[i] == '[' || host[i] == ']')
            return -1;
    memcpy(a->host, host, hlen);
    a->host[hlen] = '\0';
    a->port = 6379;
    size_t rlen = n - (size_t)(rest - s);
    if (rlen == 0) return 0;
    long port;
    if (rest[0] != ':' || parse_uint(rest + 1, rlen - 1, 65535, &port) < 0 || port == 0) return -1;
    a->port = (int)port;
    return 0;
}

/* Contract in redis_bus.h. */
int sh_redis_parse_url(const char *url, sh_redis_addr *out)
{
    sh_redis_addr a;
    if (!url || !out) return SH_REDIS_EBADURL;
    memset(&a, 0, sizeof a);
    a.db = -1;
    if (strncasecmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        size_t n = strlen(p);
        if (n < 2 || p[0] != '/' || n >= sizeof a.path) return SH_REDIS_EBADURL;
        a.is_unix = 1;
        memcpy(a.path, p, n + 1);
        *out = a;
        return 0;
    }
    if (strncasecmp(url, "redis://", 8) != 0) return SH_REDIS_EBADURL;
    const char *p = url + 8, *end = p + strlen(p);
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q;
    if (at) {
        if (parse_userinfo(p, (size_t)(at - p), &a) < 0) return SH_REDIS_EBADURL;
        p = at + 1;
    }
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *hostend = slash ? slash : end;
    if (parse_hostport(p, (size_t)(hostend - p), &a) < 0) return SH_REDIS_EBADURL;
    if (slash && slash + 1 < end) {
        long db;
        if (parse_uint(slash + 1, (size_t)(end - slash - 1), 1000000, &db) < 0)
            return SH_REDIS_EBADURL;
        a.db = (int)db;
    }
    *out = a;
    return 0;
}

/* ---- registry: sweeping ------------------------------------------------- */

/* Put ch on the dirty list (idempotent). */
static void chan_mark_dirty(sh_redis_bus *b, struct chan *ch)
{
    if (ch->dirty) return;
    ch->dirty = 1;
    ch->dirty_next = b->dirty;
    b->dirty = ch;
}

/* Free ch's dead subs, and ch itself when nothing refers to it any more.
 * Precondition: b->busy == 0 (no user code is iterating). */
static void chan_settle_now(sh_redis_bus *b, struct chan *ch)
{
    sh_redis_sub *s = ch->head;
    while (s) {
        sh_redis_sub *next = s->next;
        if (s->dead) {
            if (s->prev) s->prev->next = s->next; else ch->head = s->next;
            if (s->next) s->next->prev = s->prev; else ch->tail = s->prev;
            free(s);
        }
        s = next;
    }
    if (ch->live == 0 && ch->inflight == 0 && ch->head == NULL && !ch->dirty) {
        HASH_DEL(b->chans, ch);
        free(ch);
    }
}

/* Settle ch now, or later when user code is running over the registry. ch may
 * be freed: do not use it after this call. */
static void chan_settle(sh_redis_bus *b, struct chan *ch)
{
    if (b->busy) {
        chan_mark_dirty(b, ch);
        return;
    }
    chan_settle_now(b, ch);
}

/* Settle every dirty channel. No-op while busy. */
static void sweep(sh_redis_bus *b)
{
    while (!b->busy && b->dirty) {
        struct chan *ch = b->dirty;
        b->dirty = ch->dirty_next;
        ch->dirty = 0;
        ch->dirty_next = NULL;
        chan_settle_now(b, ch);
    }
}

/* Enter a section where user callbacks run over the registry: from here on
 * nothing is freed until the matching busy_leave. */
static void busy_enter(sh_redis_bus *b) { b->busy++; }

/* Leave such a section; the outermost leave sweeps what was deferred. */
static void busy_leave(sh_redis_bus *b)
{
    assert(b->busy > 0);
    if (--b->busy == 0) sweep(b);
}

/* ---- registry: Redis side ----------------------------------------------- */

/* 1 when (UN)SUBSCRIBE may be written on subscriber connection c now. */
static int sub_conn_writable(const struct conn *c)
{
    return c->ac && (c->state == CONN_SUBSCRIBING || c->state == CONN_READY);
}

/* Send SUBSCRIBE for ch. 0 or SH_REDIS_EUNAVAILABLE (nothing sent). */
static int chan_send_subscribe(sh_redis_bus *b, struct chan *ch)
{
    const char *argv[2] = {"SUBSCRIBE", ch->name};
    size_t lens[2] = {9, ch->len};
    (void)b;
    if (!sub_conn_writable(ch->conn)) return SH_REDIS_EUNAVAILABLE;
    if (redisAsyncCommandArgv(ch->conn->ac, sub_reply_cb, ch->conn, 2, argv, lens) != REDIS_OK)
        return SH_REDIS_EUNAVAILABLE;
    ch->inflight++;
    ch->sent = 1;
    ch->confirmed = 0;
    return 0;
}

/* The last live sub left ch: tell Redis, if Redis knows of it. */
static void chan_send_unsubscribe(sh_redis_bus *b, struct chan *ch)
{
    const char *argv[2] = {"UNSUBSCRIBE", ch->name};
    size_t lens[2] = {11, ch->len};
    int was_sent = ch->sent;
    ch->confirmed = 0;
    ch->sent = 0;
    if (!was_sent || b->closing || !sub_conn_writable(ch->conn)) return;
    if (redisAsyncCommandArgv(ch->conn->ac, sub_reply_cb, ch->conn, 2, argv, lens) == REDIS_OK)
        ch->inflight++;
}

/* Report confirmation to ch's pending subs (those present now: subs added
 * by the callbacks are not visited). ch may be freed afterwards. */
static void chan_confirm_pending(sh_redis_bus *b, struct chan *ch)
{
    sh_redis_sub *last = ch->tail;
    busy_enter(b);
    chan_mark_dirty(b, ch);
    for (sh_redis_sub *s = ch->head; s; s = s->next) {
        if (!s->dead && s->pending) {
            s->pending = 0;
            if (s->on_confirm && !b->closing) s->on_confirm(s->arg, 0);
        }
        if (s == last) break;
    }
    busy_leave(b);
}

/* A (un)subscribe reply for ch arrived. ch may be freed afterwards. */
static void chan_ack(sh_redis_bus *b, struct chan *ch)
{
    if (ch->inflight) ch->inflight--;
    if (ch->inflight) return;
    if (ch->live > 0 && ch->sent && !ch->confirmed) {
        ch->confirmed = 1;
        chan_confirm_pending(b, ch);
        return;
    }
    chan_settle(b, ch);
}

/* Deliver one message to ch's subs present now, in subscription order. */
static void chan_deliver(sh_redis_bus *b, struct chan *ch, const char *payload, size_t len)
{
    sh_redis_sub *last = ch->tail;
    if (ch->live == 0) return;
    busy_enter(b);
    chan_mark_dirty(b, ch);
    for (sh_redis_sub *s = ch->head; s && !b->closing; s = s->next) {
        if (!s->dead && s->on_msg) s->on_msg(s->arg, ch->name, ch->len, payload, len);
        if (s == last) break;
    }
    busy_leave(b);
}

/* Subscriber connection `only` is gone (NULL: all of them, the bus is
 * closing): Redis knows none of its channels any more. Fail every pending
 * confirmation on them with err (each failed sub is released by the bus),
 * keep live confirmed subs for the next connection, drop channels nobody
 * wants. Channels of the other connections are untouched. */
static void registry_reset(sh_redis_bus *b, const struct conn *only, int err)
{
    sh_redis_sub *fail = NULL, **tail = &fail;
    struct chan *ch, *tmp;
    busy_enter(b);
    HASH_ITER(hh, b->chans, ch, tmp) {
        if (only && ch->conn != only) continue;
        ch->inflight = 0;
        ch->sent = 0;
        ch->confirmed = 0;
        for (sh_redis_sub *s = ch->head; s; s = s->next) {
            if (s->dead || !s->pending) continue;
            s->pending = 0;
            s->dead = 1;
            ch->live--;
            s->fail_next = NULL;
            *tail = s;
            tail = &s->fail_next;
        }
        chan_mark_dirty(b, ch);
    }
    for (sh_redis_sub *s = fail; s; s = s->fail_next) {
        sh_redis_confirm_cb cb = s->on_confirm;
        s->on_confirm = NULL;
        s->on_msg = NULL;
        if (cb) cb(s->arg, err);
    }
    busy_leave(b);
}

/* ---- connections -------------------------------------------------------- */

/* "command" or "subscriber <i>", for logs; buf holds it. */
static const char *role_name(const struct conn *c, char buf[32])
{
    if (c->role == ROLE_CMD) return "command";
    snprintf(buf, 32, "subscriber %u", c->index);
    return buf;
}

/* The reason hiredis gives for ac's failure. */
static const char *ac_reason(const redisAsyncContext *ac)
{
    if (ac->err && ac->errstr && ac->errstr[0]) return ac->errstr;
    if (ac->c.err && ac->c.errstr[0]) return ac->c.errstr;
    return "connection closed";
}

/* Subscriber connections ready now. */
static unsigned subs_ready(const sh_redis_bus *b)
{
    unsigned n = 0;
    for (unsigned i = 0; i < b->nsubs; i++)
        if (b->subs[i].state == CONN_READY) n++;
    return n;
}

/* Recompute availability; report a change through on_state. A subscriber
 * connection flapping under a flood would log two lines per cycle: they are
 * limited to one a second (the count held back is logged with the next). */
static void bus_update(sh_redis_bus *b)
{
    int up = !b->closing && b->cmd.state == CONN_READY && subs_ready(b) == b->nsubs;
    uint64_t held;
    if (up == b->up) return;
    b->up = up;
    if (up) {
        if (b->ever_up) b->reconnects++;
        b->ever_up = 1;
        if (ratelimit_ok(&b->state_rl, uv_now(b->loop), &held))
            sh_info(NULL, "redis: bus up (%s, %u channels)%s", b->desc, HASH_COUNT(b->chans),
                    held ? " (up/down lines held back in the last second)" : "");
    } else if (ratelimit_ok(&b->state_rl, uv_now(b->loop), &held)) {
        if (b->cmd.state == CONN_READY)
            sh_warn(NULL, "redis: bus down (%s): %u of %u subscriber connections ready; new "
                    "subscriptions on the others are refused until they are back", b->desc,
                    subs_ready(b), b->nsubs);
        else
            sh_warn(NULL, "redis: bus down (%s); commands and new subscriptions are refused "
                    "until it is back", b->desc);
    }
    if (b->on_state && !b->closing) {
        busy_enter(b);
        b->on_state(b->state_arg, up);
        busy_leave(b);
    }
}

/* Arm c's timer for the next attempt and double the delay (capped). */
static void conn_schedule_retry(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    if (b->closing) return;
    uv_timer_start(&c->timer, conn_timer_cb, c->backoff_ms, 0);
    if (!b->ever_up && !b->first_down_reported && b->on_state) {
        /* the first attempt failed: say so once, so the owner knows where it stands */
        b->first_down_reported = 1;
        busy_enter(b);
        b->on_state(b->state_arg, 0);
        busy_leave(b);
    }
    c->backoff_ms = c->backoff_ms * 2 > b->backoff_max_ms ? b->backoff_max_ms : c->backoff_ms * 2;
}

/* Live channels on subscriber connection c. */
static size_t conn_channels(const sh_redis_bus *b, const struct conn *c)
{
    size_t n = 0;
    for (const struct chan *ch = b->chans; ch; ch = ch->hh.next)
        if (ch->conn == c && ch->live > 0) n++;
    return n;
}

/* c's context is gone (hiredis is freeing it, or we freed it): mark the
 * connection idle, schedule a retry, update availability, and for a
 * subscriber connection fail its channels' pending confirmations. */
static void conn_lost(struct conn *c, const char *why)
{
    sh_redis_bus *b = c->bus;
    enum conn_state was = c->state;
    char rn[32];
    uint64_t held;
    c->ac = NULL;
    c->state = CONN_IDLE;
    c->hs_left = 0;
    c->resub_left = 0;
    if (b->closing) return;
    if (c->role == ROLE_SUB && was == CONN_READY) {
        /* messages on this connection's channels are lost until it is back */
        b->sub_drops++;
        if (ratelimit_ok(&c->rl, uv_now(b->loop), &held))
            sh_warn(NULL, "redis: %s connection to %s lost: %s; messages on its channels (%zu) "
                    "are lost until it is back%s (%llu subscriber connection losses so far%s); "
                    "retrying every %llu..%llu ms", role_name(c, rn), b->desc, why,
                    conn_channels(b, c),
                    b->cmd.state == CONN_READY
                        ? "; the command connection is still up: if it stays up, Redis closed "
                          "this one itself, usually for client-output-buffer-limit pubsub (a "
                          "flood on one of its channels)"
                        : "",
                    (unsigned long long)b->sub_drops, held ? ", lines held back" : "",
                    (unsigned long long)b->backoff_min_ms, (unsigned long long)b->backoff_max_ms);
    } else if (was == CONN_READY || (c->fails == 0 && (c->role == ROLE_CMD || c->index == 0))) {
        /* a failed attempt is said once, by the command connection and the
         * first subscriber connection; the others fail alike */
        sh_warn(NULL, "redis: %s connection to %s %s: %s; retrying every %llu..%llu ms",
                role_name(c, rn), b->desc, was == CONN_READY ? "lost" : "failed", why,
                (unsigned long long)b->backoff_min_ms, (unsigned long long)b->backoff_max_ms);
    } else {
        sh_debug(NULL, "redis: %s connection to %s failed again: %s", role_name(c, rn), b->desc,
                 why);
    }
    c->fails++;
    conn_schedule_retry(c);
    bus_update(b);
    if (c->role == ROLE_SUB) registry_reset(b, c, SH_REDIS_EUNAVAILABLE);
}

/* c finished its handshake (and, for a subscriber, the re-subscription). */
static void conn_ready(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    char rn[32];
    uv_timer_stop(&c->timer);
    c->state = CONN_READY;
    c->backoff_ms = b->backoff_min_ms;
    if (c->fails) { /* a flapping subscriber connection: only with its loss lines */
        if (c->rl.suppressed == 0)
            sh_info(NULL, "redis: %s connection to %s restored", role_name(c, rn), b->desc);
        else
            sh_debug(NULL, "redis: %s connection to %s restored", role_name(c, rn), b->desc);
    }
    c->fails = 0;
    bus_update(b);
}

/* Send one SUBSCRIBE naming every live channel of c (after a reconnect). */
static void sub_resubscribe(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    size_t n = conn_channels(b, c), i = 1;
    char rn[32];
    struct chan *ch, *tmp;
    if (n == 0) {
        conn_ready(c);
        return;
    }
    const char **argv = malloc((n + 1) * sizeof *argv);
    size_t *lens = malloc((n + 1) * sizeof *lens);
    if (!argv || !lens) {
        free(argv);
        free(lens);
        sh_error(NULL, "redis: out of memory re-subscribing %zu channels", n);
        return; /* the watchdog will retry the connection */
    }
    argv[0] = "SUBSCRIBE";
    lens[0] = 9;
    HASH_ITER(hh, b->chans, ch, tmp) {
        if (ch->conn != c || ch->live == 0) continue;
        argv[i] = ch->name;
        lens[i++] = ch->len;
    }
    c->state = CONN_SUBSCRIBING;
    if (redisAsyncCommandArgv(c->ac, sub_reply_cb, c, (int)(n + 1), argv, lens) == REDIS_OK) {
        c->resub_left = n;
        HASH_ITER(hh, b->chans, ch, tmp) {
            if (ch->conn != c || ch->live == 0) continue;
            ch->inflight++;
            ch->sent = 1;
            ch->confirmed = 0;
        }
        if (c->rl.suppressed == 0)
            sh_info(NULL, "redis: re-subscribing %zu channels (%s connection)", n,
                    role_name(c, rn));
        else
            sh_debug(NULL, "redis: re-subscribing %zu channels (%s connection)", n,
                     role_name(c, rn));
    }
    free(argv);
    free(lens);
}

/* Reply to one handshake command (AUTH, SELECT, CLIENT SETNAME). */
static void hs_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct conn *c = privdata;
    const redisReply *reply = r;
    char rn[32];
    if (c->ac != ac) return;
    if (!reply) {
        conn_lost(c, ac_reason(ac));
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && !c->hs_failed) {
        c->hs_failed = 1;
        if (c->fails == 0)
            sh_error(NULL, "redis: %s connection to %s: handshake refused: %.*s",
                     role_name(c, rn), c->bus->desc, (int)reply->len, reply->str);
    }
    if (--c->hs_left > 0) return;
    if (c->hs_failed) {
        /* hiredis defers this until the callback returns, then calls
         * on_disconnect, which schedules the retry */
        redisAsyncDisconnect(ac);
        return;
    }
    if (c->role == ROLE_SUB)
        sub_resubscribe(c);
    else
        conn_ready(c);
}

/* Queue one handshake command on c. */
static void hs_send(struct conn *c, int argc, const char **argv, const size_t *lens)
{
    if (redisAsyncCommandArgv(c->ac, hs_reply_cb, c, argc, argv, lens) == REDIS_OK)
        c->hs_left++;
    else
        c->hs_failed = 1; /* nothing will answer: the watchdog retries */
}

/* TCP/unix connection established: authenticate, select, name. */
static void on_connect(const redisAsyncContext *cac, int status)
{
    struct conn *c = cac->data;
    if (c->ac != cac) return;
    if (status != REDIS_OK) {
        conn_lost(c, ac_reason(cac)); /* hiredis frees the context after we return */
        return;
    }
    sh_redis_bus *b = c->bus;
    const sh_redis_addr *a = &b->addr;
    if (!a->is_unix) redisEnableKeepAlive(&c->ac->c);
    c->state = CONN_HANDSHAKE;
    c->hs_left = 0;
    c->hs_failed = 0;
    if (a->password[0]) { /* AUTH [user] password */
        const char *argv[3] = {"AUTH", a->user, a->password};
        size_t lens[3] = {4, strlen(a->user), strlen(a->password)};
        if (a->user[0]) {
            hs_send(c, 3, argv, lens);
        } else {
            argv[1] = a->password;
            lens[1] = lens[2];
            hs_send(c, 2, argv, lens);
        }
    }
    if (a->db >= 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", a->db);
        hs_send(c, 2, (const char *[]){"SELECT", db}, (const size_t[]){6, strlen(db)});
    }
    char name[256];
    if (c->role == ROLE_CMD)
        snprintf(name, sizeof name, "%s-cmd", b->name);
    else
        snprintf(name, sizeof name, "%s-sub%u", b->name, c->index);
    hs_send(c, 3, (const char *[]){"CLIENT", "SETNAME", name},
            (const size_t[]){6, 7, strlen(name)});
}

/* A connected context went away (error, server gone, or our disconnect). */
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct conn *c = ac->data;
    if (c->ac != ac) return;
    const char *why = c->hs_failed ? "handshake refused"
                      : status == REDIS_OK ? "disconnected" : ac_reason(ac);
    conn_lost(c, why);
}

/* Every reply on the subscriber connection in subscribed mode. */
static void sub_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct conn *c = privdata;
    sh_redis_bus *b = c->bus;
    const redisReply *reply = r;
    struct chan *ch = NULL;
    if (c->ac != ac) return;
    if (!reply) {
        conn_lost(c, ac_reason(ac));
        return;
    }
    if (b->closing) return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        if (reply->type == REDIS_REPLY_ERROR)
            sh_warn(NULL, "redis: subscriber connection: %.*s", (int)reply->len, reply->str);
        return;
    }
    const char *kind = reply->element[0]->str;
    const redisReply *name = reply->element[1];
    HASH_FIND(hh, b->chans, name->str, name->len, ch);
    if (strcasecmp(kind, "message") == 0) {
        const redisReply *payload = reply->element[2];
        b->messages++;
        if (ch && payload->type == REDIS_REPLY_STRING)
            chan_deliver(b, ch, payload->str, payload->len);
    } else if (strcasecmp(kind, "subscribe") == 0) {
        if (ch) chan_ack(b, ch);
        if (c->state == CONN_SUBSCRIBING && c->resub_left > 0 && --c->resub_left == 0)
            conn_ready(c);
    } else if (strcasecmp(kind, "unsubscribe") == 0) {
        if (ch) chan_ack(b, ch);
    }
}

/* ---- event loop glue ---------------------------------------------------- */

/* Readable: let hiredis read (16 KiB) and process, and again while the socket
 * has bytes waiting, up to the bus's read budget. Stops when the context goes
 * away (the adapter's cleanup clears p->context; p itself lives until its
 * handle's close callback, a later loop iteration). */
static void ev_read(redisLibuvEvents *p)
{
    const struct conn *c = p->context->data;
    size_t budget = c->bus->read_budget, done = HIREDIS_READ_SIZE;
    redisAsyncHandleRead(p->context);
    while (done < budget && p->context && (p->context->c.flags & REDIS_CONNECTED)) {
        int avail = 0;
        if (ioctl(p->context->c.fd, FIONREAD, &avail) < 0 || avail <= 0) break;
        redisAsyncHandleRead(p->context);
        done += HIREDIS_READ_SIZE;
    }
}

/* Our replacement for redisLibuvPoll: identical, except that a poll error
 * (libuv: POLLERR → UV_EBADF, handle already stopped) is passed to hiredis as
 * readiness so that it reads/writes, sees the socket error and disconnects,
 * and that a readable socket is drained (ev_read). */
static void ev_poll_cb(uv_poll_t *handle, int status, int events)
{
    redisLibuvEvents *p = handle->data;
    if (status < 0) events = p->events ? p->events : UV_READABLE;
    if (p->context && (events & UV_READABLE)) ev_read(p);
    if (p->context && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
    if (status < 0 && p->context && p->events) uv_poll_start(&p->handle, p->events, ev_poll_cb);
}

/* (Re)start or stop the poll handle for p->events (was: old). hiredis asks for
 * reads again after every read: when nothing changes nothing is done, since
 * uv_poll_start restarts the handle (epoll_ctl DEL, failing when repeated, + ADD). */
static void ev_apply(redisLibuvEvents *p, int old)
{
    if (p->events == old)
        return;
    if (p->events)
        uv_poll_start(&p->handle, p->events, ev_poll_cb);
    else
        uv_poll_stop(&p->handle);
}

/* hiredis' event hooks (ac->ev.addRead & co.), as in adapters/libuv.h but
 * bound to ev_poll_cb. pd is the adapter's redisLibuvEvents. */
static void ev_add_read(void *pd)
{
    redisLibuvEvents *p = pd;
    int old = p->events;
    p->events |= UV_READABLE;
    ev_apply(p, old);
}

static void ev_del_read(void *pd)
{
    redisLibuvEvents *p = pd;
    int old = p->events;
    p->events &= ~UV_READABLE;
    ev_apply(p, old);
}

static void conn_flush_cb(uv_timer_t *t);

static void ev_add_write(void *pd)
{
    redisLibuvEvents *p = pd;
    struct conn *c = p->context ? p->context->data : NULL;
    if (c && c->ac == p->context && c->state == CONN_READY && !c->flushing) {
        /* a command of a ready connection: written at the start of the next loop
         * iteration with the others queued meanwhile, without polling for POLLOUT
         * (two epoll_ctl per command) */
        uv_timer_start(&c->timer, conn_flush_cb, 0, 0);
        return;
    }
    int old = p->events;
    p->events |= UV_WRITABLE;
    ev_apply(p, old);
}

static void ev_del_write(void *pd)
{
    redisLibuvEvents *p = pd;
    int old = p->events;
    p->events &= ~UV_WRITABLE;
    ev_apply(p, old);
}

/* c's timer while READY: write what the commands queued; what the socket does not
 * take now waits for POLLOUT as hiredis asks. */
static void conn_flush_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->bus->closing || !c->ac || c->state != CONN_READY)
        return;
    c->flushing = 1;
    redisAsyncHandleWrite(c->ac); /* may disconnect: c->ac is then NULL */
    c->flushing = 0;
}

/* c's timer: the next attempt while idle, the watchdog otherwise. */
static void conn_timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    sh_redis_bus *b = c->bus;
    if (b->closing) return;
    if (c->state == CONN_IDLE) {
        conn_connect(c);
        return;
    }
    redisAsyncContext *ac = c->ac;
    c->ac = NULL; /* every callback redisAsyncFree runs now sees a foreign context */
    if (ac) redisAsyncFree(ac);
    conn_lost(c, "no answer within the connect timeout");
}

/* Start one connection attempt. Failures that hiredis reports at once are
 * handled here (retry scheduled); later ones arrive through on_connect. */
static void conn_connect(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    const sh_redis_addr *a = &b->addr;
    redisAsyncContext *ac = a->is_unix ? redisAsyncConnectUnix(a->path)
                                       : redisAsyncConnect(a->host, a->port);
    char why[160];
    if (!ac) {
        conn_lost(c, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof why, "%s", ac_reason(ac));
        redisAsyncFree(ac);
        conn_lost(c, why);
        return;
    }
    if (redisLibuvAttach(ac, b->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        conn_lost(c, "cannot attach to the event loop");
        return;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->data = c;
    c->ac = ac;
    c->state = CONN_CONNECTING;
    c->hs_left = 0;
    c->hs_failed = 0;
    redisAsyncSetConnectCallback(ac, on_connect); /* starts watching for writability */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    uv_timer_start(&c->timer, conn_timer_cb, b->connect_timeout_ms, 0);
}

/* ---- bus ---------------------------------------------------------------- */

/* Initialise one connection's fields and timer. */
static void conn_init(sh_redis_bus *b, struct conn *c, enum conn_role role, unsigned index)
{
    c->bus = b;
    c->role = role;
    c->index = index;
    c->state = CONN_IDLE;
    c->backoff_ms = b->backoff_min_ms;
    uv_timer_init(b->loop, &c->timer);
    c->timer.data = c;
    b->handles_open++;
}

/* Contract in redis_bus.h. */
int sh_redis_bus_new(uv_loop_t *loop, const sh_redis_opts *o, sh_redis_bus **out)
{
    sh_redis_addr addr;
    char defname[64];
    if (!loop || !o || !out || !o->url) return SH_REDIS_EINVAL;
    if (sh_redis_parse_url(o->url, &addr) < 0) return SH_REDIS_EBADURL;
    const char *name = o->client_name;
    if (!name) {
        snprintf(defname, sizeof defname, "statushost-%ld", (long)getpid());
        name = defname;
    }
    if (!name[0] || strlen(name) > 200) return SH_REDIS_EINVAL;
    unsigned nsubs = o->sub_connections ? o->sub_connections : SH_REDIS_SUB_CONNECTIONS_DEFAULT;
    if (nsubs > SH_REDIS_SUB_CONNECTIONS_MAX) return SH_REDIS_EINVAL;
    for (const char *q = name; *q; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 127) return SH_REDIS_EINVAL;

    sh_redis_bus *b = calloc(1, sizeof *b);
    if (!b) return SH_REDIS_ENOMEM;
    b->name = strdup(name);
    b->subs = calloc(nsubs, sizeof *b->subs);
    if (!b->name || !b->subs) {
        free(b->name);
        free(b->subs);
        free(b);
        return SH_REDIS_ENOMEM;
    }
    b->nsubs = nsubs;
    b->read_budget = o->read_budget ? o->read_budget : DEFAULT_READ_BUDGET;
    b->loop = loop;
    b->addr = addr;
    if (addr.is_unix)
        snprintf(b->desc, sizeof b->desc, "unix:%s", addr.path);
    else if (strchr(addr.host, ':'))
        snprintf(b->desc, sizeof b->desc, "[%s]:%d", addr.host, addr.port);
    else
        snprintf(b->desc, sizeof b->desc, "%s:%d", addr.host, addr.port);
    b->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
    b->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (b->backoff_max_ms < b->backoff_min_ms) b->backoff_max_ms = b->backoff_min_ms;
    b->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    b->on_state = o->on_state;
    b->state_arg = o->state_arg;
    conn_init(b, &b->cmd, ROLE_CMD, 0);
    for (unsigned i = 0; i < nsubs; i++) conn_init(b, &b->subs[i], ROLE_SUB, i);
    uv_timer_init(loop, &b->close_timer);
    b->close_timer.data = b;
    b->handles_open++;

    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);

    /* the first attempts start from the loop: a connect refused at once must
     * not reach on_state from inside this function */
    uv_timer_start(&b->cmd.timer, conn_timer_cb, 0, 0);
    for (unsigned i = 0; i < nsubs; i++) uv_timer_start(&b->subs[i].timer, conn_timer_cb, 0, 0);
    *out = b;
    return 0;
}

/* Contract in redis_bus.h. */
int sh_redis_bus_up(const sh_redis_bus *b) { return b && b->up; }

/* Contract in redis_bus.h. */
uint64_t sh_redis_bus_reconnects(const sh_redis_bus *b) { return b ? b->reconnects : 0; }

/* Contract in redis_bus.h. */
size_t sh_redis_bus_channels(const sh_redis_bus *b) { return b ? HASH_COUNT(b->chans) : 0; }

/* Contract in redis_bus.h. */
uint64_t sh_redis_bus_sub_drops(const sh_redis_bus *b) { return b ? b->sub_drops : 0; }

/* Contract in redis_bus.h. */
void sh_redis_bus_stats(const sh_redis_bus *b, sh_redis_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!b) return;
    out->reconnects = b->reconnects;
    out->sub_drops = b->sub_drops;
    out->messages = b->messages;
    out->messages_dropped = b->messages_dropped;
    out->sub_connections = b->nsubs;
    out->sub_ready = subs_ready(b);
    out->cmd_ready = b->cmd.state == CONN_READY;
}

/* FNV-1a, 32 bits: the channel → subscriber connection map. Fixed so that a
 * channel's connection is the same across reconnects and processes. */
static uint32_t chan_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Contract in redis_bus.h. */
unsigned sh_redis_bus_channel_conn(const sh_redis_bus *b, const char *channel, size_t len)
{
    if (!b || (!channel && len)) return 0;
    return chan_hash(channel, len) % b->nsubs;
}

/* ---- commands ----------------------------------------------------------- */

/* s[0..n) equals the C string word, ignoring ASCII case. */
static int word_is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

#define BUS_OWN " belongs to the bus and is refused (use conn:subscribe)"
#define STATE " changes the shared connection's state and is refused"
#define BLOCKS " blocks the shared connection and is refused"
#define SERVER " is a replication or server-control command and is refused"

/* Commands refused on the shared command connection, whatever follows. */
static const struct { const char *name, *why; } refused_cmds[] = {
    {"subscribe", "SUBSCRIBE" BUS_OWN},
    {"psubscribe", "PSUBSCRIBE" BUS_OWN},
    {"ssubscribe", "SSUBSCRIBE" BUS_OWN},
    {"unsubscribe", "UNSUBSCRIBE" BUS_OWN},
    {"punsubscribe", "PUNSUBSCRIBE" BUS_OWN},
    {"sunsubscribe", "SUNSUBSCRIBE" BUS_OWN},
    {"monitor", "MONITOR" BUS_OWN},
    {"auth", "AUTH" STATE},
    {"hello", "HELLO" STATE},
    {"select", "SELECT" STATE},
    {"reset", "RESET" STATE},
    {"quit", "QUIT" STATE},
    {"readonly", "READONLY" STATE},
    {"readwrite", "READWRITE" STATE},
    {"asking", "ASKING" STATE},
    {"multi", "MULTI" STATE " (interleaved commands of other tasks would join the "
              "transaction; use EVAL)"},
    {"exec", "EXEC" STATE " (transactions are refused; use EVAL)"},
    {"discard", "DISCARD" STATE " (transactions are refused; use EVAL)"},
    {"watch", "WATCH" STATE " (transactions are refused; use EVAL)"},
    {"unwatch", "UNWATCH" STATE " (transactions are refused; use EVAL)"},
    {"sync", "SYNC" SERVER},
    {"psync", "PSYNC" SERVER},
    {"replconf", "REPLCONF" SERVER},
    {"replicaof", "REPLICAOF" SERVER},
    {"slaveof", "SLAVEOF" SERVER},
    {"failover", "FAILOVER" SERVER},
    {"shutdown", "SHUTDOWN" SERVER},
    {"debug", "DEBUG" SERVER},
    {"blpop", "BLPOP" BLOCKS},
    {"brpop", "BRPOP" BLOCKS},
    {"brpoplpush", "BRPOPLPUSH" BLOCKS},
    {"blmove", "BLMOVE" BLOCKS},
    {"blmpop", "BLMPOP" BLOCKS},
    {"bzpopmin", "BZPOPMIN" BLOCKS},
    {"bzpopmax", "BZPOPMAX" BLOCKS},
    {"bzmpop", "BZMPOP" BLOCKS},
    {"wait", "WAIT" BLOCKS},
    {"waitaof", "WAITAOF" BLOCKS},
};

/* CLIENT subcommands refused (the others, ID, INFO, LIST, GETNAME, ... run). */
static const struct { const char *name, *why; } refused_client[] = {
    {"reply", "CLIENT REPLY" STATE},
    {"tracking", "CLIENT TRACKING" STATE},
    {"caching", "CLIENT CACHING" STATE},
    {"setname", "CLIENT SETNAME" STATE},
    {"setinfo", "CLIENT SETINFO" STATE},
    {"no-evict", "CLIENT NO-EVICT" STATE},
    {"no-touch", "CLIENT NO-TOUCH" STATE},
    {"kill", "CLIENT KILL can close the bus's own connections and is refused"},
    {"pause", "CLIENT PAUSE" BLOCKS},
};

/* Contract in redis_bus.h. */
const char *sh_redis_refusal(int argc, const char **argv, const size_t *argvlen)
{
#define ARG(i) argv[i], (argvlen ? argvlen[i] : strlen(argv[i]))
    if (argc < 1 || !argv || !argv[0]) return NULL;
    for (size_t i = 0; i < sizeof refused_cmds / sizeof refused_cmds[0]; i++)
        if (word_is(ARG(0), refused_cmds[i].name)) return refused_cmds[i].why;
    if (word_is(ARG(0), "client") && argc >= 2 && argv[1]) {
        for (size_t i = 0; i < sizeof refused_client / sizeof refused_client[0]; i++)
            if (word_is(ARG(1), refused_client[i].name)) return refused_client[i].why;
        return NULL;
    }
    /* XREAD [COUNT n] [BLOCK ms] STREAMS ...;
     * XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS ... */
    int first = word_is(ARG(0), "xread") ? 1 : word_is(ARG(0), "xreadgroup") ? 4 : 0;
    if (first) {
        for (int i = first; i < argc && argv[i]; i++) {
            if (word_is(ARG(i), "streams")) break;
            if (word_is(ARG(i), "block"))
                return first == 1 ? "XREAD BLOCK" BLOCKS : "XREADGROUP BLOCK" BLOCKS;
        }
    }
    return NULL;
#undef ARG
}

/* hiredis callback for a user command. */
static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct sh_redis_cmd *cmd = privdata;
    struct conn *c = ac->data;
    if (!r && c->ac == ac) conn_lost(c, ac_reason(ac));
    if (cmd->cb) cmd->cb(cmd->arg, r, r ? NULL : "closed");
    free(cmd);
}

/* Contract in redis_bus.h. */
int sh_redis_command(sh_redis_bus *b, int argc, const char **argv, const size_t *argvlen,
                     sh_redis_reply_cb cb, void *arg, sh_redis_cmd **out)
{
    if (!b || argc < 1 || !argv || !argv[0]) return SH_REDIS_EINVAL;
    for (int i = 1; i < argc; i++)
        if (!argv[i]) return SH_REDIS_EINVAL;
    if (sh_redis_refusal(argc, argv, argvlen)) return SH_REDIS_EINVAL;
    if (b->closing) return SH_REDIS_ECLOSED;
    if (b->cmd.state != CONN_READY || !b->cmd.ac) return SH_REDIS_EUNAVAILABLE;
    struct sh_redis_cmd *cmd = malloc(sizeof *cmd);
    if (!cmd) return SH_REDIS_ENOMEM;
    cmd->cb = cb;
    cmd->arg = arg;
    if (redisAsyncCommandArgv(b->cmd.ac, cmd_reply_cb, cmd, argc, argv, argvlen) != REDIS_OK) {
        free(cmd);
        return SH_REDIS_EUNAVAILABLE;
    }
    if (out) *out = cmd;
    return 0;
}

/* Contract in redis_bus.h. */
void sh_redis_cmd_cancel(sh_redis_cmd *c)
{
    if (c) c->cb = NULL;
}

/* ---- subscriptions ------------------------------------------------------ */

/* Find or create the channel. NULL when out of memory. */
static struct chan *chan_get(sh_redis_bus *b, const char *name, size_t len)
{
    struct chan *ch;
    HASH_FIND(hh, b->chans, name, len, ch);
    if (ch) return ch;
    ch = calloc(1, sizeof *ch + len + 1);
    if (!ch) return NULL;
    memcpy(ch->name, name, len);
    ch->len = len;
    ch->conn = &b->subs[chan_hash(name, len) % b->nsubs];
    hash_oom = 0;
    HASH_ADD_KEYPTR(hh, b->chans, ch->name, ch->len, ch);
    if (hash_oom) {
        free(ch);
        return NULL;
    }
    return ch;
}

/* Contract in redis_bus.h. */
int sh_redis_subscribe(sh_redis_bus *b, const char *channel, size_t len,
                       sh_redis_msg_cb on_msg, sh_redis_confirm_cb on_confirm, void *arg,
                       sh_redis_sub **out)
{
    if (!b || (!channel && len) || !out) return SH_REDIS_EINVAL;
    if (b->closing) return SH_REDIS_ECLOSED;
    if (!channel) channel = "";
    if (b->subs[chan_hash(channel, len) % b->nsubs].state != CONN_READY)
        return SH_REDIS_EUNAVAILABLE;
    struct chan *ch = chan_get(b, channel, len);
    if (!ch) return SH_REDIS_ENOMEM;
    sh_redis_sub *s = calloc(1, sizeof *s);
    if (!s) {
        chan_settle(b, ch);
        return SH_REDIS_ENOMEM;
    }
    if (ch->live == 0) {
        int rc = chan_send_subscribe(b, ch);
        if (rc < 0) {
            free(s);
            chan_settle(b, ch);
            return rc;
        }
    }
    s->bus = b;
    s->chan = ch;
    s->on_msg = on_msg;
    s->on_confirm = on_confirm;
    s->arg = arg;
    s->prev = ch->tail;
    if (ch->tail) ch->tail->next = s; else ch->head = s;
    ch->tail = s;
    ch->live++;
    *out = s;
    if (ch->confirmed) return 1;
    s->pending = 1;
    return 0;
}

/* Contract in redis_bus.h. */
void sh_redis_unsubscribe(sh_redis_sub *s)
{
    if (!s) return;
    sh_redis_bus *b = s->bus;
    s->on_msg = NULL;
    s->on_confirm = NULL;
    if (!b) { /* orphaned by sh_redis_bus_close */
        free(s);
        return;
    }
    if (s->dead) return; /* failing right now: the bus releases it */
    struct chan *ch = s->chan;
    s->dead = 1;
    s->pending = 0;
    if (--ch->live == 0) chan_send_unsubscribe(b, ch);
    chan_settle(b, ch);
}

/* Contract in redis_bus.h. */
void sh_redis_sub_dropped(sh_redis_sub *s, uint64_t n)
{
    if (s && s->bus) s->bus->messages_dropped += n;
}

/* ---- close -------------------------------------------------------------- */

/* One of the bus's uv handles is closed; the last one completes the close. */
static void bus_handle_closed(uv_handle_t *h)
{
    sh_redis_bus *b = h->data;
    if (--b->handles_open > 0) return;
    void (*done)(void *) = b->done;
    void *arg = b->done_arg;
    free(b->name);
    free(b->subs);
    free(b);
    if (done) done(arg);
}

/* Free c's context (pending commands are answered "closed" by hiredis). */
static void conn_shutdown(struct conn *c)
{
    redisAsyncContext *ac = c->ac;
    uv_timer_stop(&c->timer);
    c->ac = NULL;
    c->state = CONN_IDLE;
    if (ac) redisAsyncFree(ac);
}

/* Detach every remaining live sub (its owner still unsubscribes it, which then
 * just frees it) and free every channel. */
static void registry_orphan_all(sh_redis_bus *b)
{
    struct chan *ch, *tmp;
    HASH_ITER(hh, b->chans, ch, tmp) {
        sh_redis_sub *s = ch->head;
        while (s) {
            sh_redis_sub *next = s->next;
            if (s->dead) {
                free(s);
            } else {
                s->bus = NULL;
                s->chan = NULL;
                s->prev = s->next = NULL;
                s->on_msg = NULL;
            }
            s = next;
        }
        HASH_DEL(b->chans, ch);
        free(ch);
    }
    b->dirty = NULL;
}

/* The asynchronous part of sh_redis_bus_close, run from the loop (outside
 * any hiredis callback), in two turns: first free both contexts (answering
 * their waiters) and settle the registry; then, one loop iteration later, when
 * the adapter's poll handles have finished closing, close our own timers so
 * that done() runs only once nothing of the bus is left. */
static void bus_close_cb(uv_timer_t *t)
{
    sh_redis_bus *b = t->data;
    if (b->close_turn++ == 0) {
        conn_shutdown(&b->cmd);
        for (unsigned i = 0; i < b->nsubs; i++) conn_shutdown(&b->subs[i]);
        registry_reset(b, NULL, SH_REDIS_ECLOSED);
        registry_orphan_all(b);
        uv_timer_start(&b->close_timer, bus_close_cb, 0, 0);
        return;
    }
    uv_timer_stop(&b->cmd.timer);
    b->cmd.timer.data = b;
    uv_close((uv_handle_t *)&b->cmd.timer, bus_handle_closed);
    for (unsigned i = 0; i < b->nsubs; i++) {
        uv_timer_stop(&b->subs[i].timer);
        b->subs[i].timer.data = b;
        uv_close((uv_handle_t *)&b->subs[i].timer, bus_handle_closed);
    }
    uv_close((uv_handle_t *)&b->close_timer, bus_handle_closed);
}

/* Contract in redis_bus.h. */
void sh_redis_bus_close(sh_redis_bus *b, void (*done)(void *), void *arg)
{
    if (!b || b->closing) return;
    b->closing = 1;
    b->up = 0;
    b->done = done;
    b->done_arg = arg;
    sh_info(NULL, "redis: closing the bus (%s)", b->desc);
    uv_timer_start(&b->close_timer, bus_close_cb, 0, 0);
}
