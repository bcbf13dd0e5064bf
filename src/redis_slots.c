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
};

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

/* The index of node n in m (added when new): ≥ 0, or SH_SLOTS_ENOMEM. */
static int node_index(sh_redis_slots *m, const sh_redis_node *n)
{
    for (size_t i = 0; i < m->nnodes; i++)
        if (m->nodes[i].port == n->port && strcmp(m->nodes[i].host, n->host) == 0 &&
            strcmp(m->nodes[i].id, n->id) == 0)
            return (int)i;
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
    int idx = node_index(m, n);
    if (idx < 0) return idx;
    if (idx + 1 > UINT16_MAX) return SH_SLOTS_EPROTO;
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
