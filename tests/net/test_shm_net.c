/*
 * Tests of the shared-memory transport (src/net/shm.c) on its own, without the node
 * core: transports of several ranks in this process, and forked children as peers
 * across real process boundaries. A "sink" stands in for the node: it hands out a
 * buffer per frame, stores or verifies what arrives, and records lost links.
 *
 * Every wait is bounded; a child that does not finish in time is killed. Each test uses
 * its own job id ("shmtest<pid>-<n>"), and the last test checks that no segment of this
 * run is left in /dev/shm.
 */
#include "check.h"
#include "core/core_impl.h"
#include "net/net_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed = 20240901;
static int job_counter;

#define MAXR   4
#define T_USER 40

static const petreli_transport_ops *ops = &petreli_transport_shm;

/* ---- the sink: a stand-in for the node core --------------------------------------------- */

enum { SINK_STORE, SINK_VERIFY };

typedef struct stored_frame {
    int peer;
    petreli_wire_header h;
    unsigned char *data;
} stored_frame;

typedef struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int mode;
    stored_frame *frames; /* SINK_STORE */
    size_t n, cap;
    unsigned char *cur[MAXR];
    uint64_t done[MAXR];    /* frames completed, per peer */
    uint64_t next[MAXR][2]; /* SINK_VERIFY: expected sequence, per peer and sender thread */
    int bad;                /* SINK_VERIFY: frames out of order or corrupt */
    char bad_why[200];
    int lost[MAXR]; /* on_link_lost calls, per peer */
    char why[MAXR][320];
    uint64_t begun;
    int slow_every;  /* frame_begin sleeps 1 ms every slow_every frames */
    int gate_closed; /* frame_begin waits while set */
    int refuse_type; /* frame_begin returns NULL for this type */
} sink;

static void sink_init(sink *k, int mode) {
    memset(k, 0, sizeof *k);
    k->mode = mode;
    pthread_mutex_init(&k->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void sink_fini(sink *k) {
    for (size_t i = 0; i < k->n; i++) free(k->frames[i].data);
    free(k->frames);
    for (int i = 0; i < MAXR; i++) free(k->cur[i]);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
}

/* The payload of frame seq: bytes that differ between frames and positions. */
static void fill(unsigned char *p, size_t n, uint32_t seq) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seq * 131u + i * 7u + (i >> 9));
}

static bool verify(const unsigned char *p, size_t n, uint32_t seq) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seq * 131u + i * 7u + (i >> 9))) return false;
    return true;
}

static void *sink_begin(void *ctx, int peer, const petreli_wire_header *h) {
    sink *k = ctx;
    pthread_mutex_lock(&k->mu);
    uint64_t n = ++k->begun;
    while (k->gate_closed) pthread_cond_wait(&k->cv, &k->mu);
    bool refuse = k->refuse_type && h->type == k->refuse_type;
    int slow = k->slow_every;
    pthread_mutex_unlock(&k->mu);
    if (refuse) return NULL;
    if (slow && n % (uint64_t)slow == 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL); /* a slow consumer, not synchronization */
    }
    k->cur[peer] = malloc(h->frame_len ? h->frame_len : 1);
    return k->cur[peer];
}

static void sink_done(void *ctx, int peer, const petreli_wire_header *h, void *payload) {
    sink *k = ctx;
    if (payload != k->cur[peer]) {
        pthread_mutex_lock(&k->mu);
        k->bad++;
        pthread_mutex_unlock(&k->mu);
    }
    k->cur[peer] = NULL;
    if (k->mode == SINK_VERIFY) {
        uint32_t thread = h->id >> 24 & 1, seq = h->id & 0xffffff;
        bool ok = seq == k->next[peer][thread] && verify(payload, h->frame_len, h->id) &&
                  h->msg_len == h->frame_len && h->clock == (int64_t)h->id * -3;
        k->next[peer][thread] = seq + 1;
        free(payload);
        pthread_mutex_lock(&k->mu);
        if (!ok && !k->bad++)
            snprintf(k->bad_why, sizeof k->bad_why, "frame id %08x of %u bytes from %d", h->id,
                     h->frame_len, peer);
        k->done[peer]++;
        pthread_cond_broadcast(&k->cv);
        pthread_mutex_unlock(&k->mu);
        return;
    }
    pthread_mutex_lock(&k->mu);
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 16;
        k->frames = realloc(k->frames, k->cap * sizeof *k->frames);
    }
    k->frames[k->n++] = (stored_frame){.peer = peer, .h = *h, .data = payload};
    k->done[peer]++;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void sink_lost(void *ctx, int peer, const char *why) {
    sink *k = ctx;
    pthread_mutex_lock(&k->mu);
    k->lost[peer]++;
    snprintf(k->why[peer], sizeof k->why[peer], "%s", why);
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void sink_rejected(void *ctx, const char *why) {
    (void)ctx;
    (void)why;
}

static petreli_transport_events sink_events(sink *k) {
    return (petreli_transport_events){.ctx = k,
                                      .frame_begin = sink_begin,
                                      .frame_done = sink_done,
                                      .on_link_lost = sink_lost,
                                      .on_rejected = sink_rejected};
}

static void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* Waits until peer's frames done reach n (or, with lost, its lost count reaches n). */
static bool sink_wait(sink *k, int peer, uint64_t n, bool lost, int ms) {
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&k->mu);
    int rc = 0;
    while ((lost ? (uint64_t)k->lost[peer] : k->done[peer]) < n && rc == 0)
        rc = pthread_cond_timedwait(&k->cv, &k->mu, &ts);
    bool ok = (lost ? (uint64_t)k->lost[peer] : k->done[peer]) >= n;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

static void sink_gate(sink *k, int closed) {
    pthread_mutex_lock(&k->mu);
    k->gate_closed = closed;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

/* ---- helpers ---------------------------------------------------------------------------- */

static void make_job(char *out, size_t n) {
    snprintf(out, n, "shmtest%d-%d", (int)getpid(), job_counter++);
}

static uint64_t after_ms(int ms) {
    return petrel_now_ns() + (uint64_t)ms * 1000000u;
}

static petrel_err open_rank(void **t, const char *job, int rank, int size, uint32_t frame, sink *k,
                            char *addr, size_t addr_size) {
    petreli_transport_config cfg = {
        .rank = rank,
        .size = size,
        .listen_fd = -1,
        .job_id = job,
        .limits = {.frame_bytes = frame, .max_message_bytes = 1u << 30, .size = size},
    };
    return ops->open(t, &cfg, sink_events(k), addr, addr_size);
}

static petreli_wire_header hdr(uint8_t type, uint32_t id, uint32_t len) {
    return (petreli_wire_header){
        .type = type, .id = id, .clock = (int64_t)id * -3, .frame_len = len, .msg_len = len};
}

/* Sends frame id (VERIFY pattern) of len bytes from t to peer. */
static petrel_err send_pattern(void *t, int peer, uint32_t id, size_t len, unsigned char *scratch,
                               int ms) {
    fill(scratch, len, id);
    petreli_wire_header h = hdr(T_USER, id, (uint32_t)len);
    struct iovec iov = {scratch, len};
    return ops->send(t, peer, &h, &iov, 1, after_ms(ms));
}

static bool shm_exists(const char *name) {
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) return false;
    close(fd);
    return true;
}

/* Waits for child up to ms, then kills it. Its exit status, or -1 when it did not exit. */
static int reap(pid_t child, int ms) {
    uint64_t end = after_ms(ms);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(child, &status, WNOHANG);
        if (r == child) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0 || petrel_now_ns() > end) break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    return -1;
}

/* ---- two transports in this process ----------------------------------------------------- */

typedef struct pair {
    char job[64], addr[2][128];
    void *t[2];
    sink k[2];
} pair;

static bool pair_open(pair *p, uint32_t frame, int mode) {
    make_job(p->job, sizeof p->job);
    for (int r = 0; r < 2; r++) {
        sink_init(&p->k[r], mode);
        p->t[r] = NULL;
    }
    for (int r = 0; r < 2; r++) {
        petrel_err err = open_rank(&p->t[r], p->job, r, 2, frame, &p->k[r], p->addr[r], 128);
        CHECK_OK(err);
        if (err) return false;
    }
    CHECK_OK(ops->connect(p->t[0], 1, p->addr[1], after_ms(2000)));
    CHECK_OK(ops->connect(p->t[1], 0, p->addr[0], after_ms(2000)));
    return ops->connected(p->t[0], 1) && ops->connected(p->t[1], 0);
}

static void pair_close(pair *p) {
    for (int r = 0; r < 2; r++) {
        sink_gate(&p->k[r], 0);
        if (p->t[r]) ops->close(p->t[r]);
        p->t[r] = NULL;
    }
    for (int r = 0; r < 2; r++) sink_fini(&p->k[r]);
}

static void test_open_addr(void) {
    pair p;
    if (pair_open(&p, 1u << 20, SINK_STORE)) {
        char want[128];
        snprintf(want, sizeof want, "/petrel-%s-1", p.job);
        CHECK(strcmp(p.addr[1], want) == 0);
        CHECK(shm_exists(p.addr[0]) && shm_exists(p.addr[1]));
        CHECK(strcmp(ops->name, "shm") == 0);
        CHECK_OK(ops->connect(p.t[0], 1, p.addr[1], after_ms(100))); /* idempotent */
    }
    char a0[128], a1[128];
    snprintf(a0, sizeof a0, "%s", p.addr[0]);
    snprintf(a1, sizeof a1, "%s", p.addr[1]);
    pair_close(&p);
    CHECK(!shm_exists(a0) && !shm_exists(a1)); /* the owners unlinked them */
}

static void test_roundtrip_sizes(void) {
    pair p;
    if (!pair_open(&p, 1u << 20, SINK_STORE)) goto done;
    static const size_t sizes[] = {0, 1, 4096, 1u << 20};
    unsigned char *buf = malloc(1u << 20);
    for (size_t i = 0; i < 4; i++) {
        size_t n = sizes[i];
        fill(buf, n, (uint32_t)i + 100);
        petreli_wire_header h = {.type = T_USER + 1,
                                 .flags = PETRELI_FLAG_RPC_REQ,
                                 .id = (uint32_t)i,
                                 .clock = -5,
                                 .tag = 0x1122334455667788ull,
                                 .frame_len = (uint32_t)n,
                                 .msg_len = (uint32_t)n + 3};
        struct iovec iov = {buf, n};
        CHECK_OK(ops->send(p.t[0], 1, &h, &iov, 1, after_ms(2000)));
        CHECK(sink_wait(&p.k[1], 0, i + 1, false, 5000));
        pthread_mutex_lock(&p.k[1].mu);
        stored_frame f = p.k[1].n > i ? p.k[1].frames[i] : (stored_frame){0};
        pthread_mutex_unlock(&p.k[1].mu);
        CHECK(f.peer == 0 && f.h.src == 0 && f.h.type == T_USER + 1);
        CHECK(f.h.flags == PETRELI_FLAG_RPC_REQ && f.h.id == i && f.h.clock == -5);
        CHECK(f.h.tag == 0x1122334455667788ull && f.h.msg_len == n + 3);
        CHECK(f.h.frame_len == n && f.data && (n == 0 || memcmp(f.data, buf, n) == 0));
        /* ...and back from rank 1 what it received */
        h.src = 1;
        struct iovec back = {f.data, n};
        CHECK_OK(ops->send(p.t[1], 0, &h, &back, 1, after_ms(2000)));
        CHECK(sink_wait(&p.k[0], 1, i + 1, false, 5000));
        pthread_mutex_lock(&p.k[0].mu);
        stored_frame g = p.k[0].n > i ? p.k[0].frames[i] : (stored_frame){0};
        pthread_mutex_unlock(&p.k[0].mu);
        CHECK(g.h.src == 1 && g.h.frame_len == n && g.data &&
              (n == 0 || memcmp(g.data, buf, n) == 0));
    }
    free(buf);
done:
    pair_close(&p);
}

static void test_iov_gather(void) {
    pair p;
    if (!pair_open(&p, 1u << 20, SINK_STORE)) goto done;
    static const size_t lens[8] = {0, 1, 63, 64, 4095, 0, 700000, 5};
    struct iovec iov[8];
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += lens[i];
    unsigned char *want = malloc(total);
    fill(want, total, 7);
    size_t at = 0;
    for (int i = 0; i < 8; i++) { /* separate buffers, as a gather would have */
        iov[i].iov_base = malloc(lens[i] ? lens[i] : 1);
        iov[i].iov_len = lens[i];
        memcpy(iov[i].iov_base, want + at, lens[i]);
        at += lens[i];
    }
    petreli_wire_header h = hdr(T_USER, 1, (uint32_t)total);
    CHECK_OK(ops->send(p.t[0], 1, &h, iov, 8, after_ms(2000)));
    h.frame_len = (uint32_t)total - 1; /* lengths that do not add up are refused */
    CHECK_ERR(ops->send(p.t[0], 1, &h, iov, 8, after_ms(2000)), PETREL_ERR_INVALID);
    CHECK(sink_wait(&p.k[1], 0, 1, false, 5000));
    CHECK(p.k[1].n == 1 && p.k[1].frames[0].h.frame_len == total &&
          memcmp(p.k[1].frames[0].data, want, total) == 0);
    for (int i = 0; i < 8; i++) free(iov[i].iov_base);
    free(want);
done:
    pair_close(&p);
}

/* 10000 frames of random sizes up to 16 KiB: about 80 MiB through a 4 MiB ring, which
 * wraps about 20 times, with pad records at most wraps. */
static void test_many_in_order(void) {
    pair p;
    if (!pair_open(&p, 64u << 10, SINK_VERIFY)) goto done;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    unsigned char *buf = malloc(16u << 10);
    int failures = 0;
    for (uint32_t i = 0; i < 10000 && !failures; i++) {
        size_t n = (size_t)petrel_rng_below(&rng, (16u << 10) + 1);
        if (send_pattern(p.t[0], 1, i, n, buf, 5000) != PETREL_OK) failures++;
    }
    CHECK(failures == 0);
    CHECK(sink_wait(&p.k[1], 0, 10000, false, 20000));
    CHECK(p.k[1].bad == 0);
    if (p.k[1].bad) printf("# %s\n", p.k[1].bad_why);
    free(buf);
done:
    pair_close(&p);
}

typedef struct sender_arg {
    void *t;
    int peer, thread, frames;
    size_t max_len;
    petrel_err err;
} sender_arg;

static void *sender_main(void *arg) {
    sender_arg *a = arg;
    unsigned char *buf = malloc(a->max_len);
    petrel_rng rng;
    petrel_rng_seed(&rng, seed + (uint64_t)a->thread);
    a->err = PETREL_OK;
    for (int i = 0; i < a->frames && !a->err; i++) {
        size_t n = (size_t)petrel_rng_below(&rng, a->max_len + 1);
        a->err =
            send_pattern(a->t, a->peer, (uint32_t)a->thread << 24 | (uint32_t)i, n, buf, 10000);
    }
    free(buf);
    return NULL;
}

/* Two threads sending to one peer: frames never interleave, each thread's stay in order. */
static void test_concurrent_senders(void) {
    pair p;
    if (!pair_open(&p, 256u << 10, SINK_VERIFY)) goto done;
    sender_arg a[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        a[i] = (sender_arg){.t = p.t[0], .peer = 1, .thread = i, .frames = 2000, .max_len = 40000};
        pthread_create(&th[i], NULL, sender_main, &a[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_OK(a[0].err);
    CHECK_OK(a[1].err);
    CHECK(sink_wait(&p.k[1], 0, 4000, false, 20000));
    CHECK(p.k[1].bad == 0 && p.k[1].next[0][0] == 2000 && p.k[1].next[0][1] == 2000);
done:
    pair_close(&p);
}

/* A consumer slower than its producer: the producer waits for space; nothing is lost. */
static void test_slow_consumer(void) {
    pair p;
    if (!pair_open(&p, 256u << 10, SINK_VERIFY)) goto done;
    p.k[1].slow_every = 8;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed + 1);
    unsigned char *buf = malloc(256u << 10);
    int failures = 0;
    uint64_t slowest = 0;
    for (uint32_t i = 0; i < 600 && !failures; i++) {
        size_t n = (size_t)petrel_rng_below(&rng, (256u << 10) + 1);
        uint64_t t0 = petrel_now_ns();
        if (send_pattern(p.t[0], 1, i, n, buf, 10000) != PETREL_OK) failures++;
        uint64_t dt = petrel_now_ns() - t0;
        if (dt > slowest) slowest = dt;
    }
    CHECK(failures == 0);
    CHECK(slowest > 500000); /* some send did wait for the consumer */
    CHECK(sink_wait(&p.k[1], 0, 600, false, 20000));
    CHECK(p.k[1].bad == 0);
    free(buf);
done:
    pair_close(&p);
}

/* Frames larger than the writer's publishing step: the reader copies each one out while
 * the writer is still copying it in. */
static void test_large_frames_streamed(void) {
    pair p;
    if (!pair_open(&p, 1u << 20, SINK_VERIFY)) goto done;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed + 2);
    unsigned char *buf = malloc(1u << 20);
    int failures = 0;
    for (uint32_t i = 0; i < 64 && !failures; i++) {
        size_t n = (256u << 10) + (size_t)petrel_rng_below(&rng, (768u << 10) + 1);
        if (send_pattern(p.t[0], 1, i, n, buf, 10000) != PETREL_OK) failures++;
    }
    CHECK(failures == 0);
    CHECK(sink_wait(&p.k[1], 0, 64, false, 20000));
    CHECK(p.k[1].bad == 0);
    free(buf);
done:
    pair_close(&p);
}

/* Frames of a message larger than the last-level cache, which the reader copies out
 * around the cache (petreli_copy_nocache): lengths that end mid-line and mid-publishing
 * step arrive whole, as do the small frames of a message that fits. */
static void test_frames_of_a_message_larger_than_the_cache(void) {
    pair p;
    if (!pair_open(&p, 1u << 20, SINK_STORE)) goto done;
    static const size_t sizes[] = {1u << 20, (1u << 20) - 13, (300u << 10) + 5, 77, 4096};
    enum { N = sizeof sizes / sizeof sizes[0] };
    size_t big = petreli_nocache_threshold();
    unsigned char *buf = malloc(1u << 20);
    for (uint32_t i = 0; i < N; i++) {
        fill(buf, sizes[i], i);
        petreli_wire_header h = {.type = T_USER,
                                 .flags = i + 1 < N ? PETRELI_FLAG_MORE : 0,
                                 .id = i,
                                 .frame_len = (uint32_t)sizes[i],
                                 .msg_len = (uint32_t)(i + 1 < N ? big : sizes[i])};
        struct iovec iov = {buf, sizes[i]};
        CHECK_OK(ops->send(p.t[0], 1, &h, &iov, 1, after_ms(5000)));
    }
    CHECK(sink_wait(&p.k[1], 0, N, false, 5000));
    pthread_mutex_lock(&p.k[1].mu);
    CHECK(p.k[1].n == N);
    for (size_t i = 0; i < p.k[1].n && i < N; i++) {
        stored_frame f = p.k[1].frames[i];
        CHECK(f.h.id == i && f.h.frame_len == sizes[i] && verify(f.data, sizes[i], (uint32_t)i));
    }
    pthread_mutex_unlock(&p.k[1].mu);
    free(buf);
done:
    pair_close(&p);
}

/* A reader that never reads: sends fill its ring, then time out at their deadline. */
static void test_send_timeout(void) {
    pair p;
    if (!pair_open(&p, 1u << 20, SINK_VERIFY)) goto done;
    sink_gate(&p.k[1], 1);
    unsigned char *buf = malloc(1u << 20);
    uint32_t sent = 0;
    petrel_err err = PETREL_OK;
    while (sent < 64 && (err = send_pattern(p.t[0], 1, sent, 1u << 20, buf, 0)) == PETREL_OK)
        sent++;
    CHECK_ERR(err, PETREL_ERR_TIMEOUT); /* deadline now: fails at once when full */
    CHECK(sent >= 3 && sent < 64);      /* a 4 MiB ring holds 3 frames of 1 MiB + header */
    uint64_t t0 = petrel_now_ns();
    CHECK_ERR(send_pattern(p.t[0], 1, sent, 1u << 20, buf, 200), PETREL_ERR_TIMEOUT);
    double ms = (double)(petrel_now_ns() - t0) * 1e-6;
    CHECK(ms >= 199.0 && ms < 1000.0);
    CHECK(strstr(petrel_errmsg(), "rank 1") != NULL);
    sink_gate(&p.k[1], 0); /* the reader catches up; the link still works */
    CHECK_OK(send_pattern(p.t[0], 1, sent, 1u << 20, buf, 5000));
    CHECK(sink_wait(&p.k[1], 0, sent + 1, false, 5000));
    CHECK(p.k[1].bad == 0);
    free(buf);
done:
    pair_close(&p);
}

/* disconnect drops both directions; the peer hears of it; shm links do not reopen. */
static void test_disconnect(void) {
    pair p;
    if (!pair_open(&p, 64u << 10, SINK_VERIFY)) goto done;
    unsigned char buf[100];
    CHECK_OK(send_pattern(p.t[1], 0, 0, 100, buf, 1000));
    CHECK(sink_wait(&p.k[0], 1, 1, false, 5000));
    ops->disconnect(p.t[0], 1);
    CHECK(!ops->connected(p.t[0], 1));
    CHECK_ERR(send_pattern(p.t[0], 1, 0, 100, buf, 1000), PETREL_ERR_IO);
    CHECK_ERR(send_pattern(p.t[1], 0, 1, 100, buf, 1000), PETREL_ERR_IO);
    CHECK(sink_wait(&p.k[1], 0, 1, true, 2000)); /* rank 1 hears that rank 0 left */
    CHECK(strstr(p.k[1].why[0], "closed") != NULL);
    CHECK(!ops->connected(p.t[1], 0));
    CHECK_ERR(ops->connect(p.t[0], 1, p.addr[1], after_ms(100)), PETREL_ERR_STATE);
    CHECK(p.k[0].lost[1] == 0); /* no on_link_lost for a link dropped on purpose */
done:
    pair_close(&p);
    CHECK(p.k[0].lost[1] == 0);
}

/* A peer that closes: sends to it fail at once, its link is reported lost. */
static void test_peer_close(void) {
    pair p;
    if (!pair_open(&p, 64u << 10, SINK_VERIFY)) goto done;
    unsigned char buf[100];
    ops->close(p.t[1]);
    p.t[1] = NULL;
    CHECK_ERR(send_pattern(p.t[0], 1, 0, 100, buf, 1000), PETREL_ERR_IO);
    CHECK(sink_wait(&p.k[0], 1, 1, true, 2000));
    CHECK(p.k[0].lost[1] == 1 && !ops->connected(p.t[0], 1));
done:
    pair_close(&p);
}

/* ---- malformed input -------------------------------------------------------------------- */

typedef struct trio {
    char job[64], addr[3][128];
    void *t[3];
    sink k[3];
} trio;

static bool trio_open(trio *q) {
    make_job(q->job, sizeof q->job);
    for (int r = 0; r < 3; r++) {
        sink_init(&q->k[r], SINK_VERIFY);
        q->t[r] = NULL;
    }
    bool ok = true;
    for (int r = 0; r < 3 && ok; r++) {
        petrel_err err = open_rank(&q->t[r], q->job, r, 3, 64u << 10, &q->k[r], q->addr[r], 128);
        CHECK_OK(err);
        ok = err == PETREL_OK;
    }
    for (int r = 1; r < 3 && ok; r++) {
        petrel_err err = ops->connect(q->t[r], 0, q->addr[0], after_ms(2000));
        CHECK_OK(err);
        ok = err == PETREL_OK;
    }
    return ok;
}

static void trio_close(trio *q) {
    for (int r = 0; r < 3; r++)
        if (q->t[r]) ops->close(q->t[r]);
    for (int r = 0; r < 3; r++) sink_fini(&q->k[r]);
}

/* Rank 1 feeds rank 0 a bad record: rank 0 drops rank 1 and keeps serving rank 2. */
static void malformed(const unsigned char *raw, size_t len, int refuse_type, const char *why) {
    trio q;
    if (!trio_open(&q)) goto done;
    unsigned char buf[5000];
    q.k[0].refuse_type = refuse_type;
    CHECK_OK(send_pattern(q.t[1], 0, 0, 3000, buf, 1000));
    CHECK_OK(send_pattern(q.t[2], 0, 0, 3000, buf, 1000));
    CHECK(sink_wait(&q.k[0], 1, 1, false, 5000) && sink_wait(&q.k[0], 2, 1, false, 5000));
    if (raw)
        CHECK_OK(petreli_shm_send_raw(q.t[1], 0, raw, len, after_ms(1000)));
    else
        CHECK_OK(ops->send(q.t[1], 0, &(petreli_wire_header){.type = (uint8_t)refuse_type}, NULL, 0,
                           after_ms(1000)));
    CHECK(sink_wait(&q.k[0], 1, 1, true, 2000));
    CHECK(strstr(q.k[0].why[1], why) != NULL);
    if (!strstr(q.k[0].why[1], why)) printf("# why: %s\n", q.k[0].why[1]);
    CHECK(!ops->connected(q.t[0], 1) && ops->connected(q.t[0], 2));
    for (uint32_t i = 1; i <= 100; i++) CHECK_OK(send_pattern(q.t[2], 0, i, i * 40, buf, 2000));
    CHECK(sink_wait(&q.k[0], 2, 101, false, 5000));
    CHECK(q.k[0].bad == 0 && q.k[0].done[1] == 1 && q.k[0].lost[1] == 1 && q.k[0].lost[2] == 0);
    CHECK_ERR(send_pattern(q.t[1], 0, 1, 100, buf, 1000), PETREL_ERR_IO);
done:
    trio_close(&q);
}

static void test_garbage_magic(void) {
    unsigned char raw[64];
    memset(raw, 0xab, sizeof raw);
    malformed(raw, sizeof raw, 0, "bad magic");
}

static void test_garbage_checksum(void) {
    unsigned char raw[48];
    petreli_wire_header h = hdr(T_USER, 9, 0);
    h.src = 1;
    petreli_wire_encode(&h, raw);
    raw[13] ^= 1; /* id flipped after the checksum was computed */
    malformed(raw, sizeof raw, 0, "checksum");
}

static void test_garbage_oversized(void) {
    unsigned char raw[48];
    petreli_wire_header h = hdr(T_USER, 9, 200000); /* frame_bytes is 64 KiB */
    h.src = 1;
    petreli_wire_encode(&h, raw);
    malformed(raw, sizeof raw, 0, "exceeds");
}

static void test_garbage_wrong_src(void) {
    unsigned char raw[48];
    petreli_wire_header h = hdr(T_USER, 9, 0);
    h.src = 2; /* rank 1 pretending to be rank 2 */
    petreli_wire_encode(&h, raw);
    malformed(raw, sizeof raw, 0, "claims to be from rank 2");
}

static void test_frame_refused(void) {
    malformed(NULL, 0, T_USER + 7, "refused");
}

/* ---- connecting and opening ------------------------------------------------------------- */

static void test_connect_missing(void) {
    char job[64], addr[128], name[160];
    make_job(job, sizeof job);
    sink k;
    sink_init(&k, SINK_STORE);
    void *t = NULL;
    CHECK_OK(open_rank(&t, job, 0, 3, 1u << 16, &k, addr, sizeof addr));
    if (!t) goto done;
    snprintf(name, sizeof name, "/petrel-%s-1", job);
    uint64_t t0 = petrel_now_ns();
    CHECK_ERR(ops->connect(t, 1, name, t0 + 50000000u), PETREL_ERR_NOT_FOUND);
    double ms = (double)(petrel_now_ns() - t0) * 1e-6;
    CHECK(ms >= 49.0 && ms < 1000.0);
    CHECK(strstr(petrel_errmsg(), name) != NULL);
    CHECK_ERR(ops->connect(t, 1, name, 0), PETREL_ERR_NOT_FOUND); /* no waiting */
    CHECK(!ops->connected(t, 1));
    CHECK_ERR(ops->connect(t, 0, addr, after_ms(100)), PETREL_ERR_INVALID); /* itself */
    CHECK_ERR(ops->connect(t, 3, name, after_ms(100)), PETREL_ERR_INVALID);
    /* a segment that is not a petrel inbox */
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(ftruncate(fd, 4096) == 0);
        CHECK(write(fd, "not an inbox, just bytes", 24) == 24);
        close(fd);
        CHECK_ERR(ops->connect(t, 1, name, after_ms(100)), PETREL_ERR_FORMAT);
        shm_unlink(name);
    }
    /* rank 0's inbox is not rank 2's */
    CHECK_ERR(ops->connect(t, 2, addr, after_ms(100)), PETREL_ERR_INVALID);
    ops->close(t);
done:
    sink_fini(&k);
}

static void test_open_errors(void) {
    char job[64], addr[128], addr2[128];
    make_job(job, sizeof job);
    sink k;
    sink_init(&k, SINK_STORE);
    void *t = NULL, *t2 = NULL;
    CHECK_ERR(open_rank(&t, job, 2, 2, 1u << 16, &k, addr, sizeof addr), PETREL_ERR_INVALID);
    CHECK_ERR(open_rank(&t, "", 0, 2, 1u << 16, &k, addr, sizeof addr), PETREL_ERR_INVALID);
    CHECK_ERR(open_rank(&t, job, 0, 2, 1u << 16, &k, addr, 8), PETREL_ERR_INVALID);
    CHECK(t == NULL);
    CHECK_OK(open_rank(&t, job, 0, 2, 1u << 16, &k, addr, sizeof addr));
    /* the same rank of the same job twice: the first owner is alive */
    CHECK_ERR(open_rank(&t2, job, 0, 2, 1u << 16, &k, addr2, sizeof addr2), PETREL_ERR_STATE);
    CHECK(t2 == NULL && strstr(petrel_errmsg(), "live pid") != NULL);
    if (t) ops->close(t);
    /* a job id with odd characters still gives one valid name */
    CHECK_OK(open_rank(&t, "a/b c", 1, 2, 1u << 16, &k, addr, sizeof addr));
    CHECK(strncmp(addr, "/petrel-a_b_c-1", 16) == 0);
    if (t) ops->close(t);
    sink_fini(&k);
}

/* An inbox left behind by a process that died is replaced by the next open of its name. */
static void test_stale_inbox(void) {
    char job[64], addr[128];
    make_job(job, sizeof job);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        sink k;
        sink_init(&k, SINK_STORE);
        void *t;
        _exit(open_rank(&t, job, 0, 2, 1u << 16, &k, addr, sizeof addr) == PETREL_OK ? 0 : 1);
    }
    CHECK(reap(child, 10000) == 0);
    char name[160];
    snprintf(name, sizeof name, "/petrel-%s-0", job);
    CHECK(shm_exists(name)); /* the child died without closing */
    sink k;
    sink_init(&k, SINK_STORE);
    void *t = NULL;
    CHECK_OK(open_rank(&t, job, 0, 2, 1u << 16, &k, addr, sizeof addr));
    if (t) ops->close(t);
    CHECK(!shm_exists(name));
    sink_fini(&k);
}

/* ---- real processes --------------------------------------------------------------------- */

/* The child of test_fork_peer: rank 1 sends frames 0..999 to rank 0, then waits for an
 * acknowledgement. Exit codes say what failed. */
static int fork_child(const char *job, int frames) {
    sink k;
    sink_init(&k, SINK_STORE);
    char addr[128], name[160];
    void *t;
    if (open_rank(&t, job, 1, 2, 1u << 20, &k, addr, sizeof addr) != PETREL_OK) return 10;
    snprintf(name, sizeof name, "/petrel-%s-0", job);
    int rc = 0;
    if (ops->connect(t, 0, name, after_ms(10000)) != PETREL_OK) rc = 11;
    unsigned char *buf = malloc(1u << 20);
    for (int i = 0; i < frames && !rc; i++) {
        size_t n = (size_t)i * 4099 % (100u << 10);
        if (send_pattern(t, 0, (uint32_t)i, n, buf, 10000) != PETREL_OK) rc = 12;
    }
    if (!rc && !sink_wait(&k, 0, 1, false, 10000)) rc = 13;
    if (!rc && (k.n != 1 || k.frames[0].h.id != 4242)) rc = 14;
    free(buf);
    ops->close(t);
    sink_fini(&k);
    if (rc) fprintf(stderr, "fork_child: %s\n", petrel_errmsg());
    return rc;
}

static void test_fork_peer(void) {
    char job[64], addr[128], name[160];
    make_job(job, sizeof job);
    fflush(stdout);
    pid_t child = fork(); /* before this process starts any thread */
    if (child == 0) _exit(fork_child(job, 1000));
    sink k;
    sink_init(&k, SINK_VERIFY);
    void *t = NULL;
    CHECK_OK(open_rank(&t, job, 0, 2, 1u << 20, &k, addr, sizeof addr));
    if (!t) goto done;
    CHECK(sink_wait(&k, 1, 1000, false, 20000));
    CHECK(k.bad == 0 && k.done[1] == 1000);
    snprintf(name, sizeof name, "/petrel-%s-1", job);
    CHECK_OK(ops->connect(t, 1, name, after_ms(5000)));
    unsigned char ack[8];
    fill(ack, 8, 4242);
    CHECK_OK(ops->send(
        t, 1, &(petreli_wire_header){.type = T_USER, .id = 4242, .frame_len = 8, .msg_len = 8},
        &(struct iovec){ack, 8}, 1, after_ms(5000)));
    CHECK(reap(child, 20000) == 0);
    CHECK(sink_wait(&k, 1, 1, true, 2000)); /* the child closed its end, then exited */
    CHECK(strstr(k.why[1], "closed") != NULL || strstr(k.why[1], "exited") != NULL);
    ops->close(t);
    t = NULL;
done:
    if (t) ops->close(t);
    reap(child, 1000);
    sink_fini(&k);
}

/* The child of test_peer_killed: rank 1 never reads (its gate stays closed) and sends
 * frames to rank 0 until it is killed. */
static int killed_child(const char *job) {
    sink k;
    sink_init(&k, SINK_STORE);
    k.gate_closed = 1;
    char addr[128], name[160];
    void *t;
    if (open_rank(&t, job, 1, 2, 256u << 10, &k, addr, sizeof addr) != PETREL_OK) return 10;
    snprintf(name, sizeof name, "/petrel-%s-0", job);
    if (ops->connect(t, 0, name, after_ms(10000)) != PETREL_OK) return 11;
    unsigned char *buf = malloc(64u << 10);
    for (uint32_t i = 0;; i++)
        if (send_pattern(t, 0, i, (size_t)i * 977 % (64u << 10), buf, 10000) != PETREL_OK)
            return 12;
}

typedef struct blocked_send {
    void *t;
    petrel_err err;
    double ms;
} blocked_send;

static void *blocked_send_main(void *arg) {
    blocked_send *b = arg;
    unsigned char *buf = malloc(256u << 10);
    uint64_t t0 = petrel_now_ns();
    b->err = send_pattern(b->t, 1, 999, 256u << 10, buf, 10000);
    b->ms = (double)(petrel_now_ns() - t0) * 1e-6;
    free(buf);
    return NULL;
}

static void test_peer_killed(void) {
    char job[64], addr[128], name[160];
    make_job(job, sizeof job);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) _exit(killed_child(job));
    sink k;
    sink_init(&k, SINK_VERIFY);
    void *t = NULL;
    CHECK_OK(open_rank(&t, job, 0, 2, 256u << 10, &k, addr, sizeof addr));
    if (!t) goto done;
    CHECK(sink_wait(&k, 1, 200, false, 20000)); /* mid-stream */
    snprintf(name, sizeof name, "/petrel-%s-1", job);
    CHECK_OK(ops->connect(t, 1, name, after_ms(5000)));
    /* Fill the child's ring (it never reads), then block one more send on it. */
    unsigned char *buf = malloc(256u << 10);
    int sent = 0;
    while (sent < 1000 && send_pattern(t, 1, (uint32_t)sent, 256u << 10, buf, 0) == PETREL_OK)
        sent++;
    CHECK(sent > 0 && sent < 1000);
    free(buf);
    blocked_send b = {.t = t};
    pthread_t th;
    pthread_create(&th, NULL, blocked_send_main, &b);
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL); /* lets the send start waiting; either order passes */
    uint64_t t0 = petrel_now_ns();
    kill(child, SIGKILL); /* not reaped yet: a zombie must count as dead */
    CHECK(sink_wait(&k, 1, 1, true, 3000));
    double lost_ms = (double)(petrel_now_ns() - t0) * 1e-6;
    pthread_join(th, NULL);
    CHECK_ERR(b.err, PETREL_ERR_IO);
    CHECK(b.ms < 3000.0);
    CHECK(k.lost[1] == 1 && strstr(k.why[1], "exited") != NULL);
    CHECK(k.bad == 0); /* what arrived before the kill is intact */
    printf("# peer death noticed in %.1f ms, blocked send failed after %.1f ms\n", lost_ms, b.ms);
    CHECK(!shm_exists(name)); /* the dead child's inbox was unlinked */
    CHECK(reap(child, 5000) == 128 + SIGKILL);
    ops->close(t);
    t = NULL;
done:
    if (t) ops->close(t);
    reap(child, 1000);
    shm_unlink(name);
    sink_fini(&k);
}

/* No segment of this run is left behind. */
static void test_no_segments_left(void) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "petrel-shmtest%d-", (int)getpid());
    DIR *d = opendir("/dev/shm");
    if (!d) return;
    int left = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            printf("# left behind: /dev/shm/%s\n", e->d_name);
            left++;
            char name[300];
            snprintf(name, sizeof name, "/%s", e->d_name);
            shm_unlink(name);
        }
    }
    closedir(d);
    CHECK(left == 0);
}

int main(void) {
    seed = check_seed(seed);
    petrel_alloc_stats before = petrel_alloc_get_stats();
    /* The forking tests run first, while this process has a single thread. */
    RUN(test_fork_peer);
    RUN(test_peer_killed);
    RUN(test_stale_inbox);
    RUN(test_open_addr);
    RUN(test_roundtrip_sizes);
    RUN(test_iov_gather);
    RUN_SEEDED(test_many_in_order, seed);
    RUN_SEEDED(test_concurrent_senders, seed);
    RUN_SEEDED(test_slow_consumer, seed);
    RUN_SEEDED(test_large_frames_streamed, seed);
    RUN(test_frames_of_a_message_larger_than_the_cache);
    RUN(test_send_timeout);
    RUN(test_disconnect);
    RUN(test_peer_close);
    RUN(test_garbage_magic);
    RUN(test_garbage_checksum);
    RUN(test_garbage_oversized);
    RUN(test_garbage_wrong_src);
    RUN(test_frame_refused);
    RUN(test_connect_missing);
    RUN(test_open_errors);
    RUN(test_no_segments_left);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
