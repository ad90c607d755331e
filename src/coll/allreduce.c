/*
 * Allreduce: the ring (reduce-scatter then allgather), recursive doubling, and
 * the pipelined ring schedule that the ring collectives share.
 *
 * Ring, P members, n elements: x is cut into P blocks of n / P or n / P + 1
 * elements, and each block into chunks of at most chunk_bytes on the wire (the
 * same number for every block). Member r sends to r + 1 and receives from r - 1:
 *   reduce-scatter, steps s = 0 .. P-2: send block r - s, receive block r - s - 1
 *     and add it into x; after the last step block r + 1 is complete on member r
 *     (an average divides it there);
 *   allgather, steps t = 0 .. P-2: send block r + 1 - t, receive block r - t and
 *     copy it into x.
 * The steps run segment by segment: all steps over chunks 0 .. Cs-1 of every
 * block (Cs = PETRELI_SEGMENT_CHUNKS or fewer), then over the next Cs chunks, so
 * that a chunk reduced in one step is sent on in the next while still in cache.
 * Message i of a segment is step i / Cs, chunk i % Cs. Its outgoing data is what
 * came in as message i - Cs, so message i is sent once message i - Cs has come in,
 * and at most RING_WINDOW messages ahead of the one awaited: the chunk forwarded
 * next is on its way while the previous one is reduced. Each member sends
 * 2 (P-1) n / P elements, the least possible for an allreduce.
 *
 * Deadlock: every member sends before it waits, and a send completes once the
 * bytes are in the socket or the shared-memory ring, from which the receiver's
 * I/O thread moves them to its mailbox whatever the receiver's application thread
 * is doing. So no cycle of members blocked in send can form.
 *
 * Recursive doubling, P a power of two: in step k = 0 .. log2 P - 1 member r
 * exchanges its whole vector with r ^ 2^k and both add; log2 P steps of n
 * elements each, for small vectors where the ring's 2 (P-1) latencies dominate.
 * For other P, with P' the largest power of two below P and e = P - P': members
 * 2i and 2i + 1 for i < e first fold (2i sends to 2i + 1), the P' members left
 * (2i + 1 for i < e, and all from 2e) run recursive doubling, and 2i + 1 finally
 * sends the result back to 2i.
 *
 * Identical results: in the ring every block is reduced once, on one member, and
 * copied to the others. In recursive doubling both partners add the same two
 * values in the same order (the lower member's first). With float16 on the wire,
 * a member rounds its own values whenever the other side receives them rounded,
 * so every member ends with the same bits either way.
 */
#include "coll_impl.h"

#define RING_WINDOW 4 /* messages sent ahead of the one awaited */

petrel_err petreli_ring_run(petreli_coll_call *call, int next, int prev, size_t M, size_t C,
                            petreli_ring_plan plan, const void *ctx) {
    bool f16 = call->want.dtype == PETRELI_DTYPE_F16;
    petrel_reduce_op op = (petrel_reduce_op)call->want.op;
    float P = (float)call->c->size;
    size_t sent = 0, done = 0;
    petreli_ring_io io;
    petrel_err err;
    while (done < M) {
        while (sent < M && sent < done + RING_WINDOW && sent < done + C) {
            plan(ctx, sent, &io);
            if ((err = petreli_coll_send(call, next, io.send, io.send_n, io.round_own)) !=
                PETREL_OK)
                return err;
            sent++;
        }
        plan(ctx, done, &io);
        petreli_coll_in in;
        if ((err = petreli_coll_recv(call, prev, io.recv_n, &in)) != PETREL_OK) return err;
        if (io.base)
            petreli_coll_reduce(io.recv, io.base, in.data, f16, io.recv_n, op, false);
        else
            petreli_coll_decode(io.recv, in.data, f16, io.recv_n);
        if (io.last && op == PETREL_REDUCE_AVG) petreli_coll_divide(io.recv, io.recv_n, P);
        petreli_coll_release(&in);
        done++;
    }
    return PETREL_OK;
}

/* ---- ring ---------------------------------------------------------------------- */

typedef struct ring_plan {
    float *x;
    size_t n, chunks, Cs; /* chunks per block: G * Cs */
    int P, r;
} ring_plan;

static int mod(int a, int P) {
    return ((a % P) + P) % P;
}

/* Chunk c of block b of x. */
static float *chunk(const ring_plan *p, int b, size_t c, size_t *len) {
    size_t start = petreli_part_start(p->n, (size_t)p->P, (size_t)b);
    size_t blen = petreli_part_len(p->n, (size_t)p->P, (size_t)b);
    *len = petreli_part_len(blen, p->chunks, c);
    return p->x + start + petreli_part_start(blen, p->chunks, c);
}

static void allreduce_plan(const void *ctx, size_t i, petreli_ring_io *io) {
    const ring_plan *p = ctx;
    int s, P = p->P, r = p->r;
    size_t c;
    petreli_ring_index(i, 2 * (size_t)(P - 1), p->Cs, &s, &c);
    if (s < P - 1) { /* reduce-scatter */
        io->send = chunk(p, mod(r - s, P), c, &io->send_n);
        io->round_own = false;
        io->recv = chunk(p, mod(r - s - 1, P), c, &io->recv_n);
        io->base = io->recv;
        io->last = s == P - 2;
    } else { /* allgather */
        int t = s - (P - 1);
        io->send = chunk(p, mod(r + 1 - t, P), c, &io->send_n);
        io->round_own = t == 0; /* our own block: keep what the others get */
        io->recv = chunk(p, mod(r - t, P), c, &io->recv_n);
        io->base = NULL;
        io->last = false;
    }
}

static petrel_err ring_allreduce(petreli_coll_call *call, float *x, size_t n) {
    petrel_comm *c = call->c;
    int P = c->size, r = c->rank;
    ring_plan p = {.x = x, .n = n, .P = P, .r = r};
    size_t G;
    petreli_ring_shape(call, n / (size_t)P + (n % (size_t)P != 0), &G, &p.Cs);
    p.chunks = G * p.Cs;
    size_t M = 2 * (size_t)(P - 1) * p.chunks;
    return petreli_ring_run(call, (r + 1) % P, (r + P - 1) % P, M, p.Cs, allreduce_plan, &p);
}

/* ---- recursive doubling ---------------------------------------------------------- */

/* x (n) to member peer, in chunks. */
static petrel_err send_all(petreli_coll_call *call, int peer, float *x, size_t n, bool round_own) {
    size_t C = petreli_coll_chunks(call, n);
    for (size_t i = 0; i < C; i++) {
        petrel_err err = petreli_coll_send(call, peer, x + petreli_part_start(n, C, i),
                                           petreli_part_len(n, C, i), round_own);
        if (err != PETREL_OK) return err;
    }
    return PETREL_OK;
}

/* x (n) from member peer: reduced into x (in_first: peer's values first), or copied. */
static petrel_err recv_all(petreli_coll_call *call, int peer, float *x, size_t n, bool reduce,
                           bool in_first) {
    bool f16 = call->want.dtype == PETRELI_DTYPE_F16;
    petrel_reduce_op op = (petrel_reduce_op)call->want.op;
    size_t C = petreli_coll_chunks(call, n);
    for (size_t i = 0; i < C; i++) {
        float *at = x + petreli_part_start(n, C, i);
        size_t len = petreli_part_len(n, C, i);
        petreli_coll_in in;
        petrel_err err = petreli_coll_recv(call, peer, len, &in);
        if (err != PETREL_OK) return err;
        if (reduce)
            petreli_coll_reduce(at, at, in.data, f16, len, op, in_first);
        else
            petreli_coll_decode(at, in.data, f16, len);
        petreli_coll_release(&in);
    }
    return PETREL_OK;
}

/* Both send x to peer and reduce peer's x into it, chunk by chunk; a chunk goes out
 * before the peer's chunk lands on it. */
static petrel_err exchange(petreli_coll_call *call, int peer, float *x, size_t n) {
    bool f16 = call->want.dtype == PETRELI_DTYPE_F16;
    petrel_reduce_op op = (petrel_reduce_op)call->want.op;
    bool in_first = peer < call->c->rank;
    size_t C = petreli_coll_chunks(call, n), sent = 0, done = 0;
    petrel_err err;
    while (done < C) {
        while (sent < C && sent < done + RING_WINDOW) {
            if ((err = petreli_coll_send(call, peer, x + petreli_part_start(n, C, sent),
                                         petreli_part_len(n, C, sent), true)) != PETREL_OK)
                return err;
            sent++;
        }
        float *at = x + petreli_part_start(n, C, done);
        size_t len = petreli_part_len(n, C, done);
        petreli_coll_in in;
        if ((err = petreli_coll_recv(call, peer, len, &in)) != PETREL_OK) return err;
        petreli_coll_reduce(at, at, in.data, f16, len, op, in_first);
        petreli_coll_release(&in);
        done++;
    }
    return PETREL_OK;
}

static petrel_err rd_allreduce(petreli_coll_call *call, float *x, size_t n) {
    petrel_comm *c = call->c;
    int P = c->size, r = c->rank, P2 = 1;
    while (P2 * 2 <= P) P2 *= 2;
    int extra = P - P2, vr;
    petrel_err err;
    if (r < 2 * extra) {
        if (r % 2 == 0) { /* folded: hand x over, get the result back */
            if ((err = send_all(call, r + 1, x, n, false)) != PETREL_OK) return err;
            return recv_all(call, r + 1, x, n, false, false);
        }
        if ((err = recv_all(call, r - 1, x, n, true, true)) != PETREL_OK) return err;
        vr = r / 2;
    } else {
        vr = r - extra;
    }
    for (int bit = 1; bit < P2; bit *= 2) {
        int vp = vr ^ bit, peer = vp < extra ? 2 * vp + 1 : vp + extra;
        if ((err = exchange(call, peer, x, n)) != PETREL_OK) return err;
    }
    if (call->want.op == PETREL_REDUCE_AVG) petreli_coll_divide(x, n, (float)P);
    /* The folded members get the result in float16: every member keeps that. */
    if (extra && call->want.dtype == PETRELI_DTYPE_F16) petreli_coll_round_f16(x, n);
    if (r < 2 * extra) return send_all(call, r - 1, x, n, false);
    return PETREL_OK;
}

petrel_err petreli_petrel_allreduce(petrel_comm *c, float *data, size_t n, petrel_reduce_op op) {
    petrel_coll_algo algo = c->cfg.algo;
    bool local = c->size > 1 && petreli_local_eligible(c);
    if (algo == PETREL_ALGO_AUTO) /* on one host SHM wins at every size (docs/collectives.md) */
        algo = local                                       ? PETREL_ALGO_SHM
               : n * sizeof(float) < c->cfg.ring_min_bytes ? PETREL_ALGO_RECURSIVE_DOUBLING
                                                           : PETREL_ALGO_RING;
    if (algo == PETREL_ALGO_SHM && c->size > 1 && !local)
        return petrel_error_set(PETREL_ERR_UNSUPPORTED,
                                "allreduce: PETREL_ALGO_SHM needs every member on this host, "
                                "with the shared-memory transport (PETREL_TRANSPORT_AUTO)");
    static float none; /* n = 0 may come with NULL: no pointer arithmetic on it */
    if (!data) data = &none;
    petreli_coll_call call;
    petreli_coll_begin(&call, c, PETRELI_COLL_ALLREDUCE, op, n, 0, algo);
    petrel_err err = PETREL_OK;
    if (c->size > 1)
        err = algo == PETREL_ALGO_RING  ? ring_allreduce(&call, data, n)
              : algo == PETREL_ALGO_SHM ? petreli_local_allreduce(&call, data, n)
                                        : rd_allreduce(&call, data, n);
    return petreli_coll_end(&call, err);
}
