/* petrel data: dataset preparation. text2libsvm turns labelled text into hashed
 * bag-of-words libsvm files (docs/text.md). */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void data_usage(FILE *f) {
    fprintf(f, "usage: petrel data <subcommand> [options]\n"
               "\n"
               "subcommands:\n"
               "  text2libsvm   labelled text to hashed bag-of-words libsvm files\n"
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
            "  --test-fraction F     share of documents in the test split, 0 <= F < 1 [0.2]\n"
            "  --seed S              split seed [1]\n"
            "  -h, --help            show this help\n");
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
           "features used; wrote %s.train.svm %s.test.svm %s.classes\n",
           (long long)s.docs, (long long)s.train_docs, (long long)s.test_docs, (int)s.classes,
           (long long)s.features_used, 1LL << cfg.hash_bits, out, out, out);
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
    return cli_usage_error("data ", "unknown data subcommand '%s'", sub);
}
