-- tests/integration/workers/examples_worker.lua — a remote with per-task behaviour chosen
-- by the task id, for tests/integration/test_examples.py:
--   id "ok…"     done at once
--   id "late…"   done after late_ms
--   any other    never done
--
--   build/statushost --listen 127.0.0.1:0 --set late_ms=500 tests/integration/workers/examples_worker.lua
--
-- POST /remote/message with {"data":[…],"fid":"…"}; answers 200 once every "ok"/"late"
-- task is published (503 if the POST is cancelled first). Log lines tests await:
-- "job for <channel> <n> tasks", "published <id> on <channel>".

local host = require "statushost"
local json = require "cjson.safe"

local config = {
  listen = "127.0.0.1:9103",
  late_ms = 500,
  channel_prefix = "ws:fid:",
  done_status = "已完成",
}
local cfg = host.config

local function publish(channel, task)
  local payload = '{"id":' .. json.encode(task.id) .. ',"status":' .. json.encode(cfg.done_status) .. '}'
  local n, err = host.redis.call("PUBLISH", channel, payload)
  if not n then return host.log.warn("publish failed:", err) end
  host.log.info("published", tostring(task.id), "on", channel)
end

return {
  config = config,
  routes = {
    ["POST /remote/message"] = function(req)
      local body = json.decode(req.body)
      if type(body) ~= "table" or type(body.data) ~= "table" or body.fid == nil then
        return 400, "bad body"
      end
      local channel = cfg.channel_prefix .. tostring(body.fid)
      host.log.info("job for", channel, #body.data, "tasks")
      local late = {}
      for _, task in ipairs(body.data) do
        local id = tostring(task.id)
        if id:sub(1, 2) == "ok" then publish(channel, task)
        elseif id:sub(1, 4) == "late" then late[#late + 1] = task end
      end
      if #late > 0 then
        if not host.sleep(cfg.late_ms) then return 503, "cancelled" end
        for _, task in ipairs(late) do publish(channel, task) end
      end
      return 200, '{"status":0,"msg":"success","data":null}', { ["Content-Type"] = "application/json" }
    end,
  },
}
