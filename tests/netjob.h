/*
 * For tests that start a job of processes themselves, playing the launcher: the
 * coordinator's listening socket on 127.0.0.1, made before the fork, so that rank 0
 * inherits it (petrel_net_config.coordinator_fd) and the others connect to addr.
 */
#ifndef PETREL_TESTS_NETJOB_H
#define PETREL_TESTS_NETJOB_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

/* Returns the listening socket and writes "127.0.0.1:port" into addr; aborts the
 * test on failure. */
static inline int netjob_listen(char *addr, size_t size) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    snprintf(addr, size, "127.0.0.1:%d", ntohs(a.sin_port));
    return fd;
}

#endif
