/* The parameter server's per-server store (src/ps/store.c): partitioners, dense
 * and sparse rows, first-touch initialization, the update rules against nn's
 * optimizers and a naive reference, ownership errors, key caching against a store
 * without it, snapshot files, out-of-memory and reserved room. */
#include "check.h"
#include "ps/store.h"

#include <stdlib.h>
#include <unistd.h>

static char dir[256];
static uint64_t seed;

static petrel_ps_table_spec spec_of(petrel_ps_kind kind, int64_t rows, int64_t cols,
                                    petrel_ps_rule rule) {
    petrel_ps_table_spec s = {.kind = kind, .rows = rows, .cols = cols, .rule = rule};
    s.optim = petrel_optim_config_default(PETREL_OPTIM_SGD, 0.1f);
    return s;
}

static petreli_ps_store *make(const petrel_ps_table_spec *spec, int server, int servers,
                              size_t aux) {
    petreli_ps_store *s = NULL;
    petrel_err err = petreli_ps_store_new(&s, spec, server, servers, aux);
    if (err != PETREL_OK) {
        printf("# petreli_ps_store_new: %s: %s\n", petrel_strerror(err), petrel_errmsg());
        abort();
    }
    return s;
}

static void path_of(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

/* ---- partitioners ---------------------------------------------------------------- */

static void test_partition_hash_balance(void) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    /* Consecutive keys and random keys both spread evenly. */
    for (int pass = 0; pass < 2; pass++) {
        int count[4] = {0};
        for (uint64_t i = 0; i < 100000; i++) {
            uint64_t key = pass == 0 ? i : petrel_rng_u64(&rng);
            int s = petreli_ps_partition(&spec, key, 4);
            CHECK(s >= 0 && s < 4);
            if (s >= 0 && s < 4) count[s]++;
        }
        for (int s = 0; s < 4; s++) CHECK_NEAR(count[s], 25000, 2000, 0);
    }
    /* A key's server depends on the key only; one server owns everything. */
    CHECK(petreli_ps_partition(&spec, 12345, 7) == petreli_ps_partition(&spec, 12345, 7));
    CHECK(petreli_ps_partition(&spec, 12345, 1) == 0);
    CHECK(petreli_ps_partition(&spec, 99, 3) == (int)(petreli_ps_mix64(99) % 3));
    CHECK(petreli_ps_mix64(0) == 0 && petreli_ps_mix64(1) != 1);
}

static void test_partition_range(void) {
    /* Dense, 10 rows over 3 servers: [0, 4), [4, 7), [7, 10). */
    petrel_ps_table_spec dense = spec_of(PETREL_PS_DENSE, 10, 1, PETREL_PS_SUM);
    dense.partition = PETREL_PS_RANGE;
    const int want[10] = {0, 0, 0, 0, 1, 1, 1, 2, 2, 2};
    for (uint64_t k = 0; k < 10; k++) CHECK(petreli_ps_partition(&dense, k, 3) == want[k]);
    /* Contiguous, non-decreasing blocks whose sizes differ by at most one, also
     * where rows * servers overflows 64 bits. */
    dense.rows = INT64_MAX - 5;
    int last = 0;
    for (uint64_t k = 0; k < (uint64_t)dense.rows; k += (uint64_t)dense.rows / 1000) {
        int s = petreli_ps_partition(&dense, k, 5);
        CHECK(s >= last && s < 5);
        last = s;
    }
    CHECK(petreli_ps_partition(&dense, (uint64_t)dense.rows - 1, 5) == 4);
    /* Sparse without a key range: the top bits. */
    petrel_ps_table_spec sparse = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    sparse.partition = PETREL_PS_RANGE;
    CHECK(petreli_ps_partition(&sparse, 0, 4) == 0);
    CHECK(petreli_ps_partition(&sparse, (uint64_t)1 << 62, 4) == 1);
    CHECK(petreli_ps_partition(&sparse, ((uint64_t)1 << 62) - 1, 4) == 0);
    CHECK(petreli_ps_partition(&sparse, (uint64_t)3 << 62, 4) == 3);
    CHECK(petreli_ps_partition(&sparse, UINT64_MAX, 3) == 2);
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    for (int i = 0; i < 1000; i++) {
        uint64_t a = petrel_rng_u64(&rng), b = petrel_rng_u64(&rng);
        if (a > b) {
            uint64_t t = a;
            a = b;
            b = t;
        }
        CHECK(petreli_ps_partition(&sparse, a, 5) <= petreli_ps_partition(&sparse, b, 5));
    }
    /* Sparse with a key range: like dense; keys beyond it go to the last server. */
    sparse.rows = 10;
    for (uint64_t k = 0; k < 10; k++) CHECK(petreli_ps_partition(&sparse, k, 3) == want[k]);
    CHECK(petreli_ps_partition(&sparse, 1000, 3) == 2);
}

/* ---- dense and sparse rows --------------------------------------------------------- */

static void check_dense_layout(petrel_ps_partition part, int servers) {
    const int64_t rows = 1000;
    petrel_ps_table_spec spec = spec_of(PETREL_PS_DENSE, rows, 3, PETREL_PS_SUM);
    spec.partition = part;
    int64_t total = 0;
    for (int sv = 0; sv < servers; sv++) {
        petreli_ps_store *s = make(&spec, sv, servers, 4);
        int64_t n = petreli_ps_store_count(s), expect = 0;
        for (uint64_t k = 0; k < (uint64_t)rows; k++)
            expect += petreli_ps_partition(&spec, k, servers) == sv;
        CHECK(n == expect);
        total += n;
        for (int64_t i = 0; i < n; i++) {
            uint64_t key = petreli_ps_store_key(s, i);
            CHECK(petreli_ps_partition(&spec, key, servers) == sv);
            if (i > 0) CHECK(key > petreli_ps_store_key(s, i - 1));
            CHECK(petreli_ps_store_slot(s, key, false) == i);
            CHECK(petreli_ps_store_slot(s, key, true) == i);
            const float *row = petreli_ps_store_row(s, i);
            CHECK(row[0] == 0 && row[1] == 0 && row[2] == 0);
            uint32_t aux;
            memcpy(&aux, petreli_ps_store_aux(s, i), 4);
            CHECK(aux == 0);
        }
        for (uint64_t k = 0; k < (uint64_t)rows; k++)
            if (petreli_ps_partition(&spec, k, servers) != sv)
                CHECK(petreli_ps_store_slot(s, k, true) == -1);
        /* All keys in one call: ours read their rows, the others zeros and an error
         * that counts them. */
        uint64_t all[1000];
        float got[3000];
        int64_t where[1000];
        for (int64_t k = 0; k < rows; k++) all[k] = (uint64_t)(rows - 1 - k);
        petrel_err err = petreli_ps_store_gather(s, all, rows, got, where, NULL);
        CHECK(err == (n == rows ? PETREL_OK : PETREL_ERR_INVALID));
        if (n < rows) {
            char want[64];
            snprintf(want, sizeof want, "(%lld of %lld keys rejected)", (long long)(rows - n),
                     (long long)rows);
            CHECK(strstr(petrel_errmsg(), want) != NULL);
        }
        for (int64_t k = 0; k < rows; k++)
            CHECK(where[k] == petreli_ps_store_slot(s, all[k], false) && got[3 * k] == 0 &&
                  got[3 * k + 2] == 0);
        CHECK(petreli_ps_store_slot(s, (uint64_t)rows, true) == -1);
        CHECK(petreli_ps_store_slot(s, UINT64_MAX, true) == -1);
        CHECK(petreli_ps_store_count(s) == n);
        petreli_ps_store_free(s);
    }
    CHECK(total == rows);
}

static void test_dense_precreated(void) {
    check_dense_layout(PETREL_PS_HASH, 1);
    check_dense_layout(PETREL_PS_HASH, 3);  /* key -> slot array */
    check_dense_layout(PETREL_PS_HASH, 16); /* hash index: smaller than the array */
    check_dense_layout(PETREL_PS_RANGE, 3);
    check_dense_layout(PETREL_PS_RANGE, 7);
    /* More servers than rows: some own nothing. */
    petrel_ps_table_spec spec = spec_of(PETREL_PS_DENSE, 2, 1, PETREL_PS_SUM);
    spec.partition = PETREL_PS_RANGE;
    petreli_ps_store *s = make(&spec, 2, 3, 0);
    CHECK(petreli_ps_store_count(s) == 0);
    float out = 1;
    uint64_t k = 1;
    CHECK_ERR(petreli_ps_store_gather(s, &k, 1, &out, NULL, NULL), PETREL_ERR_INVALID);
    CHECK(out == 0);
    petreli_ps_store_free(s);
}

static void test_sparse_first_touch(void) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 2, PETREL_PS_SUM);
    spec.init = PETREL_PS_INIT_CONST;
    spec.init_a = 0.5f;
    petreli_ps_store *s = make(&spec, 0, 1, 16);
    CHECK(petreli_ps_store_count(s) == 0);
    CHECK(petreli_ps_store_slot(s, 42, false) == -1);
    CHECK(petreli_ps_store_count(s) == 0);
    CHECK(petreli_ps_store_slot(s, 42, true) == 0);
    CHECK(petreli_ps_store_slot(s, 0, true) == 1); /* key 0 is a key like any other */
    CHECK(petreli_ps_store_slot(s, 0, false) == 1);
    CHECK(petreli_ps_store_row(s, 0)[1] == 0.5f);
    memset(petreli_ps_store_aux(s, 0), 0xab, 16);
    /* Many more rows: slots, keys, values and aux survive growth and rehashing. */
    const int64_t n = 20000;
    uint64_t *keys = malloc((size_t)n * sizeof *keys);
    float *d = malloc((size_t)n * 2 * sizeof *d), *out = malloc((size_t)n * 2 * sizeof *out);
    int64_t *slots = malloc((size_t)n * sizeof *slots);
    for (int64_t i = 0; i < n; i++) {
        keys[i] = petreli_ps_mix64((uint64_t)i + 1000) | 1; /* odd: never 0 or 42 */
        d[2 * i] = (float)i;
        d[2 * i + 1] = -1.0f;
    }
    CHECK_OK(petreli_ps_store_apply(s, keys, n, d, 0, NULL));
    CHECK(petreli_ps_store_count(s) == n + 2);
    CHECK_OK(petreli_ps_store_gather(s, keys, n, out, slots, NULL));
    for (int64_t i = 0; i < n; i++) {
        CHECK(out[2 * i] == 0.5f + (float)i && out[2 * i + 1] == -0.5f);
        CHECK(slots[i] == i + 2 && petreli_ps_store_key(s, slots[i]) == keys[i]);
    }
    CHECK(petreli_ps_store_slot(s, 42, false) == 0 && petreli_ps_store_slot(s, 0, false) == 1);
    unsigned char *aux = petreli_ps_store_aux(s, 0);
    CHECK(aux[0] == 0xab && aux[15] == 0xab);
    aux = petreli_ps_store_aux(s, n);
    CHECK(aux[0] == 0 && aux[15] == 0);
    /* Duplicates in one push add up; set overwrites values. */
    uint64_t dup[3] = {7, 7, 7};
    float dd[6] = {1, 2, 3, 4, 5, 6}, got[2];
    CHECK_OK(petreli_ps_store_apply(s, dup, 3, dd, 0, NULL));
    CHECK_OK(petreli_ps_store_gather(s, dup, 1, got, NULL, NULL));
    CHECK(got[0] == 0.5f + 9 && got[1] == 0.5f + 12);
    float v[2] = {-3, 4};
    CHECK_OK(petreli_ps_store_set(s, dup, 1, v));
    CHECK_OK(petreli_ps_store_gather(s, dup, 1, got, NULL, NULL));
    CHECK(got[0] == -3 && got[1] == 4);
    uint64_t fresh = 77;
    CHECK_OK(petreli_ps_store_set(s, &fresh, 1, v)); /* set makes a missing row */
    CHECK(petreli_ps_store_row(s, petreli_ps_store_slot(s, 77, false))[1] == 4);
    free(keys);
    free(d);
    free(out);
    free(slots);
    petreli_ps_store_free(s);
}

/* The inverse of mix64: keys whose mixes share their top bits share a home group
 * in the index, whatever its size. */
static uint64_t unxorshift(uint64_t y, int k) {
    uint64_t x = y;
    for (int i = k; i < 64; i += k) x ^= y >> i;
    return x;
}

static uint64_t inverse(uint64_t a) { /* a odd: a * inverse(a) = 1 mod 2^64 */
    uint64_t x = a;
    for (int i = 0; i < 6; i++) x *= 2 - a * x;
    return x;
}

static uint64_t unmix64(uint64_t z) {
    z = unxorshift(z, 31) * inverse(0x94d049bb133111ebull);
    z = unxorshift(z, 27) * inverse(0xbf58476d1ce4e5b9ull);
    return unxorshift(z, 30);
}

static void test_clear(void) {
    CHECK(petreli_ps_mix64(unmix64(0x0123456789abcdefull)) == 0x0123456789abcdefull);
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    spec.init = PETREL_PS_INIT_CONST;
    spec.init_a = 2;
    petreli_ps_store *s = make(&spec, 0, 1, 0);
    enum { BIG = 20000, SMALL = 300, SAME = 12 };
    static uint64_t keys[BIG];
    static float d[BIG], out[BIG];
    for (int i = 0; i < BIG; i++) keys[i] = petreli_ps_mix64((uint64_t)i + 1), d[i] = 1;
    /* Twelve keys with one home group: a chain over three groups, among others. */
    for (int i = 0; i < SAME; i++) keys[i * 20] = unmix64((0xabcdeull << 44) | (uint64_t)i);
    for (int round = 0; round < 3; round++) {
        int n = round == 0 ? BIG : SMALL; /* rounds 1, 2: a few rows in a big index */
        CHECK_OK(petreli_ps_store_apply(s, keys, n, d, 0, NULL));
        CHECK(petreli_ps_store_count(s) == n);
        petreli_ps_store_clear(s);
        CHECK(petreli_ps_store_count(s) == 0);
        for (int i = 0; i < BIG; i++) CHECK(petreli_ps_store_slot(s, keys[i], false) == -1);
    }
    /* Refilled in another order: fresh rows, slots from 0, every key found. */
    uint64_t rev[SMALL];
    for (int i = 0; i < SMALL; i++) rev[i] = keys[SMALL - 1 - i];
    CHECK_OK(petreli_ps_store_gather(s, rev, SMALL, out, NULL, NULL));
    CHECK(petreli_ps_store_count(s) == SMALL);
    for (int i = 0; i < SMALL; i++) {
        CHECK(out[i] == 2);
        CHECK(petreli_ps_store_slot(s, rev[i], false) == i);
    }
    petreli_ps_store_free(s);
}

/* Key caching: a store that applies and gathers through a sender's key cache ends
 * bit for bit where one without it does, whatever the lists do between calls: come
 * again (the cache serves every key), change a few keys, come shuffled, grow,
 * shrink, repeat a key, carry another server's keys, or meet a cleared store whose
 * slots now hold other keys. Rule Adagrad: a row's result depends on the order of
 * its updates. */
static void test_key_cache(void) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 2, PETREL_PS_ADAGRAD);
    spec.init = PETREL_PS_INIT_UNIFORM;
    spec.init_a = -1;
    spec.init_b = 1;
    petreli_ps_store *cached = make(&spec, 0, 2, 0), *plain = make(&spec, 0, 2, 0);
    petreli_ps_hint hint = {0};
    enum { MAXN = 1500, POOL = 4000 };
    static uint64_t pool[POOL], list[MAXN], tmp[MAXN];
    static float d[MAXN * 2], got_c[MAXN * 2], got_p[MAXN * 2];
    static int64_t sl_c[MAXN], sl_p[MAXN];
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    /* This server's keys, and a few of the other's for rejections. */
    int owned = 0;
    for (uint64_t k = 1; owned < POOL; k++)
        if (petreli_ps_partition(&spec, k, 2) == 0 || k % 97 == 0) pool[owned++] = k;
    int64_t n = 0;
    int served = 0;
    for (int step = 0; step < 300; step++) {
        int what = (int)petrel_rng_below(&rng, 8);
        if (what == 0 || n == 0) { /* a new list, some keys twice */
            n = (int64_t)petrel_rng_below(&rng, MAXN + 1);
            for (int64_t i = 0; i < n; i++) list[i] = pool[petrel_rng_below(&rng, POOL)];
        } else if (what == 1) { /* a few keys changed */
            for (int c = 0; c < 3; c++) list[petrel_rng_below(&rng, (uint64_t)n)] = pool[c * 7];
        } else if (what == 2) { /* shuffled */
            for (int64_t i = n - 1; i > 0; i--) {
                int64_t j = (int64_t)petrel_rng_below(&rng, (uint64_t)i + 1);
                uint64_t t = list[i];
                list[i] = list[j];
                list[j] = t;
            }
        } else if (what == 3) { /* longer or shorter, same start */
            int64_t m = (int64_t)petrel_rng_below(&rng, MAXN + 1);
            for (int64_t i = n; i < m; i++) list[i] = pool[petrel_rng_below(&rng, POOL)];
            n = m;
        } else if (what == 4 && step % 5 == 0) { /* slots renumbered under the cache */
            petreli_ps_store_clear(cached);
            petreli_ps_store_clear(plain);
            /* refill in another order, so that old slots hold other keys */
            for (int64_t i = 0; i < n; i++) tmp[i] = list[n - 1 - i];
            for (int64_t i = 0; i < n * 2; i++) d[i] = 0;
            petrel_err ec = petreli_ps_store_apply(cached, tmp, n, d, step, NULL);
            CHECK(ec == petreli_ps_store_apply(plain, tmp, n, d, step, NULL));
        } /* else: the same list again */
        for (int64_t i = 0; i < n * 2; i++) d[i] = petrel_rng_uniform(&rng) - 0.5f;
        int64_t hits0 = hint.hits;
        petrel_err ec, ep;
        if (petrel_rng_below(&rng, 3) == 0) {
            ec = petreli_ps_store_gather(cached, list, n, got_c, sl_c, &hint);
            ep = petreli_ps_store_gather(plain, list, n, got_p, sl_p, NULL);
            CHECK(ec == ep);
            CHECK(memcmp(got_c, got_p, (size_t)n * 2 * sizeof(float)) == 0);
            CHECK(memcmp(sl_c, sl_p, (size_t)n * sizeof(int64_t)) == 0);
            for (int64_t i = 0; i < n; i++) CHECK(hint.slot1[i] == (uint32_t)(sl_c[i] + 1));
        } else {
            ec = petreli_ps_store_apply(cached, list, n, d, step, &hint);
            ep = petreli_ps_store_apply(plain, list, n, d, step, NULL);
            CHECK(ec == ep);
        }
        CHECK(hint.n == n && hint.hits - hits0 <= n);
        served += hint.hits > hits0;
        CHECK(petreli_ps_store_count(cached) == petreli_ps_store_count(plain));
    }
    CHECK(served > 50); /* the repeated lists were served by the cache */
    int64_t count = petreli_ps_store_count(plain);
    CHECK(memcmp(petreli_ps_store_keys(cached), petreli_ps_store_keys(plain),
                 (size_t)count * sizeof(uint64_t)) == 0);
    CHECK(memcmp(petreli_ps_store_row(cached, 0), petreli_ps_store_row(plain, 0),
                 (size_t)count * 2 * sizeof(float)) == 0);
    CHECK(memcmp(petreli_ps_store_state(cached, 0), petreli_ps_store_state(plain, 0),
                 (size_t)count * 2 * sizeof(float)) == 0);

    /* The same list twice, all keys this server's: the second call is all hits. */
    for (int64_t i = 0; i < 700; i++) list[i] = pool[i] % 97 ? pool[i] : pool[i] + 1;
    int64_t k = 0;
    for (int64_t i = 0; i < 700; i++)
        if (petreli_ps_partition(&spec, list[i], 2) == 0) list[k++] = list[i];
    CHECK_OK(petreli_ps_store_gather(cached, list, k, got_c, NULL, &hint));
    int64_t hits0 = hint.hits;
    CHECK_OK(petreli_ps_store_gather(cached, list, k, got_p, NULL, &hint));
    CHECK(hint.hits - hits0 == k);
    CHECK(memcmp(got_c, got_p, (size_t)k * 2 * sizeof(float)) == 0);
    petreli_ps_hint_free(&hint);
    petreli_ps_store_free(cached);
    petreli_ps_store_free(plain);
}

/* The same key gets the same initial row whichever server holds it, however many
 * servers there are, and in whatever order keys arrive. */
static void test_init_deterministic(void) {
    const int64_t n = 500, C = 4;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    uint64_t keys[500], rev[500];
    for (int64_t i = 0; i < n; i++) keys[i] = petrel_rng_u64(&rng);
    for (int64_t i = 0; i < n; i++) rev[i] = keys[n - 1 - i];
    for (int init = PETREL_PS_INIT_UNIFORM; init <= PETREL_PS_INIT_NORMAL; init++) {
        petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, C, PETREL_PS_SUM);
        spec.init = (petrel_ps_init)init;
        spec.init_a = init == PETREL_PS_INIT_UNIFORM ? -1.0f : 0.0f;
        spec.init_b = init == PETREL_PS_INIT_UNIFORM ? 1.0f : 0.1f;
        spec.init_seed = 7;
        float one[500 * 4], three[500 * 4], row[4];
        petreli_ps_store *s1 = make(&spec, 0, 1, 0);
        CHECK_OK(petreli_ps_store_gather(s1, keys, n, one, NULL, NULL));
        petreli_ps_store *s3[3];
        for (int sv = 0; sv < 3; sv++) s3[sv] = make(&spec, sv, 3, 0);
        for (int64_t i = 0; i < n; i++) { /* reversed order */
            int sv = petreli_ps_partition(&spec, rev[i], 3);
            CHECK_OK(
                petreli_ps_store_gather(s3[sv], &rev[i], 1, three + (n - 1 - i) * C, NULL, NULL));
        }
        CHECK(memcmp(one, three, sizeof one) == 0);
        double mean = 0, lo = 1e9, hi = -1e9;
        for (int64_t i = 0; i < n * C; i++) {
            mean += one[i];
            lo = one[i] < lo ? one[i] : lo;
            hi = one[i] > hi ? one[i] : hi;
        }
        mean /= (double)(n * C);
        if (init == PETREL_PS_INIT_UNIFORM) {
            CHECK(lo >= -1.0 && hi < 1.0 && hi - lo > 1.9);
            CHECK_NEAR(mean, 0.0, 0.05, 0);
        } else {
            CHECK_NEAR(mean, 0.0, 0.01, 0);
            CHECK(hi - lo > 0.4 && hi - lo < 1.2);
        }
        /* Another seed, other values; the same seed again, the same ones. */
        spec.init_seed = 8;
        petreli_ps_store *other = make(&spec, 0, 1, 0);
        CHECK_OK(petreli_ps_store_gather(other, keys, 1, row, NULL, NULL));
        CHECK(memcmp(row, one, sizeof row) != 0);
        petreli_ps_store_free(other);
        for (int sv = 0; sv < 3; sv++) petreli_ps_store_free(s3[sv]);
        petreli_ps_store_free(s1);
    }
    /* Dense rows too: 1 server against 3. */
    petrel_ps_table_spec spec = spec_of(PETREL_PS_DENSE, 50, 3, PETREL_PS_SUM);
    spec.init = PETREL_PS_INIT_NORMAL;
    spec.init_b = 1.0f;
    petreli_ps_store *all = make(&spec, 0, 1, 0);
    for (int sv = 0; sv < 3; sv++) {
        petreli_ps_store *part = make(&spec, sv, 3, 0);
        for (int64_t i = 0; i < petreli_ps_store_count(part); i++) {
            uint64_t key = petreli_ps_store_key(part, i);
            CHECK(memcmp(petreli_ps_store_row(part, i), petreli_ps_store_row(all, (int64_t)key),
                         3 * sizeof(float)) == 0);
        }
        petreli_ps_store_free(part);
    }
    petreli_ps_store_free(all);
}

/* ---- bad keys ------------------------------------------------------------------------ */

static void test_not_ours(void) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    petreli_ps_store *s = make(&spec, 1, 3, 0);
    uint64_t mine = 0, theirs = 0;
    for (uint64_t k = 1; !mine || !theirs; k++) {
        if (petreli_ps_partition(&spec, k, 3) == 1 && !mine) mine = k;
        if (petreli_ps_partition(&spec, k, 3) == 2 && !theirs) theirs = k;
    }
    uint64_t keys[3] = {mine, theirs, mine};
    float d[3] = {1, 2, 3}, out[3] = {9, 9, 9};
    CHECK_ERR(petreli_ps_store_apply(s, keys, 3, d, 0, NULL), PETREL_ERR_INVALID);
    char want[64];
    snprintf(want, sizeof want, "key %llu belongs to server 2", (unsigned long long)theirs);
    CHECK(strstr(petrel_errmsg(), want) != NULL);
    CHECK(strstr(petrel_errmsg(), "1 of 3 keys") != NULL);
    CHECK(petreli_ps_store_count(s) == 1); /* the others were applied */
    CHECK_ERR(petreli_ps_store_gather(s, keys, 3, out, NULL, NULL), PETREL_ERR_INVALID);
    CHECK(out[0] == 4 && out[1] == 0 && out[2] == 4);
    CHECK_ERR(petreli_ps_store_set(s, keys + 1, 1, d), PETREL_ERR_INVALID);
    CHECK(petreli_ps_store_slot(s, theirs, true) == -1);
    CHECK(petreli_ps_store_count(s) == 1);
    petreli_ps_store_free(s);

    /* Dense: beyond the table, and another server's row. */
    spec = spec_of(PETREL_PS_DENSE, 100, 2, PETREL_PS_SUM);
    spec.partition = PETREL_PS_RANGE;
    s = make(&spec, 0, 2, 0);
    uint64_t beyond[2] = {3, 100};
    float dd[4] = {1, 1, 1, 1};
    CHECK_ERR(petreli_ps_store_apply(s, beyond, 2, dd, 0, NULL), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "key 100 is outside the dense table of 100 rows") != NULL);
    CHECK(petreli_ps_store_row(s, 3)[0] == 1);
    uint64_t other = 50;
    CHECK_ERR(petreli_ps_store_apply(s, &other, 1, dd, 0, NULL), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "key 50 belongs to server 1") != NULL);
    petreli_ps_store_free(s);

    /* Specs the store refuses. */
    petreli_ps_store *bad = NULL;
    spec = spec_of(PETREL_PS_DENSE, 0, 2, PETREL_PS_SUM);
    CHECK_ERR(petreli_ps_store_new(&bad, &spec, 0, 1, 0), PETREL_ERR_INVALID);
    spec = spec_of(PETREL_PS_SPARSE, 0, 0, PETREL_PS_SUM);
    CHECK_ERR(petreli_ps_store_new(&bad, &spec, 0, 1, 0), PETREL_ERR_INVALID);
    spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_ADAM);
    spec.optim.lr = 0;
    CHECK_ERR(petreli_ps_store_new(&bad, &spec, 0, 1, 0), PETREL_ERR_INVALID);
    spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_CUSTOM);
    CHECK_ERR(petreli_ps_store_new(&bad, &spec, 0, 1, 0), PETREL_ERR_INVALID);
    spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    CHECK_ERR(petreli_ps_store_new(&bad, &spec, 3, 3, 0), PETREL_ERR_INVALID);
    CHECK(bad == NULL);
}

/* ---- update rules -------------------------------------------------------------------- */

#define RC 5 /* cols of the rule tests */

static const float grads[4][RC] = {{0.5f, -1.0f, 2.0f, 0.0f, -0.25f},
                                   {0.1f, -0.5f, 1.0f, 0.3f, 0.75f},
                                   {-0.2f, 0.4f, -1.5f, 0.0f, 0.5f},
                                   {1.0f, 1.0f, -1.0f, 0.25f, 0.0f}};

/* Steps of cfg on p in double, from nn.h's formulas. */
static void naive(petrel_optim_config c, double *p, double *m, double *v, int t, const float *g) {
    for (int i = 0; i < RC; i++) {
        double gi = g[i] + (double)c.weight_decay * p[i];
        switch (c.kind) {
        case PETREL_OPTIM_SGD:
            p[i] -= c.lr * gi;
            break;
        case PETREL_OPTIM_MOMENTUM:
            m[i] = c.momentum * m[i] + gi;
            p[i] -= c.lr * m[i];
            break;
        case PETREL_OPTIM_ADAGRAD:
            m[i] += gi * gi;
            p[i] -= c.lr * gi / (sqrt(m[i]) + c.eps);
            break;
        case PETREL_OPTIM_ADAM:
            m[i] = c.beta1 * m[i] + (1 - c.beta1) * gi;
            v[i] = c.beta2 * v[i] + (1 - c.beta2) * gi * gi;
            p[i] -= c.lr * (m[i] / (1 - pow(c.beta1, t))) /
                    (sqrt(v[i] / (1 - pow(c.beta2, t))) + c.eps);
            break;
        default:
            break;
        }
    }
}

static void check_rule(petrel_ps_rule rule, petrel_optim_kind kind, float lr, float wd) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, RC, rule);
    spec.optim = petrel_optim_config_default(kind, lr);
    spec.optim.weight_decay = wd;
    spec.init = PETREL_PS_INIT_UNIFORM;
    spec.init_a = -1;
    spec.init_b = 1;
    petreli_ps_store *s = make(&spec, 0, 1, 0);
    int64_t sf = kind == PETREL_OPTIM_SGD ? 0 : RC;
    if (kind == PETREL_OPTIM_ADAM) sf = 2 * RC;
    CHECK(petreli_ps_state_floats(&spec) == sf);
    /* Key 5 gets four steps; key 9 one, after key 5's third (Adam's bias
     * correction counts per row). */
    const uint64_t a = 5, b = 9;
    float pa[RC], pb[RC];
    CHECK_OK(petreli_ps_store_gather(s, &a, 1, pa, NULL, NULL));
    CHECK_OK(petreli_ps_store_gather(s, &b, 1, pb, NULL, NULL));
    double da[RC], ma[RC] = {0}, va[RC] = {0}, db[RC], mb[RC] = {0}, vb[RC] = {0};
    for (int i = 0; i < RC; i++) da[i] = pa[i], db[i] = pb[i];
    petrel_optim *oa, *ob;
    petrel_optim_config oc = spec.optim;
    CHECK_OK(petrel_optim_new(&oa, oc, RC));
    CHECK_OK(petrel_optim_new(&ob, oc, RC));
    float got[RC];
    for (int t = 0; t < 4; t++) {
        CHECK_OK(petreli_ps_store_apply(s, &a, 1, grads[t], t, NULL));
        petrel_optim_step(oa, pa, grads[t]);
        naive(oc, da, ma, va, t + 1, grads[t]);
        CHECK_OK(petreli_ps_store_gather(s, &a, 1, got, NULL, NULL));
        CHECK_TENSOR_NEAR(got, pa, RC, 1e-6, 0);
        for (int i = 0; i < RC; i++) CHECK_NEAR(got[i], da[i], 1e-6, 1e-5);
        if (t == 2) {
            CHECK_OK(petreli_ps_store_apply(s, &b, 1, grads[3], 0, NULL));
            petrel_optim_step(ob, pb, grads[3]);
            naive(oc, db, mb, vb, 1, grads[3]);
        }
    }
    CHECK_OK(petreli_ps_store_gather(s, &b, 1, got, NULL, NULL));
    CHECK_TENSOR_NEAR(got, pb, RC, 1e-6, 0);
    for (int i = 0; i < RC; i++) CHECK_NEAR(got[i], db[i], 1e-6, 1e-5);
    int64_t sa = petreli_ps_store_slot(s, a, false);
    CHECK(petreli_ps_store_steps(s, sa) == (kind == PETREL_OPTIM_ADAM ? 4 : 0));
    if (kind != PETREL_OPTIM_SGD) {
        const float *st = petreli_ps_store_state(s, sa);
        for (int i = 0; i < RC; i++) CHECK_NEAR(st[i], ma[i], 1e-6, 1e-5);
        if (kind == PETREL_OPTIM_ADAM)
            for (int i = 0; i < RC; i++) CHECK_NEAR(st[RC + i], va[i], 1e-7, 1e-5);
    } else {
        CHECK(petreli_ps_store_state(s, sa) == NULL);
    }
    petrel_optim_free(oa);
    petrel_optim_free(ob);
    petreli_ps_store_free(s);
}

static void test_rule_sgd(void) {
    check_rule(PETREL_PS_SGD, PETREL_OPTIM_SGD, 0.1f, 0);
    check_rule(PETREL_PS_SGD, PETREL_OPTIM_SGD, 0.1f, 0.01f);
}

static void test_rule_momentum(void) {
    check_rule(PETREL_PS_MOMENTUM, PETREL_OPTIM_MOMENTUM, 0.05f, 0);
    check_rule(PETREL_PS_MOMENTUM, PETREL_OPTIM_MOMENTUM, 0.05f, 0.1f);
}

static void test_rule_adagrad(void) {
    check_rule(PETREL_PS_ADAGRAD, PETREL_OPTIM_ADAGRAD, 0.1f, 0);
    check_rule(PETREL_PS_ADAGRAD, PETREL_OPTIM_ADAGRAD, 0.1f, 0.05f);
}

static void test_rule_adam(void) {
    check_rule(PETREL_PS_ADAM, PETREL_OPTIM_ADAM, 0.01f, 0);
    check_rule(PETREL_PS_ADAM, PETREL_OPTIM_ADAM, 0.01f, 0.1f);
}

/* The rule comes from spec.rule, whatever spec.optim.kind says. */
static void test_rule_overrides_optim_kind(void) {
    petrel_ps_table_spec spec = spec_of(PETREL_PS_DENSE, 1, 1, PETREL_PS_MOMENTUM);
    spec.optim = petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.5f);
    spec.optim.momentum = 0.5f;
    petreli_ps_store *s = make(&spec, 0, 1, 0);
    uint64_t k = 0;
    float g = 1;
    CHECK_OK(petreli_ps_store_apply(s, &k, 1, &g, 0, NULL));
    CHECK_OK(petreli_ps_store_apply(s, &k, 1, &g, 0, NULL));
    /* v = 1, p = -0.5; v = 1.5, p = -1.25 */
    CHECK_NEAR(petreli_ps_store_row(s, 0)[0], -1.25, 1e-7, 0);
    petreli_ps_store_free(s);
}

typedef struct custom_log {
    int calls;
    uint64_t last_key;
    int64_t last_clock, last_cols;
} custom_log;

/* row += delta * (number of earlier updates of this row + 1); state[0] counts
 * them, state[1] keeps the last delta's first value. */
static void custom_rule(void *ctx, uint64_t key, float *row, float *state, const float *delta,
                        int64_t cols, int64_t clock) {
    custom_log *log = ctx;
    log->calls++;
    log->last_key = key;
    log->last_clock = clock;
    log->last_cols = cols;
    state[0] += 1;
    state[1] = delta[0];
    for (int64_t j = 0; j < cols; j++) row[j] += delta[j] * state[0];
}

static void test_rule_custom(void) {
    custom_log log = {0};
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 2, PETREL_PS_CUSTOM);
    spec.custom = custom_rule;
    spec.custom_ctx = &log;
    spec.custom_state_floats = 2;
    CHECK(petreli_ps_state_floats(&spec) == 2);
    petreli_ps_store *s = make(&spec, 0, 1, 0);
    uint64_t keys[3] = {11, 12, 11};
    float d[6] = {1, 2, 10, 20, 3, 4};
    CHECK_OK(petreli_ps_store_apply(s, keys, 3, d, 17, NULL));
    CHECK(log.calls == 3 && log.last_key == 11 && log.last_clock == 17 && log.last_cols == 2);
    CHECK_OK(petreli_ps_store_apply(s, keys + 1, 1, d, 18, NULL));
    const float *r11 = petreli_ps_store_row(s, petreli_ps_store_slot(s, 11, false));
    const float *r12 = petreli_ps_store_row(s, petreli_ps_store_slot(s, 12, false));
    CHECK(r11[0] == 1 + 3 * 2 && r11[1] == 2 + 4 * 2);
    CHECK(r12[0] == 10 + 1 * 2 && r12[1] == 20 + 2 * 2);
    const float *st = petreli_ps_store_state(s, petreli_ps_store_slot(s, 11, false));
    CHECK(st[0] == 2 && st[1] == 3);
    petreli_ps_store_free(s);
}

/* ---- snapshot files ------------------------------------------------------------------ */

static bool same_store(petreli_ps_store *a, petreli_ps_store *b, int64_t cols, int64_t sf) {
    if (petreli_ps_store_count(a) != petreli_ps_store_count(b)) return false;
    for (int64_t i = 0; i < petreli_ps_store_count(a); i++) {
        if (petreli_ps_store_key(a, i) != petreli_ps_store_key(b, i)) return false;
        if (memcmp(petreli_ps_store_row(a, i), petreli_ps_store_row(b, i),
                   (size_t)cols * sizeof(float)) != 0)
            return false;
        if (sf && memcmp(petreli_ps_store_state(a, i), petreli_ps_store_state(b, i),
                         (size_t)sf * sizeof(float)) != 0)
            return false;
        if (petreli_ps_store_steps(a, i) != petreli_ps_store_steps(b, i)) return false;
    }
    return true;
}

/* A sparse Adam store on server 1 of 2 with n rows, some updated several times. */
static petreli_ps_store *filled(petrel_ps_table_spec *spec, int64_t n) {
    *spec = spec_of(PETREL_PS_SPARSE, 0, 3, PETREL_PS_ADAM);
    spec->optim = petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.01f);
    spec->init = PETREL_PS_INIT_NORMAL;
    spec->init_b = 0.1f;
    petreli_ps_store *s = make(spec, 1, 2, 8);
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        uint64_t key = petrel_rng_below(&rng, 5000);
        if (petreli_ps_partition(spec, key, 2) != 1) continue;
        float g[3] = {petrel_rng_normal(&rng), petrel_rng_normal(&rng), 1.0f};
        CHECK_OK(petreli_ps_store_apply(s, &key, 1, g, 0, NULL));
    }
    return s;
}

static void test_snapshot_round_trip(void) {
    char path[512];
    path_of(path, sizeof path, "sparse.pst");
    petrel_ps_table_spec spec;
    petreli_ps_store *s = filled(&spec, 3000);
    CHECK(petreli_ps_store_count(s) > 500);
    CHECK_OK(petreli_ps_store_save(s, path));
    CHECK(petreli_ps_store_file_ok(path));
    petreli_ps_store *t = make(&spec, 1, 2, 8);
    uint64_t k = 0;
    while (petreli_ps_partition(&spec, k, 2) != 1) k++;
    CHECK(petreli_ps_store_slot(t, k, true) == 0); /* replaced by the load */
    CHECK_OK(petreli_ps_store_load(t, path));
    CHECK(same_store(s, t, 3, 6));
    /* Keys find their slots in the loaded index, and the rows keep training
     * (Adam's step counts came along). */
    for (int64_t i = 0; i < petreli_ps_store_count(s); i++)
        CHECK(petreli_ps_store_slot(t, petreli_ps_store_key(s, i), false) == i);
    uint64_t key = petreli_ps_store_key(s, 3);
    float g[3] = {0.5f, -0.5f, 0.25f};
    CHECK_OK(petreli_ps_store_apply(s, &key, 1, g, 0, NULL));
    CHECK_OK(petreli_ps_store_apply(t, &key, 1, g, 0, NULL));
    CHECK(same_store(s, t, 3, 6));
    petreli_ps_store_free(t);
    petreli_ps_store_free(s);

    /* Dense, momentum, hash partition over 3 servers. */
    path_of(path, sizeof path, "dense.pst");
    spec = spec_of(PETREL_PS_DENSE, 300, 4, PETREL_PS_MOMENTUM);
    spec.init = PETREL_PS_INIT_UNIFORM;
    spec.init_b = 1;
    s = make(&spec, 2, 3, 0);
    for (int64_t i = 0; i < petreli_ps_store_count(s); i += 3) {
        uint64_t dk = petreli_ps_store_key(s, i);
        float dg[4] = {1, 2, 3, (float)i};
        CHECK_OK(petreli_ps_store_apply(s, &dk, 1, dg, 0, NULL));
    }
    CHECK_OK(petreli_ps_store_save(s, path));
    t = make(&spec, 2, 3, 0);
    CHECK(!same_store(s, t, 4, 4));
    CHECK_OK(petreli_ps_store_load(t, path));
    CHECK(same_store(s, t, 4, 4));
    petreli_ps_store_free(t);
    petreli_ps_store_free(s);

    /* An empty store. */
    path_of(path, sizeof path, "empty.pst");
    spec = spec_of(PETREL_PS_SPARSE, 0, 2, PETREL_PS_SUM);
    s = make(&spec, 0, 1, 0);
    CHECK_OK(petreli_ps_store_save(s, path));
    t = make(&spec, 0, 1, 0);
    CHECK(petreli_ps_store_slot(t, 5, true) == 0);
    CHECK_OK(petreli_ps_store_load(t, path));
    CHECK(petreli_ps_store_count(t) == 0 && petreli_ps_store_slot(t, 5, false) == -1);
    petreli_ps_store_free(t);
    petreli_ps_store_free(s);
}

/* load(path) fails with FORMAT naming path and `why`, and t is as it was. */
static void check_rejected(petreli_ps_store *t, petreli_ps_store *before, const char *path,
                           const char *why, int64_t cols, int64_t sf) {
    CHECK_ERR(petreli_ps_store_load(t, path), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), path) != NULL);
    if (!strstr(petrel_errmsg(), why)) printf("# message: %s\n", petrel_errmsg());
    CHECK(strstr(petrel_errmsg(), why) != NULL);
    CHECK(same_store(t, before, cols, sf));
}

static void test_snapshot_rejects(void) {
    char good[512], bad[512];
    path_of(good, sizeof good, "good.pst");
    path_of(bad, sizeof bad, "bad.pst");
    petrel_ps_table_spec spec;
    petreli_ps_store *s = filled(&spec, 500);
    CHECK_OK(petreli_ps_store_save(s, good));
    /* The victim holds rows of its own; a copy shows they stay. */
    petreli_ps_store *t = filled(&spec, 50), *before = filled(&spec, 50);
    size_t len;
    unsigned char *b = check_read_file(good, &len);

    check_write_file(bad, b, len - 1);
    CHECK(!petreli_ps_store_file_ok(bad));
    check_rejected(t, before, bad, "truncated or corrupted", 3, 6);
    check_write_file(bad, b, 40);
    check_rejected(t, before, bad, "truncated", 3, 6);
    check_write_file(bad, b, 0);
    check_rejected(t, before, bad, "truncated", 3, 6);

    b[len / 2] ^= 0x10;
    check_write_file(bad, b, len);
    CHECK(!petreli_ps_store_file_ok(bad));
    check_rejected(t, before, bad, "checksum mismatch", 3, 6);
    b[len / 2] ^= 0x10;

    b[0] = 'X';
    check_write_file(bad, b, len);
    check_rejected(t, before, bad, "not a petrel table snapshot", 3, 6);
    b[0] = 'P';
    check_write_file(bad, b, len);
    CHECK(petreli_ps_store_file_ok(bad)); /* restored */

    /* Well-formed files of other tables. */
    petrel_ps_table_spec wrong = spec;
    wrong.cols = 4;
    petreli_ps_store *w = make(&wrong, 1, 2, 0);
    CHECK_OK(petreli_ps_store_save(w, bad));
    petreli_ps_store_free(w);
    CHECK(petreli_ps_store_file_ok(bad));
    check_rejected(t, before, bad, "cols 4, this one has 3", 3, 6);
    wrong = spec;
    wrong.rule = PETREL_PS_ADAGRAD;
    w = make(&wrong, 1, 2, 0);
    CHECK_OK(petreli_ps_store_save(w, bad));
    petreli_ps_store_free(w);
    check_rejected(t, before, bad, "rule 3, this one has 4", 3, 6);
    wrong = spec;
    wrong.kind = PETREL_PS_DENSE;
    wrong.rows = 10;
    w = make(&wrong, 1, 2, 0);
    CHECK_OK(petreli_ps_store_save(w, bad));
    petreli_ps_store_free(w);
    check_rejected(t, before, bad, "kind 0, this one has 1", 3, 6);
    w = make(&spec, 0, 2, 0); /* another server's part */
    CHECK_OK(petreli_ps_store_save(w, bad));
    petreli_ps_store_free(w);
    check_rejected(t, before, bad, "server 0, this one has 1", 3, 6);

    CHECK_ERR(petreli_ps_store_load(t, "/nonexistent/petrel.pst"), PETREL_ERR_IO);
    CHECK(strstr(petrel_errmsg(), "/nonexistent/petrel.pst") != NULL);
    CHECK(!petreli_ps_store_file_ok("/nonexistent/petrel.pst"));
    CHECK(same_store(t, before, 3, 6));
    free(b);
    petreli_ps_store_free(before);
    petreli_ps_store_free(t);
    petreli_ps_store_free(s);
}

/* ---- out of memory ------------------------------------------------------------------- */

/* Every key in the index finds its own slot, and every slot its key. */
static bool consistent(petreli_ps_store *s) {
    for (int64_t i = 0; i < petreli_ps_store_count(s); i++)
        if (petreli_ps_store_slot(s, petreli_ps_store_key(s, i), false) != i) return false;
    return true;
}

static void test_out_of_memory(void) {
    petrel_alloc_stats start = petrel_alloc_get_stats();
    enum { N = 3000 };
    uint64_t keys[N];
    float d[N];
    for (int i = 0; i < N; i++) keys[i] = (uint64_t)i * 7919, d[i] = 1;
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 1, PETREL_PS_SUM);
    petreli_ps_store *s = make(&spec, 0, 1, 4);
    CHECK_OK(petreli_ps_store_apply(s, keys, 10, d, 0, NULL));
    /* Fail the k-th allocation of a push of new keys, for every k until the
     * push needs no more: NOMEM, the store consistent, the rows before the
     * failure applied and the rows after it untouched. */
    int failures = 0;
    for (int64_t k = 0;; k++) {
        int64_t count = petreli_ps_store_count(s);
        petrel_alloc_fail_after(k);
        petrel_err err = petreli_ps_store_apply(s, keys, N, d, 0, NULL);
        petrel_alloc_fail_after(-1);
        CHECK(consistent(s));
        if (err == PETREL_OK) break;
        CHECK(err == PETREL_ERR_NOMEM);
        CHECK(petreli_ps_store_count(s) >= count);
        failures++;
        if (k > 100) break;
    }
    CHECK(failures > 0);
    CHECK(petreli_ps_store_count(s) == N);
    /* Each attempt applied a prefix of keys, the last one all of them. */
    float out[N];
    CHECK_OK(petreli_ps_store_gather(s, keys, N, out, NULL, NULL));
    for (int i = 1; i < N; i++) CHECK(out[i] <= out[i - 1]);
    CHECK(out[N - 1] >= 1 && out[0] == (float)(failures + 2));

    /* Creation, save and load fail cleanly too. */
    char path[512], path2[512];
    path_of(path, sizeof path, "oom.pst");
    path_of(path2, sizeof path2, "oom2.pst");
    CHECK_OK(petreli_ps_store_save(s, path));
    petrel_ps_table_spec dense = spec_of(PETREL_PS_DENSE, 1000, 2, PETREL_PS_ADAM);
    dense.optim = petrel_optim_config_default(PETREL_OPTIM_ADAM, 0.1f);
    for (int64_t k = 0; k < 8; k++) {
        petreli_ps_store *x = NULL;
        petrel_alloc_fail_after(k);
        petrel_err err = petreli_ps_store_new(&x, &dense, 1, 3, 16);
        petrel_alloc_fail_after(-1);
        CHECK(err == PETREL_OK || (err == PETREL_ERR_NOMEM && x == NULL));
        petreli_ps_store_free(x);

        petreli_ps_store *y = make(&spec, 0, 1, 4);
        uint64_t one = 99;
        CHECK_OK(petreli_ps_store_apply(y, &one, 1, d, 0, NULL));
        petrel_alloc_fail_after(k);
        err = petreli_ps_store_load(y, path);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            CHECK(same_store(y, s, 1, 0));
        } else {
            CHECK(err == PETREL_ERR_NOMEM);
            CHECK(petreli_ps_store_count(y) == 1 && petreli_ps_store_slot(y, 99, false) == 0);
        }
        petrel_alloc_fail_after(k);
        err = petreli_ps_store_save(y, path2);
        petrel_alloc_fail_after(-1);
        CHECK(err == PETREL_OK || err == PETREL_ERR_NOMEM);
        CHECK(err == PETREL_ERR_NOMEM ? access(path2, F_OK) != 0 || petreli_ps_store_file_ok(path2)
                                      : petreli_ps_store_file_ok(path2));
        petreli_ps_store_free(y);
    }
    petreli_ps_store_free(s);
    CHECK(petrel_alloc_get_stats().live_bytes == start.live_bytes);
}

/* After petreli_ps_store_reserve(s, n), a call that makes up to n rows allocates
 * nothing, so it cannot stop half way for memory (client.c merges a worker's
 * appended pushes into its log this way). A reserve that fails changes no row. */
static void test_reserve(void) {
    petrel_alloc_stats start = petrel_alloc_get_stats();
    enum { N = 6000, DISTINCT = 2500 };
    static uint64_t keys[N];
    static float d[N * 2];
    for (int i = 0; i < N; i++) {
        keys[i] = (uint64_t)(i % DISTINCT) * 7919; /* repeats, as appended pushes have */
        d[2 * i] = 1;
        d[2 * i + 1] = (float)(i % 5);
    }
    petrel_ps_table_spec spec = spec_of(PETREL_PS_SPARSE, 0, 2, PETREL_PS_SUM);
    petreli_ps_store *s = make(&spec, 0, 1, 4), *ref = make(&spec, 0, 1, 4);
    CHECK_OK(petreli_ps_store_apply(s, keys, 10, d, 0, NULL));
    CHECK_OK(petreli_ps_store_apply(ref, keys, 10, d, 0, NULL));
    int failures = 0;
    for (int64_t k = 0; k < 100; k++) {
        petrel_alloc_fail_after(k);
        petrel_err err = petreli_ps_store_reserve(s, N);
        petrel_alloc_fail_after(-1);
        CHECK(consistent(s) && same_store(s, ref, 2, 0));
        if (err == PETREL_OK) break;
        CHECK(err == PETREL_ERR_NOMEM);
        failures++;
    }
    CHECK(failures > 0);
    uint64_t calls = petrel_alloc_get_stats().calls;
    CHECK_OK(petreli_ps_store_apply(s, keys, N, d, 0, NULL));
    CHECK(petrel_alloc_get_stats().calls == calls);
    CHECK_OK(petreli_ps_store_apply(ref, keys, N, d, 0, NULL));
    CHECK(petreli_ps_store_count(s) == DISTINCT && same_store(s, ref, 2, 0));
    CHECK(petreli_ps_store_reserve(s, 0) == PETREL_OK);
    petreli_ps_store_free(s);
    petreli_ps_store_free(ref);

    petrel_ps_table_spec dense = spec_of(PETREL_PS_DENSE, 100, 1, PETREL_PS_SUM);
    petreli_ps_store *x = make(&dense, 0, 1, 0);
    calls = petrel_alloc_get_stats().calls;
    CHECK_OK(petreli_ps_store_reserve(x, 1000)); /* its rows all exist */
    CHECK(petrel_alloc_get_stats().calls == calls);
    petreli_ps_store_free(x);
    CHECK(petrel_alloc_get_stats().live_bytes == start.live_bytes);
}

int main(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    seed = check_seed(20240611);
    snprintf(dir, sizeof dir, "/tmp/petrel-store-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    RUN_SEEDED(test_partition_hash_balance, seed);
    RUN_SEEDED(test_partition_range, seed);
    RUN(test_dense_precreated);
    RUN(test_sparse_first_touch);
    RUN(test_clear);
    RUN_SEEDED(test_key_cache, seed);
    RUN_SEEDED(test_init_deterministic, seed);
    RUN(test_not_ours);
    RUN(test_rule_sgd);
    RUN(test_rule_momentum);
    RUN(test_rule_adagrad);
    RUN(test_rule_adam);
    RUN(test_rule_overrides_optim_kind);
    RUN(test_rule_custom);
    RUN_SEEDED(test_snapshot_round_trip, seed);
    RUN_SEEDED(test_snapshot_rejects, seed);
    RUN(test_out_of_memory);
    RUN(test_reserve);
    CHECK_NO_LEAKS(before);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return CHECK_DONE();
}
