-- attack13_hsub.lua — test_attack13_redis.py: any text makes a process subscription to
-- "burst" (answers "subscribed" or "error <err>") whose callback waits a minute per
-- message, as one waiting on Redis or a remote would when they are slow.
local host = require "statushost"

return {
  on_message = function(conn, text)
    local h, err = host.subscribe("burst", function() host.sleep(60000) end)
    conn:send(h and "subscribed" or ("error " .. tostring(err)))
  end,
}
