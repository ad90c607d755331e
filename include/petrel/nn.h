/*
 * petrel nn: the parameter registry, layers, initializers, optimizers and
 * checkpoints.
 *
 * A model declares its parameters in a petrel_params registry, which then lays
 * all values out in ONE contiguous buffer and all gradients in another, each
 * parameter a tensor carved from them. Optimizers, communication (allreduce, a
 * parameter server) and checkpoints therefore work on two flat float arrays.
 *
 * Ownership: the registry owns the buffers and the parameter tensors; tensors
 * returned by petrel_params_add stay valid (same address) until petrel_params_free,
 * and their data becomes valid at petrel_params_finalize. Layers borrow their
 * tensors from the registry. Not thread-safe; one registry per model.
 *
 *     petrel_params *p;
 *     petrel_linear fc;
 *     petrel_params_new(&p);
 *     petrel_linear_init(&fc, p, "fc", 784, 10);
 *     petrel_params_finalize(p);
 *     petrel_rng rng; petrel_rng_seed(&rng, 1);
 *     petrel_linear_reset(&fc, &rng);            // Kaiming-uniform weights, zero bias
 *     ... y = petrel_linear_forward(g, &fc, x) ...
 *     petrel_optim *opt;
 *     petrel_optim_new(&opt, petrel_optim_config_default(PETREL_OPTIM_SGD, 0.1f),
 *                      petrel_params_count(p));
 *     petrel_params_zero_grad(p); ... backward ...;
 *     petrel_optim_step(opt, petrel_params_data(p), petrel_params_grad(p));
 */
#ifndef PETREL_NN_H
#define PETREL_NN_H

#include "petrel/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameter registry -------------------------------------------------- */

typedef struct petrel_params petrel_params;

PETREL_NODISCARD petrel_err petrel_params_new(petrel_params **out);
void petrel_params_free(petrel_params *p);

/* Declares a parameter of the given shape. Its data is valid after finalize.
 * Names are unique ("fc1.weight"); a duplicate is PETREL_ERR_INVALID. */
PETREL_NODISCARD petrel_err petrel_params_add(petrel_params *p, const char *name, int ndim,
                                              const int64_t *ne, petrel_tensor **out);

/* Allocates the value and gradient buffers (64-byte aligned; each parameter
 * starts on a 16-float boundary) and zeroes both. No parameter can be added after. */
PETREL_NODISCARD petrel_err petrel_params_finalize(petrel_params *p);

/* Number of parameters (tensors), and floats in each flat buffer (with padding). */
int petrel_params_num(const petrel_params *p);
size_t petrel_params_count(const petrel_params *p);
/* Floats that belong to parameters (without alignment padding). */
size_t petrel_params_numel(const petrel_params *p);

petrel_tensor *petrel_params_get(const petrel_params *p, int i);
const char *petrel_params_name(const petrel_params *p, int i);
/* The parameter called name, or NULL. */
petrel_tensor *petrel_params_find(const petrel_params *p, const char *name);

float *petrel_params_data(const petrel_params *p);
float *petrel_params_grad(const petrel_params *p);
void petrel_params_zero_grad(petrel_params *p);

/* ---- initializers ---------------------------------------------------------- */

/* U(-bound, bound) with bound = sqrt(6 / fan_in): He et al. for ReLU layers. */
void petrel_init_kaiming_uniform(petrel_tensor *t, int64_t fan_in, petrel_rng *rng);
/* U(-bound, bound) with bound = sqrt(6 / (fan_in + fan_out)): Glorot and Bengio. */
void petrel_init_xavier_uniform(petrel_tensor *t, int64_t fan_in, int64_t fan_out, petrel_rng *rng);
/* U(lo, hi). */
void petrel_init_uniform(petrel_tensor *t, float lo, float hi, petrel_rng *rng);
void petrel_init_constant(petrel_tensor *t, float value);

/* ---- layers ---------------------------------------------------------------- */

/* Fully connected: w (OUT, IN), b (OUT); y = x w^T + b. */
typedef struct petrel_linear {
    petrel_tensor *w, *b;
    int64_t in, out;
} petrel_linear;

/* Declares "<name>.weight" and "<name>.bias" in p. */
PETREL_NODISCARD petrel_err petrel_linear_init(petrel_linear *l, petrel_params *p, const char *name,
                                               int64_t in, int64_t out);
/* Kaiming-uniform weights, zero bias (after petrel_params_finalize). */
void petrel_linear_reset(petrel_linear *l, petrel_rng *rng);
/* x (B, IN) -> (B, OUT) */
petrel_tensor *petrel_linear_forward(petrel_graph *g, const petrel_linear *l, petrel_tensor *x);

/* 2-d convolution: w (COUT, CIN, K, K), b (COUT). */
typedef struct petrel_conv2d {
    petrel_tensor *w, *b;
    int64_t cin, cout, k, stride, pad;
} petrel_conv2d;

PETREL_NODISCARD petrel_err petrel_conv2d_init(petrel_conv2d *c, petrel_params *p, const char *name,
                                               int64_t cin, int64_t cout, int64_t k, int64_t stride,
                                               int64_t pad);
void petrel_conv2d_reset(petrel_conv2d *c, petrel_rng *rng);
/* x (N, CIN, H, W) -> (N, COUT, OH, OW) */
petrel_tensor *petrel_conv2d_forward(petrel_graph *g, const petrel_conv2d *c, petrel_tensor *x);

/* ---- optimizers ------------------------------------------------------------- */

typedef enum petrel_optim_kind {
    PETREL_OPTIM_SGD = 0,
    PETREL_OPTIM_MOMENTUM, /* heavy ball: v = mu v + g; p -= lr v (PyTorch's form) */
    PETREL_OPTIM_ADAGRAD,  /* s += g^2; p -= lr g / (sqrt(s) + eps) */
    PETREL_OPTIM_ADAM,     /* Kingma and Ba, with bias correction */
    PETREL_OPTIM_COUNT
} petrel_optim_kind;

typedef struct petrel_optim_config {
    petrel_optim_kind kind;
    float lr;
    float momentum;     /* MOMENTUM: mu */
    float beta1, beta2; /* ADAM */
    float eps;          /* ADAGRAD, ADAM */
    float weight_decay; /* L2 added to the gradient: g += wd p */
} petrel_optim_config;

/* Defaults: momentum 0.9, beta1 0.9, beta2 0.999, eps 1e-8 (Adagrad 1e-10), no decay. */
petrel_optim_config petrel_optim_config_default(petrel_optim_kind kind, float lr);

/* "sgd" | "momentum" | "adagrad" | "adam" -> kind; PETREL_ERR_INVALID otherwise. */
PETREL_NODISCARD petrel_err petrel_optim_parse(const char *name, petrel_optim_kind *out);
const char *petrel_optim_name(petrel_optim_kind kind);

typedef struct petrel_optim petrel_optim;

/* An optimizer over n floats; allocates its state (none for SGD) once. */
PETREL_NODISCARD petrel_err petrel_optim_new(petrel_optim **out, petrel_optim_config cfg, size_t n);
void petrel_optim_free(petrel_optim *o);

/* One update of params (n) from grads (n). Allocates nothing. */
void petrel_optim_step(petrel_optim *o, float *params, const float *grads);

/* Changes the learning rate (schedules). */
void petrel_optim_set_lr(petrel_optim *o, float lr);

/* ---- checkpoints ------------------------------------------------------------ */

/* Writes every parameter of p, with its name and shape, and a free-form metadata
 * string (e.g. "model=mlp hidden=256"; may be NULL) to path, atomically (a
 * temporary file, fsync, rename). The format is documented in src/nn/checkpoint.c
 * and docs/formats.md. */
PETREL_NODISCARD petrel_err petrel_checkpoint_save(const petrel_params *p, const char *meta,
                                                   const char *path);

/* Reads path into p, whose parameters must match the file's names and shapes.
 * Truncated, corrupted (checksum) or foreign files are rejected with an error that
 * names the file and what was wrong, and p is left unchanged. When meta is not
 * NULL, *meta receives a petrel_malloc'ed copy of the metadata string. */
PETREL_NODISCARD petrel_err petrel_checkpoint_load(petrel_params *p, const char *path, char **meta);

/* Reads only the metadata string of a checkpoint (to rebuild its model). */
PETREL_NODISCARD petrel_err petrel_checkpoint_read_meta(const char *path, char **meta);

#ifdef __cplusplus
}
#endif
#endif
