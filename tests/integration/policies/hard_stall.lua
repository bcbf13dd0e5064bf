-- A hook stuck inside one long C call (a pattern match that takes minutes):
-- the instruction budget cannot interrupt it; the loop watchdog must.
return {
    config = { loop_stall_ms = 300 },
    on_message = function(conn, text)
        if text == "stall" then
            local s = string.rep("a", 20000)
            string.find(s, ".-.-.-b") -- O(n^3): never returns in a test's time
        end
        conn:send(text)
    end,
}
