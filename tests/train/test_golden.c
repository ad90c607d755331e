/*
 * Golden test: the first 10 SGD steps of the default MLP (784-256-10 ReLU, seed 1)
 * on Fashion-MNIST match PyTorch's losses, step for step, within 1e-4.
 *
 * tests/golden/mlp_first10.txt was made by tools/golden/mlp_golden.py, which loads
 * petrel's own initial checkpoint (petrel train --model mlp --epochs 0 --seed 1)
 * into torch.nn and trains on samples [64i, 64i+64) in file order, lr 0.1, mean
 * cross-entropy; the file's header says how. Both kernel sets must agree with it.
 * Without the dataset the test is skipped (exit 77).
 */
#include "apps.h"
#include "check.h"

#define STEPS 10
#define BATCH 64

static petrel_dataset *train;
static double golden[STEPS];

/* Reads the 10 losses that follow the '#' comment lines. */
static bool read_golden(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("  # cannot open %s\n", path);
        return false;
    }
    char line[512];
    int n = 0;
    while (n < STEPS && fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *end;
        golden[n] = strtod(line, &end);
        if (end == line) break;
        n++;
    }
    fclose(f);
    if (n != STEPS) printf("  # %s: found %d losses, expected %d\n", path, n, STEPS);
    return n == STEPS;
}

/* The golden file under PETREL_SOURCE_DIR (set by CTest), else beside this source file. */
static void golden_path(char *out, size_t size) {
    const char *src = getenv("PETREL_SOURCE_DIR");
    if (src) {
        snprintf(out, size, "%s/tests/golden/mlp_first10.txt", src);
        return;
    }
    const char *file = __FILE__, *at = strstr(file, "tests/train/test_golden.c");
    int len = at ? (int)(at - file) : 0;
    snprintf(out, size, "%.*stests/golden/mlp_first10.txt", len, file);
}

/* Builds the seed-1 MLP and runs the 10 steps with the current kernel set,
 * checking each loss (taken before its update) against the golden value. */
static void run_steps(float lr) {
    petrel_model *m = NULL;
    petrel_graph *g = NULL;
    petrel_optim *opt = NULL;
    petrel_model_options o = petrel_model_options_default(); /* mlp 784-256-10, seed 1 */
    CHECK_OK(petrel_model_new(&m, &o));
    CHECK_OK(petrel_graph_new(&g, 0));
    if (m)
        CHECK_OK(petrel_optim_new(&opt, petrel_optim_config_default(PETREL_OPTIM_SGD, lr),
                                  petrel_params_count(m->params)));
    if (!m || !g || !opt) goto done;
    for (int i = 0; i < STEPS; i++) {
        float *x = train->x + (int64_t)i * BATCH * train->dim;
        float loss;
        CHECK_OK(petrel_train_step(m, g, opt, x, train->y + i * BATCH, BATCH, &loss));
        double l = loss;
        printf("  # %s step %d: loss %.12g golden %.9g diff %.2e\n", petrel_kernels_current()->name,
               i, l, golden[i], l - golden[i]);
        CHECK_NEAR(l, golden[i], 1e-4, 0);
    }
done:
    petrel_optim_free(opt);
    petrel_graph_free(g);
    petrel_model_free(m);
}

static void test_mlp_first10_cpu(void) {
    petrel_kernels_set_current(petrel_kernels_cpu());
    run_steps(0.1f);
}

static void test_mlp_first10_reference(void) {
    petrel_kernels_set_current(petrel_kernels_reference());
    run_steps(0.1f);
    petrel_kernels_set_current(petrel_kernels_cpu());
}

int main(void) {
    char path[4200];
    golden_path(path, sizeof path);
    petrel_err err = petrel_app_load_data("fashion-mnist", NULL, &train, NULL);
    if (err == PETREL_ERR_NOT_FOUND) CHECK_SKIP_ALL("Fashion-MNIST not installed");
    if (err != PETREL_OK) {
        printf("FAIL - loading Fashion-MNIST (%s)\n", petrel_errmsg());
        return 1;
    }
    if (!read_golden(path)) {
        printf("FAIL - reading %s\n", path);
        petrel_dataset_free(train);
        return 1;
    }
    RUN(test_mlp_first10_cpu);
    RUN(test_mlp_first10_reference);
    petrel_dataset_free(train);
    return CHECK_DONE();
}
