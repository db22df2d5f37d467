/* fuzz_driver.c — runs a libFuzzer harness without libFuzzer.
 *
 * Usage: fuzz_X_replay CORPUS_DIR [N_MUTATIONS] [SEED]
 * Feeds every file of CORPUS_DIR to LLVMFuzzerTestOneInput, then N seeded
 * random mutations of them (bit flips, byte overwrites with boundary values,
 * truncations, insertions, splices) plus pure random buffers. A crash, a
 * sanitizer report or a hang (ctest timeout) fails the test. Deterministic
 * for a given seed, so a failure reproduces.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUTS     1024
#define MAX_INPUT_SIZE (4u << 20)

static uint64_t s_state;
static uint64_t s_rand(void) {
    s_state += 0x9e3779b97f4a7c15ULL;
    uint64_t z = s_state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t s_mutate(uint8_t *buf, size_t len, size_t cap, const uint8_t *other, size_t olen) {
    static const uint8_t interesting[] = {0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x20, 0x40};
    int rounds = 1 + (int)(s_rand() % 8);
    for (int r = 0; r < rounds; r++) {
        switch (s_rand() % 7) {
        case 0: if (len) buf[s_rand() % len] ^= (uint8_t)(1u << (s_rand() % 8)); break;
        case 1: if (len) buf[s_rand() % len] = interesting[s_rand() % sizeof interesting]; break;
        case 2: if (len) len = s_rand() % len; break; /* truncate */
        case 3: { /* insert random bytes */
            size_t n = 1 + s_rand() % 16, at = len ? s_rand() % len : 0;
            if (len + n > cap) break;
            memmove(buf + at + n, buf + at, len - at);
            for (size_t i = 0; i < n; i++) buf[at + i] = (uint8_t)s_rand();
            len += n;
            break;
        }
        case 4: { /* overwrite 8 bytes with a large/small integer */
            if (len < 8) break;
            size_t at = s_rand() % (len - 7);
            uint64_t v = (s_rand() & 1) ? UINT64_MAX - (s_rand() % 4) : (s_rand() % 4096);
            memcpy(buf + at, &v, 8);
            break;
        }
        case 5: { /* splice with another input */
            if (!olen || !len) break;
            size_t at = s_rand() % len, from = s_rand() % olen;
            size_t n = MS_MIN(olen - from, cap - at);
            memcpy(buf + at, other + from, n);
            len = MS_MAX(len, at + n);
            break;
        }
        default: { /* copy a chunk within */
            if (len < 2) break;
            size_t a = s_rand() % len, b = s_rand() % len, n = s_rand() % (len - MS_MAX(a, b));
            memmove(buf + a, buf + b, n);
            break;
        }
        }
    }
    return len;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR [N_MUTATIONS] [SEED]\n", argv[0]);
        return 2;
    }
    long n_mut = argc > 2 ? atol(argv[2]) : 10000;
    s_state = argc > 3 ? strtoull(argv[3], NULL, 10) : 20261124;

    uint8_t *inputs[MAX_INPUTS];
    size_t lens[MAX_INPUTS];
    int n_in = 0;
    DIR *d = opendir(argv[1]);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n_in < MAX_INPUTS) {
            if (e->d_name[0] == '.') continue;
            char path[4096], err[MS_ERR_SIZE];
            snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
            size_t len;
            uint8_t *buf = ms_read_file(path, MAX_INPUT_SIZE, &len, err, sizeof err);
            if (!buf) continue;
            LLVMFuzzerTestOneInput(buf, len);
            inputs[n_in] = buf;
            lens[n_in++] = len;
        }
        closedir(d);
    }
    printf("replayed %d corpus inputs from %s\n", n_in, argv[1]);

    size_t cap = 1;
    for (int i = 0; i < n_in; i++) cap = MS_MAX(cap, lens[i] + 4096);
    cap = MS_MAX(cap, (size_t)8192);
    uint8_t *buf = ms_xmalloc(cap);
    for (long i = 0; i < n_mut; i++) {
        size_t len;
        if (n_in == 0 || s_rand() % 16 == 0) {
            len = s_rand() % 512;
            for (size_t j = 0; j < len; j++) buf[j] = (uint8_t)s_rand();
        } else {
            int k = (int)(s_rand() % (uint64_t)n_in), o = (int)(s_rand() % (uint64_t)n_in);
            memcpy(buf, inputs[k], lens[k]);
            len = s_mutate(buf, lens[k], cap, inputs[o], lens[o]);
        }
        LLVMFuzzerTestOneInput(buf, len);
    }
    printf("%ld mutated inputs: no crash\n", n_mut);
    free(buf);
    for (int i = 0; i < n_in; i++) free(inputs[i]);
    return 0;
}
