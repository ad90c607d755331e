/* The node core over the in-process transport: rendezvous, roles, messages of
 * every size (chunked into frames and put back together), handlers, mailboxes,
 * RPC, barriers, and what happens when a node leaves. Each test runs a job of
 * several nodes on threads. */
#include "check.h"
#include "inprocjob.h"
#include "petrel/net.h"

#include <pthread.h>
#include <unistd.h>

#define MSG_DATA  40
#define MSG_ECHO  41
#define MSG_COUNT 42

typedef struct job job;
typedef void (*node_fn)(job *j, petrel_net *net);

struct job {
    int size, servers;
    node_fn fn;
    uint32_t frame_bytes;
    int failures[8]; /* failure callbacks seen by each node */
};

static void on_failure(void *ctx, int peer, const char *why) {
    (void)peer;
    (void)why;
    __atomic_add_fetch((int *)ctx, 1, __ATOMIC_SEQ_CST);
}

static void node_main(void *ctx, petrel_net *net, int rank) {
    job *j = ctx;
    petrel_net_on_failure(net, on_failure, &j->failures[rank]);
    j->fn(j, net);
}

static void run_job(job *j) {
    petrel_net_config cfg = petrel_net_config_default();
    cfg.connect_timeout_ms = 10000;
    if (j->frame_bytes) cfg.frame_bytes = j->frame_bytes;
    CHECK_OK(inprocjob_run(j->size, j->servers, &cfg, node_main, j));
}

/* ---- roles ------------------------------------------------------------------- */

static void roles_fn(job *j, petrel_net *net) {
    int r = petrel_net_rank(net);
    CHECK(petrel_net_size(net) == j->size);
    CHECK(petrel_net_servers(net) == 2);
    petrel_role want = r == 0   ? PETREL_ROLE_COORDINATOR
                       : r <= 2 ? PETREL_ROLE_SERVER
                                : PETREL_ROLE_WORKER;
    CHECK(petrel_net_role(net) == want);
    CHECK(strcmp(petrel_net_link(net, r), "self") == 0);
    CHECK(strcmp(petrel_net_link(net, (r + 1) % j->size), "inproc") == 0);
    CHECK_OK(petrel_net_barrier(net, 5000));
}

static void test_roles_and_rank_rule(void) {
    job j = {.size = 5, .servers = 2, .fn = roles_fn};
    run_job(&j);
    CHECK(petrel_role_of(0, 5, 2) == PETREL_ROLE_COORDINATOR);
    CHECK(petrel_role_of(2, 5, 2) == PETREL_ROLE_SERVER);
    CHECK(petrel_role_of(3, 5, 2) == PETREL_ROLE_WORKER);
    CHECK(strcmp(petrel_role_name(PETREL_ROLE_WORKER), "worker") == 0);
}

/* ---- messages of every size, in order, chunked ---------------------------------- */

static const size_t sizes[] = {0, 1, 4095, 4096, 4097, 100000, 1 << 20};

static unsigned char pattern(int src, size_t i, size_t n) {
    return (unsigned char)(src * 31 + i * 7 + n);
}

static void sizes_fn(job *j, petrel_net *net) {
    int r = petrel_net_rank(net), n = j->size;
    size_t count = sizeof sizes / sizeof sizes[0];
    unsigned char *buf = petrel_malloc(1 << 20);
    /* every node sends every size to the next node, then receives from the previous */
    int dst = (r + 1) % n, src = (r + n - 1) % n;
    for (size_t k = 0; k < count; k++) {
        for (size_t i = 0; i < sizes[k]; i++) buf[i] = pattern(r, i, sizes[k]);
        CHECK_OK(
            petrel_net_send(net, dst, MSG_DATA, (uint32_t)k, (int64_t)k * 10, buf, sizes[k], 5000));
    }
    for (size_t k = 0; k < count; k++) {
        petrel_msg m;
        CHECK_OK(petrel_net_recv(net, src, MSG_DATA, PETREL_ANY_ID, &m, 5000));
        CHECK(m.src == src && m.id == k && m.clock == (int64_t)k * 10 && m.len == sizes[k]);
        bool same = m.len == sizes[k];
        for (size_t i = 0; same && i < m.len; i++)
            same = ((const unsigned char *)m.data)[i] == pattern(src, i, sizes[k]);
        CHECK(same);
        petrel_msg_release(&m);
    }
    /* to oneself */
    CHECK_OK(petrel_net_send(net, r, MSG_DATA, 99, 0, "self", 4, 0));
    petrel_msg m;
    CHECK_OK(petrel_net_recv(net, r, MSG_DATA, 99, &m, 1000));
    CHECK(m.len == 4 && memcmp(m.data, "self", 4) == 0);
    petrel_msg_release(&m);
    petrel_free(buf);
    CHECK_OK(petrel_net_barrier(net, 5000));
}

static void test_message_sizes_and_chunking(void) {
    job j = {.size = 3, .fn = sizes_fn, .frame_bytes = 4096}; /* 1 MiB = 256 frames */
    run_job(&j);
}

/* ---- iov gather, id matching, timeouts, bad arguments ----------------------------- */

static void gather_fn(job *j, petrel_net *net) {
    (void)j;
    int r = petrel_net_rank(net);
    if (r == 1) {
        struct iovec iov[3] = {{"ab", 2}, {"", 0}, {"cdef", 4}};
        CHECK_OK(petrel_net_sendv(net, 2, MSG_DATA, 7, 0, iov, 3, 1000));
        CHECK_OK(petrel_net_send(net, 2, MSG_DATA, 8, 0, "x", 1, 1000));
        CHECK_ERR(petrel_net_send(net, 2, 5, 0, 0, "x", 1, 1000), PETREL_ERR_INVALID);
        CHECK_ERR(petrel_net_send(net, 9, MSG_DATA, 0, 0, "x", 1, 1000), PETREL_ERR_INVALID);
    }
    if (r == 2) {
        petrel_msg m;
        CHECK_OK(petrel_net_recv(net, 1, MSG_DATA, 8, &m, 2000)); /* by id, out of order */
        CHECK(m.len == 1);
        petrel_msg_release(&m);
        CHECK_OK(petrel_net_recv(net, PETREL_ANY_SOURCE, MSG_DATA, 7, &m, 2000));
        CHECK(m.len == 6 && memcmp(m.data, "abcdef", 6) == 0);
        petrel_msg_release(&m);
        uint64_t t0 = petrel_now_ns();
        CHECK_ERR(petrel_net_recv(net, 1, MSG_DATA, 7, &m, 100), PETREL_ERR_TIMEOUT);
        double waited = (double)(petrel_now_ns() - t0) * 1e-6;
        CHECK(waited >= 90 && waited < 2000);
        CHECK(strstr(petrel_errmsg(), "rank 1 (server)") != NULL);
    }
    CHECK_OK(petrel_net_barrier(net, 5000));
}

static void test_gather_match_timeout(void) {
    job j = {.size = 3, .servers = 1, .fn = gather_fn};
    run_job(&j);
}

/* ---- handlers and RPC -------------------------------------------------------------- */

static void echo_handler(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)ctx;
    char out[64];
    int n = snprintf(out, sizeof out, "%d:%.*s", petrel_net_rank(net), (int)m->len,
                     (const char *)m->data);
    CHECK_OK(petrel_net_reply(net, m, out, (size_t)n));
}

static void count_handler(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    __atomic_add_fetch((int *)ctx, (int)m->len, __ATOMIC_SEQ_CST);
}

static void rpc_fn(job *j, petrel_net *net) {
    int r = petrel_net_rank(net);
    int counted = 0;
    CHECK_OK(petrel_net_on(net, MSG_ECHO, echo_handler, NULL));
    CHECK_OK(petrel_net_on(net, MSG_COUNT, count_handler, &counted));
    CHECK_ERR(petrel_net_on(net, 3, count_handler, NULL), PETREL_ERR_INVALID);
    CHECK_OK(petrel_net_barrier(net, 5000)); /* every handler is in place */
    for (int p = 0; p < j->size; p++) {
        char req[16], want[32];
        int n = snprintf(req, sizeof req, "hi%d", r);
        snprintf(want, sizeof want, "%d:hi%d", p, r);
        petrel_msg reply;
        CHECK_OK(petrel_net_call(net, p, MSG_ECHO, req, (size_t)n, &reply, 5000));
        CHECK(reply.len == strlen(want) && memcmp(reply.data, want, reply.len) == 0);
        petrel_msg_release(&reply);
        CHECK_OK(petrel_net_send(net, p, MSG_COUNT, 0, 0, "12345", (size_t)(r + 1), 5000));
    }
    CHECK_OK(petrel_net_barrier(net, 5000));
    /* sum over senders of (rank + 1) bytes */
    CHECK(__atomic_load_n(&counted, __ATOMIC_SEQ_CST) == j->size * (j->size + 1) / 2);
    CHECK_OK(petrel_net_barrier(net, 5000)); /* nobody stops before all have counted */
}

static void test_handlers_and_rpc(void) {
    job j = {.size = 4, .servers = 1, .fn = rpc_fn};
    run_job(&j);
}

/* Removing a handler waits for a call in progress, and later messages of the
 * type go to the mailbox. */
typedef struct slow_ctx {
    int started, done;
} slow_ctx;

static void slow_handler(void *ctx, petrel_net *net, const petrel_msg *m) {
    (void)net;
    (void)m;
    slow_ctx *c = ctx;
    __atomic_store_n(&c->started, 1, __ATOMIC_SEQ_CST);
    usleep(100000);
    __atomic_store_n(&c->done, 1, __ATOMIC_SEQ_CST);
}

static void remove_fn(job *j, petrel_net *net) {
    (void)j;
    slow_ctx c = {0};
    if (petrel_net_rank(net) == 1) CHECK_OK(petrel_net_on(net, MSG_DATA, slow_handler, &c));
    CHECK_OK(petrel_net_barrier(net, 5000));
    if (petrel_net_rank(net) == 0) {
        CHECK_OK(petrel_net_send(net, 1, MSG_DATA, 0, 0, "a", 1, 5000));
    } else {
        for (int i = 0; i < 5000 && !__atomic_load_n(&c.started, __ATOMIC_SEQ_CST); i++)
            usleep(1000);
        CHECK_OK(petrel_net_on(net, MSG_DATA, NULL, NULL));
        CHECK(__atomic_load_n(&c.done, __ATOMIC_SEQ_CST) == 1);
    }
    CHECK_OK(petrel_net_barrier(net, 5000));
    if (petrel_net_rank(net) == 0) {
        CHECK_OK(petrel_net_send(net, 1, MSG_DATA, 7, 0, "bc", 2, 5000));
    } else {
        petrel_msg m;
        CHECK_OK(petrel_net_recv(net, 0, MSG_DATA, 7, &m, 5000));
        CHECK(m.len == 2 && memcmp(m.data, "bc", 2) == 0);
        petrel_msg_release(&m);
    }
    CHECK_OK(petrel_net_barrier(net, 5000));
}

static void test_removing_a_handler(void) {
    job j = {.size = 2, .servers = 0, .fn = remove_fn};
    run_job(&j);
}

/* ---- many threads sending concurrently: messages never interleave ------------------ */

typedef struct sender_arg {
    petrel_net *net;
    int thread, dst;
} sender_arg;

static void *sender_main(void *p) {
    sender_arg *a = p;
    static unsigned char buf[4][20000];
    for (int k = 0; k < 50; k++) {
        size_t n = 5000 + (size_t)(a->thread * 3000 + k * 97) % 15000;
        memset(buf[a->thread], a->thread * 50 + k, n);
        CHECK_OK(petrel_net_send(a->net, a->dst, MSG_DATA, (uint32_t)a->thread, k, buf[a->thread],
                                 n, 5000));
    }
    return NULL;
}

static void concurrent_fn(job *j, petrel_net *net) {
    (void)j;
    int r = petrel_net_rank(net);
    if (r == 1) {
        pthread_t th[4];
        sender_arg args[4];
        for (int t = 0; t < 4; t++) {
            args[t] = (sender_arg){net, t, 2};
            pthread_create(&th[t], NULL, sender_main, &args[t]);
        }
        for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
    }
    if (r == 2) {
        int next[4] = {0, 0, 0, 0};
        for (int k = 0; k < 200; k++) {
            petrel_msg m;
            CHECK_OK(petrel_net_recv(net, 1, MSG_DATA, PETREL_ANY_ID, &m, 5000));
            int t = (int)m.id;
            CHECK(t >= 0 && t < 4 && m.clock == next[t]); /* in order per thread */
            bool uniform = true;
            for (size_t i = 0; i < m.len; i++)
                uniform &= ((const unsigned char *)m.data)[i] == (unsigned char)(t * 50 + m.clock);
            CHECK(uniform);
            if (t >= 0 && t < 4) next[t]++;
            petrel_msg_release(&m);
        }
    }
    CHECK_OK(petrel_net_barrier(net, 10000));
}

static void test_concurrent_senders(void) {
    job j = {.size = 3, .fn = concurrent_fn, .frame_bytes = 4096}; /* every message spans frames */
    run_job(&j);
}

/* ---- a node that leaves: the others notice, and nothing waits forever --------------- */

static void leave_fn(job *j, petrel_net *net) {
    (void)j;
    int r = petrel_net_rank(net);
    if (r == 2) return; /* leaves at once: stop says goodbye */
    petrel_msg m;
    uint64_t t0 = petrel_now_ns();
    petrel_err e = petrel_net_recv(net, 2, MSG_DATA, PETREL_ANY_ID, &m, 5000);
    CHECK(e == PETREL_ERR_IO);
    CHECK((petrel_now_ns() - t0) < 4000000000ull); /* well before the timeout */
    CHECK(strstr(petrel_errmsg(), "rank 2") != NULL);
    CHECK(!petrel_net_peer_alive(net, 2));
    CHECK_ERR(petrel_net_send(net, 2, MSG_DATA, 0, 0, "x", 1, 1000), PETREL_ERR_IO);
    /* Leaving is not dying: a barrier it never entered runs out of time. */
    CHECK_ERR(petrel_net_barrier(net, 300), PETREL_ERR_TIMEOUT);
    /* Rank 0 completes barriers, so its own goodbye would rightly break a barrier that
     * is still waiting elsewhere: it stays until ranks 1 and 3 have timed out too. */
    if (r == 0) {
        for (int k = 0; k < 2; k++) {
            CHECK_OK(petrel_net_recv(net, PETREL_ANY_SOURCE, MSG_DATA, 9, &m, 5000));
            petrel_msg_release(&m);
        }
    } else {
        CHECK_OK(petrel_net_send(net, 0, MSG_DATA, 9, 0, "t", 1, 1000));
    }
}

static void test_leaving_node(void) {
    job j = {.size = 4, .fn = leave_fn};
    run_job(&j);
    for (int r = 0; r < 4; r++) CHECK(j.failures[r] == 0); /* leaving is not failing */
}

/* ---- a job that cannot form reports who is missing ----------------------------------- */

static void test_missing_node_times_out(void) {
    petrel_inproc_hub *hub;
    CHECK_OK(petrel_inproc_hub_new(&hub, 3));
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = 0;
    cfg.size = 3;
    cfg.transport = PETREL_TRANSPORT_INPROC;
    cfg.inproc_hub = hub;
    cfg.connect_timeout_ms = 300;
    petrel_net *net = NULL;
    uint64_t t0 = petrel_now_ns();
    CHECK_ERR(petrel_net_start(&net, &cfg), PETREL_ERR_TIMEOUT);
    CHECK(strstr(petrel_errmsg(), "ranks 1, 2 never registered") != NULL);
    CHECK((petrel_now_ns() - t0) < 2000000000ull);
    CHECK(net == NULL);
    petrel_inproc_hub_free(hub);
}

static void test_bad_config(void) {
    petrel_net_config cfg = petrel_net_config_default();
    petrel_net *net = NULL;
    cfg.rank = 3;
    cfg.size = 2;
    CHECK_ERR(petrel_net_start(&net, &cfg), PETREL_ERR_INVALID);
    cfg = petrel_net_config_default();
    cfg.frame_bytes = 100;
    CHECK_ERR(petrel_net_start(&net, &cfg), PETREL_ERR_INVALID);
    /* a job of one needs no network at all */
    cfg = petrel_net_config_default();
    cfg.rank = 0;
    cfg.size = 1;
    CHECK_OK(petrel_net_start(&net, &cfg));
    CHECK_OK(petrel_net_barrier(net, 0));
    CHECK_OK(petrel_net_send(net, 0, MSG_DATA, 1, 0, "me", 2, 0));
    petrel_msg m;
    CHECK_OK(petrel_net_recv(net, 0, MSG_DATA, 1, &m, 0));
    CHECK(m.len == 2);
    petrel_msg_release(&m);
    petrel_net_stop(net);
}

int main(void) {
    petrel_alloc_stats before = petrel_alloc_get_stats();
    RUN(test_roles_and_rank_rule);
    RUN(test_message_sizes_and_chunking);
    RUN(test_gather_match_timeout);
    RUN(test_handlers_and_rpc);
    RUN(test_removing_a_handler);
    RUN(test_concurrent_senders);
    RUN(test_leaving_node);
    RUN(test_missing_node_times_out);
    RUN(test_bad_config);
    CHECK_NO_LEAKS(before);
    return CHECK_DONE();
}
