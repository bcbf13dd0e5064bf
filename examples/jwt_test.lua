-- examples/jwt_test.lua — the tests of examples/jwt.lua (HS256 tokens at the handshake):
--
--   statushost --test examples/jwt_test.lua
local t = require "statushost.test"
local lib, json = t.lib, t.json

local SECRET = "s3cret"

local function policy(overrides)
  local cfg = { jwt_secret = SECRET, remote_url = "http://remote.test/jobs" }
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local p = t.policy("jwt.lua", cfg)
  p:route("POST /jobs", function() return 202 end)
  return p
end

-- header.claims.signature, each base64url; the signature HMAC-SHA256 under secret
local function jwt(claims, header, secret)
  local h = lib.encode_base64url(json.encode(header or { alg = "HS256", typ = "JWT" }))
  local c = lib.encode_base64url(json.encode(claims))
  local sig = lib.hmac_sha256(secret or SECRET, h .. "." .. c, "raw")
  return h .. "." .. c .. "." .. lib.encode_base64url(sig)
end

t.test("a valid token is let in and the job runs", function()
  local p = policy()
  local now = math.floor(p:time())
  local c = p:open{ path = "/?token=" .. jwt{ sub = "alice", exp = now + 60 } }
  t.eq(c.status, 101)
  c:send('[{"id":1}]')
  t.eq(#p.requests, 1, "the default policy runs after the handshake")
end)

t.test("Authorization: Bearer works too", function()
  local p = policy()
  local tok = jwt{ sub = "bob", exp = math.floor(p:time()) + 60 }
  t.eq(p:open{ headers = { Authorization = "Bearer " .. tok } }.status, 101)
end)

local refusals = {
  { "no token", function() return nil end, "no token" },
  { "a malformed token", function() return "a.b" end, "malformed token" },
  { "alg none", function(now) return jwt({ sub = "a", exp = now + 60 }, { alg = "none" }) end,
    "alg must be HS256" },
  { "a bad signature", function(now) return jwt({ sub = "a", exp = now + 60 }, nil, "other") end,
    "bad signature" },
  { "no exp", function() return jwt{ sub = "a" } end, "no exp" },
  { "an expired token (past the leeway)", function(now) return jwt{ sub = "a", exp = now - 31 } end,
    "token expired" },
  { "nbf in the future", function(now) return jwt{ sub = "a", exp = now + 600, nbf = now + 60 } end,
    "token not yet valid" },
  { "no sub", function(now) return jwt{ exp = now + 60 } end, "no sub" },
}

for _, case in ipairs(refusals) do
  t.test("401 for " .. case[1], function()
    local p = policy()
    local tok = case[2](math.floor(p:time()))
    local c = p:open{ path = tok and ("/?token=" .. tok) or "/" }
    t.eq(c.status, 401)
    t.eq(c.body, case[3] .. "\n")
  end)
end

t.test("exp is checked with jwt_leeway_s on the virtual clock", function()
  local p = policy{ jwt_leeway_s = 5 }
  local tok = jwt{ sub = "a", exp = math.floor(p:time()) + 10 }
  p:advance(14 * 1000)
  t.eq(p:open{ path = "/?token=" .. tok }.status, 101, "within the leeway")
  p:advance(2 * 1000)
  t.eq(p:open{ path = "/?token=" .. tok }.status, 401, "past it")
end)

t.test("without jwt_secret every upgrade gets 500", function()
  local p = policy{ jwt_secret = "" }
  local c = p:open{ path = "/?token=" .. jwt({ sub = "a", exp = math.floor(p:time()) + 60 }, nil, "") }
  t.eq(c.status, 500)
end)
