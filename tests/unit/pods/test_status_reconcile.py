"""The status manager writes vnode's status back when the API server's copy differs (the
node lifecycle controller's Ready=False, an admin's patch), from watch events and from its
periodic sync; it leaves others' conditions alone and forgets pods that are gone."""

from __future__ import annotations

import asyncio
import copy

import pytest

from vnode.pods.status import ContainerView, StatusManager, merged_for_write, pod_status, status_differs

POD = {"metadata": {"uid": "u1", "namespace": "ns", "name": "p", "resourceVersion": "5"},
       "spec": {}, "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def ready_status() -> dict:
    view = ContainerView(name="server", image="img", state={"running": {"startedAt": "2026-01-01T00:00:01Z"}}, ready=True,
                         started=True, container_id="vnode://1")
    return pod_status(POD, [view], pod_ip="198.18.0.2", start_time="2026-01-01T00:00:01Z", now="2026-01-01T00:00:02Z")


def as_api_server_has_it(status: dict) -> dict:
    """What the API server returns: nulls dropped, fields vnode never writes added."""
    out = {k: v for k, v in copy.deepcopy(status).items() if v is not None}
    out["qosClass"] = "BestEffort"
    for c in out["conditions"]:
        c["lastProbeTime"] = None
    return out


def not_ready_by_lifecycle_controller(status: dict) -> dict:
    """MarkPodsNotReady: Ready's status False, a new transition time, nothing else."""
    out = as_api_server_has_it(status)
    for c in out["conditions"]:
        if c["type"] == "Ready":
            c["status"], c["lastTransitionTime"] = "False", "2026-01-01T00:05:00Z"
    return out


def test_the_api_servers_own_additions_are_no_difference():
    wanted = ready_status()
    seen = as_api_server_has_it(wanted)
    seen["conditions"].append({"type": "example.com/gate", "status": "True"})  # another writer's condition
    assert not status_differs(seen, wanted)


def test_ready_false_from_the_lifecycle_controller_is_a_difference():
    wanted = ready_status()
    assert status_differs(not_ready_by_lifecycle_controller(wanted), wanted)


def test_the_write_keeps_other_writers_conditions_and_stamps_the_transition():
    wanted = ready_status()
    seen = not_ready_by_lifecycle_controller(wanted)
    seen["conditions"].append({"type": "example.com/gate", "status": "True"})
    seen["conditions"] = [c for c in seen["conditions"] if c["type"] != "PodScheduled"]  # gone on the server: not brought back
    body = merged_for_write(wanted, seen, now="2026-01-01T00:06:00Z")
    conds = {c["type"]: c for c in body["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert conds["ContainersReady"]["lastTransitionTime"] == "2026-01-01T00:00:02Z"  # unchanged: not restamped
    assert conds["example.com/gate"] == {"type": "example.com/gate", "status": "True"}
    assert "PodScheduled" not in conds


class FakeApi:
    """Records status patches; answers with the pod as the API server would store it."""

    server = "https://fake"

    def __init__(self) -> None:
        self.patches: list[dict] = []
        self.rv = 100
        self.answer = as_api_server_has_it

    async def patch(self, path: str, body: dict, *, content_type: str) -> dict:
        self.patches.append(body["status"])
        self.rv += 1
        return {"metadata": {"uid": "u1", "resourceVersion": str(self.rv)}, "status": self.answer(body["status"])}


async def settle(api: FakeApi, count: int, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(api.patches) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(api.patches)} patches, wanted {count}"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


@pytest.fixture
async def manager():
    api = FakeApi()
    status = StatusManager(api)  # type: ignore[arg-type]
    task = asyncio.create_task(status.run())
    yield api, status
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def event(status: dict, rv: str) -> dict:
    return {**POD, "metadata": {**POD["metadata"], "resourceVersion": rv}, "status": status}


async def test_a_watch_event_with_ready_false_is_answered_with_vnodes_status(manager):
    api, status = manager
    wanted = ready_status()
    status.set(POD, wanted)
    await settle(api, 1)
    status.observe(event(as_api_server_has_it(wanted), "101"))  # our own write coming back: nothing to do
    await asyncio.sleep(0.1)
    assert len(api.patches) == 1
    status.observe(event(not_ready_by_lifecycle_controller(wanted), "102"))
    await settle(api, 2)
    assert {c["type"]: c["status"] for c in api.patches[1]["conditions"]}["Ready"] == "True"
    assert status.reconciled == 1


async def test_an_event_older_than_the_last_write_is_not_the_api_servers_view(manager):
    api, status = manager
    wanted = ready_status()
    status.set(POD, wanted)
    await settle(api, 1)  # the write answered resourceVersion 101
    status.observe(event(not_ready_by_lifecycle_controller(wanted), "99"))  # still in flight from before
    await asyncio.sleep(0.1)
    assert len(api.patches) == 1


async def test_the_periodic_sync_catches_what_no_event_showed(manager, monkeypatch):
    api, status = manager
    monkeypatch.setattr(StatusManager, "RECONCILE_SECONDS", 0.1)
    api.answer = not_ready_by_lifecycle_controller  # the write's answer already shows another writer's change
    wanted = ready_status()
    status.set(POD, wanted)
    await settle(api, 1)
    api.answer = as_api_server_has_it
    await settle(api, 2, timeout=1.0)
    await asyncio.sleep(0.3)
    assert len(api.patches) == 2, "once the API server agrees, nothing more is written"


async def test_caches_are_pruned_when_pods_go(manager):
    api, status = manager
    status.set(POD, ready_status())
    await settle(api, 1)
    status.observe(event(ready_status(), "150"))
    other = {**POD, "metadata": {**POD["metadata"], "uid": "u2", "name": "q"}}
    status.set(other, ready_status())
    assert status.tracked() == 2
    status.retain({"u2"})
    assert status.tracked() == 1
    status.forget("u2")
    await status.flush("u2")  # nothing waits on a forgotten pod
    assert status.tracked() == 0
