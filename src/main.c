/* main.c — flags, config, signals, uv_run.
 *
 *   statushost [--config FILE] [--listen HOST:PORT] [--redis URL] [--set KEY=VALUE]... SCRIPT.lua
 *   statushost --check [--config FILE] SCRIPT.lua
 *
 * Bad input: one line on stderr, exit 2. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <lauxlib.h>
#include <uv.h>

#include "cfgfile.h"
#include "log.h"
#include "lua_api.h"
#include "lua_lib.h"
#include "lua_host.h"
#include "notify.h"
#include "redis_bus.h"
#include "server.h"

static const char usage[] =
    "usage: statushost [options] SCRIPT.lua\n"
    "\n"
    "Keeps browsers in sync with work done elsewhere: WebSocket clients send\n"
    "batches, a remote HTTP service does the work, Redis pub/sub carries the\n"
    "updates back. SCRIPT.lua decides the policy (see README.md).\n"
    "\n"
    "options:\n"
    "  --listen HOST:PORT   address to listen on (default: the script's config,\n"
    "                       else 127.0.0.1:9999; port 0 picks a free port)\n"
    "  --redis URL          redis://[[user]:password@]host[:port][/db] or unix:///path\n"
    "                       (default redis://127.0.0.1:6379)\n"
    "  --set KEY=VALUE      override a key of the script's config table; typed by\n"
    "                       the key's default; lists take comma-separated values\n"
    "  --config FILE        KEY=VALUE lines (the keys of --set; '#' comments);\n"
    "                       --listen, --redis and --set win over the file\n"
    "  --check              load and validate the script and config, print them, exit\n"
    "  --version            print the version and exit\n"
    "  --help               print this help and exit\n"
    "\n"
    "signals: SIGTERM/SIGINT close gracefully (1001), SIGHUP reloads the script\n"
    "and the --config file. See statushost(1).\n";

/* Print "statushost: msg" as one line: tracebacks fold into it. */
static void print_error(const char *msg)
{
    fputs("statushost: ", stderr);
    for (const char *p = msg; *p; p++) {
        if (*p == '\n')
            fputs(" | ", stderr);
        else if (*p != '\t' && *p != '\r')
            fputc(*p, stderr);
    }
    fputc('\n', stderr);
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "statushost: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try --help)\n");
    exit(2);
}

/* --check: load the script as a generation, print what was found. */
static int check(const sh_options *o)
{
    char err[512];
    sh_gen *g;
    if (sh_gen_load(NULL, sh_lua_api_open, o->script, o->sets, o->nsets, &g, err, sizeof err) != 0) {
        sh_cfgfile_explain(err, sizeof err);
        print_error(err);
        return 2;
    }
    sh_redis_addr addr;
    if (sh_redis_parse_url(g->cfg.redis, &addr) != 0) {
        fprintf(stderr, "statushost: redis \"%s\": not a redis:// or unix:// URL\n", g->cfg.redis);
        sh_gen_unref(g);
        return 2;
    }
    printf("%s: ok\n  hooks:", o->script);
    int any = 0;
    for (int h = 0; h < SH_HOOK_COUNT; h++)
        if (sh_gen_has_hook(g, (enum sh_hook)h)) {
            printf(" %s", sh_hook_name((enum sh_hook)h));
            any = 1;
        }
    printf("%s\n  routes:", any ? "" : " (none)");
    any = 0;
    if (g->routes_ref != LUA_NOREF) {
        lua_rawgeti(g->L, LUA_REGISTRYINDEX, g->routes_ref);
        lua_pushnil(g->L);
        while (lua_next(g->L, -2)) {
            printf(" \"%s\"", lua_tostring(g->L, -2));
            any = 1;
            lua_pop(g->L, 1);
        }
        lua_pop(g->L, 1);
    }
    printf("%s\n  config:\n", any ? "" : " (none)");
    lua_getfield(g->L, LUA_REGISTRYINDEX, "statushost.module");
    lua_getfield(g->L, -1, "config");
    sh_config_print(g->L, -1, stdout);
    lua_pop(g->L, 2);
    sh_gen_unref(g);
    return 0;
}

/* Allow as many descriptors as the hard limit: one per connection. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* "listen=..." / "redis=..." strings made from --listen / --redis, freed at exit */
static char *owned[64];
static size_t nowned;

static void free_owned(void)
{
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    nowned = 0;
}

int main(int argc, char **argv)
{
    sh_options o = {0};
    const char *sets[argc + 1];
    atexit(free_owned);
    int do_check = 0;
    const char *config_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("statushost %s\n", SH_VERSION);
            return 0;
        } else if (!strcmp(a, "--check")) {
            do_check = 1;
        } else if (!strcmp(a, "--listen") || !strcmp(a, "--redis")) {
            if (i + 1 >= argc)
                die("%s needs a value", a);
            if (nowned == sizeof owned / sizeof owned[0])
                die("too many %s flags", a);
            size_t n = strlen(argv[i + 1]) + 16;
            char *kv = malloc(n);
            snprintf(kv, n, "%s=%s", a + 2, argv[++i]);
            owned[nowned++] = kv;
            sets[o.nsets++] = kv;
        } else if (!strcmp(a, "--config")) {
            if (i + 1 >= argc)
                die("%s needs a file", a);
            if (config_file)
                die("one --config only (got a second: %s)", argv[i + 1]);
            config_file = argv[++i];
        } else if (!strcmp(a, "--set")) {
            if (i + 1 >= argc)
                die("%s needs KEY=VALUE", a);
            if (!strchr(argv[i + 1], '=') || argv[i + 1][0] == '=')
                die("--set %s: expected KEY=VALUE", argv[i + 1]);
            sets[o.nsets++] = argv[++i];
        } else if (a[0] == '-' && a[1] != '\0') {
            die("unknown option %s", a);
        } else if (o.script) {
            die("one script only (got a second: %s)", a);
        } else {
            o.script = a;
        }
    }
    if (!o.script)
        die("%s", "no script given");
    FILE *f = fopen(o.script, "r");
    if (!f)
        die("cannot open script %s", o.script);
    fclose(f);
    char err[1024];
    atexit(sh_cfgfile_free);
    if (sh_cfgfile_init(&o, config_file, sets, o.nsets, err, sizeof err) != 0) {
        print_error(err);
        return 2;
    }
    int rc;
    if (do_check) {
        rc = check(&o);
    } else {
        signal(SIGPIPE, SIG_IGN);
        raise_fd_limit();
        uv_loop_t *loop = uv_default_loop();
        sh_server s;
        if (sh_server_start(&s, loop, &o, err, sizeof err) != 0) {
            sh_cfgfile_explain(err, sizeof err);
            print_error(err);
            sh_server_abort(&s);
            rc = 2;
        } else {
            sh_config_apply_log(&s.gen->cfg);
            sh_log_attach(loop);             /* from here, one write per loop iteration */
            sh_notify_watchdog_start(loop);  /* WATCHDOG=1 when systemd asks for it */
            uv_run(loop, UV_RUN_DEFAULT);
            sh_info(NULL, "stopped");
            sh_notify_watchdog_stop();
            sh_log_detach();                 /* flushes; lines are immediate again */
            uv_run(loop, UV_RUN_DEFAULT);    /* the two handles' close callbacks */
            rc = 0;
        }
        sh_server_free(&s);
        uv_loop_close(loop);
    }
    sh_lib_shutdown();
    return rc;
}
