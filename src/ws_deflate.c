/* ws_deflate.c — permessage-deflate (RFC 7692): negotiation, inflating and
 * deflating. See ws_deflate.h for the policy. Depends on zlib and buf.h
 * only: ws_conn.c and conn.c call it, it calls nothing of theirs. */
#include "ws_deflate.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

/* ------------------------------------------------------------ negotiation */

#define TOKEN_MAX 64 /* longer names and values match nothing we know */

static void skip_ows(const char **s)
{
    while (**s == ' ' || **s == '\t')
        (*s)++;
}

/* RFC 7230 tchar. */
static int is_tchar(int ch)
{
    return ch > 32 && ch < 127 && !strchr("()<>@,;:\\\"/[]?={}", ch);
}

/* Read a token at *s into buf (truncated to TOKEN_MAX - 1 bytes, NUL
 * ended). Returns its full length (0: no token there). */
static size_t read_token(const char **s, char buf[TOKEN_MAX])
{
    size_t n = 0;
    while (is_tchar((unsigned char)**s)) {
        if (n < TOKEN_MAX - 1)
            buf[n] = **s;
        n++;
        (*s)++;
    }
    buf[n < TOKEN_MAX - 1 ? n : TOKEN_MAX - 1] = '\0';
    return n;
}

/* Read a parameter value: a token, or a quoted-string whose unescaped text
 * must itself be a token (RFC 7692 §7.1). Returns 1 (valid), 0 (well formed
 * but not a token: an invalid value), -1 (malformed header). */
static int read_value(const char **s, char buf[TOKEN_MAX])
{
    if (**s != '"')
        return read_token(s, buf) > 0 ? 1 : -1;
    (*s)++;
    size_t n = 0;
    int valid = 1;
    for (;;) {
        int ch = (unsigned char)**s;
        if (ch == '\0')
            return -1; /* unterminated */
        (*s)++;
        if (ch == '"')
            break;
        if (ch == '\\') {
            ch = (unsigned char)**s;
            if (ch == '\0')
                return -1;
            (*s)++;
        }
        if (!is_tchar(ch))
            valid = 0;
        if (n < TOKEN_MAX - 1)
            buf[n] = (char)ch;
        n++;
    }
    buf[n < TOKEN_MAX - 1 ? n : TOKEN_MAX - 1] = '\0';
    return valid && n > 0 && n < TOKEN_MAX ? 1 : 0;
}

/* "8".."15" → 8..15; anything else (leading zeros included) → 0. */
static int window_bits(const char *v)
{
    if (v[0] >= '8' && v[0] <= '9' && v[1] == '\0')
        return v[0] - '0';
    if (v[0] == '1' && v[1] >= '0' && v[1] <= '5' && v[2] == '\0')
        return 10 + (v[1] - '0');
    return 0;
}

enum { P_SNCT = 1, P_CNCT = 2, P_SMWB = 4, P_CMWB = 8 };

/* Apply one parameter of an offer to q. Returns 1, or 0 when the offer must
 * be declined (RFC 7692 §5: unknown, repeated or invalid parameter, or a
 * configuration this server does not support), with *why set. */
static int offer_param(sh_pmd_params *q, unsigned *seen, const char *name, const char *val,
                       const char **why)
{
    unsigned bit;
    if (strcmp(name, "server_no_context_takeover") == 0)
        bit = P_SNCT;
    else if (strcmp(name, "client_no_context_takeover") == 0)
        bit = P_CNCT;
    else if (strcmp(name, "server_max_window_bits") == 0)
        bit = P_SMWB;
    else if (strcmp(name, "client_max_window_bits") == 0)
        bit = P_CMWB;
    else {
        *why = "unknown parameter";
        return 0;
    }
    if (*seen & bit) {
        *why = "repeated parameter";
        return 0;
    }
    *seen |= bit;
    if (bit == P_SNCT || bit == P_CNCT) {
        if (val) {
            *why = "no_context_takeover with a value";
            return 0;
        }
        if (bit == P_SNCT)
            q->server_no_context_takeover = 1;
        return 1;
    }
    int wb = val ? window_bits(val) : 0;
    if (bit == P_CMWB) {
        if (val && !wb) {
            *why = "invalid client_max_window_bits";
            return 0;
        }
        q->client_max_window_bits = (uint8_t)(val ? wb : 1);
        return 1;
    }
    if (!wb) {
        *why = "server_max_window_bits without a valid value";
        return 0;
    }
    if (wb == 8) {
        *why = "server_max_window_bits=8 is not supported";
        return 0;
    }
    q->server_max_window_bits = (uint8_t)wb;
    return 1;
}

/* The response to the accepted offer q. */
static void write_response(const sh_pmd_params *q, char *resp, size_t respsz)
{
    int n = snprintf(resp, respsz, "permessage-deflate%s; client_no_context_takeover",
                     q->server_no_context_takeover ? "; server_no_context_takeover" : "");
    if (q->server_max_window_bits && n > 0 && (size_t)n < respsz)
        snprintf(resp + n, respsz - (size_t)n, "; server_max_window_bits=%u", q->server_wbits);
}

int sh_pmd_negotiate(const char *hdr, sh_pmd_params *p, char *resp, size_t respsz,
                     const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = "no permessage-deflate offer";
    const char *s = hdr;
    for (;;) {
        skip_ows(&s);
        if (*s == ',') { /* empty list elements are allowed (RFC 7230 §7) */
            s++;
            continue;
        }
        if (*s == '\0')
            return 0;
        char name[TOKEN_MAX];
        if (read_token(&s, name) == 0)
            return -1;
        int ok = strcasecmp(name, "permessage-deflate") == 0;
        sh_pmd_params q = {0};
        unsigned seen = 0;
        skip_ows(&s);
        while (*s == ';') {
            s++;
            skip_ows(&s);
            char pname[TOKEN_MAX], pval[TOKEN_MAX];
            if (read_token(&s, pname) == 0)
                return -1;
            skip_ows(&s);
            int has_val = 0;
            if (*s == '=') {
                s++;
                skip_ows(&s);
                int v = read_value(&s, pval);
                if (v < 0)
                    return -1;
                if (v == 0 && ok) {
                    *why = "parameter value is not a token";
                    ok = 0;
                }
                has_val = 1;
                skip_ows(&s);
            }
            if (ok)
                ok = offer_param(&q, &seen, pname, has_val ? pval : NULL, why);
        }
        if (*s != '\0' && *s != ',')
            return -1;
        if (ok) {
            q.client_no_context_takeover = 1;
            q.server_wbits = SH_PMD_WBITS;
            if (q.server_max_window_bits && q.server_max_window_bits < q.server_wbits)
                q.server_wbits = q.server_max_window_bits;
            *p = q;
            write_response(&q, resp, respsz);
            return 1;
        }
    }
}

/* ------------------------------------------------------------ state */

sh_pmd *sh_pmd_new(const sh_pmd_params *p)
{
    sh_pmd *d = calloc(1, sizeof *d);
    if (d)
        d->prm = *p;
    return d;
}

static void end_inflater(sh_pmd *d)
{
    if (d->inf) {
        inflateEnd(d->inf);
        free(d->inf);
        d->inf = NULL;
    }
}

static void end_deflater(sh_pmd *d)
{
    if (d->def) {
        deflateEnd(d->def);
        free(d->def);
        d->def = NULL;
    }
}

void sh_pmd_free(sh_pmd *d)
{
    if (!d)
        return;
    end_inflater(d);
    end_deflater(d);
    sh_buf_free(&d->zin);
    free(d);
}

void sh_pmd_begin(sh_pmd *d, int rsv1)
{
    d->receiving = rsv1 != 0;
    d->ended = 0;
    d->zin.len = 0;
}

/* ------------------------------------------------------------ inflating */

#define INFLATE_STEP 4096 /* first output allocation of a message */

/* Room for more output in out, never past max + 1 bytes in all. Returns 0,
 * or -1 (out of memory). */
static int grow_output(sh_buf *out, size_t max)
{
    size_t cap = out->cap ? out->cap * 2 : INFLATE_STEP;
    if (cap > max + 1)
        cap = max + 1;
    if (cap <= out->cap)
        return 0; /* at max + 1 already: the caller sees the overflow */
    char *np = realloc(out->p, cap);
    if (!np)
        return -1;
    out->p = np;
    out->cap = cap;
    return 0;
}

/* Inflate n bytes of payload onto out (last: the tail, then the inflater is
 * released). Returns as sh_pmd_inflate. */
static int inflate_span(sh_pmd *d, sh_buf *out, const uint8_t *in, size_t n, int last,
                        size_t max, const char **why)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff}; /* RFC 7692 §7.2.2 */
    if (last) {
        in = tail;
        n = sizeof tail;
    }
    if (d->ended) {
        if (!last && n > 0) {
            *why = "data after the end of a deflate stream";
            return 1007;
        }
        if (last)
            end_inflater(d);
        return 0;
    }
    if (!d->inf) {
        d->inf = calloc(1, sizeof *d->inf);
        /* the client's window is at most 15 bits: decode with the largest */
        if (!d->inf || inflateInit2(d->inf, -15) != Z_OK) {
            free(d->inf);
            d->inf = NULL;
            *why = "out of memory for an inflater";
            return 1011;
        }
    }
    z_stream *z = d->inf;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    int code = 0;
    for (;;) {
        if (out->len == out->cap && grow_output(out, max) != 0) {
            *why = "out of memory inflating a message";
            code = 1011;
            break;
        }
        if (out->len > max || out->len == out->cap) {
            *why = "inflated message over max_message_bytes";
            code = 1009;
            break;
        }
        z->next_out = (Bytef *)out->p + out->len;
        z->avail_out = (uInt)(out->cap - out->len);
        int r = inflate(z, Z_SYNC_FLUSH);
        out->len = out->cap - z->avail_out;
        if (out->len > max) {
            *why = "inflated message over max_message_bytes";
            code = 1009;
            break;
        }
        if (r == Z_STREAM_END) { /* a final block (BFINAL): only our tail may follow */
            d->ended = 1;
            if (z->avail_in > 0 && !last) {
                *why = "data after the end of a deflate stream";
                code = 1007;
            }
            break;
        }
        if (r == Z_BUF_ERROR)
            break; /* no progress possible: every byte is in */
        if (r == Z_MEM_ERROR) {
            *why = "out of memory inflating a message";
            code = 1011;
            break;
        }
        if (r != Z_OK) {
            *why = "invalid compressed data";
            code = 1007;
            break;
        }
        if (z->avail_in == 0 && z->avail_out > 0)
            break;
    }
    z->next_in = NULL;
    z->avail_in = 0;
    if (code || last)
        end_inflater(d); /* client_no_context_takeover: a fresh one per message */
    return code;
}

int sh_pmd_inflate(sh_pmd *d, sh_buf *out, const uint8_t *in, size_t n, int last, size_t max,
                   const char **why)
{
    int code = 0;
    if (!last) {
        if (n > SH_PMD_ZIN_MAX(max) - d->zin.len) {
            *why = "compressed message over max_message_bytes";
            code = 1009;
        } else if (sh_buf_append(&d->zin, in, n) != 0) {
            *why = "out of memory for a compressed message";
            code = 1011;
        } else {
            return 0;
        }
    } else {
        code = inflate_span(d, out, (const uint8_t *)d->zin.p, d->zin.len, 0, max, why);
        if (!code)
            code = inflate_span(d, out, NULL, 0, 1, max, why);
    }
    sh_buf_free(&d->zin);
    return code;
}

/* ------------------------------------------------------------ deflating */

size_t sh_ws_frame_header(uint8_t h[10], uint8_t b0, uint64_t len)
{
    h[0] = b0;
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

static int start_deflater(sh_pmd *d)
{
    d->def = calloc(1, sizeof *d->def);
    if (d->def && deflateInit2(d->def, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -(int)d->prm.server_wbits,
                               SH_PMD_MEMLEVEL, Z_DEFAULT_STRATEGY) == Z_OK)
        return 0;
    free(d->def);
    d->def = NULL;
    return -1;
}

int sh_pmd_put_message(sh_pmd *d, sh_buf *out, uint8_t opcode, const char *data, size_t len)
{
    if (len < (d->prm.server_no_context_takeover ? SH_PMD_MIN_BYTES_NCT : SH_PMD_MIN_BYTES))
        return 0;
    if (!d->def && start_deflater(d) != 0)
        return -1;
    size_t start = out->len;
    /* the payload is written after room for the longest header, then moved
     * up against the real one */
    if (sh_buf_reserve(out, 10 + len / 2 + 64) != 0)
        return -1;
    out->len += 10;
    z_stream *z = d->def;
    z->next_in = (Bytef *)(uintptr_t)data;
    z->avail_in = (uInt)len;
    for (;;) {
        if (out->cap - out->len < 64 && sh_buf_reserve(out, out->cap - start) != 0) {
            out->len = start;
            return -1;
        }
        z->next_out = (Bytef *)out->p + out->len;
        z->avail_out = (uInt)(out->cap - out->len);
        int r = deflate(z, Z_SYNC_FLUSH);
        out->len = out->cap - z->avail_out;
        if (r != Z_OK && r != Z_BUF_ERROR) {
            out->len = start;
            return -1;
        }
        if (z->avail_in == 0 && z->avail_out > 0)
            break; /* all in, and the flush fitted */
    }
    /* the sync flush ends with 0x00 0x00 0xff 0xff: §7.2.1 removes it */
    size_t plen = out->len - start - 10 - 4;
    uint8_t h[10];
    size_t hl = sh_ws_frame_header(h, (uint8_t)(0x80 | 0x40 | opcode), plen);
    memmove(out->p + start + hl, out->p + start + 10, plen);
    memcpy(out->p + start, h, hl);
    out->len = start + hl + plen;
    if (d->prm.server_no_context_takeover)
        end_deflater(d); /* a fresh one per message; none while idle */
    return 1;
}
