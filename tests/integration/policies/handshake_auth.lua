-- handshake_auth.lua — on_handshake refuses with 401 unless the query string
-- carries token=good; accepted connections echo text.
return {
  on_handshake = function(req)
    if not string.find(req.query or "", "token=good", 1, true) then
      return false, 401, "token required\n"
    end
  end,
  on_message = function(conn, text)
    conn:send(text)
  end,
}
