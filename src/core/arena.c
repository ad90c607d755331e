/*
 * Bump arena. Blocks form a singly linked list, newest first. Reset keeps the
 * memory; when a cycle spilled into several blocks they are replaced by one block
 * of the cycle's total size, so a steady-state training step allocates nothing.
 */
#include "petrel/core.h"

#include <string.h>

typedef struct petrel_arena_block {
    struct petrel_arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
} petrel_arena_block;

#define BLOCK_HEADER ((sizeof(petrel_arena_block) + 63) & ~(size_t)63)

static unsigned char *block_data(petrel_arena_block *b) {
    return (unsigned char *)b + BLOCK_HEADER;
}

void petrel_arena_init(petrel_arena *a, size_t block_bytes) {
    memset(a, 0, sizeof *a);
    a->block_bytes = block_bytes ? block_bytes : 1 << 16;
}

static void free_blocks(petrel_arena_block *b) {
    while (b) {
        petrel_arena_block *next = b->next;
        petrel_free(b);
        b = next;
    }
}

void petrel_arena_fini(petrel_arena *a) {
    if (!a) return;
    free_blocks(a->head);
    a->head = NULL;
}

static petrel_arena_block *block_new(size_t size) {
    petrel_arena_block *b = petrel_malloc(BLOCK_HEADER + size);
    if (!b) return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

void *petrel_arena_alloc(petrel_arena *a, size_t bytes) {
    size_t need = (bytes + 63) & ~(size_t)63;
    if (need < bytes) {
        petrel_error_set(PETREL_ERR_NOMEM, "arena allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    petrel_arena_block *b = a->head;
    if (!b || b->size - b->used < need) {
        size_t size = need > a->block_bytes ? need : a->block_bytes;
        petrel_arena_block *nb = block_new(size);
        if (!nb) return NULL;
        nb->next = b;
        a->head = b = nb;
    }
    void *p = block_data(b) + b->used;
    b->used += need;
    a->used_bytes += need;
    return p;
}

void *petrel_arena_calloc(petrel_arena *a, size_t bytes) {
    void *p = petrel_arena_alloc(a, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void petrel_arena_reset(petrel_arena *a) {
    if (a->used_bytes > a->peak_bytes) a->peak_bytes = a->used_bytes;
    a->used_bytes = 0;
    if (a->head && a->head->next) {
        /* Several blocks: this cycle outgrew one. Merge into one block that fits
         * the largest cycle seen, with some headroom. */
        size_t want = a->peak_bytes + a->peak_bytes / 4;
        if (want < a->block_bytes) want = a->block_bytes;
        petrel_arena_block *nb = block_new(want);
        if (nb) {
            free_blocks(a->head);
            a->head = nb;
            a->block_bytes = want;
            return;
        }
        /* Out of memory: keep the blocks we have; they still work. */
    }
    for (petrel_arena_block *b = a->head; b; b = b->next) b->used = 0;
}
