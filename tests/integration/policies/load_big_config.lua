-- on_config takes 8 MiB of Lua memory (test_cli.py: it runs under lua_max_memory as --set
-- gives it, else the default 256 MiB, like the main chunk).
return {
  on_config = function() return #string.rep("x", 8 * 1024 * 1024) > 0 end,
  on_message = function(conn) conn:send("ok") end,
}
