-- test_attack13_policy.py: host.json.encode of a table whose integer key 10^15 and string key
-- "1000000000000000" are the same JSON key. GET /j answers the result (text, or "nil <err>").
local host = require "statushost"
return {
  routes = {
    ["GET /j"] = function()
      local t = {[1000000000000000] = "int", ["1000000000000000"] = "str"}
      local text, err = host.json.encode(t)
      return 200, text or ("nil " .. tostring(err))
    end,
  },
}
