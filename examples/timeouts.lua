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
-- Everything else is scripts/default.lua, required as a module: this file arms the
-- deadlines around its on_message, drops late updates before its on_publish, and
-- replaces two of its decisions: is_complete (a job is complete when every task is done
-- or timed out) and close_policy (the close reason counts the timed-out tasks). The job
-- ends through the default's finish(), like any other.

local host = require "statushost"
local default = require "statushost.default"
local base_message, base_publish = default.on_message, default.on_publish
local base_is_complete, base_close_policy = default.is_complete, default.close_policy

default.config.task_timeout_ms = 60000 -- default deadline of each task (0: none)
default.config.timeout_status = "timeout" -- the status reported for a task past its deadline

local cfg = host.config
local json = require "cjson.safe"

-- A job is settled when every task is done or timed out.
local function settled(job)
  return job.ndone + (job.ntimed_out or 0) == job.n
end

default.is_complete = function(job, id, update)
  base_is_complete(job, id, update) -- counts a done update
  return settled(job)
end

default.close_policy = function(conn, job, why)
  local code, reason = base_close_policy(conn, job, why)
  if why == "completed" and code and (job.ntimed_out or 0) > 0 then
    reason = ("done, %d of %d timed out"):format(job.ntimed_out, job.n)
  end
  return code, reason
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
  if settled(job) then default.finish(conn, job, "completed") end
end

-- Arm a timer per task of the connection's job (if the batch was accepted).
local function arm_deadlines(conn)
  local job = default.job_of(conn)
  if not job or job.finished or job.timed_out then return end
  job.timed_out, job.ntimed_out = {}, 0
  for _, id in ipairs(job.order) do
    local ms = deadline_ms(job.tasks[id])
    if ms then host.timer(ms, task_timeout, conn, job, id) end -- a no-op if done by then
  end
end

default.on_message = function(conn, text)
  if default.job_of(conn) then return base_message(conn, text) end -- "busy"
  -- The default flow runs in a task of its own, and the deadlines are armed by a second
  -- one: spawned tasks start in order once this hook returns, and each runs until its
  -- first wait, so the flow has validated the batch and set the connection's job (or
  -- answered invalid_message) when arm_deadlines looks. The flow's dispatch goes on
  -- meanwhile.
  host.spawn(base_message, conn, text)
  host.spawn(arm_deadlines, conn)
end

default.on_publish = function(conn, channel, payload)
  local job = default.job_of(conn)
  if job and job.timed_out and channel == job.channel then
    local _, id = default.update_of(payload)
    if id and job.timed_out[id] then
      if not job.timed_out_logged then -- once per job: late updates may come in numbers
        job.timed_out_logged = true
        host.log.info("dropped a late update for timed-out task", id)
      end
      return
    end
  end
  return base_publish(conn, channel, payload)
end

return default
