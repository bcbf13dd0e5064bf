"""Operations: systemd notification (READY / RELOADING / STOPPING / WATCHDOG)
without systemd, the --config file, JSON logs, the access log, logs flushed
at exit, the process gauges on /metrics.

    python3 tests/integration/test_ops.py [test_name ...]

The notify tests bind an AF_UNIX datagram socket and hand its path to
statushost as $NOTIFY_SOCKET, as systemd does for Type=notify.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ROOT, Statushost, Suite, WsClient, free_port, http_get,  # noqa: E402
                     shared_redis, wait_until)

suite = Suite("ops")
ECHO = os.path.join(ROOT, "examples", "echo.lua")


class NotifySocket:
    """The systemd side of sd_notify(3): a datagram socket; each message is a
    set of KEY=VALUE lines."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sh-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen = []

    def next(self, timeout=10):
        """The next message → dict of its KEY=VALUE lines."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError("no notify message within %ss (seen: %r)" % (timeout, self.seen))
        msg = dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l)
        self.seen.append(msg)
        return msg

    def expect(self, key, timeout=10, skip=("WATCHDOG", "STATUS")):
        """Await a message with key=1; messages carrying only keys in skip
        are passed over, anything else first is an error."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            if msg.get(key) == "1":
                return msg
            assert set(msg) <= set(skip), "want %s=1, got %r (seen %r)" % (key, msg, self.seen)

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------ sd_notify
# These need the server.c wiring (READY in start_listening, RELOADING/READY
# around sh_server_reload, STOPPING in sh_server_shutdown).

@suite.test
def notify_ready_reload_stopping_in_order():
    n = NotifySocket()
    try:
        sh = Statushost("examples/echo.lua", redis=shared_redis(),
                        env={"NOTIFY_SOCKET": n.path})
        ready = n.expect("READY")
        assert "MAINPID" not in ready or ready["MAINPID"] == str(sh.proc.pid), ready
        # READY comes once the listener accepts: a connection works now
        assert http_get(sh.port, "/healthz")[0] == 200
        mark = sh.mark()
        sh.signal(signal.SIGHUP)
        reloading = n.expect("RELOADING")
        usec = int(reloading.get("MONOTONIC_USEC", "0"))
        assert usec > 0, "RELOADING=1 without MONOTONIC_USEC: %r" % reloading
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 60, reloading
        n.expect("READY")
        sh.wait_log(r"reloaded", start=mark)
        sh.signal(signal.SIGTERM)
        n.expect("STOPPING")
        assert sh.wait_exit() == 0
        sh.stop()
    finally:
        n.close()


@suite.test
def notify_failed_reload_is_ready_again():
    n = NotifySocket()
    tmp = tempfile.mkdtemp(prefix="sh-ops-")
    script = os.path.join(tmp, "policy.lua")
    write(script, open(ECHO).read())
    try:
        with Statushost(script, redis=shared_redis(), env={"NOTIFY_SOCKET": n.path}) as sh:
            n.expect("READY")
            write(script, "this is not lua")
            mark = sh.mark()
            sh.signal(signal.SIGHUP)
            n.expect("RELOADING")
            n.expect("READY")
            sh.wait_log(r"reload failed, keeping generation", start=mark)
            ws = WsClient(sh.port)  # the old policy still serves
            ws.send_text("still here")
            assert ws.recv_text() == "still here"
            ws.close()
    finally:
        n.close()


@suite.test
def watchdog_pings_at_half_the_interval():
    """WATCHDOG_USEC=400 ms → WATCHDOG=1 about every 200 ms, from the loop."""
    n = NotifySocket()
    try:
        with Statushost("examples/echo.lua", redis=shared_redis(),
                        env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000"}) as sh:
            sh.wait_log(r"watchdog: pinging every 200ms")
            t = []
            while len(t) < 5:
                msg = n.next(timeout=5)
                if msg.get("WATCHDOG") == "1":
                    t.append(time.monotonic())
            gaps = [b - a for a, b in zip(t, t[1:])]
            assert all(0.1 < g < 0.35 for g in gaps), gaps
    finally:
        n.close()


@suite.test
def watchdog_for_another_pid_is_ignored():
    n = NotifySocket()
    try:
        with Statushost("examples/echo.lua", redis=shared_redis(),
                        env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "200000",
                             "WATCHDOG_PID": "1"}) as sh:
            assert not re.search(r"watchdog", sh.log_text()), sh.log_text()
            n.sock.settimeout(0.5)
            got = []
            try:
                while True:
                    got.append(n.sock.recv(4096))
            except socket.timeout:
                pass
            assert not any(b"WATCHDOG=1" in g for g in got), got
    finally:
        n.close()


# ------------------------------------------------------------ --config FILE

def run(*args, timeout=10):
    p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout, cwd=ROOT)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def check_config(*args):
    rc, out, err = run("--check", *args)
    assert rc == 0, (rc, err)
    cfg = {}
    for line in out.splitlines():
        if line.startswith("  ") and " = " in line:
            k, _, v = line.strip().partition(" = ")
            cfg[k] = v
    return cfg


@suite.test
def config_file_sets_keys_and_the_command_line_wins():
    tmp = tempfile.mkdtemp(prefix="sh-ops-")
    conf = os.path.join(tmp, "statushost.conf")
    write(conf, "# a comment\n\n   # indented comment\nmax_connections = 77\n"
                "listen=127.0.0.1:7001\r\nallowed_origins = \"https://a.example, https://b.example\"\n"
                "log_format=json\nreuseport = on\nredis = redis://127.0.0.1:6390\n")
    cfg = check_config("--config", conf, ECHO)
    assert cfg["max_connections"] == "77", cfg
    assert cfg["listen"] == "127.0.0.1:7001", cfg
    assert cfg["allowed_origins"] == "[https://a.example,https://b.example]", cfg
    assert cfg["log_format"] == "json" and cfg["reuseport"] == "true", cfg
    cfg = check_config("--set", "max_connections=5", "--listen", "127.0.0.1:7002",
                       "--config", conf, "--redis", "redis://127.0.0.1:6391", ECHO)
    assert cfg["max_connections"] == "5", cfg
    assert cfg["listen"] == "127.0.0.1:7002", cfg
    assert cfg["redis"] == "redis://127.0.0.1:6391", cfg
    assert cfg["log_format"] == "json", cfg
    # the script's own keys can be set too
    cfg = check_config("--config", conf, os.path.join(ROOT, "scripts", "default.lua"))
    assert cfg["max_connections"] == "77", cfg


def expect_one_line_error(args, *words):
    rc, out, err = run(*args)
    assert rc == 2, (args, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == "", out


@suite.test
def config_file_errors_are_one_line_exit_2():
    tmp = tempfile.mkdtemp(prefix="sh-ops-")
    conf = os.path.join(tmp, "bad.conf")
    missing = os.path.join(tmp, "missing.conf")
    safe = ["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:%d" % free_port()]
    for mode in (["--check"], safe):
        expect_one_line_error(mode + ["--config", missing, ECHO], "missing.conf")
        write(conf, "# ok\nmax_connections 5\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "bad.conf:2", "KEY=VALUE")
        write(conf, "\nno_such_key = 1\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "bad.conf:2", "no_such_key")
        write(conf, "max_connections=lots\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "bad.conf:1", "max_connections")
        write(conf, "max_head_bytes = 10\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "max_head_bytes", "bad.conf:1")
        write(conf, "log_format = xml\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "log_format", "bad.conf:1")
        write(conf, "bad key = 1\n")
        expect_one_line_error(mode + ["--config", conf, ECHO], "bad.conf:1", "bad key")
    expect_one_line_error(["--check", ECHO, "--config"], "--config")
    write(conf, "")
    expect_one_line_error(["--check", "--config", conf, "--config", conf, ECHO], "--config")


@suite.test
def config_file_is_read_again_on_sighup():
    """Needs the server.c wiring (sh_options_refresh in sh_server_reload,
    metrics.max_connections set)."""
    tmp = tempfile.mkdtemp(prefix="sh-ops-")
    conf = os.path.join(tmp, "statushost.conf")
    write(conf, "max_connections = 50\n")
    with Statushost("examples/echo.lua", redis=shared_redis(), args=["--config", conf]) as sh:
        assert sh.metrics()["statushost_max_connections"] == 50
        write(conf, "max_connections = 60\nlog_format = json\n")
        mark = sh.mark()
        sh.signal(signal.SIGHUP)
        m = sh.wait_log(r"reloaded", start=mark)
        # the line saying so is already in the new format
        line = json.loads(m.string)
        assert line["msg"].startswith("reloaded"), line
        assert sh.metrics()["statushost_max_connections"] == 60
        write(conf, "max_connections = = =\n")
        mark = sh.mark()
        sh.signal(signal.SIGHUP)
        sh.wait_log(r"reload failed, keeping generation .*statushost.conf:1", start=mark)
        assert sh.metrics()["statushost_max_connections"] == 60


# ------------------------------------------------------------ logs

@suite.test
def json_log_every_line_is_an_object():
    """Needs the server.c wiring (sh_log_configure where the generation loads)
    for the first line; every other line is JSON without it."""
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["log_format=json", "log_level=debug"]) as sh:
        ws = WsClient(sh.port)
        ws.send_text("hi")
        assert ws.recv_text() == "hi"
        ws.close(1000)
        ws.expect_close()
        ws.wait_tcp_close()
        http_get(sh.port, "/healthz")
    lines = [l for l in sh.lines if l is not None]
    assert len(lines) >= 4, lines
    conns = set()
    for l in lines:
        obj = json.loads(l)
        assert list(obj)[:4] == ["ts", "level", "conn", "msg"], obj
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"]), obj
        assert obj["level"] in ("debug", "info", "warn", "error"), obj
        if obj["conn"] is not None:
            conns.add(obj["conn"])
    assert conns, "no line carries a connection id:\n%s" % "\n".join(lines)
    assert json.loads(lines[-1])["msg"] == "stopped", lines[-1]


@suite.test
def log_is_flushed_on_sigterm():
    """Lines buffered in the last loop iterations reach stderr before exit."""
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["log_level=debug"]) as sh:
        for _ in range(20):
            ws = WsClient(sh.port)
            ws.shutdown()
        sh.signal(signal.SIGTERM)
        assert sh.wait_exit() == 0
    assert sh.lines[-1] is None
    assert sh.lines[-2].endswith("stopped"), sh.lines[-5:]


def access_lines(sh):
    out = []
    for l in sh.lines:
        if l is None:
            continue
        obj = json.loads(l)
        if obj["msg"] == "access":
            out.append(obj)
    return out


@suite.test
def access_log_one_line_per_connection():
    """Needs the conn.c wiring (sh_log_access from the close path)."""
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["log_format=json"]) as sh:
        ws = WsClient(sh.port, path="/chat?x=1")
        ws.send_text("hello")
        assert ws.recv_text() == "hello"
        ws.send_text("again")
        assert ws.recv_text() == "again"
        ws.close(1000, b"bye")
        ws.expect_close()
        ws.wait_tcp_close()
        status, _, _ = http_get(sh.port, "/healthz")
        assert status == 200
        wait_until(lambda: len(access_lines(sh)) >= 2, what="two access lines")
    acc = access_lines(sh)
    assert len(acc) == 2, acc
    w = [a for a in acc if a["kind"] == "websocket"][0]
    h = [a for a in acc if a["kind"] == "http"][0]
    assert re.match(r"^[0-9a-f]{24}$", w["conn"]), w
    assert w["peer"].startswith("127.0.0.1:"), w
    assert w["messages_in"] == 2 and w["messages_out"] == 2, w
    assert w["close_code"] == 1000, w
    assert w["bytes_in"] > 150 and w["bytes_out"] > 140, w  # the upgrade and the frames
    assert 0 <= w["duration_ms"] < 10000, w
    assert w.get("status") in (None, 101), w
    assert h["status"] == 200 and h["requests"] == 1, h
    assert h["bytes_in"] > 0 and h["bytes_out"] > 0, h
    assert "messages_in" not in h and "close_code" not in h, h


@suite.test
def access_log_off():
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["log_format=json", "access_log=off"]) as sh:
        http_get(sh.port, "/healthz")
        ws = WsClient(sh.port)
        ws.close(1000)
        ws.expect_close()
        ws.wait_tcp_close()
    # the server has stopped: every connection's close path has run
    assert access_lines(sh) == [], access_lines(sh)


# ------------------------------------------------------------ /metrics

@suite.test
def process_gauges_on_metrics():
    with Statushost("examples/echo.lua", redis=shared_redis(),
                    sets=["max_connections=1234"]) as sh:
        m = sh.metrics()
        rss = m["process_resident_memory_bytes"]
        assert 1e6 < rss < 1e9, rss
        fds = m["process_open_fds"]
        assert abs(fds - sh.fd_count()) <= 2, (fds, sh.fd_count())
        assert m["process_max_fds"] >= fds, m
        # needs the server.c wiring: metrics.max_connections from the generation
        assert m["statushost_max_connections"] == 1234, m["statushost_max_connections"]


if __name__ == "__main__":
    suite.run()
