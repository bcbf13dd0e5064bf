-- a core config key of the wrong type
return {
  config = { max_connections = "many" },
  on_message = function(conn, text) conn:send(text) end,
}
