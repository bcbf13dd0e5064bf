-- test_attack13_policy.py: a binary chunk (string.dump) written to a file, then loaded by
-- loadfile, dofile and require. GET /b answers the three outcomes, one a line.
local host = require "statushost"

local function outcome(ok, v)
  if not ok then return "error: " .. (tostring(v):gsub("\n", " ")) end
  return "loaded: " .. tostring(v)
end

return {
  routes = {
    ["GET /b"] = function()
      local dir = os.getenv("ATTACK13_DIR")
      local path = dir .. "/attack13_chunk.lua"
      local f = assert(io.open(path, "wb"))
      f:write(string.dump(function() return "ran the bytecode" end))
      f:close()
      local fn, err = loadfile(path)
      local lines = {outcome(fn ~= nil, fn and fn() or err)}
      lines[2] = outcome(pcall(dofile, path))
      package.path = dir .. "/?.lua;" .. package.path
      lines[3] = outcome(pcall(require, "attack13_chunk"))
      os.remove(path)
      return 200, table.concat(lines, "\n")
    end,
  },
}
