/* petrel launch: runs any program as a whole local job (coordinator, servers, workers). */
#include "cli.h"
#include "petrel/launch.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void launch_usage(FILE *f) {
    fprintf(f, "usage: petrel launch -w W [-s S] [options] -- CMD [ARGS...]\n"
               "\n"
               "Runs CMD as one job of 1 + S + W local processes: rank 0 the coordinator,\n"
               "ranks 1..S the servers, the rest the workers. Every node gets PETREL_RANK,\n"
               "PETREL_SIZE, PETREL_SERVERS, PETREL_THREADS, PETREL_COORDINATOR, PETREL_TOKEN,\n"
               "PETREL_JOB_ID and PETREL_INTERFACE; rank 0 also gets its listening socket as\n"
               "PETREL_LISTEN_FD. When a node fails, or on Ctrl-C, the others get SIGTERM, then\n"
               "SIGKILL after the grace period. The exit code is the job's: 0 when every node\n"
               "succeeded, else the first failure's (128 + signal when killed, 124 on timeout).\n"
               "\n"
               "options (default in brackets):\n"
               "  -w, --workers W       worker processes, >= 1 [1]\n"
               "  -s, --servers S       server processes, >= 0 [0]\n"
               "  -t, --threads T       PETREL_THREADS for every node, >= 1 [1]\n"
               "  --interface ADDR      address the nodes listen on [127.0.0.1]\n"
               "  --no-prefix           leave output lines as they are, without \"[worker 1] \"\n"
               "                        [prefix on]\n"
               "  --timeout SECONDS     stop the job after this long, 0 for no limit [0]\n"
               "  --grace MS            wait between SIGTERM and SIGKILL [5000]\n"
               "  -h, --help            show this help\n"
               "\n"
               "example: petrel launch -w 4 -s 2 -- ./my_job --epochs 3\n");
}

int cmd_launch(int argc, char **argv) {
    enum { OPT_INTERFACE = 256, OPT_NO_PREFIX, OPT_TIMEOUT, OPT_GRACE };
    static const struct option longopts[] = {{"workers", required_argument, 0, 'w'},
                                             {"servers", required_argument, 0, 's'},
                                             {"threads", required_argument, 0, 't'},
                                             {"interface", required_argument, 0, OPT_INTERFACE},
                                             {"no-prefix", no_argument, 0, OPT_NO_PREFIX},
                                             {"timeout", required_argument, 0, OPT_TIMEOUT},
                                             {"grace", required_argument, 0, OPT_GRACE},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    petrel_launch_config cfg = petrel_launch_config_default();
    int64_t v;
    int c;
    optind = 1;
    /* "+": stop at the first non-option, so CMD's own flags are never ours. */
    while ((c = getopt_long(argc, argv, "+w:s:t:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'w':
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 4000)
                return cli_usage_error("launch ", "--workers wants 1..4000, got '%s'", optarg);
            cfg.workers = (int)v;
            break;
        case 's':
            if (!cli_parse_i64(optarg, &v) || v < 0 || v > 4000)
                return cli_usage_error("launch ", "--servers wants 0..4000, got '%s'", optarg);
            cfg.servers = (int)v;
            break;
        case 't':
            if (!cli_parse_i64(optarg, &v) || v < 1 || v > 1024)
                return cli_usage_error("launch ", "--threads wants 1..1024, got '%s'", optarg);
            cfg.threads = (int)v;
            break;
        case OPT_INTERFACE:
            if (!optarg[0]) return cli_usage_error("launch ", "--interface wants an address");
            cfg.interface = optarg;
            break;
        case OPT_NO_PREFIX:
            cfg.prefix = false;
            break;
        case OPT_TIMEOUT:
            if (!cli_parse_i64(optarg, &v) || v < 0 || v > 100000000)
                return cli_usage_error("launch ", "--timeout wants seconds >= 0, got '%s'", optarg);
            cfg.timeout_s = (int)v;
            break;
        case OPT_GRACE:
            if (!cli_parse_i64(optarg, &v) || v < 0 || v > 3600000)
                return cli_usage_error("launch ", "--grace wants milliseconds 0..3600000, got '%s'",
                                       optarg);
            cfg.grace_ms = (int)v;
            break;
        case 'h':
            launch_usage(stdout);
            return CLI_OK;
        default:
            return cli_usage_error("launch ", "bad option");
        }
    }
    if (1 + cfg.servers + cfg.workers > 4096)
        return cli_usage_error("launch ", "at most 4096 nodes, got 1 + %d + %d", cfg.servers,
                               cfg.workers);
    if (optind >= argc) return cli_usage_error("launch ", "no command to run; put it after '--'");
    int code = 0;
    petrel_err err = petrel_launch_run(&cfg, argv + optind, &code);
    if (err != PETREL_OK)
        return cli_fail(err, "launching the job",
                        err == PETREL_ERR_INVALID ? "check --interface" : NULL);
    return code;
}
