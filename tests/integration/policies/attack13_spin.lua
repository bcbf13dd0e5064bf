-- attack13_spin.lua — "spin" logs "spin: start" and keeps the loop busy for
-- 300 ms (so what a client sends meanwhile waits whole in the socket); every
-- message is answered "re:<first 8 bytes>".
local host = require "statushost"

return {
  config = { lua_max_instructions = 2000000000 },
  on_message = function(conn, text)
    if text == "spin" then
      host.log.info("spin: start")
      local t = os.clock()
      while os.clock() - t < 0.3 do end
    end
    conn:send("re:" .. text:sub(1, 8))
  end,
}
