/* metrics.c — see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

const double sh_dispatch_bounds[SH_DISPATCH_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30,
};

void sh_metrics_observe_dispatch(sh_metrics *m, double seconds)
{
    for (int i = 0; i < SH_DISPATCH_BUCKETS; i++)
        if (seconds <= sh_dispatch_bounds[i]) {
            m->dispatch_buckets[i]++;
            break;
        }
    m->dispatch_count++;
    m->dispatch_sum += seconds;
}

int sh_metrics_inc(sh_metrics *m, const char *name, uint64_t by)
{
    struct { const char *name; uint64_t *v; } named[] = {
        {"jobs_started", &m->jobs_started},
        {"jobs_completed", &m->jobs_completed},
        {"jobs_timed_out", &m->jobs_timed_out},
        {"jobs_failed", &m->jobs_failed},
    };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (strcmp(named[i].name, name) == 0) {
            uint64_t *v = named[i].v; /* saturated: a counter that wrapped would read as reset */
            *v = by > UINT64_MAX - *v ? UINT64_MAX : *v + by;
            return 0;
        }
    return -1;
}

/* A growable text buffer for rendering. */
struct text {
    char *p;
    size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)(n > 0 ? n : 0);
        char *p = t->p && n >= 0 ? realloc(t->p, cap) : NULL;
        if (!p) { /* out of memory: the render fails (sh_metrics_render returns NULL) */
            free(t->p);
            t->p = NULL;
            t->cap = t->len = 0;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

static void counter(struct text *t, const char *name, const char *help, const char *type,
                    uint64_t v)
{
    put(t, "# HELP statushost_%s %s\n# TYPE statushost_%s %s\nstatushost_%s %llu\n", name,
        help, name, type, name, (unsigned long long)v);
}

/* Resident set in bytes from /proc/self/statm (its second field, in pages). */
static uint64_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long long size = 0, resident = 0;
    int n = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return n == 2 && page > 0 ? (uint64_t)resident * (uint64_t)page : 0;
}

/* Open descriptors: the entries of /proc/self/fd, less the one reading it. */
static uint64_t open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n ? n - 1 : 0;
}

static void process_gauge(struct text *t, const char *name, const char *help, uint64_t v)
{
    put(t, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

char *sh_metrics_render(const sh_metrics *m, int redis_up, size_t *len)
{
    struct text t = {malloc(4096), 0, 4096};
    if (!t.p)
        return NULL;
    counter(&t, "connections_current", "Open sockets (HTTP and WebSocket).", "gauge",
            m->connections_current);
    counter(&t, "websockets_current", "Open WebSocket connections.", "gauge",
            m->websockets_current);
    counter(&t, "connections_total", "Accepted sockets.", "counter", m->connections_total);
    counter(&t, "websockets_total", "Completed WebSocket upgrades.", "counter",
            m->websockets_total);
    counter(&t, "rejected_total", "Connections refused at the handshake.", "counter",
            m->rejected_total);
    counter(&t, "http_requests_total", "Plain HTTP requests answered.", "counter",
            m->http_requests_total);
    counter(&t, "messages_in_total", "WebSocket messages received.", "counter", m->messages_in);
    counter(&t, "messages_out_total", "WebSocket messages sent.", "counter", m->messages_out);
    counter(&t, "bytes_in_total", "Bytes read from sockets.", "counter", m->bytes_in);
    counter(&t, "bytes_out_total", "Bytes written to sockets.", "counter", m->bytes_out);
    counter(&t, "jobs_started_total", "Jobs started by the policy.", "counter", m->jobs_started);
    counter(&t, "jobs_completed_total", "Jobs completed.", "counter", m->jobs_completed);
    counter(&t, "jobs_timed_out_total", "Jobs that timed out.", "counter", m->jobs_timed_out);
    counter(&t, "jobs_failed_total", "Jobs that failed (dispatch or Redis).", "counter",
            m->jobs_failed);
    counter(&t, "redis_reconnects_total", "Redis reconnections.", "counter",
            m->redis_reconnects);
    counter(&t, "redis_messages_too_large_total",
            "Pub/sub messages over redis_max_reply_bytes, skipped (their subscriber "
            "connection kept).", "counter", m->redis_messages_too_large);
    counter(&t, "redis_up", "1 when both Redis connections are ready.", "gauge",
            (uint64_t)redis_up);
    counter(&t, "slow_consumer_closes_total", "Connections closed 1008 for a full send buffer.",
            "counter", m->slow_consumer_closes);
    counter(&t, "lua_errors_total", "Errors and runaway hooks in Lua.", "counter", m->lua_errors);
    counter(&t, "lua_tasks_current", "Hook coroutines alive.", "gauge", m->lua_tasks_current);
    counter(&t, "reloads_total", "Script reloads (SIGHUP) that succeeded.", "counter", m->reloads);
    counter(&t, "updates_dropped_total", "Published payloads not delivered (not UTF-8).",
            "counter", m->updates_dropped);
    counter(&t, "updates_tracked_total",
            "Updates of a job given to conn:track that the core forwarded without on_publish.",
            "counter", m->updates_tracked);
    counter(&t, "lua_runs_counted_total",
            "Lua runs that outlasted a CPU tick, so their instructions were counted "
            "against lua_max_instructions.", "counter", m->lua_runs_counted);
    counter(&t, "lua_memory_bytes", "Bytes used by the Lua states of every live generation.",
            "gauge", m->lua_memory_bytes);
    counter(&t, "shared_dict_bytes",
            "Bytes held by the shared dictionaries (items and headers), against "
            "shared_dict_total_bytes.", "gauge", m->shared_dict_bytes);
    counter(&t, "max_connections", "The max_connections limit in force.", "gauge",
            m->max_connections);
    put(&t, "# HELP statushost_dispatch_seconds Time from dispatch to the remote's answer.\n"
            "# TYPE statushost_dispatch_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SH_DISPATCH_BUCKETS; i++) {
        cum += m->dispatch_buckets[i];
        put(&t, "statushost_dispatch_seconds_bucket{le=\"%g\"} %llu\n", sh_dispatch_bounds[i],
            (unsigned long long)cum);
    }
    put(&t, "statushost_dispatch_seconds_bucket{le=\"+Inf\"} %llu\n",
        (unsigned long long)m->dispatch_count);
    char v[32];
    put(&t, "statushost_dispatch_seconds_sum %s\n", sh_prom_value(v, sizeof v, m->dispatch_sum));
    put(&t, "statushost_dispatch_seconds_count %llu\n", (unsigned long long)m->dispatch_count);
    process_gauge(&t, "process_resident_memory_bytes", "Resident memory size in bytes.",
                  resident_bytes());
    process_gauge(&t, "process_open_fds", "Number of open file descriptors.", open_fds());
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        process_gauge(&t, "process_max_fds", "Maximum number of open file descriptors.",
                      (uint64_t)rl.rlim_cur);
    *len = t.len;
    return t.p;
}

int sh_metrics_add_label(char **text, size_t *len, const char *label)
{
    size_t lines = 0, ll = strlen(label);
    for (size_t i = 0; i < *len; i++)
        lines += (*text)[i] == '\n';
    char *out = malloc(*len + (lines + 1) * (ll + 3) + 1), *o = out;
    if (!out)
        return -1;
    const char *p = *text, *end = *text + *len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl + 1 : end;
        size_t name = strcspn(p, "{ \n");
        if (*p == '#' || *p == '\n' || p + name >= le) {
            memcpy(o, p, (size_t)(le - p));
            o += le - p;
        } else {
            memcpy(o, p, name);
            o += name;
            int braces = p[name] == '{';
            *o++ = '{';
            memcpy(o, label, ll);
            o += ll;
            if (braces && p[name + 1] != '}')
                *o++ = ',';
            else if (!braces)
                *o++ = '}';
            const char *rest = p + name + braces;
            memcpy(o, rest, (size_t)(le - rest));
            o += le - rest;
        }
        p = le;
    }
    *o = '\0';
    free(*text);
    *text = out;
    *len = (size_t)(o - out);
    return 0;
}
