-- test_attack_policy.py: on_handshake refusals with headers of every kind.
return {
  on_handshake = function(req)
    if req.path == "/retry" then -- a number, as a route may give
      return false, 429, "slow down\n", {["Retry-After"] = 30, ["X-Limit"] = 1.5}
    elseif req.path == "/crlf" then
      return false, 403, "no\n", {["X-A"] = "a\r\nSet-Cookie: x=1"}
    elseif req.path == "/proto" then
      return true, "q"
    elseif req.path == "/proto-crlf" or req.path == "/proto-nul" then
      -- the hook rewrites the offer it is checked against, then "chooses" from it
      local p = req.path == "/proto-crlf" and "a\r\nSet-Cookie:x=1" or "a\0b"
      req.headers["sec-websocket-protocol"] = p
      return true, p
    elseif req.path == "/bool" then
      return false, 403, "no\n", {["X-A"] = true}
    end
  end,
  routes = {
    ["GET /retry"] = function() return 429, "slow down\n", {["Retry-After"] = 30, ["X-Limit"] = 1.5} end,
  },
}
