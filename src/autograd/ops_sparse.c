/* Ops whose gradient is sparse or masked: embedding lookup and dropout. */
#include "autograd_impl.h"

#include <string.h>

/* ---- embedding: table (V, D), idx (n) -> (n, D) ---------------------------------
 * The gradient reaching the table is the output gradient itself, row i belonging to
 * table row idx[i]: kept as sparse rows (petrel_graph_sparse_grad) so that a
 * parameter server pushes only the touched rows; added into a dense table->grad
 * only when the caller gave one. */

petrel_tensor *petrel_op_embedding(petrel_graph *g, petrel_tensor *table, const int32_t *idx,
                                   int64_t n) {
    if (!table) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(table->ndim == 2 && petrel_tensor_is_contiguous(table),
                  "embedding: table must be a contiguous matrix (V, D)");
    for (int64_t i = 0; i < n; i++)
        PETREL_ASSERT(idx[i] >= 0 && idx[i] < table->ne[0], "embedding: indices must be in [0, V)");
    int64_t ne[2] = {n, table->ne[1]};
    petrel_node *node = petreli_node_new(g, PETREL_OP_EMBEDDING, 1, &table, 2, ne, NULL);
    if (node) {
        node->p.index.idx = petreli_graph_copy_i32(g, idx, n);
        node->p.index.n = n;
        if (!node->p.index.idx) node = NULL;
    }
    return petreli_node_finish(g, node);
}

static void embedding_forward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    int64_t D = n->out->ne[1];
    for (int64_t i = 0; i < n->p.index.n; i++)
        memcpy(n->out->data + i * D, n->src[0]->data + (int64_t)n->p.index.idx[i] * D,
               (size_t)D * sizeof(float));
}

static void embedding_backward(petrel_node *n, const petrel_kernels *k) {
    petrel_tensor *table = n->src[0];
    if (!table->grad) return; /* sparse rows only */
    int64_t D = n->out->ne[1];
    for (int64_t i = 0; i < n->p.index.n; i++)
        k->axpy(table->grad->data + (int64_t)n->p.index.idx[i] * D, 1.0f,
                n->out->grad->data + i * D, D);
}

const petrel_op_def petreli_op_embedding = {"embedding", embedding_forward, embedding_backward,
                                            true};

/* ---- dropout: y = x * mask, mask = 0 with probability p, else 1 / (1 - p) ------- */

petrel_tensor *petrel_op_dropout(petrel_graph *g, petrel_tensor *x, float p, bool training,
                                 petrel_rng *rng) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(p >= 0.0f && p < 1.0f, "dropout: p must be in [0, 1)");
    PETREL_ASSERT(petrel_tensor_is_contiguous(x), "dropout needs a contiguous input");
    PETREL_ASSERT(!training || rng, "dropout in training needs an rng");
    petrel_node *n = petreli_node_new(g, PETREL_OP_DROPOUT, 1, &x, x->ndim, x->ne, NULL);
    if (n) {
        n->p.dropout.p = p;
        n->p.dropout.training = training;
        n->p.dropout.rng = rng;
        n->saved = petreli_graph_alloc(g, (size_t)petrel_tensor_numel(x) * sizeof(float));
        if (!n->saved) n = NULL;
    }
    return petreli_node_finish(g, n);
}

static void dropout_forward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    int64_t total = petrel_tensor_numel(n->out);
    float *mask = n->saved, p = n->p.dropout.p;
    float keep = p > 0.0f && n->p.dropout.training ? 1.0f / (1.0f - p) : 1.0f;
    for (int64_t i = 0; i < total; i++)
        mask[i] = n->p.dropout.training && petrel_rng_uniform(n->p.dropout.rng) < p ? 0.0f : keep;
    const float *x = n->src[0]->data;
    for (int64_t i = 0; i < total; i++) n->out->data[i] = x[i] * mask[i];
}

static void dropout_backward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    int64_t total = petrel_tensor_numel(n->out);
    const float *mask = n->saved, *dy = n->out->grad->data;
    float *dx = n->src[0]->grad->data;
    for (int64_t i = 0; i < total; i++) dx[i] += dy[i] * mask[i];
}

const petrel_op_def petreli_op_dropout = {"dropout", dropout_forward, dropout_backward, false};
