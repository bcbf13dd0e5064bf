-- a policy whose tasks spawn each other for ever: the kit must say so, not hang
local t = require "statushost.test"
t.test("a chain of spawned tasks", function()
  local p = t.policy("ops_spawn_chain.lua")
  local c = p:open{}
  c:send("spawn")
  c:expect_frame("spawned")
end)
t.test("the next test still runs", function() t.ok(true) end)
