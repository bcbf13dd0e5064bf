#!/usr/bin/env python3
"""test_attack_policy.py — from an attack as a hostile or careless policy author and operator:
odd hook and route return values, reloads while work is in flight, a crashing worker. Each
docstring says how the test failed on the code before ("fails on old: ...").

    python3 tests/integration/test_attack_policy.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1 python3 ...
"""
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ROOT, Statushost, Suite, WsClient, free_port, http_request,  # noqa: E402
                     shared_redis, wait_until)

S = Suite("attack_policy")
POL = os.path.join(ROOT, "tests", "integration", "policies")
NO_REDIS = "redis://127.0.0.1:%d" % free_port()  # nothing listens there


def pol(name):
    return os.path.join(POL, name)


def host(script, sets=(), redis=None, **kw):
    sets = list(sets) + ["shutdown_grace_ms=300"]
    return Statushost(script, redis=redis if redis is not None else NO_REDIS, sets=sets, **kw)


def read_responses(sock, n, timeout=5):
    """n HTTP/1.1 responses from sock, framed as a client does (RFC 9110 §6.4.1: a 204 or
    304 ends at its head, whatever Content-Length says) → [(status, headers, body)]."""
    sock.settimeout(timeout)
    f = sock.makefile("rb")
    out = []
    for _ in range(n):
        status = int(f.readline().split()[1])
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if status not in (204, 304) and "content-length" in headers:
            body = f.read(int(headers["content-length"]))
        out.append((status, headers, body))
    return out


@S.test
def a_204_or_304_route_answer_ends_at_its_head():
    """A route answering 204 or 304, pipelined with other requests on one keep-alive
    connection: each ends at its head (no body, and a 204 has no Content-Length: RFC 9110
    §6.4.1, §8.6), so the next response is read where it starts; a route that gives a 204
    a body is a Lua error (500, logged), not a body sent after the head.
    fails on old: yes (`204`, "body" sent "Content-Length: 24" and the 24 bytes after the
    head: a client reads them as the start of the next response, "a body a 204 cannot
    haveHTTP/1.1 200 OK" — the responses after it on that connection are out of step)."""
    with host(pol("attack_routes.lua")) as sh:
        s = socket.create_connection(("127.0.0.1", sh.port))
        reqs = ["/no-content", "/ok", "/not-modified", "/ok", "/no-content-body"]
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in reqs))
        got = read_responses(s, len(reqs))
        s.close()
        assert [g[0] for g in got] == [204, 200, 304, 200, 500], got
        assert "content-length" not in got[0][1], got[0]
        assert got[1][2] == b"ok" and got[3][2] == b"ok", got
        assert got[2][1].get("etag") == '"v1"', got[2]
        sh.wait_log(r"lua error in route: a 204 or 304 response has no body")


def upgrade(port, path, extra=""):
    """A WebSocket upgrade request to path → (status, headers) of the answer."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
               % (path, extra)).encode())
    status, headers, _ = read_responses(s, 1)[0]
    s.close()
    return status, headers


@S.test
def a_refusals_headers_follow_a_routes_rules():
    """on_handshake refuses with header values that are numbers (`Retry-After = 30`), which
    a route may return and the README says "the same rules hold for the headers of an
    on_handshake refusal": the refusal is sent with them, as the route's answer is. A value
    with CR LF or a boolean is still a Lua error (500, logged).
    fails on old: yes (the refusal with `Retry-After = 30` answered 500, "lua error in
    on_handshake: on_handshake: refusal headers map token names to strings without control
    characters", while the route returning the same headers answered 429)."""
    with host(pol("attack_handshake.lua")) as sh:
        status, headers, _ = http_request(sh.port, "GET", "/retry")
        assert status == 429 and headers.get("retry-after") == "30", (status, headers)
        status, headers = upgrade(sh.port, "/retry")
        assert status == 429, (status, headers, sh.log_text()[-600:])
        assert headers.get("retry-after") == "30" and headers.get("x-limit") == "1.5", headers
        for path in ("/crlf", "/bool"):
            m = sh.mark()
            status, headers = upgrade(sh.port, path)
            assert status == 500 and "set-cookie" not in headers, (path, status, headers)
            sh.wait_log(r"lua error in on_handshake: .*refusal headers map token names", start=m)


def check(source):
    """statushost --check on a script of this text → (exit status, stderr)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(source)
    try:
        p = subprocess.run([BIN, "--check", f.name], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stderr
    finally:
        os.unlink(f.name)


@S.test
def a_metric_cannot_take_the_name_of_another():
    """host.metrics.define of a name whose samples /metrics already writes: the server's own
    (connections_current, a gauge; dispatch_seconds, a histogram, and its _count), or a
    histogram's _bucket/_sum/_count of the policy's own, or a name host.metrics.inc takes for
    the server's (jobs_started: the policy's counter would never move): a load error that
    names the other metric (--check exits 2). A name next to them is fine.
    fails on old: yes (each loaded: /metrics then had two TYPE lines for
    statushost_connections_current, gauge and counter, and two samples of that name, or a
    counter statushost_lat_count beside the histogram lat's, which Prometheus refuses)."""
    head = 'local host = require "statushost"\n'
    for defs, other in [
            (['"connections_current", "counter"'], "the server's own statushost_connections_current"),
            (['"dispatch_seconds", "histogram"'], "the server's own statushost_dispatch_seconds"),
            (['"dispatch_seconds_count", "counter"'], "the server's own statushost_dispatch_seconds"),
            (['"lat", "histogram"', '"lat_count", "counter"'], "the policy's statushost_lat"),
            (['"lat_sum", "counter"', '"lat", "histogram"'], "the policy's statushost_lat_sum"),
            (['"jobs_started", "counter"'], "the server's own statushost_jobs_started_total")]:
        src = head + "".join('host.metrics.define(%s, "help")\n' % d for d in defs) + "return {}\n"
        rc, err = check(src)
        assert rc == 2 and "would clash with %s in /metrics" % other in err, (defs, rc, err)
    rc, err = check(head + 'host.metrics.define("lat", "histogram", "h")\n'
                    'host.metrics.define("lat_total", "counter", "c")\n'
                    'host.metrics.define("connections_now", "counter", "c")\nreturn {}\n')
    assert rc == 0, (rc, err)


@S.test
def a_test_declared_inside_a_test_fails_that_test():
    """A kit test file whose test calls t.test: that test fails naming the mistake, and the
    TAP stream keeps to its plan (1..2: two results, numbered 1 and 2), exit 1.
    fails on old: yes (the inner test was appended while the tests ran and run after them:
    "1..2" then three results, "ok 3 - inner" past the plan, and exit status 0)."""
    d = tempfile.mkdtemp(prefix="sh-attack-kit-")
    path = os.path.join(d, "nest_test.lua")
    with open(path, "w") as f:
        f.write('local t = require "statushost.test"\n'
                't.test("outer", function() t.test("inner", function() end) end)\n'
                't.test("second", function() end)\n')
    p = subprocess.run([BIN, "--test", path], capture_output=True, text=True, timeout=60)
    results = re.findall(r"^(not ok|ok) (\d+) - (.*)$", p.stdout, re.M)
    assert p.stdout.startswith("1..2\n"), p.stdout
    assert results == [("not ok", "1", "outer"), ("ok", "2", "second")], p.stdout
    assert "tests do not nest" in p.stdout, p.stdout
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)


@S.test
def a_huge_log_call_takes_only_what_the_line_keeps():
    """A route logs 40 references to one 8 MiB string (and a table whose __tostring gives
    it): the log keeps 16 KiB of a line, so the call takes about that much, answers 200
    and logs both lines, cut.
    fails on old: yes (the arguments were joined in full first: a 320 MiB Lua string past
    lua_max_memory, "not enough memory" in the route, 500; a single 64 MiB string took
    0.3 s of the loop to log, over loop_stall_ms under ASan)."""
    with host(pol("attack_routes.lua")) as sh:
        status, _, body = http_request(sh.port, "GET", "/log-big", timeout=60)
        assert (status, body) == (200, b"logged"), (status, body, sh.log_text()[-800:])
        sh.wait_log(r"warn .*big: aaaaaaaa")
        sh.wait_log(r"warn .*\] aaaaaaaa")


@S.test
def a_reload_that_fails_leaves_no_metric_behind():
    """SIGHUP with a script that defines a histogram at its top and is then refused by its
    on_config: the reload fails, and /metrics has no such histogram (no generation defined
    it); the next script, which defines that name as a counter, reloads, and its counter is
    exported and counts.
    fails on old: yes (the refused load's histogram stayed in the process's registry: it
    was exported, and every later reload that defined the name as a counter failed, "metric
    attack_foo is already defined with another kind or labels", until a restart)."""
    d = tempfile.mkdtemp(prefix="sh-attack-reload-")
    script = os.path.join(d, "policy.lua")
    versions = [
        'return { routes = { ["GET /x"] = function() return 200 end } }\n',
        'local host = require "statushost"\n'
        'host.metrics.define("attack_foo", "histogram", "h")\n'
        'return { on_config = function() return false, "not yet" end }\n',
        'local host = require "statushost"\n'
        'host.metrics.define("attack_foo", "counter", "c")\n'
        'return { routes = { ["GET /x"] = function() host.metrics.inc("attack_foo") '
        'return 200 end } }\n']
    with open(script, "w") as f:
        f.write(versions[0])
    with host(script) as sh:
        for v, want in ((versions[1], r"reload failed, keeping generation 1: config: not yet"),
                        (versions[2], r"reloaded .*generation 2 serves")):
            with open(script, "w") as f:
                f.write(v)
            m = sh.mark()
            sh.signal(signal.SIGHUP)
            sh.wait_log(r"reloaded|reload failed", start=m)
            sh.wait_log(want, start=m, timeout=1)
            if v is versions[1]:
                text = http_request(sh.port, "GET", "/metrics")[2].decode()
                assert "attack_foo" not in text, [l for l in text.splitlines() if "attack_foo" in l]
        assert http_request(sh.port, "GET", "/x")[0] == 200
        text = http_request(sh.port, "GET", "/metrics")[2].decode()
        assert "# TYPE statushost_attack_foo counter\nstatushost_attack_foo 1\n" in text, text


def decimal_comma_locale():
    """A directory with a de_DE.UTF-8 locale (decimal comma) for LOCPATH, or None when
    localedef cannot make one here."""
    d = tempfile.mkdtemp(prefix="sh-attack-locale-")
    try:
        subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", os.path.join(d, "de_DE.UTF-8")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except OSError:
        return None
    return d if os.path.isdir(os.path.join(d, "de_DE.UTF-8")) else None


@S.test
def a_policy_cannot_change_the_process_locale():
    """A route calls os.setlocale("de_DE.UTF-8") (with LOCPATH holding that locale, whose
    decimal separator is a comma): the call raises, naming why; os.setlocale() still reads
    "C". Numbers then stay as JSON and Prometheus want them: lua-cjson and host.json write
    1.5, /metrics' buckets le="0.005".
    fails on old: yes (the call succeeded, for the whole process: lua-cjson then wrote
    {"a":1,5} — not JSON — tostring gave 3,5, and /metrics' bucket bounds read le="0,005",
    which Prometheus refuses: every scrape failed)."""
    locpath = decimal_comma_locale()
    env = {"LOCPATH": locpath} if locpath else {}
    with host(pol("attack_locale.lua"), env=env) as sh:
        status, _, body = http_request(sh.port, "GET", "/setlocale")
        lines = body.decode().split("\n")
        assert status == 200 and lines[0] == "false" and lines[2] == "false", (status, lines)
        assert "os.setlocale: the locale is the process's and stays \"C\"" in lines[1], lines
        assert lines[4:] == ["C", "C"], lines
        status, _, body = http_request(sh.port, "GET", "/numbers")
        assert (status, body) == (200, b'{"a":1.5} {"b":2.5} 3.5'), (status, body)
        text = http_request(sh.port, "GET", "/metrics")[2].decode()
        assert 'statushost_dispatch_seconds_bucket{le="0.005"}' in text, text[:2000]


@S.test
def a_policy_that_calls_os_exit_says_so():
    """A route calls os.exit(3, true): the process exits 3, and its last line names the
    cause (the policy's os.exit, in which hook, for which connection).
    fails on old: yes (the process ended with status 3 and no line at all: the log ended
    at "listening on ...")."""
    with host(pol("attack_routes.lua")) as sh:
        try:
            http_request(sh.port, "GET", "/exit", timeout=10)
        except OSError:
            pass  # the connection ends with the process
        assert sh.wait_exit() == 3, sh.log_text()[-600:]
        sh.killed = True  # its exit status is the test's subject
        sh.wait_log(r"error \[[0-9a-f]{24}\] the policy called os.exit\(3\) in route: exiting",
                    timeout=1)


@S.test
def a_chosen_subprotocol_is_a_token_or_an_error():
    """on_handshake rewrites req.headers["sec-websocket-protocol"] (the offer its choice is
    checked against) to "a\\r\\nSet-Cookie:x=1" or "a\\0b" and returns true with it: a Lua
    error (500, logged), as any protocol the client did not offer. A token it offered ("q")
    is answered in the 101.
    fails on old: yes (both were accepted: the 101 went out without Sec-WebSocket-Protocol
    (the transport leaves out a value with CR LF) or with "a" (cut at the NUL), a protocol
    the client never offered, and nothing was logged)."""
    offer = "Sec-WebSocket-Protocol: p, q\r\n"
    with host(pol("attack_handshake.lua")) as sh:
        status, headers = upgrade(sh.port, "/proto", offer)
        assert status == 101 and headers.get("sec-websocket-protocol") == "q", (status, headers)
        for path in ("/proto-crlf", "/proto-nul"):
            m = sh.mark()
            status, headers = upgrade(sh.port, path, offer)
            assert status == 500 and "set-cookie" not in headers, (path, status, headers)
            sh.wait_log(r"lua error in on_handshake: .*not one the client offered", start=m)


@S.test
def what_a_wrapped_coroutine_starts_belongs_to_the_connection():
    """on_message starts a timer (200 ms) and a task that sleeps (400 ms) from inside a
    coroutine.wrap, then closes the connection: as for a timer and a task started by the
    hook itself, the timer is released with the connection (it never fires), the task's
    sleep returns nil, "closed" at once, and the lines logged inside the wrap carry the
    connection's id. A detached task logs "marker" 700 ms later, after either.
    fails on old: yes (inside a coroutine of the policy's own there was no current task:
    the timer and the task were detached — the timer fired after the connection had ended,
    the sleep returned true 400 ms later — and their lines had no connection id, "[-]")."""
    with host(pol("attack_wrap.lua")) as sh:
        c = WsClient(sh.port)
        c.send_text("go")
        assert c.expect_close()[0] == 1000
        cid = re.escape(sh.wait_log(r"\[([0-9a-f]{24})\] inside the wrap").group(1))
        sh.wait_log(r"\[%s\] wrapped task woke: nil closed" % cid)
        sh.wait_log(r"marker")
        assert "wrapped timer fired" not in sh.log_text(), sh.log_text()[-1500:]


class RecordingRemote(http.server.BaseHTTPRequestHandler):
    """A real HTTP/1.1 remote (keep-alive) that records each request's headers and body
    (read by its Content-Length, waiting 1 s at most) and answers 200."""
    protocol_version = "HTTP/1.1"
    timeout = 1
    requests = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append((self.headers, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@S.test
def a_requests_content_length_is_its_bodys():
    """host.http.request with a Content-Length header that is not the body's length (5 or 1
    for "abc") raises an argument error, and nothing is sent; the body's own length (3) is
    sent once; a header value with a NUL byte raises as one with CR LF does.
    fails on old: yes (each was sent as given: "Content-Length: 5" before 3 bytes left the
    remote waiting for 2 more ("nil, closed" after its timeout), "Content-Length: 1" made
    it read "bc" as the start of the next request on that kept-alive socket (the next
    call, a well-formed one, got that garbage's answer: 501), and "a\\0b" went out as
    "a")."""
    remote = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingRemote)
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    try:
        with host(pol("attack_http.lua"),
                  sets=["attack_remote=http://127.0.0.1:%d/" % remote.server_address[1]]) as sh:
            status, _, body = http_request(sh.port, "GET", "/cases", timeout=30)
            lines = body.decode().split("\n")
            assert status == 200, (status, body)
            for i in (0, 1, 3):
                assert lines[i].startswith("raised: ") and "invalid argument" in lines[i], lines
            assert lines[2] == "200", lines
            got = RecordingRemote.requests
            assert len(got) == 1, got
            assert got[0][1] == b"abc" and got[0][0].get_all("Content-Length") == ["3"], got
    finally:
        remote.shutdown()
        remote.server_close()


if __name__ == "__main__":
    S.run()
