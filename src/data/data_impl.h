/* Internals shared by the files of the data module: a byte reader that sees
 * through gzip, a line reader on top of it, growable arrays and label mapping. */
#ifndef PETREL_DATA_IMPL_H
#define PETREL_DATA_IMPL_H

#include "petrel/data.h"

#include <stdio.h>
#include <zlib.h>

/* ---- byte reader (reader.c) ---------------------------------------------- */

/* Reads a plain or gzip-compressed file (gzip detected by its 1f 8b magic) as one
 * stream of bytes. zlib allocates through petrel_malloc, so failure injection
 * reaches it too. */
typedef struct petreli_reader {
    FILE *f;
    const char *path; /* borrowed, for messages */
    bool gz;          /* inflating */
    bool zs_live;     /* zs needs inflateEnd */
    bool eof;         /* no more bytes will come */
    z_stream zs;
    unsigned char *in; /* compressed input buffer (gz only) */
    size_t in_cap;
    unsigned char head[2]; /* bytes read to sniff the magic, not yet delivered (plain only) */
    size_t head_len, head_pos;
    uint64_t offset;    /* bytes delivered so far (decompressed) */
    uint64_t z_done;    /* compressed bytes of the gzip members already finished */
    int z_member;       /* 0-based number of the gzip member being read */
    int64_t file_bytes; /* size on disk, -1 when unknown */
} petreli_reader;

/* Opens path into *r, in place (a z_stream must not move once started); on failure
 * *r is left zeroed. PETREL_ERR_IO when it cannot be opened, PETREL_ERR_NOMEM. */
petrel_err petreli_reader_open(petreli_reader *r, const char *path);

/* Reads up to n bytes into buf; *got < n only at the end of the stream.
 * PETREL_ERR_IO (read error), PETREL_ERR_FORMAT (corrupt or truncated gzip),
 * PETREL_ERR_NOMEM. */
petrel_err petreli_reader_read(petreli_reader *r, void *buf, size_t n, size_t *got);

/* Closes the file and frees the buffers. Accepts a zeroed reader. */
void petreli_reader_close(petreli_reader *r);

/* ---- line reader (reader.c) ---------------------------------------------- */

/* Hands out lines of any length, without their "\n" or "\r\n". */
typedef struct petreli_lines {
    petreli_reader rd;
    char *buf; /* bytes [start, end) not yet handed out */
    size_t cap, start, end;
    int64_t lineno; /* 1-based number of the line last returned */
} petreli_lines;

/* Opens path into *l, in place; on failure *l is left zeroed. Errors as for
 * petreli_reader_open. */
petrel_err petreli_lines_open(petreli_lines *l, const char *path);

/* Sets *line to the next line, NUL-terminated in the reader's buffer and valid
 * until the next call, and *len to its length; *line is NULL at the end of the
 * file. A NUL byte inside a line is a PETREL_ERR_FORMAT (a binary file). */
petrel_err petreli_lines_next(petreli_lines *l, char **line, size_t *len);

/* Closes the file and frees the buffer. Accepts a zeroed reader. */
void petreli_lines_close(petreli_lines *l);

/* ---- helpers (dataset.c) ------------------------------------------------- */

/* printf arguments for "%.*s%s" that quote at most 40 bytes of a token of length
 * len, with "..." when cut: a garbage line can be megabytes long. */
#define PETRELI_QUOTE(s, len) (int)((len) < 40 ? (len) : 40), (s), ((len) > 40 ? "..." : "")

/* Makes *p (an array of elem-byte items with room for *cap) hold at least need
 * items, doubling; *p and *cap stay as they were on failure (PETREL_ERR_NOMEM). */
petrel_err petreli_grow(void **p, size_t *cap, size_t need, size_t elem);

/* A zeroed dataset from petrel_calloc, or NULL (error recorded). */
petrel_dataset *petreli_dataset_alloc(void);

/* Numbers the n raw label values in ascending order: y[i] becomes the class of
 * raw[i], *values_out the num_classes distinct values (caller frees).
 * PETREL_ERR_FORMAT when there are more than INT32_MAX classes, PETREL_ERR_NOMEM. */
petrel_err petreli_labels_map(const double *raw, int64_t n, int32_t *y, double **values_out,
                              int32_t *num_classes_out);

/* The class of label value v under train's classes (label_values, or 0..num_classes-1
 * when train has none), or -1 when train has no such class. */
int32_t petreli_label_lookup(const petrel_dataset *train, double v);

/* Parses a finite floating-point number at s, as strtod does after skipping no
 * whitespace; *end is set past it. False when s holds no number or it is not finite. */
bool petreli_parse_double(const char *s, char **end, double *v);

#endif
