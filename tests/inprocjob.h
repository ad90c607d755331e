/*
 * For tests that run a whole job in one process: every node on its own thread,
 * joined through one in-process hub. Each thread starts its node's net, runs the
 * test's function on it, and stops it.
 *
 *     static void node(void *ctx, petrel_net *net, int rank) { ... }
 *     CHECK_OK(inprocjob_run(size, servers, NULL, node, &state));
 */
#ifndef PETREL_TESTS_INPROCJOB_H
#define PETREL_TESTS_INPROCJOB_H

#include "petrel/net.h"

#include <pthread.h>
#include <stdio.h>

#define INPROCJOB_MAX_NODES 16

typedef void (*inprocjob_fn)(void *ctx, petrel_net *net, int rank);

typedef struct inprocjob_node {
    petrel_inproc_hub *hub;
    const petrel_net_config *base;
    int rank, size, servers;
    inprocjob_fn fn;
    void *ctx;
    petrel_err start_err;
} inprocjob_node;

static inline void *inprocjob_thread(void *arg) {
    inprocjob_node *n = arg;
    petrel_net_config cfg = n->base ? *n->base : petrel_net_config_default();
    cfg.rank = n->rank;
    cfg.size = n->size;
    cfg.servers = n->servers;
    cfg.transport = PETREL_TRANSPORT_INPROC;
    cfg.inproc_hub = n->hub;
    if (!n->base) cfg.connect_timeout_ms = 20000;
    petrel_net *net = NULL;
    n->start_err = petrel_net_start(&net, &cfg);
    if (n->start_err != PETREL_OK) fprintf(stderr, "rank %d: %s\n", n->rank, petrel_errmsg());
    if (n->start_err == PETREL_OK) {
        n->fn(n->ctx, net, n->rank);
        petrel_net_stop(net);
    }
    return NULL;
}

/* Runs fn on each of size nodes (the first `servers` after rank 0 are servers) until
 * all have returned. base: the nodes' configuration (rank, size, servers and the
 * transport are set here), or NULL for the default with 20 s to connect. The first
 * node's failure to start, else PETREL_OK. */
static inline petrel_err inprocjob_run(int size, int servers, const petrel_net_config *base,
                                       inprocjob_fn fn, void *ctx) {
    if (size < 1 || size > INPROCJOB_MAX_NODES)
        return petrel_error_set(PETREL_ERR_INVALID, "a job of %d nodes", size);
    petrel_inproc_hub *hub = NULL;
    petrel_err err = petrel_inproc_hub_new(&hub, size);
    if (err != PETREL_OK) return err;
    pthread_t th[INPROCJOB_MAX_NODES];
    inprocjob_node nodes[INPROCJOB_MAX_NODES];
    for (int r = 0; r < size; r++) {
        nodes[r] = (inprocjob_node){hub, base, r, size, servers, fn, ctx, PETREL_OK};
        pthread_create(&th[r], NULL, inprocjob_thread, &nodes[r]);
    }
    for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
    petrel_inproc_hub_free(hub);
    for (int r = 0; r < size; r++)
        if (nodes[r].start_err != PETREL_OK) return nodes[r].start_err;
    return PETREL_OK;
}

#endif
