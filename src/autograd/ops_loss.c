/* Losses and normalizers: softmax cross-entropy (fused) and log-softmax. */
#include "autograd_impl.h"

#include <math.h>

/* ---- softmax cross-entropy: logits (B, C), labels (B) -> mean loss (1) ------- */

petrel_tensor *petrel_op_softmax_xent(petrel_graph *g, petrel_tensor *logits,
                                      const int32_t *labels) {
    if (!logits) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(logits->ndim == 2 && petrel_tensor_is_contiguous(logits),
                  "softmax_xent: logits must be a contiguous matrix (B, C)");
    int64_t B = logits->ne[0], C = logits->ne[1];
    for (int64_t b = 0; b < B; b++)
        PETREL_ASSERT(labels[b] >= 0 && labels[b] < C, "softmax_xent: labels must be in [0, C)");
    int64_t one = 1;
    petrel_node *n = petreli_node_new(g, PETREL_OP_SOFTMAX_XENT, 1, &logits, 1, &one, NULL);
    if (n) {
        n->p.index.idx = petreli_graph_copy_i32(g, labels, B);
        n->p.index.n = B;
        n->saved = petreli_graph_alloc(g, (size_t)(B * C) * sizeof(float));
        if (!n->p.index.idx || !n->saved) n = NULL;
    }
    return petreli_node_finish(g, n);
}

static void xent_forward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *z = n->src[0];
    n->out->data[0] = (float)k->softmax_xent(n->saved, z->data, n->p.index.idx, z->ne[0], z->ne[1]);
}

static void xent_backward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *z = n->src[0];
    int64_t B = z->ne[0];
    if (B == 0) return;
    k->softmax_xent_backward(z->grad->data, n->saved, n->p.index.idx, B, z->ne[1],
                             n->out->grad->data[0] / (float)B);
}

const petrel_op_def petreli_op_softmax_xent = {"softmax_xent", xent_forward, xent_backward, false};

/* ---- log-softmax: x (R, C) -> y (R, C), y = x - logsumexp(x) per row ------------ */

petrel_tensor *petrel_op_log_softmax(petrel_graph *g, petrel_tensor *x) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(x->ndim == 2 && petrel_tensor_is_contiguous(x),
                  "log_softmax: x must be a contiguous matrix (R, C)");
    return petreli_node_finish(g,
                               petreli_node_new(g, PETREL_OP_LOG_SOFTMAX, 1, &x, 2, x->ne, NULL));
}

static void log_softmax_forward(petrel_node *n, const petrel_kernels *k) {
    k->log_softmax(n->out->data, n->src[0]->data, n->out->ne[0], n->out->ne[1]);
}

/* dx = dy - softmax(x) * sum(dy), per row; softmax(x) = exp(y). */
static void log_softmax_backward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    int64_t R = n->out->ne[0], C = n->out->ne[1];
    const float *y = n->out->data, *dy = n->out->grad->data;
    float *dx = n->src[0]->grad->data;
    for (int64_t r = 0; r < R; r++) {
        float s = 0;
        for (int64_t c = 0; c < C; c++) s += dy[r * C + c];
        for (int64_t c = 0; c < C; c++) dx[r * C + c] += dy[r * C + c] - expf(y[r * C + c]) * s;
    }
}

const petrel_op_def petreli_op_log_softmax = {"log_softmax", log_softmax_forward,
                                              log_softmax_backward, false};
