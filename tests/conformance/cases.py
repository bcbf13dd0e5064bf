"""The case table: Autobahn testsuite (fuzzingclient) sections 1-7, 9 and 10,
re-created case by case from autobahntestsuite/case/case*.py, plus a few
statushost-specific cases (ids "sh.*") for what Autobahn's fuzzer never sends
(unmasked frames, limits, the default policy's binary rule).

Each entry: Case(id, description, fn, policies). fn(ctx) runs the case on its
own connection(s) and raises CaseFail unless the outcome is Autobahn's OK
(see wsconn.expect). It may return a note (e.g. how the connection ended).

ctx provides: connect() -> wsconn.Conn; timeout (seconds to wait for the
server's reaction); settle (Autobahn's 1 s waits); strict_close (require a
close frame with the exact code where Autobahn also accepts a TCP drop);
max_message_bytes (the server's limit); big_timeout (section 9).
"""
import random
import struct
import time
import zlib

from wsconn import (CaseFail, OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                    close_payload, describe_events, expect, fill, frame, message_frames,
                    short, verdict)

NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED = 1000, 1001, 1002, 1003
INVALID_PAYLOAD, POLICY, TOO_BIG = 1007, 1008, 1009

ECHO = ("echo",)
BOTH = ("echo", "default")
DEFAULT = ("default",)

SECTIONS = {"1": "Framing", "2": "Pings/Pongs", "3": "Reserved Bits", "4": "Opcodes",
            "5": "Fragmentation", "6": "UTF-8 Handling", "7": "Close Handling",
            "9": "Limits/Performance", "10": "Misc (auto-fragmentation)",
            "12": "WebSocket Compression (payloads)", "13": "WebSocket Compression (parameters)",
            "sh": "statushost extras (not Autobahn)"}


class Case:
    def __init__(self, id, desc, fn, policies):
        self.id, self.desc, self.fn, self.policies = id, desc, fn, policies
        self.section = id.split(".")[0]

    def key(self):
        return tuple(int(p) if p.isdigit() else -1 for p in self.id.split("."))


CASES = []


def add(id, desc, fn, policies=ECHO):
    CASES.append(Case(id, desc, fn, policies))


# ---------------------------------------------------------------- building blocks

def F(opcode, payload=b"", fin=True, rsv=0, chop=None, sync=False, mask=True, length=None):
    """One step: send a frame (Autobahn's sendFrame)."""
    return lambda c: c.send_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask,
                                  length=length, chop=chop, sync=sync)


def CLOSE(code=None, reason=None):
    """One step: send a close frame (Autobahn's sendClose/sendCloseFrame)."""
    return lambda c: c.send_close(code, reason)


def MSG(opcode, payload, frag=None):
    """One step: send a message (Autobahn's sendMessage), optionally fragmented."""
    return lambda c: c.send_message(opcode, payload, frag_size=frag)


def std(id, desc, steps, ok, by_me, codes, clean, non_strict=None, close_sent=False,
        policies=ECHO, strict_codes=None, allow_empty_close=False):
    """The common case shape: send steps, then Autobahn's verdict."""
    def run(ctx):
        c = ctx.connect()
        try:
            for s in steps:
                s(c)
            return expect(c, ok, by_me, codes, clean, ctx, non_strict=non_strict,
                          close_sent=close_sent, strict_codes=strict_codes,
                          allow_empty_close=allow_empty_close)
        finally:
            c.shutdown()
    add(id, desc, run, policies)


def echo_ok(id, desc, steps, ok, policies=ECHO):
    """Expected events, then a clean close with 1000 started by us."""
    std(id, desc, steps, ok, True, [NORMAL], True, policies=policies)


def fails(id, desc, steps, ok=(), codes=(PROTOCOL_ERROR,), non_strict=None, policies=ECHO):
    """The server must fail the connection (close with codes, or drop TCP)."""
    std(id, desc, steps, list(ok), False, list(codes), False,
        non_strict=non_strict, policies=policies)


def msg(payload, binary=False):
    if isinstance(payload, str):
        payload = payload.encode()
    return ("message", payload, binary)


# ---------------------------------------------------------------- 1 Framing

for i, (n, chop) in enumerate([(0, None), (125, None), (126, None), (127, None), (128, None),
                               (65535, None), (65536, None), (65536, 997)], 1):
    d = "Send text message with payload of length %d%s." % (
        n, ". Sent out data in chops of %d octets" % chop if chop else "")
    echo_ok("1.1.%d" % i, d, [F(OP_TEXT, b"*" * n, chop=chop)], [msg(b"*" * n)])
    d = "Send binary message with payload of length %d%s." % (
        n, ". Sent out data in chops of %d octets" % chop if chop else "")
    echo_ok("1.2.%d" % i, d, [F(OP_BIN, b"\xfe" * n, chop=chop)], [msg(b"\xfe" * n, True)])


# ---------------------------------------------------------------- 2 Pings/Pongs

echo_ok("2.1", "Send ping without payload.", [F(OP_PING)], [("pong", b"")], BOTH)
echo_ok("2.2", "Send ping with small text payload.",
        [F(OP_PING, b"Hello, world!")], [("pong", b"Hello, world!")], BOTH)
echo_ok("2.3", "Send ping with small binary (non UTF-8) payload.",
        [F(OP_PING, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")],
        [("pong", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")], BOTH)
echo_ok("2.4", "Send ping with binary payload of 125 octets.",
        [F(OP_PING, b"\xfe" * 125)], [("pong", b"\xfe" * 125)], BOTH)
fails("2.5", "Send ping with binary payload of 126 octets: fail with 1002 (control frames carry at most 125).",
      [F(OP_PING, b"\xfe" * 126)], policies=BOTH)
echo_ok("2.6", "Send ping with binary payload of 125 octets, send in octet-wise chops.",
        [F(OP_PING, b"\xfe" * 125, chop=1)], [("pong", b"\xfe" * 125)], BOTH)
std("2.7", "Send unsolicited pong without payload. Verify nothing is received. Clean close with normal code.",
    [F(OP_PONG), CLOSE(NORMAL)], [], True, [NORMAL], True, close_sent=True, policies=BOTH)
std("2.8", "Send unsolicited pong with payload. Verify nothing is received. Clean close with normal code.",
    [F(OP_PONG, b"unsolicited pong payload"), CLOSE(NORMAL)], [], True, [NORMAL], True,
    close_sent=True, policies=BOTH)
echo_ok("2.9", "Send unsolicited pong with payload. Send ping with payload. Verify pong for ping is received.",
        [F(OP_PONG, b"unsolicited pong payload"), F(OP_PING, b"ping payload")],
        [("pong", b"ping payload")], BOTH)
echo_ok("2.10", "Send 10 Pings with payload.",
        [F(OP_PING, b"payload-%d" % i) for i in range(10)],
        [("pong", b"payload-%d" % i) for i in range(10)], BOTH)
echo_ok("2.11", "Send 10 Pings with payload. Send out octets in octet-wise chops.",
        [F(OP_PING, b"payload-%d" % i, chop=1) for i in range(10)],
        [("pong", b"payload-%d" % i) for i in range(10)], BOTH)


# ---------------------------------------------------------------- 3 Reserved bits

HW = b"Hello, world!"
fails("3.1", "Send small text message with RSV = 1.", [F(OP_TEXT, HW, rsv=1)], policies=BOTH)
fails("3.2", "Send small text message, then send again with RSV = 2, then send Ping.",
      [F(OP_TEXT, HW), F(OP_TEXT, HW, rsv=2), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("3.3", "Send small text message, then send again with RSV = 3, then send Ping. "
      "Octets are sent in frame-wise chops.",
      [F(OP_TEXT, HW, sync=True), F(OP_TEXT, HW, rsv=3, sync=True), F(OP_PING, sync=True)],
      ok=[msg(HW)], non_strict=[])
fails("3.4", "Send small text message, then send again with RSV = 4, then send Ping. "
      "Octets are sent in octet-wise chops.",
      [F(OP_TEXT, HW, chop=1), F(OP_TEXT, HW, rsv=4, chop=1), F(OP_PING, chop=1)],
      ok=[msg(HW)], non_strict=[])
fails("3.5", "Send small binary message with RSV = 5.",
      [F(OP_BIN, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=5)], policies=BOTH)
# Autobahn's case3_6.py says "Ping" but sends opcode 2; re-created as it runs.
# sh.3.6 below sends the ping the description names.
fails("3.6", "Send Ping with RSV = 6 (as Autobahn's code does it: a binary frame with RSV = 6).",
      [F(OP_BIN, HW, rsv=6)], policies=BOTH)
fails("3.7", "Send Close with RSV = 7.", [F(OP_CLOSE, rsv=7)], policies=BOTH)


# ---------------------------------------------------------------- 4 Opcodes

RP = b"reserved opcode payload"
fails("4.1.1", "Send frame with reserved non-control Opcode = 3.", [F(3)], policies=BOTH)
fails("4.1.2", "Send frame with reserved non-control Opcode = 4 and non-empty payload.",
      [F(4, RP)], policies=BOTH)
fails("4.1.3", "Send small text message, then send frame with reserved non-control Opcode = 5, then send Ping.",
      [F(OP_TEXT, HW), F(5), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("4.1.4", "Send small text message, then send frame with reserved non-control Opcode = 6 "
      "and non-empty payload, then send Ping.",
      [F(OP_TEXT, HW), F(6, HW), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("4.1.5", "Send small text message, then send frame with reserved non-control Opcode = 7 "
      "and non-empty payload, then send Ping.",
      [F(OP_TEXT, HW), F(7, HW), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("4.2.1", "Send frame with reserved control Opcode = 11.", [F(11)], policies=BOTH)
fails("4.2.2", "Send frame with reserved control Opcode = 12 and non-empty payload.",
      [F(12, RP)], policies=BOTH)
fails("4.2.3", "Send small text message, then send frame with reserved control Opcode = 13, then send Ping.",
      [F(OP_TEXT, HW), F(13), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("4.2.4", "Send small text message, then send frame with reserved control Opcode = 14 "
      "and non-empty payload, then send Ping.",
      [F(OP_TEXT, HW), F(14, HW), F(OP_PING)], ok=[msg(HW)], non_strict=[])
fails("4.2.5", "Send small text message, then send frame with reserved control Opcode = 15 "
      "and non-empty payload, then send Ping.",
      [F(OP_TEXT, HW), F(15, HW), F(OP_PING)], ok=[msg(HW)], non_strict=[])


# ---------------------------------------------------------------- 5 Fragmentation

fails("5.1", "Send Ping fragmented into 2 fragments.",
      [F(OP_PING, b"fragment1", fin=False), F(OP_CONT, b"fragment2")], policies=BOTH)
fails("5.2", "Send Pong fragmented into 2 fragments.",
      [F(OP_PONG, b"fragment1", fin=False), F(OP_CONT, b"fragment2")], policies=BOTH)
for cid, kw, how in [("5.3", {}, ""), ("5.4", {"sync": True}, " Octets are sent in frame-wise chops."),
                     ("5.5", {"chop": 1}, " Octets are sent in octet-wise chops.")]:
    echo_ok(cid, "Send text Message fragmented into 2 fragments." + how,
            [F(OP_TEXT, b"fragment1", fin=False, **kw), F(OP_CONT, b"fragment2", **kw)],
            [msg(b"fragment1fragment2")])
for cid, kw, how in [("5.6", {}, ""), ("5.7", {"sync": True}, " Octets are sent in frame-wise chops."),
                     ("5.8", {"chop": 1}, " Octets are sent in octet-wise chops.")]:
    echo_ok(cid, "Send text Message fragmented into 2 fragments, one ping with payload in-between." + how,
            [F(OP_TEXT, b"fragment1", fin=False, **kw), F(OP_PING, b"ping payload", **kw),
             F(OP_CONT, b"fragment2", **kw)],
            [("pong", b"ping payload"), msg(b"fragment1fragment2")])
for cid, fin, kw, how in [("5.9", True, {}, "sent in one chop"),
                          ("5.10", True, {"sync": True}, "sent in per-frame chops"),
                          ("5.11", True, {"chop": 1}, "sent in octet-wise chops"),
                          ("5.12", False, {}, "sent in one chop"),
                          ("5.13", False, {"sync": True}, "sent in per-frame chops"),
                          ("5.14", False, {"chop": 1}, "sent in octet-wise chops")]:
    fails(cid, "Send unfragmented Text Message after Continuation Frame with FIN = %s, where there "
          "is nothing to continue, %s." % (str(fin).lower(), how),
          [F(OP_CONT, b"non-continuation payload", fin=fin, **kw), F(OP_TEXT, HW, **kw)],
          policies=BOTH)
fails("5.15", "Send text Message fragmented into 2 fragments, then Continuation Frame with FIN = false "
      "where there is nothing to continue, then unfragmented Text Message, all sent in one chop.",
      [F(OP_TEXT, b"fragment1", fin=False), F(OP_CONT, b"fragment2"),
       F(OP_CONT, b"fragment3", fin=False), F(OP_TEXT, b"fragment4")],
      ok=[msg(b"fragment1fragment2")], non_strict=[])
for cid, fin in [("5.16", False), ("5.17", True)]:
    fails(cid, "Repeated 2x: Continuation Frame with FIN = %s (where there is nothing to continue), "
          "then text Message fragmented into 2 fragments." % str(fin).lower(),
          [F(OP_CONT, b"fragment1", fin=fin), F(OP_TEXT, b"fragment2", fin=False),
           F(OP_CONT, b"fragment3")] * 2, policies=BOTH)
fails("5.18", "Send text Message fragmented into 2 fragments, with both frame opcodes set to text, "
      "sent in one chop.", [F(OP_TEXT, b"fragment1", fin=False), F(OP_TEXT, b"fragment2")],
      policies=BOTH)


def case_5_19(sync):
    def run(ctx):
        fr = [b"fragment1", b"fragment2", b"fragment3", b"fragment4", b"fragment5"]
        pings = [b"pongme 1!", b"pongme 2!"]
        c = ctx.connect()
        try:
            c.send_frame(OP_TEXT, fr[0], fin=False, sync=sync)
            c.send_frame(OP_CONT, fr[1], fin=False, sync=sync)
            c.send_frame(OP_PING, pings[0], sync=sync)
            c.pump(ctx.settle, stop=lambda: c.close_frame is not None)  # "then we wait 1s"
            if c.events != [("pong", pings[0])]:
                raise CaseFail("the first ping was not answered while the message was incomplete: "
                               "got %s | %s" % (describe_events(c.events), c.wire()))
            c.send_frame(OP_CONT, fr[2], fin=False, sync=sync)
            c.send_frame(OP_CONT, fr[3], fin=False, sync=sync)
            c.send_frame(OP_PING, pings[1], sync=sync)
            c.send_frame(OP_CONT, fr[4], fin=True, sync=sync)
            return expect(c, [("pong", pings[0]), ("pong", pings[1]), msg(b"".join(fr))],
                          True, [NORMAL], True, ctx)
        finally:
            c.shutdown()
    return run


add("5.19", "A fragmented text message is sent in multiple frames. After sending the first 2 frames "
    "of the text message, a Ping is sent. Then we wait 1s, then we send 2 more text fragments, "
    "another Ping and then the final text fragment. Everything is legal.", case_5_19(False))
add("5.20", "Same as Case 5.19, but send all frames with SYNC = True.", case_5_19(True))


# ---------------------------------------------------------------- 6 UTF-8

echo_ok("6.1.1", "Send text message of length 0.", [F(OP_TEXT, b"")], [msg(b"")])
echo_ok("6.1.2", "Send fragmented text message, 3 fragments each of length 0.",
        [F(OP_TEXT, b"", fin=False), F(OP_CONT, b"", fin=False), F(OP_CONT, b"")], [msg(b"")])
echo_ok("6.1.3", "Send fragmented text message, 3 fragments, first and last of length 0, middle non-empty.",
        [F(OP_TEXT, b"", fin=False), F(OP_CONT, b"middle frame payload", fin=False), F(OP_CONT, b"")],
        [msg(b"middle frame payload")])

U1, U2 = "Hello-µ@ßöä".encode(), "üàá-UTF-8!!".encode()
KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
echo_ok("6.2.1", "Send a valid UTF-8 text message in one fragment.", [MSG(OP_TEXT, U1 + U2)], [msg(U1 + U2)])
echo_ok("6.2.2", "Send a valid UTF-8 text message in two fragments, fragmented on UTF-8 code point boundary.",
        [F(OP_TEXT, U1, fin=False), F(OP_CONT, U2)], [msg(U1 + U2)])
echo_ok("6.2.3", "Send a valid UTF-8 text message in fragments of 1 octet, resulting in frames ending "
        "on positions which are not code point ends.", [MSG(OP_TEXT, U1 + U2, frag=1)], [msg(U1 + U2)])
echo_ok("6.2.4", "Send a valid UTF-8 text message in fragments of 1 octet, resulting in frames ending "
        "on positions which are not code point ends (kosme).", [MSG(OP_TEXT, KOSME, frag=1)], [msg(KOSME)])

BAD = KOSME + b"\xed\xa0\x80" + b"edited"
fails("6.3.1", "Send invalid UTF-8 text message unfragmented.", [MSG(OP_TEXT, BAD)],
      codes=[INVALID_PAYLOAD], policies=BOTH)
fails("6.3.2", "Send invalid UTF-8 text message in fragments of 1 octet, resulting in frames ending "
      "on positions which are not code point ends.", [MSG(OP_TEXT, BAD, frag=1)],
      codes=[INVALID_PAYLOAD], policies=BOTH)


def fail_fast(parts, one_frame):
    """6.4.x: part 1 (valid so far), wait; part 2 makes the payload invalid:
    the server must fail the connection now (1007), before part 3 would
    complete the message. OK = [timeout A]; NON-STRICT = [A, B]."""
    def run(ctx):
        c = ctx.connect()
        try:
            if one_frame:
                whole = frame(OP_TEXT, b"".join(parts))
                hl = len(whole) - sum(len(p) for p in parts)
                chunks, at = [], hl
                for i, p in enumerate(parts):
                    start = 0 if i == 0 else at
                    at += len(p)
                    chunks.append(whole[start:at])
            else:
                chunks = [frame(OP_TEXT, parts[0], fin=False), frame(OP_CONT, parts[1], fin=False),
                          frame(OP_CONT, parts[2], fin=True)]
            closed = lambda: c.close_frame is not None or c.tcp is not None  # noqa: E731
            c.send_raw(chunks[0])
            c.pump(ctx.settle, stop=closed)
            if closed():
                raise CaseFail("the server failed the connection on the first part, which is "
                               "valid UTF-8 so far (%s) | %s" % (c.close_desc(), c.wire()))
            marks = [("timeout", b"A")]
            c.send_raw(chunks[1])
            c.pump(ctx.settle, stop=closed)
            if not closed():
                marks.append(("timeout", b"B"))
                c.send_raw(chunks[2])
                c.pump(ctx.timeout, stop=closed)
                if not closed():
                    raise CaseFail("no fail-fast, and no failure after the whole invalid message "
                                   "either | %s" % c.wire())
                c.pump(ctx.timeout)
                raise CaseFail("NON-STRICT: the server failed the connection only after the "
                               "message completed, not on the invalid part (%s) | %s"
                               % (c.close_desc(), c.wire()))
            c.pump(ctx.timeout)
            return verdict(c, [], False, [INVALID_PAYLOAD], False, ctx)
        finally:
            c.shutdown()
    return run


P641 = [KOSME, b"\xf4\x90\x80\x80", b"edited"]
P642 = [(KOSME + b"\xf4\x90\x80\x80" + b"edited")[:12], b"\x90", (KOSME + b"\xf4\x90\x80\x80" + b"edited")[13:]]
add("6.4.1", "Send invalid UTF-8 text message in 3 fragments (frames). First frame payload is valid, "
    "then wait, then 2nd frame which contains the payload making the sequence invalid, then wait, "
    "then 3rd frame with rest.", fail_fast(P641, False), BOTH)
add("6.4.2", "Same as Case 6.4.1, but in 2nd frame, we send only up to and including the octet "
    "making the complete payload invalid.", fail_fast(P642, False), BOTH)
add("6.4.3", "Same as Case 6.4.1, but we send message not in 3 frames, but in 3 chops of the same "
    "message frame.", fail_fast(P641, True), BOTH)
add("6.4.4", "Same as Case 6.4.2, but we send message not in 3 frames, but in 3 chops of the same "
    "message frame.", fail_fast(P642, True), BOTH)


def _valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def utf8_sequences():
    """createUtf8TestSequences() of case6_x_x.py (Markus Kuhn's UTF-8 test)."""
    T = []
    vss = KOSME
    T.append(("Some valid UTF-8 sequences",
              [(True, b"hello\x24world"), (True, b"hello\xc2\xa2world"),
               (True, b"hello\xe2\x82\xacworld"), (True, b"hello\xf0\xa4\xad\xa2world"),
               (True, vss)]))
    T.append(("All prefixes of a valid UTF-8 string that contains multi-byte code points",
              [(_valid(vss[:i]), vss[:i]) for i in range(1, len(vss) + 1)]))
    T.append(("First possible sequence of a certain length",
              [(True, b"\x00"), (True, b"\xc2\x80"), (True, b"\xe0\xa0\x80"), (True, b"\xf0\x90\x80\x80")]))
    T.append(("First possible sequence length 5/6 (invalid codepoints)",
              [(False, b"\xf8\x88\x80\x80\x80"), (False, b"\xfc\x84\x80\x80\x80\x80")]))
    T.append(("Last possible sequence of a certain length",
              [(True, b"\x7f"), (True, b"\xdf\xbf"), (True, b"\xef\xbf\xbf"), (True, b"\xf4\x8f\xbf\xbf")]))
    T.append(("Last possible sequence length 4/5/6 (invalid codepoints)",
              [(False, b"\xf7\xbf\xbf\xbf"), (False, b"\xfb\xbf\xbf\xbf\xbf"),
               (False, b"\xfd\xbf\xbf\xbf\xbf\xbf")]))
    T.append(("Other boundary conditions",
              [(True, b"\xed\x9f\xbf"), (True, b"\xee\x80\x80"), (True, b"\xef\xbf\xbd"),
               (True, b"\xf4\x8f\xbf\xbf"), (False, b"\xf4\x90\x80\x80")]))
    T.append(("Unexpected continuation bytes",
              [(False, b"\x80"), (False, b"\xbf"), (False, b"\x80\xbf"), (False, b"\x80\xbf\x80"),
               (False, b"\x80\xbf\x80\xbf"), (False, b"\x80\xbf\x80\xbf\x80"),
               (False, b"\x80\xbf\x80\xbf\x80\xbf"), (False, bytes(range(0x80, 0xbf)))]))
    lonely = []
    for lo, hi in [(0xc0, 0xdf), (0xe0, 0xef), (0xf0, 0xf7), (0xf8, 0xfb), (0xfc, 0xfd)]:
        lonely.append((False, b"".join(bytes([i, 0x20]) for i in range(lo, hi))))
    T.append(("Lonely start characters", lonely))
    k = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80", b"\xfc\x80\x80\x80\x80",
         b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf"]
    T.append(("Sequences with last continuation byte missing", [(False, kk) for kk in k]))
    T.append(("Concatenation of incomplete sequences", [(False, b"".join(k))]))
    T.append(("Impossible bytes", [(False, b"\xfe"), (False, b"\xff"), (False, b"\xfe\xfe\xff\xff")]))
    T.append(("Examples of an overlong ASCII character",
              [(False, b"\xc0\xaf"), (False, b"\xe0\x80\xaf"), (False, b"\xf0\x80\x80\xaf"),
               (False, b"\xf8\x80\x80\x80\xaf"), (False, b"\xfc\x80\x80\x80\x80\xaf")]))
    T.append(("Maximum overlong sequences",
              [(False, b"\xc1\xbf"), (False, b"\xe0\x9f\xbf"), (False, b"\xf0\x8f\xbf\xbf"),
               (False, b"\xf8\x87\xbf\xbf\xbf"), (False, b"\xfc\x83\xbf\xbf\xbf\xbf")]))
    T.append(("Overlong representation of the NUL character",
              [(False, b"\xc0\x80"), (False, b"\xe0\x80\x80"), (False, b"\xf0\x80\x80\x80"),
               (False, b"\xf8\x80\x80\x80\x80"), (False, b"\xfc\x80\x80\x80\x80\x80")]))
    T.append(("Single UTF-16 surrogates",
              [(False, b"\xed\xa0\x80"), (False, b"\xed\xad\xbf"), (False, b"\xed\xae\x80"),
               (False, b"\xed\xaf\xbf"), (False, b"\xed\xb0\x80"), (False, b"\xed\xbe\x80"),
               (False, b"\xed\xbf\xbf")]))
    T.append(("Paired UTF-16 surrogates",
              [(False, b"\xed\xa0\x80\xed\xb0\x80"), (False, b"\xed\xa0\x80\xed\xbf\xbf"),
               (False, b"\xed\xad\xbf\xed\xb0\x80"), (False, b"\xed\xad\xbf\xed\xbf\xbf"),
               (False, b"\xed\xae\x80\xed\xb0\x80"), (False, b"\xed\xae\x80\xed\xbf\xbf"),
               (False, b"\xed\xaf\xbf\xed\xb0\x80"), (False, b"\xed\xaf\xbf\xed\xbf\xbf")]))
    nc = [(True, b"\xef\xbf\xbe"), (True, b"\xef\xbf\xbf")]
    for z1 in [0xf0, 0xf1, 0xf2, 0xf3, 0xf4]:
        for z2 in [0x8f, 0x9f, 0xaf, 0xbf]:
            if not (z1 == 0xf4 and z2 != 0x8f):  # those encode code points > U+10FFFF
                for z3 in [0xbe, 0xbf]:
                    zz = bytes([z1, z2, 0xbf, z3])
                    if zz not in (b"\xf0\x8f\xbf\xbe", b"\xf0\x8f\xbf\xbf"):  # overlong
                        nc.append((True, zz))
    T.append(("Non-character code points (valid UTF-8)", nc))
    T.append(("Unicode specials (i.e. replacement char)",
              [(True, b"\xef\xbf\xb9"), (True, b"\xef\xbf\xba"), (True, b"\xef\xbf\xbb"),
               (True, b"\xef\xbf\xbc"), (True, b"\xef\xbf\xbd"), (True, b"\xef\xbf\xbe"),
               (True, b"\xef\xbf\xbf")]))
    return T


UTF8_SUBSECTIONS = {}
for _i, (_title, _seqs) in enumerate(utf8_sequences(), 5):
    UTF8_SUBSECTIONS["6.%d" % _i] = _title
    for _j, (_ok, _p) in enumerate(_seqs, 1):
        assert _ok == _valid(_p), (_i, _j, _p)  # the table agrees with a strict decoder
        if _ok:
            echo_ok("6.%d.%d" % (_i, _j), "Send a text message with payload which is valid UTF-8 in "
                    "one fragment. Payload: 0x%s" % _p.hex(), [MSG(OP_TEXT, _p)], [msg(_p)])
        else:
            fails("6.%d.%d" % (_i, _j), "Send a text message with payload which is not valid UTF-8 "
                  "in one fragment. Payload: 0x%s" % _p.hex(), [MSG(OP_TEXT, _p)],
                  codes=[INVALID_PAYLOAD], policies=BOTH)


# ---------------------------------------------------------------- 7 Close handling

echo_ok("7.1.1", "Send a message followed by a close frame.", [F(OP_TEXT, b"Hello World!")],
        [msg(b"Hello World!")])
std("7.1.2", "Send two close frames.", [CLOSE(NORMAL), F(OP_CLOSE)], [], True, [NORMAL], True,
    close_sent=True, policies=BOTH)
std("7.1.3", "Send a ping after close message.", [CLOSE(NORMAL), F(OP_PING)], [], True, [NORMAL], True,
    close_sent=True, policies=BOTH)
std("7.1.4", "Send text message after sending a close frame.",
    [CLOSE(NORMAL), F(OP_TEXT, b"Hello World!")], [], True, [NORMAL], True, close_sent=True, policies=BOTH)
std("7.1.5", "Send message fragment1 followed by close then fragment.",
    [F(OP_TEXT, b"fragment1", fin=False), CLOSE(NORMAL), F(OP_CONT, b"fragment2")],
    [], True, [NORMAL], True, close_sent=True, policies=BOTH)


def case_7_1_6(ctx):
    """INFORMATIONAL in Autobahn (echoes may or may not precede the close).
    Required here: a clean close with 1000 and no pong for the ping sent
    after the close; the echoes, if any, in order and intact."""
    big = fill(b"BAsd7&jh23", 256 * 1024)
    c = ctx.connect()
    try:
        c.send_frame(OP_TEXT, big)
        c.send_frame(OP_TEXT, b"Hello World!")
        c.send_close(NORMAL)
        c.send_frame(OP_PING)
        c.pump(ctx.timeout)
        full = [msg(big), msg(b"Hello World!")]
        if c.events != full[:len(c.events)]:
            raise CaseFail("unexpected events %s | %s" % (describe_events(c.events), c.wire()))
        verdict(c, c.events, True, [NORMAL], True, ctx)
        return "%d of 2 echoes before the close" % len(c.events)
    finally:
        c.shutdown()


add("7.1.6", "Send 256K message followed by close then a ping.", case_7_1_6)
std("7.3.1", "Send a close frame with payload length 0 (no close code, no close reason).",
    [lambda c: c.send_close(raw=b"")], [], True, [NORMAL], True, close_sent=True, policies=BOTH,
    allow_empty_close=True)
std("7.3.2", "Send a close frame with payload length 1.", [lambda c: c.send_close(raw=b"a")], [], True,
    [PROTOCOL_ERROR], False, close_sent=True, policies=BOTH)
std("7.3.3", "Send a close frame with close code and no close reason.", [CLOSE(NORMAL)], [], True,
    [NORMAL], True, close_sent=True, policies=BOTH)
std("7.3.4", "Send a close frame with close code and close reason.", [CLOSE(NORMAL, "Hello World!")],
    [], True, [NORMAL], True, close_sent=True, policies=BOTH)
std("7.3.5", "Send a close frame with close code and close reason of maximum length (123).",
    [CLOSE(NORMAL, "*" * 123)], [], True, [NORMAL], True, close_sent=True, policies=BOTH)
std("7.3.6", "Send a close frame with close code and close reason which is too long (124) - total "
    "frame payload 126 octets.", [CLOSE(NORMAL, "*" * 124)], [], True, [PROTOCOL_ERROR], False,
    close_sent=True, policies=BOTH)
std("7.5.1", "Send a close frame with invalid UTF8 payload.", [CLOSE(NORMAL, BAD)], [], True,
    [PROTOCOL_ERROR, INVALID_PAYLOAD], False, close_sent=True, policies=BOTH)
for _i, _code in enumerate([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999], 1):
    std("7.7.%d" % _i, "Send close with valid close code %d." % _code, [CLOSE(_code)], [], True,
        [NORMAL, _code], True, close_sent=True, policies=BOTH, strict_codes=[_code])
for _i, _code in enumerate([0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999], 1):
    std("7.9.%d" % _i, "Send close with invalid close code %d." % _code, [CLOSE(_code)], [], True,
        [PROTOCOL_ERROR], False, close_sent=True, policies=BOTH)


def case_7_13(code):
    def run(ctx):
        # INFORMATIONAL in Autobahn: codes 1000, the code, 1002 or a drop. The
        # server must still end the connection itself; strict wants 1002.
        c = ctx.connect()
        try:
            c.send_close(code)
            c.pump(ctx.timeout)
            verdict(c, [], True, [NORMAL, code, PROTOCOL_ERROR], False, ctx,
                    strict_codes=[PROTOCOL_ERROR])
            return c.close_desc()
        finally:
            c.shutdown()
    return run


add("7.13.1", "Send close with close code 5000.", case_7_13(5000), BOTH)
add("7.13.2", "Send close with close code 65535.", case_7_13(65535), BOTH)


# ---------------------------------------------------------------- 9 Limits/Performance

def big_case(opcode, size, pattern, frag=None, chop=None):
    """9.1-9.6: one message of size octets (fragmented into frag-octet frames,
    or a single frame written in chop-octet pieces) must come back intact;
    over the server's max_message_bytes it must be refused with 1009."""
    def run(ctx):
        payload = fill(pattern, size)
        c = ctx.connect()
        try:
            frames = message_frames(opcode, payload, frag)
            if size > ctx.max_message_bytes:
                t = c.send_background(frames, chop=chop)
                c.pump(ctx.big_timeout, stop=lambda: c.close_frame is not None or c.events)
                c.pump(ctx.timeout, stop=lambda: c.events)
                t.join(1)
                try:
                    verdict(c, [], False, [TOO_BIG], False, ctx)
                except CaseFail as e:
                    raise CaseFail("message of %d octets > max_message_bytes=%d: %s"
                                   % (size, ctx.max_message_bytes, e))
                return "over max_message_bytes=%d: refused" % ctx.max_message_bytes
            t0 = time.monotonic()
            data = b"".join(frames)
            t = c.send_background([data], chop=chop)
            c.pump(ctx.big_timeout, stop=lambda: c.events or c.close_frame is not None)
            dt = time.monotonic() - t0
            t.join(1)
            if not c.events:
                if c.close_frame is None:
                    raise CaseFail("no echo within %ss | %s" % (ctx.big_timeout, c.wire()))
                c.pump(ctx.timeout)
                raise CaseFail("no echo: the server closed instead (%s) | %s" % (c.close_desc(), c.wire()))
            e = c.events[0]
            if e[0] != "message" or e[2] != (opcode == OP_BIN) or e[1] != payload:
                raise CaseFail("echo differs: got %s, sent %s %s | %s" % (
                    describe_events([e]), "binary" if opcode == OP_BIN else "text", short(payload), c.wire()))
            expect(c, [msg(payload, opcode == OP_BIN)], True, [NORMAL], True, ctx)
            return "%.3fs" % dt
        finally:
            c.shutdown()
    return run


K, M = 2 ** 10, 2 ** 20
for _i, _n in enumerate([64 * K, 256 * K, 1 * M, 4 * M, 8 * M, 16 * M], 1):
    add("9.1.%d" % _i, "Send text message with payload of length %d." % _n,
        big_case(OP_TEXT, _n, b"BAsd7&jh23"))
    add("9.2.%d" % _i, "Send binary message with payload of length %d." % _n,
        big_case(OP_BIN, _n, b"\x00\xfe\x23\xfa\xf0"))
for _i, _f in enumerate([64, 256, 1 * K, 4 * K, 16 * K, 64 * K, 256 * K, 1 * M, 4 * M], 1):
    add("9.3.%d" % _i, "Send fragmented text message with message payload of length 4M. "
        "Sent out in fragments of %d." % _f, big_case(OP_TEXT, 4 * M, b"*", frag=_f))
    add("9.4.%d" % _i, "Send fragmented binary message with message payload of length 4M. "
        "Sent out in fragments of %d." % _f, big_case(OP_BIN, 4 * M, b"\xfe", frag=_f))
for _i, _ch in enumerate([64, 128, 256, 512, 1024, 2048], 1):
    add("9.5.%d" % _i, "Send text message with payload of length 1M. Sent out data in chops of %d octets." % _ch,
        big_case(OP_TEXT, 1 * M, b"BAsd7&jh23", chop=_ch))
    add("9.6.%d" % _i, "Send binary message with payload of length 1M. Sent out data in chops of %d octets." % _ch,
        big_case(OP_BIN, 1 * M, b"\x00\xfe\x23\xfa\xf0", chop=_ch))


def rtt_case(binary, size, count=1000):
    def run(ctx):
        op = OP_BIN if binary else OP_TEXT
        payload = fill(b"\xfe" if binary else b"*", size)
        data = frame(op, payload)
        c = ctx.connect()
        try:
            t0 = time.monotonic()
            for i in range(count):
                c.send_raw(data)
                if not c.pump(ctx.timeout, stop=lambda: len(c.events) > i or c.close_frame is not None) \
                        or c.close_frame is not None:
                    raise CaseFail("no echo for message %d of %d (%s) | %s"
                                   % (i + 1, count, c.close_desc(), c.wire()))
                e = c.events[i]
                if e != ("message", payload, binary):
                    raise CaseFail("message %d: got %s | %s" % (i + 1, describe_events([e]), c.wire()))
            dt = time.monotonic() - t0
            expect(c, [("message", payload, binary)] * count, True, [NORMAL], True, ctx)
            return "%.3fs, %.0f us/round trip" % (dt, dt / count * 1e6)
        finally:
            c.shutdown()
    return run


for _b, _sec in [(False, "9.7"), (True, "9.8")]:
    for _i, _n in enumerate([0, 16, 64, 256, 1024, 4096], 1):
        add("%s.%d" % (_sec, _i), "Send 1000 %s messages of payload size %d to measure implementation/"
            "network RTT (round trip time) / latency." % ("binary" if _b else "text", _n), rtt_case(_b, _n))


# ---------------------------------------------------------------- 10 Auto-fragmentation

echo_ok("10.1.1", "Send text message with payload of length 65536 auto-fragmented with "
        "autoFragmentSize = 1300.", [MSG(OP_TEXT, b"*" * 65536, frag=1300)], [msg(b"*" * 65536)])


# ---------------------------------------------------------------- statushost extras

fails("sh.3.6", "Send a Ping with RSV = 6 (what Autobahn 3.6's description says).",
      [F(OP_PING, HW, rsv=6)], policies=BOTH)
fails("sh.4.1", "Send an unmasked text frame (clients must mask): fail with 1002.",
      [F(OP_TEXT, HW, mask=False)], policies=BOTH)
fails("sh.4.2", "Send an unmasked ping: fail with 1002.", [F(OP_PING, b"x", mask=False)], policies=BOTH)
fails("sh.4.3", "Send a small text message, then an unmasked one: echo of the first, then 1002.",
      [F(OP_TEXT, HW), F(OP_TEXT, HW, mask=False)], ok=[msg(HW)], non_strict=[])


def case_huge_length(ctx):
    """64-bit payload length with the most significant bit set (RFC 6455
    5.2: it MUST be 0): the connection must be failed (1002, or 1009 for a
    server that checks the size first)."""
    c = ctx.connect()
    try:
        hdr = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + b"\x01\x02\x03\x04"
        c.send_raw(hdr + b"abcd")
        c.pump(ctx.timeout, stop=lambda: c.close_frame is not None)
        c.pump(ctx.timeout)
        return verdict(c, [], False, [PROTOCOL_ERROR, TOO_BIG], False, ctx)
    finally:
        c.shutdown()


add("sh.4.4", "Send a frame whose 64-bit length has the most significant bit set: fail (1002/1009).",
    case_huge_length, BOTH)


def case_oversize_frame(opcode):
    def run(ctx):
        """A single frame announcing max_message_bytes + 1 octets: the server
        must close with 1009 without waiting for the payload (we send 4 KiB
        of it, then wait)."""
        c = ctx.connect()
        c.reply_close = False  # we are inside a frame: a close frame cannot follow yet
        try:
            n = ctx.max_message_bytes + 1
            c.send_raw(frame(opcode, b"*" * 4096, length=n))
            c.pump(ctx.timeout, stop=lambda: c.close_frame is not None)
            c.pump(ctx.timeout)
            return verdict(c, [], False, [TOO_BIG], False, ctx)
        finally:
            c.shutdown()
    return run


def case_oversize_fragments(ctx):
    """A fragmented text message whose fragments together exceed
    max_message_bytes (each fragment alone is under it): 1009."""
    c = ctx.connect()
    try:
        n = ctx.max_message_bytes
        first = n - 16
        t = c.send_background([frame(OP_TEXT, b"*" * first, fin=False),
                               frame(OP_CONT, b"*" * 32, fin=False),
                               frame(OP_CONT, b"*" * 32, fin=True)])
        c.pump(ctx.big_timeout, stop=lambda: c.close_frame is not None or c.events)
        c.pump(ctx.timeout, stop=lambda: c.events)
        t.join(1)
        return verdict(c, [], False, [TOO_BIG], False, ctx)
    finally:
        c.shutdown()


def case_at_limit(ctx):
    """A text message of exactly max_message_bytes is accepted (echoed)."""
    if ctx.max_message_bytes > 32 * M:
        return "skipped: limit too large"
    return big_case(OP_TEXT, ctx.max_message_bytes, b"*")(ctx)


add("sh.9.1", "Send one text frame announcing max_message_bytes+1 octets: close 1009 before the "
    "payload is complete.", case_oversize_frame(OP_TEXT), BOTH)
add("sh.9.2", "Send one binary frame announcing max_message_bytes+1 octets: close 1009.",
    case_oversize_frame(OP_BIN), ECHO)
add("sh.9.3", "Send a fragmented text message whose total exceeds max_message_bytes: close 1009.",
    case_oversize_fragments, BOTH)
add("sh.9.4", "Send a text message of exactly max_message_bytes: echoed.", case_at_limit, ECHO)

for _i, _code in enumerate([1012, 1013, 1014], 1):
    std("sh.7.%d" % _i, "Send close with close code %d (IANA-registered since RFC 6455): "
        "clean close, normal or echoed code." % _code, [CLOSE(_code)], [], True, [NORMAL, _code], True,
        close_sent=True, policies=BOTH, strict_codes=[_code])
std("sh.7.4", "Send close with close code 1015 (TLS handshake; must never be sent): 1002.",
    [CLOSE(1015)], [], True, [PROTOCOL_ERROR], False, close_sent=True, policies=BOTH)

fails("sh.10.1", "Default policy: send a binary message: close 1003.",
      [F(OP_BIN, b"\x00\xff\xfe")], codes=[UNSUPPORTED], policies=DEFAULT)
fails("sh.10.2", "Default policy: send a binary message in 2 fragments: close 1003.",
      [F(OP_BIN, b"\x00\xff", fin=False), F(OP_CONT, b"\xfe")], codes=[UNSUPPORTED], policies=DEFAULT)
fails("sh.10.3", "Default policy: a ping, then a binary message: pong, then close 1003.",
      [F(OP_PING, b"p"), F(OP_BIN, b"\x00")], ok=[("pong", b"p")], codes=[UNSUPPORTED],
      policies=DEFAULT)


# ---------------------------------------------------------------- 12, 13 permessage-deflate
# Autobahn's Case12_X_Y / Case13_X_Y: echo messages over a connection that
# negotiated permessage-deflate (RFC 7692), at 18 size/fragmentation points,
# for 5 kinds of payload (12.x, client offer "permessage-deflate;
# client_max_window_bits") and 7 offers (13.x, text of 12.1's kind). Autobahn
# sends each message 1000 times; ctx.pmd_count (--pmd-count) sets how many.
# Fragmentation is of the compressed payload (Autobahn's autoFragmentSize).

PMD_POINTS = [(16, None), (64, None), (256, None), (1024, None), (4096, None), (8192, None),
              (16384, None), (32768, None), (65536, None), (131072, None),
              (8192, 256), (16384, 256), (32768, 256), (65536, 256), (131072, 256),
              (131072, 1024), (131072, 4096), (131072, 32768)]

_WORDS = ("the of and to in is was for on that with as by at from his it an were are which "
          "this be or has had not first one their its new after but who they have two "
          "status task update redis worker batch socket message window deflate").split()


def _pmd_text(n, seed):
    r = random.Random(seed)
    out = []
    size = 0
    while size <= n:
        for w in r.choices(_WORDS, k=(n - size) // 5 + 1):  # words of 4.5 octets on average
            out.append(w)
            size += len(w) + 1
    return " ".join(out).encode()[:n]


def _pmd_json(n, seed):
    r = random.Random(seed)
    out, size = [], 0
    while size < n:
        line = ('{"task":"t%d","state":"%s","progress":%d,"note":"\u00e9t\u00e9 %d"}\n'
                % (r.randrange(10000), r.choice(["queued", "running", "done", "failed"]),
                   r.randrange(101), r.randrange(1000))).encode()
        out.append(line)
        size += len(line)
    out = b"".join(out)[:n]
    while True:  # never cut inside a UTF-8 sequence
        try:
            out.decode()
            return out
        except UnicodeDecodeError:
            out = out[:-1] + b" "


def _pmd_records(n, seed):
    r = random.Random(seed)
    out = [struct.pack("!IHB", r.randrange(1 << 20), r.randrange(64), r.randrange(4)) + b"\x00" * 9
           for _ in range(n // 16 + 1)]
    return b"".join(out)[:n]


def _pmd_mixed(n, seed):
    r = random.Random(seed)
    return bytes(r.choices(b"\x00\x01\x02\x03abcdefgh\xff\xfe", k=n))


def _pmd_random(n, seed):
    return random.Random(seed).randbytes(n)


PMD_KINDS = [  # 12.x: (opcode, what, generator)
    (OP_TEXT, "text made of English words", _pmd_text),
    (OP_BIN, "binary records (very compressible)", _pmd_records),
    (OP_TEXT, "JSON task updates with non-ASCII text", _pmd_json),
    (OP_BIN, "binary of a 14-symbol alphabet", _pmd_mixed),
    (OP_BIN, "random binary (incompressible)", _pmd_random),
]

PMD_DEFAULT_OFFER = "permessage-deflate; client_max_window_bits"
PMD_OFFERS = [  # 13.x: (offer, what, parameters the answer must carry)
    ("permessage-deflate", "the default offer", {}),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     "no context takeover", {"server_no_context_takeover": None}),
    ("permessage-deflate; server_max_window_bits=9; client_max_window_bits=8",
     "the smallest windows (server 9: zlib has no raw 8-bit window)", {"server_max_window_bits": "9"}),
    ("permessage-deflate; server_max_window_bits=15; client_max_window_bits=15",
     "the largest windows", {"server_max_window_bits": None}),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=9; client_max_window_bits=8",
     "the smallest windows and no context takeover",
     {"server_no_context_takeover": None, "server_max_window_bits": "9"}),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=15; client_max_window_bits=15",
     "the largest windows and no context takeover",
     {"server_no_context_takeover": None, "server_max_window_bits": None}),
    ('permessage-deflate; server_max_window_bits=8, permessage-deflate; foo, '
     'permessage-deflate; server_no_context_takeover; server_max_window_bits="10", permessage-deflate',
     "several offers: the first acceptable (the third) is taken",
     {"server_no_context_takeover": None, "server_max_window_bits": "10"}),
]


def check_pmd_answer(c, offer, want):
    """The server's answer accepts the offer as RFC 7692 §7.1 allows:
    server_no_context_takeover when asked, server_max_window_bits only when
    offered and never above the offered value, client_max_window_bits only
    when offered. want: parameters that must be there (value None: any)."""
    if c.pmd is None:
        raise CaseFail("permessage-deflate was not negotiated (offer %r)" % offer)
    first_ok = None
    for o in offer.split(","):
        first_ok = o
        if "foo" not in o and "server_max_window_bits=8" not in o:
            break
    for k, v in want.items():
        if k not in c.pmd or (v is not None and c.pmd[k] != v):
            raise CaseFail("answer %r lacks %s%s" % (c.response_headers.get("sec-websocket-extensions"),
                                                     k, "=" + v if v else ""))
    if "server_no_context_takeover" in c.pmd and "server_no_context_takeover" not in first_ok:
        raise CaseFail("server_no_context_takeover answered but not offered")
    for k in ("server_max_window_bits", "client_max_window_bits"):
        if c.pmd.get(k) is not None and k not in first_ok:
            raise CaseFail("%s answered but not offered" % k)
        if c.pmd.get(k) is not None:
            offered = first_ok.split(k + "=")[1].split(";")[0].strip().strip('"') \
                if k + "=" in first_ok else "15"
            if not 8 <= int(c.pmd[k]) <= int(offered):
                raise CaseFail("%s=%s answered to an offer of %s" % (k, c.pmd[k], offered))


def pmd_echo(offer, want, opcode, gen, size, frag, seed):
    def run(ctx):
        c = ctx.connect(deflate=offer)
        try:
            check_pmd_answer(c, offer, want)
            n = ctx.pmd_count
            # the same payload repeated (as Autobahn) alternates with fresh ones
            made = [gen(size, seed + k) for k in range((n + 1) // 2)]
            payloads = [made[i // 2] for i in range(n)]
            for p in payloads:
                if not c.send_message_z(opcode, p, frag):
                    break
            ok = [msg(p, opcode == OP_BIN) for p in payloads]
            note = expect(c, ok, True, [NORMAL], True, ctx, wait=max(ctx.timeout, 10.0))
            # the server's thresholds: 32 octets, 128 without context takeover
            if size >= (128 if "server_no_context_takeover" in c.pmd else 32) \
                    and c.compressed_msgs != n:
                raise CaseFail("%d of %d echoes came back compressed" % (c.compressed_msgs, n))
            return note
        finally:
            c.shutdown()
    return run


for _k, (_op, _what, _gen) in enumerate(PMD_KINDS, 1):
    for _j, (_size, _frag) in enumerate(PMD_POINTS, 1):
        add("12.%d.%d" % (_k, _j), "Compressed echo: %s, %d octets%s (offer %r)."
            % (_what, _size, ", fragments of %d" % _frag if _frag else "", PMD_DEFAULT_OFFER),
            pmd_echo(PMD_DEFAULT_OFFER, {"client_no_context_takeover": None}, _op, _gen, _size,
                     _frag, 1200 + _k * 100 + _j))
for _k, (_offer, _what, _want) in enumerate(PMD_OFFERS, 1):
    for _j, (_size, _frag) in enumerate(PMD_POINTS, 1):
        add("13.%d.%d" % (_k, _j), "Compressed echo with %s: %d octets%s (offer %r)."
            % (_what, _size, ", fragments of %d" % _frag if _frag else "", _offer),
            pmd_echo(_offer, _want, OP_TEXT, _pmd_text, _size, _frag, 1300 + _k * 100 + _j))


def pmd_steps(steps, ok=(), codes=(PROTOCOL_ERROR,), offer=PMD_DEFAULT_OFFER):
    """A fails() case on a connection that negotiated permessage-deflate."""
    def run(ctx):
        c = ctx.connect(deflate=offer)
        try:
            if c.pmd is None:
                raise CaseFail("permessage-deflate was not negotiated")
            for st in steps:
                st(c)
            return expect(c, list(ok), False, list(codes), False, ctx)
        finally:
            c.shutdown()
    return run


def Z(opcode, payload, frag=None):
    """One step: send a compressed message."""
    return lambda c: c.send_message_z(opcode, payload, frag)


def _bomb(c):
    """A message that inflates to 64 MiB from ~64 KiB: over max_message_bytes
    however the server is set up here."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = z.compress(b"\x00" * (64 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    c.send_raw(frame(OP_BIN, chunk[:-4], rsv=4))


add("sh.12.1", "permessage-deflate: RSV1 on a continuation frame: 1002.",
    pmd_steps([F(OP_TEXT, b"Hello", fin=False), F(OP_CONT, b"world", rsv=4)]))
add("sh.12.2", "permessage-deflate: RSV1 on a ping: 1002.", pmd_steps([F(OP_PING, b"p", rsv=4)]))
add("sh.12.3", "permessage-deflate: RSV1 on a close frame: 1002.",
    pmd_steps([F(OP_CLOSE, b"\x03\xe8", rsv=4)]))
add("sh.12.4", "permessage-deflate: RSV2 on a text frame: 1002.",
    pmd_steps([F(OP_TEXT, b"Hello", rsv=2)]))
add("sh.12.5", "permessage-deflate: a compressed message that is not deflate data: 1007.",
    pmd_steps([F(OP_TEXT, b"\xff\xff\xff\xff\xff", rsv=4)], codes=[INVALID_PAYLOAD]))
add("sh.12.6", "permessage-deflate: compressed text that inflates to invalid UTF-8: 1007.",
    pmd_steps([Z(OP_TEXT, b"valid, then \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xb5\xed\xa0\x80 not")],
              codes=[INVALID_PAYLOAD]))
add("sh.12.7", "permessage-deflate: a compressed message inflating to 64 MiB: 1009.",
    pmd_steps([_bomb], codes=[TOO_BIG]))
add("sh.12.8", "permessage-deflate negotiated: uncompressed and compressed messages mix.",
    lambda ctx: pmd_mixed(ctx))
add("sh.12.9", "permessage-deflate: an offer with an unknown parameter is declined (no extension).",
    lambda ctx: pmd_declined(ctx, "permessage-deflate; foo=1"))
add("sh.12.10", "permessage-deflate: a malformed extension header is declined (no extension).",
    lambda ctx: pmd_declined(ctx, 'permessage-deflate; client_max_window_bits="10'))


def pmd_mixed(ctx):
    c = ctx.connect(deflate=PMD_DEFAULT_OFFER)
    try:
        big = _pmd_text(3000, 7)
        c.send_frame(OP_TEXT, b"plain")
        c.send_message_z(OP_TEXT, big, 100)
        c.send_frame(OP_BIN, big)
        c.send_message_z(OP_BIN, b"")
        return expect(c, [msg(b"plain"), msg(big), msg(big, True), msg(b"", True)], True, [NORMAL],
                      True, ctx)
    finally:
        c.shutdown()


def pmd_declined(ctx, offer):
    c = ctx.connect(deflate=offer)
    try:
        if c.pmd is not None:
            raise CaseFail("offer %r accepted: %r" % (offer, c.response_headers))
        c.send_frame(OP_TEXT, b"Hello")
        return expect(c, [msg(b"Hello")], True, [NORMAL], True, ctx)
    finally:
        c.shutdown()


CASES.sort(key=lambda c: (c.section == "sh", c.key()))
