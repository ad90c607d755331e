/* Threads over pthreads. */
#include "petrel/core.h"

#include <pthread.h>
#include <string.h>
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
