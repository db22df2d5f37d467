/* modserve-broker — the broker process (broker/broker.h, docs/broker.md).
 *
 *   modserve-broker --model LM.gguf [--mmproj MM.gguf] [--front EP] [--back EP]
 *                   [--redis HOST:PORT] [--prefix P] [--layout modserve|monolith|disagg]
 *                   [--profile FILE] [--max-queue N] [--request-timeout-ms N]
 *                   [--chat-template NAME] [--n-ctx N]
 *
 * Runs until SIGINT or SIGTERM. Exit status 0 after a signal, 1 on a bad
 * argument or a start-up failure, 2 if the event loop fails.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>

#include "broker.h"
#include "ms_common.h"

#define S_HOST_MAX 256 /* bytes of a --redis host */

static const char *s_usage =
    "usage: modserve-broker --model LM.gguf [options]\n"
    "\n"
    "The modserve broker: producers submit to --front, actors connect to --back.\n"
    "\n"
    "  --model FILE            text model GGUF: tokenizer + chat template (required)\n"
    "  --mmproj FILE           vision GGUF: image token count (needed to accept images)\n"
    "  --front EP              producers' endpoint (default " MS_BROKER_FRONT_DEFAULT ")\n"
    "  --back EP               actors' endpoint (default " MS_BROKER_BACK_DEFAULT ")\n"
    "  --redis HOST:PORT       registry Redis (default 127.0.0.1:6379)\n"
    "  --prefix P              registry key prefix (default ms)\n"
    "  --layout L              modserve (default), monolith or disagg\n"
    "  --profile FILE          stage profile JSON (default: built-in defaults)\n"
    "  --max-queue N           requests held at most before \"overloaded\"\n"
    "  --request-timeout-ms N  default per-request timeout (default %d)\n"
    "  --chat-template NAME    override the model's template (chatml, llama3, ...)\n"
    "  --n-ctx N               tokens a sequence may hold at the actors (default:\n"
    "                          the model's context length, at most 4096)\n"
    "  -h, --help              this text\n";

static ms_broker *s_broker;

static void s_on_signal(int sig) {
    (void)sig;
    if (s_broker) ms_broker_stop(s_broker);
}

static void s_die(const char *fmt, const char *arg) {
    fprintf(stderr, "modserve-broker: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see modserve-broker --help)\n");
    exit(1);
}

static int s_int(const char *opt, const char *s, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "modserve-broker: %s expects an integer in [%ld, %ld], got '%s'\n", opt, lo,
                hi, s);
        exit(1);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    ms_broker_config c;
    ms_broker_config_default(&c);
    static char host[S_HOST_MAX];
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
#define IS(s)   (strcmp(o, (s)) == 0)
#define VALUE() (i + 1 < argc ? argv[++i] : (s_die("%s needs a value", o), (char *)NULL))
        if (IS("-h") || IS("--help")) {
            printf(s_usage, MS_BROKER_TIMEOUT_MS_DEFAULT);
            return 0;
        } else if (IS("--model") || IS("-m")) {
            c.model_path = VALUE();
        } else if (IS("--mmproj")) {
            c.mmproj_path = VALUE();
        } else if (IS("--front")) {
            c.front_ep = VALUE();
        } else if (IS("--back")) {
            c.back_ep = VALUE();
        } else if (IS("--redis")) {
            const char *v = VALUE();
            const char *colon = strrchr(v, ':');
            if (!colon || colon == v || (size_t)(colon - v) >= sizeof(host))
                s_die("--redis expects HOST:PORT, got '%s'", v);
            memcpy(host, v, (size_t)(colon - v));
            host[colon - v] = '\0';
            c.redis_host = host;
            c.redis_port = s_int("--redis port", colon + 1, 1, 65535);
        } else if (IS("--prefix")) {
            c.redis_prefix = VALUE();
        } else if (IS("--layout")) {
            const char *v = VALUE();
            char err[MS_ERR_SIZE];
            if (ms_layout_parse(v, &c.layout, err, sizeof(err)) != 0) s_die("--layout: %s", err);
        } else if (IS("--profile")) {
            c.profile_path = VALUE();
        } else if (IS("--max-queue")) {
            c.max_queue = s_int(o, VALUE(), 1, INT_MAX);
        } else if (IS("--request-timeout-ms")) {
            c.request_timeout_ms = s_int(o, VALUE(), 1, INT_MAX);
        } else if (IS("--chat-template")) {
            c.chat_template = VALUE();
        } else if (IS("--n-ctx")) {
            c.n_ctx = s_int(o, VALUE(), 1, INT_MAX);
        } else {
            s_die("unknown option '%s'", o);
        }
#undef IS
#undef VALUE
    }
    if (!c.model_path) s_die("--model is required%s", "");

    zsys_handler_set(NULL); /* our handlers, not czmq's */
    char err[MS_ERR_SIZE];
    ms_broker *b = ms_broker_new(&c, err, sizeof(err));
    if (!b) {
        fprintf(stderr, "modserve-broker: %s\n", err);
        return 1;
    }
    s_broker = b;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = ms_broker_run(b, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "modserve-broker: %s\n", err);
    s_broker = NULL;
    ms_broker_destroy(&b);
    return rc == 0 ? 0 : 2;
}
