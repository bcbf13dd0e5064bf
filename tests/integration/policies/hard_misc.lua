-- hard_misc.lua — F20 and API errors:
--   "sethook"     pcall(debug.sethook) → "sethook:<ok>:<err>"
--   "unhook_loop" removes the hook as far as it can, then while true do end
--   "send_noarg"  conn:send()       (raises: conn:send: bad argument #1)
--   "sleep_x"     host.sleep("x")   (raises: host.sleep: bad argument #1)
--   "fresh_cos"   a loop of fresh coroutines, each busy for a while, errors caught
--   "wrap_loop"   an endless loop inside coroutine.wrap, the error caught, then looping on
--   "resume_loop" an endless loop inside coroutine.resume, then looping on
--   else          echo
local host = require "statushost"

return {
  on_message = function(conn, text)
    if text == "sethook" then
      local ok, err = pcall(debug.sethook)
      conn:send("sethook:" .. tostring(ok) .. ":" .. tostring(err))
    elseif text == "unhook_loop" then
      pcall(debug.sethook)
      pcall(debug.sethook, coroutine.running())
      pcall(debug.sethook, function() end, "", 0)
      host.log.info("hard: looping without a hook")
      while true do end
    elseif text == "send_noarg" then
      conn:send()
    elseif text == "sleep_x" then
      host.sleep("x")
    elseif text == "fresh_cos" then
      while true do pcall(coroutine.wrap(function() for _ = 1, 1e6 do end end)) end
    elseif text == "wrap_loop" then
      pcall(coroutine.wrap(function() while true do end end))
      while true do end
    elseif text == "resume_loop" then
      local co = coroutine.create(function() while true do end end)
      coroutine.resume(co)
      while true do pcall(coroutine.resume, coroutine.create(function() end)) end
    else
      conn:send(text)
    end
  end,
}
