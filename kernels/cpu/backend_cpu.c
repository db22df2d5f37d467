/* backend_cpu.c — the fast CPU backend (placeholder: the reference, until the
 * threaded SIMD version lands). */
#include "backend.h"
#include "ms_common.h"

#include <unistd.h>

ms_backend *ms_backend_cpu_new(int n_threads, char *err, size_t err_size) {
    ms_backend *be = ms_backend_cpu_ref_new(err, err_size);
    if (!be) return NULL;
    if (n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = nc > 0 ? (int)nc : 1;
    }
    be->n_threads = n_threads;
    return be;
}
