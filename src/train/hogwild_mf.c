/*
 * Hogwild!'s matrix factorization: the step function that fits user factors L and
 * item factors R to ratings, for the engine (hogwild.c), as in the paper's
 * Netflix-style experiments.
 *
 * A rating (u, i, r) touches exactly two rows, L_u and R_i (rank floats each, one
 * or a few cache lines). Two threads collide only on a shared user or item, so for
 * many users and items the updates are as sparse as Hogwild! wants; a popular item
 * is the hot coordinate of this model.
 */
#include "train/hogwild_impl.h"

#include <math.h>

/* Factor initialization stream: cfg.seed ^ INIT_MIX ("mf"). */
#define INIT_MIX 0x6d66u

/* The step's context first, so that an mf_model is also a petreli_hw_mf. */
typedef struct mf_model {
    petreli_hw_mf step;
    const petrel_ratings *test;
    petrel_hogwild_result *out;
} mf_model;

/* One SGD step on rating i: l = L_u, r = R_i (rank each), read into a and b
 * (scratch, 2 rank floats) before either is written; e = a . b - rating;
 * l -= lr (e b + l2 a), r -= lr (e a + l2 b). Returns e^2. */
double petreli_hw_mf_step(void *ctx, float *ab, int64_t i, float lr, int64_t *nnz) {
    const petreli_hw_mf *m = ctx;
    const int64_t K = m->rank;
    _Atomic float *l = m->L + (int64_t)m->ratings->user[i] * K;
    _Atomic float *r = m->R + (int64_t)m->ratings->item[i] * K;
    float *a = ab, *b = ab + K;
    float pred = 0;
    for (int64_t k = 0; k < K; k++) {
        a[k] = petreli_wload(l + k);
        b[k] = petreli_wload(r + k);
        pred += a[k] * b[k];
    }
    const float e = pred - m->ratings->rating[i], l2 = m->l2;
    for (int64_t k = 0; k < K; k++) {
        petreli_wstore(l + k, a[k] - lr * (e * b[k] + l2 * a[k]));
        petreli_wstore(r + k, b[k] - lr * (e * a[k] + l2 * b[k]));
    }
    *nnz += 2;
    return (double)e * e;
}

double petrel_hogwild_rmse(const petrel_hogwild_result *r, const petrel_ratings *d) {
    if (!r || !d || r->model != PETREL_HOGWILD_MF || d->n <= 0) return NAN;
    const int64_t K = r->dim;
    const float *L = r->weights, *R = r->weights + r->users * K;
    double sq = 0;
    for (int64_t j = 0; j < d->n; j++) {
        const int64_t u = d->user[j], i = d->item[j];
        float pred = 0;
        if (u < r->users && i < r->items)
            for (int64_t k = 0; k < K; k++) pred += L[u * K + k] * R[i * K + k];
        const double e = (double)pred - (double)d->rating[j];
        sq += e * e;
    }
    return sqrt(sq / (double)d->n);
}

/* After an epoch: the factors copied out as plain floats, then the RMSEs. */
static void mf_evaluate(void *ctx, int64_t e, petrel_hogwild_epoch *ep) {
    (void)e;
    const mf_model *m = ctx;
    const int64_t K = m->step.rank, users = m->out->users, items = m->out->items;
    float *w = m->out->weights;
    for (int64_t k = 0; k < users * K; k++) w[k] = petreli_wload(m->step.L + k);
    for (int64_t k = 0; k < items * K; k++) w[users * K + k] = petreli_wload(m->step.R + k);
    ep->train_rmse = petrel_hogwild_rmse(m->out, m->step.ratings);
    ep->test_rmse = m->test ? petrel_hogwild_rmse(m->out, m->test) : NAN;
}

/* Every id of d inside its users and items (d is plain data a caller may have
 * built by hand). */
static petrel_err mf_check_set(const petrel_ratings *d, const char *which) {
    const char *fn = "petrel_hogwild_train_mf";
    if (d->n < 0 || d->n > (int64_t)UINT32_MAX || d->users < 0 || d->items < 0 ||
        d->users > (int64_t)INT32_MAX + 1 || d->items > (int64_t)INT32_MAX + 1 ||
        (d->n > 0 && (!d->user || !d->item || !d->rating)))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: %s set of %lld ratings, %lld users, %lld items: expected "
                                "0 .. 2^32-1 ratings, 0 .. 2^31 users and items",
                                fn, which, (long long)d->n, (long long)d->users,
                                (long long)d->items);
    for (int64_t j = 0; j < d->n; j++)
        if (d->user[j] < 0 || d->user[j] >= d->users || d->item[j] < 0 || d->item[j] >= d->items)
            return petrel_error_set(PETREL_ERR_INVALID,
                                    "%s: %s rating %lld has user %d, item %d: expected ids "
                                    "below the set's %lld users and %lld items",
                                    fn, which, (long long)j, (int)d->user[j], (int)d->item[j],
                                    (long long)d->users, (long long)d->items);
    return PETREL_OK;
}

static petrel_err mf_check(const petrel_ratings *train, const petrel_ratings *test,
                           const petrel_hogwild_config *c, int rank) {
    const char *fn = "petrel_hogwild_train_mf";
    petrel_err err = petreli_hw_check_config(c, PETRELI_HW_CHECK_EPOCHS | PETRELI_HW_CHECK_L2, fn);
    if (err) return err;
    if (rank < 1 || rank > 4096)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: rank %d: expected 1 .. 4096", fn, rank);
    if (!train || train->n < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: expected a training set of ratings", fn);
    if ((err = mf_check_set(train, "training")) != PETREL_OK) return err;
    return test ? mf_check_set(test, "test") : PETREL_OK;
}

petrel_err petrel_hogwild_train_mf(const petrel_ratings *train, const petrel_ratings *test,
                                   petrel_hogwild_config cfg, int rank, petrel_hogwild_result *r) {
    PETREL_ASSERT(r, "pass a result to fill");
    petrel_err err = mf_check(train, test, &cfg, rank);
    if (err) return err;

    const int64_t K = rank;
    int64_t users = train->users, items = train->items;
    if (test && test->users > users) users = test->users;
    if (test && test->items > items) items = test->items;
    const size_t floats = (size_t)(users + items) * (size_t)K;
    petrel_hogwild_result out = {.model = PETREL_HOGWILD_MF,
                                 .epochs = cfg.epochs,
                                 .rows = users + items,
                                 .dim = K,
                                 .users = users,
                                 .items = items};
    mf_model m = {.step = {.ratings = train, .rank = K, .l2 = cfg.l2}, .test = test, .out = &out};
    _Atomic float *w = petrel_malloc(floats * sizeof *w);
    out.epoch = petrel_calloc((size_t)cfg.epochs, sizeof *out.epoch);
    out.weights = petrel_calloc(floats, sizeof *out.weights);
    err = PETREL_ERR_NOMEM;
    if (!w || !out.epoch || !out.weights) goto fail;
    m.step.L = w;
    m.step.R = w + users * K;
    /* Uniform in [-1/sqrt(K), 1/sqrt(K)): first predictions of variance 1/(9K), and
     * rows in all directions. An all-positive start, uniform [0, 1/sqrt(K)), puts
     * every row near the direction (1, .., 1), a saddle that held SGD on zero-mean
     * ratings for tens of epochs in 4 of 480 measured runs, against none of 1040
     * from this start (docs/hogwild.md). */
    petrel_rng rng;
    petrel_rng_seed(&rng, cfg.seed ^ INIT_MIX);
    const float scale = 1.0f / sqrtf((float)K);
    for (size_t k = 0; k < floats; k++)
        atomic_init(&w[k], scale * (2 * petrel_rng_uniform(&rng) - 1));

    petreli_hw_model hm = {
        .ctx = &m, .step = petreli_hw_mf_step, .scratch = 2 * (size_t)K, .evaluate = mf_evaluate};
    if ((err = petreli_hw_run(&hm, train->n, &cfg, out.epoch)) != PETREL_OK) goto fail;
    petrel_free((void *)w);
    *r = out;
    return PETREL_OK;

fail:
    petrel_free(out.weights);
    petrel_free(out.epoch);
    petrel_free((void *)w);
    return err;
}
