/*
 * The inbox segment of the shared-memory transport (shm.c) and the records in its rings:
 * the byte layout (the field tables below), mapping segments and the registry of this
 * process's mappings, futex wakeups and pid liveness, and the copy of a record into a
 * ring (the writer's side, in the sender's thread) and out of it (the reader's side, in
 * the receive thread).
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
 * Wakeups: when the rings run dry the reader (shm.c's receive thread) polls them for
 * RX_SPIN_NS, yielding the CPU between polls (on a host with fewer cores than busy threads
 * a pure spin would delay the very threads it waits for), then sets sleeping, looks at every
 * ring once more, and sleeps on doorbell. A writer stores head, then reads sleeping (both
 * sequentially consistent: one of the two sees the other) and makes the futex call only when the
 * reader sleeps, so a busy reader costs its writers no system calls. Space works the same way in
 * the other direction, per ring.
 */
#include "shm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAD_MAGIC 0x44415050u /* bytes "PPAD" */
#define HDR       PETRELI_WIRE_HEADER

/* Tuning, measured on the 2-core VM of docs/net-shm.md. */
#define PUB_CHUNK   (256u << 10) /* the writer publishes head every 256 KiB of a frame */
#define TX_SPIN_NS  20000ull     /* a writer polls a full ring 20 us before it sleeps */
#define TX_SLEEP_NS 20000000ull  /* a writer sleeps at most 20 ms between liveness checks */
#define RX_BUDGET   (4u << 20)   /* bytes read from one ring before visiting the next */

/* ---- small helpers ---------------------------------------------------------------------- */

/* Bumps word and wakes its sleepers when *flag says someone sleeps (or is about to).
 * The caller's preceding store of an index was sequentially consistent: either the
 * sleeper's re-check after setting flag sees the index, or this load sees the flag. */
static void wake_if_waiting(_Atomic uint32_t *flag, _Atomic uint32_t *word) {
    if (atomic_load(flag) && atomic_exchange(flag, 0)) petreli_futex_ring(word);
}

/* False once pid has exited, also while it is a zombie nobody has reaped yet. */
bool petreli_shm_pid_alive(int pid) {
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
struct petreli_shm_reg {
    struct petreli_shm_reg *next;
    char name[PETRELI_SHM_NAME_BYTES];
    unsigned char *base;
    size_t bytes;
    int refs;
    bool listed; /* the name still refers to this mapping (its owner has not closed) */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static petreli_shm_reg *reg_head;

petrel_err petreli_shm_reg_add(const char *name, petreli_shm_map *m) {
    petreli_shm_reg *r = petrel_calloc(1, sizeof *r);
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

static bool reg_find(const char *name, petreli_shm_map *out) {
    bool found = false;
    pthread_mutex_lock(&reg_mu);
    for (petreli_shm_reg *r = reg_head; r; r = r->next) {
        if (r->listed && strcmp(r->name, name) == 0) {
            r->refs++;
            *out = (petreli_shm_map){.base = r->base, .bytes = r->bytes, .reg = r};
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

void petreli_shm_reg_unlist(petreli_shm_reg *r) {
    pthread_mutex_lock(&reg_mu);
    r->listed = false;
    pthread_mutex_unlock(&reg_mu);
}

void petreli_shm_map_release(petreli_shm_map *m) {
    if (!m->base) return;
    if (m->reg) {
        petreli_shm_reg *r = m->reg, *dead = NULL;
        pthread_mutex_lock(&reg_mu);
        if (--r->refs == 0) {
            for (petreli_shm_reg **pp = &reg_head; *pp; pp = &(*pp)->next) {
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
    *m = (petreli_shm_map){0};
}

/* Maps the segment called name when it exists and is initialized. PETREL_ERR_NOT_FOUND
 * while it is missing or still being set up (worth retrying), PETREL_ERR_FORMAT when it
 * is not a petrel inbox of this version, PETREL_ERR_IO for other failures. */
petrel_err petreli_shm_map_existing(const char *name, petreli_shm_map *out) {
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
    if ((size_t)st.st_size < sizeof(petreli_shm_header)) { /* its creator has not sized it yet */
        close(fd);
        return petrel_error_set(PETREL_ERR_NOT_FOUND, "shm segment %s is not initialized", name);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (base == MAP_FAILED)
        return petrel_error_set(PETREL_ERR_IO, "mmap %s (%lld bytes): %s", name,
                                (long long)st.st_size, strerror(e));
    petreli_shm_map m = {.base = base, .bytes = (size_t)st.st_size};
    uint64_t magic =
        atomic_load_explicit(&((petreli_shm_header *)base)->magic, memory_order_acquire);
    if (magic == 0) {
        petreli_shm_map_release(&m);
        return petrel_error_set(PETREL_ERR_NOT_FOUND, "shm segment %s is not initialized", name);
    }
    if (magic != PETRELI_SHM_MAGIC) {
        petreli_shm_map_release(&m);
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "shm segment %s is not a petrel inbox (magic %016llx)", name,
                                (unsigned long long)magic);
    }
    *out = m;
    return PETREL_OK;
}

/* Unlinks name if it is still the inbox of (dead) pid, and not a newer one. */
void petreli_shm_unlink_if_owned_by(const char *name, int pid) {
    int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return;
    struct stat st;
    bool stale = false;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(petreli_shm_header)) {
        void *base = mmap(NULL, sizeof(petreli_shm_header), PROT_READ, MAP_SHARED, fd, 0);
        if (base != MAP_FAILED) {
            const petreli_shm_header *h = base;
            stale = atomic_load_explicit(&h->magic, memory_order_acquire) == PETRELI_SHM_MAGIC &&
                    (int)h->pid == pid;
            munmap(base, sizeof(petreli_shm_header));
        }
    }
    close(fd);
    if (stale) shm_unlink(name);
}

/* Allocates the pages of [off, off + len) of segment name now, so that running out of
 * /dev/shm is an error here and not a SIGBUS at the first write of a page. */
petrel_err petreli_shm_reserve(const char *name, uint64_t off, uint64_t len) {
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

/* ---- receiving: copying records out (the receive thread) -------------------------------- */

/* Copies out what ring s has published, at most RX_BUDGET bytes. True when it made progress. */
bool petreli_shm_rx_service(petreli_shm_transport *t, int s) {
    petreli_shm_peer *p = &t->peers[s];
    petreli_shm_ring_ctl *c = &t->ctl[s];
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
            petreli_shm_link_lost(t, s, why);
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
                petreli_shm_link_lost(t, s, why);
                return true;
            }
            if (h.src != (uint32_t)s) {
                snprintf(why, sizeof why, "a frame in rank %d's shm ring claims to be from rank %u",
                         s, h.src);
                petreli_shm_link_lost(t, s, why);
                return true;
            }
            if (off + petreli_shm_align64(HDR + (uint64_t)h.frame_len) > cap) {
                snprintf(why, sizeof why, "rank %d's frame of %u bytes crosses the end of the ring",
                         s, h.frame_len);
                petreli_shm_link_lost(t, s, why);
                return true;
            }
            int none = PETRELI_SHM_LINK_NONE;
            atomic_compare_exchange_strong(&p->link, &none, PETRELI_SHM_LINK_UP); /* accepted */
            void *dst = t->ev.frame_begin(t->ev.ctx, s, &h);
            if (!dst) {
                snprintf(why, sizeof why, "the node refused a frame from rank %d (type %u)", s,
                         h.type);
                petreli_shm_link_lost(t, s, why);
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
        const uint64_t len = p->rx_h.frame_len, rec = petreli_shm_align64(HDR + len);
        uint64_t published = head - (p->rx_start + HDR);
        if (published > len) published = len;
        if (published > p->rx_copied) {
            uint64_t n = published - p->rx_copied;
            unsigned char *to = p->rx_dst + p->rx_copied;
            const unsigned char *from = data + p->rx_start % cap + HDR + p->rx_copied;
            /* A message larger than the cache is written around it: saves the reads
             * of lines that are about to be overwritten (64 MiB: 15 to 20 GB/s). */
            if (p->rx_h.msg_len >= petreli_nocache_threshold())
                petreli_copy_nocache(to, from, n);
            else
                memcpy(to, from, n);
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

/* ---- sending: copying records in (the sender's thread) ---------------------------------- */

/* Why sends to peer must fail now, or NULL. Caller holds p->mu and p is mapped. */
static const char *tx_broken(petreli_shm_transport *t, petreli_shm_peer *p) {
    int link = atomic_load(&p->link);
    if (link == PETRELI_SHM_LINK_DOWN) return "the link was disconnected";
    if (link == PETRELI_SHM_LINK_LOST) return "the link was lost";
    if (atomic_load_explicit(&t->stopping, memory_order_relaxed)) return "the transport is closing";
    if (atomic_load(&p->out_hdr->closed)) return "the peer closed its inbox";
    if (atomic_load(&p->tx->reader_broken)) return "the peer dropped the link";
    return NULL;
}

static void tx_publish(petreli_shm_peer *p, uint64_t pos) {
    atomic_store(&p->tx->head, pos); /* seq_cst: see wake_if_waiting */
    wake_if_waiting(&p->out_hdr->sleeping, &p->out_hdr->doorbell);
}

/* Waits until the ring has need free bytes after tx_head. */
static petrel_err tx_wait_space(petreli_shm_transport *t, petreli_shm_peer *p, int peer,
                                uint64_t need, uint64_t deadline_ns) {
    petreli_shm_ring_ctl *c = p->tx;
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
        if (!petreli_shm_pid_alive(pid))
            return petrel_error_set(PETREL_ERR_IO,
                                    "send to rank %d over shm: its process (pid %d) "
                                    "exited with %llu bytes unread",
                                    peer, pid, (unsigned long long)used);
        uint32_t seen = atomic_load(&c->space);
        atomic_store(&c->space_waiting, 1);
        tail = atomic_load(&c->tail); /* seq_cst: pairs with the reader's tail store */
        if (cap - (p->tx_head - tail) < need) {
            uint64_t ns = deadline_ns - now;
            petreli_futex_wait(&c->space, seen, ns < TX_SLEEP_NS ? ns : TX_SLEEP_NS);
        }
        atomic_store(&c->space_waiting, 0);
    }
}

/* Writes one record: the 48 bytes at head, then the payload from iov (payload bytes). */
petrel_err petreli_shm_tx_record(petreli_shm_transport *t, petreli_shm_peer *p, int peer,
                                 const unsigned char *head, const struct iovec *iov, int iovcnt,
                                 uint64_t payload, uint64_t deadline_ns) {
    const uint64_t cap = p->tx_cap, rec = petreli_shm_align64(HDR + payload);
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
