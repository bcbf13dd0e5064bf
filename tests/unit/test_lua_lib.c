/* test_lua_lib.c — the policy helpers (src/lua_lib.c): base64, digests, hex,
 * URI escaping, decode_args, CIDR and realip, the shared dictionary, JSON.
 *
 * The C functions (sh_cidr_*, sh_peer_ip, sh_realip) are checked directly;
 * the Lua functions run in Lua snippets on a bare lua_State whose `host`
 * global is a table filled by sh_lib_register(). A snippet calls
 * check(cond, msg) / eq(got, want, msg) (C-backed: they count in unit.h's
 * totals); an error escaping a snippet is a failure too. */
#include <lauxlib.h>
#include <lualib.h>

#include "lua_lib.h"
#include "unit.h"

/* ------------------------------------------------------------- C: CIDR */

static void test_cidr(void)
{
    static const struct {
        const char *cidr, *ip;
        int want;
    } cases[] = {
        {"10.0.0.0/8", "10.1.2.3", 1},
        {"10.0.0.0/8", "11.0.0.0", 0},
        {"10.0.0.0/8", "9.255.255.255", 0},
        {"10.1.2.3/8", "10.200.0.1", 1}, /* host bits cleared, as nginx */
        {"1.2.3.4/32", "1.2.3.4", 1},
        {"1.2.3.4/32", "1.2.3.5", 0},
        {"1.2.3.4", "1.2.3.4", 1}, /* bare address = /32 */
        {"1.2.3.4", "1.2.3.40", 0},
        {"0.0.0.0/0", "1.2.3.4", 1},
        {"0.0.0.0/0", "255.255.255.255", 1},
        {"0.0.0.0/0", "::ffff:8.8.8.8", 1}, /* IPv4-mapped counts as IPv4 */
        {"0.0.0.0/0", "::1", 0},
        {"0.0.0.0/0", "2001:db8::1", 0},
        {"::/0", "::1", 1},
        {"::/0", "2001:db8::1", 1},
        {"::/0", "1.2.3.4", 0}, /* an IPv6 block holds no IPv4 address (nginx) */
        {"::/0", "::ffff:1.2.3.4", 0},
        {"::/80", "1.2.3.4", 0},
        {"::ffff:0.0.0.0/95", "1.2.3.4", 0},
        {"::ffff:0.0.0.0/96", "1.2.3.4", 1},
        {"::/0", "::ffff:0:1.2.3.4", 1}, /* not IPv4-mapped */
        {"::1/128", "::1", 1},
        {"::1/128", "::2", 0},
        {"::1", "0:0:0:0:0:0:0:1", 1},
        {"2001:db8::/32", "2001:db8:1::5", 1},
        {"2001:db8::/32", "2001:db9::", 0},
        {"2001:DB8::/32", "2001:db8::", 1},
        {"fd00::/8", "fdff:ffff::1", 1},
        {"fd00::/8", "fe00::1", 0},
        {"10.0.0.0/8", "::ffff:10.0.0.1", 1},
        {"::ffff:10.0.0.0/104", "10.9.9.9", 1},
        {"::ffff:10.0.0.0/104", "11.0.0.1", 0},
        {"192.168.1.0/24", "192.168.1.255", 1},
        {"192.168.1.0/24", "192.168.2.0", 0},
        {"192.168.1.128/25", "192.168.1.127", 0},
        {"192.168.1.128/25", "192.168.1.128", 1},
        {"10.0.0.0/8", "", 0},
        {"10.0.0.0/8", "10.0.0", 0},
        {"10.0.0.0/8", "10.0.0.1:80", 0}, /* an address, not address:port */
        {"10.0.0.0/8", "garbage", 0},
        {"::/0", "::1%lo", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sh_cidr c;
        int rc = sh_cidr_parse(cases[i].cidr, &c);
        CHECKF(rc == 0, "parse %s: %d", cases[i].cidr, rc);
        CHECKF(sh_cidr_match(&c, cases[i].ip) == cases[i].want, "%s in %s: want %d",
               cases[i].ip, cases[i].cidr, cases[i].want);
    }
    sh_cidr c;
    CHECK(sh_cidr_parse("10.0.0.0/8", &c) == 0 && c.bits == 104);
    CHECK(sh_cidr_parse("::/0", &c) == 0 && c.bits == 0);
    CHECK(sh_cidr_parse("0.0.0.0/0", &c) == 0 && c.bits == 96);
    CHECK(sh_cidr_parse("::1", &c) == 0 && c.bits == 128);
    CHECK(sh_cidr_parse("10.0.0.0/08", &c) == 0 && c.bits == 104);
    CHECK(sh_cidr_match(&c, NULL) == 0);
    CHECK(sh_cidr_match(NULL, "10.0.0.1") == 0);

    static const char *const bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0/8", "1.2.3.4.5", "abc", "10.0.0.0/8/8", "10.0.0.0 /8", "10.0.0.0/ 8",
        " 10.0.0.0/8", "01.2.3.4", "10.0.0.0/0008", "[::1]/128", "::1/1280", "1.2.3.4:80",
        "10.0.0.0/8x", "256.0.0.0/8", ":::/0", "::1%lo/128", "10.0.0.0/1e1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(sh_cidr_parse(bad[i], &c) == -1, "\"%s\" accepted", bad[i]);
    CHECK(sh_cidr_parse(NULL, &c) == -1);
}

/* ------------------------------------------------------------- C: peer */

static void test_peer_ip(void)
{
    static const char *const ok[][2] = {
        {"1.2.3.4:5", "1.2.3.4"},
        {"127.0.0.1:65535", "127.0.0.1"},
        {"[::1]:42820", "::1"},
        {"[::FFFF:1.2.3.4]:1", "::ffff:1.2.3.4"},
        {"[2001:db8:0:0::1]:443", "2001:db8::1"},
        {"1.2.3.4", "1.2.3.4"},
        {"::1", "::1"},
        {"[::1]", "::1"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char ip[SH_IP_MAX] = "x";
        CHECKF(sh_peer_ip(ok[i][0], ip, sizeof ip) == 0, "%s refused", ok[i][0]);
        CHECK_STR(ip, ok[i][1]);
    }
    static const char *const bad[] = {
        "", ":", "1.2.3.4:", "1.2.3.4:99999", "1.2.3.4:123456", "1.2.3.4:8a", "[::1",
        "[::1]x", "[::1]:", "host:80", "[1.2.3.4]:80", "[]:80", "1.2.3:4", "::1]:80",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char ip[SH_IP_MAX] = "x";
        CHECKF(sh_peer_ip(bad[i], ip, sizeof ip) == -1, "\"%s\" accepted", bad[i]);
        CHECK_STR(ip, "");
    }
    char small[7];
    CHECK(sh_peer_ip("1.2.3.4:5", small, sizeof small) == -1);
    char fits[8];
    CHECK(sh_peer_ip("1.2.3.4:5", fits, sizeof fits) == 0);
    CHECK_STR(fits, "1.2.3.4");
    CHECK(sh_peer_ip(NULL, fits, sizeof fits) == -1);
}

/* ------------------------------------------------------------- C: realip */

static void test_realip(void)
{
    static const char *const from[] = {"10.0.0.0/8", "127.0.0.1", "::1/128", "fd00::/8"};
    sh_cidr trusted[4];
    for (int i = 0; i < 4; i++)
        CHECK(sh_cidr_parse(from[i], &trusted[i]) == 0);

    static const struct {
        const char *peer, *header;
        int recursive;
        int want_rc;
        const char *want;
    } cases[] = {
        /* an untrusted peer's header is ignored */
        {"8.8.8.8", "1.1.1.1", 1, 0, "8.8.8.8"},
        {"8.8.8.8", "1.1.1.1", 0, 0, "8.8.8.8"},
        /* trusted peer, no header */
        {"10.0.0.1", NULL, 1, 0, "10.0.0.1"},
        {"10.0.0.1", "", 1, 0, "10.0.0.1"},
        {"10.0.0.1", " , ,", 1, 0, "10.0.0.1"},
        /* X-Real-IP: one address (surrounding blanks tolerated) */
        {"127.0.0.1", "1.1.1.1", 0, 1, "1.1.1.1"},
        {"127.0.0.1", "  1.1.1.1 ", 0, 1, "1.1.1.1"},
        /* X-Forwarded-For, recursive: skip trusted from the right */
        {"10.0.0.1", "1.1.1.1, 10.0.0.2", 1, 1, "1.1.1.1"},
        {"10.0.0.1", "6.6.6.6, 1.1.1.1, 10.0.0.2, 10.0.0.3", 1, 1, "1.1.1.1"},
        {"10.0.0.1", "6.6.6.6,1.1.1.1,10.0.0.2", 1, 1, "1.1.1.1"},
        {"10.0.0.1", "1.1.1.1", 1, 1, "1.1.1.1"},
        /* non-recursive: the rightmost, trusted or not */
        {"10.0.0.1", "1.1.1.1, 10.0.0.2", 0, 1, "10.0.0.2"},
        {"10.0.0.1", "1.1.1.1, 2.2.2.2", 0, 1, "2.2.2.2"},
        /* every element trusted: the leftmost (nginx) */
        {"10.0.0.1", "10.0.0.5, 10.0.0.2", 1, 1, "10.0.0.5"},
        /* garbage: the first bad element stops the walk */
        {"10.0.0.1", "unknown", 1, 0, "10.0.0.1"},
        {"10.0.0.1", "1.1.1.1, unknown", 1, 0, "10.0.0.1"},
        {"10.0.0.1", "unknown, 10.0.0.2", 1, 1, "10.0.0.2"},
        {"10.0.0.1", "1.1.1.1;2.2.2.2", 1, 0, "10.0.0.1"},
        {"10.0.0.1", "999.1.1.1", 1, 0, "10.0.0.1"},
        {"10.0.0.1", "1.1.1.1:99999", 1, 0, "10.0.0.1"},
        /* ports and IPv6 */
        {"10.0.0.1", "1.2.3.4:5678", 1, 1, "1.2.3.4"},
        {"::1", "2001:db8::1", 1, 1, "2001:db8::1"},
        {"::1", "[2001:db8::1]:443, fd00::5", 1, 1, "2001:db8::1"},
        {"::1", "2001:DB8:0::1, [fd00::5]", 1, 1, "2001:db8::1"},
        {"fd12::9", "1.1.1.1, ::1", 1, 1, "1.1.1.1"},
        {"2001:db8::7", "1.1.1.1", 1, 0, "2001:db8::7"},
        /* an IPv4-mapped peer is trusted by its IPv4 block */
        {"::ffff:10.0.0.1", "1.1.1.1", 1, 1, "1.1.1.1"},
        {"::ffff:8.8.8.8", "1.1.1.1", 1, 0, "::ffff:8.8.8.8"},
        /* canonical output */
        {"10.0.0.1", "::FFFF:1.2.3.4", 1, 1, "::ffff:1.2.3.4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[SH_IP_MAX] = "x";
        int rc = sh_realip(cases[i].peer, cases[i].header, trusted, 4, cases[i].recursive, out,
                           sizeof out);
        CHECKF(rc == cases[i].want_rc && strcmp(out, cases[i].want) == 0,
               "peer %s header \"%s\" rec %d: got %d \"%s\", want %d \"%s\"", cases[i].peer,
               cases[i].header ? cases[i].header : "(null)", cases[i].recursive, rc, out,
               cases[i].want_rc, cases[i].want);
    }
    char out[SH_IP_MAX] = "x";
    /* real_ip_from = ::/0 trusts the IPv6 peers, not the IPv4 ones (nginx) */
    sh_cidr v6all;
    CHECK(sh_cidr_parse("::/0", &v6all) == 0);
    CHECK(sh_realip("8.8.8.8", "1.1.1.1", &v6all, 1, 1, out, sizeof out) == 0);
    CHECK_STR(out, "8.8.8.8");
    CHECK(sh_realip("2001:db8::7", "1.1.1.1", &v6all, 1, 1, out, sizeof out) == 1);
    CHECK_STR(out, "1.1.1.1");
    CHECK(sh_realip("10.0.0.1", "1.1.1.1", trusted, 0, 1, out, sizeof out) == 0);
    CHECK_STR(out, "10.0.0.1"); /* nothing trusted */
    CHECK(sh_realip("nope", "1.1.1.1", trusted, 4, 1, out, sizeof out) == -1);
    CHECK_STR(out, "");
    CHECK(sh_realip("10.0.0.1:80", "1.1.1.1", trusted, 4, 1, out, sizeof out) == -1);
    char small[4] = "x";
    CHECK(sh_realip("10.0.0.1", "1.1.1.1", trusted, 4, 1, small, sizeof small) == -1);
    CHECK_STR(small, "");
    /* a long header: bounded by its length, no allocation */
    char big[8192];
    size_t o = 0;
    while (o + 16 < sizeof big)
        o += (size_t)snprintf(big + o, sizeof big - o, "10.0.0.%d, ", (int)(o % 200));
    snprintf(big + o, sizeof big - o, "x");
    CHECK(sh_realip("10.0.0.1", big, trusted, 4, 1, out, sizeof out) == 0);
    big[o] = '\0';
    CHECK(sh_realip("10.0.0.1", big, trusted, 4, 1, out, sizeof out) == 1);
    CHECK_STR(out, "10.0.0.0"); /* all trusted: the leftmost */
}

/* ------------------------------------------------------------- Lua harness */

static const char *snippet; /* name of the running snippet */

/* check(cond, msg) */
static int l_check(lua_State *L)
{
    unit_checks++;
    if (!lua_toboolean(L, 1)) {
        unit_failures++;
        if (lua_toboolean(L, 3)) /* from check_at: the message holds the line */
            lua_pushliteral(L, "");
        else
            luaL_where(L, 1);
        printf("FAIL [%s] %s%s\n", snippet, lua_tostring(L, -1), luaL_optstring(L, 2, ""));
    }
    return 0;
}

/* Helpers every snippet gets. */
static const char prelude[] =
    "function eq(got, want, msg)\n"
    "  local ok = got == want and math.type(got) == math.type(want)\n"
    "  if not ok then\n"
    "    msg = ('%s: got %q (%s), want %q (%s)'):format(msg or '', tostring(got),\n"
    "      math.type(got) or type(got), tostring(want), math.type(want) or type(want))\n"
    "  end\n"
    "  check_at(ok, msg)\n"
    "end\n"
    /* raises(fn, text): fn() must raise an error containing text (plain) */
    "function raises(text, fn, ...)\n"
    "  local ok, err = pcall(fn, ...)\n"
    "  check_at(not ok and tostring(err):find(text, 1, true) ~= nil,\n"
    "    ('want an error with %q, got %s'):format(text, ok and 'no error' or tostring(err)))\n"
    "end\n"
    "function hex(s) return (s:gsub('.', function(c) return ('%02x'):format(c:byte()) end)) end\n";

int luaopen_cjson_safe(lua_State *L);

static int64_t clock_ms; /* the shared dicts' test clock offset */

/* advance(ms): move the shared dicts' clock forward */
static int l_advance(lua_State *L)
{
    clock_ms += luaL_checkinteger(L, 1);
    sh_lib_set_clock_offset_ms(clock_ms);
    return 0;
}

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_advance);
    lua_setglobal(L, "advance");
    lua_newtable(L);
    sh_lib_register(L, -1);
    CHECK_INT(lua_gettop(L), 1); /* register leaves the stack as it was */
    lua_setglobal(L, "host");
    lua_pushcfunction(L, l_check);
    lua_setglobal(L, "check");
    /* check_at reports the caller's caller (eq/raises are one level down) */
    (void)luaL_dostring(L, "function check_at(ok, msg) local i = debug.getinfo(3, 'l')\n"
                     "  check(ok, (i and ('line ' .. i.currentline .. ': ') or '') .. (msg or ''), true) end");
    if (luaL_dostring(L, prelude) != LUA_OK)
        printf("prelude: %s\n", lua_tostring(L, -1));
    return L;
}

static void run(lua_State *L, const char *name, const char *code)
{
    snippet = name;
    int top = lua_gettop(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "debug");
    lua_getfield(L, -1, "traceback");
    int h = lua_gettop(L);
    int rc = luaL_loadbuffer(L, code, strlen(code), name);
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, 0, h);
    CHECKF(rc == LUA_OK, "[%s] %s", name, lua_tostring(L, -1));
    lua_settop(L, top);
}

/* ------------------------------------------------------------- Lua: codecs */

static void test_base64(lua_State *L)
{
    run(L, "base64",
        /* RFC 4648 §10 */
        "local v = { {'', ''}, {'f', 'Zg=='}, {'fo', 'Zm8='}, {'foo', 'Zm9v'},\n"
        "  {'foob', 'Zm9vYg=='}, {'fooba', 'Zm9vYmE='}, {'foobar', 'Zm9vYmFy'} }\n"
        "for _, c in ipairs(v) do\n"
        "  eq(host.encode_base64(c[1]), c[2], c[1])\n"
        "  eq(host.decode_base64(c[2]), c[1], c[2])\n"
        "  local bare = c[2]:gsub('=', '')\n"
        "  eq(host.encode_base64(c[1], true), bare, 'no_padding ' .. c[1])\n"
        "  eq(host.decode_base64(bare), c[1], 'unpadded ' .. bare)\n"
        "  eq(host.encode_base64url(c[1]), bare, 'url ' .. c[1])\n"
        "  eq(host.decode_base64url(bare), c[1], 'url ' .. bare)\n"
        "  eq(host.decode_base64url(c[2]), c[1], 'url padded ' .. c[2])\n"
        "end\n"
        "eq(host.encode_base64(123), 'MTIz', 'a number is its string')\n"
        "eq(host.encode_base64('x', false), 'eA==', 'no_padding false')\n"
        /* every byte, both alphabets */
        "local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end\n"
        "all = table.concat(all)\n"
        "for n = 0, 5 do local s = all:sub(1, 250 + n)\n"
        "  eq(host.decode_base64(host.encode_base64(s)), s, 'round trip ' .. #s)\n"
        "  eq(host.decode_base64url(host.encode_base64url(s)), s, 'url round trip ' .. #s)\n"
        "  check(not host.encode_base64url(s):find('[+/=]'), 'url alphabet')\n"
        "end\n"
        "eq(host.encode_base64('\\251\\255\\254'), '+//+')\n"
        "eq(host.encode_base64url('\\251\\255\\254'), '-__-')\n"
        "eq(host.encode_base64('\\251\\255'), '+/8=')\n"
        "eq(host.encode_base64url('\\251\\255'), '-_8')\n"
        "eq(host.decode_base64url('-_8='), '\\251\\255')\n"
        /* refusals: nil, 'invalid ...' */
        "for _, s in ipairs{'Zm9v!', 'Z', 'Zg=', 'Zm9vY', 'Zh==', 'Zm9=', 'Zm9v====', 'Zm 9v',\n"
        "    'Zm9v\\n', '=', '==', '====', 'Zg==Zg==', 'Z===', 'Zm9v=', '-_8', 'Zm9\\0'} do\n"
        "  local r, err = host.decode_base64(s)\n"
        "  check(r == nil and err == 'invalid base64', ('decode_base64 %q'):format(s))\n"
        "end\n"
        "for _, s in ipairs{'+/8', 'Zh', 'Z', 'eyJ.', 'a b', 'Zg=', 'Zm9v='} do\n"
        "  local r, err = host.decode_base64url(s)\n"
        "  check(r == nil and err == 'invalid base64url', ('decode_base64url %q'):format(s))\n"
        "end\n"
        /* a JWT (jwt.io's example): segments, then the HS256 signature */
        "local h = 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9'\n"
        "local p = 'eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ'\n"
        "local s = 'SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c'\n"
        "eq(host.decode_base64url(h), '{\"alg\":\"HS256\",\"typ\":\"JWT\"}')\n"
        "eq(host.decode_base64url(p), '{\"sub\":\"1234567890\",\"name\":\"John Doe\",\"iat\":1516239022}')\n"
        "eq(host.encode_base64url(host.hmac_sha256('your-256-bit-secret', h .. '.' .. p, 'raw')), s)\n"
        "eq(#host.decode_base64url(s), 32)\n"
        "local claims = host.json.decode(host.decode_base64url(p))\n"
        "eq(claims.iat, 1516239022, 'iat is an integer')\n"
        /* argument errors name the function */
        "raises('host.decode_base64: bad argument #1 (string expected, got nil)', host.decode_base64, nil)\n"
        "raises('host.encode_base64: bad argument #1 (string expected, got table)', host.encode_base64, {})\n"
        "raises('host.decode_base64url: bad argument #1 (string expected, got boolean)', host.decode_base64url, true)\n"
        "raises('host.encode_base64url: bad argument #1', host.encode_base64url)\n");
}

static void test_digests(lua_State *L)
{
    run(L, "digests",
        "eq(host.sha256_hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')\n"
        "eq(host.sha256_hex(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')\n"
        "eq(host.sha256_hex(('a'):rep(1000000)), 'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0')\n"
        "eq(#host.sha256('abc'), 32)\n"
        "eq(host.to_hex(host.sha256('abc')), host.sha256_hex('abc'))\n"
        /* RFC 4231 test cases 1, 2, 3, 4, 6, 7 */
        "local v = {\n"
        "  {('\\11'):rep(20), 'Hi There',\n"
        "   'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7'},\n"
        "  {'Jefe', 'what do ya want for nothing?',\n"
        "   '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843'},\n"
        "  {('\\170'):rep(20), ('\\221'):rep(50),\n"
        "   '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe'},\n"
        "  {host.from_hex('0102030405060708090a0b0c0d0e0f10111213141516171819'), ('\\205'):rep(50),\n"
        "   '82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b'},\n"
        "  {('\\170'):rep(131), 'Test Using Larger Than Block-Size Key - Hash Key First',\n"
        "   '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54'},\n"
        "  {('\\170'):rep(131), 'This is a test using a larger than block-size key and a larger '\n"
        "   .. 'than block-size data. The key needs to be hashed before being used by the HMAC '\n"
        "   .. 'algorithm.',\n"
        "   '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2'},\n"
        "}\n"
        "for i, c in ipairs(v) do\n"
        "  eq(host.hmac_sha256(c[1], c[2]), c[3], 'RFC 4231 hex ' .. i)\n"
        "  eq(host.hmac_sha256(c[1], c[2], 'hex'), c[3], 'RFC 4231 \"hex\" ' .. i)\n"
        "  eq(host.hmac_sha256(c[1], c[2], 'raw'), host.from_hex(c[3]), 'RFC 4231 raw ' .. i)\n"
        "end\n"
        "eq(#host.hmac_sha256('', ''), 64, 'empty key and message')\n"
        "raises('host.hmac_sha256: bad argument #3 (\"hex\" or \"raw\" expected)', host.hmac_sha256, 'k', 'm', 'b64')\n"
        "raises('host.hmac_sha256: bad argument #2 (string expected, got nil)', host.hmac_sha256, 'k', nil)\n"
        "raises('host.sha256: bad argument #1 (string expected, got no value)', host.sha256)\n"
        "raises('host.sha256_hex: bad argument #1', host.sha256_hex, {})\n"
        /* hex */
        "eq(host.to_hex(''), '')\n"
        "eq(host.to_hex('\\0\\1\\127\\128\\255ab'), '00017f80ff6162')\n"
        "eq(host.from_hex('00017f80ff6162'), '\\0\\1\\127\\128\\255ab')\n"
        "eq(host.from_hex('DEADbeef'), '\\222\\173\\190\\239')\n"
        "eq(host.from_hex(''), '')\n"
        "for _, s in ipairs{'0', 'abc', 'zz', '0x00', ' 00', '00 ', 'g0', '0\\0'} do\n"
        "  local r, err = host.from_hex(s)\n"
        "  check(r == nil and err == 'invalid hex', ('from_hex %q'):format(s))\n"
        "end\n"
        "raises('host.from_hex: bad argument #1 (string expected, got nil)', host.from_hex, nil)\n"
        "raises('host.to_hex: bad argument #1', host.to_hex, nil)\n");
}

static void test_uri(lua_State *L)
{
    run(L, "uri",
        "eq(host.escape_uri(''), '')\n"
        "eq(host.escape_uri(\"azAZ09-_.!~*'()\"), \"azAZ09-_.!~*'()\", 'unreserved stay')\n"
        "eq(host.escape_uri('a b&c=d/e?f#g%h+i,j;k:l@m$n[o]\"<>\\\\^`{|}'),\n"
        "   'a%20b%26c%3Dd%2Fe%3Ff%23g%25h%2Bi%2Cj%3Bk%3Al%40m%24n%5Bo%5D%22%3C%3E%5C%5E%60%7B%7C%7D')\n"
        "eq(host.escape_uri('\\0\\31\\127\\128\\255'), '%00%1F%7F%80%FF')\n"
        "eq(host.escape_uri('\\228\\189\\160'), '%E4%BD%A0')\n"
        /* ngx.unescape_uri's own examples */
        "eq(host.unescape_uri('b%20r56+7'), 'b r56 7')\n"
        "eq(host.unescape_uri('try %search%%20%again%'), 'try %search% %again%')\n"
        "eq(host.unescape_uri('%41%4a%4A%e4%bd%a0'), 'AJJ\\228\\189\\160')\n"
        "eq(host.unescape_uri('%'), '%')\n"
        "eq(host.unescape_uri('%4'), '%4')\n"
        "eq(host.unescape_uri('%zz%4g'), '%zz%4g')\n"
        "eq(host.unescape_uri('%00'), '\\0')\n"
        "eq(host.unescape_uri('%2B+'), '+ ')\n"
        "eq(host.unescape_uri('%%41'), '%A')\n"
        "eq(host.unescape_uri(''), '')\n"
        "for i = 0, 255 do local c = string.char(i)\n"
        "  eq(host.unescape_uri(host.escape_uri(c .. 'x' .. c)), c .. 'x' .. c, 'round trip ' .. i)\n"
        "end\n"
        "raises('host.escape_uri: bad argument #1 (string expected, got no value)', host.escape_uri)\n"
        "raises('host.unescape_uri: bad argument #1', host.unescape_uri, {})\n"
        /* decode_args */
        "local a = host.decode_args('a=1&b&c=&a=2&=x&&d=%20+&e=1=2&%61=3')\n"
        "eq(type(a.a), 'table') eq(#a.a, 3) eq(a.a[1], '1') eq(a.a[2], '2') eq(a.a[3], '3')\n"
        "eq(a.b, true) eq(a.c, '') eq(a.d, '  ') eq(a.e, '1=2') eq(a[''], nil)\n"
        "local n = 0 for _ in pairs(a) do n = n + 1 end eq(n, 5, 'keys')\n"
        "local m = host.decode_args('k&k=v&k')\n"
        "eq(#m.k, 3) eq(m.k[1], true) eq(m.k[2], 'v') eq(m.k[3], true)\n"
        "eq(next(host.decode_args('')), nil, 'empty query')\n"
        "eq(next(host.decode_args('&&&=&=v')), nil, 'only empty keys')\n"
        "eq(host.decode_args('token=a%2Bb+c').token, 'a+b c')\n"
        "eq(host.decode_args('a+b=c')['a b'], 'c')\n"
        "local t, err = host.decode_args('a=1&b=2&c=3', 2)\n"
        "eq(t.a, '1') eq(t.b, '2') eq(t.c, nil) eq(err, 'truncated')\n"
        "t, err = host.decode_args('a=1&b=2', 2) eq(t.b, '2') eq(err, nil, 'exactly max')\n"
        "local q = {} for i = 1, 150 do q[i] = 'k' .. i .. '=' .. i end q = table.concat(q, '&')\n"
        "t, err = host.decode_args(q) eq(t.k100, '100') eq(t.k101, nil) eq(err, 'truncated', 'default 100')\n"
        "t, err = host.decode_args(q, 0) eq(t.k150, '150') eq(err, nil, '0 = no limit')\n"
        "raises('host.decode_args: bad argument #2 (must not be negative)', host.decode_args, 'a', -1)\n"
        "raises('host.decode_args: bad argument #2 (integer expected, got number)', host.decode_args, 'a', 1.5)\n"
        "raises('host.decode_args: bad argument #1 (string expected, got nil)', host.decode_args, nil)\n");
}

static void test_ip_in(lua_State *L)
{
    run(L, "ip_in",
        "eq(host.ip_in('10.1.2.3', {'192.168.0.0/16', '10.0.0.0/8'}), true)\n"
        "eq(host.ip_in('10.1.2.3', '10.0.0.0/8'), true)\n"
        "eq(host.ip_in('11.1.2.3', '10.0.0.0/8'), false)\n"
        "eq(host.ip_in('::1', {'127.0.0.1', '::1'}), true)\n"
        "eq(host.ip_in('::ffff:10.0.0.1', '10.0.0.0/8'), true)\n"
        "eq(host.ip_in('garbage', '0.0.0.0/0'), false)\n"
        "eq(host.ip_in('1.2.3.4', {}), false)\n"
        "raises('host.ip_in: bad argument #2 (bad CIDR \"10.0.0.0/33\")', host.ip_in, '1.2.3.4', '10.0.0.0/33')\n"
        "raises('host.ip_in: bad argument #2 (bad CIDR at [2]: x)', host.ip_in, '10.0.0.1', {'10.0.0.0/8', 'x'})\n"
        "raises('host.ip_in: bad argument #2 (bad CIDR at [1]: number)', host.ip_in, '10.0.0.1', {5})\n"
        "raises('host.ip_in: bad argument #2 (string or table expected, got no value)', host.ip_in, '10.0.0.1')\n"
        "raises('host.ip_in: bad argument #1 (string expected, got nil)', host.ip_in, nil, '10.0.0.0/8')\n");
}

static void test_table_new(lua_State *L)
{
    run(L, "table_new",
        "local t = host.table_new(4, 2)\n"
        "eq(type(t), 'table') eq(next(t), nil, 'empty') eq(#t, 0) eq(getmetatable(t), nil)\n"
        "for i = 1, 100 do t[i] = i end t.a = 1 t.b = 2 t.c = 3\n"
        "eq(#t, 100, 'grows past its room') eq(t.c, 3)\n"
        "eq(next(host.table_new()), nil, 'no sizes: {}') eq(next(host.table_new(0, 0)), nil)\n"
        "eq(next(host.table_new(nil, 3)), nil, 'nil: 0') eq(next(host.table_new('2', 1.0)), nil)\n"
        "eq(type(host.table_new(16777216, 0)), 'table', 'the cap itself')\n"
        "raises('host.table_new: bad argument #1 (must not be negative)', host.table_new, -1, 0)\n"
        "raises('host.table_new: bad argument #2 (must not be negative)', host.table_new, 0, -1)\n"
        "raises('host.table_new: bad argument #1 (too large (max 16777216))', host.table_new, 16777217)\n"
        "raises('host.table_new: bad argument #2 (too large (max 16777216))', host.table_new, 0, math.maxinteger)\n"
        "raises('host.table_new: bad argument #1 (integer expected, got number)', host.table_new, 1.5)\n"
        "raises('host.table_new: bad argument #2 (number expected, got string)', host.table_new, 1, 'x')\n"
        /* type() of the base library, which the host's (names from upvalues) must match:
         * policies/host_lib.lua checks the host's own where policies run */
        "eq(type(nil), 'nil') eq(type(false), 'boolean') eq(type(1), 'number') eq(type(1.5), 'number')\n"
        "eq(type('s'), 'string') eq(type({}), 'table') eq(type(print), 'function')\n"
        "eq(type(type), 'function') eq(type(coroutine.create(print)), 'thread')\n"
        "eq(type(host.json.null), 'userdata', 'light userdata') eq(type(io.stdout), 'userdata')\n"
        "eq(type(1, 2), 'number', 'extra arguments ignored')\n"
        "raises(\"bad argument #1 to 'type' (value expected)\", type)\n");
}

/* ------------------------------------------------------------- Lua: shared */

static void test_shared(lua_State *L)
{
    run(L, "shared types",
        "local d = host.shared('types')\n"
        "eq(tostring(d), 'shared dict \"types\"')\n"
        "eq(host.shared('types'):get('nope'), nil)\n"
        "local vals = { s = 'str\\0bin', i = 42, big = math.maxinteger, neg = -7, f = 1.5,\n"
        "  fi = 2.0, t = true, fa = false, e = '' }\n"
        "for k, v in pairs(vals) do local ok, err, forcible = d:set(k, v)\n"
        "  eq(ok, true, k) eq(err, nil) eq(forcible, false) end\n"
        "for k, v in pairs(vals) do eq(d:get(k), v, 'round trip ' .. k) end\n"
        "eq(math.type(d:get('fi')), 'float', 'a float stays a float')\n"
        "d:set('s', 7) eq(d:get('s'), 7, 'type changes on set')\n"
        "d:set(1, 'one') eq(d:get('1'), 'one', 'number key = its string') eq(d:get(1), 'one')\n"
        "eq(d:set('s', nil), true, 'set nil deletes') eq(d:get('s'), nil)\n"
        "local ok, err = d:set('x', {}) eq(ok, nil) eq(err, 'bad value type')\n"
        "ok, err = d:set('x', print) eq(err, 'bad value type')\n"
        "ok, err = d:set(nil, 1) eq(ok, nil) eq(err, 'nil key')\n"
        "ok, err = d:set('', 1) eq(ok, nil) eq(err, 'empty key')\n"
        "ok, err = d:set(('k'):rep(65536), 1) eq(err, 'key too long')\n"
        "eq(d:set(('k'):rep(65535), 1), true)\n"
        "ok, err = d:get(nil) eq(ok, nil) eq(err, 'nil key')\n"
        "raises('dict:set: bad argument #1 (string expected, got table)', d.set, d, {}, 1)\n"
        "raises('dict:set: bad argument #3 (ttl must be >= 0 seconds)', d.set, d, 'k', 1, -1)\n"
        "raises('dict:set: bad argument #3 (ttl must be >= 0 seconds)', d.set, d, 'k', 1, 0/0)\n"
        "raises('dict:set: bad argument #3 (number expected, got string)', d.set, d, 'k', 1, 'x')\n"
        "raises('dict:get: bad self', d.get, 'k')\n"
        "raises('host.shared: bad argument #1 (string expected, got nil)', host.shared, nil)\n"
        "raises('host.shared: bad argument #1 (empty name)', host.shared, '')\n"
        "raises('host.shared: bad argument #2 (max_items must be 1..100000000)', host.shared, 'z', 0)\n"
        "eq(getmetatable(d), false, 'metatable hidden')\n"
        /* add / replace / delete */
        "ok, err = d:add('i', 1) eq(ok, false) eq(err, 'exists')\n"
        "eq(d:add('new', 1), true) eq(d:get('new'), 1)\n"
        "ok, err = d:replace('absent', 1) eq(ok, false) eq(err, 'not found')\n"
        "eq(d:replace('new', 'two'), true) eq(d:get('new'), 'two')\n"
        "eq(d:delete('new'), true) eq(d:get('new'), nil) eq(d:delete('new'), true)\n"
        /* flush_all, get_keys */
        "d:flush_all() eq(#d:get_keys(0), 0, 'flushed')\n"
        "for i = 1, 5 do d:set('k' .. i, i) end\n"
        "local keys = d:get_keys() eq(#keys, 5) eq(keys[1], 'k5', 'most recent first')\n"
        "eq(#d:get_keys(2), 2)\n"
        "d:get('k1') eq(d:get_keys(1)[1], 'k1', 'get refreshes')\n");

    run(L, "shared incr",
        "local d = host.shared('incr')\n"
        "local v, err = d:incr('n', 1) eq(v, nil) eq(err, 'not found')\n"
        "local v, err, f = d:incr('n', 1, 0) eq(v, 1) eq(err, nil) eq(f, false)\n"
        "eq(d:incr('n', 2), 3) eq(math.type(d:get('n')), 'integer')\n"
        "eq(d:incr('n', -10), -7)\n"
        "eq(d:incr('n', 0.5), -6.5) eq(math.type(d:get('n')), 'float')\n"
        "eq(d:incr('n', 1, 100), -5.5, 'init ignored when present')\n"
        "d:set('max', math.maxinteger) eq(d:incr('max', 1), math.mininteger, 'wraps as Lua')\n"
        "d:set('s', 'abc') v, err = d:incr('s', 1) eq(v, nil) eq(err, 'not a number')\n"
        "d:set('b', true) v, err = d:incr('b', 1, 0) eq(err, 'not a number')\n"
        "eq(d:incr('fl', 1, 0.25), 1.25)\n"
        "v, err = d:incr('', 1) eq(err, 'empty key')\n"
        "raises('dict:incr: bad argument #2 (number expected, got string)', d.incr, d, 'n', '1')\n"
        "raises('dict:incr: bad argument #3 (number expected, got table)', d.incr, d, 'n', 1, {})\n"
        "raises('dict:incr: bad argument #4 (init_ttl without init)', d.incr, d, 'n', 1, nil, 5)\n");

    run(L, "shared ttl",
        "local d = host.shared('ttl')\n"
        "d:set('k', 'v', 2)\n"
        "local t = d:ttl('k') check(t > 1.9 and t <= 2, 'ttl ' .. t)\n"
        "d:set('p', 'forever') eq(d:ttl('p'), 0, 'no expiry: 0')\n"
        "local r, err = d:ttl('absent') eq(r, nil) eq(err, 'not found')\n"
        "advance(1000)\n"
        "t = d:ttl('k') check(t > 0.9 and t <= 1, 'ttl after 1 s: ' .. t) eq(d:get('k'), 'v')\n"
        "advance(1001)\n"
        "eq(d:get('k'), nil, 'expired') r, err = d:ttl('k') eq(err, 'not found')\n"
        "eq(d:add('k', 'again', 0.5), true, 'add over an expired item')\n"
        "advance(500) eq(d:get('k'), nil, 'sub-second ttl')\n"
        /* expire */
        "r, err = d:expire('absent', 1) eq(r, nil) eq(err, 'not found')\n"
        "eq(d:expire('p', 1), true) advance(999) eq(d:get('p'), 'forever') advance(1)\n"
        "eq(d:get('p'), nil, 'expire() took effect')\n"
        "d:set('q', 1, 1) eq(d:expire('q', 0), true) advance(5000) eq(d:get('q'), 1, 'expire 0 = never')\n"
        "raises('dict:expire: bad argument #2 (number expected, got no value)', d.expire, d, 'q')\n"
        /* incr keeps the ttl; init_ttl applies on creation */
        "eq(d:incr('c', 1, 10, 3), 11) advance(2000) eq(d:incr('c', 1, 10, 3), 12) advance(1000)\n"
        "eq(d:get('c'), nil, 'incr kept the first ttl')\n"
        "eq(d:incr('c', 1, 0, 3), 1, 're-created')\n"
        /* a set replaces the ttl */
        "d:set('r', 1, 1) d:set('r', 2) advance(2000) eq(d:get('r'), 2, 'set without ttl: never')\n"
        /* get_keys skips expired; flush_expired frees them */
        "d:flush_all() d:set('a', 1, 1) d:set('b', 1) d:set('c', 1, 1) advance(1000)\n"
        "local keys = d:get_keys(0) eq(#keys, 1) eq(keys[1], 'b')\n"
        "eq(d:flush_expired(), 2) eq(d:flush_expired(), 0)\n");

    run(L, "shared eviction",
        "local d = host.shared('lru', 3)\n"
        "for _, k in ipairs{'a', 'b', 'c'} do local ok, err, f = d:set(k, k) eq(f, false, k) end\n"
        "d:get('a')\n" /* b is now the least recently used */
        "local ok, err, forcible = d:set('d', 'd') eq(ok, true) eq(forcible, true, 'evicted one')\n"
        "eq(d:get('b'), nil, 'LRU went') eq(d:get('a'), 'a') eq(d:get('c'), 'c') eq(d:get('d'), 'd')\n"
        "eq(#d:get_keys(0), 3)\n"
        "ok, err, forcible = d:set('d', 'd2') eq(forcible, false, 'overwrite needs no room')\n"
        /* an expired item goes before any live one */
        "d:flush_all() d:set('x', 1, 1) d:set('y', 1) d:set('z', 1) d:get('x') advance(1000)\n"
        "ok, err, forcible = d:set('w', 1) eq(forcible, false, 'expired made room') \n"
        "eq(d:get('y'), 1) eq(d:get('z'), 1) eq(d:get('w'), 1)\n"
        "local v, err, f = d:incr('n', 1, 0) eq(v, 1) eq(f, true, 'incr init reports forcible')\n"
        "ok, err, forcible = d:add('m', 1) eq(ok, true) eq(forcible, true)\n"
        /* a later max_items changes the cap; without it the cap stays */
        "host.shared('lru') eq(#d:get_keys(0), 3)\n"
        "host.shared('lru', 1) eq(#d:get_keys(0), 1, 'shrunk') eq(d:get('m'), 1, 'kept the most recent')\n"
        "host.shared('lru', 1000) for i = 1, 1000 do d:set(i, i) end eq(#d:get_keys(0), 1000)\n"
        "ok, err, forcible = d:set('over', 1) eq(forcible, true) eq(#d:get_keys(0), 1000)\n"
        "eq(d:get('1'), nil, 'the oldest went')\n"
        /* a bigger default dict and a bounded sweep on writes */
        "local big = host.shared('big')\n"
        "for i = 1, 10000 do big:set('k' .. i, i, 1) end eq(#big:get_keys(0), 10000)\n"
        "advance(1000) local ok, err, f = big:set('fresh', 1) eq(f, false)\n"
        "eq(#big:get_keys(0), 1, 'only the fresh one is live')\n"
        "eq(big:flush_expired(), 10000 - 4, 'the write swept 4')\n");
}

/* Bytes: keys and values are C memory outside lua_max_memory, so a dict is
 * bounded by its capacity (max_bytes / shared_dict_max_bytes) and all dicts
 * by the process total (shared_dict_total_bytes), as ngx's lua_shared_dict. */
static void test_shared_bytes(void)
{
    sh_lib_shutdown(); /* the defaults, no dict */
    lua_State *L = new_state();
    run(L, "shared bytes: capacity, free_space",
        "local d = host.shared('b', {max_bytes = 65536})\n"
        "eq(d:capacity(), 65536) eq(d:free_space(), 65536, 'empty')\n"
        "eq(d:set('k', ('v'):rep(1000)), true)\n"
        "local per = 65536 - d:free_space() - 1 - 1000 eq(per, 169, 'the overhead of an item')\n"
        "d:set('n', 42) eq(d:free_space(), 65536 - 2 * per - 2 - 1000, 'a number adds nothing')\n"
        "d:set('k', 'w') eq(d:free_space(), 65536 - 2 * per - 3, 'a smaller value gives back')\n"
        "d:delete('k') d:delete('n') eq(d:free_space(), 65536, 'delete gives back all')\n"
        "d:set('t', ('v'):rep(100), 1) advance(1000) eq(d:flush_expired(), 1)\n"
        "eq(d:free_space(), 65536, 'expired items give back')\n"
        "for i = 1, 5 do d:set(i, ('v'):rep(100)) end d:flush_all()\n"
        "eq(d:free_space(), 65536, 'flush_all gives back')\n"
        "eq(d:incr('c', 1, 0), 1) eq(d:free_space(), 65536 - per - 1, 'incr init')\n"
        "eq(d:incr('c', 0.5), 1.5) eq(d:free_space(), 65536 - per - 1, 'incr in place')\n"
        "eq(host.shared('dflt'):capacity(), 64 * 1024 * 1024, 'shared_dict_max_bytes: 64 MiB')\n"
        "eq(host.shared('dflt'):free_space(), 64 * 1024 * 1024)\n");

    run(L, "shared bytes: LRU eviction, no memory",
        "local d = host.shared('lru_b', {max_bytes = 65536})\n"
        "local v = ('x'):rep(10000)\n" /* 10,170 bytes an item: 6 fit in 64 KiB */
        "for i = 1, 6 do local ok, err, f = d:set('k' .. i, v) eq(ok, true) eq(f, false, i) end\n"
        "eq(#d:get_keys(0), 6) check(d:free_space() < 10170, 'full')\n"
        "d:get('k1')\n" /* k2 is the least recently used */
        "local ok, err, f = d:set('k7', v) eq(ok, true) eq(err, nil) eq(f, true, 'evicted')\n"
        "eq(d:get('k2'), nil, 'the LRU one went') eq(d:get('k1'), v) eq(#d:get_keys(0), 6)\n"
        "ok, err, f = d:set('k8', v .. v) eq(ok, true) eq(f, true)\n"
        "eq(d:get('k3'), nil) eq(d:get('k4'), nil) eq(#d:get_keys(0), 5, 'two went for one')\n"
        /* replacing a value with a bigger one evicts others, never itself */
        "d:get('k5') d:get('k6') d:get('k7') d:get('k1')\n" /* k8 is the LRU one */
        "ok, err, f = d:set('k8', v .. v .. v) eq(ok, true) eq(f, true)\n"
        "eq(d:get('k8'), v .. v .. v, 'the item being replaced stays') eq(d:get('k5'), nil)\n"
        /* safe_set / safe_add refuse rather than evict */
        "local keys = #d:get_keys(0) check(d:free_space() < 10170, 'full again')\n"
        "ok, err, f = d:safe_set('s', v) eq(ok, nil) eq(err, 'no memory') eq(f, false)\n"
        "ok, err, f = d:safe_add('s', v) eq(ok, nil) eq(err, 'no memory') eq(f, false)\n"
        "eq(d:get('s'), nil) eq(#d:get_keys(0), keys, 'nothing evicted')\n"
        "ok, err = d:safe_add('k1', 1) eq(ok, false) eq(err, 'exists')\n"
        "eq(d:safe_set('k1', ('y'):rep(10000)), true, 'same size: no room needed')\n"
        "eq(d:safe_set('small', 1), true, 'what fits goes in')\n"
        "d:set('e', ('z'):rep(5000), 1) advance(1000)\n"
        "ok, err, f = d:safe_set('s', ('z'):rep(3000)) eq(ok, true, 'an expired item made room')\n"
        "eq(f, false)\n"
        /* an item bigger than the capacity: refused, nothing evicted */
        "keys = #d:get_keys(0)\n"
        "ok, err, f = d:set('huge', ('h'):rep(65536)) eq(ok, nil) eq(err, 'no memory') eq(f, false)\n"
        "ok, err = d:add('huge', ('h'):rep(65536)) eq(ok, nil) eq(err, 'no memory')\n"
        "ok, err = d:replace('k1', ('h'):rep(65536)) eq(ok, nil) eq(err, 'no memory')\n"
        "eq(d:get('k1'), ('y'):rep(10000), 'a failed replace keeps the old value')\n"
        "eq(#d:get_keys(0), keys, 'nothing evicted for it')\n"
        "eq(d:set(('k'):rep(65536 - 168), 1), nil, 'a key counts too')\n"
        "ok, err, f = d:set('fits', ('h'):rep(65536 - 169 - 4)) eq(ok, true) eq(f, true)\n"
        "eq(#d:get_keys(0), 1, 'exactly the capacity: everything else went')\n"
        "eq(d:free_space(), 0)\n"
        /* 1,000 items of 1 MiB: the dict never holds more than its capacity */
        "local m = host.shared('mib', {max_bytes = 4 * 1024 * 1024})\n"
        "local mib = ('m'):rep(1024 * 1024)\n"
        "for i = 1, 1000 do assert(m:set(i, mib)) end\n"
        "eq(#m:get_keys(0), 3, '3 MiB values in 4 MiB') eq(m:get('1000'), mib)\n");

    run(L, "shared bytes: options, the old form",
        "local d = host.shared('opt', 3) eq(d:capacity(), 64 * 1024 * 1024, 'old form: bytes by default')\n"
        "for i = 1, 4 do d:set(i, i) end eq(#d:get_keys(0), 3, 'old form: max_items')\n"
        "host.shared('opt', {max_bytes = 8192}) eq(d:capacity(), 8192) eq(#d:get_keys(0), 3, 'max_items kept')\n"
        "host.shared('opt', 5) eq(d:capacity(), 8192, 'max_bytes kept') for i = 1, 9 do d:set(i, i) end\n"
        "eq(#d:get_keys(0), 5)\n"
        "host.shared('opt', {max_items = 100}) for i = 1, 100 do d:set(i, ('v'):rep(100)) end\n"
        "eq(#d:get_keys(0), 30, '8192 bytes hold 30 items of 100 + 2..3 key bytes')\n"
        "host.shared('opt', {max_bytes = 4 * 1024 * 1024}) eq(#d:get_keys(0), 30, 'grown: all kept')\n"
        "host.shared('opt', {max_bytes = 8192, max_items = 10}) eq(#d:get_keys(0), 10, 'shrunk')\n"
        "eq(d:get('100'), ('v'):rep(100), 'kept the most recent')\n"
        "host.shared('opt', {}) eq(d:capacity(), 8192, 'an empty table changes nothing')\n"
        "raises('host.shared: bad argument #2 (max_bytes must be 8192..1099511627776)', host.shared, 'z', {max_bytes = 8191})\n"
        "raises('host.shared: bad argument #2 (max_bytes must be 8192..1099511627776)', host.shared, 'z', {max_bytes = 2^41})\n"
        "raises('host.shared: bad argument #2 (max_bytes must be 8192..1099511627776)', host.shared, 'z', {max_bytes = 'lots'})\n"
        "raises('host.shared: bad argument #2 (max_items must be 1..100000000)', host.shared, 'z', {max_items = 0})\n"
        "raises('host.shared: bad argument #2 (max_items must be 1..100000000)', host.shared, 'z', 1.5)\n"
        "raises('host.shared: bad argument #2 (unknown option max_byte (max_items, max_bytes))', host.shared, 'z', {max_byte = 1})\n"
        "raises('host.shared: bad argument #2 (unknown option 1 (max_items, max_bytes))', host.shared, 'z', {8192})\n"
        "raises('host.shared: bad argument #2 (number or table expected, got boolean)', host.shared, 'z', true)\n"
        "eq(host.shared('z', '7'):capacity(), 64 * 1024 * 1024, 'a numeric string, as before')\n");
    lua_close(L);

    /* the process total (shared_dict_total_bytes) and the default following the config */
    sh_lib_shutdown();
    L = new_state();
    sh_lib_shared_limits(65536, 100000);
    run(L, "shared bytes: the process total",
        "local a = host.shared('a') eq(a:capacity(), 65536, 'shared_dict_max_bytes as configured')\n"
        "local b = host.shared('b', {max_bytes = 1024 * 1024})\n"
        "local v = ('x'):rep(10000)\n"
        "for i = 1, 6 do a:set(i, v) end eq(#a:get_keys(0), 6)\n"
        "local left = b:free_space() check(left < 100000 - 6 * 10170, 'the total leaves ' .. left)\n"
        "check(left > 100000 - 6 * 10170 - 400, 'two dict headers: ' .. left)\n"
        "local ok, err, f = b:set('big', ('y'):rep(left)) eq(ok, nil) eq(err, 'no memory')\n"
        "eq(#a:get_keys(0), 6, 'another dict is never evicted')\n"
        "for i = 1, 3 do eq(b:set(i, v), true) end\n"
        "ok, err, f = b:set(4, v) eq(ok, true) eq(f, true, 'b made room in itself')\n"
        "eq(#b:get_keys(0), 3) eq(b:get('1'), nil) eq(#a:get_keys(0), 6)\n"
        "ok, err = b:safe_set(5, v) eq(ok, nil) eq(err, 'no memory')\n"
        "ok, err, f = b:set('last', ('f'):rep(b:free_space() - 169 - 4)) eq(ok, true) eq(f, false)\n"
        "eq(b:free_space(), 0, 'the total is reached') eq(a:free_space(), 0)\n"
        "raises('host.shared: shared_dict_total_bytes reached', host.shared, 'c')\n"
        "b:flush_all() eq(host.shared('c'):capacity(), 65536, 'room again')\n");
    sh_lib_shared_limits(8192, 100000);
    run(L, "shared bytes: the default shrinks",
        "local a = host.shared('a') eq(a:capacity(), 8192, 'followed the config')\n"
        "eq(#a:get_keys(0), 0, 'none of its 10 KB items fits in 8 KiB')\n"
        "eq(host.shared('b'):capacity(), 1024 * 1024, 'an explicit max_bytes stays')\n");
    lua_close(L);
    sh_lib_shutdown();
}

/* Dicts live in C: a second state (a reloaded script) sees the same data. */
static void test_shared_reload(void)
{
    lua_State *a = new_state();
    run(a, "reload A", "host.shared('gen', 50):set('who', 'A') host.shared('gen'):incr('n', 1, 0)");
    lua_State *b = new_state();
    run(b, "reload B",
        "local d = host.shared('gen') eq(d:get('who'), 'A') eq(d:incr('n', 1), 2)\n"
        "d:set('who', 'B')");
    lua_close(a);
    run(b, "reload B after A closed",
        "local d = host.shared('gen') eq(d:get('who'), 'B') eq(d:get('n'), 2)\n"
        "for i = 1, 60 do d:set(i, i) end eq(#d:get_keys(0), 50, 'max_items from the first creation')");
    /* a generation loading (sh_lib_shared_begin): its caps wait for its commit */
    sh_lib_shared_begin();
    run(b, "caps held while loading",
        "local d = host.shared('gen', {max_items = 5, max_bytes = 16384})\n"
        "host.shared('gen', 7) eq(#d:get_keys(0), 50, 'nothing evicted')\n"
        "eq(d:capacity(), host.shared('other'):capacity(), 'the default capacity')\n"
        "eq(host.shared('new', {max_bytes = 8192}):capacity(), d:capacity(), 'made with the defaults')");
    sh_lib_shared_end(0); /* it failed: nothing changes */
    run(b, "a failed load changed no cap",
        "local d = host.shared('gen') for i = 1, 60 do d:set(i, i) end eq(#d:get_keys(0), 50)\n"
        "eq(host.shared('new'):capacity(), d:capacity())");
    sh_lib_shared_begin();
    run(b, "loading again", "host.shared('gen', {max_items = 5, max_bytes = 16384}) host.shared('gen', 7)");
    sh_lib_shared_end(1); /* committed: the caps apply, in order */
    run(b, "a committed load's caps",
        "local d = host.shared('gen') eq(#d:get_keys(0), 5, 'trimmed to 5, then 7 allowed')\n"
        "for i = 1, 60 do d:set(i, i) end eq(#d:get_keys(0), 7) eq(d:capacity(), 16384)\n"
        "host.shared('gen', 3) eq(#d:get_keys(0), 3, 'outside a load: at once')");
    run(b, "shutdown", "d = host.shared('gen')");
    sh_lib_shutdown();
    run(b, "after shutdown",
        "raises('dict:get: the shared dicts were freed', d.get, d, 'who')\n"
        "eq(tostring(d), 'shared dict (freed)')\n"
        "eq(host.shared('gen'):get('who'), nil, 'a new, empty store')");
    lua_close(b);
    sh_lib_shutdown();
}

/* ------------------------------------------------------------- Lua: coroutine.wrap */

static struct {
    int enters, leaves, refuse; /* refuse: enter says -1 */
    lua_State *co;              /* the coroutine enter was given */
} wg;

static int wg_enter(lua_State *co)
{
    wg.enters++;
    wg.co = co;
    return wg.refuse ? -1 : 0;
}

static void wg_leave(void) { wg.leaves++; }

static const sh_lib_co_guard test_guard = {wg_enter, wg_leave, NULL, NULL};

/* sh_lib_guard_wrap: Lua's coroutine.wrap (values in and out, yields, the caller's
 * position in front of a string error, a table error as it is), and the guard around
 * the close of a coroutine that failed, where its __close handlers run: entered and
 * left once, or, when enter refuses, "coroutines nested too deep" and no close. */
/* Lines 1-2 of a snippet: f, a wrapped coroutine that fails with a __close pending. */
#define FAILING_WRAP                                                                   \
    "closed = 0\n"                                                                    \
    "local f = coroutine.wrap(function() local x <close> = setmetatable({}, {__close = " \
    "function() closed = closed + 1 end}) error('inner') end)\n"

static void test_guard_wrap(void)
{
    lua_State *L = new_state();
    lua_getglobal(L, "coroutine");
    sh_lib_guard_wrap(L, -1, &test_guard);
    lua_pop(L, 1);
    run(L, "wrap: values and yields",
        "local g = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2, 'x' end)\n"
        "eq(g(1), 2) local r, s = g(5) eq(r, 10) eq(s, 'x')\n"
        "local ok, err = pcall(g) eq(ok, false) eq(err, 'cannot resume dead coroutine')");
    CHECK_INT(wg.enters, 0); /* no error: nothing to close */
    run(L, "wrap: an error closes the coroutine under the guard",
        FAILING_WRAP
        "local ok, err = pcall(function() f() end) eq(ok, false) eq(closed, 1)\n"
        "check(err:find('^%[string \".-\"%]:3: %[string \".-\"%]:2: inner$'), err) -- caller's, then its\n"
        "local t = {} ok, err = pcall(coroutine.wrap(function() error(t) end)) eq(err, t)");
    CHECK_INT(wg.enters, 2);
    CHECK_INT(wg.leaves, 2);
    CHECK(wg.co != NULL && wg.co != L);
    wg.refuse = 1;
    run(L, "wrap: the guard refuses",
        FAILING_WRAP
        "local ok, err = pcall(f) eq(ok, false) eq(closed, 0)\n"
        "check(err:find('coroutine.wrap: coroutines nested too deep', 1, true), err)");
    CHECK_INT(wg.enters, 3);
    CHECK_INT(wg.leaves, 2);
    lua_close(L);
}

/* ------------------------------------------------------------- Lua: JSON */

static void test_json(lua_State *L)
{
    run(L, "json decode",
        "local j = host.json\n"
        "local v = j.decode('{\"exp\":1795748474,\"f\":1.5,\"a\":[1,2.0,-3,1e2,-0],\"n\":null,\"s\":\"x\"}')\n"
        "eq(v.exp, 1795748474) eq(tostring(v.exp), '1795748474', 'logs without .0')\n"
        "eq(v.f, 1.5) eq(v.a[1], 1) eq(v.a[2], 2) eq(v.a[3], -3) eq(v.a[4], 100) eq(v.a[5], 0)\n"
        "eq(v.n, j.null) eq(j.null, host.json.null) eq(v.s, 'x')\n"
        "check(j.null ~= nil and type(j.null) == 'userdata', 'null is lightuserdata')\n"
        "eq(j.decode('9007199254740992'), 2.0^53, '2^53: a float (it may have been 2^53 + 1)')\n"
        "eq(j.decode('-9007199254740992'), -2.0^53, '-2^53')\n"
        "eq(math.type(j.decode('18014398509481984')), 'float', 'beyond 2^53 stays a float')\n"
        "eq(math.type(j.decode('9007199254740991')), 'integer', '2^53 - 1')\n"
        "eq(math.type(j.decode('9007199254740993')), 'float', '2^53 + 1 is not the integer 2^53')\n"
        "eq(math.type(j.decode('[-9007199254740993]')[1]), 'float', 'in a table too')\n"
        "eq(j.decode('1e300'), 1e300)\n"
        "eq(j.decode('0.1'), 0.1)\n"
        "eq(j.decode('[[[[7]]]]')[1][1][1][1], 7, 'nested')\n"
        "eq(j.decode('{\"a\":{\"b\":[{\"c\":3}]}}').a.b[1].c, 3)\n"
        "eq(j.decode('\"\\\\u00e9\"'), '\\195\\169')\n"
        "eq(j.decode('true'), true) eq(j.decode('null'), j.null)\n"
        "for _, s in ipairs{'NaN', '[NaN]', '[Infinity]', '[-Infinity]', '[0x10]', 'nan', 'inf',\n"
        "    '', ' ', '{', '{\"a\":', '[1,]', '{\"a\" 1}', \"{'a':1}\", '[1] 2', '01x', '\"\\\\x\"'} do\n"
        "  local r, err = j.decode(s)\n"
        "  check(r == nil and type(err) == 'string', ('decode %q: %s'):format(s, tostring(r)))\n"
        "end\n"
        "local r, err = j.decode('[1e400]') eq(r, nil) eq(err, 'number out of range')\n"
        "r, err = j.decode('-1e400') eq(r, nil) eq(err, 'number out of range')\n"
        "eq(#j.decode(('['):rep(128) .. (']'):rep(128)), 1, 'depth 128 accepted')\n"
        "r, err = j.decode(('['):rep(129) .. (']'):rep(129)) eq(r, nil) check(err:find('nested'), err)\n"
        "r, err = j.decode(('['):rep(100000)) eq(r, nil)\n"
        "raises('host.json.decode: bad argument #1 (string expected, got nil)', j.decode, nil)\n"
        "raises('host.json.decode: bad argument #1 (string expected, got number)', j.decode, 5)\n"
        /* max_values: values past it refused, keys not counted; 0 or nil: no limit */
        "eq(#j.decode('[1,2,{\"k\":3}]', 5), 3)\n"
        "r, err = j.decode('[1,2,{\"k\":3}]', 4) eq(r, nil)\n"
        "eq(err, 'Found too many values (more than 4) at character 11')\n"
        "eq(#j.decode('[' .. ('[]'):rep(3, ',') .. ']', 0), 3)\n"
        "eq(#j.decode('[1]', nil), 1)\n"
        "for _, bad in ipairs{-1, 1.5, '3', true} do\n"
        "  raises('host.json.decode: bad argument #2 (max_values: an integer >= 0 expected, 0 for no limit)', j.decode, '[1]', bad)\n"
        "end\n"
        /* the script's own cjson keeps its settings */
        "local cjson = require 'cjson.safe'\n"
        "check(cjson.decode('[NaN]') ~= nil, 'cjson.safe untouched')\n");

    run(L, "json encode",
        "local j = host.json\n"
        "eq(j.encode({a = 1}), '{\"a\":1}')\n"
        "eq(j.encode({1, 2.5, 'x', true, j.null}), '[1,2.5,\"x\",true,null]')\n"
        "eq(j.encode(1795748474), '1795748474')\n"
        "eq(j.encode(1795748474.0), '1795748474')\n"
        "eq(j.encode(99999999999999), '99999999999999', '14 digits: cjson as is')\n"
        "eq(j.encode(100000000000000), '100000000000000', '15 digits')\n"
        "eq(j.encode({123456789012345678}), '[123456789012345678]')\n"
        "eq(j.encode({x = 2^53 | 0}), '{\"x\":9007199254740992}')\n"
        "eq(j.encode(math.mininteger), '-9223372036854775808')\n"
        "eq(j.encode({a = {b = {math.maxinteger, 'q\"\\1'}}}), '{\"a\":{\"b\":[9223372036854775807,\"q\\\\\"\\\\u0001\"]}}')\n"
        "eq(j.encode({[123456789012345678] = 'x'}), '{\"123456789012345678\":\"x\"}')\n"
        "local big = {id = 1234567890123456789, ids = {1234567890123456789, -1234567890123456789}}\n"
        "local back = j.decode(j.encode(big))\n"
        "eq(#back.ids, 2) eq(math.type(back.id), 'float', 'beyond 2^53: a float on the way back')\n"
        "local t = {id = 9007199254740991, n = {1, 2, {3}}, s = 'é'}\n"
        "local rt = j.decode(j.encode(t)) eq(rt.id, 9007199254740991) eq(rt.n[3][1], 3) eq(rt.s, 'é')\n"
        "eq(j.encode('\\1sh-int:5'), '\"\\\\u0001sh-int:5\"', 'the marker text alone is a string')\n"
        "local r, err = j.encode({'\\1sh-int:5', 2^60 | 0}) eq(r, nil) check(type(err) == 'string')\n"
        "r, err = j.encode(0/0) eq(r, nil) check(err:find('NaN'), err)\n"
        "r, err = j.encode({math.huge}) eq(r, nil)\n"
        "r, err = j.encode({f = print}) eq(r, nil)\n"
        "local cyc = {} cyc[1] = cyc r, err = j.encode(cyc) eq(r, nil) check(err:find('nesting'), err)\n"
        "cyc = {2^60 | 0} cyc[2] = cyc r, err = j.encode(cyc) eq(r, nil) check(err:find('nesting'), err)\n"
        "local wide = {} for i = 1, 20 do wide[i] = wide end r, err = j.encode(wide) eq(r, nil, 'wide cycle ends')\n"
        "local deep = {} local cur = deep for i = 1, 127 do cur[1] = {} cur = cur[1] end\n"
        "check(j.encode(deep) ~= nil, 'depth 128 encodes')\n"
        "cur[1] = {} r, err = j.encode(deep) eq(r, nil, 'depth 129 refused')\n"
        "raises('host.json.encode: bad argument #1 (value expected)', j.encode)\n"
        "eq(j.encode(nil), 'null')\n");
}

int main(void)
{
    test_cidr();
    test_peer_ip();
    test_realip();

    lua_State *L = new_state();
    test_base64(L);
    test_digests(L);
    test_uri(L);
    test_ip_in(L);
    test_table_new(L);
    test_shared(L);
    test_json(L);
    lua_close(L);
    test_shared_bytes();
    test_guard_wrap();
    test_shared_reload(); /* last: it frees every dict */
    return unit_done("test_lua_lib");
}
