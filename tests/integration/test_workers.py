#!/usr/bin/env python3
"""Several processes on one port (--workers N): the master, its workers, signals,
restarts, the worker label, readiness. Real redis-server, real remote worker
(examples/remote_worker.lua), real WebSocket clients; each statushost listens on a
fixed free port (port 0 is refused with workers).

    python3 tests/integration/test_workers.py [test_name ...]
"""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ROOT, Statushost, Suite, WsClient, WsClosed, free_port,  # noqa: E402
                     http_get, shared_redis, wait_until, OP_CLOSE)
from test_ops import NotifySocket  # noqa: E402

S = Suite("workers")
SEED_WORKER = "examples/remote_worker.lua"
DONE = "已完成"
INSTANCE_RX = re.compile(r"\(instance ([0-9a-f]{16}), worker (\d+), pid (\d+)\)")
OPEN_RX = re.compile(r"\[([0-9a-f]{16})[0-9a-f]{8}\] websocket open from 127\.0\.0\.1:(\d+)")


def redis():
    return shared_redis()


class Master(Statushost):
    """statushost --workers N on a fixed free port; ready once the master says every
    worker listens."""

    def __init__(self, script, n=3, sets=(), env=None):
        super().__init__(script, redis=redis(), sets=list(sets), args=["--workers", str(n)],
                         port=free_port(), env=env, expect_ready=False)
        self.n = n
        m = self.wait_log(r"master: %d workers listening on [^ ]*:(\d+)" % n, timeout=30)
        self.port = int(m.group(1))

    def workers(self):
        """{instance: (worker index, pid)} of every worker started so far."""
        return {m.group(1): (int(m.group(2)), int(m.group(3)))
                for m in (INSTANCE_RX.search(l) for l in self.log_text().splitlines()) if m}

    def worker_of_ports(self):
        """{client port: worker index} from the workers' "websocket open from" lines."""
        inst = self.workers()
        out = {}
        for line in self.log_text().splitlines():
            m = OPEN_RX.search(line)
            if m and m.group(1) in inst:
                out[int(m.group(2))] = inst[m.group(1)][0]
        return out

    def per_worker_metrics(self, name, want=None, timeout=20):
        """{worker index: value of statushost_<name>} from /metrics, asked until every
        worker has answered (each answer describes the worker that gives it)."""
        seen = {}

        def ask():
            status, _, body = http_get(self.port, "/metrics")
            assert status == 200, status
            for line in body.decode().splitlines():
                m = re.match(r'statushost_%s\{worker="(\d+)"\} (\S+)$' % name, line)
                if m:
                    seen[int(m.group(1))] = float(m.group(2))
            return len(seen) == self.n and (want is None or want(seen))
        wait_until(ask, timeout=timeout, interval=0.005, what="%s from every worker" % name)
        return seen


def remote(*sets):
    w = Statushost(SEED_WORKER, redis=redis(), sets=list(sets))
    w.wait_log(r"redis up")
    return w


def url(w):
    return "remote_url=http://127.0.0.1:%d/remote/message" % w.port


def batch(n, prefix):
    return [{"id": "%s-%d" % (prefix, i), "status": "进行中"} for i in range(n)]


def done_payload(task_id):
    return '{"id":"%s","status":"%s"}' % (task_id, DONE)


def run_clients(n, fn):
    errors = []

    def run(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001
            errors.append("client %d: %r" % (i, e))
    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return errors


def read_job(ws):
    """Frames until the close frame → (frames, close code); 1006 when the TCP
    connection ends without one."""
    frames = []
    try:
        while True:
            op, payload = ws.recv()
            if op == OP_CLOSE:
                try:
                    ws.send(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return frames, int.from_bytes(payload[:2], "big")
            frames.append(payload.decode())
    except (WsClosed, ConnectionResetError):
        return frames, 1006


LONG_RX = re.compile(r"^long ([a-z]) (\d+) ([a-z]+)$")


def long_lines_stay_whole(fmt):
    """--workers 2, log_format=fmt: 8 clients spread over both workers each have their
    policy log 40 lines of 10 KiB at once. Every line read from the shared stderr pipe is
    whole: in JSON it parses, and each "long" line holds one client's letter only (cut
    at PIPE_BUF with "truncated":true, or " ..." in text); and every line is accounted
    for: read, or counted by a "log lines dropped" line. Before: a line over PIPE_BUF
    went out in one write(2) that the kernel may split, so two workers' lines
    interleaved mid-line (JSON that does not parse, letters mixed)."""
    sh = Master("tests/integration/policies/ops_log_long.lua", n=2,
                sets=["log_format=" + fmt, "access_log=false"])
    # The pipe holds 1 MiB (256 lines cut at 4 KiB), so that at least half the lines are
    # read however slowly this (loaded) test process reads them; the rest may be dropped.
    fcntl.fcntl(sh.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    letters, per_client = "abcdefgh", 40

    def client(i):
        ws = clients[i]
        ws.send_text("%s %d" % (letters[i], per_client))
        assert ws.recv_text().startswith("done ")
        ws.close()
    with sh:
        # 4 connections on each worker (SO_REUSEPORT spreads them by a hash: keep
        # connecting until each has 4; "x 0" answers with the connection id at once)
        on = {}
        for _ in range(200):
            ws = WsClient(sh.port)
            ws.send_text("x 0")
            inst = ws.recv_text()[5:21]
            if len(on.setdefault(inst, [])) < 4:
                on[inst].append(ws)
            else:
                ws.close()
            if len(on) == 2 and all(len(v) == 4 for v in on.values()):
                break
        clients = [ws for v in on.values() for ws in v]
        assert len(clients) == 8, {k: len(v) for k, v in on.items()}
        errors = run_clients(len(letters), client)
        assert not errors, errors
        want = len(letters) * per_client
        seen, dropped, bad = {}, 0, []

        def count():
            seen.clear()
            nonlocal dropped
            dropped = 0
            bad.clear()
            for line in sh.log_text().splitlines():
                if fmt == "json":
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        bad.append(line)
                        continue
                    msg = rec["msg"]
                    if "log lines dropped" in msg:
                        dropped += rec["lines"]
                    cut = rec.get("truncated") is True
                else:
                    m = re.match(r"^\S+ \S+ +\[[-0-9a-f]+\] (.*)$", line)
                    if not m:
                        bad.append(line)
                        continue
                    msg = m.group(1)
                    d = re.search(r"log lines dropped.* lines=(\d+)", msg)
                    if d:
                        dropped += int(d.group(1))
                    cut = msg.endswith(" ...")
                    msg = msg[:-4] if cut else msg
                if msg.startswith("long"):
                    m = LONG_RX.match(msg)
                    if not m or set(m.group(3)) != {m.group(1)}:
                        bad.append(line)
                        continue
                    seen[(m.group(1), int(m.group(2)))] = (len(line.encode()), cut)
            return bad or len(seen) + dropped >= want
        wait_until(count, timeout=30, what="every long line read or counted as dropped")
        assert not bad, "%d lines not whole, e.g.:\n%s" % (
            len(bad), "\n".join(l[:200] + "..." + l[-100:] for l in bad[:3]))
        assert len(seen) + dropped == want, (len(seen), dropped, want)
        assert len(seen) >= want // 2, "only %d of %d lines read" % (len(seen), want)
        # cut to PIPE_BUF (4096 bytes with the newline) and marked so
        assert all(n < 4096 and cut for n, cut in seen.values()), max(seen.values())


@S.test
def long_json_log_lines_of_two_workers_never_interleave():
    long_lines_stay_whole("json")


@S.test
def long_text_log_lines_of_two_workers_never_interleave():
    long_lines_stay_whole("text")


@S.test
def three_workers_300_concurrent_jobs_complete_spread_over_workers():
    with remote("tick_ms=20", "complete_probability=0.3") as w, \
            Master("scripts/default.lua", 3, [url(w)]) as sh:
        n = 300
        ports, results = [None] * n, [None] * n
        connected = threading.Barrier(n + 1, timeout=60)

        def client(i):
            ws = WsClient(sh.port, timeout=60)
            ports[i] = ws.sock.getsockname()[1]
            try:
                connected.wait()
                tasks = batch(5, "c%d" % i)
                ws.send_json(tasks)
                frames, code = read_job(ws)
                assert code == 1000, (code, frames)
                assert sorted(frames) == sorted(done_payload(t["id"]) for t in tasks), frames
                results[i] = True
            finally:
                ws.shutdown()
        box = []
        t = threading.Thread(target=lambda: box.append(run_clients(n, client)), daemon=True)
        t.start()
        connected.wait()  # all 300 connections open at once, then every batch goes
        t.join(120)
        assert box and not box[0], box[0][:5] if box else "clients hung"
        assert all(results), results.count(None)
        # the connections spread over the workers (kernel SO_REUSEPORT hashing)
        where = sh.worker_of_ports()
        count = [0] * 3
        for p in ports:
            count[where[p]] += 1
        assert sum(count) == n and min(count) >= n * 0.15, count
        # /metrics: each answer is one worker's, labelled; they add up
        jobs = sh.per_worker_metrics("jobs_completed_total", want=lambda s: sum(s.values()) == n)
        assert jobs == {i: float(c) for i, c in enumerate(count)}, (jobs, count)
        # every sample carries the label, also next to the labels it had (histogram buckets,
        # the policy's own counters)
        body = http_get(sh.port, "/metrics")[2].decode()
        samples = [l for l in body.splitlines() if l and not l.startswith("#")]
        assert all(re.match(r'[a-z_]+\{worker="\d"(,[a-z_]+="[^"]*")*\} \S+$', l) for l in samples), \
            [l for l in samples if not re.match(r'[a-z_]+\{worker="\d"', l)]
        assert re.search(r'^statushost_dispatch_seconds_bucket\{worker="\d",le="0.001"\} \d+$', body, re.M)
        print("     jobs per worker: %s" % count)


@S.test
def worker_killed_mid_run_is_replaced_its_clients_see_1006_others_complete():
    with remote("tick_ms=100", "complete_probability=0.15") as w, \
            Master("scripts/default.lua", 3, [url(w)]) as sh:
        n = 60
        started = threading.Barrier(n + 1, timeout=60)
        ports, outcome = [None] * n, [None] * n

        def client(i):
            ws = WsClient(sh.port, timeout=60)
            ports[i] = ws.sock.getsockname()[1]
            tasks = batch(4, "k%d" % i)
            ws.send_json(tasks)
            started.wait()
            outcome[i] = read_job(ws), tasks
            ws.shutdown()
        box = []
        t = threading.Thread(target=lambda: box.append(run_clients(n, client)), daemon=True)
        t.start()
        started.wait()
        wait_until(lambda: len([p for p in ports if p in sh.worker_of_ports()]) == n,
                   what="every connection logged")
        where = sh.worker_of_ports()
        victim = where[ports[0]]
        old_pid = [pid for (i, pid) in sh.workers().values() if i == victim][-1]
        mark = sh.mark()
        os.kill(old_pid, signal.SIGKILL)
        m = sh.wait_log(r"master: worker %d \(pid %d\) killed by signal 9" % (victim, old_pid),
                        start=mark)
        new_pid = int(sh.wait_log(r"master: worker %d started \(pid (\d+)\)" % victim,
                                  start=mark).group(1))
        assert new_pid != old_pid and m
        sh.wait_log(r"listening on [^ ]+ \(worker %d\)" % victim, start=mark)
        t.join(120)
        assert box and not box[0], box[0][:5] if box else "clients hung"
        victims = 0
        for i in range(n):
            (frames, code), tasks = outcome[i]
            if where[ports[i]] == victim:
                victims += 1
                assert code == 1006, (i, code, frames)
            else:
                assert code == 1000, (i, code, frames)
                assert sorted(frames) == sorted(done_payload(t["id"]) for t in tasks), frames
        assert victims >= 1
        # the new worker serves: connections reach it, and a job completes there
        for attempt in range(200):
            ws = WsClient(sh.port, timeout=30)
            port = ws.sock.getsockname()[1]
            wait_until(lambda: port in sh.worker_of_ports(), what="connection logged")
            if sh.worker_of_ports()[port] == victim:
                break
            ws.shutdown()
        else:
            raise AssertionError("no connection reached the new worker %d" % victim)
        tasks = batch(3, "after")
        ws.send_json(tasks)
        frames, code = read_job(ws)
        assert code == 1000 and len(frames) == 3, (code, frames)
        assert sh.workers()[[k for k, v in sh.workers().items() if v[1] == new_pid][0]][0] == victim
        print("     worker %d: pid %d → %d; %d of %d clients saw 1006" % (
            victim, old_pid, new_pid, victims, n))


@S.test
def sighup_reaches_every_worker_and_sigterm_stops_them_all():
    n = NotifySocket()
    try:
        with remote() as w:
            sh = Master("scripts/default.lua", 3, [url(w)],
                        env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000"})
            ready = n.expect("READY")  # from the master, once all three listen
            for _ in range(2):  # the master pings the watchdog at half WATCHDOG_USEC
                assert n.next(timeout=2) == {"WATCHDOG": "1"}, n.seen
            assert "MAINPID" not in ready or ready["MAINPID"] == str(sh.proc.pid), ready
            pids = [pid for _, pid in sh.workers().values()]
            assert len(pids) == 3 and sh.proc.pid not in pids, pids
            assert sh.per_worker_metrics("reloads_total") == {0: 0, 1: 0, 2: 0}
            mark = sh.mark()
            sh.signal(signal.SIGHUP)
            n.expect("RELOADING")
            n.expect("READY")  # once every worker has reloaded
            sh.wait_log(r"master: every worker answered the reload", start=mark)
            got = sh.per_worker_metrics("reloads_total", want=lambda s: all(s.values()))
            assert got == {0: 1, 1: 1, 2: 1}, got
            # a live WebSocket on some worker gets 1001 at shutdown
            ws = WsClient(sh.port)
            sh.signal(signal.SIGTERM)
            n.expect("STOPPING")
            op, payload = ws.recv()
            assert op == OP_CLOSE and int.from_bytes(payload[:2], "big") == 1001, (op, payload)
            ws.send(OP_CLOSE, payload[:2])
            assert sh.wait_exit() == 0, sh.log_text()
            sh.stop()
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    raise AssertionError("worker %d outlived the master" % pid)
                except ProcessLookupError:
                    pass
            assert len(re.findall(r"master: worker \d \(pid \d+\) exited with status 0",
                                  sh.log_text())) == 3, sh.log_text()
    finally:
        n.close()


@S.test
def a_user_metric_label_named_worker_is_refused():
    # --workers adds worker="i" to every sample: a user label of that name would give
    # samples with the label twice, and Prometheus refuses the whole scrape
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('local host = require("statushost")\n'
                'host.metrics.define("per_worker", "counter", "x", {"worker"})\nreturn {}\n')
    try:
        p = subprocess.run([BIN, "--check", "--workers", "2", f.name], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 2 and 'not "le" or "worker"' in p.stderr, (p.returncode, p.stderr)
    finally:
        os.unlink(f.name)


def resume_and_check(port, tasks, token, updates, out):
    """Resume a job: the snapshot (one frame per task, in batch order), then live updates
    until close 1000. Each task's seq must go up by exactly 1 from the snapshot's to
    `updates`: a gap is a missed update, a repeat a duplicate. → appends a result dict."""
    ws = WsClient(port, path="/?resume=" + token, timeout=30)
    local_port = ws.sock.getsockname()[1]
    try:
        last, missed, dup, n = {}, 0, 0, 0
        for t in tasks:
            s = json.loads(ws.recv_text())
            assert s["id"] == t["id"], (s, t)
            last[s["id"]] = s.get("seq", 0)
        frames, code = read_job(ws)
        assert code == 1000, (code, frames[-3:])
        for f in frames:
            u = json.loads(f)
            k = u["seq"]
            if k <= last[u["id"]]:
                dup += 1
            else:
                missed += k - last[u["id"]] - 1
                last[u["id"]] = k
            n += 1
        missed += sum(updates - v for v in last.values())
        out.append({"port": local_port, "missed": missed, "dup": dup, "live": n})
    finally:
        ws.shutdown()


@S.test
def resume_on_another_worker_gets_every_update_exactly_once_1000_times():
    """examples/resume.lua over 3 workers, a remote publishing each task's update every
    20 ms: jobs are resumed (50 times each, at times spread over the job's life and just
    after it) until 1,000 resumes landed on another worker than the job's. Every resume
    gets the snapshot then each later update once: 0 missed, 0 duplicated."""
    updates, tick = 60, 20
    w = Statushost("tests/integration/workers/stream_worker.lua", redis=redis(),
                   sets=["tick_ms=%d" % tick, "updates=%d" % updates])
    w.wait_log(r"redis up")
    with w, Master("examples/resume.lua", 3, [url(w)]) as sh:
        t0 = time.monotonic()
        cross = same = live = 0
        wave = 0
        while cross < 1000:
            wave += 1
            assert wave <= 8 and time.monotonic() - t0 < 50, (wave, cross)
            jobs = []
            for j in range(10):
                ws = WsClient(sh.port, timeout=30)
                tasks = [{"id": "w%dj%dt%d" % (wave, j, t), "status": "进行中"} for t in range(3)]
                ws.send_json(tasks)
                token = json.loads(ws.recv_text())["job"]
                jobs.append((tasks, token, ws.sock.getsockname()[1]))
                ws.close()  # the client leaves; the job goes on
                ws.shutdown()
            results = {i: [] for i in range(len(jobs))}
            span = updates * tick / 1000.0 * 1.2

            def resumer(i):
                job, r = divmod(i, 50)
                tasks, token, _ = jobs[job]
                time.sleep(span * r / 50)  # load shaping: resumes spread over the job's life
                resume_and_check(sh.port, tasks, token, updates, results[job])
            errors = run_clients(len(jobs) * 50, resumer)
            assert not errors, errors[:3]
            where = wait_until(lambda: (lambda m: m if all(
                r["port"] in m for rs in results.values() for r in rs) and all(
                p in m for _, _, p in jobs) else None)(sh.worker_of_ports()),
                what="every connection logged")
            for i, (_, _, port) in enumerate(jobs):
                for r in results[i]:
                    assert r["missed"] == 0 and r["dup"] == 0, r
                    live += r["live"]
                    if where[r["port"]] != where[port]:
                        cross += 1
                    else:
                        same += 1
        print("     %d resumes on another worker than the job's (+%d on the same), %d live "
              "updates, 0 missed, 0 duplicated, %.1fs" % (cross, same, live, time.monotonic() - t0))


@S.test
def signals_forwarded_while_a_worker_starts_wait_for_it():
    """SIGHUP (then SIGTERM) forwarded to a worker that is still loading its script (just
    restarted) is delivered once it handles signals: it reloads (or stops gracefully)
    instead of dying of the default action."""
    sh = Master("examples/echo.lua", 2)
    for _ in range(3):
        victim = [pid for (i, pid) in sh.workers().values() if i == 0][-1]
        mark = sh.mark()
        os.kill(victim, signal.SIGKILL)
        new = int(sh.wait_log(r"master: worker 0 started \(pid (\d+)\)", start=mark).group(1))
        sh.signal(signal.SIGHUP)  # the new worker is loading its script now
        sh.wait_log(r"master: every worker answered the reload", start=mark)
        sh.wait_log(r"listening on [^ ]+ \(worker 0\)", start=mark)
        os.kill(new, 0)  # alive
    mark = sh.mark()
    victim = [pid for (i, pid) in sh.workers().values() if i == 0][-1]
    os.kill(victim, signal.SIGKILL)
    sh.wait_log(r"master: worker 0 started", start=mark)
    sh.signal(signal.SIGTERM)
    assert sh.wait_exit() == 0, sh.log_text()
    sh.stop()
    assert not re.search(r"killed by signal (1|15) ", sh.log_text()), sh.log_text()


@S.test
def a_worker_dying_young_is_restarted_with_a_growing_delay():
    """Restart policy: at once after 1 s of life or more, else 100 ms, doubling up to 5 s
    while the worker keeps dying young; each death logged with pid and signal."""
    sh = Master("examples/echo.lua", 2)
    mark = sh.mark()
    for _ in range(4):
        pid = [p for (i, p) in sh.workers().values() if i == 1][-1]
        m2 = sh.mark()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # seen once under load (ASan pass): say what the log says
            raise AssertionError("worker 1 (pid %d) was already gone:\n%s" % (pid, sh.log_text()))
        sh.wait_log(r"master: worker 1 started \(pid \d+\)", start=m2, timeout=20)
        sh.wait_log(r"listening on [^ ]+ \(worker 1\)", start=m2)
    deaths = [(int(m.group(1)), int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"master: worker 1 \(pid (\d+)\) killed by signal 9 \(Killed\) after (\d+) ms; "
        r"restarting in (\d+) ms", "\n".join(sh.log_text().splitlines()[mark:]))]
    assert len(deaths) == 4, sh.log_text()
    delay = 0
    for _, lived, got in deaths:
        delay = 0 if lived >= 1000 else min(delay * 2 or 100, 5000)
        assert got == delay, deaths
    assert sh.stop() == 0, sh.log_text()
    print("     (pid, lived ms, delay ms): %s" % deaths)


@S.test
def ctrl_c_to_the_process_group_is_one_graceful_shutdown():
    """SIGINT to master and workers at once (a terminal's Ctrl-C): workers ignore
    theirs, the master sends one SIGTERM; a WebSocket still gets 1001."""
    sh = Master("examples/echo.lua", 2)
    pids = [pid for _, pid in sh.workers().values()]
    ws = WsClient(sh.port)
    for pid in pids + [sh.proc.pid]:  # the workers' first: they must ignore it
        os.kill(pid, signal.SIGINT)
    code, _ = ws.expect_close()
    assert code == 1001, code
    assert sh.wait_exit() == 0
    sh.stop()
    assert "second signal" not in sh.log_text(), sh.log_text()


@S.test
def sigterm_to_the_process_group_is_one_graceful_shutdown():
    """SIGTERM to workers and master at once (`timeout`, `kill -- -PGID`): each worker
    gets it twice, from the sender and from the master; the copy is not a "second
    signal" and does not kill a worker that is already finishing: a WebSocket gets
    1001, every worker exits 0, the master 0."""
    for conns in (1, 0):  # with a connection (grace period) and without (finishes at once)
        sh = Master("examples/echo.lua", 2)
        pids = [pid for _, pid in sh.workers().values()]
        ws = WsClient(sh.port) if conns else None
        for pid in pids + [sh.proc.pid]:
            os.kill(pid, signal.SIGTERM)
        if ws:
            code, _ = ws.expect_close()
            assert code == 1001, code
        assert sh.wait_exit() == 0, sh.log_text()
        sh.stop()
        log = sh.log_text()
        assert "second signal" not in log and "killed by signal" not in log, log
        assert log.count("exited with status 0") == 2, log


@S.test
def master_dies_workers_follow():
    sh = Master("examples/echo.lua", 2)
    pids = [pid for _, pid in sh.workers().values()]
    sh.kill()

    def gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True
    wait_until(gone, timeout=20, what="workers to exit after the master")


@S.test
def port_0_bad_values_check_and_address_in_use():
    echo = os.path.join(ROOT, "examples", "echo.lua")

    def run(*args):
        return subprocess.run([BIN] + list(args) + [echo], capture_output=True, text=True,
                              timeout=30)
    r = run("--workers", "3", "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "needs a fixed port" in r.stderr, r
    assert r.stderr.count("\n") == 1, r.stderr
    for bad, why in (("0", "[1, 128]"), ("129", "[1, 128]"), ("two", "must be a number")):
        r = run("--workers", bad)
        assert r.returncode == 2 and why in r.stderr, (bad, r)
    r = run("--check", "--workers", "4")
    assert r.returncode == 0 and "workers = 4" in r.stdout, r
    assert "workers = 1" in run("--check").stdout
    # an address the workers cannot listen on: one line from the master, exit 2
    r = run("--workers", "2", "--listen", "192.0.2.1:%d" % free_port())
    assert r.returncode == 2 and "listen 192.0.2.1" in r.stderr, r
    # a port held by a process without SO_REUSEPORT
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = run("--workers", "2", "--listen", "127.0.0.1:%d" % s.getsockname()[1])
        assert r.returncode == 2 and "address already in use" in r.stderr.lower(), r
    finally:
        s.close()


@S.test
def a_worker_that_cannot_start_stops_the_master_with_2():
    """A worker exiting 2 before any worker was ready (as when the address is taken
    between the master's check and the workers' bind): the master stops and exits 2.
    Made reproducible with a script whose on_config accepts the master's load only."""
    import tempfile
    d = tempfile.mkdtemp(prefix="sh-workers-")
    marker = os.path.join(d, "master-checked")
    script = os.path.join(d, "p.lua")
    with open(script, "w") as f:
        # the first load (the master's) creates the marker; every later load refuses
        f.write('local p = %r\n'
                'return { on_config = function()\n'
                '  local f = io.open(p) if f then f:close() return false, "refused in a worker" end\n'
                '  io.open(p, "w"):close() end }\n' % marker)
    sh = Statushost(script, redis=redis(), args=["--workers", "2"], port=free_port(),
                    expect_ready=False)
    assert sh.wait_exit() == 2, sh.log_text()
    sh.stop()
    assert re.search(r"master: worker \d \(pid \d+\) exited with status 2 before any worker "
                     r"was ready: stopping", sh.log_text()), sh.log_text()


if __name__ == "__main__":
    S.run()
