-- test_attack13_policy.py: the kit refuses what the real HTTP client refuses.
local t = require "statushost.test"

t.test("framing headers of the policy's own raise as on the server", function()
  local p = t.policy("attack13_http_te.lua")
  p:route("POST /jobs", function() return 200, "done" end)
  t.like(p:request{path = "/te"}.body, "^raised: .*invalid argument")
  t.like(p:request{path = "/cl"}.body, "^raised: .*invalid argument")
  t.eq(p:request{path = "/ok"}.body, "returned: 200")
  t.eq(#p.requests, 1)
end)
