#!/usr/bin/env python3
"""test_attack_track.py — conn:track (the core forwarding a tracked job's plain updates in
on_publish's place) attacked as a hostile publisher, client and policy author would. Each
docstring says how the test failed on the code before ("fails on old: ...").

    python3 tests/integration/test_attack_track.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 python3 tests/integration/test_attack_track.py
"""
import json
import os
import random
import select
import shutil
import signal
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, OP_TEXT, Statushost, Suite, WsClient, shared_redis,  # noqa: E402
                     publish_in_one_write)
from test_default import publish_pipelined as publish  # noqa: E402 (one write, read together)

S = Suite("attack_track")
PROBE = os.path.join(ROOT, "tests", "integration", "policies", "attack_track.lua")
TEST_WORKER = "tests/integration/workers/test_worker.lua"
MAXINT = 2 ** 63 - 1


def ready(sh):
    sh.wait_log(r"redis up")
    return sh


def host(script, *sets):
    return ready(Statushost(script, redis=shared_redis(), sets=list(sets)))


def worker():
    """A remote that takes the batch and publishes nothing: the test publishes."""
    return host(TEST_WORKER, "mode=partial", "complete_count=0")


def remote_url(w):
    return "remote_url=http://127.0.0.1:%d/remote/message" % w.port


def probe(sh, **spec):
    """A job on the probe policy (policies/attack_track.lua), tracked → (ws, channel)."""
    ws = WsClient(sh.port)
    ws.send_text(json.dumps(spec))
    op, p = ws.recv()
    m = json.loads(p)
    assert op == OP_TEXT and m["track"] is True, m
    return ws, m["channel"]


def start_job(sh, w, tasks):
    """A default-policy job of tasks, once the worker has it → (ws, channel)."""
    mark = sh.mark()
    ws = WsClient(sh.port)
    ws.send_text(json.dumps(tasks))
    fid = sh.wait_log(r"\[([0-9a-f]+)\] websocket open from", start=mark).group(1)
    channel = "ws:fid:" + fid
    w.wait_log(r"job for %s %d tasks" % (channel, len(tasks)))
    return ws, channel


def read_to_close(ws, what):
    """ws.read_to_close(), a close that does not come within the client's read timeout
    failing the test with what it was awaiting."""
    try:
        return ws.read_to_close()
    except socket.timeout:
        raise AssertionError("no close: " + what) from None


def policy_file(d, name, src):
    path = os.path.join(d, name + ".lua")
    with open(path, "w") as f:
        f.write(src)
    return path


# ---------------------------------------------------------------- a hostile policy author

@S.test
def a_count_at_maxinteger_wraps_as_lua_does():
    """A job whose ndone is math.maxinteger (a policy's own job given to conn:track): the
    core counts a done update as Lua's `job.ndone + 1` does, wrapping to math.mininteger,
    and the update goes out.
    fails on old: yes, under UBSan (`ndone + newly`: signed integer overflow, the process
    aborts; the optimized build happened to wrap)."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=2, prefix="a", n=5, ndone="maxinteger")
        assert publish(channel, [b'{"id":"a1","status":"done"}']) == [1]
        assert ws.recv() == (OP_TEXT, b'{"id":"a1","status":"done"}')
        ws.send_text("state")
        assert json.loads(ws.recv()[1]) == {"ndone": str(-MAXINT - 1)}
        assert sh.metrics()["statushost_updates_tracked_total"] == 1
        ws.shutdown()


DONE_HOOKED = r"""
local host = require "statushost"
local default = require "statushost.default"
host.metrics.define("done_marked_total", "counter", "job.done entries the policy saw made")
-- a decision of the policy's own that is no update decision: it puts a __newindex on
-- job.done (a metric per task done), which the updates of the job must go through
local validate = default.validate
default.validate = function(text)
  local job, why = validate(text)
  if job then
    setmetatable(job.done, { __newindex = function(t, k, v)
      rawset(t, k, v)
      host.metrics.inc("done_marked_total")
    end })
  end
  return job, why
end
return default
"""


@S.test
def a_metatable_on_the_jobs_tables_is_not_bypassed():
    """The default policy with a validate of its own that puts a __newindex on job.done
    (its update decisions stock, so the job is tracked): every done update makes its
    job.done entry through the metamethod, as on_publish's `job.done[id] = true` does. The
    core leaves a job whose tables have metatables to on_publish.
    fails on old: yes (the core's raw set skipped __newindex: done_marked_total 1, not 3)."""
    d = tempfile.mkdtemp()
    try:
        with worker() as w, host(policy_file(d, "done_hooked", DONE_HOOKED), remote_url(w)) as sh:
            ws, channel = start_job(sh, w, [{"id": "m1"}, {"id": "m2"}, {"id": "m3"}])
            seq = [('{"id":"m%d","status":"done"}' % i).encode() for i in (1, 2, 3)]
            for p in seq[:2]:  # one at a time: no queued on_publish keeps the core out
                assert publish(channel, [p]) == [1]
                assert ws.recv() == (OP_TEXT, p)
            assert publish(channel, seq[2:]) == [1]
            frames, code = read_to_close(ws, "the job's completion")
            assert frames == seq[2:] and code == 1000, (frames, code)
            m = sh.metrics()
            assert m["statushost_done_marked_total"] == 3, m["statushost_done_marked_total"]
            assert m["statushost_lua_errors_total"] == 0, sh.log_text()
            ws.shutdown()
    finally:
        shutil.rmtree(d)


NUMERIC_DONE = r"""
local default = require "statushost.default"
default.config.done_statuses = { "done", 7, true } -- a status code, a flag: not only strings
return default
"""


@S.test
def a_done_status_that_is_not_a_string_counts():
    """done_statuses with a number and a boolean in it: an update whose status is 7 or true
    is done (is_done: done_status[update.status]), whichever path sees it, and the job
    completes 1000 at its last task.
    fails on old: yes (the core counted only string statuses: the job never completed,
    4408 job timeout after 3 frames)."""
    d = tempfile.mkdtemp()
    try:
        with worker() as w, host(policy_file(d, "numeric_done", NUMERIC_DONE), remote_url(w),
                                 "job_timeout_ms=5000") as sh:
            ws, channel = start_job(sh, w, [{"id": "k1"}, {"id": "k2"}, {"id": "k3"}])
            seq = [b'{"id":"k1","status":7}', b'{"id":"k2","status":true}',
                   b'{"id":"k3","status":"done"}']
            for p in seq[:2]:
                assert publish(channel, [p]) == [1]
                assert ws.recv() == (OP_TEXT, p)
            assert publish(channel, seq[2:]) == [1]
            frames, code = read_to_close(ws, "the job's completion")
            assert frames == seq[2:] and code == 1000, (frames, code)
            assert sh.metrics()["statushost_jobs_completed_total"] == 1
            ws.shutdown()
    finally:
        shutil.rmtree(d)


@S.test
def the_cores_job_done_entries_count_against_lua_max_memory():
    """A tracked job whose job.done grows (3,000 tasks with 100-byte ids) while the
    generation's Lua memory is near lua_max_memory: the entries the core makes are the
    policy's memory, refused past the cap as on_publish's are (the update then goes to
    on_publish, which finds no room: close 1013, as a new message near the cap; before
    session 13's fix its run was started and failed: "not enough memory", close 1011).
    fails on old: yes (the core allocated outside the cap: every update forwarded, no
    close, statushost_lua_memory_bytes 4,581,555 with lua_max_memory 4,194,304)."""
    cap = 4 << 20
    with host(PROBE, "lua_max_memory=%d" % cap) as sh:
        prefix = "x" * 100
        ws, channel = probe(sh, count=3000, prefix=prefix, ballast_to=cap - (96 << 10))
        ws.sock.settimeout(5)
        seq = [('{"id":"%s%d","status":"done"}' % (prefix, i)).encode() for i in range(1, 3000)]
        assert publish(channel, seq) == [1] * len(seq)
        frames, code = read_to_close(ws, "the job's memory refused")
        assert code == 1013 and 0 < len(frames) < len(seq), (len(frames), code)
        assert frames == seq[:len(frames)]
        sh.wait_log(r"Lua memory \d+ of %d \(lua_max_memory\): no room for an update: "
                    r"closing 1013" % cap)
        assert 0 < sh.metrics()["statushost_updates_tracked_total"] <= len(frames)
        ws.shutdown()


def op(ws, **m):
    """A change of the probe's job (policies/attack_track.lua), done once "ok" arrives."""
    ws.send_text(json.dumps(m))
    assert ws.recv() == (OP_TEXT, b"ok")


def state(ws):
    ws.send_text("state")
    op_, p = ws.recv()
    assert op_ == OP_TEXT, (op_, p)
    return json.loads(p)


def done(prefix, *ids, status="done"):
    return [('{"id":"%s%s","status":"%s"}' % (prefix, i, status)).encode() for i in ids]


@S.test
def the_jobs_changes_between_updates_are_seen():
    """The core decides an update of a job it left unchanged on what it noted then (no Lua
    ran since): a policy that removes a task, or sets job.ndone, between two updates has
    the next update judged on the job as it now is. A removed task's update is dropped
    (on_publish: a foreign id); after job.ndone = 3 of 5, the 2nd next done update
    completes the job (close 1000).
    fails on old: no (a memo kept past the policy's change would forward a3, and count a5
    as the 4th of 5: no close)."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=5, prefix="a")
        seq = done("a", 1, 2)
        assert publish(channel, seq) == [1, 1]  # one read: the 2nd on the core's note
        assert [ws.recv(), ws.recv()] == [(OP_TEXT, p) for p in seq]
        op(ws, op="untask", id="a3")
        run = b'{"id":"a4","status":"running"}'
        assert publish(channel, done("a", 3) + [run]) == [1, 1]
        assert ws.recv() == (OP_TEXT, run)  # a3 is no task of the job any more
        assert state(ws)["ndone"] == "2"
        op(ws, op="ndone", v=3)
        last = done("a", 4, 5)
        assert publish(channel, last) == [1, 1]
        frames, code = read_to_close(ws, "the job's completion at ndone 5")
        assert frames == last and code == 1000, (frames, code)
        # a1, a2, a4 done (a3 went to on_publish, and a4 running, behind it, with it)
        assert sh.metrics()["statushost_updates_tracked_total"] == 3, sh.metrics()["statushost_updates_tracked_total"]
        ws.shutdown()


@S.test
def a_finished_job_a_new_channel_or_new_tasks_table_are_seen():
    """Between two updates the policy sets job.finished, or moves job.channel, or puts a
    new table in job.tasks (then removes a task from it): the next update of the job on its
    old channel is not sent (on_publish: finished, another channel), and the core reads
    the new job.tasks, not the one it saw before."""
    with host(PROBE) as sh:
        for change in ({"op": "finish"}, {"op": "channel", "v": "elsewhere"}):
            ws, channel = probe(sh, count=4, prefix="b")
            seq = done("b", 1)
            assert publish(channel, seq) == [1]
            assert ws.recv() == (OP_TEXT, seq[0])
            op(ws, **change)
            assert publish(channel, done("b", 2)) == [1]
            assert state(ws)["ndone"] == "1", change  # b2 neither sent nor counted
            ws.shutdown()
        ws, channel = probe(sh, count=4, prefix="c")
        assert publish(channel, done("c", 1)) == [1]
        assert ws.recv() == (OP_TEXT, done("c", 1)[0])
        op(ws, op="newtasks")
        op(ws, op="untask", id="c2")
        seq = done("c", 2, 3)
        assert publish(channel, seq) == [1, 1]
        assert ws.recv() == (OP_TEXT, seq[1])
        assert state(ws)["ndone"] == "2"
        ws.shutdown()


@S.test
def a_metatable_set_between_updates_is_not_bypassed():
    """A __newindex put on job.done after the core handled an update of the job: the next
    done updates make their entries through it (on_publish), in a burst as one at a time."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=5, prefix="d")
        seq = done("d", 1)
        assert publish(channel, seq) == [1]
        assert ws.recv() == (OP_TEXT, seq[0])
        op(ws, op="hook_done")
        seq = done("d", 2, 3)
        assert publish(channel, seq) == [1, 1]
        assert [ws.recv(), ws.recv()] == [(OP_TEXT, p) for p in seq]
        assert state(ws) == {"ndone": "3", "hooked": 2}
        assert sh.metrics()["statushost_updates_tracked_total"] == 1
        ws.shutdown()


@S.test
def the_done_statuses_are_read_at_each_update():
    """The status string the core keeps between updates is only a string: a status taken out
    of the done set between two updates no longer counts, put back it counts again; a
    status of over 64 bytes (not kept) and one that is not done alternate with it."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=6, prefix="e")
        assert publish(channel, done("e", 1)) == [1]
        assert ws.recv() == (OP_TEXT, done("e", 1)[0])
        op(ws, op="undone", v="done")
        assert publish(channel, done("e", 2)) == [1]
        assert ws.recv() == (OP_TEXT, done("e", 2)[0])
        assert state(ws)["ndone"] == "1"
        op(ws, op="redone", v="done")
        seq = (done("e", 2) + done("e", 3, status="x" * 100) + done("e", 3) +
               done("e", 4, status="running") + done("e", 4))
        assert publish(channel, seq) == [1] * len(seq)
        assert [ws.recv() for _ in seq] == [(OP_TEXT, p) for p in seq]
        assert state(ws)["ndone"] == "4"
        assert sh.metrics()["statushost_updates_tracked_total"] == 7
        ws.shutdown()


@S.test
def a_foreign_id_and_the_last_update_in_a_burst():
    """In one read: a done update, one of no task of the job (a new string: the core reads
    the job again), another done update; then the rest of the job's done updates, the last
    completing it: the foreign one is dropped, the last goes to on_publish (close 1000)."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=5, prefix="f")
        seq = done("f", 1) + [b'{"id":"nope-not-a-task","status":"done"}'] + done("f", 2)
        assert publish(channel, seq) == [1, 1, 1]
        assert [ws.recv(), ws.recv()] == [(OP_TEXT, seq[0]), (OP_TEXT, seq[2])]
        rest = done("f", 3, 4, 5)
        assert publish(channel, rest) == [1, 1, 1]
        frames, code = read_to_close(ws, "the job's completion")
        assert frames == rest and code == 1000, (frames, code)
        assert sh.metrics()["statushost_updates_tracked_total"] >= 3  # f1, f3, f4 at least
        ws.shutdown()


@S.test
def a_job_tracked_by_two_connections_counts_each_done_task_once():
    """Two connections track the same job table (a policy's watcher), each with its own done
    set (A: done, fin; B: done, ok): every update of the job's channel reaches both, and the
    one whose done set has its status counts it. Updates s1 ok, s2 fin, s3 ok, s4 fin, one
    at a time: job.ndone is 4 whichever connection Redis delivers to first. The core's note
    of the job after one connection's update must not outlive the other's entry in it.
    fails on old: yes (the note was kept per connection: each counted from its own stale
    job.ndone, overwriting the other's count: ndone 2, and the job never completes)."""
    with host(PROBE) as sh:
        a, channel = probe(sh, count=5, prefix="s", done=["done", "fin"])
        b, _ = probe(sh, join=channel, done=["done", "ok"])
        for i, st in ((1, "ok"), (2, "fin"), (3, "ok"), (4, "fin")):
            p = done("s", i, status=st)
            assert publish(channel, p) == [1]  # one subscription of statushost
            assert a.recv() == (OP_TEXT, p[0]) and b.recv() == (OP_TEXT, p[0]), i
        got = (state(a)["ndone"], state(b)["ndone"])
        assert got == ("4", "4"), got
        assert sh.metrics()["statushost_updates_tracked_total"] >= 4  # the core's, mostly
        assert publish(channel, done("s", 5)) == [1]
        # the first to see s5 completes the job (its frame, close 1000); the other's
        # on_publish finds it finished and sends nothing
        ready_, _, _ = select.select([a.sock, b.sock], [], [], 10)
        assert len(ready_) == 1, ready_
        first, other = (a, b) if ready_[0] is a.sock else (b, a)
        frames, code = read_to_close(first, "the job's completion")
        assert frames == done("s", 5) and code == 1000, (frames, code)
        assert state(other)["ndone"] == "5"
        a.shutdown()
        b.shutdown()


@S.test
def a_done_entry_that_is_a_field_of_the_job_is_seen():
    """A policy whose job.done is the job itself, with a task named "finished": the done
    update of that task sets job.finished (job.done[id] = true), as on_publish's would, and
    the job's later updates are not sent (on_publish: a finished job). The core must not
    decide them on what it noted of the job before its own entry.
    fails on old: yes (the note said job.finished was nil: g2 and g3 forwarded and counted)."""
    with host(PROBE) as sh:
        ws, channel = probe(sh, count=3, prefix="g", n=9)
        op(ws, op="addtask", id="finished")
        op(ws, op="selfdone")
        seq = done("g", 1) + [b'{"id":"finished","status":"done"}']
        after = done("g", 2) + [b'{"id":"g3","status":"running"}']
        assert publish(channel, seq + after) == [1] * 4  # one read: no Lua between them
        assert [ws.recv(), ws.recv()] == [(OP_TEXT, p) for p in seq]
        ws.send_text("state")
        nxt = ws.recv()  # g2's update neither sent nor counted
        assert nxt[0] == OP_TEXT and json.loads(nxt[1]).get("ndone") == "2", nxt
        assert sh.metrics()["statushost_updates_tracked_total"] == 2
        ws.shutdown()


@S.test
def seventy_jobs_updated_in_turn_share_the_notes_slots():
    """70 connections (more than the core's 64 note slots), each tracking a job of its own,
    and their updates interleaved in one read (a done update of each job in turn, twice):
    a job whose slot another job took is read in full, none is counted from another's note;
    every job has ndone 2, then its last update completes it (close 1000)."""
    with host(PROBE) as sh:
        conns = [probe(sh, count=3, prefix="j%d-" % i) for i in range(70)]
        for r in (1, 2):
            batch = [(ch, done("j%d-" % i, r)[0]) for i, (_, ch) in enumerate(conns)]
            assert publish_in_one_write(shared_redis().port, batch) == [1] * len(batch)
            for i, (ws, _) in enumerate(conns):
                assert ws.recv() == (OP_TEXT, done("j%d-" % i, r)[0]), (i, r)
        assert [state(ws)["ndone"] for ws, _ in conns] == ["2"] * len(conns)
        assert sh.metrics()["statushost_updates_tracked_total"] == 140
        batch = [(ch, done("j%d-" % i, 3)[0]) for i, (_, ch) in enumerate(conns)]
        assert publish_in_one_write(shared_redis().port, batch) == [1] * len(batch)
        for i, (ws, _) in enumerate(conns):
            frames, code = read_to_close(ws, "job %d's completion" % i)
            assert frames == done("j%d-" % i, 3) and code == 1000, (i, frames, code)
            ws.shutdown()


# ---------------------------------------------------------------- a hostile remote

CANCEL_CHANNEL = r"""
local host = require "statushost"
local default = require "statushost.default"
local base = default.on_message
-- the remote may cancel a job with a message on cancel:<fid>: a process subscription, whose
-- callbacks are tasks of no connection
default.on_message = function(conn, text)
  conn.state.cancel = host.subscribe("cancel:" .. conn.id, function(_, reason)
    local job = default.job_of(conn)
    if job then default.finish(conn, job, "cancelled", reason) end
  end)
  return base(conn, text)
end
return default
"""


@S.test
def an_update_does_not_overtake_a_queued_task_of_no_connection():
    """The remote cancels the job (a message on a control channel, whose host.subscribe
    callback finishes the job) and publishes an update right behind it, read in the same
    go: the cancel's task is queued first, so the job is finished when the update's turn
    comes and the update is not sent, as with on_publish. The core forwards nothing while a
    detached task (a host.subscribe callback, a timer or host.detach of no connection) is
    ready to run.
    fails on old: yes (the core sent the update before the cancel's error frame, and
    counted it done)."""
    d = tempfile.mkdtemp()
    try:
        with worker() as w, host(policy_file(d, "cancel", CANCEL_CHANNEL), remote_url(w)) as sh:
            ws, channel = start_job(sh, w, [{"id": "c1"}, {"id": "c2"}])
            fid = channel[len("ws:fid:"):]
            assert publish_in_one_write(shared_redis().port, [
                ("cancel:" + fid, "by the remote"),
                (channel, '{"id":"c1","status":"done"}')]) == [1, 1]
            frames, code = read_to_close(ws, "the cancel")
            assert code == 1011 and len(frames) == 1, (frames, code)
            assert json.loads(frames[0])["error"] == "cancelled", frames
            assert sh.metrics()["statushost_updates_tracked_total"] == 0
            sh.wait_log(r"job cancelled 0/2 tasks done")
            ws.shutdown()
    finally:
        shutil.rmtree(d)


DONE_STATUSES = ("已完成", "done", "completed")


def update_mix(rng, tasks, k):
    """k updates of the default policy's job of tasks (ids: strings, and integers), of every
    shape a remote may publish: plain ones (the core's), and escaped, nested, numeric-id,
    duplicate-key, non-UTF-8, foreign and non-JSON ones (on_publish's) → [(payload,
    task key or None, status, sendable)], as on_publish judges each."""
    out = []
    for _ in range(k):
        t = rng.choice(tasks + ["nope"])
        key = str(t)
        st = rng.choice(DONE_STATUSES if rng.random() < 0.1 else ("进行中", "queued"))
        sid = json.dumps(t)
        sst = json.dumps(st, ensure_ascii=False)
        form = rng.randrange(10) if rng.random() < 0.4 else rng.randrange(2)  # mostly plain
        if isinstance(t, int):
            form = rng.choice((0, 1, 6))
        if form == 0:
            p = '{"id":%s,"status":%s}' % (sid, sst)
        elif form == 1:
            p = '{ "status" : %s ,\t"id" :%s , "n": -1.25, "ok": true, "z": null }' % (sst, sid)
        elif form == 2:  # an escaped id: on_publish
            p = '{"id":"%s\\u00%02x","status":%s}' % (key[:-1], ord(key[-1]), sst)
        elif form == 3:  # an escaped status: on_publish
            p = '{"id":%s,"status":%s}' % (sid, json.dumps(st))
        elif form == 4:  # a nested value: on_publish
            p = '{"id":%s,"status":%s,"trace":{"at":[1,2]}}' % (sid, sst)
        elif form == 5:  # the last id wins: on_publish
            p = '{"id":"nope","id":%s,"status":%s}' % (sid, sst)
        elif form == 6:  # an integral float id: on_publish (the task "7" for 7.0)
            p = '{"id":%s,"status":%s}' % (("%d.0" % t) if isinstance(t, int) else sid, sst)
        elif form == 7:  # not UTF-8: not sendable, not counted
            p = '{"id":%s,"status":%s,"m":"\udcff"}' % (sid, sst)  # the byte 0xff
        elif form == 8:  # not JSON
            p = '{"id":%s,"status":%s' % (sid, sst)
            key = None
        else:  # the id not a string
            p = '{"id":[%s],"status":%s}' % (sid, sst)
            key = None
        raw = p.encode("utf-8", "surrogateescape")
        if key == "nope":
            key = None
        out.append((raw, key, st, form != 7))
    return out


def expected(tasks, updates):
    """What the default policy's on_publish sends for updates, in order, and whether the
    job completes: → (frames, completed)."""
    keys, done, frames = {str(t) for t in tasks}, set(), []
    for raw, key, st, sendable in updates:
        if key not in keys or not sendable:
            continue
        frames.append(raw)
        if st in DONE_STATUSES:
            done.add(key)
        if done == keys:
            return frames, True
    return frames, False


@S.test
def a_mixed_flood_is_sent_as_on_publish_would():
    """Three jobs of the default policy, each fed 400 updates of every shape (plain ones
    the core forwards, and escaped, nested, numeric-id, duplicate-key, non-UTF-8, foreign
    and non-JSON ones on_publish sees), published in bursts of random size (so that core
    and on_publish interleave, behind queued on_publish tasks or not), then every task's
    done update: the client gets exactly the frames on_publish alone would send, in
    publish order, and the close 1000 right after the update that completes the job."""
    rng = random.Random(20261127)
    with worker() as w, host("scripts/default.lua", remote_url(w)) as sh:
        for _ in range(3):
            tasks = ["t%d" % i for i in range(60)] + [7, 8]
            ws, channel = start_job(sh, w, [{"id": t} for t in tasks])
            ups = update_mix(rng, tasks, 400)
            ups += [(('{"id":%s,"status":"done"}' % json.dumps(t)).encode(), str(t), "done", True)
                    for t in tasks]
            want, completed = expected(tasks, ups)
            assert completed
            i = 0
            while i < len(ups):
                n = rng.choice((1, 1, 2, 5, 20, 60))
                publish(channel, [u[0] for u in ups[i:i + n]])
                i += n
            frames, code = read_to_close(ws, "the job's completion")
            assert code == 1000, (code, frames[-3:])
            assert frames == want, next((j, frames[j], want[j]) for j in range(len(want))
                                        if j >= len(frames) or frames[j] != want[j])
            ws.shutdown()
        m = sh.metrics()
        assert m["statushost_updates_tracked_total"] > 30, m["statushost_updates_tracked_total"]
        assert m["statushost_jobs_completed_total"] == 3
        assert m["statushost_lua_errors_total"] == 0



@S.test
def a_job_tracked_before_a_reload_ends_on_its_generation():
    """SIGHUP while a job is tracked: the job's connection stays on the old generation,
    whose Lua state the core goes on updating (job.done, job.ndone); the last update runs
    the old generation's on_publish, which completes the job 1000."""
    with worker() as w, host("scripts/default.lua", remote_url(w)) as sh:
        ws, channel = start_job(sh, w, [{"id": "h1"}, {"id": "h2"}, {"id": "h3"}])
        seq = [('{"id":"h%d","status":"done"}' % i).encode() for i in (1, 2, 3)]
        assert publish(channel, seq[:1]) == [1]
        assert ws.recv() == (OP_TEXT, seq[0])
        mark = sh.mark()
        sh.signal(signal.SIGHUP)
        sh.wait_log(r"reloaded .*: generation 2 serves new connections", start=mark)
        assert publish(channel, seq[1:2]) == [1]
        assert ws.recv() == (OP_TEXT, seq[1])
        assert publish(channel, seq[2:]) == [1]
        frames, code = read_to_close(ws, "the job's completion")
        assert frames == seq[2:] and code == 1000, (frames, code)
        m = sh.metrics()
        assert m["statushost_updates_tracked_total"] == 2, m["statushost_updates_tracked_total"]
        assert m["statushost_jobs_completed_total"] == 1
        sh.wait_log(r"job completed 3/3 tasks done", start=mark)
        ws.shutdown()


if __name__ == "__main__":
    S.run()  # the shared redis-server is stopped at exit (harness)
