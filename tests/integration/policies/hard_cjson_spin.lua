-- "spin N": cjson.decode of a 2 MB JSON array of numbers, N times: each call is a few VM
-- instructions, its C work (and the collection of its garbage) counted by nothing.
local cjson = require "cjson"
local doc = "[" .. string.rep("1,", 1000000) .. "1]"
return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^spin (%d+)$"))
    for _ = 1, n do cjson.decode(doc) end
    conn:send("done")
  end,
}
