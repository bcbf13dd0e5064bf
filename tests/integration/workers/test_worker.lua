-- tests/integration/workers/test_worker.lua — a remote with scripted misbehaviour,
-- for the integration tests (the seed-like remote is examples/remote_worker.lua).
--
--   build/statushost --listen 127.0.0.1:0 --set mode=status --set status=500 \
--       tests/integration/workers/test_worker.lua
--
-- POST /remote/message with {"data":[…],"fid":"…"}; what happens depends on `mode`:
--   status   answer `status` at once, publish nothing
--   partial  publish {"id":…,"status":done_status} for the first `complete_count` tasks,
--            then never answer (until the POST is cancelled or max_ms passes)
--   drip     every tick_ms one more task (in batch order) is done; every tick republishes
--            the update of every done task so far (so updates lost while Redis was down
--            come again); never answers until the POST is cancelled or max_ms passes
-- Log lines tests can await: "job for <channel> <n> tasks", "published <k>/<n> on <channel>",
-- "post cancelled for <channel>".

local host = require "statushost"
local json = require "cjson.safe"

local config = {
  listen = "127.0.0.1:9102",
  mode = "status",
  status = 500,
  complete_count = 0,
  tick_ms = 300,
  max_ms = 60000,
  channel_prefix = "ws:fid:",
  done_status = "已完成",
}
local cfg = host.config

local function publish(channel, task)
  local payload = '{"id":' .. json.encode(task.id) .. ',"status":' .. json.encode(cfg.done_status) .. '}'
  local n, err = host.redis.call("PUBLISH", channel, payload)
  if not n then host.log.warn("publish failed:", err) end
  return n
end

-- wait until the POST is cancelled (its connection closed) or max_ms passes
local function hold(channel, started, each_tick)
  while host.now() - started < cfg.max_ms / 1000 do
    if each_tick then each_tick() end
    if not host.sleep(cfg.tick_ms) then
      host.log.info("post cancelled for", channel)
      return 503, "cancelled" -- nobody is listening any more
    end
  end
  return 504, "held too long"
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
      local tasks = body.data
      host.log.info("job for", channel, #tasks, "tasks")
      local started = host.now()
      if cfg.mode == "status" then
        return cfg.status, '{"status":1,"msg":"scripted answer","data":null}',
          { ["Content-Type"] = "application/json" }
      elseif cfg.mode == "partial" then
        local k = math.min(cfg.complete_count, #tasks)
        for i = 1, k do publish(channel, tasks[i]) end
        host.log.info("published", ("%d/%d"):format(k, #tasks), "on", channel)
        return hold(channel, started)
      elseif cfg.mode == "drip" then
        local k = 0
        return hold(channel, started, function()
          if k < #tasks then k = k + 1 end
          local ok = 0
          for i = 1, k do
            if publish(channel, tasks[i]) then ok = ok + 1 end
          end
          host.log.info("published", ("%d/%d"):format(ok, #tasks), "on", channel, "tick done", k)
        end)
      end
      return 500, "unknown mode"
    end,
  },
}
