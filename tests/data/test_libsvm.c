/* libsvm reader: exact CSR and label mapping, every error naming path:line,
 * very long lines, gzip, the train-mapped variant, and allocation failures. */
#include "fixtures.h"

/* Line numbers matter: the errors below name them. */
static const char small_svm[] = "# comment line, then a blank line\n"  /* 1 */
                                "\n"                                   /* 2 */
                                "+1 1:0.5 3:-2   # trailing comment\n" /* 3 */
                                "-1\t2:1e-1 4:3\r\n"                   /* 4 */
                                "+1\n"                                 /* 5 */
                                "   \n"                                /* 6 */
                                "3 1:1 2:2 3:3 4:4 7:7.5\n"            /* 7 */
                                "1.5e0 5:0.25";                        /* 8, no trailing newline */

static void check_small(const petrel_dataset *d, int64_t want_dim) {
    CHECK(d->n == 5);
    CHECK(d->dim == want_dim);
    CHECK(d->x == NULL);
    CHECK(petrel_dataset_is_sparse(d));
    CHECK(d->channels == 0 && d->height == 0 && d->width == 0);
    const petrel_csr *m = &d->sparse;
    CHECK(m->rows == 5 && m->cols == want_dim && m->nnz == 10);
    static const int64_t row_ptr[6] = {0, 2, 4, 4, 9, 10};
    static const int32_t col[10] = {0, 2, 1, 3, 0, 1, 2, 3, 6, 4};
    static const float val[10] = {0.5f, -2, 0.1f, 3, 1, 2, 3, 4, 7.5f, 0.25f};
    for (int i = 0; i < 6; i++) CHECK(m->row_ptr[i] == row_ptr[i]);
    for (int i = 0; i < 10; i++) CHECK(m->col[i] == col[i]);
    CHECK_TENSOR_NEAR(m->val, val, 10, 0, 0);
    /* Classes by ascending value: -1 -> 0, +1 -> 1, 1.5 -> 2, 3 -> 3. */
    CHECK(d->num_classes == 4);
    static const double values[4] = {-1, 1, 1.5, 3};
    for (int c = 0; c < 4; c++) CHECK(d->label_values[c] == values[c]);
    static const int32_t y[5] = {1, 0, 1, 3, 2};
    for (int i = 0; i < 5; i++) CHECK(d->y[i] == y[i]);
}

static void test_small_file(void) {
    const char *p = fx_write_str("small.svm", small_svm);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, p, 0));
    if (d) check_small(d, 7);
    petrel_dataset_free(d);

    /* dim_hint widens, never narrows. */
    d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, p, 10));
    if (d) check_small(d, 10);
    petrel_dataset_free(d);
    d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, p, 3));
    if (d) check_small(d, 7);
    petrel_dataset_free(d);
}

static void test_gzip(void) {
    const char *p = fx_write_gz("small.svm.gz", small_svm, strlen(small_svm));
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, p, 0));
    if (d) check_small(d, 7);
    petrel_dataset_free(d);
}

/* Loads text and expects a format error whose message holds each of want[]. */
static void expect_error(const char *name, const char *text, petrel_err code, const char *where,
                         const char *what) {
    const char *p = fx_write_str(name, text);
    char want[512];
    snprintf(want, sizeof want, "%s:%s", p, where);
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_libsvm(&d, p, 0), code);
    CHECK(d == NULL);
    CHECK_MSG(want);
    CHECK_MSG(what);
}

static void test_errors(void) {
    expect_error("e1.svm", "+1 1:1\n-1 2:1\n+1 0:1.5 3:1\n", PETREL_ERR_FORMAT,
                 "3:", "index 0 in '0:1.5'");
    expect_error("e2.svm", "+1 1:1\n\n-1 5:1 3:1\n", PETREL_ERR_FORMAT,
                 "3:", "index 3 after index 5: indices must be strictly increasing");
    expect_error("e3.svm", "+1 1:1 1:2\n", PETREL_ERR_FORMAT, "1:", "strictly increasing");
    expect_error("e4.svm", "# c\n+1 1:1\n-1 2:abc\n", PETREL_ERR_FORMAT,
                 "3:", "expected a finite float after '2:', found 'abc'");
    expect_error("e5.svm", "+1 1:1\n-1 5\n", PETREL_ERR_FORMAT,
                 "2:", "expected 'index:value' after label, found '5'");
    expect_error("e6.svm", "+1 1:1 abc\n", PETREL_ERR_FORMAT,
                 "1:", "expected 'index:value' after '1:1', found 'abc'");
    expect_error("e7.svm", "+1 1:1\nabc 1:1\n", PETREL_ERR_FORMAT,
                 "2:", "expected a finite numeric label, found 'abc'");
    expect_error("e8.svm", "+1 -3:1\n", PETREL_ERR_FORMAT,
                 "1:", "expected a positive integer index before ':', found '-3:1'");
    expect_error("e9.svm", "+1 1:\n", PETREL_ERR_FORMAT, "1:", "found ''");
    expect_error("e10.svm", "+1 1:nan\n", PETREL_ERR_FORMAT, "1:", "found 'nan'");
    expect_error("e11.svm", "+1 1:1e39\n", PETREL_ERR_FORMAT, "1:", "found '1e39'");
    expect_error("e12.svm", "+1 1:1\n+1 99999999999:1\n", PETREL_ERR_FORMAT,
                 "2:", "above the limit");
    expect_error("e13.svm", "inf 1:1\n", PETREL_ERR_FORMAT, "1:", "numeric label");
    expect_error("e14.svm", "+1 1:1 2:3x\n", PETREL_ERR_FORMAT, "1:", "found '3x'");
    expect_error("e15.svm",
                 "+1 1:1\n+1 1:1 2:2 10:12345678901234567890123456789012345678901234567890x\n",
                 PETREL_ERR_FORMAT,
                 "2:", "found '1234567890123456789012345678901234567890...'"); /* cut quote */

    /* A NUL byte: binary data handed to the text reader. */
    const char bin[] = "+1 1:1\n+1 2\0:1\n";
    const char *p = fx_write("bin.svm", bin, sizeof bin - 1);
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_libsvm(&d, p, 0), PETREL_ERR_FORMAT);
    CHECK_MSG(":2:");
    CHECK_MSG("NUL");

    /* Nothing but comments. */
    p = fx_write_str("empty.svm", "# nothing\n\n");
    CHECK_ERR(petrel_dataset_load_libsvm(&d, p, 0), PETREL_ERR_FORMAT);
    CHECK_MSG(p);
    CHECK_MSG("no samples");
    p = fx_write_str("empty2.svm", "");
    CHECK_ERR(petrel_dataset_load_libsvm(&d, p, 0), PETREL_ERR_FORMAT);

    CHECK_ERR(petrel_dataset_load_libsvm(&d, fx_path("missing.svm"), 0), PETREL_ERR_IO);
    CHECK_MSG("missing.svm: cannot open");
    CHECK_ERR(petrel_dataset_load_libsvm(&d, p, -1), PETREL_ERR_INVALID);
    CHECK(d == NULL);
}

/* A line of 300000 entries (about 3.5 MB, many times the 64 KiB first buffer),
 * then a short one without a newline. */
static void test_long_line(void) {
    const int k = 300000;
    size_t cap = (size_t)k * 24 + 64, n = 0;
    char *text = malloc(cap);
    n += (size_t)sprintf(text + n, "-1");
    for (int i = 1; i <= k; i++) n += (size_t)sprintf(text + n, " %d:%d.5", i, i % 1000);
    n += (size_t)sprintf(text + n, "\n+1 %d:2", k + 5);
    const char *p = fx_write("long.svm", text, n);
    free(text);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, p, 0));
    if (!d) return;
    CHECK(d->n == 2);
    CHECK(d->dim == k + 5);
    CHECK(d->sparse.nnz == k + 1);
    CHECK(d->sparse.row_ptr[1] == k);
    bool ok = true;
    for (int i = 0; i < k; i++)
        ok = ok && d->sparse.col[i] == i && d->sparse.val[i] == (float)((i + 1) % 1000) + 0.5f;
    CHECK(ok);
    CHECK(d->sparse.col[k] == k + 4 && d->sparse.val[k] == 2.0f);
    CHECK(d->y[0] == 0 && d->y[1] == 1);
    petrel_dataset_free(d);
}

static void test_like_train(void) {
    const char *tp = fx_write_str("train.svm", "+1 1:1\n-1 2:1\n+1 3:1\n");
    const char *sp = fx_write_str("test.svm", "+1 1:2 6:1\n");   /* only +1 */
    const char *bp = fx_write_str("bad.svm", "-1 1:1\n2 1:1\n"); /* 2 unseen */
    petrel_dataset *train = NULL, *test = NULL, *alone = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&train, tp, 0));
    if (!train) return;
    /* Alone, the test file's only label would be class 0; like train it is 1. */
    CHECK_OK(petrel_dataset_load_libsvm(&alone, sp, 0));
    CHECK_OK(petrel_dataset_load_libsvm_like(&test, sp, train));
    if (alone) CHECK(alone->y[0] == 0 && alone->num_classes == 1);
    if (test) {
        CHECK(test->y[0] == 1);
        CHECK(test->num_classes == 2);
        CHECK(test->label_values[0] == -1 && test->label_values[1] == 1);
        CHECK(test->label_values != train->label_values);
        CHECK(test->dim == 6);
    }
    petrel_dataset *bad = NULL;
    CHECK_ERR(petrel_dataset_load_libsvm_like(&bad, bp, train), PETREL_ERR_FORMAT);
    CHECK(bad == NULL);
    char want[512];
    snprintf(want, sizeof want, "%s:2: label '2'", bp);
    CHECK_MSG(want);

    /* A training set with IDX-style classes (no label_values): labels must be the
     * class numbers themselves. */
    petrel_dataset idx_like = {.n = 1, .dim = 4, .num_classes = 10};
    petrel_dataset *t2 = NULL;
    const char *ip = fx_write_str("digits.svm", "7 1:1\n0 4:1\n9 2:1\n");
    CHECK_OK(petrel_dataset_load_libsvm_like(&t2, ip, &idx_like));
    if (t2) {
        CHECK(t2->y[0] == 7 && t2->y[1] == 0 && t2->y[2] == 9);
        CHECK(t2->num_classes == 10 && t2->label_values == NULL);
        CHECK(t2->dim == 4);
    }
    ip = fx_write_str("digits-bad.svm", "7 1:1\n10 4:1\n");
    CHECK_ERR(petrel_dataset_load_libsvm_like(&bad, ip, &idx_like), PETREL_ERR_FORMAT);
    CHECK_MSG(":2: label '10'");
    ip = fx_write_str("digits-bad2.svm", "7.5 1:1\n");
    CHECK_ERR(petrel_dataset_load_libsvm_like(&bad, ip, &idx_like), PETREL_ERR_FORMAT);
    petrel_dataset_free(t2);
    petrel_dataset_free(alone);
    petrel_dataset_free(test);
    petrel_dataset_free(train);
}

static void test_to_dense_and_back(void) {
    const char *p = fx_write_str("conv.svm", small_svm);
    petrel_dataset *s = NULL, *dense = NULL, *back = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&s, p, 0));
    if (!s) return;
    CHECK_OK(petrel_dataset_to_dense(&dense, s));
    if (dense) {
        CHECK(dense->x != NULL && dense->n == 5 && dense->dim == 7);
        static const float want[35] = {0.5f, 0,    -2, 0, 0,     0, 0,    /* row 0 */
                                       0,    0.1f, 0,  3, 0,     0, 0,    /* row 1 */
                                       0,    0,    0,  0, 0,     0, 0,    /* row 2 */
                                       1,    2,    3,  4, 0,     0, 7.5f, /* row 3 */
                                       0,    0,    0,  0, 0.25f, 0, 0};   /* row 4 */
        CHECK_TENSOR_NEAR(dense->x, want, 35, 0, 0);
        for (int i = 0; i < 5; i++) CHECK(dense->y[i] == s->y[i]);
        CHECK(dense->num_classes == 4 && dense->label_values[2] == 1.5);
        CHECK_OK(petrel_dataset_to_sparse(&back, dense));
    }
    if (back) {
        CHECK(back->x == NULL && back->sparse.nnz == s->sparse.nnz);
        for (int i = 0; i < 6; i++) CHECK(back->sparse.row_ptr[i] == s->sparse.row_ptr[i]);
        for (int i = 0; i < 10; i++)
            CHECK(back->sparse.col[i] == s->sparse.col[i] &&
                  back->sparse.val[i] == s->sparse.val[i]);
    }
    /* 2^20 x 2^20 floats is 4 TiB: refused before anything is allocated. */
    petrel_dataset huge = {.n = 1 << 20, .dim = 1 << 20};
    uint64_t calls = petrel_alloc_get_stats().calls;
    petrel_dataset *h = NULL;
    CHECK_ERR(petrel_dataset_to_dense(&h, &huge), PETREL_ERR_INVALID);
    CHECK(h == NULL);
    CHECK_MSG("4 GiB");
    CHECK(petrel_alloc_get_stats().calls == calls);
    petrel_dataset_free(back);
    petrel_dataset_free(dense);
    petrel_dataset_free(s);
}

/* Every allocation of a load fails in turn: always PETREL_ERR_NOMEM, nothing
 * leaked, and the load succeeds once enough are allowed. */
static void alloc_failures(const char *p, bool like, const petrel_dataset *train) {
    uint64_t base = petrel_alloc_get_stats().live_bytes;
    int k;
    for (k = 0; k < 10000; k++) {
        petrel_dataset *d = NULL;
        petrel_alloc_fail_after(k);
        petrel_err err = like ? petrel_dataset_load_libsvm_like(&d, p, train)
                              : petrel_dataset_load_libsvm(&d, p, 0);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            check_small(d, 7);
            petrel_dataset_free(d);
            break;
        }
        if (err != PETREL_ERR_NOMEM) {
            printf("  # k = %d: %s\n", k, petrel_errmsg());
            CHECK_ERR(err, PETREL_ERR_NOMEM);
            break;
        }
        CHECK(d == NULL);
        CHECK(petrel_alloc_get_stats().live_bytes == base);
    }
    CHECK(k >= 5);
    CHECK(k < 10000);
}

static void test_alloc_failures(void) {
    alloc_failures(fx_write_str("af.svm", small_svm), false, NULL);
    alloc_failures(fx_write_gz("af.svm.gz", small_svm, strlen(small_svm)), false, NULL);
    petrel_dataset *train = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&train, fx_path("af.svm"), 0));
    if (train) alloc_failures(fx_path("af.svm"), true, train);
    petrel_dataset_free(train);
}

int main(void) {
    fx_init();
    RUN(test_small_file);
    RUN(test_gzip);
    RUN(test_errors);
    RUN(test_long_line);
    RUN(test_like_train);
    RUN(test_to_dense_and_back);
    RUN(test_alloc_failures);
    RUN(test_nothing_leaked);
    fx_cleanup();
    return CHECK_DONE();
}
