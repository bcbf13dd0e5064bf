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
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "cfgfile.h"
#include "log.h"
#include "lua_api.h"
#include "lua_lib.h"
#include "kit.h"
#include "lua_host.h"
#include "master.h"
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
    "  --workers N          run N processes on the listen address (SO_REUSEPORT)\n"
    "                       under a master that forwards signals and restarts\n"
    "                       them (the config key workers; default 1)\n"
    "  --config FILE        KEY=VALUE lines (the keys of --set; '#' comments);\n"
    "                       --listen, --redis and --set win over the file\n"
    "  --check              load and validate the script and config, print them, exit\n"
    "  --test FILE.lua...   run policy test files in-process (TAP; exit 0 all passed,\n"
    "                       1 a test failed, 2 a file did not load); before the\n"
    "                       files: --cpu-ms MS (CPU time of a test, default 10000)\n"
    "                       and --max-memory BYTES (a test file's Lua memory,\n"
    "                       default 268435456)\n"
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

/* A bare NAME (no '/', not a file here): the shipped policy scripts/NAME.lua
 * or examples/NAME.lua (sh_find_data), so `statushost default` works when
 * installed. */
static int find_shipped(const char *name, char *out, size_t outsz)
{
    const char *dirs[] = {"scripts", "examples"};
    size_t len = strlen(name);
    int has_ext = len > 4 && !strcmp(name + len - 4, ".lua");
    for (int i = 0; i < 2; i++) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s/%s%s", dirs[i], name, has_ext ? "" : ".lua");
        if (sh_find_data(rel, 0, out, outsz) == 0)
            return 0;
    }
    return -1;
}

/* Load the script as a generation (no server) and check the Redis URL.
 * Returns 0, or 2 after printing the one-line reason. */
static int load_checked(const sh_options *o, sh_gen **g)
{
    char err[512];
    if (sh_gen_load(NULL, sh_lua_api_open, o->script, o->sets, o->nsets, g, err, sizeof err) != 0) {
        sh_cfgfile_explain(err, sizeof err);
        print_error(err);
        return 2;
    }
    sh_redis_addr addr;
    if ((*g)->cfg.redis_cluster[0] && sh_redis_check_seeds((*g)->cfg.redis_cluster, err, sizeof err) != 0) {
        fprintf(stderr, "statushost: %s\n", err);
        sh_gen_unref(*g);
        return 2;
    }
    if (sh_redis_parse_url((*g)->cfg.redis, &addr) != 0) {
        fprintf(stderr, "statushost: redis \"%s\": not a redis:// or unix:// URL\n",
                (*g)->cfg.redis);
        sh_gen_unref(*g);
        return 2;
    }
    return 0;
}

/* workers > 1: become the master (returns its exit status), or come back as
 * one of its workers (returns -1, o->worker set). workers = 1: returns -1. */
static int maybe_master(sh_options *o)
{
    sh_gen *g;
    if (load_checked(o, &g) != 0)
        return 2;
    unsigned n = (unsigned)g->cfg.workers;
    char host[sizeof g->cfg.listen_host];
    snprintf(host, sizeof host, "%s", g->cfg.listen_host);
    sh_master_opts mo = {.workers = n, .listen_host = host, .listen_port = g->cfg.listen_port};
    if (n > 1)
        sh_config_apply_log(&g->cfg);
    sh_gen_unref(g);
    if (n < 2)
        return -1;
    int rc = sh_master_run(&mo, &o->worker);
    if (rc < 0)
        o->nworkers = n;
    return rc;
}

/* --check: load the script as a generation, print what was found. */
static int check(const sh_options *o)
{
    sh_gen *g;
    if (load_checked(o, &g) != 0)
        return 2;
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
    printf("  static files: %s\n", g->cfg.web_root ? g->cfg.web_root : "(none: no web_root, ./web or installed web/; / answers 404)");
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
        } else if (!strcmp(a, "--test")) {
            if (i + 1 >= argc)
                die("%s", "--test needs one or more FILE.lua");
            int rc = sh_kit_main(argc - i - 1, argv + i + 1);
            sh_lib_shutdown();
            return rc;
        } else if (!strcmp(a, "--listen") || !strcmp(a, "--redis") || !strcmp(a, "--workers")) {
            if (i + 1 >= argc)
                die("%s needs a value", a);
            if (nowned == sizeof owned / sizeof owned[0])
                die("too many %s flags", a);
            size_t n = strlen(argv[i + 1]) + 16;
            char *kv = malloc(n);
            if (!kv)
                die("%s", "out of memory");
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
    static char shipped[4200];
    struct stat st; /* a directory named like the policy does not hide it */
    if ((stat(o.script, &st) != 0 || !S_ISREG(st.st_mode)) && !strchr(o.script, '/') &&
        find_shipped(o.script, shipped, sizeof shipped) == 0)
        o.script = shipped;
    FILE *f = fopen(o.script, "r");
    if (!f)
        die("cannot open script %s (a bare name such as \"default\" is looked up in the installed scripts/ and examples/)", o.script);
    fclose(f);
    char err[1024];
    atexit(sh_cfgfile_free);
    if (sh_cfgfile_init(&o, config_file, sets, o.nsets, err, sizeof err) != 0) {
        print_error(err);
        return 2;
    }
    int rc;
    /* a write to a pipe whose reader went away (the log's) fails with EPIPE instead of
     * killing the process: the master's as a worker's */
    signal(SIGPIPE, SIG_IGN);
    if (do_check) {
        rc = check(&o);
    } else if ((rc = maybe_master(&o)) >= 0) {
        /* the master's status, or a configuration error */
    } else {
        raise_fd_limit();
        uv_loop_t *loop = uv_default_loop();
        sh_server s;
        if (sh_server_start(&s, loop, &o, err, sizeof err) != 0) {
            sh_cfgfile_explain(err, sizeof err);
            print_error(err);
            sh_server_abort(&s);
            rc = 2;
        } else {
            if (o.nworkers > 1)
                sh_master_worker_started(); /* SIGTERM/SIGHUP now reach uv_signal handles */
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
