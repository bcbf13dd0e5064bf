-- hard_handshake.lua — on_handshake answers by path (the policy author's kit):
--   /r401      return 401                  (not a verdict: 500)
--   /nil401    return nil, 401             (not a verdict: 500)
--   /denied    return "denied"             (not a verdict: 500)
--   /table     return {status = 401}       (not a verdict: 500)
--   /f700      return false, 700           (no such status: 500)
--   /f401h     return false, 401, "no\n", {["WWW-Authenticate"] = "Bearer"}
--   /v2        return true, "chat.v2"
--   /v3        return true, "chat.v3"      (500 unless the client offered it)
--   /meta_raise  req.headers and req itself get an __index that raises (client_ip removed),
--                then return true, "chat.v2"
--   /meta_loop   the same with an __index that loops forever
--   /slow      logs "hard: handshake sleeping", sleeps 3 s, accepts (F15)
--   else       accept
local host = require "statushost"

local verdicts = {
  ["/r401"] = function() return 401 end,
  ["/nil401"] = function() return nil, 401 end,
  ["/denied"] = function() return "denied" end,
  ["/table"] = function() return { status = 401 } end,
  ["/f700"] = function() return false, 700 end,
  ["/f401h"] = function() return false, 401, "no\n", { ["WWW-Authenticate"] = "Bearer" } end,
  ["/v2"] = function() return true, "chat.v2" end,
  ["/v3"] = function() return true, "chat.v3" end,
  ["/meta_raise"] = function(req)
    local mt = {__index = function() error("hard: a metamethod ran outside the hook") end}
    req.headers = setmetatable({}, mt)
    req.client_ip = nil
    setmetatable(req, mt)
    return true, "chat.v2"
  end,
  ["/meta_loop"] = function(req)
    local mt = {__index = function() while true do end end}
    req.headers = setmetatable({}, mt)
    req.client_ip = nil
    setmetatable(req, mt)
    return true
  end,
  ["/slow"] = function()
    host.log.info("hard: handshake sleeping")
    local ok, err = host.sleep(3000)
    host.log.info("hard: handshake sleep ended", tostring(ok), tostring(err))
  end,
}

return {
  on_handshake = function(req)
    local f = verdicts[req.path]
    if f then return f(req) end
  end,
  on_message = function(conn, text) conn:send(text) end,
}
