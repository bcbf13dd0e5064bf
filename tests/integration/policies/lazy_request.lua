-- lazy_request.lua — no on_handshake: statushost keeps the upgrade request compact in C
-- and makes conn.request when first read. "req" answers what the request table holds;
-- any other text is echoed; on_close logs "lazy: on_close <path> <x-probe header>".
local host = require "statushost"
return {
  on_message = function(conn, text)
    if text ~= "req" then return conn:send(text) end
    local r = conn.request
    conn:send(table.concat({ r.method, r.path, r.query, r.target, r.headers["x-probe"] or "-",
      conn.ip, r.client_ip, r.peer == conn.peer and "peer" or "?", tostring(conn.request == r) }, " "))
  end,
  on_close = function(conn)
    local r = conn.request
    host.log.info("lazy: on_close", r and r.path or "nil", r and r.headers["x-probe"] or "nil")
  end,
}
