/*
 * petrel core: errors, logging, counted allocation, arenas, RNG, timers, threads.
 *
 * Every other module builds on these. Nothing here prints to stdout or exits.
 *
 * Errors: a function that can fail returns petrel_err (PETREL_OK is 0) and leaves
 * its out-parameters untouched on failure. The human-readable detail of the last
 * failure on this thread (file, line, peer, what was expected) is kept by
 * petrel_error_set() and read back with petrel_errmsg().
 *
 * Threading: errors and the RNG are per caller (thread-local or caller-owned);
 * the allocation counters and the log level are process-wide atomics, safe from
 * any thread. An arena belongs to one thread at a time.
 *
 *     petrel_arena a;
 *     petrel_arena_init(&a, 1 << 20);
 *     float *x = petrel_arena_alloc(&a, 256 * sizeof(float));
 *     if (!x) fprintf(stderr, "%s\n", petrel_errmsg());
 *     petrel_arena_reset(&a);   // keeps the memory for the next step
 *     petrel_arena_fini(&a);
 */
#ifndef PETREL_CORE_H
#define PETREL_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PETREL_VERSION_MAJOR  0
#define PETREL_VERSION_MINOR  1
#define PETREL_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define PETREL_NODISCARD    __attribute__((warn_unused_result))
#define PETREL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PETREL_NODISCARD
#define PETREL_PRINTF(f, a)
#endif

/* ---- errors ------------------------------------------------------------ */

typedef enum petrel_err {
    PETREL_OK = 0,
    PETREL_ERR_NOMEM,       /* an allocation failed */
    PETREL_ERR_INVALID,     /* an argument or a configuration value is out of range */
    PETREL_ERR_IO,          /* open/read/write failed; errno-level detail in petrel_errmsg() */
    PETREL_ERR_FORMAT,      /* a file or message is malformed */
    PETREL_ERR_TIMEOUT,     /* a blocking wait ran out of time */
    PETREL_ERR_NOT_FOUND,   /* a named thing does not exist */
    PETREL_ERR_UNSUPPORTED, /* valid request that this build cannot serve */
    PETREL_ERR_STATE,       /* call not allowed in the object's current state */
    PETREL_ERR_COUNT
} petrel_err;

/* Short constant description of an error code ("out of memory"). Never NULL. */
const char *petrel_strerror(petrel_err err);

/* Records the detail of a failure for this thread and returns err, so that
 * `return petrel_error_set(PETREL_ERR_FORMAT, "%s:%d: expected ...", ...)` reads
 * as one statement. */
petrel_err petrel_error_set(petrel_err err, const char *fmt, ...) PETREL_PRINTF(2, 3);

/* The detail recorded by the last petrel_error_set() on this thread, or "" when
 * none. The pointer stays valid until the next petrel_error_set() on this thread. */
const char *petrel_errmsg(void);

/* Clears this thread's recorded error detail. */
void petrel_error_clear(void);

/* Aborts with file, line and the hint. For programming errors only (wrong shapes
 * passed to an op, a broken invariant): never for file contents, peer bytes,
 * out-of-memory or timeouts. Always on, also in release builds. */
#define PETREL_ASSERT(cond, hint)                                                                  \
    do {                                                                                           \
        if (!(cond)) petrel_assert_fail(__FILE__, __LINE__, #cond, hint);                          \
    } while (0)

void petrel_assert_fail(const char *file, int line, const char *cond, const char *hint)
    __attribute__((noreturn));

/* Marks a place the code cannot reach (the end of a switch over every enum value):
 * aborts like a failed assertion, and tells the compiler that control ends here. */
#define PETREL_UNREACHABLE(hint) petrel_assert_fail(__FILE__, __LINE__, "unreachable", hint)

/* ---- logging ----------------------------------------------------------- */

typedef enum petrel_log_level {
    PETREL_LOG_LEVEL_ERROR = 0,
    PETREL_LOG_LEVEL_WARN,
    PETREL_LOG_LEVEL_INFO,
    PETREL_LOG_LEVEL_DEBUG,
    PETREL_LOG_LEVEL_COUNT
} petrel_log_level;

/* Current level; initialized from the PETREL_LOG environment variable
 * (error|warn|info|debug, default warn) on first use. */
petrel_log_level petrel_log_get_level(void);
void petrel_log_set_level(petrel_log_level level);

/* Which node this process is, for the "<node>/<nodes>" field of log lines. */
void petrel_log_set_node(int rank, int size);

/* Writes one line to stderr: "<elapsed s> <level> <node>/<nodes> <module>: message".
 * Use the macros below, which skip formatting when the level is off. */
void petrel_log_write(petrel_log_level level, const char *module, const char *fmt, ...)
    PETREL_PRINTF(3, 4);

#define PETREL_LOG_AT(lvl, module, ...)                                                            \
    do {                                                                                           \
        if ((lvl) <= petrel_log_get_level()) petrel_log_write((lvl), (module), __VA_ARGS__);       \
    } while (0)
#define PETREL_LOG_ERROR(module, ...) PETREL_LOG_AT(PETREL_LOG_LEVEL_ERROR, module, __VA_ARGS__)
#define PETREL_LOG_WARN(module, ...)  PETREL_LOG_AT(PETREL_LOG_LEVEL_WARN, module, __VA_ARGS__)
#define PETREL_LOG_INFO(module, ...)  PETREL_LOG_AT(PETREL_LOG_LEVEL_INFO, module, __VA_ARGS__)
#define PETREL_LOG_DEBUG(module, ...) PETREL_LOG_AT(PETREL_LOG_LEVEL_DEBUG, module, __VA_ARGS__)

/* ---- counted allocation ------------------------------------------------ */

/* All of petrel allocates through these. Memory is 64-byte aligned (one cache
 * line, one AVX-512 register). Failure returns NULL and records an error. */
void *petrel_malloc(size_t bytes);
void *petrel_calloc(size_t count, size_t size);
void *petrel_realloc(void *ptr, size_t bytes);
void petrel_free(void *ptr);
char *petrel_strdup(const char *s);

typedef struct petrel_alloc_stats {
    uint64_t calls;      /* successful allocations since start (malloc, calloc, realloc) */
    uint64_t live_bytes; /* bytes currently allocated */
    uint64_t peak_bytes; /* largest live_bytes seen */
} petrel_alloc_stats;

petrel_alloc_stats petrel_alloc_get_stats(void);

/* Makes the allocation after the next n succeed-able ones fail (n = 0: the very
 * next one fails). A negative n turns failure injection off. For tests. */
void petrel_alloc_fail_after(int64_t n);

/* ---- arenas ------------------------------------------------------------ */

/* A bump allocator over a list of blocks. Reset keeps the memory: after the first
 * training step has sized it, later steps allocate nothing from the system. */
typedef struct petrel_arena {
    struct petrel_arena_block *head; /* block being filled */
    size_t block_bytes;              /* size of the next block to create */
    size_t used_bytes;               /* bytes handed out since the last reset */
    size_t peak_bytes;               /* largest used_bytes seen at a reset */
} petrel_arena;

void petrel_arena_init(petrel_arena *a, size_t block_bytes);
void petrel_arena_fini(petrel_arena *a);

/* Returns 64-byte-aligned memory that lives until the next reset, or NULL with an
 * error recorded when the system is out of memory. */
void *petrel_arena_alloc(petrel_arena *a, size_t bytes);

/* Same, zero-filled. */
void *petrel_arena_calloc(petrel_arena *a, size_t bytes);

/* Forgets every allocation. When the last cycle needed more than one block, the
 * blocks are merged into one big enough for it, so the next cycle needs none. */
void petrel_arena_reset(petrel_arena *a);

/* ---- random numbers ---------------------------------------------------- */

/* xoshiro256** seeded through splitmix64: the same seed gives the same stream on
 * every platform. Caller-owned, not shared between threads. */
typedef struct petrel_rng {
    uint64_t s[4];
} petrel_rng;

void petrel_rng_seed(petrel_rng *rng, uint64_t seed);
uint64_t petrel_rng_u64(petrel_rng *rng);
/* Uniform in [0, n), without modulo bias. n must be > 0. */
uint64_t petrel_rng_below(petrel_rng *rng, uint64_t n);
/* Uniform in [0, 1) with 24 random bits. */
float petrel_rng_uniform(petrel_rng *rng);
/* Standard normal (Box-Muller). */
float petrel_rng_normal(petrel_rng *rng);
/* Fisher-Yates shuffle of n 32-bit indices. */
void petrel_rng_shuffle_u32(petrel_rng *rng, uint32_t *v, size_t n);

/* ---- time -------------------------------------------------------------- */

/* Monotonic clock in nanoseconds / seconds since an arbitrary fixed point. */
uint64_t petrel_now_ns(void);
double petrel_now_s(void);

/* The median of n > 0 values; sorts v in place. For benchmarks and metrics. */
double petrel_median(double *v, int n);

/* Peak resident set size of this process in MiB (from getrusage). */
double petrel_peak_rss_mb(void);

/* ---- threads ----------------------------------------------------------- */

typedef struct petrel_thread petrel_thread;

/* Starts fn(arg) on a new thread. */
PETREL_NODISCARD petrel_err petrel_thread_start(petrel_thread **out, void *(*fn)(void *),
                                                void *arg);
/* Waits for the thread to end and frees it; returns fn's result in *result if
 * result is non-NULL. Accepts NULL. */
void petrel_thread_join(petrel_thread *t, void **result);

/* Number of online processors. */
int petrel_cpu_count(void);

#ifdef __cplusplus
}
#endif
#endif
