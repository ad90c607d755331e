/*
 * The node: joins a job, moves messages, watches peers.
 *
 * Rendezvous (petrel_net_start):
 *   1. every node opens its transports; rank 0 listens at the coordinator address
 *      (or on a socket inherited from the launcher);
 *   2. rank r > 0 connects to rank 0 and sends REGISTER: its TCP and shared-memory
 *      addresses and its host identity;
 *   3. rank 0, once all N-1 have registered, sends everyone the TABLE;
 *   4. each node connects over TCP to every lower rank (higher connects to lower, so
 *      each pair has one link) and over shared memory to every peer on its host,
 *      waits until links to all peers are up, and sends READY;
 *   5. rank 0, once all are READY, sends GO.
 * After that, messages to a peer travel over shared memory when both sides mapped
 * each other's inbox, else over TCP. TCP links stay up in both cases: a closed
 * socket is the fastest sign of a dead process.
 *
 * Messages longer than frame_bytes are cut into frames here and put back together
 * per peer and per transport (frame_begin/frame_done), into one buffer allocated
 * at the first frame from the message length in its header.
 *
 * Liveness: nodes send HEARTBEAT to rank 0 and rank 0 to every node, every
 * heartbeat_ms. Rank 0 declares a node dead after peer_timeout_ms of silence or
 * when its link breaks, and tells the others (PEER_DEAD); a node declares rank 0
 * dead the same way. A peer that said BYE has left, which is not a failure.
 *
 * Locking: one mutex (mu) and one condition variable (cv) guard the job table,
 * mailbox, RPC waits, barrier counts and peer states; nothing blocking runs under
 * mu. Each peer has a send mutex so that the frames of two messages to one peer
 * never interleave.
 */
#include "node.h"
#include "petrel/launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ------------------------------------------------------------- */

const char *petreli_node_role(const petrel_net *net, int rank) {
    return petrel_role_name(petrel_role_of(rank, net->size, net->servers));
}

struct timespec petreli_abs_deadline(uint64_t deadline_ns) {
    uint64_t now = petrel_now_ns();
    uint64_t left = deadline_ns > now ? deadline_ns - now : 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + left % 1000000000u;
    ts.tv_sec += (time_t)(left / 1000000000u + ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    return ts;
}

uint64_t petreli_deadline_after(int timeout_ms) {
    return petrel_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
}

/* Waits on cv until deadline; false when it passed. Call with mu held. */
bool petreli_wait_until(petrel_net *net, uint64_t deadline_ns) {
    if (petrel_now_ns() >= deadline_ns) return false;
    struct timespec ts = petreli_abs_deadline(deadline_ns);
    net->sleepers++;
    pthread_cond_timedwait(&net->cv, &net->mu, &ts);
    net->sleepers--;
    return true;
}

petrel_err petreli_dead_peer_error(petrel_net *net, int p) {
    pthread_mutex_lock(&net->mu);
    char why[160];
    snprintf(why, sizeof why, "%s", net->peers[p].why);
    pthread_mutex_unlock(&net->mu);
    return petrel_error_set(PETREL_ERR_IO, "rank %d (%s) %s: %s", p, petreli_node_role(net, p),
                            atomic_load(&net->peers[p].left) ? "has left the job" : "is dead",
                            why[0] ? why : "unknown");
}

/* ---- failure ------------------------------------------------------------------- */

/* Marks p dead once, wakes every waiter, tells the failure callback; rank 0 also
 * queues a PEER_DEAD broadcast for the monitor thread. */
void petreli_declare_dead(petrel_net *net, int p, const char *why) {
    peer_state *pe = &net->peers[p];
    bool was_alive = true;
    if (!atomic_compare_exchange_strong(&pe->alive, &was_alive, false)) return;
    pthread_mutex_lock(&net->mu);
    snprintf(pe->why, sizeof pe->why, "%s", why);
    petrel_peer_failure_fn fn = net->on_failure;
    void *ctx = net->on_failure_ctx;
    pthread_mutex_unlock(&net->mu);
    if (!atomic_load(&pe->left) && !atomic_load(&net->stopping)) {
        PETREL_LOG_ERROR("net", "rank %d (%s) is dead: %s", p, petreli_node_role(net, p), why);
        if (net->rank == 0) atomic_store(&pe->broadcast_dead, true);
        /* Before the waiters wake: a call that fails because p died returns after the
         * callback has seen the death. */
        if (fn) fn(ctx, p, why);
    }
    pthread_mutex_lock(&net->mu);
    pthread_cond_broadcast(&net->cv);
    pthread_mutex_unlock(&net->mu);
}

void petreli_peer_left(petrel_net *net, int p) {
    atomic_store(&net->peers[p].left, true);
    petreli_declare_dead(net, p, "said goodbye");
}

bool petreli_any_dead(petrel_net *net, int *who) {
    for (int r = 0; r < net->size; r++)
        if (r != net->rank && !atomic_load(&net->peers[r].alive)) {
            *who = r;
            return true;
        }
    return false;
}

/* ---- the monitor thread: heartbeats, silence, PEER_DEAD broadcasts -------------- */

/* Rank 0: tells every live node about each death it has not announced yet. */
static void broadcast_deaths(petrel_net *net) {
    if (net->rank != 0) return;
    for (int d = 1; d < net->size; d++) {
        bool pending = true;
        if (!atomic_compare_exchange_strong(&net->peers[d].broadcast_dead, &pending, false))
            continue;
        for (int r = 1; r < net->size; r++)
            if (r != d && atomic_load(&net->peers[r].alive))
                (void)petreli_send_control(net, r, PETRELI_MSG_PEER_DEAD, (uint32_t)d, NULL, 0,
                                           CONTROL_SEND_MS);
    }
}

static void *monitor_main(void *arg) {
    petrel_net *net = arg;
    uint64_t next_beat = 0;
    while (!atomic_load(&net->stopping)) {
        uint64_t now = petrel_now_ns();
        uint64_t timeout_ns = (uint64_t)net->cfg.peer_timeout_ms * 1000000u;
        if (now >= next_beat) {
            next_beat = now + (uint64_t)net->cfg.heartbeat_ms * 1000000u;
            for (int r = 0; r < net->size; r++)
                if (r != net->rank && (net->rank == 0 || r == 0) &&
                    atomic_load(&net->peers[r].alive))
                    (void)petreli_send_control(net, r, PETRELI_MSG_HEARTBEAT, 0, NULL, 0,
                                               (int)net->cfg.heartbeat_ms);
        }
        for (int r = 0; r < net->size; r++) {
            peer_state *pe = &net->peers[r];
            if (r == net->rank || !(net->rank == 0 || r == 0) || !atomic_load(&pe->alive)) continue;
            uint64_t seen = atomic_load(&pe->last_seen_ns);
            if (now > seen && now - seen > timeout_ns) {
                char why[96];
                snprintf(why, sizeof why, "silent for %.1f s (peer timeout %u ms)",
                         (double)(now - seen) * 1e-9, net->cfg.peer_timeout_ms);
                petreli_declare_dead(net, r, why);
            }
        }
        for (int r = 0; r < net->size; r++) { /* BYEs whose shm never reported drained */
            uint64_t bye = atomic_load(&net->peers[r].bye_ns);
            if (bye && atomic_load(&net->peers[r].alive) &&
                now - bye > (uint64_t)BYE_GRACE_MS * 1000000u)
                petreli_peer_left(net, r);
        }
        broadcast_deaths(net);
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* ---- configuration and start ----------------------------------------------------- */

petrel_net_config petrel_net_config_default(void) {
    petrel_net_config c = {
        .rank = -1,
        .size = -1,
        .servers = -1,
        .coordinator_fd = -1,
        .transport = PETREL_TRANSPORT_AUTO,
        .frame_bytes = 1u << 20,
        .max_message_bytes = (uint64_t)1 << 30,
        .heartbeat_ms = 200,
        .peer_timeout_ms = 5000,
        .connect_timeout_ms = 30000,
    };
    return c;
}

/* Fills rank, size, servers, addresses and token from cfg, then the environment. */
static petrel_err resolve(petrel_net *net, const petrel_net_config *cfg, char *listen_host,
                          size_t host_size, int *listen_port, int *listen_fd) {
    petrel_job_env env;
    petrel_err err = petrel_job_env_read(&env);
    if (err != PETREL_OK) return err;
    net->rank = cfg->rank >= 0 ? cfg->rank : env.rank;
    net->size = cfg->size >= 0 ? cfg->size : env.size;
    if (net->rank < 0 && net->size < 0) net->rank = 0, net->size = 1; /* a job of one */
    if (net->size < 1 || net->rank < 0 || net->rank >= net->size)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "rank %d in a job of %d nodes (set PETREL_RANK and PETREL_SIZE, "
                                "or start under petrel launch, mpirun or srun)",
                                net->rank, net->size);
    int servers = cfg->servers >= 0 ? cfg->servers : env.servers >= 0 ? env.servers : 0;
    net->servers = servers > net->size - 1 ? net->size - 1 : servers;
    snprintf(net->token, sizeof net->token, "%s", cfg->token ? cfg->token : env.token);
    snprintf(net->job_id, sizeof net->job_id, "%s",
             cfg->job_id     ? cfg->job_id
             : env.job_id[0] ? env.job_id
                             : "job");
    const char *iface = cfg->interface ? cfg->interface : env.interface[0] ? env.interface
                                                                           : "127.0.0.1";
    snprintf(listen_host, host_size, "%s", iface);
    *listen_port = 0;
    *listen_fd = -1;
    if (net->rank != 0 || net->size == 1) return PETREL_OK;
    /* Rank 0 listens where the others will look: an inherited socket, or the port
     * of the coordinator address. */
    *listen_fd = cfg->coordinator_fd;
    const char *fd_env = getenv("PETREL_LISTEN_FD");
    if (*listen_fd < 0 && fd_env) *listen_fd = atoi(fd_env);
    if (*listen_fd >= 0) return PETREL_OK;
    char coord[256];
    if (cfg->coordinator)
        snprintf(coord, sizeof coord, "%s", cfg->coordinator);
    else if (env.coordinator[0])
        snprintf(coord, sizeof coord, "%s", env.coordinator);
    else
        petrel_job_env_default_coordinator(&env, coord, sizeof coord);
    const char *colon = strrchr(coord, ':');
    if (!colon || atoi(colon + 1) <= 0)
        return petrel_error_set(PETREL_ERR_INVALID, "coordinator address '%s' is not host:port",
                                coord);
    *listen_port = atoi(colon + 1);
    return PETREL_OK;
}

static petrel_err coordinator_address(const petrel_net_config *cfg, char *out, size_t size) {
    petrel_job_env env;
    petrel_err err = petrel_job_env_read(&env);
    if (err != PETREL_OK) return err;
    if (cfg->coordinator)
        snprintf(out, size, "%s", cfg->coordinator);
    else if (env.coordinator[0])
        snprintf(out, size, "%s", env.coordinator);
    else
        petrel_job_env_default_coordinator(&env, out, size);
    return PETREL_OK;
}

static petrel_err open_transports(petrel_net *net, const char *host, int port, int fd) {
    petreli_transport_config tc = {
        .rank = net->rank,
        .size = net->size,
        .listen_host = host,
        .listen_port = port,
        .listen_fd = fd,
        .token = net->token,
        .job_id = net->job_id,
        .limits = net->limits,
        .inproc_hub = net->cfg.inproc_hub,
    };
    for (int i = 0; i < VIA_COUNT; i++) net->via[i] = (via){net, i};
    petreli_transport_events ev = {.frame_begin = petreli_ev_frame_begin,
                                   .frame_done = petreli_ev_frame_done,
                                   .on_link_lost = petreli_ev_link_lost,
                                   .on_rejected = petreli_ev_rejected,
                                   .may_pump = petreli_ev_may_pump};
    node_entry *me = &net->table[net->rank];
    net->primary.ops = net->cfg.transport == PETREL_TRANSPORT_INPROC ? &petreli_transport_inproc
                                                                     : &petreli_transport_tcp;
    ev.ctx = &net->via[VIA_PRIMARY];
    petrel_err err = net->primary.ops->open(&net->primary.t, &tc, ev, me->tcp, sizeof me->tcp);
    if (err != PETREL_OK) {
        net->primary.ops = NULL;
        return err;
    }
    PETREL_LOG_INFO("net", "rank %d (%s) listening at %s", net->rank,
                    petreli_node_role(net, net->rank), me->tcp);
    /* Before any other transport thread exists, which may switch links later. */
    for (int r = 0; r < net->size; r++) net->peers[r].send_link = net->primary;
    petreli_host_identity(me->host, sizeof me->host);
    if (net->cfg.transport == PETREL_TRANSPORT_AUTO && net->size > 1) {
        ev.ctx = &net->via[VIA_SHM];
        err = petreli_transport_shm.open(&net->shm.t, &tc, ev, me->shm, sizeof me->shm);
        if (err == PETREL_OK)
            net->shm.ops = &petreli_transport_shm;
        else
            PETREL_LOG_WARN("net", "shared memory unavailable, using TCP only: %s",
                            petrel_errmsg());
    }
    return PETREL_OK;
}

/* Lists the ranks for which pred is false, for a timeout message. */
static void missing_ranks(petrel_net *net, bool (*pred)(petrel_net *, int), char *out,
                          size_t size) {
    size_t n = 0;
    out[0] = '\0';
    for (int r = 0; r < net->size && n + 16 < size; r++)
        if (!pred(net, r)) n += (size_t)snprintf(out + n, size - n, "%s%d", n ? ", " : "", r);
}

static bool is_registered(petrel_net *net, int r) {
    return r == 0 || net->peers[r].registered;
}

static bool is_ready(petrel_net *net, int r) {
    return r == 0 || net->peers[r].ready;
}

static bool is_linked(petrel_net *net, int r) {
    return r == net->rank || net->primary.ops->connected(net->primary.t, r);
}

/* Shared memory to every peer on this host that offers it (both directions map). */
static void connect_shm(petrel_net *net, uint64_t deadline) {
    if (!net->shm.ops) return;
    const char *my_host = net->table[net->rank].host;
    for (int p = 0; p < net->size; p++) {
        const node_entry *e = &net->table[p];
        if (p == net->rank || !e->shm[0] || strcmp(e->host, my_host) != 0) continue;
        if (net->shm.ops->connect(net->shm.t, p, e->shm, deadline) != PETREL_OK)
            PETREL_LOG_WARN("net", "rank %d: no shared memory to rank %d, using TCP: %s", net->rank,
                            p, petrel_errmsg());
    }
}

/* Rank 0: waits until *count (under mu) reaches size - 1. PETREL_ERR_TIMEOUT when
 * the deadline passes (or a node dies) first, listing the ranks for which has(r) is
 * false and saying what they failed to do. */
static petrel_err wait_for_all(petrel_net *net, const int *count, bool (*has)(petrel_net *, int),
                               const char *failed_to, uint64_t deadline) {
    int dead;
    pthread_mutex_lock(&net->mu);
    while (*count < net->size - 1 && !petreli_any_dead(net, &dead) &&
           petreli_wait_until(net, deadline)) {
    }
    bool all = *count == net->size - 1;
    pthread_mutex_unlock(&net->mu);
    if (all) return PETREL_OK;
    char list[256];
    missing_ranks(net, has, list, sizeof list);
    return petrel_error_set(PETREL_ERR_TIMEOUT, "the job did not form within %u ms: ranks %s %s",
                            net->cfg.connect_timeout_ms, list, failed_to);
}

static petrel_err rendezvous_coordinator(petrel_net *net, uint64_t deadline) {
    petrel_err err = wait_for_all(net, &net->registered, is_registered,
                                  "never registered with the coordinator", deadline);
    if (err != PETREL_OK) return err;
    size_t cap = (size_t)net->size * (3 * ADDR_LEN + 4), len = 0;
    char *table = petrel_malloc(cap);
    if (!table) return PETREL_ERR_NOMEM;
    pthread_mutex_lock(&net->mu);
    for (int r = 0; r < net->size; r++) {
        len += petreli_entry_format(&net->table[r], table + len, cap - len);
        table[len++] = '\n';
    }
    pthread_mutex_unlock(&net->mu);
    for (int r = 1; r < net->size && err == PETREL_OK; r++)
        err = petreli_send_control(net, r, PETRELI_MSG_TABLE, 0, table, len, CONTROL_SEND_MS);
    petrel_free(table);
    if (err == PETREL_OK)
        err = wait_for_all(net, &net->ready_count, is_ready, "did not connect to all their peers",
                           deadline);
    if (err != PETREL_OK) return err;
    /* Every node has mapped the inboxes it will use; rank 0 maps its own before GO,
     * so that after GO no inbox needs its name any more (see seal). */
    connect_shm(net, deadline);
    for (int r = 1; r < net->size && err == PETREL_OK; r++)
        err = petreli_send_control(net, r, PETRELI_MSG_GO, 0, NULL, 0, CONTROL_SEND_MS);
    return err;
}

static petrel_err connect_retrying(net_link l, int peer, const char *addr, uint64_t deadline) {
    /* The peer may not be listening yet: retry until the deadline. */
    petrel_err err;
    uint64_t pause_ns = 1000000;
    while ((err = l.ops->connect(l.t, peer, addr, deadline)) != PETREL_OK) {
        if (err != PETREL_ERR_IO || petrel_now_ns() + pause_ns >= deadline) return err;
        struct timespec ts = {0, (long)pause_ns};
        nanosleep(&ts, NULL);
        if (pause_ns < 100000000) pause_ns *= 2;
    }
    return PETREL_OK;
}

static petrel_err rendezvous_node(petrel_net *net, const petrel_net_config *cfg,
                                  uint64_t deadline) {
    char coord[256];
    petrel_err err = coordinator_address(cfg, coord, sizeof coord);
    if (err == PETREL_OK) err = connect_retrying(net->primary, 0, coord, deadline);
    if (err != PETREL_OK)
        return petrel_error_set(err, "rank %d cannot reach the coordinator at %s: %s", net->rank,
                                coord, petrel_errmsg());
    char entry[3 * ADDR_LEN + 4];
    size_t len = petreli_entry_format(&net->table[net->rank], entry, sizeof entry);
    if ((err = petreli_send_control(net, 0, PETRELI_MSG_REGISTER, 0, entry, len,
                                    CONTROL_SEND_MS)) != PETREL_OK)
        return err;
    int dead = -1;
    pthread_mutex_lock(&net->mu);
    while (!net->table_ready && !petreli_any_dead(net, &dead) &&
           petreli_wait_until(net, deadline)) {
    }
    bool ok = net->table_ready;
    pthread_mutex_unlock(&net->mu);
    if (!ok)
        return dead >= 0 ? petreli_dead_peer_error(net, dead)
                         : petrel_error_set(PETREL_ERR_TIMEOUT,
                                            "no address table from the coordinator within %u ms "
                                            "(are all %d nodes started?)",
                                            net->cfg.connect_timeout_ms, net->size);
    for (int p = 1; p < net->size; p++) {
        if (p == net->rank) continue;
        const node_entry *e = &net->table[p];
        if (p < net->rank &&
            (err = connect_retrying(net->primary, p, e->tcp, deadline)) != PETREL_OK)
            return petrel_error_set(err, "rank %d cannot connect to rank %d at %s: %s", net->rank,
                                    p, e->tcp, petrel_errmsg());
    }
    return PETREL_OK;
}

static petrel_err wait_links(petrel_net *net, uint64_t deadline) {
    /* Links from higher ranks are accepted on the transport's thread. */
    for (;;) {
        bool all = true;
        for (int p = 0; p < net->size && all; p++) all = is_linked(net, p);
        if (all) return PETREL_OK;
        int dead;
        if (petreli_any_dead(net, &dead)) return petreli_dead_peer_error(net, dead);
        if (petrel_now_ns() >= deadline) {
            char list[256];
            missing_ranks(net, is_linked, list, sizeof list);
            return petrel_error_set(PETREL_ERR_TIMEOUT,
                                    "rank %d: no net_link from ranks %s within %u ms", net->rank,
                                    list, net->cfg.connect_timeout_ms);
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static petrel_err wait_go(petrel_net *net, uint64_t deadline) {
    int dead = -1;
    pthread_mutex_lock(&net->mu);
    while (!net->go && !petreli_any_dead(net, &dead) && petreli_wait_until(net, deadline)) {
    }
    bool go = net->go;
    pthread_mutex_unlock(&net->mu);
    if (go) return PETREL_OK;
    return dead >= 0 ? petreli_dead_peer_error(net, dead)
                     : petrel_error_set(PETREL_ERR_TIMEOUT,
                                        "the coordinator did not start the job within %u ms",
                                        net->cfg.connect_timeout_ms);
}

petrel_err petrel_net_start(petrel_net **out, const petrel_net_config *cfg) {
    if (cfg->frame_bytes < 4096 || cfg->max_message_bytes < cfg->frame_bytes ||
        cfg->max_message_bytes > UINT32_MAX || cfg->heartbeat_ms == 0 ||
        cfg->peer_timeout_ms <= cfg->heartbeat_ms || cfg->transport >= PETREL_TRANSPORT_COUNT ||
        (cfg->transport == PETREL_TRANSPORT_INPROC && !cfg->inproc_hub))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "net config: frame_bytes >= 4096, max_message_bytes between "
                                "frame_bytes and 4 GiB, 0 < heartbeat_ms < peer_timeout_ms, and "
                                "inproc needs a hub");
    petrel_net *net = petrel_calloc(1, sizeof *net);
    if (!net) return PETREL_ERR_NOMEM;
    net->cfg = *cfg;
    pthread_mutex_init(&net->mu, NULL);
    pthread_cond_init(&net->cv, NULL);
    char host[64];
    int port = 0, fd = -1;
    petrel_err err = resolve(net, cfg, host, sizeof host, &port, &fd);
    if (err != PETREL_OK) goto fail_early;
    net->limits = (petreli_wire_limits){cfg->frame_bytes, cfg->max_message_bytes, net->size};
    net->peers = petrel_calloc((size_t)net->size, sizeof *net->peers);
    net->table = petrel_calloc((size_t)net->size, sizeof *net->table);
    if (!net->peers || !net->table) {
        err = PETREL_ERR_NOMEM;
        goto fail_early;
    }
    uint64_t now = petrel_now_ns();
    for (int r = 0; r < net->size; r++) {
        pthread_mutex_init(&net->peers[r].send_mu, NULL);
        atomic_store(&net->peers[r].alive, true);
        atomic_store(&net->peers[r].last_seen_ns, now);
    }
    petrel_log_set_node(net->rank, net->size);
    petreli_msgbuf_users(+1); /* petrel_net_stop, also on the failure path, gives it back */
    if (net->size == 1) {
        *out = net;
        return PETREL_OK;
    }
    if ((err = open_transports(net, host, port, fd)) != PETREL_OK) goto fail;
    uint64_t deadline = petreli_deadline_after((int)cfg->connect_timeout_ms);
    if (net->rank != 0 && (err = rendezvous_node(net, cfg, deadline)) != PETREL_OK) goto fail;
    if (net->rank == 0) {
        /* The coordinator's table entry is its own; its peers' come with REGISTER. */
        pthread_mutex_lock(&net->mu);
        net->table_ready = true;
        pthread_mutex_unlock(&net->mu);
    }
    if (net->rank != 0) {
        connect_shm(net, deadline);
        if ((err = wait_links(net, deadline)) != PETREL_OK) goto fail;
        if ((err = petreli_send_control(net, 0, PETRELI_MSG_READY, 0, NULL, 0, CONTROL_SEND_MS)) !=
            PETREL_OK)
            goto fail;
        if ((err = wait_go(net, deadline)) != PETREL_OK) goto fail;
    } else {
        if ((err = rendezvous_coordinator(net, deadline)) != PETREL_OK) goto fail;
    }
    if (net->shm.ops && net->shm.ops->seal) net->shm.ops->seal(net->shm.t);
    for (int p = 0; p < net->size; p++)
        if (p != net->rank && net->shm.ops && net->shm.ops->connected(net->shm.t, p)) {
            /* Under the send lock: the shm thread may already be falling back to TCP. */
            pthread_mutex_lock(&net->peers[p].send_mu);
            net->peers[p].send_link = net->shm;
            pthread_mutex_unlock(&net->peers[p].send_mu);
        }
    now = petrel_now_ns();
    for (int r = 0; r < net->size; r++) atomic_store(&net->peers[r].last_seen_ns, now);
    if (pthread_create(&net->monitor, NULL, monitor_main, net) != 0) {
        err = petrel_error_set(PETREL_ERR_NOMEM, "cannot start the monitor thread");
        goto fail;
    }
    net->monitor_started = true;
    PETREL_LOG_INFO("net", "rank %d (%s) joined a job of %d", net->rank,
                    petreli_node_role(net, net->rank), net->size);
    *out = net;
    return PETREL_OK;
fail:
    atomic_store(&net->stopping, true);
    petrel_net_stop(net);
    return err;
fail_early:
    pthread_mutex_destroy(&net->mu);
    pthread_cond_destroy(&net->cv);
    petrel_free(net->peers);
    petrel_free(net->table);
    petrel_free(net);
    return err;
}

/* ---- stop ------------------------------------------------------------------------ */

void petrel_net_stop(petrel_net *net) {
    if (!net) return;
    bool was_stopping = atomic_exchange(&net->stopping, true);
    if (net->monitor_started) pthread_join(net->monitor, NULL);
    if (!was_stopping && net->primary.ops) {
        broadcast_deaths(net); /* a death seen just before stopping is still announced */
        /* Say goodbye while the links are up, so that peers do not report a failure.
         * BYE goes over the primary link, on which it arrives before the close; over
         * shared memory the peer could see the TCP close first and call it a death. */
        for (int r = 0; r < net->size; r++)
            if (r != net->rank && atomic_load(&net->peers[r].alive)) {
                pthread_mutex_lock(&net->peers[r].send_mu);
                net->peers[r].send_link = net->primary;
                pthread_mutex_unlock(&net->peers[r].send_mu);
                (void)petreli_send_control(net, r, PETRELI_MSG_BYE, 0, NULL, 0, 200);
            }
        /* Linger for the peers' goodbyes (they stop too, usually just after a barrier):
         * closing a TCP socket with their last bytes unread would reset the connection,
         * and a reset can destroy what we sent last, our BYE included. */
        uint64_t deadline = petreli_deadline_after(LINGER_MS);
        pthread_mutex_lock(&net->mu);
        for (int r = 0; r < net->size; r++)
            while (r != net->rank && atomic_load(&net->peers[r].alive) &&
                   !atomic_load(&net->peers[r].left) && !atomic_load(&net->peers[r].bye_ns) &&
                   petreli_wait_until(net, deadline)) {
            }
        pthread_mutex_unlock(&net->mu);
    }
    /* Every receive thread stops before any transport is freed: one transport's
     * events can reach the other (a BYE over TCP asks whether shm is still up). */
    net_link links[2] = {net->shm, net->primary};
    for (int i = 0; i < 2; i++)
        if (links[i].ops && links[i].ops->quiesce) links[i].ops->quiesce(links[i].t);
    for (int i = 0; i < 2; i++)
        if (links[i].ops) links[i].ops->close(links[i].t);
    for (queued *q = net->mail_head; q;) {
        queued *next = q->next;
        petreli_msgbuf_put(q->m.owned);
        petrel_free(q);
        q = next;
    }
    for (queued *q = net->free_queued; q;) {
        queued *next = q->next;
        petrel_free(q);
        q = next;
    }
    for (int r = 0; net->peers && r < net->size; r++) {
        for (int v = 0; v < VIA_COUNT; v++) petreli_msgbuf_put(net->peers[r].rx[v].buf);
        pthread_mutex_destroy(&net->peers[r].send_mu);
    }
    pthread_mutex_destroy(&net->mu);
    pthread_cond_destroy(&net->cv);
    petrel_free(net->peers);
    petrel_free(net->table);
    petrel_free(net);
    petreli_msgbuf_users(-1);
}

/* ---- accessors -------------------------------------------------------------------- */

int petrel_net_rank(const petrel_net *net) {
    return net->rank;
}

int petrel_net_size(const petrel_net *net) {
    return net->size;
}

int petrel_net_servers(const petrel_net *net) {
    return net->servers;
}

petrel_role petrel_net_role(const petrel_net *net) {
    return petrel_role_of(net->rank, net->size, net->servers);
}

const char *petrel_net_link(const petrel_net *net, int peer) {
    if (peer == net->rank) return "self";
    if (peer < 0 || peer >= net->size) return "none";
    peer_state *pe = &net->peers[peer];
    pthread_mutex_lock(&pe->send_mu); /* a receive thread may switch the link */
    const char *name = pe->send_link.ops ? pe->send_link.ops->name : "none";
    pthread_mutex_unlock(&pe->send_mu);
    return name;
}

bool petreli_net_can_share_memory(petrel_net *net, int a, int b) {
    if (a < 0 || a >= net->size || b < 0 || b >= net->size) return false;
    pthread_mutex_lock(&net->mu); /* written under mu while the job forms */
    const node_entry *x = &net->table[a], *y = &net->table[b];
    bool yes = x->shm[0] && y->shm[0] && x->host[0] && strcmp(x->host, y->host) == 0;
    pthread_mutex_unlock(&net->mu);
    return yes;
}

void petrel_net_on_failure(petrel_net *net, petrel_peer_failure_fn fn, void *ctx) {
    pthread_mutex_lock(&net->mu);
    net->on_failure = fn;
    net->on_failure_ctx = ctx;
    pthread_mutex_unlock(&net->mu);
}

bool petrel_net_peer_alive(const petrel_net *net, int peer) {
    return peer == net->rank ||
           (peer >= 0 && peer < net->size && atomic_load(&net->peers[peer].alive));
}

petrel_net_stats petrel_net_get_stats(const petrel_net *net) {
    petrel_net_stats st = {atomic_load(&net->bytes_sent), atomic_load(&net->bytes_received),
                           atomic_load(&net->messages_sent), atomic_load(&net->messages_received),
                           atomic_load(&net->rejected)};
    return st;
}
