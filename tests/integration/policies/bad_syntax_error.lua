-- a syntax error on line 3
return {
  on_message = function(conn, text) conn:send(text) end end,
}
