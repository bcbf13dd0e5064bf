-- "req N": fill the Lua heap to lua_max_memory, then read conn.request N times in pcall,
-- giving back a few bytes before each read (the policy has no on_handshake: the upgrade request is kept in C and made into a Lua
-- table on first read; with the heap full that raises "not enough memory"). Then free the
-- heap and answer "done <failures> <conn.request.path>".
local heap_fill = require "heap_fill"

local function read_request(conn) return conn.request end

return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^req (%d+)$"))
    local heap = heap_fill()
    local failed = 0
    for _ = 1, n do
      heap:give()
      if not pcall(read_request, conn) then failed = failed + 1 end
    end
    heap:free()
    local req = conn.request
    conn:send("done " .. failed .. " " .. tostring(req and req.path) .. " " .. tostring(conn.ip))
  end,
}
