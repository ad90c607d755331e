/* Hogwild! on a synthetic sparse problem with a known separating weight vector:
 * every model learns in every mode, the serial run is deterministic, lock-free
 * threads process each sample exactly once per epoch, bad configs are refused. */
#include "check.h"
#include "petrel/hogwild.h"

#include <stdatomic.h>

#define D   200 /* features */
#define NNZ 10  /* nonzeros per row */

static uint64_t seed;

/* n rows of NNZ distinct random columns with normal values; the label is the
 * class of the largest score under `classes` random weight vectors (classes == 2:
 * one vector, label = score > 0). */
static petrel_dataset *synthetic(int64_t n, int classes, uint64_t data_seed) {
    petrel_rng rng;
    petrel_rng_seed(&rng, seed); /* the same true weights for train and test */
    float wtrue[4][D];
    int rows = classes == 2 ? 1 : classes;
    for (int c = 0; c < rows; c++)
        for (int j = 0; j < D; j++) wtrue[c][j] = petrel_rng_normal(&rng);
    petrel_rng_seed(&rng, seed ^ data_seed);
    petrel_dataset *d = petrel_calloc(1, sizeof *d);
    if (!d) return NULL;
    d->n = n, d->dim = D, d->num_classes = classes;
    d->y = petrel_malloc((size_t)n * sizeof *d->y);
    if (!d->y || petrel_csr_init(&d->sparse, n, D, n * NNZ) != PETREL_OK) {
        petrel_dataset_free(d);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        bool used[D] = {false};
        for (int k = 0; k < NNZ;) {
            int32_t j = (int32_t)petrel_rng_below(&rng, D);
            if (!used[j]) used[j] = true, k++;
        }
        int64_t at = i * NNZ;
        for (int32_t j = 0, k = 0; j < D; j++) /* ascending columns */
            if (used[j]) d->sparse.col[at + k++] = j;
        float score[4] = {0, 0, 0, 0};
        for (int k = 0; k < NNZ; k++) {
            float v = petrel_rng_normal(&rng);
            d->sparse.val[at + k] = v;
            for (int c = 0; c < rows; c++) score[c] += wtrue[c][d->sparse.col[at + k]] * v;
        }
        d->sparse.row_ptr[i + 1] = at + NNZ;
        int32_t y = 0;
        if (classes == 2)
            y = score[0] > 0;
        else
            for (int c = 1; c < classes; c++)
                if (score[c] > score[y]) y = c;
        d->y[i] = y;
    }
    return d;
}

static petrel_dataset *bin_train, *bin_test, *mc_train, *mc_test;

static void learns(petrel_hogwild_model model, petrel_hogwild_mode mode, int threads) {
    petrel_hogwild_config cfg = petrel_hogwild_config_default();
    cfg.model = model, cfg.mode = mode, cfg.threads = threads, cfg.seed = seed;
    cfg.epochs = 8, cfg.lr = model == PETREL_HOGWILD_SVM ? 0.02f : 0.05f, cfg.l2 = 1e-5f;
    bool mc = model == PETREL_HOGWILD_SOFTMAX;
    petrel_hogwild_result r;
    CHECK_OK(petrel_hogwild_train(mc ? mc_train : bin_train, mc ? mc_test : bin_test, cfg, &r));
    if (check_current_failed) return;
    const petrel_hogwild_epoch *first = &r.epoch[0], *last = &r.epoch[r.epochs - 1];
    CHECK(r.rows == (mc ? 3 : 1) && r.dim == D);
    CHECK(last->test_accuracy >= 0.9);
    CHECK(last->train_loss < 0.8 * first->train_loss);
    for (int64_t e = 0; e < r.epochs; e++) CHECK(r.epoch[e].samples == bin_train->n);
    CHECK(last->samples_per_sec > 0 && last->nnz_per_sec > last->samples_per_sec);
    CHECK_NEAR(petrel_hogwild_accuracy(&r, mc ? mc_test : bin_test), last->test_accuracy, 0, 0);
    if (check_current_failed)
        printf("# %s %s T=%d: loss %.4f -> %.4f, test accuracy %.4f\n",
               petrel_hogwild_model_name(model), petrel_hogwild_mode_name(mode), threads,
               first->train_loss, last->train_loss, last->test_accuracy);
    petrel_hogwild_result_fini(&r);
}

static void all_modes(petrel_hogwild_model model) {
    learns(model, PETREL_HOGWILD_LOCKFREE, 1);
    learns(model, PETREL_HOGWILD_LOCKFREE, 2);
    learns(model, PETREL_HOGWILD_LOCKFREE, 4);
    learns(model, PETREL_HOGWILD_LOCKED, 2);
    learns(model, PETREL_HOGWILD_ROUND_ROBIN, 2);
}

static void test_logreg_learns(void) {
    all_modes(PETREL_HOGWILD_LOGREG);
}

static void test_svm_learns(void) {
    all_modes(PETREL_HOGWILD_SVM);
}

static void test_softmax_learns(void) {
    all_modes(PETREL_HOGWILD_SOFTMAX);
}

static void run_once(petrel_hogwild_config cfg, const petrel_dataset *d, petrel_hogwild_result *r) {
    memset(r, 0, sizeof *r);
    CHECK_OK(petrel_hogwild_train(d, NULL, cfg, r));
}

/* The serial run and the round-robin run are functions of the seed alone. */
static void test_deterministic(void) {
    for (int m = 0; m < PETREL_HOGWILD_MODEL_COUNT; m++) {
        petrel_hogwild_config cfg = petrel_hogwild_config_default();
        cfg.model = (petrel_hogwild_model)m, cfg.epochs = 3, cfg.seed = seed, cfg.l2 = 1e-4f;
        const petrel_dataset *d = m == PETREL_HOGWILD_SOFTMAX ? mc_train : bin_train;
        for (int rr = 0; rr < 2; rr++) {
            cfg.threads = rr ? 2 : 1;
            cfg.mode = rr ? PETREL_HOGWILD_ROUND_ROBIN : PETREL_HOGWILD_LOCKFREE;
            petrel_hogwild_result a, b;
            run_once(cfg, d, &a);
            run_once(cfg, d, &b);
            if (a.weights && b.weights) {
                CHECK(memcmp(a.weights, b.weights, (size_t)(a.rows * a.dim) * sizeof(float)) == 0);
                CHECK(a.epoch[2].train_loss == b.epoch[2].train_loss);
                CHECK(isnan(a.epoch[2].test_accuracy));
            }
            petrel_hogwild_result_fini(&a);
            petrel_hogwild_result_fini(&b);
        }
    }
}

typedef struct visits {
    int64_t n, epochs;
    atomic_int *count; /* (epochs, n) */
    atomic_int thread_seen[2];
} visits;

static void count_visit(void *arg, int64_t epoch, int thread, int64_t row) {
    visits *v = arg;
    atomic_fetch_add_explicit(&v->count[epoch * v->n + row], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&v->thread_seen[thread], 1, memory_order_relaxed);
}

static void test_lockfree_each_sample_once(void) {
    visits v = {.n = bin_train->n, .epochs = 3};
    v.count = petrel_calloc((size_t)(v.n * v.epochs), sizeof *v.count);
    CHECK(v.count != NULL);
    if (!v.count) return;
    atomic_init(&v.thread_seen[0], 0);
    atomic_init(&v.thread_seen[1], 0);
    petrel_hogwild_config cfg = petrel_hogwild_config_default();
    cfg.threads = 2, cfg.epochs = v.epochs, cfg.seed = seed;
    cfg.on_sample = count_visit, cfg.on_sample_arg = &v;
    petrel_hogwild_result r;
    run_once(cfg, bin_train, &r);
    for (int64_t k = 0; k < v.n * v.epochs; k++)
        if (atomic_load(&v.count[k]) != 1) {
            CHECK(atomic_load(&v.count[k]) == 1);
            break;
        }
    /* contiguous halves: n/2 each per epoch */
    CHECK(atomic_load(&v.thread_seen[0]) == (int)(v.epochs * (v.n / 2)));
    CHECK(atomic_load(&v.thread_seen[1]) == (int)(v.epochs * (v.n - v.n / 2)));
    petrel_hogwild_result_fini(&r);
    petrel_free(v.count);
}

static void test_bad_config(void) {
    petrel_hogwild_result r = {.epochs = 42};
    petrel_hogwild_config cfg = petrel_hogwild_config_default();
    cfg.threads = 0;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg = petrel_hogwild_config_default();
    cfg.lr = 0;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg.lr = -1;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg = petrel_hogwild_config_default();
    cfg.epochs = 0;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg = petrel_hogwild_config_default();
    cfg.decay = 1.5f;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg = petrel_hogwild_config_default();
    cfg.l2 = -1;
    CHECK_ERR(petrel_hogwild_train(bin_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    cfg = petrel_hogwild_config_default(); /* a binary model on 3 classes */
    CHECK_ERR(petrel_hogwild_train(mc_train, NULL, cfg, &r), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_hogwild_train(NULL, NULL, cfg, &r), PETREL_ERR_INVALID);
    CHECK(r.epochs == 42); /* untouched on failure */
}

int main(void) {
    seed = check_seed(20110614);
    petrel_alloc_stats before = petrel_alloc_get_stats();
    bin_train = synthetic(4000, 2, 1);
    bin_test = synthetic(1000, 2, 2);
    mc_train = synthetic(4000, 3, 3);
    mc_test = synthetic(1000, 3, 4);
    if (!bin_train || !bin_test || !mc_train || !mc_test) {
        printf("FAIL - setup (out of memory)\n");
        return 1;
    }
    RUN_SEEDED(test_logreg_learns, seed);
    RUN_SEEDED(test_svm_learns, seed);
    RUN_SEEDED(test_softmax_learns, seed);
    RUN_SEEDED(test_deterministic, seed);
    RUN_SEEDED(test_lockfree_each_sample_once, seed);
    RUN(test_bad_config);
    petrel_dataset_free(bin_train);
    petrel_dataset_free(bin_test);
    petrel_dataset_free(mc_train);
    petrel_dataset_free(mc_test);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
