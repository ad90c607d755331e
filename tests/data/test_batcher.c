/* Batcher: epochs cover each shard once, shards partition the samples, orders
 * are a function of (seed, epoch), drop_last, sparse batches, and no allocation
 * after petrel_batcher_new. */
#include "check.h"

/* A dense dataset whose rows tell their index: x[i][j] = 1000 i + j, y[i] = i % 7. */
static petrel_dataset *make_dense(int64_t n, int64_t dim) {
    petrel_dataset *d = petrel_calloc(1, sizeof *d);
    d->n = n;
    d->dim = dim;
    d->x = petrel_malloc((size_t)(n * dim) * sizeof *d->x);
    d->y = petrel_malloc((size_t)n * sizeof *d->y);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < dim; j++) d->x[i * dim + j] = (float)(1000 * i + j);
        d->y[i] = (int32_t)(i % 7);
    }
    d->num_classes = 7;
    return d;
}

/* Sparse: row i holds (i % 5) entries at columns (i + 3k) % dim, ascending. */
static petrel_dataset *make_sparse(int64_t n, int64_t dim) {
    petrel_dataset *dense = make_dense(n, dim);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < dim; j++) {
            bool keep = false;
            for (int64_t k = 0; k < i % 5; k++) keep = keep || j == (i + 3 * k) % dim;
            if (!keep) dense->x[i * dim + j] = 0;
        }
    dense->x[0] = 0;
    petrel_dataset *s = NULL;
    CHECK_OK(petrel_dataset_to_sparse(&s, dense));
    petrel_dataset_free(dense);
    return s;
}

static petrel_batcher_config config(int64_t batch, bool shuffle, int rank, int size) {
    petrel_batcher_config c = petrel_batcher_config_default();
    c.batch = batch;
    c.shuffle = shuffle;
    c.rank = rank;
    c.size = size;
    return c;
}

static void test_config_default(void) {
    petrel_batcher_config c = petrel_batcher_config_default();
    CHECK(c.batch == 64 && c.shuffle && c.seed == 1 && c.rank == 0 && c.size == 1 && !c.drop_last);
}

/* One epoch of the dense form: counts per batch, every sample once, and the
 * gathered rows and labels are those of the reported indices. */
static void test_epoch_covers_once(void) {
    const int64_t n = 103, dim = 3;
    petrel_dataset *d = make_dense(n, dim);
    petrel_batcher *b = NULL;
    CHECK_OK(petrel_batcher_new(&b, d, config(10, true, 0, 1)));
    if (!b) return;
    CHECK(petrel_batcher_shard_size(b) == 103);
    CHECK(petrel_batcher_batches_per_epoch(b) == 11);
    float x[30];
    int32_t y[10];
    for (int epoch = 0; epoch < 3; epoch++) {
        petrel_batcher_start_epoch(b, epoch);
        int seen[103] = {0};
        int64_t m, batches = 0, total = 0;
        bool rows_ok = true;
        while ((m = petrel_batcher_next(b, x, y)) > 0) {
            CHECK(m == (batches < 10 ? 10 : 3));
            for (int64_t i = 0; i < m; i++) {
                int64_t s = (int64_t)x[i * dim] / 1000;
                rows_ok = rows_ok && s >= 0 && s < n && x[i * dim + 2] == (float)(1000 * s + 2) &&
                          y[i] == s % 7;
                if (s >= 0 && s < n) seen[s]++;
            }
            batches++;
            total += m;
        }
        CHECK(rows_ok);
        CHECK(batches == 11 && total == n);
        for (int64_t i = 0; i < n; i++) CHECK(seen[i] == 1);
        CHECK(petrel_batcher_next(b, x, y) == 0); /* stays at the end */
    }
    petrel_batcher_free(b);
    petrel_dataset_free(d);
}

/* Collects rank's samples of one epoch into who[sample] = rank (or counts a
 * collision as -2). Returns the number of samples. */
static int64_t collect(const petrel_dataset *d, petrel_batcher_config cfg, int64_t epoch, int *who,
                       uint32_t *order) {
    petrel_batcher *b = NULL;
    CHECK_OK(petrel_batcher_new(&b, d, cfg));
    if (!b) return -1;
    petrel_batcher_start_epoch(b, epoch);
    const uint32_t *idx;
    int64_t m, total = 0;
    while ((m = petrel_batcher_next_indices(b, &idx)) > 0) {
        for (int64_t i = 0; i < m; i++) {
            who[idx[i]] = who[idx[i]] == -1 ? cfg.rank : -2;
            if (order) order[total + i] = idx[i];
        }
        total += m;
    }
    CHECK(total == petrel_batcher_shard_size(b));
    petrel_batcher_free(b);
    return total;
}

static void test_shards_partition(void) {
    static const int64_t sizes[] = {100, 10, 99, 2, 1};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        int64_t n = sizes[t];
        petrel_dataset *d = make_dense(n, 1);
        for (int shuffle = 0; shuffle < 2; shuffle++) {
            for (int64_t epoch = 0; epoch < 3; epoch++) {
                int who[100];
                for (int i = 0; i < 100; i++) who[i] = -1;
                int64_t total = 0;
                for (int r = 0; r < 3; r++) {
                    uint32_t order[100];
                    int64_t got = collect(d, config(4, shuffle, r, 3), epoch, who, order);
                    CHECK(got == (r + 1) * n / 3 - r * n / 3);
                    total += got;
                    /* Without shuffle a shard is the contiguous range of the rule. */
                    if (!shuffle)
                        for (int64_t i = 0; i < got; i++) CHECK(order[i] == r * n / 3 + i);
                }
                CHECK(total == n);
                for (int64_t i = 0; i < n; i++) CHECK(who[i] >= 0); /* covered, no collision */
            }
        }
        petrel_dataset_free(d);
    }
}

static void test_order_is_function_of_seed_and_epoch(void) {
    petrel_dataset *d = make_dense(100, 1);
    uint32_t a[100], b[100], c[100], e[100];
    int who[100];
    petrel_batcher_config cfg = config(7, true, 0, 1);
    memset(who, -1, sizeof who);
    collect(d, cfg, 5, who, a);
    memset(who, -1, sizeof who);
    collect(d, cfg, 5, who, b);
    CHECK(memcmp(a, b, sizeof a) == 0);
    memset(who, -1, sizeof who);
    collect(d, cfg, 6, who, c);
    CHECK(memcmp(a, c, sizeof a) != 0);
    cfg.seed = 2;
    memset(who, -1, sizeof who);
    collect(d, cfg, 5, who, e);
    CHECK(memcmp(a, e, sizeof a) != 0);
    /* A shuffle moves most samples. */
    int fixed = 0;
    for (int i = 0; i < 100; i++) fixed += a[i] == (uint32_t)i;
    CHECK(fixed < 10);

    /* Returning to an epoch after others reproduces it: no hidden RNG state. */
    petrel_batcher *bt = NULL;
    CHECK_OK(petrel_batcher_new(&bt, d, config(100, true, 0, 1)));
    if (bt) {
        const uint32_t *idx;
        petrel_batcher_start_epoch(bt, 6);
        petrel_batcher_start_epoch(bt, 9);
        petrel_batcher_start_epoch(bt, 5);
        CHECK(petrel_batcher_next_indices(bt, &idx) == 100);
        CHECK(memcmp(idx, a, sizeof a) == 0);
    }
    petrel_batcher_free(bt);

    /* Rank 1 of 3 sees exactly the middle third of the rank-0-of-1 order. */
    uint32_t mid[100];
    memset(who, -1, sizeof who);
    CHECK(collect(d, config(7, true, 1, 3), 5, who, mid) == 33);
    CHECK(memcmp(mid, a + 33, 33 * sizeof *a) == 0);
    petrel_dataset_free(d);
}

static void test_drop_last(void) {
    petrel_dataset *d = make_dense(103, 2);
    petrel_batcher_config cfg = config(10, true, 0, 1);
    cfg.drop_last = true;
    petrel_batcher *b = NULL;
    CHECK_OK(petrel_batcher_new(&b, d, cfg));
    if (!b) return;
    CHECK(petrel_batcher_batches_per_epoch(b) == 10);
    float x[20];
    int32_t y[10];
    int64_t m, batches = 0;
    while ((m = petrel_batcher_next(b, x, y)) > 0) {
        CHECK(m == 10);
        batches++;
    }
    CHECK(batches == 10);
    CHECK(petrel_batcher_next(b, x, NULL) == 0);
    petrel_batcher_free(b);

    /* Shards of 34, 34, 35 in batches of 5: 6, 6, 7 full batches. */
    cfg.batch = 5;
    cfg.size = 3;
    for (int r = 0; r < 3; r++) {
        cfg.rank = r;
        CHECK_OK(petrel_batcher_new(&b, d, cfg));
        if (!b) return;
        int64_t got = 0;
        batches = 0;
        while ((m = petrel_batcher_next(b, x, y)) > 0) got += m, batches++;
        CHECK(batches == petrel_batcher_batches_per_epoch(b));
        CHECK(got == petrel_batcher_shard_size(b) / 5 * 5);
        petrel_batcher_free(b);
    }
    petrel_dataset_free(d);
}

/* Sparse batches hold exactly the dataset's rows; the dense form densifies them. */
static void test_sparse_batches(void) {
    const int64_t n = 57, dim = 11, batch = 8;
    petrel_dataset *s = make_sparse(n, dim);
    petrel_dataset *dense = NULL;
    CHECK_OK(petrel_dataset_to_dense(&dense, s));
    if (!s || !dense) return;
    CHECK(s->sparse.row_ptr[1] == 0); /* an empty row is in there */

    petrel_batcher *b1 = NULL, *b2 = NULL, *b3 = NULL;
    petrel_batcher_config cfg = config(batch, true, 1, 2);
    CHECK_OK(petrel_batcher_new(&b1, s, cfg));
    CHECK_OK(petrel_batcher_new(&b2, s, cfg));
    CHECK_OK(petrel_batcher_new(&b3, s, cfg));
    if (!b1 || !b2 || !b3) return;
    float x[8 * 11];
    int32_t y[8], y2[8];
    for (int64_t epoch = 0; epoch < 2; epoch++) {
        petrel_batcher_start_epoch(b1, epoch);
        petrel_batcher_start_epoch(b2, epoch);
        petrel_batcher_start_epoch(b3, epoch);
        int64_t total = 0;
        for (;;) {
            const petrel_csr *rows = NULL;
            const uint32_t *idx;
            int64_t m = petrel_batcher_next_sparse(b1, &rows, y);
            CHECK(petrel_batcher_next(b2, x, y2) == m);
            CHECK(petrel_batcher_next_indices(b3, &idx) == m);
            if (m == 0) break;
            CHECK(rows->rows == m && rows->cols == dim);
            CHECK(rows->row_ptr[0] == 0 && rows->nnz == rows->row_ptr[m]);
            bool ok = true;
            for (int64_t i = 0; i < m; i++) {
                const petrel_csr *src = &s->sparse;
                int64_t k0 = src->row_ptr[idx[i]], len = src->row_ptr[idx[i] + 1] - k0;
                ok = ok && rows->row_ptr[i + 1] - rows->row_ptr[i] == len;
                for (int64_t k = 0; ok && k < len; k++)
                    ok = rows->col[rows->row_ptr[i] + k] == src->col[k0 + k] &&
                         rows->val[rows->row_ptr[i] + k] == src->val[k0 + k];
                ok = ok && y[i] == s->y[idx[i]] && y2[i] == s->y[idx[i]];
                for (int64_t j = 0; j < dim; j++)
                    ok = ok && x[i * dim + j] == dense->x[idx[i] * dim + j];
            }
            CHECK(ok);
            total += m;
        }
        CHECK(total == n - n / 2);
    }
    petrel_batcher_free(b3);
    petrel_batcher_free(b2);
    petrel_batcher_free(b1);
    petrel_dataset_free(dense);
    petrel_dataset_free(s);
}

/* Rows all of the longest length: every batch fills the storage sized up front
 * (batch * longest row) exactly. */
static void test_sparse_full_rows(void) {
    petrel_dataset *d = make_dense(40, 6); /* no zeros but x[0] */
    d->x[0] = 1;
    petrel_dataset *s = NULL;
    CHECK_OK(petrel_dataset_to_sparse(&s, d));
    if (!s) return;
    CHECK(s->sparse.nnz == 240);
    petrel_batcher *b = NULL;
    CHECK_OK(petrel_batcher_new(&b, s, config(16, true, 0, 1)));
    if (!b) return;
    const petrel_csr *rows;
    int32_t y[16];
    int64_t m, total = 0;
    while ((m = petrel_batcher_next_sparse(b, &rows, y)) > 0) {
        CHECK(rows->nnz == 6 * m);
        CHECK((int64_t)rows->val[rows->nnz - 1] % 1000 == 5); /* a row's last entry */
        total += m;
    }
    CHECK(total == 40);
    petrel_batcher_free(b);
    petrel_dataset_free(s);
    petrel_dataset_free(d);
}

/* After petrel_batcher_new, whole epochs of every form allocate nothing. */
static void test_no_allocation(void) {
    petrel_dataset *d = make_dense(500, 16);
    petrel_dataset *s = make_sparse(500, 16);
    petrel_batcher *bd = NULL, *bs = NULL;
    CHECK_OK(petrel_batcher_new(&bd, d, config(32, true, 0, 1)));
    CHECK_OK(petrel_batcher_new(&bs, s, config(32, true, 0, 1)));
    if (!bd || !bs) return;
    float *x = petrel_malloc(32 * 16 * sizeof *x);
    int32_t *y = petrel_malloc(32 * sizeof *y);
    petrel_alloc_stats before = petrel_alloc_get_stats();
    int64_t total = 0;
    for (int64_t epoch = 0; epoch < 3; epoch++) {
        const petrel_csr *rows;
        const uint32_t *idx;
        petrel_batcher_start_epoch(bd, epoch);
        petrel_batcher_start_epoch(bs, epoch);
        while (petrel_batcher_next(bd, x, y) > 0) total++;
        while (petrel_batcher_next_sparse(bs, &rows, y) > 0) total++;
        petrel_batcher_start_epoch(bs, epoch);
        while (petrel_batcher_next(bs, x, y) > 0) total++;
        petrel_batcher_start_epoch(bd, epoch);
        while (petrel_batcher_next_indices(bd, &idx) > 0) total++;
    }
    petrel_alloc_stats after = petrel_alloc_get_stats();
    CHECK(total == 3 * 4 * 16);
    CHECK(after.calls == before.calls);
    CHECK(after.live_bytes == before.live_bytes);
    petrel_free(y);
    petrel_free(x);
    petrel_batcher_free(bs);
    petrel_batcher_free(bd);
    petrel_dataset_free(s);
    petrel_dataset_free(d);
}

static void test_invalid_and_small(void) {
    petrel_dataset *d = make_dense(2, 1);
    petrel_batcher *b = NULL;
    CHECK_ERR(petrel_batcher_new(&b, d, config(0, true, 0, 1)), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_batcher_new(&b, d, config(4, true, 3, 3)), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_batcher_new(&b, d, config(4, true, -1, 3)), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_batcher_new(&b, d, config(4, true, 0, 0)), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "rank") != NULL);
    CHECK(b == NULL);

    /* Fewer samples than ranks: rank 0 of 3 holds 2*0/3 .. 2*1/3 = nothing. */
    CHECK_OK(petrel_batcher_new(&b, d, config(4, true, 0, 3)));
    if (b) {
        float x[4];
        CHECK(petrel_batcher_shard_size(b) == 0);
        CHECK(petrel_batcher_batches_per_epoch(b) == 0);
        CHECK(petrel_batcher_next(b, x, NULL) == 0);
    }
    petrel_batcher_free(b);
    petrel_batcher_free(NULL);

    /* Allocation failures inside new: NOMEM, nothing leaked. */
    petrel_dataset *s = make_sparse(40, 6);
    uint64_t base = petrel_alloc_get_stats().live_bytes;
    int k;
    for (k = 0; k < 100; k++) {
        b = NULL;
        petrel_alloc_fail_after(k);
        petrel_err err = petrel_batcher_new(&b, s, config(4, true, 0, 1));
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) break;
        CHECK_ERR(err, PETREL_ERR_NOMEM);
        CHECK(b == NULL);
        CHECK(petrel_alloc_get_stats().live_bytes == base);
    }
    CHECK(k >= 3); /* the batcher, its permutation, the CSR batch */
    petrel_batcher_free(b);
    petrel_dataset_free(s);
    petrel_dataset_free(d);
}

/* Every dataset, batcher and buffer above was freed. */
static void test_nothing_leaked(void) {
    CHECK(petrel_alloc_get_stats().live_bytes == 0);
}

int main(void) {
    RUN(test_config_default);
    RUN(test_epoch_covers_once);
    RUN(test_shards_partition);
    RUN(test_order_is_function_of_seed_and_epoch);
    RUN(test_drop_last);
    RUN(test_sparse_batches);
    RUN(test_sparse_full_rows);
    RUN(test_no_allocation);
    RUN(test_invalid_and_small);
    RUN(test_nothing_leaked);
    return CHECK_DONE();
}
