-- "go N": N spawned tasks each call conn:subscribe("unsub:pending:<i>") and wait for
-- Redis' confirmation; one more spawned task (run right after them, before Redis answers)
-- fills the Lua heap to lua_max_memory, then calls conn:unsubscribe on each channel in
-- pcall, giving back a few bytes before each call. Each unsubscribe aborts the waiting
-- task with nil, "unsubscribed": a string pushed on that task's coroutine while the cap
-- applies. Answers "done" when the unsubscriber finished.
local host = require "statushost"

return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^go (%d+)$"))
    local names = {}
    for i = 1, n do names[i] = "unsub:pending:" .. i end
    for i = 1, n do
      host.spawn(function() conn:subscribe(names[i]) end)
    end
    host.spawn(function()
      local keep = host.table_new(40000, 0) -- its slots are taken now
      local k, size = 0, 0
      local function add_long() k = k + 1; keep[k] = string.rep("z", size) .. k end
      local function add_short() k = k + 1; keep[k] = k .. "" end -- ~30 bytes each
      for _, s in ipairs{ 1000000, 100000, 10000, 1000, 100 } do
        size = s
        while k < 40000 and pcall(add_long) do end
      end
      collectgarbage() -- the garbage of the refused calls goes: the heap is full of live data
      while k < 40000 and pcall(add_short) do end
      for i = 1, n do
        if k > 0 then keep[k] = nil; k = k - 1 end -- about 30 bytes back, at the next collection
        pcall(conn.unsubscribe, conn, names[i])
      end
      keep = nil -- luacheck: ignore
      collectgarbage()
      conn:send("done")
    end)
  end,
}
