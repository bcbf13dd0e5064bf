-- hard_misc.lua — F20 and API errors:
--   "sethook"     pcall(debug.sethook) → "sethook:<ok>:<err>"
--   "unhook_loop" removes the hook as far as it can, then while true do end
--   "send_noarg"  conn:send()       (raises: conn:send: bad argument #1)
--   "sleep_x"     host.sleep("x")   (raises: host.sleep: bad argument #1)
--   "fresh_cos"   a loop of fresh coroutines, each busy for a while, errors caught
--   "wrap_loop"   an endless loop inside coroutine.wrap, the error caught, then looping on
--   "resume_loop" an endless loop inside coroutine.resume, then looping on
--   "self_resume" a coroutine that resumes itself in an endless loop (its errors caught)
--   "under_cos"   an endless loop of fresh coroutines, each under the budget
--   "gen_loop"    an endless loop resuming one generator that runs most of the budget each time
--   "close_loop"  coroutine.close of a coroutine whose __close loops forever
--   "wrap_close"  a wrapped coroutine that errors, its __close looping forever
--   "gen_burn"    resumes a generator G (made once): a CPU-long C call (the count starts),
--                 40,000 instructions, yield → "gen:1"
--   "gen_again"   resumes G: 70,000 instructions, yield → "gen:2"
--   "gc_loop"     a table whose __gc loops forever, then a full collection
--   "co_badarg"   the errors of coroutine.resume() and coroutine.close(1), joined by "|"
--   "decode_loop" host.json.decode of a 100 KB text in an endless loop (few VM instructions)
--   "conn_fields" getmetatable(conn), a field set and read back, a method, conn.id's type
--   else          echo
local host = require "statushost"

local G
local function burn() -- 60 ms of CPU in a few dozen instructions
  local s, t = ("a"):rep(3000), os.clock()
  while os.clock() - t < 0.06 do s:find(".-b") end
end
local function closing_forever()
  return setmetatable({}, {__close = function() while true do end end})
end

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
    elseif text == "conn_fields" then
      conn.mine = "kept"
      conn:send(("%s|%s|%s|%s|%s"):format(tostring(getmetatable(conn)), conn.mine,
        type(conn.send), type(conn.id), tostring(pcall(function() conn.id = "x" end))))
    elseif text == "decode_loop" then
      local big = "[" .. ("1,"):rep(50000) .. "1]"
      while true do host.json.decode(big) end
    elseif text == "gc_loop" then
      setmetatable({}, {__gc = function() while true do end end})
      collectgarbage()
      conn:send("collected")
    elseif text == "co_badarg" then
      local _, e1 = pcall(coroutine.resume)
      local _, e2 = pcall(coroutine.close, 1)
      conn:send(e1 .. "|" .. e2)
    elseif text == "self_resume" then
      coroutine.wrap(function()
        local me = coroutine.running()
        while true do coroutine.resume(me) end
      end)()
    elseif text == "under_cos" then
      local f = function() for _ = 1, 90000 do end end
      while true do coroutine.wrap(f)() end
    elseif text == "gen_loop" then
      local g = coroutine.wrap(function()
        while true do for _ = 1, 90000 do end coroutine.yield() end
      end)
      while true do g() end
    elseif text == "close_loop" then
      local co = coroutine.create(function()
        local x <close> = closing_forever()
        coroutine.yield(x)
      end)
      coroutine.resume(co)
      coroutine.close(co)
      conn:send("closed")
    elseif text == "wrap_close" then
      pcall(coroutine.wrap(function()
        local x <close> = closing_forever()
        error("boom " .. tostring(x))
      end))
      conn:send("closed")
    elseif text == "gen_burn" or text == "gen_again" then
      G = G or coroutine.wrap(function()
        while true do
          burn()
          for _ = 1, 40000 do end
          coroutine.yield("gen:1")
          for _ = 1, 70000 do end
          coroutine.yield("gen:2")
        end
      end)
      conn:send(G())
    else
      conn:send(text)
    end
  end,
}
