#!/usr/bin/env python3
"""Regression tests for the attack on the operations features (issue 11): the
log output, the config file, sd_notify, the admin reserve, user metrics, bare
script names, TLS reloads. Each docstring says how the test failed before its
fix ("fails before: ...").

    python3 tests/integration/test_ops_hardening.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 python3 tests/integration/test_ops_hardening.py

The real binary, a real redis-server, real sockets and pipes.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, OP_BIN, ROOT, Statushost, Suite, WsClient, free_port,  # noqa: E402
                     http_request, shared_redis, wait_until)

S = Suite("ops_hardening")
SANITIZED = bool(os.environ.get("SH_SANITIZED") or os.environ.get("SH_WRAPPER"))
ECHO = os.path.join(ROOT, "examples", "echo.lua")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


class PipedHost:
    """statushost whose stdout and stderr go to a pipe this test reads only
    when it wants to (a log reader that can stop reading)."""

    def __init__(self, script, sets=(), args=(), socket_pair=False):
        self.port = free_port()
        if socket_pair:  # as systemd's journal gives it: a stream socket
            import socket
            a, b = socket.socketpair()
            rd, wr = a.detach(), b.detach()
        else:
            rd, wr = os.pipe()
        cmd = [BIN, "--listen", "127.0.0.1:%d" % self.port, "--redis", shared_redis().url]
        for s in sets:
            cmd += ["--set", s]
        self.proc = subprocess.Popen(cmd + list(args) + [os.path.join(ROOT, script)],
                                     stdin=subprocess.DEVNULL, stdout=wr, stderr=wr)
        os.close(wr)
        self.rd = rd
        self.data = b""
        self.read_until(b"listening on")

    def read_until(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        import select
        while needle not in self.data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rd], [], [], left)[0]:
                raise AssertionError("no %r in the log within %ss:\n%s" % (
                    needle, timeout, self.data[-2000:].decode("utf-8", "replace")))
            chunk = os.read(self.rd, 65536)
            if not chunk:
                raise AssertionError("log EOF before %r (exit %s):\n%s" % (
                    needle, self.proc.poll(), self.data[-2000:].decode("utf-8", "replace")))
            self.data += chunk

    def read_to_eof(self):
        while True:
            chunk = os.read(self.rd, 65536)
            if not chunk:
                return
            self.data += chunk

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.rd)


@S.test
def a_log_reader_that_stops_reading_does_not_stall_the_loop():
    """stderr is a pipe whose reader stops reading: the server keeps answering
    (lines that do not fit are dropped and counted), and once the reader reads
    again a warning says how many were lost; SIGTERM still exits 0 with the
    "stopped" line, every line whole.
    The same with a stream socket as stderr (systemd's journal).
    fails before: yes (the loop blocked in write(2) once the pipe was full:
    /healthz timed out after ~380 requests; ~280 with a socket)."""
    for socket_pair in (False, True):
        reader_stops_reading(socket_pair)


def reader_stops_reading(socket_pair):
    h = PipedHost("examples/echo.lua", socket_pair=socket_pair)
    try:
        t0 = time.monotonic()
        for i in range(1500):  # ~500 KB of access lines into a 64 KB pipe nobody reads
            try:
                status, _, _ = http_request(h.port, "GET", "/healthz?" + "x" * 300, timeout=5)
            except OSError as e:
                raise AssertionError("request %d got no answer (%r) after %.1fs: the loop "
                                     "waits for the log reader" % (i, e, time.monotonic() - t0))
            assert status == 200, status
        reader = threading.Thread(target=h.read_to_eof, daemon=True)
        reader.start()  # the reader is back
        while b"log lines dropped" not in h.data:  # the next iteration reports the loss
            http_request(h.port, "GET", "/healthz", timeout=5)
            reader.join(0.05)
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(20) == 0
        reader.join(10)
        text = h.data.decode("utf-8", "replace")
        m = re.search(r"log lines dropped: the log output was not read lines=(\d+)", text)
        assert m and int(m.group(1)) > 0, text[-2000:]
        lines = text.splitlines()
        assert "stopped" in lines[-1], lines[-3:]
        bad = [l for l in lines if not TS.match(l)]
        assert not bad, "lines cut or mixed: %r" % bad[:3]
    finally:
        h.close()


def run_bin(*args, timeout=10, limit_as=None):
    """→ (exit status, stderr). A process still running after timeout is
    killed and reported."""
    def lim():
        if limit_as:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    try:
        p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, cwd=ROOT, preexec_fn=lim)
    except subprocess.TimeoutExpired:
        raise AssertionError("statushost %s did not exit within %ss" % (" ".join(args), timeout))
    return p.returncode, p.stderr.decode("utf-8", "replace")


@S.test
def config_file_not_regular_or_with_nul_bytes_is_refused_and_reload_never_blocks():
    """--config names a FIFO, a device, a directory, or a file with a NUL byte:
    one line, exit 2. A running server whose config file is replaced by a FIFO
    refuses the reload (SIGHUP) and keeps answering.
    fails before: yes (a FIFO blocked --check forever, and a reload blocked the
    loop forever; a NUL byte silently cut the value; /dev/zero ate all memory,
    then was taken as an empty file, exit 0)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="sh-cfg-")
    fifo = os.path.join(d, "fifo.conf")
    os.mkfifo(fifo)
    rc, err = run_bin("--check", "--config", fifo, ECHO, timeout=10)
    assert rc == 2 and "not a regular file" in err and err.count("\n") == 1, (rc, err)
    rc, err = run_bin("--check", "--config", d, ECHO)
    assert rc == 2 and "not a regular file" in err, (rc, err)
    nul = os.path.join(d, "nul.conf")
    with open(nul, "wb") as f:
        f.write(b"# x\nlog_level=info\0debug\n")
    rc, err = run_bin("--check", "--config", nul, ECHO)
    assert rc == 2 and "nul.conf:2: a NUL byte" in err, (rc, err)
    big = os.path.join(d, "big.conf")
    with open(big, "wb") as f:
        f.write(b"#" * (2 << 20) + b"\n")
    rc, err = run_bin("--check", "--config", big, ECHO)
    assert rc == 2 and "larger than 1 MiB" in err, (rc, err)
    if not SANITIZED:  # a sanitizer's shadow memory does not fit under RLIMIT_AS
        rc, err = run_bin("--check", "--config", "/dev/zero", ECHO, limit_as=1 << 30)
        assert rc == 2 and "not a regular file" in err, (rc, err)
    conf = os.path.join(d, "statushost.conf")
    with open(conf, "w") as f:
        f.write("log_level=info\n")
    with Statushost("examples/echo.lua", redis=shared_redis(), args=["--config", conf]) as sh:
        sh.wait_log(r"redis up")
        os.replace(fifo, conf)
        mark = sh.mark()
        sh.signal(signal.SIGHUP)
        sh.wait_log(r"reload failed.*statushost\.conf: not a regular file", start=mark)
        status, _, _ = http_request(sh.port, "GET", "/healthz", timeout=5)
        assert status == 200, status
    os.unlink(conf)
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)


# Prometheus text format 0.0.4: a sample line; label values escape only \\ \" \n
PROM_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                         r'(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
                         r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})?'
                         r' \S+$')


def exposition_errors(body):
    """The lines of a /metrics body that a Prometheus scrape rejects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return ["not UTF-8: %s" % e]
    bad = []
    for line in text.split("\n"):
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = PROM_SAMPLE.match(line)
        if not m:
            bad.append(line)
            continue
        names = re.findall(r'[{,]([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(1) or "")
        if len(names) != len(set(names)):
            bad.append(line)
    return bad


@S.test
def metric_labels_from_a_client_keep_the_exposition_valid():
    """A policy labels a counter and a histogram with the client's message: a
    NUL byte or invalid UTF-8 (binary frame) must not break /metrics (one bad
    line fails the whole scrape); quotes, backslashes and newlines are escaped.
    A label name given twice is refused when the metric is defined.
    fails before: yes (a NUL cut the label value: text="a} 1; \\xff went out
    raw; {"a", "a"} rendered a="x",a="x")."""
    with Statushost("tests/integration/policies/ops_label_metric.lua",
                    redis=shared_redis()) as sh:
        c = WsClient(sh.port)
        for t in ["a\x00b", 'q"\\\nz', "\u00e9\U0001f600"]:
            c.send_text(t)
            assert c.recv() == (1, b"ok")
        for b in [b"\xff\xfe", b"\xe2\x82", b"x\xed\xa0\x80y", b"\xf0\x9f\x98"]:
            c.send(OP_BIN, b)
            assert c.recv() == (1, b"ok")
        status, _, body = http_request(sh.port, "GET", "/metrics")
        assert status == 200
        bad = exposition_errors(body)
        assert not bad, "invalid exposition lines: %r" % bad[:5]
        text = body.decode()
        assert 'statushost_ops_msgs{text="a\ufffdb"} 1' in text, text[-1500:]
        assert 'statushost_ops_msgs{text="q\\"\\\\\\nz"} 1' in text
        assert 'statushost_ops_msgs{text="\u00e9\U0001f600"} 1' in text
        assert 'statushost_ops_msgs{text="\ufffd\ufffd"} 2' in text  # \xff\xfe, \xe2\x82
        c.close()
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('local host = require("statushost")\n'
                'host.metrics.define("dup", "counter", "x", {"a", "a"})\nreturn {}\n')
    try:
        rc, err = run_bin("--check", f.name)
        assert rc == 2 and "a label name appears twice" in err, (rc, err)
    finally:
        os.unlink(f.name)


def http_on(sock, path):
    """One keep-alive GET on sock → (status line, head lower-cased, body)."""
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        d = sock.recv(65536)
        if not d:
            raise AssertionError("closed before an answer to %s: %r" % (path, data))
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], head.lower(), body


def wait_eof(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@S.test
def admin_reserve_sockets_answer_once_and_cannot_be_held():
    """At max_connections, 16 clients each take a reserve socket with a
    keep-alive /healthz: each is answered with Connection: close and closed,
    so monitoring still gets in (the 17th is answered 200); other paths on a
    reserve socket get 503; a reserve socket that sends nothing is dropped at
    handshake_timeout_ms.
    fails before: yes (the 16 keep-alive answers held the whole reserve for
    keepalive_timeout_ms, renewable forever: the 17th /healthz got 503)."""
    import socket
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["max_connections=1", "handshake_timeout_ms=500"]) as sh:
        sh.wait_log(r"redis up")
        held = WsClient(sh.port)  # the one regular slot
        socks = [socket.create_connection(("127.0.0.1", sh.port), timeout=5) for _ in range(16)]
        try:
            for s in socks:
                line, head, _ = http_on(s, "/healthz")
                assert line == b"HTTP/1.1 200 OK", line
                assert b"\r\nconnection: close" in head, head
            for s in socks:
                assert wait_eof(s)
            s = socket.create_connection(("127.0.0.1", sh.port), timeout=5)
            socks.append(s)
            line, _, body = http_on(s, "/metrics")
            assert line == b"HTTP/1.1 200 OK", line
            s = socket.create_connection(("127.0.0.1", sh.port), timeout=5)
            socks.append(s)
            line, _, _ = http_on(s, "/")
            assert line.startswith(b"HTTP/1.1 503"), line
            s = socket.create_connection(("127.0.0.1", sh.port), timeout=5)
            socks.append(s)
            t0 = time.monotonic()
            assert wait_eof(s) and time.monotonic() - t0 < 3
            echo = held.send_text("still") or held.recv()
            assert echo == (1, b"still"), echo
        finally:
            for s in socks:
                s.close()
            held.shutdown()


@S.test
def bare_policy_name_is_found_past_a_directory_of_that_name():
    """`statushost default` run where a directory named "default" exists (say
    /etc/statushost/default/ as the working directory's child) finds the shipped
    scripts/default.lua; a name with '/', '..' or '%' is not looked up.
    fails before: yes ("cannot read default: Is a directory": only a missing
    name was looked up)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="sh-bare-")
    try:
        os.mkdir(os.path.join(d, "default"))
        p = subprocess.run([BIN, "--check", "default"], cwd=d, capture_output=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        out = p.stdout.decode()
        assert p.returncode == 0, p.stderr.decode()
        assert re.search(r"scripts/default\.lua: ok", out), out[:300]
        for name in ["../default", "%s%n", "..", "default/"]:
            p = subprocess.run([BIN, "--check", name], cwd=d, capture_output=True, timeout=20,
                               stdin=subprocess.DEVNULL)
            err = p.stderr.decode()
            assert p.returncode == 2 and err.count("\n") == 1, (name, p.returncode, err)
    finally:
        os.rmdir(os.path.join(d, "default"))
        os.rmdir(d)


@S.test
def reload_refuses_a_script_or_ca_file_that_is_not_a_regular_file():
    """SIGHUP after the policy script was replaced by a FIFO, or with
    http_ca_file naming a FIFO or /dev/zero: the reload fails with one line
    and the server keeps answering; --check says the same.
    fails before: yes, the script part (opening the FIFO blocked the loop:
    loop_stall_ms aborted the process). The http_ca_file part held already
    (config.c checks for a regular file)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="sh-reload-")
    try:
        script = os.path.join(d, "echo.lua")
        shutil.copy(ECHO, script)
        conf = os.path.join(d, "statushost.conf")
        with open(conf, "w") as f:
            f.write("log_level=info\n")
        fifo = os.path.join(d, "fifo")
        os.mkfifo(fifo)
        rc, err = run_bin("--check", "--set", "http_ca_file=" + fifo, ECHO)
        assert rc == 2 and "not a regular file" in err, (rc, err)
        with Statushost(script, redis=shared_redis(), args=["--config", conf]) as sh:
            sh.wait_log(r"redis up")
            for ca in [fifo, "/dev/zero"]:
                with open(conf, "w") as f:
                    f.write("http_ca_file=%s\n" % ca)
                mark = sh.mark()
                sh.signal(signal.SIGHUP)
                sh.wait_log(r"reload failed.*%s.*not a regular file" % re.escape(ca), start=mark)
                assert http_request(sh.port, "GET", "/healthz", timeout=5)[0] == 200
            with open(conf, "w") as f:
                f.write("log_level=info\n")
            os.rename(script, script + ".bak")
            os.mkfifo(script)
            mark = sh.mark()
            sh.signal(signal.SIGHUP)
            sh.wait_log(r"reload failed.*echo\.lua: not a regular file", start=mark)
            assert http_request(sh.port, "GET", "/healthz", timeout=5)[0] == 200
            os.unlink(script)
            os.rename(script + ".bak", script)
            mark = sh.mark()
            sh.signal(signal.SIGHUP)
            sh.wait_log(r"reloaded .*echo\.lua", start=mark)
    finally:
        shutil.rmtree(d)


@S.test
def access_lines_name_method_and_path_as_valid_json():
    """log_format=json: the access line of a WebSocket and of an HTTP request
    carry method and path (the README lists them), a hostile path (a quote, an
    ESC, invalid UTF-8, 2,000 bytes) is escaped and cut, the query (it may hold
    a token) is not logged, and every line parses.
    fails before: yes (method and path were never filled in)."""
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["log_format=json"]) as sh:
        mark = sh.mark()
        c = WsClient(sh.port, path="/a%22b%1bc%ff?token=SECRET")
        c.close(1000, b"bye")
        c.expect_close()
        m = sh.wait_log(r'"msg":"access".*"kind":"websocket"', start=mark)
        a = json.loads(m.string)
        assert a["method"] == "GET" and a["path"] == '/a"b\x1bc\ufffd', a
        assert a["close_reason"] == "bye"
        mark = sh.mark()
        http_request(sh.port, "GET", "/healthz?x=1")
        a = json.loads(sh.wait_log(r'"msg":"access".*"kind":"http"', start=mark).string)
        assert a["method"] == "GET" and a["path"] == "/healthz" and a["status"] == 200, a
        mark = sh.mark()
        http_request(sh.port, "GET", "/" + "p" * 2000)
        a = json.loads(sh.wait_log(r'"msg":"access".*"kind":"http"', start=mark).string)
        assert a["path"] == "/" + "p" * 511, len(a["path"])
        c.shutdown()
        text = sh.log_text()
        assert "SECRET" not in text
        for line in text.splitlines():
            if line.startswith("{"):
                json.loads(line)


@S.test
def a_last_answer_not_read_does_not_hold_the_socket():
    """/metrics is large (a policy's histogram with 300 long label values) and
    17 clients ask for it without reading: 16 on the admin reserve (answered
    with Connection: close) and one sending Connection: close itself. Each is
    closed after keepalive_timeout_ms, so the reserve serves monitoring again.
    fails before: yes (no timer ran once the last answer was queued: the 17
    sockets and 17 copies of the 4 MB answer were held for ever, and the
    reserve answered nothing more)."""
    import socket
    with Statushost("tests/integration/policies/ops_label_metric.lua", redis=shared_redis(),
                    sets=["max_connections=2", "keepalive_timeout_ms=1000"]) as sh:
        sh.wait_log(r"redis up")
        c = WsClient(sh.port)
        for i in range(300):
            c.send_text("%04d" % i + "x" * 900)
            assert c.recv() == (1, b"ok")
        base = sh.fd_count()
        slow = []
        for i in range(17):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", sh.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
                b"Connection: close\r\n" if i == 0 else b""))
            slow.append(s)
        try:
            wait_until(lambda: sh.fd_count() == base + 17, timeout=10,
                       what="the 17 slow readers accepted")
            t0 = time.monotonic()
            wait_until(lambda: sh.fd_count() == base, timeout=15, interval=0.1,
                       what="the server closing the 17 sockets whose answer is not read")
            assert time.monotonic() - t0 < 10
            s = socket.create_connection(("127.0.0.1", sh.port), timeout=5)
            slow.append(s)
            line, _, _ = http_on(s, "/healthz")
            assert line == b"HTTP/1.1 200 OK", line
        finally:
            for s in slow:
                s.close()
            c.shutdown()


if __name__ == "__main__":
    S.run()
