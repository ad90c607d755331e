/*
 * The public collective calls: the checks that every backend shares (a bad
 * argument fails on this member before anything is sent, and the call does not
 * count), then the communicator's backend (petreli_coll_ops: petrel's own
 * algorithms, or MPI's).
 */
#include "coll_impl.h"

bool petrel_coll_backend_available(petrel_coll_backend backend) {
    switch (backend) {
    case PETREL_BACKEND_PETREL:
        return true;
    case PETREL_BACKEND_MPI:
#ifdef PETREL_HAVE_MPI
        return true;
#else
        return false;
#endif
    case PETREL_BACKEND_COUNT:
        break;
    }
    return false;
}

const char *petrel_coll_backend_name(petrel_coll_backend backend) {
    switch (backend) {
    case PETREL_BACKEND_PETREL:
        return "petrel";
    case PETREL_BACKEND_MPI:
        return "mpi";
    case PETREL_BACKEND_COUNT:
        break;
    }
    return "unknown";
}

petrel_err petrel_allreduce(petrel_comm *c, float *data, size_t n, petrel_reduce_op op) {
    PETREL_ASSERT(c && (data || n == 0), "allreduce needs a communicator and n floats at data");
    if ((unsigned)op >= PETREL_REDUCE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "allreduce: reduction %d is unknown", (int)op);
    return c->ops->allreduce(c, data, n, op);
}

petrel_err petrel_broadcast(petrel_comm *c, float *data, size_t n, int root) {
    PETREL_ASSERT(c && (data || n == 0), "broadcast needs a communicator and n floats at data");
    if (root < 0 || root >= c->size)
        return petrel_error_set(PETREL_ERR_INVALID, "broadcast: root %d is not a member (0..%d)",
                                root, c->size - 1);
    return c->ops->broadcast(c, data, n, root);
}

petrel_err petrel_allgather(petrel_comm *c, const float *send, size_t n, float *recv) {
    PETREL_ASSERT(c && ((send && recv) || n == 0), "allgather needs send (n) and recv (size n)");
    return c->ops->allgather(c, send, n, recv);
}

petrel_err petrel_reduce_scatter(petrel_comm *c, const float *send, size_t n, float *recv,
                                 petrel_reduce_op op) {
    PETREL_ASSERT(c && ((send && recv) || n == 0), "reduce_scatter needs send (size n), recv (n)");
    uintptr_t s0 = (uintptr_t)send, r0 = (uintptr_t)recv, bytes = n * sizeof(float);
    PETREL_ASSERT(n == 0 || r0 + bytes <= s0 || s0 + (size_t)c->size * bytes <= r0,
                  "reduce_scatter: recv must not overlap send");
    if ((unsigned)op >= PETREL_REDUCE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "reduce_scatter: reduction %d is unknown",
                                (int)op);
    return c->ops->reduce_scatter(c, send, n, recv, op);
}

petrel_err petrel_comm_barrier(petrel_comm *c) {
    PETREL_ASSERT(c, "barrier needs a communicator");
    return c->ops->barrier(c);
}
