/* lua_cjson.h — lua-cjson as a generation's policies get it (`require "cjson"`,
 * `require "cjson.safe"`, their `new()` instances, and the private instance behind
 * host.json.encode): lua-cjson itself, guarded where its C side could escape
 * lua_max_memory, the instruction budget or the C stack.
 *
 * lua-cjson builds its results with C buffers (malloc) and C recursion:
 *  - decode mallocs a scratch buffer the size of its text, encode a buffer for the text it
 *    writes; a Lua allocation refused inside either (lua_max_memory) raises past their
 *    free: the buffer leaked at each refusal;
 *  - an encode's text can be far larger than the Lua memory of its value (one long string
 *    a thousand times in a table), and an instance keeps its buffer (encode_keep_buffer);
 *  - their work is one VM instruction for the budget;
 *  - decode_max_depth / encode_max_depth let them recurse in C as deep as asked.
 * So decode and encode run only when the room left under the cap could hold the most
 * they can make (decode: CJSON_GROWTH bytes per byte of text; encode: a bound of its text
 * from a walk of the value, sh_json_encode_bound), after a full collection if need be,
 * and then with the cap lifted (no policy Lua can run meanwhile: no finalizer of a
 * policy's is reachable): nothing inside can be refused. With less room the call fails as a
 * refused allocation does: "not enough memory" (cjson.safe: nil and that message). Both
 * charge the budget a VM instruction per SH_BUDGET_BYTES_PER_INSTRUCTION bytes of text.
 * Instances do not keep an encode buffer (encode_keep_buffer(true) is taken as false:
 * the output is the same), and neither depth can be set past CJSON_MAX_DEPTH. */
#ifndef SH_LUA_CJSON_H
#define SH_LUA_CJSON_H

#include <lua.h>

struct sh_gen;

/* Put the guarded "cjson" and "cjson.safe" in package.preload of g's state L. */
void sh_cjson_preload(lua_State *L, struct sh_gen *g);

#endif
