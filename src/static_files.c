/* static_files.c — see static_files.h. */
#include "static_files.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* 1 for a byte that may not appear in a served path: control bytes and the
 * backslash (a separator on other systems, never needed here). */
static int forbidden_byte(unsigned char c)
{
    return c < 0x20 || c == 0x7F || c == '\\';
}

/* Append s[0..n) to out at *o, keeping room for the NUL. 0, or -2 when it
 * does not fit. */
static int append(char *out, size_t outsz, size_t *o, const char *s, size_t n)
{
    if (outsz == 0 || n > outsz - 1 - *o)
        return SH_STATIC_ETOOLONG;
    memcpy(out + *o, s, n);
    *o += n;
    return 0;
}

/* Length of the segment starting at s (up to '/' or the end); -1 when it
 * holds a forbidden byte or starts with '.'. */
static long segment_length(const char *s)
{
    size_t n = 0;
    if (s[0] == '.')
        return -1;
    for (; s[n] != '\0' && s[n] != '/'; n++)
        if (forbidden_byte((unsigned char)s[n]))
            return -1;
    return (long)n;
}

int sh_static_normalise(const char *decoded_path, char *out, size_t outsz)
{
    const char *s = decoded_path;
    size_t o = 0;
    int rc;

    if (s == NULL || s[0] != '/')
        return SH_STATIC_EREFUSED;
    while (*s != '\0') {
        while (*s == '/')
            s++;
        if (*s == '\0')
            break;
        long n = segment_length(s);
        if (n < 0)
            return SH_STATIC_EREFUSED;
        if (o > 0 && (rc = append(out, outsz, &o, "/", 1)) < 0)
            return rc;
        if ((rc = append(out, outsz, &o, s, (size_t)n)) < 0)
            return rc;
        s += n;
    }
    /* "/" or a path ending in '/' names a directory: serve its index */
    if (o == 0 || s[-1] == '/') {
        const char *index = o == 0 ? "index.html" : "/index.html";
        if ((rc = append(out, outsz, &o, index, strlen(index))) < 0)
            return rc;
    }
    out[o] = '\0';
    return 0;
}

/* Value of a hex digit, or -1. */
static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sh_url_decode(const char *in, size_t n, char *out, size_t outsz,
                  size_t *outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (n - i < 3 || hex_value(in[i + 1]) < 0 || hex_value(in[i + 2]) < 0)
                return -1;
            c = hex_value(in[i + 1]) << 4 | hex_value(in[i + 2]);
            i += 2;
        }
        if (c == 0)
            return -1;
        if (o + 1 >= outsz)
            return -2;
        out[o++] = (char)c;
    }
    if (outsz == 0)
        return -2;
    out[o] = '\0';
    if (outlen)
        *outlen = o;
    return 0;
}

/* One extension and its Content-Type. */
struct mime_entry {
    const char *ext;  /* without the dot, lower case */
    const char *type; /* the header value */
};

static const struct mime_entry mime_table[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"txt", "text/plain; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"svg", "image/svg+xml"},
    {"ico", "image/x-icon"},
    {"webp", "image/webp"},
    {"wasm", "application/wasm"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
};

const char *sh_mime_type(const char *path)
{
    const char *base = path ? strrchr(path, '/') : NULL;
    const char *dot;

    base = base ? base + 1 : path;
    dot = base ? strrchr(base, '.') : NULL;
    if (dot != NULL && dot != base) /* ".bashrc" has no extension */
        for (size_t i = 0; i < sizeof mime_table / sizeof mime_table[0]; i++)
            if (strcasecmp(dot + 1, mime_table[i].ext) == 0)
                return mime_table[i].type;
    return "application/octet-stream";
}

/* ------------------------------------------------------------ validators */

static const char wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void sh_http_date(int64_t t, char out[30])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        tt = 0; /* out of the format's range: the epoch */
        gmtime_r(&tt, &tm);
    }
    /* the remainders only tell the compiler the widths (the values fit already) */
    snprintf(out, 30, "%s, %02u %s %04u %02u:%02u:%02u GMT", wdays[tm.tm_wday % 7],
             (unsigned)tm.tm_mday % 100, months[tm.tm_mon % 12],
             (unsigned)(tm.tm_year + 1900) % 10000, (unsigned)tm.tm_hour % 100,
             (unsigned)tm.tm_min % 100, (unsigned)tm.tm_sec % 100);
}

/* 0..11 for a month's three-letter name (case-sensitive, RFC 9110), else -1. */
static int month_index(const char *m)
{
    for (int i = 0; i < 12; i++)
        if (strcmp(m, months[i]) == 0)
            return i;
    return -1;
}

/* The time of a broken-down UTC date, -1 when it names no real moment (Feb
 * 30, 25:00): timegm would move it to another day instead. */
static int date_time(int year, int mon, int day, int h, int m, int sec, int64_t *t)
{
    struct tm tm = {.tm_year = year - 1900, .tm_mon = mon, .tm_mday = day,
                    .tm_hour = h, .tm_min = m, .tm_sec = sec};
    if (year < 0 || mon < 0 || day < 1 || day > 31 || h < 0 || h > 23 || m < 0 || m > 59 ||
        sec < 0 || sec > 60)
        return -1;
    time_t tt = timegm(&tm);
    if (tm.tm_mday != day || tm.tm_mon != mon)
        return -1;
    *t = (int64_t)tt;
    return 0;
}

int sh_http_date_parse(const char *s, int64_t *t)
{
    char wd[10], mon[4];
    int day, year, h, m, sec, end = -1;
    /* %n only where the whole pattern matched; each form must use up s */
    if (sscanf(s, "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", wd, &day, mon, &year, &h,
               &m, &sec, &end) == 7 && end > 0 && s[end] == '\0' && strlen(wd) == 3)
        return date_time(year, month_index(mon), day, h, m, sec, t);
    end = -1;
    if (sscanf(s, "%9[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", wd, &day, mon, &year, &h,
               &m, &sec, &end) == 7 && end > 0 && s[end] == '\0')
        return date_time(year < 70 ? 2000 + year : 1900 + year, month_index(mon), day, h, m, sec,
                         t);
    end = -1;
    if (sscanf(s, "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", wd, mon, &day, &h, &m, &sec,
               &year, &end) == 7 && end > 0 && s[end] == '\0')
        return date_time(year, month_index(mon), day, h, m, sec, t);
    return -1;
}

void sh_static_etag(int64_t mtime_sec, long mtime_nsec, uint64_t size, char out[40])
{
    uint64_t ns = (uint64_t)mtime_sec * 1000000000u + (uint64_t)mtime_nsec;
    snprintf(out, 40, "\"%llx-%llx\"", (unsigned long long)ns, (unsigned long long)size);
}

/* Skip optional white space and commas (empty list elements are allowed). */
static const char *skip_list_space(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == ',')
        p++;
    return p;
}

int sh_etag_match(const char *v, const char *etag)
{
    const char *p = skip_list_space(v);
    if (strncmp(etag, "W/", 2) == 0)
        etag += 2;
    size_t elen = strlen(etag);
    if (*p == '*') /* alone: any current representation */
        return *skip_list_space(p + 1) == '\0';
    while (*p != '\0') {
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (*p != '"')
            return 0;
        const char *close = strchr(p + 1, '"');
        if (!close)
            return 0;
        if ((size_t)(close + 1 - p) == elen && memcmp(p, etag, elen) == 0)
            return 1;
        p = close + 1;
        if (*p != '\0' && *p != ',' && *p != ' ' && *p != '\t')
            return 0;
        p = skip_list_space(p);
    }
    return 0;
}
