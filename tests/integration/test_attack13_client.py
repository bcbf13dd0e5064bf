#!/usr/bin/env python3
"""Regression tests for the findings of attack round 13 (statushost as a
hostile WebSocket/HTTP client sees it). Each test fails on the code before its
fix (the docstring says how).

    python3 tests/integration/test_attack13_client.py [test_name ...]
    SH_BIN=build-asan/statushost SH_SANITIZED=1 python3 tests/integration/test_attack13_client.py

The real binary, real sockets; every wait is on an event (a log line, a
response, a TCP close).
"""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (OP_CLOSE, OP_TEXT, ROOT, Statushost, Suite, WsClient,  # noqa: E402
                     WsClosed, free_port)

S = Suite("attack13_client")
POL = os.path.join(ROOT, "tests", "integration", "policies")
NO_REDIS = "redis://127.0.0.1:%d" % free_port()  # nothing listens there: /healthz answers 503


def echo_host(sets=()):
    return Statushost(os.path.join(POL, "echo_text.lua"), redis=NO_REDIS,
                      sets=["shutdown_grace_ms=300"] + list(sets))


@S.test
def input_behind_a_last_answer_that_waits_is_not_kept():
    """A client pipelines 100,000 keep-alive GET /healthz and then a malformed
    request without reading the answers (13 MB: more than the kernel's buffers
    take, less than max_send_buffer = 64 MiB), so the 400 that ends the
    connection (Connection: close) waits unsent in the output, and then streams
    128 MiB of anything. Nothing more is parsed on a connection whose last answer
    is queued, but on_read appended every byte to its pending buffer all the
    same, and reading went on (the output was not over max_send_buffer): the
    server's memory grew with the input, by ~1 GB in 3 s on loopback with the
    default limits, until handshake_timeout_ms. Before the fix RSS grew by more
    than 128 MB here; now the input is discarded, as while lingering."""
    with echo_host(["max_send_buffer=67108864"]) as sh:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answers stay queued
        s.connect(("127.0.0.1", sh.port))
        mark = sh.mark()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 100000 + b"BAD\r\n\r\n")
        sh.wait_log(r"bad request from", start=mark, timeout=60)
        before = sh.rss_kb()
        junk = b"\0" * (1 << 20)
        for _ in range(128):
            s.sendall(junk)
        grew = sh.rss_kb() - before
        s.close()
        assert grew < 48 * 1024, "RSS grew by %d kB while the input was unread" % grew


@S.test
def a_message_ending_a_full_read_is_answered_before_the_next_frame_is_read():
    """The README promises a message's hook runs before the next frame of its
    connection is read, so its reply goes out before a later protocol error's
    close. The client sends a text message whose frame is exactly 65,536 bytes
    (the read buffer) and then a frame of reserved opcode 3, both while the loop
    is busy, so one read takes exactly the message. read_done found nothing
    waiting behind it and let reading go on; libuv reads again at once after a
    read that filled the buffer, so the bad frame was read (close 1002 queued)
    before the hook ran, and the hook's reply was refused: the client got the
    close without "re:aaaaaaaa". Now a message that ends a full read pauses the
    input as one followed by more bytes does."""
    with Statushost(os.path.join(POL, "attack13_spin.lua"), redis=NO_REDIS,
                    sets=["shutdown_grace_ms=300"]) as sh:
        c = WsClient(sh.port)
        mark = sh.mark()
        c.send(OP_TEXT, "spin")
        sh.wait_log(r"spin: start", start=mark)
        big = WsClient.frame(OP_TEXT, b"a" * (65536 - 8))
        assert len(big) == 65536
        c.send_raw(big + WsClient.frame(3, b"bad"))
        got = []
        try:
            while True:
                op, payload = c.recv()
                got.append((op, payload[:12]))
                if op == OP_CLOSE:
                    break
        except WsClosed:
            got.append("eof")
        assert got == [(OP_TEXT, b"re:spin"), (OP_TEXT, b"re:aaaaaaaa"),
                       (OP_CLOSE, b"\x03\xea")], got


if __name__ == "__main__":
    S.run()
