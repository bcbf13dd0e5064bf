#!/usr/bin/env python3
"""check_layers.py — the layering of the core, checked on the object files.

    python3 tests/structure/check_layers.py OBJDIR
    python3 tests/structure/check_layers.py FILE.o...

OBJDIR holds the object files of the sh_core library (CMake puts them in
build/CMakeFiles/sh_core.dir/src/, named conn.c.o etc.); ctest passes the
objects themselves ($<TARGET_OBJECTS:sh_core>). `nm -P` lists what
each object defines and what it leaves undefined; an undefined symbol of A
that B defines is a dependency A → B. The check fails (exit 1) on:

  (a) a dependency cycle between files (each cycle is printed);
  (b) an object that does socket or WebSocket I/O (references uv_read_start,
      uv_accept or any wslay_event_*) and also references a lua_*/luaL_*
      symbol or any symbol defined by a Lua-layer object (lua_host, lua_io,
      lua_api, lua_lib, json_decode, user_metrics): the transport uses no Lua;
  (c) the transport objects (conn, ws_conn) or the Lua layer referencing a
      symbol that a composer (server.o, kit.o: the policy test kit) or the
      real I/O backend (host_io.o) defines: nothing calls up into them;
  (d) a Lua-layer object doing I/O itself: referencing the Redis bus's or the
      HTTP client's requests (sh_redis_command, sh_redis_subscribe,
      sh_http_request, ...) or starting libuv timers. The Lua layer waits only
      through the host's I/O backend (sh_host_io in lua_host.h), which the
      server fills with the real ones (host_io.c) and the test kit with
      simulations (kit.c): so the kit runs the same Lua-layer code.

On success it prints the graph, one line per file: `conn.c → http_parse.c log.c`.
Python 3 standard library only.
"""
import os
import subprocess
import sys

LUA_LAYER = {"lua_host.c", "lua_io.c", "lua_api.c", "lua_lib.c", "lua_cjson.c", "json_decode.c", "user_metrics.c"}
TRANSPORT = {"conn.c", "ws_conn.c"}
# Files that form one module, whose edges would not count: none. (conn.c
# reaches the WebSocket phase in ws_conn.c through the sh_ws_phase table the
# composer hands it, so ws_conn.c → conn.c is the only edge between them.)
SAME_MODULE = []


def same_module(a, b):
    return any(a in m and b in m for m in SAME_MODULE)
IO_SYMBOLS = {"uv_read_start", "uv_accept"}
COMPOSERS = {"server.c", "kit.c", "host_io.c"}
# what the Lua layer may reach only through sh_host_io
BACKEND_IO = {"sh_redis_command", "sh_redis_cmd_cancel", "sh_redis_subscribe",
              "sh_redis_unsubscribe", "sh_redis_bus_up", "sh_http_request",
              "sh_http_call_cancel", "uv_timer_start", "uv_timer_init"}


def source_name(obj):
    """conn.c.o → conn.c; conn.o → conn.c."""
    base = os.path.basename(obj)
    if base.endswith(".c.o"):
        return base[:-2]
    if base.endswith(".o"):
        return base[:-2] + ".c"
    return base


def read_symbols(path, nm):
    """(defined, undefined) symbol sets of one object file."""
    out = subprocess.run([nm, "-P", path], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            undefined.add(name)
        elif kind in "TDBRCVWGS" or kind in "tdbrgs":
            # only global definitions link files together
            if kind.isupper():
                defined.add(name)
    return defined, undefined


def find_cycles(graph):
    """Every elementary cycle reachable, reported once each, as node lists
    (the first node is the smallest, so each cycle has one spelling).
    Tarjan's strongly connected components first, then a DFS per component."""
    index, low, onstack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        onstack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in onstack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                onstack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)

    cycles = []
    for comp in sccs:
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        members = set(comp)
        for start in sorted(members):
            # cycles whose smallest node is start
            path = [start]

            def walk(v):
                for w in sorted(graph[v] & members):
                    if w == start:
                        cycles.append(list(path))
                    elif w > start and w not in path:
                        path.append(w)
                        walk(w)
                        path.pop()
                    if len(cycles) > 200:
                        return

            walk(start)
    return cycles


def main(argv):
    if len(argv) < 2:
        print("usage: check_layers.py OBJDIR | FILE.o... (the sh_core object files)",
              file=sys.stderr)
        return 2
    nm = os.environ.get("NM", "nm")
    if len(argv) == 2 and os.path.isdir(argv[1]):
        objdir = argv[1]
        objs = sorted(os.path.join(objdir, f) for f in os.listdir(objdir)
                      if f.endswith(".o"))
    else:
        objs = sorted(argv[1:])
        objdir = os.path.dirname(objs[0])
        absent = [o for o in objs if not os.path.isfile(o)]
        if absent:
            print("check_layers: not found: %s" % " ".join(absent), file=sys.stderr)
            return 2
    if not objs:
        print("check_layers: no object files in %s" % objdir, file=sys.stderr)
        return 2

    defined, undefined = {}, {}
    for o in objs:
        name = source_name(o)
        defined[name], undefined[name] = read_symbols(o, nm)

    owner = {}
    for name in sorted(defined):
        for sym in defined[name]:
            owner.setdefault(sym, name)

    graph = {name: set() for name in defined}
    why = {}  # (a, b) → a few symbols behind the edge
    for a in defined:
        for sym in sorted(undefined[a]):
            b = owner.get(sym)
            if b and b != a and not same_module(a, b):
                graph[a].add(b)
                why.setdefault((a, b), []).append(sym)

    problems = []

    # (a) cycles
    for cyc in find_cycles(graph):
        ring = cyc + [cyc[0]]
        steps = []
        for x, y in zip(ring, ring[1:]):
            syms = why.get((x, y), [])
            steps.append("%s → %s (%s)" % (x, y, ", ".join(syms)))
        problems.append("dependency cycle: %s\n    %s" % (" → ".join(ring), "\n    ".join(steps)))

    # (b) socket/WebSocket I/O together with Lua
    lua_defined = set()
    for name in LUA_LAYER & set(defined):
        lua_defined |= defined[name]
    for a in sorted(defined):
        u = undefined[a]
        io = sorted(s for s in u if s in IO_SYMBOLS or s.startswith("wslay_event_"))
        if not io:
            continue
        lua = sorted(s for s in u if s.startswith("lua_") or s.startswith("luaL_")
                     or s in lua_defined)
        if lua:
            problems.append("%s does transport I/O (%s) and uses the Lua layer (%s)"
                            % (a, ", ".join(io[:4]), ", ".join(lua[:6])))

    # (c) the transport or the Lua layer calling into a composer
    for comp in sorted(COMPOSERS & set(defined)):
        for a in sorted((TRANSPORT | LUA_LAYER) & set(defined)):
            up = sorted(undefined[a] & defined[comp])
            if up:
                problems.append("%s references %s, which composes it: %s"
                                % (a, comp, ", ".join(up)))

    # (d) the Lua layer doing I/O without the host's backend
    for a in sorted(LUA_LAYER & set(defined)):
        direct = sorted(undefined[a] & BACKEND_IO)
        if direct:
            problems.append("%s does I/O itself (%s): the Lua layer waits through sh_host_io"
                            % (a, ", ".join(direct)))

    missing = sorted((TRANSPORT | {"lua_io.c", "kit.c", "host_io.c"}) - set(defined))
    if missing:
        problems.append("objects not found in %s: %s" % (objdir, ", ".join(missing)))

    print("file dependencies of sh_core (A → what A uses):")
    width = max(len(n) for n in graph)
    for name in sorted(graph):
        print("  %-*s → %s" % (width, name, " ".join(sorted(graph[name])) or "(nothing)"))

    if problems:
        print()
        for p in problems:
            print("FAIL " + p)
        print("check_layers: %d problem(s)" % len(problems))
        return 1
    print("check_layers: no cycles; the transport uses neither Lua nor a composer; "
          "the Lua layer does its I/O through sh_host_io")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
