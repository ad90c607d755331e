/*
 * Float16 conversion and the reductions of the collectives.
 *
 * Float16 (IEEE 754 binary16): 1 sign bit, 5 exponent bits (bias 15), 10 mantissa
 * bits; normals from 2^-14, subnormals down to 2^-24, largest finite 65504.
 * Conversion from float32 rounds to nearest, ties to even; a value from 65520 up
 * (half-way to 2^16) becomes infinity; NaN stays NaN with its sign and the top of
 * its payload, and comes out quiet (as F16C's VCVTPS2PH/VCVTPH2PS do, which the
 * bulk loops use when the CPU has them: both paths give the same bits).
 *
 * Reductions: sum and max over float32, in float32. max(a, b) is a when a > b or a
 * is NaN, else b: NaN wins, and (+0, -0) gives the second; since that is not
 * symmetric, callers that need the same bits on two members pass the operands in
 * the same order (in_first).
 */
#include "coll_impl.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define F16C_TARGET __attribute__((target("avx,f16c")))
#endif

/* ---- scalar conversion ------------------------------------------------------------ */

uint16_t petrel_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffff;
    if (u >= 0x7f800000) /* inf, NaN (quiet, top payload bits kept) */
        return (uint16_t)(sign | (u > 0x7f800000 ? 0x7e00 | ((u >> 13) & 0x3ff) : 0x7c00));
    if (u >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds past 65504 */
    if (u < 0x38800000) {                                  /* below 2^-14: subnormal or 0 */
        if (u <= 0x33000000) return sign;                  /* at most 2^-25: ties to 0 */
        uint32_t mant = (u & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(u >> 23); /* 14..24: value = mant 2^(e-150) = m 2^-24 */
        uint32_t m = mant >> shift, rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (m & 1))) m++; /* may carry into the first normal */
        return (uint16_t)(sign | m);
    }
    uint32_t h = (u >> 13) - ((127u - 15u) << 10), rest = u & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* may carry into the exponent */
    return (uint16_t)(sign | h);
}

float petrel_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f)
        u = sign | 0x7f800000 | (m ? 0x400000 | (m << 13) : 0);
    else if (e == 0) {
        if (m == 0)
            u = sign;
        else { /* subnormal: normalize */
            e = 113;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            u = sign | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else
        u = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- F16C ---------------------------------------------------------------------- */

#if defined(__x86_64__)
/* F16C and AVX, and the OS saves the AVX registers (cpuid and xgetbv: clang's
 * __builtin_cpu_supports does not know "f16c"). */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    if (!(c & bit_F16C) || !(c & bit_AVX) || !(c & bit_OSXSAVE)) return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6; /* XMM and YMM state */
}

static bool have_f16c(void) {
    static _Atomic int known; /* 0 unknown, 1 no, 2 yes */
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (!k) {
        k = cpu_has_f16c() ? 2 : 1;
        atomic_store_explicit(&known, k, memory_order_relaxed);
    }
    return k == 2;
}

F16C_TARGET static size_t encode_f16c(uint16_t *out, float *x, size_t n, bool write_back) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(out + i), h);
        if (write_back) _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    return i;
}

F16C_TARGET static size_t round_f16c(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                                                _MM_FROUND_TO_NEAREST_INT)));
    return i;
}

F16C_TARGET static size_t decode_f16c(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    return i;
}

F16C_TARGET static size_t reduce_f16c(float *out, const float *base, const uint16_t *in, size_t n,
                                      petrel_reduce_op op, bool in_first) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(base + i);
        __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i)));
        __m256 r;
        if (op == PETREL_REDUCE_MAX) {
            __m256 x = in_first ? b : a, y = in_first ? a : b;
            /* x when x > y or x is NaN, else y */
            __m256 pick_x =
                _mm256_or_ps(_mm256_cmp_ps(x, y, _CMP_GT_OQ), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
            r = _mm256_blendv_ps(y, x, pick_x);
        } else
            r = _mm256_add_ps(a, b);
        _mm256_storeu_ps(out + i, r);
    }
    return i;
}
#endif

/* ---- bulk ------------------------------------------------------------------------ */

void petreli_coll_encode_f16(uint16_t *out, float *x, size_t n, bool write_back) {
    size_t i = 0;
#if defined(__x86_64__)
    if (have_f16c()) i = encode_f16c(out, x, n, write_back);
#endif
    for (; i < n; i++) {
        out[i] = petrel_f32_to_f16(x[i]);
        if (write_back) x[i] = petrel_f16_to_f32(out[i]);
    }
}

void petreli_coll_round_f16(float *x, size_t n) {
    size_t i = 0;
#if defined(__x86_64__)
    if (have_f16c()) i = round_f16c(x, n);
#endif
    for (; i < n; i++) x[i] = petrel_f16_to_f32(petrel_f32_to_f16(x[i]));
}

void petreli_coll_decode(float *out, const void *in, bool in_f16, size_t n) {
    if (!in_f16) {
        if (n) memcpy(out, in, n * sizeof(float));
        return;
    }
    const uint16_t *h = in;
    size_t i = 0;
#if defined(__x86_64__)
    if (have_f16c()) i = decode_f16c(out, h, n);
#endif
    for (; i < n; i++) out[i] = petrel_f16_to_f32(h[i]);
}

static inline float max2(float x, float y) {
    return x > y || x != x ? x : y;
}

/* The float32 loops: separate functions without aliasing between out and in, so
 * that the compiler vectorizes them. */
static void sum_f32(float *out, const float *base, const float *restrict in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = base[i] + in[i];
}

static void max_f32(float *out, const float *base, const float *restrict in, size_t n,
                    bool in_first) {
    if (in_first)
        for (size_t i = 0; i < n; i++) out[i] = max2(in[i], base[i]);
    else
        for (size_t i = 0; i < n; i++) out[i] = max2(base[i], in[i]);
}

void petreli_coll_reduce(float *out, const float *base, const void *in, bool in_f16, size_t n,
                         petrel_reduce_op op, bool in_first) {
    if (!in_f16) {
        if (op == PETREL_REDUCE_MAX)
            max_f32(out, base, in, n, in_first);
        else
            sum_f32(out, base, in, n);
        return;
    }
    const uint16_t *h = in;
    size_t i = 0;
#if defined(__x86_64__)
    if (have_f16c()) i = reduce_f16c(out, base, h, n, op, in_first);
#endif
    for (; i < n; i++) {
        float v = petrel_f16_to_f32(h[i]);
        out[i] = op == PETREL_REDUCE_MAX ? (in_first ? max2(v, base[i]) : max2(base[i], v))
                                         : base[i] + v;
    }
}

/* The one place that decides how to divide by d: by a power of two, x * (1 / d) is
 * exactly x / d, and faster; then this is 1 / d, else 0 (divide). */
static float exact_reciprocal(float d) {
    int e;
    return frexpf(d, &e) == 0.5f ? 1.0f / d : 0.0f;
}

void petreli_coll_divide(float *x, size_t n, float d) {
    float s = exact_reciprocal(d);
    if (s != 0.0f) {
        for (size_t i = 0; i < n; i++) x[i] *= s;
        return;
    }
    for (size_t i = 0; i < n; i++) x[i] /= d;
}

void petreli_coll_sum_divide(float *restrict x, const float *restrict in, size_t n, float d) {
    float s = exact_reciprocal(d);
    if (s != 0.0f) {
        for (size_t i = 0; i < n; i++) x[i] = (x[i] + in[i]) * s;
        return;
    }
    for (size_t i = 0; i < n; i++) x[i] = (x[i] + in[i]) / d;
}
