/*
 * petrel data: datasets read from IDX (MNIST-style), libsvm and CSV files, and a
 * batcher that shards, shuffles and gathers mini-batches for data-parallel training.
 *
 * Formats (docs/data.md has the details and the exact error shapes):
 *   IDX      images idx3 + labels idx1, pixels scaled to [0, 1]; dense.
 *   libsvm   "label index:value ..." with 1-based ascending indices; sparse (CSR).
 *   CSV      numeric columns, one of them the label; dense.
 *   ratings  "user item rating" triplets for matrix factorization (petrel_ratings).
 * Every reader also accepts a gzip-compressed file (detected by its 1f 8b magic).
 * Labels become classes 0 .. num_classes-1: IDX labels are used as they are;
 * libsvm and CSV label values are sorted ascending and numbered, so -1 -> 0 and
 * +1 -> 1, and label_values keeps the original value of each class.
 *
 * Sharding rule: for epoch e every rank computes the same permutation of 0..n-1
 * (Fisher-Yates driven by a petrel_rng seeded with seed ^ 0x9e3779b97f4a7c15 * (e + 1),
 * or the identity without shuffle); rank r of size takes the positions
 * [r*n/size, (r+1)*n/size) of it. The shards of one epoch partition the samples;
 * their sizes differ by at most one. Batches are consecutive runs of a shard.
 *
 * Ownership: a loader returns a petrel_dataset that the caller frees with
 * petrel_dataset_free. A batcher borrows its dataset, which must outlive it. All
 * memory comes from petrel_malloc; a batcher allocates nothing after
 * petrel_batcher_new.
 *
 * Threading: a loaded dataset is read-only and may be shared by any number of
 * threads and batchers. A batcher belongs to one thread at a time. Errors are
 * recorded per thread (petrel_errmsg).
 *
 *     petrel_dataset *train = NULL;
 *     if (petrel_dataset_load_idx(&train, "train-images-idx3-ubyte.gz",
 *                                 "train-labels-idx1-ubyte.gz") != PETREL_OK) {
 *         fprintf(stderr, "%s\n", petrel_errmsg());  // names the file and offset
 *         return 1;
 *     }
 *     petrel_batcher_config cfg = petrel_batcher_config_default();
 *     cfg.rank = rank, cfg.size = world;
 *     petrel_batcher *b = NULL;
 *     if (petrel_batcher_new(&b, train, cfg) != PETREL_OK) ...;
 *     float *x = petrel_malloc(cfg.batch * train->dim * sizeof(float));
 *     int32_t *y = petrel_malloc(cfg.batch * sizeof(int32_t));
 *     for (int64_t epoch = 0; epoch < epochs; epoch++) {
 *         petrel_batcher_start_epoch(b, epoch);
 *         for (int64_t m; (m = petrel_batcher_next(b, x, y)) > 0;) train_step(x, y, m);
 *     }
 *     petrel_batcher_free(b);
 *     petrel_dataset_free(train);
 */
#ifndef PETREL_DATA_H
#define PETREL_DATA_H

#include "petrel/core.h"
#include "petrel/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- datasets ------------------------------------------------------------ */

/* A labelled dataset held in memory. Exactly one of x and sparse holds the
 * features: x when dense, sparse (with x NULL) when sparse. */
typedef struct petrel_dataset {
    int64_t n;                       /* samples */
    int64_t dim;                     /* features per sample */
    int64_t channels, height, width; /* image geometry when known (IDX: 1, rows, cols), else 0 */
    float *x;                        /* dense features (n, dim), row-major, or NULL when sparse */
    petrel_csr sparse;               /* sparse features (n rows, dim cols) when x is NULL */
    int32_t *y;                      /* labels mapped to classes 0 .. num_classes-1 */
    int32_t num_classes;
    double *label_values; /* for libsvm/csv: original label value of each class
                             (num_classes entries, ascending), else NULL */
} petrel_dataset;

/* Frees the dataset and everything it holds. Accepts NULL. */
void petrel_dataset_free(petrel_dataset *d);

/* True when the features are stored as CSR (d->x is NULL). */
bool petrel_dataset_is_sparse(const petrel_dataset *d);

/* Loads an IDX image/label pair, such as MNIST or Fashion-MNIST: images are idx3
 * (magic 0x00000803, then big-endian count, rows, cols, then count*rows*cols
 * unsigned bytes), labels idx1 (magic 0x00000801, count, then count bytes). Each
 * file may be gzip-compressed. Pixels become floats p/255 in x (n, rows*cols);
 * channels = 1, height = rows, width = cols; num_classes = largest label + 1.
 * Memory grows only as bytes arrive, so a header that lies about its size cannot
 * cause a large allocation.
 * Errors: PETREL_ERR_IO (cannot open or read), PETREL_ERR_FORMAT (wrong magic, zero
 * or oversized dimensions, counts that differ between the files, truncated or
 * overlong data, corrupt gzip; the message names the file and the byte offset),
 * PETREL_ERR_NOMEM. *out is a new dataset owned by the caller. */
PETREL_NODISCARD petrel_err petrel_dataset_load_idx(petrel_dataset **out, const char *images_path,
                                                    const char *labels_path);

/* Loads a libsvm/svmlight file: one sample per line, "label index:value ...",
 * indices 1-based and strictly increasing within a line; '#' starts a comment that
 * runs to the end of the line; blank lines are skipped; lines may be of any length
 * and the last may lack its newline. The result is sparse (x NULL, sparse holds
 * column index-1) with dim = max(largest index, dim_hint). Labels (any finite
 * number: +1, -1, 3, 1.5e0) are numbered in ascending order of value and
 * label_values records them.
 * Errors: PETREL_ERR_INVALID (dim_hint outside 0 .. 2^31), PETREL_ERR_IO, PETREL_ERR_FORMAT
 * ("path:LINE: expected ..."), PETREL_ERR_NOMEM. *out is owned by the caller. */
PETREL_NODISCARD petrel_err petrel_dataset_load_libsvm(petrel_dataset **out, const char *path,
                                                       int64_t dim_hint);

/* Same as petrel_dataset_load_libsvm, but the classes are those of train, so that
 * a test file numbers its labels exactly like its training file: a label is
 * mapped through train->label_values (or, when train has none, as IDX does, must
 * be an integer in 0 .. train->num_classes-1). num_classes and label_values are
 * copied from train; dim = max(largest index, train->dim). A label train lacks is
 * a PETREL_ERR_FORMAT naming the line. Other errors as for load_libsvm. */
PETREL_NODISCARD petrel_err petrel_dataset_load_libsvm_like(petrel_dataset **out, const char *path,
                                                            const petrel_dataset *train);

/* How to read a CSV file. */
typedef struct petrel_csv_options {
    int label_column; /* 0-based column of the label, -1 = last */
    bool header;      /* the first line names the columns and is skipped */
    char delimiter;   /* field separator, such as ',', ';', '\t' */
} petrel_csv_options;

/* label_column -1 (last), no header, delimiter ','. */
petrel_csv_options petrel_csv_options_default(void);

/* Loads a CSV file of numbers: every row has the same number of columns, one of
 * them the label, the others the dense features (dim = columns - 1, in file
 * order). Blank lines are skipped; spaces around a number are allowed; quoting is
 * not supported. Labels are mapped as by petrel_dataset_load_libsvm.
 * Errors: PETREL_ERR_INVALID (a delimiter that can be part of a number, or a
 * label column the rows do not have), PETREL_ERR_IO, PETREL_ERR_FORMAT
 * ("path:LINE: expected 5 columns, found 4"), PETREL_ERR_NOMEM. */
PETREL_NODISCARD petrel_err petrel_dataset_load_csv(petrel_dataset **out, const char *path,
                                                    petrel_csv_options opts);

/* A dense copy of d (sparse or dense): x (n, dim) with the missing entries 0;
 * labels, label values and geometry copied. Refuses (PETREL_ERR_INVALID) when x
 * would exceed 4 GiB. PETREL_ERR_NOMEM. *out is owned by the caller. */
PETREL_NODISCARD petrel_err petrel_dataset_to_dense(petrel_dataset **out, const petrel_dataset *d);

/* A sparse copy of d (dense or sparse) that keeps the nonzero entries.
 * PETREL_ERR_INVALID when dim exceeds the int32 column range; PETREL_ERR_NOMEM. */
PETREL_NODISCARD petrel_err petrel_dataset_to_sparse(petrel_dataset **out, const petrel_dataset *d);

/* ---- batching ------------------------------------------------------------ */

/* How a batcher walks its dataset. Plain data, passed by value. */
typedef struct petrel_batcher_config {
    int64_t batch;  /* samples per batch, >= 1 */
    bool shuffle;   /* a new permutation every epoch, else the file order */
    uint64_t seed;  /* permutation seed; must be the same on every rank */
    int rank, size; /* this process's shard: 0 <= rank < size */
    bool drop_last; /* skip the last batch of a shard when it is short */
} petrel_batcher_config;

/* batch 64, shuffle true, seed 1, rank 0, size 1, drop_last false. */
petrel_batcher_config petrel_batcher_config_default(void);

/* Walks one rank's shard of a dataset in mini-batches (see the sharding rule at
 * the top of this header). */
typedef struct petrel_batcher petrel_batcher;

/* Creates a batcher over d (borrowed: d must outlive it) and starts epoch 0. All
 * memory it will use is allocated here: the permutation (n indices) and, for a
 * sparse d, one CSR batch sized up front for the largest possible batch,
 * min(batch * largest row nnz, total nnz) entries, so later calls never allocate.
 * Errors: PETREL_ERR_INVALID (batch < 1, size < 1, rank outside 0..size-1, n above
 * 2^32-1), PETREL_ERR_NOMEM. */
PETREL_NODISCARD petrel_err petrel_batcher_new(petrel_batcher **out, const petrel_dataset *d,
                                               petrel_batcher_config cfg);

/* Frees the batcher (not its dataset). Accepts NULL. */
void petrel_batcher_free(petrel_batcher *b);

/* The batcher's epoch order, for callers that walk samples themselves (Hogwild!,
 * matrix factorization): order[0 .. n-1] = with shuffle, a permutation of 0 .. n-1
 * that is a function of (seed, epoch) only, by the rule at the top of this header;
 * without, 0 .. n-1 (the file order). */
void petrel_epoch_order(uint32_t *order, int64_t n, bool shuffle, uint64_t seed, int64_t epoch);

/* Computes epoch's permutation, a function of (seed, epoch) only and identical on
 * every rank, and rewinds to the start of this rank's shard. Costs O(n). */
void petrel_batcher_start_epoch(petrel_batcher *b, int64_t epoch);

/* Samples in this rank's shard: (rank+1)*n/size - rank*n/size. */
int64_t petrel_batcher_shard_size(const petrel_batcher *b);

/* Batches per epoch for this rank: shard/batch when drop_last, else rounded up.
 * Ranks may differ by one (shard sizes do); a loop that needs equal step counts on
 * every rank runs (n / size) / batch steps, which every shard can fill. */
int64_t petrel_batcher_batches_per_epoch(const petrel_batcher *b);

/* Dense form: gathers the next batch into x (batch, dim), row-major, and its
 * classes into y (batch; y may be NULL). Returns the number of samples written,
 * less than batch only for the last batch of a shard (never, with drop_last), and
 * 0 once the epoch's shard is used up, until the next start_epoch. Sparse rows
 * are densified into x. */
int64_t petrel_batcher_next(petrel_batcher *b, float *x, int32_t *y);

/* Sparse form, for a sparse dataset only: *rows points to a CSR (count rows, dim
 * cols) owned by the batcher and valid until the next call on it; y as for
 * petrel_batcher_next. Returns the count as petrel_batcher_next does. */
int64_t petrel_batcher_next_sparse(petrel_batcher *b, const petrel_csr **rows, int32_t *y);

/* Index form, for callers that gather themselves: *idx points to the dataset
 * row indices of the next batch (owned by the batcher, valid until the next
 * start_epoch). Returns the count as petrel_batcher_next does. The three next
 * functions share one position in the epoch. */
int64_t petrel_batcher_next_indices(petrel_batcher *b, const uint32_t **idx);

/* ---- ratings for matrix factorization (ratings.c) ------------------------ */

/* Ratings for matrix factorization: one "user item rating" triplet per line
 * (whitespace separated; user and item are integers >= 0, rating a finite float;
 * blank lines and lines starting with '#' are skipped). docs/formats.md has the
 * format; the file may be gzip-compressed. A petrel_ratings is plain data: its
 * arrays are owned by it (petrel_ratings_fini frees them), read-only once made and
 * safe to share between threads. */
typedef struct petrel_ratings {
    int64_t n;            /* triplets */
    int64_t users, items; /* largest id + 1 */
    int32_t *user, *item; /* n each */
    float *rating;        /* n */
} petrel_ratings;

/* Reads path into *out: ids are decimal digits only, 0 .. INT32_MAX; a rating is a
 * finite number within float range; fields are separated by spaces or tabs, lines
 * end in "\n" or "\r\n", the last may lack its end. '#' as the first non-blank
 * character makes the line a comment; anything after the third field is an error.
 * Errors: PETREL_ERR_IO (cannot open or read), PETREL_ERR_FORMAT ("path:LINE: ..."
 * naming a missing field, a non-number, a negative or too large id, a rating that
 * is not finite, trailing junk; "path: no ratings" for a file without triplets;
 * more than 2^32-1 triplets), PETREL_ERR_NOMEM. On failure *out is untouched; on
 * success the caller frees it with petrel_ratings_fini. */
PETREL_NODISCARD petrel_err petrel_ratings_read(const char *path, petrel_ratings *out);

/* Splits r by a seeded shuffle: a test_fraction of the triplets go to test.
 * users/items of both = r's. Exactly floor(test_fraction * n + 0.5) triplets, the
 * first ones of a Fisher-Yates permutation of 0..n-1 drawn by a petrel_rng seeded
 * with seed, go to *test, the others to *train; both keep r's order. r is borrowed.
 * Errors: PETREL_ERR_INVALID (test_fraction outside [0, 1), more than 2^32-1
 * triplets), PETREL_ERR_NOMEM; on failure *train and *test are untouched. Either
 * may come out with n = 0 (its arrays are still allocated); free both with
 * petrel_ratings_fini. */
PETREL_NODISCARD petrel_err petrel_ratings_split(const petrel_ratings *r, double test_fraction,
                                                 uint64_t seed, petrel_ratings *train,
                                                 petrel_ratings *test);

/* Writes a synthetic low-rank set: users x items ratings matrix U V^T (+ gaussian
 * noise) of the given rank, observed with probability density, seeded; for tests
 * and benchmarks. U (users, rank) and V (items, rank) hold independent normal
 * entries of mean 0 and variance 1/sqrt(rank), so that a noiseless rating U_u . V_i
 * has variance 1; an observed rating is U_u . V_i + noise * N(0, 1). Each (user,
 * item) pair is observed independently with probability density (so about
 * density * users * items triplets), written in row-major order with 7 significant
 * digits after a '#' line naming the parameters. The same arguments give the same
 * file. Errors: PETREL_ERR_INVALID (users or items outside 1 .. 2^31, rank outside
 * 1 .. 4096, density outside (0, 1], noise negative or not finite), PETREL_ERR_IO
 * (cannot create or write path), PETREL_ERR_NOMEM. The file may be left partly
 * written on failure. */
PETREL_NODISCARD petrel_err petrel_ratings_synth(const char *path, int64_t users, int64_t items,
                                                 int rank, double density, double noise,
                                                 uint64_t seed);

/* Frees r's arrays and zeroes it. Accepts NULL. */
void petrel_ratings_fini(petrel_ratings *r);

/* ---- text to hashed bag-of-words (text.c) -------------------------------- */

/* Labelled text becomes libsvm files (docs/text.md): documents are tokenized
 * (maximal runs of ASCII letters and digits, lowercased, tokens shorter than 2
 * dropped), optionally joined into bigrams ("tok1 tok2", one space), hashed with
 * 64-bit FNV-1a and reduced to bucket = hash mod 2^hash_bits (the low bits; file
 * index bucket + 1). Buckets in more than max_df of the N training documents are
 * dropped (stop words). Values are counts (TF) or TF-IDF with
 * idf = ln((1 + N) / (1 + df)) + 1 over the N training documents, then each
 * document is scaled to unit L2 norm unless l2 is off. The corpus is read once;
 * only the hashed counts are kept in memory. Nothing here is shared between
 * threads; errors are recorded per thread (petrel_errmsg). */

/* Where the documents come from. */
typedef enum petrel_text_source {
    PETREL_TEXT_CORPUS,  /* a directory of class directories (files are documents, or
                            lines with per_line) or of class files (lines are documents) */
    PETREL_TEXT_WORDNET, /* a WordNet dict directory: data.{noun,verb,adj,adv}; the
                            label is lex_filenum, the text the gloss after " | " */
    PETREL_TEXT_FORTUNE, /* a fortune directory: one class per file (not .dat, not a
                            symlink), documents separated by lines holding only "%" */
    PETREL_TEXT_SOURCE_COUNT
} petrel_text_source;

/* How to convert. Plain data, passed by value. */
typedef struct petrel_text_config {
    petrel_text_source source;
    bool per_line;        /* CORPUS with class directories: each line is a document */
    int hash_bits;        /* 2^hash_bits buckets, 1 .. 31 */
    bool bigrams;         /* add hashed bigrams of consecutive kept tokens */
    bool tfidf;           /* TF-IDF (idf from the train split) instead of counts */
    bool l2;              /* scale every document to unit L2 norm */
    double test_fraction; /* share of documents in the test split, 0 <= f < 1 */
    uint64_t seed;        /* split seed */
    double max_df;        /* drop the buckets found in more than floor(max_df * N) of the
                             N training documents; 0 < max_df <= 1, 1 keeps all */
} petrel_text_config;

/* source CORPUS, per_line false, hash_bits 18, bigrams false, tfidf false, l2 true,
 * test_fraction 0.2, seed 1, max_df 1. */
petrel_text_config petrel_text_config_default(void);

/* What a conversion produced. */
typedef struct petrel_text_summary {
    int64_t docs, train_docs, test_docs;
    int32_t classes;
    int64_t features_used;    /* distinct buckets over all documents (before max_df) */
    int64_t features_dropped; /* of those, the buckets max_df dropped */
} petrel_text_summary;

/* 64-bit FNV-1a of len bytes: h = 0xcbf29ce484222325; per byte h = (h ^ b) *
 * 0x100000001b3. */
uint64_t petrel_text_hash(const void *s, size_t len);

/* Hashes the features of text (len bytes) in order of appearance (each bigram
 * right after its second token) into buckets (0-based, < 2^hash_bits), writing at
 * most cap of them; returns how many there are, which may exceed cap. */
size_t petrel_text_features(const char *text, size_t len, bool bigrams, int hash_bits,
                            uint32_t *buckets, size_t cap);

/* ln((1 + n_docs) / (1 + df)) + 1. */
double petrel_text_idf(int64_t n_docs, int64_t df);

/* The seeded split: is_test[i] for n documents, exactly floor(f * n + 0.5) of them
 * true, chosen by a Fisher-Yates permutation from a petrel_rng seeded with seed.
 * PETREL_ERR_INVALID (f outside [0, 1), n above 2^32-1), PETREL_ERR_NOMEM. */
PETREL_NODISCARD petrel_err petrel_text_split(bool *is_test, int64_t n, double test_fraction,
                                              uint64_t seed);

/* Converts the corpus at input (see petrel_text_source) into out_prefix.train.svm
 * and out_prefix.test.svm (labels are class numbers 0 .. classes-1, indices
 * 1-based and ascending) and out_prefix.classes ("<number> <name>" per line;
 * CORPUS classes are numbered in sorted name order, WordNet classes are the
 * lex_filenums present, in order). summary may be NULL.
 * Errors: PETREL_ERR_INVALID (a config value out of range), PETREL_ERR_IO (a path
 * that cannot be opened, read or written: the message names it),
 * PETREL_ERR_FORMAT (no classes, no documents, a class without documents, a
 * directory mixing files and directories, a malformed WordNet line),
 * PETREL_ERR_NOMEM. Output files may be left partly written on failure. */
PETREL_NODISCARD petrel_err petrel_text_to_libsvm(const char *input, const char *out_prefix,
                                                  petrel_text_config cfg,
                                                  petrel_text_summary *summary);

#ifdef __cplusplus
}
#endif
#endif
