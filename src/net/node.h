/*
 * The node's state, shared by node.c (joining, watching and leaving a job) and
 * message.c (sending, reassembling and dispatching messages). See node.c for the
 * rendezvous and liveness protocol, message.c for the message paths.
 */
#ifndef PETREL_NET_NODE_H
#define PETREL_NET_NODE_H

#include "net_impl.h"

#include <pthread.h>
#include <stdatomic.h>

#define ADDR_LEN        128
#define CONTROL_MAX     (64u << 10) /* petrel's own messages are small; refuse more */
#define CONTROL_SEND_MS 1000        /* bound on a protocol send from an internal thread */
#define TICK_MS         20          /* the monitor thread's period */
#define POLL_NS         50000       /* how long a wait polls before it sleeps */
#define PUMP_SLICE_NS   2000000     /* how long a wait reads its peer's link before it sleeps */
#define LINGER_MS       300         /* bound on waiting for the peers' BYEs when stopping */
#define BYE_GRACE_MS    500         /* bound on waiting for a departed peer's shm to drain */

typedef struct node_entry {
    char tcp[ADDR_LEN], shm[ADDR_LEN], host[ADDR_LEN];
} node_entry;

/* A link: a transport instance that can reach a peer. */
typedef struct net_link {
    const petreli_transport_ops *ops;
    void *t;
} net_link;

/* Reassembly of one peer's message on one transport. */
typedef struct reasm {
    unsigned char *buf;
    size_t got;
    petreli_wire_header first;
} reasm;

enum { VIA_PRIMARY = 0, VIA_SHM = 1, VIA_COUNT };

typedef struct peer_state {
    net_link send_link;      /* how messages to this peer travel */
    pthread_mutex_t send_mu; /* one message at a time to this peer */
    _Atomic bool alive;
    _Atomic bool left;           /* said BYE */
    _Atomic uint64_t bye_ns;     /* when a BYE came while its shm link was still up, else 0 */
    _Atomic bool broadcast_dead; /* coordinator: PEER_DEAD still to be sent */
    _Atomic uint64_t last_seen_ns;
    char why[160]; /* why it died (under mu) */
    reasm rx[VIA_COUNT];
    bool registered, ready; /* coordinator's view during rendezvous */
} peer_state;

typedef struct queued {
    struct queued *next;
    petrel_msg m;
} queued;

typedef struct rpc_wait {
    struct rpc_wait *next;
    uint64_t tag;
    int dst;
    bool done;
    petrel_msg reply;
} rpc_wait;

/* The context a transport's events carry: which node, which transport. */
typedef struct via {
    petrel_net *net;
    int index;
} via;

struct petrel_net {
    int rank, size, servers;
    petrel_net_config cfg;
    petreli_wire_limits limits;
    char token[128], job_id[64];
    net_link primary, shm; /* primary: tcp or inproc; shm may be absent */
    via via[VIA_COUNT];
    peer_state *peers;
    node_entry *table;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int registered, ready_count;
    bool table_ready, go;
    queued *mail_head, *mail_tail;
    queued *free_queued;       /* spent queue nodes, for the next message */
    int sleepers;              /* threads blocked on cv (under mu) */
    _Atomic uint64_t mail_seq; /* bumped for every mailbox message and RPC reply */
    _Atomic bool last_via_shm; /* the latest message came over shared memory */
    rpc_wait *rpcs;
    _Atomic uint64_t next_tag;
    uint32_t barrier_gen;  /* this node's next barrier */
    uint32_t barrier_done; /* highest generation completed + 1 */
    int barrier_count[2];  /* coordinator: arrivals by generation parity */

    struct {
        petrel_msg_handler fn;
        void *ctx;
        _Atomic int running; /* calls in progress, so that replacing a handler can wait */
    } handlers[256];
    _Atomic int removing; /* threads in petrel_net_on waiting for a replaced handler's calls */
    petrel_peer_failure_fn on_failure;
    void *on_failure_ctx;

    pthread_t monitor;
    bool monitor_started;
    _Atomic bool stopping;

    _Atomic uint64_t bytes_sent, bytes_received, messages_sent, messages_received, rejected;
};

/* "server" for a rank, by the rank rule of this job. */
const char *petreli_node_role(const petrel_net *net, int rank);
uint64_t petreli_deadline_after(int timeout_ms);
/* Waits on net->cv (mu held) until woken or the deadline; false once it has passed. */
bool petreli_wait_until(petrel_net *net, uint64_t deadline_ns);
/* PETREL_ERR_IO naming peer p and why it is gone. */
petrel_err petreli_dead_peer_error(petrel_net *net, int p);
/* Marks p dead once: wakes waiters, logs, runs the failure callback, and on rank 0
 * queues a PEER_DEAD broadcast. */
void petreli_declare_dead(petrel_net *net, int p, const char *why);
/* Records that p left normally (BYE) and wakes every waiter. */
void petreli_peer_left(petrel_net *net, int p);

/* True when some peer is dead (its rank in *who). */
bool petreli_any_dead(petrel_net *net, int *who);

/* The one send path: self-delivery, liveness, the per-peer message lock, chunking. */
petrel_err petreli_send_message(petrel_net *net, int dst, uint8_t type, uint32_t id, int64_t clock,
                                uint16_t flags, uint64_t tag, const struct iovec *iov, int iovcnt,
                                uint64_t deadline_ns);
/* A protocol message with a bounded wait. */
petrel_err petreli_send_control(petrel_net *net, int dst, uint8_t type, uint32_t id,
                                const void *data, size_t len, int timeout_ms);
/* A complete message from src; takes buf (h->msg_len bytes). */
void petreli_deliver(petrel_net *net, int src, const petreli_wire_header *h, unsigned char *buf);

/* A job-table entry on the wire: "tcp<TAB>shm<TAB>host". */
bool petreli_entry_parse(const char *s, size_t len, node_entry *e);
size_t petreli_entry_format(const node_entry *e, char *out, size_t size);

/* The transport events (ctx is a struct via). */
void *petreli_ev_frame_begin(void *ctx, int src, const petreli_wire_header *h);
void petreli_ev_frame_done(void *ctx, int src, const petreli_wire_header *h, void *payload);
void petreli_ev_link_lost(void *ctx, int src, const char *why);
void petreli_ev_rejected(void *ctx, const char *why);
bool petreli_ev_may_pump(void *ctx, int src, const petreli_wire_header *h);

#endif
