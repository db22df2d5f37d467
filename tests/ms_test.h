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

/* ---- a real redis-server for integration tests (tests/itest_*.c) -------
 * Each test starts its own server on a free 127.0.0.1 port with its files in
 * a fresh temp dir, no persistence (`--save "" --appendonly no`: a restart
 * loses every key, like a crashed Redis without RDB/AOF). The binary is
 * $MS_REDIS_SERVER, else `redis-server` from PATH. The server dies with the
 * test process (PR_SET_PDEATHSIG), so a crashed or timed-out test leaves no
 * orphan; still, call ms_test_redis_stop() from a Criterion .fini:
 *
 *     static ms_test_redis g_redis;
 *     static void up(void) { cr_assert(ms_test_redis_start(&g_redis) > 0); }
 *     static void down(void) { ms_test_redis_stop(&g_redis); }
 *     Test(x, y, .init = up, .fini = down, .timeout = 60) { ... g_redis.port ... }
 *
 * (Give every test of a file the same .timeout: Criterion 2.4's runner leaks
 * 48 bytes, which fails the ASan build, when tests with different timeouts
 * run side by side under --jobs 2.) */
typedef struct {
    int port;      /* TCP port on 127.0.0.1; 0 before the first start */
    int pid;       /* server process id while running, else 0 */
    char dir[256]; /* its temp dir (log in dir/redis.log); "" before the first start */
} ms_test_redis;

/* Starts a server (r zeroed or stopped: new port + temp dir) and waits until
 * it answers PING. Returns the port, or -1 (reason on stderr). */
int ms_test_redis_start(ms_test_redis *r);
/* Kills the server (SIGKILL, a crash) and waits for it; keeps port and dir,
 * so ms_test_redis_restart() can bring it back. Returns 0, -1 if not running. */
int ms_test_redis_kill(ms_test_redis *r);
/* Kills the server if running and starts a fresh one on the SAME port (empty:
 * no persistence); waits for PING. Returns the port, or -1. */
int ms_test_redis_restart(ms_test_redis *r);
/* Kills the server, removes its temp dir and zeroes r. Safe on a zeroed r
 * and safe to call twice. */
void ms_test_redis_stop(ms_test_redis *r);
/* Sends one command (argv, argc words) to 127.0.0.1:port over a raw socket and
 * copies the first line of the reply (RESP, e.g. "+OK", ":1", "-ERR ...")
 * into reply. Returns 0, or -1 if the server cannot be reached. For tests that
 * must write raw (even garbage) data behind a client library's back. */
int ms_test_redis_cmd(int port, const char *const *argv, int argc, char *reply, size_t reply_size);

#endif
