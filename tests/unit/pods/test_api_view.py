"""The kubelet API's view of the pod layer: it finds pods by namespace/name, answers with
the launched port and instance as they change, and exposes nothing else."""

from pathlib import Path
from types import SimpleNamespace

from vnode.pods.api_view import PodContainers


class Supervisor:
    def __init__(self) -> None:
        self.running: set[int] = set()

    def log_path(self, uid: str, container: str, instance: int) -> Path:
        return Path("/logs") / uid / container / f"{instance}.log"

    def alive(self, inst) -> bool:
        return inst.instance in self.running


def _worker():
    launch = SimpleNamespace(host="192.0.2.10", port=8080, workdir="/w", env={"A": "1"})
    runner = SimpleNamespace(launch=None, instance=None)
    view = SimpleNamespace(restart_count=0, state={"waiting": {"reason": "ModelDownloading"}})
    pod = {"metadata": {"namespace": "llm", "name": "gemma", "uid": "u1"}}
    worker = SimpleNamespace(pod=pod, uid="u1", ref="llm/gemma", runners={"server": runner}, views={"server": view})
    return worker, runner, launch


def test_finds_pods_and_follows_their_containers():
    worker, runner, launch = _worker()
    sup = Supervisor()
    source = PodContainers(SimpleNamespace(workers={"u1": worker}), sup)
    assert source.find_pod("llm", "other") is None and source.find_pod("default", "gemma") is None
    pod = source.find_pod("llm", "gemma")
    assert (pod.pod_ref, pod.pod_uid, pod.launches()) == ("llm/gemma", "u1", [])
    assert pod.container("sidecar") is None
    c = pod.container("server")
    assert (c.launch(), c.instance(), c.waiting_reason()) == (None, None, "ModelDownloading")
    runner.launch, runner.instance = launch, SimpleNamespace(instance=2)  # started, restarted twice
    sup.running.add(2)
    got = c.launch()
    assert (got.host, got.port, got.workdir, got.env["A"], got.env["HOSTNAME"]) == ("192.0.2.10", 8080, "/w", "1", "gemma")
    assert [x.port for x in pod.launches()] == [8080]
    assert c.instance() == 2 and c.alive(2) and not c.alive(1)
    assert c.log_path(1) == Path("/logs/u1/server/1.log")
