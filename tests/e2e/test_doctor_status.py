"""`vnode doctor` and `vnode status` as the Mac's owner runs them beside a running node: with
the same flags as `vnode run`, inside the "Mac" (the node's namespace), against the real
control plane and a real pod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


from .conftest import CORRUPT_REPO, FILE, ROOT, serving_nodes, wait_for
from .test_pods import apply, deployment, one_pod, pods, waiting_reason

NODE = "vnode-e2e-status"
PORT = 8175


@dataclass
class Mac:
    flags: list[str]  # the agent's own `vnode run` flags
    log: Path  # its output


@pytest.fixture(scope="module")
def mac(cluster, hub):
    with serving_nodes(cluster, hub, [NODE], "--node-status-update-seconds=1", "--log-format=json") as agents:
        proc = agents.started[0]
        # The flags the agent runs with, as the owner would give them to doctor and status.
        yield Mac(flags=proc.cmd[proc.cmd.index("run") + 1:], log=Path(proc.log))


def vnode(cluster, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cluster.state.host.exec_prefix(), sys.executable, "-m", "vnode", *argv], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def serving(cluster, mac):
    ns = "status-e2e"
    cluster.kubectl("create", "namespace", ns, check=False)
    apply(cluster, ns, deployment("status", port=PORT, node=NODE))
    wait_for(lambda: [p for p in pods(cluster, ns, "status")
                      if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))],
             timeout=240, what="the pod Ready")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_status_shows_the_node_its_pod_the_budget_and_the_store(cluster, mac, serving):
    out = vnode(cluster, "status", "--json", *mac.flags)
    assert out.returncode == 0, out.stdout + out.stderr
    view = json.loads(out.stdout)
    assert view["agent"]["running"] and view["cluster_problem"] is None
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in view["node"]["conditions"])
    [row] = view["pods"]
    assert (row["namespace"], row["port"], row["phase"], row["ready"], row["restarts"]) == (serving, PORT, "Running", True, 0)
    assert 100 * 2**20 < row["memory_estimate"] < 2 * 2**30, row
    assert view["budget"]["used"] == row["memory_estimate"]
    assert view["budget"]["free"] == view["budget"]["total"] - row["memory_estimate"]
    assert any(m["model"].endswith(FILE) and m["bytes"] > 100 * 2**20 for m in view["store"]["models"]), view["store"]

    table = vnode(cluster, "status", "--json", *mac.flags)  # not a terminal: JSON even without --json
    assert json.loads(table.stdout)["pods"][0]["port"] == PORT


def test_doctor_passes_with_the_node_s_own_settings(cluster, mac, serving):
    out = vnode(cluster, "doctor", "--json", *mac.flags)
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert out.returncode == 0 and report["ok"], json.dumps(report["checks"], indent=1)
    for name in ("llama-server", "memory", "model store", "api server", "client certificate", "clock",
                 "serving certificate", "host ip"):
        assert checks[name]["status"] == "ok", checks[name]
    assert f"as system:node:{NODE}" in checks["api server"]["detail"]
    assert "answers" in checks["host ip"]["detail"]  # the running agent's kubelet port
    assert checks["service"]["status"] == "skip"  # no launchd here


def test_doctor_says_when_the_credentials_are_not_the_node_s(cluster, mac):
    flags = [a for a in mac.flags if not a.startswith("--kubeconfig")] + [f"--kubeconfig={cluster.state.admin_kubeconfig}"]
    out = vnode(cluster, "doctor", *flags)
    line = next(line for line in out.stdout.splitlines() if " api server " in f" {line} ")
    assert line.startswith("WARN") and f"not as this node's identity system:node:{NODE}" in line, out.stdout


def test_doctor_fails_on_a_host_ip_that_is_not_this_machine_s(cluster, mac):
    flags = [a for a in mac.flags if not a.startswith("--host-ip")] + ["--host-ip=198.18.255.254"]
    out = vnode(cluster, "doctor", *flags)
    assert out.returncode == 1, out.stdout
    assert any(line.startswith("FAIL host ip") and "not an address of this machine" in line for line in out.stdout.splitlines())


def test_every_line_the_agent_and_its_helpers_log_is_json(cluster, mac, serving):
    """Downloads (the fetch child), estimates, the shim and a refused model all went through
    this agent: with --log-format json nothing reaches its output as plain text."""
    apply(cluster, serving, deployment("corrupt", port=PORT + 1, node=NODE,
                                       args=["-hf", f"{CORRUPT_REPO}:Q4_K_M", "--port", str(PORT + 1)]))
    wait_for(lambda: waiting_reason(one_pod(cluster, serving, "corrupt"))[0] == "ModelPullBackOff", timeout=120,
             what="the corrupt model refused")
    lines = [line for line in mac.log.read_text().splitlines() if line.strip()]
    assert len(lines) >= 5, lines
    bad = []
    for line in lines:
        try:
            entry = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(entry)
        except (ValueError, AssertionError):
            bad.append(line)
    assert not bad, bad[:5]
