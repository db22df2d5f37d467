#!/usr/bin/env python3
"""check.py - checks the deployment files in compose/ without a Docker engine
or a Kubernetes cluster (ctest compose_config, label unit; docs/deploy.md).

    python3 compose/check.py [-v]

- docker-compose.yml: `docker-compose config -q` (when docker-compose is
  installed: Debian's docker-compose 1.29, tools/setup.sh), and its services.
- k8s/*.yaml, k8s-disagg/: every document parses (PyYAML, Debian python3-yaml);
  Deployments' selectors match their pod labels; every container has resource
  requests and a readiness probe on a port it declares; actor Deployments
  carry the labels / annotations the autoscaler scales by and take their id
  and advertised address from the downward API; every Service selects a
  Deployment and targets a port it declares; the profile ConfigMap equals
  tools/profiles/default.json; `kubectl kustomize` builds both layouts (when
  kubectl is installed).
- grafana/modserve-dashboard.json: every modserve:* metric it queries is one
  the gateway exports (gateway/observe.c).
- prometheus.yml: scrapes the gateway (`promtool check config` when installed).
- Dockerfiles: every COPY source exists; entrypoint.sh parses (sh -n).

Exit status 0 when every check passed, 1 otherwise, 77 (skipped) when
neither docker-compose nor PyYAML is available.
"""
import json
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # a pyenv or venv python without PyYAML: try the system one
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != \
            os.path.realpath("/usr/bin/python3") and not os.environ.get("MS_CHECK_REEXEC"):
        os.environ["MS_CHECK_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    yaml = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VERBOSE = "-v" in sys.argv
STAGE_SETS = {"encode", "prefill", "decode", "prefill+decode", "encode+prefill+decode"}

passed = 0
failed = 0
skipped = 0


def ok(cond, what):
    global passed, failed
    if cond:
        passed += 1
        if VERBOSE:
            print("ok    " + what)
    else:
        failed += 1
        print("FAIL  " + what)
    return cond


def skip(what):
    global skipped
    skipped += 1
    print("skip  " + what)


def run(cmd, what):
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if not ok(p.returncode == 0, what):
        print(p.stdout[-3000:])
    return p


def rel(p):
    return os.path.relpath(p, ROOT)


# ---- docker-compose.yml ---------------------------------------------------------

def check_compose():
    path = os.path.join(HERE, "docker-compose.yml")
    if shutil.which("docker-compose"):
        run(["docker-compose", "-f", path, "config", "-q"], "docker-compose config -q")
        run(["docker-compose", "-f", path, "--profile", "monitoring", "--profile", "autoscaler",
             "config", "-q"], "docker-compose --profile monitoring --profile autoscaler config -q")
    else:
        skip("docker-compose config (docker-compose not installed: tools/setup.sh installs it)")
    if yaml is None:
        return
    doc = yaml.safe_load(open(path))
    svc = doc.get("services", {})
    for name in ("redis", "models", "broker", "encoder", "text", "gateway"):
        ok(name in svc, "compose: service %s" % name)
    env = lambda s: svc.get(s, {}).get("environment", {}) or {}
    ok(env("encoder").get("MS_STAGES") == "encode", "compose: encoder runs the encode stage")
    ok(env("text").get("MS_STAGES") == "prefill+decode", "compose: text runs prefill+decode")
    for s in ("encoder", "text"):
        ok(svc.get(s, {}).get("deploy", {}).get("replicas") == 2, "compose: 2 %s replicas" % s)
    ok(any(str(p).endswith(":8000:8000") or str(p) == "8000:8000"
           for p in svc.get("gateway", {}).get("ports", [])), "compose: gateway published on 8000")
    # an autoscaler service exactly when there is an autoscaler (under a profile: a placeholder)
    has_autoscaler = os.path.exists(os.path.join(ROOT, "tools", "modserve-autoscaler.c"))
    ok(has_autoscaler == ("autoscaler" in svc),
       "compose: an autoscaler service iff tools/modserve-autoscaler.c exists")
    if "autoscaler" in svc:
        a = svc["autoscaler"]
        ok("autoscaler" in a.get("profiles", []), "compose: the autoscaler is opt-in (profile)")
        cmd = a.get("command", [])
        ok(cmd[:1] == ["modserve-autoscaler"] and "--backend" in cmd and
           cmd[cmd.index("--backend") + 1] == "compose", "compose: autoscaler --backend compose")
        for key, service in (("encode", "encoder"), ("text", "text")):
            flag = "--service-" + key
            ok(flag in cmd and cmd[cmd.index(flag) + 1] == service and service in svc,
               "compose: autoscaler %s %s names a service" % (flag, service))
    for name in ("prometheus.yml", "grafana/modserve-dashboard.json",
                 "grafana/provisioning/datasources/prometheus.yml",
                 "grafana/provisioning/dashboards/modserve.yml", "../tools/profiles/default.json"):
        ok(os.path.exists(os.path.join(HERE, name)), "compose: mounted file %s exists" % name)


# ---- Kubernetes -------------------------------------------------------------------

def container_ports(dep):
    ports = {}
    for c in dep["spec"]["template"]["spec"].get("containers", []):
        for p in c.get("ports", []):
            ports[p.get("name")] = p["containerPort"]
            ports[p["containerPort"]] = p["containerPort"]
    return ports


def probe_port(probe):
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            return probe[kind].get("port")
    return None


def check_deployment(d, where, entrypoint_vars):
    name = d["metadata"]["name"]
    spec = d["spec"]
    sel = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"].get("labels", {})
    ok(all(labels.get(k) == v for k, v in sel.items()),
       "%s: %s selector matches its pod labels" % (where, name))
    ports = container_ports(d)
    pod = spec["template"]["spec"]
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        ok("requests" in c.get("resources", {}),
           "%s: %s/%s has resource requests" % (where, name, c["name"]))
        for e in c.get("env", []):
            if e["name"].startswith("MS_"):
                ok(e["name"] in entrypoint_vars,
                   "%s: %s sets %s, which entrypoint.sh reads" % (where, name, e["name"]))
    for c in pod.get("containers", []):
        rp = c.get("readinessProbe")
        ok(rp is not None, "%s: %s/%s has a readiness probe" % (where, name, c["name"]))
        if rp and probe_port(rp) is not None and "exec" not in rp:
            ok(probe_port(rp) in ports, "%s: %s readiness probe port %s is declared"
               % (where, name, probe_port(rp)))
    comp = labels.get("app.kubernetes.io/component")
    if comp == "gateway":
        rp = pod["containers"][0].get("readinessProbe", {})
        ok(rp.get("httpGet", {}).get("path") == "/health",
           "%s: the gateway is ready on /health" % where)
    meta_labels = d["metadata"].get("labels", {})
    if meta_labels.get("modserve.io/scalable") == "true":
        stages = d["metadata"].get("annotations", {}).get("modserve.io/stages")
        ok(stages in STAGE_SETS, "%s: %s annotation modserve.io/stages=%s" % (where, name, stages))
        ok("modserve.io/pool" in meta_labels, "%s: %s has a modserve.io/pool label" % (where, name))
        c = pod["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        ok(env.get("MS_STAGES", {}).get("value") == stages,
           "%s: %s MS_STAGES equals its annotation" % (where, name))
        ok(env.get("MS_ADVERTISE", {}).get("valueFrom", {}).get("fieldRef", {})
           .get("fieldPath") == "status.podIP", "%s: %s advertises the pod IP" % (where, name))
        ok(env.get("MS_ACTOR_ID", {}).get("valueFrom", {}).get("fieldRef", {})
           .get("fieldPath") == "metadata.name", "%s: %s id is the pod name" % (where, name))
        ok(pod.get("terminationGracePeriodSeconds", 30) > 30,
           "%s: %s grace period covers the 30 s drain" % (where, name))


def check_k8s():
    if yaml is None:
        skip("Kubernetes manifests (no PyYAML: apt-get install python3-yaml)")
        return
    entrypoint_vars = set(re.findall(r"\bMS_[A-Z_]+", open(os.path.join(HERE, "entrypoint.sh")).read()))
    kdir = os.path.join(HERE, "k8s")
    files = sorted(f for f in os.listdir(kdir) if f.endswith(".yaml"))
    docs = []
    for f in files:
        try:
            ds = [d for d in yaml.safe_load_all(open(os.path.join(kdir, f))) if d]
            ok(True, "k8s/%s parses" % f)
        except yaml.YAMLError as e:
            ok(False, "k8s/%s parses: %s" % (f, e))
            continue
        docs += [(f, d) for d in ds]
    kust = [d for f, d in docs if d.get("kind") == "Kustomization"]
    ok(len(kust) == 1, "k8s: one kustomization.yaml")
    if kust:
        listed = set(kust[0].get("resources", []))
        for f in files:
            if f != "kustomization.yaml":
                ok(f in listed, "k8s: %s is listed in kustomization.yaml" % f)
        for r in listed:
            ok(r in files, "k8s: kustomization resource %s exists" % r)
    objs = [(f, d) for f, d in docs if d.get("kind") != "Kustomization"]
    for f, d in objs:
        ok(bool(d.get("apiVersion")) and bool(d.get("kind")) and
           bool(d.get("metadata", {}).get("name")), "k8s/%s: apiVersion, kind, metadata.name" % f)
    deps = [d for f, d in objs if d.get("kind") == "Deployment"]
    for f, d in objs:
        if d.get("kind") == "Deployment":
            check_deployment(d, "k8s/" + f, entrypoint_vars)
    comps = {d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
             for d in deps}
    for c in ("redis", "broker", "encoder", "text", "prefill", "decode", "gateway"):
        ok(c in comps, "k8s: a Deployment for %s" % c)
    services = {d["metadata"]["name"]: d for f, d in objs if d.get("kind") == "Service"}
    for s in ("redis", "broker", "gateway"):
        ok(s in services, "k8s: Service %s" % s)
    for name, s in services.items():
        sel = s["spec"].get("selector", {})
        match = [d for d in deps if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                                        for k, v in sel.items())]
        if ok(len(match) == 1, "k8s: Service %s selects one Deployment" % name):
            ports = container_ports(match[0])
            for p in s["spec"]["ports"]:
                ok(p.get("targetPort", p["port"]) in ports,
                   "k8s: Service %s port %s targets a declared port" % (name, p.get("name")))
    broker_ports = [p["name"] for p in services.get("broker", {}).get("spec", {}).get("ports", [])]
    ok(sorted(broker_ports) == ["back", "front"], "k8s: broker Service has front and back ports")
    cms = {d["metadata"]["name"]: d for f, d in objs if d.get("kind") == "ConfigMap"}
    prof = cms.get("modserve-profile", {}).get("data", {}).get("profile.json")
    ref = json.load(open(os.path.join(ROOT, "tools", "profiles", "default.json")))
    ok(prof is not None and json.loads(prof) == ref,
       "k8s: ConfigMap modserve-profile equals tools/profiles/default.json")
    for k in cms.get("modserve-env", {}).get("data", {}):
        ok(k in entrypoint_vars, "k8s: ConfigMap modserve-env key %s is read by entrypoint.sh" % k)
    dis = os.path.join(HERE, "k8s-disagg", "kustomization.yaml")
    ok(os.path.exists(dis) and yaml.safe_load(open(dis)).get("resources") == ["../k8s"],
       "k8s-disagg: an overlay of ../k8s")
    if shutil.which("kubectl"):
        for d in ("compose/k8s", "compose/k8s-disagg"):
            p = run(["kubectl", "kustomize", d], "kubectl kustomize %s" % d)
            if p.returncode == 0:
                built = [x for x in yaml.safe_load_all(p.stdout) if x]
                layout = [x for x in built if x["kind"] == "ConfigMap" and
                          x["metadata"]["name"] == "modserve-env"][0]["data"]["MS_LAYOUT"]
                ok(layout == ("disagg" if d.endswith("disagg") else "modserve"),
                   "%s: the broker layout is %s" % (d, layout))
                ok(all(x["metadata"].get("namespace") == "modserve" for x in built
                       if x["kind"] != "Namespace"), "%s: everything in namespace modserve" % d)
    else:
        skip("kubectl kustomize (kubectl not installed)")


# ---- Grafana, Prometheus -----------------------------------------------------------

def gateway_metrics():
    src = open(os.path.join(ROOT, "gateway", "observe.c")).read()
    names = set()
    for kind, name in re.findall(r"ms_metrics_(histogram|counter|gauge)\(m, \"(modserve:[a-z0-9_:]+)\"", src):
        names.add(name)
        if kind == "histogram":
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def check_grafana():
    path = os.path.join(HERE, "grafana", "modserve-dashboard.json")
    try:
        dash = json.load(open(path))
    except ValueError as e:
        ok(False, "grafana: dashboard parses: %s" % e)
        return
    known = gateway_metrics()
    ok(len(known) > 20, "grafana: the gateway's metric names read from gateway/observe.c")
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    ok(len(exprs) >= 20, "grafana: %d queries" % len(exprs))
    used = set()
    for e in exprs:
        for m in re.findall(r"modserve:[a-z0-9_:]+", e):
            used.add(m)
            ok(m in known, "grafana: %s is exported by the gateway" % m)
        ok(e.count("(") == e.count(")"), "grafana: balanced parentheses in %s" % e[:60])
    for want in ("modserve:time_to_first_token_seconds_bucket",
                 "modserve:inter_token_latency_seconds_bucket",
                 "modserve:e2e_request_latency_seconds_bucket",
                 "modserve:request_queue_time_seconds_bucket", "modserve:num_requests_running",
                 "modserve:num_requests_waiting", "modserve:generation_tokens_total",
                 "modserve:stage_latency_seconds_bucket", "modserve:stage_instances",
                 "modserve:stage_queued_tokens"):
        ok(want in used, "grafana: a panel shows %s" % want)
    ids = [p["id"] for p in dash["panels"]]
    ok(len(ids) == len(set(ids)), "grafana: panel ids are unique")
    ok(all(p.get("datasource", {}).get("uid") == "${datasource}" for p in dash["panels"]
           if p["type"] != "row"), "grafana: panels use the ${datasource} variable")


def check_prometheus():
    path = os.path.join(HERE, "prometheus.yml")
    if yaml is not None:
        cfg = yaml.safe_load(open(path))
        targets = [t for j in cfg.get("scrape_configs", []) for s in j.get("static_configs", [])
                   for t in s.get("targets", [])]
        ok("gateway:8000" in targets, "prometheus.yml scrapes gateway:8000")
    if shutil.which("promtool"):
        run(["promtool", "check", "config", path], "promtool check config prometheus.yml")
    else:
        skip("promtool check config (promtool not installed)")


# ---- Dockerfiles, entrypoint -------------------------------------------------------

def check_docker():
    for df in ("Dockerfile", "Dockerfile.cuda"):
        text = open(os.path.join(HERE, df)).read()
        for line in text.replace("\\\n", " ").splitlines():
            parts = line.split()
            if not parts or parts[0] != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            srcs = [p for p in parts[1:-1] if not p.startswith("--")]
            for s in srcs:
                ok(s == "." or os.path.exists(os.path.join(ROOT, s)),
                   "%s: COPY source %s exists" % (df, s))
        ok(os.path.exists(os.path.join(HERE, df + ".dockerignore")),
           "%s has a %s.dockerignore" % (df, df))
    ok("--deps-only" in open(os.path.join(ROOT, "tools", "setup.sh")).read(),
       "tools/setup.sh supports --deps-only (compose/Dockerfile)")
    ep = os.path.join(HERE, "entrypoint.sh")
    ok(os.access(ep, os.X_OK), "entrypoint.sh is executable")
    run(["sh", "-n", ep], "sh -n entrypoint.sh")


def main():
    if yaml is None and not shutil.which("docker-compose"):
        print("check.py: neither PyYAML nor docker-compose: nothing to check (skipped)")
        return 77
    check_compose()
    check_k8s()
    check_grafana()
    check_prometheus()
    check_docker()
    print("compose/check.py: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
