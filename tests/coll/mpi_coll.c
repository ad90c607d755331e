/*
 * petrel_mpi_coll: the two backends of the collectives, petrel's own and MPI's, on
 * the same data in a real job (tests/coll/mpi_coll_test.sh runs it; not a test_*.c,
 * since it needs mpirun):
 *
 *     mpirun -np 3 build/petrel_mpi_coll              both backends, every collective
 *     mpirun -np 2 build/petrel_mpi_coll --permuted   petrel ranks that are not MPI's
 *     build/petrel_mpi_coll --no-mpirun               no launcher
 *
 * The job joins from the environment (PETREL_COORDINATOR etc., as the script sets
 * them; MPI ranks give petrel ranks). Every collective, reduction and root runs on
 * a communicator of all nodes and on one of some nodes in another order (its member
 * m is not node m), once per backend on the same input. Inputs are small integers,
 * so that every sum is exact: each result must equal the other backend's bit for
 * bit and the exact value (an average: the exact sum / P, rounded once). The MPI
 * backend's split of large counts into pieces runs with its piece size lowered to
 * 1000. Prints check.h's lines (mpirun --tag-output tells the ranks apart) and
 * exits 0 when every check passed.
 */
#include "check.h"
#include "coll/coll_impl.h"
#include "petrel/coll.h"

#include <limits.h>

static petrel_net *net;
static int P; /* nodes */

/* One communicator per backend over the same members (NULL on a node outside). */
typedef struct pair {
    const char *name;
    petrel_comm *c[2]; /* petrel, mpi */
} pair;

static pair all_nodes = {.name = "all"}, some_nodes = {.name = "some"};

/* Member m's element i: an integer in -500 .. 500. */
static float value(int m, size_t i, unsigned salt) {
    return (float)((int)((i * 7 + (size_t)m * 13 + salt * 31) % 1001) - 500);
}

/* op over members 0 .. size-1 of element i, as a float: sums are exact, an average
 * is the sum divided once in float, as both backends divide. */
static float expected(int size, size_t i, unsigned salt, petrel_reduce_op op) {
    double acc = op == PETREL_REDUCE_MAX ? -1e9 : 0;
    for (int m = 0; m < size; m++) {
        double v = value(m, i, salt);
        acc = op == PETREL_REDUCE_MAX ? (v > acc ? v : acc) : acc + v;
    }
    return op == PETREL_REDUCE_AVG ? (float)acc / (float)size : (float)acc;
}

static const char *op_name(petrel_reduce_op op) {
    return op == PETREL_REDUCE_SUM ? "sum" : op == PETREL_REDUCE_AVG ? "avg" : "max";
}

static float *alloc_floats(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) abort();
    return x;
}

/* The first element where a and b differ as bits, or n. */
static size_t first_difference(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) != 0) return i;
    return n;
}

/* Both backends' results of one case: equal bits, and each element as expected. */
static void compare(const char *what, size_t n, const float *got[2], const float *want,
                    size_t len) {
    size_t d = first_difference(got[0], got[1], len);
    if (d < len)
        check_fail(__FILE__, __LINE__, "%s, n %zu: element %zu is %g (petrel), %g (mpi)", what, n,
                   d, (double)got[0][d], (double)got[1][d]);
    d = first_difference(got[0], want, len);
    if (d < len)
        check_fail(__FILE__, __LINE__, "%s, n %zu: element %zu is %g, expected %g", what, n, d,
                   (double)got[0][d], (double)want[d]);
}

#define CALL_OK(expr, what, n)                                                                     \
    do {                                                                                           \
        petrel_err e_ = (expr);                                                                    \
        if (e_ != PETREL_OK)                                                                       \
            check_fail(__FILE__, __LINE__, "%s, n %zu: %s: %s", what, (size_t)(n),                 \
                       petrel_strerror(e_), petrel_errmsg());                                      \
    } while (0)

static const size_t sizes[] = {0, 1, 4, 1000, 65537, ((size_t)1 << 20) + 3};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void allreduce_case(pair *p, size_t n, petrel_reduce_op op, unsigned salt) {
    if (!p->c[0]) return;
    int m = petrel_comm_rank(p->c[0]), size = petrel_comm_size(p->c[0]);
    float *x[2] = {alloc_floats(n), alloc_floats(n)}, *want = alloc_floats(n);
    char what[64];
    snprintf(what, sizeof what, "allreduce %s on %s", op_name(op), p->name);
    for (int b = 0; b < 2; b++) {
        for (size_t i = 0; i < n; i++) x[b][i] = value(m, i, salt);
        CALL_OK(petrel_allreduce(p->c[b], x[b], n, op), what, n);
    }
    for (size_t i = 0; i < n; i++) want[i] = expected(size, i, salt, op);
    compare(what, n, (const float *[2]){x[0], x[1]}, want, n);
    free(x[0]), free(x[1]), free(want);
}

static void broadcast_case(pair *p, size_t n, int root, unsigned salt) {
    if (!p->c[0]) return;
    int m = petrel_comm_rank(p->c[0]);
    float *x[2] = {alloc_floats(n), alloc_floats(n)}, *want = alloc_floats(n);
    char what[64];
    snprintf(what, sizeof what, "broadcast from %d on %s", root, p->name);
    for (int b = 0; b < 2; b++) {
        for (size_t i = 0; i < n; i++) x[b][i] = m == root ? value(root, i, salt) : -1;
        CALL_OK(petrel_broadcast(p->c[b], x[b], n, root), what, n);
    }
    for (size_t i = 0; i < n; i++) want[i] = value(root, i, salt);
    compare(what, n, (const float *[2]){x[0], x[1]}, want, n);
    free(x[0]), free(x[1]), free(want);
}

static void allgather_case(pair *p, size_t n, bool in_place, unsigned salt) {
    if (!p->c[0]) return;
    int m = petrel_comm_rank(p->c[0]), size = petrel_comm_size(p->c[0]);
    size_t all = (size_t)size * n;
    float *x[2] = {alloc_floats(all), alloc_floats(all)}, *send = alloc_floats(n);
    float *want = alloc_floats(all);
    char what[64];
    snprintf(what, sizeof what, "allgather%s on %s", in_place ? " in place" : "", p->name);
    for (int b = 0; b < 2; b++) {
        for (size_t i = 0; i < all; i++) x[b][i] = -1;
        float *own = x[b] + (size_t)m * n, *from = in_place ? own : send;
        for (size_t i = 0; i < n; i++) from[i] = value(m, i, salt);
        CALL_OK(petrel_allgather(p->c[b], from, n, x[b]), what, n);
    }
    for (int k = 0; k < size; k++)
        for (size_t i = 0; i < n; i++) want[(size_t)k * n + i] = value(k, i, salt);
    compare(what, n, (const float *[2]){x[0], x[1]}, want, all);
    free(x[0]), free(x[1]), free(send), free(want);
}

static void reduce_scatter_case(pair *p, size_t n, petrel_reduce_op op, unsigned salt) {
    if (!p->c[0]) return;
    int m = petrel_comm_rank(p->c[0]), size = petrel_comm_size(p->c[0]);
    size_t all = (size_t)size * n;
    float *send = alloc_floats(all), *x[2] = {alloc_floats(n), alloc_floats(n)};
    float *want = alloc_floats(n);
    char what[64];
    snprintf(what, sizeof what, "reduce_scatter %s on %s", op_name(op), p->name);
    /* element i of the whole vector: block i / n, offset i % n */
    for (size_t i = 0; i < all; i++) send[i] = value(m, i, salt);
    for (int b = 0; b < 2; b++) CALL_OK(petrel_reduce_scatter(p->c[b], send, n, x[b], op), what, n);
    for (size_t i = 0; i < n; i++) want[i] = expected(size, (size_t)m * n + i, salt, op);
    compare(what, n, (const float *[2]){x[0], x[1]}, want, n);
    free(send), free(x[0]), free(x[1]), free(want);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_allreduce(void) {
    for (size_t k = 0; k < NSIZES; k++)
        for (int op = 0; op < PETREL_REDUCE_COUNT; op++) {
            allreduce_case(&all_nodes, sizes[k], (petrel_reduce_op)op, (unsigned)k);
            allreduce_case(&some_nodes, sizes[k], (petrel_reduce_op)op, (unsigned)k + 1);
        }
}

static void test_broadcast(void) {
    for (size_t k = 0; k < NSIZES; k++)
        for (pair *p = &all_nodes; p; p = p == &all_nodes ? &some_nodes : NULL) {
            int size = p->c[0] ? petrel_comm_size(p->c[0]) : 0;
            for (int root = 0; root < size; root++) broadcast_case(p, sizes[k], root, (unsigned)k);
        }
}

static void test_allgather(void) {
    for (size_t k = 0; k + 1 < NSIZES; k++)
        for (int in_place = 0; in_place < 2; in_place++) {
            allgather_case(&all_nodes, sizes[k], in_place, (unsigned)k);
            allgather_case(&some_nodes, sizes[k], in_place, (unsigned)k + 1);
        }
}

static void test_reduce_scatter(void) {
    for (size_t k = 0; k + 1 < NSIZES; k++)
        for (int op = 0; op < PETREL_REDUCE_COUNT; op++) {
            reduce_scatter_case(&all_nodes, sizes[k], (petrel_reduce_op)op, (unsigned)k);
            reduce_scatter_case(&some_nodes, sizes[k], (petrel_reduce_op)op, (unsigned)k + 1);
        }
}

static void test_barrier(void) {
    for (int b = 0; b < 2; b++) {
        CHECK_OK(petrel_comm_barrier(all_nodes.c[b]));
        if (some_nodes.c[b]) CHECK_OK(petrel_comm_barrier(some_nodes.c[b]));
    }
}

/* The MPI backend's pieces: counts above the piece size, which is lowered to 1000,
 * against petrel's backend (unaffected). */
static void test_mpi_pieces(void) {
    petreli_coll_mpi_max_count = 1000;
    for (pair *p = &all_nodes; p; p = p == &all_nodes ? &some_nodes : NULL) {
        allreduce_case(p, 2500, PETREL_REDUCE_AVG, 40);
        allreduce_case(p, 3000, PETREL_REDUCE_MAX, 41);
        broadcast_case(p, 2001, p->c[0] ? petrel_comm_size(p->c[0]) - 1 : 0, 42);
        allgather_case(p, 2500, false, 43);
        allgather_case(p, 2001, true, 44);
        reduce_scatter_case(p, 2500, PETREL_REDUCE_SUM, 45);
        reduce_scatter_case(p, 1001, PETREL_REDUCE_AVG, 46);
    }
    petreli_coll_mpi_max_count = INT_MAX;
}

/* Calls and time as petrel's backend counts them; bytes what a ring would move. */
static void test_mpi_stats(void) {
    petrel_comm *c = all_nodes.c[1];
    size_t n = 1000 * (size_t)P;
    float *x = alloc_floats((size_t)P * n);
    for (size_t i = 0; i < (size_t)P * n; i++) x[i] = 1;
    petrel_comm_stats a = petrel_comm_get_stats(c);
    CHECK(a.calls == petrel_comm_get_stats(all_nodes.c[0]).calls);
    CHECK_OK(petrel_allreduce(c, x, n, PETREL_REDUCE_SUM));
    petrel_comm_stats b = petrel_comm_get_stats(c);
    CHECK(b.calls == a.calls + 1);
    CHECK(b.bytes_sent - a.bytes_sent == 2 * (uint64_t)(P - 1) * n / (uint64_t)P * 4);
    CHECK(b.bytes_received - a.bytes_received == b.bytes_sent - a.bytes_sent);
    CHECK(b.wait_s > a.wait_s);
    CHECK_OK(petrel_allgather(c, x + (size_t)petrel_comm_rank(c) * n, n, x));
    petrel_comm_stats d = petrel_comm_get_stats(c);
    CHECK(d.bytes_sent - b.bytes_sent == (uint64_t)(P - 1) * n * 4);
    free(x);
}

/* Arguments are checked alike for both backends, before anything is sent; an MPI
 * communicator refuses float16 on the wire. */
static void test_mpi_refusals(void) {
    int ranks[8];
    for (int r = 0; r < P; r++) ranks[r] = r;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.backend = PETREL_BACKEND_MPI;
    cfg.fp16_wire = true;
    petrel_comm *c = NULL;
    CHECK_ERR(petrel_comm_new(&c, net, ranks, P, 30, cfg), PETREL_ERR_UNSUPPORTED);
    CHECK(strstr(petrel_errmsg(), "fp16_wire") != NULL);
    cfg.fp16_wire = false;
    cfg.backend = (petrel_coll_backend)7;
    CHECK_ERR(petrel_comm_new(&c, net, ranks, P, 30, cfg), PETREL_ERR_INVALID);
    CHECK(c == NULL);
    float x = 1;
    petrel_comm *m = all_nodes.c[1];
    uint64_t calls = petrel_comm_get_stats(m).calls;
    CHECK_ERR(petrel_allreduce(m, &x, 1, PETREL_REDUCE_COUNT), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_broadcast(m, &x, 1, P), PETREL_ERR_INVALID);
    CHECK(petrel_comm_get_stats(m).calls == calls);
    CHECK(petrel_coll_backend_available(PETREL_BACKEND_MPI));
    CHECK(strcmp(petrel_coll_backend_name(PETREL_BACKEND_MPI), "mpi") == 0);
}

/* ---- modes --------------------------------------------------------------------- */

static int run_both(void) {
    petrel_net_config ncfg = petrel_net_config_default();
    if (petrel_net_start(&net, &ncfg) != PETREL_OK) {
        fprintf(stderr, "mpi_coll: join: %s\n", petrel_errmsg());
        return 1;
    }
    int me = petrel_net_rank(net);
    P = petrel_net_size(net);
    if (P > 8) {
        fprintf(stderr, "mpi_coll: at most 8 nodes\n");
        return 1;
    }
    /* some: the nodes from the last down to 1 (P >= 3), or down to 0 (P = 2). */
    int all[8], some[8], nsome = 0;
    bool in_some = false;
    for (int r = 0; r < P; r++) all[r] = r;
    for (int r = P - 1; r >= (P >= 3 ? 1 : 0); r--) {
        some[nsome++] = r;
        in_some = in_some || r == me;
    }
    /* Every node creates its MPI-backed communicators in the same order: creating
     * one is collective over its members. */
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.timeout_ms = 60000;
    for (int b = 0; b < 2; b++) {
        cfg.backend = b ? PETREL_BACKEND_MPI : PETREL_BACKEND_PETREL;
        if (petrel_comm_new(&all_nodes.c[b], net, all, P, (uint32_t)(1 + b), cfg) != PETREL_OK ||
            (in_some && petrel_comm_new(&some_nodes.c[b], net, some, nsome, (uint32_t)(11 + b),
                                        cfg) != PETREL_OK)) {
            fprintf(stderr, "mpi_coll: rank %d: comm_new (%s): %s\n", me,
                    petrel_coll_backend_name(cfg.backend), petrel_errmsg());
            return 1;
        }
    }
    printf("rank %d of %d: communicators of %d and %d members\n", me, P, P, nsome);
    RUN(test_allreduce);
    RUN(test_broadcast);
    RUN(test_allgather);
    RUN(test_reduce_scatter);
    RUN(test_barrier);
    RUN(test_mpi_pieces);
    RUN(test_mpi_stats);
    RUN(test_mpi_refusals);
    RUN(test_barrier);
    for (int b = 0; b < 2; b++) {
        petrel_comm_free(all_nodes.c[b]);
        petrel_comm_free(some_nodes.c[b]);
    }
    petrel_net_stop(net);
    return CHECK_DONE();
}

/* Petrel rank r + 1 on MPI rank r: the MPI backend must refuse, naming both. */
static void test_permuted_ranks_refused(void) {
    const char *rank = getenv("OMPI_COMM_WORLD_RANK"), *size = getenv("OMPI_COMM_WORLD_SIZE");
    CHECK(rank && size);
    if (!rank || !size) return;
    petrel_net_config ncfg = petrel_net_config_default();
    ncfg.size = atoi(size);
    ncfg.rank = (atoi(rank) + 1) % ncfg.size;
    CHECK_OK(petrel_net_start(&net, &ncfg));
    if (!net) return;
    P = petrel_net_size(net);
    int ranks[8];
    for (int r = 0; r < P && r < 8; r++) ranks[r] = r;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.backend = PETREL_BACKEND_MPI;
    petrel_comm *c = NULL;
    CHECK_ERR(petrel_comm_new(&c, net, ranks, P, 1, cfg), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "MPI ranks equal to petrel ranks") != NULL);
    printf("rank %d: %s\n", petrel_net_rank(net), petrel_errmsg());
    CHECK_OK(petrel_net_barrier(net, 30000));
    petrel_net_stop(net);
}

/* Not under mpirun: refused before MPI is touched; petrel's own backend works. */
static void test_no_mpirun_refused(void) {
    petrel_inproc_hub *hub = NULL;
    CHECK_OK(petrel_inproc_hub_new(&hub, 1));
    petrel_net_config ncfg = petrel_net_config_default();
    ncfg.rank = 0;
    ncfg.size = 1;
    ncfg.transport = PETREL_TRANSPORT_INPROC;
    ncfg.inproc_hub = hub;
    CHECK_OK(petrel_net_start(&net, &ncfg));
    if (!net) return;
    int zero = 0;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.backend = PETREL_BACKEND_MPI;
    petrel_comm *c = NULL;
    CHECK_ERR(petrel_comm_new(&c, net, &zero, 1, 1, cfg), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "mpirun") != NULL);
    printf("%s\n", petrel_errmsg());
    cfg.backend = PETREL_BACKEND_PETREL;
    CHECK_OK(petrel_comm_new(&c, net, &zero, 1, 1, cfg));
    float x = 3;
    if (c) CHECK_OK(petrel_allreduce(c, &x, 1, PETREL_REDUCE_AVG));
    CHECK(x == 3);
    petrel_comm_free(c);
    petrel_net_stop(net);
    petrel_inproc_hub_free(hub);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--permuted") == 0) {
        RUN(test_permuted_ranks_refused);
        return CHECK_DONE();
    }
    if (argc > 1 && strcmp(argv[1], "--no-mpirun") == 0) {
        RUN(test_no_mpirun_refused);
        return CHECK_DONE();
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--permuted | --no-mpirun]\n", argv[0]);
        return 2;
    }
    return run_both();
}
