/*
 * petrel bench allreduce: petrel_allreduce against Open MPI's MPI_Allreduce, in the
 * same run, on the same sizes and numbers of processes, all on this host.
 *
 * Columns, for P = 2 and 4 processes and each size (bytes of float32, SUM, in place):
 *   petrel   a job of P petrel nodes forked from the bench (bench_harness.c: rank 0
 *            gets the coordinator's listening socket), PETREL_TRANSPORT_AUTO, every
 *            link shared memory (checked with petrel_net_link), one communicator over
 *            all of them with petrel_comm_config_default()
 *   openmpi  `mpirun --oversubscribe --bind-to none -np P mpi_allreduce BYTES:ITERS ...`
 *            (bench/mpi_allreduce.c: MPI_Allreduce, MPI_FLOAT, MPI_SUM, MPI_IN_PLACE),
 *            Open MPI's defaults otherwise (the vader shared-memory BTL on one host)
 *   memcpy   one thread of the bench copying a buffer of the size into another, over
 *            and over (bench_memcpy_gbs)
 * Both allreduces are timed alike: one checked call (member r holds (r + 1) + (i % 13)
 * at element i; every member must end with the exact sum), the buffer zeroed, W
 * untimed calls, then ITERS calls back to back, each timed on its own; every member
 * takes the median of its times and the figure is the largest median over members.
 * algbw = bytes / time, busbw = algbw * 2 (P - 1) / P (nccl-tests' bus bandwidth: what
 * each member's links carry in an optimal ring, so figures for different P compare).
 */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_SIZES     8
#define MAX_P         4
#define MAX_ROUNDS    5
#define MPI_PROG      "mpi_allreduce"
#define HANDOFF_BYTES (2u << 20) /* a member's half of the 4 MiB case */

static const int ranks_of[] = {2, 4}; /* the process counts, by index */
#define NP ((int)(sizeof ranks_of / sizeof ranks_of[0]))

typedef struct plan {
    size_t size[MAX_SIZES];
    int nsizes;
    int iters[NP][MAX_SIZES]; /* timed calls per case */
    bool use_p[NP];
    int rounds;
    int call_ms;           /* bound on each collective and on joining the job */
    petrel_coll_algo algo; /* petrel's allreduce algorithm (--algo) */
    int job_s;             /* bound on one job, start to exit */
} plan;

/* What one member of a petrel job reports, in memory shared with the bench. */
typedef struct member_result {
    bool ok;
    double time_s[MAX_SIZES]; /* its median */
    bool checked[MAX_SIZES];  /* the checked call gave the exact sums */
    char error[320];
} member_result;

typedef struct results {
    member_result member[MAX_P]; /* the current job, written by the children */
    double petrel_s[NP][MAX_ROUNDS][MAX_SIZES], mpi_s[NP][MAX_ROUNDS][MAX_SIZES];
    double memcpy_gbs[MAX_ROUNDS][MAX_SIZES];
    double handoff_gbs[MAX_ROUNDS][2]; /* bench_handoff_gbs(HANDOFF_BYTES), before and after */
    bool petrel_ok[NP], mpi_ok[NP];
    double petrel[NP][MAX_SIZES], mpi[NP][MAX_SIZES], mc[MAX_SIZES]; /* medians over rounds */
} results;

static int warmup_of(int iters) {
    return iters / 10 < 2 ? 2 : iters / 10;
}

/* ---- a petrel job ------------------------------------------------------------------------ */

typedef struct job_ctx {
    const plan *p;
    int pi; /* index into ranks_of */
    int listen_fd;
    char addr[64], job_id[64];
    member_result *res;
} job_ctx;

/* The checked call: true when every element is the exact sum over P members. */
static bool checked_call(petrel_comm *c, float *x, size_t n, int rank, int P, member_result *m) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(rank + 1) + (float)(i % 13);
    if (petrel_allreduce(c, x, n, PETREL_REDUCE_SUM) != PETREL_OK) {
        bench_first_error(m->error, sizeof m->error, "allreduce of %zu floats: %s", n,
                          petrel_errmsg());
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (x[i] != (float)(P * (P + 1) / 2) + (float)P * (float)(i % 13)) {
            bench_first_error(m->error, sizeof m->error,
                              "allreduce of %zu floats: element %zu is %g, expected %g", n, i,
                              (double)x[i],
                              (double)((float)(P * (P + 1) / 2) + (float)P * (i % 13)));
            return false;
        }
    return true;
}

static bool measure(petrel_comm *c, const plan *p, int pi, float *x, double *t, member_result *m) {
    int rank = petrel_comm_rank(c), P = petrel_comm_size(c);
    for (int s = 0; s < p->nsizes; s++) {
        size_t n = p->size[s] / sizeof(float);
        int iters = p->iters[pi][s];
        if (!(m->checked[s] = checked_call(c, x, n, rank, P, m))) return false;
        memset(x, 0, n * sizeof(float));
        for (int k = 0; k < warmup_of(iters) + iters; k++) {
            uint64_t t0 = petrel_now_ns();
            if (petrel_allreduce(c, x, n, PETREL_REDUCE_SUM) != PETREL_OK) {
                bench_first_error(m->error, sizeof m->error, "allreduce of %zu floats: %s", n,
                                  petrel_errmsg());
                return false;
            }
            if (k >= warmup_of(iters)) t[k - warmup_of(iters)] = (double)(petrel_now_ns() - t0);
        }
        m->time_s[s] = petrel_median(t, iters) * 1e-9;
    }
    return true;
}

static int member_main(int rank, void *arg) {
    const job_ctx *j = arg;
    const plan *p = j->p;
    const int P = ranks_of[j->pi];
    member_result *m = &j->res[rank];
    if (rank != 0) close(j->listen_fd);
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = rank;
    cfg.size = P;
    cfg.servers = 0;
    cfg.transport = PETREL_TRANSPORT_AUTO;
    cfg.coordinator = j->addr;
    cfg.coordinator_fd = rank == 0 ? j->listen_fd : -1;
    cfg.token = "petrel-bench";
    cfg.job_id = j->job_id;
    cfg.connect_timeout_ms = (uint32_t)p->call_ms;
    petrel_net *net = NULL;
    if (petrel_net_start(&net, &cfg) != PETREL_OK) {
        bench_first_error(m->error, sizeof m->error, "start: %s", petrel_errmsg());
        return 1;
    }
    bool ok = true;
    for (int peer = 0; ok && peer < P; peer++)
        if (peer != rank && strcmp(petrel_net_link(net, peer), "shm") != 0) {
            bench_first_error(m->error, sizeof m->error,
                              "the link to rank %d is \"%s\", expected \"shm\"", peer,
                              petrel_net_link(net, peer));
            ok = false;
        }
    size_t most = 0;
    int most_iters = 1;
    for (int s = 0; s < p->nsizes; s++) {
        if (p->size[s] > most) most = p->size[s];
        if (p->iters[j->pi][s] > most_iters) most_iters = p->iters[j->pi][s];
    }
    float *x = petrel_malloc(most);
    double *t = petrel_malloc((size_t)most_iters * sizeof *t);
    if (ok && (!x || !t)) {
        bench_first_error(m->error, sizeof m->error, "out of memory");
        ok = false;
    }
    int ranks[MAX_P];
    for (int r = 0; r < P; r++) ranks[r] = r;
    petrel_comm_config cc = petrel_comm_config_default();
    cc.timeout_ms = p->call_ms;
    cc.algo = p->algo;
    petrel_comm *c = NULL;
    if (ok && petrel_comm_new(&c, net, ranks, P, 1, cc) != PETREL_OK) {
        bench_first_error(m->error, sizeof m->error, "communicator: %s", petrel_errmsg());
        ok = false;
    }
    if (ok) ok = measure(c, p, j->pi, x, t, m);
    /* Nobody leaves before everyone is done: a goodbye over TCP could overtake the
     * last message over shared memory. */
    if (ok && petrel_net_barrier(net, p->call_ms) != PETREL_OK) {
        bench_first_error(m->error, sizeof m->error, "final barrier: %s", petrel_errmsg());
        ok = false;
    }
    petrel_comm_free(c);
    petrel_net_stop(net);
    petrel_free(x);
    petrel_free(t);
    m->ok = ok;
    return ok ? 0 : 1;
}

/* Runs the petrel job of P = ranks_of[pi]; true when every member measured. */
static bool run_petrel(const plan *p, int pi, int round, results *r) {
    const int P = ranks_of[pi];
    job_ctx j = {.p = p, .pi = pi, .res = r->member};
    memset(r->member, 0, sizeof r->member);
    if (!bench_listen(&j.listen_fd, j.addr, sizeof j.addr)) {
        fprintf(stderr, "petrel: error: bench allreduce: listen on 127.0.0.1: %s\n",
                strerror(errno));
        return false;
    }
    snprintf(j.job_id, sizeof j.job_id, "bench-ar-%d-%d-%d", (int)getpid(), P, round);
    bench_exit ex[MAX_P];
    bool late;
    bool ok = bench_procs_run(P, member_main, &j, p->job_s, ex, &late);
    close(j.listen_fd);
    for (int m = 0; m < P; m++) ok = ok && r->member[m].ok;
    if (!ok) {
        bench_shm_cleanup(j.job_id, P);
        if (late)
            fprintf(stderr, "petrel: error: bench allreduce: %d ranks: ran past %d s\n", P,
                    p->job_s);
        for (int m = 0; m < P; m++) {
            if (r->member[m].error[0])
                fprintf(stderr, "petrel: error: bench allreduce: %d ranks, rank %d: %s\n", P, m,
                        r->member[m].error);
            else if (ex[m].code < 0 && !ex[m].signal)
                fprintf(stderr,
                        "petrel: error: bench allreduce: %d ranks, rank %d: could not be "
                        "started (fork)\n",
                        P, m);
            else if (ex[m].signal && !ex[m].stopped)
                fprintf(stderr,
                        "petrel: error: bench allreduce: %d ranks, rank %d: killed by "
                        "signal %d\n",
                        P, m, ex[m].signal);
        }
        return false;
    }
    for (int s = 0; s < p->nsizes; s++) {
        double worst = 0;
        for (int m = 0; m < P; m++)
            if (r->member[m].time_s[s] > worst) worst = r->member[m].time_s[s];
        r->petrel_s[pi][round][s] = worst;
    }
    return true;
}

/* ---- Open MPI ---------------------------------------------------------------------------- */

typedef struct mpi_setup {
    char mpirun[1024], prog[1024];
    char library[160]; /* from the program's first line */
    char why[320];     /* why it is unavailable, or why a run failed */
} mpi_setup;

/* name found in a directory of $PATH, into out. */
static bool find_in_path(const char *name, char *out, size_t size) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *at = path; *at;) {
        size_t len = strcspn(at, ":");
        snprintf(out, size, "%.*s/%s", (int)len, at, name);
        if (len > 0 && access(out, X_OK) == 0) return true;
        at += len + (at[len] == ':');
    }
    return false;
}

/* mpirun in $PATH, and the reference program: --mpi PATH, else beside this executable. */
static bool mpi_find(mpi_setup *m, const char *prog) {
    if (!find_in_path("mpirun", m->mpirun, sizeof m->mpirun)) {
        snprintf(m->why, sizeof m->why, "mpirun is not in PATH");
        return false;
    }
    if (prog) {
        snprintf(m->prog, sizeof m->prog, "%s", prog);
    } else {
        char self[900];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            snprintf(m->why, sizeof m->why, "cannot read /proc/self/exe: %s", strerror(errno));
            return false;
        }
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        snprintf(m->prog, sizeof m->prog, "%s/%s", slash ? self : ".", MPI_PROG);
    }
    if (access(m->prog, X_OK) != 0) {
        snprintf(m->why, sizeof m->why, "%.240s not found (built when CMake finds MPI)", m->prog);
        return false;
    }
    return true;
}

/* The last non-empty line of text, into out. */
static void last_line(const char *text, char *out, size_t size) {
    out[0] = '\0';
    for (const char *line = text; line && *line;) {
        size_t len = strcspn(line, "\n");
        if (len > 0) snprintf(out, size, "%.*s", (int)len, line);
        line += len + (line[len] == '\n');
    }
}

/* Runs the reference with P = ranks_of[pi] and reads its lines. */
static bool run_mpi(mpi_setup *m, const plan *p, int pi, int round, results *r) {
    const int P = ranks_of[pi];
    char np[16], cases[MAX_SIZES][48];
    snprintf(np, sizeof np, "%d", P);
    char *argv[16 + 2 * MAX_SIZES];
    int a = 0;
    argv[a++] = m->mpirun;
    argv[a++] = "--oversubscribe";
    argv[a++] = "--bind-to";
    argv[a++] = "none";
    argv[a++] = "-np";
    argv[a++] = np;
    argv[a++] = m->prog; /* its warm-up, left to it, is petrel's: ITERS / 10, at least 2 */
    for (int s = 0; s < p->nsizes; s++) {
        snprintf(cases[s], sizeof cases[s], "%zu:%d", p->size[s], p->iters[pi][s]);
        argv[a++] = cases[s];
    }
    argv[a] = NULL;
    char *env[] = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", NULL};
    char *out = NULL, why[320];
    int rc = bench_exec(argv, env, p->job_s, &out, why, sizeof why);
    bool got[MAX_SIZES] = {false};
    for (const char *line = out; line && *line;) {
        size_t len = strcspn(line, "\n");
        int ranks = 0, iters = 0;
        size_t bytes = 0;
        double us = 0;
        char check[16] = "", lib[160];
        if (sscanf(line, "mpi_allreduce ranks=%d bytes=%zu iters=%d time_us=%lf check=%15s", &ranks,
                   &bytes, &iters, &us, check) == 5 &&
            ranks == P && strcmp(check, "ok") == 0) {
            for (int s = 0; s < p->nsizes; s++)
                if (p->size[s] == bytes) {
                    r->mpi_s[pi][round][s] = us * 1e-6;
                    got[s] = true;
                }
        } else if (sscanf(line, "mpi_allreduce library=%159[^\n]", lib) == 1) {
            snprintf(m->library, sizeof m->library, "%s", lib);
        }
        line += len + (line[len] == '\n');
    }
    bool all = rc == 0;
    for (int s = 0; s < p->nsizes; s++) all = all && got[s];
    if (!all) {
        char last[160];
        last_line(out, last, sizeof last);
        snprintf(m->why, sizeof m->why, "%d ranks: %.140s%s%s", P,
                 why[0] ? why
                 : rc   ? "mpirun failed"
                        : "a case is missing or failed its check",
                 last[0] ? ": " : "", last);
    }
    petrel_free(out);
    return all;
}

/* ---- output ------------------------------------------------------------------------------- */

static double busbw_gbs(size_t bytes, double time_s, int P) {
    return time_s > 0 ? (double)bytes / time_s * 2.0 * (P - 1) / P * 1e-9 : 0;
}

static void summarize(const plan *p, results *r) {
    double v[MAX_ROUNDS];
    for (int s = 0; s < p->nsizes; s++) {
        for (int pi = 0; pi < NP; pi++) {
            for (int n = 0; n < p->rounds; n++) v[n] = r->petrel_s[pi][n][s];
            r->petrel[pi][s] = r->petrel_ok[pi] ? petrel_median(v, p->rounds) : 0;
            for (int n = 0; n < p->rounds; n++) v[n] = r->mpi_s[pi][n][s];
            r->mpi[pi][s] = r->mpi_ok[pi] ? petrel_median(v, p->rounds) : 0;
        }
        for (int n = 0; n < p->rounds; n++) v[n] = r->memcpy_gbs[n][s];
        r->mc[s] = petrel_median(v, p->rounds);
    }
}

static void print_results(const plan *p, const results *r) {
    char name[32];
    for (int pi = 0; pi < NP; pi++) {
        if (!p->use_p[pi] || !r->petrel_ok[pi]) continue;
        const int P = ranks_of[pi];
        for (int s = 0; s < p->nsizes; s++) {
            size_t bytes = p->size[s];
            double t = r->petrel[pi][s], bus = busbw_gbs(bytes, t, P), mc = r->mc[s];
            printf("allreduce %-7s %d ranks  petrel %8.1f us  algbw %6.2f  busbw %6.2f GB/s",
                   bench_size_name(bytes, name, sizeof name), P, t * 1e6, (double)bytes / t * 1e-9,
                   bus);
            if (r->mpi_ok[pi]) {
                double mbus = busbw_gbs(bytes, r->mpi[pi][s], P);
                printf("  openmpi %8.1f us  busbw %6.2f GB/s  petrel/openmpi %5.2fx",
                       r->mpi[pi][s] * 1e6, mbus, bus / mbus);
            }
            printf("  memcpy %6.1f GB/s  petrel busbw = %.0f%% of memcpy\n", mc, 100 * bus / mc);
        }
    }
}

/* The targets, at 4 MiB and above with 2 ranks: each met or missed with the
 * figure that decides it. */
static void print_targets(const plan *p, const results *r) {
    char name[32];
    const int pi = 0, P = ranks_of[pi];
    if (!p->use_p[pi] || !r->petrel_ok[pi]) return;
    double worst_mpi = 1e30, worst_mc = 1e30;
    int at_mpi = -1, at_mc = -1;
    for (int s = 0; s < p->nsizes; s++) {
        if (p->size[s] < (4u << 20)) continue;
        double bus = busbw_gbs(p->size[s], r->petrel[pi][s], P);
        if (r->mpi_ok[pi]) {
            double q = bus / busbw_gbs(p->size[s], r->mpi[pi][s], P);
            if (q < worst_mpi) worst_mpi = q, at_mpi = s;
        }
        if (bus / r->mc[s] < worst_mc) worst_mc = bus / r->mc[s], at_mc = s;
    }
    if (at_mpi >= 0)
        printf("target busbw >= 2x Open MPI at 4 MiB and above, 2 ranks: %s (lowest %.2fx, at "
               "%s)\n",
               worst_mpi >= 2 ? "met" : "MISSED", worst_mpi,
               bench_size_name(p->size[at_mpi], name, sizeof name));
    else
        printf("target busbw >= 2x Open MPI at 4 MiB and above, 2 ranks: not measured (no Open "
               "MPI figures)\n");
    if (at_mc >= 0)
        printf("target busbw >= 50%% of memcpy at 4 MiB and above, 2 ranks: %s (lowest %.0f%%, "
               "at %s)\n",
               worst_mc >= 0.5 ? "met" : "MISSED", 100 * worst_mc,
               bench_size_name(p->size[at_mc], name, sizeof name));
}

/* The state of the machine's caches during the run: shared-memory collectives move
 * data from core to core and pay this rate to reuse their memory. */
static void print_handoff(const plan *p, const results *r) {
    double v[2 * MAX_ROUNDS], lo = 1e30, hi = 0;
    int n = 2 * p->rounds;
    for (int i = 0; i < n; i++) {
        v[i] = r->handoff_gbs[i / 2][i % 2];
        if (v[i] < lo) lo = v[i];
        if (v[i] > hi) hi = v[i];
    }
    if (lo <= 0) {
        printf("handoff: not measured (needs two CPUs)\n");
        return;
    }
    printf("handoff: one CPU rewriting 2 MiB that another CPU has just read: %.1f GB/s (median of "
           "%d, before and after each round; %.1f to %.1f)\n",
           petrel_median(v, n), n, lo, hi);
}

/* ---- the command -------------------------------------------------------------------------- */

static void allreduce_usage(FILE *f) {
    fprintf(f,
            "usage: petrel bench allreduce [options]\n"
            "\n"
            "petrel_allreduce between P processes on this host (shared-memory links) against\n"
            "Open MPI's MPI_Allreduce in the same run (mpirun --oversubscribe --bind-to none\n"
            "-np P mpi_allreduce), float32 SUM in place, 4 KiB to 64 MiB, P = 2 and 4, and\n"
            "memcpy on one thread. Prints one line per case: time per allreduce (each rank's\n"
            "median, the slowest rank's), algbw = bytes / time, busbw = algbw * 2(P-1)/P\n"
            "(GB = 1e9 bytes), the ratio to Open MPI and busbw as a share of memcpy; then the\n"
            "targets of docs/bench.md, and the handoff: how fast one CPU rewrites 2 MiB that\n"
            "another CPU has just read, the cost of every shared-memory exchange on this\n"
            "machine now. Without mpirun or mpi_allreduce the Open MPI columns\n"
            "are left out and it still exits 0. Takes 15 to 40 s (--quick: 3 to 10 s).\n"
            "\n"
            "options (default in brackets):\n"
            "  --quick        one round, a quarter of the calls per case [3 rounds; per case\n"
            "                 about 1 GiB reduced in 10 to 1000 calls (P = 2), 256 MiB in 10\n"
            "                 to 500 calls (P = 4)]\n"
            "  --rounds N     rounds of every job, 1..%d; figures are medians [3, --quick 1]\n"
            "  --ranks P      only P = 2 or P = 4 [both]\n"
            "  --algo A       petrel's algorithm: auto (on one host, as here: shm at every\n"
            "                 size; each rank reduces its block from the others' shared\n"
            "                 segments), ring, shm or rd (recursive doubling) [auto]\n"
            "  --mpi PATH     the reference program [mpi_allreduce beside this executable]\n"
            "  --no-mpi       leave Open MPI out\n"
            "  -h, --help     show this help\n",
            MAX_ROUNDS);
}

int bench_allreduce(int argc, char **argv) {
    enum { OPT_QUICK = 256, OPT_ROUNDS, OPT_RANKS, OPT_ALGO, OPT_MPI, OPT_NO_MPI };
    static const char *algo_names[] = {"auto", "ring", "rd", "shm"}; /* petrel_coll_algo order */
    petrel_coll_algo algo = PETREL_ALGO_AUTO;
    static const struct option longopts[] = {{"quick", no_argument, 0, OPT_QUICK},
                                             {"rounds", required_argument, 0, OPT_ROUNDS},
                                             {"ranks", required_argument, 0, OPT_RANKS},
                                             {"algo", required_argument, 0, OPT_ALGO},
                                             {"mpi", required_argument, 0, OPT_MPI},
                                             {"no-mpi", no_argument, 0, OPT_NO_MPI},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    bool quick = false, use_mpi = true, no_mpi = false;
    const char *prog = NULL;
    int rounds = 0, only = 0, c; /* rounds 0: 3, or 1 with --quick */
    int64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_QUICK:
            quick = true;
            break;
        case OPT_ROUNDS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > MAX_ROUNDS)
                return cli_usage_error("bench allreduce ", "--rounds wants 1..%d, got '%s'",
                                       MAX_ROUNDS, optarg);
            rounds = (int)v;
            break;
        case OPT_RANKS:
            if (!cli_parse_i64(optarg, &v) || (v != 2 && v != 4))
                return cli_usage_error("bench allreduce ", "--ranks wants 2 or 4, got '%s'",
                                       optarg);
            only = (int)v;
            break;
        case OPT_ALGO: {
            int a = 0;
            while (a < PETREL_ALGO_COUNT && strcmp(optarg, algo_names[a]) != 0) a++;
            if (a == PETREL_ALGO_COUNT)
                return cli_usage_error("bench allreduce ",
                                       "--algo wants auto, ring, shm or rd, "
                                       "got '%s'",
                                       optarg);
            algo = (petrel_coll_algo)a;
            break;
        }
        case OPT_MPI:
            prog = optarg;
            break;
        case OPT_NO_MPI:
            use_mpi = false, no_mpi = true;
            break;
        case 'h':
            allreduce_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("bench allreduce ", "bad option");
        }
    }
    if (optind < argc)
        return cli_usage_error("bench allreduce ", "unexpected argument '%s'", argv[optind]);

    if (rounds == 0) rounds = quick ? 1 : 3;
    plan p = {.size = {4u << 10, 64u << 10, 1u << 20, 4u << 20, 16u << 20, 64u << 20},
              .nsizes = 6,
              .rounds = rounds,
              .call_ms = 30000,
              .algo = algo,
              .job_s = 120};
    /* Calls per case: a volume of data, within bounds; 4 processes on 2 cores are
     * several times slower, so they reduce less. */
    const size_t volume[NP] = {quick ? 256u << 20 : 1024u << 20, quick ? 64u << 20 : 256u << 20};
    const int most[NP] = {quick ? 250 : 1000, quick ? 125 : 500}, least = quick ? 3 : 10;
    for (int pi = 0; pi < NP; pi++) {
        p.use_p[pi] = only == 0 || only == ranks_of[pi];
        for (int s = 0; s < p.nsizes; s++) {
            size_t k = volume[pi] / p.size[s];
            p.iters[pi][s] = k < (size_t)least ? least : k > (size_t)most[pi] ? most[pi] : (int)k;
        }
    }
    mpi_setup mpi = {0};
    if (use_mpi) use_mpi = mpi_find(&mpi, prog);
    if (!use_mpi && mpi.why[0] && prog)
        fprintf(stderr, "petrel: error: bench allreduce: %s\n", mpi.why);

    signal(SIGPIPE, SIG_IGN);
    results *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return cli_fail(PETREL_ERR_NOMEM, "bench allreduce", "cannot map the shared results page");
    memset(r, 0, sizeof *r);
    size_t most_bytes = p.size[p.nsizes - 1];
    unsigned char *src = petrel_malloc(most_bytes), *dst = petrel_malloc(most_bytes);
    if (!src || !dst) {
        petrel_free(src);
        petrel_free(dst);
        munmap(r, sizeof *r);
        return cli_fail(PETREL_ERR_NOMEM, "bench allreduce", NULL);
    }
    memset(src, 1, most_bytes);
    memset(dst, 2, most_bytes);

    petrel_comm_config cc = petrel_comm_config_default();
    const double t0 = petrel_now_s();
    char how[96];
    if (algo == PETREL_ALGO_AUTO)
        snprintf(how, sizeof how, "auto: shm at every size on one host");
    else
        snprintf(how, sizeof how, "%s, chunks of %zu KiB", algo_names[algo], cc.chunk_bytes >> 10);
    printf("petrel bench allreduce: float32 SUM in place, processes on this host; petrel: shm "
           "links, %s; openmpi: mpirun --oversubscribe --bind-to none, MPI_Allreduce; busbw = "
           "algbw * 2(P-1)/P%s\n",
           how, quick ? " (--quick)" : "");
    fflush(stdout);
    for (int pi = 0; pi < NP; pi++) r->petrel_ok[pi] = r->mpi_ok[pi] = p.use_p[pi];
    for (int n = 0; n < p.rounds; n++) {
        r->handoff_gbs[n][0] = bench_handoff_gbs(HANDOFF_BYTES);
        for (int pi = 0; pi < NP; pi++) {
            if (!p.use_p[pi]) continue;
            if (r->petrel_ok[pi]) r->petrel_ok[pi] = run_petrel(&p, pi, n, r);
            if (use_mpi && r->mpi_ok[pi]) r->mpi_ok[pi] = run_mpi(&mpi, &p, pi, n, r);
            if (!use_mpi) r->mpi_ok[pi] = false;
        }
        for (int s = 0; s < p.nsizes; s++) {
            size_t k = (256u << 20) / p.size[s];
            r->memcpy_gbs[n][s] = bench_memcpy_gbs(dst, src, p.size[s], k < 8 ? 8 : k);
        }
        r->handoff_gbs[n][1] = bench_handoff_gbs(HANDOFF_BYTES);
    }
    summarize(&p, r);
    if (no_mpi)
        printf("openmpi: skipped (--no-mpi)\n");
    else if (!use_mpi)
        printf("openmpi: unavailable (scripts/deps.sh --bench)%s%s\n", mpi.why[0] ? ": " : "",
               mpi.why);
    else if (mpi.library[0])
        printf("openmpi: %s\n", mpi.library);
    print_results(&p, r);
    if (use_mpi)
        for (int pi = 0; pi < NP; pi++)
            if (p.use_p[pi] && !r->mpi_ok[pi]) printf("openmpi: failed: %s\n", mpi.why);
    print_targets(&p, r);
    print_handoff(&p, r);
    char iters[256] = "";
    for (int pi = 0; pi < NP; pi++) {
        if (!p.use_p[pi]) continue;
        size_t at = strlen(iters);
        snprintf(iters + at, sizeof iters - at, "%s%d ranks", at ? "; " : "", ranks_of[pi]);
        for (int s = 0; s < p.nsizes; s++) {
            at = strlen(iters);
            snprintf(iters + at, sizeof iters - at, "%s%d", s ? "/" : " ", p.iters[pi][s]);
        }
    }
    printf("time: each rank's median of N calls after N/10 (at least 2), the slowest rank's; "
           "N by size: %s; memcpy: one buffer into another, over and over; 1 GB = 1e9 bytes; "
           "%s%d round%s; %.0f s in all\n",
           iters, p.rounds > 1 ? "median of " : "", p.rounds, p.rounds > 1 ? "s" : "",
           petrel_now_s() - t0);
    bool ok = true;
    for (int pi = 0; pi < NP; pi++) ok = ok && (r->petrel_ok[pi] || !p.use_p[pi]);
    petrel_free(src);
    petrel_free(dst);
    munmap(r, sizeof *r);
    if (!ok) {
        fprintf(stderr, "hint: PETREL_LOG=debug petrel bench allreduce --quick --ranks 2 shows "
                        "what the nodes did\n");
        return CLI_FAIL;
    }
    return CLI_OK;
}
