-- test_attack13_policy.py: to-be-closed variables (`local x <close>`) in hooks that fail.
--   GET /fail      a route with a <close> guard that counts in a shared dictionary, then raises
--   GET /count     the count
--   GET /wrap      a coroutine.wrap whose body and __close handler both loop (the budget stops
--                  the body; the handler must not then run uncounted)
--   GET /saved     a coroutine whose body loops (stopped by the budget), kept in an upvalue,
--                  and whose __close handler loops
--   GET /close     coroutine.close of that saved coroutine, in a later run
--   GET /ok        200
--   on_message     a <close> guard that logs, then raises
local host = require "statushost"
local d = host.shared("attack13_close")
local function guard(f) return setmetatable({}, {__close = f}) end
local saved

return {
  routes = {
    ["GET /fail"] = function()
      local g <close> = guard(function(_, err)
        d:incr("closed", 1, 0)
        host.log.info("attack13: route guard closed, error: " .. tostring(err))
      end)
      error("attack13 route failure")
    end,
    ["GET /count"] = function() return 200, tostring(d:get("closed") or 0) end,
    ["GET /wrap"] = function()
      local f = coroutine.wrap(function()
        local g <close> = guard(function() host.log.info("attack13: wrap guard runs"); while true do end end)
        while true do end
      end)
      f()
    end,
    ["GET /saved"] = function()
      saved = coroutine.create(function()
        local g <close> = guard(function() host.log.info("attack13: saved guard runs"); while true do end end)
        while true do end
      end)
      coroutine.resume(saved)
    end,
    ["GET /close"] = function() return 200, tostring(coroutine.close(saved)) end,
    ["GET /ok"] = function() return 200, "ok\n" end,
  },
  on_message = function(conn, text)
    local g <close> = guard(function()
      host.log.info("attack13: message guard closed, send: " .. tostring(conn:send("late")))
    end)
    error("attack13 message failure")
  end,
}
