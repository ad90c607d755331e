/*
 * The shared-memory transport: frames between the processes of one host through
 * single-producer/single-consumer byte rings in POSIX shared memory.
 *
 * Every transport creates one inbox segment, "/petrel-<job_id>-<rank>", with mode 0600:
 * only processes of the same user can open it, and that is the access control (the job
 * token is not checked). The inbox holds one ring per sender rank. A sender maps the
 * receiver's inbox when it connects, claims the ring of its own rank, and writes frames
 * into it; the receiver's one receive thread copies them out. A frame is copied twice in
 * all: from the sender's iov into the ring, and from the ring to where frame_begin points.
 *
 * Inbox segment (host byte order: a segment never leaves its host):
 *   offset        width       field
 *   0             8           magic "PTRLSHM1", stored last (release) once the rest is valid
 *   8             4           version: 1
 *   12            4           size: ranks in the job, which is also the number of rings
 *   16            4           rank of the owner, the rings' reader
 *   20            4           pid of the owner
 *   24            8           ring_bytes: capacity of each ring, a multiple of 64
 *   32            8           rings_offset: where ring 0's data starts (page aligned)
 *   40            8           segment_bytes: the whole segment
 *   64            4           doorbell: futex word, bumped by a writer that finds the reader asleep
 *   68            4           sleeping: 1 while the reader is (about to be) waiting on doorbell
 *   72            4           closed: 1 once the owner has closed; writers fail with IO
 *   256           256 * size  ring controls, indexed by sender rank (below)
 *   rings_offset  ring_bytes  the data of ring 0, then of ring 1, ... (ring `rank` is unused)
 *
 * Ring control (256 bytes: the writer's words and the reader's on cache lines of their own):
 *   offset        width       field
 *   0             8           head: bytes ever written; a release store publishes them
 *   8             4           writer_pid: 0 while free, else the pid that claimed the ring (CAS)
 *   12            4           writer_closed: 1 once the writer has disconnected or closed
 *   16            4           space_waiting: 1 while the writer is (about to be) waiting on space
 *   128           8           tail: bytes ever consumed; a release store frees them for the writer
 *   136           4           space: futex word, bumped by the reader when it frees space
 *   140           4           reader_broken: 1 once the reader has dropped the ring
 *
 * Ring data: records start at multiples of 64 bytes; stream position p lives at offset
 * p mod ring_bytes. A record is the 48-byte wire header (wire.c) and frame_len payload bytes,
 * padded to a multiple of 64. A record never wraps: when it does not fit before the end of
 * the ring, the writer marks the rest as a pad record (its first 4 bytes are "PPAD") and
 * starts the record at offset 0. While copying a large frame the writer publishes head
 * every PUB_CHUNK bytes and the reader copies out what is published, releasing it as it
 * goes, so the two copies of a frame overlap. A writer waits for a record's whole space
 * before it starts, so it never stops inside a record.
 *
 * Sizes: a ring holds RING_MIN (4 MiB; in jobs of more than 33 ranks INBOX_BUDGET / (size - 1))
 * and never less than two records of frame_bytes, so that the writer fills one while the
 * reader drains the other. A segment is sparse: the owner allocates its header and ring
 * controls at open, a writer its ring at connect (posix_fallocate), so that a full /dev/shm
 * is an error there and not a SIGBUS at the first write of a page. A job of n ranks on one
 * host uses at most n (n - 1) rings, 4 MiB each for n <= 33.
 *
 * Wakeups: when the rings run dry the reader polls them for RX_SPIN_NS, yielding the CPU
 * between polls (on a host with fewer cores than busy threads a pure spin would delay the
 * very threads it waits for), then sets sleeping, looks at every ring once more, and sleeps
 * on doorbell. A writer stores head, then reads sleeping (both sequentially consistent: one
 * of the two sees the other) and makes the futex call only when the reader sleeps, so a
 * busy reader costs its writers no system calls. Space works the same way in the other
 * direction, per ring.
 *
 * Liveness: the receive thread checks every CHECK_NS that the pids of its writers and of
 * the inboxes it writes to are alive (a zombie counts as dead) and reports on_link_lost
 * for those that are not. A writer waiting for space checks its reader the same way and
 * fails with PETREL_ERR_IO. The owner of an inbox unlinks it in close; an inbox whose owner
 * died is unlinked by the peer that notices, or replaced by the next open of that name.
 *
 * Links do not reopen: once either side has dropped a ring (disconnect, close, bad input,
 * death), connect to that peer fails with PETREL_ERR_STATE.
 */
#include "net_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SHM_MAGIC   0x314d48534c525450ull /* bytes "PTRLSHM1" */
#define SHM_VERSION 1
#define PAD_MAGIC   0x44415050u /* bytes "PPAD" */
#define HDR         PETRELI_WIRE_HEADER

/* Tuning, measured on the 2-core VM of docs/net-shm.md. */
#define RING_MIN     (4u << 20)   /* ring capacity floor: 4 MiB... */
#define INBOX_BUDGET (128u << 20) /* ...lowered in big jobs to this over all rings of an inbox */
#define PUB_CHUNK    (256u << 10) /* the writer publishes head every 256 KiB of a frame */
#define RX_SPIN_NS   50000ull     /* the reader polls empty rings 50 us before it sleeps */
#define TX_SPIN_NS   20000ull     /* a writer polls a full ring 20 us before it sleeps */
#define RX_SLEEP_NS  100000000ull /* the reader sleeps at most 100 ms at a time */
#define TX_SLEEP_NS  20000000ull  /* a writer sleeps at most 20 ms between liveness checks */
#define CHECK_NS     100000000ull /* the reader checks peer pids every 100 ms */
#define RX_BUDGET    (4u << 20)   /* bytes read from one ring before visiting the next */
#define NAME_BYTES   128

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "shared-memory rings need lock-free (address-free) 32- and 64-bit atomics");

typedef struct shm_header {
    _Atomic uint64_t magic;
    uint32_t version, size, rank, pid;
    uint64_t ring_bytes, rings_offset, segment_bytes;
    unsigned char pad0[16];
    _Atomic uint32_t doorbell, sleeping, closed;
    unsigned char pad1[180];
} shm_header;

typedef struct shm_ring_ctl {
    _Atomic uint64_t head;
    _Atomic uint32_t writer_pid, writer_closed, space_waiting;
    unsigned char pad0[108];
    _Atomic uint64_t tail;
    _Atomic uint32_t space, reader_broken;
    unsigned char pad1[112];
} shm_ring_ctl;

_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4,
               "atomics must have the size of their value to live in shared memory");
_Static_assert(sizeof(shm_header) == 256 && offsetof(shm_header, doorbell) == 64 &&
                   offsetof(shm_header, closed) == 72,
               "shm_header must match the field table");
_Static_assert(sizeof(shm_ring_ctl) == 256 && offsetof(shm_ring_ctl, tail) == 128 &&
                   offsetof(shm_ring_ctl, reader_broken) == 140,
               "shm_ring_ctl must match the field table");

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t align64(uint64_t n) {
    return (n + 63) & ~(uint64_t)63;
}

/* Futexes on words in MAP_SHARED memory: not FUTEX_PRIVATE, the key is the page. */
static void futex_wait(_Atomic uint32_t *word, uint32_t seen, uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Bumps word and wakes its sleepers when *flag says someone sleeps (or is about to).
 * The caller's preceding store of an index was sequentially consistent: either the
 * sleeper's re-check after setting flag sees the index, or this load sees the flag. */
static void wake_if_waiting(_Atomic uint32_t *flag, _Atomic uint32_t *word) {
    if (atomic_load(flag) && atomic_exchange(flag, 0)) {
        atomic_fetch_add(word, 1);
        futex_wake_all(word);
    }
}

static void ring_bell(_Atomic uint32_t *word) {
    atomic_fetch_add(word, 1);
    futex_wake_all(word);
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

/* False once pid has exited, also while it is a zombie nobody has reaped yet. */
static bool pid_alive(int pid) {
    if (pid <= 0) return false;
    if (pid == (int)getpid()) return true;
    if (kill(pid, 0) != 0 && errno == ESRCH) return false;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno != ENOENT;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return true;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    if (!paren || paren[1] != ' ') return true;
    return paren[2] != 'Z' && paren[2] != 'X';
}

/* ---- mappings --------------------------------------------------------------------------- */

/* Inboxes of this process by name, so that a transport connecting to another transport
 * of the same process (tests, threads as nodes) uses the very same mapping: then
 * ThreadSanitizer sees both sides of every ring at the same addresses. */
typedef struct shm_reg {
    struct shm_reg *next;
    char name[NAME_BYTES];
    unsigned char *base;
    size_t bytes;
    int refs;
    bool listed; /* the name still refers to this mapping (its owner has not closed) */
} shm_reg;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static shm_reg *reg_head;

typedef struct shm_map {
    unsigned char *base; /* NULL when not mapped */
    size_t bytes;
    shm_reg *reg; /* non-NULL: a reference to a registered mapping */
} shm_map;

static petrel_err reg_add(const char *name, shm_map *m) {
    shm_reg *r = petrel_calloc(1, sizeof *r);
    if (!r) return PETREL_ERR_NOMEM;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->base = m->base;
    r->bytes = m->bytes;
    r->refs = 1;
    r->listed = true;
    pthread_mutex_lock(&reg_mu);
    r->next = reg_head;
    reg_head = r;
    pthread_mutex_unlock(&reg_mu);
    m->reg = r;
    return PETREL_OK;
}

static bool reg_find(const char *name, shm_map *out) {
    bool found = false;
    pthread_mutex_lock(&reg_mu);
    for (shm_reg *r = reg_head; r; r = r->next) {
        if (r->listed && strcmp(r->name, name) == 0) {
            r->refs++;
            *out = (shm_map){.base = r->base, .bytes = r->bytes, .reg = r};
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

static void reg_unlist(shm_reg *r) {
    pthread_mutex_lock(&reg_mu);
    r->listed = false;
    pthread_mutex_unlock(&reg_mu);
}

static void map_release(shm_map *m) {
    if (!m->base) return;
    if (m->reg) {
        shm_reg *r = m->reg, *dead = NULL;
        pthread_mutex_lock(&reg_mu);
        if (--r->refs == 0) {
            for (shm_reg **pp = &reg_head; *pp; pp = &(*pp)->next) {
                if (*pp == r) {
                    *pp = r->next;
                    break;
                }
            }
            dead = r;
        }
        pthread_mutex_unlock(&reg_mu);
        if (dead) {
            munmap(dead->base, dead->bytes);
            petrel_free(dead);
        }
    } else {
        munmap(m->base, m->bytes);
    }
    *m = (shm_map){0};
}

/* Maps the segment called name when it exists and is initialized. PETREL_ERR_NOT_FOUND
 * while it is missing or still being set up (worth retrying), PETREL_ERR_FORMAT when it
 * is not a petrel inbox of this version, PETREL_ERR_IO for other failures. */
static petrel_err map_existing(const char *name, shm_map *out) {
    if (reg_find(name, out)) return PETREL_OK;
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == ENOENT)
            return petrel_error_set(PETREL_ERR_NOT_FOUND, "shm segment %s does not exist", name);
        return petrel_error_set(PETREL_ERR_IO, "shm_open %s: %s", name, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return petrel_error_set(PETREL_ERR_IO, "fstat %s: %s", name, strerror(e));
    }
    if ((size_t)st.st_size < sizeof(shm_header)) { /* its creator has not sized it yet */
        close(fd);
        return petrel_error_set(PETREL_ERR_NOT_FOUND, "shm segment %s is not initialized", name);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (base == MAP_FAILED)
        return petrel_error_set(PETREL_ERR_IO, "mmap %s (%lld bytes): %s", name,
                                (long long)st.st_size, strerror(e));
    shm_map m = {.base = base, .bytes = (size_t)st.st_size};
    uint64_t magic = atomic_load_explicit(&((shm_header *)base)->magic, memory_order_acquire);
    if (magic == 0) {
        map_release(&m);
        return petrel_error_set(PETREL_ERR_NOT_FOUND, "shm segment %s is not initialized", name);
    }
    if (magic != SHM_MAGIC) {
        map_release(&m);
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "shm segment %s is not a petrel inbox (magic %016llx)", name,
                                (unsigned long long)magic);
    }
    *out = m;
    return PETREL_OK;
}

/* Unlinks name if it is still the inbox of (dead) pid, and not a newer one. */
static void unlink_if_owned_by(const char *name, int pid) {
    int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return;
    struct stat st;
    bool stale = false;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(shm_header)) {
        void *base = mmap(NULL, sizeof(shm_header), PROT_READ, MAP_SHARED, fd, 0);
        if (base != MAP_FAILED) {
            const shm_header *h = base;
            stale = atomic_load_explicit(&h->magic, memory_order_acquire) == SHM_MAGIC &&
                    (int)h->pid == pid;
            munmap(base, sizeof(shm_header));
        }
    }
    close(fd);
    if (stale) shm_unlink(name);
}

/* Allocates the pages of [off, off + len) of segment name now, so that running out of
 * /dev/shm is an error here and not a SIGBUS at the first write of a page. */
static petrel_err reserve(const char *name, uint64_t off, uint64_t len) {
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return petrel_error_set(PETREL_ERR_IO, "shm_open %s: %s", name, strerror(errno));
    int e = posix_fallocate(fd, (off_t)off, (off_t)len);
    close(fd);
    if (e != 0)
        return petrel_error_set(PETREL_ERR_IO,
                                "cannot allocate %llu bytes of shm segment %s: %s (is /dev/shm "
                                "full or too small?)",
                                (unsigned long long)len, name, strerror(e));
    return PETREL_OK;
}

/* ---- the transport ---------------------------------------------------------------------- */

enum { LINK_NONE = 0, LINK_UP, LINK_DOWN, LINK_LOST };

typedef struct shm_peer {
    _Atomic int link; /* LINK_*: UP once connected, or once the peer claimed its ring here */

    /* Sending to the peer: under mu. */
    pthread_mutex_t mu;
    shm_map out;         /* the peer's inbox */
    shm_header *out_hdr; /* = out.base */
    shm_ring_ctl *tx;    /* my ring's control in the peer's inbox */
    unsigned char *tx_data;
    uint64_t tx_cap;
    uint64_t tx_head; /* = tx->head: this process is the ring's only writer */
    char out_name[NAME_BYTES];
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
} shm_peer;

typedef struct shm_transport {
    int rank, size;
    int pid;
    petreli_wire_limits lim;
    petreli_transport_events ev;
    char job[65]; /* the job id, made a valid name (at most 64 bytes) */
    char name[NAME_BYTES];
    shm_map in;
    shm_header *hdr;
    shm_ring_ctl *ctl; /* size entries, by sender rank */
    unsigned char *rings;
    uint64_t ring_bytes;
    shm_peer *peers;
    int peers_init; /* how many peer mutexes exist */
    _Atomic int stopping;
    _Atomic int sealed; /* the inbox name is unlinked */
    petrel_thread *thread;
} shm_transport;

static void peer_name(const shm_transport *t, int rank, char *out, size_t size) {
    snprintf(out, size, "/petrel-%s-%d", t->job, rank);
}

/* The link to s is gone: stop reading its ring, make its writes fail, and report it
 * unless it was already dropped or reported. */
static void link_lost(shm_transport *t, int s, const char *why) {
    shm_peer *p = &t->peers[s];
    atomic_store(&p->rx_stop, 1);
    atomic_store(&t->ctl[s].reader_broken, 1);
    ring_bell(&t->ctl[s].space);
    int cur = atomic_load(&p->link);
    while (cur == LINK_NONE || cur == LINK_UP) {
        if (atomic_compare_exchange_weak(&p->link, &cur, LINK_LOST)) {
            PETREL_LOG_DEBUG("net", "shm: link to rank %d lost: %s", s, why);
            t->ev.on_link_lost(t->ev.ctx, s, why);
            return;
        }
    }
}

/* ---- receiving -------------------------------------------------------------------------- */

/* Copies out what ring s has published, at most RX_BUDGET bytes. True when it made progress. */
static bool rx_service(shm_transport *t, int s) {
    shm_peer *p = &t->peers[s];
    shm_ring_ctl *c = &t->ctl[s];
    const unsigned char *data = t->rings + (size_t)s * t->ring_bytes;
    const uint64_t cap = t->ring_bytes;
    bool progress = false;
    uint64_t budget = RX_BUDGET;
    char why[320];

    while (budget > 0 && !atomic_load_explicit(&p->rx_stop, memory_order_relaxed)) {
        uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
        uint64_t avail = head - p->rx_tail;
        if (avail == 0) break;
        if (avail > cap) {
            snprintf(why, sizeof why, "rank %d corrupted its shm ring (head %llu, tail %llu)", s,
                     (unsigned long long)head, (unsigned long long)p->rx_tail);
            link_lost(t, s, why);
            return true;
        }
        if (!p->rx_in_frame) {
            uint64_t off = p->rx_tail % cap;
            uint32_t first;
            memcpy(&first, data + off, 4);
            if (first == PAD_MAGIC) {
                if (avail < cap - off) break; /* the writer publishes a pad in one store */
                p->rx_tail += cap - off;
                atomic_store(&c->tail, p->rx_tail);
                wake_if_waiting(&c->space_waiting, &c->space);
                progress = true;
                continue;
            }
            if (avail < HDR) break;
            unsigned char raw[HDR];
            memcpy(raw, data + off, HDR); /* decode a private copy: the peer may scribble */
            petreli_wire_header h;
            if (petreli_wire_decode(raw, &t->lim, &h) != PETREL_OK) {
                snprintf(why, sizeof why, "rank %d sent a bad frame header over shm: %s", s,
                         petrel_errmsg());
                link_lost(t, s, why);
                return true;
            }
            if (h.src != (uint32_t)s) {
                snprintf(why, sizeof why, "a frame in rank %d's shm ring claims to be from rank %u",
                         s, h.src);
                link_lost(t, s, why);
                return true;
            }
            if (off + align64(HDR + (uint64_t)h.frame_len) > cap) {
                snprintf(why, sizeof why, "rank %d's frame of %u bytes crosses the end of the ring",
                         s, h.frame_len);
                link_lost(t, s, why);
                return true;
            }
            int none = LINK_NONE;
            atomic_compare_exchange_strong(&p->link, &none, LINK_UP); /* accepted */
            void *dst = t->ev.frame_begin(t->ev.ctx, s, &h);
            if (!dst) {
                snprintf(why, sizeof why, "the node refused a frame from rank %d (type %u)", s,
                         h.type);
                link_lost(t, s, why);
                return true;
            }
            p->rx_h = h;
            p->rx_dst = dst;
            p->rx_start = p->rx_tail;
            p->rx_copied = 0;
            p->rx_in_frame = true;
            progress = true;
        }
        /* Copy what is published of the payload, then release it. */
        const uint64_t len = p->rx_h.frame_len, rec = align64(HDR + len);
        uint64_t published = head - (p->rx_start + HDR);
        if (published > len) published = len;
        if (published > p->rx_copied) {
            uint64_t n = published - p->rx_copied;
            memcpy(p->rx_dst + p->rx_copied, data + p->rx_start % cap + HDR + p->rx_copied, n);
            p->rx_copied += n;
            budget = n < budget ? budget - n : 0;
            progress = true;
        }
        if (p->rx_copied == len && head - p->rx_start >= rec) {
            p->rx_tail = p->rx_start + rec;
            p->rx_in_frame = false;
            atomic_store(&c->tail, p->rx_tail);
            wake_if_waiting(&c->space_waiting, &c->space);
            t->ev.frame_done(t->ev.ctx, s, &p->rx_h, p->rx_dst);
            progress = true;
            if (budget > HDR) budget -= HDR;
        } else {
            uint64_t done = p->rx_start + HDR + p->rx_copied;
            if (done > p->rx_tail) {
                p->rx_tail = done;
                atomic_store(&c->tail, done);
                wake_if_waiting(&c->space_waiting, &c->space);
            }
            break; /* the rest of the frame is not published yet */
        }
    }
    return progress;
}

/* Any ring with unread bytes? */
static bool rx_any(shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        if (s == t->rank || atomic_load_explicit(&t->peers[s].rx_stop, memory_order_relaxed))
            continue;
        if (atomic_load(&t->ctl[s].head) != t->peers[s].rx_tail) return true;
    }
    return false;
}

/* Rings whose writer closed: report them once drained. Cheap; runs before every sleep. */
static void rx_check_closed(shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        shm_peer *p = &t->peers[s];
        if (s == t->rank || atomic_load_explicit(&p->rx_stop, memory_order_relaxed)) continue;
        shm_ring_ctl *c = &t->ctl[s];
        if (atomic_load_explicit(&c->writer_pid, memory_order_relaxed) == 0) continue;
        int none = LINK_NONE;
        atomic_compare_exchange_strong(&p->link, &none, LINK_UP); /* accepted */
        if (atomic_load_explicit(&c->writer_closed, memory_order_acquire) &&
            atomic_load_explicit(&c->head, memory_order_acquire) == p->rx_tail) {
            char why[96];
            snprintf(why, sizeof why, "rank %d closed its shm link", s);
            link_lost(t, s, why);
        }
    }
}

/* Writers and inboxes whose process died: report them (after reading what they wrote),
 * and unlink a dead peer's inbox, which nobody else would. */
static void rx_check_pids(shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        shm_peer *p = &t->peers[s];
        if (s == t->rank) continue;
        int link = atomic_load(&p->link);
        if (link == LINK_DOWN || link == LINK_LOST) continue;
        int wpid = (int)atomic_load_explicit(&t->ctl[s].writer_pid, memory_order_relaxed);
        int opid = atomic_load(&p->out_pid);
        bool wdead = wpid && !atomic_load(&p->rx_stop) && !pid_alive(wpid);
        bool odead = opid && (opid == wpid ? wdead : !pid_alive(opid));
        if (odead) {
            char name[NAME_BYTES];
            peer_name(t, s, name, sizeof name);
            unlink_if_owned_by(name, opid);
        }
        if (wdead) {
            while (rx_service(t, s)) continue; /* its last complete frames are still valid */
        }
        if (wdead || odead) {
            char why[96];
            snprintf(why, sizeof why, "rank %d (pid %d) exited", s, wdead ? wpid : opid);
            link_lost(t, s, why);
        }
    }
}

static void *rx_main(void *arg) {
    shm_transport *t = arg;
    shm_header *hdr = t->hdr;
    uint64_t last_check = petrel_now_ns(), idle_since = 0;
    int start = 0;
    while (!atomic_load_explicit(&t->stopping, memory_order_acquire)) {
        bool progress = false;
        for (int i = 0; i < t->size; i++) { /* rotate the first ring visited: fairness */
            int s = (start + i) % t->size;
            if (s != t->rank) progress |= rx_service(t, s);
        }
        start = (start + 1) % t->size;
        uint64_t now = petrel_now_ns();
        if (now - last_check >= CHECK_NS) {
            rx_check_pids(t);
            last_check = now;
        }
        if (progress) {
            idle_since = 0;
            continue;
        }
        if (idle_since == 0) idle_since = now;
        if (now - idle_since < RX_SPIN_NS) {
            sched_yield(); /* polls, yet lets a thread that has work run first */
            continue;
        }
        rx_check_closed(t);
        uint32_t bell = atomic_load(&hdr->doorbell);
        atomic_store(&hdr->sleeping, 1);
        if (!rx_any(t) && !atomic_load(&t->stopping)) futex_wait(&hdr->doorbell, bell, RX_SLEEP_NS);
        atomic_store(&hdr->sleeping, 0);
        idle_since = 0;
    }
    return NULL;
}

/* ---- sending ---------------------------------------------------------------------------- */

/* Why sends to peer must fail now, or NULL. Caller holds p->mu and p is mapped. */
static const char *tx_broken(shm_transport *t, shm_peer *p) {
    int link = atomic_load(&p->link);
    if (link == LINK_DOWN) return "the link was disconnected";
    if (link == LINK_LOST) return "the link was lost";
    if (atomic_load_explicit(&t->stopping, memory_order_relaxed)) return "the transport is closing";
    if (atomic_load(&p->out_hdr->closed)) return "the peer closed its inbox";
    if (atomic_load(&p->tx->reader_broken)) return "the peer dropped the link";
    return NULL;
}

static void tx_publish(shm_peer *p, uint64_t pos) {
    atomic_store(&p->tx->head, pos); /* seq_cst: see wake_if_waiting */
    wake_if_waiting(&p->out_hdr->sleeping, &p->out_hdr->doorbell);
}

/* Waits until the ring has need free bytes after tx_head. */
static petrel_err tx_wait_space(shm_transport *t, shm_peer *p, int peer, uint64_t need,
                                uint64_t deadline_ns) {
    shm_ring_ctl *c = p->tx;
    const uint64_t cap = p->tx_cap;
    uint64_t spin_until = 0;
    for (;;) {
        uint64_t tail = atomic_load_explicit(&c->tail, memory_order_acquire);
        uint64_t used = p->tx_head - tail;
        if (used > cap)
            return petrel_error_set(PETREL_ERR_IO,
                                    "rank %d corrupted its shm ring (tail %llu, head %llu)", peer,
                                    (unsigned long long)tail, (unsigned long long)p->tx_head);
        if (cap - used >= need) return PETREL_OK;
        const char *why = tx_broken(t, p);
        if (why) return petrel_error_set(PETREL_ERR_IO, "send to rank %d over shm: %s", peer, why);
        uint64_t now = petrel_now_ns();
        if (now >= deadline_ns)
            return petrel_error_set(PETREL_ERR_TIMEOUT,
                                    "send to rank %d over shm: its ring stayed full (%llu of %llu "
                                    "bytes unread) until the deadline",
                                    peer, (unsigned long long)used, (unsigned long long)cap);
        if (spin_until == 0) spin_until = now + TX_SPIN_NS;
        if (now < spin_until) {
            sched_yield();
            continue;
        }
        int pid = atomic_load(&p->out_pid);
        if (!pid_alive(pid))
            return petrel_error_set(PETREL_ERR_IO,
                                    "send to rank %d over shm: its process (pid %d) "
                                    "exited with %llu bytes unread",
                                    peer, pid, (unsigned long long)used);
        uint32_t seen = atomic_load(&c->space);
        atomic_store(&c->space_waiting, 1);
        tail = atomic_load(&c->tail); /* seq_cst: pairs with the reader's tail store */
        if (cap - (p->tx_head - tail) < need) {
            uint64_t ns = deadline_ns - now;
            futex_wait(&c->space, seen, ns < TX_SLEEP_NS ? ns : TX_SLEEP_NS);
        }
        atomic_store(&c->space_waiting, 0);
    }
}

/* Writes one record: the 48 bytes at head, then the payload from iov (payload bytes). */
static petrel_err tx_record(shm_transport *t, shm_peer *p, int peer, const unsigned char *head,
                            const struct iovec *iov, int iovcnt, uint64_t payload,
                            uint64_t deadline_ns) {
    const uint64_t cap = p->tx_cap, rec = align64(HDR + payload);
    if (rec > cap)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "frame of %llu bytes does not fit rank %d's shm ring of %llu "
                                "(do the nodes agree on frame_bytes?)",
                                (unsigned long long)payload, peer, (unsigned long long)cap);
    const char *why = tx_broken(t, p);
    if (why) return petrel_error_set(PETREL_ERR_IO, "send to rank %d over shm: %s", peer, why);
    uint64_t off = p->tx_head % cap;
    if (off + rec > cap) {
        petrel_err err = tx_wait_space(t, p, peer, cap - off, deadline_ns);
        if (err) return err;
        uint32_t pad = PAD_MAGIC;
        memcpy(p->tx_data + off, &pad, 4);
        p->tx_head += cap - off;
        tx_publish(p, p->tx_head);
        off = 0;
    }
    petrel_err err = tx_wait_space(t, p, peer, rec, deadline_ns);
    if (err) return err;
    unsigned char *dst = p->tx_data + off;
    const uint64_t start = p->tx_head;
    memcpy(dst, head, HDR);
    dst += HDR;
    uint64_t done = 0, unpublished = 0;
    for (int i = 0; i < iovcnt; i++) {
        const unsigned char *src = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            size_t n = PUB_CHUNK - unpublished;
            if (n > left) n = left;
            memcpy(dst + done, src, n);
            src += n;
            left -= n;
            done += n;
            unpublished += n;
            if (unpublished == PUB_CHUNK && done < payload) {
                tx_publish(p, start + HDR + done);
                unpublished = 0;
            }
        }
    }
    p->tx_head = start + rec;
    tx_publish(p, p->tx_head);
    return PETREL_OK;
}

/* ---- connecting ------------------------------------------------------------------------- */

static petrel_err connect_locked(shm_transport *t, shm_peer *p, int peer, const char *addr,
                                 uint64_t deadline_ns) {
    if (p->out.base) return PETREL_OK;
    int link = atomic_load(&p->link);
    if (link == LINK_DOWN || link == LINK_LOST)
        return petrel_error_set(
            PETREL_ERR_STATE, "the shm link to rank %d was dropped; shm links do not reopen", peer);
    if (strlen(addr) >= NAME_BYTES)
        return petrel_error_set(PETREL_ERR_INVALID, "shm address too long: %s", addr);
    shm_map m;
    for (;;) {
        petrel_err err = map_existing(addr, &m);
        if (err == PETREL_OK) break;
        if (err != PETREL_ERR_NOT_FOUND) return err;
        if (petrel_now_ns() >= deadline_ns)
            return petrel_error_set(PETREL_ERR_NOT_FOUND,
                                    "rank %d's shm inbox %s did not appear before the deadline",
                                    peer, addr);
        sleep_ns(200000); /* polling for the peer's open: it may start later than us */
    }
    shm_header *h = (shm_header *)m.base;
    petrel_err err = PETREL_OK;
    uint64_t rb = h->ring_bytes;
    if (h->version != SHM_VERSION)
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "shm inbox %s has version %u, this petrel speaks %u", addr,
                               h->version, SHM_VERSION);
    else if ((int)h->size != t->size || (int)h->rank != peer)
        err = petrel_error_set(PETREL_ERR_INVALID,
                               "shm inbox %s belongs to rank %u of %u, expected rank %d of %d",
                               addr, h->rank, h->size, peer, t->size);
    else if (rb < 128 || rb % 64 != 0 || h->segment_bytes != m.bytes ||
             h->rings_offset < sizeof(shm_header) + (uint64_t)t->size * sizeof(shm_ring_ctl) ||
             (h->segment_bytes - h->rings_offset) / rb < (uint64_t)t->size)
        err = petrel_error_set(PETREL_ERR_FORMAT, "shm inbox %s has an inconsistent layout", addr);
    if (err) {
        map_release(&m);
        return err;
    }
    err = reserve(addr, h->rings_offset + (uint64_t)t->rank * rb, rb);
    if (err) {
        map_release(&m);
        return err;
    }
    shm_ring_ctl *c = (shm_ring_ctl *)(m.base + sizeof(shm_header)) + t->rank;
    uint32_t expect = 0;
    if (!atomic_compare_exchange_strong(&c->writer_pid, &expect, (uint32_t)t->pid) &&
        expect != (uint32_t)t->pid) {
        map_release(&m);
        return petrel_error_set(PETREL_ERR_STATE,
                                "rank %d's ring in shm inbox %s is held by pid %u (another node "
                                "with rank %d?)",
                                t->rank, addr, expect, t->rank);
    }
    if (atomic_load(&c->writer_closed) || atomic_load(&c->reader_broken)) {
        map_release(&m);
        return petrel_error_set(
            PETREL_ERR_STATE, "the shm link to rank %d was dropped; shm links do not reopen", peer);
    }
    p->out = m;
    p->out_hdr = h;
    p->tx = c;
    p->tx_data = m.base + h->rings_offset + (size_t)t->rank * rb;
    p->tx_cap = rb;
    p->tx_head = atomic_load(&c->head);
    snprintf(p->out_name, sizeof p->out_name, "%s", addr);
    atomic_store(&p->out_pid, (int)h->pid);
    p->last_out_pid = (int)h->pid;
    int none = LINK_NONE;
    atomic_compare_exchange_strong(&p->link, &none, LINK_UP);
    return PETREL_OK;
}

/* Unmaps the peer's inbox, telling its reader that no more frames come, and unlinks the
 * inbox if its owner died (nobody else may be left to do it). Caller holds p->mu. */
static void tx_close_locked(shm_peer *p) {
    if (!p->out.base) return;
    atomic_store(&p->tx->writer_closed, 1);
    ring_bell(&p->out_hdr->doorbell);
    int pid = atomic_exchange(&p->out_pid, 0);
    if (pid && !pid_alive(pid)) unlink_if_owned_by(p->out_name, pid);
    map_release(&p->out);
    p->out_hdr = NULL;
    p->tx = NULL;
    p->tx_data = NULL;
}

/* ---- the operations --------------------------------------------------------------------- */

static petrel_err shm_open_op(void **out, const petreli_transport_config *cfg,
                              petreli_transport_events ev, char *addr, size_t addr_size) {
    if (cfg->size < 1 || cfg->size > 65536 || cfg->rank < 0 || cfg->rank >= cfg->size)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: rank %d of %d is out of range", cfg->rank,
                                cfg->size);
    if (!cfg->job_id || !cfg->job_id[0])
        return petrel_error_set(PETREL_ERR_INVALID, "shm: needs a job id to name its segments "
                                                    "(PETREL_JOB_ID)");
    if (cfg->limits.frame_bytes == 0 || cfg->limits.frame_bytes > (1u << 30))
        return petrel_error_set(PETREL_ERR_INVALID, "shm: frame_bytes %u is out of range",
                                cfg->limits.frame_bytes);
    if (!ev.frame_begin || !ev.frame_done || !ev.on_link_lost)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: frame and link events are required");

    shm_transport *t = petrel_calloc(1, sizeof *t);
    if (!t) return PETREL_ERR_NOMEM;
    t->rank = cfg->rank;
    t->size = cfg->size;
    t->pid = (int)getpid();
    t->lim = cfg->limits;
    t->lim.size = cfg->size;
    t->ev = ev;
    size_t j = 0; /* a job id may come from anywhere: keep it a valid, harmless name */
    for (const char *c = cfg->job_id; *c && j < 64; c++, j++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-';
        t->job[j] = ok ? *c : '_';
    }
    peer_name(t, t->rank, t->name, sizeof t->name);
    petrel_err err = PETREL_OK;
    if (strlen(t->name) + 1 > addr_size) {
        err = petrel_error_set(PETREL_ERR_INVALID, "shm: address buffer of %zu bytes is too small",
                               addr_size);
        goto fail_free;
    }
    t->peers = petrel_calloc((size_t)t->size, sizeof *t->peers);
    if (!t->peers) {
        err = PETREL_ERR_NOMEM;
        goto fail_free;
    }
    for (; t->peers_init < t->size; t->peers_init++)
        pthread_mutex_init(&t->peers[t->peers_init].mu, NULL);

    /* Ring capacity: see "Sizes" at the top. */
    uint64_t rec = align64(HDR + (uint64_t)cfg->limits.frame_bytes);
    uint64_t least = t->size > 1 ? INBOX_BUDGET / (uint64_t)(t->size - 1) : RING_MIN;
    if (least > RING_MIN) least = RING_MIN;
    uint64_t rb = align64(2 * rec > least ? 2 * rec : least);
    long page = sysconf(_SC_PAGESIZE);
    uint64_t pg = page > 0 ? (uint64_t)page : 4096;
    uint64_t rings_offset =
        (sizeof(shm_header) + (uint64_t)t->size * sizeof(shm_ring_ctl) + pg - 1) / pg * pg;
    uint64_t seg = rings_offset + (uint64_t)t->size * rb;
    t->ring_bytes = rb;

    int fd = -1;
    for (int attempt = 0; fd < 0; attempt++) {
        fd = shm_open(t->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) break;
        if (errno != EEXIST || attempt > 0) {
            err = petrel_error_set(PETREL_ERR_IO, "shm_open %s: %s", t->name, strerror(errno));
            goto fail_free;
        }
        /* A stale inbox of a dead process (same job id, e.g. after a crash) may go. */
        shm_map old;
        if (map_existing(t->name, &old) == PETREL_OK) {
            int owner = (int)((shm_header *)old.base)->pid;
            map_release(&old);
            if (!pid_alive(owner)) {
                unlink_if_owned_by(t->name, owner);
                continue;
            }
            err = petrel_error_set(PETREL_ERR_STATE,
                                   "shm inbox %s already belongs to live pid %d: is another job "
                                   "using job id \"%s\"?",
                                   t->name, owner, cfg->job_id);
            goto fail_free;
        }
        err = petrel_error_set(PETREL_ERR_STATE,
                               "shm segment %s already exists and is not a petrel inbox of a dead "
                               "process; remove /dev/shm%s if it is stale",
                               t->name, t->name);
        goto fail_free;
    }
    if (ftruncate(fd, (off_t)seg) != 0) {
        err = petrel_error_set(PETREL_ERR_IO, "ftruncate %s to %llu bytes: %s", t->name,
                               (unsigned long long)seg, strerror(errno));
        close(fd);
        goto fail_unlink;
    }
    int e = posix_fallocate(fd, 0, (off_t)rings_offset); /* the header and ring controls */
    if (e != 0) {
        err = petrel_error_set(
            PETREL_ERR_IO, "cannot allocate shm segment %s: %s (is /dev/shm full or too small?)",
            t->name, strerror(e));
        close(fd);
        goto fail_unlink;
    }
    void *base = mmap(NULL, (size_t)seg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    e = errno;
    close(fd);
    if (base == MAP_FAILED) {
        err = petrel_error_set(PETREL_ERR_IO, "mmap %s (%llu bytes): %s", t->name,
                               (unsigned long long)seg, strerror(e));
        goto fail_unlink;
    }
    t->in = (shm_map){.base = base, .bytes = (size_t)seg};
    t->hdr = base;
    t->ctl = (shm_ring_ctl *)(t->in.base + sizeof(shm_header));
    t->rings = t->in.base + rings_offset;
    t->hdr->version = SHM_VERSION;
    t->hdr->size = (uint32_t)t->size;
    t->hdr->rank = (uint32_t)t->rank;
    t->hdr->pid = (uint32_t)t->pid;
    t->hdr->ring_bytes = rb;
    t->hdr->rings_offset = rings_offset;
    t->hdr->segment_bytes = seg;
    err = reg_add(t->name, &t->in);
    if (err) goto fail_unmap;
    atomic_store_explicit(&t->hdr->magic, SHM_MAGIC, memory_order_release);
    err = petrel_thread_start(&t->thread, rx_main, t);
    if (err) goto fail_unmap;
    snprintf(addr, addr_size, "%s", t->name);
    *out = t;
    return PETREL_OK;

fail_unmap:
    if (t->in.reg) reg_unlist(t->in.reg);
    map_release(&t->in);
fail_unlink:
    shm_unlink(t->name);
fail_free:
    for (int i = 0; i < t->peers_init; i++) pthread_mutex_destroy(&t->peers[i].mu);
    petrel_free(t->peers);
    petrel_free(t);
    return err;
}

static petrel_err shm_connect(void *tp, int peer, const char *addr, uint64_t deadline_ns) {
    shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: cannot connect rank %d to rank %d",
                                t->rank, peer);
    shm_peer *p = &t->peers[peer];
    pthread_mutex_lock(&p->mu);
    petrel_err err = connect_locked(t, p, peer, addr, deadline_ns);
    pthread_mutex_unlock(&p->mu);
    return err;
}

static petrel_err send_locked(shm_transport *t, int peer, const unsigned char *head,
                              const struct iovec *iov, int iovcnt, uint64_t payload,
                              uint64_t deadline_ns) {
    shm_peer *p = &t->peers[peer];
    pthread_mutex_lock(&p->mu);
    petrel_err err = PETREL_OK;
    int link = atomic_load(&p->link);
    if (link == LINK_DOWN || link == LINK_LOST) {
        err = petrel_error_set(PETREL_ERR_IO, "send to rank %d over shm: the link was %s", peer,
                               link == LINK_DOWN ? "disconnected" : "lost");
    } else if (!p->out.base) { /* a peer that connected to us is a link too: find its inbox */
        char name[NAME_BYTES];
        peer_name(t, peer, name, sizeof name);
        err = connect_locked(t, p, peer, name, deadline_ns);
    }
    if (!err) err = tx_record(t, p, peer, head, iov, iovcnt, payload, deadline_ns);
    pthread_mutex_unlock(&p->mu);
    return err;
}

static petrel_err shm_send(void *tp, int peer, const petreli_wire_header *h,
                           const struct iovec *iov, int iovcnt, uint64_t deadline_ns) {
    shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: rank %d cannot send to rank %d", t->rank,
                                peer);
    uint64_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    if (iovcnt < 0 || total != h->frame_len)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: iov holds %llu bytes for a frame of %u",
                                (unsigned long long)total, h->frame_len);
    petreli_wire_header hh = *h;
    hh.src = (uint32_t)t->rank;
    unsigned char head[HDR];
    petreli_wire_encode(&hh, head);
    return send_locked(t, peer, head, iov, iovcnt, total, deadline_ns);
}

petrel_err petreli_shm_send_raw(void *tp, int peer, const void *bytes, size_t len,
                                uint64_t deadline_ns) {
    shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank || len < HDR)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: bad raw send");
    struct iovec iov = {.iov_base = (unsigned char *)bytes + HDR, .iov_len = len - HDR};
    return send_locked(t, peer, bytes, &iov, 1, len - HDR, deadline_ns);
}

static bool shm_connected(void *tp, int peer) {
    shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank) return false;
    return atomic_load(&t->peers[peer].link) == LINK_UP;
}

/* Drops both directions: our writes to peer and its ring in our inbox. Called from the
 * receive thread (from a callback) it takes effect before the next frame; called from another
 * thread, it does not wait for the receive thread, so one frame callback for peer that was
 * about to start may still run after it returns. */
static void shm_disconnect(void *tp, int peer) {
    shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank) return;
    shm_peer *p = &t->peers[peer];
    atomic_store(&p->link, LINK_DOWN); /* first: a send waiting for space gives up */
    atomic_store(&p->rx_stop, 1);
    atomic_store(&t->ctl[peer].reader_broken, 1);
    ring_bell(&t->ctl[peer].space);
    pthread_mutex_lock(&p->mu);
    tx_close_locked(p);
    pthread_mutex_unlock(&p->mu);
}

/* Peers have mapped the inbox; the mapping outlives its name. */
static void shm_seal(void *tp) {
    shm_transport *t = tp;
    if (!atomic_exchange(&t->sealed, 1)) shm_unlink(t->name);
}

static void shm_close(void *tp) {
    shm_transport *t = tp;
    if (!t) return;
    atomic_store_explicit(&t->stopping, 1, memory_order_release);
    ring_bell(&t->hdr->doorbell);
    petrel_thread_join(t->thread, NULL);
    /* Writers blocked on our rings, in this process or others, notice at once. */
    atomic_store(&t->hdr->closed, 1);
    for (int s = 0; s < t->size; s++) {
        if (s == t->rank) continue;
        atomic_store(&t->ctl[s].reader_broken, 1);
        ring_bell(&t->ctl[s].space);
    }
    for (int s = 0; s < t->size; s++) {
        shm_peer *p = &t->peers[s];
        pthread_mutex_lock(&p->mu);
        tx_close_locked(p);
        pthread_mutex_unlock(&p->mu);
    }
    /* Inboxes of peers that died (and segments outlive processes): whoever notices unlinks. */
    for (int s = 0; s < t->size; s++) {
        int pids[2] = {t->peers[s].last_out_pid, (int)atomic_load(&t->ctl[s].writer_pid)};
        for (int i = 0; i < 2; i++) {
            if (pids[i] && pids[i] != t->pid && !pid_alive(pids[i])) {
                char name[NAME_BYTES];
                peer_name(t, s, name, sizeof name);
                unlink_if_owned_by(name, pids[i]);
                break;
            }
        }
    }
    if (!atomic_exchange(&t->sealed, 1)) shm_unlink(t->name);
    reg_unlist(t->in.reg);
    map_release(&t->in);
    for (int i = 0; i < t->peers_init; i++) pthread_mutex_destroy(&t->peers[i].mu);
    petrel_free(t->peers);
    petrel_free(t);
}

const petreli_transport_ops petreli_transport_shm = {
    .name = "shm",
    .open = shm_open_op,
    .connect = shm_connect,
    .send = shm_send,
    .connected = shm_connected,
    .seal = shm_seal,
    .disconnect = shm_disconnect,
    .close = shm_close,
};
