/* Internals shared by the files of the autograd module: the node record and the
 * op table that eager execution (and later the lazy compiler) dispatch through. */
#ifndef PETREL_AUTOGRAD_IMPL_H
#define PETREL_AUTOGRAD_IMPL_H

#include "petrel/autograd.h"

#define PETREL_NODE_MAX_SRC 3

typedef struct petrel_node {
    petrel_op op;
    petrel_tensor *out;
    petrel_tensor *src[PETREL_NODE_MAX_SRC];
    int nsrc;
    /* Op parameters, by kind. */
    union {
        struct {
            int64_t stride, pad;
        } conv;
        struct {
            int64_t k, s;
        } pool;
        struct {
            petrel_unary_op fn;
        } unary;
        struct {
            float p;
            bool training;
            petrel_rng *rng;
        } dropout;
        struct {
            const int32_t *idx;
            int64_t n;
        } index; /* labels or embedding rows */
    } p;
    /* Buffers the forward keeps for the backward (arena memory), by kind:
     * softmax_xent: probs; conv2d: im2col columns; maxpool2d: argmax; dropout: mask. */
    void *saved;
} petrel_node;

typedef struct petrel_op_def {
    const char *name;
    void (*forward)(petrel_node *n, const petrel_kernels *k);
    /* Adds to src[i]->grad for every input with requires_grad; the graph has
     * allocated those gradients already. */
    void (*backward)(petrel_node *n, const petrel_kernels *k);
    /* src[0]'s gradient is given as sparse rows (embedding): the graph does not
     * make a dense one when src[0] has none. */
    bool sparse_src0;
} petrel_op_def;

extern const petrel_op_def petreli_op_matmul, petreli_op_linear, petreli_op_add, petreli_op_mul,
    petreli_op_unary, petreli_op_softmax_xent, petreli_op_conv2d, petreli_op_maxpool2d,
    petreli_op_reshape, petreli_op_embedding, petreli_op_dropout, petreli_op_sum,
    petreli_op_log_softmax;

/* Allocates a node with the given inputs and an output of shape ne (in the arena,
 * or viewing `view` when that is not NULL), and records it. Returns NULL (the graph keeps the
 * error) when an input is NULL or memory runs out. The output requires a gradient when any input
 * does. */
petrel_node *petreli_node_new(petrel_graph *g, petrel_op op, int nsrc, petrel_tensor *const *src,
                              int ndim, const int64_t *ne, float *view);

/* Runs the node's forward now when the graph executes eagerly, and returns its output. */
petrel_tensor *petreli_node_finish(petrel_graph *g, petrel_node *n);

/* Arena memory that lives until the next reset; NULL and a sticky error on failure. */
void *petreli_graph_alloc(petrel_graph *g, size_t bytes);

/* Copies n int32 values into the arena. */
const int32_t *petreli_graph_copy_i32(petrel_graph *g, const int32_t *v, int64_t n);

#endif
