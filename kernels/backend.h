/* backend.h — the compute backend interface.
 *
 * Model code never computes directly: it calls the operations below through a
 * backend's table of function pointers (as ggml's backends do). A backend owns
 * the memory of activations and KV caches (`alloc`), so a CUDA backend returns
 * device pointers and the model code is unchanged. Weights are ms_tensor views
 * of the GGUF mapping; a backend that wants its own copy (device memory, a
 * repacked layout) makes it in `prepare_weight` and stores it in tensor->dev.
 *
 * Conventions for every op:
 *   - outputs first, then inputs; all float pointers are backend memory;
 *   - integer index arrays (ids, pos, block tables) are host memory;
 *   - "rows" of activations are contiguous, row-major: x is (n, dim) means
 *     n rows of dim floats;
 *   - ops are synchronous from the caller's view after `synchronize`
 *     (the CPU backends are synchronous always).
 * Optional entries may be NULL; every other entry must be set.
 */
#ifndef MS_BACKEND_H
#define MS_BACKEND_H

#include "tensor.h"

typedef struct ms_backend ms_backend;

/* Arguments of the attention op: softmax(q·kᵀ·scale)·v per head, grouped-query
 * (head h reads kv head h / (n_head / n_kv_head)). Key j lives at row
 *   block_table ? block_table[j / block_size] * block_size + j % block_size : j
 * of k and v. With causal, query i (0-based within this call) sees keys
 * [0, n_kv - n_q + i]; otherwise all n_kv keys. */
typedef struct ms_attn_args {
    float *out;                 /* (n_q, n_head * head_dim) */
    const float *q;             /* (n_q, n_head * head_dim) */
    const float *k;             /* rows of n_kv_head * head_dim floats */
    const float *v;             /* rows of n_kv_head * head_dim floats */
    const int32_t *block_table; /* host; NULL for contiguous keys */
    int block_size;             /* rows per block when block_table is set */
    int n_q;                    /* query rows */
    int n_kv;                   /* keys visible to the last query */
    int n_head;                 /* query heads */
    int n_kv_head;              /* key/value heads; divides n_head */
    int head_dim;               /* floats per head */
    bool causal;                /* see above */
    float scale;                /* usually 1/sqrt(head_dim) */
} ms_attn_args;

typedef struct ms_backend_ops {
    const char *name;

    void (*destroy)(ms_backend *be);

    /* Memory. alloc returns zeroed backend memory of nbytes, or NULL. */
    void *(*alloc)(ms_backend *be, size_t nbytes);
    void (*free)(ms_backend *be, void *p);
    void (*to_device)(ms_backend *be, void *dst, const void *src, size_t nbytes);
    void (*to_host)(ms_backend *be, void *dst, const void *src, size_t nbytes);
    /* Copies within backend memory. */
    void (*copy)(ms_backend *be, void *dst, const void *src, size_t nbytes);
    /* Optional: make a backend copy of a weight (sets w->dev); 0 or -1. */
    int (*prepare_weight)(ms_backend *be, ms_tensor *w);
    /* Optional: wait for queued work. */
    void (*synchronize)(ms_backend *be);

    /* y(n, w->ne[1]) = x(n, w->ne[0]) · wᵀ for any weight type; w is 2-D. */
    void (*matmul)(ms_backend *be, float *y, const ms_tensor *w, const float *x, int n);
    /* y(n, w->ne[0]) = rows ids[0..n) of w, dequantized. */
    void (*get_rows)(ms_backend *be, float *y, const ms_tensor *w, const int32_t *ids, int n);
    /* y = a + b, elementwise over len floats; y may alias a or b. */
    void (*add)(ms_backend *be, float *y, const float *a, const float *b, size_t len);
    /* y(n, dim) += bias(dim) broadcast over rows. */
    void (*add_bias)(ms_backend *be, float *y, const float *bias, int n, int dim);
    /* y(n, dim) = x / rms(x) * w, per row. y may alias x. */
    void (*rmsnorm)(ms_backend *be, float *y, const float *x, const float *w, int n, int dim,
                    float eps);
    /* y(n, dim) = (x - mean) / sqrt(var + eps) * w + b, per row; b may be NULL. */
    void (*layernorm)(ms_backend *be, float *y, const float *x, const float *w, const float *b,
                      int n, int dim, float eps);
    /* Rotary embedding in place on x(n, n_head * head_dim), rotating the first
     * rot_dim dims of each head at position pos[i] (host) with base freq_base.
     * neox = false: adjacent pairs (x[2j], x[2j+1]) — llama;
     * neox = true:  halves (x[j], x[j + rot_dim/2]) — qwen2 / GPT-NeoX. */
    void (*rope)(ms_backend *be, float *x, int n, int n_head, int head_dim, int rot_dim,
                 const int32_t *pos, float freq_base, bool neox);
    void (*attention)(ms_backend *be, const ms_attn_args *a);
    /* In place over len floats: GELU (tanh approximation, as ggml), quick GELU
     * x·sigmoid(1.702x), and g = silu(g) · u. */
    void (*gelu)(ms_backend *be, float *x, size_t len);
    void (*gelu_quick)(ms_backend *be, float *x, size_t len);
    void (*silu_mul)(ms_backend *be, float *g, const float *u, size_t len);
    /* Scatter rows: row i of src (row_len floats) goes to row dst_rows[i] (host) of dst. */
    void (*set_rows)(ms_backend *be, float *dst, const int32_t *dst_rows, const float *src, int n,
                     int row_len);
} ms_backend_ops;

struct ms_backend {
    const ms_backend_ops *ops; /* the table */
    void *ctx;                 /* backend-private state */
    int n_threads;             /* worker threads (CPU backends), informational elsewhere */
};

/* Backend constructors. Each returns NULL with a message in err on failure.
 *   cpu_ref: the readable scalar reference, single-threaded; every other backend
 *            is tested against it;
 *   cpu:     the fast CPU backend (thread pool + AVX2/FMA with scalar fallback);
 *            n_threads <= 0 means one per online core. */
ms_backend *ms_backend_cpu_ref_new(char *err, size_t err_size);
ms_backend *ms_backend_cpu_new(int n_threads, char *err, size_t err_size);
/* By name: "cpu", "cpu-ref" (and "cuda" once it exists). */
ms_backend *ms_backend_new(const char *name, int n_threads, char *err, size_t err_size);
void ms_backend_destroy(ms_backend **be_p);

/* The pointer an op should use for a weight's data: its backend copy if any. */
static inline const void *ms_weight_data(const ms_tensor *w) { return w->dev ? w->dev : w->data; }

#endif
