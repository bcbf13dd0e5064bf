/* cfgfile.h — the --config FILE: KEY=VALUE lines, the same keys as --set.
 *
 *   # /etc/statushost/statushost.conf
 *   listen = 0.0.0.0:9999
 *   redis=redis://10.0.0.5:6379/2
 *   allowed_origins = "https://a.example, https://b.example"
 *
 * Blank lines and lines starting with '#' are skipped; spaces around the key
 * and the value are trimmed, and one pair of matching quotes around the value
 * is removed. The file's entries are applied before the command line's
 * (--listen, --redis, --set), so the command line wins. SIGHUP reads the file
 * again (sh_options_refresh). */
#ifndef SH_CFGFILE_H
#define SH_CFGFILE_H

#include <stddef.h>

struct sh_options;

/* Read path (NULL: no file) and build the override list: the file's
 * "KEY=VALUE" entries, then cli[0..ncli) (which must outlive the process's
 * use of them). Sets o->sets and o->nsets. Returns 0, or -1 with a one-line
 * reason in err. */
int sh_cfgfile_init(struct sh_options *o, const char *path, const char *const *cli, size_t ncli,
                    char *err, size_t errsz);

/* Read the file again (for a reload) and rebuild o->sets. With no file, does
 * nothing. On error (-1, reason in err) o is unchanged. */
int sh_options_refresh(struct sh_options *o, char *err, size_t errsz);

/* Rewrite an error about a setting so it names the file and line the setting
 * came from: "--set K=V: …" → "FILE:LINE: K=V: …"; "config.K …" gets
 * " (set in FILE:LINE)" when the file, not the command line, set K. */
void sh_cfgfile_explain(char *err, size_t errsz);

/* Release everything (atexit). */
void sh_cfgfile_free(void);

#endif
