/* test_http_parse.c — the request parser and the WebSocket handshake rules
 * (src/http_parse.c). Scripted bytes in, requests and statuses out.
 *
 * Build (llhttp's own sources are compiled without -Wextra):
 *   gcc -Wall -Wextra -fsanitize=address,undefined -Isrc -Itests/unit
 *       -I/usr/share/include/llhttp src/http_parse.c src/static_files.c
 *       tests/unit/test_http_parse.c LLHTTP_OBJECTS -lcrypto
 * where LLHTTP_OBJECTS are /usr/share/llhttp/{api,http,llhttp}.c. */
#include "http_parse.h"
#include "unit.h"

#include <stdlib.h>

#define MAX_HEAD 8192
#define MAX_BODY 65536

/* The result of feeding one script. */
struct outcome {
    int rc;          /* the last feed's return */
    int status;      /* its *status */
    size_t consumed; /* bytes of the script used up to and including the
                      * request (SH_HTTP_REQUEST) */
    size_t feeds;    /* feed calls made */
};

/* Feed s[0..n) in pieces of `piece` bytes (0: all at once) until a request
 * or an error comes out. p must be fresh or reset. */
static struct outcome feed_pieces(sh_http_parser *p, const char *s, size_t n,
                                  size_t piece)
{
    struct outcome o = {SH_HTTP_NEED_MORE, 0, 0, 0};
    size_t off = 0;
    if (piece == 0)
        piece = n;
    while (off < n) {
        size_t len = n - off < piece ? n - off : piece, used = 0;
        o.feeds++;
        o.rc = sh_http_parser_feed(p, s + off, len, &used, &o.status);
        if (o.rc == SH_HTTP_REQUEST) {
            o.consumed = off + used;
            return o;
        }
        if (o.rc < 0)
            return o;
        CHECKF(used == len, "NEED_MORE used %zu of %zu", used, len);
        off += len;
    }
    return o;
}

/* Parse a whole script with a fresh parser: the outcome, and the parser
 * left for inspection (caller frees). */
static struct outcome parse(sh_http_parser *p, const char *s, size_t piece)
{
    sh_http_parser_init(p, MAX_HEAD, MAX_BODY);
    return feed_pieces(p, s, strlen(s), piece);
}

/* Expect a script to fail with status, in one piece and byte by byte. */
static void expect_status(const char *name, const char *s, int status)
{
    static const size_t pieces[] = {0, 1, 7};
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        sh_http_parser p;
        struct outcome o = parse(&p, s, pieces[i]);
        CHECKF(o.rc < 0 && o.status == status,
               "%s (pieces of %zu): rc %d status %d, want status %d (%s)", name,
               pieces[i], o.rc, o.status, status, sh_http_parser_reason(&p));
        sh_http_parser_free(&p);
    }
}

/* Expect a script to parse; returns nothing, checks the basics. */
static void expect_ok(const char *name, const char *s)
{
    sh_http_parser p;
    struct outcome o = parse(&p, s, 0);
    CHECKF(o.rc == SH_HTTP_REQUEST, "%s: rc %d status %d (%s)", name, o.rc,
           o.status, sh_http_parser_reason(&p));
    sh_http_parser_free(&p);
}

/* ---------- the handshake key ---------- */

static void test_accept_key(void)
{
    char out[29];
    CHECK_INT(sh_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
    CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK_INT(sh_ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", out), 0);
    CHECK_STR(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk="); /* the example key on Wikipedia */
    CHECK_INT(strlen(out), 28);
}

/* ---------- plain requests ---------- */

static const char simple_get[] =
    "GET /a%20b/c.html?x=1&y=%41#frag HTTP/1.1\r\n"
    "Host: example.com\r\n"
    "User-Agent: test  \t\r\n"
    "X-Empty:\r\n"
    "x-case: Mixed Value\r\n"
    "\r\n";

/* Every field of the simple GET. */
static void check_simple_get(const char *how, sh_http_parser *p)
{
    sh_request *r = sh_http_parser_request(p);
    CHECKF(r != NULL, "%s: no request", how);
    if (r == NULL)
        return;
    CHECK_STR(r->method, "GET");
    CHECK_STR(r->target, "/a%20b/c.html?x=1&y=%41#frag");
    CHECK_STR(r->path, "/a b/c.html");
    CHECK_STR(r->query, "x=1&y=%41");
    CHECK_INT(r->nheaders, 4);
    CHECK_STR(sh_request_header(r, "host"), "example.com");
    CHECK_STR(sh_request_header(r, "USER-AGENT"), "test");
    CHECK_STR(sh_request_header(r, "X-Empty"), "");
    CHECK_STR(sh_request_header(r, "X-Case"), "Mixed Value");
    CHECK_STR(sh_request_header(r, "Missing"), NULL);
    CHECK_STR(r->headers[3].name, "x-case");
    CHECK_INT(r->body_len, 0);
    CHECK_STR(r->body, "");
    CHECK_INT(r->http_minor, 1);
    CHECK_INT(r->keep_alive, 1);
    CHECK_INT(r->upgrade, 0);
}

/* One piece, byte by byte, and split in two at every position. */
static void test_simple_get(void)
{
    size_t n = strlen(simple_get);
    sh_http_parser p;
    struct outcome o = parse(&p, simple_get, 0);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_INT(o.consumed, n);
    check_simple_get("one piece", &p);
    sh_http_parser_free(&p);

    o = parse(&p, simple_get, 1);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_INT(o.consumed, n);
    CHECK_INT(o.feeds, n);
    check_simple_get("byte by byte", &p);
    sh_http_parser_free(&p);

    for (size_t cut = 1; cut < n; cut++) {
        size_t used;
        int status;
        sh_http_parser_init(&p, MAX_HEAD, MAX_BODY);
        int r1 = sh_http_parser_feed(&p, simple_get, cut, &used, &status);
        int r2 = sh_http_parser_feed(&p, simple_get + cut, n - cut, &used, &status);
        CHECKF(r1 == SH_HTTP_NEED_MORE && r2 == SH_HTTP_REQUEST && used == n - cut,
               "cut at %zu: %d %d used %zu", cut, r1, r2, used);
        if (r2 == SH_HTTP_REQUEST && cut % 16 == 0)
            check_simple_get("split", &p);
        sh_http_parser_free(&p);
    }
}

/* Three requests in one buffer: a GET, a POST with Content-Length and a
 * chunked POST; then a fourth split across feeds. */
static void test_pipelined(void)
{
    static const char script[] =
        "GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
        "POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
        "GET /four HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    static const char *const paths[] = {"/one", "/two", "/three", "/four"};
    static const char *const bodies[] = {"", "hello", "abcdefg", ""};
    size_t n = strlen(script), off = 0;
    sh_http_parser p;
    sh_http_parser_init(&p, MAX_HEAD, MAX_BODY);
    for (int i = 0; i < 4; i++) {
        size_t used;
        int status;
        int rc = sh_http_parser_feed(&p, script + off, n - off, &used, &status);
        CHECKF(rc == SH_HTTP_REQUEST, "request %d: rc %d status %d (%s)", i, rc,
               status, sh_http_parser_reason(&p));
        if (rc != SH_HTTP_REQUEST)
            break;
        sh_request *r = sh_http_parser_request(&p);
        CHECK_STR(r->path, paths[i]);
        CHECK_STR(r->body, bodies[i]);
        CHECK_INT(r->body_len, strlen(bodies[i]));
        CHECK_INT(r->keep_alive, i < 3);
        CHECK_INT(r->nheaders, i == 0 ? 1 : 2); /* trailers are not headers */
        /* feeding again without reset is a caller bug */
        off += used;
        if (i == 3) {
            CHECK_INT(sh_http_parser_feed(&p, "x", 1, &used, &status), SH_PARSE_ESTATE);
            CHECK_INT(status, 500);
        }
        sh_http_parser_reset(&p);
    }
    CHECK_INT(off, n);

    /* the same script byte by byte through one parser */
    sh_http_parser_reset(&p);
    int got = 0;
    for (size_t i = 0; i < n; i++) {
        size_t used;
        int status;
        int rc = sh_http_parser_feed(&p, script + i, 1, &used, &status);
        CHECKF(rc >= 0, "byte %zu: rc %d (%s)", i, rc, sh_http_parser_reason(&p));
        if (rc < 0)
            break;
        if (rc == SH_HTTP_REQUEST) {
            CHECK_STR(sh_http_parser_request(&p)->body, bodies[got]);
            CHECK_STR(sh_http_parser_request(&p)->path, paths[got]);
            got++;
            sh_http_parser_reset(&p);
        }
    }
    CHECK_INT(got, 4);
    sh_http_parser_free(&p);
}

/* A chunked body fed in every piece size from 1 to 9 bytes. */
static void test_chunked(void)
{
    static const char s[] =
        "PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
        "A\r\n0123456789\r\n"
        "0\r\n\r\nNEXT";
    for (size_t piece = 0; piece <= 9; piece++) {
        sh_http_parser p;
        struct outcome o = parse(&p, s, piece);
        CHECKF(o.rc == SH_HTTP_REQUEST, "piece %zu: rc %d", piece, o.rc);
        CHECK_INT(o.consumed, strlen(s) - 4);
        sh_request *r = sh_http_parser_request(&p);
        if (r) {
            CHECK_STR(r->body, "abcdefghijklmnopqrstuvwxyz0123456789");
            CHECK_INT(r->body_len, 36);
        }
        sh_http_parser_free(&p);
    }
    expect_status("bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\n"
                  "Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400);
}

/* Versions, methods, target forms, header quirks. */
static void test_request_lines(void)
{
    sh_http_parser p;
    struct outcome o;

    o = parse(&p, "GET / HTTP/1.0\r\n\r\n", 0);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_INT(sh_http_parser_request(&p)->http_minor, 0);
    CHECK_INT(sh_http_parser_request(&p)->keep_alive, 0);
    sh_http_parser_free(&p);

    o = parse(&p, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0);
    CHECK_INT(sh_http_parser_request(&p)->keep_alive, 1);
    sh_http_parser_free(&p);

    o = parse(&p, "GET http://example.com:80/p%41th?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", 0);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_STR(sh_http_parser_request(&p)->path, "/pAth");
    CHECK_STR(sh_http_parser_request(&p)->query, "q=1");
    sh_http_parser_free(&p);

    o = parse(&p, "GET http://example.com?q HTTP/1.1\r\nHost: example.com\r\n\r\n", 0);
    CHECK_STR(sh_http_parser_request(&p)->path, "/");
    CHECK_STR(sh_http_parser_request(&p)->query, "q");
    sh_http_parser_free(&p);

    o = parse(&p, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 0);
    CHECK_STR(sh_http_parser_request(&p)->method, "OPTIONS");
    CHECK_STR(sh_http_parser_request(&p)->path, "*");
    CHECK_STR(sh_http_parser_request(&p)->query, "");
    sh_http_parser_free(&p);

    o = parse(&p, "GET /a/..%2f..%2fetc?%zz HTTP/1.1\r\nHost: h\r\n\r\n", 0);
    CHECK_STR(sh_http_parser_request(&p)->path, "/a/../../etc"); /* not normalised */
    CHECK_STR(sh_http_parser_request(&p)->query, "%zz");         /* raw */
    sh_http_parser_free(&p);

    o = parse(&p, "\r\nGET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  b\r\n\r\n", 0);
    CHECK_INT(o.rc, SH_HTTP_REQUEST); /* a leading empty line is ignored */
    CHECK_STR(sh_http_parser_request(&p)->headers[1].value, "a  b"); /* obs-fold */
    sh_http_parser_free(&p);

    expect_status("HTTP/1.2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505);
    expect_status("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505);
    expect_status("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 505);
    expect_status("HTTP/3.0", "GET / HTTP/3.0\r\n\r\n", 505);
    expect_status("h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
    expect_status("garbage", "HELLO\r\n\r\n", 400);
    expect_status("lower-case method", "get / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("bare LF", "GET / HTTP/1.1\nHost: h\n\n", 400);
    expect_status("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400);
    expect_status("no Host on 1.1", "GET / HTTP/1.1\r\n\r\n", 400);
    expect_status("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    expect_status("bad escape", "GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("encoded NUL", "GET /a%00 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("control in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n", 400);
    expect_ok("1.0 without Host", "GET / HTTP/1.0\r\n\r\n");
}

/* Content-Length / Transfer-Encoding conflicts and codings. */
static void test_framing(void)
{
    expect_status("CL then TE",
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    expect_status("TE then CL",
                  "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                  "Content-Length: 3\r\n\r\n0\r\n\r\n", 400);
    expect_status("two equal CL",
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                  "Content-Length: 3\r\n\r\nabc", 400);
    expect_status("two different CL",
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                  "Content-Length: 4\r\n\r\nabcd", 400);
    expect_status("CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", 400);
    expect_status("CL negative", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400);
    expect_status("CL overflow",
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400);
    expect_status("TE gzip only (chunked not final)",
                  "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400);
    expect_status("TE chunked, gzip",
                  "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
    expect_status("TE twice",
                  "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    expect_status("TE gzip, chunked",
                  "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501);
    expect_status("TE in HTTP/1.0",
                  "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    expect_ok("TE chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
}

/* ---------- limits ---------- */

/* A head exactly at the limit passes; one byte more is 431. */
static void test_head_limit_exact(void)
{
    char *s = malloc(MAX_HEAD + 64);
    static const char start[] = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
    size_t fill = MAX_HEAD - strlen(start) - 4; /* "\r\n\r\n" ends the head */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = 0;
        memcpy(s, start, strlen(start));
        n = strlen(start);
        memset(s + n, 'v', fill + extra);
        n += fill + extra;
        memcpy(s + n, "\r\n\r\n", 5);
        for (size_t piece = 0; piece <= 1024; piece += 1024) {
            sh_http_parser p;
            struct outcome o = parse(&p, s, piece);
            if (extra == 0)
                CHECKF(o.rc == SH_HTTP_REQUEST, "head of %d bytes: rc %d", MAX_HEAD, o.rc);
            else
                CHECKF(o.rc == SH_PARSE_EHEADSIZE && o.status == 431,
                       "head of %d bytes: rc %d", MAX_HEAD + 1, o.rc);
            sh_http_parser_free(&p);
        }
    }
    free(s);
}

/* A 1 MiB head: refused in one piece, and in 1 KiB pieces soon after the
 * limit — never buffered whole. Also many small headers, and a long URL. */
static void test_head_limit_big(void)
{
    size_t n = 1 << 20;
    char *s = malloc(n + 1);
    static const char start[] = "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ";
    memcpy(s, start, strlen(start));
    memset(s + strlen(start), 'a', n - strlen(start));
    s[n] = '\0';

    sh_http_parser p;
    struct outcome o = parse(&p, s, 0);
    CHECK_INT(o.rc, SH_PARSE_EHEADSIZE);
    CHECK_INT(o.status, 431);
    CHECKF(p.buf_cap <= 2 * MAX_HEAD, "buffered %zu bytes", p.buf_cap);
    sh_http_parser_free(&p);

    o = parse(&p, s, 1024);
    CHECK_INT(o.rc, SH_PARSE_EHEADSIZE);
    CHECK_INT(o.status, 431);
    CHECKF(o.feeds <= MAX_HEAD / 1024 + 1, "refused after %zu pieces", o.feeds);
    CHECKF(p.buf_cap <= 2 * MAX_HEAD, "buffered %zu bytes", p.buf_cap);
    sh_http_parser_free(&p);

    /* many small headers */
    size_t off = strlen("GET / HTTP/1.1\r\nHost: h\r\n");
    memcpy(s, "GET / HTTP/1.1\r\nHost: h\r\n", off);
    while (off + 8 < n) {
        memcpy(s + off, "A: b\r\n", 6);
        off += 6;
    }
    s[off] = '\0';
    for (size_t piece = 0; piece <= 1024; piece += 1024) {
        o = parse(&p, s, piece);
        CHECK_INT(o.rc, SH_PARSE_EHEADSIZE);
        CHECKF(o.feeds <= MAX_HEAD / 1024 + 1, "refused after %zu pieces", o.feeds);
        CHECKF(p.nat <= MAX_HEAD / 6 + 1, "kept %zu headers", p.nat);
        sh_http_parser_free(&p);
    }

    /* a long request-target */
    memcpy(s, "GET /", 5);
    memset(s + 5, 'u', n - 5);
    s[n] = '\0';
    o = parse(&p, s, 1024);
    CHECK_INT(o.status, 431);
    CHECKF(o.feeds <= MAX_HEAD / 1024 + 1, "refused after %zu pieces", o.feeds);
    sh_http_parser_free(&p);

    /* whitespace that no span reports still counts */
    memcpy(s, "GET / HTTP/1.1\r\nHost: h\r\nX:", 27);
    memset(s + 27, ' ', n - 27);
    s[n] = '\0';
    o = parse(&p, s, 1024);
    CHECK_INT(o.status, 431);
    CHECKF(o.feeds <= MAX_HEAD / 1024 + 1, "refused after %zu pieces", o.feeds);
    sh_http_parser_free(&p);
    free(s);
}

/* Bodies over max_body: refused from Content-Length before any body byte,
 * and as chunks arrive. Trailers are bounded too. */
static void test_body_limit(void)
{
    char head[256];
    snprintf(head, sizeof head,
             "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n", MAX_BODY + 1);
    sh_http_parser p;
    struct outcome o = parse(&p, head, 0);
    CHECK_INT(o.rc, SH_PARSE_EBODYSIZE);
    CHECK_INT(o.status, 413);
    sh_http_parser_free(&p);

    /* exactly max_body is fine */
    size_t hl = (size_t)snprintf(head, sizeof head,
                                 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n",
                                 MAX_BODY);
    char *s = malloc(hl + MAX_BODY + 1);
    memcpy(s, head, hl);
    memset(s + hl, 'b', MAX_BODY);
    s[hl + MAX_BODY] = '\0';
    o = parse(&p, s, 4096);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_INT(sh_http_parser_request(&p)->body_len, MAX_BODY);
    sh_http_parser_reset(&p); /* gives the large body buffer back */
    CHECK_INT(p.body_cap, 0);
    CHECK(p.buf_cap > 0 && p.at_cap > 0); /* a small head's buffers are kept */
    sh_http_parser_free(&p);
    free(s);

    /* a head of 2,000 header lines: its buffers go back at reset too */
    s = malloc(64 + 4 * 2000);
    hl = (size_t)snprintf(s, 64, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 2000; i++, hl += 4)
        memcpy(s + hl, "A:\r\n", 4);
    memcpy(s + hl, "\r\n", 3);
    sh_http_parser_init(&p, 16384, MAX_BODY);
    o = feed_pieces(&p, s, strlen(s), 4096);
    CHECK_INT(o.rc, SH_HTTP_REQUEST);
    CHECK_INT(sh_http_parser_request(&p)->nheaders, 2001);
    sh_http_parser_reset(&p);
    CHECK(p.buf == NULL && p.at == NULL && p.headers == NULL);
    CHECK_INT(p.buf_cap + p.at_cap + p.headers_cap, 0);
    sh_http_parser_free(&p);
    free(s);

    /* chunked: 17 chunks of 4 KiB = 68 KiB > 64 KiB */
    size_t cap = 256 + 17 * (4096 + 16);
    s = malloc(cap);
    size_t n = (size_t)snprintf(s, cap, "POST / HTTP/1.1\r\nHost: h\r\n"
                                        "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 17; i++) {
        n += (size_t)snprintf(s + n, cap - n, "1000\r\n");
        memset(s + n, 'c', 4096);
        n += 4096;
        n += (size_t)snprintf(s + n, cap - n, "\r\n");
    }
    s[n] = '\0';
    o = parse(&p, s, 1000);
    CHECK_INT(o.rc, SH_PARSE_EBODYSIZE);
    CHECK_INT(o.status, 413);
    sh_http_parser_free(&p);
    free(s);

    /* huge trailers */
    cap = MAX_HEAD * 2 + 256;
    s = malloc(cap);
    n = (size_t)snprintf(s, cap, "POST / HTTP/1.1\r\nHost: h\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\n0\r\nT: ");
    memset(s + n, 't', MAX_HEAD + 10);
    n += MAX_HEAD + 10;
    s[n] = '\0';
    o = parse(&p, s, 0);
    CHECK_INT(o.status, 431);
    sh_http_parser_free(&p);
    free(s);
}

/* ---------- upgrade ---------- */

static const char ws_head[] =
    "GET /chat?fid=1 HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

/* The bytes after the head are WebSocket frames: consumed stops at the
 * head, in one piece and byte by byte. */
static void test_upgrade_leftover(void)
{
    char s[512];
    size_t hn = strlen(ws_head);
    memcpy(s, ws_head, hn);
    memcpy(s + hn, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
    s[hn + 11] = '\0';

    for (size_t piece = 0; piece <= 1; piece++) {
        sh_http_parser p;
        sh_http_parser_init(&p, MAX_HEAD, MAX_BODY);
        struct outcome o = feed_pieces(&p, s, hn + 11, piece);
        CHECK_INT(o.rc, SH_HTTP_REQUEST);
        CHECK_INT(o.consumed, hn);
        sh_request *r = sh_http_parser_request(&p);
        if (r) {
            CHECK_INT(r->upgrade, 1);
            CHECK_STR(r->path, "/chat");
            CHECK_STR(r->query, "fid=1");
            CHECK_INT(sh_ws_handshake_check(r), 0);
            char accept[29];
            sh_ws_accept_key(sh_request_header(r, "sec-websocket-key"), accept);
            CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        }
        sh_http_parser_free(&p);
    }

    expect_status("upgrade with Content-Length",
                  "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nContent-Length: 2\r\n\r\nab", 400);
    expect_status("upgrade chunked",
                  "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    expect_ok("upgrade with Content-Length: 0",
              "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nContent-Length: 0\r\n\r\n");
}

/* Build a handshake from ws_head with one line replaced (or removed when
 * repl is ""), parse it, and return sh_ws_handshake_check's verdict. */
static int handshake_with(const char *line_start, const char *repl)
{
    char s[1024];
    const char *at = strstr(ws_head, line_start);
    size_t n = 0;
    if (at == NULL) { /* add the line instead */
        n = strlen(ws_head) - 2;
        memcpy(s, ws_head, n);
        n += (size_t)snprintf(s + n, sizeof s - n, "%s\r\n", repl);
    } else {
        const char *eol = strstr(at, "\r\n") + 2;
        n = (size_t)(at - ws_head);
        memcpy(s, ws_head, n);
        n += (size_t)snprintf(s + n, sizeof s - n, "%s%s", repl, *repl ? "\r\n" : "");
        n += (size_t)snprintf(s + n, sizeof s - n, "%s", eol);
        n -= 2; /* the final CRLF is added below */
    }
    memcpy(s + n, "\r\n", 3);

    sh_http_parser p;
    struct outcome o = parse(&p, s, 0);
    int verdict = o.rc == SH_HTTP_REQUEST
                      ? sh_ws_handshake_check(sh_http_parser_request(&p))
                      : -o.status;
    sh_http_parser_free(&p);
    return verdict;
}

static void test_handshake_check(void)
{
    CHECK_INT(handshake_with("Origin:", "Origin: http://example.com"), 0);
    /* method and version */
    CHECK_INT(handshake_with("GET /chat", "POST /chat HTTP/1.1"), 400);
    CHECK_INT(handshake_with("GET /chat", "GET /chat HTTP/1.0"), 400);
    /* Upgrade and Connection tokens */
    CHECK_INT(handshake_with("Upgrade:", ""), 400);
    CHECK_INT(handshake_with("Upgrade:", "Upgrade: h2c"), 400);
    CHECK_INT(handshake_with("Upgrade:", "Upgrade: WebSocket"), 0);
    CHECK_INT(handshake_with("Upgrade:", "Upgrade: foo/2, websocket"), 0);
    CHECK_INT(handshake_with("Upgrade:", "Upgrade: websockets"), 400);
    CHECK_INT(handshake_with("Connection:", ""), 400);
    CHECK_INT(handshake_with("Connection:", "Connection: keep-alive"), 400);
    CHECK_INT(handshake_with("Connection:", "Connection: keep-alive, Upgrade"), 0);
    CHECK_INT(handshake_with("Connection:", "Connection: keep-alive,UPGRADE "), 0);
    CHECK_INT(handshake_with("Connection:", "Connection: upgraded"), 400);
    CHECK_INT(handshake_with("Connection:", "Connection: keep-alive\r\nConnection: upgrade"), 0);
    /* Host */
    CHECK_INT(handshake_with("Host:", "Host: a\r\nHost: b"), -400); /* parser refuses */
    /* version: 426 */
    CHECK_INT(handshake_with("Sec-WebSocket-Version:", ""), 426);
    CHECK_INT(handshake_with("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 8"), 426);
    CHECK_INT(handshake_with("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 13, 8"), 426);
    CHECK_INT(handshake_with("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 013"), 426);
    CHECK_INT(handshake_with("Sec-WebSocket-Version:",
                             "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13"), 426);
    /* key: 400 */
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", ""), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key:"), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ="), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j"), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=A"), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub2*jZQ=="), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXM="), 400);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="), 0);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key:   x3JJHMbDL1EzLkh9GBhXDw==  "), 0);
    CHECK_INT(handshake_with("Sec-WebSocket-Key:",
                             "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
                             "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw=="), 400);
}

/* Errors are sticky; reset makes the parser usable again; free twice and
 * free of a zeroed parser are harmless. */
static void test_lifecycle(void)
{
    sh_http_parser p;
    size_t used;
    int status;
    sh_http_parser_init(&p, MAX_HEAD, MAX_BODY);
    CHECK_INT(sh_http_parser_feed(&p, "BAD\r\n", 5, &used, &status), SH_PARSE_EBADREQ);
    CHECK_INT(status, 400);
    CHECK(sh_http_parser_request(&p) == NULL);
    CHECK(strlen(sh_http_parser_reason(&p)) > 0);
    CHECK_INT(sh_http_parser_feed(&p, "GET / HTTP/1.1\r\n", 16, &used, &status), SH_PARSE_EBADREQ);
    CHECK_INT(status, 400);
    sh_http_parser_reset(&p);
    CHECK_STR(sh_http_parser_reason(&p), "");
    CHECK_INT(sh_http_parser_feed(&p, NULL, 0, &used, &status), SH_HTTP_NEED_MORE);
    CHECK(sh_http_parser_request(&p) == NULL);
    CHECK_INT(sh_http_parser_feed(&p, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 27, &used, &status),
              SH_HTTP_REQUEST);
    CHECK_INT(used, 27);
    sh_http_parser_free(&p);
    sh_http_parser_free(&p);
    sh_http_parser_free(NULL);
}

int main(void)
{
    test_accept_key();
    test_simple_get();
    test_pipelined();
    test_chunked();
    test_request_lines();
    test_framing();
    test_head_limit_exact();
    test_head_limit_big();
    test_body_limit();
    test_upgrade_leftover();
    test_handshake_check();
    test_lifecycle();
    return unit_done("test_http_parse");
}
