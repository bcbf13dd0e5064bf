-- examples/auth.lua — the default status sync, for clients holding a signed token.
--
--   build/statushost --set auth_secret=s3cret \
--       --set remote_url=http://127.0.0.1:9101/remote/message examples/auth.lua
--
-- Everything after the handshake is scripts/default.lua, unchanged: this file requires
-- it as a module (require "statushost.default") and adds one hook, on_handshake, which
-- refuses the upgrade with HTTP 401 unless the request carries a valid token, either in
-- the query string or in a header:
--
--   ws://127.0.0.1:9999/?token=TOKEN
--   Authorization: Bearer TOKEN
--
-- Token format:   SUBJECT.EXPIRY.SIGNATURE
--   SUBJECT    who the token is for: 1..64 characters of [A-Za-z0-9_-] (logged)
--   EXPIRY     Unix time in seconds after which the token is refused
--   SIGNATURE  lowercase hex HMAC-SHA256, keyed with auth_secret, of "SUBJECT.EXPIRY"
--              (that is, of everything before the last dot)
--
-- Mint one in a shell (valid for an hour, for user alice):
--
--   p="alice.$(( $(date +%s) + 3600 ))"; echo "$p.$(printf %s "$p" | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $NF}')"
--
-- The server refuses (401, before the upgrade): no token, a malformed one, a bad
-- signature (compared in constant time), an expired one, or one that expires further
-- than auth_max_ttl_s in the future. With auth_secret unset it refuses everything with
-- 500 and logs why: an auth policy without a secret must not let anyone in.
--
-- Refusals are counted by reason in the metric statushost_auth_refusals_total{reason=…}:
-- no_token, malformed, bad_signature, expired, too_far_ahead, no_secret.

local host = require "statushost"
local policy = require "statushost.default" -- the shipped scripts/default.lua

policy.config.auth_secret = ""        -- required: the HMAC key (--set auth_secret=...)
policy.config.auth_max_ttl_s = 86400  -- refuse tokens that expire more than this far ahead

local cfg = host.config -- the merged config, filled once this file returns

host.metrics.define("auth_refusals_total", "counter",
  "WebSocket upgrades refused by the auth policy, by reason.", { "reason" })

-- The value of `name` in a raw query string ("a=1&token=x"), percent-decoded.
local function query_param(query, name)
  for pair in (query or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if k == name then
      return (v:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
    end
  end
end

-- The token of a request: ?token=... first, else "Authorization: Bearer ...".
local function token_of(req)
  local t = query_param(req.query, "token")
  if t and t ~= "" then return t end
  local auth = req.headers["authorization"] or ""
  return auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
end

-- → subject | nil, "why", reason (the metric's label)
local function verify(token, secret)
  if not token then return nil, "no token", "no_token" end
  local subject, expiry, sig = token:match("^([%w_%-]+)%.(%d+)%.(%x+)$")
  if not subject or #subject > 64 or #expiry > 12 then return nil, "malformed token", "malformed" end
  local want = host.hmac_sha256(secret, subject .. "." .. expiry)
  if not host.secure_compare(sig:lower(), want) then return nil, "bad signature", "bad_signature" end
  local now = host.now()
  expiry = tonumber(expiry)
  if expiry <= now then return nil, "token expired", "expired" end
  if expiry > now + cfg.auth_max_ttl_s then
    return nil, "token expires too far ahead", "too_far_ahead"
  end
  return subject
end

policy.on_handshake = function(req)
  local secret = cfg.auth_secret
  if secret == "" then
    host.log.error("auth: auth_secret is empty; refusing every connection (--set auth_secret=...)")
    host.metrics.inc("auth_refusals_total", 1, { reason = "no_secret" })
    return false, 500, "server misconfigured\n"
  end
  local subject, why, reason = verify(token_of(req), secret)
  if not subject then
    host.metrics.inc("auth_refusals_total", 1, { reason = reason })
    host.log.info("auth: 401 for", req.peer, why)
    return false, 401, why .. "\n"
  end
  req.subject = subject -- the same table is conn.request once the connection opens
  host.log.info("auth: accepted", subject)
end

return policy
