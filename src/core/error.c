/* Error codes and the per-thread detail message. */
#include "petrel/core.h"

#include <stdio.h>
#include <stdlib.h>

static _Thread_local char errmsg[1024];

const char *petrel_strerror(petrel_err err) {
    switch (err) {
    case PETREL_OK:
        return "ok";
    case PETREL_ERR_NOMEM:
        return "out of memory";
    case PETREL_ERR_INVALID:
        return "invalid argument";
    case PETREL_ERR_IO:
        return "input/output error";
    case PETREL_ERR_FORMAT:
        return "malformed input";
    case PETREL_ERR_TIMEOUT:
        return "timed out";
    case PETREL_ERR_NOT_FOUND:
        return "not found";
    case PETREL_ERR_UNSUPPORTED:
        return "unsupported";
    case PETREL_ERR_STATE:
        return "wrong state";
    case PETREL_ERR_COUNT:
        break;
    }
    return "unknown error";
}

petrel_err petrel_error_set(petrel_err err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return err;
}

const char *petrel_errmsg(void) {
    return errmsg;
}

void petrel_error_clear(void) {
    errmsg[0] = '\0';
}

void petrel_assert_fail(const char *file, int line, const char *cond, const char *hint) {
    fprintf(stderr, "petrel: assertion failed at %s:%d: %s\nhint: %s\n", file, line, cond, hint);
    abort();
}
