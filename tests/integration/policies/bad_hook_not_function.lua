-- on_message is a string
return {
  on_message = "conn:send(text)",
}
