/*
 * Reference kernels: the plainest loops that implement each contract in
 * tensor.h, accumulating in double where a sum is involved. Tests compare the
 * optimized set against these; nothing here is tuned.
 */
#include "tensor_impl.h"

#include <math.h>
#include <string.h>

static void ref_add_row(float *y, const float *x, const float *b, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) y[r * C + c] = x[r * C + c] + b[c];
}

static void ref_sum_rows_acc(float *db, const float *dy, int64_t R, int64_t C) {
    for (int64_t c = 0; c < C; c++) {
        double s = 0;
        for (int64_t r = 0; r < R; r++) s += dy[r * C + c];
        db[c] += (float)s;
    }
}

static float unary_f(petrel_unary_op op, float x) {
    switch (op) {
    case PETREL_UNARY_RELU:
        return x > 0 ? x : 0;
    case PETREL_UNARY_TANH:
        return (float)tanh(x);
    case PETREL_UNARY_SIGMOID:
        return (float)(1.0 / (1.0 + exp(-(double)x)));
    case PETREL_UNARY_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown unary op");
}

/* Derivative expressed through the forward output y, which is what the tape keeps. */
static float unary_df(petrel_unary_op op, float y) {
    switch (op) {
    case PETREL_UNARY_RELU:
        return y > 0 ? 1.0f : 0.0f;
    case PETREL_UNARY_TANH:
        return 1.0f - y * y;
    case PETREL_UNARY_SIGMOID:
        return y * (1.0f - y);
    case PETREL_UNARY_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown unary op");
}

static void ref_unary(petrel_unary_op op, float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = unary_f(op, x[i]);
}

static void ref_unary_backward(petrel_unary_op op, float *dx, const float *dy, const float *y,
                               int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * unary_df(op, y[i]);
}

static double ref_softmax_xent(float *probs, const float *logits, const int32_t *labels, int64_t B,
                               int64_t C) {
    double loss = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *z = logits + b * C;
        double mx = z[0], sum = 0;
        for (int64_t c = 1; c < C; c++) mx = z[c] > mx ? z[c] : mx;
        for (int64_t c = 0; c < C; c++) sum += exp(z[c] - mx);
        for (int64_t c = 0; c < C; c++) probs[b * C + c] = (float)(exp(z[c] - mx) / sum);
        loss += log(sum) + mx - z[labels[b]];
    }
    return B ? loss / (double)B : 0.0;
}

static void ref_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *labels,
                                      int64_t B, int64_t C, float scale) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            dlogits[b * C + c] += scale * (probs[b * C + c] - (c == labels[b] ? 1.0f : 0.0f));
}

static void ref_log_softmax(float *y, const float *x, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) {
        double mx = x[r * C], sum = 0;
        for (int64_t c = 1; c < C; c++) mx = x[r * C + c] > mx ? x[r * C + c] : mx;
        for (int64_t c = 0; c < C; c++) sum += exp(x[r * C + c] - mx);
        double lse = mx + log(sum);
        for (int64_t c = 0; c < C; c++) y[r * C + c] = (float)(x[r * C + c] - lse);
    }
}

static void ref_im2col(float *col, const float *x, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                       int64_t KW, int64_t stride, int64_t pad) {
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    for (int64_t c = 0; c < Cin; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++)
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        int64_t h = oh * stride - pad + kh, w = ow * stride - pad + kw;
                        int64_t row = (c * KH + kh) * KW + kw;
                        col[row * OH * OW + oh * OW + ow] =
                            (h >= 0 && h < H && w >= 0 && w < W) ? x[(c * H + h) * W + w] : 0.0f;
                    }
}

static void ref_col2im(float *dx, const float *dcol, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                       int64_t KW, int64_t stride, int64_t pad) {
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    for (int64_t c = 0; c < Cin; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++)
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        int64_t h = oh * stride - pad + kh, w = ow * stride - pad + kw;
                        int64_t row = (c * KH + kh) * KW + kw;
                        if (h >= 0 && h < H && w >= 0 && w < W)
                            dx[(c * H + h) * W + w] += dcol[row * OH * OW + oh * OW + ow];
                    }
}

static void ref_maxpool2d(float *y, int32_t *argmax, const float *x, int64_t N, int64_t C,
                          int64_t H, int64_t W, int64_t K, int64_t S) {
    int64_t OH = (H - K) / S + 1, OW = (W - K) / S + 1;
    for (int64_t p = 0; p < N * C; p++) {
        const float *plane = x + p * H * W;
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                int64_t best = (oh * S) * W + ow * S;
                for (int64_t kh = 0; kh < K; kh++)
                    for (int64_t kw = 0; kw < K; kw++) {
                        int64_t i = (oh * S + kh) * W + ow * S + kw;
                        if (plane[i] > plane[best]) best = i;
                    }
                y[(p * OH + oh) * OW + ow] = plane[best];
                argmax[(p * OH + oh) * OW + ow] = (int32_t)best;
            }
    }
}

static void ref_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, int64_t N,
                                   int64_t C, int64_t H, int64_t W, int64_t K, int64_t S) {
    int64_t OH = (H - K) / S + 1, OW = (W - K) / S + 1;
    for (int64_t p = 0; p < N * C; p++)
        for (int64_t o = 0; o < OH * OW; o++)
            dx[p * H * W + argmax[p * OH * OW + o]] += dy[p * OH * OW + o];
}

static void ref_csr_mm(float *y, const petrel_csr *A, const float *x, int64_t N, float alpha,
                       float beta) {
    for (int64_t r = 0; r < A->rows; r++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t e = A->row_ptr[r]; e < A->row_ptr[r + 1]; e++)
                s += (double)A->val[e] * x[(int64_t)A->col[e] * N + n];
            y[r * N + n] = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * y[r * N + n]));
        }
}

static void ref_csr_mm_t_acc(float *dx, const petrel_csr *A, const float *dy, int64_t N,
                             float alpha) {
    for (int64_t r = 0; r < A->rows; r++)
        for (int64_t e = A->row_ptr[r]; e < A->row_ptr[r + 1]; e++)
            for (int64_t n = 0; n < N; n++)
                dx[(int64_t)A->col[e] * N + n] += alpha * A->val[e] * dy[r * N + n];
}

static void ref_axpy(float *y, float alpha, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

static const petrel_kernels reference_kernels = {
    .name = "reference",
    .gemm = petreli_gemm_ref,
    .add_row = ref_add_row,
    .sum_rows_acc = ref_sum_rows_acc,
    .unary = ref_unary,
    .unary_backward = ref_unary_backward,
    .softmax_xent = ref_softmax_xent,
    .softmax_xent_backward = ref_softmax_xent_backward,
    .log_softmax = ref_log_softmax,
    .im2col = ref_im2col,
    .col2im = ref_col2im,
    .maxpool2d = ref_maxpool2d,
    .maxpool2d_backward = ref_maxpool2d_backward,
    .csr_mm = ref_csr_mm,
    .csr_mm_t_acc = ref_csr_mm_t_acc,
    .axpy = ref_axpy,
};

const petrel_kernels *petrel_kernels_reference(void) {
    return &reference_kernels;
}
