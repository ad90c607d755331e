/*
 * The harness every petrel bench stands on: forked processes with a deadline, a
 * coordinator socket for the petrel jobs the benches launch, programs run as
 * subprocesses with their output captured, and the memcpy reference.
 *
 * A bench plays the launcher: it makes rank 0's listening socket (as
 * tests/net/test_cluster_net.c does), forks the nodes, gives them a deadline and
 * kills them all when one fails, so that a broken run ends with an error instead of a
 * hang and leaves nothing behind. Each child leads its own process group: a program
 * it execs (mpirun, python, petrel train --workers) is signalled with every process
 * it started.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void bench_first_error(char *dst, size_t size, const char *fmt, ...) {
    if (dst[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, size, fmt, ap);
    va_end(ap);
}

const char *bench_size_name(size_t bytes, char *buf, size_t len) {
    if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
        snprintf(buf, len, "%zu MiB", bytes >> 20);
    else if (bytes >= 1024 && bytes % 1024 == 0)
        snprintf(buf, len, "%zu KiB", bytes >> 10);
    else
        snprintf(buf, len, "%zu B", bytes);
    return buf;
}

double bench_memcpy_gbs(unsigned char *dst, const unsigned char *src, size_t len, size_t times) {
    uint64_t t0 = petrel_now_ns();
    for (size_t m = 0; m < times; m++) {
        memcpy(dst, src, len);
        __asm__ __volatile__("" : : "r"(dst) : "memory"); /* every copy happens */
    }
    uint64_t dt = petrel_now_ns() - t0;
    return dt > 0 ? (double)(times * len) / (double)dt : 0;
}

/* ---- the cross-core handoff ------------------------------------------------------ */

#define HANDOFF_TIMES   64
#define HANDOFF_WAIT_NS 2000000000ull /* a side that waits longer gives up */
#define HANDOFF_HEAD    4096          /* the buffer starts on its own page */

/* Two processes, each on its own CPU, take turns on one shared buffer: the writer
 * copies a private buffer into it, the reader reads it all. */
typedef struct handoff {
    _Atomic uint64_t turn; /* even: the writer's, odd: the reader's */
    int cpu[2];            /* the writer's CPU, the reader's */
    size_t len;
    double gbs;         /* the writer's median, set when it is done */
    unsigned char *buf; /* the shared buffer, mapped before the fork */
} handoff;

static bool handoff_wait(handoff *h, uint64_t turn) {
    uint64_t until = petrel_now_ns() + HANDOFF_WAIT_NS;
    while (atomic_load(&h->turn) != turn)
        if (petrel_now_ns() > until) return false;
    return true;
}

static int handoff_side(int index, void *ctx) {
    handoff *h = ctx;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(h->cpu[index], &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) return 1;
    if (index == 1) { /* the reader: every word, as a reduction reads them */
        uint64_t sum = 0;
        for (uint64_t n = 0; n < HANDOFF_TIMES; n++) {
            if (!handoff_wait(h, 2 * n + 1)) return 1;
            const uint64_t *w = (const uint64_t *)(void *)h->buf;
            for (size_t i = 0; i < h->len / sizeof *w; i++) sum += w[i];
            atomic_store(&h->turn, 2 * n + 2);
        }
        __asm__ __volatile__("" : : "r"(sum));
        return 0;
    }
    unsigned char *mine = petrel_malloc(h->len);
    if (!mine) return 1;
    memset(mine, 3, h->len);
    double t[HANDOFF_TIMES];
    for (uint64_t n = 0; n < HANDOFF_TIMES; n++) {
        if (!handoff_wait(h, 2 * n)) {
            petrel_free(mine);
            return 1;
        }
        uint64_t t0 = petrel_now_ns();
        memcpy(h->buf, mine, h->len);
        t[n] = (double)(petrel_now_ns() - t0);
        atomic_store(&h->turn, 2 * n + 1);
    }
    petrel_free(mine);
    double med = petrel_median(t, HANDOFF_TIMES);
    h->gbs = med > 0 ? (double)h->len / med : 0;
    return 0;
}

double bench_handoff_gbs(size_t len) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 0;
    int cpus[2], n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
        if (CPU_ISSET(c, &allowed)) cpus[n++] = c;
    if (n < 2) return 0;
    size_t bytes = HANDOFF_HEAD + len;
    handoff *h = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED) return 0;
    *h = (handoff){.cpu = {cpus[0], cpus[1]}, .len = len, .buf = (unsigned char *)h + HANDOFF_HEAD};
    bench_exit exits[2];
    bool late;
    double gbs = bench_procs_run(2, handoff_side, h, 10, exits, &late) ? h->gbs : 0;
    munmap(h, bytes);
    return gbs;
}

bool bench_listen(int *fd, char *addr, size_t addr_len) {
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(*fd, 16) != 0 ||
        getsockname(*fd, (struct sockaddr *)&a, &len) != 0) {
        int e = errno;
        if (*fd >= 0) close(*fd);
        *fd = -1;
        errno = e;
        return false;
    }
    snprintf(addr, addr_len, "127.0.0.1:%d", ntohs(a.sin_port));
    return true;
}

void bench_shm_cleanup(const char *job_id, int nodes) {
    for (int r = 0; r < nodes; r++) {
        char name[160];
        snprintf(name, sizeof name, "/petrel-%s-%d", job_id, r); /* src/net/shm.c's names */
        shm_unlink(name);
    }
}

/* ---- forked processes ------------------------------------------------------------------ */

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Reaps whatever of pid[0..n) has ended; true when one ended badly. */
static bool reap(int n, const pid_t *pid, bool *exited, bench_exit *exits) {
    bool failed = false;
    for (int i = 0; i < n; i++) {
        if (exited[i]) continue;
        int status = 0;
        pid_t got = waitpid(pid[i], &status, WNOHANG);
        if (got == 0 || (got < 0 && errno == EINTR)) continue;
        exited[i] = true;
        if (got == pid[i] && WIFEXITED(status)) {
            exits[i].code = WEXITSTATUS(status);
        } else if (got == pid[i] && WIFSIGNALED(status)) {
            exits[i].signal = WTERMSIG(status);
        }
        if (exits[i].code != 0) failed = true;
    }
    return failed;
}

/* SIGTERM to every group still running, then SIGKILL to those still there after 2 s. */
static void stop_all(int n, const pid_t *pid, bool *exited, bench_exit *exits) {
    for (int i = 0; i < n; i++)
        if (!exited[i]) {
            exits[i].stopped = true;
            kill(-pid[i], SIGTERM);
        }
    uint64_t until = petrel_now_ns() + 2000000000u;
    for (;;) {
        reap(n, pid, exited, exits);
        bool all = true;
        for (int i = 0; i < n; i++) all = all && exited[i];
        if (all || petrel_now_ns() >= until) break;
        pause_ms(5);
    }
    for (int i = 0; i < n; i++)
        if (!exited[i]) {
            kill(-pid[i], SIGKILL);
            int status = 0;
            if (waitpid(pid[i], &status, 0) == pid[i] && WIFSIGNALED(status))
                exits[i].signal = WTERMSIG(status);
            exited[i] = true;
        }
}

bool bench_procs_run(int n, bench_proc_fn fn, void *ctx, int deadline_s, bench_exit *exits,
                     bool *late) {
    PETREL_ASSERT(n >= 1 && n <= BENCH_MAX_PROCS, "bench_procs_run: 1 to BENCH_MAX_PROCS");
    pid_t parent = getpid(), pid[BENCH_MAX_PROCS];
    bool exited[BENCH_MAX_PROCS];
    bool failed = false;
    *late = false;
    for (int i = 0; i < n; i++) {
        exits[i] = (bench_exit){.code = -1, .signal = 0, .stopped = false};
        exited[i] = true;
        pid[i] = -1;
    }
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < n && !failed; i++) {
        pid[i] = fork();
        if (pid[i] < 0) {
            failed = true;
            break;
        }
        if (pid[i] == 0) {
            setpgid(0, 0);
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with the bench, whatever kills it */
            if (getppid() != parent) _exit(1);
            int rc = fn(i, ctx);
            fflush(stdout);
            fflush(stderr);
            _exit(rc);
        }
        setpgid(pid[i], pid[i]); /* also here: no window in which kill(-pid) misses it */
        exited[i] = false;
    }
    uint64_t deadline = petrel_now_ns() + (uint64_t)deadline_s * 1000000000u;
    for (;;) {
        failed |= reap(n, pid, exited, exits);
        bool all = true;
        for (int i = 0; i < n; i++) all = all && exited[i];
        if (all) break;
        if (!failed && petrel_now_ns() >= deadline) *late = failed = true;
        if (failed) {
            stop_all(n, pid, exited, exits);
            break;
        }
        pause_ms(2);
    }
    return !failed;
}

/* ---- subprocesses ------------------------------------------------------------------------ */

typedef struct exec_args {
    char *const *argv;
    char *const *env;
    int out_fd;
} exec_args;

static int exec_main(int index, void *ctx) {
    (void)index;
    const exec_args *a = ctx;
    /* A program that forks its own workers (mpirun) cleans up on SIGTERM, not SIGKILL. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (dup2(a->out_fd, STDOUT_FILENO) < 0 || dup2(a->out_fd, STDERR_FILENO) < 0) return 127;
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    for (char *const *e = a->env; e && *e; e++) putenv(*e);
    execv(a->argv[0], a->argv);
    fprintf(stderr, "cannot run %s: %s\n", a->argv[0], strerror(errno));
    return 127;
}

/* The whole of fd (a file), NUL-terminated. */
static char *read_all(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0 || lseek(fd, 0, SEEK_SET) != 0) return NULL;
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = petrel_malloc(size + 1);
    while (buf && got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (buf) buf[got] = '\0';
    return buf;
}

int bench_exec(char *const argv[], char *const env[], int deadline_s, char **output, char *why,
               size_t why_len) {
    *output = NULL;
    why[0] = '\0';
    char path[] = "/tmp/petrel-bench-out-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(why, why_len, "cannot make a temporary file: %s", strerror(errno));
        return -1;
    }
    unlink(path);
    exec_args a = {argv, env, fd};
    bench_exit ex;
    bool late;
    bench_procs_run(1, exec_main, &a, deadline_s, &ex, &late);
    *output = read_all(fd);
    close(fd);
    if (late)
        snprintf(why, why_len, "%s ran past %d s and was killed", argv[0], deadline_s);
    else if (ex.signal)
        snprintf(why, why_len, "%s was killed by signal %d", argv[0], ex.signal);
    else if (ex.code < 0)
        snprintf(why, why_len, "cannot start %s: %s", argv[0], strerror(errno));
    return late || ex.signal ? -1 : ex.code;
}
