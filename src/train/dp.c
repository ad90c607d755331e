/*
 * Data-parallel training over a communicator (Horovod, PyTorch DDP; Poseidon's SFB).
 *
 * Every member holds the whole model and trains on its shard of the data. After
 * each member's backward the gradients are averaged, then every member applies the
 * same optimizer step to the same parameters, so the replicas never diverge.
 *
 * The plan, made once from the parameter registry (one flat gradient buffer):
 *   - fully connected weights chosen for SFB (by --comm sfb, or by the cost formula
 *     under --comm hybrid) are each one job: allgather the layer's sufficient
 *     factors [dy | x] (K x (OUT + IN) floats per member), then rebuild the averaged
 *     gradient locally as (1/P) sum_p dy_p^T x_p;
 *   - every other parameter is cut into buckets of about bucket_bytes, contiguous
 *     slices of the flat gradient buffer taken from its end (the last layers finish
 *     their backward first), each one allreduce (average).
 * A communication thread runs the jobs in plan order, which is the same on every
 * member. With overlap on, the graph's gradient-ready hook counts each job's
 * parameters as backward completes them and hands a job over as soon as all of them
 * are done, so communication runs while the backward of earlier layers computes.
 */
#include "train_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct job {
    bool sfb;
    size_t off, len;        /* allreduce: slice of the flat gradient buffer */
    const petrel_tensor *w; /* sfb: the weight (OUT, IN) */
    int params_total;       /* parameters whose gradients the job needs */
    int params_ready;       /* counted by the hook during one backward */
    double start_s, end_s;  /* of the last run, for the timeline */
} job;

typedef struct dp {
    petrel_model *m;
    petrel_comm *comm;
    petrel_graph *g;
    petrel_dp_config cfg;
    int64_t batch;
    int P;
    job *jobs;
    int njobs;
    int *job_of_param; /* by parameter index */
    float *factors;    /* sfb: this member's [dy | x] and everyone's, largest layer */
    size_t factor_floats;

    /* The communication thread and its queue: jobs 0..queued-1 handed over,
     * 0..done-1 finished. */
    pthread_t thread; /* 0 without overlap: the jobs then run on the training thread */
    bool sync_ready;  /* mu and cv are initialized */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int queued, done;
    bool quit;
    petrel_err err;
    char errmsg[256];
} dp;

static const char *const mode_names[PETREL_COMM_COUNT] = {"allreduce", "sfb", "hybrid"};

const char *petrel_comm_mode_name(petrel_comm_mode mode) {
    return mode < PETREL_COMM_COUNT ? mode_names[mode] : "unknown";
}

petrel_err petrel_comm_mode_parse(const char *name, petrel_comm_mode *out) {
    for (int i = 0; i < PETREL_COMM_COUNT; i++)
        if (strcmp(name, mode_names[i]) == 0) {
            *out = (petrel_comm_mode)i;
            return PETREL_OK;
        }
    return petrel_error_set(PETREL_ERR_INVALID,
                            "unknown --comm '%s' (expected allreduce, sfb or hybrid)", name);
}

petrel_dp_config petrel_dp_config_default(void) {
    petrel_dp_config c = {
        .mode = PETREL_COMM_ALLREDUCE, .bucket_bytes = 1024 << 10, .overlap = true};
    return c;
}

double petrel_sfb_floats(int64_t out, int64_t in, int64_t k, int p) {
    return (double)k * (double)(p - 1) * (double)(out + in);
}

double petrel_allreduce_floats(int64_t out, int64_t in, int p) {
    return 2.0 * (double)(p - 1) / (double)p * (double)out * (double)in;
}

/* ---- the plan --------------------------------------------------------------------- */

static bool wants_sfb(const dp *d, const petrel_tensor *t) {
    if (t->ndim != 2 || d->cfg.mode == PETREL_COMM_ALLREDUCE || d->P < 2) return false;
    if (d->cfg.mode == PETREL_COMM_SFB) return true;
    return petrel_sfb_floats(t->ne[0], t->ne[1], d->batch, d->P) <
           petrel_allreduce_floats(t->ne[0], t->ne[1], d->P);
}

static petrel_err make_plan(dp *d) {
    petrel_params *p = d->m->params;
    int n = petrel_params_num(p);
    d->jobs = petrel_calloc((size_t)n, sizeof *d->jobs); /* at most one job per parameter */
    d->job_of_param = petrel_calloc((size_t)n, sizeof *d->job_of_param);
    if (!d->jobs || !d->job_of_param) return PETREL_ERR_NOMEM;
    const float *base = petrel_params_grad(p);
    job *open = NULL; /* the bucket being filled */
    for (int i = n - 1; i >= 0; i--) {
        petrel_tensor *t = petrel_params_get(p, i);
        size_t off = (size_t)(t->grad->data - base), len = (size_t)petrel_tensor_numel(t);
        bool sfb = wants_sfb(d, t);
        if (d->P > 1 && d->cfg.mode != PETREL_COMM_ALLREDUCE && t->ndim == 2)
            PETREL_LOG_INFO("train", "%s (%lld x %lld): %s (sfb %.0f floats, allreduce %.0f)",
                            petrel_params_name(p, i), (long long)t->ne[0], (long long)t->ne[1],
                            sfb ? "sfb" : "allreduce",
                            petrel_sfb_floats(t->ne[0], t->ne[1], d->batch, d->P),
                            petrel_allreduce_floats(t->ne[0], t->ne[1], d->P));
        if (sfb) {
            t->grad_from_factors = true; /* backward skips it; run_sfb rebuilds it */
            job *j = &d->jobs[d->njobs++];
            *j = (job){.sfb = true, .w = t, .params_total = 1};
            d->job_of_param[i] = (int)(j - d->jobs);
            size_t f = (size_t)d->batch * (size_t)(t->ne[0] + t->ne[1]);
            if (f > d->factor_floats) d->factor_floats = f;
            open = NULL; /* a bucket is one contiguous slice: it cannot span this weight */
            continue;
        }
        /* Parameters are laid out in declaration order with padding between them, so
         * walking backwards a bucket grows downwards: [off, old end). */
        if (!open || (open->len + len) * sizeof(float) > d->cfg.bucket_bytes) {
            open = &d->jobs[d->njobs++];
            *open = (job){.off = off, .len = 0};
        }
        size_t end = open->len ? open->off + open->len : off + len;
        open->off = off;
        open->len = end - off;
        open->params_total++;
        d->job_of_param[i] = (int)(open - d->jobs);
    }
    if (d->factor_floats) {
        d->factors = petrel_malloc((size_t)(d->P + 1) * d->factor_floats * sizeof(float));
        if (!d->factors) return PETREL_ERR_NOMEM;
    }
    return PETREL_OK;
}

/* ---- the communication thread ----------------------------------------------------- */

static petrel_err run_sfb(dp *d, const job *j) {
    const petrel_tensor *x, *dy;
    petrel_err err = petrel_graph_linear_factors(d->g, j->w, &x, &dy);
    if (err != PETREL_OK) return err;
    int64_t OUT = j->w->ne[0], IN = j->w->ne[1], K = d->batch, rows = dy->ne[0];
    size_t per = (size_t)(K * (OUT + IN));
    /* This member's block: dy (K, OUT) then x (K, IN), zero rows past a short batch. */
    float *mine = d->factors + (size_t)d->P * d->factor_floats, *all = d->factors;
    memset(mine, 0, per * sizeof(float));
    memcpy(mine, dy->data, (size_t)(rows * OUT) * sizeof(float));
    memcpy(mine + K * OUT, x->data, (size_t)(rows * IN) * sizeof(float));
    if ((err = petrel_allgather(d->comm, mine, per, all)) != PETREL_OK) return err;
    /* dw (OUT, IN) = (1/P) sum_p dy_p^T (OUT, K) x_p (K, IN) */
    const petrel_kernels *k = petrel_kernels_current();
    float *dw = j->w->grad->data;
    for (int p = 0; p < d->P; p++) {
        const float *blk = all + (size_t)p * per;
        k->gemm(true, false, OUT, IN, K, 1.0f / (float)d->P, blk, OUT, blk + K * OUT, IN,
                p ? 1.0f : 0.0f, dw, IN);
    }
    return PETREL_OK;
}

static petrel_err run_job(dp *d, job *j) {
    j->start_s = petrel_now_s();
    petrel_err err = j->sfb ? run_sfb(d, j)
                            : petrel_allreduce(d->comm, petrel_params_grad(d->m->params) + j->off,
                                               j->len, PETREL_REDUCE_AVG);
    j->end_s = petrel_now_s();
    return err;
}

static void *comm_main(void *arg) {
    dp *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->quit && d->done == d->queued) pthread_cond_wait(&d->cv, &d->mu);
        if (d->quit) break;
        job *j = &d->jobs[d->done];
        pthread_mutex_unlock(&d->mu);
        petrel_err err = run_job(d, j);
        pthread_mutex_lock(&d->mu);
        if (err != PETREL_OK && d->err == PETREL_OK) {
            d->err = err;
            snprintf(d->errmsg, sizeof d->errmsg, "%s", petrel_errmsg());
        }
        d->done++;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Hands jobs over in plan order: a job goes once it and every job before it are
 * ready, so that every member runs the same collectives in the same order. */
static void release_ready_jobs(dp *d) {
    pthread_mutex_lock(&d->mu);
    int before = d->queued;
    while (d->queued < d->njobs &&
           d->jobs[d->queued].params_ready == d->jobs[d->queued].params_total)
        d->queued++;
    if (d->queued != before) pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void on_grad_ready(void *ctx, const petrel_tensor *param) {
    dp *d = ctx;
    int n = petrel_params_num(d->m->params);
    for (int i = 0; i < n; i++)
        if (petrel_params_get(d->m->params, i) == param) {
            d->jobs[d->job_of_param[i]].params_ready++;
            break;
        }
    release_ready_jobs(d);
}

/* One step: forward, backward (handing jobs over as they become ready), wait for
 * the communication, update. *exposed_s: time spent waiting after backward. */
static petrel_err dp_step(dp *d, petrel_optim *opt, float *x, const int32_t *y, int64_t n,
                          float *loss, double *compute_s, double *exposed_s) {
    double t0 = petrel_now_s();
    for (int i = 0; i < d->njobs; i++) d->jobs[i].params_ready = 0;
    pthread_mutex_lock(&d->mu);
    d->queued = d->done = 0;
    pthread_mutex_unlock(&d->mu);
    petrel_graph_reset(d->g);
    petrel_model *m = d->m;
    petrel_tensor *xt = petrel_graph_input(d->g, x, 2, (int64_t[]){n, m->in_dim});
    petrel_tensor *l = petrel_op_softmax_xent(d->g, m->forward(m, d->g, xt, true), y);
    if (!l) return petrel_error_set(petrel_graph_error(d->g), "forward failed");
    petrel_params_zero_grad(m->params);
    petrel_err err = petrel_backward(d->g, l);
    if (err != PETREL_OK) return err;
    double t1 = petrel_now_s();
    if (d->cfg.overlap) {
        /* Jobs the hook did not complete (none, normally) go now; then wait. */
        for (int i = 0; i < d->njobs; i++) d->jobs[i].params_ready = d->jobs[i].params_total;
        release_ready_jobs(d);
        pthread_mutex_lock(&d->mu);
        while (d->done < d->njobs) pthread_cond_wait(&d->cv, &d->mu);
        err = d->err;
        pthread_mutex_unlock(&d->mu);
        if (err != PETREL_OK) return petrel_error_set(err, "%s", d->errmsg);
    } else {
        /* No overlap: no thread to wake either, the jobs run here. */
        for (int i = 0; i < d->njobs && err == PETREL_OK; i++) err = run_job(d, &d->jobs[i]);
        if (err != PETREL_OK) return err;
    }
    double t2 = petrel_now_s();
    petrel_optim_step(opt, petrel_params_data(m->params), petrel_params_grad(m->params));
    *loss = l->data[0];
    *compute_s += t1 - t0;
    *exposed_s += t2 - t1;
    return PETREL_OK;
}

/* ---- the training loop ------------------------------------------------------------ */

static petrel_err sharded_eval(petrel_model *m, const petrel_dataset *test, int64_t batch,
                               petrel_comm *comm, double *acc, double *loss) {
    double v[3];
    petrel_err err = petreli_evaluate_shard(m, test, batch, petrel_comm_rank(comm),
                                            petrel_comm_size(comm), &v[0], &v[1], &v[2]);
    float f[3] = {(float)v[0], (float)v[1], (float)v[2]};
    if (err == PETREL_OK) err = petrel_allreduce(comm, f, 3, PETREL_REDUCE_SUM);
    if (err != PETREL_OK) return err;
    *acc = f[2] > 0 ? f[0] / f[2] : 0;
    *loss = f[2] > 0 ? f[1] / f[2] : 0;
    return PETREL_OK;
}

/* The steps every member can run in an epoch: the smallest shard's. */
static petrel_err common_steps(petrel_comm *comm, int64_t mine, int64_t *out) {
    float v = -(float)mine;
    petrel_err err = petrel_allreduce(comm, &v, 1, PETREL_REDUCE_MAX);
    if (err == PETREL_OK) *out = (int64_t)-v;
    return err;
}

static void dp_fini(dp *d) {
    for (int i = 0; i < d->njobs; i++)
        if (d->jobs[i].sfb) ((petrel_tensor *)d->jobs[i].w)->grad_from_factors = false;
    if (d->thread) {
        pthread_mutex_lock(&d->mu);
        d->quit = true;
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
    }
    if (d->sync_ready) {
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
    }
    petrel_graph_free(d->g);
    petrel_free(d->jobs);
    petrel_free(d->job_of_param);
    petrel_free(d->factors);
}

petrel_err petrel_train_dp(petrel_model *m, const petrel_dataset *train, const petrel_dataset *test,
                           const petrel_train_config *cfg, petrel_comm *comm, petrel_dp_config dpc,
                           petrel_train_result *result) {
    if (cfg->epochs < 0 || cfg->batch <= 0 || dpc.bucket_bytes < 64 ||
        dpc.mode >= PETREL_COMM_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "data-parallel training needs epochs >= 0, batch > 0, a bucket "
                                "of at least 64 bytes and a known --comm");
    petrel_err err = petreli_check_fit(m, train, "training");
    if (err == PETREL_OK && test) err = petreli_check_fit(m, test, "test");
    if (err != PETREL_OK) return err;
    const int rank = petrel_comm_rank(comm), P = petrel_comm_size(comm);
    const int64_t B = cfg->batch, D = m->in_dim;
    dp d = {.m = m, .comm = comm, .cfg = dpc, .batch = B, .P = P};
    petrel_metrics *mf = NULL;
    petrel_batcher *it = NULL;
    petrel_optim *opt = NULL;
    float *x = petrel_malloc((size_t)(B * D) * sizeof(float));
    int32_t *y = petrel_malloc((size_t)B * sizeof(int32_t));
    if (!x || !y) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    /* The same initial model everywhere: rank 0's. */
    if ((err = petrel_broadcast(comm, petrel_params_data(m->params), petrel_params_count(m->params),
                                0)) != PETREL_OK)
        goto fail;
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = B;
    bc.seed = cfg->seed;
    bc.shuffle = cfg->shuffle;
    bc.rank = rank;
    bc.size = P;
    if ((err = petrel_batcher_new(&it, train, bc)) != PETREL_OK) goto fail;
    if ((err = petrel_graph_new(&d.g, 0)) != PETREL_OK) goto fail;
    if ((err = petrel_optim_new(&opt, cfg->optim, petrel_params_count(m->params))) != PETREL_OK)
        goto fail;
    if ((err = make_plan(&d)) != PETREL_OK) goto fail;
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    d.sync_ready = true;
    if (dpc.overlap) petrel_graph_on_grad_ready(d.g, on_grad_ready, &d);
    if (dpc.overlap && pthread_create(&d.thread, NULL, comm_main, &d) != 0) {
        d.thread = 0;
        err = petrel_error_set(PETREL_ERR_NOMEM, "cannot start the communication thread");
        goto fail;
    }
    int64_t steps_per_epoch;
    if ((err = common_steps(comm, petrel_batcher_batches_per_epoch(it), &steps_per_epoch)) !=
        PETREL_OK)
        goto fail;
    if (rank == 0 && cfg->out_dir) {
        if ((err = petrel_metrics_open(&mf, cfg->out_dir)) != PETREL_OK) goto fail;
        petrel_metrics_begin(mf, "start");
        petrel_metrics_str(mf, "model", m->name);
        petrel_metrics_str(mf, "model_meta", m->meta);
        petrel_metrics_str(mf, "strategy", "data-parallel");
        petrel_metrics_str(mf, "comm", petrel_comm_mode_name(dpc.mode));
        petrel_metrics_int(mf, "workers", P);
        petrel_metrics_int(mf, "batch_per_worker", B);
        petrel_metrics_int(mf, "bucket_bytes", (int64_t)dpc.bucket_bytes);
        petrel_metrics_int(mf, "jobs", d.njobs);
        petrel_metrics_str(mf, "optimizer", petrel_optim_name(cfg->optim.kind));
        petrel_metrics_num(mf, "lr", cfg->optim.lr);
        petrel_metrics_int(mf, "epochs", cfg->epochs);
        petrel_metrics_int(mf, "seed", (int64_t)cfg->seed);
        if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto fail;
    }
    petrel_train_result r = {.test_loss = NAN, .test_accuracy = NAN};
    const double t_start = petrel_now_s();
    double train_s = 0;
    int64_t steps = 0, samples = 0;
    for (int64_t epoch = 1; epoch <= cfg->epochs; epoch++) {
        petrel_batcher_start_epoch(it, epoch - 1);
        petrel_comm_stats c0 = petrel_comm_get_stats(comm);
        double t_epoch = petrel_now_s(), compute_s = 0, exposed_s = 0;
        float sums[2] = {0, 0}; /* loss * samples, samples */
        for (int64_t s = 0; s < steps_per_epoch; s++) {
            int64_t n = petrel_batcher_next(it, x, y);
            float loss = 0;
            if ((err = dp_step(&d, opt, x, y, n, &loss, &compute_s, &exposed_s)) != PETREL_OK)
                goto fail;
            if (!isfinite(loss)) {
                err = petrel_error_set(PETREL_ERR_STATE, "loss became %f at epoch %lld step %lld",
                                       (double)loss, (long long)epoch, (long long)s);
                goto fail;
            }
            sums[0] += loss * (float)n;
            sums[1] += (float)n;
            steps++;
            if (cfg->max_steps && steps >= cfg->max_steps) break;
        }
        double epoch_s = petrel_now_s() - t_epoch;
        train_s += epoch_s;
        petrel_comm_stats c1 = petrel_comm_get_stats(comm);
        if ((err = petrel_allreduce(comm, sums, 2, PETREL_REDUCE_SUM)) != PETREL_OK) goto fail;
        samples += (int64_t)sums[1];
        r.train_loss = sums[1] > 0 ? sums[0] / sums[1] : 0;
        if (test && (err = sharded_eval(m, test, cfg->eval_batch, comm, &r.test_accuracy,
                                        &r.test_loss)) != PETREL_OK)
            goto fail;
        r.epochs = epoch;
        double sps = epoch_s > 0 ? (double)sums[1] / epoch_s : 0;
        if (rank == 0 && !cfg->quiet)
            fprintf(stderr,
                    "epoch %lld/%lld  train_loss %.4f  test_accuracy %.4f  %.0f samples/s  "
                    "compute %.2fs  exposed comm %.2fs\n",
                    (long long)epoch, (long long)cfg->epochs, r.train_loss, r.test_accuracy, sps,
                    compute_s, exposed_s);
        if (mf) {
            petrel_metrics_begin(mf, "epoch");
            petrel_metrics_int(mf, "epoch", epoch);
            petrel_metrics_int(mf, "step", steps);
            petrel_metrics_num(mf, "train_loss", r.train_loss);
            petrel_metrics_num(mf, "test_loss", r.test_loss);
            petrel_metrics_num(mf, "test_accuracy", r.test_accuracy);
            petrel_metrics_num(mf, "samples_per_sec", sps);
            petrel_metrics_num(mf, "epoch_s", epoch_s);
            petrel_metrics_num(mf, "compute_s", compute_s);
            petrel_metrics_num(mf, "exposed_comm_s", exposed_s);
            petrel_metrics_num(mf, "comm_s", c1.wait_s - c0.wait_s);
            petrel_metrics_int(mf, "bytes_sent", (int64_t)(c1.bytes_sent - c0.bytes_sent));
            petrel_metrics_int(mf, "bytes_received",
                               (int64_t)(c1.bytes_received - c0.bytes_received));
            petrel_metrics_num(mf, "wall_s", petrel_now_s() - t_start);
            if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto fail;
            /* The last step's timeline: when each job ran, relative to its start. */
            for (int i = 0; i < d.njobs; i++) {
                petrel_metrics_begin(mf, "timeline");
                petrel_metrics_int(mf, "epoch", epoch);
                petrel_metrics_int(mf, "job", i);
                petrel_metrics_str(mf, "kind", d.jobs[i].sfb ? "sfb" : "allreduce");
                petrel_metrics_int(mf, "floats",
                                   d.jobs[i].sfb ? (int64_t)petrel_tensor_numel(d.jobs[i].w)
                                                 : (int64_t)d.jobs[i].len);
                petrel_metrics_num(mf, "start_s", d.jobs[i].start_s - d.jobs[0].start_s);
                petrel_metrics_num(mf, "end_s", d.jobs[i].end_s - d.jobs[0].start_s);
                if ((err = petrel_metrics_end(mf)) != PETREL_OK) goto fail;
            }
        }
        if (cfg->max_steps && steps >= cfg->max_steps) break;
    }
    r.steps = steps;
    r.samples_per_sec = train_s > 0 ? (double)samples / train_s : 0;
    if ((err = petreli_finish_run(m, rank == 0 ? cfg->out_dir : NULL, mf, P, t_start, &r)) !=
        PETREL_OK)
        goto fail;
    if (result) *result = r;
fail:
    dp_fini(&d);
    petrel_metrics_close(mf);
    petrel_optim_free(opt);
    petrel_batcher_free(it);
    petrel_free(x);
    petrel_free(y);
    return err;
}
