#!/usr/bin/env python3
"""Abusive clients against the real binary (SPEC §6, §7): each is answered as §6
says, and each leaves nothing behind.

    python3 tests/integration/test_abuse.py [test_name ...]
    SH_VERBOSE=1 ... shows the server's log

After every scenario the test waits (polling /metrics, the only thing polled)
until statushost_connections_current is back to its baseline and
statushost_lua_tasks_current is 0, then checks that the server holds exactly
the file descriptors it held before (/proc/PID/fd) and that its RSS is within
10% of what it was before the scenario. "Before" is measured after a warm-up
(the same kind of traffic, smaller), so the allocator's first growth is not
counted. Every scenario prints its RSS before/after.

Everything else is awaited as an event: a TCP close, a frame, a response.
"""
import os
import select
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ROOT, Redis,  # noqa: E402
                     Statushost, Suite, WsClient, WsClosed, wait_until)

suite = Suite("abuse")
POL = os.path.join(ROOT, "tests", "integration", "policies")
FLOOD = os.path.join(POL, "abuse_flood.lua")  # echo + "flood" (64 KiB pushes)

_redis = None


def redis():
    """One redis-server for the whole file, so the server's Redis sockets are
    stable and the fd counts compare exactly."""
    global _redis
    if _redis is None:
        _redis = Redis()
    return _redis


def server(*sets):
    sh = Statushost(FLOOD, redis=redis(), sets=list(sets))
    sh.wait_log(r"redis up")
    return sh


def ws(sh, headers=None, timeout=10):
    c = WsClient(sh.port, headers=headers, timeout=timeout)
    assert c.status == 101, "handshake answered %s" % c.status
    return c


def upgrade_request(port, extra=""):
    return ("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n%s\r\n" % (port, extra)).encode()


def status_of(resp):
    if not resp.startswith(b"HTTP/1."):
        return None
    return int(resp.split(b" ", 2)[1])


def read_to_close(sock, timeout=10):
    """Read until the peer ends TCP (EOF or reset) → bytes; fails on timeout."""
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return out
        except socket.timeout:
            raise AssertionError("connection still open after %ss (got %r)" % (
                timeout, out[:200]))
        if not chunk:
            return out
        out += chunk


def exchange(port, data, timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_to_close(s, timeout)


# ------------------------------------------------------------ leaving nothing

def metric(sh, name):
    return sh.metrics()["statushost_" + name]


def quiet_fds(sh, window=0.3):
    """The server's fd count with no client socket open: the /metrics request
    that just confirmed it may still hold a socket for a moment, so take the
    least count seen over a short window of /proc samples."""
    least = sh.fd_count()
    end = time.monotonic() + window
    while time.monotonic() < end:
        least = min(least, sh.fd_count())
        time.sleep(0.01)
    return least


def idle(sh, conns=None, timeout=20):
    """Await the server with no client connection but the /metrics poll itself
    and no Lua task alive → connections_current."""
    def ok():
        m = sh.metrics()
        cur = m["statushost_connections_current"]
        tasks = m["statushost_lua_tasks_current"]
        ok.last = (cur, tasks)
        return tasks == 0 and (cur == conns if conns is not None else cur <= 1)
    ok.last = None
    try:
        wait_until(ok, timeout=timeout, interval=0.05, what="idle server")
    except AssertionError:
        raise AssertionError("server not idle after %ss: connections_current %s "
                             "(baseline %s), lua_tasks_current %s" % (
                                 timeout, ok.last[0], conns, ok.last[1]))
    return ok.last[0]


class Baseline:
    def __init__(self, sh, what):
        self.what = what
        self.conns = idle(sh)
        self.fds = quiet_fds(sh)
        self.rss = sh.rss_kb()

    def check(self, sh, timeout=20):
        """Connections and Lua tasks back to baseline, the same fds, RSS within 10%."""
        idle(sh, self.conns, timeout)
        try:
            wait_until(lambda: sh.fd_count() == self.fds, timeout=5, interval=0.02,
                       what="fds")
        except AssertionError:
            raise AssertionError("%s: server holds %d fds, %d before (leak?): %s" % (
                self.what, sh.fd_count(), self.fds,
                sorted(os.readlink("/proc/%d/fd/%s" % (sh.proc.pid, f))
                       for f in os.listdir("/proc/%d/fd" % sh.proc.pid))))
        rss = sh.rss_kb()
        print("     %s: RSS before %d kB, after %d kB (%+.1f%%); fds %d -> %d" % (
            self.what, self.rss, rss, 100.0 * (rss - self.rss) / self.rss, self.fds,
            sh.fd_count()), flush=True)
        if not (os.environ.get("SH_SANITIZED") or os.environ.get("SH_WRAPPER")):
            # ASan's quarantine and valgrind's allocator keep freed memory
            assert rss <= self.rss * 1.10, "%s: RSS grew from %d kB to %d kB (> 10%%)" % (
                self.what, self.rss, rss)
        return rss


def warm(sh, n=100):
    """Ordinary traffic first: n WebSockets opened at once, each echoing 4 KiB."""
    cs = [ws(sh) for _ in range(n)]
    for c in cs:
        c.send_text("w" * 4096)
    for c in cs:
        assert c.recv() == (OP_TEXT, b"w" * 4096)
        c.close()
    for c in cs:
        c.expect_close()
        c.wait_tcp_close()
        c.shutdown()


# ------------------------------------------------------------------ scenarios

@suite.test
def test_slow_loris_head():
    """Clients dripping a request head one byte per 200 ms are dropped at about
    handshake_timeout_ms (1500), never later."""
    with server("handshake_timeout_ms=1500") as sh:
        warm(sh)
        base = Baseline(sh, "slow-loris")
        head = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + "d" * 200).encode()
        n = 6
        socks, t0, closed, got = [], [], {}, {}
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", sh.port), timeout=5))
            t0.append(time.monotonic())
        pos = 0
        deadline = time.monotonic() + 6
        while len(closed) < n and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.send(head[pos:pos + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed[i] = time.monotonic() - t0[i]
            pos += 1
            tick = time.monotonic() + 0.2
            while True:
                live = [s for i, s in enumerate(socks) if i not in closed]
                left = tick - time.monotonic()
                if not live or left <= 0:
                    break
                r, _, _ = select.select(live, [], [], left)
                for s in r:
                    i = socks.index(s)
                    try:
                        data = s.recv(65536)
                    except (ConnectionResetError, BrokenPipeError):
                        data = b""
                    if data:
                        got[i] = got.get(i, b"") + data
                    else:
                        closed[i] = time.monotonic() - t0[i]
        for s in socks:
            s.close()
        print("     dropped after %s s (%d bytes dripped)" % (
            ", ".join("%.2f" % closed[i] for i in sorted(closed)), pos), flush=True)
        assert len(closed) == n, "%d of %d slow clients still connected after 6 s" % (
            n - len(closed), n)
        for i, t in closed.items():
            assert 1.2 <= t < 4.0, "client %d dropped after %.2f s (deadline 1.5 s)" % (i, t)
        for i, data in got.items():
            # "connection dropped": a 408 answer before the close is tolerated
            assert status_of(data) in (None, 408), "client %d got %r" % (i, data[:100])
        base.check(sh)


@suite.test
def test_huge_head():
    """A 1 MiB head (one huge header value in 16 KiB writes) → 431 and close,
    and the server does not buffer it (peak RSS barely moves)."""
    with server() as sh:
        def attack(size):
            s = socket.create_connection(("127.0.0.1", sh.port), timeout=10)
            got = []

            def reader():
                got.append(read_to_close(s, 10))
            th = threading.Thread(target=reader, daemon=True)
            th.start()
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            sent = 0
            block = b"h" * 16384
            try:
                while sent < size:
                    s.sendall(block)
                    sent += len(block)
                s.sendall(b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            th.join(15)
            assert not th.is_alive(), "no close within 15 s after a %d-byte head" % size
            s.close()
            resp = got[0]
            assert status_of(resp) == 431, "a %d-byte head answered %r" % (size, resp[:120])
            return sent

        attack(64 * 1024)  # warm-up
        attack(64 * 1024)
        base = Baseline(sh, "1 MiB head")
        hwm_reset = False
        try:
            with open("/proc/%d/clear_refs" % sh.proc.pid, "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            hwm_reset = True
        except OSError:
            pass
        sent = attack(1024 * 1024)
        peak = None
        if hwm_reset:
            with open("/proc/%d/status" % sh.proc.pid) as f:
                peak = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0]
        print("     streamed %d bytes of head before the close; peak RSS during it %s kB" % (
            sent, peak), flush=True)
        if peak is not None:
            assert peak < base.rss + 512, (
                "peak RSS %d kB during a 1 MiB head, %d kB before: the head was buffered" % (
                    peak, base.rss))
        base.check(sh)


@suite.test
def test_ambiguous_framing():
    """Content-Length with Transfer-Encoding in a POST → 400 and close; an upgrade
    with a body → 400."""
    with server() as sh:
        p = sh.port
        cases = [
            ("POST with Content-Length and Transfer-Encoding",
             b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("POST with Transfer-Encoding then Content-Length",
             b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Length: 3\r\n\r\n0\r\n\r\n"),
            ("POST with two different Content-Lengths",
             b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
             b"Content-Length: 6\r\n\r\nhello!"),
            ("upgrade with Content-Length: 5 and a body",
             upgrade_request(p, "Content-Length: 5\r\n") + b"hello"),
            ("upgrade with a chunked body",
             upgrade_request(p, "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n"),
        ]
        for what, req in cases[:2]:  # warm-up
            exchange(p, req)
        base = Baseline(sh, "ambiguous framing")
        for what, req in cases:
            resp = exchange(p, req)  # fails unless the server closes
            assert status_of(resp) == 400, "%s: answered %r" % (what, resp[:120])
            assert b"HTTP/1.1 101" not in resp, what
        base.check(sh)


def churn(port, n, batch=500):
    """n connections, batch at a time, each dropped without any close: nothing
    sent; half a head; an upgrade; an upgrade + a text frame; an upgrade whose
    101 is read first. One in three is reset (SO_LINGER 0), the rest get a FIN."""
    req = upgrade_request(port)
    frame = WsClient.frame(OP_TEXT, b"dropped before the echo")
    linger0 = struct.pack("ii", 1, 0)
    done = 0
    while done < n:
        k = min(batch, n - done)
        socks = []
        for i in range(k):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        wait101 = []
        for i, s in enumerate(socks):
            kind = (done + i) % 5
            if kind == 1:
                s.sendall(req[:len(req) // 2])
            elif kind == 2:
                s.sendall(req)
            elif kind == 3:
                s.sendall(req + frame)
            elif kind == 4:
                s.sendall(req)
                wait101.append(s)
        for s in wait101:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                assert chunk, "closed before the 101: %r" % buf
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
        for i, s in enumerate(socks):
            if (done + i) % 3 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            s.close()
        done += k


@suite.test
def test_churn_10k():
    """10,000 connections opened and dropped without a close (batches of 500):
    connections_current back to baseline, the same fds, RSS within 10%."""
    with server() as sh:
        warm(sh)
        churn(sh.port, 1000)  # warm-up
        base = Baseline(sh, "10k churn")
        t0 = time.monotonic()
        m0 = sh.metrics()
        total0 = m0["statushost_connections_total"]
        churn(sh.port, 10000)
        took = time.monotonic() - t0
        base.check(sh, timeout=30)
        m1 = sh.metrics()
        total = m1["statushost_connections_total"] - total0
        print("     10,000 connections churned in %.1f s (connections_total +%d, "
              "websockets_total +%d)" % (took, total, m1["statushost_websockets_total"] -
                                         m0["statushost_websockets_total"]), flush=True)
        assert total >= 10000, total
        assert time.monotonic() - t0 < 30, "churn took %.1f s" % (time.monotonic() - t0)
        c = ws(sh)  # still serving
        c.send_text("alive")
        assert c.recv() == (OP_TEXT, b"alive")
        c.close()
        c.expect_close()
        c.shutdown()


def read_flood(c):
    """Read a flooded connection to its close → (data messages, close code, reason)."""
    n = 0
    while True:
        op, payload = c.recv()
        if op == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return n, code, payload[2:]
        assert op == OP_TEXT and len(payload) == 65536, (op, len(payload))
        n += 1


@suite.test
def test_slow_consumer():
    """A client that never reads while the policy pushes 64 KiB messages: closed
    1008 "slow consumer" at max_send_buffer (256 KiB), counted; the client finds
    the close after the data; a client that never reads at all is dropped after
    close_timeout_ms; memory returns."""
    with server("max_send_buffer=262144", "close_timeout_ms=1000") as sh:
        def flood_then_read():
            before = metric(sh, "slow_consumer_closes_total")
            c = ws(sh)
            c.send_text("flood")
            wait_until(lambda: metric(sh, "slow_consumer_closes_total") == before + 1,
                       timeout=10, interval=0.05, what="slow_consumer_closes_total +1")
            n, code, reason = read_flood(c)
            assert code == 1008 and reason == b"slow consumer", (code, reason)
            assert n >= 1, "no data before the close"
            c.send(OP_CLOSE, struct.pack("!H", 1008))
            c.wait_tcp_close()
            c.shutdown()
            return n

        warm(sh)
        flood_then_read()  # warm-up
        base = Baseline(sh, "slow consumer")
        n = flood_then_read()
        print("     reader: %d messages of 64 KiB, then close 1008 \"slow consumer\"" % n,
              flush=True)

        # never reads at all: the close handshake cannot complete; dropped
        before = metric(sh, "slow_consumer_closes_total")
        c = ws(sh)
        c.send_text("flood")
        wait_until(lambda: metric(sh, "slow_consumer_closes_total") == before + 1,
                   timeout=10, interval=0.05, what="slow_consumer_closes_total +1")
        t = time.monotonic()
        idle(sh, base.conns, timeout=10)  # the server let go of it, client unread
        dropped = time.monotonic() - t
        # what reaches it now: the data, then the 1008 close if the server's
        # kernel buffers held it, else the stream just ends (dropped)
        c.sock.settimeout(10)
        try:
            n, code, reason = read_flood(c)
            assert code == 1008, code
            assert c.wait_tcp_close()
            seen = "read %d messages, then the 1008 close" % n
        except WsClosed:
            seen = "read the queued data, then EOF (no close frame)"
        c.shutdown()
        print("     non-reader: dropped %.2f s after the 1008 (close_timeout_ms 1000); "
              "it then %s" % (dropped, seen), flush=True)
        assert metric(sh, "slow_consumer_closes_total") == before + 1
        base.check(sh)


@suite.test
def test_unanswered_pings():
    """ping_interval_ms=300, ping_timeout_ms=300: a client that reads but never
    answers is dropped within ~1 s; one that answers survives past 2 s."""
    with server("ping_interval_ms=300", "ping_timeout_ms=300") as sh:
        warm(sh, 20)
        base = Baseline(sh, "unanswered pings")
        good = ws(sh, timeout=5)
        good_result = {}

        def answer():  # recv() answers every ping
            pings = 0
            end = time.monotonic() + 2.3
            while time.monotonic() < end:
                good.sock.settimeout(max(0.01, end - time.monotonic()))
                try:
                    fin, _, op, payload = good.recv_frame()
                except socket.timeout:
                    break
                except (WsClosed, OSError) as e:
                    good_result["error"] = repr(e)
                    return
                if op == OP_PING:
                    pings += 1
                    good.send(OP_PONG, payload)
            good_result["pings"] = pings
        th = threading.Thread(target=answer, daemon=True)
        th.start()

        bad = ws(sh, timeout=5)
        t0 = time.monotonic()
        pings = 0
        try:
            while True:
                fin, _, op, payload = bad.recv_frame()
                if op == OP_PING:
                    pings += 1
        except (WsClosed, ConnectionResetError):
            pass
        except socket.timeout:
            raise AssertionError("a client that never answers pings still connected after 5 s")
        dropped = time.monotonic() - t0
        bad.shutdown()
        th.join(5)
        print("     silent client saw %d ping(s), dropped after %.2f s; answering client "
              "saw %s ping(s) in 2.3 s" % (pings, dropped, good_result.get("pings")), flush=True)
        assert pings >= 1, "no ping before the drop"
        assert 0.45 <= dropped <= 1.2, "dropped after %.2f s (ping at 0.3, timeout 0.3)" % dropped
        assert "error" not in good_result, "answering client lost: %s" % good_result["error"]
        assert good_result["pings"] >= 4, good_result
        good.sock.settimeout(5)
        good.send_text("still here")
        assert good.recv() == (OP_TEXT, b"still here")
        good.close()
        good.expect_close()
        good.wait_tcp_close()
        good.shutdown()
        base.check(sh)


@suite.test
def test_max_connections():
    """max_connections=50: 50 WebSockets open, the 51st upgrade is answered 503;
    after closing some, new ones are accepted again."""
    with server("max_connections=50") as sh:
        warm(sh, 40)
        base = Baseline(sh, "max_connections")

        def fds_are(n):  # every socket counts: wait for the /metrics one to go
            wait_until(lambda: sh.fd_count() == base.fds + n, timeout=5, interval=0.02,
                       what="%d client sockets on the server" % n)

        fds_are(0)
        cs = [ws(sh) for _ in range(50)]
        fds_are(50)
        over = WsClient(sh.port, timeout=5)
        assert over.status == 503, "51st upgrade answered %s" % over.status
        assert over.wait_tcp_close()
        over.shutdown()
        fds_are(50)
        for c in cs[:5]:
            c.close()
            c.expect_close()
            c.wait_tcp_close()
            c.shutdown()
        fds_are(45)
        more = [ws(sh) for _ in range(5)]
        fds_are(50)
        over = WsClient(sh.port, timeout=5)
        assert over.status == 503, "51st upgrade (again) answered %s" % over.status
        over.wait_tcp_close()
        over.shutdown()
        for c in cs[5:] + more:
            c.send_text("x")
            assert c.recv() == (OP_TEXT, b"x")
            c.close()
        for c in cs[5:] + more:
            c.expect_close()
            c.wait_tcp_close()
            c.shutdown()
        base.check(sh)


@suite.test
def test_origins():
    """allowed_origins: another Origin → 403; an allowed one → 101; no Origin → 101."""
    with server("allowed_origins=https://a.example,https://b.example") as sh:
        warm(sh, 20)
        base = Baseline(sh, "origins")
        for origin, want in [("https://evil.example", 403), ("null", 403),
                             ("https://a.example.evil.com", 403),
                             ("https://a.example", 101), ("https://b.example", 101),
                             (None, 101)]:
            c = WsClient(sh.port, headers={"Origin": origin}, timeout=5)
            assert c.status == want, "Origin %s answered %s, want %d" % (origin, c.status, want)
            if want == 101:
                c.send_text("hi")
                assert c.recv() == (OP_TEXT, b"hi")
                c.close()
                c.expect_close()
            assert c.wait_tcp_close()
            c.shutdown()
        base.check(sh)


def ping_flood(sh, n):
    """n pings as fast as possible on one connection while reading: every one
    gets its pong, in order."""
    c = ws(sh)
    data = b"".join(WsClient.frame(OP_PING, struct.pack("!I", i)) for i in range(n))
    err = []

    def send():
        try:
            for i in range(0, len(data), 65536):
                c.sock.sendall(data[i:i + 65536])
        except OSError as e:
            err.append(e)
    th = threading.Thread(target=send, daemon=True)
    th.start()
    got = 0
    while got < n:
        fin, _, op, payload = c.recv_frame()
        assert op == OP_PONG, "frame %d: opcode %d" % (got, op)
        assert payload == struct.pack("!I", got), "pong %d carries %r" % (got, payload)
        got += 1
    th.join(10)
    assert not err, err
    c.send_text("after the flood")
    assert c.recv() == (OP_TEXT, b"after the flood")
    c.close()
    c.expect_close()
    c.wait_tcp_close()
    c.shutdown()
    return got


@suite.test
def test_ping_flood_reading():
    """20,000 pings as fast as possible on a connection that reads: 20,000 pongs,
    the connection stays up, memory returns."""
    with server() as sh:
        warm(sh, 20)
        ping_flood(sh, 2000)  # warm-up
        base = Baseline(sh, "ping flood (reading)")
        t0 = time.monotonic()
        got = ping_flood(sh, 20000)
        print("     %d pongs for 20000 pings in %.2f s" % (got, time.monotonic() - t0),
              flush=True)
        base.check(sh)


@suite.test
def test_ping_flood_not_reading():
    """Pings from a client that never reads its pongs: the server closes it
    (1008 slow consumer, or a drop) instead of buffering pongs without bound."""
    with server("max_send_buffer=262144", "close_timeout_ms=1000") as sh:
        warm(sh, 20)
        base = Baseline(sh, "ping flood (not reading)")
        before = metric(sh, "slow_consumer_closes_total")
        c = ws(sh)
        c.sock.settimeout(5)
        chunk = b"".join(WsClient.frame(OP_PING, b"p" * 125) for _ in range(500))
        sent = 0
        peak = base.rss
        outcome = None
        limit = 200 * 1024 * 1024
        while sent < limit:
            try:
                c.sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                outcome = "closed"
                break
            except socket.timeout:
                outcome = "stalled"  # the server stopped reading from us
                break
            sent += len(chunk)
            if sent % (len(chunk) * 20) == 0:
                peak = max(peak, sh.rss_kb())
                if peak > base.rss + 64 * 1024:
                    outcome = "grew"
                    break
        peak = max(peak, sh.rss_kb())
        closes = metric(sh, "slow_consumer_closes_total") - before
        print("     sent %.1f MB of pings without reading: %s; server RSS %d -> peak %d kB; "
              "slow_consumer_closes_total +%d" % (sent / 1e6, outcome or "never closed",
                                                  base.rss, peak, closes), flush=True)
        if outcome == "stalled":
            # the server may stop reading while its output is full; it must still
            # close the connection then (1008 or a drop), not hold it forever
            try:
                idle(sh, base.conns, timeout=10)
                outcome = "closed"
            except AssertionError:
                pass
        c.shutdown()
        assert outcome == "closed", (
            "server did not close a client that floods pings and never reads (%s after "
            "%.1f MB; RSS %d -> %d kB)" % (outcome or "still open", sent / 1e6, base.rss, peak))
        base.check(sh)


if __name__ == "__main__":
    try:
        suite.run()
    finally:
        if _redis is not None:
            _redis.stop()
