-- tests/bench/fanout.lua — the fan-out policy of the benchmark (tests/bench/run.sh):
-- subscribe to ws:fid:<conn.id>, POST the batch to the remote (sh_loadgen's), then forward
-- every message published on the channel. Without a hook the host forwards each payload
-- verbatim from C; with FANOUT_HOOK=1 in the environment an on_publish hook forwards it
-- (one Lua call per message).
local host = require "statushost"
local json = require "cjson.safe"

local policy = {
  config = { remote_url = "http://127.0.0.1:9101/remote/message" },
  on_message = function(conn, text)
    if not conn:subscribe("ws:fid:" .. conn.id) then return conn:close(1013, "redis") end
    host.http.request {
      method = "POST", url = host.config.remote_url,
      body = '{"data":' .. text .. ',"fid":' .. json.encode(conn.id) .. '}',
      headers = { ["Content-Type"] = "application/json" },
    }
  end,
}
if os.getenv("FANOUT_HOOK") == "1" then
  policy.on_publish = function(conn, channel, payload) conn:send(payload) end
end
return policy
