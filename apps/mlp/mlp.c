/* Multi-layer perceptron: (linear, ReLU) per hidden layer, then a linear output. */
#include "apps.h"

#include <stdio.h>
#include <string.h>

#define MAX_LAYERS 4

typedef struct mlp_model {
    petrel_model base;
    petrel_linear layers[MAX_LAYERS];
    int count;
} mlp_model;

static petrel_tensor *mlp_forward(petrel_model *m, petrel_graph *g, petrel_tensor *x,
                                  bool training) {
    (void)training;
    mlp_model *p = (mlp_model *)m;
    for (int i = 0; i < p->count; i++) {
        x = petrel_linear_forward(g, &p->layers[i], x);
        if (i + 1 < p->count) x = petrel_op_relu(g, x);
    }
    return x;
}

petrel_err petrel_mlp_new(petrel_model **out, const petrel_model_options *o) {
    int hidden = 0;
    while (hidden < MAX_LAYERS - 1 && o->hidden[hidden] > 0) hidden++;
    if (o->in_dim <= 0 || o->classes < 2)
        return petrel_error_set(PETREL_ERR_INVALID, "mlp needs in_dim > 0 and classes >= 2");
    mlp_model *p = petrel_calloc(1, sizeof *p);
    if (!p) return PETREL_ERR_NOMEM;
    petrel_model *m = &p->base;
    m->name = "mlp";
    m->in_dim = o->in_dim;
    m->classes = o->classes;
    m->forward = mlp_forward;
    int w = snprintf(m->meta, sizeof m->meta,
                     "model=mlp in=%lld classes=%lld hidden=", (long long)o->in_dim,
                     (long long)o->classes);
    for (int i = 0; i < hidden; i++)
        w += snprintf(m->meta + w, sizeof m->meta - (size_t)w, i ? ",%lld" : "%lld",
                      (long long)o->hidden[i]);
    if (hidden == 0) snprintf(m->meta + w, sizeof m->meta - (size_t)w, "0");
    petrel_err err = petrel_params_new(&m->params);
    int64_t in = o->in_dim;
    p->count = hidden + 1;
    for (int i = 0; err == PETREL_OK && i < p->count; i++) {
        char name[16];
        snprintf(name, sizeof name, "fc%d", i + 1);
        int64_t outw = i < hidden ? o->hidden[i] : o->classes;
        err = petrel_linear_init(&p->layers[i], m->params, name, in, outw);
        in = outw;
    }
    if (err == PETREL_OK) err = petrel_params_finalize(m->params);
    if (err != PETREL_OK) {
        petrel_model_free(m);
        return err;
    }
    petrel_rng rng;
    petrel_rng_seed(&rng, o->seed);
    for (int i = 0; i < p->count; i++) petrel_linear_reset(&p->layers[i], &rng);
    *out = m;
    return PETREL_OK;
}
