/*
 * Training through the parameter server: one worker loop (a clock per mini-batch,
 * a straggler knob, per-clock metrics, evaluation by worker 0 after each epoch)
 * around apps that differ only in their tables and their step (ps_train_impl.h):
 *   model   any petrel_model (the MLP), here: its flat parameter buffer cut into
 *           dense rows of ROW_FLOATS; the server applies the optimizer to gradients;
 *   logreg  sparse logistic or softmax regression (ps_logreg.c);
 *   mf      matrix factorization (ps_mf.c).
 * Every node calls the same entry point; servers and rank 0 serve until the
 * workers are done.
 */
#include "ps_train_impl.h"

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
                                    .mf_l2 = 0.02f,
                                    .hogwild = NULL};
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* The worker loop shared by every app. */
static petrel_err work(petrel_ps *ps, petrel_ps_worker *w, petreli_ps_app *a,
                       const petrel_train_config *cfg, petrel_ps_train_config pc, int worker,
                       petrel_train_result *r) {
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
        petrel_metrics_int(mf, "threads", pc.hogwild ? pc.hogwild->threads : 1);
        if (pc.hogwild)
            petrel_metrics_str(mf, "hogwild", petrel_hogwild_mode_name(pc.hogwild->mode));
        petrel_metrics_num(mf, "lr", pc.hogwild ? pc.hogwild->lr : cfg->optim.lr);
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
        bool last = epoch + 1 == cfg->epochs || (cfg->max_steps && steps >= cfg->max_steps);
        /* The last evaluation is of the final model, every worker's deltas in: under
         * SSP or async, worker 0 may end its clocks long before the others. */
        if (err == PETREL_OK && worker == 0 && a->evaluate && last) err = petrel_ps_wait_final(w);
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
        if (last) break;
    }
    r->steps = steps;
    r->wall_s = petrel_now_s() - t_start;
    r->samples_per_sec = busy > 0 ? (double)samples_total / busy : 0;
    r->peak_rss_mb = petrel_peak_rss_mb();
    if (mf && err == PETREL_OK) {
        petrel_ps_stats st = petrel_ps_get_stats(ps);
        petreli_final_event_begin(mf, a->name, r);
        petrel_metrics_str(mf, "sync", sync);
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

petrel_err petreli_ps_run(petrel_ps *ps, petreli_ps_app *a, const petrel_train_config *cfg,
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

petrel_ps_table_spec petreli_ps_spec(petrel_ps_kind kind, int64_t rows, int64_t cols,
                                     const petrel_train_config *cfg, petrel_ps_train_config pc) {
    petrel_ps_table_spec s = petrel_ps_table_spec_default(kind, rows, cols);
    s.rule = pc.hogwild ? PETREL_PS_SUM : rule_of(cfg->optim.kind);
    s.optim = cfg->optim;
    s.sync = pc.sync;
    return s;
}

int64_t petreli_ps_clock_samples(const petrel_train_config *cfg, petrel_ps_train_config pc) {
    return cfg->batch * (pc.hogwild ? pc.hogwild->threads : 1);
}

int64_t petreli_ps_batcher_start_epoch(petreli_ps_app *a, int64_t epoch) {
    petrel_batcher_start_epoch(a->batcher, epoch);
    return petrel_batcher_batches_per_epoch(a->batcher);
}

void petreli_ps_batcher_skip(petreli_ps_app *a) {
    const uint32_t *idx;
    (void)petrel_batcher_next_indices(a->batcher, &idx);
}

petrel_err petreli_ps_batcher(const petrel_ps *ps, const petrel_dataset *d,
                              const petrel_train_config *cfg, int64_t batch, petrel_batcher **out) {
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = batch;
    bc.shuffle = cfg->shuffle;
    bc.seed = cfg->seed;
    bc.rank = petrel_ps_worker_index(ps);
    bc.size = petrel_ps_workers(ps);
    return petrel_batcher_new(out, d, bc);
}

void petreli_ps_replica_load(_Atomic float *replica, int64_t cols, const uint64_t *keys, int64_t n,
                             const float *base) {
    for (int64_t i = 0; i < n; i++) {
        _Atomic float *row = replica + (int64_t)keys[i] * cols;
        for (int64_t c = 0; c < cols; c++) petreli_wstore(row + c, base[i * cols + c]);
    }
}

void petreli_ps_replica_delta(_Atomic float *replica, int64_t cols, const uint64_t *keys, int64_t n,
                              const float *base, float *delta) {
    for (int64_t i = 0; i < n; i++) {
        _Atomic float *row = replica + (int64_t)keys[i] * cols;
        for (int64_t c = 0; c < cols; c++)
            delta[i * cols + c] = petreli_wload(row + c) - base[i * cols + c];
    }
}

/* ---- model: a petrel_model's flat parameters in one dense table ------------------------- */

typedef struct model_app {
    petreli_ps_app base;
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

static petrel_err model_step(petreli_ps_app *a, petrel_ps_worker *w, double *loss,
                             int64_t *samples) {
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

static petrel_err model_evaluate(petreli_ps_app *a, petrel_ps_worker *w, double *accuracy,
                                 double *loss) {
    model_app *ma = (model_app *)a;
    if (!ma->test) return PETREL_OK;
    petrel_err err = model_rows(ma, w, ROWS_GET, petrel_params_data(ma->m->params));
    if (err == PETREL_OK)
        err = petrel_evaluate(ma->m, ma->test, ma->cfg->eval_batch, accuracy, loss);
    return err;
}

static petrel_err model_init(petreli_ps_app *a, petrel_ps_worker *w) {
    model_app *ma = (model_app *)a;
    return model_rows(ma, w, ROWS_SET, petrel_params_data(ma->m->params));
}

petrel_err petrel_train_ps(petrel_ps *ps, petrel_model *m, const petrel_dataset *train,
                           const petrel_dataset *test, const petrel_train_config *cfg,
                           petrel_ps_train_config pc, petrel_train_result *r) {
    if (pc.hogwild)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps %s: Hogwild! threads train logreg, svm, softmax or mf; "
                                "a model's gradients come from mini-batches",
                                m->name);
    petrel_err err = petreli_check_fit(m, train, "training set");
    if (err == PETREL_OK && test) err = petreli_check_fit(m, test, "test set");
    if (err != PETREL_OK) return err;
    model_app ma = {.base = {.name = m->name,
                             .start_epoch = petreli_ps_batcher_start_epoch,
                             .skip = petreli_ps_batcher_skip,
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
    petrel_ps_table_spec spec = petreli_ps_spec(PETREL_PS_DENSE, ma.rows, ROW_FLOATS, cfg, pc);
    err = petrel_ps_table_create(ps, &spec, &ma.table);
    int worker = petrel_ps_worker_index(ps);
    if (err == PETREL_OK && worker >= 0) {
        err = petreli_ps_batcher(ps, train, cfg, cfg->batch, &ma.base.batcher);
        ma.x = petrel_malloc((size_t)(cfg->batch * m->in_dim) * sizeof(float));
        ma.y = petrel_malloc((size_t)cfg->batch * sizeof(int32_t));
        ma.keys = petrel_malloc((size_t)ma.rows * sizeof(uint64_t));
        if (err == PETREL_OK && (!ma.x || !ma.y || !ma.keys)) err = PETREL_ERR_NOMEM;
        if (err == PETREL_OK) err = petrel_graph_new(&ma.g, 0);
        for (int64_t i = 0; err == PETREL_OK && i < ma.rows; i++) ma.keys[i] = (uint64_t)i;
    }
    if (err == PETREL_OK) err = petreli_ps_run(ps, &ma.base, cfg, pc, r);
    petrel_graph_free(ma.g);
    petrel_batcher_free(ma.base.batcher);
    petrel_free(ma.x);
    petrel_free(ma.y);
    petrel_free(ma.keys);
    return err;
}
