#!/usr/bin/env python3
"""Node benchmarks: time from `vnode run` to Node Ready, and the idle agent's footprint.

Starts (or reuses, with --dir) a local control plane, then
  1. N times: delete the Node, start `vnode run`, time until the API server reports the
     Node Ready ("fresh"); and N times with the Node already there ("rejoin");
  2. keeps one agent running idle as a registered node and samples its RSS and CPU time
     every second for --idle-seconds.
Prints min/median (these machines are noisy) next to the targets and writes JSON to
bench/results/. Targets: Ready under 2 s on a warm cluster; idle RSS <= 60 MiB and
CPU <= 1 % of one core. No assertions: numbers are for people and for trend lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from kubernetes import client as k8s
from kubernetes import config as k8s_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import machine, summary  # noqa: E402 - bench/pods.py: shared result helpers
from vnode.cluster.local import LocalCluster  # noqa: E402
from vnode.cluster.processes import Proc, stop  # noqa: E402

NODE = "bench-mac"
RESULTS = Path(__file__).resolve().parent / "results"


def ready(core: k8s.CoreV1Api) -> bool:
    try:
        node = core.read_node_status(NODE, _request_timeout=2)
    except k8s.ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def time_to_ready(cluster: LocalCluster, core: k8s.CoreV1Api, *, fresh: bool) -> float:
    if fresh:
        try:
            core.delete_node(NODE)
        except k8s.ApiException:
            pass
        while True:
            try:
                core.read_node(NODE)
                time.sleep(0.05)
            except k8s.ApiException:
                break
    started = time.monotonic()
    proc = cluster.start_agent()
    try:
        while not ready(core):
            if not proc.alive():
                raise SystemExit(f"agent exited; see {proc.log}")
            time.sleep(0.01)
        return time.monotonic() - started
    finally:
        stop(proc)
        cluster.forget(proc)


def mark_not_ready(core: k8s.CoreV1Api) -> None:
    """Before a rejoin, make the Node not Ready so the timing measures this agent's report."""
    node = core.read_node_status(NODE)
    conditions = [
        {"type": c.type, "status": "Unknown" if c.type == "Ready" else c.status, "reason": "BenchReset", "message": "reset by bench"}
        for c in node.status.conditions
    ]
    core.patch_node_status(NODE, {"status": {"conditions": conditions}})


def idle_footprint(cluster: LocalCluster, core: k8s.CoreV1Api, seconds: int) -> dict:
    proc: Proc = cluster.start_agent()
    try:
        while not ready(core):
            time.sleep(0.05)
        p = psutil.Process(proc.pid)
        time.sleep(2)  # let start-up allocations settle
        cpu0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
        rss = []
        for _ in range(seconds):
            rss.append(p.memory_info().rss)
            time.sleep(1)
        cpu1, t1 = sum(p.cpu_times()[:2]), time.monotonic()
        return {
            "rss_mib": {"min": min(rss) / 2**20, "median": statistics.median(rss) / 2**20, "max": max(rss) / 2**20},
            "cpu_percent_of_one_core": 100 * (cpu1 - cpu0) / (t1 - t0),
            "seconds": round(t1 - t0, 1),
        }
    finally:
        stop(proc)
        cluster.forget(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="reuse/keep a cluster directory (default: a temporary one)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=int, default=60)
    args = parser.parse_args()

    directory = args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-"))
    cluster = LocalCluster(directory, node_name=NODE)
    state = cluster.up()
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        fresh = [time_to_ready(cluster, core, fresh=True) for _ in range(args.runs)]
        rejoin = []
        for _ in range(args.runs):
            mark_not_ready(core)
            rejoin.append(time_to_ready(cluster, core, fresh=False))
        idle = idle_footprint(cluster, core, args.idle_seconds)
    finally:
        if args.dir is None:
            cluster.down()

    result = {
        "bench": "node",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "time_to_ready_s": {"fresh": summary(fresh), "rejoin": summary(rejoin)},
        "idle": idle,
        "targets": {"time_to_ready_s": 2.0, "idle_rss_mib": 60, "idle_cpu_percent": 1.0},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"node-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    t = result["time_to_ready_s"]
    print(f"time from `vnode run` to Node Ready (target < 2.0 s), {args.runs} runs each:")
    print(f"  fresh registration  min {t['fresh']['min']:.2f} s   median {t['fresh']['median']:.2f} s")
    print(f"  rejoin (Node kept)  min {t['rejoin']['min']:.2f} s   median {t['rejoin']['median']:.2f} s")
    print(f"idle agent over {idle['seconds']} s (targets: RSS <= 60 MiB, CPU <= 1 % of a core):")
    print(f"  RSS  min {idle['rss_mib']['min']:.1f} MiB   median {idle['rss_mib']['median']:.1f} MiB   max {idle['rss_mib']['max']:.1f} MiB")
    print(f"  CPU  {idle['cpu_percent_of_one_core']:.2f} % of one core")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
