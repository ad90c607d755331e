/*
 * Hogwild!: lock-free parallel SGD over sparse features (Recht et al., NIPS 2011).
 *
 * The shared weights are an array of _Atomic float touched only with relaxed
 * loads and stores. A sample's update reads the coordinates of its row, computes
 * the gradient and writes each coordinate back (a relaxed load, a subtraction, a
 * relaxed store, not an atomic read-modify-write): two threads on one coordinate
 * may lose one of their updates, which is the inconsistency Hogwild's analysis
 * allows for sparse problems. Relaxed atomics are enough because no thread needs
 * to see another's writes in any order, only some recent value of each float;
 * and, being atomic, the accesses are not a data race (TSan agrees). On x86-64 a
 * relaxed float load or store is a plain mov, so lock-free costs nothing extra.
 *
 * Softmax keeps its weights as (D, C) internally, so that the C weights of one
 * feature share a cache line; the result is transposed to (C, D).
 */
#include "petrel/hogwild.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

/* The batcher's epoch mix (data.h), so that both walk an epoch in the same order. */
#define EPOCH_MIX 0x9e3779b97f4a7c15ull

typedef struct hw_shared {
    const petrel_csr *X; /* train rows (n, D) */
    const int32_t *y;    /* n labels */
    petrel_hogwild_config cfg;
    int64_t dim, classes; /* D; C for softmax, else 1 */
    _Atomic float *w;     /* logreg/svm (D); softmax (D, C) */
    const uint32_t *perm; /* this epoch's order, n entries */
    int64_t n, epoch;
    float lr;
    pthread_mutex_t lock;        /* LOCKED: held around each sample */
    atomic_uint_fast64_t ticket; /* ROUND_ROBIN: whose turn it is, counts up */
    int64_t rounds;              /* ROUND_ROBIN: turns each thread takes, ceil(n / T) */
} hw_shared;

typedef struct hw_worker {
    hw_shared *s;
    int id;
    int64_t begin, end; /* positions [begin, end) of perm */
    float *z;           /* softmax scratch: C logits */
    double loss;        /* sum of progressive losses */
    int64_t nnz, samples;
} hw_worker;

static inline float wload(_Atomic float *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void wstore(_Atomic float *p, float v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

/* log(1 + exp(t)) without overflow. */
static double softplus(double t) {
    return t > 0 ? t + log1p(exp(-t)) : log1p(exp(t));
}

/* One SGD step on row i; returns the row's loss before the step.
 * x (nnz entries of row i), w (D) or (D, C): w_j -= lr (g x_j + l2 w_j) on the
 * touched coordinates j only. */
static double hw_step(const hw_shared *s, float *z, int64_t i) {
    const petrel_csr *X = s->X;
    const int64_t b = X->row_ptr[i], e = X->row_ptr[i + 1];
    const int32_t *col = X->col;
    const float *val = X->val;
    const float lr = s->lr, l2 = s->cfg.l2;
    _Atomic float *w = s->w;
    const int32_t y = s->y[i];

    if (s->cfg.model == PETREL_HOGWILD_SOFTMAX) {
        const int64_t C = s->classes;
        for (int64_t c = 0; c < C; c++) z[c] = 0;
        for (int64_t k = b; k < e; k++) {
            _Atomic float *wj = w + (int64_t)col[k] * C;
            for (int64_t c = 0; c < C; c++) z[c] += wload(wj + c) * val[k];
        }
        float mx = z[0];
        for (int64_t c = 1; c < C; c++) mx = z[c] > mx ? z[c] : mx;
        double sum = 0;
        for (int64_t c = 0; c < C; c++) sum += exp((double)(z[c] - mx));
        double loss = log(sum) + mx - z[y];
        /* z becomes g_c = softmax_c - [c == y] */
        for (int64_t c = 0; c < C; c++) z[c] = (float)(exp((double)(z[c] - mx)) / sum);
        z[y] -= 1.0f;
        for (int64_t k = b; k < e; k++) {
            _Atomic float *wj = w + (int64_t)col[k] * C;
            for (int64_t c = 0; c < C; c++) {
                float v = wload(wj + c);
                wstore(wj + c, v - lr * (z[c] * val[k] + l2 * v));
            }
        }
        return loss;
    }

    float m = 0;
    for (int64_t k = b; k < e; k++) m += wload(w + col[k]) * val[k];
    const float sgn = y ? 1.0f : -1.0f;
    double loss;
    float g; /* d loss / d m */
    if (s->cfg.model == PETREL_HOGWILD_LOGREG) {
        loss = softplus(-(double)sgn * m);
        /* sigmoid(m) - y, written so that neither branch overflows */
        float p = m >= 0 ? 1.0f / (1.0f + expf(-m)) : expf(m) / (1.0f + expf(m));
        g = p - (float)y;
    } else {
        float margin = sgn * m;
        loss = margin < 1 ? 1.0 - margin : 0.0;
        g = margin < 1 ? -sgn : 0.0f;
    }
    if (g == 0 && l2 == 0) return loss;
    for (int64_t k = b; k < e; k++) {
        _Atomic float *wj = w + col[k];
        float v = wload(wj);
        wstore(wj, v - lr * (g * val[k] + l2 * v));
    }
    return loss;
}

static void hw_sample(hw_worker *wk, int64_t pos) {
    const hw_shared *s = wk->s;
    int64_t i = s->perm[pos];
    wk->loss += hw_step(s, wk->z, i);
    wk->nnz += s->X->row_ptr[i + 1] - s->X->row_ptr[i];
    wk->samples++;
    if (s->cfg.on_sample) s->cfg.on_sample(s->cfg.on_sample_arg, s->epoch, wk->id, i);
}

static void *hw_worker_main(void *arg) {
    hw_worker *wk = arg;
    hw_shared *s = wk->s;
    if (s->cfg.threads == 1 || s->cfg.mode == PETREL_HOGWILD_LOCKFREE) {
        for (int64_t p = wk->begin; p < wk->end; p++) hw_sample(wk, p);
    } else if (s->cfg.mode == PETREL_HOGWILD_LOCKED) {
        for (int64_t p = wk->begin; p < wk->end; p++) {
            pthread_mutex_lock(&s->lock);
            hw_sample(wk, p);
            pthread_mutex_unlock(&s->lock);
        }
    } else {
        /* Turn k*T + t belongs to thread t, round k. A thread whose partition is
         * used up still takes its turns, so that the others are not left waiting.
         * The acquire/release pair orders each turn after the one before it, which
         * makes the run equal to a serial one in this fixed interleaving. */
        const uint64_t T = (uint64_t)s->cfg.threads;
        for (int64_t k = 0; k < s->rounds; k++) {
            uint64_t mine = (uint64_t)k * T + (uint64_t)wk->id;
            for (unsigned spins = 0; atomic_load_explicit(&s->ticket, memory_order_acquire) != mine;
                 spins++)
                if (spins % 64 == 63) sched_yield(); /* more threads than cores */
            int64_t p = wk->begin + k;
            if (p < wk->end) hw_sample(wk, p);
            atomic_store_explicit(&s->ticket, mine + 1, memory_order_release);
        }
    }
    return NULL;
}

/* w (rows, dim) plain floats; the class of row i of X (columns >= dim ignored). */
static int32_t hw_predict(petrel_hogwild_model model, const float *w, int64_t rows, int64_t dim,
                          const petrel_csr *X, int64_t i) {
    const int64_t b = X->row_ptr[i], e = X->row_ptr[i + 1];
    if (model != PETREL_HOGWILD_SOFTMAX) {
        float m = 0;
        for (int64_t k = b; k < e; k++)
            if (X->col[k] < dim) m += w[X->col[k]] * X->val[k];
        return m > 0 ? 1 : 0;
    }
    int32_t best = 0;
    float best_z = -INFINITY;
    for (int64_t c = 0; c < rows; c++) {
        float z = 0;
        for (int64_t k = b; k < e; k++)
            if (X->col[k] < dim) z += w[c * dim + X->col[k]] * X->val[k];
        if (z > best_z) best_z = z, best = (int32_t)c;
    }
    return best;
}

double petrel_hogwild_accuracy(const petrel_hogwild_result *r, const petrel_dataset *d) {
    if (!r || !d || d->x || d->n <= 0) return NAN;
    int64_t right = 0;
    for (int64_t i = 0; i < d->n; i++)
        right += hw_predict(r->model, r->weights, r->rows, r->dim, &d->sparse, i) == d->y[i];
    return (double)right / (double)d->n;
}

/* Copies the shared weights out as plain floats (rows, dim). */
static void hw_copy_out(const hw_shared *s, float *out) {
    const int64_t D = s->dim, C = s->classes;
    for (int64_t j = 0; j < D; j++)
        for (int64_t c = 0; c < C; c++) out[c * D + j] = wload(s->w + j * C + c);
}

const char *petrel_hogwild_model_name(petrel_hogwild_model model) {
    switch (model) {
    case PETREL_HOGWILD_LOGREG:
        return "logreg";
    case PETREL_HOGWILD_SVM:
        return "svm";
    case PETREL_HOGWILD_SOFTMAX:
        return "softmax";
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

static petrel_err hw_check(const petrel_dataset *train, const petrel_dataset *test,
                           const petrel_hogwild_config *c) {
    const char *fn = "petrel_hogwild_train";
    if (c->threads < 1 || c->epochs < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: threads %d, epochs %lld: expected >= 1",
                                fn, c->threads, (long long)c->epochs);
    if (!(c->lr > 0) || !isfinite(c->lr) || !(c->decay > 0 && c->decay <= 1) || !(c->l2 >= 0) ||
        !isfinite(c->l2))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: lr %g, decay %g, l2 %g: expected lr > 0, 0 < decay <= 1, "
                                "l2 >= 0",
                                fn, (double)c->lr, (double)c->decay, (double)c->l2);
    if ((unsigned)c->model >= PETREL_HOGWILD_MODEL_COUNT ||
        (unsigned)c->mode >= PETREL_HOGWILD_MODE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: unknown model %d or mode %d", fn,
                                (int)c->model, (int)c->mode);
    if (!train || train->x || train->n < 1 || train->dim < 1 || train->n > (int64_t)UINT32_MAX)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: expected a sparse training set of 1 .. 2^32-1 samples "
                                "(petrel_dataset_to_sparse converts a dense one)",
                                fn);
    if (test && test->x)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: expected a sparse test set", fn);
    bool binary = c->model != PETREL_HOGWILD_SOFTMAX;
    if (binary ? train->num_classes != 2 : train->num_classes < 2)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: %s on %d classes: expected %s", fn,
                                petrel_hogwild_model_name(c->model), (int)train->num_classes,
                                binary ? "exactly 2 (labels 0/1)" : "at least 2");
    if (test && test->num_classes > train->num_classes)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: test set has %d classes, train %d", fn,
                                (int)test->num_classes, (int)train->num_classes);
    return PETREL_OK;
}

petrel_err petrel_hogwild_train(const petrel_dataset *train, const petrel_dataset *test,
                                petrel_hogwild_config cfg, petrel_hogwild_result *r) {
    PETREL_ASSERT(r, "pass a result to fill");
    petrel_err err = hw_check(train, test, &cfg);
    if (err) return err;

    const int T = cfg.threads;
    const int64_t n = train->n, D = train->dim;
    const int64_t C = cfg.model == PETREL_HOGWILD_SOFTMAX ? train->num_classes : 1;
    hw_shared s = {.X = &train->sparse,
                   .y = train->y,
                   .cfg = cfg,
                   .dim = D,
                   .classes = C,
                   .n = n,
                   .rounds = (n + T - 1) / T};
    atomic_init(&s.ticket, 0);
    bool have_lock = false;
    uint32_t *perm = NULL;
    hw_worker *wk = NULL;
    petrel_thread **th = NULL;
    float *scratch = NULL;
    petrel_hogwild_result out = {.model = cfg.model, .epochs = cfg.epochs, .rows = C, .dim = D};

    err = PETREL_ERR_NOMEM;
    /* All-zero bits are 0.0f: calloc initializes the atomic floats. */
    s.w = petrel_calloc((size_t)(D * C), sizeof *s.w);
    perm = petrel_malloc((size_t)n * sizeof *perm);
    wk = petrel_calloc((size_t)T, sizeof *wk);
    th = petrel_calloc((size_t)T, sizeof *th);
    scratch = petrel_calloc((size_t)(T * C), sizeof *scratch);
    out.epoch = petrel_calloc((size_t)cfg.epochs, sizeof *out.epoch);
    out.weights = petrel_calloc((size_t)(D * C), sizeof *out.weights);
    if (!s.w || !perm || !wk || !th || !scratch || !out.epoch || !out.weights) goto fail;
    if (pthread_mutex_init(&s.lock, NULL) != 0) goto fail;
    have_lock = true;
    s.perm = perm;

    for (int64_t e = 0; e < cfg.epochs; e++) {
        for (int64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
        if (cfg.shuffle) {
            petrel_rng rng;
            petrel_rng_seed(&rng, cfg.seed ^ (EPOCH_MIX * (uint64_t)(e + 1)));
            petrel_rng_shuffle_u32(&rng, perm, (size_t)n);
        }
        s.epoch = e;
        s.lr = cfg.lr * powf(cfg.decay, (float)e);
        atomic_store_explicit(&s.ticket, 0, memory_order_relaxed);
        for (int t = 0; t < T; t++)
            wk[t] = (hw_worker){.s = &s,
                                .id = t,
                                .begin = (int64_t)t * n / T,
                                .end = (int64_t)(t + 1) * n / T,
                                .z = scratch + (int64_t)t * C};

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
                     cfg.mode == PETREL_HOGWILD_ROUND_ROBIN &&
                     (tk = atomic_load_explicit(&s.ticket, memory_order_acquire)) < total;)
                    if (tk % (uint64_t)T >= (uint64_t)started)
                        atomic_store_explicit(&s.ticket, tk + 1, memory_order_release);
                    else
                        sched_yield();
                for (int t = 0; t < started; t++) petrel_thread_join(th[t], NULL);
                goto fail;
            }
            for (int t = 0; t < T; t++) petrel_thread_join(th[t], NULL);
        }
        double secs = petrel_now_s() - t0;

        petrel_hogwild_epoch *ep = &out.epoch[e];
        double loss = 0;
        int64_t nnz = 0;
        for (int t = 0; t < T; t++)
            loss += wk[t].loss, nnz += wk[t].nnz, ep->samples += wk[t].samples;
        ep->train_loss = ep->samples ? loss / (double)ep->samples : NAN;
        ep->seconds = secs;
        ep->samples_per_sec = secs > 0 ? (double)ep->samples / secs : INFINITY;
        ep->nnz_per_sec = secs > 0 ? (double)nnz / secs : INFINITY;
        hw_copy_out(&s, out.weights);
        ep->test_accuracy = test ? petrel_hogwild_accuracy(&out, test) : NAN;
    }

    pthread_mutex_destroy(&s.lock);
    petrel_free(scratch);
    petrel_free(th);
    petrel_free(wk);
    petrel_free(perm);
    petrel_free((void *)s.w);
    *r = out;
    return PETREL_OK;

fail:
    if (have_lock) pthread_mutex_destroy(&s.lock);
    petrel_free(out.weights);
    petrel_free(out.epoch);
    petrel_free(scratch);
    petrel_free(th);
    petrel_free(wk);
    petrel_free(perm);
    petrel_free((void *)s.w);
    return err;
}

void petrel_hogwild_result_fini(petrel_hogwild_result *r) {
    if (!r) return;
    petrel_free(r->epoch);
    petrel_free(r->weights);
    memset(r, 0, sizeof *r);
}
