/* test_static_files.c — path safety, percent-decoding, content types and
 * validators (src/static_files.c).
 *
 * Build: gcc -Wall -Wextra -fsanitize=address,undefined -Isrc
 *            src/static_files.c tests/unit/test_static_files.c -o test_static */
#include "static_files.h"
#include "unit.h"

/* Decode the raw request path, then normalise it, as the server does.
 * Returns the first negative code met, or 0 with the result in out. */
static int serve_path(const char *raw, char *out, size_t outsz)
{
    char decoded[512];
    int rc = sh_url_decode(raw, strlen(raw), decoded, sizeof decoded, NULL);
    if (rc < 0)
        return rc;
    return sh_static_normalise(decoded, out, outsz);
}

/* Paths that map into the root, and what they map to. */
static void test_normalise_ok(void)
{
    static const char *const cases[][2] = {
        {"/", "index.html"},
        {"/index.html", "index.html"},
        {"/a/b.css", "a/b.css"},
        {"/docs/", "docs/index.html"},
        {"/docs", "docs"},
        {"//etc/passwd", "etc/passwd"},
        {"///a//b///c", "a/b/c"},
        {"/a/b/", "a/b/index.html"},
        {"//", "index.html"},
        {"/a.b.c", "a.b.c"},
        {"/a../b", "a../b"},
        {"/a/b..", "a/b.."},
        {"/%E4%BD%A0%E5%A5%BD.txt", "\xe4\xbd\xa0\xe5\xa5\xbd.txt"},
        {"/a%20b.html", "a b.html"},
        {"/a+b", "a+b"},
        {"/a%2Fb", "a/b"}, /* an encoded slash is a separator */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256] = "";
        int rc = serve_path(cases[i][0], out, sizeof out);
        CHECKF(rc == 0, "%s: rc %d", cases[i][0], rc);
        CHECKF(strcmp(out, cases[i][1]) == 0, "%s: got \"%s\", want \"%s\"",
               cases[i][0], out, cases[i][1]);
        CHECKF(out[0] != '/', "%s: absolute result", cases[i][0]);
    }
}

/* Paths that must never be served: traversal, hidden files, odd bytes. */
static void test_normalise_refused(void)
{
    static const char *const cases[] = {
        "/../etc/passwd",
        "/a/../../x",
        "/a/..",
        "/..",
        "/%2e%2e/x",
        "/%2E%2E/x",
        "/..%2fx",
        "/..%2Fx",
        "/%2e%2e%2fetc%2fpasswd",
        "/a/%2e%2e/%2e%2e/etc/passwd",
        "/./a",          /* "." segments are refused, not collapsed */
        "/a/./b",
        "/.",
        "/.git/config",
        "/.env",
        "/a/.htaccess",
        "/a\\..\\..\\x",  /* backslashes */
        "/a%5c..%5cx",
        "/a%5Cb",
        "/a%0ab",        /* control bytes */
        "/a%7fb",
        "/a\tb",
        "",
        "a/b",           /* not starting with '/' */
        "*",
        "%2fetc/passwd", /* decodes to an absolute path: the leading '/' is fine,
                          * it stays inside the root — see test below */
    };
    for (size_t i = 0; i + 1 < sizeof cases / sizeof cases[0]; i++) {
        char out[256] = "untouched";
        int rc = serve_path(cases[i], out, sizeof out);
        CHECKF(rc < 0, "\"%s\" was accepted as \"%s\"", cases[i], out);
    }
    char out[256];
    CHECK_INT(serve_path("%2fetc/passwd", out, sizeof out), 0);
    CHECK_STR(out, "etc/passwd");
    CHECK_INT(sh_static_normalise(NULL, out, sizeof out), SH_STATIC_EREFUSED);
}

/* Encoded NUL and bad escapes fail in decoding already. */
static void test_url_decode(void)
{
    char out[64];
    size_t n = 99;
    CHECK_INT(sh_url_decode("/a%41%62c", 9, out, sizeof out, &n), 0);
    CHECK_STR(out, "/aAbc");
    CHECK_INT(n, 5);
    CHECK_INT(sh_url_decode("%e2%82%ac", 9, out, sizeof out, &n), 0);
    CHECK_STR(out, "\xe2\x82\xac");
    CHECK_INT(sh_url_decode("", 0, out, sizeof out, &n), 0);
    CHECK_STR(out, "");
    CHECK_INT(n, 0);
    CHECK_INT(sh_url_decode("/a%00b", 6, out, sizeof out, NULL), -1);
    CHECK_INT(sh_url_decode("/a%0", 4, out, sizeof out, NULL), -1);
    CHECK_INT(sh_url_decode("/a%", 3, out, sizeof out, NULL), -1);
    CHECK_INT(sh_url_decode("/a%zz", 5, out, sizeof out, NULL), -1);
    CHECK_INT(sh_url_decode("/a%4g", 5, out, sizeof out, NULL), -1);
    CHECK_INT(sh_url_decode("/a\0b", 4, out, sizeof out, NULL), -1);
    /* n bounds the input: the "%41" past n is not read */
    CHECK_INT(sh_url_decode("ab%41", 2, out, sizeof out, &n), 0);
    CHECK_STR(out, "ab");
    /* a '%' right at the end of the counted input is a bad escape */
    CHECK_INT(sh_url_decode("ab%41", 3, out, sizeof out, NULL), -1);
    /* output size: n + 1 always fits, n does not */
    CHECK_INT(sh_url_decode("abcd", 4, out, 5, &n), 0);
    CHECK_INT(sh_url_decode("abcd", 4, out, 4, NULL), -2);
    CHECK_INT(sh_url_decode("%41%41", 6, out, 3, &n), 0);
    CHECK_STR(out, "AA");
    CHECK_INT(sh_url_decode("", 0, out, 0, NULL), -2);
}

/* Results that do not fit are refused, never truncated. */
static void test_normalise_sizes(void)
{
    char out[12];
    CHECK_INT(sh_static_normalise("/", out, 10), SH_STATIC_ETOOLONG);
    CHECK_INT(sh_static_normalise("/", out, 11), 0); /* 10 bytes + NUL */
    CHECK_STR(out, "index.html");
    CHECK_INT(sh_static_normalise("/abcdefghijk", out, 12), 0);
    CHECK_STR(out, "abcdefghijk");
    CHECK_INT(sh_static_normalise("/abcdefghijkl", out, 12), SH_STATIC_ETOOLONG);
    CHECK_INT(sh_static_normalise("/ab/", out, 12), SH_STATIC_ETOOLONG);
    CHECK_INT(sh_static_normalise("/a", out, 0), SH_STATIC_ETOOLONG);
}

/* Content types by extension, case-insensitively. */
static void test_mime(void)
{
    static const char *const cases[][2] = {
        {"index.html", "text/html; charset=utf-8"},
        {"a/b/INDEX.HTM", "text/html; charset=utf-8"},
        {"s.css", "text/css; charset=utf-8"},
        {"app.js", "text/javascript; charset=utf-8"},
        {"mod.mjs", "text/javascript; charset=utf-8"},
        {"d.json", "application/json"},
        {"app.js.map", "application/json"},
        {"i.png", "image/png"},
        {"i.jpg", "image/jpeg"},
        {"i.JPEG", "image/jpeg"},
        {"i.gif", "image/gif"},
        {"i.svg", "image/svg+xml"},
        {"favicon.ico", "image/x-icon"},
        {"r.txt", "text/plain; charset=utf-8"},
        {"m.wasm", "application/wasm"},
        {"i.webp", "image/webp"},
        {"f.woff2", "font/woff2"},
        {"f.woff", "font/woff"},
        {"archive.tar.gz", "application/octet-stream"},
        {"noext", "application/octet-stream"},
        {"dir.d/noext", "application/octet-stream"},
        {".html", "application/octet-stream"},
        {"a.", "application/octet-stream"},
        {"", "application/octet-stream"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_STR(sh_mime_type(cases[i][0]), cases[i][1]);
    CHECK_STR(sh_mime_type(NULL), "application/octet-stream");
}

/* HTTP-dates: the one form written, the three read. */
static void test_http_date(void)
{
    char out[30];
    sh_http_date(784111777, out);
    CHECK_STR(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    sh_http_date(0, out);
    CHECK_STR(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    sh_http_date(951782400, out); /* a leap day */
    CHECK_STR(out, "Tue, 29 Feb 2000 00:00:00 GMT");

    static const struct {
        const char *s;
        long long t; /* -1: refused */
    } cases[] = {
        {"Sun, 06 Nov 1994 08:49:37 GMT", 784111777},
        {"Sunday, 06-Nov-94 08:49:37 GMT", 784111777},
        {"Sun Nov  6 08:49:37 1994", 784111777},
        {"Sun Nov 6 08:49:37 1994", 784111777},
        {"Monday, 01-Jan-01 00:00:00 GMT", 978307200}, /* two digits below 70: 20xx */
        {"Tue, 29 Feb 2000 00:00:00 GMT", 951782400},
        {"Mon, 06 Nov 1994 08:49:37 GMT", 784111777}, /* the weekday is not checked */
        {"Sun, 06 Nov 1994 08:49:37 UTC", -1},
        {"Sun, 06 Nov 1994 08:49:37 GMT extra", -1},
        {"Sun, 06 nov 1994 08:49:37 GMT", -1}, /* month names are case-sensitive */
        {"Sun, 30 Feb 1994 08:49:37 GMT", -1},
        {"Sun, 06 Nov 1994 24:00:00 GMT", -1},
        {"Sun, 06 Nov 1994 08:60:00 GMT", -1},
        {"Sun, 06 Nov 1994 -8:49:37 GMT", -1},
        {"Sun, 06 Nov 1994", -1},
        {"784111777", -1},
        {"", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t t = -7;
        int rc = sh_http_date_parse(cases[i].s, &t);
        if (cases[i].t < 0)
            CHECKF(rc == -1, "\"%s\": accepted as %lld", cases[i].s, (long long)t);
        else
            CHECKF(rc == 0 && t == cases[i].t, "\"%s\": rc %d, %lld", cases[i].s, rc,
                   (long long)t);
    }
    /* what is written reads back */
    for (int64_t t = 0; t < 4102444800; t += 86399 * 397) {
        int64_t back = -1;
        sh_http_date(t, out);
        CHECKF(sh_http_date_parse(out, &back) == 0 && back == t, "%s", out);
    }
}

/* Entity tags and If-None-Match. */
static void test_etag(void)
{
    char tag[40];
    sh_static_etag(1, 5, 10, tag);
    CHECK_STR(tag, "\"3b9aca05-a\"");
    sh_static_etag(1, 6, 10, tag); /* a nanosecond later: another tag */
    CHECK_STR(tag, "\"3b9aca06-a\"");
    sh_static_etag(4102444800, 999999999, UINT64_MAX, tag);
    CHECK(strlen(tag) < 40);

    static const struct {
        const char *v;
        int match;
    } cases[] = {
        {"\"abc\"", 1},
        {"W/\"abc\"", 1}, /* weak comparison */
        {"\"x\", \"abc\"", 1},
        {"\"x\",\"abc\"", 1},
        {" \"x\" ,\t W/\"abc\" ", 1},
        {",,\"abc\",", 1},
        {"*", 1},
        {" * ", 1},
        {"\"abcd\"", 0},
        {"\"ab\"", 0},
        {"abc", 0},         /* not quoted */
        {"\"abc", 0},       /* unterminated */
        {"\"x\"y, \"abc\"", 0}, /* malformed before it */
        {"*, \"abc\"", 0},  /* "*" only alone */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECKF(sh_etag_match(cases[i].v, "\"abc\"") == cases[i].match, "[%s]", cases[i].v);
        CHECKF(sh_etag_match(cases[i].v, "W/\"abc\"") == cases[i].match, "W/ [%s]", cases[i].v);
    }
}

int main(void)
{
    test_normalise_ok();
    test_normalise_refused();
    test_url_decode();
    test_normalise_sizes();
    test_mime();
    test_http_date();
    test_etag();
    return unit_done("test_static_files");
}
