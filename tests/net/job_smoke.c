/*
 * petrel_job_smoke: one node of a real job, for the launcher scripts
 * (mpirun_test.sh, netns_test.sh) and by hand:
 *
 *     petrel launch -w 2 -s 1 -- build/petrel_job_smoke
 *     mpirun -np 4 -x PETREL_SERVERS=1 build/petrel_job_smoke
 *
 * Joins the job from the environment, prints its rank and role, and checks that
 * messages flow: every worker sends a hello to the coordinator and to each server,
 * each server answers every hello, and every worker makes one RPC to each server.
 * Ends with a barrier. Exits 0 when every check passed, 1 otherwise, naming the
 * first check that failed.
 */
#include "petrel/net.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MSG_HELLO = PETREL_MSG_USER, MSG_REPLY, MSG_ECHO };
#define WAIT_MS 20000

static int rank_ = -1;

static int fail(const char *fmt, ...) PETREL_PRINTF(1, 2);
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "job_smoke: rank %d: ", rank_);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

/* RPC handler on servers: answers "echo <text>" with "<text> via <rank>". */
static void on_echo(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)ctx;
    char out[128];
    int n = snprintf(out, sizeof out, "%.*s via %d", (int)m->len, (const char *)m->data,
                     petrel_net_rank(net));
    if (petrel_net_reply(net, m, out, (size_t)n) != PETREL_OK)
        fprintf(stderr, "job_smoke: reply failed: %s\n", petrel_errmsg());
}

static bool payload_is(const petrel_msg *m, const char *want) {
    return m->len == strlen(want) && memcmp(m->data, want, m->len) == 0;
}

/* Coordinator and servers: one hello from every worker, each answered by servers. */
static int receive_hellos(petrel_net *net, int first_worker, int size) {
    bool server = petrel_net_role(net) == PETREL_ROLE_SERVER;
    for (int i = first_worker; i < size; i++) {
        petrel_msg m = {0};
        petrel_err err =
            petrel_net_recv(net, PETREL_ANY_SOURCE, MSG_HELLO, PETREL_ANY_ID, &m, WAIT_MS);
        if (err != PETREL_OK)
            return fail("hello %d of %d: %s", i - first_worker + 1, size - first_worker,
                        petrel_errmsg());
        char want[64];
        snprintf(want, sizeof want, "hello %d", m.src);
        bool good = m.src >= first_worker && m.src < size && (int)m.id == m.src && m.clock == 7 &&
                    payload_is(&m, want);
        int src = m.src;
        petrel_msg_release(&m);
        if (!good) return fail("malformed hello from rank %d", src);
        if (server) {
            char reply[64];
            int n = snprintf(reply, sizeof reply, "reply %d to %d", petrel_net_rank(net), src);
            if (petrel_net_send(net, src, MSG_REPLY, (uint32_t)petrel_net_rank(net), 0, reply,
                                (size_t)n, WAIT_MS) != PETREL_OK)
                return fail("reply to rank %d: %s", src, petrel_errmsg());
        }
    }
    return 0;
}

static int worker(petrel_net *net, int servers) {
    int me = petrel_net_rank(net);
    char hello[64];
    int n = snprintf(hello, sizeof hello, "hello %d", me);
    for (int dst = 0; dst <= servers; dst++)
        if (petrel_net_send(net, dst, MSG_HELLO, (uint32_t)me, 7, hello, (size_t)n, WAIT_MS) !=
            PETREL_OK)
            return fail("hello to rank %d: %s", dst, petrel_errmsg());
    for (int s = 1; s <= servers; s++) {
        petrel_msg m = {0};
        if (petrel_net_recv(net, s, MSG_REPLY, (uint32_t)s, &m, WAIT_MS) != PETREL_OK)
            return fail("reply from server rank %d: %s", s, petrel_errmsg());
        char want[64];
        snprintf(want, sizeof want, "reply %d to %d", s, me);
        bool good = payload_is(&m, want);
        petrel_msg_release(&m);
        if (!good) return fail("wrong reply from rank %d", s);
    }
    for (int s = 1; s <= servers; s++) {
        petrel_msg m = {0};
        char req[32], want[64];
        int len = snprintf(req, sizeof req, "echo %d", me);
        snprintf(want, sizeof want, "echo %d via %d", me, s);
        if (petrel_net_call(net, s, MSG_ECHO, req, (size_t)len, &m, WAIT_MS) != PETREL_OK)
            return fail("rpc to rank %d: %s", s, petrel_errmsg());
        bool good = payload_is(&m, want);
        petrel_msg_release(&m);
        if (!good) return fail("wrong rpc answer from rank %d", s);
    }
    return 0;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    petrel_net_config cfg = petrel_net_config_default();
    petrel_net *net = NULL;
    if (petrel_net_start(&net, &cfg) != PETREL_OK) return fail("join: %s", petrel_errmsg());
    int size = petrel_net_size(net), servers = petrel_net_servers(net);
    rank_ = petrel_net_rank(net);
    petrel_role role = petrel_net_role(net);
    printf("rank %d of %d: %s (link to rank 0: %s)\n", rank_, size, petrel_role_name(role),
           petrel_net_link(net, 0));
    char links[512];
    size_t used = 0;
    for (int r = 0; r < size && used + 32 < sizeof links; r++)
        used += (size_t)snprintf(links + used, sizeof links - used, " %d:%s", r,
                                 petrel_net_link(net, r));
    printf("rank %d links:%s\n", rank_, links);
    int rc = 0;
    if (role == PETREL_ROLE_SERVER && petrel_net_on(net, MSG_ECHO, on_echo, NULL) != PETREL_OK)
        rc = fail("handler: %s", petrel_errmsg());
    /* Handlers are in place on every server once everyone has passed this barrier. */
    if (!rc && petrel_net_barrier(net, WAIT_MS) != PETREL_OK)
        rc = fail("first barrier: %s", petrel_errmsg());
    if (!rc && role == PETREL_ROLE_WORKER) rc = worker(net, servers);
    if (!rc && role != PETREL_ROLE_WORKER) rc = receive_hellos(net, servers + 1, size);
    if (!rc && petrel_net_barrier(net, WAIT_MS) != PETREL_OK)
        rc = fail("last barrier: %s", petrel_errmsg());
    petrel_net_stop(net);
    if (!rc) printf("rank %d ok\n", rank_);
    return rc;
}
