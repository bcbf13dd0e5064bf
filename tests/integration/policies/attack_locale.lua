-- test_attack_policy.py: a policy that sets the process's locale to one with a decimal comma.
local host = require "statushost"
local cjson = require "cjson"
return {
  routes = {
    ["GET /setlocale"] = function()
      local ok, err = pcall(os.setlocale, "de_DE.UTF-8")
      local ok2, err2 = pcall(os.setlocale, "de_DE.UTF-8", "numeric")
      return 200, table.concat({tostring(ok), tostring(err), tostring(ok2), tostring(err2),
                                tostring(os.setlocale()), tostring(os.setlocale(nil, "numeric"))}, "\n")
    end,
    ["GET /numbers"] = function()
      return 200, cjson.encode({a = 1.5}) .. " " .. host.json.encode({b = 2.5}) .. " " .. tostring(3.5)
    end,
  },
}
