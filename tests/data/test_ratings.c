/* Ratings reader: exact triplets from good files (comments, tabs, CRLF, gzip, the
 * largest id), every malformed line named by path:line, the seeded split, the
 * synthetic generator, allocation failures. */
#include "fixtures.h"

/* Line numbers matter: the errors below name them. */
static const char small_ratings[] = "# user item rating\n" /* 1 */
                                    "\n"                   /* 2 */
                                    "0 0 5\n"              /* 3 */
                                    "  3\t1   -2.5\r\n"    /* 4 */
                                    "   # indented comment\n"
                                    "1 7 1e-1\n" /* 6 */
                                    "\t\n"       /* 7 */
                                    "2 2 +4.25"; /* 8, no trailing newline */

static void check_small(const petrel_ratings *r) {
    CHECK(r->n == 4);
    CHECK(r->users == 4 && r->items == 8);
    static const int32_t user[4] = {0, 3, 1, 2}, item[4] = {0, 1, 7, 2};
    static const float rating[4] = {5, -2.5f, 0.1f, 4.25f};
    for (int k = 0; k < 4; k++) CHECK(r->user[k] == user[k] && r->item[k] == item[k]);
    CHECK_TENSOR_NEAR(r->rating, rating, 4, 0, 0);
}

static void test_small_file(void) {
    petrel_ratings r = {0};
    CHECK_OK(petrel_ratings_read(fx_write_str("small.ratings", small_ratings), &r));
    if (r.n) check_small(&r);
    petrel_ratings_fini(&r);
    CHECK(r.user == NULL && r.n == 0);
    petrel_ratings_fini(NULL);

    CHECK_OK(petrel_ratings_read(
        fx_write_gz("small.ratings.gz", small_ratings, strlen(small_ratings)), &r));
    if (r.n) check_small(&r);
    petrel_ratings_fini(&r);
}

/* INT32_MAX is the largest id; users/items are then 2^31. */
static void test_largest_id(void) {
    petrel_ratings r = {0};
    CHECK_OK(
        petrel_ratings_read(fx_write_str("big.ratings", "2147483647 0 1\n0 2147483647 2\n"), &r));
    CHECK(r.n == 2 && r.users == 2147483648LL && r.items == 2147483648LL);
    if (r.n == 2) CHECK(r.user[0] == INT32_MAX && r.item[1] == INT32_MAX);
    petrel_ratings_fini(&r);
}

/* Reads text and expects code with a message naming path:where and holding what. */
static void expect_error(const char *name, const char *text, petrel_err code, const char *where,
                         const char *what) {
    const char *p = fx_write_str(name, text);
    char want[512];
    snprintf(want, sizeof want, "%s%s", p, where);
    petrel_ratings r = {.n = 42};
    CHECK_ERR(petrel_ratings_read(p, &r), code);
    CHECK(r.n == 42 && r.user == NULL); /* untouched */
    CHECK_MSG(want);
    CHECK_MSG(what);
}

static void test_errors(void) {
    expect_error("m1.ratings", "0 0 1\n1 2\n", PETREL_ERR_FORMAT,
                 ":2:", "missing the rating field: expected 'user item rating', found 2 fields");
    expect_error("m2.ratings", "# c\n0 0 1\n\n7\n", PETREL_ERR_FORMAT,
                 ":4:", "missing the item field");
    expect_error("u.ratings", "0 0 1\nalice 3 4\n", PETREL_ERR_FORMAT,
                 ":2:", "expected an integer user id, found 'alice'");
    expect_error("i.ratings", "0 0 1\n0 1 2\n0 2.5 2\n", PETREL_ERR_FORMAT,
                 ":3:", "expected an integer item id, found '2.5'");
    expect_error("r.ratings", "0 0 1\n0 1 good\n", PETREL_ERR_FORMAT,
                 ":2:", "expected a numeric rating, found 'good'");
    expect_error("r2.ratings", "0 0 1\n0 1 4stars\n", PETREL_ERR_FORMAT,
                 ":2:", "expected a numeric rating, found '4stars'");
    expect_error("neg.ratings", "0 0 1\n-3 1 2\n", PETREL_ERR_FORMAT,
                 ":2:", "user id '-3' is negative");
    expect_error("negi.ratings", "0 0 1\n\n\n3 -1 2\n", PETREL_ERR_FORMAT,
                 ":4:", "item id '-1' is negative");
    expect_error("huge.ratings", "0 0 1\n2147483648 1 2\n", PETREL_ERR_FORMAT,
                 ":2:", "user id '2147483648' is above the limit 2147483647");
    expect_error("huge2.ratings", "0 99999999999999999999999 2\n", PETREL_ERR_FORMAT,
                 ":1:", "item id '99999999999999999999999' is above the limit");
    expect_error("plus.ratings", "+1 0 2\n", PETREL_ERR_FORMAT,
                 ":1:", "expected an integer user id, found '+1'");
    expect_error("nan.ratings", "0 0 1\n1 1 nan\n", PETREL_ERR_FORMAT,
                 ":2:", "rating 'nan' is not a finite number");
    expect_error("inf.ratings", "0 0 1\n1 1 -inf\n", PETREL_ERR_FORMAT,
                 ":2:", "rating '-inf' is not a finite number");
    expect_error("flt.ratings", "0 0 1e39\n", PETREL_ERR_FORMAT,
                 ":1:", "rating '1e39' is outside the float range");
    expect_error("junk.ratings", "0 0 1\n1 1 2 881250949\n", PETREL_ERR_FORMAT,
                 ":2:", "unexpected '881250949' after the rating");
    expect_error("comment.ratings", "0 0 1 # trailing comment\n", PETREL_ERR_FORMAT,
                 ":1:", "unexpected '#' after the rating");
    expect_error("empty.ratings", "# only a comment\n\n", PETREL_ERR_FORMAT, ":",
                 "no ratings: expected lines of 'user item rating'");
    petrel_ratings r = {0};
    static const char bin[] = "0 0 1\n1 1\0002\n";
    CHECK_ERR(petrel_ratings_read(fx_write("bin.ratings", bin, sizeof bin - 1), &r),
              PETREL_ERR_FORMAT);
    CHECK_MSG("bin.ratings:2");
    CHECK_ERR(petrel_ratings_read(fx_path("missing.ratings"), &r), PETREL_ERR_IO);
    CHECK_MSG("missing.ratings");
}

/* n triplets with distinct (user, item) pairs, user k / 10, item k % 10, rating k. */
static petrel_ratings make_set(int64_t n) {
    petrel_ratings r = {.n = n, .users = (n + 9) / 10, .items = 10};
    r.user = petrel_malloc((size_t)n * sizeof *r.user);
    r.item = petrel_malloc((size_t)n * sizeof *r.item);
    r.rating = petrel_malloc((size_t)n * sizeof *r.rating);
    if (!r.user || !r.item || !r.rating) {
        printf("FAIL - setup (out of memory)\n");
        exit(1);
    }
    for (int64_t k = 0; k < n; k++)
        r.user[k] = (int32_t)(k / 10), r.item[k] = (int32_t)(k % 10), r.rating[k] = (float)k;
    return r;
}

static void test_split(void) {
    petrel_ratings all = make_set(1003);
    for (int f = 0; f < 4; f++) {
        const double frac[4] = {0.1, 0.25, 0.0, 0.999};
        petrel_ratings tr = {0}, te = {0}, tr2 = {0}, te2 = {0};
        CHECK_OK(petrel_ratings_split(&all, frac[f], 7, &tr, &te));
        int64_t want = (int64_t)floor(frac[f] * 1003 + 0.5);
        CHECK(te.n == want && tr.n == 1003 - want);
        CHECK(tr.users == all.users && te.users == all.users);
        CHECK(tr.items == 10 && te.items == 10);
        /* Together a partition of the triplets, each part in the original order. */
        char *seen = calloc(1003, 1);
        bool ordered = true, consistent = true;
        for (int part = 0; part < 2 && seen; part++) {
            const petrel_ratings *s = part ? &te : &tr;
            for (int64_t k = 0; k < s->n; k++) {
                int64_t id = (int64_t)s->rating[k];
                consistent &= s->user[k] == id / 10 && s->item[k] == id % 10;
                ordered &= k == 0 || s->rating[k] > s->rating[k - 1];
                if (id >= 0 && id < 1003) seen[id]++;
            }
        }
        int64_t once = 0;
        for (int k = 0; seen && k < 1003; k++) once += seen[k] == 1;
        CHECK(once == 1003 && ordered && consistent);
        free(seen);
        /* The same seed splits the same way; another seed does not. */
        CHECK_OK(petrel_ratings_split(&all, frac[f], 7, &tr2, &te2));
        CHECK(te2.n == te.n &&
              memcmp(te2.rating, te.rating, (size_t)te.n * sizeof *te.rating) == 0);
        petrel_ratings_fini(&tr2);
        petrel_ratings_fini(&te2);
        if (frac[f] > 0 && frac[f] < 0.5) {
            CHECK_OK(petrel_ratings_split(&all, frac[f], 8, &tr2, &te2));
            CHECK(te2.n == te.n &&
                  memcmp(te2.rating, te.rating, (size_t)te.n * sizeof *te.rating) != 0);
            petrel_ratings_fini(&tr2);
            petrel_ratings_fini(&te2);
        }
        petrel_ratings_fini(&tr);
        petrel_ratings_fini(&te);
    }
    petrel_ratings tr = {.n = 5}, te = {.n = 6};
    CHECK_ERR(petrel_ratings_split(&all, 1.0, 7, &tr, &te), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_split(&all, -0.1, 7, &tr, &te), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_split(&all, NAN, 7, &tr, &te), PETREL_ERR_INVALID);
    CHECK(tr.n == 5 && te.n == 6 && !tr.user && !te.user);
    petrel_ratings_fini(&all);
}

static void test_synth(void) {
    /* Sparse: about density * users * items triplets, ids in range, ratings of
     * variance about 1 + noise^2. */
    const char *p = fx_path("synth.ratings"), *q = fx_path("synth2.ratings");
    CHECK_OK(petrel_ratings_synth(p, 300, 200, 4, 0.05, 0.5, 11));
    petrel_ratings r = {0};
    CHECK_OK(petrel_ratings_read(p, &r));
    /* mean 3000, standard deviation sqrt(3000 * 0.95) = 53 */
    CHECK(r.n > 3000 - 300 && r.n < 3000 + 300);
    CHECK(r.users <= 300 && r.users >= 290 && r.items <= 200 && r.items >= 190);
    double sum = 0, sq = 0;
    bool in_range = true, row_major = true;
    for (int64_t k = 0; k < r.n; k++) {
        in_range &= r.user[k] >= 0 && r.user[k] < 300 && r.item[k] >= 0 && r.item[k] < 200;
        if (k) {
            int64_t a = (int64_t)r.user[k - 1] * 200 + r.item[k - 1];
            row_major &= (int64_t)r.user[k] * 200 + r.item[k] > a;
        }
        sum += r.rating[k], sq += (double)r.rating[k] * r.rating[k];
    }
    double mean = r.n ? sum / (double)r.n : 0, var = r.n ? sq / (double)r.n - mean * mean : 0;
    CHECK(in_range && row_major);
    CHECK_NEAR(mean, 0, 0.15, 0);
    CHECK_NEAR(var, 1.25, 0.35, 0);
    petrel_ratings_fini(&r);

    /* Deterministic: the same arguments write the same bytes. */
    CHECK_OK(petrel_ratings_synth(q, 300, 200, 4, 0.05, 0.5, 11));
    size_t na, nb;
    unsigned char *a = fx_read(p, &na), *b = fx_read(q, &nb);
    CHECK(a && b && na == nb && memcmp(a, b, na) == 0);
    free(b);
    CHECK_OK(petrel_ratings_synth(q, 300, 200, 4, 0.05, 0.5, 12));
    b = fx_read(q, &nb);
    CHECK(b && (na != nb || memcmp(a, b, na) != 0));
    free(a);
    free(b);

    /* Dense, noiseless, rank 1: every cell, and the matrix is u v^T, so
     * r(u,i) r(u',i') = r(u,i') r(u',i). */
    CHECK_OK(petrel_ratings_synth(p, 6, 5, 1, 1.0, 0.0, 3));
    CHECK_OK(petrel_ratings_read(p, &r));
    CHECK(r.n == 30 && r.users == 6 && r.items == 5);
    if (r.n == 30) {
        double worst = 0;
        for (int u = 1; u < 6; u++)
            for (int i = 1; i < 5; i++) {
                double d = (double)r.rating[u * 5 + i] * r.rating[0] -
                           (double)r.rating[u * 5] * r.rating[i];
                worst = fmax(worst, fabs(d));
            }
        CHECK(worst < 1e-5);
        CHECK(r.rating[0] != 0);
    }
    petrel_ratings_fini(&r);

    CHECK_ERR(petrel_ratings_synth(p, 0, 5, 1, 0.5, 0, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_synth(p, 5, 5, 0, 0.5, 0, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_synth(p, 5, 5, 1, 0.0, 0, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_synth(p, 5, 5, 1, 1.5, 0, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_synth(p, 5, 5, 1, 0.5, -1, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_ratings_synth(fx_path("no/such/dir.ratings"), 5, 5, 1, 0.5, 0, 1),
              PETREL_ERR_IO);
    CHECK_MSG("no/such/dir.ratings: cannot create");
}

static void test_alloc_failures(void) {
    const char *p = fx_write_str("af.ratings", small_ratings);
    petrel_ratings all = make_set(50);
    uint64_t base = petrel_alloc_get_stats().live_bytes;
    int k, j;
    for (k = 0; k < 1000; k++) {
        petrel_ratings r = {.n = 42};
        petrel_alloc_fail_after(k);
        petrel_err err = petrel_ratings_read(p, &r);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            check_small(&r);
            petrel_ratings_fini(&r);
            break;
        }
        CHECK_ERR(err, PETREL_ERR_NOMEM);
        CHECK(r.n == 42 && petrel_alloc_get_stats().live_bytes == base);
        if (check_current_failed) break;
    }
    CHECK(k >= 3 && k < 1000);
    for (j = 0; j < 1000; j++) {
        petrel_ratings tr = {.n = 42}, te = {.n = 42};
        petrel_alloc_fail_after(j);
        petrel_err err = petrel_ratings_split(&all, 0.2, 1, &tr, &te);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            CHECK(tr.n == 40 && te.n == 10);
            petrel_ratings_fini(&tr);
            petrel_ratings_fini(&te);
            break;
        }
        CHECK_ERR(err, PETREL_ERR_NOMEM);
        CHECK(tr.n == 42 && te.n == 42 && petrel_alloc_get_stats().live_bytes == base);
        if (check_current_failed) break;
    }
    CHECK(j == 8); /* perm, is_test, three arrays each */
    petrel_ratings_fini(&all);
}

int main(void) {
    fx_init();
    RUN(test_small_file);
    RUN(test_largest_id);
    RUN(test_errors);
    RUN(test_split);
    RUN(test_synth);
    RUN(test_alloc_failures);
    RUN(test_nothing_leaked);
    fx_cleanup();
    return CHECK_DONE();
}
