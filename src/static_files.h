/* static_files.h — what may be served from the web root, and as what.
 *
 * Pure functions over strings; the caller opens the file. The path handed to
 * sh_static_normalise is the request path after sh_url_decode, so encoded
 * tricks ("%2e%2e", "..%2f") are seen in their decoded form and refused.
 * An encoded slash (%2F) therefore acts as a separator.
 *
 * What the caller still owns: opening the result relative to the root
 * (openat on a directory fd, O_NOFOLLOW if symlinks out of the root are a
 * concern), answering 404 for any negative return, for directories and for
 * missing files. */
#ifndef SH_STATIC_FILES_H
#define SH_STATIC_FILES_H

#include <stddef.h>
#include <stdint.h>

/* Errors (negative). */
#define SH_STATIC_EREFUSED (-1) /* must not be served: answer 404 */
#define SH_STATIC_ETOOLONG (-2) /* the result does not fit in out: 404 too */

/* Map a decoded URL path to a path relative to the web root:
 *   "/" → "index.html", "/a/b.css" → "a/b.css", "/docs/" → "docs/index.html",
 *   "//etc/passwd" → "etc/passwd" (empty segments collapse; never absolute).
 * Refused (SH_STATIC_EREFUSED): a path not starting with '/'; any segment
 * starting with '.' — so ".", ".." and hidden files like ".git" or ".env"
 * alike ("/./a" is refused, not mapped to "a"); a backslash; a control
 * byte (0x00..0x1F, 0x7F). SH_STATIC_ETOOLONG when out (outsz bytes,
 * including the NUL) is too small. On 0, out holds the NUL-terminated result,
 * which never starts with '/' and never contains "." or ".." segments. */
int sh_static_normalise(const char *decoded_path, char *out, size_t outsz);

/* Percent-decode in[0..n) into out (outsz bytes, including a terminating
 * NUL). '+' is left alone (it means space only in form bodies). *outlen
 * (when not NULL) gets the decoded length. Returns 0; -1 on a bad escape
 * ('%' not followed by two hex digits), on "%00" or a raw NUL byte; -2 when
 * out is too small (outsz >= n + 1 always suffices). */
int sh_url_decode(const char *in, size_t n, char *out, size_t outsz,
                  size_t *outlen);

/* The Content-Type for a path, by its extension, case-insensitively:
 * html/htm, css, js/mjs, json, map, png, jpg/jpeg, gif, svg, ico, txt,
 * wasm, webp, woff, woff2; "application/octet-stream" for anything else or
 * no extension. The text types carry "; charset=utf-8". Never NULL; the string
 * is static. */
const char *sh_mime_type(const char *path);

/* Validators (RFC 9110 §8.8) and conditional requests (§13). */

/* out = the IMF-fixdate of t (seconds since the epoch, UTC), e.g.
 * "Sun, 06 Nov 1994 08:49:37 GMT": 29 characters and a NUL, whatever the
 * locale. */
void sh_http_date(int64_t t, char out[30]);

/* Parse an HTTP-date in any of the three forms a recipient must accept
 * (RFC 9110 §5.6.7): IMF-fixdate, RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT";
 * a two-digit year below 70 is 20xx) and asctime ("Sun Nov  6 08:49:37
 * 1994"). The weekday is not checked. Returns 0 with *t, or -1 when s is no
 * such date (a nonexistent day such as Feb 30 included). */
int sh_http_date_parse(const char *s, int64_t *t);

/* out = the entity tag of a file of size bytes last modified at mtime_sec +
 * mtime_nsec: "\"<mtime in ns, hex>-<size, hex>\"" (quotes included; at most
 * 36 bytes with the NUL). Like nginx's (mtime-size) but with nanoseconds, so
 * a file rewritten in the same second with the same size gets a new tag;
 * unlike Apache's of old, no inode number (it would tell it). */
void sh_static_etag(int64_t mtime_sec, long mtime_nsec, uint64_t size, char out[40]);

/* 1 when the If-None-Match field value v ("*", or a comma-separated list of
 * entity tags, weak or strong) matches etag by the weak comparison (the one
 * GET and HEAD use, RFC 9110 §13.1.2): the client's copy is current. 0
 * otherwise, a malformed list included. */
int sh_etag_match(const char *v, const char *etag);

#endif
