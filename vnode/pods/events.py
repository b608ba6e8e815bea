"""Pod and node events, as the kubelet records them: what `kubectl describe` shows.

Repeats of the same (object, reason, message) within ten minutes bump the count of one
Event instead of creating new ones, so a crash loop does not flood the namespace.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from vnode.kubeclient import ApiError, KubeClient

log = logging.getLogger(__name__)

AGGREGATE_SECONDS = 600


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, api: KubeClient, *, node_name: str) -> None:
        self._api, self._node = api, node_name
        self._seen: dict[tuple, tuple[str, int, float]] = {}  # key -> (event name, count, first seen)

    async def pod_event(self, pod: dict, *, kind: str, reason: str, message: str, field_path: str | None = None) -> None:
        """Record an event on `pod` (kind Normal or Warning); failures are logged, never raised:
        an event is worth less than the work that caused it."""
        meta = pod["metadata"]
        involved = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1",
                    "resourceVersion": meta.get("resourceVersion", "")}
        if field_path:
            involved["fieldPath"] = field_path
        await self._record(involved, namespace=meta["namespace"], kind=kind, reason=reason, message=message)

    async def node_event(self, *, kind: str, reason: str, message: str) -> None:
        """An event on this node (`kubectl describe node`), in the default namespace with the
        node's name as its uid, as the kubelet records them."""
        involved = {"kind": "Node", "name": self._node, "uid": self._node, "apiVersion": "v1"}
        await self._record(involved, namespace="default", kind=kind, reason=reason, message=message)

    async def _record(self, involved: dict, *, namespace: str, kind: str, reason: str, message: str) -> None:
        ns = namespace
        key = (involved["uid"], kind, reason, message, involved.get("fieldPath"))
        try:
            seen = self._seen.get(key)
            if seen and time.monotonic() - seen[2] < AGGREGATE_SECONDS:
                name, count, first = seen
                await self._api.patch(
                    f"/api/v1/namespaces/{ns}/events/{name}", {"count": count + 1, "lastTimestamp": _now()}
                )
                self._seen[key] = (name, count + 1, first)
                return
            name = f"{involved['name']}.{uuid.uuid4().hex[:12]}"
            await self._api.create(f"/api/v1/namespaces/{ns}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": involved,
                "reason": reason, "message": message, "type": kind,
                "source": {"component": "vnode", "host": self._node},
                "reportingComponent": "vnode", "reportingInstance": self._node,
                "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
            })
            self._seen[key] = (name, 1, time.monotonic())
            if len(self._seen) > 2000:
                self._seen.clear()
        except (ApiError, OSError, TimeoutError) as exc:
            log.debug("event %s for %s %s not recorded: %s", reason, involved["kind"], involved["name"], exc)
        except Exception as exc:  # noqa: BLE001 - aiohttp errors and the like
            log.debug("event %s for %s %s not recorded: %s", reason, involved["kind"], involved["name"], exc)
