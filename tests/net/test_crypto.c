/*
 * Tests of src/net/crypto.c: SHA-256 against the FIPS 180-4 example messages (and
 * lengths around the padding boundary), HMAC-SHA-256 against RFC 4231, the
 * constant-time compare, kernel random bytes and the host identity.
 */
#include "check.h"
#include "net/net_impl.h"

/* Lower-case hex of 32 bytes into out (65 bytes). */
static void hex32(const unsigned char d[32], char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static bool sha_is(const void *data, size_t len, const char *want) {
    unsigned char d[32];
    char got[65];
    petreli_sha256(data, len, d);
    hex32(d, got);
    if (strcmp(got, want) == 0) return true;
    printf("# sha256 of %zu bytes: %s, expected %s\n", len, got, want);
    return false;
}

static bool hmac_is(const void *key, size_t key_len, const void *msg, size_t msg_len,
                    const char *want) {
    unsigned char d[32];
    char got[65];
    petreli_hmac_sha256(key, key_len, msg, msg_len, d);
    hex32(d, got);
    if (strcmp(got, want) == 0) return true;
    printf("# hmac of %zu bytes: %s, expected %s\n", msg_len, got, want);
    return false;
}

/* ---- SHA-256 -------------------------------------------------------------------- */

static void test_sha256_fips(void) {
    CHECK(sha_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    CHECK(sha_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK(strlen(m448) * 8 == 448);
    CHECK(sha_is(m448, strlen(m448),
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                       "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    CHECK(strlen(m896) * 8 == 896);
    CHECK(sha_is(m896, strlen(m896),
                 "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"));
}

static void test_sha256_million_a(void) {
    size_t n = 1000000;
    char *a = malloc(n);
    CHECK(a != NULL);
    if (!a) return;
    memset(a, 'a', n);
    CHECK(sha_is(a, n, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
    free(a);
}

/* Messages whose padding ends exactly at, or spills one byte over, a block. */
static void test_sha256_padding_boundaries(void) {
    static const struct {
        size_t n;
        const char *hex;
    } cases[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
    };
    char a[128];
    memset(a, 'a', sizeof a);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(sha_is(a, cases[i].n, cases[i].hex));
}

/* ---- HMAC-SHA-256, RFC 4231 ------------------------------------------------------- */

static void test_hmac_rfc4231(void) {
    unsigned char k20[20], d50[50], k25[25], k131[131];

    /* Test case 1 */
    memset(k20, 0x0b, sizeof k20);
    CHECK(hmac_is(k20, 20, "Hi There", 8,
                  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"));
    /* Test case 2: a key shorter than the output */
    const char *q = "what do ya want for nothing?";
    CHECK(hmac_is("Jefe", 4, q, strlen(q),
                  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    /* Test case 3 */
    memset(k20, 0xaa, sizeof k20);
    memset(d50, 0xdd, sizeof d50);
    CHECK(hmac_is(k20, 20, d50, 50,
                  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"));
    /* Test case 4 */
    for (int i = 0; i < 25; i++) k25[i] = (unsigned char)(i + 1);
    memset(d50, 0xcd, sizeof d50);
    CHECK(hmac_is(k25, 25, d50, 50,
                  "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"));
    /* Test case 6: a key longer than the block is hashed first */
    memset(k131, 0xaa, sizeof k131);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    CHECK(hmac_is(k131, 131, m6, strlen(m6),
                  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
    /* Test case 7: long key and long data */
    const char *m7 = "This is a test using a larger than block-size key and a larger than "
                     "block-size data. The key needs to be hashed before being used by the "
                     "HMAC algorithm.";
    CHECK(hmac_is(k131, 131, m7, strlen(m7),
                  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"));
}

/* The empty job token is a valid (if weak) key. */
static void test_hmac_empty_key(void) {
    CHECK(
        hmac_is("", 0, "", 0, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"));
}

/* ---- helpers ------------------------------------------------------------------------ */

static void test_equal_ct(void) {
    unsigned char a[40], b[40];
    for (int i = 0; i < 40; i++) a[i] = b[i] = (unsigned char)(i * 7);
    CHECK(petreli_equal_ct(a, b, 40));
    CHECK(petreli_equal_ct(a, b, 0));
    for (int i = 0; i < 40; i++) {
        b[i] ^= 0x01;
        CHECK(!petreli_equal_ct(a, b, 40));
        b[i] ^= 0x81;
        CHECK(!petreli_equal_ct(a, b, 40));
        b[i] ^= 0x80;
    }
    CHECK(petreli_equal_ct(a, b, 40));
}

static void test_random_bytes(void) {
    unsigned char a[32], b[32], z[32] = {0};
    CHECK_OK(petreli_random_bytes(a, sizeof a));
    CHECK_OK(petreli_random_bytes(b, sizeof b));
    CHECK(memcmp(a, b, 32) != 0);
    CHECK(memcmp(a, z, 32) != 0);
    CHECK_OK(petreli_random_bytes(a, 0));
    /* More than one getrandom call may serve (the kernel caps one call at 32 MiB). */
    size_t n = 1 << 20;
    unsigned char *big = calloc(1, n);
    CHECK(big != NULL);
    if (!big) return;
    CHECK_OK(petreli_random_bytes(big, n));
    size_t zeros = 0;
    for (size_t i = 0; i < n; i++) zeros += big[i] == 0;
    CHECK(zeros > n / 256 / 2 && zeros < n / 256 * 2); /* about 1/256 of the bytes */
    free(big);
}

static void test_host_identity(void) {
    char a[256], b[256];
    petreli_host_identity(a, sizeof a);
    petreli_host_identity(b, sizeof b);
    CHECK(a[0] != '\0');
    CHECK(strcmp(a, b) == 0);
    CHECK(strchr(a, ':') != NULL);
    /* A small buffer truncates, still terminated. */
    char small[8];
    petreli_host_identity(small, sizeof small);
    CHECK(strlen(small) == 7 && strncmp(small, a, 7) == 0);
}

int main(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    RUN(test_sha256_fips);
    RUN(test_sha256_million_a);
    RUN(test_sha256_padding_boundaries);
    RUN(test_hmac_rfc4231);
    RUN(test_hmac_empty_key);
    RUN(test_equal_ct);
    RUN(test_random_bytes);
    RUN(test_host_identity);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
