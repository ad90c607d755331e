/*
 * Checkpoint files: a model's parameters with names and shapes.
 *
 * All integers little-endian. Sizes are checked against the file's real length
 * before anything is trusted.
 *
 *   offset  width   field
 *   0       8       magic "PETRELCK"
 *   8       4       format version, u32 = 1
 *   12      4       parameter count P, u32 (at most 65536)
 *   16      4       metadata length L, u32 (at most 65536)
 *   20      L       metadata: free text, e.g. "model=mlp hidden=256" (no NUL)
 *   then P parameter records, in declaration order:
 *           2       name length N, u16 (1 .. 255)
 *           N       name bytes
 *           1       ndim, u8 (1 .. 4)
 *           8*ndim  sizes, u64 each, outermost first
 *   then P data blocks, in the same order: prod(sizes) float32 values each
 *   last 4  CRC-32 (zlib polynomial) of every byte before it, u32
 *
 * A load reads the whole file, checks the length and the CRC, parses every
 * record and matches it against the registry before copying anything, so a
 * rejected file leaves the model untouched.
 */
#include "petrel/nn.h"

#include "core/core_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC        "PETRELCK"
#define VERSION      1u
#define MAX_PARAMS   65536u
#define MAX_META     65536u
#define HEADER_BYTES 20u

/* ---- little-endian byte buffer ----------------------------------------------- */

typedef struct wbuf {
    unsigned char *p;
    size_t len, cap;
    bool failed;
} wbuf;

static void put(wbuf *b, const void *src, size_t n) {
    if (b->failed || n == 0) return; /* n == 0 may come with src NULL (no metadata) */
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *np = petrel_realloc(b->p, cap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_le(wbuf *b, uint64_t v, int bytes) {
    unsigned char tmp[8];
    for (int i = 0; i < bytes; i++) tmp[i] = (unsigned char)(v >> (8 * i));
    put(b, tmp, (size_t)bytes);
}

static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static bool host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* ---- save ---------------------------------------------------------------------- */

petrel_err petrel_checkpoint_save(const petrel_params *p, const char *meta, const char *path) {
    if (!host_is_little_endian())
        return petrel_error_set(PETREL_ERR_UNSUPPORTED, "checkpoints need a little-endian host");
    size_t meta_len = meta ? strlen(meta) : 0;
    if (meta_len > MAX_META)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: metadata longer than %u bytes", path,
                                MAX_META);
    int count = petrel_params_num(p);
    wbuf b = {0};
    put(&b, MAGIC, 8);
    put_le(&b, VERSION, 4);
    put_le(&b, (uint64_t)count, 4);
    put_le(&b, meta_len, 4);
    put(&b, meta, meta_len);
    for (int i = 0; i < count; i++) {
        const char *name = petrel_params_name(p, i);
        const petrel_tensor *t = petrel_params_get(p, i);
        size_t nlen = strlen(name);
        if (nlen == 0 || nlen > 255) {
            petrel_free(b.p);
            return petrel_error_set(PETREL_ERR_INVALID, "parameter name '%s' must be 1..255 bytes",
                                    name);
        }
        put_le(&b, nlen, 2);
        put(&b, name, nlen);
        put_le(&b, (uint64_t)t->ndim, 1);
        for (int d = 0; d < t->ndim; d++) put_le(&b, (uint64_t)t->ne[d], 8);
    }
    for (int i = 0; i < count; i++) {
        const petrel_tensor *t = petrel_params_get(p, i);
        put(&b, t->data, (size_t)petrel_tensor_numel(t) * sizeof(float));
    }
    uint32_t crc = (uint32_t)crc32(0L, b.p, (uInt)b.len);
    put_le(&b, crc, 4);
    if (b.failed) {
        petrel_free(b.p);
        return PETREL_ERR_NOMEM;
    }
    petrel_err err = petreli_write_file_atomic(path, b.p, b.len);
    petrel_free(b.p);
    return err;
}

/* ---- load ---------------------------------------------------------------------- */

static petrel_err read_whole(const char *path, unsigned char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return petrel_error_set(PETREL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return petrel_error_set(PETREL_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = petrel_malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return PETREL_ERR_NOMEM;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t r = read(fd, buf + done, size - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        done += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = done;
    return PETREL_OK;
}

typedef struct record {
    const unsigned char *name;
    size_t name_len;
    int ndim;
    int64_t ne[PETREL_MAX_DIMS];
    const unsigned char *data;
} record;

/* Checks length, magic, version and CRC; returns the parameter count and the
 * metadata span. */
static petrel_err check_header(const char *path, const unsigned char *b, size_t len,
                               uint32_t *count, const unsigned char **meta, size_t *meta_len) {
    if (len < HEADER_BYTES + 4)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: truncated: %zu bytes, a checkpoint has at least %u", path, len,
                                HEADER_BYTES + 4);
    if (memcmp(b, MAGIC, 8) != 0)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: not a petrel checkpoint (magic at byte 0 is not \"PETRELCK\")",
                                path);
    uint32_t version = (uint32_t)get_le(b + 8, 4);
    if (version != VERSION)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: format version %u at byte 8, this petrel reads version %u",
                                path, version, VERSION);
    uint32_t stored = (uint32_t)get_le(b + len - 4, 4);
    uint32_t actual = (uint32_t)crc32(0L, b, (uInt)(len - 4));
    if (stored != actual)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: checksum mismatch (stored %08x, computed %08x): the file is "
                                "truncated or corrupted",
                                path, stored, actual);
    *count = (uint32_t)get_le(b + 12, 4);
    uint32_t ml = (uint32_t)get_le(b + 16, 4);
    if (*count > MAX_PARAMS || ml > MAX_META || HEADER_BYTES + (size_t)ml > len - 4)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s: header at byte 12 declares %u parameters and %u metadata "
                                "bytes, beyond the limits or the file",
                                path, *count, ml);
    *meta = b + HEADER_BYTES;
    *meta_len = ml;
    return PETREL_OK;
}

static char *dup_meta(const unsigned char *meta, size_t len) {
    char *s = petrel_malloc(len + 1);
    if (s) {
        memcpy(s, meta, len);
        s[len] = '\0';
    }
    return s;
}

petrel_err petrel_checkpoint_read_meta(const char *path, char **meta) {
    unsigned char *b;
    size_t len;
    petrel_err err = read_whole(path, &b, &len);
    if (err != PETREL_OK) return err;
    uint32_t count;
    const unsigned char *m;
    size_t ml;
    err = check_header(path, b, len, &count, &m, &ml);
    if (err == PETREL_OK) {
        char *s = dup_meta(m, ml);
        if (s)
            *meta = s;
        else
            err = PETREL_ERR_NOMEM;
    }
    petrel_free(b);
    return err;
}

petrel_err petrel_checkpoint_load(petrel_params *p, const char *path, char **meta) {
    if (!host_is_little_endian())
        return petrel_error_set(PETREL_ERR_UNSUPPORTED, "checkpoints need a little-endian host");
    unsigned char *b = NULL;
    size_t len = 0;
    record *recs = NULL;
    char *meta_copy = NULL;
    petrel_err err = read_whole(path, &b, &len);
    if (err != PETREL_OK) return err;
    uint32_t count;
    const unsigned char *m;
    size_t ml;
    err = check_header(path, b, len, &count, &m, &ml);
    if (err != PETREL_OK) goto fail;
    if ((int)count != petrel_params_num(p)) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: holds %u parameters, the model has %d (another model?)", path,
                               count, petrel_params_num(p));
        goto fail;
    }
    recs = petrel_calloc(count ? count : 1, sizeof *recs);
    if (!recs) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    size_t off = HEADER_BYTES + ml, end = len - 4;
    for (uint32_t i = 0; i < count; i++) {
        record *r = &recs[i];
        if (end - off < 3) goto truncated;
        r->name_len = (size_t)get_le(b + off, 2);
        off += 2;
        if (r->name_len == 0 || end - off < r->name_len + 1) goto truncated;
        r->name = b + off;
        off += r->name_len;
        r->ndim = b[off++];
        if (r->ndim < 1 || r->ndim > PETREL_MAX_DIMS) {
            err = petrel_error_set(PETREL_ERR_FORMAT, "%s: byte %zu: parameter %u has %d dims",
                                   path, off - 1, i, r->ndim);
            goto fail;
        }
        if (end - off < 8 * (size_t)r->ndim) goto truncated;
        for (int d = 0; d < r->ndim; d++, off += 8) r->ne[d] = (int64_t)get_le(b + off, 8);
    }
    for (uint32_t i = 0; i < count; i++) {
        record *r = &recs[i];
        const petrel_tensor *t = petrel_params_get(p, (int)i);
        const char *want = petrel_params_name(p, (int)i);
        bool same = strlen(want) == r->name_len && memcmp(want, r->name, r->name_len) == 0 &&
                    r->ndim == t->ndim;
        for (int d = 0; same && d < r->ndim; d++) same = r->ne[d] == t->ne[d];
        if (!same) {
            char shape[64];
            err = petrel_error_set(PETREL_ERR_FORMAT,
                                   "%s: parameter %u is '%.*s' with %d dims, the model expects "
                                   "'%s' %s",
                                   path, i, (int)r->name_len, (const char *)r->name, r->ndim, want,
                                   petrel_tensor_shape_str(t, shape, sizeof shape));
            goto fail;
        }
        size_t bytes = (size_t)petrel_tensor_numel(t) * sizeof(float);
        if (end - off < bytes) goto truncated;
        r->data = b + off;
        off += bytes;
    }
    if (off != end) {
        err = petrel_error_set(PETREL_ERR_FORMAT, "%s: %zu unexpected bytes after the data at %zu",
                               path, end - off, off);
        goto fail;
    }
    if (meta && !(meta_copy = dup_meta(m, ml))) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < count; i++) {
        petrel_tensor *t = petrel_params_get(p, (int)i);
        memcpy(t->data, recs[i].data, (size_t)petrel_tensor_numel(t) * sizeof(float));
    }
    if (meta) *meta = meta_copy;
    petrel_free(recs);
    petrel_free(b);
    return PETREL_OK;
truncated:
    err = petrel_error_set(PETREL_ERR_FORMAT, "%s: truncated at byte %zu while reading records",
                           path, off);
fail:
    petrel_free(meta_copy);
    petrel_free(recs);
    petrel_free(b);
    return err;
}
