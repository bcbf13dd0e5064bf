-- "deep N": cjson.decode_max_depth(N + 1) (refused past 1000), then cjson.decode in pcall
-- of N "[" (arrays
-- that are never closed: lua-cjson makes N nested tables, with a Lua stack slot each,
-- before it finds the text ends). The guard lets it run uncapped, counting on at most 40
-- bytes of Lua memory per byte of text. Answers "heap <bytes>": the Lua heap right
-- after the call, before anything else is allocated.
local cjson = require "cjson"
return {
  on_message = function(conn, text)
    local n = tonumber(text:match("^deep (%d+)$"))
    pcall(cjson.decode_max_depth, n + 1) -- refused past 1000 (the C stack): then decode fails
    local doc = string.rep("[", n)
    collectgarbage()
    pcall(cjson.decode, doc)
    local heap = collectgarbage("count") * 1024
    conn:send(string.format("heap %d", math.floor(heap)))
  end,
}
