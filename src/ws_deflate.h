/* ws_deflate.h — permessage-deflate (RFC 7692) for the WebSocket phase: the
 * negotiation of the extension in the upgrade, and the inflating and
 * deflating of messages. Transport layer (no Lua); zlib does the work.
 *
 * Policy (the server's choices, all allowed by RFC 7692 §7.1):
 * - the first acceptable offer wins; an offer with an unknown, repeated or
 *   invalid parameter is declined, as is server_max_window_bits=8 (zlib's
 *   raw deflate cannot make an 8-bit window);
 * - the answer always carries client_no_context_takeover: the client resets
 *   its compressor per message, so the inflater lives only while a
 *   compressed message arrives (clients send few messages);
 * - the deflater is allocated on the first compressed message sent, with a
 *   window of SH_PMD_WBITS bits (or the smaller server_max_window_bits the
 *   client asked for), and kept for context takeover unless the client asked
 *   server_no_context_takeover: then it is freed after each message;
 * - messages under SH_PMD_MIN_BYTES (SH_PMD_MIN_BYTES_NCT without context
 *   takeover) are sent uncompressed (RSV1 clear): a 35-byte JSON update
 *   deflates to about 10 bytes with the previous ones as history, and to
 *   more than 35 bytes without.
 *
 * A connection that did not negotiate the extension carries only a NULL
 * pointer (sh_conn.pmd). */
#ifndef SH_WS_DEFLATE_H
#define SH_WS_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Compile-time tuning (-D...): README "permessage-deflate" has the memory
 * each choice costs. */
#ifndef SH_PMD_WBITS
#define SH_PMD_WBITS 11      /* the server's LZ77 window: 2 KiB */
#endif
#ifndef SH_PMD_MEMLEVEL
#define SH_PMD_MEMLEVEL 4    /* zlib memLevel of the deflater */
#endif
#ifndef SH_PMD_MIN_BYTES
#define SH_PMD_MIN_BYTES 32       /* smaller messages are sent uncompressed ... */
#endif
#ifndef SH_PMD_MIN_BYTES_NCT
#define SH_PMD_MIN_BYTES_NCT 128  /* ... or these with server_no_context_takeover: without
                                     the previous messages as history deflate gains little */
#endif

/* The agreed parameters of a connection. */
typedef struct sh_pmd_params {
    uint8_t server_no_context_takeover; /* requested by the client */
    uint8_t client_no_context_takeover; /* always answered (see above) */
    uint8_t server_max_window_bits;     /* offered value (9..15), 0: not offered */
    uint8_t client_max_window_bits;     /* offered value (8..15), 1: offered without one, 0: not */
    uint8_t server_wbits;               /* the window the deflater uses */
} sh_pmd_params;

/* The state of a connection that negotiated the extension. */
typedef struct sh_pmd {
    sh_pmd_params prm;
    uint8_t receiving;  /* the data message arriving is compressed (RSV1 on its first frame) */
    uint8_t ended;      /* its deflate stream had a final block: nothing may follow */
    struct z_stream_s *inf; /* NULL, or the inflater, while a message is inflated */
    sh_buf zin;         /* the compressed payload of the message arriving, kept until its end */
    struct z_stream_s *def; /* NULL, or the deflater (kept between messages with takeover) */
} sh_pmd;

/* Negotiate from one Sec-WebSocket-Extensions value (hdr, NUL-terminated).
 * Returns 1 when an offer is accepted (p filled, the response value written
 * to resp, NUL-terminated), 0 when no permessage-deflate offer is acceptable,
 * -1 when the header is malformed (nothing accepted). why, when not NULL,
 * says why the last declined offer was declined (a static string). */
int sh_pmd_negotiate(const char *hdr, sh_pmd_params *p, char *resp, size_t respsz,
                     const char **why);

/* A connection's state for the agreed parameters, or NULL (out of memory). */
sh_pmd *sh_pmd_new(const sh_pmd_params *p);
/* Free d and its zlib streams (NULL is fine). */
void sh_pmd_free(sh_pmd *d);

/* A data message begins: rsv1 says whether it is compressed. */
void sh_pmd_begin(sh_pmd *d, int rsv1);

/* Take n bytes of a compressed message's payload: they are kept (at most
 * SH_PMD_ZIN_MAX(max) in all) until last, when the message's final frame has
 * ended: then the whole payload and the 0x00 0x00 0xff 0xff tail of §7.2.2 are
 * inflated onto out by an inflater made for it and released after it. So a
 * message still arriving holds what the peer sent, never what it inflates to
 * (a few KiB that inflate to max_message_bytes would otherwise pin that much
 * for as long as the peer waits). out never grows past max + 1 bytes.
 * Returns 0, or a close code: 1009 (inflated or compressed size over the
 * limit), 1007 (not valid deflate data), 1011 (out of memory); *why says what. */
#define SH_PMD_ZIN_MAX(max) ((max) + (max) / 16 + 1024) /* deflate's overhead on data it
                                                            cannot shrink, with room to spare */
int sh_pmd_inflate(sh_pmd *d, sh_buf *out, const uint8_t *in, size_t n, int last, size_t max,
                   const char **why);

/* Append to out one final frame (opcode 1 or 2) carrying data compressed,
 * RSV1 set. Returns 1 when written, 0 when the message is better sent
 * uncompressed (out unchanged), -1 when out of memory (out unchanged; the
 * deflater is then out of step: the connection must close). */
int sh_pmd_put_message(sh_pmd *d, sh_buf *out, uint8_t opcode, const char *data, size_t len);

/* Write a server frame header (first byte b0, payload length len, no mask)
 * into h; returns its length (2, 4 or 10). ws_conn.c's frames use it too. */
size_t sh_ws_frame_header(uint8_t h[10], uint8_t b0, uint64_t len);

#endif
