-- hard_leak.lua — F10: "leak" keeps 24 more MB in conn.state per message and
-- answers "held <n>"; anything else is echoed. lua_max_memory is 64 MiB (in
-- the config table, so an older binary still starts).
local host = require "statushost"

return {
  config = { lua_max_memory = 67108864 },
  on_message = function(conn, text)
    if text == "leak" then
      local t = conn.state.t or {}
      conn.state.t = t
      for _ = 1, 24 do t[#t + 1] = string.rep("x", 1e6) end
      conn:send("held " .. #t)
    else
      conn:send(text)
    end
  end,
}
