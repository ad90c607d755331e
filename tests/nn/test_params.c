/* Parameter registry and layers: one flat buffer, alignment, names, init bounds. */
#include "check.h"

static void test_flat_layout(void) {
    petrel_params *p;
    CHECK_OK(petrel_params_new(&p));
    petrel_tensor *a, *b, *c;
    CHECK_OK(petrel_params_add(p, "a", 2, (int64_t[]){3, 5}, &a));
    CHECK_OK(petrel_params_add(p, "b", 1, (int64_t[]){7}, &b));
    CHECK_OK(petrel_params_add(p, "c", 4, (int64_t[]){2, 2, 2, 2}, &c));
    CHECK_OK(petrel_params_finalize(p));
    CHECK(petrel_params_num(p) == 3);
    CHECK(petrel_params_numel(p) == 15 + 7 + 16);
    /* each parameter padded to 16 floats: 16 + 16 + 16 */
    CHECK(petrel_params_count(p) == 48);
    float *base = petrel_params_data(p), *gbase = petrel_params_grad(p);
    CHECK(a->data == base && b->data == base + 16 && c->data == base + 32);
    CHECK(a->grad->data == gbase && c->grad->data == gbase + 32);
    CHECK(((uintptr_t)b->data & 63) == 0);
    CHECK(a->requires_grad && petrel_tensor_same_shape(a, a->grad));
    CHECK(petrel_params_find(p, "b") == b && petrel_params_find(p, "zz") == NULL);
    CHECK(strcmp(petrel_params_name(p, 2), "c") == 0);
    for (size_t i = 0; i < petrel_params_count(p); i++) CHECK(base[i] == 0.0f && gbase[i] == 0.0f);
    gbase[5] = 3.0f;
    petrel_params_zero_grad(p);
    CHECK(gbase[5] == 0.0f);
    petrel_params_free(p);
}

static void test_misuse(void) {
    petrel_params *p;
    petrel_tensor *t;
    CHECK_OK(petrel_params_new(&p));
    CHECK_OK(petrel_params_add(p, "w", 1, (int64_t[]){4}, &t));
    CHECK_ERR(petrel_params_add(p, "w", 1, (int64_t[]){4}, &t), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "'w' declared twice") != NULL);
    CHECK_ERR(petrel_params_add(p, "v", 5, (int64_t[]){1, 1, 1, 1, 1}, &t), PETREL_ERR_INVALID);
    CHECK_OK(petrel_params_finalize(p));
    CHECK_ERR(petrel_params_add(p, "late", 1, (int64_t[]){4}, &t), PETREL_ERR_STATE);
    CHECK_ERR(petrel_params_finalize(p), PETREL_ERR_STATE);
    petrel_params_free(p);
    petrel_params_free(NULL);
}

static void test_init_bounds(void) {
    petrel_params *p;
    petrel_linear fc;
    CHECK_OK(petrel_params_new(&p));
    CHECK_OK(petrel_linear_init(&fc, p, "fc", 300, 100));
    CHECK_OK(petrel_params_finalize(p));
    petrel_rng rng;
    petrel_rng_seed(&rng, 7);
    petrel_init_constant(fc.b, 5.0f);
    petrel_linear_reset(&fc, &rng);
    double bound = sqrt(6.0 / 300.0), mx = 0, sum = 0, sq = 0;
    int64_t n = petrel_tensor_numel(fc.w);
    for (int64_t i = 0; i < n; i++) {
        double v = fc.w->data[i];
        mx = fabs(v) > mx ? fabs(v) : mx;
        sum += v;
        sq += v * v;
    }
    CHECK(mx <= bound);
    CHECK(mx > 0.95 * bound);                                      /* the range is used */
    CHECK_NEAR(sum / (double)n, 0.0, 0.01, 0);                     /* centered */
    CHECK_NEAR(sq / (double)n, bound * bound / 3.0, 0.0005, 0.05); /* variance of U(-b, b) */
    for (int i = 0; i < 100; i++) CHECK(fc.b->data[i] == 0.0f);
    petrel_tensor *t = fc.w;
    petrel_init_xavier_uniform(t, 300, 100, &rng);
    double xb = sqrt(6.0 / 400.0);
    for (int64_t i = 0; i < n; i++) CHECK(fabs(t->data[i]) <= xb);
    petrel_params_free(p);
}

static void test_linear_layer_forward(void) {
    petrel_params *p;
    petrel_linear fc;
    CHECK_OK(petrel_params_new(&p));
    CHECK_OK(petrel_linear_init(&fc, p, "fc", 2, 3));
    CHECK_OK(petrel_params_finalize(p));
    const float w[6] = {1, 2, 3, 4, 5, 6}, b[3] = {0.5f, -1, 2};
    memcpy(fc.w->data, w, sizeof w);
    memcpy(fc.b->data, b, sizeof b);
    petrel_graph *g;
    CHECK_OK(petrel_graph_new(&g, 0));
    float x[4] = {1, -1, 2, 0.5f};
    petrel_tensor *y =
        petrel_linear_forward(g, &fc, petrel_graph_input(g, x, 2, (int64_t[]){2, 2}));
    CHECK(y && y->ne[0] == 2 && y->ne[1] == 3);
    /* y = x w^T + b: row 0 = (1-2, 3-4, 5-6) + b; row 1 = (2+1, 6+2, 10+3) + b */
    const float want[6] = {-0.5f, -2, 1, 3.5f, 7, 15};
    CHECK_TENSOR_NEAR(y->data, want, 6, 1e-6, 0);
    petrel_graph_free(g);
    petrel_params_free(p);
}

int main(void) {
    RUN(test_flat_layout);
    RUN(test_misuse);
    RUN(test_init_bounds);
    RUN(test_linear_layer_forward);
    return CHECK_DONE();
}
