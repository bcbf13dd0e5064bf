-- test_attack13_policy.py: host.redis.call with integers Redis refuses and expiry times past
-- 2^63 ms from now; GET /r answers one line a command: the reply, or "err: <Redis' error>".
local host = require "statushost"
local cmds = {
  {"INCRBY", "attack13:n", "01"},
  {"INCRBY", "attack13:n", "-0"},
  {"INCRBY", "attack13:n", "+1"},
  {"SET", "attack13:e", "v", "PX", "9223372036854775807"},
  {"SET", "attack13:e", "v", "EX", "9223372036854775"},
  {"SET", "attack13:x", "1"},
  {"EXPIRE", "attack13:x", "9223372036854775"},
  {"PEXPIRE", "attack13:x", "9223372036854775000"},
  {"DEL", "attack13:x"},
}
return {
  routes = {
    ["GET /r"] = function()
      local out = {}
      for i, c in ipairs(cmds) do
        local r, err = host.redis.call(table.unpack(c))
        out[i] = err and ("err: " .. err) or tostring(r)
      end
      return 200, table.concat(out, "\n")
    end,
  },
}
