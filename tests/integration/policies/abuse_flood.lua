-- abuse_flood.lua — for tests/integration/test_abuse.py: echoes text, and on the
-- text message "flood" pushes 64 KiB messages at the client (up to 2000, one per
-- loop turn) until conn:send fails, i.e. until the server has closed the
-- connection (a client that never reads: 1008 "slow consumer").
local host = require "statushost"

local chunk = string.rep("x", 64 * 1024)

return {
  -- trivial open/close hooks, so connection churn also runs Lua tasks
  on_open = function(conn)
    conn.state.opened = host.now()
  end,

  on_close = function(conn)
    conn.state.opened = nil
  end,

  on_message = function(conn, text)
    if text ~= "flood" then
      conn:send(text)
      return
    end
    host.spawn(function()
      local sent = 0
      for _ = 1, 2000 do
        if not conn:send(chunk) then break end
        sent = sent + 1
        host.sleep(0)
      end
      host.log.info("flood: sent", sent, "messages of 64 KiB")
    end)
  end,
}
