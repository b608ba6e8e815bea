"""The node controller against an in-memory API server: conditions another writer changed
are written back, a deleted Node is registered again (same machine-ID rule) and the Lease
follows its new owner."""

from __future__ import annotations

import asyncio
import copy
import itertools

import pytest

from vnode.kubeclient import ApiError
from vnode.node.controller import NodeController
from vnode.node.lease import LeaseController
from vnode.node.registration import TakeoverRefused
from vnode.node.status import MACHINE_ID_ANNOTATION

from .test_status import CALM, FACTS, IDENT


class Host:
    async def facts(self):
        return FACTS

    async def pressure(self, *, disk_path: str):
        return CALM


class MemoryApi:
    """Nodes and Leases in dicts; watches of the one Node fed from `events`."""

    server = "https://memory"

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.leases: dict[str, dict] = {}
        self.events: asyncio.Queue = asyncio.Queue()
        self.uids = (f"uid-{i}" for i in itertools.count(1))
        self.rv = itertools.count(100)
        self.status_patches = 0
        self.fail_replaces = 0

    def _stamp(self, obj: dict) -> dict:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)

    async def create(self, path: str, body: dict) -> dict:
        name = body["metadata"]["name"]
        store = self.nodes if path == "/api/v1/nodes" else self.leases
        if name in store:
            raise ApiError(409, "AlreadyExists", f"{name} exists")
        obj = copy.deepcopy(body)
        obj["metadata"]["uid"] = next(self.uids)
        store[name] = obj
        if store is self.nodes:
            self.events.put_nowait({"type": "ADDED", "object": self._stamp(obj)})
        return self._stamp(obj)

    async def get(self, path: str, **params) -> dict:
        if path == "/api/v1/nodes":
            return {"metadata": {"resourceVersion": str(next(self.rv))}, "items": [copy.deepcopy(n) for n in self.nodes.values()]}
        name = path.rsplit("/", 1)[1]
        store = self.nodes if path.startswith("/api/v1/nodes/") else self.leases
        if name not in store:
            raise ApiError(404, "NotFound", f"{name} not found")
        return self._stamp(store[name])

    async def patch(self, path: str, body: dict, **kw) -> dict:
        name = path.split("/")[4]
        node = self.nodes.get(name)
        if node is None:
            raise ApiError(404, "NotFound", f"{name} not found")
        if path.endswith("/status"):
            self.status_patches += 1
            node["status"] = copy.deepcopy(body["status"])
        else:
            for key, value in body.get("metadata", {}).items():
                node["metadata"].setdefault(key, {}).update(value)
        self.events.put_nowait({"type": "MODIFIED", "object": self._stamp(node)})
        return self._stamp(node)

    async def replace(self, path: str, body: dict) -> dict:
        if self.fail_replaces:
            self.fail_replaces -= 1
            raise ConnectionResetError("the API server went away")
        name = path.rsplit("/", 1)[1]
        if name not in self.leases:
            raise ApiError(404, "NotFound", f"lease {name} not found")
        self.leases[name] = {**copy.deepcopy(body), "metadata": {**body["metadata"], "uid": self.leases[name]["metadata"]["uid"]}}
        return self._stamp(self.leases[name])

    async def watch(self, path: str, **params):
        params["on_open"]()
        while True:
            yield await self.events.get()

    # -- what others do ------------------------------------------------------------------
    def lifecycle_controller_marks_unknown(self, name: str, *, event: bool = True) -> None:
        node = self.nodes[name]
        for c in node["status"]["conditions"]:
            c["status"], c["reason"] = "Unknown", "NodeStatusUnknown"
        if event:
            self.events.put_nowait({"type": "MODIFIED", "object": self._stamp(node)})

    def delete_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        self.events.put_nowait({"type": "DELETED", "object": self._stamp(node)})


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def running():
    api = MemoryApi()
    node = NodeController(api=api, host=Host(), identity=IDENT, disk_path="/", force=False,  # type: ignore[arg-type]
                          update_seconds=30, report_seconds=300)
    lease = LeaseController(api=api, node_name=IDENT.name, duration_seconds=40)  # type: ignore[arg-type]
    lease.renew_interval = 0.05

    async def heartbeat() -> None:
        await node.registered.wait()
        await lease.run(node_uid=lambda: node.node_uid)

    tasks = [asyncio.create_task(node.run()), asyncio.create_task(heartbeat())]
    await until(lambda: api.status_patches == 1 and IDENT.name in api.leases)
    yield api, node, tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def ready(api: MemoryApi) -> str:
    return next(c["status"] for c in api.nodes[IDENT.name]["status"]["conditions"] if c["type"] == "Ready")


async def test_conditions_the_lifecycle_controller_set_are_written_back_at_once(running):
    api, node, _ = running
    api.lifecycle_controller_marks_unknown(IDENT.name)
    await until(lambda: ready(api) == "True", timeout=2)  # well before the 30 s status period
    assert api.status_patches == 2


async def test_a_deleted_node_is_registered_again_and_the_lease_follows(running):
    api, node, _ = running
    first = node.node_uid
    api.delete_node(IDENT.name)
    del api.leases[IDENT.name]  # the garbage collector takes the Lease the old Node owned
    await until(lambda: IDENT.name in api.nodes and api.nodes[IDENT.name]["metadata"]["uid"] != first)
    second = api.nodes[IDENT.name]["metadata"]["uid"]
    assert node.node_uid == second and node.registrations == 2
    await until(lambda: ready(api) == "True")
    await until(lambda: api.leases.get(IDENT.name, {}).get("metadata", {}).get("ownerReferences", [{}])[0].get("uid") == second)


async def test_a_lease_kept_by_the_garbage_collector_names_the_new_owner(running):
    api, node, _ = running
    api.delete_node(IDENT.name)  # the Lease is still there, owned by the old uid
    await until(lambda: IDENT.name in api.nodes and node.registrations == 2)
    await until(lambda: api.leases[IDENT.name]["metadata"]["ownerReferences"][0]["uid"] == node.node_uid)


async def test_a_node_deleted_and_taken_by_another_machine_is_not_taken_back(running):
    api, node, tasks = running
    api.delete_node(IDENT.name)
    api.nodes[IDENT.name] = {"metadata": {"name": IDENT.name, "uid": "someone", "annotations": {MACHINE_ID_ANNOTATION: "other-mac"}}}
    await until(lambda: tasks[0].done())
    with pytest.raises(TakeoverRefused):
        tasks[0].result()


async def test_lease_renewal_recreates_a_lease_deleted_under_it():
    api = MemoryApi()
    lease = LeaseController(api=api, node_name="mac", duration_seconds=40)  # type: ignore[arg-type]
    await lease.renew(node_uid="uid-a")
    assert api.leases["mac"]["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
    del api.leases["mac"]
    await lease.renew(node_uid="uid-b")
    assert api.leases["mac"]["metadata"]["ownerReferences"][0]["uid"] == "uid-b"


async def test_after_an_outage_the_node_is_read_afresh(running):
    """The watch may hang on a connection the outage broke: what the lifecycle controller
    wrote meanwhile is found by reading the Node when the Lease renews again."""
    api, node, _ = running
    api.lifecycle_controller_marks_unknown(IDENT.name, event=False)
    await asyncio.sleep(0.2)
    assert ready(api) == "Unknown"
    node.resync()
    await until(lambda: ready(api) == "True", timeout=2)


async def test_the_lease_says_when_renewals_work_again(monkeypatch):
    monkeypatch.setattr("vnode.node.lease.Backoff.next_delay", lambda self: 0.01)
    api = MemoryApi()
    recovered = []
    lease = LeaseController(api=api, node_name="mac", duration_seconds=40, on_recovered=lambda: recovered.append(1))  # type: ignore[arg-type]
    lease.renew_interval = 0.02
    task = asyncio.create_task(lease.run(node_uid="uid-a"))
    try:
        await until(lambda: "mac" in api.leases)
        await asyncio.sleep(0.1)
        assert recovered == []
        api.fail_replaces = 3
        await until(lambda: api.fail_replaces == 0)
        await until(lambda: recovered == [1])
        await asyncio.sleep(0.1)
        assert recovered == [1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
