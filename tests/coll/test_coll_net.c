/* The collectives in real jobs: 2, 3 and 4 processes on 127.0.0.1 over TCP, and over
 * shared memory (PETREL_TRANSPORT_AUTO on one host). Each node checks every result
 * exactly: the inputs are small integers, so that every sum is exact in float32 and
 * in float16. Then a node is killed with SIGKILL in the middle of a stream of large
 * allreduces, and the others must fail at once with an error that names it. Last,
 * jobs whose nodes are threads of this process (one pid) over shared memory. The
 * parent plays the launcher: it makes the coordinator's listening socket. */
#include "check.h"
#include "netjob.h"
#include "petrel/coll.h"

#include <stdatomic.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_FAIL = 10, EXIT_SAW_DEATH = 20 };

typedef struct scenario {
    const char *name;
    int size;
    petrel_transport_kind transport;
    int victim; /* rank killed mid-allreduce, or -1 */
} scenario;

typedef struct shared {
    _Atomic uint64_t kill_ns;  /* when the parent sent SIGKILL */
    _Atomic int iterations[8]; /* allreduces each node has finished */
} shared;

static shared *sh;
static netjob job;

/* Member r's element i: an integer in -400 .. 400. Sums of up to 5 members stay
 * within 2048, where float16 holds every integer, so float16 results are exact too. */
static float value(int r, size_t i, unsigned salt) {
    return (float)((int)((i * 7 + (size_t)r * 13 + salt) % 801) - 400);
}

static double expected(int P, size_t i, unsigned salt, petrel_reduce_op op) {
    double acc = op == PETREL_REDUCE_MAX ? -1e9 : 0;
    for (int r = 0; r < P; r++) {
        double v = value(r, i, salt);
        acc = op == PETREL_REDUCE_MAX ? (v > acc ? v : acc) : acc + v;
    }
    return op == PETREL_REDUCE_AVG ? (float)acc / (float)P : acc;
}

static bool report(int r, const char *what, size_t n, const char *why) {
    fprintf(stderr, "rank %d: %s of %zu: %s\n", r, what, n, why);
    return false;
}

static bool check_allreduce(petrel_comm *c, float *x, size_t n, petrel_reduce_op op,
                            unsigned salt) {
    int r = petrel_comm_rank(c), P = petrel_comm_size(c);
    for (size_t i = 0; i < n; i++) x[i] = value(r, i, salt);
    if (petrel_allreduce(c, x, n, op) != PETREL_OK)
        return report(r, "allreduce", n, petrel_errmsg());
    for (size_t i = 0; i < n; i++)
        if (x[i] != (float)expected(P, i, salt, op)) {
            char why[128];
            snprintf(why, sizeof why, "x[%zu] = %g, expected %g", i, (double)x[i],
                     expected(P, i, salt, op));
            return report(r, "allreduce", n, why);
        }
    return true;
}

/* petrel_allgather of send (n values of this member's, by salt) into recv: every
 * member's block in place. */
static bool check_allgather(petrel_comm *c, const float *send, size_t n, float *recv, unsigned salt,
                            const char *what) {
    int r = petrel_comm_rank(c), P = petrel_comm_size(c);
    if (petrel_allgather(c, send, n, recv) != PETREL_OK) return report(r, what, n, petrel_errmsg());
    for (size_t i = 0; i < (size_t)P * n; i++)
        if (recv[i] != value((int)(i / n), i % n, salt)) return report(r, what, n, "wrong value");
    return true;
}

static bool collectives(petrel_net *net, const scenario *s) {
    int r = petrel_net_rank(net), P = s->size, ranks[8];
    for (int i = 0; i < P; i++) ranks[i] = i;
    size_t big = (size_t)4 << 20; /* 16 MiB */
    float *x = malloc(big * sizeof *x), *y = malloc((size_t)P * 100003 * sizeof *y);
    bool ok = x && y;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.timeout_ms = 10000;
    petrel_comm *c = NULL, *ring = NULL, *rd = NULL, *half = NULL, *shm = NULL, *half_ring = NULL;
    ok = ok && petrel_comm_new(&c, net, ranks, P, 1, cfg) == PETREL_OK;
    cfg.algo = PETREL_ALGO_RING;
    ok = ok && petrel_comm_new(&ring, net, ranks, P, 2, cfg) == PETREL_OK;
    cfg.algo = PETREL_ALGO_RECURSIVE_DOUBLING;
    ok = ok && petrel_comm_new(&rd, net, ranks, P, 3, cfg) == PETREL_OK;
    cfg.algo = PETREL_ALGO_AUTO;
    cfg.fp16_wire = true;
    ok = ok && petrel_comm_new(&half, net, ranks, P, 4, cfg) == PETREL_OK;
    cfg.algo = PETREL_ALGO_RING; /* AUTO would take shared memory, where float16 does nothing */
    ok = ok && petrel_comm_new(&half_ring, net, ranks, P, 6, cfg) == PETREL_OK;
    cfg.fp16_wire = false;
    cfg.algo = PETREL_ALGO_SHM;
    ok = ok && petrel_comm_new(&shm, net, ranks, P, 5, cfg) == PETREL_OK;
    bool on_shm = s->transport == PETREL_TRANSPORT_AUTO || P == 1;
    const size_t sizes[] = {0, 1, 3, 1000, 100003};
    for (size_t k = 0; ok && k < sizeof sizes / sizeof sizes[0]; k++)
        for (int op = 0; ok && op < PETREL_REDUCE_COUNT; op++) {
            ok = check_allreduce(c, x, sizes[k], (petrel_reduce_op)op, (unsigned)k);
            ok = ok && check_allreduce(ring, x, sizes[k], (petrel_reduce_op)op, (unsigned)k + 1);
            ok = ok && check_allreduce(rd, x, sizes[k], (petrel_reduce_op)op, (unsigned)k + 2);
            /* float16: an average is rounded, a sum of these is not */
            if (op != PETREL_REDUCE_AVG)
                ok =
                    ok && check_allreduce(half, x, sizes[k], (petrel_reduce_op)op, (unsigned)k + 3);
            if (on_shm)
                ok = ok && check_allreduce(shm, x, sizes[k], (petrel_reduce_op)op, (unsigned)k + 4);
        }
    if (ok && on_shm) { /* several pieces, the last one shorter */
        ok = check_allreduce(shm, x, big - 5, PETREL_REDUCE_AVG, 11);
        ok = ok && check_allreduce(shm, x, 3000, PETREL_REDUCE_MAX, 12); /* back to small */
    }
    if (ok && !on_shm) { /* members on other hosts (or over TCP): refused, not counted */
        petrel_err err = petrel_allreduce(shm, x, 1000, PETREL_REDUCE_SUM);
        if (err != PETREL_ERR_UNSUPPORTED)
            ok = report(r, "allreduce shm over tcp", 1000, "not refused");
        ok = ok && petrel_comm_get_stats(shm).calls == 0;
    }
    if (ok && on_shm && P > 1) { /* a member that calls another size is named by the others */
        size_t m = r == P - 1 ? 100004 : 100003;
        petrel_err err = petrel_allreduce(shm, x, m, PETREL_REDUCE_SUM);
        char who[32]; /* the odd one names whichever member it heard first */
        snprintf(who, sizeof who, "rank %d", P - 1);
        if (err != PETREL_ERR_STATE || !strstr(petrel_errmsg(), r == P - 1 ? "100003" : who))
            ok = report(r, "mismatched allreduce shm", m, petrel_errmsg());
        ok = ok && check_allreduce(shm, x, 100003, PETREL_REDUCE_SUM, 13); /* usable again */
    }
    /* Another kind of call where the others state theirs in the shared segments (every
     * segment is known by now): an allgather, which states its own there, and a
     * barrier, which sends messages, found in the mailbox. Both in far less than the
     * timeout. */
    for (int other = 0; ok && on_shm && P > 1 && other < 2; other++) {
        uint64_t t0 = petrel_now_ns();
        petrel_err err = r != P - 1 ? petrel_allreduce(shm, x, 100003, PETREL_REDUCE_SUM)
                         : other    ? petrel_comm_barrier(shm)
                                    : petrel_allgather(shm, y + (size_t)r * 1000, 1000, y);
        double ms = (double)(petrel_now_ns() - t0) * 1e-6;
        const char *theirs = r == P - 1 ? "allreduce of 100003" : other ? "barrier" : "allgather";
        if (err != PETREL_ERR_STATE || !strstr(petrel_errmsg(), theirs) || ms > 2000)
            ok = report(r,
                        other ? "allreduce shm against barrier" : "allreduce shm against allgather",
                        100003, petrel_errmsg());
        ok = ok && check_allreduce(shm, x, 100003, PETREL_REDUCE_SUM, 14); /* usable again */
    }
    /* ring and half_ring: AUTO would take shared memory in the shm scenarios */
    ok = ok && check_allreduce(ring, x, big, PETREL_REDUCE_SUM, 5);      /* the ring */
    ok = ok && check_allreduce(half_ring, x, big, PETREL_REDUCE_SUM, 6); /* in float16 */
    ok = ok && check_allreduce(rd, x, big / 4, PETREL_REDUCE_MAX, 7);    /* 4 MiB */
    /* broadcast from the last member */
    size_t n = 100003;
    if (ok) {
        for (size_t i = 0; i < n; i++) x[i] = r == P - 1 ? value(r, i, 8) : 0;
        ok = petrel_broadcast(c, x, n, P - 1) == PETREL_OK;
        for (size_t i = 0; ok && i < n; i++)
            if (x[i] != value(P - 1, i, 8)) ok = report(r, "broadcast", n, "wrong value");
        if (!ok) report(r, "broadcast", n, petrel_errmsg());
    }
    /* allgather in place (on one host by AUTO through the shared segments, so also by
     * the ring), and out of place in several pieces; reduce-scatter */
    for (int k = 0; ok && k < 2; k++) {
        for (size_t i = 0; i < (size_t)P * n; i++)
            y[i] = i / n == (size_t)r ? value(r, i % n, 9) : -1;
        ok = check_allgather(k ? ring : c, y + (size_t)r * n, n, y, 9,
                             k ? "allgather ring" : "allgather");
    }
    /* An allreduce, then at once an allgather on the same segments: a member may still
     * be copying the first's result out of another's segment when that one starts. */
    for (int k = 0; ok && k < 20; k++) {
        ok = check_allreduce(c, x, 3001, PETREL_REDUCE_SUM, 20 + (unsigned)k);
        for (size_t i = 0; i < (size_t)P * 1000; i++) y[i] = value(r, i % 1000, 40 + (unsigned)k);
        ok = ok && check_allgather(c, y + (size_t)r * 1000, 1000, y, 40 + (unsigned)k,
                                   "allgather after allreduce");
    }
    if (ok && P <= 3) {
        size_t m = (size_t)P * (512u << 10) + 7; /* above one piece of the shared segments */
        float *all = malloc((size_t)P * m * sizeof *all);
        ok = all != NULL;
        for (size_t i = 0; ok && i < m; i++) x[i] = value(r, i, 15);
        ok = ok && check_allgather(c, x, m, all, 15, "allgather in pieces");
        free(all);
    }
    if (ok) {
        for (size_t i = 0; i < (size_t)P * n; i++) y[i] = value(r, i, 10);
        ok = petrel_reduce_scatter(c, y, n, x, PETREL_REDUCE_SUM) == PETREL_OK;
        for (size_t i = 0; ok && i < n; i++)
            if (x[i] != (float)expected(P, (size_t)r * n + i, 10, PETREL_REDUCE_SUM))
                ok = report(r, "reduce_scatter", n, "wrong value");
    }
    ok = ok && petrel_comm_barrier(c) == PETREL_OK;
    if (ok && s->transport == PETREL_TRANSPORT_AUTO)
        for (int p = 0; p < P; p++)
            if (p != r && strcmp(petrel_net_link(net, p), "shm") != 0)
                ok = report(r, "link", 0, "not shared memory");
    if (ok && on_shm && P > 1) {
        /* A member that does not come to a call where the others look for its statement
         * in the segments: named at the timeout, as a member that sends nothing is. */
        petrel_comm_config lc = petrel_comm_config_default();
        lc.timeout_ms = 300;
        petrel_comm *late = NULL;
        ok = petrel_comm_new(&late, net, ranks, P, 7, lc) == PETREL_OK;
        ok = ok && check_allreduce(late, x, 1000, PETREL_REDUCE_SUM, 17);
        if (ok && r != P - 1) {
            char who[32];
            snprintf(who, sizeof who, "rank %d", P - 1);
            petrel_err err = petrel_allreduce(late, x, 1000, PETREL_REDUCE_SUM);
            if (err != PETREL_ERR_TIMEOUT || !strstr(petrel_errmsg(), who) ||
                !strstr(petrel_errmsg(), "did it call allreduce"))
                ok = report(r, "allreduce shm without the last member", 1000, petrel_errmsg());
        }
        petrel_comm_free(late);
    }
    petrel_comm_free(shm);
    petrel_comm_free(half_ring);
    petrel_comm_free(half);
    petrel_comm_free(rd);
    petrel_comm_free(ring);
    petrel_comm_free(c);
    free(y);
    free(x);
    return ok;
}

/* Large allreduces until one fails; the parent kills the victim meanwhile. */
static int survive(petrel_net *net, const scenario *s) {
    int r = petrel_net_rank(net), P = s->size, ranks[8];
    for (int i = 0; i < P; i++) ranks[i] = i;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.timeout_ms = 10000;
    petrel_comm *c = NULL;
    if (petrel_comm_new(&c, net, ranks, P, 1, cfg) != PETREL_OK) return EXIT_FAIL;
    size_t n = (size_t)4 << 20;
    float *x = calloc(n, sizeof *x);
    petrel_err err = PETREL_OK;
    for (int k = 0; k < 10000 && err == PETREL_OK; k++) {
        err = petrel_allreduce(c, x, n, PETREL_REDUCE_SUM);
        if (err == PETREL_OK) atomic_fetch_add(&sh->iterations[r], 1);
    }
    uint64_t seen = petrel_now_ns(), killed = atomic_load(&sh->kill_ns);
    double after_ms = killed ? (double)(seen - killed) * 1e-6 : -1;
    char victim[32];
    snprintf(victim, sizeof victim, "rank %d", s->victim);
    /* Directly, or through the abort of a member that failed first: the net holds
     * back a departing member's goodbye until its earlier messages are in. */
    bool named = strstr(petrel_errmsg(), victim) != NULL;
    printf("# rank %d: %s %.0f ms after the kill: %s\n", r, petrel_strerror(err), after_ms,
           petrel_errmsg());
    fflush(stdout);
    free(x);
    petrel_comm_free(c);
    return err == PETREL_ERR_IO && named && after_ms >= 0 && after_ms < 1000 ? EXIT_SAW_DEATH
                                                                             : EXIT_FAIL;
}

static int node_main(const scenario *s, int rank) {
    petrel_net *net = netjob_join(&job, rank, s->size, 0, s->transport, "coll-token");
    if (!net) return EXIT_FAIL;
    int rc;
    if (s->victim < 0) {
        rc = collectives(net, s) ? EXIT_OK : EXIT_FAIL;
        if (petrel_net_barrier(net, 10000) != PETREL_OK) rc = EXIT_FAIL;
    } else {
        rc = survive(net, s); /* the victim dies inside */
    }
    petrel_net_stop(net);
    return rc;
}

static void run(const scenario *s) {
    netjob_begin(&job, s->name);
    memset(sh, 0, sizeof *sh);
    pid_t pids[8];
    for (int r = 0; r < s->size; r++) {
        pids[r] = fork();
        if (pids[r] == 0) _exit(node_main(s, r));
    }
    close(job.listen_fd);
    uint64_t deadline = petrel_now_ns() + 20000000000ull;
    if (s->victim >= 0) {
        /* a couple of allreduces done: the next is under way */
        while (atomic_load(&sh->iterations[0]) < 2 && petrel_now_ns() < deadline) usleep(1000);
        usleep(3000);
        atomic_store(&sh->kill_ns, petrel_now_ns());
        kill(pids[s->victim], SIGKILL);
    }
    for (int r = 0; r < s->size; r++) {
        int status = 0;
        pid_t got;
        while ((got = waitpid(pids[r], &status, WNOHANG)) == 0 && petrel_now_ns() < deadline)
            usleep(10000);
        if (got == 0) { /* a hang is a failure: never leave it running */
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &status, 0);
            printf("# %s: rank %d hung\n", s->name, r);
            CHECK(!"a node hung");
            continue;
        }
        if (r == s->victim) {
            CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
            continue;
        }
        int want = s->victim >= 0 ? EXIT_SAW_DEATH : EXIT_OK;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != want)
            printf("# %s: rank %d ended with status %d, expected exit %d\n", s->name, r,
                   WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status), want);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == want);
    }
}

static void test_tcp(void) {
    for (int P = 1; P <= 5; P++) {
        scenario s = {"tcp", P, PETREL_TRANSPORT_TCP, -1};
        run(&s);
    }
}

static void test_shm(void) {
    for (int P = 1; P <= 5; P++) {
        scenario s = {"shm", P, PETREL_TRANSPORT_AUTO, -1};
        run(&s);
    }
}

static void test_sigkill_mid_allreduce(void) {
    scenario s = {"kill", 4, PETREL_TRANSPORT_AUTO, 2};
    run(&s);
}

/* ---- nodes as threads of one process ----------------------------------------------- */

/* A job whose nodes are threads of this process over PETREL_TRANSPORT_AUTO: the
 * shared-memory transport links them (through its registry of this process's
 * inboxes), so AUTO takes the shared-memory allreduce, and every member has the same
 * pid: the segments' names must still differ. A leftover of a dead process that had
 * this pid sits under the names the first segments take, and must be replaced. */
typedef struct thread_node {
    int rank, size;
    bool ok;
} thread_node;

static void *thread_node_main(void *arg) {
    thread_node *t = arg;
    petrel_net *net = netjob_join(&job, t->rank, t->size, 0, PETREL_TRANSPORT_AUTO, "coll-token");
    if (!net) return NULL;
    int ranks[8];
    for (int i = 0; i < t->size; i++) ranks[i] = i;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.timeout_ms = 10000;
    petrel_comm *c = NULL, *shm = NULL;
    size_t n = (size_t)1 << 20; /* 4 MiB */
    float *x = malloc(n * sizeof *x);
    bool ok = x && petrel_comm_new(&c, net, ranks, t->size, 1, cfg) == PETREL_OK;
    cfg.algo = PETREL_ALGO_SHM;
    ok = ok && petrel_comm_new(&shm, net, ranks, t->size, 2, cfg) == PETREL_OK;
    for (int p = 0; ok && p < t->size; p++)
        if (p != t->rank && strcmp(petrel_net_link(net, p), "shm") != 0)
            ok = report(t->rank, "link", 0, "not shared memory");
    ok = ok && check_allreduce(c, x, n, PETREL_REDUCE_SUM, 14);
    /* AUTO took shared memory: the data written once, and a 64-byte SYNC1 to each other
     * member (the ring would send 2 (P-1) / P of the data, in chunks) */
    if (ok && petrel_comm_get_stats(c).payload_bytes_sent !=
                  n * sizeof(float) + 64 * (size_t)(t->size - 1))
        ok = report(t->rank, "allreduce auto", n, "not by shared memory");
    ok = ok && check_allreduce(shm, x, n, PETREL_REDUCE_AVG, 15);
    size_t before = petrel_comm_get_stats(c).payload_bytes_sent;
    ok = ok && check_allreduce(c, x, n, PETREL_REDUCE_MAX, 16); /* the same segments */
    /* ... where each member has stated this call: no SYNC1 */
    if (ok && petrel_comm_get_stats(c).payload_bytes_sent - before != n * sizeof(float))
        ok = report(t->rank, "allreduce auto, again", n, "sent more than the data");
    petrel_comm_free(shm);
    petrel_comm_free(c);
    free(x);
    if (petrel_net_barrier(net, 10000) != PETREL_OK) ok = false;
    petrel_net_stop(net);
    t->ok = ok;
    return NULL;
}

/* Names under /dev/shm that start with prefix. */
static int count_shm_names(const char *prefix) {
    DIR *d = opendir("/dev/shm");
    if (!d) return 0;
    int count = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) count++;
    closedir(d);
    return count;
}

static void test_threads_auto(void) {
    char prefix[64], name[96];
    snprintf(prefix, sizeof prefix, "petrel-coll-%d-", (int)getpid());
    for (int P = 2; P <= 3; P++) {
        CHECK(count_shm_names(prefix) == 0);
        /* In the first job: stale names, as a dead process with this pid would have
         * left them. Member r's first segment of communicator 1 takes one of them: the
         * last number counts the segments this process has made, none before (the
         * other scenarios make theirs in child processes). */
        bool stale = P == 2;
        for (int r = 0; stale && r < P; r++)
            for (int k = 1; k <= P; k++) {
                snprintf(name, sizeof name, "/%sr%d-c1-%d", prefix, r, k);
                int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
                CHECK(fd >= 0 && ftruncate(fd, 4096) == 0);
                if (fd >= 0) close(fd);
            }
        netjob_begin(&job, "threads");
        pthread_t th[8];
        thread_node nodes[8];
        for (int r = 0; r < P; r++) {
            nodes[r] = (thread_node){r, P, false};
            CHECK(pthread_create(&th[r], NULL, thread_node_main, &nodes[r]) == 0);
        }
        for (int r = 0; r < P; r++) {
            pthread_join(th[r], NULL);
            if (!nodes[r].ok) printf("# threads: rank %d of %d failed\n", r, P);
            CHECK(nodes[r].ok);
        }
        /* Each member replaced one stale name, and unlinked it once the others had
         * mapped its segment; the test removes the rest. */
        int replaced = 0;
        for (int r = 0; stale && r < P; r++)
            for (int k = 1; k <= P; k++) {
                snprintf(name, sizeof name, "/%sr%d-c1-%d", prefix, r, k);
                if (shm_unlink(name) != 0) replaced++;
            }
        CHECK(replaced == (stale ? P : 0));
        CHECK(count_shm_names(prefix) == 0);
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    RUN(test_tcp);
    RUN(test_shm);
    RUN(test_sigkill_mid_allreduce);
    RUN(test_threads_auto);
    return CHECK_DONE();
}
