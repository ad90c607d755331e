/* Internals shared by the files of the tensor module. */
#ifndef PETREL_TENSOR_IMPL_H
#define PETREL_TENSOR_IMPL_H

#include "petrel/tensor.h"

/* Naive triple-loop GEMM, the reference for every optimized one. Same contract
 * as petrel_kernels.gemm. */
void petreli_gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc);

/* petrel's own AVX-512 GEMM (gemm_avx512.c), same contract as petrel_kernels.gemm.
 * Call only when petreli_gemm_avx512_available() is true. */
bool petreli_gemm_avx512_available(void);
void petreli_gemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc);

#endif
