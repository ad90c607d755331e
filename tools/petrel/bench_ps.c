/*
 * petrel bench ps: what the parameter server (ps.h) costs over the transport it runs
 * on, and how it compares with the figures of a mature C++ parameter server.
 *
 * Every case runs in real jobs of forked processes on 127.0.0.1 (bench_harness.c: the
 * bench makes rank 0's listening socket and plays the launcher): rank 0 the
 * coordinator, rank 1 the one server, ranks 2 .. 1+W the W = 1 or 2 workers, with
 *   shm  PETREL_TRANSPORT_AUTO (every worker-server link is shared memory; checked
 *        with petrel_net_link)
 *   tcp  PETREL_TRANSPORT_TCP over loopback
 * and the default net configuration otherwise (frames of 1 MiB). Every table is async
 * and has push off (a server sends rows only when asked), SUM rule, zero init:
 *   table 0          dense, 1 row of 1024 floats (4 KiB)
 *   tables 1 .. B    dense, 1 row of SIZE / 4 floats, one per throughput size
 *   table B + 1      sparse, 1 float per key
 *
 * Cases, timed by each worker with petrel_now_ns (all workers start together, released
 * by worker 0 through net messages; with 2 workers the figures are aggregates):
 *   push 4 KiB   petrel_ps_inc of the row, then petrel_ps_flush (sends the INC and waits
 *                for the server's FLUSH reply, so the delta has been applied): the median
 *                and p99 of lat_iters iterations after lat_warmup, every worker's pooled
 *   pull 4 KiB   petrel_ps_clock (untimed: on an async table it never waits, and it makes
 *                the cached row stale), then petrel_ps_get, timed: a GET to the server and
 *                its ROWS back; every get is checked to have fetched (stats.fetches). The
 *                clock's own messages (CLOCK to the server, ADVANCE back) are still in
 *                flight during that get; "settled get" puts an untimed raw exchange between
 *                clock and get, after which both have been handled (links keep order), and
 *                so times the GET/ROWS round trip alone
 *   push SIZE    K = bw_bytes / SIZE (at least bw_min_iters) iterations of inc + flush of
 *                the whole row, after one untimed; GB/s = W K SIZE / (first start to last
 *                end over the workers), 1 GB = 1e9 bytes; the median over bw_reps runs
 *   pull SIZE    the same with clock + get
 *   sparse first   petrel_ps_inc_rows of sparse_keys distinct random u64 keys (each
 *                  worker its own) with one float each, then petrel_ps_flush; the server
 *                  makes every row: M keys/s = W N / window
 *   sparse second  the same keys again (rows present on the server): the median over
 *                  sparse_reps pushes
 * Every value read is checked against what the workers pushed.
 *
 * The raw column is petrel's own transport in the same job, on the same links, timed
 * the same way: a worker sends the server a message of exactly the PS request's bytes
 * with petrel_net_sendv, a thread of the server receives it with petrel_net_recv and
 * answers with exactly the PS reply's bytes (petrel_net_send), and the worker receives
 * that with petrel_net_recv, as `petrel bench net` does. push: 16 + SIZE bytes out
 * (an INC of one row: count, key, floats), an empty answer; pull: 16 bytes out (a GET),
 * 16 + SIZE back (ROWS); sparse: 8 + 12 N bytes out, an empty answer. ps/raw is then
 * what the PS adds over moving its bytes: the operation log, the flush RPC, the
 * server's store, the cache, and the extra copies.
 *
 * The ref column holds the figures the issue quotes for a mature C++ parameter server
 * on ZeroMQ, measured on this kind of machine: 130 to 150 us per 4 KiB push, 2.9 to
 * 3.5 GB/s at 1 MiB, 63 M keys/s for a 10 M-key push. They were NOT measured in this
 * run; the ratio is petrel's advantage (above 1: petrel is faster).
 */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_W     2
#define MAX_BW    4
#define MAX_REPS  8
#define MAX_ITERS 20000

#define MSG_RAW      (PETREL_MSG_USER + 1) /* worker -> server: u64 answer bytes, then body */
#define MSG_RAW_BACK (PETREL_MSG_USER + 2) /* server -> worker: the answer */
#define MSG_SYNC     (PETREL_MSG_USER + 3) /* worker k -> worker 0: ready */
#define MSG_GO       (PETREL_MSG_USER + 4) /* worker 0 -> worker k: start */

#define RAW_STOP UINT64_MAX /* a MSG_RAW header: this worker needs no more answers */

#define REF_PUSH4K_US_LO 130.0
#define REF_PUSH4K_US_HI 150.0
#define REF_1MIB_GBS_LO  2.9
#define REF_1MIB_GBS_HI  3.5
#define REF_SPARSE_MKS   63.0

#define TARGET_PUSH4K_US  25.0
#define TARGET_1MIB_GBS   6.0
#define TARGET_SPARSE_MKS 150.0

typedef enum transport { T_SHM, T_TCP, T_COUNT } transport;
static const char *const transport_name[T_COUNT] = {"shm", "tcp"};

enum { PUSH, PULL };
enum { PS, RAW, SETTLED }; /* SETTLED: pull only, the get after the clock's messages */

typedef struct plan {
    int lat_warmup, lat_iters;
    size_t bw_size[MAX_BW];
    int n_bw, bw_min_iters, bw_reps;
    size_t bw_bytes;
    int64_t sparse_keys;
    int sparse_reps, sparse_raw_reps;
    bool use_t[T_COUNT], use_w[MAX_W + 1];
    bool run_lat, run_bw[2], run_sparse; /* which groups of cases run ([PUSH], [PULL]) */
    int call_ms;                         /* bound on each blocking call in a node */
    int job_s;                           /* bound on one job, start to exit */
} plan;

/* ---- what the nodes report, in memory shared with the bench ------------------------- */

typedef struct window {
    uint64_t t0, t1; /* petrel_now_ns: one clock for every process of the host */
} window;

typedef struct node_out {
    bool ok;
    char link[16]; /* workers: their link to the server */
    char error[320];
} node_out;

typedef struct worker_out {
    double lat[2][3][MAX_ITERS];       /* [PUSH, PULL][PS, RAW, SETTLED]: s per iteration */
    window bw[2][2][MAX_BW][MAX_REPS]; /* [PUSH, PULL][PS, RAW][size][rep] */
    window sparse[MAX_REPS + 1];       /* [0] the first push, then the second pushes */
    double sparse_inc_s[MAX_REPS + 1], sparse_flush_s[MAX_REPS + 1];
    window sparse_raw[MAX_REPS];
} worker_out;

typedef struct job_out {
    node_out node[2 + MAX_W];
    worker_out w[MAX_W];
} job_out;

/* The figures of one job (transport, W), computed by the bench. */
typedef struct figures {
    bool ran, ok;
    double lat_us[2][3], p99_us[2][3];              /* [PUSH, PULL][PS, RAW, SETTLED] */
    double gbs[2][2][MAX_BW];                       /* [PUSH, PULL][PS, RAW][size] */
    double sparse_first, sparse_second, sparse_raw; /* M keys/s */
    double first_inc_s, first_flush_s, second_inc_s, second_flush_s;
} figures;

/* ---- a node of the job ---------------------------------------------------------------- */

typedef struct node {
    const plan *p;
    int rank, workers, widx; /* widx: 0 .. W-1 on workers */
    petrel_net *net;
    petrel_ps *ps;
    petrel_ps_worker *w;
    node_out *me;
    worker_out *out;
    float *delta, *row; /* the largest row's floats (+ 4 spare: raw bodies are 8 bytes longer) */
    uint32_t t_lat, t_bw[MAX_BW], t_sparse;
} node;

static int64_t cols_of(size_t bytes) {
    return (int64_t)(bytes / sizeof(float));
}

static size_t largest(const plan *p) {
    size_t n = 4096;
    for (int i = 0; i < p->n_bw; i++)
        if (p->bw_size[i] > n) n = p->bw_size[i];
    return n;
}

/* Workers start each timed run together: worker 0 waits until all are ready, then
 * releases them. */
static bool workers_sync(node *n) {
    if (n->workers == 1) return true;
    petrel_msg m;
    petrel_err err = PETREL_OK;
    int w0 = 2;
    if (n->widx == 0) {
        for (int k = 1; k < n->workers && err == PETREL_OK; k++)
            if ((err = petrel_net_recv(n->net, PETREL_ANY_SOURCE, MSG_SYNC, PETREL_ANY_ID, &m,
                                       n->p->call_ms)) == PETREL_OK)
                petrel_msg_release(&m);
        for (int k = 1; k < n->workers && err == PETREL_OK; k++)
            err = petrel_net_send(n->net, w0 + k, MSG_GO, 0, 0, NULL, 0, n->p->call_ms);
    } else {
        err = petrel_net_send(n->net, w0, MSG_SYNC, 0, 0, NULL, 0, n->p->call_ms);
        if (err == PETREL_OK && (err = petrel_net_recv(n->net, w0, MSG_GO, PETREL_ANY_ID, &m,
                                                       n->p->call_ms)) == PETREL_OK)
            petrel_msg_release(&m);
    }
    if (err != PETREL_OK)
        bench_first_error(n->me->error, sizeof n->me->error, "worker %d: start together: %s",
                          n->widx, petrel_errmsg());
    return err == PETREL_OK;
}

/* One raw exchange with the server: a u64 header (the answer's length) and body out,
 * the answer back. */
static bool raw_exchange(node *n, const struct iovec *body, int nbody, uint64_t back) {
    struct iovec iov[4] = {{&back, sizeof back}};
    for (int i = 0; i < nbody; i++) iov[1 + i] = body[i];
    petrel_err err = petrel_net_sendv(n->net, 1, MSG_RAW, 0, 0, iov, 1 + nbody, n->p->call_ms);
    petrel_msg m;
    if (err == PETREL_OK && (err = petrel_net_recv(n->net, 1, MSG_RAW_BACK, PETREL_ANY_ID, &m,
                                                   n->p->call_ms)) == PETREL_OK) {
        bool ok = m.len == back;
        petrel_msg_release(&m);
        if (!ok) {
            bench_first_error(n->me->error, sizeof n->me->error,
                              "worker %d: raw answer of the wrong length", n->widx);
            return false;
        }
    }
    if (err != PETREL_OK)
        bench_first_error(n->me->error, sizeof n->me->error, "worker %d: raw exchange: %s", n->widx,
                          petrel_errmsg());
    return err == PETREL_OK;
}

static bool ps_ok(node *n, petrel_err err, const char *what) {
    if (err != PETREL_OK)
        bench_first_error(n->me->error, sizeof n->me->error, "worker %d: %s: %s", n->widx, what,
                          petrel_errmsg());
    return err == PETREL_OK;
}

/* A row read after the workers pushed `expect` ones into every value of it. */
static bool check_row(node *n, const float *row, int64_t cols, double expect, const char *what) {
    if (row[0] == (float)expect && row[cols - 1] == (float)expect) return true;
    bench_first_error(n->me->error, sizeof n->me->error,
                      "worker %d: %s read %g and %g, expected %g", n->widx, what, (double)row[0],
                      (double)row[cols - 1], expect);
    return false;
}

/* One timed operation of a case: PUSH or PULL, PS or RAW, on table t with cols floats. */
static bool one_op(node *n, int dir, int kind, uint32_t t, int64_t cols, bool timed_clock,
                   uint64_t *t0) {
    size_t bytes = (size_t)cols * sizeof(float);
    if (kind == RAW) {
        *t0 = petrel_now_ns();
        if (dir == PUSH) { /* an INC's bytes: count, key, the floats */
            struct iovec body = {n->delta, 8 + bytes};
            return raw_exchange(n, &body, 1, 0);
        }
        uint64_t key = 0; /* a GET's bytes: count, key; ROWS back: count, key, floats */
        struct iovec body = {&key, sizeof key};
        return raw_exchange(n, &body, 1, 16 + bytes);
    }
    if (dir == PUSH) {
        *t0 = petrel_now_ns();
        return ps_ok(n, petrel_ps_inc(n->w, t, 0, n->delta), "inc") &&
               ps_ok(n, petrel_ps_flush(n->w), "flush");
    }
    if (timed_clock) *t0 = petrel_now_ns();
    if (!ps_ok(n, petrel_ps_clock(n->w), "clock")) return false;
    if (kind == SETTLED) {
        /* A raw exchange after the clock: the server has handled the CLOCK, and its
         * ADVANCE has reached this worker before the answer (links keep order). */
        uint64_t key = 0;
        struct iovec body = {&key, sizeof key};
        if (!raw_exchange(n, &body, 1, 0)) return false;
    }
    if (!timed_clock) *t0 = petrel_now_ns();
    return ps_ok(n, petrel_ps_get(n->w, t, 0, n->row), "get");
}

static bool fetches_check(node *n, uint64_t before, uint64_t gets, const char *what) {
    uint64_t got = petrel_ps_get_stats(n->ps).fetches - before;
    if (got == gets) return true;
    bench_first_error(n->me->error, sizeof n->me->error,
                      "worker %d: %s: %llu gets fetched %llu times (a cached read is no round "
                      "trip)",
                      n->widx, what, (unsigned long long)gets, (unsigned long long)got);
    return false;
}

/* push 4 KiB, pull 4 KiB: every iteration timed on its own. */
static bool run_latency(node *n) {
    const plan *p = n->p;
    int total = p->lat_warmup + p->lat_iters;
    static const int order[] = {RAW, PS, SETTLED}; /* raw first: the same state for all */
    for (int dir = PUSH; dir <= PULL; dir++)
        for (int o = 0; o < 3; o++) {
            int kind = order[o];
            if (kind == SETTLED && dir == PUSH) continue;
            if (!workers_sync(n)) return false;
            uint64_t fetches = petrel_ps_get_stats(n->ps).fetches;
            for (int k = 0; k < total; k++) {
                uint64_t t0;
                if (!one_op(n, dir, kind, n->t_lat, 1024, false, &t0)) return false;
                if (k >= p->lat_warmup)
                    n->out->lat[dir][kind][k - p->lat_warmup] =
                        (double)(petrel_now_ns() - t0) * 1e-9;
                if (k == 0 && dir == PULL && kind != RAW &&
                    !check_row(n, n->row, 1024, (double)n->workers * total, "pull 4 KiB"))
                    return false;
            }
            if (dir == PULL && kind != RAW &&
                !fetches_check(n, fetches, (uint64_t)total, "pull 4 KiB"))
                return false;
        }
    return true;
}

static int bw_iters(const plan *p, size_t size) {
    size_t k = p->bw_bytes / size;
    return k < (size_t)p->bw_min_iters ? p->bw_min_iters : (int)k;
}

/* push SIZE, pull SIZE: runs of K iterations, each run one window. */
static bool run_bandwidth(node *n) {
    const plan *p = n->p;
    for (int i = 0; i < p->n_bw; i++) {
        int64_t cols = cols_of(p->bw_size[i]);
        int k_iters = bw_iters(p, p->bw_size[i]);
        for (int dir = PUSH; dir <= PULL; dir++)
            for (int kind = RAW; kind >= PS && p->run_bw[dir]; kind--) {
                uint64_t t0, fetches = petrel_ps_get_stats(n->ps).fetches;
                if (!workers_sync(n) || !one_op(n, dir, kind, n->t_bw[i], cols, true, &t0))
                    return false; /* one untimed */
                if (dir == PULL && kind == PS &&
                    !check_row(n, n->row, cols,
                               p->run_bw[PUSH] ? (double)n->workers * (1 + p->bw_reps * k_iters)
                                               : 0.0,
                               "pull"))
                    return false;
                for (int r = 0; r < p->bw_reps; r++) {
                    if (!workers_sync(n)) return false;
                    window *win = &n->out->bw[dir][kind][i][r];
                    for (int k = 0; k < k_iters; k++) {
                        if (!one_op(n, dir, kind, n->t_bw[i], cols, true, &t0)) return false;
                        if (k == 0) win->t0 = t0;
                    }
                    win->t1 = petrel_now_ns();
                }
                if (dir == PULL && kind == PS &&
                    !fetches_check(n, fetches, (uint64_t)(1 + p->bw_reps * k_iters), "pull"))
                    return false;
            }
    }
    return true;
}

/* splitmix64's finalizer: a bijection, so distinct inputs give distinct keys. */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static bool run_sparse(node *n) {
    const plan *p = n->p;
    int64_t nk = p->sparse_keys;
    uint64_t *keys = petrel_malloc((size_t)nk * sizeof *keys);
    float *d = petrel_malloc((size_t)nk * sizeof *d);
    bool ok = keys && d;
    if (!ok)
        bench_first_error(n->me->error, sizeof n->me->error,
                          "worker %d: out of memory for %lld keys", n->widx, (long long)nk);
    for (int64_t i = 0; ok && i < nk; i++) {
        keys[i] = mix64(((uint64_t)n->widx << 48) + (uint64_t)i + 1);
        d[i] = 1.0f;
    }
    /* raw: the INC's bytes in one message (the header stands for its count) */
    struct iovec body[2] = {{keys, (size_t)nk * sizeof *keys}, {d, (size_t)nk * sizeof *d}};
    for (int r = 0; ok && r < p->sparse_raw_reps; r++) {
        ok = workers_sync(n);
        n->out->sparse_raw[r].t0 = petrel_now_ns();
        ok = ok && raw_exchange(n, body, 2, 0);
        n->out->sparse_raw[r].t1 = petrel_now_ns();
    }
    for (int r = 0; ok && r <= p->sparse_reps; r++) {
        ok = workers_sync(n);
        uint64_t t0 = petrel_now_ns();
        ok = ok && ps_ok(n, petrel_ps_inc_rows(n->w, n->t_sparse, keys, nk, d), "inc_rows");
        uint64_t t1 = petrel_now_ns();
        ok = ok && ps_ok(n, petrel_ps_flush(n->w), "flush");
        uint64_t t2 = petrel_now_ns();
        n->out->sparse[r] = (window){t0, t2};
        n->out->sparse_inc_s[r] = (double)(t1 - t0) * 1e-9;
        n->out->sparse_flush_s[r] = (double)(t2 - t1) * 1e-9;
    }
    if (ok) { /* every push reached the server: each key holds 1 + sparse_reps */
        float got[4];
        int64_t at[4] = {0, nk / 3, nk / 2, nk - 1};
        uint64_t ask[4];
        for (int i = 0; i < 4; i++) ask[i] = keys[at[i]];
        ok = ps_ok(n, petrel_ps_clock(n->w), "clock") &&
             ps_ok(n, petrel_ps_get_rows(n->w, n->t_sparse, ask, 4, got), "get_rows");
        for (int i = 0; ok && i < 4; i++)
            if (got[i] != (float)(1 + p->sparse_reps)) {
                bench_first_error(n->me->error, sizeof n->me->error,
                                  "worker %d: sparse key %llu holds %g, expected %d", n->widx,
                                  (unsigned long long)ask[i], (double)got[i], 1 + p->sparse_reps);
                ok = false;
            }
    }
    petrel_free(keys);
    petrel_free(d);
    return ok;
}

static bool worker_main(node *n) {
    if (!ps_ok(n, petrel_ps_worker_new(n->ps, &n->w), "worker_new")) return false;
    const plan *p = n->p;
    bool ok = (!p->run_lat || run_latency(n)) &&
              (!(p->run_bw[PUSH] || p->run_bw[PULL]) || run_bandwidth(n)) &&
              (!p->run_sparse || run_sparse(n));
    uint64_t stop = RAW_STOP; /* the server's raw thread ends after every worker's stop */
    if (ok)
        ok = ps_ok(n, petrel_net_send(n->net, 1, MSG_RAW, 0, 0, &stop, sizeof stop, n->p->call_ms),
                   "raw stop");
    petrel_err err = petrel_ps_worker_finish(n->w);
    n->w = NULL;
    return ps_ok(n, err, "finish") && ok;
}

/* The server's raw thread: answers each MSG_RAW with the bytes its header asks for. */
typedef struct raw_server {
    node *n;
    unsigned char *answer;
    size_t cap;
    bool ok;
} raw_server;

static void *raw_main(void *arg) {
    raw_server *rs = arg;
    node *n = rs->n;
    int stopped = 0;
    rs->ok = false;
    while (stopped < n->workers) {
        petrel_msg m;
        petrel_err err = petrel_net_recv(n->net, PETREL_ANY_SOURCE, MSG_RAW, PETREL_ANY_ID, &m,
                                         n->p->job_s * 1000);
        if (err != PETREL_OK) {
            bench_first_error(n->me->error, sizeof n->me->error, "server: raw receive: %s",
                              petrel_errmsg());
            return NULL;
        }
        uint64_t back = 0;
        if (m.len >= sizeof back) memcpy(&back, m.data, sizeof back);
        int src = m.src;
        petrel_msg_release(&m);
        if (back == RAW_STOP) {
            stopped++;
            continue;
        }
        if (back > rs->cap) {
            bench_first_error(n->me->error, sizeof n->me->error,
                              "server: raw answer of %llu bytes asked", (unsigned long long)back);
            return NULL;
        }
        if (petrel_net_send(n->net, src, MSG_RAW_BACK, 0, 0, rs->answer, (size_t)back,
                            n->p->call_ms) != PETREL_OK) {
            bench_first_error(n->me->error, sizeof n->me->error, "server: raw answer: %s",
                              petrel_errmsg());
            return NULL;
        }
    }
    rs->ok = true;
    return NULL;
}

static bool server_main(node *n) {
    raw_server rs = {.n = n, .cap = 16 + largest(n->p)};
    rs.answer = petrel_malloc(rs.cap);
    if (!rs.answer) {
        bench_first_error(n->me->error, sizeof n->me->error, "server: out of memory");
        return false;
    }
    memset(rs.answer, 0, rs.cap);
    pthread_t th;
    if (pthread_create(&th, NULL, raw_main, &rs) != 0) {
        bench_first_error(n->me->error, sizeof n->me->error, "server: cannot start the raw thread");
        petrel_free(rs.answer);
        return false;
    }
    petrel_err err = petrel_ps_serve(n->ps);
    if (err != PETREL_OK) { /* the raw thread may wait forever: the process ends now */
        bench_first_error(n->me->error, sizeof n->me->error, "server: serve: %s", petrel_errmsg());
        return false;
    }
    pthread_join(th, NULL);
    petrel_free(rs.answer);
    return rs.ok;
}

typedef struct job_env {
    const plan *p;
    transport t;
    int workers;
    int listen_fd;
    char addr[64];
    char job_id[64];
    job_out *out;
} job_env;

static petrel_ps_table_spec bench_spec(petrel_ps_kind kind, int64_t rows, int64_t cols) {
    petrel_ps_table_spec s = petrel_ps_table_spec_default(kind, rows, cols);
    s.sync.async = true; /* reads fetch once per clock; clock never waits */
    s.push = false;      /* rows travel only when asked: every fetch is a round trip */
    return s;
}

static int node_proc(int rank, void *arg) {
    const job_env *env = arg;
    const plan *p = env->p;
    node n = {.p = p,
              .rank = rank,
              .workers = env->workers,
              .widx = rank - 2,
              .me = &env->out->node[rank]};
    if (rank != 0) close(env->listen_fd);
    if (rank >= 2) n.out = &env->out->w[rank - 2];
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = rank;
    cfg.size = 2 + env->workers;
    cfg.servers = 1;
    cfg.transport = env->t == T_TCP ? PETREL_TRANSPORT_TCP : PETREL_TRANSPORT_AUTO;
    cfg.coordinator = env->addr;
    cfg.coordinator_fd = rank == 0 ? env->listen_fd : -1;
    cfg.token = "petrel-bench";
    cfg.job_id = env->job_id;
    cfg.connect_timeout_ms = (uint32_t)p->call_ms;
    /* A 10M-key apply holds the server's receive thread for a second or more. */
    cfg.peer_timeout_ms = (uint32_t)p->call_ms;
    if (petrel_net_start(&n.net, &cfg) != PETREL_OK) {
        bench_first_error(n.me->error, sizeof n.me->error, "rank %d: start: %s", rank,
                          petrel_errmsg());
        return 1;
    }
    bool ok = true;
    if (rank >= 2) {
        const char *link = petrel_net_link(n.net, 1);
        snprintf(n.me->link, sizeof n.me->link, "%s", link);
        if (strcmp(link, transport_name[env->t]) != 0) {
            bench_first_error(n.me->error, sizeof n.me->error,
                              "worker %d: the link to the server is \"%s\", expected \"%s\"",
                              n.widx, link, transport_name[env->t]);
            ok = false;
        }
        size_t floats = largest(p) / sizeof(float) + 4;
        n.delta = petrel_malloc(floats * sizeof(float));
        n.row = petrel_malloc(floats * sizeof(float));
        if (!n.delta || !n.row) {
            bench_first_error(n.me->error, sizeof n.me->error, "worker %d: out of memory", n.widx);
            ok = false;
        }
        for (size_t i = 0; ok && i < floats; i++) n.delta[i] = 1.0f;
    }
    petrel_ps_config pc = petrel_ps_config_default();
    pc.timeout_ms = p->call_ms;
    if (ok && petrel_ps_start(&n.ps, n.net, &pc) != PETREL_OK) {
        bench_first_error(n.me->error, sizeof n.me->error, "rank %d: ps start: %s", rank,
                          petrel_errmsg());
        ok = false;
    }
    /* Every node creates the same tables in the same order. */
    petrel_ps_table_spec lat = bench_spec(PETREL_PS_DENSE, 1, 1024);
    ok = ok && ps_ok(&n, petrel_ps_table_create(n.ps, &lat, &n.t_lat), "table");
    for (int i = 0; ok && i < p->n_bw; i++) {
        petrel_ps_table_spec s = bench_spec(PETREL_PS_DENSE, 1, cols_of(p->bw_size[i]));
        ok = ps_ok(&n, petrel_ps_table_create(n.ps, &s, &n.t_bw[i]), "table");
    }
    petrel_ps_table_spec sp = bench_spec(PETREL_PS_SPARSE, 0, 1);
    ok = ok && ps_ok(&n, petrel_ps_table_create(n.ps, &sp, &n.t_sparse), "table");
    if (ok) {
        if (rank >= 2)
            ok = worker_main(&n);
        else if (rank == 1)
            ok = server_main(&n);
        else if (petrel_ps_serve(n.ps) != PETREL_OK) {
            bench_first_error(n.me->error, sizeof n.me->error, "coordinator: serve: %s",
                              petrel_errmsg());
            ok = false;
        }
    }
    if (!ok) return 1; /* the bench stops the others */
    if (petrel_ps_stop(n.ps) != PETREL_OK) {
        bench_first_error(n.me->error, sizeof n.me->error, "rank %d: ps stop: %s", rank,
                          petrel_errmsg());
        ok = false;
    }
    petrel_net_stop(n.net);
    petrel_free(n.delta);
    petrel_free(n.row);
    n.me->ok = ok;
    return ok ? 0 : 1;
}

/* ---- the bench ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median and p99 of v (n values, sorted in place), in us. */
static void med_p99(double *v, int n, double *med, double *p99) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    *med = (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) * 1e6;
    int i = (int)((double)n * 0.99);
    *p99 = v[i < n ? i : n - 1] * 1e6;
}

/* The span from the first start to the last end over the workers, in s. */
static double span_s(const window *w0, size_t stride, int workers) {
    uint64_t t0 = UINT64_MAX, t1 = 0;
    for (int k = 0; k < workers; k++) {
        const window *w = (const window *)((const char *)w0 + (size_t)k * stride);
        if (w->t0 < t0) t0 = w->t0;
        if (w->t1 > t1) t1 = w->t1;
    }
    return t1 > t0 ? (double)(t1 - t0) * 1e-9 : 1e-9;
}

static void summarize(const plan *p, const job_out *o, int workers, figures *f) {
    static double pool[MAX_W * MAX_ITERS];
    const size_t stride = sizeof(worker_out);
    for (int dir = PUSH; dir <= PULL && p->run_lat; dir++)
        for (int kind = PS; kind <= (dir == PULL ? SETTLED : RAW); kind++) {
            int n = 0;
            for (int k = 0; k < workers; k++)
                for (int i = 0; i < p->lat_iters; i++) pool[n++] = o->w[k].lat[dir][kind][i];
            med_p99(pool, n, &f->lat_us[dir][kind], &f->p99_us[dir][kind]);
        }
    double v[MAX_REPS + 1];
    for (int i = 0; i < p->n_bw; i++) {
        double bytes = (double)workers * bw_iters(p, p->bw_size[i]) * (double)p->bw_size[i];
        for (int dir = PUSH; dir <= PULL; dir++)
            for (int kind = PS; kind <= RAW && p->run_bw[dir]; kind++) {
                for (int r = 0; r < p->bw_reps; r++)
                    v[r] = bytes / span_s(&o->w[0].bw[dir][kind][i][r], stride, workers) * 1e-9;
                f->gbs[dir][kind][i] = petrel_median(v, p->bw_reps);
            }
    }
    if (!p->run_sparse) return;
    double keys = (double)workers * (double)p->sparse_keys * 1e-6;
    f->sparse_first = keys / span_s(&o->w[0].sparse[0], stride, workers);
    for (int r = 0; r < p->sparse_reps; r++)
        v[r] = keys / span_s(&o->w[0].sparse[1 + r], stride, workers);
    f->sparse_second = petrel_median(v, p->sparse_reps);
    for (int r = 0; r < p->sparse_raw_reps; r++)
        v[r] = keys / span_s(&o->w[0].sparse_raw[r], stride, workers);
    f->sparse_raw = petrel_median(v, p->sparse_raw_reps);
    /* Where a push's time goes: the mean over workers (second: over the pushes too). */
    for (int k = 0; k < workers; k++) {
        f->first_inc_s += o->w[k].sparse_inc_s[0] / workers;
        f->first_flush_s += o->w[k].sparse_flush_s[0] / workers;
        for (int r = 1; r <= p->sparse_reps; r++) {
            f->second_inc_s += o->w[k].sparse_inc_s[r] / (workers * p->sparse_reps);
            f->second_flush_s += o->w[k].sparse_flush_s[r] / (workers * p->sparse_reps);
        }
    }
}

/* Runs one job of 1 coordinator, 1 server and `workers` workers over t. */
static bool run_job(const plan *p, transport t, int workers, job_out *out) {
    memset(out, 0, sizeof *out);
    job_env env = {.p = p, .t = t, .workers = workers, .out = out};
    if (!bench_listen(&env.listen_fd, env.addr, sizeof env.addr)) {
        bench_first_error((&out->node[0])->error, sizeof(&out->node[0])->error,
                          "listen on 127.0.0.1: %s", strerror(errno));
        return false;
    }
    snprintf(env.job_id, sizeof env.job_id, "bench-ps-%d-%s-%d", (int)getpid(), transport_name[t],
             workers);
    int n = 2 + workers;
    bench_exit ex[2 + MAX_W];
    bool late;
    bool ok = bench_procs_run(n, node_proc, &env, p->job_s, ex, &late);
    close(env.listen_fd);
    for (int r = 0; r < n; r++) {
        if (ex[r].signal && !ex[r].stopped)
            bench_first_error((&out->node[r])->error, sizeof(&out->node[r])->error,
                              "killed by signal %d", ex[r].signal);
        if (ex[r].code < 0 && !ex[r].signal)
            bench_first_error((&out->node[r])->error, sizeof(&out->node[r])->error,
                              "could not be started (fork)");
        ok = ok && out->node[r].ok;
    }
    if (late)
        bench_first_error((&out->node[0])->error, sizeof(&out->node[0])->error,
                          "the job did not finish within %d s", p->job_s);
    if (!ok) bench_shm_cleanup(env.job_id, n);
    return ok;
}

/* ---- output ----------------------------------------------------------------------------- */

static void put(char *line, size_t size, const char *fmt, ...) PETREL_PRINTF(3, 4);
static void put(char *line, size_t size, const char *fmt, ...) {
    size_t at = strlen(line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + at, size - at, fmt, ap);
    va_end(ap);
}

/* A ratio of rates: two significant digits below 0.1. */
static const char *ratio(double v, char *buf, size_t len) {
    snprintf(buf, len, v < 0.1 ? "%.3f" : "%.2f", v);
    return buf;
}

static const char *rate(double v, char *buf, size_t len) {
    snprintf(buf, len, v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : "%.2f", v);
    return buf;
}

/* The configurations in print order: shm 1, shm 2, tcp 1, tcp 2 workers. */
#define FOR_CONFIGS(t, w)                                                                          \
    for (int t = 0; t < T_COUNT; t++)                                                              \
        for (int w = 1; w <= MAX_W; w++)                                                           \
            if (f[t][w].ran)

static void config_name(int t, int w, char *buf, size_t len) {
    snprintf(buf, len, "%s %dw", transport_name[t], w);
}

static void print_results(const plan *p, figures f[T_COUNT][MAX_W + 1]) {
    char line[512], cfg[16], a[16], b[16], q[16], sz[32];
    for (int dir = PUSH; dir <= PULL && p->run_lat; dir++) FOR_CONFIGS(t, w) {
            config_name(t, w, cfg, sizeof cfg);
            snprintf(line, sizeof line, "%s 4 KiB  %-6s", dir == PUSH ? "push" : "pull", cfg);
            if (!f[t][w].ok) {
                printf("%s  n/a (the job failed)\n", line);
                continue;
            }
            const double *ps = f[t][w].lat_us[dir], *p99 = f[t][w].p99_us[dir];
            put(line, sizeof line, "  ps %.1f us (p99 %.1f)  raw %.1f us (p99 %.1f)  ps/raw %.2fx",
                ps[PS], p99[PS], ps[RAW], p99[RAW], ps[PS] / ps[RAW]);
            if (dir == PUSH)
                put(line, sizeof line, "  vs ref %.0f-%.0f us: %.1f-%.1fx", REF_PUSH4K_US_LO,
                    REF_PUSH4K_US_HI, REF_PUSH4K_US_LO / ps[PS], REF_PUSH4K_US_HI / ps[PS]);
            else
                put(line, sizeof line, "  settled get %.1f us (p99 %.1f)", ps[SETTLED],
                    p99[SETTLED]);
            printf("%s\n", line);
        }
    for (int dir = PUSH; dir <= PULL; dir++)
        for (int i = 0; i < p->n_bw && p->run_bw[dir]; i++) FOR_CONFIGS(t, w) {
                config_name(t, w, cfg, sizeof cfg);
                snprintf(line, sizeof line, "%s %-7s %-6s", dir == PUSH ? "push" : "pull",
                         bench_size_name(p->bw_size[i], sz, sizeof sz), cfg);
                if (!f[t][w].ok) {
                    printf("%s  n/a (the job failed)\n", line);
                    continue;
                }
                const double *g = f[t][w].gbs[dir][0], *gr = f[t][w].gbs[dir][1];
                put(line, sizeof line, "  ps %s GB/s  raw %s GB/s  ps/raw %s",
                    rate(g[i], a, sizeof a), rate(gr[i], b, sizeof b),
                    ratio(g[i] / gr[i], q, sizeof q));
                if (dir == PUSH && p->bw_size[i] == (1u << 20))
                    put(line, sizeof line, "  vs ref %.1f-%.1f GB/s: %.2f-%.2fx", REF_1MIB_GBS_LO,
                        REF_1MIB_GBS_HI, g[i] / REF_1MIB_GBS_HI, g[i] / REF_1MIB_GBS_LO);
                printf("%s\n", line);
            }
    for (int second = 0; second <= 1 && p->run_sparse; second++) FOR_CONFIGS(t, w) {
            config_name(t, w, cfg, sizeof cfg);
            snprintf(line, sizeof line, "sparse %s %-6s", second ? "second" : "first ", cfg);
            if (!f[t][w].ok) {
                printf("%s  n/a (the job failed)\n", line);
                continue;
            }
            const figures *g = &f[t][w];
            double mks = second ? g->sparse_second : g->sparse_first;
            put(line, sizeof line,
                "  ps %s M keys/s (inc_rows %.0f ms, flush %.0f ms)  raw %s M keys/s  ps/raw %s"
                "  vs ref %.0f M keys/s: %.2fx",
                rate(mks, a, sizeof a), 1e3 * (second ? g->second_inc_s : g->first_inc_s),
                1e3 * (second ? g->second_flush_s : g->first_flush_s),
                rate(g->sparse_raw, b, sizeof b), ratio(mks / g->sparse_raw, q, sizeof q),
                REF_SPARSE_MKS, mks / REF_SPARSE_MKS);
            printf("%s\n", line);
        }
}

/* The targets on one host, decided by shm with one worker (the others shown). */
static void print_targets(const plan *p, figures f[T_COUNT][MAX_W + 1]) {
    char line[512], cfg[16];
    const figures *d = &f[T_SHM][1];
    if (!d->ran || !d->ok) {
        printf("targets: not decided (shm with 1 worker did not run or failed)\n");
        return;
    }
    if (p->run_lat) {
        snprintf(line, sizeof line, "target push 4 KiB round trip <= %.0f us: %s (shm 1w %.1f us",
                 TARGET_PUSH4K_US, d->lat_us[PUSH][PS] <= TARGET_PUSH4K_US ? "met" : "MISSED",
                 d->lat_us[PUSH][PS]);
        FOR_CONFIGS(t, w) {
            if ((t == T_SHM && w == 1) || !f[t][w].ok) continue;
            config_name(t, w, cfg, sizeof cfg);
            put(line, sizeof line, "; %s %.1f", cfg, f[t][w].lat_us[PUSH][PS]);
        }
        printf("%s)\n", line);
    }
    int mib = -1;
    for (int i = 0; i < p->n_bw && p->run_bw[PUSH]; i++)
        if (p->bw_size[i] == (1u << 20)) mib = i;
    if (mib >= 0) {
        double g = d->gbs[PUSH][PS][mib];
        snprintf(line, sizeof line, "target push 1 MiB >= %.0f GB/s on one host: %s (shm 1w %.2f",
                 TARGET_1MIB_GBS, g >= TARGET_1MIB_GBS ? "met" : "MISSED", g);
        FOR_CONFIGS(t, w) {
            if ((t == T_SHM && w == 1) || !f[t][w].ok) continue;
            config_name(t, w, cfg, sizeof cfg);
            put(line, sizeof line, "; %s %.2f", cfg, f[t][w].gbs[PUSH][PS][mib]);
        }
        printf("%s GB/s)\n", line);
    }
    if (!p->run_sparse) return;
    snprintf(line, sizeof line,
             "target sparse push >= %.0f M keys/s: %s (shm 1w second %.1f, first %.1f",
             TARGET_SPARSE_MKS, d->sparse_second >= TARGET_SPARSE_MKS ? "met" : "MISSED",
             d->sparse_second, d->sparse_first);
    FOR_CONFIGS(t, w) {
        if ((t == T_SHM && w == 1) || !f[t][w].ok) continue;
        config_name(t, w, cfg, sizeof cfg);
        put(line, sizeof line, "; %s %.1f, %.1f", cfg, f[t][w].sparse_second, f[t][w].sparse_first);
    }
    printf("%s)\n", line);
}

static void ps_usage(FILE *f) {
    fprintf(f, "usage: petrel bench ps [options]\n"
               "\n"
               "The parameter server in jobs of real processes on 127.0.0.1 (1 coordinator, 1\n"
               "server, 1 or 2 workers), over shared memory (shm) and TCP: push and pull round\n"
               "trips of a 4 KiB row (median and p99), push and pull throughput of one row of\n"
               "64 KiB to 16 MiB (GB = 1e9 bytes), and a sparse push of 10M keys, first (the\n"
               "server makes the rows) and second. Each line sets the PS against petrel's raw\n"
               "transport moving the same bytes in the same job (ps/raw) and, for push, against\n"
               "a C++ ZeroMQ parameter server's published figures (ref; not measured here),\n"
               "then says whether the targets of docs/bench.md are met. With 2 workers the\n"
               "figures are aggregates. Takes 1 to 2 minutes on 2 cores, mostly the sparse\n"
               "pushes (--quick: 30 to 50 s).\n"
               "\n"
               "options (default in brackets):\n"
               "  --quick         2000 round trips after 200; throughput 64 MiB (at least 2\n"
               "                  iterations) per run, 1 run; sparse: 1 second push [5000\n"
               "                  after 500; 128 MiB (at least 4 iterations) per run, median\n"
               "                  of 3 runs; sparse: median (mean) of 2 second pushes]\n"
               "  --keys N        keys of the sparse push [10000000]\n"
               "  --cases LIST    a comma-separated subset of lat (4 KiB round trips), push and\n"
               "                  pull (throughput) and sparse, e.g. under perf record -g\n"
               "                  [lat,push,pull,sparse]\n"
               "  --only NAME     run only shm or tcp, e.g. under perf record -g [both]\n"
               "  --workers N     run only the jobs with N (1 or 2) workers [both]\n"
               "  -h, --help      show this help\n");
}

int bench_ps(int argc, char **argv) {
    enum { OPT_QUICK = 256, OPT_ONLY, OPT_WORKERS, OPT_KEYS, OPT_CASES };
    static const struct option longopts[] = {{"quick", no_argument, 0, OPT_QUICK},
                                             {"only", required_argument, 0, OPT_ONLY},
                                             {"workers", required_argument, 0, OPT_WORKERS},
                                             {"keys", required_argument, 0, OPT_KEYS},
                                             {"cases", required_argument, 0, OPT_CASES},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    bool quick = false;
    int only = -1, only_w = 0, c;
    int64_t keys = 10000000;
    const char *cases = "lat,push,pull,sparse";
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_QUICK:
            quick = true;
            break;
        case OPT_ONLY:
            for (int t = 0; t < T_COUNT; t++)
                if (strcmp(optarg, transport_name[t]) == 0) only = t;
            if (only < 0)
                return cli_usage_error("bench ps ", "--only wants shm or tcp, got '%s'", optarg);
            break;
        case OPT_WORKERS: {
            int64_t v;
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > MAX_W)
                return cli_usage_error("bench ps ", "--workers wants 1 or 2, got '%s'", optarg);
            only_w = (int)v;
            break;
        }
        case OPT_KEYS:
            if (!cli_parse_i64(optarg, &keys) || keys < 4 || keys > ((int64_t)1 << 28))
                return cli_usage_error("bench ps ", "--keys wants 4 .. 2^28, got '%s'", optarg);
            break;
        case OPT_CASES:
            cases = optarg;
            break;
        case 'h':
            ps_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("bench ps ", "bad option");
        }
    }
    if (optind < argc)
        return cli_usage_error("bench ps ", "unexpected argument '%s'", argv[optind]);

    plan p = {.bw_size = {64u << 10, 1u << 20, 16u << 20},
              .n_bw = 3,
              .sparse_keys = keys,
              .call_ms = 60000,
              .job_s = 120};
    if (quick) {
        p.lat_warmup = 200;
        p.lat_iters = 2000;
        p.bw_bytes = 64u << 20;
        p.bw_min_iters = 2;
        p.bw_reps = 1;
        p.sparse_reps = 1;
        p.sparse_raw_reps = 1;
    } else {
        p.lat_warmup = 500;
        p.lat_iters = 5000;
        p.bw_bytes = 128u << 20;
        p.bw_min_iters = 4;
        p.bw_reps = 3;
        p.sparse_reps = 2;
        p.sparse_raw_reps = 2;
    }
    /* --cases: a comma-separated subset of lat, bw, sparse */
    for (const char *at = cases; *at;) {
        size_t len = strcspn(at, ",");
        if (len == 3 && strncmp(at, "lat", 3) == 0)
            p.run_lat = true;
        else if (len == 4 && strncmp(at, "push", 4) == 0)
            p.run_bw[PUSH] = true;
        else if (len == 4 && strncmp(at, "pull", 4) == 0)
            p.run_bw[PULL] = true;
        else if (len == 6 && strncmp(at, "sparse", 6) == 0)
            p.run_sparse = true;
        else
            return cli_usage_error("bench ps ",
                                   "--cases wants lat, push, pull and sparse, got '%s'", cases);
        at += len + (at[len] == ',');
    }
    if (!p.run_lat && !p.run_bw[PUSH] && !p.run_bw[PULL] && !p.run_sparse)
        return cli_usage_error("bench ps ", "--cases names no case");
    for (int t = 0; t < T_COUNT; t++) p.use_t[t] = only < 0 || t == only;
    for (int w = 1; w <= MAX_W; w++) p.use_w[w] = only_w == 0 || w == only_w;
    signal(SIGPIPE, SIG_IGN);
    job_out *out =
        mmap(NULL, sizeof *out, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (out == MAP_FAILED)
        return cli_fail(PETREL_ERR_NOMEM, "bench ps", "cannot map the shared results");
    static figures f[T_COUNT][MAX_W + 1];
    memset(f, 0, sizeof f);

    double t0 = petrel_now_s();
    printf("petrel bench ps: 1 coordinator + 1 server + W workers, processes on 127.0.0.1; "
           "async tables, push off; raw: petrel_net send/recv of the same bytes in the same "
           "job; ref: a C++ ZeroMQ PS's published figures, not measured here%s\n",
           quick ? " (--quick)" : "");
    fflush(stdout);
    bool all = true;
    /* Jobs alternate transports so that a change of load weighs on both alike. */
    for (int w = 1; w <= MAX_W; w++)
        for (int t = 0; t < T_COUNT; t++) {
            if (!p.use_t[t] || !p.use_w[w]) continue;
            f[t][w].ran = true;
            f[t][w].ok = run_job(&p, (transport)t, w, out);
            if (f[t][w].ok) {
                summarize(&p, out, w, &f[t][w]);
                continue;
            }
            all = false;
            for (int r = 0; r < 2 + w; r++)
                if (out->node[r].error[0]) {
                    char name[32];
                    petrel_launch_node_name(r, 2 + w, 1, name, sizeof name);
                    fprintf(stderr, "petrel: error: bench ps: %s, %d worker%s, %s: %s\n",
                            transport_name[t], w, w > 1 ? "s" : "", name, out->node[r].error);
                }
        }
    print_results(&p, f);
    print_targets(&p, f);
    printf("round trips: median (p99) of %d after %d, every worker's pooled; throughput: %zu MiB "
           "(at least %d iterations) per run, median of %d run%s, W x bytes / (first start to "
           "last end); sparse: %lld keys per worker, second: median of %d; 1 GB = 1e9 bytes; "
           "%.0f s in all\n",
           p.lat_iters, p.lat_warmup, p.bw_bytes >> 20, p.bw_min_iters, p.bw_reps,
           p.bw_reps > 1 ? "s" : "", (long long)p.sparse_keys, p.sparse_reps, petrel_now_s() - t0);
    munmap(out, sizeof *out);
    if (!all) {
        fprintf(stderr, "hint: PETREL_LOG=debug petrel bench ps --quick shows what the nodes "
                        "did\n");
        return CLI_FAIL;
    }
    return CLI_OK;
}
