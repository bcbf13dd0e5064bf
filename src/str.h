/* str.h — small string writers for the paths run per connection or per job,
 * where snprintf's format interpreter costs ten times the copy (600 or so
 * instructions for a "%s" or a "%u"). */
#ifndef SH_STR_H
#define SH_STR_H

#include <stddef.h>
#include <string.h>

/* The C string src into dst[size] (size > 0), cut to fit, NUL-terminated: as
 * snprintf(dst, size, "%s", src). → bytes written, NUL excluded. */
static inline size_t sh_strtrunc(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

/* v in decimal at p, no NUL. → digits written (1..20) */
static inline size_t sh_fmt_u64(char *p, unsigned long long v)
{
    char t[20];
    size_t n = 0;
    do
        t[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        p[i] = t[n - 1 - i];
    return n;
}

#endif
