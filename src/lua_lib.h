/* lua_lib.h — the helpers every policy needs, as pure functions.
 *
 * No libuv, no server state: base64 / base64url, SHA-256 and HMAC-SHA256,
 * hex, URI escaping and query-string decoding, client-IP resolution (nginx's
 * realip rules) and CIDR matching, a per-process shared dictionary that
 * outlives script reloads, and JSON (lua-cjson) whose integers stay integers.
 * Where OpenResty has the same helper, the name and the semantics are
 * OpenResty's (noted at each function in lua_lib.c and in the README).
 *
 * sh_lib_register() adds the Lua functions to the `statushost` module table;
 * the C functions below (realip, CIDR, peer address) are for the connection
 * layer. Everything runs on the loop's thread: nothing here is thread-safe. */
#ifndef SH_LUA_LIB_H
#define SH_LUA_LIB_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* ------------------------------------------------------------- Lua module */

/* Add the helper functions to the table at index `module` (the `statushost`
 * module): encode_base64, decode_base64, encode_base64url, decode_base64url,
 * sha256, sha256_hex, hmac_sha256 (replaces the older hex-only one, same
 * default), to_hex, from_hex, escape_uri, unescape_uri, decode_args, ip_in,
 * shared, json = {decode, encode, null}. Leaves the stack as it found it. */
void sh_lib_register(lua_State *L, int module);

/* Free every shared dictionary. Call once at exit, after every Lua state
 * was closed; a dict object still used afterwards raises instead of
 * touching freed memory. */
void sh_lib_shutdown(void);

/* The shared dictionaries' byte caps, from the configuration of the script
 * generation just loaded: dict_bytes (shared_dict_max_bytes) is the capacity
 * of every dict created without max_bytes (those already made follow it:
 * their least recently used items go when it shrinks), total_bytes
 * (shared_dict_total_bytes) bounds every dict's items and headers together.
 * sh_lib_shutdown puts back the defaults (config.h). */
void sh_lib_shared_limits(size_t dict_bytes, size_t total_bytes);

/* A script generation starts loading: the caps host.shared is asked for (its
 * second argument) are held back until sh_lib_shared_end(1) (the generation is
 * committed: they apply, in order, as if asked then) or sh_lib_shared_end(0) (it
 * failed: they are dropped, so a failed reload changes no dict's caps). A dict
 * first made meanwhile is made with the default caps. Outside a load, caps apply
 * at once. */
void sh_lib_shared_begin(void);
void sh_lib_shared_end(int commit);

/* Bytes the shared dictionaries hold, items and headers (what
 * shared_dict_total_bytes bounds): /metrics' shared_dict_bytes. */
size_t sh_lib_shared_bytes(void);

/* Tests only: move the shared dictionaries' monotonic clock forward. */
void sh_lib_set_clock_offset_ms(int64_t offset_ms);
/* Tests only (the policy test kit): the clock is the offset alone, so TTLs
 * run on virtual time and not at all in real time. */
void sh_lib_set_clock_virtual(int on);

/* Argument errors that name the function, for C functions stored in tables
 * (where luaL_argerror says '?'): raise
 * "FNAME: bad argument #ARG (MSG)", with the caller's position in front. */
int sh_lib_argerror(lua_State *L, const char *fname, int arg, const char *msg);
/* A string (or number, converted as Lua does) at `arg`; else raises
 * "FNAME: bad argument #ARG (string expected, got TYPE)". */
const char *sh_lib_checklstring(lua_State *L, int arg, const char *fname, size_t *len);

/* What runs a coroutine under a guard (the instruction budget's, the test kit's):
 * enter(co) before it runs, 0, or -1 when it may not (nested too deep); leave()
 * after it ran, when enter said 0. */
typedef struct sh_lib_co_guard {
    int (*enter)(lua_State *co);
    void (*leave)(void);
    int (*spent)(lua_State *co); /* NULL, or: co's __close handlers may not run (they
                                  * would run unguarded: sh_budget_spent) */
    int (*over)(void);           /* the running code is past its bound (sh_lib_guard_xpcall) */
} sh_lib_co_guard;

/* Set coroutine.wrap, in the table at index `coroutine`, to Lua's own (lcorolib.c
 * auxwrap) over that table's "resume" (guarded already): an error in the coroutine
 * closes it, its __close handlers running between g->enter and g->leave (they run
 * code), and is raised in the caller, a string with the caller's position in front.
 * g must live as long as the state. */
void sh_lib_guard_wrap(lua_State *L, int coroutine, const sh_lib_co_guard *g);

/* Set the global xpcall to Lua's own (lbaselib.c), but for its message handler, which is
 * not run while g->over() says the running code is past its bound: that error is raised
 * from a count hook, where Lua runs no hook (the thread's allowhook is off until the hook
 * returns, and it does not), so a handler that looped ran unbounded. The error then comes
 * back as raised: a handler would raise at its first instruction. The global debug.traceback
 * of this moment, as the handler, is run as if called by Lua (its traceback has no line for
 * the wrapper). g must live as long as the state. */
void sh_lib_guard_xpcall(lua_State *L, const sh_lib_co_guard *g);

/* ------------------------------------------------------------- addresses */

/* A CIDR block. IPv4 is kept as IPv4-mapped IPv6 (::ffff:a.b.c.d, prefix + 96),
 * so one comparison serves both families and ::ffff:10.0.0.1 is in 10.0.0.0/8. */
typedef struct sh_cidr {
    unsigned char addr[16]; /* network address, host bits cleared */
    unsigned char mask[16];
    int bits;               /* prefix length in the 128-bit space */
} sh_cidr;

/* Longest textual address inet_ntop writes, with its NUL (INET6_ADDRSTRLEN). */
#define SH_IP_MAX 46

/* Parse "10.0.0.0/8", "2001:db8::/32", or a bare address ("10.0.0.1" = /32,
 * "::1" = /128). Host bits below the prefix are cleared (as nginx does).
 * → 0, or -1 on bad input (bad address, prefix out of range, junk). */
int sh_cidr_parse(const char *s, sh_cidr *out);

/* Is `ip` (a bare IPv4 or IPv6 address) inside `c`? → 1 or 0; an unparsable
 * ip is 0 (never "inside"). */
int sh_cidr_match(const sh_cidr *c, const char *ip);

/* Strip the port from a peer name as conn.c formats it: "1.2.3.4:5" →
 * "1.2.3.4", "[::1]:42820" → "::1"; a bare address is copied. The address is
 * validated and written in canonical form (inet_ntop). → 0, or -1 (bad input,
 * or outsz too small: SH_IP_MAX is always enough). */
int sh_peer_ip(const char *peer, char *ip, size_t ipsz);

/* nginx's realip module (set_real_ip_from / real_ip_header /
 * real_ip_recursive): the client address of a request.
 *
 *   peer_ip       the socket's peer address, without port (sh_peer_ip)
 *   header_value  the X-Forwarded-For (or X-Real-IP) value, NULL when absent;
 *                 several X-Forwarded-For headers: join them with ", "
 *   trusted       the set_real_ip_from list
 *   recursive     real_ip_recursive: walk X-Forwarded-For from the right,
 *                 skipping trusted addresses; 0: take the rightmost element
 *                 (for X-Real-IP pass 0: a single address is its own rightmost)
 *
 * Exactly nginx's walk: while the current address is trusted, replace it with
 * the next element from the right (an element may carry a port: "1.2.3.4:80",
 * "[::1]:80"); stop at an untrusted address, at an element that is not an
 * address (the address found so far stays), or after one step when not
 * recursive. An untrusted peer's header is ignored. With every element
 * trusted, the leftmost one wins (as in nginx).
 *
 * `out` gets the result in canonical form. → 1 when it came from the header,
 * 0 when it is the peer, -1 when peer_ip is not an address or out is too
 * small (SH_IP_MAX is always enough; out is then the empty string). */
int sh_realip(const char *peer_ip, const char *header_value, const sh_cidr *trusted,
              size_t ntrusted, int recursive, char *out, size_t outsz);

#endif
