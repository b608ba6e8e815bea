"""Memory pressure on the Mac node, as a user sees it: the node reports MemoryPressure and
gets the memory-pressure taint, the Gemma pod is evicted with the kubelet's reason and
message and its server stops, the Deployment's replacement runs once pressure is over.

Pressure is simulated with the test hook --eviction-signal-file (memory.available read
from a file), so the machine itself is never starved.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from vnode.cluster.build import ensure_llama_server

from .conftest import Agents, condition, node_json, node_ready, wait_for
from .test_pods import apply, deployment, pods, server_pid

NODE = "vnode-e2e-evict"
PORT = 8130
TRANSITION = 5  # --eviction-pressure-transition-period, seconds
TAINT = "node.kubernetes.io/memory-pressure"


@pytest.fixture
def evicting_mac(cluster, hub):
    signal = Path(cluster.state.directory) / f"{NODE}-memory.json"
    signal.unlink(missing_ok=True)  # absent: the machine's own reading, plenty here
    agents = Agents(cluster)
    agents.start(
        f"--hf-endpoint={hub}", f"--llama-server={ensure_llama_server()}", f"--eviction-signal-file={signal}",
        "--eviction-monitoring-interval=1", f"--eviction-pressure-transition-period={TRANSITION}s",
        "--node-status-update-seconds=1", name=NODE,
    )
    wait_for(lambda: node_ready(cluster, NODE), timeout=60, what=f"{NODE} Ready")
    yield signal
    agents.stop_all()
    cluster.kubectl("delete", "node", NODE, check=False)


@pytest.fixture
def ns(cluster):
    name = f"evict-{int(time.time()) % 100000}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def taints(cluster) -> list[dict]:
    return node_json(cluster, NODE)["spec"].get("taints") or []


def test_memory_pressure_evicts_the_pod_and_clears_after_the_transition_period(cluster, evicting_mac, ns):
    signal = evicting_mac
    apply(cluster, ns, deployment("hungry", port=PORT, node=NODE))
    wait_for(lambda: [p for p in pods(cluster, ns, "hungry") if p["status"].get("phase") == "Running"
                      and all(c["ready"] for c in p["status"].get("containerStatuses") or [])],
             timeout=240, what="hungry pod Ready")
    (victim,) = pods(cluster, ns, "hungry")
    name, pid = victim["metadata"]["name"], server_pid(PORT)
    assert pid
    assert condition(node_json(cluster, NODE), "MemoryPressure")["status"] == "False"

    signal.write_text(json.dumps({"memory.available": "80Mi"}))

    # The node: MemoryPressure=True with the kubelet's reason, and the lifecycle controller's taint.
    pressure = wait_for(lambda: (c := condition(node_json(cluster, NODE), "MemoryPressure"))["status"] == "True" and c,
                        timeout=30, what="MemoryPressure=True")
    assert pressure["reason"] == "KubeletHasInsufficientMemory"
    assert "memory.available 80Mi is below the hard threshold 100Mi" in pressure["message"], pressure
    assert wait_for(lambda: [t for t in taints(cluster) if t["key"] == TAINT and t["effect"] == "NoSchedule"],
                    timeout=30, what=f"{TAINT}:NoSchedule taint")

    # The pod: Failed/Evicted with the numbers, an Event, and its server gone for good.
    def get() -> dict:
        return json.loads(cluster.kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout)

    pod = wait_for(lambda: (p := get())["status"].get("phase") == "Failed" and p, timeout=60, what="the pod Failed")
    status = pod["status"]
    assert status["reason"] == "Evicted"
    message = status["message"]
    assert message.startswith("The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. "), message
    assert re.search(r"Container server was using \d+(Ki|Mi|Gi)?, request is 0, has larger consumption of memory\.", message), message
    target = next(c for c in status["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"]) == ("True", "TerminationByKubelet")
    described = cluster.kubectl("describe", "pod", "-n", ns, name).stdout
    assert re.search(r"Status:\s+Failed", described) and re.search(r"Reason:\s+Evicted", described), described
    assert "The node was low on resource: memory." in described, described
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}",
                                        "-o", "json").stdout)["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "Evicted" and e["message"] == message for e in events), events
    wait_for(lambda: server_pid(PORT) is None, timeout=30, what="the evicted pod's server to exit")
    time.sleep(3)  # three monitoring intervals: nothing restarts it
    assert server_pid(PORT) is None
    assert get()["status"]["phase"] == "Failed"
    node_events = cluster.kubectl("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={NODE}").stdout
    assert "EvictionThresholdMet" in node_events and "NodeHasInsufficientMemory" in node_events, node_events

    # Pressure over: MemoryPressure holds for the transition period, then clears; the taint goes.
    signal.write_text(json.dumps({"memory.available": "8Gi"}))
    cleared_at = time.monotonic()
    time.sleep(2)
    assert condition(node_json(cluster, NODE), "MemoryPressure")["status"] == "True"  # still inside the 5 s
    released = wait_for(lambda: (c := condition(node_json(cluster, NODE), "MemoryPressure"))["status"] == "False" and c,
                        timeout=30, what="MemoryPressure=False")
    assert released["reason"] == "KubeletHasSufficientMemory"
    assert time.monotonic() - cleared_at >= TRANSITION - 1.5  # the last breach was seen at most an interval before
    wait_for(lambda: not [t for t in taints(cluster) if t["key"] == TAINT], timeout=30, what="the taint removed")

    # The ReplicaSet's replacement runs here again (the evicted pod gave its port back); the
    # evicted pod is not deleted by the node.
    replacement = wait_for(lambda: [p for p in pods(cluster, ns, "hungry") if p["metadata"]["name"] != name
                                    and p["status"].get("phase") == "Running"
                                    and all(c["ready"] for c in p["status"].get("containerStatuses") or [])],
                           timeout=240, what="the replacement pod Ready")
    assert replacement[0]["spec"]["nodeName"] == NODE and server_pid(PORT) not in (None, pid)
    assert get()["status"]["reason"] == "Evicted"
