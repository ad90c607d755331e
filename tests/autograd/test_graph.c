/*
 * Tests of the graph machinery around the ops: the tape, requires_grad propagation,
 * gradient accumulation and ownership, reset, the sticky error under injected
 * allocation failures, zero allocations in a steady-state step, forward values of
 * each op on small cases worked out by hand, and dropout's statistics.
 *
 * Gradient values themselves are checked against finite differences in
 * test_gradcheck.c.
 */
#include "check.h"

static uint64_t seed = 99;
static petrel_rng rng;

static void fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * petrel_rng_uniform(&rng);
}

static petrel_graph *graph_new(size_t arena_bytes) {
    petrel_graph *g = NULL;
    petrel_err e = petrel_graph_new(&g, arena_bytes);
    PETREL_ASSERT(e == PETREL_OK && g, "petrel_graph_new failed");
    return g;
}

/* ---- a small MLP with caller-owned parameters and gradients -------------------------- */

/* x (B, IN) -> linear (H) -> relu -> linear (OUT) -> softmax_xent */
enum { MB = 8, MIN = 16, MH = 32, MOUT = 4 };

typedef struct mlp {
    float x[MB * MIN];
    int32_t labels[MB];
    float w1[MH * MIN], b1[MH], w2[MOUT * MH], b2[MOUT];
    float gw1[MH * MIN], gb1[MH], gw2[MOUT * MH], gb2[MOUT];
    petrel_tensor tw1, tb1, tw2, tb2;     /* parameters: requires_grad, caller-owned grads */
    petrel_tensor tgw1, tgb1, tgw2, tgb2; /* their gradients */
} mlp;

static void mlp_init(mlp *m) {
    memset(m, 0, sizeof *m);
    fill(m->x, MB * MIN, -1, 1);
    fill(m->w1, MH * MIN, -0.5f, 0.5f);
    fill(m->b1, MH, -0.1f, 0.1f);
    fill(m->w2, MOUT * MH, -0.5f, 0.5f);
    fill(m->b2, MOUT, -0.1f, 0.1f);
    for (int i = 0; i < MB; i++) m->labels[i] = (int32_t)petrel_rng_below(&rng, MOUT);
    m->tw1 = petrel_tensor_view(m->w1, 2, (int64_t[]){MH, MIN});
    m->tb1 = petrel_tensor_view(m->b1, 1, (int64_t[]){MH});
    m->tw2 = petrel_tensor_view(m->w2, 2, (int64_t[]){MOUT, MH});
    m->tb2 = petrel_tensor_view(m->b2, 1, (int64_t[]){MOUT});
    m->tgw1 = petrel_tensor_view(m->gw1, 2, (int64_t[]){MH, MIN});
    m->tgb1 = petrel_tensor_view(m->gb1, 1, (int64_t[]){MH});
    m->tgw2 = petrel_tensor_view(m->gw2, 2, (int64_t[]){MOUT, MH});
    m->tgb2 = petrel_tensor_view(m->gb2, 1, (int64_t[]){MOUT});
    petrel_tensor *p[4] = {&m->tw1, &m->tb1, &m->tw2, &m->tb2};
    petrel_tensor *gr[4] = {&m->tgw1, &m->tgb1, &m->tgw2, &m->tgb2};
    for (int i = 0; i < 4; i++) {
        p[i]->requires_grad = true;
        p[i]->grad = gr[i];
    }
}

static void mlp_zero_grad(mlp *m) {
    memset(m->gw1, 0, sizeof m->gw1);
    memset(m->gb1, 0, sizeof m->gb1);
    memset(m->gw2, 0, sizeof m->gw2);
    memset(m->gb2, 0, sizeof m->gb2);
}

/* Runs the forward; every op's result goes to out[0..5] (NULL where it failed). */
static petrel_tensor *mlp_forward(petrel_graph *g, mlp *m, petrel_tensor **out) {
    petrel_tensor *r[6];
    r[0] = petrel_graph_input(g, m->x, 2, (int64_t[]){MB, MIN});
    r[1] = petrel_op_linear(g, r[0], &m->tw1, &m->tb1);
    r[2] = petrel_op_relu(g, r[1]);
    r[3] = petrel_op_linear(g, r[2], &m->tw2, &m->tb2);
    r[4] = petrel_op_softmax_xent(g, r[3], m->labels);
    r[5] = petrel_op_tanh(g, r[4]); /* one more op after the loss, to see NULL propagate */
    if (out) memcpy(out, r, sizeof r);
    return r[4];
}

/* ---- the tape ------------------------------------------------------------------------ */

static void test_tape_counts(void) {
    petrel_graph *g = graph_new(0);
    CHECK(petrel_graph_node_count(g) == 0);
    CHECK(petrel_graph_arena_used(g) == 0);
    CHECK(petrel_graph_error(g) == PETREL_OK);
    float xd[6] = {1, 2, 3, 4, 5, 6}, wd[6] = {1, 0, 0, 1, 1, 1};
    petrel_tensor *x = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
    petrel_tensor *w = petrel_graph_input(g, wd, 2, (int64_t[]){2, 3});
    CHECK(x && w && x->data == xd); /* a view of the caller's data, no copy */
    CHECK(x->ndim == 2 && x->ne[0] == 2 && x->ne[1] == 3 && !x->requires_grad && !x->grad);
    CHECK(x->node == NULL);
    CHECK(petrel_graph_node_count(g) == 0); /* inputs are not nodes */
    petrel_tensor *t = petrel_graph_tensor(g, 3, (int64_t[]){2, 3, 4});
    CHECK(t && t->ndim == 3 && t->ne[2] == 4 && petrel_tensor_is_contiguous(t) && t->data);
    CHECK(petrel_graph_node_count(g) == 0);

    petrel_tensor *h = petrel_op_linear(g, x, w, NULL);
    CHECK(petrel_graph_node_count(g) == 1);
    CHECK(h && h->node != NULL);
    petrel_tensor *r = petrel_op_relu(g, h);
    petrel_tensor *f = petrel_op_flatten(g, r); /* a reshape node */
    petrel_tensor *s = petrel_op_sum(g, f);
    CHECK(petrel_graph_node_count(g) == 4);
    CHECK(s && s->ndim == 1 && s->ne[0] == 1);
    size_t used = petrel_graph_arena_used(g);
    CHECK(used >= 6 * sizeof(float) * 2);
    petrel_graph_reset(g);
    CHECK(petrel_graph_node_count(g) == 0);
    CHECK(petrel_graph_arena_used(g) == 0);
    /* The same step again takes the same arena space. */
    x = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
    w = petrel_graph_input(g, wd, 2, (int64_t[]){2, 3});
    t = petrel_graph_tensor(g, 3, (int64_t[]){2, 3, 4});
    s = petrel_op_sum(g, petrel_op_flatten(g, petrel_op_relu(g, petrel_op_linear(g, x, w, NULL))));
    CHECK(s != NULL && petrel_graph_arena_used(g) == used);
    petrel_graph_free(g);
    petrel_graph_free(NULL);
}

static void test_op_names(void) {
    CHECK(strcmp(petrel_op_name(PETREL_OP_LINEAR), "linear") == 0);
    CHECK(strcmp(petrel_op_name(PETREL_OP_MATMUL), "matmul") == 0);
    CHECK(strcmp(petrel_op_name(PETREL_OP_CONV2D), "conv2d") == 0);
    CHECK(strcmp(petrel_op_name(PETREL_OP_NONE), "none") == 0);
    CHECK(strcmp(petrel_op_name(PETREL_OP_COUNT), "none") == 0);
    for (int i = 1; i < PETREL_OP_COUNT; i++) {
        const char *n = petrel_op_name((petrel_op)i);
        CHECK(n && n[0] && strcmp(n, "none") != 0);
        for (int j = 1; j < i; j++) CHECK(strcmp(n, petrel_op_name((petrel_op)j)) != 0);
    }
}

/* ---- forward values worked out by hand ------------------------------------------------- */

static void test_forward_values(void) {
    petrel_graph *g = graph_new(0);
    float xd[6] = {1, 2, 3, 4, 5, 6}, wd[6] = {1, 0, -1, 2, 1, 0}, bd[2] = {10, 20};
    float md[6] = {1, 2, 3, 4, 5, 6};
    petrel_tensor *x = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
    petrel_tensor *w = petrel_graph_input(g, wd, 2, (int64_t[]){2, 3});
    petrel_tensor *b = petrel_graph_input(g, bd, 1, (int64_t[]){2});
    petrel_tensor *m = petrel_graph_input(g, md, 2, (int64_t[]){3, 2});

    /* linear: x w^T + b = [[1 - 3 + 10, 2 + 2 + 20], [4 - 6 + 10, 8 + 5 + 20]] */
    petrel_tensor *y = petrel_op_linear(g, x, w, b);
    CHECK(y && y->ne[0] == 2 && y->ne[1] == 2);
    float want_lin[4] = {8, 24, 8, 33};
    if (y) CHECK_TENSOR_NEAR(y->data, want_lin, 4, 0, 0);
    /* matmul: x (2, 3) m (3, 2) */
    y = petrel_op_matmul(g, x, m);
    float want_mm[4] = {22, 28, 49, 64};
    if (y) CHECK_TENSOR_NEAR(y->data, want_mm, 4, 0, 0);

    /* (3, 1) + (1, 4) and (2, 3) * (3) */
    float ad[3] = {1, 2, 3}, cd[4] = {10, 20, 30, 40}, vd[3] = {1, 0, -1};
    petrel_tensor *a = petrel_graph_input(g, ad, 2, (int64_t[]){3, 1});
    petrel_tensor *c = petrel_graph_input(g, cd, 2, (int64_t[]){1, 4});
    petrel_tensor *v = petrel_graph_input(g, vd, 1, (int64_t[]){3});
    y = petrel_op_add(g, a, c);
    CHECK(y && y->ndim == 2 && y->ne[0] == 3 && y->ne[1] == 4);
    float want_add[12] = {11, 21, 31, 41, 12, 22, 32, 42, 13, 23, 33, 43};
    if (y) CHECK_TENSOR_NEAR(y->data, want_add, 12, 0, 0);
    y = petrel_op_mul(g, x, v);
    float want_mul[6] = {1, 0, -3, 4, 0, -6};
    if (y) CHECK_TENSOR_NEAR(y->data, want_mul, 6, 0, 0);
    y = petrel_op_add(g, v, x); /* the broadcast operand first */
    float want_add2[6] = {2, 2, 2, 5, 5, 5};
    if (y) CHECK_TENSOR_NEAR(y->data, want_add2, 6, 0, 0);

    /* conv2d: x (1, 1, 3, 3) = 1..9, w (1, 1, 2, 2) = [[1, 0], [0, 1]], bias 0.5 */
    float id[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, kd[4] = {1, 0, 0, 1}, cb = 0.5f;
    petrel_tensor *img = petrel_graph_input(g, id, 4, (int64_t[]){1, 1, 3, 3});
    petrel_tensor *k = petrel_graph_input(g, kd, 4, (int64_t[]){1, 1, 2, 2});
    petrel_tensor *kb = petrel_graph_input(g, &cb, 1, (int64_t[]){1});
    y = petrel_op_conv2d(g, img, k, kb, 1, 0);
    CHECK(y && y->ne[0] == 1 && y->ne[1] == 1 && y->ne[2] == 2 && y->ne[3] == 2);
    float want_c1[4] = {6.5f, 8.5f, 12.5f, 14.5f};
    if (y) CHECK_TENSOR_NEAR(y->data, want_c1, 4, 0, 0);
    y = petrel_op_conv2d(g, img, k, kb, 2, 1); /* windows at (-1,-1), (-1,1), (1,-1), (1,1) */
    float want_c2[4] = {1.5f, 3.5f, 7.5f, 14.5f};
    if (y) CHECK_TENSOR_NEAR(y->data, want_c2, 4, 0, 0);
    /* Channels: x (1, 2, 2, 2), w (3, 2, 1, 1) picks channel 0, channel 1, their sum. */
    float ch[8] = {1, 2, 3, 4, 10, 20, 30, 40}, pick[6] = {1, 0, 0, 1, 1, 1};
    petrel_tensor *xc = petrel_graph_input(g, ch, 4, (int64_t[]){1, 2, 2, 2});
    petrel_tensor *wc = petrel_graph_input(g, pick, 4, (int64_t[]){3, 2, 1, 1});
    y = petrel_op_conv2d(g, xc, wc, NULL, 1, 0);
    CHECK(y && y->ne[1] == 3 && y->ne[2] == 2 && y->ne[3] == 2);
    float want_ch[12] = {1, 2, 3, 4, 10, 20, 30, 40, 11, 22, 33, 44};
    if (y) CHECK_TENSOR_NEAR(y->data, want_ch, 12, 0, 0);

    /* maxpool2d over the 3x3 image, k = 2, s = 1 */
    y = petrel_op_maxpool2d(g, img, 2, 1);
    float want_mp[4] = {5, 6, 8, 9};
    if (y) CHECK_TENSOR_NEAR(y->data, want_mp, 4, 0, 0);

    /* softmax_xent of [[1, 2, 3], [1, 1, 1]], labels (2, 0): 0.753109127 */
    float zd[6] = {1, 2, 3, 1, 1, 1};
    int32_t labels[2] = {2, 0};
    petrel_tensor *z = petrel_graph_input(g, zd, 2, (int64_t[]){2, 3});
    y = petrel_op_softmax_xent(g, z, labels);
    labels[0] = 1; /* the op copied the labels */
    CHECK(y && y->ndim == 1 && y->ne[0] == 1);
    if (y) CHECK_NEAR(y->data[0], 0.753109127, 1e-6, 0);
    y = petrel_op_log_softmax(g, z);
    float want_ls[6] = {-2.40760596f, -1.40760596f, -0.40760596f,
                        -1.09861229f, -1.09861229f, -1.09861229f};
    if (y) CHECK_TENSOR_NEAR(y->data, want_ls, 6, 1e-6, 0);

    y = petrel_op_sum(g, x);
    if (y) CHECK(y->data[0] == 21.0f);
    y = petrel_op_tanh(g, b);
    if (y) CHECK_NEAR(y->data[0], tanh(10.0), 1e-7, 0);
    y = petrel_op_sigmoid(g, v);
    float want_sg[3] = {0.731058578f, 0.5f, 0.268941421f};
    if (y) CHECK_TENSOR_NEAR(y->data, want_sg, 3, 1e-7, 0);
    y = petrel_op_relu(g, v);
    float want_relu[3] = {1, 0, 0};
    if (y) CHECK_TENSOR_NEAR(y->data, want_relu, 3, 0, 0);

    /* embedding: rows of the table, repeats allowed */
    float table[8] = {0, 1, 10, 11, 20, 21, 30, 31};
    int32_t idx[3] = {3, 0, 3};
    petrel_tensor *tt = petrel_graph_input(g, table, 2, (int64_t[]){4, 2});
    y = petrel_op_embedding(g, tt, idx, 3);
    idx[0] = 1; /* the op copied the indices */
    CHECK(y && y->ne[0] == 3 && y->ne[1] == 2);
    float want_emb[6] = {30, 31, 0, 1, 30, 31};
    if (y) CHECK_TENSOR_NEAR(y->data, want_emb, 6, 0, 0);

    /* reshape and flatten view the input's data */
    y = petrel_op_reshape(g, x, 3, (int64_t[]){3, 1, 2});
    CHECK(y && y->data == x->data && y->ndim == 3 && y->ne[0] == 3 && y->ne[2] == 2);
    y = petrel_op_flatten(g, xc);
    CHECK(y && y->data == xc->data && y->ndim == 2 && y->ne[0] == 1 && y->ne[1] == 8);
    CHECK(petrel_graph_error(g) == PETREL_OK);

    /* The reference kernels give the same forward values. */
    petrel_kernels_set_current(petrel_kernels_reference());
    y = petrel_op_conv2d(g, img, k, kb, 2, 1);
    if (y) CHECK_TENSOR_NEAR(y->data, want_c2, 4, 0, 0);
    labels[0] = 2;
    y = petrel_op_softmax_xent(g, z, labels);
    if (y) CHECK_NEAR(y->data[0], 0.753109127, 1e-6, 0);
    petrel_kernels_set_current(petrel_kernels_cpu());
    petrel_graph_free(g);
}

/* ---- requires_grad and gradient ownership ----------------------------------------------- */

static void test_requires_grad_propagation(void) {
    petrel_graph *g = graph_new(0);
    float xd[6], wd[6], bd[2];
    fill(xd, 6, -1, 1);
    fill(wd, 6, -1, 1);
    fill(bd, 2, -1, 1);
    petrel_tensor *x = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
    petrel_tensor *w = petrel_graph_input(g, wd, 2, (int64_t[]){2, 3});
    petrel_tensor *b = petrel_graph_input(g, bd, 1, (int64_t[]){2});
    w->requires_grad = true;
    b->requires_grad = true;

    petrel_tensor *xx = petrel_op_relu(g, petrel_op_add(g, x, x));
    CHECK(xx && !xx->requires_grad); /* no input needs a gradient */
    petrel_tensor *y = petrel_op_linear(g, x, w, b);
    CHECK(y && y->requires_grad);
    petrel_tensor *side = petrel_op_tanh(g, w); /* needs a gradient but feeds no loss */
    CHECK(side && side->requires_grad);
    petrel_tensor *loss = petrel_op_sum(g, petrel_op_mul(g, y, y));
    CHECK(loss && loss->requires_grad);
    CHECK_OK(petrel_backward(g, loss));

    CHECK(x->grad == NULL);    /* x does not need one: none was made */
    CHECK(xx->grad == NULL);   /* nor for results that do not need one */
    CHECK(side->grad == NULL); /* no gradient reaches a node off the loss's path */
    CHECK(w->grad != NULL && b->grad != NULL);
    if (w->grad && b->grad) {
        /* loss = sum(y^2), y = x w^T + b: dL/db = 2 sum_rows(y), dL/dw = 2 y^T x */
        for (int o = 0; o < 2; o++) {
            double db = 2.0 * (y->data[o] + y->data[2 + o]);
            CHECK_NEAR(b->grad->data[o], db, 1e-5, 1e-5);
            for (int i = 0; i < 3; i++) {
                double dw = 2.0 * (y->data[o] * xd[i] + y->data[2 + o] * xd[3 + i]);
                CHECK_NEAR(w->grad->data[o * 3 + i], dw, 1e-5, 1e-5);
            }
        }
    }

    /* A loss that needs no gradient: backward does nothing and succeeds. */
    petrel_tensor *l2 = petrel_op_sum(g, xx);
    CHECK(l2 && !l2->requires_grad);
    CHECK_OK(petrel_backward(g, l2));
    CHECK(x->grad == NULL);

    /* Errors: a loss of more than one element, no loss at all. */
    CHECK_ERR(petrel_backward(g, y), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_backward(g, NULL), PETREL_ERR_INVALID);
    petrel_graph_free(g);
}

/* y = x * x + x elementwise: dy/dx = 2x + 1, with x reaching y by three paths. */
static void test_diamond(void) {
    petrel_graph *g = graph_new(0);
    float xd[4] = {0.5f, -1.0f, 2.0f, 3.0f};
    petrel_tensor *x = petrel_graph_input(g, xd, 1, (int64_t[]){4});
    x->requires_grad = true;
    petrel_tensor *y = petrel_op_add(g, petrel_op_mul(g, x, x), x);
    CHECK_OK(petrel_backward(g, petrel_op_sum(g, y)));
    CHECK(x->grad != NULL);
    float want[4] = {2, -1, 5, 7};
    if (x->grad) CHECK_TENSOR_NEAR(x->grad->data, want, 4, 0, 0);
    petrel_graph_free(g);
}

static void test_accumulate_caller_grad(void) {
    static mlp m;
    mlp_init(&m);
    petrel_graph *g = graph_new(0);
    static float g1[MH * MIN];

    /* Step 1. */
    mlp_zero_grad(&m);
    petrel_tensor *loss = mlp_forward(g, &m, NULL);
    CHECK(loss != NULL);
    CHECK_OK(petrel_backward(g, loss));
    memcpy(g1, m.gw1, sizeof g1);
    float gb2_1[MOUT];
    memcpy(gb2_1, m.gb2, sizeof gb2_1);
    double norm = 0;
    for (int i = 0; i < MH * MIN; i++) norm += fabs(g1[i]);
    CHECK(norm > 1e-3);
    CHECK(m.tw1.grad == &m.tgw1); /* the caller's gradient tensor was used as is */

    /* Step 2 after a reset, without zeroing: the caller-owned gradients add up. */
    petrel_graph_reset(g);
    CHECK(m.tw1.grad == &m.tgw1); /* reset leaves caller-owned gradients alone */
    loss = mlp_forward(g, &m, NULL);
    CHECK_OK(petrel_backward(g, loss));
    /* Equal up to rounding: a kernel may add into the buffer term by term. */
    static float twice[MH * MIN];
    for (int i = 0; i < MH * MIN; i++) twice[i] = 2.0f * g1[i];
    float twice_b2[MOUT];
    for (int i = 0; i < MOUT; i++) twice_b2[i] = 2.0f * gb2_1[i];
    CHECK_TENSOR_NEAR(m.gw1, twice, MH * MIN, 1e-6, 1e-5);
    CHECK_TENSOR_NEAR(m.gb2, twice_b2, MOUT, 1e-6, 1e-5);

    /* Two backward passes over the same tape also add up, exactly once each. */
    petrel_graph_reset(g);
    mlp_zero_grad(&m);
    loss = mlp_forward(g, &m, NULL);
    CHECK_OK(petrel_backward(g, loss));
    CHECK_OK(petrel_backward(g, loss));
    CHECK_TENSOR_NEAR(m.gw1, twice, MH * MIN, 1e-6, 1e-5);
    CHECK_TENSOR_NEAR(m.gb2, twice_b2, MOUT, 1e-6, 1e-5);
    petrel_graph_free(g);
}

static void test_reset_clears_leaf_grads(void) {
    petrel_graph *g = graph_new(0);
    float wd[6], xd[6], gd[6] = {0};
    fill(wd, 6, -1, 1);
    fill(xd, 6, -1, 1);
    /* A parameter the caller holds, with no gradient buffer: the graph makes one. */
    petrel_tensor w = petrel_tensor_view(wd, 2, (int64_t[]){2, 3});
    w.requires_grad = true;
    /* And one with its own buffer. */
    petrel_tensor v = petrel_tensor_view(xd, 2, (int64_t[]){2, 3});
    petrel_tensor vg = petrel_tensor_view(gd, 2, (int64_t[]){2, 3});
    v.requires_grad = true;
    v.grad = &vg;
    petrel_tensor *in = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
    in->requires_grad = true;

    for (int step = 0; step < 3; step++) {
        petrel_tensor *y = petrel_op_add(g, petrel_op_mul(g, &w, in), &v);
        CHECK_OK(petrel_backward(g, petrel_op_sum(g, y)));
        CHECK(w.grad != NULL && w.grad != &vg);
        CHECK(in->grad != NULL);
        if (w.grad) CHECK_TENSOR_NEAR(w.grad->data, xd, 6, 0, 0); /* d(w * x)/dw = x */
        if (in->grad) CHECK_TENSOR_NEAR(in->grad->data, wd, 6, 0, 0);
        petrel_graph_reset(g);
        CHECK(w.grad == NULL); /* it pointed into the arena */
        CHECK(v.grad == &vg);
        CHECK(gd[0] == (float)(step + 1)); /* accumulated, never cleared by the graph */
        in = petrel_graph_input(g, xd, 2, (int64_t[]){2, 3});
        in->requires_grad = true;
    }
    /* Freeing the graph clears them too. */
    CHECK_OK(petrel_backward(g, petrel_op_sum(g, petrel_op_mul(g, &w, in))));
    CHECK(w.grad != NULL);
    petrel_graph_free(g);
    CHECK(w.grad == NULL);
    CHECK(v.grad == &vg);
}

static void test_graph_new_nomem(void) {
    petrel_alloc_stats base = petrel_alloc_get_stats();
    for (int k = 0; k < 2; k++) {
        petrel_graph *g = (petrel_graph *)&base; /* must stay untouched on failure */
        petrel_alloc_fail_after(k);
        CHECK_ERR(petrel_graph_new(&g, 0), PETREL_ERR_NOMEM);
        petrel_alloc_fail_after(-1);
        CHECK(g == (petrel_graph *)&base);
        CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
    }
}

/* ---- errors ---------------------------------------------------------------------------- */

/* Each forward allocation fails in turn: every op from the failure on returns NULL, the
 * graph reports NOMEM, backward refuses, and after a reset the same graph works. */
static void test_sticky_error_forward(void) {
    static mlp m;
    mlp_init(&m);
    float want = 0;
    {
        petrel_graph *g = graph_new(0);
        petrel_tensor *loss = mlp_forward(g, &m, NULL);
        CHECK(loss != NULL);
        if (loss) want = loss->data[0];
        petrel_graph_free(g);
    }
    int failures = 0;
    bool succeeded = false;
    for (int k = 0; k < 200 && !succeeded; k++) {
        petrel_graph *g = graph_new(256); /* small blocks: many allocations */
        petrel_tensor *r[6];
        petrel_alloc_fail_after(k);
        mlp_forward(g, &m, r);
        petrel_alloc_fail_after(-1);
        int first_null = 6;
        for (int i = 5; i >= 0; i--)
            if (!r[i]) first_null = i;
        int nonnull_after = 0;
        for (int i = first_null; i < 6; i++) nonnull_after += r[i] != NULL;
        CHECK(nonnull_after == 0);
        if (first_null == 6) {
            succeeded = true;
            CHECK(petrel_graph_error(g) == PETREL_OK);
            CHECK(r[4]->data[0] == want);
        } else {
            failures++;
            CHECK(petrel_graph_error(g) == PETREL_ERR_NOMEM);
            /* Later ops keep returning NULL, also with valid inputs. */
            float d[2] = {1, 2};
            petrel_tensor *ok = petrel_graph_input(g, d, 1, (int64_t[]){2});
            CHECK(petrel_op_relu(g, ok ? ok : &m.tb2) == NULL);
            CHECK(petrel_op_sum(g, NULL) == NULL);
            CHECK(petrel_graph_error(g) == PETREL_ERR_NOMEM);
            petrel_tensor scalar = petrel_tensor_view(d, 1, (int64_t[]){1});
            scalar.requires_grad = true;
            CHECK_ERR(petrel_backward(g, r[4] ? r[4] : &scalar), PETREL_ERR_NOMEM);
            /* Reset clears the error; the same graph then runs the step. */
            petrel_graph_reset(g);
            CHECK(petrel_graph_error(g) == PETREL_OK);
            petrel_tensor *loss = mlp_forward(g, &m, NULL);
            CHECK(loss != NULL && petrel_graph_error(g) == PETREL_OK);
            if (loss) CHECK(loss->data[0] == want);
        }
        petrel_graph_free(g);
    }
    CHECK(succeeded);
    CHECK(failures >= 6); /* every op allocates at least once */
}

/* Each backward allocation fails in turn: backward returns NOMEM and the graph keeps it. */
static void test_sticky_error_backward(void) {
    static mlp m;
    mlp_init(&m);
    static float want_gw1[MH * MIN];
    float want_gb2[MOUT];
    {
        petrel_graph *g = graph_new(0);
        mlp_zero_grad(&m);
        CHECK_OK(petrel_backward(g, mlp_forward(g, &m, NULL)));
        memcpy(want_gw1, m.gw1, sizeof want_gw1);
        memcpy(want_gb2, m.gb2, sizeof want_gb2);
        petrel_graph_free(g);
    }
    int failures = 0;
    bool succeeded = false;
    for (int k = 0; k < 200 && !succeeded; k++) {
        petrel_graph *g = graph_new(256);
        mlp_zero_grad(&m);
        petrel_tensor *loss = mlp_forward(g, &m, NULL);
        CHECK(loss != NULL);
        if (!loss) break;
        petrel_alloc_fail_after(k);
        petrel_err e = petrel_backward(g, loss);
        petrel_alloc_fail_after(-1);
        if (e == PETREL_OK) {
            succeeded = true;
            CHECK(petrel_graph_error(g) == PETREL_OK);
            CHECK_TENSOR_NEAR(m.gw1, want_gw1, MH * MIN, 0, 0);
            CHECK_TENSOR_NEAR(m.gb2, want_gb2, MOUT, 0, 0);
        } else {
            failures++;
            CHECK(e == PETREL_ERR_NOMEM);
            CHECK(petrel_graph_error(g) == PETREL_ERR_NOMEM);
            CHECK_ERR(petrel_backward(g, loss), PETREL_ERR_NOMEM); /* sticky */
            CHECK(petrel_op_relu(g, loss) == NULL);
        }
        petrel_graph_free(g);
    }
    CHECK(succeeded);
    CHECK(failures >= 3);
}

/* The tape grows past its first capacity; a failure to grow is reported too. */
static void test_tape_growth(void) {
    petrel_graph *g = graph_new(1 << 20);
    float d[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    petrel_tensor *x = petrel_graph_input(g, d, 1, (int64_t[]){4});
    x->requires_grad = true;
    petrel_tensor *y = x;
    for (int i = 0; i < 300; i++) y = petrel_op_tanh(g, y);
    CHECK(y != NULL && petrel_graph_node_count(g) == 300);
    CHECK_OK(petrel_backward(g, petrel_op_sum(g, y)));
    CHECK(x->grad != NULL);
    /* tanh applied 300 times: the gradient is the product of 1 - tanh^2 along the chain. */
    if (x->grad && y) {
        double v = d[0], dv = 1.0;
        for (int i = 0; i < 300; i++) {
            v = tanh(v);
            dv *= 1.0 - v * v;
        }
        CHECK_NEAR(y->data[0], v, 1e-5, 1e-4);
        CHECK_NEAR(x->grad->data[0], dv, 1e-6, 1e-3);
    }

    /* A fresh graph has room for fewer nodes than that: make the growth fail. */
    petrel_graph *h = graph_new(1 << 20);
    x = petrel_graph_input(h, d, 1, (int64_t[]){4});
    y = x;
    int made = 0;
    for (int i = 0; i < 200; i++) {
        petrel_alloc_fail_after(0); /* the arena has room: only the tape can allocate */
        petrel_tensor *z = petrel_op_tanh(h, y);
        petrel_alloc_fail_after(-1);
        if (!z) break;
        y = z;
        made++;
    }
    CHECK(made >= 16 && made < 200);
    CHECK(petrel_graph_error(h) == PETREL_ERR_NOMEM);
    CHECK(petrel_graph_node_count(h) == (size_t)made);
    petrel_graph_reset(h);
    CHECK(petrel_graph_error(h) == PETREL_OK);
    petrel_graph_free(h);
    petrel_graph_free(g);
}

/* ---- steady state ---------------------------------------------------------------------- */

/* After the first step has sized the arena, a training step allocates nothing. */
static void test_steady_state_no_malloc(void) {
    static mlp m;
    mlp_init(&m);
    petrel_alloc_stats base = petrel_alloc_get_stats();
    petrel_graph *g = graph_new(1024); /* smaller than one step: the first step spills */
    petrel_alloc_stats s0 = petrel_alloc_get_stats();
    mlp_zero_grad(&m);
    petrel_tensor *loss = mlp_forward(g, &m, NULL);
    CHECK(loss != NULL);
    if (!loss) return;
    float first_loss = loss->data[0];
    CHECK_OK(petrel_backward(g, loss));
    size_t used = petrel_graph_arena_used(g);
    petrel_graph_reset(g); /* merges the spilled blocks */
    petrel_alloc_stats s1 = petrel_alloc_get_stats();
    CHECK(s1.calls > s0.calls + 2); /* the first step did grow the arena */

    for (int step = 0; step < 5; step++) {
        mlp_zero_grad(&m);
        loss = mlp_forward(g, &m, NULL);
        CHECK(loss != NULL);
        if (!loss) break;
        CHECK(loss->data[0] == first_loss);
        CHECK_OK(petrel_backward(g, loss));
        CHECK(petrel_graph_arena_used(g) == used);
        petrel_graph_reset(g);
    }
    petrel_alloc_stats s2 = petrel_alloc_get_stats();
    CHECK(s2.calls == s1.calls);
    CHECK(s2.live_bytes == s1.live_bytes);
    petrel_graph_free(g);
    CHECK(petrel_alloc_get_stats().live_bytes == base.live_bytes);
}

/* ---- dropout and embedding specifics ---------------------------------------------------- */

static void test_dropout_statistics(void) {
    enum { N = 100000 };
    static float ones[N];
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    petrel_graph *g = graph_new(0);
    petrel_rng r;
    petrel_rng_seed(&r, seed);
    petrel_tensor *x = petrel_graph_input(g, ones, 1, (int64_t[]){N});
    petrel_tensor *y = petrel_op_dropout(g, x, 0.25f, true, &r);
    CHECK(y != NULL);
    if (!y) return;
    int zeros = 0, other = 0;
    const float keep = 1.0f / (1.0f - 0.25f);
    for (int i = 0; i < N; i++) {
        zeros += y->data[i] == 0.0f;
        other += y->data[i] != 0.0f && y->data[i] != keep;
    }
    CHECK_NEAR((double)zeros / N, 0.25, 0.01, 0); /* sd 0.0014 */
    CHECK(other == 0);
    /* A second draw gives another mask. */
    petrel_tensor *y2 = petrel_op_dropout(g, x, 0.25f, true, &r);
    int differ = 0;
    for (int i = 0; y2 && i < N; i++) differ += y2->data[i] != y->data[i];
    CHECK(differ > N / 10);

    /* Evaluation: the identity, and the rng is not touched. */
    petrel_rng before = r;
    petrel_tensor *ye = petrel_op_dropout(g, x, 0.5f, false, &r);
    CHECK(ye && memcmp(&before, &r, sizeof r) == 0);
    if (ye) CHECK_TENSOR_NEAR(ye->data, ones, N, 0, 0);
    petrel_tensor *yn = petrel_op_dropout(g, x, 0.5f, false, NULL);
    CHECK(yn != NULL);
    /* p = 0 in training: the identity. */
    petrel_tensor *y0 = petrel_op_dropout(g, x, 0.0f, true, &r);
    if (y0) CHECK_TENSOR_NEAR(y0->data, ones, N, 0, 0);
    petrel_graph_free(g);
}

static void test_embedding_sparse_grad(void) {
    petrel_graph *g = graph_new(0);
    float table[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, other[2] = {0, 0};
    petrel_tensor *t = petrel_graph_input(g, table, 2, (int64_t[]){4, 3});
    petrel_tensor *u = petrel_graph_input(g, other, 1, (int64_t[]){2});
    t->requires_grad = true;
    int32_t i1[2] = {2, 2}, i2[3] = {0, 1, 3};
    petrel_sparse_grad sg;
    CHECK_ERR(petrel_graph_sparse_grad(g, t, &sg), PETREL_ERR_NOT_FOUND); /* no embedding yet */
    petrel_tensor *e1 = petrel_op_embedding(g, t, i1, 2);
    petrel_tensor *e2 = petrel_op_embedding(g, t, i2, 3);
    CHECK(e1 && e2);
    CHECK_ERR(petrel_graph_sparse_grad(g, t, &sg), PETREL_ERR_NOT_FOUND); /* no backward yet */
    /* loss = 2 sum(e1) + 3 sum(e2) */
    float two = 2, three = 3;
    petrel_tensor *c2 = petrel_graph_input(g, &two, 1, (int64_t[]){1});
    petrel_tensor *c3 = petrel_graph_input(g, &three, 1, (int64_t[]){1});
    petrel_tensor *loss = petrel_op_add(g, petrel_op_sum(g, petrel_op_mul(g, e1, c2)),
                                        petrel_op_sum(g, petrel_op_mul(g, e2, c3)));
    CHECK_OK(petrel_backward(g, loss));
    CHECK(t->grad == NULL);                        /* only sparse rows were asked for */
    CHECK_OK(petrel_graph_sparse_grad(g, t, &sg)); /* the first embedding of t */
    CHECK(sg.n == 2 && sg.dim == 3 && sg.rows[0] == 2 && sg.rows[1] == 2);
    for (int i = 0; i < 6; i++) CHECK(sg.values[i] == 2.0f);
    CHECK_ERR(petrel_graph_sparse_grad(g, u, &sg), PETREL_ERR_NOT_FOUND);
    petrel_graph_reset(g);
    CHECK_ERR(petrel_graph_sparse_grad(g, t, &sg), PETREL_ERR_NOT_FOUND);
    petrel_graph_free(g);
}

/* ---- gradient-ready hook and sufficient factors ---------------------------------- */

typedef struct ready_log {
    const petrel_tensor *order[8];
    float snapshot[8]; /* the first gradient element when reported */
    int count;
} ready_log;

static void on_ready(void *ctx, const petrel_tensor *param) {
    ready_log *log = ctx;
    if (log->count < 8) {
        log->snapshot[log->count] = param->grad->data[0];
        log->order[log->count++] = param;
    }
}

static void test_grad_ready_hook(void) {
    petrel_params *p;
    petrel_linear fc1, fc2;
    CHECK_OK(petrel_params_new(&p));
    CHECK_OK(petrel_linear_init(&fc1, p, "fc1", 6, 5));
    CHECK_OK(petrel_linear_init(&fc2, p, "fc2", 5, 3));
    CHECK_OK(petrel_params_finalize(p));
    petrel_linear_reset(&fc1, &rng);
    petrel_linear_reset(&fc2, &rng);
    petrel_init_uniform(fc1.b, -0.5f, 0.5f, &rng);
    petrel_graph *g;
    CHECK_OK(petrel_graph_new(&g, 0));
    ready_log log = {0};
    petrel_graph_on_grad_ready(g, on_ready, &log);
    float x[4 * 6];
    for (int i = 0; i < 24; i++) x[i] = petrel_rng_uniform(&rng) - 0.5f;
    int32_t y[4] = {0, 1, 2, 1};
    /* fc1's weight is read twice (a shared weight): reported once, after its earliest use */
    petrel_tensor *xt = petrel_graph_input(g, x, 2, (int64_t[]){4, 6});
    petrel_tensor *h = petrel_op_relu(g, petrel_linear_forward(g, &fc1, xt));
    petrel_tensor *h2 = petrel_op_add(g, h, petrel_op_linear(g, xt, fc1.w, NULL));
    petrel_tensor *loss = petrel_op_softmax_xent(g, petrel_linear_forward(g, &fc2, h2), y);
    petrel_params_zero_grad(p);
    CHECK_OK(petrel_backward(g, loss));
    CHECK(log.count == 4);
    /* fc2 completes first (reverse order), then fc1's bias and weight */
    CHECK(log.order[0] == fc2.w || log.order[0] == fc2.b);
    CHECK(log.order[1] == fc2.w || log.order[1] == fc2.b);
    CHECK(log.order[2] == fc1.w || log.order[2] == fc1.b);
    CHECK(log.order[3] == fc1.w || log.order[3] == fc1.b);
    /* a reported gradient is final: it did not change after the report */
    for (int i = 0; i < log.count; i++) CHECK(log.snapshot[i] == log.order[i]->grad->data[0]);

    /* The factors of fc2: dy^T x is its weight gradient. */
    const petrel_tensor *fx, *fdy;
    CHECK_OK(petrel_graph_linear_factors(g, fc2.w, &fx, &fdy));
    CHECK(fx->ne[0] == 4 && fx->ne[1] == 5 && fdy->ne[0] == 4 && fdy->ne[1] == 3);
    float dw[15];
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 5; i++) {
            double acc = 0;
            for (int b = 0; b < 4; b++) acc += (double)fdy->data[b * 3 + o] * fx->data[b * 5 + i];
            dw[o * 5 + i] = (float)acc;
        }
    CHECK_TENSOR_NEAR(fc2.w->grad->data, dw, 15, 1e-6, 1e-5);
    CHECK_ERR(petrel_graph_linear_factors(g, fc1.b, &fx, &fdy), PETREL_ERR_NOT_FOUND);
    petrel_graph_on_grad_ready(g, NULL, NULL);
    petrel_graph_free(g);
    petrel_params_free(p);
}

int main(void) {
    seed = check_seed(seed);
    petrel_rng_seed(&rng, seed);
    petrel_alloc_stats before = petrel_alloc_get_stats();

    RUN(test_tape_counts);
    RUN(test_graph_new_nomem);
    RUN(test_op_names);
    RUN(test_forward_values);
    RUN_SEEDED(test_requires_grad_propagation, seed);
    RUN(test_diamond);
    RUN_SEEDED(test_accumulate_caller_grad, seed);
    RUN_SEEDED(test_reset_clears_leaf_grads, seed);
    RUN_SEEDED(test_sticky_error_forward, seed);
    RUN_SEEDED(test_sticky_error_backward, seed);
    RUN(test_tape_growth);
    RUN_SEEDED(test_steady_state_no_malloc, seed);
    RUN_SEEDED(test_dropout_statistics, seed);
    RUN(test_embedding_sparse_grad);

    RUN(test_grad_ready_hook);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
