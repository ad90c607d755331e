/* Leveled logging to stderr. Lines read "<elapsed s> <level> <node>/<nodes> <module>: message". */
#include "petrel/core.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -1 until first use, so that PETREL_LOG is read lazily without an init call. */
static _Atomic int log_level = -1;
static _Atomic int log_rank = 0;
static _Atomic int log_size = 1;
static _Atomic uint64_t log_t0_ns = 0;

static const char *const level_names[PETREL_LOG_LEVEL_COUNT] = {"error", "warn", "info", "debug"};

static petrel_log_level level_from_env(void) {
    const char *s = getenv("PETREL_LOG");
    if (s)
        for (int i = 0; i < PETREL_LOG_LEVEL_COUNT; i++)
            if (strcmp(s, level_names[i]) == 0) return (petrel_log_level)i;
    return PETREL_LOG_LEVEL_WARN;
}

petrel_log_level petrel_log_get_level(void) {
    int lvl = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (lvl < 0) {
        lvl = (int)level_from_env();
        atomic_store_explicit(&log_level, lvl, memory_order_relaxed);
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&log_t0_ns, &zero, petrel_now_ns());
    }
    return (petrel_log_level)lvl;
}

void petrel_log_set_level(petrel_log_level level) {
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&log_t0_ns, &zero, petrel_now_ns());
}

void petrel_log_set_node(int rank, int size) {
    atomic_store(&log_rank, rank);
    atomic_store(&log_size, size);
}

void petrel_log_write(petrel_log_level level, const char *module, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    double elapsed = (double)(petrel_now_ns() - atomic_load(&log_t0_ns)) * 1e-9;
    /* One fprintf per line so that lines from concurrent threads do not interleave. */
    fprintf(stderr, "%9.3f %-5s %d/%d %s: %s\n", elapsed,
            level_names[level < PETREL_LOG_LEVEL_COUNT ? level : 0], atomic_load(&log_rank),
            atomic_load(&log_size), module, msg);
}
