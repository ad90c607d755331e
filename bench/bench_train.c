/*
 * Training throughput on Fashion-MNIST, single thread, against PyTorch in the same run.
 *
 *     bench_train                      # both models, then the PyTorch reference
 *     bench_train --no-torch           # petrel only
 *     bench_train --torch PATH         # another torch_train.py
 *
 * Two cases, both SGD lr 0.1, batch 64, softmax cross-entropy: (a) MLP 784-256-10 ReLU and
 * (b) softmax regression 784-10. For each, two figures in samples/s:
 *   step   the steady-state step (forward, loss, backward, SGD update) on consecutive
 *          batches in file order, read in place: 200 warm-up steps, then the median of
 *          3 runs of 2000 steps;
 *   epoch  a full shuffled epoch as petrel_train runs it (permutation, batch gathering,
 *          938 steps with a last short batch of 32): the median of 3 epochs.
 * PyTorch does the identical job (bench/torch_train.py, run as /usr/bin/python3, one
 * thread) and the ratio is petrel / torch. GFLOP/s counts the GEMMs of forward and
 * backward at the petrel step rate; the FP32 peak is measured here with an FMA loop.
 * docs/bench.md explains every number. Without PyTorch the petrel figures still print
 * and the bench exits 0.
 *
 * The torch script is found by --torch PATH, else $PETREL_SOURCE_DIR/bench/torch_train.py,
 * else beside this source file (__FILE__).
 */
#include "apps.h"
#include "petrel/petrel.h"
#include "tensor/tensor_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PYTHON       "/usr/bin/python3"
#define BATCH        64
#define LR           0.1f
#define WARMUP_STEPS 200
#define TIMED_STEPS  2000
#define REPEATS      3
#define EPOCHS       3

static void die(const char *what, petrel_err err) {
    fprintf(stderr, "bench_train: error: %s: %s: %s\n", what, petrel_strerror(err),
            petrel_errmsg());
    exit(1);
}

/* ---- FP32 peak ------------------------------------------------------------------ */

#if defined(__x86_64__)
#include <immintrin.h>

/* 12 independent chains a = a * m + c: enough to cover FMA latency times ports on
 * current x86 cores, so the loop runs at FMA throughput. m and c keep a near 1 (no
 * overflow, no denormals). The sum goes to memory (*out): a function without side
 * effects could be moved out of the timed region or merged with the previous call. */
__attribute__((target("avx512f"))) static void fma_loop_avx512(int64_t iters, float *out) {
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    /* Distinct starting values, or the compiler merges the identical chains into one. */
    __m512 a0 = _mm512_set1_ps(1.00f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f),
           a3 = _mm512_set1_ps(1.03f), a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f),
           a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f), a8 = _mm512_set1_ps(1.08f),
           a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.10f), a11 = _mm512_set1_ps(1.11f);
    for (int64_t i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, m, c), a1 = _mm512_fmadd_ps(a1, m, c);
        a2 = _mm512_fmadd_ps(a2, m, c), a3 = _mm512_fmadd_ps(a3, m, c);
        a4 = _mm512_fmadd_ps(a4, m, c), a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c), a7 = _mm512_fmadd_ps(a7, m, c);
        a8 = _mm512_fmadd_ps(a8, m, c), a9 = _mm512_fmadd_ps(a9, m, c);
        a10 = _mm512_fmadd_ps(a10, m, c), a11 = _mm512_fmadd_ps(a11, m, c);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    *out = _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static void fma_loop_avx2(int64_t iters, float *out) {
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    __m256 a0 = _mm256_set1_ps(1.00f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f),
           a3 = _mm256_set1_ps(1.03f), a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f),
           a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f), a8 = _mm256_set1_ps(1.08f),
           a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.10f), a11 = _mm256_set1_ps(1.11f);
    for (int64_t i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c), a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c), a9 = _mm256_fmadd_ps(a9, m, c);
        a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float v[8];
    _mm256_storeu_ps(v, s);
    *out = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}

static float peak_sink; /* the FMA loops' results */
#endif

/* Single-core FP32 FMA peak in GFLOP/s: the best of 5 runs of about 50 ms each; 0 when
 * the CPU has neither AVX-512 nor AVX2 with FMA. *isa names the instructions used. */
static double measure_peak(const char **isa) {
#if !defined(__x86_64__)
    *isa = "none";
    return 0;
#else
    __builtin_cpu_init();
    void (*loop)(int64_t, float *);
    int lanes;
    if (__builtin_cpu_supports("avx512f"))
        loop = fma_loop_avx512, lanes = 16, *isa = "AVX-512";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        loop = fma_loop_avx2, lanes = 8, *isa = "AVX2";
    else {
        *isa = "none";
        return 0;
    }
    int64_t iters = 1 << 16;
    for (;;) { /* warm up (clock ramp) and size a run of about 50 ms */
        uint64_t t0 = petrel_now_ns();
        loop(iters, &peak_sink);
        uint64_t dt = petrel_now_ns() - t0;
        if (dt > 50000000) break;
        iters *= 2;
    }
    double best = 0;
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = petrel_now_ns();
        loop(iters, &peak_sink);
        double flops = (double)iters * 12.0 * lanes * 2.0;
        double gflops = flops / (double)(petrel_now_ns() - t0);
        if (gflops > best) best = gflops;
    }
    return best;
#endif
}

/* ---- petrel ------------------------------------------------------------------- */

typedef struct trainer {
    petrel_model *m;
    petrel_graph *g;
    petrel_optim *opt;
} trainer;

static void trainer_init(trainer *t, const char *name) {
    petrel_model_options o = petrel_model_options_default();
    o.name = name;
    petrel_err err;
    if ((err = petrel_model_new(&t->m, &o)) != PETREL_OK) die("building the model", err);
    if ((err = petrel_graph_new(&t->g, 0)) != PETREL_OK) die("making a graph", err);
    err = petrel_optim_new(&t->opt, petrel_optim_config_default(PETREL_OPTIM_SGD, LR),
                           petrel_params_count(t->m->params));
    if (err != PETREL_OK) die("making the optimizer", err);
}

static void trainer_fini(trainer *t) {
    petrel_optim_free(t->opt);
    petrel_graph_free(t->g);
    petrel_model_free(t->m);
}

/* One training step on x (n, in_dim), y (n): the step petrel_train runs. */
static void step(trainer *t, float *x, const int32_t *y, int64_t n) {
    float loss;
    petrel_err err = petrel_train_step(t->m, t->g, t->opt, x, y, n, &loss);
    if (err != PETREL_OK) die("training step", err);
    if (!isfinite(loss)) die("training diverged", PETREL_ERR_STATE);
}

/* Runs count steps on consecutive full batches in file order, from batch *at on. */
static void run_steps(trainer *t, const petrel_dataset *d, int64_t count, int64_t *at) {
    const int64_t full = d->n / BATCH;
    for (int64_t i = 0; i < count; i++, (*at)++) {
        int64_t b = *at % full;
        step(t, d->x + b * BATCH * d->dim, d->y + b * BATCH, BATCH);
    }
}

/* Steady-state step rate, samples/s: median of REPEATS runs of TIMED_STEPS. */
static double petrel_step_sps(trainer *t, const petrel_dataset *d) {
    int64_t at = 0;
    run_steps(t, d, WARMUP_STEPS, &at);
    double sps[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t0 = petrel_now_s();
        run_steps(t, d, TIMED_STEPS, &at);
        sps[r] = (double)(TIMED_STEPS * BATCH) / (petrel_now_s() - t0);
    }
    return petrel_median(sps, REPEATS);
}

/* Full shuffled epochs as petrel_train runs them (the batcher permutes and gathers),
 * timed from the permutation to the last step: median of EPOCHS epochs, samples/s. */
static double petrel_epoch_sps(trainer *t, const petrel_dataset *d) {
    petrel_batcher_config bc = petrel_batcher_config_default();
    bc.batch = BATCH;
    petrel_batcher *it = NULL;
    petrel_err err = petrel_batcher_new(&it, d, bc);
    if (err != PETREL_OK) die("making the batcher", err);
    float *x = petrel_malloc((size_t)(BATCH * d->dim) * sizeof(float));
    int32_t *y = petrel_malloc(BATCH * sizeof(int32_t));
    if (!x || !y) die("allocating a batch", PETREL_ERR_NOMEM);
    double sps[EPOCHS];
    for (int e = 0; e < EPOCHS; e++) {
        double t0 = petrel_now_s();
        petrel_batcher_start_epoch(it, e);
        int64_t n, seen = 0;
        while ((n = petrel_batcher_next(it, x, y)) > 0) {
            step(t, x, y, n);
            seen += n;
        }
        sps[e] = (double)seen / (petrel_now_s() - t0);
    }
    petrel_free(x);
    petrel_free(y);
    petrel_batcher_free(it);
    return petrel_median(sps, EPOCHS);
}

/* ---- PyTorch ------------------------------------------------------------------ */

/* Appends s to out in single quotes, for /bin/sh. */
static void sh_quote(char *out, size_t size, const char *s) {
    size_t w = strlen(out);
    if (w + 1 < size) out[w++] = '\'';
    for (; *s && w + 5 < size; s++) {
        if (*s == '\'') {
            memcpy(out + w, "'\\''", 4);
            w += 4;
        } else
            out[w++] = *s;
    }
    if (w + 1 < size) out[w++] = '\'';
    out[w] = '\0';
}

typedef struct torch_result {
    bool ok;
    double step_sps, epoch_sps;
    char version[32];
    char why[200]; /* when !ok: the last line python printed, or what was missing */
} torch_result;

static torch_result run_torch(const char *script, const char *model, const char *data_dir) {
    torch_result r = {0};
    if (access(PYTHON, X_OK) != 0) {
        snprintf(r.why, sizeof r.why, "%s not found", PYTHON);
        return r;
    }
    if (access(script, R_OK) != 0) {
        snprintf(r.why, sizeof r.why, "%.120s not found (set PETREL_SOURCE_DIR or --torch)",
                 script);
        return r;
    }
    char cmd[8192] = PYTHON " ";
    sh_quote(cmd, sizeof cmd, script);
    size_t w = strlen(cmd);
    snprintf(cmd + w, sizeof cmd - w,
             " --model %s --batch %d --lr %g --steps %d --warmup %d "
             "--repeats %d --epochs %d --data ",
             model, BATCH, (double)LR, TIMED_STEPS, WARMUP_STEPS, REPEATS, EPOCHS);
    sh_quote(cmd, sizeof cmd, data_dir);
    w = strlen(cmd);
    snprintf(cmd + w, sizeof cmd - w, " 2>&1");
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(r.why, sizeof r.why, "cannot start %s", PYTHON);
        return r;
    }
    char line[1024];
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = '\0';
        char m[32];
        if (sscanf(line, "torch model=%31s step_sps=%lf epoch_sps=%lf version=%31s", m, &r.step_sps,
                   &r.epoch_sps, r.version) >= 3 &&
            strcmp(m, model) == 0)
            r.ok = true;
        else if (line[0])
            snprintf(r.why, sizeof r.why, "%.199s", line);
    }
    int status = pclose(p);
    if (status != 0) r.ok = false;
    if (!r.ok && !r.why[0]) snprintf(r.why, sizeof r.why, "python exited with status %d", status);
    return r;
}

/* ---- main ----------------------------------------------------------------------- */

typedef struct bench_case {
    const char *model; /* petrel_model_new and torch_train.py name */
    const char *label;
    double flops_per_sample;
} bench_case;

/* FLOPs per sample, 2*IN*OUT per GEMM: forward of every layer, the weight gradient of
 * every layer, and the input gradient of every layer but the first (x needs none).
 * Bias, ReLU, softmax and the SGD update are not counted. */
static const bench_case cases[] = {
    {"mlp", "mlp784-256-10 b64", 2.0 * (784 * 256 * 2 + 256 * 10 * 3)},
    {"softmax", "softmax784-10 b64", 2.0 * (784 * 10 * 2)},
};

static const char *default_script(char *buf, size_t size) {
    const char *src = getenv("PETREL_SOURCE_DIR");
    if (src && *src) {
        snprintf(buf, size, "%s/bench/torch_train.py", src);
        return buf;
    }
    const char *file = __FILE__, *slash = strrchr(file, '/');
    if (slash)
        snprintf(buf, size, "%.*s/torch_train.py", (int)(slash - file), file);
    else
        snprintf(buf, size, "torch_train.py");
    return buf;
}

int main(int argc, char **argv) {
    char script_buf[4096];
    const char *script = default_script(script_buf, sizeof script_buf);
    bool torch = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-torch") == 0)
            torch = false;
        else if (strcmp(argv[i], "--torch") == 0 && i + 1 < argc)
            script = argv[++i];
        else {
            fprintf(stderr, "usage: bench_train [--no-torch] [--torch PATH/torch_train.py]\n");
            return 2;
        }
    }

    const double t_start = petrel_now_s();
    const char *isa;
    const double peak = measure_peak(&isa);

    petrel_dataset *train = NULL;
    petrel_err err = petrel_app_load_data("fashion-mnist", NULL, &train, NULL);
    if (err != PETREL_OK) die("loading Fashion-MNIST", err);
    const char *env = getenv("PETREL_DATA_DIR");
    char data_dir[4200];
    snprintf(data_dir, sizeof data_dir, "%s/fashion-mnist", env ? env : "/usr/share/datasets");

    petrel_kernels_set_threads(1);
    const char *force = getenv("PETREL_GEMM");
    const bool forced_blas = force && strcmp(force, "openblas") == 0;
    const char *gemm = forced_blas                       ? "OpenBLAS (PETREL_GEMM=openblas)"
                       : petreli_gemm_avx512_available() ? "petrel AVX-512 (PETREL_GEMM unset)"
                                                         : "OpenBLAS (no AVX-512)";
    printf("bench_train: Fashion-MNIST %lld samples, SGD lr %g, batch %d, 1 thread\n",
           (long long)train->n, (double)LR, BATCH);
    printf("kernels: %s, GEMM: %s\n", petrel_kernels_current()->name, gemm);
    if (peak > 0)
        printf("FP32 peak: %.1f GFLOP/s measured (%s FMA loop, one core)\n", peak, isa);
    else
        printf("FP32 peak: not measured (no AVX-512 or AVX2+FMA)\n");
    fflush(stdout);

    bool torch_named = false;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const bench_case *bc = &cases[c];
        trainer t = {0};
        trainer_init(&t, bc->model);
        double step_sps = petrel_step_sps(&t, train);
        double epoch_sps = petrel_epoch_sps(&t, train);
        trainer_fini(&t);
        double gflops = step_sps * bc->flops_per_sample * 1e-9;
        char perf[96];
        if (peak > 0)
            snprintf(perf, sizeof perf, "%.1f GFLOP/s = %.0f%% of FP32 peak", gflops,
                     100.0 * gflops / peak);
        else
            snprintf(perf, sizeof perf, "%.1f GFLOP/s", gflops);

        torch_result tr = {0};
        if (torch) tr = run_torch(script, bc->model, data_dir);
        if (tr.ok)
            printf("%s  step: petrel %.0f samples/s  torch %.0f samples/s  ratio %.2fx | "
                   "epoch: petrel %.0f samples/s  torch %.0f samples/s  ratio %.2fx | %s\n",
                   bc->label, step_sps, tr.step_sps, step_sps / tr.step_sps, epoch_sps,
                   tr.epoch_sps, epoch_sps / tr.epoch_sps, perf);
        else {
            printf("%s  step: petrel %.0f samples/s | epoch: petrel %.0f samples/s | %s | "
                   "torch: %s\n",
                   bc->label, step_sps, epoch_sps, perf,
                   torch ? "unavailable (install python3-torch)" : "skipped (--no-torch)");
            if (torch) printf("  torch: %s\n", tr.why);
        }
        if (tr.ok && !torch_named) printf("  (torch %s, %s)\n", tr.version, PYTHON);
        torch_named |= tr.ok;
        fflush(stdout);
    }
    printf("samples/s, median of %d runs; ratio = petrel / torch; %.0f s in all\n", REPEATS,
           petrel_now_s() - t_start);
    petrel_dataset_free(train);
    return 0;
}
