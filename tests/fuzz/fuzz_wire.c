/*
 * libFuzzer target for everything in the net module that reads a peer's bytes: the
 * frame header decoder (wire.c), the node's reassembly and dispatch of frames into
 * messages (message.c), petrel's own protocol messages (REGISTER, TABLE, ...), both
 * sides of the TCP handshake, and the TCP transport's framing of a byte stream
 * (tcp.c). Built and run by scripts/fuzz.sh; docs/fuzz.md says what each mode covers.
 *
 * The first input byte chooses a mode and its options; the rest is the peer's bytes:
 *
 *   bits 0-1  mode: 0 decode one header, 1 a frame stream into a node, 2 the
 *             connector's handshake, 3 a connection to a real TCP transport
 *   bit 2     before decoding, rewrite each header's checksum to the right one (modes
 *             0, 1, 3), so that the fuzzer reaches the checks behind the checksum
 *   bit 3     mode 1: the node is rank 1 (the stream comes from the coordinator) rather
 *             than rank 0; mode 3: authenticate first (the harness runs the connector's
 *             handshake) rather than send the bytes as the handshake
 *   bit 4     mode 1: small limits (frames of 4 KiB, messages of 64 KiB) rather than
 *             frames of 64 KiB and messages of 1 MiB
 *   bit 5     mode 1: the stream arrives on the node's shared-memory slot
 *
 * Modes 1 and 3 drive the real node code on a node built here without joining a job:
 * a petrel_net set up field by field as petrel_net_start sets it up (node.h), with a
 * stub transport (mode 1) or the real TCP transport (mode 3) underneath, so that the
 * frame events, the protocol handlers, delivery, handlers, the mailbox and
 * petrel_net_stop all run as in a job. A started job would add threads, timers and a
 * second node whose own frames would race with the fuzzer's on the same slot.
 *
 * Allocation: this file replaces src/core/alloc.c (scripts/fuzz.sh links it instead)
 * with exact-size blocks, so that AddressSanitizer sees a read or write one byte past
 * a message (alloc.c rounds blocks up to 64 bytes, which would hide it).
 *
 * Built with -DPETREL_FUZZ_REPLAY instead of libFuzzer (CMake does, as the CTest
 * fuzz/fuzz_wire_replay), a main of its own runs the files named on the command line,
 * or else the seeds, so that the target keeps up with the net module between fuzz runs.
 *
 * Oracles besides the sanitizers: a header that decodes re-encodes to the same 48
 * bytes and still decodes under looser limits; a delivered message has the length its
 * frames stated; every frame the node sends decodes under its own limits; a
 * connection always ends (a hang aborts).
 */
#include "node.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MODE_DECODE    0
#define MODE_STREAM    1
#define MODE_CONNECTOR 2
#define MODE_TCP       3
#define OPT_FIX_CRC    0x04
#define OPT_RANK1_AUTH 0x08
#define OPT_SMALL      0x10
#define OPT_SHM_SLOT   0x20

#define JOB_SIZE    3
#define TOKEN       "fuzz-token"
#define MSG_HANDLED 40 /* a type with a handler (which answers RPC requests) */
#define WAIT_MS     10000

/* Where failed checks are reported: a copy of stderr made before the node's log lines
 * are silenced (libFuzzer's -close_fd_mask=2, or the replay main). */
static int report_fd = 2;

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dprintf(report_fd, "fuzz_wire: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ---- exact-size allocation (replaces src/core/alloc.c) ------------------------------ */

void *petrel_malloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) {
        petrel_error_set(PETREL_ERR_NOMEM, "allocation of %zu bytes failed", bytes);
        return NULL;
    }
    return p;
}

void *petrel_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = petrel_malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *petrel_realloc(void *ptr, size_t bytes) {
    void *p = petrel_malloc(bytes);
    if (!p || !ptr) return p;
    size_t old = malloc_usable_size(ptr);
    memcpy(p, ptr, old < bytes ? old : bytes);
    free(ptr);
    return p;
}

void petrel_free(void *ptr) {
    free(ptr);
}

char *petrel_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = petrel_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

petrel_alloc_stats petrel_alloc_get_stats(void) {
    return (petrel_alloc_stats){0, 0, 0};
}

void petrel_alloc_fail_after(int64_t n) {
    (void)n;
}

/* ---- helpers -------------------------------------------------------------------------- */

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Walks buf as headers and payloads by the raw frame_len field and writes the right
 * checksum into each header. */
static void fix_checksums(unsigned char *buf, size_t n) {
    for (size_t at = 0; n - at >= PETRELI_WIRE_HEADER;) {
        put32(buf + at + 40, petreli_crc32c(0, buf + at, 40));
        uint32_t len = get32(buf + at + 32);
        if (len > n - at - PETRELI_WIRE_HEADER) break;
        at += PETRELI_WIRE_HEADER + len;
    }
}

static unsigned char *copy_input(const uint8_t *data, size_t n, bool fix) {
    unsigned char *buf = malloc(n ? n : 1);
    REQUIRE(buf);
    if (n) memcpy(buf, data, n);
    if (fix) fix_checksums(buf, n);
    return buf;
}

/* ---- mode 0: one header ------------------------------------------------------------ */

static void fuzz_decode(const unsigned char *in, size_t n) {
    if (n < PETRELI_WIRE_HEADER) return;
    /* From strict to loose: a header one accepts, each later one accepts too. */
    static const petreli_wire_limits limits[] = {
        {4096, 4096, 1},
        {1u << 20, (uint64_t)1 << 30, 64},
        {UINT32_MAX, UINT64_MAX, INT32_MAX},
    };
    bool ok_before = false;
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        petreli_wire_header h;
        memset(&h, 0xa5, sizeof h);
        bool ok = petreli_wire_decode(in, &limits[i], &h) == PETREL_OK;
        REQUIRE(ok || !ok_before);
        ok_before = ok;
        if (!ok) {
            REQUIRE(petrel_errmsg()[0] != '\0'); /* a failure says which field */
            continue;
        }
        REQUIRE(h.src < (uint32_t)limits[i].size);
        REQUIRE(h.frame_len <= limits[i].frame_bytes && h.frame_len <= h.msg_len);
        REQUIRE(h.msg_len <= limits[i].max_message_bytes);
        REQUIRE((h.flags & ~PETRELI_FLAGS_KNOWN) == 0);
        unsigned char again[PETRELI_WIRE_HEADER];
        petreli_wire_encode(&h, again);
        REQUIRE(memcmp(again, in, PETRELI_WIRE_HEADER) == 0);
    }
}

/* ---- a node without a job ------------------------------------------------------------ */

/* The transport under a fuzzed node: frames the node sends are checked and dropped
 * (mode 1), or passed to the real TCP transport (mode 3). */
typedef struct fuzz_transport {
    petreli_wire_limits limits;
    void *tcp;            /* mode 3: the real transport, else NULL */
    _Atomic bool dropped; /* the node called disconnect */
} fuzz_transport;

static petrel_err stub_send(void *tp, int peer, const petreli_wire_header *h,
                            const struct iovec *iov, int iovcnt, uint64_t deadline_ns) {
    fuzz_transport *t = tp;
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++) len += iov[i].iov_len;
    REQUIRE(len == h->frame_len);
    REQUIRE(peer >= 0 && peer < t->limits.size);
    unsigned char raw[PETRELI_WIRE_HEADER];
    petreli_wire_encode(h, raw);
    petreli_wire_header back;
    REQUIRE(petreli_wire_decode(raw, &t->limits, &back) == PETREL_OK);
    REQUIRE(back.frame_len == h->frame_len && back.msg_len == h->msg_len);
    if (t->tcp) return petreli_transport_tcp.send(t->tcp, peer, h, iov, iovcnt, deadline_ns);
    return PETREL_OK;
}

static bool stub_connected(void *tp, int peer) {
    fuzz_transport *t = tp;
    return t->tcp ? petreli_transport_tcp.connected(t->tcp, peer) : true;
}

static void stub_disconnect(void *tp, int peer) {
    fuzz_transport *t = tp;
    atomic_store(&t->dropped, true);
    if (t->tcp) petreli_transport_tcp.disconnect(t->tcp, peer);
}

static void stub_close(void *tp) {
    (void)tp; /* the real transport outlives the node (mode 3) */
}

static const petreli_transport_ops stub_ops = {
    .name = "fuzz",
    .send = stub_send,
    .connected = stub_connected,
    .disconnect = stub_disconnect,
    .close = stub_close,
};

static void handled(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)ctx;
    const unsigned char *p = m->data;
    unsigned sum = 0;
    for (size_t i = 0; i < m->len; i++) sum += p[i]; /* every byte must be readable */
    (void)sum;
    if (m->rpc && petrel_net_reply(net, m, m->data, m->len < 64 ? m->len : 64) != PETREL_OK) {
        /* the peer's link may already be gone: nothing to do */
    }
}

/* A node of rank `rank` in a job of JOB_SIZE, as petrel_net_start leaves it after the
 * rendezvous, with every link through t. */
static petrel_net *node_new(int rank, const petreli_wire_limits *lim, fuzz_transport *t) {
    petrel_net *net = petrel_calloc(1, sizeof *net);
    REQUIRE(net);
    net->cfg = petrel_net_config_default();
    net->cfg.rank = rank;
    net->cfg.size = JOB_SIZE;
    net->cfg.frame_bytes = lim->frame_bytes;
    net->cfg.max_message_bytes = lim->max_message_bytes;
    net->rank = rank;
    net->size = JOB_SIZE;
    net->servers = 1;
    net->limits = *lim;
    snprintf(net->token, sizeof net->token, "%s", TOKEN);
    snprintf(net->job_id, sizeof net->job_id, "fuzz");
    pthread_mutex_init(&net->mu, NULL);
    pthread_cond_init(&net->cv, NULL);
    net->peers = petrel_calloc(JOB_SIZE, sizeof *net->peers);
    net->table = petrel_calloc(JOB_SIZE, sizeof *net->table);
    REQUIRE(net->peers && net->table);
    net->primary = (net_link){&stub_ops, t};
    net->shm = (net_link){&stub_ops, t};
    for (int i = 0; i < VIA_COUNT; i++) net->via[i] = (via){net, i};
    uint64_t now = petrel_now_ns();
    for (int r = 0; r < JOB_SIZE; r++) {
        pthread_mutex_init(&net->peers[r].send_mu, NULL);
        atomic_store(&net->peers[r].alive, true);
        atomic_store(&net->peers[r].last_seen_ns, now);
        net->peers[r].send_link = net->primary;
    }
    net->table_ready = true;
    net->go = true;
    REQUIRE(petrel_net_on(net, MSG_HANDLED, handled, NULL) == PETREL_OK);
    return net;
}

/* Takes every mailbox message (checking its length against its frames) and stops. */
static void node_free(petrel_net *net) {
    for (;;) {
        pthread_mutex_lock(&net->mu);
        queued *q = net->mail_head;
        uint8_t type = q ? q->m.type : 0;
        pthread_mutex_unlock(&net->mu);
        if (!q) break;
        petrel_msg m;
        REQUIRE(petrel_net_recv(net, PETREL_ANY_SOURCE, type, PETREL_ANY_ID, &m, 0) == PETREL_OK);
        REQUIRE(m.type == type && m.type >= PETREL_MSG_USER && (m.data || !m.len));
        const volatile unsigned char *p = m.data;
        if (m.len) (void)(p[0] + p[m.len - 1]); /* both ends are inside the block */
        petrel_msg_release(&m);
    }
    petrel_net_stop(net);
}

/* ---- mode 1: a stream of frames into the node ---------------------------------------- */

/* What a transport does with one connection's bytes (tcp.c's frame_start and
 * conn_read): header, validation, frame_begin, payload, frame_done; a broken frame
 * drops the link and reports it. */
static void fuzz_stream(const unsigned char *in, size_t n, uint8_t opt) {
    int rank = opt & OPT_RANK1_AUTH ? 1 : 0, peer = rank == 0 ? 1 : 0;
    petreli_wire_limits lim = opt & OPT_SMALL
                                  ? (petreli_wire_limits){4096, 64u << 10, JOB_SIZE}
                                  : (petreli_wire_limits){64u << 10, 1u << 20, JOB_SIZE};
    fuzz_transport t = {.limits = lim};
    petrel_net *net = node_new(rank, &lim, &t);
    void *ev = &net->via[opt & OPT_SHM_SLOT ? VIA_SHM : VIA_PRIMARY];
    const char *lost = "connection closed by peer";
    size_t at = 0;
    for (;;) {
        if (n - at < PETRELI_WIRE_HEADER) {
            if (at < n) lost = "connection closed by peer in the middle of a frame";
            break;
        }
        petreli_wire_header h;
        if (petreli_wire_decode(in + at, &lim, &h) != PETREL_OK || h.src != (uint32_t)peer) {
            lost = "protocol error: bad frame header";
            break;
        }
        at += PETRELI_WIRE_HEADER;
        unsigned char *dst = petreli_ev_frame_begin(ev, peer, &h);
        if (!dst) {
            lost = "protocol error: the node refused a frame";
            break;
        }
        if (n - at < h.frame_len) {
            if (n > at) memcpy(dst, in + at, n - at);
            lost = "connection closed by peer in the middle of a frame";
            break;
        }
        if (h.frame_len) memcpy(dst, in + at, h.frame_len);
        at += h.frame_len;
        petreli_ev_frame_done(ev, peer, &h, dst);
        if (atomic_load(&t.dropped)) break; /* the node dropped the link: no report */
    }
    if (!atomic_load(&t.dropped)) petreli_ev_link_lost(ev, peer, lost);
    node_free(net);
}

/* ---- mode 2: the connector's handshake --------------------------------------------- */

/* The input is what the acceptor answers (REPLY, then OK). */
static void fuzz_connector(const unsigned char *in, size_t n) {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(n == 0 || write(sv[1], in, n) == (ssize_t)n); /* fits the socket buffer */
    shutdown(sv[1], SHUT_WR);
    petrel_err err =
        petreli_tcp_handshake(sv[0], TOKEN, 1, 0, JOB_SIZE, petrel_now_ns() + 1000000000u);
    REQUIRE(err != PETREL_OK); /* the MAC covers a fresh random nonce */
    close(sv[0]);
    close(sv[1]);
}

/* ---- mode 3: a connection to a real TCP transport --------------------------------------- */

/* One TCP transport of rank 0 serves every mode-3 input; its events go to the node of
 * the current input. Every connection ends in on_rejected (before authentication),
 * on_link_lost, or the node's disconnect, after which the transport calls nothing
 * more for it: the harness waits for that before it frees the node. */
static struct {
    void *tcp;
    char addr[64];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    petrel_net *net; /* under mu */
    int busy;        /* callbacks running, under mu */
    unsigned lost, rejected;
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static petrel_net *srv_enter(void) {
    pthread_mutex_lock(&srv.mu);
    petrel_net *net = srv.net;
    srv.busy++;
    pthread_mutex_unlock(&srv.mu);
    REQUIRE(net); /* frames only arrive while an input runs */
    return net;
}

static void srv_leave(unsigned *counter) {
    pthread_mutex_lock(&srv.mu);
    srv.busy--;
    if (counter) ++*counter;
    pthread_cond_broadcast(&srv.cv);
    pthread_mutex_unlock(&srv.mu);
}

static void *srv_frame_begin(void *ctx, int peer, const petreli_wire_header *h) {
    (void)ctx;
    petrel_net *net = srv_enter();
    void *dst = petreli_ev_frame_begin(&net->via[VIA_PRIMARY], peer, h);
    srv_leave(NULL);
    return dst;
}

static void srv_frame_done(void *ctx, int peer, const petreli_wire_header *h, void *payload) {
    (void)ctx;
    petrel_net *net = srv_enter();
    petreli_ev_frame_done(&net->via[VIA_PRIMARY], peer, h, payload);
    srv_leave(NULL);
}

static void srv_link_lost(void *ctx, int peer, const char *why) {
    (void)ctx;
    petrel_net *net = srv_enter();
    petreli_ev_link_lost(&net->via[VIA_PRIMARY], peer, why);
    srv_leave(&srv.lost);
}

static void srv_rejected(void *ctx, const char *why) {
    (void)ctx;
    (void)why;
    pthread_mutex_lock(&srv.mu);
    srv.rejected++;
    pthread_cond_broadcast(&srv.cv);
    pthread_mutex_unlock(&srv.mu);
}

static void srv_open(void) {
    petreli_transport_config cfg = {
        .rank = 0,
        .size = JOB_SIZE,
        .listen_host = "127.0.0.1",
        .listen_port = 0,
        .listen_fd = -1,
        .token = TOKEN,
        .job_id = "fuzz",
        .limits = {4096, 64u << 10, JOB_SIZE},
    };
    petreli_transport_events ev = {.frame_begin = srv_frame_begin,
                                   .frame_done = srv_frame_done,
                                   .on_link_lost = srv_link_lost,
                                   .on_rejected = srv_rejected};
    if (petreli_transport_tcp.open(&srv.tcp, &cfg, ev, srv.addr, sizeof srv.addr) != PETREL_OK) {
        fprintf(stderr, "fuzz_wire: cannot open a TCP transport: %s\n", petrel_errmsg());
        abort();
    }
}

/* Connects from a different loopback address each time (127.1.0.1, 127.1.0.2, ...):
 * every connection ends with our FIN first, so each leaves a TIME_WAIT behind for a
 * minute, and one source address would run out of ephemeral ports within the run. */
static int srv_dial(void) {
    static unsigned next;
    unsigned k = next++ % (250u * 250u);
    struct sockaddr_in from = {.sin_family = AF_INET};
    from.sin_addr.s_addr = htonl(0x7f010000u | (k / 250 + 1) << 8 | (k % 250 + 1));
    struct sockaddr_in sa = {.sin_family = AF_INET};
    const char *colon = strrchr(srv.addr, ':');
    REQUIRE(colon);
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        dprintf(report_fd, "fuzz_wire: connect to the transport at %s: %s\n", srv.addr,
                strerror(errno));
        abort();
    }
    return fd;
}

/* Writes the input and reads what the transport answers until it closes. */
static void srv_exchange(int fd, const unsigned char *in, size_t n) {
    size_t sent = 0;
    bool wr_open = true;
    uint64_t deadline = petrel_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    for (;;) {
        if (wr_open && sent == n) {
            shutdown(fd, SHUT_WR);
            wr_open = false;
        }
        struct pollfd p = {.fd = fd, .events = (short)(POLLIN | (wr_open ? POLLOUT : 0))};
        int rc = poll(&p, 1, 100);
        REQUIRE(petrel_now_ns() < deadline); /* the transport must close a finished peer */
        if (rc <= 0) continue;
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, in + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                wr_open = false, sent = n;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            unsigned char sink[4096];
            ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return;
        }
    }
}

static void fuzz_tcp(const unsigned char *in, size_t n, uint8_t opt) {
    if (!srv.tcp) srv_open();
    petreli_wire_limits lim = {4096, 64u << 10, JOB_SIZE};
    fuzz_transport t = {.limits = lim, .tcp = srv.tcp};
    petrel_net *net = node_new(0, &lim, &t);
    pthread_mutex_lock(&srv.mu);
    srv.net = net;
    unsigned lost0 = srv.lost, rejected0 = srv.rejected;
    pthread_mutex_unlock(&srv.mu);

    int fd = srv_dial();
    bool auth = opt & OPT_RANK1_AUTH;
    if (auth) {
        petrel_err err =
            petreli_tcp_handshake(fd, TOKEN, 1, 0, JOB_SIZE, petrel_now_ns() + 5000000000u);
        if (err != PETREL_OK) {
            fprintf(stderr, "fuzz_wire: handshake with the transport: %s\n", petrel_errmsg());
            abort();
        }
    }
    srv_exchange(fd, in, n);

    uint64_t deadline = petrel_now_ns() + (uint64_t)WAIT_MS * 1000000u;
    struct timespec ts = petreli_abs_deadline(deadline);
    pthread_mutex_lock(&srv.mu);
    for (;;) {
        bool done = auth ? srv.busy == 0 && (srv.lost != lost0 || atomic_load(&t.dropped))
                         : srv.rejected != rejected0;
        if (done) break;
        REQUIRE(pthread_cond_timedwait(&srv.cv, &srv.mu, &ts) != ETIMEDOUT);
    }
    srv.net = NULL;
    pthread_mutex_unlock(&srv.mu);
    close(fd);
    /* The transport forgets rank 1 before the next input's HELLO. */
    while (petreli_transport_tcp.connected(srv.tcp, 1)) {
        REQUIRE(petrel_now_ns() < deadline);
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
    }
    node_free(net);
}

/* ---- seeds ---------------------------------------------------------------------------- */

/* Appends one frame (header and payload) to out. */
static size_t put_frame(unsigned char *out, uint8_t type, uint16_t flags, uint32_t src, uint32_t id,
                        uint64_t tag, const void *payload, uint32_t frame_len, uint32_t msg_len) {
    petreli_wire_header h = {.type = type,
                             .flags = flags,
                             .src = src,
                             .id = id,
                             .clock = 7,
                             .tag = tag,
                             .frame_len = frame_len,
                             .msg_len = msg_len};
    petreli_wire_encode(&h, out);
    if (frame_len) memcpy(out + PETRELI_WIRE_HEADER, payload, frame_len);
    return PETRELI_WIRE_HEADER + frame_len;
}

/* A whole message of len bytes, cut into frames of at most frame bytes. */
static size_t put_message(unsigned char *out, uint8_t type, uint16_t flags, uint32_t src,
                          uint64_t tag, const void *payload, uint32_t len, uint32_t frame) {
    size_t n = 0;
    uint32_t sent = 0;
    do {
        uint32_t part = len - sent < frame ? len - sent : frame;
        uint16_t more = sent + part < len ? PETRELI_FLAG_MORE : 0;
        const unsigned char *at = payload ? (const unsigned char *)payload + sent : NULL;
        n += put_frame(out + n, type, (uint16_t)(flags | more), src, 1, tag, at, part, len);
        sent += part;
    } while (sent < len);
    return n;
}

static void write_seed(const char *dir, const char *name, uint8_t mode, const unsigned char *body,
                       size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    REQUIRE(fwrite(&mode, 1, 1, f) == 1 && (n == 0 || fwrite(body, 1, n, f) == n));
    REQUIRE(fclose(f) == 0);
}

/* Valid inputs for every mode, so that the fuzzer starts past the checksums. */
static void write_seeds(const char *dir) {
    static unsigned char buf[64u << 10], text[12000];
    for (size_t i = 0; i < sizeof text; i++) text[i] = (unsigned char)('a' + i % 26);
    const char *entry = "127.0.0.1:4000\t/petrel-fuzz-1\thost-a";
    const char *table = "127.0.0.1:4000\t\thost-a\n127.0.0.1:4001\t/petrel-fuzz-1\thost-a\n"
                        "127.0.0.1:4002\t/petrel-fuzz-2\thost-b\n";
    size_t n;

    (void)put_frame(buf, 41, 0, 1, 3, 0, text, 100, 100);
    write_seed(dir, "decode-user", MODE_DECODE, buf, PETRELI_WIRE_HEADER);
    (void)put_frame(buf, 41, PETRELI_FLAG_MORE, 1, 3, 0, text, 4096, 10000);
    write_seed(dir, "decode-more", MODE_DECODE, buf, PETRELI_WIRE_HEADER);

    /* rank 0 hears from rank 1; the stream seeds ask for checksums to be fixed, so
     * that a mutated header still reaches the node */
    const uint8_t stream = MODE_STREAM | OPT_FIX_CRC;
    n = put_message(buf, 41, 0, 1, 0, text, 100, 4096);
    write_seed(dir, "stream-user", stream | OPT_SMALL, buf, n);
    n = put_message(buf, 41, 0, 1, 0, text, 60, 20);
    n += put_message(buf + n, MSG_HANDLED, 0, 1, 0, text, 30, 16);
    write_seed(dir, "stream-small-frames", stream | OPT_SMALL, buf, n);
    n = put_message(buf, 41, 0, 1, 0, text, 10000, 4096);
    n += put_message(buf + n, MSG_HANDLED, 0, 1, 0, text, 300, 4096);
    write_seed(dir, "stream-chunked", stream | OPT_SMALL, buf, n);
    n = put_message(buf, MSG_HANDLED, PETRELI_FLAG_RPC_REQ, 1, 9, text, 50, 32);
    n += put_message(buf + n, 42, PETRELI_FLAG_RPC_REPLY, 1, 9, text, 20, 4096);
    write_seed(dir, "stream-rpc", stream | OPT_SMALL, buf, n);
    n = put_message(buf, PETRELI_MSG_REGISTER, 0, 1, 0, entry, (uint32_t)strlen(entry), 4096);
    n += put_message(buf + n, PETRELI_MSG_READY, 0, 1, 0, NULL, 0, 4096);
    n += put_message(buf + n, PETRELI_MSG_HEARTBEAT, 0, 1, 0, NULL, 0, 4096);
    for (int i = 0; i < 3; i++)
        n += put_message(buf + n, PETRELI_MSG_BARRIER, 0, 1, 0, NULL, 0, 4096);
    n += put_message(buf + n, PETRELI_MSG_BYE, 0, 1, 0, NULL, 0, 4096);
    write_seed(dir, "stream-protocol-r0", stream, buf, n);
    /* rank 1 hears from the coordinator */
    n = put_message(buf, PETRELI_MSG_TABLE, 0, 0, 0, table, (uint32_t)strlen(table), 65536);
    n += put_message(buf + n, PETRELI_MSG_GO, 0, 0, 0, NULL, 0, 65536);
    n += put_message(buf + n, PETRELI_MSG_BARRIER_DONE, 0, 0, 0, NULL, 0, 65536);
    n += put_frame(buf + n, PETRELI_MSG_PEER_DEAD, 0, 0, 2, 0, NULL, 0, 0);
    write_seed(dir, "stream-protocol-r1", stream | OPT_RANK1_AUTH, buf, n);
    n = put_message(buf, 41, 0, 0, 0, text, 70, 30);
    write_seed(dir, "stream-shm-slot", stream | OPT_RANK1_AUTH | OPT_SHM_SLOT, buf, n);

    /* the acceptor's answer to the connector: REPLY (the MAC cannot match) and OK */
    memset(buf, 0, 88);
    memcpy(buf, "PTRLHELO", 8);
    put32(buf + 8, 1);
    put32(buf + 12, 0);
    memcpy(buf + 80, "PTRLOKAY", 8);
    write_seed(dir, "connector-reply", MODE_CONNECTOR, buf, 88);

    /* a HELLO as rank 1 of 3, then a proof */
    memset(buf, 0, 84);
    memcpy(buf, "PTRLHELO", 8);
    put32(buf + 8, 1);
    put32(buf + 12, 1);
    put32(buf + 16, JOB_SIZE);
    write_seed(dir, "tcp-hello", MODE_TCP, buf, 84);
    /* authenticated: frames over the socket */
    n = put_message(buf, 41, 0, 1, 0, text, 100, 40);
    n += put_message(buf + n, MSG_HANDLED, PETRELI_FLAG_RPC_REQ, 1, 5, text, 100, 4096);
    for (int i = 0; i < 3; i++)
        n += put_message(buf + n, PETRELI_MSG_BARRIER, 0, 1, 0, NULL, 0, 4096);
    write_seed(dir, "tcp-frames", MODE_TCP | OPT_FIX_CRC | OPT_RANK1_AUTH, buf, n);
}

/* ---- entry points ------------------------------------------------------------------------ */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    petrel_log_set_level(PETREL_LOG_LEVEL_ERROR);
    int fd = dup(2);
    if (fd >= 0) report_fd = fd;
    const char *seeds = getenv("PETREL_FUZZ_WRITE_SEEDS");
    if (seeds) {
        write_seeds(seeds);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t opt = data[0];
    unsigned char *in =
        copy_input(data + 1, size - 1, (opt & 3) != MODE_CONNECTOR && (opt & OPT_FIX_CRC));
    size_t n = size - 1;
    switch (opt & 3) {
    case MODE_DECODE:
        fuzz_decode(in, n);
        break;
    case MODE_STREAM:
        fuzz_stream(in, n, opt);
        break;
    case MODE_CONNECTOR:
        fuzz_connector(in, n);
        break;
    case MODE_TCP:
        fuzz_tcp(in, n, opt);
        break;
    }
    free(in);
    return 0;
}

#ifdef PETREL_FUZZ_REPLAY
static size_t replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    static uint8_t buf[1u << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 1;
}

/* Runs each file named, or, with none, every seed (written to a temporary directory). */
int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    FILE *quiet = freopen("/dev/null", "w", stderr); /* every input ends a link: log lines */
    REQUIRE(quiet);
    size_t runs = 0;
    for (int i = 1; i < argc; i++) runs += replay_file(argv[i]);
    if (argc < 2) {
        char dir[] = "/tmp/petrel-fuzz-XXXXXX";
        REQUIRE(mkdtemp(dir));
        write_seeds(dir);
        DIR *d = opendir(dir);
        REQUIRE(d);
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            runs += replay_file(path);
            remove(path);
        }
        closedir(d);
        rmdir(dir);
    }
    printf("ok - fuzz_wire_replay (%zu inputs)\n1 passed, 0 failed\n", runs);
    return 0;
}
#endif
