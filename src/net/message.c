/*
 * Messages: the send path (chunking a message into frames of at most frame_bytes
 * under a per-peer lock, so that two messages to one peer never interleave), the
 * receive path (putting frames back together per peer and per transport, into one
 * buffer sized from the message length the first frame states), dispatch to
 * petrel's protocol, to RPC waiters, to handlers or to the mailbox, and the
 * mailbox, RPC and barrier calls built on them.
 */
#include "node.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>

/* Whether this thread sent a message since its last wait for one (see poll_briefly). */
static _Thread_local bool sent_since_wait;

/* ---- sending ------------------------------------------------------------------- */

/* Cuts iov into frames of at most frame_bytes and sends them over l. */
static petrel_err send_frames(petrel_net *net, net_link l, int dst, petreli_wire_header h,
                              const struct iovec *iov, int iovcnt, size_t total,
                              uint64_t deadline_ns, bool *partial) {
    size_t at_iov = 0, at_off = 0, sent = 0;
    do {
        struct iovec part[9];
        int n = 0;
        size_t want =
            total - sent < net->limits.frame_bytes ? total - sent : net->limits.frame_bytes;
        size_t got = 0;
        while (got < want) {
            while (at_iov < (size_t)iovcnt && at_off == iov[at_iov].iov_len) at_iov++, at_off = 0;
            size_t take = iov[at_iov].iov_len - at_off;
            if (take > want - got) take = want - got;
            if (n == 9) { /* more pieces than fit: the frame ends here */
                want = got;
                break;
            }
            part[n].iov_base = (char *)iov[at_iov].iov_base + at_off;
            part[n].iov_len = take;
            n++;
            at_off += take;
            got += take;
        }
        sent += got;
        h.frame_len = (uint32_t)got;
        h.flags =
            (uint16_t)((h.flags & ~PETRELI_FLAG_MORE) | (sent < total ? PETRELI_FLAG_MORE : 0));
        petrel_err err = l.ops->send(l.t, dst, &h, part, n, deadline_ns);
        if (err != PETREL_OK) {
            *partial = sent > got; /* earlier frames of this message went out */
            return err;
        }
    } while (sent < total);
    return PETREL_OK;
}

/* The one send path: self-delivery, liveness, message lock, chunking, statistics. */
petrel_err petreli_send_message(petrel_net *net, int dst, uint8_t type, uint32_t id, int64_t clock,
                                uint16_t flags, uint64_t tag, const struct iovec *iov, int iovcnt,
                                uint64_t deadline_ns) {
    if (dst < 0 || dst >= net->size)
        return petrel_error_set(PETREL_ERR_INVALID, "send to rank %d in a job of %d", dst,
                                net->size);
    if (iovcnt < 0 || iovcnt > 8)
        return petrel_error_set(PETREL_ERR_INVALID, "a message gathers at most 8 pieces");
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    if (total > net->limits.max_message_bytes)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "message of %zu bytes exceeds the %llu-byte limit", total,
                                (unsigned long long)net->limits.max_message_bytes);
    sent_since_wait = true;
    petreli_wire_header h = {.type = type,
                             .flags = flags,
                             .src = (uint32_t)net->rank,
                             .id = id,
                             .clock = clock,
                             .tag = tag,
                             .msg_len = (uint32_t)total};
    if (dst == net->rank) { /* to ourselves: a copy, delivered in this thread */
        unsigned char *buf = petreli_msgbuf_get(total);
        if (!buf) return PETREL_ERR_NOMEM;
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
            if (iov[i].iov_len) memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
            off += iov[i].iov_len;
        }
        h.frame_len = (uint32_t)total;
        petreli_deliver(net, dst, &h, buf);
        return PETREL_OK;
    }
    peer_state *pe = &net->peers[dst];
    if (!atomic_load(&pe->alive)) return petreli_dead_peer_error(net, dst);
    struct timespec ts = petreli_abs_deadline(deadline_ns);
    if (pthread_mutex_timedlock(&pe->send_mu, &ts) != 0)
        return petrel_error_set(PETREL_ERR_TIMEOUT,
                                "send to rank %d (%s): another send to it held the link", dst,
                                petreli_node_role(net, dst));
    net_link l = pe->send_link;
    bool partial = false;
    petrel_err err = send_frames(net, l, dst, h, iov, iovcnt, total, deadline_ns, &partial);
    if (err == PETREL_ERR_IO && !partial && l.ops == net->shm.ops && net->shm.ops) {
        /* The peer's shared memory is gone, not necessarily the peer: TCP decides. */
        pe->send_link = l = net->primary;
        err = send_frames(net, l, dst, h, iov, iovcnt, total, deadline_ns, &partial);
    }
    pthread_mutex_unlock(&pe->send_mu);
    if (err != PETREL_OK) {
        if (!atomic_load(&pe->alive)) return petreli_dead_peer_error(net, dst);
        if (partial) {
            /* The peer holds the first frames of a message whose rest will never
             * come: the link cannot carry another message. */
            char why[160];
            snprintf(why, sizeof why, "a %zu-byte message to it broke off: %s", total,
                     petrel_errmsg());
            l.ops->disconnect(l.t, dst);
            petreli_declare_dead(net, dst, why);
            return petreli_dead_peer_error(net, dst);
        }
        return err; /* the transport's message names the peer */
    }
    atomic_fetch_add(&net->bytes_sent, total + PETRELI_WIRE_HEADER);
    atomic_fetch_add(&net->messages_sent, 1);
    return PETREL_OK;
}

petrel_err petreli_send_control(petrel_net *net, int dst, uint8_t type, uint32_t id,
                                const void *data, size_t len, int timeout_ms) {
    struct iovec iov = {(void *)data, len};
    return petreli_send_message(net, dst, type, id, 0, 0, 0, &iov, len ? 1 : 0,
                                petreli_deadline_after(timeout_ms));
}

petrel_err petrel_net_sendv(petrel_net *net, int dst, uint8_t type, uint32_t id, int64_t clock,
                            const struct iovec *iov, int iovcnt, int timeout_ms) {
    if (type < PETREL_MSG_USER)
        return petrel_error_set(PETREL_ERR_INVALID, "message types below %d are petrel's own",
                                PETREL_MSG_USER);
    if (timeout_ms < 0) return petrel_error_set(PETREL_ERR_INVALID, "timeout must be >= 0 ms");
    return petreli_send_message(net, dst, type, id, clock, 0, 0, iov, iovcnt,
                                petreli_deadline_after(timeout_ms));
}

petrel_err petrel_net_send(petrel_net *net, int dst, uint8_t type, uint32_t id, int64_t clock,
                           const void *data, size_t len, int timeout_ms) {
    struct iovec iov = {(void *)data, len};
    return petrel_net_sendv(net, dst, type, id, clock, &iov, len ? 1 : 0, timeout_ms);
}

/* ---- the job table on the wire: "tcp\tshm\thost" per node ------------------------ */

bool petreli_entry_parse(const char *s, size_t len, node_entry *e) {
    char *fields[3] = {e->tcp, e->shm, e->host};
    size_t at = 0;
    for (int f = 0; f < 3; f++) {
        size_t n = 0;
        while (at < len && s[at] != '\t') {
            if (n + 1 >= ADDR_LEN || s[at] == '\0' || s[at] == '\n') return false;
            fields[f][n++] = s[at++];
        }
        fields[f][n] = '\0';
        if (f < 2) {
            if (at >= len) return false;
            at++; /* the tab */
        }
    }
    return at == len;
}

size_t petreli_entry_format(const node_entry *e, char *out, size_t size) {
    int n = snprintf(out, size, "%s\t%s\t%s", e->tcp, e->shm, e->host);
    return n < 0 || (size_t)n >= size ? 0 : (size_t)n;
}

/* ---- receiving ----------------------------------------------------------------- */

static void protocol(petrel_net *net, int src, const petreli_wire_header *h,
                     const unsigned char *data, size_t len) {
    switch (h->type) {
    case PETRELI_MSG_REGISTER: {
        node_entry e;
        if (net->rank != 0 || !petreli_entry_parse((const char *)data, len, &e)) goto bad;
        pthread_mutex_lock(&net->mu);
        if (!net->peers[src].registered) {
            net->peers[src].registered = true;
            net->table[src] = e;
            net->registered++;
        }
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
        return;
    }
    case PETRELI_MSG_TABLE: {
        if (src != 0) goto bad;
        node_entry *t = petrel_calloc((size_t)net->size, sizeof *t);
        if (!t) return;
        size_t at = 0;
        for (int r = 0; r < net->size; r++) {
            size_t end = at;
            while (end < len && data[end] != '\n') end++;
            if (end >= len || !petreli_entry_parse((const char *)data + at, end - at, &t[r])) {
                petrel_free(t);
                goto bad;
            }
            at = end + 1;
        }
        pthread_mutex_lock(&net->mu);
        memcpy(net->table, t, (size_t)net->size * sizeof *t);
        net->table_ready = true;
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
        petrel_free(t);
        return;
    }
    case PETRELI_MSG_READY:
        if (net->rank != 0) goto bad;
        pthread_mutex_lock(&net->mu);
        if (!net->peers[src].ready) {
            net->peers[src].ready = true;
            net->ready_count++;
        }
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
        return;
    case PETRELI_MSG_GO:
        if (src != 0) goto bad;
        pthread_mutex_lock(&net->mu);
        net->go = true;
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
        return;
    case PETRELI_MSG_HEARTBEAT:
        return; /* last_seen_ns is updated for every message */
    case PETRELI_MSG_PEER_DEAD:
        if (src != 0 || h->id >= (uint32_t)net->size || (int)h->id == net->rank) goto bad;
        petreli_declare_dead(net, (int)h->id, "reported dead by the coordinator");
        return;
    case PETRELI_MSG_BARRIER: {
        if (net->rank != 0) goto bad;
        pthread_mutex_lock(&net->mu);
        int *count = &net->barrier_count[h->id & 1];
        bool complete = ++*count == net->size;
        if (complete) *count = 0;
        pthread_mutex_unlock(&net->mu);
        /* Rank 0 releases itself last: once released it may stop, and its BYE must
         * not reach a peer before that peer's BARRIER_DONE. */
        if (complete)
            for (int k = 1; k <= net->size; k++) {
                int r = k % net->size;
                if (r == 0 || atomic_load(&net->peers[r].alive))
                    (void)petreli_send_control(net, r, PETRELI_MSG_BARRIER_DONE, h->id, NULL, 0,
                                               CONTROL_SEND_MS);
            }
        return;
    }
    case PETRELI_MSG_BARRIER_DONE:
        if (src != 0) goto bad;
        pthread_mutex_lock(&net->mu);
        if (h->id + 1 > net->barrier_done) net->barrier_done = h->id + 1;
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
        return;
    case PETRELI_MSG_BYE:
        /* BYE comes over TCP; messages the peer sent before it over shared memory may
         * still be in its ring. The ring is read in order and its link reported lost
         * only once drained, so wait for that (or BYE_GRACE_MS) before calling the peer
         * gone: a member's ABORT must not be overtaken by its goodbye. */
        if (net->shm.ops && net->shm.ops->connected(net->shm.t, src)) {
            atomic_store(&net->peers[src].bye_ns, petrel_now_ns());
            return;
        }
        petreli_peer_left(net, src);
        return;
    default:
        goto bad;
    }
bad:
    atomic_fetch_add(&net->rejected, 1);
    PETREL_LOG_WARN("net", "ignored a malformed protocol message (type %u) from rank %d", h->type,
                    src);
}

/* A complete message from src (buf: h->msg_len bytes, owned here). */
void petreli_deliver(petrel_net *net, int src, const petreli_wire_header *h, unsigned char *buf) {
    size_t len = h->msg_len;
    atomic_fetch_add(&net->bytes_received, len + PETRELI_WIRE_HEADER);
    atomic_fetch_add(&net->messages_received, 1);
    if (h->type < PETREL_MSG_USER) {
        protocol(net, src, h, buf, len);
        petreli_msgbuf_put(buf);
        return;
    }
    petrel_msg m = {.src = src,
                    .type = h->type,
                    .id = h->id,
                    .clock = h->clock,
                    .data = buf,
                    .len = len,
                    .owned = buf};
    if (h->flags & PETRELI_FLAG_RPC_REPLY) {
        pthread_mutex_lock(&net->mu);
        for (rpc_wait *w = net->rpcs; w; w = w->next)
            if (w->tag == h->tag && w->dst == src && !w->done) {
                w->reply = m;
                w->done = true;
                atomic_fetch_add(&net->mail_seq, 1);
                buf = NULL;
                pthread_cond_broadcast(&net->cv);
                break;
            }
        pthread_mutex_unlock(&net->mu);
        petreli_msgbuf_put(buf); /* a reply nobody waits for any more (it timed out) */
        return;
    }
    if (h->flags & PETRELI_FLAG_RPC_REQ) m.rpc = h->tag;
    pthread_mutex_lock(&net->mu);
    petrel_msg_handler fn = net->handlers[h->type].fn;
    void *ctx = net->handlers[h->type].ctx;
    if (!fn) {
        /* Queue nodes are recycled: a malloc per message showed in streaming profiles. */
        queued *q = net->free_queued;
        if (q)
            net->free_queued = q->next;
        else
            q = petrel_malloc(sizeof *q);
        if (q) {
            q->next = NULL;
            q->m = m;
            if (net->mail_tail)
                net->mail_tail->next = q;
            else
                net->mail_head = q;
            net->mail_tail = q;
            atomic_fetch_add(&net->mail_seq, 1);
            if (net->sleepers) pthread_cond_broadcast(&net->cv); /* pollers see mail_seq */
        }
        pthread_mutex_unlock(&net->mu);
        if (!q) {
            PETREL_LOG_ERROR("net", "out of memory: dropped a message of type %u from rank %d",
                             h->type, src);
            petreli_msgbuf_put(buf);
        }
        return;
    }
    net->handlers[h->type].running++;
    pthread_mutex_unlock(&net->mu);
    fn(ctx, net, &m);
    petreli_msgbuf_put(m.owned); /* NULL when the handler kept the message */
    /* No lock per message: only petrel_net_on waits for this, and it counts itself in
     * `removing` before it looks at `running` (both sequentially consistent), so a
     * call that ends after that look sees it and wakes it. */
    if (atomic_fetch_sub(&net->handlers[h->type].running, 1) == 1 && atomic_load(&net->removing)) {
        pthread_mutex_lock(&net->mu);
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
    }
}

void *petreli_ev_frame_begin(void *ctx, int src, const petreli_wire_header *h) {
    via *v = ctx;
    petrel_net *net = v->net;
    if (src < 0 || src >= net->size || src == net->rank || h->src != (uint32_t)src) return NULL;
    reasm *r = &net->peers[src].rx[v->index];
    if (!r->buf) {
        if (h->type < PETREL_MSG_USER && h->msg_len > CONTROL_MAX) return NULL;
        r->buf = petreli_msgbuf_get(h->msg_len);
        if (!r->buf) return NULL;
        r->got = 0;
        r->first = *h;
        return r->buf;
    }
    const petreli_wire_header *f = &r->first;
    if (h->type != f->type || h->id != f->id || h->clock != f->clock || h->tag != f->tag ||
        h->msg_len != f->msg_len || r->got + h->frame_len > h->msg_len)
        return NULL; /* a frame of another message in the middle of this one */
    return r->buf + r->got;
}

void petreli_ev_frame_done(void *ctx, int src, const petreli_wire_header *h, void *payload) {
    (void)payload;
    via *v = ctx;
    petrel_net *net = v->net;
    peer_state *pe = &net->peers[src];
    reasm *r = &pe->rx[v->index];
    atomic_store(&pe->last_seen_ns, petrel_now_ns());
    r->got += h->frame_len;
    if (h->flags & PETRELI_FLAG_MORE) return;
    unsigned char *buf = r->buf;
    size_t got = r->got;
    petreli_wire_header first = r->first;
    r->buf = NULL;
    r->got = 0;
    if (got != first.msg_len) {
        petreli_msgbuf_put(buf);
        atomic_fetch_add(&net->rejected, 1);
        char why[96];
        snprintf(why, sizeof why, "protocol error: a message of %u bytes ended after %zu",
                 first.msg_len, got);
        net_link l = v->index == VIA_SHM ? net->shm : net->primary;
        l.ops->disconnect(l.t, src);
        petreli_declare_dead(net, src, why);
        return;
    }
    first.flags = h->flags; /* the last frame's flags (without MORE) */
    bool shm = v->index == VIA_SHM;
    if (atomic_load_explicit(&net->last_via_shm, memory_order_relaxed) != shm)
        atomic_store_explicit(&net->last_via_shm, shm, memory_order_relaxed);
    petreli_deliver(net, src, &first, buf);
}

void petreli_ev_link_lost(void *ctx, int src, const char *why) {
    via *v = ctx;
    petrel_net *net = v->net;
    if (src < 0 || src >= net->size) return;
    peer_state *pe = &net->peers[src];
    reasm *r = &pe->rx[v->index];
    petreli_msgbuf_put(r->buf);
    r->buf = NULL;
    if (v->index == VIA_SHM) {
        /* Shared memory does not decide liveness: a peer that stops closes its
         * segment, and that can be seen here before its BYE arrives over TCP. Go on
         * over TCP, where BYE precedes the close and heartbeats catch the rest. */
        pthread_mutex_lock(&pe->send_mu);
        pe->send_link = net->primary;
        pthread_mutex_unlock(&pe->send_mu);
        PETREL_LOG_INFO("net", "shared memory to rank %d closed (%s); using TCP", src, why);
        if (atomic_load(&pe->bye_ns)) petreli_peer_left(net, src); /* drained after its BYE */
        return;
    }
    if (atomic_load(&pe->bye_ns)) return; /* the close that follows a BYE; shm decides */
    petreli_declare_dead(net, src, why);
}

bool petreli_ev_may_pump(void *ctx, int src, const petreli_wire_header *h) {
    (void)src;
    petrel_net *net = ((via *)ctx)->net;
    if (h->type < PETREL_MSG_USER) return false; /* protocol: may declare deaths, call back */
    if (h->flags & PETRELI_FLAG_RPC_REPLY) return true;
    pthread_mutex_lock(&net->mu);
    bool mailbox = net->handlers[h->type].fn == NULL;
    pthread_mutex_unlock(&net->mu);
    return mailbox;
}

void petreli_ev_rejected(void *ctx, const char *why) {
    via *v = ctx;
    atomic_fetch_add(&v->net->rejected, 1);
    PETREL_LOG_WARN("net", "refused a connection: %s", why);
}

/* ---- handlers, mailbox, RPC, barrier ---------------------------------------------- */

petrel_err petrel_net_on(petrel_net *net, uint8_t type, petrel_msg_handler handler, void *ctx) {
    if (type < PETREL_MSG_USER)
        return petrel_error_set(PETREL_ERR_INVALID, "message types below %d are petrel's own",
                                PETREL_MSG_USER);
    pthread_mutex_lock(&net->mu);
    net->handlers[type].fn = handler;
    net->handlers[type].ctx = ctx;
    /* Once replaced or removed, no call may still be using the old context (it may be
     * freed next). Bounded by the calls in progress; a handler must not replace itself. */
    net->removing++;
    while (net->handlers[type].running > 0)
        (void)petreli_wait_until(net, petrel_now_ns() + 100000000u);
    net->removing--;
    pthread_mutex_unlock(&net->mu);
    return PETREL_OK;
}

void petrel_msg_keep(const petrel_msg *m, petrel_msg *out) {
    *out = *m;
    ((petrel_msg *)m)->owned = NULL; /* the dispatcher's own copy, not const there */
}

void petrel_msg_release(petrel_msg *m) {
    if (!m) return;
    petreli_msgbuf_put(m->owned);
    memset(m, 0, sizeof *m);
}

/* Whether this thread sent something since its last wait, so that a reply is due
 * within a round trip; the wait that asks consumes the answer. */
static bool reply_due(void) {
    bool due = sent_since_wait;
    sent_since_wait = false;
    return due;
}

/*
 * Before the first sleep of a wait (mu held; returned with mu held): polls for a
 * new message when one is likely to come sooner than a sleeping thread could be
 * woken (a condition variable's wake-up costs about a whole shared-memory round
 * trip here). That is so after this thread sent something, since a reply comes
 * within a round trip, and while messages come over shared memory, microseconds
 * apart. A thread that only receives a TCP stream does not poll: on two cores its
 * polling took the CPU that the sender's side of loopback TCP needed (64 KiB
 * messages: 0.74 of a plain socket's bandwidth on average with polling, 1.09
 * without), while a wake-up per message costs little against a message's 12 us.
 * The flag is per thread, not per node: what matters is what this thread awaits.
 */
static void poll_briefly(petrel_net *net) {
    bool worth = reply_due() || atomic_load_explicit(&net->last_via_shm, memory_order_relaxed);
    if (!worth) return;
    uint64_t seq = atomic_load(&net->mail_seq);
    pthread_mutex_unlock(&net->mu);
    uint64_t until = petrel_now_ns() + POLL_NS;
    while (atomic_load(&net->mail_seq) == seq && petrel_now_ns() < until) sched_yield();
    pthread_mutex_lock(&net->mu);
}

/* The link that src's messages come over, when a thread waiting for one may read
 * it itself (pump): TCP, not shared memory (whose receive thread only copies out of
 * a ring), nor this node. ops is NULL otherwise. */
static net_link pump_link(petrel_net *net, int src) {
    net_link none = {NULL, NULL};
    if (src == PETREL_ANY_SOURCE || src == net->rank || !net->primary.ops->pump) return none;
    if (net->shm.ops && net->shm.ops->connected(net->shm.t, src)) return none;
    return net->primary;
}

static bool matches(const petrel_msg *m, int src, uint8_t type, uint32_t id) {
    return m->type == type && (src == PETREL_ANY_SOURCE || m->src == src) &&
           (id == PETREL_ANY_ID || m->id == id);
}

petrel_err petrel_net_recv(petrel_net *net, int src, uint8_t type, uint32_t id, petrel_msg *out,
                           int timeout_ms) {
    if (src != PETREL_ANY_SOURCE && (src < 0 || src >= net->size))
        return petrel_error_set(PETREL_ERR_INVALID, "recv from rank %d in a job of %d", src,
                                net->size);
    if (timeout_ms < 0) return petrel_error_set(PETREL_ERR_INVALID, "timeout must be >= 0 ms");
    uint64_t deadline = petreli_deadline_after(timeout_ms);
    bool polled = timeout_ms == 0;
    net_link pump = timeout_ms > 0 ? pump_link(net, src) : (net_link){NULL, NULL};
    pthread_mutex_lock(&net->mu);
    for (;;) {
        queued *prev = NULL;
        for (queued *q = net->mail_head; q; prev = q, q = q->next) {
            if (!matches(&q->m, src, type, id)) continue;
            if (prev)
                prev->next = q->next;
            else
                net->mail_head = q->next;
            if (net->mail_tail == q) net->mail_tail = prev;
            *out = q->m;
            q->next = net->free_queued;
            net->free_queued = q;
            pthread_mutex_unlock(&net->mu);
            return PETREL_OK;
        }
        if (src != PETREL_ANY_SOURCE && src != net->rank && !atomic_load(&net->peers[src].alive)) {
            pthread_mutex_unlock(&net->mu);
            return petreli_dead_peer_error(net, src);
        }
        if (pump.ops) {
            /* Read src's link here until a message comes, as poll_briefly would
             * poll, then sleep in the kernel; once the link is the transport
             * thread's again (nothing came, or a frame for a handler), sleep here. */
            uint64_t now = petrel_now_ns();
            uint64_t spin_until = reply_due() ? now + POLL_NS : 0;
            uint64_t until = now + PUMP_SLICE_NS < deadline ? now + PUMP_SLICE_NS : deadline;
            pthread_mutex_unlock(&net->mu);
            petreli_pump_result r = pump.ops->pump(pump.t, src, spin_until, until);
            pthread_mutex_lock(&net->mu);
            if (r != PETRELI_PUMP_MESSAGE) {
                pump.ops = NULL;
                polled = true;
            }
            continue; /* the mailbox may have changed while mu was not held */
        }
        if (!polled) {
            poll_briefly(net);
            polled = true;
            continue;
        }
        if (!petreli_wait_until(net, deadline)) break;
    }
    pthread_mutex_unlock(&net->mu);
    char from[32];
    if (src == PETREL_ANY_SOURCE)
        snprintf(from, sizeof from, "any rank");
    else
        snprintf(from, sizeof from, "rank %d (%s)", src, petreli_node_role(net, src));
    return petrel_error_set(PETREL_ERR_TIMEOUT,
                            "rank %d waited %d ms for a message of type %u from %s", net->rank,
                            timeout_ms, type, from);
}

petrel_err petrel_net_call(petrel_net *net, int dst, uint8_t type, const void *req, size_t len,
                           petrel_msg *reply, int timeout_ms) {
    if (type < PETREL_MSG_USER)
        return petrel_error_set(PETREL_ERR_INVALID, "message types below %d are petrel's own",
                                PETREL_MSG_USER);
    if (timeout_ms < 0) return petrel_error_set(PETREL_ERR_INVALID, "timeout must be >= 0 ms");
    uint64_t deadline = petreli_deadline_after(timeout_ms);
    rpc_wait w = {.tag = atomic_fetch_add(&net->next_tag, 1) + 1, .dst = dst};
    pthread_mutex_lock(&net->mu);
    w.next = net->rpcs;
    net->rpcs = &w;
    pthread_mutex_unlock(&net->mu);
    struct iovec iov = {(void *)req, len};
    petrel_err err = petreli_send_message(net, dst, type, 0, 0, PETRELI_FLAG_RPC_REQ, w.tag, &iov,
                                          len ? 1 : 0, deadline);
    pthread_mutex_lock(&net->mu);
    bool polled = false;
    while (err == PETREL_OK && !w.done) {
        if (dst != net->rank && !atomic_load(&net->peers[dst].alive)) {
            err = PETREL_ERR_IO;
        } else if (!polled) {
            poll_briefly(net);
            polled = true;
        } else if (!petreli_wait_until(net, deadline)) {
            err = PETREL_ERR_TIMEOUT;
        }
    }
    for (rpc_wait **pp = &net->rpcs; *pp; pp = &(*pp)->next)
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    pthread_mutex_unlock(&net->mu);
    if (w.done) {
        *reply = w.reply;
        return PETREL_OK;
    }
    if (err == PETREL_ERR_IO) return petreli_dead_peer_error(net, dst);
    if (err == PETREL_ERR_TIMEOUT)
        return petrel_error_set(err, "no reply from rank %d (%s) to a call of type %u within %d ms",
                                dst, petreli_node_role(net, dst), type, timeout_ms);
    return err;
}

petrel_err petrel_net_reply(petrel_net *net, const petrel_msg *request, const void *data,
                            size_t len) {
    if (!request->rpc)
        return petrel_error_set(PETREL_ERR_INVALID, "reply to a message that is not a call");
    struct iovec iov = {(void *)data, len};
    return petreli_send_message(net, request->src, request->type, request->id, 0,
                                PETRELI_FLAG_RPC_REPLY, request->rpc, &iov, len ? 1 : 0,
                                petreli_deadline_after(CONTROL_SEND_MS));
}

/* A barrier cannot complete once a node has died, or, for a node other than rank 0,
 * once rank 0 (which completes it) is gone. A node that left normally after passing
 * this barrier does not break it: its goodbye may overtake rank 0's BARRIER_DONE. */
static bool barrier_broken(petrel_net *net, int *who) {
    for (int r = 0; r < net->size; r++) {
        if (r == net->rank || atomic_load(&net->peers[r].alive)) continue;
        if (!atomic_load(&net->peers[r].left) || r == 0) {
            *who = r;
            return true;
        }
    }
    return false;
}

petrel_err petrel_net_barrier(petrel_net *net, int timeout_ms) {
    if (timeout_ms < 0) return petrel_error_set(PETREL_ERR_INVALID, "timeout must be >= 0 ms");
    if (net->size == 1) return PETREL_OK;
    uint64_t deadline = petreli_deadline_after(timeout_ms);
    pthread_mutex_lock(&net->mu);
    uint32_t gen = net->barrier_gen++;
    pthread_mutex_unlock(&net->mu);
    petrel_err err = petreli_send_control(net, 0, PETRELI_MSG_BARRIER, gen, NULL, 0, timeout_ms);
    if (err != PETREL_OK) return err;
    int dead = -1;
    pthread_mutex_lock(&net->mu);
    while (net->barrier_done <= gen && !barrier_broken(net, &dead) &&
           petreli_wait_until(net, deadline)) {
    }
    bool done = net->barrier_done > gen;
    pthread_mutex_unlock(&net->mu);
    if (done) return PETREL_OK;
    if (dead >= 0) return petreli_dead_peer_error(net, dead);
    return petrel_error_set(PETREL_ERR_TIMEOUT,
                            "barrier %u: rank %d waited %d ms for the other nodes", gen, net->rank,
                            timeout_ms);
}
