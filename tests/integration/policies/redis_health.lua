-- test_redis_health.py: "sub <channel>" subscribes (answers "subscribed <channel>" or
-- "error <err>"); "call <word> ..." runs host.redis.call with the words (answers
-- "reply <value>" or "error <err>"); every message on a subscribed channel comes back
-- as "<channel>|<payload>".
local host = require "statushost"

return {
  on_message = function(conn, text)
    local verb, rest = text:match("^(%S+) (.+)$")
    if verb == "sub" then
      local ok, err = conn:subscribe(rest)
      conn:send(ok and ("subscribed " .. rest) or ("error " .. tostring(err)))
    elseif verb == "call" then
      local args = {}
      for w in rest:gmatch("%S+") do args[#args + 1] = w end
      local r, err = host.redis.call(table.unpack(args))
      conn:send(r ~= nil and ("reply " .. tostring(r)) or ("error " .. tostring(err)))
    end
  end,
  on_publish = function(conn, channel, payload)
    conn:send(channel .. "|" .. payload)
  end,
}
