-- examples/jwt.lua — the default status sync, for clients holding an HS256 JSON Web Token.
--
--   build/statushost --set jwt_secret=s3cret examples/jwt.lua
--
--   ws://127.0.0.1:9999/?token=JWT     or     Authorization: Bearer JWT
--
-- The upgrade is refused with 401 unless the token is well formed, its header says
-- "alg":"HS256" (pinned: "none", RS256 and anything else are refused whatever the signature),
-- its HMAC-SHA256 signature under jwt_secret matches (compared in constant time), it has an
-- `exp` not in the past and an `nbf` (if any) not in the future, both give or take
-- jwt_leeway_s, and a non-empty string `sub`. The subject is kept on the request: later hooks
-- read it as conn.request.sub. With jwt_secret unset every upgrade gets 500 (and a log line).
--
-- Mint one (Python): import jwt, time
--   jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, "s3cret", algorithm="HS256")

local host = require "statushost"
local default = require "statushost.default"

local policy = {}
for k, v in pairs(default) do policy[k] = v end
policy.config = {}
for k, v in pairs(default.config or {}) do policy.config[k] = v end
policy.config.jwt_secret = ""  -- required: the HMAC key
policy.config.jwt_leeway_s = 30 -- clock skew allowed on exp and nbf

local cfg = host.config -- the merged config, filled once this file returns

-- The token: ?token=... first, else "Authorization: Bearer ...".
local function token_of(req)
  local t = host.decode_args(req.query or "").token
  if type(t) == "string" and t ~= "" then return t end
  return (req.headers["authorization"] or ""):match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
end

-- A base64url segment holding a JSON object → table | nil
local function segment(s)
  local raw = host.decode_base64url(s)
  local v = raw and host.json.decode(raw)
  return type(v) == "table" and v or nil
end

-- → claims | nil, "why"
local function verify(token)
  if not token then return nil, "no token" end
  local h, p, s = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
  local header, claims = h and segment(h), p and segment(p)
  local sig = s and host.decode_base64url(s)
  if not (header and claims and sig) then return nil, "malformed token" end
  if header.alg ~= "HS256" then return nil, "alg must be HS256" end
  if not host.secure_compare(sig, host.hmac_sha256(cfg.jwt_secret, h .. "." .. p, "raw")) then
    return nil, "bad signature"
  end
  local now, leeway = host.now(), cfg.jwt_leeway_s
  if type(claims.exp) ~= "number" then return nil, "no exp" end
  if now > claims.exp + leeway then return nil, "token expired" end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or now + leeway < claims.nbf) then
    return nil, "token not yet valid"
  end
  if type(claims.sub) ~= "string" or claims.sub == "" then return nil, "no sub" end
  return claims
end

policy.on_handshake = function(req)
  if cfg.jwt_secret == "" then
    host.log.error("jwt: jwt_secret is empty; refusing every connection (--set jwt_secret=...)")
    return false, 500, "server misconfigured\n"
  end
  local claims, why = verify(token_of(req))
  if not claims then
    host.log.info("jwt: 401 for", req.peer, why)
    return false, 401, why .. "\n"
  end
  req.sub = claims.sub -- the same table is conn.request once the connection opens
  if default.on_handshake then return default.on_handshake(req) end
end

policy.on_open = function(conn)
  host.log.info("jwt: open for", conn.request.sub)
  if default.on_open then return default.on_open(conn) end
end

return policy
