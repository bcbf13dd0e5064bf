-- test_attack13_policy.py: host.http.request with framing headers of the policy's own.
--   GET /te   a POST with Transfer-Encoding: chunked over a body holding a second request
--   GET /cl   a POST whose Content-Length is not its body's
--   GET /ok   a POST with plain headers
-- Each answers 200 "raised: <error>" or "returned: <status or error>".
local host = require "statushost"
local url = os.getenv("ATTACK13_REMOTE") or "http://remote.test/jobs"

local function call(headers)
  local ok, r, err = pcall(host.http.request, {method = "POST", url = url, headers = headers,
    body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: remote.test\r\n\r\n", timeout_ms = 2000})
  if not ok then return 200, "raised: " .. tostring(r) end
  return 200, "returned: " .. tostring(r and r.status or err)
end

return {
  routes = {
    ["GET /te"] = function() return call({["Transfer-Encoding"] = "chunked"}) end,
    ["GET /cl"] = function() return call({["Content-Length"] = "5"}) end,
    ["GET /ok"] = function() return call({["X-Job"] = "1"}) end,
  },
}
