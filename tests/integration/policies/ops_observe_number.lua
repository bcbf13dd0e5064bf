-- ops_observe_number.lua — observes the number a client sends (tonumber of its text:
-- "1e999" is +inf) in a histogram and in the dispatch histogram; answers "ok".
local host = require("statushost")
host.metrics.define("ops_reported_seconds", "histogram", "seconds the client reported")
return {
  on_message = function(conn, text)
    local v = tonumber(text)
    if v then
      host.metrics.observe("ops_reported_seconds", v)
      host.metrics.observe_dispatch(v)
    end
    conn:send("ok")
  end,
}
