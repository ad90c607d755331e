/*
 * Open MPI's MPI_Allreduce, timed the way `petrel bench allreduce` times petrel's.
 *
 *     mpirun --oversubscribe --bind-to none -np P mpi_allreduce [--warmup W] BYTES:ITERS ...
 *
 * For each case: BYTES of float32 (BYTES / 4 elements), MPI_FLOAT, MPI_SUM, in place
 * (MPI_IN_PLACE, as petrel_allreduce is). One checked call first: member r holds
 * (r + 1) + (i % 13) at element i, and every member must end with the exact sum
 * P (P + 1) / 2 + P (i % 13). Then the buffer is zeroed (so that values stay finite
 * over any number of calls), W untimed calls (default ITERS / 10, at least 2), and
 * ITERS calls timed one by one with MPI_Wtime, back to back, no barrier between them.
 * Each member takes the median of its ITERS times; the figure is the largest median
 * over the members (the slowest member is what an allreduce costs).
 *
 * Rank 0 prints one line per case, which the bench parses:
 *     mpi_allreduce ranks=2 bytes=4194304 iters=40 time_us=812.3 check=ok
 * and first one line naming the library:
 *     mpi_allreduce library=Open MPI v4.1.4, ...
 * Exits 0 when every case ran and checked, 1 otherwise, 2 on bad arguments.
 */
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CASES 32

typedef struct bench_case {
    size_t bytes;
    int iters;
} bench_case;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int parse_case(const char *s, bench_case *c) {
    char *end;
    unsigned long long bytes = strtoull(s, &end, 10);
    if (end == s || *end != ':' || bytes == 0 || bytes % sizeof(float) != 0) return 0;
    const char *it = end + 1;
    long iters = strtol(it, &end, 10);
    if (end == it || *end || iters < 1 || iters > 1000000) return 0;
    c->bytes = (size_t)bytes;
    c->iters = (int)iters;
    return 1;
}

/* The checked call: 1 when every element of every member is the exact sum. */
static int check_call(float *x, size_t n, int rank, int P) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(rank + 1) + (float)(i % 13);
    MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++)
        ok = x[i] == (float)(P * (P + 1) / 2) + (float)P * (float)(i % 13);
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    bench_case cases[MAX_CASES];
    int ncases = 0, warmup = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
            warmup = atoi(argv[++i]);
        } else if (ncases < MAX_CASES && parse_case(argv[i], &cases[ncases])) {
            ncases++;
        } else {
            if (rank == 0)
                fprintf(stderr,
                        "usage: mpi_allreduce [--warmup W] BYTES:ITERS ... (BYTES a "
                        "multiple of 4, at most %d cases)\n",
                        MAX_CASES);
            MPI_Finalize();
            return 2;
        }
    }
    if (rank == 0) {
        char lib[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        MPI_Get_library_version(lib, &len);
        lib[strcspn(lib, "\n")] = '\0';
        printf("mpi_allreduce library=%s\n", lib);
        fflush(stdout);
    }
    size_t most = 0;
    int most_iters = 1;
    for (int c = 0; c < ncases; c++) {
        if (cases[c].bytes > most) most = cases[c].bytes;
        if (cases[c].iters > most_iters) most_iters = cases[c].iters;
    }
    float *x = malloc(most > 0 ? most : sizeof(float));
    double *t = malloc((size_t)most_iters * sizeof *t);
    if (!x || !t) {
        fprintf(stderr, "mpi_allreduce: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int failed = 0;
    for (int c = 0; c < ncases; c++) {
        size_t n = cases[c].bytes / sizeof(float);
        int iters = cases[c].iters, w = warmup >= 0 ? warmup : iters / 10 < 2 ? 2 : iters / 10;
        int ok = check_call(x, n, rank, P);
        memset(x, 0, n * sizeof(float));
        for (int k = 0; k < w; k++)
            MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (int k = 0; k < iters; k++) {
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t[k] = MPI_Wtime() - t0;
        }
        double mine = median(t, iters), worst = 0;
        MPI_Reduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            printf("mpi_allreduce ranks=%d bytes=%zu iters=%d time_us=%.2f check=%s\n", P,
                   cases[c].bytes, iters, worst * 1e6, ok ? "ok" : "FAILED");
            fflush(stdout);
        }
        failed |= !ok;
    }
    free(x);
    free(t);
    MPI_Finalize();
    return failed ? 1 : 0;
}
