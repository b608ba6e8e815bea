"""The node status loop: register once, then keep the Node's status true.

Status is computed every `node_status_update_seconds` and patched only when something a
user would see changed, or when `node_status_report_seconds` passed (the kubelet's
nodeStatusReportFrequency); liveness itself is carried by the Lease (see lease.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from vnode.kubeclient import KubeClient
from vnode.node.client import Backoff, Outage, explain, is_transient
from vnode.node.registration import TakeoverRefused, register
from vnode.node.status import MemoryCondition, NodeIdentity, node_status, status_fingerprint
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
        self._conditions: list[dict] | None = None
        self._reported: tuple | None = None
        self._reported_at = 0.0

    async def run(self) -> None:
        facts = await self._host.facts()
        node = await self._register(facts)
        self.node_uid = node["metadata"]["uid"]
        self._conditions = (node.get("status") or {}).get("conditions")
        self.registered.set()
        outage = Outage(log, "node status update")
        backoff = Backoff(initial=1.0, cap=self._update_seconds)
        while True:
            try:
                await self.sync_status(facts)
                outage.recovered()
                backoff.reset()
                await asyncio.sleep(self._update_seconds)
            except Exception as exc:  # noqa: BLE001 - every failure is retried, and explained
                delay = backoff.next_delay()
                outage.failed(explain(exc, server=self._server), retry_in=delay)
                await asyncio.sleep(delay)

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
            not_ready=self._readiness_problems(),
            now=dt.datetime.now(dt.timezone.utc),
            pressure_error=pressure_error,
            memory=self._memory_condition() if self._memory_condition else None,
        )
        fingerprint = status_fingerprint(status)
        due = time.monotonic() - self._reported_at >= self._report_seconds
        if fingerprint == self._reported and not due:
            return False
        await self._api.patch(f"/api/v1/nodes/{self._identity.name}/status", {"status": status})
        if self._reported is not None and fingerprint != self._reported:
            changes = [f"{c['type']}={c['status']}" for c in status["conditions"]]
            log.info("node status changed: %s", ", ".join(changes))
        self._conditions = status["conditions"]
        self._reported, self._reported_at = fingerprint, time.monotonic()
        return True
