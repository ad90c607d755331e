/*
 * Atomic file replacement (core_impl.h): temporary file, fsync, rename, fsync of
 * the directory. Used by checkpoints (src/nn/checkpoint.c) and parameter-server
 * snapshots (src/ps/store.c).
 */
#include "core/core_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

petrel_err petreli_atomic_open(petreli_atomic_file *f, const char *path) {
    f->fd = -1;
    f->path = path;
    if (snprintf(f->tmp, sizeof f->tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof f->tmp)
        return petrel_error_set(PETREL_ERR_INVALID, "%s: path too long", path);
    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return petrel_error_set(PETREL_ERR_IO, "%s: cannot create: %s", f->tmp, strerror(errno));
    f->fd = fd;
    return PETREL_OK;
}

void petreli_atomic_abort(petreli_atomic_file *f) {
    if (f->fd < 0) return;
    close(f->fd);
    unlink(f->tmp);
    f->fd = -1;
}

petrel_err petreli_atomic_write(petreli_atomic_file *f, const void *bytes, size_t len) {
    PETREL_ASSERT(f->fd >= 0, "petreli_atomic_write after commit, abort or a failed write");
    const unsigned char *p = bytes;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(f->fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            petreli_atomic_abort(f);
            return petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", f->tmp, strerror(e));
        }
        done += (size_t)w;
    }
    return PETREL_OK;
}

/* The directory's fsync makes the rename durable. A directory we may not open
 * (no read permission) or a file system without directory fsync (EINVAL) only
 * loses that durability, not correctness, so neither is an error. */
static petrel_err sync_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PETREL_OK;
    int rc = fsync(fd), e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != EROFS)
        return petrel_error_set(PETREL_ERR_IO, "%s: fsync of directory %s failed: %s", path, dir,
                                strerror(e));
    return PETREL_OK;
}

petrel_err petreli_atomic_commit(petreli_atomic_file *f) {
    PETREL_ASSERT(f->fd >= 0, "petreli_atomic_commit after commit, abort or a failed write");
    /* fsync before rename: after a crash the name points at either the old file or
     * the complete new one, never at a partial write. */
    int fd = f->fd;
    f->fd = -1;
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(f->tmp);
        return petrel_error_set(PETREL_ERR_IO, "%s: fsync failed: %s", f->tmp, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(f->tmp);
        return petrel_error_set(PETREL_ERR_IO, "%s: close failed: %s", f->tmp, strerror(e));
    }
    if (rename(f->tmp, f->path) != 0) {
        int e = errno;
        unlink(f->tmp);
        return petrel_error_set(PETREL_ERR_IO, "%s: rename failed: %s", f->path, strerror(e));
    }
    return sync_dir(f->path);
}

petrel_err petreli_write_file_atomic(const char *path, const void *bytes, size_t len) {
    petreli_atomic_file f;
    petrel_err err = petreli_atomic_open(&f, path);
    if (err != PETREL_OK) return err;
    err = petreli_atomic_write(&f, bytes, len);
    if (err != PETREL_OK) return err;
    return petreli_atomic_commit(&f);
}
