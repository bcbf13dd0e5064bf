#!/usr/bin/env python3
"""Redis Cluster (config redis_cluster): a real cluster of 3 masters and 3 replicas
started here on free ports, statushost with scripts/default.lua and the remote worker
example (examples/remote_worker.lua, publishing with SPUBLISH), both in cluster mode.

- jobs_across_cluster_with_master_failover: 1,000 jobs; mid-run a master is SIGKILLed
  and its replica promoted (CLUSTER FAILOVER TAKEOVER); every job completes or fails
  with `unavailable`, none is lost (no timeout), nothing hangs; afterwards the bus is up
  with the new master and new jobs complete.
- keyed_commands_routed_to_their_slot: host.redis.call on keys of every master, a
  cross-slot command refused with CROSSSLOT, a keyless command answered.

    python3 tests/integration/test_cluster.py [test_name ...]
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Redis, Statushost, WsClient, Suite, http_get, http_request,  # noqa: E402
                     free_port, wait_until, REDIS_SERVER)

S = Suite("test_cluster")
POLICY = "scripts/default.lua"
WORKER = "examples/remote_worker.lua"
REDIS_CLI = os.environ.get("REDIS_CLI", "/usr/bin/redis-cli")


class ClusterNode(Redis):
    """One redis-server in cluster mode (its own cluster bus port, files in dir)."""

    def __init__(self, dir_):
        self.dir = dir_
        self.bus_port = free_port()
        super().__init__()

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
             "--cluster-config-file", "nodes-%d.conf" % self.port,
             "--cluster-node-timeout", "1000", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness._live.append(self)  # stopped at exit whatever happens
        wait_until(self._ping, what="redis-server on %d" % self.port)

    def info(self, section):
        text = self.cmd(section[0], section[1]) if isinstance(section, tuple) else self.cmd(section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Cluster:
    """3 masters + 3 replicas on free ports, stopped by PID."""

    def __init__(self, masters=3, replicas=1):
        self.dir = tempfile.mkdtemp(prefix="sh_cluster_")
        self.nodes = []
        try:
            for _ in range(masters * (1 + replicas)):
                self.nodes.append(ClusterNode(self.dir))
            subprocess.run([REDIS_CLI, "--cluster", "create"] +
                           ["127.0.0.1:%d" % n.port for n in self.nodes] +
                           ["--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                           timeout=60)
            wait_until(self.healthy, 30, 0.05, what="cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    @property
    def seeds(self):
        return ",".join("127.0.0.1:%d" % n.port for n in self.nodes)

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def roles(self):
        """{port: (role, master port or None)} from CLUSTER NODES of a live node."""
        live = next(n for n in self.nodes if n.proc.poll() is None)
        ids, out = {}, {}
        lines = live.cmd("CLUSTER", "NODES").splitlines()
        for line in lines:
            f = line.split()
            ids[f[0]] = int(f[1].split("@")[0].rsplit(":", 1)[1])
        for line in lines:
            f = line.split()
            port = ids[f[0]]
            role = "master" if "master" in f[2] else "replica"
            out[port] = (role, ids.get(f[3]) if role == "replica" else None)
        return out

    def healthy(self):
        for n in self.nodes:
            if n.proc.poll() is not None:
                continue
            if n.info(("CLUSTER", "INFO")).get("cluster_state") != "ok":
                return False
            repl = n.info(("INFO", "replication"))
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return False
        return True

    def stop(self):
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def ready(sh):
    sh.wait_log(r"redis up", timeout=15)
    return sh


def run_job(port, n, base, results, idx):
    """One client: a batch of n tasks → results[idx] = "completed" | "unavailable" |
    a description of anything else."""
    tasks = [{"id": str(base + i), "status": "进行中"} for i in range(n)]
    try:
        ws = WsClient(port, timeout=30)
        ws.send_json(tasks)
        frames, code = ws.read_to_close()
        ws.shutdown()
    except Exception as e:  # noqa: BLE001 - a hang or a reset is an outcome to report
        results[idx] = "error: %r" % e
        return
    msgs = [json.loads(f) for f in frames]
    errors = [m for m in msgs if "error" in m]
    ids = {m["id"] for m in msgs if "id" in m}
    if code == 1000 and not errors and ids == {t["id"] for t in tasks}:
        results[idx] = "completed"
    elif code == 1013 and [e["error"] for e in errors] == ["unavailable"]:
        results[idx] = "unavailable"
    else:
        results[idx] = "code %s, errors %s, %d/%d ids" % (code, errors, len(ids), n)


def run_jobs(port, count, parallel, base, results, on_progress=None):
    """count jobs, parallel at a time, ids from base; results filled in place."""
    lock = threading.Lock()
    state = {"next": 0}

    def loop():
        while True:
            with lock:
                i = state["next"]
                if i >= count:
                    return
                state["next"] += 1
            run_job(port, 3, base + 10 * i, results, i)
            if on_progress:
                on_progress()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a job hung"


@S.test
def jobs_across_cluster_with_master_failover():
    t0 = time.monotonic()
    with Cluster() as cl:
        seeds = cl.seeds
        with ready(Statushost(WORKER, sets=["redis_cluster=" + seeds, "tick_ms=50",
                                            "complete_probability=0.5",
                                            "max_republish=200"])) as w, \
                ready(Statushost(POLICY, sets=[
                    "redis_cluster=" + seeds, "job_timeout_ms=20000",
                    "remote_url=http://127.0.0.1:%d/remote/message" % w.port])) as sh:
            m = sh.metrics()
            assert m["statushost_redis_up"] == 1, m
            roles = cl.roles()
            masters = sorted(p for p, (r, _) in roles.items() if r == "master")
            assert len(masters) == 3, roles
            victim = masters[0]
            replica = next(p for p, (r, mp) in roles.items() if mp == victim)
            print("  cluster up in %.1fs; killing master %d (replica %d) mid-run" % (
                time.monotonic() - t0, victim, replica), flush=True)

            total = 1000
            results = [None] * total
            done = {"n": 0, "killed_at": None}
            lock = threading.Lock()

            def progress():
                with lock:
                    done["n"] += 1
                    if done["n"] != 300:
                        return
                    done["killed_at"] = time.monotonic()
                cl.node(victim).kill()
                cl.node(replica).cmd("CLUSTER", "FAILOVER", "TAKEOVER")

            t_run = time.monotonic()
            run_jobs(sh.port, total, 40, 100000, results, progress)
            elapsed = time.monotonic() - t_run
            assert done["killed_at"] is not None
            outcomes = {}
            for r in results:
                outcomes[r] = outcomes.get(r, 0) + 1
            print("  %d jobs in %.1fs: %s" % (total, elapsed, outcomes), flush=True)
            bad = {k: v for k, v in outcomes.items() if k not in ("completed", "unavailable")}
            assert not bad, "lost or broken jobs: %s" % bad
            assert outcomes.get("completed", 0) >= 700, outcomes  # the others: unavailable

            # the promoted replica serves the victim's slots; the bus is up again
            wait_until(lambda: cl.roles()[replica][0] == "master", 10, 0.05,
                       what="replica %d promoted" % replica)
            wait_until(lambda: sh.metrics()["statushost_redis_up"] == 1, 10, 0.05,
                       what="statushost redis up after the failover")
            assert http_get(sh.port, "/healthz")[0] == 200
            sh.wait_log(r"redis: .*(subscriber|command) 127\.0\.0\.1:%d" % victim)
            # the victim's live channels moved to the promoted replica (their jobs then
            # completed: none was lost above)
            moved = sh.wait_log(r"redis: subscribing (\d+) channels \(subscriber "
                                r"127\.0\.0\.1:%d connection\)" % replica)
            assert int(moved.group(1)) >= 1, moved.group(0)
            # and new jobs complete, on every shard
            after = [None] * 60
            run_jobs(sh.port, 60, 20, 900000, after)
            assert after == ["completed"] * 60, after
            # nothing left subscribed on any live master
            for p in masters[1:] + [replica]:
                wait_until(lambda: cl.node(p).cmd("PUBSUB", "SHARDCHANNELS") == [], 5, 0.05,
                           what="no shard channel left on %d" % p)
            assert sh.proc.poll() is None and w.proc.poll() is None
    assert time.monotonic() - t0 < 90, "took %.1fs" % (time.monotonic() - t0)


ROUTES = r'''
local host = require "statushost"
return {
  config = { listen = "127.0.0.1:0" },
  routes = {
    ["GET /kv"] = function(req)
      local out = {}
      for i = 1, 60 do
        local k = "key:" .. i
        local ok, err = host.redis.call("SET", k, "v" .. i)
        if not ok then return 500, "SET " .. k .. ": " .. tostring(err) end
      end
      for i = 1, 60 do
        local v, err = host.redis.call("GET", "key:" .. i)
        if v ~= "v" .. i then return 500, "GET key:" .. i .. ": " .. tostring(v or err) end
      end
      -- same slot through a hash tag: one command
      assert(host.redis.call("MSET", "{u1}.a", "1", "{u1}.b", "2") == "OK")
      local both = host.redis.call("MGET", "{u1}.a", "{u1}.b")
      out[#out + 1] = both[1] .. both[2]
      local r, err = host.redis.call("MGET", "key:1", "key:2")
      out[#out + 1] = tostring(r) .. "|" .. tostring(err)
      out[#out + 1] = tostring(host.redis.call("PING"))
      out[#out + 1] = tostring(host.redis.call("EVAL", "return redis.call('GET', KEYS[1])", 1, "key:7"))
      return 200, table.concat(out, "\n")
    end,
  },
}
'''


@S.test
def keyed_commands_routed_to_their_slot():
    with Cluster() as cl:
        d = tempfile.mkdtemp(prefix="sh_cluster_kv_")
        try:
            script = os.path.join(d, "kv.lua")
            with open(script, "w") as f:
                f.write(ROUTES)
            with ready(Statushost(script, sets=["redis_cluster=127.0.0.1:%d" % cl.nodes[0].port])) as sh:
                status, _, body = http_request(sh.port, "GET", "/kv")
                body = body.decode()
                assert status == 200, (status, body)
                lines = body.split("\n")
                assert lines[0] == "12", lines
                assert lines[1] == "nil|CROSSSLOT Keys in request don't hash to the same slot", lines
                assert lines[2] == "PONG", lines
                assert lines[3] == "v7", lines
                # the keys really are spread over the three masters
                masters = [p for p, (r, _) in cl.roles().items() if r == "master"]
                counts = [int(cl.node(p).cmd("DBSIZE")) for p in masters]
                assert all(c >= 10 for c in counts), counts
                assert sum(counts) == 62, counts
                m = sh.metrics()
                assert m["statushost_redis_up"] == 1, m
                # one command connection per master (and to the seed, a master too unless
                # redis-cli made it a replica), no subscriber connection (no channel), none
                # to the other replicas
                names = []
                for n in cl.nodes:
                    for line in n.cmd("CLIENT", "LIST").splitlines():
                        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                        if f.get("name", "").startswith("statushost-"):
                            names.append((n.port, f["name"].rsplit("-", 1)[1]))
                want = set(masters) | {cl.nodes[0].port}
                assert sorted(names) == sorted((p, "cmd") for p in want), names
        finally:
            shutil.rmtree(d, ignore_errors=True)


def migrate_slot(cl, slot, src, dst, between=None):
    """Move hash slot `slot` (and its keys) from master src to master dst, as
    redis-cli --cluster reshard does; between() runs while the slot is migrating
    (its keys moved, src answering ASK for them)."""
    sid, did = cl.node(src).cmd("CLUSTER", "MYID"), cl.node(dst).cmd("CLUSTER", "MYID")
    cl.node(dst).cmd("CLUSTER", "SETSLOT", str(slot), "IMPORTING", sid)
    cl.node(src).cmd("CLUSTER", "SETSLOT", str(slot), "MIGRATING", did)
    while True:
        keys = cl.node(src).cmd("CLUSTER", "GETKEYSINSLOT", str(slot), "100")
        if not keys:
            break
        assert cl.node(src).cmd("MIGRATE", "127.0.0.1", str(dst), "", "0", "5000",
                                "KEYS", *keys) == "OK"
    if between:
        between()
    masters = [p for p, (r, _) in cl.roles().items() if r == "master"]
    for p in [dst, src] + [p for p in masters if p not in (src, dst)]:
        cl.node(p).cmd("CLUSTER", "SETSLOT", str(slot), "NODE", did)


KV = r'''
local host = require "statushost"
return {
  routes = {
    ["GET /set"] = function(req)
      local q = host.decode_args(req.query or "")
      return 200, tostring(host.redis.call("SET", q.k, q.v))
    end,
    ["GET /get"] = function(req)
      local v, err = host.redis.call("GET", host.decode_args(req.query or "").k)
      return 200, tostring(v or err)
    end,
    ["GET /sub"] = function(req)
      local h, err = host.subscribe(host.decode_args(req.query or "").ch, function() end)
      if not h then return 200, tostring(err) end
      h:unsubscribe()
      return 200, "subscribed"
    end,
  },
}
'''


@S.test
def resharding_moves_channels_and_commands():
    """A slot migrated to another master under a live job: the old master's
    `sunsubscribe` makes statushost fetch the map and re-subscribe the channel on the
    new master, and the job completes with updates published there; commands on keys
    of the slot follow the ASK answers while it migrates, and the MOVED answer once it
    has (sent with a stale map)."""
    with Cluster() as cl:
        seeds = cl.seeds
        d = tempfile.mkdtemp(prefix="sh_cluster_kv_")
        try:
            script = os.path.join(d, "kv.lua")
            with open(script, "w") as f:
                f.write(KV)
            with ready(Statushost(WORKER, sets=["redis_cluster=" + seeds,
                                                "complete_probability=0"])) as w, \
                    ready(Statushost(POLICY, sets=[
                        "redis_cluster=" + seeds, "job_timeout_ms=20000",
                        "remote_url=http://127.0.0.1:%d/remote/message" % w.port])) as sh, \
                    ready(Statushost(script, sets=["redis_cluster=" + seeds])) as kv, \
                    ready(Statushost(script, sets=["redis_cluster=" + seeds])) as kv2:
                masters = sorted(p for p, (r, _) in cl.roles().items() if r == "master")
                tasks = [{"id": str(i), "status": "x"} for i in (1, 2, 3)]
                ws = WsClient(sh.port, timeout=20)
                ws.send_json(tasks)
                channel = w.wait_log(r"job for (ws:fid:\S+) 3 tasks").group(1)
                slot = int(cl.node(masters[0]).cmd("CLUSTER", "KEYSLOT", channel))
                owner = next(p for p in masters if int(cl.node(p).cmd(
                    "PUBSUB", "SHARDNUMSUB", channel)[1]) == 1)
                other = next(p for p in masters if p != owner)

                def spublish(port, i):
                    return cl.node(port).cmd("SPUBLISH", channel,
                                             '{"id":"%d","status":"已完成"}' % i)

                assert spublish(owner, 1) == 1
                assert json.loads(ws.recv_text())["id"] == "1"

                # a key in the channel's slot (hash tag): written, then migrated
                key = "k{%s}" % channel
                status, _, body = http_request(kv.port, "GET", "/set?k=%s&v=hello" % quote(key))
                assert (status, body) == (200, b"OK"), body

                def during_migration():
                    # owner answers ASK for the keys it no longer has: followed with ASKING
                    for path, want in (("/get?k=%s" % quote(key), b"hello"),
                                       ("/set?k=%s&v=new" % quote(key + "2"), b"OK"),
                                       ("/get?k=%s" % quote(key + "2"), b"new")):
                        status, _, body = http_request(kv.port, "GET", path)
                        assert (status, body) == (200, want), (path, body)

                migrate_slot(cl, slot, owner, other, during_migration)
                assert int(cl.node(other).cmd("EXISTS", key + "2")) == 1  # written there
                wait_until(lambda: int(cl.node(other).cmd("PUBSUB", "SHARDNUMSUB",
                                                          channel)[1]) == 1,
                           5, 0.02, what="%s re-subscribed on %d" % (channel, other))
                assert int(cl.node(owner).cmd("PUBSUB", "SHARDNUMSUB", channel)[1]) == 0
                sh.wait_log(r"channel moved away; fetching the slot map")
                assert spublish(other, 2) == 1
                assert spublish(other, 3) == 1
                frames, code = ws.read_to_close()
                ws.shutdown()
                assert code == 1000, (code, frames)
                assert [json.loads(f)["id"] for f in frames] == ["2", "3"], frames

                # kv2's map is stale too: its SSUBSCRIBE goes to `owner`, which answers
                # MOVED: that subscription fails (unavailable) and the map is fetched again,
                # after which the channel subscribes on `other`
                sub = "/sub?ch=%s" % quote("c{%s}" % channel)
                body = http_request(kv2.port, "GET", sub)[2]
                assert body == b"unavailable", body
                kv2.wait_log(r"SSUBSCRIBE refused: MOVED %d " % slot)
                wait_until(lambda: http_request(kv2.port, "GET", sub)[2] == b"subscribed", 5,
                           0.02, what="kv2 subscribed after the map refresh")

                # kv's map is stale: GET goes to `owner`, which answers MOVED
                status, _, body = http_request(kv.port, "GET", "/get?k=%s" % quote(key))
                assert (status, body) == (200, b"hello"), body
                wait_until(lambda: kv.metrics()["statushost_redis_up"] == 1, 5, 0.02,
                           what="kv redis up")
        finally:
            shutil.rmtree(d, ignore_errors=True)


HEALTH = "tests/integration/policies/redis_health.lua"


@S.test
def an_spublish_over_redis_max_reply_bytes_is_skipped_and_its_connection_kept():
    """Two clients subscribed to two channels of one slot (one master's subscriber
    connection), redis_max_reply_bytes at 1 MiB, that master's pubsub output limit off: a
    32 MiB SPUBLISH to one channel is skipped as it arrives (RSS up less than 2 MiB, one
    line, counted in statushost_redis_messages_too_large_total), the connection is kept
    (the same Redis client) and the next SPUBLISH to each channel reaches its client.
    Before: the subscriber connection was dropped and reconnected."""
    big, small, bound = "{skip}big", "{skip}small", 1 << 20
    with Cluster(replicas=0) as cl, ready(Statushost(HEALTH, sets=[
            "redis_cluster=" + cl.seeds, "redis_max_reply_bytes=%d" % bound])) as sh:
        clients = []
        for ch in (big, small):
            c = WsClient(sh.port, timeout=15)
            c.send_text("sub " + ch)
            assert c.recv_text() == "subscribed " + ch
            clients.append(c)
        owner = next(n for n in cl.nodes
                     if int(n.cmd("PUBSUB", "SHARDNUMSUB", big, small)[3]) == 1)
        owner.cmd("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        ids = owner.cmd("CLIENT", "LIST", "TYPE", "pubsub")
        mark, rss0 = sh.mark(), sh.rss_kb()
        assert owner.cmd("EVAL", "return redis.call('SPUBLISH', KEYS[1], string.rep('x', "
                         "ARGV[1]))", "1", big, 32 * bound) == 1
        assert owner.cmd("SPUBLISH", big, "after") == 1
        assert owner.cmd("SPUBLISH", small, "hello") == 1
        assert clients[0].recv_text() == big + "|after"
        assert clients[1].recv_text() == small + "|hello"
        grew = sh.rss_kb() - rss0
        assert grew < 2 * 1024, "RSS grew by %d KiB for a 32 MiB message" % grew
        sh.wait_log(r'pub/sub message on channel "\{skip\}big" \(%d bytes\) skipped'
                    % (32 * bound), start=mark)
        assert sh.metrics()["statushost_redis_messages_too_large_total"] == 1
        assert [l.split()[0] for l in owner.cmd("CLIENT", "LIST", "TYPE", "pubsub").splitlines()] \
            == [l.split()[0] for l in ids.splitlines()], "the subscriber connection was replaced"
        assert " lost: " not in "\n".join(sh.log_text().splitlines()[mark:])
        for c in clients:
            c.shutdown()


@S.test
def bad_seed_list_is_a_one_line_error():
    """A redis_cluster value that is not host:port,... : exit 2 and one line naming it,
    for --check and for a start alike."""
    for extra in (["--check"], ["--listen", "127.0.0.1:0"]):
        p = subprocess.run([harness.BIN] + extra + ["--set", "redis_cluster=a:1,b:x", POLICY],
                           cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=10)
        err = p.stderr.decode().strip()
        assert p.returncode == 2, (extra, p.returncode, err)
        assert err == 'statushost: redis_cluster "a:1,b:x": expected host:port,host:port,...', err


if __name__ == "__main__":
    S.run()
