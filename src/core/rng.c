/* xoshiro256** (Blackman and Vigna), seeded through splitmix64. */
#include "petrel/core.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void petrel_rng_seed(petrel_rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t petrel_rng_u64(petrel_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t petrel_rng_below(petrel_rng *rng, uint64_t n) {
    PETREL_ASSERT(n > 0, "petrel_rng_below needs n > 0");
    /* Rejection sampling on the top of the range keeps every value equally likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = petrel_rng_u64(rng);
    while (x >= limit);
    return x % n;
}

float petrel_rng_uniform(petrel_rng *rng) {
    return (float)(petrel_rng_u64(rng) >> 40) * (1.0f / 16777216.0f);
}

float petrel_rng_normal(petrel_rng *rng) {
    /* Box-Muller with u1 in (0, 1] so that log never sees 0. */
    double u1 = ((double)(petrel_rng_u64(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(petrel_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void petrel_rng_shuffle_u32(petrel_rng *rng, uint32_t *v, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)petrel_rng_below(rng, i);
        uint32_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}
