/* Monotonic timers and resource usage. */
#include "petrel/core.h"

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
