-- versioned.lua — a template for the SIGHUP test: the test copies it and
-- replaces VERSION; every message comes back as "VERSION:<text>".
local version = "VERSION"
return {
  on_message = function(conn, text)
    conn:send(version .. ":" .. text)
  end,
}
