/*
 * The TCP transport: one socket per pair of ranks, authenticated by the job token
 * before any frame, then a stream of frames (wire.c's 48-byte header + payload).
 * This file holds the transport itself: connections, receiving and sending frames,
 * the I/O thread, connect, open and close. The token handshake that authenticates
 * a connection, both sides, and its field table are in tcp_handshake.c; the
 * objects the two files share, and the locks that guard them, are in tcp_impl.h.
 *
 * Threads. One I/O thread per transport runs epoll (level-triggered) over the
 * listening socket, an eventfd and every connection: it accepts, runs the
 * acceptor's handshakes as a non-blocking state machine, and reads frames into the
 * buffers frame_begin returns. Payloads are read straight into those buffers; only
 * the bytes that arrive in one read with a header (at most 4 KiB + 256: small frames,
 * the start of a large one) pass through a per-connection read-ahead buffer, which
 * turns a stream of small frames into one read for many (it took a 4 KiB ping-pong
 * between two I/O threads from 1.7x to 1.2x a plain socket pair's round trip; 16 KiB
 * was no faster at 64 KiB messages and slower on round trips).
 * connect() does the connector's handshake blocking in the calling thread and then
 * hands the socket to the I/O thread. A thread that waits for a message from one
 * peer may read that peer's socket itself instead (the read lease, tcp_pump).
 *
 * Sending. send() writes from the caller's thread, header and caller's iov in one sendmsg,
 * without copying; frames to one peer are serialized by the connection's `sending`
 * flag. When the kernel's socket buffer is full a sender waits in poll() until its
 * deadline. If the deadline passes after part of a frame was written, the rest is
 * copied to the connection's `pending` buffer and written by the I/O thread (or the
 * next sender) when the socket drains, so a stream is never left with half a frame;
 * that costs at most one frame per connection.
 */
#include "tcp_impl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUDGET   (8 << 20)   /* bytes read from one connection per wakeup (fairness) */
#define LOWAT_MIN     (128 << 10) /* a frame owing more than this wakes its reader late */
#define LOWAT_MAX     (1 << 20)   /* ... once this much of it has come (a default frame) */
#define MAX_IOV       16          /* header + the caller's pieces */
#define SOCKBUF_BYTES 0           /* SO_SNDBUF/SO_RCVBUF; 0 keeps the kernel's autotuning */

/* Which transport's I/O thread this thread is (NULL on other threads). */
static _Thread_local petreli_tcp_transport *io_thread_of;

/* epoll data for the two sockets that are not connections */
static char mark_listen, mark_wake;

/* ---- small helpers ------------------------------------------------------------------ */

/* Milliseconds from now until deadline, rounded up, for poll(); 0 when passed. */
static int ms_until(uint64_t deadline_ns) {
    uint64_t now = petrel_now_ns();
    if (now >= deadline_ns) return 0;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* ns as a timespec: a CLOCK_MONOTONIC time, or a span. */
static struct timespec mono_ts(uint64_t ns) {
    if (ns > (uint64_t)INT64_MAX) ns = (uint64_t)INT64_MAX;
    return (struct timespec){.tv_sec = (time_t)(ns / 1000000000u),
                             .tv_nsec = (long)(ns % 1000000000u)};
}

/* Waits until fd has one of events or deadline passes: 0, ETIMEDOUT, or an errno. */
int petreli_tcp_wait_fd(int fd, short events, uint64_t deadline_ns) {
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, ms_until(deadline_ns));
        if (rc > 0) return 0;
        if (rc == 0) {
            if (petrel_now_ns() >= deadline_ns) return ETIMEDOUT;
            continue;
        }
        if (errno != EINTR) return errno;
    }
}

/* "host:port" with a numeric IPv4 host or "localhost". */
static petrel_err parse_addr(const char *addr, struct sockaddr_in *out) {
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || colon == addr || (size_t)(colon - addr) >= 64)
        return petrel_error_set(PETREL_ERR_INVALID, "address \"%s\" is not host:port",
                                addr ? addr : "(null)");
    char host[64];
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
        return petrel_error_set(PETREL_ERR_INVALID, "address \"%s\": bad port", addr);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "address \"%s\": host must be a numeric IPv4 address or localhost",
                                addr);
    *out = sa;
    return PETREL_OK;
}

void petreli_tcp_format_addr(const struct sockaddr_in *sa, char *out, size_t size) {
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(out, size, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

/* Options of every connection: no Nagle delay (frames are whole writes already). */
void petreli_tcp_tune_socket(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#if SOCKBUF_BYTES > 0
    int buf = SOCKBUF_BYTES;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
#endif
}

/* ---- connections --------------------------------------------------------------- */

petreli_tcp_conn *petreli_tcp_conn_new(int fd, int peer, petreli_tcp_conn_state state) {
    petreli_tcp_conn *c = petrel_calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&c->scv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        petrel_free(c);
        petrel_error_set(PETREL_ERR_NOMEM, "pthread_cond_init: %s", strerror(rc));
        return NULL;
    }
    pthread_mutex_init(&c->smu, NULL);
    c->fd = fd;
    c->peer = peer;
    c->state = state;
    c->refs = 1;
    c->rcvlowat = 1;
    if (state == PETRELI_TCP_CONN_UP && !(c->rbuf = petrel_malloc(PETRELI_TCP_RBUF_BYTES))) {
        pthread_mutex_destroy(&c->smu);
        pthread_cond_destroy(&c->scv);
        petrel_free(c);
        return NULL; /* fd stays the caller's */
    }
    return c;
}

void petreli_tcp_conn_free(petreli_tcp_conn *c) {
    close(c->fd);
    petrel_free(c->rbuf);
    petrel_free(c->pending);
    pthread_mutex_destroy(&c->smu);
    pthread_cond_destroy(&c->scv);
    petrel_free(c);
}

void petreli_tcp_conn_unref(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    pthread_mutex_lock(&t->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&t->mu);
    if (left == 0) petreli_tcp_conn_free(c);
}

void petreli_tcp_list_push(petreli_tcp_conn **head, petreli_tcp_conn *c) {
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
}

void petreli_tcp_list_remove(petreli_tcp_conn **head, petreli_tcp_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void wake(petreli_tcp_transport *t) {
    uint64_t one = 1;
    ssize_t rc;
    do rc = write(t->wake_fd, &one, sizeof one);
    while (rc < 0 && errno == EINTR);
}

/* ---- receiving frames (I/O thread) ----------------------------------------------- */

static bool lease_set(petreli_tcp_transport *t, petreli_tcp_conn *c, bool leased);

/* Forgets an authenticated connection; tells the node unless disconnect() asked. */
static bool conn_drop(petreli_tcp_transport *t, petreli_tcp_conn *c, const char *fmt, ...)
    PETREL_PRINTF(3, 4);
static bool conn_drop(petreli_tcp_transport *t, petreli_tcp_conn *c, const char *fmt, ...) {
    pthread_mutex_lock(&t->mu);
    bool was_link = t->links[c->peer] == c;
    if (was_link) t->links[c->peer] = NULL;
    pthread_mutex_unlock(&t->mu);
    if (atomic_exchange(&c->closing, true)) atomic_fetch_sub(&t->closing_count, 1);
    (void)lease_set(t, c, false);
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    /* Wakes a sender blocked in poll on this socket: its next write fails. */
    shutdown(c->fd, SHUT_RDWR);
    petreli_tcp_list_remove(&t->up_list, c);
    int peer = c->peer;
    petreli_tcp_conn_unref(t, c);
    if (was_link) {
        char why[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        /* A clean close is how peers leave (the node knows whether it said BYE);
         * anything else is worth a warning. */
        if (strcmp(why, "connection closed by peer") == 0)
            PETREL_LOG_INFO("net", "tcp: lost the link to rank %d: %s", peer, why);
        else
            PETREL_LOG_WARN("net", "tcp: lost the link to rank %d: %s", peer, why);
        if (t->ev.on_link_lost) t->ev.on_link_lost(t->ev.ctx, peer, why);
    }
    return false;
}

/* A whole header is at c->rbuf + c->rb_off: validate it and ask the node where the
 * payload goes. False when the connection was dropped, or for a pump, when the
 * frame is not the pump's to read (it stays in the read-ahead for the I/O thread,
 * which drops the connection if the header is bad). */
static bool frame_start(petreli_tcp_transport *t, petreli_tcp_conn *c, bool pump) {
    petreli_wire_header h;
    const unsigned char *hdr = c->rbuf + c->rb_off;
    bool valid = petreli_wire_decode(hdr, &t->limits, &h) == PETREL_OK;
    if (pump && (!valid || h.src != (uint32_t)c->peer || !t->ev.may_pump ||
                 !t->ev.may_pump(t->ev.ctx, c->peer, &h) || atomic_load(&c->closing)))
        return false;
    c->rb_off += PETRELI_WIRE_HEADER;
    if (!valid)
        return conn_drop(t, c, "protocol error: bad frame header from rank %d: %s", c->peer,
                         petrel_errmsg());
    if (h.src != (uint32_t)c->peer)
        return conn_drop(t, c, "protocol error: a frame from source rank %u on the link of rank %d",
                         h.src, c->peer);
    void *dst = t->ev.frame_begin(t->ev.ctx, c->peer, &h);
    if (pump && !dst) { /* the I/O thread asks again, and drops the connection */
        c->rb_off -= PETRELI_WIRE_HEADER;
        return false;
    }
    if (atomic_load(&c->closing)) return conn_drop(t, c, "disconnected");
    if (!dst)
        return conn_drop(t, c,
                         "protocol error: the node refused a frame of type %u (%u of %u bytes)",
                         h.type, h.frame_len, h.msg_len);
    c->h = h;
    c->payload = dst;
    c->payload_have = 0;
    c->in_frame = true;
    return true;
}

/* One read of the socket into iov: the bytes read, 0 when there were none (EAGAIN),
 * or -1 when the connection was dropped (for a pump: when it failed; the I/O thread
 * reads the end of the stream again and drops it, a reset then reading as a close). *drained is set
 * after a short read or when this wakeup's budget is spent: the caller then consumes what it has
 * and stops (level-triggered epoll calls again while bytes are waiting). */
static ssize_t conn_recv(petreli_tcp_transport *t, petreli_tcp_conn *c, struct iovec *iov, int n,
                         bool *drained, size_t *budget, bool pump) {
    size_t want = iov[0].iov_len + (n > 1 ? iov[1].iov_len : 0);
    for (;;) {
        ssize_t r = readv(c->fd, iov, n);
        if (r > 0) {
            if ((size_t)r < want || (size_t)r >= *budget) *drained = true;
            *budget -= (size_t)r < *budget ? (size_t)r : *budget;
            return r;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (pump) return -1;
        bool mid = c->in_frame || c->rb_off < c->rb_len;
        conn_drop(t, c, "%s",
                  r < 0 ? strerror(errno)
                  : mid ? "connection closed by peer in the middle of a frame"
                        : "connection closed by peer");
        return -1;
    }
}

/* How conn_read stopped. */
typedef enum read_end {
    READ_AGAIN,    /* the socket is drained, or the wakeup's budget spent */
    READ_DROPPED,  /* the connection was dropped */
    READ_MESSAGE,  /* pump: the last frame of a message was delivered */
    READ_HANDBACK, /* pump: what comes next is the I/O thread's to read */
} read_end;

/* Reads frames until the socket is drained or this wakeup's budget is spent; a
 * pump (tcp_pump's thread) reads until a message is complete instead, and leaves
 * anything that is not its to read where it is. Payloads are read straight into the
 * node's buffers; each of those reads also fills the read-ahead buffer with what
 * follows (the next headers, small payloads), so that a stream of small frames
 * costs one read for many frames, and a large frame is copied at most
 * PETRELI_TCP_RBUF_BYTES of it. */
static read_end read_frames(petreli_tcp_transport *t, petreli_tcp_conn *c, bool pump) {
    read_end failed = pump ? READ_HANDBACK : READ_DROPPED;
    size_t budget = pump ? SIZE_MAX : READ_BUDGET;
    bool drained = false;
    for (;;) {
        size_t avail = c->rb_len - c->rb_off;
        if (c->in_frame) {
            size_t need = c->h.frame_len - c->payload_have;
            if (avail > 0) {
                size_t k = avail < need ? avail : need;
                memcpy(c->payload + c->payload_have, c->rbuf + c->rb_off, k);
                c->rb_off += k;
                c->payload_have += k;
            } else if (need > 0) {
                if (drained) return READ_AGAIN;
                struct iovec iov[2] = {{c->payload + c->payload_have, need},
                                       {c->rbuf, PETRELI_TCP_RBUF_BYTES}};
                ssize_t r = conn_recv(t, c, iov, 2, &drained, &budget, pump);
                if (r <= 0) return r == 0 ? READ_AGAIN : failed;
                size_t k = (size_t)r < need ? (size_t)r : need;
                c->payload_have += k;
                c->rb_off = 0;
                c->rb_len = (size_t)r - k;
            }
            if (c->payload_have == c->h.frame_len) {
                c->in_frame = false;
                t->ev.frame_done(t->ev.ctx, c->peer, &c->h, c->payload);
                if (atomic_load(&c->closing)) {
                    if (pump) return READ_HANDBACK;
                    conn_drop(t, c, "disconnected");
                    return READ_DROPPED;
                }
                if (pump && !(c->h.flags & PETRELI_FLAG_MORE)) return READ_MESSAGE;
            }
        } else if (avail >= PETRELI_WIRE_HEADER) {
            if (!frame_start(t, c, pump)) return failed;
        } else {
            if (drained) return READ_AGAIN;
            memmove(c->rbuf, c->rbuf + c->rb_off, avail);
            c->rb_off = 0;
            c->rb_len = avail;
            struct iovec iov = {c->rbuf + avail, PETRELI_TCP_RBUF_BYTES - avail};
            ssize_t r = conn_recv(t, c, &iov, 1, &drained, &budget, pump);
            if (r <= 0) return r == 0 ? READ_AGAIN : failed;
            c->rb_len += (size_t)r;
        }
    }
}

/* Sets how much the socket must hold before its reader (epoll, or a pump's ppoll) is
 * woken. Loopback delivers a stream in segments of up to 64 KiB, and a reader woken for
 * each one takes the CPU from the sender about as often: on two cores a stream of 1 to
 * 4 MiB messages ran at 0.9 of a blocking socket's speed. So while a reader waits in the
 * middle of a large frame it sleeps until the rest of the frame (up to LOWAT_MAX) has
 * come: a few wake-ups per frame. The mark never exceeds what the frame still owes, so
 * the wake-up always comes (a closed or failed socket wakes the reader too), and only
 * a reader changes it, under io_mu, each time it stops. */
static void wake_when(petreli_tcp_conn *c, bool waiting) {
    size_t owed = c->in_frame ? c->h.frame_len - c->payload_have : 0;
    int want = waiting && owed > LOWAT_MIN ? (int)(owed < LOWAT_MAX ? owed : LOWAT_MAX) : 1;
    if (want != c->rcvlowat && setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) == 0)
        c->rcvlowat = want;
}

/* read_frames, and the low-water mark for the next wait. */
static read_end conn_read(petreli_tcp_transport *t, petreli_tcp_conn *c, bool pump) {
    read_end e = read_frames(t, c, pump);
    if (e != READ_DROPPED) wake_when(c, e == READ_AGAIN);
    return e;
}

/* ---- sending ------------------------------------------------------------------- */

/* The events the I/O thread waits for on c, given its lease and whether EPOLLOUT
 * is wanted; c->smu held. */
static struct epoll_event conn_events(petreli_tcp_conn *c, bool out) {
    return (struct epoll_event){.events = (c->leased ? 0 : EPOLLIN) | (out ? EPOLLOUT : 0),
                                .data.ptr = c};
}

/* Registers or clears interest in EPOLLOUT; call with c->smu held. */
static void arm_out(petreli_tcp_transport *t, petreli_tcp_conn *c, bool on) {
    if (c->out_armed == on) return;
    struct epoll_event ev = conn_events(c, on);
    if (epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->out_armed = on;
}

/* Writes the rest of c->pending without blocking; 0 when all is written, EAGAIN,
 * or an errno. Caller owns the write side. */
static int flush_pending_now(petreli_tcp_conn *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t r = send(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno == EWOULDBLOCK ? EAGAIN : errno;
        }
        c->pending_off += (size_t)r;
    }
    petrel_free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    return 0;
}

/* EPOLLOUT on the I/O thread: write pending bytes unless a sender owns the socket
 * (it writes them itself before its own frame). */
static void conn_writable(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    pthread_mutex_lock(&c->smu);
    if (!c->sending) {
        int rc = c->pending ? flush_pending_now(c) : 0;
        if (rc != EAGAIN) {
            if (rc != 0) { /* the link is broken; the read side reports it */
                petrel_free(c->pending);
                c->pending = NULL;
                c->pending_len = c->pending_off = 0;
            }
            arm_out(t, c, false);
        }
    }
    pthread_mutex_unlock(&c->smu);
}

static petrel_err send_timeout(int peer, uint64_t start_ns, const char *what) {
    uint64_t ms = (petrel_now_ns() - start_ns) / 1000000u;
    return petrel_error_set(PETREL_ERR_TIMEOUT, "send to rank %d timed out after %llu ms (%s)",
                            peer, (unsigned long long)ms, what);
}

static petrel_err send_io_error(int peer, int err) {
    return petrel_error_set(PETREL_ERR_IO, "send to rank %d: %s", peer,
                            err == EPIPE ? "connection closed" : strerror(err));
}

static petrel_err tcp_send(void *tp, int peer, const petreli_wire_header *h,
                           const struct iovec *iov, int iovcnt, uint64_t deadline_ns) {
    petreli_tcp_transport *t = tp;
    uint64_t start = petrel_now_ns();
    PETREL_ASSERT(iovcnt >= 0 && iovcnt < MAX_IOV, "a frame gathers at most 15 pieces");
    if (peer < 0 || peer >= t->size || peer == t->rank)
        return petrel_error_set(PETREL_ERR_INVALID, "send to rank %d: not a peer of rank %d", peer,
                                t->rank);

    unsigned char hdr[PETRELI_WIRE_HEADER];
    petreli_wire_encode(h, hdr);
    struct iovec v[MAX_IOV];
    int nv = 0;
    v[nv++] = (struct iovec){hdr, sizeof hdr};
    size_t payload = 0;
    for (int i = 0; i < iovcnt; i++) {
        payload += iov[i].iov_len;
        if (iov[i].iov_len) v[nv++] = iov[i];
    }
    PETREL_ASSERT(payload == h->frame_len, "the iov lengths must add up to h->frame_len");

    pthread_mutex_lock(&t->mu);
    petreli_tcp_conn *c = t->links[peer];
    if (c) c->refs++;
    pthread_mutex_unlock(&t->mu);
    if (!c) return petrel_error_set(PETREL_ERR_IO, "send to rank %d: no link", peer);

    /* Take the write side, waiting for other senders up to the deadline. */
    petrel_err err = PETREL_OK;
    pthread_mutex_lock(&c->smu);
    while (c->sending && err == PETREL_OK) {
        if (petrel_now_ns() >= deadline_ns) {
            err = send_timeout(peer, start, "other sends to it held the socket");
            break;
        }
        struct timespec ts = mono_ts(deadline_ns);
        pthread_cond_timedwait(&c->scv, &c->smu, &ts);
    }
    if (err == PETREL_OK) c->sending = true;
    pthread_mutex_unlock(&c->smu);
    if (err != PETREL_OK) goto done;

    /* An earlier frame's tail first: frames never interleave. */
    while (c->pending) {
        int rc = flush_pending_now(c);
        if (rc == EAGAIN) rc = petreli_tcp_wait_fd(c->fd, POLLOUT, deadline_ns);
        if (rc == ETIMEDOUT)
            err = send_timeout(peer, start, "the peer is not reading");
        else if (rc != 0)
            err = send_io_error(peer, rc);
        if (err != PETREL_OK) goto release;
    }

    size_t left = sizeof hdr + payload;
    int first = 0;
    while (left > 0) {
        struct msghdr m = {.msg_iov = v + first, .msg_iovlen = (size_t)(nv - first)};
        ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            left -= (size_t)r;
            for (size_t k = (size_t)r; k > 0;) { /* advance past what was written */
                size_t step = k < v[first].iov_len ? k : v[first].iov_len;
                v[first].iov_base = (char *)v[first].iov_base + step;
                v[first].iov_len -= step;
                k -= step;
                if (v[first].iov_len == 0) first++;
            }
            continue;
        }
        int e = r < 0 ? errno : EIO;
        if (e == EINTR) continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
            int rc = petreli_tcp_wait_fd(c->fd, POLLOUT, deadline_ns);
            if (rc == 0) continue;
            if (rc != ETIMEDOUT) {
                err = send_io_error(peer, rc);
                break;
            }
            if (left == sizeof hdr + payload) {
                err = send_timeout(peer, start, "the peer is not reading");
                break;
            }
            /* Part of the frame is out: keep the rest; it is written when the socket
             * drains, so the stream stays whole and this frame counts as sent. */
            unsigned char *rest = petrel_malloc(left);
            if (!rest) {
                err = petrel_error_set(PETREL_ERR_NOMEM,
                                       "send to rank %d: out of memory midway through a frame; "
                                       "closing the link",
                                       peer);
                shutdown(c->fd, SHUT_RDWR);
                break;
            }
            size_t off = 0;
            for (int i = first; i < nv; i++) {
                memcpy(rest + off, v[i].iov_base, v[i].iov_len);
                off += v[i].iov_len;
            }
            c->pending = rest;
            c->pending_len = left;
            c->pending_off = 0;
            break;
        }
        err = send_io_error(peer, e);
        break;
    }

release:
    pthread_mutex_lock(&c->smu);
    c->sending = false;
    arm_out(t, c, c->pending != NULL);
    pthread_cond_signal(&c->scv);
    pthread_mutex_unlock(&c->smu);
done:
    petreli_tcp_conn_unref(t, c);
    return err;
}

/* ---- the read lease ---------------------------------------------------------- */

/*
 * A thread that waits in petrel_net_recv for a message from one peer reads that
 * peer's socket itself (tcp_pump), and keeps it between waits: the connection's
 * EPOLLIN interest is switched off, so the I/O thread stands aside. A stream then
 * costs the receiving process one thread, as a plain socket does. With the I/O
 * thread reading and handing each message to the waiting thread, a 64 KiB stream
 * kept three threads busy on loopback (sender, I/O thread, receiver), and on two
 * cores its speed depended on where the scheduler put them.
 *
 * The pumping thread reads under io_mu, like the I/O thread, and only frames that
 * the node would put in its mailbox: a frame for a handler, petrel's own messages,
 * a bad header or a failed socket end the lease, and the I/O thread reads them. A
 * lease ends too when its thread stops waiting: when a pump finds nothing within its
 * slice, or when LEASE_IDLE_NS pass without one (the I/O thread checks each
 * millisecond while leases are out).
 */

#define LEASE_IDLE_NS 1000000
#define IO_MU_TRIES   64 /* attempts to take io_mu, with a yield between, before giving up */

/* Switches the I/O thread's EPOLLIN interest in c off (lease) or back on; a
 * connection being closed can only lose its lease. True when the lease changed. */
static bool lease_set(petreli_tcp_transport *t, petreli_tcp_conn *c, bool leased) {
    bool changed = false, first = false;
    pthread_mutex_lock(&c->smu);
    bool closing = atomic_load(&c->closing);
    if (c->leased != leased && !(leased && closing)) {
        c->leased = leased;
        if (!closing) {
            struct epoll_event ev = conn_events(c, c->out_armed);
            (void)epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev);
        }
        first = atomic_fetch_add(&t->leases, leased ? 1 : -1) == 0 && leased;
        changed = true;
    }
    pthread_mutex_unlock(&c->smu);
    if (first) wake(t); /* it may sleep without a timeout: it must watch the lease */
    return changed;
}

/* Ends c's lease from a pumping thread: the I/O thread reads the socket again, and
 * what the read-ahead holds, which no epoll event would announce. */
static void lease_hand_back(petreli_tcp_transport *t, petreli_tcp_conn *c) {
    (void)lease_set(t, c, false);
    atomic_store(&c->handed_back, true);
    wake(t);
}

/* I/O thread: reads the connections handed back, and takes back the leases that
 * went unused for LEASE_IDLE_NS. */
static void reclaim_leases(petreli_tcp_transport *t) {
    uint64_t now = petrel_now_ns();
    for (petreli_tcp_conn *c = t->up_list, *next; c; c = next) {
        next = c->next;
        bool read = atomic_exchange(&c->handed_back, false);
        if (atomic_load(&t->leases) > 0 && atomic_load(&c->pumping) == 0 &&
            now - atomic_load(&c->lease_used_ns) > LEASE_IDLE_NS && lease_set(t, c, false))
            read = true;
        if (read && !atomic_load(&c->closing)) (void)conn_read(t, c, false); /* else swept */
    }
}

static petreli_pump_result tcp_pump(void *tp, int peer, uint64_t spin_until_ns, uint64_t until_ns) {
    petreli_tcp_transport *t = tp;
    if (io_thread_of == t || peer < 0 || peer >= t->size || peer == t->rank)
        return PETRELI_PUMP_BUSY;
    pthread_mutex_lock(&t->mu);
    petreli_tcp_conn *c = t->links[peer];
    if (c) c->refs++;
    pthread_mutex_unlock(&t->mu);
    if (!c) return PETRELI_PUMP_BUSY;
    atomic_fetch_add(&c->pumping, 1);
    petreli_pump_result res;
    for (;;) {
        /* Never wait long for io_mu: the I/O thread may hold it in a handler that
         * needs something this thread holds. It mostly holds it for microseconds. */
        int tries = 0;
        while (pthread_mutex_trylock(&t->io_mu) != 0 && ++tries < IO_MU_TRIES) sched_yield();
        if (tries == IO_MU_TRIES) {
            res = PETRELI_PUMP_BUSY;
            break;
        }
        if (atomic_load(&c->closing)) { /* disconnected: the I/O thread drops it */
            pthread_mutex_unlock(&t->io_mu);
            res = PETRELI_PUMP_BUSY;
            break;
        }
        (void)lease_set(t, c, true);
        io_thread_of = t; /* the node's callbacks may call disconnect(): io_mu is held */
        read_end e = conn_read(t, c, true);
        io_thread_of = NULL;
        pthread_mutex_unlock(&t->io_mu);
        if (e != READ_AGAIN) {
            res = e == READ_MESSAGE ? PETRELI_PUMP_MESSAGE : PETRELI_PUMP_BUSY;
            break;
        }
        uint64_t now = petrel_now_ns();
        if (now >= until_ns) {
            res = PETRELI_PUMP_IDLE;
            break;
        }
        if (now < spin_until_ns) {
            sched_yield();
            continue;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        struct timespec left = mono_ts(until_ns - now);
        (void)ppoll(&p, 1, &left, NULL);
    }
    if (res == PETRELI_PUMP_MESSAGE)
        atomic_store(&c->lease_used_ns, petrel_now_ns());
    else
        lease_hand_back(t, c);
    atomic_fetch_sub(&c->pumping, 1);
    petreli_tcp_conn_unref(t, c);
    return res;
}

/* ---- the I/O thread ------------------------------------------------------------ */

/* Takes the connections connect() made into epoll and the up list. */
static void adopt_all(petreli_tcp_transport *t) {
    pthread_mutex_lock(&t->mu);
    petreli_tcp_conn *q = t->adopt;
    t->adopt = NULL;
    pthread_mutex_unlock(&t->mu);
    while (q) {
        petreli_tcp_conn *c = q;
        q = q->next;
        petreli_tcp_list_push(&t->up_list, c);
        pthread_mutex_lock(&c->smu);
        struct epoll_event ev = conn_events(c, c->pending != NULL);
        int rc = epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev);
        if (rc == 0) c->out_armed = c->pending != NULL;
        pthread_mutex_unlock(&c->smu);
        if (rc != 0) conn_drop(t, c, "epoll_ctl: %s", strerror(errno));
    }
}

/* Drops the connections disconnect() marked. */
static void sweep_closing(petreli_tcp_transport *t) {
    if (atomic_load(&t->closing_count) == 0) return;
    for (petreli_tcp_conn *c = t->up_list, *next; c; c = next) {
        next = c->next;
        if (atomic_load(&c->closing)) conn_drop(t, c, "disconnected");
    }
}

static int next_timeout_ms(petreli_tcp_transport *t) {
    uint64_t next = UINT64_MAX;
    if (t->hs_list) next = t->hs_list->hs_deadline_ns;
    if (t->listen_rearm_ns && t->listen_rearm_ns < next) next = t->listen_rearm_ns;
    int ms = next == UINT64_MAX ? -1 : ms_until(next);
    if (atomic_load(&t->leases) > 0 && (ms < 0 || ms > 1)) ms = 1; /* reclaim_leases */
    return ms;
}

static void *io_main(void *arg) {
    petreli_tcp_transport *t = arg;
    io_thread_of = t;
    struct epoll_event evs[64];
    pthread_mutex_lock(&t->io_mu);
    while (!atomic_load(&t->stop)) {
        int timeout = next_timeout_ms(t);
        pthread_mutex_unlock(&t->io_mu);
        int n = epoll_wait(t->epfd, evs, 64, timeout);
        int e = errno;
        pthread_mutex_lock(&t->io_mu);
        if (n < 0 && e != EINTR) {
            PETREL_LOG_ERROR("net", "tcp: epoll_wait: %s; the transport stops", strerror(e));
            break;
        }
        bool woken = false; /* perhaps by a pump that handed its connection back */
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &mark_wake) {
                uint64_t v;
                (void)!read(t->wake_fd, &v, sizeof v);
                adopt_all(t);
                woken = true;
            } else if (p == &mark_listen) {
                petreli_tcp_accept_all(t);
            } else {
                petreli_tcp_conn *c = p;
                if (c->state != PETRELI_TCP_CONN_UP) {
                    (void)petreli_tcp_handshake_read(t, c);
                } else if (atomic_load(&c->closing)) {
                    (void)conn_drop(t, c, "disconnected");
                } else {
                    if (evs[i].events & EPOLLOUT) conn_writable(t, c);
                    if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                        (void)conn_read(t, c, false);
                }
            }
        }
        if (woken || atomic_load(&t->leases) > 0) reclaim_leases(t);
        sweep_closing(t);
        petreli_tcp_expire_handshakes(t);
        if (t->listen_rearm_ns && petrel_now_ns() >= t->listen_rearm_ns) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &mark_listen};
            if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->listen_fd, &ev) == 0) t->listen_rearm_ns = 0;
        }
    }
    pthread_mutex_unlock(&t->io_mu);
    return NULL;
}

/* A connected non-blocking socket to sa, or -1 with errno, by deadline. */
static int dial(const struct sockaddr_in *sa, uint64_t deadline_ns) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    petreli_tcp_tune_socket(fd);
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    if (rc != 0 && errno == EINPROGRESS) {
        int w = petreli_tcp_wait_fd(fd, POLLOUT, deadline_ns);
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (w == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
        errno = w ? w : soerr;
        rc = errno ? -1 : 0;
    }
    if (rc != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static petrel_err tcp_connect(void *tp, int peer, const char *addr, uint64_t deadline_ns) {
    petreli_tcp_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank)
        return petrel_error_set(PETREL_ERR_INVALID, "connect to rank %d: not a peer of rank %d",
                                peer, t->rank);
    pthread_mutex_lock(&t->mu);
    bool up = t->links[peer] != NULL;
    pthread_mutex_unlock(&t->mu);
    if (up) return PETREL_OK;

    struct sockaddr_in sa;
    petrel_err err = parse_addr(addr, &sa);
    if (err != PETREL_OK) return err;
    int fd = dial(&sa, deadline_ns);
    if (fd < 0)
        return petrel_error_set(errno == ETIMEDOUT ? PETREL_ERR_TIMEOUT : PETREL_ERR_IO,
                                "connect to rank %d at %s: %s", peer, addr, strerror(errno));
    err = petreli_tcp_handshake(fd, t->token, t->rank, peer, t->size, deadline_ns);
    if (err != PETREL_OK) {
        close(fd);
        pthread_mutex_lock(&t->mu);
        up = t->links[peer] != NULL; /* a connect() in another thread won the race */
        pthread_mutex_unlock(&t->mu);
        if (up) return PETREL_OK;
        char why[512];
        snprintf(why, sizeof why, "%s", petrel_errmsg());
        return petrel_error_set(err, "connect to rank %d at %s: %s", peer, addr, why);
    }
    petreli_tcp_conn *c = petreli_tcp_conn_new(fd, peer, PETRELI_TCP_CONN_UP);
    if (!c) {
        close(fd);
        return PETREL_ERR_NOMEM;
    }
    snprintf(c->from, sizeof c->from, "%s", addr);
    pthread_mutex_lock(&t->mu);
    up = t->links[peer] != NULL;
    if (!up) {
        t->links[peer] = c;
        c->next = t->adopt;
        t->adopt = c;
    }
    pthread_mutex_unlock(&t->mu);
    if (up) {
        petreli_tcp_conn_free(c);
        return PETREL_OK;
    }
    wake(t);
    PETREL_LOG_DEBUG("net", "tcp: connected to rank %d at %s", peer, addr);
    return PETREL_OK;
}

/* ---- open, close, link state ------------------------------------------------------ */

static bool tcp_connected(void *tp, int peer) {
    petreli_tcp_transport *t = tp;
    if (peer < 0 || peer >= t->size) return false;
    pthread_mutex_lock(&t->mu);
    bool up = t->links[peer] != NULL;
    pthread_mutex_unlock(&t->mu);
    return up;
}

static void tcp_disconnect(void *tp, int peer) {
    petreli_tcp_transport *t = tp;
    if (peer < 0 || peer >= t->size) return;
    /* Holding io_mu (unless this is the I/O thread, which holds it already) means no
     * payload of peer's is being read: after return none will be. */
    bool on_io = io_thread_of == t;
    if (!on_io) pthread_mutex_lock(&t->io_mu);
    pthread_mutex_lock(&t->mu);
    petreli_tcp_conn *c = t->links[peer];
    if (c) {
        t->links[peer] = NULL;
        atomic_store(&c->closing, true);
        atomic_fetch_add(&t->closing_count, 1);
    }
    pthread_mutex_unlock(&t->mu);
    if (c) {
        shutdown(c->fd, SHUT_RDWR); /* tells the peer, fails sends in progress */
        if (!on_io) wake(t);        /* the I/O thread drops it (it may be in its event list) */
    }
    if (!on_io) pthread_mutex_unlock(&t->io_mu);
}

static void tcp_quiesce(void *tp) {
    petreli_tcp_transport *t = tp;
    if (!t || !t->io) return;
    atomic_store(&t->stop, true);
    wake(t);
    petrel_thread_join(t->io, NULL);
    t->io = NULL;
}

static void tcp_close(void *tp) {
    petreli_tcp_transport *t = tp;
    if (!t) return;
    tcp_quiesce(t);
    for (petreli_tcp_conn *c = t->hs_list, *next; c; c = next) {
        next = c->next;
        petreli_tcp_conn_free(c);
    }
    for (petreli_tcp_conn *c = t->up_list, *next; c; c = next) {
        next = c->next;
        petreli_tcp_conn_free(c);
    }
    for (petreli_tcp_conn *c = t->adopt, *next; c; c = next) {
        next = c->next;
        petreli_tcp_conn_free(c);
    }
    if (t->listen_fd >= 0) close(t->listen_fd);
    if (t->epfd >= 0) close(t->epfd);
    if (t->wake_fd >= 0) close(t->wake_fd);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->io_mu);
    petrel_free(t->links);
    petrel_free(t->token);
    petrel_free(t);
}

static petrel_err open_listener(const petreli_transport_config *cfg, int *out) {
    if (cfg->listen_fd >= 0) { /* inherited: make it ours */
        int fl = fcntl(cfg->listen_fd, F_GETFL);
        if (fl < 0 || fcntl(cfg->listen_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
            fcntl(cfg->listen_fd, F_SETFD, FD_CLOEXEC) < 0)
            return petrel_error_set(PETREL_ERR_INVALID, "inherited listening socket %d: %s",
                                    cfg->listen_fd, strerror(errno));
        *out = cfg->listen_fd;
        return PETREL_OK;
    }
    char spec[96];
    snprintf(spec, sizeof spec, "%s:%d", cfg->listen_host ? cfg->listen_host : "127.0.0.1",
             cfg->listen_port);
    struct sockaddr_in sa;
    petrel_err err = parse_addr(spec, &sa);
    if (err != PETREL_OK) return err;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return petrel_error_set(PETREL_ERR_IO, "socket: %s", strerror(errno));
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    petreli_tcp_tune_socket(fd); /* accepted sockets inherit the buffer sizes */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, SOMAXCONN) != 0) {
        int e = errno;
        close(fd);
        return petrel_error_set(PETREL_ERR_IO, "listen on %s: %s", spec, strerror(e));
    }
    *out = fd;
    return PETREL_OK;
}

static petrel_err tcp_open(void **out, const petreli_transport_config *cfg,
                           petreli_transport_events ev, char *addr, size_t addr_size) {
    PETREL_ASSERT(cfg->size > 0 && cfg->rank >= 0 && cfg->rank < cfg->size,
                  "rank must be in 0..size-1");
    PETREL_ASSERT(ev.frame_begin && ev.frame_done, "the node must handle frames");
    petrel_err err = PETREL_ERR_NOMEM;
    petreli_tcp_transport *t = petrel_calloc(1, sizeof *t);
    if (!t) return PETREL_ERR_NOMEM;
    t->rank = cfg->rank;
    t->size = cfg->size;
    t->limits = cfg->limits;
    t->ev = ev;
    t->listen_fd = t->epfd = t->wake_fd = -1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_init(&t->io_mu, NULL);
    t->token = petrel_strdup(cfg->token ? cfg->token : "");
    t->links = petrel_calloc((size_t)cfg->size, sizeof *t->links);
    if (!t->token || !t->links) goto fail;
    t->token_len = strlen(t->token);

    int lfd = -1;
    if ((err = open_listener(cfg, &lfd)) != PETREL_OK) goto fail;
    t->listen_fd = lfd;
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(t->listen_fd, (struct sockaddr *)&sa, &len) != 0 || sa.sin_family != AF_INET) {
        err = petrel_error_set(PETREL_ERR_INVALID, "listening socket is not IPv4 TCP");
        goto fail;
    }
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = &mark_listen};
    struct epoll_event we = {.events = EPOLLIN, .data.ptr = &mark_wake};
    if (t->epfd < 0 || t->wake_fd < 0 || epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->listen_fd, &le) ||
        epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wake_fd, &we)) {
        err = petrel_error_set(PETREL_ERR_IO, "epoll: %s", strerror(errno));
        goto fail;
    }
    if ((err = petrel_thread_start(&t->io, io_main, t)) != PETREL_OK) goto fail;
    petreli_tcp_format_addr(&sa, addr, addr_size);
    *out = t;
    return PETREL_OK;
fail:
    if (cfg->listen_fd >= 0) t->listen_fd = -1; /* not ours until open succeeds */
    tcp_close(t);
    return err;
}

const petreli_transport_ops petreli_transport_tcp = {
    .name = "tcp",
    .open = tcp_open,
    .connect = tcp_connect,
    .send = tcp_send,
    .connected = tcp_connected,
    .disconnect = tcp_disconnect,
    .quiesce = tcp_quiesce,
    .close = tcp_close,
    .pump = tcp_pump,
};
