/* json_decode.h — a strict JSON (RFC 8259) decoder that builds Lua values.
 *
 * The decoder behind host.json.decode. It reads the text once and pushes the
 * value straight onto the Lua stack: no intermediate tree, no scratch memory
 * outside Lua (a Lua memory error raised midway leaks nothing), every table
 * created at its final size.
 *
 * The grammar is RFC 8259's, strictly:
 *   - whitespace is SP, TAB, LF, CR only; nothing may follow the value;
 *   - numbers: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? — no leading
 *     zeros, no bare dots ("1.", ".5", "1.e5"), no '+', no NaN, Infinity, hex;
 *   - strings: raw U+0000..U+001F refused; escapes \" \\ \/ \b \f \n \r \t
 *     \uXXXX, a surrogate pair becomes one UTF-8 sequence, a lone surrogate is
 *     an error; every other byte passes unchanged (invalid UTF-8 included);
 *   - no comments, no trailing commas; a NUL byte is an error anywhere.
 *
 * Values: object → table (the last of duplicate keys wins), array → table with
 * keys 1..n (no metatable), string → string, true/false → boolean, null →
 * lightuserdata NULL (cjson.null, host.null). A number whose value is integral
 * and below 2^53 in magnitude becomes a Lua integer (7, 7.0, 7e0, -0 and 1e2
 * all give integers), any other number a float; a number beyond the double
 * range (1e400) is an error. Nesting deeper than SH_JSON_MAX_DEPTH is an error.
 */
#ifndef SH_JSON_DECODE_H
#define SH_JSON_DECODE_H

#include <stddef.h>

#include <lua.h>

#define SH_JSON_MAX_DEPTH 128 /* arrays and objects nested deeper are refused */

/* Decode the len bytes at s. → 0 with the value pushed, or -1 with nothing
 * pushed and a one-line message in err (at most errsz bytes, NUL-terminated),
 * e.g. "Expected value but found invalid token at character 5" (1-based
 * positions) or "number out of range". Lua memory errors are raised, as from
 * any Lua API call. */
int sh_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errsz);

/* The same, refusing a text of more than max_values values (0: no limit): every
 * array, object, string, number, true, false and null counts, object keys do not.
 * The message is then "Found too many values (more than N) at character P". It bounds
 * what a small text can cost in Lua memory: "[]," is 3 bytes of text and 56 of table. */
int sh_json_decode_max(lua_State *L, const char *s, size_t len, size_t max_values, char *err,
                       size_t errsz);

/* A JSON value found by sh_json_flat. */
enum { SH_JSON_ABSENT, SH_JSON_STRING, SH_JSON_ESCAPED, SH_JSON_OTHER };
typedef struct sh_json_field {
    const char *p; /* a STRING's content (between the quotes), else where the value starts */
    size_t len;    /* a STRING's length */
    int kind;      /* ABSENT; STRING (no escape); OTHER: a number, true, false or null */
} sh_json_field;

/* A quick look at the common case, without Lua: when s is one JSON object whose
 * values are all plain scalars, → 0 and out[i] is the value of the member named
 * names[i] (ABSENT when there is none). Whatever the scan does not settle → -1: a
 * nested value, a \u escape anywhere, an escape in a key or in a named member's
 * value, a number with an exponent or of over 300 characters, a named member
 * given twice, or text that is not JSON. Every text that gives 0 is one that
 * sh_json_decode decodes to a table with those members; the caller decodes the
 * others to know. UTF-8 is not checked (as by the decoder). */
int sh_json_flat(const char *s, size_t len, const char *const *names, size_t n,
                 sh_json_field *out);

#endif
