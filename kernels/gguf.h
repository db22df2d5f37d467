/* gguf.h — reading and writing GGUF files (llama.cpp's model format).
 *
 * Reading maps the file read-only and validates its whole structure before
 * returning: header, every key/value, every tensor info, alignment and data
 * ranges. Every read is bounds-checked; a malformed file yields NULL and one
 * line in err naming what was wrong (and where), never a crash. Tensor data is
 * not copied: ms_tensor.data points into the mapping, so resident memory only
 * grows with the pages the engine touches.
 *
 * Format (v2 and v3, little-endian): magic "GGUF", u32 version, u64 n_tensors,
 * u64 n_kv; n_kv × {string key, u32 type, value}; n_tensors × {string name,
 * u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset}; padding to
 * general.alignment (default 32); the data section. Strings are u64 length +
 * bytes (no NUL). Arrays are u32 elem type, u64 count, elements.
 */
#ifndef MS_GGUF_H
#define MS_GGUF_H

#include "tensor.h"

#define MS_GGUF_MAGIC             0x46554747u /* "GGUF" little-endian */
#define MS_GGUF_DEFAULT_ALIGNMENT 32
#define MS_GGUF_MAX_STRING        (1u << 24)  /* longest accepted string value, bytes */
#define MS_GGUF_MAX_KEY           65535       /* longest accepted key / tensor name */
#define MS_GGUF_MAX_ARRAY         (1u << 26)  /* most elements in one array */

typedef enum ms_gguf_type {
    MS_GGUF_UINT8 = 0,
    MS_GGUF_INT8 = 1,
    MS_GGUF_UINT16 = 2,
    MS_GGUF_INT16 = 3,
    MS_GGUF_UINT32 = 4,
    MS_GGUF_INT32 = 5,
    MS_GGUF_FLOAT32 = 6,
    MS_GGUF_BOOL = 7,
    MS_GGUF_STRING = 8,
    MS_GGUF_ARRAY = 9,
    MS_GGUF_UINT64 = 10,
    MS_GGUF_INT64 = 11,
    MS_GGUF_FLOAT64 = 12,
    MS_GGUF_TYPE_COUNT
} ms_gguf_type;

const char *ms_gguf_type_name(ms_gguf_type t);

typedef struct ms_gguf ms_gguf;

/* Opens and validates a file (mmap). NULL + err on failure. */
ms_gguf *ms_gguf_open(const char *path, char *err, size_t err_size);
/* Same over caller memory, which must outlive the result (used by fuzzing). */
ms_gguf *ms_gguf_open_memory(const void *data, size_t size, char *err, size_t err_size);
void ms_gguf_close(ms_gguf **g_p);

uint32_t ms_gguf_version(const ms_gguf *g);
size_t ms_gguf_alignment(const ms_gguf *g);
/* File offset of the data section (tensor offsets are relative to it). */
size_t ms_gguf_data_offset(const ms_gguf *g);

/* Key/values. Keys are NUL-terminated copies. Index -1 = not found. */
int64_t ms_gguf_n_kv(const ms_gguf *g);
const char *ms_gguf_key(const ms_gguf *g, int64_t i);
int64_t ms_gguf_find_key(const ms_gguf *g, const char *key);
ms_gguf_type ms_gguf_kv_type(const ms_gguf *g, int64_t i);
/* For arrays: element type and count (count 0 and type UINT8 for non-arrays). */
ms_gguf_type ms_gguf_arr_type(const ms_gguf *g, int64_t i);
uint64_t ms_gguf_arr_n(const ms_gguf *g, int64_t i);
/* Raw pointer to the elements of a non-string array (little-endian, unaligned);
 * for a scalar key (not string), its value's bytes; NULL for strings. */
const void *ms_gguf_arr_data(const ms_gguf *g, int64_t i);
/* i-th string of a string array, with its length (not NUL-terminated). */
const char *ms_gguf_arr_str(const ms_gguf *g, int64_t i, uint64_t j, uint64_t *len);

/* Typed getters. Each returns 0 and sets *out, or -1 with a message naming the
 * key: "missing key 'llama.block_count'" or "key 'llama.block_count' has type
 * string, expected uint32". Integer getters accept any integer type whose value
 * fits the output type. Strings are NUL-terminated, owned by g. */
int ms_gguf_get_u32(const ms_gguf *g, const char *key, uint32_t *out, char *err, size_t err_size);
int ms_gguf_get_i32(const ms_gguf *g, const char *key, int32_t *out, char *err, size_t err_size);
int ms_gguf_get_u64(const ms_gguf *g, const char *key, uint64_t *out, char *err, size_t err_size);
int ms_gguf_get_f32(const ms_gguf *g, const char *key, float *out, char *err, size_t err_size);
int ms_gguf_get_bool(const ms_gguf *g, const char *key, bool *out, char *err, size_t err_size);
int ms_gguf_get_str(const ms_gguf *g, const char *key, const char **out, char *err,
                    size_t err_size);
/* Array of the given element type (count in *n, data via ms_gguf_arr_data). */
int ms_gguf_get_arr(const ms_gguf *g, const char *key, ms_gguf_type elem, int64_t *index,
                    uint64_t *n, char *err, size_t err_size);

/* Tensors. Names are NUL-terminated copies owned by g. */
int64_t ms_gguf_n_tensors(const ms_gguf *g);
ms_tensor *ms_gguf_tensor(ms_gguf *g, int64_t i);
ms_tensor *ms_gguf_find_tensor(ms_gguf *g, const char *name);
/* Offset of tensor i's data, relative to the data section (as stored in the file). */
uint64_t ms_gguf_tensor_offset(const ms_gguf *g, int64_t i);
/* Finds a tensor and checks its shape: n_dims and ne[0..n_dims). NULL + message
 * ("missing tensor 'x'" / "tensor 'x' has shape [a, b], expected [c, d]"). If
 * `types` is non-zero it is a bit mask (1u << ms_type) of the accepted types. */
ms_tensor *ms_gguf_expect_tensor(ms_gguf *g, const char *name, int n_dims, const int64_t *ne,
                                 uint64_t types, char *err, size_t err_size);

/* ---- Writer ---------------------------------------------------------------
 * Collects key/values and tensors in memory, then writes a v3 file with
 * default alignment. Setting an existing key replaces it. Tensor data is
 * copied. Functions return 0 or -1 (-1 only for invalid arguments: a duplicate
 * tensor name, a shape whose ne[0] is not a multiple of the block size). */
typedef struct ms_gguf_writer ms_gguf_writer;

ms_gguf_writer *ms_gguf_writer_new(void);
void ms_gguf_writer_destroy(ms_gguf_writer **w_p);
void ms_gguf_set_u32(ms_gguf_writer *w, const char *key, uint32_t v);
void ms_gguf_set_i32(ms_gguf_writer *w, const char *key, int32_t v);
void ms_gguf_set_u64(ms_gguf_writer *w, const char *key, uint64_t v);
void ms_gguf_set_f32(ms_gguf_writer *w, const char *key, float v);
void ms_gguf_set_bool(ms_gguf_writer *w, const char *key, bool v);
void ms_gguf_set_str(ms_gguf_writer *w, const char *key, const char *v);
/* Arrays: elem is the element type; data holds n little-endian elements of
 * that type (for STRING, data is `const char *const *`). */
void ms_gguf_set_arr(ms_gguf_writer *w, const char *key, ms_gguf_type elem, const void *data,
                     uint64_t n);
int ms_gguf_add_tensor(ms_gguf_writer *w, const char *name, ms_type type, int n_dims,
                       const int64_t *ne, const void *data, size_t nbytes);
int ms_gguf_writer_write(const ms_gguf_writer *w, const char *path, char *err, size_t err_size);

#endif
