-- "enc N K keep|nokeep": cjson.encode_keep_buffer(keep), then cjson.encode in pcall, N
-- times, of a table holding K times the same 64 KB string: 64*K KB of JSON (lua-cjson's
-- C buffer) made from 64 KB of Lua memory; past lua_max_memory the push of the result is
-- refused ("not enough memory"). Answers "done <failures>".
local cjson = require "cjson"
local s = string.rep("x", 65536)
return {
  on_message = function(conn, text)
    local n, k, mode = text:match("^enc (%d+) (%d+) (%a+)$")
    n, k = tonumber(n), tonumber(k)
    cjson.encode_keep_buffer(mode == "keep")
    local t = {}
    for i = 1, k do t[i] = s end
    local failed = 0
    for _ = 1, n do
      if not pcall(cjson.encode, t) then failed = failed + 1 end
    end
    conn:send("done " .. failed)
  end,
}
