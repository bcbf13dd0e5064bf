"""Test harness: real processes on free ports, awaited by events, never by sleeps.

    from harness import Redis, Statushost, WsClient, http_get, Suite

    with Redis() as redis, Statushost("examples/echo.lua", redis=redis) as sh:
        ws = WsClient(sh.port)
        ws.send_text("hi"); assert ws.recv() == (1, b"hi")

Statushost is started with --listen 127.0.0.1:0; the harness reads the actual
port from its "listening on HOST:PORT" log line. Every process started here is
stopped when the `with` block ends (or at interpreter exit).

Environment: SH_BIN (the statushost binary; default build/statushost), SH_ROOT
(the source tree; default two levels up from this file).
"""
import atexit
import base64
import hashlib
import json
import os
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref

ROOT = os.environ.get("SH_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SH_BIN") or os.path.join(ROOT, "build", "statushost")
REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")
_live = []


def _cleanup():
    for p in list(_live):
        try:
            p.stop()
        except Exception:
            pass


atexit.register(_cleanup)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, timeout=10.0, interval=0.01, what="condition"):
    """Poll pred() until true. Used only where no event exists to await
    (e.g. Redis state observed from outside)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


# ---------------------------------------------------------------- redis

class Redis:
    """A real redis-server on a free port, no persistence."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self.start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _live.append(self)
        wait_until(self._ping, what="redis-server on %d" % self.port)

    def _ping(self):
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def cmd(self, *args):
        """One command on a fresh connection; returns the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(_resp_encode(args))
            return _resp_read(s.makefile("rb"))

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        if self in _live:
            _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise OSError("bad RESP: %r" % line)


_shared_redis = None


def shared_redis():
    """One redis-server for a whole test file (each statushost uses its own
    channels); stopped at exit."""
    global _shared_redis
    if _shared_redis is None:
        _shared_redis = Redis()
    return _shared_redis


def publish_in_one_write(port, messages):
    """PUBLISH each (channel, payload) of messages in one write to the redis-server on
    port: Redis pushes them to a subscriber together, so statushost reads them in one go
    (one loop iteration). → the receivers of each."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(b"".join(_resp_encode(("PUBLISH",) + tuple(m)) for m in messages))
        f = sock.makefile("rb")
        return [_resp_read(f) for _ in messages]
    finally:
        sock.close()


class RedisSubscriber:
    """A real subscriber connection, for tests that watch a channel."""

    def __init__(self, port, *channels):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")
        self.sock.sendall(_resp_encode(("SUBSCRIBE",) + channels))
        for _ in channels:
            _resp_read(self.f)

    def next(self):
        return _resp_read(self.f)

    def close(self):
        self.f.close()  # the file object holds the socket open too
        self.sock.close()


# ---------------------------------------------------------------- statushost

class Statushost:
    """The real binary. Log lines are collected in self.lines; wait_log(regex)
    awaits one."""

    def __init__(self, script, redis=None, sets=(), args=(), env=None,
                 port=0, wrapper=(), cwd=None, expect_ready=True):
        self.script = script if os.path.isabs(script) else os.path.join(ROOT, script)
        if not wrapper and os.environ.get("SH_WRAPPER"):
            wrapper = os.environ["SH_WRAPPER"].split()  # e.g. valgrind (tests/run.sh --valgrind)
        cmd = list(wrapper) + [BIN, "--listen", "127.0.0.1:%d" % port]
        if redis is not None:
            cmd += ["--redis", redis if isinstance(redis, str) else redis.url]
        for s in sets:
            cmd += ["--set", s]
        cmd += list(args) + [self.script]
        self.cmd = cmd
        self.lines = []
        self._cv = threading.Condition()
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=e, cwd=cwd or ROOT)
        _live.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = None
        if expect_ready:
            m = self.wait_log(r"listening on [^ ]*:(\d+)", timeout=30)
            self.port = int(m.group(1))

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if os.environ.get("SH_VERBOSE"):
                sys.stderr.write("  | " + line + "\n")
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self.lines.append(None)  # EOF marker
            self._cv.notify_all()

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Await a log line matching pattern (searching from index start)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cv:
            while True:
                while i < len(self.lines):
                    line = self.lines[i]
                    i += 1
                    if line is None:
                        raise AssertionError("statushost exited (%s) before /%s/:\n%s" % (
                            self.proc.poll(), pattern, self.log_text()))
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no log line /%s/ within %ss:\n%s" % (
                        pattern, timeout, self.log_text()))
                self._cv.wait(left)

    def mark(self):
        """Index for wait_log(start=...) to only see lines after now."""
        with self._cv:
            return len([l for l in self.lines if l is not None])

    def log_text(self):
        with self._cv:
            return "\n".join(l for l in self.lines if l is not None)

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/" % self.port

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL, as a crash would; the exit status is then not checked."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def wait_exit(self, timeout=30):
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def metrics(self):
        status, _, body = http_get(self.port, "/metrics")
        assert status == 200, status
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, val = line.rpartition(" ")
                out[name] = float(val)
        return out

    def stop(self):
        if self.proc.poll() is None:
            _close_finished_clients(self.port)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _live:
            _live.remove(self)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *a):
        rc = self.stop()
        if a[0] is None and rc not in (0, None) and not getattr(self, "killed", False):
            raise AssertionError("statushost exited with %s:\n%s" % (rc, self.log_text()))


# ---------------------------------------------------------------- http

def http_request(port, method, path, headers=None, body=b"", timeout=10):
    """One HTTP/1.1 request on a fresh connection → (status, headers dict
    (lower-case names), body bytes)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def http_get(port, path, headers=None):
    return http_request(port, "GET", path, headers)


def raw_exchange(port, data, timeout=10):
    """Send raw bytes, read until the server closes; → bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


# ---------------------------------------------------------------- websocket

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class WsClosed(Exception):
    pass


class WsClient:
    """A minimal RFC 6455 client written for tests: it can send anything,
    including frames a browser never would."""

    def __init__(self, port, path="/", headers=None, timeout=10, connect=True):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.status = None
        self.response_headers = {}
        self.eof = False  # EOF read (and the socket closed) when the server was stopped
        _clients.add(self)
        if connect:
            self.handshake(path, headers)

    def handshake(self, path="/", headers=None):
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": "127.0.0.1:%d" % self.port, "Upgrade": "websocket",
             "Connection": "Upgrade", "Sec-WebSocket-Key": key,
             "Sec-WebSocket-Version": "13"}
        h.update(headers or {})
        req = "GET %s HTTP/1.1\r\n" % path + "".join(
            "%s: %s\r\n" % kv for kv in h.items() if kv[1] is not None) + "\r\n"
        self.sock.sendall(req.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsClosed("closed during handshake: %r" % self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for l in lines[1:]:
            k, _, v = l.partition(":")
            self.response_headers[k.strip().lower()] = v.strip()
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            assert self.response_headers.get("sec-websocket-accept") == want
        return self.status

    # -- sending
    @staticmethod
    def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
        if isinstance(payload, str):
            payload = payload.encode()
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload) if length is None else length
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + _mask(payload, key)

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, opcode, payload=b"", **kw):
        self.sock.sendall(self.frame(opcode, payload, **kw))

    def send_text(self, text):
        self.send(OP_TEXT, text)

    def send_json(self, obj):
        self.send(OP_TEXT, json.dumps(obj, ensure_ascii=False))

    def close(self, code=1000, reason=b""):
        payload = b"" if code is None else struct.pack("!H", code) + reason
        self.send(OP_CLOSE, payload)

    # -- receiving
    def _need(self, n):
        while len(self.buf) < n:
            if self.eof:
                raise WsClosed("tcp closed")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsClosed("tcp closed")
            self.buf += chunk

    def recv_frame(self):
        """→ (fin, rsv, opcode, payload). Raises WsClosed on TCP EOF."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        assert not (b1 & 0x80), "server frames must not be masked"
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload

    def recv(self):
        """Next data message or close → (opcode, payload); pongs are returned
        as (OP_PONG, payload); pings are answered automatically."""
        parts, op = [], None
        while True:
            fin, _, opcode, payload = self.recv_frame()
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode in (OP_PONG, OP_CLOSE):
                return opcode, payload
            if opcode != OP_CONT:
                op = opcode
            parts.append(payload)
            if fin:
                return op, b"".join(parts)

    def recv_text(self):
        op, payload = self.recv()
        assert op == OP_TEXT, (op, payload)
        return payload.decode()

    def recv_json(self):
        return json.loads(self.recv_text())

    def expect_close(self, reply=True):
        """Read until the close frame → (code, reason). Answers it."""
        while True:
            op, payload = self.recv()
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if reply:
                    try:
                        self.send(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                return code, payload[2:]

    def read_to_close(self):
        """Text messages until the close frame → (list of payloads, close code);
        answers the close."""
        frames = []
        while True:
            op, payload = self.recv()
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self.send(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return frames, code
            assert op == OP_TEXT, (op, payload)
            frames.append(payload)

    def wait_tcp_close(self):
        """Await the server closing the TCP connection (EOF or reset)."""
        if self.eof:
            return True
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True

    def shutdown(self):
        try:
            self.sock.close()
        except OSError:
            pass


_clients = weakref.WeakSet()


def _close_finished_clients(port):
    """Before a server on `port` is stopped: what its clients (this test's WsClients) have
    been sent is read into their buffers, and a client that reads EOF closes its socket,
    as a real client does. (Otherwise the server lingers up to 2 s at shutdown for the
    EOF of each connection it has closed.) Later reads get the buffered frames, then
    WsClosed, as before. Clients the server has not closed stay connected: a shutdown
    with live connections is what those tests test."""
    for c in list(_clients):
        if c.port != port or c.eof:
            continue
        try:
            while c.sock.fileno() >= 0 and select.select([c.sock], [], [], 0)[0]:
                chunk = c.sock.recv(65536)
                if not chunk:
                    c.eof = True
                    c.sock.close()
                    break
                c.buf += chunk
        except OSError:
            pass


def _mask(payload, key):
    if not payload:
        return b""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


# ---------------------------------------------------------------- runner

class Suite:
    """Tiny test runner: each test is a function; prints one line per test
    and a closing 'N passed, N failed' line; exits nonzero on failure."""

    def __init__(self, name):
        self.name = name
        self.tests = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def run(self):
        only = sys.argv[1:]
        passed = failed = 0
        for fn in self.tests:
            if only and fn.__name__ not in only:
                continue
            t0 = time.monotonic()
            try:
                fn()
                passed += 1
                print("ok   %s (%.2fs)" % (fn.__name__, time.monotonic() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure
                failed += 1
                import traceback
                print("FAIL %s: %s" % (fn.__name__, e), flush=True)
                traceback.print_exc()
        print("%s: %d passed, %d failed" % (self.name, passed, failed), flush=True)
        sys.exit(1 if failed else 0)
