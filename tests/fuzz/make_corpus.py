#!/usr/bin/env python3
"""make_corpus.py — write the seed corpora of the fuzz targets.

    python3 tests/fuzz/make_corpus.py        (rewrites tests/fuzz/corpus/{http,ws,ws_deflate,
                                              http_client_tls,route,json}/)

corpus/http/NAME: byte 0 is fuzz_http's chunking seed (bits 0-6, 0: one
feed; bit 7: limits 256/1024 instead of 8192/65536), then the bytes a
client sends.

corpus/ws/NAME: byte 0 configures the connection (bit 0 on_binary, bit 1
EV_OPEN greets, bit 2 ping timer, bit 3 stalled client, bits 4-5
max_message_bytes 64K/125/1M/16, bits 6-7 max_send_buffer 1M/64/300/4096),
byte 1 seeds the cutting into writes, byte 2 seeds the events between
writes (bit 7: the first piece goes with the upgrade request; bit 6: the
upgrade is decided later, by an action); then client frames, masked. See
fuzz_ws.c.

corpus/http_client_tls/NAME: each seed of corpus/http_client/ (byte 0: the
flags of fuzz_http_client.c) with byte 1, the TLS mode (0 close_notify, 1
none, 2 the last record cut, 3 raw bytes instead of a handshake), inserted.

corpus/json/NAME: a JSON text (valid or not), as it is. See fuzz_json.c.

corpus/route/NAME: byte 0 flags (bit 0 a body follows, bit 1 the headers are
a string, bit 2 the status as it is), bytes 1-2 the status (little-endian),
[body length, body], then header entries: a type byte (bits 0-1 key: 1 a
number, 2 a boolean, else the string; bits 2-3 value: 1 integer, 2 float, 3
false, else the string; bit 4 the value repeated 64 times), name length,
name, value length, value. See fuzz_route.c.
"""

import os
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3


def write(kind, name, data):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ http

def upgrade(path="/ws", extra=""):
    return ("GET %s HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
            "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\nOrigin: http://example.com\r\n%s\r\n"
            % (path, KEY, extra))


def http_corpus():
    c = {}
    c["upgrade"] = (0, upgrade() + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
    c["upgrade_split"] = (3, upgrade("/chat?room=1"))
    c["upgrade_bad_key"] = (0, upgrade().replace(KEY, "c2hvcnQ="))
    c["upgrade_v8"] = (1, upgrade().replace("Version: 13", "Version: 8"))
    c["upgrade_lists"] = (2, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nUpgrade: WebSocket\r\n"
                             "Connection: close\r\nConnection: UPGRADE\r\n"
                             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % KEY)
    c["upgrade_body"] = (0, upgrade(extra="Content-Length: 3\r\n") + "abc")
    c["pipelined"] = (2, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                         "HEAD /index.html HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET /docs/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    c["keepalive_10"] = (1, "GET /a.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                            "GET /b.js HTTP/1.0\r\n\r\n")
    c["chunked_post"] = (2, "POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                            "GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    c["cl_post"] = (0, "POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
                       "GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    c["cl_too_big"] = (0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\nxx")
    c["big_head"] = (3, "GET / HTTP/1.1\r\nHost: a\r\n" +
                     "".join("X-Pad-%03d: %s\r\n" % (i, "v" * 80) for i in range(92)) + "\r\n")
    c["cl_te"] = (0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    c["cl_twice"] = (0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
    c["te_gzip"] = (0, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    c["te_http10"] = (0, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    c["absolute_form"] = (1, "GET http://example.com:8080/a%20b/c.html?x=1&y=%41#frag HTTP/1.1\r\n"
                             "Host: example.com:8080\r\n\r\n")
    c["absolute_noslash"] = (0, "GET http://example.com?x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    c["version_2"] = (0, "GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    c["version_12"] = (0, "GET / HTTP/1.2\r\nHost: a\r\n\r\n")
    c["version_09"] = (0, "GET /\r\n\r\n")
    c["h2_preface"] = (0, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    c["no_host"] = (0, "GET / HTTP/1.1\r\n\r\n")
    c["two_hosts"] = (0, "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")
    c["space_in_name"] = (0, "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n")
    c["obs_fold"] = (1, "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n  two\r\n\tthree\r\n\r\n")
    c["traversal"] = (2, "GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET /%2e%2e/%2E%2e%2fsecret HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET //a//b/./c/ HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET /.git/config HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET /a%5cb%00c HTTP/1.1\r\nHost: a\r\n\r\n"
                         "GET /img/logo.PNG?v=2 HTTP/1.1\r\nHost: a\r\n\r\n")
    c["bad_escape"] = (0, "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n")
    c["connect"] = (0, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    c["options_star"] = (0, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    c["small_chunked_413"] = (0x82, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + "200\r\n" + "z" * 512 + "\r\n" + "300\r\n" + "z" * 768 + "\r\n0\r\n\r\n")
    c["small_trailers"] = (0x81, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "1\r\nz\r\n0\r\n" + "".join("T%02d: %s\r\n" % (i, "t" * 20) for i in range(12))
                                + "\r\n")
    c["lf_only"] = (1, "GET /x.json HTTP/1.1\nHost: a\n\n")
    for name, (seed, text) in c.items():
        write("http", name, bytes([seed]) + text.encode("latin-1"))


# ------------------------------------------------------------------ ws

MASK = b"\x37\xfa\x21\x3d"


def frame(op, payload=b"", fin=True, rsv=0, masked=True, length=None, ext=None):
    """A client frame. length/ext override the length encoding (for
    malformed headers): ext None = shortest, 16 or 64 forces that form."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if masked else 0
    if ext is None:
        ext = 0 if n < 126 else 16 if n < 65536 else 64
    if ext == 0:
        head = bytes([b0, mbit | n])
    elif ext == 16:
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(c ^ MASK[i % 4] for i, c in enumerate(payload))


def close(code=None, reason=b""):
    if code is None:
        return frame(8)
    return frame(8, struct.pack(">H", code) + reason)


def cfg(binary=0, greet=0, ping=0, stall=0, msg=0, send=0):
    return binary | greet << 1 | ping << 2 | stall << 3 | msg << 4 | send << 6


def ws_corpus():
    c = {}
    hi = frame(1, "hello")
    c["text"] = (cfg(), 0, 0, hi + close(1000))
    c["text_cut"] = (cfg(greet=1), 1, 0, hi + frame(1, "second") + close(1000, b"done"))
    c["binary"] = (cfg(binary=1), 2, 0, frame(2, bytes(range(40))) + close(1000))
    c["binary_no_hook"] = (cfg(), 0, 0, frame(2, b"\x00\x01"))
    c["fragmented"] = (cfg(), 3, 0, frame(1, "Hel", fin=False) + frame(9, "ping")
                       + frame(0, "lo ", fin=False) + frame(0, "world") + close(1000))
    c["fragmented_binary"] = (cfg(binary=1), 1, 0, frame(2, b"\xff\xfe", fin=False)
                              + frame(0, b"\x00") + close(1001))
    c["ping_pong"] = (cfg(ping=1), 2, 0x21, frame(9, "p") + frame(10, "statushost") + frame(9)
                      + hi + close(1000))
    c["close_empty"] = (cfg(), 0, 0, close())
    c["close_1byte"] = (cfg(), 0, 0, frame(8, b"\x03"))
    c["close_1005"] = (cfg(), 0, 0, close(1005))
    c["close_1004"] = (cfg(), 1, 0, close(1004, b"x"))
    c["close_1012"] = (cfg(), 0, 0, close(1012, b"restart"))
    c["close_1014"] = (cfg(), 2, 0, close(1014))
    c["close_3000_utf8"] = (cfg(), 1, 0, close(3000, "caf\u00e9 \u2603 \U0001f600".encode()))
    c["close_4999"] = (cfg(), 0, 0, close(4999, b"app"))
    c["close_5000"] = (cfg(), 0, 0, close(5000))
    c["close_bad_utf8"] = (cfg(), 0, 0, close(1000, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"))
    c["close_long_reason"] = (cfg(), 3, 0, close(1000, b"r" * 123))
    c["after_close"] = (cfg(), 0, 0, close(1000) + hi)
    c["bad_utf8"] = (cfg(), 0, 0, frame(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
                                          b"\xed\xa0\x80\x65\x64\x69\x74\x65\x64"))
    c["bad_utf8_frag"] = (cfg(), 1, 0, frame(1, b"\xce\xba\xe1", fin=False) + frame(0, b"\xbd")
                          + frame(0, b"\xb9\xf4\x90\x80\x80"))
    c["utf8_split_ok"] = (cfg(), 1, 0, frame(1, b"\xe2\x82", fin=False) + frame(0, b"\xac\xf0\x9f", fin=False)
                          + frame(0, b"\x98\x80") + close(1000))
    c["utf8_truncated"] = (cfg(), 0, 0, frame(1, b"ok\xe2\x82"))
    c["len16_nonminimal"] = (cfg(), 0, 0, frame(1, "short", ext=16))
    c["len64_nonminimal"] = (cfg(), 0, 0, frame(1, "short", ext=64))
    c["len64_highbit"] = (cfg(), 0, 0, frame(1, "", length=1 << 63, ext=64))
    c["len16"] = (cfg(), 2, 0, frame(1, "x" * 200) + close(1000))
    c["len64_huge"] = (cfg(), 0, 0, frame(2, b"abcd", length=70000, ext=64))
    c["too_big"] = (cfg(msg=3), 0, 0, frame(1, "0123456789abcdefXYZ"))
    c["too_big_frag"] = (cfg(msg=3), 1, 0, frame(1, "0123456789", fin=False) + frame(0, "abcdefXYZ"))
    c["too_big_125"] = (cfg(msg=1), 0, 0, frame(1, "y" * 126))
    c["rsv1"] = (cfg(), 0, 0, frame(1, "compressed?", rsv=4))
    c["rsv3"] = (cfg(), 0, 0, frame(9, "", rsv=7))
    c["opcode3"] = (cfg(), 0, 0, frame(3, "reserved"))
    c["opcode11"] = (cfg(), 0, 0, frame(11, "reserved"))
    c["unmasked"] = (cfg(), 0, 0, frame(1, "plain", masked=False))
    c["ping_too_long"] = (cfg(), 0, 0, frame(9, "p" * 126))
    c["ping_fragmented"] = (cfg(), 0, 0, frame(9, "p", fin=False))
    c["cont_first"] = (cfg(), 0, 0, frame(0, "orphan"))
    c["text_in_text"] = (cfg(), 0, 0, frame(1, "a", fin=False) + frame(1, "b"))
    c["hook_close_then_send"] = (cfg(), 0, 0, frame(1, "close me") + frame(1, "more"))
    c["hook_send_then_close"] = (cfg(), 1, 0, frame(1, "Close after") + frame(1, "more"))
    c["hook_error"] = (cfg(), 0, 0, frame(1, "error") + frame(9, "late ping"))
    c["hook_big_reply"] = (cfg(), 0, 0, frame(1, "Big reply") + close(1000))
    c["slow_consumer"] = (cfg(send=1), 1, 0, frame(1, "big " * 8) + frame(1, "b" * 30) * 3
                          + frame(9, "p"))
    c["ping_after_close_over_limit"] = (cfg(send=2), 0, 0, frame(1, "b" * 100) + frame(1, "close me")
                                        + frame(9, "p"))
    c["stalled"] = (cfg(stall=1, send=2), 2, 0x35, frame(1, "b" * 100) * 4 + frame(9, "x")
                    + close(1000))
    c["timer_events"] = (cfg(ping=1, greet=1), 1, 0x90, hi * 6 + frame(10, "statushost")
                         + hi * 6 + close(1000))
    c["server_close_first"] = (cfg(), 1, 0x4d, hi * 10 + close(1000))
    c["leftover"] = (cfg(), 2, 0x80, hi + frame(9, "x") + close(1000))
    # the reply to "Big" (70000 bytes) stalls: the next send finds the queue over 300 → 1008
    c["stalled_big"] = (cfg(stall=1, send=2), 2, 0, frame(1, "Big") + hi + frame(9, "p")
                        + close(1000))
    # the upgrade is decided by an action (bit 6): frames wait in the handshake phase
    c["deferred"] = (cfg(greet=1), 1, 0x48, hi * 3 + frame(9, "x") + close(1000))
    c["deferred_leftover"] = (cfg(), 2, 0xc9, hi * 3 + close(1000))
    for name, (b0, split, act, data) in c.items():
        write("ws", name, bytes([b0, split, act]) + data)


def z(data, wbits=15, level=6, final=False):
    """A client's compressed payload (RFC 7692 7.2.1), no context takeover."""
    if isinstance(data, str):
        data = data.encode()
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    if final:
        return c.compress(data) + c.flush(zlib.Z_FINISH)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def ws_deflate_corpus():
    """corpus/ws_deflate: fuzz_ws_deflate's inputs (the same layout as ws/),
    with compressed messages (RSV1, rsv=4 here)."""
    c = {}
    hello = z("Hello, compressed world! " * 4)
    c["z_text"] = (cfg(), 0, 0, frame(1, hello, rsv=4) + close(1000))
    c["z_binary"] = (cfg(binary=1), 1, 0, frame(2, z(bytes(range(256)) * 4), rsv=4) + close(1000))
    zz = z("fragmented and compressed " * 20)
    c["z_fragments"] = (cfg(), 2, 0, frame(1, zz[:7], fin=False, rsv=4) + frame(9, "p")
                        + frame(0, zz[7:20], fin=False) + frame(0, zz[20:]) + close(1000))
    c["z_mixed"] = (cfg(greet=1), 1, 0x21, frame(1, "plain") + frame(1, hello, rsv=4)
                    + frame(1, z("Big"), rsv=4) + frame(1, "x" * 100) + close(1000))
    c["z_final_block"] = (cfg(), 0, 0, frame(1, z("final block", final=True), rsv=4) + close(1000))
    c["z_empty"] = (cfg(), 0, 0, frame(1, b"\x00", rsv=4) + frame(1, b"", rsv=4) + close(1000))
    c["z_bomb"] = (cfg(msg=0), 1, 0, frame(2, z(b"\0" * 300000, level=9), rsv=4))
    c["z_bomb_small_limit"] = (cfg(msg=3), 0, 0, frame(1, z("a" * 100), rsv=4))
    c["z_bad_data"] = (cfg(), 0, 0, frame(1, b"\xff\xff\xff\xff", rsv=4))
    c["z_bad_utf8"] = (cfg(), 0, 0, frame(1, z(b"ok \xed\xa0\x80"), rsv=4))
    c["z_rsv1_cont"] = (cfg(), 0, 0, frame(1, "a", fin=False) + frame(0, "b", rsv=4))
    c["z_rsv1_ping"] = (cfg(), 0, 0, frame(9, "p", rsv=4))
    c["z_rsv2"] = (cfg(), 0, 0, frame(1, "a", rsv=2))
    c["z_hooks"] = (cfg(), 2, 0x5a, frame(1, z("close me"), rsv=4) + frame(1, z("Big"), rsv=4)
                    + frame(1, z("b" * 90), rsv=4) + close(1000))
    for name, (b0, split, act, data) in c.items():
        write("ws_deflate", name, bytes([b0, split, act]) + data)


# ------------------------------------------------------------------ http_client_tls

def http_client_tls_corpus():
    src = os.path.join(HERE, "corpus", "http_client")
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            data = f.read()
        if not data:
            continue
        write("http_client_tls", name, data[:1] + b"\x00" + data[1:])
        write("http_client_tls", name + "_no_notify", data[:1] + b"\x01" + data[1:])
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    write("http_client_tls", "cut_record", b"\x50\x02" + ok)
    write("http_client_tls", "cut_record_chunks", b"\x00\x02" + ok)
    write("http_client_tls", "raw_http", b"\x50\x03" + ok)
    # a TLS 1.2 alert record (fatal, handshake_failure), and a record header that claims more
    write("http_client_tls", "raw_alert", b"\x50\x03\x15\x03\x03\x00\x02\x02\x28")
    write("http_client_tls", "raw_short_record", b"\x50\x03\x16\x03\x03\x40\x00\x02\x00")


# ------------------------------------------------------------------ route

def hdr(name, value, key=0, val=0, rep=0):
    if isinstance(name, str):
        name = name.encode()
    if isinstance(value, str):
        value = value.encode()
    return bytes([key | val << 2 | rep << 4, len(name)]) + name + bytes([len(value)]) + value


def route_corpus():
    def st(code, flags=0, body=None):
        b = bytes([flags | (1 if body is not None else 0)]) + struct.pack("<H", code - 200 if not flags & 4 else code)
        if body is not None:
            body = body.encode() if isinstance(body, str) else body
            b += bytes([len(body)]) + body
        return b
    c = {}
    c["plain"] = st(200, body="hello") + hdr("X-A", "1")
    c["json"] = st(201, body='{"a":1}') + hdr("Content-Type", "application/json") + hdr("Cache-Control", "no-store")
    c["ctype_dups"] = st(200, body="x") + hdr("Content-Type", "a/b") + hdr("content-type", "c/d") + hdr("CONTENT-TYPE", "e/f")
    c["framing"] = st(200, body="x") + hdr("Content-Length", "99") + hdr("Connection", "close") + hdr("Transfer-Encoding", "chunked")
    c["numbers"] = st(204) + hdr("X-Int", struct.pack("<q", -42), val=1) + hdr("X-Float", struct.pack("<d", 2.5), val=2) + hdr("X-Inf", struct.pack("<d", float("inf")), val=2)
    c["number_key"] = st(200) + hdr("abc", "v", key=1)
    c["boolean_key"] = st(200) + hdr("abc", "v", key=2)
    c["false_value"] = st(200) + hdr("X-B", "", val=3)
    c["crlf_value"] = st(200) + hdr("X-Inject", "a\r\nSet-Cookie: x=1")
    c["lf_value"] = st(200) + hdr("X-Inject", "a\nb")
    c["nul_value"] = st(200) + hdr("X-Nul", "a\x00b")
    c["nul_name"] = st(200) + hdr("X-\x00N", "v")
    c["colon_name"] = st(200) + hdr("X:Y", "v")
    c["space_name"] = st(200) + hdr("X Y", "v")
    c["tab_value"] = st(200) + hdr("X-Tab", "a\tb")
    c["obs_text"] = st(200) + hdr("X-Utf8", "caf\xc3\xa9")
    c["empty_name"] = st(200) + hdr("", "v")
    c["empty_value"] = st(200) + hdr("X-E", "")
    c["long_value"] = st(200) + hdr("X-Long", "v" * 255, rep=1)
    c["over_16k"] = st(200) + b"".join(hdr("X-L%d" % i, "w" * 255, rep=1) for i in range(2))
    c["many"] = st(200) + b"".join(hdr("X-H%d" % i, str(i)) for i in range(300))
    c["headers_string"] = st(200, flags=2)
    c["status_199"] = st(199, flags=4)
    c["status_600"] = st(600, flags=4)
    c["status_unknown_text"] = st(599, body="") + hdr("Retry-After", "1")
    c["server_dup"] = st(200) + hdr("Server", "statushost")
    for name, data in c.items():
        write("route", name, data)


# ------------------------------------------------------------------ json

def json_corpus():
    c = {
        "batch": '[{"id":"12345","status":"进行中"},{"id":23456,"status":"queued"},{"id":"a1"}]',
        "update": '{"id":"3","status":"done"}',
        "numbers": '[0,-0,7,7.0,7e0,-1.5e-3,1E+2,0.1,123456789012345,9007199254740993,'
                   '123456789012345678,1e300,4.9e-324,1e-400,2.2250738585072014e-308]',
        "strings": '["","a\\"b\\\\c\\/d\\b\\f\\n\\r\\t","\\u00e9\\u20AC","\\ud83d\\ude00",'
                   '"\\u0000","é😀","\udcff\udcfe"]',
        "nested": '{"a":{"b":[{"c":[[],{}]}],"d":null,"e":true,"f":false},"a":1}',
        "deep": "[" * 128 + "1" + "]" * 128,
        "too_deep": "[" * 129 + "]" * 129,
        "whitespace": ' \t\r\n[ 1 , { "k" : "v" } ]\n',
        "bad_number": '[1.,.5,01,+1,1e,NaN,0x10]',
        "bad_string": '"\\ud800\\u0041\x01"',
        "trailing": '{"a":1,} x',
        "overflow": '{"a":1e400,"a":2}',
    }
    for name, text in c.items():
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        write("json", name, data)


if __name__ == "__main__":
    for kind in ("http", "ws", "ws_deflate", "http_client_tls", "route", "json"):
        shutil.rmtree(os.path.join(HERE, "corpus", kind), ignore_errors=True)
    http_corpus()
    ws_corpus()
    ws_deflate_corpus()
    http_client_tls_corpus()
    route_corpus()
    json_corpus()
