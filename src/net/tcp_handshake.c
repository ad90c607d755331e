/*
 * The token handshake of the TCP transport (tcp.c), both sides: the acceptor's as a
 * non-blocking state machine that the I/O thread runs on accepted connections
 * (accept, HELLO, REPLY, PROOF, ANSWER, the handshake timeout), and the connector's,
 * blocking in the thread that calls connect().
 *
 * Connect-time handshake. The connector (the rank the node core picks to dial)
 * speaks first; all integers are little-endian u32; nonces are 32 bytes from
 * getrandom; MAC = HMAC-SHA-256 keyed with the job token (NULL counts as "").
 *
 *   1. HELLO, connector -> acceptor, 52 bytes
 *      offset  width  field
 *      0       8      magic: the bytes "PTRLHELO"
 *      8       4      handshake version: 1
 *      12      4      connector's rank
 *      16      4      job size
 *      20      32     Nc, the connector's nonce
 *   2. REPLY, acceptor -> connector, 80 bytes
 *      0       8      magic: the bytes "PTRLHELO"
 *      8       4      handshake version: 1
 *      12      4      acceptor's rank
 *      16      32     Na, the acceptor's nonce
 *      48      32     MAC("acceptor" | Nc | Na | connector rank | acceptor rank | size)
 *   3. PROOF, connector -> acceptor, 32 bytes
 *      0       32     MAC("connector" | Na | Nc | connector rank | acceptor rank | size)
 *   4. ANSWER, acceptor -> connector, 8 bytes
 *      0       8      "PTRLOKAY": the acceptor registered the link, frames may follow;
 *                     "PTRLDUPL": refused, the pair already has a link
 *
 * The labels ("acceptor" is 8 bytes, "connector" 9, no terminator) keep one side's
 * MAC from being reflected as the other's; each side's fresh nonce keeps an old
 * MAC from being replayed. The acceptor checks that the pair has no link yet only
 * after the proof, so that a stranger who claims a linked rank is still told that
 * its token is wrong. The acceptor reads exactly 52 and then 32 bytes before
 * the connector is authenticated, so an unauthenticated peer costs at most one
 * small connection record, and it is closed after the handshake timeout (5 s). The
 * token proves membership in the job at connect time; it does not encrypt or sign
 * the frames that follow (an attacker on the path could still tamper with them).
 */
#include "tcp_impl.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define HS_MAGIC       "PTRLHELO"
#define HS_OK          "PTRLOKAY"
#define HS_DUPLICATE   "PTRLDUPL"
#define HS_VERSION     1
#define REPLY_BYTES    80
#define PROOF_BYTES    32
#define OK_BYTES       8
#define MAX_HANDSHAKES 128 /* connections allowed in the handshake at once */
/* The HELLO's 52 bytes are PETRELI_TCP_HELLO_BYTES (tcp_impl.h): a connection holds them. */

static _Atomic uint32_t handshake_timeout_ms = 5000;

void petreli_tcp_set_handshake_timeout_ms(uint32_t ms) {
    atomic_store(&handshake_timeout_ms, ms);
}

/* ---- small helpers ------------------------------------------------------------------ */

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* MAC(label | n1 | n2 | connector rank | acceptor rank | size), see the table above. */
static void hs_mac(const void *token, size_t token_len, const char *label,
                   const unsigned char n1[32], const unsigned char n2[32], uint32_t crank,
                   uint32_t arank, uint32_t size, unsigned char out[32]) {
    unsigned char m[9 + 32 + 32 + 12];
    size_t len = strlen(label);
    memcpy(m, label, len);
    memcpy(m + len, n1, 32);
    memcpy(m + len + 32, n2, 32);
    put32(m + len + 64, crank);
    put32(m + len + 68, arank);
    put32(m + len + 72, size);
    petreli_hmac_sha256(token, token_len, m, len + 76, out);
}

static void hs_list_remove(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    if (t->hs_tail == c) t->hs_tail = c->prev;
    petreli_tcp_list_remove(&t->hs_list, c);
    t->handshakes--;
}

/* ---- the acceptor's handshake (I/O thread) -------------------------------------- */

/* Closes a connection that has not been authenticated and tells the node. */
static bool reject(petreli_tcp_transport *t, petreli_tcp_conn *c, const char *fmt, ...)
    PETREL_PRINTF(3, 4);
static bool reject(petreli_tcp_transport *t, petreli_tcp_conn *c, const char *fmt, ...) {
    char why[256], msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "connection from %s: %s", c->from, why);
    PETREL_LOG_WARN("net", "tcp: refused %s", msg);
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    hs_list_remove(t, c);
    petreli_tcp_conn_unref(t, c);
    if (t->ev.on_rejected) t->ev.on_rejected(t->ev.ctx, msg);
    return false;
}

/* Writes a handshake message on a connection that has just been read from: it is
 * small and the socket's send buffer is empty, so anything short is a failure. */
static bool hs_write(int fd, const void *buf, size_t len) {
    ssize_t rc;
    do rc = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (rc < 0 && errno == EINTR);
    return rc == (ssize_t)len;
}

/* False when the connection was refused (and freed). */
static bool accept_hello(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    const unsigned char *m = c->hs;
    if (memcmp(m, HS_MAGIC, 8) != 0)
        return reject(t, c, "not a petrel connection (bad handshake magic)");
    uint32_t version = get32(m + 8), rank = get32(m + 12), size = get32(m + 16);
    if (version != HS_VERSION)
        return reject(t, c, "handshake version %u, this petrel speaks %u", version, HS_VERSION);
    if (size != (uint32_t)t->size)
        return reject(t, c, "job of %u nodes, this job has %d", size, t->size);
    if (rank >= (uint32_t)t->size || rank == (uint32_t)t->rank)
        return reject(t, c, "rank %u is not a peer of rank %d in a job of %d", rank, t->rank,
                      t->size);
    c->peer = (int)rank;
    memcpy(c->nc, m + 20, 32);
    unsigned char reply[REPLY_BYTES];
    memcpy(reply, HS_MAGIC, 8);
    put32(reply + 8, HS_VERSION);
    put32(reply + 12, (uint32_t)t->rank);
    if (petreli_random_bytes(c->na, 32) != PETREL_OK)
        return reject(t, c, "no random nonce: %s", petrel_errmsg());
    memcpy(reply + 16, c->na, 32);
    hs_mac(t->token, t->token_len, "acceptor", c->nc, c->na, rank, (uint32_t)t->rank,
           (uint32_t)t->size, reply + 48);
    if (!hs_write(c->fd, reply, sizeof reply))
        return reject(t, c, "cannot send the handshake reply: %s", strerror(errno));
    c->state = PETRELI_TCP_CONN_PROOF;
    c->hs_have = 0;
    return true;
}

static bool accept_proof(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    unsigned char want[32];
    hs_mac(t->token, t->token_len, "connector", c->na, c->nc, (uint32_t)c->peer, (uint32_t)t->rank,
           (uint32_t)t->size, want);
    if (!petreli_equal_ct(want, c->hs, 32))
        return reject(t, c, "rank %d failed authentication (the job tokens differ)", c->peer);
    if (!(c->rbuf = petrel_malloc(PETRELI_TCP_RBUF_BYTES))) return reject(t, c, "out of memory");
    pthread_mutex_lock(&t->mu);
    bool dup = t->links[c->peer] != NULL;
    if (!dup) t->links[c->peer] = c;
    pthread_mutex_unlock(&t->mu);
    if (dup) {
        /* The peer is authenticated: tell it why, so that it does not retry. */
        (void)hs_write(c->fd, HS_DUPLICATE, OK_BYTES);
        return reject(t, c, "rank %d already has a link (a second process with that rank?)",
                      c->peer);
    }
    /* Registered before OK goes out: when connect() returns on the other side, both
     * ends see the link. */
    hs_list_remove(t, c);
    petreli_tcp_list_push(&t->up_list, c);
    c->state = PETRELI_TCP_CONN_UP;
    if (!hs_write(c->fd, HS_OK, OK_BYTES)) {
        /* Treated like any broken link below, on the next event. */
        shutdown(c->fd, SHUT_RDWR);
    }
    PETREL_LOG_DEBUG("net", "tcp: rank %d connected from %s", c->peer, c->from);
    return true;
}

/* Reads the fixed-size HELLO or PROOF, never more. */
bool petreli_tcp_handshake_read(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    size_t need = c->state == PETRELI_TCP_CONN_HELLO ? PETRELI_TCP_HELLO_BYTES : PROOF_BYTES;
    while (c->hs_have < need) {
        ssize_t r = recv(c->fd, c->hs + c->hs_have, need - c->hs_have, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            return reject(t, c, "read during the handshake: %s", strerror(errno));
        }
        if (r == 0)
            return reject(t, c,
                          c->state == PETRELI_TCP_CONN_HELLO
                              ? "closed before a complete HELLO (%zu of %d bytes)"
                              : "closed during the handshake after %zu of %d bytes of its proof "
                                "(it may have refused our token)",
                          c->hs_have, (int)need);
        c->hs_have += (size_t)r;
    }
    return c->state == PETRELI_TCP_CONN_HELLO ? accept_hello(t, c) : accept_proof(t, c);
}

void petreli_tcp_accept_all(petreli_tcp_transport *t) {
    for (;;) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        int fd = accept4(t->listen_fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            /* Out of file descriptors (or memory): stop accepting for a moment rather
             * than spin on a listening socket that stays readable. */
            PETREL_LOG_WARN("net", "tcp: accept: %s; pausing for 100 ms", strerror(errno));
            epoll_ctl(t->epfd, EPOLL_CTL_DEL, t->listen_fd, NULL);
            t->listen_rearm_ns = petrel_now_ns() + 100000000u;
            return;
        }
        char from[PETRELI_TCP_FROM_LEN];
        petreli_tcp_format_addr(&sa, from, sizeof from);
        if (t->handshakes >= MAX_HANDSHAKES) {
            close(fd);
            char msg[128];
            snprintf(msg, sizeof msg, "connection from %s: more than %d handshakes in progress",
                     from, MAX_HANDSHAKES);
            PETREL_LOG_WARN("net", "tcp: refused %s", msg);
            if (t->ev.on_rejected) t->ev.on_rejected(t->ev.ctx, msg);
            continue;
        }
        petreli_tcp_tune_socket(fd);
        petreli_tcp_conn *c = petreli_tcp_conn_new(fd, -1, PETRELI_TCP_CONN_HELLO);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (!c || epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            PETREL_LOG_WARN("net", "tcp: dropped connection from %s: %s", from,
                            c ? strerror(errno) : "out of memory");
            if (c)
                petreli_tcp_conn_free(c);
            else
                close(fd);
            continue;
        }
        memcpy(c->from, from, sizeof from);
        c->hs_deadline_ns =
            petrel_now_ns() + (uint64_t)atomic_load(&handshake_timeout_ms) * 1000000u;
        /* appended: the list stays in deadline order */
        c->prev = t->hs_tail;
        c->next = NULL;
        if (t->hs_tail)
            t->hs_tail->next = c;
        else
            t->hs_list = c;
        t->hs_tail = c;
        t->handshakes++;
    }
}

void petreli_tcp_expire_handshakes(petreli_tcp_transport *t) {
    uint64_t now = petrel_now_ns();
    while (t->hs_list && t->hs_list->hs_deadline_ns <= now)
        reject(t, t->hs_list, "no complete handshake within %u ms",
               (unsigned)atomic_load(&handshake_timeout_ms));
}

/* ---- the connector's handshake ---------------------------------------------------- */

static petrel_err write_all(int fd, const void *buf, size_t len, uint64_t deadline_ns,
                            const char *what) {
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        int e = r < 0 ? errno : EIO;
        if (e == EINTR) continue;
        if (e != EAGAIN && e != EWOULDBLOCK)
            return petrel_error_set(PETREL_ERR_IO, "sending %s: %s", what, strerror(e));
        int rc = petreli_tcp_wait_fd(fd, POLLOUT, deadline_ns);
        if (rc == ETIMEDOUT)
            return petrel_error_set(PETREL_ERR_TIMEOUT, "sending %s: timed out", what);
        if (rc) return petrel_error_set(PETREL_ERR_IO, "sending %s: %s", what, strerror(rc));
    }
    return PETREL_OK;
}

static petrel_err read_all(int fd, void *buf, size_t len, uint64_t deadline_ns, const char *what) {
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = recv(fd, p, len, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r == 0)
            return petrel_error_set(PETREL_ERR_IO, "the peer closed the connection before %s",
                                    what);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return petrel_error_set(PETREL_ERR_IO, "reading %s: %s", what, strerror(errno));
        int rc = petreli_tcp_wait_fd(fd, POLLIN, deadline_ns);
        if (rc == ETIMEDOUT)
            return petrel_error_set(PETREL_ERR_TIMEOUT, "no %s before the deadline", what);
        if (rc) return petrel_error_set(PETREL_ERR_IO, "reading %s: %s", what, strerror(rc));
    }
    return PETREL_OK;
}

petrel_err petreli_tcp_handshake(int fd, const char *token, int rank, int peer, int size,
                                 uint64_t deadline_ns) {
    if (!token) token = "";
    size_t token_len = strlen(token);
    unsigned char hello[PETRELI_TCP_HELLO_BYTES], reply[REPLY_BYTES], proof[PROOF_BYTES],
        ok[OK_BYTES];
    unsigned char nc[32];
    petrel_err err = petreli_random_bytes(nc, sizeof nc);
    if (err != PETREL_OK) return err;
    memcpy(hello, HS_MAGIC, 8);
    put32(hello + 8, HS_VERSION);
    put32(hello + 12, (uint32_t)rank);
    put32(hello + 16, (uint32_t)size);
    memcpy(hello + 20, nc, 32);
    if ((err = write_all(fd, hello, sizeof hello, deadline_ns, "the handshake HELLO")) ||
        (err = read_all(fd, reply, sizeof reply, deadline_ns, "the handshake reply")))
        return err;
    if (memcmp(reply, HS_MAGIC, 8) != 0 || get32(reply + 8) != HS_VERSION)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "the handshake reply is not petrel's (magic or version differ)");
    if (get32(reply + 12) != (uint32_t)peer)
        return petrel_error_set(PETREL_ERR_INVALID, "expected rank %d, reached rank %u", peer,
                                get32(reply + 12));
    unsigned char want[32];
    hs_mac(token, token_len, "acceptor", nc, reply + 16, (uint32_t)rank, (uint32_t)peer,
           (uint32_t)size, want);
    if (!petreli_equal_ct(want, reply + 48, 32))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "rank %d failed authentication (the job tokens differ)", peer);
    hs_mac(token, token_len, "connector", reply + 16, nc, (uint32_t)rank, (uint32_t)peer,
           (uint32_t)size, proof);
    if ((err = write_all(fd, proof, sizeof proof, deadline_ns, "the handshake proof"))) return err;
    if ((err = read_all(fd, ok, sizeof ok, deadline_ns, "the handshake answer"))) return err;
    if (memcmp(ok, HS_DUPLICATE, OK_BYTES) == 0)
        return petrel_error_set(PETREL_ERR_STATE,
                                "rank %d already has a link from rank %d (a second process with "
                                "this rank?)",
                                peer, rank);
    if (memcmp(ok, HS_OK, OK_BYTES) != 0)
        return petrel_error_set(PETREL_ERR_FORMAT, "the handshake answer is malformed");
    return PETREL_OK;
}
