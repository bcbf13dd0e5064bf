-- test_attack13_policy.py: on_handshake chooses the subprotocol "q" when the client offered it.
return {
  on_handshake = function(req)
    local offer = req.headers["sec-websocket-protocol"] or ""
    for token in offer:gmatch("[^,%s]+") do
      if token == "q" then return true, "q" end
    end
  end,
}
