/*
 * Labelled text to hashed bag-of-words libsvm files (docs/text.md).
 *
 * The corpus is streamed once, line by line through the data module's line reader
 * (so gzip-compressed files work too). Each finished document is reduced to its
 * sorted (bucket, count) pairs, appended to growing CSR arrays; the raw text is never
 * kept. Once every document is in, the split is drawn, document frequencies are
 * counted on the train rows, and both files are written from the CSR arrays.
 *
 * Output, per line: "<class> <index>:<value> ..." with index = bucket + 1,
 * ascending; value = count, or count * idf, then scaled by 1 / ||row||_2 unless
 * l2 is off. A document without features is a line holding only its class.
 */
#include "data/data_impl.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FNV_OFFSET       0xcbf29ce484222325ULL
#define FNV_PRIME        0x100000001b3ULL
#define WORDNET_LEXFILES 45

/* The lexicographer files of WordNet 3.0 (lexnames(5)), indexed by lex_filenum. */
static const char *const wordnet_lexnames[WORDNET_LEXFILES] = {
    "adj.all",          "adj.pert",           "adv.all",
    "noun.Tops",        "noun.act",           "noun.animal",
    "noun.artifact",    "noun.attribute",     "noun.body",
    "noun.cognition",   "noun.communication", "noun.event",
    "noun.feeling",     "noun.food",          "noun.group",
    "noun.location",    "noun.motive",        "noun.object",
    "noun.person",      "noun.phenomenon",    "noun.plant",
    "noun.possession",  "noun.process",       "noun.quantity",
    "noun.relation",    "noun.shape",         "noun.state",
    "noun.substance",   "noun.time",          "verb.body",
    "verb.change",      "verb.cognition",     "verb.communication",
    "verb.competition", "verb.consumption",   "verb.contact",
    "verb.creation",    "verb.emotion",       "verb.motion",
    "verb.perception",  "verb.possession",    "verb.social",
    "verb.stative",     "verb.weather",       "adj.ppl"};

petrel_text_config petrel_text_config_default(void) {
    petrel_text_config c;
    memset(&c, 0, sizeof c);
    c.source = PETREL_TEXT_CORPUS;
    c.hash_bits = 18;
    c.l2 = true;
    c.test_fraction = 0.2;
    c.seed = 1;
    c.max_df = 1.0;
    return c;
}

static uint64_t fnv_add(uint64_t h, unsigned char b) {
    return (h ^ b) * FNV_PRIME;
}

uint64_t petrel_text_hash(const void *s, size_t len) {
    const unsigned char *p = s;
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < len; i++) h = fnv_add(h, p[i]);
    return h;
}

double petrel_text_idf(int64_t n_docs, int64_t df) {
    return log((1.0 + (double)n_docs) / (1.0 + (double)df)) + 1.0;
}

/* ---- tokenizer ----------------------------------------------------------- */

/* Tokenizer state carried across the lines of one document, so that a bigram
 * can join the last token of a line to the first of the next. */
typedef struct tok_state {
    uint64_t prev; /* FNV-1a of the previous kept token */
    bool have_prev;
} tok_state;

typedef void (*emit_fn)(void *ctx, uint64_t hash);

static bool is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static void scan(tok_state *st, const char *text, size_t len, bool bigrams, emit_fn emit,
                 void *ctx) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        while (i < len && !is_alnum(s[i])) i++;
        if (i == len) break;
        uint64_t h = FNV_OFFSET;
        size_t start = i;
        for (; i < len && is_alnum(s[i]); i++)
            h = fnv_add(h, (unsigned char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]));
        if (i - start < 2) continue;
        emit(ctx, h);
        if (bigrams && st->have_prev) {
            /* FNV-1a is sequential: continuing the previous token's hash with ' '
             * and this token's bytes hashes the string "prev tok". */
            uint64_t b = fnv_add(st->prev, ' ');
            for (size_t k = start; k < i; k++)
                b = fnv_add(b,
                            (unsigned char)(s[k] >= 'A' && s[k] <= 'Z' ? s[k] - 'A' + 'a' : s[k]));
            emit(ctx, b);
        }
        st->prev = h;
        st->have_prev = true;
    }
}

typedef struct array_sink {
    uint32_t *out;
    size_t cap, n;
    uint64_t mask;
} array_sink;

static void emit_array(void *ctx, uint64_t h) {
    array_sink *a = ctx;
    if (a->n < a->cap) a->out[a->n] = (uint32_t)(h & a->mask);
    a->n++;
}

size_t petrel_text_features(const char *text, size_t len, bool bigrams, int hash_bits,
                            uint32_t *buckets, size_t cap) {
    PETREL_ASSERT(hash_bits >= 1 && hash_bits <= 31, "hash_bits must be 1 .. 31");
    PETREL_ASSERT(text || len == 0, "pass the text");
    array_sink a = {buckets, cap, 0, (1ULL << hash_bits) - 1};
    tok_state st = {0, false};
    scan(&st, text, len, bigrams, emit_array, &a);
    return a.n;
}

/* ---- split --------------------------------------------------------------- */

petrel_err petrel_text_split(bool *is_test, int64_t n, double test_fraction, uint64_t seed) {
    PETREL_ASSERT(is_test || n == 0, "pass is_test");
    if (!(test_fraction >= 0.0 && test_fraction < 1.0))
        return petrel_error_set(PETREL_ERR_INVALID, "test fraction %g: expected 0 <= f < 1",
                                test_fraction);
    if (n < 0 || n > (int64_t)UINT32_MAX)
        return petrel_error_set(PETREL_ERR_INVALID, "%lld documents: expected 0 .. 2^32-1",
                                (long long)n);
    if (n == 0) return PETREL_OK;
    uint32_t *perm = petrel_malloc((size_t)n * sizeof *perm);
    if (!perm) return PETREL_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    petrel_rng_shuffle_u32(&rng, perm, (size_t)n);
    int64_t ntest = (int64_t)floor(test_fraction * (double)n + 0.5);
    for (int64_t i = 0; i < n; i++) is_test[perm[i]] = i < ntest;
    petrel_free(perm);
    return PETREL_OK;
}

/* ---- corpus: documents as hashed counts ---------------------------------- */

typedef struct corpus {
    uint64_t mask;
    bool bigrams;
    int64_t n, nnz;
    int64_t *row_ptr; /* n + 1 */
    uint32_t *col;    /* nnz buckets, ascending within a row */
    float *cnt;       /* nnz counts */
    int32_t *label;   /* n classes */
    size_t row_cap, col_cap, cnt_cap, label_cap;
    uint32_t *cur; /* buckets of the document being read, unsorted */
    size_t cur_n, cur_cap;
    tok_state st;
    petrel_err err; /* first failure inside emit, which cannot return one */
    /* classes */
    char **names;
    int64_t *class_docs;
    int32_t classes;
} corpus;

static void emit_corpus(void *ctx, uint64_t h) {
    corpus *c = ctx;
    if (c->err != PETREL_OK) return;
    void *p = c->cur;
    c->err = petreli_grow(&p, &c->cur_cap, c->cur_n + 1, sizeof *c->cur);
    c->cur = p;
    if (c->err == PETREL_OK) c->cur[c->cur_n++] = (uint32_t)(h & c->mask);
}

static void doc_begin(corpus *c) {
    c->cur_n = 0;
    c->st.have_prev = false;
}

static petrel_err doc_text(corpus *c, const char *s, size_t len) {
    scan(&c->st, s, len, c->bigrams, emit_corpus, c);
    return c->err;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Sorts and counts the current document's buckets and appends it as a row. */
static petrel_err doc_end(corpus *c, int32_t label) {
    if (c->cur_n > 1) qsort(c->cur, c->cur_n, sizeof *c->cur, cmp_u32);
    size_t distinct = 0;
    for (size_t i = 0; i < c->cur_n; i++)
        if (i == 0 || c->cur[i] != c->cur[i - 1]) distinct++;
    size_t need = (size_t)c->nnz + distinct + 1;
    void *p = c->col, *q = c->cnt, *r = c->row_ptr, *l = c->label;
    petrel_err err = petreli_grow(&p, &c->col_cap, need, sizeof *c->col);
    c->col = p;
    if (err == PETREL_OK) err = petreli_grow(&q, &c->cnt_cap, need, sizeof *c->cnt);
    c->cnt = q;
    if (err == PETREL_OK) err = petreli_grow(&r, &c->row_cap, (size_t)c->n + 2, sizeof *c->row_ptr);
    c->row_ptr = r;
    if (err == PETREL_OK) err = petreli_grow(&l, &c->label_cap, (size_t)c->n + 1, sizeof *c->label);
    c->label = l;
    if (err != PETREL_OK) return err;
    for (size_t i = 0; i < c->cur_n; i++) {
        if (i == 0 || c->cur[i] != c->cur[i - 1]) {
            c->col[c->nnz] = c->cur[i];
            c->cnt[c->nnz++] = 1.0f;
        } else {
            c->cnt[c->nnz - 1] += 1.0f;
        }
    }
    c->label[c->n++] = label;
    c->row_ptr[c->n] = c->nnz;
    c->class_docs[label]++;
    return PETREL_OK;
}

static bool is_blank_line(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v')
            return false;
    return true;
}

typedef enum doc_mode { DOC_WHOLE, DOC_LINES, DOC_FORTUNE } doc_mode;

/* Reads the documents of one file into class label. */
static petrel_err read_file(corpus *c, const char *path, int32_t label, doc_mode mode) {
    petreli_lines lines;
    petrel_err err = petreli_lines_open(&lines, path);
    if (err != PETREL_OK) return err;
    bool open_doc = false, has_text = false;
    if (mode == DOC_WHOLE) {
        doc_begin(c);
        open_doc = true;
    }
    for (;;) {
        char *line;
        size_t len;
        if ((err = petreli_lines_next(&lines, &line, &len)) != PETREL_OK) goto done;
        if (!line) break;
        if (mode == DOC_LINES) {
            if (is_blank_line(line, len)) continue;
            doc_begin(c);
            if ((err = doc_text(c, line, len)) != PETREL_OK) goto done;
            if ((err = doc_end(c, label)) != PETREL_OK) goto done;
            continue;
        }
        if (mode == DOC_FORTUNE && len == 1 && line[0] == '%') {
            if (open_doc && has_text && (err = doc_end(c, label)) != PETREL_OK) goto done;
            open_doc = has_text = false;
            continue;
        }
        if (!open_doc) {
            doc_begin(c);
            open_doc = true;
        }
        if (!is_blank_line(line, len)) has_text = true;
        if ((err = doc_text(c, line, len)) != PETREL_OK) goto done;
    }
    /* A file or fortune with nothing but blanks is no document. */
    if (open_doc && has_text) err = doc_end(c, label);
done:
    petreli_lines_close(&lines);
    return err;
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = petrel_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = petrel_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct name_list {
    char **v;
    size_t n, cap;
} name_list;

static void names_free(name_list *l) {
    for (size_t i = 0; i < l->n; i++) petrel_free(l->v[i]);
    petrel_free(l->v);
    memset(l, 0, sizeof *l);
}

/* Entries of dir kept by want (given the entry's lstat), sorted by name. Hidden
 * names are skipped. */
typedef enum entry_kind { ENTRY_DIR, ENTRY_FILE, ENTRY_OTHER } entry_kind;

static entry_kind kind_of(const char *path, bool follow_links) {
    struct stat sb;
    if ((follow_links ? stat(path, &sb) : lstat(path, &sb)) != 0) return ENTRY_OTHER;
    if (S_ISDIR(sb.st_mode)) return ENTRY_DIR;
    if (S_ISREG(sb.st_mode)) return ENTRY_FILE;
    return ENTRY_OTHER;
}

/* Lists the non-hidden names in dir, sorted; *kinds gets each entry's kind. */
static petrel_err list_dir(const char *dir, name_list *out, entry_kind **kinds, bool follow_links) {
    name_list l = {NULL, 0, 0};
    entry_kind *k = NULL;
    char *full = NULL;
    petrel_err err = PETREL_OK;
    DIR *d = opendir(dir);
    if (!d)
        return petrel_error_set(PETREL_ERR_IO, "%s: cannot open directory: %s", dir,
                                strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        void *p = l.v;
        if ((err = petreli_grow(&p, &l.cap, l.n + 1, sizeof *l.v)) != PETREL_OK) goto fail;
        l.v = p;
        if (!(l.v[l.n] = str_dup(e->d_name))) {
            err = PETREL_ERR_NOMEM;
            goto fail;
        }
        l.n++;
    }
    closedir(d);
    d = NULL;
    if (l.n > 1) qsort(l.v, l.n, sizeof *l.v, cmp_str);
    k = petrel_malloc((l.n + 1) * sizeof *k);
    if (!k) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < l.n; i++) {
        if (!(full = path_join(dir, l.v[i]))) {
            err = PETREL_ERR_NOMEM;
            goto fail;
        }
        k[i] = kind_of(full, follow_links);
        petrel_free(full);
        full = NULL;
    }
    *out = l;
    *kinds = k;
    return PETREL_OK;
fail:
    if (d) closedir(d);
    petrel_free(k);
    names_free(&l);
    return err;
}

static petrel_err add_class(corpus *c, const char *name) {
    size_t n = (size_t)c->classes + 1;
    char **names = petrel_malloc(n * sizeof *names);
    int64_t *docs = petrel_calloc(n, sizeof *docs);
    char *dup = str_dup(name);
    if (!names || !docs || !dup) {
        petrel_free(names);
        petrel_free(docs);
        petrel_free(dup);
        return PETREL_ERR_NOMEM;
    }
    if (c->classes) {
        memcpy(names, c->names, (size_t)c->classes * sizeof *names);
        memcpy(docs, c->class_docs, (size_t)c->classes * sizeof *docs);
    }
    names[c->classes++] = dup;
    petrel_free(c->names);
    petrel_free(c->class_docs);
    c->names = names;
    c->class_docs = docs;
    return PETREL_OK;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A directory of class directories or of class files, or a fortune directory. */
static petrel_err read_classes(corpus *c, const char *input, bool fortune, bool per_line) {
    name_list l = {NULL, 0, 0};
    entry_kind *k = NULL;
    char *path = NULL;
    name_list files = {NULL, 0, 0};
    entry_kind *fk = NULL;
    petrel_err err = list_dir(input, &l, &k, !fortune);
    if (err != PETREL_OK) return err;
    size_t ndirs = 0, nfiles = 0;
    for (size_t i = 0; i < l.n; i++) {
        if (fortune && (k[i] != ENTRY_FILE || ends_with(l.v[i], ".dat"))) k[i] = ENTRY_OTHER;
        ndirs += k[i] == ENTRY_DIR;
        nfiles += k[i] == ENTRY_FILE;
    }
    if (ndirs && nfiles) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: holds both directories and files: expected one directory "
                               "per class or one file per class",
                               input);
        goto done;
    }
    if (!ndirs && !nfiles) {
        err = petrel_error_set(PETREL_ERR_FORMAT, "%s: no classes: expected %s", input,
                               fortune ? "fortune files"
                                       : "one directory per class or one file per class");
        goto done;
    }
    for (size_t i = 0; i < l.n; i++) {
        if (k[i] == ENTRY_OTHER) continue;
        if ((err = add_class(c, l.v[i])) != PETREL_OK) goto done;
        int32_t label = c->classes - 1;
        if (!(path = path_join(input, l.v[i]))) {
            err = PETREL_ERR_NOMEM;
            goto done;
        }
        if (k[i] == ENTRY_FILE) {
            err = read_file(c, path, label, fortune ? DOC_FORTUNE : DOC_LINES);
        } else {
            if ((err = list_dir(path, &files, &fk, true)) != PETREL_OK) goto done;
            for (size_t j = 0; j < files.n && err == PETREL_OK; j++) {
                if (fk[j] != ENTRY_FILE) continue;
                char *fp = path_join(path, files.v[j]);
                if (!fp) {
                    err = PETREL_ERR_NOMEM;
                    break;
                }
                err = read_file(c, fp, label, per_line ? DOC_LINES : DOC_WHOLE);
                petrel_free(fp);
            }
            names_free(&files);
            petrel_free(fk);
            fk = NULL;
        }
        if (err != PETREL_OK) goto done;
        if (c->class_docs[label] == 0) {
            err = petrel_error_set(PETREL_ERR_FORMAT, "%s: class '%s' has no documents", path,
                                   l.v[i]);
            goto done;
        }
        petrel_free(path);
        path = NULL;
    }
done:
    petrel_free(path);
    names_free(&files);
    petrel_free(fk);
    petrel_free(k);
    names_free(&l);
    return err;
}

/* WordNet data.* lines: "offset lex_filenum ss_type ... | gloss". Lines that
 * start with a space are the license header. */
static petrel_err read_wordnet(corpus *c, const char *dir) {
    static const char *const parts[] = {"data.noun", "data.verb", "data.adj", "data.adv"};
    petrel_err err = PETREL_OK;
    for (int i = 0; i < WORDNET_LEXFILES; i++)
        if ((err = add_class(c, wordnet_lexnames[i])) != PETREL_OK) return err;
    for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
        char *path = path_join(dir, parts[p]);
        if (!path) return PETREL_ERR_NOMEM;
        petreli_lines lines;
        if ((err = petreli_lines_open(&lines, path)) != PETREL_OK) {
            petrel_free(path);
            return err;
        }
        for (;;) {
            char *line;
            size_t len;
            if ((err = petreli_lines_next(&lines, &line, &len)) != PETREL_OK) break;
            if (!line) break;
            if (len == 0 || line[0] == ' ') continue;
            char *s = line;
            while (*s >= '0' && *s <= '9') s++;
            int lex = -1;
            if (s > line && s[0] == ' ' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
                s[2] <= '9' && s[3] == ' ')
                lex = (s[1] - '0') * 10 + (s[2] - '0');
            if (lex < 0 || lex >= WORDNET_LEXFILES) {
                err = petrel_error_set(PETREL_ERR_FORMAT,
                                       "%s:%lld: expected 'offset lex_filenum ...' with "
                                       "lex_filenum 00 .. 44, found '%.*s%s'",
                                       path, (long long)lines.lineno, PETRELI_QUOTE(line, len));
                break;
            }
            char *gloss = strstr(s, " | ");
            doc_begin(c);
            if (gloss &&
                (err = doc_text(c, gloss + 3, len - (size_t)(gloss + 3 - line))) != PETREL_OK)
                break;
            if ((err = doc_end(c, lex)) != PETREL_OK) break;
        }
        petreli_lines_close(&lines);
        petrel_free(path);
        if (err != PETREL_OK) return err;
    }
    /* Keep only the lexicographer files present, in lex_filenum order. */
    int32_t *remap = petrel_malloc(WORDNET_LEXFILES * sizeof *remap);
    if (!remap) return PETREL_ERR_NOMEM;
    int32_t kept = 0;
    for (int32_t i = 0; i < c->classes; i++) {
        if (c->class_docs[i] == 0) {
            petrel_free(c->names[i]);
            remap[i] = -1;
            continue;
        }
        remap[i] = kept;
        c->names[kept] = c->names[i];
        c->class_docs[kept++] = c->class_docs[i];
    }
    c->classes = kept;
    for (int64_t i = 0; i < c->n; i++) c->label[i] = remap[c->label[i]];
    petrel_free(remap);
    return PETREL_OK;
}

static void corpus_free(corpus *c) {
    for (int32_t i = 0; i < c->classes; i++) petrel_free(c->names[i]);
    petrel_free(c->names);
    petrel_free(c->class_docs);
    petrel_free(c->cur);
    petrel_free(c->label);
    petrel_free(c->cnt);
    petrel_free(c->col);
    petrel_free(c->row_ptr);
}

/* ---- output -------------------------------------------------------------- */

/* Sorted distinct buckets and their counts among the rows where pick is NULL or
 * pick[row] is want. */
static petrel_err distinct_cols(const corpus *c, const bool *pick, bool want, uint32_t **keys,
                                int64_t **counts, size_t *n_out) {
    size_t m = 0;
    for (int64_t r = 0; r < c->n; r++)
        if (!pick || pick[r] == want) m += (size_t)(c->row_ptr[r + 1] - c->row_ptr[r]);
    uint32_t *k = petrel_malloc((m + 1) * sizeof *k);
    int64_t *cn = petrel_malloc((m + 1) * sizeof *cn);
    if (!k || !cn) {
        petrel_free(k);
        petrel_free(cn);
        return PETREL_ERR_NOMEM;
    }
    size_t j = 0;
    for (int64_t r = 0; r < c->n; r++)
        if (!pick || pick[r] == want)
            for (int64_t e = c->row_ptr[r]; e < c->row_ptr[r + 1]; e++) k[j++] = c->col[e];
    if (m > 1) qsort(k, m, sizeof *k, cmp_u32);
    size_t u = 0;
    for (size_t i = 0; i < m; i++) {
        if (u > 0 && k[u - 1] == k[i]) {
            cn[u - 1]++;
        } else {
            k[u] = k[i];
            cn[u++] = 1;
        }
    }
    *keys = k;
    *counts = cn;
    *n_out = u;
    return PETREL_OK;
}

static int64_t lookup_df(const uint32_t *keys, const int64_t *df, size_t n, uint32_t col) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < col)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && keys[lo] == col ? df[lo] : 0;
}

typedef struct out_file {
    FILE *f;
    char *path;
} out_file;

static petrel_err out_open(out_file *o, const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    o->f = NULL;
    if (!(o->path = petrel_malloc(a + b + 1))) return PETREL_ERR_NOMEM;
    memcpy(o->path, prefix, a);
    memcpy(o->path + a, suffix, b + 1);
    if (!(o->f = fopen(o->path, "w")))
        return petrel_error_set(PETREL_ERR_IO, "%s: cannot create: %s", o->path, strerror(errno));
    return PETREL_OK;
}

/* Closes o; err is the result so far, returned unless closing fails first. */
static petrel_err out_close(out_file *o, petrel_err err) {
    if (o->f) {
        bool bad = ferror(o->f) != 0;
        if (fclose(o->f) != 0) bad = true;
        if (bad && err == PETREL_OK)
            err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
    }
    petrel_free(o->path);
    o->f = NULL;
    o->path = NULL;
    return err;
}

/* keys/df: the training documents' buckets and document frequencies (when TF-IDF or
 * max_df needs them); a bucket in more than max_docs of them is left out. */
static petrel_err write_rows(const corpus *c, const bool *is_test, const petrel_text_config *cfg,
                             const uint32_t *keys, const int64_t *df, size_t nkeys, int64_t n_train,
                             int64_t max_docs, out_file *train, out_file *test) {
    size_t cap = 0;
    double *w = NULL;
    for (int64_t r = 0; r < c->n; r++) {
        int64_t b = c->row_ptr[r], e = c->row_ptr[r + 1];
        void *p = w;
        if (petreli_grow(&p, &cap, (size_t)(e - b) + 1, sizeof *w) != PETREL_OK) {
            petrel_free(w);
            return PETREL_ERR_NOMEM;
        }
        w = p;
        double ss = 0;
        for (int64_t i = b; i < e; i++) {
            double v = c->cnt[i];
            int64_t d = keys ? lookup_df(keys, df, nkeys, c->col[i]) : 0;
            if (d > max_docs) v = 0; /* dropped: a stop word */
            if (cfg->tfidf) v *= petrel_text_idf(n_train, d);
            w[i - b] = v;
            ss += v * v;
        }
        double scale = cfg->l2 && ss > 0 ? 1.0 / sqrt(ss) : 1.0;
        FILE *f = is_test[r] ? test->f : train->f;
        fprintf(f, "%d", (int)c->label[r]);
        for (int64_t i = b; i < e; i++)
            if (w[i - b] != 0)
                fprintf(f, " %lu:%.7g", (unsigned long)c->col[i] + 1, w[i - b] * scale);
        fputc('\n', f);
    }
    petrel_free(w);
    return PETREL_OK;
}

petrel_err petrel_text_to_libsvm(const char *input, const char *out_prefix, petrel_text_config cfg,
                                 petrel_text_summary *summary) {
    PETREL_ASSERT(input && out_prefix, "pass the corpus and the output prefix");
    if (cfg.hash_bits < 1 || cfg.hash_bits > 31)
        return petrel_error_set(PETREL_ERR_INVALID, "hash bits %d: expected 1 .. 31",
                                cfg.hash_bits);
    if (!(cfg.test_fraction >= 0.0 && cfg.test_fraction < 1.0))
        return petrel_error_set(PETREL_ERR_INVALID, "test fraction %g: expected 0 <= f < 1",
                                cfg.test_fraction);
    if ((unsigned)cfg.source >= PETREL_TEXT_SOURCE_COUNT)
        return petrel_error_set(PETREL_ERR_INVALID, "text source %d: unknown", (int)cfg.source);
    if (!(cfg.max_df > 0.0 && cfg.max_df <= 1.0))
        return petrel_error_set(PETREL_ERR_INVALID, "max_df %g: expected 0 < max_df <= 1",
                                cfg.max_df);

    corpus c;
    memset(&c, 0, sizeof c);
    c.mask = (1ULL << cfg.hash_bits) - 1;
    c.bigrams = cfg.bigrams;
    bool *is_test = NULL;
    uint32_t *keys = NULL, *all_keys = NULL;
    int64_t *df = NULL, *all_counts = NULL;
    size_t nkeys = 0, nall = 0;
    out_file tr = {NULL, NULL}, te = {NULL, NULL}, cl = {NULL, NULL};
    petrel_err err;
    void *p = c.row_ptr;
    if ((err = petreli_grow(&p, &c.row_cap, 1, sizeof *c.row_ptr)) != PETREL_OK) goto fail;
    c.row_ptr = p;
    c.row_ptr[0] = 0;

    if (cfg.source == PETREL_TEXT_WORDNET)
        err = read_wordnet(&c, input);
    else
        err = read_classes(&c, input, cfg.source == PETREL_TEXT_FORTUNE, cfg.per_line);
    if (err != PETREL_OK) goto fail;
    if (c.n == 0) {
        err = petrel_error_set(PETREL_ERR_FORMAT, "%s: no documents", input);
        goto fail;
    }

    if (!(is_test = petrel_malloc((size_t)c.n * sizeof *is_test))) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if ((err = petrel_text_split(is_test, c.n, cfg.test_fraction, cfg.seed)) != PETREL_OK)
        goto fail;
    int64_t n_test = 0;
    for (int64_t i = 0; i < c.n; i++) n_test += is_test[i];
    if ((cfg.tfidf || cfg.max_df < 1.0) &&
        (err = distinct_cols(&c, is_test, false, &keys, &df, &nkeys)) != PETREL_OK)
        goto fail;
    const int64_t max_docs =
        cfg.max_df < 1.0 ? (int64_t)floor(cfg.max_df * (double)(c.n - n_test)) : INT64_MAX;
    int64_t dropped = 0;
    for (size_t k = 0; k < nkeys; k++) dropped += df[k] > max_docs;
    if ((err = distinct_cols(&c, NULL, false, &all_keys, &all_counts, &nall)) != PETREL_OK)
        goto fail;
    petrel_free(all_keys);
    petrel_free(all_counts);
    all_keys = NULL;
    all_counts = NULL;

    if ((err = out_open(&tr, out_prefix, ".train.svm")) != PETREL_OK) goto fail;
    if ((err = out_open(&te, out_prefix, ".test.svm")) != PETREL_OK) goto fail;
    if ((err = out_open(&cl, out_prefix, ".classes")) != PETREL_OK) goto fail;
    err = write_rows(&c, is_test, &cfg, keys, df, nkeys, c.n - n_test, max_docs, &tr, &te);
    for (int32_t i = 0; err == PETREL_OK && i < c.classes; i++)
        fprintf(cl.f, "%d %s\n", (int)i, c.names[i]);
    err = out_close(&tr, err);
    err = out_close(&te, err);
    err = out_close(&cl, err);
    if (err != PETREL_OK) goto fail;

    if (summary) {
        summary->docs = c.n;
        summary->train_docs = c.n - n_test;
        summary->test_docs = n_test;
        summary->classes = c.classes;
        summary->features_used = (int64_t)nall;
        summary->features_dropped = dropped;
    }
    petrel_free(df);
    petrel_free(keys);
    petrel_free(is_test);
    corpus_free(&c);
    return PETREL_OK;

fail:
    (void)out_close(&cl, err);
    (void)out_close(&te, err);
    (void)out_close(&tr, err);
    petrel_free(all_counts);
    petrel_free(all_keys);
    petrel_free(df);
    petrel_free(keys);
    petrel_free(is_test);
    corpus_free(&c);
    return err;
}
