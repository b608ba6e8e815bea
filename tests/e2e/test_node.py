"""The Mac as a Node, seen through the real kubectl against a real control plane."""

from __future__ import annotations

import datetime as dt
import json
import time

import psutil
import pytest
from kubernetes.utils.quantity import parse_quantity

from vnode.node.budget import allocatable_memory
from vnode.node.status import ACCELERATOR_LABEL, MACHINE_ID_ANNOTATION

from .conftest import NODE, condition, node_json, node_ready, wait_for


def ki(quantity: str) -> int:
    """Bytes of a quantity as the API server canonicalised it (Ki, Mi, ...)."""
    return int(parse_quantity(quantity))


def test_node_ready_with_label_taint_capacity(cluster, joined):
    node = node_json(cluster)
    meta, spec, status = node["metadata"], node["spec"], node["status"]
    assert meta["labels"][ACCELERATOR_LABEL] == "metal"
    assert meta["labels"]["kubernetes.io/hostname"] == NODE
    assert meta["labels"]["kubernetes.io/os"] == status["nodeInfo"]["operatingSystem"]
    assert {"key": ACCELERATOR_LABEL, "value": "metal", "effect": "NoSchedule"} in spec["taints"]

    total = psutil.virtual_memory().total
    assert ki(status["capacity"]["memory"]) == total // 1024 * 1024
    assert ki(status["allocatable"]["memory"]) == allocatable_memory(total)
    assert int(status["capacity"]["cpu"]) == psutil.cpu_count()
    assert status["capacity"]["pods"] == "110"

    assert {"type": "InternalIP", "address": cluster.state.host.ns_ip} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
    assert status["nodeInfo"]["kubeletVersion"].endswith("-vnode")
    assert status["nodeInfo"]["machineID"] == meta["annotations"][MACHINE_ID_ANNOTATION]
    for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        assert condition(node, kind)["status"] == "False", condition(node, kind)
    assert condition(node, "Ready")["reason"] == "KubeletReady"


def test_kubectl_get_nodes_shows_the_mac(cluster, joined):
    out = cluster.kubectl("get", "nodes", "-l", f"{ACCELERATOR_LABEL}=metal", "-o", "wide").stdout
    line = next(l for l in out.splitlines() if l.startswith(NODE))
    assert " Ready " in line and cluster.state.host.ns_ip in line


def test_lease_renewed_every_ten_seconds(cluster, joined):
    def lease() -> dict:
        return json.loads(cluster.kubectl("get", "lease", NODE, "-n", "kube-node-lease", "-o", "json").stdout)

    first = lease()
    assert first["spec"]["holderIdentity"] == NODE
    assert first["spec"]["leaseDurationSeconds"] == 40
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
    before = first["spec"]["renewTime"]
    second = wait_for(lambda: (l := lease())["spec"]["renewTime"] != before and l, timeout=25, what="lease renewal")
    t0 = dt.datetime.fromisoformat(before.replace("Z", "+00:00"))
    t1 = dt.datetime.fromisoformat(second["spec"]["renewTime"].replace("Z", "+00:00"))
    assert 5 <= (t1 - t0).total_seconds() <= 15


def test_node_restriction_denies_touching_another_node(cluster, joined):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "someone-else"}}))
    node_kcfg = cluster.state.node_kubeconfig()
    denied = cluster.kubectl("label", "node", "someone-else", "stolen=yes", kubeconfig=node_kcfg, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower() and f"system:node:{NODE}" in denied.stderr
    # Its own node it may label; pods it may only list with its fieldSelector.
    cluster.kubectl("label", "node", NODE, "example.com/own=yes", "--overwrite", kubeconfig=node_kcfg)
    listing = cluster.kubectl("get", "pods", "-A", kubeconfig=node_kcfg, check=False)
    assert listing.returncode != 0 and "forbidden" in listing.stderr.lower()
    cluster.kubectl("delete", "node", "someone-else")


def test_memory_fraction_and_no_taint(cluster, agents):
    name = "vnode-e2e-half"
    agents.start("--memory-fraction=0.5", "--no-register-taint", "--kubelet-port=10251", "--label=example.com/tier=test", name=name)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
    node = node_json(cluster, name)
    total = psutil.virtual_memory().total
    assert ki(node["status"]["allocatable"]["memory"]) == allocatable_memory(total, 0.5)
    assert not [t for t in node["spec"].get("taints", []) if t["key"] == ACCELERATOR_LABEL]
    assert node["metadata"]["labels"]["example.com/tier"] == "test"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10251
    cluster.kubectl("delete", "node", name)


def test_refuses_a_node_owned_by_another_machine(cluster, agents):
    name = "vnode-e2e-taken"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {MACHINE_ID_ANNOTATION: "another-mac-0000"}},
    }))
    proc = agents.start(name=name)
    wait_for(lambda: not proc.alive(), timeout=30, what="agent to exit")
    log = open(proc.log).read()
    assert "registered by another machine" in log and "--force" in log
    assert "Traceback" not in log
    assert node_json(cluster, name)["metadata"]["annotations"][MACHINE_ID_ANNOTATION] == "another-mac-0000"

    agents.start("--force", name=name)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what="taken-over node Ready")
    assert node_json(cluster, name)["metadata"]["annotations"][MACHINE_ID_ANNOTATION] != "another-mac-0000"
    cluster.kubectl("delete", "node", name)


def test_unreachable_api_server_is_retried_with_a_clear_log(cluster, agents, tmp_path):
    state = cluster.state
    name = "vnode-e2e-lost"
    kcfg = agents.credentials(name)
    text = kcfg.read_text().replace(state.server, f"https://{state.host.root_ip}:1")
    kcfg.write_text(text)
    proc = agents.start(name=name)
    wait_for(lambda: "unreachable" in open(proc.log).read(), timeout=30, what="unreachable log line")
    time.sleep(3)
    assert proc.alive(), "the agent must keep retrying, not exit"
    log = open(proc.log).read()
    assert "Traceback" not in log
    assert log.count("API server unreachable") <= 2, "one line per distinct problem, not one per retry"


def test_expired_credentials_are_reported(cluster, agents):
    name = "vnode-e2e-expired"
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    agents.credentials(name, not_before=past - dt.timedelta(days=1), not_after=past)
    proc = agents.start(name=name)
    wait_for(lambda: "401 Unauthorized" in open(proc.log).read(), timeout=30, what="401 log line")
    assert proc.alive()
    log = open(proc.log).read()
    assert "expired" in log and "Traceback" not in log


@pytest.mark.parametrize("bad", [["--memory-fraction=2"], ["--host-ip=127.0.0.1"], ["--node-name=Not_Valid"]])
def test_invalid_flags_exit_2_with_one_line(cluster, agents, bad):
    proc = agents.start(*bad)
    wait_for(lambda: not proc.alive(), timeout=20, what="agent to exit")
    text = open(proc.log).read().strip()
    assert len(text.splitlines()) == 1 and bad[0].split("=")[0] in text, text
