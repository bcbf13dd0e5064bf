#!/usr/bin/env python3
"""Faults under scripts/default.lua (SPEC §7): a client leaving mid-job, Redis killed
and restarted, the remote dying, SIGTERM/SIGINT during live jobs. Real redis-server,
real workers on statushost, real statushost.

    python3 tests/integration/test_faults.py [test_name ...]
"""
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Redis, Statushost, WsClient, WsClosed, Suite, http_get,  # noqa: E402
                     wait_until, OP_TEXT, OP_CLOSE)

S = Suite("test_faults")
POLICY = "scripts/default.lua"
SEED_WORKER = "examples/remote_worker.lua"
TEST_WORKER = "tests/integration/workers/test_worker.lua"
DONE = "已完成"


def ready(sh):
    sh.wait_log(r"redis up")
    return sh


def worker(redis, script, *sets):
    return ready(Statushost(script, redis=redis, sets=list(sets)))


def server(redis, remote_port, *sets):
    return ready(Statushost(POLICY, redis=redis, sets=[
        "remote_url=http://127.0.0.1:%d/remote/message" % remote_port] + list(sets)))


def batch(n, base=10000):
    return [{"id": str(base + i), "status": "进行中"} for i in range(n)]


def conn_id(sh, mark):
    return sh.wait_log(r"\[([0-9a-f]+)\] websocket open from", start=mark).group(1)


def numsub(redis, channel):
    return int(redis.cmd("PUBSUB", "NUMSUB", channel)[1])


def healthz(sh):
    try:
        return http_get(sh.port, "/healthz")[0]
    except OSError:
        return None


def start_job(sh, worker_sh, tasks, timeout=10):
    """Open a WebSocket, send tasks, await the worker's POST → (ws, channel)."""
    mark = sh.mark()
    ws = WsClient(sh.port, timeout=timeout)
    ws.send_json(tasks)
    channel = "ws:fid:" + conn_id(sh, mark)
    worker_sh.wait_log(r"job for %s %d tasks" % (channel, len(tasks)))
    return ws, channel


def read_to_close(ws):
    """→ (list of text payloads, close code); answers the close."""
    return ws.read_to_close()


# ---------------------------------------------------------------- client leaves

@S.test
def client_leaves_mid_job_releases_everything():
    """A client that leaves mid-job (abruptly, and with a close frame): its channel's
    NUMSUB is 0 within 1 s, lua_tasks_current returns to 0, the worker sees its POST
    closed, and the job's timer never fires afterwards."""
    with Redis() as r, \
            worker(r, TEST_WORKER, "mode=partial", "complete_count=1", "tick_ms=1000") as w, \
            server(r, w.port, "job_timeout_ms=1500") as sh:
        t_start = time.monotonic()
        # 1. TCP dropped without a close frame
        ws, ch1 = start_job(sh, w, batch(5))
        assert json.loads(ws.recv_text())["id"] == "10000"   # the job is live
        assert numsub(r, ch1) == 1
        assert sh.metrics()["statushost_lua_tasks_current"] >= 1
        ws.shutdown()
        wait_until(lambda: numsub(r, ch1) == 0, 1.0, what="NUMSUB %s = 0" % ch1)
        sh.wait_log(r"client left mid-job")
        w.wait_log(r"post cancelled for %s" % ch1, timeout=3)

        # 2. a proper close frame (1001 going away) mid-job
        ws, ch2 = start_job(sh, w, batch(5, base=20000))
        assert json.loads(ws.recv_text())["id"] == "20000"
        ws.close(1001)
        op, payload = ws.recv()
        assert op == OP_CLOSE, (op, payload)
        ws.wait_tcp_close()
        ws.shutdown()
        wait_until(lambda: numsub(r, ch2) == 0, 1.0, what="NUMSUB %s = 0" % ch2)
        w.wait_log(r"post cancelled for %s" % ch2, timeout=3)

        wait_until(lambda: sh.metrics()["statushost_lua_tasks_current"] == 0, 1.0,
                   what="lua_tasks_current 0")
        m = sh.metrics()
        assert m["statushost_websockets_current"] == 0, m
        # 3. a job that times out normally; by its end the two abandoned jobs' timers
        #    (armed earlier, same job_timeout_ms) would have fired too
        ws, ch3 = start_job(sh, w, batch(2, base=30000))
        frames, code = read_to_close(ws)
        ws.shutdown()
        assert code == 4408, (code, frames)
        assert time.monotonic() - t_start > 1.5
        m = sh.metrics()
        assert m["statushost_jobs_timed_out_total"] == 1, m["statushost_jobs_timed_out_total"]
        assert m["statushost_lua_errors_total"] == 0, m["statushost_lua_errors_total"]
        assert m["statushost_jobs_started_total"] == 3, m
        wait_until(lambda: sh.metrics()["statushost_lua_tasks_current"] == 0, 1.0,
                   what="lua_tasks_current 0")
        assert numsub(r, ch3) == 0


@S.test
def client_leaves_seed_worker_slow_ticks():
    """Same with the seed's remote at tick_ms=1000: NUMSUB 0 within 1 s, no coroutines left."""
    with Redis() as r, worker(r, SEED_WORKER, "tick_ms=1000") as w, server(r, w.port) as sh:
        chans = []
        clients = []
        for k in range(20):
            ws, ch = start_job(sh, w, batch(10, base=100000 + k * 100))
            clients.append(ws)
            chans.append(ch)
        assert all(numsub(r, c) == 1 for c in chans)
        for ws in clients:
            ws.shutdown()
        wait_until(lambda: all(numsub(r, c) == 0 for c in chans), 1.0, what="NUMSUB 0 for all 20")
        wait_until(lambda: sh.metrics()["statushost_lua_tasks_current"] == 0, 1.0,
                   what="lua_tasks_current 0")
        assert r.cmd("PUBSUB", "CHANNELS", "ws:fid:*") == []


# ---------------------------------------------------------------- Redis lost

@S.test
def redis_killed_and_restarted():
    """redis-server SIGKILLed mid-job and restarted on the same port: statushost stays up,
    /healthz 503 then 200, a new job meanwhile gets unavailable + 1013, the live job is
    re-subscribed and completes once the worker publishes again, new jobs complete,
    redis_reconnects_total increases."""
    r = Redis()
    try:
        with worker(r, TEST_WORKER, "mode=drip", "tick_ms=300") as w, server(r, w.port) as sh:
            assert healthz(sh) == 200
            before = sh.metrics()["statushost_redis_reconnects_total"]
            tasks = batch(10)
            ws, ch = start_job(sh, w, tasks, timeout=30)
            seen = set()
            while len(seen) < 2:                        # updates are flowing
                seen.add(json.loads(ws.recv_text())["id"])
            r.kill()
            assert sh.proc.poll() is None
            wait_until(lambda: healthz(sh) == 503, 2, what="/healthz 503")
            assert sh.metrics()["statushost_redis_up"] == 0
            # a new job while Redis is down
            ws2 = WsClient(sh.port, timeout=5)
            ws2.send_json(batch(3, base=50000))
            msg = ws2.recv_json()
            assert msg.get("error") == "unavailable", msg
            code, _ = ws2.expect_close()
            assert code == 1013, code
            ws2.shutdown()
            assert sh.proc.poll() is None, "statushost exited"

            r.start()
            wait_until(lambda: healthz(sh) == 200, 8, what="/healthz 200 again")
            wait_until(lambda: numsub(r, ch) == 1, 2, what="%s re-subscribed" % ch)
            sh.wait_log(r"redis: re-subscribing \d+ channels")
            # the live job completes once the worker publishes again
            frames, code = read_to_close(ws)
            ws.shutdown()
            ids = seen | {json.loads(f)["id"] for f in frames}
            assert code == 1000, (code, frames[-2:])
            assert ids == {t["id"] for t in tasks}, sorted(ids)
            wait_until(lambda: numsub(r, ch) == 0, 1, what="NUMSUB %s = 0" % ch)

            # new jobs after the restart complete
            ws3, ch3 = start_job(sh, w, batch(2, base=60000))
            frames, code = read_to_close(ws3)
            ws3.shutdown()
            assert code == 1000, (code, frames)
            assert {json.loads(f)["id"] for f in frames} == {"60000", "60001"}

            m = sh.metrics()
            assert m["statushost_redis_reconnects_total"] > before, \
                "redis_reconnects_total %s (was %s) after a reconnect (log: %s)" % (
                    m["statushost_redis_reconnects_total"], before,
                    sh.wait_log(r"redis: re-subscribing .*").group(0))
            assert m["statushost_redis_up"] == 1
            assert m["statushost_jobs_completed_total"] == 2, m
            assert m["statushost_jobs_failed_total"] == 1, m      # the unavailable one
            assert sh.proc.poll() is None
    finally:
        r.stop()


@S.test
def redis_restart_with_seed_worker_and_manual_publish():
    """The seed's worker (tick_ms=300, its tasks lost while Redis was down): after the
    restart, the remaining updates published by hand reach the live job, which completes."""
    r = Redis()
    try:
        with worker(r, SEED_WORKER, "tick_ms=300", "complete_probability=0.0") as w, \
                server(r, w.port) as sh:
            tasks = batch(6, base=70000)
            ws, ch = start_job(sh, w, tasks, timeout=20)
            r.cmd("PUBLISH", ch, '{"id":"70000","status":"%s"}' % DONE)
            assert json.loads(ws.recv_text())["id"] == "70000"
            r.kill()
            wait_until(lambda: healthz(sh) == 503, 2, what="/healthz 503")
            r.start()
            wait_until(lambda: healthz(sh) == 200, 8, what="/healthz 200 again")
            wait_until(lambda: numsub(r, ch) == 1, 2, what="%s re-subscribed" % ch)
            for t in tasks[1:]:
                assert r.cmd("PUBLISH", ch, '{"id":"%s","status":"%s"}' % (t["id"], DONE)) == 1
            frames, code = read_to_close(ws)
            ws.shutdown()
            assert code == 1000, code
            assert [json.loads(f)["id"] for f in frames] == [t["id"] for t in tasks[1:]], frames
    finally:
        r.stop()


# ---------------------------------------------------------------- remote dies

@S.test
def remote_dies_mid_job_dispatch_failed():
    """The remote process is killed while its POST is pending (connection reset/EOF
    before any answer): that is a failed dispatch → dispatch_failed + 1011, well
    before job_timeout_ms."""
    with Redis() as r, \
            worker(r, TEST_WORKER, "mode=partial", "complete_count=1") as w, \
            server(r, w.port, "job_timeout_ms=30000") as sh:
        ws, ch = start_job(sh, w, batch(3), timeout=8)
        assert json.loads(ws.recv_text())["id"] == "10000"
        w.kill()
        try:
            msg = ws.recv_json()
        except socket.timeout:
            raise AssertionError("no answer 8 s after the remote died (job left hanging "
                                 "until job_timeout_ms)")
        assert msg.get("error") == "dispatch_failed", msg
        code, _ = ws.expect_close()
        assert code == 1011, code
        ws.shutdown()
        wait_until(lambda: numsub(r, ch) == 0, 1, what="NUMSUB 0")


# ---------------------------------------------------------------- signals

def _signal_during_jobs(sig):
    with Redis() as r, worker(r, TEST_WORKER, "mode=partial", "complete_count=1") as w:
        sh = server(r, w.port)
        try:
            a, cha = start_job(sh, w, batch(3))
            b, chb = start_job(sh, w, batch(4, base=20000))
            for ws in (a, b):
                assert ws.recv_json()["status"] == DONE
            t0 = time.monotonic()
            sh.signal(sig)
            codes = []
            for ws in (a, b):
                code, _ = ws.expect_close()
                codes.append(code)
            assert codes == [1001, 1001], codes
            # stops accepting
            try:
                s = socket.create_connection(("127.0.0.1", sh.port), timeout=2)
                s.close()
                raise AssertionError("still accepting after the signal")
            except ConnectionRefusedError:
                pass
            for ws in (a, b):
                ws.wait_tcp_close()
                ws.shutdown()
            rc = sh.wait_exit(15)
            assert rc == 0, "exit %s:\n%s" % (rc, sh.log_text())
            assert time.monotonic() - t0 < 10, "took the whole grace period"
            assert numsub(r, cha) == 0 and numsub(r, chb) == 0
            w.wait_log(r"post cancelled for %s" % cha, timeout=3)
            w.wait_log(r"post cancelled for %s" % chb, timeout=3)
        finally:
            sh.stop()


@S.test
def sigterm_during_live_jobs_1001_exit_0():
    _signal_during_jobs(signal.SIGTERM)


@S.test
def sigint_during_live_jobs_1001_exit_0():
    _signal_during_jobs(signal.SIGINT)


@S.test
def sigterm_client_ignoring_close_exits_within_grace():
    """A client that never answers the 1001 close: the process still exits 0, within
    the grace period."""
    with Redis() as r, worker(r, TEST_WORKER, "mode=partial", "complete_count=0") as w:
        sh = server(r, w.port)
        try:
            ws, ch = start_job(sh, w, batch(2))
            t0 = time.monotonic()
            sh.signal(signal.SIGTERM)
            code, _ = ws.expect_close(reply=False)
            assert code == 1001, code
            rc = sh.wait_exit(20)
            assert rc == 0, rc
            assert time.monotonic() - t0 < 12, time.monotonic() - t0
            ws.shutdown()
        finally:
            sh.stop()


if __name__ == "__main__":
    S.run()
