/* test_redis_slots.c — CRC16, key → slot with hash tags, and slot maps built
 * from CLUSTER SLOTS / CLUSTER SHARDS replies: hand-written RESP2 replies
 * (parsed by hiredis' own reader, as they arrive from a socket), and the
 * replies of a real single-node redis-server in cluster mode when
 * /usr/bin/redis-server exists. */
#include "redis_slots.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "unit.h"

/* Parse one RESP reply from text (hiredis' reader); NULL on failure. */
static redisReply *parse(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    if (!rd) return NULL;
    if (redisReaderFeed(rd, resp, strlen(resp)) != REDIS_OK || redisReaderGetReply(rd, &r) != REDIS_OK)
        r = NULL;
    redisReaderFree(rd);
    return r;
}

static unsigned slot_of(const char *k) { return sh_redis_key_slot(k, strlen(k)); }

static void test_hashing(void)
{
    CHECK_INT(sh_crc16("123456789", 9), 0x31C3);
    CHECK_INT(sh_crc16("", 0), 0);
    CHECK_INT(slot_of("foo"), 12182);
    CHECK_INT(slot_of("bar"), 5061);
    CHECK_INT(slot_of(""), 0);
    CHECK_INT(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    CHECK_INT(slot_of("{user1000}.following"), slot_of("user1000"));
    CHECK_INT(slot_of("foo{}{bar}"), sh_crc16("foo{}{bar}", 10) & 16383); /* empty tag: whole key */
    CHECK_INT(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    CHECK_INT(slot_of("foo{{bar}}zap"), sh_crc16("{bar", 4) & 16383);
    CHECK_INT(slot_of("foo{bar}{zap}"), slot_of("bar"));
    CHECK_INT(slot_of("{"), sh_crc16("{", 1) & 16383);         /* no '}' */
    CHECK_INT(slot_of("a}b{c"), sh_crc16("a}b{c", 5) & 16383); /* '}' before '{' */
    CHECK_INT(slot_of("{}"), sh_crc16("{}", 2) & 16383);
    CHECK_INT(slot_of("x{y}"), slot_of("y"));
    /* binary keys: the tag may hold NUL bytes */
    CHECK_INT(sh_redis_key_slot("a{\0b}c", 6), sh_crc16("\0b", 2) & 16383);
    for (unsigned i = 0; i < 1000; i++) {
        char k[16];
        snprintf(k, sizeof k, "key:%u", i);
        CHECK(slot_of(k) < 16384);
    }
}

/* Three masters with a replica each, as CLUSTER SLOTS (Redis 7: a metadata
 * map after the id), one of them with two ranges and a NULL endpoint. */
static const char SLOTS[] =
    "*4\r\n"
    "*4\r\n:0\r\n:5460\r\n"
    "*4\r\n$8\r\n10.0.0.1\r\n:7000\r\n$40\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n*0\r\n"
    "*4\r\n$8\r\n10.0.0.4\r\n:7003\r\n$40\r\ndddddddddddddddddddddddddddddddddddddddd\r\n*0\r\n"
    "*3\r\n:5461\r\n:10922\r\n"
    "*3\r\n$8\r\n10.0.0.2\r\n:7001\r\n$40\r\nbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
    "*3\r\n:10923\r\n:16000\r\n"
    "*3\r\n$-1\r\n:7002\r\n$40\r\ncccccccccccccccccccccccccccccccccccccccc\r\n"
    "*3\r\n:16001\r\n:16383\r\n"
    "*3\r\n$-1\r\n:7002\r\n$40\r\ncccccccccccccccccccccccccccccccccccccccc\r\n";

/* The same topology as CLUSTER SHARDS (RESP2: maps are flat arrays); the
 * replica is listed first in one shard; slot 16383 is left unassigned. */
static const char SHARDS[] =
    "*3\r\n"
    "*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n"
    "*14\r\n$2\r\nid\r\n$1\r\nd\r\n$4\r\nport\r\n:7003\r\n$2\r\nip\r\n$8\r\n10.0.0.4\r\n"
    "$8\r\nendpoint\r\n$8\r\n10.0.0.4\r\n$4\r\nrole\r\n$7\r\nreplica\r\n"
    "$18\r\nreplication-offset\r\n:10\r\n$6\r\nhealth\r\n$6\r\nonline\r\n"
    "*14\r\n$2\r\nid\r\n$1\r\na\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n"
    "$8\r\nendpoint\r\n$11\r\nredis-a.lan\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
    "$18\r\nreplication-offset\r\n:10\r\n$6\r\nhealth\r\n$6\r\nonline\r\n"
    "*4\r\n$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n$5\r\nnodes\r\n*1\r\n"
    "*10\r\n$2\r\nid\r\n$1\r\nb\r\n$4\r\nport\r\n:7001\r\n$2\r\nip\r\n$8\r\n10.0.0.2\r\n"
    "$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
    "*4\r\n$5\r\nslots\r\n*4\r\n:10923\r\n:16000\r\n:16001\r\n:16382\r\n$5\r\nnodes\r\n*1\r\n"
    "*8\r\n$2\r\nid\r\n$1\r\nc\r\n$4\r\nport\r\n:7002\r\n$2\r\nip\r\n$8\r\n10.0.0.3\r\n"
    "$4\r\nrole\r\n$6\r\nmaster\r\n";

static void test_maps(void)
{
    sh_redis_slots *m = NULL;
    redisReply *r = parse(SLOTS);
    CHECK(r != NULL);
    CHECK_INT(sh_redis_slots_from_reply(r, &m), 0);
    freeReplyObject(r);
    CHECK_INT(sh_redis_slots_assigned(m), 16384);
    CHECK_INT(sh_redis_slots_nodes(m), 3); /* replicas are not masters; 7002 once */
    const sh_redis_node *n = sh_redis_slots_lookup(m, 0);
    CHECK(n && n->port == 7000);
    CHECK_STR(n ? n->host : NULL, "10.0.0.1");
    CHECK_STR(n ? n->id : NULL, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    n = sh_redis_slots_lookup(m, 5460);
    CHECK(n && n->port == 7000);
    n = sh_redis_slots_lookup(m, 5461);
    CHECK(n && n->port == 7001);
    n = sh_redis_slots_lookup(m, 16383);
    CHECK(n && n->port == 7002);
    CHECK_STR(n ? n->host : NULL, ""); /* NULL endpoint: the node that answered */
    CHECK(sh_redis_slots_lookup(m, 16384) == NULL);
    n = sh_redis_slots_lookup_key(m, "foo", 3); /* 12182 */
    CHECK(n && n->port == 7002);
    n = sh_redis_slots_lookup_key(m, "bar", 3); /* 5061 */
    CHECK(n && n->port == 7000);
    sh_redis_slots_free(m);

    m = NULL;
    r = parse(SHARDS);
    CHECK(r != NULL);
    CHECK_INT(sh_redis_slots_from_reply(r, &m), 0);
    freeReplyObject(r);
    CHECK_INT(sh_redis_slots_assigned(m), 16383);
    CHECK_INT(sh_redis_slots_nodes(m), 3);
    n = sh_redis_slots_lookup(m, 100);
    CHECK(n && n->port == 7000);
    CHECK_STR(n ? n->host : NULL, "redis-a.lan"); /* endpoint preferred */
    CHECK_STR(n ? n->id : NULL, "a");
    n = sh_redis_slots_lookup(m, 6000);
    CHECK(n && n->port == 7001);
    CHECK_STR(n ? n->host : NULL, "10.0.0.2"); /* endpoint "?": the ip */
    n = sh_redis_slots_lookup(m, 16382);
    CHECK(n && n->port == 7002);
    CHECK_STR(n ? n->host : NULL, "10.0.0.3"); /* no endpoint field: the ip */
    CHECK(sh_redis_slots_lookup(m, 16383) == NULL);
    CHECK(sh_redis_slots_lookup_key(m, "foo", 3) && sh_redis_slots_lookup_key(m, "foo", 3)->port == 7002);
    sh_redis_slots_free(m);

    /* empty: a cluster with no slots yet */
    m = NULL;
    r = parse("*0\r\n");
    CHECK_INT(sh_redis_slots_from_reply(r, &m), 0);
    freeReplyObject(r);
    CHECK_INT(sh_redis_slots_assigned(m), 0);
    CHECK(sh_redis_slots_lookup(m, 0) == NULL);
    sh_redis_slots_free(m);

    /* malformed */
    const char *bad[] = {
        "-ERR This instance has cluster support disabled\r\n",
        ":1\r\n",
        "*1\r\n:1\r\n",
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",   /* slot out of range */
        "*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\nh\r\n:1\r\n",       /* end < start */
        "*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\nh\r\n",             /* no port */
        "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n",       /* port 0 */
        "*1\r\n*2\r\n$5\r\nslots\r\n*0\r\n",                      /* shard without nodes */
        "*1\r\n*4\r\n$5\r\nslots\r\n*1\r\n:0\r\n$5\r\nnodes\r\n*0\r\n", /* odd slots */
        "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:1\r\n$5\r\nnodes\r\n*1\r\n"
        "*4\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$2\r\nip\r\n$1\r\nh\r\n", /* master without port */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = NULL;
        r = parse(bad[i]);
        CHECKF(r != NULL, "bad[%zu] does not parse as RESP", i);
        CHECKF(sh_redis_slots_from_reply(r, &m) == SH_SLOTS_EPROTO && m == NULL, "bad[%zu] accepted", i);
        freeReplyObject(r);
    }
    CHECK_INT(sh_redis_slots_from_reply(NULL, &m), SH_SLOTS_EPROTO);
    sh_redis_slots_free(NULL);
}

/* A hostile or broken node's map: one master per slot, 16384 masters. The
 * process would open 16384 connections (and building the map was quadratic:
 * seconds, long enough for the loop-stall watchdog to abort). Refused with
 * SH_SLOTS_ETOOMANY beyond SH_REDIS_MASTERS_MAX; exactly that many is fine. */
static void test_too_many_masters(void)
{
    for (int masters = SH_REDIS_MASTERS_MAX; masters <= SH_REDIS_SLOTS; masters += SH_REDIS_SLOTS - SH_REDIS_MASTERS_MAX) {
        size_t cap = 64 + (size_t)masters * 64, len = 0;
        char *resp = malloc(cap);
        CHECK(resp != NULL);
        if (!resp) return;
        len += (size_t)snprintf(resp + len, cap - len, "*%d\r\n", masters);
        for (int i = 0; i < masters; i++)
            len += (size_t)snprintf(resp + len, cap - len,
                                    "*3\r\n:%d\r\n:%d\r\n*2\r\n$1\r\nh\r\n:%d\r\n", i, i,
                                    1 + i);
        redisReply *r = parse(resp);
        free(resp);
        CHECK(r != NULL);
        sh_redis_slots *m = NULL;
        int rc = sh_redis_slots_from_reply(r, &m);
        freeReplyObject(r);
        if (masters <= SH_REDIS_MASTERS_MAX) {
            CHECK_INT(rc, 0);
            CHECK_INT(sh_redis_slots_nodes(m), SH_REDIS_MASTERS_MAX);
        } else {
            CHECK_INT(rc, SH_SLOTS_ETOOMANY);
            CHECK(m == NULL);
        }
        sh_redis_slots_free(m);
    }
}

/* ---- routing decisions ----------------------------------------------------- */

/* sh_redis_command_slot of a NULL-terminated list of C strings. */
static int route_of(const char *first, ...)
{
    const char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 32; a = va_arg(ap, const char *)) argv[argc++] = a;
    va_end(ap);
    return sh_redis_command_slot(argc, argv, NULL);
}

#define R(...) route_of(__VA_ARGS__, (const char *)NULL)

static void test_routing(void)
{
    int foo = (int)slot_of("foo"), bar = (int)slot_of("bar");
    /* one key, first argument; names are case-insensitive */
    CHECK_INT(R("GET", "foo"), foo);
    CHECK_INT(R("get", "foo"), foo);
    CHECK_INT(R("SeT", "foo", "1", "EX", "10"), foo);
    CHECK_INT(R("HSET", "bar", "f", "v"), bar);
    CHECK_INT(R("SPUBLISH", "ws:fid:abc", "{}"), (int)slot_of("ws:fid:abc"));
    CHECK_INT(R("XADD", "{bar}:s", "*", "k", "v"), bar);
    /* the key after a subcommand */
    CHECK_INT(R("XGROUP", "CREATE", "foo", "g", "$"), foo);
    CHECK_INT(R("OBJECT", "ENCODING", "bar"), bar);
    /* every argument a key */
    CHECK_INT(R("DEL", "{u}a", "{u}b", "u"), (int)slot_of("u"));
    CHECK_INT(R("DEL", "foo", "bar"), SH_ROUTE_CROSSSLOT);
    CHECK_INT(R("MGET", "foo", "foo"), foo);
    CHECK_INT(R("EXISTS", "foo", "bar"), SH_ROUTE_CROSSSLOT);
    /* key/value pairs: the values do not count */
    CHECK_INT(R("MSET", "{t}1", "foo", "{t}2", "bar"), (int)slot_of("t"));
    CHECK_INT(R("MSET", "foo", "x", "bar", "y"), SH_ROUTE_CROSSSLOT);
    /* two keys */
    CHECK_INT(R("RENAME", "{a}x", "{a}y"), (int)slot_of("a"));
    CHECK_INT(R("LMOVE", "foo", "bar", "LEFT", "RIGHT"), SH_ROUTE_CROSSSLOT);
    /* a key count */
    CHECK_INT(R("EVAL", "return 1", "0"), SH_ROUTE_ANY);
    CHECK_INT(R("EVAL", "return 1", "1", "foo", "bar"), foo); /* bar is an argument */
    CHECK_INT(R("EVALSHA", "abc", "2", "foo", "bar"), SH_ROUTE_CROSSSLOT);
    CHECK_INT(R("FCALL", "f", "2", "{x}1", "{x}2", "arg"), (int)slot_of("x"));
    CHECK_INT(R("EVAL", "return 1", "5", "foo"), SH_ROUTE_ANY);  /* more keys than arguments */
    CHECK_INT(R("EVAL", "return 1", "-1", "foo"), SH_ROUTE_ANY); /* Redis says why */
    CHECK_INT(R("ZUNIONSTORE", "{z}d", "2", "{z}a", "{z}b", "WEIGHTS", "1", "2"),
              (int)slot_of("z"));
    CHECK_INT(R("ZUNIONSTORE", "foo", "1", "bar"), SH_ROUTE_CROSSSLOT); /* destination counts */
    CHECK_INT(R("ZINTER", "2", "foo", "foo", "WITHSCORES"), foo);
    CHECK_INT(R("LMPOP", "2", "foo", "bar", "LEFT"), SH_ROUTE_CROSSSLOT);
    /* XREAD: the first half after STREAMS */
    CHECK_INT(R("XREAD", "COUNT", "2", "STREAMS", "foo", "{foo}x", "0", "0"), foo);
    CHECK_INT(R("XREAD", "STREAMS", "foo", "bar", "0", "0"), SH_ROUTE_CROSSSLOT);
    CHECK_INT(R("XREADGROUP", "GROUP", "g", "c", "STREAMS", "bar", ">"), bar);
    /* no key: any master (a MOVED then redirects a command the table lacks) */
    CHECK_INT(R("PING"), SH_ROUTE_ANY);
    CHECK_INT(R("PUBLISH", "ch", "x"), SH_ROUTE_ANY);
    CHECK_INT(R("INFO", "server"), SH_ROUTE_ANY);
    CHECK_INT(R("GET"), SH_ROUTE_ANY); /* no argument: Redis answers the arity error */
    CHECK_INT(R("NOSUCHCOMMAND", "foo"), SH_ROUTE_ANY);
    CHECK_INT(sh_redis_command_slot(0, NULL, NULL), SH_ROUTE_ANY);
    /* binary-safe with lengths */
    const char *argv[] = {"GETxx", "a{\0b}c"};
    size_t lens[] = {3, 6};
    CHECK_INT(sh_redis_command_slot(2, argv, lens), (int)(sh_crc16("\0b", 2) & 16383));
}

/* ---- a real single-node cluster ------------------------------------------- */

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static void test_real_cluster(void)
{
    char dir[] = "/tmp/sh_slots_XXXXXX", port[16], busport[16];
    int p = free_port(), q = free_port(); /* the cluster bus needs a port too (else p + 10000) */
    if (access("/usr/bin/redis-server", X_OK) != 0 || p < 0 || !mkdtemp(dir)) {
        printf("skipping the real cluster check (no redis-server)\n");
        return;
    }
    snprintf(port, sizeof port, "%d", p);
    snprintf(busport, sizeof busport, "%d", q == p ? p + 1 : q);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl("/usr/bin/redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
              "--dir", dir, "--cluster-enabled", "yes", "--cluster-port", busport, "--save", "", "--appendonly", "no",
              (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    /* connect once it listens (no event to await from a plain child process) */
    redisContext *c = NULL;
    for (int i = 0; i < 500; i++) {
        c = redisConnect("127.0.0.1", p);
        if (c && !c->err) break;
        redisFree(c);
        c = NULL;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    CHECK(c != NULL);
    if (c) {
        redisReply *r = redisCommand(c, "CLUSTER ADDSLOTSRANGE 0 8191");
        CHECKF(r && r->type == REDIS_REPLY_STATUS, "%s", r ? r->str : c->errstr);
        freeReplyObject(r);
        const char *cmds[] = {"CLUSTER SLOTS", "CLUSTER SHARDS"};
        for (int k = 0; k < 2; k++) {
            sh_redis_slots *m = NULL;
            r = redisCommand(c, cmds[k]);
            CHECKF(r && sh_redis_slots_from_reply(r, &m) == 0, "%s: %s", cmds[k],
                   r && r->str ? r->str : "no reply");
            freeReplyObject(r);
            CHECK_INT(sh_redis_slots_assigned(m), 8192);
            const sh_redis_node *n = sh_redis_slots_lookup(m, 8191);
            /* a lone node may not know its own address yet: "" (ask the node that answered) */
            CHECKF(n && n->port == p && (!strcmp(n->host, "127.0.0.1") || !n->host[0]) &&
                       strlen(n->id) == 40,
                   "%s: %s:%d", cmds[k], n ? n->host : "-", n ? n->port : 0);
            CHECK(sh_redis_slots_lookup(m, 8192) == NULL);
            /* the server agrees on key slots */
            r = redisCommand(c, "CLUSTER KEYSLOT %s", "foo{{bar}}zap");
            CHECK(r && r->type == REDIS_REPLY_INTEGER && (unsigned)r->integer == slot_of("foo{{bar}}zap"));
            freeReplyObject(r);
            sh_redis_slots_free(m);
        }
        redisFree(c);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    char path[64];
    snprintf(path, sizeof path, "%s/nodes.conf", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_hashing();
    test_maps();
    test_too_many_masters();
    test_routing();
    test_real_cluster();
    return unit_done("redis_slots");
}
