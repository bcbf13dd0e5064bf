-- fails while loading
local x = nil
return { on_message = x.field }
