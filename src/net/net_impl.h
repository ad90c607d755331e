/*
 * Internals of the net module: the wire header, the transport interface that
 * tcp.c, shm.c and inproc.c implement, and helpers they share.
 *
 * Layering inside the module:
 *   net.c        the node: rendezvous, chunking and reassembly, dispatch to handlers
 *                and mailboxes, barrier, RPC, heartbeats and failure detection
 *   transports   move frames (one header + at most frame_bytes of payload) between
 *                two ranks, and report a frame, a broken link, or a refused connection
 *   wire.c       encodes, decodes and validates headers (the field table is there)
 */
#ifndef PETREL_NET_IMPL_H
#define PETREL_NET_IMPL_H

#include "petrel/net.h"

#include <time.h>

#define PETRELI_WIRE_MAGIC   0x4c525450u /* bytes "PTRL" */
#define PETRELI_WIRE_VERSION 1
#define PETRELI_WIRE_HEADER  48 /* bytes on the wire */

/* Header flags. */
#define PETRELI_FLAG_MORE      0x0001 /* more frames of this message follow */
#define PETRELI_FLAG_RPC_REQ   0x0002 /* tag is an RPC request id */
#define PETRELI_FLAG_RPC_REPLY 0x0004 /* tag is the request id this answers */
#define PETRELI_FLAGS_KNOWN    0x0007

/* Message types below PETREL_MSG_USER: petrel's own protocol. */
enum {
    PETRELI_MSG_REGISTER = 1, /* node -> coordinator: rank, addresses, host identity */
    PETRELI_MSG_TABLE,        /* coordinator -> node: every node's addresses */
    PETRELI_MSG_READY,        /* node -> coordinator: connected to every peer */
    PETRELI_MSG_GO,           /* coordinator -> node: the job has formed */
    PETRELI_MSG_HEARTBEAT,    /* node -> coordinator */
    PETRELI_MSG_PEER_DEAD,    /* coordinator -> node: id = the rank declared dead */
    PETRELI_MSG_BARRIER,      /* node -> coordinator: id = barrier generation */
    PETRELI_MSG_BARRIER_DONE, /* coordinator -> node */
    PETRELI_MSG_BYE,          /* node -> peers: leaving normally */
    PETRELI_MSG_COUNT
};

/* A decoded header. */
typedef struct petreli_wire_header {
    uint8_t type;
    uint16_t flags;
    uint32_t src; /* sender's rank */
    uint32_t id;  /* table or collective id */
    int64_t clock;
    uint64_t tag;       /* RPC request id, else 0 */
    uint32_t frame_len; /* payload bytes in this frame */
    uint32_t msg_len;   /* payload bytes in the whole message */
} petreli_wire_header;

/* Writes h as PETRELI_WIRE_HEADER bytes, checksum included. */
void petreli_wire_encode(const petreli_wire_header *h, unsigned char *out);

/* Limits a receiver enforces before it allocates anything. */
typedef struct petreli_wire_limits {
    uint32_t frame_bytes;       /* largest frame_len */
    uint64_t max_message_bytes; /* largest msg_len */
    int size;                   /* ranks are < size */
} petreli_wire_limits;

/* Decodes and validates PETRELI_WIRE_HEADER bytes: magic, version, checksum, known
 * flags, reserved bytes, src < size, frame_len <= frame_bytes, frame_len <= msg_len
 * <= max_message_bytes. (That the frames of a message add up to msg_len is the
 * reassembler's check.) PETREL_ERR_FORMAT saying which field was wrong. */
PETREL_NODISCARD petrel_err petreli_wire_decode(const unsigned char *in,
                                                const petreli_wire_limits *lim,
                                                petreli_wire_header *out);

/* CRC-32C (Castagnoli), with SSE4.2 instructions where the CPU has them. */
uint32_t petreli_crc32c(uint32_t crc, const void *data, size_t len);

/* ---- the transport interface ------------------------------------------------ */

/* What a transport reports to the node. Called on the transport's own threads, and
 * for frames of a link being pumped (pump below) on the pumping thread. */
typedef struct petreli_transport_events {
    void *ctx;
    /* A validated header from rank peer: returns where its h->frame_len payload bytes
     * go (valid until frame_done), so that a transport can read them straight into
     * the message being reassembled; or NULL when the frame breaks the protocol (the
     * transport then drops the link, reporting on_link_lost). Frames from one peer
     * arrive in the order sent, and begin/done pairs of one peer never overlap. */
    void *(*frame_begin)(void *ctx, int peer, const petreli_wire_header *h);
    /* The payload is in place at the pointer frame_begin returned. */
    void (*frame_done)(void *ctx, int peer, const petreli_wire_header *h, void *payload);
    /* The link to peer is gone (closed, reset, malformed input after authentication).
     * Called at most once per link. */
    void (*on_link_lost)(void *ctx, int peer, const char *why);
    /* A connection was refused before authentication (bad token, garbage, wrong
     * version); the transport has closed it and keeps serving the others. */
    void (*on_rejected)(void *ctx, const char *why);
    /* Whether a frame like h may be delivered on a thread that waits in pump(): true
     * when delivering it runs none of the application's code (it goes to the mailbox
     * or to an RPC waiter, not to a handler). May be NULL (never). */
    bool (*may_pump)(void *ctx, int peer, const petreli_wire_header *h);
} petreli_transport_events;

/* What pump() did. */
typedef enum petreli_pump_result {
    PETRELI_PUMP_MESSAGE, /* a message from the peer was delivered */
    PETRELI_PUMP_IDLE,    /* none came by until_ns */
    PETRELI_PUMP_BUSY,    /* the link is the transport thread's to read now: wait for it */
} petreli_pump_result;

typedef struct petreli_transport_config {
    int rank, size;
    const char *listen_host; /* address to bind (TCP) */
    int listen_port;         /* 0: any free port */
    int listen_fd;           /* an inherited listening socket to use instead, or -1 */
    const char *token;       /* job token for the connect-time HMAC challenge */
    const char *job_id;      /* names shared-memory segments */
    petreli_wire_limits limits;
    void *inproc_hub; /* inproc only */
} petreli_transport_config;

typedef struct petreli_transport_ops {
    const char *name; /* "tcp", "shm", "inproc" */
    /* Starts listening and the transport's receive thread. Writes the address that
     * peers pass to connect (e.g. "127.0.0.1:40123", "/petrel-job-3") into addr. */
    petrel_err (*open)(void **t, const petreli_transport_config *cfg, petreli_transport_events ev,
                       char *addr, size_t addr_size);
    /* Connects to rank peer listening at addr and authenticates both ways, waiting
     * until deadline_ns (petrel_now_ns clock). Idempotent once connected. */
    petrel_err (*connect)(void *t, int peer, const char *addr, uint64_t deadline_ns);
    /* Sends one frame: h (encoded here) then the payload gathered from iov, whose
     * lengths add up to h->frame_len. Returns once the bytes are handed over; blocks
     * until deadline_ns while the peer's queue is full (PETREL_ERR_TIMEOUT). Safe
     * from several threads: frames to one peer never interleave. */
    petrel_err (*send)(void *t, int peer, const petreli_wire_header *h, const struct iovec *iov,
                       int iovcnt, uint64_t deadline_ns);
    /* True when a link to peer is up (connected, or accepted and authenticated). */
    bool (*connected)(void *t, int peer);
    /* The job has formed: every peer has connected. The transport may drop what it
     * kept for connecting (shm unlinks its inbox's name, so that a node killed later
     * leaves nothing behind in /dev/shm). May be NULL. */
    void (*seal)(void *t);
    /* Drops the link to peer (on_link_lost is not called for it). */
    void (*disconnect)(void *t, int peer);
    /* Stops and joins the receive thread: no event is reported after it returns, and
     * sends still work until close. Lets a node stop every transport's callbacks
     * before it frees any transport they might touch. May be NULL. */
    void (*quiesce)(void *t);
    /* Closes everything and joins the transport's threads. */
    void (*close)(void *t);
    /* Reads the link from peer on the calling thread, which waits for a message from
     * it, while the transport's thread stands aside: a stream then costs the receiver
     * one thread, not two and a hand-over per message. Returns after one message was
     * delivered (the calling thread keeps the link for its next wait, for a short
     * while), or at until_ns, or at once when the link cannot be read here (what comes
     * next is for a handler, the link failed, the transport's thread is busy with it);
     * in the last two cases the link goes back to the transport's thread. Polls until
     * spin_until_ns before it sleeps. May be NULL (not supported). */
    petreli_pump_result (*pump)(void *t, int peer, uint64_t spin_until_ns, uint64_t until_ns);
} petreli_transport_ops;

extern const petreli_transport_ops petreli_transport_tcp;
extern const petreli_transport_ops petreli_transport_shm;
extern const petreli_transport_ops petreli_transport_inproc;

/* Test hook of the shm transport: writes len raw bytes (a header and payload, len >=
 * PETRELI_WIRE_HEADER) into the ring to peer, so that tests can feed a reader
 * malformed input. */
PETREL_NODISCARD petrel_err petreli_shm_send_raw(void *t, int peer, const void *bytes, size_t len,
                                                 uint64_t deadline_ns);

/* ---- message buffers (msgbuf.c) ---------------------------------------------- */

/* A buffer for a len-byte message, reusing one a released message left (64-byte
 * aligned). NULL with an error recorded when memory runs out. */
void *petreli_msgbuf_get(size_t len);
/* Gives a buffer from petreli_msgbuf_get back (to the cache, or to the system).
 * Accepts NULL. */
void petreli_msgbuf_put(void *buf);
/* Counts running nodes; the cache empties when the count returns to 0. */
void petreli_msgbuf_users(int delta);

/* ---- helpers shared by transports ------------------------------------------- */

/* HMAC-SHA-256 (RFC 2104 over FIPS 180-4) of msg under key. */
void petreli_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                         unsigned char out[32]);

/* SHA-256 of data. */
void petreli_sha256(const void *data, size_t len, unsigned char out[32]);

/* Constant-time comparison of n bytes (no early exit on a mismatch). */
bool petreli_equal_ct(const void *a, const void *b, size_t n);

/* The CLOCK_REALTIME time at which a condition-variable wait must end to end at
 * deadline_ns on the monotonic clock (petrel_now_ns). */
struct timespec petreli_abs_deadline(uint64_t deadline_ns);

/* n bytes from the kernel's random source (getrandom). */
PETREL_NODISCARD petrel_err petreli_random_bytes(void *out, size_t n);

/* A string that is equal for two processes exactly when they can share memory and
 * talk over loopback: the boot id and the network namespace. */
void petreli_host_identity(char *out, size_t size);

/* True when the job table says that ranks a and b are on one host (the same
 * petreli_host_identity) and both opened the shared-memory transport (they run with
 * PETREL_TRANSPORT_AUTO and it worked): facts that every node of the job holds alike,
 * unlike the kind of a link (petrel_net_link), which a failed connection can change
 * for one pair. For the collectives (node.c). */
bool petreli_net_can_share_memory(petrel_net *net, int a, int b);

/* ---- TCP internals for tests (tcp_handshake.c) ------------------------------- */

/* How long an accepted connection may take to complete its handshake before it is
 * closed (default 5000 ms). Process-wide; read when a connection is accepted. */
void petreli_tcp_set_handshake_timeout_ms(uint32_t ms);

/* The connector's side of the TCP handshake (the table at the top of tcp_handshake.c) on a
 * connected socket fd, as rank of a job of size, to the acceptor rank peer, with
 * token (NULL = ""), by deadline_ns. PETREL_ERR_INVALID when the peer fails
 * authentication, PETREL_ERR_STATE when the pair already has a link, PETREL_ERR_IO
 * when it closes, PETREL_ERR_TIMEOUT. */
PETREL_NODISCARD petrel_err petreli_tcp_handshake(int fd, const char *token, int rank, int peer,
                                                  int size, uint64_t deadline_ns);

#endif
