"""A fuzzing WebSocket client connection and Autobahn's verdict rules.

Conn is a client that can put any octets on the wire (it builds frames with
the integration harness's WsClient.frame) and records, like Autobahn's
fuzzingclient, every event the server produces: data messages, pings, pongs,
the close frame, and how the TCP connection ended. It checks every frame the
server sends against RFC 6455 (server frames unmasked, RSV 0, known opcode,
control frames unfragmented and <= 125 octets, text valid UTF-8, nothing after
the close frame); a violation fails the case.

expect() applies the verdict of Autobahn's Case.onConnectionLost: the events
must equal the case's OK list (a NON-STRICT match is reported as a failure:
we want OK everywhere), the right endpoint must have started the close, the
close code must be one the case allows, a clean close where the case requires
one, and the server must be the one to close the TCP connection.
"""
import base64
import hashlib
import os
import socket
import struct
import sys
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import WsClient  # noqa: E402  (frame building is shared)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
OPNAMES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


class CaseFail(Exception):
    pass


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    return WsClient.frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length)


def fill(pattern, n):
    """Autobahn's payload_len: the pattern repeated and cut to n octets."""
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return (pattern * (n // len(pattern) + 1))[:n]


def close_payload(code=None, reason=None):
    """Autobahn's sendCloseFrame(code, reasonUtf8): code packed if given,
    reason appended if given (so a reason without code is a bare payload)."""
    p = b""
    if code is not None:
        p += struct.pack("!H", code)
    if reason is not None:
        p += reason.encode() if isinstance(reason, str) else reason
    return p


def message_frames(opcode, payload, frag_size=None):
    """Autobahn's sendMessage(payload, fragmentSize/payload_frag_size)."""
    if isinstance(payload, str):
        payload = payload.encode()
    if not frag_size or len(payload) <= frag_size:
        return [frame(opcode, payload)]
    out = []
    n = len(payload)
    for i in range(0, n, frag_size):
        last = i + frag_size >= n
        out.append(frame(opcode if i == 0 else OP_CONT, payload[i:i + frag_size], fin=last))
    return out


def short(b, n=24):
    if b is None:
        return "None"
    if len(b) <= n:
        return repr(bytes(b))
    return "%r...(%d octets)" % (bytes(b[:n]), len(b))


def describe_events(evs):
    out = []
    for e in evs:
        if e[0] == "message":
            out.append("%s %s" % ("binary" if e[2] else "text", short(e[1])))
        else:
            out.append("%s %s" % (e[0], short(e[1])))
    return "[" + ", ".join(out) + "]"


class Conn:
    """One WebSocket connection to the server under test."""

    def __init__(self, host, port, path="/", timeout=10.0, headers=None, deflate=None):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.io_timeout = timeout
        self.rbuf = bytearray()
        self.events = []          # ("message", payload, is_binary) | ("ping"/"pong", payload)
        self.trace = []           # what the server sent, frame by frame, as hex (truncated)
        self.violations = []      # RFC 6455 violations by the server
        self.close_frame = None   # (code or None, reason, raw payload)
        self.server_closed_first = None  # True if the server's close frame preceded ours
        self.sent_close = None    # payload of the close frame we sent
        self.tcp = None           # None (open) | "eof" | "reset"
        self.send_error = None
        self._frag_op = None
        self._frag = []
        self._lock = threading.Lock()
        self._bg_active = False       # a send_background thread is writing
        self._deferred_close = None   # close reply to send once it is done
        self.reply_close = True       # answer the server's close frame (Autobahn does)
        self.pmd = None               # permessage-deflate response parameters, once agreed
        self._zin = None              # inflater of the server's messages
        self._zout = None             # deflater of ours
        self._frag_z = False          # the message arriving is compressed
        self.compressed_msgs = 0      # messages the server sent compressed
        headers = dict(headers or {})
        if deflate is not None:       # an offer: "permessage-deflate; ..."
            headers["Sec-WebSocket-Extensions"] = deflate
        self._handshake(path, headers)

    # ------------------------------------------------------------ handshake
    def _handshake(self, path, headers):
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": "%s:%d" % (self.host, self.port), "Upgrade": "websocket",
             "Connection": "Upgrade", "Sec-WebSocket-Key": key,
             "Sec-WebSocket-Version": "13"}
        h.update(headers)
        req = "GET %s HTTP/1.1\r\n" % path + "".join(
            "%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CaseFail("server closed during the opening handshake: %r" % buf)
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status != 101:
            raise CaseFail("opening handshake answered %r" % lines[0])
        want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        if hdrs.get("sec-websocket-accept") != want:
            raise CaseFail("bad Sec-WebSocket-Accept %r" % hdrs.get("sec-websocket-accept"))
        self.response_headers = hdrs
        ext = hdrs.get("sec-websocket-extensions")
        if ext is not None:
            self.pmd = parse_pmd_response(ext)
        self.rbuf += rest
        self._parse()

    # ------------------------------------------------------------ sending
    def send_raw(self, data, chop=None, sync=False):
        """Put octets on the wire. chop: in pieces of that many octets, each
        its own write (Autobahn's chopsize); sync: a pause after the write so
        that it leaves as its own TCP segment (Autobahn's sync=True). A send
        error (the server has gone) is recorded, not raised: the verdict
        judges what the server did."""
        if self.send_error is not None:
            return False
        try:
            if chop:
                for i in range(0, len(data), chop):
                    self.sock.sendall(data[i:i + chop])
                    if sync:
                        time.sleep(0.002)
            else:
                self.sock.sendall(data)
                if sync:
                    time.sleep(0.002)
            return True
        except OSError as e:
            self.send_error = e
            return False

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True, length=None,
                   chop=None, sync=False):
        return self.send_raw(frame(opcode, payload, fin, rsv, mask, length), chop, sync)

    def send_message(self, opcode, payload, frag_size=None, chop=None, sync=False):
        for f in message_frames(opcode, payload, frag_size):
            if not self.send_raw(f, chop, sync):
                return False
        return True

    def compress(self, payload):
        """A message payload compressed as RFC 7692 §7.2.1 says (the tail
        0x00 0x00 0xff 0xff removed), with context takeover unless the
        server answered client_no_context_takeover."""
        if self._zout is None or "client_no_context_takeover" in self.pmd:
            # zlib cannot make a raw 8-bit window: 9 is the least it takes
            wb = max(9, int(self.pmd.get("client_max_window_bits") or 15))
            self._zout = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wb)
        data = self._zout.compress(payload) + self._zout.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        return data[:-4]

    def send_message_z(self, opcode, payload, frag_size=None, chop=None):
        """A compressed message: RSV1 on its first frame, the compressed
        payload cut in frag_size pieces (Autobahn's autoFragmentSize)."""
        if isinstance(payload, str):
            payload = payload.encode()
        data = self.compress(payload)
        pieces = [data[i:i + frag_size] for i in range(0, len(data), frag_size)] \
            if frag_size else [data]
        pieces = pieces or [b""]
        for i, p in enumerate(pieces):
            f = frame(opcode if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1,
                      rsv=4 if i == 0 else 0)
            if not self.send_raw(f, chop):
                return False
        return True

    def _inflate(self, data):
        if self._zin is None or "server_no_context_takeover" in self.pmd:
            # a fresh inflater per message checks the server really resets
            self._zin = zlib.decompressobj(-int(self.pmd.get("server_max_window_bits") or 15))
        try:
            return self._zin.decompress(data + b"\x00\x00\xff\xff")
        except zlib.error as e:
            self._violate("server sent a compressed message that does not inflate: %s" % e)
            return data

    def send_close(self, code=None, reason=None, raw=None):
        p = raw if raw is not None else close_payload(code, reason)
        with self._lock:
            if self.sent_close is None:
                self.sent_close = p
                if self.server_closed_first is None:
                    self.server_closed_first = False
        return self.send_frame(OP_CLOSE, p)

    def send_background(self, chunks, chop=None, sync=False):
        """Send a list of byte strings from a thread (for payloads so large
        that the server may close before it has read them all). A close
        reply to the server's close frame is queued behind them, as a
        transport's write queue would (never inside a frame)."""
        self._bg_active = True

        def run():
            try:
                for c in chunks:
                    if not self.send_raw(c, chop, sync):
                        break
            finally:
                with self._lock:
                    self._bg_active = False
                    deferred, self._deferred_close = self._deferred_close, None
                if deferred is not None:
                    self.send_frame(OP_CLOSE, deferred)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    # ------------------------------------------------------------ receiving
    def pump(self, timeout, stop=None):
        """Read and process what the server sends until stop() is true, the
        TCP connection has ended, or timeout seconds have passed. → stop()."""
        deadline = time.monotonic() + timeout
        while True:
            if stop is not None and stop():
                return True
            if self.tcp is not None:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.tcp = "reset"
                continue
            except OSError as e:
                self.tcp = "error: %s" % e
                continue
            finally:
                self.sock.settimeout(self.io_timeout)
            if not chunk:
                self.tcp = "eof"
                continue
            self.rbuf += chunk
            self._parse()

    def _violate(self, what):
        self.violations.append(what)

    def _parse(self):
        buf = self.rbuf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack("!H", buf[2:4])[0]
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack("!Q", buf[2:10])[0]
                off = 10
            masked = bool(b1 & 0x80)
            if masked:
                off += 4
            if len(buf) < off + n:
                return
            head = bytes(buf[:off])
            payload = bytes(buf[off:off + n])
            del buf[:off + n]
            if masked:
                key = head[-4:]
                payload = _unmask(payload, key)
            self.trace.append("[%s%s]" % (head.hex(" "), (" " + payload[:40].hex(" ")) if payload else "")
                              + ("...(%d octets)" % n if n > 40 else ""))
            self._on_frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, payload)

    def _on_frame(self, fin, rsv, op, masked, payload):
        name = OPNAMES.get(op, "opcode %d" % op)
        if masked:
            self._violate("server sent a masked %s frame" % name)
        compressed = (rsv == 4 and self.pmd is not None and op in (OP_TEXT, OP_BIN))
        if rsv and not compressed:
            self._violate("server sent a %s frame with RSV=%d" % (name, rsv))
        if self.close_frame is not None:
            self._violate("server sent a %s frame after its close frame" % name)
        if op >= 8 and (not fin or len(payload) > 125):
            self._violate("server sent a bad control frame (%s, fin=%d, %d octets)"
                          % (name, fin, len(payload)))
        if op in (OP_CONT, OP_TEXT, OP_BIN):
            if op == OP_CONT and self._frag_op is None:
                self._violate("server sent a continuation frame with no message to continue")
                return
            if op != OP_CONT and self._frag_op is not None:
                self._violate("server started a new message inside a fragmented one")
            if op != OP_CONT:
                self._frag_op, self._frag, self._frag_z = op, [], compressed
            self._frag.append(payload)
            if fin:
                msg = b"".join(self._frag)
                if self._frag_z:
                    msg = self._inflate(msg)
                    self.compressed_msgs += 1
                binary = self._frag_op == OP_BIN
                self._frag_op, self._frag = None, []
                if not binary:
                    try:
                        msg.decode("utf-8")
                    except UnicodeDecodeError:
                        self._violate("server sent a text message that is not valid UTF-8: %s" % short(msg))
                self.events.append(("message", msg, binary))
        elif op == OP_PING:
            self.events.append(("ping", payload))
            if self.sent_close is None:
                self.send_frame(OP_PONG, payload)
        elif op == OP_PONG:
            self.events.append(("pong", payload))
        elif op == OP_CLOSE:
            if self.close_frame is not None:
                return
            code, reason = None, b""
            if len(payload) == 1:
                self._violate("server sent a close frame with a 1-octet payload")
            elif len(payload) >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                reason = payload[2:]
                try:
                    reason.decode("utf-8")
                except UnicodeDecodeError:
                    self._violate("server's close reason is not valid UTF-8: %s" % short(reason))
            self.close_frame = (code, reason, payload)
            echo = payload[:2] if code is not None else b""  # as Autobahn does: echo the code
            with self._lock:
                if self.server_closed_first is None:
                    self.server_closed_first = True
                reply = self.sent_close is None and self.reply_close
                if reply:
                    self.sent_close = echo
                    if self._bg_active:
                        self._deferred_close = echo
                        reply = False
            if reply:
                self.send_frame(OP_CLOSE, echo)
        else:
            self._violate("server sent a frame with reserved opcode %d" % op)

    def shutdown(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------ reporting
    def wire(self):
        """The server's side of the conversation, for failure messages."""
        t = self.trace
        if len(t) > 8:
            t = t[:3] + ["...%d frames..." % (len(t) - 6)] + t[-3:]
        return "server sent %s; tcp %s" % (" ".join(t) if t else "no frames",
                                           self.tcp or "still open")

    def close_desc(self):
        if self.close_frame is None:
            return "no close frame"
        code, reason, raw = self.close_frame
        if code is None:
            return "close frame without status code"
        return "close %d %s" % (code, short(reason, 40))


def parse_pmd_response(value):
    """The parameters of a permessage-deflate response: {name: value or
    None}. Anything else than one permessage-deflate element is an error."""
    elems = [e.strip() for e in value.split(",") if e.strip()]
    if len(elems) != 1:
        raise CaseFail("Sec-WebSocket-Extensions answered %r: one element expected" % value)
    parts = [p.strip() for p in elems[0].split(";")]
    if parts[0] != "permessage-deflate":
        raise CaseFail("Sec-WebSocket-Extensions answered %r" % value)
    out = {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        k = k.strip()
        if k in out:
            raise CaseFail("repeated %s in %r" % (k, value))
        if k not in ("server_no_context_takeover", "client_no_context_takeover",
                     "server_max_window_bits", "client_max_window_bits"):
            raise CaseFail("unknown parameter %s in %r" % (k, value))
        out[k] = v.strip().strip('"') if eq else None
    return out


def _unmask(payload, key):
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def _is_prefix(evs, ok):
    return len(evs) <= len(ok) and evs == ok[:len(evs)]


def expect(c, ok, by_me, codes, clean, ctx, non_strict=None, close_sent=False,
           strict_codes=None, allow_empty_close=False, wait=None, events_override=None):
    """Autobahn's verdict on one connection; raises CaseFail unless OK.

    ok / non_strict: the expected event lists (Case.expected[OK/NON_STRICT]).
    by_me: expectedClose["closedByMe"] - the client (us) starts the close;
      when True and close_sent is False we send close(codes[0]) as soon as
      the events match, as Case.finishWhenDone does.
    codes: expectedClose["closeCode"]; a close frame without a status code is
      accepted, as Autobahn does, unless ctx.strict_close.
    clean: expectedClose["requireClean"].
    strict_codes: with ctx.strict_close, the codes the server must send (a
      close frame is then required even where Autobahn accepts a TCP drop).
    """
    wait = ctx.timeout if wait is None else wait
    if by_me and not close_sent:
        c.pump(wait, stop=lambda: c.events == ok or not _is_prefix(c.events, ok)
               or c.close_frame is not None)
        if c.tcp is None and c.close_frame is None:
            c.send_close(codes[0])
    # now the close handshake: wait for the server to end the TCP connection
    c.pump(wait, stop=None)
    return verdict(c, ok, by_me, codes, clean, ctx, non_strict, strict_codes,
                   allow_empty_close, events_override)


def verdict(c, ok, by_me, codes, clean, ctx, non_strict=None, strict_codes=None,
            allow_empty_close=False, events_override=None):
    evs = c.events if events_override is None else events_override
    want = "/".join(map(str, codes))
    if c.violations:
        raise CaseFail("server violated RFC 6455: %s | %s" % ("; ".join(c.violations), c.wire()))
    if evs != ok:
        if non_strict is not None and evs == non_strict:
            raise CaseFail("NON-STRICT: got %s, strict expects %s | %s"
                           % (describe_events(evs), describe_events(ok), c.wire()))
        raise CaseFail("got %s, expected %s | %s"
                       % (describe_events(evs), describe_events(ok), c.wire()))
    if c.tcp is None and not by_me and c.close_frame is None:
        raise CaseFail("server did not fail the connection (expected close %s) | %s" % (want, c.wire()))
    # who started the close (Autobahn: closedByMe must match)
    if by_me and c.server_closed_first:
        raise CaseFail("the server started the close (%s), expected the client to | %s"
                       % (c.close_desc(), c.wire()))
    if not by_me and not c.server_closed_first and c.sent_close is not None:
        raise CaseFail("the server did not fail the connection; the client had to close | %s"
                       % c.wire())
    code = c.close_frame[0] if c.close_frame is not None else None
    if c.close_frame is not None:
        if code is not None and code not in codes:
            raise CaseFail("WRONG CODE: expected close %s, got %s | %s" % (want, c.close_desc(), c.wire()))
        if ctx.strict_close:
            sw = "/".join(map(str, strict_codes or codes))
            if code is None and not allow_empty_close:
                raise CaseFail("expected close %s, got a close frame without status code (strict) | %s"
                               % (sw, c.wire()))
            if code is not None and code not in (strict_codes or codes):
                raise CaseFail("expected close %s, got %s (strict) | %s" % (sw, c.close_desc(), c.wire()))
    if c.tcp is None:
        raise CaseFail("server did not close the TCP connection (%s; %s) | %s"
                       % (c.close_desc(), "we sent close %s" % short(c.sent_close)
                          if c.sent_close is not None else "we sent no close", c.wire()))
    if by_me and c.server_closed_first is None:
        raise CaseFail("the server dropped the TCP connection before the client closed | %s"
                       % c.wire())
    if c.close_frame is None:
        if clean:
            raise CaseFail("UNCLEAN: TCP closed without a close frame (expected close %s) | %s"
                           % (want, c.wire()))
        if ctx.strict_close:
            raise CaseFail("expected close %s, got a TCP drop without close frame (strict) | %s"
                           % ("/".join(map(str, strict_codes or codes)), c.wire()))
        return "tcp dropped without close frame"
    return None
