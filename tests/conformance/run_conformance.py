#!/usr/bin/python3
"""RFC 6455 conformance suite: Autobahn testsuite (fuzzingclient) sections
1-7, 9, 10 re-created in stdlib Python, run against statushost.

    tests/conformance/run_conformance.py                 # starts build/statushost on examples/echo.lua
    tests/conformance/run_conformance.py --cases '6.*'   # only section 6 (comma-separated globs)
    tests/conformance/run_conformance.py --policy default   # scripts/default.lua (+ a real redis-server)
    tests/conformance/run_conformance.py --url ws://127.0.0.1:9999/ [--max-message-bytes N]
    tests/conformance/run_conformance.py --strict-close  # a close frame with the exact code everywhere
    tests/conformance/run_conformance.py --list

Every case runs on its own connection; cases outside section 9 run in
parallel (--jobs), section 9 runs alone afterwards. One line per case
("ok 1.1.1" / "FAIL 6.4.1: ..."), a summary per section, then
"conformance: N passed, N failed"; exit status 1 on any failure.
"""
import argparse
import fnmatch
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from cases import CASES, SECTIONS  # noqa: E402
from wsconn import CaseFail, Conn  # noqa: E402

ECHO_SETS = ["max_message_bytes=16777216", "max_send_buffer=67108864", "permessage_deflate=true"]


class Ctx:
    def __init__(self, host, port, path, args):
        self.host, self.port, self.path = host, port, path
        self.timeout = args.timeout
        self.settle = args.settle
        self.big_timeout = args.big_timeout
        self.strict_close = args.strict_close
        self.max_message_bytes = args.max_message_bytes
        self.policy = args.policy
        self.pmd_count = args.pmd_count

    def connect(self, deflate=None):
        return Conn(self.host, self.port, self.path, timeout=max(10.0, self.timeout), deflate=deflate)


def run_case(case, ctx):
    t0 = time.monotonic()
    try:
        note = case.fn(ctx)
        return True, note, time.monotonic() - t0
    except CaseFail as e:
        return False, str(e), time.monotonic() - t0
    except OSError as e:  # connection refused/reset outside the verdict: the server is gone?
        return False, "%s: %s" % (type(e).__name__, e), time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 - a broken case is a failure too
        return False, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()), time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="run against an already running server (ws://host:port/path)")
    ap.add_argument("--policy", choices=["echo", "default"], default="echo",
                    help="echo: examples/echo.lua, every case; default: scripts/default.lua, "
                         "the protocol-level subset")
    ap.add_argument("--cases", default="", help="comma-separated globs of case ids, e.g. '6.*,7.1.*'")
    ap.add_argument("--jobs", type=int, default=8, help="cases run in parallel (section 9 always alone)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the server's reaction")
    ap.add_argument("--settle", type=float, default=1.0, help="Autobahn's in-case waits (5.19, 6.4.x)")
    ap.add_argument("--big-timeout", type=float, default=20.0, help="per-message wait in section 9")
    ap.add_argument("--budget9", type=float, default=90.0,
                    help="seconds section 9 may take in all; cases not started by then fail")
    ap.add_argument("--max-message-bytes", type=int, default=None,
                    help="the server's max_message_bytes (default: what we start it with, "
                         "16777216 for echo / 1048576 for default; with --url: 1048576)")
    ap.add_argument("--strict-close", action="store_true",
                    help="require a close frame with the exact code where Autobahn also accepts "
                         "a TCP drop or an empty close frame")
    ap.add_argument("--pmd-count", type=int, default=10,
                    help="messages per case in sections 12 and 13 (Autobahn sends 1000)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print notes of passing cases")
    args = ap.parse_args()

    cases = [c for c in CASES if args.policy in c.policies]
    if args.cases:
        globs = [g.strip() for g in args.cases.split(",") if g.strip()]
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]
    if args.list:
        for c in cases:
            print("%-8s %s" % (c.id, c.desc))
        print("%d cases" % len(cases))
        return 0
    if not cases:
        print("no cases selected", file=sys.stderr)
        return 2

    if args.max_message_bytes is None:
        args.max_message_bytes = 16777216 if (args.policy == "echo" and not args.url) else 1048576

    server = redis = None
    if args.url:
        u = urlparse(args.url)
        host, port, path = u.hostname or "127.0.0.1", u.port or 80, u.path or "/"
    else:
        if not os.path.exists(harness.BIN):
            print("statushost binary not found at %s (build it, or set SH_BIN, or use --url)"
                  % harness.BIN, file=sys.stderr)
            return 2
        if args.policy == "echo":
            server = harness.Statushost("examples/echo.lua", sets=ECHO_SETS)
        else:
            redis = harness.Redis()
            server = harness.Statushost("scripts/default.lua", redis=redis)
        host, port, path = "127.0.0.1", server.port, "/"
    ctx = Ctx(host, port, path, args)

    print("conformance: %d cases against ws://%s:%d%s (policy %s, max_message_bytes %d%s)"
          % (len(cases), host, port, path, args.policy, args.max_message_bytes,
             ", strict close" if args.strict_close else ""), flush=True)
    t_start = time.monotonic()
    results = {}
    cv = threading.Condition()

    def work(case):
        r = run_case(case, ctx)
        with cv:
            results[case.id] = r
            cv.notify_all()

    parallel = [c for c in cases if c.section != "9"]
    serial = [c for c in cases if c.section == "9"]
    pool = ThreadPoolExecutor(max(1, args.jobs))
    for c in parallel:
        pool.submit(work, c)

    def report(c):
        ok, note, dt = results[c.id]
        if ok:
            extra = ""
            if c.section == "9":
                extra = " (%s)" % note if note else " (%.2fs)" % dt
            elif args.verbose and note:
                extra = " (%s)" % note
            print("ok %s%s" % (c.id, extra), flush=True)
        else:
            print("FAIL %s: %s" % (c.id, note), flush=True)

    printed = 0
    order = parallel + serial
    # print the parallel part in table order as results arrive
    while printed < len(parallel):
        with cv:
            while order[printed].id not in results:
                cv.wait()
        report(order[printed])
        printed += 1
    pool.shutdown(wait=True)
    t9 = time.monotonic()
    for c in serial:
        if time.monotonic() - t9 > args.budget9:
            results[c.id] = (False, "not run: section 9 exceeded its %gs budget" % args.budget9, 0.0)
        else:
            work(c)
        report(c)

    # summary
    passed = sum(1 for c in cases if results[c.id][0])
    failed = len(cases) - passed
    print("-- per section --")
    seen = []
    for c in cases:
        if c.section not in seen:
            seen.append(c.section)
    for s in seen:
        sc = [c for c in cases if c.section == s]
        sp = sum(1 for c in sc if results[c.id][0])
        print("section %-3s %-36s %3d/%-3d passed%s" % (s, SECTIONS.get(s, ""), sp, len(sc),
                                                      "" if sp == len(sc) else "  FAILED: " + " ".join(
                                                          c.id for c in sc if not results[c.id][0])))
    print("time %.1fs" % (time.monotonic() - t_start))

    if server is not None:
        alive = server.proc.poll() is None
        rc = server.stop()
        if not alive or rc not in (0, None):
            failed += 1
            print("FAIL server: statushost exited with %s%s; log tail:\n%s"
                  % (rc, " during the run" if not alive else " on SIGTERM",
                     "\n".join(server.log_text().splitlines()[-30:])))
    if redis is not None:
        redis.stop()
    print("conformance: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
