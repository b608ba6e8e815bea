"""`vnode demo`: the whole story on one machine, as the README's first command.

Starts (or reuses) the local control plane, joins this machine to it as the "Mac" node
from inside the node's network namespace, waits for Ready, and shows the node the way a
cluster user would see it. Everything keeps running until `vnode cluster down`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from vnode.cluster.build import BuildError
from vnode.cluster.local import ClusterError, LocalCluster
from vnode.cluster.netns import NetnsUnavailable
from vnode.cluster.processes import Proc

NODE = "mac"


def _ready(cluster: LocalCluster) -> dict | None:
    proc = cluster.kubectl("get", "node", NODE, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    node = json.loads(proc.stdout)
    ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"]
    return node if ready else None


def demo(directory: Path) -> int:
    cluster = LocalCluster(directory, node_name=NODE)
    try:
        state = cluster.up()
    except (ClusterError, BuildError, NetnsUnavailable) as exc:
        print(f"vnode demo: {exc}", file=sys.stderr)
        return 1
    print(f"control plane up: {state.server} (admin kubeconfig {state.admin_kubeconfig})")
    agent = next((Proc.from_dict(p) for p in state.procs if p["name"] == f"vnode-{NODE}" and Proc.from_dict(p).alive()), None)
    if agent is None:
        agent = cluster.start_agent()
        print(f"vnode joined as node {NODE!r} (pid {agent.pid}, InternalIP {state.host.ns_ip}, log {agent.log})")
    deadline = time.monotonic() + 60
    node = None
    while time.monotonic() < deadline and node is None:
        if not agent.alive():
            print(f"vnode demo: the agent exited; last lines of {agent.log}:\n{agent.log_tail()}", file=sys.stderr)
            return 1
        node = _ready(cluster)
        if node is None:
            time.sleep(0.3)
    if node is None:
        print(f"vnode demo: node {NODE} not Ready after 60s; see {agent.log}", file=sys.stderr)
        return 1
    print()
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
    status = node["status"]
    print(f"labels:      llmkube.dev/accelerator={node['metadata']['labels'].get('llmkube.dev/accelerator')}")
    print(f"taints:      {', '.join(t['key'] + '=' + t.get('value', '') + ':' + t['effect'] for t in node['spec'].get('taints', []))}")
    print(f"capacity:    cpu={status['capacity']['cpu']} memory={status['capacity']['memory']} pods={status['capacity']['pods']}")
    print(f"allocatable: memory={status['allocatable']['memory']}")
    print()
    print(f"try:   {state.kubectl} --kubeconfig {state.admin_kubeconfig} describe node {NODE}")
    print(f"stop:  vnode cluster down --dir {directory}")
    return 0
