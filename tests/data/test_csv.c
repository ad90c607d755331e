/* CSV reader: values and label mapping under each option, and the errors with
 * their line numbers. */
#include "fixtures.h"

static void test_default_options(void) {
    petrel_csv_options o = petrel_csv_options_default();
    CHECK(o.label_column == -1);
    CHECK(!o.header);
    CHECK(o.delimiter == ',');

    const char *p = fx_write_str("a.csv", "1,2,6\n4,5.5,3\n-7,8e-1,6"); /* no final newline */
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_csv(&d, p, o));
    if (!d) return;
    CHECK(d->n == 3 && d->dim == 2);
    CHECK(d->x != NULL && !petrel_dataset_is_sparse(d));
    CHECK(d->channels == 0 && d->height == 0 && d->width == 0);
    static const float x[6] = {1, 2, 4, 5.5f, -7, 0.8f};
    CHECK_TENSOR_NEAR(d->x, x, 6, 0, 0);
    /* Labels 6, 3, 6 -> classes by value: 3 -> 0, 6 -> 1. */
    CHECK(d->num_classes == 2);
    CHECK(d->label_values[0] == 3 && d->label_values[1] == 6);
    CHECK(d->y[0] == 1 && d->y[1] == 0 && d->y[2] == 1);
    petrel_dataset_free(d);
}

static void test_header_delimiter_label_column(void) {
    const char *p = fx_write_str("b.csv", "label; f1 ; f2\r\n"
                                          "\r\n"
                                          " 0.5 ; 10 ; 20 \r\n"
                                          "-1;11;21\r\n"
                                          "\n"
                                          "0.5;12;  22\r\n");
    petrel_csv_options o = {.label_column = 0, .header = true, .delimiter = ';'};
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_csv(&d, p, o));
    if (!d) return;
    CHECK(d->n == 3 && d->dim == 2);
    static const float x[6] = {10, 20, 11, 21, 12, 22};
    CHECK_TENSOR_NEAR(d->x, x, 6, 0, 0);
    CHECK(d->num_classes == 2);
    CHECK(d->label_values[0] == -1 && d->label_values[1] == 0.5);
    CHECK(d->y[0] == 1 && d->y[1] == 0 && d->y[2] == 1);
    petrel_dataset_free(d);

    /* Tab-separated, label in the middle, gzip-compressed. */
    const char tsv[] = "1\t7\t2\n3\t8\t4\n";
    p = fx_write_gz("c.tsv.gz", tsv, strlen(tsv));
    o = (petrel_csv_options){.label_column = 1, .header = false, .delimiter = '\t'};
    d = NULL;
    CHECK_OK(petrel_dataset_load_csv(&d, p, o));
    if (!d) return;
    static const float x2[4] = {1, 2, 3, 4};
    CHECK(d->n == 2 && d->dim == 2);
    CHECK_TENSOR_NEAR(d->x, x2, 4, 0, 0);
    CHECK(d->y[0] == 0 && d->y[1] == 1 && d->label_values[1] == 8);
    petrel_dataset_free(d);
}

static void expect(const char *name, const char *text, petrel_csv_options o, petrel_err code,
                   const char *where, const char *what) {
    const char *p = fx_write_str(name, text);
    char want[512];
    snprintf(want, sizeof want, "%s:%s", p, where);
    petrel_dataset *d = NULL;
    CHECK_ERR(petrel_dataset_load_csv(&d, p, o), code);
    CHECK(d == NULL);
    CHECK_MSG(want);
    CHECK_MSG(what);
}

static void test_errors(void) {
    petrel_csv_options o = petrel_csv_options_default();
    expect("r1.csv", "1,2,3,4,5\n1,2,3,4,5\n1,2,3,4\n", o, PETREL_ERR_FORMAT,
           "3:", "expected 5 columns, found 4");
    expect("r2.csv", "1,2,3\n\n1,2,3,4\n", o, PETREL_ERR_FORMAT,
           "3:", "expected 3 columns, found 4");
    expect("r3.csv", "1,2,3\n1,x,3\n", o, PETREL_ERR_FORMAT,
           "2:", "column 2: expected a finite number, found 'x'");
    expect("r4.csv", "1,,3\n", o, PETREL_ERR_FORMAT, "1:", "column 2");
    expect("r5.csv", "1,2 3,3\n", o, PETREL_ERR_FORMAT, "1:", "found '2 3'");
    expect("r6.csv", "1,2,nan\n", o, PETREL_ERR_FORMAT, "1:", "column 3");
    expect("r7.csv", "1\n2\n", o, PETREL_ERR_FORMAT, "1:", "at least 2 columns");
    /* The header sets the column count too. */
    petrel_csv_options h = o;
    h.header = true;
    expect("r8.csv", "a,b\n1,2,3\n", h, PETREL_ERR_FORMAT, "2:", "expected 2 columns, found 3");
    petrel_csv_options l = o;
    l.label_column = 3;
    expect("r9.csv", "1,2,3\n", l, PETREL_ERR_INVALID, "1:", "label column 3");

    const char *p = fx_write_str("ok.csv", "1,2\n");
    petrel_dataset *d = NULL;
    petrel_csv_options bad = o;
    bad.delimiter = '.';
    CHECK_ERR(petrel_dataset_load_csv(&d, p, bad), PETREL_ERR_INVALID);
    CHECK_MSG("delimiter");
    bad.delimiter = 'e';
    CHECK_ERR(petrel_dataset_load_csv(&d, p, bad), PETREL_ERR_INVALID);
    bad = o;
    bad.label_column = -2;
    CHECK_ERR(petrel_dataset_load_csv(&d, p, bad), PETREL_ERR_INVALID);
    p = fx_write_str("hdr-only.csv", "a,b\n");
    CHECK_ERR(petrel_dataset_load_csv(&d, p, h), PETREL_ERR_FORMAT);
    CHECK_MSG("no samples");
    CHECK_ERR(petrel_dataset_load_csv(&d, fx_path("missing.csv"), o), PETREL_ERR_IO);
    CHECK(d == NULL);
}

static void test_alloc_failures(void) {
    const char *p = fx_write_str("af.csv", "x,y,label\n1,2,-1\n3,4,1\n5,6,-1\n");
    petrel_csv_options o = petrel_csv_options_default();
    o.header = true;
    uint64_t base = petrel_alloc_get_stats().live_bytes;
    int k;
    for (k = 0; k < 1000; k++) {
        petrel_dataset *d = NULL;
        petrel_alloc_fail_after(k);
        petrel_err err = petrel_dataset_load_csv(&d, p, o);
        petrel_alloc_fail_after(-1);
        if (err == PETREL_OK) {
            CHECK(d->n == 3 && d->y[1] == 1 && d->x[5] == 6);
            petrel_dataset_free(d);
            break;
        }
        CHECK_ERR(err, PETREL_ERR_NOMEM);
        CHECK(d == NULL);
        CHECK(petrel_alloc_get_stats().live_bytes == base);
    }
    CHECK(k >= 4);
    CHECK(k < 1000);
}

int main(void) {
    fx_init();
    RUN(test_default_options);
    RUN(test_header_delimiter_label_column);
    RUN(test_errors);
    RUN(test_alloc_failures);
    RUN(test_nothing_leaked);
    fx_cleanup();
    return CHECK_DONE();
}
