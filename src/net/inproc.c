/*
 * In-process transport: nodes on threads of one process, for tests. A hub holds
 * one slot per rank; a send copies the frame into the receiver's bounded queue
 * (blocking while the queue is full, as a socket would), and each node's delivery
 * thread hands queued frames to its node in order.
 */
#include "net_impl.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define QUEUE_LIMIT_BYTES (16u << 20)

typedef struct frame {
    struct frame *next;
    petreli_wire_header h;
    int from;
    bool lost;               /* not a frame: the link from `from` closed */
    unsigned char payload[]; /* h.frame_len bytes */
} frame;

typedef struct inproc inproc;

struct petrel_inproc_hub {
    int size;
    pthread_mutex_t mu;
    pthread_cond_t changed; /* a node opened or closed */
    inproc **nodes;         /* by rank, NULL when not open */
};

struct inproc {
    petrel_inproc_hub *hub;
    int rank;
    petreli_transport_events ev;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* queue changed, or closing */
    frame *head, *tail;
    size_t queued_bytes;
    bool closing;
    bool *linked; /* by rank: connect() called, or a frame arrived from it */
    pthread_t thread;
};

petrel_err petrel_inproc_hub_new(petrel_inproc_hub **out, int size) {
    if (size < 1) return petrel_error_set(PETREL_ERR_INVALID, "inproc hub of %d nodes", size);
    petrel_inproc_hub *hub = petrel_calloc(1, sizeof *hub);
    if (!hub) return PETREL_ERR_NOMEM;
    hub->nodes = petrel_calloc((size_t)size, sizeof *hub->nodes);
    if (!hub->nodes) {
        petrel_free(hub);
        return PETREL_ERR_NOMEM;
    }
    hub->size = size;
    pthread_mutex_init(&hub->mu, NULL);
    pthread_cond_init(&hub->changed, NULL);
    *out = hub;
    return PETREL_OK;
}

void petrel_inproc_hub_free(petrel_inproc_hub *hub) {
    if (!hub) return;
    pthread_mutex_destroy(&hub->mu);
    pthread_cond_destroy(&hub->changed);
    petrel_free(hub->nodes);
    petrel_free(hub);
}

static void *delivery_main(void *arg) {
    inproc *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->head && !t->closing) pthread_cond_wait(&t->cv, &t->mu);
        if (t->closing) break;
        frame *f = t->head;
        t->head = f->next;
        if (!t->head) t->tail = NULL;
        t->queued_bytes -= f->h.frame_len;
        pthread_cond_broadcast(&t->cv); /* room for blocked senders */
        pthread_mutex_unlock(&t->mu);
        void *dst = NULL;
        if (f->lost)
            t->ev.on_link_lost(t->ev.ctx, f->from, "inproc node closed");
        else if ((dst = t->ev.frame_begin(t->ev.ctx, f->from, &f->h))) {
            if (f->h.frame_len) memcpy(dst, f->payload, f->h.frame_len);
            t->ev.frame_done(t->ev.ctx, f->from, &f->h, dst);
        } else {
            t->ev.on_link_lost(t->ev.ctx, f->from, "protocol error");
        }
        petrel_free(f);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static petrel_err inproc_open(void **out, const petreli_transport_config *cfg,
                              petreli_transport_events ev, char *addr, size_t addr_size) {
    petrel_inproc_hub *hub = cfg->inproc_hub;
    if (!hub || cfg->rank < 0 || cfg->rank >= hub->size || cfg->size != hub->size)
        return petrel_error_set(PETREL_ERR_INVALID, "inproc transport needs a hub of the job size");
    inproc *t = petrel_calloc(1, sizeof *t);
    bool *linked = petrel_calloc((size_t)hub->size, sizeof *linked);
    if (!t || !linked) {
        petrel_free(t);
        petrel_free(linked);
        return PETREL_ERR_NOMEM;
    }
    t->hub = hub;
    t->rank = cfg->rank;
    t->ev = ev;
    t->linked = linked;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (pthread_create(&t->thread, NULL, delivery_main, t) != 0) {
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        petrel_free(linked);
        petrel_free(t);
        return petrel_error_set(PETREL_ERR_NOMEM, "cannot start the inproc delivery thread");
    }
    pthread_mutex_lock(&hub->mu);
    bool taken = hub->nodes[cfg->rank] != NULL;
    if (!taken) hub->nodes[cfg->rank] = t;
    pthread_cond_broadcast(&hub->changed);
    pthread_mutex_unlock(&hub->mu);
    if (taken) {
        t->closing = true;
        pthread_cond_signal(&t->cv);
        pthread_join(t->thread, NULL);
        petrel_free(linked);
        petrel_free(t);
        return petrel_error_set(PETREL_ERR_INVALID, "inproc rank %d is already open", cfg->rank);
    }
    snprintf(addr, addr_size, "inproc:%d", cfg->rank);
    *out = t;
    return PETREL_OK;
}

static petrel_err inproc_connect(void *tp, int peer, const char *addr, uint64_t deadline_ns) {
    (void)addr;
    inproc *t = tp;
    petrel_inproc_hub *hub = t->hub;
    pthread_mutex_lock(&hub->mu);
    while (!hub->nodes[peer]) {
        struct timespec ts = petreli_abs_deadline(deadline_ns);
        if (pthread_cond_timedwait(&hub->changed, &hub->mu, &ts) != 0 && !hub->nodes[peer]) {
            pthread_mutex_unlock(&hub->mu);
            return petrel_error_set(PETREL_ERR_TIMEOUT, "inproc rank %d never opened", peer);
        }
    }
    /* Both ends see the link, as with an accepted socket. */
    inproc *r = hub->nodes[peer];
    pthread_mutex_lock(&r->mu);
    r->linked[t->rank] = true;
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&hub->mu);
    pthread_mutex_lock(&t->mu);
    t->linked[peer] = true;
    pthread_mutex_unlock(&t->mu);
    return PETREL_OK;
}

static petrel_err inproc_send(void *tp, int peer, const petreli_wire_header *h,
                              const struct iovec *iov, int iovcnt, uint64_t deadline_ns) {
    inproc *t = tp;
    frame *f = petrel_calloc(1, sizeof *f + h->frame_len);
    if (!f) return PETREL_ERR_NOMEM;
    f->h = *h;
    f->from = t->rank;
    size_t off = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len) memcpy(f->payload + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    /* The hub lock keeps the receiver from closing while we queue into it. */
    petrel_inproc_hub *hub = t->hub;
    pthread_mutex_lock(&hub->mu);
    inproc *r = hub->nodes[peer];
    if (!r) {
        pthread_mutex_unlock(&hub->mu);
        petrel_free(f);
        return petrel_error_set(PETREL_ERR_IO, "send to rank %d: it is not running", peer);
    }
    pthread_mutex_lock(&r->mu);
    pthread_mutex_unlock(&hub->mu);
    while (r->queued_bytes > 0 && r->queued_bytes + h->frame_len > QUEUE_LIMIT_BYTES &&
           !r->closing) {
        struct timespec ts = petreli_abs_deadline(deadline_ns);
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0 &&
            r->queued_bytes + h->frame_len > QUEUE_LIMIT_BYTES) {
            pthread_mutex_unlock(&r->mu);
            petrel_free(f);
            return petrel_error_set(PETREL_ERR_TIMEOUT, "send to rank %d: its queue stayed full",
                                    peer);
        }
    }
    if (r->closing) {
        pthread_mutex_unlock(&r->mu);
        petrel_free(f);
        return petrel_error_set(PETREL_ERR_IO, "send to rank %d: it is closing", peer);
    }
    r->linked[t->rank] = true;
    if (r->tail)
        r->tail->next = f;
    else
        r->head = f;
    r->tail = f;
    r->queued_bytes += h->frame_len;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return PETREL_OK;
}

static bool inproc_connected(void *tp, int peer) {
    inproc *t = tp;
    pthread_mutex_lock(&t->mu);
    bool linked = t->linked[peer];
    pthread_mutex_unlock(&t->mu);
    return linked;
}

static void inproc_disconnect(void *tp, int peer) {
    inproc *t = tp;
    pthread_mutex_lock(&t->mu);
    t->linked[peer] = false;
    pthread_mutex_unlock(&t->mu);
}

static void inproc_close(void *tp) {
    inproc *t = tp;
    petrel_inproc_hub *hub = t->hub;
    pthread_mutex_lock(&hub->mu);
    hub->nodes[t->rank] = NULL;
    pthread_cond_broadcast(&hub->changed);
    pthread_mutex_unlock(&hub->mu);
    pthread_mutex_lock(&t->mu);
    t->closing = true;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    /* Peers learn of the close as a lost link, as they would from a socket: a marker
     * in their queue, so that their delivery thread reports it in order and no
     * callback runs under our locks. */
    for (int p = 0; p < hub->size; p++) {
        if (p == t->rank) continue;
        frame *m = petrel_calloc(1, sizeof *m);
        pthread_mutex_lock(&hub->mu);
        inproc *r = hub->nodes[p];
        if (r && m) {
            pthread_mutex_lock(&r->mu);
            if (r->linked[t->rank] && !r->closing) {
                r->linked[t->rank] = false;
                m->lost = true;
                m->from = t->rank;
                if (r->tail)
                    r->tail->next = m;
                else
                    r->head = m;
                r->tail = m;
                m = NULL;
                pthread_cond_broadcast(&r->cv);
            }
            pthread_mutex_unlock(&r->mu);
        }
        pthread_mutex_unlock(&hub->mu);
        petrel_free(m);
    }
    for (frame *f = t->head; f;) {
        frame *next = f->next;
        petrel_free(f);
        f = next;
    }
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    petrel_free(t->linked);
    petrel_free(t);
}

const petreli_transport_ops petreli_transport_inproc = {
    .name = "inproc",
    .open = inproc_open,
    .connect = inproc_connect,
    .send = inproc_send,
    .connected = inproc_connected,
    .disconnect = inproc_disconnect,
    .close = inproc_close,
};
