/* petrel train: single-process training of a built-in model. */
#include "apps.h"
#include "cli.h"
#include "petrel/hogwild.h"
#include "petrel/launch.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void train_usage(FILE *f) {
    fprintf(f,
            "usage: petrel train [options]\n"
            "\n"
            "Trains a model with softmax cross-entropy, evaluates it after every epoch, and\n"
            "writes DIR/metrics.jsonl and DIR/model.ckpt.\n"
            "\n"
            "options (default in brackets):\n"
            "  --model NAME        softmax | mlp | cnn, or logreg | svm | mf (Hogwild!;\n"
            "                      mf: matrix factorization of a ratings file, --rank R) "
            "[mlp]\n"
            "  --hidden N[,N..]    mlp hidden widths [256]\n"
            "  --data NAME|PATH    fashion-mnist, an IDX images file, or a libsvm file "
            "[fashion-mnist]\n"
            "  --test PATH         test set file (IDX images or libsvm) [the named dataset's]\n"
            "  --epochs N          passes over the training data [5]\n"
            "  --batch B           samples per step [64]\n"
            "  --optimizer NAME    sgd | momentum | adagrad | adam [sgd]\n"
            "  --lr LR             learning rate [sgd 0.1, momentum 0.01, adagrad 0.01, "
            "adam 0.001]\n"
            "  --weight-decay WD   L2 penalty added to gradients [0]\n"
            "  --threads T         math-library threads (T > 1 uses OpenBLAS's threads);\n"
            "                      with Hogwild!, the SGD threads [1]\n"
            "  --hogwild           lock-free SGD on sparse rows (Recht et al.): logreg, svm\n"
            "                      or softmax; the default for logreg and svm\n"
            "  --locked            Hogwild!'s baseline: a global lock around each update\n"
            "  --round-robin       Hogwild!'s baseline: threads take turns\n"
            "  --l2 L2             Hogwild!: L2 on the coordinates a sample touches [0];\n"
            "                      mf: on the user and item rows a rating touches [0; with\n"
            "                      --servers 0.02, with or without Hogwild! threads]\n"
            "  --decay D           Hogwild!: epoch e steps with lr * D^e, 0 < D <= 1 [0.9]\n"
            "  --test-fraction F   mf without --test: share of the ratings held out [0.1]\n"
            "  --seed S            seed for weights and data order [1]\n"
            "  --out DIR           output directory [runs/<model>]\n"
            "  --max-steps N       stop after N steps in total, 0 for no limit [0]\n"
            "  --kernels NAME      cpu | reference (naive loops, for checking) [cpu]\n"
            "\n"
            "data-parallel training (every worker holds the model; --batch is per worker):\n"
            "  --workers W         processes that train together; > 1 starts them on this\n"
            "                      machine, as petrel launch does (under mpirun or srun, the\n"
            "                      job's size decides) [1]\n"
            "  --comm NAME         allreduce | sfb | hybrid: how gradients are combined\n"
            "                      [allreduce]\n"
            "  --bucket-kb N       gradient bucket (fusion) size in KiB [1024]\n"
            "  --overlap           reduce buckets on a communication thread during backward\n"
            "  --no-overlap        reduce after backward, on the training thread\n"
            "                      [overlap when the machine has more cores than workers]\n"
            "\n"
            "parameter server (docs/ps.md; --workers W train on shards, --batch per worker):\n"
            "  --servers S         S server processes hold the parameters; selects the PS\n"
            "  --sync MODEL        bsp | ssp:N | async: how stale a worker's reads may be [bsp]\n"
            "  --straggler W:F     worker W's clocks take F times its compute time\n"
            "  --snapshot-every N  servers snapshot their tables every N clocks (OUT/snapshots)\n"
            "  --resume DIR        continue from the newest complete snapshot in DIR\n"
            "  --rank R            mf: factor width [16]\n"
            "  with --servers, --model is mlp | cnn | softmax (dense tables), logreg (sparse\n"
            "  logistic or softmax regression on libsvm data), svm (sparse, two classes) or\n"
            "  mf (--data: a ratings file);\n"
            "  Hogwild! threads run in every worker (--threads T of them, --batch samples per\n"
            "  thread and clock; docs/hogwild.md) for svm always, for logreg and mf with\n"
            "  --threads T > 1, and for logreg, svm, softmax and mf with --hogwild, --locked\n"
            "  or --round-robin\n"
            "\n"
            "  --progress          always draw the progress line [only on a terminal]\n"
            "  --no-progress       never draw it\n"
            "  -q, --quiet         no per-epoch lines on stderr\n"
            "  -h, --help          show this help\n");
}

static float default_lr(petrel_optim_kind kind) {
    switch (kind) {
    case PETREL_OPTIM_SGD:
        return 0.1f;
    case PETREL_OPTIM_ADAM:
        return 0.001f;
    default:
        return 0.01f;
    }
}

static bool parse_hidden(const char *s, int64_t *hidden) {
    int k = 0;
    char buf[256];
    if (strlen(s) >= sizeof buf) return false;
    strcpy(buf, s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (k == 3 || !cli_parse_i64(tok, &hidden[k]) || hidden[k] <= 0) return false;
        k++;
    }
    hidden[k] = 0;
    return k > 0;
}

int cli_launch_train(int argc, char **argv, int servers, int workers) {
    petrel_launch_config lc = petrel_launch_config_default();
    lc.workers = workers;
    lc.servers = servers;
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (!args) return cli_fail(PETREL_ERR_NOMEM, "launching the job", NULL);
    args[0] = "/proc/self/exe";
    args[1] = "train";
    for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
    int code = CLI_FAIL;
    petrel_err err = petrel_launch_run(&lc, args, &code);
    free(args);
    if (err != PETREL_OK) return cli_fail(err, "launching the job", NULL);
    return code;
}

/* Joins the job the environment describes; every node is a data-parallel member. */
static petrel_err join_comm(petrel_net **net, petrel_comm **comm) {
    petrel_net_config nc = petrel_net_config_default();
    petrel_err err = petrel_net_start(net, &nc);
    if (err != PETREL_OK) return err;
    int size = petrel_net_size(*net);
    int *ranks = malloc((size_t)size * sizeof *ranks);
    if (!ranks) return PETREL_ERR_NOMEM;
    for (int r = 0; r < size; r++) ranks[r] = r;
    err = petrel_comm_new(comm, *net, ranks, size, 1, petrel_comm_config_default());
    free(ranks);
    return err;
}

int cmd_train(int argc, char **argv) {
    enum {
        OPT_HIDDEN = 256,
        OPT_TEST,
        OPT_LR,
        OPT_WD,
        OPT_MAX_STEPS,
        OPT_KERNELS,
        OPT_PROGRESS,
        OPT_NO_PROGRESS,
        OPT_OPTIMIZER,
        OPT_THREADS,
        OPT_WORKERS,
        OPT_COMM,
        OPT_BUCKET,
        OPT_NO_OVERLAP,
        OPT_OVERLAP,
        OPT_HOGWILD,
        OPT_LOCKED,
        OPT_ROUND_ROBIN,
        OPT_SERVERS,
        OPT_SYNC,
        OPT_STRAGGLER,
        OPT_RESUME,
        OPT_SNAPSHOT_EVERY,
        OPT_RANK,
        OPT_L2,
        OPT_DECAY,
        OPT_TEST_FRACTION
    };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"hidden", required_argument, 0, OPT_HIDDEN},
        {"data", required_argument, 0, 'd'},
        {"test", required_argument, 0, OPT_TEST},
        {"epochs", required_argument, 0, 'e'},
        {"batch", required_argument, 0, 'b'},
        {"optimizer", required_argument, 0, OPT_OPTIMIZER},
        {"lr", required_argument, 0, OPT_LR},
        {"weight-decay", required_argument, 0, OPT_WD},
        {"threads", required_argument, 0, OPT_THREADS},
        {"seed", required_argument, 0, 's'},
        {"out", required_argument, 0, 'o'},
        {"max-steps", required_argument, 0, OPT_MAX_STEPS},
        {"kernels", required_argument, 0, OPT_KERNELS},
        {"progress", no_argument, 0, OPT_PROGRESS},
        {"no-progress", no_argument, 0, OPT_NO_PROGRESS},
        {"workers", required_argument, 0, OPT_WORKERS},
        {"comm", required_argument, 0, OPT_COMM},
        {"bucket-kb", required_argument, 0, OPT_BUCKET},
        {"no-overlap", no_argument, 0, OPT_NO_OVERLAP},
        {"overlap", no_argument, 0, OPT_OVERLAP},
        {"hogwild", no_argument, 0, OPT_HOGWILD},
        {"locked", no_argument, 0, OPT_LOCKED},
        {"round-robin", no_argument, 0, OPT_ROUND_ROBIN},
        {"servers", required_argument, 0, OPT_SERVERS},
        {"sync", required_argument, 0, OPT_SYNC},
        {"straggler", required_argument, 0, OPT_STRAGGLER},
        {"resume", required_argument, 0, OPT_RESUME},
        {"snapshot-every", required_argument, 0, OPT_SNAPSHOT_EVERY},
        {"rank", required_argument, 0, OPT_RANK},
        {"l2", required_argument, 0, OPT_L2},
        {"decay", required_argument, 0, OPT_DECAY},
        {"test-fraction", required_argument, 0, OPT_TEST_FRACTION},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    petrel_model_options mo = petrel_model_options_default();
    petrel_train_config cfg = petrel_train_config_default();
    const char *data = "fashion-mnist", *test_path = NULL, *out = NULL;
    petrel_optim_kind kind = PETREL_OPTIM_SGD;
    petrel_dp_config dp = petrel_dp_config_default();
    int workers = 1, overlap = -1; /* -1: by the core count */
    float lr = 0, wd = 0;
    int hog_mode = -1; /* a petrel_hogwild_mode once --hogwild, --locked or --round-robin */
    float l2 = 0, decay = 0.9f; /* Hogwild!'s --l2 and --decay */
    bool l2_given = false;      /* the parameter server's mf keeps its own default */
    float test_fraction = -1;   /* mf's --test-fraction; -1: not given */
    cli_ps_options pso = cli_ps_options_default();
    bool ps_flags = false; /* a parameter-server flag other than --servers was given */
    int64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:d:e:b:s:o:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            mo.name = optarg;
            break;
        case OPT_HIDDEN:
            if (!parse_hidden(optarg, mo.hidden))
                return cli_usage_error("train ", "--hidden wants up to 3 positive widths, got '%s'",
                                       optarg);
            break;
        case 'd':
            data = optarg;
            break;
        case OPT_TEST:
            test_path = optarg;
            break;
        case 'e':
            if (!cli_parse_i64(optarg, &cfg.epochs) || cfg.epochs < 0)
                return cli_usage_error("train ", "--epochs wants an integer >= 0, got '%s'",
                                       optarg);
            break;
        case 'b':
            if (!cli_parse_i64(optarg, &cfg.batch) || cfg.batch <= 0)
                return cli_usage_error("train ", "--batch wants an integer > 0, got '%s'", optarg);
            break;
        case OPT_OPTIMIZER:
            if (petrel_optim_parse(optarg, &kind) != PETREL_OK)
                return cli_usage_error("train ", "%s", petrel_errmsg());
            break;
        case OPT_LR:
            if (!cli_parse_f32(optarg, &lr) || !(lr > 0))
                return cli_usage_error("train ", "--lr wants a number > 0, got '%s'", optarg);
            break;
        case OPT_WD:
            if (!cli_parse_f32(optarg, &wd) || wd < 0)
                return cli_usage_error("train ", "--weight-decay wants a number >= 0, got '%s'",
                                       optarg);
            break;
        case OPT_THREADS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 1024)
                return cli_usage_error("train ", "--threads wants 1..1024, got '%s'", optarg);
            cfg.threads = (int)v;
            break;
        case 's':
            if (!cli_parse_i64(optarg, &v) || v < 0)
                return cli_usage_error("train ", "--seed wants an integer >= 0, got '%s'", optarg);
            cfg.seed = mo.seed = (uint64_t)v;
            break;
        case 'o':
            out = optarg;
            break;
        case OPT_MAX_STEPS:
            if (!cli_parse_i64(optarg, &cfg.max_steps) || cfg.max_steps < 0)
                return cli_usage_error("train ", "--max-steps wants an integer >= 0, got '%s'",
                                       optarg);
            break;
        case OPT_KERNELS:
            if (strcmp(optarg, "cpu") == 0)
                petrel_kernels_set_current(petrel_kernels_cpu());
            else if (strcmp(optarg, "reference") == 0)
                petrel_kernels_set_current(petrel_kernels_reference());
            else
                return cli_usage_error("train ", "--kernels wants cpu or reference");
            break;
        case OPT_WORKERS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 1024)
                return cli_usage_error("train ", "--workers wants 1..1024, got '%s'", optarg);
            workers = (int)v;
            break;
        case OPT_COMM:
            if (petrel_comm_mode_parse(optarg, &dp.mode) != PETREL_OK)
                return cli_usage_error("train ", "%s", petrel_errmsg());
            break;
        case OPT_BUCKET:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > (1 << 20))
                return cli_usage_error("train ", "--bucket-kb wants 1..1048576, got '%s'", optarg);
            dp.bucket_bytes = (size_t)v << 10;
            break;
        case OPT_NO_OVERLAP:
            overlap = 0;
            break;
        case OPT_HOGWILD:
            hog_mode = PETREL_HOGWILD_LOCKFREE;
            break;
        case OPT_LOCKED:
            hog_mode = PETREL_HOGWILD_LOCKED;
            break;
        case OPT_ROUND_ROBIN:
            hog_mode = PETREL_HOGWILD_ROUND_ROBIN;
            break;
        case OPT_OVERLAP:
            overlap = 1;
            break;
        case OPT_SERVERS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 1024)
                return cli_usage_error("train ", "--servers wants 1..1024, got '%s'", optarg);
            pso.servers = (int)v;
            break;
        case OPT_SYNC:
            if (petrel_ps_sync_parse(optarg, &pso.train.sync) != PETREL_OK)
                return cli_usage_error("train ", "--sync: %s", petrel_errmsg());
            ps_flags = true;
            break;
        case OPT_STRAGGLER:
            if (!cli_parse_straggler(optarg, &pso))
                return cli_usage_error(
                    "train ", "--straggler wants WORKER:FACTOR (FACTOR >= 1), got '%s'", optarg);
            ps_flags = true;
            break;
        case OPT_RESUME:
            pso.resume = optarg;
            ps_flags = true;
            break;
        case OPT_SNAPSHOT_EVERY:
            if (!cli_parse_i64(optarg, &pso.snapshot_every) || pso.snapshot_every < 1)
                return cli_usage_error("train ", "--snapshot-every wants an integer >= 1, got '%s'",
                                       optarg);
            ps_flags = true;
            break;
        case OPT_L2:
            if (!cli_parse_f32(optarg, &l2) || !(l2 >= 0) || !isfinite(l2))
                return cli_usage_error("train ", "--l2 wants a number >= 0, got '%s'", optarg);
            l2_given = true;
            break;
        case OPT_DECAY:
            if (!cli_parse_f32(optarg, &decay) || !(decay > 0 && decay <= 1))
                return cli_usage_error("train ", "--decay wants a number in (0, 1], got '%s'",
                                       optarg);
            break;
        case OPT_TEST_FRACTION:
            if (!cli_parse_f32(optarg, &test_fraction) || !(test_fraction >= 0) ||
                !(test_fraction < 1))
                return cli_usage_error(
                    "train ", "--test-fraction wants a number in [0, 1), got '%s'", optarg);
            break;
        case OPT_RANK:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 4096)
                return cli_usage_error("train ", "--rank wants 1..4096, got '%s'", optarg);
            pso.train.mf_rank = (int)v;
            break;
        case OPT_PROGRESS:
            cfg.progress = 1;
            break;
        case OPT_NO_PROGRESS:
            cfg.progress = 0;
            break;
        case 'q':
            cfg.quiet = true;
            break;
        case 'h':
            train_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("train ", "bad option");
        }
    }
    if (optind < argc) return cli_usage_error("train ", "unexpected argument '%s'", argv[optind]);
    cfg.optim = petrel_optim_config_default(kind, lr > 0 ? lr : default_lr(kind));
    cfg.optim.weight_decay = wd;
    char out_buf[512];
    if (!out) {
        snprintf(out_buf, sizeof out_buf, "runs/%s", mo.name);
        out = out_buf;
    }
    cfg.out_dir = out;

    if (ps_flags && pso.servers == 0)
        return cli_usage_error("train ", "--sync, --straggler, --resume and --snapshot-every are "
                                         "for the parameter server: add --servers S");
    if (pso.servers > 0) {
        pso.workers = workers;
        /* mf reads its L2 from mf_l2 on both of its paths, mini-batch and Hogwild! */
        if (l2_given && strcmp(mo.name, "mf") == 0) pso.train.mf_l2 = l2;
        /* Hogwild! threads in every worker: asked for with a mode flag, or by --threads
         * for the models that have no BLAS threads to give them to. */
        int hog_model;
        bool sparse = strcmp(mo.name, "softmax") != 0; /* softmax is also a dense model */
        petrel_hogwild_config hwc;
        if (cli_hogwild_model(mo.name, &hog_model) &&
            (hog_mode >= 0 || (sparse && (cfg.threads > 1 || hog_model == PETREL_HOGWILD_SVM)))) {
            hwc = cli_hogwild_config(hog_model, hog_mode < 0 ? PETREL_HOGWILD_LOCKFREE : hog_mode,
                                     &cfg, lr, l2, decay);
            pso.train.hogwild = &hwc;
        } else if (hog_mode >= 0) {
            return cli_usage_error("train ", "Hogwild! threads train logreg, svm, softmax or mf");
        }
        return cli_train_ps(argc, argv, mo.name, &mo, data, test_path, &cfg, &pso);
    }
    petrel_job_env env;
    if (petrel_job_env_read(&env) != PETREL_OK) return cli_fail(PETREL_ERR_INVALID, "job", NULL);
    bool in_job = env.size > 1;
    if (strcmp(mo.name, "mf") == 0) { /* ratings, by Hogwild! on --threads T */
        if (workers > 1 || in_job)
            return cli_usage_error("train ", "mf trains in one process (--threads T) or on the "
                                             "parameter server (--servers S)");
        if (strcmp(data, "fashion-mnist") == 0)
            return cli_usage_error("train ", "--model mf wants --data FILE, a ratings file");
        if (test_path && test_fraction >= 0)
            return cli_usage_error("train ", "give --test or --test-fraction, not both");
        return cli_train_mf(data, test_path, test_fraction >= 0 ? test_fraction : 0.1,
                            pso.train.mf_rank, hog_mode < 0 ? PETREL_HOGWILD_LOCKFREE : hog_mode,
                            &cfg, lr, l2, decay);
    }
    if (test_fraction >= 0) return cli_usage_error("train ", "--test-fraction is for --model mf");
    if (workers > 1 && !in_job)
        return cli_launch_train(argc, argv, 0, workers - 1); /* rank 0 trains too */

    petrel_dataset *train = NULL, *test = NULL;
    petrel_model *model = NULL;
    petrel_net *net = NULL;
    petrel_comm *comm = NULL;
    petrel_err err = petrel_app_load_data(data, test_path, &train, &test);
    if (err != PETREL_OK) return cli_fail(err, "loading data", NULL);
    mo.in_dim = train->dim;
    mo.classes = train->num_classes;
    if (test && test->num_classes > mo.classes) mo.classes = test->num_classes;
    if (train->channels > 0) {
        mo.channels = train->channels;
        mo.height = train->height;
        mo.width = train->width;
    }
    int rc = CLI_OK;
    int hog_model;
    if (hog_mode >= 0 || strcmp(mo.name, "logreg") == 0 || strcmp(mo.name, "svm") == 0) {
        if (!cli_hogwild_model(mo.name, &hog_model) || workers > 1) {
            rc = cli_usage_error("train ", "Hogwild! trains logreg, svm, softmax or mf in one "
                                           "process (--threads T, not --workers)");
            goto done;
        }
        rc = cli_train_hogwild(hog_model, hog_mode < 0 ? PETREL_HOGWILD_LOCKFREE : hog_mode, train,
                               test, &cfg, lr, l2, decay);
        goto done;
    }
    if ((err = petrel_model_new(&model, &mo)) != PETREL_OK) {
        rc = cli_fail(err, "building the model", "petrel train --help lists the models");
        goto done;
    }
    if (!cfg.quiet)
        fprintf(stderr,
                "petrel: training %s (%zu parameters) on %lld samples, %s lr %g, batch %lld\n",
                model->meta, petrel_params_numel(model->params), (long long)train->n,
                petrel_optim_name(kind), (double)cfg.optim.lr, (long long)cfg.batch);
    petrel_train_result r;
    if (in_job) {
        if ((err = join_comm(&net, &comm)) != PETREL_OK) {
            rc = cli_fail(err, "joining the job",
                          "start it with petrel train --workers W, "
                          "petrel launch, mpirun or srun");
            goto done;
        }
        if (petrel_comm_rank(comm) != 0) cfg.quiet = true, cfg.progress = 0;
        /* A communication thread overlaps only if it has a core of its own; on a machine
         * the workers fill, waking it costs more than the overlap saves. */
        dp.overlap = overlap >= 0 ? overlap : petrel_cpu_count() > petrel_comm_size(comm);
        err = petrel_train_dp(model, train, test, &cfg, comm, dp, &r);
    } else {
        err = petrel_train(model, train, test, &cfg, &r);
    }
    if (err != PETREL_OK) {
        rc = cli_fail(err, "training", NULL);
        goto done;
    }
    if (comm && petrel_comm_rank(comm) != 0) goto done; /* member 0 reports */
    printf("model %s  epochs %lld  steps %lld  train_loss %.4f  test_accuracy %.4f  "
           "samples/s %.0f  wall %.1fs  peak_rss %.0f MB\n",
           model->name, (long long)r.epochs, (long long)r.steps, r.train_loss, r.test_accuracy,
           r.samples_per_sec, r.wall_s, r.peak_rss_mb);
    printf("wrote %s/metrics.jsonl and %s/model.ckpt\n", out, out);
done:
    petrel_comm_free(comm);
    petrel_net_stop(net);
    petrel_model_free(model);
    petrel_dataset_free(train);
    petrel_dataset_free(test);
    return rc;
}
