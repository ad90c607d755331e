/* Internals shared by the files of Hogwild!: the engine (hogwild.c) that runs the
 * epochs, the threads and the modes, and the models it trains, each a step function
 * over shared relaxed-atomic weights (hogwild_linear.c: logreg, svm, softmax;
 * hogwild_mf.c: matrix factorization). */
#ifndef PETREL_HOGWILD_IMPL_H
#define PETREL_HOGWILD_IMPL_H

#include "petrel/hogwild.h"

#include <stdatomic.h>

/* A model as the engine sees it. Plain data; ctx is the model's own state (its
 * shared _Atomic float weights among it). */
typedef struct petreli_hw_model {
    void *ctx;
    /* One SGD step on sample i with step size lr: reads and writes the shared weights
     * with petreli_wload / petreli_wstore only (any thread may run it concurrently
     * with any other sample's step). Returns the sample's loss just before its update
     * and adds the nonzeros it processed to *nnz. scratch: this thread's `scratch`
     * floats. */
    double (*step)(void *ctx, float *scratch, int64_t i, float lr, int64_t *nnz);
    size_t scratch;
    /* Called on the calling thread after epoch e's SGD pass, no step running: fills
     * the evaluation fields of ep (test accuracy, RMSE); the engine has filled the
     * others. */
    void (*evaluate)(void *ctx, int64_t e, petrel_hogwild_epoch *ep);
} petreli_hw_model;

/* Trains m over n samples (1 .. 2^32-1) for cfg->epochs epochs with cfg's engine
 * (the permutation, partitions, modes and step decay of hogwild.h), filling
 * epochs[0 .. cfg->epochs-1]. cfg must have passed petreli_hw_check_config.
 * Errors: PETREL_ERR_NOMEM (also a thread that could not start); the weights are
 * then part-trained. */
petrel_err petreli_hw_run(const petreli_hw_model *m, int64_t n, const petrel_hogwild_config *cfg,
                          petrel_hogwild_epoch *epochs);

/* What a pass did: the sum of the samples' progressive losses, the nonzeros
 * processed, the samples. */
typedef struct petreli_hw_tally {
    double loss;
    int64_t nnz, samples;
} petreli_hw_tally;

/* The engine without the epochs, for a caller that feeds it samples in passes of
 * its own (Hogwild! threads inside a parameter-server worker, ps_train.c): the
 * threads' scratch, made once. m and cfg are borrowed until the engine is freed;
 * m->ctx may change between passes. */
typedef struct petreli_hw_engine petreli_hw_engine;
petrel_err petreli_hw_engine_new(petreli_hw_engine **out, const petreli_hw_model *m,
                                 const petrel_hogwild_config *cfg);
void petreli_hw_engine_free(petreli_hw_engine *e);
/* One pass over samples order[0 .. n-1] with cfg->threads threads, each over its own
 * contiguous part, in cfg->mode, steps of lr; epoch is only passed on to the
 * on_sample callback. Errors: PETREL_ERR_NOMEM (a thread that could not start). */
petrel_err petreli_hw_pass(petreli_hw_engine *e, const uint32_t *order, int64_t n, int64_t epoch,
                           float lr, petreli_hw_tally *out);
/* The engine's step size in epoch: lr * decay^epoch. */
float petreli_hw_lr(const petrel_hogwild_config *cfg, int64_t epoch);

/* The models' step functions and their contexts, for callers that keep the weights
 * themselves. Linear (logreg, svm, softmax): sample i is row i of X with label
 * y[i]; w is (dim) or, for softmax, (dim, classes), so that a feature's weights
 * are one row. Scratch: classes floats. */
typedef struct petreli_hw_linear {
    const petrel_csr *X;
    const int32_t *y;
    petrel_hogwild_model model;
    float l2;
    int64_t dim, classes; /* D; C for softmax, else 1 */
    _Atomic float *w;
} petreli_hw_linear;
double petreli_hw_linear_step(void *ctx, float *scratch, int64_t i, float lr, int64_t *nnz);

/* Matrix factorization: sample i is rating i of ratings; L (users, rank),
 * R (items, rank). Scratch: 2 rank floats. */
typedef struct petreli_hw_mf {
    const petrel_ratings *ratings;
    int64_t rank;
    float l2;
    _Atomic float *L, *R;
} petreli_hw_mf;
double petreli_hw_mf_step(void *ctx, float *scratch, int64_t i, float lr, int64_t *nnz);

/* PETREL_ERR_INVALID, with a message naming fn, when threads, epochs, lr, decay, l2
 * or the mode are out of range (hogwild.h lists the ranges). */
petrel_err petreli_hw_check_config(const petrel_hogwild_config *c, const char *fn);

/* The shared weights: relaxed loads and stores (hogwild.c explains why relaxed). */
static inline float petreli_wload(_Atomic float *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void petreli_wstore(_Atomic float *p, float v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

#endif
