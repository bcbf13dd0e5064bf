-- "sub <channel>" subscribes this connection (answers "subscribed <channel>" or the error),
-- "subn <n>" subscribes to the number n, "unsub <channel>" leaves it; every message on a
-- channel of the connection comes back as "<channel>|<payload>" with the channel as the
-- hook got it (test_hardening.py: the channel string the host keeps with a conn).
return {
  on_message = function(conn, text)
    local verb, arg = text:match("^(%S+) (.+)$")
    local ch = verb == "subn" and tonumber(arg) or arg
    if verb == "sub" or verb == "subn" then
      local ok, err = conn:subscribe(ch)
      conn:send(ok and ("subscribed " .. tostring(ch)) or ("error " .. tostring(err)))
    elseif verb == "unsub" then
      conn:send("unsubscribed " .. tostring(conn:unsubscribe(arg)))
    end
  end,
  on_publish = function(conn, channel, payload)
    conn:send(("%s|%s|%s"):format(type(channel), channel, payload))
  end,
}
