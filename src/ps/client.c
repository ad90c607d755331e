/*
 * The worker side of the parameter server: the process cache, the operation log,
 * thread and process clocks, consistent reads, and managed communication.
 *
 * Locks: ps->flush_mu is taken before ps->mu and held by whoever sends deltas
 * (a clock that advances the process clock, flush, finish and wait_final through
 * end_training, the communication thread), so that deltas and CLOCK messages leave
 * in clock order. Nothing is sent while ps->mu is held: the receive thread needs it
 * to take in rows.
 */
#include "ps_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The store spec of a worker-side table copy: sparse, summing, zero-initialised. */
static petrel_ps_table_spec local_spec(const petrel_ps_table_spec *spec) {
    petrel_ps_table_spec s = petrel_ps_table_spec_default(PETREL_PS_SPARSE, 0, spec->cols);
    return s;
}

/* The table exists and, when dense, holds every key. */
static petrel_err check_rows(const petrel_ps *ps, uint32_t table, const uint64_t *keys, int64_t n) {
    if (table >= (uint32_t)ps->ntables)
        return petrel_error_set(PETREL_ERR_INVALID, "ps: no table %u", table);
    const ps_table *t = &ps->tables[table];
    if (t->spec.kind != PETREL_PS_DENSE) return PETREL_OK;
    for (int64_t i = 0; i < n; i++)
        if (keys[i] >= (uint64_t)t->spec.rows)
            return petrel_error_set(PETREL_ERR_INVALID, "ps table %u: row %llu outside 0..%lld",
                                    table, (unsigned long long)keys[i],
                                    (long long)t->spec.rows - 1);
    return PETREL_OK;
}

/* Writes and clocks belong to training, which an ended handle has left. */
static petrel_err check_training(const petrel_ps_worker *w) {
    if (!w->ended) return PETREL_OK;
    return petrel_error_set(PETREL_ERR_STATE,
                            "ps: worker %d: this handle has ended training (petrel_ps_wait_final): "
                            "it may only read",
                            w->ps->worker_index);
}

/* A dead server fails every wait for it. Call with ps->mu held. */
static petrel_err servers_alive(petrel_ps *ps) {
    for (int s = 0; s < ps->servers; s++)
        if (!petrel_net_peer_alive(ps->net, petreli_ps_server_rank(ps, s)))
            return petrel_error_set(PETREL_ERR_IO, "ps: server %d (rank %d) is dead", s,
                                    petreli_ps_server_rank(ps, s));
    return PETREL_OK;
}

/* Waits until the server clock (the least ADVANCE heard) reaches target, adding the
 * time to stats.wait_clock_s. The timeout counts from the call, or with `patient`
 * from the last time the server clock moved. A dead server is PETREL_ERR_IO;
 * PETREL_ERR_TIMEOUT comes without a message, for the caller to say what it waited
 * for. Call with ps->mu held. */
static petrel_err wait_server_clock(petrel_ps *ps, int64_t target, bool patient) {
    if (ps->known_min >= target) return PETREL_OK;
    const uint64_t timeout_ns = (uint64_t)ps->cfg.timeout_ms * 1000000u;
    uint64_t t0 = petrel_now_ns(), deadline = t0 + timeout_ns;
    int64_t seen = ps->known_min;
    petrel_err err = PETREL_OK;
    while (ps->known_min < target) {
        if (patient && ps->known_min != seen) {
            seen = ps->known_min;
            deadline = petrel_now_ns() + timeout_ns;
        }
        if ((err = servers_alive(ps)) != PETREL_OK) break;
        if (!petreli_ps_wait(ps, deadline)) {
            err = PETREL_ERR_TIMEOUT;
            break;
        }
    }
    ps->stats.wait_clock_s += (double)(petrel_now_ns() - t0) * 1e-9;
    return err;
}

/* ---- keys grouped by server ---------------------------------------------------------- */

/* Keys (and their rows) bound for each server, built under ps->mu, sent after. */
typedef struct outbox {
    int servers;
    int64_t cols;
    int64_t first;
    int64_t *n, *cap;
    uint64_t **keys;
    float **values; /* NULL for GET */
    bool borrowed;  /* keys and values point into an operation log: not freed here */
} outbox;

/* first: rows to make room for at a server's first row (the expected share). */
static petrel_err outbox_init(outbox *o, int servers, int64_t cols, bool with_values,
                              int64_t first) {
    *o = (outbox){.servers = servers, .cols = cols, .first = first > 0 ? first : 1};
    o->n = petrel_calloc((size_t)servers, sizeof *o->n);
    o->cap = petrel_calloc((size_t)servers, sizeof *o->cap);
    o->keys = petrel_calloc((size_t)servers, sizeof *o->keys);
    o->values = with_values ? petrel_calloc((size_t)servers, sizeof *o->values) : NULL;
    if (!o->n || !o->cap || !o->keys || (with_values && !o->values)) return PETREL_ERR_NOMEM;
    return PETREL_OK;
}

static void outbox_fini(outbox *o) {
    for (int s = 0; s < o->servers && !o->borrowed; s++) {
        if (o->keys) petrel_free(o->keys[s]);
        if (o->values) petrel_free(o->values[s]);
    }
    petrel_free(o->n);
    petrel_free(o->cap);
    petrel_free(o->keys);
    petrel_free(o->values);
}

/* Room for need rows in keys and, unless values is NULL, rows of cols floats in
 * *values: capacities double from first. What is there stays on failure. */
static petrel_err rows_grow(uint64_t **keys, float **values, int64_t *cap, int64_t need,
                            int64_t first, int64_t cols) {
    if (need <= *cap) return PETREL_OK;
    int64_t c = *cap ? *cap : first;
    while (c < need) c *= 2;
    uint64_t *k = petrel_realloc(*keys, (size_t)c * sizeof *k);
    if (!k) return PETREL_ERR_NOMEM;
    *keys = k;
    if (values) {
        float *v = petrel_realloc(*values, (size_t)(c * cols) * sizeof *v);
        if (!v) return PETREL_ERR_NOMEM;
        *values = v;
    }
    *cap = c;
    return PETREL_OK;
}

static petrel_err outbox_add(outbox *o, int server, uint64_t key, const float *row) {
    int64_t i = o->n[server];
    petrel_err err = rows_grow(&o->keys[server], o->values ? &o->values[server] : NULL,
                               &o->cap[server], i + 1, o->first, o->cols);
    if (err != PETREL_OK) return err;
    o->keys[server][i] = key;
    if (o->values) memcpy(o->values[server] + i * o->cols, row, (size_t)o->cols * sizeof(float));
    o->n[server] = i + 1;
    return PETREL_OK;
}

static petrel_err outbox_send(petrel_ps *ps, outbox *o, uint8_t type, uint32_t table,
                              int64_t clock) {
    petrel_err err = PETREL_OK;
    for (int s = 0; s < o->servers && err == PETREL_OK; s++)
        if (o->n[s])
            err = petreli_ps_send(ps, petreli_ps_server_rank(ps, s), type, table, clock, o->keys[s],
                                  o->n[s], o->values ? o->values[s] : NULL, o->cols);
    return err;
}

/* ---- handlers ---------------------------------------------------------------------- */

static void on_rows(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    petrel_ps *ps = ctx;
    pthread_mutex_lock(&ps->mu);
    ps_table *t = m->id < (uint32_t)ps->ntables ? &ps->tables[m->id] : NULL;
    int64_t n;
    const uint64_t *keys;
    const float *values;
    int server = m->src - 1;
    if (!t || server < 0 || server >= ps->servers ||
        !petreli_ps_parse_rows(m, t->spec.cols, &n, &keys, &values) ||
        petreli_ps_store_set(t->cache, keys, n, values) != PETREL_OK) {
        PETREL_LOG_WARN("ps", "worker %d: ignored malformed rows (table %u) from rank %d",
                        ps->worker_index, m->id, m->src);
    } else {
        for (int64_t i = 0; i < n; i++) {
            cache_meta *meta =
                petreli_ps_store_aux(t->cache, petreli_ps_store_slot(t->cache, keys[i], true));
            if (!meta->present || m->clock > meta->served) meta->served = m->clock;
            meta->present = true;
            meta->arrived = ps->process_clock;
            if (meta->asked && meta->requested <= meta->served) meta->asked = false;
        }
        ps->stats.bytes_received += m->len + 48;
        pthread_cond_broadcast(&ps->cv);
    }
    pthread_mutex_unlock(&ps->mu);
}

static void on_advance(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    petrel_ps *ps = ctx;
    int server = m->src - 1;
    pthread_mutex_lock(&ps->mu);
    if (server >= 0 && server < ps->servers && m->clock > ps->server_clock[server]) {
        ps->server_clock[server] = m->clock;
        int64_t low = PS_FINISHED;
        for (int s = 0; s < ps->servers; s++)
            if (ps->server_clock[s] < low) low = ps->server_clock[s];
        ps->known_min = low;
        ps->stats.bytes_received += 48;
        pthread_cond_broadcast(&ps->cv);
    }
    pthread_mutex_unlock(&ps->mu);
}

/* ---- the log's batches ---------------------------------------------------------------- */

/* A large inc_rows call to a summing table is appended to the log as it comes
 * rather than coalesced key by key: a copy instead of a hash insert per key, which
 * costs 5 to 20 times as much at millions of keys (bench_ps_store). A key pushed
 * twice then goes out twice and the server sums it. A read merges the batches into
 * the per-key log first (read-my-writes), and so does a clock that finds both in
 * use. Small calls, the kind that repeat keys, keep coalescing; tables whose log
 * is filtered or sent early by magnitude need the per-key log. */
enum { BATCH_MIN_KEYS = 1024 };

static bool batchable(const petrel_ps *ps, const ps_table *t, int64_t n) {
    return n >= BATCH_MIN_KEYS && t->spec.rule == PETREL_PS_SUM && t->spec.significance <= 0 &&
           ps->cfg.bandwidth_bytes_per_s <= 0;
}

static petrel_err batches_append(ps_batches *b, int64_t cols, const uint64_t *keys, int64_t n,
                                 const float *deltas) {
    petrel_err err = rows_grow(&b->keys, &b->values, &b->cap, b->n + n, BATCH_MIN_KEYS, cols);
    if (err != PETREL_OK) return err;
    memcpy(b->keys + b->n, keys, (size_t)n * sizeof *keys);
    memcpy(b->values + b->n * cols, deltas, (size_t)(n * cols) * sizeof *deltas);
    b->n += n;
    return PETREL_OK;
}

/* Moves a table's batches into its per-key log, all or nothing: room for a row per
 * batched key is made first, so that the apply cannot stop halfway (the batches
 * would then stay, and the deltas already applied would be sent twice). Call with
 * ps->mu held. */
static petrel_err merge_batches(ps_table *t) {
    if (t->batched.n == 0) return PETREL_OK;
    petrel_err err = petreli_ps_store_reserve(t->oplog, t->batched.n);
    if (err != PETREL_OK) return err;
    err =
        petreli_ps_store_apply(t->oplog, t->batched.keys, t->batched.n, t->batched.values, 0, NULL);
    PETREL_ASSERT(err == PETREL_OK, "a summing sparse log with room reserved takes every key");
    t->batched.n = 0;
    return PETREL_OK;
}

/* ---- reads ------------------------------------------------------------------------- */

/* Whether a cached row may be read now; call with ps->mu held. */
static bool fresh(const petrel_ps *ps, const cache_meta *meta, int64_t need) {
    if (!meta->present) return false;
    return need == PS_ANY_CLOCK ? meta->arrived >= ps->process_clock : meta->served >= need;
}

/* Asks the servers for the rows of keys that are not fresh and not asked for yet.
 * Call with ps->mu held; it is released while sending. *all_fresh tells whether
 * nothing was missing. */
static petrel_err request(petrel_ps *ps, uint32_t table, const uint64_t *keys, int64_t n,
                          int64_t need, bool *all_fresh, bool *sent, bool count) {
    ps_table *t = &ps->tables[table];
    outbox o;
    petrel_err err = outbox_init(&o, ps->servers, 0, false, n / ps->servers + 1);
    int64_t ask = need == PS_ANY_CLOCK ? ps->process_clock : need;
    bool complete = true;
    for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
        int64_t slot = petreli_ps_store_slot(t->cache, keys[i], true);
        if (slot < 0) {
            err = PETREL_ERR_NOMEM;
            break;
        }
        cache_meta *meta = petreli_ps_store_aux(t->cache, slot);
        if (fresh(ps, meta, need)) {
            if (count) ps->stats.cache_hits++;
            continue;
        }
        complete = false;
        if (meta->asked && meta->requested >= ask) continue;
        meta->asked = true;
        meta->requested = ask;
        if (count) ps->stats.fetches++;
        err = outbox_add(&o, petreli_ps_partition(&t->spec, keys[i], ps->servers), keys[i], NULL);
    }
    *all_fresh = complete;
    *sent = false;
    if (err == PETREL_OK && o.n && !complete) {
        for (int sv = 0; sv < o.servers; sv++) *sent = *sent || o.n[sv] > 0;
        pthread_mutex_unlock(&ps->mu);
        err = outbox_send(ps, &o, PS_GET, table, need);
        pthread_mutex_lock(&ps->mu);
    }
    outbox_fini(&o);
    return err;
}

/* The server clock a read must reflect: PS_ANY_CLOCK for async tables, and
 * PS_FINISHED (the final model) once the handle has ended. */
static int64_t need_of(const ps_table *t, const petrel_ps_worker *w) {
    if (w->ended) return PS_FINISHED;
    return t->spec.sync.async ? PS_ANY_CLOCK : w->clock - t->spec.sync.staleness;
}

petrel_err petrel_ps_get_rows(petrel_ps_worker *w, uint32_t table, const uint64_t *keys, int64_t n,
                              float *out) {
    petrel_ps *ps = w->ps;
    petrel_err err = check_rows(ps, table, keys, n);
    if (err != PETREL_OK) return err;
    ps_table *t = &ps->tables[table];
    int64_t need = need_of(t, w);
    uint64_t t0 = petrel_now_ns(), deadline = t0 + (uint64_t)ps->cfg.timeout_ms * 1000000u;
    bool waited = false;
    pthread_mutex_lock(&ps->mu);
    for (bool first = true;; first = false) {
        bool all_fresh = false, sent = false;
        err = request(ps, table, keys, n, need, &all_fresh, &sent, first);
        if (err != PETREL_OK || all_fresh) break;
        /* The rows may have arrived while the lock was released to send: look again
         * before sleeping, or their wakeup is lost. */
        if (sent) continue;
        if ((err = servers_alive(ps)) != PETREL_OK) break;
        waited = true;
        if (!petreli_ps_wait(ps, deadline)) {
            err = petrel_error_set(PETREL_ERR_TIMEOUT,
                                   "ps: worker %d waited %d ms for %lld rows of table %u at clock "
                                   "%lld (server clock %lld)",
                                   ps->worker_index, ps->cfg.timeout_ms, (long long)n, table,
                                   (long long)w->clock, (long long)ps->known_min);
            break;
        }
    }
    if (err == PETREL_OK) err = merge_batches(t); /* read-my-writes looks in the per-key log */
    if (err == PETREL_OK) {
        err = petreli_ps_store_gather(t->cache, keys, n, out, NULL, NULL);
        for (int64_t i = 0; i < n && err == PETREL_OK; i++) {
            const cache_meta *meta =
                petreli_ps_store_aux(t->cache, petreli_ps_store_slot(t->cache, keys[i], false));
            int64_t stale = w->clock > meta->served ? w->clock - meta->served : 0;
            ps->stats
                .staleness[stale < PETREL_PS_STALENESS_BINS - 1 ? stale
                                                                : PETREL_PS_STALENESS_BINS - 1]++;
            if (stale > ps->stats.max_staleness) ps->stats.max_staleness = stale;
            /* Read-my-writes: a summing table shows this process's unsent deltas. */
            int64_t own = t->spec.rule == PETREL_PS_SUM
                              ? petreli_ps_store_slot(t->oplog, keys[i], false)
                              : -1;
            if (own >= 0) {
                const float *d = petreli_ps_store_row(t->oplog, own);
                for (int64_t j = 0; j < t->spec.cols; j++) out[i * t->spec.cols + j] += d[j];
            }
        }
        ps->stats.reads += (uint64_t)n;
    }
    if (waited) ps->stats.wait_get_s += (double)(petrel_now_ns() - t0) * 1e-9;
    pthread_mutex_unlock(&ps->mu);
    return err;
}

petrel_err petrel_ps_get(petrel_ps_worker *w, uint32_t table, uint64_t key, float *out) {
    return petrel_ps_get_rows(w, table, &key, 1, out);
}

petrel_err petrel_ps_prefetch(petrel_ps_worker *w, uint32_t table, const uint64_t *keys,
                              int64_t n) {
    petrel_ps *ps = w->ps;
    petrel_err err = check_rows(ps, table, keys, n);
    if (err != PETREL_OK) return err;
    bool all_fresh, sent;
    pthread_mutex_lock(&ps->mu);
    err = request(ps, table, keys, n, need_of(&ps->tables[table], w), &all_fresh, &sent, false);
    pthread_mutex_unlock(&ps->mu);
    return err;
}

/* ---- writes ------------------------------------------------------------------------ */

petrel_err petrel_ps_inc_rows(petrel_ps_worker *w, uint32_t table, const uint64_t *keys, int64_t n,
                              const float *deltas) {
    petrel_ps *ps = w->ps;
    petrel_err err = check_training(w);
    if (err == PETREL_OK) err = check_rows(ps, table, keys, n);
    if (err != PETREL_OK) return err;
    ps_table *t = &ps->tables[table];
    pthread_mutex_lock(&ps->mu);
    if (batchable(ps, t, n))
        err = batches_append(&t->batched, t->spec.cols, keys, n, deltas);
    else
        err = petreli_ps_store_apply(t->oplog, keys, n, deltas, w->clock, NULL);
    pthread_mutex_unlock(&ps->mu);
    return err;
}

petrel_err petrel_ps_inc(petrel_ps_worker *w, uint32_t table, uint64_t key, const float *delta) {
    return petrel_ps_inc_rows(w, table, &key, 1, delta);
}

static float max_abs(const float *v, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(v[i]));
    return m;
}

/* The one server that every key of the log goes to, or -1. */
static int sole_server(const ps_table *t, int servers) {
    int64_t count = petreli_ps_store_count(t->oplog);
    if (count == 0) return -1;
    int s0 = petreli_ps_partition(&t->spec, petreli_ps_store_key(t->oplog, 0), servers);
    for (int64_t slot = 1; slot < count && servers > 1; slot++)
        if (petreli_ps_partition(&t->spec, petreli_ps_store_key(t->oplog, slot), servers) != s0)
            return -1;
    return s0;
}

/* Moves a table's batches (its whole log) into o: with one server o points into
 * them, kept as batched_sent until the next call; otherwise they are copied out
 * by server. Call with ps->mu held. */
static petrel_err take_batches(petrel_ps *ps, ps_table *t, outbox *o) {
    ps_batches *b = &t->batched;
    int64_t cols = t->spec.cols;
    petrel_err err = outbox_init(o, ps->servers, cols, true, b->n / ps->servers + 1);
    if (err == PETREL_OK && ps->servers == 1) {
        o->borrowed = true;
        o->n[0] = b->n;
        o->keys[0] = b->keys;
        o->values[0] = b->values;
    }
    for (int64_t i = 0; i < b->n && err == PETREL_OK && ps->servers > 1; i++)
        err = outbox_add(o, petreli_ps_partition(&t->spec, b->keys[i], ps->servers), b->keys[i],
                         b->values + i * cols);
    if (err != PETREL_OK) return err; /* the batches stay */
    ps_batches sent = *b;
    *b = t->batched_sent;
    b->n = 0;
    t->batched_sent = sent;
    return PETREL_OK;
}

/* Moves a table's operation log into o, keeping back what the significance filter
 * holds unless `all`. The log and its spare swap roles, so a clock allocates
 * nothing once they have grown; the spare keeps the sent log until the next call,
 * so that an outbox can point into it: a log bound for one server, with nothing to
 * filter or left over from early sends, goes out from its own arrays without a
 * copy. On failure the log and the batches stay as they were, and o must not be
 * sent. Call with ps->mu held, and ps->flush_mu until o is sent. */
static petrel_err take_oplog(petrel_ps *ps, ps_table *t, outbox *o, bool all) {
    bool early = ps->cfg.bandwidth_bytes_per_s > 0; /* rows sent early are zero */
    petreli_ps_store_clear(t->spare);               /* the log sent last time */
    if (t->batched.n && petreli_ps_store_count(t->oplog)) {
        petrel_err err = merge_batches(t);
        if (err != PETREL_OK) return err;
    }
    if (t->batched.n) return take_batches(ps, t, o);
    int64_t cols = t->spec.cols, count = petreli_ps_store_count(t->oplog);
    bool filter = !all && t->spec.significance > 0;
    int sole = early || filter ? -1 : sole_server(t, ps->servers);
    petrel_err err =
        outbox_init(o, ps->servers, cols, true, sole >= 0 ? 1 : count / ps->servers + 1);
    if (err == PETREL_OK && sole >= 0) {
        o->borrowed = true;
        o->n[sole] = count;
        o->keys[sole] = (uint64_t *)petreli_ps_store_keys(t->oplog);
        o->values[sole] = petreli_ps_store_row(t->oplog, 0);
    }
    for (int64_t slot = 0; slot < count && err == PETREL_OK && sole < 0; slot++) {
        uint64_t key = petreli_ps_store_key(t->oplog, slot);
        const float *d = petreli_ps_store_row(t->oplog, slot);
        float size = early || filter ? max_abs(d, cols) : 1;
        if (size == 0) continue; /* sent early by the communication thread */
        oplog_meta *om = petreli_ps_store_aux(t->oplog, slot);
        if (filter && om->held < t->spec.max_hold) {
            int64_t c = petreli_ps_store_slot(t->cache, key, false);
            float scale = c >= 0 ? max_abs(petreli_ps_store_row(t->cache, c), cols) : 0;
            if (size < t->spec.significance * fmaxf(scale, 1e-3f)) {
                err = petreli_ps_store_apply(t->spare, &key, 1, d, 0, NULL);
                int64_t k = petreli_ps_store_slot(t->spare, key, false);
                if (k >= 0) ((oplog_meta *)petreli_ps_store_aux(t->spare, k))->held = om->held + 1;
                ps->stats.rows_held++;
                continue;
            }
        }
        err = outbox_add(o, petreli_ps_partition(&t->spec, key, ps->servers), key, d);
    }
    if (err != PETREL_OK) {
        petreli_ps_store_clear(t->spare); /* the log stays as it was */
        return err;
    }
    petreli_ps_store *sent = t->oplog;
    t->oplog = t->spare;
    t->spare = sent;
    return PETREL_OK;
}

/* Moves the operation log of every table into outboxes (one per table). On
 * failure the failing table's box is left empty, with its log in place for the
 * next call, and the tables after it are not taken; the boxes before it hold logs
 * already taken, which must still be sent. Locks as take_oplog. */
static petrel_err take_oplogs(petrel_ps *ps, outbox *boxes, bool all) {
    for (int ti = 0; ti < ps->ntables; ti++) {
        petrel_err err = take_oplog(ps, &ps->tables[ti], &boxes[ti], all);
        if (err != PETREL_OK) {
            outbox_fini(&boxes[ti]);
            memset(&boxes[ti], 0, sizeof boxes[ti]);
            return err;
        }
    }
    return PETREL_OK;
}

/* Takes the logs under ps->mu, then sends them tagged with clock; ps->flush_mu held.
 * The logs taken before a table that failed go out all the same: they have left
 * their tables, and would be lost otherwise. */
static petrel_err send_oplogs(petrel_ps *ps, int64_t clock, bool all) {
    outbox boxes[PS_MAX_TABLES];
    memset(boxes, 0, sizeof boxes);
    pthread_mutex_lock(&ps->mu);
    int ntables = ps->ntables;
    petrel_err err = take_oplogs(ps, boxes, all);
    pthread_mutex_unlock(&ps->mu);
    petrel_err sent = PETREL_OK;
    for (int t = 0; t < ntables && sent == PETREL_OK; t++)
        sent = outbox_send(ps, &boxes[t], PS_INC, (uint32_t)t, clock);
    for (int t = 0; t < ntables; t++) outbox_fini(&boxes[t]);
    return err != PETREL_OK ? err : sent;
}

static petrel_err send_clock(petrel_ps *ps, int64_t clock, bool to_rank0) {
    petrel_err err = PETREL_OK;
    for (int s = 0; s < ps->servers && err == PETREL_OK; s++)
        err = petreli_ps_send(ps, petreli_ps_server_rank(ps, s), PS_CLOCK, 0, clock, NULL, 0, NULL,
                              0);
    if (err == PETREL_OK && to_rank0)
        err = petreli_ps_send(ps, 0, PS_CLOCK, 0, clock, NULL, 0, NULL, 0);
    return err;
}

/* The minimum over the clocks of the threads still training (PS_FINISHED when
 * none is); call with ps->mu held. */
static int64_t threads_min(const petrel_ps *ps) {
    int64_t m = PS_FINISHED;
    for (int i = 0; i < ps->nthreads; i++)
        if (!ps->threads[i]->ended && ps->threads[i]->clock < m) m = ps->threads[i]->clock;
    return m;
}

/* If the process clock moved, sends the log of the clock(s) it left and the new
 * clock. Call with flush_mu held and ps->mu not held. */
static petrel_err maybe_advance(petrel_ps *ps) {
    pthread_mutex_lock(&ps->mu);
    int64_t from = ps->process_clock, to = threads_min(ps);
    bool moved = to != PS_FINISHED && to > from; /* the process's end is end_training's */
    if (moved) ps->process_clock = to;
    pthread_mutex_unlock(&ps->mu);
    if (!moved) return PETREL_OK;
    petrel_err err = send_oplogs(ps, from, false);
    if (err == PETREL_OK) err = send_clock(ps, to, false);
    return err;
}

petrel_err petrel_ps_clock(petrel_ps_worker *w) {
    petrel_ps *ps = w->ps;
    if (check_training(w) != PETREL_OK) return PETREL_ERR_STATE;
    pthread_mutex_lock(&ps->flush_mu);
    pthread_mutex_lock(&ps->mu);
    w->clock++;
    pthread_mutex_unlock(&ps->mu);
    petrel_err err = maybe_advance(ps);
    pthread_mutex_unlock(&ps->flush_mu);
    if (err != PETREL_OK) return err;

    /* The strictest bound among the tables decides how far ahead this thread may run. */
    int bound = -1;
    for (int t = 0; t < ps->ntables; t++)
        if (!ps->tables[t].spec.sync.async &&
            (bound < 0 || ps->tables[t].spec.sync.staleness < bound))
            bound = ps->tables[t].spec.sync.staleness;
    if (bound < 0) return PETREL_OK;
    pthread_mutex_lock(&ps->mu);
    err = wait_server_clock(ps, w->clock - bound, false);
    if (err == PETREL_ERR_TIMEOUT)
        err = petrel_error_set(PETREL_ERR_TIMEOUT,
                               "ps: worker %d at clock %lld waited %d ms for the slowest worker "
                               "(server clock %lld, bound %d)",
                               ps->worker_index, (long long)w->clock, ps->cfg.timeout_ms,
                               (long long)ps->known_min, bound);
    pthread_mutex_unlock(&ps->mu);
    return err;
}

int64_t petrel_ps_worker_clock(const petrel_ps_worker *w) {
    return w->clock;
}

petrel_err petrel_ps_flush(petrel_ps_worker *w) {
    petrel_ps *ps = w->ps;
    pthread_mutex_lock(&ps->flush_mu);
    pthread_mutex_lock(&ps->mu);
    int64_t clock = ps->process_clock;
    pthread_mutex_unlock(&ps->mu);
    petrel_err err = send_oplogs(ps, clock, true);
    for (int s = 0; s < ps->servers && err == PETREL_OK; s++) {
        petrel_msg reply;
        err = petrel_net_call(ps->net, petreli_ps_server_rank(ps, s), PS_FLUSH, NULL, 0, &reply,
                              ps->cfg.timeout_ms);
        if (err == PETREL_OK) petrel_msg_release(&reply);
    }
    pthread_mutex_unlock(&ps->flush_mu);
    return err;
}

petrel_err petrel_ps_set_rows(petrel_ps_worker *w, uint32_t table, const uint64_t *keys, int64_t n,
                              const float *values) {
    petrel_ps *ps = w->ps;
    petrel_err err = check_training(w);
    if (err == PETREL_OK) err = check_rows(ps, table, keys, n);
    if (err != PETREL_OK) return err;
    ps_table *t = &ps->tables[table];
    int64_t cols = t->spec.cols;
    outbox o;
    err = outbox_init(&o, ps->servers, cols, true, n / ps->servers + 1);
    for (int64_t i = 0; i < n && err == PETREL_OK; i++)
        err = outbox_add(&o, petreli_ps_partition(&t->spec, keys[i], ps->servers), keys[i],
                         values + i * cols);
    for (int s = 0; s < ps->servers && err == PETREL_OK; s++) {
        if (!o.n[s]) continue;
        size_t len = sizeof(uint64_t) + (size_t)o.n[s] * (sizeof(uint64_t) + (size_t)cols * 4);
        unsigned char *req = petrel_malloc(len);
        if (!req) {
            err = PETREL_ERR_NOMEM;
            break;
        }
        uint64_t count = (uint64_t)o.n[s];
        memcpy(req, &count, sizeof count);
        memcpy(req + sizeof count, o.keys[s], (size_t)o.n[s] * sizeof(uint64_t));
        memcpy(req + sizeof count + (size_t)o.n[s] * sizeof(uint64_t), o.values[s],
               (size_t)(o.n[s] * cols) * sizeof(float));
        petrel_msg reply;
        err = petrel_net_call(ps->net, petreli_ps_server_rank(ps, s), PS_SET, req, len, &reply,
                              ps->cfg.timeout_ms);
        petrel_free(req);
        if (err == PETREL_OK && reply.len)
            err = petrel_error_set(PETREL_ERR_INVALID, "ps: server %d refused to set rows: %.*s", s,
                                   (int)reply.len, (const char *)reply.data);
        if (err == PETREL_OK || reply.len) petrel_msg_release(&reply);
    }
    outbox_fini(&o);
    return err;
}

/* ---- threads ----------------------------------------------------------------------- */

petrel_err petrel_ps_worker_new(petrel_ps *ps, petrel_ps_worker **out) {
    *out = NULL;
    if (ps->role != PETREL_ROLE_WORKER)
        return petrel_error_set(PETREL_ERR_STATE, "ps: only workers have worker handles");
    petrel_ps_worker *w = petrel_calloc(1, sizeof *w);
    if (!w) return PETREL_ERR_NOMEM;
    w->ps = ps;
    pthread_mutex_lock(&ps->mu);
    petrel_err err = PETREL_OK;
    if (ps->done)
        err = petrel_error_set(PETREL_ERR_STATE,
                               "ps: worker %d has finished (its last handle did): make every "
                               "handle before any finishes",
                               ps->worker_index);
    else if (ps->nthreads == ps->threads_cap) {
        int cap = ps->threads_cap ? 2 * ps->threads_cap : 8;
        petrel_ps_worker **th = petrel_realloc(ps->threads, (size_t)cap * sizeof *th);
        if (!th)
            err = PETREL_ERR_NOMEM;
        else
            ps->threads = th, ps->threads_cap = cap;
    }
    if (err == PETREL_OK) {
        w->clock = ps->process_clock;
        ps->threads[ps->nthreads++] = w;
    }
    pthread_mutex_unlock(&ps->mu);
    if (err != PETREL_OK)
        petrel_free(w);
    else
        *out = w;
    return err;
}

/* Takes w out of the clocks (and out of the process's handles when `remove`). The
 * last handle to end training sends everything left in the log, held deltas too,
 * and tells the servers and rank 0 that this process has finished. Call with
 * ps->flush_mu held. */
static petrel_err end_training(petrel_ps *ps, petrel_ps_worker *w, bool remove) {
    pthread_mutex_lock(&ps->mu);
    bool was_training = !w->ended;
    w->ended = true;
    for (int i = 0; remove && i < ps->nthreads; i++)
        if (ps->threads[i] == w) {
            ps->threads[i] = ps->threads[--ps->nthreads];
            break;
        }
    bool last = was_training;
    for (int i = 0; i < ps->nthreads; i++) last = last && ps->threads[i]->ended;
    ps->done |= last;
    int64_t clock = ps->process_clock;
    pthread_mutex_unlock(&ps->mu);
    if (!was_training) return PETREL_OK;
    if (!last) return maybe_advance(ps);
    petrel_err err = send_oplogs(ps, clock, true);
    if (err == PETREL_OK) err = send_clock(ps, PS_FINISHED, true);
    return err;
}

petrel_err petrel_ps_worker_finish(petrel_ps_worker *w) {
    if (!w) return PETREL_OK;
    petrel_ps *ps = w->ps;
    pthread_mutex_lock(&ps->flush_mu);
    petrel_err err = end_training(ps, w, true);
    pthread_mutex_unlock(&ps->flush_mu);
    petrel_free(w);
    return err;
}

petrel_err petrel_ps_wait_final(petrel_ps_worker *w) {
    petrel_ps *ps = w->ps;
    pthread_mutex_lock(&ps->flush_mu);
    petrel_err err = end_training(ps, w, false);
    pthread_mutex_unlock(&ps->flush_mu);
    if (err != PETREL_OK) return err;
    /* Others may train for much longer than the timeout: it counts from the last
     * time the slowest worker moved. */
    pthread_mutex_lock(&ps->mu);
    err = wait_server_clock(ps, PS_FINISHED, true);
    if (err == PETREL_ERR_TIMEOUT)
        err = petrel_error_set(PETREL_ERR_TIMEOUT,
                               "ps: worker %d waited for the others to finish, and for %d ms the "
                               "slowest did not move (server clock %lld)",
                               ps->worker_index, ps->cfg.timeout_ms, (long long)ps->known_min);
    pthread_mutex_unlock(&ps->mu);
    return err;
}

/* ---- managed communication --------------------------------------------------------- */

typedef struct candidate {
    float size;
    uint32_t table;
    int64_t slot;
} candidate;

static int by_size_desc(const void *a, const void *b) {
    float x = ((const candidate *)a)->size, y = ((const candidate *)b)->size;
    return (x < y) - (x > y);
}

/* Sends up to budget bytes of the largest deltas now; returns the bytes sent. */
static double send_early(petrel_ps *ps, double budget) {
    outbox boxes[PS_MAX_TABLES];
    memset(boxes, 0, sizeof boxes);
    pthread_mutex_lock(&ps->mu);
    int ntables = ps->ntables;
    int64_t clock = ps->process_clock, total = 0;
    for (int t = 0; t < ntables; t++) total += petreli_ps_store_count(ps->tables[t].oplog);
    candidate *cand = petrel_malloc((size_t)(total ? total : 1) * sizeof *cand);
    petrel_err err = cand ? PETREL_OK : PETREL_ERR_NOMEM;
    int64_t nc = 0;
    for (int t = 0; t < ntables && err == PETREL_OK; t++) {
        ps_table *tb = &ps->tables[t];
        err = outbox_init(&boxes[t], ps->servers, tb->spec.cols, true, 16);
        for (int64_t s = 0; s < petreli_ps_store_count(tb->oplog); s++) {
            float size = max_abs(petreli_ps_store_row(tb->oplog, s), tb->spec.cols);
            if (size > 0) cand[nc++] = (candidate){size, (uint32_t)t, s};
        }
    }
    if (err == PETREL_OK) qsort(cand, (size_t)nc, sizeof *cand, by_size_desc);
    double used = 0;
    for (int64_t i = 0; i < nc && err == PETREL_OK; i++) {
        ps_table *tb = &ps->tables[cand[i].table];
        double cost = 8.0 + 4.0 * (double)tb->spec.cols;
        if (used + cost > budget) break;
        used += cost;
        float *d = petreli_ps_store_row(tb->oplog, cand[i].slot);
        uint64_t key = petreli_ps_store_key(tb->oplog, cand[i].slot);
        err = outbox_add(&boxes[cand[i].table], petreli_ps_partition(&tb->spec, key, ps->servers),
                         key, d);
        memset(d, 0, (size_t)tb->spec.cols * sizeof *d); /* sent: the clock's flush skips it */
        ps->stats.rows_pushed_early++;
    }
    pthread_mutex_unlock(&ps->mu);
    petrel_free(cand);
    for (int t = 0; t < ntables && err == PETREL_OK; t++)
        err = outbox_send(ps, &boxes[t], PS_INC, (uint32_t)t, clock);
    for (int t = 0; t < ntables; t++) outbox_fini(&boxes[t]);
    if (err != PETREL_OK)
        PETREL_LOG_WARN("ps", "worker %d: early send failed: %s", ps->worker_index,
                        petrel_errmsg());
    return used;
}

static void *comm_main(void *arg) {
    petrel_ps *ps = arg;
    const uint64_t tick = 5000000u; /* 5 ms */
    double credit = 0;
    uint64_t last = petrel_now_ns();
    pthread_mutex_lock(&ps->mu);
    while (!ps->comm_stop) {
        (void)petreli_ps_wait(ps, petrel_now_ns() + tick);
        if (ps->comm_stop) break;
        uint64_t now = petrel_now_ns();
        credit += ps->cfg.bandwidth_bytes_per_s * (double)(now - last) * 1e-9;
        last = now;
        /* Unused budget does not pile up beyond one tick's worth times ten. */
        double cap = ps->cfg.bandwidth_bytes_per_s * 1e-9 * (double)tick * 10;
        if (credit > cap) credit = cap;
        pthread_mutex_unlock(&ps->mu);
        pthread_mutex_lock(&ps->flush_mu);
        credit -= send_early(ps, credit);
        pthread_mutex_unlock(&ps->flush_mu);
        pthread_mutex_lock(&ps->mu);
    }
    pthread_mutex_unlock(&ps->mu);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------------------- */

petrel_err petreli_ps_client_init(petrel_ps *ps) {
    pthread_mutex_init(&ps->flush_mu, NULL);
    ps->server_clock = petrel_calloc((size_t)ps->servers, sizeof *ps->server_clock);
    if (!ps->server_clock) return PETREL_ERR_NOMEM;
    for (int s = 0; s < ps->servers; s++) ps->server_clock[s] = ps->known_min;
    petrel_err err = petrel_net_on(ps->net, PS_ROWS, on_rows, ps);
    if (err == PETREL_OK) err = petrel_net_on(ps->net, PS_ADVANCE, on_advance, ps);
    if (err == PETREL_OK && ps->cfg.bandwidth_bytes_per_s > 0) {
        if (pthread_create(&ps->comm, NULL, comm_main, ps) != 0)
            return petrel_error_set(PETREL_ERR_IO, "ps: cannot start the communication thread");
        ps->comm_started = true;
    }
    return err;
}

petrel_err petreli_ps_client_table(petrel_ps *ps, uint32_t id) {
    ps_table *t = &ps->tables[id];
    petrel_ps_table_spec ls = local_spec(&t->spec);
    petrel_err err = petreli_ps_store_new(&t->cache, &ls, 0, 1, sizeof(cache_meta));
    if (err == PETREL_OK) err = petreli_ps_store_new(&t->oplog, &ls, 0, 1, sizeof(oplog_meta));
    if (err == PETREL_OK) err = petreli_ps_store_new(&t->spare, &ls, 0, 1, sizeof(oplog_meta));
    return err; /* on failure petrel_ps_table_create frees what was made (table_fini) */
}

void petreli_ps_client_finish_all(petrel_ps *ps) {
    while (ps->nthreads > 0) {
        PETREL_LOG_WARN("ps", "worker %d: a thread stopped without petrel_ps_worker_finish",
                        ps->worker_index);
        if (petrel_ps_worker_finish(ps->threads[0]) != PETREL_OK)
            PETREL_LOG_WARN("ps", "worker %d: %s", ps->worker_index, petrel_errmsg());
    }
}

void petreli_ps_client_fini(petrel_ps *ps) {
    if (ps->comm_started) {
        pthread_mutex_lock(&ps->mu);
        ps->comm_stop = true;
        pthread_cond_broadcast(&ps->cv);
        pthread_mutex_unlock(&ps->mu);
        pthread_join(ps->comm, NULL);
        ps->comm_started = false;
    }
    for (int i = 0; i < ps->nthreads; i++) petrel_free(ps->threads[i]);
    petrel_free(ps->threads);
    petrel_free(ps->server_clock);
    pthread_mutex_destroy(&ps->flush_mu);
}
