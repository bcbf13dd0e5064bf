/* redis_slots.h — Redis Cluster slot routing on hiredis (no connections here).
 *
 * Keys map to one of 16384 hash slots: CRC16 (XMODEM: poly 0x1021, init 0,
 * no reflection) of the key, or of its hash tag, modulo 16384. The hash tag
 * follows the cluster spec exactly: if the key contains a '{' and, after the
 * first '{', a '}' with at least one byte between them, only those bytes are
 * hashed ("{user1000}.following" → "user1000"; "foo{}{bar}" → the whole key;
 * "foo{{bar}}zap" → "{bar"; "foo{bar}{zap}" → "bar").
 *
 * A slot map says which master serves each slot. It is built from the reply
 * to CLUSTER SHARDS (Redis ≥ 7) or CLUSTER SLOTS (older, deprecated in 7) as
 * hiredis returns it over RESP2, and is immutable: on a MOVED redirection
 * the owner fetches the topology again and swaps in a new map.
 *
 * Not thread-safe per map (nothing mutates a built map, so sharing a built
 * map read-only across threads is fine). */
#ifndef SH_REDIS_SLOTS_H
#define SH_REDIS_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define SH_REDIS_SLOTS 16384

/* Errors (the redis bus's band). */
enum {
    SH_SLOTS_EPROTO = -411, /* the reply is not a CLUSTER SLOTS / SHARDS reply */
    SH_SLOTS_ENOMEM = -413, /* out of memory */
    SH_SLOTS_ETOOMANY = -414, /* more than SH_REDIS_MASTERS_MAX distinct masters */
};

/* Distinct masters a map may name: the cluster spec's suggested upper limit
 * of 1000 nodes. Each master costs a connection (two with subscriptions), and
 * a hostile or broken node must not make the process open thousands. */
#define SH_REDIS_MASTERS_MAX 1000

/* CRC16-CCITT (XMODEM) of buf[0..len): 0x31C3 for "123456789". */
uint16_t sh_crc16(const char *buf, size_t len);

/* The hash slot (0..16383) of key[0..len), hash tags included. */
unsigned sh_redis_key_slot(const char *key, size_t len);

/* One master. host is what the reply names (CLUSTER SHARDS: `endpoint`,
 * else `ip`; CLUSTER SLOTS: the preferred endpoint); "" when Redis reports
 * it as unknown (NULL endpoint or "?"), which by the cluster spec means "the
 * host of the node that sent this reply". */
typedef struct sh_redis_node {
    char host[256];
    int port;
    char id[48]; /* node id (40 hex chars), "" when the reply has none */
} sh_redis_node;

typedef struct sh_redis_slots sh_redis_slots;

/* Build a map from the reply to CLUSTER SHARDS or CLUSTER SLOTS (the format
 * is recognised from the reply). Slots no master claims are unassigned. A
 * shard whose master is not `online` (SHARDS' `health`) still owns its slots:
 * Redis answers for it, with an error the caller acts upon. Returns 0 and
 * sets *out (free with sh_redis_slots_free), SH_SLOTS_EPROTO (malformed reply:
 * an error reply, a slot out of range, a master without a port ...),
 * SH_SLOTS_ETOOMANY (more than SH_REDIS_MASTERS_MAX masters) or
 * SH_SLOTS_ENOMEM; *out is untouched on error. */
int sh_redis_slots_from_reply(const redisReply *r, sh_redis_slots **out);

/* The master serving `slot`, or NULL when the slot is unassigned or out of
 * range. Valid until sh_redis_slots_free(m). */
const sh_redis_node *sh_redis_slots_lookup(const sh_redis_slots *m, unsigned slot);

/* The master serving key[0..len): lookup(key_slot(key)). */
const sh_redis_node *sh_redis_slots_lookup_key(const sh_redis_slots *m, const char *key,
                                               size_t len);

/* Distinct masters in the map; sh_redis_slots_node(m, i) for i < that. */
size_t sh_redis_slots_nodes(const sh_redis_slots *m);
const sh_redis_node *sh_redis_slots_node(const sh_redis_slots *m, size_t i);

/* Slots that have a master (16384 for a healthy, fully covered cluster). */
size_t sh_redis_slots_assigned(const sh_redis_slots *m);

/* NULL is accepted. */
void sh_redis_slots_free(sh_redis_slots *m);

/* ---- routing commands --------------------------------------------------- */

/* sh_redis_command_slot results besides a slot (0..16383). */
enum {
    SH_ROUTE_ANY = -1,       /* no key (or a command not in the table): any master;
                                a MOVED answer then says where it belongs */
    SH_ROUTE_CROSSSLOT = -2, /* its keys hash to different slots */
};

/* The slot a command must run on, from its keys: argv[0..argc) (argvlen NULL:
 * C strings). Key positions come from a table of the common commands (names
 * case-insensitive): one key (GET, HSET, SPUBLISH, XADD, ...), every argument
 * (DEL, MGET, EXISTS, ...), key/value pairs (MSET), two keys (RENAME, LMOVE,
 * ...), a key count (EVAL, EVALSHA, FCALL, ZUNIONSTORE, ZINTER, LMPOP, ...),
 * and XREAD's STREAMS. Returns the slot, SH_ROUTE_ANY or SH_ROUTE_CROSSSLOT. */
int sh_redis_command_slot(int argc, const char **argv, const size_t *argvlen);

#endif
