/* IDX reader: exact pixels from handmade files, plain and gzip, and the hostile
 * and broken files each rejected with the right error and no large allocation. */
#include "fixtures.h"

#define MiB (1024.0 * 1024.0)

static const unsigned char pixels[18] = {0,  255, 128, 1,   2,   3,   10,  20,  30,
                                         40, 50,  60,  200, 201, 202, 203, 204, 254};
static const unsigned char labels[3] = {2, 0, 7};

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* An images file: header (magic, n, rows, cols) then body_len bytes of body. */
static size_t make_images(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t rows,
                          uint32_t cols, const unsigned char *body, size_t body_len) {
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, rows);
    put_be32(buf + 12, cols);
    if (body_len) memcpy(buf + 16, body, body_len);
    return 16 + body_len;
}

static size_t make_labels(unsigned char *buf, uint32_t n, const unsigned char *body,
                          size_t body_len) {
    put_be32(buf, 0x00000801);
    put_be32(buf + 4, n);
    if (body_len) memcpy(buf + 8, body, body_len);
    return 8 + body_len;
}

static void check_tiny(const petrel_dataset *d) {
    CHECK(d->n == 3);
    CHECK(d->dim == 6);
    CHECK(d->channels == 1 && d->height == 2 && d->width == 3);
    CHECK(d->num_classes == 8);
    CHECK(d->label_values == NULL);
    CHECK(d->x != NULL);
    CHECK(!petrel_dataset_is_sparse(d));
    float want[18];
    for (int i = 0; i < 18; i++) want[i] = (float)pixels[i] / 255.0f;
    CHECK_TENSOR_NEAR(d->x, want, 18, 0, 0);
    CHECK(d->x[0] == 0.0f && d->x[1] == 1.0f);
    for (int i = 0; i < 3; i++) CHECK(d->y[i] == labels[i]);
}

static const char *write_tiny(const char *img_name, const char *lab_name, bool gz_img, bool gz_lab,
                              const char **lab_path) {
    unsigned char ib[64], lb[16];
    size_t in = make_images(ib, 0x00000803, 3, 2, 3, pixels, 18);
    size_t ln = make_labels(lb, 3, labels, 3);
    *lab_path = gz_lab ? fx_write_gz(lab_name, lb, ln) : fx_write(lab_name, lb, ln);
    return gz_img ? fx_write_gz(img_name, ib, in) : fx_write(img_name, ib, in);
}

static void test_plain_exact(void) {
    const char *lp, *ip = write_tiny("img", "lab", false, false, &lp);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_idx(&d, ip, lp));
    if (d) check_tiny(d);
    petrel_dataset_free(d);
}

static void test_gzip_exact(void) {
    const char *lp, *ip = write_tiny("img.gz", "lab.gz", true, true, &lp);
    size_t n;
    unsigned char *raw = fx_read(ip, &n);
    CHECK(raw && raw[0] == 0x1f && raw[1] == 0x8b); /* really compressed */
    free(raw);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_idx(&d, ip, lp));
    if (d) check_tiny(d);
    petrel_dataset_free(d);

    /* One compressed, one plain. */
    ip = write_tiny("img2.gz", "lab2", true, false, &lp);
    d = NULL;
    CHECK_OK(petrel_dataset_load_idx(&d, ip, lp));
    if (d) check_tiny(d);
    petrel_dataset_free(d);
}

/* Two gzip members back to back read as one stream, as gzip(1) does. */
static void test_gzip_multimember(void) {
    unsigned char ib[64];
    size_t in = make_images(ib, 0x00000803, 3, 2, 3, pixels, 18);
    const char *a = fx_write_gz("part1.gz", ib, 10);
    const char *b = fx_write_gz("part2.gz", ib + 10, in - 10);
    size_t na, nb;
    unsigned char *ra = fx_read(a, &na), *rb = fx_read(b, &nb);
    unsigned char cat[256];
    memcpy(cat, ra, na);
    memcpy(cat + na, rb, nb);
    const char *ip = fx_write("cat.gz", cat, na + nb);
    free(ra);
    free(rb);
    unsigned char lb[16];
    const char *lp = fx_write("cat-lab", lb, make_labels(lb, 3, labels, 3));
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_idx(&d, ip, lp));
    if (d) check_tiny(d);
    petrel_dataset_free(d);
}

static void test_truncated(void) {
    unsigned char ib[64], lb[16];
    size_t in = make_images(ib, 0x00000803, 3, 2, 3, pixels, 18);
    const char *lp = fx_write("t-lab", lb, make_labels(lb, 3, labels, 3));
    const char *ip = fx_write("t-img", ib, in - 2);
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK(d == NULL); /* untouched */
    CHECK_MSG(ip);
    CHECK_MSG("truncated");
    CHECK_MSG("offset 32");
    CHECK_MSG("3 images of 2x3 (18 bytes)");
    CHECK_MSG("only 16 bytes");

    /* The same, compressed: the gzip stream is complete but its content short. */
    ip = fx_write_gz("t-img.gz", ib, in - 2);
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("truncated");

    /* The gzip stream itself cut in the middle. */
    ip = write_tiny("cut.gz", "cut-lab", true, false, &lp);
    size_t n;
    unsigned char *raw = fx_read(ip, &n);
    ip = fx_write("cut.gz", raw, n - 12);
    free(raw);
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("gzip");

    /* Inside the header. */
    ip = fx_write("hdr", ib, 6);
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("offset 6");
    CHECK_MSG("header");

    /* Labels short by one. */
    ip = fx_write("t-img-ok", ib, in);
    lp = fx_write("t-lab-short", lb, 10);
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(lp);
    CHECK_MSG("truncated: header declares 3 labels");
    CHECK(d == NULL);
}

static void test_overlong(void) {
    unsigned char ib[64], lb[16];
    size_t in = make_images(ib, 0x00000803, 3, 2, 3, pixels, 18);
    ib[in] = 9;
    const char *ip = fx_write("long-img", ib, in + 1);
    const char *lp = fx_write("long-lab", lb, make_labels(lb, 3, labels, 3));
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("offset 34");
    CHECK_MSG("continues past");
}

static void test_wrong_magic(void) {
    unsigned char ib[64], lb[16];
    const char *ip = fx_write("m-img", ib, make_images(ib, 0x00000801, 3, 2, 3, pixels, 18));
    const char *lp = fx_write("m-lab", lb, make_labels(lb, 3, labels, 3));
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("offset 0");
    CHECK_MSG("0x00000803");
    CHECK_MSG("found 0x00000801");
    CHECK_MSG("swapped");

    /* Paths the wrong way round. */
    ip = fx_write("m-img2", ib, make_images(ib, 0x00000803, 3, 2, 3, pixels, 18));
    CHECK_ERR(petrel_dataset_load_idx(&d, lp, ip), PETREL_ERR_FORMAT);
    CHECK_MSG(lp);
    CHECK_MSG("swapped");

    /* A 16-bit element type (0x0B) is not read. */
    ip = fx_write("m-img3", ib, make_images(ib, 0x00000B03, 3, 2, 3, pixels, 18));
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG("found 0x00000b03");
    CHECK(d == NULL);
}

static void test_mismatched_counts(void) {
    unsigned char ib[64], lb[16];
    const char *ip = fx_write("c-img", ib, make_images(ib, 0x00000803, 3, 2, 3, pixels, 18));
    const char *lp = fx_write("c-lab", lb, make_labels(lb, 2, labels, 2));
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG(lp);
    CHECK_MSG("3 images");
    CHECK_MSG("2 labels");
}

static void test_zero_dim(void) {
    unsigned char ib[64], lb[16];
    const char *ip = fx_write("z-img", ib, make_images(ib, 0x00000803, 3, 0, 3, NULL, 0));
    const char *lp = fx_write("z-lab", lb, make_labels(lb, 3, labels, 3));
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("offset 8");
    CHECK_MSG("is 0");
}

static void test_missing_file(void) {
    unsigned char lb[16];
    const char *lp = fx_write("x-lab", lb, make_labels(lb, 3, labels, 3));
    const char *ip = fx_path("does-not-exist");
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_IO);
    CHECK_MSG(ip);
    CHECK_MSG("cannot open");
}

/* Headers that claim terabytes; the files hold a few bytes. None may cost more
 * than a few MiB. This file loads nothing large, so the process peak covers it. */
static void test_hostile_headers(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    unsigned char ib[64], lb[16];
    petrel_dataset *d = NULL;

    /* 2^31 images of 2^31 x 2^31. */
    const char *ip = fx_write("h1-img", ib,
                              make_images(ib, 0x00000803, 1u << 31, 1u << 31, 1u << 31, pixels, 4));
    const char *lp = fx_write("h1-lab", lb, make_labels(lb, 1u << 31, labels, 3));
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("2147483648x2147483648");

    /* 2^31 plausible 28x28 images (1.7 TB), labels claiming as many. */
    ip = fx_write("h2-img", ib, make_images(ib, 0x00000803, 1u << 31, 28, 28, pixels, 18));
    lp = fx_write("h2-lab", lb, make_labels(lb, 1u << 31, labels, 3));
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(lp);
    CHECK_MSG("truncated: header declares 2147483648 labels");
    CHECK_MSG("only 3 bytes");

    /* 3 images of 30000 x 30000 (2.7 GB) with honest labels: the images file is
     * read and found short, plain and compressed. */
    lp = fx_write("h3-lab", lb, make_labels(lb, 3, labels, 3));
    ip = fx_write("h3-img", ib, make_images(ib, 0x00000803, 3, 30000, 30000, pixels, 18));
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("truncated: header declares 3 images of 30000x30000 (2700000000 bytes) but the "
              "file holds only 18 bytes");

    /* Compressed, 6 MB of zeros really present: the buffer grows with them. */
    size_t body = 6u << 20;
    unsigned char *big = calloc(16 + body, 1);
    make_images(big, 0x00000803, 3, 30000, 30000, NULL, 0);
    ip = fx_write_gz("h4-img.gz", big, 16 + body);
    free(big);
    CHECK_ERR(petrel_dataset_load_idx(&d, ip, lp), PETREL_ERR_FORMAT);
    CHECK_MSG(ip);
    CHECK_MSG("only 6291456 bytes");

    petrel_alloc_stats after = petrel_alloc_get_stats();
    CHECK(d == NULL);
    CHECK(after.live_bytes == before.live_bytes);
    CHECK((double)after.peak_bytes < 64 * MiB);
    printf("  # peak after hostile loads: %.1f MiB\n", (double)after.peak_bytes / MiB);
}

/* Every allocation of a load, made to fail in turn, gives PETREL_ERR_NOMEM and
 * leaks nothing; with enough allowed, the load succeeds. */
static void test_alloc_failures(void) {
    const char *lp, *ip = write_tiny("af-img.gz", "af-lab.gz", true, true, &lp);
    uint64_t base = petrel_alloc_get_stats().live_bytes;
    int k;
    for (k = 0; k < 1000; k++) {
        petrel_dataset *d = NULL;
        petrel_alloc_fail_after(k);
        petrel_err err = petrel_dataset_load_idx(&d, ip, lp);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            check_tiny(d);
            petrel_dataset_free(d);
            break;
        }
        if (err != PETREL_ERR_NOMEM) {
            CHECK_ERR(err, PETREL_ERR_NOMEM);
            printf("  # at k = %d: %s\n", k, petrel_errmsg());
            break;
        }
        CHECK(d == NULL);
        CHECK(petrel_alloc_get_stats().live_bytes == base);
    }
    CHECK(k > 3); /* zlib's state and window, the buffers and the dataset all failed once */
    CHECK(k < 1000);
    CHECK(petrel_alloc_get_stats().live_bytes == base);
}

int main(void) {
    fx_init();
    RUN(test_hostile_headers); /* first: it reads the process-wide peak */
    RUN(test_plain_exact);
    RUN(test_gzip_exact);
    RUN(test_gzip_multimember);
    RUN(test_truncated);
    RUN(test_overlong);
    RUN(test_wrong_magic);
    RUN(test_mismatched_counts);
    RUN(test_zero_dim);
    RUN(test_missing_file);
    RUN(test_alloc_failures);
    RUN(test_nothing_leaked);
    fx_cleanup();
    return CHECK_DONE();
}
