/* Data-parallel training, members on threads over the in-process transport: the
 * same numbers as one process with the whole batch, SFB and hybrid equal to
 * allreduce, unequal shards, and the cost formula. */
#include "apps.h"
#include "check.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define N_SAMPLES 640
#define DIM       12

static char dir[256];

/* Rows of a 3-class problem, deterministic. */
static void make_rows(float x[N_SAMPLES][DIM], int *y) {
    petrel_rng rng;
    petrel_rng_seed(&rng, 11);
    for (int i = 0; i < N_SAMPLES; i++) {
        float s[3] = {0, 0, 0};
        for (int j = 0; j < DIM; j++) {
            x[i][j] = petrel_rng_normal(&rng);
            s[j % 3] += x[i][j] * (float)(1 + j / 3);
        }
        y[i] = s[0] > s[1] ? (s[0] > s[2] ? 0 : 2) : (s[1] > s[2] ? 1 : 2);
    }
}

/* Writes rows order[0..n) as a CSV and loads it. */
static petrel_dataset *dataset(const char *name, float x[N_SAMPLES][DIM], const int *y,
                               const int *order, int n) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s.csv", dir, name);
    FILE *f = fopen(path, "w");
    for (int k = 0; k < n; k++) {
        int i = order[k];
        for (int j = 0; j < DIM; j++) fprintf(f, "%.9g,", (double)x[i][j]);
        fprintf(f, "%d\n", y[i]);
    }
    fclose(f);
    petrel_dataset *d = NULL;
    if (petrel_dataset_load_csv(&d, path, petrel_csv_options_default()) != PETREL_OK) abort();
    return d;
}

static petrel_model *mlp(void) {
    petrel_model_options o = petrel_model_options_default();
    o.in_dim = DIM;
    o.classes = 3;
    o.hidden[0] = 16;
    o.hidden[1] = 0;
    petrel_model *m = NULL;
    if (petrel_model_new(&m, &o) != PETREL_OK) abort();
    return m;
}

/* ---- members on threads ------------------------------------------------------------ */

typedef struct member {
    int rank, size;
    petrel_inproc_hub *hub;
    const petrel_dataset *train;
    petrel_train_config cfg;
    petrel_dp_config dp;
    petrel_model *model; /* out: the trained model */
    petrel_train_result result;
    petrel_comm_stats stats; /* out: the communicator's, after training */
    petrel_err err;
    char errmsg[256];
} member;

static void *member_main(void *arg) {
    member *mb = arg;
    petrel_net_config nc = petrel_net_config_default();
    nc.rank = mb->rank;
    nc.size = mb->size;
    nc.transport = PETREL_TRANSPORT_INPROC;
    nc.inproc_hub = mb->hub;
    petrel_net *net = NULL;
    petrel_comm *comm = NULL;
    int ranks[8];
    for (int r = 0; r < mb->size; r++) ranks[r] = r;
    mb->model = mlp();
    mb->err = petrel_net_start(&net, &nc);
    if (mb->err == PETREL_OK)
        mb->err = petrel_comm_new(&comm, net, ranks, mb->size, 1, petrel_comm_config_default());
    if (mb->err == PETREL_OK)
        mb->err = petrel_train_dp(mb->model, mb->train, NULL, &mb->cfg, comm, mb->dp, &mb->result);
    snprintf(mb->errmsg, sizeof mb->errmsg, "%s", petrel_errmsg());
    if (comm) mb->stats = petrel_comm_get_stats(comm);
    petrel_comm_free(comm);
    petrel_net_stop(net);
    return NULL;
}

/* Trains P members; returns them (models kept for inspection). */
static void run_members(member *mb, int P, const petrel_dataset *train, petrel_train_config cfg,
                        petrel_dp_config dp) {
    petrel_inproc_hub *hub;
    if (petrel_inproc_hub_new(&hub, P) != PETREL_OK) abort();
    pthread_t th[8];
    for (int r = 0; r < P; r++) {
        mb[r] = (member){.rank = r, .size = P, .hub = hub, .train = train, .cfg = cfg, .dp = dp};
        pthread_create(&th[r], NULL, member_main, &mb[r]);
    }
    for (int r = 0; r < P; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < P; r++) {
        if (mb[r].err != PETREL_OK) printf("# member %d: %s\n", r, mb[r].errmsg);
        CHECK_OK(mb[r].err);
    }
    petrel_inproc_hub_free(hub);
}

static double max_param_diff(const petrel_model *a, const petrel_model *b) {
    const float *pa = petrel_params_data(a->params), *pb = petrel_params_data(b->params);
    double worst = 0;
    for (size_t i = 0; i < petrel_params_count(a->params); i++) {
        double d = fabs((double)pa[i] - (double)pb[i]);
        worst = d > worst ? d : worst;
    }
    return worst;
}

static petrel_train_config quiet_config(int64_t batch, int64_t steps) {
    petrel_train_config cfg = petrel_train_config_default();
    cfg.epochs = 1;
    cfg.batch = batch;
    cfg.max_steps = steps;
    cfg.shuffle = false;
    cfg.quiet = true;
    cfg.progress = 0;
    return cfg;
}

static float xs[N_SAMPLES][DIM];
static int ys[N_SAMPLES];

/* Two members with batch 32 each take exactly the steps of one process with batch 64
 * made of their two batches. */
static void test_two_by_32_equals_one_by_64(void) {
    int identity[N_SAMPLES], merged[N_SAMPLES];
    for (int i = 0; i < N_SAMPLES; i++) identity[i] = i;
    /* member p's batch i is shard p's samples [32 i, 32 i + 32); shard p is
     * [p n / 2, (p + 1) n / 2) (the batcher's rule, without shuffling) */
    for (int i = 0; i < N_SAMPLES / 64; i++)
        for (int j = 0; j < 64; j++)
            merged[64 * i + j] = j < 32 ? 32 * i + j : N_SAMPLES / 2 + 32 * i + (j - 32);
    petrel_dataset *whole = dataset("whole", xs, ys, identity, N_SAMPLES);
    petrel_dataset *single_view = dataset("merged", xs, ys, merged, N_SAMPLES);
    member mb[2];
    run_members(mb, 2, whole, quiet_config(32, 10), petrel_dp_config_default());
    petrel_model *single = mlp();
    petrel_train_result r;
    petrel_train_config cfg = quiet_config(64, 10);
    CHECK_OK(petrel_train(single, single_view, NULL, &cfg, &r));
    double d0 = max_param_diff(mb[0].model, single), d1 = max_param_diff(mb[1].model, single);
    printf("# after 10 steps: largest parameter difference %.3g (member 0), %.3g (member 1)\n", d0,
           d1);
    CHECK(d0 < 1e-5 && d1 < 1e-5);
    CHECK(max_param_diff(mb[0].model, mb[1].model) == 0.0); /* replicas stay identical */
    CHECK_NEAR(mb[0].result.train_loss, r.train_loss, 1e-5, 1e-5);
    CHECK(mb[0].result.steps == 10);
    for (int p = 0; p < 2; p++) petrel_model_free(mb[p].model);
    petrel_model_free(single);
    petrel_dataset_free(whole);
    petrel_dataset_free(single_view);
}

/* SFB rebuilds the gradient from factors: the same update as allreduce, for 2 and
 * 3 members, with and without overlap, and under hybrid. */
static void test_sfb_and_hybrid_equal_allreduce(void) {
    int identity[N_SAMPLES];
    for (int i = 0; i < N_SAMPLES; i++) identity[i] = i;
    petrel_dataset *whole = dataset("whole2", xs, ys, identity, N_SAMPLES);
    for (int P = 2; P <= 3; P++) {
        member ar[3], other[3];
        petrel_dp_config dp = petrel_dp_config_default();
        run_members(ar, P, whole, quiet_config(20, 5), dp);
        petrel_comm_mode modes[2] = {PETREL_COMM_SFB, PETREL_COMM_HYBRID};
        for (int k = 0; k < 2; k++)
            for (int overlap = 0; overlap < 2; overlap++) {
                dp.mode = modes[k];
                dp.overlap = overlap;
                run_members(other, P, whole, quiet_config(20, 5), dp);
                double d = max_param_diff(ar[0].model, other[0].model);
                if (d >= 1e-5)
                    printf("# P=%d %s overlap %d: difference %.3g\n", P,
                           petrel_comm_mode_name(dp.mode), overlap, d);
                CHECK(d < 1e-5);
                for (int p = 0; p < P; p++) petrel_model_free(other[p].model);
            }
        for (int p = 0; p < P; p++) petrel_model_free(ar[p].model);
    }
    petrel_dataset_free(whole);
}

/* Shards of 50 and 51 samples give 5 and 6 batches of 10: both members run 5 steps
 * an epoch and finish. */
static void test_unequal_shards_finish(void) {
    int identity[101];
    for (int i = 0; i < 101; i++) identity[i] = i;
    petrel_dataset *odd = dataset("odd", xs, ys, identity, 101);
    member mb[2];
    petrel_train_config cfg = quiet_config(10, 0);
    cfg.epochs = 3;
    cfg.shuffle = true;
    run_members(mb, 2, odd, cfg, petrel_dp_config_default());
    CHECK(mb[0].result.steps == 15 && mb[1].result.steps == 15);
    CHECK(mb[0].result.epochs == 3);
    for (int p = 0; p < 2; p++) petrel_model_free(mb[p].model);
    petrel_dataset_free(odd);
}

/* The cost formula: SFB pays K (P - 1) (OUT + IN) floats, allreduce 2 (P - 1)/P OUT IN. */
static void test_cost_formula(void) {
    /* MLP 784-256-10, 32 per worker, 2 workers: the first layer favours SFB ... */
    CHECK(petrel_sfb_floats(256, 784, 32, 2) == 32.0 * 1 * (256 + 784));
    CHECK(petrel_allreduce_floats(256, 784, 2) == 256.0 * 784);
    CHECK(petrel_sfb_floats(256, 784, 32, 2) < petrel_allreduce_floats(256, 784, 2));
    /* ... the 10-way output layer allreduce */
    CHECK(petrel_sfb_floats(10, 256, 32, 2) > petrel_allreduce_floats(10, 256, 2));
    petrel_comm_mode m;
    CHECK_OK(petrel_comm_mode_parse("hybrid", &m));
    CHECK(m == PETREL_COMM_HYBRID);
    CHECK_ERR(petrel_comm_mode_parse("gossip", &m), PETREL_ERR_INVALID);
}

/* The bytes SFB puts on the wire are the formula's: two more steps of the 12-16-3 MLP
 * with 2 members of 20 add, per step and member, K (P - 1) (OUT + IN) floats for each
 * weight's factors and, for P = 2, one copy of each bias bucket. */
static void test_sfb_bytes_match_formula(void) {
    int identity[N_SAMPLES];
    for (int i = 0; i < N_SAMPLES; i++) identity[i] = i;
    petrel_dataset *whole = dataset("bytes", xs, ys, identity, N_SAMPLES);
    petrel_dp_config dp = petrel_dp_config_default();
    dp.mode = PETREL_COMM_SFB;
    dp.overlap = false;
    member two[2], four[2];
    run_members(two, 2, whole, quiet_config(20, 2), dp);
    run_members(four, 2, whole, quiet_config(20, 4), dp);
    const int K = 20, P = 2;
    double per_step = petrel_sfb_floats(16, 12, K, P) + petrel_sfb_floats(3, 16, K, P) +
                      (3 + 16) * 2.0 * (P - 1) / P; /* fc2.b and fc1.b by allreduce */
    for (int r = 0; r < 2; r++) {
        double got = (double)(four[r].stats.payload_bytes_sent - two[r].stats.payload_bytes_sent);
        printf("# member %d: 2 SFB steps sent %.0f payload bytes, the formula says %.0f\n", r, got,
               2 * per_step * sizeof(float));
        CHECK(got == 2 * per_step * sizeof(float));
    }
    for (int r = 0; r < 2; r++) {
        petrel_model_free(two[r].model);
        petrel_model_free(four[r].model);
    }
    petrel_dataset_free(whole);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/petrel-dp-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    make_rows(xs, ys);
    RUN(test_two_by_32_equals_one_by_64);
    RUN(test_sfb_and_hybrid_equal_allreduce);
    RUN(test_unequal_shards_finish);
    RUN(test_cost_formula);
    RUN(test_sfb_bytes_match_formula);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return CHECK_DONE();
}
