/*
 * Internals of the collectives: the backends that run them (calls.c picks one per
 * communicator), the communicator, one call's state, the message layer that
 * petrel's own algorithms use (comm.c), the float16 and reduction kernels
 * (kernels.c), and the algorithms (allreduce.c, ring.c); MPI's (mpi.c).
 *
 *   calls.c      the public calls: argument checks, then the communicator's backend
 *   comm.c       communicators; numbering, sending and receiving the messages of a
 *                call; checking each against this member's own call; timeouts,
 *                dead peers, and telling the other members when a call fails
 *   kernels.c    float16 conversion and the reductions (F16C when the CPU has it)
 *   allreduce.c  ring and recursive doubling allreduce, and the ring schedule
 *   local.c      allreduce among members on one host, through shared segments
 *   ring.c       broadcast (chain), allgather and reduce-scatter (ring), barrier
 *   mpi.c        the MPI backend (built with PETREL_HAVE_MPI only)
 */
#ifndef PETREL_COLL_IMPL_H
#define PETREL_COLL_IMPL_H

#include "petrel/coll.h"

#include <stdatomic.h>

/* Bytes of the header that starts every collective message (table in comm.c). */
#define PETRELI_COLL_HEADER 32
#define PETRELI_COLL_MAGIC  0x4c4f4350u /* bytes "PCOL" */

/* What a message belongs to: the kind of call, or a control message. The values
 * are on the wire: add at the end only. */
typedef enum petreli_coll_kind {
    PETRELI_COLL_ALLREDUCE = 1,
    PETRELI_COLL_BROADCAST,
    PETRELI_COLL_ALLGATHER,
    PETRELI_COLL_REDUCE_SCATTER,
    PETRELI_COLL_BARRIER,
    PETRELI_COLL_ABORT,  /* the sender's call failed; root = petrel_err, payload = why */
    PETRELI_COLL_NOTICE, /* the sender is still waiting; root = the member it waits for */
    PETRELI_COLL_KIND_COUNT
} petreli_coll_kind;

/* Element type on the wire. */
enum { PETRELI_DTYPE_F32 = 0, PETRELI_DTYPE_F16 = 1 };

/* The decoded message header: which call (number, kind, element count, reduction,
 * element type, algorithm, root) and which message of it. */
typedef struct petreli_coll_header {
    uint32_t seq;  /* call number, from 1 */
    uint8_t kind;  /* petreli_coll_kind */
    uint8_t op;    /* petrel_reduce_op, or 0 */
    uint8_t dtype; /* PETRELI_DTYPE_* */
    uint8_t algo;  /* petrel_coll_algo of an allreduce (never AUTO), else 0 */
    uint64_t count;
    uint32_t root;  /* broadcast root; ABORT: the error; NOTICE: the member waited for */
    uint32_t step;  /* messages this sender sent this receiver earlier in the call */
    uint32_t chunk; /* the sender's chunk_bytes: the members must cut alike */
} petreli_coll_header;

void petreli_coll_header_encode(const petreli_coll_header *h, unsigned char *out);
/* False when the magic is wrong. */
bool petreli_coll_header_decode(const unsigned char *in, petreli_coll_header *h);

/* ---- backends ---------------------------------------------------------------- */

/* One way to run the collectives. The public calls (calls.c) check their arguments
 * first, so a backend gets a valid op and root, n floats at each pointer (which may
 * be NULL when n is 0), and, for reduce_scatter, recv apart from send. A backend
 * counts c->calls and the other statistics itself. */
typedef struct petreli_coll_ops {
    const char *name; /* "petrel", "mpi" */
    /* Sets up the backend's part of c (c->impl), whose members are known. May be NULL.
     * On failure petrel_comm_new calls close. */
    petrel_err (*open)(petrel_comm *c);
    /* Releases what open made; also after a failed open. May be NULL. */
    void (*close)(petrel_comm *c);
    petrel_err (*allreduce)(petrel_comm *c, float *data, size_t n, petrel_reduce_op op);
    petrel_err (*broadcast)(petrel_comm *c, float *data, size_t n, int root);
    petrel_err (*allgather)(petrel_comm *c, const float *send, size_t n, float *recv);
    petrel_err (*reduce_scatter)(petrel_comm *c, const float *send, size_t n, float *recv,
                                 petrel_reduce_op op);
    petrel_err (*barrier)(petrel_comm *c);
} petreli_coll_ops;

/* Petrel's own algorithms (comm.c, allreduce.c, ring.c). */
extern const petreli_coll_ops petreli_coll_petrel;

#ifdef PETREL_HAVE_MPI
/* MPI's collectives (mpi.c). */
extern const petreli_coll_ops petreli_coll_mpi;
/* Largest element count of one MPI call (INT_MAX); larger calls are split into
 * pieces. Tests lower it to exercise the split. */
extern size_t petreli_coll_mpi_max_count;
#endif

/* The petrel backend's calls, behind petreli_coll_petrel. */
petrel_err petreli_petrel_allreduce(petrel_comm *c, float *data, size_t n, petrel_reduce_op op);
petrel_err petreli_petrel_broadcast(petrel_comm *c, float *data, size_t n, int root);
petrel_err petreli_petrel_allgather(petrel_comm *c, const float *send, size_t n, float *recv);
petrel_err petreli_petrel_reduce_scatter(petrel_comm *c, const float *send, size_t n, float *recv,
                                         petrel_reduce_op op);
petrel_err petreli_petrel_barrier(petrel_comm *c);

/* ---- communicators and calls (comm.c) ------------------------------------------- */

struct petrel_comm {
    const petreli_coll_ops *ops; /* the backend */
    void *impl;                  /* the backend's own state (MPI: its communicator), or NULL */
    petrel_net *net;
    int rank, size;
    int *ranks;     /* net rank of each member (size) */
    int *member_of; /* member of each net rank, -1 for none (net_size) */
    int net_size;
    uint32_t comm_id;
    petrel_comm_config cfg;
    uint32_t seq;      /* number of the last call */
    bool drain_failed; /* the last call failed: its leftovers may sit in the mailbox */

    /* One call's bookkeeping, by member. */
    uint32_t *sent, *recvd; /* messages sent to / taken from each member */
    uint8_t *heard;         /* a message of this call came from the member */
    int *waits_for;         /* from its NOTICE: the member it waits for, or -1 */

    /* Messages of the current call that arrived before they were wanted. */
    petrel_msg *stash;
    int nstash, stash_cap;

    uint16_t *half; /* float16 staging for one outgoing chunk */
    size_t half_cap;

    int8_t one_host;             /* members can share memory (petreli_local_eligible): 1,
                                    not: -1, unknown: 0; the same on every member */
    struct petreli_local *local; /* the shared segments of PETREL_ALGO_SHM (local.c) */

    _Atomic uint64_t calls, bytes_sent, bytes_received, payload_bytes_sent, wait_ns;
};

/* One call in progress on one member. */
typedef struct petreli_coll_call {
    petrel_comm *c;
    petreli_coll_header want; /* this member's call; step unused */
    uint32_t id;              /* net message id: comm_id << 16 | (seq & 0xffff) */
    uint64_t start_ns, notice_ns, deadline_ns;
    bool noticed;  /* NOTICE sent */
    bool relayed;  /* the failure came from another member's ABORT: not re-announced */
    size_t wbytes; /* bytes of one element on the wire */
    char why[512]; /* the failure, without the "allreduce #5: " prefix */
} petreli_coll_call;

/* Records why the call failed (call->why), sets this thread's error, returns err. */
petrel_err petreli_coll_fail(petreli_coll_call *call, petrel_err err, const char *fmt, ...)
    PETREL_PRINTF(3, 4);

/* "rank 2", or "rank 2 (node 5)" when member m's net rank differs, in buf (48 bytes
 * hold any); returns buf. */
const char *petreli_coll_member_name(const petrel_comm *c, int m, char *buf, size_t size);

/* A received message and its data. */
typedef struct petreli_coll_in {
    petrel_msg msg;
    const void *data; /* after the header */
    size_t elems;     /* elements of wbytes */
} petreli_coll_in;

/* Starts call number c->seq + 1. count: elements (per member for allgather and
 * reduce-scatter). */
void petreli_coll_begin(petreli_coll_call *call, petrel_comm *c, petreli_coll_kind kind,
                        petrel_reduce_op op, size_t count, int root, petrel_coll_algo algo);
/* Ends it: on failure tells the other members (best effort), releases what is
 * held; counts statistics. Returns err. */
petrel_err petreli_coll_end(petreli_coll_call *call, petrel_err err);

/* Sends n elements of x (float32, or converted to float16 on the wire) to member
 * dst. round_own (float16 only): x takes the rounded values, for a member whose
 * copy must equal what the others receive. */
PETREL_NODISCARD petrel_err petreli_coll_send(petreli_coll_call *call, int dst, float *x, size_t n,
                                              bool round_own);
/* Sends data already in wire format (a received chunk, forwarded). */
PETREL_NODISCARD petrel_err petreli_coll_send_raw(petreli_coll_call *call, int dst,
                                                  const void *data, size_t n);
/* The next message of this call from member src, which must hold n elements. */
PETREL_NODISCARD petrel_err petreli_coll_recv(petreli_coll_call *call, int src, size_t n,
                                              petreli_coll_in *in);
void petreli_coll_release(petreli_coll_in *in);
/* Takes, without waiting, every message of this call that has arrived, as
 * petreli_coll_recv does with those it does not wait for (kept for later, or the
 * call fails on an ABORT or a mismatch); *waiting: whether one from src is kept. */
PETREL_NODISCARD petrel_err petreli_coll_poll(petreli_coll_call *call, int src, bool *waiting);
/* Member `from` states call h (its SYNC message, or its shared segment): another
 * kind, count, reduction, root, element type, algorithm or chunk size than this
 * call fails it (PETREL_ERR_STATE, naming both members and both calls). */
PETREL_NODISCARD petrel_err petreli_coll_check(petreli_coll_call *call, int from,
                                               const petreli_coll_header *h);

/* ---- kernels (kernels.c) ---------------------------------------------------- */

/* out (n) = base (n) op in (n), in float32 or float16 (in_f16); out may be base.
 * in_first: in is the first operand (max is not symmetric for NaN and zeros, so
 * members that must agree bit for bit reduce in the same order). */
void petreli_coll_reduce(float *out, const float *base, const void *in, bool in_f16, size_t n,
                         petrel_reduce_op op, bool in_first);
/* out (n) = in (n), float32 or float16. */
void petreli_coll_decode(float *out, const void *in, bool in_f16, size_t n);
/* out (n) = float16 of x (n); write_back: x = the rounded values. */
void petreli_coll_encode_f16(uint16_t *out, float *x, size_t n, bool write_back);
/* x (n) = float16 rounding of x, in place. */
void petreli_coll_round_f16(float *x, size_t n);
/* x (n) = x / d (by a power of two: x * (1 / d), which is exact). */
void petreli_coll_divide(float *x, size_t n, float d);
/* x (n) = (x + in) / d, float32: an average's last addition and its division in one
 * pass, with the same results as petreli_coll_reduce then petreli_coll_divide. */
void petreli_coll_sum_divide(float *restrict x, const float *restrict in, size_t n, float d);

/* Element k of len split into parts nearly equal parts: its start and length. */
static inline size_t petreli_part_start(size_t len, size_t parts, size_t k) {
    return k * (len / parts) + (k < len % parts ? k : len % parts);
}
static inline size_t petreli_part_len(size_t len, size_t parts, size_t k) {
    return len / parts + (k < len % parts ? 1 : 0);
}

/* Chunks (at least one) for a block of len elements. */
size_t petreli_coll_chunks(const petreli_coll_call *call, size_t len);

/* Ring schedules go through their blocks in segments of a few chunks each (of every
 * block at once), so that a chunk is passed on while it is still in cache: four per
 * block made a 64 MiB allreduce of 2 members about 20% faster than one pass over
 * whole blocks. */
#define PETRELI_SEGMENT_CHUNKS 4

/* The shape of a ring schedule over blocks of at most len elements: G segments of
 * Cs chunks each; a block is cut into G * Cs chunks. */
static inline void petreli_ring_shape(const petreli_coll_call *call, size_t len, size_t *G,
                                      size_t *Cs) {
    size_t chunks = petreli_coll_chunks(call, len);
    *G = (chunks + PETRELI_SEGMENT_CHUNKS - 1) / PETRELI_SEGMENT_CHUNKS;
    *Cs = (chunks + *G - 1) / *G;
}

/* Message i of a ring schedule of `steps` steps per segment: its step, and its chunk
 * (of G * Cs per block). Segment by segment, step by step within a segment. */
static inline void petreli_ring_index(size_t i, size_t steps, size_t Cs, int *s, size_t *c) {
    size_t per = steps * Cs, g = i / per, j = i % per;
    *s = (int)(j / Cs);
    *c = g * Cs + j % Cs;
}

/* ---- algorithms ----------------------------------------------------------------- */

/* One message of a ring schedule (see petreli_ring_run). */
typedef struct petreli_ring_io {
    float *send; /* what goes out: send_n elements */
    size_t send_n;
    bool round_own; /* float16: the sender keeps the rounded values */
    float *recv;    /* where what comes in lands: recv_n elements */
    size_t recv_n;
    const float *base; /* reduce: recv = base op in; NULL: recv = in */
    bool last;         /* the reduction is complete: average divides here */
} petreli_ring_io;

typedef void (*petreli_ring_plan)(const void *plan, size_t i, petreli_ring_io *io);

/* Runs M messages to `next` and M from `prev`, message i of each described by
 * plan(i): message i goes out once message i - C has come in (its data depends on
 * that one; C: chunks per segment), at most a window ahead of what has come in;
 * each that comes in is reduced or copied into place straight from the received
 * buffer. */
PETREL_NODISCARD petrel_err petreli_ring_run(petreli_coll_call *call, int next, int prev, size_t M,
                                             size_t C, petreli_ring_plan plan, const void *ctx);

/* ---- the shared-memory allreduce (local.c) --------------------------------------- */

typedef struct petreli_local petreli_local;

/* True when the job table puts every member on one host, each with the shared-memory
 * transport open (petreli_net_can_share_memory): the same answer on every member,
 * whatever its links do. */
bool petreli_local_eligible(petrel_comm *c);
/* Allreduce of x (n) among members on one host; see local.c. A call that fails
 * here says so in this member's segment, before petreli_coll_end sends the ABORT
 * (as does the allgather). */
PETREL_NODISCARD petrel_err petreli_local_allreduce(petreli_coll_call *call, float *x, size_t n);
/* Allgather of send (n) into recv (P n), recv + rank n already holding send. */
PETREL_NODISCARD petrel_err petreli_local_allgather(petreli_coll_call *call, const float *send,
                                                    size_t n, float *recv);
/* Unmaps and unlinks what c->local holds. */
void petreli_local_free(petrel_comm *c);

#endif
