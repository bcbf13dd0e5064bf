/* user_metrics.h — counters and histograms a policy declares
 * (host.metrics.define) and updates (host.metrics.inc / observe), rendered
 * with HELP and TYPE after the built-in metrics of /metrics.
 *
 * The registry belongs to the process: a reloaded script that defines the
 * same metric again (same kind and labels) keeps its values. Names are
 * [a-z_][a-z0-9_]* (exported as statushost_<name>); at most 8 labels, 1000
 * label combinations per metric and 256 metrics. */
#ifndef SH_USER_METRICS_H
#define SH_USER_METRICS_H

#include <stddef.h>

#include <lua.h>

#include "metrics.h"

/* host.metrics.define(name, kind, help [, label_names]) on L's stack. */
int sh_user_metric_define_lua(lua_State *L);
/* Add v to the counter (observe: into the histogram) called name, with the
 * labels table at index labels_at (or none). Raises on misuse. */
int sh_user_metric_lua(lua_State *L, sh_metrics *m, const char *name, double v, int labels_at,
                       int observe);
/* Append the exposition text of every user metric to *out (malloc'd,
 * growing len and cap). Returns 0, or -1 when out of memory. */
int sh_user_metrics_render(char **out, size_t *len, size_t *cap);
/* How many metrics are defined; forget those defined after the first keep (a script
 * that failed to load defined them: no generation has them). */
size_t sh_user_metrics_count(void);
void sh_user_metrics_forget_from(size_t keep);
/* Release the registry (at exit). */
void sh_user_metrics_free(void);

#endif
