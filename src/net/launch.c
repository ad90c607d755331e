/*
 * The embedded launcher: one job (coordinator, servers, workers) as local
 * processes of one command.
 *
 * Ports: the launcher binds the coordinator's socket itself (interface:0) and
 * passes the listening descriptor to rank 0 (PETREL_LISTEN_FD), so the port is
 * known before any node starts and no two jobs can race for it.
 *
 * Processes: each node is forked into a process group of its own, so that a
 * terminal's Ctrl-C reaches the launcher alone (which forwards it exactly once)
 * and a signal to the group also reaches what the node started (a shell's
 * children). PR_SET_PDEATHSIG kills a node whose launcher died without cleaning
 * up. Exits are observed with waitid(WNOWAIT): a node stays a zombie, holding its
 * pid and so its process-group id, until the launcher has swept its group with
 * SIGKILL at the end; a group id is never signalled after it could have been
 * reused.
 *
 * One thread, one poll loop: a self-pipe carries SIGCHLD, SIGINT and SIGTERM; the
 * nodes' stdout and stderr pipes carry output; deadlines (job timeout, grace,
 * draining) become poll's timeout.
 */
#include "petrel/launch.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define LINE_BYTES 16384 /* a longer line is cut into pieces of this size */
#define MAX_NODES  4096
#define ENV_EXTRA  10 /* room for the variables the launcher sets per node (9) */
#define NS_PER_MS  1000000ull

petrel_launch_config petrel_launch_config_default(void) {
    petrel_launch_config c;
    memset(&c, 0, sizeof c);
    c.workers = 1;
    c.servers = 0;
    c.threads = 1;
    c.interface = NULL;
    c.grace_ms = 5000;
    c.timeout_s = 0;
    c.prefix = true;
    return c;
}

/* One output pipe of a node: bytes wait in buf until a newline completes a line. */
typedef struct stream {
    int fd;  /* read end, -1 once closed */
    int dst; /* 1 or 2: the launcher's stdout or stderr */
    char *buf;
    size_t len;
} stream;

typedef struct node {
    pid_t pid; /* 0 before fork */
    int rank;
    char name[32];
    char prefix[40]; /* "[worker 1] " */
    bool exited;     /* waitid saw it end; still a zombie until reaped */
    bool reaped;
    int code; /* exit status, or 128 + signal */
    stream out[2];
    char **envp; /* built before fork, freed after */
} node;

typedef struct launch {
    const petrel_launch_config *cfg;
    int size;
    node *nodes;
    int listen_fd;
    char coordinator[300];
    char token[129];
    char job_id[64];
    char interface[64];
    bool stopping;        /* SIGTERM (or the forwarded signal) has been sent */
    bool killed;          /* SIGKILL has been sent to every group */
    uint64_t kill_at_ns;  /* when stopping: SIGKILL at this time */
    uint64_t deadline_ns; /* job timeout, 0: none */
    int result;           /* the job's exit code, -1 while every node is fine */
    struct pollfd *pfds;  /* 1 + 2 * size */
} launch;

/* ---- signals ------------------------------------------------------------------- */

static atomic_bool launch_active;
static int sig_fds[2] = {-1, -1}; /* the self-pipe; the handler writes the signal number */
static const int caught[] = {SIGCHLD, SIGINT, SIGTERM};
static struct sigaction saved[3], saved_pipe;

static void on_signal(int sig) {
    int saved_errno = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(sig_fds[1], &b, 1); /* a full pipe already holds a wake-up */
    (void)n;
    errno = saved_errno;
}

static petrel_err signals_install(void) {
    if (pipe2(sig_fds, O_CLOEXEC | O_NONBLOCK) != 0)
        return petrel_error_set(PETREL_ERR_IO, "launch: pipe: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    for (int i = 0; i < 3; i++) sigaction(caught[i], &sa, &saved[i]);
    /* A closed stdout must not kill the launcher and leave the nodes running. */
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, &saved_pipe);
    return PETREL_OK;
}

static void signals_restore(void) {
    for (int i = 0; i < 3; i++) sigaction(caught[i], &saved[i], NULL);
    sigaction(SIGPIPE, &saved_pipe, NULL);
    close(sig_fds[0]);
    close(sig_fds[1]);
    sig_fds[0] = sig_fds[1] = -1;
}

/* ---- small helpers ----------------------------------------------------------- */

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* EPIPE or worse: the reader is gone; drop the output */
        p += w;
        n -= (size_t)w;
    }
}

/* The launcher's own messages go to stderr, like the nodes' prefixed lines. */
static void say(const char *fmt, ...) PETREL_PRINTF(1, 2);
static void say(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    write_all(2, line, (size_t)n);
}

/* Moves fd to a number >= 3 (with close-on-exec), so that dup2 onto 0..2 in a
 * child never meets itself, which would leave close-on-exec set. */
static int fd_above_stdio(int fd) {
    if (fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

static petrel_err hex_random(char *out, size_t bytes) {
    unsigned char raw[64];
    PETREL_ASSERT(bytes <= sizeof raw, "ask for at most 64 random bytes");
    size_t got = 0;
    while (got < bytes) {
        ssize_t n = getrandom(raw + got, bytes - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return petrel_error_set(PETREL_ERR_IO, "launch: getrandom: %s", strerror(errno));
        got += (size_t)n;
    }
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < bytes; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
    out[2 * bytes] = 0;
    return PETREL_OK;
}

/* ---- the coordinator's socket -------------------------------------------------- */

static petrel_err open_listener(launch *L) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(L->interface, "0", &hints, &res);
    if (rc != 0)
        return petrel_error_set(PETREL_ERR_INVALID, "launch: interface '%s': %s", L->interface,
                                gai_strerror(rc));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return petrel_error_set(PETREL_ERR_IO, "launch: socket: %s", strerror(errno));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        int e = errno;
        freeaddrinfo(res);
        close(fd);
        return petrel_error_set(PETREL_ERR_IO, "launch: cannot listen on %s: %s", L->interface,
                                strerror(e));
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[128], port[16]; /* numeric: an IPv6 address with a scope fits */
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        getnameinfo((struct sockaddr *)&ss, sl, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        close(fd);
        return petrel_error_set(PETREL_ERR_IO, "launch: cannot read the bound address");
    }
    if (ss.ss_family == AF_INET6)
        snprintf(L->coordinator, sizeof L->coordinator, "[%s]:%s", host, port);
    else
        snprintf(L->coordinator, sizeof L->coordinator, "%s:%s", host, port);
    if ((fd = fd_above_stdio(fd)) < 0)
        return petrel_error_set(PETREL_ERR_IO, "launch: fcntl: %s", strerror(errno));
    L->listen_fd = fd;
    return PETREL_OK;
}

/* ---- each node's environment ------------------------------------------------------ */

static const char *const owned_vars[] = {
    "PETREL_RANK",  "PETREL_SIZE",   "PETREL_SERVERS",   "PETREL_THREADS",   "PETREL_COORDINATOR",
    "PETREL_TOKEN", "PETREL_JOB_ID", "PETREL_INTERFACE", "PETREL_LISTEN_FD",
};

static bool is_owned(const char *kv) {
    for (size_t i = 0; i < sizeof owned_vars / sizeof owned_vars[0]; i++) {
        size_t n = strlen(owned_vars[i]);
        if (strncmp(kv, owned_vars[i], n) == 0 && kv[n] == '=') return true;
    }
    return false;
}

/* The launcher's environment minus the variables it owns, plus the node's. The
 * node's own strings live in one block after the pointer array. */
static petrel_err build_envp(launch *L, int rank, char ***out) {
    size_t inherited = 0;
    for (char **p = environ; *p; p++) inherited++;
    char own[ENV_EXTRA][360];
    int k = 0;
    snprintf(own[k++], sizeof own[0], "PETREL_RANK=%d", rank);
    snprintf(own[k++], sizeof own[0], "PETREL_SIZE=%d", L->size);
    snprintf(own[k++], sizeof own[0], "PETREL_SERVERS=%d", L->cfg->servers);
    snprintf(own[k++], sizeof own[0], "PETREL_THREADS=%d", L->cfg->threads);
    snprintf(own[k++], sizeof own[0], "PETREL_COORDINATOR=%s", L->coordinator);
    snprintf(own[k++], sizeof own[0], "PETREL_TOKEN=%s", L->token);
    snprintf(own[k++], sizeof own[0], "PETREL_JOB_ID=%s", L->job_id);
    snprintf(own[k++], sizeof own[0], "PETREL_INTERFACE=%s", L->interface);
    if (rank == 0) snprintf(own[k++], sizeof own[0], "PETREL_LISTEN_FD=%d", L->listen_fd);
    size_t strings = 0;
    for (int i = 0; i < k; i++) strings += strlen(own[i]) + 1;
    size_t ptrs = inherited + (size_t)k + 1;
    char **envp = petrel_malloc(ptrs * sizeof(char *) + strings);
    if (!envp) return PETREL_ERR_NOMEM;
    char *s = (char *)(envp + ptrs);
    size_t j = 0;
    for (char **p = environ; *p; p++)
        if (!is_owned(*p)) envp[j++] = *p;
    for (int i = 0; i < k; i++) {
        size_t n = strlen(own[i]) + 1;
        memcpy(s, own[i], n);
        envp[j++] = s;
        s += n;
    }
    envp[j] = NULL;
    *out = envp;
    return PETREL_OK;
}

/* ---- starting and stopping nodes ------------------------------------------------ */

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_exec(launch *L, node *n, int out_w, int err_w, int null_fd, pid_t parent,
                       const sigset_t *mask, char *const argv[]) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127); /* the launcher died before prctl */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int i = 0; i < 3; i++) sigaction(caught[i], &dfl, NULL);
    sigaction(SIGPIPE, &dfl, NULL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    if (dup2(null_fd, 0) < 0) _exit(127);
    if (out_w >= 0 && (dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)) _exit(127);
    if (n->rank == 0 && fcntl(L->listen_fd, F_SETFD, 0) != 0) _exit(127);
    execvpe(argv[0], argv, n->envp);
    int e = errno;
    static const char msg[] = "petrel: error: cannot execute '";
    write_all(2, msg, sizeof msg - 1);
    write_all(2, argv[0], strlen(argv[0]));
    write_all(2, "': ", 3);
    const char *why = strerror(e);
    write_all(2, why, strlen(why));
    write_all(2, "\n", 1);
    _exit(e == ENOENT ? 127 : 126);
}

static petrel_err start_node(launch *L, node *n, char *const argv[], int null_fd) {
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (L->cfg->prefix) {
        if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
            int e = errno;
            if (out[0] >= 0) close(out[0]), close(out[1]);
            return petrel_error_set(PETREL_ERR_IO, "launch: pipe for %s: %s", n->name, strerror(e));
        }
        for (int i = 0; i < 2; i++) {
            out[i] = fd_above_stdio(out[i]);
            err[i] = fd_above_stdio(err[i]);
        }
        if (out[0] < 0 || out[1] < 0 || err[0] < 0 || err[1] < 0) {
            for (int i = 0; i < 2; i++) {
                if (out[i] >= 0) close(out[i]);
                if (err[i] >= 0) close(err[i]);
            }
            return petrel_error_set(PETREL_ERR_IO, "launch: fcntl: %s", strerror(errno));
        }
    }
    /* Signals stay blocked across fork so that no handler of ours runs in the child. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) child_exec(L, n, out[1], err[1], null_fd, parent, &old, argv);
    int fork_errno = errno;
    if (pid > 0) {
        n->pid = pid;
        setpgid(pid, pid); /* also here: no window in which a signal to -pid misses */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (L->cfg->prefix) {
        close(out[1]);
        close(err[1]);
        if (pid < 0) {
            close(out[0]);
            close(err[0]);
        } else {
            n->out[0].fd = out[0];
            n->out[1].fd = err[0];
        }
    }
    if (pid < 0)
        return petrel_error_set(PETREL_ERR_IO, "launch: fork for %s: %s", n->name,
                                strerror(fork_errno));
    return PETREL_OK;
}

/* Sends sig to every node's process group. A group is signalled only while its
 * leader is unreaped, so the id cannot belong to anyone else. */
static void signal_all(launch *L, int sig) {
    for (int r = 0; r < L->size; r++) {
        node *n = &L->nodes[r];
        if (n->pid > 0 && !n->reaped) kill(-n->pid, sig);
    }
}

static void begin_stop(launch *L, int sig) {
    if (L->stopping) return;
    L->stopping = true;
    signal_all(L, sig);
    L->kill_at_ns = petrel_now_ns() + (uint64_t)L->cfg->grace_ms * NS_PER_MS;
}

static void kill_all(launch *L) {
    signal_all(L, SIGKILL);
    L->killed = true;
}

/* Looks at every running node without reaping it (WNOWAIT keeps the zombie). */
static void check_exits(launch *L) {
    for (int r = 0; r < L->size; r++) {
        node *n = &L->nodes[r];
        if (n->pid <= 0 || n->exited) continue;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)n->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
            continue;
        n->exited = true;
        bool by_signal = si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED;
        n->code = by_signal ? 128 + si.si_status : si.si_status;
        if (n->code == 0 || L->stopping) continue;
        if (by_signal)
            say("petrel: %s (rank %d) killed by signal %d (%s)", n->name, r, si.si_status,
                strsignal(si.si_status));
        else
            say("petrel: %s (rank %d) exited with status %d", n->name, r, si.si_status);
        if (L->size > 1) say("petrel: stopping the other nodes of the job");
        L->result = n->code;
        begin_stop(L, SIGTERM);
    }
}

static bool all_exited(const launch *L) {
    for (int r = 0; r < L->size; r++)
        if (L->nodes[r].pid > 0 && !L->nodes[r].exited) return false;
    return true;
}

/* Kills what the nodes may have left in their groups, then reaps every node. */
static void sweep_and_reap(launch *L) {
    signal_all(L, SIGKILL);
    for (int r = 0; r < L->size; r++) {
        node *n = &L->nodes[r];
        if (n->pid <= 0 || n->reaped) continue;
        int st;
        while (waitpid(n->pid, &st, 0) < 0 && errno == EINTR) {
        }
        n->reaped = true;
    }
}

/* ---- output ------------------------------------------------------------------------ */

static void emit(const node *n, const stream *s, const char *line, size_t len) {
    char buf[LINE_BYTES + 64];
    size_t p = strlen(n->prefix);
    memcpy(buf, n->prefix, p);
    memcpy(buf + p, line, len);
    buf[p + len] = '\n';
    write_all(s->dst, buf, p + len + 1);
}

/* Reads what is there; writes out every complete line. EOF flushes a partial one. */
static void pump(node *n, stream *s) {
    ssize_t got;
    do {
        got = read(s->fd, s->buf + s->len, LINE_BYTES - s->len);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) {
        if (got < 0 && errno == EAGAIN) return;
        if (s->len > 0) emit(n, s, s->buf, s->len);
        s->len = 0;
        close(s->fd);
        s->fd = -1;
        return;
    }
    s->len += (size_t)got;
    size_t start = 0;
    for (size_t i = s->len - (size_t)got; i < s->len; i++) {
        if (s->buf[i] != '\n') continue;
        emit(n, s, s->buf + start, i - start);
        start = i + 1;
    }
    if (start == 0 && s->len == LINE_BYTES) { /* one very long line: cut it */
        emit(n, s, s->buf, s->len);
        s->len = 0;
        return;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
}

static bool streams_open(const launch *L) {
    for (int r = 0; r < L->size; r++)
        if (L->nodes[r].out[0].fd >= 0 || L->nodes[r].out[1].fd >= 0) return true;
    return false;
}

static void close_streams(launch *L) {
    for (int r = 0; r < L->size; r++)
        for (int k = 0; k < 2; k++) {
            stream *s = &L->nodes[r].out[k];
            if (s->fd < 0) continue;
            if (s->len > 0) emit(&L->nodes[r], s, s->buf, s->len);
            close(s->fd);
            s->fd = -1;
            s->len = 0;
        }
}

/* ---- the loop ------------------------------------------------------------------------ */

static int ms_until(uint64_t now, uint64_t t) {
    if (t <= now) return 0;
    uint64_t ms = (t - now + NS_PER_MS - 1) / NS_PER_MS;
    return ms > 60000 ? 60000 : (int)ms;
}

static void drain_signals(launch *L) {
    unsigned char b[64];
    ssize_t n;
    while ((n = read(sig_fds[0], b, sizeof b)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            int sig = b[i];
            if (sig != SIGINT && sig != SIGTERM) continue; /* SIGCHLD: check_exits looks */
            if (!L->stopping) {
                say("petrel: %s received; stopping the job",
                    sig == SIGINT ? "interrupt (SIGINT)" : "SIGTERM");
                L->result = 128 + sig;
                begin_stop(L, sig); /* forwarded as is; SIGKILL after the grace period */
            } else if (!L->killed) {
                say("petrel: second %s; killing the job", sig == SIGINT ? "interrupt" : "SIGTERM");
                if (L->result < 0) L->result = 128 + sig;
                kill_all(L);
            }
        }
    }
}

static void run_loop(launch *L) {
    uint64_t drain_until = 0;
    for (;;) {
        check_exits(L);
        uint64_t now = petrel_now_ns();
        if (all_exited(L)) {
            if (!drain_until) {
                /* Whatever a node left in its group goes too, so the pipes reach EOF. */
                signal_all(L, SIGKILL);
                uint64_t grace = (uint64_t)(L->cfg->grace_ms > 100 ? L->cfg->grace_ms : 100);
                drain_until = now + grace * NS_PER_MS;
            }
            if (!streams_open(L) || now >= drain_until) break;
        }
        if (L->deadline_ns && now >= L->deadline_ns && !L->stopping) {
            say("petrel: the job ran longer than --timeout %d s; stopping it", L->cfg->timeout_s);
            L->result = 124;
            begin_stop(L, SIGTERM);
        }
        if (L->stopping && !L->killed && now >= L->kill_at_ns) {
            say("petrel: nodes still running %d ms after SIGTERM; sending SIGKILL",
                L->cfg->grace_ms);
            kill_all(L);
        }

        int timeout = -1;
        if (L->deadline_ns && !L->stopping) timeout = ms_until(now, L->deadline_ns);
        if (L->stopping && !L->killed) {
            int t = ms_until(now, L->kill_at_ns);
            if (timeout < 0 || t < timeout) timeout = t;
        }
        if (drain_until) {
            int t = ms_until(now, drain_until);
            if (timeout < 0 || t < timeout) timeout = t;
        }
        int nfds = 0;
        L->pfds[nfds++] = (struct pollfd){.fd = sig_fds[0], .events = POLLIN};
        for (int r = 0; r < L->size; r++)
            for (int k = 0; k < 2; k++)
                if (L->nodes[r].out[k].fd >= 0)
                    L->pfds[nfds++] =
                        (struct pollfd){.fd = L->nodes[r].out[k].fd, .events = POLLIN};
        int rc = poll(L->pfds, (nfds_t)nfds, timeout);
        if (rc < 0 && errno != EINTR) {
            say("petrel: poll: %s; stopping the job", strerror(errno));
            if (L->result < 0) L->result = 1;
            kill_all(L);
            close_streams(L);
            continue;
        }
        if (rc <= 0) continue;
        if (L->pfds[0].revents) drain_signals(L);
        int i = 1;
        for (int r = 0; r < L->size; r++)
            for (int k = 0; k < 2; k++) {
                stream *s = &L->nodes[r].out[k];
                if (s->fd < 0) continue;
                if (L->pfds[i].fd == s->fd && L->pfds[i].revents) pump(&L->nodes[r], s);
                i++;
            }
    }
    close_streams(L);
}

petrel_err petrel_launch_run(const petrel_launch_config *cfg, char *const argv[], int *exit_code) {
    PETREL_ASSERT(cfg && argv && exit_code, "pass a config, an argv and an exit code");
    if (!argv[0] || !argv[0][0])
        return petrel_error_set(PETREL_ERR_INVALID, "launch: no command to run");
    if (cfg->workers < 1 || cfg->servers < 0 || cfg->threads < 1 || cfg->grace_ms < 0 ||
        cfg->timeout_s < 0 || cfg->workers > MAX_NODES || cfg->servers > MAX_NODES ||
        1 + cfg->servers + cfg->workers > MAX_NODES)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "launch: want workers >= 1, servers >= 0, threads >= 1, grace >= "
                                "0, timeout >= 0 and at most %d nodes; got %d workers, %d servers, "
                                "%d threads, grace %d ms, timeout %d s",
                                MAX_NODES, cfg->workers, cfg->servers, cfg->threads, cfg->grace_ms,
                                cfg->timeout_s);
    const char *iface = cfg->interface ? cfg->interface : "127.0.0.1";
    bool expected = false;
    if (!atomic_compare_exchange_strong(&launch_active, &expected, true))
        return petrel_error_set(PETREL_ERR_STATE, "launch: another launch is running");

    launch L;
    memset(&L, 0, sizeof L);
    L.cfg = cfg;
    L.size = 1 + cfg->servers + cfg->workers;
    L.listen_fd = -1;
    L.result = -1;
    int null_fd = -1;
    petrel_err err = PETREL_OK;
    if (strlen(iface) >= sizeof L.interface) {
        err = petrel_error_set(PETREL_ERR_INVALID, "launch: interface '%s' is too long", iface);
        goto fail;
    }
    strcpy(L.interface, iface);
    const char *token = getenv("PETREL_TOKEN");
    if (token && token[0]) {
        if (strlen(token) >= sizeof L.token) {
            err = petrel_error_set(PETREL_ERR_INVALID, "launch: PETREL_TOKEN is longer than %zu",
                                   sizeof L.token - 1);
            goto fail;
        }
        strcpy(L.token, token);
    } else if ((err = hex_random(L.token, 32))) {
        goto fail;
    }
    char rnd[17];
    if ((err = hex_random(rnd, 8))) goto fail;
    snprintf(L.job_id, sizeof L.job_id, "p%ld-%s", (long)getpid(), rnd);

    L.nodes = petrel_calloc((size_t)L.size, sizeof(node));
    L.pfds = petrel_calloc(1 + 2 * (size_t)L.size, sizeof(struct pollfd));
    if (!L.nodes || !L.pfds) {
        err = PETREL_ERR_NOMEM;
        goto fail;
    }
    for (int r = 0; r < L.size; r++) {
        node *n = &L.nodes[r];
        n->rank = r;
        petrel_launch_node_name(r, L.size, cfg->servers, n->name, sizeof n->name);
        snprintf(n->prefix, sizeof n->prefix, "[%s] ", n->name);
        for (int k = 0; k < 2; k++) {
            n->out[k].fd = -1;
            n->out[k].dst = k + 1;
            if (cfg->prefix && !(n->out[k].buf = petrel_malloc(LINE_BYTES))) {
                err = PETREL_ERR_NOMEM;
                goto fail;
            }
        }
    }
    if ((err = open_listener(&L))) goto fail;
    if ((null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0 ||
        (null_fd = fd_above_stdio(null_fd)) < 0) {
        err = petrel_error_set(PETREL_ERR_IO, "launch: /dev/null: %s", strerror(errno));
        goto fail;
    }
    for (int r = 0; r < L.size; r++)
        if ((err = build_envp(&L, r, &L.nodes[r].envp))) goto fail;
    if ((err = signals_install())) goto fail;

    fflush(stdout); /* what the caller printed comes before the nodes' lines */
    fflush(stderr);
    if (cfg->timeout_s > 0)
        L.deadline_ns = petrel_now_ns() + (uint64_t)cfg->timeout_s * 1000000000ull;
    for (int r = 0; r < L.size && !L.stopping; r++) {
        if ((err = start_node(&L, &L.nodes[r], argv, null_fd))) {
            say("petrel: error: %s", petrel_errmsg());
            L.result = 1;
            begin_stop(&L, SIGTERM);
            kill_all(&L);
            break;
        }
        /* A Ctrl-C while starting: stop before starting more. */
        drain_signals(&L);
    }
    close(L.listen_fd); /* rank 0 holds it now */
    L.listen_fd = -1;
    run_loop(&L);
    sweep_and_reap(&L);
    signals_restore();
    if (err == PETREL_OK) *exit_code = L.result < 0 ? 0 : L.result;

fail:
    if (L.nodes)
        for (int r = L.size - 1; r >= 0; r--) {
            petrel_free(L.nodes[r].envp);
            for (int k = 0; k < 2; k++) petrel_free(L.nodes[r].out[k].buf);
        }
    if (null_fd >= 0) close(null_fd);
    if (L.listen_fd >= 0) close(L.listen_fd);
    petrel_free(L.pfds);
    petrel_free(L.nodes);
    atomic_store(&launch_active, false);
    return err;
}
