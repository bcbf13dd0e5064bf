/* redis_bus.h — the process's one link to Redis.
 *
 * 1 + K connections per process, whatever the number of WebSocket
 * connections: a command connection (any command that leaves the connection
 * as it found it, replies in order) and K subscriber connections (option
 * sub_connections, default 4) over which the process's channels are spread:
 * a channel always lives on subscriber connection hash(channel) % K. All of
 * them come from hiredis' async API on the libuv loop.
 *
 *   sh_redis_bus_new ──► connecting ──► AUTH / SELECT / CLIENT SETNAME ──► up
 *                          ▲                                              │
 *                          └── capped exponential backoff ◄── server lost ┘
 *
 * The backoff starts over only once a connection stayed up for a second: one
 * that is lost again and again right after it is restored (a flood, a server
 * or proxy that kills it, a reply that breaks the protocol at each
 * re-subscription) is retried ever more slowly, up to the cap.
 *
 * Liveness (timeout_ms): a ready connection that owes replies (commands,
 * (UN)SUBSCRIBE, a PING) and has received nothing for timeout_ms is dropped
 * and reconnected like any lost one (a hung server: SIGSTOP, a frozen VM, a
 * partition that drops packets; TCP alone notices none of them for minutes).
 * A connection that received nothing for timeout_ms / 2 and owes nothing
 * sends a PING. Cost on a busy connection: one store per readiness event.
 * A late timer (this process's own loop held up) does not count against
 * the server.
 *
 * Why K subscriber connections: Redis closes a subscriber whose unread output
 * exceeds `client-output-buffer-limit pubsub` (default 32mb hard, 8mb for
 * 60 s). One flooded channel then used to take every channel of the process
 * with it. Now it takes the channels of its own connection (about 1/K of
 * them): they lose what was published until that connection is back and has
 * re-subscribed them; the other connections are untouched.
 *
 * Each connection reconnects on its own. Availability:
 * - the bus is "up" (sh_redis_bus_up, on_state) when the command connection
 *   and all K subscriber connections are ready and every live channel has been
 *   re-subscribed (one SUBSCRIBE per connection for all of its channels) and
 *   confirmed;
 * - a command is refused (SH_REDIS_EUNAVAILABLE) only while the command
 *   connection is not ready; a new subscription only while the subscriber
 *   connection of its channel is not ready. So while one subscriber connection
 *   reconnects the bus is "down" for /healthz, but commands and channels on
 *   the other connections keep working.
 * Live subscriptions are kept and restored on reconnect.
 *
 * Commands that would change the shared command connection's state (MULTI,
 * SELECT, CLIENT REPLY, HELLO, ...) or block it (BLPOP, XREAD BLOCK, WAIT,
 * ...) are refused: see sh_redis_refusal().
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
    SH_REDIS_ECROSSSLOT = -406,  /* (cluster) the command's keys are in different slots */
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

/* Subscriber connections when sh_redis_opts.sub_connections is 0, and the
 * most there may be. */
#define SH_REDIS_SUB_CONNECTIONS_DEFAULT 4
#define SH_REDIS_SUB_CONNECTIONS_MAX 64

typedef struct {
    const char *url;         /* redis://[[user]:password@]host[:port][/db] or unix:///path */
    const char *cluster;     /* NULL or "": a single Redis at url. Else Redis Cluster seed
                                nodes, "host:port,host:port,..." (each may also be a
                                redis://[[user]:password@]host:port URL; the first
                                credentials given apply to every node); url is then
                                ignored and sub_connections too: see "Cluster mode" */
    const char *client_name; /* NULL → "statushost-<pid>"; the connections are named
                                <name>-cmd and <name>-sub0 .. <name>-sub<K-1>
                                (CLIENT SETNAME); no spaces */
    unsigned sub_connections; /* K, 1..SH_REDIS_SUB_CONNECTIONS_MAX; 0 → 4 */
    size_t read_budget;      /* bytes one connection reads per readiness event
                                before the loop moves on (the socket is drained
                                16 KiB at a time, hiredis' read size, while
                                data is waiting); 0 → 4 MiB; 1 → a single
                                16 KiB read (hiredis' own behaviour) */
    size_t max_reply_bytes;  /* a reply (or pub/sub message) charged more than this is not
                                read on: the connection is dropped and reconnected, and the
                                command gets errstr "reply too large (...)"; charged: 56
                                bytes per value it holds plus its strings' bytes, known
                                from an array's or a bulk string's header; 0 → 64 MiB. A
                                message push read by a single-mode subscriber connection
                                is skipped instead (its bytes discarded as they arrive,
                                counted in sh_redis_stats.messages_too_large): the
                                connection and its subscriptions stay (cluster mode
                                too: smessage) */
    uint64_t backoff_min_ms; /* first retry delay; 0 → 100 */
    uint64_t backoff_max_ms; /* cap of the doubling delay; 0 → 5000 */
    uint64_t connect_timeout_ms; /* connect + handshake must finish within this; 0 → 5000 */
    uint64_t timeout_ms;     /* a ready connection owing replies that receives nothing for
                                this long is dropped (see "Liveness"); 0 → 5000 */
    void (*on_state)(void *arg, int up); /* bus became available (1) or unavailable (0);
                                            also (0) once when the very first attempt
                                            fails; never called after sh_redis_bus_close() */
    void (*on_state_line)(void *arg, int up, uint64_t changes);
                             /* NULL, or the owner's log line of the bus's state, at most one
                                a second: at a change of on_state when no line was logged in
                                the last second, else at the end of that second with the
                                state of that moment; changes: how many changes of on_state
                                happened since the previous line (1 but for a flapping bus);
                                never called after sh_redis_bus_close() */
    void *state_arg;         /* passed to on_state and on_state_line */
} sh_redis_opts;

/* Cluster mode (sh_redis_opts.cluster). The bus keeps the same API over a
 * layer of nodes, one per master of the slot map (CLUSTER SHARDS, or CLUSTER
 * SLOTS when the server has no SHARDS), each with its own command connection
 * and, once one of the process's channels hashes to it, its own subscriber
 * connection. Connections per process: 1 command + at most 1 subscriber
 * connection per master (plus the command connections of seeds that are
 * not masters, kept to fetch the map).
 * - Channels are sharded: SSUBSCRIBE / SUNSUBSCRIBE on the subscriber
 *   connection of the master serving the channel's slot (CRC16, hash tags
 *   honoured); publishers must SPUBLISH. A subscription is confirmed, as in
 *   single mode, only once that master confirmed it.
 * - Commands go to the master of their key's slot (sh_redis_command_slot);
 *   keyless ones to any master; keys in several slots: SH_REDIS_ECROSSSLOT.
 *   A MOVED or ASK answer is followed (at most 5 times) and a MOVED refreshes
 *   the map; a redirection to a node not ready yet waits for the refreshed
 *   map and, failing that, ends with (NULL, "unavailable").
 * - A subscriber connection lost, an SSUBSCRIBE refused (MOVED, CLUSTERDOWN)
 *   or a spontaneous `sunsubscribe` (its slot moved away) refreshes the map;
 *   live channels then move to their new master and are re-subscribed there;
 *   their pending confirmations wait for the new master (or fail with
 *   SH_REDIS_EUNAVAILABLE if that connection fails, or the SSUBSCRIBE was
 *   refused). While a master is unreachable the map is fetched again every
 *   500 ms, so that a replica's promotion is seen within about that.
 * - "Up" means: a map covering every slot, and every master's command
 *   connection (and subscriber connection, once wanted) ready. Commands and
 *   new subscriptions for the shards that are ready keep working meanwhile. */

/* Parse a comma-separated list of cluster seed nodes (host:port, [v6]:port,
 * or redis://... URLs without a database) into out[0..max). Returns how many
 * the list has (≥ 1; only the first max are stored), or SH_REDIS_EBADURL. A
 * bus takes at most SH_REDIS_CLUSTER_SEEDS_MAX: callers refuse longer lists. */
int sh_redis_parse_seeds(const char *list, sh_redis_addr *out, size_t max);
#define SH_REDIS_CLUSTER_SEEDS_MAX 64
/* Check a redis_cluster value as the bus takes it: 0, or -1 with a one-line reason. */
int sh_redis_check_seeds(const char *list, char *err, size_t errsz);

/* Parse a Redis URL into *out:
 *   redis://[[user]:password@]host[:port][/db]   (IPv6 host as [::1])
 *   unix:///absolute/path
 * A userinfo without ':' is taken as the password. Percent escapes in the user
 * and password are decoded. Returns 0 or SH_REDIS_EBADURL. */
int sh_redis_parse_url(const char *url, sh_redis_addr *out);

/* Create the bus and start connecting its 1 + K connections. Fails only for bad
 * arguments (SH_REDIS_EINVAL), a bad URL (SH_REDIS_EBADURL) or SH_REDIS_ENOMEM;
 * an unreachable server is retried forever with capped exponential backoff,
 * and reported through on_state. On success *out is set and the bus must be
 * released with sh_redis_bus_close(). */
int sh_redis_bus_new(uv_loop_t *loop, const sh_redis_opts *o, sh_redis_bus **out);

/* 1 when the command connection and all K subscriber connections are ready
 * and every live channel is confirmed. */
int sh_redis_bus_up(const sh_redis_bus *b);

/* Counters and gauges for /metrics. */
typedef struct sh_redis_stats {
    uint64_t reconnects;       /* as sh_redis_bus_reconnects() */
    uint64_t sub_drops;        /* as sh_redis_bus_sub_drops() */
    uint64_t messages;         /* pub/sub messages received, every channel */
    uint64_t messages_dropped; /* reported by consumers (sh_redis_sub_dropped) */
    uint64_t messages_too_large; /* message pushes over max_reply_bytes, skipped */
    unsigned sub_connections;  /* K (cluster: subscriber connections wanted) */
    unsigned sub_ready;        /* subscriber connections ready now */
    int cmd_ready;             /* the command connection is ready now (cluster: every
                                  master's) */
    unsigned masters;          /* (cluster) masters in the slot map, 0 otherwise */
    uint64_t map_refreshes;    /* (cluster) slot maps fetched and applied */
    unsigned nodes;            /* (cluster) nodes held: seeds, masters, retired ones */
} sh_redis_stats;

/* Fill *out (zeroes for a NULL bus). */
void sh_redis_bus_stats(const sh_redis_bus *b, sh_redis_stats *out);

/* How many times a subscriber connection that was ready was lost (for
 * /metrics). Each loss may have cost messages on that connection's channels
 * (those published until it is back and has re-subscribed them). With Redis
 * up, the usual cause is `client-output-buffer-limit pubsub`: a flood on one
 * of the connection's channels that was not read fast enough. Logged at most
 * once a second. */
uint64_t sh_redis_bus_sub_drops(const sh_redis_bus *b);

/* The subscriber connection (0..K-1) that carries `channel`: a fixed hash of
 * the channel bytes modulo K (for tests and diagnosis). */
unsigned sh_redis_bus_channel_conn(const sh_redis_bus *b, const char *channel, size_t len);

/* How many times the bus came back up after having been up (for /metrics). */
uint64_t sh_redis_bus_reconnects(const sh_redis_bus *b);

/* Channels in the registry: subscribed, being subscribed, or awaiting the
 * confirmation of their UNSUBSCRIBE (0 means Redis knows of none of ours). */
size_t sh_redis_bus_channels(const sh_redis_bus *b);
/* The most channels in one bucket of the bus's channel table (a look-up walks them):
 * a handful with a sound hash, whatever the names. */
size_t sh_redis_bus_longest_chain(const sh_redis_bus *b);

/* Reply callback: called exactly once per accepted command (unless cancelled),
 * always from the loop, never from sh_redis_command itself. Either `reply` is
 * the hiredis reply (valid during the callback only; an error reply has
 * type REDIS_REPLY_ERROR) and errstr is NULL, or reply is NULL and errstr is
 * "closed" (the connection dropped or the bus closed before the reply) or
 * "reply too large (redis_max_reply_bytes N)" (its reply went over
 * max_reply_bytes: the connection was dropped for it). */
typedef void (*sh_redis_reply_cb)(void *arg, const redisReply *reply, const char *errstr);

/* Why the command argv[0..argc) may not run on the shared command
 * connection: a static sentence such as "CLIENT REPLY changes the shared
 * connection's state and is refused", or NULL when it may. argvlen may be
 * NULL (C strings). Names are matched case-insensitively, subcommands too
 * (CLIENT REPLY is refused, CLIENT ID is not). Refused:
 * - the bus's own: (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, MONITOR;
 * - connection state: AUTH, HELLO, SELECT, RESET, QUIT, READONLY, READWRITE,
 *   ASKING, MULTI, EXEC, DISCARD, WATCH, UNWATCH (a transaction would swallow
 *   the commands other tasks interleave), CLIENT REPLY|TRACKING|CACHING|
 *   SETNAME|SETINFO|NO-EVICT|NO-TOUCH|KILL;
 * - replication and server control: SYNC, PSYNC, REPLCONF, REPLICAOF,
 *   SLAVEOF, FAILOVER, SHUTDOWN, DEBUG;
 * - blocking: BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN, BZPOPMAX,
 *   BZMPOP, XREAD and XREADGROUP with BLOCK, WAIT, WAITAOF, CLIENT PAUSE.
 * EVAL/FCALL remain the way to run several commands atomically. */
const char *sh_redis_refusal(int argc, const char **argv, const size_t *argvlen);

/* Send one command on the command connection. argvlen may be NULL (then each
 * argv[i] is a C string); otherwise arguments are binary-safe. cb may be NULL
 * (fire and forget). When out is non-NULL it receives a handle valid until
 * the callback is called (or, for a cancelled command, until never: do not
 * touch it after cancelling). Errors, with no callback ever: SH_REDIS_EINVAL
 * (bad arguments, or a command sh_redis_refusal() refuses: ask it for the
 * reason), SH_REDIS_EUNAVAILABLE (the command connection is not ready),
 * SH_REDIS_ECLOSED (bus closing), SH_REDIS_ENOMEM. */
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
 *  <0  SH_REDIS_EINVAL, SH_REDIS_EUNAVAILABLE (the channel's subscriber
 *      connection is not ready), SH_REDIS_ECLOSED, SH_REDIS_ENOMEM; no
 *      callback, *out untouched.
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

/* The consumer of s dropped n of its messages (e.g. its client's send buffer
 * was full): counted in sh_redis_stats.messages_dropped. No-op for NULL or an
 * orphaned sub. */
void sh_redis_sub_dropped(sh_redis_sub *s, uint64_t n);

/* Close the bus. Asynchronous: pending commands get (NULL, "closed"); pending
 * confirmations get SH_REDIS_ECLOSED; on_state and on_msg are not called any
 * more; then done(arg) is called once, from the loop, after every hiredis
 * context is freed and the bus's own handles are closed. The bus pointer is
 * invalid after done() returns. Safe to call from any callback. done may be
 * NULL. A second call (while closing) is ignored. */
void sh_redis_bus_close(sh_redis_bus *b, void (*done)(void *), void *arg);

/* A static message for any SH_REDIS_E* code (and 0). */
const char *sh_redis_strerror(int err);

#endif
