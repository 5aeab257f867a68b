"""The contract of Ember's Kubernetes manifests, on a rendered overlay.

Run by the integration test `k8s::overlays_render_validate_and_keep_their_contract` with the
ports the `ember` binary uses by default:

    python3 check_manifests.py RENDERED.yaml --scheduler-grpc 50050 --scheduler-http 9090 \
        --executor-grpc 50051 --executor-http 9091 --drain-timeout 60

Exits non-zero naming every broken promise.
"""

import argparse
import sys

import yaml


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rendered")
    for name in ["scheduler-grpc", "scheduler-http", "executor-grpc", "executor-http", "drain-timeout"]:
        p.add_argument(f"--{name}", type=int, required=True)
    args = p.parse_args()
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    problems = []

    def check(ok, message):
        if not ok:
            problems.append(message)

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    roles = {
        "ember-scheduler": (args.scheduler_grpc, args.scheduler_http),
        "ember-executor": (args.executor_grpc, args.executor_http),
    }
    for name, (grpc, http) in roles.items():
        check(name in deployments, f"no Deployment {name}")
        if name not in deployments:
            continue
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        check(ports.get("grpc") == grpc, f"{name}: grpc port {ports.get('grpc')} is not the binary's {grpc}")
        check(ports.get("http") == http, f"{name}: http port {ports.get('http')} is not the binary's {http}")
        live = container.get("livenessProbe", {}).get("httpGet", {})
        ready = container.get("readinessProbe", {}).get("httpGet", {})
        check(live.get("path") == "/healthz" and live.get("port") in ("http", http),
              f"{name}: liveness must GET /healthz on the http port: {live}")
        check(ready.get("path") == "/readyz" and ready.get("port") in ("http", http),
              f"{name}: readiness must GET /readyz on the http port: {ready}")
        resources = container.get("resources", {})
        for kind in ["requests", "limits"]:
            for what in ["cpu", "memory"]:
                check(what in resources.get(kind, {}), f"{name}: no {kind}.{what}")
        pod_sc = pod.get("securityContext", {})
        sc = container.get("securityContext", {})
        check(pod_sc.get("runAsNonRoot") is True, f"{name}: not runAsNonRoot")
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem not read-only")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed")
        # A process given a certificate serves HTTPS on its HTTP port too: probes must ask so,
        # and its TLS files come from a Secret.
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if "EMBER_TLS_CERT" in env:
            for probe in ["livenessProbe", "readinessProbe"]:
                scheme = container.get(probe, {}).get("httpGet", {}).get("scheme", "HTTP")
                check(scheme == "HTTPS", f"{name}: {probe} must use HTTPS (the HTTP port speaks TLS)")
            for var in ["EMBER_TLS_CERT", "EMBER_TLS_KEY", "EMBER_TLS_CA"]:
                path = env.get(var, "")
                holder = next((n for m, n in mounted.items() if path.startswith(m + "/")), None)
                check(holder is not None and "secret" in volumes.get(holder, {}),
                      f"{name}: {var} {path!r} is not mounted from a Secret")
        # The config file the processes read must be mounted where the args say.
        arg_config = container["args"][container["args"].index("--config") + 1]
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        check(any(arg_config.startswith(m + "/") for m in mounts), f"{name}: {arg_config} is not mounted")

    scheduler = deployments.get("ember-scheduler")
    if scheduler:
        # A scheduler without clients' credentials refuses to start unless told to let anyone in.
        pod = scheduler["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        check("EMBER_AUTH_FILE" in env or "EMBER_AUTH_TOKENS" in env or "EMBER_ALLOW_ANONYMOUS" in env,
              "scheduler: no clients' credentials (EMBER_AUTH_FILE or EMBER_AUTH_TOKENS) and no EMBER_ALLOW_ANONYMOUS")
        if "EMBER_AUTH_FILE" in env:
            path = env["EMBER_AUTH_FILE"].get("value", "")
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            holder = next((n for m, n in mounts.items() if path.startswith(m + "/")), None)
            check(holder is not None and "secret" in volumes.get(holder, {}),
                  f"scheduler: the credentials file {path} is not mounted from a Secret")

    executor = deployments.get("ember-executor")
    if executor:
        pod = executor["spec"]["template"]["spec"]
        # The binary refuses both ways of finding the schedulers at once, and needs one.
        env = {e["name"] for e in pod["containers"][0].get("env", [])}
        ways = env & {"EMBER_SCHEDULER_URL", "EMBER_ETCD"}
        check(len(ways) == 1,
              f"executor: exactly one of EMBER_SCHEDULER_URL and EMBER_ETCD must be set, not {sorted(ways)}")
        check(pod.get("terminationGracePeriodSeconds", 30) > args.drain_timeout,
              f"executor: terminationGracePeriodSeconds must exceed the drain timeout ({args.drain_timeout} s)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        work = mounts.get("/var/lib/ember")
        check(work is not None and ("emptyDir" in volumes.get(work, {}) or "persistentVolumeClaim" in volumes.get(work, {})),
              "executor: shuffle space /var/lib/ember is not an emptyDir or volume")
    pdbs = {d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") for d in by_kind.get("PodDisruptionBudget", [])}
    for name in roles:
        check(name in pdbs, f"no PodDisruptionBudget for {name}")
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    svc_ports = {p["name"]: p["port"] for p in services.get("ember-scheduler", {}).get("spec", {}).get("ports", [])}
    check(svc_ports.get("grpc") == args.scheduler_grpc, f"scheduler Service grpc port {svc_ports.get('grpc')}")
    check(bool(by_kind.get("ConfigMap")), "no ConfigMap")

    for problem in problems:
        print(f"{args.rendered}: {problem}")
    print(f"{args.rendered}: {len(docs)} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
