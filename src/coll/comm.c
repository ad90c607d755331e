/*
 * Communicators and the messages of a collective call.
 *
 * Every call on a communicator gets the next number (from 1) on every member.
 * Each message of a call travels as type PETREL_MSG_COLL with the id
 * comm_id << 16 | (number & 0xffff), so that communicators sharing a net, and
 * consecutive calls, never take each other's messages, and starts with this
 * little-endian header, which states the sender's whole call:
 *
 *   offset  width  field
 *   0       4      magic: the bytes "PCOL"
 *   4       4      call number (from 1)
 *   8       1      kind: 1 allreduce, 2 broadcast, 3 allgather, 4 reduce_scatter,
 *                  5 barrier, 6 ABORT, 7 NOTICE
 *   9       1      reduction: 0 sum, 1 avg, 2 max (0 when the call has none)
 *   10      1      element type on the wire: 0 float32, 1 float16
 *   11      1      allreduce algorithm: 1 ring, 2 recursive doubling, 3 shared memory;
 *                  allgather: 3 shared memory (0 otherwise, and for other kinds)
 *   12      8      element count (per member for allgather and reduce_scatter)
 *   20      4      root of a broadcast; ABORT: the error code; NOTICE: the member
 *                  the sender waits for
 *   24      4      step: how many messages the sender sent this receiver before
 *                  this one in the same call
 *   28      4      chunk_bytes of the sender's configuration (messages are cut by it)
 *   32      ...    elements (float32 or float16, host byte order); ABORT: why, as text
 *
 * The receiver compares every message of its call against its own call: another
 * kind, count, reduction, root, element type, algorithm or chunk size is
 * PETREL_ERR_STATE naming both members and both calls, and so is a step out of
 * order.
 *
 * Receiving takes any message of the call's id (PETREL_ANY_SOURCE), so that an
 * ABORT from any member is seen at once; messages from members other than the
 * one awaited wait in a small stash. Waits are sliced (SLICE_NS) to check that the
 * member awaited is alive, since a receive from any source does not fail when it
 * dies.
 *
 * When a call fails on a member (a mismatch, a dead member, a timeout), that
 * member sends ABORT with the reason to all others, which fail with it at once
 * instead of waiting out their own timeouts. A member still waiting at 80% of the
 * timeout sends NOTICE ("I am in call n, waiting for member m") to all: at the
 * timeout, members then tell a member that never called (nothing heard from it)
 * from one that called but waits for someone else, and name the first.
 */
#include "coll_impl.h"

#include <stdio.h>
#include <string.h>

#define SLICE_NS   (10 * 1000000ull) /* longest wait between liveness checks */
#define CONTROL_MS 10                /* bound on sending one ABORT or NOTICE */

/* ---- header ------------------------------------------------------------------ */

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void petreli_coll_header_encode(const petreli_coll_header *h, unsigned char *out) {
    put32(out, PETRELI_COLL_MAGIC);
    put32(out + 4, h->seq);
    out[8] = h->kind;
    out[9] = h->op;
    out[10] = h->dtype;
    out[11] = h->algo;
    put32(out + 12, (uint32_t)h->count);
    put32(out + 16, (uint32_t)(h->count >> 32));
    put32(out + 20, h->root);
    put32(out + 24, h->step);
    put32(out + 28, h->chunk);
}

bool petreli_coll_header_decode(const unsigned char *in, petreli_coll_header *h) {
    if (get32(in) != PETRELI_COLL_MAGIC) return false;
    h->seq = get32(in + 4);
    h->kind = in[8];
    h->op = in[9];
    h->dtype = in[10];
    h->algo = in[11];
    h->count = (uint64_t)get32(in + 12) | (uint64_t)get32(in + 16) << 32;
    h->root = get32(in + 20);
    h->step = get32(in + 24);
    h->chunk = get32(in + 28);
    return true;
}

/* ---- communicators ------------------------------------------------------------- */

petrel_comm_config petrel_comm_config_default(void) {
    return (petrel_comm_config){.timeout_ms = 30000,
                                .algo = PETREL_ALGO_AUTO,
                                .ring_min_bytes = (size_t)64 << 10,
                                .chunk_bytes = (size_t)256 << 10,
                                .fp16_wire = false,
                                .backend = PETREL_BACKEND_PETREL};
}

const petreli_coll_ops petreli_coll_petrel = {.name = "petrel",
                                              .allreduce = petreli_petrel_allreduce,
                                              .broadcast = petreli_petrel_broadcast,
                                              .allgather = petreli_petrel_allgather,
                                              .reduce_scatter = petreli_petrel_reduce_scatter,
                                              .barrier = petreli_petrel_barrier};

/* The backend's table. */
static petrel_err backend_ops(petrel_coll_backend backend, const petreli_coll_ops **out) {
    switch (backend) {
    case PETREL_BACKEND_PETREL:
        *out = &petreli_coll_petrel;
        return PETREL_OK;
    case PETREL_BACKEND_MPI:
#ifdef PETREL_HAVE_MPI
        *out = &petreli_coll_mpi;
        return PETREL_OK;
#else
        return petrel_error_set(PETREL_ERR_UNSUPPORTED,
                                "comm_new: the MPI backend is not in this build (built without "
                                "MPI: install libopenmpi-dev and rebuild)");
#endif
    case PETREL_BACKEND_COUNT:
        break;
    }
    return petrel_error_set(PETREL_ERR_INVALID, "comm_new: backend %d is unknown", (int)backend);
}

petrel_err petrel_comm_new(petrel_comm **out, petrel_net *net, const int *ranks, int n,
                           uint32_t comm_id, petrel_comm_config cfg) {
    if (!out || !net || !ranks || n < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "comm_new: needs a net and n >= 1 ranks");
    if (comm_id > 0xffff)
        return petrel_error_set(PETREL_ERR_INVALID, "comm_new: comm_id %u is not in 0..65535",
                                comm_id);
    if (cfg.timeout_ms <= 0 || (unsigned)cfg.algo >= PETREL_ALGO_COUNT || cfg.chunk_bytes < 64 ||
        cfg.chunk_bytes > ((size_t)256 << 20))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "comm_new: timeout_ms %d (> 0), algo %d, chunk_bytes %zu (64 B to "
                                "256 MiB)",
                                cfg.timeout_ms, (int)cfg.algo, cfg.chunk_bytes);
    const petreli_coll_ops *ops = NULL;
    petrel_err berr = backend_ops(cfg.backend, &ops);
    if (berr != PETREL_OK) return berr;
    int net_size = petrel_net_size(net), me = petrel_net_rank(net);
    petrel_comm *c = petrel_calloc(1, sizeof *c);
    if (!c) return PETREL_ERR_NOMEM;
    c->ops = ops;
    c->net = net;
    c->size = n;
    c->rank = -1;
    c->net_size = net_size;
    c->comm_id = comm_id;
    c->cfg = cfg;
    petrel_err err = PETREL_ERR_NOMEM;
    c->ranks = petrel_malloc((size_t)n * sizeof *c->ranks);
    c->member_of = petrel_malloc((size_t)net_size * sizeof *c->member_of);
    c->sent = petrel_calloc((size_t)n, sizeof *c->sent);
    c->recvd = petrel_calloc((size_t)n, sizeof *c->recvd);
    c->heard = petrel_calloc((size_t)n, sizeof *c->heard);
    c->waits_for = petrel_calloc((size_t)n, sizeof *c->waits_for);
    if (!c->ranks || !c->member_of || !c->sent || !c->recvd || !c->heard || !c->waits_for)
        goto fail;
    for (int r = 0; r < net_size; r++) c->member_of[r] = -1;
    for (int m = 0; m < n; m++) {
        int r = ranks[m];
        if (r < 0 || r >= net_size || c->member_of[r] >= 0) {
            err = petrel_error_set(
                PETREL_ERR_INVALID, "comm_new: ranks[%d] = %d is %s (a job of %d nodes)", m, r,
                r < 0 || r >= net_size ? "out of range" : "listed twice", net_size);
            goto fail;
        }
        c->ranks[m] = r;
        c->member_of[r] = m;
        if (r == me) c->rank = m;
    }
    if (c->rank < 0) {
        err = petrel_error_set(PETREL_ERR_INVALID,
                               "comm_new: ranks does not include this node (%d)", me);
        goto fail;
    }
    if (ops->open && (err = ops->open(c)) != PETREL_OK) goto fail;
    *out = c;
    return PETREL_OK;
fail:
    petrel_comm_free(c);
    return err;
}

void petrel_comm_free(petrel_comm *c) {
    if (!c) return;
    if (c->ops && c->ops->close) c->ops->close(c);
    petreli_local_free(c);
    for (int i = 0; i < c->nstash; i++) petrel_msg_release(&c->stash[i]);
    petrel_free(c->stash);
    petrel_free(c->half);
    petrel_free(c->waits_for);
    petrel_free(c->heard);
    petrel_free(c->recvd);
    petrel_free(c->sent);
    petrel_free(c->member_of);
    petrel_free(c->ranks);
    petrel_free(c);
}

int petrel_comm_rank(const petrel_comm *c) {
    return c->rank;
}

int petrel_comm_size(const petrel_comm *c) {
    return c->size;
}

petrel_comm_stats petrel_comm_get_stats(const petrel_comm *c) {
    petrel_comm *m = (petrel_comm *)c; /* atomics: readable from any thread */
    return (petrel_comm_stats){.calls = atomic_load(&m->calls),
                               .bytes_sent = atomic_load(&m->bytes_sent),
                               .bytes_received = atomic_load(&m->bytes_received),
                               .payload_bytes_sent = atomic_load(&m->payload_bytes_sent),
                               .wait_s = (double)atomic_load(&m->wait_ns) * 1e-9};
}

/* ---- names, for error messages ---------------------------------------------------- */

static const char *kind_name(int kind) {
    static const char *names[] = {
        "?", "allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "abort", "notice"};
    return kind > 0 && kind < PETRELI_COLL_KIND_COUNT ? names[kind] : "?";
}

static const char *op_name(int op) {
    static const char *names[] = {"sum", "avg", "max"};
    return op >= 0 && op < PETREL_REDUCE_COUNT ? names[op] : "?";
}

const char *petreli_coll_member_name(const petrel_comm *c, int m, char *buf, size_t size) {
    if (m < 0 || m >= c->size || c->ranks[m] == m)
        snprintf(buf, size, "rank %d", m);
    else
        snprintf(buf, size, "rank %d (node %d)", m, c->ranks[m]);
    return buf;
}

/* "allreduce of 1000 floats (sum)"; detail adds the algorithm and the wire type. */
static const char *describe(const petreli_coll_header *h, bool detail, char *buf, size_t size) {
    unsigned long long n = (unsigned long long)h->count;
    const char *s = n == 1 ? "" : "s";
    char extra[96] = "";
    if (detail)
        snprintf(extra, sizeof extra, "%s%s, %u-byte chunks",
                 h->algo == PETREL_ALGO_RING                 ? ", ring"
                 : h->algo == PETREL_ALGO_RECURSIVE_DOUBLING ? ", recursive doubling"
                 : h->algo == PETREL_ALGO_SHM                ? ", shared memory"
                                                             : "",
                 h->dtype == PETRELI_DTYPE_F16 ? ", float16 wire" : ", float32 wire", h->chunk);
    switch (h->kind) {
    case PETRELI_COLL_ALLREDUCE:
        snprintf(buf, size, "allreduce of %llu float%s (%s%s)", n, s, op_name(h->op), extra);
        break;
    case PETRELI_COLL_BROADCAST:
        snprintf(buf, size, "broadcast of %llu float%s from rank %u%s%s%s", n, s, h->root,
                 detail ? " (" : "", detail ? extra + 2 : "", detail ? ")" : "");
        break;
    case PETRELI_COLL_ALLGATHER:
        snprintf(buf, size, "allgather of %llu float%s per rank%s%s%s", n, s, detail ? " (" : "",
                 detail ? extra + 2 : "", detail ? ")" : "");
        break;
    case PETRELI_COLL_REDUCE_SCATTER:
        snprintf(buf, size, "reduce_scatter of %llu float%s per rank (%s%s)", n, s, op_name(h->op),
                 extra);
        break;
    case PETRELI_COLL_BARRIER:
        snprintf(buf, size, "barrier");
        break;
    default:
        snprintf(buf, size, "an unknown call (kind %u)", h->kind);
        break;
    }
    return buf;
}

petrel_err petreli_coll_fail(petreli_coll_call *call, petrel_err err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->why, sizeof call->why, fmt, ap);
    va_end(ap);
    return petrel_error_set(err, "%s #%u: %s", kind_name(call->want.kind), call->want.seq,
                            call->why);
}

/* ---- a call ------------------------------------------------------------------- */

static uint32_t call_id(const petrel_comm *c, uint32_t seq) {
    return c->comm_id << 16 | (seq & 0xffff);
}

void petreli_coll_begin(petreli_coll_call *call, petrel_comm *c, petreli_coll_kind kind,
                        petrel_reduce_op op, size_t count, int root, petrel_coll_algo algo) {
    memset(call, 0, sizeof *call);
    call->c = c;
    if (c->drain_failed) {
        /* What the failed call left in the mailbox. A straggler that arrives later
         * stays until the net stops; a call that wraps round to its id discards it
         * by its number. */
        uint32_t old = call_id(c, c->seq);
        petrel_msg m;
        while (petrel_net_recv(c->net, PETREL_ANY_SOURCE, PETREL_MSG_COLL, old, &m, 0) == PETREL_OK)
            petrel_msg_release(&m);
        petrel_error_clear();
        c->drain_failed = false;
    }
    c->seq++;
    bool f16 = c->cfg.fp16_wire && kind != PETRELI_COLL_BARRIER;
    call->want = (petreli_coll_header){
        .seq = c->seq,
        .kind = (uint8_t)kind,
        .op = (uint8_t)op,
        .dtype = f16 ? PETRELI_DTYPE_F16 : PETRELI_DTYPE_F32,
        .algo = (uint8_t)algo,
        .count = count,
        .root = (uint32_t)root,
        .chunk = kind == PETRELI_COLL_BARRIER ? 0 : (uint32_t)c->cfg.chunk_bytes};
    call->id = call_id(c, c->seq);
    call->wbytes = f16 ? 2 : 4;
    uint64_t t = (uint64_t)c->cfg.timeout_ms * 1000000u;
    call->start_ns = petrel_now_ns();
    call->deadline_ns = call->start_ns + t;
    call->notice_ns = call->start_ns + t / 5 * 4;
    memset(c->sent, 0, (size_t)c->size * sizeof *c->sent);
    memset(c->recvd, 0, (size_t)c->size * sizeof *c->recvd);
    memset(c->heard, 0, (size_t)c->size * sizeof *c->heard);
    for (int m = 0; m < c->size; m++) c->waits_for[m] = -1;
    atomic_fetch_add(&c->calls, 1);
}

static int remaining_ms(const petreli_coll_call *call) {
    uint64_t now = petrel_now_ns();
    if (now >= call->deadline_ns) return 0;
    return (int)((call->deadline_ns - now + 999999) / 1000000);
}

/* Sends a header and payload to member dst. Data messages count steps; ABORT and
 * NOTICE, which the receiver takes whenever they come, do not. */
static petrel_err send_message(petreli_coll_call *call, int dst, petreli_coll_header h,
                               const void *data, size_t bytes, int timeout_ms) {
    petrel_comm *c = call->c;
    unsigned char head[PETRELI_COLL_HEADER];
    bool control = h.kind == PETRELI_COLL_ABORT || h.kind == PETRELI_COLL_NOTICE;
    h.step = control ? 0 : c->sent[dst]++;
    petreli_coll_header_encode(&h, head);
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, bytes}};
    petrel_err err = petrel_net_sendv(c->net, c->ranks[dst], PETREL_MSG_COLL, call->id, 0, iov,
                                      bytes ? 2 : 1, timeout_ms);
    if (err == PETREL_OK) {
        atomic_fetch_add(&c->bytes_sent, PETRELI_COLL_HEADER + bytes);
        atomic_fetch_add(&c->payload_bytes_sent, bytes);
    }
    return err;
}

/* ABORT or NOTICE to every other member, best effort: the call's own error (in
 * this thread's message) is kept. */
static void tell_all(petreli_coll_call *call, petreli_coll_kind kind, uint32_t root,
                     const char *text) {
    petrel_comm *c = call->c;
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", petrel_errmsg());
    petreli_coll_header h = call->want;
    h.kind = (uint8_t)kind;
    h.root = root;
    for (int m = 0; m < c->size; m++)
        if (m != c->rank) (void)send_message(call, m, h, text, text ? strlen(text) : 0, CONTROL_MS);
    (void)petrel_error_set(PETREL_OK, "%s", saved);
}

petrel_err petreli_coll_end(petreli_coll_call *call, petrel_err err) {
    petrel_comm *c = call->c;
    for (int i = 0; i < c->nstash; i++) petrel_msg_release(&c->stash[i]);
    c->nstash = 0;
    if (err != PETREL_OK) {
        c->drain_failed = true;
        if (!call->relayed && c->size > 1) {
            if (!call->why[0]) snprintf(call->why, sizeof call->why, "%s", petrel_errmsg());
            tell_all(call, PETRELI_COLL_ABORT, (uint32_t)err, call->why);
        }
    }
    atomic_fetch_add(&c->wait_ns, petrel_now_ns() - call->start_ns);
    return err;
}

static petrel_err better_story(petreli_coll_call *call, petrel_err err);

petrel_err petreli_coll_send_raw(petreli_coll_call *call, int dst, const void *data, size_t n) {
    petrel_err err =
        send_message(call, dst, call->want, data, n * call->wbytes, remaining_ms(call));
    if (err == PETREL_OK) return PETREL_OK;
    char net_why[768], who[48];
    snprintf(net_why, sizeof net_why, "%s", petrel_errmsg());
    if (err == PETREL_ERR_TIMEOUT)
        return petreli_coll_fail(call, err, "send to %s: %s",
                                 petreli_coll_member_name(call->c, dst, who, sizeof who), net_why);
    return better_story(call, petreli_coll_fail(call, err, "%s", net_why));
}

petrel_err petreli_coll_send(petreli_coll_call *call, int dst, float *x, size_t n, bool round_own) {
    petrel_comm *c = call->c;
    if (call->want.dtype != PETRELI_DTYPE_F16) return petreli_coll_send_raw(call, dst, x, n);
    if (c->half_cap < n) {
        uint16_t *h = petrel_realloc(c->half, n * sizeof *h);
        if (!h)
            return petreli_coll_fail(call, PETREL_ERR_NOMEM, "no memory for a float16 chunk of %zu",
                                     n);
        c->half = h;
        c->half_cap = n;
    }
    petreli_coll_encode_f16(c->half, x, n, round_own);
    return petreli_coll_send_raw(call, dst, c->half, n);
}

/* ---- receiving ------------------------------------------------------------------ */

static petrel_err mismatch(petreli_coll_call *call, int from, const petreli_coll_header *h) {
    const petreli_coll_header *w = &call->want;
    bool detail =
        h->kind == w->kind && h->op == w->op && h->count == w->count && h->root == w->root;
    char theirs[160], mine[160], who[48];
    return petreli_coll_fail(call, PETREL_ERR_STATE, "%s called %s, this rank (%d) called %s",
                             petreli_coll_member_name(call->c, from, who, sizeof who),
                             describe(h, detail, theirs, sizeof theirs), call->c->rank,
                             describe(w, detail, mine, sizeof mine));
}

petrel_err petreli_coll_check(petreli_coll_call *call, int from, const petreli_coll_header *h) {
    const petreli_coll_header *w = &call->want;
    call->c->heard[from] = 1;
    if (h->kind != w->kind || h->op != w->op || h->dtype != w->dtype || h->algo != w->algo ||
        h->count != w->count || h->root != w->root || h->chunk != w->chunk)
        return mismatch(call, from, h);
    return PETREL_OK;
}

enum { TAKEN = 0, CONSUMED = 1 };

/* The member that sent m, or -1 when its sender is not a member. */
static int sender_member(const petrel_comm *c, const petrel_msg *m) {
    return m->src >= 0 && m->src < c->net_size ? c->member_of[m->src] : -1;
}

/* Fails the call with the reason in member from's ABORT m (released), which was
 * sent in this call or, when h->seq is the call before, in that one. */
static petrel_err aborted(petreli_coll_call *call, petrel_msg *m, int from,
                          const petreli_coll_header *h) {
    char who[48], when[48] = "";
    size_t len = m->len - PETRELI_COLL_HEADER;
    if (len > 400) len = 400;
    const char *text = (const char *)m->data + PETRELI_COLL_HEADER;
    petrel_err err =
        h->root > 0 && h->root < PETREL_ERR_COUNT ? (petrel_err)h->root : PETREL_ERR_STATE;
    if (h->seq != call->want.seq)
        snprintf(when, sizeof when, " in call #%u, the one before", h->seq);
    err = petreli_coll_fail(call, err, "%s reported%s: %.*s",
                            petreli_coll_member_name(call->c, from, who, sizeof who), when,
                            (int)len, text);
    petrel_msg_release(m);
    return err;
}

/* Looks at a message of this call's id from member `from`: a stale one (another
 * call that shares the id) or a NOTICE is consumed; an ABORT or a message of
 * another call fails the call. *h: its header. */
static petrel_err admit(petreli_coll_call *call, petrel_msg *m, int from, petreli_coll_header *h,
                        int *what) {
    petrel_comm *c = call->c;
    char who[48];
    *what = CONSUMED;
    if (m->len < PETRELI_COLL_HEADER || !petreli_coll_header_decode(m->data, h)) {
        size_t len = m->len;
        petrel_msg_release(m);
        return petreli_coll_fail(call, PETREL_ERR_FORMAT,
                                 "%s sent a malformed collective message (%zu bytes)",
                                 petreli_coll_member_name(c, from, who, sizeof who), len);
    }
    if (h->seq != call->want.seq) { /* 65536 calls old */
        petrel_msg_release(m);
        return PETREL_OK;
    }
    if (h->kind == PETRELI_COLL_ABORT) {
        call->relayed = true;
        return aborted(call, m, from, h);
    }
    c->heard[from] = 1;
    if (h->kind == PETRELI_COLL_NOTICE) {
        c->waits_for[from] = h->root < (uint32_t)c->size ? (int)h->root : -1;
        petrel_msg_release(m);
        return PETREL_OK;
    }
    petrel_err err = petreli_coll_check(call, from, h);
    if (err != PETREL_OK) {
        petrel_msg_release(m);
        return err;
    }
    *what = TAKEN;
    return PETREL_OK;
}

/* The call ran out of time waiting for member src: names the member that seems
 * not to have called, following what the NOTICEs said. */
static petrel_err timed_out(petreli_coll_call *call, int src) {
    petrel_comm *c = call->c;
    const char *kind = kind_name(call->want.kind);
    int ms = call->c->cfg.timeout_ms;
    char a[48], b[48];
    if (!c->heard[src])
        return petreli_coll_fail(call, PETREL_ERR_TIMEOUT,
                                 "no message from %s within %d ms (did it call %s?)",
                                 petreli_coll_member_name(c, src, a, sizeof a), ms, kind);
    /* src waits for v, which waits for ... (their NOTICEs): the chain ends at a
     * member that said nothing */
    char chain[256];
    size_t at = 0;
    int v = src;
    for (int hops = 0; hops < c->size && c->heard[v] && c->waits_for[v] >= 0; hops++) {
        v = c->waits_for[v];
        if (at < sizeof chain)
            at += (size_t)snprintf(chain + at, sizeof chain - at, "%s%s",
                                   hops ? ", which is waiting for " : "",
                                   petreli_coll_member_name(c, v, b, sizeof b));
    }
    if (v != src && v != c->rank && !c->heard[v])
        return petreli_coll_fail(
            call, PETREL_ERR_TIMEOUT,
            "%s is waiting for %s, from which nothing came within %d ms (did it call %s?)",
            petreli_coll_member_name(c, src, a, sizeof a), chain, ms, kind);
    return petreli_coll_fail(call, PETREL_ERR_TIMEOUT, "%s sent nothing more within %d ms",
                             petreli_coll_member_name(c, src, a, sizeof a), ms);
}

/* The member awaited, dead or gone: takes what it sent before, else fails naming
 * it. (Only that member: one that finished its part of the call and left is no
 * reason to fail; a dead member that others wait for is reported by them.) */
static petrel_err check_alive(petreli_coll_call *call, int src, petrel_msg *m, bool *got) {
    petrel_comm *c = call->c;
    *got = false;
    if (petrel_net_peer_alive(c->net, c->ranks[src])) return PETREL_OK;
    petrel_err err = petrel_net_recv(c->net, c->ranks[src], PETREL_MSG_COLL, call->id, m, 0);
    if (err == PETREL_OK) {
        *got = true;
        return PETREL_OK;
    }
    char net_why[768];
    snprintf(net_why, sizeof net_why, "%s", petrel_errmsg());
    return better_story(
        call,
        petreli_coll_fail(call, err == PETREL_ERR_TIMEOUT ? PETREL_ERR_IO : err, "%s", net_why));
}

/* The call failed here for want of a peer (err, already recorded). When another
 * member has reported why the call failed (its ABORT waits in the mailbox: say it
 * failed first and then left the job), or a message shows a mismatch, that is the
 * cause to report instead. */
static petrel_err better_story(petreli_coll_call *call, petrel_err err) {
    petrel_comm *c = call->c;
    char saved[1024], why[sizeof call->why];
    snprintf(saved, sizeof saved, "%s", petrel_errmsg());
    memcpy(why, call->why, sizeof why);
    petrel_msg m;
    while (petrel_net_recv(c->net, PETREL_ANY_SOURCE, PETREL_MSG_COLL, call->id, &m, 0) ==
           PETREL_OK) {
        int from = sender_member(c, &m);
        if (from < 0 || from == c->rank) {
            petrel_msg_release(&m);
            continue;
        }
        petreli_coll_header h;
        int what;
        petrel_err e = admit(call, &m, from, &h, &what);
        if (e != PETREL_OK) return e;
        if (what == TAKEN) petrel_msg_release(&m);
    }
    /* A member that failed the call before, which this rank finished, never comes
     * to this one: its ABORT still waits under the previous call's id. */
    uint32_t prev = call_id(c, call->want.seq - 1);
    while (call->want.seq > 1 &&
           petrel_net_recv(c->net, PETREL_ANY_SOURCE, PETREL_MSG_COLL, prev, &m, 0) == PETREL_OK) {
        int from = sender_member(c, &m);
        petreli_coll_header h;
        if (from >= 0 && from != c->rank && m.len >= PETRELI_COLL_HEADER &&
            petreli_coll_header_decode(m.data, &h) && h.kind == PETRELI_COLL_ABORT &&
            h.seq == call->want.seq - 1)
            return aborted(call, &m, from, &h);
        petrel_msg_release(&m);
    }
    memcpy(call->why, why, sizeof why);
    return petrel_error_set(err, "%s", saved);
}

static petrel_err take(petreli_coll_call *call, int src, size_t n, petrel_msg *m,
                       const petreli_coll_header *h, petreli_coll_in *in) {
    petrel_comm *c = call->c;
    char who[48];
    size_t bytes = m->len - PETRELI_COLL_HEADER;
    if (h->step != c->recvd[src]) {
        petrel_msg_release(m);
        return petreli_coll_fail(
            call, PETREL_ERR_STATE, "%s sent message %u of the call, expected %u",
            petreli_coll_member_name(c, src, who, sizeof who), h->step, c->recvd[src]);
    }
    if (bytes != n * call->wbytes) {
        petrel_msg_release(m);
        return petreli_coll_fail(
            call, PETREL_ERR_FORMAT, "%s sent %zu bytes in message %u, expected %zu",
            petreli_coll_member_name(c, src, who, sizeof who), bytes, h->step, n * call->wbytes);
    }
    c->recvd[src]++;
    atomic_fetch_add(&c->bytes_received, m->len);
    in->msg = *m;
    in->data = (const unsigned char *)m->data + PETRELI_COLL_HEADER;
    in->elems = n;
    return PETREL_OK;
}

/* Whether a message from member src waits in the stash. */
static bool stashed(const petrel_comm *c, int src) {
    for (int i = 0; i < c->nstash; i++)
        if (c->member_of[c->stash[i].src] == src) return true;
    return false;
}

/* Keeps an early message of another member for later. */
static petrel_err stash(petreli_coll_call *call, petrel_msg *m) {
    petrel_comm *c = call->c;
    if (c->nstash == c->stash_cap) {
        int cap = c->stash_cap ? 2 * c->stash_cap : 8;
        petrel_msg *s = petrel_realloc(c->stash, (size_t)cap * sizeof *s);
        if (!s) {
            petrel_msg_release(m);
            return petreli_coll_fail(call, PETREL_ERR_NOMEM, "no memory to hold an early message");
        }
        c->stash = s;
        c->stash_cap = cap;
    }
    c->stash[c->nstash++] = *m;
    return PETREL_OK;
}

petrel_err petreli_coll_poll(petreli_coll_call *call, int src, bool *waiting) {
    petrel_comm *c = call->c;
    petrel_msg m;
    while (petrel_net_recv(c->net, PETREL_ANY_SOURCE, PETREL_MSG_COLL, call->id, &m, 0) ==
           PETREL_OK) {
        int from = sender_member(c, &m), what;
        petreli_coll_header h;
        if (from < 0 || from == c->rank) {
            petrel_msg_release(&m);
            continue;
        }
        petrel_err err = admit(call, &m, from, &h, &what);
        if (err == PETREL_OK && what == TAKEN) err = stash(call, &m);
        if (err != PETREL_OK) return err;
    }
    petrel_error_clear(); /* the receive that found nothing */
    *waiting = stashed(c, src);
    return PETREL_OK;
}

petrel_err petreli_coll_recv(petreli_coll_call *call, int src, size_t n, petreli_coll_in *in) {
    petrel_comm *c = call->c;
    petreli_coll_header h;
    petrel_msg m;
    for (int i = 0; i < c->nstash; i++) {
        if (c->member_of[c->stash[i].src] != src) continue;
        m = c->stash[i];
        memmove(&c->stash[i], &c->stash[i + 1], (size_t)(c->nstash - i - 1) * sizeof m);
        c->nstash--;
        petreli_coll_header_decode(m.data, &h);
        return take(call, src, n, &m, &h, in);
    }
    for (;;) {
        uint64_t now = petrel_now_ns();
        if (now >= call->deadline_ns) return timed_out(call, src);
        if (!call->noticed && now >= call->notice_ns) {
            call->noticed = true;
            tell_all(call, PETRELI_COLL_NOTICE, (uint32_t)src, NULL);
        }
        uint64_t until = call->noticed ? call->deadline_ns : call->notice_ns;
        if (until > now + SLICE_NS) until = now + SLICE_NS;
        int ms = (int)((until - now + 999999) / 1000000);
        petrel_err err =
            petrel_net_recv(c->net, PETREL_ANY_SOURCE, PETREL_MSG_COLL, call->id, &m, ms);
        if (err == PETREL_ERR_TIMEOUT) {
            bool got;
            if ((err = check_alive(call, src, &m, &got)) != PETREL_OK) return err;
            if (!got) continue;
        } else if (err != PETREL_OK) {
            char net_why[768];
            snprintf(net_why, sizeof net_why, "%s", petrel_errmsg());
            return petreli_coll_fail(call, err, "%s", net_why);
        }
        int from = sender_member(c, &m);
        if (from < 0 || from == c->rank) { /* not a member: not ours to judge */
            petrel_msg_release(&m);
            continue;
        }
        int what;
        if ((err = admit(call, &m, from, &h, &what)) != PETREL_OK) return err;
        if (what == CONSUMED) continue;
        if (from == src) return take(call, src, n, &m, &h, in);
        if ((err = stash(call, &m)) != PETREL_OK) return err;
    }
}

void petreli_coll_release(petreli_coll_in *in) {
    petrel_msg_release(&in->msg);
}

size_t petreli_coll_chunks(const petreli_coll_call *call, size_t len) {
    size_t per = call->c->cfg.chunk_bytes / call->wbytes;
    if (per == 0) per = 1;
    size_t chunks = (len + per - 1) / per;
    return chunks ? chunks : 1;
}
