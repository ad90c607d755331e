/*
 * petrel autograd: reverse-mode automatic differentiation over recorded op nodes.
 *
 * A petrel_graph owns a compute arena and a tape. Each op constructor
 * (petrel_op_*) allocates its output in the arena, records a node (op kind,
 * inputs, parameters), and in eager mode (define-by-run, the only mode so far)
 * runs the op's forward at once. petrel_backward() walks the tape in reverse and
 * calls each node's backward, which accumulates into the gradients of the inputs
 * that require one. The same node records are what a lazy graph will compile.
 *
 * Gradients: a leaf that needs one (a parameter) comes with requires_grad set and
 * grad pointing at caller-owned memory (a parameter registry's gradient buffer);
 * backward adds to it, so the caller zeroes it between steps. Intermediate
 * gradients live in the arena.
 *
 * Errors: op constructors return NULL when the arena cannot grow; the graph keeps
 * the first error (petrel_graph_error) and every later op given a NULL input
 * returns NULL, so a step can be written straight through and checked once.
 * Shape mismatches are programming errors and abort with a hint.
 *
 * Ownership: tensors returned by ops belong to the graph and live until the next
 * petrel_graph_reset. Not thread-safe: one graph per thread.
 *
 *     petrel_graph_reset(g);
 *     petrel_tensor *x = petrel_graph_input(g, batch, 2, (int64_t[]){B, 784});
 *     petrel_tensor *h = petrel_op_relu(g, petrel_op_linear(g, x, w1, b1));
 *     petrel_tensor *loss = petrel_op_softmax_xent(g, petrel_op_linear(g, h, w2, b2), labels);
 *     if (!loss || petrel_backward(g, loss) != PETREL_OK) ...;
 */
#ifndef PETREL_AUTOGRAD_H
#define PETREL_AUTOGRAD_H

#include "petrel/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct petrel_graph petrel_graph;

/* Op kinds; a node's kind selects its forward and backward. Only grows at the end. */
typedef enum petrel_op {
    PETREL_OP_NONE = 0,
    PETREL_OP_MATMUL,
    PETREL_OP_LINEAR,
    PETREL_OP_ADD,
    PETREL_OP_MUL,
    PETREL_OP_UNARY,
    PETREL_OP_SOFTMAX_XENT,
    PETREL_OP_CONV2D,
    PETREL_OP_MAXPOOL2D,
    PETREL_OP_RESHAPE,
    PETREL_OP_EMBEDDING,
    PETREL_OP_DROPOUT,
    PETREL_OP_SUM,
    PETREL_OP_LOG_SOFTMAX,
    PETREL_OP_COUNT
} petrel_op;

/* Creates a graph whose arena starts with arena_bytes (0: a default); it grows as
 * needed during the first steps and then stays put. */
PETREL_NODISCARD petrel_err petrel_graph_new(petrel_graph **out, size_t arena_bytes);
void petrel_graph_free(petrel_graph *g);

/* Forgets the tape and every tensor made since the last reset; keeps the memory. */
void petrel_graph_reset(petrel_graph *g);

/* The first error met since the last reset, or PETREL_OK. */
petrel_err petrel_graph_error(const petrel_graph *g);

/* Number of nodes on the tape. */
size_t petrel_graph_node_count(const petrel_graph *g);

/* Bytes the arena has handed out since the last reset. */
size_t petrel_graph_arena_used(const petrel_graph *g);

/* A new uninitialized tensor in the arena (no gradient). */
petrel_tensor *petrel_graph_tensor(petrel_graph *g, int ndim, const int64_t *ne);

/* A tensor in the arena that views caller data (no copy, no gradient). */
petrel_tensor *petrel_graph_input(petrel_graph *g, float *data, int ndim, const int64_t *ne);

/* ---- ops: each returns a tensor owned by the graph, or NULL on error ---- */

/* a (M, K) x b (K, N) -> (M, N) */
petrel_tensor *petrel_op_matmul(petrel_graph *g, petrel_tensor *a, petrel_tensor *b);

/* x (B, IN), w (OUT, IN), bias (OUT) or NULL -> (B, OUT); y = x w^T + bias */
petrel_tensor *petrel_op_linear(petrel_graph *g, petrel_tensor *x, petrel_tensor *w,
                                petrel_tensor *bias);

/* Elementwise a + b and a * b with NumPy broadcasting (shapes aligned at the last
 * dimension; a size-1 or missing dimension is broadcast). */
petrel_tensor *petrel_op_add(petrel_graph *g, petrel_tensor *a, petrel_tensor *b);
petrel_tensor *petrel_op_mul(petrel_graph *g, petrel_tensor *a, petrel_tensor *b);

petrel_tensor *petrel_op_relu(petrel_graph *g, petrel_tensor *x);
petrel_tensor *petrel_op_tanh(petrel_graph *g, petrel_tensor *x);
petrel_tensor *petrel_op_sigmoid(petrel_graph *g, petrel_tensor *x);

/* logits (B, C), labels (B) in [0, C) -> scalar (1): mean softmax cross-entropy.
 * The labels are copied into the graph. */
petrel_tensor *petrel_op_softmax_xent(petrel_graph *g, petrel_tensor *logits,
                                      const int32_t *labels);

/* x (R, C) -> (R, C): row-wise log-softmax. */
petrel_tensor *petrel_op_log_softmax(petrel_graph *g, petrel_tensor *x);

/* x (N, Cin, H, W), w (Cout, Cin, KH, KW), bias (Cout) or NULL -> (N, Cout, OH, OW),
 * zero padding pad, OH = (H + 2 pad - KH) / stride + 1. */
petrel_tensor *petrel_op_conv2d(petrel_graph *g, petrel_tensor *x, petrel_tensor *w,
                                petrel_tensor *bias, int64_t stride, int64_t pad);

/* x (N, C, H, W) -> (N, C, OH, OW), window k x k, stride s, no padding. */
petrel_tensor *petrel_op_maxpool2d(petrel_graph *g, petrel_tensor *x, int64_t k, int64_t s);

/* Same elements, new shape (x must be contiguous). */
petrel_tensor *petrel_op_reshape(petrel_graph *g, petrel_tensor *x, int ndim, const int64_t *ne);

/* x (N, ...) -> (N, prod(...)). */
petrel_tensor *petrel_op_flatten(petrel_graph *g, petrel_tensor *x);

/* table (V, D), idx (n) in [0, V) -> (n, D): rows of the table. The indices are
 * copied. Backward adds into table->grad when it is set, and records the gradient
 * as sparse rows (see petrel_graph_sparse_grad). */
petrel_tensor *petrel_op_embedding(petrel_graph *g, petrel_tensor *table, const int32_t *idx,
                                   int64_t n);

/* Inverted dropout: in training, zeroes each element with probability p and scales
 * the rest by 1 / (1 - p); the identity otherwise. Draws from rng at forward time. */
petrel_tensor *petrel_op_dropout(petrel_graph *g, petrel_tensor *x, float p, bool training,
                                 petrel_rng *rng);

/* Sum of all elements -> scalar (1). */
petrel_tensor *petrel_op_sum(petrel_graph *g, petrel_tensor *x);

/* ---- backward ------------------------------------------------------------ */

/* Seeds d(loss)/d(loss) = 1 for a one-element loss and runs every node's backward
 * in reverse order. Gradients are added to leaves' grad buffers; the gradients of
 * op results start from zero on every pass, so a second backward over the same
 * tape adds each leaf's gradient once more. */
PETREL_NODISCARD petrel_err petrel_backward(petrel_graph *g, petrel_tensor *loss);

/* A gradient as rows of a table: values (n, D), row i belongs to table row
 * rows[i]; rows may repeat, and repeated rows sum. Borrowed from the graph. */
typedef struct petrel_sparse_grad {
    int64_t n, dim;
    const int32_t *rows;
    const float *values;
} petrel_sparse_grad;

/* After backward: the sparse gradient of the first embedding of table on the
 * tape. PETREL_ERR_NOT_FOUND when the table was not used by an embedding. */
PETREL_NODISCARD petrel_err petrel_graph_sparse_grad(const petrel_graph *g,
                                                     const petrel_tensor *table,
                                                     petrel_sparse_grad *out);

/* Called during petrel_backward, once per leaf that needs a gradient (a
 * parameter), as soon as that gradient is complete: after the backward of the
 * earliest node on the tape that reads it. Lets a data-parallel trainer start
 * reducing a layer's gradients while the backward of earlier layers still runs. */
typedef void (*petrel_grad_ready_fn)(void *ctx, const petrel_tensor *param);

/* Sets (fn NULL: clears) the hook for the backward passes of g. */
void petrel_graph_on_grad_ready(petrel_graph *g, petrel_grad_ready_fn fn, void *ctx);

/* After backward: the sufficient factors of the first linear op that reads w, its
 * input x (B, IN) and the gradient of its output dy (B, OUT), whose product
 * dy^T x is w's gradient (Poseidon's sufficient factor broadcasting). Borrowed from
 * the graph until its next reset. PETREL_ERR_NOT_FOUND when no linear op reads w. */
PETREL_NODISCARD petrel_err petrel_graph_linear_factors(const petrel_graph *g,
                                                        const petrel_tensor *w,
                                                        const petrel_tensor **x,
                                                        const petrel_tensor **dy);

/* The name of an op kind ("linear"). */
const char *petrel_op_name(petrel_op op);

#ifdef __cplusplus
}
#endif
#endif
