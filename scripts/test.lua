-- scripts/test.lua — the policy test kit ("statushost.test"), for `statushost --test`.
--
--   local t = require "statushost.test"
--
--   t.test("a batch is dispatched", function()
--     local p = t.policy("../scripts/default.lua", { remote_url = "http://remote/jobs" })
--     p:route("POST /jobs", function(req) return 202 end)
--     local c = p:open{ path = "/" }
--     c:send('[{"id":1}]')
--     p:publish("ws:fid:" .. p.requests[1].json.fid, '{"id":1,"status":"done"}')
--     c:expect_frame{ id = 1, status = "done" }
--     c:expect_close(1000)
--   end)
--
-- Run with `statushost --test FILE.lua...`: TAP on stdout, exit 0 when every test passed,
-- 1 when one failed, 2 when a file did not load. README.md, "Testing a policy", has the
-- whole API; in short:
--
--   t.test(name, fn)                 a test (its policies are closed when it ends)
--   t.policy(path, overrides)        load a policy (path relative to the test file;
--                                    overrides as --set KEY=VALUE) → p
--   p:open{path, headers, peer}      a WebSocket client after its handshake → c
--     c.status c.headers c.body      the handshake's answer (101, or the refusal)
--     c:send(text) c:send_binary(b)  c:close(code, reason)  c:drop()
--     c:expect_frame(x)              x: a string, t.pattern(p), a table (JSON, subset), a function
--     c:expect_binary(bytes)  c:expect_close(code [, reason])  c:expect_no_frame()
--   p:request{method, path, headers, body}  a plain HTTP request (routes) → res
--   p:http{...} → h; h:response()   the same, for a route that answers later
--   p:route("METHOD /path" | "METHOD url" | "*", handler)  the simulated remote
--   p.requests                       every HTTP request the policy made
--   p:publish(channel, message)      a Redis message → receivers;  p:subscribers(channel)
--   p.redis  p:on_redis(fn)  p:redis_down(bool)    the simulated Redis
--   p:advance(ms)  p:now()  p:time() the virtual clock (ms since load; host.now())
--   t.eq t.ok t.like t.fail          assertions;  t.null t.hang t.pattern t.lib t.json
--
-- Everything runs in-process on the real transport and Lua host, with no socket and no
-- real waiting: see src/kit.c.

local kit = require "statushost.kit"
local json = require("cjson.safe").new()
local tap = kit.take_writer() -- stdout: print and io.write in a test file do not reach it

local M = {}
local tests = {}    -- {name, fn}, in file order
local worlds = {}   -- the policies opened by the running test
local KIT_SRC = debug.getinfo(1, "S").source

M.null = kit.null           -- a nil reply (Redis) / JSON null
M.hang = setmetatable({}, { __tostring = function() return "t.hang" end })
M.lib = kit.lib             -- the policies' helpers (base64, hmac_sha256, sha256, to_hex...)
M.json = json

-- ------------------------------------------------------------ failures

local Failure = {}
Failure.__index = Failure
Failure.__tostring = function(f) return f.msg end

-- "file:line" of the innermost caller outside this file
local function where()
  for level = 3, 50 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source ~= KIT_SRC and info.what ~= "C" and info.currentline > 0 then
      return info.short_src .. ":" .. info.currentline
    end
  end
  return "?"
end

local function fail(msg)
  error(setmetatable({ msg = msg, where = where() }, Failure), 0)
end
M.fail = fail

local function show(v, depth)
  depth = depth or 0
  if v == kit.null then return "t.null" end
  if type(v) == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if type(v) ~= "table" or depth > 3 then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local ks = math.type(k) == "integer" and "" or (tostring(k) .. "=")
    parts[#parts + 1] = ks .. show(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.show = show

-- deep equality; numbers compare by value (1 == 1.0). A pair of tables met again while
-- compared (a cycle) counts as equal there: the rest of the walk decides.
local function equal(a, b, seen)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  seen = seen or {}
  local with = seen[a]
  if with and with[b] then return true end
  if not with then with = {}; seen[a] = with end
  with[b] = true
  for k, v in pairs(a) do if not equal(v, b[k], seen) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- every field of `want` is in `got` with an equal value (recursively)
local function subset(want, got)
  if type(want) ~= "table" then return want == got end
  if type(got) ~= "table" then return false end
  for k, v in pairs(want) do if not subset(v, got[k]) then return false end end
  return true
end

function M.eq(actual, expected, msg)
  if not equal(actual, expected) then
    fail(("%s\n     got: %s\nexpected: %s"):format(msg or "values differ", show(actual), show(expected)))
  end
  return actual
end

function M.ok(v, msg)
  if not v then fail(msg or ("expected a true value, got " .. show(v))) end
  return v
end

function M.like(s, pattern, msg)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(("%s\n     got: %s\nexpected to match: %s"):format(msg or "no match", show(s), pattern))
  end
  return s
end

local Pattern = {}
function M.pattern(p) return setmetatable({ p = p }, Pattern) end

-- ------------------------------------------------------------ tests

local running     -- the name of the test that runs
local started     -- the file's tests have started

function M.test(name, fn)
  assert(type(name) == "string" and type(fn) == "function", "t.test(name, function)")
  if running then
    error(("t.test(%q): inside the running test %q: tests do not nest (declare each one at "
      .. "the file's top level)"):format(name, running), 2)
  elseif started then
    error(("t.test(%q): the tests have started (declare each one when the file loads)"):format(name), 2)
  end
  tests[#tests + 1] = { name = name, fn = fn }
end

function M._count() return #tests end

local DIAG_MAX = 64 * 1024 -- bytes of a failure's diagnostic shown

-- a TAP name: one line, and a '#' would start a directive (prove's skip/todo directives
-- hide a failure)
local function tap_name(name)
  return (name:gsub("[\\#]", "\\%0"):gsub("\r?\n", "\\n"):gsub("\r", "\\r"))
end

local function diagnostic(msg, where)
  if where then tap("#   at " .. where .. "\n") end
  if #msg > DIAG_MAX then
    msg = ("%s\n... (%d more bytes not shown)"):format(msg:sub(1, DIAG_MAX), #msg - DIAG_MAX)
  end
  for line in (msg .. "\n"):gmatch("(.-)\n") do tap("#   " .. line .. "\n") end
end

-- Run the file's tests (the kit calls this once), numbered from first: → the number that failed
function M._run(first)
  if started then error("t._run: the kit's own (it runs the file's tests once)", 2) end
  started = true
  local failed = 0
  for i, tc in ipairs(tests) do
    worlds = {}
    running = tc.name
    local ok, msg, where = kit.run(i, tc.fn, Failure)
    running = nil
    for _, w in ipairs(worlds) do w:close() end
    worlds = {}
    kit.reset_shared()
    local n = first + i - 1
    if ok then
      tap(("ok %d - %s\n"):format(n, tap_name(tc.name)))
    else
      failed = failed + 1
      tap(("not ok %d - %s\n"):format(n, tap_name(tc.name)))
      diagnostic(msg, where)
    end
  end
  return failed
end

-- ------------------------------------------------------------ policies

local P = {}
P.__index = P

local function override(k, v)
  if type(v) == "table" then
    local items = {}
    for i, x in ipairs(v) do items[i] = tostring(x) end
    v = table.concat(items, ",")
  elseif math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
    v = math.tointeger(v)
  end
  return k .. "=" .. tostring(v)
end

-- t.policy(path, overrides) → p; raises with the load error
function M.policy(path, overrides)
  assert(type(path) == "string", "t.policy(path [, overrides])")
  if path:sub(1, 1) ~= "/" and kit.dir then path = kit.dir .. "/" .. path end
  local sets, log = {}, false
  local keys = {}
  for k in pairs(overrides or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    sets[#sets + 1] = override(k, overrides[k])
    if k == "log_level" or k == "access_log" then log = true end
  end
  local w, err = kit.load(path, sets, log)
  if not w then fail("the policy did not load: " .. err) end
  local p = setmetatable({ w = w, routes = {}, requests = {}, redis = { data = {}, expires = {} },
                           path = path, clients = {} }, P)
  worlds[#worlds + 1] = w
  return p
end

function P:close() self.w:close() end
function P:now() return self.w:now() end
-- p:time() → host.now() as the policy sees it (seconds since the epoch, virtual)
function P:time() return self.w:wall_ms() / 1000 end

-- ------------------------------------------------------------ the remote

function P:route(key, handler)
  assert(type(key) == "string", "p:route(\"METHOD /path\" | \"METHOD url\" | \"*\", handler)")
  local method, target = key:match("^(%S+)%s+(%S+)$")
  if key == "*" then method, target = "*", "*" end
  assert(method, "p:route: key must be \"METHOD /path\", \"METHOD http://...\" or \"*\"")
  table.insert(self.routes, { method = method:upper(), target = target, handler = handler })
end

local function route_for(self, req)
  for i = #self.routes, 1, -1 do -- the latest route wins
    local r = self.routes[i]
    if (r.method == "*" or r.method == req.method) and
       (r.target == "*" or r.target == req.url or r.target == req.path) then
      return r
    end
  end
end

local function answer_http(self, req)
  req.path = req.url:match("^%a[%w+.-]*://[^/?#]*([^?#]*)")
  if req.path == "" then req.path = "/" end
  req.query = req.url:match("%?([^#]*)")
  req.json = json.decode(req.body)
  self.requests[#self.requests + 1] = req
  local r = route_for(self, req)
  if not r then
    -- a method or URL with a line break would end the comment (a forged TAP line): quoted
    local function text(s) return s:find("%c") and show(s) or s end
    tap(("# no route for %s %s: answered \"refused\"\n"):format(text(req.method), text(req.url)))
    return self.w:fail_http(req.id, "refused")
  end
  local h = r.handler
  local res
  if type(h) == "function" then
    res = table.pack(h(req))
  elseif type(h) == "table" and h ~= M.hang then
    res = table.pack(h)
  else
    res = table.pack(h)
  end
  local first = res[1]
  if first == M.hang then return self.w:hang_http(req.id) end
  if first == nil then
    return self.w:fail_http(req.id, res[2] or "refused")
  end
  local status, body, headers = first, res[2], res[3]
  if type(first) == "table" then status, body, headers = first.status or 200, first.body, first.headers end
  if math.type(status) ~= "integer" or status < 100 or status > 599 then
    fail(("the route for %s %s answered status %s: an integer 100..599 expected"):format(
      req.method, req.url, show(status)))
  end
  if body ~= nil and type(body) ~= "string" then
    fail(("the route for %s %s answered a %s body: a string expected"):format(
      req.method, req.url, type(body)))
  end
  if headers ~= nil and type(headers) ~= "table" then
    fail(("the route for %s %s answered headers of type %s: a table expected"):format(
      req.method, req.url, type(headers)))
  end
  for k, v in pairs(headers or {}) do
    if (type(k) ~= "string" and type(k) ~= "number") or (type(v) ~= "string" and type(v) ~= "number") then
      fail(("the route for %s %s answered a header %s = %s: strings expected"):format(
        req.method, req.url, show(k), show(v)))
    end
  end
  self.w:answer_http(req.id, status, body or "", headers)
end

-- ------------------------------------------------------------ Redis

local store = {} -- command → function(p, args) → reply

local function now_ms(self) return self.w:now() end
local function alive(self, k)
  local exp = self.redis.expires[k]
  if exp and exp <= now_ms(self) then
    self.redis.data[k], self.redis.expires[k] = nil, nil
  end
  return self.redis.data[k]
end
-- an integer argument as Redis reads one (string2ll: "12", "-3", "0"; not "0x10", " 1",
-- "1e3", "1.0", "+1", "01", "-0"), or nil
local function int(s)
  if type(s) ~= "string" or not (s == "0" or s:match("^%-?[1-9]%d*$")) then return nil end
  return math.tointeger(tonumber(s))
end
local WRONGTYPE = { err = "WRONGTYPE Operation against a key holding the wrong kind of value" }
local NOTINT = { err = "ERR value is not an integer or out of range" }
local SYNTAX = { err = "ERR syntax error" }
local OVERFLOW = { err = "ERR increment or decrement would overflow" }
local function invalid_expire(cmd) return { err = ("ERR invalid expire time in '%s' command"):format(cmd) } end
-- n + by, or nil when it leaves the 64-bit range (as Redis refuses it)
local function add(n, by)
  if (by > 0 and n > math.maxinteger - by) or (by < 0 and n < math.mininteger - by) then return nil end
  return n + by
end
-- n * unit (1000: seconds → ms), or nil beyond the 64-bit range
local function scale(n, unit)
  if n > math.maxinteger // unit or n < math.mininteger // unit then return nil end
  return n * unit
end

store.PING = function(_, a) return a[2] or "PONG" end
store.GET = function(self, a)
  local v = alive(self, a[2])
  if v == nil then return M.null end
  if type(v) ~= "string" then return WRONGTYPE end
  return v
end
store.SET = function(self, a)
  local k, v, i, ttl, nx, xx = a[2], a[3], 4, nil, false, false
  local now = now_ms(self)
  while a[i] do
    local o = a[i]:upper()
    if o == "EX" or o == "PX" or o == "EXAT" or o == "PXAT" then
      if ttl or a[i + 1] == nil then return SYNTAX end
      local n = int(a[i + 1])
      if not n then return NOTINT end
      local ms = scale(n, (o == "EX" or o == "EXAT") and 1000 or 1)
      if n <= 0 or not ms then return invalid_expire("set") end
      local wall = math.floor(self.w:wall_ms())
      -- EX and PX count from Redis' clock, the wall's: past 2^63 ms from it, refused as there
      if (o == "EX" or o == "PX") and not add(ms, wall) then return invalid_expire("set") end
      ttl = (o == "EXAT" or o == "PXAT") and ms - wall or ms
      i = i + 1
    elseif o == "NX" and not xx then nx = true
    elseif o == "XX" and not nx then xx = true
    else return SYNTAX end
    i = i + 1
  end
  local exists = alive(self, k) ~= nil
  if (nx and exists) or (xx and not exists) then return M.null end
  self.redis.data[k] = v
  self.redis.expires[k] = ttl and now + ttl or nil
  return true
end
store.DEL = function(self, a)
  local n = 0
  for i = 2, #a do
    if alive(self, a[i]) ~= nil then n = n + 1 end
    self.redis.data[a[i]], self.redis.expires[a[i]] = nil, nil
  end
  return n
end
store.UNLINK = store.DEL
store.EXISTS = function(self, a)
  local n = 0
  for i = 2, #a do if alive(self, a[i]) ~= nil then n = n + 1 end end
  return n
end
store.INCRBY = function(self, a)
  local v = alive(self, a[2]) or "0"
  if type(v) ~= "string" then return WRONGTYPE end
  local n, by = int(v), int(a[3])
  if not n or not by then return NOTINT end
  local sum = add(n, by)
  if not sum then return OVERFLOW end
  self.redis.data[a[2]] = tostring(sum)
  return sum
end
store.INCR = function(self, a) return store.INCRBY(self, { a[1], a[2], "1" }) end
store.DECR = function(self, a) return store.INCRBY(self, { a[1], a[2], "-1" }) end
store.DECRBY = function(self, a)
  local by = int(a[3])
  if not by then return NOTINT end
  if by == math.mininteger then return { err = "ERR decrement would overflow" } end
  return store.INCRBY(self, { a[1], a[2], tostring(-by) })
end
local function expire_at(self, k, at)
  if alive(self, k) == nil then return 0 end
  self.redis.expires[k] = at
  return 1
end
-- EXPIRE and co: the key expires at now + n * unit (ms), or at n * unit on the wall clock (at)
local function expire_cmd(cmd, unit, at)
  return function(self, a)
    local n = int(a[3])
    if not n then return NOTINT end
    local ms = scale(n, unit)
    local wall = math.floor(self.w:wall_ms())
    local base = at and wall or 0
    if not ms or not add(ms - base, now_ms(self)) then return invalid_expire(cmd) end
    -- a relative time counts from Redis' clock, the wall's: past 2^63 ms from it, refused
    if not at and not add(ms, wall) then return invalid_expire(cmd) end
    return expire_at(self, a[2], now_ms(self) + ms - base)
  end
end
store.PEXPIRE = expire_cmd("pexpire", 1)
store.EXPIRE = expire_cmd("expire", 1000)
store.PEXPIREAT = expire_cmd("pexpireat", 1, true)
store.EXPIREAT = expire_cmd("expireat", 1000, true)
store.PTTL = function(self, a)
  if alive(self, a[2]) == nil then return -2 end
  local exp = self.redis.expires[a[2]]
  return exp and exp - now_ms(self) or -1
end
store.TTL = function(self, a)
  local ms = store.PTTL(self, a)
  if ms < 0 then return ms end
  return (ms + 500) // 1000
end
local function hash(self, k, create)
  local h = alive(self, k)
  if h == nil and create then h = { hash = {} }; self.redis.data[k] = h end
  if h ~= nil and (type(h) ~= "table" or not h.hash) then return nil, WRONGTYPE end
  return h
end
store.HSET = function(self, a)
  local h, e = hash(self, a[2], true)
  if not h then return e end
  local n = 0
  for i = 3, #a - 1, 2 do
    if h.hash[a[i]] == nil then n = n + 1 end
    h.hash[a[i]] = a[i + 1]
  end
  return n
end
store.HGET = function(self, a)
  local h, e = hash(self, a[2])
  if e then return e end
  local v = h and h.hash[a[3]]
  if v == nil then return M.null end
  return v
end
store.HGETALL = function(self, a)
  local h, e = hash(self, a[2])
  if e then return e end
  local out = {}
  if h then
    local keys = {}
    for k in pairs(h.hash) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do out[#out + 1] = k; out[#out + 1] = h.hash[k] end
  end
  return out
end
store.HDEL = function(self, a)
  local h, e = hash(self, a[2])
  if e then return e end
  local n = 0
  for i = 3, #a do
    if h and h.hash[a[i]] ~= nil then n = n + 1; h.hash[a[i]] = nil end
  end
  return n
end
store.HINCRBY = function(self, a)
  local h, e = hash(self, a[2], true)
  if not h then return e end
  local cur, by = int(h.hash[a[3]] or "0"), int(a[4])
  if not by then return NOTINT end
  if not cur then return { err = "ERR hash value is not an integer" } end
  local n = add(cur, by)
  if not n then return OVERFLOW end
  h.hash[a[3]] = tostring(n)
  return n
end
local function list(self, k, create)
  local l = alive(self, k)
  if l == nil and create then l = { list = {} }; self.redis.data[k] = l end
  if l ~= nil and (type(l) ~= "table" or not l.list) then return nil, WRONGTYPE end
  return l
end
store.RPUSH = function(self, a)
  local l, e = list(self, a[2], true)
  if not l then return e end
  for i = 3, #a do table.insert(l.list, a[i]) end
  return #l.list
end
store.LPUSH = function(self, a)
  local l, e = list(self, a[2], true)
  if not l then return e end
  for i = 3, #a do table.insert(l.list, 1, a[i]) end
  return #l.list
end
store.LLEN = function(self, a)
  local l, e = list(self, a[2])
  if e then return e end
  return l and #l.list or 0
end
store.LRANGE = function(self, a)
  local l, e = list(self, a[2])
  if e then return e end
  local items = l and l.list or {}
  local n = #items
  local from, to = int(a[3]), int(a[4])
  if not from or not to then return NOTINT end
  if from < 0 then from = n + from end
  if to < 0 then to = n + to end
  local out = {}
  for i = math.max(from, 0), math.min(to, n - 1) do out[#out + 1] = items[i + 1] end
  return out
end
store.PUBLISH = function(self, a) return self.w:publish(a[2], a[3]) end

-- p:on_redis(fn): fn(args) answers every command first (args[1] is the command name,
-- upper-cased). It returns the reply (a string, an integer, true for OK, t.null, a list,
-- {err = "..."}), or nil, why to fail the call as a dropped connection does, or nothing
-- at all to let the in-memory store answer.
function P:on_redis(fn) self.redis_handler = fn end

function P:redis_down(down) self.w:redis_down(down and true or false) end

-- the number of arguments, command name included: n exactly, or at least -n (Redis' arity);
-- [2] the most the kit's store understands (EXPIRE's NX/XX/GT/LT options: answer with p:on_redis)
local ARITY = {
  PING = { -1, 2 }, GET = { 2 }, SET = { -3 }, DEL = { -2 }, UNLINK = { -2 }, EXISTS = { -2 },
  INCR = { 2 }, INCRBY = { 3 }, DECR = { 2 }, DECRBY = { 3 }, EXPIRE = { -3, 3 }, PEXPIRE = { -3, 3 },
  EXPIREAT = { -3, 3 }, PEXPIREAT = { -3, 3 }, TTL = { 2 }, PTTL = { 2 }, HSET = { -4 }, HGET = { 3 },
  HGETALL = { 2 }, HDEL = { -3 }, HINCRBY = { 4 }, LPUSH = { -3 }, RPUSH = { -3 }, LRANGE = { 4 },
  LLEN = { 2 }, PUBLISH = { 3 },
}

-- a Redis error for a command with the wrong number of arguments, or nil
local function arity_error(a)
  local n, want = #a, ARITY[a[1]]
  local min = want[1]
  if (min >= 0 and n ~= min) or (min < 0 and n < -min) or (a[1] == "HSET" and n % 2 ~= 0) then
    return { err = ("ERR wrong number of arguments for '%s' command"):format(a[1]:lower()) }
  end
  if want[2] and n > want[2] then
    return { err = ("ERR the test kit's store does not take %s's options (answer it with p:on_redis)")
      :format(a[1]) }
  end
end

local function answer_redis(self, req)
  local a = req.args
  a[1] = a[1]:upper()
  if self.redis_handler then
    local res = table.pack(self.redis_handler(a))
    if res.n > 0 then
      if res[1] == nil then return self.w:fail_redis(req.id, res[2] or "closed") end
      return self.w:answer_redis(req.id, res[1])
    end
  end
  local cmd = store[a[1]]
  if not cmd then
    return self.w:answer_redis(req.id, { err = ("ERR unknown command '%s' (the test kit's store: "
      .. "answer it with p:on_redis)"):format(a[1]) })
  end
  self.w:answer_redis(req.id, arity_error(a) or cmd(self, a))
end

-- ------------------------------------------------------------ running

-- Run until idle, answering the remote and Redis as they are asked.
function P:settle()
  local w = self.w
  w:settle()
  while true do
    local reqs = w:take()
    if #reqs == 0 then return end
    for _, req in ipairs(reqs) do
      if req.kind == "http" then answer_http(self, req) else answer_redis(self, req) end
    end
    w:settle()
  end
end

-- p:advance(ms): move the virtual clock; every timer due on the way fires at its time
function P:advance(ms)
  if type(ms) ~= "number" or not math.tointeger(ms) or ms < 0 then
    error("p:advance(ms): a number of milliseconds >= 0, got " .. show(ms), 2)
  end
  local w = self.w
  if ms > 2^53 - w:now() then
    error(("p:advance(%d): the virtual clock ends at 2^53 ms (it is at %d)"):format(ms, w:now()), 2)
  end
  local target = w:now() + math.tointeger(ms)
  self:settle()
  while true do
    local due = w:next_timer()
    if not due or due > target then break end
    w:advance(due - w:now())
    self:settle()
  end
  w:advance(target - w:now())
  self:settle()
end

function P:publish(channel, message)
  local n = self.w:publish(channel, message)
  self:settle()
  return n
end

function P:subscribers(channel)
  self:settle()
  return self.w:subscribers(channel)
end

-- ------------------------------------------------------------ HTTP clients

local function parse_head(buf)
  local head_end = buf:find("\r\n\r\n", 1, true)
  if not head_end then return nil end
  local head = buf:sub(1, head_end - 1)
  local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d)"))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    headers[name:lower()] = value
  end
  local len = tonumber(headers["content-length"] or 0)
  if status ~= 101 and #buf < head_end + 3 + len then return nil end
  local body = status == 101 and "" or buf:sub(head_end + 4, head_end + 3 + len)
  local rest = buf:sub(head_end + 4 + (status == 101 and 0 or len))
  return { status = status, headers = headers, body = body }, rest
end

local function check_headers(headers)
  for k, v in pairs(headers) do
    if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
      fail(("a request header %s = %s: a name and a string value expected"):format(show(k), show(v)))
    end
  end
end

local function request_text(method, path, headers, body)
  local lines = { ("%s %s HTTP/1.1"):format(method, path) }
  local has_host = false
  check_headers(headers)
  for k, v in pairs(headers) do
    if k:lower() == "host" then has_host = true end
    lines[#lines + 1] = k .. ": " .. v
  end
  if not has_host then table.insert(lines, 2, "Host: statushost.test") end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

local H = {}
H.__index = H

-- p:http{method=, path=, headers=, body=, peer=} → h: a plain HTTP request sent now;
-- h:response() → {status, headers, body}, or nil while it is not answered (a route that
-- waits: advance the clock and ask again)
function P:http(o)
  o = o or {}
  local h = setmetatable({ p = self, id = self.w:connect(o.peer), buf = "" }, H)
  self.w:input(h.id, request_text(o.method or "GET", o.path or "/", o.headers or {}, o.body))
  self:settle()
  return h
end

function H:response()
  if self.res then return self.res end
  self.p:settle()
  local out, ended = self.p.w:output(self.id)
  self.buf = self.buf .. out
  local res = parse_head(self.buf)
  if res then
    self.res = res
    self.p.w:drop(self.id)
    self.p:settle()
  elseif ended then
    fail("the connection ended without an HTTP answer" ..
      (#self.buf > 0 and (": " .. show(self.buf)) or ""))
  end
  return res
end

-- p:request{...} → {status, headers, body}: p:http(...) answered at once
function P:request(o)
  local res = self:http(o):response()
  if not res then
    fail("no HTTP answer yet (a route that waits: use p:http, p:advance, h:response)")
  end
  return res
end

-- ------------------------------------------------------------ WebSocket clients

local C = {}
C.__index = C

-- a client frame: masked (with a zero key, so the payload is as given)
local function frame(opcode, payload, fin)
  local b1 = (fin == false and 0 or 0x80) | opcode
  local n = #payload
  local hdr
  if n < 126 then hdr = string.pack("BB", b1, 0x80 | n)
  elseif n < 65536 then hdr = string.pack(">BBI2", b1, 0x80 | 126, n)
  else hdr = string.pack(">BBI8", b1, 0x80 | 127, n) end
  return hdr .. "\0\0\0\0" .. payload
end

-- p:open{path=, headers=, peer=} → client, after the handshake
function P:open(o)
  o = o or {}
  local headers = {
    Upgrade = "websocket", Connection = "Upgrade",
    ["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==", ["Sec-WebSocket-Version"] = "13",
  }
  check_headers(o.headers or {})
  for k, v in pairs(o.headers or {}) do
    for std in pairs(headers) do
      if std:lower() == k:lower() then headers[std] = nil end
    end
    headers[k] = v
  end
  local c = setmetatable({ p = self, id = self.w:connect(o.peer), buf = "", events = {},
                           message = nil, closed = nil, sent_close = false }, C)
  self.w:input(c.id, request_text("GET", o.path or "/", headers))
  self:settle()
  for _ = 1, 1000 do
    c:_read()
    if c.status or c.ended then break end
    self:settle()
  end
  if not c.status then fail("no answer to the handshake (the upgrade was not decided)") end
  return c
end

-- Take what the server wrote: the handshake's answer, then frames.
function C:_read()
  local out, ended, code = self.p.w:output(self.id)
  self.buf = self.buf .. out
  if not self.status then
    local res, rest = parse_head(self.buf)
    if not res then
      if ended then self.ended = true end
      return
    end
    self.status, self.headers, self.body, self.buf = res.status, res.headers, res.body, rest
    self.protocol = res.headers["sec-websocket-protocol"]
  end
  while self.status == 101 do
    local buf = self.buf
    if #buf < 2 then break end
    local b1, b2 = buf:byte(1, 2)
    local len, hl = b2 & 0x7f, 2
    if len == 126 then
      if #buf < 4 then break end
      len, hl = string.unpack(">I2", buf, 3), 4
    elseif len == 127 then
      if #buf < 10 then break end
      len, hl = string.unpack(">I8", buf, 3), 10
    end
    if #buf < hl + len then break end
    local payload = buf:sub(hl + 1, hl + len)
    self.buf = buf:sub(hl + len + 1)
    local op, fin = b1 & 0x0f, b1 & 0x80 ~= 0
    if op == 8 then
      local code_, reason = 1005, ""
      if #payload >= 2 then code_, reason = string.unpack(">I2", payload), payload:sub(3) end
      self.events[#self.events + 1] = { close = true, code = code_, reason = reason }
      self.closed = code_
      if not self.sent_close then -- answer it, as a browser does
        self.sent_close = true
        self.p.w:input(self.id, frame(8, code_ == 1005 and "" or string.pack(">I2", code_)))
      end
    elseif op == 9 then
      self.p.w:input(self.id, frame(10, payload))
    elseif op == 10 then -- a pong: nothing to do
    elseif op == 0 and self.message then
      self.message.data = self.message.data .. payload
      if fin then
        self.events[#self.events + 1] = self.message
        self.message = nil
      end
    elseif op == 1 or op == 2 then
      local m = { data = payload, binary = op == 2 }
      if fin then self.events[#self.events + 1] = m else self.message = m end
    end
  end
  if ended and not self.ended then
    self.ended = true
    if not self.closed then -- the connection ended without a close frame
      self.closed = 1006
      self.events[#self.events + 1] = { close = true, code = 1006, reason = "", abnormal = true,
                                        server_code = code }
    end
  end
end

function C:_pump()
  self.p:settle()
  self:_read()
end

local function need_open(self, what)
  if self.status ~= 101 then
    fail(("%s: the handshake was refused (%s)"):format(what, tostring(self.status)))
  end
end

function C:send(text)
  need_open(self, "send")
  if type(text) ~= "string" then error("c:send: a string expected, got " .. type(text), 2) end
  self.p.w:input(self.id, frame(1, text))
  self:_pump()
end

function C:send_binary(data)
  need_open(self, "send_binary")
  if type(data) ~= "string" then error("c:send_binary: a string expected, got " .. type(data), 2) end
  self.p.w:input(self.id, frame(2, data))
  self:_pump()
end

-- c:send_raw(bytes): bytes as they are (a hand-made frame, say)
function C:send_raw(bytes)
  self.p.w:input(self.id, bytes)
  self:_pump()
end

function C:close(code, reason)
  need_open(self, "close")
  if not self.sent_close then
    self.sent_close = true
    local payload = code and (string.pack(">I2", code) .. (reason or "")) or ""
    self.p.w:input(self.id, frame(8, payload))
  end
  self:_pump()
end

-- c:drop(): the connection dies without a close frame
function C:drop()
  self.p.w:drop(self.id)
  self:_pump()
end

local function describe(ev)
  if not ev then return "nothing" end
  if ev.close then
    return ev.abnormal and ("the connection's end without a close frame (1006)")
      or ("close %d %s"):format(ev.code, show(ev.reason))
  end
  return (ev.binary and "binary frame " or "frame ") .. show(ev.data)
end

local function next_event(self)
  self:_pump()
  return table.remove(self.events, 1)
end

-- c:expect_frame(x) → text, decoded JSON: the next message is a text frame matching x
function C:expect_frame(expected)
  need_open(self, "expect_frame")
  local ev = next_event(self)
  if not ev or ev.close or ev.binary then
    fail(("expected a frame matching %s, got %s"):format(show(expected), describe(ev)))
  end
  local text = ev.data
  local decoded = json.decode(text)
  local ok
  if type(expected) == "string" then ok = text == expected
  elseif getmetatable(expected) == Pattern then ok = text:find(expected.p) ~= nil
  elseif type(expected) == "table" then ok = decoded ~= nil and subset(expected, decoded)
  elseif type(expected) == "function" then ok = expected(text, decoded)
  elseif expected == nil then ok = true
  else error("expect_frame: a string, t.pattern(p), a table or a function", 2) end
  if not ok then
    local want = getmetatable(expected) == Pattern and ("pattern " .. show(expected.p)) or show(expected)
    fail(("frame does not match\n     got: %s\nexpected: %s"):format(text, want))
  end
  return text, decoded
end

function C:expect_binary(expected)
  need_open(self, "expect_binary")
  local ev = next_event(self)
  if not ev or ev.close or not ev.binary then
    fail(("expected a binary frame, got %s"):format(describe(ev)))
  end
  if expected ~= nil and ev.data ~= expected then
    fail(("binary frame differs\n     got: %s\nexpected: %s"):format(show(ev.data), show(expected)))
  end
  return ev.data
end

-- c:expect_close(code [, reason]): the next thing is the server's close (1006: the
-- connection ended without one)
function C:expect_close(code, reason)
  need_open(self, "expect_close")
  local ev = next_event(self)
  if not ev or not ev.close then
    fail(("expected close %s, got %s"):format(tostring(code), describe(ev)))
  end
  if code and ev.code ~= code then
    fail(("expected close %d, got %s"):format(code, describe(ev)))
  end
  if reason and ev.reason ~= reason then
    fail(("expected close reason %s, got %s"):format(show(reason), describe(ev)))
  end
  return ev.code, ev.reason
end

-- c:expect_no_frame(): nothing arrived (and the connection is still open)
function C:expect_no_frame()
  local ev = next_event(self)
  if ev then fail("expected nothing, got " .. describe(ev)) end
end

-- c:frames() → every message received and not yet expected (texts; binary ones too)
function C:frames()
  self:_pump()
  local out = {}
  while self.events[1] and not self.events[1].close do
    out[#out + 1] = table.remove(self.events, 1).data
  end
  return out
end

return M
