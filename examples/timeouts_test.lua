-- examples/timeouts_test.lua — the tests of examples/timeouts.lua (a deadline per task),
-- on the virtual clock:
--
--   statushost --test examples/timeouts_test.lua
local t = require "statushost.test"

local function policy(overrides)
  local cfg = { remote_url = "http://remote.test/jobs", task_timeout_ms = 5000 }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local p = t.policy("timeouts.lua", cfg)
  p:route("POST /jobs", t.hang) -- the seed's remote answers when the job is done: never here
  return p
end

local function channel(p) return "ws:fid:" .. p.requests[1].json.fid end

t.test("a task past its deadline is reported and counts as finished", function()
  local p = policy()
  local c = p:open{}
  c:send('[{"id":1},{"id":"b","timeout_ms":2000}]')
  p:advance(1999)
  c:expect_no_frame()
  p:advance(1)
  c:expect_frame('{"id":"b","status":"timeout"}')
  p:publish(channel(p), '{"id":"b","status":"done"}')
  c:expect_no_frame() -- a late update for a timed-out task is dropped
  p:publish(channel(p), '{"id":1,"status":"done"}')
  c:expect_frame{ id = 1, status = "done" }
  c:expect_close(1000, "done, 1 of 2 timed out")
end)

t.test("every task timed out: the job ends 1000 at the last deadline", function()
  local p = policy()
  local c = p:open{}
  c:send('[{"id":1,"timeout_ms":100},{"id":2,"timeout_ms":300}]')
  p:advance(100)
  c:expect_frame{ id = 1, status = "timeout" }
  p:advance(200)
  c:expect_frame{ id = 2, status = "timeout" }
  c:expect_close(1000, "done, 2 of 2 timed out")
  t.eq(p:now(), 300)
end)

t.test("a deadline of 1 ms fires 1 ms after the batch", function()
  local p = policy()
  local c = p:open{}
  c:send('[{"id":1,"timeout_ms":1},{"id":2}]')
  c:expect_no_frame()
  p:advance(1)
  c:expect_frame{ id = 1, status = "timeout" }
end)

t.test("tasks done in time end the job as the default policy does", function()
  local p = policy()
  local c = p:open{}
  c:send('[{"id":1},{"id":2}]')
  p:publish(channel(p), '{"id":1,"status":"done"}')
  p:publish(channel(p), '{"id":2,"status":"done"}')
  c:expect_frame{ id = 1 }
  c:expect_frame{ id = 2 }
  c:expect_close(1000, "done")
  p:advance(10000)
  c:expect_no_frame() -- no deadline fires after the job ended
end)

t.test("timeout_ms 0 means no deadline; the job timeout still applies", function()
  local p = policy{ task_timeout_ms = 0, job_timeout_ms = 60000 }
  local c = p:open{}
  c:send('[{"id":1}]')
  p:advance(59999)
  c:expect_no_frame()
  p:advance(1)
  c:expect_frame{ error = "timeout", pending = { "1" } }
  c:expect_close(4408)
end)

t.test("an invalid batch arms no deadline", function()
  local p = policy()
  local c = p:open{}
  c:send('[{"id":1},{"id":1}]')
  c:expect_frame{ error = "invalid_message" }
  p:advance(10000)
  c:expect_no_frame()
end)
