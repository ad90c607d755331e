/*
 * petrel tensor: float32 tensors (shape, byte strides, views), sparse CSR
 * matrices, and the CPU kernels that every op runs on.
 *
 * A petrel_tensor is a plain-data descriptor of a view: it never owns its data.
 * Memory comes from an arena (intermediate values), a parameter registry
 * (weights and gradients) or the caller. Shapes follow PyTorch order: ne[0] is
 * the outermost dimension, the last dimension is contiguous in a fresh tensor.
 *
 * Kernels come in two sets behind one struct of function pointers: "cpu" (OpenBLAS
 * and petrel's own vectorized loops, the default) and "reference" (naive loops,
 * obviously correct, for tests). Every kernel takes raw pointers and sizes; shapes
 * are given in each comment, with single-letter dimensions named there.
 *
 * Threading: descriptors are plain data; kernels are reentrant; the current kernel
 * set is a process-wide pointer meant to be chosen once at start-up.
 *
 *     float buf[6] = {1, 2, 3, 4, 5, 6};
 *     petrel_tensor t = petrel_tensor_view(buf, 2, (int64_t[]){2, 3});
 *     petrel_tensor row = petrel_tensor_slice(&t, 0, 1, 1);   // shape (1, 3): {4, 5, 6}
 */
#ifndef PETREL_TENSOR_H
#define PETREL_TENSOR_H

#include "petrel/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PETREL_MAX_DIMS 4

struct petrel_node;

typedef struct petrel_tensor {
    float *data;
    int ndim;
    int64_t ne[PETREL_MAX_DIMS]; /* sizes, outermost first; unused entries are 1 */
    int64_t nb[PETREL_MAX_DIMS]; /* strides in bytes */
    /* Autograd fields (see autograd.h); zero for a plain tensor. */
    struct petrel_tensor *grad; /* gradient of the same shape, or NULL */
    struct petrel_node *node;   /* op that produced this tensor, NULL for a leaf */
    bool requires_grad;
    /* A fully connected weight whose gradient the caller rebuilds from the layer's
     * sufficient factors (data-parallel SFB): linear's backward leaves grad alone. */
    bool grad_from_factors;
} petrel_tensor;

/* A contiguous view of data with the given shape (ndim <= PETREL_MAX_DIMS). */
petrel_tensor petrel_tensor_view(float *data, int ndim, const int64_t *ne);

/* Number of elements. */
int64_t petrel_tensor_numel(const petrel_tensor *t);

/* True when the elements are laid out densely in row-major order. */
bool petrel_tensor_is_contiguous(const petrel_tensor *t);

/* True when a and b have the same ndim and sizes. */
bool petrel_tensor_same_shape(const petrel_tensor *a, const petrel_tensor *b);

/* Elements [begin, begin + len) along dimension dim, sharing t's data. */
petrel_tensor petrel_tensor_slice(const petrel_tensor *t, int dim, int64_t begin, int64_t len);

/* Swaps dimensions d0 and d1 (a strided view; no copy). */
petrel_tensor petrel_tensor_transpose(const petrel_tensor *t, int d0, int d1);

/* Pointer to element idx (ndim indices). */
float *petrel_tensor_at(const petrel_tensor *t, const int64_t *idx);

/* Copies src into dst element by element, any strides; shapes must match. */
void petrel_tensor_copy(petrel_tensor *dst, const petrel_tensor *src);

/* Writes the shape as "(2, 3)" into buf; returns buf. */
const char *petrel_tensor_shape_str(const petrel_tensor *t, char *buf, size_t size);

/* ---- sparse -------------------------------------------------------------- */

/* Compressed sparse rows: row r holds entries row_ptr[r] .. row_ptr[r+1]-1, with
 * column indices (0-based, ascending within a row) and values. */
typedef struct petrel_csr {
    int64_t rows, cols, nnz;
    int64_t *row_ptr; /* rows + 1 entries */
    int32_t *col;     /* nnz entries */
    float *val;       /* nnz entries */
} petrel_csr;

/* Allocates a CSR with room for nnz entries (petrel_malloc); row_ptr is zeroed. */
PETREL_NODISCARD petrel_err petrel_csr_init(petrel_csr *m, int64_t rows, int64_t cols, int64_t nnz);
void petrel_csr_fini(petrel_csr *m);

/* ---- kernels --------------------------------------------------------------- */

typedef enum petrel_unary_op {
    PETREL_UNARY_RELU = 0,
    PETREL_UNARY_TANH,
    PETREL_UNARY_SIGMOID,
    PETREL_UNARY_COUNT
} petrel_unary_op;

typedef struct petrel_kernels {
    const char *name;

    /* C (M, N) = alpha * op(A) op(B) + beta * C, row-major; op(A) is (M, K): A is
     * (M, K) with row stride lda, or (K, M) when trans_a. Likewise op(B) (K, N). */
    void (*gemm)(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                 int64_t ldc);

    /* y (R, C) = x (R, C) + b (C), b broadcast over rows. y may alias x. */
    void (*add_row)(float *y, const float *x, const float *b, int64_t R, int64_t C);

    /* db (C) += sum over rows of dy (R, C). */
    void (*sum_rows_acc)(float *db, const float *dy, int64_t R, int64_t C);

    /* y (n) = f(x), elementwise. y may alias x. */
    void (*unary)(petrel_unary_op op, float *y, const float *x, int64_t n);

    /* dx (n) += dy * f'(x), given the forward output y = f(x). */
    void (*unary_backward)(petrel_unary_op op, float *dx, const float *dy, const float *y,
                           int64_t n);

    /* Softmax cross-entropy over logits (B, C) with integer labels (B):
     * probs (B, C) = softmax(logits); returns the mean over B of -log probs[b, label[b]].
     * Computed in a max-shifted, log-sum-exp form; accumulated in double. */
    double (*softmax_xent)(float *probs, const float *logits, const int32_t *labels, int64_t B,
                           int64_t C);

    /* dlogits (B, C) += scale * (probs - onehot(labels)). scale is 1/B for a mean. */
    void (*softmax_xent_backward)(float *dlogits, const float *probs, const int32_t *labels,
                                  int64_t B, int64_t C, float scale);

    /* y (R, C) = row-wise log-softmax of x (R, C). */
    void (*log_softmax)(float *y, const float *x, int64_t R, int64_t C);

    /* im2col for one image: x (Cin, H, W) -> col (Cin*KH*KW, OH*OW), zero padding,
     * OH = (H + 2*pad - KH) / stride + 1, OW likewise. */
    void (*im2col)(float *col, const float *x, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                   int64_t KW, int64_t stride, int64_t pad);

    /* Adjoint of im2col: dx (Cin, H, W) += scatter-add of dcol (Cin*KH*KW, OH*OW). */
    void (*col2im)(float *dx, const float *dcol, int64_t Cin, int64_t H, int64_t W, int64_t KH,
                   int64_t KW, int64_t stride, int64_t pad);

    /* Max pooling over x (N, C, H, W), window K x K, stride S, no padding:
     * y (N, C, OH, OW) with OH = (H - K) / S + 1, and argmax (same shape) holding
     * the flat index within its (H, W) plane of each chosen input. */
    void (*maxpool2d)(float *y, int32_t *argmax, const float *x, int64_t N, int64_t C, int64_t H,
                      int64_t W, int64_t K, int64_t S);

    /* dx (N, C, H, W) += dy routed to the argmax positions. */
    void (*maxpool2d_backward)(float *dx, const float *dy, const int32_t *argmax, int64_t N,
                               int64_t C, int64_t H, int64_t W, int64_t K, int64_t S);

    /* y (R, N) = alpha * A (R, K, sparse) x (K, N) + beta * y. */
    void (*csr_mm)(float *y, const petrel_csr *A, const float *x, int64_t N, float alpha,
                   float beta);

    /* dx (K, N) += alpha * A^T (K, R) dy (R, N), A sparse (R, K). */
    void (*csr_mm_t_acc)(float *dx, const petrel_csr *A, const float *dy, int64_t N, float alpha);

    /* y (n) += alpha * x (n). */
    void (*axpy)(float *y, float alpha, const float *x, int64_t n);
} petrel_kernels;

/* The optimized CPU set and the naive reference set. */
const petrel_kernels *petrel_kernels_cpu(void);
const petrel_kernels *petrel_kernels_reference(void);

/* The set that ops use; the cpu set unless changed. */
const petrel_kernels *petrel_kernels_current(void);
void petrel_kernels_set_current(const petrel_kernels *k);

/* Number of threads GEMMs may use; 1 by default. petrel's own GEMM is
 * single-threaded, so above 1 the cpu set runs GEMMs on OpenBLAS's threads. */
void petrel_kernels_set_threads(int threads);

#ifdef __cplusplus
}
#endif
#endif
