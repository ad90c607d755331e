/*
 * Internals of the TCP transport shared by tcp.c (connections, the I/O thread,
 * sending and receiving frames, open and close) and tcp_handshake.c (the token
 * handshake, both sides): the connection and transport objects and the functions
 * each file lends the other. The design (threads, sending) is described at the top
 * of tcp.c, the handshake messages at the top of tcp_handshake.c.
 *
 * Locks, in the order they nest: io_mu (held by whichever thread reads connections:
 * the I/O thread while it handles a batch of events, a thread in tcp_pump while it
 * reads its peer; so disconnect() can wait until no payload is being read), then mu
 * (the link table, reference counts, the hand-over queue), then a connection's smu
 * (its `sending` flag, `pending`, its lease and the epoll events they decide).
 * A connection is freed when its last reference goes: the I/O thread holds one
 * while the connection is registered, each send in progress holds one.
 */
#ifndef PETREL_NET_TCP_IMPL_H
#define PETREL_NET_TCP_IMPL_H

#include "net_impl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#define PETRELI_TCP_HELLO_BYTES 52 /* the handshake's first message (tcp_handshake.c) */
#define PETRELI_TCP_RBUF_BYTES  ((4 << 10) + 256) /* read-ahead: a header and a small payload */
#define PETRELI_TCP_FROM_LEN    (INET_ADDRSTRLEN + 8)

typedef enum petreli_tcp_conn_state {
    PETRELI_TCP_CONN_HELLO, /* accepted, reading HELLO */
    PETRELI_TCP_CONN_PROOF, /* REPLY sent, reading PROOF */
    PETRELI_TCP_CONN_UP,    /* authenticated: frames */
} petreli_tcp_conn_state;

typedef struct petreli_tcp_transport petreli_tcp_transport;

typedef struct petreli_tcp_conn {
    int fd;
    int peer;                        /* rank; -1 until HELLO */
    char from[PETRELI_TCP_FROM_LEN]; /* the peer's "ip:port", for messages */
    /* in hs_list or up_list (under io_mu), or the adopt queue */
    struct petreli_tcp_conn *next, *prev;
    int refs;             /* under mu */
    _Atomic bool closing; /* disconnect(): drop it without on_link_lost */

    /* handshake, I/O thread */
    petreli_tcp_conn_state state;
    uint64_t hs_deadline_ns;
    unsigned char hs[PETRELI_TCP_HELLO_BYTES];
    size_t hs_have;
    unsigned char nc[32], na[32];

    /* receive: under io_mu (the I/O thread, or a thread in tcp_pump) */
    unsigned char *rbuf; /* PETRELI_TCP_RBUF_BYTES of read-ahead; rb_off..rb_len not yet consumed */
    size_t rb_off, rb_len;
    bool in_frame;
    petreli_wire_header h;
    unsigned char *payload;
    size_t payload_have;
    int rcvlowat; /* the socket's SO_RCVLOWAT (tcp.c, wake_when) */

    /* send */
    pthread_mutex_t smu;
    pthread_cond_t scv;
    bool sending;           /* under smu: a thread owns the write side */
    bool out_armed;         /* under smu: EPOLLOUT is registered */
    unsigned char *pending; /* the unwritten rest of a frame; owned by whoever holds sending */
    size_t pending_len, pending_off;

    /* the read lease (tcp_pump): a thread that waits for this peer reads its socket */
    bool leased;                    /* under smu: EPOLLIN is off, the I/O thread stands aside */
    _Atomic int pumping;            /* threads in tcp_pump on this connection */
    _Atomic uint64_t lease_used_ns; /* when a pump last delivered a message */
    _Atomic bool handed_back;       /* the I/O thread reads what the read-ahead holds */
} petreli_tcp_conn;

struct petreli_tcp_transport {
    int rank, size;
    char *token;
    size_t token_len;
    petreli_wire_limits limits;
    petreli_transport_events ev;
    int listen_fd, epfd, wake_fd;
    petrel_thread *io;
    _Atomic bool stop;
    _Atomic int closing_count; /* connections marked closing, not yet dropped */
    _Atomic int leases;        /* connections leased to a pumping thread */

    pthread_mutex_t io_mu;
    petreli_tcp_conn *hs_list, *hs_tail; /* under io_mu: handshakes in accept order */
    petreli_tcp_conn *up_list;           /* under io_mu: authenticated connections */
    int handshakes;                      /* under io_mu */
    uint64_t listen_rearm_ns;            /* under io_mu: accept paused (out of fds) until then */

    pthread_mutex_t mu;
    petreli_tcp_conn **links; /* [size]: the authenticated link to each rank */
    petreli_tcp_conn *adopt;  /* connected by connect(), waiting for the I/O thread */
};

/* ---- tcp.c ------------------------------------------------------------------------ */

/* Waits until fd has one of events or deadline passes: 0, ETIMEDOUT, or an errno. */
int petreli_tcp_wait_fd(int fd, short events, uint64_t deadline_ns);

/* Writes sa as "ip:port" into out. */
void petreli_tcp_format_addr(const struct sockaddr_in *sa, char *out, size_t size);

/* Sets the options of every connection (TCP_NODELAY) on fd. */
void petreli_tcp_tune_socket(int fd);

/* A connection on fd (which stays the caller's on failure) in state, with one
 * reference; a read-ahead buffer when state is PETRELI_TCP_CONN_UP. NULL when out of
 * memory. */
petreli_tcp_conn *petreli_tcp_conn_new(int fd, int peer, petreli_tcp_conn_state state);

/* Closes c's socket and frees c. */
void petreli_tcp_conn_free(petreli_tcp_conn *c);

/* Drops a reference to c (under t->mu), freeing c with the last one. */
void petreli_tcp_conn_unref(petreli_tcp_transport *t, petreli_tcp_conn *c);

/* Puts c at the front of the doubly linked list *head / takes it out of it. */
void petreli_tcp_list_push(petreli_tcp_conn **head, petreli_tcp_conn *c);
void petreli_tcp_list_remove(petreli_tcp_conn **head, petreli_tcp_conn *c);

/* ---- tcp_handshake.c ---------------------------------------------------------------- */

/* The connector's side, petreli_tcp_handshake, and petreli_tcp_set_handshake_timeout_ms are
 * declared in net_impl.h (tests use them). The acceptor's side runs on the I/O thread, with
 * io_mu held: */

/* Accepts every pending connection into the handshake list (t->hs_list). */
void petreli_tcp_accept_all(petreli_tcp_transport *t);

/* Reads the HELLO or PROOF of a connection in the handshake and answers it. False when
 * the connection was refused (and freed). */
bool petreli_tcp_handshake_read(petreli_tcp_transport *t, petreli_tcp_conn *c);

/* Refuses the connections whose handshake timeout has passed. */
void petreli_tcp_expire_handshakes(petreli_tcp_transport *t);

#endif
