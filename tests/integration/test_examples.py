#!/usr/bin/env python3
"""The example policies end to end (SPEC §9): examples/auth.lua, examples/timeouts.lua,
examples/resume.lua, each on a real statushost with a real redis-server and a real remote
(examples/remote_worker.lua, or tests/integration/workers/examples_worker.lua where a test
needs to choose which task completes when).

    python3 tests/integration/test_examples.py [test_name ...]
"""
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (shared_redis, ROOT, Redis, RedisSubscriber, Statushost, WsClient, Suite,  # noqa: E402
                     wait_until, http_get, OP_TEXT, OP_CLOSE)

S = Suite("examples")

# Tests that check what the core's policy metrics API (host.metrics.define, inc with
# labels) exports on /metrics. (Every test here needs that API in the core, since
# scripts/default.lua defines its metric while it loads; these check its output.)
NEEDS_CORE = ["auth_refusals_are_counted_by_reason"]
SEED_WORKER = "examples/remote_worker.lua"
EX_WORKER = "tests/integration/workers/examples_worker.lua"
DONE = "已完成"
SECRET = "test-secret-\u00e9"  # not ASCII on purpose: the key is bytes

def redis():
    """One redis-server for the whole file (every statushost has its own channels)."""
    return shared_redis()


def ready(sh):
    sh.wait_log(r"redis up")
    return sh


def worker(script=SEED_WORKER, *sets):
    return ready(Statushost(script, redis=redis(), sets=list(sets)))


def server(policy, remote, *sets):
    url = "remote_url=http://127.0.0.1:%d/remote/message" % remote.port
    return ready(Statushost(policy, redis=redis(), sets=[url] + list(sets)))


def batch(n, prefix="t"):
    return [{"id": "%s%d" % (prefix, i), "status": "进行中"} for i in range(n)]


def done_payload(task_id):
    """The workers' exact format."""
    return '{"id":%s,"status":"%s"}' % (json.dumps(task_id, ensure_ascii=False), DONE)


def read_until_close(ws):
    """→ ([text frames as str], close code, close reason)."""
    frames = []
    while True:
        op, payload = ws.recv()
        if op == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            try:
                ws.send(OP_CLOSE, payload[:2])
            except OSError:
                pass
            ws.shutdown()
            return frames, code, payload[2:].decode()
        assert op == OP_TEXT, (op, payload)
        frames.append(payload.decode())


def check_complete(tasks, frames, code):
    """Every task got exactly one done update, verbatim, then 1000."""
    assert code == 1000, "close %s after %r" % (code, frames[-3:])
    assert sorted(frames) == sorted(done_payload(t["id"]) for t in tasks), frames


# ---------------------------------------------------------------- auth

def token(subject="alice", ttl=3600, secret=SECRET, expiry=None):
    exp = int(time.time()) + ttl if expiry is None else expiry
    p = "%s.%d" % (subject, exp)
    return p + "." + hmac.new(secret.encode(), p.encode(), hashlib.sha256).hexdigest()


def auth_server(remote, *sets):
    return server("examples/auth.lua", remote, "auth_secret=" + SECRET, *sets)


def run_job(port, tasks, path="/", headers=None):
    ws = WsClient(port, path=path, headers=headers, timeout=20)
    assert ws.status == 101, ws.status
    try:
        ws.send_json(tasks)
        frames, code, _ = read_until_close(ws)
        return frames, code
    finally:
        ws.shutdown()


@S.test
def auth_valid_token_in_query_or_header_completes_a_job():
    with worker(SEED_WORKER, "tick_ms=20", "complete_probability=0.5") as w, auth_server(w) as sh:
        tasks = batch(5)
        check_complete(tasks, *run_job(sh.port, tasks, path="/?x=1&token=" + token("alice")))
        sh.wait_log(r"auth: accepted alice")
        check_complete(tasks, *run_job(sh.port, tasks,
                                       headers={"Authorization": "Bearer " + token("bob")}))
        sh.wait_log(r"auth: accepted bob")


@S.test
def auth_missing_bad_expired_tokens_get_401_before_the_upgrade():
    with worker(SEED_WORKER, "tick_ms=20") as w, auth_server(w, "auth_max_ttl_s=7200") as sh:
        good = token()
        flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
        cases = [
            ("/", None, "no token"),
            ("/?token=", None, "no token"),
            ("/", {"Authorization": "Basic " + good}, "no token"),
            ("/?token=" + flipped, None, "bad signature"),
            ("/?token=" + token(secret="other"), None, "bad signature"),
            ("/?token=" + token("mallory").replace("mallory", "alice"), None, "bad signature"),
            ("/", {"Authorization": "Bearer " + token(ttl=-1)}, "token expired"),
            ("/?token=" + token(ttl=-3600), None, "token expired"),
            ("/?token=" + token(ttl=86400), None, "token expires too far ahead"),
            ("/?token=alice.123", None, "malformed token"),
            ("/?token=" + good.replace("alice", "al.ice"), None, "malformed token"),
        ]
        for path, headers, why in cases:
            mark = sh.mark()
            ws = WsClient(sh.port, path=path, headers=headers)
            assert ws.status == 401, (path, headers, ws.status)
            assert "sec-websocket-accept" not in ws.response_headers
            ws.shutdown()
            sh.wait_log(r"auth: 401 for .* %s" % re.escape(why), start=mark)
        # still serving valid tokens
        ws = WsClient(sh.port, path="/?token=" + good)
        assert ws.status == 101
        ws.shutdown()


@S.test
def auth_token_minted_with_the_documented_openssl_one_liner_is_accepted():
    with open(os.path.join(ROOT, "examples", "auth.lua"), encoding="utf-8") as f:
        line = next(l for l in f if l.startswith("--   p="))[2:].strip()
    tok = subprocess.run(["bash", "-c", line], env=dict(os.environ, SECRET=SECRET),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(r"alice\.\d+\.[0-9a-f]{64}", tok), tok
    with worker(SEED_WORKER, "tick_ms=20", "complete_probability=0.5") as w, auth_server(w) as sh:
        tasks = batch(3)
        check_complete(tasks, *run_job(sh.port, tasks, path="/?token=" + tok))


@S.test
def auth_without_a_secret_refuses_with_500_and_says_why():
    with worker(SEED_WORKER) as w, server("examples/auth.lua", w) as sh:
        ws = WsClient(sh.port, path="/?token=" + token(secret=""))
        assert ws.status == 500, ws.status
        ws.shutdown()
        sh.wait_log(r"auth_secret is empty")


# ---------------------------------------------------------------- timeouts

def timeouts_server(remote, *sets):
    return server("examples/timeouts.lua", remote, *sets)


def frames_with_times(ws, t0):
    """→ ([(seconds since t0, decoded frame)], close code, reason)."""
    out = []
    while True:
        op, payload = ws.recv()
        if op == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0]
            ws.send(OP_CLOSE, payload[:2])
            ws.shutdown()
            return out, code, payload[2:].decode()
        assert op == OP_TEXT
        out.append((time.monotonic() - t0, json.loads(payload)))


@S.test
def timeouts_unfinished_tasks_time_out_at_task_timeout_then_1000():
    with worker(EX_WORKER) as w, timeouts_server(w, "task_timeout_ms=800") as sh:
        ws = WsClient(sh.port, timeout=20)
        t0 = time.monotonic()
        ws.send_json([{"id": "ok1"}, {"id": "slow1"}, {"id": 42}, {"id": "ok2"},
                      {"id": "slow2", "timeout_ms": "soon"}])  # not a number: the default
        frames, code, reason = frames_with_times(ws, t0)
        assert code == 1000 and reason == "done, 3 of 5 timed out", (code, reason)
        done = {f["id"]: t for t, f in frames if f.get("status") == DONE}
        timed = {f["id"]: t for t, f in frames if f.get("status") == "timeout"}
        assert set(done) == {"ok1", "ok2"} and set(timed) == {"slow1", 42, "slow2"}, frames
        assert all(t < 0.7 for t in done.values()), frames
        assert all(0.75 <= t < 3 for t in timed.values()), frames
        assert len(frames) == 5, frames


@S.test
def timeouts_per_item_timeout_ms_is_honoured():
    with worker(EX_WORKER) as w, timeouts_server(w, "task_timeout_ms=60000") as sh:
        ws = WsClient(sh.port, timeout=20)
        t0 = time.monotonic()
        ws.send_json([{"id": "slowB", "timeout_ms": 1200}, {"id": "ok1"},
                      {"id": "slowA", "timeout_ms": 300}])
        frames, code, reason = frames_with_times(ws, t0)
        assert (code, reason) == (1000, "done, 2 of 3 timed out"), (code, reason)
        assert [f["id"] for _, f in frames] == ["ok1", "slowA", "slowB"], frames
        (_, f1), (ta, fa), (tb, fb) = frames
        assert f1["status"] == DONE and fa["status"] == fb["status"] == "timeout", frames
        assert 0.28 <= ta < 1.0 and 1.15 <= tb < 3, (ta, tb)


@S.test
def timeouts_late_update_of_a_timed_out_task_is_dropped_last_completion_closes():
    with worker(EX_WORKER, "late_ms=700") as w, timeouts_server(w, "task_timeout_ms=5000") as sh:
        ws = WsClient(sh.port, timeout=20)
        ws.send_json([{"id": "late1", "timeout_ms": 200}, {"id": "late2"}])
        frames, code, reason = read_until_close(ws)
        assert (code, reason) == (1000, "done, 1 of 2 timed out"), (code, reason, frames)
        assert frames == ['{"id":"late1","status":"timeout"}', done_payload("late2")], frames
        sh.wait_log(r"dropped a late update for timed-out task late1")


@S.test
def timeouts_all_in_time_ends_as_the_default_and_job_timeout_still_applies():
    with worker(EX_WORKER) as w, timeouts_server(w, "task_timeout_ms=5000") as sh:
        tasks = [{"id": "ok%d" % i} for i in range(4)]
        frames, code, reason = read_until_close(_sent(sh.port, tasks))
        check_complete(tasks, frames, code)
        assert reason == "done", reason
    with worker(EX_WORKER) as w, timeouts_server(w, "task_timeout_ms=0", "job_timeout_ms=500") as sh:
        frames, code, _ = read_until_close(_sent(sh.port, [{"id": "ok1"}, {"id": "never"}]))
        assert code == 4408, (code, frames)
        assert frames[0] == done_payload("ok1")
        err = json.loads(frames[1])
        assert err["error"] == "timeout" and err["pending"] == ["never"], err


def _sent(port, tasks):
    ws = WsClient(port, timeout=20)
    ws.send_json(tasks)
    return ws


# ---------------------------------------------------------------- resume

def resume_server(remote, *sets):
    return server("examples/resume.lua", remote, *sets)


def start_job(sh, tasks):
    """Send the batch → (ws, resume token from the first frame, the job's fid from the
    server's log: the connection id, which the client is never told)."""
    mark = sh.mark()
    ws = WsClient(sh.port, timeout=20)
    ws.send_json(tasks)
    first = ws.recv_json()
    assert set(first) == {"job"} and re.fullmatch(r"[0-9a-f]{32}", first["job"]), first
    fid = sh.wait_log(r"\[([0-9a-f]+)\] websocket open from", start=mark).group(1)
    return ws, first["job"], fid


def numsub(channel):
    return int(redis().cmd("PUBSUB", "NUMSUB", channel)[1])


@S.test
def resume_mid_job_gets_every_task_state_then_live_updates_then_1000():
    with worker(SEED_WORKER, "tick_ms=200", "complete_probability=0.3") as w, \
            resume_server(w) as sh:
        tasks = batch(12, prefix="r")
        ws, job, fid = start_job(sh, tasks)
        channel = "ws:fid:" + fid
        watch = RedisSubscriber(redis().port, channel)  # what the worker publishes
        seen_by_a = [ws.recv_text() for _ in range(2)]
        mark = sh.mark()
        ws.close()
        ws.shutdown()
        sh.wait_log(r"client left mid-job", start=mark)
        # updates published before B connects (at least one that A did not read)
        published = []
        while len(published) < 3:
            kind, _, payload = watch.next()
            assert kind == "message"
            published.append(payload)

        b = WsClient(sh.port, path="/?resume=" + job, timeout=20)
        snapshot = [json.loads(b.recv_text()) for _ in tasks]
        live, code, reason = read_until_close(b)
        assert (code, reason) == (1000, "done"), (code, reason, live)
        assert [s["id"] for s in snapshot] == [t["id"] for t in tasks], snapshot
        done_in_snapshot = {s["id"] for s in snapshot if s["status"] == DONE}
        for p in published:  # everything published before B came is in the snapshot
            assert json.loads(p)["id"] in done_in_snapshot, (p, snapshot)
        for s in snapshot:
            assert s["status"] in (DONE, "进行中"), s
        # every task reaches 已完成 exactly once, verbatim as the worker published it
        pending = [t["id"] for t in tasks if t["id"] not in done_in_snapshot]
        assert sorted(live) == sorted(done_payload(i) for i in pending), (live, pending)
        assert all(p in [done_payload(t["id"]) for t in tasks] for p in seen_by_a)
        sh.wait_log(r"stopped recording job %s \(all tasks done\)" % fid)
        watch.f.close()  # RedisSubscriber.close() alone leaves the fd open (makefile holds it)
        watch.close()
        wait_until(lambda: numsub(channel) == 0, what="NUMSUB 0")


@S.test
def resume_snapshot_then_held_live_updates_with_the_dispatch_outliving_the_client():
    # ok* are done at once; late* 800 ms later, by a POST that A's leaving must not cancel
    with worker(EX_WORKER, "late_ms=800") as w, resume_server(w) as sh:
        tasks = [{"id": "ok1", "status": "进行中"}, {"id": "late1", "status": "进行中"},
                 {"id": "ok7"}, {"id": "late2", "status": "进行中"}]
        ws, job, fid = start_job(sh, tasks)
        got = sorted(ws.recv_text() for _ in range(2))
        assert got == sorted([done_payload("ok1"), done_payload("ok7")]), got
        ws.close()
        ws.shutdown()
        b = WsClient(sh.port, path="/?resume=" + job, timeout=20)
        snapshot = [b.recv_text() for _ in tasks]
        assert snapshot == [done_payload("ok1"), '{"id":"late1","status":"进行中"}',
                            done_payload("ok7"), '{"id":"late2","status":"进行中"}'], snapshot
        live, code, _ = read_until_close(b)
        assert code == 1000 and sorted(live) == sorted([done_payload("late1"), done_payload("late2")]), live
        w.wait_log(r"published late2 on ws:fid:%s" % fid)


@S.test
def resume_after_the_job_completed_and_redis_keys():
    with worker(EX_WORKER) as w, resume_server(w, "resume_keep_s=60") as sh:
        tasks = [{"id": "ok1"}, {"id": "ok2"}]
        ws, job, fid = start_job(sh, tasks)
        frames, code, _ = read_until_close(ws)
        check_complete(tasks, frames, code)
        sh.wait_log(r"stopped recording job %s \(all tasks done\)" % fid)
        # the compacted log: each task's "<offset> <last update>"; the log itself: a stream
        # whose entry ids are those offsets, in the order the updates came
        h = redis().cmd("HGETALL", "job:{%s}" % job)
        state = {k: v.split(" ", 1) for k, v in zip(h[::2], h[1::2])}
        assert {k: v[1] for k, v in state.items()} == {"ok1": done_payload("ok1"), "ok2": done_payload("ok2")}, h
        log = [(e[0], dict(zip(e[1][::2], e[1][1::2])))
               for e in redis().cmd("XRANGE", "job:{%s}:log" % job, "-", "+")]
        assert len(log) == 2 and log[0][0] < log[1][0], log  # same-length ids here
        for offset, entry in log:
            assert state[entry["task"]] == [offset, entry["update"]], (log, state)
        for key in ("job:{%s}" % job, "job:{%s}:meta" % job, "job:{%s}:log" % job):
            ttl = redis().cmd("PTTL", key)
            assert 60000 < ttl <= 60000 + 120000, (key, ttl)
        b = WsClient(sh.port, path="/?resume=" + job)
        frames, code, reason = read_until_close(b)
        assert (code, reason) == (1000, "done") and frames == [done_payload("ok1"), done_payload("ok2")], frames
        wait_until(lambda: numsub("ws:fid:" + fid) == 0, what="NUMSUB 0")
        wait_until(lambda: numsub("job:{%s}:live" % job) == 0, what="NUMSUB 0 (live)")


@S.test
def resume_unknown_or_malformed_id_gets_unknown_job_and_4404():
    with worker(EX_WORKER) as w, resume_server(w) as sh:
        for rid in ("00000000deadbeef00000001", "0" * 32, "no%20such", "x" * 200, ""):
            b = WsClient(sh.port, path="/?resume=" + rid)
            assert b.status == 101
            err = b.recv_json()
            assert err["error"] == "unknown_job" and isinstance(err["message"], str), err
            frames, code, _ = read_until_close(b)
            assert code == 4404 and frames == [], (code, frames)


@S.test
def resume_of_a_corrupt_job_record_gets_unknown_job_not_a_lua_error():
    # a meta key another writer overwrote: not JSON, JSON of the wrong shape. Before
    # the fix: a Lua error in on_open, close 1011 "internal error"
    with worker(EX_WORKER) as w, resume_server(w) as sh:
        for i, meta in enumerate(("garbage", '{"tasks":5,"deadline":1}', "[]", '{"tasks":[]}')):
            tok = "%032x" % (0xc0ffee00 + i)
            redis().cmd("SET", "job:{%s}:meta" % tok, meta)
            b = WsClient(sh.port, path="/?resume=" + tok)
            err = b.recv_json()
            assert err["error"] == "unknown_job", (meta, err)
            frames, code, _ = read_until_close(b)
            assert code == 4404 and frames == [], (meta, code, frames)
        assert "lua error" not in sh.log_text(), sh.log_text()


@S.test
def resume_job_past_its_deadline_gets_timeout_4408():
    with worker(EX_WORKER) as w, resume_server(w, "job_timeout_ms=600") as sh:
        ws, job, fid = start_job(sh, [{"id": "ok1"}, {"id": "never"}])
        assert ws.recv_text() == done_payload("ok1")
        ws.close()
        ws.shutdown()
        b = WsClient(sh.port, path="/?resume=" + job, timeout=20)
        assert [b.recv_text() for _ in range(2)] == [done_payload("ok1"), '{"id":"never","status":"pending"}']
        err = b.recv_json()
        assert err["error"] == "timeout" and err["pending"] == ["never"], err
        _, code, _ = read_until_close(b)
        assert code == 4408, code
        sh.wait_log(r"stopped recording job %s \(deadline\)" % fid)


@S.test
def resume_client_resetting_right_after_its_batch_leaks_no_task():
    # The job runs in a detached task, which awaits conn:subscribe for the client's
    # connection; the client resets before Redis confirms. That wait must end ("closed")
    # when the connection goes, not hang (and the process must then stop cleanly).
    with worker(SEED_WORKER, "tick_ms=20") as w, resume_server(w) as sh:
        for _ in range(5):
            mark = sh.mark()
            ws = WsClient(sh.port)
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.send_json(batch(2))
            ws.sock.close()  # RST right behind the batch
            sh.wait_log(r"websocket closed", start=mark)
        wait_until(lambda: sh.metrics()["statushost_lua_tasks_current"] == 0, timeout=5,
                   what="no Lua task left")
        tasks = batch(3)
        ws, job, fid = start_job(sh, tasks)
        check_complete(tasks, *read_until_close(ws)[:2])


@S.test
def resume_needs_the_token_not_the_connection_id():
    """F11: the resume credential is 128 random bits, not the job's connection id (a
    process prefix + a counter: stepping it reaches a neighbour's job). The fid is never
    sent to the client; resuming with it, or with a neighbour's, is unknown_job + 4404;
    the token is not written to the log."""
    with worker(EX_WORKER, "late_ms=1500") as w, resume_server(w) as sh:
        tasks = [{"id": "ok1"}, {"id": "late1"}]
        ws, token, fid = start_job(sh, tasks)
        other, other_token, other_fid = start_job(sh, [{"id": "ok2"}, {"id": "late2"}])
        assert token != other_token and fid not in token and token not in fid, (token, fid)
        assert ws.recv_text() == done_payload("ok1")
        ws.close()
        ws.shutdown()
        counter = int(fid[16:], 16)
        guesses = [fid, other_fid, fid[:16] + "%08x" % (counter + 2), fid.upper(),
                   fid + "00000000"]  # 32 hex characters, like a token
        for guess in guesses:
            b = WsClient(sh.port, path="/?resume=" + guess)
            frames, code, reason = read_until_close(b)
            assert code == 4404 and len(frames) == 1, (guess, code, frames)
            assert json.loads(frames[0])["error"] == "unknown_job", frames
            assert fid not in frames[0] and other_fid not in frames[0], frames
        b = WsClient(sh.port, path="/?resume=" + token, timeout=20)
        snapshot = [b.recv_text() for _ in tasks]
        live, code, _ = read_until_close(b)
        assert snapshot == [done_payload("ok1"), '{"id":"late1","status":"pending"}'], snapshot
        assert (code, live) == (1000, [done_payload("late1")]), (code, live)
        for f in snapshot + live:
            assert fid not in f, f
        read_until_close(other)
        assert token not in sh.log_text() and other_token not in sh.log_text()


@S.test
def auth_refusals_are_counted_by_reason():
    """NEEDS_CORE: statushost_auth_refusals_total{reason=...}, defined by examples/auth.lua
    with host.metrics.define and counted with labels."""
    with worker(SEED_WORKER) as w, auth_server(w) as sh:
        paths = ["/", "/?token=", "/?token=alice.123", "/?token=" + token(secret="other"),
                 "/?token=" + token(ttl=-10), "/?token=" + token(ttl=10 ** 6), "/?token=" + token()]
        for path in paths:
            ws = WsClient(sh.port, path=path)
            ws.shutdown()
        status, _, body = http_get(sh.port, "/metrics")
        text = body.decode()
        assert "# HELP statushost_auth_refusals_total " in text, text
        assert "# TYPE statushost_auth_refusals_total counter" in text, text
        m = sh.metrics()
        want = {"no_token": 2, "malformed": 1, "bad_signature": 1, "expired": 1, "too_far_ahead": 1}
        for reason, n in want.items():
            key = 'statushost_auth_refusals_total{reason="%s"}' % reason
            assert m.get(key) == n, (key, {k: v for k, v in m.items() if "auth" in k})
    with worker(SEED_WORKER) as w, server("examples/auth.lua", w) as sh:  # no secret: 500
        WsClient(sh.port, path="/?token=x").shutdown()
        assert sh.metrics().get('statushost_auth_refusals_total{reason="no_secret"}') == 1


@S.test
def examples_build_on_the_default_module():
    """auth, timeouts and resume require "statushost.default": no dofile, no path tricks,
    no copy of finish or of the id normalisation (which lives in scripts/default.lua)."""
    for name in ("auth", "timeouts", "resume"):
        with open(os.path.join(ROOT, "examples", name + ".lua"), encoding="utf-8") as f:
            src = f.read()
        assert 'require "statushost.default"' in src, name
        for banned in ("dofile", "debug.getinfo", "loadfile", "math.tointeger", "function finish",
                       "conn:unsubscribe", "job.timer:cancel"):
            assert banned not in src, (name, banned)


# ---------------------------------------------------------------- ratelimit, jwt (helpers)

@S.test
def ratelimit_per_client_ip_behind_a_trusted_proxy_gets_429_with_retry_after():
    """ratelimit_max upgrades per client IP; the IP comes from X-Forwarded-For only because
    the peer (127.0.0.1) is in real_ip_from; another forwarded IP has its own budget."""
    with worker() as w, server("examples/ratelimit.lua", w, "ratelimit_max=2",
                               "ratelimit_window_s=30", "real_ip_from=127.0.0.1/32",
                               "real_ip_header=X-Forwarded-For") as sh:
        xff = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
        for _ in range(2):
            c = WsClient(sh.port, headers=xff)
            assert c.status == 101, c.status
            c.shutdown()
        c = WsClient(sh.port, headers=xff)
        assert c.status == 429, c.status
        assert int(c.response_headers.get("retry-after", "0")) >= 1, c.response_headers
        c = WsClient(sh.port, headers={"X-Forwarded-For": "198.51.100.1"})
        assert c.status == 101, c.status  # another client, its own window
        c.shutdown()


def _b64url(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret="s3cret", alg="HS256"):
    h = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    p = _b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (h, p)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (h, p, _b64url(sig))


@S.test
def jwt_hs256_accepts_a_valid_token_and_refuses_the_rest_with_401():
    now = int(time.time())
    with worker() as w, server("examples/jwt.lua", w, "jwt_secret=s3cret") as sh:
        good = jwt({"sub": "alice", "exp": now + 600})
        frames, code = run_job(sh.port, batch(2), headers={"Authorization": "Bearer " + good})
        assert code == 1000, (code, frames)
        for bad in (jwt({"sub": "a", "exp": now - 600}),              # expired
                    jwt({"sub": "a", "nbf": now + 600, "exp": now + 900}),  # not yet
                    jwt({"sub": "a", "exp": now + 600}, secret="other"),    # bad signature
                    jwt({"sub": "a", "exp": now + 600}, alg="none"),        # alg not pinned
                    "not.a.jwt", ""):
            c = WsClient(sh.port, path="/?token=" + bad)
            assert c.status == 401, (bad, c.status)


if __name__ == "__main__":
    S.run()  # the shared redis-server is stopped at exit (harness)
