/* petrel bench: measurements of petrel's parts against what they are built on, one
 * bench_<subject>.c per subject, dispatched by cmd_bench.c, on the harness of
 * bench_harness.c (forked processes, subprocesses, memcpy). Each prints one line per
 * case to stdout and exits 0 (measured), 1 (a run failed) or 2 (usage). */
#ifndef PETREL_BENCH_H
#define PETREL_BENCH_H

#include "petrel/petrel.h"

/* petrel bench <subject> [options]; argv[0] is "bench". */
int cmd_bench(int argc, char **argv);

/* petrel bench net (bench_net.c): the TCP and shared-memory transports between two
 * processes against a plain TCP socket and memcpy; argv[0] is "net". */
int bench_net(int argc, char **argv);

/* petrel bench allreduce (bench_coll.c): petrel_allreduce between 2 and 4 processes on
 * this host against Open MPI's MPI_Allreduce and memcpy; argv[0] is "allreduce". */
int bench_allreduce(int argc, char **argv);

/* petrel bench dp (bench_dp.c): data-parallel training throughput of petrel train
 * --workers 2 against one petrel process and PyTorch DDP; argv[0] is "dp". */
int bench_dp(int argc, char **argv);

/* petrel bench ps (bench_ps.c): the parameter server's push and pull round trips,
 * throughput and sparse push in jobs of 1 server and 1 or 2 workers, over shared
 * memory and TCP, against petrel's raw transport; argv[0] is "ps". */
int bench_ps(int argc, char **argv);

/* petrel bench hogwild (bench_hogwild.c): Hogwild! with 1 and 2 threads, lock-free,
 * locked and round-robin, against liblinear on WordNet glosses and Fashion-MNIST as
 * libsvm files; argv[0] is "hogwild". */
int bench_hogwild(int argc, char **argv);

/* ---- the harness (bench_harness.c) ------------------------------------------------- */

/* Formats into dst (size bytes) unless it already holds a message: the first error
 * of a run is its cause. */
void bench_first_error(char *dst, size_t size, const char *fmt, ...) PETREL_PRINTF(3, 4);

/* "64 KiB", "4 MiB", "100 B" into buf; returns buf. */
const char *bench_size_name(size_t bytes, char *buf, size_t len);

/* GB/s (1e9 bytes) of one thread copying len bytes of src into dst `times` times over:
 * the same buffers each time, so the figure is the cache level that len fits in. */
double bench_memcpy_gbs(unsigned char *dst, const unsigned char *src, size_t len, size_t times);

/* GB/s of one CPU copying len bytes into a buffer that another CPU has just read
 * (the median of 64 turns, each process pinned to one of the first two CPUs this
 * process may use), or 0 when there are fewer than two or a process failed. It is
 * what a shared-memory exchange pays to reuse its memory: the write must take every
 * line back from the reader's cache. On the project's VM it is near memcpy most of
 * the time and 5x lower for minutes at a time (docs/bench.md). */
double bench_handoff_gbs(size_t len);

/* A listening TCP socket on 127.0.0.1 with a port the kernel chose, and its address
 * "127.0.0.1:port": the coordinator's socket of a petrel job the bench launches
 * (rank 0 gets it as petrel_net_config.coordinator_fd). False, with errno, on failure. */
bool bench_listen(int *fd, char *addr, size_t addr_len);

/* Removes the shared-memory inboxes that the nodes 0..nodes-1 of job_id leave behind
 * when they are killed. */
void bench_shm_cleanup(const char *job_id, int nodes);

#define BENCH_MAX_PROCS 16

/* How a forked process ended: its exit code, or the signal that ended it. */
typedef struct bench_exit {
    int code;     /* exit status; -1 when killed by a signal or never started */
    int signal;   /* the signal that ended it, or 0 */
    bool stopped; /* the harness signalled it (another failed, or the deadline passed) */
} bench_exit;

/* The body of forked process `index`; its return value is the exit status. */
typedef int (*bench_proc_fn)(int index, void *ctx);

/* Forks n (<= BENCH_MAX_PROCS) processes, process i running fn(i, ctx), and waits for
 * them up to deadline_s. Each dies with the bench (PR_SET_PDEATHSIG) and leads its own
 * process group, so a program it execs goes with all its children. When one fails
 * (exits non-zero or by a signal) or the deadline passes, every group still running
 * gets SIGTERM, then SIGKILL 2 s later: no process is left behind. exits[i] says how
 * process i ended; *late is set when the deadline passed. True when all exited 0. */
bool bench_procs_run(int n, bench_proc_fn fn, void *ctx, int deadline_s, bench_exit *exits,
                     bool *late);

/* Runs argv[0] (a path) with argv in a forked process (bench_procs_run), the "K=V"
 * strings of env (NULL-terminated, may be NULL) added to its environment, stdout and
 * stderr into one temporary file, for at most deadline_s. *output receives what it
 * printed (NUL-terminated, from petrel_malloc; the caller frees it with petrel_free;
 * NULL when it could not be read). Returns the exit status, or -1 with the reason in
 * why (killed by a signal, ran past the deadline, could not start). */
int bench_exec(char *const argv[], char *const env[], int deadline_s, char **output, char *why,
               size_t why_len);

#endif
