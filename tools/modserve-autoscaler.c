/* modserve-autoscaler — scales a modserve deployment's pools from the load
 * and SLO attainment the broker publishes (broker/autoscaler.h, the decisions
 * in broker/autoscale.h; docs/autoscaler.md).
 *
 *   modserve-autoscaler --dir RUNDIR [--profile F] [--min-encode 1 --max-encode 4 ...]
 *   modserve-autoscaler --redis HOST:PORT --backend k8s --k8s-deployment-encode enc --dry-run
 *
 * With --dir it records itself in RUNDIR/pids/autoscaler.pid (role
 * "autoscaler"), so `modserve status` lists it and `modserve down` stops it
 * together with the actors; a second autoscaler on the same run directory is
 * refused. SIGINT / SIGTERM stop it after the current step; what it started
 * keeps running. Exit status: 0, 1 on a failure, 2 on bad usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoscaler.h"
#include "cluster.h"
#include "ms_common.h"

#define PIDFILE_NAME "autoscaler"

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

/* Directory of this executable (modserve-actor is expected beside it). */
static void s_exe_dir(char *buf, size_t size) {
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    if (n <= 0) {
        snprintf(buf, size, ".");
        return;
    }
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash) *slash = '\0';
}

/* RUNDIR/pids/autoscaler.pid: refuses when a live autoscaler holds it. */
static int s_claim_rundir(const char *rundir, char *err, size_t err_size) {
    ms_proc p;
    char perr[MS_ERR_SIZE];
    if (ms_pidfile_read(rundir, PIDFILE_NAME, &p, perr, sizeof(perr)) == 0 && ms_proc_alive(&p) &&
        p.pid != getpid())
        return ms_errf(err, err_size, "an autoscaler (pid %d) already runs on %s", (int)p.pid,
                       rundir);
    memset(&p, 0, sizeof(p));
    snprintf(p.name, sizeof(p.name), "%s", PIDFILE_NAME);
    snprintf(p.role, sizeof(p.role), "%s", "autoscaler");
    p.seq = -1;
    p.pid = getpid();
    p.start = ms_proc_start_time(p.pid);
    return ms_pidfile_write(rundir, &p, err, err_size);
}

int main(int argc, char **argv) {
    static ms_autoscaler_args args;
    char err[MS_ERR_SIZE];
    if (ms_autoscaler_args_parse(&args, argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-autoscaler: %s\n%s", err, ms_autoscaler_usage());
        return 2;
    }
    if (args.help) {
        fputs(ms_autoscaler_usage(), stdout);
        return 0;
    }
    if (!args.scaler.bin_dir[0]) s_exe_dir(args.scaler.bin_dir, sizeof(args.scaler.bin_dir));
    ms_scaler *backend = NULL;
    if (ms_autoscaler_args_resolve(&args, &backend, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-autoscaler: %s\n", err);
        return 1;
    }
    const bool claim = args.rundir[0] && !args.scaler.dry_run;
    if (claim && s_claim_rundir(args.rundir, err, sizeof(err)) != 0) {
        fprintf(stderr, "modserve-autoscaler: %s\n", err);
        ms_scaler_destroy(&backend);
        return 1;
    }
    ms_autoscaler *a = ms_autoscaler_new(&args.cfg, &backend, err, sizeof(err));
    if (!a) {
        fprintf(stderr, "modserve-autoscaler: %s\n", err);
        if (claim) ms_pidfile_remove(args.rundir, PIDFILE_NAME);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = 0;
    if (args.once) {
        rc = ms_autoscaler_step(a, ms_now_ns() / 1000000, err, sizeof(err)) < 0 ? -1 : 0;
    } else {
        rc = ms_autoscaler_run(a, &s_stop, args.duration_ms, err, sizeof(err));
    }
    if (rc != 0) fprintf(stderr, "modserve-autoscaler: %s\n", err);
    ms_autoscaler_destroy(&a);
    if (claim) ms_pidfile_remove(args.rundir, PIDFILE_NAME);
    return rc == 0 ? 0 : 1;
}
