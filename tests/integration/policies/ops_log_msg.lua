-- ops_log_msg.lua — logs each client message with host.log.info, then the peer; answers "ok"
local host = require("statushost")
return {
  on_message = function(conn, text)
    host.log.info("client said:", text, "peer=" .. conn.peer)
    conn:send("ok")
  end,
  on_binary = function(conn, data)
    host.log.info("client bytes:", data, "peer=" .. conn.peer)
    conn:send("ok")
  end,
}
