/*
 * Allreduce among members on one host, through shared memory: every member maps a
 * segment of each other member, and each block of the vector is reduced where it
 * lies, read straight out of the others' segments. Used by PETREL_ALGO_SHM, which
 * AUTO picks at every size when the job table puts every member on one host
 * with the shared-memory transport open (petreli_local_eligible): facts every member
 * holds alike, so that all of them pick it or none does.
 *
 * Why: the ring moves each block through the transport: the sender copies it into
 * a shared-memory ring, the receiver's transport thread copies it out into a message
 * buffer, and the caller reduces it from there, with a thread hand-off per chunk.
 * Here a byte that another member needs is copied once, into this member's segment,
 * and read once by the member that needs it.
 *
 * P members, a piece of m elements cut into P blocks (petreli_part_start). Member r:
 *   1. copies its blocks q != r into its segment, each at region q;
 *   2. in the first piece of a call, states its call to the others and checks
 *      theirs (state_call): in its segment's header once every other member has
 *      mapped the segment, else by SYNC1, a message with the segment's name and
 *      region size, from which the others map it; in later pieces, marks its copy
 *      done and waits for the others' marks (step 4);
 *   3. reduces block r: its own values, then every other member's region r, in
 *      sub-blocks that stay in cache; an average divides there; the result goes to
 *      its data and to region r of its segment;
 *   4. marks the piece reduced in its segment's first cache line, and waits until
 *      every other member has marked it too (polling 50 us, then on a futex);
 *   5. copies block q from region q of member q's segment, for every q != r.
 * Vectors larger than one piece (P blocks of BLOCK_MAX_BYTES) go piece by piece.
 * Allgather uses the same segments and steps (petreli_local_allgather).
 *
 * Every region has one writer at a time, without a third exchange: region q != r of
 * r's segment is read by member q in its step 3, before its mark, and rewritten by
 * r in step 1 of the next piece, after that mark; region r is read by the others in
 * their step 5, before their next step 2, and rewritten by r in step 3, after it.
 * A region keeps its place in the segment whatever the piece's size (region q starts
 * at q * block_cap), so a short last piece does not move one region onto another.
 *
 * A call stated in a header is checked as comm.c checks the header of SYNC1, or of
 * any message of a call: a member that calls something else, is dead, or never
 * calls is reported as for the other algorithms. Statements and marks save the
 * message rounds (a thread hand-off on each side each); a member whose call fails
 * marks that instead, and a waiter that sees it, a dead member, its deadline, or a
 * message of the call in the mailbox (looked for every CHECK_NS) turns to the
 * message layer for the ABORT and the story.
 * Results are the same on every member: each block is reduced on one member and
 * copied. Nothing here goes over a wire, so float16 (fp16_wire) changes nothing.
 *
 * Segments: "/petrel-coll-<pid>-r<net rank>-c<comm_id>-<n>", n counting the segments
 * made in this process (from 1), so that no two of its segments share a name, not
 * even those of members that are threads of one process (the net allows that) or of
 * two jobs in one process; mode 0600 (processes of the same user can open it, the
 * shared-memory transport's access rule), allocated in full (posix_fallocate, so that
 * a full /dev/shm is an error here and not a SIGBUS later). A member makes a larger
 * one, under a new name, when a call needs larger regions, and unlinks its name once
 * every other member has mapped it (marked step 4); the memory lives until the last
 * mapping goes. A process killed in between leaves its name in /dev/shm; should a
 * later process get its pid and come to that name, it unlinks it and creates its own
 * (pids are unique among live processes, so the name belongs to a dead one).
 */
#include "coll_impl.h"

#include "core/core_impl.h"
#include "net/net_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK_MAX_BYTES (2u << 20)  /* a member's block of one piece, at most */
#define SUB_ELEMS       (16u << 10) /* step 3 reduces 64 KiB at a time, in cache */
#define NAME_BYTES      56 /* the longest name takes 54 with its NUL (pid, rank, n of 10 digits) */
#define SYNC_BYTES      64 /* SYNC1: region size (u64) and the segment's name */
#define NAME_PREFIX     "/petrel-coll-"
#define SPIN_NS         50000ull   /* a wait for marks polls this long before it sleeps */
#define CHECK_NS        1000000ull /* and checks liveness and the deadline this often */

typedef struct segment {
    char name[NAME_BYTES];
    float *base;        /* seg_bytes(block_cap, P) mapped */
    uint64_t block_cap; /* elements of one region */
    bool linked;        /* own segment: its name is still in /dev/shm */
} segment;

/* A segment starts with one cache line: its owner's mark (below), a futex word that
 * the owner bumps after a new mark when members sleep on it, and how its owner
 * states each call (step 2). The regions follow. */
typedef struct seg_header {
    _Atomic uint64_t mark;
    _Atomic uint32_t bell;                   /* futex word */
    _Atomic uint32_t sleepers;               /* members asleep on bell, or about to be */
    _Atomic uint32_t stated;                 /* the call whose header is in `call` */
    _Atomic uint32_t sent;                   /* a call for which the owner sent SYNC1 instead */
    unsigned char call[PETRELI_COLL_HEADER]; /* the owner's call, as comm.c encodes it */
} seg_header;
#define HEADER_FLOATS 16
_Static_assert(sizeof(seg_header) <= HEADER_FLOATS * sizeof(float), "the header is one line");

static seg_header *header(const segment *s) {
    return (seg_header *)(void *)s->base;
}

/* After a store to h (sequentially consistent), wakes the members asleep on it: a
 * sleeper increments sleepers, then looks at h, so one of the two sees the other. */
static void ring_sleepers(seg_header *h) {
    if (atomic_load(&h->sleepers)) petreli_futex_ring(&h->bell);
}

static size_t seg_bytes(uint64_t block_cap, int P) {
    return ((size_t)block_cap * (size_t)P + HEADER_FLOATS) * sizeof(float);
}

struct petreli_local {
    segment own;
    segment *peer;  /* by member; own slot unused */
    bool announced; /* every other member has mapped own (a call with it succeeded) */
};

/* Segments made in this process, for their names. */
static _Atomic uint32_t segments_made;

/* Every member decides from the job table, which is the same on every node, and not
 * from its links: a shared-memory connection that failed falls back to TCP for one
 * pair, which would make members pick different algorithms. Member 0's host is
 * compared with each other's, so that the answer is the same on every member. */
bool petreli_local_eligible(petrel_comm *c) {
    if (c->one_host == 0) {
        c->one_host = 1;
        for (int m = 1; m < c->size; m++)
            if (!petreli_net_can_share_memory(c->net, c->ranks[0], c->ranks[m])) c->one_host = -1;
    }
    return c->one_host > 0;
}

static void drop(segment *s, int P) {
    if (s->linked) shm_unlink(s->name);
    if (s->base) munmap(s->base, seg_bytes(s->block_cap, P));
    memset(s, 0, sizeof *s);
}

void petreli_local_free(petrel_comm *c) {
    petreli_local *L = c->local;
    if (!L) return;
    drop(&L->own, c->size);
    for (int m = 0; m < c->size; m++) drop(&L->peer[m], c->size);
    petrel_free(L->peer);
    petrel_free(L);
    c->local = NULL;
}

/* This member's segment, with regions of at least `block` elements. */
static petrel_err own_segment(petreli_coll_call *call, size_t block) {
    petrel_comm *c = call->c;
    if (!c->local) {
        petreli_local *L = petrel_calloc(1, sizeof *L);
        if (L) L->peer = petrel_calloc((size_t)c->size, sizeof *L->peer);
        if (!L || !L->peer) {
            petrel_free(L);
            return petreli_coll_fail(call, PETREL_ERR_NOMEM, "no memory for shared segments");
        }
        c->local = L;
    }
    petreli_local *L = c->local;
    if (L->own.base && L->own.block_cap >= block) return PETREL_OK;
    segment s = {.block_cap = (block + 15) & ~(size_t)15}; /* regions on 64-byte lines */
    size_t bytes = seg_bytes(s.block_cap, c->size);
    snprintf(s.name, sizeof s.name, NAME_PREFIX "%ld-r%d-c%u-%u", (long)getpid(), c->ranks[c->rank],
             c->comm_id, atomic_fetch_add(&segments_made, 1) + 1);
    int fd = shm_open(s.name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) { /* left by a dead process with this pid: see the top */
        shm_unlink(s.name);
        fd = shm_open(s.name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    }
    if (fd < 0)
        return petreli_coll_fail(call, PETREL_ERR_IO, "cannot create shared segment %s: %s", s.name,
                                 strerror(errno));
    int e = posix_fallocate(fd, 0, (off_t)bytes);
    if (e == 0) {
        s.base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (s.base == MAP_FAILED) {
            e = errno;
            s.base = NULL;
        }
    }
    close(fd);
    if (e != 0) {
        shm_unlink(s.name);
        return petreli_coll_fail(call, PETREL_ERR_IO,
                                 "cannot make shared segment %s of %zu bytes: %s", s.name, bytes,
                                 strerror(e));
    }
    s.linked = true;
    if (L->own.base) { /* its watchers: the new name comes in SYNC1 */
        atomic_store(&header(&L->own)->sent, call->want.seq);
        ring_sleepers(header(&L->own));
    }
    drop(&L->own, c->size); /* the others keep their mapping of it as long as they need it */
    L->own = s;
    L->announced = false;
    return PETREL_OK;
}

/* Maps member q's segment as its SYNC1 describes it, unless it is mapped already;
 * checks that its regions hold `block` elements. */
static petrel_err peer_segment(petreli_coll_call *call, int q, const unsigned char *sync,
                               size_t block) {
    petrel_comm *c = call->c;
    segment *s = &c->local->peer[q];
    uint64_t cap;
    memcpy(&cap, sync, sizeof cap);
    char name[NAME_BYTES];
    memcpy(name, sync + 8, NAME_BYTES);
    char who[48];
    petreli_coll_member_name(c, q, who, sizeof who);
    if (name[NAME_BYTES - 1] != 0 || strncmp(name, NAME_PREFIX, strlen(NAME_PREFIX)) != 0 ||
        cap < block || cap > ((uint64_t)1 << 40))
        return petreli_coll_fail(call, PETREL_ERR_FORMAT,
                                 "%s described its shared segment wrongly (regions of %llu, %zu "
                                 "needed)",
                                 who, (unsigned long long)cap, block);
    if (s->base && strcmp(s->name, name) == 0) return PETREL_OK;
    drop(s, c->size);
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    struct stat st;
    size_t bytes = seg_bytes(cap, c->size);
    int e = fd < 0 ? errno : fstat(fd, &st) != 0 ? errno : (size_t)st.st_size < bytes ? EPROTO : 0;
    if (e == 0) {
        s->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (s->base == MAP_FAILED) {
            e = errno;
            s->base = NULL;
        }
    }
    if (fd >= 0) close(fd);
    if (e != 0)
        return petreli_coll_fail(call, PETREL_ERR_IO, "cannot map the shared segment %s of %s: %s",
                                 name, who, e == EPROTO ? "smaller than it said" : strerror(e));
    snprintf(s->name, sizeof s->name, "%s", name);
    s->block_cap = cap;
    return PETREL_OK;
}

static float *region(const segment *s, int q) {
    return s->base + HEADER_FLOATS + (size_t)q * s->block_cap;
}

/* The owner's mark, in its header: how far it has come in call seq (bits 32..63):
 * phase j + 1 in bits 1..31, where piece k is copied in at phase 2k and reduced at
 * phase 2k + 1; or bit 0, the call failed on the owner. Each call has its own
 * number, so a mark left by an earlier call never passes for this one. A member may
 * be one phase ahead of one that waits for it (it has seen the waiter's own mark),
 * even in the next call, where it may already have failed: a wait is over at any
 * later mark. */
static uint64_t phase_mark(uint32_t seq, size_t j) {
    return (uint64_t)seq << 32 | (uint64_t)(j + 1) << 1;
}

static void set_mark(seg_header *h, uint64_t v) {
    atomic_store(&h->mark, v);
    ring_sleepers(h);
}

/* What a member's header shows one that waits for it. */
typedef enum sight {
    SIGHT_NONE,
    SIGHT_DONE,    /* what the wait is for */
    SIGHT_MESSAGE, /* the rest comes through the message layer */
} sight;

/* A wait for phase mark `want` (stating false) is done at that mark or a later one;
 * a wait in step 2 (stating) once the member has stated call seq in its header, and
 * turns to its SYNC1 once the header says it sent one. A member whose call failed
 * sends ABORT: the message layer tells why. */
static sight look(const seg_header *h, uint64_t want, uint32_t seq, bool stating) {
    uint64_t v = atomic_load(&h->mark);
    if (v >> 32 == seq && (v & 1)) return SIGHT_MESSAGE;
    if (!stating) return v >= want ? SIGHT_DONE : SIGHT_NONE; /* see phase_mark() */
    if (atomic_load(&h->stated) == seq) return SIGHT_DONE;
    return atomic_load(&h->sent) == seq ? SIGHT_MESSAGE : SIGHT_NONE;
}

/* Waits until look() at member q's header sees something: polls for SPIN_NS, then
 * sleeps on q's futex word. Every CHECK_NS it checks the deadline, q's liveness and
 * the mailbox: past the deadline, with q dead, or with a message of the call from q
 * waiting, the message layer has the rest of the story (SIGHT_MESSAGE); an ABORT or
 * a mismatched call from any member fails the call here. */
static petrel_err await_member(petreli_coll_call *call, int q, uint64_t want, bool stating,
                               sight *out) {
    petrel_comm *c = call->c;
    seg_header *h = header(&c->local->peer[q]);
    uint64_t start = petrel_now_ns(), check = start + CHECK_NS;
    for (;;) {
        if ((*out = look(h, want, call->want.seq, stating)) != SIGHT_NONE) return PETREL_OK;
        uint64_t now = petrel_now_ns();
        if (now >= check) {
            check = now + CHECK_NS;
            bool story = now >= call->deadline_ns || !petrel_net_peer_alive(c->net, c->ranks[q]);
            petrel_err err = story ? PETREL_OK : petreli_coll_poll(call, q, &story);
            if (err != PETREL_OK) return err;
            if (story) {
                *out = SIGHT_MESSAGE;
                return PETREL_OK;
            }
        }
        if (now - start < SPIN_NS) {
            sched_yield(); /* polls, yet lets a thread that has work run first */
            continue;
        }
        atomic_fetch_add(&h->sleepers, 1);
        uint32_t bell = atomic_load(&h->bell);
        if (look(h, want, call->want.seq, stating) == SIGHT_NONE)
            petreli_futex_wait(&h->bell, bell, CHECK_NS);
        atomic_fetch_sub(&h->sleepers, 1);
    }
}

/* Marks phase j done and waits until every other member has marked it. A member
 * whose call failed sends ABORT, one that died is seen by the net, and one that is
 * late past the deadline times out: in each case the message layer tells the
 * story, as for a member that sends nothing (petreli_coll_recv). */
static petrel_err phase_done(petreli_coll_call *call, size_t j) {
    petrel_comm *c = call->c;
    uint64_t want = phase_mark(call->want.seq, j);
    set_mark(header(&c->local->own), want);
    for (int q = 0; q < c->size; q++) {
        if (q == c->rank) continue;
        sight v;
        petrel_err err = await_member(call, q, want, false, &v);
        if (err != PETREL_OK) return err;
        if (v == SIGHT_DONE) continue;
        petreli_coll_in in;
        if ((err = petreli_coll_recv(call, q, SYNC_BYTES / call->wbytes, &in)) != PETREL_OK)
            return err;
        petreli_coll_release(&in);
        char who[48];
        return petreli_coll_fail(call, PETREL_ERR_STATE,
                                 "%s sent a message where it should have marked its progress",
                                 petreli_coll_member_name(c, q, who, sizeof who));
    }
    return PETREL_OK;
}

/* Step 4 at the end of piece k: marks it done with, waits until every other member
 * has, and then unlinks this member's segment name, which they have all mapped. */
static petrel_err piece_done(petreli_coll_call *call, size_t k) {
    petrel_err err = phase_done(call, 2 * k + 1);
    petreli_local *L = call->c->local;
    if (err == PETREL_OK && L->own.linked) {
        shm_unlink(L->own.name);
        L->own.linked = false;
    }
    return err;
}

/* Step 2 of a call's first piece: each member states its call to the others and
 * checks theirs. One whose segment every other member has mapped (announced: a call
 * with it succeeded) writes the call's header into its segment's header; any other
 * sends SYNC1, a message of the call with its segment's name and region size, and
 * says so in its header (and in that of the segment it has just left, where the
 * others still look). A member reads another's statement in the segment it has
 * mapped of it, or takes its SYNC1 (always, when it has mapped none) and maps the
 * segment named there. The statement in the header saves two thread hand-offs per
 * call, one on each side: the transport's receive thread, on a busy machine, often
 * gets a CPU only after tens of microseconds. */
static petrel_err state_call(petreli_coll_call *call, size_t block) {
    petrel_comm *c = call->c;
    petreli_local *L = c->local;
    seg_header *own = header(&L->own);
    petrel_err err;
    if (L->announced) {
        petreli_coll_header_encode(&call->want, own->call);
        atomic_store(&own->stated, call->want.seq);
    } else {
        unsigned char sync[SYNC_BYTES] = {0};
        memcpy(sync, &L->own.block_cap, sizeof L->own.block_cap);
        memcpy(sync + 8, L->own.name, NAME_BYTES);
        for (int q = 0; q < c->size; q++)
            if (q != c->rank && (err = petreli_coll_send_raw(
                                     call, q, sync, SYNC_BYTES / call->wbytes)) != PETREL_OK)
                return err;
        atomic_store(&own->sent, call->want.seq);
    }
    ring_sleepers(own);
    for (int q = 0; q < c->size; q++) {
        if (q == c->rank) continue;
        sight v = SIGHT_MESSAGE;
        if (L->peer[q].base && (err = await_member(call, q, 0, true, &v)) != PETREL_OK) return err;
        if (v == SIGHT_DONE) {
            petreli_coll_header h;
            char who[48];
            if (!petreli_coll_header_decode(header(&L->peer[q])->call, &h) ||
                L->peer[q].block_cap < block)
                return petreli_coll_fail(call, PETREL_ERR_FORMAT,
                                         "%s stated its call wrongly in its shared segment",
                                         petreli_coll_member_name(c, q, who, sizeof who));
            if ((err = petreli_coll_check(call, q, &h)) != PETREL_OK) return err;
            continue;
        }
        petreli_coll_in in;
        if ((err = petreli_coll_recv(call, q, SYNC_BYTES / call->wbytes, &in)) != PETREL_OK)
            return err;
        err = peer_segment(call, q, in.data, block);
        petreli_coll_release(&in);
        if (err != PETREL_OK) return err;
    }
    return PETREL_OK;
}

/* Step 3: block r (len elements at x) reduced with region r of every other member,
 * in sub-blocks that stay in cache, an average's last addition fused with its
 * division (petreli_coll_sum_divide); the result also goes to region r of this
 * member's segment. (A pass that also wrote the segment was measured twice as slow
 * as a separate memcpy on the project's VM.) */
static void reduce_block(petreli_coll_call *call, float *x, size_t len) {
    petrel_comm *c = call->c;
    petreli_local *L = c->local;
    petrel_reduce_op op = (petrel_reduce_op)call->want.op;
    int last = c->rank == c->size - 1 ? c->size - 2 : c->size - 1; /* the last other member */
    float *out = region(&L->own, c->rank);
    for (size_t at = 0; at < len; at += SUB_ELEMS) {
        size_t k = len - at < SUB_ELEMS ? len - at : SUB_ELEMS;
        for (int q = 0; q < c->size; q++) {
            if (q == c->rank) continue; /* its slot maps nothing */
            const float *in = region(&L->peer[q], c->rank) + at;
            if (q == last && op == PETREL_REDUCE_AVG)
                petreli_coll_sum_divide(x + at, in, k, (float)c->size);
            else
                petreli_coll_reduce(x + at, x + at, in, false, k, op, q < c->rank);
        }
        memcpy(out + at, x + at, k * sizeof(float));
    }
}

static petrel_err piece(petreli_coll_call *call, float *x, size_t m, size_t k) {
    petrel_comm *c = call->c;
    int P = c->size, r = c->rank;
    size_t block = petreli_part_len(m, (size_t)P, 0); /* the largest block */
    petrel_err err = own_segment(call, block);
    if (err != PETREL_OK) return err;
    petreli_local *L = c->local;
    for (int q = 0; q < P; q++)
        if (q != r)
            memcpy(region(&L->own, q), x + petreli_part_start(m, (size_t)P, (size_t)q),
                   petreli_part_len(m, (size_t)P, (size_t)q) * sizeof(float));
    err = k == 0 ? state_call(call, block) : phase_done(call, 2 * k);
    if (err != PETREL_OK) return err;
    reduce_block(call, x + petreli_part_start(m, (size_t)P, (size_t)r),
                 petreli_part_len(m, (size_t)P, (size_t)r));
    /* Counted as sent: what this member writes for the others; as received: what it
     * reads of theirs (its block from each in step 3, theirs in step 5). */
    size_t mine = petreli_part_len(m, (size_t)P, (size_t)r) * sizeof(float);
    atomic_fetch_add(&c->payload_bytes_sent, m * sizeof(float));
    atomic_fetch_add(&c->bytes_sent, m * sizeof(float));
    atomic_fetch_add(&c->bytes_received, (size_t)(P - 1) * mine + (m * sizeof(float) - mine));
    if ((err = piece_done(call, k)) != PETREL_OK) return err;
    for (int q = 0; q < P; q++)
        if (q != r)
            memcpy(x + petreli_part_start(m, (size_t)P, (size_t)q), region(&L->peer[q], q),
                   petreli_part_len(m, (size_t)P, (size_t)q) * sizeof(float));
    return PETREL_OK;
}

/* Where allgather keeps a piece of m elements in owner's segment s: in the regions
 * other than the owner's own, which the others may still be reading (step 5 of an
 * allreduce that has just ended there). From region owner + 1 to the last (*na
 * elements at *a), then on from region 0 (the rest, at *b). */
static void gather_spans(const segment *s, int owner, int P, size_t m, float **a, size_t *na,
                         float **b) {
    size_t first = (size_t)(P - 1 - owner) * s->block_cap;
    *na = m < first ? m : first;
    *a = region(s, owner + 1);
    *b = region(s, 0);
}

/* Allgather: each piece of a member's vector goes whole into its segment, and every
 * other member copies it from there into place. The same steps and phases as a
 * piece of allreduce, with step 3 the copy out. */
static petrel_err gather_piece(petreli_coll_call *call, const float *send, size_t at, size_t m,
                               size_t n, float *recv, size_t k) {
    petrel_comm *c = call->c;
    int P = c->size;
    size_t block = (m + (size_t)P - 2) / (size_t)(P - 1); /* P - 1 regions hold m floats */
    petrel_err err = own_segment(call, block);
    if (err != PETREL_OK) return err;
    petreli_local *L = c->local;
    float *a, *b;
    size_t na;
    gather_spans(&L->own, c->rank, P, m, &a, &na, &b);
    memcpy(a, send + at, na * sizeof(float));
    memcpy(b, send + at + na, (m - na) * sizeof(float));
    err = k == 0 ? state_call(call, block) : phase_done(call, 2 * k);
    if (err != PETREL_OK) return err;
    for (int q = 0; q < P; q++) {
        if (q == c->rank) continue;
        float *to = recv + (size_t)q * n + at;
        gather_spans(&L->peer[q], q, P, m, &a, &na, &b);
        memcpy(to, a, na * sizeof(float));
        memcpy(to + na, b, (m - na) * sizeof(float));
    }
    atomic_fetch_add(&c->payload_bytes_sent, m * sizeof(float));
    atomic_fetch_add(&c->bytes_sent, m * sizeof(float));
    atomic_fetch_add(&c->bytes_received, (size_t)(P - 1) * m * sizeof(float));
    return piece_done(call, k);
}

/* How many pieces n elements take when `regions` regions of a segment hold one;
 * n = 0 still takes one, which checks the call. */
static size_t pieces_of(size_t n, int regions) {
    size_t per_piece = (size_t)regions * (BLOCK_MAX_BYTES / sizeof(float));
    return n ? (n + per_piece - 1) / per_piece : 1;
}

/* The end of a call through the segments. After a success every other member has
 * mapped this member's segment (step 2). A failure is marked in the segment, which
 * tells the others before petreli_coll_end sends the ABORT; another member may then
 * not have mapped it. */
static petrel_err call_end(petreli_coll_call *call, petrel_err err) {
    petreli_local *L = call->c->local;
    if (!L) return err;
    L->announced = err == PETREL_OK;
    if (err != PETREL_OK && L->own.base)
        set_mark(header(&L->own), (uint64_t)call->want.seq << 32 | 1);
    return err;
}

petrel_err petreli_local_allgather(petreli_coll_call *call, const float *send, size_t n,
                                   float *recv) {
    size_t pieces = pieces_of(n, call->c->size - 1);
    petrel_err err = PETREL_OK;
    for (size_t k = 0; k < pieces && err == PETREL_OK; k++)
        err = gather_piece(call, send, petreli_part_start(n, pieces, k),
                           petreli_part_len(n, pieces, k), n, recv, k);
    return call_end(call, err);
}

petrel_err petreli_local_allreduce(petreli_coll_call *call, float *x, size_t n) {
    size_t pieces = pieces_of(n, call->c->size);
    petrel_err err = PETREL_OK;
    for (size_t k = 0; k < pieces && err == PETREL_OK; k++)
        err = piece(call, x + petreli_part_start(n, pieces, k), petreli_part_len(n, pieces, k), k);
    return call_end(call, err);
}
