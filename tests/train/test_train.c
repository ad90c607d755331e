/* The training loop on small synthetic data: learning happens, the steady-state
 * step allocates nothing, metrics.jsonl and model.ckpt are written and reload. */
#include "apps.h"
#include "check.h"

#include <stdlib.h>
#include <unistd.h>

static char dir[256];

/* A CSV of n samples in d dims, 3 classes: class = argmax of 3 fixed directions. */
static petrel_dataset *synthetic(const char *name, int n, int d, uint64_t seed) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s.csv", dir, name);
    FILE *f = fopen(path, "w");
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        float x[64], s[3] = {0, 0, 0};
        for (int j = 0; j < d; j++) {
            x[j] = petrel_rng_normal(&rng);
            s[j % 3] += x[j] * (float)(1 + j / 3);
        }
        int label = s[0] > s[1] ? (s[0] > s[2] ? 0 : 2) : (s[1] > s[2] ? 1 : 2);
        for (int j = 0; j < d; j++) fprintf(f, "%g,", (double)x[j]);
        fprintf(f, "%d\n", label);
    }
    fclose(f);
    petrel_dataset *ds = NULL;
    if (petrel_dataset_load_csv(&ds, path, petrel_csv_options_default()) != PETREL_OK) {
        printf("# %s\n", petrel_errmsg());
        abort();
    }
    return ds;
}

static petrel_model *mlp(int64_t in, int64_t classes, int64_t hidden) {
    petrel_model_options o = petrel_model_options_default();
    o.in_dim = in;
    o.classes = classes;
    o.hidden[0] = hidden;
    o.hidden[1] = 0;
    petrel_model *m = NULL;
    if (petrel_model_new(&m, &o) != PETREL_OK) abort();
    return m;
}

static void test_learns_synthetic(void) {
    petrel_dataset *train = synthetic("learn", 3000, 12, 1),
                   *test = synthetic("learn_t", 600, 12, 2);
    petrel_model *m = mlp(12, 3, 32);
    double acc0;
    CHECK_OK(petrel_evaluate(m, test, 100, &acc0, NULL));
    petrel_train_config cfg = petrel_train_config_default();
    cfg.epochs = 8;
    cfg.batch = 32;
    cfg.progress = 0;
    cfg.quiet = true;
    petrel_train_result r;
    CHECK_OK(petrel_train(m, train, test, &cfg, &r));
    CHECK(acc0 < 0.6);
    CHECK(r.test_accuracy > 0.9);
    CHECK(r.epochs == 8 && r.steps == 8 * ((3000 + 31) / 32));
    CHECK(r.train_loss < 0.3);
    CHECK(r.samples_per_sec > 0 && r.wall_s > 0);
    petrel_model_free(m);
    petrel_dataset_free(train);
    petrel_dataset_free(test);
}

/* After the first steps have sized the arena, a step makes no allocation at all:
 * for the MLP, the softmax model and the CNN, with every optimizer. */
static void test_step_allocates_nothing(void) {
    const char *models[] = {"mlp", "softmax", "cnn"};
    for (int k = 0; k < 3; k++) {
        petrel_model_options o = petrel_model_options_default();
        o.name = models[k];
        o.in_dim = 784;
        o.classes = 10;
        const int64_t B = 16;
        float *x = petrel_malloc(B * 784 * sizeof(float));
        int32_t y[16];
        petrel_rng rng;
        petrel_rng_seed(&rng, 3);
        for (int64_t i = 0; i < B * 784; i++) x[i] = petrel_rng_uniform(&rng);
        for (int i = 0; i < B; i++) y[i] = i % 10;
        for (int kind = 0; kind < PETREL_OPTIM_COUNT; kind++) {
            petrel_model *m; /* fresh for each optimizer, so that each starts from the same loss */
            CHECK_OK(petrel_model_new(&m, &o));
            petrel_graph *g;
            petrel_optim *opt;
            CHECK_OK(
                petrel_graph_new(&g, 4096)); /* start small: the arena must grow, then settle */
            CHECK_OK(petrel_optim_new(&opt,
                                      petrel_optim_config_default((petrel_optim_kind)kind, 0.01f),
                                      petrel_params_count(m->params)));
            float loss, first = 0;
            for (int s = 0; s < 3; s++) {
                CHECK_OK(petrel_train_step(m, g, opt, x, y, B, &loss));
                if (s == 0) first = loss;
            }
            uint64_t before = petrel_alloc_get_stats().calls;
            for (int s = 0; s < 20; s++) CHECK_OK(petrel_train_step(m, g, opt, x, y, B, &loss));
            uint64_t made = petrel_alloc_get_stats().calls - before;
            if (made)
                printf("# %s/%s: %llu allocations in 20 steps\n", models[k],
                       petrel_optim_name((petrel_optim_kind)kind), (unsigned long long)made);
            CHECK(made == 0);
            if (!(loss < first))
                printf("# %s/%s: loss %g -> %g\n", models[k],
                       petrel_optim_name((petrel_optim_kind)kind), (double)first, (double)loss);
            CHECK(loss < first); /* the same batch 23 times: its loss must fall */
            petrel_optim_free(opt);
            petrel_graph_free(g);
            petrel_model_free(m);
        }
        petrel_free(x);
    }
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_metrics_and_checkpoint(void) {
    petrel_dataset *train = synthetic("m", 500, 6, 5), *test = synthetic("m_t", 100, 6, 6);
    petrel_model *m = mlp(6, 3, 8);
    char out[300];
    snprintf(out, sizeof out, "%s/run/nested", dir);
    petrel_train_config cfg = petrel_train_config_default();
    cfg.epochs = 3;
    cfg.batch = 50;
    cfg.out_dir = out;
    cfg.progress = 0;
    cfg.quiet = true;
    petrel_train_result r;
    CHECK_OK(petrel_train(m, train, test, &cfg, &r));
    char path[400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    char *text = slurp(path);
    CHECK(text != NULL);
    if (!text) return;
    int lines = 0, epochs = 0, finals = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        CHECK(line[0] == '{' && line[strlen(line) - 1] == '}');
        if (strstr(line, "\"event\":\"epoch\"")) {
            epochs++;
            const char *keys[] = {"\"epoch\":", "\"train_loss\":", "\"test_accuracy\":",
                                  "\"samples_per_sec\":", "\"wall_s\":"};
            for (int k = 0; k < 5; k++) CHECK(strstr(line, keys[k]) != NULL);
        }
        if (strstr(line, "\"event\":\"final\"")) {
            finals++;
            const char *keys[] = {"\"test_accuracy\":", "\"train_loss\":", "\"samples_per_sec\":",
                                  "\"wall_s\":", "\"peak_rss_mb\":"};
            for (int k = 0; k < 5; k++) CHECK(strstr(line, keys[k]) != NULL);
            char want[64];
            snprintf(want, sizeof want, "\"test_accuracy\":%.9g", r.test_accuracy);
            CHECK(strstr(line, want) != NULL);
        }
    }
    CHECK(lines == 5 && epochs == 3 && finals == 1); /* start, 3 epochs, final */

    /* The checkpoint rebuilds the same model from its metadata alone. */
    snprintf(path, sizeof path, "%s/model.ckpt", out);
    char *meta = NULL;
    CHECK_OK(petrel_checkpoint_read_meta(path, &meta));
    petrel_model_options o;
    CHECK_OK(petrel_model_options_parse(&o, meta));
    o.seed = 99;
    petrel_model *again = NULL;
    CHECK_OK(petrel_model_new(&again, &o));
    CHECK_OK(petrel_checkpoint_load(again->params, path, NULL));
    double a1, a2, l1, l2;
    CHECK_OK(petrel_evaluate(m, test, 32, &a1, &l1));
    CHECK_OK(petrel_evaluate(again, test, 32, &a2, &l2));
    CHECK(a1 == a2 && l1 == l2);
    CHECK_NEAR(a1, r.test_accuracy, 1e-12, 0);
    petrel_free(meta);
    petrel_model_free(again);
    petrel_model_free(m);
    petrel_dataset_free(train);
    petrel_dataset_free(test);
}

static void test_rejects_mismatched_data(void) {
    petrel_dataset *train = synthetic("mm", 100, 6, 7);
    petrel_model *m = mlp(7, 3, 8);
    petrel_train_config cfg = petrel_train_config_default();
    cfg.quiet = true;
    cfg.progress = 0;
    CHECK_ERR(petrel_train(m, train, NULL, &cfg, NULL), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "6 features") != NULL);
    petrel_model_free(m);
    m = mlp(6, 2, 8);
    CHECK_ERR(petrel_train(m, train, NULL, &cfg, NULL), PETREL_ERR_INVALID);
    CHECK(strstr(petrel_errmsg(), "3 classes") != NULL);
    cfg.batch = 0;
    CHECK_ERR(petrel_train(m, train, NULL, &cfg, NULL), PETREL_ERR_INVALID);
    petrel_model_free(m);
    petrel_dataset_free(train);
}

static void test_max_steps_and_determinism(void) {
    petrel_dataset *train = synthetic("d", 400, 6, 8);
    double losses[2];
    for (int rep = 0; rep < 2; rep++) {
        petrel_model *m = mlp(6, 3, 8);
        petrel_train_config cfg = petrel_train_config_default();
        cfg.epochs = 4;
        cfg.batch = 20;
        cfg.max_steps = 30;
        cfg.quiet = true;
        cfg.progress = 0;
        petrel_train_result r;
        CHECK_OK(petrel_train(m, train, NULL, &cfg, &r));
        CHECK(r.steps == 30 && r.epochs == 2);
        losses[rep] = r.train_loss;
        petrel_model_free(m);
    }
    CHECK(losses[0] == losses[1]); /* same seed, same data order, same numbers */
    petrel_dataset_free(train);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/petrel-train-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    RUN(test_learns_synthetic);
    RUN(test_step_allocates_nothing);
    RUN(test_metrics_and_checkpoint);
    RUN(test_rejects_mismatched_data);
    RUN(test_max_steps_and_determinism);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    return CHECK_DONE();
}
