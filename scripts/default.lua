-- scripts/default.lua — the seed's status sync, as policy on statushost's primitives.
--
-- A browser sends a batch of tasks; we subscribe to ws:fid:<conn.id>, wait for Redis to
-- confirm, POST the batch to the remote, forward each update the remote publishes, and
-- close 1000 when every task is done. Wire-compatible with the seed's page and remote.
--
-- The four decisions are the short functions at the top: edit them to change the policy.
-- Every key of `config` below can be overridden with --set KEY=VALUE.

local host = require "statushost"
local json = require "cjson.safe"

local config = {
  listen = "127.0.0.1:9999",
  remote_url = "http://127.0.0.1:9101/remote/message", -- where batches are POSTed
  channel_prefix = "ws:fid:",      -- updates arrive on <prefix><conn.id>
  max_tasks = 1000,                -- tasks per batch
  max_id_bytes = 256,              -- length of a task id
  done_statuses = { "已完成", "done", "completed" }, -- a task with one of these is done
  job_timeout_ms = 120000,         -- the whole job, dispatch included
  dispatch_retries = 0,            -- extra POST attempts after a refusal or a 5xx
  close_when_done = true,          -- close 1000 when the job completes (the seed does)
}

local cfg = host.config -- the merged config (defaults ← script ← --set); filled once this file returns

-- ---------------------------------------------------------------- decisions

-- validate: is `text` a batch we accept? → job | nil, "why"
local function validate(text)
  local batch = json.decode(text)
  if type(batch) ~= "table" then return nil, "not a JSON array" end
  local n = #batch
  if n == 0 then return nil, "expected a non-empty JSON array of tasks" end
  if next(batch, n) ~= nil or batch[n + 1] ~= nil then return nil, "not a JSON array" end
  for k in pairs(batch) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return nil, "not a JSON array" end
  end
  if n > cfg.max_tasks then return nil, ("too many tasks: %d (max %d)"):format(n, cfg.max_tasks) end
  local job = { tasks = {}, order = {}, n = n, ndone = 0, done = {} }
  for i, task in ipairs(batch) do
    if type(task) ~= "table" then return nil, ("task %d is not an object"):format(i) end
    local id = task.id
    if math.type(id) == "float" and id == math.floor(id) and math.abs(id) < 2^53 then
      id = math.tointeger(id)
    end
    if math.type(id) == "integer" then
      id = tostring(id)
    elseif type(id) ~= "string" or #id == 0 or #id > cfg.max_id_bytes then
      return nil, ("task %d: id must be a non-empty string or an integer"):format(i)
    end
    if job.tasks[id] then return nil, ("task %d: duplicate id %s"):format(i, id) end
    if task.status ~= nil and type(task.status) ~= "string" then
      return nil, ("task %d: status must be a string"):format(i)
    end
    job.tasks[id] = task
    job.order[i] = id
  end
  job.text = text
  return job
end

-- dispatch: hand the batch to the remote. → true | nil, "why"
-- The seed's remote answers only when the whole job is done, so this may wait as long
-- as the job; updates are forwarded meanwhile by on_publish.
local function dispatch(conn, job)
  local body = '{"data":' .. job.text .. ',"fid":' .. json.encode(conn.id) .. '}'
  local why
  for attempt = 0, cfg.dispatch_retries do
    local started = host.now()
    local res, err = host.http.request {
      method = "POST", url = cfg.remote_url, body = body,
      headers = { ["Content-Type"] = "application/json" },
      timeout_ms = cfg.job_timeout_ms,
    }
    if res then host.metrics.observe_dispatch(host.now() - started) end
    if res and res.status >= 200 and res.status < 300 then return true end
    why = res and ("remote answered " .. res.status) or err
    if not conn:is_open() or (res and res.status < 500) or err == "timeout" then break end
  end
  return nil, why
end

-- is_complete: count `update` (already known to belong to the job) and say whether
-- every task of the job is now done.
local done_status -- set of cfg.done_statuses, built on first use
local function is_complete(job, id, update)
  if not done_status then
    done_status = {}
    for _, s in ipairs(cfg.done_statuses) do done_status[s] = true end
  end
  if done_status[update.status] and not job.done[id] then
    job.done[id] = true
    job.ndone = job.ndone + 1
  end
  return job.ndone == job.n
end

-- close_policy: how a job that ended with `why` ends the connection.
-- → close code (nil keeps it open), reason
local function close_policy(conn, job, why)
  if why == "completed" then
    if cfg.close_when_done then return 1000, "done" end
    return nil
  elseif why == "timeout" then return 4408, "job timeout"
  elseif why == "unavailable" then return 1013, "redis unavailable"
  else return 1011, "dispatch failed" end
end

-- ---------------------------------------------------------------- mechanics

local function send_error(conn, code, message, extra)
  local frame = { error = code, message = message }
  for k, v in pairs(extra or {}) do frame[k] = v end
  conn:send(json.encode(frame))
end

local counters = {
  completed = "jobs_completed", timeout = "jobs_timed_out",
  dispatch_failed = "jobs_failed", unavailable = "jobs_failed",
}

-- End the job once: stop its timer, leave its channel, tell the client, close.
local function finish(conn, job, why, detail)
  if job.finished then return end
  job.finished = true
  if job.timer then job.timer:cancel() end
  conn:unsubscribe(job.channel)
  if conn.state.job == job then conn.state.job = nil end
  host.metrics.inc(counters[why] or "jobs_failed")
  if why == "timeout" then
    local pending = {}
    for _, id in ipairs(job.order) do
      if not job.done[id] then pending[#pending + 1] = id end
    end
    send_error(conn, "timeout", ("%d of %d tasks not done within %d ms"):format(
      #pending, job.n, cfg.job_timeout_ms), { pending = pending })
  elseif why ~= "completed" then
    send_error(conn, why, detail or why)
  end
  host.log.info("job", why, ("%d/%d tasks done"):format(job.ndone, job.n), detail or "")
  local code, reason = close_policy(conn, job, why)
  if code then conn:close(code, reason) end
end

return {
  config = config,

  on_message = function(conn, text)
    if conn.state.job then
      return send_error(conn, "busy", "a job is already running on this connection")
    end
    local job, why = validate(text)
    if not job then return send_error(conn, "invalid_message", why) end
    conn.state.job = job
    job.channel = cfg.channel_prefix .. conn.id
    -- subscribe first, and wait for Redis to confirm: no update can be lost
    local ok = conn:subscribe(job.channel)
    if not ok then
      if conn:is_open() then finish(conn, job, "unavailable", "redis unavailable") end
      return
    end
    host.metrics.inc("jobs_started")
    job.timer = host.timer(cfg.job_timeout_ms, function() finish(conn, job, "timeout") end)
    local sent, failure = dispatch(conn, job)
    if not sent and not job.finished and conn:is_open() then
      finish(conn, job, "dispatch_failed", failure)
    end
  end,

  on_publish = function(conn, channel, payload)
    local job = conn.state.job
    if not job or job.finished or channel ~= job.channel then return end
    local update = json.decode(payload)
    local id = type(update) == "table" and update.id
    if math.type(id) == "float" and id == math.floor(id) then id = math.tointeger(id) end
    id = id and tostring(id)
    if not id or not job.tasks[id] then
      host.log.warn("dropped an update that is not for this job:", payload:sub(1, 200))
      return
    end
    conn:send(payload) -- verbatim
    if is_complete(job, id, update) then finish(conn, job, "completed") end
  end,

  on_close = function(conn, code)
    local job = conn.state.job
    if job and not job.finished then
      job.finished = true
      host.log.info("client left mid-job", ("(%d/%d tasks done), close %d"):format(job.ndone, job.n, code))
    end
  end,
}
