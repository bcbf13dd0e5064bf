/* test_utf8.c — the strict incremental UTF-8 validator (src/utf8.c).
 *
 * 1. The Autobahn testsuite's 6.x payloads, each checked whole, byte by byte
 *    and split in two at every position, with the fail-fast byte index.
 * 2. A reference decoder written the slow, arithmetic way (code point
 *    intervals), compared with the DFA over every 1- and 2-byte string,
 *    every 3-byte string, and 4-byte strings over interesting bytes.
 * 3. Sequences embedded in ASCII runs of every length (the fast path),
 *    random texts with random splits, sticky rejection.
 *
 * Build: gcc -Wall -Wextra -fsanitize=address,undefined -Isrc
 *            src/utf8.c tests/unit/test_utf8.c -o test_utf8 */
#include "unit.h"
#include "utf8.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------- reference: decode by arithmetic, not by table ---------- */

/* 1 when some code point in [lo, hi] is a Unicode scalar value that needs
 * exactly `len` bytes (so the sequence is not overlong). */
static int ref_viable(uint32_t lo, uint32_t hi, int len)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (lo < min_cp[len])
        lo = min_cp[len];
    if (hi > 0x10FFFF)
        hi = 0x10FFFF;
    if (lo > hi)
        return 0;
    /* everything left is a surrogate */
    return !(lo >= 0xD800 && hi <= 0xDFFF);
}

/* Is the sequence with code point prefix `cp` and `rem` tail bytes still to
 * come viable? */
static int ref_prefix_viable(uint32_t cp, int rem, int len)
{
    uint32_t lo = cp << (6 * rem);
    uint32_t hi = lo | ((UINT32_C(1) << (6 * rem)) - 1);
    return ref_viable(lo, hi, len);
}

/* Index of the first byte that proves p[0..n) invalid, or -1. *complete is
 * set to 1 when, without such a byte, the text ends on a boundary. */
static long ref_first_bad(const uint8_t *p, size_t n, int *complete)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        int len;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xC0 && b < 0xE0)
            len = 2, cp = b & 0x1F;
        else if (b >= 0xE0 && b < 0xF0)
            len = 3, cp = b & 0x0F;
        else if (b >= 0xF0 && b < 0xF8)
            len = 4, cp = b & 0x07;
        else
            return (long)i; /* a tail byte, or a 5/6-byte lead, or FE/FF */
        if (!ref_prefix_viable(cp, len - 1, len))
            return (long)i;
        for (int k = 1; k < len; k++) {
            size_t j = i + k;
            if (j >= n) {
                *complete = 0;
                return -1;
            }
            if ((p[j] & 0xC0) != 0x80)
                return (long)j;
            cp = (cp << 6) | (p[j] & 0x3F);
            if (!ref_prefix_viable(cp, len - 1 - k, len))
                return (long)j;
        }
        i += len;
    }
    *complete = 1;
    return -1;
}

/* ---------- the validator under test, driven in different ways ---------- */

/* Feed one byte at a time; index of the first byte rejected, or -1. */
static long dfa_bytewise(const uint8_t *p, size_t n, int *boundary)
{
    sh_utf8 u;
    sh_utf8_init(&u);
    for (size_t i = 0; i < n; i++)
        if (sh_utf8_feed(&u, p + i, 1) < 0) {
            *boundary = sh_utf8_at_boundary(&u);
            return (long)i;
        }
    *boundary = sh_utf8_at_boundary(&u);
    return -1;
}

/* Feed p[0..cut) then p[cut..n); 0 or -1 as the last feed returned, and the
 * boundary flag. */
static int dfa_split(const uint8_t *p, size_t n, size_t cut, int *boundary)
{
    sh_utf8 u;
    sh_utf8_init(&u);
    int r = sh_utf8_feed(&u, p, cut);
    int r2 = sh_utf8_feed(&u, p + cut, n - cut);
    *boundary = sh_utf8_at_boundary(&u);
    return (r < 0 || r2 < 0) ? -1 : 0;
}

/* Check one text every way against the reference: whole, byte by byte, and
 * split at every position. want_bad is the expected fail-fast index (-1
 * when no byte is bad), want_valid whether the text is valid as a whole.
 * Both expectations are also checked against the reference itself. */
static void check_text(const char *name, const uint8_t *p, size_t n,
                       long want_bad, int want_valid)
{
    int ref_complete = 0, boundary = 0;
    long ref_bad = ref_first_bad(p, n, &ref_complete);
    int ref_valid = ref_bad < 0 && ref_complete;
    CHECKF(ref_bad == want_bad, "%s: reference fails at %ld, want %ld", name,
           ref_bad, want_bad);
    CHECKF(ref_valid == want_valid, "%s: reference valid=%d", name, ref_valid);

    CHECKF(sh_utf8_valid(p, n) == want_valid, "%s: sh_utf8_valid", name);

    long bad = dfa_bytewise(p, n, &boundary);
    CHECKF(bad == want_bad, "%s: bytewise fails at %ld, want %ld", name, bad,
           want_bad);
    CHECKF(boundary == want_valid, "%s: bytewise boundary=%d", name, boundary);

    for (size_t cut = 0; cut <= n; cut++) {
        int r = dfa_split(p, n, cut, &boundary);
        CHECKF(r == (want_bad >= 0 ? -1 : 0), "%s: split at %zu returns %d",
               name, cut, r);
        CHECKF(boundary == want_valid, "%s: split at %zu boundary=%d", name,
               cut, boundary);
    }
}

/* ---------- 1. the Autobahn 6.x payloads ---------- */

/* One payload: bytes as a C string literal (its length given, since some
 * contain NUL), the fail-fast index or -1, and whole validity. */
struct ab_case {
    const char *name;
    const char *bytes;
    size_t len;
    long bad;
    int valid;
};

#define KOSME "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" /* κόσμε, 11 bytes */
#define AB(name, lit, bad, valid) {name, lit, sizeof(lit) - 1, bad, valid}

static const struct ab_case ab_cases[] = {
    /* 6.1: empty payloads */
    AB("6.1.1 empty", "", -1, 1),
    /* 6.2: valid multi-code-point text */
    AB("6.2.1 Hello-µ@ßöäüàá-UTF-8!!",
       "Hello-\xc2\xb5\x40\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!",
       -1, 1),
    AB("6.2.4 κόσμε", KOSME, -1, 1),
    /* 6.3: invalid, from Markus Kuhn's test file (a surrogate) */
    AB("6.3.1 κόσμε ED A0 80 edited", KOSME "\xed\xa0\x80" "edited", 12, 0),
    /* 6.4: fail fast (the fragments are split below too) */
    AB("6.4.1 κόσμε F4 90 80 80 edited", KOSME "\xf4\x90\x80\x80" "edited", 12, 0),
    AB("6.4.3 κόσμε F4 90 80 80", KOSME "\xf4\x90\x80\x80", 12, 0),
    /* 6.5: valid */
    AB("6.5.1 κόσμε", KOSME, -1, 1),
    AB("6.5.2 U+10000", "\xf0\x90\x80\x80", -1, 1),
    AB("6.5.3 U+10FFFF", "\xf4\x8f\xbf\xbf", -1, 1),
    AB("6.5.4 mixed", "\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", -1, 1),
    AB("6.5.5 mixed 4", "a\xf0\x9f\x98\x80z", -1, 1),
    /* 6.6: κόσμε cut after every byte */
    AB("6.6.1", "\xce", -1, 0),
    AB("6.6.2", "\xce\xba", -1, 1),
    AB("6.6.3", "\xce\xba\xe1", -1, 0),
    AB("6.6.4", "\xce\xba\xe1\xbd", -1, 0),
    AB("6.6.5", "\xce\xba\xe1\xbd\xb9", -1, 1),
    AB("6.6.6", "\xce\xba\xe1\xbd\xb9\xcf", -1, 0),
    AB("6.6.7", "\xce\xba\xe1\xbd\xb9\xcf\x83", -1, 1),
    AB("6.6.8", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce", -1, 0),
    AB("6.6.9", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc", -1, 1),
    AB("6.6.10", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce", -1, 0),
    AB("6.6.11", KOSME, -1, 1),
    /* 6.7: first possible sequence of each length */
    AB("6.7.1 U+0000", "\x00", -1, 1),
    AB("6.7.2 U+0080", "\xc2\x80", -1, 1),
    AB("6.7.3 U+0800", "\xe0\xa0\x80", -1, 1),
    AB("6.7.4 U+10000", "\xf0\x90\x80\x80", -1, 1),
    /* 6.8: first possible 5- and 6-byte sequences */
    AB("6.8.1 F8 88 80 80 80", "\xf8\x88\x80\x80\x80", 0, 0),
    AB("6.8.2 FC 84 80 80 80 80", "\xfc\x84\x80\x80\x80\x80", 0, 0),
    /* 6.9: last possible sequence of each length */
    AB("6.9.1 U+007F", "\x7f", -1, 1),
    AB("6.9.2 U+07FF", "\xdf\xbf", -1, 1),
    AB("6.9.3 U+FFFF", "\xef\xbf\xbf", -1, 1),
    AB("6.9.4 U+10FFFF", "\xf4\x8f\xbf\xbf", -1, 1),
    /* 6.10: last possible 4/5/6-byte patterns (all past U+10FFFF) */
    AB("6.10.1 F7 BF BF BF", "\xf7\xbf\xbf\xbf", 0, 0),
    AB("6.10.2 FB BF BF BF BF", "\xfb\xbf\xbf\xbf\xbf", 0, 0),
    AB("6.10.3 FD BF BF BF BF BF", "\xfd\xbf\xbf\xbf\xbf\xbf", 0, 0),
    /* 6.11: other boundary conditions */
    AB("6.11.1 U+D7FF", "\xed\x9f\xbf", -1, 1),
    AB("6.11.2 U+E000", "\xee\x80\x80", -1, 1),
    AB("6.11.3 U+FFFD", "\xef\xbf\xbd", -1, 1),
    AB("6.11.4 U+10FFFF", "\xf4\x8f\xbf\xbf", -1, 1),
    AB("6.11.5 U+110000", "\xf4\x90\x80\x80", 1, 0),
    /* 6.12: unexpected continuation bytes */
    AB("6.12.1 80", "\x80", 0, 0),
    AB("6.12.2 BF", "\xbf", 0, 0),
    AB("6.12.3 80 BF", "\x80\xbf", 0, 0),
    AB("6.12.4 80 BF 80", "\x80\xbf\x80", 0, 0),
    AB("6.12.5 80 BF 80 BF", "\x80\xbf\x80\xbf", 0, 0),
    AB("6.12.6 80 BF 80 BF 80", "\x80\xbf\x80\xbf\x80", 0, 0),
    AB("6.12.7 80 BF 80 BF 80 BF", "\x80\xbf\x80\xbf\x80\xbf", 0, 0),
    AB("6.12.8 after valid", "ab\xc2\x80\x80", 4, 0),
    /* 6.14: sequences with the last continuation byte missing, then end */
    AB("6.14.1 C0", "\xc0", 0, 0),
    AB("6.14.2 E0 80", "\xe0\x80", 1, 0),
    AB("6.14.3 F0 80 80", "\xf0\x80\x80", 1, 0),
    AB("6.14.4 F8 80 80 80", "\xf8\x80\x80\x80", 0, 0),
    AB("6.14.5 FC 80 80 80 80", "\xfc\x80\x80\x80\x80", 0, 0),
    AB("6.14.6 DF", "\xdf", -1, 0),
    AB("6.14.7 EF BF", "\xef\xbf", -1, 0),
    AB("6.14.8 F7 BF BF", "\xf7\xbf\xbf", 0, 0),
    AB("6.14.9 FB BF BF BF", "\xfb\xbf\xbf\xbf", 0, 0),
    AB("6.14.10 FD BF BF BF BF", "\xfd\xbf\xbf\xbf\xbf", 0, 0),
    /* 6.15: concatenation of incomplete sequences */
    AB("6.15.1 concatenated",
       "\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80"
       "\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf",
       0, 0),
    AB("6.15.x valid incomplete then more", "\xdf\xef\xbf", 1, 0),
    /* 6.16: impossible bytes */
    AB("6.16.1 FE", "\xfe", 0, 0),
    AB("6.16.2 FF", "\xff", 0, 0),
    AB("6.16.3 FE FE FF FF", "\xfe\xfe\xff\xff", 0, 0),
    /* 6.17: overlong ASCII '/' */
    AB("6.17.1 C0 AF", "\xc0\xaf", 0, 0),
    AB("6.17.2 E0 80 AF", "\xe0\x80\xaf", 1, 0),
    AB("6.17.3 F0 80 80 AF", "\xf0\x80\x80\xaf", 1, 0),
    AB("6.17.4 F8 80 80 80 AF", "\xf8\x80\x80\x80\xaf", 0, 0),
    AB("6.17.5 FC 80 80 80 80 AF", "\xfc\x80\x80\x80\x80\xaf", 0, 0),
    /* 6.18: maximum overlong sequences */
    AB("6.18.1 C1 BF", "\xc1\xbf", 0, 0),
    AB("6.18.2 E0 9F BF", "\xe0\x9f\xbf", 1, 0),
    AB("6.18.3 F0 8F BF BF", "\xf0\x8f\xbf\xbf", 1, 0),
    AB("6.18.4 F8 87 BF BF BF", "\xf8\x87\xbf\xbf\xbf", 0, 0),
    AB("6.18.5 FC 83 BF BF BF BF", "\xfc\x83\xbf\xbf\xbf\xbf", 0, 0),
    /* 6.19: overlong NUL */
    AB("6.19.1 C0 80", "\xc0\x80", 0, 0),
    AB("6.19.2 E0 80 80", "\xe0\x80\x80", 1, 0),
    AB("6.19.3 F0 80 80 80", "\xf0\x80\x80\x80", 1, 0),
    AB("6.19.4 F8 80 80 80 80", "\xf8\x80\x80\x80\x80", 0, 0),
    AB("6.19.5 FC 80 80 80 80 80", "\xfc\x80\x80\x80\x80\x80", 0, 0),
    /* 6.20: single UTF-16 surrogates */
    AB("6.20.1 U+D800", "\xed\xa0\x80", 1, 0),
    AB("6.20.2 U+DB7F", "\xed\xad\xbf", 1, 0),
    AB("6.20.3 U+DB80", "\xed\xae\x80", 1, 0),
    AB("6.20.4 U+DBFF", "\xed\xaf\xbf", 1, 0),
    AB("6.20.5 U+DC00", "\xed\xb0\x80", 1, 0),
    AB("6.20.6 U+DF80", "\xed\xbe\x80", 1, 0),
    AB("6.20.7 U+DFFF", "\xed\xbf\xbf", 1, 0),
    /* 6.21: paired UTF-16 surrogates */
    AB("6.21.1 D800 DC00", "\xed\xa0\x80\xed\xb0\x80", 1, 0),
    AB("6.21.2 D800 DFFF", "\xed\xa0\x80\xed\xbf\xbf", 1, 0),
    AB("6.21.3 DB7F DC00", "\xed\xad\xbf\xed\xb0\x80", 1, 0),
    AB("6.21.4 DB7F DFFF", "\xed\xad\xbf\xed\xbf\xbf", 1, 0),
    AB("6.21.5 DB80 DC00", "\xed\xae\x80\xed\xb0\x80", 1, 0),
    AB("6.21.6 DB80 DFFF", "\xed\xae\x80\xed\xbf\xbf", 1, 0),
    AB("6.21.7 DBFF DC00", "\xed\xaf\xbf\xed\xb0\x80", 1, 0),
    AB("6.21.8 DBFF DFFF", "\xed\xaf\xbf\xed\xbf\xbf", 1, 0),
    /* 6.23: U+FFFD and friends, valid */
    AB("6.23.1 U+FFFD", "\xef\xbf\xbd", -1, 1),
    AB("6.23.2 a U+FFFD", "a\xef\xbf\xbd", -1, 1),
    AB("6.23.3 U+FFFD U+FFFD", "\xef\xbf\xbd\xef\xbf\xbd", -1, 1),
    /* not Autobahn: the fail-fast bytes named in the contract */
    AB("ED A0 fails at A0", "\xed\xa0", 1, 0),
    AB("F4 90 fails at 90", "\xf4\x90", 1, 0),
    AB("F0 8F fails at 8F", "\xf0\x8f", 1, 0),
    AB("E0 9F fails at 9F", "\xe0\x9f", 1, 0),
    AB("F5 fails at once", "\xf5", 0, 0),
    AB("ASCII after lead", "\xc2" "a", 1, 0),
    AB("lead after lead", "\xe1\xe1", 1, 0),
    AB("NUL inside text", "a\x00" "b", -1, 1),
};

/* Run every Autobahn payload through check_text. */
static void test_autobahn_cases(void)
{
    for (size_t i = 0; i < sizeof ab_cases / sizeof ab_cases[0]; i++) {
        const struct ab_case *c = &ab_cases[i];
        check_text(c->name, (const uint8_t *)c->bytes, c->len, c->bad, c->valid);
    }
}

/* 6.13: every lonely start byte followed by a space is invalid at the
 * space (or at the start byte itself when it can never start anything). */
static void test_lonely_starts(void)
{
    for (int b = 0xC0; b <= 0xFD; b++) {
        uint8_t s[2] = {(uint8_t)b, ' '};
        long want = (b == 0xC0 || b == 0xC1 || b >= 0xF5) ? 0 : 1;
        char name[32];
        snprintf(name, sizeof name, "6.13 %02X 20", b);
        check_text(name, s, 2, want, 0);
    }
    /* 6.12.8: all 64 continuation bytes in a row */
    uint8_t all[64];
    for (int i = 0; i < 64; i++)
        all[i] = (uint8_t)(0x80 + i);
    check_text("6.12.8 80..BF", all, 64, 0, 0);
}

/* 6.22: noncharacters U+FFFE/U+FFFF on every plane and U+FDD0..U+FDEF are
 * valid UTF-8. */
static void test_noncharacters(void)
{
    for (uint32_t plane = 0; plane <= 0x10; plane++)
        for (uint32_t low = 0xFFFE; low <= 0xFFFF; low++) {
            uint32_t cp = (plane << 16) | low;
            uint8_t s[4];
            size_t n;
            if (cp < 0x10000) {
                s[0] = (uint8_t)(0xE0 | (cp >> 12));
                s[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                s[2] = (uint8_t)(0x80 | (cp & 0x3F));
                n = 3;
            } else {
                s[0] = (uint8_t)(0xF0 | (cp >> 18));
                s[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
                s[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                s[3] = (uint8_t)(0x80 | (cp & 0x3F));
                n = 4;
            }
            char name[32];
            snprintf(name, sizeof name, "6.22 U+%04X", (unsigned)cp);
            check_text(name, s, n, -1, 1);
        }
    for (uint32_t cp = 0xFDD0; cp <= 0xFDEF; cp++) {
        uint8_t s[3] = {(uint8_t)(0xE0 | (cp >> 12)),
                        (uint8_t)(0x80 | ((cp >> 6) & 0x3F)),
                        (uint8_t)(0x80 | (cp & 0x3F))};
        char name[32];
        snprintf(name, sizeof name, "6.22 U+%04X", (unsigned)cp);
        check_text(name, s, 3, -1, 1);
    }
}

/* 6.4.x as Autobahn sends them: fragments whose boundaries fall just
 * before, inside and after the offending sequence. The failure must come
 * with the fragment holding 0x90, never later. */
static void test_fail_fast_fragments(void)
{
    static const char payload[] = KOSME "\xf4\x90\x80\x80" "edited";
    const uint8_t *p = (const uint8_t *)payload;
    /* {end of fragment 1, end of fragment 2}; fragment 3 is the rest */
    static const size_t cuts[][2] = {{11, 15}, {12, 15}, {11, 12}, {13, 15}};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        sh_utf8 u;
        sh_utf8_init(&u);
        size_t a = cuts[i][0], b = cuts[i][1];
        int r1 = sh_utf8_feed(&u, p, a);
        int r2 = sh_utf8_feed(&u, p + a, b - a);
        int r3 = sh_utf8_feed(&u, p + b, sizeof payload - 1 - b);
        /* byte 12 (0x90) is the first bad one */
        CHECKF(r1 == (a > 12 ? -1 : 0), "6.4 cut %zu/%zu: fragment 1 returned %d",
               a, b, r1);
        CHECKF(r2 == (b > 12 ? -1 : 0), "6.4 cut %zu/%zu: fragment 2 returned %d",
               a, b, r2);
        CHECKF(r3 == -1, "6.4 cut %zu/%zu: fragment 3 returned %d", a, b, r3);
    }
}

/* ---------- 2. exhaustive comparison with the reference ---------- */

/* Compare the DFA, fed byte by byte, with the reference on one string.
 * Returns 1 when they agree. */
static int agrees(const uint8_t *s, size_t n)
{
    int complete = 0, boundary = 0;
    long want = ref_first_bad(s, n, &complete);
    long got = dfa_bytewise(s, n, &boundary);
    return got == want && boundary == (want < 0 && complete) &&
           sh_utf8_valid(s, n) == (want < 0 && complete);
}

/* Every string of 1, 2 and 3 bytes; 4-byte strings whose tail bytes come
 * from the bytes where the rules change. One check per length, naming the
 * first disagreement. */
static void test_exhaustive(void)
{
    static const uint8_t edge[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F,
                                   0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
                                   0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1,
                                   0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFE, 0xFF};
    const size_t ne = sizeof edge;
    long bad2 = -1, bad3 = -1, bad4 = -1, bad1 = -1;

    for (int a = 0; a < 256; a++) {
        uint8_t s[1] = {(uint8_t)a};
        if (!agrees(s, 1) && bad1 < 0)
            bad1 = a;
    }
    for (int a = 0; a < 65536; a++) {
        uint8_t s[2] = {(uint8_t)(a >> 8), (uint8_t)a};
        if (!agrees(s, 2) && bad2 < 0)
            bad2 = a;
    }
    for (long a = 0; a < 1L << 24; a++) {
        uint8_t s[3] = {(uint8_t)(a >> 16), (uint8_t)(a >> 8), (uint8_t)a};
        if (!agrees(s, 3) && bad3 < 0)
            bad3 = a;
    }
    for (int a = 0; a < 256; a++)
        for (size_t b = 0; b < ne; b++)
            for (size_t c = 0; c < ne; c++)
                for (size_t d = 0; d < ne; d++) {
                    uint8_t s[4] = {(uint8_t)a, edge[b], edge[c], edge[d]};
                    if (!agrees(s, 4) && bad4 < 0)
                        bad4 = (long)a << 24 | edge[b] << 16 | edge[c] << 8 | edge[d];
                }
    CHECKF(bad1 < 0, "1-byte string %02lX disagrees with the reference", bad1);
    CHECKF(bad2 < 0, "2-byte string %04lX disagrees with the reference", bad2);
    CHECKF(bad3 < 0, "3-byte string %06lX disagrees with the reference", bad3);
    CHECKF(bad4 < 0, "4-byte string %08lX disagrees with the reference", bad4);
}

/* ---------- 3. fast path, splits, random texts, stickiness ---------- */

/* A valid text in many scripts (from Markus Kuhn's UTF-8 samples). */
static const char kuhn_sample[] =
    "Σὲ γνωρίζω ἀπὸ τὴν κόψη τοῦ σπαθιοῦ τὴν τρομερή, "
    "ᚻᛖ ᚳᚹᚫᚦ ᚦᚫᛏ ᚻᛖ ᛒᚢᛞᛖ ᚩᚾ ᚦᚫᛗ ᛚᚪᚾᛞᛖ ᚾᚩᚱᚦᚹᛖᚪᚱᛞᚢᛗ ᚹᛁᚦ ᚦᚪ ᚹᛖᛥᚫ "
    "Зарегистрируйтесь сейчас на Десятую Международную Конференцию "
    "გთხოვთ ახლავე გაიაროთ რეგისტრაცია Unicode-ის მეათე საერთაშორისო "
    "๏ แผ่นดินฮั่นเสื่อมโทรมแสนสังเวช ሰማይ አይታረስ ንጉሥ አይከሰስ። "
    "⡌⠁⠧⠑ ⠼⠁⠒  ⡍⠜⠇⠑⠹⠰⠎ ⡣⠕⠌ ∮ E⋅da = Q,  n → ∞, ∑ f(i) = ∏ g(i) "
    "我能吞下玻璃而不伤身体。私はガラスを食べられます。 "
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀🎉 𐍈 \xf4\x8f\xbf\xbf end";

/* Every cut into two and three pieces of the multi-script sample, and the
 * sample with one invalid byte patched in at each position. */
static void test_sample_splits(void)
{
    const uint8_t *s = (const uint8_t *)kuhn_sample;
    size_t n = sizeof kuhn_sample - 1;
    int ok = 1;
    check_text("Kuhn sample", s, n, -1, 1);
    for (size_t a = 0; a <= n && ok; a += 7)
        for (size_t b = a; b <= n; b++) {
            sh_utf8 u;
            sh_utf8_init(&u);
            int r = sh_utf8_feed(&u, s, a) | sh_utf8_feed(&u, s + a, b - a) |
                    sh_utf8_feed(&u, s + b, n - b);
            if (r != 0 || !sh_utf8_at_boundary(&u)) {
                CHECKF(0, "sample cut at %zu/%zu rejected", a, b);
                ok = 0;
                break;
            }
        }
    uint8_t *copy = malloc(n);
    long mismatch = -1;
    for (size_t i = 0; i < n; i++) {
        static const uint8_t patches[] = {0xFF, 0xC0, 0x80, 0xED, 0x20};
        for (size_t k = 0; k < sizeof patches; k++) {
            memcpy(copy, s, n);
            copy[i] = patches[k];
            if (!agrees(copy, n) && mismatch < 0)
                mismatch = (long)i;
        }
    }
    CHECKF(mismatch < 0, "patched sample disagrees at byte %ld", mismatch);
    free(copy);
}

/* Sequences inside ASCII runs of every length 0..20 on both sides, so each
 * lands at every offset of the 8-byte fast path; invalid ones must fail at
 * the same byte as the reference. */
static void test_fast_path_offsets(void)
{
    static const char *const seqs[] = {
        "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf",
        "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
        "\x80", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff",
        "\xe1\x80", "\xf1\x80\x80",
    };
    uint8_t buf[160];
    long first_bad = -1;
    /* past 64 on either side: the 32- and 8-byte steps, at every offset */
    for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++)
        for (size_t pre = 0; pre <= 70; pre++)
            for (size_t post = 0; post <= 70; post++) {
                size_t m = strlen(seqs[k]), n = pre + m + post;
                memset(buf, 'x', sizeof buf);
                memcpy(buf + pre, seqs[k], m);
                if (!agrees(buf, n) && first_bad < 0)
                    first_bad = (long)(k * 10000 + pre * 100 + post);
                int c = 0;
                long want = ref_first_bad(buf, n, &c);
                sh_utf8 u;
                sh_utf8_init(&u);
                int r = sh_utf8_feed(&u, buf, n);
                if (r != (want >= 0 ? -1 : 0) && first_bad < 0)
                    first_bad = (long)(k * 10000 + pre * 100 + post);
            }
    CHECKF(first_bad < 0, "fast path: case %ld (seq*10000+pre*100+post)",
           first_bad);
}

/* A tiny deterministic generator (xorshift32). */
static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Random texts: valid code points of every length with occasional random
 * bytes, fed in random pieces; result and boundary must match the
 * reference. */
static void test_random_texts(void)
{
    uint32_t seed = 0x12345678;
    uint8_t buf[256];
    int fails = 0;
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = 0;
        while (n < sizeof buf - 4) {
            uint32_t r = rnd(&seed);
            if (r % 97 == 0) { /* a random byte */
                buf[n++] = (uint8_t)(r >> 8);
                continue;
            }
            uint32_t cp;
            switch (r % 4) {
            case 0: cp = (r >> 8) % 0x80; break;
            case 1: cp = 0x80 + (r >> 8) % (0x800 - 0x80); break;
            case 2: cp = 0x800 + (r >> 8) % (0x10000 - 0x800); break;
            default: cp = 0x10000 + (r >> 8) % (0x110000 - 0x10000); break;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            if (cp < 0x80) {
                buf[n++] = (uint8_t)cp;
            } else if (cp < 0x800) {
                buf[n++] = (uint8_t)(0xC0 | cp >> 6);
                buf[n++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                buf[n++] = (uint8_t)(0xE0 | cp >> 12);
                buf[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else {
                buf[n++] = (uint8_t)(0xF0 | cp >> 18);
                buf[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
                buf[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (uint8_t)(0x80 | (cp & 0x3F));
            }
            if (rnd(&seed) % 16 == 0)
                break;
        }
        int complete = 0;
        long want = ref_first_bad(buf, n, &complete);
        sh_utf8 u;
        sh_utf8_init(&u);
        size_t off = 0;
        int r = 0;
        while (off < n) {
            size_t piece = 1 + rnd(&seed) % 9;
            if (piece > n - off)
                piece = n - off;
            r |= sh_utf8_feed(&u, buf + off, piece);
            off += piece;
        }
        int ok = (r == (want >= 0 ? -1 : 0)) &&
                 sh_utf8_at_boundary(&u) == (want < 0 && complete);
        if (!ok && fails++ < 5)
            CHECKF(0, "random text %d (length %zu) disagrees", iter, n);
    }
    CHECK(fails == 0);
}

/* Rejection is sticky until init; empty feeds are harmless. */
static void test_sticky_and_empty(void)
{
    sh_utf8 u;
    sh_utf8_init(&u);
    CHECK_INT(sh_utf8_feed(&u, NULL, 0), 0);
    CHECK_INT(sh_utf8_at_boundary(&u), 1);
    CHECK_INT(sh_utf8_feed(&u, (const uint8_t *)"\xe2\x82", 2), 0);
    CHECK_INT(sh_utf8_feed(&u, NULL, 0), 0);
    CHECK_INT(sh_utf8_at_boundary(&u), 0);
    CHECK_INT(sh_utf8_feed(&u, (const uint8_t *)"\xac", 1), 0); /* € */
    CHECK_INT(sh_utf8_at_boundary(&u), 1);
    CHECK_INT(sh_utf8_feed(&u, (const uint8_t *)"\xff", 1), -1);
    CHECK_INT(sh_utf8_feed(&u, (const uint8_t *)"abc", 3), -1);
    CHECK_INT(sh_utf8_feed(&u, NULL, 0), -1);
    CHECK_INT(sh_utf8_at_boundary(&u), 0);
    sh_utf8_init(&u);
    CHECK_INT(sh_utf8_feed(&u, (const uint8_t *)"abc", 3), 0);
    CHECK_INT(sh_utf8_valid(NULL, 0), 1);
}

int main(void)
{
    test_autobahn_cases();
    test_lonely_starts();
    test_noncharacters();
    test_fail_fast_fragments();
    test_exhaustive();
    test_sample_splits();
    test_fast_path_offsets();
    test_random_texts();
    test_sticky_and_empty();
    return unit_done("test_utf8");
}
