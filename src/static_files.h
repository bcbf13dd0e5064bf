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

#endif
