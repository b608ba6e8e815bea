"""Faults during a model download, as a Mac owner meets them: the agent killed -9 halfway (the
next agent resumes the partial file with a Range request and verifies it), and the model
store's disk filling up halfway (a clear reason on the pod, the partial file removed, the
agent unaffected, the download done once there is room again). The hub is throttled so that
the download takes long enough to be interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from vnode.cluster.build import ensure_llama_server
from tests.support.hfserver import start_hub
from vnode.cluster.processes import stop

from .conftest import FILE, REPO, Agents, condition, namespace, node_json, node_ready, wait_for
from .test_pods import apply, deployment, pod_ready, pods, waiting_reason

THROTTLE = 20_000_000  # bytes/s: the 253 MB model takes ~13 s


@pytest.fixture
def slow_hub(cluster, gemma):
    directory = Path(cluster.state.directory)
    log = directory / "logs" / "slowhub.log"
    proc, url = start_hub(directory / "slowhub", cluster.state.host.root_ip, {REPO: (FILE, gemma)},
                          args=["--throttle", str(THROTTLE)], name="slowhub", log=log)
    yield url, log
    stop(proc)


@pytest.fixture
def ns(cluster, request):
    with namespace(cluster, request, "dl") as name:
        yield name


def downloading(cluster, ns: str, app: str, at_least: int) -> bool:
    items = pods(cluster, ns, app)
    if not items:
        return False
    reason, message = waiting_reason(items[0])
    return reason == "PullingModel" and any(f"{p}%" in message for p in range(at_least, 100))


def ranges(log: Path) -> list[str | None]:
    hits = [json.loads(line)["request"] for line in log.read_text().splitlines() if '"request"' in line]
    return [h["range"] for h in hits if h["kind"] == "resolve" and h["method"] == "GET"]


def test_an_agent_killed_during_a_download_resumes_it(cluster, slow_hub, ns):
    url, log = slow_hub
    name = "vnode-e2e-dlkill"
    agents = Agents(cluster)
    flags = (f"--hf-endpoint={url}", f"--llama-server={ensure_llama_server()}", "--kubelet-port=10271")
    first = agents.start(*flags, name=name)
    try:
        wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
        apply(cluster, ns, deployment("resume", port=8191, node=name))
        wait_for(lambda: downloading(cluster, ns, "resume", 20), timeout=120, what="the download under way")
        os.kill(first.pid, signal.SIGKILL)
        store = Path(cluster.state.directory) / "agents" / name / "models"
        part = wait_for(lambda: next(iter(store.rglob("*.incomplete")), None), timeout=10, what="the partial file")
        wait_for(lambda: not any("vnode.provider.fetch" in " ".join(p) for p in _cmdlines()), timeout=10,
                 what="the orphaned download child to exit")
        kept = part.stat().st_size
        assert kept > 20 * 2**20
        agents.start(*flags, name=name)
        wait_for(lambda: pod_ready(cluster, ns, "resume"), timeout=240, what="the pod Ready after the resumed download")
        resumed = [r for r in ranges(log) if r and not r.startswith("bytes=0-")]
        assert resumed and int(resumed[-1].removeprefix("bytes=").split("-")[0]) >= kept - 4 * 2**20, ranges(log)
        assert not list(store.rglob("*.incomplete"))
        index = json.loads((store / "index.json").read_text())
        assert any(e.get("sha256") for e in index["models"].values()), "verified after the resume"
    finally:
        agents.stop_all()
        cluster.kubectl("delete", "node", name, check=False)


def _cmdlines() -> list[list[str]]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        out.append(p.info["cmdline"] or [])
    return out


def test_a_disk_filling_up_during_a_download_is_a_clear_reason(cluster, slow_hub, ns):
    url, _ = slow_hub
    name = "vnode-e2e-dlfull"
    state = Path(cluster.state.directory) / "agents" / name
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=420m", "tmpfs", str(state)], check=True)
    agents = Agents(cluster)
    try:
        agent = agents.start(f"--hf-endpoint={url}", f"--llama-server={ensure_llama_server()}", "--kubelet-port=10272",
                             "--node-status-update-seconds=1", name=name)
        wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
        # A 420 MiB store is below the DiskPressure thresholds from the start: the pod tolerates it.
        assert condition(node_json(cluster, name), "DiskPressure")["status"] == "True"
        spec = deployment("full", port=8192, node=name)
        spec["spec"]["template"]["spec"]["tolerations"].append(
            {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"})
        apply(cluster, ns, spec)
        wait_for(lambda: downloading(cluster, ns, "full", 10), timeout=120, what="the download under way")
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none"], check=False)  # until the disk is full
        reason, message = wait_for(lambda: (r := waiting_reason(pods(cluster, ns, "full")[0]))[0] == "ModelPullBackOff" and r,
                                   timeout=60, what="ModelPullBackOff")
        assert "InsufficientStorage" in message and "filled up while downloading" in message, message
        assert not list((state / "models").rglob("*.incomplete")), "the partial file was removed"
        assert agent.alive() if hasattr(agent, "alive") else os.kill(agent.pid, 0) is None
        events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
        assert "InsufficientStorage" in events
        filler.unlink()
        wait_for(lambda: pod_ready(cluster, ns, "full"), timeout=240, what="the pod Ready once there is room")
    finally:
        agents.stop_all()
        cluster.kubectl("delete", "node", name, check=False)
        cluster.stop_pod_servers(name)  # their records live on the tmpfs, gone with it
        subprocess.run(["umount", "-l", str(state)], check=False)
