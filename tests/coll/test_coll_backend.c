/* Choosing the backend of a communicator, in any build: petrel's own by default,
 * an unknown one refused, and MPI's refused with a message that says what to do (a
 * build without MPI: rebuild with it; a build with MPI: start the job with mpirun).
 * Both backends running collectives are in mpi_coll_test.sh (under mpirun). */
#include "check.h"
#include "petrel/coll.h"

static petrel_inproc_hub *hub;
static petrel_net *net;

static petrel_err comm_with(petrel_coll_backend backend, petrel_comm **c) {
    int zero = 0;
    petrel_comm_config cfg = petrel_comm_config_default();
    cfg.backend = backend;
    *c = NULL;
    return petrel_comm_new(c, net, &zero, 1, 1, cfg);
}

static void test_default_is_petrel(void) {
    CHECK(petrel_comm_config_default().backend == PETREL_BACKEND_PETREL);
    CHECK(petrel_coll_backend_available(PETREL_BACKEND_PETREL));
    CHECK(!petrel_coll_backend_available(PETREL_BACKEND_COUNT));
    CHECK(strcmp(petrel_coll_backend_name(PETREL_BACKEND_PETREL), "petrel") == 0);
    CHECK(strcmp(petrel_coll_backend_name(PETREL_BACKEND_MPI), "mpi") == 0);
    CHECK(strcmp(petrel_coll_backend_name(PETREL_BACKEND_COUNT), "unknown") == 0);
    petrel_comm *c;
    CHECK_OK(comm_with(PETREL_BACKEND_PETREL, &c));
    float x[3] = {1, 2, 3};
    if (c) CHECK_OK(petrel_allreduce(c, x, 3, PETREL_REDUCE_SUM));
    CHECK(x[0] == 1 && x[1] == 2 && x[2] == 3);
    if (c) CHECK(petrel_comm_get_stats(c).calls == 1);
    petrel_comm_free(c);
}

static void test_unknown_backend(void) {
    petrel_comm *c;
    CHECK_ERR(comm_with(PETREL_BACKEND_COUNT, &c), PETREL_ERR_INVALID);
    CHECK(c == NULL);
    CHECK(strstr(petrel_errmsg(), "backend 2 is unknown") != NULL);
}

static void test_mpi_refused_here(void) {
    petrel_comm *c = NULL;
    if (!petrel_coll_backend_available(PETREL_BACKEND_MPI)) {
        CHECK_ERR(comm_with(PETREL_BACKEND_MPI, &c), PETREL_ERR_UNSUPPORTED);
        CHECK(strstr(petrel_errmsg(), "built without MPI: install libopenmpi-dev and rebuild"));
    } else if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_RANK")) {
        /* not under mpirun: refused before MPI is initialized */
        CHECK_ERR(comm_with(PETREL_BACKEND_MPI, &c), PETREL_ERR_INVALID);
        CHECK(strstr(petrel_errmsg(), "needs a job started by mpirun"));
    }
    CHECK(c == NULL);
}

int main(void) {
    petrel_net_config cfg = petrel_net_config_default();
    cfg.rank = 0;
    cfg.size = 1;
    cfg.transport = PETREL_TRANSPORT_INPROC;
    if (petrel_inproc_hub_new(&hub, 1) != PETREL_OK) return 1;
    cfg.inproc_hub = hub;
    if (petrel_net_start(&net, &cfg) != PETREL_OK) {
        printf("FAIL - start (%s)\n", petrel_errmsg());
        return 1;
    }
    RUN(test_default_is_petrel);
    RUN(test_unknown_backend);
    RUN(test_mpi_refused_here);
    petrel_net_stop(net);
    petrel_inproc_hub_free(hub);
    return CHECK_DONE();
}
