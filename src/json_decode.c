/* json_decode.c — strict JSON → Lua values (see json_decode.h).
 *
 * One recursive-descent pass over the text. Every value is pushed on the Lua
 * stack as soon as it is read; an array or object keeps its members on the
 * stack above a placeholder slot until its closing bracket, then creates its
 * table with the exact member count, fills it and puts it in the placeholder.
 * A container with very many members (JSON_CHUNK) or a document holding very
 * many pending members across all open containers (JSON_BUDGET stack slots)
 * flushes what it holds into its table early, so the Lua stack stays bounded
 * whatever the input: only such tables are grown after creation.
 *
 * Lua API calls per value, the decoder's main cost: an array's members and an
 * object's pairs are moved into the table from the top of the stack down, each
 * lua_rawseti / lua_rawset popping its own (an object whose keys may repeat
 * is set in the text's order instead, so that the last wins: it pushes each
 * pair again). The first JSON_KEYS distinct keys, and the last string value of
 * each, are kept on the stack and pushed again when met again: an array of
 * records interns its keys and its repeated values (a status) once, not once
 * per record. Room on the stack is asked of Lua only when what it granted
 * last is used up (need_room). Strings are scanned 16 bytes at a time (SSE2).
 *
 * Memory: only Lua's. A string without escapes is pushed straight from the
 * input; one with escapes is assembled in a luaL_Buffer; a long number is
 * copied into a userdata. A parse error resets the stack to where it was; a
 * Lua memory error raised midway leaves only garbage for the collector.
 *
 * Numbers: a number of at most 15 significant digits whose decimal exponent
 * (after moving the point) is within ±22 is computed exactly as one correctly
 * rounded IEEE operation, m × 10^e or m / 10^-e with both operands exact
 * (Clinger's fast path; a plain integer of ≤ 15 digits is not even that).
 * Any other number goes to strtod, but never as the input's text: it is
 * rewritten as "[-]DIGITS e EXP" (the point removed, the exponent adjusted),
 * a form without a decimal point, which strtod reads the same in every
 * locale (a locale whose decimal point is ',' cannot change the result).
 * glibc's strtod is correctly rounded, as is the fast path, so each number
 * gets the double nearest its decimal value, as lua-cjson gave before. */
#include "json_decode.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define JSON_CHUNK 4096   /* members a container holds on the stack before flushing */
#define JSON_BUDGET 16384 /* stack slots all open containers may hold before flushing */
#define JSON_KEYS 8       /* keys kept for reuse (jd.kp), each with its last value (jd.vp) */
#define JSON_NEED 10      /* free stack slots a member may need: its key, its value, a
                           * nested container's placeholder, a luaL_Buffer's or a long
                           * number's temporaries */
#define JSON_ROOM 16      /* slots asked of Lua when fewer than JSON_NEED are known free (a
                           * small reserve: a coroutine's stack starts at 40 slots, and
                           * growing it costs more than the check) */
#define JSON_2_53 9007199254740992.0

/* The fast path needs double arithmetic done in double precision. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define JSON_FAST_FLOAT 1
#else
#define JSON_FAST_FLOAT 0
#endif

typedef struct jd {
    lua_State *L;
    const char *s;   /* the text's first byte (positions in messages count from it) */
    const char *p;   /* the next byte to read */
    const char *end; /* one past the text's last byte */
    int depth;       /* arrays and objects open */
    int pending;     /* stack slots held by members not yet in their table */
    size_t left;       /* values that may still begin (SIZE_MAX: no limit) */
    size_t max_values; /* more are refused (0: no limit) */
    char *err;       /* the caller's message buffer */
    size_t errsz;    /* its size */
    int limit;       /* the stack is known to have room up to this index (lua_checkstack) */
    /* The first JSON_KEYS distinct keys without escapes, each kept in a stack slot from
     * kbase on: a key seen again (the same names in every object of an array) is pushed
     * from there, not hashed and looked up in the string table again. Key i also keeps
     * the last string without escapes given as its value (slot kbase + JSON_KEYS + i):
     * the same value again (a status, a type: the same few values in every record) is
     * pushed from there too. */
    int kbase, nkeys;
    const char *kp[JSON_KEYS]; /* its bytes in the text */
    size_t kl[JSON_KEYS];
    const char *vp[JSON_KEYS]; /* the value's bytes in the text (NULL: none yet) */
    size_t vl[JSON_KEYS];
} jd;

/* Write "<message> at character N" (N: 1-based position of at). → -1 */
static int fail(jd *d, const char *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(jd *d, const char *at, const char *fmt, ...)
{
    if (!d->errsz)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(d->err, d->errsz, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < d->errsz)
        snprintf(d->err + n, d->errsz - (size_t)n, " at character %zu", (size_t)(at - d->s) + 1);
    return -1;
}

static int lit(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

/* What the byte at `at` starts, for a message. */
static const char *found(const jd *d, const char *at)
{
    if (at >= d->end)
        return "end of input";
    switch (*at) {
    case '{': return "'{'";
    case '}': return "'}'";
    case '[': return "'['";
    case ']': return "']'";
    case ',': return "','";
    case ':': return "':'";
    case '"': return "string";
    case '\0': return "NUL byte";
    case 't': return lit(at, d->end, "true", 4) ? "true" : "invalid token";
    case 'f': return lit(at, d->end, "false", 5) ? "false" : "invalid token";
    case 'n': return lit(at, d->end, "null", 4) ? "null" : "invalid token";
    default:
        return *at == '-' || (*at >= '0' && *at <= '9') ? "number" : "invalid token";
    }
}

static const char *skip_ws(const char *p, const char *end)
{
    /* a byte above ' ' (the usual one: compact JSON) is never whitespace */
    while (p < end && (unsigned char)*p <= ' ' &&
           (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* ------------------------------------------------------------ numbers */

/* Push v: an integer when integral and below 2^53 in magnitude. → 0, or -1
 * when it is not finite (the text overflowed a double). */
static int push_number(jd *d, double v)
{
    if (!isfinite(v)) {
        snprintf(d->err, d->errsz, "number out of range");
        return -1;
    }
    if (fabs(v) < JSON_2_53) {
        lua_Integer i = (lua_Integer)v;
        if ((double)i == v) { /* -0.0 too: integer 0 */
            lua_pushinteger(d->L, i);
            return 0;
        }
    }
    lua_pushnumber(d->L, v);
    return 0;
}

/* The digits [a, b) then [c, e) with leading zeros dropped, then "e<exp>", as
 * strtod's input (no decimal point: locale-proof). */
static double slow_number(jd *d, int neg, const char *a, const char *b, const char *c,
                          const char *e, long long exp10)
{
    size_t need = 1 + (size_t)(b - a) + (size_t)(e - c) + 32;
    char local[128];
    char *buf = local;
    int boxed = need > sizeof local;
    if (boxed)
        buf = lua_newuserdatauv(d->L, need, 0); /* Lua's memory: collected, never leaked */
    char *w = buf;
    if (neg)
        *w++ = '-';
    char *digits = w;
    for (const char *p = a; p < b; p++)
        if (w > digits || *p != '0')
            *w++ = *p;
    for (const char *p = c; p < e; p++)
        if (w > digits || *p != '0')
            *w++ = *p;
    if (w == digits)
        *w++ = '0';
    snprintf(w, 32, "e%lld", exp10);
    double v = strtod(buf, NULL);
    if (boxed)
        lua_pop(d->L, 1);
    return v;
}

static int parse_number(jd *d)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *start = d->p, *p = d->p, *end = d->end;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    const char *ia = p;
    if (p >= end || !is_digit(*p))
        goto bad;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p))
            goto bad; /* leading zero */
    } else {
        while (p < end && is_digit(*p))
            p++;
    }
    const char *ib = p, *fa = p, *fb = p;
    int plain = 1;
    if (p < end && *p == '.') {
        plain = 0;
        fa = ++p;
        while (p < end && is_digit(*p))
            p++;
        if (p == fa)
            goto bad; /* no digit after the point */
        fb = p;
    }
    long long exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        plain = 0;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        const char *ea = p;
        while (p < end && is_digit(*p)) {
            if (exp < 1000000000) /* saturate: far beyond any double either way */
                exp = exp * 10 + (*p - '0');
            p++;
        }
        if (p == ea)
            goto bad;
        if (eneg)
            exp = -exp;
    }
    d->p = p;

    size_t nint = (size_t)(ib - ia), nfrac = (size_t)(fb - fa);
    long long e10 = exp - (long long)nfrac;
    if (nint + nfrac <= 15) {
        uint64_t m = 0;
        for (const char *q = ia; q < ib; q++)
            m = m * 10 + (uint64_t)(*q - '0');
        for (const char *q = fa; q < fb; q++)
            m = m * 10 + (uint64_t)(*q - '0');
        if (plain) { /* below 10^15 < 2^53: an integer as it is */
            lua_pushinteger(d->L, neg ? -(lua_Integer)m : (lua_Integer)m);
            return 0;
        }
        if (JSON_FAST_FLOAT && e10 >= -22 && e10 <= 22) {
            double v = (double)m; /* exact: m < 2^53 */
            v = e10 < 0 ? v / pow10[-e10] : v * pow10[e10];
            return push_number(d, neg ? -v : v);
        }
    }
    return push_number(d, slow_number(d, neg, ia, ib, fa, fb, e10));
bad:
    return fail(d, start, "Expected value but found invalid number");
}

/* ------------------------------------------------------------ strings */

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned h;
        if (c >= '0' && c <= '9')
            h = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            h = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            h = (unsigned)(c - 'A' + 10);
        else
            return -1;
        v = v << 4 | h;
    }
    *out = v;
    return 0;
}

/* The \uXXXX escape at p (a pair for a surrogate) as UTF-8 into the buffer.
 * → bytes of input used (6 or 12), or -1. */
static int add_unicode(luaL_Buffer *b, const char *p, const char *end)
{
    unsigned cp, lo;
    int used = 6;
    if (hex4(p + 2, end, &cp) < 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
        return -1;
    if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate: its low half must follow */
        if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || hex4(p + 8, end, &lo) < 0 ||
            lo < 0xDC00 || lo > 0xDFFF)
            return -1;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        used = 12;
    }
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    luaL_addlstring(b, u, n);
    return used;
}

/* Bytes that end a run of plain string content: controls, '"' and '\\'. */
static const unsigned char str_special_tab[256] = {
    [0 ... 0x1F] = 1,
    ['"'] = 1,
    ['\\'] = 1,
};
static int str_special(char c) { return str_special_tab[(unsigned char)c]; }

/* The first byte from p on that ends a run of plain string content, or end. Sixteen
 * bytes at a time where SSE2 is (every x86-64): a byte below 0x20 (at most 0x1F
 * unsigned), '"' or '\\' sets its bit in the mask. */
static inline __attribute__((always_inline)) const char *scan_plain(const char *p,
                                                                    const char *end)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                  ctl = _mm_set1_epi8(0x1F);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                                _mm_cmpeq_epi8(x, bslash)),
                                   _mm_cmpeq_epi8(_mm_max_epu8(x, ctl), ctl));
        unsigned mask = (unsigned)_mm_movemask_epi8(hit);
        if (mask)
            return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    while (p < end && !str_special(*p))
        p++;
    return p;
}

/* n bytes at a and at b the same? (the last first: texts of one column, ids say, often
 * differ only there) */
static int same_bytes(const char *a, const char *b, size_t n)
{
    return n == 0 || (a[n - 1] == b[n - 1] && memcmp(a, b, n - 1) == 0);
}

/* Push the string of the n bytes at s, the value of kept key col (-1: none): the one
 * kept for it when the same, else a new one, then kept. */
static void push_text(jd *d, const char *s, size_t n, int col)
{
    if (col < 0) {
        lua_pushlstring(d->L, s, n);
        return;
    }
    int slot = d->kbase + JSON_KEYS + col;
    if (d->vp[col] && d->vl[col] == n && same_bytes(d->vp[col], s, n)) {
        lua_pushvalue(d->L, slot);
        return;
    }
    lua_pushlstring(d->L, s, n);
    lua_copy(d->L, -1, slot);
    d->vp[col] = s;
    d->vl[col] = n;
}

/* The string whose opening quote is at d->p; `what` names it in messages; col: the kept
 * key whose value it is (-1: none, or not a value). */
static int parse_escaped(jd *d, const char *what, const char *run, const char *p);

static int parse_string(jd *d, const char *what, int col)
{
    const char *run = d->p + 1, *end = d->end, *p = scan_plain(run, end);
    if (p < end && *p == '"') { /* no escapes: straight from the input */
        push_text(d, run, (size_t)(p - run), col);
        d->p = p + 1;
        return 0;
    }
    return parse_escaped(d, what, run, p);
}

/* The rest of a string with escapes (or an error) from p on, its plain start [run, p)
 * (apart: its luaL_Buffer, a kilobyte of C stack, is no cost to plain strings). */
static __attribute__((noinline)) int parse_escaped(jd *d, const char *what, const char *run,
                                                   const char *p)
{
    const char *end = d->end;
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    const char *at, *why;
    for (;;) {
        luaL_addlstring(&b, run, (size_t)(p - run));
        if (p >= end) {
            at = end, why = "unexpected end of string";
            goto bad;
        }
        if (*p == '"')
            break;
        if (*p != '\\') {
            at = p, why = "control character in string";
            goto bad;
        }
        if (p + 1 >= end) {
            at = p + 1, why = "unexpected end of string";
            goto bad;
        }
        char c;
        switch (p[1]) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            int used = add_unicode(&b, p, end);
            if (used < 0) {
                at = p, why = "invalid unicode escape code";
                goto bad;
            }
            p += used;
            goto next;
        }
        default:
            at = p, why = "invalid escape code";
            goto bad;
        }
        luaL_addchar(&b, c);
        p += 2;
    next:
        run = p;
        p = scan_plain(p, end);
    }
    luaL_pushresult(&b);
    d->p = p + 1;
    return 0;
bad:
    /* Close the buffer here, not in sh_json_decode's lua_settop: once the
     * text outgrew its first block it is a to-be-closed box, and Lua 5.4.4's
     * lua_settop keeps a stack pointer across the __close call, which can
     * grow (move) the stack: the top would be left in the freed one.
     * luaL_pushresult closes it with lua_closeslot, which is safe. */
    luaL_buffsub(&b, luaL_bufflen(&b));
    luaL_pushresult(&b);
    lua_pop(d->L, 1);
    return fail(d, at, "Expected %s but found %s", what, why);
}

/* ------------------------------------------------------------ containers */

static int parse_value(jd *d, int col);

/* A value begins at p: → 0, or -1 when it is one more than max_values. */
static int count_value(jd *d, const char *p)
{
    if (d->left-- == 0)
        return fail(d, p, "Found too many values (more than %zu)", d->max_values);
    return 0;
}

/* Before a member, with the stack's top at top: JSON_NEED free slots above it, asked of
 * Lua only when the last lua_checkstack does not already cover them (what it grants
 * stays granted until the C function returns). */
static void need_room(jd *d, int top)
{
    if (top + JSON_NEED > d->limit) {
        luaL_checkstack(d->L, JSON_ROOM, "json");
        d->limit = top + JSON_ROOM;
    }
}

/* A container starts at d->p: count it, check the depth and push its
 * placeholder (in the slot its parent reserved for it as a member). → the
 * placeholder's index, or -1. */
static int open_container(jd *d)
{
    if (++d->depth > SH_JSON_MAX_DEPTH)
        return fail(d, d->p, "Found too many nested data structures (%d)", d->depth);
    d->p++;
    lua_pushnil(d->L);
    return lua_gettop(d->L);
}

/* The table at base, created (sized for narr/nrec) if still the placeholder. */
static void make_table(lua_State *L, int base, int *made, int narr, int nrec)
{
    if (!*made) {
        lua_createtable(L, narr, nrec);
        lua_replace(L, base);
        *made = 1;
    }
}

/* Move the n array members above base into its table, after `done` others. */
static void flush_array(jd *d, int base, int *made, int *n, lua_Integer *done)
{
    make_table(d->L, base, made, *n, 0);
    for (int i = *n; i > 0; i--)
        lua_rawseti(d->L, base, *done + i); /* pops the top: the last member first */
    *done += *n;
    d->pending -= *n;
    *n = 0;
}

static int parse_array(jd *d)
{
    int base = open_container(d);
    if (base < 0)
        return -1;
    int made = 0, n = 0;
    lua_Integer done = 0;
    const char *p = skip_ws(d->p, d->end);
    if (p < d->end && *p == ']') {
        d->p = p + 1;
    } else {
        for (;;) {
            need_room(d, base + n);
            if (parse_value(d, -1) < 0)
                return -1;
            n++;
            d->pending++;
            p = skip_ws(d->p, d->end);
            if (p < d->end && *p == ',') {
                d->p = p + 1;
                if (n >= JSON_CHUNK || d->pending >= JSON_BUDGET)
                    flush_array(d, base, &made, &n, &done);
                continue;
            }
            if (p < d->end && *p == ']') {
                d->p = p + 1;
                break;
            }
            return fail(d, p, "Expected comma or array end but found %s", found(d, p));
        }
    }
    flush_array(d, base, &made, &n, &done);
    d->depth--;
    return 0;
}

/* Set the n key/value pairs above base into its table and drop them. ordered: some keys
 * may be the same (the last must win), so they are set in the text's order; else the
 * pairs are set from the top down, each lua_rawset popping its own. */
static void flush_object(jd *d, int base, int *made, int *n, int ordered)
{
    lua_State *L = d->L;
    make_table(L, base, made, 0, *n);
    if (ordered) {
        for (int i = 0; i < *n; i++) {
            lua_pushvalue(L, base + 1 + 2 * i);
            lua_pushvalue(L, base + 2 + 2 * i);
            lua_rawset(L, base);
        }
        lua_settop(L, base);
    } else {
        for (int i = *n; i > 0; i--)
            lua_rawset(L, base);
    }
    d->pending -= 2 * *n;
    *n = 0;
}

/* An object key: one kept (jd.kp) pushed again, or parsed (and kept if there is room).
 * *col: the kept key's index, -1 for one not kept (with an escape, long, or past
 * JSON_KEYS distinct ones). */
static int parse_key(jd *d, int *col)
{
    const char *run = d->p + 1, *end = d->end, *p = scan_plain(run, end);
    *col = -1;
    if (p >= end || *p != '"')
        return parse_string(d, "object key string", -1); /* an escape, or an error */
    size_t len = (size_t)(p - run);
    d->p = p + 1;
    for (int i = 0; i < d->nkeys; i++)
        if (d->kl[i] == len && memcmp(d->kp[i], run, len) == 0) {
            lua_pushvalue(d->L, d->kbase + i);
            *col = i;
            return 0;
        }
    lua_pushlstring(d->L, run, len);
    if (d->nkeys < JSON_KEYS && len <= 40) {
        lua_copy(d->L, -1, d->kbase + d->nkeys);
        d->kp[d->nkeys] = run;
        d->kl[d->nkeys] = len;
        *col = d->nkeys++;
    }
    return 0;
}

static int parse_object(jd *d)
{
    int base = open_container(d);
    if (base < 0)
        return -1;
    int made = 0, n = 0;
    /* the kept keys seen in this object; ordered once a key may repeat one before it (a
     * kept key seen again, or a key not kept: it may spell a kept one with escapes) */
    unsigned seen = 0;
    int ordered = 0;
    const char *p = skip_ws(d->p, d->end);
    if (p < d->end && *p == '}') {
        d->p = p + 1;
    } else {
        for (;;) {
            need_room(d, base + 2 * n);
            if (p >= d->end || *p != '"')
                return fail(d, p, "Expected object key string but found %s", found(d, p));
            d->p = p;
            int col;
            if (parse_key(d, &col) < 0)
                return -1;
            if (col < 0 || seen >> col & 1)
                ordered = 1;
            else
                seen |= 1u << col;
            p = skip_ws(d->p, d->end);
            if (p >= d->end || *p != ':')
                return fail(d, p, "Expected colon but found %s", found(d, p));
            /* a string, the usual value, without parse_value's dispatch */
            p = skip_ws(p + 1, d->end);
            d->p = p;
            if (p < d->end && *p == '"') {
                if (count_value(d, p) < 0 || parse_string(d, "value", col) < 0)
                    return -1;
            } else if (parse_value(d, col) < 0) {
                return -1;
            }
            n++;
            d->pending += 2;
            p = skip_ws(d->p, d->end);
            if (p < d->end && *p == ',') {
                p = skip_ws(p + 1, d->end);
                if (n >= JSON_CHUNK || d->pending >= JSON_BUDGET)
                    flush_object(d, base, &made, &n, ordered);
                continue;
            }
            if (p < d->end && *p == '}') {
                d->p = p + 1;
                break;
            }
            return fail(d, p, "Expected comma or object end but found %s", found(d, p));
        }
    }
    flush_object(d, base, &made, &n, ordered);
    d->depth--;
    return 0;
}

/* ------------------------------------------------------------ values */

/* The value at d->p; col: the kept key whose value it is (-1: none, an array's member or
 * the document). */
static int parse_value(jd *d, int col)
{
    const char *p = skip_ws(d->p, d->end);
    d->p = p;
    if (p >= d->end)
        return fail(d, p, "Expected value but found end of input");
    if (count_value(d, p) < 0)
        return -1;
    switch (*p) {
    case '{':
        return parse_object(d);
    case '[':
        return parse_array(d);
    case '"':
        return parse_string(d, "value", col);
    case 't':
        if (!lit(p, d->end, "true", 4))
            break;
        lua_pushboolean(d->L, 1);
        d->p = p + 4;
        return 0;
    case 'f':
        if (!lit(p, d->end, "false", 5))
            break;
        lua_pushboolean(d->L, 0);
        d->p = p + 5;
        return 0;
    case 'n':
        if (!lit(p, d->end, "null", 4))
            break;
        lua_pushlightuserdata(d->L, NULL);
        d->p = p + 4;
        return 0;
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return parse_number(d);
    default:
        break;
    }
    return fail(d, p, "Expected value but found %s", found(d, p));
}

int sh_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errsz)
{
    return sh_json_decode_max(L, s, len, 0, err, errsz);
}

int sh_json_decode_max(lua_State *L, const char *s, size_t len, size_t max_values, char *err,
                       size_t errsz)
{
    int top = lua_gettop(L);
    /* the kept keys and their values, then the value and what it needs */
    int kept = 2 * JSON_KEYS;
    luaL_checkstack(L, kept + JSON_NEED, "json");
    jd d = {L, s, s, s + len, 0, 0, max_values ? max_values : SIZE_MAX, max_values, err, errsz,
            top + kept + JSON_NEED, top + 1, 0, {0}, {0}, {0}, {0}};
    if (errsz)
        err[0] = '\0';
    lua_settop(L, top + kept);
    int r = parse_value(&d, -1);
    if (r == 0) {
        const char *p = skip_ws(d.p, d.end);
        if (p < d.end)
            r = fail(&d, p, "Expected the end but found %s", found(&d, p));
    }
    if (r < 0) {
        lua_settop(L, top);
        return -1;
    }
    lua_replace(L, top + 1); /* the value, over the kept keys */
    lua_settop(L, top + 1);
    return 0;
}

/* ------------------------------------------------------------ flat objects */

/* The string at *pp (its opening quote): → its content's length, *esc set when it has
 * one of the short escapes, *pp past the closing quote; -1 for what the scan leaves to
 * the decoder (a \u escape, a control byte, an invalid escape, the end of the text). */
static long flat_string(const char **pp, const char *end, int *esc)
{
    const char *p = *pp + 1, *start = p;
    *esc = 0;
    for (;;) {
        p = scan_plain(p, end);
        if (p >= end || (unsigned char)*p < 0x20)
            return -1;
        if (*p == '"')
            break;
        if (p + 1 >= end || !strchr("\"\\/bfnrt", p[1]) || p[1] == '\0')
            return -1;
        *esc = 1;
        p += 2;
    }
    *pp = p + 1;
    return (long)(p - start);
}

/* A number without exponent and of at most 300 characters (no overflow possible) */
static const char *flat_number(const char *p, const char *end)
{
    const char *a = p;
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (p < end && *p >= '1' && *p <= '9')
        while (p < end && is_digit(*p))
            p++;
    else
        return NULL;
    if (p < end && *p == '.') {
        if (++p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E'))
        return NULL;
    return p - a <= 300 ? p : NULL;
}

int sh_json_flat(const char *s, size_t len, const char *const *names, size_t n,
                 sh_json_field *out)
{
    const char *p = s, *end = s + len;
    for (size_t i = 0; i < n; i++)
        out[i] = (sh_json_field){NULL, 0, SH_JSON_ABSENT};
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        return -1;
    p = skip_ws(p, end);
    if (p < end && *p == '}')
        return skip_ws(p + 1, end) == end ? 0 : -1;
    for (;;) {
        int esc;
        if (p >= end || *p != '"')
            return -1;
        const char *key = p + 1;
        long klen = flat_string(&p, end, &esc);
        if (klen < 0 || esc)
            return -1;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ':')
            return -1;
        p = skip_ws(p, end);
        if (p >= end)
            return -1;
        sh_json_field v = {p, 0, SH_JSON_OTHER};
        if (*p == '"') {
            long vlen = flat_string(&p, end, &esc);
            if (vlen < 0)
                return -1;
            v = (sh_json_field){v.p + 1, (size_t)vlen, esc ? SH_JSON_ESCAPED : SH_JSON_STRING};
        } else if (*p == 't' && lit(p, end, "true", 4)) {
            p += 4;
        } else if (*p == 'f' && lit(p, end, "false", 5)) {
            p += 5;
        } else if (*p == 'n' && lit(p, end, "null", 4)) {
            p += 4;
        } else if (!(p = flat_number(p, end))) {
            return -1; /* a container, or what the decoder alone judges */
        }
        for (size_t i = 0; i < n; i++) {
            if (strlen(names[i]) != (size_t)klen || memcmp(names[i], key, (size_t)klen) != 0)
                continue;
            if (out[i].kind != SH_JSON_ABSENT || v.kind == SH_JSON_ESCAPED)
                return -1; /* twice (the last wins), or a value to unescape */
            out[i] = v;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            return skip_ws(p + 1, end) == end ? 0 : -1;
        return -1;
    }
}
