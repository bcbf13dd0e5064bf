/* utf8.h — incremental, strict UTF-8 validation (RFC 3629).
 *
 * Accepts exactly the well-formed sequences of RFC 3629 §4: no overlong forms,
 * no surrogates (U+D800..U+DFFF), nothing past U+10FFFF, never the bytes
 * 0xC0, 0xC1 or 0xF5..0xFF. Noncharacters (U+FFFE, U+FDD0, ...) are valid.
 *
 * Fail fast: the byte that proves a sequence can never become valid is the
 * byte rejected (0xED 0xA0 fails at 0xA0, 0xF4 0x90 at 0x90, 0xE0 0x80 at
 * 0x80), as the Autobahn 6.4.x cases require. A sequence may be cut anywhere
 * across calls (WebSocket fragments, socket reads).
 *
 *     sh_utf8 u;
 *     sh_utf8_init(&u);
 *     if (sh_utf8_feed(&u, frag1, n1) < 0) ... close 1007
 *     if (sh_utf8_feed(&u, frag2, n2) < 0) ... close 1007
 *     if (!sh_utf8_at_boundary(&u)) ... message ended mid-sequence: close 1007
 */
#ifndef SH_UTF8_H
#define SH_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef struct sh_utf8 {
    uint32_t state; /* DFA state; 0 = between sequences, 1 = rejected (sticky) */
} sh_utf8;

/* Start a new text: between sequences, nothing rejected. */
void sh_utf8_init(sh_utf8 *u);

/* Validate the next n bytes of the text (p may be NULL when n is 0).
 * Returns 0 when every byte so far is valid, possibly ending mid-sequence;
 * -1 at the first invalid byte. Once -1, every later call returns -1 until
 * sh_utf8_init. */
int sh_utf8_feed(sh_utf8 *u, const uint8_t *p, size_t n);

/* 1 when the bytes fed so far end on a code point boundary (and none was
 * invalid), 0 inside a multi-byte sequence or after a rejection. A text
 * is valid as a whole when every feed returned 0 and this returns 1. */
int sh_utf8_at_boundary(const sh_utf8 *u);

/* 1 when p[0..n) is a complete, valid UTF-8 text, else 0. */
int sh_utf8_valid(const uint8_t *p, size_t n);

#endif
