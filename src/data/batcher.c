/*
 * Sharded, shuffled mini-batches.
 *
 * Every rank shuffles the whole index range with the same seeded RNG and then
 * takes its own contiguous slice of the permutation, positions
 * [rank*n/size, (rank+1)*n/size). That needs no communication, makes the shards of
 * an epoch a partition of the samples, and lets a sample move between ranks from
 * epoch to epoch, as a global shuffle should.
 *
 * Everything is allocated in petrel_batcher_new; the per-batch calls only copy.
 */
#include "data/data_impl.h"

#include <string.h>

/* Golden-ratio multiplier: spreads consecutive epochs over the seed space
 * before splitmix64 (inside petrel_rng_seed) mixes them further. */
#define EPOCH_MIX 0x9e3779b97f4a7c15ull

struct petrel_batcher {
    const petrel_dataset *d; /* borrowed */
    petrel_batcher_config cfg;
    uint32_t *perm;     /* n dataset indices, this epoch's order */
    int64_t begin, end; /* this rank's shard: positions [begin, end) of perm */
    int64_t pos;        /* next position to hand out */
    petrel_csr batch;   /* sparse batch storage, sparse datasets only */
    int64_t batch_cap;  /* entries batch.col and batch.val have room for */
};

petrel_batcher_config petrel_batcher_config_default(void) {
    petrel_batcher_config c = {
        .batch = 64, .shuffle = true, .seed = 1, .rank = 0, .size = 1, .drop_last = false};
    return c;
}

petrel_err petrel_batcher_new(petrel_batcher **out, const petrel_dataset *d,
                              petrel_batcher_config cfg) {
    PETREL_ASSERT(out && d, "pass an out-pointer and a dataset");
    if (cfg.batch < 1 || cfg.size < 1 || cfg.rank < 0 || cfg.rank >= cfg.size)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_batcher_new: batch %lld, rank %d, size %d: expected "
                                "batch >= 1 and 0 <= rank < size",
                                (long long)cfg.batch, cfg.rank, cfg.size);
    /* Indices are uint32_t to halve the permutation's memory. */
    if (d->n < 0 || d->n > (int64_t)UINT32_MAX)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_batcher_new: %lld samples: expected at most 2^32-1",
                                (long long)d->n);
    petrel_err err = PETREL_ERR_NOMEM;
    petrel_batcher *b = petrel_calloc(1, sizeof *b);
    if (!b) return err;
    b->d = d;
    b->cfg = cfg;
    b->perm = petrel_malloc((size_t)d->n * sizeof *b->perm);
    if (!b->perm) goto fail;
    if (!d->x) {
        /* The largest batch holds at most batch rows of the longest row's length,
         * and never more than the whole matrix: sized once, never grown. */
        const petrel_csr *m = &d->sparse;
        int64_t max_row = 0;
        for (int64_t r = 0; r < m->rows; r++) {
            int64_t k = m->row_ptr[r + 1] - m->row_ptr[r];
            if (k > max_row) max_row = k;
        }
        int64_t rows = cfg.batch < m->rows ? cfg.batch : m->rows;
        int64_t cap = m->nnz;
        if (max_row > 0 && rows <= m->nnz / max_row) cap = rows * max_row;
        if ((err = petrel_csr_init(&b->batch, rows, d->dim, cap)) != PETREL_OK) goto fail;
        b->batch_cap = cap;
    }
    /* Safe from overflow: n < 2^32 and size < 2^31. */
    b->begin = (int64_t)cfg.rank * d->n / cfg.size;
    b->end = ((int64_t)cfg.rank + 1) * d->n / cfg.size;
    petrel_batcher_start_epoch(b, 0);
    *out = b;
    return PETREL_OK;

fail:
    petrel_batcher_free(b);
    return err;
}

void petrel_batcher_free(petrel_batcher *b) {
    if (!b) return;
    petrel_csr_fini(&b->batch);
    petrel_free(b->perm);
    petrel_free(b);
}

void petrel_epoch_order(uint32_t *order, int64_t n, bool shuffle, uint64_t seed, int64_t epoch) {
    /* From the identity each time, so the order is a function of (seed, epoch)
     * alone and a restarted job resumes with the same order. */
    for (int64_t i = 0; i < n; i++) order[i] = (uint32_t)i;
    if (!shuffle) return;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed ^ (EPOCH_MIX * ((uint64_t)epoch + 1)));
    petrel_rng_shuffle_u32(&rng, order, (size_t)n);
}

void petrel_batcher_start_epoch(petrel_batcher *b, int64_t epoch) {
    petrel_epoch_order(b->perm, b->d->n, b->cfg.shuffle, b->cfg.seed, epoch);
    b->pos = b->begin;
}

int64_t petrel_batcher_shard_size(const petrel_batcher *b) {
    return b->end - b->begin;
}

int64_t petrel_batcher_batches_per_epoch(const petrel_batcher *b) {
    int64_t shard = b->end - b->begin, batch = b->cfg.batch;
    return b->cfg.drop_last ? shard / batch : (shard + batch - 1) / batch;
}

/* Claims the next batch: returns its first position and sets *count (0 at the end
 * of the shard, or for a short last batch under drop_last). */
static int64_t claim(petrel_batcher *b, int64_t *count) {
    int64_t start = b->pos, m = b->end - b->pos;
    if (m > b->cfg.batch) m = b->cfg.batch;
    if (m < 0 || (m < b->cfg.batch && b->cfg.drop_last)) m = 0;
    b->pos = m ? b->pos + m : b->end;
    *count = m;
    return start;
}

int64_t petrel_batcher_next(petrel_batcher *b, float *x, int32_t *y) {
    PETREL_ASSERT(x != NULL, "petrel_batcher_next needs x (batch, dim)");
    int64_t m;
    const uint32_t *idx = b->perm + claim(b, &m);
    const petrel_dataset *d = b->d;
    int64_t dim = d->dim;
    for (int64_t i = 0; i < m; i++) {
        float *row = x + i * dim;
        if (d->x) {
            memcpy(row, d->x + (int64_t)idx[i] * dim, (size_t)dim * sizeof *row);
        } else {
            const petrel_csr *s = &d->sparse;
            memset(row, 0, (size_t)dim * sizeof *row);
            for (int64_t k = s->row_ptr[idx[i]]; k < s->row_ptr[idx[i] + 1]; k++)
                row[s->col[k]] = s->val[k];
        }
        if (y) y[i] = d->y[idx[i]];
    }
    return m;
}

int64_t petrel_batcher_next_sparse(petrel_batcher *b, const petrel_csr **rows, int32_t *y) {
    PETREL_ASSERT(rows != NULL, "petrel_batcher_next_sparse needs an out-pointer for the rows");
    PETREL_ASSERT(b->d->x == NULL, "petrel_batcher_next_sparse needs a sparse dataset; use "
                                   "petrel_batcher_next for a dense one");
    int64_t m;
    const uint32_t *idx = b->perm + claim(b, &m);
    const petrel_csr *s = &b->d->sparse;
    petrel_csr *out = &b->batch;
    int64_t nnz = 0;
    out->row_ptr[0] = 0;
    for (int64_t i = 0; i < m; i++) {
        int64_t k0 = s->row_ptr[idx[i]], k = s->row_ptr[idx[i] + 1] - k0;
        PETREL_ASSERT(nnz + k <= b->batch_cap,
                      "the sparse dataset changed after petrel_batcher_new sized the batch");
        if (k > 0) {
            memcpy(out->col + nnz, s->col + k0, (size_t)k * sizeof *out->col);
            memcpy(out->val + nnz, s->val + k0, (size_t)k * sizeof *out->val);
        }
        nnz += k;
        out->row_ptr[i + 1] = nnz;
        if (y) y[i] = b->d->y[idx[i]];
    }
    out->rows = m;
    out->nnz = nnz;
    *rows = out;
    return m;
}

int64_t petrel_batcher_next_indices(petrel_batcher *b, const uint32_t **idx) {
    PETREL_ASSERT(idx != NULL, "petrel_batcher_next_indices needs an out-pointer");
    int64_t m;
    *idx = b->perm + claim(b, &m);
    return m;
}
