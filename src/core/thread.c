/* Threads over pthreads, and futexes (core_impl.h). */
#include "core/core_impl.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct petrel_thread {
    pthread_t handle;
};

petrel_err petrel_thread_start(petrel_thread **out, void *(*fn)(void *), void *arg) {
    petrel_thread *t = petrel_malloc(sizeof *t);
    if (!t) return PETREL_ERR_NOMEM;
    int rc = pthread_create(&t->handle, NULL, fn, arg);
    if (rc != 0) {
        petrel_free(t);
        return petrel_error_set(PETREL_ERR_NOMEM, "pthread_create: %s", strerror(rc));
    }
    *out = t;
    return PETREL_OK;
}

void petrel_thread_join(petrel_thread *t, void **result) {
    if (!t) return;
    void *r = NULL;
    pthread_join(t->handle, &r);
    if (result) *result = r;
    petrel_free(t);
}

int petrel_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void petreli_futex_wait(_Atomic uint32_t *word, uint32_t seen, uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

void petreli_futex_ring(_Atomic uint32_t *word) {
    atomic_fetch_add(word, 1);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
