/*
 * libsvm / svmlight reader. One sample per line:
 *
 *     <label> <index>:<value> <index>:<value> ...    # optional comment
 *
 * label: any finite number (+1, -1, 3, 1.5e0); index: 1-based, strictly
 * increasing within the line, at most 2^31; value: a finite float. Fields are
 * separated by spaces or tabs. Lines may be of any length, end in "\n" or "\r\n",
 * and the last may lack its end. The file may be gzip-compressed.
 *
 * The rows are parsed straight into growing CSR arrays, which become the
 * dataset's storage, so a file is read once and never held twice.
 */
#include "data/data_impl.h"

#include <float.h>
#include <string.h>

typedef struct libsvm_parse {
    const char *path;
    const petrel_dataset *train; /* classes to map to, or NULL to number them */
    int64_t lineno;
    int64_t n, nnz, max_index;
    int64_t *row_ptr;
    int32_t *col;
    float *val;
    double *raw; /* label value of each row */
    size_t row_cap, col_cap, val_cap, raw_cap;
} libsvm_parse;

static bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Length of the token at s: up to a blank or the end. */
static size_t token_len(const char *s) {
    size_t k = 0;
    while (s[k] && !is_blank(s[k])) k++;
    return k;
}

static petrel_err push_entry(libsvm_parse *p, int32_t col, float v) {
    void *c = p->col, *w = p->val;
    size_t need = (size_t)p->nnz + 1;
    petrel_err err = petreli_grow(&c, &p->col_cap, need, sizeof *p->col);
    p->col = c;
    if (err == PETREL_OK) err = petreli_grow(&w, &p->val_cap, need, sizeof *p->val);
    p->val = w;
    if (err != PETREL_OK) return err;
    p->col[p->nnz] = col;
    p->val[p->nnz++] = v;
    return PETREL_OK;
}

static petrel_err push_row(libsvm_parse *p, double label) {
    void *r = p->row_ptr, *l = p->raw;
    size_t need = (size_t)p->n + 2;
    petrel_err err = petreli_grow(&r, &p->row_cap, need, sizeof *p->row_ptr);
    p->row_ptr = r;
    if (err == PETREL_OK) err = petreli_grow(&l, &p->raw_cap, need, sizeof *p->raw);
    p->raw = l;
    if (err != PETREL_OK) return err;
    p->raw[p->n++] = label;
    p->row_ptr[p->n] = p->nnz;
    return PETREL_OK;
}

/* Parses one "index:value" token of length len at s; prev is the previous
 * token of the line (for messages) or NULL after the label. */
static petrel_err parse_entry(libsvm_parse *p, const char *s, size_t len, const char *prev,
                              size_t prev_len, int64_t *last_index) {
    const char *colon = memchr(s, ':', len);
    if (!colon) {
        if (!prev)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s:%lld: expected 'index:value' after label, found '%.*s%s'",
                                    p->path, (long long)p->lineno, PETRELI_QUOTE(s, len));
        return petrel_error_set(
            PETREL_ERR_FORMAT, "%s:%lld: expected 'index:value' after '%.*s%s', found '%.*s%s'",
            p->path, (long long)p->lineno, PETRELI_QUOTE(prev, prev_len), PETRELI_QUOTE(s, len));
    }
    /* Digits only: strtoll would also take signs, spaces and overflow quietly. */
    int64_t index = 0;
    if (colon == s) goto bad_index;
    for (const char *c = s; c < colon; c++) {
        if (*c < '0' || *c > '9') goto bad_index;
        index = index * 10 + (*c - '0');
        if (index > (int64_t)INT32_MAX + 1)
            return petrel_error_set(
                PETREL_ERR_FORMAT, "%s:%lld: index '%.*s%s' is above the limit 2147483648", p->path,
                (long long)p->lineno, PETRELI_QUOTE(s, (size_t)(colon - s)));
    }
    if (index == 0)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: index 0 in '%.*s%s': libsvm indices start at 1", p->path,
                                (long long)p->lineno, PETRELI_QUOTE(s, len));
    if (index <= *last_index)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: index %lld after index %lld: indices must be strictly "
                                "increasing",
                                p->path, (long long)p->lineno, (long long)index,
                                (long long)*last_index);
    char *end;
    double v;
    size_t vlen = len - (size_t)(colon + 1 - s);
    if (!petreli_parse_double(colon + 1, &end, &v) || end != s + len || v > FLT_MAX || v < -FLT_MAX)
        return petrel_error_set(
            PETREL_ERR_FORMAT, "%s:%lld: expected a finite float after '%lld:', found '%.*s%s'",
            p->path, (long long)p->lineno, (long long)index, PETRELI_QUOTE(colon + 1, vlen));
    *last_index = index;
    if (index > p->max_index) p->max_index = index;
    return push_entry(p, (int32_t)(index - 1), (float)v);

bad_index:
    return petrel_error_set(PETREL_ERR_FORMAT,
                            "%s:%lld: expected a positive integer index before ':', found '%.*s%s'",
                            p->path, (long long)p->lineno, PETRELI_QUOTE(s, len));
}

static petrel_err parse_line(libsvm_parse *p, char *line, size_t len) {
    char *hash = memchr(line, '#', len);
    if (hash) *hash = '\0';
    char *s = line;
    while (is_blank(*s)) s++;
    if (!*s) return PETREL_OK; /* blank or comment-only */

    size_t tl = token_len(s);
    char *end;
    double label;
    if (!petreli_parse_double(s, &end, &label) || end != s + tl)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: expected a finite numeric label, found '%.*s%s'", p->path,
                                (long long)p->lineno, PETRELI_QUOTE(s, tl));
    if (p->train && petreli_label_lookup(p->train, label) < 0)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: label '%.*s%s' is not one of the %d classes of the "
                                "training set",
                                p->path, (long long)p->lineno, PETRELI_QUOTE(s, tl),
                                (int)p->train->num_classes);
    const char *prev = NULL;
    size_t prev_len = 0;
    int64_t last_index = 0;
    s += tl;
    for (;;) {
        while (is_blank(*s)) s++;
        if (!*s) break;
        tl = token_len(s);
        petrel_err err = parse_entry(p, s, tl, prev, prev_len, &last_index);
        if (err != PETREL_OK) return err;
        prev = s;
        prev_len = tl;
        s += tl;
    }
    return push_row(p, label);
}

/* Reads path into a new dataset; train as in libsvm_parse. */
static petrel_err load(petrel_dataset **out, const char *path, int64_t dim_hint,
                       const petrel_dataset *train) {
    libsvm_parse p;
    memset(&p, 0, sizeof p);
    p.path = path;
    p.train = train;
    petreli_lines lines;
    memset(&lines, 0, sizeof lines);
    petrel_dataset *d = NULL;
    petrel_err err;
    void *a;

    /* Room for one row and one entry up front, so that no array is ever NULL
     * (an empty CSR still hands out valid pointers). */
    a = p.row_ptr;
    err = petreli_grow(&a, &p.row_cap, 1, sizeof *p.row_ptr);
    p.row_ptr = a;
    if (err != PETREL_OK) goto fail;
    p.row_ptr[0] = 0;
    a = p.col;
    err = petreli_grow(&a, &p.col_cap, 1, sizeof *p.col);
    p.col = a;
    if (err != PETREL_OK) goto fail;
    a = p.val;
    err = petreli_grow(&a, &p.val_cap, 1, sizeof *p.val);
    p.val = a;
    if (err != PETREL_OK) goto fail;
    if ((err = petreli_lines_open(&lines, path)) != PETREL_OK) goto fail;
    for (;;) {
        char *line;
        size_t len;
        if ((err = petreli_lines_next(&lines, &line, &len)) != PETREL_OK) goto fail;
        if (!line) break;
        p.lineno = lines.lineno;
        if ((err = parse_line(&p, line, len)) != PETREL_OK) goto fail;
    }
    petreli_lines_close(&lines);
    if (p.n == 0) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: no samples: expected lines of 'label index:value ...'", path);
        goto fail;
    }

    if (!(d = petreli_dataset_alloc())) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    d->y = petrel_malloc((size_t)p.n * sizeof *d->y);
    if (!d->y) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if (train) {
        d->num_classes = train->num_classes;
        if (train->label_values) {
            d->label_values = petrel_malloc((size_t)train->num_classes * sizeof(double));
            if (!d->label_values) {
                err = PETREL_ERR_NOMEM;
                goto fail;
            }
            memcpy(d->label_values, train->label_values,
                   (size_t)train->num_classes * sizeof(double));
        }
        for (int64_t i = 0; i < p.n; i++) d->y[i] = petreli_label_lookup(train, p.raw[i]);
    } else {
        err = petreli_labels_map(p.raw, p.n, d->y, &d->label_values, &d->num_classes);
        if (err != PETREL_OK) goto fail;
    }
    int64_t dim = p.max_index > dim_hint ? p.max_index : dim_hint;
    d->n = p.n;
    d->dim = dim;
    d->sparse.rows = p.n;
    d->sparse.cols = dim;
    d->sparse.nnz = p.nnz;
    d->sparse.row_ptr = p.row_ptr;
    d->sparse.col = p.col;
    d->sparse.val = p.val;
    petrel_free(p.raw);
    *out = d;
    return PETREL_OK;

fail:
    petrel_dataset_free(d);
    petreli_lines_close(&lines);
    petrel_free(p.raw);
    petrel_free(p.val);
    petrel_free(p.col);
    petrel_free(p.row_ptr);
    return err;
}

petrel_err petrel_dataset_load_libsvm(petrel_dataset **out, const char *path, int64_t dim_hint) {
    PETREL_ASSERT(out && path, "pass an out-pointer and a path");
    if (dim_hint < 0 || dim_hint > (int64_t)INT32_MAX + 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_load_libsvm: dim_hint %lld: expected 0 .. 2^31",
                                (long long)dim_hint);
    return load(out, path, dim_hint, NULL);
}

petrel_err petrel_dataset_load_libsvm_like(petrel_dataset **out, const char *path,
                                           const petrel_dataset *train) {
    PETREL_ASSERT(out && path && train, "pass an out-pointer, a path and the training set");
    if (train->dim > (int64_t)INT32_MAX + 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_load_libsvm_like: training dim %lld exceeds 2^31",
                                (long long)train->dim);
    return load(out, path, train->dim, train);
}
