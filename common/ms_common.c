/* ms_common.c — see ms_common.h. */
#define _POSIX_C_SOURCE 200809L
#include "ms_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int ms_errf(char *err, size_t err_size, const char *fmt, ...) {
    if (err && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int s_log_level = -1;

static int s_level_from_env(void) {
    const char *v = getenv("MS_LOG");
    if (!v) return MS_LOG_INFO;
    if (!strcmp(v, "error")) return MS_LOG_ERROR;
    if (!strcmp(v, "warn")) return MS_LOG_WARN;
    if (!strcmp(v, "debug")) return MS_LOG_DEBUG;
    return MS_LOG_INFO;
}

void ms_log(ms_log_level level, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (s_log_level < 0) s_log_level = s_level_from_env();
    if ((int)level > s_log_level) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %-5s ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

int64_t ms_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

double ms_now_s(void) { return (double)ms_now_ns() * 1e-9; }

static void s_oom(size_t n) {
    fprintf(stderr, "modserve: out of memory allocating %zu bytes\n", n);
    abort();
}

void *ms_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) s_oom(n);
    return p;
}

void *ms_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) s_oom(n * size);
    return p;
}

void *ms_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) s_oom(n);
    return q;
}

char *ms_xstrdup(const char *s) { return ms_xstrndup(s, strlen(s)); }

char *ms_xstrndup(const char *s, size_t n) {
    char *p = ms_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

uint8_t *ms_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ms_errf(err, err_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        ms_errf(err, err_size, "%s: not a regular file", path);
        return NULL;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        ms_errf(err, err_size, "%s: %lld bytes is over the limit of %zu", path,
                (long long)st.st_size, max_bytes);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = ms_xmalloc(n + 1);
    if (n && fread(buf, 1, n, f) != n) {
        fclose(f);
        free(buf);
        ms_errf(err, err_size, "%s: short read", path);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

uint64_t ms_hash64(const void *data, size_t n) {
    /* Four independent 64-bit lanes over 32-byte stripes (multiply-rotate, as
     * xxHash's inner loop), then the tail byte by byte and a splitmix
     * finaliser: ~8x the speed of byte-wise FNV on image-sized inputs. */
    const uint8_t *p = data;
    const uint64_t k1 = 0x9e3779b185ebca87ULL, k2 = 0xc2b2ae3d27d4eb4fULL;
    uint64_t v[4] = {k1 + k2, k2, 0, 0 - k1};
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int l = 0; l < 4; l++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * l, 8);
            v[l] += w * k2;
            v[l] = (v[l] << 31) | (v[l] >> 33);
            v[l] *= k1;
        }
    }
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;
    for (int l = 0; l < 4; l++) h = (h ^ v[l]) * 0x100000001b3ULL + ((v[l] << 27) | (v[l] >> 37));
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}
