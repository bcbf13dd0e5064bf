/* log.c — see log.h.
 *
 * A line is built in one static buffer (text or JSON), then appended to the
 * output buffer, which is written at the next flush point; before
 * sh_log_attach() it is written at once, with one write(2). A mutex guards
 * both buffers in case a library thread ever logs; the fatal-signal path
 * writes without it (best effort: the process is dying). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "str.h"

#define LINE_CAP 16384           /* a longer line is cut (and marked) */
#define LINE_RESERVE 64          /* room kept to close a cut line */
#define FLUSH_AT (64 * 1024)     /* write as soon as the buffer holds this much */
#define OBUF_CAP (FLUSH_AT + LINE_CAP + LINE_RESERVE)
#define MAX_FIELDS 32

static enum sh_log_level min_level = SH_LOG_INFO;
static enum sh_log_format format = SH_LOG_TEXT;
static int access_on = 1;
static int out_fd = STDERR_FILENO;
static int out_is_pipe = -1;     /* -1: not yet known */
static int out_sock;
static int nb_fd = -1;
static unsigned long dropped; /* lines dropped while the reader did not read */
struct field {
    const char *key;
    int type;
    union { const char *s; int64_t i; uint64_t u; double d; } v;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char line[LINE_CAP + LINE_RESERVE];
static char obuf[OBUF_CAP];
static size_t olen;
static int attached;
static uv_prepare_t prep;
static int prep_open;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_text[] = {"debug", "info ", "warn ", "error"};

/* ------------------------------------------------------------ settings */

void sh_log_set_level(enum sh_log_level level) { min_level = level; }

int sh_log_enabled(enum sh_log_level level) { return level >= min_level; }

int sh_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void sh_log_set_format(enum sh_log_format f) { format = f; }

enum sh_log_format sh_log_get_format(void) { return format; }

int sh_log_parse_format(const char *name)
{
    if (name && strcmp(name, "text") == 0)
        return SH_LOG_TEXT;
    if (name && strcmp(name, "json") == 0)
        return SH_LOG_JSON;
    return -1;
}

void sh_log_set_access(int on) { access_on = on != 0; }

int sh_log_access_enabled(void) { return access_on; }

void sh_log_configure(const sh_log_settings *s)
{
    sh_log_set_level(s->level);
    sh_log_set_format(s->format);
    sh_log_set_access(s->access);
}

void sh_log_set_fd(int fd)
{
    pthread_mutex_lock(&mu);
    out_fd = fd;
    out_is_pipe = -1;
    if (nb_fd >= 0)
        close(nb_fd);
    nb_fd = -1;
    pthread_mutex_unlock(&mu);
}

/* ------------------------------------------------------------ output */

/* How the output is written without ever blocking: a pipe through a
 * second, non-blocking open file description of it (/proc/self/fd/N: the
 * shared one, and so the flags other processes see, stay untouched), a socket
 * with MSG_DONTWAIT, anything else (file, terminal) with plain write(2). */

static void probe_out(void)
{
    struct stat st;
    int ok = fstat(out_fd, &st) == 0;
    out_is_pipe = ok && S_ISFIFO(st.st_mode);
    out_sock = ok && S_ISSOCK(st.st_mode);
    if (nb_fd >= 0)
        close(nb_fd);
    nb_fd = -1;
    if (out_is_pipe) {
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", out_fd);
        nb_fd = open(p, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    }
}

/* One write that does not block → bytes taken (n when the output is gone:
 * nothing will ever read them), 0 when the reader is behind. Async-signal-safe. */
static size_t try_write(const char *p, size_t n)
{
    for (;;) {
        ssize_t w;
        if (out_sock) {
            w = send(out_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else if (out_is_pipe && nb_fd < 0) { /* no /proc: write only what fits */
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLOUT))
                return pfd.revents & (POLLERR | POLLHUP) ? n : 0;
            w = write(out_fd, p, n < PIPE_BUF ? n : PIPE_BUF);
        } else {
            w = write(nb_fd >= 0 ? nb_fd : out_fd, p, n);
        }
        if (w >= 0)
            return (size_t)w;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : n;
    }
}

/* The next piece to write: on a pipe, at most PIPE_BUF bytes cut at a line
 * end (atomic: lines of processes sharing the pipe never interleave). */
static size_t piece(const char *p, size_t n)
{
    if (!out_is_pipe || n <= PIPE_BUF)
        return n;
    for (size_t i = PIPE_BUF; i > 0; i--)
        if (p[i - 1] == '\n')
            return i;
    const char *nl = memchr(p, '\n', n); /* one line longer than PIPE_BUF: it goes alone */
    return nl ? (size_t)(nl - p) + 1 : n;
}

/* Write all of p (async-signal-safe: used by the fatal-signal handler): for
 * start-up lines and the last flush. A descriptor that stays unwritable for
 * 5 s loses the rest. */
static void write_all(const char *p, size_t n)
{
    if (out_is_pipe < 0)
        probe_out();
    while (n > 0) {
        size_t k = piece(p, n);
        size_t w = try_write(p, k);
        p += w;
        n -= w;
        if (w == 0) {
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            int r;
            do /* a signal (SIGVTALRM's tick) interrupts poll even with SA_RESTART */
                r = poll(&pfd, 1, 5000);
            while (r < 0 && errno == EINTR);
            if (r <= 0)
                return;
        }
    }
}

/* The loop's flush: writes what the reader takes now, keeps the rest. */
static void flush_locked(void)
{
    if (out_is_pipe < 0)
        probe_out();
    size_t off = 0;
    while (off < olen) {
        size_t k = piece(obuf + off, olen - off);
        size_t w = try_write(obuf + off, k);
        off += w;
        if (w < k)
            break;
    }
    memmove(obuf, obuf + off, olen - off);
    olen -= off;
}

/* The last flush: waits for a slow reader (up to 5 s without progress). */
static void final_flush_locked(void)
{
    size_t n = olen;
    olen = 0;
    write_all(obuf, n);
}

static void build_and_emit(int level, const char *conn_id, const char *msg, size_t msglen,
                           const struct field *f, size_t nf);

void sh_log_flush(void)
{
    pthread_mutex_lock(&mu);
    flush_locked();
    if (dropped && olen == 0) {
        struct field f = {"lines", SH_LOG_U64, {.u = dropped}};
        dropped = 0;
        build_and_emit(SH_LOG_WARN, NULL, "log lines dropped: the log output was not read", 46, &f, 1);
    }
    pthread_mutex_unlock(&mu);
}

static void emit_locked(const char *p, size_t n)
{
    if (!attached) {
        write_all(p, n);
        return;
    }
    if (olen + n > OBUF_CAP)
        flush_locked();
    if (olen + n > OBUF_CAP) { /* the reader is behind: the loop does not wait for it */
        dropped++;
        return;
    }
    memcpy(obuf + olen, p, n);
    olen += n;
    if (olen >= FLUSH_AT)
        flush_locked();
}

/* ------------------------------------------------------------ fatal paths */

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
#define NFATAL (sizeof fatal_signals / sizeof fatal_signals[0])
static struct sigaction fatal_old[NFATAL];
static int fatal_installed[NFATAL];

static void on_fatal(int sig)
{
    if (olen) {
        size_t n = olen;
        olen = 0;
        write_all(obuf, n);
    }
    /* put the previous disposition back; returning re-runs the faulting
     * instruction (or lets abort() raise again) under it */
    for (size_t i = 0; i < NFATAL; i++)
        if (fatal_signals[i] == sig && fatal_installed[i]) {
            sigaction(sig, &fatal_old[i], NULL);
            fatal_installed[i] = 0;
        }
    if (sig == SIGFPE || sig == SIGILL || sig == SIGSEGV || sig == SIGBUS)
        return; /* synchronous faults re-fault */
    raise(sig);
}

/* Only where nobody (e.g. a sanitizer) handles the signal already. */
static void install_fatal_handlers(void)
{
    for (size_t i = 0; i < NFATAL; i++) {
        struct sigaction cur;
        if (fatal_installed[i] || sigaction(fatal_signals[i], NULL, &cur) != 0)
            continue;
        if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler != SIG_DFL)
            continue;
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fatal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_NODEFER;
        if (sigaction(fatal_signals[i], &sa, &fatal_old[i]) == 0)
            fatal_installed[i] = 1;
    }
}

/* ------------------------------------------------------------ the loop */

static void on_prepare(uv_prepare_t *h)
{
    (void)h;
    sh_log_flush();
}

static void at_exit_flush(void)
{
    pthread_mutex_lock(&mu);
    final_flush_locked();
    pthread_mutex_unlock(&mu);
}

void sh_log_attach(uv_loop_t *loop)
{
    static int atexit_done;
    if (!atexit_done) {
        atexit(at_exit_flush);
        atexit_done = 1;
    }
    install_fatal_handlers();
    if (!prep_open) {
        /* prepare runs right before the loop blocks in poll: a line never
         * waits across a blocking poll, and an iteration costs one write */
        uv_prepare_init(loop, &prep);
        uv_prepare_start(&prep, on_prepare);
        uv_unref((uv_handle_t *)&prep);
        prep_open = 1;
    }
    pthread_mutex_lock(&mu);
    attached = 1;
    pthread_mutex_unlock(&mu);
}

void sh_log_detach(void)
{
    pthread_mutex_lock(&mu);
    final_flush_locked();
    attached = 0;
    pthread_mutex_unlock(&mu);
    if (prep_open) {
        uv_prepare_stop(&prep);
        uv_close((uv_handle_t *)&prep, NULL);
        prep_open = 0;
    }
}

/* ------------------------------------------------------------ building a line */

struct lb {
    char *p;
    size_t len, cap; /* cap < the buffer's size by LINE_RESERVE */
    int full;
};

static void lb_put(struct lb *b, const char *s, size_t n)
{
    if (b->full)
        return;
    if (b->len + n > b->cap) {
        b->full = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void lb_puts(struct lb *b, const char *s) { lb_put(b, s, strlen(s)); }
#define LB_LIT(b, lit) lb_put(b, lit, sizeof lit - 1)

/* Byte tests on 8 bytes at once (all exact as "any byte"): */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
#define ANY_BELOW(w, n) (((w) - ONES * (n)) & ~(w) & HIGHS) /* a byte < n (n <= 128) */
#define ANY_EQ(w, c) ANY_BELOW((w) ^ (ONES * (c)), 1)       /* a byte == c */

/* The 8 bytes at p are printable ASCII (20..7E): nothing to fold. */
static int word_printable(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return !((w & HIGHS) | ANY_BELOW(w, 0x20) | ANY_EQ(w, 0x7F));
}

/* ... and none needs a text value quoted (blank, '"', '=', '\\'). */
static int word_bare(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return !((w & HIGHS) | ANY_BELOW(w, 0x21) | ANY_EQ(w, '"') | ANY_EQ(w, '=') |
             ANY_EQ(w, '\\') | ANY_EQ(w, 0x7F));
}

/* Past cap, into the reserve: to close a cut line. */
static void lb_force(struct lb *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n > b->cap + LINE_RESERVE)
        n = b->cap + LINE_RESERVE - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* A JSON string literal: quotes, backslashes and control characters
 * escaped, invalid UTF-8 replaced by U+FFFD (one per bad byte). Cut at a
 * character boundary when the line is full. */
static void json_str(struct lb *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    lb_put(b, "\"", 1);
    for (size_t i = 0; i < n && !b->full;) {
        unsigned c = s[i];
        char esc[8];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            size_t j = i + 1;
            while (j < n && s[j] >= 0x20 && s[j] < 0x7F && s[j] != '"' && s[j] != '\\')
                j++;
            if (b->len + (j - i) > b->cap) { /* ASCII: any cut is a character boundary */
                lb_put(b, str + i, b->cap - b->len);
                b->full = 1;
                break;
            }
            lb_put(b, str + i, j - i);
            i = j;
        } else if (c < 0x80) {
            switch (c) {
            case '"': lb_put(b, "\\\"", 2); break;
            case '\\': lb_put(b, "\\\\", 2); break;
            case '\n': lb_put(b, "\\n", 2); break;
            case '\r': lb_put(b, "\\r", 2); break;
            case '\t': lb_put(b, "\\t", 2); break;
            case '\b': lb_put(b, "\\b", 2); break;
            case '\f': lb_put(b, "\\f", 2); break;
            default:
                snprintf(esc, sizeof esc, "\\u%04x", c);
                lb_put(b, esc, 6);
            }
            i++;
        } else {
            size_t k = utf8_seq(s + i, n - i);
            if (k) {
                lb_put(b, str + i, k);
                i += k;
            } else {
                lb_put(b, "\\ufffd", 6);
                i++;
            }
        }
    }
    if (b->full)
        lb_force(b, "\"");
    else
        lb_put(b, "\"", 1);
}

/* The C1 control character at s[i] (of n bytes), as the bytes it takes: U+0080..U+009F
 * in UTF-8 (C2 80..C2 9F: 2), or a byte 0x80..0x9F that no valid UTF-8 sequence holds (1);
 * 0 when s[i] starts none. *seq gets the length of the valid UTF-8 sequence at i (1 for
 * a byte that starts none), so a caller steps over a whole character at a time.
 * Terminals that honour 8-bit controls take 0x9B (CSI) as an escape's start, and Unicode
 * line readers U+0085 (NEL) as a line break. */
static size_t c1_at(const unsigned char *s, size_t n, size_t i, size_t *seq)
{
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    int ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; k++)
        ok = (s[i + k] & 0xC0) == 0x80;
    if (ok && len == 3) /* no overlong form, no surrogate */
        ok = !(c == 0xE0 && s[i + 1] < 0xA0) && !(c == 0xED && s[i + 1] >= 0xA0);
    if (ok && len == 4)
        ok = !(c == 0xF0 && s[i + 1] < 0x90) && !(c == 0xF4 && s[i + 1] >= 0x90);
    *seq = ok ? len : 1;
    if (ok)
        return len == 2 && c == 0xC2 && s[i + 1] <= 0x9F ? 2 : 0;
    return c >= 0x80 && c <= 0x9F ? 1 : 0;
}

/* A text-format field value: bare when safe, else quoted with \" \\ \n \r
 * \t and \xHH escapes. */
static void text_value(struct lb *b, const char *s)
{
    size_t n = strlen(s);
    int quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        if (n - i >= 8 && word_bare(s + i)) {
            i += 7;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        quote = c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7F;
        if (c >= 0x80) {
            size_t seq;
            quote = c1_at((const unsigned char *)s, n, i, &seq) != 0;
            i += seq - 1;
        }
    }
    if (!quote) {
        lb_put(b, s, n);
        return;
    }
    lb_put(b, "\"", 1);
    for (size_t i = 0; i < n && !b->full; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"': lb_put(b, "\\\"", 2); break;
        case '\\': lb_put(b, "\\\\", 2); break;
        case '\n': lb_put(b, "\\n", 2); break;
        case '\r': lb_put(b, "\\r", 2); break;
        case '\t': lb_put(b, "\\t", 2); break;
        default: {
            size_t seq, c1 = c >= 0x80 ? c1_at((const unsigned char *)s, n, i, &seq) : 0;
            if (c < 0x20 || c == 0x7F || c1) {
                for (size_t k = 0; k < (c1 ? c1 : 1); k++) {
                    snprintf(esc, sizeof esc, "\\x%02x", (unsigned char)s[i + k]);
                    lb_put(b, esc, 4);
                }
                i += c1 ? c1 - 1 : 0;
            } else if (c >= 0x80) {
                lb_put(b, s + i, seq); /* the whole character */
                i += seq - 1;
            } else {
                lb_put(b, (const char *)&c, 1);
            }
        }
        }
    }
    if (b->full)
        lb_force(b, "\"");
    else
        lb_put(b, "\"", 1);
}

/* The digits of u, then NUL, at the end of out[0..n) (n >= 21): → the start. */
static char *digits(uint64_t u, char *out, size_t n)
{
    char *p = out + n;
    *--p = '\0';
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    return p;
}

static void copy_out(char *out, size_t n, const char *p)
{
    size_t l = strlen(p);
    if (!n)
        return;
    if (l >= n)
        l = n - 1;
    memcpy(out, p, l);
    out[l] = '\0';
}

/* A number's text without snprintf (several per access line, one line per
 * connection): integers, and %.3f for the usual doubles (a duration); a
 * double whose %.3f does not fit in out is written %.17g. */
static void number_text(const struct field *f, char *out, size_t n, int json)
{
    char tmp[24], *p;
    switch (f->type) {
    case SH_LOG_INT:
    case SH_LOG_I64:
        p = digits(f->v.i < 0 ? 0 - (uint64_t)f->v.i : (uint64_t)f->v.i, tmp, sizeof tmp);
        if (f->v.i < 0)
            *--p = '-';
        copy_out(out, n, p);
        break;
    case SH_LOG_U64: copy_out(out, n, digits(f->v.u, tmp, sizeof tmp)); break;
    case SH_LOG_DBL:
        if (!isfinite(f->v.d)) {
            snprintf(out, n, json ? "null" : "%g", f->v.d);
        } else if (!signbit(f->v.d) && f->v.d < 1e9 && /* -0.0: "-0.000", as %.3f */
                   fabs(f->v.d * 1000 - floor(f->v.d * 1000) - 0.5) > 1e-3) {
            /* the thousandths, rounded as %.3f would: v * 1000 is within
             * 1e-4 of the exact product, so far from a half it rounds alike */
            uint64_t m = (uint64_t)llround(f->v.d * 1000);
            p = digits(m / 1000, tmp, sizeof tmp - 4);
            size_t il = strlen(p);
            if (il + 5 <= n) {
                memcpy(out, p, il);
                out[il] = '.';
                out[il + 1] = (char)('0' + m / 100 % 10);
                out[il + 2] = (char)('0' + m / 10 % 10);
                out[il + 3] = (char)('0' + m % 10);
                out[il + 4] = '\0';
            } else if (n) {
                out[0] = '\0';
            }
        } else if (snprintf(out, n, "%.3f", f->v.d) >= (int)n) {
            /* too long for out (past about 1e59): cut, it would be another
             * number; %.17g is the same one, shorter */
            snprintf(out, n, "%.17g", f->v.d);
        }
        break;
    case SH_LOG_BOOL: snprintf(out, n, "%s", f->v.i ? "true" : "false"); break;
    default: snprintf(out, n, "null");
    }
}

/* Build the line for msg and fields in `line` and emit it. Called locked.
 *
 * On a pipe a line is cut at PIPE_BUF bytes (newline and truncation marker included),
 * not LINE_CAP: only a write of at most PIPE_BUF bytes to a pipe is atomic, and the
 * workers of --workers N (and the master) share one stderr pipe, so a longer line,
 * written in one write(2) that the kernel may split or in several, could interleave with
 * another process's (a JSON line that no longer parses). The alternative, the master
 * relaying its workers' lines over a pipe each, keeps long lines but puts every line
 * through a second process and buffer (lost or stalled when the master is), and the
 * master's own writes to the shared pipe would still need this cut: the kernel's
 * guarantee needs nothing. Files and terminals, written by one process at a time as far
 * as lines go, keep LINE_CAP. */
static void build_and_emit(int level, const char *conn_id, const char *msg, size_t msglen,
                           const struct field *f, size_t nf)
{
    if (out_is_pipe < 0)
        probe_out();
    struct lb b = {line, 0, out_is_pipe ? PIPE_BUF - LINE_RESERVE : LINE_CAP, 0};
    static char day_sec[80]; /* "YYYY-MM-DDTHH:MM:SS" of day_sec_of: made once a second */
    static time_t day_sec_of = (time_t)-1;
    char ts[96]; /* room for any int the compiler imagines */
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != day_sec_of) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        snprintf(day_sec, sizeof day_sec, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        day_sec_of = tv.tv_sec;
    }
    size_t dl = strlen(day_sec);
    int ms = (int)(tv.tv_usec / 1000);
    memcpy(ts, day_sec, dl);
    ts[dl] = '.';
    ts[dl + 1] = (char)('0' + ms / 100);
    ts[dl + 2] = (char)('0' + ms / 10 % 10);
    ts[dl + 3] = (char)('0' + ms % 10);
    ts[dl + 4] = 'Z';
    ts[dl + 5] = '\0';
    if (format == SH_LOG_JSON) {
        LB_LIT(&b, "{\"ts\":\"");
        lb_put(&b, ts, dl + 5);
        LB_LIT(&b, "\",\"level\":\"");
        lb_puts(&b, level_names[level]);
        LB_LIT(&b, "\",\"conn\":");
        if (conn_id)
            json_str(&b, conn_id, strlen(conn_id));
        else
            LB_LIT(&b, "null");
        LB_LIT(&b, ",\"msg\":");
        json_str(&b, msg, msglen); /* a cut message is still a closed string */
        size_t good = b.len;       /* the end of the last complete member */
        for (size_t i = 0; i < nf && !b.full; i++) {
            LB_LIT(&b, ",");
            json_str(&b, f[i].key, strlen(f[i].key));
            LB_LIT(&b, ":");
            if (f[i].type == SH_LOG_STR) {
                if (f[i].v.s)
                    json_str(&b, f[i].v.s, strlen(f[i].v.s));
                else
                    LB_LIT(&b, "null");
            } else {
                char num[64];
                number_text(&f[i], num, sizeof num, 1);
                lb_puts(&b, num);
            }
            if (!b.full)
                good = b.len;
        }
        if (b.full) {
            /* cut: drop the partial member, say so */
            b.len = good;
            lb_force(&b, ",\"truncated\":true}\n");
        } else {
            lb_put(&b, "}\n", 2);
        }
    } else {
        lb_put(&b, ts, dl + 5);
        LB_LIT(&b, " ");
        lb_puts(&b, level_text[level]);
        LB_LIT(&b, " [");
        lb_puts(&b, conn_id ? conn_id : "-");
        LB_LIT(&b, "] ");
        size_t start = b.len;
        lb_put(&b, msg, msglen);
        if (b.full) { /* the message alone is too long: keep what fits */
            size_t room = b.cap - start;
            memcpy(b.p + start, msg, room);
            b.len = b.cap;
        }
        /* one event, one line: fold any newline the message carries, and any
         * other control character (a client's terminal escapes, bells) */
        for (size_t i = start; i < b.len; i++) {
            if (b.len - i >= 8 && word_printable(b.p + i)) {
                i += 7;
                continue;
            }
            unsigned char c = (unsigned char)b.p[i];
            if ((c < 0x20 && c != '\t') || c == 0x7F) {
                b.p[i] = ' ';
            } else if (c >= 0x80) { /* and the C1 controls (c1_at) */
                size_t seq, c1 = c1_at((const unsigned char *)b.p, b.len, i, &seq);
                if (c1)
                    memset(b.p + i, ' ', c1);
                i += (c1 ? c1 : seq) - 1;
            }
        }
        for (size_t i = 0; i < nf && !b.full; i++) {
            LB_LIT(&b, " ");
            lb_puts(&b, f[i].key);
            LB_LIT(&b, "=");
            if (f[i].type == SH_LOG_STR) {
                text_value(&b, f[i].v.s ? f[i].v.s : "-");
            } else {
                char num[64];
                number_text(&f[i], num, sizeof num, 0);
                lb_puts(&b, num);
            }
        }
        if (b.full)
            lb_force(&b, " ...");
        lb_force(&b, "\n");
    }
    emit_locked(b.p, b.len);
}

/* ------------------------------------------------------------ entry points */

/* Append s[0..n) to out[*len..cap - 1), cut at its end. */
static void fmt_put(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    if (n > cap - 1 - *len)
        n = cap - 1 - *len;
    memcpy(out + *len, s, n);
    *len += n;
}

/* vsnprintf(out, cap, fmt, ap) for the formats of most lines (%s %d %u, with
 * l, ll or z, and %%), without stdio's cost: → the length written (cut to
 * cap - 1 as sh_log cuts), or -1 with ap untouched when fmt has another
 * conversion (a width, a precision, a flag, %x, %g ...). */
static int fmt_simple(char *out, size_t cap, const char *fmt, va_list ap)
{
    for (const char *f = fmt; *f; f++) {
        if (*f != '%')
            continue;
        if (*++f == '%')
            continue;
        if (*f == 'z')
            f++;
        else if (*f == 'l' && *++f == 'l')
            f++;
        if (*f != 'd' && *f != 'u' && !(*f == 's' && f[-1] == '%'))
            return -1;
    }
    size_t len = 0;
    for (const char *f = fmt; *f;) {
        if (*f != '%') {
            const char *q = f;
            while (*q && *q != '%')
                q++;
            fmt_put(out, cap, &len, f, (size_t)(q - f));
            f = q;
            continue;
        }
        if (*++f == '%') {
            fmt_put(out, cap, &len, "%", 1);
            f++;
            continue;
        }
        int mod = 0; /* int, long, long long, size_t */
        if (*f == 'z') {
            mod = 3;
            f++;
        } else if (*f == 'l') {
            mod = *++f == 'l' ? 2 : 1;
            f += mod == 2;
        }
        char num[24], *p = num;
        if (*f == 's') {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            fmt_put(out, cap, &len, s, strlen(s));
        } else {
            unsigned long long u;
            int neg = 0;
            if (*f == 'd') {
                long long v = mod == 0 ? va_arg(ap, int)
                              : mod == 1 ? va_arg(ap, long)
                              : mod == 2 ? va_arg(ap, long long)
                                         : (long long)va_arg(ap, ssize_t);
                neg = v < 0;
                u = neg ? 0 - (unsigned long long)v : (unsigned long long)v;
            } else {
                u = mod == 0 ? va_arg(ap, unsigned)
                    : mod == 1 ? va_arg(ap, unsigned long)
                    : mod == 2 ? va_arg(ap, unsigned long long)
                               : (unsigned long long)va_arg(ap, size_t);
            }
            if (neg)
                *p++ = '-';
            p += sh_fmt_u64(p, u);
            fmt_put(out, cap, &len, num, (size_t)(p - num));
        }
        f++;
    }
    out[len] = '\0';
    return (int)len;
}

void sh_log(enum sh_log_level level, const char *conn_id, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[LINE_CAP];
    va_list ap;
    va_start(ap, fmt);
    int m = fmt_simple(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (m < 0) {
        va_start(ap, fmt);
        m = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
    }
    size_t len = m < 0 ? 0 : (size_t)m;
    if (len >= sizeof msg)
        len = sizeof msg - 1;
    pthread_mutex_lock(&mu);
    build_and_emit(level, conn_id, msg, len, NULL, 0);
    pthread_mutex_unlock(&mu);
}

void sh_log_kv(enum sh_log_level level, const char *conn_id, const char *msg, ...)
{
    if (level < min_level)
        return;
    struct field f[MAX_FIELDS];
    size_t nf = 0;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key)
            break;
        struct field x = {key, va_arg(ap, int), {0}};
        switch (x.type) {
        case SH_LOG_STR: x.v.s = va_arg(ap, const char *); break;
        case SH_LOG_INT: x.v.i = va_arg(ap, int); break;
        case SH_LOG_BOOL: x.v.i = va_arg(ap, int) != 0; break;
        case SH_LOG_I64: x.v.i = va_arg(ap, int64_t); break;
        case SH_LOG_U64: x.v.u = va_arg(ap, uint64_t); break;
        case SH_LOG_DBL: x.v.d = va_arg(ap, double); break;
        default: goto done; /* a bad tag: what follows cannot be read */
        }
        if (nf < MAX_FIELDS)
            f[nf++] = x;
    }
done:
    va_end(ap);
    pthread_mutex_lock(&mu);
    build_and_emit(level, conn_id, msg ? msg : "", msg ? strlen(msg) : 0, f, nf);
    pthread_mutex_unlock(&mu);
}

void sh_log_access(const sh_access *a)
{
    if (!access_on)
        return;
    struct field f[16];
    size_t n = 0;
#define FS(k, val) do { if (val) { f[n].key = k; f[n].type = SH_LOG_STR; f[n].v.s = (val); n++; } } while (0)
#define FU(k, val) do { f[n].key = k; f[n].type = SH_LOG_U64; f[n].v.u = (uint64_t)(val); n++; } while (0)
#define FI(k, val) do { f[n].key = k; f[n].type = SH_LOG_INT; f[n].v.i = (val); n++; } while (0)
    FS("kind", a->websocket ? "websocket" : "http");
    FS("peer", a->peer);
    FS("method", a->method);
    FS("path", a->path);
    if (a->http_status)
        FI("status", a->http_status);
    if (!a->websocket)
        FU("requests", a->requests);
    f[n].key = "duration_ms";
    f[n].type = SH_LOG_DBL;
    f[n].v.d = a->duration_ms;
    n++;
    FU("bytes_in", a->bytes_in);
    FU("bytes_out", a->bytes_out);
    if (a->websocket) {
        FU("messages_in", a->messages_in);
        FU("messages_out", a->messages_out);
        FI("close_code", a->close_code);
        FS("close_reason", a->close_reason ? a->close_reason : "");
    } else if (a->close_reason) {
        FS("close_reason", a->close_reason);
    }
#undef FS
#undef FU
#undef FI
    pthread_mutex_lock(&mu);
    build_and_emit(SH_LOG_INFO, a->conn_id, "access", 6, f, n);
    pthread_mutex_unlock(&mu);
}
