-- hard_coro.lua — F1: a hook's coroutine is the host's.
--   "save"    keeps coroutine.running() and sleeps 400 ms, then answers
--             "slept:<ok>:<err>"
--   "resume"  coroutine.resume(saved) under pcall → "resume:<pcall ok>:<a>:<b>"
--   "close"   coroutine.close(saved) under pcall → "close:<pcall ok>:<a>:<b>"
local host = require "statushost"

local saved

return {
  on_message = function(conn, text)
    if text == "save" then
      saved = coroutine.running()
      host.log.info("hard: saved the coroutine, sleeping")
      local ok, err = host.sleep(400)
      conn:send("slept:" .. tostring(ok) .. ":" .. tostring(err))
    elseif text == "resume" or text == "close" then
      local ok, a, b = pcall(coroutine[text], saved)
      conn:send(text .. ":" .. tostring(ok) .. ":" .. tostring(a) .. ":" .. tostring(b))
    else
      conn:send(text)
    end
  end,
}
