/*
 * One server's part of one table: the rows of the keys the partitioner gives this
 * server, each with its update-rule state and a few bytes the server keeps beside
 * it (aux: which workers read the row). Internal to src/ps.
 *
 * Rows live in slots numbered 0, 1, ... in creation order; a slot's number never
 * changes, but pointers into the store are valid only until the next call that may
 * create a row. A dense store makes all of its rows at creation, in increasing key
 * order; a sparse store makes a row the first time a key is touched, with values
 * from the table's initializer, which depend only on (init_seed, key).
 *
 * Threading: none inside; the server holds a lock around every call.
 */
#ifndef PETREL_PS_STORE_H
#define PETREL_PS_STORE_H

#include "petrel/ps.h"

typedef struct petreli_ps_store petreli_ps_store;

/* splitmix64's output function, the HASH partitioner's mixer (formulas at the top
 * of store.c). */
uint64_t petreli_ps_mix64(uint64_t x);

/* The server index (0 .. servers-1) of key under spec's partitioner. */
int petreli_ps_partition(const petrel_ps_table_spec *spec, uint64_t key, int servers);

/* Floats of update-rule state per row for spec's rule (0 for SUM and SGD). */
int64_t petreli_ps_state_floats(const petrel_ps_table_spec *spec);

/* A store for server `server` of `servers`; aux_bytes of zeroed space per slot. */
PETREL_NODISCARD petrel_err petreli_ps_store_new(petreli_ps_store **out,
                                                 const petrel_ps_table_spec *spec, int server,
                                                 int servers, size_t aux_bytes);
void petreli_ps_store_free(petreli_ps_store *s);

int64_t petreli_ps_store_count(const petreli_ps_store *s);

/* The slot of key, making the row when create is set and the table is sparse;
 * -1 when there is none (or PETREL_ERR_NOMEM was set while making it). A dense key
 * outside the table or owned by another server is -1. */
int64_t petreli_ps_store_slot(petreli_ps_store *s, uint64_t key, bool create);

/* Room for `more` rows beyond those held: until they are made, a call that makes
 * rows (apply, gather, set, slot) allocates nothing and cannot fail for memory.
 * Nothing to do for a dense store, whose rows all exist. PETREL_ERR_NOMEM when the
 * room cannot be had; the rows are unchanged either way. */
PETREL_NODISCARD petrel_err petreli_ps_store_reserve(petreli_ps_store *s, int64_t more);

/* Sparse stores only: removes every row, keeping the memory of the arrays and the
 * index for the rows to come (an operation log refilled every clock makes no
 * allocation and takes no page fault). Slots restart at 0. */
void petreli_ps_store_clear(petreli_ps_store *s);

uint64_t petreli_ps_store_key(const petreli_ps_store *s, int64_t slot);
/* Every slot's key, in slot order (count of them); the rows likewise follow one
 * another from petreli_ps_store_row(s, 0). */
const uint64_t *petreli_ps_store_keys(const petreli_ps_store *s);
float *petreli_ps_store_row(petreli_ps_store *s, int64_t slot);
void *petreli_ps_store_aux(petreli_ps_store *s, int64_t slot);
/* The slot's update-rule state (petreli_ps_state_floats floats; NULL when none),
 * and, for ADAM, how many updates the row has had (0 for the other rules). */
float *petreli_ps_store_state(petreli_ps_store *s, int64_t slot);
int64_t petreli_ps_store_steps(const petreli_ps_store *s, int64_t slot);

/* Key caching (after Li et al., OSDI'14, section 3.5): the slots a store found for
 * one sender's last key list, in the list's order (slot + 1; 0: none). A server
 * keeps two per worker and table, one for the worker's pushes (INC) and one for its
 * reads (GET): a push and a read list of one worker differ, and one cache for both
 * would have each evict the other. When a worker sends the same keys in the same
 * order again (a worker with a fixed working set does, every clock), apply and
 * gather take each key's slot from here after checking that the slot still holds
 * that key, and skip the hash index, whose probes miss the cache at random. The
 * check is per key, so a changed list can only cost time, never a wrong row:
 * a run of CHUNK keys with one mismatch goes through the index. */
typedef struct petreli_ps_hint {
    uint32_t *slot1;
    int64_t n, cap; /* entries valid, allocated */
    int64_t hits;   /* keys found through it, ever */
} petreli_ps_hint;

void petreli_ps_hint_free(petreli_ps_hint *h);

/* Applies the table's rule to n rows: keys[i] with deltas + i * cols, from a worker
 * at clock. hint (NULL for none) is the sender's key cache, used and updated. Sparse rows are made
 * on first touch. PETREL_ERR_INVALID names the first key that is not this server's (the others are
 * still applied). PETREL_ERR_NOMEM when a row cannot be made: the keys before some index have been
 * applied, the others not, and the store is consistent. A key repeated in one call is applied once
 * per occurrence, in order. */
PETREL_NODISCARD petrel_err petreli_ps_store_apply(petreli_ps_store *s, const uint64_t *keys,
                                                   int64_t n, const float *deltas, int64_t clock,
                                                   petreli_ps_hint *hint);

/* Copies n rows into out (cols floats each); slots (may be NULL) receives each
 * row's slot (-1, and zeros in out, for another server's key). Sparse rows are
 * made on first touch. hint and errors as apply. */
PETREL_NODISCARD petrel_err petreli_ps_store_gather(petreli_ps_store *s, const uint64_t *keys,
                                                    int64_t n, float *out, int64_t *slots,
                                                    petreli_ps_hint *hint);

/* Overwrites n rows' values (their rule state is kept), making missing sparse
 * rows. Errors as apply. */
PETREL_NODISCARD petrel_err petreli_ps_store_set(petreli_ps_store *s, const uint64_t *keys,
                                                 int64_t n, const float *values);

/* Writes every row (key, values, rule state) to path atomically: a temporary file
 * in the same directory, fsync, rename, fsync of the directory. The format, with
 * its CRC-32, is documented at the top of store.c and in docs/formats.md. */
PETREL_NODISCARD petrel_err petreli_ps_store_save(const petreli_ps_store *s, const char *path);

/* Replaces the contents with path's. A truncated, corrupted or foreign file (other
 * cols, rule or kind) is PETREL_ERR_FORMAT naming the file and what was wrong, and
 * leaves s unchanged. */
PETREL_NODISCARD petrel_err petreli_ps_store_load(petreli_ps_store *s, const char *path);

/* True when path is a complete, valid store file (checks the CRC). */
bool petreli_ps_store_file_ok(const char *path);

#endif
