/*
 * petrel ps: a parameter server (Li et al. OSDI'14; Petuum Bösen, Ho et al. NIPS'13).
 *
 * Tables of float rows live on the server nodes of a job (ranks 1 .. S of the rank
 * rule in net.h); the worker nodes read rows through a process cache and push
 * deltas that the servers fold in with the table's update rule. A table is dense
 * (rows x cols, every row exists from the start) or sparse (u64 keys to rows of
 * cols floats, created on first touch with the table's initializer). Each key
 * lives on one server, chosen by the table's partitioner (docs/ps.md):
 *   HASH   server = mix64(key) mod S            (the default)
 *   RANGE  server = key * S / rows              (dense tables; sparse: top bits of the key)
 *
 * Clocks and consistency (per table). Every worker thread has a clock c, the
 * number of times it has called petrel_ps_clock; a process's clock is the minimum
 * over its threads, and the servers track every worker process's clock. The deltas
 * a process pushes while its clock is c belong to clock c and reach the servers at
 * the latest when its clock moves past c. A server's clock is the minimum over the
 * workers that have not finished: every delta of a clock below it has been applied.
 * With staleness bound s:
 *   - a read at clock c returns a row that includes every delta of clocks <= c - s - 1
 *     (it was served when the server's clock was >= c - s); otherwise it fetches
 *     and waits;
 *   - petrel_ps_clock blocks while the caller is more than s clocks ahead of the
 *     slowest worker.
 * BSP is s = 0 (every read sees everything up to the previous clock; clock() is a
 * barrier). ASYNC never waits: a read returns what the server has when asked
 * (a cached row is reused within the clock in which it arrived).
 * With push on (Bösen's SSPPush), a server sends each worker the rows it has read
 * whenever the server's clock advances, so that most reads hit the cache.
 *
 * Managed communication (Bösen, SoCC'15), per worker process:
 *   - bandwidth_bytes_per_s > 0: between clocks, a communication thread sends deltas
 *     early, the rows of largest magnitude first, within that budget;
 *   - significance > 0: at a clock, a row whose accumulated delta is small
 *     (max |delta| < significance * max(|row|, 1e-3)) is held back and keeps
 *     accumulating, for at most max_hold clocks; so no delta is ever lost, and the
 *     staleness bound for held deltas is s + max_hold.
 *
 * Snapshots: with snapshot_dir set, every server writes its part of every table
 * (values and update-rule state) when its clock reaches a multiple of
 * snapshot_every, to <dir>/clock-<c>/table-<t>.server-<s> atomically (temporary
 * file, fsync, rename) with a CRC-32. petrel_ps_latest_snapshot finds the newest
 * clock whose files are all present and valid; starting with resume_clock set
 * loads it.
 *
 * Threading: a petrel_ps belongs to one node. On workers, petrel_ps_worker handles
 * are per thread (one per thread, any number per process, all sharing one cache
 * and one operation log); every call on a handle comes from its thread. Servers
 * do their work on the node's receive threads. Every blocking call waits at most
 * cfg.timeout_ms and then fails with PETREL_ERR_TIMEOUT naming what it waited for;
 * a dead server or worker fails waits with PETREL_ERR_IO naming it.
 *
 *     petrel_ps *ps;  petrel_ps_start(&ps, net, &cfg);      // every node of the job
 *     petrel_ps_table_spec spec = petrel_ps_table_spec_default(PETREL_PS_DENSE, 100, 16);
 *     uint32_t t;  petrel_ps_table_create(ps, &spec, &t);  // every node, same order
 *     if (role == server) petrel_ps_serve(ps);              // until the workers finish
 *     else if (role == worker) {
 *         petrel_ps_worker *w;  petrel_ps_worker_new(ps, &w);
 *         for (...) { petrel_ps_get(w, t, row, buf); ...; petrel_ps_inc(w, t, row, delta);
 *                     petrel_ps_clock(w); }
 *         petrel_ps_wait_final(w); petrel_ps_get(w, t, row, buf);  // optional: final model
 *         petrel_ps_worker_finish(w);
 *     }
 *     petrel_ps_stop(ps);                                   // a barrier, then frees
 */
#ifndef PETREL_PS_H
#define PETREL_PS_H

#include "petrel/core.h"
#include "petrel/net.h"
#include "petrel/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Message types the parameter server uses: PETREL_MSG_PS .. PETREL_MSG_PS + 7. */
#define PETREL_MSG_PS 48

typedef enum petrel_ps_kind { PETREL_PS_DENSE = 0, PETREL_PS_SPARSE } petrel_ps_kind;
typedef enum petrel_ps_partition { PETREL_PS_HASH = 0, PETREL_PS_RANGE } petrel_ps_partition;

typedef enum petrel_ps_rule {
    PETREL_PS_SUM = 0, /* row += delta */
    PETREL_PS_SGD, /* the delta is a gradient; row -= lr g (and the others: nn.h's optimizers) */
    PETREL_PS_MOMENTUM,
    PETREL_PS_ADAGRAD,
    PETREL_PS_ADAM,
    PETREL_PS_CUSTOM, /* custom(): a user callback run on the server */
    PETREL_PS_RULE_COUNT
} petrel_ps_rule;

typedef enum petrel_ps_init {
    PETREL_PS_INIT_ZERO = 0,
    PETREL_PS_INIT_CONST,   /* every value init_a */
    PETREL_PS_INIT_UNIFORM, /* uniform in [init_a, init_b) */
    PETREL_PS_INIT_NORMAL,  /* init_a + init_b * N(0, 1) */
} petrel_ps_init;

/* A server-side update: row (cols floats) and its state (state_floats per row,
 * zeroed when the row is created) from delta; clock is the pushing worker's. */
typedef void (*petrel_ps_custom_fn)(void *ctx, uint64_t key, float *row, float *state,
                                    const float *delta, int64_t cols, int64_t clock);

/* The consistency model of a table: staleness bound, or async. */
typedef struct petrel_ps_sync {
    bool async;
    int staleness; /* s >= 0; BSP is 0 */
} petrel_ps_sync;

/* "bsp" | "ssp:N" | "async" */
PETREL_NODISCARD petrel_err petrel_ps_sync_parse(const char *text, petrel_ps_sync *out);
/* Writes "bsp", "ssp:3" or "async" into buf. */
const char *petrel_ps_sync_format(petrel_ps_sync sync, char *buf, size_t size);

/* Plain data; every node creates a table from the same spec. */
typedef struct petrel_ps_table_spec {
    petrel_ps_kind kind;
    int64_t rows; /* DENSE: row count; SPARSE: 0, or the key range for RANGE */
    int64_t cols; /* floats per row, >= 1 */
    petrel_ps_partition partition;
    petrel_ps_rule rule;
    petrel_optim_config optim; /* SGD .. ADAM: lr and the rest */
    petrel_ps_custom_fn custom;
    void *custom_ctx;
    int64_t custom_state_floats;
    petrel_ps_init init;
    float init_a, init_b;
    uint64_t init_seed; /* a row's initial values depend on (seed, key) only */
    petrel_ps_sync sync;
    bool push;          /* send workers the rows they read when the server clock advances */
    float significance; /* managed communication; 0: off */
    int max_hold;       /* clocks a small delta may be held back (>= 1 when significance > 0) */
} petrel_ps_table_spec;

/* BSP, hash partition, rule SUM, zero init, push on, no filter. */
petrel_ps_table_spec petrel_ps_table_spec_default(petrel_ps_kind kind, int64_t rows, int64_t cols);

typedef struct petrel_ps_config {
    int timeout_ms;               /* every blocking wait (default 60000) */
    double bandwidth_bytes_per_s; /* early sends between clocks; 0: none */
    const char *snapshot_dir;     /* NULL: no snapshots */
    int64_t snapshot_every;       /* clocks between snapshots (>= 1 with a dir) */
    int64_t resume_clock;         /* load snapshot_dir's snapshot of this clock; -1: none */
} petrel_ps_config;

petrel_ps_config petrel_ps_config_default(void);

typedef struct petrel_ps petrel_ps;
typedef struct petrel_ps_worker petrel_ps_worker;

/* Every node of the job calls it after petrel_net_start (and before tables are
 * created). Registers the PS message handlers on net, which the PS then borrows
 * until petrel_ps_stop. */
PETREL_NODISCARD petrel_err petrel_ps_start(petrel_ps **out, petrel_net *net,
                                            const petrel_ps_config *cfg);

/* Collective: every node calls it with the same spec, in the same order; *id
 * numbers the tables 0, 1, ... Servers make (or load, when resuming) their part. */
PETREL_NODISCARD petrel_err petrel_ps_table_create(petrel_ps *ps, const petrel_ps_table_spec *spec,
                                                   uint32_t *id);

/* This node's net; the number of worker processes; this node's worker index
 * (0 .. workers-1), or -1 on servers and rank 0. */
petrel_net *petrel_ps_net(const petrel_ps *ps);
int petrel_ps_workers(const petrel_ps *ps);
int petrel_ps_worker_index(const petrel_ps *ps);

/* The server of a table's key. */
int petrel_ps_server_of(const petrel_ps *ps, uint32_t table, uint64_t key);

/* Servers: serves until every worker has finished (or died: PETREL_ERR_IO). */
PETREL_NODISCARD petrel_err petrel_ps_serve(petrel_ps *ps);

/* Ends the PS on this node: a job barrier (so no node leaves while others still
 * need it), then frees everything. Accepts NULL. */
PETREL_NODISCARD petrel_err petrel_ps_stop(petrel_ps *ps);

/* ---- workers ---------------------------------------------------------------- */

/* A worker thread's handle, its clock starting at the process's (0, or the resumed
 * snapshot's clock). It may be made on one thread and handed to another before its
 * first use. Make every handle of a process before any of them finishes (before
 * starting the threads): when the last handle finishes, the process has finished,
 * and a handle made after that fails its calls. */
PETREL_NODISCARD petrel_err petrel_ps_worker_new(petrel_ps *ps, petrel_ps_worker **out);

/* The rows' current values (cols floats each, into out), consistent with this
 * thread's clock and the table's bound. For SUM tables a read includes this
 * process's own deltas not yet sent (read-my-writes). */
PETREL_NODISCARD petrel_err petrel_ps_get(petrel_ps_worker *w, uint32_t table, uint64_t key,
                                          float *out);
PETREL_NODISCARD petrel_err petrel_ps_get_rows(petrel_ps_worker *w, uint32_t table,
                                               const uint64_t *keys, int64_t n, float *out);

/* Starts fetching rows a later get will need; returns without waiting. */
PETREL_NODISCARD petrel_err petrel_ps_prefetch(petrel_ps_worker *w, uint32_t table,
                                               const uint64_t *keys, int64_t n);

/* Adds delta (cols floats per key) to the operation log of this clock. */
PETREL_NODISCARD petrel_err petrel_ps_inc(petrel_ps_worker *w, uint32_t table, uint64_t key,
                                          const float *delta);
PETREL_NODISCARD petrel_err petrel_ps_inc_rows(petrel_ps_worker *w, uint32_t table,
                                               const uint64_t *keys, int64_t n,
                                               const float *deltas);

/* Overwrites rows on the servers and waits until they have (initial values). */
PETREL_NODISCARD petrel_err petrel_ps_set_rows(petrel_ps_worker *w, uint32_t table,
                                               const uint64_t *keys, int64_t n,
                                               const float *values);

/* Ends this thread's clock; sends the process's operation log when the process
 * clock advances; waits while more than s clocks ahead of the slowest worker. */
PETREL_NODISCARD petrel_err petrel_ps_clock(petrel_ps_worker *w);

/* Sends everything in the operation log, held deltas too, and waits until every
 * server has applied it. */
PETREL_NODISCARD petrel_err petrel_ps_flush(petrel_ps_worker *w);

int64_t petrel_ps_worker_clock(const petrel_ps_worker *w);

/* This thread has done its clocks and wants to read the final model: its clock
 * no longer holds others back (the last thread of the process to end or finish
 * sends the whole log and tells the servers the process is done). Then waits until
 * every worker process has finished, so that every delta of the job has been
 * applied; after it, reads through w return the final model whatever the
 * consistency, and writes and clocks fail. Fails with PETREL_ERR_TIMEOUT when the
 * slowest worker makes no progress for timeout_ms. Finish w afterwards. */
PETREL_NODISCARD petrel_err petrel_ps_wait_final(petrel_ps_worker *w);

/* This thread is done: its clock no longer holds others back. The last thread of
 * a process to finish flushes the log and tells the servers. Frees w. */
PETREL_NODISCARD petrel_err petrel_ps_worker_finish(petrel_ps_worker *w);

/* ---- statistics -------------------------------------------------------------- */

#define PETREL_PS_STALENESS_BINS 17 /* 0 .. 15, and 16 or more */

/* Per worker process (all its threads). Staleness of a read at clock c of a row
 * served at server clock r is c - r (0 when r >= c): how many of the latest clocks
 * it may be missing. */
typedef struct petrel_ps_stats {
    uint64_t reads, cache_hits, fetches;
    uint64_t staleness[PETREL_PS_STALENESS_BINS];
    int64_t max_staleness;
    double wait_get_s, wait_clock_s;       /* blocked in get; in clock and wait_final */
    uint64_t bytes_sent, bytes_received;   /* PS payloads and headers */
    uint64_t rows_pushed_early, rows_held; /* managed communication */
} petrel_ps_stats;

petrel_ps_stats petrel_ps_get_stats(const petrel_ps *ps);

/* The newest clock under dir with a complete, valid snapshot of `tables` tables
 * over `servers` servers, or -1 when there is none. */
int64_t petrel_ps_latest_snapshot(const char *dir, int tables, int servers);

#ifdef __cplusplus
}
#endif
#endif
