-- versioned.lua — a template for the SIGHUP test: the test copies it and
-- replaces VERSION; every message comes back as "VERSION:<text>", but
-- "exiting?", answered with "VERSION:exiting=<host.exiting()>".
local host = require "statushost"
local version = "VERSION"
return {
  on_message = function(conn, text)
    if text == "exiting?" then text = "exiting=" .. tostring(host.exiting()) end
    conn:send(version .. ":" .. text)
  end,
  on_close = function(conn, code)
    host.log.info(version, "closed", code, "exiting=" .. tostring(host.exiting()))
  end,
}
