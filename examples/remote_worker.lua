-- examples/remote_worker.lua — the seed's RemoteController, on statushost itself.
--
--   build/statushost --listen 127.0.0.1:9101 examples/remote_worker.lua
--
-- POST /remote/message with {"data":[{"id":…,"status":…},…],"fid":"…"} (JSON, or the
-- seed's form encoding data[0][id]=…&fid=…). Every tick_ms each remaining task completes
-- with probability complete_probability, and {"id":…,"status":"已完成"} is published on
-- ws:fid:<fid>. Like the seed, the answer comes only when every task is done.
-- With --set immediate=true every task completes at once (for benchmarks).
--
-- With Redis Cluster (config redis_cluster, as statushost's) the updates go out with
-- SPUBLISH, on the channel's shard, where statushost SSUBSCRIBEs (a classic PUBLISH
-- is broadcast to every node and does not scale). An update that could not be
-- published (a Redis error: its master is failing over) or that reached no
-- subscriber (statushost is re-subscribing the channel on the promoted replica) is
-- published again on the next tick, up to max_republish times. With one Redis, an
-- update is published once (a publish error is retried the same way).

local host = require "statushost"
local json = require "cjson.safe"

local config = {
  listen = "127.0.0.1:9101",
  tick_ms = 500,
  complete_probability = 0.2,
  immediate = false,
  channel_prefix = "ws:fid:",
  done_status = "已完成",
  max_republish = 10,
}
local cfg = host.config

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The seed's client posts PHP-style form fields: data[0][id]=1&data[0][status]=x&fid=7
local function parse_form(body)
  local out = {}
  for pair in body:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = url_decode(k), url_decode(v)
    local node, key = out, k:match("^[^%[]+")
    if key then
      for sub in k:gmatch("%[([^%]]*)%]") do
        node[key] = node[key] or {}
        node = node[key]
        key = tonumber(sub) and math.tointeger(tonumber(sub)) + 1 or sub
      end
      node[key] = v
    end
  end
  return out
end

local function parse(req)
  local ctype = (req.headers["content-type"] or ""):lower()
  local body
  if ctype:find("application/x-www-form-urlencoded", 1, true) then
    body = parse_form(req.body)
  else
    body = json.decode(req.body)
  end
  if type(body) ~= "table" or type(body.data) ~= "table" or body.fid == nil then
    return nil
  end
  return body.data, tostring(body.fid)
end

-- Publish task's update; true when done with it (a subscriber got it, or it was
-- tried max_republish times), false to try again on the next tick.
local function publish(channel, task)
  local payload = '{"id":' .. json.encode(task.id) .. ',"status":' .. json.encode(cfg.done_status) .. '}'
  local cluster = cfg.redis_cluster ~= ""
  local n, err = host.redis.call(cluster and "SPUBLISH" or "PUBLISH", channel, payload)
  -- 0 receivers: with one Redis, nobody listens (published once, as the seed does);
  -- in a cluster, maybe a channel being re-subscribed after a failover
  if n and (n > 0 or not cluster) then return true end
  task.tries = (task.tries or 0) + 1
  if not n then host.log.warn("publish failed:", err) end
  return task.tries > cfg.max_republish
end

local ok_body = '{"status":0,"msg":"success","data":null}'
local json_type = { ["Content-Type"] = "application/json" }

return {
  config = config,
  routes = {
    ["POST /remote/message"] = function(req)
      local data, fid = parse(req)
      if not data then
        return 400, '{"status":1,"msg":"expected {\\"data\\":[…],\\"fid\\":…}","data":null}', json_type
      end
      local channel = cfg.channel_prefix .. fid
      local remaining = {}
      for _, task in ipairs(data) do
        if type(task) == "table" and task.id ~= nil then remaining[#remaining + 1] = task end
      end
      host.log.info("job for", channel, #remaining, "tasks")
      local first = true
      while #remaining > 0 do
        if not (first and cfg.immediate) and not host.sleep(cfg.tick_ms) then
          return 503, "shutting down"
        end
        first = false
        local left = {}
        for _, task in ipairs(remaining) do
          local due = task.tries or cfg.immediate or math.random() < cfg.complete_probability
          if not (due and publish(channel, task)) then left[#left + 1] = task end
        end
        remaining = left
      end
      return 200, ok_body, json_type
    end,
  },
}
