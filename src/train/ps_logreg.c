/*
 * Sparse logistic (two classes, one column) or softmax (C columns) regression
 * through the parameter server: a sparse table keyed by feature index, its row
 * the feature's weights. A clock reads the rows of the batch's distinct features
 * and pushes either the batch's mean gradient (the server's rule steps) or, with
 * Hogwild! threads, the change their SGD made to the worker's replica.
 */
#include "ps_train_impl.h"

#include <math.h>
#include <string.h>

typedef struct logreg_app {
    petreli_ps_app base;
    const petrel_dataset *train, *test;
    int64_t cols;     /* 1 for two classes (logistic, svm), else the classes */
    bool svm;         /* hinge loss (Hogwild! only) */
    int32_t *slot_of; /* dim: a feature's index in keys, or -1 */
    uint64_t *keys;   /* the batch's distinct features */
    float *w, *grad;  /* keys x cols: the rows read; the gradient or the change */
    float *z;         /* classes */
    int32_t *y;
    uint32_t table;
    /* Hogwild! threads (pc.hogwild): */
    const petrel_hogwild_config *hw;
    petreli_hw_linear lin; /* the step's context; lin.w is the replica (dim x cols) */
    petreli_hw_model hm;
    petreli_hw_engine *engine;
    int64_t epoch;
} logreg_app;

/* The class scores of sample i of x into z (cols); index maps a feature to its row
 * of w (NULL: the feature is the row). */
static void logreg_scores(const logreg_app *la, const petrel_csr *x, int64_t i, const float *w,
                          const int32_t *index, float *z) {
    int64_t cols = la->cols;
    for (int64_t c = 0; c < cols; c++) z[c] = 0;
    for (int64_t k = x->row_ptr[i]; k < x->row_ptr[i + 1]; k++) {
        const float *row = w + (int64_t)(index ? index[x->col[k]] : x->col[k]) * cols;
        for (int64_t c = 0; c < cols; c++) z[c] += x->val[k] * row[c];
    }
}

/* The loss of scores z for label; z becomes its gradient dloss/dz. One column is
 * logistic regression (p = sigmoid(z)), more are softmax. */
static double logreg_loss(int64_t cols, float *z, int32_t label) {
    if (cols == 1) {
        double p = 1.0 / (1.0 + exp(-(double)z[0]));
        double loss = label ? log1p(exp(-(double)z[0])) : log1p(exp((double)z[0]));
        z[0] = (float)(p - label);
        return loss;
    }
    float top = z[0];
    for (int64_t c = 1; c < cols; c++) top = fmaxf(top, z[c]);
    double sum = 0;
    for (int64_t c = 0; c < cols; c++) sum += exp((double)(z[c] - top));
    double loss = log(sum) - (double)(z[label] - top);
    for (int64_t c = 0; c < cols; c++)
        z[c] = (float)(exp((double)(z[c] - top)) / sum) - (c == label);
    return loss;
}

/* The batch's distinct features into la->keys (their count), each one's index among
 * them in la->slot_of (reset by logreg_release). */
static int64_t logreg_gather(logreg_app *la, const petrel_csr *x, int64_t n) {
    int64_t k = 0;
    for (int64_t e = 0; e < x->row_ptr[n]; e++) {
        int32_t f = x->col[e];
        if (la->slot_of[f] < 0) {
            la->slot_of[f] = (int32_t)k;
            la->keys[k++] = (uint64_t)f;
        }
    }
    return k;
}

static void logreg_release(logreg_app *la, int64_t k) {
    for (int64_t i = 0; i < k; i++) la->slot_of[la->keys[i]] = -1;
}

/* The batch's mean gradient, for the server's rule to step with. */
static petrel_err logreg_grad_step(logreg_app *la, petrel_ps_worker *w, const petrel_csr *x,
                                   int64_t n, int64_t k, double *loss) {
    petrel_err err = petrel_ps_get_rows(w, la->table, la->keys, k, la->w);
    memset(la->grad, 0, (size_t)(k * la->cols) * sizeof(float));
    double total = 0;
    for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
        logreg_scores(la, x, i, la->w, la->slot_of, la->z);
        total += logreg_loss(la->cols, la->z, la->y[i]);
        for (int64_t e = x->row_ptr[i]; e < x->row_ptr[i + 1]; e++) {
            float *g = la->grad + (int64_t)la->slot_of[x->col[e]] * la->cols;
            for (int64_t c = 0; c < la->cols; c++) g[c] += x->val[e] * la->z[c] / (float)n;
        }
    }
    *loss = total / (double)n;
    return err == PETREL_OK ? petrel_ps_inc_rows(w, la->table, la->keys, k, la->grad) : err;
}

/* Hogwild! threads over the batch on the replica; the change goes to the log. */
static petrel_err logreg_hogwild_step(logreg_app *la, petrel_ps_worker *w, const petrel_csr *x,
                                      int64_t n, int64_t k, double *loss) {
    petrel_err err = petrel_ps_get_rows(w, la->table, la->keys, k, la->w);
    if (err != PETREL_OK) return err;
    petreli_ps_replica_load(la->lin.w, la->cols, la->keys, k, la->w);
    la->lin.X = x;
    petreli_hw_tally t; /* the batch in the batcher's order */
    petreli_hw_pass(la->engine, NULL, n, la->epoch, petreli_hw_lr(la->hw, la->epoch), &t);
    *loss = t.loss / (double)n;
    petreli_ps_replica_delta(la->lin.w, la->cols, la->keys, k, la->w, la->grad);
    return petrel_ps_inc_rows(w, la->table, la->keys, k, la->grad);
}

static petrel_err logreg_step(petreli_ps_app *a, petrel_ps_worker *w, double *loss,
                              int64_t *samples) {
    logreg_app *la = (logreg_app *)a;
    const petrel_csr *x;
    int64_t n = petrel_batcher_next_sparse(la->base.batcher, &x, la->y);
    *samples = n;
    *loss = 0;
    if (n <= 0) return PETREL_OK;
    int64_t k = logreg_gather(la, x, n);
    petrel_err err =
        la->hw ? logreg_hogwild_step(la, w, x, n, k, loss) : logreg_grad_step(la, w, x, n, k, loss);
    logreg_release(la, k);
    return err;
}

static int64_t logreg_start_epoch(petreli_ps_app *a, int64_t epoch) {
    ((logreg_app *)a)->epoch = epoch;
    return petreli_ps_batcher_start_epoch(a, epoch);
}

static petrel_err logreg_evaluate(petreli_ps_app *a, petrel_ps_worker *w, double *accuracy,
                                  double *loss) {
    logreg_app *la = (logreg_app *)a;
    if (!la->test) return PETREL_OK;
    int64_t dim = la->train->dim;
    uint64_t *keys = petrel_malloc((size_t)dim * sizeof *keys);
    float *weights = petrel_malloc((size_t)(dim * la->cols) * sizeof *weights);
    petrel_err err = keys && weights ? PETREL_OK : PETREL_ERR_NOMEM;
    for (int64_t f = 0; f < dim && err == PETREL_OK; f++) keys[f] = (uint64_t)f;
    if (err == PETREL_OK) err = petrel_ps_get_rows(w, la->table, keys, dim, weights);
    const petrel_csr *x = &la->test->sparse;
    double hits = 0, total = 0;
    for (int64_t i = 0; i < la->test->n && err == PETREL_OK; i++) {
        int32_t label = la->test->y[i];
        logreg_scores(la, x, i, weights, NULL, la->z);
        int64_t best = la->cols == 1 ? la->z[0] > 0 : 0;
        for (int64_t c = 1; c < la->cols; c++)
            if (la->z[c] > la->z[best]) best = c;
        hits += best == label;
        if (la->svm) /* hinge: max(0, 1 - s z), s = 2 label - 1 */
            total += fmax(0.0, 1.0 - (label ? 1.0 : -1.0) * (double)la->z[0]);
        else
            total += logreg_loss(la->cols, la->z, label);
    }
    if (err == PETREL_OK) {
        *accuracy = hits / (double)la->test->n;
        *loss = total / (double)la->test->n;
    }
    petrel_free(keys);
    petrel_free(weights);
    return err;
}

petrel_err petrel_train_ps_logreg(petrel_ps *ps, const petrel_dataset *train,
                                  const petrel_dataset *test, const petrel_train_config *cfg,
                                  petrel_ps_train_config pc, petrel_train_result *r) {
    if (!petrel_dataset_is_sparse(train) || (test && !petrel_dataset_is_sparse(test)))
        return petrel_error_set(PETREL_ERR_INVALID, "ps logreg: wants sparse (libsvm) data");
    int64_t classes = train->num_classes;
    if (test && test->num_classes > classes) classes = test->num_classes;
    if (classes < 2 || classes > 1024)
        return petrel_error_set(PETREL_ERR_INVALID, "ps logreg: %lld classes (2..1024 supported)",
                                (long long)classes);
    if (test && test->dim > train->dim)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps logreg: the test set has %lld features, the training set %lld",
                                (long long)test->dim, (long long)train->dim);
    const petrel_hogwild_config *hw = pc.hogwild;
    petrel_hogwild_model model = classes == 2 ? PETREL_HOGWILD_LOGREG : PETREL_HOGWILD_SOFTMAX;
    if (hw) {
        /* hw's epochs, seed and shuffle are not read (cfg's are) */
        petrel_err err = petreli_hw_check_config(hw, PETRELI_HW_CHECK_L2, "ps logreg");
        if (err != PETREL_OK) return err;
        if (hw->model == PETREL_HOGWILD_MF || (hw->model == PETREL_HOGWILD_SVM && classes != 2))
            return petrel_error_set(PETREL_ERR_INVALID,
                                    "ps logreg: Hogwild! %s on %lld classes: expected logreg or "
                                    "softmax, or svm on 2 classes",
                                    petrel_hogwild_model_name(hw->model), (long long)classes);
        if (hw->model != PETREL_HOGWILD_LOGREG) model = hw->model;
    }
    int64_t cols = model == PETREL_HOGWILD_SOFTMAX ? classes : 1;
    logreg_app la = {.base = {.name = petrel_hogwild_model_name(model),
                              .start_epoch = logreg_start_epoch,
                              .skip = petreli_ps_batcher_skip,
                              .step = logreg_step,
                              .evaluate = logreg_evaluate,
                              .loss_name = "loss"},
                     .train = train,
                     .test = test,
                     .cols = cols,
                     .svm = model == PETREL_HOGWILD_SVM,
                     .hw = hw};
    petrel_ps_table_spec spec = petreli_ps_spec(PETREL_PS_SPARSE, 0, cols, cfg, pc);
    spec.push = false; /* each batch touches other features */
    petrel_err err = petrel_ps_table_create(ps, &spec, &la.table);
    int worker = petrel_ps_worker_index(ps);
    int64_t batch = petreli_ps_clock_samples(cfg, pc);
    if (err == PETREL_OK && worker >= 0) {
        err = petreli_ps_batcher(ps, train, cfg, batch, &la.base.batcher);
        int64_t most = train->dim; /* distinct features in a batch */
        la.slot_of = petrel_malloc((size_t)train->dim * sizeof *la.slot_of);
        la.keys = petrel_malloc((size_t)most * sizeof *la.keys);
        la.w = petrel_malloc((size_t)(most * cols) * sizeof(float));
        la.grad = petrel_malloc((size_t)(most * cols) * sizeof(float));
        la.z = petrel_malloc((size_t)cols * sizeof(float));
        la.y = petrel_malloc((size_t)batch * sizeof(int32_t));
        if (err == PETREL_OK && (!la.slot_of || !la.keys || !la.w || !la.grad || !la.z || !la.y))
            err = PETREL_ERR_NOMEM;
        for (int64_t f = 0; err == PETREL_OK && f < train->dim; f++) la.slot_of[f] = -1;
    }
    if (err == PETREL_OK && worker >= 0 && hw) {
        la.lin = (petreli_hw_linear){
            .y = la.y, .model = model, .l2 = hw->l2, .dim = train->dim, .classes = cols};
        la.hm = (petreli_hw_model){
            .ctx = &la.lin, .step = petreli_hw_linear_step, .scratch = (size_t)cols};
        /* All-zero bits are 0.0f: calloc initializes the atomic floats. */
        la.lin.w = petrel_calloc((size_t)(train->dim * cols), sizeof *la.lin.w);
        err = la.lin.w ? petreli_hw_engine_new(&la.engine, &la.hm, hw) : PETREL_ERR_NOMEM;
    }
    if (err == PETREL_OK) err = petreli_ps_run(ps, &la.base, cfg, pc, r);
    petreli_hw_engine_free(la.engine);
    petrel_free((void *)la.lin.w);
    petrel_batcher_free(la.base.batcher);
    petrel_free(la.slot_of);
    petrel_free(la.keys);
    petrel_free(la.w);
    petrel_free(la.grad);
    petrel_free(la.z);
    petrel_free(la.y);
    return err;
}
