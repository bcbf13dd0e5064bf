-- waits.lua — host.sleep and host.timer:
--   "long"    sleeps 60 s, then logs how the sleep ended (a client that leaves
--             ends it at once with nil, "closed")
--   "timers"  starts timer A (40 ms) and cancels it, starts timer B (80 ms);
--             answers "cancel:<first cancel>,<second cancel>", then B sends "B"
--             (A, had it fired, would have sent "A" first)
--   anything else: host.sleep(50), then "slept:<text>"
local host = require "statushost"

return {
  on_message = function(conn, text)
    if text == "long" then
      host.log.info("waits: sleeping long")
      local ok, err = host.sleep(60000)
      host.log.info("waits: long sleep ended:", tostring(ok), tostring(err))
      return
    end
    if text == "timers" then
      local a = host.timer(40, function() conn:send("A") end)
      host.timer(80, function(tag) conn:send(tag) end, "B")
      local first = a:cancel()
      local second = a:cancel()
      conn:send("cancel:" .. tostring(first) .. "," .. tostring(second))
      return
    end
    local t0 = host.now()
    local ok = host.sleep(50)
    local waited = host.now() - t0
    conn:send(string.format("slept:%s:%s:%d", text, tostring(ok), math.floor(waited * 1000)))
  end,
}
