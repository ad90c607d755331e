/*
 * Tests of tensor descriptors: contiguous views and their strides, slices,
 * transposes, contiguity, element addressing, strided copies and shape strings.
 */
#include "check.h"

/* buf[i] = i for a tensor of up to 120 elements. */
static void iota(float *buf, int n) {
    for (int i = 0; i < n; i++) buf[i] = (float)i;
}

static void test_view_strides(void) {
    float buf[120];
    petrel_tensor t4 = petrel_tensor_view(buf, 4, (int64_t[]){2, 3, 4, 5});
    CHECK(t4.data == buf && t4.ndim == 4);
    CHECK(t4.ne[0] == 2 && t4.ne[1] == 3 && t4.ne[2] == 4 && t4.ne[3] == 5);
    CHECK(t4.nb[3] == 4 && t4.nb[2] == 20 && t4.nb[1] == 80 && t4.nb[0] == 240);
    CHECK(petrel_tensor_numel(&t4) == 120);
    CHECK(petrel_tensor_is_contiguous(&t4));
    CHECK(t4.grad == NULL && t4.node == NULL && !t4.requires_grad);

    petrel_tensor t2 = petrel_tensor_view(buf, 2, (int64_t[]){6, 7});
    CHECK(t2.ndim == 2 && t2.ne[0] == 6 && t2.ne[1] == 7);
    CHECK(t2.ne[2] == 1 && t2.ne[3] == 1); /* unused dimensions have size 1 */
    CHECK(t2.nb[1] == 4 && t2.nb[0] == 28);
    CHECK(petrel_tensor_numel(&t2) == 42);

    petrel_tensor t1 = petrel_tensor_view(buf, 1, (int64_t[]){9});
    CHECK(t1.ndim == 1 && t1.ne[0] == 9 && t1.nb[0] == 4);
    CHECK(petrel_tensor_numel(&t1) == 9);

    petrel_tensor empty = petrel_tensor_view(buf, 2, (int64_t[]){0, 5});
    CHECK(petrel_tensor_numel(&empty) == 0);
}

static void test_same_shape(void) {
    float buf[24];
    petrel_tensor a = petrel_tensor_view(buf, 2, (int64_t[]){4, 6});
    petrel_tensor b = petrel_tensor_view(buf, 2, (int64_t[]){4, 6});
    petrel_tensor c = petrel_tensor_view(buf, 2, (int64_t[]){6, 4});
    petrel_tensor d = petrel_tensor_view(buf, 3, (int64_t[]){4, 6, 1});
    petrel_tensor e = petrel_tensor_view(buf, 1, (int64_t[]){24});
    CHECK(petrel_tensor_same_shape(&a, &b));
    CHECK(!petrel_tensor_same_shape(&a, &c));
    CHECK(!petrel_tensor_same_shape(&a, &d)); /* same numel, different ndim */
    CHECK(!petrel_tensor_same_shape(&a, &e));
    petrel_tensor at = petrel_tensor_transpose(&c, 0, 1); /* strided, shape (4, 6) */
    CHECK(petrel_tensor_same_shape(&a, &at));
}

static void test_at(void) {
    float buf[120];
    iota(buf, 120);
    petrel_tensor t = petrel_tensor_view(buf, 4, (int64_t[]){2, 3, 4, 5});
    for (int64_t a = 0; a < 2; a++)
        for (int64_t b = 0; b < 3; b++)
            for (int64_t c = 0; c < 4; c++)
                for (int64_t d = 0; d < 5; d++) {
                    float *p = petrel_tensor_at(&t, (int64_t[]){a, b, c, d});
                    CHECK(p == buf + ((a * 3 + b) * 4 + c) * 5 + d);
                }
    petrel_tensor m = petrel_tensor_view(buf, 2, (int64_t[]){10, 12});
    CHECK(*petrel_tensor_at(&m, (int64_t[]){7, 5}) == 89.0f);
    *petrel_tensor_at(&m, (int64_t[]){9, 11}) = -1.0f;
    CHECK(buf[119] == -1.0f);
}

static void test_slice(void) {
    float buf[12];
    iota(buf, 12);
    petrel_tensor t = petrel_tensor_view(buf, 2, (int64_t[]){3, 4});
    t.requires_grad = true;

    /* Rows 1..2: a contiguous block starting at element 4. */
    petrel_tensor rows = petrel_tensor_slice(&t, 0, 1, 2);
    CHECK(rows.data == buf + 4);
    CHECK(rows.ne[0] == 2 && rows.ne[1] == 4 && rows.nb[0] == 16 && rows.nb[1] == 4);
    CHECK(petrel_tensor_is_contiguous(&rows));
    CHECK(*petrel_tensor_at(&rows, (int64_t[]){1, 3}) == 11.0f);
    CHECK(!rows.requires_grad && rows.grad == NULL && rows.node == NULL);

    /* Columns 1..2: strided rows. */
    petrel_tensor cols = petrel_tensor_slice(&t, 1, 1, 2);
    CHECK(cols.data == buf + 1);
    CHECK(cols.ne[0] == 3 && cols.ne[1] == 2 && cols.nb[0] == 16 && cols.nb[1] == 4);
    CHECK(!petrel_tensor_is_contiguous(&cols));
    CHECK(petrel_tensor_numel(&cols) == 6);
    float want[6] = {1, 2, 5, 6, 9, 10};
    for (int64_t r = 0; r < 3; r++)
        for (int64_t c = 0; c < 2; c++)
            CHECK(*petrel_tensor_at(&cols, (int64_t[]){r, c}) == want[r * 2 + c]);

    /* One column of a matrix is strided; one row is contiguous. */
    petrel_tensor col = petrel_tensor_slice(&t, 1, 3, 1);
    CHECK(!petrel_tensor_is_contiguous(&col));
    CHECK(*petrel_tensor_at(&col, (int64_t[]){2, 0}) == 11.0f);
    petrel_tensor row = petrel_tensor_slice(&t, 0, 2, 1);
    CHECK(petrel_tensor_is_contiguous(&row));

    /* A slice of a slice, and an empty slice. */
    petrel_tensor inner = petrel_tensor_slice(&cols, 0, 1, 2);
    CHECK(inner.data == buf + 5);
    CHECK(*petrel_tensor_at(&inner, (int64_t[]){1, 1}) == 10.0f);
    petrel_tensor none = petrel_tensor_slice(&t, 0, 3, 0);
    CHECK(petrel_tensor_numel(&none) == 0);

    /* Slicing a 3-d tensor along its middle dimension. */
    float b3[24];
    iota(b3, 24);
    petrel_tensor t3 = petrel_tensor_view(b3, 3, (int64_t[]){2, 3, 4});
    petrel_tensor mid = petrel_tensor_slice(&t3, 1, 2, 1); /* (2, 1, 4) */
    CHECK(mid.ne[0] == 2 && mid.ne[1] == 1 && mid.ne[2] == 4);
    CHECK(!petrel_tensor_is_contiguous(&mid));
    CHECK(*petrel_tensor_at(&mid, (int64_t[]){1, 0, 3}) == 23.0f);
    petrel_tensor first = petrel_tensor_slice(&t3, 0, 0, 1); /* (1, 3, 4) */
    CHECK(petrel_tensor_is_contiguous(&first));
}

static void test_transpose(void) {
    float buf[6];
    iota(buf, 6);
    petrel_tensor t = petrel_tensor_view(buf, 2, (int64_t[]){2, 3});
    petrel_tensor tt = petrel_tensor_transpose(&t, 0, 1);
    CHECK(tt.data == buf);
    CHECK(tt.ne[0] == 3 && tt.ne[1] == 2);
    CHECK(tt.nb[0] == 4 && tt.nb[1] == 12);
    CHECK(!petrel_tensor_is_contiguous(&tt));
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 3; j++)
            CHECK(petrel_tensor_at(&tt, (int64_t[]){j, i}) ==
                  petrel_tensor_at(&t, (int64_t[]){i, j}));
    petrel_tensor back = petrel_tensor_transpose(&tt, 1, 0);
    CHECK(petrel_tensor_is_contiguous(&back));
    CHECK(petrel_tensor_same_shape(&back, &t) && back.nb[0] == t.nb[0] && back.nb[1] == t.nb[1]);
    petrel_tensor same = petrel_tensor_transpose(&t, 1, 1);
    CHECK(petrel_tensor_is_contiguous(&same));

    /* Dimensions 1 and 3 of a 4-d tensor. */
    float b4[120];
    iota(b4, 120);
    petrel_tensor t4 = petrel_tensor_view(b4, 4, (int64_t[]){2, 3, 4, 5});
    petrel_tensor p = petrel_tensor_transpose(&t4, 1, 3); /* (2, 5, 4, 3) */
    CHECK(p.ne[0] == 2 && p.ne[1] == 5 && p.ne[2] == 4 && p.ne[3] == 3);
    CHECK(!petrel_tensor_is_contiguous(&p));
    CHECK(*petrel_tensor_at(&p, (int64_t[]){1, 4, 2, 0}) ==
          *petrel_tensor_at(&t4, (int64_t[]){1, 0, 2, 4}));

    /* Transposing size-1 dimensions keeps the data dense. */
    float v[5];
    petrel_tensor rowv = petrel_tensor_view(v, 2, (int64_t[]){1, 5});
    petrel_tensor colv = petrel_tensor_transpose(&rowv, 0, 1); /* (5, 1), stride 4 */
    CHECK(petrel_tensor_is_contiguous(&colv));
}

static void test_copy_strided(void) {
    float src[6], dst[6];
    iota(src, 6);
    petrel_tensor s = petrel_tensor_view(src, 2, (int64_t[]){2, 3});
    petrel_tensor st = petrel_tensor_transpose(&s, 0, 1); /* (3, 2) strided */

    /* Strided -> contiguous materializes the transpose. */
    petrel_tensor d = petrel_tensor_view(dst, 2, (int64_t[]){3, 2});
    petrel_tensor_copy(&d, &st);
    float want[6] = {0, 3, 1, 4, 2, 5};
    CHECK_TENSOR_NEAR(dst, want, 6, 0, 0);

    /* Contiguous -> strided writes only the viewed elements. */
    float big[20];
    for (int i = 0; i < 20; i++) big[i] = -1.0f;
    petrel_tensor bt = petrel_tensor_view(big, 2, (int64_t[]){4, 5});
    petrel_tensor window = petrel_tensor_slice(&bt, 1, 1, 3);
    window = petrel_tensor_slice(&window, 0, 1, 2); /* rows 1..2, cols 1..3 */
    petrel_tensor_copy(&window, &s);
    float want_big[20] = {-1, -1, -1, -1, -1, -1, 0, 1, 2, -1, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1};
    CHECK_TENSOR_NEAR(big, want_big, 20, 0, 0);

    /* Strided -> strided: the transpose of a window into another window. */
    float out[12];
    for (int i = 0; i < 12; i++) out[i] = 7.0f;
    petrel_tensor ot = petrel_tensor_view(out, 2, (int64_t[]){3, 4});
    petrel_tensor owin = petrel_tensor_slice(&ot, 1, 2, 2);    /* (3, 2), cols 2..3 */
    petrel_tensor wt = petrel_tensor_transpose(&window, 0, 1); /* (3, 2) */
    petrel_tensor_copy(&owin, &wt);
    float want_out[12] = {7, 7, 0, 3, 7, 7, 1, 4, 7, 7, 2, 5};
    CHECK_TENSOR_NEAR(out, want_out, 12, 0, 0);

    /* Same number of elements, another shape: row-major order is kept. */
    float flat[6] = {0};
    petrel_tensor f = petrel_tensor_view(flat, 1, (int64_t[]){6});
    petrel_tensor_copy(&f, &st);
    CHECK_TENSOR_NEAR(flat, want, 6, 0, 0);

    /* Contiguous -> contiguous. */
    float c2[6] = {0};
    petrel_tensor ct = petrel_tensor_view(c2, 2, (int64_t[]){2, 3});
    petrel_tensor_copy(&ct, &s);
    CHECK_TENSOR_NEAR(c2, src, 6, 0, 0);

    /* A 4-d permutation round trip: (2,3,4,5) -> swap 0,3 -> copy -> swap back -> copy. */
    float a4[120], b4[120], c4[120];
    iota(a4, 120);
    petrel_tensor t4 = petrel_tensor_view(a4, 4, (int64_t[]){2, 3, 4, 5});
    petrel_tensor p4 = petrel_tensor_transpose(&t4, 0, 3); /* (5, 3, 4, 2) */
    petrel_tensor q4 = petrel_tensor_view(b4, 4, (int64_t[]){5, 3, 4, 2});
    petrel_tensor_copy(&q4, &p4);
    CHECK(b4[1] == 60.0f); /* q4[0,0,0,1] = t4[1,0,0,0] */
    CHECK(b4[2] == 5.0f);  /* q4[0,0,1,0] = t4[0,0,1,0] */
    petrel_tensor r4 = petrel_tensor_transpose(&q4, 0, 3);
    petrel_tensor c4t = petrel_tensor_view(c4, 4, (int64_t[]){2, 3, 4, 5});
    petrel_tensor_copy(&c4t, &r4);
    CHECK_TENSOR_NEAR(c4, a4, 120, 0, 0);
}

static void test_shape_str(void) {
    float buf[24];
    char s[64];
    petrel_tensor t2 = petrel_tensor_view(buf, 2, (int64_t[]){2, 3});
    CHECK(strcmp(petrel_tensor_shape_str(&t2, s, sizeof s), "(2, 3)") == 0);
    petrel_tensor t1 = petrel_tensor_view(buf, 1, (int64_t[]){7});
    CHECK(strcmp(petrel_tensor_shape_str(&t1, s, sizeof s), "(7)") == 0);
    petrel_tensor t4 = petrel_tensor_view(buf, 4, (int64_t[]){1, 2, 3, 4});
    CHECK(petrel_tensor_shape_str(&t4, s, sizeof s) == s);
    CHECK(strcmp(s, "(1, 2, 3, 4)") == 0);
    petrel_tensor tt = petrel_tensor_transpose(&t2, 0, 1);
    CHECK(strcmp(petrel_tensor_shape_str(&tt, s, sizeof s), "(3, 2)") == 0);

    /* A short buffer is truncated and terminated, never overrun. */
    petrel_tensor big = petrel_tensor_view(buf, 2, (int64_t[]){123456, 789});
    for (size_t size = 1; size <= 16; size++) {
        char guard[32];
        memset(guard, '#', sizeof guard);
        petrel_tensor_shape_str(&big, guard, size);
        CHECK(memchr(guard, '\0', size) != NULL);
        CHECK(strlen(guard) == (size - 1 < 13 ? size - 1 : 13));
        for (size_t i = size; i < sizeof guard; i++) CHECK(guard[i] == '#');
        CHECK(strncmp(guard, "(123456, 789)", strlen(guard)) == 0);
    }
}

int main(void) {
    RUN(test_view_strides);
    RUN(test_same_shape);
    RUN(test_at);
    RUN(test_slice);
    RUN(test_transpose);
    RUN(test_copy_strided);
    RUN(test_shape_str);
    return CHECK_DONE();
}
