/*
 * The graph: an arena, a tape of nodes in creation order, and reverse-mode
 * differentiation over that tape. Creation order is a topological order, so the
 * reverse of the tape visits each node after every node that consumed it.
 */
#include "autograd_impl.h"

#include <string.h>

/* Leaves given an arena gradient by backward; reset clears their grad pointers,
 * which would otherwise outlive the arena memory they point into. */
typedef struct leaf_grad {
    petrel_tensor *leaf;
    struct leaf_grad *next;
} leaf_grad;

struct petrel_graph {
    petrel_arena arena;
    leaf_grad *leaf_grads;
    petrel_node **tape;
    size_t count, capacity;
    petrel_err error;
    petrel_grad_ready_fn grad_ready;
    void *grad_ready_ctx;
};

static const petrel_op_def *const op_defs[PETREL_OP_COUNT] = {
    [PETREL_OP_MATMUL] = &petreli_op_matmul,
    [PETREL_OP_LINEAR] = &petreli_op_linear,
    [PETREL_OP_ADD] = &petreli_op_add,
    [PETREL_OP_MUL] = &petreli_op_mul,
    [PETREL_OP_UNARY] = &petreli_op_unary,
    [PETREL_OP_SOFTMAX_XENT] = &petreli_op_softmax_xent,
    [PETREL_OP_CONV2D] = &petreli_op_conv2d,
    [PETREL_OP_MAXPOOL2D] = &petreli_op_maxpool2d,
    [PETREL_OP_RESHAPE] = &petreli_op_reshape,
    [PETREL_OP_EMBEDDING] = &petreli_op_embedding,
    [PETREL_OP_DROPOUT] = &petreli_op_dropout,
    [PETREL_OP_SUM] = &petreli_op_sum,
    [PETREL_OP_LOG_SOFTMAX] = &petreli_op_log_softmax,
};

const char *petrel_op_name(petrel_op op) {
    return op > PETREL_OP_NONE && op < PETREL_OP_COUNT && op_defs[op] ? op_defs[op]->name : "none";
}

petrel_err petrel_graph_new(petrel_graph **out, size_t arena_bytes) {
    petrel_graph *g = petrel_calloc(1, sizeof *g);
    if (!g) return PETREL_ERR_NOMEM;
    petrel_arena_init(&g->arena, arena_bytes ? arena_bytes : (size_t)1 << 20);
    g->capacity = 64;
    g->tape = petrel_malloc(g->capacity * sizeof *g->tape);
    if (!g->tape) {
        petrel_graph_free(g);
        return PETREL_ERR_NOMEM;
    }
    *out = g;
    return PETREL_OK;
}

/* Leaves outside the arena must not keep grad pointers into memory that goes away. */
static void clear_leaf_grads(petrel_graph *g) {
    for (leaf_grad *l = g->leaf_grads; l; l = l->next) l->leaf->grad = NULL;
    g->leaf_grads = NULL;
}

void petrel_graph_free(petrel_graph *g) {
    if (!g) return;
    clear_leaf_grads(g);
    petrel_arena_fini(&g->arena);
    petrel_free(g->tape);
    petrel_free(g);
}

void petrel_graph_reset(petrel_graph *g) {
    clear_leaf_grads(g);
    petrel_arena_reset(&g->arena);
    g->count = 0;
    g->error = PETREL_OK;
}

petrel_err petrel_graph_error(const petrel_graph *g) {
    return g->error;
}

size_t petrel_graph_node_count(const petrel_graph *g) {
    return g->count;
}

size_t petrel_graph_arena_used(const petrel_graph *g) {
    return g->arena.used_bytes;
}

void *petreli_graph_alloc(petrel_graph *g, size_t bytes) {
    void *p = petrel_arena_alloc(&g->arena, bytes);
    if (!p && g->error == PETREL_OK) g->error = PETREL_ERR_NOMEM;
    return p;
}

const int32_t *petreli_graph_copy_i32(petrel_graph *g, const int32_t *v, int64_t n) {
    int32_t *c = petreli_graph_alloc(g, (size_t)n * sizeof *c);
    if (c) memcpy(c, v, (size_t)n * sizeof *c);
    return c;
}

static petrel_tensor *tensor_in_arena(petrel_graph *g, float *data, int ndim, const int64_t *ne) {
    petrel_tensor *t = petreli_graph_alloc(g, sizeof *t);
    if (!t) return NULL;
    *t = petrel_tensor_view(data, ndim, ne);
    return t;
}

petrel_tensor *petrel_graph_tensor(petrel_graph *g, int ndim, const int64_t *ne) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= ne[d];
    float *data = petreli_graph_alloc(g, (size_t)n * sizeof(float));
    return data ? tensor_in_arena(g, data, ndim, ne) : NULL;
}

petrel_tensor *petrel_graph_input(petrel_graph *g, float *data, int ndim, const int64_t *ne) {
    return tensor_in_arena(g, data, ndim, ne);
}

static bool tape_push(petrel_graph *g, petrel_node *n) {
    if (g->count == g->capacity) {
        /* Grows during the first steps only: the tape length of a step is fixed. */
        petrel_node **t = petrel_realloc(g->tape, 2 * g->capacity * sizeof *t);
        if (!t) return false;
        g->tape = t;
        g->capacity *= 2;
    }
    g->tape[g->count++] = n;
    return true;
}

petrel_node *petreli_node_new(petrel_graph *g, petrel_op op, int nsrc, petrel_tensor *const *src,
                              int ndim, const int64_t *ne, float *view) {
    PETREL_ASSERT(nsrc <= PETREL_NODE_MAX_SRC, "too many op inputs");
    bool requires_grad = false;
    for (int i = 0; i < nsrc; i++) {
        if (!src[i]) {
            if (g->error == PETREL_OK) g->error = PETREL_ERR_INVALID;
            return NULL;
        }
        requires_grad |= src[i]->requires_grad;
    }
    petrel_node *n = petreli_graph_alloc(g, sizeof *n);
    petrel_tensor *out = !n     ? NULL
                         : view ? tensor_in_arena(g, view, ndim, ne)
                                : petrel_graph_tensor(g, ndim, ne);
    if (!out) return NULL;
    memset(n, 0, sizeof *n);
    n->op = op;
    n->out = out;
    n->nsrc = nsrc;
    for (int i = 0; i < nsrc; i++) n->src[i] = src[i];
    out->node = n;
    out->requires_grad = requires_grad;
    if (!tape_push(g, n)) {
        if (g->error == PETREL_OK) g->error = PETREL_ERR_NOMEM;
        return NULL;
    }
    return n;
}

petrel_tensor *petreli_node_finish(petrel_graph *g, petrel_node *n) {
    if (!n || g->error != PETREL_OK) return NULL;
    op_defs[n->op]->forward(n, petrel_kernels_current());
    return n->out;
}

/* Zeroed arena gradient for an intermediate tensor that has none yet. */
static bool ensure_grad(petrel_graph *g, petrel_tensor *t) {
    if (t->grad) return true;
    int64_t n = petrel_tensor_numel(t);
    float *d = petrel_arena_calloc(&g->arena, (size_t)n * sizeof(float));
    petrel_tensor *gt = d ? tensor_in_arena(g, d, t->ndim, t->ne) : NULL;
    if (!gt) return false;
    if (!t->node) {
        leaf_grad *l = petrel_arena_alloc(&g->arena, sizeof *l);
        if (!l) return false;
        l->leaf = t;
        l->next = g->leaf_grads;
        g->leaf_grads = l;
    }
    t->grad = gt;
    return true;
}

/* True when a node reads t through an input whose gradient is dense. */
static bool has_dense_use(const petrel_graph *g, const petrel_tensor *t) {
    for (size_t i = 0; i < g->count; i++) {
        const petrel_node *n = g->tape[i];
        for (int s = 0; s < n->nsrc; s++)
            if (n->src[s] == t && !(s == 0 && op_defs[n->op]->sparse_src0)) return true;
    }
    return false;
}

/* A table read by an embedding (sparse gradient) and also by a dense op gets its
 * dense gradient before the reverse walk: an embedding later on the tape than the
 * dense use runs its backward first, and would find no gradient to add to. */
static bool ensure_shared_table_grads(petrel_graph *g) {
    for (size_t i = 0; i < g->count; i++) {
        petrel_node *n = g->tape[i];
        petrel_tensor *t = n->nsrc > 0 ? n->src[0] : NULL;
        if (!t || !op_defs[n->op]->sparse_src0 || !t->requires_grad || t->grad) continue;
        if (has_dense_use(g, t) && !ensure_grad(g, t)) return false;
    }
    return true;
}

/* For each node, a bit per input that is a leaf needing a gradient and read here
 * for the first time on the tape: the reverse walk completes that leaf's gradient
 * with this node's backward. Arena memory; NULL when out of it. */
static uint8_t *mark_first_uses(petrel_graph *g) {
    uint8_t *mask = petrel_arena_calloc(&g->arena, g->count ? g->count : 1);
    const petrel_tensor **seen =
        petrel_arena_alloc(&g->arena, (g->count * PETREL_NODE_MAX_SRC + 1) * sizeof *seen);
    if (!mask || !seen) return NULL;
    size_t nseen = 0;
    for (size_t i = 0; i < g->count; i++) {
        const petrel_node *n = g->tape[i];
        for (int s = 0; s < n->nsrc; s++) {
            const petrel_tensor *t = n->src[s];
            if (t->node || !t->requires_grad || (s == 0 && op_defs[n->op]->sparse_src0 && !t->grad))
                continue;
            size_t j = 0;
            while (j < nseen && seen[j] != t) j++;
            if (j < nseen) continue;
            seen[nseen++] = t;
            mask[i] |= (uint8_t)(1u << s);
        }
    }
    return mask;
}

void petrel_graph_on_grad_ready(petrel_graph *g, petrel_grad_ready_fn fn, void *ctx) {
    g->grad_ready = fn;
    g->grad_ready_ctx = ctx;
}

petrel_err petrel_graph_linear_factors(const petrel_graph *g, const petrel_tensor *w,
                                       const petrel_tensor **x, const petrel_tensor **dy) {
    for (size_t i = 0; i < g->count; i++) {
        const petrel_node *n = g->tape[i];
        if (n->op != PETREL_OP_LINEAR || n->src[1] != w) continue;
        if (!n->out->grad) break;
        *x = n->src[0];
        *dy = n->out->grad;
        return PETREL_OK;
    }
    return petrel_error_set(PETREL_ERR_NOT_FOUND, "no linear op with this weight has a gradient");
}

petrel_err petrel_backward(petrel_graph *g, petrel_tensor *loss) {
    if (g->error != PETREL_OK)
        return petrel_error_set(g->error, "backward on a graph whose forward failed");
    if (!loss || petrel_tensor_numel(loss) != 1)
        return petrel_error_set(PETREL_ERR_INVALID, "backward needs a one-element loss");
    if (!loss->requires_grad) return PETREL_OK; /* nothing to differentiate */
    /* Gradients of op results start from zero on every pass: a second backward over
     * the same tape then adds each leaf's gradient once more, instead of replaying
     * what the first pass left in the intermediate gradients. */
    for (size_t i = 0; i < g->count; i++) {
        petrel_tensor *out = g->tape[i]->out;
        if (out->grad) memset(out->grad->data, 0, (size_t)petrel_tensor_numel(out) * sizeof(float));
    }
    if (!ensure_grad(g, loss) || !ensure_shared_table_grads(g)) {
        g->error = PETREL_ERR_NOMEM;
        return petrel_error_set(PETREL_ERR_NOMEM, "backward: out of memory for gradients");
    }
    loss->grad->data[0] += 1.0f;
    uint8_t *first_use = NULL;
    if (g->grad_ready && !(first_use = mark_first_uses(g))) {
        g->error = PETREL_ERR_NOMEM;
        return petrel_error_set(PETREL_ERR_NOMEM, "backward: out of memory");
    }
    const petrel_kernels *k = petrel_kernels_current();
    for (size_t i = g->count; i-- > 0;) {
        petrel_node *n = g->tape[i];
        if (!n->out->grad || !n->out->requires_grad) continue; /* no gradient reaches it */
        for (int s = 0; s < n->nsrc; s++) {
            if (!n->src[s]->requires_grad || (s == 0 && op_defs[n->op]->sparse_src0)) continue;
            if (!ensure_grad(g, n->src[s])) {
                g->error = PETREL_ERR_NOMEM;
                return PETREL_ERR_NOMEM;
            }
        }
        op_defs[n->op]->backward(n, k);
        if (first_use)
            for (int s = 0; s < n->nsrc; s++)
                if (first_use[i] & (1u << s)) g->grad_ready(g->grad_ready_ctx, n->src[s]);
    }
    return PETREL_OK;
}

petrel_err petrel_graph_sparse_grad(const petrel_graph *g, const petrel_tensor *table,
                                    petrel_sparse_grad *out) {
    for (size_t i = 0; i < g->count; i++) {
        const petrel_node *n = g->tape[i];
        if (n->op != PETREL_OP_EMBEDDING || n->src[0] != table) continue;
        if (!n->out->grad) break;
        out->n = n->p.index.n;
        out->dim = table->ne[1];
        out->rows = n->p.index.idx;
        out->values = n->out->grad->data;
        return PETREL_OK;
    }
    return petrel_error_set(PETREL_ERR_NOT_FOUND, "no embedding of this table has a gradient");
}
