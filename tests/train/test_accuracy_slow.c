/* Trained accuracy on real Fashion-MNIST, with conservative thresholds for short
 * runs (the full targets, e.g. MLP >= 0.86 after 5 epochs, are checked by make run
 * and stated in docs/cli.md). Skipped when the dataset is not installed. */
#include "apps.h"
#include "check.h"

static petrel_dataset *train, *test;

static double train_model(const char *name, int64_t epochs, float lr) {
    petrel_model_options o = petrel_model_options_default();
    o.name = name;
    o.in_dim = train->dim;
    o.classes = train->num_classes;
    petrel_model *m = NULL;
    if (petrel_model_new(&m, &o) != PETREL_OK) return -1;
    petrel_train_config cfg = petrel_train_config_default();
    cfg.epochs = epochs;
    cfg.optim.lr = lr;
    cfg.progress = 0;
    petrel_train_result r = {0};
    petrel_err err = petrel_train(m, train, test, &cfg, &r);
    petrel_model_free(m);
    printf("# %s: %lld epochs, test accuracy %.4f, %.0f samples/s\n", name, (long long)epochs,
           r.test_accuracy, r.samples_per_sec);
    return err == PETREL_OK ? r.test_accuracy : -1;
}

/* Seen: 0.840 to 0.849 after 2 epochs over seeds 1-4. */
static void test_mlp_two_epochs(void) {
    CHECK(train_model("mlp", 2, 0.1f) >= 0.82);
}

/* Seen: 0.78 after 1 epoch. */
static void test_softmax_one_epoch(void) {
    CHECK(train_model("softmax", 1, 0.1f) >= 0.75);
}

/* Seen: 0.827 after 1 epoch. */
static void test_cnn_one_epoch(void) {
    CHECK(train_model("cnn", 1, 0.1f) >= 0.80);
}

int main(void) {
    if (petrel_app_load_data("fashion-mnist", NULL, &train, &test) != PETREL_OK)
        CHECK_SKIP_ALL("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)");
    RUN(test_mlp_two_epochs);
    RUN(test_softmax_one_epoch);
    RUN(test_cnn_one_epoch);
    petrel_dataset_free(train);
    petrel_dataset_free(test);
    return CHECK_DONE();
}
