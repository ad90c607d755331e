/*
 * Tests of the core module: error codes and messages, log levels, counted allocation
 * with failure injection, arenas, the RNG, timers and threads, and the copy that
 * bypasses the cache.
 *
 * Statistical checks use a fixed seed (PETREL_TEST_SEED overrides it) and bounds
 * several standard deviations wide: they pass for any seed of a correct generator and
 * fail for a biased one. A failing test prints the seed.
 */
#include "check.h"
#include "core/core_impl.h"

#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t seed = 20240611;

/* ---- errors ---------------------------------------------------------------------- */

static void test_strerror(void) {
    CHECK(strcmp(petrel_strerror(PETREL_OK), "ok") == 0);
    CHECK(strcmp(petrel_strerror(PETREL_ERR_NOMEM), "out of memory") == 0);
    for (int e = 0; e < PETREL_ERR_COUNT; e++) {
        const char *s = petrel_strerror((petrel_err)e);
        CHECK(s != NULL && s[0] != '\0');
        CHECK(strcmp(s, "unknown error") != 0);
        for (int f = 0; f < e; f++) CHECK(strcmp(s, petrel_strerror((petrel_err)f)) != 0);
    }
    CHECK(strcmp(petrel_strerror(PETREL_ERR_COUNT), "unknown error") == 0);
    CHECK(strcmp(petrel_strerror((petrel_err)1000), "unknown error") == 0);
}

static void test_error_set_get(void) {
    petrel_error_clear();
    CHECK(strcmp(petrel_errmsg(), "") == 0);
    for (int e = 0; e < PETREL_ERR_COUNT; e++) {
        petrel_err got = petrel_error_set((petrel_err)e, "code %d at %s:%d", e, "file.c", 42);
        CHECK(got == (petrel_err)e);
        char want[64];
        snprintf(want, sizeof want, "code %d at file.c:42", e);
        CHECK(strcmp(petrel_errmsg(), want) == 0);
    }
    petrel_error_clear();
    CHECK(strcmp(petrel_errmsg(), "") == 0);

    /* A message longer than the buffer is truncated, not overflowed. */
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(petrel_error_set(PETREL_ERR_IO, "%s", big) == PETREL_ERR_IO);
    size_t len = strlen(petrel_errmsg());
    CHECK(len > 100 && len < sizeof big - 1);
    CHECK(petrel_errmsg()[0] == 'x');
    petrel_error_clear();
}

static void *set_error_thread(void *arg) {
    (void)arg;
    petrel_error_set(PETREL_ERR_TIMEOUT, "from the thread");
    return strcmp(petrel_errmsg(), "from the thread") == 0 ? (void *)1 : NULL;
}

static void test_error_thread_local(void) {
    petrel_error_set(PETREL_ERR_IO, "main thread");
    petrel_thread *t = NULL;
    CHECK_OK(petrel_thread_start(&t, set_error_thread, NULL));
    void *r = NULL;
    petrel_thread_join(t, &r);
    CHECK(r == (void *)1);
    CHECK(strcmp(petrel_errmsg(), "main thread") == 0);
    petrel_error_clear();
}

/* PETREL_ASSERT aborts with the hint on stderr; run it in a child process. */
static void test_assert_aborts(void) {
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid < 0) return;
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        PETREL_ASSERT(1 + 1 == 2, "never fires");
        PETREL_ASSERT(1 + 1 == 3, "this hint goes to stderr");
        _exit(0); /* not reached */
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

/* ---- logging --------------------------------------------------------------------- */

static int log_arg_evaluations;

static int count_evaluation(void) {
    return ++log_arg_evaluations;
}

/* Must run before anything else reads the level, which is cached on first use. */
static void test_log_level_from_env(void) {
    CHECK(setenv("PETREL_LOG", "error", 1) == 0);
    CHECK(petrel_log_get_level() == PETREL_LOG_LEVEL_ERROR);
    /* Cached: a later change of the environment is not seen. */
    CHECK(setenv("PETREL_LOG", "debug", 1) == 0);
    CHECK(petrel_log_get_level() == PETREL_LOG_LEVEL_ERROR);
    unsetenv("PETREL_LOG");
}

static void test_log_set_get(void) {
    petrel_log_level saved = petrel_log_get_level();
    for (int l = 0; l < PETREL_LOG_LEVEL_COUNT; l++) {
        petrel_log_set_level((petrel_log_level)l);
        CHECK(petrel_log_get_level() == (petrel_log_level)l);
    }
    /* The macros skip formatting, and so evaluating the arguments, below the level. */
    petrel_log_set_level(PETREL_LOG_LEVEL_WARN);
    log_arg_evaluations = 0;
    PETREL_LOG_DEBUG("test", "%d", count_evaluation());
    PETREL_LOG_INFO("test", "%d", count_evaluation());
    CHECK(log_arg_evaluations == 0);
    petrel_log_set_level(PETREL_LOG_LEVEL_ERROR);
    PETREL_LOG_WARN("test", "%d", count_evaluation());
    CHECK(log_arg_evaluations == 0);
    PETREL_LOG_ERROR("test", "expected error line from test_log_set_get (%d)", count_evaluation());
    CHECK(log_arg_evaluations == 1);
    petrel_log_set_node(2, 4);
    petrel_log_set_level(PETREL_LOG_LEVEL_DEBUG);
    PETREL_LOG_DEBUG("test", "expected debug line from node 2/4 (%d)", count_evaluation());
    CHECK(log_arg_evaluations == 2);
    petrel_log_set_node(0, 1);
    petrel_log_set_level(saved);
}

/* ---- counted allocation ------------------------------------------------------------ */

static void test_alloc_counters(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();
    unsigned char *a = petrel_malloc(1000);
    CHECK(a != NULL);
    petrel_alloc_stats s1 = petrel_alloc_get_stats();
    CHECK(s1.calls == base.calls + 1);
    CHECK(s1.live_bytes == base.live_bytes + 1000);
    CHECK(s1.peak_bytes >= s1.live_bytes);

    unsigned char *b = petrel_calloc(25, 4);
    CHECK(b != NULL);
    int nonzero = 0;
    for (int i = 0; i < 100; i++) nonzero += b[i] != 0;
    CHECK(nonzero == 0);
    petrel_alloc_stats s2 = petrel_alloc_get_stats();
    CHECK(s2.calls == base.calls + 2);
    CHECK(s2.live_bytes == base.live_bytes + 1100);
    CHECK(s2.peak_bytes >= base.live_bytes + 1100);

    memset(a, 0xab, 1000); /* the whole block is usable */
    petrel_free(a);
    petrel_alloc_stats s3 = petrel_alloc_get_stats();
    CHECK(s3.live_bytes == base.live_bytes + 100);
    CHECK(s3.calls == s2.calls);           /* frees are not calls */
    CHECK(s3.peak_bytes == s2.peak_bytes); /* the peak stays */
    petrel_free(b);
    petrel_free(NULL);
    petrel_alloc_stats s4 = petrel_alloc_get_stats();
    CHECK(s4.live_bytes == base.live_bytes);

    char *d = petrel_strdup("petrel");
    CHECK(d != NULL && strcmp(d, "petrel") == 0);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes + 7);
    petrel_free(d);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
}

static void test_alloc_alignment(void) {
    void *p[64];
    for (int i = 0; i < 64; i++) {
        size_t bytes = (size_t)(i * 37 % 301) + (i == 0 ? 0 : 1);
        p[i] = i % 2 ? petrel_malloc(bytes) : petrel_calloc(bytes, 1);
        CHECK(p[i] != NULL);
        CHECK((uintptr_t)p[i] % 64 == 0);
    }
    for (int i = 0; i < 64; i++) petrel_free(p[i]);
    void *r = petrel_malloc(10);
    r = petrel_realloc(r, 777);
    CHECK(r != NULL && (uintptr_t)r % 64 == 0);
    petrel_free(r);
}

static void test_realloc_keeps_content(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();
    int32_t *v = petrel_realloc(NULL, 10 * sizeof *v); /* NULL: a plain malloc */
    CHECK(v != NULL);
    for (int i = 0; i < 10; i++) v[i] = i * i - 7;
    v = petrel_realloc(v, 1000 * sizeof *v);
    CHECK(v != NULL);
    if (!v) return;
    for (int i = 0; i < 10; i++) CHECK(v[i] == i * i - 7);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes + 1000 * sizeof *v);
    for (int i = 0; i < 1000; i++) v[i] = 3 * i;
    v = petrel_realloc(v, 5 * sizeof *v); /* shrink */
    CHECK(v != NULL);
    if (!v) return;
    for (int i = 0; i < 5; i++) CHECK(v[i] == 3 * i);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes + 5 * sizeof *v);
    CHECK(petrel_alloc_get_stats().calls == base.calls + 3);
    petrel_free(v);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
}

static void test_alloc_fail_injection(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();

    /* n = 0: the very next allocation fails, with a message; later ones succeed. */
    petrel_error_clear();
    petrel_alloc_fail_after(0);
    void *p = petrel_malloc(16);
    CHECK(p == NULL);
    CHECK(strstr(petrel_errmsg(), "16 bytes") != NULL);
    CHECK(petrel_alloc_get_stats().calls == base.calls);
    void *q = petrel_malloc(16);
    CHECK(q != NULL);
    void *q2 = petrel_malloc(16);
    CHECK(q2 != NULL);
    petrel_free(q);
    petrel_free(q2);

    /* n = 2: two pass, the third fails, the fourth passes. */
    petrel_alloc_fail_after(2);
    void *a = petrel_malloc(8), *b = petrel_calloc(2, 8), *c = petrel_malloc(8);
    void *d = petrel_malloc(8);
    CHECK(a != NULL && b != NULL && c == NULL && d != NULL);
    petrel_free(a);
    petrel_free(b);
    petrel_free(d);

    /* calloc and strdup fail through the same injection. */
    petrel_alloc_fail_after(0);
    CHECK(petrel_calloc(4, 4) == NULL);
    petrel_alloc_fail_after(0);
    CHECK(petrel_strdup("x") == NULL);

    /* A failed realloc leaves the old block valid and unchanged. */
    int32_t *v = petrel_malloc(4 * sizeof *v);
    CHECK(v != NULL);
    if (v) {
        for (int i = 0; i < 4; i++) v[i] = 100 + i;
        petrel_alloc_fail_after(0);
        int32_t *w = petrel_realloc(v, 4000 * sizeof *w);
        CHECK(w == NULL);
        for (int i = 0; i < 4; i++) CHECK(v[i] == 100 + i);
        petrel_free(v);
    }

    /* A negative n turns injection off. */
    petrel_alloc_fail_after(0);
    petrel_alloc_fail_after(-1);
    void *e = petrel_malloc(8);
    CHECK(e != NULL);
    petrel_free(e);

    /* Sizes that cannot be served fail cleanly instead of wrapping around. */
    CHECK(petrel_malloc(SIZE_MAX) == NULL);
    CHECK(petrel_malloc(SIZE_MAX - 63) == NULL);
    CHECK(petrel_calloc(SIZE_MAX / 2, 4) == NULL);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
}

/* ---- arenas ---------------------------------------------------------------------- */

static void test_arena_alignment_and_disjoint(void) {
    petrel_arena a;
    petrel_arena_init(&a, 4096);
    unsigned char *p[40];
    size_t sz[40];
    for (int i = 0; i < 40; i++) {
        sz[i] = (size_t)(1 + i * 53 % 700);
        p[i] = petrel_arena_alloc(&a, sz[i]);
        CHECK(p[i] != NULL);
        if (!p[i]) return;
        CHECK((uintptr_t)p[i] % 64 == 0);
        memset(p[i], i + 1, sz[i]);
    }
    /* No allocation overwrote another. */
    for (int i = 0; i < 40; i++)
        for (size_t j = 0; j < sz[i]; j++)
            if (p[i][j] != (unsigned char)(i + 1)) {
                CHECK(p[i][j] == (unsigned char)(i + 1));
                break;
            }
    CHECK(a.used_bytes >= 40 * 64);
    /* A request larger than a block gets a block of its own. */
    unsigned char *big = petrel_arena_alloc(&a, 3 * 4096 + 5);
    CHECK(big != NULL && (uintptr_t)big % 64 == 0);
    if (big) memset(big, 0xee, 3 * 4096 + 5);
    unsigned char *z = petrel_arena_calloc(&a, 300);
    CHECK(z != NULL);
    int nonzero = 0;
    for (int i = 0; z && i < 300; i++) nonzero += z[i] != 0;
    CHECK(nonzero == 0);
    petrel_arena_fini(&a);
}

static void test_arena_reset_reuses(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();
    petrel_arena a;
    petrel_arena_init(&a, 1 << 16);
    void *first = petrel_arena_alloc(&a, 100);
    void *second = petrel_arena_alloc(&a, 100);
    CHECK(first != NULL && second != NULL && first != second);
    CHECK(a.used_bytes == 2 * 128);
    petrel_alloc_stats s1 = petrel_alloc_get_stats();
    CHECK(s1.calls == base.calls + 1); /* one block */
    petrel_arena_reset(&a);
    CHECK(a.used_bytes == 0);
    CHECK(a.peak_bytes == 2 * 128);
    /* The same memory comes back, and it is dirty: calloc must zero it. */
    memset(first, 0x5a, 100);
    unsigned char *again = petrel_arena_calloc(&a, 100);
    CHECK(again == first);
    int nonzero = 0;
    for (int i = 0; i < 100; i++) nonzero += again[i] != 0;
    CHECK(nonzero == 0);
    CHECK(petrel_alloc_get_stats().calls == s1.calls);
    petrel_arena_fini(&a);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
    petrel_arena_fini(NULL);
}

/* One "training step" of allocations whose total is about 9x the block size. */
static bool arena_cycle(petrel_arena *a) {
    for (int i = 0; i < 12; i++) {
        float *x = petrel_arena_alloc(a, 700 + (size_t)i * 10);
        if (!x) return false;
        x[0] = (float)i;
    }
    return petrel_arena_alloc(a, 2000) != NULL; /* larger than a block */
}

static void test_arena_merge_after_spill(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();
    petrel_arena a;
    petrel_arena_init(&a, 1024);
    CHECK(arena_cycle(&a));
    petrel_alloc_stats spilled = petrel_alloc_get_stats();
    CHECK(spilled.calls >= base.calls + 5); /* several blocks */
    size_t cycle_bytes = a.used_bytes;
    petrel_arena_reset(&a);
    CHECK(a.peak_bytes == cycle_bytes);
    petrel_alloc_stats merged = petrel_alloc_get_stats();
    CHECK(merged.calls == spilled.calls + 1); /* one merged block replaced them */
    CHECK(merged.live_bytes < spilled.live_bytes);
    for (int step = 0; step < 3; step++) {
        CHECK(arena_cycle(&a));
        CHECK(a.used_bytes == cycle_bytes);
        petrel_arena_reset(&a);
    }
    petrel_alloc_stats steady = petrel_alloc_get_stats();
    CHECK(steady.calls == merged.calls);
    CHECK(steady.live_bytes == merged.live_bytes);
    petrel_arena_fini(&a);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
}

static void test_arena_out_of_memory(void) {
    petrel_arena a;
    petrel_arena_init(&a, 0); /* 0: a default block size */
    CHECK(a.block_bytes > 0);
    petrel_error_clear();
    petrel_alloc_fail_after(0);
    CHECK(petrel_arena_alloc(&a, 10) == NULL);
    CHECK(petrel_errmsg()[0] != '\0');
    CHECK(a.used_bytes == 0);
    void *p = petrel_arena_alloc(&a, 10);
    CHECK(p != NULL);
    /* A failed merge at reset keeps the old blocks working. */
    CHECK(petrel_arena_alloc(&a, a.block_bytes) != NULL);
    petrel_alloc_fail_after(0);
    petrel_arena_reset(&a);
    petrel_alloc_fail_after(-1);
    CHECK(petrel_arena_alloc(&a, 10) != NULL);
    CHECK(petrel_arena_alloc(&a, SIZE_MAX - 10) == NULL);
    petrel_arena_fini(&a);
}

/* ---- random numbers ------------------------------------------------------------------ */

/* Independent xoshiro256** with splitmix64 seeding, from the published algorithms. */
static uint64_t ref_splitmix(uint64_t *x) {
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t ref_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t ref_xoshiro(uint64_t s[4]) {
    uint64_t result = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ref_rotl(s[3], 45);
    return result;
}

static void test_rng_streams(void) {
    petrel_rng a, b;
    petrel_rng_seed(&a, seed);
    petrel_rng_seed(&b, seed);
    uint64_t x = seed, s[4];
    for (int i = 0; i < 4; i++) s[i] = ref_splitmix(&x);
    int same = 0, ref_match = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t va = petrel_rng_u64(&a);
        same += va == petrel_rng_u64(&b);
        ref_match += va == ref_xoshiro(s);
    }
    CHECK(same == 1000);
    CHECK(ref_match == 1000);

    /* Different seeds, even adjacent ones and 0, give unrelated streams. */
    petrel_rng c, d;
    petrel_rng_seed(&c, seed);
    petrel_rng_seed(&d, seed + 1);
    int equal = 0;
    for (int i = 0; i < 1000; i++) equal += petrel_rng_u64(&c) == petrel_rng_u64(&d);
    CHECK(equal == 0);
    petrel_rng z;
    petrel_rng_seed(&z, 0);
    uint64_t orbits = 0;
    for (int i = 0; i < 64; i++) orbits |= petrel_rng_u64(&z);
    CHECK(orbits == UINT64_MAX); /* every bit gets set: not stuck at zero */
}

static void test_rng_below_uniform(void) {
    petrel_rng r;
    petrel_rng_seed(&r, seed);
    enum { BUCKETS = 10, DRAWS = 100000 };
    int64_t count[BUCKETS] = {0};
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = petrel_rng_below(&r, BUCKETS);
        CHECK(v < BUCKETS);
        if (v < BUCKETS) count[v]++;
    }
    double expected = (double)DRAWS / BUCKETS, chi2 = 0;
    for (int b = 0; b < BUCKETS; b++) chi2 += pow((double)count[b] - expected, 2) / expected;
    /* 9 degrees of freedom: P(chi2 > 40) is about 7e-6. */
    CHECK(chi2 < 40.0);
    CHECK(chi2 > 0.5); /* suspiciously perfect counts would not be random */

    for (int i = 0; i < 100; i++) CHECK(petrel_rng_below(&r, 1) == 0);

    /* n = 2^64 * 2/3: plain modulo would make [0, n/2) twice as likely as [n/2, n). */
    uint64_t n = UINT64_C(0xAAAAAAAAAAAAAAAA);
    int low = 0;
    for (int i = 0; i < DRAWS; i++) {
        uint64_t v = petrel_rng_below(&r, n);
        CHECK(v < n);
        low += v < n / 2;
    }
    CHECK_NEAR((double)low / DRAWS, 0.5, 0.01, 0); /* biased: 0.667; sd 0.0016 */
}

static void test_rng_uniform(void) {
    petrel_rng r;
    petrel_rng_seed(&r, seed);
    enum { DRAWS = 100000 };
    double sum = 0, sum2 = 0;
    float lo = 1, hi = 0;
    int bad = 0;
    for (int i = 0; i < DRAWS; i++) {
        float u = petrel_rng_uniform(&r);
        bad += !(u >= 0.0f && u < 1.0f);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        sum += u;
        sum2 += (double)u * u;
    }
    CHECK(bad == 0);
    double mean = sum / DRAWS, var = sum2 / DRAWS - mean * mean;
    CHECK_NEAR(mean, 0.5, 0.005, 0);       /* sd 0.0009 */
    CHECK_NEAR(var, 1.0 / 12.0, 0.002, 0); /* sd 0.0003 */
    CHECK(lo < 0.001f && hi > 0.999f);
}

static void test_rng_normal(void) {
    petrel_rng r;
    petrel_rng_seed(&r, seed);
    enum { DRAWS = 100000 };
    double sum = 0, sum2 = 0;
    int within1 = 0, finite = 0;
    for (int i = 0; i < DRAWS; i++) {
        float v = petrel_rng_normal(&r);
        finite += isfinite(v) != 0;
        sum += v;
        sum2 += (double)v * v;
        within1 += fabsf(v) < 1.0f;
    }
    CHECK(finite == DRAWS);
    double mean = sum / DRAWS, var = sum2 / DRAWS - mean * mean;
    CHECK_NEAR(mean, 0.0, 0.02, 0);                       /* sd 0.0032 */
    CHECK_NEAR(var, 1.0, 0.03, 0);                        /* sd 0.0045 */
    CHECK_NEAR((double)within1 / DRAWS, 0.6827, 0.01, 0); /* sd 0.0015 */
}

static void test_rng_shuffle(void) {
    petrel_rng r;
    petrel_rng_seed(&r, seed);
    enum { N = 1000 };
    uint32_t v[N], w[N];
    for (uint32_t i = 0; i < N; i++) v[i] = w[i] = i;
    petrel_rng_shuffle_u32(&r, v, N);
    bool seen[N] = {false};
    int fixed = 0, dup = 0;
    for (int i = 0; i < N; i++) {
        CHECK(v[i] < N);
        if (v[i] >= N) return;
        dup += seen[v[i]];
        seen[v[i]] = true;
        fixed += v[i] == (uint32_t)i;
    }
    CHECK(dup == 0);
    CHECK(fixed < 10); /* a random permutation has about one fixed point */
    petrel_rng_shuffle_u32(&r, w, N);
    CHECK(memcmp(v, w, sizeof v) != 0);
    petrel_rng_shuffle_u32(&r, w, 0);
    petrel_rng_shuffle_u32(&r, w, 1);

    /* Every permutation of 3 elements is equally likely (chi-square, 5 dof). */
    enum { TRIALS = 60000 };
    int count[6] = {0};
    for (int t = 0; t < TRIALS; t++) {
        uint32_t p[3] = {0, 1, 2};
        petrel_rng_shuffle_u32(&r, p, 3);
        int code = (int)(p[0] * 2 + (p[1] > p[2])); /* first element and order of the rest */
        CHECK(p[0] + p[1] + p[2] == 3 && p[0] != p[1] && p[1] != p[2] && p[0] != p[2]);
        count[code]++;
    }
    double chi2 = 0, expected = TRIALS / 6.0;
    for (int i = 0; i < 6; i++) chi2 += pow(count[i] - expected, 2) / expected;
    CHECK(chi2 < 30.0); /* P(chi2 > 30) is about 1.5e-5 */
}

/* ---- time and threads ---------------------------------------------------------------- */

static void test_timers(void) {
    uint64_t prev = petrel_now_ns();
    int backwards = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t t = petrel_now_ns();
        backwards += t < prev;
        prev = t;
    }
    CHECK(backwards == 0);
    uint64_t t0 = petrel_now_ns();
    volatile double sink = 0;
    while (petrel_now_ns() - t0 < 2000000) sink += 1.0; /* 2 ms of busy work */
    uint64_t t1 = petrel_now_ns();
    CHECK(t1 - t0 >= 2000000 && t1 - t0 < 2000000000);
    CHECK_NEAR(petrel_now_s(), (double)petrel_now_ns() * 1e-9, 0.01, 0);
    CHECK(petrel_peak_rss_mb() > 0.0);
    CHECK(petrel_peak_rss_mb() < 1e6);
}

typedef struct sum_job {
    const int64_t *v;
    int64_t n, sum;
} sum_job;

static void *sum_thread(void *arg) {
    sum_job *j = arg;
    for (int64_t i = 0; i < j->n; i++) j->sum += j->v[i];
    return &j->sum;
}

static void test_threads(void) {
    enum { T = 4, N = 10000 };
    static int64_t v[T * N];
    for (int64_t i = 0; i < T * N; i++) v[i] = i;
    sum_job jobs[T];
    petrel_thread *th[T] = {NULL};
    for (int t = 0; t < T; t++) {
        jobs[t] = (sum_job){v + t * N, N, 0};
        CHECK_OK(petrel_thread_start(&th[t], sum_thread, &jobs[t]));
    }
    for (int t = 0; t < T; t++) {
        void *r = NULL;
        petrel_thread_join(th[t], &r);
        CHECK(r == &jobs[t].sum);
        int64_t first = (int64_t)t * N, want = N * first + (int64_t)N * (N - 1) / 2;
        CHECK(jobs[t].sum == want);
    }
    petrel_thread_join(NULL, NULL);
    petrel_thread *one = NULL;
    CHECK_OK(petrel_thread_start(&one, sum_thread, &jobs[0]));
    petrel_thread_join(one, NULL); /* result not wanted */
    CHECK(petrel_cpu_count() >= 1);

    /* Starting a thread fails cleanly when its allocation does. */
    petrel_thread *never = NULL;
    petrel_alloc_fail_after(0);
    CHECK_ERR(petrel_thread_start(&never, sum_thread, &jobs[0]), PETREL_ERR_NOMEM);
    CHECK(never == NULL);
}

static void test_median(void) {
    double odd[5] = {9, 1, 5, 3, 7}, even[4] = {4, -1, 10, 2}, one[1] = {42};
    CHECK(petrel_median(odd, 5) == 5.0);
    CHECK(petrel_median(even, 4) == 3.0); /* (2 + 4) / 2 */
    CHECK(petrel_median(one, 1) == 42.0);
    CHECK(odd[0] == 1 && odd[4] == 9); /* sorted in place */
}

/* ---- copies around the cache ------------------------------------------------------ */

/* petreli_copy_nocache against memcpy, the reference: every alignment of source and
 * destination within a cache line, lengths around the 16-byte head and the 64-byte
 * body, and a large odd one; the bytes around the destination stay as they were. */
static void test_copy_nocache(void) {
    enum { GUARD = 64, BIG = (1 << 20) + 7 };
    static const size_t lens[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 200, 4096 + 13};
    unsigned char *src = malloc(BIG + 128), *dst = malloc(BIG + 128 + 2 * GUARD);
    unsigned char *want = malloc(BIG + 128 + 2 * GUARD);
    for (size_t i = 0; i < BIG + 128; i++) src[i] = (unsigned char)(i * 31 + (i >> 8));
    int bad = 0;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0] + 1; li++) {
        size_t n = li < sizeof lens / sizeof lens[0] ? lens[li] : BIG;
        for (size_t so = 0; so < 64; so += n == BIG ? 21 : 1)
            for (size_t d0 = 0; d0 < 64; d0 += n == BIG ? 13 : 1) {
                memset(dst, 0xa5, BIG + 128 + 2 * GUARD);
                memset(want, 0xa5, BIG + 128 + 2 * GUARD);
                memcpy(want + GUARD + d0, src + so, n);
                petreli_copy_nocache(dst + GUARD + d0, src + so, n);
                bad += memcmp(dst, want, n + d0 + 2 * GUARD) != 0;
            }
    }
    CHECK(bad == 0);
    size_t t = petreli_nocache_threshold();
    CHECK(t >= (1u << 20) && t == petreli_nocache_threshold());
    free(src);
    free(dst);
    free(want);
}

int main(void) {
    seed = check_seed(seed);
    RUN(test_log_level_from_env); /* first: the level is cached on first use */
    RUN(test_median);
    RUN(test_log_set_get);
    RUN(test_strerror);
    RUN(test_error_set_get);
    RUN(test_error_thread_local);
    RUN(test_assert_aborts);
    RUN(test_alloc_counters);
    RUN(test_alloc_alignment);
    RUN(test_realloc_keeps_content);
    RUN(test_alloc_fail_injection);
    RUN(test_arena_alignment_and_disjoint);
    RUN(test_arena_reset_reuses);
    RUN(test_arena_merge_after_spill);
    RUN(test_arena_out_of_memory);
    RUN_SEEDED(test_rng_streams, seed);
    RUN_SEEDED(test_rng_below_uniform, seed);
    RUN_SEEDED(test_rng_uniform, seed);
    RUN_SEEDED(test_rng_normal, seed);
    RUN_SEEDED(test_rng_shuffle, seed);
    RUN(test_timers);
    RUN(test_threads);
    RUN(test_copy_nocache);
    return CHECK_DONE();
}
