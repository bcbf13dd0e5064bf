-- heap_fill.lua — for the hard_*.lua policies (test_hardening.py): fill the generation's
-- Lua heap up to lua_max_memory with live strings, so that the allocations after it are
-- refused ("not enough memory"), then give it back a few bytes at a time.
--
--   local heap_fill = require "heap_fill"
--   local heap = heap_fill()   -- the heap is full
--   heap:give()                -- its last string dropped: ~30 bytes back at the next collection
--   heap:top_up()              -- full again
--   heap:free()                -- all of it dropped and collected
local host = require "statushost"

local SLOTS = 40000
local heap_mt = {}
heap_mt.__index = heap_mt

function heap_mt:give()
  if self.k > 0 then self.keep[self.k] = nil; self.k = self.k - 1 end
end

function heap_mt:top_up()
  while self.k < SLOTS and pcall(self.add_short) do end
end

function heap_mt:free()
  self.keep, self.k = nil, 0
  collectgarbage()
end

return function()
  local heap = setmetatable({ keep = host.table_new(SLOTS, 0), k = 0 }, heap_mt) -- slots taken now
  local size = 0
  local function add_long() heap.k = heap.k + 1; heap.keep[heap.k] = string.rep("h", size) .. heap.k end
  heap.add_short = function() heap.k = heap.k + 1; heap.keep[heap.k] = heap.k .. "" end
  for _, s in ipairs{ 1000000, 100000, 10000, 1000, 100 } do
    size = s
    while heap.k < SLOTS and pcall(add_long) do end
  end
  collectgarbage() -- the refused calls' garbage goes: the heap is full of live data
  heap:top_up()
  return heap
end
