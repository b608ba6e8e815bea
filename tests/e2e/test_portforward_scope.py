"""Port-forward reaches only the port vnode launched a pod's server on. Pods on the Mac
share its network, so a containerPort the pod author declares beside it would otherwise
reach any service on the Mac: here a stand-in for sshd listening on the node address."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from .conftest import wait_for
from .test_pods import NODE, apply, deployment, mac, pod_ready  # noqa: F401 - fixtures

SERVER_PORT, OTHER_PORT = 8151, 8150  # the pod's server; another service on the Mac
BANNER = b"SSH-2.0-OpenSSH_9.6 not-for-pods\r\n"
LISTENER = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], {OTHER_PORT})); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall({BANNER!r}); c.close()
"""


@pytest.fixture(scope="module")
def other_service(cluster, mac):
    """A service of the Mac's own on the node address, outside any pod."""
    host = cluster.state.host
    proc = subprocess.Popen([*host.exec_prefix(), sys.executable, "-c", LISTENER, host.ns_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening", proc.stderr.read() if proc.stderr else ""
    yield host.ns_ip
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def scoped_pod(cluster, mac, other_service):
    name = "pf-scope"
    cluster.kubectl("create", "namespace", name)
    manifest = deployment("scoped", port=SERVER_PORT)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["ports"].append({"containerPort": OTHER_PORT, "name": "ssh"})  # declared, never launched
    apply(cluster, name, manifest)
    pod = wait_for(lambda: pod_ready(cluster, name, "scoped"), timeout=240, what="scoped Ready")
    yield name, pod["metadata"]["name"]
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _recv_all(port: int) -> bytes:
    """What a client of the local end of a port-forward receives until it is closed."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        pass
    return data


def _forward(cluster, ns_name: str, pod: str, local: int, remote: int) -> subprocess.Popen:
    state = cluster.state
    proc = subprocess.Popen([state.kubectl, f"--kubeconfig={state.admin_kubeconfig}", "port-forward", "-n", ns_name,
                             f"pod/{pod}", f"{local}:{remote}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:<local> -> <remote>"
    assert "Forwarding from" in line, (line, proc.stderr.read() if proc.stderr else "")
    return proc


def test_port_forward_to_a_declared_port_vnode_did_not_launch_is_refused(cluster, scoped_pod, other_service):
    ns_name, pod = scoped_pod
    # The other service is there to be reached on the node address...
    with socket.create_connection((other_service, OTHER_PORT), timeout=10) as direct:
        assert direct.recv(100) == BANNER
    # ...but not through the pod, although the pod declares its port.
    local = 8152
    proc = _forward(cluster, ns_name, pod, local, OTHER_PORT)
    try:
        assert BANNER not in _recv_all(local)
        time.sleep(1)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert f"port {OTHER_PORT} is not a port vnode serves for pod {ns_name}/{pod}" in stderr, stderr
    assert f"launched on ({SERVER_PORT})" in stderr, stderr


def test_port_forward_to_the_launched_port_still_works(cluster, scoped_pod):
    ns_name, pod = scoped_pod
    local = 8153
    proc = _forward(cluster, ns_name, pod, local, SERVER_PORT)
    try:
        def health() -> bytes | None:
            with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data if data.startswith(b"HTTP/1.1 200") else None

        assert wait_for(health, timeout=30, what="/health through port-forward")
    finally:
        proc.terminate()
        proc.wait(10)
