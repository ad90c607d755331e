/* Dataset names and file paths for the CLI: Fashion-MNIST from Debian, IDX or libsvm files. */
#include "apps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEBIAN_DATASETS "/usr/share/datasets"

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* The IDX labels file beside an images file: "images-idx3" -> "labels-idx1". */
static petrel_err labels_path_for(const char *images, char *out, size_t size) {
    const char *at = strstr(images, "images-idx3");
    if (!at)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "%s: cannot find its labels file: the name does not contain "
                                "'images-idx3'",
                                images);
    int w = snprintf(out, size, "%.*slabels-idx1%s", (int)(at - images), images,
                     at + strlen("images-idx3"));
    if (w < 0 || (size_t)w >= size) return petrel_error_set(PETREL_ERR_INVALID, "path too long");
    return PETREL_OK;
}

static bool is_idx_images(const char *path) {
    return strstr(path, "images-idx3") != NULL;
}

static petrel_err load_idx_images(const char *images, petrel_dataset **out) {
    char labels[4096];
    petrel_err err = labels_path_for(images, labels, sizeof labels);
    return err == PETREL_OK ? petrel_dataset_load_idx(out, images, labels) : err;
}

static petrel_err load_fashion_mnist(petrel_dataset **train, petrel_dataset **test) {
    const char *env = getenv("PETREL_DATA_DIR");
    char dir[4096], tr[4200], te[4200];
    snprintf(dir, sizeof dir, "%s/fashion-mnist", env ? env : DEBIAN_DATASETS);
    snprintf(tr, sizeof tr, "%s/train-images-idx3-ubyte.gz", dir);
    snprintf(te, sizeof te, "%s/t10k-images-idx3-ubyte.gz", dir);
    if (!file_exists(tr))
        return petrel_error_set(PETREL_ERR_NOT_FOUND,
                                "%s not found: install Debian's dataset-fashion-mnist "
                                "(scripts/deps.sh does) or set PETREL_DATA_DIR",
                                tr);
    petrel_dataset *a = NULL, *b = NULL;
    petrel_err err = load_idx_images(tr, &a);
    if (err == PETREL_OK && test) err = load_idx_images(te, &b);
    if (err != PETREL_OK) {
        petrel_dataset_free(a);
        return err;
    }
    *train = a;
    if (test) *test = b;
    return PETREL_OK;
}

petrel_err petrel_app_load_data(const char *spec, const char *test_spec, petrel_dataset **train,
                                petrel_dataset **test) {
    if (strcmp(spec, "fashion-mnist") == 0 && !test_spec) return load_fashion_mnist(train, test);
    petrel_dataset *a = NULL, *b = NULL;
    petrel_err err;
    if (strcmp(spec, "fashion-mnist") == 0)
        err = load_fashion_mnist(&a, NULL);
    else if (is_idx_images(spec))
        err = load_idx_images(spec, &a);
    else
        err = petrel_dataset_load_libsvm(&a, spec, 0);
    if (err == PETREL_OK && test_spec && test) {
        if (is_idx_images(test_spec))
            err = load_idx_images(test_spec, &b);
        else
            err = petrel_dataset_load_libsvm_like(&b, test_spec, a);
    }
    if (err != PETREL_OK) {
        petrel_dataset_free(a);
        return err;
    }
    *train = a;
    if (test) *test = b;
    return PETREL_OK;
}
