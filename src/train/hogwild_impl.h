/* Internals shared by the files of Hogwild!: the engine (hogwild.c), its threads and
 * modes and the epochs around them, and the models it trains, each a step function
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
 * epochs[0 .. cfg->epochs-1]. cfg must have passed petreli_hw_check_config with
 * PETRELI_HW_CHECK_EPOCHS.
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
 * its own (Hogwild! threads inside a parameter-server worker: ps_logreg.c, ps_mf.c),
 * and petreli_hw_run's. petreli_hw_engine_new starts cfg->threads - 1 threads, which
 * wait between passes; the caller's thread is thread 0 of every pass.
 * petreli_hw_engine_free ends and joins them. m and cfg are borrowed until the engine
 * is freed; the engine keeps its thread count, so a later change of cfg->threads is
 * not seen; the rest of m, cfg and m->ctx's data may change between passes (a pass
 * hands them to its threads, and the threads' updates back to the caller, under one
 * mutex). Not thread-safe: one thread makes the engine, runs its passes and frees it.
 * Errors: PETREL_ERR_NOMEM (also a thread that could not start). */
typedef struct petreli_hw_engine petreli_hw_engine;
petrel_err petreli_hw_engine_new(petreli_hw_engine **out, const petreli_hw_model *m,
                                 const petrel_hogwild_config *cfg);
/* Ends the threads and frees the engine. Accepts NULL. */
void petreli_hw_engine_free(petreli_hw_engine *e);
/* One pass over samples order[0 .. n-1] (order NULL: the samples 0 .. n-1) with
 * cfg->threads threads, each over its own contiguous part, in cfg->mode, steps of
 * lr; epoch is only passed on to the on_sample callback. Returns when every thread
 * has finished its part, with their updates visible to the caller. */
void petreli_hw_pass(petreli_hw_engine *e, const uint32_t *order, int64_t n, int64_t epoch,
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

/* PETREL_ERR_INVALID, with a message naming fn, when a field of c that the caller
 * reads is out of range (hogwild.h lists the ranges): always threads, lr, decay and
 * the mode, which the engine's passes and petreli_hw_lr read; epochs with
 * PETRELI_HW_CHECK_EPOCHS in `also` (petreli_hw_run reads it), l2 with
 * PETRELI_HW_CHECK_L2 (the models that take it from c). */
enum { PETRELI_HW_CHECK_EPOCHS = 1u, PETRELI_HW_CHECK_L2 = 2u };
petrel_err petreli_hw_check_config(const petrel_hogwild_config *c, unsigned also, const char *fn);

/* The shared weights: relaxed loads and stores (hogwild.c explains why relaxed). */
static inline float petreli_wload(_Atomic float *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void petreli_wstore(_Atomic float *p, float v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

#endif
