/* Softmax (multinomial logistic) regression: logits = x W^T + b, W (C, D). */
#include "apps.h"

#include <stdio.h>

typedef struct softmax_model {
    petrel_model base;
    petrel_linear fc;
} softmax_model;

static petrel_tensor *softmax_forward(petrel_model *m, petrel_graph *g, petrel_tensor *x,
                                      bool training) {
    (void)training;
    return petrel_linear_forward(g, &((softmax_model *)m)->fc, x);
}

petrel_err petrel_softmax_new(petrel_model **out, const petrel_model_options *o) {
    if (o->in_dim <= 0 || o->classes < 2)
        return petrel_error_set(PETREL_ERR_INVALID, "softmax needs in_dim > 0 and classes >= 2");
    softmax_model *s = petrel_calloc(1, sizeof *s);
    if (!s) return PETREL_ERR_NOMEM;
    petrel_model *m = &s->base;
    m->name = "softmax";
    m->in_dim = o->in_dim;
    m->classes = o->classes;
    m->forward = softmax_forward;
    snprintf(m->meta, sizeof m->meta, "model=softmax in=%lld classes=%lld", (long long)o->in_dim,
             (long long)o->classes);
    petrel_err err = petrel_params_new(&m->params);
    if (err == PETREL_OK) err = petrel_linear_init(&s->fc, m->params, "fc", o->in_dim, o->classes);
    if (err == PETREL_OK) err = petrel_params_finalize(m->params);
    if (err != PETREL_OK) {
        petrel_model_free(m);
        return err;
    }
    petrel_rng rng;
    petrel_rng_seed(&rng, o->seed);
    petrel_init_xavier_uniform(s->fc.w, o->in_dim, o->classes, &rng);
    *out = m;
    return PETREL_OK;
}
