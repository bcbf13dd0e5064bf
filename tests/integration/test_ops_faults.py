#!/usr/bin/env python3
"""test_ops_faults.py — the operations surfaces under faults, from an attack on them:
the systemd notify socket nobody reads, the master's log reader going away, a chain of
tasks that would hold the loop (and the kit), NaN and infinite metric samples, a close
reason that is not UTF-8. Each docstring says how the test failed on the code before
("fails on old: ...").

    python3 tests/integration/test_ops_faults.py [test_name ...]
"""
import json
import re
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("SH_TESTS_DIR"):  # run from outside the tree
    sys.path.insert(0, os.environ["SH_TESTS_DIR"])
from harness import (BIN, ROOT, Statushost, Suite, WsClient, free_port,  # noqa: E402
                     http_request, shared_redis, wait_until)

S = Suite("ops_faults")
SANITIZED = bool(os.environ.get("SH_SANITIZED") or os.environ.get("SH_WRAPPER"))
ECHO = "examples/echo.lua"
HERE = os.path.dirname(os.path.abspath(__file__))
POL = os.path.join(HERE, "policies")


def policy(name):
    return os.path.join(POL, name)


def stuck_notify_socket():
    """A datagram socket bound where $NOTIFY_SOCKET will point, never read: its queue
    (net.unix.max_dgram_qlen, 10 by default, 512 under systemd) fills up, as systemd's
    does while PID 1 is busy."""
    d = tempfile.mkdtemp(prefix="sh-notify-stuck-")
    path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    with open("/proc/sys/net/unix/max_dgram_qlen") as f:
        qlen = int(f.read())
    return s, path, qlen


def healthz_within(port, seconds):
    t0 = time.monotonic()
    status = http_request(port, "GET", "/healthz", timeout=seconds)[0]
    return status, time.monotonic() - t0


@S.test
def a_notify_socket_nobody_reads_does_not_stall_or_kill_the_server():
    """$NOTIFY_SOCKET names a datagram socket whose reader stopped reading; WATCHDOG_USEC
    = 20 ms (a WATCHDOG=1 every 10 ms) and loop_stall_ms = 2000. The notifications that
    do not fit are dropped (or sent later); the loop never waits for the reader: /healthz
    answers within 1 s for 3 s, and the process lives.
    fails on old: yes (sd_notify's sendmsg blocks the loop once the socket's queue
    is full; the loop watchdog aborts the process: "the event loop has been stuck for
    3001ms (loop_stall_ms) in C code (no Lua hook running): aborting", exit -6)."""
    s, path, qlen = stuck_notify_socket()
    with Statushost(ECHO, redis=shared_redis(), sets=["loop_stall_ms=2000"],
                    env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}) as sh:
        deadline = time.monotonic() + max(3.0, qlen * 0.01 + 2.5)
        while time.monotonic() < deadline:
            assert sh.proc.poll() is None, "statushost died (%s):\n%s" % (
                sh.proc.poll(), sh.log_text()[-2000:])
            try:
                status, took = healthz_within(sh.port, 1.0)
            except OSError as e:
                raise AssertionError("/healthz unanswered within 1 s: %r" % e)
            assert status == 200 and took < 1.0, (status, took)
            time.sleep(0.2)
    s.close()


@S.test
def reloads_with_a_notify_socket_nobody_reads_do_not_hang():
    """$NOTIFY_SOCKET names a socket nobody reads, no watchdog, loop_stall_ms = 0 (off):
    each SIGHUP sends RELOADING=1 and READY=1; once the queue is full, reloads go on
    and /healthz answers.
    fails on old: yes (after max_dgram_qlen/2 reloads the loop blocks in sd_notify
    for ever: /healthz times out, later SIGHUPs are never handled)."""
    s, path, qlen = stuck_notify_socket()
    with Statushost(ECHO, redis=shared_redis(), sets=["loop_stall_ms=0"],
                    env={"NOTIFY_SOCKET": path}) as sh:
        n = qlen // 2 + 3
        for i in range(n):
            sh.signal(signal.SIGHUP)
            try:
                sh.wait_log(r"generation %d serves new connections" % (i + 2), timeout=5)
            except AssertionError:
                raise AssertionError("reload %d of %d was never done (queue %d)" % (i + 1, n, qlen))
        status, took = healthz_within(sh.port, 2.0)
        assert status == 200, status
    s.close()


def start_piped(args, n_listening):
    """statushost with stdout and stderr on a pipe this test holds; → (proc, read fd,
    the bytes read until n_listening "listening on" lines)."""
    rd, wr = os.pipe()
    p = subprocess.Popen([BIN] + args, stdin=subprocess.DEVNULL, stdout=wr, stderr=wr,
                         start_new_session=True)
    os.close(wr)
    data = b""
    deadline = time.monotonic() + 30
    while data.count(b"listening on") < n_listening:
        assert time.monotonic() < deadline and p.poll() is None, data.decode("utf-8", "replace")
        if select.select([rd], [], [], 1)[0]:
            data += os.read(rd, 65536)
    return p, rd, data


@S.test
def the_master_outlives_a_log_reader_that_went_away():
    """--workers 2 with stderr on a pipe; the reader closes its end (a `| tee` stopped, a
    log shipper restarted); then SIGHUP, which the master logs ("master: SIGHUP:
    reloading 2 worker(s)"). The master lives (its lines are dropped, as a single
    process drops them) and the workers keep serving; SIGTERM still stops it all.
    fails on old: yes (the master does not ignore SIGPIPE, which only the worker
    path sets: it dies of signal 13 at its next log line, its workers get SIGTERM
    (PR_SET_PDEATHSIG) and the port is closed)."""
    port = free_port()
    p, rd, _ = start_piped(["--workers", "2", "--listen", "127.0.0.1:%d" % port,
                            "--redis", shared_redis().url, os.path.join(ROOT, ECHO)], 2)
    try:
        assert http_request(port, "GET", "/healthz")[0] == 200
        os.close(rd)
        p.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert p.poll() is None, "the master died: %s" % p.poll()
        assert http_request(port, "GET", "/healthz", timeout=5)[0] == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

def kit(path, timeout, prlimit_as=None):
    """statushost --test path → (exit status or None when killed at timeout, stdout,
    peak RSS of the run in KB)."""
    cmd = [BIN, "--test", path]
    if prlimit_as:
        cmd = ["prlimit", "--as=%d" % prlimit_as, "--"] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = None
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rc, out.decode("utf-8", "replace"), (peak if peak > before else 0)


@S.test
def log_lines_keep_what_follows_a_nul_byte():
    """A policy logs a client's message and then the peer: host.log.info("client said:",
    text, "peer=" .. conn.peer). A text message "before\\0after" (a NUL is valid UTF-8):
    the line holds "after" and the peer, in text and in JSON (the NUL reads as a space).
    The close reason "bye\\0hidden" reaches the access line whole (its NUL a space).
    fails on old: yes (log_at joins the arguments with their NULs and hands the
    line to sh_log_kv as a C string: everything after the NUL is lost, the peer too, so
    a client hides the rest of any line that logs it; the close reason is kept as a C
    string: "bye")."""
    for fmt in ("text", "json"):
        with Statushost(policy("ops_log_msg.lua"), redis=shared_redis(),
                        sets=["log_format=" + fmt]) as sh:
            mark = sh.mark()
            c = WsClient(sh.port)
            c.send_text("before\x00after")
            assert c.recv() == (1, b"ok")
            c.close(1000, b"bye\x00hidden")
            c.expect_close()
            line = sh.wait_log(r"client said: before", start=mark).string
            assert "after" in line and "peer=127.0.0.1:" in line, (fmt, line)
            acc = sh.wait_log(r"access", start=mark).string
            assert "hidden" in acc, (fmt, acc)
            c.shutdown()


@S.test
def text_log_lines_carry_no_c1_control_characters():
    """log_format=text: a client's path and message hold C1 controls, U+009B (CSI: an
    escape sequence's start in terminals that honour 8-bit controls) and U+0085 (NEL: a
    line break for Unicode-aware readers, e.g. Python's str.splitlines), in UTF-8 and as
    raw bytes 0x9B / 0x85. The README: "newlines and other control characters but tab
    become spaces, so a client's terminal escapes never reach a terminal". No line the
    server writes holds one, in the message or in a field.
    fails on old: yes (only bytes < 0x20 and 0x7F are folded or escaped: the access
    line's path=/p\\xc2\\x9b31mRED... and the messages "c1: \\xc2\\x9b31m ..." and
    "raw: \\x9b31m" carry them as they came)."""
    port = free_port()
    p, rd, data = start_piped(["--listen", "127.0.0.1:%d" % port, "--redis", shared_redis().url,
                               policy("ops_log_msg.lua")], 1)
    try:
        c = WsClient(port, path="/p%C2%9B31mRED%C2%85NEL%9B")
        c.send_text("c1: \u009b31m red \u0085 nel")
        assert c.recv() == (1, b"ok")
        c.send(2, b"raw: \x9b31m \x85")
        assert c.recv() == (1, b"ok")
        c.close(1000, b"")
        c.expect_close()
        c.shutdown()
        while b"access" not in data:
            select.select([rd], [], [], 5)
            data += os.read(rd, 65536)
    finally:
        p.kill()
        p.wait()
        os.close(rd)
    bad = []
    for line in data.split(b"\n"):
        text = line.decode("utf-8", "surrogateescape")
        if any(0x80 <= ord(ch) <= 0x9F or 0xDC80 <= ord(ch) <= 0xDC9F for ch in text):
            bad.append(line)
    assert not bad, "lines with C1 controls: %r" % bad[:3]


@S.test
def a_chain_of_spawned_tasks_does_not_stop_the_loop():
    """A policy's task spawns the next before it returns (host.spawn in a retry loop),
    for ever: each task is tiny, so no instruction budget is reached. The loop still
    turns: the spawning client gets its "spawned", another client gets "pong" within
    2 s, and the process lives past loop_stall_ms (2000).
    fails on old: yes (sh_host_run drains the ready queue until it is empty, and a
    task spawned while it drains joins the same drain: the loop never runs again, no
    frame is written, and the watchdog aborts the process after 3 s: "the event loop
    has been stuck for 3000ms (loop_stall_ms) in spawned function of connection ...")."""
    with Statushost(policy("ops_spawn_chain.lua"), redis=shared_redis(),
                    sets=["loop_stall_ms=2000", "shutdown_grace_ms=300"]) as sh:
        a = WsClient(sh.port)
        b = WsClient(sh.port)
        a.sock.settimeout(5)
        b.sock.settimeout(5)
        a.send_text("spawn")
        assert a.recv() == (1, b"spawned")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # past loop_stall_ms
            t1 = time.monotonic()
            b.send_text("ping")
            op, data = b.recv()
            assert data.startswith(b"pong ") and time.monotonic() - t1 < 2, data
            time.sleep(0.3)
        assert sh.proc.poll() is None


@S.test
def kit_a_chain_of_spawned_tasks_fails_instead_of_hanging():
    """The same policy under the kit: the test is "not ok" with a clear reason (the
    kit's "the policy never goes idle"), the next test runs, exit 1, within 60 s.
    fails on old: yes (settle's SETTLE_MAX bound counts loop turns, but the drain
    inside one turn never ends: the run hangs; killed after 60 s)."""
    rc, out, _ = kit(policy("ops_spawn_test.lua"), 60)
    assert rc == 1, "exit %s, output:\n%s" % (rc, out)
    assert "not ok 1 - a chain of spawned tasks" in out, out
    assert "ok 2 - the next test still runs" in out, out

GO_FLOAT = re.compile(r"^(NaN|[+-]?Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$", re.I)


@S.test
def metrics_stay_parseable_after_infinite_and_nan_observations():
    """A policy observes the number a client sends (tonumber: "1e999" is +inf,
    "-1e999" is -inf) in its own histogram and in the dispatch histogram. After +inf
    then -inf each sum is NaN; every sample value in /metrics is still one that
    Prometheus' parser (Go's strconv.ParseFloat) takes: NaN, +Inf, -Inf or a number.
    fails on old: yes (the sums are printed with %.17g / %.6f: inf + -inf is a NaN
    with the sign bit set on x86, printed "-nan", which ParseFloat refuses (it takes a
    sign only before Inf): every later scrape of the process fails, for good)."""
    import re as _re  # noqa: F401
    with Statushost(policy("ops_observe_number.lua"), redis=shared_redis(),
                    sets=["shutdown_grace_ms=300"]) as sh:
        c = WsClient(sh.port)
        for v in ("0.2", "1e999", "-1e999", "0.3"):
            c.send_text(v)
            assert c.recv() == (1, b"ok")
        status, _, body = http_request(sh.port, "GET", "/metrics")
        assert status == 200
        bad = []
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            value = line.rsplit(" ", 1)[1]
            if not GO_FLOAT.match(value):
                bad.append(line)
        assert not bad, "samples Prometheus cannot parse: %r" % bad

def close_payload(c):
    """The payload of the server's close frame (text frames before it are skipped)."""
    while True:
        fin, rsv, opcode, payload = c.recv_frame()
        if opcode == 8:
            return payload


@S.test
def conn_close_never_sends_a_reason_that_is_not_utf8():
    """conn:close(4000, "\\xff\\xfe") (a policy echoing bytes it got, say): RFC 6455
    §5.5.1 wants the reason UTF-8 (a browser fails the connection on one that is not).
    Either conn:close raises a clear error naming it (the policy then closes
    otherwise), or the frame's reason is valid UTF-8. conn:close(4000, "a\\0b") sends
    the three bytes, or raises.
    fails on old: yes (the bytes go out as they are: close 4000 with reason
    b"\\xff\\xfe"; and "a\\0b" is sent as "a": sh_conn_ws_close takes a C string)."""
    with Statushost(policy("ops_close_reason.lua"), redis=shared_redis()) as sh:
        c = WsClient(sh.port)
        c.send_text("bad")
        payload = close_payload(c)
        reason = payload[2:]
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            raise AssertionError("close reason is not UTF-8: %r" % reason)
        c.shutdown()
        c = WsClient(sh.port)
        c.send_text("nul")
        payload = close_payload(c)
        assert payload[2:] in (b"a\x00b", b"refused"), payload
        c.shutdown()


@S.test
def a_master_whose_notify_socket_is_stuck_still_restarts_and_stops():
    """--workers 2, $NOTIFY_SOCKET names a socket nobody reads, WATCHDOG_USEC = 20 ms
    (the master pings from its poll loop). A worker SIGKILLed is restarted within 3 s,
    and SIGTERM stops the master within 20 s.
    fails on old: yes (the master blocks in sd_notify's sendmsg once the queue is
    full: the dead worker is never restarted ("worker 0 started" once) and SIGTERM is
    never read from its signalfd: the master runs until SIGKILLed)."""
    import re as _re
    s, path, qlen = stuck_notify_socket()
    sh = Statushost(ECHO, redis=shared_redis(), port=free_port(), args=["--workers", "2"],
                    env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}, expect_ready=False)
    try:
        sh.wait_log(r"master: 2 workers listening", timeout=30)
        time.sleep(max(0.5, qlen * 0.01 + 0.5))  # the queue is full by now
        pid0 = int(_re.search(r"worker 0 started \(pid (\d+)\)", sh.log_text()).group(1))
        os.kill(pid0, signal.SIGKILL)
        wait_until(lambda: len(_re.findall(r"worker 0 started", sh.log_text())) >= 2,
                   timeout=3, what="worker 0 restarted")
        sh.signal(signal.SIGTERM)
        assert sh.proc.wait(20) in (0, 1)
    finally:
        if sh.proc.poll() is None:
            sh.proc.kill()
            sh.proc.wait()
            for m in _re.finditer(r"started \(pid (\d+)\)", sh.log_text()):
                try:
                    os.kill(int(m.group(1)), signal.SIGKILL)
                except OSError:
                    pass
        s.close()

if __name__ == "__main__":
    S.run()
