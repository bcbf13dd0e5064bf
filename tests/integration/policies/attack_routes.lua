-- test_attack_policy.py: routes that answer in odd shapes.
local host = require "statushost"
return {
  routes = {
    ["GET /no-content"] = function() return 204 end,
    ["GET /no-content-body"] = function() return 204, "a body a 204 cannot have" end,
    ["GET /not-modified"] = function() return 304, "", {ETag = '"v1"'} end,
    ["GET /ok"] = function() return 200, "ok" end,
  },
}
