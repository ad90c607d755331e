/*
 * Hogwild!: lock-free parallel SGD (Recht et al., NIPS 2011), the engine. The engine
 * (petreli_hw_engine) owns the threads and the modes and runs passes over samples;
 * petreli_hw_run adds the epochs, the permutation, the step decay and the evaluation.
 * The models (hogwild_linear.c, hogwild_mf.c) are step functions over shared weights
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

/* Bytes of a cache line: what threads write during a pass is kept on lines of its
 * own, so that it does not evict what the other threads read (false sharing). */
#define LINE 64

typedef struct hw_shared {
    /* read by every sample, written only between passes */
    const petreli_hw_model *m;
    const petrel_hogwild_config *cfg;
    int threads; /* cfg->threads when the engine started: what wk and the threads are sized by */
    const uint32_t *order; /* this pass's samples; NULL: 0, 1, .. */
    int64_t epoch;
    float lr;
    int64_t rounds; /* ROUND_ROBIN: turns each thread takes, ceil(n / T) */
    /* written during a pass, each on its own line */
    _Alignas(LINE) pthread_mutex_t lock;        /* LOCKED: held around each sample */
    _Alignas(LINE) atomic_uint_fast64_t ticket; /* ROUND_ROBIN: whose turn it is, counts up */
} hw_shared;

/* One thread's share of a pass; written by the caller before the pass and by its
 * thread only at the end of it (its running sums stay in its tally on its own
 * stack: workers share cache lines). */
typedef struct hw_worker {
    petreli_hw_engine *e;
    int id;
    int64_t begin, end; /* positions [begin, end) of the pass */
    float *scratch;     /* the model's per-thread scratch, on lines of its own */
    petreli_hw_tally tally;
} hw_worker;

/*
 * Threads 1 .. T-1 are started with the engine and parked between passes; thread 0 is
 * the caller of petreli_hw_pass. The hand-off is one mutex and two condition
 * variables: a pass writes its parameters (hw_shared, each hw_worker's range), then,
 * holding mu, bumps `generation`, sets `running` to T - 1 and wakes the threads; a
 * thread that sees a new generation (under mu) runs its part and, under mu again,
 * stores its tally and decrements `running`; the pass returns once `running` is 0,
 * read under mu. The mutex orders everything: the pass's writes (its parameters, the
 * caller's changes to the model's context and to the weights) happen before each
 * thread's part, and each thread's updates and tally happen before the pass returns.
 */
struct petreli_hw_engine {
    hw_shared s;
    hw_worker *wk;
    petrel_thread **th; /* th[1 .. started]; th[0] is unused (the caller) */
    float *scratch;     /* T * per_thread floats */
    size_t per_thread;  /* scratch floats per thread, whole lines */
    int started;        /* threads running hw_thread_main */
    _Alignas(LINE) pthread_mutex_t mu;
    pthread_cond_t go;   /* generation or stop changed */
    pthread_cond_t done; /* running reached 0 */
    uint64_t generation; /* passes published; under mu */
    int running;         /* threads still in this pass; under mu */
    bool stop;           /* under mu: the threads end */
};

static inline void hw_sample(const hw_shared *s, const hw_worker *wk, int64_t pos,
                             petreli_hw_tally *t) {
    int64_t i = s->order ? (int64_t)s->order[pos] : pos;
    t->loss += s->m->step(s->m->ctx, wk->scratch, i, s->lr, &t->nnz);
    t->samples++;
    if (s->cfg->on_sample) s->cfg->on_sample(s->cfg->on_sample_arg, s->epoch, wk->id, i);
}

/* Thread wk->id's part of the current pass, its tally into wk->tally. Bounded: at
 * most ceil(n / T) samples, or in ROUND_ROBIN `rounds` turns, each of which waits
 * only for the turn before it, and every thread of the pass takes all its turns. */
static void hw_part(hw_worker *wk) {
    hw_shared *s = &wk->e->s;
    petreli_hw_tally t = {0, 0, 0};
    if (s->threads == 1 || s->cfg->mode == PETREL_HOGWILD_LOCKFREE) {
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
        const uint64_t T = (uint64_t)s->threads;
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
    wk->tally = t;
}

/* Threads 1 .. T-1: park until a pass or the engine's end. The park has no timeout:
 * a parked thread holds up no one, and petreli_hw_engine_free, which every owner
 * calls, ends it. */
static void *hw_thread_main(void *arg) {
    hw_worker *wk = arg;
    petreli_hw_engine *e = wk->e;
    uint64_t seen = 0;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (e->generation == seen && !e->stop) pthread_cond_wait(&e->go, &e->mu);
        if (e->stop) break;
        seen = e->generation;
        pthread_mutex_unlock(&e->mu);
        hw_part(wk);
        pthread_mutex_lock(&e->mu);
        if (--e->running == 0) pthread_cond_signal(&e->done);
    }
    pthread_mutex_unlock(&e->mu);
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

petrel_err petreli_hw_check_config(const petrel_hogwild_config *c, unsigned also, const char *fn) {
    if (c->threads < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: threads %d: expected >= 1", fn,
                                c->threads);
    if ((also & PETRELI_HW_CHECK_EPOCHS) && c->epochs < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: epochs %lld: expected >= 1", fn,
                                (long long)c->epochs);
    if (!(c->lr > 0) || !isfinite(c->lr) || !(c->decay > 0 && c->decay <= 1))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: lr %g, decay %g: expected lr > 0, 0 < decay <= 1", fn,
                                (double)c->lr, (double)c->decay);
    if ((also & PETRELI_HW_CHECK_L2) && (!(c->l2 >= 0) || !isfinite(c->l2)))
        return petrel_error_set(PETREL_ERR_INVALID, "%s: l2 %g: expected l2 >= 0", fn,
                                (double)c->l2);
    if ((unsigned)c->mode >= PETREL_HOGWILD_MODE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: unknown mode %d", fn, (int)c->mode);
    return PETREL_OK;
}

petrel_err petreli_hw_engine_new(petreli_hw_engine **out, const petreli_hw_model *m,
                                 const petrel_hogwild_config *cfg) {
    PETREL_ASSERT(cfg->threads >= 1, "check the config first");
    const int T = cfg->threads;
    const size_t fpl = LINE / sizeof(float); /* floats per line */
    const size_t lines = (m->scratch + fpl - 1) / fpl;
    /* petrel_calloc's blocks are 64-byte aligned: the engine's _Alignas(LINE) fields and
     * every thread's scratch, whole lines from the block's start, begin on a line. */
    petreli_hw_engine *e = petrel_calloc(1, sizeof *e);
    if (!e) return PETREL_ERR_NOMEM;
    e->s = (hw_shared){.m = m, .cfg = cfg, .threads = T};
    atomic_init(&e->s.ticket, 0);
    e->per_thread = (lines > 0 ? lines : 1) * fpl;
    e->wk = petrel_calloc((size_t)T, sizeof *e->wk);
    e->th = petrel_calloc((size_t)T, sizeof *e->th);
    e->scratch = petrel_calloc((size_t)T * e->per_thread, sizeof *e->scratch);
    bool lock = false, mu = false, go = false;
    if (!e->wk || !e->th || !e->scratch || !(lock = pthread_mutex_init(&e->s.lock, NULL) == 0) ||
        !(mu = pthread_mutex_init(&e->mu, NULL) == 0) ||
        !(go = pthread_cond_init(&e->go, NULL) == 0) || pthread_cond_init(&e->done, NULL) != 0) {
        if (go) pthread_cond_destroy(&e->go);
        if (mu) pthread_mutex_destroy(&e->mu);
        if (lock) pthread_mutex_destroy(&e->s.lock);
        petrel_free(e->scratch);
        petrel_free(e->th);
        petrel_free(e->wk);
        petrel_free(e);
        return PETREL_ERR_NOMEM;
    }
    for (int t = 0; t < T; t++)
        e->wk[t] = (hw_worker){.e = e, .id = t, .scratch = e->scratch + (size_t)t * e->per_thread};
    for (int t = 1; t < T; t++) {
        petrel_err err = petrel_thread_start(&e->th[t], hw_thread_main, &e->wk[t]);
        if (err != PETREL_OK) {
            petreli_hw_engine_free(e); /* ends the threads started so far */
            return err;
        }
        e->started = t;
    }
    *out = e;
    return PETREL_OK;
}

void petreli_hw_engine_free(petreli_hw_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_broadcast(&e->go);
    pthread_mutex_unlock(&e->mu);
    /* Bounded: no pass is running (the owner's calls do not overlap), so every
     * thread is parked or about to park, and sees stop. */
    for (int t = 1; t <= e->started; t++) petrel_thread_join(e->th[t], NULL);
    pthread_cond_destroy(&e->done);
    pthread_cond_destroy(&e->go);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->s.lock);
    petrel_free(e->scratch);
    petrel_free(e->th);
    petrel_free(e->wk);
    petrel_free(e);
}

void petreli_hw_pass(petreli_hw_engine *e, const uint32_t *order, int64_t n, int64_t epoch,
                     float lr, petreli_hw_tally *out) {
    PETREL_ASSERT(n >= 0, "a pass over n >= 0 samples");
    const int T = e->s.threads;
    hw_shared *s = &e->s;
    hw_worker *wk = e->wk;
    s->order = order;
    s->epoch = epoch;
    s->lr = lr;
    s->rounds = (n + T - 1) / T;
    atomic_store_explicit(&s->ticket, 0, memory_order_relaxed);
    for (int t = 0; t < T; t++) {
        wk[t].begin = (int64_t)t * n / T;
        wk[t].end = (int64_t)(t + 1) * n / T;
    }
    if (T > 1) {
        pthread_mutex_lock(&e->mu);
        e->generation++;
        e->running = T - 1;
        pthread_cond_broadcast(&e->go);
        pthread_mutex_unlock(&e->mu);
    }
    hw_part(&wk[0]);
    if (T > 1) {
        /* Bounded: this waits only for the pass's own T - 1 threads, all started with
         * the engine and woken above, each of which ends its part (hw_part's bound)
         * and then decrements running. */
        pthread_mutex_lock(&e->mu);
        while (e->running > 0) pthread_cond_wait(&e->done, &e->mu);
        pthread_mutex_unlock(&e->mu);
    }
    *out = (petreli_hw_tally){0, 0, 0};
    for (int t = 0; t < T; t++) {
        out->loss += wk[t].tally.loss;
        out->nnz += wk[t].tally.nnz;
        out->samples += wk[t].tally.samples;
    }
}

petrel_err petreli_hw_run(const petreli_hw_model *m, int64_t n, const petrel_hogwild_config *cfg,
                          petrel_hogwild_epoch *epochs) {
    PETREL_ASSERT(n >= 1 && n <= (int64_t)UINT32_MAX && cfg->threads >= 1 && cfg->epochs >= 1,
                  "check the samples and the config first");
    petreli_hw_engine *engine = NULL;
    uint32_t *perm = petrel_malloc((size_t)n * sizeof *perm);
    petrel_err err = perm ? petreli_hw_engine_new(&engine, m, cfg) : PETREL_ERR_NOMEM;
    for (int64_t e = 0; e < cfg->epochs && err == PETREL_OK; e++) {
        petrel_epoch_order(perm, n, cfg->shuffle, cfg->seed, e);
        double t0 = petrel_now_s();
        petreli_hw_tally t;
        petreli_hw_pass(engine, perm, n, e, petreli_hw_lr(cfg, e), &t);
        double secs = petrel_now_s() - t0;
        petrel_hogwild_epoch *ep = &epochs[e];
        *ep = (petrel_hogwild_epoch){.test_accuracy = NAN, .train_rmse = NAN, .test_rmse = NAN};
        ep->samples = t.samples;
        ep->train_loss = t.samples ? t.loss / (double)t.samples : NAN;
        ep->seconds = secs;
        ep->samples_per_sec = secs > 0 ? (double)t.samples / secs : INFINITY;
        ep->nnz_per_sec = secs > 0 ? (double)t.nnz / secs : INFINITY;
        if (m->evaluate) m->evaluate(m->ctx, e, ep);
    }
    petreli_hw_engine_free(engine);
    petrel_free(perm);
    return err;
}

float petreli_hw_lr(const petrel_hogwild_config *cfg, int64_t epoch) {
    return cfg->lr * powf(cfg->decay, (float)epoch);
}

void petrel_hogwild_result_fini(petrel_hogwild_result *r) {
    if (!r) return;
    petrel_free(r->epoch);
    petrel_free(r->weights);
    memset(r, 0, sizeof *r);
}
