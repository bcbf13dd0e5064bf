-- test_attack13_policy.py: conn:track misused; each message answers the error of one call.
local cases = {
  function(conn) return conn:track({}, {}, nil) end,
  function(conn) return conn:track("job", {}, function() end) end,
  function(conn) return conn:track({}, 5, function() end) end,
}
return {
  on_message = function(conn, text)
    local ok, err = pcall(cases[tonumber(text)], conn)
    conn:send(tostring(ok) .. " " .. tostring(err))
  end,
  on_publish = function() end,
}
