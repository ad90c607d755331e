/*
 * The small amount of cryptography the transports need: SHA-256 (FIPS 180-4),
 * HMAC-SHA-256 (RFC 2104) for the connect-time challenge, a constant-time compare,
 * kernel random bytes for nonces, and the host identity that decides whether two
 * nodes may use shared memory.
 *
 * SHA-256 here is a plain portable implementation: it hashes a few hundred bytes
 * per connection, so speed does not matter; correctness is pinned by the FIPS and
 * RFC 4231 vectors in tests/net/test_crypto.c.
 */
#include "net_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 (FIPS 180-4, section 6.2) ------------------------------------------ */

typedef struct sha256_ctx {
    uint32_t h[8];         /* H(i), the intermediate hash value */
    unsigned char blk[64]; /* the block being filled */
    size_t blk_len;        /* bytes in blk */
    uint64_t total;        /* message bytes so far */
} sha256_ctx;

/* K: the first 32 bits of the fractional parts of the cube roots of the first 64
 * primes (FIPS 180-4, 4.2.2). */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) {
    return x >> n | x << (32 - n);
}

/* One 512-bit block: message schedule W (6.2.2 step 1), then 64 rounds. */
static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = k + S1 + ch + sha256_k[t] + w[t];
        uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + maj;
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void sha256_init(sha256_ctx *c) {
    /* H(0): the first 32 bits of the fractional parts of the square roots of the
     * first 8 primes (5.3.3). */
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->blk_len = 0;
    c->total = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t len) {
    const unsigned char *p = data;
    c->total += len;
    if (c->blk_len > 0) {
        size_t take = 64 - c->blk_len < len ? 64 - c->blk_len : len;
        memcpy(c->blk + c->blk_len, p, take);
        c->blk_len += take;
        p += take;
        len -= take;
        if (c->blk_len < 64) return;
        sha256_block(c->h, c->blk);
        c->blk_len = 0;
    }
    for (; len >= 64; p += 64, len -= 64) sha256_block(c->h, p);
    if (len > 0) memcpy(c->blk, p, len);
    c->blk_len = len;
}

/* Padding (5.1.1): a 1 bit, zeros up to 56 mod 64 bytes, the bit length as u64 BE. */
static void sha256_final(sha256_ctx *c, unsigned char out[32]) {
    uint64_t bits = c->total * 8;
    unsigned char pad[72] = {0x80};
    size_t pad_len = (c->blk_len < 56 ? 56 : 120) - c->blk_len;
    for (int i = 0; i < 8; i++) pad[pad_len + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, pad, pad_len + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(c->h[i] >> (24 - 8 * j));
}

void petreli_sha256(const void *data, size_t len, unsigned char out[32]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, data, len);
    sha256_final(&c, out);
}

/* ---- HMAC (RFC 2104): H((K0 ^ opad) | H((K0 ^ ipad) | msg)) ------------------------ */

void petreli_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                         unsigned char out[32]) {
    /* K0: the key hashed when longer than the 64-byte block, then zero-padded. */
    unsigned char k0[64] = {0};
    if (key_len > 64)
        petreli_sha256(key, key_len, k0);
    else if (key_len > 0)
        memcpy(k0, key, key_len);
    unsigned char pad[64], inner[32];
    sha256_ctx c;
    for (int i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, msg, msg_len);
    sha256_final(&c, inner);
    for (int i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

bool petreli_equal_ct(const void *a, const void *b, size_t n) {
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) diff |= x[i] ^ y[i];
    return diff == 0;
}

petrel_err petreli_random_bytes(void *out, size_t n) {
    unsigned char *p = out;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return petrel_error_set(PETREL_ERR_IO, "getrandom(%zu bytes): %s", n, strerror(errno));
        }
        p += got;
        n -= (size_t)got;
    }
    return PETREL_OK;
}

/* ---- host identity ---------------------------------------------------------------- */

/* Reads the first line of a small file into out, without the newline; false when
 * the file is missing or empty. */
static bool read_line(const char *path, char *out, size_t size) {
    FILE *f = fopen(path, "re");
    if (!f) return false;
    bool ok = fgets(out, (int)size, f) != NULL;
    fclose(f);
    if (!ok) return false;
    out[strcspn(out, "\r\n")] = '\0';
    return out[0] != '\0';
}

/* Two processes share memory and loopback exactly when they run under one kernel
 * boot (the boot id) and in one network namespace (the inode of its ns file). The
 * hostname is only a fallback: containers on one host may share it. */
void petreli_host_identity(char *out, size_t size) {
    PETREL_ASSERT(out && size > 0, "pass a buffer for the host identity");
    char boot[128];
    if (!read_line("/proc/sys/kernel/random/boot_id", boot, sizeof boot)) {
        char host[256] = "";
        if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
            snprintf(host, sizeof host, "unknown-host");
        snprintf(boot, sizeof boot, "host-%.100s", host);
    }
    struct stat st;
    if (stat("/proc/self/ns/net", &st) == 0)
        snprintf(out, size, "%s:%llu", boot, (unsigned long long)st.st_ino);
    else
        snprintf(out, size, "%s:netns-unknown", boot);
}
