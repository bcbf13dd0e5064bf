-- "go <file>": a spawned task waits (host.sleep); the hook fills the Lua heap to
-- lua_max_memory, writes "filled" to <file> (opened before the fill), then spins without
-- yielding until <file> says "reset" (the client resets the TCP connection, then writes it;
-- the loop does not see the reset: the hook holds it), then calls conn:send in pcall until
-- the output passes max_send_buffer. conn:send then flushes: the write fails on the reset
-- socket and the connection is closed from inside conn:send, in the hook's run, where
-- lua_max_memory applies: its end wakes the waiting task with nil + a string not otherwise
-- in the heap, and queues on_close.
local host = require "statushost"

local chunk = string.rep("s", 4000)

return {
  on_message = function(conn, text)
    local path = text:match("^go (%S+)$")
    host.spawn(function() host.sleep(60000) end)
    host.sleep(10) -- the spawned task runs and waits
    local f = assert(io.open(path, "w"))
    local r = assert(io.open(path, "r"))
    local keep = host.table_new(40000, 0) -- its slots are taken now
    local k, size = 0, 0
    local function add_long() k = k + 1; keep[k] = string.rep("f", size) .. k end
    local function add_short() k = k + 1; keep[k] = k .. "" end
    for _, s in ipairs{ 1000000, 100000, 10000, 1000, 100 } do
      size = s
      while k < 40000 and pcall(add_long) do end
    end
    collectgarbage() -- the refused calls' garbage goes: the heap is full of live data
    while k < 40000 and pcall(add_short) do end
    f:write("filled\n")
    f:flush()
    local want, seen = "reset", nil
    repeat -- read in pcall: with the heap full a read may raise
      r:seek("set", 7)
      local ok, line = pcall(r.read, r, "l")
      seen = ok and line
    until seen == want
    -- a first send in pcall, a few bytes given back before each try, until one goes
    -- through (its call frames are then kept); then the heap is topped up again
    repeat
      if k > 0 then keep[k] = nil; k = k - 1 end
    until pcall(conn.send, conn, chunk)
    while k < 40000 and pcall(add_short) do end
    for _ = 1, 20 do -- the fifth passes max_send_buffer
      pcall(conn.send, conn, chunk)
    end
    keep = nil -- luacheck: ignore
  end,
  on_close = function() end,
}
