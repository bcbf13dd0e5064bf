-- hard_cap.lua — F9: every message waits a minute; max_tasks_per_conn is 4
-- (set here, in the config table, so an older binary that does not know the
-- key still starts and shows what it does without the cap).
local host = require "statushost"

return {
  config = { max_tasks_per_conn = 4 },
  on_message = function(conn, text)
    if text == "echo" then return conn:send("echo") end
    host.sleep(60000)
  end,
}
