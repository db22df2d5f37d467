/* prompt.h — how a multimodal prompt is represented between chat templating,
 * the engine and the wire.
 *
 * A prompt is a flat array of int32: values >= 0 are token ids; a negative
 * value MS_PROMPT_IMAGE(k) stands for all n_image_tokens embeddings of the
 * request's image k (0-based, in the order the images were given). The engine
 * expands it at prefill; positions advance by n_image_tokens.
 */
#ifndef MS_PROMPT_H
#define MS_PROMPT_H

#include <stdint.h>

#define MS_PROMPT_IMAGE(k)        (-(int32_t)(k) - 1)
#define MS_PROMPT_IS_IMAGE(id)    ((id) < 0)
#define MS_PROMPT_IMAGE_INDEX(id) (-(id) - 1)
#define MS_MAX_IMAGES_PER_PROMPT  64 /* images one prompt may reference */

#endif
