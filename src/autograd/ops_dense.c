/* Dense ops: matmul, linear, broadcasting add and mul, unary activations, sum, reshape. */
#include "autograd_impl.h"

static float *data(const petrel_tensor *t) {
    return t->data;
}

static float *grad(const petrel_tensor *t) {
    return t->grad ? t->grad->data : NULL;
}

static void require_matrix(const petrel_tensor *t, const char *what) {
    PETREL_ASSERT(t->ndim == 2 && petrel_tensor_is_contiguous(t), what);
}

/* ---- matmul: a (M, K) x b (K, N) -> c (M, N) ------------------------------ */

petrel_tensor *petrel_op_matmul(petrel_graph *g, petrel_tensor *a, petrel_tensor *b) {
    if (!a || !b) return petreli_node_finish(g, NULL);
    require_matrix(a, "matmul: a must be a contiguous matrix (M, K)");
    require_matrix(b, "matmul: b must be a contiguous matrix (K, N)");
    PETREL_ASSERT(a->ne[1] == b->ne[0], "matmul: a (M, K) and b (K, N) must share K");
    petrel_tensor *src[2] = {a, b};
    int64_t ne[2] = {a->ne[0], b->ne[1]};
    return petreli_node_finish(g, petreli_node_new(g, PETREL_OP_MATMUL, 2, src, 2, ne, NULL));
}

static void matmul_forward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *a = n->src[0], *b = n->src[1];
    int64_t M = a->ne[0], K = a->ne[1], N = b->ne[1];
    k->gemm(false, false, M, N, K, 1.0f, data(a), K, data(b), N, 0.0f, data(n->out), N);
}

static void matmul_backward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *a = n->src[0], *b = n->src[1];
    int64_t M = a->ne[0], K = a->ne[1], N = b->ne[1];
    const float *dc = grad(n->out);
    if (a->requires_grad) /* da (M, K) += dc (M, N) b^T */
        k->gemm(false, true, M, K, N, 1.0f, dc, N, data(b), N, 1.0f, grad(a), K);
    if (b->requires_grad) /* db (K, N) += a^T dc */
        k->gemm(true, false, K, N, M, 1.0f, data(a), K, dc, N, 1.0f, grad(b), N);
}

const petrel_op_def petreli_op_matmul = {"matmul", matmul_forward, matmul_backward, false};

/* ---- linear: x (B, IN), w (OUT, IN), bias (OUT) -> y (B, OUT) = x w^T + bias -- */

petrel_tensor *petrel_op_linear(petrel_graph *g, petrel_tensor *x, petrel_tensor *w,
                                petrel_tensor *bias) {
    if (!x || !w) return petreli_node_finish(g, NULL);
    require_matrix(x, "linear: x must be a contiguous matrix (B, IN)");
    require_matrix(w, "linear: w must be a contiguous matrix (OUT, IN)");
    PETREL_ASSERT(x->ne[1] == w->ne[1], "linear: x (B, IN) and w (OUT, IN) must share IN");
    PETREL_ASSERT(!bias || petrel_tensor_numel(bias) == w->ne[0],
                  "linear: bias must have OUT elements");
    petrel_tensor *src[3] = {x, w, bias};
    int64_t ne[2] = {x->ne[0], w->ne[0]};
    return petreli_node_finish(
        g, petreli_node_new(g, PETREL_OP_LINEAR, bias ? 3 : 2, src, 2, ne, NULL));
}

static void linear_forward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *x = n->src[0], *w = n->src[1];
    int64_t B = x->ne[0], IN = x->ne[1], OUT = w->ne[0];
    float *y = data(n->out);
    k->gemm(false, true, B, OUT, IN, 1.0f, data(x), IN, data(w), IN, 0.0f, y, OUT);
    if (n->nsrc == 3) k->add_row(y, y, data(n->src[2]), B, OUT);
}

static void linear_backward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *x = n->src[0], *w = n->src[1];
    int64_t B = x->ne[0], IN = x->ne[1], OUT = w->ne[0];
    const float *dy = grad(n->out);
    if (w->requires_grad && !w->grad_from_factors) /* dw (OUT, IN) += dy^T (OUT, B) x (B, IN) */
        k->gemm(true, false, OUT, IN, B, 1.0f, dy, OUT, data(x), IN, 1.0f, grad(w), IN);
    if (n->nsrc == 3 && n->src[2]->requires_grad) k->sum_rows_acc(grad(n->src[2]), dy, B, OUT);
    if (x->requires_grad) /* dx (B, IN) += dy (B, OUT) w (OUT, IN) */
        k->gemm(false, false, B, IN, OUT, 1.0f, dy, OUT, data(w), IN, 1.0f, grad(x), IN);
}

const petrel_op_def petreli_op_linear = {"linear", linear_forward, linear_backward, false};

/* ---- broadcasting add and mul ----------------------------------------------- */

/* The output shape padded to 4 dims, and for each of up to 3 tensors its element
 * strides over that shape (0 along a broadcast dimension). Shapes align at the
 * last dimension, as in NumPy. */
typedef struct bcast {
    int64_t ne[4];
    int64_t st[3][4];
} bcast;

static void bcast_init(bcast *bc, const petrel_tensor *out, int count, const petrel_tensor **t) {
    for (int d = 0; d < 4; d++) {
        int od = d - (4 - out->ndim);
        bc->ne[d] = od < 0 ? 1 : out->ne[od];
        for (int j = 0; j < count; j++) {
            int td = d - (4 - t[j]->ndim);
            bc->st[j][d] =
                (td < 0 || t[j]->ne[td] == 1) ? 0 : t[j]->nb[td] / (int64_t)sizeof(float);
        }
    }
}

static int64_t bcast_offset(const bcast *bc, int j, const int64_t *i) {
    return i[0] * bc->st[j][0] + i[1] * bc->st[j][1] + i[2] * bc->st[j][2] + i[3] * bc->st[j][3];
}

/* Advances a row-major 4-d index over bc's shape. */
static void bcast_next(const bcast *bc, int64_t *i) {
    for (int d = 3; d >= 0; d--) {
        if (++i[d] < bc->ne[d]) return;
        i[d] = 0;
    }
}

static int broadcast_shape(const petrel_tensor *a, const petrel_tensor *b, int64_t *ne) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < nd; i++) {
        int da = a->ndim - nd + i, db = b->ndim - nd + i;
        int64_t ea = da >= 0 ? a->ne[da] : 1, eb = db >= 0 ? b->ne[db] : 1;
        PETREL_ASSERT(ea == eb || ea == 1 || eb == 1,
                      "add/mul: shapes must match or be 1 in each aligned dimension");
        ne[i] = ea > eb ? ea : eb;
    }
    return nd;
}

static petrel_tensor *binary(petrel_graph *g, petrel_op op, petrel_tensor *a, petrel_tensor *b) {
    if (!a || !b) return petreli_node_finish(g, NULL);
    int64_t ne[PETREL_MAX_DIMS];
    int nd = broadcast_shape(a, b, ne);
    petrel_tensor *src[2] = {a, b};
    return petreli_node_finish(g, petreli_node_new(g, op, 2, src, nd, ne, NULL));
}

petrel_tensor *petrel_op_add(petrel_graph *g, petrel_tensor *a, petrel_tensor *b) {
    return binary(g, PETREL_OP_ADD, a, b);
}

petrel_tensor *petrel_op_mul(petrel_graph *g, petrel_tensor *a, petrel_tensor *b) {
    return binary(g, PETREL_OP_MUL, a, b);
}

/* The common bias case, a (R, C) + b (C): handled by the row kernels. */
static bool is_row_bias(const petrel_tensor *a, const petrel_tensor *b, const petrel_tensor *out) {
    return petrel_tensor_same_shape(a, out) && petrel_tensor_is_contiguous(a) &&
           petrel_tensor_is_contiguous(b) && b->ne[b->ndim - 1] == out->ne[out->ndim - 1] &&
           petrel_tensor_numel(b) == out->ne[out->ndim - 1];
}

static void binary_forward(petrel_node *n, bool mul) {
    const petrel_tensor *t[2] = {n->src[0], n->src[1]};
    bcast bc;
    bcast_init(&bc, n->out, 2, t);
    const float *pa = data(t[0]), *pb = data(t[1]);
    float *y = data(n->out);
    int64_t i[4] = {0, 0, 0, 0}, total = petrel_tensor_numel(n->out);
    for (int64_t o = 0; o < total; o++, bcast_next(&bc, i)) {
        float va = pa[bcast_offset(&bc, 0, i)], vb = pb[bcast_offset(&bc, 1, i)];
        y[o] = mul ? va * vb : va + vb;
    }
}

/* d(operand) += dout * (the other operand for mul, 1 for add), summed over the
 * dimensions along which the operand was broadcast. */
static void binary_backward(petrel_node *n, bool mul) {
    const float *dy = grad(n->out);
    int64_t total = petrel_tensor_numel(n->out);
    for (int j = 0; j < 2; j++) {
        const petrel_tensor *self = n->src[j], *other = n->src[1 - j];
        if (!self->requires_grad) continue;
        /* Gradients are fresh contiguous tensors: their strides follow their shape. */
        petrel_tensor gview = petrel_tensor_view(grad(self), self->ndim, self->ne);
        const petrel_tensor *t[2] = {&gview, other};
        bcast bc;
        bcast_init(&bc, n->out, 2, t);
        float *dself = grad(self);
        const float *po = data(other);
        int64_t i[4] = {0, 0, 0, 0};
        for (int64_t o = 0; o < total; o++, bcast_next(&bc, i))
            dself[bcast_offset(&bc, 0, i)] += mul ? dy[o] * po[bcast_offset(&bc, 1, i)] : dy[o];
    }
}

static void add_forward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *a = n->src[0], *b = n->src[1];
    if (is_row_bias(a, b, n->out)) {
        int64_t C = n->out->ne[n->out->ndim - 1];
        k->add_row(data(n->out), data(a), data(b), petrel_tensor_numel(n->out) / C, C);
        return;
    }
    binary_forward(n, false);
}

static void add_backward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *a = n->src[0], *b = n->src[1];
    if (is_row_bias(a, b, n->out)) {
        int64_t C = n->out->ne[n->out->ndim - 1], R = petrel_tensor_numel(n->out) / C;
        if (a->requires_grad) k->axpy(grad(a), 1.0f, grad(n->out), R * C);
        if (b->requires_grad) k->sum_rows_acc(grad(b), grad(n->out), R, C);
        return;
    }
    binary_backward(n, false);
}

static void mul_forward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    binary_forward(n, true);
}

static void mul_backward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    binary_backward(n, true);
}

const petrel_op_def petreli_op_add = {"add", add_forward, add_backward, false};
const petrel_op_def petreli_op_mul = {"mul", mul_forward, mul_backward, false};

/* ---- unary activations ---------------------------------------------------- */

static petrel_tensor *unary(petrel_graph *g, petrel_tensor *x, petrel_unary_op fn) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(petrel_tensor_is_contiguous(x), "activations need a contiguous input");
    petrel_node *n = petreli_node_new(g, PETREL_OP_UNARY, 1, &x, x->ndim, x->ne, NULL);
    if (n) n->p.unary.fn = fn;
    return petreli_node_finish(g, n);
}

petrel_tensor *petrel_op_relu(petrel_graph *g, petrel_tensor *x) {
    return unary(g, x, PETREL_UNARY_RELU);
}

petrel_tensor *petrel_op_tanh(petrel_graph *g, petrel_tensor *x) {
    return unary(g, x, PETREL_UNARY_TANH);
}

petrel_tensor *petrel_op_sigmoid(petrel_graph *g, petrel_tensor *x) {
    return unary(g, x, PETREL_UNARY_SIGMOID);
}

static void unary_forward(petrel_node *n, const petrel_kernels *k) {
    k->unary(n->p.unary.fn, data(n->out), data(n->src[0]), petrel_tensor_numel(n->out));
}

static void unary_backward(petrel_node *n, const petrel_kernels *k) {
    k->unary_backward(n->p.unary.fn, grad(n->src[0]), grad(n->out), data(n->out),
                      petrel_tensor_numel(n->out));
}

const petrel_op_def petreli_op_unary = {"unary", unary_forward, unary_backward, false};

/* ---- sum ---------------------------------------------------------------------- */

petrel_tensor *petrel_op_sum(petrel_graph *g, petrel_tensor *x) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(petrel_tensor_is_contiguous(x), "sum needs a contiguous input");
    int64_t one = 1;
    return petreli_node_finish(g, petreli_node_new(g, PETREL_OP_SUM, 1, &x, 1, &one, NULL));
}

static void sum_forward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    const float *x = data(n->src[0]);
    double s = 0;
    for (int64_t i = 0, e = petrel_tensor_numel(n->src[0]); i < e; i++) s += x[i];
    data(n->out)[0] = (float)s;
}

static void sum_backward(petrel_node *n, const petrel_kernels *k) {
    (void)k;
    float d = grad(n->out)[0];
    float *dx = grad(n->src[0]);
    for (int64_t i = 0, e = petrel_tensor_numel(n->src[0]); i < e; i++) dx[i] += d;
}

const petrel_op_def petreli_op_sum = {"sum", sum_forward, sum_backward, false};

/* ---- reshape: a view of the same data ---------------------------------------- */

petrel_tensor *petrel_op_reshape(petrel_graph *g, petrel_tensor *x, int ndim, const int64_t *ne) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(petrel_tensor_is_contiguous(x), "reshape needs a contiguous input");
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= ne[d];
    PETREL_ASSERT(numel == petrel_tensor_numel(x), "reshape must keep the number of elements");
    return petreli_node_finish(g, petreli_node_new(g, PETREL_OP_RESHAPE, 1, &x, ndim, ne, x->data));
}

petrel_tensor *petrel_op_flatten(petrel_graph *g, petrel_tensor *x) {
    if (!x) return petreli_node_finish(g, NULL);
    int64_t ne[2] = {x->ne[0], petrel_tensor_numel(x) / (x->ne[0] ? x->ne[0] : 1)};
    return petrel_op_reshape(g, x, 2, ne);
}

static void reshape_forward(petrel_node *n, const petrel_kernels *k) {
    (void)n; /* the output views the input's data */
    (void)k;
}

static void reshape_backward(petrel_node *n, const petrel_kernels *k) {
    k->axpy(grad(n->src[0]), 1.0f, grad(n->out), petrel_tensor_numel(n->out));
}

const petrel_op_def petreli_op_reshape = {"reshape", reshape_forward, reshape_backward, false};
