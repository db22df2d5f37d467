/* llm.h — the text model's forward pass over a batch of rows (llama / qwen2).
 *
 * A batch is a sequence of segments; segment s holds rows of one sequence at
 * positions seq->n_past, seq->n_past + 1, ... (a prefill chunk is one segment
 * of many rows, a decode step is many segments of one row). Per layer:
 *   x → rmsnorm → q, k, v (+ qwen2 biases) → rope(q, k) → K, V rows into the
 *   sequence's cache slots → causal attention per segment over its blocks →
 *   wo → + x → rmsnorm → silu(gate) · up → down → + x.
 * Then the final rmsnorm and the output matmul, only for the rows whose
 * logits are asked for. Matmuls run once per weight over all rows.
 *
 * The caller reserves the cache blocks (ms_kvcache_seq_reserve) before the
 * pass; the pass writes K/V but does not advance the sequences.
 */
#ifndef MS_LLM_H
#define MS_LLM_H

#include "backend.h"
#include "kvcache.h"
#include "model.h"

#define MS_LLM_ROW_EMBD (-1) /* batch token entry: take the next row of embd */

typedef struct ms_llm_batch {
    int n_rows;              /* rows in the pass (<= max_rows of the ms_llm) */
    const int32_t *tokens;   /* n_rows: token ids, or MS_LLM_ROW_EMBD */
    const float *embd;       /* host, one n_embd row per MS_LLM_ROW_EMBD entry, in order; or NULL */
    int n_segs;              /* segments */
    ms_seq *const *seqs;     /* n_segs sequences, each once */
    const int *seg_rows;     /* n_segs row counts, summing to n_rows */
    int n_out;               /* rows whose logits are wanted */
    const int32_t *out_rows; /* n_out row indices (ascending not required) */
} ms_llm_batch;

typedef struct ms_llm ms_llm;

/* Scratch for passes of up to max_rows rows, in backend memory. NULL + err. */
ms_llm *ms_llm_new(const ms_lm *lm, ms_backend *be, int max_rows, char *err, size_t err_size);
void ms_llm_destroy(ms_llm **l_p);
int ms_llm_max_rows(const ms_llm *l);

/* Runs one pass; logits (host) receives (n_out, n_vocab). The batch must be
 * valid (token ids in range, blocks reserved): violations are programmer
 * errors and assert. */
void ms_llm_forward(ms_llm *l, ms_kvcache *kv, const ms_llm_batch *b, float *logits);

#endif
