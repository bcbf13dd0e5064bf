-- "fill NAME N SIZE": N values of SIZE bytes under the keys 1..N of host.shared(NAME),
-- made without max_bytes (its capacity is shared_dict_max_bytes). Answers
-- "<live keys> <forcible sets> <the newest value's length>", once the keys are counted.
local host = require "statushost"

return {
  on_message = function(conn, text)
    local name, n, size = text:match("^fill (%w+) (%d+) (%d+)$")
    local d = host.shared(name)
    local v = ("v"):rep(tonumber(size))
    local forcible = 0
    for i = 1, tonumber(n) do
      local ok, err, f = d:set(i, v)
      assert(ok, err)
      if f then forcible = forcible + 1 end
    end
    conn:send(("%d %d %d"):format(#d:get_keys(0), forcible, #(d:get(n) or "")))
  end,
}
