/* ms_test.c — see ms_test.h. */
#include "ms_test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *s_env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

const char *ms_test_source_dir(void) { return s_env("MS_SOURCE_DIR", ".."); }
const char *ms_test_shared_dir(void) { return s_env("MS_SHARED_DIR", "../../shared"); }
const char *ms_test_models_dir(void) { return s_env("MS_TEST_MODELS", "test-models"); }
const char *ms_test_bin_dir(void) { return s_env("MS_BIN_DIR", "bin"); }

const char *ms_test_path(const char *dir, const char *name) {
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

double ms_test_nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? num / den : num;
}

/* ---- redis-server for integration tests ------------------------------- */

#define S_REDIS_READY_MS 5000 /* wait this long for a new server to answer PING */
#define S_REDIS_ATTEMPTS 8    /* port collisions / a port not yet free after a kill */

static void s_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int s_connect_loopback(int port, int timeout_ms) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int ms_test_redis_cmd(int port, const char *const *argv, int argc, char *reply, size_t reply_size) {
    int fd = s_connect_loopback(port, 2000);
    if (fd < 0) return -1;
    size_t cap = 64, len = 0;
    for (int i = 0; i < argc; i++)
        cap += strlen(argv[i]) + 32;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return -1;
    }
    len += (size_t)snprintf(buf + len, cap - len, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);
        len += (size_t)snprintf(buf + len, cap - len, "$%zu\r\n", n);
        memcpy(buf + len, argv[i], n);
        len += n;
        memcpy(buf + len, "\r\n", 2);
        len += 2;
    }
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0;) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            rc = -1;
        else
            off += (size_t)w;
    }
    free(buf);
    size_t got = 0;
    char line[1024];
    while (rc == 0 && got < sizeof line - 1) {
        ssize_t r = recv(fd, line + got, 1, 0);
        if (r <= 0) {
            rc = -1;
            break;
        }
        if (line[got] == '\n') break;
        got++;
    }
    close(fd);
    if (rc < 0) return -1;
    if (got > 0 && line[got - 1] == '\r') got--;
    line[got] = 0;
    if (reply && reply_size) {
        size_t k = got < reply_size - 1 ? got : reply_size - 1;
        memcpy(reply, line, k);
        reply[k] = 0;
    }
    return 0;
}

static int s_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Spawns redis-server on r->port and waits for PING. 0, or -1 (the child is
 * reaped) if it exited (port taken) or did not answer in time. */
static int s_redis_spawn(ms_test_redis *r) {
    char port[16], log[sizeof r->dir + 16];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    const char *bin = getenv("MS_REDIS_SERVER");
    if (!bin || !*bin) bin = "redis-server";
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execlp(bin, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", r->dir, "--daemonize", "no", "--protected-mode", "no", "--logfile", "",
               (char *)NULL);
        _exit(127);
    }
    for (int waited = 0; waited < S_REDIS_READY_MS; waited += 10) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) return -1; /* exited: bind failed? */
        const char *ping[] = {"PING"};
        char reply[64];
        if (ms_test_redis_cmd(r->port, ping, 1, reply, sizeof reply) == 0 &&
            strcmp(reply, "+PONG") == 0) {
            r->pid = (int)pid;
            return 0;
        }
        s_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int ms_test_redis_start(ms_test_redis *r) {
    if (r->pid) return r->port; /* already running */
    if (!r->dir[0]) {
        snprintf(r->dir, sizeof r->dir, "/tmp/ms-redis-XXXXXX");
        if (!mkdtemp(r->dir)) {
            fprintf(stderr, "ms_test_redis_start: mkdtemp: %s\n", strerror(errno));
            r->dir[0] = 0;
            return -1;
        }
    }
    int fixed = r->port > 0; /* restart: keep the port */
    for (int attempt = 0; attempt < S_REDIS_ATTEMPTS; attempt++) {
        if (!fixed) r->port = s_free_port();
        if (r->port > 0 && s_redis_spawn(r) == 0) return r->port;
        s_sleep_ms(fixed ? 100 : 10);
    }
    fprintf(stderr,
            "ms_test_redis_start: redis-server did not come up on port %d (see %s/redis.log)\n",
            r->port, r->dir);
    return -1;
}

int ms_test_redis_kill(ms_test_redis *r) {
    if (!r->pid) return -1;
    kill((pid_t)r->pid, SIGKILL);
    waitpid((pid_t)r->pid, NULL, 0);
    r->pid = 0;
    return 0;
}

int ms_test_redis_restart(ms_test_redis *r) {
    if (r->port <= 0) return -1;
    ms_test_redis_kill(r);
    return ms_test_redis_start(r);
}

void ms_test_redis_stop(ms_test_redis *r) {
    ms_test_redis_kill(r);
    if (r->dir[0]) {
        DIR *d = opendir(r->dir);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                char path[sizeof r->dir + 272];
                snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
                unlink(path);
            }
            closedir(d);
        }
        rmdir(r->dir);
    }
    memset(r, 0, sizeof *r);
}
