/* kit.h — the policy test kit: `statushost --test FILE.lua...`.
 *
 * A test file runs in a Lua state of its own and drives policies loaded
 * in-process ("worlds"): each world is a script generation on the real Lua
 * host and policy layer (lua_host, lua_io, lua_api), with connections on the
 * real transport (conn.c, ws_conn.c: HTTP parsing, the upgrade, WebSocket
 * framing) whose socket is replaced by a buffer (sh_transport capture), and
 * an I/O backend (sh_host_io) that simulates the rest: a virtual clock for
 * host.timer/host.sleep, a Redis (commands answered by the test, pub/sub
 * delivered by it) and the remote (HTTP requests answered by the test).
 * Nothing waits in real time and no socket is opened.
 *
 * The C side is the module "statushost.kit" (primitives); the API a test
 * author uses is scripts/test.lua ("statushost.test"), built on it. */
#ifndef SH_KIT_H
#define SH_KIT_H

/* Run the test files (args: the kit's options, kit_guard.h, then the files);
 * TAP on stdout. Returns the exit status: 0 when every test passed, 1 when
 * one failed, 2 when an option was wrong, a file did not load or the run
 * bailed out. */
int sh_kit_main(int nargs, char **args);

#endif
