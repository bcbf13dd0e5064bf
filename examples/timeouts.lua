-- examples/timeouts.lua — the default status sync, with a deadline per task.
--
--   build/statushost --set task_timeout_ms=5000 \
--       --set remote_url=http://127.0.0.1:9101/remote/message examples/timeouts.lua
--
-- Two timeouts:
--   per job   job_timeout_ms (scripts/default.lua's): the whole job; when it passes, the
--             client gets {"error":"timeout",...,"pending":[...]} and close 4408
--             ("pending" lists every task not done, timed-out ones included).
--   per task  task_timeout_ms, counted from the moment the batch arrives; a batch item may
--             carry its own, e.g. {"id":"7","status":"进行中","timeout_ms":2000}.
--             0 means no deadline (for that item; or, as task_timeout_ms, by default).
--             A task not done by its deadline is reported to the client as
--             {"id":"7","status":"timeout"} and counts as finished: a later update for
--             it is dropped. When every task is done or timed out, the job ends with
--             close 1000, reason "done, K of N timed out".
-- A job whose tasks all complete in time ends exactly as in the default policy.
--
-- Everything else is scripts/default.lua: this file loads it and wraps two hooks.

local host = require "statushost"
local json = require "cjson.safe"

local here = debug.getinfo(1, "S").source:match("^@(.*)[/\\]") or "."
local policy = dofile(here .. "/../scripts/default.lua")
local base_message, base_publish = policy.on_message, policy.on_publish

policy.config.task_timeout_ms = 60000 -- default deadline of each task (0: none)
policy.config.timeout_status = "timeout" -- the status reported for a task past its deadline

local cfg = host.config

-- The id of an update, as default.lua keys job.tasks (a string).
local function update_id(payload)
  local update = json.decode(payload)
  local id = type(update) == "table" and update.id
  if math.type(id) == "float" and id == math.floor(id) then id = math.tointeger(id) end
  return id and tostring(id)
end

-- End the job once every task is done or timed out. default.lua's finish() is local to
-- it, so this is the minimal equivalent for this one case: stop the job timer, leave the
-- channel, close 1000.
local function finish(conn, job)
  job.finished = true
  if job.timer then job.timer:cancel() end
  conn:unsubscribe(job.channel)
  if conn.state.job == job then conn.state.job = nil end
  host.metrics.inc("jobs_completed")
  local reason = ("done, %d of %d timed out"):format(job.ntimed_out, job.n)
  host.log.info("job completed,", reason)
  if cfg.close_when_done then conn:close(1000, reason) end
end

local function settled(job)
  return job.ndone + job.ntimed_out == job.n
end

-- A task's deadline in ms: its own timeout_ms if it has a number there, else
-- task_timeout_ms. nil (no deadline) for 0, or anything not in 0 < ms < 1e9.
local function deadline_ms(task)
  local ms = math.type(task.timeout_ms) and task.timeout_ms or cfg.task_timeout_ms
  if ms > 0 and ms < 1e9 then return ms end
end

-- A task's deadline passed.
local function task_timeout(conn, job, id)
  if job.finished or job.done[id] or job.timed_out[id] then return end
  job.timed_out[id] = true
  job.ntimed_out = job.ntimed_out + 1
  conn:send(('{"id":%s,"status":%s}'):format(json.encode(job.tasks[id].id), json.encode(cfg.timeout_status)))
  if settled(job) then finish(conn, job) end
end

policy.on_message = function(conn, text)
  if conn.state.job then return base_message(conn, text) end -- "busy"
  -- Run the default flow in a task of its own: host.spawn runs it now, until its first
  -- wait (conn:subscribe), by which point it has validated the batch and set
  -- conn.state.job (or answered invalid_message). The rest of it (dispatch) goes on
  -- while this hook arms the deadlines.
  host.spawn(base_message, conn, text)
  local job = conn.state.job
  if not job or job.finished then return end
  job.timed_out, job.ntimed_out = {}, 0
  for _, id in ipairs(job.order) do
    local ms = deadline_ms(job.tasks[id])
    if ms then host.timer(ms, task_timeout, conn, job, id) end -- a no-op if done by then
  end
end

policy.on_publish = function(conn, channel, payload)
  local job = conn.state.job
  if not (job and job.timed_out) then return base_publish(conn, channel, payload) end
  local id = update_id(payload)
  if id and job.timed_out[id] then
    return host.log.info("dropped a late update for timed-out task", id)
  end
  base_publish(conn, channel, payload)
  -- default.lua ends the job when every task is done; when some timed out, we do
  if not job.finished and settled(job) then finish(conn, job) end
end

return policy
