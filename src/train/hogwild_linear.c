/*
 * Hogwild!'s sparse linear models: binary logistic regression, linear SVM and
 * softmax regression, as step functions for the engine (hogwild.c). Weights start
 * at zero; L2 is applied lazily, to the coordinates a sample touches.
 *
 * Softmax keeps its weights as (D, C) internally, so that the C weights of one
 * feature share a cache line; the result is transposed to (C, D).
 */
#include "train/hogwild_impl.h"

#include <math.h>

/* The step's context first, so that a lin_model is also a petreli_hw_linear. */
typedef struct lin_model {
    petreli_hw_linear step;
    const petrel_dataset *test;
    petrel_hogwild_result *out; /* weights copied out after each epoch */
} lin_model;

/* log(1 + exp(t)) without overflow. */
static double softplus(double t) {
    return t > 0 ? t + log1p(exp(-t)) : log1p(exp(t));
}

/* One SGD step on row i; returns the row's loss before the step.
 * x (nnz entries of row i), w (D) or (D, C): w_j -= lr (g x_j + l2 w_j) on the
 * touched coordinates j only. z: softmax scratch, C logits. */
double petreli_hw_linear_step(void *ctx, float *z, int64_t i, float lr, int64_t *nnz) {
    const petreli_hw_linear *s = ctx;
    const petrel_csr *X = s->X;
    const int64_t b = X->row_ptr[i], e = X->row_ptr[i + 1];
    const int32_t *col = X->col;
    const float *val = X->val;
    const float l2 = s->l2;
    _Atomic float *w = s->w;
    const int32_t y = s->y[i];
    *nnz += e - b;

    if (s->model == PETREL_HOGWILD_SOFTMAX) {
        const int64_t C = s->classes;
        for (int64_t c = 0; c < C; c++) z[c] = 0;
        for (int64_t k = b; k < e; k++) {
            _Atomic float *wj = w + (int64_t)col[k] * C;
            for (int64_t c = 0; c < C; c++) z[c] += petreli_wload(wj + c) * val[k];
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
                float v = petreli_wload(wj + c);
                petreli_wstore(wj + c, v - lr * (z[c] * val[k] + l2 * v));
            }
        }
        return loss;
    }

    float m = 0;
    for (int64_t k = b; k < e; k++) m += petreli_wload(w + col[k]) * val[k];
    const float sgn = y ? 1.0f : -1.0f;
    double loss;
    float g; /* d loss / d m */
    if (s->model == PETREL_HOGWILD_LOGREG) {
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
        float v = petreli_wload(wj);
        petreli_wstore(wj, v - lr * (g * val[k] + l2 * v));
    }
    return loss;
}

/* w (rows, dim) plain floats; the class of row i of X (columns >= dim ignored). */
static int32_t lin_predict(petrel_hogwild_model model, const float *w, int64_t rows, int64_t dim,
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
    if (!r || !d || d->x || d->n <= 0 || r->model == PETREL_HOGWILD_MF) return NAN;
    int64_t right = 0;
    for (int64_t i = 0; i < d->n; i++)
        right += lin_predict(r->model, r->weights, r->rows, r->dim, &d->sparse, i) == d->y[i];
    return (double)right / (double)d->n;
}

/* After an epoch: the weights copied out as plain floats (rows, dim), then the test
 * accuracy. */
static void lin_evaluate(void *ctx, int64_t e, petrel_hogwild_epoch *ep) {
    (void)e;
    const lin_model *s = ctx;
    const int64_t D = s->step.dim, C = s->step.classes;
    float *out = s->out->weights;
    for (int64_t j = 0; j < D; j++)
        for (int64_t c = 0; c < C; c++) out[c * D + j] = petreli_wload(s->step.w + j * C + c);
    ep->test_accuracy = s->test ? petrel_hogwild_accuracy(s->out, s->test) : NAN;
}

static petrel_err lin_check(const petrel_dataset *train, const petrel_dataset *test,
                            const petrel_hogwild_config *c) {
    const char *fn = "petrel_hogwild_train";
    petrel_err err = petreli_hw_check_config(c, PETRELI_HW_CHECK_EPOCHS | PETRELI_HW_CHECK_L2, fn);
    if (err) return err;
    if (c->model == PETREL_HOGWILD_MF)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: mf trains on ratings: call petrel_hogwild_train_mf", fn);
    if ((unsigned)c->model >= PETREL_HOGWILD_MODEL_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: unknown model %d", fn, (int)c->model);
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
    petrel_err err = lin_check(train, test, &cfg);
    if (err) return err;

    const int64_t D = train->dim;
    const int64_t C = cfg.model == PETREL_HOGWILD_SOFTMAX ? train->num_classes : 1;
    petrel_hogwild_result out = {.model = cfg.model, .epochs = cfg.epochs, .rows = C, .dim = D};
    lin_model s = {.step = {.X = &train->sparse,
                            .y = train->y,
                            .model = cfg.model,
                            .l2 = cfg.l2,
                            .dim = D,
                            .classes = C},
                   .test = test,
                   .out = &out};
    /* All-zero bits are 0.0f: calloc initializes the atomic floats. */
    _Atomic float *w = s.step.w = petrel_calloc((size_t)(D * C), sizeof *w);
    out.epoch = petrel_calloc((size_t)cfg.epochs, sizeof *out.epoch);
    out.weights = petrel_calloc((size_t)(D * C), sizeof *out.weights);
    err = PETREL_ERR_NOMEM;
    if (!w || !out.epoch || !out.weights) goto fail;
    petreli_hw_model m = {
        .ctx = &s, .step = petreli_hw_linear_step, .scratch = (size_t)C, .evaluate = lin_evaluate};
    if ((err = petreli_hw_run(&m, train->n, &cfg, out.epoch)) != PETREL_OK) goto fail;
    petrel_free((void *)w);
    *r = out;
    return PETREL_OK;

fail:
    petrel_free(out.weights);
    petrel_free(out.epoch);
    petrel_free((void *)w);
    return err;
}
