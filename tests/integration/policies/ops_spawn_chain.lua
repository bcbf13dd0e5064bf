-- ops_spawn_chain.lua — "spawn" starts a chain of tasks, each spawning the next before it
-- returns (a retry loop written with host.spawn); "ping" answers "pong".
local host = require("statushost")
local n = 0
local function again() n = n + 1; host.spawn(again) end
return {
  on_message = function(conn, text)
    if text == "spawn" then host.spawn(again); conn:send("spawned")
    else conn:send("pong " .. n) end
  end,
}
