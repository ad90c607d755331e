/* Optimizers against their update formulas, computed independently in double. */
#include "check.h"

#define N 5

static const float g_seq[3][N] = {{0.5f, -1.0f, 2.0f, 0.0f, -0.25f},
                                  {0.1f, -0.5f, 1.0f, 0.3f, 0.75f},
                                  {-0.2f, 0.4f, -1.5f, 0.0f, 0.5f}};

/* Runs 3 steps of cfg from p0 and compares every step with `expected`. */
static void run_steps(petrel_optim_config cfg, double expect[3][N]) {
    float p[N] = {1.0f, -2.0f, 0.5f, 3.0f, 0.0f};
    petrel_optim *o;
    CHECK_OK(petrel_optim_new(&o, cfg, N));
    for (int t = 0; t < 3; t++) {
        petrel_optim_step(o, p, g_seq[t]);
        for (int i = 0; i < N; i++) CHECK_NEAR(p[i], expect[t][i], 1e-6, 1e-5);
    }
    petrel_optim_free(o);
}

static void reference(petrel_optim_config c, double out[3][N]) {
    double p[N] = {1.0, -2.0, 0.5, 3.0, 0.0}, m[N] = {0}, v[N] = {0};
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < N; i++) {
            double g = g_seq[t][i] + (double)c.weight_decay * p[i];
            switch (c.kind) {
            case PETREL_OPTIM_SGD:
                p[i] -= c.lr * g;
                break;
            case PETREL_OPTIM_MOMENTUM:
                m[i] = c.momentum * m[i] + g;
                p[i] -= c.lr * m[i];
                break;
            case PETREL_OPTIM_ADAGRAD:
                m[i] += g * g;
                p[i] -= c.lr * g / (sqrt(m[i]) + c.eps);
                break;
            case PETREL_OPTIM_ADAM:
                m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
                v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
                p[i] -= c.lr * (m[i] / (1 - pow(c.beta1, t + 1))) /
                        (sqrt(v[i] / (1 - pow(c.beta2, t + 1))) + c.eps);
                break;
            default:
                break;
            }
            out[t][i] = p[i];
        }
    }
}

static void check_kind(petrel_optim_kind kind, float lr, float wd) {
    petrel_optim_config c = petrel_optim_config_default(kind, lr);
    c.weight_decay = wd;
    double expect[3][N];
    reference(c, expect);
    run_steps(c, expect);
}

static void test_sgd(void) {
    check_kind(PETREL_OPTIM_SGD, 0.1f, 0);
    /* and one value by hand: p = 1 - 0.1 * 0.5 */
    float p[1] = {1.0f}, g[1] = {0.5f};
    petrel_optim *o;
    CHECK_OK(petrel_optim_new(&o, petrel_optim_config_default(PETREL_OPTIM_SGD, 0.1f), 1));
    petrel_optim_step(o, p, g);
    CHECK_NEAR(p[0], 0.95, 1e-7, 0);
    petrel_optim_free(o);
}

static void test_momentum(void) {
    check_kind(PETREL_OPTIM_MOMENTUM, 0.05f, 0);
}

static void test_adagrad(void) {
    check_kind(PETREL_OPTIM_ADAGRAD, 0.1f, 0);
}

static void test_adam(void) {
    check_kind(PETREL_OPTIM_ADAM, 0.01f, 0);
    /* Adam's first step moves every coordinate with a nonzero gradient by ~lr. */
    float p[2] = {0, 0}, g[2] = {3.0f, -1e-3f};
    petrel_optim *o;
    CHECK_OK(petrel_optim_new(&o, petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.01f), 2));
    petrel_optim_step(o, p, g);
    CHECK_NEAR(p[0], -0.01, 1e-6, 0);
    CHECK_NEAR(p[1], 0.01, 1e-5, 0);
    petrel_optim_free(o);
}

static void test_weight_decay(void) {
    check_kind(PETREL_OPTIM_SGD, 0.1f, 0.01f);
    check_kind(PETREL_OPTIM_ADAM, 0.01f, 0.1f);
}

/* Each optimizer minimizes f(p) = sum (p - 3)^2 from 0. */
static void test_converges(void) {
    for (int k = 0; k < PETREL_OPTIM_COUNT; k++) {
        float lr = k == PETREL_OPTIM_SGD ? 0.1f : k == PETREL_OPTIM_MOMENTUM ? 0.02f : 0.1f;
        petrel_optim *o;
        float p[4] = {0}, g[4];
        CHECK_OK(petrel_optim_new(&o, petrel_optim_config_default((petrel_optim_kind)k, lr), 4));
        for (int t = 0; t < 2000; t++) {
            for (int i = 0; i < 4; i++) g[i] = 2 * (p[i] - 3);
            petrel_optim_step(o, p, g);
        }
        for (int i = 0; i < 4; i++) CHECK_NEAR(p[i], 3.0, 0.02, 0);
        petrel_optim_free(o);
    }
}

static void test_parse_and_errors(void) {
    petrel_optim_kind k;
    CHECK_OK(petrel_optim_parse("adam", &k));
    CHECK(k == PETREL_OPTIM_ADAM);
    CHECK(strcmp(petrel_optim_name(PETREL_OPTIM_ADAGRAD), "adagrad") == 0);
    CHECK_ERR(petrel_optim_parse("rmsprop", &k), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "rmsprop") != NULL);
    petrel_optim *o;
    CHECK_ERR(petrel_optim_new(&o, petrel_optim_config_default(PETREL_OPTIM_SGD, 0.0f), 4),
              PETREL_ERR_INVALID);
    petrel_alloc_fail_after(0);
    CHECK_ERR(petrel_optim_new(&o, petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.1f), 4),
              PETREL_ERR_NOMEM);
    petrel_alloc_fail_after(1); /* the struct succeeds, its first state buffer fails */
    CHECK_ERR(petrel_optim_new(&o, petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.1f), 4),
              PETREL_ERR_NOMEM);
    petrel_alloc_fail_after(-1);
}

/* A step allocates nothing. */
static void test_step_no_alloc(void) {
    float p[64] = {0}, g[64] = {0};
    for (int k = 0; k < PETREL_OPTIM_COUNT; k++) {
        petrel_optim *o;
        CHECK_OK(petrel_optim_new(&o, petrel_optim_config_default((petrel_optim_kind)k, 0.1f), 64));
        uint64_t before = petrel_alloc_get_stats().calls;
        for (int t = 0; t < 10; t++) petrel_optim_step(o, p, g);
        CHECK(petrel_alloc_get_stats().calls == before);
        petrel_optim_free(o);
    }
}

int main(void) {
    RUN(test_sgd);
    RUN(test_momentum);
    RUN(test_adagrad);
    RUN(test_adam);
    RUN(test_weight_decay);
    RUN(test_converges);
    RUN(test_parse_and_errors);
    RUN(test_step_no_alloc);
    return CHECK_DONE();
}
