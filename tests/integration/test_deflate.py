#!/usr/bin/env python3
"""permessage-deflate (RFC 7692) end to end: the real binary, real clients.

    python3 tests/integration/test_deflate.py [test_name ...]

- a third-party client (Debian's python3-websockets, its own permessage-
  deflate implementation) negotiates, with several parameter sets, and
  exchanges compressed messages both ways with examples/echo.lua;
- the default policy (scripts/default.lua, a real redis-server and a real
  HTTP remote) runs a job to completion over a compressed connection;
- a zip bomb gets 1009 while it inflates, and the server's RSS stays
  bounded by max_message_bytes, not by the inflated size; a compressed
  message still arriving holds its compressed bytes, not what they inflate to;
- permessage_deflate=false (the default) answers no extension, and a client
  that sets RSV1 anyway gets 1002.
The RFC's frame-level rules (RSV1 misuse, bad data, every parameter
combination) are sections 12, 13 and sh.12 of tests/conformance.
"""
import asyncio
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import OP_BIN, OP_PING, OP_PONG, OP_TEXT, Statushost, Suite, WsClient  # noqa: E402

import websockets  # noqa: E402  (python3-websockets)
from websockets.extensions.permessage_deflate import (  # noqa: E402
    ClientPerMessageDeflateFactory, PerMessageDeflate)

S = Suite("deflate")
SANITIZED = bool(os.environ.get("SH_SANITIZED") or os.environ.get("SH_WRAPPER"))
ON = ["permessage_deflate=true"]


def echo_server(sets=()):
    return Statushost("examples/echo.lua", sets=ON + list(sets))


async def _third_party(port, factory_kw, messages):
    """Connect with python3-websockets offering permessage-deflate with
    factory_kw; send each message, read its echo. Returns (the agreed
    extension, the echoes)."""
    ext = ClientPerMessageDeflateFactory(**factory_kw)
    async with websockets.connect("ws://127.0.0.1:%d/" % port, extensions=[ext],
                                  compression=None, max_size=None) as ws:
        agreed = ws.extensions
        got = []
        for m in messages:
            await ws.send(m)
            got.append(await asyncio.wait_for(ws.recv(), 10))
        return agreed, got


@S.test
def test_third_party_client_parameters():
    """python3-websockets negotiates with each parameter of RFC 7692 §7.1 and
    reads our compressed echoes (with context takeover across messages, and
    with server_no_context_takeover a fresh context per message)."""
    text = json.dumps({"task": "t1", "state": "running", "note": "\u00e9t\u00e9 " * 40})
    msgs = [text, text, text.encode() * 3, "short", text[::-1], b"\x00" * 100000]
    cases = [
        ({}, 15),  # client_max_window_bits offered without a value (the library's default)
        ({"client_max_window_bits": 10}, 15),
        ({"server_max_window_bits": 10}, 10),
        # the server compresses with SH_PMD_WBITS (11) when allowed more
        ({"server_max_window_bits": 15, "client_max_window_bits": 15}, 11),
        ({"server_no_context_takeover": True}, 15),
        ({"server_no_context_takeover": True, "client_no_context_takeover": True,
          "server_max_window_bits": 9, "client_max_window_bits": 9}, 9),
    ]
    with echo_server() as sh:
        for kw, server_bits in cases:
            agreed, got = asyncio.run(_third_party(sh.port, kw, msgs))
            assert len(agreed) == 1 and isinstance(agreed[0], PerMessageDeflate), (kw, agreed)
            pmd = agreed[0]
            # we always ask the client to reset (client_no_context_takeover)
            assert pmd.remote_no_context_takeover is bool(kw.get("server_no_context_takeover")), kw
            assert pmd.local_no_context_takeover is True, kw
            assert pmd.remote_max_window_bits == server_bits or (
                "server_max_window_bits" not in kw and pmd.remote_max_window_bits == 15), \
                (kw, pmd.remote_max_window_bits)
            assert got == msgs, kw
        log = "\n".join(l for l in sh.lines if l)
        assert "declined" not in log, log


@S.test
def test_echoes_are_compressed_on_the_wire():
    """The server compresses what it sends (RSV1 on the frame, fewer bytes
    than the message) from SH_PMD_MIN_BYTES (32) up, and not below."""
    with echo_server() as sh:
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions":
                                       "permessage-deflate; client_max_window_bits"})
        assert c.response_headers["sec-websocket-extensions"] == \
            "permessage-deflate; client_no_context_takeover", c.response_headers
        big = ("status update " * 50).encode()
        for payload, compressed in ((b"x" * 31, False), (b"y" * 32, True), (big, True)):
            c.send(OP_TEXT, payload)
            fin, op, data, rsv = _recv_raw(c)
            assert fin and op == OP_TEXT
            assert bool(rsv & 4) == compressed, (len(payload), rsv)
            if compressed:
                assert len(data) < len(payload)
                data = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
            assert data == payload
        c.close(1000)
        assert c.expect_close()[0] == 1000


def _recv_raw(c):
    """One frame with its RSV bits (harness.WsClient.recv_frame hides them)."""
    c._need(2)
    b0, b1 = c.buf[0], c.buf[1]
    n, off = b1 & 0x7F, 2
    if n == 126:
        c._need(4)
        n, off = int.from_bytes(c.buf[2:4], "big"), 4
    elif n == 127:
        c._need(10)
        n, off = int.from_bytes(c.buf[2:10], "big"), 10
    c._need(off + n)
    data = c.buf[off:off + n]
    c.buf = c.buf[off + n:]
    return bool(b0 & 0x80), b0 & 0x0F, data, (b0 >> 4) & 7


@S.test
def test_zip_bomb_1009_bounded_memory():
    """A message of 256 MiB of zeros compressed to about 250 KiB, sent to a
    server with max_message_bytes = 1 MiB: close 1009 while it inflates, and
    the RSS grows by a few MiB at most (the output stops at the limit)."""
    with echo_server(["max_message_bytes=1048576"]) as sh:
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        assert "sec-websocket-extensions" in c.response_headers
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = b"\x00" * (64 << 20)
        data = b"".join(z.compress(chunk) for _ in range(4)) + z.flush(zlib.Z_SYNC_FLUSH)
        data = data[:-4]
        assert len(data) < 1048576, len(data)  # the frame itself is within the limit
        before = sh.rss_kb()
        c.send_raw(WsClient.frame(OP_BIN, data, rsv=4))
        code, reason = c.expect_close()
        assert code == 1009, (code, reason)
        grown = sh.rss_kb() - before
        sh.wait_log(r"closing 1009: inflated message over max_message_bytes")
        if not SANITIZED:
            assert grown < 8 * 1024, "RSS grew by %d KiB inflating a bomb" % grown
        c.shutdown()


@S.test
def test_fragmented_bomb_1009():
    """The same bomb in 4 KiB fragments: 1009 once the last one ends (the
    inflated total, not the compressed frames, is what counts); compressed
    fragments past the limit (and deflate's overhead) are 1009 as they come."""
    with echo_server(["max_message_bytes=65536"]) as sh:
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = (z.compress(b"a" * (8 << 20)) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        frames = [data[i:i + 4096] for i in range(0, len(data), 4096)]
        assert len(frames) >= 2
        c.send_raw(WsClient.frame(OP_TEXT, frames[0], fin=False, rsv=4) +
                   b"".join(WsClient.frame(0, f, fin=False) for f in frames[1:-1]) +
                   WsClient.frame(0, frames[-1]))
        code, _ = c.expect_close()
        assert code == 1009, code
        c.shutdown()
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        c.send_raw(WsClient.frame(OP_BIN, os.urandom(60000), fin=False, rsv=4) +
                   WsClient.frame(0, os.urandom(60000), fin=False))
        code, _ = c.expect_close()
        assert code == 1009, code
        sh.wait_log(r"closing 1009: compressed message over max_message_bytes")
        c.shutdown()


@S.test
def test_unfinished_compressed_messages_hold_what_was_sent():
    """A client sends the first kilobyte of a compressed message that
    inflates to 1 MiB, then waits (answering pings). The server keeps the
    compressed bytes until the message ends, not the inflated ones: 40 such
    connections grew the RSS by 40 MiB (1,000 bytes pinned 1 MiB each, for
    as long as the client liked; max_connections of them: 10 GiB)."""
    with echo_server() as sh:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = (z.compress(b"a" * (1048576 - 64)) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert len(data) < 2048, len(data)
        conns = [WsClient(sh.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
                 for _ in range(40)]
        before = sh.rss_kb()
        for c in conns:
            c.send_raw(WsClient.frame(OP_TEXT, data, fin=False, rsv=4) +
                       WsClient.frame(OP_PING, b"sync"))
        for c in conns:  # the pong follows the fragment: it was read
            assert c.recv() == (OP_PONG, b"sync")
        grown = sh.rss_kb() - before
        assert grown < 40 * 128, "RSS grew by %d KiB for 40 unfinished messages" % grown
        c = conns[0]  # the message still ends as it should
        c.send_raw(WsClient.frame(0, b"\xff"))  # a block of the reserved type: 1007
        assert c.expect_close()[0] == 1007
        c = conns[1]
        c.send_raw(WsClient.frame(0, b""))
        fin, rsv, op, payload = c.recv_frame()
        assert (fin, op) == (True, OP_TEXT), (fin, op)
        if rsv & 4:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        assert payload == b"a" * (1048576 - 64), len(payload)
        for c in conns[1:]:
            c.shutdown()


@S.test
def test_off_by_default():
    """Without permessage_deflate=true the offer is ignored (no header in the
    101), and RSV1 on a frame is a protocol error (1002)."""
    with Statushost("examples/echo.lua") as sh:
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        assert "sec-websocket-extensions" not in c.response_headers, c.response_headers
        c.send(OP_TEXT, b"hi")
        assert c.recv_text() == "hi"
        c.send_raw(WsClient.frame(OP_TEXT, zlib.compress(b"x")[2:], rsv=4))
        assert c.expect_close()[0] == 1002
        c.shutdown()


@S.test
def test_declined_offers_are_logged():
    """An offer the server cannot accept is declined with a log line, and
    the connection works uncompressed."""
    with echo_server() as sh:
        c = WsClient(sh.port, headers={"Sec-WebSocket-Extensions":
                                       "permessage-deflate; server_max_window_bits=8"})
        assert "sec-websocket-extensions" not in c.response_headers
        sh.wait_log(r"permessage-deflate offer declined: server_max_window_bits=8 is not supported")
        c.send(OP_TEXT, b"hi")
        assert c.recv_text() == "hi"
        c.close(1000)
        c.expect_close()


@S.test
def test_default_policy_job_compressed():
    """scripts/default.lua with a real redis-server and the seed remote worker:
    python3-websockets negotiates compression, sends a batch of 10 tasks,
    gets the 10 updates byte for byte, then close 1000."""
    import test_default as td
    with td.worker(td.SEED_WORKER, "tick_ms=20", "complete_probability=0.5") as w, \
            td.server(w.port, "permessage_deflate=true") as sh:
        tasks = td.batch(10, base=7000)

        async def run():
            async with websockets.connect("ws://127.0.0.1:%d/" % sh.port, max_size=None) as ws:
                assert ws.extensions and isinstance(ws.extensions[0], PerMessageDeflate), \
                    ws.extensions
                await ws.send(json.dumps(tasks))
                got = []
                try:
                    while True:
                        got.append(await asyncio.wait_for(ws.recv(), 20))
                except websockets.ConnectionClosedOK as e:
                    return got, e.rcvd.code
        got, code = asyncio.run(run())
        assert code == 1000, code
        want = sorted(td.done_payload(t["id"]).decode() for t in tasks)
        assert sorted(got) == want, got


if __name__ == "__main__":
    S.run()
