"""Pod and node events, as the kubelet records them: what `kubectl describe` shows.

Recording never waits on the API server: `pod_event`/`node_event` put the event in a
bounded buffer and return, and one sender task (`run`) writes them, so probes, starts and
restarts go on at full speed while the API server is slow or away. When the buffer is full
the oldest event is dropped and counted (vnode_events_dropped_total), as client-go's
broadcaster drops rather than blocks. Repeats of the same (object, reason, message) are
aggregated as client-go's event correlator does: still in the buffer, they only raise its
count; already written within ten minutes, they bump the count of that Event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from vnode.event_metrics import EVENTS_DROPPED
from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain, is_transient

log = logging.getLogger(__name__)

AGGREGATE_SECONDS = 600
BUFFER = 256  # events waiting to be written; beyond this the oldest goes
SEEN_MAX = 4096  # events remembered for aggregation (client-go's LRU holds 4096)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Pending:
    key: tuple
    involved: dict
    namespace: str
    kind: str
    reason: str
    message: str
    first: str
    last: str
    count: int = 1


class EventRecorder:
    def __init__(self, api: KubeClient, *, node_name: str, buffer: int = BUFFER) -> None:
        self._api, self._node = api, node_name
        self._buffer = buffer
        self._queue: OrderedDict[tuple, _Pending] = OrderedDict()  # oldest first, one entry per key
        self._seen: OrderedDict[tuple, tuple[str, int, float]] = OrderedDict()  # key -> (event name, count, first sent)
        self._wake = asyncio.Event()
        self.dropped = 0

    async def pod_event(self, pod: dict, *, kind: str, reason: str, message: str, field_path: str | None = None) -> None:
        """Record an event on `pod` (kind Normal or Warning). Returns at once; never raises:
        an event is worth less than the work that caused it."""
        meta = pod["metadata"]
        involved = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1",
                    "resourceVersion": meta.get("resourceVersion", "")}
        if field_path:
            involved["fieldPath"] = field_path
        self.record(involved, namespace=meta["namespace"], kind=kind, reason=reason, message=message)

    async def node_event(self, *, kind: str, reason: str, message: str) -> None:
        """An event on this node (`kubectl describe node`), in the default namespace with the
        node's name as its uid, as the kubelet records them."""
        involved = {"kind": "Node", "name": self._node, "uid": self._node, "apiVersion": "v1"}
        self.record(involved, namespace="default", kind=kind, reason=reason, message=message)

    def record(self, involved: dict, *, namespace: str, kind: str, reason: str, message: str) -> None:
        key = (involved["uid"], kind, reason, message, involved.get("fieldPath"))
        now = _now()
        pending = self._queue.get(key)
        if pending is not None:
            pending.count += 1
            pending.last = now
            return
        if len(self._queue) >= self._buffer:
            _, old = self._queue.popitem(last=False)
            self.dropped += 1
            EVENTS_DROPPED.inc()
            log.debug("event buffer full: dropped %s for %s %s", old.reason, old.involved["kind"], old.involved["name"])
        self._queue[key] = _Pending(key, involved, namespace, kind, reason, message, first=now, last=now)
        self._wake.set()

    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Write buffered events, oldest first; while the API server fails, wait and retry
        the same event (newer ones keep buffering, the oldest dropping when it is full)."""
        backoff = Backoff(initial=0.5, cap=30.0)
        outage = Outage(log, "recording events")
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                key, pending = next(iter(self._queue.items()))
                sent = pending.count
                try:
                    await self._write(pending, count=sent)
                except Exception as exc:  # noqa: BLE001 - the API server's trouble is retried, the rest dropped
                    if is_transient(exc):
                        delay = backoff.next_delay()
                        outage.failed(explain(exc, server=self._api.server), retry_in=delay)
                        await asyncio.sleep(delay)
                        continue
                    log.debug("event %s for %s %s not recorded: %s", pending.reason, pending.involved["kind"],
                              pending.involved["name"], exc)
                outage.recovered()
                backoff.reset()
                pending.count -= sent  # repeats recorded while it was being written stay for the next round
                if pending.count <= 0 and self._queue.get(key) is pending:
                    del self._queue[key]

    async def _write(self, pending: _Pending, *, count: int) -> None:
        ns = pending.namespace
        seen = self._seen.get(pending.key)
        if seen and time.monotonic() - seen[2] < AGGREGATE_SECONDS:
            name, total, first = seen
            try:
                await self._api.patch(f"/api/v1/namespaces/{ns}/events/{name}", {"count": total + count, "lastTimestamp": pending.last})
                self._remember(pending.key, (name, total + count, first))
                return
            except ApiError as exc:
                if exc.status != 404:  # gone (its TTL passed): a new one below
                    raise
        name = f"{pending.involved['name']}.{uuid.uuid4().hex[:12]}"
        await self._api.create(f"/api/v1/namespaces/{ns}/events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": pending.involved,
            "reason": pending.reason, "message": pending.message, "type": pending.kind,
            "source": {"component": "vnode", "host": self._node},
            "reportingComponent": "vnode", "reportingInstance": self._node,
            "firstTimestamp": pending.first, "lastTimestamp": pending.last, "count": count,
        })
        self._remember(pending.key, (name, count, time.monotonic()))

    def _remember(self, key: tuple, value: tuple[str, int, float]) -> None:
        self._seen[key] = value
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
