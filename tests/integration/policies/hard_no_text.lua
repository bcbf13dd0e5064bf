-- hard_no_text.lua — a policy without on_message: a text message closes 1003.
return {
  on_binary = function(conn, data) conn:send(data, "binary") end,
}
