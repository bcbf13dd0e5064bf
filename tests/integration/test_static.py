"""Static files from web_root on the real binary: streamed in chunks (a
connection holds one 64 KiB chunk of a file, however large the file and
however slow the reader), ETag / Last-Modified and 304s, HEAD, keep-alive
after a streamed body, a file that shrinks or grows while it is sent.

    python3 tests/integration/test_static.py [test_name ...]
    SH_VERBOSE=1 ... shows the server's log

Every wait is on an event (a response head, a TCP close, a log line);
wait_until polls /proc only. Each docstring says whether the test fails on the
code before streaming (one blocking read of the whole file, capped at 16 MiB,
copied into the connection's output).
"""
import email.utils
import http.client
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Statushost, Suite, free_port, http_get, http_request,  # noqa: E402
                     shared_redis, wait_until)

suite = Suite("static")
ECHO = "examples/echo.lua"
MIB = 1024 * 1024
# under valgrind (tests/run.sh --valgrind) the process's RSS is valgrind's: no bound on it
WRAPPED = bool(os.environ.get("SH_WRAPPER"))


def host(web, sets=(), redis=None):
    """statushost serving web, with a short shutdown grace (clients a test
    leaves open would hold the shutdown for the default 10 s). Under ASan,
    a small quarantine: freed chunks would otherwise stay resident (256 MB)."""
    sets = ["web_root=" + web, "shutdown_grace_ms=300"] + list(sets)
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"}
    return Statushost(ECHO, redis=redis or "redis://127.0.0.1:%d" % free_port(), sets=sets,
                      env=env)


class WebRoot:
    """A temporary web root; files are written with write(name, data)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sh-static-")

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *a):
        shutil.rmtree(self.dir, ignore_errors=True)


def connect(port, rcvbuf=None, timeout=10):
    """A raw client socket; rcvbuf (set before connecting) keeps what the
    kernel buffers for a client that does not read small."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def request(path, method="GET", headers=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: t"] + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client:
    """One raw connection (connect()): requests sent with send(), responses
    read in order; closed at the end of a with block."""

    def __init__(self, port, rcvbuf=None):
        self.sock = connect(port, rcvbuf)
        self.buf = bytearray()  # appended to in place: a body of megabytes is not copied per read

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.sock.close()

    def send(self, *requests):
        self.sock.sendall(b"".join(requests))

    def _more(self, n=65536):
        chunk = self.sock.recv(n)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def head(self):
        """→ (status, headers with lower-case names)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        i = self.buf.index(b"\r\n\r\n")
        raw = bytes(self.buf[:i])
        del self.buf[:i + 4]
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def body(self, n, pace=None):
        """n bytes of body; pace: (bytes, seconds) to read at most that many
        bytes per that many seconds (a slow reader)."""
        while len(self.buf) < n:
            if pace:
                time.sleep(pace[1])
            self._more(min(pace[0] if pace else 1 << 20, n - len(self.buf)))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def to_close(self):
        """Whatever comes until the server closes (a reset counts as a close)."""
        while True:
            try:
                self._more()
            except (EOFError, ConnectionResetError):
                out = bytes(self.buf)
                self.buf.clear()
                return out


def cpu_ticks(sh):
    """The server's CPU time so far (utime + stime, in clock ticks)."""
    with open("/proc/%d/stat" % sh.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(sh, quiet=0.3):
    """Await the server using no CPU for quiet seconds (its sockets' buffers
    are full: nothing more can be sent)."""
    last = [cpu_ticks(sh), time.monotonic()]

    def idle():
        now = cpu_ticks(sh)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= quiet

    wait_until(idle, timeout=60, interval=0.05, what="the server idle")


def get_whole(port, path, out, i):
    try:
        out[i] = http_request(port, "GET", path, timeout=60)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        out[i] = e


# ================================================================ streaming

@suite.test
def large_file_served_whole_to_concurrent_readers():
    """A 24 MiB file (over the old 16 MiB cap), fetched by 4 clients at once:
    every one gets exactly its bytes, with Content-Length, ETag and
    Last-Modified.
    fails on old: yes (404: the file was over MAX_STATIC_BYTES)."""
    with WebRoot() as web:
        data = web.write("big.bin", os.urandom(24 * MIB))
        with host(web.dir) as sh:
            got = [None] * 4
            threads = [threading.Thread(target=get_whole, args=(sh.port, "/big.bin", got, i))
                       for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for i, r in enumerate(got):
                assert not isinstance(r, Exception), "client %d: %r" % (i, r)
                status, headers, body = r
                assert status == 200, (i, status)
                assert headers["content-length"] == str(len(data)), headers
                assert headers["content-type"] == "application/octet-stream", headers
                assert headers.get("etag", "").startswith('"'), headers
                assert "last-modified" in headers, headers
                assert len(body) == len(data) and body == data, \
                    "client %d: %d bytes, not the file's %d" % (i, len(body), len(data))


@suite.test
def readers_that_do_not_read_hold_little_memory():
    """200 connections ask for an 8 MiB file and read nothing past the
    response head: the server's RSS grows by less than 64 MiB (each holds one
    chunk, not the file), measured after each 25 and once the server is idle
    (all it can send is in the kernel), /healthz answers within a second, and
    once the clients go the server's file descriptors are back to before.
    fails on old: yes (each connection held the whole file in its output:
    RSS past 64 MiB within the first 25 connections)."""
    n, batch, limit_mib = 200, 25, 1e9 if WRAPPED else 64
    with WebRoot() as web:
        data = web.write("big.bin", os.urandom(8 * MIB))
        with host(web.dir, redis=shared_redis()) as sh:
            status, _, body = http_get(sh.port, "/big.bin")  # the allocator's pools, warm
            assert status == 200 and body == data, status
            base_rss, base_fds = sh.rss_kb(), sh.fd_count()
            clients = []
            try:
                for start in range(0, n, batch):
                    fresh = [Client(sh.port, rcvbuf=16384) for _ in range(batch)]
                    clients += fresh
                    for c in fresh:
                        c.send(request("/big.bin"))
                    for c in fresh:  # the head has come: the request was served
                        status, headers = c.head()
                        assert status == 200 and headers["content-length"] == str(len(data))
                    grown = (sh.rss_kb() - base_rss) / 1024
                    assert grown < limit_mib, "%d readers that do not read: RSS +%.0f MiB" % (
                        start + batch, grown)
                t0 = time.monotonic()
                status, _, body = http_request(sh.port, "GET", "/healthz", timeout=5)
                took = time.monotonic() - t0
                assert (status, body) == (200, b"ok\n"), (status, body)
                assert took < 1.0, "/healthz took %.2fs with %d stalled downloads" % (took, n)
                wait_idle(sh)  # every socket's buffer is full: the most the server holds
                grown = (sh.rss_kb() - base_rss) / 1024
                assert grown < limit_mib, "RSS +%.0f MiB" % grown
                assert sh.fd_count() >= base_fds + n, "a download holds its file open"
                print("    %d stalled 8 MiB downloads: RSS +%.1f MiB, /healthz in %.0f ms" % (
                    n, grown, took * 1000))
            finally:
                for c in clients:
                    c.sock.close()
            wait_until(lambda: sh.fd_count() <= base_fds, timeout=10,
                       what="the files of the closed downloads closed")


@suite.test
def a_stalled_download_is_dropped_and_its_file_closed():
    """A client that stops reading an 8 MiB file: once nothing has moved for
    keepalive_timeout_ms (500) the server drops it, says so, and closes the
    file; the client, reading again, gets fewer bytes than announced and the
    end of the connection.
    fails on old: yes (no such log line: the keep-alive timer closed the
    connection, the file had been read and closed long before)."""
    with WebRoot() as web:
        data = web.write("big.bin", os.urandom(8 * MIB))
        with host(web.dir, sets=["keepalive_timeout_ms=500"]) as sh:
            base_fds, mark = sh.fd_count(), sh.mark()
            with Client(sh.port, rcvbuf=16384) as r:
                r.send(request("/big.bin"))
                status, headers = r.head()
                assert status == 200, status
                sh.wait_log(r"response body: no progress within 500ms: dropped", start=mark)
                wait_until(lambda: sh.fd_count() <= base_fds, timeout=5,
                           what="the file closed with its connection")
                body = r.to_close()
                assert len(body) < len(data) and body == data[:len(body)], len(body)


@suite.test
def keep_alive_after_a_slowly_read_streamed_body():
    """One connection. GET a file and read its first 6 MiB slowly (64 KiB every
    20 ms: about 2 s, over keepalive_timeout_ms=1000, while no pause is), the
    rest at once: it arrives whole and the connection serves the next
    request. Then three requests sent at once (the file, a small one,
    /healthz): the two that wait behind the streamed body come after it, in
    order. The file is 6 MiB + the kernel's largest socket send buffer + 2 MiB,
    so that the server is still reading it while the client paces (the
    keep-alive timer starts once the last byte is handed to the kernel). The
    pacing is the behaviour under test (a slow reader), not a wait.
    fails on old: yes (the keep-alive timer, armed when the answer was queued,
    closed the connection after 1 s whatever the progress)."""
    with WebRoot() as web:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            wmem_max = int(f.read().split()[2])
        big = web.write("big.bin", os.urandom(6 * MIB + wmem_max + 2 * MIB))
        small = web.write("small.txt", b"small file\n")
        with host(web.dir, sets=["keepalive_timeout_ms=1000"], redis=shared_redis()) as sh:
            with Client(sh.port, rcvbuf=65536) as r:
                r.send(request("/big.bin"))
                status, headers = r.head()
                assert status == 200 and headers["connection"] == "keep-alive", (status, headers)
                try:
                    body = r.body(6 * MIB, pace=(65536, 0.02))
                except (EOFError, ConnectionResetError) as e:
                    raise AssertionError("a slow reader was cut off after %d bytes: %s" % (
                        len(r.buf), e))
                body += r.body(len(big) - len(body))
                assert body == big, "the big body differs"
                r.send(request("/big.bin"), request("/small.txt"), request("/healthz"))
                for want in (big, small, b"ok\n"):
                    status, headers = r.head()
                    assert status == 200 and r.body(int(headers["content-length"])) == want


@suite.test
def file_truncated_while_sent_closes_the_connection():
    """An 8 MiB file is cut to 1 MiB after its head was sent: the client gets
    fewer bytes than Content-Length, all of them the file's, then the server
    closes the connection (no hang, no padding); the server logs it and goes
    on serving.
    fails on old: yes (the whole file was read before the head was sent: the
    client got all 8 MiB)."""
    with WebRoot() as web:
        data = web.write("shrink.bin", os.urandom(8 * MIB))
        with host(web.dir, redis=shared_redis()) as sh:
            mark = sh.mark()
            with Client(sh.port, rcvbuf=65536) as r:
                r.send(request("/shrink.bin", headers=["Connection: close"]))
                status, headers = r.head()
                assert status == 200 and headers["content-length"] == str(len(data)), headers
                os.truncate(web.path("shrink.bin"), 1 * MIB)
                body = r.to_close()
            assert len(body) < len(data), "got all %d bytes of a file cut short" % len(body)
            assert body == data[:len(body)], "bytes that are not the file's"
            sh.wait_log(r"response body ends \d+ bytes short \(source ended\): closed",
                        start=mark)
            status, _, body = http_get(sh.port, "/shrink.bin")
            assert status == 200 and body == data[:1 * MIB], (status, len(body))


@suite.test
def file_growing_while_sent_sends_what_was_announced():
    """A file that grows while it is sent: the client gets exactly the
    Content-Length announced (the file's first bytes), and the connection
    serves its next request, the file at its new size.
    fails on old: no (the whole file was read at once); guards the
    streaming, which reads the file as it goes."""
    with WebRoot() as web:
        data = web.write("grow.bin", os.urandom(4 * MIB))
        with host(web.dir) as sh:
            with Client(sh.port, rcvbuf=65536) as r:
                r.send(request("/grow.bin"))
                status, headers = r.head()
                assert headers["content-length"] == str(len(data)), headers
                with open(web.path("grow.bin"), "ab") as f:
                    f.write(b"X" * MIB)
                assert r.body(len(data)) == data
                r.send(request("/grow.bin"))
                status, headers = r.head()
                assert status == 200 and headers["content-length"] == str(len(data) + MIB)
                assert r.body(len(data) + MIB) == data + b"X" * MIB


@suite.test
def a_download_in_progress_finishes_at_sigterm():
    """SIGTERM while a client reads a 6 MiB file (64 KiB every 5 ms): the
    download completes within shutdown_grace_ms, byte for byte, then the
    server exits 0.
    fails on old: yes (stopping closed every HTTP connection not waiting for
    a route: the client got part of the file)."""
    with WebRoot() as web:
        data = web.write("big.bin", os.urandom(6 * MIB))
        with host(web.dir, sets=["shutdown_grace_ms=20000"]) as sh, \
                Client(sh.port, rcvbuf=65536) as r:
            r.send(request("/big.bin"))
            status, headers = r.head()
            assert status == 200, status
            sh.signal(signal.SIGTERM)
            sh.wait_log("shutting down")
            try:
                body = r.body(len(data), pace=(65536, 0.005))
            except (EOFError, ConnectionResetError) as e:
                raise AssertionError("cut at SIGTERM after %d bytes: %s" % (len(r.buf), e))
            assert body == data, "the body differs"
            assert r.to_close() == b"", "bytes after the body"
            assert sh.wait_exit(30) == 0


# ================================================================ validators

@suite.test
def conditional_requests_get_304():
    """ETag and Last-Modified on a 200; If-None-Match (the tag, its weak form,
    in a list, "*") and If-Modified-Since (the date in each of the three
    HTTP-date forms, or later) get 304 with no body, on a connection that
    keeps serving; a tag that differs, an earlier or malformed date, get the
    file; If-None-Match decides when both are sent; a changed file has a new
    tag.
    fails on old: yes (no ETag, no Last-Modified, never 304)."""
    with WebRoot() as web:
        page = web.write("page.html", b"<p>version one</p>\n")
        with host(web.dir) as sh:
            conn = http.client.HTTPConnection("127.0.0.1", sh.port, timeout=10)

            def get(headers=None, method="GET"):
                conn.request(method, "/page.html", headers=headers or {})
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

            status, headers, body = get()
            assert (status, body) == (200, page), (status, body)
            etag, lm = headers.get("etag"), headers.get("last-modified")
            assert etag and etag.startswith('"') and etag.endswith('"'), headers
            assert lm and lm.endswith(" GMT"), headers
            mtime = email.utils.parsedate_to_datetime(lm)
            assert int(mtime.timestamp()) == int(os.stat(web.path("page.html")).st_mtime), lm
            later = email.utils.format_datetime(mtime.replace(year=mtime.year + 1), usegmt=True)
            earlier = email.utils.format_datetime(mtime.replace(year=mtime.year - 1), usegmt=True)
            rfc850 = mtime.strftime("%A, %d-%b-%y %H:%M:%S GMT")
            asctime = mtime.strftime("%a %b ") + "%2d" % mtime.day + mtime.strftime(
                " %H:%M:%S %Y")
            not_modified = [{"If-None-Match": etag}, {"If-None-Match": "W/" + etag},
                            {"If-None-Match": '"other", ' + etag}, {"If-None-Match": "*"},
                            {"If-Modified-Since": lm}, {"If-Modified-Since": later},
                            {"If-Modified-Since": rfc850}, {"If-Modified-Since": asctime},
                            {"If-None-Match": etag, "If-Modified-Since": earlier}]
            for h in not_modified:
                status, headers, body = get(h)
                assert (status, body) == (304, b""), (h, status, body)
                assert headers.get("etag") == etag, (h, headers)
            status, headers, body = get({"If-None-Match": etag}, method="HEAD")
            assert status == 304, status
            modified = [{"If-None-Match": '"other"'}, {"If-Modified-Since": earlier},
                        {"If-Modified-Since": "not a date"},
                        {"If-Modified-Since": "Sun, 30 Feb 2020 08:49:37 GMT"},
                        {"If-None-Match": '"other"', "If-Modified-Since": lm}]
            for h in modified:
                status, headers, body = get(h)
                assert (status, body) == (200, page), (h, status, body)
            # the same size, a new mtime: a new tag
            page2 = web.write("page.html", b"<p>version two</p>\n")
            st = os.stat(web.path("page.html"))
            os.utime(web.path("page.html"), ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
            status, headers, body = get({"If-None-Match": etag})
            assert (status, body) == (200, page2), (status, body)
            assert headers.get("etag") not in (None, etag), headers
            conn.close()
            # nothing after the head of a 304, even on a connection that ends
            with Client(sh.port) as r:
                r.send(request("/page.html", headers=["If-None-Match: " + headers["etag"],
                                                      "Connection: close"]))
                status, _ = r.head()
                assert status == 304 and r.to_close() == b"", status


@suite.test
def head_gets_the_headers_only():
    """HEAD of the 24 MiB file: 200 with its Content-Length, ETag and
    Last-Modified, and no body: the next answer on the connection follows the
    head at once.
    fails on old: yes (404: the file was over MAX_STATIC_BYTES)."""
    with WebRoot() as web:
        big = web.write("big.bin", os.urandom(24 * MIB))
        small = web.write("small.txt", b"small\n")
        with host(web.dir) as sh:
            with Client(sh.port) as r:
                r.send(request("/big.bin", method="HEAD"), request("/small.txt"))
                status, headers = r.head()
                assert status == 200, status
                assert headers["content-length"] == str(len(big)), headers
                assert "etag" in headers and "last-modified" in headers, headers
                status, headers = r.head()  # would fail on body bytes
                assert status == 200 and r.body(int(headers["content-length"])) == small


@suite.test
def what_static_files_kept():
    """What the streaming kept: an empty file is 200 with Content-Length 0 on
    a connection that goes on; a symbolic link is followed; a FIFO, a
    directory without index.html and a missing file are 404 at once;
    X-Content-Type-Options: nosniff on a file.
    fails on old: no; guards the rewrite of serve_static."""
    with WebRoot() as web:
        web.write("empty.txt", b"")
        outside = tempfile.mkdtemp(prefix="sh-static-out-")
        try:
            with open(os.path.join(outside, "linked.txt"), "wb") as f:
                f.write(b"through a link\n")
            os.symlink(os.path.join(outside, "linked.txt"), web.path("link.txt"))
            os.mkfifo(web.path("fifo"))
            os.mkdir(web.path("dir"))
            with host(web.dir) as sh:
                with Client(sh.port) as r:
                    r.send(request("/empty.txt"), request("/link.txt"))
                    status, headers = r.head()
                    assert (status, headers["content-length"]) == (200, "0"), headers
                    assert headers["x-content-type-options"] == "nosniff", headers
                    status, headers = r.head()
                    assert (status, r.body(int(headers["content-length"]))) == (
                        200, b"through a link\n")
                for path in ("/fifo", "/dir/", "/missing.txt"):
                    t0 = time.monotonic()
                    status, _, _ = http_request(sh.port, "GET", path, timeout=5)
                    assert status == 404 and time.monotonic() - t0 < 2, (path, status)
        finally:
            shutil.rmtree(outside, ignore_errors=True)


if __name__ == "__main__":
    suite.run()
