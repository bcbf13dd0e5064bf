-- examples/auth_test.lua — the tests of examples/auth.lua (signed tokens at the handshake):
--
--   statushost --test examples/auth_test.lua
local t = require "statushost.test"
local lib = t.lib -- the helpers policies get from require "statushost"

local SECRET = "s3cret"

local function policy(overrides)
  local cfg = { auth_secret = SECRET, remote_url = "http://remote.test/jobs" }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local p = t.policy("auth.lua", cfg)
  p:route("POST /jobs", function() return 202 end)
  return p
end

-- SUBJECT.EXPIRY.hex(HMAC-SHA256(secret, "SUBJECT.EXPIRY"))
local function token(subject, expiry, secret)
  local payload = subject .. "." .. math.floor(expiry)
  return payload .. "." .. lib.hmac_sha256(secret or SECRET, payload)
end

t.test("a valid token in the query string is let in, and the job runs", function()
  local p = policy()
  local c = p:open{ path = "/?token=" .. token("alice", p:time() + 60) }
  t.eq(c.status, 101)
  c:send('[{"id":1}]')
  t.eq(#p.requests, 1, "dispatched as the default policy does")
  p:publish("ws:fid:" .. p.requests[1].json.fid, '{"id":1,"status":"done"}')
  c:expect_frame{ id = 1, status = "done" }
  c:expect_close(1000)
end)

t.test("a valid token in Authorization: Bearer is let in", function()
  local p = policy()
  local c = p:open{ headers = { Authorization = "Bearer " .. token("bob", p:time() + 60) } }
  t.eq(c.status, 101)
end)

local refusals = {
  { "no token", function() return "/" end, "no token" },
  { "a malformed token", function() return "/?token=alice" end, "malformed token" },
  { "a bad signature", function(p) return "/?token=" .. token("alice", p:time() + 60, "other") end,
    "bad signature" },
  { "an expired token", function(p) return "/?token=" .. token("alice", p:time() - 1) end,
    "token expired" },
  { "a token too far ahead", function(p) return "/?token=" .. token("alice", p:time() + 2 * 86400) end,
    "token expires too far ahead" },
}

for _, case in ipairs(refusals) do
  t.test("401 for " .. case[1], function()
    local p = policy()
    local c = p:open{ path = case[2](p) }
    t.eq(c.status, 401, "refused before the upgrade")
    t.eq(c.body, case[3] .. "\n")
  end)
end

t.test("a token expires on the virtual clock", function()
  local p = policy()
  local tok = token("alice", p:time() + 10)
  t.eq(p:open{ path = "/?token=" .. tok }.status, 101)
  p:advance(10 * 1000)
  t.eq(p:open{ path = "/?token=" .. tok }.status, 401, "expired 10 s later")
end)

t.test("without auth_secret every upgrade gets 500", function()
  local p = policy{ auth_secret = "" }
  local c = p:open{ path = "/?token=" .. token("alice", p:time() + 60, "") }
  t.eq(c.status, 500)
  t.eq(c.body, "server misconfigured\n")
end)
