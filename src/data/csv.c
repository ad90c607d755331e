/*
 * CSV reader for numeric tables: every row holds the same number of fields, all
 * numbers, one of them the label. An optional first line of column names is
 * skipped (it must have the same number of fields). Blank lines are skipped;
 * blanks around a number are allowed; quoting is not supported. Lines may be of
 * any length and end in "\n" or "\r\n"; the file may be gzip-compressed.
 */
#include "data/data_impl.h"

#include <ctype.h>
#include <float.h>
#include <string.h>

petrel_csv_options petrel_csv_options_default(void) {
    petrel_csv_options o = {.label_column = -1, .header = false, .delimiter = ','};
    return o;
}

/* Blanks that surround a field; the delimiter itself may be one of them. */
static bool is_pad(char c, char delim) {
    return c != delim && (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f');
}

static int64_t count_fields(const char *s, size_t len, char delim) {
    int64_t k = 1;
    for (size_t i = 0; i < len; i++) k += s[i] == delim;
    return k;
}

static bool is_blank_line(const char *s) {
    for (; *s; s++)
        if (!strchr(" \t\r\v\f", *s)) return false;
    return true;
}

petrel_err petrel_dataset_load_csv(petrel_dataset **out, const char *path,
                                   petrel_csv_options opts) {
    PETREL_ASSERT(out && path, "pass an out-pointer and a path");
    char delim = opts.delimiter;
    /* A delimiter that can occur inside a number would make rows ambiguous. */
    if (delim == '\0' || delim == '\n' || delim == '\r' || delim == '.' || delim == '+' ||
        delim == '-' || isalnum((unsigned char)delim))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_load_csv: delimiter 0x%02x can be part of a "
                                "number or a line end; use ',', ';', '\\t', ' ' or '|'",
                                (unsigned)(unsigned char)delim);
    if (opts.label_column < -1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_dataset_load_csv: label_column %d: expected -1 (last) or "
                                "a 0-based column",
                                opts.label_column);

    petreli_lines lines;
    memset(&lines, 0, sizeof lines);
    float *x = NULL;
    double *raw = NULL;
    size_t x_cap = 0, raw_cap = 0;
    int64_t n = 0, ncols = -1, label_col = -1;
    bool header_pending = opts.header;
    petrel_dataset *d = NULL;
    petrel_err err;
    void *a;

    if ((err = petreli_lines_open(&lines, path)) != PETREL_OK) goto fail;
    for (;;) {
        char *line;
        size_t len;
        if ((err = petreli_lines_next(&lines, &line, &len)) != PETREL_OK) goto fail;
        if (!line) break;
        long long ln = (long long)lines.lineno;
        if (is_blank_line(line)) continue;
        int64_t fields = count_fields(line, len, delim);
        if (ncols < 0) {
            if (fields < 2) {
                err = petrel_error_set(PETREL_ERR_FORMAT,
                                       "%s:%lld: expected at least 2 columns (features and a "
                                       "label) separated by '%c', found 1",
                                       path, ln, delim);
                goto fail;
            }
            ncols = fields;
            label_col = opts.label_column < 0 ? ncols - 1 : opts.label_column;
            if (label_col >= ncols) {
                err = petrel_error_set(PETREL_ERR_INVALID,
                                       "%s:%lld: label column %d does not exist in rows of %lld "
                                       "columns",
                                       path, ln, opts.label_column, (long long)ncols);
                goto fail;
            }
        } else if (fields != ncols) {
            err = petrel_error_set(PETREL_ERR_FORMAT, "%s:%lld: expected %lld columns, found %lld",
                                   path, ln, (long long)ncols, (long long)fields);
            goto fail;
        }
        if (header_pending) {
            header_pending = false;
            continue;
        }

        int64_t dim = ncols - 1;
        a = x;
        err = petreli_grow(&a, &x_cap, (size_t)((n + 1) * dim), sizeof *x);
        x = a;
        if (err != PETREL_OK) goto fail;
        a = raw;
        err = petreli_grow(&a, &raw_cap, (size_t)n + 1, sizeof *raw);
        raw = a;
        if (err != PETREL_OK) goto fail;

        float *row = x + n * dim;
        char *s = line;
        for (int64_t c = 0; c < ncols; c++) {
            while (is_pad(*s, delim)) s++;
            const char *field = s;
            size_t flen = 0;
            while (field[flen] && field[flen] != delim) flen++;
            char *end;
            double v;
            bool ok = petreli_parse_double(s, &end, &v);
            if (ok) {
                while (is_pad(*end, delim)) end++;
                ok = (*end == delim || *end == '\0') && v <= FLT_MAX && v >= -FLT_MAX;
            }
            if (!ok) {
                err = petrel_error_set(PETREL_ERR_FORMAT,
                                       "%s:%lld: column %lld: expected a finite number, found "
                                       "'%.*s%s'",
                                       path, ln, (long long)c + 1, PETRELI_QUOTE(field, flen));
                goto fail;
            }
            if (c == label_col)
                raw[n] = v;
            else
                *row++ = (float)v;
            s = *end ? end + 1 : end;
        }
        n++;
    }
    petreli_lines_close(&lines);
    if (n == 0) {
        err = petrel_error_set(PETREL_ERR_FORMAT, "%s: no samples: expected rows of numbers", path);
        goto fail;
    }

    if (!(d = petreli_dataset_alloc())) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if (!(d->y = petrel_malloc((size_t)n * sizeof *d->y))) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    if ((err = petreli_labels_map(raw, n, d->y, &d->label_values, &d->num_classes)) != PETREL_OK)
        goto fail;
    d->n = n;
    d->dim = ncols - 1;
    d->x = x;
    petrel_free(raw);
    *out = d;
    return PETREL_OK;

fail:
    petrel_dataset_free(d);
    petreli_lines_close(&lines);
    petrel_free(raw);
    petrel_free(x);
    return err;
}
