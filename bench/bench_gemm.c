/*
 * GEMM throughput on the shapes petrel trains with: petrel's AVX-512 kernel against
 * OpenBLAS cblas_sgemm (one thread) and, for the small shapes, the reference loop.
 *
 *     bench_gemm            # one line per shape
 *
 * Each case is warmed up, then timed in batches of calls of about 5 ms for 0.2 s; the fastest
 * batch counts. Operands stay resident in cache between calls, as they do between the layers
 * of a training step.
 */
#include "petrel/core.h"
#include "tensor/tensor_impl.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

void openblas_set_num_threads(int num_threads);

typedef struct shape {
    const char *name;
    bool ta, tb;
    int64_t m, n, k;
    float beta;
} shape;

static const shape shapes[] = {
    {"fc1 fwd  y=xW^T", false, true, 64, 256, 784, 0.0f},
    {"fc2 fwd  y=xW^T", false, true, 64, 10, 256, 0.0f},
    {"fc1 dW  +=dY^T x", true, false, 256, 784, 64, 1.0f},
    {"fc2 dW  +=dY^T x", true, false, 10, 256, 64, 1.0f},
    {"fc2 dX   =dY W", false, false, 64, 256, 10, 0.0f},
    {"fc1 dX   =dY W", false, false, 64, 784, 256, 0.0f},
    {"conv1 fwd W col", false, false, 16, 784, 9, 0.0f},
    {"conv2 fwd W col", false, false, 32, 196, 144, 0.0f},
    {"conv1 dW dY col^T", false, true, 16, 9, 784, 1.0f},
    {"conv2 dW dY col^T", false, true, 32, 144, 196, 1.0f},
    {"conv2 dcol W^T dY", true, false, 144, 196, 32, 0.0f},
};

typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);

static void gemm_openblas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

static void *xmalloc(size_t bytes) {
    void *p = petrel_malloc(bytes);
    if (!p) {
        fprintf(stderr, "bench_gemm: %s\n", petrel_errmsg());
        exit(1);
    }
    return p;
}

/* GFLOP/s (flops per ns) of fn on shape s: the fastest of the batches of calls (about 5 ms
 * each) run in 0.2 s. Short batches and the best of many keep the figure steady on a machine
 * where other processes come and go. */
static double measure(gemm_fn *fn, const shape *s, const float *A, const float *B, float *C) {
    const int64_t lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
    const double flops = 2.0 * (double)s->m * (double)s->n * (double)s->k;
    /* The 1/64 keeps accumulating (beta 1) cases finite over many calls. */
    const float alpha = s->beta != 0.0f ? 1.0f / 64 : 1.0f;

    int64_t reps = 1;
    for (;;) { /* warm up and size a batch */
        uint64_t t0 = petrel_now_ns();
        for (int64_t r = 0; r < reps; r++)
            fn(s->ta, s->tb, s->m, s->n, s->k, alpha, A, lda, B, ldb, s->beta, C, s->n);
        uint64_t dt = petrel_now_ns() - t0;
        if (dt > 5000000 || reps > (1 << 24)) break;
        reps *= 2;
    }
    double best = 1e30;
    const uint64_t start = petrel_now_ns();
    for (int batch = 0; batch < 5 || petrel_now_ns() - start < 200000000; batch++) {
        uint64_t t0 = petrel_now_ns();
        for (int64_t r = 0; r < reps; r++)
            fn(s->ta, s->tb, s->m, s->n, s->k, alpha, A, lda, B, ldb, s->beta, C, s->n);
        double per = (double)(petrel_now_ns() - t0) / (double)reps;
        if (per < best) best = per;
    }
    return flops / best;
}

int main(void) {
    openblas_set_num_threads(1);
    const bool avx512 = petreli_gemm_avx512_available();
    if (!avx512) printf("note: this CPU has no AVX-512; the petrel column is the reference\n");

    printf("%-20s %-2s %15s %9s %9s %7s %7s\n", "shape", "op", "M x N x K", "petrel", "openblas",
           "ratio", "ref");
    petrel_rng rng;
    petrel_rng_seed(&rng, 1);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        const size_t na = (size_t)(s->m * s->k), nb = (size_t)(s->k * s->n),
                     nc = (size_t)(s->m * s->n);
        float *A = xmalloc(na * sizeof(float)), *B = xmalloc(nb * sizeof(float)),
              *C = xmalloc(nc * sizeof(float));
        for (size_t e = 0; e < na; e++) A[e] = petrel_rng_normal(&rng);
        for (size_t e = 0; e < nb; e++) B[e] = petrel_rng_normal(&rng);
        for (size_t e = 0; e < nc; e++) C[e] = 0.0f;

        double mine = measure(avx512 ? petreli_gemm_avx512 : petreli_gemm_ref, s, A, B, C);
        double blas = measure(gemm_openblas, s, A, B, C);
        char ref[16] = "-";
        if (s->m * s->n * s->k <= 1 << 20)
            snprintf(ref, sizeof ref, "%.2f", measure(petreli_gemm_ref, s, A, B, C));
        char dims[32];
        snprintf(dims, sizeof dims, "%lldx%lldx%lld", (long long)s->m, (long long)s->n,
                 (long long)s->k);
        printf("%-20s %c%c %15s %9.1f %9.1f %6.2fx %7s\n", s->name, s->ta ? 'T' : 'N',
               s->tb ? 'T' : 'N', dims, mine, blas, mine / blas, ref);
        fflush(stdout);
        petrel_free(A);
        petrel_free(B);
        petrel_free(C);
    }
    printf("GFLOP/s, single thread; ratio = petrel / openblas\n");
    return 0;
}
