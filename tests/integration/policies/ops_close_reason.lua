-- ops_close_reason.lua — closes with the reason the client asks for: "bad" → invalid
-- UTF-8 ("\xff\xfe"), "nul" → "a\0b".
local host = require("statushost")
return {
  on_message = function(conn, text)
    local reason = text == "bad" and "\255\254" or "a\0b"
    local ok, err = pcall(conn.close, conn, 4000, reason)
    if not ok then conn:send("refused: " .. tostring(err)); conn:close(4000, "refused") end
  end,
}
