/* metrics.jsonl: one JSON object per event, flushed line by line. */
#include "petrel/train.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

struct petrel_metrics {
    FILE *f;
    char line[4096];
    size_t len;
    bool overflow;
};

petrel_err petrel_mkdirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return petrel_error_set(PETREL_ERR_INVALID, "directory path '%s' is empty or too long",
                                path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return petrel_error_set(PETREL_ERR_IO, "%s: cannot create directory: %s", buf,
                                    strerror(errno));
        buf[i] = c;
    }
    return PETREL_OK;
}

petrel_err petrel_metrics_open(petrel_metrics **out, const char *dir) {
    petrel_err err = petrel_mkdirs(dir);
    if (err != PETREL_OK) return err;
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    petrel_metrics *m = petrel_calloc(1, sizeof *m);
    if (!m) return PETREL_ERR_NOMEM;
    m->f = fopen(path, "w");
    if (!m->f) {
        petrel_free(m);
        return petrel_error_set(PETREL_ERR_IO, "%s: cannot open for writing: %s", path,
                                strerror(errno));
    }
    *out = m;
    return PETREL_OK;
}

void petrel_metrics_close(petrel_metrics *m) {
    if (!m) return;
    fclose(m->f);
    petrel_free(m);
}

static void append(petrel_metrics *m, const char *fmt, ...) PETREL_PRINTF(2, 3);
static void append(petrel_metrics *m, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(m->line + m->len, sizeof m->line - m->len, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= sizeof m->line - m->len)
        m->overflow = true;
    else
        m->len += (size_t)w;
}

static void append_string(petrel_metrics *m, const char *s) {
    append(m, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            append(m, "\\%c", c);
        else if (c < 0x20)
            append(m, "\\u%04x", c);
        else
            append(m, "%c", c);
    }
    append(m, "\"");
}

void petrel_metrics_begin(petrel_metrics *m, const char *event) {
    m->len = 0;
    m->overflow = false;
    append(m, "{\"event\":");
    append_string(m, event);
}

void petrel_metrics_int(petrel_metrics *m, const char *key, int64_t v) {
    append(m, ",");
    append_string(m, key);
    append(m, ":%lld", (long long)v);
}

void petrel_metrics_num(petrel_metrics *m, const char *key, double v) {
    append(m, ",");
    append_string(m, key);
    /* JSON has no NaN or infinity: write null so that readers still parse the line. */
    if (isfinite(v))
        append(m, ":%.9g", v);
    else
        append(m, ":null");
}

void petrel_metrics_str(petrel_metrics *m, const char *key, const char *v) {
    append(m, ",");
    append_string(m, key);
    append(m, ":");
    append_string(m, v);
}

petrel_err petrel_metrics_end(petrel_metrics *m) {
    append(m, "}\n");
    if (m->overflow) return petrel_error_set(PETREL_ERR_INVALID, "metrics line too long");
    if (fwrite(m->line, 1, m->len, m->f) != m->len || fflush(m->f) != 0)
        return petrel_error_set(PETREL_ERR_IO, "metrics.jsonl: write failed: %s", strerror(errno));
    return PETREL_OK;
}
