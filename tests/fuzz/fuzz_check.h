/* fuzz_check.h — the fuzz targets' invariant check: a violation prints the
 * target's name, the place and the condition, then aborts (libFuzzer keeps
 * the input). Each target defines FUZZ_NAME before including this. */
#ifndef SH_FUZZ_CHECK_H
#define SH_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, FUZZ_NAME ": %s:%d: check failed: %s: ", __FILE__, __LINE__,   \
                    #cond);                                                                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
