/* redis_bus.h — the process's one link to Redis.
 *
 * Exactly two connections per process, whatever the number of WebSocket
 * connections: a command connection (any command, replies in order) and a
 * subscriber connection that multiplexes every channel any part of the process
 * listens on. Both come from hiredis' async API on the libuv loop.
 *
 *   sh_redis_bus_new ──► connecting ──► AUTH / SELECT / CLIENT SETNAME ──► up
 *                          ▲                                              │
 *                          └── capped exponential backoff ◄── server lost ┘
 *
 * The bus is "up" when both connections are ready and, after a reconnect,
 * every live channel has been re-subscribed (one SUBSCRIBE for all of them)
 * and Redis has confirmed it. While it is down, new commands and new
 * subscriptions are refused synchronously with SH_REDIS_EUNAVAILABLE; live
 * subscriptions are kept and restored on reconnect.
 *
 * Callback rules (libuv's): a function that takes a callback and returns an
 * error never calls that callback; no callback is ever called synchronously
 * from the function that registered it. Every callback may call any function
 * of this API, including sh_redis_bus_close().
 *
 * Not thread-safe: everything runs on the loop's thread.
 *
 * Side effect: sh_redis_bus_new() sets SIGPIPE to SIG_IGN when it is at its
 * default disposition (hiredis writes with write(2); a server that dies
 * between two writes would otherwise kill the process). */
#ifndef SH_REDIS_BUS_H
#define SH_REDIS_BUS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

/* Errors: 0 or one of these (banded at -400). */
enum {
    SH_REDIS_EINVAL = -401,      /* bad argument, or a command the bus reserves */
    SH_REDIS_EBADURL = -402,     /* the Redis URL does not parse */
    SH_REDIS_ENOMEM = -403,      /* out of memory */
    SH_REDIS_EUNAVAILABLE = -404,/* the bus is down (Redis not reachable right now) */
    SH_REDIS_ECLOSED = -405,     /* the bus is closing or closed */
};

/* A parsed Redis address. Fixed-size fields: nothing to free. */
typedef struct sh_redis_addr {
    int is_unix;        /* 1: `path` is set; 0: `host`/`port` are set */
    char host[256];     /* TCP host name or address (IPv6 without brackets) */
    int port;           /* TCP port 1..65535 (6379 when the URL omits it) */
    char path[108];     /* unix socket path */
    char user[128];     /* ACL user name, "" when none (AUTH <password>) */
    char password[256]; /* "" when none; percent-decoded */
    int db;             /* database index, -1 when the URL gives none */
} sh_redis_addr;

typedef struct sh_redis_bus sh_redis_bus;
typedef struct sh_redis_cmd sh_redis_cmd; /* a pending command */
typedef struct sh_redis_sub sh_redis_sub; /* one subscriber's interest in one channel */

typedef struct {
    const char *url;         /* redis://[[user]:password@]host[:port][/db] or unix:///path */
    const char *client_name; /* NULL → "statushost-<pid>"; the connections are named
                                <name>-cmd and <name>-sub (CLIENT SETNAME); no spaces */
    uint64_t backoff_min_ms; /* first retry delay; 0 → 100 */
    uint64_t backoff_max_ms; /* cap of the doubling delay; 0 → 5000 */
    uint64_t connect_timeout_ms; /* connect + handshake must finish within this; 0 → 5000 */
    void (*on_state)(void *arg, int up); /* bus became available (1) or unavailable (0);
                                            also (0) once when the very first attempt
                                            fails; never called after sh_redis_bus_close() */
    void *state_arg;         /* passed to on_state */
} sh_redis_opts;

/* Parse a Redis URL into *out:
 *   redis://[[user]:password@]host[:port][/db]   (IPv6 host as [::1])
 *   unix:///absolute/path
 * A userinfo without ':' is taken as the password. Percent escapes in the user
 * and password are decoded. Returns 0 or SH_REDIS_EBADURL. */
int sh_redis_parse_url(const char *url, sh_redis_addr *out);

/* Create the bus and start connecting both connections. Fails only for bad
 * arguments (SH_REDIS_EINVAL), a bad URL (SH_REDIS_EBADURL) or SH_REDIS_ENOMEM;
 * an unreachable server is retried forever with capped exponential backoff,
 * and reported through on_state. On success *out is set and the bus must be
 * released with sh_redis_bus_close(). */
int sh_redis_bus_new(uv_loop_t *loop, const sh_redis_opts *o, sh_redis_bus **out);

/* 1 when both connections are ready and every live channel is confirmed. */
int sh_redis_bus_up(const sh_redis_bus *b);

/* How many times the bus came back up after having been up (for /metrics). */
uint64_t sh_redis_bus_reconnects(const sh_redis_bus *b);

/* Channels in the registry: subscribed, being subscribed, or awaiting the
 * confirmation of their UNSUBSCRIBE (0 means Redis knows of none of ours). */
size_t sh_redis_bus_channels(const sh_redis_bus *b);

/* Reply callback: called exactly once per accepted command (unless cancelled),
 * always from the loop, never from sh_redis_command itself. Either `reply` is
 * the hiredis reply (valid during the callback only; an error reply has
 * type REDIS_REPLY_ERROR) and errstr is NULL, or reply is NULL and errstr is
 * "closed" (the connection dropped or the bus closed before the reply). */
typedef void (*sh_redis_reply_cb)(void *arg, const redisReply *reply, const char *errstr);

/* Send one command on the command connection. argvlen may be NULL (then each
 * argv[i] is a C string); otherwise arguments are binary-safe. cb may be NULL
 * (fire and forget). When out is non-NULL it receives a handle valid until
 * the callback is called (or, for a cancelled command, until never: do not
 * touch it after cancelling). Errors, with no callback ever: SH_REDIS_EINVAL
 * (bad arguments, or (P|S)SUBSCRIBE/(P|S)UNSUBSCRIBE/MONITOR, which belong to
 * the bus), SH_REDIS_EUNAVAILABLE (bus down), SH_REDIS_ECLOSED (bus closing),
 * SH_REDIS_ENOMEM. */
int sh_redis_command(sh_redis_bus *b, int argc, const char **argv, const size_t *argvlen,
                     sh_redis_reply_cb cb, void *arg, sh_redis_cmd **out);

/* Forget a pending command's callback: it will not be called, the reply is
 * dropped when it comes, and the handle is released by the bus. Only valid
 * while the command is pending (before its callback ran). */
void sh_redis_cmd_cancel(sh_redis_cmd *c);

/* Message callback: one published message on the channel. Binary-safe. The
 * pointers are valid during the callback only. */
typedef void (*sh_redis_msg_cb)(void *arg, const char *channel, size_t channel_len,
                                const char *payload, size_t payload_len);
/* Confirmation callback: err 0 → Redis confirmed the subscription, messages
 * published from now on are delivered. err < 0 (SH_REDIS_EUNAVAILABLE: the
 * subscriber connection dropped first; SH_REDIS_ECLOSED: the bus was closed)
 * → the subscription failed and the bus has ALREADY RELEASED the sub: do not
 * call sh_redis_unsubscribe() on it. */
typedef void (*sh_redis_confirm_cb)(void *arg, int err);

/* Subscribe to `channel` (len bytes, binary-safe). SUBSCRIBE is sent once per
 * channel however many subs share it, UNSUBSCRIBE when the last one leaves.
 * Returns:
 *   1  the channel is already confirmed by Redis: *out is live, on_confirm is
 *      never called (fast path);
 *   0  pending: on_confirm(arg, 0) later once Redis confirms, or
 *      on_confirm(arg, <0) if the subscriber connection drops or the bus
 *      closes first (never synchronously);
 *  <0  SH_REDIS_EINVAL, SH_REDIS_EUNAVAILABLE (bus down), SH_REDIS_ECLOSED,
 *      SH_REDIS_ENOMEM; no callback, *out untouched.
 * on_msg (may be NULL) is called for every message on the channel while the
 * sub lives, in subscription order across the channel's subs. A live sub
 * (returned 1, or confirmed with 0) belongs to the caller until
 * sh_redis_unsubscribe(); it survives reconnects, and even sh_redis_bus_close()
 * (it then receives nothing, but must still be unsubscribed to be freed). */
int sh_redis_subscribe(sh_redis_bus *b, const char *channel, size_t len,
                       sh_redis_msg_cb on_msg, sh_redis_confirm_cb on_confirm, void *arg,
                       sh_redis_sub **out);

/* Drop a sub (live or pending). No callback of it is called afterwards, and
 * the handle must not be used again. Safe from inside any callback of this
 * API, including on_msg of this sub or of another sub of the same channel.
 * NULL is accepted. */
void sh_redis_unsubscribe(sh_redis_sub *s);

/* Close the bus. Asynchronous: pending commands get (NULL, "closed"); pending
 * confirmations get SH_REDIS_ECLOSED; on_state and on_msg are not called any
 * more; then done(arg) is called once, from the loop, after both hiredis
 * contexts are freed and the bus's own handles are closed. The bus pointer is
 * invalid after done() returns. Safe to call from any callback. done may be
 * NULL. A second call (while closing) is ignored. */
void sh_redis_bus_close(sh_redis_bus *b, void (*done)(void *), void *arg);

/* A static message for any SH_REDIS_E* code (and 0). */
const char *sh_redis_strerror(int err);

#endif
