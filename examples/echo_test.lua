-- examples/echo_test.lua — the tests of examples/echo.lua:  statushost --test examples/echo_test.lua
local t = require "statushost.test"

t.test("text comes back as text", function()
  local p = t.policy("echo.lua")
  local c = p:open{ path = "/" }
  t.eq(c.status, 101, "the upgrade is accepted")
  c:send("hello")
  c:expect_frame("hello")
  c:send('{"a":1}')
  c:expect_frame{ a = 1 }
end)

t.test("binary comes back as binary", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send_binary("\0\1\2\255")
  c:expect_binary("\0\1\2\255")
end)

t.test("the client's close is answered with its code", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:close(4000, "bye")
  c:expect_close(4000)
end)

t.test("a text message that is not UTF-8 closes 1007", function()
  local p = t.policy("echo.lua")
  local c = p:open{}
  c:send("\xff\xfe")
  c:expect_close(1007)
end)
