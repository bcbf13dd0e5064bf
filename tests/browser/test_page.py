#!/usr/bin/env python3
"""Browser test of web/index.html against the real stack (ctest entry).

Starts a real redis-server, the seed's remote written in Lua on statushost
(examples/remote_worker.lua, fast ticks) and statushost with scripts/default.lua
pointed at it, then runs tests/browser/page_test.mjs (Debian chromium driven by
playwright-core):
  - same origin: the page served by statushost itself, WebSocket to its origin;
  - cross origin: the page served by the worker process (its web_root), the
    WebSocket given in ?ws= pointing at the server.

Needs node/npm and /usr/bin/chromium (Debian packages `nodejs npm chromium`).
`npm ci` runs in tests/browser when node_modules is missing.

Environment: SH_BIN, SH_ROOT (see harness); CHROMIUM (default /usr/bin/chromium);
BROWSER_SCREENSHOT=PATH saves a PNG of the page at the end.
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import Redis, Statushost, Suite  # noqa: E402

suite = Suite("browser")
PAGE_TEST = os.path.join(HERE, "page_test.mjs")


def ensure_node_modules():
    if os.path.isfile(os.path.join(HERE, "node_modules", "playwright-core", "package.json")):
        return
    npm = shutil.which("npm")
    assert npm, "npm not found (apt-get install -y nodejs npm)"
    lock = os.path.isfile(os.path.join(HERE, "package-lock.json"))
    cmd = [npm, "ci" if lock else "install", "--no-audit", "--no-fund"]
    r = subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert r.returncode == 0, "%s failed:\n%s" % (" ".join(cmd), r.stdout.decode("utf-8", "replace"))


def run_page_test(*args):
    node = shutil.which("node")
    assert node, "node not found (apt-get install -y nodejs)"
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert os.access(chromium, os.X_OK), "%s not found (apt-get install -y chromium)" % chromium
    cmd = [node, PAGE_TEST] + list(args)
    shot = os.environ.get("BROWSER_SCREENSHOT")
    if shot:
        cmd += ["--screenshot", shot]
    r = subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = r.stdout.decode("utf-8", "replace")
    for line in out.splitlines():
        print("  " + line, flush=True)
    return r.returncode, out


@suite.test
def page_same_origin_and_cross_origin():
    ensure_node_modules()
    with Redis() as r, \
            Statushost("examples/remote_worker.lua", redis=r, sets=["tick_ms=100"]) as worker, \
            Statushost("scripts/default.lua", redis=r,
                       sets=["remote_url=http://127.0.0.1:%d/remote/message" % worker.port]) as server:
        cross = "%s/index.html?ws=%s" % (worker.base_url, server.ws_url)
        rc, out = run_page_test("--url", server.base_url + "/", "--cross-origin-url", cross)
        assert rc == 0, "page_test.mjs exited %d\n--- server log:\n%s\n--- worker log:\n%s" % (
            rc, server.log_text(), worker.log_text())
        assert "page: " in out and " 0 failed" in out, out


@suite.test
def page_with_permessage_deflate():
    """The same flow with permessage_deflate=true: Chromium's offer is
    answered (read from the 101 through the DevTools protocol); Chromium
    compresses its batch and the server its updates (35 bytes each, over the
    32-byte threshold, with context takeover), and both batches complete."""
    ensure_node_modules()
    with Redis() as r, \
            Statushost("examples/remote_worker.lua", redis=r, sets=["tick_ms=100"]) as worker, \
            Statushost("scripts/default.lua", redis=r,
                       sets=["remote_url=http://127.0.0.1:%d/remote/message" % worker.port,
                             "permessage_deflate=true"]) as server:
        rc, out = run_page_test("--url", server.base_url + "/", "--expect-deflate")
        assert rc == 0, "page_test.mjs exited %d\n--- server log:\n%s" % (rc, server.log_text())
        assert "negotiated permessage-deflate" in out and " 0 failed" in out, out


if __name__ == "__main__":
    suite.run()
