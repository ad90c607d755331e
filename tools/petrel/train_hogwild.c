/* petrel train's Hogwild! path: lock-free SGD on sparse models (--hogwild, --locked,
 * --round-robin, or the models logreg and svm) and matrix factorization on ratings
 * (--model mf), with the same outputs as the other trainers: per-epoch lines,
 * metrics.jsonl and model.ckpt. */
#include "cli.h"
#include "petrel/hogwild.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bool cli_hogwild_model(const char *name, int *model) {
    static const struct {
        const char *name;
        petrel_hogwild_model model;
    } models[] = {{"logreg", PETREL_HOGWILD_LOGREG},
                  {"svm", PETREL_HOGWILD_SVM},
                  {"softmax", PETREL_HOGWILD_SOFTMAX},
                  {"mf", PETREL_HOGWILD_MF}};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        if (strcmp(name, models[i].name) == 0) {
            *model = (int)models[i].model;
            return true;
        }
    return false;
}

/* The engine needs sparse rows: dense data (IDX) is converted once. */
static petrel_err sparse_of(const petrel_dataset *d, petrel_dataset **owned,
                            const petrel_dataset **out) {
    *owned = NULL;
    if (!d || petrel_dataset_is_sparse(d)) {
        *out = d;
        return PETREL_OK;
    }
    petrel_err err = petrel_dataset_to_sparse(owned, d);
    if (err == PETREL_OK) *out = *owned;
    return err;
}

/* model.ckpt: one tensor "weight" (rows, dim), or for MF "user_factors" (users, R)
 * and "item_factors" (items, R). */
static petrel_err save_weights(const petrel_hogwild_result *r, const petrel_hogwild_config *hc,
                               const char *dir) {
    const bool mf = r->model == PETREL_HOGWILD_MF;
    petrel_params *p = NULL;
    petrel_tensor *w[2] = {NULL, NULL};
    const int64_t rows[2] = {mf ? r->users : r->rows, r->items};
    petrel_err err = petrel_params_new(&p);
    if (err == PETREL_OK)
        err = petrel_params_add(p, mf ? "user_factors" : "weight", 2, (int64_t[]){rows[0], r->dim},
                                &w[0]);
    if (err == PETREL_OK && mf)
        err = petrel_params_add(p, "item_factors", 2, (int64_t[]){rows[1], r->dim}, &w[1]);
    if (err == PETREL_OK) err = petrel_params_finalize(p);
    if (err == PETREL_OK) {
        memcpy(w[0]->data, r->weights, (size_t)(rows[0] * r->dim) * sizeof(float));
        if (mf)
            memcpy(w[1]->data, r->weights + rows[0] * r->dim,
                   (size_t)(rows[1] * r->dim) * sizeof(float));
        char meta[160], path[4200];
        if (mf)
            snprintf(meta, sizeof meta, "model=hogwild-mf mode=%s users=%lld items=%lld rank=%lld",
                     petrel_hogwild_mode_name(hc->mode), (long long)r->users, (long long)r->items,
                     (long long)r->dim);
        else
            snprintf(meta, sizeof meta, "model=hogwild-%s mode=%s rows=%lld dim=%lld",
                     petrel_hogwild_model_name(r->model), petrel_hogwild_mode_name(hc->mode),
                     (long long)r->rows, (long long)r->dim);
        snprintf(path, sizeof path, "%s/model.ckpt", dir);
        err = petrel_checkpoint_save(p, meta, path);
    }
    petrel_params_free(p);
    return err;
}

/* One run: the linear models train on tr/te, MF on rtr/rte with rank. */
typedef struct hw_job {
    petrel_hogwild_config hc;
    const petrel_dataset *tr, *te;
    const petrel_ratings *rtr, *rte;
    int rank;
} hw_job;

petrel_hogwild_config cli_hogwild_config(int model, int mode, const petrel_train_config *cfg,
                                         float lr, float l2, float decay) {
    petrel_hogwild_config hc = petrel_hogwild_config_default();
    hc.model = (petrel_hogwild_model)model;
    hc.mode = (petrel_hogwild_mode)mode;
    hc.threads = cfg->threads;
    hc.epochs = cfg->epochs;
    hc.seed = cfg->seed;
    hc.shuffle = cfg->shuffle;
    if (lr > 0) hc.lr = lr;
    hc.l2 = l2;
    hc.decay = decay;
    return hc;
}

/* Trains j, printing and recording what every model reports. */
static int run_job(const hw_job *j, const petrel_train_config *cfg) {
    const petrel_hogwild_config *hc = &j->hc;
    const bool mf = hc->model == PETREL_HOGWILD_MF;
    const char *name = petrel_hogwild_model_name(hc->model);
    const int64_t n = mf ? j->rtr->n : j->tr->n;
    petrel_metrics *m = NULL;
    petrel_hogwild_result r;
    bool have_result = false;
    int rc = CLI_FAIL;
    petrel_err err;
    if (cfg->out_dir && (err = petrel_metrics_open(&m, cfg->out_dir)) != PETREL_OK)
        return cli_fail(err, "opening metrics", NULL);
    if (m) {
        petrel_metrics_begin(m, "start");
        petrel_metrics_str(m, "model", name);
        petrel_metrics_str(m, "strategy", "hogwild");
        petrel_metrics_str(m, "mode", petrel_hogwild_mode_name(hc->mode));
        petrel_metrics_int(m, "threads", hc->threads);
        petrel_metrics_num(m, "lr", hc->lr);
        petrel_metrics_num(m, "decay", hc->decay);
        petrel_metrics_num(m, "l2", hc->l2);
        petrel_metrics_int(m, "epochs", hc->epochs);
        petrel_metrics_int(m, "seed", (int64_t)hc->seed);
        petrel_metrics_int(m, "train_samples", n);
        if (mf) {
            petrel_metrics_int(m, "rank", j->rank);
            petrel_metrics_int(m, "test_samples", j->rte ? j->rte->n : 0);
        }
        if ((err = petrel_metrics_end(m)) != PETREL_OK) goto metrics_failed;
    }
    if (!cfg->quiet) {
        if (mf)
            fprintf(stderr,
                    "petrel: hogwild mf rank %d (%s, %d threads) on %lld ratings of %lld users "
                    "and %lld items, %lld held out\n",
                    j->rank, petrel_hogwild_mode_name(hc->mode), hc->threads, (long long)n,
                    (long long)j->rtr->users, (long long)j->rtr->items,
                    (long long)(j->rte ? j->rte->n : 0));
        else
            fprintf(stderr,
                    "petrel: hogwild %s (%s, %d threads) on %lld samples of %lld features\n", name,
                    petrel_hogwild_mode_name(hc->mode), hc->threads, (long long)n,
                    (long long)j->tr->dim);
    }
    double t0 = petrel_now_s();
    err = mf ? petrel_hogwild_train_mf(j->rtr, j->rte, *hc, j->rank, &r)
             : petrel_hogwild_train(j->tr, j->te, *hc, &r);
    if (err != PETREL_OK) {
        rc = cli_fail(err, "training", NULL);
        goto done;
    }
    have_result = true;
    double wall = petrel_now_s() - t0, seconds = 0, samples = 0;
    for (int64_t e = 0; e < r.epochs; e++) {
        const petrel_hogwild_epoch *ep = &r.epoch[e];
        seconds += ep->seconds;
        samples += (double)ep->samples;
        if (!cfg->quiet && mf)
            fprintf(stderr, "epoch %lld/%lld  train_rmse %.4f  test_rmse %.4f  %.0f ratings/s\n",
                    (long long)e + 1, (long long)r.epochs, ep->train_rmse, ep->test_rmse,
                    ep->samples_per_sec);
        else if (!cfg->quiet)
            fprintf(stderr,
                    "epoch %lld/%lld  train_loss %.4f  test_accuracy %.4f  %.0f samples/s\n",
                    (long long)e + 1, (long long)r.epochs, ep->train_loss, ep->test_accuracy,
                    ep->samples_per_sec);
        if (m) {
            petrel_metrics_begin(m, "epoch");
            petrel_metrics_int(m, "epoch", e + 1);
            petrel_metrics_num(m, "train_loss", ep->train_loss);
            if (mf) {
                petrel_metrics_num(m, "train_rmse", ep->train_rmse);
                petrel_metrics_num(m, "test_rmse", ep->test_rmse);
            } else {
                petrel_metrics_num(m, "test_accuracy", ep->test_accuracy);
            }
            petrel_metrics_num(m, "samples_per_sec", ep->samples_per_sec);
            petrel_metrics_num(m, "nnz_per_sec", ep->nnz_per_sec);
            petrel_metrics_num(m, "epoch_s", ep->seconds);
            if ((err = petrel_metrics_end(m)) != PETREL_OK) goto metrics_failed;
        }
    }
    const petrel_hogwild_epoch *last = &r.epoch[r.epochs - 1];
    double sps = seconds > 0 ? samples / seconds : 0;
    if (cfg->out_dir && (err = save_weights(&r, hc, cfg->out_dir)) != PETREL_OK) {
        rc = cli_fail(err, "saving the model", NULL);
        goto done;
    }
    if (m) {
        petrel_metrics_begin(m, "final");
        petrel_metrics_str(m, "model", name);
        petrel_metrics_int(m, "threads", hc->threads);
        petrel_metrics_int(m, "epochs", r.epochs);
        petrel_metrics_num(m, "train_loss", last->train_loss);
        if (mf) {
            petrel_metrics_num(m, "train_rmse", last->train_rmse);
            petrel_metrics_num(m, "test_rmse", last->test_rmse);
        } else {
            petrel_metrics_num(m, "test_accuracy", last->test_accuracy);
        }
        petrel_metrics_num(m, "samples_per_sec", sps);
        petrel_metrics_num(m, "wall_s", wall);
        petrel_metrics_num(m, "peak_rss_mb", petrel_peak_rss_mb());
        if ((err = petrel_metrics_end(m)) != PETREL_OK) goto metrics_failed;
    }
    if (mf)
        printf("model mf  hogwild %s  threads %d  rank %d  epochs %lld  train_rmse %.4f  "
               "test_rmse %.4f  ratings/s %.0f  wall %.1fs\n",
               petrel_hogwild_mode_name(hc->mode), hc->threads, j->rank, (long long)r.epochs,
               last->train_rmse, last->test_rmse, sps, wall);
    else
        printf("model %s  hogwild %s  threads %d  epochs %lld  train_loss %.4f  test_accuracy "
               "%.4f  samples/s %.0f  wall %.1fs\n",
               name, petrel_hogwild_mode_name(hc->mode), hc->threads, (long long)r.epochs,
               last->train_loss, last->test_accuracy, sps, wall);
    if (cfg->out_dir)
        printf("wrote %s/metrics.jsonl and %s/model.ckpt\n", cfg->out_dir, cfg->out_dir);
    rc = CLI_OK;
    goto done;
metrics_failed:
    rc = cli_fail(err, "writing metrics.jsonl", NULL);
done:
    if (have_result) petrel_hogwild_result_fini(&r);
    petrel_metrics_close(m);
    return rc;
}

int cli_train_hogwild(int model, int mode, const petrel_dataset *train, const petrel_dataset *test,
                      const petrel_train_config *cfg, float lr, float l2, float decay) {
    hw_job j = {.hc = cli_hogwild_config(model, mode, cfg, lr, l2, decay)};
    petrel_dataset *own_train = NULL, *own_test = NULL;
    petrel_err err = sparse_of(train, &own_train, &j.tr);
    if (err == PETREL_OK) err = sparse_of(test, &own_test, &j.te);
    int rc = err == PETREL_OK ? run_job(&j, cfg)
                              : cli_fail(err, "converting the data to sparse rows", NULL);
    petrel_dataset_free(own_train);
    petrel_dataset_free(own_test);
    return rc;
}

int cli_train_mf(const char *data, const char *test_path, double test_fraction, int rank, int mode,
                 const petrel_train_config *cfg, float lr, float l2, float decay) {
    hw_job j = {.hc = cli_hogwild_config(PETREL_HOGWILD_MF, mode, cfg, lr, l2, decay),
                .rank = rank};
    petrel_ratings train = {0}, test = {0}, all = {0};
    int rc = CLI_FAIL;
    petrel_err err;
    if (test_path) {
        if ((err = petrel_ratings_read(data, &train)) == PETREL_OK)
            err = petrel_ratings_read(test_path, &test);
    } else {
        if ((err = petrel_ratings_read(data, &all)) == PETREL_OK)
            err = petrel_ratings_split(&all, test_fraction, cfg->seed, &train, &test);
    }
    if (err != PETREL_OK) {
        rc = cli_fail(err, "loading ratings", "docs/formats.md describes the ratings format");
        goto done;
    }
    j.rtr = &train;
    j.rte = test.n > 0 ? &test : NULL;
    rc = run_job(&j, cfg);
done:
    petrel_ratings_fini(&all);
    petrel_ratings_fini(&train);
    petrel_ratings_fini(&test);
    return rc;
}
