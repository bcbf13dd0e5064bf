#!/usr/bin/env python3
"""Redis connection health: a flapping subscriber connection (log lines at most one a
second, a retry delay that grows), a hung Redis (SIGSTOP: replies owed and never sent,
idle connections whose PING is not answered; a hung master of a Redis Cluster). Real
redis-server (and cluster), real statushost, real WebSocket clients.

    python3 tests/integration/test_redis_health.py [test_name ...]
"""
import contextlib
import datetime
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Redis, Statushost, Suite, WsClient, http_get, wait_until  # noqa: E402

S = Suite("test_redis_health")
POLICY = "tests/integration/policies/redis_health.lua"
STATE_LINE = re.compile(r"^(\S+) \S+ +\[-\] (redis up|redis unavailable: reconnecting)"
                        r"(?: \((\d+) up/down changes since the last line\))?$")


def ws(sh, timeout=10):
    c = WsClient(sh.port, timeout=timeout)
    assert c.status == 101, c.status
    return c


def subscribe(c, channel):
    c.send_text("sub " + channel)
    got = c.recv_text()
    assert got == "subscribed " + channel, got


@contextlib.contextmanager
def subscribed(channel, *sets):
    """A redis-server, statushost on it (--set each of sets) with Redis up, and a client
    subscribed to channel: yields (redis, statushost, client)."""
    with Redis() as r, Statushost(POLICY, redis=r,
                                  sets=["shutdown_grace_ms=300"] + list(sets)) as sh:
        sh.wait_log(r"redis up")
        c = ws(sh, timeout=15)
        subscribe(c, channel)
        yield r, sh, c
        c.shutdown()


def healthz(sh):
    return http_get(sh.port, "/healthz")[0]


def numsub(r, channel):
    return int(r.cmd("PUBSUB", "NUMSUB", channel)[1])


def state_lines(sh, start):
    """The server's Redis state lines logged since mark `start`:
    [(seconds since the epoch, "up" | "down", changes)]."""
    out = []
    for line in sh.log_text().splitlines()[start:]:
        m = STATE_LINE.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            out.append((t, "up" if m.group(2) == "redis up" else "down", int(m.group(3) or 1)))
    return out


def flap(r, seconds):
    """CLIENT KILL TYPE pubsub every 20 ms for `seconds` (what Redis does to a subscriber
    connection over client-output-buffer-limit pubsub, again and again while a channel
    is flooded). Returns the time.monotonic() of each kill that closed a connection."""
    kills = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if int(r.cmd("CLIENT", "KILL", "TYPE", "pubsub")):
            kills.append(time.monotonic())
        time.sleep(0.02)  # the pace of the attack, not a synchronisation
    return kills


def pending_waits_end(sh, c, channel, key):
    """With Redis (or the master of their slot) hung, c subscribes to channel and GETs
    key: both waits end within about redis_timeout_ms (1 s), the subscribe with
    "unavailable", the call as on any loss with "closed"; /healthz answers 503."""
    t0 = time.monotonic()
    c.send_text("sub " + channel)
    c.send_text("call GET " + key)
    got = sorted([c.recv_text(), c.recv_text()])
    waited = time.monotonic() - t0
    assert got == ["error closed", "error unavailable"], got
    assert waited < 4.0, "the pending waits ended after %.1f s" % waited
    assert healthz(sh) == 503


def comes_back(sh, r, c, mark, channel):
    """After SIGCONT: "redis up" is logged, /healthz answers 200 and `channel`, which c
    subscribed before Redis hung, delivers again."""
    sh.wait_log(r"\[-\] redis up", start=mark, timeout=15)
    assert healthz(sh) == 200
    wait_until(lambda: numsub(r, channel) == 1, what="%r re-subscribed" % channel)
    r.cmd("PUBLISH", channel, "back")
    assert c.recv_text() == channel + "|back"


def pings(r):
    """PING commands Redis has run since it started."""
    info = r.cmd("INFO", "commandstats")
    m = re.search(r"cmdstat_ping:calls=(\d+)", info)
    return int(m.group(1)) if m else 0


@S.test
def a_flapping_subscriber_connection_logs_redis_up_and_down_at_most_once_a_second():
    """Redis closes statushost's subscriber connection right after each restore for 3 s.
    The server's "redis up" / "redis unavailable: reconnecting" lines come at most once a
    second (they came twice per reconnect cycle: 29 of each in 3 s); a line logged after
    changes were held back counts them; once the flapping ends the last line says "redis
    up", and the subscription works."""
    with subscribed("flap") as (r, sh, c):
        start = sh.mark()
        kills = flap(r, 3.0)
        assert len(kills) >= 3, "only %d kills: no flapping to observe" % len(kills)
        # the retry delay is at most 5 s, the last line comes at most a second after
        wait_until(lambda: state_lines(sh, start)[-1][1] == "up", timeout=15,
                   what="a last state line 'redis up'")
        assert healthz(sh) == 200
        assert numsub(r, "flap") == 1
        r.cmd("PUBLISH", "flap", "after")
        assert c.recv_text() == "flap|after"
        lines = state_lines(sh, start)
        text = "\n".join("%.3f %s %d" % l for l in lines)
        ups = [l for l in lines if l[1] == "up"]
        downs = [l for l in lines if l[1] == "down"]
        assert lines[-1][1] == "up", text
        # 3 s of flapping and its end: one line a second at most (and the one before)
        assert len(ups) <= 5 and len(downs) <= 5, "%d kills gave %d up and %d down lines:\n%s" % (
            len(kills), len(ups), len(downs), text)
        gaps = [b[0] - a[0] for a, b in zip(lines, lines[1:])]
        assert all(g >= 0.95 for g in gaps), "state lines less than a second apart:\n" + text
        assert any(l[2] > 1 for l in lines), "no line counts the changes held back:\n" + text


@S.test
def a_connection_lost_right_after_each_restore_is_retried_ever_more_slowly():
    """The retry delay of a subscriber connection that Redis closes right after each
    restore doubles (100, 200, 400 ms ... up to 5 s) instead of starting over at 100 ms
    with each restore (about 40 reconnections in 4 s, for ever). Once the connection has
    stayed up for a second, a loss is retried after 100 ms again."""
    with subscribed("backoff") as (r, sh, c):
        kills = flap(r, 4.0)
        gaps = [b - a for a, b in zip(kills, kills[1:])]
        desc = "seconds between kills: " + ", ".join("%.2f" % g for g in gaps)
        assert len(kills) <= 8, "%d reconnections in 4 s; %s" % (len(kills), desc)
        # the kills come ever further apart: 0.1, 0.2, 0.4, 0.8, 1.6 s (+ the reconnection)
        assert len(gaps) >= 3 and all(b > a for a, b in zip(gaps, gaps[1:])), desc
        assert gaps[-1] >= 0.7, desc
        wait_until(lambda: numsub(r, "backoff") == 1, timeout=10, what="re-subscribed")
        time.sleep(1.2)  # the connection stays up a second: the time is what is tested
        assert numsub(r, "backoff") == 1
        assert int(r.cmd("CLIENT", "KILL", "TYPE", "pubsub")) == 1
        t0 = time.monotonic()
        wait_until(lambda: numsub(r, "backoff") == 1, timeout=10, what="re-subscribed")
        back = time.monotonic() - t0
        assert back < 1.0, "re-subscribed %.2f s after a loss that followed a long uptime" % back
        r.cmd("PUBLISH", "backoff", "after")
        assert c.recv_text() == "backoff|after"


@S.test
def a_hung_redis_is_noticed_pending_waits_end_and_healthz_says_so():
    """redis-server is SIGSTOPped (a frozen VM, a Redis stuck on disk, a partition that
    drops packets: TCP notices none of them for minutes) with a SUBSCRIBE and a GET
    pending. With redis_timeout_ms=1000, each connection owing a reply that has received
    nothing for 1 s is dropped: the subscribe ends with "unavailable", the call as on any
    loss with "closed", /healthz answers 503 and the log says why. SIGCONT: the bus comes
    back and the live subscription works again. (Before: no answer after 15 s, /healthz
    200 "ok", nothing logged.)"""
    with subscribed("before", "redis_timeout_ms=1000") as (r, sh, c):
        c.send_text("call SET k v")
        assert c.recv_text() == "reply OK"
        mark = sh.mark()
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            pending_waits_end(sh, c, "after", "k")
            sh.wait_log(r"redis: command connection to \S+ lost: no reply within 1000 ms",
                        start=mark)
            sh.wait_log(r"redis: subscriber 0 connection to \S+ lost: no reply within 1000 ms",
                        start=mark)
            sh.wait_log(r"\[-\] redis unavailable: reconnecting", start=mark)
            c.send_text("call GET k")  # while the bus is down: refused at once
            assert c.recv_text() == "error unavailable"
            assert healthz(sh) == 503
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        comes_back(sh, r, c, mark, "before")


@S.test
def an_idle_bus_notices_a_hung_redis_by_its_ping():
    """Nothing is pending when redis-server is SIGSTOPped: each idle connection sends a
    PING after redis_timeout_ms / 2 of silence, and is dropped when that PING has had no
    answer for redis_timeout_ms: "redis unavailable" within about 1.5 s for 1000 ms."""
    with subscribed("idle", "redis_timeout_ms=1000") as (r, sh, c):
        mark = sh.mark()
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            sh.wait_log(r"\[-\] redis unavailable: reconnecting", start=mark, timeout=10)
            noticed = time.monotonic() - t0
            assert noticed < 3.0, "noticed after %.1f s" % noticed
            assert healthz(sh) == 503
            sh.wait_log(r"connection to \S+ lost: no reply within 1000 ms", start=mark)
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        comes_back(sh, r, c, mark, "idle")


@S.test
def idle_connections_ping_every_half_timeout_busy_ones_do_not():
    """redis_timeout_ms=1000: a connection that received nothing for 500 ms sends a PING,
    so two idle connections (command + 1 subscriber) send 14 to 16 in 4 s and never more
    than 18. While messages arrive on the subscriber connection every 50 ms it sends none:
    only the command connection's remain (about half as many: at most 9, and one more
    the subscriber connection may have sent as the messages began)."""
    with subscribed("busy", "redis_timeout_ms=1000") as (r, sh, c):
        base = pings(r)
        time.sleep(4.0)  # the window measured
        idle = pings(r) - base
        assert 11 <= idle <= 18, "%d PINGs in 4 s from two idle connections" % idle
        base = pings(r)
        end = time.monotonic() + 4.0
        sent = 0
        while time.monotonic() < end:
            assert r.cmd("PUBLISH", "busy", str(sent)) == 1
            sent += 1
            time.sleep(0.05)  # the pace of the messages
        busy = pings(r) - base
        for i in range(sent):
            assert c.recv_text() == "busy|%d" % i
        print("     PINGs in 4 s: %d idle, %d with messages every 50 ms" % (idle, busy), flush=True)
        assert busy <= 10 and idle - busy >= 4, (
            "%d PINGs in 4 s with messages every 50 ms on the subscriber connection "
            "(idle: %d)" % (busy, idle))


@S.test
def a_hung_cluster_master_is_noticed_and_its_waits_end():
    """redis_cluster: the master serving a channel is SIGSTOPped with an SSUBSCRIBE and a
    GET of its slot pending: both its connections are dropped after redis_timeout_ms,
    the waits end ("unavailable", "closed"), /healthz answers 503; SIGCONT: back, and
    the live subscription delivers again."""
    from test_cluster import Cluster  # a real cluster, 3 masters
    with Cluster(masters=3, replicas=0) as cl, \
            Statushost(POLICY, sets=["redis_cluster=" + cl.seeds, "redis_timeout_ms=1000",
                                     "shutdown_grace_ms=300"]) as sh:
        sh.wait_log(r"redis up", timeout=15)
        c = ws(sh, timeout=15)
        subscribe(c, "{hc}live")
        slot = int(cl.nodes[0].cmd("CLUSTER", "KEYSLOT", "hc"))
        owner = next(n for n in cl.nodes
                     if any(s[0] <= slot <= s[1] for s in
                            [tuple(r[:2]) for r in n.cmd("CLUSTER", "SLOTS")
                             if r[2][1] == n.port]))
        mark = sh.mark()
        os.kill(owner.proc.pid, signal.SIGSTOP)
        try:
            pending_waits_end(sh, c, "{hc}after", "{hc}k")
            sh.wait_log(r"redis: (command|subscriber) 127\.0\.0\.1:%d connection to .* lost: "
                        r"no reply within 1000 ms" % owner.port, start=mark)
        finally:
            os.kill(owner.proc.pid, signal.SIGCONT)
        wait_until(lambda: healthz(sh) == 200, timeout=20, interval=0.05, what="/healthz 200")
        wait_until(lambda: int(owner.cmd("PUBSUB", "SHARDNUMSUB", "{hc}live")[1]) == 1,
                   timeout=20, what="'{hc}live' re-subscribed")
        owner.cmd("SPUBLISH", "{hc}live", "back")
        assert c.recv_text() == "{hc}live|back"
        c.shutdown()


# ---- redis_max_reply_bytes: a reply or a message over it is not read

BOUND = 1 << 20
TOO_LARGE = "reply too large (redis_max_reply_bytes %d)" % BOUND


def call(c, *words):
    c.send_text("call " + " ".join(words))
    return c.recv_text()


def commands_work_again(c):
    """A command succeeds again (on the command connection made after the drop)."""
    wait_until(lambda: call(c, "SET", "after", "1") == "reply OK", timeout=15,
               what="SET on the restored command connection")
    assert call(c, "GET", "after") == "reply 1"


def big_reply_refused(r, sh, c, words, what):
    """The command `words` (its reply over the bound) gets nil, TOO_LARGE; the reply is
    not held (RSS does not grow by its size); one line says why the command connection
    was dropped; the next command works."""
    mark, rss0 = sh.mark(), sh.rss_kb()
    got = call(c, *words)
    assert got == "error " + TOO_LARGE, got[:200]
    grew = sh.rss_kb() - rss0
    assert grew < 8 * 1024, "RSS grew by %d KiB reading %s" % (grew, what)
    sh.wait_log(r"redis: command connection to \S+ lost: " + re.escape(TOO_LARGE), start=mark)
    commands_work_again(c)


@S.test
def a_get_over_redis_max_reply_bytes_gets_an_error_not_the_value():
    """GET of a 32 MiB string with redis_max_reply_bytes at 1 MiB: nil, "reply too large
    (redis_max_reply_bytes 1048576)", decided from the bulk string's header (statushost's
    RSS does not grow by the value); the connection is dropped (one line) and the next
    command, on a new connection, works. A value under the bound is still read whole.
    Before: the 32 MiB were read whole and handed to the policy."""
    with subscribed("unused", "redis_max_reply_bytes=%d" % BOUND) as (r, sh, c):
        r.cmd("SETRANGE", "big", 32 * BOUND - 1, "x")
        r.cmd("SETRANGE", "fits", BOUND // 2 - 1, "y")
        big_reply_refused(r, sh, c, ["GET", "big"], "a 32 MiB GET")
        got = call(c, "GET", "fits")
        assert got == "reply " + "\0" * (BOUND // 2 - 1) + "y", len(got)


@S.test
def an_aggregate_reply_of_a_million_elements_is_refused_at_its_header():
    """LRANGE of a 1,000,000-element list (a few MiB on the wire, over 50 MiB as reply
    objects) with redis_max_reply_bytes at 1 MiB: refused when the array header arrives
    (56 bytes charged per element), nothing of it held; a 100-element LRANGE still works.
    Before: the million elements were read, made into objects and pushed into Lua."""
    with subscribed("unused", "redis_max_reply_bytes=%d" % BOUND) as (r, sh, c):
        r.cmd("EVAL", "for i = 1, 1000000, 1000 do local t = {} for j = i, i + 999 do "
              "t[#t + 1] = j end redis.call('RPUSH', KEYS[1], unpack(t)) end", "1", "many")
        assert r.cmd("LLEN", "many") == 1000000
        big_reply_refused(r, sh, c, ["LRANGE", "many", "0", "-1"], "a million elements")
        # many small elements add up too: 20,000 of them are 1.1 MiB of reply objects
        big_reply_refused(r, sh, c, ["LRANGE", "many", "0", "19999"], "20,000 elements")
        assert call(c, "LRANGE", "many", "0", "99").startswith("reply table")


def pubsub_clients(r):
    """Redis' ids of its subscriber clients (CLIENT LIST TYPE pubsub)."""
    return sorted(re.findall(r"\bid=(\d+)", r.cmd("CLIENT", "LIST", "TYPE", "pubsub")))


@S.test
def a_publish_over_redis_max_reply_bytes_is_skipped_and_its_connection_kept():
    """Two clients subscribed to two channels of statushost's one subscriber connection
    (redis_sub_connections=1), redis_max_reply_bytes at 1 MiB, Redis' pubsub output limit
    off: a 32 MiB PUBLISH to one channel is skipped as it arrives (statushost's RSS grows
    by less than 2 MiB; one line names the channel and the size;
    statushost_redis_messages_too_large_total counts it) and the connection is kept (the
    same Redis client, no reconnect, no loss line): the next PUBLISH to each channel
    reaches its client. Before: the connection was dropped at the big message's header,
    and the other channel's messages were lost until it was back."""
    with subscribed("big", "redis_max_reply_bytes=%d" % BOUND,
                    "redis_sub_connections=1") as (r, sh, c):
        other = ws(sh, timeout=15)
        subscribe(other, "small")
        r.cmd("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        ids, m0 = pubsub_clients(r), sh.metrics()
        assert len(ids) == 1, ids
        assert m0["statushost_redis_messages_too_large_total"] == 0, m0
        mark, rss0 = sh.mark(), sh.rss_kb()
        assert r.cmd("EVAL", "return redis.call('PUBLISH', KEYS[1], string.rep('x', ARGV[1]))",
                     "1", "big", 32 * BOUND) == 1
        assert r.cmd("PUBLISH", "big", "after") == 1
        assert r.cmd("PUBLISH", "small", "hello") == 1
        got = c.recv_text()
        assert got == "big|after", got[:100]
        got = other.recv_text()
        assert got == "small|hello", got[:100]
        grew = sh.rss_kb() - rss0
        assert grew < 2 * 1024, "RSS grew by %d KiB for a 32 MiB message" % grew
        sh.wait_log(r'redis: pub/sub message on channel "big" \(%d bytes\) skipped: over '
                    r"redis_max_reply_bytes \(%d\)" % (32 * BOUND, BOUND), start=mark)
        m = sh.metrics()
        assert m["statushost_redis_messages_too_large_total"] == 1, m
        assert m["statushost_redis_reconnects_total"] == m0["statushost_redis_reconnects_total"]
        assert pubsub_clients(r) == ids, (pubsub_clients(r), ids)
        log = "\n".join(sh.log_text().splitlines()[mark:])
        assert " lost: " not in log and "redis unavailable" not in log, log
        other.shutdown()


if __name__ == "__main__":
    S.run()
