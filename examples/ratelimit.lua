-- examples/ratelimit.lua — the default status sync, with at most `ratelimit_max` WebSocket
-- upgrades per client IP every `ratelimit_window_s` seconds.
--
--   build/statushost --set ratelimit_max=5 --set ratelimit_window_s=10 examples/ratelimit.lua
--
-- A fixed window per IP, counted in host.shared("ratelimit"): the first upgrade of a window
-- creates the counter with the window as its TTL, later ones increment it. The counts live in
-- the process, not in the Lua state, so a SIGHUP reload keeps them. Over the limit the upgrade
-- is refused before the handshake: 429 with Retry-After (seconds until the window ends).
-- Everything after the handshake is the default policy, unchanged.

local host = require "statushost"
local default = require "statushost.default"

local policy = {}
for k, v in pairs(default) do policy[k] = v end
policy.config = {}
for k, v in pairs(default.config or {}) do policy.config[k] = v end
policy.config.ratelimit_max = 20            -- upgrades per IP per window
policy.config.ratelimit_window_s = 60       -- window length
policy.config.ratelimit_max_clients = 100000 -- IPs tracked; the least recently seen go first

local cfg = host.config -- the merged config, filled once this file returns
local hits              -- the shared dict, opened at the first handshake (cfg is known then)

-- The client's address: the core's real IP when it has one (realip, behind a trusted proxy),
-- else the socket peer without its port ("1.2.3.4:5" / "[::1]:5").
local function client_ip(req)
  return req.client_ip or req.peer:match("^%[(.+)%]:%d+$") or req.peer:match("^(.+):%d+$") or req.peer
end

policy.on_handshake = function(req)
  hits = hits or host.shared("ratelimit", cfg.ratelimit_max_clients)
  local ip = client_ip(req)
  local n, err = hits:incr(ip, 1, 0, cfg.ratelimit_window_s)
  if not n then
    host.log.warn("ratelimit: cannot count", ip, err) -- fail open: the limit is best effort
  elseif n > cfg.ratelimit_max then
    local retry = math.max(1, math.ceil(hits:ttl(ip) or cfg.ratelimit_window_s))
    host.log.info("ratelimit: 429 for", ip, ("(%d upgrades in the window)"):format(n))
    return false, 429, "too many requests\n", { ["Retry-After"] = tostring(retry) }
  end
  if default.on_handshake then return default.on_handshake(req) end
end

return policy
