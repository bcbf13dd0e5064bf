-- examples/echo.lua — the smallest policy: every message comes back as it was sent.
--
--   build/statushost examples/echo.lua
--   (browser console)  ws = new WebSocket("ws://127.0.0.1:9999/");
--                      ws.onmessage = e => console.log(e.data); ws.onopen = () => ws.send("hi")
local host = require "statushost"

return {
  config = { listen = "127.0.0.1:9999" },

  on_open = function(conn)
    host.log.info("echo: open from", conn.peer)
  end,

  -- text comes back as text
  on_message = function(conn, text)
    conn:send(text)
  end,

  -- binary comes back as binary (without this hook, binary frames close 1003)
  on_binary = function(conn, data)
    conn:send(data, "binary")
  end,
}
