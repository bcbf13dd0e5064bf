-- "charge MS": with the heap full, a concatenation is refused (Lua collects in full, asks
-- again, is refused again: the last refusal stays noted); the hook waits MS ms
-- (host.sleep), computes ~50 ms without allocating (so the run's budget is armed), then
-- asks for the same concatenation once more (refused: the heap is still full). Answers
-- "done <x>". The instructions the hook runs do not depend on MS.
local host = require "statushost"
local heap_fill = require "heap_fill"
local a = string.rep("a", 300000)
local function cat() return a .. a end
return {
  on_message = function(conn, text)
    local ms = tonumber(text:match("^charge (%d+)$"))
    local heap = heap_fill()
    pcall(cat)
    host.sleep(ms)
    local x = 0
    for i = 1, 10000000 do x = x + i end
    pcall(cat)
    heap:free()
    conn:send("done " .. x)
  end,
}
