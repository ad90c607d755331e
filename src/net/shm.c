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
 * This file holds the transport object, its receive thread, connecting and the
 * operations. The segment's byte layout, mapping, wakeups, and the copy of records into
 * and out of the rings are in shm_ring.c; what the two files share is in shm_impl.h.
 *
 * Sizes: a ring holds RING_MIN (4 MiB; in jobs of more than 33 ranks INBOX_BUDGET / (size - 1))
 * and never less than two records of frame_bytes, so that the writer fills one while the
 * reader drains the other. A segment is sparse: the owner allocates its header and ring
 * controls at open, a writer its ring at connect (posix_fallocate), so that a full /dev/shm
 * is an error there and not a SIGBUS at the first write of a page. A job of n ranks on one
 * host uses at most n (n - 1) rings, 4 MiB each for n <= 33.
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
#include "shm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Tuning, measured on the 2-core VM of docs/net-shm.md. */
#define RING_MIN     (4u << 20)   /* ring capacity floor: 4 MiB... */
#define INBOX_BUDGET (128u << 20) /* ...lowered in big jobs to this over all rings of an inbox */
#define RX_SPIN_NS   50000ull     /* the reader polls empty rings 50 us before it sleeps */
#define RX_SLEEP_NS  100000000ull /* the reader sleeps at most 100 ms at a time */
#define CHECK_NS     100000000ull /* the reader checks peer pids every 100 ms */

/* ---- small helpers ---------------------------------------------------------------------- */

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
}

/* ---- the transport ---------------------------------------------------------------------- */

static void peer_name(const petreli_shm_transport *t, int rank, char *out, size_t size) {
    snprintf(out, size, "/petrel-%s-%d", t->job, rank);
}

/* The link to s is gone: stop reading its ring, make its writes fail, and report it
 * unless it was already dropped or reported. */
void petreli_shm_link_lost(petreli_shm_transport *t, int s, const char *why) {
    petreli_shm_peer *p = &t->peers[s];
    atomic_store(&p->rx_stop, 1);
    atomic_store(&t->ctl[s].reader_broken, 1);
    petreli_futex_ring(&t->ctl[s].space);
    int cur = atomic_load(&p->link);
    while (cur == PETRELI_SHM_LINK_NONE || cur == PETRELI_SHM_LINK_UP) {
        if (atomic_compare_exchange_weak(&p->link, &cur, PETRELI_SHM_LINK_LOST)) {
            PETREL_LOG_DEBUG("net", "shm: link to rank %d lost: %s", s, why);
            t->ev.on_link_lost(t->ev.ctx, s, why);
            return;
        }
    }
}

/* ---- receiving -------------------------------------------------------------------------- */

/* Any ring with unread bytes? */
static bool rx_any(petreli_shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        if (s == t->rank || atomic_load_explicit(&t->peers[s].rx_stop, memory_order_relaxed))
            continue;
        if (atomic_load(&t->ctl[s].head) != t->peers[s].rx_tail) return true;
    }
    return false;
}

/* Rings whose writer closed: report them once drained. Cheap; runs before every sleep. */
static void rx_check_closed(petreli_shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        petreli_shm_peer *p = &t->peers[s];
        if (s == t->rank || atomic_load_explicit(&p->rx_stop, memory_order_relaxed)) continue;
        petreli_shm_ring_ctl *c = &t->ctl[s];
        if (atomic_load_explicit(&c->writer_pid, memory_order_relaxed) == 0) continue;
        int none = PETRELI_SHM_LINK_NONE;
        atomic_compare_exchange_strong(&p->link, &none, PETRELI_SHM_LINK_UP); /* accepted */
        if (atomic_load_explicit(&c->writer_closed, memory_order_acquire) &&
            atomic_load_explicit(&c->head, memory_order_acquire) == p->rx_tail) {
            char why[96];
            snprintf(why, sizeof why, "rank %d closed its shm link", s);
            petreli_shm_link_lost(t, s, why);
        }
    }
}

/* Writers and inboxes whose process died: report them (after reading what they wrote),
 * and unlink a dead peer's inbox, which nobody else would. */
static void rx_check_pids(petreli_shm_transport *t) {
    for (int s = 0; s < t->size; s++) {
        petreli_shm_peer *p = &t->peers[s];
        if (s == t->rank) continue;
        int link = atomic_load(&p->link);
        if (link == PETRELI_SHM_LINK_DOWN || link == PETRELI_SHM_LINK_LOST) continue;
        int wpid = (int)atomic_load_explicit(&t->ctl[s].writer_pid, memory_order_relaxed);
        int opid = atomic_load(&p->out_pid);
        bool wdead = wpid && !atomic_load(&p->rx_stop) && !petreli_shm_pid_alive(wpid);
        bool odead = opid && (opid == wpid ? wdead : !petreli_shm_pid_alive(opid));
        if (odead) {
            char name[PETRELI_SHM_NAME_BYTES];
            peer_name(t, s, name, sizeof name);
            petreli_shm_unlink_if_owned_by(name, opid);
        }
        if (wdead) {
            while (petreli_shm_rx_service(t, s))
                continue; /* its last complete frames are still valid */
        }
        if (wdead || odead) {
            char why[96];
            snprintf(why, sizeof why, "rank %d (pid %d) exited", s, wdead ? wpid : opid);
            petreli_shm_link_lost(t, s, why);
        }
    }
}

static void *rx_main(void *arg) {
    petreli_shm_transport *t = arg;
    petreli_shm_header *hdr = t->hdr;
    uint64_t last_check = petrel_now_ns(), idle_since = 0;
    int start = 0;
    while (!atomic_load_explicit(&t->stopping, memory_order_acquire)) {
        bool progress = false;
        for (int i = 0; i < t->size; i++) { /* rotate the first ring visited: fairness */
            int s = (start + i) % t->size;
            if (s != t->rank) progress |= petreli_shm_rx_service(t, s);
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
        if (!rx_any(t) && !atomic_load(&t->stopping))
            petreli_futex_wait(&hdr->doorbell, bell, RX_SLEEP_NS);
        atomic_store(&hdr->sleeping, 0);
        idle_since = 0;
    }
    return NULL;
}

/* ---- connecting ------------------------------------------------------------------------- */

static petrel_err connect_locked(petreli_shm_transport *t, petreli_shm_peer *p, int peer,
                                 const char *addr, uint64_t deadline_ns) {
    if (p->out.base) return PETREL_OK;
    int link = atomic_load(&p->link);
    if (link == PETRELI_SHM_LINK_DOWN || link == PETRELI_SHM_LINK_LOST)
        return petrel_error_set(
            PETREL_ERR_STATE, "the shm link to rank %d was dropped; shm links do not reopen", peer);
    if (strlen(addr) >= PETRELI_SHM_NAME_BYTES)
        return petrel_error_set(PETREL_ERR_INVALID, "shm address too long: %s", addr);
    petreli_shm_map m;
    for (;;) {
        petrel_err err = petreli_shm_map_existing(addr, &m);
        if (err == PETREL_OK) break;
        if (err != PETREL_ERR_NOT_FOUND) return err;
        if (petrel_now_ns() >= deadline_ns)
            return petrel_error_set(PETREL_ERR_NOT_FOUND,
                                    "rank %d's shm inbox %s did not appear before the deadline",
                                    peer, addr);
        sleep_ns(200000); /* polling for the peer's open: it may start later than us */
    }
    petreli_shm_header *h = (petreli_shm_header *)m.base;
    petrel_err err = PETREL_OK;
    uint64_t rb = h->ring_bytes;
    if (h->version != PETRELI_SHM_VERSION)
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "shm inbox %s has version %u, this petrel speaks %u", addr,
                               h->version, PETRELI_SHM_VERSION);
    else if ((int)h->size != t->size || (int)h->rank != peer)
        err = petrel_error_set(PETREL_ERR_INVALID,
                               "shm inbox %s belongs to rank %u of %u, expected rank %d of %d",
                               addr, h->rank, h->size, peer, t->size);
    else if (rb < 128 || rb % 64 != 0 || h->segment_bytes != m.bytes ||
             h->rings_offset <
                 sizeof(petreli_shm_header) + (uint64_t)t->size * sizeof(petreli_shm_ring_ctl) ||
             (h->segment_bytes - h->rings_offset) / rb < (uint64_t)t->size)
        err = petrel_error_set(PETREL_ERR_FORMAT, "shm inbox %s has an inconsistent layout", addr);
    if (err) {
        petreli_shm_map_release(&m);
        return err;
    }
    err = petreli_shm_reserve(addr, h->rings_offset + (uint64_t)t->rank * rb, rb);
    if (err) {
        petreli_shm_map_release(&m);
        return err;
    }
    petreli_shm_ring_ctl *c =
        (petreli_shm_ring_ctl *)(m.base + sizeof(petreli_shm_header)) + t->rank;
    uint32_t expect = 0;
    if (!atomic_compare_exchange_strong(&c->writer_pid, &expect, (uint32_t)t->pid) &&
        expect != (uint32_t)t->pid) {
        petreli_shm_map_release(&m);
        return petrel_error_set(PETREL_ERR_STATE,
                                "rank %d's ring in shm inbox %s is held by pid %u (another node "
                                "with rank %d?)",
                                t->rank, addr, expect, t->rank);
    }
    if (atomic_load(&c->writer_closed) || atomic_load(&c->reader_broken)) {
        petreli_shm_map_release(&m);
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
    int none = PETRELI_SHM_LINK_NONE;
    atomic_compare_exchange_strong(&p->link, &none, PETRELI_SHM_LINK_UP);
    return PETREL_OK;
}

/* Unmaps the peer's inbox, telling its reader that no more frames come, and unlinks the
 * inbox if its owner died (nobody else may be left to do it). Caller holds p->mu. */
static void tx_close_locked(petreli_shm_peer *p) {
    if (!p->out.base) return;
    atomic_store(&p->tx->writer_closed, 1);
    petreli_futex_ring(&p->out_hdr->doorbell);
    int pid = atomic_exchange(&p->out_pid, 0);
    if (pid && !petreli_shm_pid_alive(pid)) petreli_shm_unlink_if_owned_by(p->out_name, pid);
    petreli_shm_map_release(&p->out);
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

    petreli_shm_transport *t = petrel_calloc(1, sizeof *t);
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
    uint64_t rec = petreli_shm_align64(PETRELI_WIRE_HEADER + (uint64_t)cfg->limits.frame_bytes);
    uint64_t least = t->size > 1 ? INBOX_BUDGET / (uint64_t)(t->size - 1) : RING_MIN;
    if (least > RING_MIN) least = RING_MIN;
    uint64_t rb = petreli_shm_align64(2 * rec > least ? 2 * rec : least);
    long page = sysconf(_SC_PAGESIZE);
    uint64_t pg = page > 0 ? (uint64_t)page : 4096;
    uint64_t rings_offset =
        (sizeof(petreli_shm_header) + (uint64_t)t->size * sizeof(petreli_shm_ring_ctl) + pg - 1) /
        pg * pg;
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
        petreli_shm_map old;
        if (petreli_shm_map_existing(t->name, &old) == PETREL_OK) {
            int owner = (int)((petreli_shm_header *)old.base)->pid;
            petreli_shm_map_release(&old);
            if (!petreli_shm_pid_alive(owner)) {
                petreli_shm_unlink_if_owned_by(t->name, owner);
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
    t->in = (petreli_shm_map){.base = base, .bytes = (size_t)seg};
    t->hdr = base;
    t->ctl = (petreli_shm_ring_ctl *)(t->in.base + sizeof(petreli_shm_header));
    t->rings = t->in.base + rings_offset;
    t->hdr->version = PETRELI_SHM_VERSION;
    t->hdr->size = (uint32_t)t->size;
    t->hdr->rank = (uint32_t)t->rank;
    t->hdr->pid = (uint32_t)t->pid;
    t->hdr->ring_bytes = rb;
    t->hdr->rings_offset = rings_offset;
    t->hdr->segment_bytes = seg;
    err = petreli_shm_reg_add(t->name, &t->in);
    if (err) goto fail_unmap;
    atomic_store_explicit(&t->hdr->magic, PETRELI_SHM_MAGIC, memory_order_release);
    err = petrel_thread_start(&t->thread, rx_main, t);
    if (err) goto fail_unmap;
    snprintf(addr, addr_size, "%s", t->name);
    *out = t;
    return PETREL_OK;

fail_unmap:
    if (t->in.reg) petreli_shm_reg_unlist(t->in.reg);
    petreli_shm_map_release(&t->in);
fail_unlink:
    shm_unlink(t->name);
fail_free:
    for (int i = 0; i < t->peers_init; i++) pthread_mutex_destroy(&t->peers[i].mu);
    petrel_free(t->peers);
    petrel_free(t);
    return err;
}

static petrel_err shm_connect(void *tp, int peer, const char *addr, uint64_t deadline_ns) {
    petreli_shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: cannot connect rank %d to rank %d",
                                t->rank, peer);
    petreli_shm_peer *p = &t->peers[peer];
    pthread_mutex_lock(&p->mu);
    petrel_err err = connect_locked(t, p, peer, addr, deadline_ns);
    pthread_mutex_unlock(&p->mu);
    return err;
}

static petrel_err send_locked(petreli_shm_transport *t, int peer, const unsigned char *head,
                              const struct iovec *iov, int iovcnt, uint64_t payload,
                              uint64_t deadline_ns) {
    petreli_shm_peer *p = &t->peers[peer];
    pthread_mutex_lock(&p->mu);
    petrel_err err = PETREL_OK;
    int link = atomic_load(&p->link);
    if (link == PETRELI_SHM_LINK_DOWN || link == PETRELI_SHM_LINK_LOST) {
        err = petrel_error_set(PETREL_ERR_IO, "send to rank %d over shm: the link was %s", peer,
                               link == PETRELI_SHM_LINK_DOWN ? "disconnected" : "lost");
    } else if (!p->out.base) { /* a peer that connected to us is a link too: find its inbox */
        char name[PETRELI_SHM_NAME_BYTES];
        peer_name(t, peer, name, sizeof name);
        err = connect_locked(t, p, peer, name, deadline_ns);
    }
    if (!err) err = petreli_shm_tx_record(t, p, peer, head, iov, iovcnt, payload, deadline_ns);
    pthread_mutex_unlock(&p->mu);
    return err;
}

static petrel_err shm_send(void *tp, int peer, const petreli_wire_header *h,
                           const struct iovec *iov, int iovcnt, uint64_t deadline_ns) {
    petreli_shm_transport *t = tp;
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
    unsigned char head[PETRELI_WIRE_HEADER];
    petreli_wire_encode(&hh, head);
    return send_locked(t, peer, head, iov, iovcnt, total, deadline_ns);
}

petrel_err petreli_shm_send_raw(void *tp, int peer, const void *bytes, size_t len,
                                uint64_t deadline_ns) {
    petreli_shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank || len < PETRELI_WIRE_HEADER)
        return petrel_error_set(PETREL_ERR_INVALID, "shm: bad raw send");
    struct iovec iov = {.iov_base = (unsigned char *)bytes + PETRELI_WIRE_HEADER,
                        .iov_len = len - PETRELI_WIRE_HEADER};
    return send_locked(t, peer, bytes, &iov, 1, len - PETRELI_WIRE_HEADER, deadline_ns);
}

static bool shm_connected(void *tp, int peer) {
    petreli_shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank) return false;
    return atomic_load(&t->peers[peer].link) == PETRELI_SHM_LINK_UP;
}

/* Drops both directions: our writes to peer and its ring in our inbox. Called from the
 * receive thread (from a callback) it takes effect before the next frame; called from another
 * thread, it does not wait for the receive thread, so one frame callback for peer that was
 * about to start may still run after it returns. */
static void shm_disconnect(void *tp, int peer) {
    petreli_shm_transport *t = tp;
    if (peer < 0 || peer >= t->size || peer == t->rank) return;
    petreli_shm_peer *p = &t->peers[peer];
    atomic_store(&p->link, PETRELI_SHM_LINK_DOWN); /* first: a send waiting for space gives up */
    atomic_store(&p->rx_stop, 1);
    atomic_store(&t->ctl[peer].reader_broken, 1);
    petreli_futex_ring(&t->ctl[peer].space);
    pthread_mutex_lock(&p->mu);
    tx_close_locked(p);
    pthread_mutex_unlock(&p->mu);
}

/* Peers have mapped the inbox; the mapping outlives its name. */
static void shm_seal(void *tp) {
    petreli_shm_transport *t = tp;
    if (!atomic_exchange(&t->sealed, 1)) shm_unlink(t->name);
}

static void shm_quiesce(void *tp) {
    petreli_shm_transport *t = tp;
    if (!t || !t->thread) return;
    atomic_store_explicit(&t->stopping, 1, memory_order_release);
    petreli_futex_ring(&t->hdr->doorbell);
    petrel_thread_join(t->thread, NULL);
    t->thread = NULL;
}

static void shm_close(void *tp) {
    petreli_shm_transport *t = tp;
    if (!t) return;
    shm_quiesce(t);
    /* Writers blocked on our rings, in this process or others, notice at once. */
    atomic_store(&t->hdr->closed, 1);
    for (int s = 0; s < t->size; s++) {
        if (s == t->rank) continue;
        atomic_store(&t->ctl[s].reader_broken, 1);
        petreli_futex_ring(&t->ctl[s].space);
    }
    for (int s = 0; s < t->size; s++) {
        petreli_shm_peer *p = &t->peers[s];
        pthread_mutex_lock(&p->mu);
        tx_close_locked(p);
        pthread_mutex_unlock(&p->mu);
    }
    /* Inboxes of peers that died (and segments outlive processes): whoever notices unlinks. */
    for (int s = 0; s < t->size; s++) {
        int pids[2] = {t->peers[s].last_out_pid, (int)atomic_load(&t->ctl[s].writer_pid)};
        for (int i = 0; i < 2; i++) {
            if (pids[i] && pids[i] != t->pid && !petreli_shm_pid_alive(pids[i])) {
                char name[PETRELI_SHM_NAME_BYTES];
                peer_name(t, s, name, sizeof name);
                petreli_shm_unlink_if_owned_by(name, pids[i]);
                break;
            }
        }
    }
    if (!atomic_exchange(&t->sealed, 1)) shm_unlink(t->name);
    petreli_shm_reg_unlist(t->in.reg);
    petreli_shm_map_release(&t->in);
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
    .quiesce = shm_quiesce,
    .close = shm_close,
};
