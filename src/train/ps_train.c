/*
 * Training through the parameter server: one worker loop (a clock per mini-batch,
 * a straggler knob, per-clock metrics, evaluation by worker 0 after each epoch)
 * around three apps that differ only in their tables and their step:
 *   model   any petrel_model (the MLP): its flat parameter buffer cut into dense
 *           rows of ROW_FLOATS; the server applies the optimizer to gradients;
 *   logreg  sparse logistic (2 classes, 1 column) or softmax (C columns) regression
 *           over libsvm features: a sparse table keyed by feature index;
 *   mf      matrix factorization: dense tables of user and item factors.
 * Every node calls the same entry point; servers and rank 0 serve until the
 * workers are done.
 */
#include "petrel/ps.h"
#include "petrel/train.h"
#include "train_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROW_FLOATS                                                                                 \
    1024 /* dense model rows: large enough to amortize keys, small enough to spread */

petrel_ps_train_config petrel_ps_train_config_default(void) {
    return (petrel_ps_train_config){.sync = {.async = false, .staleness = 0},
                                    .straggler = -1,
                                    .straggler_factor = 1.0,
                                    .mf_rank = 16,
                                    .mf_l2 = 0.02f};
}

/* ---- the app interface ------------------------------------------------------------- */

typedef struct app app;
struct app {
    const char *name;
    petrel_batcher *batcher; /* this worker's shard, for the apps that batch a dataset */
    /* Batches this worker runs in epoch (it starts the epoch's shard). */
    int64_t (*start_epoch)(app *a, int64_t epoch);
    /* Passes over the next mini-batch (a resumed run skips the clocks it has). */
    void (*skip)(app *a);
    /* One mini-batch: read, compute, push. *loss is its mean loss, *samples its size. */
    petrel_err (*step)(app *a, petrel_ps_worker *w, double *loss, int64_t *samples);
    /* Worker 0 after each epoch: test metrics (NAN when there is no test set). */
    petrel_err (*evaluate)(app *a, petrel_ps_worker *w, double *accuracy, double *loss);
    /* Worker 0 before anyone trains: initial values (may be NULL). */
    petrel_err (*init)(app *a, petrel_ps_worker *w);
    const char *loss_name;
};

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* The worker loop shared by every app. */
static petrel_err work(petrel_ps *ps, petrel_ps_worker *w, app *a, const petrel_train_config *cfg,
                       petrel_ps_train_config pc, int worker, petrel_train_result *r) {
    petrel_metrics *mf = NULL;
    petrel_err err = PETREL_OK;
    if (cfg->out_dir) {
        char name[64];
        /* Worker 0 writes metrics.jsonl; the others beside it, one file each. */
        if (worker == 0)
            err = petrel_metrics_open(&mf, cfg->out_dir);
        else {
            snprintf(name, sizeof name, "worker-%d", worker);
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/%s", cfg->out_dir, name);
            err = petrel_metrics_open(&mf, dir);
        }
        if (err != PETREL_OK) return err;
    }
    char sync[32];
    petrel_ps_sync_format(pc.sync, sync, sizeof sync);
    if (mf) {
        petrel_metrics_begin(mf, "start");
        petrel_metrics_str(mf, "model", a->name);
        petrel_metrics_str(mf, "strategy", "ps");
        petrel_metrics_str(mf, "sync", sync);
        petrel_metrics_int(mf, "worker", worker);
        petrel_metrics_int(mf, "straggler", pc.straggler);
        petrel_metrics_num(mf, "straggler_factor", pc.straggler_factor);
        petrel_metrics_int(mf, "batch", cfg->batch);
        petrel_metrics_num(mf, "lr", cfg->optim.lr);
        err = petrel_metrics_end(mf);
    }
    double t_start = petrel_now_s(), busy = 0;
    int64_t samples_total = 0, steps = 0, epoch_samples = 0;
    int64_t skip = petrel_ps_worker_clock(w); /* resumed at this clock: its batches are done */
    *r = (petrel_train_result){.test_loss = NAN, .test_accuracy = NAN};
    for (int64_t epoch = 0; epoch < cfg->epochs && err == PETREL_OK; epoch++) {
        int64_t batches = a->start_epoch(a, epoch);
        double epoch_loss = 0;
        epoch_samples = 0;
        for (int64_t b = 0; b < batches && err == PETREL_OK; b++) {
            if (cfg->max_steps && steps >= cfg->max_steps) break;
            if (skip > 0) {
                a->skip(a);
                skip--;
                continue;
            }
            petrel_ps_stats before = petrel_ps_get_stats(ps);
            double t0 = petrel_now_s(), loss = 0;
            int64_t n = 0;
            err = a->step(a, w, &loss, &n);
            if (err != PETREL_OK) break;
            double compute = petrel_now_s() - t0;
            if (worker == pc.straggler) sleep_s(compute * (pc.straggler_factor - 1));
            err = petrel_ps_clock(w);
            busy += petrel_now_s() - t0;
            petrel_ps_stats after = petrel_ps_get_stats(ps);
            epoch_loss += loss * (double)n;
            epoch_samples += n;
            samples_total += n;
            steps++;
            if (mf) {
                uint64_t stale_reads = 0;
                for (int i = 1; i < PETREL_PS_STALENESS_BINS; i++)
                    stale_reads += after.staleness[i] - before.staleness[i];
                petrel_metrics_begin(mf, "clock");
                petrel_metrics_int(mf, "clock", petrel_ps_worker_clock(w));
                petrel_metrics_int(mf, "epoch", epoch);
                petrel_metrics_num(mf, a->loss_name, loss);
                petrel_metrics_num(mf, "time_s", petrel_now_s() - t_start);
                petrel_metrics_num(mf, "wait_s",
                                   after.wait_get_s + after.wait_clock_s - before.wait_get_s -
                                       before.wait_clock_s);
                petrel_metrics_int(mf, "bytes_sent",
                                   (int64_t)(after.bytes_sent - before.bytes_sent));
                petrel_metrics_int(mf, "bytes_received",
                                   (int64_t)(after.bytes_received - before.bytes_received));
                petrel_metrics_int(mf, "stale_reads", (int64_t)stale_reads);
                petrel_metrics_int(mf, "max_staleness", after.max_staleness);
                err = petrel_metrics_end(mf);
            }
        }
        r->epochs = epoch + 1;
        r->train_loss = epoch_samples ? epoch_loss / (double)epoch_samples : NAN;
        if (err == PETREL_OK && worker == 0 && a->evaluate)
            err = a->evaluate(a, w, &r->test_accuracy, &r->test_loss);
        if (err == PETREL_OK && mf) {
            petrel_metrics_begin(mf, "epoch");
            petrel_metrics_int(mf, "epoch", epoch);
            petrel_metrics_num(mf, "train_loss", r->train_loss);
            if (worker == 0) {
                petrel_metrics_num(mf, "test_loss", r->test_loss);
                petrel_metrics_num(mf, "test_accuracy", r->test_accuracy);
            }
            petrel_metrics_num(mf, "time_s", petrel_now_s() - t_start);
            err = petrel_metrics_end(mf);
        }
        if (err == PETREL_OK && worker == 0 && !cfg->quiet)
            fprintf(stderr,
                    "epoch %lld  train %s %.4f  test_accuracy %.4f  test_loss %.4f  %.1fs\n",
                    (long long)epoch + 1, a->loss_name, r->train_loss, r->test_accuracy,
                    r->test_loss, petrel_now_s() - t_start);
    }
    r->steps = steps;
    r->wall_s = petrel_now_s() - t_start;
    r->samples_per_sec = busy > 0 ? (double)samples_total / busy : 0;
    if (mf && err == PETREL_OK) {
        petrel_ps_stats st = petrel_ps_get_stats(ps);
        petrel_metrics_begin(mf, "final");
        petrel_metrics_str(mf, "model", a->name);
        petrel_metrics_str(mf, "sync", sync);
        petrel_metrics_int(mf, "epochs", r->epochs);
        petrel_metrics_int(mf, "steps", steps);
        petrel_metrics_num(mf, "train_loss", r->train_loss);
        petrel_metrics_num(mf, "test_loss", r->test_loss);
        petrel_metrics_num(mf, "test_accuracy", r->test_accuracy);
        petrel_metrics_num(mf, "samples_per_sec", r->samples_per_sec);
        petrel_metrics_num(mf, "wall_s", r->wall_s);
        petrel_metrics_num(mf, "wait_get_s", st.wait_get_s);
        petrel_metrics_num(mf, "wait_clock_s", st.wait_clock_s);
        petrel_metrics_int(mf, "bytes_sent", (int64_t)st.bytes_sent);
        petrel_metrics_int(mf, "bytes_received", (int64_t)st.bytes_received);
        petrel_metrics_int(mf, "reads", (int64_t)st.reads);
        petrel_metrics_int(mf, "cache_hits", (int64_t)st.cache_hits);
        petrel_metrics_int(mf, "max_staleness", st.max_staleness);
        for (int i = 0; i < PETREL_PS_STALENESS_BINS; i++) {
            char key[32];
            snprintf(key, sizeof key, "staleness_%d%s", i,
                     i == PETREL_PS_STALENESS_BINS - 1 ? "_or_more" : "");
            petrel_metrics_int(mf, key, (int64_t)st.staleness[i]);
        }
        err = petrel_metrics_end(mf);
    }
    petrel_metrics_close(mf);
    return err;
}

/* Every node, after the app's tables exist: worker 0 sets the initial values while
 * the others wait at a barrier; then servers serve and workers train. */
static petrel_err run(petrel_ps *ps, app *a, const petrel_train_config *cfg,
                      petrel_ps_train_config pc, petrel_train_result *r) {
    int worker = petrel_ps_worker_index(ps);
    petrel_ps_worker *w = NULL;
    petrel_err err = PETREL_OK;
    if (worker >= 0) err = petrel_ps_worker_new(ps, &w);
    if (err == PETREL_OK && worker == 0 && a->init) err = a->init(a, w);
    if (err == PETREL_OK) err = petrel_net_barrier(petrel_ps_net(ps), 600000);
    if (err != PETREL_OK) return err; /* petrel_ps_stop finishes w */
    if (worker < 0) return petrel_ps_serve(ps);
    err = work(ps, w, a, cfg, pc, worker, r);
    petrel_err fin = petrel_ps_worker_finish(w);
    return err != PETREL_OK ? err : fin;
}

static petrel_ps_rule rule_of(petrel_optim_kind kind) {
    switch (kind) {
    case PETREL_OPTIM_MOMENTUM:
        return PETREL_PS_MOMENTUM;
    case PETREL_OPTIM_ADAGRAD:
        return PETREL_PS_ADAGRAD;
    case PETREL_OPTIM_ADAM:
        return PETREL_PS_ADAM;
    default:
        return PETREL_PS_SGD;
    }
}

static petrel_ps_table_spec dense_spec(int64_t rows, int64_t cols, const petrel_train_config *cfg,
                                       petrel_ps_train_config pc) {
    petrel_ps_table_spec s = petrel_ps_table_spec_default(PETREL_PS_DENSE, rows, cols);
    s.rule = rule_of(cfg->optim.kind);
    s.optim = cfg->optim;
    s.sync = pc.sync;
    return s;
}

/* ---- model: a petrel_model's flat parameters in one dense table ------------------------- */

typedef struct model_app {
    app base;
    petrel_model *m;
    const petrel_dataset *train, *test;
    const petrel_train_config *cfg;
    petrel_graph *g;
    float *x;
    int32_t *y;
    uint64_t *keys;
    int64_t rows;
    size_t numel;
    float tail[ROW_FLOATS]; /* the last row, when numel is not a whole number of rows */
    uint32_t table;
} model_app;

static int64_t batcher_start_epoch(app *a, int64_t epoch) {
    petrel_batcher_start_epoch(a->batcher, epoch);
    return petrel_batcher_batches_per_epoch(a->batcher);
}

static void batcher_skip(app *a) {
    const uint32_t *idx;
    (void)petrel_batcher_next_indices(a->batcher, &idx);
}

/* This worker's shard of d in batches of cfg->batch, ordered as the single-process
 * trainer orders them. */
static petrel_err worker_batcher(const petrel_ps *ps, const petrel_dataset *d,
                                 const petrel_train_config *cfg, petrel_batcher **out) {
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = cfg->batch;
    bc.shuffle = cfg->shuffle;
    bc.seed = cfg->seed;
    bc.rank = petrel_ps_worker_index(ps);
    bc.size = petrel_ps_workers(ps);
    return petrel_batcher_new(out, d, bc);
}

enum { ROWS_GET, ROWS_INC, ROWS_SET };

/* Moves the model's flat buffer `flat` (numel floats) to or from the table without a
 * copy of the whole: the full rows straight from or into flat, only the last, partial
 * row through ma->tail (padded with zeros). */
static petrel_err model_rows(model_app *ma, petrel_ps_worker *w, int op, float *flat) {
    int64_t full = (int64_t)(ma->numel / ROW_FLOATS), tail = (int64_t)(ma->numel % ROW_FLOATS);
    petrel_err err = PETREL_OK;
    if (full > 0) {
        if (op == ROWS_GET)
            err = petrel_ps_get_rows(w, ma->table, ma->keys, full, flat);
        else if (op == ROWS_INC)
            err = petrel_ps_inc_rows(w, ma->table, ma->keys, full, flat);
        else
            err = petrel_ps_set_rows(w, ma->table, ma->keys, full, flat);
    }
    if (err != PETREL_OK || tail == 0) return err;
    float *last = flat + full * ROW_FLOATS;
    if (op == ROWS_GET) {
        err = petrel_ps_get_rows(w, ma->table, ma->keys + full, 1, ma->tail);
        if (err == PETREL_OK) memcpy(last, ma->tail, (size_t)tail * sizeof(float));
        return err;
    }
    memcpy(ma->tail, last, (size_t)tail * sizeof(float));
    memset(ma->tail + tail, 0, (size_t)(ROW_FLOATS - tail) * sizeof(float));
    return op == ROWS_INC ? petrel_ps_inc_rows(w, ma->table, ma->keys + full, 1, ma->tail)
                          : petrel_ps_set_rows(w, ma->table, ma->keys + full, 1, ma->tail);
}

static petrel_err model_step(app *a, petrel_ps_worker *w, double *loss, int64_t *samples) {
    model_app *ma = (model_app *)a;
    petrel_err err = model_rows(ma, w, ROWS_GET, petrel_params_data(ma->m->params));
    if (err != PETREL_OK) return err;
    int64_t n = petrel_batcher_next(ma->base.batcher, ma->x, ma->y);
    float l = 0;
    if (n > 0 && (err = petrel_train_step(ma->m, ma->g, NULL, ma->x, ma->y, n, &l)) != PETREL_OK)
        return err;
    *loss = l;
    *samples = n;
    return n > 0 ? model_rows(ma, w, ROWS_INC, petrel_params_grad(ma->m->params)) : PETREL_OK;
}

static petrel_err model_evaluate(app *a, petrel_ps_worker *w, double *accuracy, double *loss) {
    model_app *ma = (model_app *)a;
    if (!ma->test) return PETREL_OK;
    petrel_err err = model_rows(ma, w, ROWS_GET, petrel_params_data(ma->m->params));
    if (err == PETREL_OK)
        err = petrel_evaluate(ma->m, ma->test, ma->cfg->eval_batch, accuracy, loss);
    return err;
}

static petrel_err model_init(app *a, petrel_ps_worker *w) {
    model_app *ma = (model_app *)a;
    return model_rows(ma, w, ROWS_SET, petrel_params_data(ma->m->params));
}

petrel_err petrel_train_ps(petrel_ps *ps, petrel_model *m, const petrel_dataset *train,
                           const petrel_dataset *test, const petrel_train_config *cfg,
                           petrel_ps_train_config pc, petrel_train_result *r) {
    petrel_err err = petreli_check_fit(m, train, "training set");
    if (err == PETREL_OK && test) err = petreli_check_fit(m, test, "test set");
    if (err != PETREL_OK) return err;
    model_app ma = {.base = {.name = m->name,
                             .start_epoch = batcher_start_epoch,
                             .skip = batcher_skip,
                             .step = model_step,
                             .evaluate = model_evaluate,
                             .init = model_init,
                             .loss_name = "loss"},
                    .m = m,
                    .train = train,
                    .test = test,
                    .cfg = cfg};
    ma.numel = petrel_params_numel(m->params);
    ma.rows = (int64_t)((ma.numel + ROW_FLOATS - 1) / ROW_FLOATS);
    petrel_ps_table_spec spec = dense_spec(ma.rows, ROW_FLOATS, cfg, pc);
    err = petrel_ps_table_create(ps, &spec, &ma.table);
    int worker = petrel_ps_worker_index(ps);
    if (err == PETREL_OK && worker >= 0) {
        err = worker_batcher(ps, train, cfg, &ma.base.batcher);
        ma.x = petrel_malloc((size_t)(cfg->batch * m->in_dim) * sizeof(float));
        ma.y = petrel_malloc((size_t)cfg->batch * sizeof(int32_t));
        ma.keys = petrel_malloc((size_t)ma.rows * sizeof(uint64_t));
        if (err == PETREL_OK && (!ma.x || !ma.y || !ma.keys)) err = PETREL_ERR_NOMEM;
        if (err == PETREL_OK) err = petrel_graph_new(&ma.g, 0);
        for (int64_t i = 0; err == PETREL_OK && i < ma.rows; i++) ma.keys[i] = (uint64_t)i;
    }
    if (err == PETREL_OK) err = run(ps, &ma.base, cfg, pc, r);
    petrel_graph_free(ma.g);
    petrel_batcher_free(ma.base.batcher);
    petrel_free(ma.x);
    petrel_free(ma.y);
    petrel_free(ma.keys);
    return err;
}

/* ---- logreg: sparse logistic or softmax regression --------------------------------------- */

typedef struct logreg_app {
    app base;
    const petrel_dataset *train, *test;
    int64_t classes, cols; /* cols: 1 for two classes (logistic), else classes */
    int32_t *slot_of;      /* dim: a feature's index in keys, or -1 */
    uint64_t *keys;        /* the batch's distinct features */
    float *w, *grad;       /* keys x cols */
    float *z;              /* classes */
    int32_t *y;
    uint32_t table;
} logreg_app;

/* The class scores of sample i of x into z (cols); index maps a feature to its row
 * of w (NULL: the feature is the row). */
static void logreg_scores(const logreg_app *la, const petrel_csr *x, int64_t i, const float *w,
                          const int32_t *index, float *z) {
    int64_t cols = la->cols;
    for (int64_t c = 0; c < cols; c++) z[c] = 0;
    for (int64_t k = x->row_ptr[i]; k < x->row_ptr[i + 1]; k++) {
        const float *row = w + (int64_t)(index ? index[x->col[k]] : x->col[k]) * cols;
        for (int64_t c = 0; c < cols; c++) z[c] += x->val[k] * row[c];
    }
}

/* The loss of scores z for label; z becomes its gradient dloss/dz. One column is
 * logistic regression (p = sigmoid(z)), more are softmax. */
static double logreg_loss(int64_t cols, float *z, int32_t label) {
    if (cols == 1) {
        double p = 1.0 / (1.0 + exp(-(double)z[0]));
        double loss = label ? log1p(exp(-(double)z[0])) : log1p(exp((double)z[0]));
        z[0] = (float)(p - label);
        return loss;
    }
    float top = z[0];
    for (int64_t c = 1; c < cols; c++) top = fmaxf(top, z[c]);
    double sum = 0;
    for (int64_t c = 0; c < cols; c++) sum += exp((double)(z[c] - top));
    double loss = log(sum) - (double)(z[label] - top);
    for (int64_t c = 0; c < cols; c++)
        z[c] = (float)(exp((double)(z[c] - top)) / sum) - (c == label);
    return loss;
}

static petrel_err logreg_step(app *a, petrel_ps_worker *w, double *loss, int64_t *samples) {
    logreg_app *la = (logreg_app *)a;
    const petrel_csr *x;
    int64_t n = petrel_batcher_next_sparse(la->base.batcher, &x, la->y), k = 0;
    *samples = n;
    *loss = 0;
    if (n <= 0) return PETREL_OK;
    for (int64_t e = 0; e < x->row_ptr[n]; e++) { /* the batch's distinct features */
        int32_t f = x->col[e];
        if (la->slot_of[f] < 0) {
            la->slot_of[f] = (int32_t)k;
            la->keys[k++] = (uint64_t)f;
        }
    }
    petrel_err err = petrel_ps_get_rows(w, la->table, la->keys, k, la->w);
    memset(la->grad, 0, (size_t)(k * la->cols) * sizeof(float));
    double total = 0;
    for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
        logreg_scores(la, x, i, la->w, la->slot_of, la->z);
        total += logreg_loss(la->cols, la->z, la->y[i]);
        for (int64_t e = x->row_ptr[i]; e < x->row_ptr[i + 1]; e++) {
            float *g = la->grad + (int64_t)la->slot_of[x->col[e]] * la->cols;
            for (int64_t c = 0; c < la->cols; c++) g[c] += x->val[e] * la->z[c] / (float)n;
        }
    }
    for (int64_t i = 0; i < k; i++) la->slot_of[la->keys[i]] = -1;
    *loss = total / (double)n;
    return err == PETREL_OK ? petrel_ps_inc_rows(w, la->table, la->keys, k, la->grad) : err;
}

static petrel_err logreg_evaluate(app *a, petrel_ps_worker *w, double *accuracy, double *loss) {
    logreg_app *la = (logreg_app *)a;
    if (!la->test) return PETREL_OK;
    int64_t dim = la->train->dim;
    uint64_t *keys = petrel_malloc((size_t)dim * sizeof *keys);
    float *weights = petrel_malloc((size_t)(dim * la->cols) * sizeof *weights);
    petrel_err err = keys && weights ? PETREL_OK : PETREL_ERR_NOMEM;
    for (int64_t f = 0; f < dim && err == PETREL_OK; f++) keys[f] = (uint64_t)f;
    if (err == PETREL_OK) err = petrel_ps_get_rows(w, la->table, keys, dim, weights);
    const petrel_csr *x = &la->test->sparse;
    double hits = 0, total = 0;
    for (int64_t i = 0; i < la->test->n && err == PETREL_OK; i++) {
        int32_t label = la->test->y[i];
        logreg_scores(la, x, i, weights, NULL, la->z);
        int64_t best = la->cols == 1 ? la->z[0] > 0 : 0;
        for (int64_t c = 1; c < la->cols; c++)
            if (la->z[c] > la->z[best]) best = c;
        hits += best == label;
        total += logreg_loss(la->cols, la->z, label);
    }
    if (err == PETREL_OK) {
        *accuracy = hits / (double)la->test->n;
        *loss = total / (double)la->test->n;
    }
    petrel_free(keys);
    petrel_free(weights);
    return err;
}

petrel_err petrel_train_ps_logreg(petrel_ps *ps, const petrel_dataset *train,
                                  const petrel_dataset *test, const petrel_train_config *cfg,
                                  petrel_ps_train_config pc, petrel_train_result *r) {
    if (!petrel_dataset_is_sparse(train) || (test && !petrel_dataset_is_sparse(test)))
        return petrel_error_set(PETREL_ERR_INVALID, "ps logreg: wants sparse (libsvm) data");
    int64_t classes = train->num_classes;
    if (test && test->num_classes > classes) classes = test->num_classes;
    if (classes < 2 || classes > 1024)
        return petrel_error_set(PETREL_ERR_INVALID, "ps logreg: %lld classes (2..1024 supported)",
                                (long long)classes);
    if (test && test->dim > train->dim)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps logreg: the test set has %lld features, the training set %lld",
                                (long long)test->dim, (long long)train->dim);
    logreg_app la = {.base = {.name = classes == 2 ? "logreg" : "softmax",
                              .start_epoch = batcher_start_epoch,
                              .skip = batcher_skip,
                              .step = logreg_step,
                              .evaluate = logreg_evaluate,
                              .loss_name = "loss"},
                     .train = train,
                     .test = test,
                     .classes = classes,
                     .cols = classes == 2 ? 1 : classes};
    petrel_ps_table_spec spec = petrel_ps_table_spec_default(PETREL_PS_SPARSE, 0, la.cols);
    spec.rule = rule_of(cfg->optim.kind);
    spec.optim = cfg->optim;
    spec.sync = pc.sync;
    spec.push = false; /* each batch touches other features */
    petrel_err err = petrel_ps_table_create(ps, &spec, &la.table);
    int worker = petrel_ps_worker_index(ps);
    if (err == PETREL_OK && worker >= 0) {
        err = worker_batcher(ps, train, cfg, &la.base.batcher);
        int64_t most = train->dim; /* distinct features in a batch */
        la.slot_of = petrel_malloc((size_t)train->dim * sizeof *la.slot_of);
        la.keys = petrel_malloc((size_t)most * sizeof *la.keys);
        la.w = petrel_malloc((size_t)(most * la.cols) * sizeof(float));
        la.grad = petrel_malloc((size_t)(most * la.cols) * sizeof(float));
        la.z = petrel_malloc((size_t)la.cols * sizeof(float));
        la.y = petrel_malloc((size_t)cfg->batch * sizeof(int32_t));
        if (err == PETREL_OK && (!la.slot_of || !la.keys || !la.w || !la.grad || !la.z || !la.y))
            err = PETREL_ERR_NOMEM;
        for (int64_t f = 0; err == PETREL_OK && f < train->dim; f++) la.slot_of[f] = -1;
    }
    if (err == PETREL_OK) err = run(ps, &la.base, cfg, pc, r);
    petrel_batcher_free(la.base.batcher);
    petrel_free(la.slot_of);
    petrel_free(la.keys);
    petrel_free(la.w);
    petrel_free(la.grad);
    petrel_free(la.z);
    petrel_free(la.y);
    return err;
}

/* ---- mf: matrix factorization ----------------------------------------------------------- */

typedef struct mf_app {
    app base;
    const petrel_ratings *train, *test;
    const petrel_train_config *cfg;
    int64_t rank;
    float l2;
    uint32_t users_t, items_t;
    int64_t lo, hi;  /* this worker's slice of the triplets */
    uint32_t *order; /* the slice, shuffled per epoch */
    int64_t next;
    int32_t *slot_u, *slot_i; /* users, items: index in the batch's keys, or -1 */
    uint64_t *ukeys, *ikeys;
    float *u, *v, *gu, *gv;
} mf_app;

static int64_t mf_start_epoch(app *a, int64_t epoch) {
    mf_app *ma = (mf_app *)a;
    int64_t n = ma->hi - ma->lo;
    for (int64_t i = 0; i < n; i++) ma->order[i] = (uint32_t)(ma->lo + i);
    if (ma->cfg->shuffle) {
        petrel_rng rng;
        petrel_rng_seed(&rng, ma->cfg->seed ^ 0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1));
        petrel_rng_shuffle_u32(&rng, ma->order, (size_t)n);
    }
    ma->next = 0;
    return (n + ma->cfg->batch - 1) / ma->cfg->batch;
}

/* Distinct ids of a batch: their keys and each id's index among them. */
static int64_t distinct(const int32_t *ids, const uint32_t *batch, int64_t n, int32_t *slot,
                        uint64_t *keys) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[batch[i]];
        if (slot[id] < 0) {
            slot[id] = (int32_t)k;
            keys[k++] = (uint64_t)id;
        }
    }
    return k;
}

static void mf_skip(app *a) {
    mf_app *ma = (mf_app *)a;
    int64_t left = ma->hi - ma->lo - ma->next;
    ma->next += left < ma->cfg->batch ? left : ma->cfg->batch;
}

static petrel_err mf_step(app *a, petrel_ps_worker *w, double *loss, int64_t *samples) {
    mf_app *ma = (mf_app *)a;
    const petrel_ratings *d = ma->train;
    int64_t left = ma->hi - ma->lo - ma->next;
    int64_t n = left < ma->cfg->batch ? left : ma->cfg->batch;
    const uint32_t *batch = ma->order + ma->next;
    ma->next += n;
    *samples = n;
    *loss = 0;
    if (n <= 0) return PETREL_OK;
    int64_t nu = distinct(d->user, batch, n, ma->slot_u, ma->ukeys);
    int64_t ni = distinct(d->item, batch, n, ma->slot_i, ma->ikeys);
    petrel_err err = petrel_ps_get_rows(w, ma->users_t, ma->ukeys, nu, ma->u);
    if (err == PETREL_OK) err = petrel_ps_get_rows(w, ma->items_t, ma->ikeys, ni, ma->v);
    int64_t R = ma->rank;
    memset(ma->gu, 0, (size_t)(nu * R) * sizeof(float));
    memset(ma->gv, 0, (size_t)(ni * R) * sizeof(float));
    double se = 0;
    for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
        uint32_t t = batch[i];
        const float *u = ma->u + ma->slot_u[d->user[t]] * R,
                    *v = ma->v + ma->slot_i[d->item[t]] * R;
        float *gu = ma->gu + ma->slot_u[d->user[t]] * R, *gv = ma->gv + ma->slot_i[d->item[t]] * R;
        float e = d->rating[t];
        for (int64_t k = 0; k < R; k++) e -= u[k] * v[k];
        se += (double)e * e;
        for (int64_t k = 0; k < R; k++) { /* d/du of (r - u.v)^2 / 2 + l2/2 (|u|^2 + |v|^2) */
            gu[k] += -e * v[k] + ma->l2 * u[k];
            gv[k] += -e * u[k] + ma->l2 * v[k];
        }
    }
    for (int64_t i = 0; i < nu; i++) ma->slot_u[ma->ukeys[i]] = -1;
    for (int64_t i = 0; i < ni; i++) ma->slot_i[ma->ikeys[i]] = -1;
    *loss = se / (double)n;
    if (err == PETREL_OK) err = petrel_ps_inc_rows(w, ma->users_t, ma->ukeys, nu, ma->gu);
    if (err == PETREL_OK) err = petrel_ps_inc_rows(w, ma->items_t, ma->ikeys, ni, ma->gv);
    return err;
}

/* Test RMSE (in *loss; there is no accuracy), reading the rows the test set needs. */
static petrel_err mf_evaluate(app *a, petrel_ps_worker *w, double *accuracy, double *loss) {
    mf_app *ma = (mf_app *)a;
    const petrel_ratings *d = ma->test;
    *accuracy = NAN;
    if (!d || d->n == 0) return PETREL_OK;
    int64_t R = ma->rank;
    petrel_err err = PETREL_OK;
    double se = 0;
    enum { CHUNK = 4096 }; /* the step's buffers hold this many triplets' rows */
    uint32_t idx[CHUNK];
    for (int64_t lo = 0; lo < d->n && err == PETREL_OK; lo += CHUNK) {
        int64_t n = d->n - lo < CHUNK ? d->n - lo : CHUNK;
        for (int64_t i = 0; i < n; i++) idx[i] = (uint32_t)(lo + i);
        int64_t nu = distinct(d->user, idx, n, ma->slot_u, ma->ukeys);
        int64_t ni = distinct(d->item, idx, n, ma->slot_i, ma->ikeys);
        err = petrel_ps_get_rows(w, ma->users_t, ma->ukeys, nu, ma->u);
        if (err == PETREL_OK) err = petrel_ps_get_rows(w, ma->items_t, ma->ikeys, ni, ma->v);
        for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
            const float *u = ma->u + ma->slot_u[d->user[idx[i]]] * R;
            const float *v = ma->v + ma->slot_i[d->item[idx[i]]] * R;
            float e = d->rating[idx[i]];
            for (int64_t k = 0; k < R; k++) e -= u[k] * v[k];
            se += (double)e * e;
        }
        for (int64_t i = 0; i < nu; i++) ma->slot_u[ma->ukeys[i]] = -1;
        for (int64_t i = 0; i < ni; i++) ma->slot_i[ma->ikeys[i]] = -1;
    }
    if (err == PETREL_OK) *loss = sqrt(se / (double)d->n);
    return err;
}

petrel_err petrel_train_ps_mf(petrel_ps *ps, const petrel_ratings *train,
                              const petrel_ratings *test, const petrel_train_config *cfg,
                              petrel_ps_train_config pc, petrel_train_result *r) {
    if (pc.mf_rank < 1 || pc.mf_rank > 4096)
        return petrel_error_set(PETREL_ERR_INVALID, "ps mf: rank %d outside 1..4096", pc.mf_rank);
    if (test && (test->users > train->users || test->items > train->items))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps mf: the test set has users or items the training set lacks");
    mf_app ma = {.base = {.name = "mf",
                          .start_epoch = mf_start_epoch,
                          .skip = mf_skip,
                          .step = mf_step,
                          .evaluate = mf_evaluate,
                          .loss_name = "mse"},
                 .train = train,
                 .test = test,
                 .cfg = cfg,
                 .rank = pc.mf_rank,
                 .l2 = pc.mf_l2};
    petrel_ps_table_spec su = dense_spec(train->users, pc.mf_rank, cfg, pc);
    su.init = PETREL_PS_INIT_UNIFORM;
    su.init_a = 0;
    su.init_b = 1.0f / sqrtf((float)pc.mf_rank);
    su.init_seed = cfg->seed;
    petrel_ps_table_spec si = su;
    si.rows = train->items;
    si.init_seed = cfg->seed + 1;
    petrel_err err = petrel_ps_table_create(ps, &su, &ma.users_t);
    if (err == PETREL_OK) err = petrel_ps_table_create(ps, &si, &ma.items_t);
    int worker = petrel_ps_worker_index(ps);
    if (err == PETREL_OK && worker >= 0) {
        int workers = petrel_ps_workers(ps);
        ma.lo = train->n * worker / workers;
        ma.hi = train->n * (worker + 1) / workers;
        int64_t most = cfg->batch > 4096 ? cfg->batch : 4096;
        ma.order = petrel_malloc((size_t)(ma.hi - ma.lo + 1) * sizeof *ma.order);
        ma.slot_u = petrel_malloc((size_t)train->users * sizeof *ma.slot_u);
        ma.slot_i = petrel_malloc((size_t)train->items * sizeof *ma.slot_i);
        ma.ukeys = petrel_malloc((size_t)most * sizeof *ma.ukeys);
        ma.ikeys = petrel_malloc((size_t)most * sizeof *ma.ikeys);
        ma.u = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.v = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.gu = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        ma.gv = petrel_malloc((size_t)(most * pc.mf_rank) * sizeof(float));
        if (!ma.order || !ma.slot_u || !ma.slot_i || !ma.ukeys || !ma.ikeys || !ma.u || !ma.v ||
            !ma.gu || !ma.gv)
            err = PETREL_ERR_NOMEM;
        for (int64_t i = 0; err == PETREL_OK && i < train->users; i++) ma.slot_u[i] = -1;
        for (int64_t i = 0; err == PETREL_OK && i < train->items; i++) ma.slot_i[i] = -1;
    }
    if (err == PETREL_OK) err = run(ps, &ma.base, cfg, pc, r);
    petrel_free(ma.order);
    petrel_free(ma.slot_u);
    petrel_free(ma.slot_i);
    petrel_free(ma.ukeys);
    petrel_free(ma.ikeys);
    petrel_free(ma.u);
    petrel_free(ma.v);
    petrel_free(ma.gu);
    petrel_free(ma.gv);
    return err;
}
