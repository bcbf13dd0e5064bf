-- examples/resume.lua — the default status sync, plus resume (the seed's "data sync"):
-- a client that reconnects with its job's resume token gets the current state of every
-- task, then the live updates.
--
--   build/statushost --set remote_url=http://127.0.0.1:9101/remote/message examples/resume.lua
--
-- On the wire, compared with scripts/default.lua:
--   - when a job starts, the first frame is its resume token:   {"job":"<token>"}
--     128 random bits (32 hex characters), the one credential for reading the job. It is
--     not the connection id (fid) the job runs on: fids are a process prefix plus a
--     counter, so a neighbour's is easy to guess. The fid stays inside the server.
--   - a client that left (page reload, network) reconnects to
--         ws://127.0.0.1:9999/?resume=<token>
--     and gets one frame per task, in batch order, with its current status (the last
--     update the remote published for it, verbatim, or the task as first sent), then
--     the live updates, then close 1000 when every task is done; 4408 with a "timeout"
--     error if the job's deadline (job_timeout_ms after it started) passes first.
--   - an unknown, expired or malformed token: {"error":"unknown_job","message":…}, close 4404.
--
-- How:
--   - The job runs in a task owned by no connection (host.detach), so its dispatch, whose
--     POST stays pending while the remote works, is not cancelled when the client leaves.
--   - A subscription of the process (host.subscribe, started from a detached task so that
--     it and its timer outlive the connection) records every update in Redis:
--         job:<token>        hash: task id → the last update published for it
--         job:<token>:meta   {"deadline":<unix seconds>,"fid":"<fid>","tasks":[…the batch…]}
--     It stops when every task is done or at the deadline; both keys expire resume_keep_s
--     after the deadline (SET … PXAT: Redis 6.2 or later).
--   - A resuming client reads the meta key (the job's channel is ws:fid:<fid>), subscribes
--     and waits for Redis to confirm, then reads the hash: an update published meanwhile
--     reaches it live (held until the snapshot is out, and skipped if the snapshot
--     already said the same). Within one statushost process nothing is lost: an update
--     the subscription missed was recorded before the hash is read. (With several
--     processes, a resume landing on another process than the job's has a window of a
--     Redis round trip where an update can be missed.)
--   - Everything else is scripts/default.lua, required as a module: the snapshot's tasks
--     are counted with its is_done and keyed with its normalize_id, live updates go
--     through its on_publish, and a resumed job ends through its finish() (close_policy
--     is extended with unknown_job → 4404).

local host = require "statushost"
local json = require "cjson.safe"
local default = require "statushost.default"
local base_message, base_publish = default.on_message, default.on_publish
local base_close_policy = default.close_policy

default.config.resume_keep_s = 600 -- how long a job's state stays readable after its deadline

local cfg = host.config

default.close_policy = function(conn, job, why)
  if why == "unknown_job" then return 4404, "unknown job" end
  return base_close_policy(conn, job, why)
end

-- ------------------------------------------------------------ recording

-- Record every update of the job (runs detached: it outlives the connection).
local function record(token, fid, job)
  local key = "job:" .. token
  local deadline = host.now() + cfg.job_timeout_ms / 1000
  local expire_at = math.floor((deadline + cfg.resume_keep_s) * 1000) -- Unix ms, for PXAT
  local done, ndone, sub, timer, stopped = {}, 0, nil, nil, false
  local function stop_recording(why)
    if stopped then return end
    stopped = true
    if sub then sub:unsubscribe() end
    if timer then timer:cancel() end
    host.log.info("resume: stopped recording job", fid, why)
  end
  -- save the batch, in a task of its own so that the SET goes out now, with the SUBSCRIBE
  host.spawn(function()
    local meta = ('{"deadline":%.3f,"fid":%s,"tasks":%s}'):format(deadline, json.encode(fid), job.text)
    local ok, err = host.redis.call("SET", key .. ":meta", meta, "PXAT", expire_at)
    if not ok then host.log.warn("resume: could not save job", fid, err) end
  end)
  local err
  sub, err = host.subscribe(job.channel, function(_, payload)
    local update, tid = default.update_of(payload)
    if not tid or not job.tasks[tid] then return end
    -- each callback sends its HSET before its first wait, so in the order updates came
    local ok, why = host.redis.call("HSET", key, tid, payload)
    if ok then ok, why = host.redis.call("PEXPIREAT", key, expire_at) end
    if not ok then host.log.warn("resume: could not record job", fid, why) end
    if default.is_done(update) and not done[tid] then
      done[tid], ndone = true, ndone + 1
      if ndone == job.n then stop_recording("(all tasks done)") end
    end
  end)
  if not sub then return host.log.warn("resume: cannot record job", fid, err) end
  timer = host.timer(cfg.job_timeout_ms, stop_recording, "(deadline)")
  host.log.info("resume: recording job", fid)
end

-- Once the default flow has validated the batch: hand out the resume token and start
-- recording the job.
local function start_recording(conn)
  local job = default.job_of(conn)
  if not job or job.finished or job.uncounted then return end
  local token = host.random_hex(16) -- the resume credential: 128 bits from the CSPRNG
  record(token, conn.id, job) -- saves the batch and subscribes: before any dispatch
  conn:send(json.encode { job = token })
end

default.on_message = function(conn, text)
  if default.job_of(conn) then return base_message(conn, text) end -- "busy"
  -- The default flow runs in a detached task (not cancelled when this connection closes);
  -- start_recording runs in a second one. Spawned tasks start in order once this hook
  -- returns, each until its first wait: the flow validates the batch, sets the
  -- connection's job and waits for its subscription, and only then does
  -- start_recording look at the job; the flow's dispatch waits for Redis' confirmation,
  -- by which time the recording subscription is registered too.
  host.detach(base_message, conn, text)
  host.detach(start_recording, conn)
end

-- ------------------------------------------------------------ resuming

-- End a resumed job through the default's finish(): stop holding live updates first.
local function stop(conn, job, why, detail)
  conn.state.held = nil
  default.finish(conn, job, why, detail)
end

local function resume(conn, token)
  -- the job table default.lua's on_publish and finish work with, filled from Redis below;
  -- it was counted in the jobs_* metrics where it started, not here
  local job = { tasks = {}, order = {}, n = 0, ndone = 0, done = {}, sent = {}, uncounted = true }
  conn.state.job = job -- a batch sent on this connection is answered "busy"
  conn.state.held = {} -- live updates that arrive before the snapshot is out
  if not token:match("^%x+$") or #token ~= 32 then
    return stop(conn, job, "unknown_job", "not a resume token")
  end
  token = token:lower()
  -- 1. which job: its fid (channel), deadline and batch
  local meta, err = host.redis.call("GET", "job:" .. token .. ":meta")
  if meta == host.null then
    return stop(conn, job, "unknown_job", "no such job (unknown or expired)")
  end
  if not conn:is_open() then return end
  if not meta then return stop(conn, job, "unavailable", "redis unavailable: " .. tostring(err)) end
  meta = json.decode(meta)
  -- 2. subscribe, and wait for Redis to confirm: from now on every update reaches us
  job.channel = default.channel_name(meta.fid)
  local ok = conn:subscribe(job.channel)
  -- 3. then read what was recorded before
  local last
  if ok then last = host.redis.call("HGETALL", "job:" .. token) end
  if not conn:is_open() then return end
  if not last then return stop(conn, job, "unavailable", "redis unavailable") end
  local current = {}
  for i = 1, #last, 2 do current[last[i]] = last[i + 1] end
  -- 4. the snapshot: one frame per task, in batch order
  for i, task in ipairs(meta.tasks) do
    local tid = default.normalize_id(task.id)
    local payload = current[tid]
      or ('{"id":%s,"status":%s}'):format(json.encode(task.id), json.encode(task.status or "pending"))
    job.tasks[tid], job.order[i], job.n, job.sent[tid] = task, tid, i, payload
    conn:send(payload)
    if default.is_done(default.decode(payload)) and not job.done[tid] then
      job.done[tid], job.ndone = true, job.ndone + 1
    end
  end
  host.log.info("resume: job", meta.fid, ("%d/%d tasks done"):format(job.ndone, job.n))
  if job.ndone == job.n then return stop(conn, job, "completed") end
  local left = meta.deadline - host.now()
  if left <= 0 then return stop(conn, job, "timeout") end
  job.timer = host.timer(left * 1000, stop, conn, job, "timeout") -- finish() cancels it
  -- 5. the updates held meanwhile, then live ones as they come
  local held = conn.state.held
  conn.state.held = nil
  for _, payload in ipairs(held) do default.on_publish(conn, job.channel, payload) end
end

default.on_open = function(conn)
  local token = ("&" .. (conn.request.query or "")):match("&resume=([^&]*)")
  if token then resume(conn, token) end
end

default.on_publish = function(conn, channel, payload)
  local held = conn.state.held
  if held then held[#held + 1] = payload; return end
  local job = default.job_of(conn)
  if job and job.sent then -- a resumed job: skip what the snapshot already said
    local _, tid = default.update_of(payload)
    if tid and job.sent[tid] == payload then return end
  end
  base_publish(conn, channel, payload)
end

return default
