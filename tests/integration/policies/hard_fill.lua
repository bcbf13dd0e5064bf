-- "fill_sub N": fill the Lua heap up to lua_max_memory, then call host.subscribe N times
-- (each fails: "not enough memory"), free the heap and answer "done <failures>".
-- "fill_timer N": the same with host.timer. test_hardening.py checks that the failed
-- calls left no C memory behind.
local host = require "statushost"

local function fill()
  -- every allocation here is in a pcall: outside, with the heap full, the hook would raise
  local keep = host.table_new(30000, 0) -- its slots are taken now: filling it allocates no more
  local n, size, i = 0, 0, 0
  local function add_long() n = n + 1; keep[n] = string.rep("x", size) end -- long strings: each new
  local function add_short() i = i + 1; n = n + 1; keep[n] = tostring(i) end -- interned: new content
  for _, s in ipairs{ 1000000, 100000, 10000, 1000, 100, 41 } do
    size = s
    while n < 30000 and pcall(add_long) do end
  end
  while n < 30000 and pcall(add_short) do end -- the last bytes
  return keep
end

return {
  on_message = function(conn, text)
    local what, count = text:match("^(%S+) (%d+)$")
    count = tonumber(count)
    local keep = fill()
    local failed = 0
    for _ = 1, count do
      local ok
      if what == "fill_sub" then
        ok = pcall(host.subscribe, "hard:fill", print)
      else
        ok = pcall(host.timer, 60000, print)
      end
      if not ok then failed = failed + 1 end
    end
    keep = nil -- luacheck: ignore
    collectgarbage()
    conn:send("done " .. failed)
  end,
}
