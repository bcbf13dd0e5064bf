-- "charge MS": with the heap full (kept), a concatenation is refused and the hook ends;
-- a host.timer callback MS ms later (another run) computes ~50 ms without allocating,
-- then asks for a concatenation of the same size (refused: the heap is still full) and
-- answers "done". The callback's instructions do not depend on MS.
local host = require "statushost"
local heap_fill = require "heap_fill"
local a = string.rep("a", 300000)
local function cat() return a .. a end
local heap
return {
  on_message = function(conn, text)
    local ms = tonumber(text:match("^charge (%d+)$"))
    host.timer(ms, function()
      local x = 0
      for i = 1, 10000000 do x = x + i end
      pcall(cat)
      heap:free()
      conn:send("done " .. x)
    end)
    heap = heap_fill()
    pcall(cat)
  end,
}
