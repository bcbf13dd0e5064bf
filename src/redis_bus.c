/* redis_bus.c — see redis_bus.h.
 *
 * Objects:
 *   sh_redis_bus   the process's bus: the command connection, K subscriber
 *                  connections, the channel registry, a timer that runs the
 *                  asynchronous part of close.
 *   struct conn    one hiredis async context plus its retry/watchdog timer and
 *                  its liveness timer (conn_live_cb).
 *   struct chan    one channel (uthash, keyed by the channel bytes), the
 *                  subscriber connection it lives on (fixed: hash % K), and
 *                  its subs in subscription order.
 *   sh_redis_sub   one subscriber's interest in one channel.
 *   sh_redis_cmd   one pending command's callback.
 *   struct node    (cluster mode) one master of the slot map, or a seed: its
 *                  own command and subscriber connections (struct conn), under
 *                  the same registry; see the "cluster" sections at the end.
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
 * - hiredis' subscribed mode costs a dict entry (an sds name) per channel, an
 *   argv formatting per (UN)SUBSCRIBE and a look-up per push, and in it every
 *   reply hiredis cannot match goes to the last callback it used
 *   (redisProcessCallbacks keeps `cb` across replies). So a subscriber
 *   connection goes through hiredis' callbacks for its handshake
 *   (AUTH/SELECT/SETNAME) only; from its last reply on, the context is "raw"
 *   (c->raw_ac, raw_take_over): (UN)SUBSCRIBE (cluster: SSUBSCRIBE/SUNSUBSCRIBE)
 *   are formatted here and appended to its output (sub_append), and what it
 *   reads is parsed here (sub_fast_read) or by hiredis' reader alone
 *   (raw_drain, by the rules hiredis applied: reply_refused). hiredis never
 *   enters subscribed mode.
 * - redisLibuvAttach leaks its small event struct if uv_poll_init fails (not
 *   reachable with a valid socket; noted, not worked around).
 * - redisAsyncHandleRead reads at most 16 KiB (a stack buffer in
 *   redisBufferRead) per readiness event. A flooded subscriber connection then
 *   advances 16 KiB per loop iteration while Redis' output buffer for it grows
 *   towards `client-output-buffer-limit pubsub`. Our poll callback calls it
 *   again while FIONREAD says bytes are waiting, up to read_budget.
 * - redisProcessCallbacks asserts (aborts the process) on a reply no command
 *   awaits outside subscribed mode, and on a malformed push in it; such replies
 *   are refused as they are read (reply_refused): a protocol error, as hiredis'
 *   own, that drops the connection. */
#include "redis_bus.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

static int hash_oom; /* set by uthash when an insertion ran out of memory */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (hash_oom = 1)

/* The registry's hash of a channel name (every message and confirmation looks its
 * channel up): SipHash-1-3 (Aumasson and Bernstein's keyed hash, the rounds Rust's and
 * Python's tables use) under a key drawn at random once per process (name_hash_seed).
 * Channel names can come from outside (a policy subscribing to names a client sent):
 * under a fixed function, even a strong one, names chosen to collide go to one bucket,
 * uthash stops expanding and every look-up walks the chain (quadratic: 20,000 such names
 * cost 50 times as many plain ones; test_redis_fast test_hash_flood). A multiply-xorshift
 * step is not enough even with a key: flipping a word's top bit changes its state by a
 * constant whatever the key. */
static uint64_t hash_k0, hash_k1;
#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND                                                                      \
    do {                                                                               \
        v0 += v1, v1 = SIP_ROTL(v1, 13), v1 ^= v0, v0 = SIP_ROTL(v0, 32);              \
        v2 += v3, v3 = SIP_ROTL(v3, 16), v3 ^= v2;                                     \
        v0 += v3, v3 = SIP_ROTL(v3, 21), v3 ^= v0;                                     \
        v2 += v1, v1 = SIP_ROTL(v1, 17), v1 ^= v2, v2 = SIP_ROTL(v2, 32);              \
    } while (0)
static unsigned name_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t v0 = hash_k0 ^ 0x736f6d6570736575u, v1 = hash_k1 ^ 0x646f72616e646f6du;
    uint64_t v2 = hash_k0 ^ 0x6c7967656e657261u, v3 = hash_k1 ^ 0x7465646279746573u;
    uint64_t m, last = (uint64_t)len << 56;
    for (; len >= 8; p += 8, len -= 8) {
        memcpy(&m, p, 8); /* little-endian hosts: SipHash's word order */
        v3 ^= m;
        SIP_ROUND;
        v0 ^= m;
    }
    m = 0;
    memcpy(&m, p, len);
    last |= m;
    v3 ^= last;
    SIP_ROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIP_ROUND;
    SIP_ROUND;
    SIP_ROUND;
    m = v0 ^ v1 ^ v2 ^ v3;
    return (unsigned)(m ^ (m >> 32));
}

/* Draw name_hash's key (once per process: every bus's registry uses it). */
static void name_hash_seed(void)
{
    static int seeded;
    uint64_t k[2];
    if (seeded) return;
    if (getrandom(k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k) { /* not seeded yet: boot */
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        k[0] = ((uint64_t)t.tv_sec << 32) ^ (uint64_t)t.tv_nsec ^ (uint64_t)(uintptr_t)&t;
        k[1] = ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)k ^ 0x9E3779B97F4A7C15u;
    }
    hash_k0 = k[0];
    hash_k1 = k[1];
    seeded = 1;
}
#define HASH_FUNCTION(keyptr, keylen, hashv) ((hashv) = name_hash((keyptr), (keylen)))
#include <uthash.h>

#include "buf.h"
#include "log.h"
#include "redis_slots.h"
#include "static_files.h"
#include "str.h"

#define DEFAULT_BACKOFF_MIN_MS 100
#define DEFAULT_BACKOFF_MAX_MS 5000
#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_TIMEOUT_MS 5000
#define STABLE_MS 1000 /* up this long: the next loss retries from backoff_min_ms again */
#define DEFAULT_READ_BUDGET (4u << 20)
#define HIREDIS_READ_SIZE 16384 /* redisBufferRead's buffer */
#define FAST_CAP HIREDIS_READ_SIZE /* the fast reader's buffer (see sub_fast_read) */
#define DEFAULT_MAX_REPLY (64u << 20)
/* What a reply is charged per value it holds (reply_charge): its object and its
 * pointer in the array above it; a string adds its bytes and a NUL. */
#define REPLY_SLOT (sizeof(redisReply) + sizeof(redisReply *))

/* Exported by libhiredis (0.14 and 1.x: redisAsyncHandleRead is redisBufferRead
 * and then this), but declared in no installed header of 0.14. */
void redisProcessCallbacks(redisAsyncContext *ac);

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

/* A (S)SUBSCRIBE or (S)UNSUBSCRIBE of one channel sent on a subscriber connection, awaiting
 * its reply (conn's sq_head..sq_tail, in the order sent: Redis answers in that order). */
struct sreq {
    struct sreq *next;
    struct chan *ch;       /* NULL once the channel moved elsewhere (cluster) */
    int unsub;             /* (S)UNSUBSCRIBE */
    int resub;             /* part of the batch sent after the handshake */
    size_t len;            /* the channel's name, kept when ch is NULL: an sunsubscribe */
    char name[];           /* push is the reply to this request only when it names it */
};

enum conn_state {
    CONN_IDLE,        /* no context; the timer waits for the next attempt */
    CONN_CONNECTING,  /* resolving its host name or connect(2) in progress; the timer is
                         the watchdog */
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
    struct node *node;      /* (cluster) its node; NULL in single mode */
    redisAsyncContext *raw_ac; /* (sub) ac once past the handshake: read and written raw
                               (sub_fast_read, raw_drain, sub_append), never through
                               hiredis' callbacks */
    int raw_reading;        /* (sub) raw_drain is taking replies from ac's reader */
    char errline[128];      /* (single-mode sub) the error reply that ended ac (reply_refused) */
    struct sreq *sq_head, *sq_tail; /* (sub) (S)(UN)SUBSCRIBE awaiting replies (single mode:
                               to tell which SUBSCRIBE an error reply refuses, sub_refused) */
    int dormant;            /* (cluster sub) not started: no channel needs it */
    char *fbuf;             /* (sub) the fast reader's buffer, FAST_CAP bytes */
    size_t flen;            /* bytes of a message not yet complete at its start (of c->ac:
                               0 whenever a context is made) */
    size_t skip;            /* bytes still to skip of a message over max_reply (of c->ac,
                               as flen) */
    size_t pass;            /* bytes still to hand hiredis of a reply it has the start of
                               (sub_fast_read; of c->ac, as flen) */
    const char *refused;    /* why a reply of c->ac was refused (reply_refused), or NULL */
    int timed_out;          /* conn_live_cb is dropping it: no reply within timeout_ms */
    uv_timer_t live;        /* while READY: the reply timeout and the idle PING (conn_live_cb) */
    uint64_t live_due;      /* uv_now when `live` is due */
    uint64_t up_ms;         /* uv_now when it last became READY */
    uint64_t rx_ms;         /* uv_now of its last readiness to read (ev_read) */
    uint64_t req_ms;        /* uv_now since when it owes replies (conn_sending) */
    uint64_t reads;         /* readiness events to read (ev_read) */
    uint64_t ping_reads;    /* `reads` when its last idle PING was sent */
    int ping_out;           /* an idle PING was sent since it became READY (see conn_owed) */
    size_t acks;            /* (single-mode sub) (UN)SUBSCRIBE replies owed: sum of its
                               channels' inflight */
    size_t rbytes;          /* charge of the top-level reply being read (reply_charge) */
    struct gai *gai;        /* its host name's resolution under way (conn_connect), or NULL */
    const redisAsyncContext *big_ac; /* the context whose oldest awaited reply went over
                               max_reply: its command's callback gets `toobig` (cmd_why) */
    char toobig[96];        /* "reply too large (redis_max_reply_bytes N)" */
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
    char *fmt;            /* (cluster) the command in RESP, kept for redirections */
    size_t fmtlen;        /* (cluster) its length */
    int slot;             /* (cluster) sh_redis_command_slot's answer */
    int hops;             /* (cluster) MOVED/ASK redirections followed */
    int asking;           /* (cluster) send ASKING first (an ASK redirection) */
    struct sh_redis_cmd *next; /* (cluster) on the parked list */
};

struct sh_redis_bus {
    uv_loop_t *loop;                 /* the loop everything runs on */
    sh_redis_addr addr;              /* where Redis is */
    char desc[300];                  /* addr for logs, without credentials */
    char *name;                      /* client name prefix */
    uint64_t backoff_min_ms;         /* first retry delay */
    uint64_t backoff_max_ms;         /* retry delay cap */
    uint64_t connect_timeout_ms;     /* watchdog for connect + handshake */
    uint64_t timeout_ms;             /* a ready connection owing replies, silent this long, is dropped */
    void (*on_state)(void *, int);   /* availability callback, may be NULL */
    void (*on_state_line)(void *, int, uint64_t); /* the owner's state line, may be NULL */
    void *state_arg;                 /* passed to on_state and on_state_line */
    size_t read_budget;              /* bytes per readiness event, see the opts */
    size_t max_reply;                /* a reply charged more is not read, see the opts */
    struct conn cmd;                 /* command connection */
    struct conn *subs;               /* subscriber connections, nsubs of them */
    unsigned nsubs;                  /* K */
    uint64_t sub_drops;              /* ready subscriber connections lost */
    uint64_t messages;               /* pub/sub messages received */
    uint64_t messages_dropped;       /* reported by consumers */
    uint64_t messages_too_large;     /* message pushes over max_reply, skipped */
    struct ratelimit big_rl;         /* for their lines (message_too_large) */
    uint64_t server_unsubs;          /* wanted channels the server unsubscribed (sub_ack) */
    struct ratelimit unsub_rl;       /* for their lines */
    struct ratelimit refuse_rl;      /* for the lines of SUBSCRIBEs refused (sub_refused) */
    uint64_t state_line_ms;          /* uv_now of the last state line, 0: none yet */
    uint64_t state_changes;          /* availability changes since that line */
    uv_timer_t state_timer;          /* logs the changes held back, a second after that line */
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
    struct cluster *cl;              /* cluster mode state; NULL: a single Redis */
};

/* Forward declarations (contracts at the definitions). */
static void conn_connect(struct conn *c);
static void conn_timer_cb(uv_timer_t *t);
static void conn_lost(struct conn *c, const char *why);
static void conn_ready(struct conn *c);
static void conn_sending(struct conn *c);
static void bus_update(sh_redis_bus *b);
static void chan_settle(sh_redis_bus *b, struct chan *ch);
static void chan_ack(sh_redis_bus *b, struct chan *ch);
static void raw_read(struct conn *c, redisAsyncContext *ac);
static void raw_take_over(struct conn *c, redisAsyncContext *ac);
/* Handle each reply the reader of c's raw context ac holds whole (sub_reply, or for a
 * cluster subscriber connection csub_reply); a protocol error disconnects. */
static void raw_drain(struct conn *c, redisAsyncContext *ac);
static void chan_deliver(sh_redis_bus *b, struct chan *ch, const char *payload, size_t len);
static int sub_conn_writable(const struct conn *c);
static size_t conn_channels(const sh_redis_bus *b, const struct conn *c);
static void busy_enter(sh_redis_bus *b);
static void busy_leave(sh_redis_bus *b);
static void reply_free(void *p);
static void reply_too_large(struct conn *c, const redisAsyncContext *ac);
static int reply_over(const struct conn *c, const redisAsyncContext *ac);
/* the cluster layer (end of file) */
static int cluster_new(sh_redis_bus *b, const char *seeds);
static void cluster_start(sh_redis_bus *b);
static int cluster_up(const sh_redis_bus *b);
static void cluster_up_now(sh_redis_bus *b);
static struct conn *cluster_home(const sh_redis_bus *b, const char *name, size_t len);
static int cluster_home_usable(const sh_redis_bus *b, const char *name, size_t len);
static int cluster_chan_start(sh_redis_bus *b, struct chan *ch);
static int csub_send(struct conn *c, struct chan *ch, int unsub, int resub);
static void csub_resubscribe(struct conn *c, redisAsyncContext *ac);
static void csub_reply(struct conn *c, const redisReply *reply);
static void cluster_conn_lost(struct conn *c);
static void cluster_conn_ready(struct conn *c);
static int cluster_keep_retrying(struct conn *c);
static int cluster_command(sh_redis_bus *b, int argc, const char **argv, const size_t *argvlen,
                           sh_redis_reply_cb cb, void *arg, sh_redis_cmd **out);
static void cluster_stats(const sh_redis_bus *b, sh_redis_stats *out);
static void cluster_close_turn(sh_redis_bus *b, int turn);
static void cluster_free(sh_redis_bus *b);
static const sh_redis_addr *node_addr(const struct node *n);

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
    case SH_REDIS_ECROSSSLOT: return "CROSSSLOT Keys in request don't hash to the same slot";
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

/* The channel name[0..len) of the registry, or NULL (hashed by name_hash). */
static struct chan *chan_find(sh_redis_bus *b, const char *name, size_t len)
{
    struct chan *ch;
    HASH_FIND(hh, b->chans, name, len, ch);
    return ch;
}

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

/* "$<v>\r\n" at p; returns the end. */
static char *put_len(char *p, size_t v)
{
    *p++ = '$';
    p += sh_fmt_u64(p, v);
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Append the command `cmd name` (cmd: a C string, e.g. "SUBSCRIBE"; name binary, len
 * bytes) in RESP to the output of c's raw context and have it written (at the next
 * loop iteration when c is ready: ev_add_write). Formatted here, not by hiredis' argv
 * formatter (sds growth per argument). 0, or -1 when c has no raw context or that
 * context is going away (nothing appended) or out of memory. */
static int sub_append(struct conn *c, const char *cmd, const char *name, size_t len)
{
    redisAsyncContext *ac = c->ac;
    size_t clen = strlen(cmd), cap = 4 + clen + len + 2 * 26;
    char stack[256], *buf = cap <= sizeof stack ? stack : malloc(cap), *p = buf;
    int rc = -1;
    if (!buf) return -1;
    if (ac && c->raw_ac == ac && !(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))) {
        memcpy(p, "*2\r\n", 4);
        p = put_len(p + 4, clen);
        memcpy(p, cmd, clen);
        p += clen;
        *p++ = '\r';
        *p++ = '\n';
        p = put_len(p, len);
        memcpy(p, name, len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
        rc = redisAppendFormattedCommand(&ac->c, buf, (size_t)(p - buf)) == REDIS_OK ? 0 : -1;
        if (rc == 0 && ac->ev.addWrite) ac->ev.addWrite(ac->ev.data);
    }
    if (buf != stack) free(buf);
    return rc;
}

/* A request for ch, not queued yet; NULL when out of memory. */
static struct sreq *sq_new(const struct chan *ch, int unsub, int resub)
{
    struct sreq *q = malloc(sizeof *q + ch->len);
    if (!q) return NULL;
    q->next = NULL;
    q->ch = (struct chan *)ch;
    q->unsub = unsub;
    q->resub = resub;
    q->len = ch->len;
    memcpy(q->name, ch->name, ch->len);
    return q;
}

/* Queue q on c, its reply awaited after those of the requests before it. */
static void sq_append(struct conn *c, struct sreq *q)
{
    if (c->sq_tail) c->sq_tail->next = q; else c->sq_head = q;
    c->sq_tail = q;
}

/* The oldest request awaiting its reply on c (detached), or NULL. */
static struct sreq *sq_pop(struct conn *c)
{
    struct sreq *q = c->sq_head;
    if (!q) return NULL;
    c->sq_head = q->next;
    if (!c->sq_head) c->sq_tail = NULL;
    return q;
}

/* Forget every request awaiting its reply on c (its context is gone). */
static void sq_clear(struct conn *c)
{
    while (c->sq_head) free(sq_pop(c));
}

/* (Single mode) append `SUBSCRIBE ch` (unsub 0) or `UNSUBSCRIBE ch` to c's output and
 * queue its request. 0 or -1 (nothing sent). */
static int ssub_send(struct conn *c, const struct chan *ch, int unsub)
{
    struct sreq *q = sq_new(ch, unsub, 0);
    if (!q || sub_append(c, unsub ? "UNSUBSCRIBE" : "SUBSCRIBE", ch->name, ch->len) < 0) {
        free(q);
        return -1;
    }
    sq_append(c, q);
    return 0;
}

/* Send SUBSCRIBE for ch. 0 or SH_REDIS_EUNAVAILABLE (nothing sent). */
static int chan_send_subscribe(sh_redis_bus *b, struct chan *ch)
{
    if (!sub_conn_writable(ch->conn)) return SH_REDIS_EUNAVAILABLE;
    conn_sending(ch->conn);
    if (b->cl ? csub_send(ch->conn, ch, 0, 0) < 0 : ssub_send(ch->conn, ch, 0) < 0)
        return SH_REDIS_EUNAVAILABLE;
    ch->inflight++;
    if (!b->cl) ch->conn->acks++;
    ch->sent = 1;
    ch->confirmed = 0;
    return 0;
}

/* The last live sub left ch: tell Redis, if Redis knows of it. */
static void chan_send_unsubscribe(sh_redis_bus *b, struct chan *ch)
{
    int was_sent = ch->sent;
    ch->confirmed = 0;
    ch->sent = 0;
    if (!was_sent || b->closing || !sub_conn_writable(ch->conn)) return;
    conn_sending(ch->conn);
    if (b->cl ? csub_send(ch->conn, ch, 1, 0) == 0 : ssub_send(ch->conn, ch, 1) == 0) {
        ch->inflight++;
        if (!b->cl) ch->conn->acks++;
    }
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
    if (ch->inflight) {
        ch->inflight--;
        if (!b->cl && ch->conn->acks) ch->conn->acks--;
    }
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

/* Move ch's pending subs to the failing list at *tail (they die: the bus
 * releases them). Returns the list's new tail. */
static sh_redis_sub **chan_take_pending(struct chan *ch, sh_redis_sub **tail)
{
    for (sh_redis_sub *s = ch->head; s; s = s->next) {
        if (s->dead || !s->pending) continue;
        s->pending = 0;
        s->dead = 1;
        ch->live--;
        s->fail_next = NULL;
        *tail = s;
        tail = &s->fail_next;
    }
    return tail;
}

/* Report err to each failing sub of the list (inside a busy section). */
static void subs_fail(sh_redis_sub *fail, int err)
{
    for (sh_redis_sub *s = fail; s; s = s->fail_next) {
        sh_redis_confirm_cb cb = s->on_confirm;
        s->on_confirm = NULL;
        s->on_msg = NULL;
        if (cb) cb(s->arg, err);
    }
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
        tail = chan_take_pending(ch, tail);
        chan_mark_dirty(b, ch);
    }
    subs_fail(fail, err);
    busy_leave(b);
}

/* ---- connections -------------------------------------------------------- */

/* "command" or "subscriber <i>", for logs; buf holds it. */
static const char *role_name(const struct conn *c, char buf[32])
{
    if (c->node) { /* cluster: name the node */
        snprintf(buf, 32, "%s %.14s:%hu", c->role == ROLE_CMD ? "command" : "subscriber",
                 node_addr(c->node)->host, (unsigned short)node_addr(c->node)->port);
        return buf;
    }
    if (c->role == ROLE_CMD) return "command";
    snprintf(buf, 32, "subscriber %u", c->index);
    return buf;
}

/* The reason hiredis gives for ac's failure. */
static const char *ac_reason(const redisAsyncContext *ac)
{
    const struct conn *c = ac->data;
    if (c && c->ac == ac && c->refused) return c->refused; /* hiredis says "Out of memory" */
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

/* Log the bus's state (b->up) now: its own line (unless own is 0: the first
 * attempt's failure, which the connections logged) and the owner's
 * (on_state_line), with the number of changes since the last line. */
static void state_line(sh_redis_bus *b, int own)
{
    uint64_t n = b->state_changes, now = uv_now(b->loop);
    char held[64] = "";
    b->state_line_ms = now ? now : 1;
    b->state_changes = 0;
    if (n > 1)
        snprintf(held, sizeof held, " (%llu up/down changes since the last line)",
                 (unsigned long long)n);
    if (own && b->up)
        sh_info(NULL, "redis: bus up (%s, %u channels)%s", b->desc, HASH_COUNT(b->chans), held);
    else if (own && b->cl)
        sh_warn(NULL, "redis: bus down (%s): a master or the slot map is not ready; commands "
                "and new subscriptions on its slots are refused until it is back%s", b->desc, held);
    else if (own && b->cmd.state == CONN_READY)
        sh_warn(NULL, "redis: bus down (%s): %u of %u subscriber connections ready; new "
                "subscriptions on the others are refused until they are back%s", b->desc,
                subs_ready(b), b->nsubs, held);
    else if (own)
        sh_warn(NULL, "redis: bus down (%s); commands and new subscriptions are refused "
                "until it is back%s", b->desc, held);
    if (b->on_state_line) {
        busy_enter(b);
        b->on_state_line(b->state_arg, b->up, n);
        busy_leave(b);
    }
}

/* The state timer: a second has passed since the last state line; log the
 * changes held back meanwhile. */
static void state_timer_cb(uv_timer_t *t)
{
    sh_redis_bus *b = t->data;
    if (!b->closing && b->state_changes) state_line(b, 1);
}

/* Availability changed (b->up), or the first attempt failed (own 0). A
 * flapping connection would log two lines per cycle: the state lines are
 * limited to one a second, and what a second held back is logged at its end
 * (the state of that moment and the number of changes). */
static void state_change(sh_redis_bus *b, int own)
{
    uint64_t now = uv_now(b->loop);
    b->state_changes++;
    if (b->state_line_ms && now - b->state_line_ms < 1000) {
        if (!uv_is_active((uv_handle_t *)&b->state_timer))
            uv_timer_start(&b->state_timer, state_timer_cb, b->state_line_ms + 1000 - now, 0);
        return;
    }
    state_line(b, own);
}

/* Recompute availability; report a change through on_state (and the state
 * lines, at most one a second: state_change). */
static void bus_update(sh_redis_bus *b)
{
    int up = !b->closing && (b->cl ? cluster_up(b)
                                   : b->cmd.state == CONN_READY && subs_ready(b) == b->nsubs);
    if (up == b->up) return;
    b->up = up;
    if (up && b->cl) cluster_up_now(b);
    if (up) {
        if (b->ever_up) b->reconnects++;
        b->ever_up = 1;
    }
    if (!b->closing) state_change(b, 1);
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
    if (c->node && !cluster_keep_retrying(c)) return;
    uv_timer_start(&c->timer, conn_timer_cb, c->backoff_ms, 0);
    if (!b->ever_up && !b->first_down_reported) {
        /* the first attempt failed: say so once, so the owner knows where it stands */
        b->first_down_reported = 1;
        state_change(b, 0);
        if (b->on_state) {
            busy_enter(b);
            b->on_state(b->state_arg, 0);
            busy_leave(b);
        }
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

/* ---- liveness ------------------------------------------------------------ */

/* 1 when the server owes c replies: hiredis awaits some (commands, a PING
 * outside subscribed mode), or (a subscriber connection) (UN)SUBSCRIBE
 * replies, or nothing arrived since its PING in subscribed mode (hiredis 0.14
 * does not hand that answer back: any byte read after it counts). */
static int conn_owed(const struct conn *c)
{
    if (c->ac && c->ac->replies.head) return 1;
    if (c->role == ROLE_CMD) return 0;
    if (c->acks || c->sq_head) return 1;
    return c->ping_out && c->reads == c->ping_reads;
}

/* c is about to send a request that owes a reply: the wait starts now, unless
 * replies are owed already (then it started with the first of them). */
static void conn_sending(struct conn *c)
{
    if (!conn_owed(c)) c->req_ms = uv_now(c->bus->loop);
}

static void conn_live_cb(uv_timer_t *t);

/* Run conn_live_cb in ms. */
static void conn_live_arm(struct conn *c, uint64_t ms)
{
    c->live_due = uv_now(c->bus->loop) + ms;
    uv_timer_start(&c->live, conn_live_cb, ms, 0);
}

/* An idle PING on c: its answer, or any byte, shows the server is alive. */
static void conn_ping(struct conn *c)
{
    redisAsyncContext *ac = c->ac;
    c->req_ms = uv_now(c->bus->loop);
    c->ping_out = 1;
    c->ping_reads = c->reads;
    if (c->role == ROLE_SUB && (c->raw_ac == ac || (ac->c.flags & REDIS_SUBSCRIBED))) {
        /* not through hiredis' callbacks: in subscribed mode hiredis 0.14 would take
         * the next message push for its answer; the answer (["pong", ""]) is ignored
         * as any push of no channel is */
        if (redisAppendCommand(&ac->c, "PING") == REDIS_OK && ac->ev.addWrite)
            ac->ev.addWrite(ac->ev.data);
    } else {
        redisAsyncCommand(ac, NULL, NULL, "PING");
    }
}

/* c's liveness timer while READY. Lazy: reads and sends never touch it; when
 * it fires it finds the next deadline from rx_ms and req_ms. Replies owed and
 * nothing read for timeout_ms: the connection is dropped (a hung server);
 * nothing owed and nothing read for timeout_ms / 2: a PING. */
static void conn_live_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    sh_redis_bus *b = c->bus;
    uint64_t now = uv_now(b->loop), limit = b->timeout_ms, idle = limit / 2 ? limit / 2 : 1;
    redisAsyncContext *ac = c->ac;
    char why[80];
    int avail = 0;
    if (b->closing || !ac || c->state != CONN_READY) return;
    if (now - c->live_due > idle)
        c->rx_ms = now; /* this loop was held up: the silence was ours, not the server's */
    if (!conn_owed(c)) {
        if (now - c->rx_ms < idle) {
            conn_live_arm(c, c->rx_ms + idle - now);
        } else {
            conn_ping(c);
            conn_live_arm(c, idle);
        }
        return;
    }
    uint64_t since = c->rx_ms > c->req_ms ? c->rx_ms : c->req_ms;
    if (now - since < limit) {
        conn_live_arm(c, since + limit - now);
        return;
    }
    if (ioctl(ac->c.fd, FIONREAD, &avail) == 0 && avail > 0) {
        conn_live_arm(c, idle); /* an answer waits to be read: this loop is late */
        return;
    }
    snprintf(why, sizeof why, "no reply within %llu ms (the server is hung or unreachable)",
             (unsigned long long)limit);
    c->timed_out = 1;
    conn_lost(c, why);   /* c->ac is NULL from here on: hiredis' callbacks below see a foreign context */
    redisAsyncFree(ac);  /* pending commands: (NULL, "closed") */
}

/* c's context is gone (hiredis is freeing it, or we freed it): mark the
 * connection idle, schedule a retry, update availability, and for a
 * subscriber connection fail its channels' pending confirmations. */
static void conn_lost(struct conn *c, const char *why)
{
    sh_redis_bus *b = c->bus;
    enum conn_state was = c->state;
    char rn[32];
    uint64_t held, now = uv_now(b->loop);
    int timed_out = c->timed_out;
    c->ac = NULL;
    c->raw_ac = NULL;
    c->state = CONN_IDLE;
    c->hs_left = 0;
    c->resub_left = 0;
    c->acks = 0;
    c->timed_out = 0;
    uv_timer_stop(&c->live);
    if (c->node) cluster_conn_lost(c); else sq_clear(c);
    if (b->closing) return;
    if (was == CONN_READY && now - c->up_ms >= STABLE_MS)
        c->backoff_ms = b->backoff_min_ms; /* else it keeps growing: a flapping connection */
    if (c->role == ROLE_SUB && was == CONN_READY) {
        /* messages on this connection's channels are lost until it is back */
        b->sub_drops++;
        if (ratelimit_ok(&c->rl, uv_now(b->loop), &held))
            sh_warn(NULL, "redis: %s connection to %s lost: %s; messages on its channels (%zu) "
                    "are lost until it is back%s (%llu subscriber connection losses so far%s); "
                    "retrying every %llu..%llu ms", role_name(c, rn), b->desc, why,
                    conn_channels(b, c),
                    b->cmd.state == CONN_READY && !timed_out && why != c->toobig
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
    c->up_ms = c->rx_ms = c->req_ms = uv_now(b->loop);
    c->ping_out = 0;
    conn_live_arm(c, b->timeout_ms / 2 ? b->timeout_ms / 2 : 1);
    if (c->fails) { /* a flapping subscriber connection: only with its loss lines */
        if (c->rl.suppressed == 0)
            sh_info(NULL, "redis: %s connection to %s restored", role_name(c, rn), b->desc);
        else
            sh_debug(NULL, "redis: %s connection to %s restored", role_name(c, rn), b->desc);
    }
    c->fails = 0;
    if (b->cl) cluster_conn_ready(c);
    bus_update(b);
}

/* c's handshake is done: from now on its context is read and written raw (see
 * sub_fast_read). Send one SUBSCRIBE naming every live channel of c (after a
 * reconnect). */
static void sub_resubscribe(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    redisAsyncContext *ac = c->ac;
    size_t n = conn_channels(b, c), i = 1;
    char rn[32];
    struct chan *ch, *tmp;
    c->raw_ac = ac;
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
    struct sreq *reqs = NULL, **rtail = &reqs; /* one per channel: n confirmations are due */
    HASH_ITER(hh, b->chans, ch, tmp) {
        if (ch->conn != c || ch->live == 0) continue;
        argv[i] = ch->name;
        lens[i++] = ch->len;
        if (!(*rtail = sq_new(ch, 0, 1))) break;
        rtail = &(*rtail)->next;
    }
    if (i <= n) { /* out of memory */
        while (reqs) {
            struct sreq *q = reqs;
            reqs = q->next;
            free(q);
        }
        free(argv);
        free(lens);
        sh_error(NULL, "redis: out of memory re-subscribing %zu channels", n);
        return; /* the watchdog will retry the connection */
    }
    c->state = CONN_SUBSCRIBING;
    if (redisAppendCommandArgv(&ac->c, (int)(n + 1), argv, lens) == REDIS_OK) {
        if (ac->ev.addWrite) ac->ev.addWrite(ac->ev.data);
        while (reqs) {
            struct sreq *q = reqs;
            reqs = q->next;
            q->next = NULL;
            sq_append(c, q);
        }
        c->resub_left = n;
        HASH_ITER(hh, b->chans, ch, tmp) {
            if (ch->conn != c || ch->live == 0) continue;
            ch->inflight++;
            c->acks++;
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
    while (reqs) { /* not sent */
        struct sreq *q = reqs;
        reqs = q->next;
        free(q);
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
    if (c->role == ROLE_SUB) raw_take_over(c, ac);
    if (c->role == ROLE_SUB && c->node)
        csub_resubscribe(c, ac);
    else if (c->role == ROLE_SUB)
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
    const sh_redis_addr *a = c->node ? node_addr(c->node) : &b->addr;
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

/* A subscribe (unsub 0) or unsubscribe (1) confirmation of channel name[0..len) on
 * single-mode subscriber connection c (a channel of another connection is not
 * touched). */
static void sub_ack(struct conn *c, int unsub, const char *name, size_t len)
{
    sh_redis_bus *b = c->bus;
    if (b->closing) return;
    const struct sreq *h = c->sq_head;
    if (h && h->unsub == unsub && h->len == len && memcmp(h->name, name, len) == 0)
        free(sq_pop(c)); /* its reply (else one nobody asked for) */
    struct chan *ch = chan_find(b, name, len);
    if (ch && ch->conn == c && unsub && ch->live > 0 && ch->sent && ch->inflight <= 1) {
        /* no UNSUBSCRIBE of ours is owed a reply (nothing is in flight, or only the
         * SUBSCRIBE sent last): the server (or a proxy in front of it) dropped a channel
         * still wanted. Subscribe it again (once in flight already: its confirmation
         * follows), and say so. Before, this was taken for the reply to our SUBSCRIBE
         * (which it then confirmed) or ignored: the channel stayed believed subscribed,
         * its messages lost without a word until the connection was next lost. */
        uint64_t held;
        char rn[32];
        b->server_unsubs++;
        if (ratelimit_ok(&b->unsub_rl, uv_now(b->loop), &held))
            sh_warn(NULL, "redis: %s connection: the server unsubscribed channel \"%.*s\", "
                    "still wanted; subscribing it again (%llu so far%s)", role_name(c, rn),
                    len > 200 ? 200 : (int)len, name, (unsigned long long)b->server_unsubs,
                    held ? ", lines held back" : "");
        if (ch->inflight == 0 && chan_send_subscribe(b, ch) < 0 && c->ac)
            redisAsyncDisconnect(c->ac); /* out of memory: a reconnect re-subscribes it */
        return;
    }
    if (ch && ch->conn == c) chan_ack(b, ch);
    if (!unsub && c->state == CONN_SUBSCRIBING && c->resub_left > 0 && --c->resub_left == 0)
        conn_ready(c);
}

/* (Single mode) 1 when an error reply read now on c is the refusal of the SUBSCRIBE at the
 * head of its requests (sq_head), one that can be refused alone: the channel's, its only
 * request in flight, every live sub of it still waiting for the confirmation (an ACL's
 * NOPERM for a channel it does not allow, a proxy's refusal). The error ends that
 * subscription only (sub_refused). Any other error ends the connection, as hiredis
 * would (reply_refused). */
static int sub_refusal_ours(const struct conn *c)
{
    const struct sreq *h = c->sq_head;
    struct chan *ch = h && !h->unsub && !h->resub ? chan_find(c->bus, h->name, h->len) : NULL;
    if (!ch || ch->conn != c || ch->inflight != 1 || !ch->sent || ch->live == 0) return 0;
    for (const sh_redis_sub *x = ch->head; x; x = x->next)
        if (!x->dead && !x->pending) return 0; /* a confirmed one would lose its channel */
    return 1;
}

/* (Single mode) the SUBSCRIBE at the head of c's requests was refused with the error
 * `reply` (sub_refusal_ours said so): its subs fail (`unavailable`), the connection and
 * every other channel stay. Before, any error reply ended the connection: one policy
 * subscribing to a channel an ACL forbids (NOPERM) cost every channel of the connection
 * its updates until it was back, and again at each such subscribe. */
static void sub_refused(struct conn *c, const redisReply *reply)
{
    sh_redis_bus *b = c->bus;
    struct sreq *q = sq_pop(c);
    struct chan *ch = q ? chan_find(b, q->name, q->len) : NULL;
    sh_redis_sub *fail = NULL;
    uint64_t held;
    char rn[32];
    free(q);
    if (!ch) return;
    if (ratelimit_ok(&b->refuse_rl, uv_now(b->loop), &held))
        sh_warn(NULL, "redis: %s connection: SUBSCRIBE \"%.*s\" refused: %.*s; its "
                "subscriptions fail, the connection is kept%s", role_name(c, rn),
                ch->len > 200 ? 200 : (int)ch->len, ch->name,
                reply->len > 200 ? 200 : (int)reply->len, reply->str,
                held ? " (lines held back)" : "");
    if (ch->inflight) ch->inflight--;
    if (c->acks) c->acks--;
    ch->sent = 0;
    ch->confirmed = 0;
    busy_enter(b);
    chan_take_pending(ch, &fail);
    chan_mark_dirty(b, ch);
    subs_fail(fail, SH_REDIS_EUNAVAILABLE);
    busy_leave(b);
}

/* One reply on a single-mode subscriber connection that its reader made (raw_drain;
 * reply_refused dropped the connection for those hiredis would have refused or
 * aborted on, and for an error): a message push, a (un)subscribe confirmation, or
 * anything else, ignored (a pong, a push of an unknown kind, a status). */
static void sub_reply(struct conn *c, const redisReply *reply)
{
    sh_redis_bus *b = c->bus;
    if (!b->closing && reply->type == REDIS_REPLY_ERROR) { /* reply_refused let it through */
        sub_refused(c, reply);
        return;
    }
    if (b->closing || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    const redisReply *name = reply->element[1];
    if (strcasecmp(kind, "message") == 0) {
        const redisReply *payload = reply->element[2];
        struct chan *ch = chan_find(b, name->str, name->len);
        b->messages++;
        if (ch && payload->type == REDIS_REPLY_STRING)
            chan_deliver(b, ch, payload->str, payload->len);
    } else if (strcasecmp(kind, "subscribe") == 0) {
        sub_ack(c, 0, name->str, name->len);
    } else if (strcasecmp(kind, "unsubscribe") == 0) {
        sub_ack(c, 1, name->str, name->len);
    }
}

/* ---- event loop glue ---------------------------------------------------- */

/* One bulk string at p[*i..n): $<len>\r\n<bytes>\r\n. 1 (*i past it, *s and
 * *len set), 0 when its end is not here yet, -1 when it is not one or cannot fit
 * in the fast reader's buffer. A length hiredis refuses (a leading zero, a sign)
 * is not one: hiredis then reads it and drops the connection. */
static int fast_bulk(const char *p, size_t n, size_t *i, size_t *s, size_t *len)
{
    size_t j = *i, v = 0, digits = 0;
    if (j >= n) return 0;
    if (p[j++] != '$') return -1;
    for (; j < n && p[j] >= '0' && p[j] <= '9'; j++) {
        v = v * 10 + (size_t)(p[j] - '0');
        if (++digits > 5 || v > FAST_CAP) return -1; /* hiredis takes big ones */
    }
    if (j == n) return 0;
    if (digits == 0 || p[j] != '\r' || (digits > 1 && p[*i + 1] == '0')) return -1;
    if (j + 1 == n) return 0;
    if (p[j + 1] != '\n') return -1;
    j += 2;
    if (n - j < v + 2) return 0;
    if (p[j + v] != '\r' || p[j + v + 1] != '\n') return -1;
    *s = j;
    *len = v;
    *i = j + v + 2;
    return 1;
}

/* What a message push with a channel of clen bytes and a payload of plen is charged
 * against max_reply by hiredis' reader (reply_charge): its array and its three
 * strings, each with a NUL. 1 when that is over max. */
static int message_over(size_t max, size_t clen, size_t plen)
{
    size_t fixed = sizeof(redisReply) + 3 * REPLY_SLOT + 8 + clen + 1;
    return fixed > max || plen + 1 > max - fixed;
}

/* The payload of a message push at p[i..n) when it is over max (its channel clen bytes
 * long): -2 once its header "$<len>\r\n" is all here (*pay: where its bytes start,
 * *plen: how many), 0 when the header is not all here yet, -1 when it is not a bulk
 * string's header or the message is not over max (hiredis then reads it, as any big one).
 * A length of 19 digits or more is not one (hiredis refuses it). */
static long fast_over(const char *p, size_t n, size_t i, size_t max, size_t clen,
                      size_t *pay, size_t *plen)
{
    size_t j = i + 1, v = 0;
    if (p[i] != '$' || (j < n && p[j] == '0')) return -1; /* "$0" fits, "$05" is refused */
    for (; j < n && p[j] >= '0' && p[j] <= '9'; j++) {
        v = v * 10 + (size_t)(p[j] - '0');
        if (j - i > 18) return -1;
    }
    if (j == n || (j + 1 == n && p[j] == '\r')) return 0;
    if (j == i + 1 || p[j] != '\r' || p[j + 1] != '\n' || !message_over(max, clen, v)) return -1;
    *pay = j + 2;
    *plen = v;
    return -2;
}

/* The start of a message push: "message" (SUBSCRIBE), or "smessage" (SSUBSCRIBE, what a
 * cluster subscriber connection receives). */
static const char MSG_HEAD[] = "*3\r\n$7\r\nmessage\r\n";
static const char SMSG_HEAD[] = "*3\r\n$8\r\nsmessage\r\n";

/* A pub/sub message push at p[0..n): head (MSG_HEAD or SMSG_HEAD, h bytes), then the
 * channel and the payload as bulk strings. Its length (> 0), 0 when not all of it is here
 * yet, -1 when p starts with anything else (a RESP3 '>' push too: hiredis 0.14 speaks
 * RESP2 only and calls that a protocol error, whatever its size), -2 when it is a message
 * over max whose bytes up to its payload are here (see fast_over). */
static long fast_message(const char *p, size_t n, const char *head, size_t h, size_t max,
                         size_t *chan, size_t *clen, size_t *pay, size_t *plen)
{
    size_t i = h, m = n < h ? n : h;
    if (n == 0) return 0;
    if (memcmp(p, head, m) != 0) return -1;
    if (n < h) return 0;
    int r = fast_bulk(p, n, &i, chan, clen);
    if (r != 1) return r;
    size_t at = i;
    r = fast_bulk(p, n, &i, pay, plen);
    if (r >= 0) return r == 1 ? (long)i : 0;
    return fast_over(p, n, at, max, *clen, pay, plen); /* too big for FAST_CAP: over max? */
}

/* A message push over max_reply (its header ends at p[pay], its payload is plen bytes,
 * its channel name[0..clen)): counted and said (at most one line a second); its payload
 * and CRLF are skipped as they arrive (c->skip), never held. */
static void message_too_large(struct conn *c, const char *name, size_t clen, size_t plen)
{
    sh_redis_bus *b = c->bus;
    uint64_t held;
    char rn[32];
    b->messages_too_large++;
    c->skip = plen + 2;
    if (ratelimit_ok(&b->big_rl, uv_now(b->loop), &held))
        sh_warn(NULL, "redis: pub/sub message on channel \"%.*s\" (%zu bytes) skipped: over "
                "redis_max_reply_bytes (%zu); %s connection kept (%llu skipped so far%s)",
                clen > 200 ? 200 : (int)clen, name, plen, b->max_reply, role_name(c, rn),
                (unsigned long long)b->messages_too_large, held ? ", lines held back" : "");
}

/* A RESP integer as hiredis writes it at p[*i..n), after its type byte: "0", or digits
 * without a leading zero, or "-1" (nil), then CRLF. 1 (*i past it, *v set), 0 when not
 * all here yet, -1 for anything else (hiredis would read some other forms). */
static int resp_int(const char *p, size_t n, size_t *i, long *v)
{
    size_t j = *i + 1, s = j;
    long x = 0;
    if (j < n && p[j] == '-') {
        if (++j < n && p[j] != '1') return -1;
        x = -1;
        s = ++j;
    }
    for (; x >= 0 && j < n && p[j] >= '0' && p[j] <= '9' && j - s < 18; j++)
        x = x * 10 + (p[j] - '0');
    if (j + 2 > n) return j - s < 18 ? 0 : -1;
    if ((j == s && x == 0) || (j - s > 1 && p[s] == '0') || p[j] != '\r' || p[j + 1] != '\n')
        return -1;
    *i = j + 2;
    *v = x;
    return 1;
}

/* The length of the one reply at p[0..n) that the fast reader hands to hiredis whole (a
 * (un)subscribe confirmation, a pong, an error, a message too big for FAST_CAP): > 0
 * once known (it may pass n: a last bulk string not all here yet), 0 when not known yet,
 * -1 when it is not a flat RESP2 reply of at most 16 values in canonical form (hiredis
 * then takes all that follows). Where it answers, hiredis would cut the same reply. */
static long resp_extent(const char *p, size_t n)
{
    size_t i = 0, items = 1;
    long v = 0;
    int r;
    if (n > 0 && p[0] == '*') {
        if ((r = resp_int(p, n, &i, &v)) <= 0) return r;
        if (v <= 0) return (long)i; /* empty or nil */
        if (v > 16) return -1;
        items = (size_t)v;
    }
    for (size_t k = 0; k < items; k++) {
        if (i >= n) return 0;
        if (p[i] == '+' || p[i] == '-' || p[i] == ':') {
            const char *nl = memchr(p + i, '\n', n - i);
            if (!nl) return n - i < FAST_CAP ? 0 : -1;
            if (nl == p + i || nl[-1] != '\r') return -1;
            i = (size_t)(nl - p) + 1;
            continue;
        }
        if (p[i] != '$' || (r = resp_int(p, n, &i, &v)) < 0) return -1;
        if (r == 0) return 0;
        if (v < 0) continue; /* nil */
        if (k + 1 == items) return (long)(i + (size_t)v + 2);
        if (n - i < (size_t)v + 2) return 0;
        i += (size_t)v + 2;
    }
    return (long)i;
}

/* Read what the socket of c's raw context ac has, and handle each reply
 * (raw_drain). A read or protocol error disconnects (hiredis then calls
 * on_disconnect). */
static void raw_read(struct conn *c, redisAsyncContext *ac)
{
    if (redisBufferRead(&ac->c) == REDIS_ERR) {
        redisAsyncDisconnect(ac);
        return;
    }
    raw_drain(c, ac);
}

/* Contract at the forward declaration. */
static void raw_drain(struct conn *c, redisAsyncContext *ac)
{
    void *reply = NULL;
    while (c->raw_ac == ac && c->ac == ac) {
        reply = NULL;
        c->raw_reading = 1;
        int rc = redisGetReplyFromReader(&ac->c, &reply);
        c->raw_reading = 0;
        if (rc == REDIS_ERR) {
            redisAsyncDisconnect(ac);
            return;
        }
        if (!reply) break;
        if (c->node)
            csub_reply(c, reply);
        else
            sub_reply(c, reply);
        reply_free(reply);
    }
}

/* 1 when c's raw context ac is gone or the bus is closing (ac is not to be touched). */
static int raw_gone(const struct conn *c, const redisAsyncContext *ac)
{
    return c->ac != ac || c->raw_ac != ac || c->bus->closing;
}

/* Hand p[0..n) to hiredis' reader and, when `done` (a reply is complete), handle it
 * (raw_drain). 0, or -1 when c's context ac went away or the bus is closing (ac is not
 * to be touched then). */
static int fast_feed(struct conn *c, redisAsyncContext *ac, const char *p, size_t n, int done)
{
    if (n && redisReaderFeed(ac->c.reader, p, n) != REDIS_OK) {
        redisAsyncDisconnect(ac);
        return -1;
    }
    if (done) raw_drain(c, ac);
    return raw_gone(c, ac) ? -1 : 0;
}

/* A (un)subscribe confirmation as Redis writes it at p[0..n): "*3\r\n$9\r\nsubscribe\r\n"
 * or "...$11\r\nunsubscribe\r\n", the channel as fast_bulk takes it, the count as
 * resp_int does. Its length (> 0; *unsub, *chan, *clen set), 0 when not all of it is
 * here yet, -1 for anything else (hiredis' reader then reads it, and sub_reply handles
 * it alike). */
static const char SUB_HEAD[] = "*3\r\n$9\r\nsubscribe\r\n";
static const char UNSUB_HEAD[] = "*3\r\n$11\r\nunsubscribe\r\n";
static long fast_ack(const char *p, size_t n, int *unsub, size_t *chan, size_t *clen)
{
    size_t i, m;
    long v;
    if (n < 6) return memcmp(p, SUB_HEAD, n) == 0 ? 0 : -1; /* both start "*3\r\n$" */
    *unsub = p[5] == '1';
    const char *head = *unsub ? UNSUB_HEAD : SUB_HEAD;
    i = *unsub ? sizeof UNSUB_HEAD - 1 : sizeof SUB_HEAD - 1;
    m = n < i ? n : i;
    if (memcmp(p, head, m) != 0) return -1;
    if (n < i) return 0;
    int r = fast_bulk(p, n, &i, chan, clen);
    if (r != 1) return r;
    if (i >= n) return 0;
    if (p[i] != ':' || (r = resp_int(p, n, &i, &v)) < 0) return -1;
    return r == 0 ? 0 : (long)i;
}

/* A subscriber connection past its handshake (c->raw_ac; a cluster one's pushes are
 * smessage): most of what it reads is message pushes, and hiredis' reader makes three
 * reply objects (four mallocs) of each. So read here: deliver the complete message
 * pushes and (single mode) handle the (un)subscribe confirmations in place (fast_ack),
 * keep a reply not yet complete when it fits FAST_CAP, skip a message over max_reply
 * as it arrives (message_too_large, c->skip), and hand hiredis' reader each other reply
 * (a confirmation not in Redis' own form, a cluster one, a pong, an error, a message
 * too big for FAST_CAP but under the bound) cut to its length (resp_extent; the rest
 * of a long one as it arrives: c->pass), so that the stream is ours again after it;
 * raw_drain handles what the reader makes of it. Only a reply whose length cannot be
 * known (not flat, or a header longer than FAST_CAP) gives the reader all that
 * follows; while the reader holds bytes of such a reply, every read is its (raw_read).
 * Order is kept: a byte goes to the reader only after all before it. */
static void sub_fast_parse(struct conn *c, redisAsyncContext *ac, size_t n);

static void sub_fast_read(struct conn *c, redisAsyncContext *ac)
{
    redisReader *rd = ac->c.reader;
    /* hiredis is amid a reply when it has bytes left or has begun one (its reader
     * leaves rstack[0] set up, type -1, after finding no more bytes) */
    if (c->flen == 0 && c->skip == 0 && c->pass == 0 &&
        (rd->len > rd->pos || rd->ridx > 0 || (rd->ridx == 0 && rd->rstack[0].type >= 0))) {
        raw_read(c, ac);
        return;
    }
    if (!c->fbuf && !(c->fbuf = malloc(FAST_CAP))) {
        raw_read(c, ac);
        return;
    }
    ssize_t got = read(ac->c.fd, c->fbuf + c->flen, FAST_CAP - c->flen);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (got <= 0) { /* EOF or an error: hiredis reads again, sees it and disconnects */
        if (c->flen && redisReaderFeed(rd, c->fbuf, c->flen) != REDIS_OK) {
            redisAsyncDisconnect(ac);
            return;
        }
        c->flen = 0;
        raw_read(c, ac);
        return;
    }
    sub_fast_parse(c, ac, c->flen + (size_t)got);
}

/* sub_fast_read's handling of the n bytes at c->fbuf (c->flen of them held from before). */
static void sub_fast_parse(struct conn *c, redisAsyncContext *ac, size_t n)
{
    sh_redis_bus *b = c->bus;
    const char *head = c->node ? SMSG_HEAD : MSG_HEAD;
    size_t hlen = c->node ? sizeof SMSG_HEAD - 1 : sizeof MSG_HEAD - 1;
    char *p = c->fbuf;
    size_t off = c->skip < n ? c->skip : n; /* flen is 0 then */
    c->flen = 0;
    c->skip -= off;
    if (c->pass) { /* the rest of a reply hiredis has the start of */
        off = c->pass < n ? c->pass : n;
        c->pass -= off;
        if (fast_feed(c, ac, p, off, c->pass == 0) < 0) return;
    }
    while (off < n) {
        size_t chan = 0, clen = 0, pay = 0, plen = 0;
        long m = fast_message(p + off, n - off, head, hlen, b->max_reply, &chan, &clen, &pay,
                              &plen);
        if (m == -2) { /* over the bound: skip its payload, here and in the next reads */
            message_too_large(c, p + off + chan, clen, plen);
            off += pay;
            size_t here = c->skip < n - off ? c->skip : n - off;
            c->skip -= here;
            off += here;
            continue;
        }
        if (m < 0 && !c->node) { /* a (un)subscribe confirmation: ours too */
            int unsub = 0;
            m = fast_ack(p + off, n - off, &unsub, &chan, &clen);
            if (m > 0) {
                off += (size_t)m;
                sub_ack(c, unsub, p + off - (size_t)m + chan, clen);
                if (raw_gone(c, ac)) return;
                continue;
            }
        }
        if (m < 0 && (m = resp_extent(p + off, n - off)) > 0) { /* a reply for hiredis */
            if ((size_t)m > b->max_reply) { /* its header says it is over: refuse it now,
                                               not once max_reply of its bytes are held
                                               (hiredis parses it only when all is here) */
                reply_too_large(c, ac);
                redisAsyncDisconnect(ac);
                return;
            }
            size_t here = (size_t)m < n - off ? (size_t)m : n - off;
            c->pass = (size_t)m - here;
            int r = fast_feed(c, ac, p + off, here, c->pass == 0);
            off += here;
            if (r < 0) return;
            continue;
        }
        if (m == 0 && n - off < FAST_CAP) { /* the start of a reply: keep it for the next read */
            memmove(p, p + off, n - off);
            c->flen = n - off;
            return;
        }
        if (m <= 0) { /* its length unknown: hiredis' from here on */
            fast_feed(c, ac, p + off, n - off, 1);
            return;
        }
        char *name = p + off + chan, *payload = p + off + pay;
        name[clen] = '\0'; /* over the \r that ends each: they are C strings, as hiredis' */
        payload[plen] = '\0';
        off += (size_t)m;
        b->messages++;
        if (!b->closing) {
            struct chan *ch = chan_find(b, name, clen);
            if (ch && (!c->node || ch->conn == c)) chan_deliver(b, ch, payload, plen);
        }
        if (raw_gone(c, ac)) /* a delivery ended it */
            return;
    }
}

/* Readable: hiredis' reading and callbacks, or our own reading of a subscriber
 * connection past its handshake (sub_fast_read). */
static void conn_read(redisAsyncContext *ac)
{
    struct conn *c = ac->data;
    if (c->raw_ac == ac && c->ac == ac) {
        sub_fast_read(c, ac);
        return;
    }
    redisAsyncHandleRead(ac);
    if (c->ac == ac && c->raw_ac == ac && c->flen && !c->bus->closing) /* raw_take_over's */
        sub_fast_parse(c, ac, c->flen);
}

/* c's context ac goes raw at the end of its handshake, inside hiredis' reading (its
 * last handshake reply's callback): what the reader holds past that reply (bytes the
 * server sent ahead of any SUBSCRIBE) moves to the fast reader's buffer, to be read
 * raw as soon as hiredis returns (conn_read); hiredis, finding nothing more, stops.
 * More than FAST_CAP bytes stay: hiredis reads them as replies to no command (then
 * the connection drops: reply_refused). Before, hiredis read them on: a message push
 * then went to the last callback it used, or aborted the process (a cluster one). */
static void raw_take_over(struct conn *c, redisAsyncContext *ac)
{
    redisReader *rd = ac->c.reader;
    size_t left = rd->len > rd->pos ? rd->len - rd->pos : 0;
    if (left == 0 || left > FAST_CAP || (!c->fbuf && !(c->fbuf = malloc(FAST_CAP)))) return;
    memcpy(c->fbuf, rd->buf + rd->pos, left);
    c->flen = left;
    rd->pos = rd->len;
}

/* After a read of c's context ac: when the reply it is amid goes over the bound, drop
 * the connection (its oldest awaited command gets c->toobig) and return 1. */
static int conn_read_over(struct conn *c, redisAsyncContext *ac)
{
    if (c->ac != ac || !reply_over(c, ac)) return 0;
    reply_too_large(c, ac);
    conn_lost(c, c->toobig); /* c->ac is NULL from here on */
    redisAsyncFree(ac);      /* awaited commands: the oldest c->toobig, the others "closed" */
    c->big_ac = NULL;
    return 1;
}

/* Readable: let hiredis read (16 KiB) and process, and again while the socket
 * has bytes waiting, up to the bus's read budget. Stops when the context goes
 * away (the adapter's cleanup clears p->context; p itself lives until its
 * handle's close callback, a later loop iteration). */
static void ev_read(redisLibuvEvents *p)
{
    struct conn *c = p->context->data;
    size_t budget = c->bus->read_budget, done = HIREDIS_READ_SIZE;
    c->rx_ms = uv_now(c->bus->loop); /* liveness: its one cost per readiness event */
    c->reads++;
    conn_read(p->context);
    while (p->context && !conn_read_over(c, p->context) && done < budget &&
           (p->context->c.flags & REDIS_CONNECTED)) {
        int avail = 0;
        if (ioctl(p->context->c.fd, FIONREAD, &avail) < 0 || avail <= 0) break;
        conn_read(p->context);
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
        if (!uv_is_active((uv_handle_t *)&c->timer)) /* else a flush is pending already */
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
    conn_lost(c, ac ? "no answer within the connect timeout"
                    : "the host name was not resolved within the connect timeout");
}

/* s[0..len) names an unsubscribe push for hiredis (strcasecmp on the C string, after
 * a 'p' that makes it a pattern's). */
static int unsub_kind(const char *s, size_t len)
{
    len = strnlen(s, len);
    if (len && tolower((unsigned char)s[0]) == 'p') {
        s++;
        len--;
    }
    return len == 11 && strncasecmp(s, "unsubscribe", 11) == 0;
}

/* hiredis 0.14 asserts, aborting the process, on replies that a hostile or broken
 * server can send when no command awaits one: outside subscribed mode anything but
 * an error, and in subscribed mode an array that is not [bulk kind, bulk name, ...]
 * or an (p)unsubscribe without an integer third element (it reads element[2] past a
 * 2-element array). The reader's privdata is the context; each object of such a reply
 * is looked at as it is made (the reply before it was already dispatched, so the
 * awaited callbacks are the ones it will meet) and, when it is one of those, not
 * made: hiredis takes that as a read error ("Out of memory") and disconnects, and
 * ac_reason says why (c->refused). A single-mode subscriber connection past its
 * handshake is read raw (raw_drain: c->raw_reading), never through hiredis'
 * callbacks, but by the same rules as hiredis' subscribed mode, so that the same
 * bytes end it as before: those shapes, and an error reply (hiredis ended the
 * connection with its text: c->errline). Replies a cluster subscriber connection
 * reads raw are not looked at (csub_reply takes any shape).
 * 1 when the object of `task` (of type `type`; str[0..len) for a string) must not be made. */
static int reply_refused(const redisReadTask *task, int type, const char *str, size_t len,
                         int elements)
{
    const redisAsyncContext *ac = task->privdata;
    struct conn *c = ac ? ac->data : NULL;
    if (!c || c->ac != ac) return 0;
    int raw = c->raw_reading; /* raw_drain's: a single-mode subscriber connection's */
    if (raw ? c->node != NULL : ac->replies.head || (ac->c.flags & REDIS_MONITORING))
        return 0;
    const redisReadTask *parent = task->parent;
    const char *why = NULL;
    if (!raw) {
        if (!parent && type != REDIS_REPLY_ERROR) why = "protocol error: a reply to no command";
    } else if (!parent) {
        if (type == REDIS_REPLY_ARRAY && elements < 2)
            why = "protocol error: a push of fewer than 2 elements";
        if (type == REDIS_REPLY_ERROR && !sub_refusal_ours(c)) { /* hiredis ends the
                                                                   connection with its text */
            snprintf(c->errline, sizeof c->errline, "%.*s", len > 120 ? 120 : (int)len, str);
            why = c->errline;
        }
    } else if (!parent->parent && task->idx < 2) {
        const redisReply *top = parent->obj;
        if (type != REDIS_REPLY_STRING)
            why = "protocol error: a push whose kind or channel is not a bulk string";
        else if (task->idx == 0 && top->elements < 3 && unsub_kind(str, len))
            why = "protocol error: an unsubscribe push without its count";
    } else if (!parent->parent && task->idx == 2) {
        const redisReply *kind = ((const redisReply *)parent->obj)->element[0];
        if (type != REDIS_REPLY_INTEGER && kind && kind->type == REDIS_REPLY_STRING &&
            unsub_kind(kind->str, kind->len))
            why = "protocol error: an unsubscribe push whose count is not an integer";
    }
    if (why) c->refused = why;
    return why != NULL;
}

/* Bounded replies (max_reply). hiredis 0.14's reader has no bound (its `maxbuf` is
 * only when to shrink an empty buffer; `maxelements` came with 1.0): a 500 MB string or
 * a 10-million-element LRANGE would be held whole before anyone could refuse it. So a
 * top-level reply is charged as it is read: REPLY_SLOT per value (an array pays for all
 * of its elements when its header arrives, before they exist), plus the bytes of each
 * string; and, between reads, the bytes hiredis holds of it not parsed yet, or the whole
 * length a bulk string's header announces (reply_over). Over max_reply the reply is not
 * read on: the connection is dropped (a reader cannot stop amid a reply and go on), its
 * oldest awaited command gets c->toobig, and it reconnects as after any loss. A message
 * push a subscriber connection reads itself (sub_fast_read: single and cluster mode) is
 * charged the same from its header (message_over) and, over the bound, skipped without
 * dropping anything (message_too_large); one that reaches hiredis' reader (after a reply
 * whose length resp_extent cannot tell) still drops its connection. */

/* Say that ac's reply in progress is over the bound (c->toobig, c->refused). */
static void reply_too_large(struct conn *c, const redisAsyncContext *ac)
{
    snprintf(c->toobig, sizeof c->toobig, "%s too large (redis_max_reply_bytes %zu)",
             c->role == ROLE_SUB && c->state == CONN_READY ? "pub/sub message" : "reply",
             c->bus->max_reply);
    c->refused = c->toobig;
    c->big_ac = ac;
}

/* Charge `cost` bytes to the reply `task` belongs to (a top-level task starts a new one,
 * charged its own object). 1 when that takes it over the bound (then the object must not
 * be made: hiredis drops the connection, see reply_refused). */
static int reply_charge(const redisReadTask *task, size_t cost)
{
    const redisAsyncContext *ac = task->privdata;
    struct conn *c = ac ? ac->data : NULL;
    if (!c || c->ac != ac) return 0;
    if (!task->parent) c->rbytes = sizeof(redisReply);
    if (cost > c->bus->max_reply - c->rbytes) { /* rbytes ≤ max_reply, always */
        reply_too_large(c, ac);
        return 1;
    }
    c->rbytes += cost;
    return 0;
}

/* Between reads: 1 when the reply ac's reader is amid is known to go over the bound,
 * by the bytes it holds of it or by the length its bulk string announces. */
static int reply_over(const struct conn *c, const redisAsyncContext *ac)
{
    const redisReader *rd = ac->c.reader;
    size_t max = c->bus->max_reply, have = rd->ridx > 0 ? c->rbytes : sizeof(redisReply);
    size_t held = rd->len > rd->pos ? rd->len - rd->pos : 0;
    if (held > max - have) return 1;
    if (rd->ridx < 0 || rd->rstack[rd->ridx].type != REDIS_REPLY_STRING) return 0;
    /* a bulk string: its header "<len>\r\n" (the '$' read) starts at pos */
    size_t len = 0, i = 0;
    for (; i < held && i < 19 && rd->buf[rd->pos + i] >= '0' && rd->buf[rd->pos + i] <= '9'; i++)
        len = len * 10 + (size_t)(rd->buf[rd->pos + i] - '0');
    if (i == 0 || i == held || rd->buf[rd->pos + i] != '\r') return 0; /* nil, or not all here */
    return len >= max - have;                                           /* + its NUL */
}

/* Reply objects for our readers: malloc (glibc's per-thread cache) rather
 * than hiredis' calloc, and a string with its bytes in one block. Every
 * reply of these readers is freed through reply_free (hiredis calls
 * reader->fn->freeObject; raw_drain calls it too). */
static void *reply_link(const redisReadTask *task, redisReply *r)
{
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        assert(parent->type == REDIS_REPLY_ARRAY);
        parent->element[task->idx] = r;
    }
    return r;
}

static redisReply *reply_new(int type, size_t extra)
{
    redisReply *r = malloc(sizeof *r + extra);
    if (r)
        *r = (redisReply){.type = type};
    return r;
}

static void *reply_string(const redisReadTask *task, char *str, size_t len)
{
    if (reply_refused(task, task->type, str, len, 0) || reply_charge(task, len + 1))
        return NULL;
    redisReply *r = reply_new(task->type, len + 1);
    if (!r)
        return NULL;
    r->str = (char *)(r + 1);
    r->len = len;
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    return reply_link(task, r);
}

static void *reply_array(const redisReadTask *task, int elements)
{
    size_t n = elements > 0 ? (size_t)elements : 0;
    if (reply_refused(task, REDIS_REPLY_ARRAY, NULL, 0, elements) ||
        reply_charge(task, n * REPLY_SLOT))
        return NULL;
    redisReply *r = reply_new(REDIS_REPLY_ARRAY, 0);
    if (!r)
        return NULL;
    /* a huge header (a hostile server) gets calloc's untouched pages, not a memset */
    if (n && !(r->element = n > 1024 ? calloc(n, sizeof *r->element)
                                     : sh_zalloc(n * sizeof *r->element))) {
        free(r);
        return NULL;
    }
    r->elements = n;
    return reply_link(task, r);
}

static void *reply_integer(const redisReadTask *task, long long value)
{
    if (reply_refused(task, REDIS_REPLY_INTEGER, NULL, 0, 0) || reply_charge(task, 0))
        return NULL;
    redisReply *r = reply_new(REDIS_REPLY_INTEGER, 0);
    if (!r)
        return NULL;
    r->integer = value;
    return reply_link(task, r);
}

static void *reply_nil(const redisReadTask *task)
{
    if (reply_refused(task, REDIS_REPLY_NIL, NULL, 0, 0) || reply_charge(task, 0))
        return NULL;
    redisReply *r = reply_new(REDIS_REPLY_NIL, 0);
    return r ? reply_link(task, r) : NULL;
}

static void reply_free(void *p)
{
    redisReply *r = p;
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->element) {
        for (size_t i = 0; i < r->elements; i++)
            reply_free(r->element[i]);
        free(r->element);
    }
    free(r);
}

static redisReplyObjectFunctions reply_fns = {
    reply_string, reply_array, reply_integer, reply_nil, reply_free,
};

/* A host name's resolution for conn_connect, on libuv's thread pool. hiredis resolves a
 * name itself, with getaddrinfo on the loop's thread: a DNS server slow or unreachable
 * (its timeout is seconds, times its attempts) then froze the whole process, every
 * client, timer and connection, at each connection attempt, and attempts repeat while
 * Redis is unreachable (or a subscriber connection flaps, or a cluster map names hosts). */
struct gai {
    uv_getaddrinfo_t req;
    struct conn *c; /* NULL once the connection let go of it (the bus closing, a node retired) */
};

static void conn_connect_to(struct conn *c, const char *host, int watchdog);

/* The resolution of c's host name is done: connect to its first IPv4 address (else its
 * first IPv6 one), as hiredis 0.14 would have; unless the attempt it was for is over (the
 * watchdog gave up on it: the next one resolves again). */
static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct gai *g = (struct gai *)req;
    struct conn *c = g->c;
    const struct addrinfo *pick = NULL;
    char ip[INET6_ADDRSTRLEN] = "", why[160];
    for (int fam = 0; fam < 2 && !pick; fam++)
        for (const struct addrinfo *r = status == 0 ? res : NULL; r && !pick; r = r->ai_next)
            if (r->ai_family == (fam ? AF_INET6 : AF_INET)) pick = r;
    if (pick && pick->ai_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)pick->ai_addr, ip, sizeof ip);
    else if (pick)
        uv_ip6_name((const struct sockaddr_in6 *)pick->ai_addr, ip, sizeof ip);
    uv_freeaddrinfo(res);
    free(g);
    if (!c) return;
    c->gai = NULL;
    if (c->bus->closing || c->state != CONN_CONNECTING || c->ac) return;
    if (!ip[0]) {
        snprintf(why, sizeof why, "cannot resolve the host name: %s",
                 status ? uv_strerror(status) : "no IPv4 or IPv6 address");
        uv_timer_stop(&c->timer);
        conn_lost(c, why);
        return;
    }
    conn_connect_to(c, ip, 0);
}

/* Let go of c's resolution under way, if any (its result is then dropped). */
static void conn_gai_detach(struct conn *c)
{
    if (!c->gai) return;
    c->gai->c = NULL;
    uv_cancel((uv_req_t *)&c->gai->req); /* its callback runs anyway, and frees it */
    c->gai = NULL;
}

/* Start one connection attempt. A host name is resolved first, off the loop's thread
 * (gai_cb), within the attempt's connect timeout; an address or a unix socket is
 * connected to at once (conn_connect_to). */
static void conn_connect(struct conn *c)
{
    sh_redis_bus *b = c->bus;
    const sh_redis_addr *a = c->node ? node_addr(c->node) : &b->addr;
    unsigned char addr[sizeof(struct in6_addr)];
    if (a->is_unix || inet_pton(AF_INET, a->host, addr) == 1 ||
        inet_pton(AF_INET6, a->host, addr) == 1) {
        conn_connect_to(c, a->host, 1);
        return;
    }
    c->state = CONN_CONNECTING;
    uv_timer_start(&c->timer, conn_timer_cb, b->connect_timeout_ms, 0);
    if (c->gai) return; /* the last attempt's, still under way: this one takes it over */
    struct gai *g = malloc(sizeof *g);
    const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = g ? uv_getaddrinfo(b->loop, &g->req, gai_cb, a->host, NULL, &hints) : UV_ENOMEM;
    if (rc != 0) {
        char why[160];
        free(g);
        uv_timer_stop(&c->timer);
        snprintf(why, sizeof why, "cannot resolve the host name: %s", uv_strerror(rc));
        conn_lost(c, why);
        return;
    }
    g->c = c;
    c->gai = g;
}

/* Connect c to host (an address, resolved: hiredis' own getaddrinfo then needs no DNS)
 * or to its unix socket. Failures that hiredis reports at once are handled here (retry
 * scheduled); later ones arrive through on_connect. watchdog: start the connect timeout
 * (0: the one started before the resolution goes on). */
static void conn_connect_to(struct conn *c, const char *host, int watchdog)
{
    sh_redis_bus *b = c->bus;
    const sh_redis_addr *a = c->node ? node_addr(c->node) : &b->addr;
    redisAsyncContext *ac = a->is_unix ? redisAsyncConnectUnix(a->path)
                                       : redisAsyncConnect(host, a->port);
    char why[160];
    if (!ac) {
        uv_timer_stop(&c->timer);
        conn_lost(c, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof why, "%s", ac_reason(ac));
        redisAsyncFree(ac);
        uv_timer_stop(&c->timer);
        conn_lost(c, why);
        return;
    }
    ac->c.reader->fn = &reply_fns; /* nothing was read yet */
    ac->c.reader->privdata = ac;   /* for reply_refused */
    if (redisLibuvAttach(ac, b->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        uv_timer_stop(&c->timer);
        conn_lost(c, "cannot attach to the event loop");
        return;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->data = c;
    c->ac = ac;
    c->flen = c->skip = c->pass = 0; /* bytes of the last context (a watchdog may free it mid-message) are not this one's */
    c->raw_ac = NULL; /* read through hiredis' callbacks until its handshake is done (even
                         when it has the address of the last context) */
    c->refused = NULL;
    c->big_ac = NULL;
    c->state = CONN_CONNECTING;
    c->hs_left = 0;
    c->hs_failed = 0;
    redisAsyncSetConnectCallback(ac, on_connect); /* starts watching for writability */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (watchdog) uv_timer_start(&c->timer, conn_timer_cb, b->connect_timeout_ms, 0);
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
    uv_timer_init(b->loop, &c->live);
    c->live.data = c;
    b->handles_open += 2;
}

/* Contract in redis_bus.h. */
int sh_redis_bus_new(uv_loop_t *loop, const sh_redis_opts *o, sh_redis_bus **out)
{
    sh_redis_addr addr;
    char defname[64];
    int cluster = o && o->cluster && o->cluster[0];
    if (!loop || !o || !out || (!o->url && !cluster)) return SH_REDIS_EINVAL;
    if (cluster ? (unsigned)sh_redis_parse_seeds(o->cluster, &addr, 1) - 1 >=
                      SH_REDIS_CLUSTER_SEEDS_MAX
                : sh_redis_parse_url(o->url, &addr) < 0)
        return SH_REDIS_EBADURL;
    const char *name = o->client_name;
    if (!name) {
        snprintf(defname, sizeof defname, "statushost-%ld", (long)getpid());
        name = defname;
    }
    if (!name[0] || strlen(name) > 200) return SH_REDIS_EINVAL;
    name_hash_seed();
    unsigned nsubs = o->sub_connections ? o->sub_connections : SH_REDIS_SUB_CONNECTIONS_DEFAULT;
    if (nsubs > SH_REDIS_SUB_CONNECTIONS_MAX) return SH_REDIS_EINVAL;
    if (cluster) nsubs = 0; /* subscriber connections are per master */
    for (const char *q = name; *q; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 127) return SH_REDIS_EINVAL;

    sh_redis_bus *b = calloc(1, sizeof *b);
    if (!b) return SH_REDIS_ENOMEM;
    b->name = strdup(name);
    b->subs = nsubs ? calloc(nsubs, sizeof *b->subs) : NULL;
    if (!b->name || (nsubs && !b->subs)) {
        free(b->name);
        free(b->subs);
        free(b);
        return SH_REDIS_ENOMEM;
    }
    if (cluster && cluster_new(b, o->cluster) < 0) {
        free(b->name);
        free(b);
        return SH_REDIS_ENOMEM;
    }
    b->nsubs = nsubs;
    b->read_budget = o->read_budget ? o->read_budget : DEFAULT_READ_BUDGET;
    b->max_reply = o->max_reply_bytes ? o->max_reply_bytes : DEFAULT_MAX_REPLY;
    if (b->max_reply < 4 * REPLY_SLOT) b->max_reply = 4 * REPLY_SLOT;
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
    b->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    b->on_state = o->on_state;
    b->on_state_line = o->on_state_line;
    b->state_arg = o->state_arg;
    conn_init(b, &b->cmd, ROLE_CMD, 0);
    for (unsigned i = 0; i < nsubs; i++) conn_init(b, &b->subs[i], ROLE_SUB, i);
    uv_timer_init(loop, &b->close_timer);
    b->close_timer.data = b;
    uv_timer_init(loop, &b->state_timer);
    b->state_timer.data = b;
    b->handles_open += 2;
    if (cluster) cluster_start(b);

    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);

    /* the first attempts start from the loop: a connect refused at once must
     * not reach on_state from inside this function */
    if (!cluster) uv_timer_start(&b->cmd.timer, conn_timer_cb, 0, 0);
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
size_t sh_redis_bus_longest_chain(const sh_redis_bus *b)
{
    size_t most = 0;
    if (b && b->chans)
        for (unsigned i = 0; i < b->chans->hh.tbl->num_buckets; i++)
            if (b->chans->hh.tbl->buckets[i].count > most)
                most = b->chans->hh.tbl->buckets[i].count;
    return most;
}

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
    out->messages_too_large = b->messages_too_large;
    out->sub_connections = b->nsubs;
    out->sub_ready = subs_ready(b);
    out->cmd_ready = b->cmd.state == CONN_READY;
    if (b->cl) cluster_stats(b, out);
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
    if (!b || (!channel && len) || !b->nsubs) return 0;
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

/* Why a command of c's context ac got no reply: c->toobig for the oldest one when its
 * reply went over the bound, else "closed". */
static const char *cmd_why(struct conn *c, const redisAsyncContext *ac)
{
    if (c->big_ac != ac) return "closed";
    c->big_ac = NULL;
    return c->toobig;
}

/* hiredis callback for a user command. */
static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct sh_redis_cmd *cmd = privdata;
    struct conn *c = ac->data;
    if (!r && c->ac == ac) conn_lost(c, ac_reason(ac));
    const char *why = r ? NULL : cmd_why(c, ac);
    if (cmd->cb) cmd->cb(cmd->arg, r, why);
    free(cmd->fmt);
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
    if (b->cl) return cluster_command(b, argc, argv, argvlen, cb, arg, out);
    if (b->cmd.state != CONN_READY || !b->cmd.ac) return SH_REDIS_EUNAVAILABLE;
    struct sh_redis_cmd *cmd = sh_zalloc(sizeof *cmd);
    if (!cmd) return SH_REDIS_ENOMEM;
    cmd->cb = cb;
    cmd->arg = arg;
    conn_sending(&b->cmd);
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

/* Find or create the channel; home: its subscriber connection in single mode (by
 * chan_hash, which the caller has), NULL in cluster mode. NULL when out of memory. */
static struct chan *chan_get(sh_redis_bus *b, const char *name, size_t len, struct conn *home)
{
    struct chan *ch;
    unsigned hv;
    HASH_VALUE(name, len, hv); /* once for the look-up and the insertion */
    HASH_FIND_BYHASHVALUE(hh, b->chans, name, len, hv, ch);
    if (ch) return ch;
    ch = sh_zalloc(sizeof *ch + len + 1);
    if (!ch) return NULL;
    memcpy(ch->name, name, len);
    ch->len = len;
    ch->conn = home ? home : cluster_home(b, name, len);
    hash_oom = 0;
    HASH_ADD_KEYPTR_BYHASHVALUE(hh, b->chans, ch->name, ch->len, hv, ch);
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
    struct conn *home = b->cl ? NULL : &b->subs[chan_hash(channel, len) % b->nsubs];
    if (b->cl ? !cluster_home_usable(b, channel, len) : home->state != CONN_READY)
        return SH_REDIS_EUNAVAILABLE;
    struct chan *ch = chan_get(b, channel, len, home);
    if (!ch) return SH_REDIS_ENOMEM;
    sh_redis_sub *s = sh_zalloc(sizeof *s);
    if (!s) {
        chan_settle(b, ch);
        return SH_REDIS_ENOMEM;
    }
    if (ch->live == 0) {
        int rc = b->cl ? cluster_chan_start(b, ch) : chan_send_subscribe(b, ch);
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
    for (unsigned i = 0; i < b->nsubs; i++)
        free(b->subs[i].fbuf);
    free(b->subs);
    cluster_free(b);
    free(b);
    if (done) done(arg);
}

/* Free c's context (pending commands are answered "closed" by hiredis). */
static void conn_shutdown(struct conn *c)
{
    redisAsyncContext *ac = c->ac;
    conn_gai_detach(c);
    if (!c->node) sq_clear(c); /* (a cluster one's: cluster_close_turn) */
    uv_timer_stop(&c->timer);
    uv_timer_stop(&c->live);
    c->ac = NULL;
    c->state = CONN_IDLE;
    if (ac) redisAsyncFree(ac);
}

/* Close c's two timers (the close's last turn; each counts in handles_open). */
static void conn_close_timers(struct conn *c)
{
    uv_timer_t *ts[2] = {&c->timer, &c->live};
    for (int i = 0; i < 2; i++) {
        uv_timer_stop(ts[i]);
        ts[i]->data = c->bus;
        uv_close((uv_handle_t *)ts[i], bus_handle_closed);
    }
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
        if (b->cl) cluster_close_turn(b, 0);
        registry_reset(b, NULL, SH_REDIS_ECLOSED);
        registry_orphan_all(b);
        uv_timer_start(&b->close_timer, bus_close_cb, 0, 0);
        return;
    }
    conn_close_timers(&b->cmd);
    for (unsigned i = 0; i < b->nsubs; i++) conn_close_timers(&b->subs[i]);
    if (b->cl) cluster_close_turn(b, 1);
    uv_timer_stop(&b->state_timer);
    uv_close((uv_handle_t *)&b->state_timer, bus_handle_closed);
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

/* ---- cluster: nodes ----------------------------------------------------- */

#define CLUSTER_MAX_HOPS 5           /* MOVED/ASK redirections followed per command */
#define MAP_MIN_INTERVAL_MS 100      /* between two slot map fetches */
#define MAP_DOWN_INTERVAL_MS 500     /* map fetches while a master is not ready */

/* One cluster node: a master of the map, or a seed. Never freed before the
 * bus: a node that leaves the map is retired (connections closed, no retry)
 * and comes back if a later map names it again. */
struct node {
    struct node *next;     /* cl->nodes */
    sh_redis_addr addr;    /* host, port and the cluster's credentials */
    struct conn cmd;       /* its command connection */
    struct conn sub;       /* its subscriber connection, dormant until needed */
    int seed;              /* given in the configuration: kept to fetch maps */
    int in_map;            /* a master of the current map */
    int retired;           /* not in the map and not a seed: connections closed */
    int mark;              /* scratch, while applying a map */
};

/* One SSUBSCRIBE/SUNSUBSCRIBE sent on a cluster subscriber connection,
 * awaiting its reply (Redis answers them in order). */

struct cluster {
    struct node *nodes;           /* seeds first, then masters as maps name them */
    sh_redis_slots *map;          /* the current slot map; NULL before the first */
    struct node **map_nodes;      /* map master i → its node */
    int use_slots;                /* the servers have no CLUSTER SHARDS: use SLOTS */
    int map_inflight;             /* a CLUSTER SHARDS/SLOTS is on its way */
    int map_wanted;               /* fetch a map as soon as allowed */
    int map_down_retry;           /* the pending fetch only retries a bus that was down */
    uint64_t map_last_ms;         /* when the last fetch was sent */
    uint64_t refreshes;           /* maps applied */
    uv_timer_t map_timer;         /* paces map fetches */
    unsigned rr;                  /* round robin for keyless commands and map fetches */
    struct sh_redis_cmd *parked;  /* redirected commands awaiting the next map */
    struct sh_redis_cmd **parked_tail;
    struct ratelimit rl;          /* for refusal / sunsubscribe lines */
    struct node *map_from;        /* the node asked for the map in flight */
};

/* Contract in redis_bus.h. */
int sh_redis_parse_seeds(const char *list, sh_redis_addr *out, size_t max)
{
    size_t n = 0;
    if (!list || !out || max == 0) return SH_REDIS_EBADURL;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == ' ') len--;
        char url[600];
        int rc = strncasecmp(p, "redis://", 8) == 0
                     ? snprintf(url, sizeof url, "%.*s", (int)len, p)
                     : snprintf(url, sizeof url, "redis://%.*s", (int)len, p);
        sh_redis_addr a;
        if (rc < 0 || (size_t)rc >= sizeof url || sh_redis_parse_url(url, &a) < 0 || a.db >= 0)
            return SH_REDIS_EBADURL;
        if (n < max) out[n] = a;
        n++;
        p += len;
        while (*p && *p != ',') p++;
    }
    return n ? (n > INT_MAX ? INT_MAX : (int)n) : SH_REDIS_EBADURL;
}

/* Contract in redis_bus.h. */
int sh_redis_check_seeds(const char *list, char *err, size_t errsz)
{
    sh_redis_addr addr;
    int n = sh_redis_parse_seeds(list, &addr, 1);
    if (n < 0)
        snprintf(err, errsz, "redis_cluster \"%.200s\": expected host:port,host:port,...", list);
    else if (n > SH_REDIS_CLUSTER_SEEDS_MAX)
        snprintf(err, errsz, "redis_cluster: %d seed nodes, at most %d (a few of the cluster's "
                 "nodes are enough: the others are learned from its map)", n,
                 SH_REDIS_CLUSTER_SEEDS_MAX);
    return n < 0 || n > SH_REDIS_CLUSTER_SEEDS_MAX ? -1 : 0;
}

/* Contract at the forward declaration: where n is, with the credentials. */
static const sh_redis_addr *node_addr(const struct node *n) { return &n->addr; }

/* The node at host:port, or NULL. */
static struct node *node_find(const sh_redis_bus *b, const char *host, int port)
{
    for (struct node *n = b->cl->nodes; n; n = n->next)
        if (n->addr.port == port && strcmp(n->addr.host, host) == 0) return n;
    return NULL;
}

/* Allocate a node for host:port with the cluster's credentials (from
 * `auth`), not linked and with no handle yet. NULL when out of memory. */
static struct node *node_alloc(const sh_redis_addr *auth, const char *host, int port)
{
    struct node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->addr = *auth;
    n->addr.is_unix = 0;
    n->addr.db = -1;
    snprintf(n->addr.host, sizeof n->addr.host, "%s", host);
    n->addr.port = port;
    return n;
}

/* Give n its connections (timers) and start its command connection. */
static void node_start(sh_redis_bus *b, struct node *n)
{
    conn_init(b, &n->cmd, ROLE_CMD, 0);
    conn_init(b, &n->sub, ROLE_SUB, 0);
    n->cmd.node = n->sub.node = n;
    n->sub.dormant = 1;
    uv_timer_start(&n->cmd.timer, conn_timer_cb, 0, 0);
}

/* Link a new node for host:port (a master a map names) and start it. A
 * retired node (not a seed, out of every map) is reused first: nodes come and
 * go with new addresses (a pod restarted elsewhere), and the list must not
 * grow with each. */
static struct node *node_add(sh_redis_bus *b, const char *host, int port)
{
    for (struct node *r = b->cl->nodes; r; r = r->next) {
        if (!r->retired || r->seed || r->in_map || r->mark || r->cmd.ac || r->sub.ac) continue;
        snprintf(r->addr.host, sizeof r->addr.host, "%s", host);
        r->addr.port = port;
        r->retired = 0;
        uv_timer_start(&r->cmd.timer, conn_timer_cb, 0, 0);
        return r;
    }
    struct node *n = node_alloc(&b->cl->nodes->addr, host, port), **pp = &b->cl->nodes;
    if (!n) return NULL;
    while (*pp) pp = &(*pp)->next;
    *pp = n;
    node_start(b, n);
    return n;
}

/* Close c's context for good (no retry): the node left the map. */
static void conn_retire(struct conn *c)
{
    redisAsyncContext *ac = c->ac;
    conn_gai_detach(c);
    uv_timer_stop(&c->timer);
    uv_timer_stop(&c->live);
    c->ac = NULL;
    c->state = CONN_IDLE;
    c->fails = 0;
    c->backoff_ms = c->bus->backoff_min_ms;
    if (c->node) cluster_conn_lost(c);
    if (c->role == ROLE_SUB) {
        registry_reset(c->bus, c, SH_REDIS_EUNAVAILABLE);
        c->dormant = 1;
    }
    if (ac) redisAsyncFree(ac); /* deferred by hiredis inside its own callbacks */
}

/* Wake a dormant subscriber connection: connect it (from the loop). */
static void conn_wake(struct conn *c)
{
    if (!c->dormant) return;
    c->dormant = 0;
    c->fails = 0;
    uv_timer_start(&c->timer, conn_timer_cb, 0, 0);
}

/* Contract at the forward declaration: parse the seeds, allocate the
 * cluster and its seed nodes (no handle yet). 0 or -1 (out of memory). */
static int cluster_new(sh_redis_bus *b, const char *seeds)
{
    sh_redis_addr addrs[SH_REDIS_CLUSTER_SEEDS_MAX], auth;
    int n = sh_redis_parse_seeds(seeds, addrs, SH_REDIS_CLUSTER_SEEDS_MAX);
    struct cluster *cl = calloc(1, sizeof *cl);
    if (n < 1 || n > SH_REDIS_CLUSTER_SEEDS_MAX || !cl) {
        free(cl);
        return -1;
    }
    memset(&auth, 0, sizeof auth);
    for (int i = 0; i < n && !auth.password[0]; i++)
        if (addrs[i].password[0]) auth = addrs[i];
    struct node **pp = &cl->nodes;
    for (int i = 0; i < n; i++) {
        int dup = 0;
        for (struct node *o = cl->nodes; o; o = o->next)
            dup |= o->addr.port == addrs[i].port && !strcmp(o->addr.host, addrs[i].host);
        if (dup) continue;
        struct node *nd = node_alloc(&auth, addrs[i].host, addrs[i].port);
        if (!nd) {
            b->cl = cl;
            cluster_free(b);
            return -1;
        }
        nd->seed = 1;
        *pp = nd;
        pp = &nd->next;
    }
    cl->parked_tail = &cl->parked;
    b->cl = cl;
    return 0;
}

/* Start the seeds' command connections and the map timer; name the bus. */
static void cluster_start(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    size_t nseeds = 0;
    for (struct node *n = cl->nodes; n; n = n->next) {
        node_start(b, n);
        nseeds++;
    }
    if (nseeds > 1)
        snprintf(b->desc, sizeof b->desc, "cluster %.256s:%d +%zu seeds", cl->nodes->addr.host,
                 cl->nodes->addr.port, nseeds - 1);
    else
        snprintf(b->desc, sizeof b->desc, "cluster %.256s:%d", cl->nodes->addr.host,
                 cl->nodes->addr.port);
    uv_timer_init(b->loop, &cl->map_timer);
    cl->map_timer.data = b;
    b->handles_open++;
}

/* The subscriber connection of the master serving channel name[0..len),
 * or NULL (no map yet, or the slot has no master). */
static struct conn *cluster_home(const sh_redis_bus *b, const char *name, size_t len)
{
    const struct cluster *cl = b->cl;
    const sh_redis_node *rn = sh_redis_slots_lookup_key(cl->map, name, len);
    if (!rn) return NULL;
    return &cl->map_nodes[rn - sh_redis_slots_node(cl->map, 0)]->sub;
}

/* A new subscription on name may start: its master's subscriber connection
 * is ready, dormant (it will connect), or in its first attempt. */
static int cluster_home_usable(const sh_redis_bus *b, const char *name, size_t len)
{
    const struct conn *c = cluster_home(b, name, len);
    return c && (c->state == CONN_READY || c->dormant || c->fails == 0);
}

/* ch has its first live sub (or needs subscribing again on its
 * connection): SSUBSCRIBE now if the connection takes it, else wake it (its
 * handshake ends by subscribing every live channel). 0, or
 * SH_REDIS_EUNAVAILABLE (the connection is reconnecting). */
static int cluster_chan_start(sh_redis_bus *b, struct chan *ch)
{
    struct conn *c = ch->conn;
    if (!c) return SH_REDIS_EUNAVAILABLE;
    if (sub_conn_writable(c)) return chan_send_subscribe(b, ch);
    if (c->dormant) {
        conn_wake(c);
        return 0;
    }
    return c->fails == 0 ? 0 : SH_REDIS_EUNAVAILABLE; /* 0: in its first attempt */
}

/* 1 when a channel of c has a live confirmed sub (c must restore it). */
static int conn_has_confirmed(const sh_redis_bus *b, const struct conn *c)
{
    for (const struct chan *ch = b->chans; ch; ch = ch->hh.next) {
        if (ch->conn != c) continue;
        for (const sh_redis_sub *s = ch->head; s; s = s->next)
            if (!s->dead && !s->pending) return 1;
    }
    return 0;
}

/* Every master in the map, and its command connection (and subscriber
 * connection once woken) ready. A subscriber connection in its first
 * attempt, woken by new subscriptions only, is not an outage. */
static int cluster_up(const sh_redis_bus *b)
{
    const struct cluster *cl = b->cl;
    if (!cl->map || sh_redis_slots_assigned(cl->map) != SH_REDIS_SLOTS) return 0;
    for (const struct node *n = cl->nodes; n; n = n->next) {
        const struct conn *s = &n->sub;
        if (!n->in_map) continue;
        if (n->cmd.state != CONN_READY) return 0;
        if (!s->dormant && s->state != CONN_READY && (s->fails || conn_has_confirmed(b, s)))
            return 0;
    }
    return 1;
}

/* 1 when c should reconnect after a loss: a command connection of a map
 * master or of a seed, a woken subscriber connection of a map master. */
static int cluster_keep_retrying(struct conn *c)
{
    const struct node *n = c->node;
    if (n->retired) return 0;
    if (c->role == ROLE_SUB && !n->in_map) {
        c->dormant = 1; /* no channel lives there any more */
        return 0;
    }
    return 1;
}

/* Contract in redis_bus.h (sh_redis_bus_stats). */
static void cluster_stats(const sh_redis_bus *b, sh_redis_stats *out)
{
    const struct cluster *cl = b->cl;
    out->cmd_ready = cl->map != NULL;
    for (const struct node *n = cl->nodes; n; n = n->next) {
        if (!n->in_map) continue;
        out->masters++;
        if (n->cmd.state != CONN_READY) out->cmd_ready = 0;
        if (!n->sub.dormant) out->sub_connections++;
        if (n->sub.state == CONN_READY) out->sub_ready++;
    }
    out->map_refreshes = cl->refreshes;
    for (const struct node *n = cl->nodes; n; n = n->next) out->nodes++;
}

/* ---- cluster: the slot map ---------------------------------------------- */

static void map_timer_cb(uv_timer_t *t);

/* Fetch a new map soon (at most one every MAP_MIN_INTERVAL_MS). */
static void cluster_refresh(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    if (b->closing) return;
    cl->map_wanted = 1;
    cl->map_down_retry = 0;
    if (cl->map_inflight || uv_is_active((uv_handle_t *)&cl->map_timer)) return;
    uint64_t now = uv_now(b->loop), next = cl->map_last_ms + MAP_MIN_INTERVAL_MS;
    uv_timer_start(&cl->map_timer, map_timer_cb, cl->map_last_ms && next > now ? next - now : 0,
                   0);
}

/* Fetch again in MAP_DOWN_INTERVAL_MS (a master is not ready: its replica
 * may be promoted meanwhile). */
static void cluster_refresh_later(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    if (b->closing || cl->map_inflight) return;
    cl->map_wanted = 1;
    cl->map_down_retry = 1;
    uv_timer_start(&cl->map_timer, map_timer_cb, MAP_DOWN_INTERVAL_MS, 0);
}

/* The bus came up: a fetch pending only because it was down is not needed
 * (a map fetched later, after a slot moved, would hide that move from the
 * MOVED answers that report it). */
static void cluster_up_now(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    if (!cl->map_down_retry || cl->map_inflight) return;
    cl->map_down_retry = 0;
    cl->map_wanted = 0;
    uv_timer_stop(&cl->map_timer);
}

/* A ready command connection to ask for the map (or to run a keyless
 * command): map masters first, round robin; then seeds. NULL when none. */
static struct node *cluster_any_ready(sh_redis_bus *b, int masters_only)
{
    struct cluster *cl = b->cl;
    size_t count = 0, k = 0;
    for (struct node *n = cl->nodes; n; n = n->next) count++;
    for (int pass = 0; pass < (masters_only ? 1 : 2); pass++) {
        unsigned start = cl->rr++;
        for (size_t i = 0; i < count; i++) {
            size_t want = (start + i) % count;
            k = 0;
            for (struct node *n = cl->nodes; n; n = n->next, k++)
                if (k == want && n->cmd.state == CONN_READY && (pass || n->in_map)) return n;
        }
    }
    return NULL;
}

/* Take host:port out of a MOVED/ASK error ("MOVED 3999 127.0.0.1:6381").
 * 0 (and *ask set) or -1 when the error is not a redirection. */
static int parse_redirect(const char *s, size_t len, int *ask, char *host, size_t hcap, int *port)
{
    char buf[320];
    if (len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (strncmp(buf, "MOVED ", 6) == 0)
        *ask = 0;
    else if (strncmp(buf, "ASK ", 4) == 0)
        *ask = 1;
    else
        return -1;
    char *addr = strchr(buf + (*ask ? 4 : 6), ' ');
    char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || colon == addr + 1) return -1;
    long p = strtol(colon + 1, NULL, 10);
    if (p <= 0 || p > 65535 || (size_t)(colon - addr - 1) >= hcap) return -1;
    memcpy(host, addr + 1, (size_t)(colon - addr - 1));
    host[colon - addr - 1] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [v6] */
        memmove(host, host + 1, strlen(host) - 2);
        host[strlen(host) - 2] = '\0';
    }
    *port = (int)p;
    return 0;
}

/* Move ch to subscriber connection home (its slot changed master): forget
 * what is in flight on the old one (an SUNSUBSCRIBE tells it, if it is
 * reachable), then subscribe on the new one. Its confirmed subs stay live;
 * pending ones wait for the new master. ch may be freed (inside a busy
 * section: swept later). */
static void chan_move(sh_redis_bus *b, struct chan *ch, struct conn *home)
{
    struct conn *old = ch->conn;
    if (old && ch->sent && sub_conn_writable(old)) csub_send(old, ch, 1, 0);
    if (old)
        for (struct sreq *q = old->sq_head; q; q = q->next)
            if (q->ch == ch) q->ch = NULL;
    ch->inflight = 0;
    ch->sent = 0;
    ch->confirmed = 0;
    ch->conn = home;
    if (ch->live > 0) cluster_chan_start(b, ch); /* else: resubscribed once home is ready */
    chan_settle(b, ch);
}

/* Swap in map m (fetched from node `from`): nodes for new masters, channels
 * to their masters' subscriber connections, nodes out of the map retired. */
static void cluster_apply(sh_redis_bus *b, sh_redis_slots *m, const struct node *from)
{
    struct cluster *cl = b->cl;
    size_t nm = sh_redis_slots_nodes(m);
    struct node **mn = calloc(nm ? nm : 1, sizeof *mn);
    if (!mn) {
        sh_redis_slots_free(m);
        sh_error(NULL, "redis: out of memory applying the cluster slot map");
        return;
    }
    for (struct node *n = cl->nodes; n; n = n->next) n->mark = 0;
    for (size_t i = 0; i < nm; i++) {
        const sh_redis_node *rn = sh_redis_slots_node(m, i);
        const char *host = rn->host[0] ? rn->host : from->addr.host;
        struct node *n = node_find(b, host, rn->port);
        if (!n) n = node_add(b, host, rn->port);
        if (!n) {
            free(mn);
            sh_redis_slots_free(m);
            sh_error(NULL, "redis: out of memory applying the cluster slot map");
            return;
        }
        mn[i] = n;
        n->mark = 1;
    }
    sh_redis_slots_free(cl->map);
    free(cl->map_nodes);
    cl->map = m;
    cl->map_nodes = mn;
    cl->refreshes++;
    for (struct node *n = cl->nodes; n; n = n->next) {
        n->in_map = n->mark;
        if (n->in_map && n->retired) { /* named again */
            n->retired = 0;
            uv_timer_start(&n->cmd.timer, conn_timer_cb, 0, 0);
        }
    }
    struct chan *ch, *tmp;
    busy_enter(b);
    HASH_ITER(hh, b->chans, ch, tmp) {
        struct conn *home = cluster_home(b, ch->name, ch->len);
        if (!home) continue; /* no master for its slot: stays, resubscribed later */
        if (home != ch->conn)
            chan_move(b, ch, home);
        else if (ch->live > 0 && !ch->sent && !ch->inflight)
            cluster_chan_start(b, ch);
    }
    busy_leave(b);
    for (struct node *n = cl->nodes; n; n = n->next) {
        if (n->in_map || n->retired) continue;
        if (!n->sub.dormant) conn_retire(&n->sub);
        if (!n->seed) {
            n->retired = 1;
            conn_retire(&n->cmd);
        }
    }
    bus_update(b);
}

static int ccmd_route_send(sh_redis_bus *b, struct sh_redis_cmd *cmd);

/* Re-route the parked commands (after a map fetch, successful or not);
 * those with nowhere to go end with (NULL, "unavailable"). */
static void cluster_unpark(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    struct sh_redis_cmd *list = cl->parked;
    cl->parked = NULL;
    cl->parked_tail = &cl->parked;
    while (list) {
        struct sh_redis_cmd *cmd = list;
        list = cmd->next;
        cmd->next = NULL;
        if (cmd->cb && !b->closing && ccmd_route_send(b, cmd) == 0) continue;
        if (cmd->cb) cmd->cb(cmd->arg, NULL, b->closing ? "closed" : "unavailable");
        free(cmd->fmt);
        free(cmd);
    }
}

/* The reply to CLUSTER SHARDS / CLUSTER SLOTS. */
static void map_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct node *n = privdata;
    struct conn *c = &n->cmd;
    sh_redis_bus *b = c->bus;
    struct cluster *cl = b->cl;
    const redisReply *reply = r;
    uint64_t held;
    cl->map_inflight = 0;
    uv_timer_stop(&cl->map_timer); /* the fetch's timeout */
    if (!reply) {
        if (c->ac == ac) conn_lost(c, ac_reason(ac));
        if (b->closing) return;
        cluster_refresh(b);
        return;
    }
    if (b->closing) return;
    sh_redis_slots *m = NULL;
    if (reply->type == REDIS_REPLY_ERROR && !cl->use_slots &&
        (strstr(reply->str, "nknown subcommand") || strstr(reply->str, "nknown command"))) {
        sh_info(NULL, "redis: %s:%d has no CLUSTER SHARDS; using CLUSTER SLOTS", n->addr.host,
                n->addr.port);
        cl->use_slots = 1;
        cluster_refresh(b);
        return;
    }
    int rc = reply->type == REDIS_REPLY_ERROR ? 0 : sh_redis_slots_from_reply(reply, &m);
    if (reply->type == REDIS_REPLY_ERROR || rc < 0) {
        const char *why = rc == SH_SLOTS_ETOOMANY ? "more than 1000 masters (SH_REDIS_MASTERS_MAX)"
                                                  : "not a slot map reply";
        if (ratelimit_ok(&cl->rl, uv_now(b->loop), &held))
            sh_warn(NULL, "redis: CLUSTER %s on %s:%d: %.*s; retrying", cl->use_slots ? "SLOTS" : "SHARDS",
                    n->addr.host, n->addr.port,
                    reply->type == REDIS_REPLY_ERROR ? (int)reply->len : (int)strlen(why),
                    reply->type == REDIS_REPLY_ERROR ? reply->str : why);
        cluster_unpark(b);
        cluster_refresh_later(b);
        return;
    }
    cluster_apply(b, m, n);
    cluster_unpark(b);
    if (!b->up) cluster_refresh_later(b);
}

/* The map timer: send CLUSTER SHARDS (or SLOTS) to a ready node. */
static void map_timer_cb(uv_timer_t *t)
{
    sh_redis_bus *b = t->data;
    struct cluster *cl = b->cl;
    if (b->closing) return;
    if (cl->map_inflight) { /* no answer in time: a frozen node must not block every fetch */
        struct conn *c = &cl->map_from->cmd;
        redisAsyncContext *ac = c->ac;
        sh_warn(NULL, "redis: %s:%d did not answer CLUSTER %s within %llu ms; asking another node",
                cl->map_from->addr.host, cl->map_from->addr.port, cl->use_slots ? "SLOTS" : "SHARDS",
                (unsigned long long)b->connect_timeout_ms);
        c->ac = NULL; /* its callbacks (map_reply_cb: fetch again) see a foreign context */
        if (ac) redisAsyncFree(ac);
        cl->map_inflight = 0;
        conn_lost(c, "no answer to CLUSTER SHARDS/SLOTS");
        cluster_refresh(b);
        return;
    }
    struct node *n = cluster_any_ready(b, 0);
    if (!n) { /* the next command connection to become ready fetches it */
        cl->map_wanted = 1;
        cluster_unpark(b);
        return;
    }
    const char *argv[2] = {"CLUSTER", cl->use_slots ? "SLOTS" : "SHARDS"};
    conn_sending(&n->cmd);
    if (redisAsyncCommandArgv(n->cmd.ac, map_reply_cb, n, 2, argv, NULL) != REDIS_OK) {
        cluster_refresh_later(b);
        cl->map_down_retry = 0; /* wanted whether the bus is up or not */
        return;
    }
    cl->map_inflight = 1;
    cl->map_wanted = 0;
    cl->map_down_retry = 0;
    cl->map_last_ms = uv_now(b->loop);
    cl->map_from = n;
    uv_timer_start(&cl->map_timer, map_timer_cb, b->connect_timeout_ms, 0);
}

/* A cluster connection became ready: a command connection fetches the map
 * if one is wanted (or none was ever fetched). */
static void cluster_conn_ready(struct conn *c)
{
    struct cluster *cl = c->bus->cl;
    if (c->role == ROLE_CMD && ((cl->map_wanted && !cl->map_down_retry) || !cl->map))
        cluster_refresh(c->bus); /* a down retry waits for its timer or for the bus to be up */
}

/* A cluster connection lost its context: forget its pending SSUBSCRIBE
 * replies, and fetch the map (a master lost may be a failover). */
static void cluster_conn_lost(struct conn *c)
{
    c->raw_ac = NULL;
    sq_clear(c);
    if (!c->bus->closing && c->node->in_map) cluster_refresh(c->bus);
}

/* ---- cluster: commands ---------------------------------------------------- */

static void ccmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata);

/* Send cmd on node n's command connection (ASKING first if asked). 0 or -1. */
static int ccmd_send(struct node *n, struct sh_redis_cmd *cmd)
{
    redisAsyncContext *ac = n->cmd.ac;
    if (n->cmd.state != CONN_READY || !ac) return -1;
    conn_sending(&n->cmd);
    if (cmd->asking && redisAsyncCommand(ac, NULL, NULL, "ASKING") != REDIS_OK) return -1;
    return redisAsyncFormattedCommand(ac, ccmd_reply_cb, cmd, cmd->fmt, cmd->fmtlen) == REDIS_OK
               ? 0 : -1;
}

/* Send cmd to the node its slot maps to (any ready master when keyless).
 * 0, or -1 when that node is not ready. */
static int ccmd_route_send(sh_redis_bus *b, struct sh_redis_cmd *cmd)
{
    struct cluster *cl = b->cl;
    struct node *n = NULL;
    cmd->asking = 0;
    if (cmd->slot == SH_ROUTE_ANY) {
        n = cluster_any_ready(b, 1);
    } else {
        const sh_redis_node *rn = sh_redis_slots_lookup(cl->map, (unsigned)cmd->slot);
        if (rn) n = cl->map_nodes[rn - sh_redis_slots_node(cl->map, 0)];
    }
    return n ? ccmd_send(n, cmd) : -1;
}

/* Contract at the forward declaration: sh_redis_command in cluster mode. */
static int cluster_command(sh_redis_bus *b, int argc, const char **argv, const size_t *argvlen,
                           sh_redis_reply_cb cb, void *arg, sh_redis_cmd **out)
{
    int slot = sh_redis_command_slot(argc, argv, argvlen);
    if (slot == SH_ROUTE_CROSSSLOT) return SH_REDIS_ECROSSSLOT;
    struct sh_redis_cmd *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return SH_REDIS_ENOMEM;
    long long len = redisFormatCommandArgv(&cmd->fmt, argc, argv, argvlen);
    if (len < 0 || !cmd->fmt) {
        free(cmd);
        return SH_REDIS_ENOMEM;
    }
    cmd->fmtlen = (size_t)len;
    cmd->slot = slot;
    cmd->cb = cb;
    cmd->arg = arg;
    if (ccmd_route_send(b, cmd) < 0) {
        free(cmd->fmt);
        free(cmd);
        return SH_REDIS_EUNAVAILABLE;
    }
    if (out) *out = cmd;
    return 0;
}

/* The reply to a user command in cluster mode: follow MOVED / ASK. */
static void ccmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct sh_redis_cmd *cmd = privdata;
    struct conn *c = ac->data;
    sh_redis_bus *b = c->bus;
    const redisReply *reply = r;
    char host[256];
    int ask, port;
    if (!r && c->ac == ac) conn_lost(c, ac_reason(ac));
    if (reply && reply->type == REDIS_REPLY_ERROR && cmd->cb && !b->closing &&
        cmd->hops < CLUSTER_MAX_HOPS &&
        parse_redirect(reply->str, reply->len, &ask, host, sizeof host, &port) == 0) {
        struct node *n = node_find(b, host, port);
        cmd->hops++;
        cmd->asking = ask;
        if (!ask) cluster_refresh(b);
        if (n && ccmd_send(n, cmd) == 0) return;
        /* not ready (or not known yet): wait for the next map */
        *b->cl->parked_tail = cmd;
        b->cl->parked_tail = &cmd->next;
        cluster_refresh(b);
        return;
    }
    const char *why = r ? NULL : cmd_why(c, ac);
    if (cmd->cb) cmd->cb(cmd->arg, r, why);
    free(cmd->fmt);
    free(cmd);
}

/* ---- cluster: sharded subscriptions ------------------------------------- */

/* Contract at the forward declaration: append SSUBSCRIBE (or SUNSUBSCRIBE)
 * ch to c's output and remember that a reply is due. 0 or -1. */
static int csub_send(struct conn *c, struct chan *ch, int unsub, int resub)
{
    struct sreq *q = sq_new(ch, unsub, resub);
    if (q && c->ac && c->raw_ac == c->ac) conn_sending(c);
    if (!q || sub_append(c, unsub ? "SUNSUBSCRIBE" : "SSUBSCRIBE", ch->name, ch->len) < 0) {
        free(q);
        return -1;
    }
    sq_append(c, q);
    return 0;
}

/* Contract at the forward declaration: the handshake is done; from now on
 * the connection is read raw (hiredis 0.14 knows nothing of sharded
 * pub/sub: its callbacks would assert on an `smessage`). Subscribe every
 * live channel of c, one SSUBSCRIBE each (a batch must stay in one slot). */
static void csub_resubscribe(struct conn *c, redisAsyncContext *ac)
{
    sh_redis_bus *b = c->bus;
    struct chan *ch, *tmp;
    size_t n = 0;
    char rn[32];
    c->raw_ac = ac;
    c->state = CONN_SUBSCRIBING;
    HASH_ITER(hh, b->chans, ch, tmp) {
        if (ch->conn != c || ch->live == 0) continue;
        if (csub_send(c, ch, 0, 1) < 0) break; /* out of memory: the watchdog retries */
        ch->inflight++;
        ch->sent = 1;
        ch->confirmed = 0;
        n++;
    }
    c->resub_left = n;
    if (n == 0) {
        conn_ready(c);
        return;
    }
    if (c->rl.suppressed == 0) /* once per connection; a flapping one logs with its losses */
        sh_info(NULL, "redis: %ssubscribing %zu channels (%s connection)", c->fails ? "re-" : "",
                n, role_name(c, rn));
    else
        sh_debug(NULL, "redis: %ssubscribing %zu channels (%s connection)", c->fails ? "re-" : "",
                 n, role_name(c, rn));
}

/* An SSUBSCRIBE was refused (MOVED: the map is stale; CLUSTERDOWN; ...):
 * its pending subs fail with SH_REDIS_EUNAVAILABLE, its live ones wait for
 * the next map, which places the channel again. */
static void csub_refused(struct conn *c, struct chan *ch, const redisReply *reply)
{
    sh_redis_bus *b = c->bus;
    struct cluster *cl = b->cl;
    sh_redis_sub *fail = NULL;
    uint64_t held;
    char rn[32];
    if (ratelimit_ok(&cl->rl, uv_now(b->loop), &held))
        sh_warn(NULL, "redis: %s connection: SSUBSCRIBE refused: %.*s; fetching the slot map",
                role_name(c, rn), (int)reply->len, reply->str);
    cluster_refresh(b);
    if (!ch) return;
    if (ch->inflight) ch->inflight--;
    ch->sent = 0;
    ch->confirmed = 0;
    busy_enter(b);
    chan_take_pending(ch, &fail);
    chan_mark_dirty(b, ch);
    subs_fail(fail, SH_REDIS_EUNAVAILABLE);
    busy_leave(b);
}

/* One reply or push on a cluster subscriber connection. */
static void csub_reply(struct conn *c, const redisReply *reply)
{
    sh_redis_bus *b = c->bus;
    struct chan *ch = NULL;
    struct sreq *q = NULL;
    char rn[32];
    if (b->closing) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        q = sq_pop(c);
        if (q && !q->unsub)
            csub_refused(c, q->ch, reply);
        else
            sh_warn(NULL, "redis: %s connection: %.*s", role_name(c, rn), (int)reply->len,
                    reply->str);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3 &&
               reply->element[0]->type == REDIS_REPLY_STRING &&
               reply->element[1]->type == REDIS_REPLY_STRING) {
        const char *kind = reply->element[0]->str;
        const redisReply *name = reply->element[1];
        ch = chan_find(b, name->str, name->len);
        if (strcasecmp(kind, "smessage") == 0) {
            const redisReply *payload = reply->element[2];
            b->messages++;
            if (ch && ch->conn == c && payload->type == REDIS_REPLY_STRING)
                chan_deliver(b, ch, payload->str, payload->len);
            return;
        }
        int unsub = strcasecmp(kind, "sunsubscribe") == 0;
        if (!unsub && strcasecmp(kind, "ssubscribe") != 0) return;
        const struct sreq *h = c->sq_head;
        if (unsub && !(h && h->unsub && h->len == name->len &&
                       memcmp(h->name, name->str, name->len) == 0)) {
            /* spontaneous: its slot left this node (resharding, failover). By the name,
             * not the channel: the head's is NULL once its channel moved, and any push
             * then passed for its reply (a channel dropped meanwhile stayed believed
             * subscribed, its updates lost) */
            if (ch && ch->conn == c && ch->sent && ch->live > 0) {
                ch->sent = 0;
                ch->confirmed = 0;
                sh_info(NULL, "redis: %s connection: channel moved away; fetching the slot map",
                        role_name(c, rn));
                cluster_refresh(b);
            }
            return;
        }
        q = sq_pop(c);
        if (q && q->ch) chan_ack(b, q->ch);
    }
    if (q && q->resub && c->state == CONN_SUBSCRIBING && c->resub_left > 0 &&
        --c->resub_left == 0)
        conn_ready(c);
    free(q);
}

/* ---- cluster: close ------------------------------------------------------ */

/* Turn 0: free every context, answer parked commands; turn 1: close the
 * nodes' timers and the map timer. */
static void cluster_close_turn(sh_redis_bus *b, int turn)
{
    struct cluster *cl = b->cl;
    if (turn == 0) {
        uv_timer_stop(&cl->map_timer);
        for (struct node *n = cl->nodes; n; n = n->next) {
            conn_shutdown(&n->cmd);
            conn_shutdown(&n->sub);
            cluster_conn_lost(&n->sub);
        }
        cluster_unpark(b);
        return;
    }
    for (struct node *n = cl->nodes; n; n = n->next) {
        conn_close_timers(&n->cmd);
        conn_close_timers(&n->sub);
    }
    uv_close((uv_handle_t *)&cl->map_timer, bus_handle_closed);
}

/* Free the cluster state (every handle is closed). NULL cl accepted. */
static void cluster_free(sh_redis_bus *b)
{
    struct cluster *cl = b->cl;
    if (!cl) return;
    while (cl->nodes) {
        struct node *n = cl->nodes;
        cl->nodes = n->next;
        free(n->sub.fbuf);
        free(n);
    }
    sh_redis_slots_free(cl->map);
    free(cl->map_nodes);
    free(cl);
    b->cl = NULL;
}
