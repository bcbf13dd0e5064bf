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
from harness import ROOT, Statushost, Suite, free_port  # noqa: E402

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


if __name__ == "__main__":
    S.run()
