-- Two tasks of one connection subscribe to the same channel, the second while
-- the first is still waiting for Redis's confirmation: both return once it
-- came, in the order they asked.
local host = require "statushost"
return {
    on_message = function(conn, ch)
        for _, who in ipairs { "A", "B" } do
            host.spawn(function()
                local ok, err = conn:subscribe(ch)
                conn:send(who .. " " .. tostring(ok) .. " " .. tostring(err))
            end)
        end
    end,
}
