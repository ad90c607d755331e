/*
 * petrel net: the nodes of a job, their roles, and the messages between them.
 *
 * A job is N nodes with ranks 0 .. N-1. Roles follow from rank (the rank rule):
 *   rank 0                 coordinator (rendezvous, barriers, liveness, metrics)
 *   ranks 1 .. S           servers (S = petrel_net_config.servers)
 *   ranks S+1 .. N-1       workers
 *
 * petrel_net_start joins the job: the coordinator listens at the job's
 * coordinator address; every other node listens on its own port, registers with
 * the coordinator, receives the address table, and connects to every other node
 * (a full mesh). Peers prove knowledge of the job token with an HMAC challenge at
 * connect time. Peers on the same host talk through shared memory, others over TCP.
 *
 * Messages are typed (one byte), carry an id (a table or collective id), a clock
 * and a payload of up to max_message_bytes. A type either has a handler, called on
 * the receiving node's I/O thread as each message completes, or its messages wait
 * in a mailbox for petrel_net_recv. Sends are zero-copy over TCP (the payload is
 * written from the caller's buffer) and block, up to their timeout, while the
 * peer's queue is full.
 *
 * Failure: every blocking call takes a timeout and fails with PETREL_ERR_TIMEOUT or
 * PETREL_ERR_IO naming the peer. A peer whose connection breaks, or that stays
 * silent longer than peer_timeout_ms, is reported to the failure callback on every
 * node, and later calls that need it fail at once.
 *
 * Threading: all petrel_net_* calls are thread-safe. Handlers run on a transport's
 * receive thread: they must not wait for other messages (no recv, no call); they
 * may send and reply, which block only while the peer's queue is full.
 *
 *     petrel_net_config cfg = petrel_net_config_default();   // rank, size from env
 *     petrel_net *net;
 *     if (petrel_net_start(&net, &cfg) != PETREL_OK) ... petrel_errmsg() ...
 *     if (petrel_net_rank(net) == 1) petrel_net_send(net, 2, MY_TYPE, 0, 0, buf, len, 5000);
 *     petrel_net_barrier(net, 10000);
 *     petrel_net_stop(net);
 */
#ifndef PETREL_NET_H
#define PETREL_NET_H

#include "petrel/core.h"

#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum petrel_role {
    PETREL_ROLE_COORDINATOR = 0,
    PETREL_ROLE_SERVER,
    PETREL_ROLE_WORKER,
    PETREL_ROLE_COUNT
} petrel_role;

const char *petrel_role_name(petrel_role role);

/* The rank rule above. */
petrel_role petrel_role_of(int rank, int size, int servers);

typedef enum petrel_transport_kind {
    PETREL_TRANSPORT_AUTO = 0, /* shared memory between nodes on one host, TCP otherwise */
    PETREL_TRANSPORT_TCP,      /* TCP only */
    PETREL_TRANSPORT_INPROC,   /* threads of one process (tests) */
    PETREL_TRANSPORT_COUNT
} petrel_transport_kind;

/* Where a node sits in its job, from the launcher's environment. */
typedef struct petrel_job_env {
    int rank, size;        /* -1 when not found */
    int servers;           /* PETREL_SERVERS, or -1 */
    char coordinator[256]; /* PETREL_COORDINATOR "host:port", or "" */
    char token[128];       /* PETREL_TOKEN, or "" */
    char interface[64];    /* PETREL_INTERFACE (an address to listen on), or "" */
    char job_id[64];       /* a name shared by the job's nodes (PETREL_JOB_ID, SLURM_JOB_ID,
                              OMPI_MCA_ess_base_jobid), or "" */
    const char *source;    /* which variables gave rank and size: "petrel", "openmpi",
                              "pmix", "slurm", or "none" */
} petrel_job_env;

/* Reads, in this order of precedence: PETREL_RANK/PETREL_SIZE, Open MPI
 * (OMPI_COMM_WORLD_RANK/SIZE), PMIx (PMIX_RANK with PMIX_SIZE or
 * OMPI_COMM_WORLD_SIZE), Slurm (SLURM_PROCID/SLURM_NTASKS). Invalid values (not
 * numbers, rank outside 0..size-1) are PETREL_ERR_INVALID naming the variable. */
PETREL_NODISCARD petrel_err petrel_job_env_read(petrel_job_env *out);

typedef struct petrel_net_config {
    int rank, size;          /* -1: from the environment (petrel_job_env_read) */
    int servers;             /* S in the rank rule; -1: PETREL_SERVERS or 0 */
    const char *coordinator; /* "host:port" of rank 0; NULL: PETREL_COORDINATOR */
    int coordinator_fd;      /* a listening socket for rank 0 made by the launcher; -1: none
                                (PETREL_LISTEN_FD is read when -1) */
    const char *interface;   /* address to listen on; NULL: PETREL_INTERFACE or 127.0.0.1 */
    const char *token;       /* job token; NULL: PETREL_TOKEN */
    const char *job_id;      /* names shared-memory segments; NULL: from the environment */
    petrel_transport_kind transport;
    uint32_t frame_bytes;        /* largest frame payload; longer messages are chunked */
    uint64_t max_message_bytes;  /* largest message a peer may send us */
    uint32_t heartbeat_ms;       /* how often nodes tell the coordinator they are alive */
    uint32_t peer_timeout_ms;    /* silence after which a peer is declared dead */
    uint32_t connect_timeout_ms; /* how long joining the job may take */
    void *inproc_hub;            /* PETREL_TRANSPORT_INPROC: the hub the nodes share */
} petrel_net_config;

/* rank/size/servers -1, transport AUTO, frame 1 MiB, max message 1 GiB,
 * heartbeat 200 ms, peer timeout 5 s, connect timeout 30 s. */
petrel_net_config petrel_net_config_default(void);

typedef struct petrel_net petrel_net;

/* Joins the job (see the top of this file). Errors: PETREL_ERR_INVALID (bad
 * configuration or environment), PETREL_ERR_TIMEOUT (a node did not show up within
 * connect_timeout_ms; the message lists which), PETREL_ERR_IO. */
PETREL_NODISCARD petrel_err petrel_net_start(petrel_net **out, const petrel_net_config *cfg);

/* Leaves the job: tells the peers, closes connections, joins the I/O thread.
 * Accepts NULL. */
void petrel_net_stop(petrel_net *net);

int petrel_net_rank(const petrel_net *net);
int petrel_net_size(const petrel_net *net);
petrel_role petrel_net_role(const petrel_net *net);
int petrel_net_servers(const petrel_net *net);

/* "tcp" or "shm" (or "inproc", or "self"): how messages to peer travel. */
const char *petrel_net_link(const petrel_net *net, int peer);

/* ---- messages ------------------------------------------------------------ */

/* Types 0..31 belong to petrel's own protocol; the layers above use 32..255. */
#define PETREL_MSG_USER 32

#define PETREL_ANY_SOURCE (-1)
#define PETREL_ANY_ID     UINT32_MAX

typedef struct petrel_msg {
    int src;
    uint8_t type;
    uint32_t id;
    int64_t clock;
    const void *data; /* len bytes; valid during a handler (unless kept), or until
                         petrel_msg_release */
    size_t len;
    uint64_t rpc; /* non-zero for an RPC request: pass the message to petrel_net_reply */
    void *owned;  /* internal: the buffer petrel_msg_release frees */
} petrel_msg;

/* Frees the payload of a message from petrel_net_recv or petrel_net_call, or one a
 * handler kept. Accepts a zeroed message. */
void petrel_msg_release(petrel_msg *m);

/* From a handler: takes its message over instead of copying the payload, for a
 * handler that must hold it past its return (e.g. until a clock advances). *out
 * stays valid until petrel_msg_release(out); call at most once per message. */
void petrel_msg_keep(const petrel_msg *m, petrel_msg *out);

/* Called on the I/O thread for each complete message of a type. */
typedef void (*petrel_msg_handler)(void *ctx, petrel_net *net, const petrel_msg *m);

/* Routes every message of type (>= PETREL_MSG_USER) to handler instead of the
 * mailbox. Register before the peers start sending (e.g. before a barrier).
 * handler NULL removes it: later messages of the type go to the mailbox. Replacing
 * or removing returns once no call of the old handler is running, so that its
 * context may be freed (never replace a handler from inside a call of it). */
PETREL_NODISCARD petrel_err petrel_net_on(petrel_net *net, uint8_t type, petrel_msg_handler handler,
                                          void *ctx);

/* Sends len bytes to dst. Returns once the payload has been handed over (written to
 * the socket or copied to shared memory), so the caller may then reuse the buffer.
 * Blocks up to timeout_ms while the peer's queue is full (0: fail at once with
 * PETREL_ERR_TIMEOUT). Sending to oneself delivers locally. */
PETREL_NODISCARD petrel_err petrel_net_send(petrel_net *net, int dst, uint8_t type, uint32_t id,
                                            int64_t clock, const void *data, size_t len,
                                            int timeout_ms);

/* Same, gathering the payload from iov (iovcnt <= 8) without copying. */
PETREL_NODISCARD petrel_err petrel_net_sendv(petrel_net *net, int dst, uint8_t type, uint32_t id,
                                             int64_t clock, const struct iovec *iov, int iovcnt,
                                             int timeout_ms);

/* Takes the oldest mailbox message of type from src (or PETREL_ANY_SOURCE) with id
 * (or PETREL_ANY_ID), waiting up to timeout_ms. The caller releases it. Fails with
 * PETREL_ERR_IO when src has died, PETREL_ERR_TIMEOUT naming what it waited for.
 * Waiting for one src over TCP, the calling thread reads src's socket itself while
 * the I/O thread stands aside (messages of handled types still go to the I/O
 * thread), so a stream costs the receiver one thread. */
PETREL_NODISCARD petrel_err petrel_net_recv(petrel_net *net, int src, uint8_t type, uint32_t id,
                                            petrel_msg *out, int timeout_ms);

/* A request to dst's handler for type, and its reply: waits up to timeout_ms. The
 * caller releases *reply. */
PETREL_NODISCARD petrel_err petrel_net_call(petrel_net *net, int dst, uint8_t type, const void *req,
                                            size_t len, petrel_msg *reply, int timeout_ms);

/* From a handler (or any thread holding the request): answers an RPC request. */
PETREL_NODISCARD petrel_err petrel_net_reply(petrel_net *net, const petrel_msg *request,
                                             const void *data, size_t len);

/* Waits until every node of the job has entered the barrier. Fails at once with
 * PETREL_ERR_IO naming the node when one has died (or rank 0 has gone), and with
 * PETREL_ERR_TIMEOUT when a node never arrives. */
PETREL_NODISCARD petrel_err petrel_net_barrier(petrel_net *net, int timeout_ms);

/* ---- failure and statistics ------------------------------------------------ */

/* Called once per dead peer, on one of the node's own threads (a transport's or the
 * monitor's), with the peer's rank and why. Must not block. */
typedef void (*petrel_peer_failure_fn)(void *ctx, int peer, const char *why);
void petrel_net_on_failure(petrel_net *net, petrel_peer_failure_fn fn, void *ctx);

/* True while peer is believed alive. */
bool petrel_net_peer_alive(const petrel_net *net, int peer);

typedef struct petrel_net_stats {
    uint64_t bytes_sent, bytes_received; /* payload and headers */
    uint64_t messages_sent, messages_received;
    uint64_t frames_rejected; /* malformed or unauthenticated input */
} petrel_net_stats;

petrel_net_stats petrel_net_get_stats(const petrel_net *net);

/* ---- in-process jobs (tests) ----------------------------------------------- */

typedef struct petrel_inproc_hub petrel_inproc_hub;

/* A hub through which `size` nodes started on threads of this process talk
 * (config transport PETREL_TRANSPORT_INPROC, inproc_hub set). */
PETREL_NODISCARD petrel_err petrel_inproc_hub_new(petrel_inproc_hub **out, int size);
void petrel_inproc_hub_free(petrel_inproc_hub *hub);

#ifdef __cplusplus
}
#endif
#endif
