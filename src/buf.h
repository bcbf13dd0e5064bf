/* buf.h — a growable byte buffer, reused across messages so the steady state
 * allocates nothing. */
#ifndef SH_BUF_H
#define SH_BUF_H

#include <stdlib.h>
#include <string.h>

typedef struct sh_buf {
    char *p;
    size_t len, cap;
} sh_buf;

/* Ensure room for n more bytes. Aborts on out-of-memory (as Lua does). */
static inline void sh_buf_reserve(sh_buf *b, size_t n)
{
    if (b->len + n <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        abort();
    b->p = p;
    b->cap = cap;
}

static inline void sh_buf_append(sh_buf *b, const void *data, size_t n)
{
    sh_buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
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
