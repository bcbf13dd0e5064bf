/* config.h — the merged configuration: core defaults ← the script's `config`
 * table ← command-line overrides (--listen, --redis, --set KEY=VALUE).
 *
 * The merged table lives in the script's Lua state (it is `host.config`);
 * sh_config is the C view of the core keys, read once per script generation. */
#ifndef SH_CONFIG_H
#define SH_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include <lua.h>

/* defaults the script's loading needs before the merged config exists (lua_host.c) */
#define SH_LUA_MAX_INSTRUCTIONS_DEFAULT 10000000
#define SH_LUA_MAX_MEMORY_DEFAULT 268435456
/* host.shared's byte caps until a configuration gives them (lua_lib.c) */
#define SH_SHARED_DICT_MAX_BYTES_DEFAULT 67108864    /* a dict's capacity: 64 MiB */
#define SH_SHARED_DICT_TOTAL_BYTES_DEFAULT 268435456 /* every dict together: 256 MiB */

typedef struct sh_config {
    char listen_host[256];         /* from `listen` */
    int listen_port;
    char *redis;                   /* `redis` URL */
    char *redis_cluster;           /* `redis_cluster` seeds host:port,...; "" → `redis` */
    size_t redis_sub_connections;  /* Redis subscriber connections, 1..64 (channels are
                                      spread over them: a flood costs 1/K of them) */
    uint64_t redis_timeout_ms;     /* connect + handshake, and a reply owed, within → dropped */
    size_t redis_max_reply_bytes;  /* a bigger Redis reply or message is not read: reconnect */
    char *web_root;                /* resolved directory, or NULL: no static files */
    int log_level;                 /* enum sh_log_level */
    int log_format;                /* enum sh_log_format: text or json */
    int access_log;                /* one access-log line per finished connection */
    size_t max_head_bytes;         /* request head limit → 431 */
    size_t max_body_bytes;         /* plain-HTTP request body limit → 413 */
    size_t max_connections;        /* open sockets (HTTP and WebSocket) → 503 */
    size_t max_message_bytes;      /* WebSocket message limit → 1009 */
    size_t max_send_buffer;        /* unsent bytes per connection → 1008 */
    uint64_t handshake_timeout_ms; /* complete request head within → dropped */
    uint64_t keepalive_timeout_ms; /* idle plain-HTTP keep-alive connection → closed */
    uint64_t ping_interval_ms;     /* server ping period (0: never) */
    uint64_t ping_timeout_ms;      /* pong deadline → dropped */
    uint64_t close_timeout_ms;     /* wait for the peer's close frame → dropped */
    uint64_t shutdown_grace_ms;    /* SIGTERM: wait this long for connections */
    uint64_t lua_max_instructions; /* per hook run between yields → 1011 */
    size_t lua_max_memory;         /* bytes per script generation (0: no cap) → 1011 */
    size_t max_tasks_per_conn;     /* running or waiting tasks per connection → 1008 */
    uint64_t loop_stall_ms;        /* an iteration stuck longer aborts the process (0: off) */
    int reuseport;                 /* SO_REUSEPORT on the listener */
    size_t workers;                /* processes on the listen address (1..128; >1: a master
                                      forks them, see master.h) */
    int permessage_deflate;        /* accept permessage-deflate offers (RFC 7692) */
    char **allowed_origins;        /* NULL-terminated; NULL: any origin */
    char **real_ip_from;           /* trusted proxies (CIDRs), NULL-terminated; NULL: none */
    char *real_ip_header;          /* "X-Forwarded-For" | "X-Real-IP" | NULL */
    int real_ip_recursive;         /* skip trusted addresses from the right (nginx's) */
    char *http_ca_file;            /* `http_ca_file`: PEM CAs for https; NULL: the system store */
    int http_tls_verify;           /* `http_tls_verify`: verify https certificates and names */
    size_t http_max_total_response_bytes; /* response memory of all outbound calls together */
    size_t shared_dict_max_bytes;   /* host.shared capacity without max_bytes */
    size_t shared_dict_total_bytes; /* every shared dict's items together */
} sh_config;

/* The type a key's value has, which decides how --set parses it. */
enum sh_ctype { SH_CT_STRING, SH_CT_NUMBER, SH_CT_BOOLEAN, SH_CT_LIST };

/* Build the merged config table at the top of L's stack from the policy's
 * `config` table (at index policy_cfg, or 0 when the script has none) and
 * the --set overrides ("KEY=VALUE", nsets of them). Core keys not given take
 * their defaults. Returns 0 and leaves the table on the stack, or -1 with a
 * one-line reason in err (nothing pushed). */
int sh_config_merge(lua_State *L, int policy_cfg, const char *const *sets, size_t nsets,
                    char *err, size_t errsz);

/* Apply one "KEY=VALUE" to the table at index t: the value is typed by the
 * key's current value (number, boolean, list or string); unknown keys are an
 * error. Returns 0 or -1 with err set. */
int sh_config_apply_set(lua_State *L, int t, const char *kv, char *err, size_t errsz);

/* Read and validate the core keys of the merged table at index t into cfg.
 * Returns 0, or -1 with err naming the key and the problem. On success cfg
 * owns heap strings: release with sh_config_free(). */
int sh_config_read(lua_State *L, int t, sh_config *cfg, char *err, size_t errsz);

void sh_config_free(sh_config *cfg);

/* Print the merged table at index t as "key = value" lines, sorted. */
void sh_config_print(lua_State *L, int t, FILE *out);

/* Find a file (want_dir 0) or directory (1) shipped with statushost, REL
 * being e.g. "web" or "scripts/default.lua": under the configured data
 * directory (SH_DATADIR, /usr/local/share/statushost by default), then next
 * to the binary (BIN/../share/statushost/REL, then BIN/../REL: a build tree).
 * Returns 0 with the path in out, or -1. */
int sh_find_data(const char *rel, int want_dir, char *out, size_t outsz);
/* Hand cfg's log_level, log_format and access_log to the log (sh_log_configure). */
void sh_config_apply_log(const sh_config *cfg);

#endif
