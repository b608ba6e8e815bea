"""The container runner against a fake supervisor: a server left by a dead shim is stopped
(while the agent watches, and when a restarted agent finds it) before a new instance
starts, and no inner task of an instance outlives it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from vnode.pods.status import ContainerView
from vnode.pods.worker import ContainerRunner
from vnode.provider.spec import ContainerIn, LaunchSpec, PodSpecIn
from vnode.provider.supervisor import ExitInfo, Instance

UNKNOWN = ExitInfo(137, None, "ContainerStatusUnknown", "vnode's shim of the container died", "2026-01-01T00:00:00Z")


def _instance(number: int) -> Instance:
    return Instance(pod_uid="u1", namespace="ns", pod_name="p", container="server", instance=number, shim_pid=1000 + number,
                    shim_start=0.0, started_at=0.0, port=8080, host="127.0.0.1", log_path="", exit_path="", pid_path="", args=[])


class FakeSupervisor:
    """Records what the runner asks; `orphans` are instances whose server outlived its shim."""

    def __init__(self, *, orphans: set[int]) -> None:
        self.orphans = orphans
        self.calls: list[tuple[str, int]] = []
        self.forever = asyncio.Event()

    def shim_alive(self, inst: Instance) -> bool:
        return False

    def orphaned(self, inst: Instance) -> bool:
        return inst.instance in self.orphans

    def alive(self, inst: Instance) -> bool:
        return self.orphaned(inst)

    def exit_info(self, inst: Instance) -> ExitInfo:
        return UNKNOWN

    async def wait(self, inst: Instance) -> ExitInfo:
        self.calls.append(("wait", inst.instance))
        if inst.instance in self.orphans:
            return UNKNOWN  # the shim was killed; its server is still there
        await self.forever.wait()
        return UNKNOWN

    async def stop(self, inst: Instance, *, grace: float) -> ExitInfo:
        self.calls.append(("stop", inst.instance))
        self.orphans.discard(inst.instance)
        return UNKNOWN

    async def start(self, launch: LaunchSpec, *, model_path, instance: int) -> Instance:
        self.calls.append(("start", instance))
        return _instance(instance)


def _runner(sup: FakeSupervisor, *, adopted: Instance | None = None) -> tuple[ContainerRunner, list[str]]:
    container = ContainerIn.model_validate({"name": "server", "image": "llama.cpp",
                                            "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1}})
    spec = PodSpecIn.model_validate({"containers": [container.model_dump(by_alias=True, exclude_none=True)],
                                     "terminationGracePeriodSeconds": 7})
    events: list[str] = []

    async def event(kind: str, reason: str, message: str, *, container: str | None = None) -> None:
        events.append(reason)

    ctx = SimpleNamespace(supervisor=sup, allow_exec_probes=False, pod_ip="127.0.0.1", http=None, probe_stats=None)
    worker = SimpleNamespace(ctx=ctx, ref="ns/p", pod={"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}},
                             views={"server": ContainerView(name="server", image="llama.cpp")}, event=event,
                             publish=lambda: None, deleting=asyncio.Event())
    return ContainerRunner(worker, spec, container, adopted=adopted), events  # type: ignore[arg-type]


def _inner_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(("probes ", "exit waiter ", "probe failure ", "readiness probe"))]


async def test_a_server_whose_shim_died_is_stopped_within_the_grace_period():
    sup = FakeSupervisor(orphans={0})
    runner, events = _runner(sup)
    exit_info = await asyncio.wait_for(runner._run_instance(_instance(0)), 5)
    assert sup.calls == [("wait", 0), ("stop", 0)] and exit_info is UNKNOWN
    assert events == ["ShimDied"]


async def test_no_inner_task_outlives_its_instance():
    sup = FakeSupervisor(orphans={0})
    runner, _ = _runner(sup)
    await asyncio.wait_for(runner._run_instance(_instance(0)), 5)
    assert not _inner_tasks(), "probe loops and waiters are cancelled and awaited, not only cancelled"


async def test_a_restarted_agent_stops_a_shimless_server_before_starting_anew():
    """Adoption: the state file's instance 0 has a server but no shim. It is not adopted as
    running: it is stopped, recorded as terminated, and instance 1 starts."""
    sup = FakeSupervisor(orphans={0})
    runner, events = _runner(sup, adopted=_instance(0))
    loop = asyncio.create_task(runner._loop(LaunchSpec(
        namespace="ns", pod_name="p", pod_uid="u1", container="server", binary="/bin/true", args=[], env={}, workdir="/tmp",
        host="127.0.0.1", port=8080), None))
    try:
        for _ in range(100):
            if ("wait", 1) in sup.calls:
                break
            await asyncio.sleep(0.01)
        assert sup.calls[:3] == [("stop", 0), ("start", 1), ("wait", 1)]
        assert runner.view.restart_count == 1 and runner.view.last_state["terminated"]["reason"] == "ContainerStatusUnknown"
        assert events[0] == "ShimDied"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
