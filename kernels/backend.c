/* backend.c — backend construction by name and destruction (see backend.h). */
#include "backend.h"
#include "ms_common.h"

#include <string.h>

ms_backend *ms_backend_new(const char *name, int n_threads, char *err, size_t err_size) {
    if (!name) {
        ms_errf(err, err_size, "backend: no name given (expected \"cpu\" or \"cpu-ref\")");
        return NULL;
    }
    if (strcmp(name, "cpu") == 0) return ms_backend_cpu_new(n_threads, err, err_size);
    if (strcmp(name, "cpu-ref") == 0) return ms_backend_cpu_ref_new(err, err_size);
    ms_errf(err, err_size, "backend: unknown backend '%s' (expected \"cpu\" or \"cpu-ref\")", name);
    return NULL;
}

void ms_backend_destroy(ms_backend **be_p) {
    if (!be_p || !*be_p) return;
    ms_backend *be = *be_p;
    *be_p = NULL;
    be->ops->destroy(be); /* frees ctx and the ms_backend itself */
}
