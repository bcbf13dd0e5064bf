/* cfgfile.c — see cfgfile.h. */
#include "cfgfile.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"

#define CFG_MAX_BYTES (1 << 20)

struct entry {
    char *kv;   /* "KEY=VALUE" */
    int line;
};

static char *path;
static const char *const *cli;
static size_t ncli;
static struct entry *entries;
static size_t nentries;
static const char **combined;

static void free_entries(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].kv);
    free(e);
}

static char *trim(char *s, char *e)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    *e = '\0';
    return s;
}

/* Parse the file into a new entry list. */
static int read_file(const char *p, struct entry **out, size_t *nout, char *err, size_t errsz)
{
    /* not a FIFO (open and read would block the loop on SIGHUP), a device
     * (/dev/zero never ends) or a directory: a regular file of at most
     * CFG_MAX_BYTES */
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errsz, "--config %s: %s", p, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CFG_MAX_BYTES) {
        snprintf(err, errsz, "--config %s: %s", p,
                 S_ISREG(st.st_mode) ? "larger than 1 MiB" : "not a regular file");
        close(fd);
        return -1;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        snprintf(err, errsz, "--config %s: %s", p, strerror(errno));
        close(fd);
        return -1;
    }
    struct entry *e = NULL;
    size_t n = 0, cap = 0;
    char *buf = NULL;
    size_t bufcap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    size_t total = 0;
    errno = 0;
    while ((len = getline(&buf, &bufcap, f)) >= 0) {
        lineno++;
        total += (size_t)len;
        if (total > CFG_MAX_BYTES) { /* it grew while being read */
            snprintf(err, errsz, "--config %s: larger than 1 MiB", p);
            rc = -1;
            break;
        }
        if (memchr(buf, '\0', (size_t)len)) {
            snprintf(err, errsz, "%s:%d: a NUL byte", p, lineno);
            rc = -1;
            break;
        }
        char *s = trim(buf, buf + len);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errsz, "%s:%d: expected KEY=VALUE, got \"%.60s\"", p, lineno, s);
            rc = -1;
            break;
        }
        char *key = trim(s, eq);
        char *val = eq + 1;
        val = trim(val, val + strlen(val));
        int ok = *key != '\0';
        for (char *k = key; *k; k++)
            if (!isalnum((unsigned char)*k) && *k != '_')
                ok = 0;
        if (!ok) {
            snprintf(err, errsz, "%s:%d: \"%.60s\" is not a config key", p, lineno, key);
            rc = -1;
            break;
        }
        size_t vl = strlen(val);
        if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
            val[vl - 1] = '\0';
            val++;
        }
        if (n == cap) {
            struct entry *ne = realloc(e, (cap ? cap * 2 : 16) * sizeof *e);
            if (!ne) {
                snprintf(err, errsz, "--config %s: out of memory", p);
                rc = -1;
                break;
            }
            e = ne;
            cap = cap ? cap * 2 : 16;
        }
        size_t kl = strlen(key) + strlen(val) + 2;
        if (!(e[n].kv = malloc(kl))) {
            snprintf(err, errsz, "--config %s: out of memory", p);
            rc = -1;
            break;
        }
        snprintf(e[n].kv, kl, "%s=%s", key, val);
        e[n].line = lineno;
        n++;
    }
    if (rc == 0 && (ferror(f) || !feof(f))) { /* a read error, or getline out of memory */
        snprintf(err, errsz, "--config %s: %s", p, strerror(errno));
        rc = -1;
    }
    free(buf);
    fclose(f);
    if (rc != 0) {
        free_entries(e, n);
        return -1;
    }
    *out = e;
    *nout = n;
    return 0;
}

/* file entries, then the command line's; -1 when out of memory (o unchanged) */
static int rebuild(struct sh_options *o)
{
    const char **c = calloc(nentries + ncli + 1, sizeof *c);
    if (!c)
        return -1;
    free(combined);
    combined = c;
    size_t n = 0;
    for (size_t i = 0; i < nentries; i++)
        combined[n++] = entries[i].kv;
    for (size_t i = 0; i < ncli; i++)
        combined[n++] = cli[i];
    o->sets = combined;
    o->nsets = n;
    return 0;
}

int sh_cfgfile_init(struct sh_options *o, const char *p, const char *const *c, size_t nc,
                    char *err, size_t errsz)
{
    sh_cfgfile_free();
    cli = c;
    ncli = nc;
    if (p) {
        if (read_file(p, &entries, &nentries, err, errsz) != 0)
            return -1;
        if (!(path = strdup(p)))
            goto nomem;
    }
    if (rebuild(o) == 0)
        return 0;
nomem:
    snprintf(err, errsz, "out of memory");
    return -1;
}

int sh_options_refresh(struct sh_options *o, char *err, size_t errsz)
{
    if (!path)
        return 0;
    struct entry *e;
    size_t n;
    if (read_file(path, &e, &n, err, errsz) != 0)
        return -1;
    struct entry *old = entries;
    size_t nold = nentries;
    entries = e;
    nentries = n;
    if (rebuild(o) != 0) { /* keep the old file's entries */
        entries = old;
        nentries = nold;
        free_entries(e, n);
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    free_entries(old, nold);
    return 0;
}

static size_t key_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

void sh_cfgfile_explain(char *err, size_t errsz)
{
    if (!path || !err)
        return;
    char tmp[1024];
    if (strncmp(err, "--set ", 6) == 0) {
        for (size_t i = 0; i < nentries; i++) {
            size_t kl = strlen(entries[i].kv);
            if (strncmp(err + 6, entries[i].kv, kl) == 0 && err[6 + kl] == ':') {
                snprintf(tmp, sizeof tmp, "%s:%d: %s", path, entries[i].line, err + 6);
                snprintf(err, errsz, "%s", tmp);
                return;
            }
        }
        return;
    }
    if (strncmp(err, "config.", 7) == 0) {
        const char *k = err + 7;
        size_t kl = strcspn(k, " [.");
        for (size_t i = 0; i < ncli; i++)
            if (key_len(cli[i]) == kl && strncmp(cli[i], k, kl) == 0)
                return; /* the command line set it last */
        for (size_t i = nentries; i-- > 0;)
            if (key_len(entries[i].kv) == kl && strncmp(entries[i].kv, k, kl) == 0) {
                snprintf(tmp, sizeof tmp, "%s (set in %s:%d)", err, path, entries[i].line);
                snprintf(err, errsz, "%s", tmp);
                return;
            }
    }
}

void sh_cfgfile_free(void)
{
    free_entries(entries, nentries);
    entries = NULL;
    nentries = 0;
    free(combined);
    combined = NULL;
    free(path);
    path = NULL;
}
