/*
 * The single-process training loop: shuffled mini-batches, forward, softmax
 * cross-entropy, backward, optimizer step; evaluation after every epoch; metrics
 * and a checkpoint. All buffers are made before the first step, and the compute
 * arena keeps its memory across steps, so the steady-state step allocates nothing.
 */
#include "train_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void petrel_model_free(petrel_model *m) {
    if (!m) return;
    if (m->fini) m->fini(m);
    petrel_params_free(m->params);
    petrel_free(m);
}

petrel_train_config petrel_train_config_default(void) {
    petrel_train_config c = {
        .epochs = 5,
        .batch = 64,
        .optim = petrel_optim_config_default(PETREL_OPTIM_SGD, 0.1f),
        .seed = 1,
        .shuffle = true,
        .threads = 1,
        .progress = -1,
        .eval_batch = 1000,
    };
    return c;
}

petrel_err petreli_check_fit(const petrel_model *m, const petrel_dataset *d, const char *which) {
    if (d->dim > m->in_dim || (d->x && d->dim != m->in_dim))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s data has %lld features, the model '%s' takes %lld", which,
                                (long long)d->dim, m->name, (long long)m->in_dim);
    if (d->num_classes > m->classes)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s data has %d classes, the model '%s' predicts %lld", which,
                                d->num_classes, m->name, (long long)m->classes);
    return PETREL_OK;
}

/* Row-wise argmax of logits (B, C) compared with labels; returns the hits. */
static int64_t count_correct(const petrel_tensor *logits, const int32_t *y, int64_t B) {
    int64_t C = logits->ne[1], hits = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *z = logits->data + b * C;
        int64_t best = 0;
        for (int64_t c = 1; c < C; c++)
            if (z[c] > z[best]) best = c;
        hits += best == y[b];
    }
    return hits;
}

petrel_err petreli_evaluate_shard(petrel_model *m, const petrel_dataset *d, int64_t batch, int rank,
                                  int size, double *hits, double *loss_sum, double *count) {
    petrel_err err = petreli_check_fit(m, d, "evaluation");
    if (err != PETREL_OK) return err;
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = batch > 0 ? batch : 1000;
    bc.shuffle = false;
    bc.rank = rank;
    bc.size = size;
    petrel_batcher *it = NULL;
    petrel_graph *g = NULL;
    float *x = petrel_malloc((size_t)(bc.batch * m->in_dim) * sizeof(float));
    int32_t *y = petrel_malloc((size_t)bc.batch * sizeof(int32_t));
    if (!x || !y) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if ((err = petrel_batcher_new(&it, d, bc)) != PETREL_OK) goto fail;
    if ((err = petrel_graph_new(&g, 0)) != PETREL_OK) goto fail;
    petrel_batcher_start_epoch(it, 0);
    int64_t n, correct = 0, seen = 0;
    double lsum = 0;
    while ((n = petrel_batcher_next(it, x, y)) > 0) {
        if (d->dim < m->in_dim) /* sparse data narrower than the model: pad with zeros */
            for (int64_t b = n - 1; b >= 0; b--) {
                memmove(x + b * m->in_dim, x + b * d->dim, (size_t)d->dim * sizeof(float));
                memset(x + b * m->in_dim + d->dim, 0, (size_t)(m->in_dim - d->dim) * sizeof(float));
            }
        petrel_graph_reset(g);
        petrel_tensor *xt = petrel_graph_input(g, x, 2, (int64_t[]){n, m->in_dim});
        petrel_tensor *logits = m->forward(m, g, xt, false);
        petrel_tensor *l = petrel_op_softmax_xent(g, logits, y);
        if (!l) {
            err = petrel_graph_error(g);
            goto fail;
        }
        correct += count_correct(logits, y, n);
        lsum += (double)l->data[0] * (double)n;
        seen += n;
    }
    *hits = (double)correct;
    *loss_sum = lsum;
    *count = (double)seen;
fail:
    petrel_graph_free(g);
    petrel_batcher_free(it);
    petrel_free(x);
    petrel_free(y);
    return err;
}

petrel_err petrel_evaluate(petrel_model *m, const petrel_dataset *d, int64_t batch,
                           double *accuracy, double *loss) {
    double hits, loss_sum, count;
    petrel_err err = petreli_evaluate_shard(m, d, batch, 0, 1, &hits, &loss_sum, &count);
    if (err != PETREL_OK) return err;
    *accuracy = count > 0 ? hits / count : 0.0;
    if (loss) *loss = count > 0 ? loss_sum / count : 0.0;
    return PETREL_OK;
}

petrel_err petreli_finish_run(petrel_model *m, const char *out_dir, petrel_metrics *mf, int workers,
                              double t_start, petrel_train_result *r) {
    if (out_dir) {
        char path[4200];
        snprintf(path, sizeof path, "%s/model.ckpt", out_dir);
        petrel_err err = petrel_checkpoint_save(m->params, m->meta, path);
        if (err != PETREL_OK) return err;
    }
    r->wall_s = petrel_now_s() - t_start;
    r->peak_rss_mb = petrel_peak_rss_mb();
    if (!mf) return PETREL_OK;
    petreli_final_event_begin(mf, m->name, r);
    petrel_metrics_int(mf, "workers", workers);
    return petrel_metrics_end(mf);
}

void petreli_final_event_begin(petrel_metrics *mf, const char *model,
                               const petrel_train_result *r) {
    petrel_metrics_begin(mf, "final");
    petrel_metrics_str(mf, "model", model);
    petrel_metrics_int(mf, "epochs", r->epochs);
    petrel_metrics_int(mf, "steps", r->steps);
    petrel_metrics_num(mf, "train_loss", r->train_loss);
    petrel_metrics_num(mf, "test_loss", r->test_loss);
    petrel_metrics_num(mf, "test_accuracy", r->test_accuracy);
    petrel_metrics_num(mf, "samples_per_sec", r->samples_per_sec);
    petrel_metrics_num(mf, "wall_s", r->wall_s);
    petrel_metrics_num(mf, "peak_rss_mb", r->peak_rss_mb);
}

petrel_err petrel_train_step(petrel_model *m, petrel_graph *g, petrel_optim *opt, float *x,
                             const int32_t *y, int64_t n, float *loss) {
    petrel_graph_reset(g);
    petrel_tensor *xt = petrel_graph_input(g, x, 2, (int64_t[]){n, m->in_dim});
    petrel_tensor *l = petrel_op_softmax_xent(g, m->forward(m, g, xt, true), y);
    if (!l)
        return petrel_error_set(petrel_graph_error(g), "forward failed: %s",
                                petrel_strerror(petrel_graph_error(g)));
    petrel_params_zero_grad(m->params);
    petrel_err err = petrel_backward(g, l);
    if (err != PETREL_OK) return err;
    if (opt) petrel_optim_step(opt, petrel_params_data(m->params), petrel_params_grad(m->params));
    *loss = l->data[0];
    return PETREL_OK;
}

/* The terminal progress line, redrawn at most every 0.2 s. */
typedef struct progress {
    bool on;
    double last_draw;
} progress;

static void progress_draw(progress *p, int64_t epoch, int64_t epochs, int64_t step, int64_t steps,
                          double loss, double sps, double eta_s, bool force) {
    if (!p->on) return;
    double now = petrel_now_s();
    if (!force && now - p->last_draw < 0.2) return;
    p->last_draw = now;
    fprintf(stderr, "\r\033[Kepoch %lld/%lld  step %lld/%lld  loss %.4f  %.0f samples/s  ETA %.0fs",
            (long long)epoch, (long long)epochs, (long long)step, (long long)steps, loss, sps,
            eta_s);
    fflush(stderr);
}

static void progress_clear(progress *p) {
    if (p->on) fprintf(stderr, "\r\033[K");
}

static petrel_err write_start(petrel_metrics *mf, const petrel_model *m,
                              const petrel_train_config *cfg, const petrel_dataset *train) {
    petrel_metrics_begin(mf, "start");
    petrel_metrics_str(mf, "model", m->name);
    petrel_metrics_str(mf, "model_meta", m->meta);
    petrel_metrics_str(mf, "optimizer", petrel_optim_name(cfg->optim.kind));
    petrel_metrics_num(mf, "lr", cfg->optim.lr);
    petrel_metrics_int(mf, "batch", cfg->batch);
    petrel_metrics_int(mf, "epochs", cfg->epochs);
    petrel_metrics_int(mf, "seed", (int64_t)cfg->seed);
    petrel_metrics_int(mf, "threads", cfg->threads);
    petrel_metrics_int(mf, "params", (int64_t)petrel_params_numel(m->params));
    petrel_metrics_int(mf, "train_samples", train->n);
    petrel_metrics_str(mf, "kernels", petrel_kernels_current()->name);
    return petrel_metrics_end(mf);
}

petrel_err petrel_train(petrel_model *m, const petrel_dataset *train, const petrel_dataset *test,
                        const petrel_train_config *cfg, petrel_train_result *result) {
    if (cfg->epochs < 0 || cfg->batch <= 0 || cfg->threads <= 0)
        return petrel_error_set(PETREL_ERR_INVALID, "epochs >= 0, batch > 0 and threads > 0");
    petrel_err err = petreli_check_fit(m, train, "training");
    if (err == PETREL_OK && test) err = petreli_check_fit(m, test, "test");
    if (err != PETREL_OK) return err;
    if (train->dim != m->in_dim)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "training data has %lld features, the model takes %lld",
                                (long long)train->dim, (long long)m->in_dim);
    petrel_kernels_set_threads(cfg->threads);

    petrel_metrics *mf = NULL;
    petrel_batcher *it = NULL;
    petrel_graph *g = NULL;
    petrel_optim *opt = NULL;
    const int64_t B = cfg->batch, D = m->in_dim;
    float *x = petrel_malloc((size_t)(B * D) * sizeof(float));
    int32_t *y = petrel_malloc((size_t)B * sizeof(int32_t));
    petrel_rng rng;
    petrel_rng_seed(&rng, cfg->seed ^ 0x6a09e667f3bcc908ull);
    if (!x || !y) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = B;
    bc.seed = cfg->seed;
    bc.shuffle = cfg->shuffle;
    if ((err = petrel_batcher_new(&it, train, bc)) != PETREL_OK) goto fail;
    if ((err = petrel_graph_new(&g, 0)) != PETREL_OK) goto fail;
    if ((err = petrel_optim_new(&opt, cfg->optim, petrel_params_count(m->params))) != PETREL_OK)
        goto fail;
    if (cfg->out_dir) {
        if ((err = petrel_metrics_open(&mf, cfg->out_dir)) != PETREL_OK) goto fail;
        if ((err = write_start(mf, m, cfg, train)) != PETREL_OK) goto fail;
    }

    progress prog = {.on = cfg->progress > 0 || (cfg->progress < 0 && isatty(STDERR_FILENO))};
    petrel_train_result r = {.test_loss = NAN, .test_accuracy = NAN}; /* NAN: not evaluated */
    const double t_start = petrel_now_s();
    double train_s = 0, epoch_loss = 0;
    int64_t samples = 0, steps = 0;
    const int64_t per_epoch = petrel_batcher_batches_per_epoch(it);
    bool stop = false;
    for (int64_t epoch = 1; epoch <= cfg->epochs && !stop; epoch++) {
        petrel_batcher_start_epoch(it, epoch - 1);
        const double t_epoch = petrel_now_s();
        double loss_sum = 0;
        int64_t n, epoch_samples = 0, step = 0;
        while ((n = petrel_batcher_next(it, x, y)) > 0) {
            float loss;
            if ((err = petrel_train_step(m, g, opt, x, y, n, &loss)) != PETREL_OK) goto fail;
            if (!isfinite(loss)) {
                err = petrel_error_set(PETREL_ERR_STATE,
                                       "loss became %f at epoch %lld step %lld (learning rate "
                                       "too high?)",
                                       (double)loss, (long long)epoch, (long long)step);
                goto fail;
            }
            loss_sum += (double)loss * (double)n;
            epoch_samples += n;
            step++;
            steps++;
            if (prog.on) {
                double el = petrel_now_s() - t_epoch;
                double sps = el > 0 ? (double)epoch_samples / el : 0;
                double left = (double)(per_epoch - step + (cfg->epochs - epoch) * per_epoch);
                progress_draw(&prog, epoch, cfg->epochs, step, per_epoch,
                              loss_sum / (double)epoch_samples, sps,
                              sps > 0 ? left * (double)B / sps : 0, false);
            }
            if (cfg->max_steps && steps >= cfg->max_steps) {
                stop = true;
                break;
            }
        }
        double epoch_s = petrel_now_s() - t_epoch;
        train_s += epoch_s;
        samples += epoch_samples;
        epoch_loss = epoch_samples ? loss_sum / (double)epoch_samples : 0;
        progress_clear(&prog);

        double acc = NAN, test_loss = NAN;
        if (test &&
            (err = petrel_evaluate(m, test, cfg->eval_batch, &acc, &test_loss)) != PETREL_OK)
            goto fail;
        double sps = epoch_s > 0 ? (double)epoch_samples / epoch_s : 0;
        if (!cfg->quiet)
            fprintf(stderr,
                    "epoch %lld/%lld  train_loss %.4f  test_loss %.4f  test_accuracy %.4f  "
                    "%.0f samples/s  %.1fs\n",
                    (long long)epoch, (long long)cfg->epochs, epoch_loss, test_loss, acc, sps,
                    epoch_s);
        if (mf) {
            petrel_metrics_begin(mf, "epoch");
            petrel_metrics_int(mf, "epoch", epoch);
            petrel_metrics_int(mf, "step", steps);
            petrel_metrics_num(mf, "train_loss", epoch_loss);
            petrel_metrics_num(mf, "test_loss", test_loss);
            petrel_metrics_num(mf, "test_accuracy", acc);
            petrel_metrics_num(mf, "samples_per_sec", sps);
            petrel_metrics_num(mf, "epoch_s", epoch_s);
            petrel_metrics_num(mf, "wall_s", petrel_now_s() - t_start);
            if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto fail;
        }
        r.epochs = epoch;
        r.test_accuracy = acc;
        r.test_loss = test_loss;
    }
    r.steps = steps;
    r.train_loss = epoch_loss;
    r.samples_per_sec = train_s > 0 ? (double)samples / train_s : 0;
    if ((err = petreli_finish_run(m, cfg->out_dir, mf, 1, t_start, &r)) != PETREL_OK) goto fail;
    if (result) *result = r;
fail:
    petrel_metrics_close(mf);
    petrel_optim_free(opt);
    petrel_graph_free(g);
    petrel_batcher_free(it);
    petrel_free(x);
    petrel_free(y);
    return err;
}
