-- tests/integration/workers/stream_worker.lua — a remote that publishes continuously, for
-- the exact-resume test (tests/integration/test_workers.py): every tick_ms, each task of
-- the batch gets its next update {"id":…,"status":"进行中","seq":k} (k = 1, 2, …), the
-- last one (k = updates) with status done_status. A client can then tell a missed update
-- (a gap in seq) from a duplicate (a seq seen twice). Answers once all are published.
--
--   build/statushost --listen 127.0.0.1:0 --set tick_ms=20 --set updates=60 \
--       tests/integration/workers/stream_worker.lua

local host = require "statushost"
local json = require "cjson.safe"

local config = {
  listen = "127.0.0.1:9104",
  tick_ms = 20,
  updates = 60,
  channel_prefix = "ws:fid:",
  done_status = "已完成",
}
local cfg = host.config

return {
  config = config,
  routes = {
    ["POST /remote/message"] = function(req)
      local body = json.decode(req.body)
      if type(body) ~= "table" or type(body.data) ~= "table" or body.fid == nil then
        return 400, "bad body"
      end
      local channel = cfg.channel_prefix .. tostring(body.fid)
      for k = 1, cfg.updates do
        if not host.sleep(cfg.tick_ms) then return 503, "cancelled" end
        local status = k == cfg.updates and cfg.done_status or "进行中"
        for _, task in ipairs(body.data) do
          local payload = ('{"id":%s,"status":%s,"seq":%d}'):format(json.encode(task.id),
                                                                    json.encode(status), k)
          local ok, err = host.redis.call("PUBLISH", channel, payload)
          if not ok then host.log.warn("publish failed:", err) end
        end
      end
      return 200, '{"status":0,"msg":"success","data":null}', { ["Content-Type"] = "application/json" }
    end,
  },
}
