/*
 * petrel coll: collective communication over the nodes of a job.
 *
 * A communicator is an ordered group of ranks of a running petrel_net (all of
 * them, or e.g. just the workers). Every member calls the same collectives in the
 * same order with the same sizes; each call is numbered, and every message of a
 * call carries its number, kind, element count, reduction and root, so that a
 * member that calls something else is reported at once, by rank, instead of
 * corrupting data or hanging. A member that never calls is reported when the
 * timeout runs out, also by rank.
 *
 * Algorithms: allreduce by ring (reduce-scatter then allgather, in chunks that are
 * pipelined: a chunk is forwarded while the next arrives) for large payloads, and
 * by recursive doubling for small ones (log2 P steps of whole-buffer exchanges,
 * with the usual fold-in for P not a power of two); the switch point is a
 * configuration value. Broadcast (pipelined chain from the root), allgather and
 * reduce-scatter (ring), barrier. Optionally float16 on the wire (values are
 * reduced in float32; only transfers are halved).
 *
 * Threading: a communicator is used by one thread at a time (a data-parallel
 * trainer runs its collectives on one communication thread). Different
 * communicators over the same net may run concurrently on different threads.
 *
 *     int ranks[] = {0, 1, 2, 3};
 *     petrel_comm *c;
 *     petrel_comm_new(&c, net, ranks, 4, 1, petrel_comm_config_default());
 *     petrel_allreduce(c, grad, n, PETREL_REDUCE_AVG);
 *     petrel_comm_free(c);
 */
#ifndef PETREL_COLL_H
#define PETREL_COLL_H

#include "petrel/net.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Message type of collective traffic on the net (ids carry the communicator). */
#define PETREL_MSG_COLL 40

typedef enum petrel_reduce_op {
    PETREL_REDUCE_SUM = 0,
    PETREL_REDUCE_AVG, /* sum / communicator size */
    PETREL_REDUCE_MAX,
    PETREL_REDUCE_COUNT
} petrel_reduce_op;

typedef enum petrel_coll_algo {
    PETREL_ALGO_AUTO = 0,           /* by size: recursive doubling below ring_min_bytes */
    PETREL_ALGO_RING,
    PETREL_ALGO_RECURSIVE_DOUBLING,
    PETREL_ALGO_COUNT
} petrel_coll_algo;

typedef struct petrel_comm_config {
    int timeout_ms;         /* bound on every collective call */
    petrel_coll_algo algo;  /* allreduce algorithm */
    size_t ring_min_bytes;  /* AUTO uses the ring from this payload size on */
    size_t chunk_bytes;     /* ring pipelining unit */
    bool fp16_wire;         /* send float16, reduce in float32 */
} petrel_comm_config;

/* Timeout 30 s, AUTO with ring from 64 KiB, chunks of 256 KiB, float32 on the wire. */
petrel_comm_config petrel_comm_config_default(void);

typedef struct petrel_comm petrel_comm;

/* A communicator over ranks[0..n) (distinct ranks of net, in the order that defines
 * the ring), which must include this node. comm_id (0..65535) distinguishes
 * communicators that share a net; every member passes the same ranks and id.
 * Creating one does not communicate. PETREL_ERR_INVALID for a rank out of range or
 * listed twice, ranks without this node, comm_id > 65535, timeout_ms <= 0, or
 * chunk_bytes outside 64 B .. 256 MiB (it must also fit the net's message limit). */
PETREL_NODISCARD petrel_err petrel_comm_new(petrel_comm **out, petrel_net *net, const int *ranks,
                                            int n, uint32_t comm_id, petrel_comm_config cfg);
void petrel_comm_free(petrel_comm *c);

/* This node's index in the communicator, and the number of members. */
int petrel_comm_rank(const petrel_comm *c);
int petrel_comm_size(const petrel_comm *c);

/* Errors of the calls below (the message names the members involved):
 *   PETREL_ERR_STATE    a member made another call (kind, count, reduction, root, or
 *                       algorithm, float16 wire or chunk_bytes differ), or reported so;
 *   PETREL_ERR_TIMEOUT  a member sent nothing within timeout_ms of the call's start;
 *   PETREL_ERR_IO       a member is dead or has left the job;
 *   PETREL_ERR_INVALID  a bad argument on this member (the call does not count).
 * Every member that depends on the failing one fails too, within milliseconds; the
 * communicator stays usable for the next call. With float16 on the wire, results are
 * the same on every member (a member keeps the rounded values the others receive);
 * a one-member communicator rounds nothing. */

/* data (n) = op over members of data (n), in place, on every member. */
PETREL_NODISCARD petrel_err petrel_allreduce(petrel_comm *c, float *data, size_t n,
                                             petrel_reduce_op op);

/* data (n) on every member = data (n) of member root. */
PETREL_NODISCARD petrel_err petrel_broadcast(petrel_comm *c, float *data, size_t n, int root);

/* recv (size * n) = the n values of member 0, then member 1, ...; send may be
 * recv + rank * n (in place). */
PETREL_NODISCARD petrel_err petrel_allgather(petrel_comm *c, const float *send, size_t n,
                                             float *recv);

/* recv (n) = op over members of block `rank` of send (size * n). recv must not
 * overlap send. */
PETREL_NODISCARD petrel_err petrel_reduce_scatter(petrel_comm *c, const float *send, size_t n,
                                                  float *recv, petrel_reduce_op op);

/* Returns when every member has entered. */
PETREL_NODISCARD petrel_err petrel_comm_barrier(petrel_comm *c);

typedef struct petrel_comm_stats {
    uint64_t calls;
    uint64_t bytes_sent, bytes_received; /* payload bytes of collective messages */
    double wait_s;                       /* time spent inside collective calls */
} petrel_comm_stats;

petrel_comm_stats petrel_comm_get_stats(const petrel_comm *c);

/* Float16 conversion used on the wire (round to nearest even; overflow to inf). */
uint16_t petrel_f32_to_f16(float f);
float petrel_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif
