/* petrel train's Hogwild! path: lock-free SGD on sparse models (--hogwild, --locked,
 * --round-robin, or the models logreg and svm), with the same outputs as the other
 * trainers: per-epoch lines, metrics.jsonl and model.ckpt. */
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
                  {"softmax", PETREL_HOGWILD_SOFTMAX}};
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

static petrel_err save_weights(const petrel_hogwild_result *r, const char *model_name, int mode,
                               const char *dir) {
    petrel_params *p = NULL;
    petrel_tensor *w;
    petrel_err err = petrel_params_new(&p);
    if (err == PETREL_OK) err = petrel_params_add(p, "weight", 2, (int64_t[]){r->rows, r->dim}, &w);
    if (err == PETREL_OK) err = petrel_params_finalize(p);
    if (err == PETREL_OK) {
        memcpy(w->data, r->weights, (size_t)(r->rows * r->dim) * sizeof(float));
        char meta[128], path[4200];
        snprintf(meta, sizeof meta, "model=hogwild-%s mode=%s rows=%lld dim=%lld", model_name,
                 petrel_hogwild_mode_name((petrel_hogwild_mode)mode), (long long)r->rows,
                 (long long)r->dim);
        snprintf(path, sizeof path, "%s/model.ckpt", dir);
        err = petrel_checkpoint_save(p, meta, path);
    }
    petrel_params_free(p);
    return err;
}

int cli_train_hogwild(const char *model_name, int model, int mode, const petrel_dataset *train,
                      const petrel_dataset *test, const petrel_train_config *cfg, float lr) {
    petrel_hogwild_config hc = petrel_hogwild_config_default();
    hc.model = (petrel_hogwild_model)model;
    hc.mode = (petrel_hogwild_mode)mode;
    hc.threads = cfg->threads;
    hc.epochs = cfg->epochs;
    hc.seed = cfg->seed;
    hc.shuffle = cfg->shuffle;
    if (lr > 0) hc.lr = lr;
    petrel_dataset *own_train = NULL, *own_test = NULL;
    const petrel_dataset *tr = NULL, *te = NULL;
    petrel_metrics *mf = NULL;
    petrel_hogwild_result r;
    bool have_result = false;
    int rc = CLI_FAIL;
    petrel_err err = sparse_of(train, &own_train, &tr);
    if (err == PETREL_OK) err = sparse_of(test, &own_test, &te);
    if (err != PETREL_OK) {
        rc = cli_fail(err, "converting the data to sparse rows", NULL);
        goto done;
    }
    if (cfg->out_dir && (err = petrel_metrics_open(&mf, cfg->out_dir)) != PETREL_OK) {
        rc = cli_fail(err, "opening metrics", NULL);
        goto done;
    }
    if (mf) {
        petrel_metrics_begin(mf, "start");
        petrel_metrics_str(mf, "model", model_name);
        petrel_metrics_str(mf, "strategy", "hogwild");
        petrel_metrics_str(mf, "mode", petrel_hogwild_mode_name(hc.mode));
        petrel_metrics_int(mf, "threads", hc.threads);
        petrel_metrics_num(mf, "lr", hc.lr);
        petrel_metrics_num(mf, "decay", hc.decay);
        petrel_metrics_int(mf, "epochs", hc.epochs);
        petrel_metrics_int(mf, "seed", (int64_t)hc.seed);
        petrel_metrics_int(mf, "train_samples", tr->n);
        if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto metrics_failed;
    }
    if (!cfg->quiet)
        fprintf(stderr, "petrel: hogwild %s (%s, %d threads) on %lld samples of %lld features\n",
                model_name, petrel_hogwild_mode_name(hc.mode), hc.threads, (long long)tr->n,
                (long long)tr->dim);
    double t0 = petrel_now_s();
    if ((err = petrel_hogwild_train(tr, te, hc, &r)) != PETREL_OK) {
        rc = cli_fail(err, "training", NULL);
        goto done;
    }
    have_result = true;
    double wall = petrel_now_s() - t0, seconds = 0, samples = 0;
    for (int64_t e = 0; e < r.epochs; e++) {
        const petrel_hogwild_epoch *ep = &r.epoch[e];
        seconds += ep->seconds;
        samples += (double)ep->samples;
        if (!cfg->quiet)
            fprintf(stderr,
                    "epoch %lld/%lld  train_loss %.4f  test_accuracy %.4f  %.0f samples/s\n",
                    (long long)e + 1, (long long)r.epochs, ep->train_loss, ep->test_accuracy,
                    ep->samples_per_sec);
        if (mf) {
            petrel_metrics_begin(mf, "epoch");
            petrel_metrics_int(mf, "epoch", e + 1);
            petrel_metrics_num(mf, "train_loss", ep->train_loss);
            petrel_metrics_num(mf, "test_accuracy", ep->test_accuracy);
            petrel_metrics_num(mf, "samples_per_sec", ep->samples_per_sec);
            petrel_metrics_num(mf, "nnz_per_sec", ep->nnz_per_sec);
            petrel_metrics_num(mf, "epoch_s", ep->seconds);
            if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto metrics_failed;
        }
    }
    const petrel_hogwild_epoch *last = &r.epoch[r.epochs - 1];
    double sps = seconds > 0 ? samples / seconds : 0;
    if (cfg->out_dir && (err = save_weights(&r, model_name, mode, cfg->out_dir)) != PETREL_OK) {
        rc = cli_fail(err, "saving the model", NULL);
        goto done;
    }
    if (mf) {
        petrel_metrics_begin(mf, "final");
        petrel_metrics_str(mf, "model", model_name);
        petrel_metrics_int(mf, "threads", hc.threads);
        petrel_metrics_int(mf, "epochs", r.epochs);
        petrel_metrics_num(mf, "train_loss", last->train_loss);
        petrel_metrics_num(mf, "test_accuracy", last->test_accuracy);
        petrel_metrics_num(mf, "samples_per_sec", sps);
        petrel_metrics_num(mf, "wall_s", wall);
        petrel_metrics_num(mf, "peak_rss_mb", petrel_peak_rss_mb());
        if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto metrics_failed;
    }
    printf("model %s  hogwild %s  threads %d  epochs %lld  train_loss %.4f  test_accuracy %.4f  "
           "samples/s %.0f  wall %.1fs\n",
           model_name, petrel_hogwild_mode_name(hc.mode), hc.threads, (long long)r.epochs,
           last->train_loss, last->test_accuracy, sps, wall);
    if (cfg->out_dir)
        printf("wrote %s/metrics.jsonl and %s/model.ckpt\n", cfg->out_dir, cfg->out_dir);
    rc = CLI_OK;
    goto done;
metrics_failed:
    rc = cli_fail(err, "writing metrics.jsonl", NULL);
done:
    if (have_result) petrel_hogwild_result_fini(&r);
    petrel_metrics_close(mf);
    petrel_dataset_free(own_train);
    petrel_dataset_free(own_test);
    return rc;
}
