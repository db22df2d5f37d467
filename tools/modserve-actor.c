/* modserve-actor — one modserve actor process (actors/actor.h,
 * docs/actors.md). `modserve-actor --help` prints the options.
 *
 * Exit status: 0 after a clean drain (SIGTERM / SIGINT), 1 on a bad argument
 * or a start-up failure (model, sockets), 2 if the sockets failed while
 * serving. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <czmq.h>

#include "actor.h"

static void s_on_signal(int sig) {
    (void)sig;
    ms_actor_request_stop();
}

int main(int argc, char **argv) {
    ms_actor_config cfg;
    ms_actor_config_default(&cfg);
    char err[MS_ERR_SIZE];
    int rc = ms_actor_config_parse(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc != 0) {
        fprintf(stderr, "modserve-actor: %s\n%s", err, ms_actor_usage());
        return 1;
    }
    /* czmq must not install its own SIGINT/SIGTERM handling: the actor drains */
    zsys_handler_set(NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ms_actor *a = ms_actor_new(&cfg, err, sizeof err);
    if (!a) {
        fprintf(stderr, "modserve-actor: %s\n", err);
        return 1;
    }
    rc = ms_actor_run(a);
    ms_actor_destroy(&a);
    return rc == 0 ? 0 : 2;
}
