"""An agent restart keeps what the pod showed for an adopted server (bench/scale.py saw a
restarted agent with 100 pods flip a pod to Ready=False for a moment): the container view
starts as the pod's last status for that instance, and its prober starts ready and started,
so nothing is written and no endpoint is withdrawn until a probe fails for real."""

from __future__ import annotations

import aiohttp

from vnode.pods.prober import ContainerProber
from vnode.pods.status import ContainerView
from vnode.pods.worker import _resume_view
from vnode.provider.spec import ContainerIn
from vnode.provider.supervisor import Instance


def _instance(number: int = 0) -> Instance:
    return Instance(pod_uid="u1", namespace="ns", pod_name="p", container="server", instance=number, shim_pid=1000 + number,
                    shim_start=0.0, started_at=0.0, port=8080, host="127.0.0.1", log_path="", exit_path="", pid_path="", args=[])


class Sup:
    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def shim_alive(self, inst: Instance) -> bool:
        return self.alive


def _previous(container_id: str, *, ready: bool = True) -> dict:
    return {"name": "server", "containerID": container_id, "ready": ready, "started": True, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}


def test_an_adopted_running_server_keeps_its_status() -> None:
    inst = _instance()
    view = ContainerView(name="server", image="img")
    _resume_view(view, _previous(inst.container_id), inst, Sup(alive=True))
    assert view.state == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert view.ready and view.started and view.container_id == inst.container_id


def test_nothing_is_kept_for_another_instance_or_a_dead_shim() -> None:
    inst = _instance(1)
    for previous, alive in ((_previous(_instance(0).container_id), True), (_previous(inst.container_id), False)):
        view = ContainerView(name="server", image="img")
        _resume_view(view, previous, inst, Sup(alive=alive))
        assert "waiting" in view.state and not view.ready and view.container_id is None


async def test_a_resumed_prober_starts_ready_and_started() -> None:
    container = ContainerIn.model_validate({
        "name": "server", "image": "img", "ports": [{"containerPort": 8080}],
        "startupProbe": {"httpGet": {"path": "/health", "port": 8080}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
    })

    async def unhealthy(kind: str, detail: str) -> None:
        pass

    async with aiohttp.ClientSession() as session:
        fresh = ContainerProber(container, host="127.0.0.1", session=session, on_change=lambda: None, on_unhealthy=unhealthy)
        assert not fresh.started and not fresh.ready
        resumed = ContainerProber(container, host="127.0.0.1", session=session, on_change=lambda: None, on_unhealthy=unhealthy,
                                  resume=(True, True))
        assert resumed.started and resumed.ready
        unready = ContainerProber(container, host="127.0.0.1", session=session, on_change=lambda: None, on_unhealthy=unhealthy,
                                  resume=(False, True))
        assert unready.started and not unready.ready
