-- test_attack_policy.py: timers and tasks started inside a coroutine of the policy's own
-- (coroutine.wrap, as iterator helpers use) belong to the hook's connection.
local host = require "statushost"
return {
  on_message = function(conn, text)
    coroutine.wrap(function()
      host.log.warn("inside the wrap")
      host.timer(200, function() host.log.warn("wrapped timer fired") end)
      host.spawn(function()
        local ok, err = host.sleep(400)
        host.log.warn("wrapped task woke: " .. tostring(ok) .. " " .. tostring(err))
      end)
    end)()
    host.detach(function() host.sleep(700) host.log.warn("marker") end)
    conn:close()
  end,
}
