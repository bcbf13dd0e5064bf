/* test_ws_deflate.c — permessage-deflate (src/ws_deflate.c): the offer
 * parser and negotiation (RFC 7692 §5, §7.1), inflating with the size limit
 * (a zip bomb stops at max + 1 bytes of output), and deflating frames that a
 * plain raw inflater (zlib, as a client would) decodes, with and without
 * context takeover. */
#include "unit.h"
#include "ws_deflate.h"

#include <stdint.h>
#include <stdlib.h>

#include <zlib.h>

/* Negotiate hdr: the return code, and the answer in resp. */
static int nego(const char *hdr, sh_pmd_params *p, char *resp, size_t n)
{
    memset(p, 0xAA, sizeof *p);
    resp[0] = '\0';
    return sh_pmd_negotiate(hdr, p, resp, n, NULL);
}

static void test_negotiation(void)
{
    sh_pmd_params p;
    char r[160];
    const char *why = NULL;

    CHECK_INT(nego("permessage-deflate", &p, r, sizeof r), 1);
    CHECK_STR(r, "permessage-deflate; client_no_context_takeover");
    CHECK_INT(p.server_no_context_takeover, 0);
    CHECK_INT(p.client_no_context_takeover, 1);
    CHECK_INT(p.server_wbits, SH_PMD_WBITS);
    CHECK_INT(p.server_max_window_bits, 0);
    CHECK_INT(p.client_max_window_bits, 0);

    /* Chromium's offer */
    CHECK_INT(nego("permessage-deflate; client_max_window_bits", &p, r, sizeof r), 1);
    CHECK_STR(r, "permessage-deflate; client_no_context_takeover");
    CHECK_INT(p.client_max_window_bits, 1);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=10", &p, r, sizeof r), 1);
    CHECK_INT(p.client_max_window_bits, 10);

    CHECK_INT(nego("permessage-deflate; server_no_context_takeover", &p, r, sizeof r), 1);
    CHECK_STR(r, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    CHECK_INT(p.server_no_context_takeover, 1);

    /* server_max_window_bits: answered, never above the offer, our window
     * when smaller */
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=9", &p, r, sizeof r), 1);
    CHECK_STR(r, "permessage-deflate; client_no_context_takeover; server_max_window_bits=9");
    CHECK_INT(p.server_wbits, 9);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=15", &p, r, sizeof r), 1);
    CHECK_INT(p.server_wbits, SH_PMD_WBITS);
    CHECK_INT(p.server_max_window_bits, 15);
    {
        char want[100];
        snprintf(want, sizeof want,
                 "permessage-deflate; client_no_context_takeover; server_max_window_bits=%d",
                 SH_PMD_WBITS);
        CHECK_STR(r, want);
    }
    /* quoted values, whitespace, case of the extension name */
    CHECK_INT(nego("  PerMessage-Deflate ;server_max_window_bits = \"10\" ;  "
                   "client_max_window_bits=\"1\\1\"",
                   &p, r, sizeof r),
              1);
    CHECK_INT(p.server_wbits, 10);
    CHECK_INT(p.client_max_window_bits, 11);

    /* declined offers: the first acceptable one wins */
    CHECK_INT(sh_pmd_negotiate("permessage-deflate; foo", &p, r, sizeof r, &why), 0);
    CHECK_STR(why, "unknown parameter");
    CHECK_INT(sh_pmd_negotiate("permessage-deflate; server_no_context_takeover; "
                               "server_no_context_takeover",
                               &p, r, sizeof r, &why),
              0);
    CHECK_STR(why, "repeated parameter");
    CHECK_INT(sh_pmd_negotiate("permessage-deflate; server_no_context_takeover=1", &p, r,
                               sizeof r, &why),
              0);
    CHECK_INT(sh_pmd_negotiate("permessage-deflate; server_max_window_bits", &p, r, sizeof r,
                               &why),
              0);
    CHECK_INT(sh_pmd_negotiate("permessage-deflate; server_max_window_bits=8", &p, r, sizeof r,
                               &why),
              0);
    CHECK_STR(why, "server_max_window_bits=8 is not supported");
    const char *bad_bits[] = {"7", "16", "08", "010", "1", "abc", "\"\"", "\"1 0\"", "-9", "+9"};
    for (size_t i = 0; i < sizeof bad_bits / sizeof *bad_bits; i++) {
        char h[100];
        snprintf(h, sizeof h, "permessage-deflate; client_max_window_bits=%s", bad_bits[i]);
        CHECKF(nego(h, &p, r, sizeof r) == 0, "%s", h);
        snprintf(h, sizeof h, "permessage-deflate; server_max_window_bits=%s", bad_bits[i]);
        CHECKF(nego(h, &p, r, sizeof r) == 0, "%s", h);
    }
    CHECK_INT(nego("x-webkit-deflate-frame", &p, r, sizeof r), 0);
    CHECK_INT(nego("", &p, r, sizeof r), 0);
    CHECK_INT(nego(" , ,", &p, r, sizeof r), 0);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=8, x-foo; a=\"b,c\", "
                   "permessage-deflate; server_no_context_takeover, permessage-deflate",
                   &p, r, sizeof r),
              1);
    CHECK_INT(p.server_no_context_takeover, 1);
    CHECK_INT(nego("foo, permessage-deflate; client_max_window_bits=12", &p, r, sizeof r), 1);
    CHECK_INT(p.client_max_window_bits, 12);

    /* malformed headers: nothing accepted */
    const char *malformed[] = {
        "permessage-deflate; client_max_window_bits=\"10",   /* unterminated quote */
        "permessage-deflate; =10",                          /* no parameter name */
        "permessage-deflate;; server_no_context_takeover",  /* empty parameter */
        "permessage-deflate server_no_context_takeover",    /* missing ';' */
        "permessage-deflate; client_max_window_bits=",      /* empty value */
        ";permessage-deflate",                              /* no extension name */
        "permessage-deflate; a=b=c",
        "permessage-deflate; client_max_window_bits=\"10\\",
    };
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++)
        CHECKF(nego(malformed[i], &p, r, sizeof r) == -1, "%s", malformed[i]);
    /* a long token is read whole, and matches nothing */
    char longh[400] = "permessage-deflate; ";
    memset(longh + strlen(longh), 'x', 300);
    CHECK_INT(nego(longh, &p, r, sizeof r), 0);
}

/* Raw-deflate data of len bytes (a client's compressor, no takeover), tail removed. */
static size_t client_deflate(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    z_stream z = {0};
    deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_SYNC_FLUSH);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    return n - 4;
}

static void test_inflate(void)
{
    sh_pmd_params prm;
    char r[160];
    sh_pmd_negotiate("permessage-deflate", &prm, r, sizeof r, NULL);
    sh_pmd *d = sh_pmd_new(&prm);
    const char *why = NULL;

    /* a message, fed in pieces of every size from 1 to 7 */
    static uint8_t plain[50000], z[60000];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)("status update "[i % 14] + (i % 977 == 0));
    size_t zn = client_deflate(plain, sizeof plain, z, sizeof z);
    for (size_t step = 1; step <= 7; step++) {
        sh_buf out = {0};
        sh_pmd_begin(d, 1);
        int code = 0;
        for (size_t off = 0; off < zn && !code; off += step)
            code = sh_pmd_inflate(d, &out, z + off, off + step < zn ? step : zn - off, 0,
                                  sizeof plain, &why);
        if (!code)
            code = sh_pmd_inflate(d, &out, NULL, 0, 1, sizeof plain, &why);
        CHECK_INT(code, 0);
        CHECK_INT(out.len, sizeof plain);
        CHECK(out.len == sizeof plain && memcmp(out.p, plain, sizeof plain) == 0);
        CHECK(d->inf == NULL); /* released at the end of the message */
        sh_buf_free(&out);
    }

    /* exactly at the limit passes; one byte less is 1009 */
    {
        sh_buf out = {0};
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, z, zn, 0, sizeof plain - 1, &why), 0);
        CHECK(out.len == 0 && d->inf == NULL); /* kept compressed until the message ends */
        CHECK_INT(sh_pmd_inflate(d, &out, NULL, 0, 1, sizeof plain - 1, &why), 1009);
        CHECK_STR(why, "inflated message over max_message_bytes");
        CHECK(out.cap <= sizeof plain); /* never past max + 1 */
        CHECK(d->inf == NULL);
        sh_buf_free(&out);
    }

    /* a zip bomb: 100 MiB of zeros in ~100 KiB; limit 1 MiB */
    {
        size_t big = 100u << 20, cap = 200000;
        uint8_t *zeros = calloc(1, big), *bomb = malloc(cap);
        size_t bn = client_deflate(zeros, big, bomb, cap);
        free(zeros);
        sh_buf out = {0};
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, bomb, bn, 0, 1u << 20, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, NULL, 0, 1, 1u << 20, &why), 1009);
        CHECK(out.cap <= (1u << 20) + 1);
        sh_buf_free(&out);
        free(bomb);
    }

    /* not deflate data → 1007 */
    {
        sh_buf out = {0};
        static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff};
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, junk, sizeof junk, 0, 1000, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, NULL, 0, 1, 1000, &why), 1007);
        sh_buf_free(&out);
    }

    /* compressed bytes past SH_PMD_ZIN_MAX(max) → 1009 as they come, nothing kept */
    {
        sh_buf out = {0};
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, z, SH_PMD_ZIN_MAX(1000), 0, 1000, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, z, 1, 0, 1000, &why), 1009);
        CHECK_STR(why, "compressed message over max_message_bytes");
        CHECK(d->zin.p == NULL && out.len == 0);
        sh_buf_free(&out);
    }

    /* a final block (BFINAL=1), then more data → 1007; then only the tail: fine */
    {
        uint8_t fin[64];
        z_stream zs = {0};
        deflateInit2(&zs, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
        zs.next_in = (Bytef *)"hello";
        zs.avail_in = 5;
        zs.next_out = fin;
        zs.avail_out = sizeof fin;
        deflate(&zs, Z_FINISH);
        size_t fn = sizeof fin - zs.avail_out;
        deflateEnd(&zs);
        sh_buf out = {0};
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, fin, fn, 0, 1000, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, NULL, 0, 1, 1000, &why), 0);
        CHECK(out.len == 5 && memcmp(out.p, "hello", 5) == 0);
        out.len = 0;
        sh_pmd_begin(d, 1);
        CHECK_INT(sh_pmd_inflate(d, &out, fin, fn, 0, 1000, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, (const uint8_t *)"x", 1, 0, 1000, &why), 0);
        CHECK_INT(sh_pmd_inflate(d, &out, NULL, 0, 1, 1000, &why), 1007);
        sh_buf_free(&out);
    }
    sh_pmd_free(d);
}

/* Parse one server frame at p: its first byte, payload and total length. */
static size_t parse_frame(const uint8_t *p, uint8_t *b0, const uint8_t **pl, size_t *plen)
{
    *b0 = p[0];
    size_t n = p[1] & 0x7f, off = 2;
    if (n == 126) {
        n = ((size_t)p[2] << 8) | p[3];
        off = 4;
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = (n << 8) | p[2 + i];
        off = 10;
    }
    *pl = p + off;
    *plen = n;
    return off + n;
}

/* Frames made by sh_pmd_put_message decode with one client inflater
 * (window wbits) kept across messages. */
static void check_deflate(const char *offer, int wbits, int takeover_kept)
{
    sh_pmd_params prm;
    char r[160];
    CHECK_INT(sh_pmd_negotiate(offer, &prm, r, sizeof r, NULL), 1);
    sh_pmd *d = sh_pmd_new(&prm);
    z_stream zi = {0};
    inflateInit2(&zi, -wbits);
    sh_buf out = {0};
    static char msg[70000];
    uint8_t dec[80000];
    for (int m = 0; m < 6; m++) {
        size_t min = prm.server_no_context_takeover ? SH_PMD_MIN_BYTES_NCT : SH_PMD_MIN_BYTES;
        size_t len = m == 0 ? min - 1 : m == 1 ? min : m == 2 ? 200 : m == 3 ? 300 : m == 4 ? 70000 : 5000;
        for (size_t i = 0; i < len; i++)
            msg[i] = (char)("{\"task\":\"t1\",\"state\":\"running\"}"[(i + (size_t)m) % 31]);
        out.len = 0;
        int rc = sh_pmd_put_message(d, &out, 1, msg, len);
        if (len < min) {
            CHECK_INT(rc, 0);
            CHECK_INT(out.len, 0);
            continue;
        }
        CHECK_INT(rc, 1);
        uint8_t b0;
        const uint8_t *pl;
        size_t plen;
        size_t fl = parse_frame((const uint8_t *)out.p, &b0, &pl, &plen);
        CHECK_INT(fl, out.len);
        CHECK_INT(b0, 0x80 | 0x40 | 1);
        CHECK(plen < len || len == min); /* the smallest, first one may not shrink */
        uint8_t in[80000];
        memcpy(in, pl, plen);
        memcpy(in + plen, "\x00\x00\xff\xff", 4);
        zi.next_in = in;
        zi.avail_in = (uInt)(plen + 4);
        zi.next_out = dec;
        zi.avail_out = sizeof dec;
        int zr = inflate(&zi, Z_SYNC_FLUSH);
        CHECKF(zr == Z_OK, "inflate %d (%s)", zr, offer);
        CHECK_INT(sizeof dec - zi.avail_out, len);
        CHECK(memcmp(dec, msg, len) == 0);
        CHECK_INT(d->def != NULL, takeover_kept);
    }
    inflateEnd(&zi);
    sh_buf_free(&out);
    sh_pmd_free(d);
}

int main(void)
{
    test_negotiation();
    test_inflate();
    check_deflate("permessage-deflate", 15, 1);
    check_deflate("permessage-deflate; server_max_window_bits=9", 9, 1);
    check_deflate("permessage-deflate; server_max_window_bits=10; server_no_context_takeover", 10,
                  0);
    check_deflate("permessage-deflate; server_no_context_takeover", 15, 0);
    return unit_done("test_ws_deflate");
}
