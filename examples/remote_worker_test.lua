-- examples/remote_worker_test.lua — the tests of examples/remote_worker.lua (the seed's
-- remote as a policy: a route that publishes each task's completion, then answers):
--
--   statushost --test examples/remote_worker_test.lua
local t = require "statushost.test"

-- The policy, and the list its PUBLISH commands go to (then to the kit's store).
local function policy(overrides)
  local p = t.policy("remote_worker.lua", overrides or {})
  local published = {}
  p:on_redis(function(args)
    if args[1] == "PUBLISH" then published[#published + 1] = { args[2], args[3] } end
  end)
  return p, published
end

local JSON = { ["Content-Type"] = "application/json" }
local OK = '{"status":0,"msg":"success","data":null}'

t.test("immediate: every task is published done, then 200", function()
  local p, published = policy{ immediate = true }
  local res = p:request{ method = "POST", path = "/remote/message", headers = JSON,
                         body = '{"data":[{"id":1},{"id":"b"}],"fid":"f1"}' }
  t.eq(res.status, 200)
  t.eq(res.body, OK)
  t.eq(res.headers["content-type"], "application/json")
  t.eq(published, { { "ws:fid:f1", '{"id":1,"status":"已完成"}' },
                    { "ws:fid:f1", '{"id":"b","status":"已完成"}' } })
end)

t.test("ticks: tasks complete on the virtual clock, the answer comes when all are done", function()
  local p, published = policy{ tick_ms = 500, complete_probability = 1 }
  local h = p:http{ method = "POST", path = "/remote/message", headers = JSON,
                    body = '{"data":[{"id":1},{"id":2}],"fid":"f2"}' }
  p:advance(499)
  t.eq(#published, 0, "nothing before the first tick")
  t.eq(h:response(), nil, "no answer yet")
  p:advance(1)
  t.eq(#published, 2)
  t.eq(h:response().status, 200)
end)

t.test("a task that never completes keeps the request waiting", function()
  local p, published = policy{ tick_ms = 100, complete_probability = 0 }
  local h = p:http{ method = "POST", path = "/remote/message", headers = JSON,
                    body = '{"data":[{"id":1}],"fid":"f3"}' }
  p:advance(5000)
  t.eq(#published, 0)
  t.eq(h:response(), nil)
end)

t.test("the seed's form encoding is understood", function()
  local p, published = policy{ immediate = true }
  local res = p:request{ method = "POST", path = "/remote/message",
                         headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
                         body = "data%5B0%5D%5Bid%5D=7&data%5B0%5D%5Bstatus%5D=x&fid=42" }
  t.eq(res.status, 200)
  t.eq(published, { { "ws:fid:42", '{"id":"7","status":"已完成"}' } })
end)

t.test("a body without data and fid gets 400", function()
  local p, published = policy{ immediate = true }
  local res = p:request{ method = "POST", path = "/remote/message", headers = JSON, body = "[]" }
  t.eq(res.status, 400)
  t.like(res.body, '"status":1')
  t.eq(#published, 0)
end)

t.test("other paths get 404", function()
  local p = policy()
  t.eq(p:request{ path = "/nope" }.status, 404)
end)
