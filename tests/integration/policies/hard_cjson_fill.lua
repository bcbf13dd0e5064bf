-- "cjson N": fill the Lua heap to lua_max_memory, then call cjson.decode (the lua-cjson
-- module the host preloads) N times in pcall on a 256 KB JSON string, giving back a few
-- bytes before each of the first 64 calls (until the calls reach the decoder). lua-cjson
-- mallocs a scratch buffer of the document's size per call, decodes the string into it,
-- and frees it only when the decode returns or fails its own way: the "not enough memory"
-- raised by the push of the result leaves the buffer. Answers "done <failures>".
-- "cjson N new" does the same with an instance of cjson.new(), "cjson N safe" with
-- cjson.safe.decode (which answers nil, "why" instead of raising).
local heap_fill = require "heap_fill"
local cjson = require "cjson"
local decoders = { module = cjson.decode, new = cjson.new().decode,
                   safe = require("cjson.safe").decode }

local doc = '"' .. string.rep("v", 256 * 1024) .. '"'

return {
  on_message = function(conn, text)
    local n, which = text:match("^cjson (%d+) ?(%a*)$")
    n = tonumber(n)
    local decode = decoders[which ~= "" and which or "module"]
    local heap = heap_fill()
    local failed = 0
    for i = 1, n do
      if i <= 64 then heap:give() end -- ~30 bytes back
      local ok, v = pcall(decode, doc)
      if not (ok and v) then failed = failed + 1 end
    end
    heap:free()
    conn:send("done " .. failed)
  end,
}
