#!/usr/bin/env python3
"""Eviction benchmark: time from memory-pressure onset to the first eviction.

Starts a local control plane, the local Hugging Face-like hub (tests/support/hfserver.py)
and one vnode agent with the test hook --eviction-signal-file, then --runs times: a bare
Gemma 3 270M Pod is created and waited for until Ready; pressure starts when
`{"memory.available": "80Mi"}` is written to the signal file (below the default hard
threshold 100Mi); timed from that write to
  - the agent's decision (its "evicting pod" log line),
  - the API server showing the pod Failed/Evicted (20 ms poll),
  - the pod's llama-server process gone,
  - the Node's MemoryPressure=True (written at the next node status update);
then pressure is cleared, the memory-pressure taint waited out and the pod deleted.
With the kubelet's 10 s monitoring interval the onset lands anywhere in an interval, so
expect a spread of 0-10 s plus the stop; --interval makes the loop tighter. Prints
min/median and writes JSON to bench/results/. No assertions: numbers for people and trend
lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import (  # noqa: E402 - bench/pods.py: shared set-up and result helpers
    NAMESPACE,
    cleanup_pods,
    gemma_path,
    machine,
    node_ready,
    pod_manifest,
    server_pid,
    start_hub,
    stop_leftover_servers,
    summary,
    wait_health,
)
from vnode.cluster.build import ensure_llama_server  # noqa: E402
from vnode.cluster.local import LocalCluster  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402

NODE = "bench-evict"
RESULTS = Path(__file__).resolve().parent / "results"
TAINT = "node.kubernetes.io/memory-pressure"
PRESSURE = {"memory.available": "80Mi"}
PLENTY = {"memory.available": "8Gi"}


def memory_pressure(core: k8s.CoreV1Api) -> tuple[str | None, bool]:
    """(MemoryPressure status, memory-pressure taint present) of the bench node."""
    node = core.read_node(NODE, _request_timeout=5)
    status = next((c.status for c in node.status.conditions or [] if c.type == "MemoryPressure"), None)
    return status, any(t.key == TAINT for t in node.spec.taints or [])


def decision_time(log: Path, pod: str) -> float | None:
    """Wall-clock time of the agent's `evicting pod <ns>/<pod>` line (local time, ms)."""
    needle = f"evicting pod {NAMESPACE}/{pod} "
    for line in log.read_text(errors="replace").splitlines():
        if needle in line:
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


def one_run(core: k8s.CoreV1Api, *, index: int, port: int, host: str, signal: Path, log: Path, timeout: float) -> dict:
    name = f"bench-evict-{index:02d}"
    core.create_namespaced_pod(NAMESPACE, pod_manifest(name, port))
    wait_health(host, port, timeout=240)
    deadline = time.monotonic() + 60
    while not any(c.type == "Ready" and c.status == "True" for c in core.read_namespaced_pod_status(name, NAMESPACE).status.conditions or []):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pod {name} not Ready")
        time.sleep(0.05)
    pid = server_pid(host, port)
    time.sleep(0.5)  # not aligned with the agent's interval on purpose: onset lands anywhere in it

    wall0, t0 = time.time(), time.monotonic()
    signal.write_text(json.dumps(PRESSURE))
    seen: dict[str, float] = {}
    reason = message = None
    deadline = t0 + timeout
    while len(seen) < 3 and time.monotonic() < deadline:
        now = time.monotonic()
        if "failed" not in seen:
            status = core.read_namespaced_pod_status(name, NAMESPACE, _request_timeout=5).status
            if status.phase == "Failed":
                seen["failed"] = time.monotonic() - t0
                reason, message = status.reason, status.message
        if "server_exit" not in seen and (pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE):
            seen["server_exit"] = now - t0
        if "condition" not in seen and memory_pressure(core)[0] == "True":
            seen["condition"] = time.monotonic() - t0
        time.sleep(0.02)
    decided = decision_time(log, name)
    out = {
        "name": name, "port": port, "server_pid": pid, "reason": reason, "message": message,
        "onset_to_decision_s": decided - wall0 if decided else None,
        "onset_to_failed_s": seen.get("failed"),
        "onset_to_server_exit_s": seen.get("server_exit"),
        "onset_to_memory_pressure_s": seen.get("condition"),
    }
    # Pressure over: wait for the taint to go (the next pod must be schedulable), then delete.
    signal.write_text(json.dumps(PLENTY))
    t_clear = time.monotonic()
    while memory_pressure(core) != ("False", False):
        if time.monotonic() - t_clear > 120:
            raise TimeoutError("MemoryPressure did not clear")
        time.sleep(0.1)
    out["clear_to_pressure_over_s"] = time.monotonic() - t_clear
    core.delete_namespaced_pod(name, NAMESPACE)
    while core.list_namespaced_pod(NAMESPACE, field_selector=f"metadata.name={name}").items:
        time.sleep(0.1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one); logs are kept")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", default="10s", help="--eviction-monitoring-interval (default: the kubelet's 10s)")
    parser.add_argument("--transition", default="3s", help="--eviction-pressure-transition-period (kubelet: 5m; short so runs follow quickly)")
    parser.add_argument("--base-port", type=int, default=18600)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each eviction")
    args = parser.parse_args()

    directory = (args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-evict-"))).resolve()
    binary = ensure_llama_server()
    cluster = LocalCluster(directory, node_name=NODE)
    state = cluster.up()
    hub = None
    runs: list[dict] = []
    started = time.monotonic()
    signal = directory / "memory-signal.json"
    signal.write_text(json.dumps(PLENTY))
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        hub, hub_url = start_hub(cluster, gemma_path())
        agent = cluster.start_agent(f"--hf-endpoint={hub_url}", f"--llama-server={binary}", f"--eviction-signal-file={signal}",
                                    f"--eviction-monitoring-interval={args.interval}",
                                    f"--eviction-pressure-transition-period={args.transition}", node_name=NODE)
        deadline = time.monotonic() + 60
        while not node_ready(core, NODE):
            if not agent.alive() or time.monotonic() > deadline:
                raise SystemExit(f"agent did not make {NODE} Ready; see {agent.log}")
            time.sleep(0.1)
        host = state.host.ns_ip
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            runs.append(one_run(core, index=i + 1, port=args.base_port + i, host=host, signal=signal, log=Path(agent.log),
                                timeout=args.timeout))
    finally:
        if cluster.state is not None:
            try:
                cleanup_pods(k8s.CoreV1Api())
            except Exception as exc:  # noqa: BLE001 - best effort
                print(f"warning: cleanup failed: {exc}", file=sys.stderr)
        if hub is not None:
            stop_process(hub)
        cluster.down()
        stop_leftover_servers(directory)
        for bulky in (directory / "agents" / NODE / "models", directory / "etcd"):
            shutil.rmtree(bulky, ignore_errors=True)

    keys = ("onset_to_decision_s", "onset_to_failed_s", "onset_to_server_exit_s", "onset_to_memory_pressure_s", "clear_to_pressure_over_s")
    result = {
        "bench": "eviction",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "args": {"runs": args.runs, "interval": args.interval, "transition": args.transition},
        "summary": {k: summary([r[k] for r in runs]) for k in keys},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"eviction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    print(f"memory pressure onset (signal file written) -> first eviction, {len(runs)} runs, "
          f"monitoring interval {args.interval}, transition period {args.transition}:")
    labels = {
        "onset_to_decision_s": "agent decides (log line)",
        "onset_to_failed_s": "pod Failed/Evicted in the API",
        "onset_to_server_exit_s": "llama-server exited",
        "onset_to_memory_pressure_s": "Node MemoryPressure=True",
        "clear_to_pressure_over_s": "cleared -> MemoryPressure False, taint gone",
    }
    for key, label in labels.items():
        s = result["summary"][key]
        if s["n"]:
            print(f"  {label:44s} min {s['min']:6.2f} s   median {s['median']:6.2f} s   max {s['max']:6.2f} s")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
