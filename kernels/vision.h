/* vision.h — the CLIP-style vision tower and the mlp projector (mmproj).
 *
 * Encode, per image (pixels planar CHW, S × S):
 *   patches (im2col, n_patches rows of 3·p·p, element (kx, ky, c) at
 *   kx + p·(ky + p·c) as v.patch_embd.weight {p, p, 3, n_embd} is laid out)
 *   → matmul with the patch weight viewed as {3·p·p, n_embd} (+ bias)
 *   → [class token] prepended → + position embeddings → pre-LN
 *   → blocks: LN1 → q, k, v (+ biases) → full attention → out proj → + x
 *             → LN2 → fc1 (+ b) → GELU / quick GELU → fc2 (+ b) → + x
 *   → post-LN (if present) → class token dropped → features
 *     (n_image_tokens rows of n_embd).
 * Project: features → mm.0 (+ b) → GELU → mm.2 (+ b) → rows of proj_dim.
 *
 * Several images are batched in one pass (matmuls over all their rows,
 * attention per image). Inputs and outputs are host memory.
 */
#ifndef MS_VISION_H
#define MS_VISION_H

#include "backend.h"
#include "model.h"

typedef struct ms_vision ms_vision;

/* Scratch for batches of max_images images; makes the patch-weight view and
 * prepares it with the backend. NULL + err. */
ms_vision *ms_vision_new(const ms_vit *vit, ms_backend *be, int max_images, char *err,
                         size_t err_size);
void ms_vision_destroy(ms_vision **v_p);

/* The 2-D view {3·p·p, n_embd} of the patch weight (for weight preparation). */
ms_tensor *ms_vision_patch_weight(ms_vision *v);

/* pixels (n_images, 3, S, S) → features (n_images, n_image_tokens, n_embd).
 * Any n_images >= 0 (processed max_images at a time). */
void ms_vision_encode(ms_vision *v, const float *pixels, int n_images, float *features);
/* features (n_rows, n_embd) → embd (n_rows, proj_dim). */
void ms_vision_project(ms_vision *v, const float *features, int n_rows, float *embd);

#endif
