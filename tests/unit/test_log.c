/* test_log.c — src/log.c: JSON and text lines with fields, JSON string
 * escaping (control characters, invalid UTF-8), cut lines, the access line,
 * buffering on the loop (flushed before the loop blocks, at 64 KiB, on detach,
 * and on abort()).
 *
 * Output goes to a temporary file (sh_log_set_fd), read back after each step. */
#include "unit.h"
#include "config.h"
#include "log.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <float.h>
#include <limits.h>
#include <sys/types.h>
#include <math.h>

#include <uv.h>

static int fd;

/* Everything written since the last call. */
static char *take(void)
{
    static char *buf;
    static off_t done;
    off_t end = lseek(fd, 0, SEEK_END);
    free(buf);
    buf = calloc(1, (size_t)(end - done) + 1);
    ssize_t n = pread(fd, buf, (size_t)(end - done), done);
    if (n > 0)
        done += n;
    return buf;
}

/* The part after the timestamp: JSON lines start {"ts":"…", text lines with
 * the time then a space. */
static const char *after_ts(const char *line)
{
    const char *p = strstr(line, "Z\"");
    if (line[0] == '{' && p)
        return p + 2;
    p = strchr(line, ' ');
    return p ? p + 1 : line;
}

static void test_json_fields(void)
{
    sh_log_set_format(SH_LOG_JSON);
    sh_log_kv(SH_LOG_WARN, "abc", "hello \"x\"\n\t\x01\\", "code", SH_LOG_INT, 1000, "peer",
              SH_LOG_STR, "1.2.3.4:5", "ok", SH_LOG_BOOL, 7, "big", SH_LOG_U64,
              (uint64_t)UINT64_MAX, "neg", SH_LOG_I64, (int64_t)-5, "d", SH_LOG_DBL, 1.5,
              "nothing", SH_LOG_STR, (const char *)NULL, NULL);
    const char *out = take();
    CHECKF(strncmp(out, "{\"ts\":\"20", 9) == 0, "%s", out);
    CHECK_STR(after_ts(out),
              ",\"level\":\"warn\",\"conn\":\"abc\",\"msg\":\"hello \\\"x\\\"\\n\\t\\u0001\\\\\","
              "\"code\":1000,\"peer\":\"1.2.3.4:5\",\"ok\":true,\"big\":18446744073709551615,"
              "\"neg\":-5,\"d\":1.500,\"nothing\":null}\n");
    sh_log(SH_LOG_INFO, NULL, "n=%d", 3);
    CHECK_STR(after_ts(take()), ",\"level\":\"info\",\"conn\":null,\"msg\":\"n=3\"}\n");
}

static void test_json_utf8(void)
{
    sh_log_set_format(SH_LOG_JSON);
    /* valid: é € U+1F600 pass through; 0x7f escaped */
    sh_log_kv(SH_LOG_INFO, NULL, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x7f", NULL);
    CHECK_STR(after_ts(take()), ",\"level\":\"info\",\"conn\":null,"
                                "\"msg\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\u007f\"}\n");
    /* invalid: a stray continuation, 0xff, overlong C0 AF, a surrogate ED A0 80,
     * a code point past U+10FFFF (F4 90 80 80), a truncated sequence at the end */
    sh_log_kv(SH_LOG_INFO, NULL, "a\x80" "b\xff" "c\xc0\xaf" "d\xed\xa0\x80" "e\xf4\x90\x80\x80"
              "f\xe2\x82", NULL);
    CHECK_STR(after_ts(take()),
              ",\"level\":\"info\",\"conn\":null,\"msg\":\"a\\ufffdb\\ufffdc\\ufffd\\ufffd"
              "d\\ufffd\\ufffd\\ufffde\\ufffd\\ufffd\\ufffd\\ufffdf\\ufffd\\ufffd\"}\n");
    /* field values and keys are escaped the same way */
    sh_log_kv(SH_LOG_INFO, NULL, "m", "reason", SH_LOG_STR, "bye\xfe\n", NULL);
    CHECK_STR(after_ts(take()), ",\"level\":\"info\",\"conn\":null,\"msg\":\"m\","
                                "\"reason\":\"bye\\ufffd\\n\"}\n");
}

static void test_text(void)
{
    sh_log_set_format(SH_LOG_TEXT);
    sh_log_kv(SH_LOG_INFO, "c1", "closed\nnow", "code", SH_LOG_INT, 1001, "reason", SH_LOG_STR,
              "going away", "empty", SH_LOG_STR, "", "none", SH_LOG_STR, (const char *)NULL,
              "q", SH_LOG_STR, "a\"b=c", "ok", SH_LOG_BOOL, 0, NULL);
    CHECK_STR(after_ts(take()), "info  [c1] closed now code=1001 reason=\"going away\" "
                                "empty=\"\" none=- q=\"a\\\"b=c\" ok=false\n");
    sh_log(SH_LOG_ERROR, NULL, "plain %s", "message");
    CHECK_STR(after_ts(take()), "error [-] plain message\n");
    /* a client's close reason in the message: no terminal escapes or bells reach the log */
    sh_log(SH_LOG_INFO, "c2", "websocket closed 1000 %s", "\x1b[31mRED\x07\x7f\tx\x01\xc3\xa9");
    CHECK_STR(after_ts(take()), "info  [c2] websocket closed 1000  [31mRED  \tx \xc3\xa9\n");
    sh_log_set_level(SH_LOG_WARN);
    sh_log(SH_LOG_INFO, NULL, "dropped");
    sh_log_kv(SH_LOG_INFO, NULL, "dropped", NULL);
    CHECK_STR(take(), "");
    sh_log_set_level(SH_LOG_INFO);
}

static void test_cut_lines(void)
{
    size_t n = 40000;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    big[100] = '"'; /* escaped: the cut must still be well-formed */
    sh_log_set_format(SH_LOG_JSON);
    sh_log_kv(SH_LOG_INFO, NULL, big, "after", SH_LOG_INT, 1, NULL);
    const char *out = take();
    size_t len = strlen(out);
    CHECKF(len > 16000 && len < 16500, "len %zu", len);
    const char *cut = "x\",\"truncated\":true}\n";
    CHECKF(len > strlen(cut) && strcmp(out + len - strlen(cut), cut) == 0, "%s",
           out + (len > 40 ? len - 40 : 0));
    CHECK(strchr(out, '\n') == out + len - 1);
    /* a field cut mid-value is dropped whole */
    sh_log_kv(SH_LOG_INFO, NULL, "short", "a", SH_LOG_STR, "1", "b", SH_LOG_STR, big, NULL);
    out = take();
    len = strlen(out);
    const char *tail = "\"msg\":\"short\",\"a\":\"1\",\"truncated\":true}\n";
    CHECKF(len > strlen(tail) && strcmp(out + len - strlen(tail), tail) == 0, "%s",
           out + (len > 60 ? len - 60 : 0));
    sh_log_set_format(SH_LOG_TEXT);
    sh_log_kv(SH_LOG_INFO, NULL, big, NULL);
    out = take();
    len = strlen(out);
    CHECKF(len > 16000 && len < 16500 && out[len - 1] == '\n', "len %zu", len);
    CHECK(strchr(out, '\n') == out + len - 1);
    free(big);
}

/* On a pipe (shared by the processes of --workers) a line is at most PIPE_BUF bytes, cut
 * and marked as at 16 KiB: only such a write is atomic.
 * fails on old: yes (a 16 KiB line, written in one non-atomic write). */
static void test_cut_lines_on_a_pipe(void)
{
    size_t n = 10240;
    char *big = malloc(n + 1), got[2 * PIPE_BUF];
    memset(big, 'x', n);
    big[n] = '\0';
    int p[2];
    CHECK(pipe(p) == 0);
    sh_log_set_fd(p[1]);
    for (int json = 1; json >= 0; json--) {
        sh_log_set_format(json ? SH_LOG_JSON : SH_LOG_TEXT);
        sh_log_kv(SH_LOG_INFO, NULL, big, "after", SH_LOG_INT, 1, NULL);
        ssize_t len = read(p[0], got, sizeof got);
        const char *end = json ? "x\",\"truncated\":true}\n" : "x ...\n";
        size_t el = strlen(end);
        CHECKF(len > PIPE_BUF - 100 && len <= PIPE_BUF, "len %zd", len);
        CHECKF(len > (ssize_t)el && memcmp(got + len - el, end, el) == 0, "%.40s",
               got + (len > 40 ? len - 40 : 0));
        CHECK(memchr(got, '\n', (size_t)len) == got + len - 1);
    }
    sh_log_set_fd(fd);
    close(p[0]);
    close(p[1]);
    free(big);
}

static void test_access(void)
{
    sh_access a = {.conn_id = "c9", .peer = "127.0.0.1:5000", .method = "GET", .path = "/ws",
                   .websocket = 1, .http_status = 101, .duration_ms = 12.5, .bytes_in = 10,
                   .bytes_out = 20, .messages_in = 1, .messages_out = 2, .close_code = 1000,
                   .close_reason = "done"};
    sh_log_set_format(SH_LOG_JSON);
    sh_log_set_level(SH_LOG_ERROR); /* the access log does not depend on log_level */
    sh_log_access(&a);
    CHECK_STR(after_ts(take()),
              ",\"level\":\"info\",\"conn\":\"c9\",\"msg\":\"access\",\"kind\":\"websocket\","
              "\"peer\":\"127.0.0.1:5000\",\"method\":\"GET\",\"path\":\"/ws\",\"status\":101,"
              "\"duration_ms\":12.500,\"bytes_in\":10,\"bytes_out\":20,\"messages_in\":1,"
              "\"messages_out\":2,\"close_code\":1000,\"close_reason\":\"done\"}\n");
    sh_access h = {.conn_id = "c10", .peer = "[::1]:6", .method = "GET", .path = "/metrics",
                   .http_status = 200, .requests = 3, .duration_ms = 1, .bytes_in = 100,
                   .bytes_out = 900};
    sh_log_set_format(SH_LOG_TEXT);
    sh_log_access(&h);
    CHECK_STR(after_ts(take()), "info  [c10] access kind=http peer=[::1]:6 method=GET "
                                "path=/metrics status=200 requests=3 duration_ms=1.000 "
                                "bytes_in=100 bytes_out=900\n");
    sh_log_set_access(0);
    CHECK(!sh_log_access_enabled());
    sh_log_access(&h);
    CHECK_STR(take(), "");
    sh_log_set_access(1);
    sh_log_set_level(SH_LOG_INFO);
}

static void test_configure(void)
{
    sh_log_settings ls = {SH_LOG_DEBUG, SH_LOG_JSON, 0}; /* a plain struct: no config, no Lua */
    sh_log_configure(&ls);
    CHECK(sh_log_enabled(SH_LOG_DEBUG));
    CHECK_INT(sh_log_get_format(), SH_LOG_JSON);
    CHECK(!sh_log_access_enabled());
    CHECK_INT(sh_log_parse_format("json"), SH_LOG_JSON);
    CHECK_INT(sh_log_parse_format("text"), SH_LOG_TEXT);
    CHECK_INT(sh_log_parse_format("xml"), -1);
    sh_config cfg = {0}; /* and a generation's keys, through config.c */
    cfg.log_level = SH_LOG_INFO;
    cfg.log_format = SH_LOG_TEXT;
    cfg.access_log = 1;
    sh_config_apply_log(&cfg);
    CHECK(!sh_log_enabled(SH_LOG_DEBUG));
    CHECK_INT(sh_log_get_format(), SH_LOG_TEXT);
    CHECK(sh_log_access_enabled());
}

static void never(uv_timer_t *t) { (void)t; }

static void test_buffering(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_timer_t alive; /* a loop with nothing to do would not iterate */
    uv_timer_init(&loop, &alive);
    uv_timer_start(&alive, never, 3600000, 0);
    sh_log_set_format(SH_LOG_TEXT);
    sh_log_attach(&loop);
    sh_log(SH_LOG_INFO, NULL, "one");
    sh_log(SH_LOG_INFO, NULL, "two");
    CHECK_STR(take(), ""); /* buffered */
    /* one loop iteration: the prepare handle writes both */
    uv_run(&loop, UV_RUN_NOWAIT);
    const char *out = take();
    CHECK(strstr(out, "] one\n") && strstr(out, "] two\n"));
    /* past 64 KiB: written without waiting for the loop */
    char msg[1000];
    memset(msg, 'y', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    for (int i = 0; i < 70; i++)
        sh_log(SH_LOG_INFO, NULL, "%s", msg);
    size_t n = strlen(take());
    CHECKF(n >= 64 * 1024 && n < 70 * 1040, "wrote %zu", n);
    sh_log(SH_LOG_INFO, NULL, "last");
    sh_log_flush();
    out = take();
    CHECK(strstr(out, "] last\n") != NULL);
    /* detach flushes; the handle closes with the loop */
    sh_log(SH_LOG_INFO, NULL, "at detach");
    sh_log_detach();
    CHECK(strstr(take(), "] at detach\n") != NULL);
    sh_log(SH_LOG_INFO, NULL, "immediate");
    CHECK(strstr(take(), "] immediate\n") != NULL);
    uv_close((uv_handle_t *)&alive, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&loop), 0);
}

/* A process that aborts with lines in the buffer still writes them. */
static void test_abort_flushes(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        sh_log_attach(&loop);
        sh_log(SH_LOG_ERROR, NULL, "before abort");
        abort();
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    CHECK(strstr(take(), "] before abort\n") != NULL);
}

/* Numbers are written without snprintf: the same text as %lld, %llu and
 * %.3f, for edge values and 20,000 pseudo-random doubles (halves included). */
static void test_numbers_as_printf(void)
{
    sh_log_set_format(SH_LOG_JSON);
    const int64_t ints[] = {0, 1, -1, 9, 10, -10, 1234567890123LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        sh_log_kv(SH_LOG_WARN, NULL, "m", "i", SH_LOG_I64, ints[i], "u", SH_LOG_U64,
                  (uint64_t)ints[i], NULL);
        char want[160];
        snprintf(want, sizeof want, ",\"level\":\"warn\",\"conn\":null,\"msg\":\"m\",\"i\":%lld,"
                 "\"u\":%llu}\n", (long long)ints[i], (unsigned long long)(uint64_t)ints[i]);
        CHECK_STR(after_ts(take()), want);
    }
    uint64_t x = 88172645463325252ull; /* xorshift64 */
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        switch (i % 5) {
        case 0: d = (double)(x % 100000000) / 1000.0; break;         /* 3 decimals */
        case 1: d = (double)(x % 2000000) / 2000.0; break;           /* halves of 1/1000 */
        case 2: d = (double)(x >> 11) / (double)(1ull << 53) * 1e6; break;
        case 3: d = (double)(x % 100000) + 0.0005; break;
        default: d = (double)(x >> 11) / (double)(1ull << 40); break; /* up to 8e6, fine bits */
        }
        if (i == 0) d = 0;
        if (i == 5) d = 999999999.9995;
        if (i == 10) d = 1e15 + 0.25;
        if (i == 15) d = -2.5;
        sh_log_kv(SH_LOG_WARN, NULL, "m", "d", SH_LOG_DBL, d, NULL);
        char want[160];
        snprintf(want, sizeof want, ",\"level\":\"warn\",\"conn\":null,\"msg\":\"m\",\"d\":%.3f}\n", d);
        const char *got = after_ts(take());
        if (strcmp(got, want) != 0 && bad++ < 5)
            fprintf(stderr, "  %.17g: got %s  want %s", d, got, want);
    }
    CHECK_INT(bad, 0);
}

/* Edge values in both formats, as printf writes them (%lld, %.3f; text
 * writes a non-finite double as %g, JSON as null; a double whose %.3f is too
 * long for the field, %.17g).
 * fails on old: yes (-0.0 came out "0.000"; DBL_MAX as its first 63 digits,
 * another number). */
static void test_number_edges(void)
{
    const double ds[] = {-0.0, -1e-9, -2.5, -0.0004, 5e-324, 1e-4, 0.0005,
                         nextafter(0.0005, 0), nextafter(0.0005, 1), 0.0015, 2.675,
                         nextafter(1e9, 0), 1e9, DBL_MAX, -DBL_MAX, 4503599627370495.5,
                         NAN, -NAN, INFINITY, -INFINITY};
    for (int json = 0; json <= 1; json++) {
        sh_log_set_format(json ? SH_LOG_JSON : SH_LOG_TEXT);
        for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
            sh_log_kv(SH_LOG_WARN, NULL, "m", "d", SH_LOG_DBL, ds[i], NULL);
            char num[400], want[500];
            if (!isfinite(ds[i]))
                snprintf(num, sizeof num, json ? "null" : "%g", ds[i]);
            else if (snprintf(num, sizeof num, "%.3f", ds[i]) >= 64)
                snprintf(num, sizeof num, "%.17g", ds[i]); /* the same number, shorter */
            snprintf(want, sizeof want,
                     json ? ",\"level\":\"warn\",\"conn\":null,\"msg\":\"m\",\"d\":%s}\n"
                          : "warn  [-] m d=%s\n",
                     num);
            const char *got = after_ts(take());
            CHECKF(strcmp(got, want) == 0, "%s %.17g: got %s", json ? "json" : "text", ds[i], got);
        }
        sh_log_kv(SH_LOG_WARN, NULL, "m", "i", SH_LOG_I64, INT64_MIN, "u", SH_LOG_U64, UINT64_MAX,
                  "n", SH_LOG_INT, INT32_MIN, NULL);
        const char *got = after_ts(take());
        CHECKF(strstr(got, json ? "\"i\":-9223372036854775808,\"u\":18446744073709551615,"
                                  "\"n\":-2147483648}"
                                : "i=-9223372036854775808 u=18446744073709551615 n=-2147483648\n"),
               "%s: %s", json ? "json" : "text", got);
    }
}

static void on_sigusr1(int sig) { (void)sig; }

struct eintr_reader {
    pthread_t writer;
    int rfd;
    char got[200000];
    size_t len;
};

/* Interrupts the writer blocked on a full pipe, then reads the pipe dry. */
static void *eintr_read(void *arg)
{
    struct eintr_reader *r = arg;
    usleep(100 * 1000);
    pthread_kill(r->writer, SIGUSR1);
    usleep(100 * 1000);
    for (;;) {
        struct pollfd pfd = {.fd = r->rfd, .events = POLLIN};
        if (poll(&pfd, 1, 2000) != 1) /* the line never comes */
            break;
        ssize_t k = read(r->rfd, r->got + r->len, sizeof r->got - 1 - r->len);
        if (k <= 0)
            break;
        r->len += (size_t)k;
        r->got[r->len] = '\0';
        if (strstr(r->got, "after the signal"))
            break;
    }
    return NULL;
}

/* A signal (SA_RESTART, as the instruction budget's SIGVTALRM) landing while
 * a line waits for a full pipe's reader loses nothing: poll() is not
 * restarted by SA_RESTART and returns EINTR.
 * fails on old: yes (the line was dropped at the first EINTR). */
static void test_signal_while_waiting_for_the_reader(void)
{
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old_sa);
    int p[2];
    CHECK(pipe(p) == 0);
    fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) | O_NONBLOCK);
    static char fill[65536];
    memset(fill, 'f', sizeof fill);
    while (write(p[1], fill, sizeof fill) > 0) {
    }
    fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) & ~O_NONBLOCK);
    sh_log_set_fd(p[1]);
    sh_log_set_format(SH_LOG_TEXT);
    static struct eintr_reader r;
    r.writer = pthread_self();
    r.rfd = p[0];
    pthread_t t;
    pthread_create(&t, NULL, eintr_read, &r);
    sh_log_kv(SH_LOG_WARN, NULL, "after the signal", NULL);
    pthread_join(t, NULL);
    sh_log_set_fd(fd);
    close(p[1]);
    CHECKF(strstr(r.got, "after the signal") != NULL, "the line was lost (%zu bytes read)",
           r.len);
    close(p[0]);
    sigaction(SIGUSR1, &old_sa, NULL);
}

/* A line's message as printf makes it (sh_log formats %s %d %u with l, ll or
 * z, and %%, itself), folded as ever: control characters anywhere in a long
 * message, at every offset of the 8-byte steps, become spaces; a text value
 * is quoted whatever the position of the byte that needs it. */
static void test_message_as_printf(void)
{
    sh_log_set_format(SH_LOG_TEXT);
    char want[512], msg[400];
    const long long ll[] = {0, 7, -7, 4294967296LL, LLONG_MAX, LLONG_MIN};
    for (size_t i = 0; i < sizeof ll / sizeof ll[0]; i++) {
        int d = (int)ll[i];
        unsigned u = (unsigned)ll[i];
        long l = (long)ll[i];
        size_t z = (size_t)ll[i];
        sh_log(SH_LOG_INFO, "c", "a%db%uc%ldd%lue%llde%llu f%zu%%g%zd %s|%s", d, u, l,
               (unsigned long)l, ll[i], (unsigned long long)ll[i], z, (ssize_t)z, "str",
               (const char *)NULL);
        snprintf(msg, sizeof msg, "a%db%uc%ldd%lue%llde%llu f%zu%%g%zd %s|%s", d, u, l,
                 (unsigned long)l, ll[i], (unsigned long long)ll[i], z, (ssize_t)z, "str",
                 "(null)");
        snprintf(want, sizeof want, "info  [c] %s\n", msg);
        CHECK_STR(after_ts(take()), want);
    }
    /* other conversions go to vsnprintf */
    sh_log(SH_LOG_INFO, "c", "%5d|%-3s|%x|%.2f|%c|%08llx", 42, "a", 255u, 1.5, 'z', 0xabcULL);
    CHECK_STR(after_ts(take()), "info  [c]    42|a  |ff|1.50|z|00000abc\n");
    const char bad[] = {'\n', '\x1b', '\x7f', '\x01', '\xc2'};
    for (size_t at = 0; at < 24; at++)
        for (size_t k = 0; k < sizeof bad; k++) {
            memset(msg, 'x', 40);
            msg[40] = '\0';
            msg[at] = bad[k];
            if (bad[k] == '\xc2')
                msg[at + 1] = '\x85'; /* U+0085 (NEL): a C1 control */
            sh_log(SH_LOG_INFO, "c", "%s", msg);
            memset(msg, 'x', 40);
            msg[at] = ' ';
            if (bad[k] == '\xc2')
                msg[at + 1] = ' ';
            snprintf(want, sizeof want, "info  [c] %s\n", msg);
            CHECK_STR(after_ts(take()), want);
            const char plain[] = "abcdefghijklmnopqrstuvwxyz0123456789";
            const char needs[] = {' ', '"', '=', '\\', '\x7f', '\x01'};
            char v[64];
            memcpy(v, plain, sizeof plain);
            v[at] = needs[k];
            sh_log_kv(SH_LOG_INFO, "c", "m", "v", SH_LOG_STR, v, NULL);
            const char *got = after_ts(take());
            CHECKF(strncmp(got, "info  [c] m v=\"", 15) == 0, "unquoted at %zu: %s", at, got);
        }
}

int main(void)
{
    FILE *f = tmpfile();
    fd = fileno(f);
    sh_log_set_fd(fd);
    test_json_fields();
    test_number_edges();
    test_signal_while_waiting_for_the_reader();
    test_numbers_as_printf();
    test_json_utf8();
    test_text();
    test_message_as_printf();
    test_cut_lines();
    test_cut_lines_on_a_pipe();
    test_access();
    test_configure();
    test_buffering();
    test_abort_flushes();
    fclose(f);
    return unit_done("log");
}
