/* Convolution (im2col + GEMM, one image at a time) and max pooling. */
#include "autograd_impl.h"

#include <string.h>

/* ---- conv2d: x (N, Cin, H, W), w (Cout, Cin, KH, KW), b (Cout) -> (N, Cout, OH, OW) --
 * Per image: col (Cin*KH*KW, OH*OW) = im2col(x_n); y_n (Cout, OH*OW) = w col + b.
 * The forward keeps every image's columns for the backward (a batch of 64 with
 * Cin*KH*KW = 144 and 14x14 outputs keeps 7 MiB), plus one scratch for dcol. */

typedef struct conv_geom {
    int64_t N, Cin, H, W, Cout, KH, KW, OH, OW, CK, OHW;
} conv_geom;

static conv_geom geom(const petrel_node *n) {
    const petrel_tensor *x = n->src[0], *w = n->src[1];
    conv_geom c = {.N = x->ne[0],
                   .Cin = x->ne[1],
                   .H = x->ne[2],
                   .W = x->ne[3],
                   .Cout = w->ne[0],
                   .KH = w->ne[2],
                   .KW = w->ne[3]};
    c.OH = (c.H + 2 * n->p.conv.pad - c.KH) / n->p.conv.stride + 1;
    c.OW = (c.W + 2 * n->p.conv.pad - c.KW) / n->p.conv.stride + 1;
    c.CK = c.Cin * c.KH * c.KW;
    c.OHW = c.OH * c.OW;
    return c;
}

petrel_tensor *petrel_op_conv2d(petrel_graph *g, petrel_tensor *x, petrel_tensor *w,
                                petrel_tensor *bias, int64_t stride, int64_t pad) {
    if (!x || !w) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(x->ndim == 4 && petrel_tensor_is_contiguous(x),
                  "conv2d: x must be contiguous (N, Cin, H, W)");
    PETREL_ASSERT(w->ndim == 4 && petrel_tensor_is_contiguous(w),
                  "conv2d: w must be contiguous (Cout, Cin, KH, KW)");
    PETREL_ASSERT(x->ne[1] == w->ne[1], "conv2d: x and w must have the same Cin");
    PETREL_ASSERT(stride >= 1 && pad >= 0, "conv2d: stride >= 1 and pad >= 0");
    PETREL_ASSERT(x->ne[2] + 2 * pad >= w->ne[2] && x->ne[3] + 2 * pad >= w->ne[3],
                  "conv2d: the kernel must fit in the padded input");
    PETREL_ASSERT(!bias || petrel_tensor_numel(bias) == w->ne[0],
                  "conv2d: bias must have Cout elements");
    petrel_tensor *src[3] = {x, w, bias};
    int64_t OH = (x->ne[2] + 2 * pad - w->ne[2]) / stride + 1;
    int64_t OW = (x->ne[3] + 2 * pad - w->ne[3]) / stride + 1;
    int64_t ne[4] = {x->ne[0], w->ne[0], OH, OW};
    petrel_node *n = petreli_node_new(g, PETREL_OP_CONV2D, bias ? 3 : 2, src, 4, ne, NULL);
    if (n) {
        n->p.conv.stride = stride;
        n->p.conv.pad = pad;
        conv_geom c = geom(n);
        n->saved = petreli_graph_alloc(g, (size_t)((c.N + 1) * c.CK * c.OHW) * sizeof(float));
        if (!n->saved) n = NULL;
    }
    return petreli_node_finish(g, n);
}

static void conv_forward(petrel_node *n, const petrel_kernels *k) {
    conv_geom c = geom(n);
    const float *x = n->src[0]->data, *w = n->src[1]->data;
    const float *b = n->nsrc == 3 ? n->src[2]->data : NULL;
    float *cols = n->saved, *y = n->out->data;
    for (int64_t i = 0; i < c.N; i++) {
        float *col = cols + i * c.CK * c.OHW, *yi = y + i * c.Cout * c.OHW;
        k->im2col(col, x + i * c.Cin * c.H * c.W, c.Cin, c.H, c.W, c.KH, c.KW, n->p.conv.stride,
                  n->p.conv.pad);
        k->gemm(false, false, c.Cout, c.OHW, c.CK, 1.0f, w, c.CK, col, c.OHW, 0.0f, yi, c.OHW);
        if (b)
            for (int64_t o = 0; o < c.Cout; o++) {
                float *row = yi + o * c.OHW;
                for (int64_t p = 0; p < c.OHW; p++) row[p] += b[o];
            }
    }
}

static void conv_backward(petrel_node *n, const petrel_kernels *k) {
    conv_geom c = geom(n);
    const petrel_tensor *x = n->src[0], *w = n->src[1];
    const float *cols = n->saved, *dy = n->out->grad->data;
    float *dcol = (float *)n->saved + c.N * c.CK * c.OHW;
    for (int64_t i = 0; i < c.N; i++) {
        const float *col = cols + i * c.CK * c.OHW, *dyi = dy + i * c.Cout * c.OHW;
        if (w->requires_grad) /* dw (Cout, CK) += dy_i (Cout, OHW) col^T (OHW, CK) */
            k->gemm(false, true, c.Cout, c.CK, c.OHW, 1.0f, dyi, c.OHW, col, c.OHW, 1.0f,
                    w->grad->data, c.CK);
        if (n->nsrc == 3 && n->src[2]->requires_grad) {
            float *db = n->src[2]->grad->data;
            for (int64_t o = 0; o < c.Cout; o++) {
                float s = 0;
                for (int64_t p = 0; p < c.OHW; p++) s += dyi[o * c.OHW + p];
                db[o] += s;
            }
        }
        if (x->requires_grad) { /* dcol (CK, OHW) = w^T (CK, Cout) dy_i; dx_i += col2im(dcol) */
            k->gemm(true, false, c.CK, c.OHW, c.Cout, 1.0f, w->data, c.CK, dyi, c.OHW, 0.0f, dcol,
                    c.OHW);
            k->col2im(x->grad->data + i * c.Cin * c.H * c.W, dcol, c.Cin, c.H, c.W, c.KH, c.KW,
                      n->p.conv.stride, n->p.conv.pad);
        }
    }
}

const petrel_op_def petreli_op_conv2d = {"conv2d", conv_forward, conv_backward, false};

/* ---- maxpool2d: x (N, C, H, W) -> (N, C, OH, OW), OH = (H - k) / s + 1 --------- */

petrel_tensor *petrel_op_maxpool2d(petrel_graph *g, petrel_tensor *x, int64_t k, int64_t s) {
    if (!x) return petreli_node_finish(g, NULL);
    PETREL_ASSERT(x->ndim == 4 && petrel_tensor_is_contiguous(x),
                  "maxpool2d: x must be contiguous (N, C, H, W)");
    PETREL_ASSERT(k >= 1 && s >= 1 && x->ne[2] >= k && x->ne[3] >= k,
                  "maxpool2d: window must fit the input");
    int64_t ne[4] = {x->ne[0], x->ne[1], (x->ne[2] - k) / s + 1, (x->ne[3] - k) / s + 1};
    petrel_node *n = petreli_node_new(g, PETREL_OP_MAXPOOL2D, 1, &x, 4, ne, NULL);
    if (n) {
        n->p.pool.k = k;
        n->p.pool.s = s;
        n->saved =
            petreli_graph_alloc(g, (size_t)(ne[0] * ne[1] * ne[2] * ne[3]) * sizeof(int32_t));
        if (!n->saved) n = NULL;
    }
    return petreli_node_finish(g, n);
}

static void maxpool_forward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *x = n->src[0];
    k->maxpool2d(n->out->data, n->saved, x->data, x->ne[0], x->ne[1], x->ne[2], x->ne[3],
                 n->p.pool.k, n->p.pool.s);
}

static void maxpool_backward(petrel_node *n, const petrel_kernels *k) {
    const petrel_tensor *x = n->src[0];
    k->maxpool2d_backward(x->grad->data, n->out->grad->data, n->saved, x->ne[0], x->ne[1], x->ne[2],
                          x->ne[3], n->p.pool.k, n->p.pool.s);
}

const petrel_op_def petreli_op_maxpool2d = {"maxpool2d", maxpool_forward, maxpool_backward, false};
