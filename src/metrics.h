/* metrics.h — process counters, rendered as Prometheus text on GET /metrics. */
#ifndef SH_METRICS_H
#define SH_METRICS_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define SH_DISPATCH_BUCKETS 12

typedef struct sh_metrics {
    uint64_t connections_current;   /* open sockets (HTTP + WebSocket) */
    uint64_t websockets_current;    /* upgraded connections */
    uint64_t connections_total;     /* accepted sockets */
    uint64_t websockets_total;      /* completed upgrades */
    uint64_t rejected_total;        /* refused before or at the upgrade */
    uint64_t http_requests_total;   /* plain HTTP requests answered */
    uint64_t messages_in, messages_out;
    uint64_t bytes_in, bytes_out;   /* socket bytes */
    uint64_t jobs_started, jobs_completed, jobs_timed_out, jobs_failed;
    uint64_t dispatch_buckets[SH_DISPATCH_BUCKETS]; /* cumulative at render time */
    uint64_t dispatch_count;
    double dispatch_sum;            /* seconds */
    uint64_t redis_reconnects;      /* copied from the bus at render time */
    uint64_t redis_messages_too_large; /* the same: pub/sub messages over
                                          redis_max_reply_bytes, skipped */
    uint64_t slow_consumer_closes;
    uint64_t lua_errors;
    uint64_t lua_tasks_current;     /* suspended or running hook coroutines */
    uint64_t reloads;
    uint64_t updates_dropped;       /* published payloads not delivered (not UTF-8) */
    uint64_t updates_tracked;       /* updates of a conn:track job forwarded without on_publish */
    uint64_t lua_memory_bytes;      /* set at render time: every generation's Lua memory */
    uint64_t shared_dict_bytes;     /* set at render time: what host.shared's dicts hold */
    uint64_t lua_runs_counted;      /* set at render time: runs whose instructions were counted */
    uint64_t max_connections;       /* the current generation's limit: set by the server */
} sh_metrics;

/* Bucket upper bounds in seconds, for dispatch latency. */
extern const double sh_dispatch_bounds[SH_DISPATCH_BUCKETS];

/* Count one dispatch that took `seconds`. */
void sh_metrics_observe_dispatch(sh_metrics *m, double seconds);

/* Increment a policy-owned counter by name ("jobs_started", "jobs_completed",
 * "jobs_timed_out", "jobs_failed"). Returns 0, or -1 for an unknown name. */
int sh_metrics_inc(sh_metrics *m, const char *name, uint64_t by);

/* Render into buf (malloc'd, *len set). redis_up is the bus state. Also
 * renders statushost_max_connections (from m) and the process gauges
 * process_resident_memory_bytes (/proc/self/statm), process_open_fds and
 * process_max_fds (/proc/self/fd, RLIMIT_NOFILE). */
char *sh_metrics_render(const sh_metrics *m, int redis_up, size_t *len);

/* Add a label (`worker="1"`) to every sample line of rendered Prometheus text
 * (name{a="b"} v → name{worker="1",a="b"} v; name v → name{worker="1"} v).
 * *text is replaced (malloc'd); returns 0, or -1 when out of memory (*text
 * unchanged). */
int sh_metrics_add_label(char **text, size_t *len, const char *label);

/* v as a Prometheus sample value in buf (n bytes): NaN, +Inf, -Inf or "%.17g" (C prints
 * "-nan" for inf + -inf, which Prometheus' parser refuses: one such sum failed every
 * later scrape). Returns buf. */
static inline const char *sh_prom_value(char *buf, size_t n, double v)
{
    if (v != v)
        snprintf(buf, n, "NaN");
    else if (v > 1.7976931348623157e308 || v < -1.7976931348623157e308)
        snprintf(buf, n, "%s", v > 0 ? "+Inf" : "-Inf");
    else
        snprintf(buf, n, "%.17g", v);
    return buf;
}

#endif
