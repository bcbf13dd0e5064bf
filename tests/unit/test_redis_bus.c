/* test_redis_bus.c — the Redis bus against a real redis-server.
 *
 * Starts /usr/bin/redis-server on a free port (found by binding port 0; or
 * argv[1] / $SH_TEST_REDIS_PORT), runs the bus on a libuv loop and counts
 * callbacks. Waits are "run the loop until a condition holds", bounded by a
 * failsafe timer; nothing sleeps. The server is killed (-9) and restarted on
 * the same port to exercise reconnects, and SIGSTOPped to hold replies back
 * deterministically.
 *
 * Build (from the repository root):
 *   gcc -g -Wall -Wextra -fsanitize=address,undefined -Isrc src/redis_bus.c src/log.c \
 *       tests/unit/test_redis_bus.c -lhiredis -luv -o /tmp/test_redis_bus
 * Exit 0 when every check passed. $SH_TEST_LOG=debug|info|warn|error sets the
 * bus's log level (default warn). */
#include "redis_bus.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

#define WAIT_MS 10000

static uv_loop_t loop;
static pid_t redis_pid = -1;
static int redis_port;
static int checks;

/* Kill the server we started (if any) and reap it. */
static void redis_kill(void)
{
    if (redis_pid <= 0) return;
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = -1;
}

#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
            redis_kill();                                                             \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* ---- redis-server ------------------------------------------------------- */

/* A TCP port nobody listens on right now (bind port 0, read it back). */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        perror("free_port");
        exit(1);
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* Start redis-server on redis_port in the foreground of a child process; it
 * dies with us. Readiness is observed through the bus, not awaited here. */
static void redis_start(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl("/usr/bin/redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
              "--save", "", "--appendonly", "no", "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    redis_pid = pid;
}

/* ---- waiting ------------------------------------------------------------- */

static uv_timer_t failsafe;
static int timed_out;

/* The failsafe fired: the awaited condition did not come in time. */
static void failsafe_cb(uv_timer_t *t)
{
    (void)t;
    timed_out = 1;
}

/* Run the loop until pred(ctx) holds; 0, or -1 after WAIT_MS. */
static int await_pred(int (*pred)(void *), void *ctx)
{
    timed_out = 0;
    uv_timer_start(&failsafe, failsafe_cb, WAIT_MS, 0);
    while (!pred(ctx) && !timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&failsafe);
    return pred(ctx) ? 0 : -1;
}

/* Run the loop until *counter >= target; 0, or -1 after WAIT_MS. */
static int await_count(int *counter, int target)
{
    timed_out = 0;
    uv_timer_start(&failsafe, failsafe_cb, WAIT_MS, 0);
    while (*counter < target && !timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&failsafe);
    return *counter >= target ? 0 : -1;
}

/* ---- state callback ------------------------------------------------------- */

struct state_rec {
    int ups;   /* on_state(1) calls */
    int downs; /* on_state(0) calls */
    int last;  /* last value */
};

/* on_state: count transitions into the state_rec at arg. */
static void on_state(void *arg, int up)
{
    struct state_rec *st = arg;
    if (up) st->ups++; else st->downs++;
    st->last = up;
}

/* ---- commands ----------------------------------------------------------- */

struct box {
    int done;            /* callback count */
    int type;            /* reply type, -1 when reply was NULL */
    long long integer;   /* integer reply, or element[1] of a 2-array */
    char str[16384];     /* string / status / error reply bytes */
    size_t len;          /* their length */
    char err[32];        /* errstr when the reply was NULL */
};

/* Reply callback: copy what the checks need into the box at arg. */
static void box_cb(void *arg, const redisReply *r, const char *errstr)
{
    struct box *bx = arg;
    bx->done++;
    if (!r) {
        bx->type = -1;
        snprintf(bx->err, sizeof bx->err, "%s", errstr ? errstr : "(null)");
        return;
    }
    bx->type = r->type;
    bx->integer = r->integer;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_INTEGER)
        bx->integer = r->element[1]->integer;
    if (r->str) {
        bx->len = r->len < sizeof bx->str - 1 ? r->len : sizeof bx->str - 1;
        memcpy(bx->str, r->str, bx->len);
        bx->str[bx->len] = '\0';
    }
}

/* Run one command to completion; the reply lands in *bx. */
static void run(sh_redis_bus *b, struct box *bx, int argc, const char **argv, const size_t *lens)
{
    memset(bx, 0, sizeof *bx);
    int rc = sh_redis_command(b, argc, argv, lens, box_cb, bx, NULL);
    if (rc != 0) fprintf(stderr, "command %s: %s\n", argv[0], sh_redis_strerror(rc));
    CHECK(rc == 0);
    CHECK(await_count(&bx->done, 1) == 0);
    CHECK(bx->done == 1);
}

/* PUBSUB NUMSUB <channel> → the count. */
static long long numsub(sh_redis_bus *b, const char *ch)
{
    static struct box bx;
    run(b, &bx, 3, (const char *[]){"PUBSUB", "NUMSUB", ch}, NULL);
    CHECK(bx.type == REDIS_REPLY_ARRAY);
    return bx.integer;
}

/* PUBLISH channel payload[0..len) → receivers. */
static long long publish(sh_redis_bus *b, const char *ch, const char *payload, size_t len)
{
    static struct box bx;
    run(b, &bx, 3, (const char *[]){"PUBLISH", ch, payload},
        (const size_t[]){7, strlen(ch), len});
    CHECK(bx.type == REDIS_REPLY_INTEGER);
    return bx.integer;
}

/* How many SUBSCRIBE commands the server has executed (INFO commandstats). */
static int subscribe_calls(sh_redis_bus *b)
{
    static struct box bx;
    run(b, &bx, 2, (const char *[]){"INFO", "commandstats"}, NULL);
    const char *p = strstr(bx.str, "cmdstat_subscribe:calls=");
    return p ? atoi(p + strlen("cmdstat_subscribe:calls=")) : 0;
}

/* CLIENT LIST has exactly `n` connections, and ours are named <name>-cmd and
 * <name>-sub0 .. <name>-sub<K-1> (K = the bus's subscriber connections). */
static void check_client_list(sh_redis_bus *b, const char *name, int n)
{
    sh_redis_stats stats;
    sh_redis_bus_stats(b, &stats);
    static struct box bx;
    char want[128];
    run(b, &bx, 2, (const char *[]){"CLIENT", "LIST"}, NULL);
    CHECK(bx.type == REDIS_REPLY_STRING);
    int lines = 0;
    for (const char *p = bx.str; *p; p++)
        if (*p == '\n') lines++;
    if (lines != n) fprintf(stderr, "CLIENT LIST:\n%s", bx.str);
    CHECK(lines == n);
    snprintf(want, sizeof want, " name=%s-cmd ", name);
    CHECK(strstr(bx.str, want) != NULL);
    for (unsigned i = 0; i < stats.sub_connections; i++) {
        snprintf(want, sizeof want, " name=%s-sub%u ", name, i);
        CHECK(strstr(bx.str, want) != NULL);
    }
}

/* ---- subscriptions --------------------------------------------------------- */

struct subrec;
typedef void (*sub_action)(struct subrec *r);

struct subrec {
    int id;               /* for the delivery order log */
    sh_redis_bus *bus;    /* for actions that subscribe */
    sh_redis_sub *sub;    /* the handle */
    int confirms;         /* on_confirm calls */
    int confirm_err;      /* last err */
    int msgs;             /* on_msg calls */
    char chan[64];        /* last channel */
    char last[256];       /* last payload */
    size_t last_len;
    sub_action action;    /* run inside on_msg, once */
};

static int order[256];
static int norder;

/* on_msg: record the message and the delivery order; run the action once. */
static void rec_msg(void *arg, const char *ch, size_t chlen, const char *p, size_t n)
{
    struct subrec *r = arg;
    r->msgs++;
    snprintf(r->chan, sizeof r->chan, "%.*s", (int)chlen, ch);
    r->last_len = n < sizeof r->last ? n : sizeof r->last;
    memcpy(r->last, p, r->last_len);
    if (norder < 256) order[norder++] = r->id;
    if (r->action) {
        sub_action a = r->action;
        r->action = NULL;
        a(r);
    }
}

/* on_confirm: count and keep err. */
static void rec_confirm(void *arg, int err)
{
    struct subrec *r = arg;
    r->confirms++;
    r->confirm_err = err;
}

/* Subscribe r to ch; returns sh_redis_subscribe's result. */
static int sub(sh_redis_bus *b, struct subrec *r, int id, const char *ch)
{
    memset(r, 0, sizeof *r);
    r->id = id;
    r->bus = b;
    return sh_redis_subscribe(b, ch, strlen(ch), rec_msg, rec_confirm, r, &r->sub);
}

/* The bus has no channel left (every UNSUBSCRIBE confirmed). */
static int pred_no_channels(void *b) { return sh_redis_bus_channels(b) == 0; }

/* ---- tests ---------------------------------------------------------------- */

static void test_parse_url(void)
{
    sh_redis_addr a;
    CHECK(sh_redis_parse_url("redis://127.0.0.1:6379", &a) == 0);
    CHECK(!a.is_unix && strcmp(a.host, "127.0.0.1") == 0 && a.port == 6379 && a.db == -1);
    CHECK(a.password[0] == '\0' && a.user[0] == '\0');
    CHECK(sh_redis_parse_url("redis://:p%40ss:w@h.example:7000/5", &a) == 0);
    CHECK(strcmp(a.password, "p@ss:w") == 0 && a.user[0] == '\0');
    CHECK(strcmp(a.host, "h.example") == 0 && a.port == 7000 && a.db == 5);
    CHECK(sh_redis_parse_url("redis://alice:secret@localhost", &a) == 0);
    CHECK(strcmp(a.user, "alice") == 0 && strcmp(a.password, "secret") == 0 && a.port == 6379);
    CHECK(sh_redis_parse_url("redis://secret@localhost/", &a) == 0);
    CHECK(strcmp(a.password, "secret") == 0 && a.db == -1);
    CHECK(sh_redis_parse_url("redis://[::1]:6380/0", &a) == 0);
    CHECK(strcmp(a.host, "::1") == 0 && a.port == 6380 && a.db == 0);
    CHECK(sh_redis_parse_url("unix:///run/redis/redis.sock", &a) == 0);
    CHECK(a.is_unix && strcmp(a.path, "/run/redis/redis.sock") == 0);
    const char *bad[] = {NULL, "", "http://x:1", "redis://", "redis://:1", "redis://h:0",
                         "redis://h:65536", "redis://h:12x", "redis://h:1/x", "redis://h:1/1/2",
                         "redis://h:", "redis://:%zz@h", "redis://:%00@h", "redis://[::1",
                         "redis://[::1]x", "unix://", "unix://relative", "redis://a b:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sh_redis_parse_url(bad[i], &a);
        if (rc != SH_REDIS_EBADURL) fprintf(stderr, "accepted bad URL %s\n", bad[i] ? bad[i] : "NULL");
        CHECK(rc == SH_REDIS_EBADURL);
    }
    CHECK(strcmp(sh_redis_strerror(SH_REDIS_EUNAVAILABLE), "unavailable") == 0);
}

/* Cluster seed lists: host:port or redis:// URLs, comma-separated. */
static void test_parse_seeds(void)
{
    sh_redis_addr s[4];
    CHECK(sh_redis_parse_seeds("127.0.0.1:7000", s, 4) == 1);
    CHECK(strcmp(s[0].host, "127.0.0.1") == 0 && s[0].port == 7000 && !s[0].password[0]);
    CHECK(sh_redis_parse_seeds(" a:1, b:2 ,[::1]:3,", s, 4) == 3);
    CHECK(strcmp(s[0].host, "a") == 0 && s[0].port == 1 && strcmp(s[1].host, "b") == 0 &&
          s[1].port == 2 && strcmp(s[2].host, "::1") == 0 && s[2].port == 3);
    CHECK(sh_redis_parse_seeds("redis://u:p%40@h:7001,h2", s, 4) == 2);
    CHECK(strcmp(s[0].user, "u") == 0 && strcmp(s[0].password, "p@") == 0 && s[0].port == 7001);
    CHECK(strcmp(s[1].host, "h2") == 0 && s[1].port == 6379);
    CHECK(sh_redis_parse_seeds("a:1,b:2,c:3", s, 2) == 3); /* all counted, max stored */
    /* a bus takes SH_REDIS_CLUSTER_SEEDS_MAX: one more is refused with a reason, not
     * silently left out */
    char list[2048] = "", err[256];
    for (int i = 1; i <= SH_REDIS_CLUSTER_SEEDS_MAX; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%sh:%d", i > 1 ? "," : "", i);
    CHECK(sh_redis_check_seeds(list, err, sizeof err) == 0);
    strcat(list, ",h:65");
    CHECK(sh_redis_check_seeds(list, err, sizeof err) == -1 && strstr(err, "65 seed nodes, at most 64"));
    sh_redis_opts so = {.cluster = list};
    sh_redis_bus *sb = NULL;
    CHECK(sh_redis_bus_new(&loop, &so, &sb) == SH_REDIS_EBADURL && sb == NULL);
    CHECK(sh_redis_check_seeds("a:0", err, sizeof err) == -1 && strstr(err, "expected host:port"));
    const char *bad[] = {NULL, "", ",", " , ", "a:0", "a:1,b:x", "redis://h:1/2",
                         "unix:///tmp/s", "a b:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sh_redis_parse_seeds(bad[i], s, 4);
        if (rc != SH_REDIS_EBADURL) fprintf(stderr, "accepted bad seeds %s\n", bad[i] ? bad[i] : "NULL");
        CHECK(rc == SH_REDIS_EBADURL);
    }
    CHECK(strstr(sh_redis_strerror(SH_REDIS_ECROSSSLOT), "CROSSSLOT") != NULL);
}

/* sh_redis_bus_new refuses bad arguments synchronously. */
static void test_new_errors(void)
{
    sh_redis_bus *b = NULL;
    sh_redis_opts o = {.url = "redis://nope"};
    o.url = "redis//x";
    CHECK(sh_redis_bus_new(&loop, &o, &b) == SH_REDIS_EBADURL && b == NULL);
    o.url = NULL;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == SH_REDIS_EINVAL);
    o.url = "redis://127.0.0.1:1";
    o.client_name = "has space";
    CHECK(sh_redis_bus_new(&loop, &o, &b) == SH_REDIS_EINVAL && b == NULL);
    o.client_name = NULL;
    o.url = NULL;
    o.cluster = "127.0.0.1:1,nope:x"; /* a bad seed list, with no url needed */
    CHECK(sh_redis_bus_new(&loop, &o, &b) == SH_REDIS_EBADURL && b == NULL);
}

/* Round trips, error replies, reserved commands, cancel. */
static void test_commands(sh_redis_bus *b)
{
    static struct box bx, cancelled, after;
    const char val[] = "v\0a\xffl";
    run(b, &bx, 3, (const char *[]){"SET", "k1", val}, (const size_t[]){3, 2, sizeof val});
    CHECK(bx.type == REDIS_REPLY_STATUS && strcmp(bx.str, "OK") == 0);
    run(b, &bx, 2, (const char *[]){"GET", "k1"}, NULL);
    CHECK(bx.type == REDIS_REPLY_STRING && bx.len == sizeof val && memcmp(bx.str, val, sizeof val) == 0);
    /* an error reply is a reply, not a failure */
    run(b, &bx, 2, (const char *[]){"INCR", "k1"}, NULL);
    CHECK(bx.type == REDIS_REPLY_ERROR && bx.err[0] == '\0');
    /* the bus owns the subscribe family */
    CHECK(sh_redis_command(b, 2, (const char *[]){"subscribe", "x"}, NULL, box_cb, &bx, NULL) == SH_REDIS_EINVAL);
    CHECK(sh_redis_command(b, 0, NULL, NULL, box_cb, &bx, NULL) == SH_REDIS_EINVAL);
    /* cancel: the reply comes (before the next one) and is dropped */
    sh_redis_cmd *c = NULL;
    memset(&cancelled, 0, sizeof cancelled);
    CHECK(sh_redis_command(b, 2, (const char *[]){"GET", "k1"}, NULL, box_cb, &cancelled, &c) == 0);
    CHECK(c != NULL);
    sh_redis_cmd_cancel(c);
    run(b, &after, 1, (const char *[]){"PING"}, NULL);
    CHECK(after.type == REDIS_REPLY_STATUS && strcmp(after.str, "PONG") == 0);
    CHECK(cancelled.done == 0);
}

static struct subrec A, B, C, D, S1, S2;

/* C's action: leave, and add D to the same channel from inside delivery. */
static void act_c(struct subrec *r)
{
    sh_redis_unsubscribe(r->sub);
    r->sub = NULL;
    CHECK(sub(r->bus, &D, 4, "ch1") == 1); /* already confirmed: fast path */
}

/* A's action: drop B, which comes later in this very delivery. */
static void act_a(struct subrec *r)
{
    (void)r;
    sh_redis_unsubscribe(B.sub);
    B.sub = NULL;
}

/* Subscribe/confirm/publish, sharing, changes during delivery, UNSUBSCRIBE. */
static void test_pubsub(sh_redis_bus *b)
{
    const char payload[] = "{\"id\":\"1\",\"status\":\"\xe5\xb7\xb2\xe5\xae\x8c\xe6\x88\x90\"}\0tail";
    CHECK(sub(b, &A, 1, "ch1") == 0);
    CHECK(A.confirms == 0); /* never synchronously */
    CHECK(await_count(&A.confirms, 1) == 0 && A.confirm_err == 0);
    CHECK(publish(b, "ch1", payload, sizeof payload) == 1);
    CHECK(await_count(&A.msgs, 1) == 0);
    CHECK(A.last_len == sizeof payload && memcmp(A.last, payload, sizeof payload) == 0);
    CHECK(strcmp(A.chan, "ch1") == 0);

    /* second sub, same channel: no second SUBSCRIBE, both get messages */
    CHECK(sub(b, &B, 2, "ch1") == 1);
    CHECK(numsub(b, "ch1") == 1);
    CHECK(subscribe_calls(b) == 1); /* one SUBSCRIBE on the server, for two subs */
    norder = 0;
    CHECK(publish(b, "ch1", "two", 3) == 1);
    CHECK(await_count(&B.msgs, 1) == 0);
    CHECK(A.msgs == 2 && norder == 2 && order[0] == 1 && order[1] == 2);
    CHECK(B.confirms == 0 && memcmp(B.last, "two", 3) == 0);

    /* C unsubscribes itself and subscribes D during delivery: D misses it */
    CHECK(sub(b, &C, 3, "ch1") == 1);
    C.action = act_c;
    norder = 0;
    CHECK(publish(b, "ch1", "three", 5) == 1);
    CHECK(await_count(&C.msgs, 1) == 0);
    CHECK(norder == 3 && order[0] == 1 && order[1] == 2 && order[2] == 3 && D.msgs == 0);
    norder = 0;
    CHECK(publish(b, "ch1", "four", 4) == 1);
    CHECK(await_count(&D.msgs, 1) == 0);
    CHECK(norder == 3 && order[0] == 1 && order[1] == 2 && order[2] == 4 && C.msgs == 1);

    /* A drops B (later in the same delivery): B does not get it */
    A.action = act_a;
    norder = 0;
    CHECK(publish(b, "ch1", "five", 4) == 1);
    CHECK(await_count(&D.msgs, 2) == 0);
    CHECK(norder == 2 && order[0] == 1 && order[1] == 4 && B.msgs == 3);

    /* last subs leave → UNSUBSCRIBE → NUMSUB 0 */
    sh_redis_unsubscribe(A.sub);
    CHECK(sh_redis_bus_channels(b) == 1);
    sh_redis_unsubscribe(D.sub);
    CHECK(await_pred(pred_no_channels, b) == 0);
    CHECK(numsub(b, "ch1") == 0);

    /* SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE in flight: only the last confirms */
    CHECK(sub(b, &S1, 5, "ch2") == 0);
    sh_redis_unsubscribe(S1.sub);
    CHECK(sub(b, &S2, 6, "ch2") == 0);
    CHECK(await_count(&S2.confirms, 1) == 0 && S2.confirm_err == 0);
    CHECK(S1.confirms == 0);
    CHECK(numsub(b, "ch2") == 1);
    CHECK(publish(b, "ch2", "x", 1) == 1);
    CHECK(await_count(&S2.msgs, 1) == 0 && S1.msgs == 0);
    CHECK(sh_redis_bus_channels(b) == 1); /* S2 stays for the reconnect test */
}

struct errstat { sh_redis_bus *b; int want; };

/* INFO errorstats shows at least want WRONGPASS errors. */
static int pred_wrongpass(void *x)
{
    struct errstat *e = x;
    static struct box bx;
    run(e->b, &bx, 2, (const char *[]){"INFO", "errorstats"}, NULL);
    const char *p = strstr(bx.str, "errorstat_WRONGPASS:count=");
    return p && atoi(p + strlen("errorstat_WRONGPASS:count=")) >= e->want;
}

/* sh_redis_bus_close completion: count. */
static void closed_cb(void *arg) { (*(int *)arg)++; }

/* AUTH (user:password and :password), SELECT, a refused password, an absent
 * server, an absent unix socket; closing buses that never came up. */
static void test_auth_and_unreachable(sh_redis_bus *b)
{
    static struct box bx;
    char url[160], name[64];
    struct state_rec st2 = {0}, st3 = {0}, st4 = {0}, st5 = {0}, st6 = {0};
    sh_redis_bus *b2, *b3, *b4, *b5, *b6;
    int closed = 0;

    run(b, &bx, 4, (const char *[]){"CONFIG", "SET", "requirepass", "s3cr:et"}, NULL);
    CHECK(bx.type == REDIS_REPLY_STATUS);

    snprintf(url, sizeof url, "redis://default:s3cr%%3Aet@127.0.0.1:%d/3", redis_port);
    snprintf(name, sizeof name, "shtest2-%d", (int)getpid());
    sh_redis_opts o = {.url = url, .client_name = name, .backoff_min_ms = 10,
                       .backoff_max_ms = 100, .on_state = on_state, .state_arg = &st2};
    CHECK(sh_redis_bus_new(&loop, &o, &b2) == 0);
    snprintf(url, sizeof url, "redis://:s3cr%%3Aet@127.0.0.1:%d", redis_port);
    o.client_name = "shtest3";
    o.state_arg = &st3;
    CHECK(sh_redis_bus_new(&loop, &o, &b3) == 0);
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d", redis_port);
    o.client_name = "shtest4";
    o.state_arg = &st4;
    CHECK(sh_redis_bus_new(&loop, &o, &b4) == 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", free_port()); /* nobody there */
    o.client_name = "shtest5";
    o.state_arg = &st5;
    CHECK(sh_redis_bus_new(&loop, &o, &b5) == 0);
    o.url = "unix:///nonexistent/redis.sock";
    o.client_name = "shtest6";
    o.state_arg = &st6;
    CHECK(sh_redis_bus_new(&loop, &o, &b6) == 0);

    CHECK(await_count(&st2.ups, 1) == 0);
    CHECK(await_count(&st3.ups, 1) == 0);
    run(b2, &bx, 2, (const char *[]){"CLIENT", "INFO"}, NULL);
    snprintf(url, sizeof url, " name=%s-cmd ", name);
    CHECK(strstr(bx.str, url) != NULL && strstr(bx.str, " db=3 ") != NULL);
    /* b4's handshakes are refused again and again (retries), it never comes up */
    struct errstat e = {b, 6};
    CHECK(await_pred(pred_wrongpass, &e) == 0);
    CHECK(st4.ups == 0 && !sh_redis_bus_up(b4));
    CHECK(st5.ups == 0 && st6.ups == 0 && !sh_redis_bus_up(b5) && !sh_redis_bus_up(b6));
    static struct box bx5;
    CHECK(sh_redis_command(b5, 1, (const char *[]){"PING"}, NULL, box_cb, &bx5, NULL) == SH_REDIS_EUNAVAILABLE);

    sh_redis_bus_close(b2, closed_cb, &closed);
    sh_redis_bus_close(b3, closed_cb, &closed);
    sh_redis_bus_close(b4, closed_cb, &closed);
    sh_redis_bus_close(b5, closed_cb, &closed);
    sh_redis_bus_close(b6, closed_cb, &closed);
    CHECK(closed == 0); /* never synchronously */
    CHECK(await_count(&closed, 5) == 0);
    CHECK(st2.downs == 0 && st3.downs == 0 && bx5.done == 0);

    run(b, &bx, 4, (const char *[]){"CONFIG", "SET", "requirepass", ""}, NULL);
    CHECK(bx.type == REDIS_REPLY_STATUS);
}

/* F17 and blocking commands: sh_redis_refusal, and sh_redis_command refusing
 * them synchronously (no callback, nothing sent: the next command answers at
 * once). */
static void test_refusal(sh_redis_bus *b)
{
    static struct box bx, never;
    struct { int argc; const char *argv[6]; const char *why_has; } refused[] = {
        {2, {"CLIENT", "REPLY", "OFF"}, "CLIENT REPLY changes the shared connection's state"},
        {3, {"client", "reply", "skip"}, "CLIENT REPLY"},
        {3, {"Client", "Tracking", "on"}, "CLIENT TRACKING"},
        {3, {"CLIENT", "SETNAME", "x"}, "CLIENT SETNAME"},
        {3, {"CLIENT", "PAUSE", "1000"}, "CLIENT PAUSE blocks"},
        {4, {"CLIENT", "KILL", "TYPE", "pubsub"}, "CLIENT KILL"},
        {2, {"HELLO", "3"}, "HELLO"},
        {1, {"hello"}, "HELLO"},
        {1, {"RESET"}, "RESET"},
        {2, {"select", "1"}, "SELECT"},
        {2, {"AUTH", "pw"}, "AUTH"},
        {1, {"QUIT"}, "QUIT"},
        {1, {"MULTI"}, "MULTI changes the shared connection's state"},
        {1, {"exec"}, "EXEC"},
        {1, {"DISCARD"}, "DISCARD"},
        {2, {"WATCH", "k"}, "WATCH"},
        {1, {"UNWATCH"}, "UNWATCH"},
        {1, {"READONLY"}, "READONLY"},
        {1, {"SYNC"}, "SYNC"},
        {3, {"PSYNC", "?", "-1"}, "PSYNC"},
        {3, {"REPLICAOF", "h", "1"}, "REPLICAOF"},
        {3, {"slaveof", "no", "one"}, "SLAVEOF"},
        {2, {"SHUTDOWN", "NOSAVE"}, "SHUTDOWN"},
        {3, {"DEBUG", "SLEEP", "1"}, "DEBUG"},
        {2, {"subscribe", "x"}, "SUBSCRIBE belongs to the bus"},
        {2, {"PSUBSCRIBE", "x*"}, "PSUBSCRIBE"},
        {2, {"SSUBSCRIBE", "x"}, "SSUBSCRIBE"},
        {1, {"sunsubscribe"}, "SUNSUBSCRIBE"},
        {1, {"MONITOR"}, "MONITOR"},
        {3, {"BLPOP", "q", "5"}, "BLPOP blocks the shared connection"},
        {3, {"brpop", "q", "0"}, "BRPOP"},
        {4, {"BRPOPLPUSH", "a", "b", "1"}, "BRPOPLPUSH"},
        {6, {"BLMOVE", "a", "b", "LEFT", "RIGHT", "1"}, "BLMOVE"},
        {5, {"BLMPOP", "1", "1", "a", "LEFT"}, "BLMPOP"},
        {3, {"BZPOPMIN", "z", "1"}, "BZPOPMIN"},
        {3, {"BZPOPMAX", "z", "1"}, "BZPOPMAX"},
        {5, {"BZMPOP", "1", "1", "z", "MIN"}, "BZMPOP"},
        {3, {"WAIT", "1", "100"}, "WAIT"},
        {4, {"WAITAOF", "1", "0", "100"}, "WAITAOF"},
        {6, {"XREAD", "COUNT", "1", "block", "0", "STREAMS"}, "XREAD BLOCK"},
        {6, {"XREADGROUP", "GROUP", "g", "c", "BLOCK", "10"}, "XREADGROUP BLOCK"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const char *why = sh_redis_refusal(refused[i].argc, refused[i].argv, NULL);
        if (!why || !strstr(why, refused[i].why_has) || !strstr(why, "refused"))
            fprintf(stderr, "%s %s: %s\n", refused[i].argv[0],
                    refused[i].argc > 1 ? refused[i].argv[1] : "", why ? why : "allowed");
        CHECK(why && strstr(why, refused[i].why_has) && strstr(why, "refused"));
        memset(&never, 0, sizeof never);
        CHECK(sh_redis_command(b, refused[i].argc, refused[i].argv, NULL, box_cb, &never, NULL) ==
              SH_REDIS_EINVAL);
    }
    struct { int argc; const char *argv[6]; } allowed[] = {
        {2, {"CLIENT", "ID"}}, {2, {"client", "info"}}, {2, {"CLIENT", "GETNAME"}},
        {1, {"CLIENT"}}, {2, {"GET", "multi"}}, {3, {"XREAD", "STREAMS", "block"}},
        {6, {"XREADGROUP", "GROUP", "block", "block", "STREAMS", "s"}},
        {4, {"XREAD", "COUNT", "1", "STREAMS"}}, {2, {"LPOP", "q"}}, {1, {"PING"}},
        {3, {"EVAL", "return 1", "0"}}, {2, {"PUBLISH", "c"}}, {1, {"BLPOPX"}}, {1, {"WAITX"}},
    };
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        const char *why = sh_redis_refusal(allowed[i].argc, allowed[i].argv, NULL);
        if (why) fprintf(stderr, "%s refused: %s\n", allowed[i].argv[0], why);
        CHECK(why == NULL);
    }
    /* binary-safe lengths: "CLIENT" + "REPLYX"[0..5) is CLIENT REPLY */
    CHECK(sh_redis_refusal(2, (const char *[]){"CLIENTX", "REPLYX"}, (const size_t[]){6, 5}) != NULL);
    CHECK(sh_redis_refusal(1, (const char *[]){"MULTI"}, (const size_t[]){4}) == NULL);
    CHECK(sh_redis_refusal(0, NULL, NULL) == NULL);

    /* the shared connection stays usable: what was refused never reached it */
    static struct box id1, id2;
    run(b, &id1, 2, (const char *[]){"CLIENT", "ID"}, NULL);
    CHECK(id1.type == REDIS_REPLY_INTEGER);
    run(b, &bx, 3, (const char *[]){"RPUSH", "refq", "x"}, NULL);
    run(b, &bx, 2, (const char *[]){"LPOP", "refq"}, NULL);
    CHECK(bx.type == REDIS_REPLY_STRING && strcmp(bx.str, "x") == 0);
    run(b, &id2, 2, (const char *[]){"CLIENT", "ID"}, NULL);
    CHECK(id2.integer == id1.integer); /* same connection, never reset */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(never.done == 0);
}

/* ---- flood (F13) ------------------------------------------------------------ */

/* A blocking hiredis context to the test's server (for what the bus refuses). */
static redisContext *direct(void)
{
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    CHECK(c && !c->err);
    return c;
}

/* Run one command on a direct context; CHECK it did not fail. */
static void direct_cmd(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    if (r && r->type == REDIS_REPLY_ERROR) fprintf(stderr, "%s: %s\n", argv[0], r->str);
    CHECK(r && r->type != REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

#define NOTHER 12
static struct subrec FA, FOTHER[NOTHER], FNEW;

static int sub_confirmed(struct subrec *r, int rc)
{
    if (rc == 1) return 1;
    CHECK(rc == 0);
    CHECK(await_count(&r->confirms, 1) == 0 && r->confirm_err == 0);
    return 1;
}

/* A publisher process floods `flood` with `mb` MiB of 64 KiB messages between
 * a "start" and an "end" message on each of the other channels, while our
 * loop is stalled (we wait for it without running the loop): Redis' pubsub
 * output buffer for the connection that carries `flood` overflows
 * (client-output-buffer-limit pubsub 256kb 128kb 5) and Redis closes it.
 * Checks: every channel on another subscriber connection got both messages;
 * the flooded connection comes back, re-subscribes and delivers again; the
 * loss is counted once. With K = 1 (SH_TEST_FLOOD_K=1: the old single
 * subscriber) no channel survives and the test fails. */
static void test_flood(void)
{
    const char *env = getenv("SH_TEST_FLOOD_K");
    unsigned k = env ? (unsigned)atoi(env) : SH_REDIS_SUB_CONNECTIONS_DEFAULT;
    char url[64], others[NOTHER][32];
    struct state_rec st = {0};
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    sh_redis_opts o = {.url = url, .client_name = "shflood", .sub_connections = k,
                       .backoff_min_ms = 1000, .backoff_max_ms = 1000,
                       .on_state = on_state, .state_arg = &st};
    sh_redis_bus *b;
    int closed = 0;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    CHECK(await_count(&st.ups, 1) == 0);

    redisContext *dc = direct();
    direct_cmd(dc, 4, (const char *[]){"CONFIG", "SET", "client-output-buffer-limit",
                                       "pubsub 256kb 128kb 5"}, NULL);

    const char *flood = "flood:A";
    unsigned fconn = sh_redis_bus_channel_conn(b, flood, strlen(flood));
    CHECK(sub_confirmed(&FA, sub(b, &FA, 100, flood)));
    int on_other = 0;
    for (int i = 0; i < NOTHER; i++) {
        snprintf(others[i], sizeof others[i], "job:%d", i);
        CHECK(sub_confirmed(&FOTHER[i], sub(b, &FOTHER[i], 101 + i, others[i])));
        if (sh_redis_bus_channel_conn(b, others[i], strlen(others[i])) != fconn) on_other++;
    }

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        redisContext *pc = redisConnect("127.0.0.1", redis_port);
        static char big[65536];
        memset(big, 'x', sizeof big);
        if (!pc || pc->err) _exit(2);
        for (int i = 0; i < NOTHER; i++)
            redisAppendCommand(pc, "PUBLISH %s start", others[i]);
        int n = 32 * 16; /* 32 MiB */
        for (int i = 0; i < n; i++)
            redisAppendCommand(pc, "PUBLISH %s %b", flood, big, sizeof big);
        for (int i = 0; i < NOTHER; i++)
            redisAppendCommand(pc, "PUBLISH %s end", others[i]);
        for (int i = 0; i < n + 2 * NOTHER; i++) {
            redisReply *r;
            if (redisGetReply(pc, (void **)&r) != REDIS_OK) _exit(3);
            freeReplyObject(r);
        }
        _exit(0);
    }
    int wst;
    CHECK(waitpid(pid, &wst, 0) == pid && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);

    /* our loop runs again: the flooded connection reads what the kernel kept,
     * then finds it closed */
    timed_out = 0;
    uv_timer_start(&failsafe, failsafe_cb, WAIT_MS, 0);
    while (sh_redis_bus_sub_drops(b) == 0 && !timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&failsafe);
    CHECK(sh_redis_bus_sub_drops(b) == 1);
    CHECK(st.downs == 1 && !sh_redis_bus_up(b));
    sh_redis_stats stats;
    sh_redis_bus_stats(b, &stats);
    CHECK(stats.sub_connections == k && stats.sub_ready == k - 1 && stats.cmd_ready);

    /* meanwhile (backoff 1 s): commands and the other connections work */
    static struct box bx;
    run(b, &bx, 1, (const char *[]){"PING"}, NULL);
    CHECK(bx.type == REDIS_REPLY_STATUS);
    char name[32];
    int tried_dead = 0, tried_live = 0;
    for (int i = 0; i < 64 && (!tried_dead || !tried_live); i++) {
        snprintf(name, sizeof name, "new:%d", i);
        int on_dead = sh_redis_bus_channel_conn(b, name, strlen(name)) == fconn;
        if (on_dead && !tried_dead) {
            tried_dead = 1;
            struct subrec dead;
            CHECK(sub(b, &dead, 200, name) == SH_REDIS_EUNAVAILABLE && dead.sub == NULL);
        } else if (!on_dead && !tried_live) {
            tried_live = 1;
            CHECK(sub_confirmed(&FNEW, sub(b, &FNEW, 201, name)));
        }
    }
    CHECK(tried_dead && tried_live == (k > 1));

    /* the channels on the other connections lost nothing */
    int kept = 0;
    for (int i = 0; i < NOTHER; i++) {
        if (sh_redis_bus_channel_conn(b, others[i], strlen(others[i])) == fconn) continue;
        CHECK(await_count(&FOTHER[i].msgs, 2) == 0);
        CHECK(FOTHER[i].msgs == 2 && memcmp(FOTHER[i].last, "end", 3) == 0);
        kept++;
    }
    printf("flood, K=%u: %d of %d other channels on other connections kept every message; "
           "the flooded channel got %d of 512 messages before its connection was closed\n",
           k, kept, NOTHER, FA.msgs);
    CHECK(kept == on_other && kept >= 1); /* K = 1: none */

    /* the flooded connection comes back with its channels */
    CHECK(await_count(&st.ups, 2) == 0);
    CHECK(sh_redis_bus_up(b) && sh_redis_bus_reconnects(b) == 1);
    int before = FA.msgs;
    CHECK(publish(b, flood, "again", 5) == 1);
    CHECK(await_count(&FA.msgs, before + 1) == 0 && memcmp(FA.last, "again", 5) == 0);
    CHECK(FA.confirms == 1); /* a live sub is not confirmed again */
    CHECK(sh_redis_bus_sub_drops(b) == 1);
    CHECK(stats.messages >= 2u * (unsigned)kept);

    /* consumer-reported drops are counted */
    sh_redis_sub_dropped(FA.sub, 3);
    sh_redis_bus_stats(b, &stats);
    CHECK(stats.messages_dropped == 3 && stats.sub_ready == k);

    direct_cmd(dc, 4, (const char *[]){"CONFIG", "SET", "client-output-buffer-limit",
                                       "pubsub 32mb 8mb 60"}, NULL);
    redisFree(dc);
    sh_redis_unsubscribe(FA.sub);
    for (int i = 0; i < NOTHER; i++) sh_redis_unsubscribe(FOTHER[i].sub);
    sh_redis_unsubscribe(FNEW.sub);
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
}

/* Drain: a 4 MiB burst (1024 messages of 4 KiB) queued while the loop was
 * stalled is consumed in fewer loop iterations than with one 16 KiB read per
 * readiness event (read_budget 1, hiredis' own behaviour). Prints both. */
static int drain_iterations(size_t budget, double *ms)
{
    char url[64];
    struct state_rec st = {0};
    static struct subrec R;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    sh_redis_opts o = {.url = url, .client_name = "shdrain", .sub_connections = 1,
                       .read_budget = budget, .on_state = on_state, .state_arg = &st};
    sh_redis_bus *b;
    int closed = 0, iters = 0;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    CHECK(await_count(&st.ups, 1) == 0);
    CHECK(sub_confirmed(&R, sub(b, &R, 300, "drain")));
    redisContext *dc = direct();
    static char payload[4096];
    memset(payload, 'd', sizeof payload);
    for (int i = 0; i < 1024; i++)
        redisAppendCommand(dc, "PUBLISH drain %b", payload, sizeof payload);
    for (int i = 0; i < 1024; i++) {
        redisReply *r;
        CHECK(redisGetReply(dc, (void **)&r) == REDIS_OK);
        freeReplyObject(r);
    }
    redisFree(dc);
    uint64_t t0 = uv_hrtime();
    timed_out = 0;
    uv_timer_start(&failsafe, failsafe_cb, WAIT_MS, 0);
    while (R.msgs < 1024 && !timed_out) {
        uv_run(&loop, UV_RUN_ONCE);
        iters++;
    }
    uv_timer_stop(&failsafe);
    *ms = (double)(uv_hrtime() - t0) / 1e6;
    CHECK(R.msgs == 1024);
    sh_redis_unsubscribe(R.sub);
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
    return iters;
}

/* ---- the subscriber connection's own reader of message pushes ------------ */

#define FR_N 1200                /* messages on fr:a */
#define FR_BIG (40 * 1024)        /* one bigger than the fast reader's 16 KiB buffer */

/* Message i of fr:a: "<i>:" then bytes that look like RESP (CRLF, "*3", "$7",
 * "message", NUL) in lengths that move every split point across 16 KiB reads. */
static size_t fr_payload(int i, char *out)
{
    static const char junk[] = "\r\n*3\r\n$7\r\nmessage\r\n$5\r\nfr:a\r\n\0$-1\r\n>";
    size_t n = (size_t)snprintf(out, 32, "%d:", i);
    size_t len = i == 600 ? FR_BIG : i == 601 ? 16384 : (size_t)(i * 37 % 701);
    for (size_t k = 0; k < len; k++)
        out[n + k] = junk[(k + (size_t)i) % (sizeof junk - 1)];
    return n + len;
}

static struct {
    int got_a, got_b, bad; /* in order and byte for byte; any mismatch counts in bad */
} FR;
static char fr_buf[FR_BIG + 64];

static void fr_msg(void *arg, const char *ch, size_t chlen, const char *p, size_t n)
{
    (void)arg;
    if (chlen == 4 && memcmp(ch, "fr:b", 4) == 0) {
        FR.got_b++;
        if (n != 3 || memcmp(p, "bbb", 3) != 0 || p[n] != '\0') FR.bad++;
        return;
    }
    size_t want = fr_payload(FR.got_a, fr_buf);
    if (chlen != 4 || memcmp(ch, "fr:a", 4) != 0 || ch[chlen] != '\0' || n != want ||
        memcmp(p, fr_buf, n) != 0 || p[n] != '\0')
        FR.bad++;
    FR.got_a++;
}

static void fr_confirm(void *arg, int err) { *(int *)arg = err ? -1 : 1; }

/* Messages queued in the socket while the loop does not run, read in 16 KiB chunks:
 * every split of a push (in its header, its lengths, its bytes, its CRLF), pushes
 * bigger than the reader's buffer, and a SUBSCRIBE confirmation among them. Each
 * arrives once, in order, byte for byte, NUL-terminated. */
static void test_fast_reader(void)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    struct state_rec st = {0};
    sh_redis_opts o = {.url = url, .client_name = "shfast", .sub_connections = 1,
                       .on_state = on_state, .state_arg = &st};
    sh_redis_bus *b;
    sh_redis_sub *sa, *sb;
    int ca = 0, cb = 0, closed = 0, expect_b = 0;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    CHECK(await_count(&st.ups, 1) == 0);
    CHECK(sh_redis_subscribe(b, "fr:a", 4, fr_msg, fr_confirm, &ca, &sa) == 0);
    CHECK(await_count(&ca, 1) == 0 && ca == 1);

    redisContext *dc = direct();
    char *buf = malloc(FR_BIG + 64);
    CHECK(buf != NULL);
    for (int i = 0; i < FR_N; i++) {
        if (i == FR_N / 2) { /* fr:b's SUBSCRIBE goes out now; its confirmation lands among the messages */
            CHECK(sh_redis_subscribe(b, "fr:b", 4, fr_msg, fr_confirm, &cb, &sb) == 0);
            for (int k = 0; k < 3; k++) uv_run(&loop, UV_RUN_NOWAIT);
        }
        size_t n = fr_payload(i, buf);
        redisReply *r = redisCommandArgv(dc, 3, (const char *[]){"PUBLISH", "fr:a", buf},
                                         (const size_t[]){7, 4, n});
        CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1);
        freeReplyObject(r);
        if (i >= FR_N / 2 && i % 7 == 0) {
            r = redisCommand(dc, "PUBLISH fr:b bbb");
            CHECK(r && r->type == REDIS_REPLY_INTEGER);
            expect_b += (int)r->integer; /* 1 once Redis ran the SUBSCRIBE */
            freeReplyObject(r);
        }
    }
    free(buf);
    redisFree(dc);
    CHECK(await_count(&FR.got_a, FR_N) == 0);
    CHECK(await_count(&cb, 1) == 0 && cb == 1);
    CHECK(await_count(&FR.got_b, expect_b) == 0);
    CHECK(FR.bad == 0 && FR.got_a == FR_N && FR.got_b == expect_b);
    sh_redis_unsubscribe(sa);
    sh_redis_unsubscribe(sb);
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
}

static void test_drain(void)
{
    double ms1, ms2;
    int one = drain_iterations(1, &ms1);
    int drained = drain_iterations(0, &ms2);
    printf("drain 4 MiB burst: %d loop iterations (%.1f ms) with one 16 KiB read per event, "
           "%d (%.1f ms) draining\n", one, ms1, drained, ms2);
    CHECK(drained * 4 <= one);
}

static struct subrec E, F;

/* kill -9 with a command and a subscription pending, then restart on the same
 * port: down, "closed", failed confirm, unavailable, up, re-subscribed. */
static void test_kill_restart(sh_redis_bus *b, struct state_rec *st, const char *name)
{
    static struct box pending, bx;
    /* hold the server so that a command and a subscription stay pending */
    CHECK(kill(redis_pid, SIGSTOP) == 0);
    memset(&pending, 0, sizeof pending);
    CHECK(sh_redis_command(b, 2, (const char *[]){"GET", "k1"}, NULL, box_cb, &pending, NULL) == 0);
    CHECK(sub(b, &E, 7, "ch3") == 0);
    /* let hiredis write both (a fresh socket is writable at once), so the
     * stopped server dies with unread input: the kernel answers with RST,
     * which libuv reports as a poll error (the adapter quirk) */
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    redis_kill();

    CHECK(await_count(&st->downs, 1) == 0);
    CHECK(await_count(&pending.done, 1) == 0);
    CHECK(pending.type == -1 && strcmp(pending.err, "closed") == 0);
    CHECK(await_count(&E.confirms, 1) == 0 && E.confirm_err == SH_REDIS_EUNAVAILABLE);
    CHECK(!sh_redis_bus_up(b) && st->last == 0);
    CHECK(sh_redis_command(b, 1, (const char *[]){"PING"}, NULL, box_cb, &bx, NULL) == SH_REDIS_EUNAVAILABLE);
    CHECK(sub(b, &F, 8, "ch4") == SH_REDIS_EUNAVAILABLE && F.sub == NULL);
    CHECK(sh_redis_bus_channels(b) == 1); /* ch2 (S2) survives; ch3 is gone */

    redis_start(); /* same port */
    CHECK(await_count(&st->ups, 2) == 0);
    CHECK(sh_redis_bus_up(b) && sh_redis_bus_reconnects(b) == 1);
    CHECK(numsub(b, "ch2") == 1);
    CHECK(publish(b, "ch2", "after-restart", 13) == 1);
    CHECK(await_count(&S2.msgs, 2) == 0);
    CHECK(S2.last_len == 13 && memcmp(S2.last, "after-restart", 13) == 0);
    CHECK(S2.confirms == 1 && E.msgs == 0);
    check_client_list(b, name, 1 + SH_REDIS_SUB_CONNECTIONS_DEFAULT);
}

static struct subrec G;

/* uv_walk callback: count handles. */
static void count_handle(uv_handle_t *h, void *arg)
{
    (void)h;
    (*(int *)arg)++;
}

/* Close with a pending command, a cancelled one, a pending subscription and a
 * live sub: every waiter answered, nothing left on the loop. */
static void test_close_pending(sh_redis_bus *b, struct state_rec *st)
{
    static struct box pending, cancelled;
    int closed = 0, ups = st->ups, downs = st->downs;
    CHECK(kill(redis_pid, SIGSTOP) == 0);
    memset(&pending, 0, sizeof pending);
    memset(&cancelled, 0, sizeof cancelled);
    CHECK(sh_redis_command(b, 2, (const char *[]){"GET", "k1"}, NULL, box_cb, &pending, NULL) == 0);
    sh_redis_cmd *c;
    CHECK(sh_redis_command(b, 1, (const char *[]){"PING"}, NULL, box_cb, &cancelled, &c) == 0);
    sh_redis_cmd_cancel(c);
    CHECK(sub(b, &G, 9, "ch5") == 0);
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(sh_redis_command(b, 1, (const char *[]){"PING"}, NULL, box_cb, &cancelled, NULL) == SH_REDIS_ECLOSED);
    CHECK(await_count(&closed, 1) == 0);
    CHECK(closed == 1);
    int handles = 0;
    uv_walk(&loop, count_handle, &handles);
    CHECK(handles == 1); /* only our failsafe timer: nothing of the bus is left */
    CHECK(pending.done == 1 && pending.type == -1 && strcmp(pending.err, "closed") == 0);
    CHECK(cancelled.done == 0);
    CHECK(G.confirms == 1 && G.confirm_err == SH_REDIS_ECLOSED);
    CHECK(st->ups == ups && st->downs == downs); /* no on_state after close */
    sh_redis_unsubscribe(S2.sub); /* orphaned live sub: still ours to release */
    redis_kill();
}

/* argv[1] or $SH_TEST_REDIS_PORT: the port for redis-server (default: a free one). */
/* ---- a cluster whose master changes address at every map ----------------- */

/* A fake cluster node (child process, hiredis' reader for requests): answers
 * CLUSTER SHARDS with one shard holding every slot, its master at
 * 127.0.0.1:<port that changes at each fetch, where nothing listens>, and
 * +OK to anything else (the handshake). A node that comes back at a new
 * address each time (a pod restarted elsewhere) must not grow the bus. */
static void fake_rotating_node(int lfd)
{
    int fetches = 0;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) continue;
        redisReader *rd = redisReaderCreate();
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) {
            void *req = NULL;
            redisReaderFeed(rd, buf, (size_t)n);
            while (redisReaderGetReply(rd, &req) == REDIS_OK && req) {
                const redisReply *r = req;
                char out[512];
                int len = snprintf(out, sizeof out, "+OK\r\n");
                if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                    strcasecmp(r->element[0]->str, "CLUSTER") == 0) {
                    char p[8];
                    int pl = snprintf(p, sizeof p, "%d", 1 + fetches++);
                    len = snprintf(out, sizeof out,
                                   "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n"
                                   "*1\r\n*8\r\n$4\r\nport\r\n$%d\r\n%s\r\n$2\r\nip\r\n"
                                   "$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
                                   "$6\r\nhealth\r\n$6\r\nonline\r\n", pl, p);
                }
                if (write(fd, out, (size_t)len) != len) break;
                freeReplyObject(req);
            }
        }
        redisReaderFree(rd);
        close(fd);
    }
}

/* Listen on 127.0.0.1:port (exits the test on failure). */
static int listen_on(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    CHECK(lfd >= 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 16) == 0);
    return lfd;
}

/* Two fake nodes in one child. Both answer CLUSTER SHARDS with a map of one
 * master, B, holding every slot. When a_frozen, A answers the handshake and
 * then never answers CLUSTER SHARDS (a frozen node: SIGSTOP, a black hole),
 * and B starts listening only once A has been asked. */
static void fake_two_nodes(int port_a, int port_b, int a_frozen)
{
    int la = listen_on(port_a), lb = a_frozen ? -1 : listen_on(port_b);
    struct pollfd p[8];
    int np = 1;
    p[0] = (struct pollfd){la, POLLIN, 0};
    if (lb >= 0) p[np++] = (struct pollfd){lb, POLLIN, 0};
    redisReader *rd[8] = {0};
    int is_b[8] = {0};
    for (;;) {
        if (poll(p, (nfds_t)np, -1) < 0) continue;
        for (int i = 0; i < np; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            if (p[i].fd == la || p[i].fd == lb) {
                int fd = accept(p[i].fd, NULL, NULL);
                if (fd >= 0 && np < 8) {
                    is_b[np] = p[i].fd == lb;
                    rd[np] = redisReaderCreate();
                    p[np++] = (struct pollfd){fd, POLLIN, 0};
                } else if (fd >= 0) {
                    close(fd);
                }
                continue;
            }
            char buf[4096];
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0) {
                close(p[i].fd);
                p[i].fd = -1; /* poll ignores it */
                continue;
            }
            void *req = NULL;
            redisReaderFeed(rd[i], buf, (size_t)n);
            while (redisReaderGetReply(rd[i], &req) == REDIS_OK && req) {
                const redisReply *r = req;
                char out[512];
                int len = snprintf(out, sizeof out, "+OK\r\n");
                if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                    strcasecmp(r->element[0]->str, "CLUSTER") == 0) {
                    if (!is_b[i] && a_frozen) { /* frozen: never answers; B opens */
                        if (lb < 0 && np < 8) {
                            lb = listen_on(port_b);
                            p[np++] = (struct pollfd){lb, POLLIN, 0};
                        }
                        len = 0;
                    } else {
                        char pb[8];
                        int pl = snprintf(pb, sizeof pb, "%d", port_b);
                        len = snprintf(out, sizeof out,
                                       "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n"
                                       "*1\r\n*6\r\n$4\r\nport\r\n$%d\r\n%s\r\n$2\r\nip\r\n"
                                       "$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n", pl, pb);
                    }
                }
                if (len && write(p[i].fd, out, (size_t)len) != len) break;
                freeReplyObject(req);
            }
        }
    }
}

static int pred_up(void *b) { return sh_redis_bus_up(b); }

/* A seed that never answers the map fetch does not keep the bus down when
 * another seed would answer (before: every later fetch waited for it). */
static void test_cluster_frozen_seed(void)
{
    int port_a = free_port(), port_b = free_port();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fake_two_nodes(port_a, port_b, 1);
        _exit(0);
    }
    char seeds[64];
    snprintf(seeds, sizeof seeds, "127.0.0.1:%d,127.0.0.1:%d", port_a, port_b);
    sh_redis_opts o = {.cluster = seeds, .backoff_min_ms = 10, .backoff_max_ms = 50,
                       .connect_timeout_ms = 300};
    sh_redis_bus *b = NULL;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    int ok = await_pred(pred_up, b);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(ok == 0);
    int closed = 0;
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
}

/* The first map names a master the bus has no connection to yet: the bus is
 * down until it connects, and a fetch is scheduled in case it never does.
 * Once the bus is up that fetch is dropped: a map fetched later, after a slot
 * moved, would have hidden the move from the MOVED answers (the flaky
 * resharding test: its stale-map step saw a fresh map). */
static int timer_fired;
static void mark_fired(uv_timer_t *t) { timer_fired = 1; (void)t; }

static void test_cluster_no_fetch_once_up(void)
{
    int port_a = free_port(), port_b = free_port();
    while (port_b == port_a) port_b = free_port();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fake_two_nodes(port_a, port_b, 0);
        _exit(0);
    }
    char seeds[32];
    snprintf(seeds, sizeof seeds, "127.0.0.1:%d", port_a);
    sh_redis_opts o = {.cluster = seeds, .backoff_min_ms = 10, .backoff_max_ms = 50};
    sh_redis_bus *b = NULL;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    int ok = await_pred(pred_up, b);
    sh_redis_stats st0, st1;
    sh_redis_bus_stats(b, &st0);
    /* longer than the 500 ms retry of a down bus: no fetch may happen meanwhile */
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    timer_fired = 0;
    uv_timer_start(&t, mark_fired, 800, 0);
    while (!timer_fired) uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    sh_redis_bus_stats(b, &st1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(ok == 0);
    if (st1.map_refreshes != st0.map_refreshes)
        fprintf(stderr, "cluster: %llu maps fetched after the bus came up\n",
                (unsigned long long)(st1.map_refreshes - st0.map_refreshes));
    CHECK(st0.map_refreshes >= 1 && st1.map_refreshes == st0.map_refreshes);
    int closed = 0;
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
}

static int pred_refreshes(void *b)
{
    sh_redis_stats st;
    sh_redis_bus_stats(b, &st);
    return st.map_refreshes >= 8;
}

static void test_cluster_node_churn(void)
{
    int port = free_port(), lfd = listen_on(port);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fake_rotating_node(lfd);
        _exit(0);
    }
    close(lfd);
    char seeds[64];
    snprintf(seeds, sizeof seeds, "127.0.0.1:%d", port);
    sh_redis_opts o = {.cluster = seeds, .backoff_min_ms = 10, .backoff_max_ms = 50};
    sh_redis_bus *b = NULL;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0);
    int ok = await_pred(pred_refreshes, b);
    sh_redis_stats st;
    sh_redis_bus_stats(b, &st);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(ok == 0);
    /* the seed, the current master, and at most one address on its way out */
    if (st.nodes > 3)
        fprintf(stderr, "cluster node churn: %u nodes after %llu maps\n", st.nodes,
                (unsigned long long)st.map_refreshes);
    CHECK(st.nodes <= 3);
    int closed = 0;
    sh_redis_bus_close(b, closed_cb, &closed);
    CHECK(await_count(&closed, 1) == 0);
}

int main(int argc, char **argv)
{
    const char *lvl = getenv("SH_TEST_LOG");
    sh_log_set_level(lvl && sh_log_parse_level(lvl) >= 0 ? (enum sh_log_level)sh_log_parse_level(lvl)
                                                        : SH_LOG_WARN);
    const char *port = argc > 1 ? argv[1] : getenv("SH_TEST_REDIS_PORT");
    redis_port = port ? atoi(port) : free_port();
    if (access("/usr/bin/redis-server", X_OK) != 0) {
        fprintf(stderr, "test_redis_bus: /usr/bin/redis-server is required (apt-get install redis-server)\n");
        return 1;
    }

    test_parse_url();
    test_parse_seeds();
    CHECK(uv_loop_init(&loop) == 0);
    uv_timer_init(&loop, &failsafe);
    test_new_errors();
    test_cluster_node_churn();
    test_cluster_frozen_seed();
    test_cluster_no_fetch_once_up();

    /* the bus starts before the server: it must retry until it is there */
    char url[64], name[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    snprintf(name, sizeof name, "shtest-%d", (int)getpid());
    struct state_rec st = {0};
    sh_redis_opts o = {.url = url, .client_name = name, .backoff_min_ms = 10,
                       .backoff_max_ms = 100, .on_state = on_state, .state_arg = &st};
    sh_redis_bus *b = NULL;
    CHECK(sh_redis_bus_new(&loop, &o, &b) == 0 && b != NULL);
    CHECK(!sh_redis_bus_up(b));
    redis_start();
    CHECK(await_count(&st.ups, 1) == 0);
    /* a first attempt refused before the server was there is reported once */
    CHECK(sh_redis_bus_up(b) && sh_redis_bus_reconnects(b) == 0 && st.downs <= 1);

    check_client_list(b, name, 1 + SH_REDIS_SUB_CONNECTIONS_DEFAULT);
    test_commands(b);
    test_pubsub(b);
    test_refusal(b);
    test_flood();
    test_fast_reader();
    test_drain();
    test_auth_and_unreachable(b);
    test_kill_restart(b, &st, name);
    test_close_pending(b, &st);

    uv_close((uv_handle_t *)&failsafe, NULL);
    CHECK(uv_run(&loop, UV_RUN_DEFAULT) == 0);
    CHECK(uv_loop_close(&loop) == 0);
    printf("test_redis_bus: %d checks passed (redis on port %d)\n", checks, redis_port);
    return 0;
}
