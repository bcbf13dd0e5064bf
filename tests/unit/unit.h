/* unit.h — the few check macros the unit tests share.
 *
 * Each test is one main() that runs its checks and ends with
 * `return unit_done("name");`: one line per failed check on stdout, a summary
 * line, and a nonzero exit status when anything failed. Header-only and
 * static on purpose: every test binary gets its own counters. */
#ifndef SH_UNIT_H
#define SH_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_checks;   /* checks run so far */
static int unit_failures; /* checks that failed so far */

/* Record one check; print where it failed, with an optional printf-style
 * explanation. */
#define CHECKF(cond, ...)                                                    \
    do {                                                                     \
        unit_checks++;                                                       \
        if (!(cond)) {                                                       \
            unit_failures++;                                                 \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

#define CHECK(cond) CHECKF(cond, "%s", "")

/* Integers compared as long long; both values printed on failure. */
#define CHECK_INT(got, want)                                                 \
    do {                                                                     \
        long long g_ = (long long)(got), w_ = (long long)(want);            \
        CHECKF(g_ == w_, "got %lld, want %lld", g_, w_);                     \
    } while (0)

/* NUL-terminated strings; NULL equals only NULL. */
#define CHECK_STR(got, want)                                                 \
    do {                                                                     \
        const char *g_ = (got), *w_ = (want);                                \
        CHECKF((g_ == NULL && w_ == NULL) ||                                 \
                   (g_ != NULL && w_ != NULL && strcmp(g_, w_) == 0),        \
               "got \"%s\", want \"%s\"", g_ ? g_ : "(null)",                 \
               w_ ? w_ : "(null)");                                          \
    } while (0)

/* Print the summary; the exit status for main(). */
static inline int unit_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, unit_checks - unit_failures, unit_failures);
    return unit_failures != 0;
}

#endif
