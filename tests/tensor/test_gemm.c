/*
 * GEMM tests: the reference against hand-computed products, then petrel's AVX-512 GEMM
 * against the reference over all transpose combinations, edge sizes, padded leading
 * dimensions, alpha/beta variety and the shapes petrel trains with.
 */
#include "check.h"
#include "tensor/tensor_impl.h"

#define SEED 20240611u

typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);

static int64_t cases_run;

/* ---- the reference against hand-computed results ------------------------ */

/* op(A) = [1 2 3; 4 5 6] (2, 3), op(B) = [7 8; 9 10; 11 12] (3, 2):
 * op(A) op(B) = [58 64; 139 154]. */
static const float a_n[6] = {1, 2, 3, 4, 5, 6};    /* A (2, 3) */
static const float a_t[6] = {1, 4, 2, 5, 3, 6};    /* A^T stored (3, 2) */
static const float b_n[6] = {7, 8, 9, 10, 11, 12}; /* B (3, 2) */
static const float b_t[6] = {7, 9, 11, 8, 10, 12}; /* B^T stored (2, 3) */

static void check_hand(gemm_fn *gemm) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const float *A = ta ? a_t : a_n, *B = tb ? b_t : b_n;
            const int64_t lda = ta ? 2 : 3, ldb = tb ? 3 : 2;

            float C[4] = {NAN, NAN, NAN, NAN};
            gemm(ta, tb, 2, 2, 3, 1.0f, A, lda, B, ldb, 0.0f, C, 2);
            const float want[4] = {58, 64, 139, 154};
            CHECK_TENSOR_NEAR(C, want, 4, 0, 0);

            float D[4] = {1, 2, 3, 4};
            gemm(ta, tb, 2, 2, 3, 0.5f, A, lda, B, ldb, 2.0f, D, 2);
            const float want_d[4] = {31, 36, 75.5f, 85};
            CHECK_TENSOR_NEAR(D, want_d, 4, 0, 0);

            /* ldc 3: the third column of each row is outside C and stays as it is. */
            float E[6] = {1, 2, -7, 3, 4, -7};
            gemm(ta, tb, 2, 2, 3, -1.0f, A, lda, B, ldb, 1.0f, E, 3);
            const float want_e[6] = {-57, -62, -7, -136, -150, -7};
            CHECK_TENSOR_NEAR(E, want_e, 6, 0, 0);
        }

    /* K == 0: C = beta C, and beta == 0 clears NaN. */
    float F[2] = {NAN, NAN};
    gemm(false, false, 1, 2, 0, 1.0f, a_n, 1, b_n, 2, 0.0f, F, 2);
    CHECK(F[0] == 0.0f && F[1] == 0.0f);
    float G[2] = {3, -4};
    gemm(true, true, 1, 2, 0, 1.0f, a_n, 1, b_n, 1, 0.5f, G, 2);
    CHECK(G[0] == 1.5f && G[1] == -2.0f);

    /* alpha == 0 does not read A or B (BLAS semantics): NaN there does not reach C. */
    const float nan4[4] = {NAN, NAN, NAN, NAN};
    float Z[4] = {1, 2, 3, 4};
    gemm(false, false, 2, 2, 2, 0.0f, nan4, 2, nan4, 2, 2.0f, Z, 2);
    const float want_z[4] = {2, 4, 6, 8};
    CHECK_TENSOR_NEAR(Z, want_z, 4, 0, 0);

    /* M == 0 or N == 0 touches nothing. */
    float H[1] = {5};
    gemm(false, false, 0, 1, 3, 1.0f, a_n, 3, b_n, 1, 0.0f, H, 1);
    gemm(false, false, 1, 0, 3, 1.0f, a_n, 3, b_n, 0, 0.0f, H, 0);
    CHECK(H[0] == 5.0f);
}

static void test_ref_hand(void) {
    check_hand(petreli_gemm_ref);
}

static void test_avx512_hand(void) {
    check_hand(petreli_gemm_avx512);
}

/* ---- AVX-512 against the reference --------------------------------------- */

typedef struct gemm_case {
    bool ta, tb;
    int64_t M, N, K;
    float alpha, beta;
    int64_t pad_a, pad_b, pad_c; /* leading dimension minus row length */
    uint64_t seed;
} gemm_case;

/* Exact-size buffers (plain malloc, no rounding) so that ASan sees any read past the end; one
 * element when empty. */
static float *alloc_rows(int64_t rows, int64_t cols, int64_t ld) {
    size_t n = rows > 0 && cols > 0 ? (size_t)((rows - 1) * ld + cols) : 1;
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "test_gemm: out of memory\n");
        exit(1);
    }
    return p;
}

/* Whether element e of a C buffer with row stride ldc lies in the N columns of C. */
static bool is_inside(size_t e, int64_t ldc, int64_t N) {
    return ldc > 0 && (int64_t)(e % (size_t)ldc) < N;
}

/* Runs one case through both kernels and compares. Returns false (and reports) on mismatch. */
static bool run_case(const gemm_case *g, int line) {
    cases_run++;
    petrel_rng rng;
    petrel_rng_seed(&rng, g->seed);
    const int64_t a_rows = g->ta ? g->K : g->M, a_cols = g->ta ? g->M : g->K;
    const int64_t b_rows = g->tb ? g->N : g->K, b_cols = g->tb ? g->K : g->N;
    const int64_t lda = a_cols + g->pad_a, ldb = b_cols + g->pad_b, ldc = g->N + g->pad_c;

    float *A = alloc_rows(a_rows, a_cols, lda), *B = alloc_rows(b_rows, b_cols, ldb);
    float *C = alloc_rows(g->M, g->N, ldc), *R = alloc_rows(g->M, g->N, ldc);
    const size_t na = a_rows && a_cols ? (size_t)((a_rows - 1) * lda + a_cols) : 0;
    const size_t nb = b_rows && b_cols ? (size_t)((b_rows - 1) * ldb + b_cols) : 0;
    const size_t nc = g->M && g->N ? (size_t)((g->M - 1) * ldc + g->N) : 0;
    double max_a = 0, max_b = 0, max_c = 0;
    for (size_t e = 0; e < na; e++) {
        A[e] = 2.0f * petrel_rng_uniform(&rng) - 1.0f;
        max_a = fmax(max_a, fabs(A[e]));
    }
    for (size_t e = 0; e < nb; e++) {
        B[e] = 2.0f * petrel_rng_uniform(&rng) - 1.0f;
        max_b = fmax(max_b, fabs(B[e]));
    }
    /* beta == 0: C starts as NaN, which must not leak into the result. Padding between rows
     * of C holds a marker that must survive. */
    for (size_t e = 0; e < nc; e++) {
        bool inside = is_inside(e, ldc, g->N);
        C[e] = !inside ? -12345.0f : g->beta == 0.0f ? NAN : 4.0f * petrel_rng_uniform(&rng) - 2;
        if (inside && g->beta != 0.0f) max_c = fmax(max_c, fabs(C[e]));
        R[e] = C[e];
    }

    petrel_alloc_stats before = petrel_alloc_get_stats();
    petreli_gemm_avx512(g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, lda, B, ldb, g->beta, C, ldc);
    petrel_alloc_stats after = petrel_alloc_get_stats();
    petreli_gemm_ref(g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, lda, B, ldb, g->beta, R, ldc);

    /* Float accumulation of K products, against a double reference. */
    const double tol =
        1e-5 * (fabs(g->alpha) * (double)g->K * max_a * max_b + fabs(g->beta) * max_c) + 1e-30;
    bool ok = true;
    char why[256] = "";
    if (after.calls != before.calls) {
        ok = false;
        snprintf(why, sizeof why, "%llu petrel allocations inside the GEMM",
                 (unsigned long long)(after.calls - before.calls));
    }
    for (size_t e = 0; e < nc && ok; e++) {
        bool inside = is_inside(e, ldc, g->N);
        double d = fabs((double)C[e] - (double)R[e]);
        if (inside ? !(d <= tol) : C[e] != -12345.0f) {
            ok = false;
            snprintf(why, sizeof why, "C[%lld][%lld] = %.9g, reference %.9g (tol %.3g)",
                     (long long)(e / (size_t)ldc), (long long)(e % (size_t)ldc), (double)C[e],
                     (double)R[e], tol);
        }
    }
    if (!ok)
        check_fail(__FILE__, line,
                   "%c%c M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%lld/%lld/%lld seed=%llu: %s",
                   g->ta ? 'T' : 'N', g->tb ? 'T' : 'N', (long long)g->M, (long long)g->N,
                   (long long)g->K, (double)g->alpha, (double)g->beta, (long long)g->pad_a,
                   (long long)g->pad_b, (long long)g->pad_c, (unsigned long long)g->seed, why);
    free(A);
    free(B);
    free(C);
    free(R);
    return ok;
}

static const int64_t edge_sizes[] = {0, 1, 2, 15, 16, 17, 31, 33, 47, 63, 65, 100, 257};
#define N_EDGE ((int)(sizeof edge_sizes / sizeof edge_sizes[0]))

static const float alphas[] = {1.0f, 1.0f, 0.5f, -1.5f, 1.0f, 2.0f};
static const float betas[] = {0.0f, 1.0f, 0.5f, 0.0f, -1.0f, 1.0f};
#define N_AB ((uint64_t)(sizeof alphas / sizeof alphas[0]))

/* Case number n of a sweep: transposes from t (bit 0 trans_a, bit 1 trans_b); alpha/beta,
 * the paddings of the leading dimensions and the seed rotate with n. */
static gemm_case sweep_case(int t, int64_t M, int64_t N, int64_t K, uint64_t n) {
    gemm_case g = {.ta = t & 1, .tb = t >> 1, .M = M, .N = N, .K = K};
    g.alpha = alphas[n % N_AB];
    g.beta = betas[n % N_AB];
    g.pad_a = (int64_t)(n % 3);
    g.pad_b = (int64_t)(n / 3 % 17);
    g.pad_c = (int64_t)(n % 7);
    g.seed = SEED + n;
    return g;
}

/* Every (M, N) pair of edge sizes, with K rotating through them too, for the 4 transpose
 * combinations. */
static void test_edge_sizes(void) {
    uint64_t n = 0;
    for (int t = 0; t < 4; t++)
        for (int im = 0; im < N_EDGE; im++)
            for (int in = 0; in < N_EDGE; in++) {
                int64_t M = edge_sizes[im], N = edge_sizes[in];
                int64_t K = edge_sizes[(im * 5 + in * 3 + t) % N_EDGE];
                if (M * N * K > 4000000) K = 33;
                gemm_case g = sweep_case(t, M, N, K, n++);
                if (!run_case(&g, __LINE__)) return;
            }
}

/* Every K of the edge sizes and around the K blocks (multiples of 128, 256 and 1024), at a few
 * (M, N) that cover full and partial tiles of both kernels. */
static void test_edge_k(void) {
    static const int64_t ks[] = {0,   1,   2,   15,   16,   17,   31,   33,   47,  63,
                                 65,  100, 127, 128,  129,  255,  256,  257,  300, 511,
                                 512, 513, 784, 1000, 1023, 1024, 1025, 2049, 2100};
    static const int64_t mn[][2] = {{8, 48}, {9, 49}, {7, 47}, {16, 64}, {3, 5}};
    uint64_t n = 10000;
    for (int t = 0; t < 4; t++)
        for (size_t ik = 0; ik < sizeof ks / sizeof ks[0]; ik++)
            for (size_t j = 0; j < sizeof mn / sizeof mn[0]; j++) {
                gemm_case g = sweep_case(t, mn[j][0], mn[j][1], ks[ik], n++);
                if (!run_case(&g, __LINE__)) return;
            }
}

/* All small sizes exhaustively: every tile shape and lane mask of the micro-kernel. */
static void test_small_exhaustive(void) {
    uint64_t n = 20000;
    for (int t = 0; t < 4; t++)
        for (int64_t M = 0; M <= 17; M++)
            for (int64_t N = 0; N <= 50; N++) {
                gemm_case g = sweep_case(t, M, N, (M + 2 * N + t) % 9, n++);
                if (!run_case(&g, __LINE__)) return;
            }
}

/* The shapes petrel trains with, each with beta 0, 1 and 0.5 and with padded strides. */
static void test_model_shapes(void) {
    static const struct {
        bool ta, tb;
        int64_t M, N, K;
    } shapes[] = {
        {false, true, 64, 256, 784},  /* fc1 forward  y = x W^T */
        {false, true, 64, 10, 256},   /* fc2 forward */
        {true, false, 256, 784, 64},  /* fc1 dW += dY^T x */
        {true, false, 10, 256, 64},   /* fc2 dW */
        {false, false, 64, 256, 10},  /* fc2 dX = dY W */
        {false, false, 64, 784, 256}, /* fc1 dX */
        {false, false, 16, 784, 9},   /* conv1 forward, im2col */
        {false, false, 32, 196, 144}, /* conv2 forward */
        {false, true, 16, 9, 784},    /* conv1 dW = dY col^T */
        {false, true, 32, 144, 196},  /* conv2 dW */
        {true, false, 144, 196, 32},  /* conv2 dcol = W^T dY */
        {true, true, 33, 100, 70},    /* TT, for completeness */
    };
    static const float betas3[] = {0.0f, 1.0f, 0.5f};
    uint64_t n = 30000;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int b = 0; b < 3; b++)
            for (int pad = 0; pad < 2; pad++) {
                int t = shapes[s].ta | shapes[s].tb << 1;
                gemm_case g = sweep_case(t, shapes[s].M, shapes[s].N, shapes[s].K, n++);
                g.alpha = 1.0f;
                g.beta = betas3[b];
                g.pad_a = pad * 5;
                g.pad_b = pad * 16;
                g.pad_c = pad * 3;
                if (!run_case(&g, __LINE__)) return;
            }
}

int main(void) {
    RUN(test_ref_hand);
    if (!petreli_gemm_avx512_available()) {
        printf("note: this CPU has no AVX-512 (or this is not x86-64); only the reference is "
               "tested\n");
        return CHECK_DONE();
    }
    RUN(test_avx512_hand);
    RUN(test_small_exhaustive);
    RUN(test_edge_sizes);
    RUN(test_edge_k);
    RUN(test_model_shapes);
    printf("# %lld random cases against the reference\n", (long long)cases_run);
    return CHECK_DONE();
}
