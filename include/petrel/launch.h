/*
 * petrel launch: runs a whole job (one coordinator, S servers, W workers) as
 * local processes, the embedded default behind `petrel launch` and multi-process
 * `petrel train`.
 *
 * The launcher makes the coordinator's listening socket itself (bound to
 * interface:0, so the kernel picks a free port and no two jobs race for one) and
 * hands it to rank 0 as an inherited descriptor named by PETREL_LISTEN_FD. Every
 * node gets PETREL_RANK, PETREL_SIZE, PETREL_SERVERS, PETREL_THREADS,
 * PETREL_COORDINATOR (the bound host:port), PETREL_TOKEN (32 random bytes in hex,
 * unless the launcher's environment already has one), PETREL_JOB_ID (unique per
 * launch) and PETREL_INTERFACE; petrel_job_env_read (net.h) reads them back.
 *
 * Output: with prefix on, each node's stdout and stderr pass through pipes and
 * come out line by line as "[worker 1] ..." on the launcher's stdout and stderr;
 * otherwise the nodes write straight to the launcher's.
 *
 * Failure policy: the first node to exit non-zero or by a signal ends the job;
 * the launcher logs which node and how, sends SIGTERM to the others, SIGKILL
 * after grace_ms, and reaps them all. SIGINT and SIGTERM to the launcher are
 * forwarded to every node and end the job the same way. The launcher never
 * returns with a child still running.
 *
 * The launcher's own lines ("petrel: worker 1 (rank 3) exited with status 2")
 * go to stderr.
 *
 * Threading: petrel_launch_run handles SIGCHLD, SIGINT and SIGTERM and ignores
 * SIGPIPE for its duration, restoring the previous dispositions after; one launch
 * at a time per process. Nodes start with stdin from /dev/null.
 *
 *     petrel_launch_config cfg = petrel_launch_config_default();
 *     cfg.workers = 4;
 *     cfg.servers = 2;
 *     char *argv[] = {"./my_job", "--epochs", "3", NULL};
 *     int code;
 *     if (petrel_launch_run(&cfg, argv, &code) != PETREL_OK) ... petrel_errmsg() ...
 *     return code;
 */
#ifndef PETREL_LAUNCH_H
#define PETREL_LAUNCH_H

#include "petrel/net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct petrel_launch_config {
    int workers;           /* W >= 1 */
    int servers;           /* S >= 0 */
    int threads;           /* PETREL_THREADS for every node, >= 1 */
    const char *interface; /* address every node listens on; NULL: 127.0.0.1 */
    int grace_ms;          /* after a failure or a signal: SIGTERM, then SIGKILL after this */
    int timeout_s;         /* the whole job's limit; 0: none */
    bool prefix;           /* prefix each output line with the node's name */
} petrel_launch_config;

/* 1 worker, 0 servers, 1 thread, interface NULL (127.0.0.1), grace 5000 ms, no
 * timeout, prefix on. */
petrel_launch_config petrel_launch_config_default(void);

/* Runs argv (argv[0] looked up in PATH, argv NULL-terminated) as 1 + servers +
 * workers processes and waits for them all. *exit_code is the job's: 0 when every
 * node exited 0; else the first failure's exit status, or 128 + signal for a node
 * killed by a signal; 124 when timeout_s ran out; 128 + signal when the launcher
 * was interrupted by SIGINT or SIGTERM. Errors (nothing was left running):
 * PETREL_ERR_INVALID (bad configuration), PETREL_ERR_IO (socket, pipe or fork
 * failed), PETREL_ERR_NOMEM, PETREL_ERR_STATE (another launch is running in
 * this process). A command that cannot be executed is a node that
 * exits 127. */
PETREL_NODISCARD petrel_err petrel_launch_run(const petrel_launch_config *cfg, char *const argv[],
                                              int *exit_code);

/* The node's name in output prefixes and logs for rank in a job of size nodes with
 * servers servers: "coordinator", "server 0", "worker 1" (numbered from 0 within
 * the role). */
void petrel_launch_node_name(int rank, int size, int servers, char *out, size_t n);

/* Where a job without PETREL_COORDINATOR looks for its coordinator when all its
 * nodes share one host (a single-host mpirun): "127.0.0.1:<port>" with port
 * PETREL_DEFAULT_COORDINATOR_PORT + (FNV-1a of e->job_id) % PETREL_DEFAULT_COORDINATOR_PORTS,
 * so that concurrent jobs with different ids usually differ. Multi-host jobs must
 * set PETREL_COORDINATOR (e.g. mpirun -x PETREL_COORDINATOR=host:port). */
void petrel_job_env_default_coordinator(const petrel_job_env *e, char *out, size_t n);

#define PETREL_DEFAULT_COORDINATOR_PORT  29500
#define PETREL_DEFAULT_COORDINATOR_PORTS 1000

#ifdef __cplusplus
}
#endif
#endif
