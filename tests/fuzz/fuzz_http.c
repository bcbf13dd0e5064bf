/* fuzz_http.c — libFuzzer target for the request head and the handshake:
 * src/http_parse.c (over llhttp) and src/static_files.c.
 *
 * Input: byte 0 is the chunking seed (bits 0-6; bit 7 selects small limits,
 * 256 and 1024, instead of 8192 and 65536), the rest is what a client sends
 * on one connection. The bytes are parsed twice on fresh parsers: once in a
 * single feed, once cut into pieces whose sizes come from the seed. Both runs loop over pipelined
 * requests the way conn.c does (reset after each, stop at an upgrade, at a
 * request without keep-alive, or at an error), and every complete request
 * goes through sh_ws_handshake_check, sh_request_header, sh_ws_accept_key
 * (when there is a Sec-WebSocket-Key), sh_url_decode, sh_static_normalise and
 * sh_mime_type.
 *
 * Invariants (a violation aborts, so libFuzzer keeps the input):
 * - consumed <= bytes fed; NEED_MORE uses everything; *status is 0 unless an
 *   error is returned, and an error's status is one of the documented ones;
 *   errors are sticky;
 * - every string of a request is NUL-terminated, values carry no outer
 *   blanks, the body is within max_body_bytes;
 * - the sequence of requests (and where each ends in the stream) does not
 *   depend on how the bytes were cut;
 * - sh_ws_handshake_check's 0 implies a well-formed key, and the accept key
 *   is 28 base64 characters (checked against RFC 6455's own example);
 * - sh_url_decode never grows its input, never reports -2 with enough room,
 *   and never lets a NUL through;
 * - sh_static_normalise agrees with an independent model: a result never
 *   starts with '/', never has an empty, "." or ".." (or any dot-first)
 *   segment, a backslash or a control byte; and it fits a buffer of exactly
 *   strlen + 1 bytes but not one byte less.
 *
 * Build and run: tests/fuzz/run.sh (see there). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"
#include "static_files.h"

#define MAX_HEAD 8192
#define MAX_BODY 65536

static size_t max_body; /* of the run in progress */

#define FUZZ_NAME "fuzz_http"
#include "fuzz_check.h"

/* ------------------------------------------------------------ transcript */

/* What a run saw, to compare the single-feed run with the cut one. */
typedef struct transcript {
    char *p;
    size_t len, cap;
} transcript;

static void tr_add(transcript *t, const void *data, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + n + 1)
            cap *= 2;
        t->p = realloc(t->p, cap);
        if (!t->p)
            abort();
        t->cap = cap;
    }
    memcpy(t->p + t->len, data, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void tr_str(transcript *t, const char *tag, const char *s)
{
    tr_add(t, tag, strlen(tag));
    tr_add(t, s, strlen(s));
    tr_add(t, "\n", 1);
}

static void tr_num(transcript *t, const char *tag, unsigned long long v)
{
    char b[64];
    int n = snprintf(b, sizeof b, "%s%llu\n", tag, v);
    tr_add(t, b, (size_t)n);
}

/* ------------------------------------------------------------ models */

static int forbidden_byte(unsigned char c) { return c < 0x20 || c == 0x7f || c == '\\'; }

/* An independent sh_static_normalise (its header's contract, written
 * again): 0 with out (big enough) filled, or SH_STATIC_EREFUSED. */
static int model_normalise(const char *path, char *out)
{
    size_t o = 0;
    const char *s = path;
    if (path[0] != '/')
        return SH_STATIC_EREFUSED;
    int ends_with_slash = 0;
    while (*s) {
        if (*s == '/') {
            s++;
            ends_with_slash = 1;
            continue;
        }
        ends_with_slash = 0;
        size_t n = strcspn(s, "/");
        if (s[0] == '.')
            return SH_STATIC_EREFUSED;
        for (size_t i = 0; i < n; i++)
            if (forbidden_byte((unsigned char)s[i]))
                return SH_STATIC_EREFUSED;
        if (o)
            out[o++] = '/';
        memcpy(out + o, s, n);
        o += n;
        s += n;
    }
    if (o == 0) {
        strcpy(out, "index.html");
        return 0;
    }
    if (ends_with_slash) {
        strcpy(out + o, "/index.html");
        return 0;
    }
    out[o] = '\0';
    return 0;
}

/* The properties every served path has, whoever computed it. */
static void check_normalised(const char *in, const char *out)
{
    size_t n = strlen(out);
    CHECK(n > 0, "empty result for \"%s\"", in);
    CHECK(out[0] != '/', "absolute result \"%s\" for \"%s\"", out, in);
    CHECK(out[n - 1] != '/', "result \"%s\" ends with '/'", out);
    CHECK(strstr(out, "//") == NULL, "empty segment in \"%s\"", out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];
        CHECK(!forbidden_byte(c), "byte 0x%02x in \"%s\"", c, out);
        if (c == '.' && (i == 0 || out[i - 1] == '/'))
            CHECK(0, "dot segment in \"%s\" (from \"%s\")", out, in);
    }
}

/* sh_static_normalise on p, against the model, and its buffer sizing. */
static void check_static(const char *p)
{
    static char out[16384], want[16384], small[16384];
    size_t plen = strlen(p);
    if (plen + 16 > sizeof want)
        return;
    int m = model_normalise(p, want);
    int rc = sh_static_normalise(p, out, sizeof out);
    CHECK(rc == m, "sh_static_normalise(\"%s\") = %d, model %d", p, rc, m);
    if (rc != 0)
        return;
    CHECK(strcmp(out, want) == 0, "sh_static_normalise(\"%s\") = \"%s\", model \"%s\"", p,
          out, want);
    check_normalised(p, out);
    size_t n = strlen(out);
    memset(small, 'Z', n + 2);
    CHECK(sh_static_normalise(p, small, n + 1) == 0 && strcmp(small, out) == 0,
          "\"%s\" does not fit %zu bytes", out, n + 1);
    CHECK(small[n + 1] == 'Z', "wrote past the buffer");
    CHECK(sh_static_normalise(p, small, n) == SH_STATIC_ETOOLONG,
          "\"%s\" claimed to fit %zu bytes", out, n);
    CHECK(sh_static_normalise(p, small, 0) == SH_STATIC_ETOOLONG, "outsz 0 accepted");
    const char *t = sh_mime_type(out);
    CHECK(t != NULL && t[0] != '\0', "no mime type");
}

/* sh_url_decode over s[0..n), its result normalised. */
static void check_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t olen = 12345;
    int rc = sh_url_decode(s, n, out, n + 1, &olen);
    CHECK(rc == 0 || rc == -1, "sh_url_decode = %d with room for everything", rc);
    if (rc == 0) {
        CHECK(olen <= n, "decoded %zu bytes from %zu", olen, n);
        CHECK(strlen(out) == olen, "NUL inside the decoded text");
        if (olen > 0)
            CHECK(sh_url_decode(s, n, out, olen, NULL) == -2, "no -2 with one byte short");
        CHECK(sh_url_decode(s, n, out, olen + 1, NULL) == 0, "exact size refused");
        check_static(out);
        CHECK(sh_mime_type(out) != NULL, "no mime type");
    }
    free(out);
}

/* ------------------------------------------------------------ requests */

static int is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/' || c == '=';
}

/* Everything we can check about one complete request; its digest goes into
 * the transcript. */
static void check_request(sh_http_parser *hp, sh_request *r, transcript *t)
{
    CHECK(r != NULL, "SH_HTTP_REQUEST without a request");
    CHECK(memchr(r->method, '\0', sizeof r->method) != NULL, "method not terminated");
    CHECK(r->target && r->path && r->query, "NULL string");
    CHECK(r->http_minor == 0 || r->http_minor == 1, "HTTP/1.%d", r->http_minor);
    CHECK(r->body != NULL && r->body[r->body_len] == '\0', "body not terminated");
    CHECK(r->body_len <= max_body, "body of %zu bytes", r->body_len);
    CHECK(strlen(r->target) > 0, "empty target");
    CHECK(strchr(r->query, '#') == NULL, "fragment in the query");

    tr_str(t, "method ", r->method);
    tr_str(t, "target ", r->target);
    tr_str(t, "path ", r->path);
    tr_str(t, "query ", r->query);
    tr_num(t, "minor ", (unsigned)r->http_minor);
    tr_num(t, "keep ", (unsigned)r->keep_alive);
    tr_num(t, "upgrade ", (unsigned)r->upgrade);
    tr_num(t, "body ", r->body_len);
    tr_add(t, r->body, r->body_len);

    size_t hosts = 0;
    for (size_t i = 0; i < r->nheaders; i++) {
        const sh_header *h = &r->headers[i];
        CHECK(h->name && h->value, "header %zu has a NULL", i);
        size_t vl = strlen(h->value);
        CHECK(vl == 0 || (h->value[0] != ' ' && h->value[0] != '\t'), "leading blank in \"%s\"",
              h->value);
        CHECK(vl == 0 || (h->value[vl - 1] != ' ' && h->value[vl - 1] != '\t'),
              "trailing blank in \"%s\"", h->value);
        CHECK(h->name[strcspn(h->name, " \t")] == '\0', "blank in name \"%s\"", h->name);
        hosts += strcasecmp(h->name, "Host") == 0;
        /* sh_request_header finds the first line with this name, any case */
        size_t first = i;
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(r->headers[j].name, h->name) == 0) {
                first = j;
                break;
            }
        CHECK(sh_request_header(r, h->name) == r->headers[first].value,
              "sh_request_header(\"%s\") is not line %zu", h->name, first);
        tr_str(t, "h ", h->name);
        tr_str(t, "v ", h->value);
    }
    CHECK(hosts <= 1, "%zu Host lines accepted", hosts);
    CHECK(hosts == 1 || r->http_minor == 0, "HTTP/1.1 without Host accepted");
    CHECK(sh_request_header(r, "X-Not-Sent-By-The-Fuzzer-\x01") == NULL, "phantom header");

    int hs = sh_ws_handshake_check(r);
    CHECK(hs == 0 || hs == 400 || hs == 426, "sh_ws_handshake_check = %d", hs);
    tr_num(t, "handshake ", (unsigned)hs);
    const char *key = sh_request_header(r, "Sec-WebSocket-Key");
    if (hs == 0) {
        CHECK(strcmp(r->method, "GET") == 0 && r->http_minor == 1, "handshake on %s 1.%d",
              r->method, r->http_minor);
        CHECK(key != NULL && strlen(key) == 24 && strcmp(key + 22, "==") == 0,
              "accepted key \"%s\"", key ? key : "(none)");
        const char *v = sh_request_header(r, "Sec-WebSocket-Version");
        CHECK(v && strcmp(v, "13") == 0, "accepted version \"%s\"", v ? v : "(none)");
    }
    if (key != NULL) {
        char accept[29];
        memset(accept, 'Z', sizeof accept);
        CHECK(sh_ws_accept_key(key, accept) == 0, "sh_ws_accept_key failed");
        CHECK(strlen(accept) == 28, "accept key of %zu characters", strlen(accept));
        for (int i = 0; i < 28; i++)
            CHECK(is_b64(accept[i]), "accept key \"%s\"", accept);
        if (strcmp(key, "dGhlIHNhbXBsZSBub25jZQ==") == 0) /* RFC 6455 §1.3 */
            CHECK(strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0, "wrong accept %s",
                  accept);
    }

    /* the path as conn.c serves it, and the raw target decoded again */
    check_static(r->path);
    CHECK(sh_mime_type(r->path) != NULL, "no mime type");
    size_t praw = strcspn(r->target, "?#");
    check_decode(r->target, praw);
    (void)hp;
}

/* ------------------------------------------------------------ driving */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Size of the next piece: everything when seed is 0. */
static size_t piece_len(uint8_t seed, uint64_t *rng, size_t left)
{
    static const size_t maxes[4] = {1, 7, 64, 1500};
    if (seed == 0)
        return left;
    size_t n = 1 + (size_t)(rng_next(rng) % maxes[seed & 3]);
    return n < left ? n : left;
}

/* Parse data[0..len) cut by seed; record what happened in t. small: the
 * limits are 256 and 1024 bytes instead, so that 413 on a chunked body and
 * 431 on trailers are within reach of inputs of a few KiB. */
static void run(const char *data, size_t len, uint8_t seed, int small, transcript *t)
{
    sh_http_parser hp;
    uint64_t rng = seed;
    size_t pos = 0;
    int done = 0;
    unsigned zero_progress = 0;

    max_body = small ? 1024 : MAX_BODY;
    CHECK(sh_http_parser_init(&hp, small ? 256 : MAX_HEAD, max_body) == 0, "init failed");
    CHECK(sh_http_parser_request(&hp) == NULL, "request before any byte");
    while (!done && pos < len) {
        size_t n = piece_len(seed, &rng, len - pos);
        const char *p = data + pos;
        size_t rem = n;
        while (rem > 0) {
            size_t used = 99999;
            int status = -1;
            int rc = sh_http_parser_feed(&hp, p, rem, &used, &status);
            if (rc == SH_HTTP_NEED_MORE) {
                CHECK(status == 0, "NEED_MORE with status %d", status);
                CHECK(used == rem, "NEED_MORE used %zu of %zu", used, rem);
                CHECK(sh_http_parser_request(&hp) == NULL, "request while NEED_MORE");
                rem = 0;
                break;
            }
            if (rc < 0) {
                CHECK(rc >= SH_PARSE_ESTATE && rc <= SH_PARSE_EBADREQ, "error %d", rc);
                CHECK(rc != SH_PARSE_ESTATE && rc != SH_PARSE_ENOMEM, "error %d", rc);
                CHECK(status == 400 || status == 413 || status == 431 || status == 501 ||
                          status == 505,
                      "status %d for %d", status, rc);
                CHECK(sh_http_parser_reason(&hp)[0] != '\0', "error without a reason");
                CHECK(sh_http_parser_request(&hp) == NULL, "request after an error");
                /* sticky */
                size_t u2;
                int s2;
                CHECK(sh_http_parser_feed(&hp, "GET / HTTP/1.1\r\n", 16, &u2, &s2) == rc &&
                          s2 == status,
                      "error not sticky");
                /* which error wins may depend on the cut: a head both too
                 * long and malformed gets 431 or 400 depending on whether a
                 * span callback (where the limit is checked) runs before
                 * llhttp reaches the bad byte; both refuse the request */
                tr_str(t, "error", "");
                if (getenv("SH_FUZZ_VERBOSE"))
                    fprintf(stderr, "error %d (%s)\n", status, sh_http_parser_reason(&hp));
                done = 1;
                break;
            }
            CHECK(rc == SH_HTTP_REQUEST, "feed returned %d", rc);
            CHECK(status == 0, "request with status %d", status);
            CHECK(used <= rem, "consumed %zu of %zu", used, rem);
            zero_progress = used == 0 ? zero_progress + 1 : 0;
            CHECK(zero_progress < 2, "two requests from no bytes");
            sh_request *r = sh_http_parser_request(&hp);
            p += used;
            rem -= used;
            tr_num(t, "request ending at ", (size_t)(p - data));
            check_request(&hp, r, t);
            /* an Upgrade to another protocol (h2c) is served in HTTP/1.1 */
            int stop = sh_request_has_token(r, "Upgrade", "websocket") || !r->keep_alive;
            sh_http_parser_reset(&hp);
            CHECK(sh_http_parser_request(&hp) == NULL, "request after reset");
            if (stop) { /* conn.c parses no further: WebSocket bytes or close */
                done = 1;
                break;
            }
        }
        pos += n;
    }
    tr_add(t, done ? "end\n" : "need more\n", done ? 4 : 10);
    sh_http_parser_free(&hp);
    sh_http_parser_free(&hp); /* idempotent */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t seed = data[0] & 0x7f;
    int small = data[0] >> 7;
    /* a private copy, exactly sized, so ASan sees any read past the end */
    char *bytes = malloc(size - 1 ? size - 1 : 1);
    memcpy(bytes, data + 1, size - 1);

    transcript whole = {0}, cut = {0};
    run(bytes, size - 1, 0, small, &whole);
    if (getenv("SH_FUZZ_VERBOSE")) /* what a reproducer does, for humans */
        fprintf(stderr, "--- one feed:\n%s", whole.p ? whole.p : "");
    if (seed != 0) {
        run(bytes, size - 1, seed, small, &cut);
        if (whole.len != cut.len || memcmp(whole.p, cut.p, whole.len) != 0) {
            fprintf(stderr, "fuzz_http: the result depends on how the input is cut "
                            "(seed %u)\n--- one feed:\n%s\n--- cut:\n%s\n",
                    seed, whole.p ? whole.p : "", cut.p ? cut.p : "");
            abort();
        }
    }
    free(whole.p);
    free(cut.p);
    free(bytes);
    return 0;
}
