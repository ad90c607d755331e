/*
 * Message buffers. Every received message gets a buffer sized from the length
 * its first frame states, filled on a transport thread and freed by whoever takes
 * the message, often another thread. Straight from malloc that is slow twice over:
 * glibc maps and unmaps large blocks on every message (a 64 MiB message then costs
 * 16,385 page faults, more than the transfer itself), and it trims and regrows a
 * thread's heap for mid-sized ones. So freed buffers wait here, a few at a time,
 * for the next message of about their size.
 *
 * The cache is process-wide, so a message released after its node has stopped is
 * still handled; it empties when the last node stops, so that nothing stays
 * allocated once no node runs.
 */
#include "net_impl.h"

#include <pthread.h>
#include <string.h>

#define CACHE_SLOTS 16
#define CACHE_LIMIT ((size_t)512 << 20) /* bytes held idle, at most */
#define HEADER      64                  /* keeps the payload 64-byte aligned */

typedef struct buf_header {
    size_t capacity;
} buf_header;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *slots[CACHE_SLOTS]; /* block starts (headers) */
static size_t cached_bytes;
static int users;

static size_t capacity_of(const unsigned char *block) {
    buf_header h;
    memcpy(&h, block, sizeof h);
    return h.capacity;
}

void *petreli_msgbuf_get(size_t len) {
    if (len == 0) len = 1;
    pthread_mutex_lock(&mu);
    /* A cached buffer between len and 2 len: reuse without wasting much. */
    for (int i = 0; i < CACHE_SLOTS; i++) {
        unsigned char *b = slots[i];
        if (!b) continue;
        size_t cap = capacity_of(b);
        if (cap >= len && cap / 2 <= len) {
            slots[i] = NULL;
            cached_bytes -= cap;
            pthread_mutex_unlock(&mu);
            return b + HEADER;
        }
    }
    pthread_mutex_unlock(&mu);
    unsigned char *b = petrel_malloc(HEADER + len);
    if (!b) return NULL;
    buf_header h = {len};
    memcpy(b, &h, sizeof h);
    return b + HEADER;
}

void petreli_msgbuf_put(void *buf) {
    if (!buf) return;
    unsigned char *b = (unsigned char *)buf - HEADER;
    size_t cap = capacity_of(b);
    pthread_mutex_lock(&mu);
    if (users > 0 && cap <= CACHE_LIMIT) {
        /* Keep it if there is room, else evict the smallest cached buffer, if smaller:
         * large buffers are the expensive ones to map again. */
        int free_slot = -1, smallest = -1;
        for (int i = 0; i < CACHE_SLOTS; i++) {
            if (!slots[i])
                free_slot = free_slot < 0 ? i : free_slot;
            else if (smallest < 0 || capacity_of(slots[i]) < capacity_of(slots[smallest]))
                smallest = i;
        }
        unsigned char *evict = NULL;
        int at = free_slot;
        if (at < 0 && smallest >= 0 && capacity_of(slots[smallest]) < cap) {
            at = smallest;
            evict = slots[at];
            cached_bytes -= capacity_of(evict);
        }
        while (at >= 0 && cached_bytes + cap > CACHE_LIMIT) { /* over the byte limit */
            int victim = -1;
            for (int i = 0; i < CACHE_SLOTS; i++)
                if (slots[i] && i != at) victim = i;
            if (victim < 0) break;
            cached_bytes -= capacity_of(slots[victim]);
            petrel_free(slots[victim]);
            slots[victim] = NULL;
        }
        if (at >= 0 && cached_bytes + cap <= CACHE_LIMIT) {
            slots[at] = b;
            cached_bytes += cap;
            b = NULL;
        }
        pthread_mutex_unlock(&mu);
        petrel_free(evict);
        petrel_free(b);
        return;
    }
    pthread_mutex_unlock(&mu);
    petrel_free(b);
}

void petreli_msgbuf_users(int delta) {
    unsigned char *drop[CACHE_SLOTS];
    int n = 0;
    pthread_mutex_lock(&mu);
    users += delta;
    if (users == 0)
        for (int i = 0; i < CACHE_SLOTS; i++)
            if (slots[i]) {
                drop[n++] = slots[i];
                slots[i] = NULL;
            }
    if (users == 0) cached_bytes = 0;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++) petrel_free(drop[i]);
}
