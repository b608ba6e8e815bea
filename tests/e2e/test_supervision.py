"""Process supervision under faults: a server whose shim (vnode's conmon) was killed, with
the agent watching or away, and a hung server (SIGSTOP) that its liveness probe restarts.

Whatever happens, a pod has exactly one llama-server: it answers /health on the pod's
port, and after `kubectl delete pod` no process of it is left and the port is free. The
servers are told apart by their working directory (the pod's sandbox, named by its UID),
so servers of other clusters on this machine are never counted.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.request

import psutil
import pytest


from .conftest import REPO, namespace, serving_nodes, wait_for
from .test_pods import apply, one_pod

NODE = "vnode-e2e-supervision"


@pytest.fixture(scope="module")
def mac(cluster, hub):
    with serving_nodes(cluster, hub, [NODE]) as agents:
        yield agents


@pytest.fixture
def ns(cluster, mac, request):
    with namespace(cluster, request, "t-sup") as name:
        yield name


def pod(name: str, *, port: int, liveness: bool = False) -> dict:
    container: dict = {
        "name": "server", "image": "ghcr.io/ggml-org/llama.cpp:server",
        "args": ["-hf", f"{REPO}:Q4_K_M", "--port", str(port), "-c", "2048"],
        "ports": [{"containerPort": port, "name": "http", "hostPort": port}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
    }
    if liveness:
        # The startup probe covers the model load (/health is 503 meanwhile); then liveness
        # gives a hung server two seconds.
        container["startupProbe"] = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 120}
        container["livenessProbe"] = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1,
                                      "timeoutSeconds": 1, "failureThreshold": 2}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"llmkube.dev/accelerator": "metal", "kubernetes.io/hostname": NODE},
            "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 3, "restartPolicy": "Always", "containers": [container],
        },
    }


_seen: list[psutil.Process] = []


@pytest.fixture(autouse=True)
def _no_server_survives_a_test():
    """Every server a test saw is killed by pid afterwards (psutil checks its start time),
    also when the test failed because one was orphaned: nothing outlives the session."""
    yield
    while _seen:
        proc = _seen.pop()
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def servers(uid: str) -> list[psutil.Process]:
    """The llama-server processes of pod `uid` that exist (zombies do not count: they hold
    no port and no memory, and are reaped by init)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if proc.info["name"] == "llama-server" and proc.info["status"] != psutil.STATUS_ZOMBIE and uid in proc.cwd():
                found.append(proc)
        except psutil.Error:
            continue
    _seen.extend(found)
    return found


def the_server(uid: str) -> psutil.Process:
    found = servers(uid)
    assert len(found) == 1, [(p.pid, p.status()) for p in found]
    return found[0]


def healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return resp.status == 200


def ready_with_restarts(cluster, ns: str, app: str, restarts: int) -> dict | None:
    p = one_pod(cluster, ns, app)
    conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
    cs = (p["status"].get("containerStatuses") or [{}])[0]
    return p if conds.get("Ready") == "True" and cs.get("restartCount") == restarts else None


def port_free(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def delete_and_check_nothing_is_left(cluster, ns: str, name: str, uid: str, port: int) -> None:
    cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", "--timeout=60s")
    wait_for(lambda: not servers(uid), timeout=15, what="no server of the deleted pod")
    assert port_free(cluster.state.host.ns_ip, port), f"port {port} still answers after the pod went"


def start_serving(cluster, ns: str, name: str, port: int, **kwargs) -> tuple[str, psutil.Process]:
    apply(cluster, ns, pod(name, port=port, **kwargs))
    ready = wait_for(lambda: ready_with_restarts(cluster, ns, name, 0), timeout=240, what=f"{name} Ready")
    uid = ready["metadata"]["uid"]
    return uid, the_server(uid)


def test_a_killed_shim_leaves_exactly_one_server(cluster, ns):
    """kill -9 of the shim: the server it leaves is stopped, the container restarts, and the
    new server gets the port (before the fix the old one kept it and the pod crash-looped)."""
    url = f"http://{cluster.state.host.ns_ip}:8140"
    uid, old = start_serving(cluster, ns, "orphan", 8140)
    shim = old.parent()
    assert shim is not None and "shim.py" in " ".join(shim.cmdline())
    os.kill(shim.pid, signal.SIGKILL)
    restarted = wait_for(lambda: ready_with_restarts(cluster, ns, "orphan", 1), timeout=120, what="restarted once and Ready")
    new = the_server(uid)
    assert new.pid != old.pid
    assert not old.is_running() or old.status() == psutil.STATUS_ZOMBIE, "the server the shim left is gone"
    assert healthy(url)
    last = restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["reason"] == "ContainerStatusUnknown" and "shim" in last["message"], last
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=ShimDied", "-o", "name").stdout
    assert events.strip(), "the shim's death is an Event on the pod"
    delete_and_check_nothing_is_left(cluster, ns, "orphan", uid, 8140)


def test_a_shim_killed_while_the_agent_was_away(cluster, ns, mac):
    """The next agent finds the server without its shim, stops it and starts one again."""
    url = f"http://{cluster.state.host.ns_ip}:8141"
    uid, old = start_serving(cluster, ns, "away", 8141)
    mac.stop(mac.started[-1])
    os.kill(old.parent().pid, signal.SIGKILL)
    assert healthy(url), "the shim's death alone does not stop the server"
    mac.start(*mac.args, name=NODE)
    wait_for(lambda: ready_with_restarts(cluster, ns, "away", 1), timeout=120, what="restarted once and Ready")
    new = the_server(uid)
    assert new.pid != old.pid and healthy(url)
    delete_and_check_nothing_is_left(cluster, ns, "away", uid, 8141)


def test_a_hung_server_is_restarted_by_its_liveness_probe(cluster, ns):
    """SIGSTOP the server: /health stops answering, the liveness probe fails, the container
    is killed (SIGKILL reaches a stopped process) and restarted, as the kubelet would."""
    url = f"http://{cluster.state.host.ns_ip}:8142"
    uid, old = start_serving(cluster, ns, "hung", 8142, liveness=True)
    old.suspend()
    try:
        restarted = wait_for(lambda: ready_with_restarts(cluster, ns, "hung", 1), timeout=120, what="restarted once and Ready")
        assert not old.is_running() or old.status() == psutil.STATUS_ZOMBIE, "the stopped server was killed"
        last = restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]
        assert (last["exitCode"], last.get("signal")) == (137, 9), last  # SIGTERM stays pending in a stopped process
        new = the_server(uid)
        assert new.pid != old.pid and new.status() != psutil.STATUS_STOPPED and healthy(url)
        events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=Unhealthy",
                                 "-o", "jsonpath={.items[*].message}").stdout
        assert "Liveness probe failed" in events, events
    finally:
        if old.is_running():
            old.kill()
    delete_and_check_nothing_is_left(cluster, ns, "hung", uid, 8142)
