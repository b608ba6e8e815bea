"""The eviction manager: memory pressure, handled with the kubelet's semantics.

Every monitoring interval it reads memory.available (from the host, or from the test
hook's signal file) and compares it with the hard and soft thresholds (thresholds.py). It
owns the node's MemoryPressure condition, held for the transition period after the last
breach, and once a threshold has held for its grace period it evicts one pod, ranked as
the kubelet ranks them. Pods and usage come through narrow functions (the pod
controller's views); it never touches worker or runner internals.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vnode import tasks as guarded
from vnode.node.client import Outage
from vnode.node.status import MemoryCondition
from vnode.pods.events import EventRecorder
from vnode.pods.thresholds import MEMORY_AVAILABLE, Threshold, ThresholdError, format_bytes, format_duration, quantity_bytes
from vnode.provider.host import HostCommandError, MemorySignal
from vnode.provider.stats import tree_usage
from vnode.provider.supervisor import Instance

log = logging.getLogger(__name__)

# The kubelet overrides a pod's grace period with 1 s on a hard threshold, and its runtime
# never gives a container less than 2 s to stop (kuberuntime's minimumGracePeriodInSeconds).
HARD_EVICTION_GRACE = 1.0
MIN_STOP_GRACE = 2.0
SYSTEM_CRITICAL_PRIORITY = 2_000_000_000  # system-cluster-critical and above are never evicted
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


# --------------------------------------------------------------------------- signal


@dataclass(frozen=True)
class Observation:
    """One reading of memory.available, and where it came from."""

    available: int
    capacity: int
    detail: str  # what else the source says ("macOS memory pressure level warn", "signal file ...")


def parse_signal_file(text: str) -> int | None:
    """The test hook's file: JSON {"memory.available": "80Mi"} (a quantity, or a number of
    bytes), or just the quantity ("80Mi", "83886080"). Empty: None (use the host).
    Anything else raises ValueError, so a typo never reads as plenty of memory."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or MEMORY_AVAILABLE not in data:
            raise ValueError(f"signal file: expected a JSON object with {MEMORY_AVAILABLE!r}")
        value = data[MEMORY_AVAILABLE]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"signal file: {MEMORY_AVAILABLE} must be a quantity or a number of bytes, not {value!r}")
        return int(value) if isinstance(value, (int, float)) else quantity_bytes(value)
    return quantity_bytes(text)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Verdict:
    """What one observation means: the condition, and whether (and why) to evict now."""

    pressure: bool  # MemoryPressure, transition period included
    met: tuple[Threshold, ...]  # met now (or not yet reclaimed), grace periods aside
    reclaim: Threshold | None  # met past its grace period: evict for this one (hard first)
    detail: str


class PressureTracker:
    """The kubelet's threshold bookkeeping on plain numbers (no I/O, `now` passed in):
    when each threshold was first met, which ones are being acted on (they stay met until
    the signal is their minimum reclaim above them), when one was last met."""

    def __init__(self, thresholds: Iterable[Threshold], *, transition_seconds: float) -> None:
        self.thresholds = list(thresholds)
        self.transition = transition_seconds
        self._first_met: dict[Threshold, float] = {}
        self._acting: list[Threshold] = []
        self._last_met: float | None = None

    def observe(self, *, available: int, capacity: int, now: float) -> Verdict:
        met = [t for t in self.thresholds if available < t.limit(capacity)]
        met += [t for t in self._acting if t not in met and available < t.limit(capacity, with_reclaim=True)]
        self._first_met = {t: self._first_met.get(t, now) for t in met}
        if met:
            self._last_met = now
        # With a transition period of 0 the condition follows the thresholds exactly.
        pressure = bool(met) or (self._last_met is not None and now - self._last_met < self.transition)
        self._acting = [t for t in met if now - self._first_met[t] >= t.grace_seconds]
        reclaim = next((t for t in self._acting if t.grace_seconds == 0), self._acting[0] if self._acting else None)
        return Verdict(pressure=pressure, met=tuple(met), reclaim=reclaim,
                       detail=self._explain(met, reclaim, available=available, capacity=capacity, now=now))

    def _explain(self, met: list[Threshold], reclaim: Threshold | None, *, available: int, capacity: int, now: float) -> str:
        have = f"{MEMORY_AVAILABLE} {format_bytes(available)}"
        if not met:
            if self._last_met is None:
                return f"{have}, above every threshold"
            ago = now - self._last_met
            if ago < self.transition:
                return (f"{have} is above every threshold again; MemoryPressure stays until none has been met for "
                        f"{format_duration(self.transition)} (--eviction-pressure-transition-period), "
                        f"{format_duration(round(self.transition - ago))} from now")
            return f"{have}, above every threshold"
        t = reclaim or met[0]
        limit = t.value.display(capacity)
        if available >= t.limit(capacity):
            reclaim_text = t.min_reclaim.text if t.min_reclaim else "0"
            return f"{have} is above the {t.kind} threshold {limit} but not yet by its minimum reclaim {reclaim_text}"
        if t is reclaim or not t.soft:
            return f"{have} is below the {t.kind} threshold {limit}"
        held = now - self._first_met[t]
        return (f"{have} is below the soft threshold {limit}, for {format_duration(round(held))} of its "
                f"{format_duration(t.grace_seconds)} grace period")


@dataclass(frozen=True)
class ContainerUsage:
    name: str
    usage: int | None  # working set bytes; None when its running server could not be read
    request: int
    request_text: str  # as written in the spec ("0" when none), for the message


@dataclass(frozen=True)
class Candidate:
    """A pod as the ranking sees it."""

    uid: str
    ref: str  # namespace/name
    priority: int
    grace: float  # its terminationGracePeriodSeconds
    critical: bool
    containers: tuple[ContainerUsage, ...]

    @property
    def found(self) -> bool:
        """Stats for every running server (the kubelet ranks pods without stats first)."""
        return all(c.usage is not None for c in self.containers)

    @property
    def usage(self) -> int:
        return sum(c.usage or 0 for c in self.containers)

    @property
    def request(self) -> int:
        return sum(c.request for c in self.containers)


def candidates(pods: Iterable[dict], usage: dict[tuple[str, str], int | None]) -> list[Candidate]:
    """Pods with their servers' usage: `usage` maps (pod uid, container) of each running
    server to its working set; a container without a running server uses nothing."""
    out = []
    for pod in pods:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        containers = []
        for c in spec.get("containers") or []:
            text = str(((c.get("resources") or {}).get("requests") or {}).get("memory") or "0")
            try:
                request = quantity_bytes(text)
            except ThresholdError:
                request = 0
            key = (meta["uid"], c["name"])
            containers.append(ContainerUsage(c["name"], usage[key] if key in usage else 0, request, text))
        priority = int(spec.get("priority") or 0)
        out.append(Candidate(
            uid=meta["uid"], ref=f"{meta['namespace']}/{meta['name']}", priority=priority,
            grace=float(30 if spec.get("terminationGracePeriodSeconds") is None else spec["terminationGracePeriodSeconds"]),
            critical=priority >= SYSTEM_CRITICAL_PRIORITY or MIRROR_ANNOTATION in (meta.get("annotations") or {}),
            containers=tuple(containers),
        ))
    return out


def _first(a: bool, b: bool) -> int:
    """-1 when only `a` holds: that pod goes first."""
    return 0 if a == b else (-1 if a else 1)


def _compare(p1: Candidate, p2: Candidate) -> int:
    # 1. usage above requests first (a pod without stats before either)
    if not (p1.found and p2.found):
        return _first(not p1.found, not p2.found)
    order = _first(p1.usage > p1.request, p2.usage > p2.request)
    if order:
        return order
    # 2. lower priority first
    if p1.priority != p2.priority:
        return -1 if p1.priority < p2.priority else 1
    # 3. the larger consumption above requests first
    over1, over2 = p1.usage - p1.request, p2.usage - p2.request
    return 0 if over1 == over2 else (-1 if over1 > over2 else 1)


def rank(pods: Iterable[Candidate]) -> list[Candidate]:
    """The kubelet's memory-pressure order: usage above requests, then priority, then
    usage above requests by amount. Ties keep the pods' names in order."""
    return sorted(sorted(pods, key=lambda c: c.ref), key=functools.cmp_to_key(_compare))


def eviction_grace(threshold: Threshold, *, pod_grace: float, max_pod_grace: int) -> float:
    """Seconds the evicted pod's servers get to stop: 1 s on a hard threshold; on a soft
    one its own grace period capped by --eviction-max-pod-grace-period (negative: not
    capped); never under the runtime's 2 s."""
    if threshold.grace_seconds == 0:
        grace = HARD_EVICTION_GRACE
    elif max_pod_grace < 0:
        grace = pod_grace
    else:
        grace = min(float(max_pod_grace), pod_grace)
    return max(grace, MIN_STOP_GRACE)


def eviction_message(pod: Candidate, *, threshold: Threshold, observation: Observation) -> str:
    """The kubelet's words, so runbooks matching on them keep working."""
    parts = [
        "The node was low on resource: memory.",
        f"Threshold quantity: {threshold.value.display(observation.capacity)}, available: {format_bytes(observation.available)}.",
    ]
    for c in pod.containers:
        if c.usage is not None and c.usage > c.request:
            parts.append(f"Container {c.name} was using {format_bytes(c.usage)}, request is {c.request_text}, "
                         "has larger consumption of memory.")
    return " ".join(parts)


def read_usage(instances: Iterable[Instance]) -> dict[tuple[str, str], int | None]:
    """Blocking (psutil): the working set of each running server's process tree."""
    out: dict[tuple[str, str], int | None] = {}
    for inst in instances:
        pid = inst.server_pid()
        usage = tree_usage(pid) if pid else None
        out[(inst.pod_uid, inst.container)] = usage.working_set_bytes if usage else None
    return out


# --------------------------------------------------------------------------- the loop


class Evict(Protocol):
    async def __call__(self, pod_uid: str, *, message: str, grace: float) -> bool: ...


class EvictionManager:
    """Owns MemoryPressure and the evictions; run() is one task of the agent."""

    def __init__(
        self,
        *,
        thresholds: Iterable[Threshold],
        read_host: Callable[[], Awaitable[MemorySignal]],
        capacity: int,
        pods: Callable[[], list[dict]],
        running: Callable[[], list[Instance]],
        evict: Evict,
        events: EventRecorder | None = None,
        interval: float = 10.0,
        transition_seconds: float = 300.0,
        max_pod_grace: int = 0,
        signal_file: Path | None = None,
        node_name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = PressureTracker(thresholds, transition_seconds=transition_seconds)
        self._read_host, self._capacity = read_host, capacity
        self._pods, self._running, self._evict, self._events = pods, running, evict, events
        self.interval, self._max_pod_grace = interval, max_pod_grace
        self.signal_file = signal_file
        self._node_name, self._clock = node_name, clock
        self.condition = MemoryCondition(pressure=False)
        self.evictions: dict[str, int] = {}  # by signal, for vnode_evictions_total
        self._nothing_to_evict = False
        self._failures = guarded.Failures("eviction-round", logger=log)

    def memory_condition(self) -> MemoryCondition:
        return self.condition

    async def run(self) -> None:
        if not self.tracker.thresholds:
            log.info("no eviction thresholds: MemoryPressure stays False and nothing is evicted")
        outage = Outage(log, "reading memory.available")
        while True:
            try:
                await self.synchronize()
                outage.recovered()
            except (HostCommandError, ValueError, OSError) as exc:
                outage.failed(str(exc), retry_in=self.interval)  # the condition keeps its last state
            except Exception as exc:  # noqa: BLE001 - one bad round must not take the agent down
                # A bug would fail every round: logged once with its traceback, each counted.
                self._failures.report(exc, what=f"eviction round (retried every {self.interval:.0f}s)")
            await asyncio.sleep(self.interval)

    async def observe(self) -> Observation:
        if self.signal_file is not None:
            text = await asyncio.to_thread(_read_optional, self.signal_file)
            available = parse_signal_file(text) if text else None
            if available is not None:
                return Observation(available, self._capacity, f"from the signal file {self.signal_file}")
        signal = await self._read_host()
        return Observation(signal.available_bytes, signal.capacity_bytes, signal.detail)

    async def synchronize(self) -> str | None:
        """One round: observe, update the condition, evict at most one pod (its ref)."""
        if not self.tracker.thresholds:
            return None
        obs = await self.observe()
        verdict = self.tracker.observe(available=obs.available, capacity=obs.capacity, now=self._clock())
        await self._set_condition(verdict, obs)
        if verdict.reclaim is None:
            self._nothing_to_evict = False
            return None
        await self._node_event("Warning", "EvictionThresholdMet", "Attempting to reclaim memory")
        return await self._evict_one(verdict.reclaim, obs)

    async def _set_condition(self, verdict: Verdict, obs: Observation) -> None:
        was = self.condition.pressure
        self.condition = MemoryCondition(pressure=verdict.pressure, detail=f"{verdict.detail} ({obs.detail})")
        if verdict.pressure and not was:
            log.warning("memory pressure: %s (%s)", verdict.detail, obs.detail)
            await self._node_event("Normal", "NodeHasInsufficientMemory", f"Node {self._node_name} status is now: NodeHasInsufficientMemory")
        elif was and not verdict.pressure:
            log.info("memory pressure over: %s (%s)", verdict.detail, obs.detail)
            await self._node_event("Normal", "NodeHasSufficientMemory", f"Node {self._node_name} status is now: NodeHasSufficientMemory")

    async def _evict_one(self, threshold: Threshold, obs: Observation) -> str | None:
        pods = self._pods()
        usage = await asyncio.to_thread(read_usage, self._running())
        ranked = rank(candidates(pods, usage))
        for pod in ranked:
            if pod.critical:
                log.warning("not evicting critical pod %s", pod.ref)
                continue
            grace = eviction_grace(threshold, pod_grace=pod.grace, max_pod_grace=self._max_pod_grace)
            message = eviction_message(pod, threshold=threshold, observation=obs)
            log.warning("evicting pod %s (%s, grace period %.0fs): %s", pod.ref, threshold.describe(), grace, message)
            if await self._evict(pod.uid, message=message, grace=grace):
                self.evictions[threshold.signal] = self.evictions.get(threshold.signal, 0) + 1
                self._nothing_to_evict = False
                return pod.ref
        if not self._nothing_to_evict:
            log.warning("%s threshold met but no pod can be evicted (%d active)", threshold.describe(), len(ranked))
            self._nothing_to_evict = True
        return None

    async def _node_event(self, kind: str, reason: str, message: str) -> None:
        if self._events is not None:
            await self._events.node_event(kind=kind, reason=reason, message=message)


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
