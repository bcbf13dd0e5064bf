-- The host's replacements of base functions and its table helper, checked where
-- policies run (a script generation, with lua_max_memory): `statushost --check` of
-- this file exits 0 only if every assertion below holds (test_cli.py).
local host = require "statushost"

local function eq(got, want, what)
  if got ~= want then
    error(("%s: got %s, want %s"):format(what, tostring(got), tostring(want)), 2)
  end
end

-- type: the names from its upvalues, the base library's results and error
eq(type(nil), "nil", "nil") eq(type(false), "boolean", "boolean")
eq(type(1), "number", "integer") eq(type(1.5), "number", "float")
eq(type("s"), "string", "string") eq(type({}), "table", "table")
eq(type(print), "function", "C function") eq(type(eq), "function", "Lua function")
eq(type(coroutine.create(print)), "thread", "thread")
eq(type(host.json.null), "userdata", "light userdata")
eq(type(io.stdout), "userdata", "full userdata")
eq(type(1, 2), "number", "extra arguments")
eq(select("#", type(nil)), 1, "one result")
local ok, err = pcall(type)
eq(ok, false, "type() raises")
eq(err, "bad argument #1 to 'type' (value expected)", "type()'s error")

-- host.table_new: empty tables of any room, grown as usual past it
local t = host.table_new(4, 2)
eq(next(t), nil, "empty") eq(#t, 0, "no members") eq(getmetatable(t), nil, "plain")
for i = 1, 100 do t[i] = i end
t.k = "v"
eq(#t, 100, "grows past its room") eq(t.k, "v", "hash keys")
eq(next(host.table_new()), nil, "no sizes")
ok, err = pcall(host.table_new, -1)
eq(tostring(err), "host.table_new: bad argument #1 (must not be negative)", "negative")

return {
  -- on_config runs under lua_max_memory (the main chunk runs before the config is
  -- known): room past it is the script's error, not the process's
  on_config = function()
    local fine, why = pcall(host.table_new, 16777216, 16777216)
    eq(fine, false, "room past lua_max_memory")
    eq(tostring(why):find("not enough memory", 1, true) ~= nil, true, "its error: " .. tostring(why))
    eq(type(host.table_new(1000, 1000)), "table", "room under it")
  end,
}
