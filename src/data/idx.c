/*
 * IDX reader: the format of MNIST and Fashion-MNIST, plain or gzip-compressed.
 *
 *   offset    width     meaning
 *   0         2         zero
 *   2         1         element type: 0x08 = unsigned byte (the only one read here)
 *   3         1         number of dimensions nd: 3 for images, 1 for labels
 *   4         4 * nd    dimensions, big-endian u32: count [, rows, cols]
 *   4 + 4*nd  product   the elements, unsigned bytes, row-major
 *
 * The header is not trusted for allocation: the element buffer grows (doubling,
 * capped at the declared size) only as bytes arrive, so a 16-byte file claiming
 * 2^31 images costs 1 MiB at most before it is reported as truncated. For a plain
 * file the size on disk gives the exact capacity up front.
 */
#include "data/data_impl.h"

#include <string.h>

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define FIRST_CHUNK      (1u << 20)

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads the magic and nd dimensions of an IDX header into dims. */
static petrel_err read_header(petreli_reader *r, uint32_t want_magic, int nd, uint32_t *dims) {
    unsigned char h[16];
    size_t want = 4 + 4 * (size_t)nd, got;
    petrel_err err = petreli_reader_read(r, h, want, &got);
    if (err != PETREL_OK) return err;
    if (got < 4)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: offset %zu: the file ends inside the 4-byte IDX magic",
                                r->path, got);
    uint32_t magic = be32(h);
    if (magic != want_magic) {
        const char *hint = "";
        if (magic == IDX_LABELS_MAGIC) hint = " (an IDX labels file: are the paths swapped?)";
        if (magic == IDX_IMAGES_MAGIC) hint = " (an IDX images file: are the paths swapped?)";
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: offset 0: expected IDX magic 0x%08x (unsigned bytes, %d "
                                "dimension%s), found 0x%08x%s",
                                r->path, want_magic, nd, nd == 1 ? "" : "s", magic, hint);
    }
    if (got < want)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: offset %zu: the file ends inside the header, which holds %d "
                                "big-endian 4-byte dimensions after the magic",
                                r->path, got, nd);
    for (int i = 0; i < nd; i++) {
        dims[i] = be32(h + 4 + 4 * i);
        if (dims[i] == 0)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s: offset %d: dimension %d is 0; expected a positive size",
                                    r->path, 4 + 4 * i, i);
    }
    return PETREL_OK;
}

/* Reads up to declared bytes into a new buffer that grows as they arrive; *have
 * tells how many came (fewer only when the file is short). Bytes beyond
 * declared are an error, so that a wrong header cannot pass unnoticed. */
static petrel_err read_body(petreli_reader *r, uint64_t declared, unsigned char **out,
                            uint64_t *have_out) {
    uint64_t hint = FIRST_CHUNK;
    if (!r->gz && r->file_bytes >= 0)
        hint = (uint64_t)r->file_bytes > r->offset ? (uint64_t)r->file_bytes - r->offset : 1;
    uint64_t cap = declared < hint ? declared : hint;
    if (cap > SIZE_MAX) cap = SIZE_MAX;
    unsigned char *buf = petrel_malloc((size_t)cap);
    if (!buf) return PETREL_ERR_NOMEM;
    uint64_t have = 0;
    petrel_err err;
    for (;;) {
        if (have == cap) {
            if (have == declared) break;
            uint64_t next = cap * 2 < declared ? cap * 2 : declared;
            if (next > SIZE_MAX) next = SIZE_MAX;
            unsigned char *p = petrel_realloc(buf, (size_t)next);
            if (!p) {
                err = PETREL_ERR_NOMEM;
                goto fail;
            }
            buf = p;
            cap = next;
        }
        size_t want = (size_t)(cap - have), got;
        if ((err = petreli_reader_read(r, buf + have, want, &got)) != PETREL_OK) goto fail;
        have += got;
        if (got < want) break; /* the end of the file */
    }
    if (have == declared) {
        unsigned char extra;
        size_t got;
        if ((err = petreli_reader_read(r, &extra, 1, &got)) != PETREL_OK) goto fail;
        if (got) {
            err = petrel_error_set(PETREL_ERR_FORMAT,
                                   "%s: offset %llu: the file continues past the %llu bytes of "
                                   "data its header declares",
                                   r->path, (unsigned long long)(r->offset - 1),
                                   (unsigned long long)declared);
            goto fail;
        }
    }
    *out = buf;
    *have_out = have;
    return PETREL_OK;

fail:
    petrel_free(buf);
    return err;
}

petrel_err petrel_dataset_load_idx(petrel_dataset **out, const char *images_path,
                                   const char *labels_path) {
    PETREL_ASSERT(out && images_path && labels_path, "pass an out-pointer and two paths");
    petreli_reader ri, rl;
    memset(&ri, 0, sizeof ri);
    memset(&rl, 0, sizeof rl);
    unsigned char *pix = NULL, *lab = NULL;
    petrel_dataset *d = NULL;
    uint32_t idims[3], ldims[1];
    uint64_t have;
    petrel_err err;

    /* Both headers first: a mismatch costs no data reading. */
    if ((err = petreli_reader_open(&ri, images_path)) != PETREL_OK) goto fail;
    if ((err = read_header(&ri, IDX_IMAGES_MAGIC, 3, idims)) != PETREL_OK) goto fail;
    if ((err = petreli_reader_open(&rl, labels_path)) != PETREL_OK) goto fail;
    if ((err = read_header(&rl, IDX_LABELS_MAGIC, 1, ldims)) != PETREL_OK) goto fail;
    uint64_t n = idims[0], rows = idims[1], cols = idims[2];
    /* The batcher and CSR use int32 columns; a larger image is no real image. */
    if (rows * cols > INT32_MAX) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: offset 8: header declares images of %llux%llu pixels, more "
                               "than the 2^31-1 features petrel handles",
                               images_path, (unsigned long long)rows, (unsigned long long)cols);
        goto fail;
    }
    if (ldims[0] != n) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: offset 4: header declares %llu images but %s declares %lu "
                               "labels; expected equal counts",
                               images_path, (unsigned long long)n, labels_path,
                               (unsigned long)ldims[0]);
        goto fail;
    }

    if ((err = read_body(&rl, n, &lab, &have)) != PETREL_OK) goto fail;
    if (have < n) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: offset %llu: truncated: header declares %llu labels (%llu "
                               "bytes) but the file holds only %llu bytes after the 8-byte header",
                               labels_path, (unsigned long long)(8 + have), (unsigned long long)n,
                               (unsigned long long)n, (unsigned long long)have);
        goto fail;
    }
    /* Cannot overflow: n < 2^32 and rows * cols < 2^31. */
    uint64_t bytes = n * rows * cols;
    if ((err = read_body(&ri, bytes, &pix, &have)) != PETREL_OK) goto fail;
    if (have < bytes) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: offset %llu: truncated: header declares %llu images of "
                               "%llux%llu (%llu bytes) but the file holds only %llu bytes after "
                               "the 16-byte header",
                               images_path, (unsigned long long)(16 + have), (unsigned long long)n,
                               (unsigned long long)rows, (unsigned long long)cols,
                               (unsigned long long)bytes, (unsigned long long)have);
        goto fail;
    }
    petreli_reader_close(&rl);
    petreli_reader_close(&ri);

    if (!(d = petreli_dataset_alloc())) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    d->n = (int64_t)n;
    d->dim = (int64_t)(rows * cols);
    d->channels = 1;
    d->height = (int64_t)rows;
    d->width = (int64_t)cols;
    d->x = petrel_malloc((size_t)bytes * sizeof *d->x);
    d->y = petrel_malloc((size_t)n * sizeof *d->y);
    if (!d->x || !d->y) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    float scale[256];
    for (int v = 0; v < 256; v++) scale[v] = (float)v / 255.0f;
    for (uint64_t i = 0; i < bytes; i++) d->x[i] = scale[pix[i]];
    int32_t max_label = 0;
    for (uint64_t i = 0; i < n; i++) {
        d->y[i] = lab[i];
        if (lab[i] > max_label) max_label = lab[i];
    }
    d->num_classes = max_label + 1;
    petrel_free(pix);
    petrel_free(lab);
    *out = d;
    return PETREL_OK;

fail:
    petrel_dataset_free(d);
    petrel_free(pix);
    petrel_free(lab);
    petreli_reader_close(&rl);
    petreli_reader_close(&ri);
    return err;
}
