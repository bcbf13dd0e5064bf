-- attack_track.lua — a policy that hands the core (conn:track) a job of the shape the
-- client asks for, and whose on_publish does in Lua what the core stands in for (the
-- default policy's handling of an update). For tests/integration/test_attack_track.py.
--
-- The client's first message, a JSON object: {"count": N, "prefix": P, "n": N,
-- "ndone": K | "maxinteger", "ballast_to": BYTES} → a job of the tasks P1..PN (n and
-- ndone as given, integers), tracked; with ballast_to, Lua memory is first filled up to
-- that many bytes (kept in conn.state). The answer: {"channel": ..., "track": true | why}.
-- Any later message "state" → {"ndone": job.ndone (as a string: it may be past 2^53)}; a
-- later JSON object {"op": ...} changes the job between updates, as a policy may (the answer,
-- "ok", comes once it is done): "untask" id (job.tasks[id] = nil), "ndone" v, "finish",
-- "channel" v, "newtasks" (job.tasks a new table of the same tasks), "hook_done"
-- (a __newindex on job.done that counts in job.hooked), "undone" v (done_status[v] = nil),
-- "redone" v (done_status[v] = true), "addtask" id (job.tasks[id] = true), "selfdone"
-- (job.done = job). With "join": the channel of another connection's job
-- (its first answer), this connection tracks that same job table; with "done": [statuses],
-- its own done set (else the shared one).
local host = require "statushost"
local json = require "cjson.safe"

local policy = {}
local done_status = { done = true }
local jobs = setmetatable({}, { __mode = "v" }) -- job.channel → job, for "join"

local function ballast(conn, to)
  local b = host.table_new(8192, 0) -- sized first: no array to grow near the cap
  conn.state.ballast = b
  repeat -- until what is counted after a full collection is held
    while collectgarbage("count") * 1024 < to do b[#b + 1] = ("x"):rep(900) .. #b end
    collectgarbage()
  until collectgarbage("count") * 1024 >= to - 4096
end

function policy.on_message(conn, text)
  local job = conn.state.job
  if job then
    local m = json.decode(text)
    if type(m) ~= "table" then
      return conn:send(json.encode({ ndone = tostring(job.ndone), hooked = job.hooked }))
    end
    if m.op == "untask" then job.tasks[m.id] = nil
    elseif m.op == "ndone" then job.ndone = math.tointeger(m.v)
    elseif m.op == "finish" then job.finished = true
    elseif m.op == "channel" then job.channel = m.v
    elseif m.op == "newtasks" then
      local t = {}
      for k, v in pairs(job.tasks) do t[k] = v end
      job.tasks = t
    elseif m.op == "hook_done" then
      job.hooked = 0
      setmetatable(job.done, { __newindex = function(t, k, v)
        rawset(t, k, v)
        job.hooked = job.hooked + 1
      end })
    elseif m.op == "undone" then done_status[m.v] = nil
    elseif m.op == "redone" then done_status[m.v] = true
    elseif m.op == "addtask" then job.tasks[m.id] = true
    elseif m.op == "selfdone" then job.done = job -- the done entries are the job's own fields
    end
    return conn:send("ok")
  end
  local spec = json.decode(text)
  local dset = done_status
  if type(spec.done) == "table" then
    dset = {}
    for _, s in ipairs(spec.done) do dset[s] = true end
  end
  conn.state.done_status = dset
  if spec.join then -- another connection's job, tracked by this one too
    job = assert(jobs[spec.join])
    conn.state.job = job
    assert(conn:subscribe(job.channel))
    local ok, why = conn:track(job, dset, policy.on_publish)
    return conn:send(json.encode({ channel = job.channel, track = ok or why }))
  end
  -- job.done sized for every task (as the default policy does): no entry grows it
  job = { channel = "trk:" .. conn.id, tasks = {}, done = host.table_new(0, spec.count),
          n = math.tointeger(spec.n or spec.count), ndone = math.tointeger(spec.ndone) or 0 }
  if spec.ndone == "maxinteger" then job.ndone = math.maxinteger end
  for i = 1, spec.count do job.tasks[spec.prefix .. i] = true end
  conn.state.job = job
  jobs[job.channel] = job
  assert(conn:subscribe(job.channel))
  if type(spec.ballast_to) == "number" then ballast(conn, spec.ballast_to) end
  local ok, why = conn:track(job, dset, policy.on_publish)
  conn:send(json.encode({ channel = job.channel, track = ok or why }))
end

function policy.on_publish(conn, channel, payload)
  local job = conn.state.job
  if not job or job.finished or channel ~= job.channel then return end
  local u = host.json.decode(payload)
  local id = type(u) == "table" and u.id
  if type(id) ~= "string" or not job.tasks[id] then return end
  if not conn:send(payload) then return end
  if conn.state.done_status[u.status] == true and not job.done[id] then
    job.done[id] = true
    job.ndone = job.ndone + 1
  end
  if job.ndone == job.n then
    job.finished = true
    conn:track(nil)
    conn:close(1000, "done")
  end
end

return policy
