-- attack13_psleep.lua — test_attack13_redis.py: a text subscribes the connection to that
-- channel (answers "subscribed" or "error <err>"); on_publish waits a minute per update,
-- as one waiting on Redis or a remote would when they are slow.
local host = require "statushost"

return {
  on_message = function(conn, text)
    local ok, err = conn:subscribe(text)
    conn:send(ok and "subscribed" or ("error " .. tostring(err)))
  end,
  on_publish = function() host.sleep(60000) end,
}
