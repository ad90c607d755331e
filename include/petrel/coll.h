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
 * configuration value. Members all on one host, in a job with the shared-memory
 * transport, take a shared-memory allreduce at every size instead, and a
 * shared-memory allgather. Broadcast (pipelined chain from the root), allgather and
 * reduce-scatter (ring), barrier. Optionally float16 on the wire (values are reduced in float32;
 * only transfers are halved).
 *
 * Backends: the algorithms above are petrel's own (PETREL_BACKEND_PETREL, the
 * default). In a build with Open MPI (CMake PETREL_MPI, on when its headers are
 * found), PETREL_BACKEND_MPI runs the same calls through MPI's collectives instead,
 * for comparison; the job must then be started by mpirun, one MPI process per petrel
 * node, and MPI has no timeout and no mismatch detection (see petrel_comm_new).
 *
 * Threading: a communicator is used by one thread at a time (a data-parallel
 * trainer runs its collectives on one communication thread). Different
 * communicators over the same net may run concurrently on different threads (MPI
 * backend: only when MPI provides MPI_THREAD_MULTIPLE, as Open MPI does).
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
    PETREL_ALGO_AUTO = 0, /* SHM when every member is on one host and the job has the
                             shared-memory transport (PETREL_TRANSPORT_AUTO); else by size:
                             recursive doubling below ring_min_bytes, the ring from there */
    PETREL_ALGO_RING,
    PETREL_ALGO_RECURSIVE_DOUBLING,
    PETREL_ALGO_SHM, /* members on one host, shared-memory transport: each reduces its block
                        of the vector straight from the others' shared segments
                        (PETREL_ERR_UNSUPPORTED otherwise) */
    PETREL_ALGO_COUNT
} petrel_coll_algo;

/* Who runs the collectives of a communicator. */
typedef enum petrel_coll_backend {
    PETREL_BACKEND_PETREL = 0, /* petrel's own algorithms over the net's messages */
    PETREL_BACKEND_MPI,        /* MPI's collectives (builds with Open MPI only) */
    PETREL_BACKEND_COUNT
} petrel_coll_backend;

typedef struct petrel_comm_config {
    int timeout_ms;              /* bound on every collective call */
    petrel_coll_algo algo;       /* allreduce algorithm */
    size_t ring_min_bytes;       /* AUTO across hosts uses the ring from this payload size on */
    size_t chunk_bytes;          /* ring pipelining unit */
    bool fp16_wire;              /* send float16, reduce in float32 */
    petrel_coll_backend backend; /* MPI ignores timeout_ms, algo, ring_min_bytes, chunk_bytes */
} petrel_comm_config;

/* Timeout 30 s, AUTO (SHM on one host with the shared-memory transport, else recursive
 * doubling below 64 KiB and the ring from there), chunks of 256 KiB, float32 on the
 * wire, petrel's own backend. */
petrel_comm_config petrel_comm_config_default(void);

/* True when this build has the backend (PETREL_BACKEND_MPI: built with MPI). */
bool petrel_coll_backend_available(petrel_coll_backend backend);

/* "petrel", "mpi", or "unknown". */
const char *petrel_coll_backend_name(petrel_coll_backend backend);

typedef struct petrel_comm petrel_comm;

/* A communicator over ranks[0..n) (distinct ranks of net, in the order that defines
 * the ring), which must include this node. comm_id (0..65535) distinguishes
 * communicators that share a net; every member passes the same ranks and id.
 * With petrel's own backend, creating one does not communicate. PETREL_ERR_INVALID
 * for a rank out of range or listed twice, ranks without this node, comm_id > 65535,
 * timeout_ms <= 0, chunk_bytes outside 64 B .. 256 MiB (it must also fit the net's
 * message limit), or an unknown backend.
 *
 * With PETREL_BACKEND_MPI, creating one is a collective call of the members (it makes
 * an MPI communicator of them, in the order of ranks; every member must create its
 * MPI-backed communicators in the same order), and the first one initializes MPI
 * (MPI_Init_thread, finalized at exit) unless the program did: Open MPI's
 * initialization waits for every process of the mpirun job, so every process must
 * create an MPI-backed communicator or initialize MPI itself (with
 * MPI_THREAD_SERIALIZED or better). Then each call below is one MPI collective (or a
 * few, for counts above INT_MAX), with none of the checks that petrel's own backend
 * makes: no timeout, no detection of members that call something else (that hangs
 * or corrupts, as in MPI), and a dead member ends the mpirun job. Errors:
 *   PETREL_ERR_UNSUPPORTED  a build without MPI, fp16_wire, or MPI initialized by the
 *                           program below MPI_THREAD_SERIALIZED;
 *   PETREL_ERR_INVALID      the process was not started by mpirun, or its MPI rank and
 *                           size are not its petrel rank and size;
 *   PETREL_ERR_IO           MPI failed (its message). */
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
 * a one-member communicator rounds nothing. The MPI backend returns PETREL_ERR_IO
 * when MPI reports an error (Open MPI usually ends the job instead) and
 * PETREL_ERR_INVALID for bad arguments; it detects nothing else. */

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
    uint64_t bytes_sent, bytes_received; /* bytes of collective messages, their headers
                                            included; MPI backend: what a ring would move
                                            (nominal) */
    uint64_t payload_bytes_sent;         /* of bytes_sent, the data alone (no headers) */
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
