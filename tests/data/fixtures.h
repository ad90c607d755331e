/*
 * Fixture files for the data tests: written at run time into a private
 * directory from mkdtemp (never committed), removed by fx_cleanup().
 *
 *     fx_init();
 *     const char *p = fx_write_str("a.svm", "+1 1:0.5\n");
 *     ...
 *     fx_cleanup();
 */
#ifndef PETREL_TESTS_DATA_FIXTURES_H
#define PETREL_TESTS_DATA_FIXTURES_H

#include "check.h"

#include <dirent.h>
#include <unistd.h>
#include <zlib.h>

static char fx_dir[64];

static inline void fx_init(void) {
    snprintf(fx_dir, sizeof fx_dir, "/tmp/petrel-data-XXXXXX");
    if (!mkdtemp(fx_dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Path of name inside the fixture directory; a ring of buffers, so a few results
 * can be used at once. */
static inline const char *fx_path(const char *name) {
    static char ring[8][256];
    static int next;
    char *p = ring[next++ % 8];
    if (snprintf(p, 256, "%s/%s", fx_dir, name) >= 256) {
        fprintf(stderr, "fixture name too long: %s\n", name);
        exit(1);
    }
    return p;
}

static inline const char *fx_write(const char *name, const void *data, size_t n) {
    const char *p = fx_path(name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror(p);
        exit(1);
    }
    return p;
}

static inline const char *fx_write_str(const char *name, const char *s) {
    return fx_write(name, s, strlen(s));
}

/* Writes data gzip-compressed through zlib's gzip writer. */
static inline const char *fx_write_gz(const char *name, const void *data, size_t n) {
    const char *p = fx_path(name);
    gzFile g = gzopen(p, "wb");
    if (!g || (n && gzwrite(g, data, (unsigned)n) != (int)n) || gzclose(g) != Z_OK) {
        fprintf(stderr, "%s: gzip write failed\n", p);
        exit(1);
    }
    return p;
}

/* Reads a whole file into a malloc'd buffer (test-side memory, not counted). */
static inline unsigned char *fx_read(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) exit(1);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static inline void fx_cleanup(void) {
    DIR *dir = opendir(fx_dir);
    if (!dir) return;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        unlink(fx_path(e->d_name));
    }
    closedir(dir);
    rmdir(fx_dir);
}

/* True when the last error message contains s; prints it otherwise. */
static inline bool fx_msg_has(const char *s) {
    if (strstr(petrel_errmsg(), s)) return true;
    printf("  # errmsg '%s' lacks '%s'\n", petrel_errmsg(), s);
    return false;
}

#define CHECK_MSG(s) CHECK(fx_msg_has(s))

/* Run last: every dataset and buffer the tests made was freed. */
static inline void test_nothing_leaked(void) {
    CHECK(petrel_alloc_get_stats().live_bytes == 0);
}

#endif
