#!/usr/bin/python3
"""pmd_memory.py — what permessage-deflate costs per idle connection.

    tests/bench/pmd_memory.py [N]        (N connections per scenario, default 1000)

For each scenario a fresh statushost runs examples/echo.lua with
permessage_deflate=true; N WebSocket connections are opened (and, where the
scenario says so, each sends one 300-byte text message and reads the echo),
then left idle. The server's RSS (VmRSS in /proc/PID/status) is read before
the first connection and once all N are idle; the difference / N is the
cost of one idle connection, in KiB:

  plain          no Sec-WebSocket-Extensions: the extension adds nothing
  offered-idle   permessage-deflate negotiated, no message yet (no zlib stream)
  plain-echo     no extension, one message echoed
  deflate-echo   negotiated, one message echoed compressed: the deflater is
                 kept for context takeover
  no-takeover    negotiated with server_no_context_takeover, one echo: the
                 deflater is freed after each message

Uses the binary at $SH_BIN (default build/statushost). Python stdlib only.
"""
import os
import socket
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

MSG = (b'{"task":"t1","state":"running","progress":42,"note":"' + b"x" * 230 + b'"}')[:300]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_ws(port, offer):
    s = socket.create_connection(("127.0.0.1", port))
    req = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    if offer:
        req += "Sec-WebSocket-Extensions: %s\r\n" % offer
    s.sendall((req + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode())
    negotiated = b"permessage-deflate" in head
    if offer and not negotiated:
        raise RuntimeError("not negotiated: %s" % head.decode())
    return s, rest, negotiated


def send_and_read_echo(s, rest, compress):
    payload, rsv = MSG, 0
    if compress:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload, rsv = (c.compress(MSG) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], 0x40
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x81 | rsv]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    buf = rest
    while True:  # one whole frame back
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) >= off:
                if n == 126:
                    n = int.from_bytes(buf[2:4], "big")
                elif n == 127:
                    n = int.from_bytes(buf[2:10], "big")
                if len(buf) >= off + n:
                    if compress and not buf[0] & 0x40:
                        raise RuntimeError("the echo is not compressed")
                    return
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the echo")
        buf += chunk


def scenario(n, offer, echo):
    srv = harness.Statushost("examples/echo.lua",
                             sets=["permessage_deflate=true", "max_connections=100000",
                                   "ping_interval_ms=0", "access_log=false"])
    try:
        pid = srv.proc.pid
        # one connection first, closed: the allocator's and the loop's first-use costs
        s, rest, neg = open_ws(srv.port, offer)
        if echo:
            send_and_read_echo(s, rest, neg)
        s.close()
        time.sleep(0.3)
        base = rss_kib(pid)
        socks = []
        for _ in range(n):
            s, rest, neg = open_ws(srv.port, offer)
            if echo:
                send_and_read_echo(s, rest, neg)
            socks.append(s)
        time.sleep(0.5)  # the last messages' buffers are given back by the next iteration
        after = rss_kib(pid)
        for s in socks:
            s.close()
        return base, after
    finally:
        srv.stop()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    rows = [("plain", None, False),
            ("offered-idle", "permessage-deflate; client_max_window_bits", False),
            ("plain-echo", None, True),
            ("deflate-echo", "permessage-deflate; client_max_window_bits", True),
            ("no-takeover", "permessage-deflate; server_no_context_takeover", True)]
    print("%-14s %10s %10s %12s" % ("scenario", "base KiB", "after KiB", "KiB per conn"))
    for name, offer, echo in rows:
        base, after = scenario(n, offer, echo)
        print("%-14s %10d %10d %12.2f" % (name, base, after, (after - base) / n), flush=True)


if __name__ == "__main__":
    main()
