/*
 * Byte and line readers for the dataset loaders. A file is plain or gzip (RFC 1952,
 * possibly several members back to back, as `cat a.gz b.gz` makes); the loaders
 * see one stream either way and count offsets in decompressed bytes.
 */
#include "data/data_impl.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#define IN_BYTES   (64 * 1024)
#define LINE_BYTES (64 * 1024)

/* zlib's allocator hooks, so that its memory is counted and injectable. */
static voidpf zalloc_petrel(voidpf opaque, uInt items, uInt size) {
    (void)opaque;
    return petrel_calloc(items, size);
}

static void zfree_petrel(voidpf opaque, voidpf p) {
    (void)opaque;
    petrel_free(p);
}

petrel_err petreli_reader_open(petreli_reader *r, const char *path) {
    /* Built in place rather than copied out at the end: zlib's state points back
     * at its z_stream and rejects a moved one. */
    memset(r, 0, sizeof *r);
    r->path = path;
    r->file_bytes = -1;
    petrel_err err;
    r->f = fopen(path, "rb");
    if (!r->f) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fileno(r->f), &st) == 0 && S_ISREG(st.st_mode)) r->file_bytes = st.st_size;

    /* Sniff the gzip magic; the two bytes go back to the stream through head
     * (plain) or the inflater's input (gzip), so pipes work too. */
    r->head_len = fread(r->head, 1, sizeof r->head, r->f);
    if (r->head_len < sizeof r->head && ferror(r->f)) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: read error at offset 0: %s", path,
                               strerror(errno));
        goto fail;
    }
    if (r->head_len == 2 && r->head[0] == 0x1f && r->head[1] == 0x8b) {
        r->gz = true;
        r->in_cap = IN_BYTES;
        r->in = petrel_malloc(r->in_cap);
        if (!r->in) {
            err = petrel_error_set(PETREL_ERR_NOMEM, "%s: out of memory for the gzip buffer", path);
            goto fail;
        }
        memcpy(r->in, r->head, 2);
        r->head_len = 0;
        r->zs.zalloc = zalloc_petrel;
        r->zs.zfree = zfree_petrel;
        r->zs.next_in = r->in;
        r->zs.avail_in = 2;
        /* 16 + 15: gzip wrapper only, largest window. */
        int rc = inflateInit2(&r->zs, 16 + 15);
        if (rc != Z_OK) {
            err = petrel_error_set(rc == Z_MEM_ERROR ? PETREL_ERR_NOMEM : PETREL_ERR_UNSUPPORTED,
                                   "%s: cannot start gzip decompression (zlib error %d)", path, rc);
            goto fail;
        }
        r->zs_live = true;
    }
    return PETREL_OK;

fail:
    petreli_reader_close(r);
    return err;
}

static petrel_err read_plain(petreli_reader *r, unsigned char *buf, size_t n, size_t *got) {
    size_t done = 0;
    while (done < n && r->head_pos < r->head_len) buf[done++] = r->head[r->head_pos++];
    if (done < n) {
        size_t k = fread(buf + done, 1, n - done, r->f);
        done += k;
        if (done < n) {
            if (ferror(r->f))
                return petrel_error_set(PETREL_ERR_IO, "%s: read error at offset %llu: %s", r->path,
                                        (unsigned long long)(r->offset + done), strerror(errno));
            r->eof = true;
        }
    }
    *got = done;
    return PETREL_OK;
}

/* Refills the inflater's input; false at the end of the file. */
static petrel_err refill(petreli_reader *r, bool *more) {
    size_t k = fread(r->in, 1, r->in_cap, r->f);
    if (k == 0 && ferror(r->f))
        return petrel_error_set(PETREL_ERR_IO, "%s: read error at compressed offset %llu: %s",
                                r->path, (unsigned long long)(r->z_done + r->zs.total_in),
                                strerror(errno));
    r->zs.next_in = r->in;
    r->zs.avail_in = (uInt)k;
    *more = k > 0;
    return PETREL_OK;
}

static petrel_err read_gz(petreli_reader *r, unsigned char *buf, size_t n, size_t *got) {
    size_t done = 0;
    petrel_err err;
    while (done < n && !r->eof) {
        bool more = true;
        if (r->zs.avail_in == 0) {
            if ((err = refill(r, &more)) != PETREL_OK) return err;
            if (!more)
                return petrel_error_set(PETREL_ERR_FORMAT,
                                        "%s: gzip data is truncated: the stream ends after %llu "
                                        "compressed bytes (%llu decompressed) without its trailer",
                                        r->path, (unsigned long long)(r->z_done + r->zs.total_in),
                                        (unsigned long long)(r->offset + done));
        }
        size_t want = n - done < UINT_MAX ? n - done : UINT_MAX;
        r->zs.next_out = buf + done;
        r->zs.avail_out = (uInt)want;
        int rc = inflate(&r->zs, Z_NO_FLUSH);
        done += want - r->zs.avail_out;
        if (rc == Z_STREAM_END) {
            /* Another member may follow; the file ends only when no bytes do. */
            if (r->zs.avail_in == 0) {
                if ((err = refill(r, &more)) != PETREL_OK) return err;
            }
            r->z_done += r->zs.total_in; /* inflateReset zeroes total_in */
            r->z_member++;
            if (!more)
                r->eof = true;
            else if (inflateReset(&r->zs) != Z_OK)
                return petrel_error_set(PETREL_ERR_FORMAT, "%s: cannot restart gzip member",
                                        r->path);
        } else if (rc == Z_MEM_ERROR) {
            return petrel_error_set(PETREL_ERR_NOMEM, "%s: out of memory while decompressing",
                                    r->path);
        } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s: corrupt gzip data near compressed offset %llu%s: %s",
                                    r->path, (unsigned long long)(r->z_done + r->zs.total_in),
                                    r->z_member ? " (bytes after the end of the gzip stream?)" : "",
                                    r->zs.msg ? r->zs.msg : "inflate failed");
        }
    }
    *got = done;
    return PETREL_OK;
}

petrel_err petreli_reader_read(petreli_reader *r, void *buf, size_t n, size_t *got) {
    size_t k = 0;
    petrel_err err = r->gz ? read_gz(r, buf, n, &k) : read_plain(r, buf, n, &k);
    if (err != PETREL_OK) return err;
    r->offset += k;
    *got = k;
    return PETREL_OK;
}

void petreli_reader_close(petreli_reader *r) {
    if (r->zs_live) inflateEnd(&r->zs);
    petrel_free(r->in);
    if (r->f) fclose(r->f);
    memset(r, 0, sizeof *r);
}

petrel_err petreli_lines_open(petreli_lines *l, const char *path) {
    memset(l, 0, sizeof *l);
    petrel_err err = petreli_reader_open(&l->rd, path);
    if (err != PETREL_OK) return err;
    l->cap = LINE_BYTES;
    l->buf = petrel_malloc(l->cap);
    if (!l->buf) {
        petreli_lines_close(l);
        return petrel_error_set(PETREL_ERR_NOMEM, "%s: out of memory for the line buffer", path);
    }
    return PETREL_OK;
}

petrel_err petreli_lines_next(petreli_lines *l, char **line, size_t *len) {
    size_t scan = l->start; /* bytes before scan are known to hold no newline */
    char *s;
    size_t n;
    for (;;) {
        char *nl = memchr(l->buf + scan, '\n', l->end - scan);
        if (nl) {
            s = l->buf + l->start;
            n = (size_t)(nl - s);
            *nl = '\0';
            l->start = (size_t)(nl - l->buf) + 1;
            break;
        }
        if (l->rd.eof) {
            if (l->start == l->end) {
                *line = NULL;
                *len = 0;
                return PETREL_OK;
            }
            /* The last line lacks its newline; the buffer keeps one spare byte for
             * this terminator. */
            s = l->buf + l->start;
            n = l->end - l->start;
            l->buf[l->end] = '\0';
            l->start = l->end;
            break;
        }
        if (l->start > 0) {
            memmove(l->buf, l->buf + l->start, l->end - l->start);
            l->end -= l->start;
            l->start = 0;
        }
        scan = l->end;
        if (l->end + 1 >= l->cap) {
            void *p = l->buf;
            petrel_err err = petreli_grow(&p, &l->cap, l->cap + 1, 1);
            if (err != PETREL_OK)
                return petrel_error_set(err, "%s:%lld: out of memory for a line of %zu bytes",
                                        l->rd.path, (long long)l->lineno + 1, l->end);
            l->buf = p;
        }
        size_t got;
        petrel_err err = petreli_reader_read(&l->rd, l->buf + l->end, l->cap - 1 - l->end, &got);
        if (err != PETREL_OK) return err;
        l->end += got;
    }
    l->lineno++;
    if (n > 0 && s[n - 1] == '\r') s[--n] = '\0';
    if (memchr(s, '\0', n))
        return petrel_error_set(
            PETREL_ERR_FORMAT, "%s:%lld: unexpected NUL byte at column %zu (a binary file?)",
            l->rd.path, (long long)l->lineno, (size_t)((char *)memchr(s, '\0', n) - s) + 1);
    *line = s;
    *len = n;
    return PETREL_OK;
}

void petreli_lines_close(petreli_lines *l) {
    petreli_reader_close(&l->rd);
    petrel_free(l->buf);
    memset(l, 0, sizeof *l);
}
