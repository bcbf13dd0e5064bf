/* static_files.c — see static_files.h. */
#include "static_files.h"

#include <string.h>
#include <strings.h>

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
