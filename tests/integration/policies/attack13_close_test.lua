-- test_attack13_policy.py: kit tests stopped by --cpu-ms while a <close> handler of theirs
-- loops (the test's own coroutine; a coroutine.wrap; one kept for a later test to close).
local t = require "statushost.test"
local function spin() while true do end end
local saved

t.test("over time, its close handler looping", function()
  local g <close> = setmetatable({}, {__close = spin})
  spin()
end)
t.test("over time in a wrap, its close handler looping", function()
  coroutine.wrap(function()
    local g <close> = setmetatable({}, {__close = spin})
    spin()
  end)()
end)
t.test("over time in a coroutine kept", function()
  saved = coroutine.create(function()
    local g <close> = setmetatable({}, {__close = spin})
    spin()
  end)
  coroutine.resume(saved)
end)
t.test("the kept one closed", function()
  t.eq(coroutine.close(saved), false)
end)
t.test("a block closes its variables", function()
  local closed = false
  do
    local g <close> = setmetatable({}, {__close = function() closed = true end})
  end
  t.ok(closed)
end)
t.test("over time in xpcall, its handler looping", function()
  xpcall(spin, spin)
end)
t.test("after it", function()
  t.eq(select(2, xpcall(error, function(e) return "h:" .. e end, "x", 0)), "h:x")
end)
