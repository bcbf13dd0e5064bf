-- ops_label_metric.lua — counts messages by their text (a label value the client chooses)
-- and echoes "ok"; binary messages count under their bytes too.
local host = require("statushost")
host.metrics.define("ops_msgs", "counter", "messages by text", {"text"})
host.metrics.define("ops_sizes", "histogram", "message sizes by text", {"text"})
local function count(conn, data)
  host.metrics.inc("ops_msgs", 1, {text = data})
  host.metrics.observe("ops_sizes", #data, {text = data})
  conn:send("ok")
end
return {on_message = count, on_binary = count}
