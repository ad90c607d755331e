/*
 * petrel bench hogwild: Hogwild! (lock-free SGD) against one thread, its locked and
 * round-robin baselines, and liblinear, in the same run, on the same libsvm files.
 *
 * Tasks, each on a train/test pair of libsvm files the bench writes first:
 *   wordnet-noun      logreg   WordNet glosses (petrel_text_to_libsvm, as `petrel data
 *                              text2libsvm --wordnet DIR --max-df 0.1` writes them:
 *                              2^18 hashed unigrams less the 10 in more than 10% of
 *                              the glosses, L2-normalized counts, 20% test): noun.*
 *                              against the rest
 *   wordnet-noun-all  logreg   the same with every token (no --max-df): "of", "the",
 *                              "or" .. in up to half the rows, Hogwild's hot coordinates
 *   wordnet-lex       softmax  the glosses of wordnet-noun, 45 lexicographer files
 *   fashion-tops      logreg   Fashion-MNIST written as libsvm (nonzero pixels p/255,
 *                              4 significant digits): T-shirt/top, pullover, coat and
 *                              shirt against the rest
 *   fashion           softmax  the same images, 10 classes
 * Cases per task, each in this process (petrel_hogwild_train on the loaded files):
 * 1 thread, then lock-free, locked and round-robin with --threads T (2); and
 * Debian's liblinear-train -s 0 (L2-regularized logistic regression, C = 1; one
 * against the rest for more than 2 classes) as a subprocess, its test accuracy from
 * liblinear-predict.
 *
 * Each petrel case runs `rounds` times (3), the four cases taking turns, each round
 * with its own seed. Figures: samples/s and nonzeros/s are medians over every epoch
 * of every round (evaluation excluded); "x 1 thread" is the median over the rounds
 * of a case's samples/s over the 1-thread case's in the same round (this VM's speed
 * drifts from run to run with its neighbours' use of the shared cache, so runs close
 * in time compare best); accuracy is the median test accuracy after the last epoch;
 * time to target is the training time (sum of epoch times) until the first epoch
 * whose test accuracy reaches the target, liblinear's accuracy minus 1 point
 * (without liblinear, the 1-thread run's final accuracy minus 1 point), median over
 * the rounds. liblinear's training time is its wall time less that of the same run
 * stopped at its first gradient (-e 1e30): starting, reading and parsing the text
 * file and writing the model, which petrel's epoch times exclude too (petrel loads
 * the file before training); the subtracted run also computes one loss and
 * gradient per class, so the figure slightly understates liblinear's time, in its
 * favour. A liblinear run under 10 s is timed 5 times with its baseline, medians.
 */
#include "bench.h"
#include "cli.h"
#include "petrel/hogwild.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIBLINEAR_S 900 /* bound on one liblinear run */
#define MAX_ROUNDS  5
#define MAX_EPOCHS  100
#define LIN_RUNS    5    /* liblinear runs of a short task, medians */
#define LIN_SHORT_S 10.0 /* a liblinear run shorter than this is short */

typedef enum data_kind { DATA_WORDNET, DATA_FASHION, DATA_COUNT } data_kind;

typedef struct task {
    const char *name;
    data_kind data;
    petrel_hogwild_model model;
    const char *what;
    const char *file; /* <out>/<file>.{train,test}.svm */
    float lr, decay;
    int64_t epochs;
} task;

/* lr and decay chosen by measurement (docs/bench.md): the largest steps that still
 * converge smoothly. */
static const task tasks[] = {
    {"wordnet-noun", DATA_WORDNET, PETREL_HOGWILD_LOGREG, "noun.* glosses against the rest",
     "wordnet-noun", 1.0f, 0.9f, 10},
    {"wordnet-noun-all", DATA_WORDNET, PETREL_HOGWILD_LOGREG,
     "noun.* against the rest, stop words kept", "wordnet-noun-all", 1.0f, 0.9f, 10},
    {"wordnet-lex", DATA_WORDNET, PETREL_HOGWILD_SOFTMAX, "45 lexicographer files", "wordnet", 1.0f,
     0.9f, 10},
    {"fashion-tops", DATA_FASHION, PETREL_HOGWILD_LOGREG,
     "T-shirt/top, pullover, coat, shirt against the rest", "fashion-tops", 0.01f, 0.9f, 8},
    {"fashion", DATA_FASHION, PETREL_HOGWILD_SOFTMAX, "10 classes", "fashion", 0.005f, 0.8f, 8},
};
#define TASKS (int)(sizeof tasks / sizeof tasks[0])

enum { CASE_SERIAL, CASE_LOCKFREE, CASE_LOCKED, CASE_RR, CASES };
static const petrel_hogwild_mode case_mode[CASES] = {PETREL_HOGWILD_LOCKFREE,
                                                     PETREL_HOGWILD_LOCKFREE, PETREL_HOGWILD_LOCKED,
                                                     PETREL_HOGWILD_ROUND_ROBIN};

/* What a petrel case measured. */
typedef struct case_result {
    bool ok;
    double sps, nnz_ps, accuracy;
    double vs_serial; /* samples/s over the 1-thread case's, median over the rounds */
    double to_target; /* seconds; < 0 when the target was not reached */
    int64_t epochs;
    double sps_ep[MAX_ROUNDS][MAX_EPOCHS], nps_ep[MAX_ROUNDS][MAX_EPOCHS];
    double secs[MAX_ROUNDS][MAX_EPOCHS]; /* training time up to the end of each epoch */
    double acc[MAX_ROUNDS][MAX_EPOCHS];  /* test accuracy after each epoch */
} case_result;

/* What liblinear measured. */
typedef struct lin_result {
    bool ok;
    double wall, read, train, accuracy;
    char why[300];
} lin_result;

typedef struct setup {
    char out[1024];
    bool keep;
    char wordnet[1024], fashion[1024];
    char train_bin[1024], predict_bin[1024]; /* liblinear, "" when missing */
    bool liblinear;
    int threads, rounds;
    int64_t epochs; /* > 0: overrides each task's */
    bool want_data[DATA_COUNT];
    bool want_model[PETREL_HOGWILD_MODEL_COUNT];
} setup;

/* ---- the data ---------------------------------------------------------------------------- */

static bool file_exists(const char *path) {
    return access(path, R_OK) == 0;
}

/* Copies src to dst with each line's label (its first token, a class number) made
 * 1 when positive[class], else 0. */
static petrel_err relabel(const char *src, const char *dst, const bool *positive, int classes) {
    FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
    char *line = NULL;
    size_t cap = 0;
    petrel_err err = PETREL_OK;
    if (!in || !out) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: cannot open: %s", !in ? src : dst,
                               strerror(errno));
        goto done;
    }
    for (ssize_t len; (len = getline(&line, &cap, in)) > 0;) {
        char *end;
        long c = strtol(line, &end, 10);
        if (end == line || c < 0 || c >= classes) {
            err = petrel_error_set(PETREL_ERR_FORMAT, "%s: expected a class number first", src);
            goto done;
        }
        fputc(positive[c] ? '1' : '0', out);
        fwrite(end, 1, (size_t)(len - (end - line)), out);
    }
    if (ferror(in) || ferror(out))
        err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
done:
    free(line);
    if (in) fclose(in);
    if (out && fclose(out) != 0 && err == PETREL_OK)
        err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
    return err;
}

/* out/wordnet.{train,test}.svm (--max-df 0.1) and out/wordnet-all.* (every token) by
 * petrel_text_to_libsvm, and wordnet-noun.* and wordnet-noun-all.* from them by
 * wordnet.classes (class names "noun.*" are positive). */
static petrel_err make_wordnet(const setup *s, char *summary, size_t len) {
    char prefix[1100], path[1200], dst[1200];
    petrel_text_config cfg = petrel_text_config_default();
    cfg.source = PETREL_TEXT_WORDNET;
    petrel_text_summary sum;
    snprintf(prefix, sizeof prefix, "%s/wordnet-all", s->out);
    petrel_err err = petrel_text_to_libsvm(s->wordnet, prefix, cfg, &sum);
    if (err != PETREL_OK) return err;
    snprintf(prefix, sizeof prefix, "%s/wordnet", s->out);
    cfg.max_df = 0.1;
    if ((err = petrel_text_to_libsvm(s->wordnet, prefix, cfg, &sum)) != PETREL_OK) return err;
    snprintf(summary, len,
             "%lld glosses, %d classes, %lld of %lld hash buckets used, %lld of them in more "
             "than 10%% of the glosses",
             (long long)sum.docs, (int)sum.classes, (long long)sum.features_used,
             1LL << cfg.hash_bits, (long long)sum.features_dropped);
    bool positive[64] = {false};
    snprintf(path, sizeof path, "%s.classes", prefix);
    FILE *f = fopen(path, "r");
    if (!f) return petrel_error_set(PETREL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int c;
    char name[128];
    while (fscanf(f, "%d %127s", &c, name) == 2)
        if (c >= 0 && c < 64) positive[c] = strncmp(name, "noun.", 5) == 0;
    fclose(f);
    for (int k = 0; k < 4 && err == PETREL_OK; k++) {
        const char *which = k % 2 ? "test" : "train", *all = k / 2 ? "-all" : "";
        snprintf(path, sizeof path, "%s/wordnet%s.%s.svm", s->out, all, which);
        snprintf(dst, sizeof dst, "%s/wordnet-noun%s.%s.svm", s->out, all, which);
        err = relabel(path, dst, positive, sum.classes < 64 ? sum.classes : 64);
    }
    return err;
}

/* out/fashion.{train,test}.svm (10 classes) and out/fashion-tops.* (classes 0, 2, 4
 * and 6 positive) from the IDX files: "label j:v ..." over the nonzero pixels p,
 * v = p/255 with 4 significant digits. */
static petrel_err make_fashion(const setup *s, char *summary, size_t len) {
    static const char *const split_name[2] = {"train", "test"};
    static const char *const idx_prefix[2] = {"train", "t10k"};
    char value[256][16]; /* the text of p/255 for every byte value p */
    for (int p = 0; p < 256; p++) snprintf(value[p], sizeof value[p], "%.4g", p / 255.0);
    int64_t n[2] = {0, 0}, nnz = 0;
    petrel_err err = PETREL_OK;
    for (int split = 0; split < 2 && err == PETREL_OK; split++) {
        char img[1200], lab[1200], multi[1200], bin[1200];
        snprintf(img, sizeof img, "%s/%s-images-idx3-ubyte.gz", s->fashion, idx_prefix[split]);
        snprintf(lab, sizeof lab, "%s/%s-labels-idx1-ubyte.gz", s->fashion, idx_prefix[split]);
        snprintf(multi, sizeof multi, "%s/fashion.%s.svm", s->out, split_name[split]);
        snprintf(bin, sizeof bin, "%s/fashion-tops.%s.svm", s->out, split_name[split]);
        petrel_dataset *d = NULL;
        if ((err = petrel_dataset_load_idx(&d, img, lab)) != PETREL_OK) break;
        FILE *fm = fopen(multi, "w"), *fb = fopen(bin, "w");
        char *row = petrel_malloc((size_t)d->dim * 16 + 16);
        if (!fm || !fb || !row) {
            err = row ? petrel_error_set(PETREL_ERR_IO, "%s: cannot create: %s", !fm ? multi : bin,
                                         strerror(errno))
                      : PETREL_ERR_NOMEM;
        } else {
            for (int64_t i = 0; i < d->n; i++) {
                size_t at = 0;
                for (int64_t j = 0; j < d->dim; j++) {
                    int p = (int)lrintf(d->x[i * d->dim + j] * 255.0f);
                    if (p > 0)
                        at += (size_t)sprintf(row + at, " %lld:%s", (long long)j + 1, value[p]);
                    nnz += p > 0;
                }
                row[at++] = '\n';
                int y = d->y[i];
                fprintf(fm, "%d", y);
                fwrite(row, 1, at, fm);
                fputc(y == 0 || y == 2 || y == 4 || y == 6 ? '1' : '0', fb);
                fwrite(row, 1, at, fb);
            }
            n[split] = d->n;
            if (ferror(fm) || ferror(fb))
                err =
                    petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", multi, strerror(errno));
        }
        if (fm && fclose(fm) != 0 && err == PETREL_OK)
            err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", multi, strerror(errno));
        if (fb && fclose(fb) != 0 && err == PETREL_OK)
            err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", bin, strerror(errno));
        petrel_free(row);
        petrel_dataset_free(d);
    }
    if (err == PETREL_OK)
        snprintf(summary, len, "%lld train and %lld test images, %.0f nonzero pixels per image",
                 (long long)n[0], (long long)n[1], (double)nnz / (double)(n[0] + n[1]));
    return err;
}

/* ---- the cases --------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Round `round` of case k: its per-epoch figures into out. */
static bool run_round(const setup *s, const task *t, int k, int round, const petrel_dataset *tr,
                      const petrel_dataset *te, case_result *out) {
    const int64_t epochs = s->epochs > 0 ? s->epochs : t->epochs;
    petrel_hogwild_config cfg = petrel_hogwild_config_default();
    cfg.model = t->model;
    cfg.mode = case_mode[k];
    cfg.threads = k == CASE_SERIAL ? 1 : s->threads;
    cfg.epochs = epochs;
    cfg.lr = t->lr;
    cfg.decay = t->decay;
    cfg.seed = (uint64_t)round + 1;
    petrel_hogwild_result r;
    if (petrel_hogwild_train(tr, te, cfg, &r) != PETREL_OK) {
        fprintf(stderr, "petrel: error: bench hogwild: %s: %s\n", t->name, petrel_errmsg());
        return false;
    }
    out->epochs = epochs;
    double secs = 0;
    for (int64_t e = 0; e < epochs; e++) {
        const petrel_hogwild_epoch *ep = &r.epoch[e];
        out->sps_ep[round][e] = ep->samples_per_sec;
        out->nps_ep[round][e] = ep->nnz_per_sec;
        out->secs[round][e] = secs += ep->seconds;
        out->acc[round][e] = ep->test_accuracy;
    }
    petrel_hogwild_result_fini(&r);
    return true;
}

/* The case's figures over its rounds: medians over every epoch of every round;
 * vs_serial, the median over the rounds of this case's samples/s over the 1-thread
 * case's in the same round (the rounds take turns, so a pair runs close in time:
 * this machine's speed drifts between runs). */
static void summarize(const setup *s, case_result *c, const case_result *serial) {
    const int64_t E = c->epochs;
    double sps[MAX_ROUNDS * MAX_EPOCHS], nps[MAX_ROUNDS * MAX_EPOCHS], acc[MAX_ROUNDS],
        ratio[MAX_ROUNDS];
    for (int round = 0; round < s->rounds; round++) {
        for (int64_t e = 0; e < E; e++) {
            sps[round * E + e] = c->sps_ep[round][e];
            nps[round * E + e] = c->nps_ep[round][e];
        }
        acc[round] = c->acc[round][E - 1];
        double mine[MAX_EPOCHS], base[MAX_EPOCHS];
        memcpy(mine, c->sps_ep[round], (size_t)E * sizeof mine[0]);
        memcpy(base, serial->sps_ep[round], (size_t)E * sizeof base[0]);
        ratio[round] = petrel_median(mine, (int)E) / petrel_median(base, (int)E);
    }
    c->sps = petrel_median(sps, (int)(E * s->rounds));
    c->nnz_ps = petrel_median(nps, (int)(E * s->rounds));
    c->accuracy = petrel_median(acc, s->rounds);
    c->vs_serial = petrel_median(ratio, s->rounds);
}

/* The case's time to target: per round, the training time up to the first epoch at
 * target; the median over the rounds, a round that never got there counting as
 * slowest; -1 when the median round never got there. */
static void time_to_target(const setup *s, case_result *c, double target) {
    double tt[MAX_ROUNDS];
    for (int round = 0; round < s->rounds; round++) {
        tt[round] = INFINITY;
        for (int64_t e = 0; e < c->epochs && !isfinite(tt[round]); e++)
            if (c->acc[round][e] >= target) tt[round] = c->secs[round][e];
    }
    qsort(tt, (size_t)s->rounds, sizeof tt[0], cmp_double);
    c->to_target = isfinite(tt[s->rounds / 2]) ? tt[s->rounds / 2] : -1;
}

/* Seconds of a program run through bench_exec; -1 with why on failure. out: what it
 * printed (petrel_free it). */
static double timed_exec(char *const argv[], char **out, char *why, size_t why_len) {
    char how[320];
    double t0 = petrel_now_s();
    int rc = bench_exec(argv, NULL, LIBLINEAR_S, out, how, sizeof how);
    double secs = petrel_now_s() - t0;
    if (rc == 0) return secs;
    const char *text = *out ? *out : "";
    size_t len = strlen(text);
    while (len > 0 && text[len - 1] == '\n') len--;
    size_t from = len > 200 ? len - 200 : 0;
    snprintf(why, why_len, "%.100s%s%.*s", how[0] ? how : "exit status not 0", len ? ": " : "",
             (int)(len - from), text + from);
    return -1;
}

static void run_liblinear(const setup *s, const task *t, lin_result *r) {
    char train[1200], test[1200], model[1200], pred[1200];
    snprintf(train, sizeof train, "%s/%s.train.svm", s->out, t->file);
    snprintf(test, sizeof test, "%s/%s.test.svm", s->out, t->file);
    snprintf(model, sizeof model, "%s/%s.model", s->out, t->file);
    snprintf(pred, sizeof pred, "%s/%s.predict", s->out, t->file);
    char *out = NULL;
    char *targv[] = {(char *)s->train_bin, "-s", "0", "-q", train, model, NULL};
    /* Everything but the optimization: the same run, stopped at its first gradient. */
    char *rargv[] = {(char *)s->train_bin, "-s", "0", "-e", "1e30", "-q", train, model, NULL};
    /* A run of seconds or less is timed LIN_RUNS times, with its baseline, and the
     * medians kept: the difference of two short wall times is mostly noise. */
    double wall[LIN_RUNS], read[LIN_RUNS];
    int runs = 1;
    for (int k = 0; k < runs; k++) {
        read[k] = timed_exec(rargv, &out, r->why, sizeof r->why);
        petrel_free(out);
        out = NULL;
        if (read[k] < 0) return;
        wall[k] = timed_exec(targv, &out, r->why, sizeof r->why);
        petrel_free(out);
        out = NULL;
        if (wall[k] < 0) return;
        if (k == 0 && wall[0] < LIN_SHORT_S) runs = LIN_RUNS;
    }
    r->wall = petrel_median(wall, runs);
    r->read = petrel_median(read, runs);
    r->train = r->wall - r->read > 0.001 ? r->wall - r->read : 0.001;
    char *pargv[] = {(char *)s->predict_bin, test, model, pred, NULL};
    if (timed_exec(pargv, &out, r->why, sizeof r->why) < 0) {
        petrel_free(out);
        return;
    }
    const char *at = out ? strstr(out, "Accuracy = ") : NULL;
    long right = 0, all = 0;
    if (!at || sscanf(at, "Accuracy = %*f%% (%ld/%ld)", &right, &all) != 2 || all <= 0) {
        snprintf(r->why, sizeof r->why, "no 'Accuracy = ...' line from %.200s", s->predict_bin);
        petrel_free(out);
        return;
    }
    petrel_free(out);
    out = NULL;
    r->accuracy = (double)right / (double)all;
    unlink(model);
    unlink(pred);
    r->ok = true;
}

/* ---- output ------------------------------------------------------------------------------ */

/* ceiling: the most the machine allowed (the machine line's upper end); a ratio
 * above it says the 1-thread runs of those rounds ran slow, not that threads won
 * more than there are cores. */
static void print_case(const setup *s, int k, const case_result *c, const case_result *serial,
                       const lin_result *lin, double ceiling) {
    char label[64];
    if (k == CASE_SERIAL)
        snprintf(label, sizeof label, "petrel 1 thread");
    else
        snprintf(label, sizeof label, "petrel %s %d threads",
                 petrel_hogwild_mode_name(case_mode[k]), s->threads);
    printf("  %-28s %6.2f M samples/s %7.1f M nnz/s", label, c->sps * 1e-6, c->nnz_ps * 1e-6);
    if (k != CASE_SERIAL && serial->ok)
        printf("  %4.2fx 1 thread", c->vs_serial);
    else
        printf("  %15s", "");
    printf("  accuracy %.4f", c->accuracy);
    if (lin->ok) printf(" (%+5.2f vs liblinear)", 100 * (c->accuracy - lin->accuracy));
    if (c->to_target >= 0) {
        printf("  target in %.3f s", c->to_target);
        if (lin->ok) printf(" = %.3fx liblinear", c->to_target / lin->train);
    } else {
        printf("  target not reached");
    }
    if (k != CASE_SERIAL && serial->ok && c->vs_serial > 1.1 * ceiling)
        printf("  (%.2fx is above the machine's %.2fx: the 1-thread runs ran slow)", c->vs_serial,
               ceiling);
    printf("\n");
}

/* The targets for one task, each met or missed with its figure. */
static void print_targets(const setup *s, const task *t, const case_result *c,
                          const lin_result *lin, double ceiling) {
    const case_result *one = &c[CASE_SERIAL], *hog = &c[CASE_LOCKFREE], *lock = &c[CASE_LOCKED];
    if (!one->ok || !hog->ok) return;
    if (strcmp(t->name, "wordnet-noun") == 0)
        printf("  target lock-free %d threads >= 1.8x one thread samples/s (sparse logreg): %s "
               "(%.2fx%s)\n",
               s->threads, hog->vs_serial >= 1.8 ? "met" : "MISSED", hog->vs_serial,
               hog->vs_serial > 1.1 * ceiling ? ", above the machine's ceiling: unreliable"
               : ceiling < 1.8                ? ", the machine allowed less"
                                              : "");
    if (lock->ok)
        printf("  target locked slower than one thread: %s (%.2fx)\n",
               lock->vs_serial < 1 ? "met" : "MISSED", lock->vs_serial);
    if (lin->ok) {
        bool close = hog->accuracy >= lin->accuracy - 0.01;
        bool fast = hog->to_target >= 0 && hog->to_target <= lin->train / 5;
        printf("  target lock-free within 1 point of liblinear in <= 1/5 of its time: %s "
               "(%+.2f points; ",
               close && fast ? "met" : "MISSED", 100 * (hog->accuracy - lin->accuracy));
        if (hog->to_target >= 0)
            printf("%.3f of its time)\n", hog->to_target / lin->train);
        else
            printf("target not reached)\n");
    }
}

/* ---- the command ------------------------------------------------------------------------- */

static void hogwild_usage(FILE *f) {
    fprintf(f,
            "usage: petrel bench hogwild [options]\n"
            "\n"
            "Hogwild! on text and images: for each task, petrel_hogwild_train with 1 thread\n"
            "and with T threads lock-free, locked and round-robin, and liblinear-train -s 0\n"
            "with liblinear-predict (Debian's liblinear-tools), on the same libsvm files:\n"
            "  wordnet-noun      logreg   WordNet glosses (as petrel data text2libsvm\n"
            "                             --wordnet DIR --max-df 0.1 writes them): noun.*\n"
            "                             against the rest\n"
            "  wordnet-noun-all  logreg   the same with stop words kept (no --max-df)\n"
            "  wordnet-lex       softmax  the glosses' 45 lexicographer files\n"
            "  fashion-tops      logreg   Fashion-MNIST as libsvm: tops (T-shirt, pullover,\n"
            "                             coat, shirt) against the rest\n"
            "  fashion           softmax  its 10 classes\n"
            "Each petrel case runs --rounds times, the cases taking turns. One line per\n"
            "case: samples/s and nonzeros/s (medians over every epoch of every round), the\n"
            "ratio to one thread (median over the rounds of the ratio in each round), the\n"
            "test accuracy after the last epoch and the training time to reach liblinear's\n"
            "accuracy less one point (medians over the rounds), and the ratios to liblinear;\n"
            "then the targets of docs/bench.md. Each task's header says how many times one\n"
            "thread's rate T busy threads reached on a compute-bound loop: the machine's own\n"
            "ceiling for any speedup. Without liblinear it says so and skips its cases.\n"
            "Takes 4 to 5 minutes, half of it liblinear on fashion (--quick: wordnet only,\n"
            "about 80 s).\n"
            "\n"
            "options (default in brackets):\n"
            "  --data LIST     wordnet, fashion or both, comma-separated [wordnet,fashion]\n"
            "  --models LIST   logreg, softmax or both [logreg,softmax]\n"
            "  --quick         --data wordnet\n"
            "  --threads T     threads of the lock-free, locked and round-robin cases [2]\n"
            "  --epochs N      epochs of every petrel case [wordnet 10, fashion 8]\n"
            "  --rounds N      runs of each petrel case, 1..%d, the cases taking turns [3]\n"
            "  --no-liblinear  leave liblinear out\n"
            "  --wordnet DIR   WordNet's dict directory [/usr/share/wordnet]\n"
            "  --fashion DIR   Fashion-MNIST's IDX files [$PETREL_DATA_DIR/fashion-mnist]\n"
            "  --out DIR       write and keep the libsvm files in DIR [a temporary directory,\n"
            "                  removed]\n"
            "  -h, --help      show this help\n",
            MAX_ROUNDS);
}

/* "a,b" into want[] by names[]; false on an unknown name. */
static bool parse_list(const char *s, const char *const *names, int count, bool *want) {
    for (int i = 0; i < count; i++) want[i] = false;
    char buf[256];
    if (strlen(s) >= sizeof buf) return false;
    strcpy(buf, s);
    int found = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int i = 0;
        while (i < count && (!names[i] || strcmp(tok, names[i]) != 0)) i++;
        if (i == count) return false;
        want[i] = true;
        found++;
    }
    return found > 0;
}

/* ---- what the machine allows ------------------------------------------------------------ */

/* A chain of dependent multiply-adds: compute-bound, no memory traffic. */
static void *spin(void *arg) {
    volatile double x = 1;
    for (long i = 0; i < *(const long *)arg; i++) x = x * 1.0000001 + 1e-9;
    return NULL;
}

/* How many times one thread's rate `threads` busy threads reach together on this
 * machine (a compute-bound loop of about 0.3 s per thread): the ceiling of any
 * speedup, threads on an idle machine with real cores; about 1 where the cores are
 * shared (this project's VM after a short burst: two vCPUs, one core's throughput). */
static double parallel_ceiling(int threads) {
    long iters = 80000000;
    double t0 = petrel_now_s();
    spin(&iters);
    double one = petrel_now_s() - t0;
    petrel_thread *th[64];
    int n = threads < 64 ? threads : 64, started = 0;
    t0 = petrel_now_s();
    for (; started < n; started++)
        if (petrel_thread_start(&th[started], spin, &iters) != PETREL_OK) break;
    for (int k = 0; k < started; k++) petrel_thread_join(th[k], NULL);
    double all = petrel_now_s() - t0;
    return started == n && all > 0 ? (double)n * one / all : NAN;
}

/* The full path of a program in $PATH, or false. */
static bool find_program(const char *name, char *path, size_t len) {
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", env && *env ? env : "/usr/bin:/bin");
    for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir;
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(path, len, "%s/%s", dir, name);
        if (access(path, X_OK) == 0) return true;
    }
    path[0] = '\0';
    return false;
}

static void remove_files(const setup *s) {
    static const char *const names[] = {"wordnet",          "wordnet-noun", "wordnet-all",
                                        "wordnet-noun-all", "fashion",      "fashion-tops"};
    char path[1200];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        for (int split = 0; split < 2; split++) {
            snprintf(path, sizeof path, "%s/%s.%s.svm", s->out, names[i], split ? "test" : "train");
            unlink(path);
        }
    snprintf(path, sizeof path, "%s/wordnet.classes", s->out);
    unlink(path);
    snprintf(path, sizeof path, "%s/wordnet-all.classes", s->out);
    unlink(path);
    rmdir(s->out);
}

int bench_hogwild(int argc, char **argv) {
    enum {
        OPT_DATA = 256,
        OPT_MODELS,
        OPT_QUICK,
        OPT_THREADS,
        OPT_EPOCHS,
        OPT_ROUNDS,
        OPT_NO_LIBLINEAR,
        OPT_WORDNET,
        OPT_FASHION,
        OPT_OUT
    };
    static const struct option longopts[] = {{"data", required_argument, 0, OPT_DATA},
                                             {"models", required_argument, 0, OPT_MODELS},
                                             {"quick", no_argument, 0, OPT_QUICK},
                                             {"threads", required_argument, 0, OPT_THREADS},
                                             {"epochs", required_argument, 0, OPT_EPOCHS},
                                             {"rounds", required_argument, 0, OPT_ROUNDS},
                                             {"no-liblinear", no_argument, 0, OPT_NO_LIBLINEAR},
                                             {"wordnet", required_argument, 0, OPT_WORDNET},
                                             {"fashion", required_argument, 0, OPT_FASHION},
                                             {"out", required_argument, 0, OPT_OUT},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    static const char *const data_names[DATA_COUNT] = {"wordnet", "fashion"};
    static const char *const model_names[PETREL_HOGWILD_MODEL_COUNT] = {"logreg", NULL, "softmax",
                                                                        NULL};
    const char *sub = "bench hogwild ";
    setup s = {.liblinear = true, .threads = 2, .rounds = 3};
    for (int d = 0; d < DATA_COUNT; d++) s.want_data[d] = true;
    s.want_model[PETREL_HOGWILD_LOGREG] = s.want_model[PETREL_HOGWILD_SOFTMAX] = true;
    snprintf(s.wordnet, sizeof s.wordnet, "/usr/share/wordnet");
    const char *data_env = getenv("PETREL_DATA_DIR");
    snprintf(s.fashion, sizeof s.fashion, "%.1000s/fashion-mnist",
             data_env && *data_env ? data_env : "/usr/share/datasets");
    int64_t v;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1;) {
        switch (c) {
        case OPT_DATA:
            if (!parse_list(optarg, data_names, DATA_COUNT, s.want_data))
                return cli_usage_error(sub, "--data wants wordnet, fashion or both, got '%s'",
                                       optarg);
            break;
        case OPT_MODELS:
            if (!parse_list(optarg, model_names, PETREL_HOGWILD_MODEL_COUNT, s.want_model))
                return cli_usage_error(sub, "--models wants logreg, softmax or both, got '%s'",
                                       optarg);
            break;
        case OPT_QUICK:
            s.want_data[DATA_FASHION] = false;
            break;
        case OPT_THREADS:
            if (!cli_parse_i64(optarg, &v) || v < 2 || v > 1024)
                return cli_usage_error(sub, "--threads wants 2..1024, got '%s'", optarg);
            s.threads = (int)v;
            break;
        case OPT_EPOCHS:
            if (!cli_parse_i64(optarg, &s.epochs) || s.epochs < 1 || s.epochs > MAX_EPOCHS)
                return cli_usage_error(sub, "--epochs wants 1..%d, got '%s'", MAX_EPOCHS, optarg);
            break;
        case OPT_ROUNDS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > MAX_ROUNDS)
                return cli_usage_error(sub, "--rounds wants 1..%d, got '%s'", MAX_ROUNDS, optarg);
            s.rounds = (int)v;
            break;
        case OPT_NO_LIBLINEAR:
            s.liblinear = false;
            break;
        case OPT_WORDNET:
            snprintf(s.wordnet, sizeof s.wordnet, "%s", optarg);
            break;
        case OPT_FASHION:
            snprintf(s.fashion, sizeof s.fashion, "%s", optarg);
            break;
        case OPT_OUT:
            snprintf(s.out, sizeof s.out, "%s", optarg);
            s.keep = true;
            break;
        case 'h':
            hogwild_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error(sub, "bad option");
        }
    }
    if (optind < argc) return cli_usage_error(sub, "unexpected argument '%s'", argv[optind]);

    if (s.keep) {
        if (petrel_mkdirs(s.out) != PETREL_OK)
            return cli_fail(PETREL_ERR_IO, "bench hogwild --out", NULL);
    } else {
        snprintf(s.out, sizeof s.out, "/tmp/petrel-bench-hogwild-XXXXXX");
        if (!mkdtemp(s.out))
            return cli_fail(PETREL_ERR_IO, "bench hogwild", "cannot make a directory in /tmp");
    }
    bool have_lin = s.liblinear &&
                    find_program("liblinear-train", s.train_bin, sizeof s.train_bin) &&
                    find_program("liblinear-predict", s.predict_bin, sizeof s.predict_bin);
    const double t0 = petrel_now_s();
    printf("petrel bench hogwild: %d cores; petrel_hogwild_train, 1 thread and %d threads, "
           "against %s\n",
           petrel_cpu_count(), s.threads,
           !s.liblinear ? "no liblinear (--no-liblinear)"
           : have_lin   ? s.train_bin
                        : "no liblinear");
    if (s.liblinear && !have_lin)
        printf("liblinear: not found in $PATH (install liblinear-tools: scripts/deps.sh --bench); "
               "its cases are skipped and the targets are the 1-thread accuracy less 1 point\n");
    fflush(stdout);

    bool ok = true;
    for (int d = 0; d < DATA_COUNT; d++) {
        if (!s.want_data[d]) continue;
        bool any = false;
        for (int k = 0; k < TASKS; k++)
            any |= (int)tasks[k].data == d && s.want_model[tasks[k].model];
        if (!any) continue;
        const char *source = d == DATA_WORDNET ? s.wordnet : s.fashion;
        char probe[1200], summary[200] = "";
        snprintf(probe, sizeof probe, "%s/%s", source,
                 d == DATA_WORDNET ? "data.noun" : "train-images-idx3-ubyte.gz");
        if (!file_exists(probe)) {
            printf("%s: skipped: %s not found (install %s: scripts/deps.sh)\n", data_names[d],
                   probe, d == DATA_WORDNET ? "wordnet-base" : "dataset-fashion-mnist");
            continue;
        }
        double tm = petrel_now_s();
        petrel_err err = d == DATA_WORDNET ? make_wordnet(&s, summary, sizeof summary)
                                           : make_fashion(&s, summary, sizeof summary);
        if (err != PETREL_OK) {
            fprintf(stderr, "petrel: error: bench hogwild: writing the %s files: %s\n",
                    data_names[d], petrel_errmsg());
            ok = false;
            continue;
        }
        printf("%s: %s; libsvm files written in %.1f s\n", data_names[d], summary,
               petrel_now_s() - tm);
        fflush(stdout);
        for (int k = 0; k < TASKS; k++) {
            const task *t = &tasks[k];
            if (t->data != (data_kind)d || !s.want_model[t->model]) continue;
            char train[1200], test[1200];
            snprintf(train, sizeof train, "%s/%s.train.svm", s.out, t->file);
            snprintf(test, sizeof test, "%s/%s.test.svm", s.out, t->file);
            petrel_dataset *tr = NULL, *te = NULL;
            if ((err = petrel_dataset_load_libsvm(&tr, train, 0)) != PETREL_OK ||
                (err = petrel_dataset_load_libsvm_like(&te, test, tr)) != PETREL_OK) {
                fprintf(stderr, "petrel: error: bench hogwild: loading %s: %s\n", t->name,
                        petrel_errmsg());
                petrel_dataset_free(tr);
                ok = false;
                continue;
            }
            lin_result lin = {.ok = false};
            if (have_lin) run_liblinear(&s, t, &lin);
            case_result *c = petrel_calloc(CASES, sizeof *c);
            if (!c) return cli_fail(PETREL_ERR_NOMEM, "bench hogwild", NULL);
            bool all = true;
            double ceiling[MAX_ROUNDS];
            for (int round = 0; round < s.rounds; round++) {
                ceiling[round] = parallel_ceiling(s.threads);
                for (int m = 0; m < CASES; m++)
                    all = all && run_round(&s, t, m, round, tr, te, &c[m]);
            }
            double ceil_lo = ceiling[0], ceil_hi = ceiling[0];
            for (int round = 1; round < s.rounds; round++)
                ceil_lo = fmin(ceil_lo, ceiling[round]), ceil_hi = fmax(ceil_hi, ceiling[round]);
            ok &= all;
            for (int m = 0; all && m < CASES; m++) {
                summarize(&s, &c[m], &c[CASE_SERIAL]);
                c[m].ok = true;
            }
            /* Without liblinear, the 1-thread run's accuracy sets the target. */
            bool own_target = !lin.ok;
            double target = lin.ok ? lin.accuracy - 0.01 : c[CASE_SERIAL].accuracy - 0.01;
            for (int m = 0; m < CASES; m++)
                if (c[m].ok) time_to_target(&s, &c[m], target);
            printf("%s (%s, %s): %lld train, %lld test, %lld features, %.1f nonzeros per row; "
                   "lr %g, decay %g, %lld epochs, %d rounds; target accuracy %.4f (%s less 1 "
                   "point); machine: %d busy threads at %.2f .. %.2fx one (a compute-bound "
                   "loop before each round)\n",
                   t->name, petrel_hogwild_model_name(t->model), t->what, (long long)tr->n,
                   (long long)te->n, (long long)tr->dim, (double)tr->sparse.nnz / (double)tr->n,
                   (double)t->lr, (double)t->decay,
                   (long long)(s.epochs > 0 ? s.epochs : t->epochs), s.rounds, target,
                   own_target ? "1 thread's accuracy" : "liblinear's", s.threads, ceil_lo, ceil_hi);
            for (int m = 0; m < CASES; m++)
                if (c[m].ok) print_case(&s, m, &c[m], &c[CASE_SERIAL], &lin, ceil_hi);
            if (lin.ok)
                printf("  %-28s train %.2f s (wall %.2f s less %.2f s of a run with -e 1e30: "
                       "reading, writing)  accuracy %.4f\n",
                       "liblinear -s 0", lin.train, lin.wall, lin.read, lin.accuracy);
            else if (have_lin)
                printf("  %-28s failed: %s\n", "liblinear -s 0", lin.why);
            print_targets(&s, t, c, &lin, ceil_hi);
            fflush(stdout);
            petrel_free(c);
            petrel_dataset_free(tr);
            petrel_dataset_free(te);
        }
    }
    printf("samples/s, nnz/s: medians over the epochs (evaluation excluded); accuracy: test, "
           "after the last epoch; target in: training time until the first epoch at the "
           "target; liblinear's time excludes reading its file; %.0f s in all\n",
           petrel_now_s() - t0);
    if (s.keep)
        printf("libsvm files kept in %s\n", s.out);
    else
        remove_files(&s);
    return ok ? CLI_OK : CLI_FAIL;
}
