/*
 * Hogwild!: lock-free parallel SGD (Recht et al., NIPS 2011), the engine. It owns
 * the epochs, the permutation, the threads and the modes; the models
 * (hogwild_linear.c, hogwild_mf.c) are step functions over shared weights
 * (hogwild_impl.h).
 *
 * The shared weights are arrays of _Atomic float touched only with relaxed loads
 * and stores. A sample's update reads the coordinates it needs, computes the
 * gradient and writes each coordinate back (a relaxed load, a subtraction, a relaxed
 * store, not an atomic read-modify-write): two threads on one coordinate may lose
 * one of their updates, which is the inconsistency Hogwild's analysis allows for
 * sparse problems. Relaxed atomics are enough because no thread needs to see
 * another's writes in any order, only some recent value of each float; and, being
 * atomic, the accesses are not a data race (TSan agrees). On x86-64 a relaxed float
 * load or store is a plain mov, so lock-free costs nothing extra.
 */
#include "train/hogwild_impl.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

/* The batcher's epoch mix (data.h), so that both walk an epoch in the same order. */
#define EPOCH_MIX 0x9e3779b97f4a7c15ull

/* Bytes of a cache line: what threads write during an epoch is kept on lines of
 * its own, so that it does not evict what the other threads read (false sharing). */
#define LINE 64

typedef struct hw_shared {
    /* read by every sample, written only between epochs */
    const petreli_hw_model *m;
    const petrel_hogwild_config *cfg;
    const uint32_t *perm; /* this epoch's order, n entries */
    int64_t epoch;
    float lr;
    int64_t rounds; /* ROUND_ROBIN: turns each thread takes, ceil(n / T) */
    /* written during an epoch, each on its own line */
    _Alignas(LINE) pthread_mutex_t lock;        /* LOCKED: held around each sample */
    _Alignas(LINE) atomic_uint_fast64_t ticket; /* ROUND_ROBIN: whose turn it is, counts up */
} hw_shared;

/* One thread's share of an epoch; written by it only at the end of the epoch (its
 * running sums stay in hw_tally on its own stack: workers share cache lines). */
typedef struct hw_worker {
    hw_shared *s;
    int id;
    int64_t begin, end; /* positions [begin, end) of perm */
    float *scratch;     /* the model's per-thread scratch, on lines of its own */
    double loss;        /* sum of progressive losses */
    int64_t nnz, samples;
} hw_worker;

typedef struct hw_tally {
    double loss;
    int64_t nnz, samples;
} hw_tally;

static inline void hw_sample(const hw_shared *s, const hw_worker *wk, int64_t pos, hw_tally *t) {
    int64_t i = s->perm[pos];
    t->loss += s->m->step(s->m->ctx, wk->scratch, i, s->lr, &t->nnz);
    t->samples++;
    if (s->cfg->on_sample) s->cfg->on_sample(s->cfg->on_sample_arg, s->epoch, wk->id, i);
}

static void *hw_worker_main(void *arg) {
    hw_worker *wk = arg;
    hw_shared *s = wk->s;
    hw_tally t = {0, 0, 0};
    if (s->cfg->threads == 1 || s->cfg->mode == PETREL_HOGWILD_LOCKFREE) {
        for (int64_t p = wk->begin; p < wk->end; p++) hw_sample(s, wk, p, &t);
    } else if (s->cfg->mode == PETREL_HOGWILD_LOCKED) {
        for (int64_t p = wk->begin; p < wk->end; p++) {
            pthread_mutex_lock(&s->lock);
            hw_sample(s, wk, p, &t);
            pthread_mutex_unlock(&s->lock);
        }
    } else {
        /* Turn k*T + t belongs to thread t, round k. A thread whose partition is
         * used up still takes its turns, so that the others are not left waiting.
         * The acquire/release pair orders each turn after the one before it, which
         * makes the run equal to a serial one in this fixed interleaving. */
        const uint64_t T = (uint64_t)s->cfg->threads;
        for (int64_t k = 0; k < s->rounds; k++) {
            uint64_t mine = (uint64_t)k * T + (uint64_t)wk->id;
            for (unsigned spins = 0; atomic_load_explicit(&s->ticket, memory_order_acquire) != mine;
                 spins++)
                if (spins % 64 == 63) sched_yield(); /* more threads than cores */
            int64_t p = wk->begin + k;
            if (p < wk->end) hw_sample(s, wk, p, &t);
            atomic_store_explicit(&s->ticket, mine + 1, memory_order_release);
        }
    }
    wk->loss = t.loss, wk->nnz = t.nnz, wk->samples = t.samples;
    return NULL;
}

const char *petrel_hogwild_model_name(petrel_hogwild_model model) {
    switch (model) {
    case PETREL_HOGWILD_LOGREG:
        return "logreg";
    case PETREL_HOGWILD_SVM:
        return "svm";
    case PETREL_HOGWILD_SOFTMAX:
        return "softmax";
    case PETREL_HOGWILD_MF:
        return "mf";
    case PETREL_HOGWILD_MODEL_COUNT:
        break;
    }
    return "?";
}

const char *petrel_hogwild_mode_name(petrel_hogwild_mode mode) {
    switch (mode) {
    case PETREL_HOGWILD_LOCKFREE:
        return "lockfree";
    case PETREL_HOGWILD_LOCKED:
        return "locked";
    case PETREL_HOGWILD_ROUND_ROBIN:
        return "round-robin";
    case PETREL_HOGWILD_MODE_COUNT:
        break;
    }
    return "?";
}

petrel_hogwild_config petrel_hogwild_config_default(void) {
    petrel_hogwild_config c = {.model = PETREL_HOGWILD_LOGREG,
                               .mode = PETREL_HOGWILD_LOCKFREE,
                               .threads = 1,
                               .epochs = 10,
                               .lr = 0.1f,
                               .decay = 0.9f,
                               .l2 = 0.0f,
                               .seed = 1,
                               .shuffle = true,
                               .on_sample = NULL,
                               .on_sample_arg = NULL};
    return c;
}

petrel_err petreli_hw_check_config(const petrel_hogwild_config *c, const char *fn) {
    if (c->threads < 1 || c->epochs < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: threads %d, epochs %lld: expected >= 1",
                                fn, c->threads, (long long)c->epochs);
    if (!(c->lr > 0) || !isfinite(c->lr) || !(c->decay > 0 && c->decay <= 1) || !(c->l2 >= 0) ||
        !isfinite(c->l2))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: lr %g, decay %g, l2 %g: expected lr > 0, 0 < decay <= 1, "
                                "l2 >= 0",
                                fn, (double)c->lr, (double)c->decay, (double)c->l2);
    if ((unsigned)c->mode >= PETREL_HOGWILD_MODE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: unknown mode %d", fn, (int)c->mode);
    return PETREL_OK;
}

petrel_err petreli_hw_run(const petreli_hw_model *m, int64_t n, const petrel_hogwild_config *cfg,
                          petrel_hogwild_epoch *epochs) {
    PETREL_ASSERT(n >= 1 && n <= (int64_t)UINT32_MAX && cfg->threads >= 1 && cfg->epochs >= 1,
                  "check the samples and the config first");
    const int T = cfg->threads;
    const size_t fpl = LINE / sizeof(float); /* floats per line */
    const size_t lines = (m->scratch + fpl - 1) / fpl;
    const size_t per_thread = (lines > 0 ? lines : 1) * fpl; /* whole lines */
    hw_shared s = {.m = m, .cfg = cfg, .rounds = (n + T - 1) / T};
    atomic_init(&s.ticket, 0);
    bool have_lock = false;
    uint32_t *perm = petrel_malloc((size_t)n * sizeof *perm);
    hw_worker *wk = petrel_calloc((size_t)T, sizeof *wk);
    petrel_thread **th = petrel_calloc((size_t)T, sizeof *th);
    /* one line more, to start the first thread's scratch on a line boundary */
    float *scratch = petrel_calloc((size_t)T * per_thread + fpl, sizeof *scratch);
    petrel_err err = PETREL_ERR_NOMEM;
    if (!perm || !wk || !th || !scratch) goto done;
    if (pthread_mutex_init(&s.lock, NULL) != 0) goto done;
    have_lock = true;
    s.perm = perm;
    float *first = scratch + (fpl - ((uintptr_t)scratch / sizeof(float)) % fpl) % fpl;

    for (int64_t e = 0; e < cfg->epochs; e++) {
        for (int64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
        if (cfg->shuffle) {
            petrel_rng rng;
            petrel_rng_seed(&rng, cfg->seed ^ (EPOCH_MIX * (uint64_t)(e + 1)));
            petrel_rng_shuffle_u32(&rng, perm, (size_t)n);
        }
        s.epoch = e;
        s.lr = cfg->lr * powf(cfg->decay, (float)e);
        atomic_store_explicit(&s.ticket, 0, memory_order_relaxed);
        for (int t = 0; t < T; t++)
            wk[t] = (hw_worker){.s = &s,
                                .id = t,
                                .begin = (int64_t)t * n / T,
                                .end = (int64_t)(t + 1) * n / T,
                                .scratch = first + (size_t)t * per_thread};

        double t0 = petrel_now_s();
        if (T == 1) {
            hw_worker_main(&wk[0]);
        } else {
            int started = 0;
            for (; started < T; started++)
                if ((err = petrel_thread_start(&th[started], hw_worker_main, &wk[started]))) break;
            if (started < T) {
                /* Round-robin threads would wait forever for a missing thread's
                 * turn: pass those turns on from here until the started ones end. */
                const uint64_t total = (uint64_t)s.rounds * (uint64_t)T;
                for (uint64_t tk;
                     cfg->mode == PETREL_HOGWILD_ROUND_ROBIN &&
                     (tk = atomic_load_explicit(&s.ticket, memory_order_acquire)) < total;)
                    if (tk % (uint64_t)T >= (uint64_t)started)
                        atomic_store_explicit(&s.ticket, tk + 1, memory_order_release);
                    else
                        sched_yield();
                for (int t = 0; t < started; t++) petrel_thread_join(th[t], NULL);
                goto done;
            }
            for (int t = 0; t < T; t++) petrel_thread_join(th[t], NULL);
        }
        double secs = petrel_now_s() - t0;

        petrel_hogwild_epoch *ep = &epochs[e];
        *ep = (petrel_hogwild_epoch){.test_accuracy = NAN, .train_rmse = NAN, .test_rmse = NAN};
        double loss = 0;
        int64_t nnz = 0;
        for (int t = 0; t < T; t++)
            loss += wk[t].loss, nnz += wk[t].nnz, ep->samples += wk[t].samples;
        ep->train_loss = ep->samples ? loss / (double)ep->samples : NAN;
        ep->seconds = secs;
        ep->samples_per_sec = secs > 0 ? (double)ep->samples / secs : INFINITY;
        ep->nnz_per_sec = secs > 0 ? (double)nnz / secs : INFINITY;
        if (m->evaluate) m->evaluate(m->ctx, e, ep);
    }
    err = PETREL_OK;

done:
    if (have_lock) pthread_mutex_destroy(&s.lock);
    petrel_free(scratch);
    petrel_free(th);
    petrel_free(wk);
    petrel_free(perm);
    return err;
}

void petrel_hogwild_result_fini(petrel_hogwild_result *r) {
    if (!r) return;
    petrel_free(r->epoch);
    petrel_free(r->weights);
    memset(r, 0, sizeof *r);
}
