/* config.c — see config.h. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "log.h"

#ifndef SH_DATADIR
#define SH_DATADIR "/usr/local/share/statushost"
#endif

/* One core key: its name, type and default (numbers as doubles). */
struct core_key {
    const char *name;
    enum sh_ctype type;
    const char *sdefault; /* string default */
    double ndefault;      /* number/boolean default */
};

static const struct core_key core_keys[] = {
    {"listen", SH_CT_STRING, "127.0.0.1:9999", 0},
    {"redis", SH_CT_STRING, "redis://127.0.0.1:6379", 0},
    {"redis_sub_connections", SH_CT_NUMBER, NULL, 1},
    {"redis_cluster", SH_CT_STRING, "", 0},
    {"redis_timeout_ms", SH_CT_NUMBER, NULL, 5000},
    {"redis_max_reply_bytes", SH_CT_NUMBER, NULL, 67108864},
    {"web_root", SH_CT_STRING, "", 0},
    {"log_level", SH_CT_STRING, "info", 0},
    {"log_format", SH_CT_STRING, "text", 0},
    {"access_log", SH_CT_BOOLEAN, NULL, 1},
    {"max_head_bytes", SH_CT_NUMBER, NULL, 8192},
    {"max_body_bytes", SH_CT_NUMBER, NULL, 1048576},
    {"max_connections", SH_CT_NUMBER, NULL, 10000},
    {"max_message_bytes", SH_CT_NUMBER, NULL, 1048576},
    {"max_send_buffer", SH_CT_NUMBER, NULL, 1048576},
    {"handshake_timeout_ms", SH_CT_NUMBER, NULL, 10000},
    {"keepalive_timeout_ms", SH_CT_NUMBER, NULL, 60000},
    {"ping_interval_ms", SH_CT_NUMBER, NULL, 30000},
    {"ping_timeout_ms", SH_CT_NUMBER, NULL, 30000},
    {"close_timeout_ms", SH_CT_NUMBER, NULL, 5000},
    {"shutdown_grace_ms", SH_CT_NUMBER, NULL, 10000},
    {"lua_max_instructions", SH_CT_NUMBER, NULL, SH_LUA_MAX_INSTRUCTIONS_DEFAULT},
    {"lua_max_memory", SH_CT_NUMBER, NULL, SH_LUA_MAX_MEMORY_DEFAULT},
    {"max_tasks_per_conn", SH_CT_NUMBER, NULL, 64},
    {"loop_stall_ms", SH_CT_NUMBER, NULL, 5000},
    {"reuseport", SH_CT_BOOLEAN, NULL, 0},
    {"workers", SH_CT_NUMBER, NULL, 1},
    {"permessage_deflate", SH_CT_BOOLEAN, NULL, 0},
    {"allowed_origins", SH_CT_LIST, NULL, 0},
    {"real_ip_from", SH_CT_LIST, NULL, 0},
    {"real_ip_header", SH_CT_STRING, "", 0},
    {"real_ip_recursive", SH_CT_BOOLEAN, NULL, 0},
    {"http_ca_file", SH_CT_STRING, "", 0},
    {"http_tls_verify", SH_CT_BOOLEAN, NULL, 1},
    {"http_max_total_response_bytes", SH_CT_NUMBER, NULL, 67108864},
    {"shared_dict_max_bytes", SH_CT_NUMBER, NULL, SH_SHARED_DICT_MAX_BYTES_DEFAULT},
    {"shared_dict_total_bytes", SH_CT_NUMBER, NULL, SH_SHARED_DICT_TOTAL_BYTES_DEFAULT},
};
#define NCORE (sizeof core_keys / sizeof core_keys[0])

static const struct core_key *core_key_find(const char *name)
{
    for (size_t i = 0; i < NCORE; i++)
        if (strcmp(core_keys[i].name, name) == 0)
            return &core_keys[i];
    return NULL;
}

static const char *ctype_name(enum sh_ctype t)
{
    static const char *const names[] = {"a string", "a number", "a boolean", "a list"};
    return names[t];
}

/* The type of the value at index i, or -1 when it has none we can type. */
static int value_ctype(lua_State *L, int i)
{
    switch (lua_type(L, i)) {
    case LUA_TSTRING: return SH_CT_STRING;
    case LUA_TNUMBER: return SH_CT_NUMBER;
    case LUA_TBOOLEAN: return SH_CT_BOOLEAN;
    case LUA_TTABLE: return SH_CT_LIST;
    default: return -1;
    }
}

static void push_default(lua_State *L, const struct core_key *k)
{
    switch (k->type) {
    case SH_CT_STRING: lua_pushstring(L, k->sdefault); break;
    case SH_CT_NUMBER: lua_pushinteger(L, (lua_Integer)k->ndefault); break;
    case SH_CT_BOOLEAN: lua_pushboolean(L, k->ndefault != 0); break;
    case SH_CT_LIST: lua_newtable(L); break;
    }
}

/* Parse text as a value of type t and push it. Returns 0 or -1. */
static int push_typed(lua_State *L, enum sh_ctype t, const char *v)
{
    switch (t) {
    case SH_CT_STRING:
        lua_pushstring(L, v);
        return 0;
    case SH_CT_NUMBER: {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(d))
            return -1;
        if (d == floor(d) && fabs(d) < 9e15)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
        return 0;
    }
    case SH_CT_BOOLEAN:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            lua_pushboolean(L, 1);
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            lua_pushboolean(L, 0);
        else
            return -1;
        return 0;
    case SH_CT_LIST: {
        lua_newtable(L);
        lua_Integer n = 0;
        const char *p = v;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            const char *s = p, *e = p + len;
            while (s < e && (*s == ' ' || *s == '\t'))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e > s) {
                lua_pushlstring(L, s, (size_t)(e - s));
                lua_rawseti(L, -2, ++n);
            }
            p = comma ? comma + 1 : p + len;
        }
        return 0;
    }
    }
    return -1;
}

int sh_config_apply_set(lua_State *L, int t, const char *kv, char *err, size_t errsz)
{
    t = lua_absindex(L, t);
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) {
        snprintf(err, errsz, "--set %s: expected KEY=VALUE", kv);
        return -1;
    }
    lua_pushlstring(L, kv, (size_t)(eq - kv));
    const char *key = lua_tostring(L, -1);
    lua_pushvalue(L, -1);
    lua_rawget(L, t);
    int ct = value_ctype(L, -1);
    lua_pop(L, 1);
    if (ct < 0) {
        snprintf(err, errsz, "--set %s: unknown config key \"%s\"", kv, key);
        lua_pop(L, 1);
        return -1;
    }
    if (push_typed(L, (enum sh_ctype)ct, eq + 1) != 0) {
        snprintf(err, errsz, "--set %s: \"%s\" must be %s", kv, key, ctype_name((enum sh_ctype)ct));
        lua_pop(L, 1);
        return -1;
    }
    lua_rawset(L, t);
    return 0;
}

/* Copy the policy's config table into the merged table at index m, checking
 * core keys' types. */
static int merge_policy(lua_State *L, int m, int pc, char *err, size_t errsz)
{
    lua_pushnil(L);
    while (lua_next(L, pc)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            snprintf(err, errsz, "config: keys must be strings");
            lua_pop(L, 2);
            return -1;
        }
        const char *key = lua_tostring(L, -2);
        const struct core_key *k = core_key_find(key);
        if (k && value_ctype(L, -1) != (int)k->type) {
            snprintf(err, errsz, "config.%s must be %s, got %s", key, ctype_name(k->type),
                     luaL_typename(L, -1));
            lua_pop(L, 2);
            return -1;
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, m);
    }
    return 0;
}

int sh_config_merge(lua_State *L, int policy_cfg, const char *const *sets, size_t nsets,
                    char *err, size_t errsz)
{
    if (policy_cfg)
        policy_cfg = lua_absindex(L, policy_cfg);
    lua_newtable(L);
    int m = lua_gettop(L);
    for (size_t i = 0; i < NCORE; i++) {
        push_default(L, &core_keys[i]);
        lua_setfield(L, m, core_keys[i].name);
    }
    if (policy_cfg && merge_policy(L, m, policy_cfg, err, errsz) != 0)
        goto fail;
    for (size_t i = 0; i < nsets; i++)
        if (sh_config_apply_set(L, m, sets[i], err, errsz) != 0)
            goto fail;
    return 0;
fail:
    lua_settop(L, m - 1);
    return -1;
}

/* Read a non-negative integer key within [lo, hi]. */
static int read_uint(lua_State *L, int t, const char *key, uint64_t lo, uint64_t hi,
                     uint64_t *out, char *err, size_t errsz)
{
    lua_getfield(L, t, key);
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint || v < 0 || (uint64_t)v < lo || (uint64_t)v > hi) {
        snprintf(err, errsz, "config.%s must be an integer in [%llu, %llu]", key,
                 (unsigned long long)lo, (unsigned long long)hi);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Split "host:port" / "[v6]:port" into cfg. */
static int parse_listen(const char *s, sh_config *cfg, char *err, size_t errsz)
{
    const char *colon = strrchr(s, ':');
    const char *h = s, *he = colon;
    if (!colon)
        goto bad;
    if (*h == '[') {
        h++;
        if (he <= h || he[-1] != ']')
            goto bad;
        he--;
    }
    size_t hl = (size_t)(he - h);
    if (hl == 0 || hl >= sizeof cfg->listen_host)
        goto bad;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        goto bad;
    memcpy(cfg->listen_host, h, hl);
    cfg->listen_host[hl] = '\0';
    cfg->listen_port = (int)port;
    return 0;
bad:
    snprintf(err, errsz, "listen \"%s\": expected HOST:PORT", s);
    return -1;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int sh_find_data(const char *rel, int want_dir, char *out, size_t outsz)
{
    struct stat st;
    char exe[4096];
    size_t n = sizeof exe;
    char *slash = NULL;
    if (uv_exepath(exe, &n) == 0 && (slash = strrchr(exe, '/')))
        *slash = '\0';
    const char *fmts[] = {"%s/%s", "%s/../share/statushost/%s", "%s/../%s"};
    const char *dirs[] = {SH_DATADIR, slash ? exe : NULL, slash ? exe : NULL};
    for (int i = 0; i < 3; i++) {
        if (!dirs[i])
            continue;
        int len = snprintf(out, outsz, fmts[i], dirs[i], rel);
        if (len > 0 && (size_t)len < outsz && stat(out, &st) == 0 &&
            (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode))) {
            char real[PATH_MAX];
            if (realpath(out, real) && strlen(real) < outsz)
                strcpy(out, real); /* BIN/../share/... → /usr/share/... */
            return 0;
        }
    }
    return -1;
}

/* Resolve web_root: the configured directory, else ./web, else the
 * installed copy (sh_find_data); NULL when none exists. */
static char *resolve_web_root(const char *configured)
{
    if (configured && *configured)
        return strdup(configured);
    if (is_dir("web"))
        return strdup("web");
    char path[4200];
    return sh_find_data("web", 1, path, sizeof path) == 0 ? strdup(path) : NULL;
}

/* A list key into a NULL-terminated array of strings (NULL when empty). */
static int read_list(lua_State *L, int t, const char *key, char ***out, char *err, size_t errsz)
{
    lua_getfield(L, t, key);
    size_t n = lua_rawlen(L, -1);
    if (n == 0) {
        lua_pop(L, 1);
        return 0;
    }
    *out = calloc(n + 1, sizeof(char *));
    if (!*out) {
        snprintf(err, errsz, "out of memory");
        lua_pop(L, 1);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errsz, "config.%s[%zu] must be a string", key, i + 1);
            lua_pop(L, 2);
            return -1;
        }
        (*out)[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!(*out)[i]) {
            snprintf(err, errsz, "out of memory");
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    return 0;
}

static int read_origins(lua_State *L, int t, sh_config *cfg, char *err, size_t errsz)
{
    if (read_list(L, t, "allowed_origins", &cfg->allowed_origins, err, errsz) != 0 ||
        read_list(L, t, "real_ip_from", &cfg->real_ip_from, err, errsz) != 0)
        return -1;
    lua_getfield(L, t, "real_ip_header");
    const char *h = lua_tostring(L, -1);
    cfg->real_ip_header = h && *h ? strdup(h) : NULL;
    lua_pop(L, 1);
    if (cfg->real_ip_header && strcasecmp(cfg->real_ip_header, "X-Forwarded-For") &&
        strcasecmp(cfg->real_ip_header, "X-Real-IP")) {
        snprintf(err, errsz, "config.real_ip_header must be X-Forwarded-For, X-Real-IP or empty");
        return -1;
    }
    lua_getfield(L, t, "real_ip_recursive");
    cfg->real_ip_recursive = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return 0;
}

/* http_ca_file: "" (the system store) or a readable regular file. */
static int read_ca_file(lua_State *L, int t, sh_config *cfg, char *err, size_t errsz)
{
    lua_getfield(L, t, "http_ca_file");
    const char *path = lua_tostring(L, -1);
    struct stat st;
    int rc = 0;
    if (path && *path) {
        const char *why = NULL;
        if (stat(path, &st) != 0)
            why = strerror(errno);
        else if (!S_ISREG(st.st_mode))
            why = "not a regular file";
        else if (access(path, R_OK) != 0)
            why = strerror(errno);
        if (why) {
            snprintf(err, errsz, "config.http_ca_file \"%s\": %s", path, why);
            rc = -1;
        } else if (!(cfg->http_ca_file = strdup(path))) {
            snprintf(err, errsz, "config.http_ca_file: out of memory");
            rc = -1;
        }
    }
    lua_pop(L, 1);
    return rc;
}

int sh_config_read(lua_State *L, int t, sh_config *cfg, char *err, size_t errsz)
{
    static const uint64_t GB = 1024ull * 1024 * 1024, DAY = 86400000ull;
    struct { const char *key; uint64_t lo, hi; void *dst; int is_size; } nums[] = {
        {"max_head_bytes", 256, 1024 * 1024, &cfg->max_head_bytes, 1},
        {"redis_sub_connections", 1, 64, &cfg->redis_sub_connections, 1},
        {"redis_timeout_ms", 100, DAY, &cfg->redis_timeout_ms, 0},
        {"redis_max_reply_bytes", 1024 * 1024, 64 * GB, &cfg->redis_max_reply_bytes, 1},
        {"max_body_bytes", 0, GB, &cfg->max_body_bytes, 1},
        {"max_connections", 1, 10000000, &cfg->max_connections, 1},
        {"max_message_bytes", 125, GB, &cfg->max_message_bytes, 1},
        {"max_send_buffer", 1024, GB, &cfg->max_send_buffer, 1},
        {"handshake_timeout_ms", 1, DAY, &cfg->handshake_timeout_ms, 0},
        {"keepalive_timeout_ms", 1, DAY, &cfg->keepalive_timeout_ms, 0},
        {"ping_interval_ms", 0, DAY, &cfg->ping_interval_ms, 0},
        {"ping_timeout_ms", 1, DAY, &cfg->ping_timeout_ms, 0},
        {"close_timeout_ms", 1, DAY, &cfg->close_timeout_ms, 0},
        {"shutdown_grace_ms", 0, DAY, &cfg->shutdown_grace_ms, 0},
        {"lua_max_instructions", 1000, 2147483647, &cfg->lua_max_instructions, 0},
        {"lua_max_memory", 0, 64 * GB, &cfg->lua_max_memory, 1},
        {"max_tasks_per_conn", 1, 1000000, &cfg->max_tasks_per_conn, 1},
        {"loop_stall_ms", 0, DAY, &cfg->loop_stall_ms, 0},
        {"workers", 1, 128, &cfg->workers, 1},
        {"http_max_total_response_bytes", 65536, 1024 * GB, &cfg->http_max_total_response_bytes, 1},
        {"shared_dict_max_bytes", 8192, 1024 * GB, &cfg->shared_dict_max_bytes, 1},
        {"shared_dict_total_bytes", 8192, 1024 * GB, &cfg->shared_dict_total_bytes, 1},
    };
    memset(cfg, 0, sizeof *cfg);
    t = lua_absindex(L, t);
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        uint64_t v;
        if (read_uint(L, t, nums[i].key, nums[i].lo, nums[i].hi, &v, err, errsz) != 0)
            goto fail;
        if (nums[i].is_size)
            *(size_t *)nums[i].dst = (size_t)v;
        else
            *(uint64_t *)nums[i].dst = v;
    }
    lua_getfield(L, t, "listen");
    int rc = parse_listen(lua_tostring(L, -1), cfg, err, errsz);
    lua_pop(L, 1);
    if (rc != 0)
        goto fail;
    lua_getfield(L, t, "log_level");
    cfg->log_level = sh_log_parse_level(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (cfg->log_level < 0) {
        snprintf(err, errsz, "config.log_level must be debug, info, warn or error");
        goto fail;
    }
    lua_getfield(L, t, "log_format");
    cfg->log_format = sh_log_parse_format(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (cfg->log_format < 0) {
        snprintf(err, errsz, "config.log_format must be text or json");
        goto fail;
    }
    lua_getfield(L, t, "access_log");
    cfg->access_log = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "redis");
    cfg->redis = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, t, "redis_cluster");
    cfg->redis_cluster = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!cfg->redis || !cfg->redis_cluster) {
        snprintf(err, errsz, "config: out of memory");
        goto fail;
    }
    if (!cfg->redis_cluster) {
        snprintf(err, errsz, "config.redis_cluster: out of memory");
        goto fail;
    }
    lua_getfield(L, t, "reuseport");
    cfg->reuseport = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "permessage_deflate");
    cfg->permessage_deflate = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (read_origins(L, t, cfg, err, errsz) != 0)
        goto fail;
    lua_getfield(L, t, "web_root");
    cfg->web_root = resolve_web_root(lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, t, "http_tls_verify");
    cfg->http_tls_verify = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (read_ca_file(L, t, cfg, err, errsz) != 0)
        goto fail;
    return 0;
fail:
    sh_config_free(cfg);
    return -1;
}

void sh_config_free(sh_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->redis);
    free(cfg->redis_cluster);
    free(cfg->web_root);
    free(cfg->http_ca_file);
    if (cfg->real_ip_from)
        for (char **o = cfg->real_ip_from; *o; o++)
            free(*o);
    free(cfg->real_ip_from);
    free(cfg->real_ip_header);
    if (cfg->allowed_origins)
        for (char **o = cfg->allowed_origins; *o; o++)
            free(*o);
    free(cfg->allowed_origins);
    memset(cfg, 0, sizeof *cfg);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void sh_config_print(lua_State *L, int t, FILE *out)
{
    t = lua_absindex(L, t);
    const char *keys[256];
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING && n < sizeof keys / sizeof keys[0])
            keys[n++] = lua_tostring(L, -1); /* anchored by the table */
    }
    qsort(keys, n, sizeof keys[0], cmp_str);
    for (size_t i = 0; i < n; i++) {
        lua_getfield(L, t, keys[i]);
        if (lua_istable(L, -1)) {
            fprintf(out, "  %s = [", keys[i]);
            for (lua_Integer j = 1; j <= (lua_Integer)lua_rawlen(L, -1); j++) {
                lua_rawgeti(L, -1, j);
                fprintf(out, "%s%s", j > 1 ? "," : "", luaL_tolstring(L, -1, NULL));
                lua_pop(L, 2);
            }
            fprintf(out, "]\n");
        } else {
            fprintf(out, "  %s = %s\n", keys[i], luaL_tolstring(L, -1, NULL));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

void sh_config_apply_log(const sh_config *cfg)
{
    sh_log_settings s = {(enum sh_log_level)cfg->log_level, (enum sh_log_format)cfg->log_format,
                         cfg->access_log};
    sh_log_configure(&s);
}
