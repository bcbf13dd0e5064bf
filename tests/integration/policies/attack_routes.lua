-- test_attack_policy.py: routes that answer in odd shapes.
local host = require "statushost"
return {
  routes = {
    ["GET /no-content"] = function() return 204 end,
    ["GET /no-content-body"] = function() return 204, "a body a 204 cannot have" end,
    ["GET /not-modified"] = function() return 304, "", {ETag = '"v1"'} end,
    ["GET /ok"] = function() return 200, "ok" end,
    ["GET /exit"] = function() os.exit(3, true) end,
    -- 40 references to one 8 MiB string: a line of 320 MiB, of which the log keeps 16 KiB
    ["GET /log-big"] = function()
      local s = string.rep("a", 8 * 1024 * 1024)
      local args = {}
      for i = 1, 40 do args[i] = s end
      host.log.warn("big:", table.unpack(args))
      host.log.warn(setmetatable({}, {__tostring = function() return s end}), s)
      return 200, "logged"
    end,
  },
}
