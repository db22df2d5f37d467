/* ms_test.h — helpers shared by the Criterion tests.
 * ctest passes the locations below as environment variables (CMakeLists.txt). */
#ifndef MS_TEST_H
#define MS_TEST_H

#include <stddef.h>

/* Paths from the environment, with a sensible default when run by hand from build/. */
const char *ms_test_source_dir(void); /* MS_SOURCE_DIR: repository root */
const char *ms_test_shared_dir(void); /* MS_SHARED_DIR: ../shared (traces, tokenizers) */
const char *ms_test_models_dir(void); /* MS_TEST_MODELS: generated tiny models */
const char *ms_test_bin_dir(void);    /* MS_BIN_DIR: build/bin */
/* Joins dir and name into a static thread-unsafe buffer (tests are single-threaded). */
const char *ms_test_path(const char *dir, const char *name);
/* Normalised mean squared error: sum((a-b)^2) / sum(b^2) (b the reference). */
double ms_test_nmse(const float *a, const float *b, size_t n);

#endif
