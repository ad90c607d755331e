/* Storage of compressed-sparse-row matrices. */
#include "petrel/tensor.h"

#include <string.h>

petrel_err petrel_csr_init(petrel_csr *m, int64_t rows, int64_t cols, int64_t nnz) {
    PETREL_ASSERT(m != NULL, "pass the petrel_csr to initialize");
    /* col is int32_t, so a column index must fit in it. */
    if (rows < 0 || cols < 0 || nnz < 0 || cols > (int64_t)INT32_MAX + 1)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_csr_init: rows %lld, cols %lld, nnz %lld: expected "
                                "non-negative sizes and cols <= 2^31",
                                (long long)rows, (long long)cols, (long long)nnz);
    if ((uint64_t)rows + 1 > SIZE_MAX / sizeof(int64_t) || (uint64_t)nnz > SIZE_MAX / sizeof(float))
        return petrel_error_set(PETREL_ERR_NOMEM, "petrel_csr_init: %lld rows, %lld nnz overflow",
                                (long long)rows, (long long)nnz);
    int64_t *row_ptr = petrel_calloc((size_t)rows + 1, sizeof *row_ptr);
    int32_t *col = petrel_malloc((size_t)nnz * sizeof *col);
    float *val = petrel_malloc((size_t)nnz * sizeof *val);
    if (!row_ptr || !col || !val) goto fail;
    m->rows = rows;
    m->cols = cols;
    m->nnz = nnz;
    m->row_ptr = row_ptr;
    m->col = col;
    m->val = val;
    return PETREL_OK;

fail:
    petrel_free(val);
    petrel_free(col);
    petrel_free(row_ptr);
    return petrel_error_set(PETREL_ERR_NOMEM,
                            "petrel_csr_init: out of memory for %lld rows and %lld entries",
                            (long long)rows, (long long)nnz);
}

void petrel_csr_fini(petrel_csr *m) {
    if (!m) return;
    petrel_free(m->val);
    petrel_free(m->col);
    petrel_free(m->row_ptr);
    memset(m, 0, sizeof *m);
}
