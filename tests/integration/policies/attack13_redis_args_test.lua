-- test_attack13_policy.py: the kit's Redis answers attack13_redis_args.lua's commands as
-- Redis does (the test also runs them against a real redis-server).
local t = require "statushost.test"

t.test("integers and expiry times as Redis checks them", function()
  local p = t.policy("attack13_redis_args.lua")
  local notint = "err: ERR value is not an integer or out of range"
  t.eq(p:request{path = "/r"}.body, table.concat({
    notint, notint, notint,
    "err: ERR invalid expire time in 'set' command",
    "err: ERR invalid expire time in 'set' command",
    "OK",
    "err: ERR invalid expire time in 'expire' command",
    "err: ERR invalid expire time in 'pexpire' command",
    "1",
  }, "\n"))
end)
