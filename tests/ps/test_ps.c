/* The parameter server in jobs of threads (the in-process transport): BSP against
 * a sequential run, the SSP bound under random delays, async, workers with unequal
 * numbers of clocks, the final model after them, server-side rules, managed
 * communication and large appended pushes that lose nothing, several threads per
 * worker process, snapshots and resume, and malformed messages; without a net, tables
 * whose creation fails and reads that run out of memory while merging the log. */
#include "check.h"
#include "inprocjob.h"
#include "petrel/ps.h"
#include "ps/ps_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NODES 8

typedef struct job job;
/* Runs on every node after the tables exist; ws is NULL except on workers. */
typedef void (*worker_fn)(job *j, petrel_ps *ps, int worker);
typedef void (*server_fn)(job *j, petrel_ps *ps);

struct job {
    int servers, workers;
    petrel_ps_table_spec specs[4];
    int ntables;
    petrel_ps_config cfg;
    worker_fn work;
    server_fn after_serve; /* on servers, after petrel_ps_serve (may be NULL) */
    petrel_err err[MAX_NODES];
    void *ctx;
};

static void node_main(void *ctx, petrel_net *net, int rank) {
    job *j = ctx;
    petrel_ps *ps = NULL;
    petrel_err err = petrel_ps_start(&ps, net, &j->cfg);
    for (int t = 0; t < j->ntables && err == PETREL_OK; t++) {
        uint32_t id;
        err = petrel_ps_table_create(ps, &j->specs[t], &id);
        if (err == PETREL_OK && id != (uint32_t)t) err = PETREL_ERR_STATE;
    }
    if (err == PETREL_OK) {
        petrel_role role = petrel_net_role(net);
        if (role == PETREL_ROLE_WORKER) {
            j->work(j, ps, rank - 1 - j->servers);
        } else {
            err = petrel_ps_serve(ps);
            if (err == PETREL_OK && role == PETREL_ROLE_SERVER && j->after_serve)
                j->after_serve(j, ps);
        }
    }
    if (err != PETREL_OK) fprintf(stderr, "rank %d: %s\n", rank, petrel_errmsg());
    petrel_err stop = petrel_ps_stop(ps);
    j->err[rank] = err == PETREL_OK ? stop : err;
}

static void run_job(job *j) {
    int size = 1 + j->servers + j->workers;
    CHECK_OK(inprocjob_run(size, j->servers, NULL, node_main, j));
    for (int r = 0; r < size; r++) CHECK_OK(j->err[r]);
}

static job new_job(int servers, int workers, worker_fn work) {
    job j = {.servers = servers, .workers = workers, .work = work};
    j.cfg = petrel_ps_config_default();
    j.cfg.timeout_ms = 20000;
    return j;
}

/* Reads a server's part of table t into full (rows x cols; a sparse table's keys
 * must be below rows), from the store. */
static void server_rows(petrel_ps *ps, uint32_t t, float *full, int64_t cols) {
    petreli_ps_store *s = ps->tables[t].store;
    for (int64_t slot = 0; slot < petreli_ps_store_count(s); slot++)
        memcpy(full + (int64_t)petreli_ps_store_key(s, slot) * cols, petreli_ps_store_row(s, slot),
               (size_t)cols * sizeof(float));
}

/* ---- BSP is a sequential run ---------------------------------------------------- */

enum { SEQ_ROWS = 16, SEQ_COLS = 4, SEQ_CLOCKS = 8, SEQ_WORKERS = 3 };

/* A deterministic delta from the value read; integers, so sums are exact in any order. */
static float seq_delta(float v, int w, int r, int col, int clock) {
    int x = ((int)v * (w + 2) + r * 3 + col + clock) % 7;
    return (float)(x < 0 ? x + 7 : x) - 3.0f;
}

typedef struct seq_ctx {
    float reference[SEQ_CLOCKS + 1][SEQ_ROWS * SEQ_COLS];
    _Atomic int mismatches;
} seq_ctx;

static void seq_reference(seq_ctx *c) {
    memset(c->reference[0], 0, sizeof c->reference[0]);
    for (int clock = 0; clock < SEQ_CLOCKS; clock++) {
        float *now = c->reference[clock], *next = c->reference[clock + 1];
        memcpy(next, now, sizeof c->reference[0]);
        for (int w = 0; w < SEQ_WORKERS; w++)
            for (int i = 0; i < SEQ_ROWS * SEQ_COLS; i++)
                next[i] += seq_delta(now[i], w, i / SEQ_COLS, i % SEQ_COLS, clock);
    }
}

static void seq_worker(job *j, petrel_ps *ps, int worker) {
    seq_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    uint64_t keys[SEQ_ROWS];
    for (int r = 0; r < SEQ_ROWS; r++) keys[r] = (uint64_t)r;
    float v[SEQ_ROWS * SEQ_COLS], d[SEQ_ROWS * SEQ_COLS];
    for (int clock = 0; clock <= SEQ_CLOCKS; clock++) {
        if (worker == 1) usleep(2000); /* a slower worker must not change the result */
        CHECK_OK(petrel_ps_get_rows(w, 0, keys, SEQ_ROWS, v));
        if (memcmp(v, c->reference[clock], sizeof v) != 0) atomic_fetch_add(&c->mismatches, 1);
        if (clock == SEQ_CLOCKS) break;
        for (int i = 0; i < SEQ_ROWS * SEQ_COLS; i++)
            d[i] = seq_delta(v[i], worker, i / SEQ_COLS, i % SEQ_COLS, clock);
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys, SEQ_ROWS, d));
        CHECK_OK(petrel_ps_clock(w));
    }
    petrel_ps_stats st = petrel_ps_get_stats(ps);
    CHECK(st.max_staleness == 0);
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void bsp_case(bool push, petrel_ps_partition part) {
    static seq_ctx c;
    memset(&c, 0, sizeof c);
    seq_reference(&c);
    job j = new_job(2, SEQ_WORKERS, seq_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, SEQ_ROWS, SEQ_COLS);
    j.specs[0].push = push;
    j.specs[0].partition = part;
    j.ntables = 1;
    j.ctx = &c;
    run_job(&j);
    CHECK(atomic_load(&c.mismatches) == 0);
}

static void test_bsp_equals_sequential_run(void) {
    bsp_case(true, PETREL_PS_HASH);
    bsp_case(false, PETREL_PS_RANGE);
}

/* ---- the SSP bound ------------------------------------------------------------------- */

enum { SSP_WORKERS = 3, SSP_CLOCKS = 30 };

typedef struct ssp_ctx {
    int staleness;
    _Atomic int64_t done[SSP_WORKERS]; /* clocks each worker has finished */
    _Atomic int violations, ahead_violations;
    _Atomic int64_t max_seen; /* the largest staleness observed in the values */
    uint64_t seed;
} ssp_ctx;

/* Each worker adds 1 to its own row every clock and reads everyone's: the value of
 * row u read at clock c counts u's clocks that the read includes. */
static void ssp_worker(job *j, petrel_ps *ps, int worker) {
    ssp_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    petrel_rng rng;
    petrel_rng_seed(&rng, c->seed * 31 + (uint64_t)worker);
    uint64_t keys[SSP_WORKERS] = {0, 1, 2};
    float v[SSP_WORKERS], one = 1.0f;
    for (int64_t clock = 0; clock < SSP_CLOCKS; clock++) {
        /* Random delays; worker 0 is a straggler. */
        usleep((useconds_t)(petrel_rng_below(&rng, 1500) * (worker == 0 ? 3 : 1)));
        CHECK_OK(petrel_ps_get_rows(w, 0, keys, SSP_WORKERS, v));
        for (int u = 0; u < SSP_WORKERS; u++) {
            int64_t missing = clock - (int64_t)v[u];
            /* Fresher than the bound is allowed (other workers run ahead), except
             * under BSP, where a read sees exactly the clocks before it. */
            if (missing > c->staleness || (c->staleness == 0 && missing != 0)) {
                if (atomic_fetch_add(&c->violations, 1) == 0)
                    printf("# worker %d at clock %lld read %g for worker %d (bound %d)\n", worker,
                           (long long)clock, (double)v[u], u, c->staleness);
            }
            int64_t seen = atomic_load(&c->max_seen);
            while (missing > seen && !atomic_compare_exchange_weak(&c->max_seen, &seen, missing)) {
            }
        }
        CHECK_OK(petrel_ps_inc(w, 0, (uint64_t)worker, &one));
        atomic_store(&c->done[worker], clock + 1);
        CHECK_OK(petrel_ps_clock(w));
        /* Now at clock + 1: no worker may be more than s clocks behind. */
        for (int u = 0; u < SSP_WORKERS; u++)
            if (clock + 1 - atomic_load(&c->done[u]) > c->staleness)
                atomic_fetch_add(&c->ahead_violations, 1);
    }
    petrel_ps_stats st = petrel_ps_get_stats(ps);
    if (st.max_staleness > c->staleness) {
        printf("# worker %d: largest staleness in the statistics %lld (bound %d)\n", worker,
               (long long)st.max_staleness, c->staleness);
        atomic_fetch_add(&c->violations, 1);
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void ssp_case(int s, bool push, uint64_t seed) {
    ssp_ctx c = {.staleness = s, .seed = seed};
    job j = new_job(2, SSP_WORKERS, ssp_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, SSP_WORKERS, 1);
    j.specs[0].sync = (petrel_ps_sync){.staleness = s};
    j.specs[0].push = push;
    j.ntables = 1;
    j.ctx = &c;
    run_job(&j);
    CHECK(atomic_load(&c.violations) == 0);
    CHECK(atomic_load(&c.ahead_violations) == 0);
    if (s > 0) CHECK(atomic_load(&c.max_seen) >= 1); /* the bound is used, not just BSP */
    printf("# ssp:%d push %d: largest staleness seen %lld\n", s, push,
           (long long)atomic_load(&c.max_seen));
}

static uint64_t seed;

static void test_ssp_staleness_never_exceeds_bound(void) {
    ssp_case(0, true, seed);
    ssp_case(1, false, seed + 1);
    ssp_case(3, true, seed + 2);
}

/* ---- async never waits ----------------------------------------------------------------- */

typedef struct async_ctx {
    _Atomic int fast_done;
    _Atomic int slow_saw_fast_done;
} async_ctx;

static void async_worker(job *j, petrel_ps *ps, int worker) {
    async_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    float one = 1, v;
    if (worker == 0) {
        /* The slow worker stays at clock 0 until the fast one is done with 50. */
        for (int i = 0; i < 2000 && !atomic_load(&c->fast_done); i++) usleep(1000);
        atomic_store(&c->slow_saw_fast_done, atomic_load(&c->fast_done));
        CHECK_OK(petrel_ps_get(w, 0, 1, &v));
        CHECK(v >= 1); /* async reads what the server has: some of the fast one's work */
    } else {
        for (int i = 0; i < 50; i++) {
            CHECK_OK(petrel_ps_get(w, 0, 0, &v));
            CHECK_OK(petrel_ps_inc(w, 0, 1, &one));
            CHECK_OK(petrel_ps_clock(w));
        }
        atomic_store(&c->fast_done, 1);
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void test_async_never_waits(void) {
    async_ctx c = {0};
    job j = new_job(1, 2, async_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 2, 1);
    j.specs[0].sync = (petrel_ps_sync){.async = true};
    j.ntables = 1;
    j.ctx = &c;
    run_job(&j);
    CHECK(atomic_load(&c.slow_saw_fast_done) == 1);
}

/* ---- unequal work, rules, nothing lost --------------------------------------------------- */

typedef struct total_ctx {
    int clocks[4];
    float table[64];
    _Atomic int checked;
    float expect[64];
} total_ctx;

static void unequal_worker(job *j, petrel_ps *ps, int worker) {
    total_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    float one = 1, v;
    for (int i = 0; i < c->clocks[worker]; i++) {
        CHECK_OK(petrel_ps_get(w, 0, 0, &v));
        CHECK_OK(petrel_ps_inc(w, 0, 0, &one));
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void total_after_serve(job *j, petrel_ps *ps) {
    total_ctx *c = j->ctx;
    server_rows(ps, 0, c->table, j->specs[0].cols);
    atomic_fetch_add(&c->checked, 1);
}

static void test_unequal_clocks_finish_under_every_model(void) {
    const char *models[] = {"bsp", "ssp:2", "async"};
    for (int m = 0; m < 3; m++) {
        total_ctx c = {.clocks = {5, 12, 20}};
        job j = new_job(1, 3, unequal_worker);
        j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 1, 1);
        CHECK_OK(petrel_ps_sync_parse(models[m], &j.specs[0].sync));
        j.ntables = 1;
        j.ctx = &c;
        j.after_serve = total_after_serve;
        run_job(&j);
        CHECK(atomic_load(&c.checked) == 1);
        CHECK(c.table[0] == 37.0f);
    }
}

/* Worker 0 ends after 5 clocks and waits for the final model while its second
 * thread and the other workers (one of them slow) go on: its read must show every
 * delta of the job, whatever the consistency, and its handle may no longer write. */
static void *final_second_thread(void *arg) {
    petrel_ps_worker *w = arg;
    float one = 1;
    for (int i = 0; i < 8; i++) {
        CHECK_OK(petrel_ps_inc(w, 0, 0, &one));
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_worker_finish(w));
    return NULL;
}

static void final_worker(job *j, petrel_ps *ps, int worker) {
    total_ctx *c = j->ctx;
    petrel_ps_worker *w, *second = NULL;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    if (worker == 0) CHECK_OK(petrel_ps_worker_new(ps, &second));
    pthread_t th;
    if (second) pthread_create(&th, NULL, final_second_thread, second);
    float one = 1, v;
    for (int i = 0; i < c->clocks[worker]; i++) {
        if (worker == 2) usleep(2000); /* the slow one */
        CHECK_OK(petrel_ps_get(w, 0, 0, &v));
        CHECK_OK(petrel_ps_inc(w, 0, 0, &one));
        CHECK_OK(petrel_ps_clock(w));
    }
    if (worker == 0) {
        CHECK_OK(petrel_ps_wait_final(w));
        for (int k = 0; k < 2; k++) { /* fetched, then from the cache */
            CHECK_OK(petrel_ps_get(w, 0, 0, &v));
            CHECK(v == 45.0f);
        }
        CHECK(petrel_ps_inc(w, 0, 0, &one) == PETREL_ERR_STATE);
        CHECK(petrel_ps_clock(w) == PETREL_ERR_STATE);
        pthread_join(th, NULL);
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void test_wait_final_sees_every_delta(void) {
    const char *models[] = {"bsp", "ssp:2", "async"};
    for (int m = 0; m < 3; m++)
        for (int push = 0; push < 2; push++) {
            total_ctx c = {.clocks = {5, 12, 20}}; /* and 8 by worker 0's second thread */
            job j = new_job(2, 3, final_worker);
            j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 4, 1);
            CHECK_OK(petrel_ps_sync_parse(models[m], &j.specs[0].sync));
            j.specs[0].push = push;
            j.ntables = 1;
            j.ctx = &c;
            run_job(&j);
        }
}

/* Large pushes to a summing table are appended rather than coalesced (client.c):
 * a key pushed twice in a clock, alongside a small coalesced push of some of the
 * same keys, must still count twice on the servers, and a read before the clock
 * must show the process's own unsent deltas. BSP makes every read exact. */
enum { BIG = 3000, SMALL = 10, BIG_CLOCKS = 4 };

typedef struct big_ctx {
    float table[BIG * 2];
    _Atomic int checked;
} big_ctx;

static void big_worker(job *j, petrel_ps *ps, int worker) {
    (void)j;
    (void)worker;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    static _Thread_local uint64_t keys[BIG];
    static _Thread_local float d[BIG * 2];
    for (int k = 0; k < BIG; k++) {
        keys[k] = (uint64_t)k;
        d[2 * k] = 1;
        d[2 * k + 1] = 2;
    }
    const float half[SMALL * 2] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f,
                                   0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    for (int c = 0; c < BIG_CLOCKS; c++) {
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys, BIG, d));
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys, SMALL, half));
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys, BIG, d));
        if (c % 2 == 0) { /* odd clocks send their batches as they are */
            uint64_t ask[3] = {0, SMALL, BIG - 1};
            float got[6];
            CHECK_OK(petrel_ps_get_rows(w, 0, ask, 3, got));
            /* 2 workers' earlier clocks, then this clock's own deltas */
            CHECK(got[0] == (float)c * 2 * 2.5f + 2.5f && got[1] == (float)c * 2 * 4.5f + 4.5f);
            CHECK(got[2] == (float)c * 2 * 2 + 2 && got[3] == (float)c * 2 * 4 + 4);
            CHECK(got[4] == got[2] && got[5] == got[3]);
        }
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void big_after_serve(job *j, petrel_ps *ps) {
    big_ctx *c = j->ctx;
    server_rows(ps, 0, c->table, 2); /* the keys are 0 .. BIG-1 */
    atomic_fetch_add(&c->checked, 1);
}

static void test_large_pushes_count_every_delta(void) {
    big_ctx c = {0};
    job j = new_job(2, 2, big_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_SPARSE, 0, 2);
    j.ntables = 1;
    j.ctx = &c;
    j.after_serve = big_after_serve;
    run_job(&j);
    CHECK(atomic_load(&c.checked) == 2);
    bool exact = true;
    for (int k = 0; k < BIG; k++) {
        float extra = k < SMALL ? 0.5f : 0; /* per push of the small batch */
        exact &= c.table[2 * k] == BIG_CLOCKS * 2 * (2 + extra);
        exact &= c.table[2 * k + 1] == BIG_CLOCKS * 2 * (4 + extra);
    }
    CHECK(exact);
}

/* Every delta pushed, large or held back by the filter or sent early, arrives. */
static void filter_worker(job *j, petrel_ps *ps, int worker) {
    total_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    petrel_rng rng;
    petrel_rng_seed(&rng, 77 + (uint64_t)worker);
    float v[64], d[64];
    uint64_t keys[64];
    for (int k = 0; k < 64; k++) keys[k] = (uint64_t)k * 1000003u; /* sparse keys */
    for (int clock = 0; clock < 20; clock++) {
        CHECK_OK(petrel_ps_get_rows(w, 0, keys, 64, v));
        /* Each worker pushes to its own half of the rows: mostly tiny deltas, a few
         * large ones; multiples of 1/1024 add up exactly in any order. */
        for (int k = 0; k < 32; k++) {
            int64_t big = petrel_rng_below(&rng, 10) == 0;
            d[k] = (float)((int64_t)petrel_rng_below(&rng, 64) - 32) / 1024.0f * (big ? 256 : 1);
            c->expect[worker * 32 + k] += d[k];
        }
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys + worker * 32, 32, d));
        usleep(3000); /* lets the communication thread send early */
        CHECK_OK(petrel_ps_clock(w));
    }
    petrel_ps_stats st = petrel_ps_get_stats(ps);
    CHECK(st.rows_held > 0);
    CHECK(st.rows_pushed_early > 0);
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void sparse_after_serve(job *j, petrel_ps *ps) {
    total_ctx *c = j->ctx;
    petreli_ps_store *s = ps->tables[0].store;
    for (int64_t slot = 0; slot < petreli_ps_store_count(s); slot++) {
        uint64_t key = petreli_ps_store_key(s, slot);
        c->table[key / 1000003u] = *petreli_ps_store_row(s, slot);
    }
    atomic_fetch_add(&c->checked, 1);
}

static void test_managed_communication_loses_nothing(void) {
    total_ctx c = {0};
    job j = new_job(2, 2, filter_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_SPARSE, 0, 1);
    j.specs[0].sync = (petrel_ps_sync){.staleness = 2};
    j.specs[0].significance = 0.05f;
    j.specs[0].max_hold = 3;
    j.cfg.bandwidth_bytes_per_s = 20000; /* about 100 bytes per 5 ms tick */
    j.ntables = 1;
    j.ctx = &c;
    j.after_serve = sparse_after_serve;
    run_job(&j);
    CHECK(atomic_load(&c.checked) == 2);
    for (int k = 0; k < 64; k++) CHECK(c.table[k] == c.expect[k]);
}

/* Server-side SGD: the row moves by -lr * (sum of the pushed gradients). */
static void sgd_worker(job *j, petrel_ps *ps, int worker) {
    (void)j;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    float g[3] = {1.0f, -2.0f, 0.5f * (float)(worker + 1)}, v[3];
    for (int i = 0; i < 4; i++) {
        CHECK_OK(petrel_ps_get(w, 0, 5, v));
        CHECK_OK(petrel_ps_inc(w, 0, 5, g));
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_get(w, 0, 5, v));
    /* 2 workers x 4 clocks, lr 0.25, from the constant initializer 1. */
    CHECK_NEAR(v[0], 1.0f - 0.25f * 8 * 1.0f, 1e-5, 0);
    CHECK_NEAR(v[1], 1.0f - 0.25f * 8 * -2.0f, 1e-5, 0);
    CHECK_NEAR(v[2], 1.0f - 0.25f * 4 * (0.5f + 1.0f), 1e-5, 0);
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void test_server_side_sgd(void) {
    job j = new_job(2, 2, sgd_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 10, 3);
    j.specs[0].rule = PETREL_PS_SGD;
    j.specs[0].optim = petrel_optim_config_default(PETREL_OPTIM_SGD, 0.25f);
    j.specs[0].init = PETREL_PS_INIT_CONST;
    j.specs[0].init_a = 1.0f;
    j.ntables = 1;
    run_job(&j);
}

/* ---- threads of one worker process ----------------------------------------------------- */

typedef struct thread_arg {
    petrel_ps_worker *w;
    int clocks;
} thread_arg;

static void *inner_thread(void *arg) {
    thread_arg *a = arg;
    petrel_ps_worker *w = a->w;
    float one = 1, v;
    for (int i = 0; i < a->clocks; i++) {
        CHECK_OK(petrel_ps_get(w, 0, 0, &v));
        CHECK_OK(petrel_ps_inc(w, 0, 0, &one));
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_worker_finish(w));
    return NULL;
}

static void threads_worker(job *j, petrel_ps *ps, int worker) {
    (void)j;
    (void)worker;
    pthread_t th[3];
    thread_arg a[3];
    /* Every handle exists before any thread runs: the last handle to finish ends the
     * process, so a thread that started late would find it ended. */
    for (int t = 0; t < 3; t++) {
        a[t] = (thread_arg){NULL, 10 + 5 * t};
        CHECK_OK(petrel_ps_worker_new(ps, &a[t].w));
    }
    for (int t = 0; t < 3; t++) pthread_create(&th[t], NULL, inner_thread, &a[t]);
    for (int t = 0; t < 3; t++) pthread_join(th[t], NULL);
    petrel_ps_worker *late = NULL;
    CHECK_ERR(petrel_ps_worker_new(ps, &late), PETREL_ERR_STATE);
    CHECK(late == NULL);
}

static void test_threads_share_one_process_cache(void) {
    total_ctx c = {0};
    job j = new_job(1, 2, threads_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 1, 1);
    j.specs[0].sync = (petrel_ps_sync){.staleness = 1};
    j.ntables = 1;
    j.ctx = &c;
    j.after_serve = total_after_serve;
    run_job(&j);
    CHECK(c.table[0] == 2 * (10 + 15 + 20));
}

/* ---- snapshots ------------------------------------------------------------------------ */

typedef struct snap_ctx {
    int clocks;
    float final[8 * 2];
    _Atomic int checked;
} snap_ctx;

static void snap_worker(job *j, petrel_ps *ps, int worker) {
    snap_ctx *c = j->ctx;
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    uint64_t keys[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    float v[16], d[16];
    for (int64_t clock = petrel_ps_worker_clock(w); clock < c->clocks; clock++) {
        CHECK_OK(petrel_ps_get_rows(w, 0, keys, 8, v));
        for (int i = 0; i < 16; i++) d[i] = (float)((i + worker + clock) % 5) - 2.0f;
        CHECK_OK(petrel_ps_inc_rows(w, 0, keys, 8, d));
        CHECK_OK(petrel_ps_clock(w));
    }
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void snap_after_serve(job *j, petrel_ps *ps) {
    snap_ctx *c = j->ctx;
    server_rows(ps, 0, c->final, 2);
    atomic_fetch_add(&c->checked, 1);
}

static void test_snapshot_and_resume(void) {
    char dir[] = "/tmp/petrel-ps-snap-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    snap_ctx first = {.clocks = 6}, second = {.clocks = 6};
    job j = new_job(2, 2, snap_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 8, 2);
    j.specs[0].rule = PETREL_PS_ADAM; /* the rule's state must come back too */
    j.specs[0].optim = petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.01f);
    j.ntables = 1;
    j.cfg.snapshot_dir = dir;
    j.cfg.snapshot_every = 2;
    j.ctx = &first;
    j.after_serve = snap_after_serve;
    run_job(&j);
    CHECK(petrel_ps_latest_snapshot(dir, 1, 2) == 6);

    /* Resume from clock 4 and redo clocks 4 and 5: the same table, bit for bit. */
    j.cfg.resume_clock = 4;
    j.ctx = &second;
    run_job(&j);
    CHECK(atomic_load(&second.checked) == 2);
    CHECK(memcmp(first.final, second.final, sizeof first.final) == 0);

    /* A damaged file makes that clock incomplete. */
    char path[256];
    snprintf(path, sizeof path, "%s/clock-6/table-0.server-1", dir);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 20, SEEK_SET);
        fputc(0x5a, f);
        fclose(f);
    }
    CHECK(petrel_ps_latest_snapshot(dir, 1, 2) == 4);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* ---- hostile input ---------------------------------------------------------------------- */

static void hostile_worker(job *j, petrel_ps *ps, int worker) {
    (void)j;
    (void)worker;
    petrel_net *net = ps->net;
    unsigned char junk[40] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    /* A count far beyond the payload, a table that does not exist, a short message. */
    CHECK_OK(petrel_net_send(net, 1, PS_INC, 0, 0, junk, sizeof junk, 1000));
    CHECK_OK(petrel_net_send(net, 1, PS_INC, 9, 0, junk, sizeof junk, 1000));
    CHECK_OK(petrel_net_send(net, 1, PS_GET, 0, 0, junk, 3, 1000));
    CHECK_OK(petrel_net_send(net, petrel_net_rank(net), PS_ROWS, 0, 0, junk, sizeof junk, 1000));
    uint64_t bad_row[2] = {1, 99}; /* one key, outside the dense table */
    CHECK_OK(petrel_net_send(net, 1, PS_GET, 0, 0, bad_row, sizeof bad_row, 1000));
    petrel_ps_worker *w;
    CHECK_OK(petrel_ps_worker_new(ps, &w));
    float v, one = 1;
    CHECK_ERR(petrel_ps_get(w, 0, 99, &v), PETREL_ERR_INVALID);
    CHECK_OK(petrel_ps_inc(w, 0, 3, &one));
    CHECK_OK(petrel_ps_clock(w));
    CHECK_OK(petrel_ps_get(w, 0, 3, &v));
    CHECK(v == 1.0f); /* the server lived on */
    CHECK_OK(petrel_ps_worker_finish(w));
}

static void test_malformed_messages_are_ignored(void) {
    job j = new_job(1, 1, hostile_worker);
    j.specs[0] = petrel_ps_table_spec_default(PETREL_PS_DENSE, 4, 1);
    j.ntables = 1;
    run_job(&j);
}

/* ---- without a net ------------------------------------------------------------------- */

/* A ps of one server and two workers with no net, seen from one node of role: enough
 * for what runs before a table's barrier, and for a worker's reads of rows it has. */
static petrel_ps *offline_ps(petrel_role role) {
    petrel_ps *ps = calloc(1, sizeof *ps);
    ps->role = role;
    ps->cfg = petrel_ps_config_default();
    ps->servers = 1;
    ps->workers = 2;
    ps->rank = role == PETREL_ROLE_SERVER ? 1 : 2;
    ps->server_index = ps->rank - 1;
    ps->worker_index = ps->rank - 2;
    pthread_mutex_init(&ps->mu, NULL);
    pthread_mutex_init(&ps->flush_mu, NULL);
    pthread_cond_init(&ps->cv, NULL);
    return ps;
}

static void offline_free(petrel_ps *ps) {
    for (int t = 0; t < ps->ntables; t++) petreli_ps_table_fini(ps, &ps->tables[t]);
    pthread_cond_destroy(&ps->cv);
    pthread_mutex_destroy(&ps->flush_mu);
    pthread_mutex_destroy(&ps->mu);
    free(ps);
}

/* A table whose creation fails at any allocation leaves nothing behind, on either
 * side, and is not counted. */
static void test_failed_table_create_frees_it(void) {
    petrel_alloc_stats start = petrel_alloc_get_stats();
    petrel_role roles[2] = {PETREL_ROLE_SERVER, PETREL_ROLE_WORKER};
    for (int r = 0; r < 2; r++) {
        petrel_ps *ps = offline_ps(roles[r]);
        petrel_ps_table_spec spec = petrel_ps_table_spec_default(PETREL_PS_DENSE, 50, 3);
        /* How many allocations a table takes, from a creation that cannot fail. */
        uint64_t calls = petrel_alloc_get_stats().calls;
        ps->tables[0].spec = spec;
        CHECK_OK(r == 0 ? petreli_ps_server_table(ps, 0) : petreli_ps_client_table(ps, 0));
        int64_t needed = (int64_t)(petrel_alloc_get_stats().calls - calls);
        petreli_ps_table_fini(ps, &ps->tables[0]);
        CHECK(needed > 1 && petrel_alloc_get_stats().live_bytes == start.live_bytes);
        for (int64_t k = 0; k < needed; k++) {
            uint32_t id = 99;
            petrel_alloc_fail_after(k);
            petrel_err err = petrel_ps_table_create(ps, &spec, &id); /* fails before its barrier */
            petrel_alloc_fail_after(-1);
            CHECK(err == PETREL_ERR_NOMEM && id == 99 && ps->ntables == 0);
            CHECK(petrel_alloc_get_stats().live_bytes == start.live_bytes);
        }
        if (r == 0) { /* a snapshot to resume from that is not there */
            ps->cfg.snapshot_dir = "/nonexistent/petrel-ps";
            ps->cfg.resume_clock = 4;
            uint32_t id;
            CHECK_ERR(petrel_ps_table_create(ps, &spec, &id), PETREL_ERR_IO);
            CHECK(ps->ntables == 0 && petrel_alloc_get_stats().live_bytes == start.live_bytes);
        }
        offline_free(ps);
    }
}

/* A read merges the appended pushes into the log all at once or not at all: a
 * merge that runs out of memory leaves them for the next read, which counts each
 * delta once; a flush stops at the failure. The push starts with one key many
 * times, so that the store makes most of its rows after the first chunk of keys
 * and could fail there. */
static void test_merge_of_appended_pushes_is_all_or_nothing(void) {
    petrel_alloc_stats start = petrel_alloc_get_stats();
    enum { N = 3000, COLS = 2 };
    petrel_ps *ps = offline_ps(PETREL_ROLE_WORKER);
    ps->tables[0].spec = petrel_ps_table_spec_default(PETREL_PS_SPARSE, 0, COLS);
    ps->tables[0].spec.sync.async = true; /* reads rows it has without asking */
    CHECK_OK(petreli_ps_client_table(ps, 0));
    ps->ntables = 1;
    ps_table *t = &ps->tables[0];
    enum { SAME = 300 }; /* pushes of keys[0] first */
    static uint64_t keys[N], pushed[N];
    static float cached[N * COLS], d[N * COLS], got[N * COLS];
    for (int i = 0; i < N; i++) {
        keys[i] = (uint64_t)i * 104729u;
        pushed[i] = i < SAME ? 0 : keys[i];
        for (int j = 0; j < COLS; j++) {
            cached[i * COLS + j] = (float)(i % 7);
            d[i * COLS + j] = (float)(j + 1);
        }
    }
    /* Every row in the process cache, fresh: a read sends nothing. */
    CHECK_OK(petreli_ps_store_set(t->cache, keys, N, cached));
    for (int i = 0; i < N; i++) {
        cache_meta *meta =
            petreli_ps_store_aux(t->cache, petreli_ps_store_slot(t->cache, keys[i], false));
        meta->present = true;
    }
    petrel_ps_worker w = {.ps = ps};
    CHECK_OK(petrel_ps_inc_rows(&w, 0, pushed, N, d)); /* appended: N >= BATCH_MIN_KEYS */
    CHECK_OK(petrel_ps_inc(&w, 0, keys[1], d));        /* coalesced into the log */
    CHECK(t->batched.n == N);
    /* A flush (or clock) whose merge fails stops there, sending nothing (this ps has
     * no net to send with); its first allocation is the merge's. */
    petrel_alloc_fail_after(0);
    CHECK_ERR(petrel_ps_flush(&w), PETREL_ERR_NOMEM);
    petrel_alloc_fail_after(-1);
    CHECK(t->batched.n == N && petreli_ps_store_count(t->oplog) == 1);
    int failures = 0;
    for (int64_t k = 0; k < 100; k++) {
        petrel_alloc_fail_after(k);
        petrel_err err = petrel_ps_get_rows(&w, 0, keys, N, got);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) break;
        CHECK(err == PETREL_ERR_NOMEM);
        CHECK(t->batched.n == N && petreli_ps_store_count(t->oplog) == 1);
        failures++;
    }
    CHECK(failures > 0 && t->batched.n == 0);
    bool exact = true;
    for (int i = 0; i < N; i++) {
        int times = (i == 0 ? SAME : i >= SAME) + (i == 1);
        for (int j = 0; j < COLS; j++)
            exact &= got[i * COLS + j] == cached[i * COLS + j] + (float)((j + 1) * times);
    }
    CHECK(exact);
    offline_free(ps);
    CHECK(petrel_alloc_get_stats().live_bytes == start.live_bytes);
}

static void test_sync_parse(void) {
    petrel_ps_sync s;
    char buf[32];
    CHECK_OK(petrel_ps_sync_parse("ssp:3", &s));
    CHECK(!s.async && s.staleness == 3);
    CHECK(strcmp(petrel_ps_sync_format(s, buf, sizeof buf), "ssp:3") == 0);
    CHECK_OK(petrel_ps_sync_parse("bsp", &s));
    CHECK(strcmp(petrel_ps_sync_format(s, buf, sizeof buf), "bsp") == 0);
    CHECK_OK(petrel_ps_sync_parse("async", &s));
    CHECK(s.async);
    CHECK_ERR(petrel_ps_sync_parse("ssp:", &s), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ps_sync_parse("ssp:-1", &s), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ps_sync_parse("sync", &s), PETREL_ERR_INVALID);
}

int main(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    seed = check_seed(20261121);
    petrel_log_set_level(PETREL_LOG_LEVEL_ERROR);
    RUN(test_sync_parse);
    RUN(test_bsp_equals_sequential_run);
    RUN_SEEDED(test_ssp_staleness_never_exceeds_bound, seed);
    RUN(test_async_never_waits);
    RUN(test_unequal_clocks_finish_under_every_model);
    RUN(test_wait_final_sees_every_delta);
    RUN(test_server_side_sgd);
    RUN(test_managed_communication_loses_nothing);
    RUN(test_large_pushes_count_every_delta);
    RUN(test_threads_share_one_process_cache);
    RUN(test_snapshot_and_resume);
    RUN(test_malformed_messages_are_ignored);
    RUN(test_failed_table_create_frees_it);
    RUN(test_merge_of_appended_pushes_is_all_or_nothing);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
