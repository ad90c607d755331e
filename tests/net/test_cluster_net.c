/* Real jobs of several processes on 127.0.0.1: TCP and shared memory links, large
 * messages, barriers, and failures: a node killed with SIGKILL, a node frozen with
 * SIGSTOP, and a stranger without the job token. The parent plays the launcher: it
 * makes the coordinator's listening socket and passes it to rank 0. */
#include "check.h"
#include "netjob.h"
#include "petrel/net.h"

#include <stdatomic.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG_BLOCK 50
#define MSG_PING  51

enum { EXIT_OK = 0, EXIT_FAIL = 10, EXIT_SAW_DEATH = 20 };

typedef struct scenario {
    const char *name;
    int size;
    petrel_transport_kind transport;
    int victim;    /* rank to kill or stop, or -1 */
    int signal;    /* SIGKILL or SIGSTOP */
    bool stranger; /* connect once with a wrong token */
} scenario;

static _Atomic uint64_t *kill_ns; /* shared page: when the parent sent the signal */
static netjob job;

/* Every node sends an 8 MiB block (8 frames) to the next and checks the one from
 * the previous, then all meet at a barrier. */
static bool exchange(petrel_net *net, const scenario *s) {
    int r = petrel_net_rank(net), n = petrel_net_size(net);
    size_t len = 8u << 20;
    unsigned char *out = malloc(len);
    for (size_t i = 0; i < len; i++) out[i] = (unsigned char)(i * 13 + r);
    bool ok = petrel_net_send(net, (r + 1) % n, MSG_BLOCK, 1, r, out, len, 5000) == PETREL_OK;
    petrel_msg m;
    int src = (r + n - 1) % n;
    ok = ok && petrel_net_recv(net, src, MSG_BLOCK, 1, &m, 5000) == PETREL_OK;
    if (ok) {
        ok = m.len == len && m.clock == src;
        for (size_t i = 0; ok && i < len; i++)
            ok = ((const unsigned char *)m.data)[i] == (unsigned char)(i * 13 + src);
        petrel_msg_release(&m);
    }
    if (s->transport == PETREL_TRANSPORT_AUTO)
        for (int p = 0; p < n; p++)
            if (p != r && strcmp(petrel_net_link(net, p), "shm") != 0) {
                fprintf(stderr, "rank %d: link to %d is %s, expected shm\n", r, p,
                        petrel_net_link(net, p));
                ok = false;
            }
    free(out);
    return ok && petrel_net_barrier(net, 5000) == PETREL_OK;
}

static int died_peer = -1;

static void note_death(void *ctx, int peer, const char *why) {
    (void)ctx;
    (void)why;
    __atomic_store_n(&died_peer, peer, __ATOMIC_SEQ_CST);
}

static int node_main(const scenario *s, int rank) {
    petrel_net *net = netjob_join(&job, rank, s->size, 1, s->transport, "job-token-42");
    if (!net) return EXIT_FAIL;
    petrel_net_on_failure(net, note_death, NULL);
    int rc = exchange(net, s) ? EXIT_OK : EXIT_FAIL;
    if (rc == EXIT_FAIL) fprintf(stderr, "rank %d: exchange failed: %s\n", rank, petrel_errmsg());
    if (rc == EXIT_OK && s->victim >= 0) {
        if (rank == s->victim) {
            pause(); /* the parent kills or stops us here */
            _exit(EXIT_FAIL);
        }
        /* Everyone else waits for a message the victim will never send. */
        petrel_msg m;
        uint64_t t0 = petrel_now_ns();
        petrel_err e = petrel_net_recv(net, s->victim, MSG_PING, 0, &m, 8000);
        uint64_t seen = petrel_now_ns();
        double waited = (double)(seen - t0) * 1e-9;
        double after_kill = (double)(seen - atomic_load(kill_ns)) * 1e-3;
        printf("# rank %d noticed the %s of rank %d %.0f ms after it\n", rank,
               s->signal == SIGKILL ? "SIGKILL" : "SIGSTOP", s->victim, after_kill * 1e-3);
        fflush(stdout); /* the child ends with _exit */
        bool named = strstr(petrel_errmsg(), "rank") != NULL;
        fprintf(stderr, "rank %d: recv from victim: %s after %.2f s (%s); callback saw %d\n", rank,
                petrel_strerror(e), waited, petrel_errmsg(),
                __atomic_load_n(&died_peer, __ATOMIC_SEQ_CST));
        /* A killed process closes its sockets: noticed at once. A frozen one is
         * noticed after the 1 s peer timeout. */
        double bound_s = s->signal == SIGKILL ? 0.5 : 2.0;
        rc = e == PETREL_ERR_IO && named && waited < 5.0 && after_kill * 1e-6 < bound_s &&
                     __atomic_load_n(&died_peer, __ATOMIC_SEQ_CST) == s->victim
                 ? EXIT_SAW_DEATH
                 : EXIT_FAIL;
    }
    if (rc == EXIT_OK && s->stranger && rank == 0) {
        /* The parent's stranger connects while we wait here; the job must go on. */
        for (int i = 0; i < 100 && petrel_net_get_stats(net).frames_rejected == 0; i++)
            usleep(20000);
        if (petrel_net_get_stats(net).frames_rejected == 0) rc = EXIT_FAIL;
    }
    if (rc == EXIT_OK && petrel_net_barrier(net, 5000) != PETREL_OK) rc = EXIT_FAIL;
    if (rc == EXIT_FAIL) fprintf(stderr, "rank %d failed: %s\n", rank, petrel_errmsg());
    petrel_net_stop(net);
    return rc;
}

/* Connects to the coordinator with a wrong token, like a process of another job. */
static bool stranger_refused(const scenario *s) {
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = 1;
    cfg.size = s->size;
    cfg.transport = PETREL_TRANSPORT_TCP;
    cfg.coordinator = job.coordinator;
    cfg.token = "wrong-token";
    cfg.job_id = "stranger";
    cfg.connect_timeout_ms = 1500;
    petrel_net *net = NULL;
    petrel_err e = petrel_net_start(&net, &cfg);
    if (e == PETREL_OK) petrel_net_stop(net);
    return e != PETREL_OK;
}

static void run(const scenario *s) {
    netjob_begin(&job, s->name);
    pid_t pids[8];
    for (int r = 0; r < s->size; r++) {
        pids[r] = fork();
        if (pids[r] == 0) _exit(node_main(s, r));
    }
    close(job.listen_fd);
    if (s->stranger) CHECK(stranger_refused(s));
    if (s->victim >= 0) {
        usleep(1500000); /* the job forms and exchanges */
        atomic_store(kill_ns, petrel_now_ns());
        kill(pids[s->victim], s->signal);
    }
    uint64_t deadline = petrel_now_ns() + 20000000000ull;
    for (int r = 0; r < s->size; r++) {
        int status = 0;
        pid_t got;
        if (r == s->victim) continue; /* reaped below */
        while ((got = waitpid(pids[r], &status, WNOHANG)) == 0 && petrel_now_ns() < deadline)
            usleep(10000);
        if (got == 0) { /* a hang is a failure: never leave it running */
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &status, 0);
            printf("# %s: rank %d hung\n", s->name, r);
            CHECK(!"a node hung");
            continue;
        }

        int want = s->victim >= 0 ? EXIT_SAW_DEATH : EXIT_OK;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != want)
            printf("# %s: rank %d ended with status %d, expected exit %d\n", s->name, r,
                   WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status), want);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == want);
    }
    if (s->victim >= 0) { /* killed, or stopped and still there: end it */
        kill(pids[s->victim], SIGKILL);
        waitpid(pids[s->victim], NULL, 0);
    }
}

static void test_tcp_job(void) {
    scenario s = {"tcp", 4, PETREL_TRANSPORT_TCP, -1, 0, false};
    run(&s);
}

static void test_shm_job(void) {
    scenario s = {"shm", 4, PETREL_TRANSPORT_AUTO, -1, 0, false};
    run(&s);
}

static void test_sigkill_is_detected(void) {
    scenario s = {"kill", 4, PETREL_TRANSPORT_AUTO, 3, SIGKILL, false};
    run(&s);
}

static void test_frozen_node_is_detected(void) {
    scenario s = {"stop", 4, PETREL_TRANSPORT_TCP, 2, SIGSTOP, false};
    run(&s);
}

static void test_stranger_is_refused(void) {
    scenario s = {"stranger", 3, PETREL_TRANSPORT_TCP, -1, 0, true};
    run(&s);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    kill_ns = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (kill_ns == MAP_FAILED) return 1;
    RUN(test_tcp_job);
    RUN(test_shm_job);
    RUN(test_sigkill_is_detected);
    RUN(test_frozen_node_is_detected);
    RUN(test_stranger_is_refused);
    return CHECK_DONE();
}
