"""The node status loop: register, then keep the Node's status true, and the Node there.

Status is computed every `node_status_update_seconds` and patched only when something a
user would see changed, when `node_status_report_seconds` passed (the kubelet's
nodeStatusReportFrequency), or when the API server's copy says otherwise: the Node is
watched (as the kubelet's node informer), so conditions the node lifecycle controller set
to Unknown while this node could not reach it are written back at once, and a deleted
Node is registered again. Liveness itself is carried by the Lease (see lease.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain, is_transient
from vnode.node.bootid import read_boot_id
from vnode.node.registration import TakeoverRefused, register
from vnode.node.status import MemoryCondition, NodeIdentity, condition_fingerprint, node_status, status_fingerprint
from vnode.node.watch import Reflector
from vnode.tasks import cancel_and_wait, spawn
from vnode.provider.host import Host, HostCommandError, HostFacts

log = logging.getLogger(__name__)


class NodeController:
    """Owns the Node object: its registration and its status."""

    def __init__(
        self,
        *,
        api: KubeClient,
        host: Host,
        identity: NodeIdentity,
        disk_path: str,
        force: bool,
        update_seconds: float,
        report_seconds: float,
        readiness_problems: Callable[[], list[str]] = list,
        memory_condition: Callable[[], MemoryCondition] | None = None,
    ) -> None:
        self._api = api
        self._server = api.server
        self._host = host
        self._identity = identity
        self._disk_path = disk_path
        self._force = force
        self._update_seconds = update_seconds
        self._report_seconds = report_seconds
        self._readiness_problems = readiness_problems
        self._memory_condition = memory_condition  # the eviction manager's MemoryPressure, if it runs
        self.registered = asyncio.Event()
        self.node_uid: str | None = None
        self.registrations = 0
        self._conditions: list[dict] | None = None
        self._reported: tuple | None = None
        self._reported_at = 0.0
        self._boot_id = ""
        self._seen: tuple | None = None  # the conditions on the API server, as condition_fingerprint
        self._gone = False  # the Node was deleted: register it again
        self._verify = False  # read the Node afresh before the next sync (see resync)
        self._wake = asyncio.Event()
        self.watch = Reflector(api, "/api/v1/nodes", selector=f"metadata.name={identity.name}", what=f"node {identity.name}",
                               on_list=self._listed, on_event=self._event)

    async def run(self) -> None:
        facts = await self._host.facts()
        self._boot_id = await read_boot_id()
        self._adopt(await self._register(facts))
        self.registered.set()
        watch = spawn(self.watch.run(), name="node-watch", task="node-watch", forever=True, logger=log)
        try:
            await self._status_loop(facts)  # TakeoverRefused (the Node re-registered by another machine) ends it
        finally:
            await cancel_and_wait([watch])

    async def _status_loop(self, facts: HostFacts) -> None:
        outage = Outage(log, "node status update")
        backoff = Backoff(initial=1.0, cap=self._update_seconds)
        while True:
            try:
                if self._verify:
                    await self._read_node()
                if self._gone:
                    await self._reregister(facts)
                await self.sync_status(facts)
                outage.recovered()
                backoff.reset()
                self._wake.clear()
                try:  # a watch event showing the API server's copy off wakes this early
                    async with asyncio.timeout(self._update_seconds):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            except TakeoverRefused:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried, and explained
                delay = backoff.next_delay()
                outage.failed(explain(exc, server=self._server), retry_in=delay)
                await asyncio.sleep(delay)

    def resync(self) -> None:
        """Read the Node from the API server before the next status sync: after an outage
        (the Lease failed to renew) the watch may not have shown what changed meanwhile
        (the node lifecycle controller's Unknown) and may hang on a broken connection."""
        self._verify = True
        self._wake.set()
        self.watch.restart()

    async def _read_node(self) -> None:
        try:
            node = await self._api.get(f"/api/v1/nodes/{self._identity.name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            self._deleted()
        else:
            self._observe(node)
        self._verify = False

    def _adopt(self, node: dict) -> None:
        if self.node_uid is not None and node["metadata"]["uid"] != self.node_uid:
            log.info("node %s registered again (uid %s, was %s)", self._identity.name, node["metadata"]["uid"], self.node_uid)
        self.node_uid = node["metadata"]["uid"]
        self.registrations += 1
        self._conditions = (node.get("status") or {}).get("conditions")
        self._seen = condition_fingerprint(node.get("status") or {})
        self._reported = None  # a new Node: report at once
        self._gone = False

    async def _reregister(self, facts: HostFacts) -> None:
        """The Node was deleted under a running agent (`kubectl delete node`): create it again,
        with the same machine-ID rule as at start (another machine's Node is not taken), before
        the pod garbage collector deletes the pods bound to a Node that no longer exists."""
        log.warning("node %s was deleted; registering it again", self._identity.name)
        self._adopt(await self._register(facts))

    # -- the Node as the API server has it ------------------------------------------------
    async def _listed(self, items: list[dict]) -> None:
        node = next((n for n in items if n["metadata"]["name"] == self._identity.name), None)
        if node is None:
            self._deleted()
        else:
            self._observe(node)

    def _event(self, kind: str, node: dict) -> None:
        if kind == "DELETED":
            if node["metadata"].get("uid") == self.node_uid:
                self._deleted()
            return
        self._observe(node)

    def _deleted(self) -> None:
        if self.registered.is_set() and not self._gone:
            self._gone = True
            self._wake.set()

    def _observe(self, node: dict) -> None:
        if node["metadata"].get("uid") != self.node_uid:
            return  # another incarnation: ours, registered again, arrives as its own event
        self._seen = condition_fingerprint(node.get("status") or {})
        # Transition times follow the API server's copy, as the kubelet's (from its informer).
        self._conditions = (node.get("status") or {}).get("conditions") or self._conditions
        if self._reported is not None and self._seen != self._reported[0]:
            self._wake.set()

    async def _register(self, facts: HostFacts) -> dict:
        outage = Outage(log, f"registering node {self._identity.name}")
        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            try:
                node = await register(self._api, self._identity, facts, force=self._force)
                outage.recovered()
                return node
            except TakeoverRefused:
                raise
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    log.error("registering node %s failed: %s", self._identity.name, explain(exc, server=self._server))
                delay = backoff.next_delay()
                outage.failed(explain(exc, server=self._server), retry_in=delay)
                await asyncio.sleep(delay)

    async def sync_status(self, facts: HostFacts) -> bool:
        """Compute status; patch it if it changed or is due. Returns True if patched."""
        pressure, pressure_error = None, ""
        try:
            pressure = await self._host.pressure(disk_path=self._disk_path)
        except (HostCommandError, ValueError, OSError) as exc:
            pressure_error = str(exc)
            log.warning("reading host pressure failed: %s", exc)
        status = node_status(
            self._identity,
            facts,
            pressure,
            previous_conditions=self._conditions,
            boot_id=self._boot_id,
            not_ready=self._readiness_problems(),
            now=dt.datetime.now(dt.timezone.utc),
            pressure_error=pressure_error,
            memory=self._memory_condition() if self._memory_condition else None,
        )
        fingerprint = status_fingerprint(status)
        due = time.monotonic() - self._reported_at >= self._report_seconds
        drifted = self._seen is not None and self._seen != fingerprint[0]  # another writer changed the conditions
        if fingerprint == self._reported and not due and not drifted:
            return False
        await self._api.patch(f"/api/v1/nodes/{self._identity.name}/status", {"status": status})
        if self._reported is not None and fingerprint != self._reported:
            changes = [f"{c['type']}={c['status']}" for c in status["conditions"]]
            log.info("node status changed: %s", ", ".join(changes))
        elif drifted and self._reported is not None:
            theirs = ", ".join(f"{t}={v}" for t, v, _ in self._seen)
            log.info("node conditions on the API server (%s) differ from vnode's; writing them again", theirs)
        self._seen = fingerprint[0]
        self._conditions = status["conditions"]
        self._reported, self._reported_at = fingerprint, time.monotonic()
        return True
