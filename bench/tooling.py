#!/usr/bin/env python3
"""Cluster-tooling benchmarks on two Mac nodes: drain under load and HPA scale-up.

Starts a local control plane with metrics-server, a local hub serving the Gemma 3 270M
GGUF and two vnode agents, each a Mac of its own (network namespace, InternalIP). Then:
  1. drain: a two-replica Deployment (one per Mac: hostPort) with a PodDisruptionBudget
     (minAvailable 1) and terminationGracePeriodSeconds 30 serves a client that follows
     the Service's EndpointSlice (tests/support/endpoints.py, two request threads). Each
     run drains one Mac (`kubectl drain --ignore-daemonsets`), uncordons it and waits for
     the replacement to be Ready; the Macs take turns. Reports the drain's duration (the
     kubectl command), the requests served and failed (target 0) during each run;
  2. hpa: a one-replica Deployment with a CPU request and an autoscaling/v2 HPA (50 %,
     behavior without stabilization); load starts, time until the second replica is Ready
     (metrics-server resolution 15 s and the HPA's 15 s sync bound it from below); load
     stops, time until one replica is left.
Prints min/median and writes JSON to bench/results/. No assertions.

Both "Macs" share this machine's cores, so each server runs with one thread (-t 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pods as kb  # noqa: E402 - bench/pods.py: hub, machine, summary

from tests.support.endpoints import EndpointClient  # noqa: E402
from vnode.cluster.build import ensure_llama_server  # noqa: E402
from vnode.cluster.local import LocalCluster  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402

MACS = ("mac-a", "mac-b")
NS = "bench-tooling"


def deployment(name: str, *, port: int, replicas: int, cpu: str | None = None, grace: int = 30) -> dict:
    container = {
        "name": "server", "image": "ghcr.io/ggml-org/llama.cpp:server",
        "args": ["-hf", f"{kb.REPO}:Q4_K_M", "--port", str(port), "-c", "2048", "-t", "1"],
        "ports": [{"containerPort": port, "hostPort": port, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
    }
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "nodeSelector": {"llmkube.dev/accelerator": "metal"},
                     "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Exists", "effect": "NoSchedule"}],
                     "terminationGracePeriodSeconds": grace, "containers": [container]}}},
    }


def service(name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": "http", "name": "http"}]}}


class Bench:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def kubectl(self, *args: str, **kw):
        return self.cluster.kubectl(*args, **kw)

    def apply(self, *objects: dict) -> None:
        self.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(objects))

    def ready(self, app: str) -> list[dict]:
        items = json.loads(self.kubectl("get", "pods", "-n", NS, "-l", f"app={app}", "-o", "json").stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]

    def node_ready(self, name: str) -> bool:
        out = self.kubectl("get", "node", name, "-o", "json", check=False)
        conds = json.loads(out.stdout).get("status", {}).get("conditions", []) if out.returncode == 0 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def count(self, app: str) -> int:
        return len(json.loads(self.kubectl("get", "pods", "-n", NS, "-l", f"app={app}", "-o", "json").stdout)["items"])

    def wait(self, predicate, *, timeout: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.25)
        raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def bench_drain(b: Bench, runs: int) -> list[dict]:
    b.apply(deployment("steady", port=8180, replicas=2), service("steady", 8180),
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "steady"},
             "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "steady"}}}})
    b.wait(lambda: len(b.ready("steady")) == 2, timeout=300, what="two replicas Ready")
    results = []
    for run in range(runs):
        mac = MACS[run % 2]
        with EndpointClient(b.cluster, NS, "steady") as client:
            time.sleep(2)
            client.mark(f"drain {mac}")
            start = time.monotonic()
            b.kubectl("drain", mac, "--ignore-daemonsets", "--timeout=120s", timeout=150)
            drained = time.monotonic() - start
            b.kubectl("uncordon", mac)
            back = b.wait(lambda: len(b.ready("steady")) == 2, timeout=300, what="the replacement Ready")
            time.sleep(1)
        row = {"mac": mac, "drain_s": round(drained, 2), "replacement_ready_s": round(back, 2),
               "requests_ok": client.served, "requests_failed": len(client.failed), "failures": client.failed[:5]}
        print(f"drain {run + 1}/{runs} of {mac}: {drained:.1f}s, replacement Ready {back:.1f}s later; "
              f"requests ok {client.served}, failed {len(client.failed)}", flush=True)
        results.append(row)
    b.kubectl("delete", "deployment,service,pdb", "steady", "-n", NS)
    b.wait(lambda: b.count("steady") == 0, timeout=120, what="steady pods gone")
    return results


def bench_hpa(b: Bench, runs: int) -> list[dict]:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "elastic"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "elastic"},
                    "minReplicas": 1, "maxReplicas": 2,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
                    "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
                                 "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}}}}
    b.apply(deployment("elastic", port=8181, replicas=1, cpu="250m"), service("elastic", 8181), hpa)
    results = []
    for run in range(runs):
        b.wait(lambda: len(b.ready("elastic")) == 1 and b.count("elastic") == 1, timeout=300, what="one replica")
        time.sleep(20)  # let the HPA see the idle replica
        with EndpointClient(b.cluster, NS, "elastic", workers=2, max_tokens=32):
            up = b.wait(lambda: len(b.ready("elastic")) == 2, timeout=300, what="second replica Ready")
        down = b.wait(lambda: b.count("elastic") == 1, timeout=300, what="back to one replica")
        print(f"hpa {run + 1}/{runs}: second replica Ready {up:.0f}s after the load started; one replica {down:.0f}s after it stopped",
              flush=True)
        results.append({"scale_up_ready_s": round(up, 1), "scale_down_s": round(down, 1)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drains", type=int, default=4)
    parser.add_argument("--hpa-runs", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="cluster directory (default: a temporary one)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-tooling-"))
    cluster = LocalCluster(directory, node_name=MACS[0])
    started = time.monotonic()
    hub = None
    try:
        cluster.up()
        hub, url = kb.start_hub(cluster, kb.gemma_path())
        cluster.add_host(MACS[1])  # MACS[0] is the cluster's own node, on the first namespace
        for mac in MACS:
            cluster.start_agent(f"--hf-endpoint={url}", f"--llama-server={ensure_llama_server()}", node_name=mac)
        b = Bench(cluster)
        for mac in MACS:
            b.wait(lambda m=mac: b.node_ready(m), timeout=90, what=f"{mac} Ready")
        b.kubectl("create", "namespace", NS)
        drains = bench_drain(b, args.drains)
        hpa = bench_hpa(b, args.hpa_runs)
    finally:
        if hub is not None:
            stop_process(hub)
        cluster.down()
        kb.stop_leftover_servers(directory)
        shutil.rmtree(directory / "etcd", ignore_errors=True)
        for mac in MACS:
            shutil.rmtree(directory / "agents" / mac / "models", ignore_errors=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": kb.machine(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "drain": {"runs": drains, "drain_s": kb.summary([r["drain_s"] for r in drains]),
                  "requests_failed_total": sum(r["requests_failed"] for r in drains),
                  "requests_ok_total": sum(r["requests_ok"] for r in drains), "target_failed": 0},
        "hpa": {"runs": hpa, "scale_up_ready_s": kb.summary([r["scale_up_ready_s"] for r in hpa]),
                "scale_down_s": kb.summary([r["scale_down_s"] for r in hpa])},
    }
    d, h = result["drain"], result["hpa"]
    print(f"\ndrain of one Mac under load: {d['drain_s'].get('min', 0):.1f}s min, {d['drain_s'].get('median', 0):.1f}s median; "
          f"requests failed {d['requests_failed_total']} of {d['requests_failed_total'] + d['requests_ok_total']} (target 0)")
    print(f"HPA, load start -> second replica Ready: {h['scale_up_ready_s'].get('min', 0):.0f}s min, "
          f"{h['scale_up_ready_s'].get('median', 0):.0f}s median; load stop -> one replica: "
          f"{h['scale_down_s'].get('median', 0):.0f}s median")
    kb.RESULTS.mkdir(exist_ok=True)
    out = kb.RESULTS / f"tooling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
