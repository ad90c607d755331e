/*
 * The embedded launcher, for real: processes, the environment each node sees,
 * the inherited listening socket, output prefixing, the failure policy, signal
 * forwarding and the job timeout. Nodes are /bin/sh one-liners or this very
 * executable started with --node MODE (see node_main).
 *
 * Every wait is bounded: launches that should end early run with a job timeout,
 * and launchers run in a forked child are waited for through a pidfd with poll.
 */
#include "check.h"
#include "petrel/launch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char self_exe[PATH_MAX];
static char dir[256]; /* the temporary directory nodes write into */

/* ---- helper nodes: this executable with --node MODE ------------------------------ */

static int split_host_port(const char *addr, char *host, size_t n, char *port, size_t pn) {
    const char *colon = strrchr(addr, ':');
    if (!colon) return -1;
    size_t hl = (size_t)(colon - addr);
    if (addr[0] == '[' && hl >= 2) { /* "[::1]:port" */
        addr++;
        hl -= 2;
    }
    if (hl >= n || strlen(colon + 1) >= pn) return -1;
    memcpy(host, addr, hl);
    host[hl] = 0;
    strcpy(port, colon + 1);
    return 0;
}

/* Rank 0 accepts one connection from every other node on the socket the launcher
 * made (PETREL_LISTEN_FD), and checks that each sends "rank token". */
static int node_rendezvous(void) {
    const char *rank_s = getenv("PETREL_RANK"), *size_s = getenv("PETREL_SIZE");
    if (!rank_s || !size_s) return 9;
    int rank = atoi(rank_s), size = atoi(size_s);
    const char *token = getenv("PETREL_TOKEN"), *coord = getenv("PETREL_COORDINATOR");
    char host[128], port[16], msg[256];
    if (!token || !coord || split_host_port(coord, host, sizeof host, port, sizeof port)) return 10;
    if (rank == 0) {
        const char *fds = getenv("PETREL_LISTEN_FD");
        if (!fds) return 11;
        int fd = atoi(fds), listening = 0;
        socklen_t len = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
            return 12;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char h[128], p[16];
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
            getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                        NI_NUMERICHOST | NI_NUMERICSERV) != 0 ||
            strcmp(p, port) != 0)
            return 13;
        for (int i = 1; i < size; i++) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, 20000) != 1) return 14;
            int c = accept(fd, NULL, NULL);
            if (c < 0) return 15;
            ssize_t got = 0, n;
            while ((n = read(c, msg + got, sizeof msg - 1 - (size_t)got)) > 0) got += n;
            close(c);
            msg[got] = 0;
            int r;
            char tok[200];
            if (sscanf(msg, "%d %199s", &r, tok) != 2 || r < 1 || r >= size ||
                strcmp(tok, token) != 0)
                return 16;
        }
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) return 20;
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (fd < 0 || rc != 0) return 21;
    int n = snprintf(msg, sizeof msg, "%d %s", rank, token);
    if (write(fd, msg, (size_t)n) != n) return 22;
    close(fd);
    return 0;
}

/* Prints "ready", waits up to 30 s for SIGINT or SIGTERM, prints which came. A
 * handler, not a blocked mask and sigwait: OpenBLAS has started threads by now,
 * and a process-directed signal goes to any thread that does not block it. */
static int wake_fd = -1;

static void on_wake(int sig) {
    unsigned char b = (unsigned char)sig;
    if (write(wake_fd, &b, 1) < 0) {
    }
}

static int node_wait_signal(void) {
    int p[2];
    if (pipe(p) != 0) return 8;
    wake_fd = p[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_wake;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    unsigned char sig;
    int rc;
    while ((rc = poll(&pf, 1, 30000)) < 0 && errno == EINTR) {
    }
    if (rc != 1 || read(p[0], &sig, 1) != 1) return 9;
    printf("got signal %d\n", sig);
    return 0;
}

static int node_main(const char *mode) {
    if (strcmp(mode, "rendezvous") == 0) return node_rendezvous();
    if (strcmp(mode, "wait-signal") == 0) return node_wait_signal();
    fprintf(stderr, "unknown node mode %s\n", mode);
    return 99;
}

/* ---- helpers ------------------------------------------------------------------------ */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *copy = malloc(n + 1);
    memcpy(copy, buf, n + 1);
    return copy;
}

/* The value of KEY=value in a file of such lines, or NULL. */
static bool file_get(const char *text, const char *key, char *out, size_t n) {
    size_t kl = strlen(key);
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            size_t vl = len - kl - 1;
            if (vl >= n) return false;
            memcpy(out, p + kl + 1, vl);
            out[vl] = 0;
            return true;
        }
        p = eol ? eol + 1 : NULL;
    }
    return false;
}

static int count_lines(const char *text, const char *line) {
    int count = 0;
    size_t n = strlen(line);
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len == n && strncmp(p, line, n) == 0) count++;
        p = eol ? eol + 1 : NULL;
    }
    return count;
}

/* True when pid still runs after a bounded wait. What the launcher signalled may
 * still be dying when it returns (a SIGKILL is delivered asynchronously to a
 * grandchild it does not reap); a pidfd becomes readable once the process has
 * exited, zombie or not. */
static bool alive(pid_t pid) {
    int pfd = pidfd_open(pid, 0);
    if (pfd < 0) return false; /* gone */
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    int rc;
    while ((rc = poll(&p, 1, 5000)) < 0 && errno == EINTR) {
    }
    close(pfd);
    return rc == 0;
}

/* Checks that every pid written to dir/<prefix>.* has ended. */
static int count_alive(const char *prefix, int size, int *found) {
    int n_alive = 0;
    *found = 0;
    for (int r = 0; r < size; r++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.%d", dir, prefix, r);
        char *text = read_file(path);
        if (!text) continue;
        int pid = atoi(text);
        free(text);
        if (pid <= 0) continue;
        (*found)++;
        n_alive += alive(pid);
    }
    return n_alive;
}

static void clean_dir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/*", dir);
    CHECK(system(cmd) == 0);
}

/* Waits up to timeout_ms for child pid; kills it when it overruns. Returns its
 * wait status, or -1 when it had to be killed. */
static int wait_bounded(pid_t pid, int timeout_ms) {
    int pfd = pidfd_open(pid, 0);
    int st = 0, result = -1;
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) == 1) result = 0;
        close(pfd);
    }
    if (result < 0) kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return result < 0 ? -1 : st;
}

/* Runs the launcher in a child with stdout and stderr going to files; returns the
 * child's exit code, or -1. */
static int launch_captured(const petrel_launch_config *cfg, char *const argv[], const char *out,
                           const char *err) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) _exit(200);
        int code = 201;
        if (petrel_launch_run(cfg, argv, &code) != PETREL_OK) _exit(202);
        _exit(code);
    }
    int st = wait_bounded(pid, 30000);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static double since(double t0) {
    return petrel_now_s() - t0;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_config_default(void) {
    petrel_launch_config c = petrel_launch_config_default();
    CHECK(c.workers == 1 && c.servers == 0 && c.threads == 1);
    CHECK(c.interface == NULL && c.grace_ms == 5000 && c.timeout_s == 0 && c.prefix);
}

static void test_invalid_config(void) {
    petrel_launch_config c = petrel_launch_config_default();
    char *argv[] = {"true", NULL};
    int code = 42;
    c.workers = 0;
    CHECK_ERR(petrel_launch_run(&c, argv, &code), PETREL_ERR_INVALID);
    c = petrel_launch_config_default();
    c.servers = -1;
    CHECK_ERR(petrel_launch_run(&c, argv, &code), PETREL_ERR_INVALID);
    c = petrel_launch_config_default();
    c.interface = "not-an-address.invalid";
    CHECK_ERR(petrel_launch_run(&c, argv, &code), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "not-an-address.invalid") != NULL);
    c = petrel_launch_config_default();
    char *empty[] = {NULL};
    CHECK_ERR(petrel_launch_run(&c, empty, &code), PETREL_ERR_INVALID);
    CHECK(code == 42); /* untouched on failure */
}

/* Every node sees the same job: size, servers, coordinator, token, job id; its own
 * rank; only rank 0 has PETREL_LISTEN_FD, and it is an open socket. */
static void test_environment_consistent(void) {
    clean_dir();
    unsetenv("PETREL_TOKEN");
    setenv("PETREL_RANK", "7", 1); /* the launcher's own values must not leak through */
    setenv("PETREL_LISTEN_FD", "99", 1);
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 3;
    c.servers = 2;
    c.threads = 4;
    c.prefix = false;
    c.timeout_s = 20;
    char script[1024];
    snprintf(script, sizeof script,
             "env | grep ^PETREL_ > '%s'/env.$PETREL_RANK; "
             "if [ -n \"$PETREL_LISTEN_FD\" ]; then "
             "readlink /proc/$$/fd/$PETREL_LISTEN_FD > '%s'/fd.$PETREL_RANK; fi",
             dir, dir);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    int code = -1;
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    unsetenv("PETREL_RANK");
    unsetenv("PETREL_LISTEN_FD");
    CHECK(code == 0);
    char coord0[300] = "", token0[200] = "", job0[100] = "";
    for (int r = 0; r < 6; r++) {
        char path[512], v[300];
        snprintf(path, sizeof path, "%s/env.%d", dir, r);
        char *env = read_file(path);
        CHECK(env != NULL);
        if (!env) continue;
        CHECK(file_get(env, "PETREL_RANK", v, sizeof v) && atoi(v) == r);
        CHECK(file_get(env, "PETREL_SIZE", v, sizeof v) && strcmp(v, "6") == 0);
        CHECK(file_get(env, "PETREL_SERVERS", v, sizeof v) && strcmp(v, "2") == 0);
        CHECK(file_get(env, "PETREL_THREADS", v, sizeof v) && strcmp(v, "4") == 0);
        CHECK(file_get(env, "PETREL_INTERFACE", v, sizeof v) && strcmp(v, "127.0.0.1") == 0);
        CHECK(file_get(env, "PETREL_COORDINATOR", v, sizeof v));
        if (r == 0) strcpy(coord0, v);
        CHECK(strcmp(v, coord0) == 0 && strncmp(v, "127.0.0.1:", 10) == 0 && atoi(v + 10) > 0);
        CHECK(file_get(env, "PETREL_TOKEN", v, sizeof v));
        if (r == 0) strcpy(token0, v);
        CHECK(strcmp(v, token0) == 0 && strlen(v) == 64 && strspn(v, "0123456789abcdef") == 64);
        CHECK(file_get(env, "PETREL_JOB_ID", v, sizeof v));
        if (r == 0) strcpy(job0, v);
        CHECK(strcmp(v, job0) == 0 && v[0] == 'p');
        bool has_fd = file_get(env, "PETREL_LISTEN_FD", v, sizeof v);
        CHECK(has_fd == (r == 0));
        if (r == 0) CHECK(has_fd && strcmp(v, "99") != 0 && atoi(v) > 2);
        free(env);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/fd.0", dir);
    char *fd = read_file(path);
    CHECK(fd && strncmp(fd, "socket:", 7) == 0);
    free(fd);

    /* A second launch: a fresh token and job id, unless PETREL_TOKEN is given. */
    setenv("PETREL_TOKEN", "given-token", 1);
    c.workers = 1;
    c.servers = 0;
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    unsetenv("PETREL_TOKEN");
    CHECK(code == 0);
    snprintf(path, sizeof path, "%s/env.1", dir);
    char *env = read_file(path), v[300];
    CHECK(env && file_get(env, "PETREL_TOKEN", v, sizeof v) && strcmp(v, "given-token") == 0);
    CHECK(env && file_get(env, "PETREL_JOB_ID", v, sizeof v) && strcmp(v, job0) != 0);
    CHECK(env && file_get(env, "PETREL_SIZE", v, sizeof v) && strcmp(v, "2") == 0);
    free(env);
}

/* Rank 0 accepts every other node on the inherited socket at PETREL_COORDINATOR. */
static void test_listen_fd_rendezvous(void) {
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 3;
    c.servers = 1;
    c.prefix = false;
    c.timeout_s = 30;
    char *argv[] = {self_exe, "--node", "rendezvous", NULL};
    int code = -1;
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    CHECK(code == 0);
}

static void test_output_prefixed(void) {
    clean_dir();
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 2;
    c.servers = 1;
    c.timeout_s = 20;
    /* rank 1 prints many lines; rank 2 a line longer than the launcher's buffer. */
    char *argv[] = {"/bin/sh", "-c",
                    "echo out $PETREL_RANK; echo err $PETREL_RANK >&2; "
                    "if [ $PETREL_RANK = 1 ]; then seq 1 20000; fi; "
                    "if [ $PETREL_RANK = 2 ]; then head -c 40000 /dev/zero | tr '\\0' x; echo; fi; "
                    "printf 'partial %s' $PETREL_RANK",
                    NULL};
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    CHECK(launch_captured(&c, argv, out, err) == 0);
    char *o = read_file(out), *e = read_file(err);
    CHECK(o && e);
    if (!o || !e) return;
    static const char *names[] = {"coordinator", "server 0", "worker 0", "worker 1"};
    for (int r = 0; r < 4; r++) {
        char line[64];
        snprintf(line, sizeof line, "[%s] out %d", names[r], r);
        CHECK(count_lines(o, line) == 1);
        snprintf(line, sizeof line, "[%s] partial %d", names[r], r);
        CHECK(count_lines(o, line) == 1); /* flushed at EOF, with a newline */
        snprintf(line, sizeof line, "[%s] err %d", names[r], r);
        CHECK(count_lines(e, line) == 1);
        CHECK(count_lines(o, line) == 0);
    }
    CHECK(count_lines(o, "[server 0] 1") == 1 && count_lines(o, "[server 0] 20000") == 1);
    int seq = 0;
    for (const char *p = o; (p = strstr(p, "[server 0] ")); p++) seq++;
    CHECK(seq == 20000 + 2);
    /* Lines of one node keep their order. */
    CHECK(strstr(o, "[server 0] 19999\n[server 0] 20000\n") != NULL);
    /* The long line arrives whole, cut into prefixed pieces. */
    size_t xs = 0;
    for (const char *p = o; *p; p++) xs += *p == 'x';
    CHECK(xs == 40000);
    CHECK(strstr(o, "[worker 0] xxxx") != NULL);
    free(o);
    free(e);
}

static void test_output_unprefixed(void) {
    clean_dir();
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 1;
    c.prefix = false;
    c.timeout_s = 20;
    char *argv[] = {"/bin/sh", "-c", "echo plain $PETREL_RANK; echo oops >&2", NULL};
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    CHECK(launch_captured(&c, argv, out, err) == 0);
    char *o = read_file(out), *e = read_file(err);
    CHECK(o && count_lines(o, "plain 0") == 1 && count_lines(o, "plain 1") == 1);
    CHECK(e && count_lines(e, "oops") == 2);
    free(o);
    free(e);
}

/* One node exits 3 while the others sleep 30 s: the job ends at once with 3 and
 * nothing the nodes started is left running. */
static void test_failure_stops_others(void) {
    clean_dir();
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 3;
    c.servers = 1;
    c.timeout_s = 25;
    char script[1024];
    snprintf(script, sizeof script,
             "echo $$ > '%s'/pid.$PETREL_RANK; "
             "if [ $PETREL_RANK = 3 ]; then exit 3; fi; "
             "sleep 30 & echo $! > '%s'/spid.$PETREL_RANK; wait",
             dir, dir);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    double t0 = petrel_now_s();
    int code = launch_captured(&c, argv, out, err);
    double took = since(t0);
    CHECK(code == 3);
    CHECK(took < 10);
    int found, n;
    n = count_alive("pid", 5, &found);
    CHECK(n == 0 && found >= 1);
    n = count_alive("spid", 5, &found);
    CHECK(n == 0);
    char *e = read_file(err);
    CHECK(e && strstr(e, "petrel: worker 1 (rank 3) exited with status 3") != NULL);
    free(e);
}

/* Nodes that ignore SIGTERM get SIGKILL after the grace period. */
static void test_grace_then_kill(void) {
    clean_dir();
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 2;
    c.grace_ms = 300;
    c.timeout_s = 25;
    c.prefix = false;
    char script[1024];
    snprintf(script, sizeof script,
             /* Rank 2 fails only once the others ignore SIGTERM: a loaded machine may
              * start them late, and SIGTERM before the trap would end them at once. */
             "trap '' TERM; if [ $PETREL_RANK = 2 ]; then "
             "while [ ! -e '%s'/spid.0 ] || [ ! -e '%s'/spid.1 ]; do sleep 0.01; done; exit 4; fi; "
             "sleep 30 & echo $! > '%s'/spid.$PETREL_RANK; wait",
             dir, dir, dir);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    int code = -1;
    double t0 = petrel_now_s();
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    double took = since(t0);
    CHECK(code == 4);
    CHECK(took >= 0.25 && took < 10);
    int found;
    CHECK(count_alive("spid", 3, &found) == 0);
}

static void test_killed_by_signal(void) {
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 1;
    c.timeout_s = 25;
    c.prefix = false;
    char *argv[] = {"/bin/sh", "-c", "if [ $PETREL_RANK = 1 ]; then kill -9 $$; fi; sleep 30",
                    NULL};
    int code = -1;
    double t0 = petrel_now_s();
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    CHECK(code == 128 + 9);
    CHECK(since(t0) < 10);
}

static void test_exec_failure(void) {
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 2;
    c.timeout_s = 25;
    char *argv[] = {"petrel-no-such-command-here", NULL};
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    CHECK(launch_captured(&c, argv, out, err) == 127);
    char *e = read_file(err);
    CHECK(e && strstr(e, "cannot execute 'petrel-no-such-command-here'") != NULL);
    free(e);
}

static void test_timeout(void) {
    petrel_launch_config c = petrel_launch_config_default();
    c.workers = 2;
    c.timeout_s = 1;
    c.prefix = false;
    char *argv[] = {"sleep", "30", NULL};
    int code = -1;
    double t0 = petrel_now_s();
    CHECK_OK(petrel_launch_run(&c, argv, &code));
    double took = since(t0);
    CHECK(code == 124);
    CHECK(took >= 0.9 && took < 8);
}

/* SIGINT to the launcher reaches every node once; the job ends with 130. */
static void test_sigint_forwarded(void) {
    int p[2];
    CHECK(pipe(p) == 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        char err[512];
        snprintf(err, sizeof err, "%s/err", dir);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (e < 0 || dup2(p[1], 1) < 0 || dup2(e, 2) < 0) _exit(200);
        petrel_launch_config c = petrel_launch_config_default();
        c.workers = 2;
        c.servers = 1;
        c.timeout_s = 25;
        char *argv[] = {self_exe, "--node", "wait-signal", NULL};
        int code = 201;
        if (petrel_launch_run(&c, argv, &code) != PETREL_OK) _exit(202);
        _exit(code);
    }
    close(p[1]);
    char buf[8192];
    size_t len = 0;
    int ready = 0;
    bool signalled = false;
    uint64_t deadline = petrel_now_ns() + 25000000000ull;
    for (;;) {
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        uint64_t now = petrel_now_ns();
        if (now >= deadline) break;
        if (poll(&pf, 1, (int)((deadline - now) / 1000000 + 1)) <= 0) continue;
        ssize_t n = read(p[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = 0;
        ready = 0;
        for (const char *s = buf; (s = strstr(s, "] ready ")); s++) ready++;
        if (ready == 4 && !signalled) {
            kill(pid, SIGINT);
            signalled = true;
        }
    }
    close(p[0]);
    int st = wait_bounded(pid, 10000);
    CHECK(signalled);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 130);
    int got = 0;
    for (const char *s = buf; (s = strstr(s, "] got signal 2")); s++) got++;
    char path[512];
    snprintf(path, sizeof path, "%s/err", dir);
    char *e = read_file(path);
    if (got != 4)
        check_fail(__FILE__, __LINE__, "%d nodes saw SIGINT; output: %s; stderr: %s", got, buf,
                   e ? e : "");
    CHECK(e && strstr(e, "petrel: interrupt (SIGINT) received; stopping the job") != NULL);
    free(e);
}

/* The launcher reaped every node it started: this process has no children left. */
static void test_no_children_left(void) {
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--node") == 0) return node_main(argv[2]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) CHECK_SKIP_ALL("no /proc/self/exe");
    self_exe[n] = 0;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/petrel-launch-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) CHECK_SKIP_ALL("cannot make a temporary directory");
    unsetenv("PETREL_TOKEN");

    RUN(test_config_default);
    RUN(test_invalid_config);
    RUN(test_environment_consistent);
    RUN(test_listen_fd_rendezvous);
    RUN(test_output_prefixed);
    RUN(test_output_unprefixed);
    RUN(test_failure_stops_others);
    RUN(test_grace_then_kill);
    RUN(test_killed_by_signal);
    RUN(test_exec_failure);
    RUN(test_timeout);
    RUN(test_sigint_forwarded);
    RUN(test_no_children_left);

    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    return CHECK_DONE();
}
