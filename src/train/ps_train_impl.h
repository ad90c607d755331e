/* Internals of training through the parameter server: the app interface that the
 * worker loop (ps_train.c) drives, and what the apps share. The apps: the model
 * (ps_train.c), logreg (ps_logreg.c) and mf (ps_mf.c). */
#ifndef PETREL_PS_TRAIN_IMPL_H
#define PETREL_PS_TRAIN_IMPL_H

#include "petrel/ps.h"
#include "petrel/train.h"
#include "train/hogwild_impl.h"
#include "train_impl.h"

/* An app: its tables, its step, its evaluation. */
typedef struct petreli_ps_app petreli_ps_app;
struct petreli_ps_app {
    const char *name;
    petrel_batcher *batcher; /* this worker's shard, for the apps that batch a dataset */
    /* Batches this worker runs in epoch (it starts the epoch's shard). */
    int64_t (*start_epoch)(petreli_ps_app *a, int64_t epoch);
    /* Passes over the next mini-batch (a resumed run skips the clocks it has). */
    void (*skip)(petreli_ps_app *a);
    /* One mini-batch: read, compute, push. *loss is its mean loss, *samples its size. */
    petrel_err (*step)(petreli_ps_app *a, petrel_ps_worker *w, double *loss, int64_t *samples);
    /* Worker 0 after each epoch: test metrics (NAN when there is no test set). */
    petrel_err (*evaluate)(petreli_ps_app *a, petrel_ps_worker *w, double *accuracy, double *loss);
    /* Worker 0 before anyone trains: initial values (may be NULL). */
    petrel_err (*init)(petreli_ps_app *a, petrel_ps_worker *w);
    const char *loss_name;
};

/* Every node, after the app's tables exist: worker 0 sets the initial values while
 * the others wait at a barrier; then servers serve and workers train. */
petrel_err petreli_ps_run(petrel_ps *ps, petreli_ps_app *a, const petrel_train_config *cfg,
                          petrel_ps_train_config pc, petrel_train_result *r);

/* A table whose rule applies cfg->optim to pushed gradients, or SUM when the
 * workers push their Hogwild! replicas' changes. */
petrel_ps_table_spec petreli_ps_spec(petrel_ps_kind kind, int64_t rows, int64_t cols,
                                     const petrel_train_config *cfg, petrel_ps_train_config pc);

/* This worker's shard of d in batches of `batch`, ordered as the single-process
 * trainer orders them; and the app callbacks that walk it. */
petrel_err petreli_ps_batcher(const petrel_ps *ps, const petrel_dataset *d,
                              const petrel_train_config *cfg, int64_t batch, petrel_batcher **out);
int64_t petreli_ps_batcher_start_epoch(petreli_ps_app *a, int64_t epoch);
void petreli_ps_batcher_skip(petreli_ps_app *a);

/* Samples per clock on a worker: cfg->batch, times the Hogwild! threads. */
int64_t petreli_ps_clock_samples(const petrel_train_config *cfg, petrel_ps_train_config pc);

/* ---- Hogwild! inside a worker (Project Adam) ---------------------------------------
 * The replica holds every row of a table (dense ids: key k at k * cols); a clock
 * fetches the rows its samples touch into `base`, copies them into the replica,
 * lets the threads train, and pushes replica - base. */

/* replica rows keys[0..n-1] = base (n x cols). */
void petreli_ps_replica_load(_Atomic float *replica, int64_t cols, const uint64_t *keys, int64_t n,
                             const float *base);
/* delta (n x cols) = replica rows keys[0..n-1] - base. */
void petreli_ps_replica_delta(_Atomic float *replica, int64_t cols, const uint64_t *keys, int64_t n,
                              const float *base, float *delta);

#endif
