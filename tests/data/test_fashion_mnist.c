/* The real Fashion-MNIST files (Debian's fashion-mnist package puts them in
 * /usr/share/datasets/fashion-mnist; PETREL_FASHION_MNIST_DIR overrides). The
 * expected numbers were read off the files independently with Python's gzip
 * module. Without the files the whole test is skipped (exit 77). */
#include "check.h"

#include <unistd.h>

static char dir[512];
static char train_img[600], train_lab[600], test_img[600], test_lab[600];

static void check_split(const char *img, const char *lab, int64_t n, int64_t per_class) {
    petrel_dataset *d = NULL;
    double t0 = petrel_now_s();
    CHECK_OK(petrel_dataset_load_idx(&d, img, lab));
    if (!d) return;
    printf("  # %s: %lld samples in %.2f s\n", img, (long long)d->n, petrel_now_s() - t0);
    CHECK(d->n == n);
    CHECK(d->dim == 784);
    CHECK(d->channels == 1 && d->height == 28 && d->width == 28);
    CHECK(d->num_classes == 10);
    CHECK(d->y[0] == 9); /* "ankle boot", in both splits */
    int64_t count[10] = {0};
    bool labels_ok = true, pixels_ok = true;
    for (int64_t i = 0; i < d->n; i++) {
        if (d->y[i] < 0 || d->y[i] > 9)
            labels_ok = false;
        else
            count[d->y[i]]++;
    }
    for (int64_t i = 0; i < d->n * d->dim; i++)
        if (!(d->x[i] >= 0.0f && d->x[i] <= 1.0f)) pixels_ok = false;
    CHECK(labels_ok);
    CHECK(pixels_ok);
    for (int c = 0; c < 10; c++) CHECK(count[c] == per_class);
    petrel_dataset_free(d);
}

static void test_train(void) {
    check_split(train_img, train_lab, 60000, 6000);
}

static void test_t10k(void) {
    check_split(test_img, test_lab, 10000, 1000);
}

/* The first training image, pixel for pixel in aggregate: its bytes sum to 76247
 * and its row 13 starts 0 0 0 0 0 0 0 0 0 4 0 0 0x37 0xec. */
static void test_first_image(void) {
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_idx(&d, train_img, train_lab));
    if (!d) return;
    long sum = 0;
    for (int j = 0; j < 784; j++) sum += lroundf(d->x[j] * 255.0f);
    CHECK(sum == 76247);
    const float *row13 = d->x + 13 * 28;
    CHECK(row13[8] == 0.0f);
    CHECK(row13[9] == 4.0f / 255.0f);
    CHECK(row13[12] == 55.0f / 255.0f);
    CHECK(row13[13] == 236.0f / 255.0f);

    /* One shuffled epoch over three ranks covers every sample once. */
    petrel_batcher_config cfg = petrel_batcher_config_default();
    cfg.batch = 256;
    cfg.size = 3;
    int64_t seen = 0, label_sum = 0;
    for (int r = 0; r < 3; r++) {
        cfg.rank = r;
        petrel_batcher *b = NULL;
        CHECK_OK(petrel_batcher_new(&b, d, cfg));
        if (!b) break;
        const uint32_t *idx;
        int64_t m;
        while ((m = petrel_batcher_next_indices(b, &idx)) > 0) {
            seen += m;
            for (int64_t i = 0; i < m; i++) label_sum += d->y[idx[i]];
        }
        petrel_batcher_free(b);
    }
    CHECK(seen == 60000);
    CHECK(label_sum == 6000 * 45);
    petrel_dataset_free(d);
}

/* Every dataset, batcher and buffer above was freed. */
static void test_nothing_leaked(void) {
    CHECK(petrel_alloc_get_stats().live_bytes == 0);
}

int main(void) {
    const char *env = getenv("PETREL_FASHION_MNIST_DIR");
    snprintf(dir, sizeof dir, "%s", env && *env ? env : "/usr/share/datasets/fashion-mnist");
    snprintf(train_img, sizeof train_img, "%s/train-images-idx3-ubyte.gz", dir);
    snprintf(train_lab, sizeof train_lab, "%s/train-labels-idx1-ubyte.gz", dir);
    snprintf(test_img, sizeof test_img, "%s/t10k-images-idx3-ubyte.gz", dir);
    snprintf(test_lab, sizeof test_lab, "%s/t10k-labels-idx1-ubyte.gz", dir);
    if (access(train_img, R_OK) || access(train_lab, R_OK) || access(test_img, R_OK) ||
        access(test_lab, R_OK)) {
        printf("# Fashion-MNIST not found in %s (apt install fashion-mnist, or set "
               "PETREL_FASHION_MNIST_DIR)\n",
               dir);
        CHECK_SKIP_ALL("Fashion-MNIST files missing");
    }
    RUN(test_train);
    RUN(test_t10k);
    RUN(test_first_image);
    RUN(test_nothing_leaked);
    return CHECK_DONE();
}
