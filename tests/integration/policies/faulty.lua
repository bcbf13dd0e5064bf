-- faulty.lua — echoes text, except:
--   "boom"  raises a Lua error (→ 1011, traceback in the log)
--   "loop"  never returns (→ over lua_max_instructions → 1011)
--   "loop_pcall"  never returns and catches every error it can: the budget
--           must still end it (→ 1011)
local host = require "statushost"

local function explode(what)
  error("boom requested by the client: " .. what)
end

return {
  on_message = function(conn, text)
    if text == "boom" then
      explode(text)
    elseif text == "loop" then
      host.log.info("faulty: entering an endless loop")
      while true do end
    elseif text == "loop_pcall" then
      host.log.info("faulty: entering an endless loop that catches errors")
      while true do
        pcall(function() while true do end end)
      end
    end
    conn:send(text)
  end,
}
