/*
 * Copies around the cache. A plain copy into memory that is not cached first reads each
 * destination line (to own it) and then writes it back: three passes over DRAM for a
 * copy. When the destination is larger than the last-level cache it will not be read
 * from the cache afterwards anyway, so streaming (non-temporal) stores, which write
 * whole lines without reading them, save a third of the traffic. glibc's memcpy does
 * this for one large call; petrel's shared-memory reader copies a large message in many
 * small pieces (what the writer has published so far), so it says so itself.
 */
#include "core_impl.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define FALLBACK_LLC_BYTES ((size_t)32 << 20)

/* The size of the level-3 cache that CPU 0 shares, as the kernel describes it, or 0.
 * sysfs rather than sysconf: in a VM glibc may report the host's L3 across all its
 * dies (384 MiB where one core sees 32 MiB). */
static size_t llc_from_sysfs(void) {
    const char *dir = "/sys/devices/system/cpu/cpu0/cache/index3";
    char path[96], text[32] = {0};
    snprintf(path, sizeof path, "%s/level", dir);
    FILE *f = fopen(path, "r");
    int level = 0;
    if (f) {
        if (fscanf(f, "%d", &level) != 1) level = 0;
        fclose(f);
    }
    if (level != 3) return 0;
    snprintf(path, sizeof path, "%s/size", dir);
    if (!(f = fopen(path, "r"))) return 0;
    unsigned long long v = 0;
    char unit = 0;
    int got = fscanf(f, "%31s", text);
    fclose(f);
    if (got != 1 || sscanf(text, "%llu%c", &v, &unit) < 1) return 0;
    return unit == 'K' ? (size_t)v << 10 : unit == 'M' ? (size_t)v << 20 : (size_t)v;
}

size_t petreli_nocache_threshold(void) {
    static _Atomic size_t cached;
    size_t v = cached;
    if (v == 0) {
        v = llc_from_sysfs();
        long l3 = v ? 0 : sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (!v) v = l3 > 0 ? (size_t)l3 : FALLBACK_LLC_BYTES;
        cached = v;
    }
    return v;
}

void petreli_copy_nocache(void *dst, const void *src, size_t n) {
#if defined(__x86_64__)
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15; /* streaming stores want 16-byte alignment */
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t body = n & ~(size_t)63;
    for (size_t i = 0; i < body; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
    }
    _mm_sfence(); /* streaming stores are weakly ordered: order them before what follows */
    memcpy(d + body, s + body, n - body);
#else
    memcpy(dst, src, n);
#endif
}
