/*
 * petrel bench dp: data-parallel training throughput against one petrel process and
 * PyTorch DistributedDataParallel, in the same run, on the same job.
 *
 * The job: MLP 784-256-10 (ReLU) on Fashion-MNIST, softmax cross-entropy, SGD lr 0.1,
 * one epoch, seed 1. Cases, each a subprocess of this bench (bench_exec):
 *   single     petrel train --batch 64 --epochs 1 (one process, one thread)
 *   allreduce  petrel train --workers 2 --comm allreduce --batch 32 --epochs 1: two
 *   sfb        processes on this host (petrel's launcher, shared-memory links), each a
 *   hybrid     batch of 32 per step, so 64 per step in all, as `single`
 *   ddp        /usr/bin/python3 bench/ddp_train.py: two processes, DDP over gloo, batch
 *              32 each, one thread each, the data preloaded (see the script)
 * A petrel case's figures come from its DIR/metrics.jsonl: samples_per_sec and
 * test_accuracy of the "final" event (samples of all workers over the epoch's training
 * steps, evaluation excluded), and from the "epoch" event compute_s (forward and
 * backward), exposed_comm_s (waiting for the gradients after backward) and bytes_sent
 * (collective payload of member 0). The cases take turns (single, allreduce, sfb,
 * hybrid, ddp) for `rounds` rounds; each figure is the median over the rounds.
 */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PYTHON     "/usr/bin/python3"
#define MAX_ROUNDS 5
#define RUN_S      180  /* bound on one case, start to exit */
#define SAME_ACC   0.01 /* "the same accuracy": within one percentage point */

typedef enum dp_case {
    CASE_SINGLE,
    CASE_ALLREDUCE,
    CASE_SFB,
    CASE_HYBRID,
    CASE_DDP,
    CASE_COUNT
} dp_case;

static const char *const case_name[CASE_COUNT] = {"single", "allreduce", "sfb", "hybrid", "ddp"};

/* One run of a case. */
typedef struct run_result {
    bool ok;
    double sps, accuracy, train_loss;
    double compute_s, exposed_s, comm_s; /* petrel data-parallel only */
    double bytes_sent;
    int64_t steps;
} run_result;

typedef struct results {
    run_result run[CASE_COUNT][MAX_ROUNDS];
    bool ok[CASE_COUNT]; /* every round ran */
    run_result med[CASE_COUNT];
    char why[CASE_COUNT][400]; /* why a case failed */
    char torch_version[32];
} results;

/* ---- metrics.jsonl ---------------------------------------------------------------------- */

/* The number after "key": in line. */
static bool json_num(const char *line, const char *key, double *out) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *at = strstr(line, pat);
    if (!at) return false;
    char *end;
    double v = strtod(at + strlen(pat), &end);
    if (end == at + strlen(pat)) return false;
    *out = v;
    return true;
}

/* The last line of text that contains needle, into out. */
static bool last_with(const char *text, const char *needle, char *out, size_t size) {
    bool found = false;
    for (const char *line = text; line && *line;) {
        size_t len = strcspn(line, "\n");
        char buf[4096];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), line);
        if (strstr(buf, needle)) {
            snprintf(out, size, "%s", buf);
            found = true;
        }
        line += len + (line[len] == '\n');
    }
    return found;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = petrel_malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - 1 - len, f);
        if (len < cap - 1) break;
        char *bigger = petrel_malloc(cap * 2);
        if (bigger) memcpy(bigger, buf, len);
        petrel_free(buf);
        buf = bigger;
        cap *= 2;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

/* The figures of a petrel run from dir/metrics.jsonl. */
static bool read_metrics(const char *dir, run_result *r, char *why, size_t why_len) {
    char path[1200], final[4096], epoch[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = read_file(path);
    if (!text) {
        snprintf(why, why_len, "cannot read %.300s: %s", path, strerror(errno));
        return false;
    }
    bool ok = last_with(text, "\"event\":\"final\"", final, sizeof final) &&
              json_num(final, "samples_per_sec", &r->sps) &&
              json_num(final, "test_accuracy", &r->accuracy) &&
              json_num(final, "train_loss", &r->train_loss);
    double steps = 0;
    if (ok && last_with(text, "\"event\":\"epoch\"", epoch, sizeof epoch)) {
        json_num(epoch, "compute_s", &r->compute_s);
        json_num(epoch, "exposed_comm_s", &r->exposed_s);
        json_num(epoch, "comm_s", &r->comm_s);
        json_num(epoch, "bytes_sent", &r->bytes_sent);
        json_num(epoch, "step", &steps);
    }
    r->steps = (int64_t)steps;
    petrel_free(text);
    if (!ok) snprintf(why, why_len, "%.300s has no complete \"final\" event", path);
    return ok;
}

/* ---- the runs ------------------------------------------------------------------------------ */

typedef struct setup {
    char self[1024];   /* this executable */
    char script[1024]; /* ddp_train.py */
    char data[1024];   /* the Fashion-MNIST directory, for python */
    char out[1024];    /* where the runs write */
    bool keep;         /* out was given: leave the runs there */
    bool ddp;
} setup;

/* The last non-empty line of text, into out. */
static void last_line(const char *text, char *out, size_t size) {
    out[0] = '\0';
    for (const char *line = text; line && *line;) {
        size_t len = strcspn(line, "\n");
        if (len > 0) snprintf(out, size, "%.*s", (int)len, line);
        line += len + (line[len] == '\n');
    }
}

static void remove_run(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
    unlink(path);
    rmdir(dir);
}

static bool run_petrel(const setup *s, dp_case k, int round, run_result *r, char *why,
                       size_t why_len) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/%s-%d", s->out, case_name[k], round + 1);
    char *argv[20];
    int a = 0;
    argv[a++] = (char *)s->self;
    argv[a++] = "train";
    argv[a++] = "--model";
    argv[a++] = "mlp";
    argv[a++] = "--hidden";
    argv[a++] = "256";
    argv[a++] = "--epochs";
    argv[a++] = "1";
    argv[a++] = "--seed";
    argv[a++] = "1";
    argv[a++] = "--batch";
    if (k == CASE_SINGLE) {
        argv[a++] = "64";
    } else {
        argv[a++] = "32";
        argv[a++] = "--workers";
        argv[a++] = "2";
        argv[a++] = "--comm";
        argv[a++] = (char *)case_name[k];
    }
    argv[a++] = "--out";
    argv[a++] = dir;
    argv[a++] = "--quiet";
    argv[a++] = "--no-progress";
    argv[a] = NULL;
    char *out = NULL, how[320];
    int rc = bench_exec(argv, NULL, RUN_S, &out, how, sizeof how);
    bool ok = rc == 0;
    if (!ok) {
        char last[200];
        last_line(out, last, sizeof last);
        snprintf(why, why_len, "%.150s%s%.200s", how[0] ? how : "petrel train failed",
                 last[0] ? ": " : "", last);
    }
    petrel_free(out);
    ok = ok && read_metrics(dir, r, why, why_len);
    if (!s->keep) remove_run(dir);
    return ok;
}

static bool run_ddp(const setup *s, run_result *r, char *version, size_t vlen, char *why,
                    size_t why_len) {
    if (access(PYTHON, X_OK) != 0) {
        snprintf(why, why_len, "%s not found", PYTHON);
        return false;
    }
    if (access(s->script, R_OK) != 0) {
        snprintf(why, why_len, "%.200s not found (set PETREL_SOURCE_DIR or --ddp)", s->script);
        return false;
    }
    char *argv[] = {PYTHON,      (char *)s->script,
                    "--workers", "2",
                    "--batch",   "32",
                    "--lr",      "0.1",
                    "--epochs",  "1",
                    "--hidden",  "256",
                    "--data",    (char *)s->data,
                    "--seed",    "1",
                    NULL};
    char *out = NULL, how[320];
    int rc = bench_exec(argv, NULL, RUN_S, &out, how, sizeof how);
    bool ok = false;
    for (const char *line = out; line && *line;) {
        size_t len = strcspn(line, "\n");
        int workers, batch, epochs;
        char v[32];
        if (sscanf(line,
                   "ddp workers=%d batch=%d epochs=%d samples_per_sec=%lf test_accuracy=%lf "
                   "train_loss=%lf epoch_s=%*f version=%31s",
                   &workers, &batch, &epochs, &r->sps, &r->accuracy, &r->train_loss, v) == 7) {
            ok = true;
            snprintf(version, vlen, "%s", v);
        }
        line += len + (line[len] == '\n');
    }
    if (rc != 0) ok = false;
    if (!ok) {
        char last[200];
        last_line(out, last, sizeof last);
        snprintf(why, why_len, "%.150s%s%.200s", how[0] ? how : "python failed",
                 last[0] ? ": " : "", last);
    }
    petrel_free(out);
    return ok;
}

/* ---- output ---------------------------------------------------------------------------- */

static int cmp_run(const void *a, const void *b) {
    double x = ((const run_result *)a)->sps, y = ((const run_result *)b)->sps;
    return (x > y) - (x < y);
}

/* The run with the median samples/s stands for the case (its other figures with it). */
static void summarize(int rounds, results *r) {
    for (int k = 0; k < CASE_COUNT; k++) {
        if (!r->ok[k]) continue;
        run_result v[MAX_ROUNDS];
        memcpy(v, r->run[k], sizeof v);
        qsort(v, (size_t)rounds, sizeof v[0], cmp_run);
        r->med[k] = v[rounds / 2];
        if (rounds % 2 == 0) r->med[k].sps = 0.5 * (v[rounds / 2 - 1].sps + v[rounds / 2].sps);
    }
}

static void print_results(const results *r) {
    const run_result *single = r->ok[CASE_SINGLE] ? &r->med[CASE_SINGLE] : NULL;
    const run_result *ddp = r->ok[CASE_DDP] ? &r->med[CASE_DDP] : NULL;
    for (int k = 0; k < CASE_COUNT; k++) {
        if (!r->ok[k]) continue;
        const run_result *m = &r->med[k];
        printf("%-9s  %-21s  samples/s %7.0f  test_accuracy %.4f", case_name[k],
               k == CASE_SINGLE ? "1 process, batch 64"
               : k == CASE_DDP  ? "2 workers x 32, gloo"
                                : "2 workers x 32",
               m->sps, m->accuracy);
        if (ddp) printf("  vs ddp %5.2fx", m->sps / ddp->sps);
        if (single) printf("  vs single %4.2fx", m->sps / single->sps);
        if (k != CASE_SINGLE && k != CASE_DDP && m->steps > 0)
            printf("  per step: compute %.0f us, exposed comm %.0f us, in collectives %.0f us, "
                   "%.0f KB sent",
                   m->compute_s / (double)m->steps * 1e6, m->exposed_s / (double)m->steps * 1e6,
                   m->comm_s / (double)m->steps * 1e6, m->bytes_sent / (double)m->steps * 1e-3);
        printf("\n");
    }
}

/* The targets, per --comm mode: each met or missed with the figure. */
static void print_targets(const results *r) {
    const run_result *single = r->ok[CASE_SINGLE] ? &r->med[CASE_SINGLE] : NULL;
    const run_result *ddp = r->ok[CASE_DDP] ? &r->med[CASE_DDP] : NULL;
    for (int k = CASE_ALLREDUCE; k <= CASE_HYBRID; k++) {
        if (!r->ok[k]) continue;
        const run_result *m = &r->med[k];
        if (ddp)
            printf("target %s >= 3x DDP samples/s: %s (%.2fx)\n", case_name[k],
                   m->sps >= 3 * ddp->sps ? "met" : "MISSED", m->sps / ddp->sps);
        if (single) {
            bool fast = m->sps >= 1.4 * single->sps;
            bool same = m->accuracy >= single->accuracy - SAME_ACC;
            printf("target %s >= 1.4x single-process samples/s at the same accuracy: %s (%.2fx; "
                   "accuracy %.4f against %.4f%s)\n",
                   case_name[k], fast && same ? "met" : "MISSED", m->sps / single->sps, m->accuracy,
                   single->accuracy, same ? "" : ", lower");
        }
    }
}

/* ---- the command -------------------------------------------------------------------------- */

static void dp_usage(FILE *f) {
    fprintf(f,
            "usage: petrel bench dp [options]\n"
            "\n"
            "One epoch of the MLP 784-256-10 on Fashion-MNIST (SGD lr 0.1, seed 1) as petrel\n"
            "train --workers 2 --batch 32 with each --comm (allreduce, sfb, hybrid), as one\n"
            "petrel process with batch 64, and as PyTorch DistributedDataParallel (gloo, 2\n"
            "processes of one thread, batch 32 each; bench/ddp_train.py run by %s).\n"
            "Prints one line per case: samples/s over the epoch's training steps, test\n"
            "accuracy after it, the ratios to DDP and to the single process and, for petrel's\n"
            "data-parallel cases, compute and exposed communication per step from\n"
            "metrics.jsonl; then the targets of docs/bench.md. Without PyTorch the petrel\n"
            "figures still print and it exits 0. Takes 40 to 70 s (--quick: about 20 s).\n"
            "\n"
            "options (default in brackets):\n"
            "  --quick        one round [3 rounds, medians]\n"
            "  --rounds N     rounds of all cases, 1..%d [3]\n"
            "  --ddp PATH     the DDP script [$PETREL_SOURCE_DIR/bench/ddp_train.py, else the\n"
            "                 source tree this petrel was built from]\n"
            "  --no-ddp       leave PyTorch out\n"
            "  --out DIR      keep every run's metrics.jsonl and model.ckpt in DIR/<case>-<round>\n"
            "                 [a temporary directory, removed]\n"
            "  -h, --help     show this help\n",
            PYTHON, MAX_ROUNDS);
}

/* The DDP script: $PETREL_SOURCE_DIR/bench/ddp_train.py, else the source tree of this
 * file (__FILE__ is .../tools/petrel/bench_dp.c). */
static void default_script(char *buf, size_t size) {
    const char *src = getenv("PETREL_SOURCE_DIR");
    if (src && *src) {
        snprintf(buf, size, "%s/bench/ddp_train.py", src);
        return;
    }
    const char *file = __FILE__, *at = strstr(file, "tools/petrel/bench_dp.c");
    snprintf(buf, size, "%.*sbench/ddp_train.py", at ? (int)(at - file) : 0, file);
}

int bench_dp(int argc, char **argv) {
    enum { OPT_QUICK = 256, OPT_ROUNDS, OPT_DDP, OPT_NO_DDP, OPT_OUT };
    static const struct option longopts[] = {{"quick", no_argument, 0, OPT_QUICK},
                                             {"rounds", required_argument, 0, OPT_ROUNDS},
                                             {"ddp", required_argument, 0, OPT_DDP},
                                             {"no-ddp", no_argument, 0, OPT_NO_DDP},
                                             {"out", required_argument, 0, OPT_OUT},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    setup s = {.ddp = true};
    default_script(s.script, sizeof s.script);
    int rounds = 3, c;
    int64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_QUICK:
            rounds = 1;
            break;
        case OPT_ROUNDS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > MAX_ROUNDS)
                return cli_usage_error("bench dp ", "--rounds wants 1..%d, got '%s'", MAX_ROUNDS,
                                       optarg);
            rounds = (int)v;
            break;
        case OPT_DDP:
            snprintf(s.script, sizeof s.script, "%s", optarg);
            break;
        case OPT_NO_DDP:
            s.ddp = false;
            break;
        case OPT_OUT:
            snprintf(s.out, sizeof s.out, "%s", optarg);
            s.keep = true;
            break;
        case 'h':
            dp_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("bench dp ", "bad option");
        }
    }
    if (optind < argc)
        return cli_usage_error("bench dp ", "unexpected argument '%s'", argv[optind]);

    ssize_t n = readlink("/proc/self/exe", s.self, sizeof s.self - 1);
    if (n <= 0) return cli_fail(PETREL_ERR_IO, "bench dp", "cannot read /proc/self/exe");
    s.self[n] = '\0';
    const char *data_env = getenv("PETREL_DATA_DIR");
    snprintf(s.data, sizeof s.data, "%.1000s/fashion-mnist",
             data_env && *data_env ? data_env : "/usr/share/datasets");
    if (s.keep) {
        if (petrel_mkdirs(s.out) != PETREL_OK)
            return cli_fail(PETREL_ERR_IO, "bench dp --out", NULL);
    } else {
        snprintf(s.out, sizeof s.out, "/tmp/petrel-bench-dp-XXXXXX");
        if (!mkdtemp(s.out))
            return cli_fail(PETREL_ERR_IO, "bench dp", "cannot make a directory in /tmp");
    }
    results *r = petrel_calloc(1, sizeof *r);
    if (!r) return cli_fail(PETREL_ERR_NOMEM, "bench dp", NULL);
    for (int k = 0; k < CASE_COUNT; k++) r->ok[k] = k != CASE_DDP || s.ddp;

    const double t0 = petrel_now_s();
    printf("petrel bench dp: MLP 784-256-10, Fashion-MNIST, SGD lr 0.1, 1 epoch, seed 1; "
           "petrel train (%s) against PyTorch DDP (%s); %d round%s\n",
           s.self, s.ddp ? PYTHON : "--no-ddp", rounds, rounds > 1 ? "s" : "");
    fflush(stdout);
    for (int round = 0; round < rounds; round++)
        for (int k = 0; k < CASE_COUNT; k++) {
            if (!r->ok[k]) continue; /* not asked for, or failed in an earlier round */
            r->ok[k] = k == CASE_DDP ? run_ddp(&s, &r->run[k][round], r->torch_version,
                                               sizeof r->torch_version, r->why[k], sizeof r->why[k])
                                     : run_petrel(&s, (dp_case)k, round, &r->run[k][round],
                                                  r->why[k], sizeof r->why[k]);
        }
    if (!s.keep) rmdir(s.out);
    summarize(rounds, r);
    print_results(r);
    if (!s.ddp)
        printf("ddp: skipped (--no-ddp)\n");
    else if (!r->ok[CASE_DDP])
        printf("ddp: unavailable%s: %s\n",
               strstr(r->why[CASE_DDP], "torch") || strstr(r->why[CASE_DDP], PYTHON)
                   ? " (install python3-torch: scripts/deps.sh --bench)"
                   : "",
               r->why[CASE_DDP]);
    else
        printf("ddp: torch %s, gloo, %s %s\n", r->torch_version, PYTHON, s.script);
    print_targets(r);
    printf("samples/s: all workers' samples over the epoch's training steps (evaluation "
           "excluded), %s%d round%s; test_accuracy after the epoch; same accuracy = within "
           "%.0f point of single's; %.0f s in all\n",
           rounds > 1 ? "median of " : "", rounds, rounds > 1 ? "s" : "", SAME_ACC * 100,
           petrel_now_s() - t0);
    bool ok = true;
    for (int k = 0; k < CASE_COUNT; k++)
        if (k != CASE_DDP && !r->ok[k]) {
            ok = false;
            fprintf(stderr, "petrel: error: bench dp: %s: %s\n", case_name[k], r->why[k]);
        }
    if (s.keep) printf("runs kept in %s\n", s.out);
    petrel_free(r);
    if (!ok) {
        fprintf(stderr, "hint: petrel bench dp --quick --out DIR keeps each run's metrics.jsonl\n");
        return CLI_FAIL;
    }
    return CLI_OK;
}
