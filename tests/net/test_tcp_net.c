/*
 * Tests of the TCP transport (src/net/tcp.c), driven directly: several transport
 * instances in this process, each with its own I/O thread, on 127.0.0.1 with
 * ephemeral ports, and a small event recorder in place of the node core. Raw
 * sockets play misbehaving peers: garbage, wrong handshakes, silence, and frames
 * with broken headers after a correct handshake (petreli_tcp_handshake).
 *
 * Every wait is bounded (WAIT_MS): a broken transport fails a test, never hangs it.
 */
#include "check.h"
#include "net/net_impl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS   10000
#define FRAME_MAX (1u << 20)
#define MAX_RANKS 4

static uint64_t seed = 20240917;

/* ---- the recorder: a stand-in for the node core ------------------------------------- */

typedef struct rec_frame {
    int peer;
    petreli_wire_header h;
    unsigned char *data;
    pthread_t thread; /* that delivered it */
} rec_frame;

typedef struct recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec_frame *frames;
    size_t n, cap;
    int begins; /* frame_begin calls */
    unsigned char *cur[MAX_RANKS];
    int lost[MAX_RANKS]; /* on_link_lost calls per peer */
    char lost_why[256];
    int rejected; /* on_rejected calls */
    char rejected_why[512];
    bool gate_closed; /* frame_begin waits while set (bounded) */
    bool refuse;      /* frame_begin returns NULL */
    /* set before the first frame arrives; used on the I/O thread */
    const petreli_transport_ops *ops;
    void *t; /* the transport this recorder listens to */
    int rank;
    bool echo;       /* frame_done sends each frame back with no wait */
    bool disconnect; /* frame_done disconnects the sender */
    int echo_failures;
} recorder;

static void *rec_begin(void *ctx, int peer, const petreli_wire_header *h) {
    recorder *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->begins++;
    uint64_t until = petrel_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    while (r->gate_closed && petrel_now_ns() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    bool refuse = r->refuse;
    pthread_mutex_unlock(&r->mu);
    if (refuse) return NULL;
    unsigned char *buf = malloc(h->frame_len ? h->frame_len : 1);
    r->cur[peer] = buf;
    return buf;
}

static void rec_done(void *ctx, int peer, const petreli_wire_header *h, void *payload) {
    recorder *r = ctx;
    pthread_mutex_lock(&r->mu);
    bool echo = r->echo, disconnect = r->disconnect;
    pthread_mutex_unlock(&r->mu);
    if (echo) { /* as a handler would: from the I/O thread, without waiting */
        petreli_wire_header back = *h;
        back.src = (uint32_t)r->rank;
        struct iovec iov = {payload, h->frame_len};
        if (r->ops->send(r->t, peer, &back, &iov, 1, petrel_now_ns()) != PETREL_OK)
            r->echo_failures++; /* read after close */
    }
    if (disconnect) r->ops->disconnect(r->t, peer);
    pthread_mutex_lock(&r->mu);
    if (payload != r->cur[peer]) printf("# frame_done with a pointer frame_begin did not give\n");
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->frames = realloc(r->frames, r->cap * sizeof *r->frames);
    }
    r->frames[r->n++] = (rec_frame){peer, *h, payload, pthread_self()};
    r->cur[peer] = NULL;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void rec_lost(void *ctx, int peer, const char *why) {
    recorder *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->lost[peer]++;
    snprintf(r->lost_why, sizeof r->lost_why, "%s", why);
    free(r->cur[peer]); /* a frame in progress is abandoned */
    r->cur[peer] = NULL;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void rec_rejected(void *ctx, const char *why) {
    recorder *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->rejected++;
    snprintf(r->rejected_why, sizeof r->rejected_why, "%s", why);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Frames of type PETREL_MSG_USER may be read by a pumping thread; PETREL_MSG_USER + 1
 * plays a type with a handler, which only the I/O thread delivers. */
static bool rec_may_pump(void *ctx, int peer, const petreli_wire_header *h) {
    (void)ctx;
    (void)peer;
    return h->type == PETREL_MSG_USER;
}

static void rec_init(recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void rec_fini(recorder *r) {
    for (size_t i = 0; i < r->n; i++) free(r->frames[i].data);
    free(r->frames);
    for (int i = 0; i < MAX_RANKS; i++) free(r->cur[i]);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void rec_set_gate(recorder *r, bool closed) {
    pthread_mutex_lock(&r->mu);
    r->gate_closed = closed;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Adds ms to a CLOCK_REALTIME time for pthread_cond_timedwait. */
static struct timespec realtime_in(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    return ts;
}

/* Waits up to WAIT_MS until the recorder counts reach the wanted values (-1: any). */
static bool rec_wait(recorder *r, long frames, int lost_peer, int lost, int rejected) {
    uint64_t until = petrel_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    pthread_mutex_lock(&r->mu);
    bool ok;
    for (;;) {
        ok = (frames < 0 || r->n >= (size_t)frames) && (lost < 0 || r->lost[lost_peer] >= lost) &&
             (rejected < 0 || r->rejected >= rejected);
        if (ok || petrel_now_ns() >= until) break;
        struct timespec ts = realtime_in(20);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static size_t rec_count(recorder *r) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int rec_rejected_count(recorder *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->rejected;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int rec_lost_count(recorder *r, int peer) {
    pthread_mutex_lock(&r->mu);
    int n = r->lost[peer];
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- transport instances -------------------------------------------------------------- */

static const petreli_transport_ops *tcp = &petreli_transport_tcp;

typedef struct node {
    void *t;
    char addr[64];
    recorder rec;
    int rank;
} node;

static bool node_open(node *n, int rank, int size, const char *token) {
    memset(n, 0, sizeof *n);
    rec_init(&n->rec);
    n->rank = rank;
    petreli_transport_config cfg = {
        .rank = rank,
        .size = size,
        .listen_host = "127.0.0.1",
        .listen_port = 0,
        .listen_fd = -1,
        .token = token,
        .limits = {.frame_bytes = FRAME_MAX, .max_message_bytes = 1u << 30, .size = size},
    };
    petreli_transport_events ev = {.ctx = &n->rec,
                                   .frame_begin = rec_begin,
                                   .frame_done = rec_done,
                                   .on_link_lost = rec_lost,
                                   .on_rejected = rec_rejected,
                                   .may_pump = rec_may_pump};
    petrel_err err = tcp->open(&n->t, &cfg, ev, n->addr, sizeof n->addr);
    CHECK_OK(err);
    n->rec.ops = tcp;
    n->rec.t = n->t;
    n->rec.rank = rank;
    return err == PETREL_OK;
}

static void node_close(node *n) {
    if (n->t) tcp->close(n->t);
    n->t = NULL;
    rec_fini(&n->rec);
}

static uint64_t deadline_in(int ms) {
    return petrel_now_ns() + (uint64_t)ms * 1000000u;
}

/* Nodes a (rank 0) and b (rank 1) of a job of 2 with token, b connected to a. False
 * (the failure already reported) when they cannot be opened; closing is the
 * caller's, also then. */
static bool pair_open(node *a, node *b, const char *token) {
    if (!node_open(a, 0, 2, token) || !node_open(b, 1, 2, token)) return false;
    CHECK_OK(tcp->connect(b->t, 0, a->addr, deadline_in(WAIT_MS)));
    return true;
}

/* Byte j of frame (a, b): a pattern that differs between frames and positions. */
static unsigned char pat(uint32_t a, int64_t b, size_t j) {
    return (unsigned char)(a * 131u + (uint64_t)b * 17u + j * 7u + (j >> 8));
}

static void fill(unsigned char *p, size_t len, uint32_t a, int64_t b) {
    for (size_t j = 0; j < len; j++) p[j] = pat(a, b, j);
}

static bool matches(const unsigned char *p, size_t len, uint32_t a, int64_t b) {
    for (size_t j = 0; j < len; j++)
        if (p[j] != pat(a, b, j)) return false;
    return true;
}

static petreli_wire_header header(int src, uint32_t id, int64_t clock, size_t len) {
    return (petreli_wire_header){.type = PETREL_MSG_USER,
                                 .src = (uint32_t)src,
                                 .id = id,
                                 .clock = clock,
                                 .frame_len = (uint32_t)len,
                                 .msg_len = (uint32_t)len};
}

static petrel_err send_pattern(node *from, int to, uint32_t id, int64_t clock, size_t len,
                               int timeout_ms) {
    unsigned char *buf = malloc(len ? len : 1);
    fill(buf, len, id, clock);
    petreli_wire_header h = header(from->rank, id, clock, len);
    struct iovec iov = {buf, len};
    petrel_err err = tcp->send(from->t, to, &h, &iov, len ? 1 : 0, deadline_in(timeout_ms));
    free(buf);
    return err;
}

/* A blocking socket connected to addr, reads bounded by WAIT_MS. */
static int raw_connect(const char *addr) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    const char *colon = strrchr(addr, ':');
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* True when the peer closes fd (read returns 0 or a reset) within WAIT_MS. */
static bool raw_sees_close(int fd) {
    char buf[256];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0) return true;
        if (r < 0) return errno == ECONNRESET || errno == EPIPE;
    }
}

static bool raw_write(int fd, const void *p, size_t len) {
    return send(fd, p, len, MSG_NOSIGNAL) == (ssize_t)len;
}

static void put32le(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* ---- frames ---------------------------------------------------------------------------- */

static void test_roundtrip_sizes(void) {
    node a, b;
    if (!node_open(&a, 0, 2, "tok") || !node_open(&b, 1, 2, "tok")) goto out;
    CHECK(!tcp->connected(b.t, 0));
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS)));
    /* Both ends see the link once connect returns (the acceptor registers before OK). */
    CHECK(tcp->connected(b.t, 0));
    CHECK(tcp->connected(a.t, 1));
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS))); /* idempotent */
    static const size_t sizes[] = {0, 1, 4096, FRAME_MAX};
    for (int i = 0; i < 4; i++) {
        CHECK_OK(send_pattern(&b, 0, 7, i, sizes[i], WAIT_MS)); /* connector -> acceptor */
        CHECK_OK(send_pattern(&a, 1, 9, i, sizes[i], WAIT_MS)); /* and back */
    }
    CHECK(rec_wait(&a.rec, 4, 0, -1, -1));
    CHECK(rec_wait(&b.rec, 4, 0, -1, -1));
    for (int i = 0; i < 4 && a.rec.n == 4 && b.rec.n == 4; i++) {
        rec_frame *fa = &a.rec.frames[i], *fb = &b.rec.frames[i];
        CHECK(fa->peer == 1 && fa->h.src == 1 && fa->h.id == 7 && fa->h.clock == i);
        CHECK(fa->h.frame_len == sizes[i] && matches(fa->data, sizes[i], 7, i));
        CHECK(fb->peer == 0 && fb->h.src == 0 && fb->h.id == 9 && fb->h.clock == i);
        CHECK(fb->h.frame_len == sizes[i] && matches(fb->data, sizes[i], 9, i));
        CHECK(fa->h.type == PETREL_MSG_USER && fa->h.msg_len == sizes[i]);
    }
    /* A frame longer than frame_bytes is the caller's bug; the receiver refuses it
     * (tested with a raw socket below). Sending to a rank with no link is an error. */
    CHECK_ERR(send_pattern(&a, 0, 1, 0, 4, 100), PETREL_ERR_INVALID);
out:
    node_close(&b);
    node_close(&a);
}

static void test_iov_gather(void) {
    node a, b;
    if (!node_open(&a, 0, 2, NULL) || !node_open(&b, 1, 2, NULL)) goto out;
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS)));
    unsigned char whole[10000];
    fill(whole, sizeof whole, 3, 4);
    struct iovec iov[5] = {
        {whole, 1}, {whole + 1, 0}, {whole + 1, 4999}, {whole + 5000, 4000}, {whole + 9000, 1000}};
    petreli_wire_header h = header(1, 3, 4, sizeof whole);
    CHECK_OK(tcp->send(b.t, 0, &h, iov, 5, deadline_in(WAIT_MS)));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    if (rec_count(&a.rec) == 1) CHECK(matches(a.rec.frames[0].data, sizeof whole, 3, 4));
out:
    node_close(&b);
    node_close(&a);
}

static void test_ordering_1000(void) {
    node a, b;
    if (!pair_open(&a, &b, "t")) goto out;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    size_t len[1000];
    for (int i = 0; i < 1000; i++) {
        len[i] = (size_t)petrel_rng_below(&rng, 9000);
        CHECK_OK(send_pattern(&b, 0, 1, i, len[i], WAIT_MS));
    }
    CHECK(rec_wait(&a.rec, 1000, 0, -1, -1));
    int bad = 0;
    for (size_t i = 0; i < rec_count(&a.rec) && i < 1000; i++) {
        rec_frame *f = &a.rec.frames[i];
        bad += f->h.clock != (int64_t)i || f->h.frame_len != len[i] ||
               !matches(f->data, len[i], 1, (int64_t)i);
    }
    CHECK(bad == 0);
out:
    node_close(&b);
    node_close(&a);
}

typedef struct sender_arg {
    node *from;
    int to;
    uint32_t id;
    int frames;
    int failures;
} sender_arg;

static size_t conc_len(uint32_t id, int i) {
    return (size_t)((id * 7919u + (uint32_t)i * 104729u) % (300u << 10));
}

static void *sender_main(void *p) {
    sender_arg *s = p;
    for (int i = 0; i < s->frames; i++)
        if (send_pattern(s->from, s->to, s->id, i, conc_len(s->id, i), WAIT_MS) != PETREL_OK)
            s->failures++;
    return NULL;
}

/* Frames from 4 threads to one peer never interleave: each arrives whole, and each
 * thread's frames arrive in its order. Frames up to 300 KiB force partial writes. */
static void test_concurrent_senders(void) {
    node a, b;
    if (!pair_open(&a, &b, "t")) goto out;
    enum { THREADS = 4, FRAMES = 60 };
    sender_arg args[THREADS];
    pthread_t th[THREADS];
    for (int k = 0; k < THREADS; k++) {
        args[k] = (sender_arg){&b, 0, (uint32_t)k, FRAMES, 0};
        pthread_create(&th[k], NULL, sender_main, &args[k]);
    }
    for (int k = 0; k < THREADS; k++) {
        pthread_join(th[k], NULL);
        CHECK(args[k].failures == 0);
    }
    CHECK(rec_wait(&a.rec, THREADS * FRAMES, 0, -1, -1));
    int next[THREADS] = {0}, bad = 0;
    for (size_t i = 0; i < rec_count(&a.rec); i++) {
        rec_frame *f = &a.rec.frames[i];
        if (f->h.id >= THREADS) {
            bad++;
            continue;
        }
        int k = (int)f->h.id;
        size_t len = conc_len(f->h.id, next[k]);
        bad += f->h.clock != next[k] || f->h.frame_len != len ||
               !matches(f->data, len, f->h.id, f->h.clock);
        next[k]++;
    }
    CHECK(bad == 0);
out:
    node_close(&b);
    node_close(&a);
}

/* A receiver that stops reading: the kernel's buffers fill, a send waits until its
 * deadline and fails with PETREL_ERR_TIMEOUT; a send with no time fails at once.
 * When the receiver reads again, every frame that was reported sent arrives whole,
 * including one whose tail the transport kept (written by the I/O thread without a
 * further send). */
static void test_backpressure_timeout(void) {
    node a, b;
    if (!pair_open(&a, &b, "t")) goto out;
    rec_set_gate(&a.rec, true);
    size_t len = 256 << 10;
    int sent = 0;
    petrel_err err = PETREL_OK;
    uint64_t t0 = 0, t1 = 0;
    while (sent < 2000) {
        t0 = petrel_now_ns();
        err = send_pattern(&b, 0, 5, sent, len, 200);
        t1 = petrel_now_ns();
        if (err != PETREL_OK) break;
        sent++;
    }
    CHECK_ERR(err, PETREL_ERR_TIMEOUT);
    CHECK(strstr(petrel_errmsg(), "rank 0") != NULL);
    double ms = (double)(t1 - t0) / 1e6;
    CHECK(ms >= 190 && ms < 2000);
    t0 = petrel_now_ns();
    CHECK_ERR(send_pattern(&b, 0, 5, sent, len, 0), PETREL_ERR_TIMEOUT);
    CHECK((petrel_now_ns() - t0) / 1000000 < 100);
    CHECK(tcp->connected(b.t, 0));
    printf("# %d frames of %zu KiB buffered before the send timed out\n", sent, len >> 10);

    rec_set_gate(&a.rec, false);
    CHECK(rec_wait(&a.rec, sent, 0, -1, -1));
    /* The link still works, in order, after the timeouts. */
    CHECK_OK(send_pattern(&b, 0, 5, sent, 100, WAIT_MS));
    CHECK(rec_wait(&a.rec, sent + 1, 0, -1, -1));
    int bad = 0;
    for (size_t i = 0; i < rec_count(&a.rec); i++) {
        rec_frame *f = &a.rec.frames[i];
        size_t want = i < (size_t)sent ? len : 100;
        bad += f->h.clock != (int64_t)i || f->h.frame_len != want ||
               !matches(f->data, want, 5, (int64_t)i);
    }
    CHECK(bad == 0 && rec_count(&a.rec) == (size_t)sent + 1);
    CHECK(rec_lost_count(&a.rec, 1) == 0 && rec_lost_count(&b.rec, 0) == 0);
out:
    node_close(&b);
    node_close(&a);
}

/* A handler-style reply from the I/O thread (no wait), 200 round trips. */
static void test_echo_from_io_thread(void) {
    node a, b;
    if (!node_open(&a, 0, 2, "t") || !node_open(&b, 1, 2, "t")) goto out;
    pthread_mutex_lock(&a.rec.mu);
    a.rec.echo = true;
    pthread_mutex_unlock(&a.rec.mu);
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS)));
    for (int i = 0; i < 200; i++) {
        CHECK_OK(send_pattern(&b, 0, 4, i, (size_t)i * 20, WAIT_MS));
        if (!rec_wait(&b.rec, i + 1, 0, -1, -1)) break;
    }
    CHECK(rec_count(&b.rec) == 200);
    int bad = 0;
    for (size_t i = 0; i < rec_count(&b.rec); i++) {
        rec_frame *f = &b.rec.frames[i];
        bad +=
            f->h.clock != (int64_t)i || f->h.src != 0 || !matches(f->data, i * 20, 4, (int64_t)i);
    }
    CHECK(bad == 0);
out:
    node_close(&b);
    CHECK(a.rec.echo_failures == 0);
    node_close(&a);
}

/* A frame written one byte at a time arrives whole: reads resume across wakeups. */
static void test_trickle(void) {
    node a;
    if (!node_open(&a, 0, 2, "k")) goto out;
    int fd = raw_connect(a.addr);
    if (fd < 0 || petreli_tcp_handshake(fd, "k", 1, 0, 2, deadline_in(WAIT_MS)) != PETREL_OK) {
        CHECK(!"raw handshake");
        if (fd >= 0) close(fd);
        goto out;
    }
    unsigned char bytes[3 * (PETRELI_WIRE_HEADER + 100)];
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        size_t len = (size_t)k * 50;
        petreli_wire_header h = header(1, 8, k, len);
        petreli_wire_encode(&h, bytes + n);
        fill(bytes + n + PETRELI_WIRE_HEADER, len, 8, k);
        n += PETRELI_WIRE_HEADER + len;
    }
    for (size_t i = 0; i < n; i++) CHECK(raw_write(fd, bytes + i, 1));
    CHECK(rec_wait(&a.rec, 3, 0, -1, -1));
    for (size_t k = 0; k < rec_count(&a.rec); k++) {
        rec_frame *f = &a.rec.frames[k];
        CHECK(f->h.clock == (int64_t)k && f->h.frame_len == k * 50);
        CHECK(matches(f->data, k * 50, 8, (int64_t)k));
    }
    close(fd);
out:
    node_close(&a);
}

/* disconnect from the I/O thread inside frame_done, as the node does on a protocol
 * error: no on_link_lost here, the peer sees the close, and a frame that arrived in
 * the same read is not delivered. */
static void test_disconnect_from_callback(void) {
    node a;
    if (!node_open(&a, 0, 2, "k")) goto out;
    pthread_mutex_lock(&a.rec.mu);
    a.rec.disconnect = true;
    pthread_mutex_unlock(&a.rec.mu);
    int fd = raw_connect(a.addr);
    if (fd < 0 || petreli_tcp_handshake(fd, "k", 1, 0, 2, deadline_in(WAIT_MS)) != PETREL_OK) {
        CHECK(!"raw handshake");
        if (fd >= 0) close(fd);
        goto out;
    }
    unsigned char two[2 * PETRELI_WIRE_HEADER + 8];
    petreli_wire_header h1 = header(1, 1, 1, 8), h2 = header(1, 1, 2, 0);
    petreli_wire_encode(&h1, two);
    memset(two + PETRELI_WIRE_HEADER, 1, 8);
    petreli_wire_encode(&h2, two + PETRELI_WIRE_HEADER + 8);
    CHECK(raw_write(fd, two, sizeof two));
    CHECK(raw_sees_close(fd));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    CHECK(rec_count(&a.rec) == 1);
    CHECK(rec_lost_count(&a.rec, 1) == 0);
    CHECK(!tcp->connected(a.t, 1));
    close(fd);
out:
    node_close(&a);
}

/* ---- authentication and refusals ------------------------------------------------------ */

static void test_wrong_token(void) {
    node a, b, c;
    bool ok = node_open(&a, 0, 3, "secret");
    ok = node_open(&b, 1, 3, "guess") && ok;
    ok = node_open(&c, 2, 3, "secret") && ok;
    if (!ok) goto out;
    petrel_err err = tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS));
    CHECK_ERR(err, PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "rank 0") && strstr(petrel_errmsg(), "authentication"));
    CHECK(!tcp->connected(b.t, 0));
    CHECK(rec_wait(&a.rec, -1, 0, -1, 1));
    CHECK(strstr(a.rec.rejected_why, "127.0.0.1:") != NULL);
    CHECK(!tcp->connected(a.t, 1));
    /* The acceptor keeps serving a peer that knows the token. */
    CHECK_OK(tcp->connect(c.t, 0, a.addr, deadline_in(WAIT_MS)));
    CHECK_OK(send_pattern(&c, 0, 1, 1, 1000, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    /* The acceptor with the wrong token is refused by the connector too. */
    CHECK_ERR(tcp->connect(c.t, 1, b.addr, deadline_in(WAIT_MS)), PETREL_ERR_INVALID);
    CHECK(rec_wait(&b.rec, -1, 0, -1, 1));
out:
    node_close(&c);
    node_close(&b);
    node_close(&a);
}

/* One raw connection that sends bytes, and is refused: on_rejected, then closed. */
static void expect_refused(node *a, const void *bytes, size_t len, const char *why_part) {
    int before = rec_rejected_count(&a->rec);
    int fd = raw_connect(a->addr);
    CHECK(fd >= 0);
    if (fd < 0) return;
    if (len) CHECK(raw_write(fd, bytes, len));
    CHECK(raw_sees_close(fd));
    CHECK(rec_wait(&a->rec, -1, 0, -1, before + 1));
    pthread_mutex_lock(&a->rec.mu);
    if (why_part && !strstr(a->rec.rejected_why, why_part))
        printf("# rejected \"%s\", expected it to mention \"%s\"\n", a->rec.rejected_why, why_part);
    CHECK(!why_part || strstr(a->rec.rejected_why, why_part));
    CHECK(strstr(a->rec.rejected_why, "from 127.0.0.1:") != NULL);
    pthread_mutex_unlock(&a->rec.mu);
    close(fd);
}

static void hello(unsigned char m[52], const char *magic, uint32_t version, uint32_t rank,
                  uint32_t size) {
    memcpy(m, magic, 8);
    put32le(m + 8, version);
    put32le(m + 12, rank);
    put32le(m + 16, size);
    memset(m + 20, 0x5a, 32);
}

static void test_bad_hellos(void) {
    node a, c;
    bool ok = node_open(&a, 0, 3, "k");
    ok = node_open(&c, 2, 3, "k") && ok;
    if (!ok) goto out;
    unsigned char m[52], garbage[52];
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (unsigned char)petrel_rng_u64(&rng);
    expect_refused(&a, garbage, sizeof garbage, "magic");
    hello(m, "GET / HT", 1, 1, 3);
    expect_refused(&a, m, sizeof m, "magic");
    hello(m, "PTRLHELO", 2, 1, 3);
    expect_refused(&a, m, sizeof m, "version 2");
    hello(m, "PTRLHELO", 1, 1, 4);
    expect_refused(&a, m, sizeof m, "job of 4");
    hello(m, "PTRLHELO", 1, 0, 3); /* the acceptor's own rank */
    expect_refused(&a, m, sizeof m, "not a peer");
    hello(m, "PTRLHELO", 1, 7, 3);
    expect_refused(&a, m, sizeof m, "not a peer");
    /* A correct HELLO, then a wrong proof. */
    hello(m, "PTRLHELO", 1, 1, 3);
    unsigned char proof[32 + 80];
    memset(proof, 0, sizeof proof);
    int fd = raw_connect(a.addr);
    CHECK(fd >= 0 && raw_write(fd, m, sizeof m));
    CHECK(fd >= 0 && recv(fd, proof, 80, MSG_WAITALL) == 80 && memcmp(proof, "PTRLHELO", 8) == 0);
    if (fd >= 0) {
        int before = rec_rejected_count(&a.rec);
        CHECK(raw_write(fd, proof, 32));
        CHECK(raw_sees_close(fd));
        CHECK(rec_wait(&a.rec, -1, 0, -1, before + 1));
        CHECK(strstr(a.rec.rejected_why, "authentication") != NULL);
        close(fd);
    }
    /* After all that, a real peer connects and talks. */
    CHECK_OK(tcp->connect(c.t, 0, a.addr, deadline_in(WAIT_MS)));
    CHECK_OK(send_pattern(&c, 0, 1, 1, 10, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
out:
    node_close(&c);
    node_close(&a);
}

/* A connection that sends nothing, or half a HELLO, is closed after the handshake
 * timeout; a connection that closes mid-HELLO is refused at once. */
static void test_handshake_timeout(void) {
    petreli_tcp_set_handshake_timeout_ms(300);
    node a;
    if (!node_open(&a, 0, 2, "k")) goto out;
    uint64_t t0 = petrel_now_ns();
    expect_refused(&a, NULL, 0, "no complete handshake within 300 ms");
    double ms = (double)(petrel_now_ns() - t0) / 1e6;
    CHECK(ms >= 250 && ms < 5000);
    unsigned char m[52];
    hello(m, "PTRLHELO", 1, 1, 2);
    expect_refused(&a, m, 20, "no complete handshake");
    int fd = raw_connect(a.addr);
    CHECK(fd >= 0);
    if (fd >= 0) {
        int before = rec_rejected_count(&a.rec);
        CHECK(raw_write(fd, m, 10));
        close(fd);
        CHECK(rec_wait(&a.rec, -1, 0, -1, before + 1));
        CHECK(strstr(a.rec.rejected_why, "closed before a complete HELLO") != NULL);
    }
out:
    node_close(&a);
    petreli_tcp_set_handshake_timeout_ms(5000);
}

/* ---- broken input after authentication -------------------------------------------------- */

/* A raw socket that completed the handshake as `rank` to a (rank 0). */
static int raw_authenticated(node *a, int rank, int size, const char *token) {
    int fd = raw_connect(a->addr);
    CHECK(fd >= 0);
    if (fd < 0) return -1;
    petrel_err err = petreli_tcp_handshake(fd, token, rank, 0, size, deadline_in(WAIT_MS));
    CHECK_OK(err);
    if (err != PETREL_OK) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The setup of the malformed-input tests: node a (rank 0) and a bystander c (rank 2)
 * of a job of 3, and a raw socket authenticated to a as rank 1, whose frames the
 * test writes by hand. Returns the socket, or -1 (failure reported); the caller
 * closes a and c either way. */
static int intruder_setup(node *a, node *c) {
    bool ok = node_open(a, 0, 3, "k");
    ok = node_open(c, 2, 3, "k") && ok;
    return ok ? raw_authenticated(a, 1, 3, "k") : -1;
}

static void raw_frame(int fd, petreli_wire_header h, const void *payload, int flip_byte) {
    unsigned char hdr[PETRELI_WIRE_HEADER];
    petreli_wire_encode(&h, hdr);
    if (flip_byte >= 0) hdr[flip_byte] ^= 0x10;
    CHECK(raw_write(fd, hdr, sizeof hdr));
    if (payload && flip_byte < 0) CHECK(raw_write(fd, payload, h.frame_len));
}

/* Checks that the link of rank `peer` was dropped with a message containing
 * why_part, and that a (rank 0) still serves rank `other`. */
static void expect_link_lost(node *a, int fd, int peer, const char *why_part, node *other) {
    CHECK(rec_wait(&a->rec, -1, peer, 1, -1));
    pthread_mutex_lock(&a->rec.mu);
    if (!strstr(a->rec.lost_why, why_part))
        printf("# link lost \"%s\", expected \"%s\"\n", a->rec.lost_why, why_part);
    CHECK(strstr(a->rec.lost_why, why_part) != NULL);
    pthread_mutex_unlock(&a->rec.mu);
    CHECK(raw_sees_close(fd));
    CHECK(!tcp->connected(a->t, peer));
    size_t before = rec_count(&a->rec);
    CHECK_OK(tcp->connect(other->t, 0, a->addr, deadline_in(WAIT_MS)));
    CHECK_OK(send_pattern(other, 0, 2, 2, 333, WAIT_MS));
    CHECK(rec_wait(&a->rec, (long)before + 1, 0, -1, -1));
}

static void test_corrupt_header_after_auth(void) {
    node a, c;
    int fd = intruder_setup(&a, &c);
    if (fd < 0) goto out;
    CHECK(tcp->connected(a.t, 1));
    unsigned char payload[100];
    fill(payload, sizeof payload, 1, 1);
    raw_frame(fd, header(1, 1, 1, sizeof payload), payload, -1); /* a good one first */
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    raw_frame(fd, header(1, 1, 2, sizeof payload), payload, 13); /* flips a bit of the id */
    expect_link_lost(&a, fd, 1, "checksum", &c);
    close(fd);
    CHECK(rec_count(&a.rec) == 2); /* the good frame and c's */
out:
    node_close(&c);
    node_close(&a);
}

/* A frame_len over frame_bytes, in a header that is otherwise valid (checksum
 * included), is refused before the node is asked for memory. */
static void test_oversized_frame(void) {
    node a, c;
    int fd = intruder_setup(&a, &c);
    if (fd < 0) goto out;
    petreli_wire_header h = header(1, 1, 1, 0);
    h.frame_len = FRAME_MAX + 1;
    h.msg_len = 1u << 30;
    raw_frame(fd, h, NULL, -1);
    expect_link_lost(&a, fd, 1, "exceeds", &c);
    close(fd);
    pthread_mutex_lock(&a.rec.mu);
    CHECK(a.rec.begins == 1); /* c's frame only */
    pthread_mutex_unlock(&a.rec.mu);
out:
    node_close(&c);
    node_close(&a);
}

/* A frame that claims another source rank than the authenticated one. */
static void test_spoofed_source(void) {
    node a, c;
    int fd = intruder_setup(&a, &c);
    if (fd < 0) goto out;
    raw_frame(fd, header(2, 1, 1, 0), NULL, -1);
    expect_link_lost(&a, fd, 1, "source rank 2", &c);
    close(fd);
out:
    node_close(&c);
    node_close(&a);
}

/* The node refuses a frame (frame_begin returns NULL): the link is dropped. */
static void test_frame_refused(void) {
    node a, c;
    int fd = intruder_setup(&a, &c);
    if (fd < 0) goto out;
    pthread_mutex_lock(&a.rec.mu);
    a.rec.refuse = true;
    pthread_mutex_unlock(&a.rec.mu);
    raw_frame(fd, header(1, 1, 1, 4), "abcd", -1);
    CHECK(rec_wait(&a.rec, -1, 1, 1, -1));
    CHECK(strstr(a.rec.lost_why, "refused") != NULL);
    CHECK(raw_sees_close(fd));
    close(fd);
out:
    node_close(&c);
    node_close(&a);
}

/* A peer that closes mid-frame or between frames: on_link_lost, once. */
static void test_peer_close(void) {
    node a, b;
    bool ok = node_open(&a, 0, 3, "k");
    ok = node_open(&b, 2, 3, "k") && ok;
    if (!ok) goto out;
    int fd = raw_authenticated(&a, 1, 3, "k");
    if (fd >= 0) {
        unsigned char payload[1000] = {0};
        petreli_wire_header h = header(1, 1, 1, sizeof payload);
        unsigned char hdr[PETRELI_WIRE_HEADER];
        petreli_wire_encode(&h, hdr);
        CHECK(raw_write(fd, hdr, sizeof hdr) && raw_write(fd, payload, 500));
        close(fd);
        CHECK(rec_wait(&a.rec, -1, 1, 1, -1));
        CHECK(strstr(a.rec.lost_why, "middle of a frame") != NULL);
    }
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS)));
    CHECK_OK(send_pattern(&b, 0, 1, 1, 10, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    tcp->close(b.t);
    b.t = NULL;
    CHECK(rec_wait(&a.rec, -1, 2, 1, -1));
    CHECK(strstr(a.rec.lost_why, "connection closed by peer") != NULL);
    CHECK(!tcp->connected(a.t, 2));
    CHECK_ERR(send_pattern(&a, 2, 1, 1, 10, 100), PETREL_ERR_IO);
    CHECK(rec_lost_count(&a.rec, 1) == 1 && rec_lost_count(&a.rec, 2) == 1);
out:
    node_close(&b);
    node_close(&a);
}

/* One link per pair: a second connection claiming a linked rank is refused (after
 * authentication, with an answer that says why), and the first link keeps working. A
 * stranger claiming the linked rank is told its token is wrong. */
static void test_duplicate_link(void) {
    node a, b;
    if (!pair_open(&a, &b, "k")) goto out;
    int fd = raw_connect(a.addr);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_ERR(petreli_tcp_handshake(fd, "k", 1, 0, 2, deadline_in(WAIT_MS)), PETREL_ERR_STATE);
        CHECK(strstr(petrel_errmsg(), "already has a link") != NULL);
        close(fd);
        CHECK(rec_wait(&a.rec, -1, 0, -1, 1));
        CHECK(strstr(a.rec.rejected_why, "already has a link") != NULL);
    }
    fd = raw_connect(a.addr);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_ERR(petreli_tcp_handshake(fd, "not-k", 1, 0, 2, deadline_in(WAIT_MS)),
                  PETREL_ERR_INVALID);
        close(fd);
        CHECK(rec_wait(&a.rec, -1, 0, -1, 2));
    }
    CHECK_OK(send_pattern(&b, 0, 1, 1, 10, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    CHECK(rec_lost_count(&a.rec, 1) == 0);
out:
    node_close(&b);
    node_close(&a);
}

/* disconnect: no on_link_lost on our side, the peer sees the close, sends fail. */
static void test_disconnect(void) {
    node a, b;
    if (!pair_open(&a, &b, "k")) goto out;
    tcp->disconnect(a.t, 1);
    tcp->disconnect(a.t, 1); /* twice is harmless */
    CHECK(!tcp->connected(a.t, 1));
    CHECK(rec_wait(&b.rec, -1, 0, 1, -1));
    CHECK_ERR(send_pattern(&a, 1, 1, 1, 10, 100), PETREL_ERR_IO);
    CHECK(rec_lost_count(&a.rec, 1) == 0);
    /* The pair can link again. */
    CHECK_OK(tcp->connect(b.t, 0, a.addr, deadline_in(WAIT_MS)));
    CHECK_OK(send_pattern(&b, 0, 1, 1, 10, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    CHECK(rec_lost_count(&a.rec, 1) == 0);
out:
    node_close(&b);
    node_close(&a);
}

/* ---- opening and connecting ----------------------------------------------------------- */

static void test_inherited_listen_fd(void) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 16) == 0);
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));

    recorder rec;
    rec_init(&rec);
    petreli_transport_config cfg = {
        .rank = 0, .size = 2, .listen_fd = lfd, .token = "k", .limits = {FRAME_MAX, 1u << 30, 2}};
    petreli_transport_events ev = {.ctx = &rec,
                                   .frame_begin = rec_begin,
                                   .frame_done = rec_done,
                                   .on_link_lost = rec_lost,
                                   .on_rejected = rec_rejected};
    void *t = NULL;
    char addr[64];
    CHECK_OK(tcp->open(&t, &cfg, ev, addr, sizeof addr));
    CHECK(strcmp(addr, want) == 0);
    node b;
    if (t && node_open(&b, 1, 2, "k")) {
        CHECK_OK(tcp->connect(b.t, 0, addr, deadline_in(WAIT_MS)));
        CHECK_OK(send_pattern(&b, 0, 1, 1, 10, WAIT_MS));
        CHECK(rec_wait(&rec, 1, 0, -1, -1));
        node_close(&b);
    }
    if (t) tcp->close(t); /* closes lfd: the transport owns it */
    rec_fini(&rec);
}

static void test_connect_errors(void) {
    node b;
    if (!node_open(&b, 1, 2, "k")) return;
    /* A port nobody listens on: a closed listener's. */
    node a;
    char addr[64] = "";
    if (node_open(&a, 0, 2, "k")) {
        snprintf(addr, sizeof addr, "%s", a.addr);
        node_close(&a);
    }
    uint64_t t0 = petrel_now_ns();
    CHECK_ERR(tcp->connect(b.t, 0, addr, deadline_in(WAIT_MS)), PETREL_ERR_IO);
    CHECK((petrel_now_ns() - t0) / 1000000 < 2000);
    CHECK(strstr(petrel_errmsg(), "rank 0") != NULL);
    CHECK_ERR(tcp->connect(b.t, 0, "no-port", deadline_in(100)), PETREL_ERR_INVALID);
    CHECK_ERR(tcp->connect(b.t, 0, "example.com:80", deadline_in(100)), PETREL_ERR_INVALID);
    CHECK_ERR(tcp->connect(b.t, 0, "127.0.0.1:99999", deadline_in(100)), PETREL_ERR_INVALID);
    CHECK_ERR(tcp->connect(b.t, 1, "127.0.0.1:1", deadline_in(100)), PETREL_ERR_INVALID);
    CHECK_ERR(tcp->connect(b.t, 5, "127.0.0.1:1", deadline_in(100)), PETREL_ERR_INVALID);
    /* A listener that accepts and never answers the HELLO: the deadline holds. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof sa;
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 4) == 0);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char mute[64];
    snprintf(mute, sizeof mute, "localhost:%u", (unsigned)ntohs(sa.sin_port));
    t0 = petrel_now_ns();
    CHECK_ERR(tcp->connect(b.t, 0, mute, deadline_in(300)), PETREL_ERR_TIMEOUT);
    double ms = (double)(petrel_now_ns() - t0) / 1e6;
    CHECK(ms >= 290 && ms < 3000);
    close(lfd);
    node_close(&b);
}

/* ---- the read lease: a waiting thread reads its peer's socket (tcp_pump) ------------ */

typedef struct pumper {
    node *n;
    int peer;
    _Atomic bool stop;
    int results[3]; /* by petreli_pump_result */
} pumper;

/* Pumps as petrel_net_recv does: after the link went back to the I/O thread, waits
 * for it to deliver something before pumping again. */
static void *pump_loop(void *arg) {
    pumper *p = arg;
    while (!atomic_load(&p->stop)) {
        size_t seen = rec_count(&p->n->rec);
        petreli_pump_result r = tcp->pump(p->n->t, p->peer, 0, deadline_in(50));
        p->results[r]++;
        uint64_t until = deadline_in(50);
        while (r != PETRELI_PUMP_MESSAGE && rec_count(&p->n->rec) == seen &&
               petrel_now_ns() < until)
            sched_yield();
    }
    return NULL;
}

/* A thread pumps rank 1's link while rank 1 sends 300 messages, one at a time, one
 * in ten of a type for a handler and one in ten of two frames: every message arrives
 * once, in order and whole; the handler's are delivered by the I/O thread, others
 * by the pumping thread while it holds the link. After the pumping stops, the I/O
 * thread takes the link back. */
static void test_pump_delivers_on_the_waiting_thread(void) {
    node a, b;
    if (!pair_open(&a, &b, "k")) goto out;
    pumper p = {.n = &a, .peer = 1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, pump_loop, &p) == 0);
    usleep(20000); /* the pumper leases the link before the first frame */
    enum { N = 300, LEN = 3000 };
    unsigned char buf[LEN];
    long frames = 0;
    for (uint32_t i = 0; i < N; i++) {
        fill(buf, LEN, i, 5);
        petreli_wire_header h = header(1, i, 5, LEN);
        if (i % 10 == 3) h.type = PETREL_MSG_USER + 1;
        if (i % 10 == 7) { /* two frames of one message */
            h.frame_len = LEN / 2;
            h.flags = PETRELI_FLAG_MORE;
            struct iovec first = {buf, LEN / 2};
            CHECK_OK(tcp->send(b.t, 0, &h, &first, 1, deadline_in(WAIT_MS)));
            frames++;
            h.flags = 0;
            struct iovec rest = {buf + LEN / 2, LEN / 2};
            CHECK_OK(tcp->send(b.t, 0, &h, &rest, 1, deadline_in(WAIT_MS)));
        } else {
            struct iovec iov = {buf, LEN};
            CHECK_OK(tcp->send(b.t, 0, &h, &iov, 1, deadline_in(WAIT_MS)));
        }
        frames++;
        CHECK(rec_wait(&a.rec, frames, 0, -1, -1)); /* a receiver that keeps up */
    }
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);
    int by_pumper = 0, handler_by_pumper = 0;
    bool whole = true;
    pthread_mutex_lock(&a.rec.mu);
    CHECK(a.rec.n == (size_t)frames);
    for (size_t k = 0; k < a.rec.n; k++) {
        rec_frame *f = &a.rec.frames[k];
        bool pumped = pthread_equal(f->thread, th);
        by_pumper += pumped;
        handler_by_pumper += pumped && f->h.type != PETREL_MSG_USER;
        size_t off = f->h.id % 10 == 7 && !(f->h.flags & PETRELI_FLAG_MORE) ? LEN / 2 : 0;
        fill(buf, LEN, f->h.id, 5);
        whole = whole && memcmp(f->data, buf + off, f->h.frame_len) == 0 &&
                (k == 0 || f->h.id >= a.rec.frames[k - 1].h.id);
    }
    pthread_mutex_unlock(&a.rec.mu);
    printf("# %d of %ld frames read by the pumping thread; pump results: %d messages, %d idle, "
           "%d busy\n",
           by_pumper, frames, p.results[PETRELI_PUMP_MESSAGE], p.results[PETRELI_PUMP_IDLE],
           p.results[PETRELI_PUMP_BUSY]);
    CHECK(whole);
    CHECK(handler_by_pumper == 0);
    /* How many depends on the scheduler (about 90 % on an idle machine, half under
     * load); that the pumping thread reads at all is what is checked here. */
    CHECK(by_pumper > 0 && p.results[PETRELI_PUMP_MESSAGE] > 0);
    /* Nobody pumps now: the lease lapses and the I/O thread reads again. */
    CHECK_OK(send_pattern(&b, 0, 9, 9, 100, WAIT_MS));
    CHECK(rec_wait(&a.rec, frames + 1, 0, -1, -1));
out:
    node_close(&b);
    node_close(&a);
}

/* Pumps n's link to peer on this thread, polling for spin_ms and waiting up to
 * until_ms; tried again, up to 10 times, while the I/O thread has the link (BUSY).
 * *t0: when the last try began. */
static petreli_pump_result pump_once(node *n, int peer, int spin_ms, int until_ms, uint64_t *t0) {
    petreli_pump_result r = PETRELI_PUMP_BUSY;
    for (int i = 0; i < 10 && r == PETRELI_PUMP_BUSY; i++) {
        *t0 = petrel_now_ns();
        r = tcp->pump(n->t, peer, *t0 + (uint64_t)spin_ms * 1000000u,
                      *t0 + (uint64_t)until_ms * 1000000u);
    }
    return r;
}

/* A pump that gets nothing returns at its deadline and gives the link back. */
static void test_pump_idle(void) {
    node a, b;
    if (!pair_open(&a, &b, "k")) goto out;
    uint64_t t0;
    CHECK(pump_once(&a, 1, 5, 30, &t0) == PETRELI_PUMP_IDLE);
    uint64_t took = petrel_now_ns() - t0;
    CHECK(took >= 30000000 && took < (uint64_t)WAIT_MS * 1000000u);
    CHECK(tcp->pump(a.t, 3, 0, deadline_in(10)) == PETRELI_PUMP_BUSY); /* not a peer */
    CHECK_OK(send_pattern(&b, 0, 1, 1, 10, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
out:
    node_close(&b);
    node_close(&a);
}

/* disconnect() while a thread pumps the link: once it returns, nothing more of the
 * peer's is delivered, by the pumping thread or the I/O thread. */
static void test_pump_and_disconnect(void) {
    node a, b;
    if (!pair_open(&a, &b, "k")) goto out;
    pumper p = {.n = &a, .peer = 1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, pump_loop, &p) == 0);
    CHECK_OK(send_pattern(&b, 0, 1, 1, 100, WAIT_MS));
    CHECK(rec_wait(&a.rec, 1, 0, -1, -1));
    tcp->disconnect(a.t, 1);
    size_t seen = rec_count(&a.rec);
    (void)send_pattern(&b, 0, 2, 2, 100, 100); /* may fail: the link is closing */
    usleep(50000);
    CHECK(rec_count(&a.rec) == seen);
    CHECK(!tcp->connected(a.t, 1));
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);
    CHECK(rec_lost_count(&a.rec, 1) == 0); /* disconnect() does not report a loss */
out:
    node_close(&b);
    node_close(&a);
}

/* While a thread pumps, a broken header or a closed socket is left to the I/O thread,
 * which drops the link with the reason, as when it reads alone. */
static void pump_until_not_message(node *a, int peer, int *messages) {
    petreli_pump_result r;
    while ((r = tcp->pump(a->t, peer, 0, deadline_in(WAIT_MS))) == PETRELI_PUMP_MESSAGE)
        ++*messages;
    CHECK(r == PETRELI_PUMP_BUSY);
}

static void test_pump_leaves_failures_to_the_io_thread(void) {
    for (int kind = 0; kind < 2; kind++) {
        node a, c;
        int fd = intruder_setup(&a, &c);
        if (fd >= 0) {
            unsigned char payload[100];
            fill(payload, sizeof payload, 1, 1);
            raw_frame(fd, header(1, 1, 1, sizeof payload), payload, -1);
            if (kind == 0)
                raw_frame(fd, header(1, 1, 2, sizeof payload), payload, 13); /* checksum */
            else
                close(fd);
            int messages = 0;
            pump_until_not_message(&a, 1, &messages);
            CHECK(messages <= 1);
            CHECK(rec_wait(&a.rec, 1, 1, 1, -1));
            pthread_mutex_lock(&a.rec.mu);
            const char *want = kind == 0 ? "checksum" : "connection closed by peer";
            if (!strstr(a.rec.lost_why, want))
                printf("# link lost \"%s\", expected \"%s\"\n", a.rec.lost_why, want);
            CHECK(strstr(a.rec.lost_why, want) != NULL);
            pthread_mutex_unlock(&a.rec.mu);
            CHECK(rec_count(&a.rec) == 1);
            if (kind == 0) {
                CHECK(raw_sees_close(fd));
                close(fd);
            }
        }
        node_close(&c);
        node_close(&a);
    }
}

/* The rest of a frame and a small frame after it, written by a thread after a pause. */
typedef struct late_writer {
    int fd;
    const unsigned char *rest;
    size_t rest_len;
} late_writer;

static void *late_writer_main(void *arg) {
    late_writer *w = arg;
    usleep(50000);
    CHECK(raw_write(w->fd, w->rest, w->rest_len));
    usleep(50000); /* the big frame is read before this one comes */
    unsigned char small[PETRELI_WIRE_HEADER + 64];
    petreli_wire_header h = header(1, 2, 0, 64);
    petreli_wire_encode(&h, small);
    fill(small + PETRELI_WIRE_HEADER, 64, 2, 0);
    CHECK(raw_write(w->fd, small, sizeof small));
    return NULL;
}

/* A frame of 1 MiB that comes in three pieces with pauses, while a reader waiting in
 * the middle of a large frame sleeps until the rest of it has come (SO_RCVLOWAT, the
 * low-water mark of tcp.c): a pump that gives up midway hands the link back with the
 * mark raised, the I/O thread waits through the second piece, a second pump reads it
 * and the rest. The frame arrives whole, and so does a 64-byte frame written after it
 * was read, which only a mark back at one byte lets a reader see. */
static void test_large_frame_in_pieces(void) {
    node a;
    unsigned char *frame = NULL;
    int fd = -1;
    if (!node_open(&a, 0, 2, "k") || (fd = raw_authenticated(&a, 1, 2, "k")) < 0) goto out;
    enum { LEN = 1 << 20, FIRST = 200 << 10, SECOND = 600 << 10 };
    frame = malloc(PETRELI_WIRE_HEADER + LEN);
    petreli_wire_header h = header(1, 1, 0, LEN);
    petreli_wire_encode(&h, frame);
    fill(frame + PETRELI_WIRE_HEADER, LEN, 1, 0);
    CHECK(raw_write(fd, frame, PETRELI_WIRE_HEADER + FIRST));
    usleep(20000);
    uint64_t t0;
    CHECK(pump_once(&a, 1, 0, 30, &t0) == PETRELI_PUMP_IDLE);
    CHECK(raw_write(fd, frame + PETRELI_WIRE_HEADER + FIRST, SECOND));
    usleep(30000);
    CHECK(rec_count(&a.rec) == 0);
    late_writer w = {fd, frame + PETRELI_WIRE_HEADER + FIRST + SECOND, LEN - FIRST - SECOND};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, late_writer_main, &w) == 0);
    CHECK(pump_once(&a, 1, 0, WAIT_MS, &t0) == PETRELI_PUMP_MESSAGE);
    pthread_join(th, NULL);
    CHECK(rec_wait(&a.rec, 2, 0, -1, -1));
    pthread_mutex_lock(&a.rec.mu);
    CHECK(a.rec.n == 2);
    if (a.rec.n == 2) {
        CHECK(a.rec.frames[0].h.frame_len == LEN && matches(a.rec.frames[0].data, LEN, 1, 0));
        CHECK(a.rec.frames[1].h.frame_len == 64 && matches(a.rec.frames[1].data, 64, 2, 0));
    }
    pthread_mutex_unlock(&a.rec.mu);
out:
    if (fd >= 0) close(fd);
    free(frame);
    node_close(&a);
}

int main(void) {
    seed = check_seed(seed);
    /* The refusals tested below are logged as warnings; keep the output readable. */
    if (!getenv("PETREL_LOG")) petrel_log_set_level(PETREL_LOG_LEVEL_ERROR);
    petrel_alloc_stats before = petrel_alloc_get_stats();
    RUN(test_roundtrip_sizes);
    RUN(test_iov_gather);
    RUN_SEEDED(test_ordering_1000, seed);
    RUN(test_concurrent_senders);
    RUN(test_backpressure_timeout);
    RUN(test_echo_from_io_thread);
    RUN(test_trickle);
    RUN(test_disconnect_from_callback);
    RUN(test_wrong_token);
    RUN_SEEDED(test_bad_hellos, seed);
    RUN(test_handshake_timeout);
    RUN(test_corrupt_header_after_auth);
    RUN(test_oversized_frame);
    RUN(test_spoofed_source);
    RUN(test_frame_refused);
    RUN(test_peer_close);
    RUN(test_duplicate_link);
    RUN(test_disconnect);
    RUN(test_inherited_listen_fd);
    RUN(test_connect_errors);
    RUN(test_pump_delivers_on_the_waiting_thread);
    RUN(test_pump_idle);
    RUN(test_pump_and_disconnect);
    RUN(test_pump_leaves_failures_to_the_io_thread);
    RUN(test_large_frame_in_pieces);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
