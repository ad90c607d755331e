/*
 * A small CNN for 28x28 images (LeNet-like):
 *   x (B, C*H*W) -> (B, C, H, W)
 *   conv 3x3 pad 1, 16 channels, ReLU, maxpool 2   -> (B, 16, H/2, W/2)
 *   conv 3x3 pad 1, 32 channels, ReLU, maxpool 2   -> (B, 32, H/4, W/4)
 *   flatten, linear -> (B, classes)
 */
#include "apps.h"

#include <stdio.h>

typedef struct cnn_model {
    petrel_model base;
    petrel_conv2d conv1, conv2;
    petrel_linear fc;
    int64_t channels, height, width;
} cnn_model;

static petrel_tensor *cnn_forward(petrel_model *m, petrel_graph *g, petrel_tensor *x,
                                  bool training) {
    (void)training;
    cnn_model *c = (cnn_model *)m;
    if (!x) return NULL;
    x = petrel_op_reshape(g, x, 4, (int64_t[]){x->ne[0], c->channels, c->height, c->width});
    x = petrel_op_maxpool2d(g, petrel_op_relu(g, petrel_conv2d_forward(g, &c->conv1, x)), 2, 2);
    x = petrel_op_maxpool2d(g, petrel_op_relu(g, petrel_conv2d_forward(g, &c->conv2, x)), 2, 2);
    return petrel_linear_forward(g, &c->fc, petrel_op_flatten(g, x));
}

petrel_err petrel_cnn_new(petrel_model **out, const petrel_model_options *o) {
    if (o->channels <= 0 || o->height < 4 || o->width < 4 ||
        o->channels * o->height * o->width != o->in_dim || o->classes < 2)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "cnn needs image data: channels x height x width (%lld x %lld x "
                                "%lld) must equal the %lld features, height and width >= 4",
                                (long long)o->channels, (long long)o->height, (long long)o->width,
                                (long long)o->in_dim);
    cnn_model *c = petrel_calloc(1, sizeof *c);
    if (!c) return PETREL_ERR_NOMEM;
    petrel_model *m = &c->base;
    m->name = "cnn";
    m->in_dim = o->in_dim;
    m->classes = o->classes;
    m->forward = cnn_forward;
    c->channels = o->channels;
    c->height = o->height;
    c->width = o->width;
    snprintf(m->meta, sizeof m->meta,
             "model=cnn in=%lld classes=%lld channels=%lld height=%lld width=%lld",
             (long long)o->in_dim, (long long)o->classes, (long long)o->channels,
             (long long)o->height, (long long)o->width);
    int64_t flat = 32 * (o->height / 2 / 2) * (o->width / 2 / 2);
    petrel_err err = petrel_params_new(&m->params);
    if (err == PETREL_OK)
        err = petrel_conv2d_init(&c->conv1, m->params, "conv1", o->channels, 16, 3, 1, 1);
    if (err == PETREL_OK) err = petrel_conv2d_init(&c->conv2, m->params, "conv2", 16, 32, 3, 1, 1);
    if (err == PETREL_OK) err = petrel_linear_init(&c->fc, m->params, "fc", flat, o->classes);
    if (err == PETREL_OK) err = petrel_params_finalize(m->params);
    if (err != PETREL_OK) {
        petrel_model_free(m);
        return err;
    }
    petrel_rng rng;
    petrel_rng_seed(&rng, o->seed);
    petrel_conv2d_reset(&c->conv1, &rng);
    petrel_conv2d_reset(&c->conv2, &rng);
    petrel_linear_reset(&c->fc, &rng);
    *out = m;
    return PETREL_OK;
}
