/*
 * petrel train: the model interface, the single-process training loop, evaluation
 * and run metrics (metrics.jsonl).
 *
 * A model is a registry of parameters plus a forward function from a batch of
 * features to logits; the built-in ones live in apps/. petrel_train runs epochs of
 * shuffled mini-batches (forward, softmax cross-entropy, backward, optimizer step),
 * evaluates on the test set after each epoch, writes one JSON object per event to
 * <out_dir>/metrics.jsonl and saves <out_dir>/model.ckpt at the end.
 *
 * The training step allocates nothing once the first step has sized the compute
 * arena (tests hold it to that with the allocation counter).
 *
 * Threading: a trainer runs on the calling thread; kernels may use `threads`
 * threads inside. Models are not shared between concurrent trainers.
 */
#ifndef PETREL_TRAIN_H
#define PETREL_TRAIN_H

#include "petrel/coll.h"
#include "petrel/data.h"
#include "petrel/hogwild.h"
#include "petrel/nn.h"
#include "petrel/ps.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct petrel_model petrel_model;

struct petrel_model {
    const char *name;      /* "mlp" */
    char meta[256];        /* checkpoint metadata that rebuilds it: "model=mlp hidden=256 ..." */
    petrel_params *params; /* owned */
    int64_t in_dim, classes;
    /* x (B, in_dim) -> logits (B, classes). */
    petrel_tensor *(*forward)(petrel_model *m, petrel_graph *g, petrel_tensor *x, bool training);
    /* Frees the model-specific part; petrel_model_free frees params and m itself. */
    void (*fini)(petrel_model *m);
};

/* Frees a model made by an app constructor. Accepts NULL. */
void petrel_model_free(petrel_model *m);

typedef struct petrel_train_config {
    int64_t epochs;
    int64_t batch;
    petrel_optim_config optim;
    uint64_t seed;       /* data order and dropout; the model was seeded by its constructor */
    bool shuffle;        /* a new sample order every epoch (else file order) */
    int threads;         /* math-library threads */
    const char *out_dir; /* metrics.jsonl and model.ckpt go here; NULL: nowhere */
    int progress;        /* 1 on, 0 off, -1 when stderr is a terminal */
    int64_t max_steps;   /* stop after this many steps in total (0: no limit) */
    int64_t eval_batch;  /* batch size for evaluation */
    bool quiet;          /* no end-of-epoch summary lines on stderr */
} petrel_train_config;

/* 5 epochs of batch 64, shuffled, SGD lr 0.1, seed 1, one thread, progress when on a
 * terminal. */
petrel_train_config petrel_train_config_default(void);

typedef struct petrel_train_result {
    int64_t epochs, steps;
    double train_loss;               /* mean over the last epoch */
    double test_loss, test_accuracy; /* NAN when there was no test set or no epoch */
    double samples_per_sec;          /* training steps only; evaluation excluded */
    double wall_s;
    double peak_rss_mb;
} petrel_train_result;

/* Trains m on train and evaluates on test (may be NULL). Errors: invalid config,
 * a dataset that does not fit the model (feature count, classes), I/O on out_dir. */
PETREL_NODISCARD petrel_err petrel_train(petrel_model *m, const petrel_dataset *train,
                                         const petrel_dataset *test, const petrel_train_config *cfg,
                                         petrel_train_result *result);

/* One training step on a batch x (n, in_dim), y (n): resets g, runs the forward
 * and the mean softmax cross-entropy, zeroes the gradients, runs the backward and
 * applies opt to the model's flat buffers (opt NULL: leaves the gradients there). *loss receives
 * the batch's mean loss. After the first steps have sized g's arena it allocates nothing. */
PETREL_NODISCARD petrel_err petrel_train_step(petrel_model *m, petrel_graph *g, petrel_optim *opt,
                                              float *x, const int32_t *y, int64_t n, float *loss);

/* Accuracy and mean loss of m on d, in batches of `batch`. */
PETREL_NODISCARD petrel_err petrel_evaluate(petrel_model *m, const petrel_dataset *d, int64_t batch,
                                            double *accuracy, double *loss);

/* ---- data-parallel training ------------------------------------------------------ */

/* How the workers of a data-parallel job combine their gradients. */
typedef enum petrel_comm_mode {
    PETREL_COMM_ALLREDUCE = 0, /* average every gradient by allreduce (Horovod, DDP) */
    PETREL_COMM_SFB,           /* fully connected weights by sufficient factor broadcasting,
                                  the rest by allreduce (Poseidon) */
    PETREL_COMM_HYBRID,        /* per fully connected layer, whichever the cost formula favours */
    PETREL_COMM_COUNT
} petrel_comm_mode;

/* "allreduce" | "sfb" | "hybrid". */
PETREL_NODISCARD petrel_err petrel_comm_mode_parse(const char *name, petrel_comm_mode *out);
const char *petrel_comm_mode_name(petrel_comm_mode mode);

typedef struct petrel_dp_config {
    petrel_comm_mode mode;
    size_t bucket_bytes; /* gradients are reduced in buckets of about this size (fusion) */
    bool overlap;        /* start a bucket's reduction as soon as backward has produced it */
} petrel_dp_config;

/* allreduce, buckets of 1 MiB, overlap on. */
petrel_dp_config petrel_dp_config_default(void);

/* Floats one worker sends per step for a fully connected layer of OUT x IN with a
 * per-worker batch of K among P workers: by SFB, an allgather of the factors,
 * K (P - 1) (OUT + IN); by ring allreduce, 2 (P - 1) / P OUT IN. Hybrid picks SFB
 * when it is the smaller. */
double petrel_sfb_floats(int64_t out, int64_t in, int64_t k, int p);
double petrel_allreduce_floats(int64_t out, int64_t in, int p);

/* Trains m data-parallel over the members of comm: every member holds the whole
 * model (rank 0's initial parameters are broadcast), trains on its shard of train
 * (cfg->batch samples per member and step), and the gradients are averaged before
 * each member's identical optimizer step. Every member runs the same number of
 * steps per epoch (the smallest shard's), so unequal shards cannot hang it.
 * Evaluation is sharded too. Member 0 writes metrics and the checkpoint. */
PETREL_NODISCARD petrel_err petrel_train_dp(petrel_model *m, const petrel_dataset *train,
                                            const petrel_dataset *test,
                                            const petrel_train_config *cfg, petrel_comm *comm,
                                            petrel_dp_config dp, petrel_train_result *result);

/* ---- training through the parameter server (ps.h) ---------------------------------- */

typedef struct petrel_ps_train_config {
    petrel_ps_sync sync;     /* of every table */
    int straggler;           /* the worker index to slow down, -1: none */
    double straggler_factor; /* its clocks take this many times their compute time (>= 1) */
    int mf_rank;             /* matrix factorization: factor width */
    float mf_l2;             /* matrix factorization: L2 (>= 0) on the user and item rows
                                a rating touches, in the mini-batch gradient and in
                                Hogwild! threads' steps alike (0.02 by default;
                                petrel train's --l2 when given) */
    /* logreg and mf: NULL, or Hogwild! threads inside every worker (Project Adam):
     * a clock is then cfg->batch samples per thread. The worker reads the rows they
     * touch (through its process cache, within the staleness bound) into a local
     * replica; hogwild->threads threads run SGD on it, one sample at a time, in
     * hogwild->mode, steps of hogwild->lr * decay^epoch with hogwild->l2 (mf: mf_l2);
     * then the replica's change is added to the operation log, one delta per row.
     * The tables' rule is then SUM (cfg->optim is not used). hogwild->model picks
     * logreg or svm on two classes; more classes train softmax. Its epochs, seed and
     * shuffle are not read (cfg's are), nor for mf its l2, and only the fields read
     * are checked (PETREL_ERR_INVALID: threads < 1, lr <= 0 or not finite, decay
     * outside (0, 1], an unknown mode, l2 < 0 but for mf). Borrowed for the call. */
    const petrel_hogwild_config *hogwild;
} petrel_ps_train_config;

/* BSP, no straggler, mf_rank 16, mf_l2 0.02, no Hogwild! threads. */
petrel_ps_train_config petrel_ps_train_config_default(void);

/* Every node of a PS job calls one of these after petrel_ps_start, with the same
 * arguments: they make the app's tables; servers and rank 0 then serve, and each
 * worker trains on its shard, one clock per mini-batch of cfg->batch, the servers
 * applying cfg->optim (as the table's update rule) to the gradients the workers
 * push. Worker 0 evaluates after every epoch and writes out_dir/metrics.jsonl;
 * worker k writes out_dir/worker-k/metrics.jsonl. Events: "start", "clock" (loss,
 * time, wait, bytes, stale reads), "epoch", "final" (totals and the staleness
 * histogram). The caller ends with petrel_ps_stop. */

/* A petrel_model (the MLP) with its flat parameters in one dense table. */
PETREL_NODISCARD petrel_err petrel_train_ps(petrel_ps *ps, petrel_model *m,
                                            const petrel_dataset *train, const petrel_dataset *test,
                                            const petrel_train_config *cfg,
                                            petrel_ps_train_config pc, petrel_train_result *r);
/* Sparse logistic (two classes) or softmax regression on libsvm data: a sparse
 * table keyed by feature. */
PETREL_NODISCARD petrel_err petrel_train_ps_logreg(petrel_ps *ps, const petrel_dataset *train,
                                                   const petrel_dataset *test,
                                                   const petrel_train_config *cfg,
                                                   petrel_ps_train_config pc,
                                                   petrel_train_result *r);
/* Matrix factorization by SGD on ratings: user and item factor tables; the train
 * loss is the mean squared error, test_loss the test RMSE (accuracy is NAN). */
PETREL_NODISCARD petrel_err petrel_train_ps_mf(petrel_ps *ps, const petrel_ratings *train,
                                               const petrel_ratings *test,
                                               const petrel_train_config *cfg,
                                               petrel_ps_train_config pc, petrel_train_result *r);

/* ---- metrics.jsonl -------------------------------------------------------------- */

/* One JSON object per line. A line is built with begin, fields, end:
 *     petrel_metrics_begin(mf, "epoch");
 *     petrel_metrics_int(mf, "epoch", 3);
 *     petrel_metrics_num(mf, "train_loss", 0.41);
 *     petrel_metrics_end(mf);            // writes {"event":"epoch","epoch":3,...}\n
 */
typedef struct petrel_metrics petrel_metrics;

/* Creates dir if needed and opens dir/metrics.jsonl for writing (truncating). */
PETREL_NODISCARD petrel_err petrel_metrics_open(petrel_metrics **out, const char *dir);
void petrel_metrics_close(petrel_metrics *m);
void petrel_metrics_begin(petrel_metrics *m, const char *event);
void petrel_metrics_int(petrel_metrics *m, const char *key, int64_t v);
void petrel_metrics_num(petrel_metrics *m, const char *key, double v);
void petrel_metrics_str(petrel_metrics *m, const char *key, const char *v);
/* Ends the line and flushes it, so a crashed run keeps every finished event. */
PETREL_NODISCARD petrel_err petrel_metrics_end(petrel_metrics *m);

/* Makes a directory and its parents (mkdir -p). */
PETREL_NODISCARD petrel_err petrel_mkdirs(const char *path);

#ifdef __cplusplus
}
#endif
#endif
