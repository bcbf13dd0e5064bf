-- "argerr": the errors of cjson.decode() and cjson.safe.decode() without an argument.
local cjson, safe = require "cjson", require "cjson.safe"
return {
  on_message = function(conn, text)
    local _, e1 = pcall(cjson.decode)
    local _, e2 = pcall(safe.decode)
    conn:send(tostring(e1) .. "\n" .. tostring(e2))
  end,
}
