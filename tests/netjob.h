/*
 * For tests that start a job of processes themselves, playing the launcher: the
 * coordinator's listening socket on 127.0.0.1, made before the fork so that rank 0
 * inherits it (petrel_net_config.coordinator_fd) and the others connect to its
 * address, a job id, and joining with short liveness timeouts.
 *
 *     netjob_begin(&job, "tcp");
 *     for (r...) if (fork() == 0) _exit(run_node(netjob_join(&job, r, size, 1, tr, "tok")));
 *     close(job.listen_fd);
 */
#ifndef PETREL_TESTS_NETJOB_H
#define PETREL_TESTS_NETJOB_H

#include "petrel/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct netjob {
    int listen_fd;
    char coordinator[64]; /* "127.0.0.1:port" */
    char job_id[96];
} netjob;

/* Makes the listening socket and a job id named after the scenario, unique across
 * runs (pid and time: a pid comes back, and a killed node's shared-memory leftovers
 * must not collide with a later run). Aborts the test on failure. */
static inline void netjob_begin(netjob *j, const char *name) {
    j->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (j->listen_fd < 0 || bind(j->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(j->listen_fd, 64) != 0 ||
        getsockname(j->listen_fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    snprintf(j->coordinator, sizeof j->coordinator, "127.0.0.1:%d", ntohs(a.sin_port));
    snprintf(j->job_id, sizeof j->job_id, "t%d-%llx-%s", (int)getpid(),
             (unsigned long long)(petrel_now_ns() & 0xffffffffffull), name);
}

/* Joins j as rank of a job of size (heartbeat 50 ms, peer timeout 1 s, 10 s to form);
 * NULL, with the reason on stderr, when the job does not form. */
static inline petrel_net *netjob_join(const netjob *j, int rank, int size, int servers,
                                      petrel_transport_kind transport, const char *token) {
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = rank;
    cfg.size = size;
    cfg.servers = servers;
    cfg.transport = transport;
    cfg.coordinator = j->coordinator;
    cfg.coordinator_fd = rank == 0 ? j->listen_fd : -1;
    cfg.token = token;
    cfg.job_id = j->job_id;
    cfg.heartbeat_ms = 50;
    cfg.peer_timeout_ms = 1000;
    cfg.connect_timeout_ms = 10000;
    petrel_net *net = NULL;
    if (petrel_net_start(&net, &cfg) != PETREL_OK) {
        fprintf(stderr, "rank %d: start: %s\n", rank, petrel_errmsg());
        return NULL;
    }
    return net;
}

#endif
