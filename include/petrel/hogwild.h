/*
 * petrel hogwild: lock-free parallel SGD over sparse features (Hogwild!, Recht,
 * Re, Wright and Niu, NIPS 2011), with the paper's baselines.
 *
 * Models: binary logistic regression (log loss), linear SVM (hinge loss) and
 * softmax regression over C classes on sparse features (petrel_hogwild_train),
 * each with an optional L2 term applied lazily to the coordinates a sample touches
 * (docs/hogwild.md), weights starting at zero; and matrix factorization on ratings
 * (petrel_hogwild_train_mf): user factors L (users, R) and item factors R (items, R)
 * fitted to "user item rating" triplets by SGD on the squared error, with L2 on the
 * two rows a rating touches.
 *
 * Engine: every epoch a seeded permutation of the samples (the batcher's rule in
 * data.h: petrel_rng seeded with seed ^ 0x9e3779b97f4a7c15 * (epoch + 1)) is split
 * into `threads` contiguous partitions [t*n/T, (t+1)*n/T); thread t runs plain SGD,
 * one sample (a row, or a rating) at a time, over its own partition with step
 * lr * decay^epoch. The weights are shared by all threads and accessed only through
 * relaxed C11 atomics (load, compute, store): updates may be lost, as Hogwild
 * allows, but there is no data race in the C memory model, so ThreadSanitizer stays
 * clean. The modes:
 *   LOCKFREE     the above;
 *   LOCKED       one global mutex held around each sample's read-compute-write;
 *   ROUND_ROBIN  threads take turns in the fixed order 0, 1, .., T-1, one sample
 *                each, through a ticket counter (the result is deterministic);
 * and threads = 1 is the serial baseline (run on the calling thread).
 *
 * Ownership: the datasets are borrowed for the call; the result owns its arrays
 * (petrel_hogwild_result_fini frees them). Allocation through petrel_malloc.
 *
 * Threading: petrel_hogwild_train and petrel_hogwild_train_mf start their own
 * threads once per call, threads - 1 of them (the calling thread is thread 0), which
 * wait between epochs and are joined before the call returns; concurrent calls on
 * different results are independent. A result is plain data.
 *
 *     petrel_hogwild_config cfg = petrel_hogwild_config_default();
 *     cfg.model = PETREL_HOGWILD_LOGREG, cfg.threads = 4, cfg.epochs = 10;
 *     petrel_hogwild_result r;
 *     if (petrel_hogwild_train(train, test, cfg, &r) != PETREL_OK)
 *         fprintf(stderr, "%s\n", petrel_errmsg());
 *     printf("acc %.3f\n", r.epoch[r.epochs - 1].test_accuracy);
 *     petrel_hogwild_result_fini(&r);
 *
 *     // matrix factorization of rank 8 on ratings (data.h: petrel_ratings_read)
 *     if (petrel_hogwild_train_mf(&ratings_train, &ratings_test, cfg, 8, &r) == PETREL_OK)
 *         printf("test RMSE %.3f\n", r.epoch[r.epochs - 1].test_rmse);
 */
#ifndef PETREL_HOGWILD_H
#define PETREL_HOGWILD_H

#include "petrel/core.h"
#include "petrel/data.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum petrel_hogwild_model {
    PETREL_HOGWILD_LOGREG = 0, /* labels 0/1; log loss log(1 + exp(-s w.x)), s = 2y - 1 */
    PETREL_HOGWILD_SVM,        /* labels 0/1; hinge loss max(0, 1 - s w.x), s = 2y - 1 */
    PETREL_HOGWILD_SOFTMAX,    /* labels 0..C-1; cross-entropy of softmax(W x), W (C, D) */
    PETREL_HOGWILD_MF,         /* ratings; squared error (r - L_u . R_i)^2, L (users, R),
                                  R (items, R): petrel_hogwild_train_mf only */
    PETREL_HOGWILD_MODEL_COUNT
} petrel_hogwild_model;

typedef enum petrel_hogwild_mode {
    PETREL_HOGWILD_LOCKFREE = 0, /* relaxed atomic reads and writes, no lock */
    PETREL_HOGWILD_LOCKED,       /* a global mutex around each sample's update */
    PETREL_HOGWILD_ROUND_ROBIN,  /* threads take turns, one sample each, fixed order */
    PETREL_HOGWILD_MODE_COUNT
} petrel_hogwild_mode;

/* "logreg" | "svm" | "softmax" | "mf"; "lockfree" | "locked" | "round-robin". */
const char *petrel_hogwild_model_name(petrel_hogwild_model model);
const char *petrel_hogwild_mode_name(petrel_hogwild_mode mode);

/* Called after each sample's update on the thread that made it: epoch, thread
 * index (0..threads-1) and dataset row (MF: the rating's index). For tests and
 * instrumentation; it must be thread-safe. */
typedef void (*petrel_hogwild_sample_fn)(void *arg, int64_t epoch, int thread, int64_t row);

/* Plain data, passed by value. */
typedef struct petrel_hogwild_config {
    petrel_hogwild_model model; /* not read by petrel_hogwild_train_mf */
    petrel_hogwild_mode mode;
    int threads;                        /* >= 1; 1 is the serial baseline whatever the mode */
    int64_t epochs;                     /* >= 1 */
    float lr;                           /* > 0: step size of epoch 0 */
    float decay;                        /* in (0, 1]: epoch e steps with lr * decay^e */
    float l2;                           /* >= 0: lazy L2 on touched coordinates (MF: on
                                           the touched rows of L and R), 0 = none */
    uint64_t seed;                      /* permutation seed */
    bool shuffle;                       /* a new permutation every epoch, else the file order */
    petrel_hogwild_sample_fn on_sample; /* NULL: none */
    void *on_sample_arg;
} petrel_hogwild_config;

/* logreg, lock-free, 1 thread, 10 epochs, lr 0.1, decay 0.9 (the paper's), l2 0,
 * seed 1, shuffle on, no callback. */
petrel_hogwild_config petrel_hogwild_config_default(void);

/* What one epoch did. */
typedef struct petrel_hogwild_epoch {
    double train_loss;      /* mean data loss of each sample just before its own update
                               (progressive loss), without the L2 term; MF: the mean
                               squared error (r - L_u . R_i)^2 */
    double test_accuracy;   /* after the epoch; NAN without a test set, and for MF */
    double seconds;         /* wall time of the SGD pass (evaluation excluded) */
    double samples_per_sec; /* samples (rows, or ratings) / seconds */
    double nnz_per_sec;     /* nonzero features processed / seconds; MF: 2 per rating,
                               its user and its item */
    int64_t samples;        /* samples processed (n, when nothing went wrong) */
    double train_rmse;      /* MF: root mean squared error over the whole training set
                               after the epoch; NAN for the other models */
    double test_rmse;       /* MF: the same over the test set; NAN without one, and for
                               the other models */
} petrel_hogwild_epoch;

typedef struct petrel_hogwild_result {
    petrel_hogwild_model model;
    int64_t epochs;
    petrel_hogwild_epoch *epoch; /* epochs entries, owned */
    int64_t rows, dim;           /* weights shape: rows 1 (logreg, svm), C (softmax), or
                                    users + items (MF, dim = the rank R) */
    float *weights;              /* (rows, dim) row-major, owned; MF: rows [0, users) are
                                    the user factors L, rows [users, rows) the item
                                    factors R */
    int64_t users, items;        /* MF: the factor rows; 0 for the other models */
} petrel_hogwild_result;

/* Trains cfg.model on train (sparse, borrowed) with cfg's engine, evaluating on
 * test (sparse, may be NULL; columns past train->dim are ignored) after each
 * epoch. On success *r holds new arrays the caller frees with
 * petrel_hogwild_result_fini; on failure *r is untouched.
 * Errors: PETREL_ERR_INVALID (threads < 1, epochs < 1, lr <= 0 or not finite,
 * decay outside (0, 1], l2 < 0, an unknown model or mode, a dense or empty
 * dataset, a binary model on a dataset whose classes are not exactly 2, softmax
 * on fewer than 2 classes, more than 2^32-1 samples, a test set with more
 * classes than train, the model PETREL_HOGWILD_MF, which petrel_hogwild_train_mf
 * trains), PETREL_ERR_NOMEM (also a thread that could not start). */
PETREL_NODISCARD petrel_err petrel_hogwild_train(const petrel_dataset *train,
                                                 const petrel_dataset *test,
                                                 petrel_hogwild_config cfg,
                                                 petrel_hogwild_result *r);

/* Fraction of d's samples (sparse) that r's weights classify correctly; NAN when
 * d is empty or dense, or r is MF. Columns past r->dim are ignored. */
double petrel_hogwild_accuracy(const petrel_hogwild_result *r, const petrel_dataset *d);

/* Matrix factorization on ratings: fits L (users, rank) and R (items, rank) so that
 * L_u . R_i approximates each rating r of train (borrowed), with cfg's engine,
 * evaluating the RMSE on train and on test (may be NULL) after each epoch.
 * users = max(train->users, test->users), items likewise, so that every id of both
 * sets has factors. Factors start independent, (2 u - 1) / sqrt(rank) with u from
 * petrel_rng_uniform seeded with cfg.seed ^ 0x6d66, in the order L then R, row by
 * row (uniform in [-1/sqrt(rank), 1/sqrt(rank)); the same seed, the same start). One
 * step on rating (u, i, r), e = L_u . R_i - r, with the rows read before either is
 * written:
 *     L_u -= lr_e (e R_i + l2 L_u),   R_i -= lr_e (e L_u + l2 R_i)
 * the gradient of e^2/2 + l2/2 (|L_u|^2 + |R_i|^2). cfg.model is not read; the
 * result's model is PETREL_HOGWILD_MF, its weights [L; R] (users + items, rank).
 * Errors: PETREL_ERR_INVALID (cfg as for petrel_hogwild_train, rank outside
 * 1 .. 4096, an empty train set, more than 2^32-1 ratings, an id outside
 * 0 .. users-1 or 0 .. items-1 of its set), PETREL_ERR_NOMEM (also a thread that
 * could not start); on failure *r is untouched. */
PETREL_NODISCARD petrel_err petrel_hogwild_train_mf(const petrel_ratings *train,
                                                    const petrel_ratings *test,
                                                    petrel_hogwild_config cfg, int rank,
                                                    petrel_hogwild_result *r);

/* Root mean squared error of r's factors (an MF result) on d: sqrt(mean (L_u . R_i
 * - r)^2), an id beyond r's users or items predicting 0. NAN when r is not MF or d
 * is empty. */
double petrel_hogwild_rmse(const petrel_hogwild_result *r, const petrel_ratings *d);

/* Frees what r owns and zeroes it. Accepts NULL. */
void petrel_hogwild_result_fini(petrel_hogwild_result *r);

#ifdef __cplusplus
}
#endif
#endif
