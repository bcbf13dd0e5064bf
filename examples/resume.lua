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
--     every later update exactly once, verbatim, then close 1000 when every task is done;
--     4408 with a "timeout" error if the job's deadline (job_timeout_ms after it started)
--     passes first. This holds whichever process (--workers, or another machine on the
--     same Redis) the client reconnects to.
--   - an unknown, expired or malformed token: {"error":"unknown_job","message":…}, close 4404.
--
-- How (exact across processes: Centrifugo's offset recovery, with Redis as the log):
--   - The job runs in a task owned by no connection (host.detach), so its dispatch, whose
--     POST stays pending while the remote works, is not cancelled when the client leaves.
--   - A subscription of the job's process (host.subscribe, started from a detached task so
--     that it and its timer outlive the connection) records every update of the job's
--     channel (ws:fid:<fid>) with one Redis script (EVAL, atomic):
--         XADD    job:{<token>}:log MAXLEN ~ resume_max_updates * task <id> update <payload>
--                 → the entry id ("<ms>-<seq>", increasing) is the update's offset
--         HSET    job:{<token>}  <task id> "<offset> <payload>"   (the log, compacted: the
--                 last update of each task, which a trimmed log would lose)
--         PUBLISH job:{<token>}:live "<offset> <payload>"   (SPUBLISH with redis_cluster)
--     plus   job:{<token>}:meta   {"deadline":<unix seconds>,"fid":"<fid>","tasks":[…the batch…]}
--     It stops when every task is done or at the deadline; every key expires resume_keep_s
--     after the deadline (PXAT/PEXPIREAT: Redis 6.2 or later). The {<token>} hash tag puts
--     a job's keys in one cluster slot, as the script needs.
--   - A resuming client, on ANY process: reads the meta key, SUBSCRIBEs to
--     job:{<token>}:live and waits for Redis to confirm, then reads the compacted log
--     (HGETALL, one atomic read): its greatest offset is the snapshot's offset. The
--     snapshot goes out (one frame per task), then each live update whose offset is past
--     the snapshot's (held until the snapshot is out; older ones are skipped). No gap: an
--     update recorded before the subscription was confirmed is in the snapshot, one
--     recorded later is published after the confirmation and reaches the client. No
--     duplicate: the offset says which of the two it is. Updates are recorded by one
--     connection in the order they arrived, so offsets grow in that order.
--   - If the job's process dies, recording stops with it (nobody listens on its channel):
--     a resumed client gets the snapshot, then the timeout at the job's deadline.
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
default.config.resume_max_updates = 10000 -- the log's MAXLEN (~): the snapshot does not need it

local cfg = host.config

default.close_policy = function(conn, job, why)
  if why == "unknown_job" then return 4404, "unknown job" end
  return base_close_policy(conn, job, why)
end

-- ------------------------------------------------------------ recording

-- The job's Redis keys; the {token} hash tag keeps them in one cluster slot.
local function keys_of(token)
  local k = "job:{" .. token .. "}"
  return { state = k, meta = k .. ":meta", log = k .. ":log", live = k .. ":live" }
end

-- One update, atomically: appended to the log (its entry id is the offset), kept as its
-- task's last state, published with its offset for resumed clients.
local RECORD = [[
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'task', ARGV[1], 'update', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], id .. ' ' .. ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
redis.call(ARGV[6], ARGV[5], id .. ' ' .. ARGV[2])
return id
]]

-- With Redis Cluster (the redis_cluster key, where the core has it) channels are sharded:
-- the live channel is in the job's slot ({token}), so the script SPUBLISHes it there.
local function publish_command()
  local cluster = cfg.redis_cluster
  return (type(cluster) == "table" and #cluster > 0 or type(cluster) == "string" and cluster ~= "")
    and "SPUBLISH" or "PUBLISH"
end

-- Record every update of the job (runs detached: it outlives the connection).
local function record(token, fid, job)
  local k = keys_of(token)
  local deadline = host.now() + cfg.job_timeout_ms / 1000
  local expire_at = math.floor((deadline + cfg.resume_keep_s) * 1000) -- Unix ms, for PXAT
  local done, ndone, sub, timer, stopped = {}, 0, nil, nil, false
  local publish = publish_command()
  local text = job.text -- the batch as sent (the default's dispatch drops job.text)
  local function stop_recording(why)
    if stopped then return end
    stopped = true
    if sub then sub:unsubscribe() end
    if timer then timer:cancel() end
    host.log.info("resume: stopped recording job", fid, why)
  end
  -- save the batch, in a task of its own so that the SET goes out now, with the SUBSCRIBE
  host.spawn(function()
    local meta = ('{"deadline":%.3f,"fid":%s,"tasks":%s}'):format(deadline, json.encode(fid), text)
    local ok, err = host.redis.call("SET", k.meta, meta, "PXAT", expire_at)
    if not ok then host.log.warn("resume: could not save job", fid, err) end
  end)
  local err
  sub, err = host.subscribe(job.channel, function(_, payload)
    local update, tid = default.update_of(payload)
    if not tid or not job.tasks[tid] then return end
    -- each callback sends its EVAL before its first wait, so in the order updates came:
    -- offsets grow in that order
    local ok, why = host.redis.call("EVAL", RECORD, 2, k.log, k.state, tid, payload, expire_at,
                                    cfg.resume_max_updates, k.live, publish)
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

-- An offset ("<ms>-<seq>", a stream entry id) as two integers, and their order.
local function offset_of(text)
  local ms, seq = text:match("^(%d+)%-(%d+)$")
  return ms and { tonumber(ms), tonumber(seq) }
end

local function after(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

-- End a resumed job through the default's finish(): stop holding live updates first.
local function stop(conn, job, why, detail)
  conn.state.held = nil
  default.finish(conn, job, why, detail)
end

local function resume(conn, token)
  -- the job table default.lua's on_publish and finish work with, filled from Redis below;
  -- it was counted in the jobs_* metrics where it started, not here
  local job = { tasks = {}, order = {}, n = 0, ndone = 0, done = {}, uncounted = true,
                offset = { 0, 0 } }
  conn.state.job = job -- a batch sent on this connection is answered "busy"
  conn.state.held = {} -- live updates that arrive before the snapshot is out
  if not token:match("^%x+$") or #token ~= 32 then
    return stop(conn, job, "unknown_job", "not a resume token")
  end
  local k = keys_of(token:lower())
  -- 1. which job: its fid, deadline and batch
  local meta, err = host.redis.call("GET", k.meta)
  if meta == host.null then
    return stop(conn, job, "unknown_job", "no such job (unknown or expired)")
  end
  if not conn:is_open() then return end
  if not meta then return stop(conn, job, "unavailable", "redis unavailable: " .. tostring(err)) end
  meta = json.decode(meta)
  if type(meta) ~= "table" or type(meta.tasks) ~= "table" or type(meta.deadline) ~= "number" then
    return stop(conn, job, "unknown_job", "not a job record") -- another writer's key
  end
  -- 2. subscribe to the job's live updates (with offsets), and wait for Redis to
  -- confirm: from now on every update recorded reaches us
  job.channel = k.live
  local ok = conn:subscribe(job.channel)
  -- 3. then read the compacted log: each task's last update and its offset
  local last
  if ok then last = host.redis.call("HGETALL", k.state) end
  if not conn:is_open() then return end
  if not last then return stop(conn, job, "unavailable", "redis unavailable") end
  local current = {}
  for i = 1, #last, 2 do
    local off, payload = last[i + 1]:match("^(%S+) (.*)$")
    off = off and offset_of(off)
    if off then
      current[last[i]] = payload
      if after(off, job.offset) then job.offset = off end
    end
  end
  -- 4. the snapshot, up to job.offset: one frame per task, in batch order
  for i, task in ipairs(meta.tasks) do
    local tid = default.normalize_id(task.id)
    local payload = current[tid]
      or ('{"id":%s,"status":%s}'):format(json.encode(task.id), json.encode(task.status or "pending"))
    job.tasks[tid], job.order[i], job.n = task, tid, i
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
  -- 5. the updates held meanwhile, then live ones as they come: those past the offset
  local held = conn.state.held
  conn.state.held = nil
  for _, message in ipairs(held) do default.on_publish(conn, job.channel, message) end
end

default.on_open = function(conn)
  local token = ("&" .. (conn.request.query or "")):match("&resume=([^&]*)")
  if token then resume(conn, token) end
end

default.on_publish = function(conn, channel, payload)
  local held = conn.state.held
  if held then held[#held + 1] = payload; return end
  local job = default.job_of(conn)
  if job and job.offset then -- a resumed job: "<offset> <update>", once each
    local off, update = payload:match("^(%S+) (.*)$")
    off = off and offset_of(off)
    if not off or not after(off, job.offset) then return end -- in the snapshot already
    job.offset = off
    payload = update
  end
  base_publish(conn, channel, payload)
end

return default
