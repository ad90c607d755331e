/*
 * petrel's built-in models and dataset names, for the CLI, tests and benchmarks.
 *
 * Every model maps a batch of features (B, in_dim) to logits (B, classes) and is
 * trained with softmax cross-entropy by petrel_train. Constructors seed the
 * weights from `seed`, so the same seed gives the same initial model.
 */
#ifndef PETREL_APPS_H
#define PETREL_APPS_H

#include "petrel/train.h"

typedef struct petrel_model_options {
    const char *name; /* softmax | mlp | cnn */
    int64_t in_dim;   /* features per sample */
    int64_t classes;
    int64_t channels, height, width; /* image geometry for cnn (channels*height*width = in_dim) */
    int64_t hidden[4];               /* mlp hidden layer widths, 0-terminated; default {256} */
    uint64_t seed;
} petrel_model_options;

petrel_model_options petrel_model_options_default(void);

/* Builds a model by name. PETREL_ERR_INVALID names the unknown model or the bad
 * geometry. */
PETREL_NODISCARD petrel_err petrel_model_new(petrel_model **out, const petrel_model_options *o);

/* Parses checkpoint metadata ("model=mlp in=784 classes=10 hidden=256") back into
 * options, so that a saved model can be rebuilt and loaded. */
PETREL_NODISCARD petrel_err petrel_model_options_parse(petrel_model_options *o, const char *meta);

/* The constructors behind petrel_model_new. */
PETREL_NODISCARD petrel_err petrel_softmax_new(petrel_model **out, const petrel_model_options *o);
PETREL_NODISCARD petrel_err petrel_mlp_new(petrel_model **out, const petrel_model_options *o);
PETREL_NODISCARD petrel_err petrel_cnn_new(petrel_model **out, const petrel_model_options *o);

/* Loads a named dataset or files:
 *   "fashion-mnist": Debian's dataset-fashion-mnist (or $PETREL_DATA_DIR/fashion-mnist);
 *   a path to an IDX images file (its labels file is found by replacing
 *   "images-idx3" with "labels-idx1" in the name); any other path: libsvm.
 * test_spec may be NULL: the test set of a named dataset is then loaded, and none
 * for a file. test may be NULL when no test set is wanted. A libsvm test file gets
 * the training file's label map. */
PETREL_NODISCARD petrel_err petrel_app_load_data(const char *spec, const char *test_spec,
                                                 petrel_dataset **train, petrel_dataset **test);

#endif
