/* ms_common.h — small utilities shared by every area of modserve.
 *
 * Error convention (STYLE.md §3): functions return 0 on success and -1 on
 * failure; a function that can fail for reasons a person must read takes an
 * error buffer (`char *err, size_t err_size`) and writes one line into it that
 * says what was wrong and with which input. ms_errf() is the one way to fill it.
 */
#ifndef MS_COMMON_H
#define MS_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define MS_ERR_SIZE 512 /* size of the error buffers callers usually pass */

#if defined(__GNUC__)
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS_PRINTF(a, b)
#endif

/* Writes a formatted message into err (if err is non-NULL) and returns -1, so
 * that error paths read `return ms_errf(err, n, "...", ...);`. */
int ms_errf(char *err, size_t err_size, const char *fmt, ...) MS_PRINTF(3, 4);

/* Log levels for ms_log(); the level is read once from MS_LOG (error, warn,
 * info, debug), default info. Messages go to stderr with a timestamp. */
typedef enum { MS_LOG_ERROR = 0, MS_LOG_WARN, MS_LOG_INFO, MS_LOG_DEBUG } ms_log_level;
void ms_log(ms_log_level level, const char *fmt, ...) MS_PRINTF(2, 3);
#define ms_error(...) ms_log(MS_LOG_ERROR, __VA_ARGS__)
#define ms_warn(...)  ms_log(MS_LOG_WARN, __VA_ARGS__)
#define ms_info(...)  ms_log(MS_LOG_INFO, __VA_ARGS__)
#define ms_debug(...) ms_log(MS_LOG_DEBUG, __VA_ARGS__)

/* Monotonic clock in nanoseconds / seconds. */
int64_t ms_now_ns(void);
double ms_now_s(void);

/* Allocation that aborts on out-of-memory (a programmer-visible condition in
 * this codebase: sizes from outside are validated before they reach here). */
void *ms_xmalloc(size_t n);
void *ms_xcalloc(size_t n, size_t size);
void *ms_xrealloc(void *p, size_t n);
char *ms_xstrdup(const char *s);
char *ms_xstrndup(const char *s, size_t n);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for convenience,
 * the terminator not counted in *len). Returns NULL and fills err on failure;
 * files larger than max_bytes are refused. */
uint8_t *ms_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t err_size);

/* A fast 64-bit content hash (not cryptographic): 4-lane multiply-rotate over
 * 32-byte stripes, FNV-1a over the tail, splitmix finaliser. */
uint64_t ms_hash64(const void *data, size_t n);

#define MS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MS_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define MS_MAX(a, b)    ((a) > (b) ? (a) : (b))

#endif
