/* tensor.h — element types and the tensor descriptor shared by GGUF, the
 * backends and the model code.
 *
 * Types use ggml's numeric ids, so a GGUF tensor's type field maps directly.
 * Shapes use ggml's order: ne[0] is the fastest-varying (contiguous) dim, so a
 * weight matrix that maps K inputs to M outputs has ne = {K, M} and is stored
 * as M rows of K elements. Quantized types store a row as ne[0]/block_size
 * blocks (ne[0] must be a multiple of the block size).
 */
#ifndef MS_TENSOR_H
#define MS_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef enum ms_type {
    MS_TYPE_F32 = 0,
    MS_TYPE_F16 = 1,
    MS_TYPE_Q4_0 = 2,
    MS_TYPE_Q8_0 = 8,
    MS_TYPE_Q4_K = 12,
    MS_TYPE_BF16 = 30,
    MS_TYPE_COUNT = 40, /* one past the largest ggml id we know of */
} ms_type;

#define MS_MAX_DIMS 4

/* A view of one tensor's storage. For weights loaded from GGUF, `data` points
 * into the read-only mapping of the file; `dev` is set by a backend that keeps
 * its own copy (a device buffer, a repacked layout) and is NULL otherwise. */
typedef struct ms_tensor {
    const char *name;        /* NUL-terminated, owned by whoever made the tensor */
    ms_type type;            /* element type */
    int n_dims;              /* 1..MS_MAX_DIMS */
    int64_t ne[MS_MAX_DIMS]; /* elements per dim, ne[0] contiguous; unused dims are 1 */
    size_t nbytes;           /* bytes of storage */
    const void *data;        /* host storage (mmap of the file, or heap) */
    void *dev;               /* backend copy or NULL */
} ms_tensor;

/* Type traits. Unknown types report block size 0 and size 0. */
const char *ms_type_name(ms_type t);
bool ms_type_known(uint32_t t);          /* true for the types this engine computes with */
int64_t ms_type_block_size(ms_type t);   /* elements per block (1 for float types) */
size_t ms_type_block_bytes(ms_type t);   /* bytes per block */
/* Bytes of one row of ne0 elements; 0 if ne0 is not a multiple of the block size. */
size_t ms_row_bytes(ms_type t, int64_t ne0);
int64_t ms_tensor_nelements(const ms_tensor *t);
/* Rows = product of ne[1..] */
int64_t ms_tensor_nrows(const ms_tensor *t);

#endif
