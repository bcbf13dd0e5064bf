#!/usr/bin/env python3
"""test_attack13_policy.py — session 13's attack as a hostile or careless policy author: what a
policy's Lua can make of the host's runs. Each docstring says how the test failed on the code
before ("fails on old: ...").

    python3 tests/integration/test_attack13_policy.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1 python3 ...
"""
import os
import re
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ROOT, Statushost, Suite, WsClient, free_port, http_request,  # noqa: E402
                     shared_redis)

S = Suite("attack13_policy")
POL = os.path.join(ROOT, "tests", "integration", "policies")
NO_REDIS = "redis://127.0.0.1:%d" % free_port()  # nothing listens there


def pol(name):
    return os.path.join(POL, name)


def host(script, sets=(), redis=None, **kw):
    sets = list(sets) + ["shutdown_grace_ms=300"]
    return Statushost(script, redis=redis if redis is not None else NO_REDIS, sets=sets, **kw)


def get(sh, path):
    status, _, body = http_request(sh.port, "GET", path)
    return status, body


@S.test
def a_failed_hooks_to_be_closed_variables_are_closed():
    """A route and an on_message that hold a `local g <close>` guard and then raise: the
    error is logged and answered (500, close 1011) as before, and the guard's __close
    handler runs, with the error, as Lua runs it when a pcall'd function or a
    coroutine.wrap fails (the policy cannot coroutine.close a hook's coroutine itself).
    fails on old: yes (lua_resume unwinds nothing on an error and the host dropped the
    coroutine: no handler ever ran, the count stayed 0 — a slot a guard was to give back,
    an in-flight count, a lock in a shared dictionary, was held for ever)."""
    with host(pol("attack13_close.lua")) as sh:
        m = sh.mark()
        assert get(sh, "/fail")[0] == 500
        sh.wait_log(r"lua error in route: .*attack13 route failure", start=m)
        sh.wait_log(r"attack13: route guard closed, error: .*attack13 route failure", start=m)
        assert get(sh, "/count") == (200, b"1")
        c = WsClient(sh.port)
        c.send_text("x")
        assert c.expect_close()[0] == 1011
        sh.wait_log(r"attack13: message guard closed, send: ", start=m)
        assert "a __close handler" not in sh.log_text()  # the handlers raised nothing


@S.test
def a_close_handler_of_a_coroutine_the_budget_stopped_cannot_hold_the_loop():
    """coroutine.wrap of a body that loops and holds a <close> guard whose handler loops
    too; and such a coroutine kept (its run stopped by the budget) and closed with
    coroutine.close in a later run: each run ends (500, 200 false) and the server goes on.
    fails on old: yes (the budget raises from Lua's count hook, which leaves the thread's
    hooks off for good: the wrap's close, and a later coroutine.close, ran the handler
    uncounted, until the loop_stall_ms watchdog aborted the process — every connection
    lost)."""
    with host(pol("attack13_close.lua"), sets=["loop_stall_ms=3000"]) as sh:
        m = sh.mark()
        assert get(sh, "/wrap")[0] == 500
        sh.wait_log(r"lua error in route: .*instruction budget exceeded", start=m)
        assert get(sh, "/ok") == (200, b"ok\n")
        assert get(sh, "/saved")[0] == 500
        assert get(sh, "/close") == (200, b"false")
        assert get(sh, "/close") == (200, b"false")
        assert get(sh, "/ok") == (200, b"ok\n")
        assert "guard runs" not in sh.log_text()


@S.test
def a_kit_test_over_its_time_with_a_looping_close_handler_fails_alone():
    """statushost --test --cpu-ms 300: a test stopped over its CPU time while a <close>
    variable's handler loops (in the test's own coroutine, in a coroutine.wrap, in a
    coroutine kept and closed by the next test), or an xpcall's message handler loops, fails,
    and the run goes on with the next test.
    fails on old: yes (the kit's hook raised, which leaves the coroutine's hooks off: the
    kit then ran the handler unbounded, stuck until twice the time — "Bail out! ... the test
    is stuck past its CPU time", exit 2, the tests after it never ran)."""
    p = subprocess.run([BIN, "--test", "--cpu-ms", "300", pol("attack13_close_test.lua")],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60, cwd=ROOT)
    out = p.stdout.decode()
    assert p.returncode == 1, (p.returncode, out, p.stderr.decode()[-2000:])
    for i in (1, 2, 3, 6):
        assert re.search(r"(?m)^not ok %d - " % i, out), out
    for i in (4, 5, 7):
        assert re.search(r"(?m)^ok %d - " % i, out), out
    assert "Bail out" not in out, out


@S.test
def an_xpcall_handler_cannot_outlast_the_budget():
    """xpcall of a loop the budget stops, whose message handler loops too: the route answers
    500 (the budget's error, logged) and the server goes on; xpcall is otherwise Lua's (a
    handler shapes a plain error; a body that waits returns its results; debug.traceback's
    traceback starts at the function that raised).
    fails on old: yes (Lua calls the handler where the error is raised: inside the budget's
    count hook, where Lua runs no hook — the handler looped uncounted until the
    loop_stall_ms watchdog aborted the process)."""
    with host(pol("attack13_xpcall.lua"), sets=["loop_stall_ms=3000"]) as sh:
        m = sh.mark()
        assert get(sh, "/loop")[0] == 500
        sh.wait_log(r"lua error in route: instruction budget exceeded", start=m)
        assert get(sh, "/ok") == (200, b"ok\n")
        assert get(sh, "/err") == (200, b"false handled 7")
        assert get(sh, "/sleep") == (200, b"true true arg")
        status, tb = get(sh, "/tb")
        assert status == 200 and re.match(rb"[^\n]*boom\nstack traceback:\n\t\[C\]: in function "
                                          rb"'error'\n", tb), tb
        assert "xpcall handler runs" not in sh.log_text()


@S.test
def on_config_returning_nil_and_a_reason_refuses_the_config():
    """on_config returns nil, "why" (Lua's shape of a failure, as io.open's): --check exits 2
    naming the shape and the reason, as on_handshake's nil, 401 is an error and not an accept.
    fails on old: yes (only the first value was read: nil accepted the config, "oc.lua: ok",
    exit 0, and the server started on a config its policy had refused)."""
    p = subprocess.run([BIN, "--check", pol("attack13_config_nil.lua")], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30, cwd=ROOT)
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, p.stdout, err)
    assert re.search(r'on_config must return nothing, true, or false, "why" \(it returned nil, '
                     r'attack13: port_ok must be set\)', err), err


@S.test
def metric_label_names_are_a_list_of_names_prometheus_leaves_free():
    """host.metrics.define with the label names {"__name__"}, {[1] = "job", [3] = "reason"} or
    {"job", reason = true}: --check exits 2 naming the mistake; {"job", "reason"} loads.
    fails on old: yes (all three loaded: a __name__ label went to /metrics as
    statushost_x{__name__="..."}, which Prometheus reads as the sample's name — any metric's,
    the server's own included; and the names past a hole, or under other keys, were left out
    without a word, their values dropped from every sample)."""
    for case, ok in (("reserved", False), ("hole", False), ("extra", False), ("ok", True)):
        env = dict(os.environ, ATTACK13_LABELS=case)
        p = subprocess.run([BIN, "--check", pol("attack13_labels.lua")], env=env, cwd=ROOT,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        err = p.stderr.decode()
        if ok:
            assert p.returncode == 0, (case, p.returncode, err)
        else:
            assert p.returncode == 2 and "host.metrics.define: bad argument #4" in err, (case, err)


@S.test
def a_request_with_its_own_transfer_encoding_raises():
    """host.http.request with a Transfer-Encoding header (a POST whose body is "0" CRLF CRLF
    then a second request): the call raises invalid argument, as a Content-Length that is not
    the body's does; and the test kit refuses both as the server does.
    fails on old: yes (the client took the policy's Transfer-Encoding for its own framing and
    sent no Content-Length: the remote read the body in chunks and the bytes after the "0"
    chunk as the next request on the kept-alive socket — a request smuggled in, whose answer
    the next call on that socket would read as its own; in the kit, neither was refused)."""
    dead = "http://127.0.0.1:%d/jobs" % free_port()
    with host(pol("attack13_http_te.lua"), env={"ATTACK13_REMOTE": dead}) as sh:
        for path in ("/te", "/cl"):
            status, body = get(sh, path)
            assert status == 200 and body.startswith(b"raised: ") and \
                b"invalid argument" in body, (path, body)
        assert get(sh, "/ok") == (200, b"returned: refused")
    p = subprocess.run([BIN, "--test", pol("attack13_http_te_test.lua")], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout.decode(), p.stderr.decode()[-2000:])


@S.test
def loadfile_dofile_and_require_take_text_chunks_only():
    """A binary chunk (string.dump) written to a file: loadfile, dofile and require of it fail
    "attempt to load a binary chunk", as load() refuses one and the script itself is read.
    fails on old: yes (only load was text-only: each of the three ran the bytecode — a chunk
    a crafted or damaged file makes can crash the VM, every connection with it)."""
    with tempfile.TemporaryDirectory() as d:
        with host(pol("attack13_bytecode.lua"), env={"ATTACK13_DIR": d}) as sh:
            status, body = get(sh, "/b")
            lines = body.decode().split("\n")
            assert status == 200 and len(lines) == 3, body
            for line in lines:
                assert line.startswith("error: ") and "attempt to load a binary chunk" in line, body


@S.test
def conn_track_argument_errors_name_it():
    """conn:track({}, {}, nil), conn:track("job", ...), conn:track({}, 5, ...): each raises
    "conn:track: bad argument #N (T expected, got U)", as every other conn method's misuse
    (README: an error that names the function; self not counted).
    fails on old: yes ("bad argument #3 to 'track' (function expected, got nil)": Lua's own
    form, which names neither conn nor the API)."""
    with host(pol("attack13_track_args.lua")) as sh:
        c = WsClient(sh.port)
        for i, want in ((1, "#3 (function expected, got nil)"), (2, "#1 (table expected, got string)"),
                        (3, "#2 (table expected, got number)")):
            c.send_text(str(i))
            text = c.recv_text()
            assert text.startswith("false ") and text.endswith("conn:track: bad argument " + want), text


@S.test
def a_job_counter_saturates_instead_of_wrapping():
    """host.metrics.inc("jobs_started", math.maxinteger) three times: /metrics reads
    18446744073709551615 (2^64 - 1, where it stays), never less than after the second.
    fails on old: yes (the uint64_t wrapped: 18446744073709551614 after two, then
    9223372036854775805 — a counter that went down, which Prometheus takes for a restart)."""
    with host(pol("attack13_counter.lua")) as sh:
        seen = []
        for _ in range(3):
            assert get(sh, "/inc")[0] == 200
            body = get(sh, "/metrics")[1].decode()
            seen.append(int(re.search(r"(?m)^statushost_jobs_started_total (\d+)$", body).group(1)))
        assert seen == [2**63 - 1, 2**64 - 2, 2**64 - 1], seen


@S.test
def a_subprotocol_offered_after_a_tab_can_be_chosen():
    """The client offers "Sec-WebSocket-Protocol: x,<TAB>q" (a list whose optional white space
    is a tab, RFC 9110 §5.6.1) and on_handshake returns true, "q": 101 with the protocol q.
    fails on old: yes (the offer was split on commas and spaces only: the token read as
    "<TAB>q", the choice was "not one the client offered", and the client got 500)."""
    with host(pol("attack13_proto.lua")) as sh:
        s = socket.create_connection(("127.0.0.1", sh.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Protocol: x,\tq\r\n\r\n")
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        s.close()
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 101 Switching Protocols", head
        assert b"Sec-WebSocket-Protocol: q" in lines, head


@S.test
def a_route_whose_method_no_request_carries_is_refused():
    """routes = {["get /status"] = ...}: --check exits 2 ("the method in upper case, as requests
    send it"), as for any other key that is not "METHOD /path".
    fails on old: yes ("ok", exit 0: the route loaded, and every GET /status got 404 — a
    route that could never run, which nothing said)."""
    p = subprocess.run([BIN, "--check", pol("attack13_route_lower.lua")], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 2 and "the method in upper case" in err, (p.returncode, err)


@S.test
def the_kits_redis_checks_integers_and_expiry_times_as_redis():
    """INCRBY with "01", "-0" and "+1", SET ... PX 2^63-1 and EX 2^63/1000, EXPIRE and PEXPIRE
    past 2^63 ms from now: a real redis-server refuses each (not an integer; invalid expire
    time), and the kit's store answers the same replies (README: its arguments are checked as
    Redis checks them).
    fails on old: yes (the kit took "01" and "-0" for integers, and set the expiries: a test
    passed in the kit on commands Redis refuses)."""
    redis = shared_redis()
    with host(pol("attack13_redis_args.lua"), redis=redis) as sh:
        real = get(sh, "/r")[1].decode().split("\n")
    p = subprocess.run([BIN, "--test", pol("attack13_redis_args_test.lua")], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout.decode(), p.stderr.decode()[-2000:])
    kit = ["err: ERR value is not an integer or out of range"] * 3 + [
        "err: ERR invalid expire time in 'set' command"] * 2 + [
        "OK", "err: ERR invalid expire time in 'expire' command",
        "err: ERR invalid expire time in 'pexpire' command", "1"]
    assert real == kit, (real, kit)


@S.test
def json_encode_refuses_an_integer_key_and_a_string_key_that_collide():
    """host.json.encode({[10^15] = "int", ["1000000000000000"] = "str"}): nil and an error
    saying the two keys are the same JSON key.
    fails on old: yes ('{"1000000000000000":"str"}': writing integers of 15+ digits in full
    made the integer key a string in a copy of the table, where it overwrote the other one —
    a value lost without a word)."""
    with host(pol("attack13_json_keys.lua")) as sh:
        assert get(sh, "/j") == (200, b"nil Cannot serialise table: an integer key and a string "
                                      b"key are the same JSON key")


if __name__ == "__main__":
    S.run()
