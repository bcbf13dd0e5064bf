/* redis_slots.c — see redis_slots.h. */
#include "redis_slots.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sh_redis_slots {
    uint16_t owner[SH_REDIS_SLOTS]; /* index into nodes + 1; 0: unassigned */
    sh_redis_node *nodes;           /* distinct masters */
    size_t nnodes, cap;
    size_t assigned;                /* slots with an owner */
    size_t given;                   /* slots given so far, a slot given twice counted twice */
};

/* The most slots a reply may give, counting a slot given twice twice. A node's map gives
 * each slot once (its slot table has one owner per slot); a reply that repeats ranges (a
 * hostile or broken node: 600,000 times 0-16383 fit in the default redis_max_reply_bytes) cost
 * a loop over every slot of every range, seconds of the event loop at each map fetch. */
#define SLOTS_GIVEN_MAX (2 * SH_REDIS_SLOTS)

/* ---- hashing ------------------------------------------------------------ */

/* Contract in redis_slots.h. Bitwise CRC16-CCITT, polynomial 0x1021, initial
 * value 0, no reflection, no final xor (the cluster spec's XMODEM). */
uint16_t sh_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* Contract in redis_slots.h. The spec's keyHashSlot: the first '{', then the
 * first '}' after it; a non-empty tag between them is hashed, else the key. */
unsigned sh_redis_key_slot(const char *key, size_t len)
{
    const char *open = len ? memchr(key, '{', len) : NULL;
    if (open) {
        size_t s = (size_t)(open - key);
        const char *close = memchr(open + 1, '}', len - s - 1);
        if (close && close > open + 1)
            return sh_crc16(open + 1, (size_t)(close - open - 1)) & (SH_REDIS_SLOTS - 1);
    }
    return sh_crc16(key, len) & (SH_REDIS_SLOTS - 1);
}

/* ---- building ------------------------------------------------------------ */

/* r as a non-negative integer (an integer reply, or a decimal string), or -1. */
static long long as_int(const redisReply *r)
{
    if (!r) return -1;
    if (r->type == REDIS_REPLY_INTEGER) return r->integer >= 0 ? r->integer : -1;
    if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 18) return -1;
    long long v = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9') return -1;
        v = v * 10 + (r->str[i] - '0');
    }
    return v;
}

/* r is a string reply equal to word (case-insensitive). */
static int str_is(const redisReply *r, const char *word)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           r->len == strlen(word) && strncasecmp(r->str, word, r->len) == 0;
}

/* Copy a host name reply into out: "" for nil, "" or "?"; -1 when too long or
 * not a string. */
static int copy_host(const redisReply *r, char *out, size_t cap)
{
    out[0] = '\0';
    if (!r || r->type == REDIS_REPLY_NIL) return 0;
    if (r->type != REDIS_REPLY_STRING) return -1;
    if (r->len >= cap || memchr(r->str, '\0', r->len)) return -1;
    if (r->len == 1 && r->str[0] == '?') return 0;
    memcpy(out, r->str, r->len);
    out[r->len] = '\0';
    return 0;
}

/* The index of node n in m (added when new): ≥ 0, SH_SLOTS_ETOOMANY or
 * SH_SLOTS_ENOMEM. */
static int node_index(sh_redis_slots *m, const sh_redis_node *n)
{
    for (size_t i = 0; i < m->nnodes; i++)
        if (m->nodes[i].port == n->port && strcmp(m->nodes[i].host, n->host) == 0 &&
            strcmp(m->nodes[i].id, n->id) == 0)
            return (int)i;
    if (m->nnodes >= SH_REDIS_MASTERS_MAX) return SH_SLOTS_ETOOMANY;
    if (m->nnodes == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        sh_redis_node *nodes = realloc(m->nodes, cap * sizeof *nodes);
        if (!nodes) return SH_SLOTS_ENOMEM;
        m->nodes = nodes;
        m->cap = cap;
    }
    m->nodes[m->nnodes] = *n;
    return (int)m->nnodes++;
}

/* Give slots [start, end] to node n. 0, SH_SLOTS_EPROTO or SH_SLOTS_ENOMEM. */
static int assign(sh_redis_slots *m, long long start, long long end, const sh_redis_node *n)
{
    if (start < 0 || end < start || end >= SH_REDIS_SLOTS) return SH_SLOTS_EPROTO;
    if (n->port <= 0 || n->port > 65535) return SH_SLOTS_EPROTO;
    if ((size_t)(end - start + 1) > SLOTS_GIVEN_MAX - m->given) return SH_SLOTS_EPROTO;
    m->given += (size_t)(end - start + 1);
    int idx = node_index(m, n);
    if (idx < 0) return idx;
    for (long long s = start; s <= end; s++) {
        if (!m->owner[s]) m->assigned++;
        m->owner[s] = (uint16_t)(idx + 1);
    }
    return 0;
}

/* One CLUSTER SLOTS entry: [start, end, [host, port, id, ...], replicas...]. */
static int from_slots_entry(sh_redis_slots *m, const redisReply *e)
{
    sh_redis_node n;
    memset(&n, 0, sizeof n);
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) return SH_SLOTS_EPROTO;
    const redisReply *node = e->element[2];
    if (node->type != REDIS_REPLY_ARRAY || node->elements < 2) return SH_SLOTS_EPROTO;
    if (copy_host(node->element[0], n.host, sizeof n.host) < 0) return SH_SLOTS_EPROTO;
    long long port = as_int(node->element[1]);
    if (port < 0 || port > 65535) return SH_SLOTS_EPROTO;
    n.port = (int)port;
    if (node->elements >= 3 && node->element[2]->type == REDIS_REPLY_STRING &&
        node->element[2]->len < sizeof n.id) {
        memcpy(n.id, node->element[2]->str, node->element[2]->len);
        n.id[node->element[2]->len] = '\0';
    }
    return assign(m, as_int(e->element[0]), as_int(e->element[1]), &n);
}

/* The value for `key` in a RESP2 map (flat key/value array), or NULL. */
static const redisReply *map_get(const redisReply *map, const char *key)
{
    if (map->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < map->elements; i += 2)
        if (str_is(map->element[i], key)) return map->element[i + 1];
    return NULL;
}

/* One CLUSTER SHARDS shard: {slots: [start, end, ...], nodes: [{id, port,
 * ip, endpoint, role, health, ...}, ...]}. A shard without slots (an empty
 * master) or without a master assigns nothing. */
static int from_shard(sh_redis_slots *m, const redisReply *shard)
{
    const redisReply *slots = map_get(shard, "slots"), *nodes = map_get(shard, "nodes");
    if (!slots || !nodes || slots->type != REDIS_REPLY_ARRAY || nodes->type != REDIS_REPLY_ARRAY ||
        slots->elements % 2)
        return SH_SLOTS_EPROTO;
    const redisReply *master = NULL;
    for (size_t i = 0; i < nodes->elements && !master; i++)
        if (str_is(map_get(nodes->element[i], "role"), "master")) master = nodes->element[i];
    if (!master || slots->elements == 0) return 0;
    sh_redis_node n;
    memset(&n, 0, sizeof n);
    if (copy_host(map_get(master, "endpoint"), n.host, sizeof n.host) < 0) return SH_SLOTS_EPROTO;
    if (!n.host[0] && copy_host(map_get(master, "ip"), n.host, sizeof n.host) < 0)
        return SH_SLOTS_EPROTO;
    long long port = as_int(map_get(master, "port"));
    if (port <= 0) port = as_int(map_get(master, "tls-port"));
    if (port <= 0 || port > 65535) return SH_SLOTS_EPROTO;
    n.port = (int)port;
    const redisReply *id = map_get(master, "id");
    if (id && id->type == REDIS_REPLY_STRING && id->len < sizeof n.id) {
        memcpy(n.id, id->str, id->len);
        n.id[id->len] = '\0';
    }
    for (size_t i = 0; i < slots->elements; i += 2) {
        int rc = assign(m, as_int(slots->element[i]), as_int(slots->element[i + 1]), &n);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Contract in redis_slots.h. */
int sh_redis_slots_from_reply(const redisReply *r, sh_redis_slots **out)
{
    if (!r || !out || r->type != REDIS_REPLY_ARRAY) return SH_SLOTS_EPROTO;
    int shards = 0;
    if (r->elements > 0) {
        const redisReply *first = r->element[0];
        if (first->type != REDIS_REPLY_ARRAY || first->elements == 0) return SH_SLOTS_EPROTO;
        if (first->element[0]->type == REDIS_REPLY_STRING)
            shards = 1; /* {"slots": ..., "nodes": ...} */
        else if (first->element[0]->type != REDIS_REPLY_INTEGER)
            return SH_SLOTS_EPROTO;
    }
    sh_redis_slots *m = calloc(1, sizeof *m);
    if (!m) return SH_SLOTS_ENOMEM;
    for (size_t i = 0; i < r->elements; i++) {
        int rc = shards ? from_shard(m, r->element[i]) : from_slots_entry(m, r->element[i]);
        if (rc < 0) {
            sh_redis_slots_free(m);
            return rc;
        }
    }
    *out = m;
    return 0;
}

/* ---- lookups ------------------------------------------------------------- */

/* Contract in redis_slots.h. */
const sh_redis_node *sh_redis_slots_lookup(const sh_redis_slots *m, unsigned slot)
{
    if (!m || slot >= SH_REDIS_SLOTS || !m->owner[slot]) return NULL;
    return &m->nodes[m->owner[slot] - 1];
}

/* Contract in redis_slots.h. */
const sh_redis_node *sh_redis_slots_lookup_key(const sh_redis_slots *m, const char *key,
                                               size_t len)
{
    if (!key && len) return NULL;
    return sh_redis_slots_lookup(m, sh_redis_key_slot(key ? key : "", len));
}

/* Contract in redis_slots.h. */
size_t sh_redis_slots_nodes(const sh_redis_slots *m) { return m ? m->nnodes : 0; }

/* Contract in redis_slots.h. */
const sh_redis_node *sh_redis_slots_node(const sh_redis_slots *m, size_t i)
{
    return m && i < m->nnodes ? &m->nodes[i] : NULL;
}

/* Contract in redis_slots.h. */
size_t sh_redis_slots_assigned(const sh_redis_slots *m) { return m ? m->assigned : 0; }

/* Contract in redis_slots.h. */
void sh_redis_slots_free(sh_redis_slots *m)
{
    if (!m) return;
    free(m->nodes);
    free(m);
}

/* ---- routing commands ----------------------------------------------------- */

/* Where a command's keys are. */
enum keyspec {
    KS_NONE,   /* no key */
    KS_FIRST,  /* argv[1] */
    KS_SECOND, /* argv[2] (a subcommand first: XGROUP CREATE key, OBJECT ENCODING key) */
    KS_ALL,    /* argv[1..argc) */
    KS_PAIRS,  /* argv[1], argv[3], ... (MSET key value ...) */
    KS_TWO,    /* argv[1] and argv[2] */
    KS_NUM2,   /* argv[2] = numkeys, keys from argv[3] (EVAL script numkeys key ...) */
    KS_DNUM2,  /* argv[1] = destination, argv[2] = numkeys, keys from argv[3] */
    KS_NUM1,   /* argv[1] = numkeys, keys from argv[2] (ZINTER numkeys key ...) */
    KS_STREAMS,/* the first half of what follows STREAMS (XREAD, XREADGROUP) */
};

/* The common commands with keys; anything else is routed as keyless (and a
 * MOVED answer redirects it). */
static const struct { const char *name; enum keyspec ks; } key_table[] = {
    /* strings, generic */
    {"get", KS_FIRST}, {"set", KS_FIRST}, {"setex", KS_FIRST}, {"psetex", KS_FIRST},
    {"setnx", KS_FIRST}, {"getset", KS_FIRST}, {"getdel", KS_FIRST}, {"getex", KS_FIRST},
    {"incr", KS_FIRST}, {"incrby", KS_FIRST}, {"incrbyfloat", KS_FIRST}, {"decr", KS_FIRST},
    {"decrby", KS_FIRST}, {"append", KS_FIRST}, {"strlen", KS_FIRST}, {"getrange", KS_FIRST},
    {"setrange", KS_FIRST}, {"substr", KS_FIRST}, {"expire", KS_FIRST}, {"pexpire", KS_FIRST},
    {"expireat", KS_FIRST}, {"pexpireat", KS_FIRST}, {"expiretime", KS_FIRST},
    {"pexpiretime", KS_FIRST}, {"ttl", KS_FIRST}, {"pttl", KS_FIRST}, {"persist", KS_FIRST},
    {"type", KS_FIRST}, {"dump", KS_FIRST}, {"restore", KS_FIRST}, {"sort", KS_FIRST},
    {"sort_ro", KS_FIRST}, {"setbit", KS_FIRST}, {"getbit", KS_FIRST}, {"bitcount", KS_FIRST},
    {"bitpos", KS_FIRST}, {"bitfield", KS_FIRST}, {"bitfield_ro", KS_FIRST},
    {"pfadd", KS_FIRST}, {"spublish", KS_FIRST},
    {"del", KS_ALL}, {"unlink", KS_ALL}, {"exists", KS_ALL}, {"touch", KS_ALL},
    {"mget", KS_ALL}, {"pfcount", KS_ALL}, {"pfmerge", KS_ALL}, {"mset", KS_PAIRS},
    {"msetnx", KS_PAIRS}, {"rename", KS_TWO}, {"renamenx", KS_TWO}, {"copy", KS_TWO},
    {"object", KS_SECOND}, {"memory", KS_SECOND},
    /* hashes */
    {"hset", KS_FIRST}, {"hsetnx", KS_FIRST}, {"hget", KS_FIRST}, {"hmset", KS_FIRST},
    {"hmget", KS_FIRST}, {"hdel", KS_FIRST}, {"hgetall", KS_FIRST}, {"hincrby", KS_FIRST},
    {"hincrbyfloat", KS_FIRST}, {"hexists", KS_FIRST}, {"hkeys", KS_FIRST}, {"hvals", KS_FIRST},
    {"hlen", KS_FIRST}, {"hstrlen", KS_FIRST}, {"hscan", KS_FIRST}, {"hrandfield", KS_FIRST},
    /* lists */
    {"lpush", KS_FIRST}, {"rpush", KS_FIRST}, {"lpushx", KS_FIRST}, {"rpushx", KS_FIRST},
    {"lpop", KS_FIRST}, {"rpop", KS_FIRST}, {"llen", KS_FIRST}, {"lrange", KS_FIRST},
    {"lindex", KS_FIRST}, {"lset", KS_FIRST}, {"lrem", KS_FIRST}, {"ltrim", KS_FIRST},
    {"linsert", KS_FIRST}, {"lpos", KS_FIRST}, {"rpoplpush", KS_TWO}, {"lmove", KS_TWO},
    {"lmpop", KS_NUM1},
    /* sets */
    {"sadd", KS_FIRST}, {"srem", KS_FIRST}, {"smembers", KS_FIRST}, {"sismember", KS_FIRST},
    {"smismember", KS_FIRST}, {"scard", KS_FIRST}, {"spop", KS_FIRST},
    {"srandmember", KS_FIRST}, {"sscan", KS_FIRST}, {"smove", KS_TWO}, {"sinter", KS_ALL},
    {"sunion", KS_ALL}, {"sdiff", KS_ALL}, {"sinterstore", KS_ALL}, {"sunionstore", KS_ALL},
    {"sdiffstore", KS_ALL}, {"sintercard", KS_NUM1},
    /* sorted sets */
    {"zadd", KS_FIRST}, {"zrem", KS_FIRST}, {"zrange", KS_FIRST}, {"zrevrange", KS_FIRST},
    {"zrangebyscore", KS_FIRST}, {"zrevrangebyscore", KS_FIRST}, {"zrangebylex", KS_FIRST},
    {"zrevrangebylex", KS_FIRST}, {"zscore", KS_FIRST}, {"zmscore", KS_FIRST},
    {"zincrby", KS_FIRST}, {"zcard", KS_FIRST}, {"zcount", KS_FIRST}, {"zlexcount", KS_FIRST},
    {"zrank", KS_FIRST}, {"zrevrank", KS_FIRST}, {"zremrangebyscore", KS_FIRST},
    {"zremrangebyrank", KS_FIRST}, {"zremrangebylex", KS_FIRST}, {"zpopmin", KS_FIRST},
    {"zpopmax", KS_FIRST}, {"zscan", KS_FIRST}, {"zrandmember", KS_FIRST},
    {"zrangestore", KS_TWO}, {"zunionstore", KS_DNUM2}, {"zinterstore", KS_DNUM2},
    {"zdiffstore", KS_DNUM2}, {"zunion", KS_NUM1}, {"zinter", KS_NUM1}, {"zdiff", KS_NUM1},
    {"zintercard", KS_NUM1}, {"zmpop", KS_NUM1},
    /* geo */
    {"geoadd", KS_FIRST}, {"geopos", KS_FIRST}, {"geodist", KS_FIRST}, {"geohash", KS_FIRST},
    {"geosearch", KS_FIRST}, {"georadius", KS_FIRST}, {"georadiusbymember", KS_FIRST},
    {"geosearchstore", KS_TWO},
    /* streams */
    {"xadd", KS_FIRST}, {"xlen", KS_FIRST}, {"xrange", KS_FIRST}, {"xrevrange", KS_FIRST},
    {"xdel", KS_FIRST}, {"xtrim", KS_FIRST}, {"xack", KS_FIRST}, {"xclaim", KS_FIRST},
    {"xautoclaim", KS_FIRST}, {"xpending", KS_FIRST}, {"xsetid", KS_FIRST},
    {"xgroup", KS_SECOND}, {"xinfo", KS_SECOND}, {"xread", KS_STREAMS},
    {"xreadgroup", KS_STREAMS},
    /* scripting */
    {"eval", KS_NUM2}, {"evalsha", KS_NUM2}, {"eval_ro", KS_NUM2}, {"evalsha_ro", KS_NUM2},
    {"fcall", KS_NUM2}, {"fcall_ro", KS_NUM2},
};

/* Fold the slot of argv[i] into *slot (-1: none yet). 0, or -1 on a cross-slot. */
static int fold_slot(const char **argv, const size_t *argvlen, int i, int *slot)
{
    size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
    int s = (int)sh_redis_key_slot(argv[i], len);
    if (*slot >= 0 && *slot != s) return -1;
    *slot = s;
    return 0;
}

/* argv[i] as a key count within [0, max], or -1. */
static long numkeys_at(int argc, const char **argv, const size_t *argvlen, int i, long max)
{
    if (i >= argc) return -1;
    size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
    long v = 0;
    if (len == 0 || len > 9) return -1;
    for (size_t k = 0; k < len; k++) {
        if (argv[i][k] < '0' || argv[i][k] > '9') return -1;
        v = v * 10 + (argv[i][k] - '0');
    }
    return v <= max ? v : -1;
}

/* Contract in redis_slots.h. */
int sh_redis_command_slot(int argc, const char **argv, const size_t *argvlen)
{
    enum keyspec ks = KS_NONE;
    int first = 0, last = 0, step = 1, slot = -1;
    if (argc < 1 || !argv || !argv[0]) return SH_ROUTE_ANY;
    size_t nlen = argvlen ? argvlen[0] : strlen(argv[0]);
    for (size_t i = 0; i < sizeof key_table / sizeof key_table[0]; i++)
        if (strlen(key_table[i].name) == nlen && strncasecmp(argv[0], key_table[i].name, nlen) == 0) {
            ks = key_table[i].ks;
            break;
        }
    switch (ks) {
    case KS_NONE: return SH_ROUTE_ANY;
    case KS_FIRST: first = last = 1; break;
    case KS_SECOND: first = last = 2; break;
    case KS_ALL: first = 1; last = argc - 1; break;
    case KS_PAIRS: first = 1; last = argc - 1; step = 2; break;
    case KS_TWO: first = 1; last = 2; break;
    case KS_NUM1:
    case KS_NUM2:
    case KS_DNUM2: {
        int at = ks == KS_NUM1 ? 1 : 2;
        long n = numkeys_at(argc, argv, argvlen, at, argc - at - 1);
        if (n < 0) return SH_ROUTE_ANY; /* malformed: Redis says why */
        first = ks == KS_DNUM2 ? 1 : at + 1;
        last = at + (int)n;
        if (ks == KS_DNUM2 && fold_slot(argv, argvlen, 1, &slot) < 0) return SH_ROUTE_CROSSSLOT;
        if (ks == KS_DNUM2) first = at + 1;
        break;
    }
    case KS_STREAMS:
        for (int i = 1; i < argc; i++) {
            size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
            if (l == 7 && strncasecmp(argv[i], "streams", 7) == 0) {
                int rest = argc - i - 1;
                first = i + 1;
                last = i + rest / 2;
                break;
            }
        }
        break;
    }
    if (last >= argc) last = argc - 1;
    for (int i = first; i >= 1 && i <= last; i += step)
        if (fold_slot(argv, argvlen, i, &slot) < 0) return SH_ROUTE_CROSSSLOT;
    return slot >= 0 ? slot : SH_ROUTE_ANY;
}
