/*
 * Tests of the kernel sets: every kernel of the cpu set against the reference set
 * on random data of several sizes (1, odd, large-ish), both against small cases
 * worked out by hand, and softmax cross-entropy against logits of magnitude 1000.
 * GEMM gets smoke cases only: test_gemm.c covers it in depth.
 *
 * Random data comes from one seeded petrel_rng (PETREL_TEST_SEED overrides the
 * seed); a failing test prints the seed and the case it failed on.
 */
#include "check.h"

static uint64_t seed = 7130;
static petrel_rng rng;
static const petrel_kernels *cpu, *ref;

/* The case being run, printed with the seed when a test fails. */
static char case_desc[160];
static int case_reported;

static void set_case(const char *fmt, ...) PETREL_PRINTF(1, 2);
static void set_case(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(case_desc, sizeof case_desc, fmt, ap);
    va_end(ap);
}

/* Call after each case: names the first case of a test that failed. */
static void case_done(void) {
    if (check_current_failed && !case_reported) {
        printf("# first failure in case: %s\n", case_desc);
        case_reported = 1;
    }
}

static float *falloc(int64_t n) {
    float *p = petrel_malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    PETREL_ASSERT(p != NULL, "test allocation failed");
    return p;
}

static void fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * petrel_rng_uniform(&rng);
}

static void fill_const(float *x, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

static float *dup(const float *x, int64_t n) {
    float *p = falloc(n);
    memcpy(p, x, (size_t)(n > 0 ? n : 0) * sizeof(float));
    return p;
}

/* ---- kernel sets --------------------------------------------------------------------- */

static void test_kernel_sets(void) {
    CHECK(strcmp(cpu->name, "cpu") == 0);
    CHECK(strcmp(ref->name, "reference") == 0);
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        const petrel_kernels *k = sets[s];
        CHECK(k->gemm && k->add_row && k->sum_rows_acc && k->unary && k->unary_backward);
        CHECK(k->softmax_xent && k->softmax_xent_backward && k->log_softmax);
        CHECK(k->im2col && k->col2im && k->maxpool2d && k->maxpool2d_backward);
        CHECK(k->csr_mm && k->csr_mm_t_acc && k->axpy);
    }
    CHECK(petrel_kernels_current() == cpu);
    petrel_kernels_set_current(ref);
    CHECK(petrel_kernels_current() == ref);
    petrel_kernels_set_current(NULL); /* back to the default */
    CHECK(petrel_kernels_current() == cpu);
    petrel_kernels_set_threads(1);
}

/* ---- gemm (smoke) -------------------------------------------------------------------- */

static void test_gemm_smoke(void) {
    float A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8}, C[4] = {1, 1, 1, 1};
    cpu->gemm(false, false, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2);
    float want[4] = {19, 22, 43, 50};
    CHECK_TENSOR_NEAR(C, want, 4, 1e-6, 0);
    fill_const(C, 4, 1.0f);
    cpu->gemm(true, true, 2, 2, 2, 2.0f, A, 2, B, 2, 0.5f, C, 2); /* 2 A^T B^T + C/2 */
    float want_tt[4] = {2 * 23 + 0.5f, 2 * 31 + 0.5f, 2 * 34 + 0.5f, 2 * 46 + 0.5f};
    CHECK_TENSOR_NEAR(C, want_tt, 4, 1e-5, 0);

    const int64_t sizes[][3] = {{5, 7, 3}, {33, 17, 65}, {1, 1, 1}, {64, 64, 64}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int t = 0; t < 4; t++) {
            int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
            bool ta = t & 1, tb = t & 2;
            set_case("gemm M=%lld N=%lld K=%lld ta=%d tb=%d", (long long)M, (long long)N,
                     (long long)K, ta, tb);
            float *a = falloc(M * K), *b = falloc(K * N), *c1 = falloc(M * N);
            fill(a, M * K, -1, 1);
            fill(b, K * N, -1, 1);
            fill(c1, M * N, -1, 1);
            float *c2 = dup(c1, M * N);
            cpu->gemm(ta, tb, M, N, K, 0.5f, a, ta ? M : K, b, tb ? K : N, 0.25f, c1, N);
            ref->gemm(ta, tb, M, N, K, 0.5f, a, ta ? M : K, b, tb ? K : N, 0.25f, c2, N);
            CHECK_TENSOR_NEAR(c1, c2, M * N, 1e-5 * (double)K, 1e-5);
            case_done();
            petrel_free(a);
            petrel_free(b);
            petrel_free(c1);
            petrel_free(c2);
        }
}

/* ---- row kernels and axpy --------------------------------------------------------------- */

static const int64_t row_sizes[][2] = {{1, 1}, {1, 17}, {3, 7}, {64, 129}, {257, 1000}};
#define NROW_SIZES (sizeof row_sizes / sizeof row_sizes[0])

static void test_add_row(void) {
    float x[6] = {1, 2, 3, 4, 5, 6}, b[3] = {10, 20, 30}, y[6];
    cpu->add_row(y, x, b, 2, 3);
    float want[6] = {11, 22, 33, 14, 25, 36};
    CHECK_TENSOR_NEAR(y, want, 6, 0, 0);
    ref->add_row(y, x, b, 2, 3);
    CHECK_TENSOR_NEAR(y, want, 6, 0, 0);

    for (size_t s = 0; s < NROW_SIZES; s++) {
        int64_t R = row_sizes[s][0], C = row_sizes[s][1];
        set_case("add_row R=%lld C=%lld", (long long)R, (long long)C);
        float *xx = falloc(R * C), *bb = falloc(C), *y1 = falloc(R * C), *y2 = falloc(R * C);
        fill(xx, R * C, -2, 2);
        fill(bb, C, -2, 2);
        cpu->add_row(y1, xx, bb, R, C);
        ref->add_row(y2, xx, bb, R, C);
        CHECK_TENSOR_NEAR(y1, y2, R * C, 0, 0);
        cpu->add_row(xx, xx, bb, R, C); /* in place */
        CHECK_TENSOR_NEAR(xx, y2, R * C, 0, 0);
        case_done();
        petrel_free(xx);
        petrel_free(bb);
        petrel_free(y1);
        petrel_free(y2);
    }
}

static void test_sum_rows_acc(void) {
    float dy[6] = {1, 2, 3, 4, 5, 6}, db[3] = {100, 200, 300};
    cpu->sum_rows_acc(db, dy, 2, 3);
    float want[3] = {105, 207, 309};
    CHECK_TENSOR_NEAR(db, want, 3, 0, 0);

    for (size_t s = 0; s < NROW_SIZES; s++) {
        int64_t R = row_sizes[s][0], C = row_sizes[s][1];
        set_case("sum_rows_acc R=%lld C=%lld", (long long)R, (long long)C);
        float *g = falloc(R * C), *d1 = falloc(C);
        fill(g, R * C, -1, 1);
        fill(d1, C, -1, 1);
        float *d2 = dup(d1, C);
        cpu->sum_rows_acc(d1, g, R, C);
        ref->sum_rows_acc(d2, g, R, C);
        CHECK_TENSOR_NEAR(d1, d2, C, 2e-6 * (double)R, 1e-6);
        case_done();
        petrel_free(g);
        petrel_free(d1);
        petrel_free(d2);
    }
}

static void test_axpy(void) {
    float y[3] = {1, 1, 1}, x[3] = {1, 2, 3};
    cpu->axpy(y, -2.0f, x, 3);
    float want[3] = {-1, -3, -5};
    CHECK_TENSOR_NEAR(y, want, 3, 0, 0);
    const int64_t ns[] = {1, 7, 1000, 4099};
    for (size_t s = 0; s < sizeof ns / sizeof ns[0]; s++) {
        int64_t n = ns[s];
        set_case("axpy n=%lld", (long long)n);
        float *xx = falloc(n), *y1 = falloc(n);
        fill(xx, n, -3, 3);
        fill(y1, n, -3, 3);
        float *y2 = dup(y1, n);
        cpu->axpy(y1, 0.37f, xx, n);
        ref->axpy(y2, 0.37f, xx, n);
        CHECK_TENSOR_NEAR(y1, y2, n, 1e-6, 1e-6);
        case_done();
        petrel_free(xx);
        petrel_free(y1);
        petrel_free(y2);
    }
}

/* ---- unary activations ----------------------------------------------------------------- */

static double unary_exact(petrel_unary_op op, double x) {
    switch (op) {
    case PETREL_UNARY_RELU:
        return x > 0 ? x : 0;
    case PETREL_UNARY_TANH:
        return tanh(x);
    case PETREL_UNARY_SIGMOID:
        return 1.0 / (1.0 + exp(-x));
    default:
        return NAN;
    }
}

static double unary_exact_grad(petrel_unary_op op, double x) {
    switch (op) {
    case PETREL_UNARY_RELU:
        return x > 0 ? 1 : 0;
    case PETREL_UNARY_TANH:
        return 1.0 - tanh(x) * tanh(x);
    case PETREL_UNARY_SIGMOID: {
        double s = 1.0 / (1.0 + exp(-x));
        return s * (1.0 - s);
    }
    default:
        return NAN;
    }
}

static const char *const unary_names[] = {"relu", "tanh", "sigmoid"};

static void test_unary(void) {
    const int64_t ns[] = {1, 7, 1000, 4099};
    const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 30.0f, -30.0f, 100.0f, -100.0f, 0.5f};
    for (int op = 0; op < PETREL_UNARY_COUNT; op++)
        for (size_t s = 0; s < sizeof ns / sizeof ns[0]; s++) {
            int64_t n = ns[s];
            set_case("unary %s n=%lld", unary_names[op], (long long)n);
            float *x = falloc(n), *y1 = falloc(n), *y2 = falloc(n), *want = falloc(n);
            fill(x, n, -8, 8);
            for (int64_t i = 0; i < n && i < 9; i++) x[n - 1 - i] = special[i];
            cpu->unary((petrel_unary_op)op, y1, x, n);
            ref->unary((petrel_unary_op)op, y2, x, n);
            for (int64_t i = 0; i < n; i++) want[i] = (float)unary_exact((petrel_unary_op)op, x[i]);
            CHECK_TENSOR_NEAR(y1, want, n, 1e-7, 4e-7);
            CHECK_TENSOR_NEAR(y2, want, n, 1e-7, 4e-7);
            /* y may alias x */
            float *xa = dup(x, n);
            cpu->unary((petrel_unary_op)op, xa, xa, n);
            CHECK_TENSOR_NEAR(xa, y1, n, 0, 0);

            /* backward: dx += dy * f'(x), from y */
            float *dy = falloc(n), *dx1 = falloc(n);
            fill(dy, n, -1, 1);
            fill(dx1, n, -1, 1);
            float *dx2 = dup(dx1, n), *dxw = dup(dx1, n);
            cpu->unary_backward((petrel_unary_op)op, dx1, dy, y1, n);
            ref->unary_backward((petrel_unary_op)op, dx2, dy, y1, n);
            for (int64_t i = 0; i < n; i++)
                dxw[i] += (float)((double)dy[i] * unary_exact_grad((petrel_unary_op)op, x[i]));
            CHECK_TENSOR_NEAR(dx1, dx2, n, 1e-7, 1e-6);
            CHECK_TENSOR_NEAR(dx1, dxw, n, 1e-6, 1e-5);
            case_done();
            petrel_free(x);
            petrel_free(y1);
            petrel_free(y2);
            petrel_free(want);
            petrel_free(xa);
            petrel_free(dy);
            petrel_free(dx1);
            petrel_free(dx2);
            petrel_free(dxw);
        }
}

/* ---- softmax cross-entropy and log-softmax ----------------------------------------------- */

static void test_softmax_xent_hand(void) {
    /* Row 0: logits 1, 2, 3, label 2: loss log(e + e^2 + e^3) - 3 = 0.40760596.
     * Row 1: uniform logits, label 0: loss log 3 = 1.09861229. Mean 0.75310913. */
    float z[6] = {1, 2, 3, 1, 1, 1}, p[6];
    int32_t labels[2] = {2, 0};
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        double loss = sets[s]->softmax_xent(p, z, labels, 2, 3);
        CHECK_NEAR(loss, 0.753109126556245, 1e-6, 0);
        float want_p[6] = {0.0900305732f, 0.244728471f, 0.665240956f, 1.0f / 3, 1.0f / 3, 1.0f / 3};
        CHECK_TENSOR_NEAR(p, want_p, 6, 1e-7, 1e-6);
        float d[6] = {1, 1, 1, 1, 1, 1};
        sets[s]->softmax_xent_backward(d, p, labels, 2, 3, 0.5f);
        float want_d[6] = {1 + 0.5f * 0.0900305732f,
                           1 + 0.5f * 0.244728471f,
                           1 + 0.5f * (0.665240956f - 1),
                           1 + 0.5f * (1.0f / 3 - 1),
                           1 + 0.5f / 3,
                           1 + 0.5f / 3};
        CHECK_TENSOR_NEAR(d, want_d, 6, 1e-7, 1e-6);
    }
    /* One class: probability 1, loss 0. */
    float one = 42.0f, p1 = 0;
    int32_t zero = 0;
    CHECK_NEAR(cpu->softmax_xent(&p1, &one, &zero, 1, 1), 0.0, 1e-7, 0);
    CHECK(p1 == 1.0f);
    CHECK(cpu->softmax_xent(&p1, &one, &zero, 0, 1) == 0.0); /* empty batch */
}

static void test_softmax_xent_large_logits(void) {
    /* Shifting every logit of a row leaves softmax and the loss unchanged. */
    float big[9] = {1000, 999, 998, -1000, -1000, -1001, 1000, 0, -1000};
    float small[9] = {2, 1, 0, 1, 1, 0, 1000, 0, -1000};
    int32_t labels[3] = {1, 2, 1};
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        float pb[9], ps[9];
        double lb = sets[s]->softmax_xent(pb, big, labels, 3, 3);
        double ls = sets[s]->softmax_xent(ps, small, labels, 3, 3);
        CHECK(isfinite(lb));
        CHECK_NEAR(lb, ls, 1e-4, 1e-6);
        CHECK_TENSOR_NEAR(pb, ps, 9, 1e-6, 1e-5);
        /* Row 2: label 1 sits 1000 below the max: loss 1000 (to float precision). */
        int32_t l1[1] = {1};
        float p3[3];
        CHECK_NEAR(sets[s]->softmax_xent(p3, big + 6, l1, 1, 3), 1000.0, 1e-3, 0);
        CHECK(p3[0] == 1.0f && p3[1] == 0.0f && p3[2] == 0.0f);
        int nonfinite = 0;
        for (int i = 0; i < 9; i++) nonfinite += !isfinite(pb[i]);
        CHECK(nonfinite == 0);

        float y[3];
        sets[s]->log_softmax(y, big + 6, 1, 3);
        CHECK_NEAR(y[0], 0.0, 1e-6, 0);
        CHECK_NEAR(y[1], -1000.0, 1e-3, 0);
        CHECK_NEAR(y[2], -2000.0, 1e-3, 0);
    }
}

static const int64_t xent_sizes[][2] = {{1, 1}, {1, 5}, {4, 10}, {33, 17}, {128, 1000}};
#define NXENT_SIZES (sizeof xent_sizes / sizeof xent_sizes[0])

static void test_softmax_xent_random(void) {
    for (size_t s = 0; s < NXENT_SIZES; s++) {
        int64_t B = xent_sizes[s][0], C = xent_sizes[s][1];
        set_case("softmax_xent B=%lld C=%lld", (long long)B, (long long)C);
        float *z = falloc(B * C), *p1 = falloc(B * C), *p2 = falloc(B * C);
        int32_t *labels = petrel_malloc((size_t)B * sizeof *labels);
        fill(z, B * C, -6, 6);
        for (int64_t b = 0; b < B; b++) labels[b] = (int32_t)petrel_rng_below(&rng, (uint64_t)C);
        double l1 = cpu->softmax_xent(p1, z, labels, B, C);
        double l2 = ref->softmax_xent(p2, z, labels, B, C);
        CHECK_NEAR(l1, l2, 1e-5, 1e-5);
        CHECK_TENSOR_NEAR(p1, p2, B * C, 1e-7, 1e-5);

        /* The loss from first principles, in double. */
        double want = 0;
        for (int64_t b = 0; b < B; b++) {
            double sum = 0;
            for (int64_t c = 0; c < C; c++) sum += exp((double)z[b * C + c]);
            want += log(sum) - z[b * C + labels[b]];
            double psum = 0;
            for (int64_t c = 0; c < C; c++) psum += p1[b * C + c];
            CHECK_NEAR(psum, 1.0, 1e-5, 0);
        }
        CHECK_NEAR(l1, want / (double)B, 1e-5, 1e-5);

        float *d1 = falloc(B * C);
        fill(d1, B * C, -1, 1);
        float *d2 = dup(d1, B * C);
        float scale = 1.0f / (float)B;
        cpu->softmax_xent_backward(d1, p1, labels, B, C, scale);
        ref->softmax_xent_backward(d2, p1, labels, B, C, scale);
        CHECK_TENSOR_NEAR(d1, d2, B * C, 1e-7, 1e-6);

        /* log_softmax on the same data: exp(y) is the softmax. */
        float *y1 = falloc(B * C), *y2 = falloc(B * C);
        cpu->log_softmax(y1, z, B, C);
        ref->log_softmax(y2, z, B, C);
        CHECK_TENSOR_NEAR(y1, y2, B * C, 2e-6, 1e-6);
        for (int64_t i = 0; i < B * C; i++) {
            if (!(fabs(exp((double)y1[i]) - p2[i]) <= 1e-6 + 1e-5 * p2[i])) {
                CHECK_NEAR(exp((double)y1[i]), p2[i], 1e-6, 1e-5);
                break;
            }
        }
        case_done();
        petrel_free(z);
        petrel_free(p1);
        petrel_free(p2);
        petrel_free(labels);
        petrel_free(d1);
        petrel_free(d2);
        petrel_free(y1);
        petrel_free(y2);
    }
}

static void test_log_softmax_hand(void) {
    /* log_softmax(1, 2, 3) = (1, 2, 3) - log(e + e^2 + e^3) = (1, 2, 3) - 3.40760596 */
    float x[6] = {1, 2, 3, 0, 0, 0}, y[6];
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        sets[s]->log_softmax(y, x, 2, 3);
        float want[6] = {-2.40760596f, -1.40760596f, -0.40760596f,
                         -1.09861229f, -1.09861229f, -1.09861229f};
        CHECK_TENSOR_NEAR(y, want, 6, 1e-6, 0);
    }
}

/* ---- im2col and col2im ------------------------------------------------------------------- */

static void test_im2col_hand(void) {
    /* x (1, 3, 3) = 1..9. With pad 1: rows of col are (kh, kw), columns output positions. */
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        float col2[36];
        fill_const(col2, 36, NAN);
        sets[s]->im2col(col2, x, 1, 3, 3, 3, 3, 2, 1); /* stride 2: OH = OW = 2 */
        float want2[36] = {0, 0, 0, 5, 0, 0, 4, 6, 0, 0, 5, 0, 0, 2, 0, 8, 1, 3,
                           7, 9, 2, 0, 8, 0, 0, 5, 0, 0, 4, 6, 0, 0, 5, 0, 0, 0};
        CHECK_TENSOR_NEAR(col2, want2, 36, 0, 0);

        float col1[81];
        fill_const(col1, 81, NAN);
        sets[s]->im2col(col1, x, 1, 3, 3, 3, 3, 1, 1); /* stride 1: OH = OW = 3 */
        float row00[9] = {0, 0, 0, 0, 1, 2, 0, 4, 5};  /* kh = 0, kw = 0: up-left neighbour */
        float row12[9] = {2, 3, 0, 5, 6, 0, 8, 9, 0};  /* kh = 1, kw = 2: right neighbour */
        float row21[9] = {4, 5, 6, 7, 8, 9, 0, 0, 0};  /* kh = 2, kw = 1: neighbour below */
        CHECK_TENSOR_NEAR(col1 + 0 * 9, row00, 9, 0, 0);
        CHECK_TENSOR_NEAR(col1 + 4 * 9, x, 9, 0, 0); /* the centre tap is x itself */
        CHECK_TENSOR_NEAR(col1 + 5 * 9, row12, 9, 0, 0);
        CHECK_TENSOR_NEAR(col1 + 7 * 9, row21, 9, 0, 0);

        /* col2im of ones counts the windows that cover each pixel. */
        float ones[81], dx[9];
        fill_const(ones, 81, 1.0f);
        fill_const(dx, 9, 0.5f);
        sets[s]->col2im(dx, ones, 1, 3, 3, 3, 3, 1, 1);
        float counts[9] = {4.5f, 6.5f, 4.5f, 6.5f, 9.5f, 6.5f, 4.5f, 6.5f, 4.5f};
        CHECK_TENSOR_NEAR(dx, counts, 9, 0, 0);
        fill_const(dx, 9, 0.0f);
        sets[s]->col2im(dx, ones, 1, 3, 3, 3, 3, 2, 1);
        float counts2[9] = {1, 2, 1, 2, 4, 2, 1, 2, 1};
        CHECK_TENSOR_NEAR(dx, counts2, 9, 0, 0);
    }
}

typedef struct conv_case {
    int64_t Cin, H, W, KH, KW, stride, pad;
} conv_case;

static const conv_case conv_cases[] = {
    {1, 3, 3, 3, 3, 1, 1}, {1, 3, 3, 3, 3, 2, 1},   {2, 5, 5, 3, 3, 1, 0},  {3, 7, 6, 3, 2, 2, 1},
    {2, 8, 8, 5, 5, 3, 2}, {1, 4, 4, 1, 1, 1, 0},   {2, 5, 7, 2, 2, 2, 0},  {1, 3, 3, 1, 1, 1, 2},
    {3, 6, 6, 3, 3, 2, 2}, {1, 1, 1, 1, 1, 1, 0},   {4, 9, 11, 3, 3, 1, 1}, {2, 6, 5, 4, 4, 4, 3},
    {1, 7, 7, 2, 2, 3, 0}, {3, 16, 16, 3, 3, 1, 1}, {1, 2, 9, 2, 3, 1, 1},
};

static void test_im2col_col2im_random(void) {
    for (size_t s = 0; s < sizeof conv_cases / sizeof conv_cases[0]; s++) {
        conv_case c = conv_cases[s];
        set_case("im2col Cin=%lld H=%lld W=%lld K=%lldx%lld stride=%lld pad=%lld", (long long)c.Cin,
                 (long long)c.H, (long long)c.W, (long long)c.KH, (long long)c.KW,
                 (long long)c.stride, (long long)c.pad);
        int64_t OH = (c.H + 2 * c.pad - c.KH) / c.stride + 1;
        int64_t OW = (c.W + 2 * c.pad - c.KW) / c.stride + 1;
        int64_t nx = c.Cin * c.H * c.W, ncol = c.Cin * c.KH * c.KW * OH * OW;
        float *x = falloc(nx), *col1 = falloc(ncol), *col2 = falloc(ncol);
        fill(x, nx, -1, 1);
        fill_const(col1, ncol, NAN); /* every entry must be written */
        fill_const(col2, ncol, NAN);
        cpu->im2col(col1, x, c.Cin, c.H, c.W, c.KH, c.KW, c.stride, c.pad);
        ref->im2col(col2, x, c.Cin, c.H, c.W, c.KH, c.KW, c.stride, c.pad);
        CHECK_TENSOR_NEAR(col1, col2, ncol, 0, 0);

        /* col2im is the adjoint of im2col: <im2col(x), g> = <x, col2im(g)>. */
        float *g = falloc(ncol), *dx1 = falloc(nx), *dx0 = falloc(nx);
        fill(g, ncol, -1, 1);
        fill(dx0, nx, -1, 1);
        float *dx2 = dup(dx0, nx);
        memcpy(dx1, dx0, (size_t)nx * sizeof(float));
        cpu->col2im(dx1, g, c.Cin, c.H, c.W, c.KH, c.KW, c.stride, c.pad);
        ref->col2im(dx2, g, c.Cin, c.H, c.W, c.KH, c.KW, c.stride, c.pad);
        CHECK_TENSOR_NEAR(dx1, dx2, nx, 1e-6, 1e-6);
        double lhs = 0, rhs = 0;
        for (int64_t i = 0; i < ncol; i++) lhs += (double)col1[i] * g[i];
        for (int64_t i = 0; i < nx; i++) rhs += (double)x[i] * ((double)dx1[i] - dx0[i]);
        CHECK_NEAR(rhs, lhs, 1e-4, 1e-5);
        case_done();
        petrel_free(x);
        petrel_free(col1);
        petrel_free(col2);
        petrel_free(g);
        petrel_free(dx0);
        petrel_free(dx1);
        petrel_free(dx2);
    }
}

/* ---- max pooling ------------------------------------------------------------------------- */

static void test_maxpool_hand(void) {
    /* One 4x4 plane, 2x2 windows with stride 2. */
    float x[16] = {1, 5, 2, 0, 3, 4, 9, 8, 7, 6, 1, 1, 0, 8, 2, 3};
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        float y[4];
        int32_t am[4];
        sets[s]->maxpool2d(y, am, x, 1, 1, 4, 4, 2, 2);
        float want_y[4] = {5, 9, 8, 3};
        CHECK_TENSOR_NEAR(y, want_y, 4, 0, 0);
        CHECK(am[0] == 1 && am[1] == 6 && am[2] == 13 && am[3] == 15);
        float dy[4] = {1, 2, 3, 4}, dx[16];
        fill_const(dx, 16, 0.0f);
        sets[s]->maxpool2d_backward(dx, dy, am, 1, 1, 4, 4, 2, 2);
        float want_dx[16] = {0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 3, 0, 4};
        CHECK_TENSOR_NEAR(dx, want_dx, 16, 0, 0);

        /* 3x3 windows with stride 1 over 5x5 with its maximum in the centre: all nine
         * windows pick it, so its gradient is the sum of dy. */
        float p[25];
        for (int i = 0; i < 25; i++) p[i] = (float)(i % 7) - 10.0f;
        p[12] = 50.0f;
        float y9[9], g9[9], d25[25];
        int32_t a9[9];
        sets[s]->maxpool2d(y9, a9, p, 1, 1, 5, 5, 3, 1);
        int at_centre = 0;
        for (int i = 0; i < 9; i++) {
            at_centre += a9[i] == 12;
            g9[i] = (float)(i + 1);
        }
        CHECK(at_centre == 9);
        fill_const(d25, 25, 1.0f);
        sets[s]->maxpool2d_backward(d25, g9, a9, 1, 1, 5, 5, 3, 1);
        CHECK(d25[12] == 46.0f); /* 1 + (1 + ... + 9) */
        CHECK(d25[0] == 1.0f && d25[24] == 1.0f);

        /* Ties pick the first position in the window. */
        float flat[16];
        fill_const(flat, 16, 2.0f);
        sets[s]->maxpool2d(y, am, flat, 1, 1, 4, 4, 2, 2);
        CHECK(am[0] == 0 && am[1] == 2 && am[2] == 8 && am[3] == 10);
    }
}

typedef struct pool_case {
    int64_t N, C, H, W, K, S;
} pool_case;

static const pool_case pool_cases[] = {
    {1, 1, 4, 4, 2, 2}, {2, 3, 5, 5, 3, 1}, {2, 2, 7, 7, 3, 2},   {1, 1, 1, 1, 1, 1},
    {3, 4, 9, 6, 2, 3}, {1, 2, 5, 4, 2, 1}, {4, 8, 28, 28, 2, 2}, {2, 3, 6, 9, 4, 2},
};

static void test_maxpool_random(void) {
    for (size_t s = 0; s < sizeof pool_cases / sizeof pool_cases[0]; s++) {
        pool_case c = pool_cases[s];
        set_case("maxpool N=%lld C=%lld H=%lld W=%lld K=%lld S=%lld", (long long)c.N,
                 (long long)c.C, (long long)c.H, (long long)c.W, (long long)c.K, (long long)c.S);
        int64_t OH = (c.H - c.K) / c.S + 1, OW = (c.W - c.K) / c.S + 1;
        int64_t nx = c.N * c.C * c.H * c.W, ny = c.N * c.C * OH * OW;
        float *x = falloc(nx), *y1 = falloc(ny), *y2 = falloc(ny), *dy = falloc(ny);
        int32_t *a1 = petrel_malloc((size_t)ny * sizeof *a1);
        int32_t *a2 = petrel_malloc((size_t)ny * sizeof *a2);
        fill(x, nx, -5, 5);
        fill(dy, ny, -1, 1);
        cpu->maxpool2d(y1, a1, x, c.N, c.C, c.H, c.W, c.K, c.S);
        ref->maxpool2d(y2, a2, x, c.N, c.C, c.H, c.W, c.K, c.S);
        CHECK_TENSOR_NEAR(y1, y2, ny, 0, 0);
        int64_t argmax_diff = 0, wrong = 0;
        for (int64_t i = 0; i < ny; i++) {
            argmax_diff += a1[i] != a2[i];
            /* The argmax lies in its own window and holds the output value. */
            int64_t plane = i / (OH * OW), o = i % (OH * OW), oh = o / OW, ow = o % OW;
            int64_t h = a1[i] / c.W, w = a1[i] % c.W;
            wrong += h < oh * c.S || h >= oh * c.S + c.K || w < ow * c.S || w >= ow * c.S + c.K;
            wrong += x[plane * c.H * c.W + a1[i]] != y1[i];
        }
        CHECK(argmax_diff == 0);
        CHECK(wrong == 0);

        float *dx1 = falloc(nx);
        fill(dx1, nx, -1, 1);
        float *dx2 = dup(dx1, nx);
        cpu->maxpool2d_backward(dx1, dy, a1, c.N, c.C, c.H, c.W, c.K, c.S);
        ref->maxpool2d_backward(dx2, dy, a1, c.N, c.C, c.H, c.W, c.K, c.S);
        CHECK_TENSOR_NEAR(dx1, dx2, nx, 1e-7, 1e-6);
        case_done();
        petrel_free(x);
        petrel_free(y1);
        petrel_free(y2);
        petrel_free(dy);
        petrel_free(a1);
        petrel_free(a2);
        petrel_free(dx1);
        petrel_free(dx2);
    }
}

/* ---- sparse x dense ------------------------------------------------------------------------ */

static void test_csr_hand(void) {
    /* A (3, 4) = [[1, 0, 2, 0], [0, 0, 0, 0], [0, -3, 0, 4]], x (4, 2) = [[1, 2], [3, 4],
     * [5, 6], [7, 8]]: A x = [[11, 14], [0, 0], [19, 20]]. */
    petrel_csr A;
    CHECK_OK(petrel_csr_init(&A, 3, 4, 4));
    CHECK(A.rows == 3 && A.cols == 4 && A.nnz == 4);
    CHECK(A.row_ptr[0] == 0 && A.row_ptr[3] == 0); /* zeroed */
    const int64_t rp[4] = {0, 2, 2, 4};
    const int32_t cl[4] = {0, 2, 1, 3};
    const float vl[4] = {1, 2, -3, 4};
    memcpy(A.row_ptr, rp, sizeof rp);
    memcpy(A.col, cl, sizeof cl);
    memcpy(A.val, vl, sizeof vl);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const petrel_kernels *sets[2] = {cpu, ref};
    for (int s = 0; s < 2; s++) {
        float y[6];
        fill_const(y, 6, NAN); /* beta = 0 must not read y */
        sets[s]->csr_mm(y, &A, x, 2, 2.0f, 0.0f);
        float want[6] = {22, 28, 0, 0, 38, 40};
        CHECK_TENSOR_NEAR(y, want, 6, 0, 0);
        float yb[6] = {1, 2, 3, 4, 5, 6};
        sets[s]->csr_mm(yb, &A, x, 2, 1.0f, 0.5f);
        float want_b[6] = {11.5f, 15, 1.5f, 2, 21.5f, 23};
        CHECK_TENSOR_NEAR(yb, want_b, 6, 1e-6, 0);
        float y1[6] = {1, 2, 3, 4, 5, 6};
        sets[s]->csr_mm(y1, &A, x, 2, -1.0f, 1.0f);
        float want_1[6] = {-10, -12, 3, 4, -14, -14};
        CHECK_TENSOR_NEAR(y1, want_1, 6, 1e-6, 0);

        /* dx (4, 2) += A^T dy, dy (3, 2) = [[1, 1], [2, 2], [3, 3]] */
        float dy[6] = {1, 1, 2, 2, 3, 3}, dx[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        sets[s]->csr_mm_t_acc(dx, &A, dy, 2, 1.0f);
        float want_dx[8] = {2, 2, -8, -8, 3, 3, 13, 13};
        CHECK_TENSOR_NEAR(dx, want_dx, 8, 0, 0);
    }
    petrel_csr_fini(&A);
    CHECK(A.row_ptr == NULL && A.col == NULL && A.val == NULL);
    petrel_csr_fini(NULL);
}

/* A random (R, K) CSR with about density * K entries per row and some empty rows,
 * and its dense copy. */
static void random_csr(petrel_csr *A, float *dense, int64_t R, int64_t K, float density) {
    int64_t nnz = 0;
    memset(dense, 0, (size_t)(R * K) * sizeof(float));
    for (int64_t r = 0; r < R; r++) {
        if (r % 5 == 3) continue; /* an empty row */
        for (int64_t k = 0; k < K; k++)
            if (petrel_rng_uniform(&rng) < density) {
                dense[r * K + k] = 2.0f * petrel_rng_uniform(&rng) - 1.0f;
                nnz++;
            }
    }
    PETREL_ASSERT(petrel_csr_init(A, R, K, nnz) == PETREL_OK, "csr allocation failed");
    int64_t e = 0;
    for (int64_t r = 0; r < R; r++) {
        A->row_ptr[r] = e;
        for (int64_t k = 0; k < K; k++)
            if (dense[r * K + k] != 0.0f) {
                A->col[e] = (int32_t)k;
                A->val[e++] = dense[r * K + k];
            }
    }
    A->row_ptr[R] = e;
}

static void test_csr_random(void) {
    const int64_t sizes[][3] = {{50, 40, 13}, {1, 7, 1}, {64, 300, 32}, {9, 1, 5}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t R = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
        set_case("csr R=%lld K=%lld N=%lld", (long long)R, (long long)K, (long long)N);
        float *dense = falloc(R * K), *x = falloc(K * N), *dy = falloc(R * N);
        petrel_csr A;
        random_csr(&A, dense, R, K, 0.1f);
        fill(x, K * N, -1, 1);
        fill(dy, R * N, -1, 1);
        float *y1 = falloc(R * N);
        fill(y1, R * N, -1, 1);
        float *y2 = dup(y1, R * N), *yd = dup(y1, R * N);
        cpu->csr_mm(y1, &A, x, N, 0.75f, 0.5f);
        ref->csr_mm(y2, &A, x, N, 0.75f, 0.5f);
        ref->gemm(false, false, R, N, K, 0.75f, dense, K, x, N, 0.5f, yd, N);
        CHECK_TENSOR_NEAR(y1, y2, R * N, 1e-6, 1e-5);
        CHECK_TENSOR_NEAR(y1, yd, R * N, 1e-6, 1e-5);

        float *dx1 = falloc(K * N);
        fill(dx1, K * N, -1, 1);
        float *dx2 = dup(dx1, K * N), *dxd = dup(dx1, K * N);
        cpu->csr_mm_t_acc(dx1, &A, dy, N, -1.5f);
        ref->csr_mm_t_acc(dx2, &A, dy, N, -1.5f);
        ref->gemm(true, false, K, N, R, -1.5f, dense, K, dy, N, 1.0f, dxd, N);
        CHECK_TENSOR_NEAR(dx1, dx2, K * N, 1e-6, 1e-5);
        CHECK_TENSOR_NEAR(dx1, dxd, K * N, 1e-5, 1e-5);
        case_done();
        petrel_csr_fini(&A);
        petrel_free(dense);
        petrel_free(x);
        petrel_free(dy);
        petrel_free(y1);
        petrel_free(y2);
        petrel_free(yd);
        petrel_free(dx1);
        petrel_free(dx2);
        petrel_free(dxd);
    }
}

/* Each test reports its first failing case once. */
#define RUN_CASES(fn)                                                                              \
    do {                                                                                           \
        case_reported = 0;                                                                         \
        RUN_SEEDED(fn, seed);                                                                      \
    } while (0)

int main(void) {
    seed = check_seed(seed);
    petrel_rng_seed(&rng, seed);
    cpu = petrel_kernels_cpu();
    ref = petrel_kernels_reference();
    petrel_alloc_stats before = petrel_alloc_get_stats();

    RUN(test_kernel_sets);
    RUN_CASES(test_gemm_smoke);
    RUN_CASES(test_add_row);
    RUN_CASES(test_sum_rows_acc);
    RUN_CASES(test_axpy);
    RUN_CASES(test_unary);
    RUN(test_softmax_xent_hand);
    RUN(test_softmax_xent_large_logits);
    RUN_CASES(test_softmax_xent_random);
    RUN(test_log_softmax_hand);
    RUN(test_im2col_hand);
    RUN_CASES(test_im2col_col2im_random);
    RUN(test_maxpool_hand);
    RUN_CASES(test_maxpool_random);
    RUN(test_csr_hand);
    RUN_CASES(test_csr_random);

    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
