"""Stopping and restarting the agent: the control plane sees the node die and come back."""

from __future__ import annotations

from .conftest import condition, node_json, node_ready, wait_for


def test_stop_makes_node_unknown_and_restart_recovers_it(cluster, agents):
    proc = agents.start()
    wait_for(lambda: node_ready(cluster), timeout=60, what="node Ready")
    uid = node_json(cluster)["metadata"]["uid"]

    agents.stop(proc)
    wait_for(lambda: condition(node_json(cluster), "Ready").get("status") == "Unknown", timeout=60, what="Ready=Unknown")
    taints = wait_for(
        lambda: [t for t in node_json(cluster)["spec"].get("taints", []) if t["key"] == "node.kubernetes.io/unreachable"],
        timeout=30, what="unreachable taint",
    )
    assert {t["effect"] for t in taints} >= {"NoSchedule"}

    agents.start()
    wait_for(lambda: node_ready(cluster), timeout=60, what="node Ready again")
    node = node_json(cluster)
    assert node["metadata"]["uid"] == uid, "restart must keep the same Node"
    wait_for(
        lambda: not [t for t in node_json(cluster)["spec"].get("taints", []) if t["key"] == "node.kubernetes.io/unreachable"],
        timeout=30, what="unreachable taint removed",
    )
