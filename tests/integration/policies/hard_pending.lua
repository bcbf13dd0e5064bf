-- hard_pending.lua — F6: 30,000 tasks at once, without nesting Lua in C.
--   "spawn"   spawns 30,000 tasks that each conn:subscribe("hard:f6:<id>")
--             (the test has stopped Redis, so the confirmation is pending);
--             logs "hard: f6 all started" when the last has started and
--             "hard: f6 all ended ok=<n> err=<n>" when the last has ended;
--             answers "spawned"
--   "unsub"   conn:unsubscribe of that channel → "unsub:<result>"
--   "chain"   a task that spawns a task that spawns … 30,000 deep; each
--             checks that its parent had returned from host.spawn before it
--             started; the last logs "hard: chain reached <n> early=<n>", a
--             failed spawn logs "hard: chain broke at <i>: <err>"
local host = require "statushost"

local N = 30000

local function chain(i, parent)
  local early = (parent and not parent.returned) and 1 or 0
  local me = { returned = false, early = (parent and parent.early or 0) + early }
  if i < N then
    local ok, err = host.spawn(chain, i + 1, me)
    if not ok then host.log.warn("hard: chain broke at", i, tostring(err)) end
  else
    host.log.info(string.format("hard: chain reached %d early=%d", i, me.early))
  end
  me.returned = true
end

return {
  config = { max_tasks_per_conn = 100000 },
  on_message = function(conn, text)
    local ch = "hard:f6:" .. conn.id
    if text == "spawn" then
      local started, ended, ok_n, err_n = 0, 0, 0, 0
      for _ = 1, N do
        host.spawn(function()
          started = started + 1
          if started == N then host.log.info("hard: f6 all started") end
          local ok = conn:subscribe(ch)
          if ok then ok_n = ok_n + 1 else err_n = err_n + 1 end
          ended = ended + 1
          if ended == N then
            host.log.info(string.format("hard: f6 all ended ok=%d err=%d", ok_n, err_n))
          end
        end)
      end
      conn:send("spawned")
    elseif text == "unsub" then
      conn:send("unsub:" .. tostring(conn:unsubscribe(ch)))
    elseif text == "chain" then
      chain(1, nil)
      conn:send("chained")
    else
      conn:send(text)
    end
  end,
}
