-- A main chunk that takes 8 MiB of Lua memory while the script loads, garbage once it
-- has returned (test_cli.py: the load runs under lua_max_memory as --set gives it, else
-- the default 256 MiB).
local size = #string.rep("x", 8 * 1024 * 1024)
return {
  on_message = function(conn) conn:send(tostring(size)) end,
}
