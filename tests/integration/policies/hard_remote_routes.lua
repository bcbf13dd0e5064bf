-- hard_remote_routes.lua — GET /fetch: host.http.request{url = config.remote}; answers 200 with
-- one line per response header, "name: value" (a newline in a value written \n), sorted; POST /post: the request's body
-- POSTed to config.remote, answers "<status> <body>" or 502 "<err>"; GET /probe?<path>: GETs
-- config.remote .. <path> with number-valued headers, answers the status, the body's length, ends
-- and one line per response header (test_hardening.py)
local host = require "statushost"

return {
  config = { remote = "" },
  routes = {
    ["POST /post"] = function(req)
      local res, err = host.http.request{ method = "POST", url = host.config.remote,
                                          body = req.body, timeout_ms = 5000 }
      if not res then return 502, tostring(err) end
      return 200, res.status .. " " .. res.body
    end,
    ["GET /probe"] = function(req)
      local res, err = host.http.request{ url = host.config.remote .. req.query, timeout_ms = 5000,
                                          headers = { ["X-Int"] = 42, ["X-Float"] = 1.5,
                                                      ["X-Str"] = "s" } }
      if not res then return 502, tostring(err) end
      local lines = { "status " .. res.status,
                      "body " .. #res.body .. " " .. res.body:sub(1, 4) .. " " .. res.body:sub(-4) }
      for k, v in pairs(res.headers) do lines[#lines + 1] = "h " .. k .. ": " .. v:gsub("\n", "\\n") end
      table.sort(lines)
      return 200, table.concat(lines, "\n")
    end,
    ["GET /fetch"] = function()
      local res, err = host.http.request{ url = host.config.remote, timeout_ms = 5000 }
      if not res then return 502, tostring(err) end
      local lines = {}
      for k, v in pairs(res.headers) do lines[#lines + 1] = k .. ": " .. v:gsub("\n", "\\n") end
      table.sort(lines)
      return 200, table.concat(lines, "\n")
    end,
  },
}
