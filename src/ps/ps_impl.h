/*
 * The parameter server's shared state and protocol. Internal to src/ps.
 *
 * Messages (type PETREL_MSG_PS + k; id is the table unless noted; every payload
 * is validated against the table before use):
 *   INC      worker -> server  clock: the process clock the deltas belong to
 *                              payload: u64 n, n u64 keys, n * cols floats
 *   GET      worker -> server  clock: the server clock the rows must reflect
 *                              (PS_ANY_CLOCK: whatever the server has)
 *                              payload: u64 n, n u64 keys
 *   ROWS     server -> worker  clock: the server clock when served (a reply or a push)
 *                              payload: u64 n, n u64 keys, n * cols floats
 *   CLOCK    worker -> server  clock: the worker process's new clock
 *                              (PS_FINISHED: it is done); id unused.
 *                              Also sent to rank 0 when finished.
 *   ADVANCE  server -> worker  clock: the server's new clock; id unused. When every
 *                              worker has finished (PS_FINISHED) it goes to all
 *                              of them: some wait for the final model.
 *   SET      worker -> server  RPC; payload as INC; overwrites rows; empty reply
 *   FLUSH    worker -> server  RPC; empty; the reply says every earlier message of
 *                              that worker has been applied (links keep order)
 */
#ifndef PETREL_PS_IMPL_H
#define PETREL_PS_IMPL_H

#include "petrel/ps.h"
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>

enum {
    PS_INC = PETREL_MSG_PS,
    PS_GET,
    PS_ROWS,
    PS_CLOCK,
    PS_ADVANCE,
    PS_SET,
    PS_FLUSH,
};

#define PS_ANY_CLOCK INT64_MIN
#define PS_FINISHED  INT64_MAX

/* A fetched row on a worker (the aux of a cache slot). */
typedef struct cache_meta {
    int64_t served;    /* server clock it reflects (when present) */
    int64_t arrived;   /* process clock when it arrived */
    int64_t requested; /* what an outstanding GET asks for (when asked): the server
                          clock, or for async tables the process clock */
    bool present, asked;
} cache_meta;

/* A row of the operation log (the aux of an oplog slot). */
typedef struct oplog_meta {
    int held; /* clocks it has been held back by the significance filter */
} oplog_meta;

/* A delta message a BSP server applies only when its clock advances. */
typedef struct deferred {
    struct deferred *next;
    uint32_t table;
    int64_t clock;
    int worker;
    int64_t n;
    petrel_msg msg; /* the INC, kept (petrel_msg_keep): keys and deltas point into it */
    const uint64_t *keys;
    const float *deltas;
} deferred;

/* A GET that waits for the server clock (tables without push). */
typedef struct waiting_get {
    struct waiting_get *next;
    int worker; /* index 0 .. W-1 */
    uint32_t table;
    int64_t need;
    int64_t n;
    petrel_msg msg; /* the GET, kept (petrel_msg_keep): keys point into it */
    const uint64_t *keys;
} waiting_get;

/* Deltas kept in the order they came, repeats and all (client.c: batched). */
typedef struct ps_batches {
    uint64_t *keys;
    float *values; /* n * cols */
    int64_t n, cap;
} ps_batches;

/* A server's key caches (store.h) for one worker and table: one per kind of key
 * list, so that neither evicts the other. Pushes of rows to subscribers go by slot
 * and need none. */
typedef struct ps_hints {
    petreli_ps_hint inc; /* the worker's INC lists (on_inc, apply_deferred) */
    petreli_ps_hint get; /* its GET lists (on_get, answer_waiting) */
} ps_hints;

typedef struct ps_table {
    petrel_ps_table_spec spec;
    petreli_ps_store *store; /* servers: their part */
    ps_hints *hints;         /* servers: W, each worker's key caches */
    petreli_ps_store *cache; /* workers: fetched rows */
    petreli_ps_store *oplog; /* workers: deltas not yet sent, one row per key */
    petreli_ps_store *spare; /* workers: the last log sent (an outbox may point into it);
                                take_oplog refills it with held rows and makes it the log */
    ps_batches batched;      /* workers: large pushes not yet sent, appended */
    ps_batches batched_sent; /* workers: the last ones sent (an outbox may point here) */
} ps_table;

#define PS_MAX_TABLES 64

struct petrel_ps {
    petrel_net *net;
    petrel_ps_config cfg;
    petrel_role role;
    int rank, servers, workers;
    int server_index; /* rank - 1 on servers */
    int worker_index; /* rank - 1 - servers on workers */

    pthread_mutex_t mu; /* everything below */
    pthread_cond_t cv;
    ps_table tables[PS_MAX_TABLES];
    int ntables;

    /* servers */
    int64_t *worker_clock;   /* W; PS_FINISHED once done */
    int64_t clock;           /* min over worker_clock */
    int64_t last_clock;      /* the largest clock a worker reported before finishing */
    deferred *deferred_head; /* in (clock, worker) order */
    waiting_get *waiting;
    uint64_t last_message_ns;
    int finished;          /* workers done (servers and rank 0) */
    int64_t last_snapshot; /* clock of the latest snapshot written */
    petrel_err failure;    /* first error a handler met, reported by serve */
    float *rows_buf;       /* the values of the ROWS being sent, reused (server.c) */
    size_t rows_cap;       /* floats */
    uint64_t *rows_keys;   /* their keys, when pushed by slot (server.c), reused */
    size_t rows_keys_cap;  /* keys */

    /* workers */
    pthread_mutex_t flush_mu; /* taken before mu by whoever sends deltas (client.c) */
    int64_t *server_clock;    /* S: the latest ADVANCE from each server */
    int64_t known_min;        /* min over server_clock */
    int64_t process_clock;    /* min over the threads' clocks */
    petrel_ps_worker **threads;
    int nthreads, threads_cap;
    bool done; /* every handle has ended or finished: no new ones */
    bool comm_stop;
    pthread_t comm;
    bool comm_started;
    petrel_ps_stats stats;
};

struct petrel_ps_worker {
    petrel_ps *ps;
    int64_t clock;
    bool ended; /* petrel_ps_wait_final: out of the clocks, reads the final model */
};

/* ps.c */
petrel_err petreli_ps_send(petrel_ps *ps, int dst, uint8_t type, uint32_t table, int64_t clock,
                           const uint64_t *keys, int64_t n, const float *values, int64_t cols);
int petreli_ps_server_rank(const petrel_ps *ps, int server_index);
/* Parses an INC/ROWS/SET payload against table: n, keys, values (NULL when cols = 0). */
bool petreli_ps_parse_rows(const petrel_msg *m, int64_t cols, int64_t *n, const uint64_t **keys,
                           const float **values);
/* Waits on ps->cv (held) until deadline; false once it has passed. */
bool petreli_ps_wait(petrel_ps *ps, uint64_t deadline_ns);
/* Frees everything of one table, whichever side made it, and zeroes it: a table
 * whose creation failed half way, and every table at the end. Accepts a zeroed one. */
void petreli_ps_table_fini(petrel_ps *ps, ps_table *t);

/* server.c */
petrel_err petreli_ps_server_init(petrel_ps *ps);
void petreli_ps_server_fini(petrel_ps *ps);
/* Makes this server's part of table id (its spec set). On failure what was made
 * stays, for petreli_ps_table_fini. */
petrel_err petreli_ps_server_table(petrel_ps *ps, uint32_t id);

/* client.c */
petrel_err petreli_ps_client_init(petrel_ps *ps);
/* Finishes the threads that did not (petrel_ps_stop). */
void petreli_ps_client_finish_all(petrel_ps *ps);
void petreli_ps_client_fini(petrel_ps *ps);
/* Makes this worker's copies of table id (its spec set); failure as server_table. */
petrel_err petreli_ps_client_table(petrel_ps *ps, uint32_t id);

#endif
