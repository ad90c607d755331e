/*
 * petrel's own single-threaded SGEMM for x86-64 with AVX-512.
 *
 * A (M, K) row stride lda, or (K, M) when trans_a; B (K, N) row stride ldb, or (N, K) when
 * trans_b; C (M, N) row stride ldc -> C = alpha op(A) op(B) + beta C, all row-major.
 *
 * Why not OpenBLAS: Debian's OpenBLAS 0.3.21 takes AMD Zen 5 for "Haswell" and runs AVX2
 * kernels at about 100 GFLOP/s on the MLP shapes, while a Zen 5 core retires two 512-bit FMAs
 * per cycle (measured 248 GFLOP/s). The shapes that matter are small (MLP 784-256-10 at batch
 * 64, im2col convolutions), so the design favours zero setup over the deep cache blocking of a
 * large-matrix BLAS:
 *
 *   y  = x W^T    NT  M=64  N=256 K=784     dW += dY^T x  TN  M=256 N=784 K=64 (beta 1)
 *   dX = dY W     NN  M=64  N=784 K=256     conv im2col   NN  M=16..32 N=196..784 K=9..144
 *
 * Micro-kernel: an MR=8 x NR=48 tile of C lives in 24 zmm accumulators (8 rows x 3 vectors of
 * 16 floats). Each step k loads the 48 floats of row k of op(B) (3 vectors), broadcasts 8
 * elements of column k of op(A) and issues 24 FMAs: 11 loads per 24 FMAs keeps both FMA pipes
 * busy, and 24 independent chains hide the FMA latency. Narrower tiles (32 or 16 columns,
 * fewer rows) handle the edges; the last vector of a tile is loaded and stored under a lane
 * mask, so N needs no padding.
 *
 * Operands: the kernel wants op(A)(i, k) at any stride (broadcast loads do not care), and
 * op(B) contiguous along N. Without trans_b, B is used in place (row stride ldb), so NN and
 * TN need no packing at all. With trans_b, B is (N, K), and one of two routes is taken:
 *
 *  - pack: each 48-column panel of op(B) is transposed (16x16 register transposes) into a
 *    stack buffer of at most KC_PACK x 48 floats and reused by all M/8 row tiles. The
 *    transpose costs one pass over B, so it pays off when M is large against K.
 *  - dot (NT only: A must be contiguous along K too): a tile of 3 rows of A x 8 rows of B
 *    keeps 24 accumulators of 16 partial sums along K, and sums them horizontally once per
 *    tile. No packing; the horizontal sums cost about as many shuffles per output as the
 *    transpose does per element of B, so it pays off when K is long against M, and for narrow
 *    N, where the broadcast kernel would leave lanes idle.
 *
 *   Measured (GFLOP/s, pack vs dot):  64x256x784 228 vs 238   16x9x784  85 vs 217
 *   64x10x256 116 vs 199   32x144x196 201 vs 196   64x48x256 235 vs 221   64x30x64 216 vs 147
 *   So dot is taken when K >= 8 M, or when N < 32 and K >= 2 M.
 *
 * Blocking: K is cut into near-equal blocks of at most KC (in place), KC_PACK (packed) or
 * DOT_KC (dot), so that a panel of B stays in L1/L2 while the row tiles of A stream past it; a
 * tile of C is loaded and stored once per K block. Shapes beyond those above work, but no M or
 * N blocking for L2/L3 is done. No heap memory is used; the only buffer is 24 KiB of stack.
 */
#include "tensor/tensor_impl.h"

#include <string.h>

static void check_args(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                       int64_t ldb, int64_t ldc) {
    PETREL_ASSERT(M >= 0 && N >= 0 && K >= 0, "gemm sizes must be non-negative");
    PETREL_ASSERT(lda >= (trans_a ? M : K), "lda must be at least the row length of A");
    PETREL_ASSERT(ldb >= (trans_b ? K : N), "ldb must be at least the row length of B");
    PETREL_ASSERT(ldc >= N, "ldc must be at least N");
}

#if defined(__x86_64__)

#include <immintrin.h>

/* Scales C (M, N) by beta; beta == 0 writes zeros without reading C. */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f)
            memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
}

#define AVX512        __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

enum {
    MR = 8,        /* rows of C per micro-tile */
    NV_MAX = 3,    /* 16-float vectors of C per micro-tile row: NR = 48 */
    KC = 256,      /* largest K block when B is read in place: a panel is KC x 48 floats */
    KC_PACK = 128, /* largest K block of a packed (transposed) panel: 24 KiB on the stack */
};
_Static_assert(KC_PACK % 16 == 0, "pack_bt stores whole 16-row blocks: KC_PACK % 16 == 0");

bool petreli_gemm_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
}

/* How a finished tile meets C: c = acc; c = alpha acc; c += alpha acc; c = alpha acc + beta c. */
enum store_mode { STORE_ACC, STORE_ALPHA, STORE_ADD, STORE_AXPBY };

/* Writes the accumulators acc (mr, 16 nv) to c (row stride ldc); the last vector of each row
 * under the lane mask `last`. Only STORE_ADD and STORE_AXPBY read C. */
static ALWAYS_INLINE AVX512 void store_tile(const int mr, const int nv, const enum store_mode mode,
                                            __m512 acc[MR][NV_MAX], __mmask16 last, float alpha,
                                            float beta, float *c, int64_t ldc) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) {
            float *p = c + r * ldc + 16 * v;
            const __mmask16 m = v == nv - 1 ? last : (__mmask16)0xffff;
            __m512 y = acc[r][v];
            if (mode == STORE_ALPHA) y = _mm512_mul_ps(y, va);
            if (mode == STORE_ADD) y = _mm512_fmadd_ps(y, va, _mm512_maskz_loadu_ps(m, p));
            if (mode == STORE_AXPBY)
                y = _mm512_fmadd_ps(y, va, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p), vb));
            if (v == nv - 1)
                _mm512_mask_storeu_ps(p, last, y);
            else
                _mm512_storeu_ps(p, y);
        }
}

/*
 * C tile (mr, 16 nv) = alpha sum_{k < kc} op(A)(i, k) B(k, j) + beta C tile.
 * op(A)(i, k) is a[i * lda + k], or a[k * lda + i] when ta; B(k, j) is b[k * ldb + j]. The
 * last of the nv vectors is masked by `last` (lanes past N) on B loads and on C. beta == 0
 * does not read C. mr, nv and ta are constants in every instantiation, so the accumulator
 * arrays become registers.
 */
static ALWAYS_INLINE AVX512 void kernel(const int mr, const int nv, const bool ta, int64_t kc,
                                        const float *a, int64_t lda, const float *b, int64_t ldb,
                                        __mmask16 last, float alpha, float beta, float *c,
                                        int64_t ldc) {
    __m512 acc[MR][NV_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();

    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[NV_MAX];
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++)
            bv[v] =
                v == nv - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            __m512 av = _mm512_set1_ps(ta ? a[r] : a[r * lda]);
#pragma GCC unroll 3
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += ta ? lda : 1;
        b += ldb;
    }

    /* The common alpha == 1 and beta in {0, 1} skip the multiplies they do not need. */
    if (beta == 0.0f && alpha == 1.0f)
        store_tile(mr, nv, STORE_ACC, acc, last, alpha, beta, c, ldc);
    else if (beta == 0.0f)
        store_tile(mr, nv, STORE_ALPHA, acc, last, alpha, beta, c, ldc);
    else if (beta == 1.0f)
        store_tile(mr, nv, STORE_ADD, acc, last, alpha, beta, c, ldc);
    else
        store_tile(mr, nv, STORE_AXPBY, acc, last, alpha, beta, c, ldc);
}

typedef void kernel_fn(int64_t kc, const float *a, int64_t lda, const float *b, int64_t ldb,
                       __mmask16 last, float alpha, float beta, float *c, int64_t ldc);

/* One out-of-line instantiation per (trans_a, rows, vectors). */
#define KERNEL_DEF(ta, mr, nv)                                                                     \
    static AVX512 void kernel_##ta##_##mr##_##nv(int64_t kc, const float *a, int64_t lda,          \
                                                 const float *b, int64_t ldb, __mmask16 last,      \
                                                 float alpha, float beta, float *c, int64_t ldc) { \
        kernel(mr, nv, ta, kc, a, lda, b, ldb, last, alpha, beta, c, ldc);                         \
    }
/* clang-format off */
#define KERNEL_DEF_ROWS(ta, mr) KERNEL_DEF(ta, mr, 1) KERNEL_DEF(ta, mr, 2) KERNEL_DEF(ta, mr, 3)
#define KERNEL_DEF_TA(ta) \
    KERNEL_DEF_ROWS(ta, 1) KERNEL_DEF_ROWS(ta, 2) KERNEL_DEF_ROWS(ta, 3) KERNEL_DEF_ROWS(ta, 4) \
    KERNEL_DEF_ROWS(ta, 5) KERNEL_DEF_ROWS(ta, 6) KERNEL_DEF_ROWS(ta, 7) KERNEL_DEF_ROWS(ta, 8)
KERNEL_DEF_TA(0)
KERNEL_DEF_TA(1)

#define KERNEL_ROW(ta, mr) {kernel_##ta##_##mr##_1, kernel_##ta##_##mr##_2, kernel_##ta##_##mr##_3}
#define KERNEL_TA(ta) \
    {KERNEL_ROW(ta, 1), KERNEL_ROW(ta, 2), KERNEL_ROW(ta, 3), KERNEL_ROW(ta, 4), \
     KERNEL_ROW(ta, 5), KERNEL_ROW(ta, 6), KERNEL_ROW(ta, 7), KERNEL_ROW(ta, 8)}
/* clang-format on */

/* kernels[trans_a][rows - 1][vectors - 1] */
static kernel_fn *const kernels[2][MR][NV_MAX] = {KERNEL_TA(0), KERNEL_TA(1)};

/* Vectors in the panel that starts at vector jv of nvec: 3 while possible, but 2 + 2 rather
 * than 3 + 1 at the end, since a 1-vector tile runs at a fraction of the FMA rate. */
static int panel_vectors(int64_t jv, int64_t nvec) {
    int64_t left = nvec - jv;
    return left == 4 ? 2 : left >= 3 ? 3 : (int)left;
}

/* In-register transpose: r[t] holds row t of a 16x16 block; afterwards r[t] holds column t. */
static ALWAYS_INLINE AVX512 void transpose16(__m512 r[16]) {
    __m512 t[16], s[16];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    /* s[4g + q] holds, in 128-bit lane l, rows 4g..4g+3 of column 4l + q. */
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]);
        __m512d t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
        s[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        s[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        s[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        s[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    /* t[q], t[q + 4]: rows 0..7 of columns (q, q + 8) and (q + 4, q + 12); t[q + 8], t[q + 12]
     * the same for rows 8..15. */
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        t[q] = _mm512_shuffle_f32x4(s[q], s[q + 4], 0x88);
        t[q + 4] = _mm512_shuffle_f32x4(s[q], s[q + 4], 0xdd);
        t[q + 8] = _mm512_shuffle_f32x4(s[q + 8], s[q + 12], 0x88);
        t[q + 12] = _mm512_shuffle_f32x4(s[q + 8], s[q + 12], 0xdd);
    }
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++) {
        r[q] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88);
        r[q + 8] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0xdd);
    }
}

/*
 * Packs a panel of op(B) = B^T for trans_b: B (N, K) row stride ldb; the panel is rows
 * j0..j0+w of B (w <= 16 nv) and columns k0..k0+kc. Writes dst (kc, 16 nv) with
 * dst[k][j] = B[j0 + j][k0 + k], zero for j >= w.
 */
static AVX512 void pack_bt(const float *B, int64_t ldb, int64_t w, int64_t kc, int nv, float *dst) {
    const int64_t ld = 16 * nv;
    for (int g = 0; g < nv; g++) {
        const float *src = B + (int64_t)16 * g * ldb;
        const int64_t rows = w - 16 * g < 16 ? w - 16 * g : 16;
        for (int64_t k = 0; k < kc; k += 16) {
            const int64_t cols = kc - k < 16 ? kc - k : 16;
            const __mmask16 m = (__mmask16)(cols == 16 ? 0xffff : (1u << cols) - 1);
            __m512 r[16];
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++)
                r[t] = t < rows ? _mm512_maskz_loadu_ps(m, src + t * ldb + k) : _mm512_setzero_ps();
            transpose16(r);
            /* All 16 rows are stored even past kc: k + 15 < KC_PACK since both are multiples
             * of 16, and the kernel never reads rows past kc. */
            float *d = dst + k * ld + 16 * g;
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++) _mm512_store_ps(d + t * ld, r[t]);
        }
    }
}

/* Splits K into blocks of at most kc_max, of nearly equal size (784 -> 7 x 112 for 128, not
 * 6 x 128 + 16). */
static int64_t k_block(int64_t K, int64_t kc_max) {
    int64_t nblocks = (K + kc_max - 1) / kc_max;
    return (K + nblocks - 1) / nblocks;
}

/* ---- dot-product kernel for NT ----------------------------------------------------------- */

enum {
    DOT_MR = 3,    /* rows of A per dot tile */
    DOT_NR = 8,    /* rows of B (columns of C) per dot tile: 24 accumulators */
    DOT_KC = 1024, /* largest K block: a tile's rows of A and B (11 x 4 KiB) fit in L1 */
};

/* Horizontal sums of 8 vectors: lane j of the result is the sum of the 16 lanes of x[j]. Each
 * step adds pairs of vectors after moving halves of one next to halves of the other: 8 adds and
 * 16 shuffles in all, against 32 of each for 8 separate reductions. */
static ALWAYS_INLINE AVX512 __m256 hsum8(const __m512 x[8]) {
    __m512 y[4], z[2];
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) /* 256-bit halves: lanes 0-1 of y[p] from x[2p], 2-3 x[2p+1] */
        y[p] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0xee));
#pragma GCC unroll 2
    for (int q = 0; q < 2; q++) /* 128-bit lanes: lane l of z[q] from x[4q + l] */
        z[q] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], 0x88),
                             _mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], 0xdd));
    /* 64-bit pairs: in lane l, floats 0-1 from x[l], floats 2-3 from x[l + 4] */
    __m512d z0 = _mm512_castps_pd(z[0]), z1 = _mm512_castps_pd(z[1]);
    __m512 w = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(z0, z1)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(z0, z1)));
    /* Adjacent floats: float 0 of lane l now holds the sum of x[l], float 2 that of x[l + 4]. */
    w = _mm512_add_ps(w, _mm512_permute_ps(w, 0xb1));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, w));
}

/*
 * C tile (mr, nb) = alpha A tile B tile^T + beta C tile, for NT: a (mr, K) row stride lda,
 * b (nb, K) row stride ldb, both contiguous along K. Each of the mr x nb accumulators holds
 * 16 partial sums along K (the tail of K is loaded under a mask, as zeros); the horizontal
 * sums come once per tile, after the K loop. beta == 0 does not read C.
 */
static ALWAYS_INLINE AVX512 void dot_kernel(const int mr, const int nb, int64_t K, const float *a,
                                            int64_t lda, const float *b, int64_t ldb, float alpha,
                                            float beta, float *c, int64_t ldc) {
    __m512 acc[DOT_MR][DOT_NR];
#pragma GCC unroll 3
    for (int r = 0; r < DOT_MR; r++)
#pragma GCC unroll 8
        for (int j = 0; j < DOT_NR; j++) acc[r][j] = _mm512_setzero_ps();

    for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 m = (__mmask16)(K - k >= 16 ? 0xffff : (1u << (K - k)) - 1);
        __m512 av[DOT_MR];
#pragma GCC unroll 3
        for (int r = 0; r < mr; r++) av[r] = _mm512_maskz_loadu_ps(m, a + r * lda + k);
#pragma GCC unroll 8
        for (int j = 0; j < nb; j++) {
            __m512 bv = _mm512_maskz_loadu_ps(m, b + j * ldb + k);
#pragma GCC unroll 3
            for (int r = 0; r < mr; r++) acc[r][j] = _mm512_fmadd_ps(av[r], bv, acc[r][j]);
        }
    }

    const __mmask8 cols = (__mmask8)((1u << nb) - 1);
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 3
    for (int r = 0; r < mr; r++) {
        __m256 y = _mm256_mul_ps(hsum8(acc[r]), va);
        if (beta != 0.0f) y = _mm256_fmadd_ps(_mm256_maskz_loadu_ps(cols, c + r * ldc), vb, y);
        _mm256_mask_storeu_ps(c + r * ldc, cols, y);
    }
}

typedef void dot_fn(int64_t K, const float *a, int64_t lda, const float *b, int64_t ldb,
                    float alpha, float beta, float *c, int64_t ldc);

#define DOT_DEF(mr, nb)                                                                            \
    static AVX512 void dot_##mr##_##nb(int64_t K, const float *a, int64_t lda, const float *b,     \
                                       int64_t ldb, float alpha, float beta, float *c,             \
                                       int64_t ldc) {                                              \
        dot_kernel(mr, nb, K, a, lda, b, ldb, alpha, beta, c, ldc);                                \
    }
/* clang-format off */
#define DOT_DEF_ROWS(mr) \
    DOT_DEF(mr, 1) DOT_DEF(mr, 2) DOT_DEF(mr, 3) DOT_DEF(mr, 4) \
    DOT_DEF(mr, 5) DOT_DEF(mr, 6) DOT_DEF(mr, 7) DOT_DEF(mr, 8)
DOT_DEF_ROWS(1)
DOT_DEF_ROWS(2)
DOT_DEF_ROWS(3)
#define DOT_ROW(mr) \
    {dot_##mr##_1, dot_##mr##_2, dot_##mr##_3, dot_##mr##_4, \
     dot_##mr##_5, dot_##mr##_6, dot_##mr##_7, dot_##mr##_8}
/* clang-format on */

/* dot_kernels[rows - 1][columns - 1] */
static dot_fn *const dot_kernels[DOT_MR][DOT_NR] = {DOT_ROW(1), DOT_ROW(2), DOT_ROW(3)};

/* NT without packing: C (M, N) = alpha A B^T + beta C with A (M, K), B (N, K). Rows and columns
 * are split into near-equal groups (N = 9 -> 5 + 4, not 8 + 1) so that no tile is starved of
 * accumulators. Each group of B rows stays in L1 while all of A streams past it. */
static AVX512 void gemm_nt_dot(int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                               int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                               int64_t ldc) {
    const int64_t ngroups = (N + DOT_NR - 1) / DOT_NR, mgroups = (M + DOT_MR - 1) / DOT_MR;
    const int64_t kb = k_block(K, DOT_KC);
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
        const int64_t kc = K - k0 < kb ? K - k0 : kb;
        const float bk = k0 == 0 ? beta : 1.0f;
        for (int64_t jg = 0, j0 = 0; jg < ngroups; jg++) {
            const int64_t nb = (N - j0 + (ngroups - jg) - 1) / (ngroups - jg);
            for (int64_t ig = 0, i0 = 0; ig < mgroups; ig++) {
                const int64_t mr = (M - i0 + (mgroups - ig) - 1) / (mgroups - ig);
                dot_kernels[mr - 1][nb - 1](kc, A + i0 * lda + k0, lda, B + j0 * ldb + k0, ldb,
                                            alpha, bk, C + i0 * ldc + j0, ldc);
                i0 += mr;
            }
            j0 += nb;
        }
    }
}

/* ---- driver ---------------------------------------------------------------------------- */

AVX512 void petreli_gemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                float alpha, const float *A, int64_t lda, const float *B,
                                int64_t ldb, float beta, float *C, int64_t ldc) {
    check_args(trans_a, trans_b, M, N, K, lda, ldb, ldc);
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }

    /* Measured crossover (see the header): dot when K is long against M, so that its
     * horizontal sums are rare and a transposed panel would serve few rows, or when N is
     * narrow, where the broadcast kernel leaves lanes idle. */
    if (trans_b && !trans_a && (K >= 8 * M || (N < 32 && K >= 2 * M))) {
        gemm_nt_dot(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }

    const int64_t nvec = (N + 15) / 16;
    const __mmask16 edge = (__mmask16)(N % 16 ? (1u << (N % 16)) - 1 : 0xffff);
    kernel_fn *const(*kern)[NV_MAX] = kernels[trans_a];

    if (!trans_b) {
        /* B (K, N) is already contiguous along N: tiles read it in place. */
        const int64_t kb = k_block(K, KC);
        for (int64_t k0 = 0; k0 < K; k0 += kb) {
            const int64_t kc = K - k0 < kb ? K - k0 : kb;
            const float bk = k0 == 0 ? beta : 1.0f;
            const float *ak = trans_a ? A + k0 * lda : A + k0;
            for (int64_t jv = 0; jv < nvec;) {
                const int nv = panel_vectors(jv, nvec);
                const __mmask16 last = jv + nv == nvec ? edge : 0xffff;
                const float *bp = B + k0 * ldb + 16 * jv;
                for (int64_t i0 = 0; i0 < M; i0 += MR) {
                    const int64_t mr = M - i0 < MR ? M - i0 : MR;
                    const float *ap = trans_a ? ak + i0 : ak + i0 * lda;
                    kern[mr - 1][nv - 1](kc, ap, lda, bp, ldb, last, alpha, bk,
                                         C + i0 * ldc + 16 * jv, ldc);
                }
                jv += nv;
            }
        }
        return;
    }

    /* B (N, K): transpose each (kc, 48) panel into the stack buffer, then sweep it over M. */
    _Alignas(64) float packed[KC_PACK * 16 * NV_MAX];
    const int64_t kb = k_block(K, KC_PACK);
    for (int64_t jv = 0; jv < nvec;) {
        const int nv = panel_vectors(jv, nvec);
        const __mmask16 last = jv + nv == nvec ? edge : 0xffff;
        const int64_t j0 = 16 * jv;
        const int64_t w = N - j0 < 16 * nv ? N - j0 : 16 * nv;
        for (int64_t k0 = 0; k0 < K; k0 += kb) {
            const int64_t kc = K - k0 < kb ? K - k0 : kb;
            const float bk = k0 == 0 ? beta : 1.0f;
            pack_bt(B + j0 * ldb + k0, ldb, w, kc, nv, packed);
            const float *ak = trans_a ? A + k0 * lda : A + k0;
            for (int64_t i0 = 0; i0 < M; i0 += MR) {
                const int64_t mr = M - i0 < MR ? M - i0 : MR;
                const float *ap = trans_a ? ak + i0 : ak + i0 * lda;
                kern[mr - 1][nv - 1](kc, ap, lda, packed, 16 * nv, last, alpha, bk,
                                     C + i0 * ldc + j0, ldc);
            }
        }
        jv += nv;
    }
}

#else /* not x86-64: no AVX-512; callers check available() first. */

bool petreli_gemm_avx512_available(void) {
    return false;
}

void petreli_gemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc) {
    check_args(trans_a, trans_b, M, N, K, lda, ldb, ldc);
    petreli_gemm_ref(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
