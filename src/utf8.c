/* utf8.c — see utf8.h. A byte-class DFA built from the RFC 3629 §4 grammar,
 * with an 8-bytes-at-a-time fast path over ASCII between sequences.
 *
 *   UTF8-2 = %xC2-DF UTF8-tail
 *   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
 *            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
 *   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) /
 *            %xF4 %x80-8F 2( UTF8-tail )
 *
 * The restricted second bytes after E0, ED, F0 and F4 are what exclude
 * overlong forms, surrogates and code points past U+10FFFF; checking them at
 * the second byte is what makes the validator fail fast. */
#include "utf8.h"

#include <string.h>

/* DFA states. S_ACCEPT and S_REJECT are fixed at 0 and 1 (see utf8.h). */
enum {
    S_ACCEPT = 0, /* between sequences */
    S_REJECT = 1, /* an invalid byte was seen; sticky */
    S_TAIL1,      /* one UTF8-tail byte (80..BF) still expected */
    S_TAIL2,      /* two tail bytes expected */
    S_TAIL3,      /* three tail bytes expected */
    S_E0,         /* after E0: A0..BF, then one tail (no overlong 3-byte) */
    S_ED,         /* after ED: 80..9F, then one tail (no surrogates) */
    S_F0,         /* after F0: 90..BF, then two tails (no overlong 4-byte) */
    S_F4,         /* after F4: 80..8F, then two tails (nothing past U+10FFFF) */
    S_COUNT
};

/* Byte classes: bytes that every state treats alike share a class. */
enum {
    C_ASCII,  /* 00..7F */
    C_80,     /* 80..8F tail */
    C_90,     /* 90..9F tail */
    C_A0,     /* A0..BF tail */
    C_BAD,    /* C0, C1, F5..FF: never valid */
    C_LEAD2,  /* C2..DF */
    C_E0,     /* E0 */
    C_LEAD3,  /* E1..EC, EE..EF */
    C_ED,     /* ED */
    C_F0,     /* F0 */
    C_LEAD4,  /* F1..F3 */
    C_F4,     /* F4 */
    C_COUNT
};

#define A C_ASCII
#define T1 C_80
#define T2 C_90
#define T3 C_A0
#define X C_BAD
#define L2 C_LEAD2
#define L3 C_LEAD3
#define L4 C_LEAD4

/* The class of every byte value. */
static const uint8_t byte_class[256] = {
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 00..0F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 10..1F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 20..2F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 30..3F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 40..4F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 50..5F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 60..6F */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A,  /* 70..7F */
    T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, T1, /* 80..8F */
    T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, T2, /* 90..9F */
    T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, /* A0..AF */
    T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, T3, /* B0..BF */
    X, X, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2,   /* C0..CF */
    L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, L2, /* D0..DF */
    C_E0, L3, L3, L3, L3, L3, L3, L3, L3, L3, L3, L3, L3, C_ED, L3, L3, /* E0..EF */
    C_F0, L4, L4, L4, C_F4, X, X, X, X, X, X, X, X, X, X, X,        /* F0..FF */
};

#undef A
#undef T1
#undef T2
#undef T3
#undef X
#undef L2
#undef L3
#undef L4

#define R S_REJECT

/* next[state][class]: the state after a byte of that class. */
static const uint8_t next_state[S_COUNT][C_COUNT] = {
    /*            ASCII     80..8F   90..9F   A0..BF   bad  C2..DF   E0    E1..EF   ED    F0    F1..F3   F4 */
    [S_ACCEPT] = {S_ACCEPT, R,       R,       R,       R, S_TAIL1, S_E0, S_TAIL2, S_ED, S_F0, S_TAIL3, S_F4},
    [S_REJECT] = {R,        R,       R,       R,       R, R,       R,    R,       R,    R,    R,       R},
    [S_TAIL1]  = {R,        S_ACCEPT, S_ACCEPT, S_ACCEPT, R, R,    R,    R,       R,    R,    R,       R},
    [S_TAIL2]  = {R,        S_TAIL1, S_TAIL1, S_TAIL1, R, R,       R,    R,       R,    R,    R,       R},
    [S_TAIL3]  = {R,        S_TAIL2, S_TAIL2, S_TAIL2, R, R,       R,    R,       R,    R,    R,       R},
    [S_E0]     = {R,        R,       R,       S_TAIL1, R, R,       R,    R,       R,    R,    R,       R},
    [S_ED]     = {R,        S_TAIL1, S_TAIL1, R,       R, R,       R,    R,       R,    R,    R,       R},
    [S_F0]     = {R,        R,       S_TAIL2, S_TAIL2, R, R,       R,    R,       R,    R,    R,       R},
    [S_F4]     = {R,        S_TAIL2, R,       R,       R, R,       R,    R,       R,    R,    R,       R},
};

#undef R

/* Index of the first byte at or after i in p[0..n) that is not ASCII, or n.
 * Reads 8 bytes at a time through memcpy (no alignment assumptions). */
static size_t skip_ascii(const uint8_t *p, size_t i, size_t n)
{
    while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & UINT64_C(0x8080808080808080))
            break;
        i += 8;
    }
    while (i < n && p[i] < 0x80)
        i++;
    return i;
}

void sh_utf8_init(sh_utf8 *u)
{
    u->state = S_ACCEPT;
}

int sh_utf8_feed(sh_utf8 *u, const uint8_t *p, size_t n)
{
    uint32_t s = u->state;
    size_t i = 0;

    while (i < n && s != S_REJECT) {
        if (s == S_ACCEPT) {
            i = skip_ascii(p, i, n);
            if (i == n)
                break;
            /* a whole 2-byte sequence, or a 3-byte one whose lead puts no
             * bound on its second byte (not E0, ED), at once: CJK text is
             * mostly these */
            uint8_t c = p[i];
            if (c >= 0xE1 && c != 0xED && c <= 0xEF && n - i >= 3 &&
                (p[i + 1] & 0xC0) == 0x80 && (p[i + 2] & 0xC0) == 0x80) {
                i += 3;
                continue;
            }
            if (c >= 0xC2 && c <= 0xDF && n - i >= 2 && (p[i + 1] & 0xC0) == 0x80) {
                i += 2;
                continue;
            }
        }
        s = next_state[s][byte_class[p[i++]]];
    }
    u->state = s;
    return s == S_REJECT ? -1 : 0;
}

int sh_utf8_at_boundary(const sh_utf8 *u)
{
    return u->state == S_ACCEPT;
}

int sh_utf8_valid(const uint8_t *p, size_t n)
{
    sh_utf8 u;
    sh_utf8_init(&u);
    return sh_utf8_feed(&u, p, n) == 0 && sh_utf8_at_boundary(&u);
}
