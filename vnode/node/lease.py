"""The node heartbeat: a coordination.k8s.io Lease in kube-node-lease, renewed every
quarter of its duration (10 s for the default 40 s), as the kubelet does.

The node lifecycle controller reads only this Lease (and status) to decide whether the
node is alive, so renewal must not wait behind anything else the agent does. The Lease is
owned by the Node: when the Node is deleted and registered again (a new uid), the next
renewal names the new owner, and a Lease the garbage collector took is created again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from collections.abc import Callable

from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain

log = logging.getLogger(__name__)

NAMESPACE = "kube-node-lease"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


def micro_time(moment: dt.datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(*, node_name: str, node_uid: str | None, duration: int, now: dt.datetime, resource_version: str | None = None) -> dict:
    metadata: dict = {"name": node_name, "namespace": NAMESPACE}
    if node_uid:
        # Owned by the Node, so deleting the Node garbage-collects its Lease.
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration, "renewTime": micro_time(now)},
    }


class LeaseController:
    """Owns the node's Lease."""

    def __init__(self, *, api: KubeClient, node_name: str, duration_seconds: int,
                 on_recovered: Callable[[], None] | None = None) -> None:
        self._api = api
        # Called when renewals work again after failing: the node controller then reads the
        # Node afresh, as its watch may still hang on a connection the outage broke.
        self._on_recovered = on_recovered
        self._server = api.server
        self._node = node_name
        self._duration = duration_seconds
        self.renew_interval = duration_seconds / 4
        self._resource_version: str | None = None

    async def run(self, *, node_uid: str | None | Callable[[], str | None]) -> None:
        """Renew until cancelled. `node_uid`: the owning Node's uid, or a callable giving the
        current one (it changes when the Node is registered again)."""
        owner = node_uid if callable(node_uid) else (lambda: node_uid)
        failing = False
        outage = Outage(log, "lease renewal")
        # The kubelet retries a failed renewal quickly (200 ms doubling to 7 s): a missed
        # heartbeat costs more than a few extra requests.
        backoff = Backoff(initial=0.2, cap=min(7.0, self.renew_interval))
        while True:
            try:
                await self.renew(node_uid=owner())
                outage.recovered()
                if failing and self._on_recovered is not None:
                    self._on_recovered()
                failing = False
                backoff.reset()
                await asyncio.sleep(self.renew_interval)
            except Exception as exc:  # noqa: BLE001 - always retried, always explained
                failing = True
                delay = backoff.next_delay()
                outage.failed(explain(exc, server=self._server), retry_in=delay)
                await asyncio.sleep(delay)

    async def renew(self, *, node_uid: str | None) -> None:
        """One renewal. Like the kubelet, update straight from the last Lease we wrote and
        read it back only after a conflict or a failure (one request per heartbeat)."""
        now = dt.datetime.now(dt.timezone.utc)
        try:
            if self._resource_version is None:
                self._resource_version, created = await self._read_or_create(node_uid=node_uid, now=now)
                if created:
                    return
            body = lease_body(
                node_name=self._node, node_uid=node_uid, duration=self._duration, now=now,
                resource_version=self._resource_version,
            )
            try:
                written = await self._api.replace(f"{LEASES}/{self._node}", body)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # Deleted with its Node (garbage collection): created again at once, owned anew.
                self._resource_version, _ = await self._read_or_create(node_uid=node_uid, now=now)
                return
            self._resource_version = written["metadata"]["resourceVersion"]
        except BaseException:
            self._resource_version = None
            raise

    async def _read_or_create(self, *, node_uid: str | None, now: dt.datetime) -> tuple[str, bool]:
        """The current resourceVersion, and whether we just created the Lease (then it is renewed)."""
        try:
            current = await self._api.get(f"{LEASES}/{self._node}")
            return current["metadata"]["resourceVersion"], False
        except ApiError as exc:
            if exc.status != 404:
                raise
        body = lease_body(node_name=self._node, node_uid=node_uid, duration=self._duration, now=now)
        created = await self._api.create(LEASES, body)
        log.info("created lease %s/%s", NAMESPACE, self._node)
        return created["metadata"]["resourceVersion"], True
