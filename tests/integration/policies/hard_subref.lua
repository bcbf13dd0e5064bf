-- "win N": fill the Lua heap up to lua_max_memory, then call host.subscribe on N new
-- channels (sub:win:1..N), giving back a few bytes of the heap before each call, so that
-- calls fail at each of their allocations in turn, the registry's growth among them.
-- Then free the heap, subscribe to sub:win:end (Redis answers in order: every earlier
-- SUBSCRIBE has been answered) and answer "done <calls that returned a handle>".
-- test_hardening.py checks that Redis holds exactly that many sub:win:* channels.
local host = require "statushost"

local handles, names = {}, {}

return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^win (%d+)$"))
    for i = 1, n do names[i] = "sub:win:" .. i end
    local keep = host.table_new(30000, 0) -- its slots are taken now: filling it allocates no more
    local k, size = 0, 0
    local function add() k = k + 1; keep[k] = string.rep("y", size) .. k end
    for _, s in ipairs{ 1000000, 100000, 10000, 1000, 100, 20 } do
      size = s
      while k < 30000 and pcall(add) do end
    end -- the heap is full; its last strings are short ones
    local function cb() end
    local got = 0
    for i = 1, n do
      if k > 0 then keep[k] = nil; k = k - 1 end -- about 60 bytes back, at the next collection
      local ok, h = pcall(host.subscribe, names[i], cb)
      if ok and h then got = got + 1; handles[got] = h end
    end
    keep = nil -- luacheck: ignore
    collectgarbage()
    assert(host.subscribe("sub:win:end", cb))
    conn:send("done " .. got)
  end,
}
