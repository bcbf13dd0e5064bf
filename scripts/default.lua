-- scripts/default.lua — the seed's status sync, as policy on statushost's primitives.
--
-- A browser sends a batch of tasks; we subscribe to ws:fid:<conn.id>, wait for Redis to
-- confirm, POST the batch to the remote, forward each update the remote publishes, and
-- close 1000 when every task is done. Wire-compatible with the seed's page and remote.
--
-- Two ways to use it:
--
--   statushost scripts/default.lua                -- as the policy
--   local default = require "statushost.default"  -- as a module, in a policy of yours
--
-- Either way this file returns one table, the policy. Its own keys are only what the
-- server reads (config and the hooks); `pairs` sees nothing else. The decisions and the
-- mechanics are reached through its metatable, so they read as fields of the policy:
--
--   decisions  default.validate(text)                  → job | nil, "why"
--              default.dispatch(conn, job)             → true | nil, "why"
--              default.is_complete(job, id, update)    → boolean
--              default.close_policy(conn, job, why)    → close code (nil: stay open), reason
--   mechanics  default.finish(conn, job, why [, detail])  end a job once (below)
--              default.send_error(conn, code, message [, extra])
--              default.decode(text [, max_values])     strict JSON → value | nil, "why"
--              default.normalize_id(id)                the task key of an id: "7" for 7, 7.0, "7"
--              default.update_of(payload)              → update table, task key (nil if none)
--              default.is_done(update)                 status in done_statuses?
--              default.job_of(conn)                    the connection's running job, or nil
--              default.channel_name(fid)               <channel_prefix><fid>
--              default.validate_config(cfg)            → true | nil, "why"
--
-- To change a decision, assign it: `default.validate = my_validate`. The hooks look every
-- decision and mechanic up through the policy at each call (never through a local), so
-- the replacement takes effect in the hooks you keep; keep the old one to build on it:
--
--   local base = default.close_policy
--   default.close_policy = function(conn, job, why)
--     if why == "gone" then return 4410, "gone" end
--     return base(conn, job, why)
--   end
--
-- Assigning a hook (`default.on_handshake = fn`) or a config default
-- (`default.config.my_key = 5`) works as on any policy table. Assigning any other name
-- raises at once: a typo does not silently add a key the server would refuse.
-- `require` runs this file once per Lua state (one per script generation), so a script
-- that requires it adapts *the* policy of its state and returns it.
--
-- Every key of `config` below can be overridden with --set KEY=VALUE.

local host = require "statushost"
local json = require("cjson.safe").new() -- encoding only (decode: host.json.decode); a private
                                         -- instance: its settings are ours alone

local config = {
  listen = "127.0.0.1:9999",
  remote_url = "http://127.0.0.1:9101/remote/message", -- where batches are POSTed (http://)
  channel_prefix = "ws:fid:",      -- updates arrive on <prefix><conn.id>
  max_tasks = 1000,                -- tasks per batch
  max_id_bytes = 256,              -- length of a task id
  -- JSON values in a batch: arrays, objects, strings, numbers, booleans, nulls (keys not
  -- counted); the seed's task is 3 ({"id":…,"status":…}). The job keeps the decoded batch
  -- for its life, and a table costs Lua 56 bytes where "[]," is 3 bytes of text: without
  -- this bound a 1 MB batch of empty arrays held 27 MB; with it, about 2 MB at most.
  max_batch_values = 20000,
  done_statuses = { "已完成", "done", "completed" }, -- a task with one of these is done
  job_timeout_ms = 120000,         -- the whole job, dispatch included
  -- extra POST attempts, at once, when the remote refused the connection, the exchange
  -- failed (reset, bad or oversized response, name resolution) or it answered 5xx. Not
  -- retried: a timeout (it used the job's time), an answer below 500 that is not 2xx
  -- (1xx/3xx/4xx: the same request gets the same answer), a malformed remote_url.
  dispatch_retries = 0,
  close_when_done = true,          -- close 1000 when the job completes (the seed does)
}

local table_new = host.table_new
-- host.json.decode as this file found it, if it is still the host's decoder in C (string.dump
-- refuses C functions only): a policy that put a decoder of its own there before requiring
-- this file gets the walk over a batch's keys in lib.validate, as with default.decode = f
local stock_decode = host.json.decode
if pcall(string.dump, stock_decode) then stock_decode = nil end
local cfg = host.config -- the merged config (defaults ← script ← --set); filled once the script returns

host.metrics.define("foreign_updates_dropped_total", "counter",
  "Updates on a job's channel that belong to no task of it.")

local policy = { config = config } -- what the server reads: config and hooks
local lib = {}                     -- decisions and mechanics, reached through policy
-- (assigning policy.decode = f stores f in lib, so the calls below, lib.decode(...), use it;
-- they skip policy's metatable, a lookup each)

-- ---------------------------------------------------------------- decisions

-- validate: is `text` a batch we accept? → job | nil, "why"
function lib.validate(text)
  local batch, problem = lib.decode(text, cfg.max_batch_values)
  if batch == nil and tostring(problem):find("^Found too many values") then
    return nil, ("too many JSON values (max_batch_values %d)"):format(cfg.max_batch_values)
  end
  if type(batch) ~= "table" then return nil, "not a JSON array" end
  local n = #batch
  if n == 0 then return nil, "expected a non-empty JSON array of tasks" end
  if next(batch, n) ~= nil or batch[n + 1] ~= nil then return nil, "not a JSON array" end
  -- the count before the walk over every key: a 1 MB batch of 500,000 members is refused
  -- at once, not after 500,000 turns of a Lua loop (60 ms of CPU, past a small budget)
  if n > cfg.max_tasks then return nil, ("too many tasks: %d (max %d)"):format(n, cfg.max_tasks) end
  -- host.json.decode makes a JSON array 1..n and nothing else, and an object only string
  -- keys (#batch is 0): a decoder of the policy's own may mix them, so its table is walked
  if lib.decode ~= stock_decode then
    for k in pairs(batch) do
      if math.type(k) ~= "integer" or k < 1 or k > n then return nil, "not a JSON array" end
    end
  end
  -- sized for n tasks at once: filled key by key, a table is rehashed at every doubling.
  -- Up to 4096 (max_tasks is 1000 by default): past that they grow as they fill, so a batch
  -- of a million members refused at its first task has not first taken 66 MB of room
  -- (nor, past 2^24, met host.table_new's cap)
  local room = n < 4096 and n or 4096
  local job = { tasks = table_new(0, room), order = table_new(room, 0), n = n, ndone = 0,
                done = table_new(0, room) }
  for i, task in ipairs(batch) do
    if type(task) ~= "table" then return nil, ("task %d is not an object"):format(i) end
    local id = lib.normalize_id(task.id)
    if not id or #id == 0 or #id > cfg.max_id_bytes then
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

-- the POST's headers: one table for every job (host.http.request only reads it)
local post_headers = { ["Content-Type"] = "application/json" }

-- dispatch: hand the batch to the remote. → true | nil, "why"
-- The seed's remote answers only when the whole job is done, so this may wait as long
-- as the job; updates are forwarded meanwhile by on_publish.
function lib.dispatch(conn, job)
  local ok, problem = lib.validate_config(cfg)
  if not ok then return nil, "misconfigured: " .. problem end
  -- conn.id is 24 hex characters (README, "The connection"): quoted, it is a JSON string
  -- as it is (json.encode took a buffer of its own for it, per job)
  local body = '{"data":' .. job.text .. ',"fid":"' .. conn.id .. '"}'
  -- the body is the one copy of the batch kept for the job's life (the HTTP client
  -- borrows it, it does not copy it): the text it was made from can go
  job.text = nil
  local why
  for _ = 0, cfg.dispatch_retries do
    local started = host.now()
    -- host.http.request raises on a URL it cannot use: that is a failed dispatch too
    local called, res, err = pcall(host.http.request, {
      method = "POST", url = cfg.remote_url, body = body,
      headers = post_headers,
      timeout_ms = cfg.job_timeout_ms,
    })
    if not called then return nil, tostring(res) end
    if res then host.metrics.observe_dispatch(host.now() - started) end
    if res and res.status >= 200 and res.status < 300 then return true end
    why = res and ("remote answered " .. res.status) or err
    if not conn:is_open() or (res and res.status < 500) or err == "timeout" then break end
  end
  return nil, why
end

-- is_complete: count `update` (already known to belong to the job) and say whether
-- every task of the job is now done.
function lib.is_complete(job, id, update)
  if lib.is_done(update) and not job.done[id] then
    job.done[id] = true
    job.ndone = job.ndone + 1
  end
  return job.ndone == job.n
end

-- close_policy: how a job that ended with `why` ends the connection.
-- → close code (nil keeps it open), reason
function lib.close_policy(conn, job, why)
  if why == "completed" then
    if cfg.close_when_done then return 1000, "done" end
    return nil
  elseif why == "timeout" then return 4408, "job timeout"
  elseif why == "unavailable" then return 1013, "redis unavailable"
  else return 1011, "dispatch failed" end
end

-- ---------------------------------------------------------------- mechanics

-- Strict JSON → value | nil, "why": host.json.decode, an RFC 8259 parser in C. It refuses
-- what a strict parser on the remote (or JSON.parse in the page) refuses: NaN, Infinity,
-- hex, numbers with a bare dot ("1.", "1.e5", "-.5"), leading zeros, raw control
-- characters in strings, trailing garbage. (lua-cjson let the bare dots through, which
-- took a scan of the text here; the C decoder needs none, and it gives integral numbers
-- as integers: 7.0 decodes to 7.) The C function itself, not a Lua wrapper: one call less.
lib.decode = host.json.decode

-- The key of a task id in job.tasks: a string ("7" for 7, 7.0 and "7"); nil for an id
-- that is neither a string nor an integral number.
function lib.normalize_id(id)
  if type(id) == "string" then return id end -- the usual case first: one call, not three
  if math.type(id) == "float" and id == math.floor(id) and math.abs(id) < 2^53 then
    id = math.tointeger(id)
  end
  if math.type(id) == "integer" then return tostring(id) end
  return nil
end

-- An update payload → its decoded table and its task key (nil, nil when it is not a
-- JSON object with a usable id).
function lib.update_of(payload)
  local update = lib.decode(payload)
  if type(update) ~= "table" then return nil, nil end
  return update, lib.normalize_id(update.id)
end

local done_status, done_statuses -- set of cfg.done_statuses, rebuilt if the list changes
local function done_set()
  if done_statuses ~= cfg.done_statuses then
    done_status, done_statuses = {}, cfg.done_statuses
    for _, s in ipairs(done_statuses) do done_status[s] = true end
  end
  return done_status
end
function lib.is_done(update)
  return type(update) == "table" and done_set()[update.status] == true
end

function lib.job_of(conn)
  return conn.state.job
end

function lib.channel_name(fid)
  return cfg.channel_prefix .. fid
end

-- The config keys of this policy, checked: → true | nil, "why". Run at the first job
-- (host.config is filled only once the script has returned); a problem is logged once and
-- every job then fails with dispatch_failed, naming it.
local checked, problem -- the config table last checked, and what was wrong with it
function lib.validate_config(c, quiet)
  if checked == c then return problem == nil, problem end
  local why
  local url = c.remote_url
  local scheme, hostport = tostring(url):match("^(%a[%w+.-]*)://([^/?#]*)")
  if type(url) ~= "string" or not scheme then
    why = ("remote_url %q is not a URL (http://host[:port]/path)"):format(tostring(url))
  elseif scheme:lower() ~= "http" and scheme:lower() ~= "https" then
    why = ("remote_url %q: unsupported scheme %s (http:// expected)"):format(url, scheme)
  elseif not (hostport:match("^[%w._-]+:?%d*$") or hostport:match("^%[[%x:.%%%w]+%]:?%d*$")) then
    why = ("remote_url %q: bad host or port"):format(url)
  elseif url:find("[%c ]") then
    why = ("remote_url %q: control characters or spaces"):format(url)
  elseif math.type(c.max_tasks) ~= "integer" or c.max_tasks < 1 then
    why = "max_tasks must be an integer >= 1"
  elseif math.type(c.max_id_bytes) ~= "integer" or c.max_id_bytes < 1 then
    why = "max_id_bytes must be an integer >= 1"
  elseif math.type(c.max_batch_values) ~= "integer" or c.max_batch_values < 1 then
    why = "max_batch_values must be an integer >= 1"
  elseif type(c.job_timeout_ms) ~= "number" or c.job_timeout_ms <= 0 then
    why = "job_timeout_ms must be > 0"
  elseif math.type(c.dispatch_retries) ~= "integer" or c.dispatch_retries < 0 then
    why = "dispatch_retries must be an integer >= 0"
  elseif type(c.done_statuses) ~= "table" or #c.done_statuses == 0 then
    why = "done_statuses must list at least one status"
  end
  local port = hostport and tonumber(hostport:match(":(%d+)$"))
  if not why and port and (port < 1 or port > 65535) then
    why = ("remote_url %q: port out of range"):format(url)
  end
  if why and not quiet then host.log.error("config:", why, "- every job will fail (dispatch_failed)") end
  checked, problem = c, why
  return why == nil, why
end

function lib.send_error(conn, code, message, extra)
  local frame = { error = code, message = message }
  for k, v in pairs(extra or {}) do frame[k] = v end
  conn:send(json.encode(frame))
end

-- Updates on the job's channel that are for no task of it: counted, and logged at most
-- once a second per connection (a flood of them must not turn into a flood of log lines).
local function drop_foreign(conn, payload)
  host.metrics.inc("foreign_updates_dropped_total")
  local f = conn.state.foreign
  if not f then
    f = { n = 0, at = -math.huge }
    conn.state.foreign = f
  end
  f.n = f.n + 1
  local now = host.now()
  if now - f.at < 1 then return end
  if f.n == 1 then
    host.log.warn("dropped an update that is not for this job:", payload:sub(1, 200))
  else
    host.log.warn(("dropped %d updates that are not for this job in %.1f s, the last:"):format(
      f.n, now - f.at), payload:sub(1, 200))
  end
  f.n, f.at = 0, now
end

local function flush_foreign(state) -- conn.state
  local f = state.foreign
  if f and f.n > 0 then
    host.log.warn(("dropped %d more updates that were not for this job"):format(f.n))
    f.n = 0
  end
end

local counters = {
  completed = "jobs_completed", timeout = "jobs_timed_out",
  dispatch_failed = "jobs_failed", unavailable = "jobs_failed",
}

-- End the job once: stop its timer, leave its channel, count it, tell the client
-- (an error frame unless why is "completed"; for "timeout" it lists the pending ids),
-- and close as close_policy says. A job with job.uncounted set is not counted in the
-- jobs_* metrics (a view of a job counted elsewhere).
function lib.finish(conn, job, why, detail)
  if job.finished then return end
  job.finished = true
  if job.timer then job.timer:cancel() end
  if job.channel then conn:unsubscribe(job.channel) end
  local state = conn.state
  if state.job == job then state.job = nil end
  conn:track(nil)
  flush_foreign(state)
  if not job.uncounted then host.metrics.inc(counters[why] or "jobs_failed") end
  if why == "timeout" then
    local pending = {}
    for _, id in ipairs(job.order) do
      if not job.done[id] then pending[#pending + 1] = id end
    end
    lib.send_error(conn, "timeout", ("%d of %d tasks not done within %d ms"):format(
      #pending, job.n, cfg.job_timeout_ms), { pending = pending })
  elseif why ~= "completed" then
    lib.send_error(conn, why, detail or why)
  end
  host.log.info("job", why, job.ndone .. "/" .. job.n .. " tasks done", detail or "")
  local code, reason = lib.close_policy(conn, job, why)
  if code then conn:close(code, reason) end
end

-- ---------------------------------------------------------------- hooks

-- The core forwards a job's plain updates itself, in on_publish's place, while the
-- decisions on_publish makes are the ones above (conn:track, README "The connection"):
-- an update of a task of the job, a JSON object of plain scalars with a string id, is sent
-- as on_publish would send it, and counted in job.done and job.ndone. Every other message
-- (foreign, not such an object, not UTF-8, the one that completes the job) still comes
-- here. With a decision or hook of the policy's own, on_publish gets them all.
local stock, stock_on_publish = {}, nil -- filled at the end
local function stock_updates()
  return lib.job_of == stock.job_of and lib.update_of == stock.update_of
    and lib.decode == stock_decode and stock_decode ~= nil and lib.normalize_id == stock.normalize_id
    and lib.is_complete == stock.is_complete and lib.is_done == stock.is_done
    and lib.finish == stock.finish
end

function policy.on_message(conn, text)
  if lib.job_of(conn) then
    return lib.send_error(conn, "busy", "a job is already running on this connection")
  end
  lib.validate_config(cfg) -- logs a problem once; dispatch then fails naming it
  local job, why = lib.validate(text)
  if not job then return lib.send_error(conn, "invalid_message", why) end
  conn.state.job = job
  job.channel = lib.channel_name(conn.id)
  -- subscribe first, and wait for Redis to confirm: no update can be lost
  local ok = conn:subscribe(job.channel)
  if not ok then
    if conn:is_open() then lib.finish(conn, job, "unavailable", "redis unavailable") end
    return
  end
  host.metrics.inc("jobs_started")
  job.timer = host.timer(cfg.job_timeout_ms, function() lib.finish(conn, job, "timeout") end)
  if stock_updates() then conn:track(job, done_set(), stock_on_publish) end
  local sent, failure = lib.dispatch(conn, job)
  if not sent and not job.finished and conn:is_open() then
    lib.finish(conn, job, "dispatch_failed", failure)
  end
end

function policy.on_publish(conn, channel, payload)
  local job = lib.job_of(conn)
  if not job or job.finished or channel ~= job.channel then return end
  local update, id = lib.update_of(payload)
  if not id or not job.tasks[id] then return drop_foreign(conn, payload) end
  local sent, why = conn:send(payload) -- verbatim
  -- not UTF-8 (JSON strings may hold any bytes): it cannot be a text frame, so it does not
  -- count either (the client would miss the update that finished its task)
  if not sent then
    if why == "invalid UTF-8" then return drop_foreign(conn, payload) end
    return
  end
  if lib.is_complete(job, id, update) then lib.finish(conn, job, "completed") end
end

function policy.on_close(conn, code)
  flush_foreign(conn.state)
  local job = lib.job_of(conn)
  if job and not job.finished then
    job.finished = true
    host.log.info("client left mid-job", ("(%d/%d tasks done), close %d"):format(job.ndone, job.n, code))
  end
end

-- ---------------------------------------------------------------- the module's shape

for _, k in ipairs({ "job_of", "update_of", "normalize_id", "is_complete", "is_done", "finish" }) do
  stock[k] = lib[k]
end
stock_on_publish = policy.on_publish

-- on_config: the merged config is checked at every load (start, --check, reload)
function policy.on_config(c)
  local ok, why = lib.validate_config(c, true)
  if not ok then return false, why end
end

local server_keys = {
  on_handshake = true, on_open = true, on_message = true, on_binary = true,
  on_publish = true, on_close = true, on_config = true, routes = true, config = true,
}

return setmetatable(policy, {
  __index = lib,
  __newindex = function(t, k, v)
    if lib[k] ~= nil then
      lib[k] = v
    elseif server_keys[k] then
      rawset(t, k, v)
    else
      error(("statushost.default: no hook, decision or mechanic named %q"):format(tostring(k)), 2)
    end
  end,
})
