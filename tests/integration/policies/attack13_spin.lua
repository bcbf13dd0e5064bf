-- attack13_spin.lua — "spin" keeps the loop busy (so what a client sends
-- meanwhile waits whole in the socket): it creates $ATTACK13_DIR/spinning,
-- then spins until $ATTACK13_DIR/go exists (5 s of CPU at most). Every message
-- is answered "re:<its first 8 bytes>".
return {
  config = { lua_max_instructions = 2000000000 },
  on_message = function(conn, text)
    if text == "spin" then
      local dir = assert(os.getenv("ATTACK13_DIR"))
      assert(io.open(dir .. "/spinning", "w")):close()
      local t = os.clock()
      while os.clock() - t < 5 do
        local go = io.open(dir .. "/go")
        if go then
          go:close()
          break
        end
      end
    end
    conn:send("re:" .. text:sub(1, 8))
  end,
}
