-- hard_http.lua — routes for test_hardening.py (F14, F5):
--   GET /f14       host.http.request to config.remote with 60 headers whose
--                  values are numbers (X-N<i> = i*1000+i); answers the remote's body
--   GET /f14ct     answers with headers {["Content-Type"] = 12345}
--   GET /f5        a 1,500-byte Content-Type and 10 × 1,000-byte X-Pad headers (< 16 KiB)
--   GET /f5big     the same Content-Type and 20 × 1,000-byte X-Pad headers (> 16 KiB)
--   GET /ctlower?N {["content-type"] = "text/x-lower", ["X-1"] = "1", ... ["X-N"] = "N"}
local host = require "statushost"

local CTYPE = "text/x-" .. string.rep("c", 1493) -- 1,500 bytes

local function pads(n)
  local h = { ["Content-Type"] = CTYPE }
  for i = 1, n do
    h[string.format("X-Pad-%02d", i)] = string.rep(string.char(96 + i), 1000)
  end
  return h
end

return {
  config = { remote = "" },
  routes = {
    ["GET /f14"] = function()
      local h = {}
      for i = 1, 60 do h["X-N" .. i] = i * 1000 + i end
      -- a GC that finishes a whole cycle at every allocation check (pause 1%,
      -- and a full collection so that the new pause applies now): a string
      -- the core let go of is freed, and its memory reused, at once
      collectgarbage("incremental", 1, 1000)
      collectgarbage()
      local res, err = host.http.request{ url = host.config.remote, headers = h,
                                          timeout_ms = 5000 }
      collectgarbage("incremental", 200, 100) -- Lua's defaults
      if not res then return 502, "request failed: " .. tostring(err) end
      return 200, res.body
    end,
    ["GET /f14ct"] = function()
      return 200, "ct", { ["Content-Type"] = 12345 }
    end,
    ["GET /f5"] = function() return 200, "f5", pads(10) end,
    ["GET /f5big"] = function() return 200, "f5big", pads(20) end,
    ["GET /ctlower"] = function(req)
      local h = { ["content-type"] = "text/x-lower" }
      for i = 1, tonumber(req.query) or 7 do h["X-" .. i] = tostring(i) end
      return 200, "lower", h
    end,
  },
}
