-- test_attack13_policy.py: xpcall's message handler and the instruction budget.
--   GET /loop   xpcall of a loop the budget stops, with a handler that loops too
--   GET /err    xpcall of a plain error: the handler runs and shapes the message
--   GET /sleep  xpcall of a body that waits (host.sleep): its results come back
--   GET /tb     xpcall with debug.traceback: its traceback starts at the function that raised
--   GET /ok     200
local host = require "statushost"

return {
  routes = {
    ["GET /loop"] = function()
      xpcall(function() while true do end end, function()
        host.log.info("attack13: xpcall handler runs")
        while true do end
      end)
    end,
    ["GET /err"] = function()
      local ok, msg = xpcall(function() error({code = 7}) end, function(e) return "handled " .. e.code end)
      return 200, tostring(ok) .. " " .. msg
    end,
    ["GET /sleep"] = function()
      local ok, a, b = xpcall(function(x) return host.sleep(1), x end, debug.traceback, "arg")
      return 200, table.concat({tostring(ok), tostring(a), tostring(b)}, " ")
    end,
    ["GET /tb"] = function()
      local _, tb = xpcall(function() error("boom") end, debug.traceback)
      return 200, tb
    end,
    ["GET /ok"] = function() return 200, "ok\n" end,
  },
}
