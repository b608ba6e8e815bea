"""Pod status: computed from the containers' state, written by one manager, only on change.

`pod_status` is pure (phase and conditions by the kubelet's rules); `StatusManager` is
the single writer of pod status on this node, as in the kubelet: workers hand it the
status they want, it coalesces, and patches the API server when something changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from vnode.kubeclient import MERGE, ApiError, KubeClient
from vnode.node.client import Backoff, explain

log = logging.getLogger(__name__)

OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
EVICTED = "Evicted"  # the reason of a pod failed by node-pressure eviction (eviction.py)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerView:
    """What the worker knows of one container; becomes one containerStatuses entry."""

    name: str
    image: str
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str | None = None
    will_restart: bool = True  # when terminated: will it run again (restartPolicy)?

    def to_status(self) -> dict:
        out = {
            "name": self.name,
            "image": self.image,
            "imageID": f"vnode://{self.image}",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def _phase(containers: list[ContainerView]) -> str:
    if not containers:
        return "Pending"
    if all("terminated" in c.state and not c.will_restart for c in containers):
        return "Succeeded" if all(c.state["terminated"].get("exitCode") == 0 for c in containers) else "Failed"
    if any("running" in c.state for c in containers):
        return "Running"
    if any(c.restart_count > 0 or c.last_state or "terminated" in c.state for c in containers):
        return "Running"
    return "Pending"


def readiness_gates_unready(pod: dict, conditions: dict[str, dict]) -> list[str]:
    """What keeps the pod's readiness gates from passing, in the kubelet's words; empty
    when every gate's condition (written by another controller) is True."""
    unready = []
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = gate.get("conditionType")
        cond = conditions.get(kind)
        if cond is None:
            unready.append(f'corresponding condition of pod readiness gate "{kind}" does not exist.')
        elif cond.get("status") != "True":
            unready.append(f'the status of pod readiness gate "{kind}" is not "True", but {cond.get("status")}')
    return unready


def pod_status(
    pod: dict,
    containers: list[ContainerView],
    *,
    pod_ip: str,
    start_time: str,
    failed: tuple[str, str] | None = None,
    now: str | None = None,
) -> dict:
    """The full status to write. `failed` (reason, message) makes the pod Failed (admission,
    or eviction: then the kubelet's DisruptionTarget condition tells controllers why)."""
    now = now or now_rfc3339()
    previous = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    evicted = failed is not None and failed[0] == EVICTED
    phase = "Failed" if failed else _phase(containers)
    ready = bool(containers) and all(c.ready for c in containers) and phase == "Running"
    gates_unready = readiness_gates_unready(pod, previous)
    gates_ok = not gates_unready
    wanted = {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True" if ready else "False",
        "Ready": "True" if ready and gates_ok and not failed else "False",
    }
    conditions = [c for t, c in previous.items() if t not in OWNED_CONDITIONS and not (evicted and t == "DisruptionTarget")]
    if evicted:
        old = previous.get("DisruptionTarget") or {}
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": failed[1],
                           "lastProbeTime": None,
                           "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == "True" else now})
    for kind, value in wanted.items():
        old = previous.get(kind) or {}
        cond = {"type": kind, "status": value, "lastProbeTime": None,
                "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == value else now}
        if kind in ("ContainersReady", "Ready") and value == "False":
            not_ready = [c.name for c in containers if not c.ready]
            if kind == "Ready" and ready and not failed:  # the containers are ready, a gate is not
                cond["reason"], cond["message"] = "ReadinessGatesNotReady", ", ".join(gates_unready)
            else:
                cond["reason"] = "ContainersNotReady" if not failed else "PodFailed"
                cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else ""
        conditions.append(cond)
    status = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": pod_ip,
        "hostIPs": [{"ip": pod_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [c.to_status() for c in containers],
        "reason": failed[0] if failed else None,
        "message": failed[1] if failed else None,
    }
    if (pod.get("metadata") or {}).get("generation") is not None:
        status["observedGeneration"] = pod["metadata"]["generation"]
    return status


def _comparable(status: dict) -> dict:
    """Status without times that move on their own, for change detection."""
    return {**status, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]]}


class StatusManager:
    """The only writer of pod status on this node."""

    def __init__(self, api: KubeClient) -> None:
        self._api = api
        self._wanted: dict[str, tuple[str, str, dict]] = {}  # uid -> (ns, name, status)
        self._written: dict[str, dict] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._flushed: dict[str, asyncio.Event] = {}

    def set(self, pod: dict, status: dict) -> None:
        uid = pod["metadata"]["uid"]
        self._wanted[uid] = (pod["metadata"]["namespace"], pod["metadata"]["name"], status)
        written = self._written.get(uid)
        if written is not None and _comparable(written) == _comparable(status):
            return
        self._dirty.add(uid)
        self._wake.set()

    def forget(self, uid: str) -> None:
        self._wanted.pop(uid, None)
        self._written.pop(uid, None)
        self._dirty.discard(uid)

    def last(self, uid: str) -> dict | None:
        return (self._wanted.get(uid) or (None, None, None))[2]

    async def flush(self, uid: str, *, timeout: float = 10.0) -> None:
        """Wait until the latest wanted status of `uid` is written (before a final DELETE)."""
        if uid not in self._dirty:
            return
        event = self._flushed.setdefault(uid, asyncio.Event())
        event.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            log.warning("status of pod %s not written within %.0fs", uid, timeout)

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=10.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for uid in list(self._dirty):
                if uid not in self._wanted:
                    self._dirty.discard(uid)
                    continue
                ns, name, status = self._wanted[uid]
                try:
                    await self._api.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status}, content_type=MERGE)
                except ApiError as exc:
                    if exc.status == 404:
                        self.forget(uid)
                        continue
                    failed = True
                    log.warning("writing status of pod %s/%s failed: %s", ns, name, explain(exc, server=self._api.server))
                    continue
                except Exception as exc:  # noqa: BLE001 - retried below
                    failed = True
                    log.warning("writing status of pod %s/%s failed: %s", ns, name, explain(exc, server=self._api.server))
                    continue
                self._written[uid] = status
                if self._wanted.get(uid, (None, None, None))[2] is status:
                    self._dirty.discard(uid)
                    if uid in self._flushed:
                        self._flushed[uid].set()
            if failed:
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
            else:
                backoff.reset()
