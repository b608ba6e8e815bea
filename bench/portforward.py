#!/usr/bin/env python3
"""Port-forward throughput: vnode against direct TCP and against the kubelet's own Go code,
through the same real API server and kubectl, on an unshaped and on shaped links.

Starts a local control plane, the local hub, one vnode agent whose --llama-server is
bench/support/standin.py and the echo Pod of bench/kubelet_api.py: vnode launches the
stand-in on the Pod's port like any server, and on that port (the only one vnode's
port-forward reaches) it answers the readiness probe's GET /health and serves our bulk
protocol. Beside vnode, in the same network namespace and with the same serving
certificate, runs `goref serve` (bench/goref: the kubelet's own streaming code,
k8s.io/kubelet/pkg/cri/streaming/portforward, no auth) dialing the same node IP and port, and
a Node object of its own points the API server at it, with a Pod bound to that Node and
marked Running, so `kubectl port-forward` reaches it exactly as it reaches vnode. Paths
(every one ends at the same stand-in process, moving the same bytes):

  direct              TCP from the root namespace to <node ip>:<bulk port>
  kubectl -> vnode    kubectl port-forward -> API server -> vnode -> stand-in
  kubectl -> Go       kubectl port-forward -> API server -> kubelet Go code -> stand-in
  Go client -> vnode  `goref forward` (client-go's SPDY port-forward, what the API server
                      runs) straight to vnode with the API server's kubelet-client cert
  Go client -> Go     the same client straight to the kubelet Go code

Each transfer is --mb MB on a new connection, upload (PUT: the stand-in counts and
acks) and download (GET: it sends), --runs per path and direction, the paths interleaved
in a shuffled order each round. Besides MB/s, the CPU seconds per GB used by the
forwarding server (vnode's agent or goref serve), the API server and the client (kubectl or
goref forward) are read from /proc around every transfer.

Every process here shares the machine's cores: unshaped, the forwarded paths are bound
by the CPU the chain of TLS hops needs (client, API server and kubelet each encrypt or
decrypt every byte), not by vnode alone; that is why the kubelet's Go code is measured in
the same run. A Mac node reaches its cluster over a network link, so the same paths are
then measured with the node's veth shaped (tc tbf, both directions) to each --links rate.

Target (issue 5): kubectl port-forward at least 50 % of direct TCP throughput. Prints
medians and min per path, the ratios, CPU per GB, and writes JSON to bench/results/.
No assertions: numbers are for people and for trend lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import kubelet_api as kb  # noqa: E402 - bench/kubelet_api.py: the stand-in node and Pod, bulk client, kubectl helpers
import pods as podbench  # noqa: E402
from pods import cpu_seconds, foreign_activity, machine, wait_quiet  # noqa: E402
from vnode.cluster.build import cache_dir  # noqa: E402
from vnode.cluster.local import LocalCluster, free_port  # noqa: E402
from vnode.cluster.processes import Proc  # noqa: E402
from vnode.cluster.processes import start as start_process  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402

GOREF_SRC = BENCH / "goref"
REF_NODE, REF_POD, REF_PORT = "bench-goref", "bench-goref", 10251
TARGET = 0.5
PATHS = ("direct", "kubectl -> vnode", "kubectl -> Go", "Go client -> vnode", "Go client -> Go")


# --------------------------------------------------------------------------- the Go reference


def ensure_goref() -> Path:
    """Build bench/goref once per source version into the cache (Go module proxy, ~30 s)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((GOREF_SRC / name).read_bytes())
    target = cache_dir() / f"goref-{digest.hexdigest()[:12]}" / "goref"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print("building bench/goref (the kubelet's Go port-forward code, for comparison) ...", flush=True)
    tmp = target.with_suffix(".tmp")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."], cwd=GOREF_SRC, env=env, check=True)
    tmp.rename(target)
    return target


def start_goref_serve(cluster: LocalCluster, goref: Path) -> Proc:
    """In the node's namespace, on the node IP, with vnode's serving certificate (the API server
    verifies it against the cluster CA); recorded in the cluster state so down() stops it too."""
    state = cluster.state
    pki = Path(state.directory) / "pki"
    host = state.host.ns_ip
    node = state.node_name
    cmd = [*state.host.exec_prefix(), str(goref), "serve", f"--listen={host}:{REF_PORT}",
           f"--cert={pki / f'node-{node}-serving.crt'}", f"--key={pki / f'node-{node}-serving.key'}", f"--target={host}"]
    proc = start_process("goref-serve", cmd, log=Path(state.directory) / "logs" / "goref-serve.log")
    state.procs.append(proc.to_dict())
    state.save()
    kb.wait_port(host, REF_PORT, proc, what=f"goref serve (see {proc.log})")
    return proc


def register_reference(core: k8s.CoreV1Api, host: str) -> None:
    """A Node whose kubelet endpoint is goref serve, and a Running Pod bound to it: what the API
    server needs to proxy `kubectl port-forward` there. Nothing runs the Pod; the stand-in
    behind goref (vnode's echo Pod's server) plays its container."""
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": REF_NODE, "labels": {"vnode.bench/reference": "goref"}},
                      "spec": {"taints": [{"key": "vnode.bench/reference", "value": "goref", "effect": "NoSchedule"}]}})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_node_status(REF_NODE, {"status": {
        "addresses": [{"type": "InternalIP", "address": host}, {"type": "Hostname", "address": REF_NODE}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": REF_PORT}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    core.create_namespaced_pod(kb.NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": REF_POD},
        "spec": {"nodeName": REF_NODE, "tolerations": [{"operator": "Exists"}],  # stays through the node controller's taints
                 "containers": [{"name": "bulk", "image": "goref", "ports": [{"containerPort": kb.BULK_PORT}]}]}})
    core.patch_namespaced_pod_status(REF_POD, kb.NAMESPACE, {"status": {"phase": "Running", "podIP": host, "podIPs": [{"ip": host}]}})


def remove_reference(core: k8s.CoreV1Api) -> None:
    for call in (lambda: core.delete_namespaced_pod(REF_POD, kb.NAMESPACE, grace_period_seconds=0),
                 lambda: core.delete_node(REF_NODE)):
        try:
            call()
        except Exception:  # noqa: BLE001 - best effort; the cluster goes next
            pass


def start_goref_forward(children: kb.Children, goref: Path, cluster: LocalCluster, port: int, pod: str) -> tuple[subprocess.Popen, int]:
    """client-go's SPDY port-forward straight to a kubelet endpoint, as the API server would."""
    pki = Path(cluster.state.directory) / "pki"
    local = free_port("127.0.0.1")
    url = f"https://{cluster.state.host.ns_ip}:{port}/portForward/{kb.NAMESPACE}/{pod}"
    proc = children.popen(f"goref-forward-{port}", [str(goref), "forward", f"--url={url}", f"--ca={pki / 'ca.crt'}",
                                                    f"--cert={pki / 'apiserver-kubelet-client.crt'}",
                                                    f"--key={pki / 'apiserver-kubelet-client.key'}",
                                                    "--local=127.0.0.1", f"--ports={local}:{kb.BULK_PORT}"])
    kb.wait_port("127.0.0.1", local, proc, what="goref forward")
    return proc, local


# --------------------------------------------------------------------------- link shaping


def shape(cluster: LocalCluster, rate: str | None) -> None:
    """tc tbf on both ends of the node's veth (None: remove): the node's network link."""
    host = cluster.state.host
    for prefix, dev in (([], host.veth_root), (["ip", "netns", "exec", host.name], host.veth_ns)):
        subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
        if rate:
            subprocess.run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "20ms"],
                           check=True, capture_output=True)


# --------------------------------------------------------------------------- measuring


def transfer(addr: tuple[str, int], op: str, n: int, pids: dict[str, int]) -> dict:
    before = cpu_seconds(pids)
    mbps = kb.bulk_tcp(addr[0], addr[1], op, n)
    after = cpu_seconds(pids)
    return {"mb_per_s": mbps, "cpu_s_per_gb": {role: (after[role] - before[role]) / (n / 1e9) for role in pids}}


def run_round_robin(paths: dict[str, tuple[tuple[str, int], dict[str, int]]], n: int, runs: int, wait: float) -> dict:
    rows: dict[str, dict[str, list[dict]]] = {op: {name: [] for name in paths} for op in ("PUT", "GET")}
    for op in ("PUT", "GET"):
        for _ in range(runs):
            order = list(paths)
            random.shuffle(order)
            for name in order:
                if wait > 0:
                    wait_quiet(wait)
                addr, pids = paths[name]
                rows[op][name].append(transfer(addr, op, n, pids))
    return rows


def digest(rows: dict) -> dict:
    out: dict = {}
    for op, per_path in rows.items():
        out[op] = {}
        for name, samples in per_path.items():
            speeds = [s["mb_per_s"] for s in samples]
            roles = samples[0]["cpu_s_per_gb"].keys() if samples else ()
            out[op][name] = {"median": statistics.median(speeds), "min": min(speeds), "runs": speeds,
                             "cpu_s_per_gb": {r: statistics.median(s["cpu_s_per_gb"][r] for s in samples) for r in roles}}
        direct = out[op]["direct"]["median"]
        out[op]["ratios"] = {
            "kubectl -> vnode / direct (target >= 0.5)": out[op]["kubectl -> vnode"]["median"] / direct,
            "kubectl -> Go / direct": out[op]["kubectl -> Go"]["median"] / direct,
            "kubectl -> vnode / kubectl -> Go": out[op]["kubectl -> vnode"]["median"] / out[op]["kubectl -> Go"]["median"],
            "Go client -> vnode / Go client -> Go": out[op]["Go client -> vnode"]["median"] / out[op]["Go client -> Go"]["median"],
        }
    return out


def report(label: str, d: dict) -> None:
    print(f"{label}:")
    for op, what in (("PUT", "upload"), ("GET", "download")):
        print(f"  {what} (MB/s median [min]; CPU s per GB: forwarding server / API server / client)")
        for name in PATHS:
            p = d[op][name]
            c = p["cpu_s_per_gb"]
            cpu = " / ".join(f"{c[r]:.2f}" if r in c else "-" for r in ("server", "apiserver", "client")) if c else ""
            print(f"    {name:20s} {p['median']:8.1f} [{p['min']:7.1f}]   {cpu}")
        for name, r in d[op]["ratios"].items():
            extra = f"  ({'meets' if r >= TARGET else 'misses'})" if "target" in name else ""
            print(f"    {name:44s} {r:6.3f}{extra}")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one)")
    parser.add_argument("--mb", type=int, default=200, help="MB per transfer")
    parser.add_argument("--runs", type=int, default=3, help="transfers per path and direction")
    parser.add_argument("--links", default="1gbit,2500mbit", metavar="RATES",
                        help="also measure with the node's link shaped to each of these tc rates (comma-separated; '' for none)")
    parser.add_argument("--wait-quiet", type=float, default=5.0, metavar="S",
                        help="before each transfer wait up to S s for other processes to use < 0.15 core (0: don't)")
    args = parser.parse_args()
    links = [r.strip() for r in args.links.split(",") if r.strip()]

    started = time.monotonic()
    directory = (args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-pf-"))).resolve()
    noise = {"load_avg_at_start": os.getloadavg(), "other_clusters_at_start": foreign_activity(directory)}
    goref, gemma = ensure_goref(), podbench.gemma_path()
    cluster = LocalCluster(directory, node_name=kb.ECHO_NODE)  # its one node runs the stand-in
    state = cluster.up()
    children = kb.Children(directory / "logs")
    core: k8s.CoreV1Api | None = None
    servers: list[Proc] = []
    results: dict[str, dict] = {}
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        hub, hub_url = podbench.start_hub(cluster, gemma)
        servers.append(hub)
        agent = kb.start_echo_node(cluster, core, hub_url)
        host = state.host.ns_ip
        servers.append(start_goref_serve(cluster, goref))
        register_reference(core, host)
        core.create_namespaced_pod(kb.NAMESPACE, kb.echo_pod_manifest())
        kb.wait_pods_ready(core, {kb.ECHO_POD: agent})
        kubectl = kb.Kubectl(cluster)
        apiserver = next(p["pid"] for p in state.procs if p["name"] == "kube-apiserver")
        pf_vnode, local_vnode = kb.start_port_forward(children, kubectl, kb.ECHO_POD, [kb.BULK_PORT])
        pf_ref, local_ref = kb.start_port_forward(children, kubectl, REF_POD, [kb.BULK_PORT])
        gf_vnode, gl_vnode = start_goref_forward(children, goref, cluster, kb.KUBELET_PORT, kb.ECHO_POD)
        gf_ref, gl_ref = start_goref_forward(children, goref, cluster, REF_PORT, REF_POD)
        ref_pid = servers[-1].pid
        paths = {
            "direct": ((host, kb.BULK_PORT), {}),
            "kubectl -> vnode": (("127.0.0.1", local_vnode[kb.BULK_PORT]), {"server": agent.pid, "apiserver": apiserver, "client": pf_vnode.pid}),
            "kubectl -> Go": (("127.0.0.1", local_ref[kb.BULK_PORT]), {"server": ref_pid, "apiserver": apiserver, "client": pf_ref.pid}),
            "Go client -> vnode": (("127.0.0.1", gl_vnode), {"server": agent.pid, "client": gf_vnode.pid}),
            "Go client -> Go": (("127.0.0.1", gl_ref), {"server": ref_pid, "client": gf_ref.pid}),
        }
        n = args.mb * 1_000_000
        for name, (addr, _) in paths.items():  # warm-up: connections, TLS sessions, page cache
            kb.bulk_tcp(addr[0], addr[1], "PUT", min(n, 20_000_000))
        for rate in [None, *links]:
            label = f"link shaped to {rate}" if rate else "unshaped (veth; CPU-bound)"
            print(f"{label}: {args.mb} MB per transfer, {args.runs} per path and direction ...", flush=True)
            shape(cluster, rate)
            try:
                results[rate or "unshaped"] = digest(run_round_robin(paths, n, args.runs, args.wait_quiet))
            finally:
                shape(cluster, None)
        noise["other_clusters_at_end"] = foreign_activity(directory)
    finally:
        children.stop_all()
        if core is not None and cluster.state is not None:
            remove_reference(core)
            podbench.cleanup_pods(core)
        for proc in servers:
            stop_process(proc)
        cluster.down()
        podbench.stop_leftover_servers(directory)
        shutil.rmtree(directory / "agents" / kb.ECHO_NODE / "models", ignore_errors=True)
    elapsed = time.monotonic() - started

    result = {
        "bench": "portforward",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "noise": noise,
        "elapsed_s": round(elapsed, 1),
        "args": vars(args) | {"dir": str(directory), "links": links},
        "results": results,
        "target": {"kubectl port-forward / direct": TARGET},
    }
    kb.RESULTS.mkdir(exist_ok=True)
    out = kb.RESULTS / f"portforward-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    for label, d in results.items():
        report(label, d)
    print(f"took {elapsed:.0f} s; cluster logs in {directory / 'logs'}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
