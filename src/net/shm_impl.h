/*
 * Internals of the shared-memory transport shared by shm.c (the transport object, its
 * receive thread, connecting, the operations) and shm_ring.c (the inbox segment's layout,
 * mappings, wakeups, and the copy of records into and out of its rings): the segment's
 * structs, which must match the field tables at the top of shm_ring.c, the transport
 * object, and the functions each file lends the other.
 */
#ifndef PETREL_NET_SHM_IMPL_H
#define PETREL_NET_SHM_IMPL_H

#include "core/core_impl.h"
#include "net_impl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ---- the inbox segment: the field tables at the top of shm_ring.c ----------------------- */

#define PETRELI_SHM_MAGIC      0x314d48534c525450ull /* bytes "PTRLSHM1" */
#define PETRELI_SHM_VERSION    1
#define PETRELI_SHM_NAME_BYTES 128

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "shared-memory rings need lock-free (address-free) 32- and 64-bit atomics");

typedef struct petreli_shm_header {
    _Atomic uint64_t magic;
    uint32_t version, size, rank, pid;
    uint64_t ring_bytes, rings_offset, segment_bytes;
    unsigned char pad0[16];
    _Atomic uint32_t doorbell, sleeping, closed;
    unsigned char pad1[180];
} petreli_shm_header;

typedef struct petreli_shm_ring_ctl {
    _Atomic uint64_t head;
    _Atomic uint32_t writer_pid, writer_closed, space_waiting;
    unsigned char pad0[108];
    _Atomic uint64_t tail;
    _Atomic uint32_t space, reader_broken;
    unsigned char pad1[112];
} petreli_shm_ring_ctl;

_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4,
               "atomics must have the size of their value to live in shared memory");
_Static_assert(sizeof(petreli_shm_header) == 256 && offsetof(petreli_shm_header, doorbell) == 64 &&
                   offsetof(petreli_shm_header, closed) == 72,
               "petreli_shm_header must match the field table");
_Static_assert(sizeof(petreli_shm_ring_ctl) == 256 && offsetof(petreli_shm_ring_ctl, tail) == 128 &&
                   offsetof(petreli_shm_ring_ctl, reader_broken) == 140,
               "petreli_shm_ring_ctl must match the field table");

/* ---- mappings --------------------------------------------------------------------------- */

/* The mappings of this process (shm_ring.c). */
typedef struct petreli_shm_reg petreli_shm_reg;

typedef struct petreli_shm_map {
    unsigned char *base; /* NULL when not mapped */
    size_t bytes;
    petreli_shm_reg *reg; /* non-NULL: a reference to a registered mapping */
} petreli_shm_map;

/* ---- the transport ---------------------------------------------------------------------- */

enum {
    PETRELI_SHM_LINK_NONE = 0,
    PETRELI_SHM_LINK_UP,
    PETRELI_SHM_LINK_DOWN,
    PETRELI_SHM_LINK_LOST
};

typedef struct petreli_shm_peer {
    /* PETRELI_SHM_LINK_*: UP once connected, or once the peer claimed its ring here */
    _Atomic int link;

    /* Sending to the peer: under mu. */
    pthread_mutex_t mu;
    petreli_shm_map out;         /* the peer's inbox */
    petreli_shm_header *out_hdr; /* = out.base */
    petreli_shm_ring_ctl *tx;    /* my ring's control in the peer's inbox */
    unsigned char *tx_data;
    uint64_t tx_cap;
    uint64_t tx_head; /* = tx->head: this process is the ring's only writer */
    char out_name[PETRELI_SHM_NAME_BYTES];
    _Atomic int out_pid; /* the peer's pid while mapped, else 0 (read by the receive thread) */
    int last_out_pid;    /* the peer's pid when last mapped (for cleanup at close) */

    /* Receiving from the peer: the receive thread's, except rx_stop. */
    _Atomic int rx_stop; /* 1: the ring is dropped, read no more of it */
    uint64_t rx_tail;    /* = ctl->tail */
    bool rx_in_frame;    /* a frame has begun and its payload is being copied */
    petreli_wire_header rx_h;
    unsigned char *rx_dst;
    uint64_t rx_start; /* stream position of the frame's record */
    uint64_t rx_copied;
} petreli_shm_peer;

typedef struct petreli_shm_transport {
    int rank, size;
    int pid;
    petreli_wire_limits lim;
    petreli_transport_events ev;
    char job[65]; /* the job id, made a valid name (at most 64 bytes) */
    char name[PETRELI_SHM_NAME_BYTES];
    petreli_shm_map in;
    petreli_shm_header *hdr;
    petreli_shm_ring_ctl *ctl; /* size entries, by sender rank */
    unsigned char *rings;
    uint64_t ring_bytes;
    petreli_shm_peer *peers;
    int peers_init; /* how many peer mutexes exist */
    _Atomic int stopping;
    _Atomic int sealed; /* the inbox name is unlinked */
    petrel_thread *thread;
} petreli_shm_transport;

static inline uint64_t petreli_shm_align64(uint64_t n) {
    return (n + 63) & ~(uint64_t)63;
}

/* ---- shm_ring.c ------------------------------------------------------------------------ */

/* False once pid has exited, also while it is a zombie nobody has reaped yet. */
bool petreli_shm_pid_alive(int pid);

/* Registers m, a new mapping of the inbox called name, so that other transports of this
 * process map it through m (petreli_shm_map_existing); m->reg holds the first reference. */
PETREL_NODISCARD petrel_err petreli_shm_reg_add(const char *name, petreli_shm_map *m);

/* The owner has closed: the name no longer refers to the registered mapping r. */
void petreli_shm_reg_unlist(petreli_shm_reg *r);

/* Unmaps m, or drops its reference to a registered mapping. Accepts an unmapped m. */
void petreli_shm_map_release(petreli_shm_map *m);

/* Maps the segment called name when it exists and is initialized. PETREL_ERR_NOT_FOUND
 * while it is missing or still being set up (worth retrying), PETREL_ERR_FORMAT when it
 * is not a petrel inbox of this version, PETREL_ERR_IO for other failures. */
PETREL_NODISCARD petrel_err petreli_shm_map_existing(const char *name, petreli_shm_map *out);

/* Unlinks name if it is still the inbox of (dead) pid, and not a newer one. */
void petreli_shm_unlink_if_owned_by(const char *name, int pid);

/* Allocates the pages of [off, off + len) of segment name now (PETREL_ERR_IO when
 * /dev/shm is full). */
PETREL_NODISCARD petrel_err petreli_shm_reserve(const char *name, uint64_t off, uint64_t len);

/* Receive thread: copies out what ring s has published, passing frames to the node.
 * True when it made progress. */
bool petreli_shm_rx_service(petreli_shm_transport *t, int s);

/* Writes one record into p's ring: the PETRELI_WIRE_HEADER bytes at head, then the
 * payload from iov (payload bytes), waiting for space until deadline_ns. Caller holds
 * p->mu and p is mapped. */
PETREL_NODISCARD petrel_err petreli_shm_tx_record(petreli_shm_transport *t, petreli_shm_peer *p,
                                                  int peer, const unsigned char *head,
                                                  const struct iovec *iov, int iovcnt,
                                                  uint64_t payload, uint64_t deadline_ns);

/* ---- shm.c ------------------------------------------------------------------------------ */

/* The link to s is gone: stop reading its ring, make its writes fail, and report it
 * unless it was already dropped or reported. */
void petreli_shm_link_lost(petreli_shm_transport *t, int s, const char *why);

#endif
