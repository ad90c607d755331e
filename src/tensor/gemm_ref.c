/*
 * Reference GEMM: the plain triple loop that every optimized GEMM is tested against.
 *
 * A (M, K) row stride lda, or (K, M) when trans_a; B (K, N) row stride ldb, or (N, K) when
 * trans_b; C (M, N) row stride ldc -> C = alpha op(A) op(B) + beta C.
 *
 * Each dot product is accumulated in double, so the result is close to exact and the tests of
 * the fast kernels measure only their own rounding. Following BLAS, beta == 0 never reads C
 * (C may hold NaN), and alpha == 0 or K == 0 reduce to C = beta C without reading A or B.
 */
#include "tensor/tensor_impl.h"

void petreli_gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
    PETREL_ASSERT(M >= 0 && N >= 0 && K >= 0, "gemm sizes must be non-negative");
    PETREL_ASSERT(lda >= (trans_a ? M : K), "lda must be at least the row length of A");
    PETREL_ASSERT(ldb >= (trans_b ? K : N), "ldb must be at least the row length of B");
    PETREL_ASSERT(ldc >= N, "ldc must be at least N");

    /* Element strides of op(A) along i and k, and of op(B) along k and j. */
    const int64_t a_i = trans_a ? 1 : lda, a_k = trans_a ? lda : 1;
    const int64_t b_k = trans_b ? 1 : ldb, b_j = trans_b ? ldb : 1;
    const bool skip_product = K == 0 || alpha == 0.0f;

    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double acc = 0.0;
            if (!skip_product) {
                const float *a = A + i * a_i, *b = B + j * b_j;
                for (int64_t k = 0; k < K; k++) acc += (double)a[k * a_k] * (double)b[k * b_k];
            }
            float *c = &C[i * ldc + j];
            double out = (double)alpha * acc;
            if (beta != 0.0f) out += (double)beta * (double)*c;
            *c = (float)out;
        }
    }
}
