/* The collectives over the in-process transport: jobs of 1 to 5 nodes on threads.
 * Every collective and reduction against a reference computed here in double, for
 * sizes around the member count, odd sizes and 4 MiB, with each allreduce algorithm
 * and float16 on the wire; identical bits on every member; mismatched calls, a
 * member that never calls, one that failed the call before and left, and two
 * communicators at once on one net. Also float16 conversion, exhaustively over the
 * 65536 halves. */
#include "check.h"
#include "inprocjob.h"
#include "coll/coll_impl.h"
#include "petrel/coll.h"

#include <pthread.h>

#define MAX_NODES 8
#define MAX_CASES 4096

typedef struct job job;
typedef void (*node_fn)(job *j, petrel_net *net, int rank);

struct job {
    int size;
    node_fn fn;
    uint64_t seed;
    /* per case, per member: a hash of the result, to compare the members' bits */
    uint64_t *hash;
    int cases[MAX_NODES];
    /* failure tests: what each member's call returned, its message, and how long
     * it took */
    petrel_err err[MAX_NODES];
    char msg[MAX_NODES][1024];
    double took_ms[MAX_NODES];
    int param; /* a test's own knob */
};

static void node_main(void *ctx, petrel_net *net, int rank) {
    job *j = ctx;
    j->fn(j, net, rank);
}

static void run_job(job *j) {
    j->hash = calloc((size_t)MAX_CASES * MAX_NODES, sizeof *j->hash);
    CHECK_OK(inprocjob_run(j->size, 0, NULL, node_main, j));
    /* every member ran the same cases and ended with the same bits */
    for (int r = 1; r < j->size; r++) CHECK(j->cases[r] == j->cases[0]);
    for (int k = 0; k < j->cases[0] && k < MAX_CASES; k++)
        for (int r = 1; r < j->size; r++)
            if (j->hash[k * MAX_NODES + r] != j->hash[k * MAX_NODES]) {
                check_fail(__FILE__, __LINE__, "case %d: rank %d's result differs from rank 0's", k,
                           r);
                k = MAX_CASES;
                break;
            }
    free(j->hash);
}

static void record(job *j, int rank, const void *data, size_t bytes) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = data;
    for (size_t i = 0; i < bytes; i++) h = (h ^ p[i]) * 1099511628211ull;
    int k = j->cases[rank]++;
    if (k < MAX_CASES) j->hash[k * MAX_NODES + rank] = h;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Member rank's element i: k / 256 for an integer |k| <= 1000, so that float32 sums
 * of a few are exact whatever the order; frac adds 1/7, which float16 cannot hold. */
static float gen(uint64_t seed, int rank, size_t i, bool frac) {
    uint64_t h = mix(seed ^ mix((uint64_t)rank * 1000003u + i));
    float v = (float)((int)(h % 2001) - 1000) / 256.0f;
    return frac ? v + 1.0f / 7.0f : v;
}

static const char *op_names[] = {"sum", "avg", "max"};

/* op over members of gen(., i), in double. */
static double reference(uint64_t seed, int P, size_t i, bool frac, petrel_reduce_op op) {
    double acc = op == PETREL_REDUCE_MAX ? -INFINITY : 0;
    for (int r = 0; r < P; r++) {
        double v = gen(seed, r, i, frac);
        acc = op == PETREL_REDUCE_MAX ? (v > acc ? v : acc) : acc + v;
    }
    return op == PETREL_REDUCE_AVG ? acc / P : acc;
}

/* float32: exact (sums of k/256 are); float16: a rounding of at most 2^-11 of a
 * partial sum (at most 4.2 P) per hop, P hops. */
static double tolerance(int P, bool f16) {
    return f16 ? P * (4.2 * P) / 2048.0 + 1e-6 : 0;
}

static petrel_comm *make_comm(petrel_net *net, int P, uint32_t id, petrel_comm_config cfg) {
    int ranks[MAX_NODES];
    for (int r = 0; r < P; r++) ranks[r] = r;
    petrel_comm *c = NULL;
    CHECK_OK(petrel_comm_new(&c, net, ranks, P, id, cfg));
    return c;
}

/* ---- float16 ---------------------------------------------------------------------- */

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_f16_roundtrip_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = petrel_f16_to_f32((uint16_t)h);
        uint16_t back = petrel_f32_to_f16(f);
        bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        /* NaNs come back quiet (the top mantissa bit set), payload and sign kept */
        uint16_t want = nan ? (uint16_t)(h | 0x200) : (uint16_t)h;
        if (back != want || (nan != (f != f))) {
            if (!bad++)
                check_fail(__FILE__, __LINE__, "half %04x -> %08x -> %04x", h, bits(f), back);
        }
    }
    /* values: the largest finite, the smallest subnormal and normal, signed zero */
    CHECK(petrel_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(petrel_f16_to_f32(0x0001) == ldexpf(1, -24));
    CHECK(petrel_f16_to_f32(0x0400) == ldexpf(1, -14));
    CHECK(petrel_f16_to_f32(0x03ff) == ldexpf(1023, -24));
    CHECK(bits(petrel_f16_to_f32(0x8000)) == 0x80000000u);
    CHECK(petrel_f16_to_f32(0x7c00) == INFINITY && petrel_f16_to_f32(0xfc00) == -INFINITY);
    CHECK(petrel_f16_to_f32(0x3c00) == 1.0f && petrel_f16_to_f32(0xc000) == -2.0f);
}

/* Round to nearest even in double: the reference for float -> half -> float. */
static float round_half_ref(float f) {
    if (f != f) return f;
    double a = fabs((double)f);
    if (a >= 65520.0) return copysignf(INFINITY, f);
    if (a == 0) return f;
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    int E = e - 1 < -14 ? -14 : e - 1;
    double ulp = ldexp(1, E - 10);
    double q = nearbyint(a / ulp); /* exact quotient; ties to even */
    return copysignf((float)(q * ulp), f);
}

static void test_f16_rounding(void) {
    struct {
        float f;
        uint16_t h;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {65504.0f, 0x7bff},
        {65519.99f, 0x7bff},
        {65520.0f, 0x7c00}, /* the tie rounds to even: past the largest finite */
        {1e9f, 0x7c00},
        {-1e9f, 0xfc00},
        {INFINITY, 0x7c00},
        {ldexpf(1, -24), 0x0001},
        {ldexpf(1, -25), 0x0000},                  /* tie between 0 and 2^-24: even */
        {from_bits(0x33000001), 0x0001},           /* just above the tie */
        {ldexpf(3, -25), 0x0002},                  /* 1.5 2^-24: tie, to even 2 */
        {ldexpf(5, -25), 0x0002},                  /* 2.5 2^-24: tie, to even 2 */
        {ldexpf(1, -14) - ldexpf(1, -25), 0x0400}, /* rounds up into the normals */
        {1.0f + ldexpf(1, -11), 0x3c00},           /* tie, to even */
        {1.0f + ldexpf(3, -11), 0x3c02},           /* tie, to even (up) */
        {from_bits(0x7fc00000), 0x7e00},           /* quiet NaN */
        {from_bits(0xff800001), 0xfe00},           /* signaling NaN: quiet, sign kept */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint16_t h = petrel_f32_to_f16(cases[k].f);
        if (h != cases[k].h)
            check_fail(__FILE__, __LINE__, "f32_to_f16(%a = %08x) = %04x, expected %04x",
                       (double)cases[k].f, bits(cases[k].f), h, cases[k].h);
    }
    /* a sweep over all float32 exponents against the double reference, and the bulk
     * (F16C) conversions against the scalar ones */
    enum { B = 4096 };
    static float in[B], back[B], ref_back[B];
    static uint16_t out[B];
    int bad = 0, n = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 997) {
        float f = from_bits((uint32_t)u);
        uint16_t h = petrel_f32_to_f16(f);
        float got = petrel_f16_to_f32(h), want = round_half_ref(f);
        bool same = f != f ? got != got : bits(got) == bits(want);
        if (!same && !bad++)
            check_fail(__FILE__, __LINE__, "%08x -> %04x -> %a, expected %a", (uint32_t)u, h,
                       (double)got, (double)want);
        in[n++] = f;
        if (n == B || u + 997 >= (1ull << 32)) {
            memcpy(back, in, sizeof in);
            petreli_coll_encode_f16(out, back, (size_t)n, true);
            for (int i = 0; i < n; i++) {
                uint16_t s = petrel_f32_to_f16(in[i]);
                ref_back[i] = petrel_f16_to_f32(s);
                if ((out[i] != s || bits(back[i]) != bits(ref_back[i])) && !bad++)
                    check_fail(__FILE__, __LINE__, "bulk %08x -> %04x, scalar %04x", bits(in[i]),
                               out[i], s);
            }
            n = 0;
        }
    }
    /* bulk decode and reduce of every half, against the scalar conversion */
    static uint16_t all[65536];
    static float dec[65536], base[65536], red[65536];
    for (uint32_t h = 0; h < 65536; h++) {
        all[h] = (uint16_t)h;
        base[h] = (float)((int)(h % 7) - 3);
    }
    petreli_coll_decode(dec, all, true, 65536);
    for (uint32_t h = 0; h < 65536; h++)
        if (bits(dec[h]) != bits(petrel_f16_to_f32((uint16_t)h)) && !bad++)
            check_fail(__FILE__, __LINE__, "bulk decode of %04x", h);
    for (int op = 0; op < 3; op += 2)
        for (int first = 0; first < 2; first++) {
            petreli_coll_reduce(red, base, all, true, 65536, (petrel_reduce_op)op, first);
            for (uint32_t h = 0; h < 65536; h++) {
                float v = petrel_f16_to_f32((uint16_t)h), b = base[h], w;
                if (op == PETREL_REDUCE_SUM)
                    w = b + v;
                else if (first)
                    w = v > b || v != v ? v : b;
                else
                    w = b > v || b != b ? b : v;
                if (bits(red[h]) != bits(w) && !bad++)
                    check_fail(__FILE__, __LINE__, "bulk reduce %s of %04x", op_names[op], h);
            }
        }
}

/* ---- communicators ---------------------------------------------------------------- */

static void basics_fn(job *j, petrel_net *net, int r) {
    (void)j;
    petrel_comm_config cfg = petrel_comm_config_default();
    CHECK(cfg.timeout_ms == 30000 && cfg.algo == PETREL_ALGO_AUTO);
    CHECK(cfg.ring_min_bytes == 64 << 10 && cfg.chunk_bytes == 256 << 10 && !cfg.fp16_wire);
    petrel_comm *c = (petrel_comm *)&cfg; /* must stay untouched on failure */
    int dup[] = {0, 1, 1}, out_of_range[] = {0, 1, 7}, without_me[] = {(r + 1) % 3};
    CHECK_ERR(petrel_comm_new(&c, net, dup, 3, 0, cfg), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "listed twice") != NULL);
    CHECK_ERR(petrel_comm_new(&c, net, out_of_range, 3, 0, cfg), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_comm_new(&c, net, without_me, 1, 0, cfg), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_comm_new(&c, net, dup, 0, 0, cfg), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_comm_new(&c, net, dup, 2, 65536, cfg), PETREL_ERR_INVALID);
    petrel_comm_config bad = cfg;
    bad.timeout_ms = 0;
    CHECK_ERR(petrel_comm_new(&c, net, dup, 2, 0, bad), PETREL_ERR_INVALID);
    bad = cfg;
    bad.chunk_bytes = 8;
    CHECK_ERR(petrel_comm_new(&c, net, dup, 2, 0, bad), PETREL_ERR_INVALID);
    CHECK(c == (petrel_comm *)&cfg);

    /* a communicator of this node alone: everything local, no messages (its byte
     * counts stay 0) */
    int me[] = {r};
    petrel_comm *solo = NULL;
    CHECK_OK(petrel_comm_new(&solo, net, me, 1, 100 + (uint32_t)r, cfg));
    CHECK(petrel_comm_rank(solo) == 0 && petrel_comm_size(solo) == 1);
    float x[3] = {1, 2, 3}, g[3], s[3] = {4, 5, 6};
    CHECK_OK(petrel_allreduce(solo, x, 3, PETREL_REDUCE_AVG));
    CHECK(x[0] == 1 && x[2] == 3);
    CHECK_OK(petrel_broadcast(solo, x, 3, 0));
    CHECK_OK(petrel_allgather(solo, x, 3, g));
    CHECK(g[1] == 2);
    CHECK_OK(petrel_reduce_scatter(solo, s, 3, g, PETREL_REDUCE_SUM));
    CHECK(g[0] == 4 && g[2] == 6);
    CHECK_OK(petrel_comm_barrier(solo));
    CHECK_OK(petrel_allreduce(solo, NULL, 0, PETREL_REDUCE_SUM));
    CHECK_ERR(petrel_broadcast(solo, x, 3, 1), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_allreduce(solo, x, 3, (petrel_reduce_op)7), PETREL_ERR_INVALID);
    petrel_comm_stats st = petrel_comm_get_stats(solo);
    CHECK(st.calls == 6 && st.bytes_sent == 0 && st.bytes_received == 0);
    petrel_comm_free(solo);
    petrel_comm_free(NULL);

    /* members in another order than the nodes: ranks {2, 0, 1} */
    int order[] = {2, 0, 1};
    petrel_comm *c3 = NULL;
    CHECK_OK(petrel_comm_new(&c3, net, order, 3, 7, cfg));
    int want_rank = r == 2 ? 0 : r + 1;
    CHECK(petrel_comm_rank(c3) == want_rank && petrel_comm_size(c3) == 3);
    float v[1000];
    for (int i = 0; i < 1000; i++) v[i] = (float)(i + want_rank);
    CHECK_OK(petrel_allreduce(c3, v, 1000, PETREL_REDUCE_SUM));
    CHECK(v[0] == 3 && v[999] == 3 * 999 + 3);
    st = petrel_comm_get_stats(c3);
    CHECK(st.calls == 1 && st.bytes_sent >= 1000 * 4 && st.bytes_received >= 1000 * 4);
    CHECK(st.wait_s > 0 && st.wait_s < 10);
    petrel_comm_free(c3);
    CHECK_OK(petrel_net_barrier(net, 10000));
}

static void test_comm_basics(void) {
    job j = {.size = 3, .fn = basics_fn};
    run_job(&j);
}

/* ---- allreduce --------------------------------------------------------------------- */

static size_t sizes_for(int P, size_t *sizes) {
    size_t n = 0;
    sizes[n++] = 0;
    sizes[n++] = 1;
    sizes[n++] = 2;
    sizes[n++] = (size_t)P - 1;
    sizes[n++] = (size_t)P + 1;
    sizes[n++] = 1000;
    sizes[n++] = 100003;
    sizes[n++] = (size_t)1 << 20; /* 4 MiB */
    return n;
}

static const petrel_coll_algo algos[] = {PETREL_ALGO_AUTO, PETREL_ALGO_RING,
                                         PETREL_ALGO_RECURSIVE_DOUBLING};
static const size_t chunk_sizes[] = {0, 1000}; /* the default, and a small odd one */

static void allreduce_fn(job *j, petrel_net *net, int r) {
    int P = j->size;
    size_t sizes[8], nsizes = sizes_for(P, sizes), most = (size_t)1 << 20;
    float *x = petrel_malloc(most * sizeof *x);
    uint32_t id = 0;
    for (size_t ck = 0; ck < 2; ck++)
        for (int a = 0; a < 3; a++)
            for (int f16 = 0; f16 < 2; f16++) {
                petrel_comm_config cfg = petrel_comm_config_default();
                cfg.algo = algos[a];
                cfg.fp16_wire = f16;
                cfg.timeout_ms = 20000;
                if (chunk_sizes[ck]) cfg.chunk_bytes = chunk_sizes[ck];
                petrel_comm *c = make_comm(net, P, id++, cfg);
                if (!c) continue;
                for (int op = 0; op < PETREL_REDUCE_COUNT; op++)
                    for (size_t k = 0; k < nsizes; k++) {
                        size_t n = sizes[k];
                        /* 4 MiB: the sum, by the default chunks, with AUTO (the ring)
                         * and recursive doubling; with small chunks (hundreds of
                         * messages), 100003 in the ring only */
                        if (n == most && (ck || op || algos[a] == PETREL_ALGO_RING)) continue;
                        if (n == 100003 && ck && (op || algos[a] != PETREL_ALGO_RING)) continue;
                        uint64_t seed = j->seed + id * 1000 + (uint64_t)op * 100 + k;
                        for (size_t i = 0; i < n; i++) x[i] = gen(seed, r, i, f16);
                        petrel_err e = petrel_allreduce(c, x, n, (petrel_reduce_op)op);
                        if (e != PETREL_OK) {
                            check_fail(__FILE__, __LINE__, "allreduce P=%d n=%zu: %s", P, n,
                                       petrel_errmsg());
                            goto done;
                        }
                        double tol = tolerance(P, f16);
                        for (size_t i = 0; i < n; i++) {
                            double want = (float)reference(seed, P, i, f16, (petrel_reduce_op)op);
                            if (!(fabs(x[i] - want) <= tol)) {
                                check_fail(__FILE__, __LINE__,
                                           "allreduce P=%d rank %d n=%zu %s algo %d fp16 %d chunk "
                                           "%zu: x[%zu] = %.9g, expected %.9g",
                                           P, r, n, op_names[op], (int)algos[a], f16,
                                           cfg.chunk_bytes, i, (double)x[i], want);
                                goto done;
                            }
                        }
                        record(j, r, x, n * sizeof *x);
                    }
            done:
                petrel_comm_free(c);
            }
    petrel_free(x);
}

static void test_allreduce(void) {
    for (int P = 1; P <= 5; P++) {
        job j = {.size = P, .fn = allreduce_fn, .seed = check_seed(1234) + (uint64_t)P};
        run_job(&j);
    }
}

/* ---- broadcast, allgather, reduce-scatter, barrier ------------------------------------ */

static void others_fn(job *j, petrel_net *net, int r) {
    int P = j->size;
    size_t sizes[8], nsizes = sizes_for(P, sizes), most = (size_t)1 << 20;
    float *x = petrel_malloc((size_t)P * most * sizeof *x);
    float *y = petrel_malloc((size_t)P * most * sizeof *y);
    uint32_t id = 0;
    for (size_t ck = 0; ck < 2; ck++)
        for (int f16 = 0; f16 < 2; f16++) {
            petrel_comm_config cfg = petrel_comm_config_default();
            cfg.fp16_wire = f16;
            cfg.timeout_ms = 20000;
            if (chunk_sizes[ck]) cfg.chunk_bytes = chunk_sizes[ck];
            petrel_comm *c = make_comm(net, P, id++, cfg);
            if (!c) continue;
            double tol = tolerance(P, f16);
            for (size_t k = 0; k < nsizes; k++) {
                size_t n = sizes[k];
                if ((n == most && (ck || f16)) || (n == 100003 && ck && f16)) continue;
                /* the large sizes: one root, in place, the sum */
                bool large = n == most || (n == 100003 && ck);
                uint64_t seed = j->seed + id * 1000 + k;
                /* broadcast from every root; float16 rounds the root's values too */
                for (int root = large ? P - 1 : 0; root < P; root++) {
                    for (size_t i = 0; i < n; i++) x[i] = r == root ? gen(seed, root, i, f16) : -1;
                    CHECK_OK(petrel_broadcast(c, x, n, root));
                    for (size_t i = 0; i < n; i++) {
                        float v = gen(seed, root, i, f16);
                        float want = f16 && P > 1 ? petrel_f16_to_f32(petrel_f32_to_f16(v)) : v;
                        if (x[i] != want) {
                            check_fail(__FILE__, __LINE__,
                                       "broadcast P=%d root %d n=%zu fp16 %d: x[%zu] = %g, want %g",
                                       P, root, n, f16, i, (double)x[i], (double)want);
                            break;
                        }
                    }
                    record(j, r, x, n * sizeof *x);
                }
                /* allgather, out of place and in place */
                for (int in_place = large; in_place < 2; in_place++) {
                    float *send = in_place ? y + (size_t)r * n : x;
                    for (size_t i = 0; i < (size_t)P * n; i++) y[i] = -1;
                    for (size_t i = 0; i < n; i++) send[i] = gen(seed, r, i, f16);
                    CHECK_OK(petrel_allgather(c, send, n, y));
                    for (size_t i = 0; i < (size_t)P * n; i++) {
                        float v = gen(seed, (int)(i / n), i % n, f16);
                        float want = f16 && P > 1 ? petrel_f16_to_f32(petrel_f32_to_f16(v)) : v;
                        if (y[i] != want) {
                            check_fail(__FILE__, __LINE__,
                                       "allgather P=%d n=%zu fp16 %d: y[%zu] = %g, want %g", P, n,
                                       f16, i, (double)y[i], (double)want);
                            break;
                        }
                    }
                    record(j, r, y, (size_t)P * n * sizeof *y);
                }
                /* reduce-scatter: member r gets block r of the sum over members of
                 * their P blocks */
                for (int op = 0; op < (large ? 1 : PETREL_REDUCE_COUNT); op++) {
                    for (size_t i = 0; i < (size_t)P * n; i++) x[i] = gen(seed + 7, r, i, f16);
                    CHECK_OK(petrel_reduce_scatter(c, x, n, y, (petrel_reduce_op)op));
                    for (size_t i = 0; i < n; i++) {
                        double want = (float)reference(seed + 7, P, (size_t)r * n + i, f16,
                                                       (petrel_reduce_op)op);
                        if (!(fabs(y[i] - want) <= tol)) {
                            check_fail(__FILE__, __LINE__,
                                       "reduce_scatter P=%d n=%zu %s fp16 %d: y[%zu] = %g, want %g",
                                       P, n, op_names[op], f16, i, (double)y[i], want);
                            break;
                        }
                    }
                }
            }
            petrel_comm_free(c);
        }
    petrel_free(y);
    petrel_free(x);
}

static void test_broadcast_allgather_reduce_scatter(void) {
    for (int P = 1; P <= 5; P++) {
        job j = {.size = P, .fn = others_fn, .seed = check_seed(99) + (uint64_t)P};
        run_job(&j);
    }
}

static _Atomic int arrived[64];

static void barrier_fn(job *j, petrel_net *net, int r) {
    (void)r;
    petrel_comm *c = make_comm(net, j->size, 3, petrel_comm_config_default());
    if (!c) return;
    for (int k = 0; k < 64; k++) {
        atomic_fetch_add(&arrived[k], 1);
        CHECK_OK(petrel_comm_barrier(c));
        /* nobody leaves barrier k before everyone has arrived at it */
        CHECK(atomic_load(&arrived[k]) == j->size);
    }
    petrel_comm_free(c);
}

static void test_barrier(void) {
    for (int P = 1; P <= 5; P++) {
        job j = {.size = P, .fn = barrier_fn, .param = 0};
        for (int k = 0; k < 64; k++) atomic_store(&arrived[k], 0);
        run_job(&j);
    }
}

/* ---- mismatches and absences --------------------------------------------------------- */

static petrel_comm_config short_timeout(void) {
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.timeout_ms = 500;
    return cfg;
}

/* param 0: rank 2 allreduces 1000 floats while the others allreduce 999;
 * 1: rank 1 broadcasts while the others allreduce (ring);
 * 2: the same with recursive doubling;
 * 3: rank 3 puts float16 on the wire;
 * 4: rank 0 cuts 4 KiB chunks. */
static void mismatch_fn(job *j, petrel_net *net, int r) {
    petrel_comm_config cfg = short_timeout();
    if (j->param == 3 && r == 3) cfg.fp16_wire = true;
    if (j->param == 4 && r == 0) cfg.chunk_bytes = 4096;
    petrel_comm *c = make_comm(net, j->size, 9, cfg);
    if (!c) return;
    size_t n = j->param == 0 ? 999 : j->param == 2 ? 100 : 100000;
    float *x = petrel_calloc(n + 1, sizeof *x);
    uint64_t t0 = petrel_now_ns();
    if (j->param == 0 && r == 2)
        j->err[r] = petrel_allreduce(c, x, n + 1, PETREL_REDUCE_SUM);
    else if ((j->param == 1 || j->param == 2) && r == 1)
        j->err[r] = petrel_broadcast(c, x, n, 0);
    else
        j->err[r] = petrel_allreduce(c, x, n, PETREL_REDUCE_SUM);
    j->took_ms[r] = (double)(petrel_now_ns() - t0) * 1e-6;
    snprintf(j->msg[r], sizeof j->msg[r], "%s", petrel_errmsg());
    /* the communicator goes on: the next call matches everywhere */
    bool same_config = j->param < 3;
    for (size_t i = 0; i < n && same_config; i++) x[i] = 1;
    if (same_config) {
        CHECK_OK(petrel_allreduce(c, x, n, PETREL_REDUCE_SUM));
        CHECK(x[0] == (float)j->size && x[n - 1] == (float)j->size);
    }
    petrel_free(x);
    petrel_comm_free(c);
}

/* Every member but `absent` failed with want, a message holding must1 and must2,
 * within max_ms. */
static void check_all_failed(job *j, int absent, petrel_err want, const char *must1,
                             const char *must2, double max_ms) {
    for (int r = 0; r < j->size; r++) {
        if (r == absent) continue;
        printf("# rank %d: %s after %.0f ms: %s\n", r, petrel_strerror(j->err[r]), j->took_ms[r],
               j->msg[r]);
        if (j->err[r] != want || !strstr(j->msg[r], must1) || !strstr(j->msg[r], must2) ||
            j->took_ms[r] > max_ms)
            check_fail(__FILE__, __LINE__, "rank %d: %s after %.0f ms: %s", r,
                       petrel_strerror(j->err[r]), j->took_ms[r], j->msg[r]);
    }
}

static void test_mismatched_count(void) {
    job j = {.size = 4, .fn = mismatch_fn, .param = 0};
    run_job(&j);
    /* every member: an error naming rank 2 and both counts, long before the timeout */
    check_all_failed(&j, -1, PETREL_ERR_STATE, "1000 floats", "999 floats", 300);
    CHECK(strstr(j.msg[3], "allreduce #1: rank 2 called allreduce of 1000 floats (sum), this "
                           "rank (3) called allreduce of 999 floats (sum)") != NULL);
}

static void test_mismatched_kind(void) {
    for (int param = 1; param <= 2; param++) {
        job j = {.size = 4, .fn = mismatch_fn, .param = param};
        run_job(&j);
        check_all_failed(&j, -1, PETREL_ERR_STATE, "broadcast", "allreduce", 300);
    }
}

static void test_mismatched_configuration(void) {
    job j = {.size = 4, .fn = mismatch_fn, .param = 3};
    run_job(&j);
    check_all_failed(&j, -1, PETREL_ERR_STATE, "float16 wire", "float32 wire", 300);
    job k = {.size = 3, .fn = mismatch_fn, .param = 4};
    run_job(&k);
    check_all_failed(&k, -1, PETREL_ERR_STATE, "4096-byte chunks", "262144-byte chunks", 300);
}

/* Rank `param` never calls; the others time out naming it. */
static void absent_fn(job *j, petrel_net *net, int r) {
    petrel_comm *c = make_comm(net, j->size, 11, short_timeout());
    if (!c) return;
    if (r != j->param) {
        float *x = petrel_calloc(100000, sizeof *x);
        uint64_t t0 = petrel_now_ns();
        j->err[r] = petrel_allreduce(c, x, 100000, PETREL_REDUCE_SUM);
        j->took_ms[r] = (double)(petrel_now_ns() - t0) * 1e-6;
        snprintf(j->msg[r], sizeof j->msg[r], "%s", petrel_errmsg());
        petrel_free(x);
    }
    CHECK_OK(petrel_net_barrier(net, 10000));
    petrel_comm_free(c);
}

static void test_absent_member(void) {
    job j = {.size = 4, .fn = absent_fn, .param = 2};
    run_job(&j);
    check_all_failed(&j, 2, PETREL_ERR_TIMEOUT, "rank 2", "did it call allreduce?", 700);
    for (int r = 0; r < 4; r++)
        if (r != 2) CHECK(j.took_ms[r] >= 350);
}

/* Rank 2 fails call #1 (made up here: the others finish theirs without it) and
 * leaves the job. The others wait for it in call #2, and must report why it failed
 * in #1, which its ABORT says, not merely that it left. */
static void failed_before_fn(job *j, petrel_net *net, int r) {
    petrel_comm *c = make_comm(net, j->size, 12, short_timeout());
    if (!c) return;
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_ALLREDUCE, PETREL_REDUCE_SUM, 100, 0,
                       PETREL_ALGO_RING);
    (void)petreli_coll_end(&call, r == 2 ? petrel_error_set(PETREL_ERR_IO, "the made-up failure")
                                         : PETREL_OK);
    if (r != 2) {
        float x[100] = {0};
        uint64_t t0 = petrel_now_ns();
        j->err[r] = petrel_allreduce(c, x, 100, PETREL_REDUCE_SUM);
        j->took_ms[r] = (double)(petrel_now_ns() - t0) * 1e-6;
        snprintf(j->msg[r], sizeof j->msg[r], "%s", petrel_errmsg());
    }
    petrel_comm_free(c);
}

static void test_member_failed_the_call_before(void) {
    job j = {.size = 3, .fn = failed_before_fn};
    run_job(&j);
    check_all_failed(&j, 2, PETREL_ERR_IO, "rank 2 reported in call #1", "the made-up failure",
                     400);
}

/* ---- two communicators on one net, from two threads --------------------------------- */

typedef struct pair_arg {
    petrel_net *net;
    int P, r;
    uint32_t id;
} pair_arg;

static void *pair_main(void *p) {
    pair_arg *a = p;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.chunk_bytes = 4096;
    cfg.timeout_ms = 20000;
    petrel_comm *c = make_comm(a->net, a->P, a->id, cfg);
    if (!c) return NULL;
    size_t n = 20000;
    float *x = petrel_malloc(n * sizeof *x);
    for (int k = 0; k < 40; k++) {
        /* values that tell the communicators and the iterations apart */
        float base = (float)(a->id * 1000 + (uint32_t)k);
        for (size_t i = 0; i < n; i++) x[i] = base + (float)a->r;
        petrel_err e = k % 2 ? petrel_allreduce(c, x, n, PETREL_REDUCE_MAX)
                             : petrel_allreduce(c, x, n, PETREL_REDUCE_SUM);
        CHECK_OK(e);
        float want =
            k % 2 ? base + (float)(a->P - 1) : (float)a->P * base + (float)(a->P * (a->P - 1) / 2);
        CHECK(x[0] == want && x[n - 1] == want);
        CHECK_OK(petrel_broadcast(c, x, 100, k % a->P));
    }
    petrel_free(x);
    petrel_comm_free(c);
    return NULL;
}

static void two_comms_fn(job *j, petrel_net *net, int r) {
    pthread_t th[2];
    pair_arg args[2];
    for (int t = 0; t < 2; t++) {
        args[t] = (pair_arg){net, j->size, r, (uint32_t)(t + 1)};
        pthread_create(&th[t], NULL, pair_main, &args[t]);
    }
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    CHECK_OK(petrel_net_barrier(net, 10000));
}

static void test_two_communicators_concurrently(void) {
    job j = {.size = 3, .fn = two_comms_fn};
    run_job(&j);
}

int main(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    RUN(test_f16_roundtrip_exhaustive);
    RUN(test_f16_rounding);
    RUN(test_comm_basics);
    RUN_SEEDED(test_allreduce, check_seed(1234));
    RUN_SEEDED(test_broadcast_allgather_reduce_scatter, check_seed(99));
    RUN(test_barrier);
    RUN(test_mismatched_count);
    RUN(test_mismatched_kind);
    RUN(test_mismatched_configuration);
    RUN(test_absent_member);
    RUN(test_member_failed_the_call_before);
    RUN(test_two_communicators_concurrently);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
