-- A finalizer written in Lua, put on io's file metatable (reachable with getmetatable:
-- the __gc ban is on setmetatable only), tries to allocate 4 MB and keeps what it gets.
-- Under the cap that is refused; the guarded cjson.decode runs lua-cjson with the cap
-- lifted, and the collector's steps during the decode run pending finalizers.
-- "fin N": N rounds of 50 garbage files then a decode of a 6 KB JSON array. Answers
-- "fin got=<4 MB strings kept>" (or closes 1011 when the heap, past the cap, refuses even that).
local cjson = require "cjson"
local mt = getmetatable(io.stdout) -- false now: the metatable is out of reach
local hoard = {}
if type(mt) == "table" then
  local io_gc = mt.__gc
  mt.__gc = function(f)
    io_gc(f)
    if #hoard < 16 then -- at most 64 MB
      local ok, s = pcall(string.rep, "x", 4 * 1024 * 1024)
      if ok then hoard[#hoard + 1] = s end
    end
  end
end
local doc = "[" .. string.rep("[],", 2000) .. "[]]"
return {
  on_message = function(conn, text)
    local rounds = tonumber(text:match("^fin (%d+)$"))
    for _ = 1, rounds do
      for _ = 1, 50 do io.open("/dev/null") end
      cjson.decode(doc)
    end
    conn:send("fin got=" .. #hoard)
  end,
}
