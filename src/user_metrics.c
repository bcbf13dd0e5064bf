/* user_metrics.c — metrics a policy declares; see user_metrics.h. */
#include "user_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_io.h"
#include "metrics.h"
#include "utf8.h"

#define MAX_METRICS 256
#define MAX_LABELS 8
#define MAX_SERIES 1000
#define NBUCKETS 11

static const double bounds[NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1,    2.5,   5,    10};

typedef struct series {
    char *labels;              /* rendered: a="x",b="y" (or "") */
    double value;              /* counter value, or histogram sum */
    uint64_t count;            /* histogram */
    uint64_t buckets[NBUCKETS];
} series;

typedef struct metric {
    char *name, *help;
    int histogram;
    int nlabels;
    char *label[MAX_LABELS];
    series *s;
    size_t ns, cap;
} metric;

static metric metrics[MAX_METRICS];
static size_t nmetrics;

static metric *find(const char *name)
{
    for (size_t i = 0; i < nmetrics; i++)
        if (strcmp(metrics[i].name, name) == 0)
            return &metrics[i];
    return NULL;
}

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 100 || !((*s >= 'a' && *s <= 'z') || *s == '_'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* Whether metrics a and b would write a sample of the same name (a histogram's are its
 * _bucket, _sum and _count): /metrics would then hold two TYPE lines for it, or one sample
 * twice, which Prometheus refuses. */
static int clash(const char *a, int ahist, const char *b, int bhist)
{
    static const char *const sfx[] = {"", "_bucket", "_sum", "_count"};
    char x[128], y[128];
    for (int i = 0; i < (ahist ? 4 : 1); i++)
        for (int j = 0; j < (bhist ? 4 : 1); j++) {
            snprintf(x, sizeof x, "%s%s", a, sfx[i]);
            snprintf(y, sizeof y, "%s%s", b, sfx[j]);
            if (strcmp(x, y) == 0)
                return 1;
        }
    return 0;
}

/* The metric, the server's own or defined before, that name would clash with, or NULL;
 * *own tells which. The server's are read from its exposition (its TYPE lines). */
static const char *clashing(const char *name, int hist, int *own, char *buf, size_t bufsz)
{
    for (size_t i = 0; i < nmetrics; i++)
        if (clash(name, hist, metrics[i].name, metrics[i].histogram)) {
            *own = 0;
            return metrics[i].name;
        }
    sh_metrics zero;
    memset(&zero, 0, sizeof zero);
    if (sh_metrics_inc(&zero, name, 0) == 0) { /* host.metrics.inc's name for one of the server's */
        snprintf(buf, bufsz, "%s_total", name);
        *own = 1;
        return buf;
    }
    size_t len;
    char *text = sh_metrics_render(&zero, 0, &len), *found = NULL;
    for (const char *p = text; p && (p = strstr(p, "# TYPE statushost_")); p++) {
        const char *n = p + 18;
        size_t nl = strcspn(n, " \n");
        snprintf(buf, bufsz, "%.*s", (int)nl, n);
        if (clash(name, hist, buf, strncmp(n + nl, " histogram", 10) == 0)) {
            found = buf;
            break;
        }
    }
    free(text);
    *own = 1;
    return found;
}

int sh_user_metric_define_lua(lua_State *L)
{
    const char *name = sh_checklstring(L, 1, NULL);
    const char *kind = sh_checklstring(L, 2, NULL);
    size_t hl;
    const char *help = sh_checklstring(L, 3, &hl);
    if (!valid_name(name))
        return sh_argerror(L, 1, "a metric name is [a-z_][a-z0-9_]*, at most 100 bytes");
    int hist = strcmp(kind, "histogram") == 0;
    if (!hist && strcmp(kind, "counter") != 0)
        return sh_argerror(L, 2, "expected \"counter\" or \"histogram\"");
    if (memchr(help, '\n', hl) || memchr(help, '\\', hl))
        return sh_argerror(L, 3, "help text is one line without backslashes");
    const char *labels[MAX_LABELS];
    int nl = 0;
    if (!lua_isnoneornil(L, 4)) {
        sh_checktype(L, 4, LUA_TTABLE);
        lua_Integer n = luaL_len(L, 4);
        if (n > MAX_LABELS)
            return sh_argerror(L, 4, "at most 8 label names");
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, i);
            /* a string, kept alive by the table (a number's text would be a temporary) */
            labels[nl] = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            /* "le" is the histograms'; "worker" the one --workers adds to every sample
             * (a second one would make the whole exposition invalid) */
            /* "__" starts the names Prometheus keeps for itself: a __name__ label renames
             * the sample (a series of another metric's name, even the server's own) */
            if (!valid_name(labels[nl]) || strcmp(labels[nl], "le") == 0 ||
                strcmp(labels[nl], "worker") == 0 || strncmp(labels[nl], "__", 2) == 0)
                return sh_argerror(L, 4, "label names are [a-z_][a-z0-9_]* (not \"le\" or "
                                         "\"worker\", nor starting with \"__\")");
            for (int j = 0; j < nl; j++)
                if (strcmp(labels[j], labels[nl]) == 0)
                    return sh_argerror(L, 4, "a label name appears twice");
            nl++;
            lua_pop(L, 1); /* still referenced by the table */
        }
        /* a list, and nothing else: a name past a hole was left out without a word */
        lua_Integer keys = 0;
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            keys++;
            lua_pop(L, 1);
        }
        if (keys != n)
            return sh_argerror(L, 4, "label names are a list of strings (1, 2, ... without "
                                     "holes or other keys)");
    }
    metric *m = find(name);
    if (m) { /* defined by an earlier generation: it must be the same metric */
        int same = m->histogram == hist && m->nlabels == nl;
        for (int i = 0; same && i < nl; i++)
            same = strcmp(m->label[i], labels[i]) == 0;
        if (!same)
            return luaL_error(L, "%s: metric %s is already defined with another kind or labels",
                              SH_FNAME(L), name);
        return 0;
    }
    if (nmetrics == MAX_METRICS)
        return luaL_error(L, "%s: at most %d metrics", SH_FNAME(L), MAX_METRICS);
    char buf[128];
    int own;
    const char *other = clashing(name, hist, &own, buf, sizeof buf);
    if (other)
        return luaL_error(L, "%s: metric %s would clash with %s statushost_%s in /metrics",
                          SH_FNAME(L), name, own ? "the server's own" : "the policy's", other);
    m = &metrics[nmetrics];
    memset(m, 0, sizeof *m);
    m->name = strdup(name);
    m->help = strdup(help);
    m->histogram = hist;
    m->nlabels = nl;
    int bad = !m->name || !m->help;
    for (int i = 0; i < nl; i++)
        bad |= !(m->label[i] = strdup(labels[i]));
    if (bad) {
        for (int i = 0; i < nl; i++)
            free(m->label[i]);
        free(m->name);
        free(m->help);
        return luaL_error(L, "%s: out of memory", SH_FNAME(L));
    }
    nmetrics++;
    return 0;
}

/* Append s (n bytes) to key at *kl with Prometheus escaping; a NUL byte or a
 * byte of invalid UTF-8 becomes U+FFFD (the exposition is UTF-8, and a NUL
 * would cut the key). -1 when full. */
static int esc(char *key, size_t *kl, size_t cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (*kl + 4 >= cap)
            return -1;
        if (c == 0 || (c >= 0x80 && (len > n - i ||
                                     !sh_utf8_valid((const uint8_t *)s + i, len)))) {
            memcpy(key + *kl, "\xef\xbf\xbd", 3);
            *kl += 3;
            i++;
            continue;
        }
        if (len > 1) {
            memcpy(key + *kl, s + i, len);
            *kl += len;
            i += len;
            continue;
        }
        if (c == '"' || c == '\\' || c == '\n')
            key[(*kl)++] = '\\';
        key[(*kl)++] = c == '\n' ? 'n' : (char)c;
        i++;
    }
    key[*kl] = '\0';
    return 0;
}

int sh_user_metric_lua(lua_State *L, sh_metrics *mt, const char *name, double v, int labels_at,
                       int observe)
{
    (void)mt;
    metric *m = find(name);
    if (!m)
        return sh_argerror(L, 1, lua_pushfstring(L, "unknown metric %s (define it with "
                                                    "host.metrics.define, or use jobs_started, "
                                                    "jobs_completed, jobs_timed_out, jobs_failed)",
                                                 name));
    if (m->histogram != observe)
        return sh_argerror(L, 1, m->histogram ? "a histogram: use host.metrics.observe"
                                              : "a counter: use host.metrics.inc");
    if (!observe && v < 0)
        return sh_argerror(L, 2, "must not be negative");
    /* the series key */
    char key[1024];
    size_t kl = 0;
    key[0] = '\0';
    int lt = lua_istable(L, labels_at);
    if (!lt && !lua_isnoneornil(L, labels_at))
        return sh_argerror(L, labels_at, "labels must be a table");
    for (int i = 0; i < m->nlabels; i++) {
        size_t vl = 0;
        const char *val = "";
        int pushed = 0;
        if (lt) {
            lua_getfield(L, labels_at, m->label[i]);
            pushed = 1;
            if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
                val = lua_tolstring(L, -1, &vl);
            else if (!lua_isnil(L, -1))
                return sh_argerror(L, labels_at, "label values must be strings");
        }
        int n = snprintf(key + kl, sizeof key - kl, "%s%s=\"", i ? "," : "", m->label[i]);
        if (n < 0 || (size_t)n >= sizeof key - kl)
            return sh_argerror(L, labels_at, "label values too long");
        kl += (size_t)n;
        if (esc(key, &kl, sizeof key, val, vl) != 0 || kl + 2 >= sizeof key)
            return sh_argerror(L, labels_at, "label values too long");
        key[kl++] = '"';
        key[kl] = '\0';
        if (pushed)
            lua_pop(L, 1);
    }
    series *s = NULL;
    for (size_t i = 0; i < m->ns; i++)
        if (strcmp(m->s[i].labels, key) == 0) {
            s = &m->s[i];
            break;
        }
    if (!s) {
        if (m->ns == MAX_SERIES)
            return luaL_error(L, "%s: metric %s has %d label combinations already", SH_FNAME(L),
                              name, MAX_SERIES);
        if (m->ns == m->cap) {
            size_t cap = m->cap ? 2 * m->cap : 4;
            series *ns = realloc(m->s, cap * sizeof *ns);
            if (!ns)
                return luaL_error(L, "%s: out of memory", SH_FNAME(L));
            m->s = ns;
            m->cap = cap;
        }
        s = &m->s[m->ns];
        memset(s, 0, sizeof *s);
        if (!(s->labels = strdup(key)))
            return luaL_error(L, "%s: out of memory", SH_FNAME(L));
        m->ns++;
    }
    s->value += v;
    if (observe) {
        s->count++;
        for (int i = 0; i < NBUCKETS; i++)
            if (v <= bounds[i])
                s->buckets[i]++;
    }
    return 0;
}

static int put(char **out, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int put(char **out, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*out + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -1;
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return 0;
        }
        char *p = realloc(*out, *cap * 2 + (size_t)n);
        if (!p)
            return -1;
        *out = p;
        *cap = *cap * 2 + (size_t)n;
    }
}

int sh_user_metrics_render(char **out, size_t *len, size_t *cap)
{
    int bad = 0;
    for (size_t i = 0; i < nmetrics; i++) {
        metric *m = &metrics[i];
        bad |= put(out, len, cap, "# HELP statushost_%s %s\n# TYPE statushost_%s %s\n", m->name,
                   m->help, m->name, m->histogram ? "histogram" : "counter");
        if (m->ns == 0 && m->nlabels == 0 && !m->histogram)
            bad |= put(out, len, cap, "statushost_%s 0\n", m->name); /* before its first inc */
        for (size_t j = 0; j < m->ns; j++) {
            series *s = &m->s[j];
            const char *l = s->labels;
            if (!m->histogram) {
                char v[32];
                bad |= put(out, len, cap, "statushost_%s%s%s%s %s\n", m->name, *l ? "{" : "",
                           l, *l ? "}" : "", sh_prom_value(v, sizeof v, s->value));
                continue;
            }
            for (int k = 0; k < NBUCKETS; k++)
                bad |= put(out, len, cap, "statushost_%s_bucket{%s%sle=\"%g\"} %llu\n", m->name, l,
                           *l ? "," : "", bounds[k], (unsigned long long)s->buckets[k]);
            bad |= put(out, len, cap, "statushost_%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->name, l,
                       *l ? "," : "", (unsigned long long)s->count);
            char v[32];
            bad |= put(out, len, cap, "statushost_%s_sum%s%s%s %s\n", m->name, *l ? "{" : "", l,
                       *l ? "}" : "", sh_prom_value(v, sizeof v, s->value));
            bad |= put(out, len, cap, "statushost_%s_count%s%s%s %llu\n", m->name, *l ? "{" : "",
                       l, *l ? "}" : "", (unsigned long long)s->count);
        }
    }
    return bad ? -1 : 0;
}

size_t sh_user_metrics_count(void) { return nmetrics; }

void sh_user_metrics_forget_from(size_t keep)
{
    for (size_t i = keep; i < nmetrics; i++) {
        metric *m = &metrics[i];
        for (size_t j = 0; j < m->ns; j++)
            free(m->s[j].labels);
        free(m->s);
        for (int k = 0; k < m->nlabels; k++)
            free(m->label[k]);
        free(m->name);
        free(m->help);
    }
    nmetrics = keep < nmetrics ? keep : nmetrics;
}

void sh_user_metrics_free(void) { sh_user_metrics_forget_from(0); }
