/*
 * Finite-difference gradient checks for every differentiable op, and for a small
 * MLP and CNN built from them.
 *
 * Method. For an op y = f(x_1, ..., x_k) and fixed random weights r, the scalar loss
 * L = sum_i r_i y_i. The analytic gradient comes from petrel_backward on
 * sum(mul(y, r)); the numerical one from central differences
 *     dL/dx_j ~ (L(x_j + h) - L(x_j - h)) / (2h),
 * with L summed in double from the float32 op output. h = 1e-2 balances float32
 * rounding in L (about 1e-7 |L| / h) against truncation (about h^2 |f'''| / 6);
 * both stay near 1e-5, well inside tolerances (atol 2e-4, rtol 2e-3) that a wrong
 * factor (a missing 1/B, a doubled term) or a transposed gradient exceeds by orders
 * of magnitude: test_gradcheck_detects_errors proves that on purpose-built errors.
 * Inputs keep clear of the kinks of relu and max pooling by a margin larger than h.
 *
 * Every case also runs with the reference kernel set, whose outputs and gradients
 * must match the cpu set's.
 *
 * Random data comes from one seeded petrel_rng (PETREL_TEST_SEED overrides the
 * seed); a failing check prints the seed, the case, the input and the element.
 */
#include "check.h"

static uint64_t seed = 424242;
static petrel_rng rng;
static bool verbose;

#define MAX_LEAVES   6
#define DEFAULT_H    1e-2
#define DEFAULT_ATOL 2e-4
#define DEFAULT_RTOL 2e-3

/* ---- the harness ------------------------------------------------------------------------ */

/* LEAF("x", 2, 4, 5): a leaf named x of shape (4, 5); options follow as designators. */
#define LEAF(nm, nd, ...) .name = (nm), .ndim = (nd), .ne = {__VA_ARGS__}

typedef struct leaf_spec {
    const char *name;
    int ndim;
    int64_t ne[PETREL_MAX_DIMS];
    float lo, hi;     /* values uniform in [lo, hi); both 0: [-1, 1) */
    float margin;     /* values pushed to |v| >= margin (clear of relu's kink) */
    bool distinct;    /* values a shuffled grid with step 0.05 (no ties for max pooling) */
    bool no_grad;     /* requires_grad false: its gradient must stay NULL */
    bool caller_grad; /* gradient in a caller-owned tensor instead of the arena */
} leaf_spec;

/* Builds the op under test from the leaves. ctx is the case's own data. */
typedef petrel_tensor *(*op_fn)(petrel_graph *g, petrel_tensor *const *x, void *ctx);

typedef struct gc_case {
    const char *name;
    op_fn fn;
    void *ctx;
    int nleaves;
    leaf_spec leaf[MAX_LEAVES];
    double h, atol, rtol; /* 0: the defaults */
    /* Optional: false when the drawn values sit too close to a kink; the harness then
     * draws new ones. Called after a forward, with ctx. */
    bool (*accept)(void *ctx);
} gc_case;

typedef struct gc_state {
    const gc_case *c;
    petrel_graph *g;
    float *val[MAX_LEAVES];
    int64_t n[MAX_LEAVES];
    float *cgrad[MAX_LEAVES];
    petrel_tensor cgrad_t[MAX_LEAVES];
    petrel_tensor *x[MAX_LEAVES]; /* the leaves of the last forward */
    float *r;                     /* weights of the loss, one per output element */
    int64_t ny;
    int ny_dims;
    int64_t y_ne[PETREL_MAX_DIMS];
} gc_state;

static double h_of(const gc_case *c) {
    return c->h > 0 ? c->h : DEFAULT_H;
}

static float *falloc(int64_t n) {
    float *p = petrel_calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    PETREL_ASSERT(p != NULL, "test allocation failed");
    return p;
}

static void draw_values(const leaf_spec *l, float *v, int64_t n) {
    float lo = l->lo, hi = l->hi;
    if (lo == 0.0f && hi == 0.0f) lo = -1.0f, hi = 1.0f;
    if (l->distinct) {
        /* A shuffled grid: every pair of values differs by at least 0.05. */
        uint32_t *perm = petrel_malloc((size_t)n * sizeof *perm);
        PETREL_ASSERT(perm != NULL, "test allocation failed");
        for (int64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
        petrel_rng_shuffle_u32(&rng, perm, (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = lo + 0.05f * (float)perm[i];
        petrel_free(perm);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        v[i] = lo + (hi - lo) * petrel_rng_uniform(&rng);
        if (l->margin > 0 && fabsf(v[i]) < l->margin)
            v[i] = v[i] < 0 ? v[i] - l->margin : v[i] + l->margin;
    }
}

/* A fresh forward on the state's graph. With grads, the leaves that need a gradient
 * get requires_grad (and a zeroed caller-owned gradient when the spec says so). */
static petrel_tensor *gc_forward(gc_state *s, bool grads) {
    const gc_case *c = s->c;
    petrel_graph_reset(s->g);
    for (int i = 0; i < c->nleaves; i++) {
        const leaf_spec *l = &c->leaf[i];
        s->x[i] = petrel_graph_input(s->g, s->val[i], l->ndim, l->ne);
        PETREL_ASSERT(s->x[i] != NULL, "graph input failed");
        if (grads && !l->no_grad) {
            s->x[i]->requires_grad = true;
            if (l->caller_grad) {
                memset(s->cgrad[i], 0, (size_t)s->n[i] * sizeof(float));
                s->x[i]->grad = &s->cgrad_t[i];
            }
        }
    }
    return c->fn(s->g, s->x, c->ctx);
}

/* L = sum_i r_i y_i, in double, from a forward without gradients. */
static double gc_loss(gc_state *s) {
    petrel_tensor *y = gc_forward(s, false);
    PETREL_ASSERT(y != NULL && petrel_tensor_numel(y) == s->ny, "forward failed");
    PETREL_ASSERT(petrel_tensor_is_contiguous(y), "op outputs are contiguous");
    double L = 0;
    for (int64_t i = 0; i < s->ny; i++) L += (double)s->r[i] * (double)y->data[i];
    return L;
}

static void gc_init(gc_state *s, const gc_case *c) {
    memset(s, 0, sizeof *s);
    s->c = c;
    PETREL_ASSERT(c->nleaves <= MAX_LEAVES, "too many leaves");
    PETREL_ASSERT(petrel_graph_new(&s->g, 0) == PETREL_OK, "graph_new failed");
    for (int i = 0; i < c->nleaves; i++) {
        const leaf_spec *l = &c->leaf[i];
        s->n[i] = 1;
        for (int d = 0; d < l->ndim; d++) s->n[i] *= l->ne[d];
        s->val[i] = falloc(s->n[i]);
        s->cgrad[i] = falloc(s->n[i]);
        s->cgrad_t[i] = petrel_tensor_view(s->cgrad[i], l->ndim, l->ne);
    }
    /* Draw values until they clear every kink (the check is deterministic per seed). */
    for (int attempt = 0;; attempt++) {
        PETREL_ASSERT(attempt < 500, "no kink-free inputs found: loosen the case's margin");
        for (int i = 0; i < c->nleaves; i++) draw_values(&c->leaf[i], s->val[i], s->n[i]);
        petrel_tensor *y = gc_forward(s, false);
        PETREL_ASSERT(y != NULL, "forward failed");
        if (c->accept && !c->accept(c->ctx)) continue;
        s->ny = petrel_tensor_numel(y);
        s->ny_dims = y->ndim;
        memcpy(s->y_ne, y->ne, sizeof s->y_ne);
        break;
    }
    /* Weights of magnitude 0.5 to 1 and random sign: no output is ignored. */
    s->r = falloc(s->ny);
    for (int64_t i = 0; i < s->ny; i++) {
        float m = 0.5f + 0.5f * petrel_rng_uniform(&rng);
        s->r[i] = petrel_rng_below(&rng, 2) ? m : -m;
    }
}

static void gc_fini(gc_state *s) {
    for (int i = 0; i < s->c->nleaves; i++) {
        petrel_free(s->val[i]);
        petrel_free(s->cgrad[i]);
    }
    petrel_free(s->r);
    petrel_graph_free(s->g);
}

/* Central differences for every element of leaf i. */
static void gc_numeric(gc_state *s, int i, double *out) {
    double h = h_of(s->c);
    for (int64_t j = 0; j < s->n[i]; j++) {
        float x0 = s->val[i][j];
        float xp = (float)(x0 + h), xm = (float)(x0 - h);
        s->val[i][j] = xp;
        double lp = gc_loss(s);
        s->val[i][j] = xm;
        double lm = gc_loss(s);
        s->val[i][j] = x0;
        out[j] = (lp - lm) / ((double)xp - (double)xm); /* the step actually taken */
    }
}

/* Forward and backward of sum(y * r) with the current kernel set: y into y_out and
 * each leaf's gradient into grad[i] (NULL for leaves without one). */
static void gc_analytic(gc_state *s, float *y_out, float **grad) {
    const gc_case *c = s->c;
    petrel_tensor *y = gc_forward(s, true);
    CHECK(y != NULL);
    if (!y) return;
    CHECK(y->requires_grad);
    memcpy(y_out, y->data, (size_t)s->ny * sizeof(float));
    petrel_tensor *rt = petrel_graph_input(s->g, s->r, s->ny_dims, s->y_ne);
    petrel_tensor *loss = petrel_op_sum(s->g, petrel_op_mul(s->g, y, rt));
    CHECK(loss != NULL);
    if (!loss) return;
    CHECK_OK(petrel_backward(s->g, loss));
    CHECK(rt->grad == NULL); /* r needs no gradient */
    for (int i = 0; i < c->nleaves; i++) {
        const leaf_spec *l = &c->leaf[i];
        petrel_tensor *x = s->x[i];
        if (l->no_grad) {
            CHECK(x->grad == NULL);
            continue;
        }
        CHECK(x->grad != NULL);
        if (!x->grad) continue;
        if (l->caller_grad) CHECK(x->grad == &s->cgrad_t[i]);
        CHECK(petrel_tensor_same_shape(x->grad, x));
        memcpy(grad[i], x->grad->data, (size_t)s->n[i] * sizeof(float));
    }
}

/* |a - n| <= atol + rtol |n| for every element; reports the first that is not. */
static int64_t compare_grad(const char *what, const float *a, const double *num, int64_t n,
                            double atol, double rtol, double *worst, bool report) {
    int64_t bad = 0;
    for (int64_t j = 0; j < n; j++) {
        double err = fabs((double)a[j] - num[j]), tol = atol + rtol * fabs(num[j]);
        if (err / tol > *worst) *worst = err / tol;
        if (err <= tol) continue;
        if (!bad && report)
            check_fail(__FILE__, __LINE__, "%s[%lld]: analytic %.7g, numerical %.7g (seed %llu)",
                       what, (long long)j, (double)a[j], num[j], (unsigned long long)seed);
        bad++;
    }
    return bad;
}

typedef struct gc_result {
    float *y, *y_ref;
    float *grad[MAX_LEAVES], *grad_ref[MAX_LEAVES];
    double *num[MAX_LEAVES];
} gc_result;

/* Runs case c: analytic gradients with the cpu and the reference kernel sets and
 * numerical gradients. The caller frees with gc_result_free. */
static void gc_run(gc_state *s, gc_result *res) {
    const gc_case *c = s->c;
    memset(res, 0, sizeof *res);
    res->y = falloc(s->ny);
    res->y_ref = falloc(s->ny);
    for (int i = 0; i < c->nleaves; i++) {
        res->grad[i] = falloc(s->n[i]);
        res->grad_ref[i] = falloc(s->n[i]);
        res->num[i] = petrel_calloc((size_t)s->n[i], sizeof(double));
        PETREL_ASSERT(res->num[i] != NULL, "test allocation failed");
    }
    petrel_kernels_set_current(petrel_kernels_cpu());
    gc_analytic(s, res->y, res->grad);
    petrel_kernels_set_current(petrel_kernels_reference());
    gc_analytic(s, res->y_ref, res->grad_ref);
    petrel_kernels_set_current(petrel_kernels_cpu());
    for (int i = 0; i < c->nleaves; i++)
        if (!c->leaf[i].no_grad) gc_numeric(s, i, res->num[i]);
}

static void gc_result_free(const gc_case *c, gc_result *res) {
    petrel_free(res->y);
    petrel_free(res->y_ref);
    for (int i = 0; i < c->nleaves; i++) {
        petrel_free(res->grad[i]);
        petrel_free(res->grad_ref[i]);
        petrel_free(res->num[i]);
    }
}

static void gradcheck(const gc_case *c) {
    gc_state s;
    gc_init(&s, c);
    gc_result res;
    gc_run(&s, &res);
    double atol = c->atol > 0 ? c->atol : DEFAULT_ATOL;
    double rtol = c->rtol > 0 ? c->rtol : DEFAULT_RTOL;
    double worst = 0;
    char what[160];
    for (int i = 0; i < c->nleaves; i++) {
        const leaf_spec *l = &c->leaf[i];
        if (l->no_grad) continue;
        snprintf(what, sizeof what, "%s: d/d%s", c->name, l->name);
        double leaf_worst = 0;
        compare_grad(what, res.grad[i], res.num[i], s.n[i], atol, rtol, &leaf_worst, true);
        if (verbose) printf("#   %-34s worst err/tol %.3f\n", what, leaf_worst);
        worst = fmax(worst, leaf_worst);
        /* Not vacuous: the input does move the loss. */
        double biggest = 0;
        for (int64_t j = 0; j < s.n[i]; j++) biggest = fmax(biggest, fabs(res.num[i][j]));
        if (!(biggest > 1e-4))
            check_fail(__FILE__, __LINE__, "%s: the numerical gradient is all zero", what);
        /* The reference kernel set agrees with the cpu set. */
        for (int64_t j = 0; j < s.n[i]; j++) {
            double a = res.grad[i][j], b = res.grad_ref[i][j];
            if (!(fabs(a - b) <= 2e-5 + 1e-4 * fabs(b))) {
                check_fail(__FILE__, __LINE__,
                           "%s[%lld]: cpu %.7g, reference kernels %.7g (seed %llu)", what,
                           (long long)j, a, b, (unsigned long long)seed);
                break;
            }
        }
    }
    for (int64_t j = 0; j < s.ny; j++) {
        double a = res.y[j], b = res.y_ref[j];
        if (!(fabs(a - b) <= 2e-5 + 1e-4 * fabs(b))) {
            check_fail(__FILE__, __LINE__,
                       "%s: y[%lld] cpu %.7g, reference kernels %.7g (seed %llu)", c->name,
                       (long long)j, a, b, (unsigned long long)seed);
            break;
        }
    }
    if (verbose) printf("# %-28s worst err/tol %.3f\n", c->name, worst);
    gc_result_free(c, &res);
    gc_fini(&s);
}

/* ---- the harness catches wrong gradients -------------------------------------------- */

static petrel_tensor *f_linear(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_linear(g, x[0], x[1], x[2]);
}

static petrel_tensor *f_xent(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    return petrel_op_softmax_xent(g, x[0], ctx);
}

/* Wrong gradients of the kinds a backward gets wrong must fail the comparison. */
static void test_gradcheck_detects_errors(void) {
    gc_case lin = {.name = "linear",
                   .fn = f_linear,
                   .nleaves = 3,
                   .leaf = {{LEAF("x", 2, 4, 5)}, {LEAF("w", 2, 5, 5)}, {LEAF("bias", 1, 5)}}};
    gc_state s;
    gc_init(&s, &lin);
    gc_result res;
    gc_run(&s, &res);
    double worst = 0;
    int64_t n = s.n[1];
    float *wrong = falloc(n);
    /* The correct gradient passes. */
    for (int i = 0; i < 3; i++)
        CHECK(compare_grad("ok", res.grad[i], res.num[i], s.n[i], DEFAULT_ATOL, DEFAULT_RTOL,
                           &worst, false) == 0);
    /* Transposed dw (w is square, so the shape still fits). */
    for (int64_t r = 0; r < 5; r++)
        for (int64_t c = 0; c < 5; c++) wrong[r * 5 + c] = res.grad[1][c * 5 + r];
    CHECK(compare_grad("T", wrong, res.num[1], n, DEFAULT_ATOL, DEFAULT_RTOL, &worst, false) > 5);
    /* A factor of 2, and an error of 3 %. */
    for (int64_t j = 0; j < n; j++) wrong[j] = 2.0f * res.grad[1][j];
    CHECK(compare_grad("2x", wrong, res.num[1], n, DEFAULT_ATOL, DEFAULT_RTOL, &worst, false) >
          n / 2);
    for (int64_t j = 0; j < n; j++) wrong[j] = 1.03f * res.grad[1][j];
    CHECK(compare_grad("3%", wrong, res.num[1], n, DEFAULT_ATOL, DEFAULT_RTOL, &worst, false) >
          n / 2);
    /* The bias gradient summed over a batch of 3 instead of 4 (one row dropped). */
    float db[5] = {0};
    for (int64_t c = 0; c < 5; c++) db[c] = res.grad[2][c] - (float)s.r[3 * 5 + c];
    CHECK(compare_grad("row", db, res.num[2], 5, DEFAULT_ATOL, DEFAULT_RTOL, &worst, false) > 0);
    petrel_free(wrong);
    gc_result_free(&lin, &res);
    gc_fini(&s);

    /* softmax_xent without the 1/B of the mean. */
    int32_t labels[4] = {1, 0, 2, 1};
    gc_case xent = {.name = "xent",
                    .fn = f_xent,
                    .ctx = labels,
                    .nleaves = 1,
                    .leaf = {{LEAF("logits", 2, 4, 3), .lo = -2, .hi = 2}}};
    gc_init(&s, &xent);
    gc_run(&s, &res);
    float scaled[12];
    for (int j = 0; j < 12; j++) scaled[j] = 4.0f * res.grad[0][j];
    CHECK(compare_grad("ok", res.grad[0], res.num[0], 12, DEFAULT_ATOL, DEFAULT_RTOL, &worst,
                       false) == 0);
    CHECK(compare_grad("B", scaled, res.num[0], 12, DEFAULT_ATOL, DEFAULT_RTOL, &worst, false) > 6);
    gc_result_free(&xent, &res);
    gc_fini(&s);
}

/* ---- dense ops ------------------------------------------------------------------------- */

static petrel_tensor *f_matmul(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_matmul(g, x[0], x[1]);
}

static void test_matmul(void) {
    gc_case c1 = {.name = "matmul (3,4)x(4,5)",
                  .fn = f_matmul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 3, 4)}, {LEAF("b", 2, 4, 5)}}};
    gradcheck(&c1);
    gc_case c2 = {.name = "matmul (5,1)x(1,3)",
                  .fn = f_matmul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 5, 1)}, {LEAF("b", 2, 1, 3)}}};
    gradcheck(&c2);
    gc_case c3 = {.name = "matmul (1,7)x(7,1)",
                  .fn = f_matmul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 1, 7)}, {LEAF("b", 2, 7, 1)}}};
    gradcheck(&c3);
    gc_case c4 = {.name = "matmul (6,9)x(9,2) a no grad",
                  .fn = f_matmul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 6, 9), .no_grad = true}, {LEAF("b", 2, 9, 2)}}};
    gradcheck(&c4);
}

static petrel_tensor *f_linear_nobias(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_linear(g, x[0], x[1], NULL);
}

static void test_linear(void) {
    gc_case c1 = {.name = "linear bias",
                  .fn = f_linear,
                  .nleaves = 3,
                  .leaf = {{LEAF("x", 2, 4, 6)}, {LEAF("w", 2, 3, 6)}, {LEAF("bias", 1, 3)}}};
    gradcheck(&c1);
    gc_case c2 = {.name = "linear no bias",
                  .fn = f_linear_nobias,
                  .nleaves = 2,
                  .leaf = {{LEAF("x", 2, 5, 7)}, {LEAF("w", 2, 4, 7)}}};
    gradcheck(&c2);
    gc_case c3 = {.name = "linear B=1 caller grads",
                  .fn = f_linear,
                  .nleaves = 3,
                  .leaf = {{LEAF("x", 2, 1, 9), .caller_grad = true},
                           {LEAF("w", 2, 2, 9), .caller_grad = true},
                           {LEAF("bias", 1, 2), .caller_grad = true}}};
    gradcheck(&c3);
    gc_case c4 = {.name = "linear x no grad",
                  .fn = f_linear,
                  .nleaves = 3,
                  .leaf = {{LEAF("x", 2, 3, 4), .no_grad = true},
                           {LEAF("w", 2, 5, 4)},
                           {LEAF("bias", 1, 5)}}};
    gradcheck(&c4);
}

static petrel_tensor *f_add(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_add(g, x[0], x[1]);
}

static petrel_tensor *f_mul(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_mul(g, x[0], x[1]);
}

static petrel_tensor *f_add_self(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_add(g, x[0], x[0]);
}

static petrel_tensor *f_mul_self(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_mul(g, x[0], x[0]);
}

typedef struct bcast_shapes {
    const char *name;
    int nda;
    int64_t a[4];
    int ndb;
    int64_t b[4];
} bcast_shapes;

static const bcast_shapes bcast_cases[] = {
    {"(4,5) (4,5)", 2, {4, 5}, 2, {4, 5}},
    {"(B,C) (C)", 2, {4, 5}, 1, {5}},
    {"(C) (B,C)", 1, {5}, 2, {4, 5}},
    {"(B,C) (1,C)", 2, {3, 6}, 2, {1, 6}},
    {"(N,C,H,W) (1,C,1,1)", 4, {2, 3, 4, 4}, 4, {1, 3, 1, 1}},
    {"(1,C,1,1) (N,C,H,W)", 4, {1, 3, 1, 1}, 4, {2, 3, 3, 2}},
    {"(3,1) (1,4)", 2, {3, 1}, 2, {1, 4}},
    {"(2,3,4) (3,1)", 3, {2, 3, 4}, 2, {3, 1}},
    {"(4,1) (4,5)", 2, {4, 1}, 2, {4, 5}},
    {"(1) (4,5)", 1, {1}, 2, {4, 5}},
    {"(2,1,3,1) (5,1,2)", 4, {2, 1, 3, 1}, 3, {5, 1, 2}},
    {"(1,5) (1,5)", 2, {1, 5}, 2, {1, 5}},
};

static void test_add_mul_broadcast(void) {
    for (size_t k = 0; k < sizeof bcast_cases / sizeof bcast_cases[0]; k++) {
        const bcast_shapes *b = &bcast_cases[k];
        for (int m = 0; m < 2; m++) {
            char name[64];
            snprintf(name, sizeof name, "%s %s", m ? "mul" : "add", b->name);
            gc_case c = {.name = name,
                         .fn = m ? f_mul : f_add,
                         .nleaves = 2,
                         .leaf = {{LEAF("a", b->nda, 0), .margin = 0.1f},
                                  {LEAF("b", b->ndb, 0), .margin = 0.1f}}};
            memcpy(c.leaf[0].ne, b->a, sizeof b->a);
            memcpy(c.leaf[1].ne, b->b, sizeof b->b);
            gradcheck(&c);
        }
    }
    /* One operand without a gradient. */
    gc_case c1 = {.name = "mul (B,C) (C) b no grad",
                  .fn = f_mul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 4, 5)}, {LEAF("b", 1, 5), .no_grad = true}}};
    gradcheck(&c1);
    gc_case c2 = {.name = "add (B,C) (C) a no grad",
                  .fn = f_add,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 4, 5), .no_grad = true}, {LEAF("b", 1, 5)}}};
    gradcheck(&c2);
    /* The same tensor as both operands: the two contributions add up. */
    gc_case c3 = {
        .name = "add x x", .fn = f_add_self, .nleaves = 1, .leaf = {{LEAF("x", 2, 3, 4)}}};
    gradcheck(&c3);
    gc_case c4 = {
        .name = "mul x x", .fn = f_mul_self, .nleaves = 1, .leaf = {{LEAF("x", 2, 3, 4)}}};
    gradcheck(&c4);
}

static petrel_tensor *f_relu(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_relu(g, x[0]);
}

static petrel_tensor *f_tanh(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_tanh(g, x[0]);
}

static petrel_tensor *f_sigmoid(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_sigmoid(g, x[0]);
}

static void test_activations(void) {
    gc_case relu = {.name = "relu",
                    .fn = f_relu,
                    .nleaves = 1,
                    .leaf = {{LEAF("x", 2, 5, 7), .lo = -2, .hi = 2, .margin = 0.05f}}};
    gradcheck(&relu);
    gc_case relu4 = {.name = "relu 4-d",
                     .fn = f_relu,
                     .nleaves = 1,
                     .leaf = {{LEAF("x", 4, 2, 3, 2, 2), .lo = -1, .hi = 1, .margin = 0.05f}}};
    gradcheck(&relu4);
    gc_case th = {.name = "tanh",
                  .fn = f_tanh,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 5, 7), .lo = -3, .hi = 3}}};
    gradcheck(&th);
    gc_case sg = {.name = "sigmoid",
                  .fn = f_sigmoid,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 5, 7), .lo = -5, .hi = 5}}};
    gradcheck(&sg);
    gc_case sg1 = {
        .name = "sigmoid 1-d", .fn = f_sigmoid, .nleaves = 1, .leaf = {{LEAF("x", 1, 1)}}};
    gradcheck(&sg1);
}

static petrel_tensor *f_sum(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_sum(g, x[0]);
}

static petrel_tensor *f_reshape(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    /* (2, 3, 4) -> (4, 6), then ops that depend on the new shape: w (6) scales columns. */
    petrel_tensor *y = petrel_op_reshape(g, x[0], 2, (int64_t[]){4, 6});
    return petrel_op_mul(g, petrel_op_tanh(g, y), x[1]);
}

static petrel_tensor *f_flatten(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_linear(g, petrel_op_flatten(g, x[0]), x[1], NULL);
}

static void test_sum_reshape_flatten(void) {
    gc_case s1 = {.name = "sum", .fn = f_sum, .nleaves = 1, .leaf = {{LEAF("x", 3, 2, 3, 4)}}};
    gradcheck(&s1);
    gc_case s2 = {.name = "sum (1)", .fn = f_sum, .nleaves = 1, .leaf = {{LEAF("x", 1, 1)}}};
    gradcheck(&s2);
    gc_case r = {.name = "reshape",
                 .fn = f_reshape,
                 .nleaves = 2,
                 .leaf = {{LEAF("x", 3, 2, 3, 4)}, {LEAF("w", 1, 6)}}};
    gradcheck(&r);
    gc_case f = {.name = "flatten",
                 .fn = f_flatten,
                 .nleaves = 2,
                 .leaf = {{LEAF("x", 4, 2, 3, 2, 2)}, {LEAF("w", 2, 5, 12)}}};
    gradcheck(&f);
}

/* ---- losses ------------------------------------------------------------------------------ */

static petrel_tensor *f_log_softmax(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_log_softmax(g, x[0]);
}

static void test_losses(void) {
    int32_t labels[5] = {2, 0, 4, 4, 1};
    gc_case x1 = {.name = "softmax_xent (5,5)",
                  .fn = f_xent,
                  .ctx = labels,
                  .nleaves = 1,
                  .leaf = {{LEAF("logits", 2, 5, 5), .lo = -3, .hi = 3}}};
    gradcheck(&x1);
    gc_case x2 = {.name = "softmax_xent B=1",
                  .fn = f_xent,
                  .ctx = labels,
                  .nleaves = 1,
                  .leaf = {{LEAF("logits", 2, 1, 4), .lo = -3, .hi = 3}}};
    gradcheck(&x2);
    int32_t many[16];
    for (int i = 0; i < 16; i++) many[i] = (int32_t)petrel_rng_below(&rng, 10);
    gc_case x3 = {.name = "softmax_xent (16,10)",
                  .fn = f_xent,
                  .ctx = many,
                  .nleaves = 1,
                  .leaf = {{LEAF("logits", 2, 16, 10), .lo = -3, .hi = 3}}};
    gradcheck(&x3);
    /* Large logits: the gradient is still exact (the max shift cancels). */
    gc_case x4 = {.name = "softmax_xent near 50",
                  .fn = f_xent,
                  .ctx = labels,
                  .nleaves = 1,
                  .leaf = {{LEAF("logits", 2, 3, 5), .lo = 48, .hi = 52}}};
    gradcheck(&x4);

    gc_case l1 = {.name = "log_softmax (3,6)",
                  .fn = f_log_softmax,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 3, 6), .lo = -3, .hi = 3}}};
    gradcheck(&l1);
    gc_case l2 = {.name = "log_softmax (2,1)",
                  .fn = f_log_softmax,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 2, 1)}}};
    /* One class: y = 0 whatever x, so the gradient is exactly zero; check that directly. */
    gc_state s;
    gc_init(&s, &l2);
    gc_result res;
    gc_run(&s, &res);
    CHECK(res.grad[0][0] == 0.0f && res.grad[0][1] == 0.0f);
    CHECK(res.y[0] == 0.0f && res.y[1] == 0.0f);
    gc_result_free(&l2, &res);
    gc_fini(&s);
}

/* ---- convolution and pooling ----------------------------------------------------------- */

typedef struct conv_ctx {
    int64_t stride, pad;
    bool bias;
} conv_ctx;

static petrel_tensor *f_conv(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    const conv_ctx *c = ctx;
    return petrel_op_conv2d(g, x[0], x[1], c->bias ? x[2] : NULL, c->stride, c->pad);
}

static void test_conv2d(void) {
    static const struct {
        const char *name;
        conv_ctx ctx;
        int64_t x[4], w[4];
    } cases[] = {
        {"conv s1 p0 bias", {1, 0, true}, {2, 2, 5, 5}, {3, 2, 3, 3}},
        {"conv s1 p1 bias", {1, 1, true}, {2, 2, 5, 5}, {3, 2, 3, 3}},
        {"conv s2 p0", {2, 0, false}, {2, 2, 6, 6}, {3, 2, 3, 3}},
        {"conv s2 p1 bias", {2, 1, true}, {2, 3, 7, 7}, {2, 3, 3, 3}},
        {"conv s1 p1", {1, 1, false}, {1, 1, 4, 4}, {2, 1, 3, 3}},
        {"conv 2x3 kernel s2 p1 bias", {2, 1, true}, {2, 2, 5, 6}, {3, 2, 2, 3}},
        {"conv 1x1 s1 p0 bias", {1, 0, true}, {2, 3, 3, 3}, {4, 3, 1, 1}},
        {"conv s3 p2 bias", {3, 2, true}, {1, 2, 6, 5}, {2, 2, 3, 3}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        conv_ctx ctx = cases[k].ctx;
        gc_case c = {
            .name = cases[k].name,
            .fn = f_conv,
            .ctx = &ctx,
            .nleaves = ctx.bias ? 3 : 2,
            .leaf = {{LEAF("x", 4, 0)}, {LEAF("w", 4, 0)}, {LEAF("bias", 1, cases[k].w[0])}}};
        memcpy(c.leaf[0].ne, cases[k].x, sizeof cases[k].x);
        memcpy(c.leaf[1].ne, cases[k].w, sizeof cases[k].w);
        gradcheck(&c);
    }
    /* Frozen input, as for the first layer of a network. */
    conv_ctx ctx = {1, 1, true};
    gc_case c = {.name = "conv x no grad",
                 .fn = f_conv,
                 .ctx = &ctx,
                 .nleaves = 3,
                 .leaf = {{LEAF("x", 4, 2, 2, 4, 4), .no_grad = true},
                          {LEAF("w", 4, 2, 2, 3, 3)},
                          {LEAF("bias", 1, 2)}}};
    gradcheck(&c);
}

typedef struct pool_ctx {
    int64_t k, s;
} pool_ctx;

static petrel_tensor *f_maxpool(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    const pool_ctx *p = ctx;
    return petrel_op_maxpool2d(g, x[0], p->k, p->s);
}

static void test_maxpool2d(void) {
    static const struct {
        const char *name;
        pool_ctx ctx;
        int64_t x[4];
    } cases[] = {
        {"maxpool k2 s2", {2, 2}, {2, 2, 4, 4}},      {"maxpool k3 s1", {3, 1}, {1, 2, 5, 5}},
        {"maxpool k3 s2 odd", {3, 2}, {1, 2, 7, 7}},  {"maxpool k2 s1", {2, 1}, {2, 1, 3, 5}},
        {"maxpool k2 s3 gaps", {2, 3}, {1, 1, 8, 8}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pool_ctx ctx = cases[k].ctx;
        gc_case c = {.name = cases[k].name,
                     .fn = f_maxpool,
                     .ctx = &ctx,
                     .nleaves = 1,
                     .leaf = {{LEAF("x", 4, 0), .lo = -1, .hi = 1, .distinct = true}}};
        memcpy(c.leaf[0].ne, cases[k].x, sizeof cases[k].x);
        gradcheck(&c);
    }
}

/* ---- embedding and dropout ------------------------------------------------------------ */

typedef struct index_ctx {
    const int32_t *idx;
    int64_t n;
} index_ctx;

static petrel_tensor *f_embedding(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    const index_ctx *e = ctx;
    return petrel_op_tanh(g, petrel_op_embedding(g, x[0], e->idx, e->n));
}

static void test_embedding_dense(void) {
    const int32_t idx[5] = {3, 0, 3, 5, 1}; /* row 3 twice; rows 2 and 4 unused */
    index_ctx ctx = {idx, 5};
    gc_case c = {.name = "embedding dense",
                 .fn = f_embedding,
                 .ctx = &ctx,
                 .nleaves = 1,
                 .leaf = {{LEAF("table", 2, 6, 3), .lo = -2, .hi = 2, .caller_grad = true}}};
    gradcheck(&c);
}

static void test_embedding_sparse(void) {
    const int32_t idx[5] = {3, 0, 3, 5, 1};
    index_ctx ctx = {idx, 5};
    gc_case c = {.name = "embedding sparse",
                 .fn = f_embedding,
                 .ctx = &ctx,
                 .nleaves = 1,
                 .leaf = {{LEAF("table", 2, 6, 3), .lo = -2, .hi = 2}}};
    gc_state s;
    gc_init(&s, &c);
    double num[18];
    gc_numeric(&s, 0, num);

    const petrel_kernels *sets[2] = {petrel_kernels_cpu(), petrel_kernels_reference()};
    for (int k = 0; k < 2; k++) {
        petrel_kernels_set_current(sets[k]);
        petrel_tensor *y = gc_forward(&s, true);
        petrel_tensor *rt = petrel_graph_input(s.g, s.r, 2, (int64_t[]){5, 3});
        petrel_tensor *loss = petrel_op_sum(s.g, petrel_op_mul(s.g, y, rt));
        CHECK(loss != NULL);
        if (!loss) break;
        CHECK_OK(petrel_backward(s.g, loss));
        /* No dense gradient was asked for: the table's gradient comes as rows. */
        CHECK(s.x[0]->grad == NULL);
        petrel_sparse_grad sg;
        CHECK_OK(petrel_graph_sparse_grad(s.g, s.x[0], &sg));
        CHECK(sg.n == 5 && sg.dim == 3);
        for (int i = 0; i < 5; i++) CHECK(sg.rows[i] == idx[i]);
        float dense[18] = {0};
        for (int64_t i = 0; i < sg.n; i++)
            for (int64_t d = 0; d < sg.dim; d++) dense[sg.rows[i] * 3 + d] += sg.values[i * 3 + d];
        double worst = 0;
        compare_grad("embedding sparse: d/dtable", dense, num, 18, DEFAULT_ATOL, DEFAULT_RTOL,
                     &worst, true);
        CHECK(dense[2 * 3] == 0.0f && dense[4 * 3 + 2] == 0.0f); /* untouched rows */
        /* Another tensor has no sparse gradient. */
        petrel_sparse_grad none;
        CHECK_ERR(petrel_graph_sparse_grad(s.g, rt, &none), PETREL_ERR_NOT_FOUND);
    }
    petrel_kernels_set_current(petrel_kernels_cpu());
    gc_fini(&s);
}

typedef struct dropout_ctx {
    float p;
    bool training;
    uint64_t seed;
    petrel_rng rng;
} dropout_ctx;

/* The mask is drawn at forward time: reseeding makes every evaluation draw the same. */
static petrel_tensor *f_dropout(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    dropout_ctx *d = ctx;
    petrel_rng_seed(&d->rng, d->seed);
    return petrel_op_dropout(g, petrel_op_tanh(g, x[0]), d->p, d->training, &d->rng);
}

static void test_dropout(void) {
    dropout_ctx d1 = {0.3f, true, seed + 1, {{0}}};
    gc_case c1 = {.name = "dropout p=0.3",
                  .fn = f_dropout,
                  .ctx = &d1,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 4, 5), .lo = -2, .hi = 2}}};
    gradcheck(&c1);
    dropout_ctx d2 = {0.5f, true, seed + 2, {{0}}};
    gc_case c2 = {.name = "dropout p=0.5 4-d",
                  .fn = f_dropout,
                  .ctx = &d2,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 4, 2, 3, 4, 4), .lo = -2, .hi = 2}}};
    gradcheck(&c2);
    dropout_ctx d3 = {0.5f, false, seed + 3, {{0}}};
    gc_case c3 = {.name = "dropout eval",
                  .fn = f_dropout,
                  .ctx = &d3,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 3, 3), .lo = -2, .hi = 2}}};
    gradcheck(&c3);
    dropout_ctx d4 = {0.0f, true, seed + 4, {{0}}};
    gc_case c4 = {.name = "dropout p=0",
                  .fn = f_dropout,
                  .ctx = &d4,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 3, 3), .lo = -2, .hi = 2}}};
    gradcheck(&c4);

    /* The gradient is the mask itself: zero where dropped, 1/(1-p) times dy elsewhere. */
    gc_state s;
    gc_init(&s, &c2);
    gc_result res;
    gc_run(&s, &res);
    int64_t dropped = 0;
    for (int64_t j = 0; j < s.n[0]; j++) {
        bool zero = res.y[j] == 0.0f;
        dropped += zero;
        if (zero) CHECK(res.grad[0][j] == 0.0f);
    }
    CHECK(dropped > 0 && dropped < s.n[0]);
    gc_result_free(&c2, &res);
    gc_fini(&s);
}

/* ---- inputs used more than once: every backward adds, none overwrites ---------------------- */

/* a (3, 4), b (4, 4): matmul(a, b) + a + sum(matmul(b, b)) */
static petrel_tensor *f_shared_matmul(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    petrel_tensor *y = petrel_op_add(g, petrel_op_matmul(g, x[0], x[1]), x[0]);
    return petrel_op_add(g, y, petrel_op_sum(g, petrel_op_matmul(g, x[1], x[1])));
}

/* x (4, 4), w (4, 4), bias (4): linear(x, w, bias) + x + w + bias */
static petrel_tensor *f_shared_linear(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    petrel_tensor *y = petrel_op_add(g, petrel_op_linear(g, x[0], x[1], x[2]), x[0]);
    return petrel_op_add(g, petrel_op_add(g, y, x[1]), x[2]);
}

/* x (1, 2, 4, 4), w (2, 2, 3, 3), bias (2): conv(x, w, bias) + x + conv(x, w) + sum(bias) */
static petrel_tensor *f_shared_conv(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    petrel_tensor *y = petrel_op_add(g, petrel_op_conv2d(g, x[0], x[1], x[2], 1, 1), x[0]);
    y = petrel_op_add(g, y, petrel_op_conv2d(g, x[0], x[1], NULL, 1, 1));
    return petrel_op_add(g, y, petrel_op_sum(g, x[2]));
}

/* x (1, 2, 4, 4): maxpool(x) + sum(x) */
static petrel_tensor *f_shared_pool(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    return petrel_op_add(g, petrel_op_maxpool2d(g, x[0], 2, 2), petrel_op_sum(g, x[0]));
}

/* x: tanh(x) + sigmoid(x) + relu(x) + x */
static petrel_tensor *f_shared_act(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    petrel_tensor *y = petrel_op_add(g, petrel_op_tanh(g, x[0]), petrel_op_sigmoid(g, x[0]));
    return petrel_op_add(g, petrel_op_add(g, y, petrel_op_relu(g, x[0])), x[0]);
}

/* x (3, 5): log_softmax(x) + x + softmax_xent(x) */
static petrel_tensor *f_shared_softmax(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    petrel_tensor *y = petrel_op_add(g, petrel_op_log_softmax(g, x[0]), x[0]);
    return petrel_op_add(g, y, petrel_op_softmax_xent(g, x[0], ctx));
}

/* table (6, 3): embedding(table, i1) + embedding(table, i2) + sum(table) */
static petrel_tensor *f_shared_embedding(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    static const int32_t i1[5] = {3, 0, 3, 5, 1}, i2[5] = {2, 2, 3, 0, 4};
    petrel_tensor *y =
        petrel_op_add(g, petrel_op_embedding(g, x[0], i1, 5), petrel_op_embedding(g, x[0], i2, 5));
    return petrel_op_add(g, y, petrel_op_sum(g, x[0]));
}

/* table (6, 3): sum(table) + embedding(table, i1), the dense use first on the tape */
static petrel_tensor *f_dense_then_embedding(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    (void)ctx;
    static const int32_t i1[5] = {3, 0, 3, 5, 1};
    petrel_tensor *s = petrel_op_sum(g, x[0]);
    return petrel_op_add(g, s, petrel_op_embedding(g, x[0], i1, 5));
}

/* x (2, 3, 4): reshape(x) + tanh(reshape(x)) + dropout(x) viewed as (6, 4) */
static petrel_tensor *f_shared_view(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    dropout_ctx *d = ctx;
    petrel_rng_seed(&d->rng, d->seed);
    const int64_t ne[2] = {6, 4};
    petrel_tensor *a = petrel_op_reshape(g, x[0], 2, ne);
    petrel_tensor *b = petrel_op_tanh(g, petrel_op_reshape(g, x[0], 2, ne));
    petrel_tensor *c = petrel_op_dropout(g, x[0], d->p, d->training, &d->rng);
    return petrel_op_add(g, petrel_op_add(g, a, b), petrel_op_reshape(g, c, 2, ne));
}

static void test_shared_inputs(void) {
    gc_case mm = {.name = "shared matmul",
                  .fn = f_shared_matmul,
                  .nleaves = 2,
                  .leaf = {{LEAF("a", 2, 3, 4)}, {LEAF("b", 2, 4, 4)}}};
    gradcheck(&mm);
    gc_case lin = {.name = "shared linear",
                   .fn = f_shared_linear,
                   .nleaves = 3,
                   .leaf = {{LEAF("x", 2, 4, 4)},
                            {LEAF("w", 2, 4, 4), .caller_grad = true},
                            {LEAF("bias", 1, 4), .caller_grad = true}}};
    gradcheck(&lin);
    gc_case conv = {.name = "shared conv",
                    .fn = f_shared_conv,
                    .nleaves = 3,
                    .leaf = {{LEAF("x", 4, 1, 2, 4, 4)},
                             {LEAF("w", 4, 2, 2, 3, 3)},
                             {LEAF("bias", 1, 2), .caller_grad = true}}};
    gradcheck(&conv);
    gc_case pool = {.name = "shared maxpool",
                    .fn = f_shared_pool,
                    .nleaves = 1,
                    .leaf = {{LEAF("x", 4, 1, 2, 4, 4), .lo = -1, .hi = 1, .distinct = true}}};
    gradcheck(&pool);
    gc_case act = {.name = "shared activations",
                   .fn = f_shared_act,
                   .nleaves = 1,
                   .leaf = {{LEAF("x", 2, 3, 5), .lo = -2, .hi = 2, .margin = 0.05f}}};
    gradcheck(&act);
    int32_t labels[3] = {4, 0, 2};
    gc_case sm = {.name = "shared softmax",
                  .fn = f_shared_softmax,
                  .ctx = labels,
                  .nleaves = 1,
                  .leaf = {{LEAF("x", 2, 3, 5), .lo = -2, .hi = 2}}};
    gradcheck(&sm);
    gc_case emb = {.name = "shared embedding",
                   .fn = f_shared_embedding,
                   .nleaves = 1,
                   .leaf = {{LEAF("table", 2, 6, 3), .caller_grad = true}}};
    gradcheck(&emb);
    /* The table's dense gradient is made by the graph (no caller-owned one) for the
     * sum; the embedding, whose backward runs after the sum's, must add to it too. */
    gc_case emb2 = {.name = "embedding after dense use",
                    .fn = f_dense_then_embedding,
                    .nleaves = 1,
                    .leaf = {{LEAF("table", 2, 6, 3)}}};
    gradcheck(&emb2);
    emb.leaf[0].caller_grad = false;
    emb.name = "shared embedding arena grad";
    gradcheck(&emb);
    dropout_ctx d = {0.4f, true, seed + 5, {{0}}};
    gc_case view = {.name = "shared reshape and dropout",
                    .fn = f_shared_view,
                    .ctx = &d,
                    .nleaves = 1,
                    .leaf = {{LEAF("x", 3, 2, 3, 4), .lo = -2, .hi = 2}}};
    gradcheck(&view);
}

/* ---- composed networks ------------------------------------------------------------------- */

typedef struct mlp_ctx {
    const int32_t *labels;
    petrel_tensor *pre; /* the relu input of the last forward */
    float margin;
} mlp_ctx;

/* x (4, 6) -> linear (8) -> relu -> linear (3) -> softmax_xent */
static petrel_tensor *f_mlp(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    mlp_ctx *m = ctx;
    m->pre = petrel_op_linear(g, x[0], x[1], x[2]);
    petrel_tensor *h = petrel_op_relu(g, m->pre);
    return petrel_op_softmax_xent(g, petrel_op_linear(g, h, x[3], x[4]), m->labels);
}

static bool min_abs_above(const petrel_tensor *t, float margin) {
    for (int64_t i = 0, n = petrel_tensor_numel(t); i < n; i++)
        if (fabsf(t->data[i]) < margin) return false;
    return true;
}

static bool mlp_accept(void *ctx) {
    const mlp_ctx *m = ctx;
    return min_abs_above(m->pre, m->margin);
}

static void test_mlp(void) {
    int32_t labels[4] = {0, 2, 1, 2};
    /* A parameter moves a relu input by at most h times an input of magnitude <= 1. */
    mlp_ctx ctx = {labels, NULL, 0.012f};
    gc_case c = {.name = "mlp",
                 .fn = f_mlp,
                 .ctx = &ctx,
                 .nleaves = 5,
                 .leaf = {{LEAF("x", 2, 4, 6)},
                          {LEAF("w1", 2, 8, 6)},
                          {LEAF("b1", 1, 8)},
                          {LEAF("w2", 2, 3, 8), .caller_grad = true},
                          {LEAF("b2", 1, 3), .caller_grad = true}},
                 .h = 5e-3,
                 .accept = mlp_accept};
    gradcheck(&c);
}

typedef struct cnn_ctx {
    const int32_t *labels;
    petrel_tensor *pre; /* conv output, the relu input */
    float margin;
} cnn_ctx;

/* x (2, 1, 4, 4) -> conv 3x3 pad 1 (2) -> relu -> maxpool 2 -> flatten (8) -> linear (3)
 * -> softmax_xent */
static petrel_tensor *f_cnn(petrel_graph *g, petrel_tensor *const *x, void *ctx) {
    cnn_ctx *m = ctx;
    m->pre = petrel_op_conv2d(g, x[0], x[1], x[2], 1, 1);
    petrel_tensor *p = petrel_op_maxpool2d(g, petrel_op_relu(g, m->pre), 2, 2);
    petrel_tensor *logits = petrel_op_linear(g, petrel_op_flatten(g, p), x[3], x[4]);
    return petrel_op_softmax_xent(g, logits, m->labels);
}

/* Relu inputs clear of zero, and in each pooling window the largest positive value
 * clear of the runner-up: a perturbation of h then changes no branch. */
static bool cnn_accept(void *ctx) {
    const cnn_ctx *m = ctx;
    const petrel_tensor *t = m->pre;
    if (!min_abs_above(t, m->margin)) return false;
    int64_t planes = t->ne[0] * t->ne[1], H = t->ne[2], W = t->ne[3];
    for (int64_t p = 0; p < planes; p++)
        for (int64_t oh = 0; oh + 2 <= H; oh += 2)
            for (int64_t ow = 0; ow + 2 <= W; ow += 2) {
                float best = 0, second = 0;
                for (int64_t kh = 0; kh < 2; kh++)
                    for (int64_t kw = 0; kw < 2; kw++) {
                        float v = fmaxf(t->data[(p * H + oh + kh) * W + ow + kw], 0.0f);
                        if (v > best)
                            second = best, best = v;
                        else if (v > second)
                            second = v;
                    }
                if (best > 0 && best - second < 2 * m->margin) return false;
            }
    return true;
}

static void test_cnn(void) {
    int32_t labels[2] = {2, 0};
    cnn_ctx ctx = {labels, NULL, 0.012f};
    gc_case c = {.name = "cnn",
                 .fn = f_cnn,
                 .ctx = &ctx,
                 .nleaves = 5,
                 .leaf = {{LEAF("x", 4, 2, 1, 4, 4)},
                          {LEAF("conv_w", 4, 2, 1, 3, 3)},
                          {LEAF("conv_b", 1, 2)},
                          {LEAF("fc_w", 2, 3, 8), .caller_grad = true},
                          {LEAF("fc_b", 1, 3)}},
                 .h = 5e-3,
                 .accept = cnn_accept};
    gradcheck(&c);
}

int main(void) {
    seed = check_seed(seed);
    verbose = getenv("PETREL_TEST_VERBOSE") != NULL;
    petrel_rng_seed(&rng, seed);
    petrel_alloc_stats before = petrel_alloc_get_stats();

    RUN_SEEDED(test_gradcheck_detects_errors, seed);
    RUN_SEEDED(test_matmul, seed);
    RUN_SEEDED(test_linear, seed);
    RUN_SEEDED(test_add_mul_broadcast, seed);
    RUN_SEEDED(test_activations, seed);
    RUN_SEEDED(test_sum_reshape_flatten, seed);
    RUN_SEEDED(test_losses, seed);
    RUN_SEEDED(test_conv2d, seed);
    RUN_SEEDED(test_maxpool2d, seed);
    RUN_SEEDED(test_embedding_dense, seed);
    RUN_SEEDED(test_embedding_sparse, seed);
    RUN_SEEDED(test_dropout, seed);
    RUN_SEEDED(test_shared_inputs, seed);
    RUN_SEEDED(test_mlp, seed);
    RUN_SEEDED(test_cnn, seed);

    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
