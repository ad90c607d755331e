/*
 * The parameter server's common part: configuration, the table registry, the
 * message helpers both sides use, start and stop. The server side is server.c,
 * the worker side client.c; the protocol is described in ps_impl.h.
 */
#include "ps_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>

petrel_ps_config petrel_ps_config_default(void) {
    return (petrel_ps_config){.timeout_ms = 60000, .snapshot_every = 1, .resume_clock = -1};
}

petrel_ps_table_spec petrel_ps_table_spec_default(petrel_ps_kind kind, int64_t rows, int64_t cols) {
    return (petrel_ps_table_spec){
        .kind = kind,
        .rows = rows,
        .cols = cols,
        .partition = PETREL_PS_HASH,
        .rule = PETREL_PS_SUM,
        .optim = petrel_optim_config_default(PETREL_OPTIM_SGD, 0.1f),
        .init = PETREL_PS_INIT_ZERO,
        .push = true,
    };
}

petrel_err petrel_ps_sync_parse(const char *text, petrel_ps_sync *out) {
    if (!text) return petrel_error_set(PETREL_ERR_INVALID, "no consistency model given");
    if (strcmp(text, "bsp") == 0) {
        *out = (petrel_ps_sync){.async = false, .staleness = 0};
        return PETREL_OK;
    }
    if (strcmp(text, "async") == 0) {
        *out = (petrel_ps_sync){.async = true, .staleness = 0};
        return PETREL_OK;
    }
    if (strncmp(text, "ssp:", 4) == 0) {
        char *end = NULL;
        long s = strtol(text + 4, &end, 10);
        if (end != text + 4 && *end == '\0' && s >= 0 && s <= 1000000) {
            *out = (petrel_ps_sync){.async = false, .staleness = (int)s};
            return PETREL_OK;
        }
    }
    return petrel_error_set(PETREL_ERR_INVALID,
                            "consistency '%s': expected bsp, ssp:N (N >= 0) or async", text);
}

const char *petrel_ps_sync_format(petrel_ps_sync sync, char *buf, size_t size) {
    if (sync.async)
        snprintf(buf, size, "async");
    else if (sync.staleness == 0)
        snprintf(buf, size, "bsp");
    else
        snprintf(buf, size, "ssp:%d", sync.staleness);
    return buf;
}

/* ---- messages ------------------------------------------------------------------ */

int petreli_ps_server_rank(const petrel_ps *ps, int server_index) {
    (void)ps;
    return 1 + server_index;
}

petrel_err petreli_ps_send(petrel_ps *ps, int dst, uint8_t type, uint32_t table, int64_t clock,
                           const uint64_t *keys, int64_t n, const float *values, int64_t cols) {
    uint64_t count = (uint64_t)n;
    struct iovec iov[3] = {{&count, sizeof count},
                           {(void *)keys, (size_t)n * sizeof *keys},
                           {(void *)values, values ? (size_t)n * (size_t)cols * sizeof(float) : 0}};
    int iovcnt = keys ? (values ? 3 : 2) : 0;
    size_t bytes = iov[0].iov_len + iov[1].iov_len + iov[2].iov_len;
    petrel_err err =
        petrel_net_sendv(ps->net, dst, type, table, clock, iov, iovcnt, ps->cfg.timeout_ms);
    if (err == PETREL_OK && ps->role == PETREL_ROLE_WORKER) {
        pthread_mutex_lock(&ps->mu);
        ps->stats.bytes_sent += (keys ? bytes : 0) + 48; /* payload and the wire header */
        pthread_mutex_unlock(&ps->mu);
    }
    return err;
}

bool petreli_ps_parse_rows(const petrel_msg *m, int64_t cols, int64_t *n, const uint64_t **keys,
                           const float **values) {
    if (m->len < sizeof(uint64_t)) return false;
    uint64_t count;
    memcpy(&count, m->data, sizeof count);
    size_t per = sizeof(uint64_t) + (size_t)cols * sizeof(float);
    if (count > (m->len - sizeof count) / (per ? per : 1) || sizeof count + count * per != m->len)
        return false;
    *n = (int64_t)count;
    *keys = (const uint64_t *)((const char *)m->data + sizeof count);
    if (values) *values = cols ? (const float *)(*keys + count) : NULL;
    return true;
}

bool petreli_ps_wait(petrel_ps *ps, uint64_t deadline_ns) {
    uint64_t now = petrel_now_ns();
    if (now >= deadline_ns) return false;
    /* Short slices: a dead peer is noticed by the caller's next check. */
    uint64_t until = deadline_ns - now > 50000000u ? now + 50000000u : deadline_ns;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (until - now);
    ts.tv_sec = (time_t)(abs_ns / 1000000000u);
    ts.tv_nsec = (long)(abs_ns % 1000000000u);
    pthread_cond_timedwait(&ps->cv, &ps->mu, &ts);
    return true;
}

/* ---- start, tables, stop ----------------------------------------------------------- */

static void ps_free(petrel_ps *ps);

petrel_err petrel_ps_start(petrel_ps **out, petrel_net *net, const petrel_ps_config *cfg) {
    *out = NULL;
    if (cfg->timeout_ms <= 0)
        return petrel_error_set(PETREL_ERR_INVALID, "ps: timeout_ms must be > 0");
    if (cfg->snapshot_dir && cfg->snapshot_every < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "ps: snapshot_every must be >= 1");
    if (cfg->bandwidth_bytes_per_s < 0)
        return petrel_error_set(PETREL_ERR_INVALID, "ps: the bandwidth budget must be >= 0");
    int size = petrel_net_size(net), servers = petrel_net_servers(net);
    if (servers < 1 || size - 1 - servers < 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps: a job needs at least one server and one worker (it has %d "
                                "servers and %d workers)",
                                servers, size - 1 - servers);
    petrel_ps *ps = petrel_calloc(1, sizeof *ps);
    if (!ps) return PETREL_ERR_NOMEM;
    ps->net = net;
    ps->cfg = *cfg;
    ps->rank = petrel_net_rank(net);
    ps->role = petrel_net_role(net);
    ps->servers = servers;
    ps->workers = size - 1 - servers;
    ps->server_index = ps->rank - 1;
    ps->worker_index = ps->rank - 1 - servers;
    int64_t start = cfg->resume_clock > 0 ? cfg->resume_clock : 0;
    ps->clock = start;
    ps->known_min = start;
    ps->process_clock = start;
    ps->last_clock = start;
    ps->last_snapshot = start;
    ps->last_message_ns = petrel_now_ns();
    pthread_mutex_init(&ps->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ps->cv, &ca);
    pthread_condattr_destroy(&ca);
    petrel_err err = PETREL_OK;
    if (ps->role == PETREL_ROLE_WORKER)
        err = petreli_ps_client_init(ps);
    else
        err = petreli_ps_server_init(ps); /* rank 0 counts finished workers the same way */
    if (err != PETREL_OK) {
        ps_free(ps);
        return err;
    }
    *out = ps;
    return PETREL_OK;
}

static petrel_err check_spec(const petrel_ps_table_spec *s) {
    if (s->cols < 1 || s->cols > (1 << 24))
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: cols %lld out of range 1..2^24",
                                (long long)s->cols);
    if (s->kind == PETREL_PS_DENSE && s->rows < 1)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: a dense table needs rows >= 1");
    if (s->rows < 0) return petrel_error_set(PETREL_ERR_INVALID, "ps table: rows must be >= 0");
    if (s->rule < 0 || s->rule >= PETREL_PS_RULE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: unknown update rule %d", s->rule);
    if (s->rule == PETREL_PS_CUSTOM && !s->custom)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: a CUSTOM rule needs a callback");
    if (!s->sync.async && s->sync.staleness < 0)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: staleness must be >= 0");
    if (s->significance < 0 || (s->significance > 0 && s->max_hold < 1))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps table: a significance filter needs max_hold >= 1");
    return PETREL_OK;
}

petrel_err petrel_ps_table_create(petrel_ps *ps, const petrel_ps_table_spec *spec, uint32_t *id) {
    petrel_err err = check_spec(spec);
    if (err != PETREL_OK) return err;
    pthread_mutex_lock(&ps->mu);
    if (ps->ntables == PS_MAX_TABLES) {
        pthread_mutex_unlock(&ps->mu);
        return petrel_error_set(PETREL_ERR_INVALID, "ps: at most %d tables", PS_MAX_TABLES);
    }
    uint32_t t = (uint32_t)ps->ntables;
    ps->tables[t].spec = *spec;
    pthread_mutex_unlock(&ps->mu);
    if (ps->role == PETREL_ROLE_SERVER)
        err = petreli_ps_server_table(ps, t);
    else if (ps->role == PETREL_ROLE_WORKER)
        err = petreli_ps_client_table(ps, t);
    if (err != PETREL_OK) { /* not counted: ps_free would not see it, and a retry reuses it */
        petreli_ps_table_fini(ps, &ps->tables[t]);
        return err;
    }
    pthread_mutex_lock(&ps->mu);
    ps->ntables++; /* only now do handlers accept messages for it */
    pthread_mutex_unlock(&ps->mu);
    *id = t;
    /* No worker may use the table before every server has made it. */
    return petrel_net_barrier(ps->net, ps->cfg.timeout_ms);
}

int petrel_ps_server_of(const petrel_ps *ps, uint32_t table, uint64_t key) {
    return petreli_ps_partition(&ps->tables[table].spec, key, ps->servers);
}

petrel_ps_stats petrel_ps_get_stats(const petrel_ps *ps) {
    petrel_ps *mut = (petrel_ps *)ps;
    pthread_mutex_lock(&mut->mu);
    petrel_ps_stats s = ps->stats;
    pthread_mutex_unlock(&mut->mu);
    return s;
}

void petreli_ps_table_fini(petrel_ps *ps, ps_table *t) {
    petreli_ps_store_free(t->store);
    for (int w = 0; t->hints && w < ps->workers; w++) {
        petreli_ps_hint_free(&t->hints[w].inc);
        petreli_ps_hint_free(&t->hints[w].get);
    }
    petrel_free(t->hints);
    petreli_ps_store_free(t->cache);
    petreli_ps_store_free(t->oplog);
    petreli_ps_store_free(t->spare);
    ps_batches *b[2] = {&t->batched, &t->batched_sent};
    for (int k = 0; k < 2; k++) {
        petrel_free(b[k]->keys);
        petrel_free(b[k]->values);
    }
    *t = (ps_table){0};
}

static void ps_free(petrel_ps *ps) {
    /* A peer's late message (a reply to a prefetch, a last ADVANCE) must not reach
     * a handler whose state is being freed: it goes to the mailbox instead. */
    for (int type = PS_INC; type <= PS_FLUSH; type++)
        if (petrel_net_on(ps->net, (uint8_t)type, NULL, NULL) != PETREL_OK)
            PETREL_LOG_WARN("ps", "cannot remove the handler of message type %d", type);
    if (ps->role == PETREL_ROLE_WORKER)
        petreli_ps_client_fini(ps);
    else
        petreli_ps_server_fini(ps);
    for (int t = 0; t < ps->ntables; t++) petreli_ps_table_fini(ps, &ps->tables[t]);
    pthread_mutex_destroy(&ps->mu);
    pthread_cond_destroy(&ps->cv);
    petrel_free(ps);
}

petrel_err petrel_ps_stop(petrel_ps *ps) {
    if (!ps) return PETREL_OK;
    /* A worker's threads that never finished would hold the servers up. */
    if (ps->role == PETREL_ROLE_WORKER) petreli_ps_client_finish_all(ps);
    /* Nobody leaves while a peer may still need it. */
    petrel_err err = petrel_net_barrier(ps->net, ps->cfg.timeout_ms);
    ps_free(ps);
    return err;
}

/* ---- snapshots ---------------------------------------------------------------------- */

int64_t petrel_ps_latest_snapshot(const char *dir, int tables, int servers) {
    /* Snapshots are directories clock-<c>; readdir's order is arbitrary. */
    char path[4096];
    int64_t best = -1;
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long c;
        char tail;
        if (sscanf(e->d_name, "clock-%lld%c", &c, &tail) != 1 || c <= best) continue;
        bool complete = true;
        for (int t = 0; t < tables && complete; t++)
            for (int s = 0; s < servers && complete; s++) {
                snprintf(path, sizeof path, "%s/clock-%lld/table-%d.server-%d", dir, c, t, s);
                complete = petreli_ps_store_file_ok(path);
            }
        if (complete) best = c;
    }
    closedir(d);
    return best;
}

petrel_net *petrel_ps_net(const petrel_ps *ps) {
    return ps->net;
}

int petrel_ps_workers(const petrel_ps *ps) {
    return ps->workers;
}

int petrel_ps_worker_index(const petrel_ps *ps) {
    return ps->role == PETREL_ROLE_WORKER ? ps->worker_index : -1;
}
