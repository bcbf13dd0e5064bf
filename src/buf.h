/* buf.h — the one growable byte buffer of the tree.
 *
 * Out of memory is an error the caller handles (the functions return -1 and
 * leave the buffer as it was); it is never an abort. An empty buffer holds no
 * memory: sh_buf_free() gives it back, and callers free buffers once drained
 * so an idle connection keeps none. */
#ifndef SH_BUF_H
#define SH_BUF_H

#include <stdlib.h>
#include <string.h>

/* Zeroed memory (NULL when out of memory): glibc's calloc skips the
 * per-thread cache, malloc does not; for the small records made and freed
 * per job or per message. The empty asm hides from the compiler that p came
 * from malloc, which it would otherwise fold with the memset into calloc. */
static inline void *sh_zalloc(size_t n)
{
    void *p = malloc(n);
    __asm__("" : "+r"(p));
    if (p)
        memset(p, 0, n);
    return p;
}

typedef struct sh_buf {
    char *p;
    size_t len, cap;
} sh_buf;

/* Ensure room for n more bytes. Returns 0, or -1 when out of memory. */
static inline int sh_buf_reserve(sh_buf *b, size_t n)
{
    if (n <= b->cap - b->len)
        return 0;
    if (n > ((size_t)-1 >> 2) - b->len)
        return -1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Append n bytes. Returns 0, or -1 when out of memory (nothing appended). */
static inline int sh_buf_append(sh_buf *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    if (sh_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static inline void sh_buf_free(sh_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Drop the first n bytes. */
static inline void sh_buf_consume(sh_buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

#endif
