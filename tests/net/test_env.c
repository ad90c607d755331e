/* The job environment: every source of rank and size, their precedence, strict
 * parsing, the shared settings, and the rank rule. */
#include "check.h"
#include "petrel/launch.h"
#include "petrel/net.h"

static const char *const all_vars[] = {
    "PETREL_RANK",          "PETREL_SIZE",  "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",    "PMIX_SIZE",
    "SLURM_PROCID",         "SLURM_NTASKS", "PETREL_SERVERS",
    "PETREL_COORDINATOR",   "PETREL_TOKEN", "PETREL_INTERFACE",
    "PETREL_JOB_ID",        "SLURM_JOB_ID", "OMPI_MCA_ess_base_jobid",
};

static void clear_env(void) {
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++) unsetenv(all_vars[i]);
}

static void set(const char *var, const char *value) {
    setenv(var, value, 1);
}

static void test_empty_environment(void) {
    clear_env();
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == -1 && e.size == -1 && e.servers == -1);
    CHECK(strcmp(e.source, "none") == 0);
    CHECK(e.coordinator[0] == 0 && e.token[0] == 0 && e.interface[0] == 0 && e.job_id[0] == 0);
}

static void test_petrel_variables(void) {
    clear_env();
    set("PETREL_RANK", "2");
    set("PETREL_SIZE", "5");
    set("PETREL_SERVERS", "1");
    set("PETREL_COORDINATOR", "10.0.0.1:29500");
    set("PETREL_TOKEN", "00ff");
    set("PETREL_INTERFACE", "10.0.0.7");
    set("PETREL_JOB_ID", "job-42");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 2 && e.size == 5 && e.servers == 1);
    CHECK(strcmp(e.source, "petrel") == 0);
    CHECK(strcmp(e.coordinator, "10.0.0.1:29500") == 0);
    CHECK(strcmp(e.token, "00ff") == 0);
    CHECK(strcmp(e.interface, "10.0.0.7") == 0);
    CHECK(strcmp(e.job_id, "job-42") == 0);
}

static void test_openmpi(void) {
    clear_env();
    set("OMPI_COMM_WORLD_RANK", "3");
    set("OMPI_COMM_WORLD_SIZE", "4");
    set("OMPI_MCA_ess_base_jobid", "123456");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 3 && e.size == 4);
    CHECK(strcmp(e.source, "openmpi") == 0);
    CHECK(strcmp(e.job_id, "123456") == 0);
}

static void test_pmix(void) {
    clear_env();
    set("PMIX_RANK", "1");
    set("PMIX_SIZE", "2");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 1 && e.size == 2 && strcmp(e.source, "pmix") == 0);

    /* PMIX_RANK with Open MPI's size when PMIX_SIZE is missing. */
    clear_env();
    set("PMIX_RANK", "5");
    set("OMPI_COMM_WORLD_SIZE", "8");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 5 && e.size == 8 && strcmp(e.source, "pmix") == 0);

    /* PMIX_RANK alone is not a source: Slurm's pair is used instead. */
    clear_env();
    set("PMIX_RANK", "5");
    set("SLURM_PROCID", "1");
    set("SLURM_NTASKS", "3");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 1 && e.size == 3 && strcmp(e.source, "slurm") == 0);
}

static void test_slurm(void) {
    clear_env();
    set("SLURM_PROCID", "0");
    set("SLURM_NTASKS", "16");
    set("SLURM_JOB_ID", "998877");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 0 && e.size == 16 && strcmp(e.source, "slurm") == 0);
    CHECK(strcmp(e.job_id, "998877") == 0);
}

static void test_precedence(void) {
    clear_env();
    set("PETREL_RANK", "1");
    set("PETREL_SIZE", "2");
    set("OMPI_COMM_WORLD_RANK", "3");
    set("OMPI_COMM_WORLD_SIZE", "4");
    set("PMIX_RANK", "5");
    set("PMIX_SIZE", "6");
    set("SLURM_PROCID", "7");
    set("SLURM_NTASKS", "8");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 1 && e.size == 2 && strcmp(e.source, "petrel") == 0);
    unsetenv("PETREL_RANK");
    unsetenv("PETREL_SIZE");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 3 && e.size == 4 && strcmp(e.source, "openmpi") == 0);
    unsetenv("OMPI_COMM_WORLD_RANK");
    unsetenv("OMPI_COMM_WORLD_SIZE");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 5 && e.size == 6 && strcmp(e.source, "pmix") == 0);
    unsetenv("PMIX_RANK");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(e.rank == 7 && e.size == 8 && strcmp(e.source, "slurm") == 0);
}

static void test_job_id_precedence(void) {
    clear_env();
    set("PETREL_JOB_ID", "a");
    set("SLURM_JOB_ID", "b");
    set("OMPI_MCA_ess_base_jobid", "c");
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(strcmp(e.job_id, "a") == 0);
    unsetenv("PETREL_JOB_ID");
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(strcmp(e.job_id, "b") == 0);
    set("SLURM_JOB_ID", ""); /* empty: the next source */
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(strcmp(e.job_id, "c") == 0);
}

/* Sets var=value on top of a valid PETREL_* job, expects PETREL_ERR_INVALID whose
 * message names the variable and the value, and that out stays untouched. */
static void expect_invalid(const char *var, const char *value, const char *named) {
    clear_env();
    set("PETREL_RANK", "0");
    set("PETREL_SIZE", "2");
    set(var, value);
    petrel_job_env e;
    memset(&e, 0x5a, sizeof e);
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), named) != NULL);
    if (strlen(value) < 40) CHECK(strstr(petrel_errmsg(), value) != NULL);
    CHECK(e.rank == 0x5a5a5a5a);
}

static void test_bad_values(void) {
    expect_invalid("PETREL_RANK", "x", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "-1", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "+1", "PETREL_RANK");
    expect_invalid("PETREL_RANK", " 1", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "1x", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "0x1", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "2", "PETREL_RANK");
    expect_invalid("PETREL_RANK", "99999999999999999999", "PETREL_RANK");
    expect_invalid("PETREL_SIZE", "0", "PETREL_SIZE");
    expect_invalid("PETREL_SIZE", "two", "PETREL_SIZE");
    expect_invalid("PETREL_SERVERS", "-2", "PETREL_SERVERS");
    expect_invalid("PETREL_SERVERS", "1.5", "PETREL_SERVERS");
    char longv[300];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    expect_invalid("PETREL_COORDINATOR", longv, "PETREL_COORDINATOR");
    expect_invalid("PETREL_TOKEN", longv, "PETREL_TOKEN");
    expect_invalid("PETREL_INTERFACE", longv, "PETREL_INTERFACE");
    expect_invalid("PETREL_JOB_ID", longv, "PETREL_JOB_ID");

    /* One of PETREL_RANK/PETREL_SIZE without the other. */
    clear_env();
    set("PETREL_RANK", "0");
    set("OMPI_COMM_WORLD_RANK", "0");
    set("OMPI_COMM_WORLD_SIZE", "2");
    petrel_job_env e;
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "PETREL_SIZE") != NULL);
    clear_env();
    set("PETREL_SIZE", "3");
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "PETREL_RANK") != NULL);

    /* Other sources are as strict. */
    clear_env();
    set("OMPI_COMM_WORLD_RANK", "4");
    set("OMPI_COMM_WORLD_SIZE", "4");
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "OMPI_COMM_WORLD_RANK='4'") != NULL);
    clear_env();
    set("SLURM_PROCID", "0");
    set("SLURM_NTASKS", "many");
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "SLURM_NTASKS='many'") != NULL);
    clear_env();
    set("PMIX_RANK", "x");
    set("OMPI_COMM_WORLD_SIZE", "2");
    CHECK_ERR(petrel_job_env_read(&e), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "PMIX_RANK='x'") != NULL);
}

static void test_longest_values_fit(void) {
    clear_env();
    char v[256];
    memset(v, 'c', 255);
    v[255] = 0;
    set("PETREL_COORDINATOR", v);
    v[127] = 0;
    set("PETREL_TOKEN", v);
    v[63] = 0;
    set("PETREL_INTERFACE", v);
    set("PETREL_JOB_ID", v);
    petrel_job_env e;
    CHECK_OK(petrel_job_env_read(&e));
    CHECK(strlen(e.coordinator) == 255 && strlen(e.token) == 127);
    CHECK(strlen(e.interface) == 63 && strlen(e.job_id) == 63);
}

static void test_role_rule(void) {
    static const struct {
        int rank, size, servers;
        petrel_role want;
    } rows[] = {
        {0, 1, 0, PETREL_ROLE_COORDINATOR}, {0, 4, 1, PETREL_ROLE_COORDINATOR},
        {1, 4, 1, PETREL_ROLE_SERVER},      {2, 4, 1, PETREL_ROLE_WORKER},
        {3, 4, 1, PETREL_ROLE_WORKER},      {1, 4, 0, PETREL_ROLE_WORKER},
        {1, 6, 2, PETREL_ROLE_SERVER},      {2, 6, 2, PETREL_ROLE_SERVER},
        {3, 6, 2, PETREL_ROLE_WORKER},      {5, 6, 2, PETREL_ROLE_WORKER},
        {3, 4, 9, PETREL_ROLE_SERVER}, /* servers clamp to size - 1 */
        {1, 2, 5, PETREL_ROLE_SERVER},      {1, 3, -1, PETREL_ROLE_WORKER},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        petrel_role got = petrel_role_of(rows[i].rank, rows[i].size, rows[i].servers);
        if (got != rows[i].want)
            check_fail(__FILE__, __LINE__, "rank %d size %d servers %d: %s, expected %s",
                       rows[i].rank, rows[i].size, rows[i].servers, petrel_role_name(got),
                       petrel_role_name(rows[i].want));
    }
    CHECK(strcmp(petrel_role_name(PETREL_ROLE_COORDINATOR), "coordinator") == 0);
    CHECK(strcmp(petrel_role_name(PETREL_ROLE_SERVER), "server") == 0);
    CHECK(strcmp(petrel_role_name(PETREL_ROLE_WORKER), "worker") == 0);
    CHECK(strcmp(petrel_role_name(PETREL_ROLE_COUNT), "unknown") == 0);
}

static void test_node_names(void) {
    char name[32];
    petrel_launch_node_name(0, 6, 2, name, sizeof name);
    CHECK(strcmp(name, "coordinator") == 0);
    petrel_launch_node_name(1, 6, 2, name, sizeof name);
    CHECK(strcmp(name, "server 0") == 0);
    petrel_launch_node_name(2, 6, 2, name, sizeof name);
    CHECK(strcmp(name, "server 1") == 0);
    petrel_launch_node_name(3, 6, 2, name, sizeof name);
    CHECK(strcmp(name, "worker 0") == 0);
    petrel_launch_node_name(5, 6, 2, name, sizeof name);
    CHECK(strcmp(name, "worker 2") == 0);
}

static void test_default_coordinator(void) {
    clear_env();
    set("PETREL_JOB_ID", "job-a");
    petrel_job_env a, b;
    CHECK_OK(petrel_job_env_read(&a));
    char ca[64], ca2[64], cb[64];
    petrel_job_env_default_coordinator(&a, ca, sizeof ca);
    petrel_job_env_default_coordinator(&a, ca2, sizeof ca2);
    CHECK(strcmp(ca, ca2) == 0); /* every node of the job computes the same address */
    CHECK(strncmp(ca, "127.0.0.1:", 10) == 0);
    int port = atoi(ca + 10);
    CHECK(port >= PETREL_DEFAULT_COORDINATOR_PORT &&
          port < PETREL_DEFAULT_COORDINATOR_PORT + PETREL_DEFAULT_COORDINATOR_PORTS);
    /* Different job ids spread over the range: of 20 ids, several ports differ. */
    int distinct = 0, prev = -1;
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "job-%d", i);
        set("PETREL_JOB_ID", id);
        CHECK_OK(petrel_job_env_read(&b));
        petrel_job_env_default_coordinator(&b, cb, sizeof cb);
        int p = atoi(cb + 10);
        CHECK(p >= PETREL_DEFAULT_COORDINATOR_PORT &&
              p < PETREL_DEFAULT_COORDINATOR_PORT + PETREL_DEFAULT_COORDINATOR_PORTS);
        distinct += p != prev;
        prev = p;
    }
    CHECK(distinct >= 15);
    /* No job id: the base port. */
    clear_env();
    CHECK_OK(petrel_job_env_read(&b));
    petrel_job_env_default_coordinator(&b, cb, sizeof cb);
    CHECK(strcmp(cb, "127.0.0.1:29537") == 0); /* FNV-1a("") % 1000 = 37 */
}

int main(void) {
    RUN(test_empty_environment);
    RUN(test_petrel_variables);
    RUN(test_openmpi);
    RUN(test_pmix);
    RUN(test_slurm);
    RUN(test_precedence);
    RUN(test_job_id_precedence);
    RUN(test_bad_values);
    RUN(test_longest_values_fit);
    RUN(test_role_rule);
    RUN(test_node_names);
    RUN(test_default_coordinator);
    return CHECK_DONE();
}
