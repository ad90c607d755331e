/* Tensor descriptors: views, slices, transposes, strided copies. */
#include "petrel/tensor.h"

#include <stdio.h>
#include <string.h>

petrel_tensor petrel_tensor_view(float *data, int ndim, const int64_t *ne) {
    PETREL_ASSERT(ndim >= 1 && ndim <= PETREL_MAX_DIMS, "tensors have 1 to 4 dimensions");
    petrel_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = ndim;
    for (int d = 0; d < PETREL_MAX_DIMS; d++) t.ne[d] = d < ndim ? ne[d] : 1;
    int64_t stride = (int64_t)sizeof(float);
    for (int d = PETREL_MAX_DIMS - 1; d >= 0; d--) {
        t.nb[d] = stride;
        stride *= t.ne[d];
    }
    return t;
}

int64_t petrel_tensor_numel(const petrel_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->ne[d];
    return n;
}

bool petrel_tensor_is_contiguous(const petrel_tensor *t) {
    int64_t stride = (int64_t)sizeof(float);
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->ne[d] != 1 && t->nb[d] != stride) return false;
        stride *= t->ne[d];
    }
    return true;
}

bool petrel_tensor_same_shape(const petrel_tensor *a, const petrel_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->ne[d] != b->ne[d]) return false;
    return true;
}

petrel_tensor petrel_tensor_slice(const petrel_tensor *t, int dim, int64_t begin, int64_t len) {
    PETREL_ASSERT(dim >= 0 && dim < t->ndim, "slice dimension out of range");
    PETREL_ASSERT(begin >= 0 && len >= 0 && begin + len <= t->ne[dim], "slice out of bounds");
    petrel_tensor s = *t;
    s.data = (float *)((char *)t->data + begin * t->nb[dim]);
    s.ne[dim] = len;
    s.grad = NULL;
    s.node = NULL;
    s.requires_grad = false;
    return s;
}

petrel_tensor petrel_tensor_transpose(const petrel_tensor *t, int d0, int d1) {
    PETREL_ASSERT(d0 >= 0 && d0 < t->ndim && d1 >= 0 && d1 < t->ndim, "bad transpose dims");
    petrel_tensor s = *t;
    s.ne[d0] = t->ne[d1];
    s.ne[d1] = t->ne[d0];
    s.nb[d0] = t->nb[d1];
    s.nb[d1] = t->nb[d0];
    s.grad = NULL;
    s.node = NULL;
    s.requires_grad = false;
    return s;
}

float *petrel_tensor_at(const petrel_tensor *t, const int64_t *idx) {
    char *p = (char *)t->data;
    for (int d = 0; d < t->ndim; d++) {
        PETREL_ASSERT(idx[d] >= 0 && idx[d] < t->ne[d], "index out of bounds");
        p += idx[d] * t->nb[d];
    }
    return (float *)p;
}

void petrel_tensor_copy(petrel_tensor *dst, const petrel_tensor *src) {
    PETREL_ASSERT(petrel_tensor_numel(dst) == petrel_tensor_numel(src),
                  "copy needs tensors with the same number of elements");
    if (petrel_tensor_is_contiguous(dst) && petrel_tensor_is_contiguous(src)) {
        memmove(dst->data, src->data, (size_t)petrel_tensor_numel(src) * sizeof(float));
        return;
    }
    /* General strided walk over a 4-d index space (unused dims have size 1). */
    const int64_t *ne = src->ne;
    int64_t i[4];
    for (i[0] = 0; i[0] < ne[0]; i[0]++)
        for (i[1] = 0; i[1] < ne[1]; i[1]++)
            for (i[2] = 0; i[2] < ne[2]; i[2]++)
                for (i[3] = 0; i[3] < ne[3]; i[3]++) {
                    /* dst may have another shape with the same numel: index it flat. */
                    int64_t flat = ((i[0] * ne[1] + i[1]) * ne[2] + i[2]) * ne[3] + i[3];
                    char *d = (char *)dst->data;
                    for (int k = PETREL_MAX_DIMS - 1; k >= 0; k--) {
                        d += (flat % dst->ne[k]) * dst->nb[k];
                        flat /= dst->ne[k];
                    }
                    const char *s = (const char *)src->data + i[0] * src->nb[0] +
                                    i[1] * src->nb[1] + i[2] * src->nb[2] + i[3] * src->nb[3];
                    memcpy(d, s, sizeof(float));
                }
}

const char *petrel_tensor_shape_str(const petrel_tensor *t, char *buf, size_t size) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, size - n, "(");
    for (int d = 0; d < t->ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, d ? ", %lld" : "%lld", (long long)t->ne[d]);
    if (n < size) snprintf(buf + n, size - n, ")");
    return buf;
}
