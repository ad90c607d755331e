/* petrel data: dataset preparation. text2libsvm turns labelled text into hashed
 * bag-of-words libsvm files (docs/text.md); synth-ratings writes a synthetic
 * low-rank ratings file for matrix factorization (docs/formats.md). */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void data_usage(FILE *f) {
    fprintf(f, "usage: petrel data <subcommand> [options]\n"
               "\n"
               "subcommands:\n"
               "  text2libsvm   labelled text to hashed bag-of-words libsvm files\n"
               "  synth-ratings a synthetic low-rank 'user item rating' file (for --model mf)\n"
               "\n"
               "'petrel data <subcommand> --help' lists its options with their defaults.\n");
}

static void text_usage(FILE *f) {
    fprintf(f,
            "usage: petrel data text2libsvm [options] CORPUS\n"
            "       petrel data text2libsvm [options] --wordnet DIR | --fortune-dir DIR\n"
            "\n"
            "Tokenizes labelled text (ASCII letters and digits, lowercased, tokens of 2 or more\n"
            "characters), hashes the tokens with 64-bit FNV-1a into 2^K buckets and writes\n"
            "OUT.train.svm, OUT.test.svm (label = class number, 1-based sorted indices) and\n"
            "OUT.classes (class number and name). CORPUS is a directory holding one directory\n"
            "per class (each file a document) or one file per class (each line a document);\n"
            "classes are numbered in sorted name order.\n"
            "\n"
            "options (default in brackets):\n"
            "  -o, --out PREFIX      output prefix [text]\n"
            "  --per-line            class directories: each line of a file is a document\n"
            "                        [each file is one document]\n"
            "  --wordnet DIR         read WordNet glosses from DIR/data.{noun,verb,adj,adv},\n"
            "                        labelled by lexicographer file (Debian wordnet-base:\n"
            "                        /usr/share/wordnet)\n"
            "  --fortune-dir DIR     read fortune files (one class per file, '%%' lines\n"
            "                        separate documents; Debian fortunes-min:\n"
            "                        /usr/share/games/fortunes)\n"
            "  --hash-bits K         2^K hash buckets, 1 .. 31 [18]\n"
            "  --bigrams             add bigrams of consecutive tokens [off]\n"
            "  --tfidf               TF-IDF, idf = ln((1+N)/(1+df)) + 1 on the train split\n"
            "                        [counts]\n"
            "  --no-l2               keep raw values [scale each document to unit L2 norm]\n"
            "  --max-df F            drop the buckets found in more than a share F of the\n"
            "                        training documents (stop words), 0 < F <= 1 [1: keep all]\n"
            "  --test-fraction F     share of documents in the test split, 0 <= F < 1 [0.2]\n"
            "  --seed S              split seed [1]\n"
            "  -h, --help            show this help\n");
}

/* A whole finite decimal number, as a double: the library takes doubles, and a
 * float's rounding would change the file. */
static bool parse_f64(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int cmd_text2libsvm(int argc, char **argv) {
    enum {
        OPT_PER_LINE = 256,
        OPT_WORDNET,
        OPT_FORTUNE,
        OPT_HASH_BITS,
        OPT_BIGRAMS,
        OPT_TFIDF,
        OPT_NO_L2,
        OPT_TEST_FRACTION,
        OPT_SEED,
        OPT_MAX_DF,
    };
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},
        {"per-line", no_argument, NULL, OPT_PER_LINE},
        {"wordnet", required_argument, NULL, OPT_WORDNET},
        {"fortune-dir", required_argument, NULL, OPT_FORTUNE},
        {"hash-bits", required_argument, NULL, OPT_HASH_BITS},
        {"bigrams", no_argument, NULL, OPT_BIGRAMS},
        {"tfidf", no_argument, NULL, OPT_TFIDF},
        {"no-l2", no_argument, NULL, OPT_NO_L2},
        {"test-fraction", required_argument, NULL, OPT_TEST_FRACTION},
        {"seed", required_argument, NULL, OPT_SEED},
        {"max-df", required_argument, NULL, OPT_MAX_DF},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sub = "data text2libsvm ";
    petrel_text_config cfg = petrel_text_config_default();
    const char *out = "text", *input = NULL;
    int64_t v;
    float fv;
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case OPT_PER_LINE:
            cfg.per_line = true;
            break;
        case OPT_WORDNET:
        case OPT_FORTUNE:
            if (input) return cli_usage_error(sub, "give one corpus only");
            input = optarg;
            cfg.source = c == OPT_WORDNET ? PETREL_TEXT_WORDNET : PETREL_TEXT_FORTUNE;
            break;
        case OPT_HASH_BITS:
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 31)
                return cli_usage_error(sub, "--hash-bits wants an integer in 1 .. 31, not '%s'",
                                       optarg);
            cfg.hash_bits = (int)v;
            break;
        case OPT_BIGRAMS:
            cfg.bigrams = true;
            break;
        case OPT_TFIDF:
            cfg.tfidf = true;
            break;
        case OPT_NO_L2:
            cfg.l2 = false;
            break;
        case OPT_TEST_FRACTION:
            if (!cli_parse_f32(optarg, &fv) || !(fv >= 0.0f && fv < 1.0f))
                return cli_usage_error(sub, "--test-fraction wants a number in [0, 1), not '%s'",
                                       optarg);
            cfg.test_fraction = fv;
            break;
        case OPT_MAX_DF:
            if (!parse_f64(optarg, &cfg.max_df) || !(cfg.max_df > 0 && cfg.max_df <= 1))
                return cli_usage_error(sub, "--max-df wants a number in (0, 1], not '%s'", optarg);
            break;
        case OPT_SEED:
            if (!cli_parse_i64(optarg, &v) || v < 0)
                return cli_usage_error(sub, "--seed wants a non-negative integer, not '%s'",
                                       optarg);
            cfg.seed = (uint64_t)v;
            break;
        case 'h':
            text_usage(stdout);
            return CLI_OK;
        case ':':
            return cli_usage_error(sub, "%s needs a value", argv[optind - 1]);
        default:
            return cli_usage_error(sub, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) {
        if (input || optind + 1 < argc) return cli_usage_error(sub, "give one corpus only");
        input = argv[optind];
    }
    if (!input)
        return cli_usage_error(sub, "no corpus: give CORPUS, --wordnet DIR or --fortune-dir DIR");

    petrel_text_summary s;
    petrel_err err = petrel_text_to_libsvm(input, out, cfg, &s);
    if (err != PETREL_OK)
        return cli_fail(err, "converting text",
                        "see 'petrel data text2libsvm --help' for the layout");
    printf("text2libsvm: %lld documents (%lld train, %lld test), %d classes, %lld of %lld "
           "features used",
           (long long)s.docs, (long long)s.train_docs, (long long)s.test_docs, (int)s.classes,
           (long long)s.features_used, 1LL << cfg.hash_bits);
    if (cfg.max_df < 1) printf(" (%lld dropped by --max-df)", (long long)s.features_dropped);
    printf("; wrote %s.train.svm %s.test.svm %s.classes\n", out, out, out);
    return CLI_OK;
}

static void synth_usage(FILE *f) {
    fprintf(f, "usage: petrel data synth-ratings [options] OUT\n"
               "\n"
               "Writes OUT, a ratings file of 'user item rating' lines: the users x items matrix\n"
               "U V^T of the given rank (U, V normal with variance 1/sqrt(rank), so that ratings\n"
               "have variance about 1) plus gaussian noise, each cell observed with probability\n"
               "--density. The same options write the same file.\n"
               "\n"
               "options (default in brackets):\n"
               "  --users U       rows, 1 .. 2^31 [1000]\n"
               "  --items I       columns, 1 .. 2^31 [1000]\n"
               "  --rank R        rank of U V^T, 1 .. 4096 [8]\n"
               "  --density D     probability that a cell is observed, 0 < D <= 1 [0.05]\n"
               "  --noise S       standard deviation of the noise added to each rating [0.1]\n"
               "  --seed N        seed of U, V, the cells and the noise [1]\n"
               "  -h, --help      show this help\n");
}

static int cmd_synth_ratings(int argc, char **argv) {
    enum { OPT_USERS = 256, OPT_ITEMS, OPT_RANK, OPT_DENSITY, OPT_NOISE, OPT_SEED };
    static const struct option opts[] = {
        {"users", required_argument, NULL, OPT_USERS},
        {"items", required_argument, NULL, OPT_ITEMS},
        {"rank", required_argument, NULL, OPT_RANK},
        {"density", required_argument, NULL, OPT_DENSITY},
        {"noise", required_argument, NULL, OPT_NOISE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sub = "data synth-ratings ";
    int64_t users = 1000, items = 1000, rank = 8, seed = 1;
    double density = 0.05, noise = 0.1;
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, ":h", opts, NULL)) != -1;) {
        switch (c) {
        case OPT_USERS:
        case OPT_ITEMS: {
            int64_t *to = c == OPT_USERS ? &users : &items;
            if (!cli_parse_i64(optarg, to) || *to < 1 || *to > (int64_t)INT32_MAX + 1)
                return cli_usage_error(sub, "%s wants an integer in 1 .. 2^31, not '%s'",
                                       c == OPT_USERS ? "--users" : "--items", optarg);
            break;
        }
        case OPT_RANK:
            if (!cli_parse_i64(optarg, &rank) || rank < 1 || rank > 4096)
                return cli_usage_error(sub, "--rank wants an integer in 1 .. 4096, not '%s'",
                                       optarg);
            break;
        case OPT_DENSITY:
            if (!parse_f64(optarg, &density) || !(density > 0 && density <= 1))
                return cli_usage_error(sub, "--density wants a number in (0, 1], not '%s'", optarg);
            break;
        case OPT_NOISE:
            if (!parse_f64(optarg, &noise) || !(noise >= 0))
                return cli_usage_error(sub, "--noise wants a number >= 0, not '%s'", optarg);
            break;
        case OPT_SEED:
            if (!cli_parse_i64(optarg, &seed) || seed < 0)
                return cli_usage_error(sub, "--seed wants a non-negative integer, not '%s'",
                                       optarg);
            break;
        case 'h':
            synth_usage(stdout);
            return CLI_OK;
        case ':':
            return cli_usage_error(sub, "%s needs a value", argv[optind - 1]);
        default:
            return cli_usage_error(sub, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(sub, optind < argc ? "give one output file only" : "no OUT file");
    const char *out = argv[optind];
    petrel_err err =
        petrel_ratings_synth(out, users, items, (int)rank, density, noise, (uint64_t)seed);
    if (err != PETREL_OK) return cli_fail(err, "writing synthetic ratings", NULL);
    printf("synth-ratings: wrote %s: %lld users x %lld items, rank %lld, density %g (about %.0f "
           "ratings), noise %g, seed %lld\n",
           out, (long long)users, (long long)items, (long long)rank, density,
           density * (double)users * (double)items, noise, (long long)seed);
    return CLI_OK;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2) {
        data_usage(stderr);
        return CLI_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "help") == 0) {
        data_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(sub, "text2libsvm") == 0) return cmd_text2libsvm(argc - 1, argv + 1);
    if (strcmp(sub, "synth-ratings") == 0) return cmd_synth_ratings(argc - 1, argv + 1);
    return cli_usage_error("data ", "unknown data subcommand '%s'", sub);
}
