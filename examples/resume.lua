-- examples/resume.lua — the default status sync, plus resume (the seed's "data sync"):
-- a client that reconnects with its job id gets the current state of every task, then
-- the live updates.
--
--   build/statushost --set remote_url=http://127.0.0.1:9101/remote/message examples/resume.lua
--
-- On the wire, compared with scripts/default.lua:
--   - when a job starts, the first frame is its id:   {"job":"<id>"}
--     (the connection id the job started on: its updates go to ws:fid:<id>)
--   - a client that left (page reload, network) reconnects to
--         ws://127.0.0.1:9999/?resume=<id>
--     and gets one frame per task, in batch order, with its current status (the last
--     update the remote published for it, verbatim, or the task as first sent), then
--     the live updates, then close 1000 when every task is done; 4408 with a "timeout"
--     error if the job's deadline (job_timeout_ms after it started) passes first.
--   - an unknown or expired id: {"error":"unknown_job","message":…}, close 4404.
--
-- How:
--   - The job runs in a task owned by no connection (host.detach), so its dispatch, whose
--     POST stays pending while the remote works, is not cancelled when the client leaves.
--   - A subscription of the process (host.subscribe, started from a detached task so that
--     it and its timer outlive the connection) records every update in Redis:
--         job:<id>        hash: task id → the last update published for it
--         job:<id>:meta   {"deadline":<unix seconds>,"tasks":[…the batch…]}
--     It stops when every task is done or at the deadline; both keys expire resume_keep_s
--     after the deadline (SET … PXAT: Redis 6.2 or later).
--   - A resuming client subscribes first and waits for Redis to confirm, then reads the
--     keys: an update published meanwhile reaches it live (held until the snapshot is
--     out, and skipped if the snapshot already said the same). Within one statushost
--     process nothing is lost: an update the subscription missed was recorded before
--     the keys are read. (With several processes, a resume landing on another process
--     than the job's has a window of a Redis round trip where an update can be missed.)

local host = require "statushost"
local json = require "cjson.safe"

local here = debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or "."
local policy = dofile(here .. "/../scripts/default.lua")
local base_message, base_publish = policy.on_message, policy.on_publish

policy.config.resume_keep_s = 600 -- how long a job's state stays readable after its deadline

local cfg = host.config

-- A task id as default.lua keys job.tasks: a string (7 and 7.0 are "7").
local function task_key(id)
  if math.type(id) == "float" and id == math.floor(id) then id = math.tointeger(id) end
  return id ~= nil and tostring(id) or nil
end

-- An update's decoded table and its task key.
local function decode(payload)
  local update = json.decode(payload)
  return update, type(update) == "table" and task_key(update.id) or nil
end

local done_status -- set of cfg.done_statuses
local function is_done(update)
  if not done_status then
    done_status = {}
    for _, s in ipairs(cfg.done_statuses) do done_status[s] = true end
  end
  return type(update) == "table" and done_status[update.status] == true
end

-- ------------------------------------------------------------ recording

-- Record every update of job `id` (runs detached: it outlives the connection).
local function record(id, job)
  local key = "job:" .. id
  local deadline = host.now() + cfg.job_timeout_ms / 1000
  local expire_at = math.floor((deadline + cfg.resume_keep_s) * 1000) -- Unix ms, for PXAT
  local done, ndone, sub, timer, stopped = {}, 0, nil, nil, false
  local function stop_recording(why)
    if stopped then return end
    stopped = true
    if sub then sub:unsubscribe() end
    if timer then timer:cancel() end
    host.log.info("resume: stopped recording job", id, why)
  end
  -- save the batch, in a task of its own so that the SET goes out now, with the SUBSCRIBE
  host.spawn(function()
    local meta = ('{"deadline":%.3f,"tasks":%s}'):format(deadline, job.text)
    local ok, err = host.redis.call("SET", key .. ":meta", meta, "PXAT", expire_at)
    if not ok then host.log.warn("resume: could not save job", id, err) end
  end)
  local err
  sub, err = host.subscribe(job.channel, function(_, payload)
    local update, tid = decode(payload)
    if not tid or not job.tasks[tid] then return end
    -- each callback sends its HSET before its first wait, so in the order updates came
    local ok, why = host.redis.call("HSET", key, tid, payload)
    if ok then ok, why = host.redis.call("PEXPIREAT", key, expire_at) end
    if not ok then host.log.warn("resume: could not record job", id, why) end
    if is_done(update) and not done[tid] then
      done[tid], ndone = true, ndone + 1
      if ndone == job.n then stop_recording("(all tasks done)") end
    end
  end)
  if not sub then return host.log.warn("resume: cannot record job", id, err) end
  timer = host.timer(cfg.job_timeout_ms, stop_recording, "(deadline)")
  host.log.info("resume: recording job", id)
end

policy.on_message = function(conn, text)
  if conn.state.job then return base_message(conn, text) end -- "busy"
  -- host.detach runs the default flow now, until its first wait (conn:subscribe), in a
  -- task that is not cancelled when this connection closes; by then it has validated
  -- the batch and set conn.state.job (or answered invalid_message).
  host.detach(base_message, conn, text)
  local job = conn.state.job
  if not job or job.finished then return end
  local id = conn.id
  host.detach(record, id, job) -- saves the batch and subscribes, now: before any dispatch
  conn:send(json.encode { job = id })
end

-- ------------------------------------------------------------ resuming

-- End a resumed job that default.lua's flow will not end (its finish() is local to it):
-- leave the channel, send the error frame if any, close.
local function end_resumed(conn, job, code, reason, err, message, extra)
  job.finished = true
  if job.timer then job.timer:cancel() end
  conn:unsubscribe(job.channel)
  conn.state.job, conn.state.held = nil, nil
  if err then
    local frame = { error = err, message = message }
    for k, v in pairs(extra or {}) do frame[k] = v end
    conn:send(json.encode(frame))
  end
  host.log.info("resume:", reason)
  conn:close(code, reason)
end

local function timeout(conn, job)
  if job.finished then return end
  local pending = {}
  for _, tid in ipairs(job.order) do
    if not job.done[tid] then pending[#pending + 1] = tid end
  end
  end_resumed(conn, job, 4408, "job timeout", "timeout",
    ("%d of %d tasks not done by the job's deadline"):format(#pending, job.n), { pending = pending })
end

local function resume(conn, id)
  -- the job table default.lua's on_publish works with, filled from Redis below
  local job = { channel = cfg.channel_prefix .. id, tasks = {}, order = {}, n = 0, ndone = 0,
                done = {}, sent = {} }
  conn.state.job = job -- a batch sent on this connection is answered "busy"
  conn.state.held = {} -- live updates that arrive before the snapshot is out
  if #id > 128 or not id:match("^[%w_%-]+$") then
    return end_resumed(conn, job, 4404, "unknown job", "unknown_job", "not a job id")
  end
  -- 1. subscribe, and wait for Redis to confirm: from now on every update reaches us
  local ok = conn:subscribe(job.channel)
  -- 2. then read what was recorded before
  local meta, last
  if ok then meta = host.redis.call("GET", "job:" .. id .. ":meta") end
  if meta == host.null then
    return end_resumed(conn, job, 4404, "unknown job", "unknown_job", "no job " .. id .. " (unknown or expired)")
  end
  if meta then last = host.redis.call("HGETALL", "job:" .. id) end
  if not conn:is_open() then return end
  if not last then
    return end_resumed(conn, job, 1013, "redis unavailable", "unavailable", "redis unavailable")
  end
  meta = json.decode(meta)
  local current = {}
  for i = 1, #last, 2 do current[last[i]] = last[i + 1] end
  -- 3. the snapshot: one frame per task, in batch order
  for i, task in ipairs(meta.tasks) do
    local tid = task_key(task.id)
    local payload = current[tid]
      or ('{"id":%s,"status":%s}'):format(json.encode(task.id), json.encode(task.status or "pending"))
    job.tasks[tid], job.order[i], job.n, job.sent[tid] = task, tid, i, payload
    conn:send(payload)
    if is_done(json.decode(payload)) and not job.done[tid] then
      job.done[tid], job.ndone = true, job.ndone + 1
    end
  end
  host.log.info("resume: job", id, ("%d/%d tasks done"):format(job.ndone, job.n))
  if job.ndone == job.n then return end_resumed(conn, job, 1000, "done") end
  local left = meta.deadline - host.now()
  if left <= 0 then return timeout(conn, job) end
  job.timer = host.timer(left * 1000, timeout, conn, job) -- default.lua cancels it when done
  -- 4. the updates held meanwhile, then live ones as they come
  local held = conn.state.held
  conn.state.held = nil
  for _, payload in ipairs(held) do policy.on_publish(conn, job.channel, payload) end
end

policy.on_open = function(conn)
  local id = ("&" .. (conn.request.query or "")):match("&resume=([^&]*)")
  if id then resume(conn, id) end
end

policy.on_publish = function(conn, channel, payload)
  local held = conn.state.held
  if held then held[#held + 1] = payload; return end
  local job = conn.state.job
  if job and job.sent then -- a resumed job: skip what the snapshot already said
    local _, tid = decode(payload)
    if tid and job.sent[tid] == payload then return end
  end
  base_publish(conn, channel, payload)
end

return policy
