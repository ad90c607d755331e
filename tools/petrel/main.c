/* petrel: the command-line entry point; dispatches to one cmd_<sub>.c per subcommand. */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(petrel_err err, const char *what, const char *hint) {
    const char *why = petrel_errmsg();
    fprintf(stderr, "petrel: error: %s: %s\n", what, why[0] ? why : petrel_strerror(err));
    if (hint) fprintf(stderr, "hint: %s\n", hint);
    return CLI_FAIL;
}

int cli_usage_error(const char *sub, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "petrel: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\ntry 'petrel %s--help'\n", sub ? sub : "");
    va_end(ap);
    return CLI_USAGE;
}

bool cli_parse_i64(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

bool cli_parse_f32(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: petrel <command> [options]\n"
        "\n"
        "petrel trains machine-learning models on one machine or a cluster.\n"
        "\n"
        "commands:\n"
        "  train      train a model (softmax, mlp, cnn, logreg, svm, mf) in one process, data\n"
        "             parallel, or through the parameter server; writes metrics and a checkpoint\n"
        "  launch     run a program as a local job: coordinator, servers, workers\n"
        "  bench      measure a part of petrel against its baselines (net, allreduce, dp,\n"
        "             hogwild, ps)\n"
        "  data       prepare datasets (text2libsvm: labelled text to libsvm files;\n"
        "             synth-ratings: a synthetic low-rank ratings file)\n"
        "  version    print the version\n"
        "\n"
        "options:\n"
        "  -h, --help     show this help\n"
        "\n"
        "'petrel <command> --help' lists the command's options with their defaults.\n"
        "environment: PETREL_LOG=error|warn|info|debug (default warn),\n"
        "             PETREL_DATA_DIR (where named datasets live, default /usr/share/datasets),\n"
        "             PETREL_GEMM=openblas (use OpenBLAS for every GEMM)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("petrel %s\n", PETREL_VERSION_STRING);
        return CLI_OK;
    }
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "launch") == 0) return cmd_launch(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0) return cmd_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "data") == 0) return cmd_data(argc - 1, argv + 1);
    return cli_usage_error(NULL, "unknown command '%s'", cmd);
}
