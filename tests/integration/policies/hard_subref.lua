-- "win N": fill the Lua heap up to lua_max_memory, then call host.subscribe on N new
-- channels (sub:win:1..N), giving back a few bytes of the heap before each call, so that
-- calls fail at each of their allocations in turn, the registry's growth among them.
-- Then free the heap, subscribe to sub:win:end (Redis answers in order: every earlier
-- SUBSCRIBE has been answered) and answer "done <calls that returned a handle>".
-- test_hardening.py checks that Redis holds exactly that many sub:win:* channels.
local host = require "statushost"
local heap_fill = require "heap_fill"

local handles, names = {}, {}
local function cb() end

return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^win (%d+)$"))
    for i = 1, n do names[i] = "sub:win:" .. i end
    handles = host.table_new(n, 0) -- filled with the heap full: its room is taken now
    local heap = heap_fill()
    local got = 0
    for i = 1, n do
      heap:give()
      local ok, h = pcall(host.subscribe, names[i], cb)
      if ok and h then got = got + 1; handles[got] = h end
    end
    heap:free()
    assert(host.subscribe("sub:win:end", cb))
    conn:send("done " .. got)
  end,
}
