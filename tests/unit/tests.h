/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned tests_checks, tests_failed;

#define CHECK(expr)                                                                             \
        do {                                                                                    \
                tests_checks++;                                                                 \
                if (!(expr)) {                                                                  \
                        tests_failed++;                                                         \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
                }                                                                               \
        } while (0)

#define CHECK_EQ_INT(a, b)                                                                      \
        do {                                                                                    \
                long long _a = (long long) (a), _b = (long long) (b);                           \
                tests_checks++;                                                                 \
                if (_a != _b) {                                                                 \
                        tests_failed++;                                                         \
                        fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, _a, #b, _b); \
                }                                                                               \
        } while (0)

#define CHECK_STREQ(a, b)                                                                       \
        do {                                                                                    \
                const char *_a = (a), *_b = (b);                                                \
                tests_checks++;                                                                 \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                        \
                        tests_failed++;                                                         \
                        fprintf(stderr, "%s:%d: %s == '%s', expected '%s'\n", __FILE__, __LINE__, #a, _a ?: "(null)", _b ?: "(null)"); \
                }                                                                               \
        } while (0)

static inline int tests_finish(const char *name) {
        if (tests_failed) {
                fprintf(stderr, "%s: %u of %u checks failed\n", name, tests_failed, tests_checks);
                return EXIT_FAILURE;
        }
        printf("%s: all %u checks passed\n", name, tests_checks);
        return EXIT_SUCCESS;
}
