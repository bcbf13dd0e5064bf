-- "gc_loop": a finalizer that loops forever, put on io's file metatable (getmetatable
-- reaches it: the __gc ban is on setmetatable only); a file is made garbage and collected.
return {
  on_message = function(conn, text)
    getmetatable(io.stdout).__gc = function() while true do end end
    io.open("/dev/null")
    collectgarbage()
    conn:send("survived")
  end,
}
