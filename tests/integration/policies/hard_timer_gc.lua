-- "uaf": host.timer's handle metatable (TIMER_MT, no __metatable) gets a Lua __gc in place
-- of the host's timer_gc, which clears the C timer's pointer to the handle; the handle is
-- collected, then the timer fires and ends.
local host = require "statushost"
return {
  on_message = function(conn, text)
    local t = host.timer(50, function() end)
    pcall(function() getmetatable(t).__gc = function() end end) -- no metatable to reach now
    t = nil
    collectgarbage()
    collectgarbage()
    host.sleep(300)
    conn:send("survived")
  end,
}
