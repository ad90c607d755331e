/*
 * Ratings for matrix factorization: the triplet reader, the seeded split and the
 * synthetic low-rank generator. One triplet per line:
 *
 *     <user> <item> <rating>
 *
 * user, item: decimal digits only, 0 .. 2147483647 (INT32_MAX); rating: a finite
 * number within float range (3, 4.5, -1e-2). Fields are separated by spaces or
 * tabs; nothing may follow the rating. A line whose first non-blank character is
 * '#' is a comment; blank lines are skipped. Lines end in "\n" or "\r\n", the last
 * may lack its end; the file may be gzip-compressed (the data module's line reader).
 *
 * The triplets are parsed straight into three growing arrays, which become the
 * result's storage.
 */
#include "data/data_impl.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ratings_parse {
    const char *path;
    int64_t lineno;
    int64_t n, max_user, max_item;
    int32_t *user, *item;
    float *rating;
    size_t user_cap, item_cap, rating_cap;
} ratings_parse;

static bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Parses an id token of length len ("user" or "item" in messages). */
static petrel_err parse_id(const ratings_parse *p, const char *s, size_t len, const char *what,
                           int32_t *out) {
    const char *digits = s[0] == '-' ? s + 1 : s;
    size_t nd = len - (size_t)(digits - s);
    bool all_digits = nd > 0;
    for (size_t k = 0; k < nd && all_digits; k++) all_digits = digits[k] >= '0' && digits[k] <= '9';
    if (!all_digits)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: expected an integer %s id, found '%.*s%s'", p->path,
                                (long long)p->lineno, what, PETRELI_QUOTE(s, len));
    if (digits != s)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: %s id '%.*s%s' is negative: expected 0 .. 2147483647",
                                p->path, (long long)p->lineno, what, PETRELI_QUOTE(s, len));
    /* Digits only: strtol would also take signs and spaces, and overflow quietly. */
    int64_t v = 0;
    for (size_t k = 0; k < nd; k++) {
        v = v * 10 + (digits[k] - '0');
        if (v > INT32_MAX)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s:%lld: %s id '%.*s%s' is above the limit 2147483647",
                                    p->path, (long long)p->lineno, what, PETRELI_QUOTE(s, len));
    }
    *out = (int32_t)v;
    return PETREL_OK;
}

static petrel_err parse_rating(const ratings_parse *p, const char *s, size_t len, float *out) {
    char *end;
    double v;
    if (petreli_parse_double(s, &end, &v) && end == s + len) {
        if (v > FLT_MAX || v < -FLT_MAX)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s:%lld: rating '%.*s%s' is outside the float range", p->path,
                                    (long long)p->lineno, PETRELI_QUOTE(s, len));
        *out = (float)v;
        return PETREL_OK;
    }
    /* Tell "nan" and "inf", which strtod accepts, from text that is no number. */
    double x = strtod(s, &end);
    if (end == s + len && !isfinite(x))
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: rating '%.*s%s' is not a finite number", p->path,
                                (long long)p->lineno, PETRELI_QUOTE(s, len));
    return petrel_error_set(PETREL_ERR_FORMAT, "%s:%lld: expected a numeric rating, found '%.*s%s'",
                            p->path, (long long)p->lineno, PETRELI_QUOTE(s, len));
}

static petrel_err push(ratings_parse *p, int32_t u, int32_t i, float r) {
    if (p->n == (int64_t)UINT32_MAX)
        return petrel_error_set(PETREL_ERR_FORMAT, "%s:%lld: more than 2^32-1 ratings", p->path,
                                (long long)p->lineno);
    size_t need = (size_t)p->n + 1;
    void *a = p->user, *b = p->item, *c = p->rating;
    petrel_err err = petreli_grow(&a, &p->user_cap, need, sizeof *p->user);
    p->user = a;
    if (err == PETREL_OK) err = petreli_grow(&b, &p->item_cap, need, sizeof *p->item);
    p->item = b;
    if (err == PETREL_OK) err = petreli_grow(&c, &p->rating_cap, need, sizeof *p->rating);
    p->rating = c;
    if (err != PETREL_OK) return err;
    p->user[p->n] = u;
    p->item[p->n] = i;
    p->rating[p->n++] = r;
    if (u > p->max_user) p->max_user = u;
    if (i > p->max_item) p->max_item = i;
    return PETREL_OK;
}

static petrel_err parse_line(ratings_parse *p, const char *line) {
    static const char *const field[3] = {"user", "item", "rating"};
    const char *s = line;
    while (is_blank(*s)) s++;
    if (!*s || *s == '#') return PETREL_OK;
    const char *tok[3];
    size_t len[3];
    int k = 0;
    for (;;) {
        while (is_blank(*s)) s++;
        if (!*s) break;
        size_t l = 0;
        while (s[l] && !is_blank(s[l])) l++;
        if (k == 3)
            return petrel_error_set(PETREL_ERR_FORMAT,
                                    "%s:%lld: unexpected '%.*s%s' after the rating: expected "
                                    "'user item rating'",
                                    p->path, (long long)p->lineno, PETRELI_QUOTE(s, l));
        tok[k] = s, len[k++] = l;
        s += l;
    }
    if (k < 3)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "%s:%lld: missing the %s field: expected 'user item rating', "
                                "found %d field%s",
                                p->path, (long long)p->lineno, field[k], k, k == 1 ? "" : "s");
    int32_t u = 0, i = 0;
    float r = 0;
    petrel_err err = parse_id(p, tok[0], len[0], "user", &u);
    if (err == PETREL_OK) err = parse_id(p, tok[1], len[1], "item", &i);
    if (err == PETREL_OK) err = parse_rating(p, tok[2], len[2], &r);
    if (err == PETREL_OK) err = push(p, u, i, r);
    return err;
}

petrel_err petrel_ratings_read(const char *path, petrel_ratings *out) {
    PETREL_ASSERT(path && out, "pass a path and a result");
    ratings_parse p = {.path = path, .max_user = -1, .max_item = -1};
    petreli_lines lines;
    memset(&lines, 0, sizeof lines);
    petrel_err err = petreli_lines_open(&lines, path);
    if (err != PETREL_OK) goto fail;
    for (;;) {
        char *line;
        size_t len;
        if ((err = petreli_lines_next(&lines, &line, &len)) != PETREL_OK) goto fail;
        if (!line) break;
        p.lineno = lines.lineno;
        if ((err = parse_line(&p, line)) != PETREL_OK) goto fail;
    }
    petreli_lines_close(&lines);
    if (p.n == 0) {
        err = petrel_error_set(PETREL_ERR_FORMAT,
                               "%s: no ratings: expected lines of 'user item rating'", path);
        goto fail;
    }
    *out = (petrel_ratings){.n = p.n,
                            .users = p.max_user + 1,
                            .items = p.max_item + 1,
                            .user = p.user,
                            .item = p.item,
                            .rating = p.rating};
    return PETREL_OK;

fail:
    petreli_lines_close(&lines);
    petrel_free(p.rating);
    petrel_free(p.item);
    petrel_free(p.user);
    return err;
}

/* Arrays for n triplets (at least one slot, so that none is NULL). */
static petrel_err ratings_alloc(petrel_ratings *r, int64_t n, int64_t users, int64_t items) {
    size_t slots = (size_t)(n > 0 ? n : 1);
    *r = (petrel_ratings){.n = n, .users = users, .items = items};
    r->user = petrel_malloc(slots * sizeof *r->user);
    r->item = petrel_malloc(slots * sizeof *r->item);
    r->rating = petrel_malloc(slots * sizeof *r->rating);
    if (r->user && r->item && r->rating) return PETREL_OK;
    petrel_ratings_fini(r);
    return PETREL_ERR_NOMEM;
}

petrel_err petrel_ratings_split(const petrel_ratings *r, double test_fraction, uint64_t seed,
                                petrel_ratings *train, petrel_ratings *test) {
    PETREL_ASSERT(r && train && test && train != test, "pass a set and two distinct results");
    if (!(test_fraction >= 0.0 && test_fraction < 1.0))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_ratings_split: test fraction %g: expected 0 <= f < 1",
                                test_fraction);
    if (r->n < 0 || r->n > (int64_t)UINT32_MAX)
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_ratings_split: %lld ratings: expected 0 .. 2^32-1",
                                (long long)r->n);
    const int64_t n = r->n, ntest = (int64_t)floor(test_fraction * (double)n + 0.5);
    petrel_ratings tr = {0}, te = {0};
    uint32_t *perm = petrel_malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
    bool *is_test = petrel_calloc((size_t)(n > 0 ? n : 1), sizeof *is_test);
    petrel_err err = PETREL_ERR_NOMEM;
    if (!perm || !is_test) goto fail;
    if ((err = ratings_alloc(&tr, n - ntest, r->users, r->items)) != PETREL_OK) goto fail;
    if ((err = ratings_alloc(&te, ntest, r->users, r->items)) != PETREL_OK) goto fail;
    for (int64_t k = 0; k < n; k++) perm[k] = (uint32_t)k;
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    petrel_rng_shuffle_u32(&rng, perm, (size_t)n);
    for (int64_t k = 0; k < ntest; k++) is_test[perm[k]] = true;
    int64_t a = 0, b = 0;
    for (int64_t k = 0; k < n; k++) {
        petrel_ratings *to = is_test[k] ? &te : &tr;
        int64_t at = is_test[k] ? b++ : a++;
        to->user[at] = r->user[k];
        to->item[at] = r->item[k];
        to->rating[at] = r->rating[k];
    }
    petrel_free(is_test);
    petrel_free(perm);
    *train = tr;
    *test = te;
    return PETREL_OK;

fail:
    petrel_ratings_fini(&te);
    petrel_ratings_fini(&tr);
    petrel_free(is_test);
    petrel_free(perm);
    return err;
}

/* Uniform in (0, 1] with 53 random bits. */
static double uniform_open0(petrel_rng *rng) {
    return (double)((petrel_rng_u64(rng) >> 11) + 1) * 0x1p-53;
}

petrel_err petrel_ratings_synth(const char *path, int64_t users, int64_t items, int rank,
                                double density, double noise, uint64_t seed) {
    PETREL_ASSERT(path, "pass a path");
    const int64_t max_ids = (int64_t)INT32_MAX + 1;
    if (users < 1 || users > max_ids || items < 1 || items > max_ids || rank < 1 || rank > 4096 ||
        !(density > 0 && density <= 1) || !(noise >= 0) || !isfinite(noise))
        return petrel_error_set(PETREL_ERR_INVALID,
                                "petrel_ratings_synth: users %lld, items %lld, rank %d, density "
                                "%g, noise %g: expected users and items in 1 .. 2^31, rank in "
                                "1 .. 4096, 0 < density <= 1, noise >= 0",
                                (long long)users, (long long)items, rank, density, noise);
    petrel_err err = PETREL_ERR_NOMEM;
    FILE *f = NULL;
    float *U = petrel_malloc((size_t)users * (size_t)rank * sizeof *U);
    float *V = petrel_malloc((size_t)items * (size_t)rank * sizeof *V);
    if (!U || !V) goto fail;
    /* Entries of variance 1/sqrt(rank): a dot product of rank of them has variance 1. */
    const float scale = (float)pow((double)rank, -0.25);
    petrel_rng rng;
    petrel_rng_seed(&rng, seed);
    for (int64_t k = 0; k < users * rank; k++) U[k] = scale * petrel_rng_normal(&rng);
    for (int64_t k = 0; k < items * rank; k++) V[k] = scale * petrel_rng_normal(&rng);
    /* A second stream for the mask and the noise, so that the factors do not depend
     * on the density. */
    petrel_rng_seed(&rng, seed ^ 0x5851f42d4c957f2dull);

    if (!(f = fopen(path, "w"))) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto fail;
    }
    fprintf(f,
            "# petrel synthetic ratings: users %lld items %lld rank %d density %g noise %g "
            "seed %llu\n",
            (long long)users, (long long)items, rank, density, noise, (unsigned long long)seed);
    /* The observed cells in row-major order: the gaps between them are geometric,
     * P(gap = g) = (1 - density)^g density, so the cost is that of the observed ones. */
    const int64_t cells = users * items;
    const double log_miss = density < 1 ? log1p(-density) : 0;
    for (int64_t pos = -1;;) {
        double gap = density < 1 ? floor(log(uniform_open0(&rng)) / log_miss) : 0;
        if (gap >= (double)(cells - 1 - pos)) break;
        pos += 1 + (int64_t)gap;
        const int64_t u = pos / items, i = pos % items;
        const float *a = U + u * rank, *b = V + i * rank;
        double dot = 0;
        for (int k = 0; k < rank; k++) dot += (double)a[k] * (double)b[k];
        double r = dot + noise * (double)petrel_rng_normal(&rng);
        fprintf(f, "%lld %lld %.7g\n", (long long)u, (long long)i, r);
    }
    if (ferror(f)) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    int rc = fclose(f);
    f = NULL;
    if (rc != 0) {
        err = petrel_error_set(PETREL_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    petrel_free(V);
    petrel_free(U);
    return PETREL_OK;

fail:
    if (f) fclose(f);
    petrel_free(V);
    petrel_free(U);
    return err;
}

void petrel_ratings_fini(petrel_ratings *r) {
    if (!r) return;
    petrel_free(r->user);
    petrel_free(r->item);
    petrel_free(r->rating);
    memset(r, 0, sizeof *r);
}
