/*
 * The MPI backend: each collective of a petrel communicator is one MPI collective
 * (or a few, for counts above INT_MAX) on an MPI communicator of the same members
 * in the same order, so that petrel's algorithms and MPI's can be compared on the
 * same job and the same data. Compiled only with PETREL_HAVE_MPI.
 *
 * MPI ranks must be petrel ranks: the job is started by mpirun, one MPI process per
 * petrel node (petrel_job_env_read takes rank and size from Open MPI's variables, so
 * that is what happens unless PETREL_RANK overrides them); petrel_comm_new checks
 * it. A communicator's ranks[0..n) are then MPI_COMM_WORLD ranks, and
 * MPI_Group_incl keeps their order, so member m of the petrel communicator is rank
 * m of the MPI one.
 *
 * Initialization: the first MPI-backed communicator initializes MPI unless the
 * program has, asking for MPI_THREAD_MULTIPLE (different communicators on different
 * threads) and requiring MPI_THREAD_SERIALIZED (the calls of one communicator come
 * from whichever thread runs them, one at a time); MPI is finalized at exit (atexit)
 * only when initialized here. Before initializing, a process without a launcher's
 * variables (OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK) is refused: MPI would start
 * as a singleton, of one process, which cannot match a petrel job of several.
 *
 * Calls (P members, n floats):
 *   allreduce       MPI_Allreduce, MPI_IN_PLACE; SUM and MAX are MPI's; AVG is SUM,
 *                   then x / P here, the float operation petrel's backend does
 *   broadcast       MPI_Bcast
 *   allgather       MPI_Allgather, MPI_IN_PLACE (send is first copied into this
 *                   member's block, as petrel's backend does)
 *   reduce_scatter  MPI_Reduce_scatter_block; AVG as for allreduce
 *   barrier         MPI_Barrier
 * MPI counts are int. Counts above petreli_coll_mpi_max_count (INT_MAX) are split:
 * allreduce and broadcast into consecutive pieces; allgather and reduce_scatter,
 * whose pieces of the members' blocks are not contiguous, into one MPI_Bcast or
 * MPI_Reduce per piece and member, rooted at that member (no derived datatype, no
 * staging copy; only calls above 8 GiB per member take that path).
 *
 * Statistics: calls and time as petrel's backend counts them; bytes are what a
 * ring (a chain for broadcast) would move, since MPI does not say what its
 * algorithm moved.
 *
 * Not here, by MPI's design: timeouts (a member that never calls hangs the others),
 * detection of a member that calls something else (it hangs or corrupts data), and
 * surviving a dead member (Open MPI ends the whole job).
 */
#include "coll_impl.h"

#include <mpi.h>

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t petreli_coll_mpi_max_count = INT_MAX;

/* Serializes initialization against communicators created on several threads. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static void finalize_at_exit(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

static const char *thread_level_name(int level) {
    switch (level) {
    case MPI_THREAD_SINGLE:
        return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
        return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
        return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
        return "MPI_THREAD_MULTIPLE";
    default:
        return "an unknown thread level";
    }
}

/* Records that MPI function fn failed with rc in call `what`. */
static petrel_err mpi_failed(const char *what, const char *fn, int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
        len = snprintf(text, sizeof text, "error %d", rc);
    return petrel_error_set(PETREL_ERR_IO, "%s (MPI backend): %s failed: %.*s", what, fn, len,
                            text);
}

static bool started_by_launcher(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

/* MPI initialized, here or by the program, at MPI_THREAD_SERIALIZED or better. */
static petrel_err init_mpi(int net_size) {
    petrel_err err = PETREL_OK;
    pthread_mutex_lock(&init_lock);
    int initialized = 0, finalized = 0, level = MPI_THREAD_SINGLE;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
        err = petrel_error_set(PETREL_ERR_STATE, "comm_new: MPI has been finalized");
        goto done;
    }
    if (!initialized) {
        if (!started_by_launcher()) {
            err = petrel_error_set(PETREL_ERR_INVALID,
                                   "comm_new: the MPI backend needs a job started by mpirun "
                                   "(mpirun -np %d PROGRAM): no OMPI_COMM_WORLD_SIZE, PMIX_RANK "
                                   "or PMI_RANK in the environment",
                                   net_size);
            goto done;
        }
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &level);
        if (rc != MPI_SUCCESS) {
            err = mpi_failed("comm_new", "MPI_Init_thread", rc);
            goto done;
        }
        if (atexit(finalize_at_exit) != 0)
            PETREL_LOG_WARN("coll", "mpi: cannot finalize MPI at exit (atexit failed)");
    }
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_SERIALIZED)
        err = petrel_error_set(PETREL_ERR_UNSUPPORTED,
                               "comm_new: MPI was initialized with %s; the MPI backend needs "
                               "MPI_THREAD_SERIALIZED or better (initialize MPI with "
                               "MPI_Init_thread, or let petrel do it)",
                               thread_level_name(level));
done:
    pthread_mutex_unlock(&init_lock);
    return err;
}

static MPI_Comm comm_of(const petrel_comm *c) {
    return *(const MPI_Comm *)c->impl;
}

static petrel_err mpi_open(petrel_comm *c) {
    if (c->cfg.fp16_wire)
        return petrel_error_set(PETREL_ERR_UNSUPPORTED,
                                "comm_new: the MPI backend sends float32 (fp16_wire is petrel's "
                                "own backend only)");
    petrel_err err = init_mpi(c->net_size);
    if (err != PETREL_OK) return err;
    int me = petrel_net_rank(c->net), world_rank = -1, world_size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (world_rank != me || world_size != c->net_size)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "comm_new: the MPI backend needs MPI ranks equal to petrel ranks, "
                                "but this node is petrel rank %d of %d and MPI rank %d of %d "
                                "(start the job with mpirun -np %d, one process per node, "
                                "without PETREL_RANK)",
                                me, c->net_size, world_rank, world_size, c->net_size);
    MPI_Comm *mc = petrel_malloc(sizeof *mc);
    if (!mc) return PETREL_ERR_NOMEM;
    *mc = MPI_COMM_NULL;
    c->impl = mc;
    /* Communicators created at once from different threads must differ in tag. */
    int *tag_ub = NULL, flag = 0, tag = (int)c->comm_id;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag);
    if (flag && tag_ub && tag > *tag_ub) tag %= *tag_ub + 1;
    MPI_Group world, group;
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    int rc = MPI_Group_incl(world, c->size, c->ranks, &group);
    if (rc == MPI_SUCCESS) {
        rc = MPI_Comm_create_group(MPI_COMM_WORLD, group, tag, mc);
        MPI_Group_free(&group);
    }
    MPI_Group_free(&world);
    if (rc != MPI_SUCCESS) return mpi_failed("comm_new", "MPI_Comm_create_group", rc);
    MPI_Comm_set_errhandler(*mc, MPI_ERRORS_RETURN);
    int rank = -1, size = 0;
    MPI_Comm_rank(*mc, &rank);
    MPI_Comm_size(*mc, &size);
    PETREL_ASSERT(rank == c->rank && size == c->size,
                  "the MPI communicator's ranks follow the petrel communicator's members");
    return PETREL_OK;
}

static void mpi_close(petrel_comm *c) {
    MPI_Comm *mc = c->impl;
    if (!mc) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && *mc != MPI_COMM_NULL) MPI_Comm_free(mc);
    petrel_free(mc);
    c->impl = NULL;
}

/* ---- calls ------------------------------------------------------------------- */

static MPI_Op mpi_op(petrel_reduce_op op) {
    return op == PETREL_REDUCE_MAX ? MPI_MAX : MPI_SUM;
}

static size_t piece(size_t left) {
    return left < petreli_coll_mpi_max_count ? left : petreli_coll_mpi_max_count;
}

/* Counts a finished call: its time, and on success the nominal bytes (elements). */
static petrel_err account(petrel_comm *c, uint64_t start_ns, petrel_err err, uint64_t sent,
                          uint64_t received) {
    if (err == PETREL_OK) {
        atomic_fetch_add(&c->bytes_sent, sent * sizeof(float));
        atomic_fetch_add(&c->payload_bytes_sent, sent * sizeof(float));
        atomic_fetch_add(&c->bytes_received, received * sizeof(float));
    }
    atomic_fetch_add(&c->wait_ns, petrel_now_ns() - start_ns);
    return err;
}

static petrel_err mpi_allreduce(petrel_comm *c, float *data, size_t n, petrel_reduce_op op) {
    uint64_t t0 = petrel_now_ns();
    atomic_fetch_add(&c->calls, 1);
    petrel_err err = PETREL_OK;
    for (size_t at = 0, len; at < n && err == PETREL_OK; at += len) {
        len = piece(n - at);
        int rc =
            MPI_Allreduce(MPI_IN_PLACE, data + at, (int)len, MPI_FLOAT, mpi_op(op), comm_of(c));
        if (rc != MPI_SUCCESS) err = mpi_failed("allreduce", "MPI_Allreduce", rc);
    }
    if (err == PETREL_OK && op == PETREL_REDUCE_AVG && c->size > 1)
        petreli_coll_divide(data, n, (float)c->size);
    uint64_t P = (uint64_t)c->size, moved = 2 * (P - 1) * n / P;
    return account(c, t0, err, moved, moved);
}

static petrel_err mpi_broadcast(petrel_comm *c, float *data, size_t n, int root) {
    uint64_t t0 = petrel_now_ns();
    atomic_fetch_add(&c->calls, 1);
    petrel_err err = PETREL_OK;
    for (size_t at = 0, len; at < n && err == PETREL_OK; at += len) {
        len = piece(n - at);
        int rc = MPI_Bcast(data + at, (int)len, MPI_FLOAT, root, comm_of(c));
        if (rc != MPI_SUCCESS) err = mpi_failed("broadcast", "MPI_Bcast", rc);
    }
    int pos = ((c->rank - root) % c->size + c->size) % c->size; /* place in the chain */
    return account(c, t0, err, pos < c->size - 1 ? n : 0, pos > 0 ? n : 0);
}

static petrel_err mpi_allgather(petrel_comm *c, const float *send, size_t n, float *recv) {
    uint64_t t0 = petrel_now_ns();
    atomic_fetch_add(&c->calls, 1);
    petrel_err err = PETREL_OK;
    if (n) {
        float *own = recv + (size_t)c->rank * n;
        if (send != own) memmove(own, send, n * sizeof *own);
        if (n <= petreli_coll_mpi_max_count) {
            int rc = MPI_Allgather(MPI_IN_PLACE, 0, MPI_FLOAT, recv, (int)n, MPI_FLOAT, comm_of(c));
            if (rc != MPI_SUCCESS) err = mpi_failed("allgather", "MPI_Allgather", rc);
        }
        for (size_t at = 0, len; n > petreli_coll_mpi_max_count && at < n && err == PETREL_OK;
             at += len) {
            len = piece(n - at);
            for (int m = 0; m < c->size && err == PETREL_OK; m++) {
                int rc = MPI_Bcast(recv + (size_t)m * n + at, (int)len, MPI_FLOAT, m, comm_of(c));
                if (rc != MPI_SUCCESS) err = mpi_failed("allgather", "MPI_Bcast", rc);
            }
        }
    }
    uint64_t moved = (uint64_t)(c->size - 1) * n;
    return account(c, t0, err, moved, moved);
}

static petrel_err mpi_reduce_scatter(petrel_comm *c, const float *send, size_t n, float *recv,
                                     petrel_reduce_op op) {
    uint64_t t0 = petrel_now_ns();
    atomic_fetch_add(&c->calls, 1);
    petrel_err err = PETREL_OK;
    if (n && n <= petreli_coll_mpi_max_count) {
        int rc = MPI_Reduce_scatter_block(send, recv, (int)n, MPI_FLOAT, mpi_op(op), comm_of(c));
        if (rc != MPI_SUCCESS) err = mpi_failed("reduce_scatter", "MPI_Reduce_scatter_block", rc);
    }
    for (size_t at = 0, len; n > petreli_coll_mpi_max_count && at < n && err == PETREL_OK;
         at += len) {
        len = piece(n - at);
        for (int m = 0; m < c->size && err == PETREL_OK; m++) {
            int rc = MPI_Reduce(send + (size_t)m * n + at, m == c->rank ? recv + at : NULL,
                                (int)len, MPI_FLOAT, mpi_op(op), m, comm_of(c));
            if (rc != MPI_SUCCESS) err = mpi_failed("reduce_scatter", "MPI_Reduce", rc);
        }
    }
    if (err == PETREL_OK && op == PETREL_REDUCE_AVG && c->size > 1)
        petreli_coll_divide(recv, n, (float)c->size);
    uint64_t moved = (uint64_t)(c->size - 1) * n;
    return account(c, t0, err, moved, moved);
}

static petrel_err mpi_barrier(petrel_comm *c) {
    uint64_t t0 = petrel_now_ns();
    atomic_fetch_add(&c->calls, 1);
    int rc = MPI_Barrier(comm_of(c));
    return account(c, t0, rc == MPI_SUCCESS ? PETREL_OK : mpi_failed("barrier", "MPI_Barrier", rc),
                   0, 0);
}

const petreli_coll_ops petreli_coll_mpi = {.name = "mpi",
                                           .open = mpi_open,
                                           .close = mpi_close,
                                           .allreduce = mpi_allreduce,
                                           .broadcast = mpi_broadcast,
                                           .allgather = mpi_allgather,
                                           .reduce_scatter = mpi_reduce_scatter,
                                           .barrier = mpi_barrier};
