/*
 * Optimized CPU kernels. GEMM goes to petrel's AVX-512 kernel where the CPU has
 * it (OpenBLAS 0.3.21 runs its AVX2 path on CPUs it does not know, such as Zen 5)
 * and to OpenBLAS otherwise; PETREL_GEMM=openblas forces OpenBLAS, for comparison.
 * The other kernels are single-pass loops written so that GCC vectorizes them:
 * unit strides, restrict pointers, no calls in the inner loop.
 */
#include "tensor_impl.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void blas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K, alpha, A,
                (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

/* y may alias x (linear adds its bias in place), so neither is restrict. */
static void cpu_add_row(float *y, const float *x, const float *restrict b, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) {
        float *yr = y + r * C;
        const float *xr = x + r * C;
        for (int64_t c = 0; c < C; c++) yr[c] = xr[c] + b[c];
    }
}

static void cpu_sum_rows_acc(float *restrict db, const float *restrict dy, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) {
        const float *restrict row = dy + r * C;
        for (int64_t c = 0; c < C; c++) db[c] += row[c];
    }
}

static void cpu_unary(petrel_unary_op op, float *y, const float *x, int64_t n) {
    switch (op) {
    case PETREL_UNARY_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        return;
    case PETREL_UNARY_TANH:
        for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
        return;
    case PETREL_UNARY_SIGMOID:
        for (int64_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
        return;
    case PETREL_UNARY_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown unary op");
}

static void cpu_unary_backward(petrel_unary_op op, float *restrict dx, const float *restrict dy,
                               const float *restrict y, int64_t n) {
    switch (op) {
    case PETREL_UNARY_RELU:
        for (int64_t i = 0; i < n; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
        return;
    case PETREL_UNARY_TANH:
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * (1.0f - y[i] * y[i]);
        return;
    case PETREL_UNARY_SIGMOID:
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
        return;
    case PETREL_UNARY_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown unary op");
}

static double cpu_softmax_xent(float *restrict probs, const float *restrict logits,
                               const int32_t *labels, int64_t B, int64_t C) {
    double loss = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *z = logits + b * C;
        float *p = probs + b * C;
        float mx = z[0];
        for (int64_t c = 1; c < C; c++) mx = z[c] > mx ? z[c] : mx;
        float sum = 0;
        for (int64_t c = 0; c < C; c++) sum += (p[c] = expf(z[c] - mx));
        float inv = 1.0f / sum;
        for (int64_t c = 0; c < C; c++) p[c] *= inv;
        loss += (double)(logf(sum) + mx - z[labels[b]]);
    }
    return B ? loss / (double)B : 0.0;
}

static void cpu_softmax_xent_backward(float *restrict dlogits, const float *restrict probs,
                                      const int32_t *labels, int64_t B, int64_t C, float scale) {
    for (int64_t b = 0; b < B; b++) {
        float *d = dlogits + b * C;
        const float *p = probs + b * C;
        for (int64_t c = 0; c < C; c++) d[c] += scale * p[c];
        d[labels[b]] -= scale;
    }
}

static void cpu_log_softmax(float *y, const float *x, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        float mx = xr[0], sum = 0;
        for (int64_t c = 1; c < C; c++) mx = xr[c] > mx ? xr[c] : mx;
        for (int64_t c = 0; c < C; c++) sum += expf(xr[c] - mx);
        float lse = mx + logf(sum);
        for (int64_t c = 0; c < C; c++) yr[c] = xr[c] - lse;
    }
}

/* Output positions [lo, hi) of one row whose input column ow*stride - pad + kw lies
 * inside [0, W): the rest read zero padding. */
static void valid_range(int64_t k, int64_t stride, int64_t pad, int64_t size, int64_t out,
                        int64_t *lo, int64_t *hi) {
    int64_t a = pad - k; /* first o with o*stride >= pad - k */
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    int64_t b = size + pad - k; /* o*stride < size + pad - k */
    *hi = b <= 0 ? 0 : (b + stride - 1) / stride;
    if (*hi > out) *hi = out;
    if (*lo > *hi) *lo = *hi;
}

static void cpu_im2col(float *col, const float *x, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                       int64_t KW, int64_t stride, int64_t pad) {
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    for (int64_t c = 0; c < Cin; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                float *out = col + ((c * KH + kh) * KW + kw) * OH * OW;
                int64_t w0, w1;
                valid_range(kw, stride, pad, W, OW, &w0, &w1);
                for (int64_t oh = 0; oh < OH; oh++) {
                    float *o = out + oh * OW;
                    int64_t h = oh * stride - pad + kh;
                    if (h < 0 || h >= H) {
                        memset(o, 0, (size_t)OW * sizeof(float));
                        continue;
                    }
                    const float *xr = x + (c * H + h) * W - pad + kw;
                    for (int64_t ow = 0; ow < w0; ow++) o[ow] = 0.0f;
                    if (stride == 1)
                        memcpy(o + w0, xr + w0, (size_t)(w1 - w0) * sizeof(float));
                    else
                        for (int64_t ow = w0; ow < w1; ow++) o[ow] = xr[ow * stride];
                    for (int64_t ow = w1; ow < OW; ow++) o[ow] = 0.0f;
                }
            }
}

static void cpu_col2im(float *dx, const float *dcol, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                       int64_t KW, int64_t stride, int64_t pad) {
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    for (int64_t c = 0; c < Cin; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                const float *in = dcol + ((c * KH + kh) * KW + kw) * OH * OW;
                int64_t w0, w1;
                valid_range(kw, stride, pad, W, OW, &w0, &w1);
                for (int64_t oh = 0; oh < OH; oh++) {
                    int64_t h = oh * stride - pad + kh;
                    if (h < 0 || h >= H) continue;
                    float *xr = dx + (c * H + h) * W - pad + kw;
                    const float *ir = in + oh * OW;
                    for (int64_t ow = w0; ow < w1; ow++) xr[ow * stride] += ir[ow];
                }
            }
}

static void cpu_maxpool2d(float *y, int32_t *argmax, const float *x, int64_t N, int64_t C,
                          int64_t H, int64_t W, int64_t K, int64_t S) {
    int64_t OH = (H - K) / S + 1, OW = (W - K) / S + 1;
    for (int64_t p = 0; p < N * C; p++) {
        const float *plane = x + p * H * W;
        float *yp = y + p * OH * OW;
        int32_t *ap = argmax + p * OH * OW;
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                int64_t best = oh * S * W + ow * S;
                float bv = plane[best];
                for (int64_t kh = 0; kh < K; kh++) {
                    const float *r = plane + (oh * S + kh) * W + ow * S;
                    for (int64_t kw = 0; kw < K; kw++)
                        if (r[kw] > bv) {
                            bv = r[kw];
                            best = (oh * S + kh) * W + ow * S + kw;
                        }
                }
                yp[oh * OW + ow] = bv;
                ap[oh * OW + ow] = (int32_t)best;
            }
    }
}

static void cpu_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, int64_t N,
                                   int64_t C, int64_t H, int64_t W, int64_t K, int64_t S) {
    int64_t OH = (H - K) / S + 1, OW = (W - K) / S + 1;
    for (int64_t p = 0; p < N * C; p++) {
        float *dp = dx + p * H * W;
        const float *g = dy + p * OH * OW;
        const int32_t *a = argmax + p * OH * OW;
        for (int64_t o = 0; o < OH * OW; o++) dp[a[o]] += g[o];
    }
}

/* Row r of y is a sum of rows of x scaled by A's entries: unit-stride along N. */
static void cpu_csr_mm(float *y, const petrel_csr *A, const float *x, int64_t N, float alpha,
                       float beta) {
    for (int64_t r = 0; r < A->rows; r++) {
        float *restrict yr = y + r * N;
        if (beta == 0.0f)
            memset(yr, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int64_t n = 0; n < N; n++) yr[n] *= beta;
        for (int64_t e = A->row_ptr[r]; e < A->row_ptr[r + 1]; e++) {
            const float *restrict xr = x + (int64_t)A->col[e] * N;
            float v = alpha * A->val[e];
            for (int64_t n = 0; n < N; n++) yr[n] += v * xr[n];
        }
    }
}

static void cpu_csr_mm_t_acc(float *dx, const petrel_csr *A, const float *dy, int64_t N,
                             float alpha) {
    for (int64_t r = 0; r < A->rows; r++) {
        const float *restrict g = dy + r * N;
        for (int64_t e = A->row_ptr[r]; e < A->row_ptr[r + 1]; e++) {
            float *restrict d = dx + (int64_t)A->col[e] * N;
            float v = alpha * A->val[e];
            for (int64_t n = 0; n < N; n++) d[n] += v * g[n];
        }
    }
}

static void cpu_axpy(float *restrict y, float alpha, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* Decided on first use and cached: -1 unknown, 0 OpenBLAS, 1 AVX-512. */
static _Atomic int gemm_choice = -1;
/* Threads granted by petrel_kernels_set_threads: petrel's GEMM is single-threaded,
 * so more than one hands GEMMs to OpenBLAS, which runs them on that many. */
static _Atomic int math_threads = 1;

static void cpu_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc) {
    int choice = gemm_choice;
    if (choice < 0) {
        const char *force = getenv("PETREL_GEMM");
        bool use_blas = force && strcmp(force, "openblas") == 0;
        gemm_choice = choice = !use_blas && petreli_gemm_avx512_available();
    }
    if (choice && math_threads == 1)
        petreli_gemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        blas_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static const petrel_kernels cpu_kernels = {
    .name = "cpu",
    .gemm = cpu_gemm,
    .add_row = cpu_add_row,
    .sum_rows_acc = cpu_sum_rows_acc,
    .unary = cpu_unary,
    .unary_backward = cpu_unary_backward,
    .softmax_xent = cpu_softmax_xent,
    .softmax_xent_backward = cpu_softmax_xent_backward,
    .log_softmax = cpu_log_softmax,
    .im2col = cpu_im2col,
    .col2im = cpu_col2im,
    .maxpool2d = cpu_maxpool2d,
    .maxpool2d_backward = cpu_maxpool2d_backward,
    .csr_mm = cpu_csr_mm,
    .csr_mm_t_acc = cpu_csr_mm_t_acc,
    .axpy = cpu_axpy,
};

static const petrel_kernels *_Atomic current;

const petrel_kernels *petrel_kernels_cpu(void) {
    return &cpu_kernels;
}

const petrel_kernels *petrel_kernels_current(void) {
    return current ? current : petrel_kernels_cpu();
}

void petrel_kernels_set_current(const petrel_kernels *k) {
    current = k;
}

void petrel_kernels_set_threads(int threads) {
    math_threads = threads > 0 ? threads : 1;
    openblas_set_num_threads(math_threads);
}
