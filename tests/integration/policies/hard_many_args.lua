-- "spawn N": host.spawn(fn, 1..N): N arguments moved onto the new task's coroutine.
-- "timer N": host.timer(0, fn, 1..N): at the firing, fn and its N arguments are pushed
-- on the callback task's coroutine, a new one (the hook still holds its own).
-- fn answers "<spawn|timer> got <the number of arguments it got>".
local host = require "statushost"
return {
  on_message = function(conn, text)
    local what, n = text:match("^(%a+) (%d+)$")
    local args = {}
    for i = 1, tonumber(n) do args[i] = i end
    local function fn(...) conn:send(what .. " got " .. select("#", ...)) end
    if what == "spawn" then
      host.spawn(fn, table.unpack(args))
    else
      host.timer(0, fn, table.unpack(args))
      host.sleep(200) -- this task keeps its coroutine (its stack grown by the unpack) meanwhile
    end
  end,
}
