/*
 * Matrix factorization through the parameter server: dense tables of user factors
 * and item factors (rank floats a row). A clock reads the rows of the batch's
 * distinct users and items and pushes either the batch's gradient (the server's
 * rule steps) or, with Hogwild! threads, the change their SGD made to the worker's
 * replica of the factors.
 */
#include "ps_train_impl.h"

#include <math.h>
#include <string.h>

typedef struct mf_app {
    petreli_ps_app base;
    const petrel_ratings *train, *test;
    const petrel_train_config *cfg;
    int64_t rank;
    float l2;
    uint32_t users_t, items_t;
    int64_t lo, hi;  /* this worker's slice of the triplets */
    int64_t batch;   /* triplets per clock */
    uint32_t *order; /* the slice, shuffled per epoch */
    int64_t next;
    int32_t *slot_u, *slot_i; /* users, items: index in the batch's keys, or -1 */
    uint64_t *ukeys, *ikeys;
    float *u, *v, *gu, *gv; /* rows read; the gradient or the change */
    /* Hogwild! threads (pc.hogwild): */
    const petrel_hogwild_config *hw;
    petreli_hw_mf fac; /* the step's context; fac.L and fac.R are the replica */
    petreli_hw_model hm;
    petreli_hw_engine *engine;
    int64_t epoch;
} mf_app;

static int64_t mf_start_epoch(petreli_ps_app *a, int64_t epoch) {
    mf_app *ma = (mf_app *)a;
    int64_t n = ma->hi - ma->lo;
    petrel_epoch_order(ma->order, n, ma->cfg->shuffle, ma->cfg->seed, epoch);
    for (int64_t i = 0; i < n; i++) ma->order[i] += (uint32_t)ma->lo;
    ma->next = 0;
    ma->epoch = epoch;
    return (n + ma->batch - 1) / ma->batch;
}

/* Distinct ids of a batch: their keys and each id's index among them. */
static int64_t distinct(const int32_t *ids, const uint32_t *batch, int64_t n, int32_t *slot,
                        uint64_t *keys) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[batch[i]];
        if (slot[id] < 0) {
            slot[id] = (int32_t)k;
            keys[k++] = (uint64_t)id;
        }
    }
    return k;
}

static void mf_skip(petreli_ps_app *a) {
    mf_app *ma = (mf_app *)a;
    int64_t left = ma->hi - ma->lo - ma->next;
    ma->next += left < ma->batch ? left : ma->batch;
}

/* The batch's gradient, for the server's rule to step with. */
static void mf_grad(mf_app *ma, const uint32_t *batch, int64_t n, int64_t nu, int64_t ni,
                    double *se) {
    const petrel_ratings *d = ma->train;
    int64_t R = ma->rank;
    memset(ma->gu, 0, (size_t)(nu * R) * sizeof(float));
    memset(ma->gv, 0, (size_t)(ni * R) * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        uint32_t t = batch[i];
        const float *u = ma->u + ma->slot_u[d->user[t]] * R,
                    *v = ma->v + ma->slot_i[d->item[t]] * R;
        float *gu = ma->gu + ma->slot_u[d->user[t]] * R, *gv = ma->gv + ma->slot_i[d->item[t]] * R;
        float e = d->rating[t];
        for (int64_t k = 0; k < R; k++) e -= u[k] * v[k];
        *se += (double)e * e;
        for (int64_t k = 0; k < R; k++) { /* d/du of (r - u.v)^2 / 2 + l2/2 (|u|^2 + |v|^2) */
            gu[k] += -e * v[k] + ma->l2 * u[k];
            gv[k] += -e * u[k] + ma->l2 * v[k];
        }
    }
}

/* Hogwild! threads over the batch on the replica; gu and gv get the change. */
static void mf_hogwild(mf_app *ma, const uint32_t *batch, int64_t n, int64_t nu, int64_t ni,
                       double *se) {
    int64_t R = ma->rank;
    petreli_ps_replica_load(ma->fac.L, R, ma->ukeys, nu, ma->u);
    petreli_ps_replica_load(ma->fac.R, R, ma->ikeys, ni, ma->v);
    petreli_hw_tally t;
    petreli_hw_pass(ma->engine, batch, n, ma->epoch, petreli_hw_lr(ma->hw, ma->epoch), &t);
    *se = t.loss;
    petreli_ps_replica_delta(ma->fac.L, R, ma->ukeys, nu, ma->u, ma->gu);
    petreli_ps_replica_delta(ma->fac.R, R, ma->ikeys, ni, ma->v, ma->gv);
}

static petrel_err mf_step(petreli_ps_app *a, petrel_ps_worker *w, double *loss, int64_t *samples) {
    mf_app *ma = (mf_app *)a;
    const petrel_ratings *d = ma->train;
    int64_t left = ma->hi - ma->lo - ma->next;
    int64_t n = left < ma->batch ? left : ma->batch;
    const uint32_t *batch = ma->order + ma->next;
    ma->next += n;
    *samples = n;
    *loss = 0;
    if (n <= 0) return PETREL_OK;
    int64_t nu = distinct(d->user, batch, n, ma->slot_u, ma->ukeys);
    int64_t ni = distinct(d->item, batch, n, ma->slot_i, ma->ikeys);
    petrel_err err = petrel_ps_get_rows(w, ma->users_t, ma->ukeys, nu, ma->u);
    if (err == PETREL_OK) err = petrel_ps_get_rows(w, ma->items_t, ma->ikeys, ni, ma->v);
    double se = 0;
    if (err == PETREL_OK) {
        if (ma->hw)
            mf_hogwild(ma, batch, n, nu, ni, &se);
        else
            mf_grad(ma, batch, n, nu, ni, &se);
    }
    for (int64_t i = 0; i < nu; i++) ma->slot_u[ma->ukeys[i]] = -1;
    for (int64_t i = 0; i < ni; i++) ma->slot_i[ma->ikeys[i]] = -1;
    *loss = se / (double)n;
    if (err == PETREL_OK) err = petrel_ps_inc_rows(w, ma->users_t, ma->ukeys, nu, ma->gu);
    if (err == PETREL_OK) err = petrel_ps_inc_rows(w, ma->items_t, ma->ikeys, ni, ma->gv);
    return err;
}

/* Test RMSE (in *loss; there is no accuracy), reading the rows the test set needs. */
static petrel_err mf_evaluate(petreli_ps_app *a, petrel_ps_worker *w, double *accuracy,
                              double *loss) {
    mf_app *ma = (mf_app *)a;
    const petrel_ratings *d = ma->test;
    *accuracy = NAN;
    if (!d || d->n == 0) return PETREL_OK;
    int64_t R = ma->rank;
    petrel_err err = PETREL_OK;
    double se = 0;
    enum { CHUNK = 4096 }; /* the step's buffers hold this many triplets' rows */
    uint32_t idx[CHUNK];
    for (int64_t lo = 0; lo < d->n && err == PETREL_OK; lo += CHUNK) {
        int64_t n = d->n - lo < CHUNK ? d->n - lo : CHUNK;
        for (int64_t i = 0; i < n; i++) idx[i] = (uint32_t)(lo + i);
        int64_t nu = distinct(d->user, idx, n, ma->slot_u, ma->ukeys);
        int64_t ni = distinct(d->item, idx, n, ma->slot_i, ma->ikeys);
        err = petrel_ps_get_rows(w, ma->users_t, ma->ukeys, nu, ma->u);
        if (err == PETREL_OK) err = petrel_ps_get_rows(w, ma->items_t, ma->ikeys, ni, ma->v);
        for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
            const float *u = ma->u + ma->slot_u[d->user[idx[i]]] * R;
            const float *v = ma->v + ma->slot_i[d->item[idx[i]]] * R;
            float e = d->rating[idx[i]];
            for (int64_t k = 0; k < R; k++) e -= u[k] * v[k];
            se += (double)e * e;
        }
        for (int64_t i = 0; i < nu; i++) ma->slot_u[ma->ukeys[i]] = -1;
        for (int64_t i = 0; i < ni; i++) ma->slot_i[ma->ikeys[i]] = -1;
    }
    if (err == PETREL_OK) *loss = sqrt(se / (double)d->n);
    return err;
}

petrel_err petrel_train_ps_mf(petrel_ps *ps, const petrel_ratings *train,
                              const petrel_ratings *test, const petrel_train_config *cfg,
                              petrel_ps_train_config pc, petrel_train_result *r) {
    if (pc.mf_rank < 1 || pc.mf_rank > 4096)
        return petrel_error_set(PETREL_ERR_INVALID, "ps mf: rank %d outside 1..4096", pc.mf_rank);
    if (test && (test->users > train->users || test->items > train->items))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps mf: the test set has users or items the training set lacks");
    if (!(pc.mf_l2 >= 0) || !isfinite(pc.mf_l2))
        return petrel_error_set(PETREL_ERR_INVALID, "ps mf: l2 %g: expected >= 0",
                                (double)pc.mf_l2);
    /* hw's epochs, seed and shuffle are not read (cfg's are), nor its l2 (mf_l2 is) */
    const petrel_hogwild_config *hw = pc.hogwild;
    petrel_err err = hw ? petreli_hw_check_config(hw, 0, "ps mf") : PETREL_OK;
    if (err != PETREL_OK) return err;
    mf_app ma = {.base = {.name = "mf",
                          .start_epoch = mf_start_epoch,
                          .skip = mf_skip,
                          .step = mf_step,
                          .evaluate = mf_evaluate,
                          .loss_name = "mse"},
                 .train = train,
                 .test = test,
                 .cfg = cfg,
                 .batch = petreli_ps_clock_samples(cfg, pc),
                 .rank = pc.mf_rank,
                 .l2 = pc.mf_l2,
                 .hw = hw};
    petrel_ps_table_spec su = petreli_ps_spec(PETREL_PS_DENSE, train->users, pc.mf_rank, cfg, pc);
    su.init = PETREL_PS_INIT_UNIFORM;
    su.init_a = 0;
    su.init_b = 1.0f / sqrtf((float)pc.mf_rank);
    su.init_seed = cfg->seed;
    petrel_ps_table_spec si = su;
    si.rows = train->items;
    si.init_seed = cfg->seed + 1;
    err = petrel_ps_table_create(ps, &su, &ma.users_t);
    if (err == PETREL_OK) err = petrel_ps_table_create(ps, &si, &ma.items_t);
    int worker = petrel_ps_worker_index(ps);
    if (err == PETREL_OK && worker >= 0) {
        int workers = petrel_ps_workers(ps);
        ma.lo = train->n * worker / workers;
        ma.hi = train->n * (worker + 1) / workers;
        int64_t most = ma.batch > 4096 ? ma.batch : 4096;
        ma.order = petrel_malloc((size_t)(ma.hi - ma.lo + 1) * sizeof *ma.order);
        ma.slot_u = petrel_malloc((size_t)train->users * sizeof *ma.slot_u);
        ma.slot_i = petrel_malloc((size_t)train->items * sizeof *ma.slot_i);
        ma.ukeys = petrel_malloc((size_t)most * sizeof *ma.ukeys);
        ma.ikeys = petrel_malloc((size_t)most * sizeof *ma.ikeys);
        ma.u = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.v = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.gu = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.gv = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        if (!ma.order || !ma.slot_u || !ma.slot_i || !ma.ukeys || !ma.ikeys || !ma.u || !ma.v ||
            !ma.gu || !ma.gv)
            err = PETREL_ERR_NOMEM;
        for (int64_t i = 0; err == PETREL_OK && i < train->users; i++) ma.slot_u[i] = -1;
        for (int64_t i = 0; err == PETREL_OK && i < train->items; i++) ma.slot_i[i] = -1;
    }
    if (err == PETREL_OK && worker >= 0 && hw) {
        int64_t R = pc.mf_rank;
        ma.fac = (petreli_hw_mf){.ratings = train, .rank = R, .l2 = pc.mf_l2};
        ma.hm = (petreli_hw_model){
            .ctx = &ma.fac, .step = petreli_hw_mf_step, .scratch = 2 * (size_t)R};
        _Atomic float *replica =
            petrel_calloc((size_t)((train->users + train->items) * R), sizeof *replica);
        ma.fac.L = replica;
        ma.fac.R = replica ? replica + train->users * R : NULL;
        err = replica ? petreli_hw_engine_new(&ma.engine, &ma.hm, hw) : PETREL_ERR_NOMEM;
    }
    if (err == PETREL_OK) err = petreli_ps_run(ps, &ma.base, cfg, pc, r);
    petreli_hw_engine_free(ma.engine);
    petrel_free((void *)ma.fac.L);
    petrel_free(ma.order);
    petrel_free(ma.slot_u);
    petrel_free(ma.slot_i);
    petrel_free(ma.ukeys);
    petrel_free(ma.ikeys);
    petrel_free(ma.u);
    petrel_free(ma.v);
    petrel_free(ma.gu);
    petrel_free(ma.gv);
    return err;
}
