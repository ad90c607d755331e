/*
 * Counted, 64-byte-aligned allocation (large blocks on huge pages) with failure injection.
 *
 * Each block carries a 64-byte header holding its size, so that free and realloc
 * can keep live_bytes exact without a side table.
 */
#include "petrel/core.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HEADER 64

static _Atomic uint64_t calls;
static _Atomic uint64_t live_bytes;
static _Atomic uint64_t peak_bytes;
static _Atomic int64_t fail_countdown = -1;

static bool should_fail(void) {
    int64_t n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    while (n >= 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1)) return n == 0;
    }
    return false;
}

static void account(int64_t delta) {
    uint64_t now = atomic_fetch_add(&live_bytes, (uint64_t)delta) + (uint64_t)delta;
    uint64_t peak = atomic_load_explicit(&peak_bytes, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
    }
}

/* Blocks of HUGE_FROM or more start on a huge-page boundary and ask for
 * transparent huge pages before anything touches them (the kernel then backs them
 * with 2 MiB pages as they fault in). Parameter-server tables, datasets and model
 * replicas are read at random, and with 4 KiB pages nearly every such access also
 * misses the TLB: a 10M-key PS table served a quarter fewer keys/s without them.
 * Only advice: it may be refused. The advice covers the block's whole huge pages
 * only: the header makes a block of 4 MiB end 64 bytes into a third page, and
 * rounding the block up to it would fault in 2 MiB for those 64 bytes. Smaller
 * blocks are left alone for the same reason. */
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_FROM (2 * HUGE_PAGE)

static void advise_huge(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    size_t whole = bytes & ~(HUGE_PAGE - 1); /* p is huge-page aligned */
    if (whole) (void)madvise(p, whole, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

static void *raw_alloc(size_t bytes, bool zero) {
    if (should_fail()) {
        petrel_error_set(PETREL_ERR_NOMEM, "allocation of %zu bytes failed (injected)", bytes);
        return NULL;
    }
    if (bytes > SIZE_MAX - 2 * HEADER) {
        petrel_error_set(PETREL_ERR_NOMEM, "allocation of %zu bytes is too large", bytes);
        return NULL;
    }
    size_t total = bytes + HEADER;
    size_t align = total >= HUGE_FROM ? HUGE_PAGE : 64;
    void *block = NULL;
    unsigned char *p = posix_memalign(&block, align, total) == 0 ? block : NULL;
    if (!p) {
        petrel_error_set(PETREL_ERR_NOMEM, "allocation of %zu bytes failed", bytes);
        return NULL;
    }
    if (align > 64) advise_huge(p, total);
    if (zero) memset(p + HEADER, 0, bytes);
    memcpy(p, &bytes, sizeof bytes);
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    account((int64_t)bytes);
    return p + HEADER;
}

void *petrel_malloc(size_t bytes) {
    return raw_alloc(bytes, false);
}

void *petrel_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        petrel_error_set(PETREL_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    return raw_alloc(count * size, true);
}

static size_t block_size(const void *ptr) {
    size_t bytes;
    memcpy(&bytes, (const unsigned char *)ptr - HEADER, sizeof bytes);
    return bytes;
}

void *petrel_realloc(void *ptr, size_t bytes) {
    if (!ptr) return petrel_malloc(bytes);
    size_t old = block_size(ptr);
    void *p = petrel_malloc(bytes);
    if (!p) return NULL;
    memcpy(p, ptr, old < bytes ? old : bytes);
    petrel_free(ptr);
    return p;
}

void petrel_free(void *ptr) {
    if (!ptr) return;
    account(-(int64_t)block_size(ptr));
    free((unsigned char *)ptr - HEADER);
}

char *petrel_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = petrel_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

petrel_alloc_stats petrel_alloc_get_stats(void) {
    petrel_alloc_stats st = {atomic_load(&calls), atomic_load(&live_bytes),
                             atomic_load(&peak_bytes)};
    return st;
}

void petrel_alloc_fail_after(int64_t n) {
    atomic_store(&fail_countdown, n < 0 ? -1 : n);
}
