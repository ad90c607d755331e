/* petrel bench: measurements of petrel's parts against what they are built on, one
 * bench_<subject>.c per subject, dispatched by cmd_bench.c. Each prints one line per
 * case to stdout and exits 0 (measured), 1 (a run failed) or 2 (usage). */
#ifndef PETREL_BENCH_H
#define PETREL_BENCH_H

/* petrel bench <subject> [options]; argv[0] is "bench". */
int cmd_bench(int argc, char **argv);

/* petrel bench net (bench_net.c): the TCP and shared-memory transports between two
 * processes against a plain TCP socket and memcpy; argv[0] is "net". */
int bench_net(int argc, char **argv);

#endif
