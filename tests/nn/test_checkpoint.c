/* Checkpoints: round trip, and rejection of truncated, corrupted, foreign and
 * mismatched files without touching the model. */
#include "check.h"

#include <stdlib.h>
#include <unistd.h>

static char dir[256];

static petrel_params *make_model(int64_t hidden, float fill) {
    petrel_params *p;
    petrel_linear a, b;
    if (petrel_params_new(&p) != PETREL_OK) abort();
    if (petrel_linear_init(&a, p, "fc1", 6, hidden) != PETREL_OK) abort();
    if (petrel_linear_init(&b, p, "fc2", hidden, 3) != PETREL_OK) abort();
    if (petrel_params_finalize(p) != PETREL_OK) abort();
    for (int i = 0; i < petrel_params_num(p); i++) {
        petrel_tensor *t = petrel_params_get(p, i);
        for (int64_t j = 0; j < petrel_tensor_numel(t); j++)
            t->data[j] = fill + (float)i * 100 + (float)j * 0.25f;
    }
    return p;
}

static bool same_values(const petrel_params *a, const petrel_params *b) {
    for (int i = 0; i < petrel_params_num(a); i++) {
        const petrel_tensor *x = petrel_params_get(a, i), *y = petrel_params_get(b, i);
        if (memcmp(x->data, y->data, (size_t)petrel_tensor_numel(x) * sizeof(float)) != 0)
            return false;
    }
    return true;
}

static void test_round_trip(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/a.ckpt", dir);
    petrel_params *src = make_model(4, 1.0f), *dst = make_model(4, -7.0f);
    CHECK_OK(petrel_checkpoint_save(src, "model=test hidden=4", path));
    char *meta = NULL;
    CHECK_OK(petrel_checkpoint_load(dst, path, &meta));
    CHECK(same_values(src, dst));
    CHECK(meta && strcmp(meta, "model=test hidden=4") == 0);
    petrel_free(meta);
    CHECK_OK(petrel_checkpoint_read_meta(path, &meta));
    CHECK(strcmp(meta, "model=test hidden=4") == 0);
    petrel_free(meta);
    /* file size = header 20 + meta 19 + records + data + crc 4 */
    size_t len;
    unsigned char *b = check_read_file(path, &len);
    /* records: u16 name length, name, u8 ndim, u64 per dim; fc*.weight 2-d, fc*.bias 1-d */
    size_t names = 2 * ((2 + 10 + 1 + 16) + (2 + 8 + 1 + 8));
    size_t data = (size_t)(4 * 6 + 4 + 3 * 4 + 3) * 4;
    CHECK(len == 20 + 19 + names + data + 4);
    CHECK(memcmp(b, "PETRELCK", 8) == 0 && b[8] == 1 && b[12] == 4);
    free(b);
    petrel_params_free(src);
    petrel_params_free(dst);
}

static void test_rejects_truncated(void) {
    char path[300], bad[300];
    snprintf(path, sizeof path, "%s/t.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/t_bad.ckpt", dir);
    petrel_params *src = make_model(4, 2.0f), *dst = make_model(4, -1.0f),
                  *keep = make_model(4, -1.0f);
    CHECK_OK(petrel_checkpoint_save(src, NULL, path));
    size_t len;
    unsigned char *b = check_read_file(path, &len);
    for (size_t cut = 0; cut < len; cut += (cut < 64 ? 1 : 37)) {
        check_write_file(bad, b, cut);
        CHECK_ERR(petrel_checkpoint_load(dst, bad, NULL), PETREL_ERR_FORMAT);
        CHECK(strstr(petrel_errmsg(), bad) != NULL);
        CHECK(same_values(dst, keep));
    }
    free(b);
    petrel_params_free(src);
    petrel_params_free(dst);
    petrel_params_free(keep);
}

static void test_rejects_corrupted(void) {
    char path[300], bad[300];
    snprintf(path, sizeof path, "%s/c.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/c_bad.ckpt", dir);
    petrel_params *src = make_model(4, 2.0f), *dst = make_model(4, -1.0f),
                  *keep = make_model(4, -1.0f);
    CHECK_OK(petrel_checkpoint_save(src, "m", path));
    size_t len;
    unsigned char *b = check_read_file(path, &len);
    for (size_t at = 0; at < len; at += 7) {
        b[at] ^= 0x5a;
        check_write_file(bad, b, len);
        b[at] ^= 0x5a;
        CHECK_ERR(petrel_checkpoint_load(dst, bad, NULL), PETREL_ERR_FORMAT);
        CHECK(same_values(dst, keep));
    }
    /* a flipped data byte is caught by the checksum, and the message says so */
    b[len - 10] ^= 1;
    check_write_file(bad, b, len);
    CHECK_ERR(petrel_checkpoint_load(dst, bad, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "checksum") != NULL);
    free(b);
    petrel_params_free(src);
    petrel_params_free(dst);
    petrel_params_free(keep);
}

static void test_rejects_foreign_and_mismatched(void) {
    char path[300], other[300];
    snprintf(path, sizeof path, "%s/f.ckpt", dir);
    snprintf(other, sizeof other, "%s/other.bin", dir);
    petrel_params *dst = make_model(4, -1.0f), *keep = make_model(4, -1.0f);
    check_write_file(other,
                     (const unsigned char *)"\x7f"
                                            "ELF this is not a checkpoint at all",
                     36);
    CHECK_ERR(petrel_checkpoint_load(dst, other, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "not a petrel checkpoint") != NULL);
    petrel_params *wide = make_model(5, 3.0f);
    CHECK_OK(petrel_checkpoint_save(wide, NULL, path));
    CHECK_ERR(petrel_checkpoint_load(dst, path, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "fc1.weight") != NULL);
    CHECK(same_values(dst, keep));
    char missing[300];
    snprintf(missing, sizeof missing, "%s/does-not-exist.ckpt", dir);
    CHECK_ERR(petrel_checkpoint_load(dst, missing, NULL), PETREL_ERR_IO);
    CHECK(strstr(petrel_errmsg(), "does-not-exist.ckpt") != NULL);
    petrel_params_free(wide);
    petrel_params_free(dst);
    petrel_params_free(keep);
}

static void test_version_is_checked(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/v.ckpt", dir);
    petrel_params *p = make_model(4, 1.0f);
    CHECK_OK(petrel_checkpoint_save(p, NULL, path));
    size_t len;
    unsigned char *b = check_read_file(path, &len);
    b[8] = 2;
    check_write_file(path, b, len);
    CHECK_ERR(petrel_checkpoint_load(p, path, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "version 2") != NULL);
    free(b);
    petrel_params_free(p);
}

static void test_save_failure_keeps_old_file(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/no-such-dir/x.ckpt", dir);
    petrel_params *p = make_model(4, 1.0f);
    CHECK_ERR(petrel_checkpoint_save(p, NULL, path), PETREL_ERR_IO);
    CHECK(strstr(petrel_errmsg(), "no-such-dir") != NULL);
    uint64_t live = petrel_alloc_get_stats().live_bytes;
    for (int k = 0; k < 3; k++) { /* allocation failures leave nothing behind */
        petrel_alloc_fail_after(k);
        petrel_err e = petrel_checkpoint_save(p, NULL, path);
        CHECK(e == PETREL_ERR_NOMEM || e == PETREL_ERR_IO);
    }
    petrel_alloc_fail_after(-1);
    CHECK(petrel_alloc_get_stats().live_bytes == live);
    petrel_params_free(p);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/petrel-ckpt-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    RUN(test_round_trip);
    RUN(test_rejects_truncated);
    RUN(test_rejects_corrupted);
    RUN(test_rejects_foreign_and_mismatched);
    RUN(test_version_is_checked);
    RUN(test_save_failure_keeps_old_file);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return CHECK_DONE();
}
