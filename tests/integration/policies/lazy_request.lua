-- lazy_request.lua — no on_handshake: statushost keeps the upgrade request compact in C
-- and makes conn.request when first read. "req" answers what the request table holds;
-- any other text is echoed; on_close logs "lazy: on_close <path> <x-probe header>".
-- "keep" keeps the conn (answers "kept <id> <peer>"): GET /late answers its request, ip, id
-- and peer, read only after it is gone.
local host = require "statushost"
local kept
return {
  routes = {
    ["GET /late"] = function()
      if not kept then return 404, "none" end
      local r = kept.request
      return 200, table.concat({ tostring(kept:is_open()), r.path, r.headers["x-probe"] or "-",
        kept.ip, r.client_ip, tostring(kept.request == r), kept.id, kept.peer }, " ")
    end,
  },
  on_message = function(conn, text)
    if text == "keep" then kept = conn; return conn:send("kept " .. conn.id .. " " .. conn.peer) end
    if text ~= "req" then return conn:send(text) end
    local r = conn.request
    conn:send(table.concat({ r.method, r.path, r.query, r.target, r.headers["x-probe"] or "-",
      conn.ip, r.client_ip, r.peer == conn.peer and "peer" or "?", tostring(conn.request == r) }, " "))
  end,
  on_close = function(conn)
    if conn == kept then return host.log.info("lazy: on_close kept") end
    local r = conn.request
    host.log.info("lazy: on_close", r and r.path or "nil", r and r.headers["x-probe"] or "nil")
  end,
}
