/* petrel bench: runs one benchmark (bench_<subject>.c) by name. */
#include "bench.h"
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void bench_usage(FILE *f) {
    fprintf(f, "usage: petrel bench <subject> [options]\n"
               "\n"
               "Measures a part of petrel against what it is built on and prints one line per\n"
               "case. 'petrel bench <subject> --help' lists the subject's options.\n"
               "\n"
               "subjects:\n"
               "  net        TCP and shared-memory transports between two processes, against a\n"
               "             plain TCP socket and memcpy: round trips and streaming bandwidth\n"
               "  allreduce  petrel_allreduce between 2 and 4 processes against Open MPI's\n"
               "             MPI_Allreduce and memcpy: time, algorithm and bus bandwidth\n"
               "  dp         data-parallel training (petrel train --workers 2, each --comm)\n"
               "             against one petrel process and PyTorch DDP: samples/s, accuracy\n"
               "  ps         the parameter server (1 server, 1 or 2 workers, shm and TCP):\n"
               "             push and pull round trips and throughput, a 10M-key sparse push,\n"
               "             against petrel's raw transport and a C++ PS's published figures\n"
               "  hogwild    lock-free SGD (1 and 2 threads; lock-free, locked, round-robin) on\n"
               "             WordNet text and Fashion-MNIST against liblinear: samples/s,\n"
               "             time to liblinear's accuracy\n"
               "\n"
               "options:\n"
               "  -h, --help     show this help\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2) {
        bench_usage(stderr);
        return CLI_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "help") == 0) {
        bench_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(sub, "net") == 0) return bench_net(argc - 1, argv + 1);
    if (strcmp(sub, "allreduce") == 0) return bench_allreduce(argc - 1, argv + 1);
    if (strcmp(sub, "dp") == 0) return bench_dp(argc - 1, argv + 1);
    if (strcmp(sub, "hogwild") == 0) return bench_hogwild(argc - 1, argv + 1);
    if (strcmp(sub, "ps") == 0) return bench_ps(argc - 1, argv + 1);
    return cli_usage_error("bench ", "unknown benchmark '%s'", sub);
}
