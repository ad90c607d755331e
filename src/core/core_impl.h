/*
 * Internals of src/core that other modules share: atomic file replacement, and
 * (at the end) futexes on words in memory shared between processes and copies that
 * bypass the cache.
 *
 * A file written through petreli_atomic_* appears under its name complete or not
 * at all: the bytes go to a temporary file beside it (same directory, so the same
 * file system), which is fsynced, renamed over the target, and then the directory
 * is fsynced so that the rename itself survives a crash. Readers never see a
 * partial file; after a crash the name holds the old file or the whole new one.
 *
 *     petreli_atomic_file f;
 *     petrel_err err = petreli_atomic_open(&f, path);
 *     if (err == PETREL_OK) err = petreli_atomic_write(&f, bytes, len);  // any number
 *     if (err == PETREL_OK) err = petreli_atomic_commit(&f);
 *     else petreli_atomic_abort(&f);
 *
 * Threading: a petreli_atomic_file belongs to one thread; different paths may be
 * written concurrently (the temporary name carries the process id, so two writers
 * of one path in one process must not overlap).
 */
#ifndef PETREL_CORE_IMPL_H
#define PETREL_CORE_IMPL_H

#include "petrel/core.h"

typedef struct petreli_atomic_file {
    int fd;           /* -1 once committed or aborted */
    const char *path; /* borrowed until commit or abort */
    char tmp[4096];
} petreli_atomic_file;

/* Creates the temporary file "<path>.tmp.<pid>". PETREL_ERR_INVALID for a path too
 * long, PETREL_ERR_IO naming the temporary file when it cannot be created. */
PETREL_NODISCARD petrel_err petreli_atomic_open(petreli_atomic_file *f, const char *path);

/* Appends len bytes. On failure (PETREL_ERR_IO) the temporary file is already
 * removed; a later abort is harmless. */
PETREL_NODISCARD petrel_err petreli_atomic_write(petreli_atomic_file *f, const void *bytes,
                                                 size_t len);

/* fsync, close, rename over path, fsync of the directory. On failure the temporary
 * file is removed and path is left as it was (unless only the directory fsync
 * failed: then path already holds the new file). */
PETREL_NODISCARD petrel_err petreli_atomic_commit(petreli_atomic_file *f);

/* Closes and removes the temporary file; path is left as it was. Accepts a file
 * already committed or aborted. */
void petreli_atomic_abort(petreli_atomic_file *f);

/* open + one write + commit. */
PETREL_NODISCARD petrel_err petreli_write_file_atomic(const char *path, const void *bytes,
                                                      size_t len);

/* Futexes on 32-bit words in MAP_SHARED memory (not FUTEX_PRIVATE: the key is the
 * page, so processes that map it share the word; thread.c). Wait sleeps while *word
 * holds seen, at most ns (spurious returns happen: re-check); ring bumps *word and
 * wakes every sleeper, so that one about to sleep with the old value does not. */
void petreli_futex_wait(_Atomic uint32_t *word, uint32_t seen, uint64_t ns);
void petreli_futex_ring(_Atomic uint32_t *word);

/* Copying around the cache (copy.c). petreli_copy_nocache is memcpy with streaming
 * stores (on x86-64; elsewhere memcpy): for a destination that will not fit in the
 * cache, whose lines it then writes without reading them first. The stores are fenced
 * before it returns. petreli_nocache_threshold is the size from which that pays: the
 * level-3 cache that CPU 0 shares, from sysfs (else sysconf, else 32 MiB). */
void petreli_copy_nocache(void *dst, const void *src, size_t n);
size_t petreli_nocache_threshold(void);

#endif
