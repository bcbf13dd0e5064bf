#!/usr/bin/env python3
"""Regression tests for the findings of an attack on statushost's Redis side, as a
hostile or broken Redis server (or a proxy in front of one) sees it. Each test fails on
the code before its fix (its docstring says how).

    python3 tests/integration/test_attack13_redis.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 python3 tests/integration/test_attack13_redis.py

The real binary against FakeRedis, a raw socket server in this process that answers
the handshake (AUTH, SELECT, CLIENT SETNAME: +OK) and (UN)SUBSCRIBE as Redis does and
keeps each connection's subscriptions (a PUBLISH reaches only the connections
subscribed, as in Redis), so that a test can make it do what a real Redis does not.
Every wait is on an event (a log line, a command the fake receives, a WebSocket frame).
"""
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, Redis, Statushost, Suite, WsClient, http_get,  # noqa: E402
                     publish_in_one_write)

S = Suite("attack13_redis")
POL = os.path.join(ROOT, "tests", "integration", "policies")


def resp_cmd_parse(buf):
    """One RESP array of bulk strings at buf: (args, rest) or (None, buf)."""
    if not buf.startswith(b"*"):
        nl = buf.find(b"\r\n")
        if nl < 0:
            return None, buf
        return buf[:nl].split(), buf[nl + 2:]
    nl = buf.find(b"\r\n")
    if nl < 0:
        return None, buf
    n = int(buf[1:nl])
    i = nl + 2
    args = []
    for _ in range(n):
        nl = buf.find(b"\r\n", i)
        if nl < 0:
            return None, buf
        ln = int(buf[i + 1:nl])
        i = nl + 2
        if len(buf) < i + ln + 2:
            return None, buf
        args.append(buf[i:i + ln])
        i += ln + 2
    return args, buf[i:]


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def push(kind, ch, count):
    return b"*3\r\n" + bulk(kind) + bulk(ch) + b":%d\r\n" % count


class FakeConn:
    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.name = b""
        self.subs = set()
        self.lock = threading.Lock()
        self.closed = False

    def send(self, data):
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def close(self):
        with self.lock:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def run(self):
        buf = b""
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                d = b""
            if not d:
                break
            buf += d
            while True:
                args, buf = resp_cmd_parse(buf)
                if args is None:
                    break
                self.handle(args)
        with self.server.cv:
            self.closed = True
            self.server.cv.notify_all()

    def handle(self, args):
        cmd = args[0].upper() if args else b""
        srv = self.server
        with srv.cv:
            srv.log.append((self, [a for a in args]))
            srv.cv.notify_all()
        if cmd == b"CLIENT" and len(args) >= 3 and args[1].upper() == b"SETNAME":
            self.name = args[2]
            reply = srv.setname_reply(self) if srv.setname_reply else b"+OK\r\n"
            self.send(reply)
            with srv.cv:
                if b"-sub" in self.name:
                    srv.sub = self
                    srv.sub_conns += 1
                else:
                    srv.cmd = self
                    srv.cmd_conns += 1
                srv.cv.notify_all()
            return
        if cmd == b"SUBSCRIBE":
            out = b""
            for ch in args[1:]:
                if ch in srv.hold:  # not answered, not subscribed
                    continue
                with srv.cv:
                    self.subs.add(ch)
                    n = len(self.subs)
                out += push(b"subscribe", ch, n)
            self.send(out)
            return
        if cmd == b"UNSUBSCRIBE":
            out = b""
            for ch in args[1:]:
                with srv.cv:
                    self.subs.discard(ch)
                    n = len(self.subs)
                out += push(b"unsubscribe", ch, n)
            self.send(out)
            return
        if cmd in (b"SSUBSCRIBE", b"SUNSUBSCRIBE"):
            out = b""
            for ch in args[1:]:
                with srv.cv:
                    if cmd == b"SSUBSCRIBE":
                        self.subs.add(ch)
                    else:
                        self.subs.discard(ch)
                    n = len(self.subs)
                out += push(cmd.lower(), ch, n)
            with srv.cv:
                if srv.held is not None:  # answered by release()
                    srv.held.append((self, out))
                    return
            self.send(out)
            return
        if cmd == b"CLUSTER" and srv.shards is not None:
            self.send(srv.shards())
            return
        if cmd == b"PING":
            self.send(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n" if self.subs else b"+PONG\r\n")
            return
        if cmd in (b"GET",):
            self.send(b"$-1\r\n")
            return
        if cmd == b"PUBLISH":
            n = srv.publish(args[1], args[2])
            self.send(b":%d\r\n" % n)
            return
        self.send(b"+OK\r\n")


class FakeRedis:
    def __init__(self):
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.cv = threading.Condition()
        self.conns = []
        self.log = []
        self.sub = None
        self.cmd = None
        self.sub_conns = 0
        self.cmd_conns = 0
        self.setname_reply = None
        self.hold = set()  # channels whose SUBSCRIBE is neither done nor answered
        self.shards = None  # → the CLUSTER SHARDS reply (bytes), when a cluster node
        self.held = None    # a list: (S)SUBSCRIBE replies held there until release()
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = FakeConn(self, s)
            with self.cv:
                self.conns.append(c)
            threading.Thread(target=c.run, daemon=True).start()

    def publish(self, ch, payload, kind=b"message"):
        n = 0
        with self.cv:
            targets = [c for c in self.conns if not c.closed and ch in c.subs]
        for c in targets:
            c.send(b"*3\r\n" + bulk(kind) + bulk(ch) + bulk(payload))
            n += 1
        return n

    def release(self):
        """Send the replies held (self.held) and answer at once from now on."""
        with self.cv:
            held, self.held = self.held or [], None
        for c, out in held:
            c.send(out)

    def wait(self, pred, timeout=10, what="condition"):
        with self.cv:
            if not self.cv.wait_for(pred, timeout):
                raise AssertionError("fake redis: timed out waiting for " + what)

    def wait_cmd(self, want, start=0, timeout=10):
        """Await a command (a list of bytes, upper-cased name) logged at index >= start."""
        def seen():
            return any(a and [a[0].upper()] + a[1:] == want for _, a in self.log[start:])
        self.wait(seen, timeout, "command %r" % (want,))

    def mark(self):
        with self.cv:
            return len(self.log)

    def stop(self):
        self.stopping = True
        self.ls.close()
        for c in list(self.conns):
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def pub_host(fake, sets=()):
    """policies/pub_channels.lua on fake: "sub <ch>" answers "subscribed <ch>", each
    message comes back as "string|<ch>|<payload>"."""
    sh = Statushost(os.path.join(POL, "pub_channels.lua"), redis=fake.url,
                    sets=["redis_timeout_ms=2000", "shutdown_grace_ms=300"] + list(sets))
    fake.wait(lambda: fake.sub is not None and fake.cmd is not None, what="connections")
    return sh


@S.test
def test_server_unsubscribe_of_a_wanted_channel():
    """A server (or a proxy in front of it) that drops a channel still wanted, with an
    unsubscribe push nobody asked for: the bus says so and subscribes it again, and the
    next update reaches the client. Before: the push was taken for a reply to nothing
    and ignored; the channel stayed believed subscribed, no SUBSCRIBE was sent, no line
    was logged, and every later update of the channel was lost (the fake's PUBLISH
    reached no subscriber) until the connection happened to be lost."""
    with FakeRedis() as fake, pub_host(fake) as sh:
        ws = WsClient(sh.port)
        ws.send_text("sub c")
        assert ws.recv() == (1, b"subscribed c")
        assert fake.publish(b"c", b"one") == 1
        assert ws.recv() == (1, b"string|c|one")
        m, at = fake.mark(), sh.mark()
        with fake.cv:
            fake.sub.subs.discard(b"c")
        fake.sub.send(push(b"unsubscribe", b"c", 0))
        fake.wait_cmd([b"SUBSCRIBE", b"c"], start=m)
        sh.wait_log(r'the server unsubscribed channel "c", still wanted; subscribing it '
                    r'again \(1 so far\)', start=at)
        fake.wait(lambda: b"c" in fake.sub.subs, what="c subscribed again")
        assert fake.publish(b"c", b"two") == 1
        assert ws.recv() == (1, b"string|c|two")
        assert fake.sub_conns == 1  # no reconnect was needed


@S.test
def test_unsubscribe_push_does_not_confirm_a_subscribe():
    """An unsubscribe push for a channel whose SUBSCRIBE is still unanswered is no
    confirmation of it: conn:subscribe waits for the subscribe one. Before: it was
    counted as the SUBSCRIBE's reply, conn:subscribe answered true although the server
    had not subscribed the channel, and an update published right after that answer
    (the lost-update race the confirmation exists to close) reached no subscriber."""
    with FakeRedis() as fake, pub_host(fake) as sh:
        ws = WsClient(sh.port)
        m = fake.mark()
        fake.hold.add(b"d")
        ws.send_text("sub d")
        fake.wait_cmd([b"SUBSCRIBE", b"d"], start=m)
        fake.sub.send(push(b"unsubscribe", b"d", 0))
        # a message on a channel subscribed after it: once it arrives, the push was read
        ws.send_text("sub e")
        assert ws.recv() == (1, b"subscribed e"), "d was confirmed by an unsubscribe push"
        fake.hold.discard(b"d")
        with fake.cv:
            fake.sub.subs.add(b"d")
        fake.sub.send(push(b"subscribe", b"d", 2))
        assert ws.recv() == (1, b"subscribed d")
        assert fake.publish(b"d", b"x") == 1
        assert ws.recv() == (1, b"string|d|x")
        assert fake.sub_conns == 1


def crc16(data):
    """The cluster's key hash (CRC16-XMODEM)."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def shards_reply(shards):
    """CLUSTER SHARDS as Redis 7 answers it (RESP2): shards is [(port, [start, end, ...])],
    each shard one master on 127.0.0.1."""
    out = b"*%d\r\n" % len(shards)
    for port, ranges in shards:
        out += b"*4\r\n" + bulk(b"slots") + b"*%d\r\n" % len(ranges)
        out += b"".join(b":%d\r\n" % v for v in ranges)
        out += bulk(b"nodes") + b"*1\r\n*8\r\n" + bulk(b"port") + b":%d\r\n" % port
        out += bulk(b"ip") + bulk(b"127.0.0.1") + bulk(b"role") + bulk(b"master")
        out += bulk(b"id") + bulk(b"%040d" % port)
    return out


@S.test
def test_cluster_spontaneous_sunsubscribe_while_one_of_ours_is_owed():
    """Cluster mode, resharding: a channel X moved to another master, so the bus sent
    SUNSUBSCRIBE X to the old one; before that master answered it, it dropped another
    channel Y (its slot leaving too: a spontaneous sunsubscribe Y). The push names Y: it is
    no reply to our SUNSUBSCRIBE X; Y is fetched a new home and subscribed again. Before:
    the request's channel had been forgotten when X moved (NULL), so any sunsubscribe then
    passed for its reply: Y stayed believed subscribed, nothing was fetched or sent, and
    every later update of Y was lost without a word."""
    with FakeRedis() as a, FakeRedis() as b:
        x = next(n for n in (b"x%d" % i for i in range(100)) if 0 < crc16(n) % 16384 < 16383)
        sx = crc16(x) % 16384
        moved = [False]

        def shards():
            if not moved[0]:
                return shards_reply([(a.port, [0, 16383])])
            return shards_reply([(a.port, [0, sx - 1, sx + 1, 16383]), (b.port, [sx, sx])])
        a.shards = b.shards = shards
        sh = Statushost(os.path.join(POL, "pub_channels.lua"), redis=a.url,
                        sets=["redis_cluster=127.0.0.1:%d" % a.port, "redis_timeout_ms=2000",
                              "shutdown_grace_ms=300"])
        with sh:
            ws = WsClient(sh.port)
            for ch in (x, b"y", b"z"):  # x first: its SUNSUBSCRIBE heads the queue
                ws.send_text("sub " + ch.decode())
                assert ws.recv() == (1, b"subscribed " + ch)
            m = a.mark()
            moved[0] = True
            with a.cv:
                a.held = []
                a.sub.subs.discard(b"z")
            a.sub.send(push(b"sunsubscribe", b"z", 2))  # z's slot left: the map is fetched
            a.wait_cmd([b"SUNSUBSCRIBE", x], start=m)   # x moved to b: its reply is held
            b.wait_cmd([b"SSUBSCRIBE", x])
            m = a.mark()
            with a.cv:
                a.sub.subs.discard(b"y")
            a.sub.send(push(b"sunsubscribe", b"y", 1))  # before a answers SUNSUBSCRIBE x
            a.release()
            a.wait_cmd([b"SSUBSCRIBE", b"y"], start=m)
            a.wait(lambda: b"y" in a.sub.subs, what="y subscribed again")
            assert a.publish(b"y", b"after", b"smessage") == 1
            assert ws.recv() == (1, b"string|y|after")


def silent_dns():
    """A DNS server that reads every query and answers none (a resolver's timeout then
    decides), on a loopback address of its own; → (its address, the socket)."""
    for last in range(1, 250):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.13.53.%d" % last, 53))
        except OSError:
            sock.close()
            continue
        threading.Thread(target=lambda: [sock.recv(4096) for _ in iter(int, 1)],
                         daemon=True).start()
        return "127.13.53.%d" % last, sock
    raise AssertionError("no loopback address for the silent DNS server")


def resolver_wrapper(tmpdir, nameserver):
    """A command prefix that runs statushost in a mount namespace of its own whose
    /etc/resolv.conf names `nameserver` (2 s timeout, 1 attempt); None when this machine
    cannot (not root, no unshare)."""
    import shutil
    import subprocess
    conf = os.path.join(tmpdir, "resolv.conf")
    with open(conf, "w") as f:
        f.write("nameserver %s\noptions timeout:2 attempts:1\n" % nameserver)
    wrapper = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
               conf]
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    probe = subprocess.run(wrapper + ["cat", "/etc/resolv.conf"], capture_output=True)
    return wrapper if probe.returncode == 0 and nameserver.encode() in probe.stdout else None


@S.test
def test_unreachable_dns_does_not_freeze_the_loop():
    """A Redis named by a host name whose DNS server does not answer (down, partitioned):
    each connection attempt waits for the name to be resolved, off the event loop, so that
    clients are served meanwhile (an echo answers at once); the attempt fails with a line
    saying why, and is retried. Before: hiredis resolved the name itself, with getaddrinfo
    on the loop's thread, so the whole process froze for the resolver's timeout (2 s here,
    5 s x attempts by default) at every attempt of every connection, again and again while
    the name did not resolve: an echo waited seconds."""
    import tempfile
    import time
    addr, sock = silent_dns()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wrapper = resolver_wrapper(tmp, addr)
            if wrapper is None:
                print("  (skipped: needs root and unshare for a resolv.conf of its own)")
                return
            sh = Statushost(os.path.join(POL, "echo_text.lua"),
                            redis="redis://redis-s13.attack.example:6379", wrapper=wrapper,
                            sets=["redis_timeout_ms=1000", "shutdown_grace_ms=300"])
            with sh:
                ws = WsClient(sh.port)
                worst, n, t0 = 0.0, 0, time.monotonic()
                # echoes for 4 s: several attempts of both connections fall in it
                while time.monotonic() - t0 < 4:
                    t = time.monotonic()
                    ws.send_text("e%d" % n)
                    assert ws.recv() == (1, b"e%d" % n)
                    worst = max(worst, time.monotonic() - t)
                    n += 1
                sh.wait_log(r"redis: command connection to redis-s13\.attack\.example:6379 "
                            r"failed: (the host name was not resolved within the connect "
                            r"timeout|cannot resolve the host name)")
                assert worst < 1.5, "an echo waited %.2f s: the loop was frozen (the resolver waits 2 s)" % worst
    finally:
        sock.close()


@S.test
def test_host_names_resolved_off_the_loop_still_connect():
    """The other side of test_unreachable_dns_does_not_freeze_the_loop: a Redis named
    "localhost" (resolved on the thread pool, then connected to by address) is used as
    before: subscribed, published to, delivered; a name that does not resolve fails its
    attempts with a line saying so and /healthz answers 503, the process serving on."""
    with Redis() as redis:
        with Statushost(os.path.join(POL, "pub_channels.lua"),
                        redis="redis://localhost:%d" % redis.port,
                        sets=["shutdown_grace_ms=300"]) as sh:
            sh.wait_log(r"redis: bus up \(localhost:%d" % redis.port)
            ws = WsClient(sh.port)
            ws.send_text("sub c")
            assert ws.recv() == (1, b"subscribed c")
            assert redis.cmd("PUBLISH", "c", "v") == 1
            assert ws.recv() == (1, b"string|c|v")
    with Statushost(os.path.join(POL, "echo_text.lua"), redis="redis://nosuchhost.invalid:6379",
                    sets=["shutdown_grace_ms=300"]) as sh:
        sh.wait_log(r"redis: command connection to nosuchhost\.invalid:6379 failed: "
                    r"(cannot resolve the host name|the host name was not resolved)")
        assert http_get(sh.port, "/healthz")[0] == 503
        ws = WsClient(sh.port)
        ws.send_text("hi")
        assert ws.recv() == (1, b"hi")


@S.test
def test_cluster_map_repeating_slots_is_refused():
    """A cluster node whose CLUSTER SHARDS gives the same slots over and over (20,000
    times 0-16383 here; 600,000 times fit in the default redis_max_reply_bytes) is no slot
    map: it is refused with a line and fetched again, and a sound map is then taken. Before:
    it was taken, each range's slots assigned one by one, a loop of 16,384 x ranges (about
    2.5 s of a stalled event loop for 600,000 ranges, optimized; far more under a
    sanitizer) at every fetch, which the node can have repeated by answering MOVED or
    pushing an sunsubscribe after each."""
    with FakeRedis() as a:
        bad = [True]
        a.shards = lambda: shards_reply([(a.port, [0, 16383] * (20000 if bad[0] else 1))])
        sh = Statushost(os.path.join(POL, "echo_text.lua"), redis=a.url,
                        sets=["redis_cluster=127.0.0.1:%d" % a.port, "shutdown_grace_ms=300"])
        with sh:
            sh.wait_log(r"redis: CLUSTER SHARDS on 127\.0\.0\.1:%d: not a slot map reply; "
                        r"retrying" % a.port)
            bad[0] = False
            sh.wait_log(r"redis: bus up \(cluster")


@S.test
def test_subscribe_refused_by_an_acl_keeps_the_connection():
    """Redis' ACLs can forbid channels (`&ws:*`): a policy subscribing to one outside
    them (a name a client chose) gets NOPERM for that SUBSCRIBE. That subscription fails
    (`unavailable`) with a line naming the channel and Redis' text; the subscriber
    connection stays, and so do the other channels on it: the update published right
    after on another client's channel reaches it, and nothing is reconnected. Before: any
    error reply ended the subscriber connection, so every channel on it (1/K of all) lost
    its updates until it was back (~100 ms, growing to 5 s when repeated: a client could
    keep it down), /healthz went 503, and the log blamed client-output-buffer-limit."""
    with Redis() as redis:
        assert redis.cmd("ACL", "SETUSER", "sh", "on", ">pw", "~*", "+@all", "resetchannels",
                         "&ws:*") in ("OK", b"OK")
        with Statushost(os.path.join(POL, "pub_channels.lua"),
                        redis="redis://sh:pw@127.0.0.1:%d" % redis.port,
                        sets=["shutdown_grace_ms=300"]) as sh:
            a = WsClient(sh.port)
            a.send_text("sub ws:a")
            assert a.recv() == (1, b"subscribed ws:a")
            b = WsClient(sh.port)
            for _ in range(3):
                b.send_text("sub other")
                assert b.recv() == (1, b"error unavailable")
            sh.wait_log(r'redis: subscriber 0 connection: SUBSCRIBE "other" refused: NOPERM')
            assert redis.cmd("PUBLISH", "ws:a", "x") == 1
            assert a.recv() == (1, b"string|ws:a|x")
            b.send_text("sub ws:b")
            assert b.recv() == (1, b"subscribed ws:b")
            assert redis.cmd("PUBLISH", "ws:b", "y") == 1
            assert b.recv() == (1, b"string|ws:b|y")
            assert " lost: " not in sh.log_text(), sh.log_text()
            m = sh.metrics()
            assert m["statushost_redis_reconnects_total"] == 0 and m["statushost_redis_up"] == 1


@S.test
def test_host_subscribe_burst_at_the_memory_cap_drops_not_aborts():
    """A burst on a host.subscribe channel whose callback waits (on Redis, a remote: the
    shipped examples/resume.lua does) until the callbacks in flight hold lua_max_memory
    (32 MiB here): the messages past 7/8 of it are dropped, counted in
    updates_dropped_total and said in a line, and the process serves on. Before: a task was
    made for each anyway; its allocation refused, Lua collected the whole heap, once per
    message of the burst, in one turn of the loop, until the loop stall watchdog aborted
    the process (SIGABRT after 5 s; the default 256 MiB takes ~90 ms per message)."""
    with Redis() as redis, Statushost(os.path.join(POL, "attack13_hsub.lua"), redis=redis,
                                      sets=["shutdown_grace_ms=300",
                                            "lua_max_memory=33554432"]) as sh:
        ws = WsClient(sh.port)
        ws.send_text("go")
        assert ws.recv() == (1, b"subscribed")
        for _ in range(8):
            publish_in_one_write(redis.port, [("burst", "x" * 100)] * 10000)
        sh.wait_log(r'host\.subscribe message on channel "burst" dropped: Lua memory \d+ of '
                    r'33554432 \(lua_max_memory\)')
        assert http_get(sh.port, "/healthz")[0] == 200
        m = sh.metrics()
        assert m["statushost_updates_dropped_total"] > 0
        assert m["statushost_updates_dropped_total"] + m["statushost_lua_tasks_current"] >= 80000


@S.test
def test_updates_at_the_memory_cap_close_1013_not_abort():
    """The same for conn:subscribe: 100 clients whose on_publish waits, a burst of updates
    on their channel until the tasks in flight hold lua_max_memory (8 MiB here): a
    connection whose update finds no room is closed 1013 (try again later, as a new message
    would be), counted and said, and the process serves on. Before: an on_publish task was
    made for each update anyway, each refused allocation collected the whole heap, and the
    loop stall watchdog aborted the process (SIGABRT) in the middle of the burst."""
    with Redis() as redis, Statushost(os.path.join(POL, "attack13_psleep.lua"), redis=redis,
                                      sets=["shutdown_grace_ms=300", "lua_max_memory=8388608",
                                            "max_tasks_per_conn=1000"]) as sh:
        clients = []
        for _ in range(100):
            ws = WsClient(sh.port)
            ws.send_text("c")
            assert ws.recv() == (1, b"subscribed")
            clients.append(ws)
        for _ in range(4):
            publish_in_one_write(redis.port, [("c", "x" * 100)] * 2000)
        sh.wait_log(r"Lua memory \d+ of 8388608 \(lua_max_memory\): no room for an update: "
                    r"closing 1013")
        assert clients[-1].expect_close()[0] == 1013
        assert http_get(sh.port, "/healthz")[0] == 200
        assert sh.metrics()["statushost_updates_dropped_total"] > 0


if __name__ == "__main__":
    S.run()
