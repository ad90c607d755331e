/*
 * Internals of src/nn that other modules share: the optimizers' update rule over
 * one span of parameters, so that petrel_optim_step and the parameter server's
 * per-row rules (src/ps/store.c) are one piece of code.
 */
#ifndef PETREL_NN_IMPL_H
#define PETREL_NN_IMPL_H

#include "petrel/nn.h"

/* Number of state floats per parameter that cfg's kind keeps: 0 (SGD), 1
 * (momentum's velocity, Adagrad's sum of squares) or 2 (Adam's m and v). */
int petreli_optim_state_per_param(petrel_optim_kind kind);

/* One update of p (n) from g (n) with cfg's rule (optim.c's formulas). step is
 * the number of updates these parameters have had, this one included (1 on the
 * first), for Adam's bias correction. s1 (n): velocity, Adagrad's sum or Adam's m;
 * s2 (n): Adam's v; each may be NULL when the kind does not use it. */
void petreli_optim_apply(const petrel_optim_config *cfg, int64_t step, float *p, const float *g,
                         float *s1, float *s2, size_t n);

#endif
