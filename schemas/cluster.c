/* cluster.c — cluster files, run directory, process management, workload and
 * latency statistics for the local cluster (cluster.h). */
#define _GNU_SOURCE /* close_range */
#include "cluster.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "registry.h"
#include "engine.h"
#include "ms_common.h"

#define CL_LINE_MAX      2048 /* bytes of one cluster file line */
#define CL_POLL_MS       20   /* sleep between checks while waiting for a process */
#define CL_KILL_WAIT_MS  5000 /* wait for a SIGKILLed process to be gone */
#define CL_PIDFILE_MAX   4096 /* bytes of a pid file */
#define CL_UNIX_PATH_MAX 108  /* sun_path of a Unix socket, NUL included */

static const char *const s_stage_sets[] = {"encode", "prefill", "decode", "prefill+decode",
                                           "encode+prefill+decode"};

/* ---- small helpers ------------------------------------------------------------ */

static void s_copy(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static char *s_trim(char *s) {
    while (*s && isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static void s_sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool s_name_ok(const char *s) {
    if (!*s) return false;
    for (const char *p = s; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')) return false;
    return true;
}

/* Parses a whole decimal integer in [lo, hi]. */
static int s_parse_int(const char *v, long lo, long hi, int *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

/* ---- cluster file -------------------------------------------------------------- */

void ms_cluster_conf_default(ms_cluster_conf *c) {
    memset(c, 0, sizeof(*c));
    s_copy(c->layout, sizeof(c->layout), "modserve");
    c->port_base = MS_CLUSTER_PORT_BASE_DEFAULT;
    s_copy(c->data, sizeof(c->data), "tcp");
    s_copy(c->prefix, sizeof(c->prefix), "ms");
    s_copy(c->gateway_host, sizeof(c->gateway_host), MS_CLUSTER_GATEWAY_HOST_DEFAULT);
    c->gateway_port = MS_CLUSTER_GATEWAY_PORT_DEFAULT;
}

bool ms_cluster_stages_valid(const char *s) {
    for (size_t i = 0; i < MS_ARRAY_LEN(s_stage_sets); i++)
        if (strcmp(s, s_stage_sets[i]) == 0) return true;
    return false;
}

bool ms_cluster_stages_has(const char *stages, const char *stage) {
    size_t n = strlen(stage);
    const char *p = stages;
    while (*p) {
        const char *plus = strchr(p, '+');
        size_t len = plus ? (size_t)(plus - p) : strlen(p);
        if (len == n && strncmp(p, stage, n) == 0) return true;
        if (!plus) break;
        p = plus + 1;
    }
    return false;
}

ms_cluster_group *ms_cluster_group_find(ms_cluster_conf *c, const char *name) {
    for (int i = 0; i < c->n_groups; i++)
        if (strcmp(c->groups[i].name, name) == 0) return &c->groups[i];
    ms_cluster_group *found = NULL;
    for (int i = 0; i < c->n_groups; i++) {
        if (strcmp(c->groups[i].stages, name) != 0) continue;
        if (found) return NULL; /* ambiguous */
        found = &c->groups[i];
    }
    return found;
}

typedef enum {
    SEC_NONE,
    SEC_CLUSTER,
    SEC_BROKER,
    SEC_MODELS,
    SEC_RUN,
    SEC_GROUP,
    SEC_GATEWAY
} cl_section;

typedef struct cl_parser {
    ms_cluster_conf *c;
    const char *name; /* file name for messages */
    int line;         /* current line number */
    cl_section sec;
    ms_cluster_group *group; /* current [group] */
    unsigned seen;           /* keys seen in the current section (bit per key) */
    unsigned sections_seen;  /* bit per cl_section (groups excluded) */
    char *err;
    size_t err_size;
} cl_parser;

/* Fills the error buffer with "FILE:LINE: message" and returns -1. */
static int s_perr(cl_parser *p, const char *fmt, ...) MS_PRINTF(2, 3);
static int s_perr(cl_parser *p, const char *fmt, ...) {
    char msg[MS_ERR_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return ms_errf(p->err, p->err_size, "%s:%d: %s", p->name, p->line, msg);
}
#define PERR s_perr

/* Marks key number k as seen in this section; -1 if it was already. */
static int s_once(cl_parser *p, int k, const char *key) {
    if (p->seen & (1u << k)) return PERR(p, "duplicate key '%s'", key);
    p->seen |= 1u << k;
    return 0;
}

static int s_set_str(cl_parser *p, char *dst, size_t size, const char *key, const char *v) {
    if (strlen(v) >= size) return PERR(p, "%s: value too long (at most %zu bytes)", key, size - 1);
    s_copy(dst, size, v);
    return 0;
}

static int s_set_int(cl_parser *p, int *dst, const char *key, const char *v, long lo, long hi) {
    if (s_parse_int(v, lo, hi, dst) != 0)
        return PERR(p, "%s: expected an integer in [%ld, %ld], got '%s'", key, lo, hi, v);
    return 0;
}

static int s_section(cl_parser *p, char *head) {
    size_t n = strlen(head);
    if (n < 2 || head[n - 1] != ']') return PERR(p, "malformed section header '%s'", head);
    head[n - 1] = '\0';
    char *s = s_trim(head + 1);
    p->seen = 0;
    p->group = NULL;
    if (strncmp(s, "group", 5) == 0 && (s[5] == ' ' || s[5] == '\t')) {
        char *gname = s_trim(s + 5);
        if (!s_name_ok(gname) || strlen(gname) >= MS_CLUSTER_NAME_MAX)
            return PERR(p, "group name '%s' must be 1-%d characters of [a-z0-9_]", gname,
                        MS_CLUSTER_NAME_MAX - 1);
        for (int i = 0; i < p->c->n_groups; i++)
            if (strcmp(p->c->groups[i].name, gname) == 0)
                return PERR(p, "duplicate group '%s'", gname);
        if (p->c->n_groups >= MS_CLUSTER_MAX_GROUPS)
            return PERR(p, "too many groups (at most %d)", MS_CLUSTER_MAX_GROUPS);
        ms_cluster_group *g = &p->c->groups[p->c->n_groups++];
        memset(g, 0, sizeof(*g));
        s_copy(g->name, sizeof(g->name), gname);
        g->count = 1;
        g->threads = 1;
        p->group = g;
        p->sec = SEC_GROUP;
        return 0;
    }
    cl_section sec;
    if (strcmp(s, "cluster") == 0)
        sec = SEC_CLUSTER;
    else if (strcmp(s, "broker") == 0)
        sec = SEC_BROKER;
    else if (strcmp(s, "models") == 0)
        sec = SEC_MODELS;
    else if (strcmp(s, "run") == 0)
        sec = SEC_RUN;
    else if (strcmp(s, "gateway") == 0)
        sec = SEC_GATEWAY;
    else
        return PERR(p, "unknown section [%s] (cluster, broker, gateway, models, run, group NAME)",
                    s);
    if (p->sections_seen & (1u << sec)) return PERR(p, "duplicate section [%s]", s);
    p->sections_seen |= 1u << sec;
    p->sec = sec;
    if (sec == SEC_GATEWAY) p->c->gateway = true;
    return 0;
}

static int s_key(cl_parser *p, const char *key, const char *v) {
    ms_cluster_conf *c = p->c;
    switch (p->sec) {
    case SEC_NONE:
        return PERR(p, "'%s' outside a section", key);
    case SEC_CLUSTER:
        if (strcmp(key, "layout") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            if (strcmp(v, "modserve") != 0 && strcmp(v, "monolith") != 0 &&
                strcmp(v, "disagg") != 0)
                return PERR(p, "layout: expected modserve, monolith or disagg, got '%s'", v);
            return s_set_str(p, c->layout, sizeof(c->layout), key, v);
        }
        if (strcmp(key, "port_base") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            return s_set_int(p, &c->port_base, key, v, 1024, 65535 - MS_CLUSTER_PORT_SPAN);
        }
        if (strcmp(key, "data") == 0) {
            if (s_once(p, 2, key) != 0) return -1;
            if (strcmp(v, "tcp") != 0 && strcmp(v, "ipc") != 0)
                return PERR(p, "data: expected tcp or ipc, got '%s'", v);
            return s_set_str(p, c->data, sizeof(c->data), key, v);
        }
        if (strcmp(key, "prefix") == 0) {
            if (s_once(p, 3, key) != 0) return -1;
            if (!s_name_ok(v)) return PERR(p, "prefix: expected [a-z0-9_]+, got '%s'", v);
            return s_set_str(p, c->prefix, sizeof(c->prefix), key, v);
        }
        break;
    case SEC_BROKER:
        if (strcmp(key, "profile") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            return s_set_str(p, c->profile, sizeof(c->profile), key, v);
        }
        if (strcmp(key, "args") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            return s_set_str(p, c->broker_args, sizeof(c->broker_args), key, v);
        }
        break;
    case SEC_MODELS:
        if (strcmp(key, "lm") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            return s_set_str(p, c->lm, sizeof(c->lm), key, v);
        }
        if (strcmp(key, "mmproj") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            return s_set_str(p, c->mmproj, sizeof(c->mmproj), key, v);
        }
        break;
    case SEC_GATEWAY:
        if (strcmp(key, "listen") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            char host[MS_CLUSTER_HOST_MAX], why[MS_ERR_SIZE];
            int port = 0;
            if (ms_cluster_split_listen(v, host, sizeof(host), &port, why, sizeof(why)) != 0)
                return PERR(p, "listen: %s", why);
            s_copy(c->gateway_host, sizeof(c->gateway_host), host);
            c->gateway_port = port;
            return 0;
        }
        if (strcmp(key, "model_name") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            if (!ms_cluster_model_name_ok(v))
                return PERR(p, "model_name: expected [A-Za-z0-9._:/-]+, got '%s'", v);
            return s_set_str(p, c->gateway_model, sizeof(c->gateway_model), key, v);
        }
        if (strcmp(key, "args") == 0) {
            if (s_once(p, 2, key) != 0) return -1;
            return s_set_str(p, c->gateway_args, sizeof(c->gateway_args), key, v);
        }
        break;
    case SEC_RUN:
        if (strcmp(key, "next_seq") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            return s_set_int(p, &c->next_seq, key, v, 0, MS_CLUSTER_MAX_SEQ);
        }
        if (strcmp(key, "bin_dir") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            return s_set_str(p, c->bin_dir, sizeof(c->bin_dir), key, v);
        }
        break;
    case SEC_GROUP: {
        ms_cluster_group *g = p->group;
        if (strcmp(key, "stages") == 0) {
            if (s_once(p, 0, key) != 0) return -1;
            if (!ms_cluster_stages_valid(v))
                return PERR(p,
                            "stages: expected encode, prefill, decode, prefill+decode or "
                            "encode+prefill+decode, got '%s'",
                            v);
            return s_set_str(p, g->stages, sizeof(g->stages), key, v);
        }
        if (strcmp(key, "count") == 0) {
            if (s_once(p, 1, key) != 0) return -1;
            return s_set_int(p, &g->count, key, v, 0, MS_CLUSTER_MAX_GROUP_ACTORS);
        }
        if (strcmp(key, "threads") == 0) {
            if (s_once(p, 2, key) != 0) return -1;
            return s_set_int(p, &g->threads, key, v, 1, MS_CLUSTER_MAX_THREADS);
        }
        if (strcmp(key, "kv_tokens") == 0) {
            if (s_once(p, 3, key) != 0) return -1;
            return s_set_int(p, &g->kv_tokens, key, v, 0, INT_MAX / 2);
        }
        if (strcmp(key, "vit_batch") == 0) {
            if (s_once(p, 4, key) != 0) return -1;
            return s_set_int(p, &g->vit_batch, key, v, 0, 1024);
        }
        if (strcmp(key, "args") == 0) {
            if (s_once(p, 5, key) != 0) return -1;
            return s_set_str(p, g->args, sizeof(g->args), key, v);
        }
        if (strcmp(key, "started") == 0) {
            if (s_once(p, 6, key) != 0) return -1;
            return s_set_int(p, &g->started, key, v, 0, MS_CLUSTER_MAX_SEQ);
        }
        break;
    }
    }
    return PERR(p, "unknown key '%s' in this section", key);
}

int ms_cluster_conf_parse(ms_cluster_conf *c, const char *text, size_t len, const char *name,
                          char *err, size_t err_size) {
    cl_parser p = {.c = c, .name = name ? name : "cluster file", .err = err, .err_size = err_size};
    if (len > MS_CLUSTER_FILE_MAX)
        return ms_errf(err, err_size, "%s: larger than %d bytes", p.name, MS_CLUSTER_FILE_MAX);
    if (memchr(text, '\0', len)) return ms_errf(err, err_size, "%s: contains a NUL byte", p.name);
    size_t pos = 0;
    char line[CL_LINE_MAX];
    while (pos < len) {
        p.line++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        if (n >= sizeof(line)) return PERR(&p, "line longer than %d bytes", CL_LINE_MAX - 1);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos += n + (nl ? 1 : 0);
        /* a comment starts at '#' at the line start or after whitespace */
        for (char *h = line; (h = strchr(h, '#')) != NULL; h++) {
            if (h == line || isspace((unsigned char)h[-1])) {
                *h = '\0';
                break;
            }
        }
        char *s = s_trim(line);
        if (*s == '\0') continue;
        if (*s == '[') {
            if (s_section(&p, s) != 0) return -1;
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) return PERR(&p, "expected 'key = value' or '[section]', got '%s'", s);
        *eq = '\0';
        char *key = s_trim(s);
        char *val = s_trim(eq + 1);
        if (*key == '\0') return PERR(&p, "missing key before '='");
        if (s_key(&p, key, val) != 0) return -1;
    }
    for (int i = 0; i < c->n_groups; i++)
        if (c->groups[i].stages[0] == '\0')
            return ms_errf(err, err_size, "%s: group '%s' has no 'stages'", p.name,
                           c->groups[i].name);
    char verr[MS_ERR_SIZE];
    if (ms_cluster_conf_validate(c, verr, sizeof(verr)) != 0)
        return ms_errf(err, err_size, "%s: %s", p.name, verr);
    return 0;
}

/* A relative path value read from file `path` is made relative to its folder. */
static void s_rebase(char *value, size_t size, const char *before, const char *path) {
    if (value[0] == '\0' || value[0] == '/' || strcmp(value, before) == 0) return;
    const char *slash = strrchr(path, '/');
    if (!slash) return;
    char tmp[MS_CLUSTER_PATH_MAX * 2];
    snprintf(tmp, sizeof(tmp), "%.*s/%s", (int)(slash - path), path, value);
    if (strlen(tmp) < size) s_copy(value, size, tmp);
}

int ms_cluster_conf_load(ms_cluster_conf *c, const char *path, char *err, size_t err_size) {
    size_t len = 0;
    uint8_t *text = ms_read_file(path, MS_CLUSTER_FILE_MAX, &len, err, err_size);
    if (!text) return -1;
    char lm[MS_CLUSTER_PATH_MAX], mm[MS_CLUSTER_PATH_MAX], prof[MS_CLUSTER_PATH_MAX];
    s_copy(lm, sizeof(lm), c->lm);
    s_copy(mm, sizeof(mm), c->mmproj);
    s_copy(prof, sizeof(prof), c->profile);
    int rc = ms_cluster_conf_parse(c, (const char *)text, len, path, err, err_size);
    free(text);
    if (rc != 0) return -1;
    s_rebase(c->lm, sizeof(c->lm), lm, path);
    s_rebase(c->mmproj, sizeof(c->mmproj), mm, path);
    s_rebase(c->profile, sizeof(c->profile), prof, path);
    return 0;
}

int ms_cluster_conf_validate(const ms_cluster_conf *c, char *err, size_t err_size) {
    if (c->n_groups == 0) return ms_errf(err, err_size, "no [group NAME] section");
    bool enc = false, pre = false, dec = false;
    for (int i = 0; i < c->n_groups; i++) {
        const ms_cluster_group *g = &c->groups[i];
        if (!ms_cluster_stages_valid(g->stages))
            return ms_errf(err, err_size, "group '%s': invalid stages '%s'", g->name, g->stages);
        bool e = ms_cluster_stages_has(g->stages, "encode");
        enc |= e;
        pre |= ms_cluster_stages_has(g->stages, "prefill");
        dec |= ms_cluster_stages_has(g->stages, "decode");
        if (e && g->count > 0 && c->lm[0] && !c->mmproj[0])
            return ms_errf(err, err_size,
                           "group '%s' encodes images: the cluster needs an mmproj model", g->name);
    }
    if (!pre || !dec)
        return ms_errf(err, err_size, "no group runs the %s stage", pre ? "decode" : "prefill");
    if (c->mmproj[0] && !enc)
        return ms_errf(err, err_size, "an mmproj model is given but no group runs 'encode'");
    return 0;
}

int ms_cluster_conf_write(const ms_cluster_conf *c, FILE *f) {
    fprintf(f, "# modserve cluster file (docs/cluster.md)\n");
    fprintf(f, "[cluster]\nlayout = %s\nport_base = %d\ndata = %s\nprefix = %s\n\n", c->layout,
            c->port_base, c->data, c->prefix);
    if (c->profile[0] || c->broker_args[0]) {
        fprintf(f, "[broker]\n");
        if (c->profile[0]) fprintf(f, "profile = %s\n", c->profile);
        if (c->broker_args[0]) fprintf(f, "args = %s\n", c->broker_args);
        fprintf(f, "\n");
    }
    if (c->lm[0] || c->mmproj[0]) {
        fprintf(f, "[models]\n");
        if (c->lm[0]) fprintf(f, "lm = %s\n", c->lm);
        if (c->mmproj[0]) fprintf(f, "mmproj = %s\n", c->mmproj);
        fprintf(f, "\n");
    }
    if (c->gateway) {
        fprintf(f, "[gateway]\nlisten = %s:%d\n", c->gateway_host, c->gateway_port);
        if (c->gateway_model[0]) fprintf(f, "model_name = %s\n", c->gateway_model);
        if (c->gateway_args[0]) fprintf(f, "args = %s\n", c->gateway_args);
        fprintf(f, "\n");
    }
    fprintf(f, "[run]\nnext_seq = %d\n", c->next_seq);
    if (c->bin_dir[0]) fprintf(f, "bin_dir = %s\n", c->bin_dir);
    for (int i = 0; i < c->n_groups; i++) {
        const ms_cluster_group *g = &c->groups[i];
        fprintf(f, "\n[group %s]\nstages = %s\ncount = %d\nthreads = %d\n", g->name, g->stages,
                g->count, g->threads);
        if (g->kv_tokens) fprintf(f, "kv_tokens = %d\n", g->kv_tokens);
        if (g->vit_batch) fprintf(f, "vit_batch = %d\n", g->vit_batch);
        if (g->args[0]) fprintf(f, "args = %s\n", g->args);
        if (g->started) fprintf(f, "started = %d\n", g->started);
    }
    return ferror(f) ? -1 : 0;
}

int ms_cluster_conf_save(const ms_cluster_conf *c, const char *path, char *err, size_t err_size) {
    char tmp[MS_CLUSTER_PATH_MAX + 16];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return ms_errf(err, err_size, "%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ms_errf(err, err_size, "%s: %s", tmp, strerror(errno));
    int rc = ms_cluster_conf_write(c, f);
    if (fclose(f) != 0) rc = -1;
    if (rc != 0) {
        unlink(tmp);
        return ms_errf(err, err_size, "%s: write failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return ms_errf(err, err_size, "%s: %s", path, strerror(e));
    }
    return 0;
}

/* ---- endpoints -------------------------------------------------------------------- */

int ms_cluster_redis_port(const ms_cluster_conf *c) {
    return c->port_base;
}

void ms_cluster_front_ep(const ms_cluster_conf *c, char *buf, size_t size) {
    snprintf(buf, size, "tcp://127.0.0.1:%d", c->port_base + 1);
}

void ms_cluster_back_ep(const ms_cluster_conf *c, char *buf, size_t size) {
    snprintf(buf, size, "tcp://127.0.0.1:%d", c->port_base + 2);
}

int ms_cluster_data_ep(const ms_cluster_conf *c, const char *rundir, const char *id, int seq,
                       char *buf, size_t size) {
    (void)seq;
    int n;
    if (strcmp(c->data, "ipc") == 0) {
        n = snprintf(buf, size, "ipc://%s/sock/%s.data", rundir, id);
        if (n > 0 && (size_t)n - strlen("ipc://") >= CL_UNIX_PATH_MAX) return -1;
    } else {
        n = snprintf(buf, size, "tcp://127.0.0.1:0");
    }
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

static bool s_port_free(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

bool ms_cluster_port_listening(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc;
    do {
        rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    } while (rc != 0 && errno == EINTR);
    close(fd);
    return rc == 0;
}

int ms_cluster_find_port_base(int start, char *err, size_t err_size) {
    for (int base = MS_MAX(start, 1024); base + MS_CLUSTER_PORT_SPAN <= 65535;
         base += MS_CLUSTER_PORT_SPAN) {
        bool ok = true;
        for (int i = 0; ok && i < MS_CLUSTER_PORT_SPAN; i++)
            ok = s_port_free(base + i);
        if (ok) return base;
    }
    return ms_errf(err, err_size, "no free port range at or above %d", start);
}

/* ---- processes ----------------------------------------------------------------------- */

long long ms_proc_start_time(pid_t pid) {
    if (pid <= 0) return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    if (!p) return -1;
    p++;
    char state = 0;
    long long start = -1;
    /* fields after comm: 3 state, ..., 22 starttime */
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (!*p) return -1;
        if (field == 3) state = *p;
        if (field == 22) start = strtoll(p, NULL, 10);
        while (*p && *p != ' ')
            p++;
    }
    if (state == 'Z' || state == 'X') return -1;
    return start;
}

bool ms_proc_alive(const ms_proc *p) {
    long long st = ms_proc_start_time(p->pid);
    return st >= 0 && st == p->start;
}

int ms_proc_signal(const ms_proc *p, int sig) {
    if (!ms_proc_alive(p)) return -1;
    if (kill(-p->pid, sig) != 0 && kill(p->pid, sig) != 0) return -1;
    return 0;
}

int ms_proc_wait_gone(const ms_proc *p, int timeout_ms) {
    int64_t deadline = ms_now_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int status;
        while (waitpid(p->pid, &status, WNOHANG) > 0) {
        }
        if (!ms_proc_alive(p)) return 0;
        if (ms_now_ns() >= deadline) return -1;
        s_sleep_ms(CL_POLL_MS);
    }
}

int ms_proc_stop(const ms_proc *p, int grace_ms) {
    if (ms_proc_signal(p, SIGTERM) != 0) return ms_proc_wait_gone(p, 0) == 0 ? 0 : -1;
    if (ms_proc_wait_gone(p, grace_ms) == 0) return 0;
    ms_proc_signal(p, SIGKILL);
    return ms_proc_wait_gone(p, CL_KILL_WAIT_MS);
}

int ms_proc_spawn(ms_proc *p, char *const argv[], const char *log_path, char *err,
                  size_t err_size) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return ms_errf(err, err_size, "pipe: %s", strerror(errno));
    int logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return ms_errf(err, err_size, "%s: %s", log_path, strerror(e));
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        close(logfd);
        return ms_errf(err, err_size, "fork: %s", strerror(e));
    }
    if (pid == 0) {
        /* child: only async-signal-safe calls until exec */
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGQUIT};
        for (size_t i = 0; i < MS_ARRAY_LEN(sigs); i++)
            signal(sigs[i], SIG_DFL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        close_range(3, ~0U, CLOSE_RANGE_CLOEXEC); /* the error pipe is CLOEXEC already */
        execv(argv[0], argv);
        int e = errno;
        ssize_t w = write(pipefd[1], &e, sizeof(e));
        (void)w;
        _exit(127);
    }
    close(pipefd[1]);
    close(logfd);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof(child_errno)) {
        waitpid(pid, NULL, 0);
        return ms_errf(err, err_size, "cannot run %s: %s", argv[0], strerror(child_errno));
    }
    p->pid = pid;
    p->start = ms_proc_start_time(pid);
    if (p->start < 0) {
        /* it exited at once; the caller finds out from the log */
        p->start = 0;
    }
    return 0;
}

/* ---- pid files ------------------------------------------------------------------------ */

static int s_pid_path(const char *rundir, const char *name, char *buf, size_t size) {
    int n = snprintf(buf, size, "%s/pids/%s.pid", rundir, name);
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

int ms_pidfile_write(const char *rundir, const ms_proc *p, char *err, size_t err_size) {
    char path[MS_CLUSTER_PATH_MAX], tmp[MS_CLUSTER_PATH_MAX + 8];
    if (s_pid_path(rundir, p->name, path, sizeof(path)) != 0)
        return ms_errf(err, err_size, "%s: run directory path too long", rundir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ms_errf(err, err_size, "%s: %s", tmp, strerror(errno));
    fprintf(f, "name=%s\nrole=%s\ngroup=%s\nseq=%d\npid=%d\nstart=%lld\n", p->name, p->role,
            p->group, p->seq, (int)p->pid, p->start);
    int rc = ferror(f) ? -1 : 0;
    if (fclose(f) != 0) rc = -1;
    if (rc != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return ms_errf(err, err_size, "%s: cannot write", path);
    }
    return 0;
}

int ms_pidfile_read(const char *rundir, const char *name, ms_proc *p, char *err, size_t err_size) {
    char path[MS_CLUSTER_PATH_MAX];
    if (s_pid_path(rundir, name, path, sizeof(path)) != 0)
        return ms_errf(err, err_size, "%s: run directory path too long", rundir);
    size_t len = 0;
    char *text = (char *)ms_read_file(path, CL_PIDFILE_MAX, &len, err, err_size);
    if (!text) return -1;
    memset(p, 0, sizeof(*p));
    p->seq = -1;
    p->pid = 0;
    p->start = -1;
    unsigned have = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = line, *v = eq + 1;
        if (strcmp(k, "name") == 0 && strlen(v) < sizeof(p->name)) {
            s_copy(p->name, sizeof(p->name), v);
            have |= 1;
        } else if (strcmp(k, "role") == 0 && strlen(v) < sizeof(p->role)) {
            s_copy(p->role, sizeof(p->role), v);
            have |= 2;
        } else if (strcmp(k, "group") == 0 && strlen(v) < sizeof(p->group)) {
            s_copy(p->group, sizeof(p->group), v);
        } else if (strcmp(k, "seq") == 0) {
            s_parse_int(v, -1, MS_CLUSTER_MAX_SEQ, &p->seq);
        } else if (strcmp(k, "pid") == 0) {
            int pid = 0;
            if (s_parse_int(v, 1, INT_MAX, &pid) == 0) {
                p->pid = (pid_t)pid;
                have |= 4;
            }
        } else if (strcmp(k, "start") == 0) {
            p->start = strtoll(v, NULL, 10);
            have |= 8;
        }
    }
    free(text);
    if (have != 15) return ms_errf(err, err_size, "%s: malformed pid file", path);
    return 0;
}

int ms_pidfile_remove(const char *rundir, const char *name) {
    char path[MS_CLUSTER_PATH_MAX];
    if (s_pid_path(rundir, name, path, sizeof(path)) != 0) return -1;
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}

static int s_role_rank(const ms_proc *p) {
    if (strcmp(p->role, "redis") == 0) return 0;
    if (strcmp(p->role, "broker") == 0) return 1;
    if (strcmp(p->role, "gateway") == 0) return 2;
    return 3;
}

static int s_proc_cmp(const void *a, const void *b) {
    const ms_proc *x = a, *y = b;
    int rx = s_role_rank(x), ry = s_role_rank(y);
    if (rx != ry) return rx - ry;
    if (x->seq != y->seq) return x->seq - y->seq;
    return strcmp(x->name, y->name);
}

int ms_pidfile_list(const char *rundir, ms_proc *out, int max, char *err, size_t err_size) {
    char dir[MS_CLUSTER_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/pids", rundir);
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return ms_errf(err, err_size, "%s: %s", dir, strerror(errno));
    }
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < max) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".pid") != 0) continue;
        char name[MS_CLUSTER_ID_MAX];
        if (len - 4 >= sizeof(name)) continue;
        memcpy(name, de->d_name, len - 4);
        name[len - 4] = '\0';
        if (ms_pidfile_read(rundir, name, &out[n], NULL, 0) == 0) n++;
    }
    closedir(d);
    qsort(out, (size_t)n, sizeof(*out), s_proc_cmp);
    return n;
}

int ms_mkdirs(const char *path, char *err, size_t err_size) {
    char buf[MS_CLUSTER_PATH_MAX];
    if (strlen(path) >= sizeof(buf)) return ms_errf(err, err_size, "%s: path too long", path);
    s_copy(buf, sizeof(buf), path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ms_errf(err, err_size, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ms_errf(err, err_size, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

int ms_split_args(const char *s, char *buf, size_t size, char **argv, int max) {
    if (strlen(s) >= size) return -1;
    s_copy(buf, size, s);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (n >= max) return -1;
        argv[n++] = t;
    }
    return n;
}

/* ---- run directory and lifecycle ---------------------------------------------------- */

static bool s_file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* snprintf for paths: a path cut short is left cut (it then names no file,
 * and the open or exec that uses it reports that). */
static void s_pathf(char *buf, size_t size, const char *fmt, ...) MS_PRINTF(3, 4);
static void s_pathf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

/* realpath in place; the path must exist. */
static int s_abs(char *path, size_t size, char *err, size_t err_size) {
    char buf[PATH_MAX];
    if (!realpath(path, buf)) return ms_errf(err, err_size, "%s: %s", path, strerror(errno));
    if (strlen(buf) >= size) return ms_errf(err, err_size, "%s: path too long", buf);
    s_copy(path, size, buf);
    return 0;
}

/* The first executable `name` in $PATH (or /usr/bin), into out. */
static void s_which(const char *name, char *out, size_t size) {
    const char *path = getenv("PATH");
    char dirs[4096];
    s_copy(dirs, sizeof(dirs), path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        s_pathf(out, size, "%s/%s", d, name);
        if (access(out, X_OK) == 0) return;
    }
    s_pathf(out, size, "/usr/bin/%s", name);
}

void ms_cluster_log_path(const char *rundir, const char *name, char *buf, size_t size) {
    s_pathf(buf, size, "%s/logs/%s.log", rundir, name);
}

void ms_cluster_log_tail(const char *path, int max_lines, FILE *out) {
    if (!out || max_lines <= 0) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char **lines = ms_xcalloc((size_t)max_lines, sizeof(char *));
    char buf[1024];
    int n = 0;
    while (fgets(buf, sizeof(buf), f)) {
        free(lines[n % max_lines]);
        lines[n % max_lines] = ms_xstrdup(buf);
        n++;
    }
    fclose(f);
    fprintf(out, "---- last lines of %s ----\n", path);
    for (int i = n > max_lines ? n - max_lines : 0; i < n; i++)
        fputs(lines[i % max_lines], out);
    fprintf(out, "----\n");
    for (int i = 0; i < max_lines; i++)
        free(lines[i]);
    free(lines);
}

int ms_cluster_run_create(ms_cluster_run *r, const char *dir, char *err, size_t err_size) {
    memset(r, 0, sizeof(*r));
    ms_cluster_conf_default(&r->conf);
    static const char *const subdirs[] = {"pids", "logs", "redis", "sock"};
    if (ms_mkdirs(dir, err, err_size) != 0) return -1;
    s_copy(r->dir, sizeof(r->dir), dir);
    if (s_abs(r->dir, sizeof(r->dir), err, err_size) != 0) return -1;
    for (size_t i = 0; i < MS_ARRAY_LEN(subdirs); i++) {
        char d[MS_CLUSTER_PATH_MAX];
        s_pathf(d, sizeof(d), "%s/%s", r->dir, subdirs[i]);
        if (ms_mkdirs(d, err, err_size) != 0) return -1;
    }
    s_pathf(r->conf_path, sizeof(r->conf_path), "%s/cluster.conf", r->dir);
    return 0;
}

int ms_cluster_run_load(ms_cluster_run *r, const char *dir, char *err, size_t err_size) {
    memset(r, 0, sizeof(*r));
    ms_cluster_conf_default(&r->conf);
    char path[MS_CLUSTER_PATH_MAX];
    s_pathf(path, sizeof(path), "%s/cluster.conf", dir);
    if (!s_file_exists(path))
        return ms_errf(err, err_size, "no cluster in %s (%s is missing: run modserve up)", dir,
                       path);
    s_copy(r->dir, sizeof(r->dir), dir);
    if (s_abs(r->dir, sizeof(r->dir), err, err_size) != 0) return -1;
    s_pathf(r->conf_path, sizeof(r->conf_path), "%s/cluster.conf", r->dir);
    return ms_cluster_conf_load(&r->conf, r->conf_path, err, err_size);
}

int ms_cluster_run_save(const ms_cluster_run *r, char *err, size_t err_size) {
    return ms_cluster_conf_save(&r->conf, r->conf_path, err, err_size);
}

static bool s_stopped(const ms_cluster_run *r) {
    return r->stop && *r->stop;
}

/* ---- command lines ---- */

#define CL_MAX_ARGV  96 /* arguments of one process */
#define CL_ARG_STORE 16 /* formatted values per command line */

typedef struct cl_argv {
    char *argv[CL_MAX_ARGV + 1];                   /* NULL-terminated */
    int n;                                         /* arguments in argv */
    char store[CL_ARG_STORE][MS_CLUSTER_PATH_MAX]; /* formatted values argv points into */
    int n_store;
    char split[MS_CLUSTER_ARGS_MAX]; /* the `args` value, split in place */
    bool overflow;                   /* something did not fit */
} cl_argv;

static void s_arg(cl_argv *a, const char *s) {
    if (a->n < CL_MAX_ARGV)
        a->argv[a->n++] = (char *)s;
    else
        a->overflow = true;
    a->argv[a->n] = NULL;
}

static const char *s_fmt(cl_argv *a, const char *fmt, ...) MS_PRINTF(2, 3);
static const char *s_fmt(cl_argv *a, const char *fmt, ...) {
    if (a->n_store >= CL_ARG_STORE) {
        a->overflow = true;
        return "";
    }
    char *dst = a->store[a->n_store++];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, MS_CLUSTER_PATH_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= MS_CLUSTER_PATH_MAX) a->overflow = true;
    return dst;
}

static void s_extra(cl_argv *a, const char *extra) {
    char *parts[CL_MAX_ARGV];
    int n = ms_split_args(extra, a->split, sizeof(a->split), parts, CL_MAX_ARGV / 2);
    if (n < 0) {
        a->overflow = true;
        return;
    }
    for (int i = 0; i < n; i++)
        s_arg(a, parts[i]);
}

static void s_redis_argv(const ms_cluster_run *r, cl_argv *a) {
    memset(a, 0, sizeof(*a));
    char exe[MS_CLUSTER_PATH_MAX];
    s_which("redis-server", exe, sizeof(exe));
    s_arg(a, s_fmt(a, "%s", exe));
    s_arg(a, "--port");
    s_arg(a, s_fmt(a, "%d", ms_cluster_redis_port(&r->conf)));
    s_arg(a, "--bind");
    s_arg(a, "127.0.0.1");
    s_arg(a, "--dir");
    s_arg(a, s_fmt(a, "%s/redis", r->dir));
    s_arg(a, "--save");
    s_arg(a, "");
    s_arg(a, "--appendonly");
    s_arg(a, "no");
    s_arg(a, "--daemonize");
    s_arg(a, "no");
    s_arg(a, "--protected-mode");
    s_arg(a, "yes");
}

static void s_broker_argv(const ms_cluster_run *r, cl_argv *a) {
    const ms_cluster_conf *c = &r->conf;
    char ep[MS_CLUSTER_EP_MAX];
    memset(a, 0, sizeof(*a));
    s_arg(a, s_fmt(a, "%s/modserve-broker", c->bin_dir));
    s_arg(a, "--front");
    ms_cluster_front_ep(c, ep, sizeof(ep));
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--back");
    ms_cluster_back_ep(c, ep, sizeof(ep));
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--redis");
    s_arg(a, s_fmt(a, "127.0.0.1:%d", ms_cluster_redis_port(c)));
    s_arg(a, "--prefix");
    s_arg(a, c->prefix);
    s_arg(a, "--layout");
    s_arg(a, c->layout);
    s_arg(a, "--model");
    s_arg(a, c->lm);
    if (c->mmproj[0]) {
        s_arg(a, "--mmproj");
        s_arg(a, c->mmproj);
    }
    if (c->profile[0]) {
        s_arg(a, "--profile");
        s_arg(a, c->profile);
    }
    s_extra(a, c->broker_args);
}

static void s_actor_argv(const ms_cluster_run *r, const ms_cluster_group *g, const char *id,
                         int seq, cl_argv *a) {
    const ms_cluster_conf *c = &r->conf;
    char ep[MS_CLUSTER_EP_MAX];
    memset(a, 0, sizeof(*a));
    s_arg(a, s_fmt(a, "%s/modserve-actor", c->bin_dir));
    s_arg(a, "--id");
    s_arg(a, id);
    s_arg(a, "--stages");
    s_arg(a, g->stages);
    s_arg(a, "--broker");
    ms_cluster_back_ep(c, ep, sizeof(ep));
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--data");
    if (ms_cluster_data_ep(c, r->dir, id, seq, ep, sizeof(ep)) != 0) a->overflow = true;
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--redis");
    s_arg(a, s_fmt(a, "127.0.0.1:%d", ms_cluster_redis_port(c)));
    s_arg(a, "--prefix");
    s_arg(a, c->prefix);
    s_arg(a, "--model");
    s_arg(a, c->lm);
    /* encoders run the ViT, prefill actors the projector: both read the mmproj */
    if (c->mmproj[0] && (ms_cluster_stages_has(g->stages, "encode") ||
                         ms_cluster_stages_has(g->stages, "prefill"))) {
        s_arg(a, "--mmproj");
        s_arg(a, c->mmproj);
    }
    s_arg(a, "--threads");
    s_arg(a, s_fmt(a, "%d", g->threads));
    if (g->kv_tokens > 0) {
        s_arg(a, "--kv-tokens");
        s_arg(a, s_fmt(a, "%d", g->kv_tokens));
    }
    if (g->vit_batch > 0) {
        s_arg(a, "--vit-batch");
        s_arg(a, s_fmt(a, "%d", g->vit_batch));
    }
    s_extra(a, g->args);
}

static void s_gateway_argv(const ms_cluster_run *r, cl_argv *a) {
    const ms_cluster_conf *c = &r->conf;
    char ep[MS_CLUSTER_EP_MAX];
    memset(a, 0, sizeof(*a));
    s_arg(a, s_fmt(a, "%s/modserve-gateway", c->bin_dir));
    s_arg(a, "--model-name");
    s_arg(a, c->gateway_model[0] ? c->gateway_model : "modserve");
    s_arg(a, "--listen");
    ms_cluster_gateway_listen(c, ep, sizeof(ep));
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--broker");
    ms_cluster_front_ep(c, ep, sizeof(ep));
    s_arg(a, s_fmt(a, "%s", ep));
    s_arg(a, "--redis");
    s_arg(a, s_fmt(a, "127.0.0.1:%d", ms_cluster_redis_port(c)));
    s_arg(a, "--prefix");
    s_arg(a, c->prefix);
    if (!c->mmproj[0]) {
        /* a text-only cluster: /health must not wait for encoders */
        s_arg(a, "--require-stages");
        s_arg(a, "prefill,decode");
    }
    s_extra(a, c->gateway_args);
}

/* ---- starting ---- */

static int s_start(const ms_cluster_run *r, ms_proc *p, const cl_argv *a, char *err,
                   size_t err_size) {
    if (a->overflow) return ms_errf(err, err_size, "%s: command line too long", p->name);
    char log[MS_CLUSTER_PATH_MAX];
    ms_cluster_log_path(r->dir, p->name, log, sizeof(log));
    if (ms_proc_spawn(p, a->argv, log, err, err_size) != 0) return -1;
    return ms_pidfile_write(r->dir, p, err, err_size);
}

/* Fails with the log tail of p if it is no longer running. */
static int s_check_alive(const ms_cluster_run *r, const ms_proc *p, const char *what, char *err,
                         size_t err_size) {
    if (ms_proc_alive(p)) return 0;
    char log[MS_CLUSTER_PATH_MAX];
    ms_cluster_log_path(r->dir, p->name, log, sizeof(log));
    ms_cluster_log_tail(log, MS_CLUSTER_LOG_TAIL_LINES, r->log);
    return ms_errf(err, err_size, "%s (pid %d) exited%s (log: %s)", p->name, (int)p->pid, what,
                   log);
}

int ms_cluster_start_redis(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size) {
    memset(p, 0, sizeof(*p));
    s_copy(p->name, sizeof(p->name), "redis");
    s_copy(p->role, sizeof(p->role), "redis");
    p->seq = -1;
    cl_argv a;
    s_redis_argv(r, &a);
    if (s_start(r, p, &a, err, err_size) != 0) return -1;
    int port = ms_cluster_redis_port(&r->conf);
    int64_t deadline = ms_now_ns() + (int64_t)MS_CLUSTER_REDIS_TIMEOUT_MS * 1000000;
    ms_registry *reg = NULL;
    int rc = -1;
    for (;;) {
        /* the registry client is made once the port listens: it logs failed connects */
        if (!reg && ms_cluster_port_listening(port)) {
            char rerr[MS_ERR_SIZE];
            reg = ms_registry_new("127.0.0.1", port, r->conf.prefix, rerr, sizeof(rerr));
            if (!reg) {
                ms_errf(err, err_size, "registry: %s", rerr);
                break;
            }
        }
        if (reg && ms_registry_ping(reg) == 0) {
            rc = 0;
            break;
        }
        if (s_check_alive(r, p, " (is the port taken?)", err, err_size) != 0) break;
        if (ms_now_ns() > deadline) {
            ms_errf(err, err_size, "redis-server did not answer on port %d: %s", port,
                    reg ? ms_registry_errstr(reg) : "not listening");
            break;
        }
        if (s_stopped(r)) {
            ms_errf(err, err_size, "interrupted");
            break;
        }
        s_sleep_ms(CL_POLL_MS);
    }
    ms_registry_destroy(&reg);
    return rc;
}

int ms_cluster_start_broker(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size) {
    memset(p, 0, sizeof(*p));
    s_copy(p->name, sizeof(p->name), "broker");
    s_copy(p->role, sizeof(p->role), "broker");
    p->seq = -1;
    cl_argv a;
    s_broker_argv(r, &a);
    if (s_start(r, p, &a, err, err_size) != 0) return -1;
    int64_t deadline = ms_now_ns() + (int64_t)MS_CLUSTER_BROKER_TIMEOUT_MS * 1000000;
    for (;;) {
        if (s_check_alive(r, p, "", err, err_size) != 0) return -1;
        if (ms_cluster_port_listening(r->conf.port_base + 1)) return 0;
        if (ms_now_ns() > deadline)
            return ms_errf(err, err_size, "the broker does not listen on port %d",
                           r->conf.port_base + 1);
        if (s_stopped(r)) return ms_errf(err, err_size, "interrupted");
        s_sleep_ms(CL_POLL_MS);
    }
}

int ms_cluster_start_gateway(ms_cluster_run *r, ms_proc *p, char *err, size_t err_size) {
    memset(p, 0, sizeof(*p));
    s_copy(p->name, sizeof(p->name), "gateway");
    s_copy(p->role, sizeof(p->role), "gateway");
    p->seq = -1;
    cl_argv a;
    s_gateway_argv(r, &a);
    if (s_start(r, p, &a, err, err_size) != 0) return -1;
    char listen[MS_CLUSTER_EP_MAX];
    ms_cluster_gateway_listen(&r->conf, listen, sizeof(listen));
    int64_t deadline = ms_now_ns() + (int64_t)MS_CLUSTER_GATEWAY_TIMEOUT_MS * 1000000;
    for (;;) {
        if (s_check_alive(r, p, " (is the port taken? modserve up --gateway-port N)", err,
                          err_size) != 0)
            return -1;
        int status = 0;
        /* any HTTP answer will do: /health is 503 until the actors register */
        if (ms_cluster_http_get(r->conf.gateway_host, r->conf.gateway_port, "/health",
                                MS_CLUSTER_HTTP_TIMEOUT_MS, &status, NULL, 0, NULL, 0) == 0)
            return 0;
        if (ms_now_ns() > deadline)
            return ms_errf(err, err_size, "the gateway does not answer HTTP on %s", listen);
        if (s_stopped(r)) return ms_errf(err, err_size, "interrupted");
        s_sleep_ms(CL_POLL_MS);
    }
}

int ms_cluster_start_actor(ms_cluster_run *r, ms_cluster_group *g, ms_proc *p, char *err,
                           size_t err_size) {
    if (r->conf.next_seq >= MS_CLUSTER_MAX_SEQ)
        return ms_errf(err, err_size,
                       "this run directory has started %d actors: bring the cluster down and up",
                       MS_CLUSTER_MAX_SEQ);
    memset(p, 0, sizeof(*p));
    int seq = r->conf.next_seq;
    snprintf(p->name, sizeof(p->name), "%s-%d", g->name, g->started + 1);
    s_copy(p->role, sizeof(p->role), "actor");
    s_copy(p->group, sizeof(p->group), g->name);
    p->seq = seq;
    cl_argv a;
    s_actor_argv(r, g, p->name, seq, &a);
    if (s_start(r, p, &a, err, err_size) != 0) return -1;
    r->conf.next_seq++;
    g->started++;
    return ms_cluster_run_save(r, err, err_size);
}

int ms_cluster_wait_actors(const ms_cluster_run *r, const ms_proc *procs, int n,
                           const ms_proc *watch, int n_watch, int timeout_ms, char *err,
                           size_t err_size) {
    char rerr[MS_ERR_SIZE];
    ms_registry *reg = ms_registry_new("127.0.0.1", ms_cluster_redis_port(&r->conf), r->conf.prefix,
                                       rerr, sizeof(rerr));
    if (!reg) return ms_errf(err, err_size, "registry: %s", rerr);
    int64_t t0 = ms_now_ns();
    bool progress = r->log && r->progress;
    int rc = -1;
    bool *ready = ms_xcalloc((size_t)n + 1, sizeof(bool));
    for (;;) {
        int n_ready = 0;
        for (int i = 0; i < n; i++) {
            ms_actor_info info;
            if (!ready[i] && ms_registry_get(reg, procs[i].name, &info) == 0 &&
                info.pid == (int64_t)procs[i].pid && info.state == MS_ACTOR_UP)
                ready[i] = true;
            n_ready += ready[i];
        }
        if (n_ready == n) {
            rc = 0;
            break;
        }
        if (progress) fprintf(r->log, "\r\033[K");
        bool dead = false;
        for (int i = 0; i < n && !dead; i++)
            dead = !ready[i] &&
                   s_check_alive(r, &procs[i], " before it registered", err, err_size) != 0;
        for (int i = 0; i < n_watch && !dead; i++)
            dead = s_check_alive(r, &watch[i], "", err, err_size) != 0;
        if (dead) break;
        double waited = (double)(ms_now_ns() - t0) / 1e9;
        if (waited * 1000.0 > timeout_ms) {
            ms_errf(err, err_size, "%d of %d actors registered after %.0f s", n_ready, n, waited);
            break;
        }
        if (s_stopped(r)) {
            ms_errf(err, err_size, "interrupted");
            break;
        }
        if (progress) {
            fprintf(r->log, "waiting for actors to register: %d/%d (%.1f s)", n_ready, n, waited);
            fflush(r->log);
        }
        s_sleep_ms(MS_CLUSTER_POLL_MS);
    }
    if (progress) fprintf(r->log, "\r\033[K");
    free(ready);
    ms_registry_destroy(&reg);
    return rc;
}

/* ---- stopping ---- */

int ms_cluster_stop(const ms_cluster_run *r, ms_proc *p, int n, int grace_ms) {
    for (int i = 0; i < n; i++)
        ms_proc_signal(&p[i], grace_ms > 0 ? SIGTERM : SIGKILL);
    int64_t deadline = ms_now_ns() + (int64_t)grace_ms * 1000000;
    int killed = 0;
    for (int i = 0; i < n; i++) {
        int left = (int)((deadline - ms_now_ns()) / 1000000);
        if (ms_proc_wait_gone(&p[i], left > 0 ? left : 0) != 0) {
            ms_proc_signal(&p[i], SIGKILL);
            ms_proc_wait_gone(&p[i], CL_KILL_WAIT_MS);
            if (r->log && grace_ms > 0)
                fprintf(r->log, "%s (pid %d) did not stop within %d ms: killed\n", p[i].name,
                        (int)p[i].pid, grace_ms);
            killed++;
        }
        ms_pidfile_remove(r->dir, p[i].name);
    }
    return killed;
}

int ms_cluster_down(const ms_cluster_run *r, int drain_ms, char *err, size_t err_size) {
    ms_proc procs[MS_CLUSTER_MAX_PROCS];
    int n = ms_pidfile_list(r->dir, procs, MS_CLUSTER_MAX_PROCS, err, err_size);
    if (n < 0) return -1;
    ms_proc actors[MS_CLUSTER_MAX_PROCS], broker[MS_CLUSTER_MAX_PROCS],
        gateway[MS_CLUSTER_MAX_PROCS], redis[MS_CLUSTER_MAX_PROCS];
    int na = 0, nb = 0, ng = 0, nr = 0, alive = 0;
    for (int i = 0; i < n; i++) {
        alive += ms_proc_alive(&procs[i]);
        if (strcmp(procs[i].role, "broker") == 0)
            broker[nb++] = procs[i];
        else if (strcmp(procs[i].role, "gateway") == 0)
            gateway[ng++] = procs[i];
        else if (strcmp(procs[i].role, "redis") == 0)
            redis[nr++] = procs[i];
        else
            actors[na++] = procs[i];
    }
    if (r->log && n > 0)
        fprintf(r->log, "stopping %d actor%s, %s, %s, %s (%d of %d processes running)\n", na,
                na == 1 ? "" : "s", nb ? "the broker" : "no broker",
                ng ? "the gateway" : "no gateway", nr ? "redis" : "no redis", alive, n);
    int stop_ms = drain_ms > 0 ? MS_CLUSTER_STOP_MS : 0;
    /* actors drain first (the gateway still relays what they finish), then the
     * broker answers what is left with an error the gateway passes on */
    ms_cluster_stop(r, actors, na, drain_ms);
    ms_cluster_stop(r, broker, nb, stop_ms);
    ms_cluster_stop(r, gateway, ng, stop_ms);
    ms_cluster_stop(r, redis, nr, stop_ms);
    return n;
}

/* ---- reference answers ------------------------------------------------------------------ */

struct ms_cluster_ref {
    ms_engine *engine; /* owned */
};

ms_cluster_ref *ms_cluster_ref_new(const char *lm, const char *mmproj, int n_threads, char *err,
                                   size_t err_size) {
    ms_engine_params ep;
    ms_engine_params_default(&ep);
    ep.lm_path = lm;
    ep.mmproj_path = (mmproj && mmproj[0]) ? mmproj : NULL;
    ep.n_threads = n_threads;
    ms_engine *e = ms_engine_new(&ep, err, err_size);
    if (!e) return NULL;
    ms_cluster_ref *r = ms_xcalloc(1, sizeof(*r));
    r->engine = e;
    return r;
}

void ms_cluster_ref_destroy(ms_cluster_ref **self_p) {
    if (!self_p || !*self_p) return;
    ms_engine_destroy(&(*self_p)->engine);
    free(*self_p);
    *self_p = NULL;
}

int ms_cluster_ref_generate(ms_cluster_ref *self, const char *prompt, bool raw,
                            const uint8_t *const *images, const size_t *image_len, int n_images,
                            int max_tokens, float temperature, uint64_t seed, int32_t **tokens,
                            int *n_tokens, char **text, char *err, size_t err_size) {
    *tokens = NULL;
    *n_tokens = 0;
    if (text) *text = NULL;
    if (n_images < 0 || n_images > MS_MAX_IMAGES_PER_PROMPT)
        return ms_errf(err, err_size, "bad image count %d", n_images);
    ms_sampling_params sp;
    ms_sampling_params_default(&sp);
    sp.max_tokens = max_tokens;
    sp.temperature = temperature;
    sp.seed = seed;
    if (ms_sampling_params_validate(&sp, err, err_size) != 0) return -1;
    ms_engine *e = self->engine;
    ms_chat_template t = raw ? MS_CHAT_RAW : ms_chat_detect(ms_engine_lm(e)->chat_template);
    ms_chat_message msg = {MS_CHAT_USER, prompt, n_images};
    int32_t *ids = NULL;
    int n_ids = 0, n_img = 0;
    if (ms_chat_build_prompt(ms_engine_tokenizer(e), t, &msg, 1, true, &ids, &n_ids, &n_img, err,
                             err_size) != 0)
        return -1;
    ms_image_bytes ib[MS_MAX_IMAGES_PER_PROMPT];
    for (int i = 0; i < n_images; i++)
        ib[i] = (ms_image_bytes){.data = images[i], .len = image_len[i]};
    ms_generate_result res;
    memset(&res, 0, sizeof(res));
    int rc = ms_engine_generate(e, ids, n_ids, ib, n_images, &sp, NULL, NULL, &res, err, err_size);
    free(ids);
    if (rc != 0) return -1;
    *tokens = res.tokens;
    *n_tokens = res.n_generated;
    res.tokens = NULL;
    if (text) {
        *text = res.text;
        res.text = NULL;
    }
    ms_generate_result_fini(&res);
    return 0;
}
