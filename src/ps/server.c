/*
 * The server side of the parameter server: message handlers that fold deltas into
 * the tables, serve reads, track the workers' clocks, push fresh rows when the
 * server clock advances, and write snapshots. Rank 0 uses the same handlers only
 * to count finished workers.
 *
 * Everything runs on the node's receive threads under ps->mu. A handler may send
 * while holding it: a worker's receive thread never waits for its own node's
 * senders, so a full queue always drains.
 */
#include "ps_impl.h"

#include "petrel/train.h" /* petrel_mkdirs */

#include <stdio.h>
#include <string.h>

/* Which workers read a slot's row: one bit per worker in the slot's aux bytes. */
static size_t subscriber_bytes(const petrel_ps *ps) {
    return (size_t)((ps->workers + 63) / 64) * sizeof(uint64_t);
}

static void subscribe(petrel_ps *ps, ps_table *t, int64_t slot, int worker) {
    (void)ps;
    uint64_t *bits = petreli_ps_store_aux(t->store, slot);
    bits[worker / 64] |= 1ull << (worker % 64);
}

static bool subscribed(ps_table *t, int64_t slot, int worker) {
    const uint64_t *bits = petreli_ps_store_aux(t->store, slot);
    return bits[worker / 64] >> (worker % 64) & 1;
}

static bool is_bsp(const petrel_ps_table_spec *s) {
    return !s->sync.async && s->sync.staleness == 0;
}

/* The worker index of a message's source, or -1 when it is not a worker. */
static int worker_of(const petrel_ps *ps, int src) {
    int w = src - 1 - ps->servers;
    return w >= 0 && w < ps->workers ? w : -1;
}

static void reject(petrel_ps *ps, const petrel_msg *m, const char *why) {
    PETREL_LOG_WARN("ps",
                    "server %d: ignored a malformed message (type %u, table %u) from rank %d: %s",
                    ps->server_index, m->type, m->id, m->src, why);
}

/* A worker's INC, GET or SET, checked against its table: the rows it names (and
 * their values, when with_values). Call with ps->mu held; false, with the reason in
 * *why, when the message must be dropped. */
typedef struct request {
    ps_table *t;
    int worker;
    int64_t n;
    const uint64_t *keys;
    const float *values;
} request;

static bool take_request(petrel_ps *ps, const petrel_msg *m, bool with_values, request *r,
                         const char **why) {
    ps->last_message_ns = petrel_now_ns();
    r->t = m->id < (uint32_t)ps->ntables ? &ps->tables[m->id] : NULL;
    r->worker = worker_of(ps, m->src);
    if (!r->t)
        *why = "no such table";
    else if (r->worker < 0)
        *why = "not from a worker";
    else if (!petreli_ps_parse_rows(m, with_values ? r->t->spec.cols : 0, &r->n, &r->keys,
                                    with_values ? &r->values : NULL))
        *why = "bad length";
    else
        return true;
    return false;
}

/* Room for n rows of cols floats in ps->rows_buf, the values of the ROWS being
 * sent, and with_keys, for their n keys in ps->rows_keys: buffers that every send
 * reuses (a send is done with them on return), so that serving rows allocates
 * nothing once they have grown. Call with ps->mu held. */
static petrel_err rows_room(petrel_ps *ps, int64_t n, int64_t cols, bool with_keys) {
    size_t rows = (size_t)(n ? n : 1), need = rows * (size_t)cols;
    if (ps->rows_cap < need) {
        float *b = petrel_realloc(ps->rows_buf, need * sizeof *b);
        if (!b) return petrel_error_set(PETREL_ERR_NOMEM, "ps: out of memory for %zu floats", need);
        ps->rows_buf = b;
        ps->rows_cap = need;
    }
    if (with_keys && ps->rows_keys_cap < rows) {
        uint64_t *k = petrel_realloc(ps->rows_keys, rows * sizeof *k);
        if (!k) return petrel_error_set(PETREL_ERR_NOMEM, "ps: out of memory for %zu keys", rows);
        ps->rows_keys = k;
        ps->rows_keys_cap = rows;
    }
    return PETREL_OK;
}

/* Answers worker's GET of keys (ROWS at the current server clock), through the
 * worker's key cache for reads. Call with ps->mu held. */
static petrel_err send_rows(petrel_ps *ps, int worker, uint32_t table, const uint64_t *keys,
                            int64_t n) {
    ps_table *t = &ps->tables[table];
    int64_t cols = t->spec.cols;
    petrel_err err = rows_room(ps, n, cols, false);
    if (err == PETREL_OK)
        err = petreli_ps_store_gather(t->store, keys, n, ps->rows_buf, NULL, &t->hints[worker].get);
    if (err == PETREL_OK)
        err = petreli_ps_send(ps, 1 + ps->servers + worker, PS_ROWS, table, ps->clock, keys, n,
                              ps->rows_buf, cols);
    return err;
}

static void note_failure(petrel_ps *ps, petrel_err err) {
    if (err == PETREL_OK || ps->failure != PETREL_OK) return;
    ps->failure = err;
    PETREL_LOG_ERROR("ps", "server %d: %s", ps->server_index, petrel_errmsg());
}

/* ---- snapshots --------------------------------------------------------------------- */

static void snapshot_path(const petrel_ps *ps, int64_t clock, int table, char *buf, size_t size) {
    snprintf(buf, size, "%s/clock-%lld/table-%d.server-%d", ps->cfg.snapshot_dir, (long long)clock,
             table, ps->server_index);
}

static petrel_err write_snapshot(petrel_ps *ps, int64_t clock) {
    char path[4096];
    snprintf(path, sizeof path, "%s/clock-%lld", ps->cfg.snapshot_dir, (long long)clock);
    petrel_err err = petrel_mkdirs(path);
    for (int t = 0; t < ps->ntables && err == PETREL_OK; t++) {
        snapshot_path(ps, clock, t, path, sizeof path);
        err = petreli_ps_store_save(ps->tables[t].store, path);
    }
    if (err == PETREL_OK) ps->last_snapshot = clock;
    if (err == PETREL_OK)
        PETREL_LOG_INFO("ps", "server %d: snapshot of clock %lld written", ps->server_index,
                        (long long)clock);
    return err;
}

/* ---- the server clock ---------------------------------------------------------------- */

static void apply_deferred(petrel_ps *ps, int64_t below) {
    while (ps->deferred_head && ps->deferred_head->clock < below) {
        deferred *d = ps->deferred_head;
        ps_table *t = &ps->tables[d->table];
        note_failure(ps, petreli_ps_store_apply(t->store, d->keys, d->n, d->deltas, d->clock,
                                                &t->hints[d->worker].inc));
        ps->deferred_head = d->next;
        petrel_msg_release(&d->msg);
        petrel_free(d);
    }
}

/* Every subscribed row of every pushing table to each worker still running, in slot
 * order: keys and rows are copied by slot, with no key to look up. */
static petrel_err push_rows(petrel_ps *ps) {
    petrel_err err = PETREL_OK;
    for (int ti = 0; ti < ps->ntables && err == PETREL_OK; ti++) {
        ps_table *t = &ps->tables[ti];
        if (!t->spec.push) continue;
        int64_t count = petreli_ps_store_count(t->store), cols = t->spec.cols;
        if ((err = rows_room(ps, count, cols, true)) != PETREL_OK) return err;
        uint64_t *keys = ps->rows_keys;
        for (int w = 0; w < ps->workers && err == PETREL_OK; w++) {
            if (ps->worker_clock[w] == PS_FINISHED) continue;
            int64_t n = 0;
            for (int64_t slot = 0; slot < count; slot++) {
                if (!subscribed(t, slot, w)) continue;
                keys[n] = petreli_ps_store_key(t->store, slot);
                memcpy(ps->rows_buf + n * cols, petreli_ps_store_row(t->store, slot),
                       (size_t)cols * sizeof(float));
                n++;
            }
            if (n)
                err = petreli_ps_send(ps, 1 + ps->servers + w, PS_ROWS, (uint32_t)ti, ps->clock,
                                      keys, n, ps->rows_buf, cols);
        }
    }
    return err;
}

static void answer_waiting(petrel_ps *ps) {
    waiting_get **pp = &ps->waiting;
    while (*pp) {
        waiting_get *g = *pp;
        if (g->need > ps->clock) {
            pp = &g->next;
            continue;
        }
        if (ps->worker_clock[g->worker] != PS_FINISHED)
            note_failure(ps, send_rows(ps, g->worker, g->table, g->keys, g->n));
        *pp = g->next;
        petrel_msg_release(&g->msg);
        petrel_free(g);
    }
}

static void advance(petrel_ps *ps, int64_t to) {
    int64_t from = ps->clock;
    apply_deferred(ps, to);
    ps->clock = to;
    if (ps->cfg.snapshot_dir && to != PS_FINISHED) {
        int64_t every = ps->cfg.snapshot_every;
        int64_t c = to / every * every; /* the latest boundary passed */
        if (c > from && c > 0) note_failure(ps, write_snapshot(ps, c));
    }
    if (to != PS_FINISHED) note_failure(ps, push_rows(ps));
    /* The end goes to all: a finished worker may wait for the final model. */
    for (int w = 0; w < ps->workers; w++)
        if (ps->worker_clock[w] != PS_FINISHED || to == PS_FINISHED)
            note_failure(ps, petrel_net_send(ps->net, 1 + ps->servers + w, PS_ADVANCE, 0, to, NULL,
                                             0, ps->cfg.timeout_ms));
    answer_waiting(ps);
}

static int64_t min_worker_clock(const petrel_ps *ps) {
    int64_t m = PS_FINISHED;
    for (int w = 0; w < ps->workers; w++)
        if (ps->worker_clock[w] < m) m = ps->worker_clock[w];
    return m;
}

/* ---- handlers ------------------------------------------------------------------------ */

static void on_clock(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    petrel_ps *ps = ctx;
    int w = worker_of(ps, m->src);
    pthread_mutex_lock(&ps->mu);
    ps->last_message_ns = petrel_now_ns();
    if (w < 0 || m->clock < ps->worker_clock[w]) {
        reject(ps, m, w < 0 ? "not from a worker" : "a clock that went backwards");
    } else if (ps->worker_clock[w] != PS_FINISHED) {
        if (m->clock == PS_FINISHED) {
            ps->finished++;
            if (ps->worker_clock[w] > ps->last_clock) ps->last_clock = ps->worker_clock[w];
        }
        ps->worker_clock[w] = m->clock;
        int64_t to = min_worker_clock(ps);
        if (ps->role == PETREL_ROLE_SERVER && to > ps->clock) advance(ps, to);
        pthread_cond_broadcast(&ps->cv);
    }
    pthread_mutex_unlock(&ps->mu);
}

static void on_inc(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    petrel_ps *ps = ctx;
    pthread_mutex_lock(&ps->mu);
    request r;
    const char *why;
    if (!take_request(ps, m, true, &r, &why)) {
        reject(ps, m, why);
    } else if (is_bsp(&r.t->spec) && m->clock >= ps->clock) {
        /* BSP: a read at clock c sees exactly the deltas of clocks below c. The message
         * is kept until then, not copied. */
        deferred *d = petrel_malloc(sizeof *d);
        if (!d) {
            note_failure(ps, petrel_error_set(PETREL_ERR_NOMEM, "ps: out of memory for deltas"));
        } else {
            *d = (deferred){.table = m->id,
                            .clock = m->clock,
                            .worker = r.worker,
                            .n = r.n,
                            .keys = r.keys,
                            .deltas = r.values};
            petrel_msg_keep(m, &d->msg);
            /* Kept in (clock, worker) order, arrival order within: the result does not
             * depend on which worker's deltas came first. */
            deferred **pp = &ps->deferred_head;
            while (*pp && ((*pp)->clock < d->clock ||
                           ((*pp)->clock == d->clock && (*pp)->worker <= d->worker)))
                pp = &(*pp)->next;
            d->next = *pp;
            *pp = d;
        }
    } else if (petreli_ps_store_apply(r.t->store, r.keys, r.n, r.values, m->clock,
                                      &r.t->hints[r.worker].inc) != PETREL_OK) {
        reject(ps, m, petrel_errmsg());
    }
    pthread_mutex_unlock(&ps->mu);
}

static void on_get(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    petrel_ps *ps = ctx;
    pthread_mutex_lock(&ps->mu);
    request r;
    const char *why;
    if (!take_request(ps, m, false, &r, &why)) {
        reject(ps, m, why);
        pthread_mutex_unlock(&ps->mu);
        return;
    }
    ps_table *t = r.t;
    int64_t n = r.n;
    const uint64_t *keys = r.keys;
    int w = r.worker;
    bool bad = false;
    if (t->spec.push)
        for (int64_t i = 0; i < n && !bad; i++) {
            int64_t slot = petreli_ps_store_slot(t->store, keys[i], true);
            if (slot < 0)
                bad = true;
            else
                subscribe(ps, t, slot, w);
        }
    if (bad) {
        reject(ps, m, "a key this server does not hold");
    } else if (m->clock <= ps->clock || t->spec.sync.async) {
        petrel_err err = send_rows(ps, w, m->id, keys, n);
        if (err != PETREL_OK) reject(ps, m, petrel_errmsg());
    } else if (!t->spec.push) { /* pushing tables send it when the clock gets there */
        /* The message is kept until then, not copied. */
        waiting_get *g = petrel_malloc(sizeof *g);
        if (!g) {
            note_failure(ps, petrel_error_set(PETREL_ERR_NOMEM, "ps: out of memory for a read"));
        } else {
            *g = (waiting_get){.next = ps->waiting,
                               .worker = w,
                               .table = m->id,
                               .need = m->clock,
                               .n = n,
                               .keys = keys};
            petrel_msg_keep(m, &g->msg);
            ps->waiting = g;
        }
    }
    pthread_mutex_unlock(&ps->mu);
}

static void on_set(void *ctx, petrel_net *net, const petrel_msg *m) {
    petrel_ps *ps = ctx;
    pthread_mutex_lock(&ps->mu);
    request r;
    const char *why = NULL;
    if (take_request(ps, m, true, &r, &why) &&
        petreli_ps_store_set(r.t->store, r.keys, r.n, r.values) != PETREL_OK)
        why = petrel_errmsg();
    char reply[512] = "";
    if (why) snprintf(reply, sizeof reply, "%s", why);
    pthread_mutex_unlock(&ps->mu);
    if (petrel_net_reply(net, m, reply, strlen(reply)) != PETREL_OK)
        PETREL_LOG_WARN("ps", "server: reply to rank %d: %s", m->src, petrel_errmsg());
}

static void on_flush(void *ctx, petrel_net *net, const petrel_msg *m) {
    petrel_ps *ps = ctx;
    pthread_mutex_lock(&ps->mu);
    ps->last_message_ns = petrel_now_ns();
    pthread_mutex_unlock(&ps->mu);
    if (petrel_net_reply(net, m, NULL, 0) != PETREL_OK)
        PETREL_LOG_WARN("ps", "server: reply to rank %d: %s", m->src, petrel_errmsg());
}

/* ---- life cycle -------------------------------------------------------------------- */

petrel_err petreli_ps_server_init(petrel_ps *ps) {
    ps->worker_clock = petrel_calloc((size_t)ps->workers, sizeof *ps->worker_clock);
    if (!ps->worker_clock) return PETREL_ERR_NOMEM;
    for (int w = 0; w < ps->workers; w++) ps->worker_clock[w] = ps->clock;
    petrel_err err = petrel_net_on(ps->net, PS_CLOCK, on_clock, ps);
    if (ps->role == PETREL_ROLE_SERVER) {
        if (err == PETREL_OK) err = petrel_net_on(ps->net, PS_INC, on_inc, ps);
        if (err == PETREL_OK) err = petrel_net_on(ps->net, PS_GET, on_get, ps);
        if (err == PETREL_OK) err = petrel_net_on(ps->net, PS_SET, on_set, ps);
        if (err == PETREL_OK) err = petrel_net_on(ps->net, PS_FLUSH, on_flush, ps);
    }
    return err;
}

petrel_err petreli_ps_server_table(petrel_ps *ps, uint32_t id) {
    ps_table *t = &ps->tables[id];
    petrel_err err = petreli_ps_store_new(&t->store, &t->spec, ps->server_index, ps->servers,
                                          subscriber_bytes(ps));
    if (err == PETREL_OK && ps->cfg.snapshot_dir && ps->cfg.resume_clock >= 0) {
        char path[4096];
        snapshot_path(ps, ps->cfg.resume_clock, (int)id, path, sizeof path);
        err = petreli_ps_store_load(t->store, path);
    }
    if (err == PETREL_OK && !(t->hints = petrel_calloc((size_t)ps->workers, sizeof *t->hints)))
        err = PETREL_ERR_NOMEM;
    return err; /* on failure petrel_ps_table_create frees what was made (table_fini) */
}

petrel_err petrel_ps_serve(petrel_ps *ps) {
    if (ps->role == PETREL_ROLE_WORKER)
        return petrel_error_set(PETREL_ERR_STATE, "ps: petrel_ps_serve is for servers and rank 0");
    petrel_err err = PETREL_OK;
    pthread_mutex_lock(&ps->mu);
    while (ps->finished < ps->workers && ps->failure == PETREL_OK) {
        for (int w = 0; w < ps->workers && err == PETREL_OK; w++)
            if (ps->worker_clock[w] != PS_FINISHED &&
                !petrel_net_peer_alive(ps->net, 1 + ps->servers + w))
                err = petrel_error_set(PETREL_ERR_IO, "ps: worker %d (rank %d) died at clock %lld",
                                       w, 1 + ps->servers + w, (long long)ps->worker_clock[w]);
        /* Servers hear from the workers every clock; rank 0 only at their end. */
        if (err == PETREL_OK && ps->role == PETREL_ROLE_SERVER &&
            petrel_now_ns() - ps->last_message_ns > (uint64_t)ps->cfg.timeout_ms * 1000000u)
            err = petrel_error_set(PETREL_ERR_TIMEOUT,
                                   "ps: server %d heard from no worker for %d ms (server clock "
                                   "%lld)",
                                   ps->server_index, ps->cfg.timeout_ms, (long long)ps->clock);
        if (err != PETREL_OK) break;
        (void)petreli_ps_wait(ps, petrel_now_ns() + 100000000u);
    }
    if (err == PETREL_OK && ps->failure != PETREL_OK)
        err = petrel_error_set(ps->failure, "ps: server %d failed (see the log above)",
                               ps->server_index);
    if (err == PETREL_OK && ps->role == PETREL_ROLE_SERVER && ps->cfg.snapshot_dir &&
        ps->last_clock > ps->last_snapshot)
        err = write_snapshot(ps, ps->last_clock); /* the end of the run */
    pthread_mutex_unlock(&ps->mu);
    return err;
}

void petreli_ps_server_fini(petrel_ps *ps) {
    while (ps->deferred_head) {
        deferred *d = ps->deferred_head;
        ps->deferred_head = d->next;
        petrel_msg_release(&d->msg);
        petrel_free(d);
    }
    while (ps->waiting) {
        waiting_get *g = ps->waiting;
        ps->waiting = g->next;
        petrel_msg_release(&g->msg);
        petrel_free(g);
    }
    petrel_free(ps->rows_buf);
    petrel_free(ps->rows_keys);
    petrel_free(ps->worker_clock);
}
