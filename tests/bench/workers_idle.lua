-- tests/bench/workers_idle.lua — the idle-connection benchmark's policy
-- (tests/bench/workers_idle.py): a client sends a name; the connection subscribes to
-- "idle:<name>", waits for Redis to confirm, answers "subscribed", then idles. What is
-- published on the channel reaches the client as is (no on_publish hook).
local host = require "statushost"

return {
  on_message = function(conn, text)
    if conn.state.subscribed then return end
    conn.state.subscribed = true
    local ok, err = conn:subscribe("idle:" .. text)
    conn:send(ok and "subscribed" or ("error " .. tostring(err)))
  end,
}
