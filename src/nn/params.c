/*
 * The parameter registry: declared tensors carved from one flat value buffer and
 * one flat gradient buffer. Each parameter starts on a 16-float (64-byte)
 * boundary so that every kernel sees aligned rows.
 */
#include "petrel/nn.h"

#include <string.h>

#define ALIGN_FLOATS 16

typedef struct param {
    char *name;
    petrel_tensor *t; /* separately allocated so that its address never moves */
    size_t offset;    /* in floats, into both buffers */
} param;

struct petrel_params {
    param *items;
    int count, capacity;
    size_t floats; /* buffer size, with padding */
    size_t numel;  /* real elements */
    float *data, *grad;
    bool finalized;
};

petrel_err petrel_params_new(petrel_params **out) {
    petrel_params *p = petrel_calloc(1, sizeof *p);
    if (!p) return PETREL_ERR_NOMEM;
    *out = p;
    return PETREL_OK;
}

void petrel_params_free(petrel_params *p) {
    if (!p) return;
    for (int i = 0; i < p->count; i++) {
        petrel_free(p->items[i].name);
        petrel_free(p->items[i].t->grad);
        petrel_free(p->items[i].t);
    }
    petrel_free(p->items);
    petrel_free(p->data);
    petrel_free(p->grad);
    petrel_free(p);
}

petrel_tensor *petrel_params_find(const petrel_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->items[i].name, name) == 0) return p->items[i].t;
    return NULL;
}

petrel_err petrel_params_add(petrel_params *p, const char *name, int ndim, const int64_t *ne,
                             petrel_tensor **out) {
    if (p->finalized)
        return petrel_error_set(PETREL_ERR_STATE, "parameter '%s' added after finalize", name);
    if (ndim < 1 || ndim > PETREL_MAX_DIMS)
        return petrel_error_set(PETREL_ERR_INVALID, "parameter '%s': %d dimensions", name, ndim);
    if (petrel_params_find(p, name))
        return petrel_error_set(PETREL_ERR_INVALID, "parameter '%s' declared twice", name);
    if (p->count == p->capacity) {
        int cap = p->capacity ? 2 * p->capacity : 16;
        param *items = petrel_realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) return PETREL_ERR_NOMEM;
        p->items = items;
        p->capacity = cap;
    }
    petrel_tensor *t = petrel_calloc(1, sizeof *t);
    petrel_tensor *gt = petrel_calloc(1, sizeof *gt);
    char *copy = petrel_strdup(name);
    if (!t || !gt || !copy) {
        petrel_free(t);
        petrel_free(gt);
        petrel_free(copy);
        return PETREL_ERR_NOMEM;
    }
    *t = petrel_tensor_view(NULL, ndim, ne);
    *gt = petrel_tensor_view(NULL, ndim, ne);
    t->grad = gt;
    t->requires_grad = true;
    size_t numel = (size_t)petrel_tensor_numel(t);
    param *it = &p->items[p->count++];
    it->name = copy;
    it->t = t;
    it->offset = p->floats;
    p->floats += (numel + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    p->numel += numel;
    *out = t;
    return PETREL_OK;
}

petrel_err petrel_params_finalize(petrel_params *p) {
    if (p->finalized) return petrel_error_set(PETREL_ERR_STATE, "parameters finalized twice");
    size_t n = p->floats ? p->floats : ALIGN_FLOATS;
    float *data = petrel_calloc(n, sizeof(float));
    float *grad = petrel_calloc(n, sizeof(float));
    if (!data || !grad) {
        petrel_free(data);
        petrel_free(grad);
        return PETREL_ERR_NOMEM;
    }
    p->data = data;
    p->grad = grad;
    for (int i = 0; i < p->count; i++) {
        p->items[i].t->data = data + p->items[i].offset;
        p->items[i].t->grad->data = grad + p->items[i].offset;
    }
    p->finalized = true;
    return PETREL_OK;
}

int petrel_params_num(const petrel_params *p) {
    return p->count;
}

size_t petrel_params_count(const petrel_params *p) {
    return p->floats;
}

size_t petrel_params_numel(const petrel_params *p) {
    return p->numel;
}

petrel_tensor *petrel_params_get(const petrel_params *p, int i) {
    PETREL_ASSERT(i >= 0 && i < p->count, "parameter index out of range");
    return p->items[i].t;
}

const char *petrel_params_name(const petrel_params *p, int i) {
    PETREL_ASSERT(i >= 0 && i < p->count, "parameter index out of range");
    return p->items[i].name;
}

float *petrel_params_data(const petrel_params *p) {
    return p->data;
}

float *petrel_params_grad(const petrel_params *p) {
    return p->grad;
}

void petrel_params_zero_grad(petrel_params *p) {
    if (p->grad) memset(p->grad, 0, p->floats * sizeof(float));
}
