-- echo_text.lua — echoes text; has no on_binary, so binary messages close 1003.
return {
  on_message = function(conn, text)
    conn:send(text)
  end,
}
