/*
 * Minimal test harness. A test file defines static functions and lists them in
 * main with RUN(name). Each prints "ok - name" or "FAIL - name (file:line: why)";
 * CHECK_DONE() prints "N passed, N failed" and returns the exit code.
 *
 *     static void test_add(void) { CHECK_NEAR(1.0 + 2.0, 3.0, 0, 0); }
 *     int main(void) { RUN(test_add); return CHECK_DONE(); }
 */
#ifndef PETREL_TESTS_CHECK_H
#define PETREL_TESTS_CHECK_H

#include "petrel/petrel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_passed, check_failed, check_current_failed;
static const char *check_current;

static void check_fail(const char *file, int line, const char *fmt, ...) PETREL_PRINTF(3, 4);
static void check_fail(const char *file, int line, const char *fmt, ...) {
    if (check_current_failed++) return; /* report the first failure of a test only */
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    printf("FAIL - %s (%s:%d: %s)\n", check_current, file, line, why);
    fflush(stdout);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) check_fail(__FILE__, __LINE__, "%s", #cond);                                  \
    } while (0)

#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        petrel_err check_e_ = (expr);                                                              \
        if (check_e_ != PETREL_OK)                                                                 \
            check_fail(__FILE__, __LINE__, "%s returned %s: %s", #expr, petrel_strerror(check_e_), \
                       petrel_errmsg());                                                           \
    } while (0)

#define CHECK_ERR(expr, want)                                                                      \
    do {                                                                                           \
        petrel_err check_e_ = (expr);                                                              \
        if (check_e_ != (want))                                                                    \
            check_fail(__FILE__, __LINE__, "%s returned %s, expected %s", #expr,                   \
                       petrel_strerror(check_e_), petrel_strerror(want));                          \
    } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_NEAR(a, b, atol, rtol)                                                               \
    do {                                                                                           \
        double check_a_ = (double)(a), check_b_ = (double)(b);                                     \
        if (!(fabs(check_a_ - check_b_) <= (atol) + (rtol)*fabs(check_b_)))                        \
            check_fail(__FILE__, __LINE__, "%s = %.9g, expected %s = %.9g", #a, check_a_, #b,      \
                       check_b_);                                                                  \
    } while (0)

/* Element-wise CHECK_NEAR over n floats; reports the first index that differs. */
#define CHECK_TENSOR_NEAR(got, want, n, atol, rtol)                                                \
    do {                                                                                           \
        const float *check_g_ = (got), *check_w_ = (want);                                         \
        for (size_t check_i_ = 0; check_i_ < (size_t)(n); check_i_++) {                            \
            double d_ = fabs((double)check_g_[check_i_] - (double)check_w_[check_i_]);             \
            if (!(d_ <= (atol) + (rtol)*fabs((double)check_w_[check_i_]))) {                       \
                check_fail(__FILE__, __LINE__, "%s[%zu] = %.9g, expected %.9g", #got, check_i_,    \
                           (double)check_g_[check_i_], (double)check_w_[check_i_]);                \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        check_current = #fn;                                                                       \
        check_current_failed = 0;                                                                  \
        petrel_error_clear();                                                                      \
        fn();                                                                                      \
        if (check_current_failed)                                                                  \
            check_failed++;                                                                        \
        else {                                                                                     \
            check_passed++;                                                                        \
            printf("ok - %s\n", #fn);                                                              \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

#define CHECK_DONE()                                                                               \
    (printf("%d passed, %d failed\n", check_passed, check_failed), check_failed ? 1 : 0)

/* The seed of a randomized test file: $PETREL_TEST_SEED when set, else fallback. */
static inline uint64_t check_seed(uint64_t fallback) {
    const char *env = getenv("PETREL_TEST_SEED");
    return env ? strtoull(env, NULL, 10) : fallback;
}

/* RUN, and on failure the line that repeats it with the same random numbers. */
#define RUN_SEEDED(fn, seed)                                                                       \
    do {                                                                                           \
        RUN(fn);                                                                                   \
        if (check_current_failed)                                                                  \
            printf("# %s failed with seed %llu (PETREL_TEST_SEED=%llu repeats it)\n", #fn,         \
                   (unsigned long long)(seed), (unsigned long long)(seed));                        \
    } while (0)

/* A last test, "no_leaks": every byte allocated since `before` (a
 * petrel_alloc_stats) has been freed. */
#define CHECK_NO_LEAKS(before)                                                                     \
    do {                                                                                           \
        check_current = "no_leaks";                                                                \
        check_current_failed = 0;                                                                  \
        CHECK(petrel_alloc_get_stats().live_bytes == (before).live_bytes);                         \
        if (check_current_failed)                                                                  \
            check_failed++;                                                                        \
        else {                                                                                     \
            check_passed++;                                                                        \
            printf("ok - no_leaks\n");                                                             \
        }                                                                                          \
    } while (0)

/* Skips the whole test executable (CTest reads exit 77 as skipped). */
#define CHECK_SKIP_ALL(why)                                                                        \
    do {                                                                                           \
        printf("skip - %s\n", why);                                                                \
        exit(77);                                                                                  \
    } while (0)

/* Whole files, for tests that damage a file on purpose: the bytes at path (malloc'd,
 * *len of them), and path overwritten with len bytes. Abort when the file system
 * fails: that is the test machine's fault, not the code under test's. */
static inline unsigned char *check_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len ? *len : 1);
    if (!b || fread(b, 1, *len, f) != *len) abort();
    fclose(f);
    return b;
}

static inline void check_write_file(const char *path, const unsigned char *b, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, len, f) != len) abort();
    fclose(f);
}

#endif
