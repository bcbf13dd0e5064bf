-- ops_log_long.lua — test_workers.py: "<letter> <n>" logs n lines of 10 KiB, each
-- "long <letter> <i> <letter x 10240>", yielding a millisecond between lines, then
-- answers "done <conn.id>" (its first 16 characters name the worker's instance).
local host = require("statushost")
return {
  on_message = function(conn, text)
    local letter, n = text:match("^(%a) (%d+)$")
    local body = string.rep(letter, 10240)
    for i = 1, tonumber(n) do
      host.log.info("long", letter, i, body)
      host.sleep(1)
    end
    conn:send("done " .. conn.id)
  end,
}
