-- scripts/default_test.lua — the tests of scripts/default.lua, run in-process by the
-- policy test kit:
--
--   statushost --test scripts/default_test.lua
--
-- The flow end to end (batch → POST seen by the remote → updates published → frames →
-- close 1000), then every error frame and close code the policy produces. The remote and
-- Redis are simulated and the clock is virtual: the job timeout test takes no real time.
local t = require "statushost.test"

local REMOTE = "http://remote.test/remote/message"

-- The default policy with a remote that accepts every batch (202), unless told otherwise.
local function start(overrides, answer)
  local cfg = { remote_url = REMOTE }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local p = t.policy("default.lua", cfg)
  p:route("POST /remote/message", answer or function() return 202, "accepted" end)
  return p
end

-- The channel the policy listens on for connection c's job: the fid of its POST.
local function channel_of(p, n)
  local req = p.requests[n or #p.requests]
  return "ws:fid:" .. req.json.fid
end

t.test("a batch is POSTed, its updates are forwarded, and the job closes 1000", function()
  local p = start()
  local c = p:open{ path = "/" }
  t.eq(c.status, 101, "the upgrade is accepted")
  c:send('[{"id":1,"status":"queued"},{"id":"b"}]')
  t.eq(#p.requests, 1, "one POST to the remote")
  local req = p.requests[1]
  t.eq(req.method, "POST")
  t.eq(req.url, REMOTE)
  t.eq(req.headers["content-type"], "application/json")
  t.eq(req.json.data, { { id = 1, status = "queued" }, { id = "b" } }, "the batch, as sent")
  t.ok(type(req.json.fid) == "string" and #req.json.fid > 0, "a fid names the connection")
  local channel = channel_of(p)
  t.eq(p:subscribers(channel), 1, "subscribed before the POST")
  c:expect_no_frame()
  -- updates are forwarded verbatim, in order; the last one done closes 1000
  t.eq(p:publish(channel, '{"id":1,"status":"进行中"}'), 1)
  c:expect_frame('{"id":1,"status":"进行中"}')
  p:publish(channel, '{"id":1,"status":"已完成"}')
  c:expect_frame{ id = 1, status = "已完成" }
  p:publish(channel, '{"id":"b","status":"done","result":42}')
  c:expect_frame{ id = "b", status = "done", result = 42 }
  c:expect_close(1000, "done")
  t.eq(p:subscribers(channel), 0, "the channel is left")
end)

t.test("close_when_done=false keeps the connection for another batch", function()
  local p = start{ close_when_done = false }
  local c = p:open{}
  c:send('[{"id":7}]')
  p:publish(channel_of(p), '{"id":7,"status":"completed"}')
  c:expect_frame{ id = 7 }
  c:expect_no_frame()
  c:send('[{"id":8}]')
  t.eq(#p.requests, 2, "a second POST")
end)

t.test("updates for other tasks, and malformed ones, are dropped", function()
  local p = start()
  local c = p:open{}
  c:send('[{"id":1}]')
  local channel = channel_of(p)
  p:publish(channel, '{"id":2,"status":"done"}')
  p:publish(channel, 'not json')
  p:publish(channel, '{"status":"done"}')
  c:expect_no_frame()
  p:publish(channel, '{"id":1,"status":"done"}')
  c:expect_frame{ id = 1 }
  c:expect_close(1000)
end)

t.test("an update that is not UTF-8 is dropped and does not finish its task", function()
  local p = start()
  local c = p:open{}
  c:send('[{"id":1},{"id":2}]')
  local channel = channel_of(p)
  p:publish(channel, '{"id":1,"status":"done","note":"\255\254"}') -- cannot be a text frame
  p:publish(channel, '{"id":2,"status":"done"}')
  c:expect_frame{ id = 2 }
  c:expect_no_frame() -- not closed: task 1 is not done (before: close 1000 "done" here)
  p:publish(channel, '{"id":1,"status":"done"}')
  c:expect_frame{ id = 1 }
  c:expect_close(1000)
end)

-- ---------------------------------------------------------------- invalid messages

local invalid = {
  { "not JSON", "{oops", "^not a JSON array$" },
  { "an object", '{"id":1}', "non%-empty JSON array" },
  { "an empty array", "[]", "non%-empty JSON array" },
  { "a bare-dot number (refused as JSON.parse does)", '[{"id":1.}]', "^not a JSON array$" },
  { "a task that is not an object", "[1]", "task 1 is not an object" },
  { "a task without an id", '[{"status":"x"}]', "task 1: id must be" },
  { "a fractional id", '[{"id":1.5}]', "task 1: id must be" },
  { "a duplicate id", '[{"id":1},{"id":"1"}]', "task 2: duplicate id 1" },
  { "a status that is not a string", '[{"id":1,"status":5}]', "task 1: status must be a string" },
}

for _, case in ipairs(invalid) do
  local what, text, message = case[1], case[2], case[3]
  t.test("invalid_message: " .. what, function()
    local p = start()
    local c = p:open{}
    c:send(text)
    local _, frame = c:expect_frame{ error = "invalid_message" }
    t.like(frame.message, message)
    c:expect_no_frame() -- the connection stays open for a good batch
    t.eq(#p.requests, 0, "nothing dispatched")
    c:send('[{"id":1}]')
    t.eq(#p.requests, 1, "the next batch is dispatched")
  end)
end

t.test("invalid_message: too many tasks (max_tasks)", function()
  local p = start{ max_tasks = 2 }
  local c = p:open{}
  c:send('[{"id":1},{"id":2},{"id":3}]')
  c:expect_frame{ error = "invalid_message", message = "too many tasks: 3 (max 2)" }
end)

t.test("invalid_message: a batch of 250,000 members refused at its first task, under lua_max_memory", function()
  -- (before, validate sized the job's three tables for n tasks before it looked at one:
  -- 16 MB of room for this 0.5 MB batch, past lua_max_memory, and the client got close
  -- 1011 "internal error"; past 2^24 tasks, host.table_new's cap raised the same way)
  local n = 250000
  local p = start{ max_tasks = n, max_batch_values = n + 1, max_message_bytes = 2 * n + 1,
                   lua_max_memory = 12 * 1048576 }
  local c = p:open{}
  c:send("[" .. ("0,"):rep(n - 1) .. "0]")
  c:expect_frame{ error = "invalid_message", message = "task 1 is not an object" }
end)

t.test("invalid_message: too many JSON values (max_batch_values)", function()
  local p = start{ max_batch_values = 7 }
  local c = p:open{}
  c:send('[{"id":1,"x":[[],[]]},{"id":2}]') -- 8 values: the array, 2 objects, 2 ids, x and its 2
  c:expect_frame{ error = "invalid_message", message = "too many JSON values (max_batch_values 7)" }
  c:send('[{"id":1,"x":[[]]},{"id":2}]') -- 7: taken
  t.eq(#p.requests, 1, "the batch at the bound is dispatched")
end)

t.test("invalid_message: an id over max_id_bytes", function()
  local p = start{ max_id_bytes = 4 }
  local c = p:open{}
  c:send('[{"id":"12345"}]')
  c:expect_frame{ error = "invalid_message", message = "task 1: id must be a non-empty string or an integer" }
end)

t.test("busy: a second batch while a job runs", function()
  local p = start()
  local c = p:open{}
  c:send('[{"id":1}]')
  c:send('[{"id":2}]')
  c:expect_frame{ error = "busy", message = "a job is already running on this connection" }
  t.eq(#p.requests, 1, "the second batch is not dispatched")
end)

t.test("a binary message closes 1003", function()
  local p = start()
  local c = p:open{}
  c:send_binary("\1\2")
  c:expect_close(1003)
end)

t.test("a text message that is not UTF-8 closes 1007", function()
  local p = start()
  local c = p:open{}
  c:send("[\xc3\x28]")
  c:expect_close(1007)
end)

-- ---------------------------------------------------------------- failures

t.test("unavailable: Redis down closes 1013", function()
  local p = start()
  p:redis_down(true)
  local c = p:open{}
  c:send('[{"id":1}]')
  c:expect_frame{ error = "unavailable", message = "redis unavailable" }
  c:expect_close(1013, "redis unavailable")
  t.eq(#p.requests, 0, "nothing dispatched without the subscription")
end)

t.test("dispatch_failed: the remote answers 500, closes 1011", function()
  local p = start({}, function() return 500, "boom" end)
  local c = p:open{}
  c:send('[{"id":1}]')
  c:expect_frame{ error = "dispatch_failed", message = "remote answered 500" }
  c:expect_close(1011, "dispatch failed")
  t.eq(p:subscribers(channel_of(p)), 0, "the channel is left")
end)

t.test("dispatch_failed: the remote refuses the connection", function()
  local p = start({}, function() return nil, "refused" end)
  local c = p:open{}
  c:send('[{"id":1}]')
  c:expect_frame{ error = "dispatch_failed", message = "refused" }
  c:expect_close(1011)
end)

t.test("dispatch_retries: 5xx and refusals are retried, a 4xx is not", function()
  local answers = { { nil, "refused" }, { 503 }, { 202 } }
  local p = start({ dispatch_retries = 2 }, function()
    return table.unpack(table.remove(answers, 1))
  end)
  local c = p:open{}
  c:send('[{"id":1}]')
  t.eq(#p.requests, 3, "two retries")
  c:expect_no_frame()

  local p2 = start({ dispatch_retries = 2 }, function() return 404 end)
  local c2 = p2:open{}
  c2:send('[{"id":1}]')
  t.eq(#p2.requests, 1, "a 404 is not retried")
  c2:expect_frame{ error = "dispatch_failed", message = "remote answered 404" }
  c2:expect_close(1011)
end)

t.test("dispatch_retries: a dispatch that timed out is not retried", function()
  local p = start({ dispatch_retries = 2 }, function() return nil, "timeout" end)
  local c = p:open{}
  c:send('[{"id":1}]')
  t.eq(#p.requests, 1, "one POST only")
  c:expect_frame{ error = "dispatch_failed", message = "timeout" }
  c:expect_close(1011)
end)

t.test("timeout: the job timer lists the pending tasks, closes 4408", function()
  local p = start({ job_timeout_ms = 5000 }, t.hang) -- the remote never answers
  local c = p:open{}
  c:send('[{"id":1},{"id":2},{"id":3}]')
  p:publish(channel_of(p), '{"id":2,"status":"done"}')
  c:expect_frame{ id = 2 }
  p:advance(4999)
  c:expect_no_frame()
  p:advance(1)
  c:expect_frame{ error = "timeout", message = "2 of 3 tasks not done within 5000 ms",
                  pending = { "1", "3" } }
  c:expect_close(4408, "job timeout")
  t.eq(p:now(), 5000, "virtual time: nothing waited")
end)

t.test("a misconfigured remote_url refuses to load", function()
  local ok, err = pcall(t.policy, "default.lua", { remote_url = "ftp://remote/x" })
  t.ok(not ok, "the load fails")
  t.like(tostring(err), "unsupported scheme ftp")
end)

t.test("a client leaving mid-job releases its subscription", function()
  local p = start()
  local c = p:open{}
  c:send('[{"id":1}]')
  local channel = channel_of(p)
  t.eq(p:subscribers(channel), 1)
  c:close(1001, "going away")
  c:expect_close(1001)
  t.eq(p:subscribers(channel), 0)
  t.eq(p:publish(channel, '{"id":1,"status":"done"}'), 0, "nobody listens any more")
end)
