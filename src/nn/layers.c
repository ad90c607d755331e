/* Initializers and the linear and conv2d layers. */
#include "petrel/nn.h"

#include <math.h>
#include <stdio.h>

void petrel_init_uniform(petrel_tensor *t, float lo, float hi, petrel_rng *rng) {
    int64_t n = petrel_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) t->data[i] = lo + (hi - lo) * petrel_rng_uniform(rng);
}

void petrel_init_constant(petrel_tensor *t, float value) {
    int64_t n = petrel_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) t->data[i] = value;
}

void petrel_init_kaiming_uniform(petrel_tensor *t, int64_t fan_in, petrel_rng *rng) {
    float bound = sqrtf(6.0f / (float)fan_in);
    petrel_init_uniform(t, -bound, bound, rng);
}

void petrel_init_xavier_uniform(petrel_tensor *t, int64_t fan_in, int64_t fan_out,
                                petrel_rng *rng) {
    float bound = sqrtf(6.0f / (float)(fan_in + fan_out));
    petrel_init_uniform(t, -bound, bound, rng);
}

static petrel_err add_named(petrel_params *p, const char *layer, const char *what, int ndim,
                            const int64_t *ne, petrel_tensor **out) {
    char name[128];
    if (snprintf(name, sizeof name, "%s.%s", layer, what) >= (int)sizeof name)
        return petrel_error_set(PETREL_ERR_INVALID, "layer name '%s' is too long", layer);
    return petrel_params_add(p, name, ndim, ne, out);
}

petrel_err petrel_linear_init(petrel_linear *l, petrel_params *p, const char *name, int64_t in,
                              int64_t out) {
    if (in <= 0 || out <= 0)
        return petrel_error_set(PETREL_ERR_INVALID, "linear '%s': sizes %lld -> %lld", name,
                                (long long)in, (long long)out);
    petrel_linear tmp = {.in = in, .out = out};
    petrel_err err = add_named(p, name, "weight", 2, (int64_t[]){out, in}, &tmp.w);
    if (err == PETREL_OK) err = add_named(p, name, "bias", 1, &out, &tmp.b);
    if (err == PETREL_OK) *l = tmp;
    return err;
}

void petrel_linear_reset(petrel_linear *l, petrel_rng *rng) {
    petrel_init_kaiming_uniform(l->w, l->in, rng);
    petrel_init_constant(l->b, 0.0f);
}

petrel_tensor *petrel_linear_forward(petrel_graph *g, const petrel_linear *l, petrel_tensor *x) {
    return petrel_op_linear(g, x, l->w, l->b);
}

petrel_err petrel_conv2d_init(petrel_conv2d *c, petrel_params *p, const char *name, int64_t cin,
                              int64_t cout, int64_t k, int64_t stride, int64_t pad) {
    if (cin <= 0 || cout <= 0 || k <= 0 || stride <= 0 || pad < 0)
        return petrel_error_set(PETREL_ERR_INVALID, "conv2d '%s': bad geometry", name);
    petrel_conv2d tmp = {.cin = cin, .cout = cout, .k = k, .stride = stride, .pad = pad};
    petrel_err err = add_named(p, name, "weight", 4, (int64_t[]){cout, cin, k, k}, &tmp.w);
    if (err == PETREL_OK) err = add_named(p, name, "bias", 1, &cout, &tmp.b);
    if (err == PETREL_OK) *c = tmp;
    return err;
}

void petrel_conv2d_reset(petrel_conv2d *c, petrel_rng *rng) {
    petrel_init_kaiming_uniform(c->w, c->cin * c->k * c->k, rng);
    petrel_init_constant(c->b, 0.0f);
}

petrel_tensor *petrel_conv2d_forward(petrel_graph *g, const petrel_conv2d *c, petrel_tensor *x) {
    return petrel_op_conv2d(g, x, c->w, c->b, c->stride, c->pad);
}
