/*
 * Optimizers over flat buffers. Update rules follow the forms PyTorch uses, so
 * that a run compares step for step:
 *   SGD       p -= lr g
 *   momentum  v = mu v + g;  p -= lr v
 *   Adagrad   s += g^2;  p -= lr g / (sqrt(s) + eps)
 *   Adam      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *             p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * with g = grad + weight_decay * p when weight decay is set.
 */
#include "nn/nn_impl.h"

#include <math.h>
#include <string.h>

struct petrel_optim {
    petrel_optim_config cfg;
    size_t n;
    float *m, *v; /* state: momentum/Adagrad use m; Adam uses m and v */
    int64_t t;    /* steps taken (Adam's bias correction) */
};

static const char *const names[PETREL_OPTIM_COUNT] = {"sgd", "momentum", "adagrad", "adam"};

const char *petrel_optim_name(petrel_optim_kind kind) {
    return kind < PETREL_OPTIM_COUNT ? names[kind] : "unknown";
}

petrel_err petrel_optim_parse(const char *name, petrel_optim_kind *out) {
    for (int i = 0; i < PETREL_OPTIM_COUNT; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (petrel_optim_kind)i;
            return PETREL_OK;
        }
    return petrel_error_set(PETREL_ERR_INVALID,
                            "unknown optimizer '%s' (expected sgd, momentum, adagrad or adam)",
                            name);
}

petrel_optim_config petrel_optim_config_default(petrel_optim_kind kind, float lr) {
    petrel_optim_config c = {.kind = kind,
                             .lr = lr,
                             .momentum = 0.9f,
                             .beta1 = 0.9f,
                             .beta2 = 0.999f,
                             .eps = kind == PETREL_OPTIM_ADAGRAD ? 1e-10f : 1e-8f};
    return c;
}

petrel_err petrel_optim_new(petrel_optim **out, petrel_optim_config cfg, size_t n) {
    if (cfg.kind >= PETREL_OPTIM_COUNT || !(cfg.lr > 0.0f))
        return petrel_error_set(PETREL_ERR_INVALID, "optimizer needs a known kind and lr > 0");
    petrel_optim *o = petrel_calloc(1, sizeof *o);
    if (!o) return PETREL_ERR_NOMEM;
    o->cfg = cfg;
    o->n = n;
    int slots = petreli_optim_state_per_param(cfg.kind);
    if (slots >= 1 && !(o->m = petrel_calloc(n ? n : 1, sizeof(float)))) goto fail;
    if (slots >= 2 && !(o->v = petrel_calloc(n ? n : 1, sizeof(float)))) goto fail;
    *out = o;
    return PETREL_OK;
fail:
    petrel_optim_free(o);
    return PETREL_ERR_NOMEM;
}

void petrel_optim_free(petrel_optim *o) {
    if (!o) return;
    petrel_free(o->m);
    petrel_free(o->v);
    petrel_free(o);
}

void petrel_optim_set_lr(petrel_optim *o, float lr) {
    o->cfg.lr = lr;
}

int petreli_optim_state_per_param(petrel_optim_kind kind) {
    return kind == PETREL_OPTIM_ADAM ? 2 : kind == PETREL_OPTIM_SGD ? 0 : 1;
}

void petreli_optim_apply(const petrel_optim_config *cfg, int64_t step, float *restrict p,
                         const float *restrict g, float *restrict s1, float *restrict s2,
                         size_t n) {
    const petrel_optim_config c = *cfg;
    const float wd = c.weight_decay, lr = c.lr;
    float *restrict m = s1, *restrict v = s2;
    switch (c.kind) {
    case PETREL_OPTIM_SGD:
        for (size_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
        return;
    case PETREL_OPTIM_MOMENTUM:
        for (size_t i = 0; i < n; i++) {
            m[i] = c.momentum * m[i] + g[i] + wd * p[i];
            p[i] -= lr * m[i];
        }
        return;
    case PETREL_OPTIM_ADAGRAD:
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * p[i];
            m[i] += gi * gi;
            p[i] -= lr * gi / (sqrtf(m[i]) + c.eps);
        }
        return;
    case PETREL_OPTIM_ADAM: {
        float c1 = 1.0f / (1.0f - powf(c.beta1, (float)step));
        float c2 = 1.0f / (1.0f - powf(c.beta2, (float)step));
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * p[i];
            m[i] = c.beta1 * m[i] + (1.0f - c.beta1) * gi;
            v[i] = c.beta2 * v[i] + (1.0f - c.beta2) * gi * gi;
            p[i] -= lr * (m[i] * c1) / (sqrtf(v[i] * c2) + c.eps);
        }
        return;
    }
    case PETREL_OPTIM_COUNT:
        break;
    }
    PETREL_UNREACHABLE("unknown optimizer kind");
}

void petrel_optim_step(petrel_optim *o, float *restrict p, const float *restrict g) {
    o->t++;
    petreli_optim_apply(&o->cfg, o->t, p, g, o->m, o->v, o->n);
}
