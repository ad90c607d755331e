/*
 * petrel bench net: what petrel's transports cost against what they are built on.
 *
 * Every column but memcpy is two processes on 127.0.0.1, forked from this one:
 *   tcp      a job of two petrel nodes with PETREL_TRANSPORT_TCP
 *   shm      a job of two petrel nodes with PETREL_TRANSPORT_AUTO, whose link is shared
 *            memory (checked with petrel_net_link)
 *   socket   a plain blocking TCP socket pair with TCP_NODELAY: write and read loops
 *   memcpy   one thread of this process copying a message-sized buffer into another,
 *            over and over (the same caches as the transports see)
 * tcp and socket share one pair of processes and take turns in slices (a block of round
 * trips, some MiB of a stream), so that a change of load on a shared machine weighs on
 * both alike; shm has its own pair. The parent plays the launcher (bench_harness.c: the
 * coordinator's listening socket is made here and passed to rank 0), gives each pair a
 * deadline, and kills both processes when one fails or the deadline passes.
 *
 * Cases, measured by rank 0 (socket: the accepting side):
 *   rtt SIZE   ping-pong: send SIZE bytes, the peer receives them and sends SIZE bytes
 *              back; the median of rtt_iters round trips after rtt_warmup
 *   bw SIZE    streaming: K messages of SIZE bytes back to back (K = bw_bytes / SIZE, at
 *              least bw_min_msgs) in slices of about 32 MiB; the peer receives each
 *              slice, then replies with one byte; GB/s = K * SIZE / (the time from
 *              each slice's first send to its reply, summed), 1 GB = 1e9 bytes
 * The pairs run one after the other, `rounds` times over (tcp and socket, shm, memcpy,
 * tcp and socket, ...), and each figure is the median over the rounds; tcp/socket is the
 * median of each round's ratio.
 * petrel columns use petrel_net_send and petrel_net_recv with the default configuration
 * (frames of 1 MiB), so they include what a caller pays: framing, the receiving I/O
 * thread, a buffer per message and the hand-over to the caller's thread.
 */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_RTT 2
#define MAX_BW  8

#define MSG_PING (PETREL_MSG_USER + 1)
#define MSG_DATA (PETREL_MSG_USER + 2)
#define MSG_DONE (PETREL_MSG_USER + 3)

typedef enum pair_kind { PAIR_TCP, PAIR_SHM, PAIR_SOCKET, PAIR_COUNT } pair_kind;

static const char *const pair_name[PAIR_COUNT] = {"tcp", "shm", "socket"};

typedef struct plan {
    size_t rtt_size[MAX_RTT];
    int n_rtt, rtt_warmup, rtt_iters;
    size_t bw_size[MAX_BW];
    int n_bw, bw_min_msgs;
    int rounds;        /* times each pair runs; figures are medians over rounds */
    size_t bw_bytes;   /* bytes per run */
    size_t copy_bytes; /* memcpy: the buffers copied through */
    int call_ms;       /* bound on each blocking call in a node */
    int pair_s;        /* bound on a pair of processes, start to exit */
} plan;

/* One side of a pair, in memory shared with the parent. Side 0 measures. */
typedef struct side_result {
    int ok;
    char link[16];
    double rtt_us[MAX_RTT];
    double bw_gbs[MAX_BW];
    char error[320];
} side_result;

#define MAX_ROUNDS 8

/* The figures of every round, and their medians. */
typedef struct results {
    side_result side[PAIR_COUNT][2]; /* the current round, written by the children */
    double rtt_us[PAIR_COUNT][MAX_ROUNDS][MAX_RTT];
    double bw_gbs[PAIR_COUNT + 1][MAX_ROUNDS][MAX_BW]; /* [PAIR_COUNT]: memcpy */
    double dram_gbs[MAX_ROUNDS];
    bool ran[PAIR_COUNT], ok[PAIR_COUNT];
    double rtt[PAIR_COUNT][MAX_RTT], bw[PAIR_COUNT + 1][MAX_BW], dram; /* medians */
    double tcp_socket_rtt[MAX_RTT], tcp_socket_bw[MAX_BW]; /* medians of each round's ratio */
} results;

static double now_s(void) {
    return (double)petrel_now_ns() * 1e-9;
}

/* ---- endpoints: a petrel node or a socket, seen the same way by the cases --------- */

typedef struct endpoint endpoint;
struct endpoint {
    /* Sends len bytes of data as one message of type. */
    bool (*send)(endpoint *e, uint8_t type, const void *data, size_t len);
    /* Receives one message of type and len bytes. */
    bool (*recv)(endpoint *e, uint8_t type, size_t len);
    petrel_net *net;
    int peer;
    int fd;
    unsigned char *scratch; /* socket: where messages are read to */
    int call_ms;
    side_result *res;
};

static bool net_send(endpoint *e, uint8_t type, const void *data, size_t len) {
    petrel_err err = petrel_net_send(e->net, e->peer, type, 0, 0, data, len, e->call_ms);
    if (err != PETREL_OK)
        bench_first_error(e->res->error, sizeof e->res->error, "send: %s", petrel_errmsg());
    return err == PETREL_OK;
}

static bool net_recv(endpoint *e, uint8_t type, size_t len) {
    petrel_msg m;
    petrel_err err = petrel_net_recv(e->net, e->peer, type, PETREL_ANY_ID, &m, e->call_ms);
    if (err != PETREL_OK) {
        bench_first_error(e->res->error, sizeof e->res->error, "recv: %s", petrel_errmsg());
        return false;
    }
    bool ok = m.len == len;
    if (!ok)
        bench_first_error(e->res->error, sizeof e->res->error,
                          "recv: a message of %zu bytes, expected %zu", m.len, len);
    petrel_msg_release(&m);
    return ok;
}

static bool sock_send(endpoint *e, uint8_t type, const void *data, size_t len) {
    (void)type;
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t w = send(e->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            bench_first_error(e->res->error, sizeof e->res->error, "socket write: %s",
                              w < 0 ? strerror(errno) : "wrote nothing");
            return false;
        }
        p += w;
        len -= (size_t)w;
    }
    return true;
}

static bool sock_recv(endpoint *e, uint8_t type, size_t len) {
    (void)type;
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(e->fd, e->scratch + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            bench_first_error(e->res->error, sizeof e->res->error, "socket read: %s",
                              r < 0 ? strerror(errno) : "closed by the other process");
            return false;
        }
        got += (size_t)r;
    }
    return true;
}

/* ---- the cases ------------------------------------------------------------------------ */

/* The endpoints of one pair of processes take turns: rtt in RTT_BLOCKS blocks of round
 * trips, bw in slices of about SLICE_BYTES (at least one message), each slice ended by
 * the peer's one-byte reply so that its time is its own. The endpoint that goes first
 * changes from turn to turn. */
#define RTT_BLOCKS  10
#define SLICE_BYTES (32u << 20)

static size_t bw_msgs(const plan *p, size_t size) {
    size_t k = p->bw_bytes / size;
    return k < (size_t)p->bw_min_msgs ? (size_t)p->bw_min_msgs : k;
}

static size_t slice_msgs(size_t size) {
    return size < SLICE_BYTES ? SLICE_BYTES / size : 1;
}

/* Which of n endpoints takes turn j in block (or slice) b. */
static int turn(size_t b, int j, int n) {
    return (int)((b + (size_t)j) % (size_t)n);
}

/* Side 0: runs every case on the n endpoints, taking turns, and records each one's
 * figures in its result. */
static bool measure(endpoint *ep, int n, const plan *p, const unsigned char *buf) {
    int per = p->rtt_iters / RTT_BLOCKS, iters = per * RTT_BLOCKS;
    double *t = petrel_malloc((size_t)n * (size_t)iters * sizeof *t);
    if (!t) {
        bench_first_error(ep[0].res->error, sizeof ep[0].res->error, "out of memory");
        return false;
    }
    bool ok = true;
    for (int i = 0; ok && i < p->n_rtt; i++) {
        size_t len = p->rtt_size[i];
        for (int b = 0; ok && b < RTT_BLOCKS; b++)
            for (int j = 0; ok && j < n; j++) {
                int x = turn((size_t)b, j, n), warm = b == 0 ? p->rtt_warmup : 0;
                endpoint *e = &ep[x];
                double *tx = t + (size_t)x * (size_t)iters + (size_t)b * (size_t)per;
                for (int k = 0; ok && k < warm + per; k++) {
                    double t0 = now_s();
                    ok = e->send(e, MSG_PING, buf, len) && e->recv(e, MSG_PING, len);
                    if (k >= warm) tx[k - warm] = now_s() - t0;
                }
            }
        for (int x = 0; ok && x < n; x++)
            ep[x].res->rtt_us[i] = petrel_median(t + (size_t)x * (size_t)iters, iters) * 1e6;
    }
    for (int i = 0; ok && i < p->n_bw; i++) {
        size_t len = p->bw_size[i], k = bw_msgs(p, len), per_slice = slice_msgs(len);
        double spent[2] = {0, 0};
        for (size_t done = 0, s = 0; ok && done < k; done += per_slice, s++)
            for (int j = 0; ok && j < n; j++) {
                int x = turn(s, j, n);
                endpoint *e = &ep[x];
                size_t msgs = per_slice < k - done ? per_slice : k - done;
                double t0 = now_s();
                for (size_t m = 0; ok && m < msgs; m++) ok = e->send(e, MSG_DATA, buf, len);
                ok = ok && e->recv(e, MSG_DONE, 1);
                spent[x] += now_s() - t0;
            }
        for (int x = 0; ok && x < n; x++)
            ep[x].res->bw_gbs[i] = (double)(k * len) / spent[x] * 1e-9;
    }
    petrel_free(t);
    return ok;
}

/* Side 1: the mirror image of measure. */
static bool respond(endpoint *ep, int n, const plan *p, const unsigned char *buf) {
    bool ok = true;
    for (int i = 0; ok && i < p->n_rtt; i++) {
        size_t len = p->rtt_size[i];
        int per = p->rtt_iters / RTT_BLOCKS;
        for (int b = 0; ok && b < RTT_BLOCKS; b++)
            for (int j = 0; ok && j < n; j++) {
                endpoint *e = &ep[turn((size_t)b, j, n)];
                for (int k = 0; ok && k < (b == 0 ? p->rtt_warmup : 0) + per; k++)
                    ok = e->recv(e, MSG_PING, len) && e->send(e, MSG_PING, buf, len);
            }
    }
    for (int i = 0; ok && i < p->n_bw; i++) {
        size_t len = p->bw_size[i], k = bw_msgs(p, len), per_slice = slice_msgs(len);
        for (size_t done = 0, s = 0; ok && done < k; done += per_slice, s++)
            for (int j = 0; ok && j < n; j++) {
                endpoint *e = &ep[turn(s, j, n)];
                size_t msgs = per_slice < k - done ? per_slice : k - done;
                for (size_t m = 0; ok && m < msgs; m++) ok = e->recv(e, MSG_DATA, len);
                ok = ok && e->send(e, MSG_DONE, buf, 1);
            }
    }
    return ok;
}

static size_t largest(const plan *p) {
    size_t n = 4096;
    for (int i = 0; i < p->n_rtt; i++)
        if (p->rtt_size[i] > n) n = p->rtt_size[i];
    for (int i = 0; i < p->n_bw; i++)
        if (p->bw_size[i] > n) n = p->bw_size[i];
    return n;
}

/* ---- the two processes of a pair ------------------------------------------------------- */

/* The pairs of processes a round starts. tcp and socket share one, taking turns, so that
 * a change of load on a shared machine weighs on both alike. */
typedef enum pair_group { GROUP_TCP_SOCKET, GROUP_SHM, GROUP_COUNT } pair_group;

static const char *const group_name[GROUP_COUNT] = {"tcp and socket", "shm"};

static bool in_group(pair_group g, int k) {
    return g == GROUP_SHM ? k == PAIR_SHM : k == PAIR_TCP || k == PAIR_SOCKET;
}

typedef struct pair_env {
    int listen_fd;   /* the coordinator's listening socket */
    char addr[64];   /* its "127.0.0.1:port" */
    int socket_fd;   /* side 0's listening socket for the plain socket pair */
    char job_id[64]; /* names the shared-memory segments */
} pair_env;

typedef struct pair_ctx {
    pair_group group;
    const bool *run; /* [column]: the columns measured */
    const plan *p;
    const pair_env *env;
    side_result (*res)[2]; /* [column][side] */
} pair_ctx;

/* A started petrel node of kind (tcp or shm) with the peer of rank linked, or NULL. */
static petrel_net *node_start(pair_kind kind, int rank, const plan *p, const pair_env *env,
                              side_result *res) {
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = rank;
    cfg.size = 2;
    cfg.servers = 0;
    cfg.transport = kind == PAIR_TCP ? PETREL_TRANSPORT_TCP : PETREL_TRANSPORT_AUTO;
    cfg.coordinator = env->addr;
    cfg.coordinator_fd = rank == 0 ? env->listen_fd : -1;
    cfg.token = "petrel-bench";
    cfg.job_id = env->job_id;
    cfg.connect_timeout_ms = (uint32_t)p->call_ms;
    petrel_net *net = NULL;
    if (petrel_net_start(&net, &cfg) != PETREL_OK) {
        bench_first_error(res->error, sizeof res->error, "rank %d: start: %s", rank,
                          petrel_errmsg());
        return NULL;
    }
    const char *link = petrel_net_link(net, 1 - rank);
    snprintf(res->link, sizeof res->link, "%s", link);
    if (strcmp(link, pair_name[kind]) != 0) {
        bench_first_error(res->error, sizeof res->error,
                          "rank %d: the link to rank %d is \"%s\", expected \"%s\"", rank, 1 - rank,
                          link, pair_name[kind]);
        petrel_net_stop(net);
        return NULL;
    }
    return net;
}

/* The plain socket of side (0 accepts, 1 connects), blocking, TCP_NODELAY, or -1. */
static int socket_open(int side, const plan *p, const pair_env *env, side_result *res) {
    int fd = -1;
    if (side == 0) {
        struct pollfd pl = {.fd = env->socket_fd, .events = POLLIN};
        if (poll(&pl, 1, p->call_ms) == 1) fd = accept(env->socket_fd, NULL, NULL);
    } else {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof sa;
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && (getsockname(env->socket_fd, (struct sockaddr *)&sa, &len) != 0 ||
                        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        bench_first_error(res->error, sizeof res->error, "socket side %d: cannot connect: %s", side,
                          strerror(errno));
        return -1;
    }
    int one = 1;
    struct timeval tv = {p->call_ms / 1000, (p->call_ms % 1000) * 1000};
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    snprintf(res->link, sizeof res->link, "socket");
    return fd;
}

/* One process of a pair: a petrel node and, in the tcp group, the plain socket, each
 * an endpoint of the cases. */
static int pair_main(int side, void *arg) {
    const pair_ctx *c = arg;
    const plan *p = c->p;
    pair_kind node_kind = c->group == GROUP_SHM ? PAIR_SHM : PAIR_TCP;
    if (side == 1) close(c->env->listen_fd); /* rank 0's, the coordinator's */
    endpoint ep[2];
    int n = 0;
    petrel_net *net = NULL;
    int fd = -1;
    unsigned char *buf = NULL, *scratch = NULL;
    bool ok = true;
    if (c->run[node_kind]) {
        side_result *res = &c->res[node_kind][side];
        ok = (net = node_start(node_kind, side, p, c->env, res)) != NULL;
        if (ok) ep[n++] = (endpoint){net_send, net_recv, net, 1 - side, -1, NULL, p->call_ms, res};
    }
    if (ok && c->group == GROUP_TCP_SOCKET && c->run[PAIR_SOCKET]) {
        side_result *res = &c->res[PAIR_SOCKET][side];
        ok = (fd = socket_open(side, p, c->env, res)) >= 0;
        if (ok && !(scratch = petrel_calloc(1, largest(p)))) {
            bench_first_error(res->error, sizeof res->error, "out of memory");
            ok = false;
        }
        if (ok)
            ep[n++] =
                (endpoint){sock_send, sock_recv, NULL, 1 - side, fd, scratch, p->call_ms, res};
    }
    if (ok && !(buf = petrel_malloc(largest(p)))) {
        bench_first_error(ep[0].res->error, sizeof ep[0].res->error, "out of memory");
        ok = false;
    }
    if (ok) {
        memset(buf, 0x5a, largest(p));
        ok = side == 0 ? measure(ep, n, p, buf) : respond(ep, n, p, buf);
    }
    /* Neither leaves before the other has everything: a goodbye over TCP could
     * overtake the last message over shared memory. */
    if (ok && net && petrel_net_barrier(net, p->call_ms) != PETREL_OK) {
        bench_first_error(ep[0].res->error, sizeof ep[0].res->error, "rank %d: final barrier: %s",
                          side, petrel_errmsg());
        ok = false;
    }
    if (net) petrel_net_stop(net);
    if (fd >= 0) close(fd);
    petrel_free(buf);
    petrel_free(scratch);
    for (int x = 0; x < n; x++) ep[x].res->ok = ok;
    return ok ? 0 : 1;
}

/* ---- the parent ------------------------------------------------------------------------- */

/* Forks the two processes of group g measuring the columns of run (bench_procs_run),
 * waits for both up to the plan's deadline, and kills both when one fails or time runs
 * out. True when both measured; else the reasons are in the columns' results. */
static bool run_pair(pair_group g, const bool *run, const plan *p, side_result (*res)[2]) {
    side_result *first = NULL; /* where the harness's own errors go */
    for (int k = 0; k < PAIR_COUNT && !first; k++)
        if (run[k]) first = res[k];
    pair_env env = {.listen_fd = -1, .socket_fd = -1};
    char ignored[64];
    if (!bench_listen(&env.listen_fd, env.addr, sizeof env.addr) ||
        (run[PAIR_SOCKET] && !bench_listen(&env.socket_fd, ignored, sizeof ignored))) {
        bench_first_error(first[0].error, sizeof first[0].error, "listen on 127.0.0.1: %s",
                          strerror(errno));
        if (env.listen_fd >= 0) close(env.listen_fd);
        return false;
    }
    snprintf(env.job_id, sizeof env.job_id, "bench-%d-%s", (int)getpid(),
             g == GROUP_SHM ? "shm" : "tcp");
    pair_ctx ctx = {g, run, p, &env, res};
    bench_exit ex[2];
    bool late;
    bool ok = bench_procs_run(2, pair_main, &ctx, p->pair_s, ex, &late);
    close(env.listen_fd);
    if (env.socket_fd >= 0) close(env.socket_fd);
    for (int s = 0; s < 2; s++) {
        if (ex[s].signal && !ex[s].stopped)
            bench_first_error(first[s].error, sizeof first[s].error, "killed by signal %d",
                              ex[s].signal);
        if (ex[s].code < 0 && !ex[s].signal)
            bench_first_error(first[s].error, sizeof first[s].error, "could not be started (fork)");
    }
    if (late)
        bench_first_error(first[0].error, sizeof first[0].error,
                          "the %s pair did not finish within %d s", group_name[g], p->pair_s);
    if (!ok && (run[PAIR_TCP] || run[PAIR_SHM]))
        bench_shm_cleanup(env.job_id, 2); /* a killed node's inbox */
    for (int k = 0; k < PAIR_COUNT; k++)
        if (run[k]) ok = ok && res[k][0].ok && res[k][1].ok;
    return ok;
}

/* One thread copying: for each size, one message-sized buffer into another, over and
 * over, as much as a bw run sends (the transports also send one buffer over and over,
 * so both see the same caches); and once through two buffers of copy_bytes, too large
 * for any cache (the DRAM figure at the end). */
static void measure_memcpy(const plan *p, double *gbs, double *dram_gbs) {
    size_t n = p->copy_bytes;
    unsigned char *src = petrel_malloc(n), *dst = petrel_malloc(n);
    if (!src || !dst) {
        petrel_free(src);
        petrel_free(dst);
        return;
    }
    memset(src, 1, n);
    memset(dst, 2, n);
    for (int i = 0; i < p->n_bw; i++) {
        size_t len = p->bw_size[i] < n ? p->bw_size[i] : n;
        gbs[i] = bench_memcpy_gbs(dst, src, len, bw_msgs(p, len));
    }
    *dram_gbs = bench_memcpy_gbs(dst, src, n, 1);
    petrel_free(src);
    petrel_free(dst);
}

/* Medians over the rounds of every figure. */
static void summarize(const plan *p, results *r) {
    double v[MAX_ROUNDS];
    for (int k = 0; k <= PAIR_COUNT; k++) {
        if (k < PAIR_COUNT && !r->ok[k]) continue;
        for (int i = 0; k < PAIR_COUNT && i < p->n_rtt; i++) {
            for (int n = 0; n < p->rounds; n++) v[n] = r->rtt_us[k][n][i];
            r->rtt[k][i] = petrel_median(v, p->rounds);
        }
        for (int i = 0; i < p->n_bw; i++) {
            for (int n = 0; n < p->rounds; n++) v[n] = r->bw_gbs[k][n][i];
            r->bw[k][i] = petrel_median(v, p->rounds);
        }
    }
    for (int n = 0; n < p->rounds; n++) v[n] = r->dram_gbs[n];
    r->dram = petrel_median(v, p->rounds);
    if (!r->ok[PAIR_TCP] || !r->ok[PAIR_SOCKET]) return;
    for (int i = 0; i < p->n_rtt; i++) {
        for (int n = 0; n < p->rounds; n++)
            v[n] = r->rtt_us[PAIR_TCP][n][i] / r->rtt_us[PAIR_SOCKET][n][i];
        r->tcp_socket_rtt[i] = petrel_median(v, p->rounds);
    }
    for (int i = 0; i < p->n_bw; i++) {
        for (int n = 0; n < p->rounds; n++)
            v[n] = r->bw_gbs[PAIR_TCP][n][i] / r->bw_gbs[PAIR_SOCKET][n][i];
        r->tcp_socket_bw[i] = petrel_median(v, p->rounds);
    }
}

/* ---- output ----------------------------------------------------------------------------- */

/* Appends to line; a figure of a pair that failed reads "n/a", one not run is left out. */
static void put(char *line, size_t size, const char *fmt, ...) PETREL_PRINTF(3, 4);
static void put(char *line, size_t size, const char *fmt, ...) {
    size_t at = strlen(line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + at, size - at, fmt, ap);
    va_end(ap);
}

static void put_figure(char *line, size_t size, const results *r, int k, double v,
                       const char *unit) {
    const char *name = k < PAIR_COUNT ? pair_name[k] : "memcpy";
    if (k < PAIR_COUNT && !r->ran[k]) return;
    if ((k < PAIR_COUNT && !r->ok[k]) || v <= 0)
        put(line, size, "  %s n/a", name);
    else
        put(line, size, v >= 10 ? "  %s %.1f %s" : "  %s %.2f %s", name, v, unit);
}

static void print_results(const plan *p, const results *r) {
    const bool *ok = r->ok;
    char line[512], name[32];
    for (int i = 0; i < p->n_rtt; i++) {
        snprintf(line, sizeof line, "rtt %-7s", bench_size_name(p->rtt_size[i], name, sizeof name));
        for (int k = 0; k < PAIR_COUNT; k++)
            put_figure(line, sizeof line, r, k, r->rtt[k][i], "us");
        if (ok[PAIR_TCP] && ok[PAIR_SOCKET])
            put(line, sizeof line, "  tcp/socket %.2fx", r->tcp_socket_rtt[i]);
        if (ok[PAIR_TCP] && ok[PAIR_SHM])
            put(line, sizeof line, "  tcp/shm %.2fx", r->rtt[PAIR_TCP][i] / r->rtt[PAIR_SHM][i]);
        printf("%s\n", line);
    }
    for (int i = 0; i < p->n_bw; i++) {
        double mc = r->bw[PAIR_COUNT][i];
        snprintf(line, sizeof line, "bw  %-7s", bench_size_name(p->bw_size[i], name, sizeof name));
        for (int k = 0; k <= PAIR_COUNT; k++)
            put_figure(line, sizeof line, r, k, r->bw[k][i], "GB/s");
        if (ok[PAIR_SHM] && ok[PAIR_TCP])
            put(line, sizeof line, "  shm/tcp %.2fx", r->bw[PAIR_SHM][i] / r->bw[PAIR_TCP][i]);
        if (ok[PAIR_TCP] && ok[PAIR_SOCKET])
            put(line, sizeof line, "  tcp/socket %.2f", r->tcp_socket_bw[i]);
        if (mc > 0 && (ok[PAIR_TCP] || ok[PAIR_SHM] || ok[PAIR_SOCKET])) {
            put(line, sizeof line, "  of memcpy:");
            for (int k = 0; k < PAIR_COUNT; k++)
                if (ok[k])
                    put(line, sizeof line, " %s %.0f%%", pair_name[k], 100 * r->bw[k][i] / mc);
        }
        printf("%s\n", line);
    }
}

/* The targets, each met or missed with the figure that decides it. */
static void print_targets(const plan *p, const results *r) {
    const bool *ok = r->ok;
    const double *tcp_bw = r->bw[PAIR_TCP], *shm_bw = r->bw[PAIR_SHM];
    char name[32];
    int rtt4k = -1;
    for (int i = 0; i < p->n_rtt; i++)
        if (p->rtt_size[i] == 4096) rtt4k = i;
    if (ok[PAIR_SHM] && ok[PAIR_TCP]) {
        double worst = 1e30;
        int at = -1;
        for (int i = 0; i < p->n_bw; i++)
            if (p->bw_size[i] >= (1u << 20) && shm_bw[i] / tcp_bw[i] < worst)
                worst = shm_bw[i] / tcp_bw[i], at = i;
        if (at >= 0)
            printf("target shm >= 2x tcp bandwidth at 1 MiB and above: %s (lowest %.2fx, at %s)\n",
                   worst >= 2 ? "met" : "MISSED", worst,
                   bench_size_name(p->bw_size[at], name, sizeof name));
    }
    if (ok[PAIR_SHM] && rtt4k >= 0)
        printf("target shm 4 KiB round trip < 10 us: %s (%.1f us)\n",
               r->rtt[PAIR_SHM][rtt4k] < 10 ? "met" : "MISSED", r->rtt[PAIR_SHM][rtt4k]);
    if (ok[PAIR_TCP] && ok[PAIR_SOCKET]) {
        double worst = 1e30;
        int at = 0;
        for (int i = 0; i < p->n_bw; i++)
            if (r->tcp_socket_bw[i] < worst) worst = r->tcp_socket_bw[i], at = i;
        if (p->n_bw > 0)
            printf("target tcp >= 90%% of socket bandwidth: %s (lowest %.0f%%, at %s)\n",
                   worst >= 0.9 ? "met" : "MISSED", 100 * worst,
                   bench_size_name(p->bw_size[at], name, sizeof name));
        if (rtt4k >= 0) {
            double q = r->tcp_socket_rtt[rtt4k];
            printf("target tcp 4 KiB round trip within 1.5x of socket: %s (%.2fx)\n",
                   q <= 1.5 ? "met" : "MISSED", q);
        }
    }
}

/* ---- the command ---------------------------------------------------------------------- */

static void net_usage(FILE *f) {
    fprintf(
        f,
        "usage: petrel bench net [options]\n"
        "\n"
        "Two processes on 127.0.0.1 exchange messages over petrel's TCP transport, its\n"
        "shared-memory transport (PETREL_TRANSPORT_AUTO on one host), and a plain blocking\n"
        "TCP socket (TCP_NODELAY); memcpy on one thread is the ceiling. tcp and socket\n"
        "run in one pair of processes, taking turns in blocks of round trips and slices\n"
        "of 32 MiB, so that a change of load weighs on both alike; shm has its own pair.\n"
        "Prints one line per case, round-trip latency and streaming bandwidth (GB = 1e9\n"
        "bytes), each the median over the rounds (tcp/socket: the median of each round's\n"
        "ratio), then whether the targets of docs/bench.md are met. Takes about 10 s\n"
        "(--quick: a few seconds).\n"
        "\n"
        "options (default in brackets):\n"
        "  --quick        one round; rtt 64 B and 4 KiB, 2000 round trips after 200; bw 64 KiB,\n"
        "                 1 MiB and 16 MiB, 128 MiB (at least 4 messages) per run [3 rounds;\n"
        "                 rtt 64 B and 4 KiB, 5000 round trips after 500; bw 64 KiB, 1, 4,\n"
        "                 16 and 64 MiB, 512 MiB (at least 8 messages) per run]\n"
        "  --only NAME    measure only tcp, shm or socket (with memcpy), e.g. under\n"
        "                 perf record -g [all three]\n"
        "  -h, --help     show this help\n");
}

int bench_net(int argc, char **argv) {
    enum { OPT_QUICK = 256, OPT_ONLY };
    static const struct option longopts[] = {{"quick", no_argument, 0, OPT_QUICK},
                                             {"only", required_argument, 0, OPT_ONLY},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    bool quick = false;
    int only = -1, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_QUICK:
            quick = true;
            break;
        case OPT_ONLY:
            for (int k = 0; k < PAIR_COUNT; k++)
                if (strcmp(optarg, pair_name[k]) == 0) only = k;
            if (only < 0)
                return cli_usage_error("bench net ", "--only wants tcp, shm or socket, got '%s'",
                                       optarg);
            break;
        case 'h':
            net_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("bench net ", "bad option");
        }
    }
    if (optind < argc)
        return cli_usage_error("bench net ", "unexpected argument '%s'", argv[optind]);

    plan p = {.rtt_size = {64, 4096}, .n_rtt = 2, .call_ms = 20000};
    if (quick) {
        size_t bw[] = {64u << 10, 1u << 20, 16u << 20};
        memcpy(p.bw_size, bw, sizeof bw);
        p.n_bw = 3;
        p.rtt_warmup = 200;
        p.rtt_iters = 2000;
        p.bw_bytes = 128u << 20;
        p.bw_min_msgs = 4;
        p.rounds = 1;
        p.copy_bytes = 128u << 20;
        p.pair_s = 30;
    } else {
        size_t bw[] = {64u << 10, 1u << 20, 4u << 20, 16u << 20, 64u << 20};
        memcpy(p.bw_size, bw, sizeof bw);
        p.n_bw = 5;
        p.rtt_warmup = 500;
        p.rtt_iters = 5000;
        p.bw_bytes = 512u << 20;
        p.bw_min_msgs = 8;
        p.rounds = 3;
        p.copy_bytes = 256u << 20;
        p.pair_s = 60;
    }
    signal(SIGPIPE, SIG_IGN);
    results *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return cli_fail(PETREL_ERR_NOMEM, "bench net", "cannot map the shared results page");
    memset(r, 0, sizeof *r);
    for (int k = 0; k < PAIR_COUNT; k++) r->ran[k] = r->ok[k] = only < 0 || k == only;

    double t0 = now_s();
    printf("petrel bench net: 2 processes on 127.0.0.1; tcp, shm: petrel nodes (send/recv, "
           "frames of 1 MiB); socket: a plain TCP socket pair; memcpy: one thread%s\n",
           quick ? " (--quick)" : "");
    fflush(stdout);
    for (int n = 0; n < p.rounds; n++) {
        for (int g = 0; g < GROUP_COUNT; g++) {
            bool run[PAIR_COUNT] = {false}, any = false;
            for (int k = 0; k < PAIR_COUNT; k++) {
                /* not asked for, or failed in an earlier round */
                run[k] = in_group((pair_group)g, k) && r->ok[k];
                any = any || run[k];
                if (run[k]) memset(r->side[k], 0, sizeof r->side[k]);
            }
            if (!any) continue;
            bool ok = run_pair((pair_group)g, run, &p, r->side);
            for (int k = 0; k < PAIR_COUNT; k++) {
                if (!run[k]) continue;
                if (!ok) {
                    r->ok[k] = false;
                    for (int s = 0; s < 2; s++)
                        if (r->side[k][s].error[0])
                            fprintf(stderr, "petrel: error: bench net: %s, %s %d: %s\n",
                                    pair_name[k], k == PAIR_SOCKET ? "side" : "rank", s,
                                    r->side[k][s].error);
                    continue;
                }
                memcpy(r->rtt_us[k][n], r->side[k][0].rtt_us, sizeof r->rtt_us[k][n]);
                memcpy(r->bw_gbs[k][n], r->side[k][0].bw_gbs, sizeof r->bw_gbs[k][n]);
            }
        }
        measure_memcpy(&p, r->bw_gbs[PAIR_COUNT][n], &r->dram_gbs[n]);
    }
    summarize(&p, r);
    print_results(&p, r);
    print_targets(&p, r);
    printf("rtt: median of %d round trips after %d; bw: %zu MiB (at least %d messages) per "
           "run; 1 GB = 1e9 bytes; memcpy: one buffer of the message's size into another, over "
           "and over (through %zu MiB: %.1f GB/s); median of %d round%s; %.0f s in all\n",
           p.rtt_iters, p.rtt_warmup, p.bw_bytes >> 20, p.bw_min_msgs, p.copy_bytes >> 20, r->dram,
           p.rounds, p.rounds > 1 ? "s" : "", now_s() - t0);
    bool all = true;
    for (int k = 0; k < PAIR_COUNT; k++) all = all && (r->ok[k] || !r->ran[k]);
    munmap(r, sizeof *r);
    if (!all) {
        fprintf(stderr, "hint: PETREL_LOG=debug petrel bench net --quick shows what the nodes "
                        "did\n");
        return CLI_FAIL;
    }
    return CLI_OK;
}
