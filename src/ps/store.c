/*
 * One server's part of one parameter-server table (store.h): the partitioner, the
 * rows with their update-rule state, the update rules, and snapshot files.
 *
 * Partitioners (S servers; key a u64; integer division floors):
 *   mix64(x)  splitmix64's output function (Steele, Lea and Flood, OOPSLA'14; the
 *             constants of Stafford's "Mix13"), a bijection on u64:
 *                 x ^= x >> 30;  x *= 0xbf58476d1ce4e5b9;
 *                 x ^= x >> 27;  x *= 0x94d049bb133111eb;  x ^= x >> 31
 *   HASH      server = mix64(key) mod S                                (rows unused)
 *   RANGE     rows > 0 (dense, or sparse with a key range):
 *                 server = min(key, rows - 1) * S / rows               (128-bit product)
 *             server s owns the keys [ceil(s rows / S), ceil((s+1) rows / S)):
 *             contiguous blocks whose sizes differ by at most one; a sparse key
 *             beyond the range goes to the last server, a dense one to nobody;
 *             rows == 0 (sparse):
 *                 server = key * S / 2^64                              (top bits)
 *             so server s owns [ceil(s 2^64 / S), ceil((s+1) 2^64 / S)).
 *
 * Initial values. A row made for key (every dense row at creation, a sparse one
 * on first touch) gets, for init UNIFORM or NORMAL, the first draws of petrel_rng
 * seeded with mix64(key ^ mix64(init_seed + 0x9e3779b97f4a7c15)): value j is
 * a + (b - a) u_j or a + b n_j. They depend on (init_seed, key) only, not on the
 * number of servers or the order in which keys arrive. Rule state starts at zero.
 *
 * Layout. Slots 0 .. count-1 in creation order; slot i's data is keys[i],
 * values[i*C .. i*C+C), state[i*F .. i*F+F), steps[i] (ADAM only: the row's
 * update count for bias correction) and aux[i*A .. i*A+A), each array one
 * contiguous block that doubles as rows are made. Finding a key's slot:
 *   SPAN   dense, RANGE or one server: slot = key - lo;
 *   ARRAY  dense, HASH: a u32 per key of the table (slot + 1; 0: not ours),
 *          chosen when it is smaller than a hash index would be;
 *   HASH   sparse (or a dense table too large for ARRAY): open addressing over
 *          2^k groups of 5 entries (u64 key, u32 slot + 1), one cache line each;
 *          a key probes groups linearly from its home group, the top k bits of
 *          mix64(key), and the index stays at most 0.7 full (at 10M keys: 4M
 *          groups, 256 MiB, 98% of keys in their home group). The top bits are
 *          independent of mix64(key) mod S, so one server's keys still fill every
 *          group. At most 2^32 - 2 rows per store.
 *
 * Hot path (apply, gather, set). Keys go in chunks of CHUNK. A first pass looks
 * for each key in its home group only, prefetching the group AHEAD keys ahead
 * and each found row, and without branching on what it loads: a branch that
 * waits on a cache miss and then mispredicts would discard the misses issued
 * after it, and memory parallelism is what this loop lives on. A second pass
 * takes the keys it did not find (further along, new, or another server's),
 * after making room for the new ones at once so that making a row is a few
 * stores; then the chunk's rows, by now in cache, are updated. A key found in
 * the index is this server's by construction; only a missing key pays for the
 * partitioner. Big arrays ask for transparent huge pages (TLB misses), and a
 * push whose first chunk makes rows sizes the arrays for the whole push. With a
 * sender's key cache (store.h), a chunk whose keys all still sit in the slots the
 * cache names skips both passes.
 *
 * Snapshot file (petreli_ps_store_save; docs/formats.md). Little-endian:
 *
 *   offset  width   field
 *   0       8       magic "PTRLPST1"
 *   8       4       format version, u32 = 1
 *   12      4       kind, u32 (petrel_ps_kind: 0 dense, 1 sparse)
 *   16      4       rule, u32 (petrel_ps_rule: 0 sum, 1 sgd, 2 momentum, 3 adagrad,
 *                   4 adam, 5 custom)
 *   20      4       partition, u32 (0 hash, 1 range)
 *   24      4       server s, u32
 *   28      4       servers S, u32
 *   32      8       table rows, i64 (the spec's: dense row count, sparse key range)
 *   40      8       cols C, i64 (1 .. 2^28)
 *   48      8       state floats per row F, i64 (0 .. 2^28)
 *   56      4       step bytes per row T, u32 (8 for adam, else 0)
 *   60      4       reserved, u32 = 0
 *   64      8       row count N, u64
 *   72      N * R   rows in slot order, R = 8 + 4C + 4F + T bytes each:
 *                   key u64, C float32 values, F float32 state, [T = 8: step i64]
 *   72+N*R  4       CRC-32 (zlib polynomial) of every byte before it, u32
 *
 * A load checks the length against the header, the CRC, that the header
 * matches this store (kind, rule, cols, state, partition, server, servers,
 * rows), and every key (this server's, no repeats; a dense file lists exactly
 * this server's keys in increasing order), building the new contents aside, so
 * that a rejected file leaves the store as it was. Slots keep their numbers.
 */
#include "ps/store.h"

#include "core/core_impl.h"
#include "nn/nn_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

__extension__ typedef unsigned __int128 u128;

#define CHUNK 256 /* keys resolved before their rows are updated */
#define AHEAD 64  /* keys between an index prefetch and its use */

#define MAGIC        "PTRLPST1"
#define VERSION      1u
#define HEADER_BYTES 72u
#define MAX_COLS     ((int64_t)1 << 28)
#define IO_BUF       ((size_t)1 << 20)

/* Five entries of the hash index in one cache line. Entries fill in order and are
 * never removed (only all at once), so a group with an empty entry ends every
 * probe that reaches it. An entry's number is group * 8 + index. */
#define GROUP 5
typedef struct group {
    uint64_t key[GROUP];
    uint32_t slot1[GROUP]; /* slot + 1; 0: empty */
    uint32_t unused;
} group;

_Static_assert(sizeof(group) == 64, "a group is one cache line");

/* Rows one hash-indexed store can hold (slot + 1 fits a u32). */
#define MAX_HASH_ROWS ((int64_t)UINT32_MAX - 1)

typedef enum index_kind { INDEX_SPAN, INDEX_ARRAY, INDEX_HASH } index_kind;

struct petreli_ps_store {
    petrel_ps_table_spec spec;
    petrel_optim_config optim; /* spec.optim with the optimizer kind of spec.rule */
    int server, servers;
    int64_t cols, state_floats; /* C, F */
    bool has_steps;             /* ADAM */
    size_t aux_bytes;           /* A */

    index_kind index;
    uint64_t lo, hi; /* SPAN: keys [lo, hi) */
    uint32_t *dmap;  /* ARRAY: spec.rows entries */
    group *groups;   /* HASH: gmask + 1 groups */
    uint64_t gmask;
    int gshift; /* 64 - log2(groups) */

    int64_t count, cap; /* slots in use, allocated */
    uint64_t *keys;
    float *values, *state;
    int64_t *steps;
    unsigned char *aux;
};

/* ---- partitioner ----------------------------------------------------------------- */

uint64_t petreli_ps_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int petreli_ps_partition(const petrel_ps_table_spec *spec, uint64_t key, int servers) {
    PETREL_ASSERT(servers >= 1, "a table needs at least one server");
    if (servers == 1) return 0;
    if (spec->partition == PETREL_PS_RANGE) {
        if (spec->rows > 0) {
            uint64_t rows = (uint64_t)spec->rows;
            uint64_t k = key < rows ? key : rows - 1;
            return (int)((u128)k * (unsigned)servers / rows);
        }
        return (int)(((u128)key * (unsigned)servers) >> 64);
    }
    return (int)(petreli_ps_mix64(key) % (unsigned)servers);
}

/* The first key of server s under RANGE with rows > 0: ceil(s rows / S). */
static uint64_t range_start(uint64_t rows, int s, int servers) {
    return (uint64_t)(((u128)rows * (unsigned)s + (unsigned)servers - 1) / (unsigned)servers);
}

/* ---- rules ------------------------------------------------------------------------- */

static bool rule_is_optim(petrel_ps_rule rule) {
    return rule >= PETREL_PS_SGD && rule <= PETREL_PS_ADAM;
}

static petrel_optim_kind optim_kind(petrel_ps_rule rule) {
    switch (rule) {
    case PETREL_PS_MOMENTUM:
        return PETREL_OPTIM_MOMENTUM;
    case PETREL_PS_ADAGRAD:
        return PETREL_OPTIM_ADAGRAD;
    case PETREL_PS_ADAM:
        return PETREL_OPTIM_ADAM;
    default:
        return PETREL_OPTIM_SGD;
    }
}

int64_t petreli_ps_state_floats(const petrel_ps_table_spec *spec) {
    if (spec->rule == PETREL_PS_CUSTOM) return spec->custom_state_floats;
    if (!rule_is_optim(spec->rule)) return 0;
    return petreli_optim_state_per_param(optim_kind(spec->rule)) * spec->cols;
}

static petrel_err check_spec(const petrel_ps_table_spec *sp, int server, int servers) {
    if (servers < 1 || server < 0 || server >= servers)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: server %d of %d", server, servers);
    if (sp->kind != PETREL_PS_DENSE && sp->kind != PETREL_PS_SPARSE)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: unknown kind %d", (int)sp->kind);
    if (sp->cols < 1 || sp->cols > MAX_COLS)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: cols %lld, expected 1 .. %lld",
                                (long long)sp->cols, (long long)MAX_COLS);
    if (sp->kind == PETREL_PS_DENSE ? sp->rows < 1 : sp->rows < 0)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps table: rows %lld (a dense table needs >= 1, sparse >= 0)",
                                (long long)sp->rows);
    if (sp->partition != PETREL_PS_HASH && sp->partition != PETREL_PS_RANGE)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: unknown partition %d",
                                (int)sp->partition);
    if ((unsigned)sp->rule >= PETREL_PS_RULE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: unknown rule %d", (int)sp->rule);
    if (rule_is_optim(sp->rule) && !(sp->optim.lr > 0.0f))
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: rule %s needs optim.lr > 0",
                                petrel_optim_name(optim_kind(sp->rule)));
    if (sp->rule == PETREL_PS_CUSTOM &&
        (!sp->custom || sp->custom_state_floats < 0 || sp->custom_state_floats > MAX_COLS))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps table: rule custom needs a callback and 0 .. %lld state floats",
                                (long long)MAX_COLS);
    if ((unsigned)sp->init > PETREL_PS_INIT_NORMAL)
        return petrel_error_set(PETREL_ERR_INVALID, "ps table: unknown init %d", (int)sp->init);
    return PETREL_OK;
}

/* ---- slots ------------------------------------------------------------------------- */

static void *alloc_array(int64_t n, size_t size) {
    if (size && (uint64_t)n > SIZE_MAX / 2 / size) {
        petrel_error_set(PETREL_ERR_NOMEM, "ps table: %lld rows of %zu bytes overflow",
                         (long long)n, size);
        return NULL;
    }
    size_t bytes = (size_t)n * size;
    return petrel_malloc(bytes ? bytes : 1); /* huge pages when large (alloc.c) */
}

/* Reallocates every slot array to cap slots; all or nothing. */
static petrel_err set_capacity(petreli_ps_store *s, int64_t cap) {
    uint64_t *keys = alloc_array(cap, sizeof *keys);
    float *values = alloc_array(cap, (size_t)s->cols * sizeof(float));
    float *state =
        s->state_floats ? alloc_array(cap, (size_t)s->state_floats * sizeof(float)) : NULL;
    int64_t *steps = s->has_steps ? alloc_array(cap, sizeof *steps) : NULL;
    unsigned char *aux = s->aux_bytes ? alloc_array(cap, s->aux_bytes) : NULL;
    if (!keys || !values || (s->state_floats && !state) || (s->has_steps && !steps) ||
        (s->aux_bytes && !aux)) {
        petrel_free(keys);
        petrel_free(values);
        petrel_free(state);
        petrel_free(steps);
        petrel_free(aux);
        return PETREL_ERR_NOMEM;
    }
    size_t n = (size_t)s->count;
    if (n) {
        memcpy(keys, s->keys, n * sizeof *keys);
        memcpy(values, s->values, n * (size_t)s->cols * sizeof(float));
        if (state) memcpy(state, s->state, n * (size_t)s->state_floats * sizeof(float));
        if (steps) memcpy(steps, s->steps, n * sizeof *steps);
        if (aux) memcpy(aux, s->aux, n * s->aux_bytes);
    }
    petrel_free(s->keys);
    petrel_free(s->values);
    petrel_free(s->state);
    petrel_free(s->steps);
    petrel_free(s->aux);
    s->keys = keys;
    s->values = values;
    s->state = state;
    s->steps = steps;
    s->aux = aux;
    s->cap = cap;
    return PETREL_OK;
}

static petrel_err reserve_slots(petreli_ps_store *s, int64_t want) {
    if (want <= s->cap) return PETREL_OK;
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < want) cap *= 2;
    return set_capacity(s, cap);
}

/* The seed of key's initial values: (init_seed, key) and nothing else. */
static uint64_t row_seed(const petrel_ps_table_spec *sp, uint64_t key) {
    return petreli_ps_mix64(key ^ petreli_ps_mix64(sp->init_seed + 0x9e3779b97f4a7c15ull));
}

static void init_values(const petreli_ps_store *s, uint64_t key, float *row) {
    const petrel_ps_table_spec *sp = &s->spec;
    const int64_t C = s->cols;
    const float a = sp->init_a, b = sp->init_b;
    petrel_rng rng;
    switch (sp->init) {
    case PETREL_PS_INIT_ZERO:
        memset(row, 0, (size_t)C * sizeof(float));
        return;
    case PETREL_PS_INIT_CONST:
        for (int64_t j = 0; j < C; j++) row[j] = a;
        return;
    case PETREL_PS_INIT_UNIFORM:
        petrel_rng_seed(&rng, row_seed(sp, key));
        for (int64_t j = 0; j < C; j++) row[j] = a + (b - a) * petrel_rng_uniform(&rng);
        return;
    case PETREL_PS_INIT_NORMAL:
        petrel_rng_seed(&rng, row_seed(sp, key));
        for (int64_t j = 0; j < C; j++) row[j] = a + b * petrel_rng_normal(&rng);
        return;
    }
    PETREL_UNREACHABLE("unknown ps init");
}

/* A fresh row's values, zero state and aux. */
static void init_slot(petreli_ps_store *s, int64_t slot) {
    if (s->cols == 1 && s->spec.init == PETREL_PS_INIT_ZERO)
        s->values[slot] = 0.0f;
    else
        init_values(s, s->keys[slot], s->values + slot * s->cols);
    if (s->state_floats)
        memset(s->state + slot * s->state_floats, 0, (size_t)s->state_floats * sizeof(float));
    if (s->has_steps) s->steps[slot] = 0;
    if (s->aux_bytes) memset(s->aux + (size_t)slot * s->aux_bytes, 0, s->aux_bytes);
}

/* ---- hash index -------------------------------------------------------------------- */

/* Groups (a power of two >= 16) that hold n keys at load <= 0.7: n <= 3.5 groups. */
static uint64_t groups_for(int64_t n) {
    uint64_t g = 16;
    while ((uint64_t)n * 2 > g * 7) g *= 2;
    return g;
}

/* Keys the index holds at load <= 0.7. */
static int64_t index_room(const petreli_ps_store *s) {
    return (int64_t)((s->gmask + 1) * 7 / 2);
}

/* The entry holding key, or the empty one where it would go, in the index G of
 * gmask + 1 groups. */
static inline uint64_t probe_in(const group *G, uint64_t gmask, int gshift, uint64_t key) {
    for (uint64_t g = petreli_ps_mix64(key) >> gshift;; g = (g + 1) & gmask) {
        const group *gr = &G[g];
        for (int j = 0; j < GROUP; j++)
            if (!gr->slot1[j] || gr->key[j] == key) return g * 8 + (uint64_t)j;
    }
}

static inline uint64_t probe(const petreli_ps_store *s, uint64_t key) {
    return probe_in(s->groups, s->gmask, s->gshift, key);
}

static inline uint32_t *entry_slot1(group *G, uint64_t e) {
    return &G[e >> 3].slot1[e & 7];
}

static inline void entry_set(group *G, uint64_t e, uint64_t key, int64_t slot) {
    G[e >> 3].key[e & 7] = key;
    G[e >> 3].slot1[e & 7] = (uint32_t)(slot + 1);
}

/* Replaces the index with one of ngroups groups holding every slot, inserted in
 * slot order. */
static petrel_err rehash(petreli_ps_store *s, uint64_t ngroups) {
    group *ng = alloc_array((int64_t)ngroups, sizeof *ng);
    if (!ng) return PETREL_ERR_NOMEM;
    memset(ng, 0, ngroups * sizeof *ng);
    int shift = 64 - __builtin_ctzll(ngroups);
    uint64_t mask = ngroups - 1;
    for (int64_t i = 0; i < s->count; i++) {
        if (i + AHEAD < s->count)
            __builtin_prefetch(&ng[petreli_ps_mix64(s->keys[i + AHEAD]) >> shift], 1);
        entry_set(ng, probe_in(ng, mask, shift, s->keys[i]), s->keys[i], i);
    }
    petrel_free(s->groups);
    s->groups = ng;
    s->gmask = mask;
    s->gshift = shift;
    return PETREL_OK;
}

static petrel_err too_many_rows(int64_t want) {
    return petrel_error_set(PETREL_ERR_NOMEM,
                            "ps table: %lld rows on one server, at most %lld in a sparse table",
                            (long long)want, (long long)MAX_HASH_ROWS);
}

/* Appends a slot for key, absent from the index, whose probe (`probe(s, key)`,
 * made since the index last changed) ended at entry e; the slot's data is left
 * for the caller. -1 with PETREL_ERR_NOMEM set when memory runs out (nothing
 * changed). */
static int64_t add_slot(petreli_ps_store *s, uint64_t key, uint64_t e) {
    if (s->count >= MAX_HASH_ROWS) {
        (void)too_many_rows(s->count + 1);
        return -1;
    }
    if (reserve_slots(s, s->count + 1) != PETREL_OK) return -1;
    if (s->count + 1 > index_room(s)) {
        if (rehash(s, (s->gmask + 1) * 2) != PETREL_OK) return -1;
        e = probe(s, key);
    }
    int64_t slot = s->count++;
    s->keys[slot] = key;
    entry_set(s->groups, e, key, slot);
    return slot;
}

/* ---- lookup ------------------------------------------------------------------------ */

static inline int64_t find(const petreli_ps_store *s, uint64_t key) {
    switch (s->index) {
    case INDEX_SPAN:
        return key - s->lo < s->hi - s->lo ? (int64_t)(key - s->lo) : -1;
    case INDEX_ARRAY:
        return key < (uint64_t)s->spec.rows ? (int64_t)s->dmap[key] - 1 : -1;
    case INDEX_HASH:
        return (int64_t)*entry_slot1(s->groups, probe(s, key)) - 1;
    }
    return -1;
}

/* Room for `want` rows: slot arrays and an index that holds them at load <= 0.7,
 * so that adding rows up to that count allocates nothing. */
static petrel_err make_room(petreli_ps_store *s, int64_t want) {
    if (want > MAX_HASH_ROWS) return too_many_rows(want);
    petrel_err err = reserve_slots(s, want);
    if (err == PETREL_OK && want > index_room(s)) err = rehash(s, groups_for(want));
    return err;
}

/* How many rows the store holds before making one must allocate. */
static int64_t room_of(const petreli_ps_store *s) {
    int64_t by_index = index_room(s);
    return s->cap < by_index ? s->cap : by_index;
}

/* A sparse key's new row, initialized; e as for add_slot. -1 with
 * PETREL_ERR_NOMEM set. */
static int64_t make_row(petreli_ps_store *s, uint64_t key, uint64_t e) {
    int64_t slot = add_slot(s, key, e);
    if (slot >= 0) init_slot(s, slot);
    return slot;
}

typedef struct rejects {
    int64_t count;
    uint64_t first;
} rejects;

static void reject(rejects *rj, uint64_t key) {
    if (rj->count++ == 0) rj->first = key;
}

static petrel_err reject_error(const petreli_ps_store *s, const rejects *rj, int64_t n) {
    uint64_t k = rj->first;
    if (s->spec.kind == PETREL_PS_DENSE && k >= (uint64_t)s->spec.rows)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "ps table: key %llu is outside the dense table of %lld rows "
                                "(%lld of %lld keys rejected)",
                                (unsigned long long)k, (long long)s->spec.rows,
                                (long long)rj->count, (long long)n);
    return petrel_error_set(PETREL_ERR_INVALID,
                            "ps table: key %llu belongs to server %d, not to this server %d of %d "
                            "(%lld of %lld keys rejected)",
                            (unsigned long long)k, petreli_ps_partition(&s->spec, k, s->servers),
                            s->server, s->servers, (long long)rj->count, (long long)n);
}

typedef enum prefetch_mode { PF_READ, PF_VALUES, PF_ALL } prefetch_mode;

/* Prefetches slot's row; a negative slot prefetches a harmless address instead,
 * so that callers need not branch. */
static inline void prefetch_row(const petreli_ps_store *s, int64_t slot, prefetch_mode mode) {
    slot &= ~(slot >> 63); /* max(slot, 0) */
    const char *v = (const char *)((uintptr_t)s->values + (uintptr_t)slot * (uintptr_t)s->cols * 4);
    size_t bytes = (size_t)s->cols * sizeof(float);
    size_t lines = bytes > 256 ? 4 : (bytes + 63) / 64;
    if (mode == PF_READ) {
        for (size_t l = 0; l < lines; l++) __builtin_prefetch(v + 64 * l, 0);
        return;
    }
    for (size_t l = 0; l < lines; l++) __builtin_prefetch(v + 64 * l, 1);
    if (mode == PF_ALL) {
        if (s->state_floats)
            __builtin_prefetch((const void *)((uintptr_t)s->state +
                                              (uintptr_t)slot * (uintptr_t)s->state_floats * 4),
                               1);
        if (s->has_steps)
            __builtin_prefetch((const void *)((uintptr_t)s->steps + (uintptr_t)slot * 8), 1);
    }
}

/* Slots of keys[i0 .. i1) into slots[0 ..], making the missing sparse rows of this
 * server; another server's key gets -1 and is counted in rj. The index entries of
 * keys up to AHEAD past i1 (below n) are prefetched for the next chunk. Returns i1,
 * or the index of a key whose row could not be made (*err = PETREL_ERR_NOMEM). */
static int64_t resolve(petreli_ps_store *s, const uint64_t *keys, int64_t i0, int64_t i1, int64_t n,
                       int64_t *slots, rejects *rj, prefetch_mode pf, petrel_err *err) {
    switch (s->index) {
    case INDEX_SPAN:
        for (int64_t i = i0; i < i1; i++) {
            uint64_t off = keys[i] - s->lo;
            int64_t slot = off < s->hi - s->lo ? (int64_t)off : -1;
            if (slot < 0)
                reject(rj, keys[i]);
            else
                prefetch_row(s, slot, pf);
            slots[i - i0] = slot;
        }
        return i1;
    case INDEX_ARRAY: {
        const uint64_t rows = (uint64_t)s->spec.rows;
        const uint32_t *dmap = s->dmap;
        if (i0 == 0)
            for (int64_t j = 0; j < AHEAD && j < n; j++)
                if (keys[j] < rows) __builtin_prefetch(&dmap[keys[j]], 0);
        for (int64_t i = i0; i < i1; i++) {
            if (i + AHEAD < n && keys[i + AHEAD] < rows)
                __builtin_prefetch(&dmap[keys[i + AHEAD]], 0);
            int64_t slot = keys[i] < rows ? (int64_t)dmap[keys[i]] - 1 : -1;
            if (slot < 0)
                reject(rj, keys[i]);
            else
                prefetch_row(s, slot, pf);
            slots[i - i0] = slot;
        }
        return i1;
    }
    case INDEX_HASH:
        break;
    }
    /* First pass, without a branch on the fetched lines (a mispredicted branch
     * on a cache miss would throw away the misses issued after it): the key's
     * home group, checked whole; a key found there gets its slot, any other -1. */
    const group *G = s->groups;
    const int gshift = s->gshift;
    const uint64_t gmask = s->gmask;
    if (i0 == 0)
        for (int64_t j = 0; j < AHEAD && j < n; j++)
            __builtin_prefetch(&G[petreli_ps_mix64(keys[j]) >> gshift], 0);
    int64_t fresh = 0;   /* keys surely absent: their home group has room */
    int32_t todo[CHUNK]; /* keys not found in their home group, by index - i0 */
    int nt = 0;
    for (int64_t i = i0; i < i1; i++) {
        if (i + AHEAD < n) __builtin_prefetch(&G[petreli_ps_mix64(keys[i + AHEAD]) >> gshift], 0);
        const uint64_t key = keys[i];
        const uint64_t gi = petreli_ps_mix64(key) >> gshift;
        const group *g = &G[gi];
        /* At most one entry holds key; an empty one (key 0, slot1 0) adds nothing. */
        uint64_t s1 = 0;
        for (int j = 0; j < GROUP; j++) s1 |= g->slot1[j] & -(uint64_t)(g->key[j] == key);
        /* A full group without key: the second pass will look at the next one. */
        const uint64_t full = g->slot1[GROUP - 1] != 0, next = (uint64_t)(s1 == 0) & full;
        __builtin_prefetch(&G[(gi + next) & gmask], 0);
        int64_t slot = (int64_t)s1 - 1;
        prefetch_row(s, slot, pf);
        slots[i - i0] = slot;
        fresh += (int64_t)((uint64_t)(s1 == 0) & (full ^ 1));
        todo[nt] = (int32_t)(i - i0);
        nt += slot < 0;
    }
    /* Second pass: keys beyond their home group, missing or not ours. Room is
     * made first for the keys the first pass found absent, so that their rows
     * need no checks and the loop keeps the store's fields in registers (a store
     * through s->keys could otherwise alias s->count); a row beyond that room
     * goes through make_row's checks. */
    const bool sparse = s->spec.kind == PETREL_PS_SPARSE;
    if (nt == 0) return i1;
    if (sparse && fresh > 0 && make_room(s, s->count + fresh) != PETREL_OK) {
        *err = PETREL_ERR_NOMEM;
        return i0 + todo[0];
    }
    const bool plain = s->cols == 1 && s->spec.init == PETREL_PS_INIT_ZERO && !s->state_floats &&
                       !s->has_steps && !s->aux_bytes;
    group *Gw = s->groups;
    uint64_t *K = s->keys;
    float *V = s->values;
    uint64_t gm = s->gmask;
    int gs = s->gshift;
    int64_t count = s->count, room = room_of(s);
    for (int t = 0; t < nt; t++) {
        const int64_t i = i0 + todo[t];
        const uint64_t key = keys[i];
        /* The home group again (a row made above may have gone there), whole:
         * entries fill in order, so with no match and room, key is absent and
         * goes to the first empty entry; only past a full group, probe on. */
        const uint64_t gi = petreli_ps_mix64(key) >> gs;
        const group *g = &Gw[gi];
        uint64_t s1 = 0, filled = 0;
        for (int j = 0; j < GROUP; j++) {
            s1 |= g->slot1[j] & -(uint64_t)(g->key[j] == key);
            filled += g->slot1[j] != 0;
        }
        uint64_t e = gi * 8 + filled;
        if (!s1 && filled == GROUP) {
            e = probe_in(Gw, gm, gs, key);
            s1 = *entry_slot1(Gw, e);
        }
        int64_t slot = (int64_t)s1 - 1;
        if (slot < 0) {
            if (!sparse || petreli_ps_partition(&s->spec, key, s->servers) != s->server) {
                reject(rj, key);
                continue;
            }
            if (count < room) {
                slot = count++;
                K[slot] = key;
                entry_set(Gw, e, key, slot);
                if (plain)
                    V[slot] = 0.0f;
                else
                    init_slot(s, slot);
            } else {
                s->count = count;
                if ((slot = make_row(s, key, e)) < 0) {
                    *err = PETREL_ERR_NOMEM;
                    return i;
                }
                Gw = s->groups;
                K = s->keys;
                V = s->values;
                gm = s->gmask;
                gs = s->gshift;
                count = s->count;
                room = room_of(s);
            }
        }
        prefetch_row(s, slot, pf);
        slots[i - i0] = slot;
    }
    s->count = count;
    return i1;
}

/* ---- key caching (store.h) ------------------------------------------------------------ */

void petreli_ps_hint_free(petreli_ps_hint *h) {
    petrel_free(h->slot1);
    *h = (petreli_ps_hint){0};
}

/* Room for n entries, keeping those held; false when out of memory (the caller
 * then goes without). */
static bool hint_reserve(petreli_ps_hint *h, int64_t n) {
    if (n <= h->cap) return true;
    if ((uint64_t)n > SIZE_MAX / sizeof *h->slot1) return false;
    uint32_t *p = petrel_realloc(h->slot1, (size_t)n * sizeof *p);
    if (!p) return false;
    h->slot1 = p;
    h->cap = n;
    return true;
}

/* Slots of keys[i0 .. i1) from slot1 (entries below `hinted` valid), each checked
 * against the key its slot holds. False, with sl partly written, when one does not
 * match. The loop does not branch on what it loads, for the reason resolve gives. */
static bool from_hint(const petreli_ps_store *s, const uint32_t *slot1, int64_t hinted,
                      const uint64_t *keys, int64_t i0, int64_t i1, int64_t *sl, prefetch_mode pf) {
    const uint64_t *K = s->keys;
    const uint64_t count = (uint64_t)s->count;
    /* A list unlike the last one usually differs at once: one look, not a chunk's. */
    if (i1 > hinted || (uint64_t)slot1[i0] - 1 >= count || K[slot1[i0] - 1] != keys[i0])
        return false;
    uint64_t bad = 0;
    for (int64_t i = i0; i < i1; i++) {
        if (i + AHEAD < hinted) {
            uint64_t a = (uint64_t)slot1[i + AHEAD] - 1; /* 0 wraps, past count */
            a &= -(uint64_t)(a < count);
            __builtin_prefetch(&K[a], 0);
            prefetch_row(s, (int64_t)a, pf);
        }
        uint64_t slot = (uint64_t)slot1[i] - 1, in = slot < count;
        bad |= (in ^ 1) | (uint64_t)(K[slot & -in] != keys[i]);
        sl[i - i0] = (int64_t)slot;
    }
    return bad == 0;
}

/* ---- the three operations ---------------------------------------------------------- */

typedef enum op_kind { OP_APPLY, OP_GATHER, OP_SET } op_kind;

/* Room for `more` rows beyond those of the first chunk, as many as the first
 * chunk suggests: a large push of new keys then grows the arrays and the index
 * once, instead of doubling (copying and rehashing) its way there. Only a hint:
 * on failure nothing changes and rows are made one by one as before. */
static void presize(petreli_ps_store *s, int64_t more) {
    int64_t want = s->count + more;
    if (want <= s->cap) return;
    if (want > MAX_HASH_ROWS || set_capacity(s, want) != PETREL_OK) return;
    if (want > index_room(s)) (void)rehash(s, groups_for(want));
}

/* keys (m) resolved to sl (m); d (m, C) deltas. */
static void apply_chunk(petreli_ps_store *s, const uint64_t *keys, const int64_t *sl, int64_t m,
                        const float *d, int64_t clock) {
    const int64_t C = s->cols, F = s->state_floats;
    float *restrict v = s->values;
    switch (s->spec.rule) {
    case PETREL_PS_SUM:
        if (C == 1) {
            for (int64_t k = 0; k < m; k++)
                if (sl[k] >= 0) v[sl[k]] += d[k];
        } else {
            for (int64_t k = 0; k < m; k++) {
                if (sl[k] < 0) continue;
                float *restrict row = v + sl[k] * C;
                const float *restrict dk = d + k * C;
                for (int64_t j = 0; j < C; j++) row[j] += dk[j];
            }
        }
        return;
    case PETREL_PS_SGD:
    case PETREL_PS_MOMENTUM:
    case PETREL_PS_ADAGRAD:
    case PETREL_PS_ADAM:
        for (int64_t k = 0; k < m; k++) {
            int64_t slot = sl[k];
            if (slot < 0) continue;
            float *st = F ? s->state + slot * F : NULL;
            int64_t step = s->has_steps ? ++s->steps[slot] : 1;
            petreli_optim_apply(&s->optim, step, v + slot * C, d + k * C, st,
                                s->has_steps ? st + C : NULL, (size_t)C);
        }
        return;
    case PETREL_PS_CUSTOM:
        for (int64_t k = 0; k < m; k++) {
            int64_t slot = sl[k];
            if (slot < 0) continue;
            s->spec.custom(s->spec.custom_ctx, keys[k], v + slot * C,
                           F ? s->state + slot * F : NULL, d + k * C, C, clock);
        }
        return;
    case PETREL_PS_RULE_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown ps rule");
}

/* sl (m) -> out (m, C); another server's key reads as zeros. */
static void gather_chunk(const petreli_ps_store *s, const int64_t *sl, int64_t m,
                         float *restrict out) {
    const int64_t C = s->cols;
    const float *restrict v = s->values;
    if (C == 1) {
        for (int64_t k = 0; k < m; k++) out[k] = sl[k] >= 0 ? v[sl[k]] : 0.0f;
        return;
    }
    for (int64_t k = 0; k < m; k++) {
        if (sl[k] >= 0)
            memcpy(out + k * C, v + sl[k] * C, (size_t)C * sizeof(float));
        else
            memset(out + k * C, 0, (size_t)C * sizeof(float));
    }
}

static void set_chunk(petreli_ps_store *s, const int64_t *sl, int64_t m, const float *in) {
    const int64_t C = s->cols;
    for (int64_t k = 0; k < m; k++)
        if (sl[k] >= 0) memcpy(s->values + sl[k] * C, in + k * C, (size_t)C * sizeof(float));
}

static petrel_err run(petreli_ps_store *s, op_kind op, const uint64_t *keys, int64_t n,
                      const float *in, float *out, int64_t *slots_out, int64_t clock,
                      petreli_ps_hint *hint) {
    PETREL_ASSERT(n >= 0 && (n == 0 || keys), "ps store: n >= 0 keys");
    int64_t sl[CHUNK];
    rejects rj = {0};
    petrel_err err = PETREL_OK;
    const int64_t C = s->cols;
    prefetch_mode pf = PF_VALUES; /* set, and apply of SUM */
    if (op == OP_GATHER)
        pf = PF_READ;
    else if (op == OP_APPLY && s->spec.rule != PETREL_PS_SUM)
        pf = PF_ALL;
    const int64_t count0 = s->count;
    /* Only the hash index misses the cache; the others are as fast as the hint. */
    if (hint && (s->index != INDEX_HASH || !hint_reserve(hint, n))) hint = NULL;
    const int64_t hinted = hint ? hint->n : 0;
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        int64_t i1 = n - i0 < CHUNK ? n : i0 + CHUNK;
        bool hit = hint && from_hint(s, hint->slot1, hinted, keys, i0, i1, sl, pf);
        int64_t m = hit ? i1 - i0 : resolve(s, keys, i0, i1, n, sl, &rj, pf, &err) - i0;
        if (hint) { /* on a hit the entries already name these slots */
            if (hit)
                hint->hits += m;
            else
                for (int64_t k = 0; k < m; k++) hint->slot1[i0 + k] = (uint32_t)(sl[k] + 1);
            hint->n = i0 + m;
        }
        if (i0 == 0 && m == CHUNK && s->count > count0)
            presize(s, (n - m) / m * (s->count - count0));
        switch (op) {
        case OP_APPLY:
            apply_chunk(s, keys + i0, sl, m, in + i0 * C, clock);
            break;
        case OP_GATHER:
            gather_chunk(s, sl, m, out + i0 * C);
            break;
        case OP_SET:
            set_chunk(s, sl, m, in + i0 * C);
            break;
        }
        if (slots_out) memcpy(slots_out + i0, sl, (size_t)m * sizeof *sl);
        if (err != PETREL_OK) return err;
    }
    return rj.count ? reject_error(s, &rj, n) : PETREL_OK;
}

petrel_err petreli_ps_store_apply(petreli_ps_store *s, const uint64_t *keys, int64_t n,
                                  const float *deltas, int64_t clock, petreli_ps_hint *hint) {
    return run(s, OP_APPLY, keys, n, deltas, NULL, NULL, clock, hint);
}

petrel_err petreli_ps_store_gather(petreli_ps_store *s, const uint64_t *keys, int64_t n, float *out,
                                   int64_t *slots, petreli_ps_hint *hint) {
    return run(s, OP_GATHER, keys, n, NULL, out, slots, 0, hint);
}

petrel_err petreli_ps_store_set(petreli_ps_store *s, const uint64_t *keys, int64_t n,
                                const float *values) {
    return run(s, OP_SET, keys, n, values, NULL, NULL, 0, NULL);
}

int64_t petreli_ps_store_slot(petreli_ps_store *s, uint64_t key, bool create) {
    if (s->index != INDEX_HASH || s->spec.kind != PETREL_PS_SPARSE) return find(s, key);
    uint64_t e = probe(s, key);
    int64_t slot = (int64_t)*entry_slot1(s->groups, e) - 1;
    if (slot >= 0 || !create || petreli_ps_partition(&s->spec, key, s->servers) != s->server)
        return slot;
    return make_row(s, key, e);
}

petrel_err petreli_ps_store_reserve(petreli_ps_store *s, int64_t more) {
    PETREL_ASSERT(more >= 0, "ps store: reserve room for more >= 0 rows");
    if (s->spec.kind != PETREL_PS_SPARSE || more == 0) return PETREL_OK;
    if (more > MAX_HASH_ROWS - s->count) return too_many_rows(s->count + more);
    return make_room(s, s->count + more);
}

void petreli_ps_store_clear(petreli_ps_store *s) {
    PETREL_ASSERT(s->spec.kind == PETREL_PS_SPARSE, "only a sparse store can be cleared");
    /* Zero the entries one by one when that touches less memory than zeroing
     * the whole index (a line per row against a line per group), newest first:
     * the index then goes back through the states it had as the rows were made
     * (slot order; a rehash or a load inserts in that order too), so each probe
     * still finds its key, and every group stays filled from its first entry. */
    if ((uint64_t)s->count < s->gmask + 1) {
        for (int64_t i = s->count - 1; i >= 0; i--) {
            uint64_t e = probe(s, s->keys[i]);
            entry_set(s->groups, e, 0, -1);
        }
    } else {
        memset(s->groups, 0, (s->gmask + 1) * sizeof *s->groups);
    }
    s->count = 0;
}

int64_t petreli_ps_store_count(const petreli_ps_store *s) {
    return s->count;
}

uint64_t petreli_ps_store_key(const petreli_ps_store *s, int64_t slot) {
    PETREL_ASSERT(slot >= 0 && slot < s->count, "slot out of range");
    return s->keys[slot];
}

const uint64_t *petreli_ps_store_keys(const petreli_ps_store *s) {
    return s->keys;
}

float *petreli_ps_store_row(petreli_ps_store *s, int64_t slot) {
    PETREL_ASSERT(slot >= 0 && slot < s->count, "slot out of range");
    return s->values + slot * s->cols;
}

float *petreli_ps_store_state(petreli_ps_store *s, int64_t slot) {
    PETREL_ASSERT(slot >= 0 && slot < s->count, "slot out of range");
    return s->state_floats ? s->state + slot * s->state_floats : NULL;
}

int64_t petreli_ps_store_steps(const petreli_ps_store *s, int64_t slot) {
    PETREL_ASSERT(slot >= 0 && slot < s->count, "slot out of range");
    return s->has_steps ? s->steps[slot] : 0;
}

void *petreli_ps_store_aux(petreli_ps_store *s, int64_t slot) {
    PETREL_ASSERT(slot >= 0 && slot < s->count, "slot out of range");
    return s->aux_bytes ? s->aux + (size_t)slot * s->aux_bytes : NULL;
}

/* ---- creation ---------------------------------------------------------------------- */

void petreli_ps_store_free(petreli_ps_store *s) {
    if (!s) return;
    petrel_free(s->dmap);
    petrel_free(s->groups);
    petrel_free(s->keys);
    petrel_free(s->values);
    petrel_free(s->state);
    petrel_free(s->steps);
    petrel_free(s->aux);
    petrel_free(s);
}

/* Lays out a dense store's slots (its keys, in increasing order) and index;
 * values, state and steps are left for the caller. */
static petrel_err make_dense(petreli_ps_store *s) {
    const uint64_t rows = (uint64_t)s->spec.rows;
    if (s->servers == 1 || s->spec.partition == PETREL_PS_RANGE) {
        s->index = INDEX_SPAN;
        s->lo = s->servers == 1 ? 0 : range_start(rows, s->server, s->servers);
        s->hi = s->servers == 1 ? rows : range_start(rows, s->server + 1, s->servers);
        petrel_err err = set_capacity(s, (int64_t)(s->hi - s->lo));
        if (err != PETREL_OK) return err;
        for (uint64_t k = s->lo; k < s->hi; k++) s->keys[k - s->lo] = k;
        s->count = (int64_t)(s->hi - s->lo);
        return PETREL_OK;
    }
    int64_t owned = 0;
    for (uint64_t k = 0; k < rows; k++)
        owned += petreli_ps_partition(&s->spec, k, s->servers) == s->server;
    petrel_err err = set_capacity(s, owned);
    if (err != PETREL_OK) return err;
    /* ARRAY costs 4 bytes per key of the table, HASH 64 per group. */
    if (rows < UINT32_MAX && rows * 4 <= groups_for(owned) * sizeof(group)) {
        s->index = INDEX_ARRAY;
        if (!(s->dmap = alloc_array((int64_t)rows, sizeof *s->dmap))) return PETREL_ERR_NOMEM;
        memset(s->dmap, 0, rows * sizeof *s->dmap);
        for (uint64_t k = 0; k < rows; k++)
            if (petreli_ps_partition(&s->spec, k, s->servers) == s->server) {
                s->keys[s->count] = k;
                s->dmap[k] = (uint32_t)++s->count;
            }
        return PETREL_OK;
    }
    s->index = INDEX_HASH;
    if (owned > MAX_HASH_ROWS) return too_many_rows(owned);
    if ((err = rehash(s, groups_for(owned))) != PETREL_OK) return err;
    for (uint64_t k = 0; k < rows; k++)
        if (petreli_ps_partition(&s->spec, k, s->servers) == s->server)
            (void)add_slot(s, k, probe(s, k)); /* cannot fail: everything is sized */
    return PETREL_OK;
}

/* An empty store (dense: its slots laid out, their data not yet set). */
static petrel_err store_create(petreli_ps_store **out, const petrel_ps_table_spec *spec, int server,
                               int servers, size_t aux_bytes) {
    petrel_err err = check_spec(spec, server, servers);
    if (err != PETREL_OK) return err;
    petreli_ps_store *s = petrel_calloc(1, sizeof *s);
    if (!s) return PETREL_ERR_NOMEM;
    s->spec = *spec;
    s->optim = spec->optim;
    s->optim.kind = optim_kind(spec->rule);
    s->server = server;
    s->servers = servers;
    s->cols = spec->cols;
    s->state_floats = petreli_ps_state_floats(spec);
    s->has_steps = spec->rule == PETREL_PS_ADAM;
    s->aux_bytes = aux_bytes;
    if (spec->kind == PETREL_PS_DENSE) {
        err = make_dense(s);
    } else {
        s->index = INDEX_HASH;
        err = rehash(s, groups_for(0));
    }
    if (err != PETREL_OK) goto fail;
    *out = s;
    return PETREL_OK;
fail:
    petreli_ps_store_free(s);
    return err;
}

petrel_err petreli_ps_store_new(petreli_ps_store **out, const petrel_ps_table_spec *spec,
                                int server, int servers, size_t aux_bytes) {
    petreli_ps_store *s;
    petrel_err err = store_create(&s, spec, server, servers, aux_bytes);
    if (err != PETREL_OK) return err;
    if (s->count == 0) {
        /* a sparse store, or a dense server without rows */
    } else if (spec->init == PETREL_PS_INIT_ZERO) {
        memset(s->values, 0, (size_t)s->count * (size_t)s->cols * sizeof(float));
        if (s->state_floats)
            memset(s->state, 0, (size_t)s->count * (size_t)s->state_floats * sizeof(float));
        if (s->has_steps) memset(s->steps, 0, (size_t)s->count * sizeof *s->steps);
        if (s->aux_bytes) memset(s->aux, 0, (size_t)s->count * s->aux_bytes);
    } else {
        for (int64_t i = 0; i < s->count; i++) init_slot(s, i);
    }
    *out = s;
    return PETREL_OK;
}

/* ---- snapshot files ---------------------------------------------------------------- */

static bool host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A buffered writer over an atomic file that keeps the CRC of what it wrote. */
typedef struct writer {
    petreli_atomic_file f;
    unsigned char *buf;
    size_t len;
    uLong crc;
    petrel_err err;
} writer;

static void wr_flush(writer *w) {
    if (w->err != PETREL_OK || w->len == 0) return;
    w->crc = crc32(w->crc, w->buf, (uInt)w->len);
    w->err = petreli_atomic_write(&w->f, w->buf, w->len);
    w->len = 0;
}

static void wr_put(writer *w, const void *src, size_t n) {
    const unsigned char *p = src;
    while (n > 0 && w->err == PETREL_OK) {
        if (w->len == IO_BUF) wr_flush(w);
        size_t k = IO_BUF - w->len < n ? IO_BUF - w->len : n;
        memcpy(w->buf + w->len, p, k);
        w->len += k;
        p += k;
        n -= k;
    }
}

static size_t record_bytes(int64_t cols, int64_t state_floats, bool steps) {
    return 8 + 4 * (size_t)cols + 4 * (size_t)state_floats + (steps ? 8 : 0);
}

petrel_err petreli_ps_store_save(const petreli_ps_store *s, const char *path) {
    if (!host_is_little_endian())
        return petrel_error_set(PETREL_ERR_UNSUPPORTED, "ps snapshots need a little-endian host");
    writer w = {.crc = crc32(0L, Z_NULL, 0)};
    if (!(w.buf = petrel_malloc(IO_BUF))) return PETREL_ERR_NOMEM;
    petrel_err err = petreli_atomic_open(&w.f, path);
    if (err != PETREL_OK) {
        petrel_free(w.buf);
        return err;
    }
    unsigned char h[HEADER_BYTES] = {0};
    memcpy(h, MAGIC, 8);
    put_le(h + 8, VERSION, 4);
    put_le(h + 12, (uint64_t)s->spec.kind, 4);
    put_le(h + 16, (uint64_t)s->spec.rule, 4);
    put_le(h + 20, (uint64_t)s->spec.partition, 4);
    put_le(h + 24, (uint64_t)s->server, 4);
    put_le(h + 28, (uint64_t)s->servers, 4);
    put_le(h + 32, (uint64_t)s->spec.rows, 8);
    put_le(h + 40, (uint64_t)s->cols, 8);
    put_le(h + 48, (uint64_t)s->state_floats, 8);
    put_le(h + 56, s->has_steps ? 8 : 0, 4);
    put_le(h + 64, (uint64_t)s->count, 8);
    wr_put(&w, h, sizeof h);
    const size_t vbytes = (size_t)s->cols * sizeof(float);
    const size_t sbytes = (size_t)s->state_floats * sizeof(float);
    for (int64_t i = 0; i < s->count && w.err == PETREL_OK; i++) {
        unsigned char key[8];
        put_le(key, s->keys[i], 8);
        wr_put(&w, key, 8);
        wr_put(&w, s->values + i * s->cols, vbytes);
        if (sbytes) wr_put(&w, s->state + i * s->state_floats, sbytes);
        if (s->has_steps) {
            unsigned char step[8];
            put_le(step, (uint64_t)s->steps[i], 8);
            wr_put(&w, step, 8);
        }
    }
    wr_flush(&w);
    if (w.err == PETREL_OK) {
        unsigned char crc[4];
        put_le(crc, (uint32_t)w.crc, 4);
        w.err = petreli_atomic_write(&w.f, crc, 4);
    }
    petrel_free(w.buf);
    if (w.err != PETREL_OK) {
        petreli_atomic_abort(&w.f);
        return w.err;
    }
    return petreli_atomic_commit(&w.f);
}

/* A buffered reader from a file offset. */
typedef struct reader {
    int fd;
    unsigned char *buf;
    size_t len, pos;
    uint64_t off; /* file offset of buf[len] */
} reader;

/* Refills an empty buffer; false at end of file or on a read error. */
static bool rd_fill(reader *r) {
    for (;;) {
        ssize_t got = pread(r->fd, r->buf, IO_BUF, (off_t)r->off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        r->len = (size_t)got;
        r->pos = 0;
        r->off += (uint64_t)got;
        return true;
    }
}

/* Copies the next n bytes to dst; false at end of file or on a read error. */
static bool rd_get(reader *r, void *dst, size_t n) {
    unsigned char *d = dst;
    while (n > 0) {
        if (r->pos == r->len && !rd_fill(r)) return false;
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        memcpy(d, r->buf + r->pos, k);
        d += k;
        r->pos += k;
        n -= k;
    }
    return true;
}

typedef struct header {
    uint32_t kind, rule, partition, server, servers, step_bytes;
    int64_t rows, cols, state_floats;
    uint64_t count;
    size_t record;
} header;

/* Opens path, checks its length against the header and its CRC; on success *fd
 * is open and *h filled. buf is IO_BUF bytes of scratch. */
static petrel_err open_checked(const char *path, unsigned char *buf, int *fd, header *h) {
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return petrel_error_set(PETREL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    petrel_err err = PETREL_OK;
    reader r = {.fd = f, .buf = buf};
    unsigned char hb[HEADER_BYTES];
    struct stat st;
    if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < HEADER_BYTES + 4 || !rd_get(&r, hb, HEADER_BYTES)) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: truncated: %llu bytes, a table snapshot has at least %u", path,
                               (unsigned long long)size, HEADER_BYTES + 4);
        goto fail;
    }
    if (memcmp(hb, MAGIC, 8) != 0) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: not a petrel table snapshot (magic at byte 0 is not \"%s\")",
                               path, MAGIC);
        goto fail;
    }
    uint32_t version = (uint32_t)get_le(hb + 8, 4);
    if (version != VERSION) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: format version %u at byte 8, this petrel reads version %u",
                               path, version, VERSION);
        goto fail;
    }
    h->kind = (uint32_t)get_le(hb + 12, 4);
    h->rule = (uint32_t)get_le(hb + 16, 4);
    h->partition = (uint32_t)get_le(hb + 20, 4);
    h->server = (uint32_t)get_le(hb + 24, 4);
    h->servers = (uint32_t)get_le(hb + 28, 4);
    h->rows = (int64_t)get_le(hb + 32, 8);
    h->cols = (int64_t)get_le(hb + 40, 8);
    h->state_floats = (int64_t)get_le(hb + 48, 8);
    h->step_bytes = (uint32_t)get_le(hb + 56, 4);
    h->count = get_le(hb + 64, 8);
    if (h->cols < 1 || h->cols > MAX_COLS || h->state_floats < 0 || h->state_floats > MAX_COLS ||
        (h->step_bytes != 0 && h->step_bytes != 8)) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: header at byte 40 declares cols %lld, %lld state floats and %u "
                               "step bytes per row, beyond the limits",
                               path, (long long)h->cols, (long long)h->state_floats, h->step_bytes);
        goto fail;
    }
    h->record = record_bytes(h->cols, h->state_floats, h->step_bytes == 8);
    uint64_t body = size - HEADER_BYTES - 4;
    if (h->count > body / h->record || h->count * h->record != body) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: %llu bytes, but its header declares %llu rows of %zu bytes "
                               "(%llu bytes in all): truncated or corrupted",
                               path, (unsigned long long)size, (unsigned long long)h->count,
                               h->record,
                               (unsigned long long)h->count * h->record + HEADER_BYTES + 4);
        goto fail;
    }
    uLong crc = crc32(0L, hb, HEADER_BYTES);
    for (uint64_t left = body; left > 0;) {
        if (r.pos == r.len && !rd_fill(&r)) {
            err = petrel_error_set(PETREL_ERR_IO, "%s: read failed at byte %llu", path,
                                   (unsigned long long)r.off);
            goto fail;
        }
        size_t take = r.len - r.pos < left ? r.len - r.pos : (size_t)left;
        crc = crc32(crc, buf + r.pos, (uInt)take);
        r.pos += take;
        left -= take;
    }
    unsigned char cb[4];
    if (!rd_get(&r, cb, 4)) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: read failed at byte %llu", path,
                               (unsigned long long)(size - 4));
        goto fail;
    }
    uint32_t stored = (uint32_t)get_le(cb, 4);
    if (stored != (uint32_t)crc) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: checksum mismatch (stored %08x, computed %08x): the file is "
                               "truncated or corrupted",
                               path, stored, (uint32_t)crc);
        goto fail;
    }
    *fd = f;
    return PETREL_OK;
fail:
    close(f);
    return err;
}

bool petreli_ps_store_file_ok(const char *path) {
    unsigned char *buf = petrel_malloc(IO_BUF);
    if (!buf) return false;
    int fd;
    header h;
    petrel_err err = open_checked(path, buf, &fd, &h);
    if (err == PETREL_OK) close(fd);
    petrel_free(buf);
    return err == PETREL_OK;
}

/* The header against the store it is loaded into. */
static petrel_err match_header(const petreli_ps_store *s, const char *path, const header *h) {
    struct {
        const char *what;
        long long file, ours;
    } fields[] = {
        {"kind", h->kind, s->spec.kind},
        {"rule", h->rule, s->spec.rule},
        {"cols", h->cols, s->cols},
        {"state floats per row", h->state_floats, s->state_floats},
        {"step bytes per row", h->step_bytes, s->has_steps ? 8 : 0},
        {"partition", h->partition, s->spec.partition},
        {"rows", h->rows, s->spec.rows},
        {"servers", h->servers, s->servers},
        {"server", h->server, s->server},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].file != fields[i].ours)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s: a snapshot of a table with %s %lld, this one has %lld",
                                    path, fields[i].what, fields[i].file, fields[i].ours);
    return PETREL_OK;
}

/* Reads h->count records into t, an empty store like s. */
static petrel_err read_rows(petreli_ps_store *t, const char *path, reader *r, const header *h) {
    const bool dense = t->spec.kind == PETREL_PS_DENSE;
    if (dense && h->count != (uint64_t)t->count)
        return petrel_error_set(
            PETREL_ERR_FORMAT, "%s: holds %llu rows, server %d of %d of this dense table has %lld",
            path, (unsigned long long)h->count, t->server, t->servers, (long long)t->count);
    if (!dense) {
        petrel_err err = make_room(t, (int64_t)h->count);
        if (err != PETREL_OK) return err;
    }
    const size_t vbytes = (size_t)t->cols * sizeof(float);
    const size_t sbytes = (size_t)t->state_floats * sizeof(float);
    for (uint64_t i = 0; i < h->count; i++) {
        uint64_t at = HEADER_BYTES + i * h->record;
        unsigned char kb[8];
        if (!rd_get(r, kb, 8))
            return petrel_error_set(PETREL_ERR_FORMAT, "%s: truncated at byte %llu", path,
                                    (unsigned long long)at);
        uint64_t key = get_le(kb, 8);
        int64_t slot;
        if (dense) {
            if (key != t->keys[i])
                return petrel_error_set(PETREL_ERR_FORMAT,
                                        "%s: row %llu (byte %llu) has key %llu, this server's "
                                        "row %llu is key %llu",
                                        path, (unsigned long long)i, (unsigned long long)at,
                                        (unsigned long long)key, (unsigned long long)i,
                                        (unsigned long long)t->keys[i]);
            slot = (int64_t)i;
        } else {
            if (petreli_ps_partition(&t->spec, key, t->servers) != t->server)
                return petrel_error_set(PETREL_ERR_FORMAT,
                                        "%s: row %llu (byte %llu): key %llu belongs to server %d, "
                                        "not %d",
                                        path, (unsigned long long)i, (unsigned long long)at,
                                        (unsigned long long)key,
                                        petreli_ps_partition(&t->spec, key, t->servers), t->server);
            const uint64_t e = probe(t, key);
            if (*entry_slot1(t->groups, e))
                return petrel_error_set(
                    PETREL_ERR_FORMAT, "%s: row %llu (byte %llu): key %llu appears twice", path,
                    (unsigned long long)i, (unsigned long long)at, (unsigned long long)key);
            slot = add_slot(t, key, e); /* cannot fail: reserved above */
            if (t->aux_bytes) memset(t->aux + (size_t)slot * t->aux_bytes, 0, t->aux_bytes);
        }
        bool ok = rd_get(r, t->values + slot * t->cols, vbytes);
        if (ok && sbytes) ok = rd_get(r, t->state + slot * t->state_floats, sbytes);
        if (ok && t->has_steps) {
            unsigned char sb[8];
            if ((ok = rd_get(r, sb, 8))) t->steps[slot] = (int64_t)get_le(sb, 8);
        }
        if (!ok)
            return petrel_error_set(PETREL_ERR_FORMAT, "%s: truncated in row %llu (byte %llu)",
                                    path, (unsigned long long)i, (unsigned long long)at);
    }
    if (dense && t->aux_bytes) memset(t->aux, 0, (size_t)t->count * t->aux_bytes);
    return PETREL_OK;
}

petrel_err petreli_ps_store_load(petreli_ps_store *s, const char *path) {
    if (!host_is_little_endian())
        return petrel_error_set(PETREL_ERR_UNSUPPORTED, "ps snapshots need a little-endian host");
    unsigned char *buf = petrel_malloc(IO_BUF);
    if (!buf) return PETREL_ERR_NOMEM;
    petreli_ps_store *t = NULL;
    int fd = -1;
    header h;
    petrel_err err = open_checked(path, buf, &fd, &h);
    if (err != PETREL_OK) goto fail;
    if ((err = match_header(s, path, &h)) != PETREL_OK) goto fail;
    if ((err = store_create(&t, &s->spec, s->server, s->servers, s->aux_bytes)) != PETREL_OK)
        goto fail;
    reader r = {.fd = fd, .buf = buf, .off = HEADER_BYTES};
    if ((err = read_rows(t, path, &r, &h)) != PETREL_OK) goto fail;
    /* Swap contents: s takes t's rows, t (with the old ones) is freed. */
    petreli_ps_store tmp = *s;
    *s = *t;
    *t = tmp;
fail:
    petreli_ps_store_free(t);
    if (fd >= 0) close(fd);
    petrel_free(buf);
    return err;
}
