/* Building models by name and from checkpoint metadata. */
#include "apps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

petrel_model_options petrel_model_options_default(void) {
    petrel_model_options o = {.name = "mlp",
                              .in_dim = 784,
                              .classes = 10,
                              .channels = 1,
                              .height = 28,
                              .width = 28,
                              .hidden = {256},
                              .seed = 1};
    return o;
}

petrel_err petrel_model_new(petrel_model **out, const petrel_model_options *o) {
    if (strcmp(o->name, "softmax") == 0) return petrel_softmax_new(out, o);
    if (strcmp(o->name, "mlp") == 0) return petrel_mlp_new(out, o);
    if (strcmp(o->name, "cnn") == 0) return petrel_cnn_new(out, o);
    return petrel_error_set(PETREL_ERR_INVALID, "unknown model '%s' (expected softmax, mlp or cnn)",
                            o->name);
}

/* Model names live in static storage so that parsed options outlive the string. */
static const char *canonical_name(const char *s, size_t n) {
    static const char *const names[] = {"softmax", "mlp", "cnn"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && strncmp(names[i], s, n) == 0) return names[i];
    return NULL;
}

petrel_err petrel_model_options_parse(petrel_model_options *o, const char *meta) {
    petrel_model_options r = petrel_model_options_default();
    r.hidden[0] = 0;
    const char *p = meta;
    while (*p) {
        while (*p == ' ') p++;
        const char *eq = strchr(p, '='), *end = strchr(p, ' ');
        if (!end) end = p + strlen(p);
        if (!eq || eq > end) {
            if (p == end) break;
            return petrel_error_set(PETREL_ERR_FORMAT, "model metadata '%s': expected key=value",
                                    meta);
        }
        size_t klen = (size_t)(eq - p);
        const char *v = eq + 1;
        size_t vlen = (size_t)(end - v);
        if (klen == 5 && strncmp(p, "model", 5) == 0) {
            if (!(r.name = canonical_name(v, vlen)))
                return petrel_error_set(PETREL_ERR_FORMAT, "model metadata '%s': unknown model",
                                        meta);
        } else if (klen == 6 && strncmp(p, "hidden", 6) == 0) {
            int k = 0;
            for (const char *q = v; q < end && k < 3;) {
                r.hidden[k++] = strtoll(q, (char **)&q, 10);
                if (*q == ',')
                    q++;
                else
                    break;
            }
            r.hidden[k] = 0;
        } else {
            int64_t val = strtoll(v, NULL, 10);
            if (klen == 2 && strncmp(p, "in", 2) == 0)
                r.in_dim = val;
            else if (klen == 7 && strncmp(p, "classes", 7) == 0)
                r.classes = val;
            else if (klen == 8 && strncmp(p, "channels", 8) == 0)
                r.channels = val;
            else if (klen == 6 && strncmp(p, "height", 6) == 0)
                r.height = val;
            else if (klen == 5 && strncmp(p, "width", 5) == 0)
                r.width = val;
        }
        p = end;
    }
    *o = r;
    return PETREL_OK;
}
