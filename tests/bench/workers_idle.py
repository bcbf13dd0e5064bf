#!/usr/bin/env python3
"""Idle subscribed connections across several workers (the --workers benchmark).

    python3 tests/bench/workers_idle.py [--connections 50000] [--workers 3]
                                        [--clients 6] [--sub-connections 1]

Starts a redis-server and `statushost --workers W tests/bench/workers_idle.lua` on free
ports, then C client processes (this script with --client: Python asyncio, raw sockets,
a minimal RFC 6455 client) that open the connections between them: each sends a name,
its connection subscribes to idle:<name> (confirmed by Redis) and idles. The descriptor
limit is per process (20,000 here), so the clients are several processes, each with its
own source address (127.0.0.<10+i>: one address has only ~28,000 ephemeral ports).
Once every connection is subscribed it reports:

  - the split between workers (statushost_websockets_current{worker="i"} from /metrics,
    asked until every worker has answered),
  - the RSS of the master and of each worker (/proc/PID/status), before and after,
  - Redis: CLIENT LIST, the connections named statushost-<instance>-*, per worker,
  - then one PUBLISH per channel (pipelined) and how many clients got their message.

Not a timed test: numbers for the README. Exit status 0 when every connection was
subscribed and every message arrived.
"""
import argparse
import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))


# ---------------------------------------------------------------- the client processes

async def one(port, src, name, opened, sem, got):
    """Connect, upgrade, send the name, await "subscribed"; then read frames (count the
    published message) until the connection ends."""
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head[:60])
        data = name.encode()
        mask = os.urandom(4)
        writer.write(bytes([0x81, 0x80 | len(data)]) + mask +
                     bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        op, payload = await read_frame(reader)
        if payload != b"subscribed":
            raise RuntimeError(payload)
        opened.append(writer)
    while True:
        op, payload = await read_frame(reader)
        if op == 1:
            got[0] += 1
        elif op == 8:
            return


async def read_frame(reader):
    h = await reader.readexactly(2)
    n = h[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return h[0] & 0x0F, await reader.readexactly(n)


async def client_main(port, src, prefix, n):
    opened, got, failed = [], [0], [0]
    sem = asyncio.Semaphore(200)  # handshakes in flight

    async def guarded(i):
        try:
            await one(port, src, "%s-%d" % (prefix, i), opened, sem, got)
        except Exception as e:  # noqa: BLE001
            failed[0] += 1
            if failed[0] <= 3:
                print("error %r" % e, file=sys.stderr, flush=True)
    tasks = [asyncio.ensure_future(guarded(i)) for i in range(n)]
    while len(opened) + failed[0] < n:
        await asyncio.sleep(0.2)
    print("subscribed %d failed %d" % (len(opened), failed[0]), flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)  # "count"
    deadline = time.monotonic() + 60
    want = int(line.split()[1]) if line.strip() else 0
    while got[0] < want and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print("received %d" % got[0], flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    for w in opened:
        w.close()
    for t in tasks:
        t.cancel()


# ---------------------------------------------------------------- the driver

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=50000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--clients", type=int, default=6, help="client processes")
    ap.add_argument("--sub-connections", type=int, default=1, help="redis_sub_connections")
    ap.add_argument("--log", help="write statushost's log (master and workers) to this file")
    ap.add_argument("--client", nargs=4, metavar=("PORT", "SRC", "PREFIX", "N"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        asyncio.run(client_main(int(a.client[0]), a.client[1], a.client[2], int(a.client[3])))
        return 0

    from harness import BIN, Redis, Statushost, free_port, http_get, wait_until, _resp_encode, _resp_read
    per_worker_max = a.connections // a.workers + a.connections // 5
    with Redis() as redis:
        sh = Statushost(os.path.join(HERE, "workers_idle.lua"), redis=redis, port=free_port(),
                        args=["--workers", str(a.workers)], expect_ready=False,
                        sets=["max_connections=%d" % min(per_worker_max, 19900),
                              "ping_interval_ms=0", "access_log=off",
                              "redis_sub_connections=%d" % a.sub_connections])
        m = sh.wait_log(r"master: \d+ workers listening on [^ ]*:(\d+)", timeout=30)
        port = int(m.group(1))
        workers = {mm.group(1): (int(mm.group(2)), int(mm.group(3))) for mm in
                   re.finditer(r"\(instance ([0-9a-f]{16}), worker (\d+), pid (\d+)\)", sh.log_text())}
        pids = [sh.proc.pid] + [p for _, p in sorted(workers.values())]
        rss_before = [rss_kb(p) for p in pids]
        t0 = time.monotonic()
        share = [a.connections // a.clients + (i < a.connections % a.clients) for i in range(a.clients)]
        procs = [subprocess.Popen([sys.executable, __file__, "--client", str(port), "127.0.0.%d" % (10 + i),
                                   "p%d" % i, str(share[i])], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for i in range(a.clients)]
        subscribed = failed = 0
        for p in procs:
            m = re.match(r"subscribed (\d+) failed (\d+)", p.stdout.readline())
            subscribed += int(m.group(1))
            failed += int(m.group(2))
        t_sub = time.monotonic() - t0
        split = {}

        def ask():
            status, _, body = http_get(port, "/metrics")
            for mm in re.finditer(r'^statushost_websockets_current\{worker="(\d+)"\} (\d+)$',
                                  body.decode(), re.M):
                split[int(mm.group(1))] = int(mm.group(2))
            return len(split) == a.workers
        wait_until(ask, timeout=30, what="every worker's /metrics")
        rss_after = [rss_kb(p) for p in pids]
        clients = redis.cmd("CLIENT", "LIST").splitlines()
        names = [re.search(r" name=(\S*)", c).group(1) for c in clients if " name=" in c]
        per_inst = {inst: len([n for n in names if n.startswith("statushost-%s-" % inst)])
                    for inst in workers}
        # one PUBLISH per channel, pipelined on one connection
        t1 = time.monotonic()
        with socket.create_connection(("127.0.0.1", redis.port)) as s:
            f = s.makefile("rb")
            for i in range(a.clients):
                batch = b"".join(_resp_encode(("PUBLISH", "idle:p%d-%d" % (i, j), "update"))
                                 for j in range(share[i]))
                s.sendall(batch)
                for _ in range(share[i]):
                    _resp_read(f)
        for i, p in enumerate(procs):
            p.stdin.write("count %d\n" % share[i])
            p.stdin.flush()
        received = sum(int(p.stdout.readline().split()[1]) for p in procs)
        t_pub = time.monotonic() - t1
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(60)
        sh.signal(signal.SIGTERM)
        rc = sh.wait_exit(60)
        sh.stop()
        if a.log:
            with open(a.log, "w") as f:
                f.write(sh.log_text() + "\n")

    total = sum(split.values())
    print("workers_idle: %d connections, %d workers, %d client processes, redis_sub_connections=%d"
          % (a.connections, a.workers, a.clients, a.sub_connections))
    print("  subscribed %d (failed %d) in %.1fs" % (subscribed, failed, t_sub))
    for i in sorted(split):
        print("  worker %d: %d websockets (%.1f%%)" % (i, split[i], 100.0 * split[i] / max(total, 1)))
    print("  RSS kB master %d → %d; workers %s → %s; total %d → %d (%.2f KiB per connection)" % (
        rss_before[0], rss_after[0], rss_before[1:], rss_after[1:], sum(rss_before), sum(rss_after),
        (sum(rss_after) - sum(rss_before)) / max(subscribed, 1)))
    print("  redis connections per worker: %s (CLIENT LIST: %d in all, the clients included)"
          % (sorted(per_inst.values()), len(clients)))
    print("  published %d, received %d in %.1fs; statushost exit %s" % (
        sum(share), received, t_pub, rc))
    return 0 if subscribed == a.connections and received == a.connections and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
