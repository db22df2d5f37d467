/* ms_test.c — see ms_test.h. */
#include "ms_test.h"

#include <stdio.h>
#include <stdlib.h>

static const char *s_env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

const char *ms_test_source_dir(void) { return s_env("MS_SOURCE_DIR", ".."); }
const char *ms_test_shared_dir(void) { return s_env("MS_SHARED_DIR", "../../shared"); }
const char *ms_test_models_dir(void) { return s_env("MS_TEST_MODELS", "test-models"); }
const char *ms_test_bin_dir(void) { return s_env("MS_BIN_DIR", "bin"); }

const char *ms_test_path(const char *dir, const char *name) {
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

double ms_test_nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? num / den : num;
}
