/*
 * Broadcast (a pipelined chain), allgather and reduce-scatter (rings, on the
 * schedule of petreli_ring_run in allreduce.c), and the barrier (dissemination).
 *
 * Broadcast: the members in ring order from the root form a chain; the root sends
 * its vector in chunks to the next member, and every member forwards each chunk,
 * straight from the received buffer, before it copies it into place. P - 1 + C
 * chunk times for C chunks: a pipelined chain moves large vectors at link speed;
 * small ones pay P - 1 latencies (a binomial tree would pay log2 P).
 *
 * Allgather, blocks of n: member r first puts its own block in place; in step
 * s = 0 .. P-2 it sends block r - s and receives block r - s - 1.
 *
 * Reduce-scatter, blocks of n: in step s = 0 .. P-2 member r sends block
 * r - s - 1 (from send at s = 0, then the partial sum in recv) and receives the
 * partial of block r - s - 2, adding its own values of that block into recv;
 * after the last step recv holds block r, complete.
 *
 * Both go through their blocks segment by segment, as the ring allreduce does
 * (petreli_ring_index).
 *
 * Barrier: in round k = 0 .. ceil(log2 P) - 1 member r sends an empty message to
 * r + 2^k and waits for one from r - 2^k; after the last round every member has
 * heard, directly or not, from every other since it entered.
 */
#include "coll_impl.h"

#include <string.h>

static int mod(int a, int P) {
    return ((a % P) + P) % P;
}

/* ---- broadcast -------------------------------------------------------------------- */

static petrel_err chain(petreli_coll_call *call, float *x, size_t n, int root) {
    petrel_comm *c = call->c;
    bool f16 = call->want.dtype == PETRELI_DTYPE_F16;
    int P = c->size, r = c->rank, pos = mod(r - root, P);
    int next = pos < P - 1 ? (r + 1) % P : -1, prev = (r + P - 1) % P;
    size_t C = petreli_coll_chunks(call, n);
    petrel_err err = PETREL_OK;
    for (size_t i = 0; i < C && err == PETREL_OK; i++) {
        float *at = x + petreli_part_start(n, C, i);
        size_t len = petreli_part_len(n, C, i);
        if (pos == 0) { /* the root keeps what the others get */
            err = petreli_coll_send(call, next, at, len, true);
            continue;
        }
        petreli_coll_in in;
        if ((err = petreli_coll_recv(call, prev, len, &in)) != PETREL_OK) break;
        if (next >= 0) err = petreli_coll_send_raw(call, next, in.data, len);
        petreli_coll_decode(at, in.data, f16, len);
        petreli_coll_release(&in);
    }
    return err;
}

petrel_err petreli_petrel_broadcast(petrel_comm *c, float *data, size_t n, int root) {
    static float none; /* n = 0 may come with NULL: no pointer arithmetic on it */
    if (!data) data = &none;
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_BROADCAST, PETREL_REDUCE_SUM, n, root,
                       PETREL_ALGO_AUTO);
    petrel_err err = c->size > 1 ? chain(&call, data, n, root) : PETREL_OK;
    return petreli_coll_end(&call, err);
}

/* ---- allgather ---------------------------------------------------------------------- */

typedef struct block_plan {
    float *x;             /* P blocks of n: allgather's recv; reduce-scatter's send */
    float *partial;       /* reduce-scatter: recv (n) */
    size_t n, chunks, Cs; /* chunks per block: G segments of Cs */
    int P, r;
} block_plan;

static float *block_chunk(const block_plan *p, float *base, size_t c, size_t *len) {
    *len = petreli_part_len(p->n, p->chunks, c);
    return base + petreli_part_start(p->n, p->chunks, c);
}

/* The ring schedule over blocks of n: M messages each way. */
static size_t block_shape(petreli_coll_call *call, block_plan *p) {
    size_t G;
    petreli_ring_shape(call, p->n, &G, &p->Cs);
    p->chunks = G * p->Cs;
    return (size_t)(p->P - 1) * p->chunks;
}

static void allgather_plan(const void *ctx, size_t i, petreli_ring_io *io) {
    const block_plan *p = ctx;
    int s;
    size_t c;
    petreli_ring_index(i, (size_t)p->P - 1, p->Cs, &s, &c);
    io->send = block_chunk(p, p->x + (size_t)mod(p->r - s, p->P) * p->n, c, &io->send_n);
    io->round_own = s == 0;
    io->recv = block_chunk(p, p->x + (size_t)mod(p->r - s - 1, p->P) * p->n, c, &io->recv_n);
    io->base = NULL;
    io->last = false;
}

petrel_err petreli_petrel_allgather(petrel_comm *c, const float *send, size_t n, float *recv) {
    static float none;
    if (!send || !recv) send = recv = &none;
    /* On one host, through the shared segments (local.c) unless the communicator
     * asks for messages (RING or RECURSIVE_DOUBLING); stated in the call's header, so
     * that members configured otherwise are told apart. */
    bool local = c->size > 1 &&
                 (c->cfg.algo == PETREL_ALGO_AUTO || c->cfg.algo == PETREL_ALGO_SHM) &&
                 petreli_local_eligible(c);
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_ALLGATHER, PETREL_REDUCE_SUM, n, 0,
                       local ? PETREL_ALGO_SHM : PETREL_ALGO_AUTO);
    float *own = recv + (size_t)c->rank * n;
    if (n && send != own) memmove(own, send, n * sizeof *own);
    petrel_err err = PETREL_OK;
    if (local) {
        err = petreli_local_allgather(&call, own, n, recv);
    } else if (c->size > 1) {
        block_plan p = {.x = recv, .n = n, .P = c->size, .r = c->rank};
        size_t M = block_shape(&call, &p);
        err = petreli_ring_run(&call, (p.r + 1) % p.P, (p.r + p.P - 1) % p.P, M, p.Cs,
                               allgather_plan, &p);
    }
    return petreli_coll_end(&call, err);
}

/* ---- reduce-scatter ------------------------------------------------------------------ */

static void reduce_scatter_plan(const void *ctx, size_t i, petreli_ring_io *io) {
    const block_plan *p = ctx;
    int s;
    size_t c;
    petreli_ring_index(i, (size_t)p->P - 1, p->Cs, &s, &c);
    float *from = s == 0 ? p->x + (size_t)mod(p->r - s - 1, p->P) * p->n : p->partial;
    io->send = block_chunk(p, from, c, &io->send_n);
    io->round_own = false;
    io->recv = block_chunk(p, p->partial, c, &io->recv_n);
    size_t len;
    io->base = block_chunk(p, p->x + (size_t)mod(p->r - s - 2, p->P) * p->n, c, &len);
    io->last = s == p->P - 2;
}

petrel_err petreli_petrel_reduce_scatter(petrel_comm *c, const float *send, size_t n, float *recv,
                                         petrel_reduce_op op) {
    static float none;
    if (!send || !recv) send = recv = &none;
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_REDUCE_SCATTER, op, n, 0, PETREL_ALGO_AUTO);
    petrel_err err = PETREL_OK;
    if (c->size == 1) {
        if (n) memcpy(recv, send, n * sizeof *recv);
    } else {
        /* send is only read: the plan's pointer into it is never written (round_own
         * is false for it). */
        block_plan p = {.x = (float *)send, .partial = recv, .n = n, .P = c->size, .r = c->rank};
        size_t M = block_shape(&call, &p);
        err = petreli_ring_run(&call, (p.r + 1) % p.P, (p.r + p.P - 1) % p.P, M, p.Cs,
                               reduce_scatter_plan, &p);
    }
    return petreli_coll_end(&call, err);
}

/* ---- barrier ------------------------------------------------------------------------- */

petrel_err petreli_petrel_barrier(petrel_comm *c) {
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_BARRIER, PETREL_REDUCE_SUM, 0, 0, PETREL_ALGO_AUTO);
    petrel_err err = PETREL_OK;
    int P = c->size, r = c->rank;
    for (int d = 1; d < P && err == PETREL_OK; d *= 2) {
        petreli_coll_in in;
        if ((err = petreli_coll_send_raw(&call, (r + d) % P, NULL, 0)) != PETREL_OK) break;
        if ((err = petreli_coll_recv(&call, mod(r - d, P), 0, &in)) != PETREL_OK) break;
        petreli_coll_release(&in);
    }
    return petreli_coll_end(&call, err);
}
