/*
 * Throughput of one parameter-server store (src/ps/store.c) on one core: apply
 * (rule SUM) and gather of N keys of a sparse table, to keys it does not hold yet
 * ("new": every row made on first touch) and to keys it holds ("existing"), for
 * cols 1 and 16; and the same on a dense table for reference.
 *
 *     bench_ps_store [N [REPS]]     # N keys (default 10000000), REPS runs (default 3)
 *
 * Keys are N distinct random u64s. "existing, same order" pushes them in the order
 * the rows were made (a worker pushing the same key set every clock); "existing,
 * shuffled" pushes a random permutation (rows scattered in memory: the slow case).
 * "key cache" sends the list once more before the timed runs, through a sender's key
 * cache (store.h), as a server does for each worker: its rows are then found without
 * the index.
 * "clear + apply" empties a store that held the keys and pushes them again, all new
 * rows in memory already mapped: an operation log's cycle. "apply, new keys" starts
 * from a fresh store each run, so it includes the page faults of every array.
 *
 * Each case runs REPS times and reports its fastest run twice: by the wall clock,
 * and by this process's CPU time, which leaves out the time other processes held
 * the core (on a shared machine the first can be far below the second).
 */
#include "petrel/core.h"
#include "ps/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int reps = 3;

static void *xmalloc(size_t bytes) {
    void *p = petrel_malloc(bytes);
    if (!p) {
        fprintf(stderr, "bench_ps_store: %s\n", petrel_errmsg());
        exit(1);
    }
    return p;
}

static void ok(petrel_err err) {
    if (err != PETREL_OK) {
        fprintf(stderr, "bench_ps_store: %s: %s\n", petrel_strerror(err), petrel_errmsg());
        exit(1);
    }
}

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The fastest of the runs measured so far, by wall clock and by CPU time. */
typedef struct best {
    double wall, cpu;
    double wall0, cpu0;
} best;

static best best_new(void) {
    best b = {1e30, 1e30, 0, 0};
    return b;
}

static void run_start(best *b) {
    b->wall0 = petrel_now_s();
    b->cpu0 = cpu_s();
}

static void run_stop(best *b) {
    double w = petrel_now_s() - b->wall0, c = cpu_s() - b->cpu0;
    b->wall = w < b->wall ? w : b->wall;
    b->cpu = c < b->cpu ? c : b->cpu;
}

static void report(const char *table, int64_t cols, const char *what, int64_t n, best b) {
    printf("%-7s cols=%-3lld %-30s %7.1f M keys/s wall  %7.1f M keys/s cpu  (%.3f s)\n", table,
           (long long)cols, what, (double)n / b.wall / 1e6, (double)n / b.cpu / 1e6, b.wall);
    fflush(stdout);
}

static petreli_ps_store *make(const petrel_ps_table_spec *spec) {
    petreli_ps_store *s;
    ok(petreli_ps_store_new(&s, spec, 0, 1, 0));
    return s;
}

static void bench_cols(int64_t cols, int64_t n, const uint64_t *keys, const uint64_t *shuffled) {
    petrel_ps_table_spec spec = {.kind = PETREL_PS_SPARSE, .cols = cols, .rule = PETREL_PS_SUM};
    float *d = xmalloc((size_t)n * (size_t)cols * sizeof(float));
    float *out = xmalloc((size_t)n * (size_t)cols * sizeof(float));
    for (int64_t i = 0; i < n * cols; i++) d[i] = (float)(i % 7) * 0.25f;
    for (int64_t i = 0; i < n * cols; i++) out[i] = 0; /* mapped before the first run */

    for (int g = 0; g < 2; g++) {
        best b = best_new();
        for (int r = 0; r < reps; r++) {
            petreli_ps_store *s = make(&spec);
            run_start(&b);
            ok(g ? petreli_ps_store_gather(s, keys, n, out, NULL, NULL)
                 : petreli_ps_store_apply(s, keys, n, d, 0, NULL));
            run_stop(&b);
            petreli_ps_store_free(s);
        }
        report("sparse", cols, g ? "gather, new keys" : "apply, new keys", n, b);
    }

    petreli_ps_store *s = make(&spec);
    ok(petreli_ps_store_apply(s, keys, n, d, 0, NULL));
    struct {
        const char *what;
        const uint64_t *k;
        bool gather, cached;
    } cases[] = {{"apply, existing, same order", keys, false, false},
                 {"apply, existing, shuffled", shuffled, false, false},
                 {"gather, existing, same order", keys, true, false},
                 {"gather, existing, shuffled", shuffled, true, false},
                 {"apply, key cache, same order", keys, false, true},
                 {"apply, key cache, shuffled", shuffled, false, true},
                 {"gather, key cache, shuffled", shuffled, true, true}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        best b = best_new();
        /* key cache: the list was sent once before (an untimed run fills the cache) */
        petreli_ps_hint hint = {0}, *h = cases[c].cached ? &hint : NULL;
        for (int r = cases[c].cached ? -1 : 0; r < reps; r++) {
            if (r >= 0) run_start(&b);
            ok(cases[c].gather ? petreli_ps_store_gather(s, cases[c].k, n, out, NULL, h)
                               : petreli_ps_store_apply(s, cases[c].k, n, d, 0, h));
            if (r >= 0) run_stop(&b);
        }
        petreli_ps_hint_free(&hint);
        report("sparse", cols, cases[c].what, n, b);
    }
    best b = best_new();
    for (int r = 0; r < reps; r++) {
        run_start(&b);
        petreli_ps_store_clear(s);
        ok(petreli_ps_store_apply(s, keys, n, d, 0, NULL));
        run_stop(&b);
    }
    report("sparse", cols, "clear + apply, new keys", n, b);
    petreli_ps_store_free(s);

    /* Dense, keys 0 .. n-1 in a random order. */
    petrel_ps_table_spec dspec = spec;
    dspec.kind = PETREL_PS_DENSE;
    dspec.rows = n;
    s = make(&dspec);
    uint64_t *dkeys = xmalloc((size_t)n * sizeof *dkeys);
    for (int64_t i = 0; i < n; i++) dkeys[i] = shuffled[i] % (uint64_t)n;
    for (int g = 0; g < 2; g++) {
        b = best_new();
        for (int r = 0; r < reps; r++) {
            run_start(&b);
            ok(g ? petreli_ps_store_gather(s, dkeys, n, out, NULL, NULL)
                 : petreli_ps_store_apply(s, dkeys, n, d, 0, NULL));
            run_stop(&b);
        }
        report("dense", cols, g ? "gather, random keys" : "apply, random keys", n, b);
    }
    petrel_free(dkeys);
    petreli_ps_store_free(s);
    petrel_free(d);
    petrel_free(out);
}

int main(int argc, char **argv) {
    int64_t n = argc > 1 ? atoll(argv[1]) : 10000000;
    reps = argc > 2 ? atoi(argv[2]) : 3;
    if (n < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_ps_store [N >= 1 [REPS >= 1]]\n");
        return 2;
    }
    uint64_t *keys = xmalloc((size_t)n * sizeof *keys);
    uint64_t *shuffled = xmalloc((size_t)n * sizeof *shuffled);
    petrel_rng rng;
    petrel_rng_seed(&rng, 42);
    /* Distinct: mix64 is a bijection, so distinct inputs give distinct keys. */
    uint64_t base = petrel_rng_u64(&rng);
    for (int64_t i = 0; i < n; i++) keys[i] = petreli_ps_mix64(base + (uint64_t)i);
    for (int64_t i = 0; i < n; i++) shuffled[i] = keys[i];
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)petrel_rng_below(&rng, (uint64_t)i + 1);
        uint64_t t = shuffled[i];
        shuffled[i] = shuffled[j];
        shuffled[j] = t;
    }
    printf("bench_ps_store: %lld keys, rule sum, one server, one core, best of %d\n", (long long)n,
           reps);
    bench_cols(1, n, keys, shuffled);
    bench_cols(16, n, keys, shuffled);
    petrel_free(keys);
    petrel_free(shuffled);
    return 0;
}
