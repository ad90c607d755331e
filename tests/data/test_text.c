/* Text to hashed bag-of-words libsvm (src/data/text.c): tokenizer, FNV-1a buckets,
 * TF-IDF, L2 norm, the seeded split, directory corpora and their errors, and the
 * WordNet corpus when /usr/share/wordnet is installed. */
#include "check.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static void path_in(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void write_text(const char *name, const char *text) {
    char p[512];
    path_in(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void make_dir(const char *name) {
    char p[512];
    path_in(p, sizeof p, name);
    mkdir(p, 0700);
}

/* The value at column col of row r of a sparse dataset, or 0. */
static float value_at(const petrel_dataset *d, int64_t r, int32_t col) {
    const petrel_csr *s = &d->sparse;
    for (int64_t e = s->row_ptr[r]; e < s->row_ptr[r + 1]; e++)
        if (s->col[e] == col) return s->val[e];
    return 0;
}

static int64_t count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int64_t n = 0;
    for (int ch; (ch = fgetc(f)) != EOF;) n += ch == '\n';
    fclose(f);
    return n;
}

static void test_fnv1a(void) {
    CHECK(petrel_text_hash("", 0) == 0xcbf29ce484222325ULL);
    CHECK(petrel_text_hash("a", 1) == 0xaf63dc4c8601ec8cULL);
    CHECK(petrel_text_hash("hello", 5) == 0xa430d84680aabd0bULL);
}

static void test_tokenizer(void) {
    const char *s = "Hello, WORLD! a b2 x 42";
    uint32_t b[16];
    /* "a" and "x" are too short; case folds; punctuation separates. */
    size_t n = petrel_text_features(s, strlen(s), false, 18, b, 16);
    CHECK(n == 4);
    uint32_t want[] = {179467, 35571, 99221, 102947}; /* hello world b2 42, FNV-1a mod 2^18 */
    for (size_t i = 0; i < 4 && n == 4; i++) CHECK(b[i] == want[i]);
    n = petrel_text_features(s, strlen(s), true, 18, b, 16);
    CHECK(n == 7);
    uint32_t want2[] = {179467, 35571, 53991, 99221, 141625, 102947, 192489};
    for (size_t i = 0; i < 7 && n == 7; i++) CHECK(b[i] == want2[i]);
    /* cap bounds the writes, the count is still the total */
    CHECK(petrel_text_features(s, strlen(s), true, 18, b, 2) == 7);
    CHECK(petrel_text_features("", 0, true, 18, b, 16) == 0);
    CHECK(petrel_text_features("é-ok", strlen("é-ok"), false, 18, b, 16) == 1);
    CHECK(b[0] == (uint32_t)(petrel_text_hash("ok", 2) & ((1u << 18) - 1)));
}

static void test_idf(void) {
    CHECK_NEAR(petrel_text_idf(3, 1), log(2.0) + 1, 1e-12, 0);
    CHECK_NEAR(petrel_text_idf(3, 3), 1.0, 1e-12, 0);
    CHECK_NEAR(petrel_text_idf(3, 0), log(4.0) + 1, 1e-12, 0);
}

static void test_split(void) {
    enum { N = 1000 };
    bool *a = malloc(N), *b = malloc(N), *c = malloc(N);
    CHECK_OK(petrel_text_split(a, N, 0.25, 7));
    CHECK_OK(petrel_text_split(b, N, 0.25, 7));
    CHECK_OK(petrel_text_split(c, N, 0.25, 8));
    int na = 0, same = 1, diff = 0;
    for (int i = 0; i < N; i++) {
        na += a[i];
        same &= a[i] == b[i];
        diff += a[i] != c[i];
    }
    CHECK(na == 250);
    CHECK(same);
    CHECK(diff > 0);
    CHECK_ERR(petrel_text_split(a, N, 1.0, 7), PETREL_ERR_INVALID);
    CHECK_ERR(petrel_text_split(a, N, -0.1, 7), PETREL_ERR_INVALID);
    free(a);
    free(b);
    free(c);
}

/* Three documents, all in train: class "a" = {"apple apple banana", "apple cherry"},
 * class "b" = {"banana date date date"}. df: apple 2, banana 2, cherry 1, date 1. */
static void test_tfidf_by_hand(void) {
    make_dir("tf");
    write_text("tf/a", "apple apple banana\n\napple cherry\n");
    write_text("tf/b", "banana date date date\n");
    char in[512], out[512];
    char train[640], test[640];
    path_in(in, sizeof in, "tf");
    path_in(out, sizeof out, "tf_out");
    snprintf(train, sizeof train, "%s.train.svm", out);
    snprintf(test, sizeof test, "%s.test.svm", out);
    petrel_text_config cfg = petrel_text_config_default();
    cfg.tfidf = true;
    cfg.l2 = false;
    cfg.test_fraction = 0;
    petrel_text_summary s;
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.docs == 3 && s.train_docs == 3 && s.test_docs == 0 && s.classes == 2);
    CHECK(s.features_used == 4);
    CHECK(count_lines(test) == 0);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, train, 0));
    if (!d) return;
    double i2 = log(4.0 / 3.0) + 1, i1 = log(2.0) + 1;
    int32_t apple = 196031, banana = 182416, cherry = 186616, date = 213817;
    CHECK(d->n == 3 && d->num_classes == 2);
    CHECK(d->y[0] == 0 && d->y[1] == 0 && d->y[2] == 1);
    CHECK_NEAR(value_at(d, 0, apple), 2 * i2, 1e-5, 1e-6);
    CHECK_NEAR(value_at(d, 0, banana), i2, 1e-5, 1e-6);
    CHECK_NEAR(value_at(d, 1, apple), i2, 1e-5, 1e-6);
    CHECK_NEAR(value_at(d, 1, cherry), i1, 1e-5, 1e-6);
    CHECK_NEAR(value_at(d, 2, banana), i2, 1e-5, 1e-6);
    CHECK_NEAR(value_at(d, 2, date), 3 * i1, 1e-5, 1e-6);
    CHECK(d->sparse.nnz == 6);
    petrel_dataset_free(d);
}

/* The same corpus with max_df 0.5: apple and banana (in 2 of 3 documents, more than
 * floor(1.5) = 1) are dropped before the L2 scaling; the first document is left
 * empty. */
static void test_max_df(void) {
    char in[512], out[512], train[640];
    path_in(in, sizeof in, "tf");
    path_in(out, sizeof out, "tf_maxdf");
    snprintf(train, sizeof train, "%s.train.svm", out);
    petrel_text_config cfg = petrel_text_config_default();
    cfg.test_fraction = 0;
    cfg.max_df = 0.5;
    petrel_text_summary s;
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.features_used == 4 && s.features_dropped == 2);
    petrel_dataset *d = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&d, train, 0));
    if (!d) return;
    int32_t apple = 196031, cherry = 186616, date = 213817;
    CHECK(d->n == 3 && d->sparse.nnz == 2);
    CHECK(d->sparse.row_ptr[1] == 0); /* "apple apple banana": nothing left */
    CHECK_NEAR(value_at(d, 1, cherry), 1, 1e-6, 0);
    CHECK_NEAR(value_at(d, 1, apple), 0, 0, 0);
    CHECK_NEAR(value_at(d, 2, date), 1, 1e-6, 0);
    petrel_dataset_free(d);
    cfg.max_df = 1; /* keeps all */
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.features_dropped == 0);
    cfg.max_df = 0;
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_INVALID);
    cfg.max_df = 1.5;
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_INVALID);
}

/* A directory corpus: one directory per class, each file a document. */
static void test_dir_corpus_roundtrip(void) {
    make_dir("dc");
    make_dir("dc/sports");
    make_dir("dc/cooking");
    char name[64];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "dc/sports/%d.txt", i);
        write_text(name, "The team won the match.\nA great goal in the final game!\n");
        snprintf(name, sizeof name, "dc/cooking/%d.txt", i);
        write_text(name, "Stir the soup, add salt and pepper.\nBake the bread bread.\n");
    }
    char in[512], out[512];
    char train[640], test[640], classes[640];
    path_in(in, sizeof in, "dc");
    path_in(out, sizeof out, "dc_out");
    snprintf(train, sizeof train, "%s.train.svm", out);
    snprintf(test, sizeof test, "%s.test.svm", out);
    snprintf(classes, sizeof classes, "%s.classes", out);
    petrel_text_config cfg = petrel_text_config_default();
    cfg.test_fraction = 0.3;
    cfg.seed = 5;
    petrel_text_summary s;
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.docs == 20 && s.classes == 2 && s.test_docs == 6 && s.train_docs == 14);
    CHECK(count_lines(train) == 14 && count_lines(test) == 6);
    FILE *f = fopen(classes, "r");
    char l0[64] = "", l1[64] = "";
    if (f) {
        CHECK(fgets(l0, sizeof l0, f) && fgets(l1, sizeof l1, f));
        fclose(f);
    }
    CHECK(strcmp(l0, "0 cooking\n") == 0 && strcmp(l1, "1 sports\n") == 0);

    petrel_dataset *tr = NULL, *te = NULL;
    CHECK_OK(petrel_dataset_load_libsvm(&tr, train, 0));
    if (tr) CHECK_OK(petrel_dataset_load_libsvm_like(&te, test, tr));
    if (!tr || !te) {
        petrel_dataset_free(tr);
        return;
    }
    CHECK(tr->num_classes == 2 && tr->label_values[0] == 0 && tr->label_values[1] == 1);
    /* Every row has unit L2 norm. A cooking document: "the" and "bread" twice, seven
     * other tokens once -> counts 2, 2 and seven 1s, norm sqrt(15). */
    const char *bread = "bread";
    int32_t bcol = (int32_t)(petrel_text_hash(bread, 5) & ((1u << 18) - 1));
    for (int64_t r = 0; r < tr->n; r++) {
        double ss = 0;
        for (int64_t e = tr->sparse.row_ptr[r]; e < tr->sparse.row_ptr[r + 1]; e++)
            ss += (double)tr->sparse.val[e] * tr->sparse.val[e];
        CHECK_NEAR(ss, 1.0, 1e-5, 0);
        if (tr->y[r] == 0)
            CHECK_NEAR(value_at(tr, r, bcol), 2 / sqrt(15.0), 1e-6, 1e-5);
        else
            CHECK(value_at(tr, r, bcol) == 0);
    }
    /* The same seed gives the same files. */
    char out2[512], train2[640];
    path_in(out2, sizeof out2, "dc_out2");
    snprintf(train2, sizeof train2, "%s.train.svm", out2);
    CHECK_OK(petrel_text_to_libsvm(in, out2, cfg, NULL));
    FILE *a = fopen(train, "r"), *b = fopen(train2, "r");
    if (a && b) {
        int ca, cb;
        do {
            ca = fgetc(a);
            cb = fgetc(b);
        } while (ca == cb && ca != EOF);
        CHECK(ca == cb);
    }
    if (a) fclose(a);
    if (b) fclose(b);
    petrel_dataset_free(te);
    petrel_dataset_free(tr);
}

static void test_per_line(void) {
    make_dir("pl");
    make_dir("pl/x");
    make_dir("pl/y");
    write_text("pl/x/f", "one doc here\ntwo doc here\n\nthree doc\n");
    write_text("pl/y/g", "yes yes\n");
    char in[512], out[512];
    path_in(in, sizeof in, "pl");
    path_in(out, sizeof out, "pl_out");
    petrel_text_config cfg = petrel_text_config_default();
    cfg.per_line = true;
    petrel_text_summary s;
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.docs == 4 && s.classes == 2);
    cfg.per_line = false;
    CHECK_OK(petrel_text_to_libsvm(in, out, cfg, &s));
    CHECK(s.docs == 2);
}

static void test_errors(void) {
    char in[512], out[512];
    path_in(out, sizeof out, "err_out");
    petrel_text_config cfg = petrel_text_config_default();
    path_in(in, sizeof in, "missing");
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_IO);
    CHECK(strstr(petrel_errmsg(), "missing") != NULL);

    make_dir("ec");
    make_dir("ec/full");
    make_dir("ec/hollow");
    write_text("ec/full/1", "some words\n");
    path_in(in, sizeof in, "ec");
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "ec/hollow") != NULL);
    CHECK(strstr(petrel_errmsg(), "no documents") != NULL);

    make_dir("empty");
    path_in(in, sizeof in, "empty");
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_FORMAT);
    CHECK(strstr(petrel_errmsg(), "no classes") != NULL);

    cfg.hash_bits = 0;
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_INVALID);
    cfg = petrel_text_config_default();
    cfg.source = PETREL_TEXT_WORDNET;
    path_in(in, sizeof in, "missing");
    CHECK_ERR(petrel_text_to_libsvm(in, out, cfg, NULL), PETREL_ERR_IO);
    CHECK(strstr(petrel_errmsg(), "data.noun") != NULL);
}

static void test_wordnet(void) {
    if (access("/usr/share/wordnet/data.noun", R_OK) != 0) {
        printf("# /usr/share/wordnet missing (Debian wordnet-base): wordnet check skipped\n");
        return;
    }
    char out[512];
    path_in(out, sizeof out, "wn");
    petrel_text_config cfg = petrel_text_config_default();
    cfg.source = PETREL_TEXT_WORDNET;
    cfg.hash_bits = 16;
    petrel_text_summary s;
    CHECK_OK(petrel_text_to_libsvm("/usr/share/wordnet", out, cfg, &s));
    CHECK(s.docs > 110000 && s.docs < 125000);
    CHECK(s.classes == 45);
    CHECK(s.features_used > 1000 && s.features_used <= 65536);
    CHECK(s.test_docs == (int64_t)floor(0.2 * (double)s.docs + 0.5));
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/petrel_text_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        printf("FAIL - mkdtemp\n");
        return 1;
    }
    petrel_alloc_stats before = petrel_alloc_get_stats();
    RUN(test_fnv1a);
    RUN(test_tokenizer);
    RUN(test_idf);
    RUN(test_split);
    RUN(test_tfidf_by_hand);
    RUN(test_max_df);
    RUN(test_dir_corpus_roundtrip);
    RUN(test_per_line);
    RUN(test_errors);
    RUN(test_wordnet);
    CHECK_NO_LEAKS(before);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return CHECK_DONE();
}
