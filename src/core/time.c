/* Monotonic timers and resource usage. */
#include "petrel/core.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

uint64_t petrel_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double petrel_now_s(void) {
    return (double)petrel_now_ns() * 1e-9;
}

double petrel_peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double petrel_median(double *v, int n) {
    PETREL_ASSERT(n > 0, "the median of no values");
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
