-- examples/ratelimit_test.lua — the tests of examples/ratelimit.lua (upgrades per IP per
-- window, counted in a shared dict whose TTLs follow the virtual clock):
--
--   statushost --test examples/ratelimit_test.lua
local t = require "statushost.test"

local function policy(overrides)
  local cfg = { ratelimit_max = 2, ratelimit_window_s = 10 }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return t.policy("ratelimit.lua", cfg)
end

t.test("over the limit the upgrade gets 429 with Retry-After", function()
  local p = policy()
  t.eq(p:open{ peer = "10.0.0.1:5000" }.status, 101)
  t.eq(p:open{ peer = "10.0.0.1:5001" }.status, 101)
  local c = p:open{ peer = "10.0.0.1:5002" }
  t.eq(c.status, 429)
  t.eq(c.body, "too many requests\n")
  t.eq(c.headers["retry-after"], "10")
end)

t.test("each IP has its own count (IPv6 too)", function()
  local p = policy{ ratelimit_max = 1 }
  t.eq(p:open{ peer = "10.0.0.1:1" }.status, 101)
  t.eq(p:open{ peer = "10.0.0.2:1" }.status, 101)
  t.eq(p:open{ peer = "[2001:db8::1]:1" }.status, 101)
  t.eq(p:open{ peer = "[2001:db8::1]:2" }.status, 429)
  t.eq(p:open{ peer = "10.0.0.1:2" }.status, 429)
end)

t.test("the window ends: Retry-After counts down, then upgrades pass again", function()
  local p = policy{ ratelimit_max = 1 }
  t.eq(p:open{ peer = "10.0.0.1:1" }.status, 101)
  p:advance(6000)
  local c = p:open{ peer = "10.0.0.1:2" }
  t.eq(c.status, 429)
  t.eq(c.headers["retry-after"], "4")
  p:advance(4000)
  t.eq(p:open{ peer = "10.0.0.1:3" }.status, 101, "a new window")
end)

t.test("behind a trusted proxy the limit is per X-Forwarded-For client", function()
  local p = policy{ ratelimit_max = 1, real_ip_from = "10.0.0.0/8", real_ip_header = "X-Forwarded-For" }
  local via = function(ip) return { peer = "10.1.1.1:80", headers = { ["X-Forwarded-For"] = ip } } end
  t.eq(p:open(via "203.0.113.7").status, 101)
  t.eq(p:open(via "203.0.113.8").status, 101, "another client through the same proxy")
  t.eq(p:open(via "203.0.113.7").status, 429)
end)
