-- hard_pubsub.lua — F12, subscriptions and on_close: on_open subscribes to
-- "hard:<path without the slash>" and sends "subscribed"; no on_publish, so
-- payloads go to the client as they are; on_close logs
-- "hard: on_close <code> <reason>"; text is echoed.
local host = require "statushost"

return {
  on_open = function(conn)
    local ch = "hard:" .. conn.request.path:sub(2)
    local ok, err = conn:subscribe(ch)
    conn:send(ok and "subscribed" or ("subscribe failed: " .. tostring(err)))
  end,
  on_message = function(conn, text) conn:send(text) end,
  on_close = function(conn, code, reason)
    host.log.info("hard: on_close", tostring(code), tostring(reason))
  end,
}
