#!/usr/bin/env python3
"""API requests of an idle node: what each agent costs the API server, from its audit log.

Starts (or reuses, with --dir) a local control plane whose kube-apiserver writes an audit
log of every request by a node (group system:nodes), joins two idle nodes at once — this
tree's agent and, for comparison, the agent of a git ref (default HEAD, extracted with `git
archive`; the working tree is not touched) — and counts each node's requests over
--idle-seconds by user system:node:<name>, verb and resource. apiserver_request_total has
no user label, hence the audit log. Prints requests per minute (min/median over the
minutes of the window, and the mean) next to the kubelet's budget: a Lease update every
10 s, node status at most every 5 min, and its watches restarted every 5 to 10 minutes
(6.2 to 6.6 requests a minute for pods and node). Writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import machine  # noqa: E402 - bench/pods.py: shared result helpers
from vnode.cluster import pki  # noqa: E402
from vnode.cluster.local import LocalCluster, write_kubeconfig  # noqa: E402
from vnode.cluster.processes import start as start_process  # noqa: E402
from vnode.cluster.processes import stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:nodes"]
- level: None
"""
# The kubelet, idle: Lease PUT every 10 s, node status PATCH every 5 min, pod and node watches
# restarted every 5-10 min (client-go's reflector), nothing listed again while they resume.
KUBELET_PER_MINUTE = {"update leases": 6.0, "patch nodes/status": 0.2, "watch pods": 0.13, "watch nodes": 0.13}


def ready(cluster: LocalCluster, name: str) -> bool:
    proc = cluster.kubectl("get", "node", name, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conds = json.loads(proc.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def credentials(cluster: LocalCluster, name: str) -> Path:
    state = cluster.state
    pki_dir = Path(state.directory) / "pki"
    client, _ = pki.node_credentials(pki_dir, node_name=name, node_ip=state.host.ns_ip)
    return write_kubeconfig(state.node_kubeconfig(name), server=state.server, ca=pki_dir / "ca.crt", cert=client.cert,
                            key=client.key, user=f"system:node:{name}")


def extract(ref: str, into: Path) -> Path:
    """The `vnode` package as it is at `ref`, in a directory of its own."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "vnode"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    check = subprocess.run([sys.executable, "-c", "import vnode, sys; sys.stdout.write(vnode.__file__)"], cwd=into,
                           capture_output=True, text=True, check=True).stdout
    assert check.startswith(str(into)), f"the baseline would import {check}"
    return into


def count(audit: Path, *, users: list[str], start: dt.datetime, end: dt.datetime) -> dict[str, dict]:
    """Requests received in [start, end) per user: by 'verb resource[/subresource]' and per minute."""
    seen: dict[str, dict] = {}
    for line in audit.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        user = (e.get("user") or {}).get("username")
        if user not in users:
            continue
        when = dt.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if not start <= when < end:
            continue
        ref = e.get("objectRef") or {}
        what = f"{e['verb']} {ref.get('resource', e.get('requestURI', '?'))}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        seen.setdefault(user, {})[e["auditID"]] = (what, int((when - start).total_seconds() // 60))
    out = {}
    minutes = max(1, int((end - start).total_seconds() // 60))
    for user in users:
        requests = seen.get(user, {}).values()
        by_kind = collections.Counter(w for w, _ in requests)
        per_minute = collections.Counter(m for _, m in requests)
        buckets = [per_minute.get(m, 0) for m in range(minutes)]
        total = len(requests)
        out[user] = {
            "total": total,
            "per_minute": {"min": min(buckets), "median": statistics.median(buckets), "mean": total / ((end - start).total_seconds() / 60)},
            "by_kind": dict(sorted(by_kind.items())),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one, removed after)")
    parser.add_argument("--idle-seconds", type=int, default=660, help="the window counted (watches restart every 5-10 min)")
    parser.add_argument("--baseline", default="HEAD", help="git ref whose agent runs beside this tree's (empty: none)")
    args = parser.parse_args()

    directory = args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-api-"))
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "audit-policy.yaml"
    policy.write_text(POLICY)
    audit = directory / "audit.log"
    cluster = LocalCluster(directory / "cluster", node_name="bench-api", metrics=False,
                           apiserver_args=(f"--audit-policy-file={policy}", f"--audit-log-path={audit}"))
    cluster.up()
    nodes = {"bench-api-tree": None}
    if args.baseline:
        nodes[f"bench-api-{args.baseline.lower().replace('/', '-')[:20]}"] = extract(args.baseline, directory / "baseline")
    baseline_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                                     text=True).stdout.strip() if args.baseline else ""
    procs = []
    try:
        for port, (name, code) in enumerate(nodes.items(), start=10290):
            kubeconfig = credentials(cluster, name)
            if code is None:
                procs.append(cluster.start_agent(f"--kubelet-port={port}", node_name=name, kubeconfig=kubeconfig,
                                                 serving_cert=False))
                continue
            # `python -m vnode` imports from its working directory first: run the baseline from its own.
            cmd = cluster.agent_command(f"--kubelet-port={port}", node_name=name, kubeconfig=kubeconfig, serving_cert=False)
            proc = start_process(f"vnode-{name}", cmd, log=directory / f"vnode-{name}.log",
                                 env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
            cluster.state.procs.append(proc.to_dict())
            cluster.state.save()
            procs.append(proc)
        deadline = time.monotonic() + 120
        while not all(ready(cluster, n) for n in nodes):
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                raise SystemExit(f"nodes not Ready; see {[p.log for p in procs]}")
            time.sleep(0.5)
        time.sleep(20)  # start-up requests (registration, first lists) are not the idle cost
        start = dt.datetime.now(dt.timezone.utc)
        print(f"counting requests of {', '.join(nodes)} for {args.idle_seconds} s ...", flush=True)
        time.sleep(args.idle_seconds)
        end = dt.datetime.now(dt.timezone.utc)
        time.sleep(2)  # the audit log is written as requests complete
        counted = count(audit, users=[f"system:node:{n}" for n in nodes], start=start, end=end)
    finally:
        for proc in procs:
            stop(proc)
            cluster.forget(proc)
        cluster.down()

    result = {
        "bench": "api_requests",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "idle_seconds": args.idle_seconds,
        "source": "kube-apiserver audit log (user system:node:<name>), requests received in the window",
        "nodes": {n: {"code": "this tree" if c is None else f"git {args.baseline} ({baseline_commit})", **counted[f"system:node:{n}"]}
                  for n, c in nodes.items()},
        "kubelet_budget_per_minute": {**KUBELET_PER_MINUTE, "total": round(sum(KUBELET_PER_MINUTE.values()), 2)},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"api_requests-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    budget = result["kubelet_budget_per_minute"]["total"]
    print(f"requests per minute of an idle node over {args.idle_seconds} s (kubelet budget ~{budget}/min):")
    for name, r in result["nodes"].items():
        pm = r["per_minute"]
        print(f"  {name} ({r['code']}): min {pm['min']}  median {pm['median']}  mean {pm['mean']:.2f}  total {r['total']}")
        for kind, n in r["by_kind"].items():
            print(f"      {kind:28s} {n:4d}  ({n / (args.idle_seconds / 60):.2f}/min)")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
