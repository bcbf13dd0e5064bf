"""The policy test kit, `statushost --test FILE.lua...` (README "Testing a policy"):
TAP output, exit statuses, failure diagnostics with file:line, and the kit's
expectations failing when they should. The shipped test files themselves run as
ctest's kit.* tests; this checks the kit reports failures correctly.

    python3 tests/integration/test_kit.py [test_name ...]
"""
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, ROOT, Suite  # noqa: E402

suite = Suite("kit")

ECHO_POLICY = """
local host = require "statushost"
return {
  on_message = function(conn, text) conn:send(text) end,
}
"""


def run_files(files, cwd=None, timeout=30, opts=(), rusage=None):
    """→ (exit status, stdout, stderr, seconds) of statushost --test [opts] files; rusage,
    a dict, gets the run's resource usage (ru_maxrss: its peak RSS in KiB)."""
    start = time.monotonic()
    argv = [BIN, "--test"] + list(opts) + list(files)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             cwd=cwd or ROOT)
        timed_out = []
        killer = threading.Timer(timeout, lambda: (timed_out.append(1), p.kill()))
        killer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)  # wait4: the child's own resource usage
        finally:
            killer.cancel()
        if timed_out:
            out.seek(0)
            raise AssertionError("statushost --test %s did not exit within %ss (stdout %r)" % (
                " ".join(argv[2:]), timeout, out.read()[-2000:]))
        p.returncode = os.waitstatus_to_exitcode(status)
        if rusage is not None:
            rusage["ru_maxrss"] = ru.ru_maxrss
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), time.monotonic() - start)


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def tap(out):
    """→ (plan, {number: (ok, name)}, {number: [diagnostic lines]})"""
    plan, results, diags, last = None, {}, {}, None
    for line in out.splitlines():
        m = re.match(r"^1\.\.(\d+)$", line)
        if m:
            plan = int(m.group(1))
            continue
        m = re.match(r"^(not ok|ok) (\d+) - (.*)$", line)
        if m:
            last = int(m.group(2))
            results[last] = (m.group(1) == "ok", m.group(3))
            diags[last] = []
        elif line.startswith("#   ") and last is not None:
            diags[last].append(line[4:])
    return plan, results, diags


def line_of(path, needle):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError("%s not in %s" % (needle, path))


@suite.test
def default_error_table_runs_in_under_a_second():
    rc, out, err, secs = run_files([os.path.join(ROOT, "scripts", "default_test.lua")])
    assert rc == 0, (rc, out, err)
    plan, results, _ = tap(out)
    assert plan and plan >= 20 and len(results) == plan, out
    assert all(ok for ok, _ in results.values()), out
    names = " ".join(name for _, name in results.values())
    for what in ("invalid_message", "too many tasks", "busy", "1003", "1007", "unavailable",
                 "dispatch_failed", "timeout"):
        assert what in names, "the error table has no test for %s:\n%s" % (what, out)
    limit = 5.0 if os.environ.get("SH_SANITIZED") else 1.0
    assert secs < limit, "scripts/default_test.lua took %.2fs (limit %.1fs)" % (secs, limit)


@suite.test
def a_failing_expectation_is_not_ok_with_its_line_and_exit_1():
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "echo_test.lua", """
local t = require "statushost.test"
t.test("frames are compared", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send("hello")
  c:expect_frame("bye") -- FAILS HERE
end)
t.test("this one passes", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send("x")
  c:expect_frame("x")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert plan == 2, out
        assert results[1] == (False, "frames are compared"), out
        assert results[2] == (True, "this one passes"), out
        want = "at %s:%d" % (f, line_of(f, "FAILS HERE"))
        assert diags[1][0] == want, (diags[1], want)
        assert any("got: hello" in line for line in diags[1]), diags[1]
        assert "# 1 of 2 tests failed" in out, out


@suite.test
def every_expectation_fails_when_it_should():
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        write(d, "refuse.lua", """
return { on_handshake = function(req) return false, 403, "no\\n", { ["X-Why"] = "test" } end }
""")
        f = write(d, "wrong_test.lua", """
local t = require "statushost.test"
local function open() local p = t.policy("echo.lua"); return p, p:open{} end
t.test("close code", function() local p, c = open(); c:close(4001); c:expect_close(4002) end)
t.test("no frame", function() local p, c = open(); c:send("a"); c:expect_no_frame() end)
t.test("json subset", function() local p, c = open(); c:send('{"a":1,"b":2}'); c:expect_frame{ a = 2 } end)
t.test("pattern", function() local p, c = open(); c:send("abc"); c:expect_frame(t.pattern "^b") end)
t.test("frame, got close", function() local p, c = open(); c:close(1000); c:expect_frame("x") end)
t.test("binary, got text", function() local p, c = open(); c:send("a"); c:expect_binary("a") end)
t.test("eq", function() t.eq({ 1, 2 }, { 1, 3 }) end)
t.test("refused handshake", function()
  local p = t.policy("refuse.lua")
  local c = p:open{}
  t.eq(c.status, 403); t.eq(c.body, "no\\n"); t.eq(c.headers["x-why"], "test")
  c:send("x")
end)
t.test("unrouted request", function()
  local p = t.policy("fetch.lua")
  local c = p:open{}
  c:send("go")
  c:expect_frame("refused")
  t.eq(#p.requests, 1)
  t.eq(p.requests[1].url, "http://nowhere.test/x?y=1")
  t.fail("deliberately")
end)
""")
        write(d, "fetch.lua", """
local host = require "statushost"
return { on_message = function(conn)
  local res, err = host.http.request{ url = "http://nowhere.test/x?y=1" }
  conn:send(res and tostring(res.status) or err)
end }
""")
        rc, out, err, _ = run_files([f], cwd=d)
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert plan == 9 and len(results) == 9, out
        failed = [n for n, (ok, _) in results.items() if not ok]
        assert failed == list(range(1, 10)), "every test must fail:\n" + out
        text = {results[n][1]: "\n".join(diags[n]) for n in results}
        assert "expected close 4002, got close 4001" in text["close code"], text
        assert 'expected nothing, got frame "a"' in text["no frame"], text
        assert "frame does not match" in text["json subset"], text
        assert 'pattern "^b"' in text["pattern"], text
        assert "got close 1000" in text["frame, got close"], text
        assert "expected a binary frame" in text["binary, got text"], text
        assert "got: {1, 2}" in text["eq"], text
        assert "send: the handshake was refused (403)" in text["refused handshake"], text
        assert "deliberately" in text["unrouted request"], text
        assert "# no route for GET http://nowhere.test/x?y=1" in out, out


@suite.test
def a_syntax_error_exits_2_before_any_test():
    with tempfile.TemporaryDirectory() as d:
        good = write(d, "good_test.lua", 'local t = require "statushost.test"\n'
                                         't.test("x", function() end)\n')
        bad = write(d, "bad_test.lua", 'local t = require "statushost.test"\n'
                                       't.test("x", function() end\n')
        rc, out, err, _ = run_files([good, bad])
        assert rc == 2, (rc, out, err)
        assert "ok 1" not in out, "no test runs when a file does not load:\n" + out
        assert out.startswith("Bail out! %s" % bad), out
        assert len(err.splitlines()) == 1 and bad in err and "expected" in err, err


@suite.test
def a_file_without_the_kit_exits_2():
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "none_test.lua", "local x = 1\n")
        rc, out, err, _ = run_files([f])
        assert rc == 2, (rc, out, err)
        assert "no tests" in err, err


@suite.test
def a_policy_that_does_not_load_fails_its_test():
    with tempfile.TemporaryDirectory() as d:
        write(d, "broken.lua", "return { on_mesage = function() end }\n")
        f = write(d, "broken_test.lua", """
local t = require "statushost.test"
t.test("loads", function() t.policy("broken.lua") end)
t.test("pcall sees the reason", function()
  local ok, err = pcall(t.policy, "broken.lua")
  t.ok(not ok); t.like(tostring(err), "on_message")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert results[1][0] is False and results[2][0] is True, out
        assert any("the policy did not load" in line for line in diags[1]), diags


@suite.test
def a_policy_that_never_idles_fails_instead_of_hanging():
    with tempfile.TemporaryDirectory() as d:
        write(d, "spin.lua", """
local host = require "statushost"
return { on_message = function() while true do host.sleep(0) end end }
""")
        f = write(d, "spin_test.lua", """
local t = require "statushost.test"
t.test("spins", function() local p = t.policy("spin.lua"); p:open{}:send("x") end)
""")
        rc, out, err, secs = run_files([f], timeout=60)
        assert rc == 1, (rc, out, err)
        assert "never goes idle" in out, out


@suite.test
def virtual_time_an_hour_passes_at_once():
    with tempfile.TemporaryDirectory() as d:
        write(d, "later.lua", """
local host = require "statushost"
return { on_open = function(conn)
  host.timer(3600 * 1000, function() conn:send("an hour") end)
  host.sleep(1800 * 1000)
  conn:send("half")
end }
""")
        f = write(d, "later_test.lua", """
local t = require "statushost.test"
t.test("an hour", function()
  local p = t.policy("later.lua")
  local c = p:open{}
  local t0 = p:time()
  p:advance(1800 * 1000 - 1); c:expect_no_frame()
  p:advance(1); c:expect_frame("half")
  p:advance(1800 * 1000); c:expect_frame("an hour")
  t.eq(p:now(), 3600 * 1000)
  t.eq(p:time() - t0, 3600.0, "host.now() follows the virtual clock")
end)
""")
        rc, out, err, secs = run_files([f])
        assert rc == 0, (rc, out, err)
        assert secs < 5, secs


@suite.test
def subprotocols_and_refusal_headers_are_seen_by_the_test():
    with tempfile.TemporaryDirectory() as d:
        write(d, "proto.lua", """
return { on_handshake = function(req)
  if req.path == "/deny" then return false, 401, "who?\\n", { ["WWW-Authenticate"] = "Bearer" } end
  return true, "v2.status"
end, on_message = function(conn, text) conn:send(conn.protocol .. ":" .. text) end }
""")
        f = write(d, "proto_test.lua", """
local t = require "statushost.test"
t.test("subprotocol", function()
  local p = t.policy("proto.lua")
  local c = p:open{ headers = { ["Sec-WebSocket-Protocol"] = "v1.status, v2.status" } }
  t.eq(c.status, 101); t.eq(c.protocol, "v2.status")
  c:send("x"); c:expect_frame("v2.status:x")
  local r = p:open{ path = "/deny" }
  t.eq(r.status, 401); t.eq(r.body, "who?\\n"); t.eq(r.headers["www-authenticate"], "Bearer")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)


@suite.test
def advancing_past_the_clocks_end_is_a_clear_error():
    # p:advance(math.maxinteger) overflowed the shared dictionaries' clock (signed
    # overflow: UBSan aborted the run; unsanitized, TTLs went wrong) and wrapped p:now()
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "clock_test.lua", """
local t = require "statushost.test"
t.test("the end of time", function()
  local p = t.policy("echo.lua")
  local d = t.lib.shared("d")
  p:advance(2^53 - 10)
  t.ok(d:set("k", 1, 0.005))
  local ok, err = pcall(function() p:advance(math.maxinteger) end)
  t.ok(not ok); t.like(err, "clock_test.lua:%d+: p:advance%(%d+%): the virtual clock ends at 2%^53 ms")
  t.eq(p:now(), 2^53 - 10)
  local ok2, err2 = pcall(p.advance, p, "10")
  t.ok(not ok2); t.like(err2, 'a number of milliseconds >= 0, got "10"')
  p:advance(10); t.eq(d:get("k"), nil, "expired at the clock's end")
  local q = t.policy("echo.lua")            -- another world: the dictionaries' clock goes on
  q:advance(2^53); q:advance(0)
  t.ok(d:set("k2", 1, 100)); t.eq(d:get("k2"), 1); t.ok(d:ttl("k2") > 99)
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)
        assert "runtime error" not in err, err


@suite.test
def answers_with_metamethods_cannot_free_the_request_being_answered():
    # a header value whose __tostring closed the policy (or a Redis reply whose __index
    # did) freed the request w:answer_http / w:answer_redis was answering: use after free
    with tempfile.TemporaryDirectory() as d:
        write(d, "io.lua", """
local host = require "statushost"
return { on_message = function(conn, text)
  if text == "http" then
    local r, e = host.http.request{ method = "POST", url = "http://remote.test/x" }
    conn:send(r and r.body or e)
  else
    local r, e = host.redis.call("GET", "k")
    conn:send(type(r) .. ":" .. #r)
  end
end }
""")
        f = write(d, "meta_test.lua", """
local t = require "statushost.test"
t.test("a header value with __tostring", function()
  local p = t.policy("io.lua")
  p:route("POST /x", function()
    return 200, "ok", { ["X-A"] = setmetatable({}, { __tostring = function() p:close(); return "v" end }) }
  end)
  p:open{}:send("http")
end)
t.test("a reply with __index and __len", function()
  local p = t.policy("io.lua")
  p:on_redis(function()
    return setmetatable({}, { __index = function() p:close() end, __len = function() error("len") end })
  end)
  local c = p:open{}
  c:send("get")
  c:expect_frame("table:0")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert results == {1: (False, "a header value with __tostring"),
                           2: (True, "a reply with __index and __len")}, out
        assert 'a header "X-A" = {}: strings expected' in "\n".join(diags[1]), out
        assert "Sanitizer" not in err, err


@suite.test
def the_simulated_redis_answers_bad_commands_as_redis_does():
    # a policy's bad command (a non-integer, a missing argument) raised a Lua error inside
    # the kit's store ("test.lua:304: attempt to perform arithmetic on a nil value"), or was
    # answered OK where Redis answers an error, so a broken policy passed its tests
    with tempfile.TemporaryDirectory() as d:
        write(d, "cmd.lua", """
local host = require "statushost"
local json = require "cjson.safe"
return { on_message = function(conn, text)
  local r, e = host.redis.call(table.unpack(json.decode(text)))
  if math.type(r) == "integer" then r = "int:" .. r elseif r == host.null then r = "null" end
  conn:send(json.encode({ r = r, e = e }))
end }
""")
        f = write(d, "cmd_test.lua", """
local t = require "statushost.test"
local NOTINT = "ERR value is not an integer or out of range"
local cases = {
  { { "SET", "k", "v", "EX", "abc" }, NOTINT }, { { "SET", "k", "v", "EX", "1.5" }, NOTINT },
  { { "SET", "k", "v", "EX" }, "ERR syntax error" }, { { "SET", "k", "v", "NX", "XX" }, "ERR syntax error" },
  { { "SET", "k", "v", "PX", "-5" }, "ERR invalid expire time in 'set' command" },
  { { "SET", "k", "v", "EX", "9223372036854775807" }, "ERR invalid expire time in 'set' command" },
  { { "SET", "k" }, "ERR wrong number of arguments for 'set' command" },
  { { "GET" }, "ERR wrong number of arguments for 'get' command" },
  { { "HSET", "h", "f" }, "ERR wrong number of arguments for 'hset' command" },
  { { "PUBLISH", "c" }, "ERR wrong number of arguments for 'publish' command" },
  { { "DECRBY", "k", "x" }, NOTINT }, { { "INCRBY", "k", "0x10" }, NOTINT },
  { { "DECRBY", "k", "-9223372036854775808" }, "ERR decrement would overflow" },
  { { "HINCRBY", "h", "f", "x" }, NOTINT }, { { "EXPIRE", "k", "x" }, NOTINT },
  { { "LRANGE", "l", "a", "b" }, NOTINT }, { { "EXPIRE", "k", "10", "NX" }, "p:on_redis" },
}
t.test("errors", function()
  local p = t.policy("cmd.lua")
  local c = p:open{}
  for _, case in ipairs(cases) do
    c:send(t.json.encode(case[1]))
    local _, got = c:expect_frame()
    t.like(got.e, case[2], table.concat(case[1], " "))
  end
end)
t.test("overflow and the commands that work", function()
  local p = t.policy("cmd.lua")
  local c = p:open{}
  local function call(...) c:send(t.json.encode({ ... })); local _, got = c:expect_frame(); return got end
  t.eq(call("SET", "n", "9223372036854775806"), { r = "OK" })
  t.eq(call("INCR", "n"), { r = "int:9223372036854775807" })
  t.eq(call("INCR", "n"), { e = "ERR increment or decrement would overflow" })
  t.eq(call("GET", "n"), { r = "9223372036854775807" })
  t.eq(call("HSET", "h", "f", "x"), { r = "int:1" })
  t.eq(call("HINCRBY", "h", "f", "1"), { e = "ERR hash value is not an integer" })
  t.eq(call("PING", "hi"), { r = "hi" })
  t.eq(call("SET", "k", "v", "EX", "2", "NX"), { r = "OK" })
  t.eq(call("PTTL", "k"), { r = "int:2000" })
  t.eq(call("EXPIRE", "k", "5"), { r = "int:1" })
  p:advance(4999); t.eq(call("GET", "k"), { r = "v" })
  p:advance(1); t.eq(call("GET", "k"), { r = "null" })
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)


@suite.test
def shared_dict_ttls_do_not_run_in_real_time():
    # host.shared's clock was the real monotonic clock plus the virtual offset: an item
    # 1 ms short of its TTL expired when the machine was slow (flaky policy tests)
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "ttl_test.lua", """
local t = require "statushost.test"
t.test("virtual TTLs", function()
  local p = t.policy("echo.lua")
  local d = t.lib.shared("d")
  d:set("k", 1, 0.05)
  local t0 = os.clock()
  while os.clock() - t0 < 0.2 do end        -- real time passes, virtual time does not
  t.eq(d:get("k"), 1); t.eq(d:ttl("k"), 0.05)
  p:advance(49); t.eq(d:get("k"), 1); t.eq(d:ttl("k"), 0.001)
  p:advance(1); t.eq(d:get("k"), nil)
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)


@suite.test
def shared_dicts_take_their_byte_caps_from_the_loaded_policy():
    # host.shared had no byte capacity (item count only): a policy test could not see
    # its dict fill up. The capacity is shared_dict_max_bytes of the policy loaded (as
    # --set gives it), and each test starts again from the defaults
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "bytes_test.lua", """
local t = require "statushost.test"
t.test("a full dict", function()
  local p = t.policy("echo.lua", { shared_dict_max_bytes = 65536 })
  local d = t.lib.shared("d")
  t.eq(d:capacity(), 65536); t.eq(d:free_space(), 65536)
  local v = ("x"):rep(10000)
  for i = 1, 6 do local ok, err, forcible = d:set(i, v); t.ok(ok); t.eq(forcible, false) end
  local ok, err, forcible = d:safe_set(7, v); t.eq(ok, nil); t.eq(err, "no memory")
  ok, err, forcible = d:set(7, v); t.ok(ok); t.eq(forcible, true); t.eq(d:get("1"), nil)
  ok, err = d:set("huge", ("x"):rep(65536)); t.eq(ok, nil); t.eq(err, "no memory")
  t.eq(#d:get_keys(0), 6)
end)
t.test("the next test", function()
  local d = t.lib.shared("d")
  t.eq(#d:get_keys(0), 0); t.eq(d:capacity(), 64 * 1024 * 1024, "the default again")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)
        assert "ok 2 - the next test" in out, out


@suite.test
def tap_names_stay_one_line_and_directives_are_escaped():
    # a test name with a newline broke the TAP line; "# TODO" in a name made prove take a
    # failure as a TODO (the suite passed)
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "names_test.lua", """
local t = require "statushost.test"
t.test("handles # TODO markers", function() t.fail("no") end)
t.test("two\\nlines \\\\ and # SKIP", function() t.fail("no") end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        lines = out.splitlines()
        assert "not ok 1 - handles \\# TODO markers" in lines, out
        assert "not ok 2 - two\\nlines \\\\ and \\# SKIP" in lines, out
        assert not any(line.startswith("lines") for line in lines), out


@suite.test
def impossible_peers_and_headers_are_named():
    # p:open{peer = "10.0.0.1"} (no port) or garbage was accepted: conn.ip was nil, which
    # never happens in the server; a header table value or number name raised inside the kit
    with tempfile.TemporaryDirectory() as d:
        write(d, "ip.lua", """
return { on_message = function(conn) conn:send(conn.ip) end }
""")
        f = write(d, "peer_test.lua", """
local t = require "statushost.test"
t.test("peers", function()
  local p = t.policy("ip.lua")
  for _, peer in ipairs{ "10.0.0.1", "garbage", "[::1]", "::1", "1.2.3.4:99999", "" } do
    local ok, err = pcall(p.open, p, { peer = peer })
    t.ok(not ok, peer); t.like(err, 'peer "' .. peer:gsub("%p", "%%%0") .. '": an address with a port expected')
  end
  for _, peer in ipairs{ "10.0.0.1:1", "[2001:db8::1]:5000", "[::ffff:1.2.3.4]:80" } do
    local c = p:open{ peer = peer }
    c:send("x"); c:expect_frame(peer:match("^%[?(.-)%]?:%d+$"))
  end
end)
t.test("a table header value", function() t.policy("ip.lua"):open{ headers = { ["X-A"] = {} } } end)
t.test("a number header name", function() t.policy("ip.lua"):request{ headers = { "x" } } end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert [results[i][0] for i in (1, 2, 3)] == [True, False, False], out
        assert diags[2] == ["at %s:14" % f, 'a request header "X-A" = {}: a name and a string value expected'], out
        assert diags[3] == ["at %s:15" % f, 'a request header 1 = "x": a name and a string value expected'], out


@suite.test
def os_exit_bails_out_instead_of_passing():
    # os.exit(0) in a test file, or in a policy's hook, ended the run with status 0 and
    # the remaining tests (a failing one included) unrun and unreported
    with tempfile.TemporaryDirectory() as d:
        write(d, "bye.lua", """
local exit = os.exit
return { on_message = function() exit(0) end }
""")
        for body, where in (("""
t.test("the policy exits", function() t.policy("bye.lua"):open{}:send("x") end)
t.test("fails", function() t.fail("no") end)
""", "bye.lua:3: "), ("""
t.test("the test exits", function() os.exit(true) end)
t.test("fails", function() t.fail("no") end)
""", "exit_test.lua:3: "), ("""
os.exit(0)
""", "exit_test.lua:3: ")):
            f = write(d, "exit_test.lua", 'local t = require "statushost.test"\n' + body)
            rc, out, err, _ = run_files([f])
            assert rc == 2, (rc, out, err)
            assert re.search(r"^Bail out! .*%sos\.exit called" % re.escape(where), out, re.M), out
            assert "os.exit called" in err, err


@suite.test
def http_request_timeouts_are_checked():
    # timeout_ms = -1 became 2^64 - 1 ms (a request that never times out in the server);
    # timeout_ms = "5s" raised "bad argument #-1 to '?'"
    with tempfile.TemporaryDirectory() as d:
        write(d, "req.lua", """
local host = require "statushost"
return { on_message = function(conn, text)
  local key, v = text:match("^(%S+) (.*)$")
  local ok, r, e = pcall(host.http.request, { url = "http://remote.test/x", [key] = tonumber(v) or v })
  conn:send(ok and (r and tostring(r.status) or e) or r)
end }
""")
        f = write(d, "req_test.lua", """
local t = require "statushost.test"
t.test("timeouts", function()
  local p = t.policy("req.lua")
  p:route("GET /x", t.hang)
  local c = p:open{}
  for _, bad in ipairs{ "timeout_ms -1", "timeout_ms 5s", "connect_timeout_ms -5", "timeout_ms 1e12" } do
    c:send(bad)
    local key, v = bad:match("^(%S+) (.*)$")
    c:expect_frame(t.pattern("^host%.http%.request: " .. key .. " must be a number of milliseconds"))
  end
  c:send("timeout_ms 250")
  p:advance(249); c:expect_no_frame()
  p:advance(1); c:expect_frame("timeout")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)


@suite.test
def a_refusals_content_type_is_the_policys():
    # on_handshake's refusal headers dropped Content-Type: a JSON refusal went out as
    # text/plain; Content-Length and Connection stay the server's
    with tempfile.TemporaryDirectory() as d:
        write(d, "deny.lua", """
return { on_handshake = function(req)
  return false, 401, '{"error":"unauthorized"}',
    { ["Content-Type"] = "application/json", ["Content-Length"] = "0", ["WWW-Authenticate"] = "Bearer" }
end }
""")
        f = write(d, "deny_test.lua", """
local t = require "statushost.test"
t.test("json refusal", function()
  local c = t.policy("deny.lua"):open{}
  t.eq(c.status, 401)
  t.eq(c.headers["content-type"], "application/json")
  t.eq(c.headers["content-length"], "24")
  t.eq(c.headers["www-authenticate"], "Bearer")
  t.eq(c.body, '{"error":"unauthorized"}')
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)


@suite.test
def a_refusal_with_a_non_integer_status_says_so():
    # return false, 450.5 (or "401") was logged as "refused without a status"
    with tempfile.TemporaryDirectory() as d:
        write(d, "st.lua", """
return { on_handshake = function(req)
  if req.path == "/none" then return false end
  return false, req.path == "/float" and 450.5 or "401"
end }
""")
        f = write(d, "st_test.lua", """
local t = require "statushost.test"
t.test("statuses", function()
  local p = t.policy("st.lua")
  t.eq(p:open{ path = "/float" }.status, 500)
  t.eq(p:open{ path = "/string" }.status, 500)
  t.eq(p:open{ path = "/none" }.status, 500)
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)
        assert err.count("a refusal's status must be an integer 400..599") == 2, err
        assert err.count("refused without a status") == 1, err


@suite.test
def several_files_number_their_tests_in_one_plan():
    files = [os.path.join(ROOT, "examples", "echo_test.lua"),
             os.path.join(ROOT, "examples", "ratelimit_test.lua")]
    rc, out, err, _ = run_files(files, cwd="/")
    assert rc == 0, (rc, out, err)
    plan, results, _ = tap(out)
    assert plan == len(results) and sorted(results) == list(range(1, plan + 1)), out
    assert "# %s" % files[0] in out and "# %s" % files[1] in out, out


@suite.test
def a_test_that_spins_fails_on_its_cpu_time_and_the_run_goes_on():
    # the test file's state had no CPU bound: `while true do end` in a test (or a test
    # keeping a policy busy forever) hung the kit
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "spin_test.lua", """
local t = require "statushost.test"
t.test("spins", function() while true do end end) -- SPINS
t.test("catches the error and spins", function()
  while true do pcall(function() while true do end end) end -- CATCHES
end)
t.test("spins in a coroutine", function()
  coroutine.wrap(function() while true do pcall(string.rep, "x", 10) end end)()
end)
t.test("keeps a policy busy", function()
  local p = t.policy("echo.lua")
  while true do p:advance(1) end
end)
t.test("passes", function() t.eq(1, 1) end)
""")
        rc, out, err, _ = run_files([f], opts=["--cpu-ms", "300"])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert plan == 5 and len(results) == 5, out
        assert [ok for ok, _ in results.values()] == [False, False, False, False, True], out
        for n in (1, 2, 3, 4):
            assert any("used more than its CPU time (--cpu-ms 300)" in line for line in diags[n]), out
        assert diags[1][0] == "%s:%d: the test used more than its CPU time (--cpu-ms 300)" % (
            f, line_of(f, "SPINS")), diags[1]
        assert any("spin_test.lua:%d:" % line_of(f, "CATCHES") in line for line in diags[2]), diags[2]


@suite.test
def a_file_that_spins_while_loading_bails_out():
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "spin_test.lua", """
local t = require "statushost.test"
t.test("never runs", function() end)
while true do end
""")
        rc, out, err, _ = run_files([f], opts=["--cpu-ms", "300"])
        assert rc == 2, (rc, out, err)
        assert re.search(r"^Bail out! .*spin_test\.lua:4: loading the file used more than its CPU "
                         r"time \(--cpu-ms 300\)$", out, re.M), out
        assert "ok" not in out, out


@suite.test
def a_test_stuck_where_no_hook_runs_bails_out():
    # one long C call (a pathological pattern) or a finalizer that loops (Lua runs __gc
    # with hooks off): the count hook cannot stop them; the CPU-time signal ends the run
    with tempfile.TemporaryDirectory() as d:
        for name, body in (("pattern", 'local s = ("a"):rep(40); s:find(("a*"):rep(40) .. "b")'),
                           ("finalizer", "setmetatable({}, { __gc = function() while true do end end }); "
                                         "collectgarbage()")):
            f = write(d, "stuck_test.lua", """
local t = require "statushost.test"
t.test("passes", function() end)
t.test("%s", function() %s end)
t.test("never runs", function() end)
""" % (name, body))
            rc, out, err, secs = run_files([f], opts=["--cpu-ms", "200"])
            assert rc == 2, (name, rc, out, err)
            assert out.splitlines() == [
                "1..3", "ok 1 - passes",
                "Bail out! %s, test 2: the test is stuck past its CPU time (--cpu-ms 200) where the "
                "kit cannot stop it (one long C call, a finalizer)" % f], (name, out)
            assert "stuck past twice its CPU time" in err, (name, err)


@suite.test
def a_memory_hungry_test_fails_with_a_clear_error():
    # the test file's state had no memory cap: a test filling a table took all the
    # machine's memory (here 1 GiB: it stops at 64 MiB)
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "mem_test.lua", """
local t = require "statushost.test"
t.test("fills a table", function() local t = {} for i = 1, 2^26 do t[i] = i end end)
t.test("doubles a string", function() local s = "x" for _ = 1, 30 do s = s .. s end end)
t.test("catches it and goes on", function()
  for i = 1, 100 do t.eq(pcall(string.rep, "y", 2^26 + i), false) end
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send("after"); c:expect_frame("after")
end)
t.test("the memory is back", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send(("z"):rep(2^20)); c:expect_frame(("z"):rep(2^20))
end)
""")
        ru = {}
        rc, out, err, _ = run_files([f], opts=["--max-memory", str(64 << 20)], rusage=ru)
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert [ok for ok, _ in results.values()] == [False, False, True, True], out
        for n in (1, 2):
            assert diags[n][0].startswith("not enough memory: past --max-memory 67108864 "
                                          "(the test file's Lua state held "), diags[n]
        assert diags[1][2].startswith("\t%s:3:" % f), diags[1]
        limit = 800 << 10 if os.environ.get("SH_SANITIZED") else 400 << 10
        assert ru["ru_maxrss"] < limit, "peak RSS %d KiB" % ru["ru_maxrss"]
        # the main chunk too
        f = write(d, "mem_test.lua", """
local t = require "statushost.test"
local s = "x" for _ = 1, 30 do s = s .. s end
""")
        rc, out, err, _ = run_files([f], opts=["--max-memory", str(64 << 20)])
        assert rc == 2, (rc, out, err)
        assert re.search(r"^Bail out! .*mem_test\.lua: not enough memory: past --max-memory "
                         r"67108864", out, re.M), out


@suite.test
def the_kits_options_are_checked():
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "ok_test.lua", 'local t = require "statushost.test"\nt.test("x", function() end)\n')
        for opts, why in ((["--cpu-ms", "abc"], "--cpu-ms: a number of milliseconds 0..86400000"),
                          (["--cpu-ms", "86400001"], "--cpu-ms: a number of milliseconds"),
                          (["--max-memory", "1000"], "--max-memory: a number of bytes 1048576.."),
                          (["--bogus"], "--test: unknown option --bogus"),
                          (["--cpu-ms"], "--cpu-ms: a number")):
            rc, out, err, _ = run_files([f], opts=opts)
            assert rc == 2 and out == "", (opts, rc, out, err)
            assert err.startswith("statushost: " + why) and err.count("\n") == 1, (opts, err)
        rc, out, err, _ = run_files([f], opts=["--cpu-ms", "0", "--max-memory", "0", "--"])
        assert rc == 0 and out == "1..1\nok 1 - x\n", (rc, out, err)


@suite.test
def nested_tests_are_refused_and_the_plan_holds():
    # t.test inside a running test was run after the others, numbered past the plan
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "nest_test.lua", """
local t = require "statushost.test"
t.test("outer", function()
  t.test("inner", function() end) -- NESTED
end)
t.test("catches it", function()
  local ok, err = pcall(t.test, "inner", function() end)
  t.ok(not ok); t.like(err, "tests do not nest")
end)
t.test("last", function() end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert plan == 3 and sorted(results) == [1, 2, 3], out
        assert [ok for ok, _ in results.values()] == [False, True, True], out
        assert diags[1][0] == ('%s:%d: t.test("inner"): inside the running test "outer": tests do '
                               "not nest (declare each one at the file's top level)"
                               % (f, line_of(f, "NESTED"))), diags[1]


@suite.test
def errors_of_any_value_are_reported():
    # error(nil) read "nil"; a __tostring that raised lost the message; a t.fail error
    # with a table for its msg ended the run; a yield ended the test as a pass of what
    # ran so far; a huge message was printed whole
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "err_test.lua", """
local t = require "statushost.test"
t.test("nil", function() error(nil) end)
t.test("table", function() error({}) end)
t.test("number", function() error(42) end)
t.test("tostring", function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
t.test("tostring raises", function() error(setmetatable({}, { __tostring = function() error("no") end })) end)
t.test("a failure with a table msg", function()
  local _, f = pcall(t.fail, "x")
  error(setmetatable({ msg = {}, where = {} }, getmetatable(f)))
end)
t.test("__close raises", function()
  local x <close> = setmetatable({}, { __close = function() error("in close") end }) -- CLOSE
end)
t.test("yields", function() coroutine.yield("x"); t.fail("after the yield") end)
t.test("huge", function() t.fail(("x"):rep(10 * 1024 * 1024)) end) -- HUGE
t.test("last", function() end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert plan == 10 and sorted(results) == list(range(1, 11)), out[:3000]
        assert [ok for ok, _ in results.values()] == [False] * 9 + [True], out[:3000]
        first = {n: diags[n][0] for n in range(1, 10)}
        assert first[1] == "(error object is a nil value)", first
        assert first[2] == "(error object is a table value)", first
        assert first[3] == "42", first
        assert first[4] == "custom", first
        assert first[5] == "(error object is a table value)", first
        assert first[6] == "(error object is a table value)", first
        assert first[7] == "%s:%d: in close" % (f, line_of(f, "CLOSE")), first
        assert first[8].startswith("the test yielded"), first
        assert "after the yield" not in out, out[:3000]
        assert first[9] == "at %s:%d" % (f, line_of(f, "HUGE")), first
        assert len(out) < 100 * 1024, len(out)
        assert "more bytes not shown" in out, out[-500:]
        # while the file loads: a bail-out names the value; its traceback is comments
        for value, text in (("nil", "(error object is a nil value)"),
                            ('setmetatable({}, { __tostring = function() return "mine" end })', "mine")):
            f = write(d, "load_test.lua", 'local t = require "statushost.test"\nerror(%s)\n' % value)
            rc, out, err, _ = run_files([f])
            assert rc == 2, (rc, out, err)
            lines = out.splitlines()
            assert lines[0] == "Bail out! %s: %s" % (f, text), out
            assert lines[1:] and all(line.startswith("# ") for line in lines[1:]), out


@suite.test
def print_and_io_write_cannot_forge_tap_lines():
    # print and io.write in a test file or a policy under test wrote to the TAP stream:
    # "ok 9 - ..." there was read as a result, "1..1" as a plan
    with tempfile.TemporaryDirectory() as d:
        write(d, "chatty.lua", """
local host = require "statushost"
return { on_message = function(conn, text)
  print("ok 8 - from the policy")
  io.write("ok 9 - from the policy's io.write\\n")
  -- refused as the real client refuses it (not a token): "invalid argument"
  assert(not pcall(host.http.request, { method = "GET\\nok 10 - from a method", url = "http://nowhere.test/" }))
  conn:send(text)
end }
""")
        f = write(d, "chatty_test.lua", """
local t = require "statushost.test"
t.test("chats", function()
  print("ok 5 - printed", 2)
  io.write("ok 6 - written\\n")
  io.stdout:write("1..1\\n")
  local p = t.policy("chatty.lua")
  local c = p:open{}
  c:send("x"); c:expect_frame("x")
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)
        lines = out.splitlines()
        assert lines[0] == "1..1" and lines[-1] == "ok 1 - chats", out
        assert all(line.startswith("# ") for line in lines[1:-1]), out
        assert "# ok 5 - printed\t2" in lines and "# ok 8 - from the policy" in lines, out
        assert "ok 6 - written\n1..1\n" in err and "ok 9 - from the policy's io.write\n" in err, err



@suite.test
def eq_compares_cyclic_tables():
    # t.eq on two tables that hold themselves recursed until "stack overflow"
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "cyc_test.lua", """
local t = require "statushost.test"
local function ring(v) local a = { v = v }; a.self = a; a.list = { a, { a } }; return a end
t.test("equal", function() t.eq(ring(1), ring(1.0)) end)
t.test("differ", function() t.eq(ring(1), ring(2)) end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert [ok for ok, _ in results.values()] == [True, False], out
        assert diags[2][1] == "values differ", diags[2]



@suite.test
def a_test_opens_at_most_1000_policies_at_once():
    # each policy holds a loop (two descriptors) and about 100 KB the memory cap does not
    # see: a test opening them in a loop took the machine's memory (or its descriptors)
    with tempfile.TemporaryDirectory() as d:
        write(d, "echo.lua", ECHO_POLICY)
        f = write(d, "many_test.lua", """
local t = require "statushost.test"
t.test("opens 1001", function() for i = 1, 1001 do t.policy("echo.lua") end end) -- OPENS
t.test("closes each", function()
  for i = 1, 1500 do
    local p = t.policy("echo.lua")
    local c = p:open{}
    c:send("x"); c:expect_frame("x")
    p:close()
  end
end)
""")
        rc, out, err, _ = run_files([f], timeout=120)
        assert rc == 1, (rc, out, err)
        plan, results, diags = tap(out)
        assert [ok for ok, _ in results.values()] == [False, True], out
        assert diags[1][0] == ("at %s:%d" % (f, line_of(f, "OPENS"))), diags[1]
        assert diags[1][1].endswith("1000 policies are open: the most a test may have open at "
                                    "once (p:close() the ones it is done with)"), diags[1]



@suite.test
def a_finalizer_inside_a_kit_call_cannot_call_the_kit():
    # a __gc of the test's ran by a collection step inside a kit call (w:take making a
    # request's table, say) could call the kit again: a settle inside a settle (libuv's
    # loop run inside itself), a request answered while it was being answered
    with tempfile.TemporaryDirectory() as d:
        write(d, "reent.lua", """
local host = require "statushost"
return { on_message = function(conn, text)
  local r, e = host.http.request{ url = "http://r.test/x", timeout_ms = 1000 }
  conn:send(r and tostring(r.status) or e)
end }
""")
        f = write(d, "reent_test.lua", """local t = require "statushost.test"
t.test("a finalizer inside a kit call cannot call the kit", function()
  local p = t.policy("reent.lua")
  local c = p:open{}
  local ran, refused = 0, 0
  local function arm()
    setmetatable({}, { __gc = function()
      ran = ran + 1
      
      local ok, err = pcall(p.w.settle, p.w)
      if not ok and err:find("the test kit is busy", 1, true) then refused = refused + 1 end
    end })
  end
  p:route("GET /x", function() for _ = 1, 100 do arm() end; return 200, "ok", { ["X-A"] = "1" } end)
  collectgarbage("generational", 1, 100) -- a collection (its finalizers run) at about every allocation
  for _ = 1, 20 do c:send("go"); c:expect_frame("200") end
  collectgarbage("incremental", 200, 100)
  collectgarbage()
  t.ok(refused > 0 and refused < ran, ("%d finalizers ran, %d refused"):format(ran, refused))
end)
t.test("a policy collected inside a kit call closes after it", function()
  local kit = require "statushost.kit"
  local p = t.policy("reent.lua")
  local c = p:open{}
  p:route("GET /x", { status = 200 })
  collectgarbage("generational", 1, 100)
  for _ = 1, 30 do
    assert(kit.load(kit.dir .. "/reent.lua", {}, false)) -- dropped: collected
    c:send("go"); c:expect_frame("200")
  end
  collectgarbage("incremental", 200, 100)
end)
""")
        rc, out, err, _ = run_files([f])
        assert rc == 0, (rc, out, err)
        assert out.splitlines()[-2:] == ["ok 1 - a finalizer inside a kit call cannot call the kit",
                                         "ok 2 - a policy collected inside a kit call closes after it"], out



@suite.test
def coroutines_keep_their_semantics_under_the_cpu_bound():
    # coroutine.resume, wrap and close are the kit's in a test file (it tracks the threads
    # that run, to stop them past --cpu-ms): errors, yields, <close> as Lua's own
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "co_test.lua", """local t = require "statushost.test"
t.test("wrap errors", function()
  local f = coroutine.wrap(function() error("inner") end)
  local ok, err = pcall(f); t.ok(not ok); t.eq(err, "co_test.lua:3: inner")
  local g = coroutine.wrap(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
  t.eq(g(1), 2); t.eq(g(5), 10)
  local closed = false
  local h = coroutine.wrap(function() local x <close> = setmetatable({}, { __close = function() closed = true end }); error({}) end)
  t.ok(not pcall(h)); t.ok(closed)
  local co = coroutine.create(function() local x <close> = setmetatable({}, { __close = function() closed = "c" end }); coroutine.yield() end)
  coroutine.resume(co); t.ok(coroutine.close(co)); t.eq(closed, "c")
  t.ok(not pcall(coroutine.resume, 1))
end)
t.test("spinning coroutine left suspended, resumed in the next test after it timed out", function()
  _G.spin = coroutine.wrap(function() while true do coroutine.yield() end end)
  _G.spin()
end)
t.test("resumes it", function() for i = 1, 1000 do _G.spin() end end)
""")
        rc, out, err, _ = run_files(["co_test.lua"], cwd=d)
        assert rc == 0, (rc, out, err)


if __name__ == "__main__":
    suite.run()
