-- lifecycle.lua — logs on_open and on_close (with the code and reason the
-- hook receives); "close:<code>:<reason>" makes the server close with that
-- code; anything else is echoed.
local host = require "statushost"

return {
  on_open = function(conn)
    host.log.info("lifecycle: open", conn.id)
  end,
  on_message = function(conn, text)
    local code, reason = text:match("^close:(%d+):(.*)$")
    if code then
      local ok, err = conn:close(tonumber(code), reason)
      host.log.info("lifecycle: conn:close ->", tostring(ok), tostring(err))
      local sent, why = conn:send("after close")
      host.log.info("lifecycle: send after close ->", tostring(sent), tostring(why))
      return
    end
    conn:send(text)
  end,
  on_close = function(conn, code, reason)
    host.log.info(string.format("lifecycle: on_close %s code=%s reason=[%s]",
                                conn.id, tostring(code), tostring(reason)))
  end,
}
