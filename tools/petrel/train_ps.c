/* petrel train's parameter-server path: --servers S, --sync, --straggler, snapshots. */
#include "apps.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cli_ps_options cli_ps_options_default(void) {
    return (cli_ps_options){
        .servers = 0, .workers = 1, .train = petrel_ps_train_config_default(), .snapshot_every = 0};
}

bool cli_parse_straggler(const char *s, cli_ps_options *o) {
    const char *colon = strchr(s, ':');
    int64_t node;
    float factor;
    char head[32];
    if (!colon || (size_t)(colon - s) >= sizeof head) return false;
    memcpy(head, s, (size_t)(colon - s));
    head[colon - s] = '\0';
    if (!cli_parse_i64(head, &node) || node < 0 || node > 1023) return false;
    if (!cli_parse_f32(colon + 1, &factor) || !(factor >= 1.0f) || factor > 1000.0f) return false;
    o->train.straggler = (int)node;
    o->train.straggler_factor = factor;
    return true;
}

/* Tables each app makes, to find a complete snapshot. */
static int app_tables(const char *model) {
    return strcmp(model, "mf") == 0 ? 2 : 1;
}

static petrel_err load_ratings(const char *data, const char *test_path, petrel_ratings *train,
                               petrel_ratings *test, uint64_t seed) {
    petrel_err err;
    if (test_path) {
        err = petrel_ratings_read(data, train);
        if (err == PETREL_OK) err = petrel_ratings_read(test_path, test);
        return err;
    }
    petrel_ratings all;
    err = petrel_ratings_read(data, &all);
    if (err != PETREL_OK) return err;
    err = petrel_ratings_split(&all, 0.1, seed, train, test); /* 10% held out */
    petrel_ratings_fini(&all);
    return err;
}

/* One node of the job: joins it, starts the PS, runs the app, stops. */
static int run_node(const char *model_name, petrel_model_options *mo, const char *data,
                    const char *test_path, petrel_train_config *cfg, const cli_ps_options *o) {
    /* logreg, and every Hogwild! model but mf, train on sparse rows */
    bool mf = strcmp(model_name, "mf") == 0,
         logreg = !mf && (strcmp(model_name, "logreg") == 0 || o->train.hogwild);
    petrel_dataset *train = NULL, *test = NULL;
    petrel_ratings rtrain = {0}, rtest = {0};
    petrel_model *model = NULL;
    petrel_net *net = NULL;
    petrel_ps *ps = NULL;
    int rc = CLI_OK;
    petrel_err err;
    const char *what = "loading data";
    if (mf) {
        err = load_ratings(data, test_path, &rtrain, &rtest, cfg->seed);
    } else {
        err = petrel_app_load_data(data, test_path, &train, &test);
        if (err == PETREL_OK && logreg && !petrel_dataset_is_sparse(train)) {
            petrel_dataset *sparse = NULL, *sparse_test = NULL;
            err = petrel_dataset_to_sparse(&sparse, train);
            if (err == PETREL_OK && test) err = petrel_dataset_to_sparse(&sparse_test, test);
            petrel_dataset_free(train);
            petrel_dataset_free(test);
            train = sparse, test = sparse_test;
        }
        if (err == PETREL_OK && !logreg) {
            what = "building the model";
            mo->in_dim = train->dim;
            mo->classes = train->num_classes;
            if (test && test->num_classes > mo->classes) mo->classes = test->num_classes;
            if (train->channels > 0) {
                mo->channels = train->channels;
                mo->height = train->height;
                mo->width = train->width;
            }
            err = petrel_model_new(&model, mo);
        }
    }
    if (err != PETREL_OK) {
        rc = cli_fail(err, what, NULL);
        goto done;
    }
    petrel_net_config nc = petrel_net_config_default();
    if ((err = petrel_net_start(&net, &nc)) != PETREL_OK) {
        rc = cli_fail(err, "joining the job", "start it with petrel train --servers S --workers W");
        goto done;
    }
    petrel_ps_config pcfg = petrel_ps_config_default();
    char snapdir[4096];
    if (o->resume) {
        pcfg.snapshot_dir = o->resume;
        pcfg.resume_clock =
            petrel_ps_latest_snapshot(o->resume, app_tables(model_name), petrel_net_servers(net));
        if (pcfg.resume_clock < 0) {
            rc = cli_fail(PETREL_ERR_NOT_FOUND, "resuming",
                          "no complete snapshot there (clock-<c>/table-<t>.server-<s> files)");
            goto done;
        }
    } else if (o->snapshot_every > 0) {
        snprintf(snapdir, sizeof snapdir, "%s/snapshots", cfg->out_dir);
        pcfg.snapshot_dir = snapdir;
    }
    if (pcfg.snapshot_dir) pcfg.snapshot_every = o->snapshot_every > 0 ? o->snapshot_every : 100;
    if ((err = petrel_ps_start(&ps, net, &pcfg)) != PETREL_OK) {
        rc = cli_fail(err, "starting the parameter server", NULL);
        goto done;
    }
    int worker = petrel_ps_worker_index(ps);
    if (worker == 0 && !cfg->quiet) {
        char sync[32];
        const petrel_hogwild_config *hw = o->train.hogwild;
        char threads[64] = "";
        if (hw)
            snprintf(threads, sizeof threads, " x %d Hogwild! threads (%s)", hw->threads,
                     petrel_hogwild_mode_name(hw->mode));
        fprintf(stderr, "petrel: %s through the parameter server: %d servers, %d workers%s, %s%s\n",
                model ? model->meta : model_name, petrel_net_servers(net), petrel_ps_workers(ps),
                threads, petrel_ps_sync_format(o->train.sync, sync, sizeof sync),
                pcfg.resume_clock >= 0 ? ", resumed" : "");
        if (pcfg.resume_clock >= 0)
            fprintf(stderr, "petrel: resuming at clock %lld from %s\n",
                    (long long)pcfg.resume_clock, o->resume);
    }
    if (worker != 0) cfg->quiet = true, cfg->progress = 0;
    petrel_train_result r;
    if (mf)
        err = petrel_train_ps_mf(ps, &rtrain, &rtest, cfg, o->train, &r);
    else if (logreg)
        err = petrel_train_ps_logreg(ps, train, test, cfg, o->train, &r);
    else
        err = petrel_train_ps(ps, model, train, test, cfg, o->train, &r);
    petrel_err stop = petrel_ps_stop(ps);
    ps = NULL;
    if (err == PETREL_OK) err = stop;
    if (err != PETREL_OK) {
        rc = cli_fail(err, "training", NULL);
        goto done;
    }
    if (worker == 0)
        printf("model %s  epochs %lld  steps %lld  train_loss %.4f  test_accuracy %.4f  "
               "test_loss %.4f  samples/s %.0f  wall %.1fs\n",
               model_name, (long long)r.epochs, (long long)r.steps, r.train_loss, r.test_accuracy,
               r.test_loss, r.samples_per_sec, r.wall_s);
done:
    if (ps) (void)!petrel_ps_stop(ps);
    petrel_net_stop(net);
    petrel_model_free(model);
    petrel_dataset_free(train);
    petrel_dataset_free(test);
    petrel_ratings_fini(&rtrain);
    petrel_ratings_fini(&rtest);
    return rc;
}

int cli_train_ps(int argc, char **argv, const char *model_name, petrel_model_options *mo,
                 const char *data, const char *test_path, petrel_train_config *cfg,
                 const cli_ps_options *o) {
    petrel_job_env env;
    if (petrel_job_env_read(&env) != PETREL_OK) return cli_fail(PETREL_ERR_INVALID, "job", NULL);
    if (o->train.straggler >= o->workers)
        return cli_usage_error("train ", "--straggler names worker %d of %d (0..%d)",
                               o->train.straggler, o->workers, o->workers - 1);
    if (env.size <= 1) return cli_launch_train(argc, argv, o->servers, o->workers);
    return run_node(model_name, mo, data, test_path, cfg, o);
}
