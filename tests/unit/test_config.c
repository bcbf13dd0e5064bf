/* test_config.c — the merged configuration (src/config.c) on a real Lua state:
 * defaults, --set typing (number, boolean, list, string), errors for unknown
 * keys, bad values and type mismatches in the script's config table, and the
 * validation sh_config_read applies to the core keys.
 *
 * Build: gcc -Wall -Wextra -Isrc tests/unit/test_config.c src/config.c src/log.c \
 *            $(pkg-config --cflags --libs lua5.4) -lm -o test_config
 * Prints one line per failed check and `config: N passed, N failed`; exits
 * nonzero when anything failed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <lua.h>

#include "config.h"
#include "log.h"

#include "unit.h"

/* err mentions every one of the given words */
#define CHECK_ERR_HAS(err, word)                                             \
    CHECKF(strstr((err), (word)) != NULL, "error \"%s\" should mention \"%s\"", (err), (word))

static char err[512];

/* A fresh state with the policy config table built from Lua source (or
 * none): returns the state with the policy table at index 1 (or an empty
 * stack when src is NULL). */
static lua_State *state_with(const char *src)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (src) {
        if (luaL_dostring(L, src) != LUA_OK) {
            printf("BUG in test: %s\n", lua_tostring(L, -1));
            exit(3);
        }
    }
    return L;
}

/* Merge (policy config at 1 when src, else none) with the sets; 0 or -1. */
static int merge(lua_State *L, int has_policy, const char *const *sets, size_t n)
{
    err[0] = '\0';
    return sh_config_merge(L, has_policy ? 1 : 0, sets, n, err, sizeof err);
}

/* Merge then read, on a fresh state; returns the sh_config_read result and
 * leaves cfg filled on success (caller frees). err holds any message. */
static int merge_read(const char *policy_src, const char *const *sets, size_t n, sh_config *cfg)
{
    lua_State *L = state_with(policy_src);
    int rc = merge(L, policy_src != NULL, sets, n);
    if (rc == 0) {
        err[0] = '\0';
        rc = sh_config_read(L, -1, cfg, err, sizeof err);
    }
    lua_close(L);
    return rc;
}

/* The read of one --set on an otherwise default config: 0 or -1. */
static int read_one(const char *kv, sh_config *cfg)
{
    const char *sets[] = {kv};
    return merge_read(NULL, sets, 1, cfg);
}

/* ------------------------------------------------------------- defaults */

static void test_defaults(void)
{
    lua_State *L = state_with(NULL);
    CHECK_INT(merge(L, 0, NULL, 0), 0);
    CHECK_INT(lua_gettop(L), 1);
    CHECK(lua_istable(L, 1));

    lua_getfield(L, 1, "listen");
    CHECK_STR(lua_tostring(L, -1), "127.0.0.1:9999");
    lua_getfield(L, 1, "redis");
    CHECK_STR(lua_tostring(L, -1), "redis://127.0.0.1:6379");
    lua_getfield(L, 1, "log_level");
    CHECK_STR(lua_tostring(L, -1), "info");
    lua_getfield(L, 1, "max_head_bytes");
    CHECK(lua_isinteger(L, -1));
    CHECK_INT(lua_tointeger(L, -1), 8192);
    lua_getfield(L, 1, "reuseport");
    CHECK(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    lua_getfield(L, 1, "allowed_origins");
    CHECK(lua_istable(L, -1) && lua_rawlen(L, -1) == 0);
    lua_settop(L, 1);

    sh_config cfg;
    CHECK_INT(sh_config_read(L, 1, &cfg, err, sizeof err), 0);
    CHECK_STR(cfg.listen_host, "127.0.0.1");
    CHECK_INT(cfg.listen_port, 9999);
    CHECK_STR(cfg.redis, "redis://127.0.0.1:6379");
    CHECK_INT(cfg.redis_sub_connections, 1);
    CHECK_INT(cfg.redis_max_reply_bytes, 67108864);
    CHECK_INT(cfg.log_level, SH_LOG_INFO);
    CHECK_INT(cfg.max_head_bytes, 8192);
    CHECK_INT(cfg.max_body_bytes, 1048576);
    CHECK_INT(cfg.max_connections, 10000);
    CHECK_INT(cfg.max_message_bytes, 1048576);
    CHECK_INT(cfg.max_send_buffer, 1048576);
    CHECK_INT(cfg.handshake_timeout_ms, 10000);
    CHECK_INT(cfg.ping_interval_ms, 30000);
    CHECK_INT(cfg.ping_timeout_ms, 30000);
    CHECK_INT(cfg.lua_max_instructions, 10000000);
    CHECK_INT(cfg.reuseport, 0);
    CHECK(cfg.allowed_origins == NULL);
    CHECK(cfg.http_ca_file == NULL); /* the system store */
    CHECK_INT(cfg.http_tls_verify, 1);
    CHECK_INT(cfg.http_max_total_response_bytes, 67108864);
    sh_config_free(&cfg);
    CHECK(cfg.redis == NULL); /* free clears */
    sh_config_free(&cfg);     /* and is safe twice */
    lua_close(L);
}

/* ----------------------------------------------------------- --set typing */

static void test_set_number(void)
{
    lua_State *L = state_with(NULL);
    merge(L, 0, NULL, 0);
    CHECK_INT(sh_config_apply_set(L, 1, "max_connections=3", err, sizeof err), 0);
    lua_getfield(L, 1, "max_connections");
    CHECK(lua_isinteger(L, -1));
    CHECK_INT(lua_tointeger(L, -1), 3);
    lua_pop(L, 1);

    CHECK_INT(sh_config_apply_set(L, -1, "max_message_bytes=65536", err, sizeof err), 0);
    lua_getfield(L, 1, "max_message_bytes");
    CHECK_INT(lua_tointeger(L, -1), 65536);
    lua_pop(L, 1);

    /* a fraction is still a number (read rejects it for an integer key) */
    CHECK_INT(sh_config_apply_set(L, 1, "ping_interval_ms=1.5", err, sizeof err), 0);
    lua_getfield(L, 1, "ping_interval_ms");
    CHECK(lua_type(L, -1) == LUA_TNUMBER && fabs(lua_tonumber(L, -1) - 1.5) < 1e-9);
    lua_pop(L, 1);

    /* bad numbers name the key and the expected type; the table keeps its value */
    const char *bad[] = {"max_connections=abc", "max_connections=", "max_connections=12x",
                         "max_connections=inf", "max_connections=nan", "max_connections= "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int top = lua_gettop(L);
        CHECKF(sh_config_apply_set(L, 1, bad[i], err, sizeof err) == -1, "%s accepted", bad[i]);
        CHECK_INT(lua_gettop(L), top);
        CHECK_ERR_HAS(err, "max_connections");
        CHECK_ERR_HAS(err, "number");
    }
    lua_getfield(L, 1, "max_connections");
    CHECK_INT(lua_tointeger(L, -1), 3);
    lua_close(L);
}

static void test_set_boolean(void)
{
    struct { const char *v; int want; } cases[] = {
        {"true", 1}, {"false", 0}, {"1", 1}, {"0", 0}, {"yes", 1}, {"no", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lua_State *L = state_with(NULL);
        merge(L, 0, NULL, 0);
        if (!cases[i].want) { /* start from true so false is a change */
            lua_pushboolean(L, 1);
            lua_setfield(L, 1, "reuseport");
        }
        char kv[64];
        snprintf(kv, sizeof kv, "reuseport=%s", cases[i].v);
        CHECKF(sh_config_apply_set(L, 1, kv, err, sizeof err) == 0, "%s: %s", kv, err);
        lua_getfield(L, 1, "reuseport");
        CHECKF(lua_isboolean(L, -1), "%s: not a boolean but %s", kv, luaL_typename(L, -1));
        CHECKF(lua_toboolean(L, -1) == cases[i].want, "%s", kv);
        lua_pop(L, 1);
        sh_config cfg;
        CHECK_INT(sh_config_read(L, 1, &cfg, err, sizeof err), 0);
        CHECK_INT(cfg.reuseport, cases[i].want);
        sh_config_free(&cfg);
        lua_close(L);
    }
    const char *bad[] = {"reuseport=maybe", "reuseport=", "reuseport=2", "reuseport=TRUEISH"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lua_State *L = state_with(NULL);
        merge(L, 0, NULL, 0);
        err[0] = '\0';
        CHECKF(sh_config_apply_set(L, 1, bad[i], err, sizeof err) == -1, "%s accepted", bad[i]);
        CHECK_ERR_HAS(err, "reuseport");
        CHECK_ERR_HAS(err, "boolean");
        lua_close(L);
    }
}

static void test_set_list(void)
{
    lua_State *L = state_with(NULL);
    merge(L, 0, NULL, 0);
    CHECK_INT(sh_config_apply_set(L, 1, "allowed_origins=a, b,,c", err, sizeof err), 0);
    lua_getfield(L, 1, "allowed_origins");
    CHECK(lua_istable(L, -1));
    CHECK_INT(lua_rawlen(L, -1), 3);
    const char *want[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        lua_rawgeti(L, -1, i + 1);
        CHECK_STR(lua_tostring(L, -1), want[i]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    sh_config cfg;
    CHECK_INT(sh_config_read(L, 1, &cfg, err, sizeof err), 0);
    CHECK(cfg.allowed_origins != NULL);
    if (cfg.allowed_origins) {
        CHECK_STR(cfg.allowed_origins[0], "a");
        CHECK_STR(cfg.allowed_origins[1], "b");
        CHECK_STR(cfg.allowed_origins[2], "c");
        CHECK(cfg.allowed_origins[3] == NULL);
    }
    sh_config_free(&cfg);

    /* the origins of the spec's example */
    CHECK_INT(sh_config_apply_set(L, 1, "allowed_origins=https://a.example,https://b.example",
                                  err, sizeof err), 0);
    CHECK_INT(sh_config_read(L, 1, &cfg, err, sizeof err), 0);
    CHECK(cfg.allowed_origins && cfg.allowed_origins[0] && cfg.allowed_origins[1] &&
          !cfg.allowed_origins[2]);
    if (cfg.allowed_origins && cfg.allowed_origins[1]) {
        CHECK_STR(cfg.allowed_origins[0], "https://a.example");
        CHECK_STR(cfg.allowed_origins[1], "https://b.example");
    }
    sh_config_free(&cfg);

    /* an empty value is the empty list: any origin */
    CHECK_INT(sh_config_apply_set(L, 1, "allowed_origins=", err, sizeof err), 0);
    lua_getfield(L, 1, "allowed_origins");
    CHECK(lua_istable(L, -1) && lua_rawlen(L, -1) == 0);
    lua_pop(L, 1);
    CHECK_INT(sh_config_read(L, 1, &cfg, err, sizeof err), 0);
    CHECK(cfg.allowed_origins == NULL);
    sh_config_free(&cfg);
    lua_close(L);
}

static void test_set_string(void)
{
    lua_State *L = state_with(NULL);
    merge(L, 0, NULL, 0);
    /* a string key keeps the text verbatim, '=' and spaces included */
    CHECK_INT(sh_config_apply_set(L, 1, "redis=redis://:p=w@127.0.0.1:7000", err, sizeof err), 0);
    lua_getfield(L, 1, "redis");
    CHECK(lua_type(L, -1) == LUA_TSTRING);
    CHECK_STR(lua_tostring(L, -1), "redis://:p=w@127.0.0.1:7000");
    lua_pop(L, 1);
    /* a string key given a number stays a string */
    CHECK_INT(sh_config_apply_set(L, 1, "web_root=123", err, sizeof err), 0);
    lua_getfield(L, 1, "web_root");
    CHECK(lua_type(L, -1) == LUA_TSTRING);
    CHECK_STR(lua_tostring(L, -1), "123");
    lua_pop(L, 1);
    lua_close(L);
}

static void test_set_errors(void)
{
    lua_State *L = state_with(NULL);
    merge(L, 0, NULL, 0);
    int top = lua_gettop(L);

    err[0] = '\0';
    CHECK_INT(sh_config_apply_set(L, 1, "no_such_key=1", err, sizeof err), -1);
    CHECK_ERR_HAS(err, "no_such_key");
    CHECK_ERR_HAS(err, "unknown");
    CHECK_INT(lua_gettop(L), top);
    lua_getfield(L, 1, "no_such_key");
    CHECK(lua_isnil(L, -1)); /* not added */
    lua_pop(L, 1);

    err[0] = '\0';
    CHECK_INT(sh_config_apply_set(L, 1, "max_connections", err, sizeof err), -1);
    CHECK(err[0] != '\0');
    CHECK_INT(lua_gettop(L), top);

    err[0] = '\0';
    CHECK_INT(sh_config_apply_set(L, 1, "=5", err, sizeof err), -1);
    CHECK(err[0] != '\0');
    CHECK_INT(lua_gettop(L), top);
    lua_close(L);

    /* merge: an unknown key in the sets fails the whole merge, nothing pushed */
    L = state_with(NULL);
    const char *sets[] = {"max_connections=3", "bogus=1"};
    CHECK_INT(merge(L, 0, sets, 2), -1);
    CHECK_INT(lua_gettop(L), 0);
    CHECK_ERR_HAS(err, "bogus");
    lua_close(L);

    /* a bad type in a later --set */
    L = state_with(NULL);
    const char *sets2[] = {"max_connections=3", "max_head_bytes=big"};
    CHECK_INT(merge(L, 0, sets2, 2), -1);
    CHECK_INT(lua_gettop(L), 0);
    CHECK_ERR_HAS(err, "max_head_bytes");
    lua_close(L);
}

/* ------------------------------------------------------ the script's table */

static void test_policy_table(void)
{
    /* policy keys (core and custom) are merged; --set types custom keys by
     * the policy's value and overrides the policy */
    lua_State *L = state_with(
        "return { listen = '0.0.0.0:8080', max_connections = 50, remote_url = 'http://x/',"
        " job_timeout_ms = 120000, done_statuses = {'done'}, verbose = false }");
    const char *sets[] = {"job_timeout_ms=5000", "remote_url=http://127.0.0.1:9101/remote/message",
                          "done_statuses=ok, finished", "verbose=yes", "max_connections=7",
                          "max_connections=8"};
    CHECKF(merge(L, 1, sets, 6) == 0, "%s", err);
    CHECK_INT(lua_gettop(L), 2);
    lua_getfield(L, 2, "listen");
    CHECK_STR(lua_tostring(L, -1), "0.0.0.0:8080");
    lua_getfield(L, 2, "job_timeout_ms");
    CHECK(lua_isinteger(L, -1));
    CHECK_INT(lua_tointeger(L, -1), 5000);
    lua_getfield(L, 2, "remote_url");
    CHECK_STR(lua_tostring(L, -1), "http://127.0.0.1:9101/remote/message");
    lua_getfield(L, 2, "verbose");
    CHECK(lua_isboolean(L, -1) && lua_toboolean(L, -1));
    lua_getfield(L, 2, "max_connections"); /* the last --set wins */
    CHECK_INT(lua_tointeger(L, -1), 8);
    lua_getfield(L, 2, "done_statuses");
    CHECK(lua_istable(L, -1) && lua_rawlen(L, -1) == 2);
    lua_rawgeti(L, -1, 2);
    CHECK_STR(lua_tostring(L, -1), "finished");
    lua_getfield(L, 2, "max_head_bytes"); /* not in the policy: the default */
    CHECK_INT(lua_tointeger(L, -1), 8192);
    lua_settop(L, 2);
    sh_config cfg;
    CHECKF(sh_config_read(L, 2, &cfg, err, sizeof err) == 0, "%s", err);
    CHECK_STR(cfg.listen_host, "0.0.0.0");
    CHECK_INT(cfg.listen_port, 8080);
    CHECK_INT(cfg.max_connections, 8);
    sh_config_free(&cfg);
    lua_close(L);

    /* --set on a custom key is typed by the policy's value */
    L = state_with("return { job_timeout_ms = 120000 }");
    const char *bad[] = {"job_timeout_ms=soon"};
    CHECK_INT(merge(L, 1, bad, 1), -1);
    CHECK_ERR_HAS(err, "job_timeout_ms");
    CHECK_ERR_HAS(err, "number");
    CHECK_INT(lua_gettop(L), 1);
    lua_close(L);

    /* a core key of the wrong type in the script's config table */
    struct { const char *src, *key, *type; } mism[] = {
        {"return { max_connections = 'many' }", "max_connections", "number"},
        {"return { listen = 9999 }", "listen", "string"},
        {"return { reuseport = 'yes' }", "reuseport", "boolean"},
        {"return { allowed_origins = 'https://a.example' }", "allowed_origins", "list"},
        {"return { log_level = true }", "log_level", "string"},
    };
    for (size_t i = 0; i < sizeof mism / sizeof mism[0]; i++) {
        L = state_with(mism[i].src);
        err[0] = '\0';
        CHECKF(merge(L, 1, NULL, 0) == -1, "%s accepted", mism[i].src);
        CHECK_INT(lua_gettop(L), 1);
        CHECK_ERR_HAS(err, mism[i].key);
        CHECK_ERR_HAS(err, mism[i].type);
        lua_close(L);
    }

    /* keys must be strings */
    L = state_with("return { [1] = 'x' }");
    CHECK_INT(merge(L, 1, NULL, 0), -1);
    CHECK(err[0] != '\0');
    CHECK_INT(lua_gettop(L), 1);
    lua_close(L);

    /* --set may not invent keys the script does not have */
    L = state_with("return { remote_url = 'http://x/' }");
    const char *unk[] = {"remote_ur=http://y/"};
    CHECK_INT(merge(L, 1, unk, 1), -1);
    CHECK_ERR_HAS(err, "remote_ur");
    lua_close(L);
}

/* ---------------------------------------------------------- validation */

static void test_validation(void)
{
    sh_config cfg;
    struct { const char *kv, *key; } rejected[] = {
        {"max_head_bytes=10", "max_head_bytes"},
        {"max_head_bytes=-1", "max_head_bytes"},
        {"max_connections=0", "max_connections"},
        {"max_message_bytes=1.5", "max_message_bytes"},
        {"max_message_bytes=100", "max_message_bytes"},
        {"max_send_buffer=10", "max_send_buffer"},
        {"handshake_timeout_ms=0", "handshake_timeout_ms"},
        {"ping_interval_ms=1.5", "ping_interval_ms"},
        {"lua_max_instructions=999", "lua_max_instructions"},
        {"lua_max_instructions=3000000000", "lua_max_instructions"},
        {"listen=nohost", "nohost"},
        {"listen=127.0.0.1:", "listen"},
        {"listen=:80", "listen"},
        {"listen=127.0.0.1:65536", "listen"},
        {"listen=127.0.0.1:80x", "listen"},
        {"listen=[::1:80", "listen"},
        {"log_level=verbose", "log_level"},
        {"log_level=INFO", "log_level"},
        {"redis_sub_connections=0", "redis_sub_connections"},
        {"redis_sub_connections=65", "redis_sub_connections"},
        {"redis_sub_connections=1.5", "redis_sub_connections"},
        {"redis_max_reply_bytes=1048575", "redis_max_reply_bytes"},
        {"http_ca_file=/nonexistent/ca.pem", "http_ca_file"},
        {"http_ca_file=/tmp", "http_ca_file"},
        {"http_tls_verify=maybe", "http_tls_verify"},
        {"http_max_total_response_bytes=1000", "http_max_total_response_bytes"},
        {"http_max_total_response_bytes=-1", "http_max_total_response_bytes"},
    };
    for (size_t i = 0; i < sizeof rejected / sizeof rejected[0]; i++) {
        err[0] = '\0';
        int rc = read_one(rejected[i].kv, &cfg);
        CHECKF(rc == -1, "%s accepted", rejected[i].kv);
        if (rc == 0)
            sh_config_free(&cfg);
        CHECKF(strstr(err, rejected[i].key) != NULL, "%s: error \"%s\" should name %s",
               rejected[i].kv, err, rejected[i].key);
    }

    CHECK_INT(read_one("max_head_bytes=256", &cfg), 0); /* the lower bound itself */
    CHECK_INT(cfg.max_head_bytes, 256);
    sh_config_free(&cfg);

    CHECKF(read_one("listen=[::1]:80", &cfg) == 0, "%s", err);
    CHECK_STR(cfg.listen_host, "::1");
    CHECK_INT(cfg.listen_port, 80);
    sh_config_free(&cfg);

    CHECKF(read_one("listen=0.0.0.0:0", &cfg) == 0, "%s", err);
    CHECK_STR(cfg.listen_host, "0.0.0.0");
    CHECK_INT(cfg.listen_port, 0);
    sh_config_free(&cfg);

    CHECKF(read_one("listen=localhost:9999", &cfg) == 0, "%s", err);
    CHECK_STR(cfg.listen_host, "localhost");
    sh_config_free(&cfg);

    CHECKF(read_one("redis_sub_connections=64", &cfg) == 0, "%s", err);
    CHECK_INT(cfg.redis_sub_connections, 64);
    sh_config_free(&cfg);

    CHECKF(read_one("redis_max_reply_bytes=1048576", &cfg) == 0, "%s", err);
    CHECK_INT(cfg.redis_max_reply_bytes, 1048576);
    sh_config_free(&cfg);

    CHECKF(read_one("ping_interval_ms=0", &cfg) == 0, "%s", err); /* 0: never ping */
    CHECK_INT(cfg.ping_interval_ms, 0);
    sh_config_free(&cfg);

    CHECKF(read_one("web_root=/tmp/some/dir", &cfg) == 0, "%s", err);
    CHECK_STR(cfg.web_root, "/tmp/some/dir");
    sh_config_free(&cfg);

    char ca[] = "/tmp/sh-test-ca-XXXXXX";
    int fd = mkstemp(ca);
    CHECK(fd >= 0);
    close(fd);
    char ca_set[64];
    snprintf(ca_set, sizeof ca_set, "http_ca_file=%s", ca);
    const char *https[] = {ca_set, "http_tls_verify=false",
                           "http_max_total_response_bytes=1048576"};
    CHECKF(merge_read(NULL, https, 3, &cfg) == 0, "%s", err);
    CHECK_STR(cfg.http_ca_file, ca);
    CHECK_INT(cfg.http_tls_verify, 0);
    CHECK_INT(cfg.http_max_total_response_bytes, 1048576);
    sh_config_free(&cfg);
    unlink(ca);

    const char *sets[] = {"redis=unix:///run/redis.sock", "reuseport=on"};
    CHECKF(merge_read(NULL, sets, 2, &cfg) == 0, "%s", err);
    CHECK_STR(cfg.redis, "unix:///run/redis.sock");
    CHECK_INT(cfg.reuseport, 1);
    sh_config_free(&cfg);

    /* validation applies to values from the script's table too */
    CHECK_INT(merge_read("return { max_head_bytes = 10 }", NULL, 0, &cfg), -1);
    CHECK_ERR_HAS(err, "max_head_bytes");
    CHECK_INT(merge_read("return { listen = 'nohost' }", NULL, 0, &cfg), -1);
    CHECK_ERR_HAS(err, "nohost");
    CHECK_INT(merge_read("return { allowed_origins = { 'https://a', 7 } }", NULL, 0, &cfg), -1);
    CHECK_ERR_HAS(err, "allowed_origins");
}

static void test_log_level(void)
{
    struct { const char *name; int level; } lv[] = {
        {"debug", SH_LOG_DEBUG}, {"info", SH_LOG_INFO}, {"warn", SH_LOG_WARN},
        {"error", SH_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof lv / sizeof lv[0]; i++) {
        char kv[64];
        snprintf(kv, sizeof kv, "log_level=%s", lv[i].name);
        sh_config cfg;
        CHECKF(read_one(kv, &cfg) == 0, "%s: %s", kv, err);
        CHECK_INT(cfg.log_level, lv[i].level);
        sh_config_free(&cfg);
        CHECK_INT(sh_log_parse_level(lv[i].name), lv[i].level);
    }
    CHECK_INT(sh_log_parse_level("trace"), -1);
    CHECK_INT(sh_log_parse_level(""), -1);
    /* from the script's table */
    sh_config cfg;
    CHECKF(merge_read("return { log_level = 'warn' }", NULL, 0, &cfg) == 0, "%s", err);
    CHECK_INT(cfg.log_level, SH_LOG_WARN);
    sh_config_free(&cfg);
}

/* sh_config_print: sorted "key = value" lines, lists in brackets. */
static void test_print(void)
{
    lua_State *L = state_with(NULL);
    const char *sets[] = {"allowed_origins=https://a.example,https://b.example",
                          "max_connections=3"};
    merge(L, 0, sets, 2);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sh_config_print(L, 1, f);
    fclose(f);
    CHECK(text && strstr(text, "  max_connections = 3\n"));
    CHECK(text && strstr(text, "  allowed_origins = [https://a.example,https://b.example]\n"));
    CHECK(text && strstr(text, "  listen = 127.0.0.1:9999\n"));
    CHECK(text && strstr(text, "allowed_origins") < strstr(text, "listen") &&
          strstr(text, "listen") < strstr(text, "max_connections"));
    CHECK_INT(lua_gettop(L), 1);
    free(text);
    lua_close(L);
}

int main(void)
{
    test_defaults();
    test_set_number();
    test_set_boolean();
    test_set_list();
    test_set_string();
    test_set_errors();
    test_policy_table();
    test_validation();
    test_log_level();
    test_print();
    return unit_done("config");
}
