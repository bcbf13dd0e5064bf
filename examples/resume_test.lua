-- examples/resume_test.lua — the tests of examples/resume.lua (a job outlives its
-- connection; a client reconnecting with the resume token gets the state, then live
-- updates). Redis is the kit's in-memory store (SET PXAT, GET, HGETALL); the one
-- script the policy runs (EVAL: XADD + HSET + PUBLISH with the offset) is played here
-- by p:on_redis, with the same effects on the store and the live channel:
--
--   statushost --test examples/resume_test.lua
local t = require "statushost.test"

local function policy(overrides)
  local cfg = { remote_url = "http://remote.test/jobs", job_timeout_ms = 60000 }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local p = t.policy("resume.lua", cfg)
  p:route("POST /jobs", t.hang) -- the remote works on it until the job's timeout
  local seq = 0
  p:on_redis(function(a)
    if a[1] ~= "EVAL" then return end -- the store answers the rest
    -- EVAL script 2 log state tid payload expire_at maxlen live publish-command
    t.eq(a[3], "2", "two keys")
    local state, tid, payload, live = a[5], a[6], a[7], a[10]
    seq = seq + 1
    local offset = "1000-" .. seq -- a stream entry id: increasing
    p.redis.data[state] = p.redis.data[state] or { hash = {} }
    p.redis.data[state].hash[tid] = offset .. " " .. payload
    p.redis.data[a[4]] = p.redis.data[a[4]] or { list = {} } -- the log: entries in order
    table.insert(p.redis.data[a[4]].list, offset .. " " .. tid .. " " .. payload)
    p:publish(live, offset .. " " .. payload)
    return offset
  end)
  return p
end

-- Start a job of two tasks: → client, token, channel
local function start(p)
  local c = p:open{}
  c:send('[{"id":1,"status":"queued"},{"id":2}]')
  local _, first = c:expect_frame(function(_, v) return type(v) == "table" and v.job end)
  t.like(first.job, "^%x+$")
  t.eq(#first.job, 32, "128 bits")
  return c, first.job, "ws:fid:" .. p.requests[1].json.fid
end

t.test("the first frame of a job is its resume token; updates are recorded", function()
  local p = policy()
  local c, token, channel = start(p)
  t.ok(p.redis.data["job:{" .. token .. "}:meta"], "the batch is saved")
  p:publish(channel, '{"id":1,"status":"进行中"}')
  c:expect_frame('{"id":1,"status":"进行中"}')
  t.eq(p.redis.data["job:{" .. token .. "}"].hash["1"], '1000-1 {"id":1,"status":"进行中"}',
       "recorded with its offset")
  t.eq(p.redis.data["job:{" .. token .. "}:log"].list, { '1000-1 1 {"id":1,"status":"进行中"}' })
end)

t.test("a client that left resumes: snapshot in batch order, then live updates", function()
  local p = policy()
  local c, token, channel = start(p)
  p:publish(channel, '{"id":1,"status":"done"}')
  c:expect_frame{ id = 1, status = "done" }
  c:drop() -- the page reloads: no close frame
  p:publish(channel, '{"id":2,"status":"进行中"}') -- recorded while nobody is connected
  local r = p:open{ path = "/?resume=" .. token }
  t.eq(r.status, 101)
  r:expect_frame('{"id":1,"status":"done"}')
  r:expect_frame('{"id":2,"status":"进行中"}')
  r:expect_no_frame()
  p:publish(channel, '{"id":2,"status":"done"}')
  r:expect_frame{ id = 2, status = "done" }
  r:expect_close(1000, "done")
end)

t.test("a task never updated is shown as first sent", function()
  local p = policy()
  local c, token = start(p)
  c:drop()
  local r = p:open{ path = "/?resume=" .. token }
  r:expect_frame{ id = 1, status = "queued" }
  r:expect_frame{ id = 2, status = "pending" }
end)

t.test("unknown and malformed tokens close 4404", function()
  local p = policy()
  local r = p:open{ path = "/?resume=" .. string.rep("ab", 16) }
  r:expect_frame{ error = "unknown_job", message = "no such job (unknown or expired)" }
  r:expect_close(4404, "unknown job")
  local m = p:open{ path = "/?resume=xyz" }
  m:expect_frame{ error = "unknown_job", message = "not a resume token" }
  m:expect_close(4404)
end)

t.test("a resumed job ends at the job's deadline with 4408", function()
  local p = policy{ job_timeout_ms = 10000 }
  local c, token = start(p)
  c:drop()
  p:advance(4000)
  local r = p:open{ path = "/?resume=" .. token }
  r:expect_frame{ id = 1 }
  r:expect_frame{ id = 2 }
  p:advance(5999)
  r:expect_no_frame()
  p:advance(1)
  r:expect_frame{ error = "timeout", pending = { "1", "2" } }
  r:expect_close(4408)
end)

t.test("Redis unavailable during a resume closes 1013", function()
  local p = policy()
  local c, token = start(p)
  c:drop()
  p:redis_down(true)
  local r = p:open{ path = "/?resume=" .. token }
  r:expect_frame{ error = "unavailable" }
  r:expect_close(1013)
end)
