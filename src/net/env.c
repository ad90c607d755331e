/*
 * Where a node sits in its job: rank, size and the job's shared settings, read
 * from the environment that a launcher (petrel launch, mpirun, srun) gave it, and
 * the rank rule that turns a rank into a role.
 *
 * Rank and size come from the first complete pair, in this order:
 *   source     rank variable          size variable
 *   "petrel"   PETREL_RANK            PETREL_SIZE (one without the other is an error)
 *   "openmpi"  OMPI_COMM_WORLD_RANK   OMPI_COMM_WORLD_SIZE
 *   "pmix"     PMIX_RANK              PMIX_SIZE, else OMPI_COMM_WORLD_SIZE
 *   "slurm"    SLURM_PROCID           SLURM_NTASKS
 * Parsing is strict: a value must be a whole decimal number in range, so that a
 * typo fails at start with the variable's name instead of forming a wrong job.
 */
#include "net_impl.h"
#include "petrel/launch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *petrel_role_name(petrel_role role) {
    switch (role) {
    case PETREL_ROLE_COORDINATOR:
        return "coordinator";
    case PETREL_ROLE_SERVER:
        return "server";
    case PETREL_ROLE_WORKER:
        return "worker";
    case PETREL_ROLE_COUNT:
        break;
    }
    return "unknown";
}

petrel_role petrel_role_of(int rank, int size, int servers) {
    PETREL_ASSERT(size >= 1 && rank >= 0 && rank < size,
                  "petrel_role_of wants 0 <= rank < size; read them with petrel_job_env_read");
    if (servers > size - 1) servers = size - 1;
    if (rank == 0) return PETREL_ROLE_COORDINATOR;
    if (rank <= servers) return PETREL_ROLE_SERVER;
    return PETREL_ROLE_WORKER;
}

void petrel_launch_node_name(int rank, int size, int servers, char *out, size_t n) {
    PETREL_ASSERT(out && n > 0, "pass an output buffer");
    if (servers > size - 1) servers = size - 1;
    if (servers < 0) servers = 0;
    switch (petrel_role_of(rank, size, servers)) {
    case PETREL_ROLE_COORDINATOR:
        snprintf(out, n, "coordinator");
        break;
    case PETREL_ROLE_SERVER:
        snprintf(out, n, "server %d", rank - 1);
        break;
    default:
        snprintf(out, n, "worker %d", rank - 1 - servers);
        break;
    }
}

/* A whole decimal number in [lo, hi], with no sign games, spaces or suffix. */
static petrel_err parse_int(const char *var, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    bool digits = s[0] >= '0' && s[0] <= '9';
    if (!digits || errno || *end || v < lo || v > hi)
        return petrel_error_set(PETREL_ERR_INVALID, "%s='%s': expected a whole number in %ld..%ld",
                                var, s, lo, hi);
    *out = (int)v;
    return PETREL_OK;
}

static petrel_err copy_str(const char *var, const char *s, char *dst, size_t n) {
    size_t len = strlen(s);
    if (len >= n)
        return petrel_error_set(PETREL_ERR_INVALID, "%s is %zu characters long; at most %zu fit",
                                var, len, n - 1);
    memcpy(dst, s, len + 1);
    return PETREL_OK;
}

typedef struct rank_source {
    const char *name;
    const char *rank_var;
    const char *size_vars[2]; /* the first one set wins */
} rank_source;

static const rank_source sources[] = {
    {"petrel", "PETREL_RANK", {"PETREL_SIZE", NULL}},
    {"openmpi", "OMPI_COMM_WORLD_RANK", {"OMPI_COMM_WORLD_SIZE", NULL}},
    {"pmix", "PMIX_RANK", {"PMIX_SIZE", "OMPI_COMM_WORLD_SIZE"}},
    {"slurm", "SLURM_PROCID", {"SLURM_NTASKS", NULL}},
};

static petrel_err read_rank(petrel_job_env *e) {
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
        const rank_source *src = &sources[i];
        const char *rank_s = getenv(src->rank_var);
        const char *size_s = NULL, *size_var = NULL;
        for (int k = 0; k < 2 && src->size_vars[k] && !size_s; k++) {
            size_s = getenv(src->size_vars[k]);
            size_var = src->size_vars[k];
        }
        if (i == 0 && (rank_s != NULL) != (size_s != NULL))
            return petrel_error_set(
                PETREL_ERR_INVALID, "%s is set but %s is not; set both or neither",
                rank_s ? "PETREL_RANK" : "PETREL_SIZE", rank_s ? "PETREL_SIZE" : "PETREL_RANK");
        if (!rank_s || !size_s) continue;
        int rank = -1, size = 0; /* GCC at -O3 cannot see that parse_int sets both */
        petrel_err err = parse_int(size_var, size_s, 1, INT_MAX, &size);
        if (err) return err;
        if ((err = parse_int(src->rank_var, rank_s, 0, INT_MAX, &rank))) return err;
        if (rank >= size)
            return petrel_error_set(PETREL_ERR_INVALID, "%s='%s' is outside 0..%d (%s='%s')",
                                    src->rank_var, rank_s, size - 1, size_var, size_s);
        e->rank = rank;
        e->size = size;
        e->source = src->name;
        return PETREL_OK;
    }
    return PETREL_OK;
}

petrel_err petrel_job_env_read(petrel_job_env *out) {
    PETREL_ASSERT(out, "pass a petrel_job_env to fill");
    petrel_job_env e;
    memset(&e, 0, sizeof e);
    e.rank = e.size = e.servers = -1;
    e.source = "none";
    petrel_err err = read_rank(&e);
    if (err) return err;

    const char *s = getenv("PETREL_SERVERS");
    if (s && (err = parse_int("PETREL_SERVERS", s, 0, INT_MAX, &e.servers))) return err;

    static const struct {
        const char *var;
        size_t offset, size;
    } strs[] = {
        {"PETREL_COORDINATOR", offsetof(petrel_job_env, coordinator),
         sizeof((petrel_job_env *)0)->coordinator},
        {"PETREL_TOKEN", offsetof(petrel_job_env, token), sizeof((petrel_job_env *)0)->token},
        {"PETREL_INTERFACE", offsetof(petrel_job_env, interface),
         sizeof((petrel_job_env *)0)->interface},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (!(s = getenv(strs[i].var))) continue;
        if ((err = copy_str(strs[i].var, s, (char *)&e + strs[i].offset, strs[i].size))) return err;
    }

    static const char *const job_vars[] = {"PETREL_JOB_ID", "SLURM_JOB_ID",
                                           "OMPI_MCA_ess_base_jobid"};
    for (size_t i = 0; i < sizeof job_vars / sizeof job_vars[0]; i++) {
        if (!(s = getenv(job_vars[i])) || !s[0]) continue; /* empty: try the next */
        if ((err = copy_str(job_vars[i], s, e.job_id, sizeof e.job_id))) return err;
        break;
    }
    *out = e;
    return PETREL_OK;
}

/* FNV-1a, 64-bit: stable across builds and platforms, which the port rule needs. */
static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

void petrel_job_env_default_coordinator(const petrel_job_env *e, char *out, size_t n) {
    PETREL_ASSERT(e && out && n > 0, "pass an environment and an output buffer");
    unsigned port = PETREL_DEFAULT_COORDINATOR_PORT +
                    (unsigned)(fnv1a(e->job_id) % PETREL_DEFAULT_COORDINATOR_PORTS);
    snprintf(out, n, "127.0.0.1:%u", port);
}
