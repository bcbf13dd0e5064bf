-- test_attack_policy.py: host.http.request with headers that would break its framing.
local host = require "statushost"
local function try(headers, body)
  local ok, res, err = pcall(host.http.request, {method = "POST", url = host.config.attack_remote,
                                                   headers = headers, body = body})
  if not ok then return "raised: " .. tostring(res) end
  return res and tostring(res.status) or ("nil, " .. tostring(err))
end
return {
  config = { attack_remote = "" },
  routes = {
    ["GET /cases"] = function()
      return 200, table.concat({
        try({["Content-Length"] = "5"}, "abc"),  -- 2 bytes short: the remote would wait
        try({["Content-Length"] = "1"}, "abc"),  -- 2 bytes over: read as the next request
        try({["content-length"] = 3}, "abc"),    -- the body's own: fine
        try({["X-Token"] = "a\0b"}, "abc"),      -- a NUL: cut at it, before
      }, "\n")
    end,
  },
}
