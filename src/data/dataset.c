/* The dataset object, label numbering, and dense/sparse conversion. */
#include "data/data_impl.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* petrel_dataset_to_dense refuses above this: a dense copy of a large sparse set
 * (say 10^6 x 10^6) is almost always a mistake, and should not take the machine down. */
#define DENSE_LIMIT_BYTES (4ull << 30)

void petrel_dataset_free(petrel_dataset *d) {
    if (!d) return;
    petrel_free(d->label_values);
    petrel_free(d->y);
    petrel_csr_fini(&d->sparse);
    petrel_free(d->x);
    petrel_free(d);
}

bool petrel_dataset_is_sparse(const petrel_dataset *d) {
    return d->x == NULL;
}

petrel_err petreli_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return PETREL_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elem)
            return petrel_error_set(PETREL_ERR_NOMEM, "array of %zu items of %zu bytes overflows",
                                    need, elem);
        n *= 2;
    }
    void *q = petrel_realloc(*p, n * elem);
    if (!q) return PETREL_ERR_NOMEM; /* petrel_realloc recorded the detail */
    *p = q;
    *cap = n;
    return PETREL_OK;
}

petrel_dataset *petreli_dataset_alloc(void) {
    return petrel_calloc(1, sizeof(petrel_dataset));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Index of v in the ascending array values (k entries), or -1. */
static int32_t find_value(const double *values, int32_t k, double v) {
    int32_t lo = 0, hi = k;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (values[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < k && values[lo] == v ? lo : -1;
}

petrel_err petreli_labels_map(const double *raw, int64_t n, int32_t *y, double **values_out,
                              int32_t *num_classes_out) {
    petrel_err err = PETREL_OK;
    double *values = NULL;
    double *sorted = petrel_malloc((size_t)n * sizeof *sorted);
    if (!sorted) return PETREL_ERR_NOMEM;
    memcpy(sorted, raw, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (k == 0 || sorted[i] != sorted[k - 1]) sorted[k++] = sorted[i];
    if (k > INT32_MAX) {
        err = petrel_error_set(PETREL_ERR_FORMAT, "%lld distinct labels: more than 2^31-1 classes",
                               (long long)k);
        goto fail;
    }
    values = petrel_malloc((size_t)k * sizeof *values);
    if (!values) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    memcpy(values, sorted, (size_t)k * sizeof *values);
    for (int64_t i = 0; i < n; i++) y[i] = find_value(values, (int32_t)k, raw[i]);
    petrel_free(sorted);
    *values_out = values;
    *num_classes_out = (int32_t)k;
    return PETREL_OK;

fail:
    petrel_free(values);
    petrel_free(sorted);
    return err;
}

int32_t petreli_label_lookup(const petrel_dataset *train, double v) {
    if (train->label_values) return find_value(train->label_values, train->num_classes, v);
    /* IDX-style classes: the label is the class. */
    if (v >= 0 && v < train->num_classes && v == floor(v)) return (int32_t)v;
    return -1;
}

bool petreli_parse_double(const char *s, char **end, double *v) {
    /* strtod would skip leading space, which the callers treat as a separator. */
    if (*s == '\0' || isspace((unsigned char)*s)) return false;
    char *e;
    double x = strtod(s, &e);
    if (e == s || !isfinite(x)) return false;
    *end = e;
    *v = x;
    return true;
}

/* A new dataset with d's shape, labels and label values, and no features. */
static petrel_err copy_labels(petrel_dataset **out, const petrel_dataset *d) {
    petrel_dataset *c = petreli_dataset_alloc();
    if (!c) return PETREL_ERR_NOMEM;
    c->n = d->n;
    c->dim = d->dim;
    c->channels = d->channels;
    c->height = d->height;
    c->width = d->width;
    c->num_classes = d->num_classes;
    c->y = petrel_malloc((size_t)d->n * sizeof *c->y);
    if (!c->y) goto fail;
    memcpy(c->y, d->y, (size_t)d->n * sizeof *c->y);
    if (d->label_values) {
        c->label_values = petrel_malloc((size_t)d->num_classes * sizeof(double));
        if (!c->label_values) goto fail;
        memcpy(c->label_values, d->label_values, (size_t)d->num_classes * sizeof(double));
    }
    *out = c;
    return PETREL_OK;

fail:
    petrel_dataset_free(c);
    return PETREL_ERR_NOMEM;
}

petrel_err petrel_dataset_to_dense(petrel_dataset **out, const petrel_dataset *d) {
    PETREL_ASSERT(out && d, "pass an out-pointer and a dataset");
    if (d->n > 0 && (uint64_t)d->dim > DENSE_LIMIT_BYTES / sizeof(float) / (uint64_t)d->n)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_to_dense: %lld x %lld floats would take more "
                                "than the 4 GiB limit; keep the dataset sparse",
                                (long long)d->n, (long long)d->dim);
    petrel_dataset *c = NULL;
    petrel_err err = copy_labels(&c, d);
    if (err != PETREL_OK) return err;
    size_t count = (size_t)d->n * (size_t)d->dim;
    c->x = petrel_calloc(count, sizeof *c->x);
    if (!c->x) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if (d->x) {
        memcpy(c->x, d->x, count * sizeof *c->x);
    } else {
        const petrel_csr *m = &d->sparse;
        for (int64_t r = 0; r < m->rows; r++)
            for (int64_t k = m->row_ptr[r]; k < m->row_ptr[r + 1]; k++)
                c->x[r * d->dim + m->col[k]] = m->val[k];
    }
    *out = c;
    return PETREL_OK;

fail:
    petrel_dataset_free(c);
    return err;
}

petrel_err petrel_dataset_to_sparse(petrel_dataset **out, const petrel_dataset *d) {
    PETREL_ASSERT(out && d, "pass an out-pointer and a dataset");
    if (d->dim > (int64_t)INT32_MAX + 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_to_sparse: dim %lld exceeds the int32 column range",
                                (long long)d->dim);
    petrel_dataset *c = NULL;
    petrel_err err = copy_labels(&c, d);
    if (err != PETREL_OK) return err;
    if (!d->x) {
        const petrel_csr *m = &d->sparse;
        if ((err = petrel_csr_init(&c->sparse, m->rows, m->cols, m->nnz)) != PETREL_OK) goto fail;
        memcpy(c->sparse.row_ptr, m->row_ptr, (size_t)(m->rows + 1) * sizeof *m->row_ptr);
        memcpy(c->sparse.col, m->col, (size_t)m->nnz * sizeof *m->col);
        memcpy(c->sparse.val, m->val, (size_t)m->nnz * sizeof *m->val);
    } else {
        int64_t nnz = 0;
        for (int64_t i = 0; i < d->n * d->dim; i++) nnz += d->x[i] != 0.0f;
        if ((err = petrel_csr_init(&c->sparse, d->n, d->dim, nnz)) != PETREL_OK) goto fail;
        int64_t k = 0;
        for (int64_t r = 0; r < d->n; r++) {
            const float *row = d->x + r * d->dim;
            for (int64_t j = 0; j < d->dim; j++) {
                if (row[j] == 0.0f) continue;
                c->sparse.col[k] = (int32_t)j;
                c->sparse.val[k++] = row[j];
            }
            c->sparse.row_ptr[r + 1] = k;
        }
    }
    *out = c;
    return PETREL_OK;

fail:
    petrel_dataset_free(c);
    return err;
}
