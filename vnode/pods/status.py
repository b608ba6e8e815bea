"""Pod status: computed from the containers' state, written by one manager, kept true.

`pod_status` is pure (phase and conditions by the kubelet's rules); `StatusManager` is
the single writer of pod status on this node, as in the kubelet: workers hand it the
status they want, it coalesces, and patches the API server when something changed, or
when the API server's copy no longer says what vnode knows (another writer changed it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from vnode.kubeclient import MERGE, ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain

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


def _ours(wanted: dict) -> set[str]:
    """The condition types vnode writes: the kubelet's, and DisruptionTarget when vnode
    evicted the pod. Others' conditions (PodScheduled, readiness gates) are theirs."""
    kinds = set(OWNED_CONDITIONS)
    if any(c.get("type") == "DisruptionTarget" and c.get("reason") == "TerminationByKubelet" for c in wanted.get("conditions") or []):
        kinds.add("DisruptionTarget")
    return kinds


def _by_vnode(status: dict, kinds: set[str]) -> tuple:
    """What of a status vnode decides, normalised so the API server's copy and vnode's compare
    (as the kubelet's isPodStatusByKubeletEqual): its conditions' status, reason and message,
    and the rest of what it writes except times."""
    conds = {c.get("type"): (c.get("status"), c.get("reason") or "", c.get("message") or "")
             for c in status.get("conditions") or [] if c.get("type") in kinds}
    containers = tuple(sorted(
        (c.get("name"), bool(c.get("ready")), bool(c.get("started")), int(c.get("restartCount") or 0), c.get("containerID") or "",
         tuple(sorted((k, (v or {}).get("reason") or "", (v or {}).get("exitCode")) for k, v in (c.get("state") or {}).items())))
        for c in status.get("containerStatuses") or []
    ))
    return (status.get("phase"), tuple(sorted(conds.items())), status.get("podIP"), status.get("hostIP"),
            status.get("reason") or "", status.get("message") or "", containers)


def status_differs(seen: dict, wanted: dict) -> bool:
    """True when the API server's status (`seen`) is not what vnode wants in the fields vnode
    owns: the node lifecycle controller marked the pod not ready, an admin patched it."""
    kinds = _ours(wanted)
    return _by_vnode(seen, kinds) != _by_vnode(wanted, kinds)


def merged_for_write(wanted: dict, seen: dict | None, *, now: str) -> dict:
    """The status to send: vnode's own conditions, everybody else's as the API server has them
    now (the merge patch replaces the whole list), and a condition another writer flipped
    after vnode's last transition stamped as a transition now."""
    if seen is None:
        return wanted
    kinds = _ours(wanted)
    theirs = {c.get("type"): c for c in seen.get("conditions") or []}
    conditions = []
    for cond in wanted.get("conditions") or []:
        if cond.get("type") not in kinds:
            continue
        other = theirs.get(cond.get("type"))
        if other and other.get("status") != cond.get("status") and (other.get("lastTransitionTime") or "") > (cond.get("lastTransitionTime") or ""):
            cond = {**cond, "lastTransitionTime": now}
        conditions.append(cond)
    conditions += [c for t, c in theirs.items() if t not in kinds]
    return {**wanted, "conditions": conditions}


def _newer(version: str | None, than: str | None) -> bool:
    """resourceVersions are opaque, but etcd's are integers: a copy older than the one a write
    returned must not count as the API server's view (a watch event still in flight)."""
    if not than or not version:
        return True
    try:
        return int(version) >= int(than)
    except ValueError:
        return True


class StatusManager:
    """The only writer of pod status on this node.

    Writes when the wanted status changes, and reconciles as the kubelet's status manager
    does: whenever the API server's copy of a pod (from the watch, or every
    RECONCILE_SECONDS) differs from what vnode wants, vnode's is written again."""

    RECONCILE_SECONDS = 10.0
    WRITERS = 8  # status patches in flight at once, for different pods

    def __init__(self, api: KubeClient) -> None:
        self._api = api
        self._wanted: dict[str, tuple[str, str, dict]] = {}  # uid -> (ns, name, status)
        self._written: dict[str, dict] = {}
        self._seen: dict[str, tuple[str | None, dict]] = {}  # uid -> (resourceVersion, status) on the API server
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._flushed: dict[str, asyncio.Event] = {}
        self.reconciled = 0  # writes made because the API server's copy differed, for tests and /metrics

    def set(self, pod: dict, status: dict) -> None:
        uid = pod["metadata"]["uid"]
        self._wanted[uid] = (pod["metadata"]["namespace"], pod["metadata"]["name"], status)
        written = self._written.get(uid)
        if written is not None and _comparable(written) == _comparable(status):
            return
        self._dirty.add(uid)
        self._wake.set()

    def observe(self, pod: dict) -> None:
        """The API server's copy of a pod (watch event or list): reconciled at once if it differs."""
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if uid is None:
            return
        known = self._seen.get(uid)
        if known is not None and not _newer(meta.get("resourceVersion"), known[0]):
            return
        self._seen[uid] = (meta.get("resourceVersion"), pod.get("status") or {})
        if self._check(uid):
            self._wake.set()

    def _check(self, uid: str) -> bool:
        """Mark `uid` dirty if the API server's copy differs from what vnode wants."""
        if uid in self._dirty or uid not in self._wanted or uid not in self._written or uid not in self._seen:
            return False
        ns, name, wanted = self._wanted[uid]
        if not status_differs(self._seen[uid][1], wanted):
            return False
        seen = self._seen[uid][1]
        ready = next((c.get("status") for c in seen.get("conditions") or [] if c.get("type") == "Ready"), None)
        log.info("status of pod %s/%s on the API server differs from vnode's (phase %s, Ready=%s); writing it again",
                 ns, name, seen.get("phase"), ready)
        self._dirty.add(uid)
        self.reconciled += 1
        return True

    def forget(self, uid: str) -> None:
        self._wanted.pop(uid, None)
        self._written.pop(uid, None)
        self._seen.pop(uid, None)
        self._dirty.discard(uid)
        event = self._flushed.pop(uid, None)
        if event is not None:
            event.set()  # nothing is left to write: a waiting flush returns

    def retain(self, uids: set[str]) -> None:
        """Forget every pod not in `uids` (after a list: the pods bound to this node)."""
        for uid in {*self._wanted, *self._written, *self._seen, *self._flushed} - uids:
            self.forget(uid)

    def tracked(self) -> int:
        """Pods with anything cached, for tests of the pruning."""
        return len({*self._wanted, *self._written, *self._seen, *self._dirty, *self._flushed})

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
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            log.warning("status of pod %s not written within %.0fs", uid, timeout)
        finally:
            if self._flushed.get(uid) is event:
                del self._flushed[uid]

    async def _write(self, uid: str) -> str:
        """Patch the status of one dirty pod; the problem, explained, if it failed."""
        if uid not in self._wanted:
            self._dirty.discard(uid)
            return ""
        ns, name, status = self._wanted[uid]
        seen = self._seen.get(uid)
        body = merged_for_write(status, seen[1] if seen else None, now=now_rfc3339())
        try:
            written = await self._api.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": body}, content_type=MERGE)
        except ApiError as exc:
            if exc.status == 404:
                self.forget(uid)
                return ""
            log.debug("writing status of pod %s/%s failed: %s", ns, name, exc)
            return explain(exc, server=self._api.server)
        except Exception as exc:  # noqa: BLE001 - retried by run()
            log.debug("writing status of pod %s/%s failed: %s", ns, name, exc)
            return explain(exc, server=self._api.server)
        self._written[uid] = status
        meta = (written or {}).get("metadata") or {}
        if uid in self._wanted and meta.get("uid") == uid:
            self._seen[uid] = (meta.get("resourceVersion"), written.get("status") or {})
        if self._wanted.get(uid, (None, None, None))[2] is status:
            self._dirty.discard(uid)
            if uid in self._flushed:
                self._flushed[uid].set()
        return ""

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=10.0)
        outage = Outage(log, "writing pod status")
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(self.RECONCILE_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                for uid in list(self._wanted):  # the periodic sync: catch what no event showed
                    self._check(uid)
            self._wake.clear()
            # Up to WRITERS pods at once (one request per pod at a time): 100 pods starting
            # together each want Running, then Ready, and one patch after the other put Ready
            # of the last ones ~2 s behind their servers (bench/scale.py).
            gate = asyncio.Semaphore(self.WRITERS)

            async def write(uid: str) -> str:
                async with gate:
                    return await self._write(uid)

            results = await asyncio.gather(*(write(uid) for uid in list(self._dirty)))
            failed = next((r for r in results if r), "")  # one line per problem, not one per pod and attempt
            if not failed:
                outage.recovered()
            if failed:
                delay = backoff.next_delay()
                outage.failed(failed, retry_in=delay)
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                backoff.reset()
