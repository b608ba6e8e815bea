"""The eviction manager's decisions on plain data: the signal file, the kubelet's threshold
bookkeeping (grace periods, minimum reclaim, transition period), ranking, grace, the
message; then one manager round with fakes for the pod controller."""

import json
import os
from pathlib import Path

import pytest

from vnode.node.status import MemoryCondition
from vnode.pods import eviction
from vnode.pods.eviction import (
    Candidate,
    ContainerUsage,
    EvictionManager,
    Observation,
    PressureTracker,
    candidates,
    eviction_grace,
    eviction_message,
    parse_signal_file,
    rank,
    read_usage,
)
from vnode.pods.thresholds import parse_thresholds
from vnode.provider.host import MemorySignal
from vnode.provider.supervisor import Instance

Mi = 1024 * 1024
Gi = 1024 * Mi
CAPACITY = 16 * Gi
HARD = parse_thresholds(hard="memory.available<100Mi")
BOTH = parse_thresholds(hard="memory.available<100Mi", soft="memory.available<1Gi", soft_grace_period="memory.available=30s")


# ------------------------------------------------------------------ the signal file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"memory.available": "80Mi"}', 80 * Mi),
        ('{"memory.available": 83886080}', 80 * Mi),
        ("80Mi\n", 80 * Mi),
        ("83886080", 80 * Mi),
        ("", None),
        ("  \n", None),
    ],
)
def test_signal_file_formats(text, expected):
    assert parse_signal_file(text) == expected


@pytest.mark.parametrize("text", ['{"memory": "80Mi"}', '{"memory.available": true}', '{"memory.available": "lots"}', "{oops", "plenty"])
def test_bad_signal_file_is_an_error_not_plenty(text):
    with pytest.raises(ValueError):
        parse_signal_file(text)


# ------------------------------------------------------------------ thresholds over time


def test_hard_threshold_evicts_at_once_and_pressure_outlasts_it_by_the_transition_period():
    tracker = PressureTracker(HARD, transition_seconds=60)
    calm = tracker.observe(available=2 * Gi, capacity=CAPACITY, now=0)
    assert (calm.pressure, calm.met, calm.reclaim) == (False, (), None)
    low = tracker.observe(available=80 * Mi, capacity=CAPACITY, now=10)
    assert low.pressure and low.reclaim is HARD[0]
    assert low.detail == "memory.available 80Mi is below the hard threshold 100Mi"
    recovered = tracker.observe(available=2 * Gi, capacity=CAPACITY, now=20)
    assert recovered.pressure and recovered.reclaim is None and recovered.met == ()
    assert "stays until none has been met for 1m0s" in recovered.detail and "50s from now" in recovered.detail
    assert tracker.observe(available=2 * Gi, capacity=CAPACITY, now=69.9).pressure
    assert not tracker.observe(available=2 * Gi, capacity=CAPACITY, now=70).pressure


def test_a_new_breach_restarts_the_transition_period():
    tracker = PressureTracker(HARD, transition_seconds=60)
    tracker.observe(available=80 * Mi, capacity=CAPACITY, now=0)
    tracker.observe(available=90 * Mi, capacity=CAPACITY, now=50)
    assert tracker.observe(available=2 * Gi, capacity=CAPACITY, now=100).pressure  # 50 s after the last breach
    assert not tracker.observe(available=2 * Gi, capacity=CAPACITY, now=110).pressure


def test_zero_transition_period_follows_the_threshold():
    tracker = PressureTracker(HARD, transition_seconds=0)
    assert tracker.observe(available=80 * Mi, capacity=CAPACITY, now=0).pressure
    assert not tracker.observe(available=2 * Gi, capacity=CAPACITY, now=0.1).pressure


def test_soft_threshold_waits_for_its_grace_period_and_hard_goes_first():
    tracker = PressureTracker(BOTH, transition_seconds=300)
    soft = BOTH[1]
    first = tracker.observe(available=900 * Mi, capacity=CAPACITY, now=0)
    assert first.pressure and first.met == (soft,) and first.reclaim is None  # condition at once, eviction later
    assert first.detail == "memory.available 900Mi is below the soft threshold 1Gi, for 0s of its 30s grace period"
    assert tracker.observe(available=900 * Mi, capacity=CAPACITY, now=29).reclaim is None
    assert tracker.observe(available=900 * Mi, capacity=CAPACITY, now=30).reclaim is soft
    both = tracker.observe(available=50 * Mi, capacity=CAPACITY, now=31)
    assert both.reclaim is BOTH[0] and set(both.met) == set(BOTH)


def test_soft_grace_period_restarts_when_the_signal_recovers():
    tracker = PressureTracker(BOTH, transition_seconds=300)
    tracker.observe(available=900 * Mi, capacity=CAPACITY, now=0)
    tracker.observe(available=2 * Gi, capacity=CAPACITY, now=20)
    assert tracker.observe(available=900 * Mi, capacity=CAPACITY, now=40).reclaim is None
    assert tracker.observe(available=900 * Mi, capacity=CAPACITY, now=70).reclaim is BOTH[1]


def test_minimum_reclaim_keeps_an_acted_on_threshold_met():
    (t,) = parse_thresholds(hard="memory.available<100Mi", minimum_reclaim="memory.available=200Mi")
    tracker = PressureTracker([t], transition_seconds=0)
    assert tracker.observe(available=80 * Mi, capacity=CAPACITY, now=0).reclaim is t
    between = tracker.observe(available=250 * Mi, capacity=CAPACITY, now=1)  # above 100Mi, below 100Mi + 200Mi
    assert between.reclaim is t and between.pressure
    assert "not yet by its minimum reclaim 200Mi" in between.detail
    assert tracker.observe(available=300 * Mi, capacity=CAPACITY, now=2).reclaim is None
    # Not acted on yet: the reclaim margin does not apply to a first breach.
    assert tracker.observe(available=250 * Mi, capacity=CAPACITY, now=3).met == ()


def test_percentage_threshold_is_of_the_observed_capacity():
    tracker = PressureTracker(parse_thresholds(hard="memory.available<10%"), transition_seconds=0)
    assert tracker.observe(available=1 * Gi, capacity=16 * Gi, now=0).reclaim is not None  # 1Gi < 1.6Gi
    assert tracker.observe(available=1 * Gi, capacity=8 * Gi, now=1).reclaim is None  # 1Gi > 819Mi


# ------------------------------------------------------------------ ranking


def pod(name, *, priority=None, requests=None, grace=30, uid=None, annotations=None):
    spec = {"containers": [{"name": c, "resources": {"requests": {"memory": r}} if r else {}} for c, r in (requests or {"server": None}).items()],
            "terminationGracePeriodSeconds": grace}
    if priority is not None:
        spec["priority"] = priority
    meta = {"namespace": "ns", "name": name, "uid": uid or f"uid-{name}", "annotations": annotations or {}}
    return {"metadata": meta, "spec": spec}


def cand(name, *, usage, request=0, priority=0):
    return Candidate(uid=name, ref=f"ns/{name}", priority=priority, grace=30, critical=False,
                     containers=(ContainerUsage("server", usage, request, str(request)),))


def names(pods):
    return [p.ref.split("/")[1] for p in pods]


def test_usage_above_requests_goes_before_priority():
    pods = [cand("within", usage=100 * Mi, request=200 * Mi, priority=-10), cand("over", usage=300 * Mi, request=200 * Mi, priority=1000)]
    assert names(rank(pods)) == ["over", "within"]


def test_then_lower_priority_then_larger_excess():
    pods = [
        cand("big-high", usage=900 * Mi, priority=100),
        cand("small-low", usage=200 * Mi, priority=0),
        cand("big-low", usage=800 * Mi, priority=0),
        cand("huge-low", usage=950 * Mi, request=100 * Mi, priority=0),
    ]
    # All exceed their requests; priority 0 before 100; among those 850 Mi > 800 Mi > 200 Mi over.
    assert names(rank(pods)) == ["huge-low", "big-low", "small-low", "big-high"]


def test_pods_without_stats_go_first_as_in_the_kubelet():
    pods = [cand("known", usage=5 * Gi, priority=-5), cand("unreadable", usage=None, priority=1000)]
    assert names(rank(pods)) == ["unreadable", "known"]


def test_candidates_from_pods_and_usage():
    pods = [pod("a", priority=5, requests={"server": "256Mi", "side": None}), pod("b", grace=10, annotations={"kubernetes.io/config.mirror": "x"}),
            pod("c", priority=2_000_000_000)]
    usage = {("uid-a", "server"): 300 * Mi, ("uid-b", "server"): None}
    a, b, c = candidates(pods, usage)
    assert a.priority == 5 and a.request == 256 * Mi and a.usage == 300 * Mi and a.found and not a.critical
    assert a.containers[1] == ContainerUsage("side", 0, 0, "0")  # no running server: uses nothing
    assert b.grace == 10 and not b.found and b.critical  # a mirror pod
    assert c.critical and c.usage == 0 and c.priority == 2_000_000_000


# ------------------------------------------------------------------ grace and message


def test_grace_periods_follow_the_kubelet():
    hard, soft = BOTH
    assert eviction_grace(hard, pod_grace=30, max_pod_grace=60) == 2  # 1 s override, raised to the 2 s minimum
    assert eviction_grace(soft, pod_grace=30, max_pod_grace=0) == 2  # the kubelet's default max of 0
    assert eviction_grace(soft, pod_grace=30, max_pod_grace=10) == 10
    assert eviction_grace(soft, pod_grace=5, max_pod_grace=10) == 5
    assert eviction_grace(soft, pod_grace=30, max_pod_grace=-1) == 30  # negative: the pod's own


def test_message_has_the_kubelets_words_and_numbers():
    pod_ = Candidate(uid="u", ref="ns/p", priority=0, grace=30, critical=False, containers=(
        ContainerUsage("server", 300 * Mi, 0, "0"), ContainerUsage("small", 10 * Mi, 64 * Mi, "64Mi")))
    text = eviction_message(pod_, threshold=HARD[0], observation=Observation(80 * Mi, CAPACITY, "signal file"))
    assert text == ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. "
                    "Container server was using 300Mi, request is 0, has larger consumption of memory.")


def test_read_usage_reads_real_process_trees(tmp_path: Path):
    pid_file = tmp_path / "pid.json"
    pid_file.write_text(json.dumps({"pid": os.getpid()}))
    inst = instance("uid-a", "server", pid_path=str(pid_file))
    gone = instance("uid-b", "server", pid_path=str(tmp_path / "missing.json"))
    usage = read_usage([inst, gone])
    assert usage[("uid-a", "server")] > 10 * Mi  # this Python process
    assert usage[("uid-b", "server")] is None


def instance(uid, container, *, pid_path):
    return Instance(pod_uid=uid, namespace="ns", pod_name=uid, container=container, instance=0, shim_pid=1, shim_start=0.0,
                    started_at=0.0, port=8080, host="198.18.0.2", log_path="", exit_path="", pid_path=pid_path, args=[])


# ------------------------------------------------------------------ the manager


class Fakes:
    def __init__(self, pods):
        self.pods = pods
        self.evicted: list[tuple[str, str, float]] = []
        self.node_events: list[tuple[str, str, str]] = []
        self.host_reads = 0

    async def read_host(self):
        self.host_reads += 1
        return MemorySignal(available_bytes=8 * Gi, capacity_bytes=CAPACITY, detail="macOS memory pressure level normal")

    async def evict(self, pod_uid, *, message, grace):
        self.evicted.append((pod_uid, message, grace))
        self.pods = [p for p in self.pods if p["metadata"]["uid"] != pod_uid]
        return True

    async def node_event(self, *, kind, reason, message):
        self.node_events.append((kind, reason, message))


def manager(fakes, signal_file, *, thresholds=HARD, clock=None):
    times = iter(range(1000))
    return EvictionManager(
        thresholds=thresholds, read_host=fakes.read_host, capacity=CAPACITY, pods=lambda: fakes.pods, running=list,
        evict=fakes.evict, events=fakes, interval=1, transition_seconds=5, signal_file=signal_file, node_name="mac",
        clock=clock or (lambda: float(next(times))),
    )


async def test_one_round_evicts_the_top_ranked_pod_only(tmp_path: Path, monkeypatch):
    signal = tmp_path / "signal.json"
    fakes = Fakes([pod("keep", priority=100), pod("first", priority=-1), pod("second", priority=0)])
    monkeypatch.setattr(eviction, "read_usage", lambda instances: {})
    m = manager(fakes, signal)
    assert await m.synchronize() is None and fakes.host_reads == 1  # no file yet: the machine's reading
    assert m.memory_condition() == MemoryCondition(pressure=False, detail=m.condition.detail)

    signal.write_text(json.dumps({"memory.available": "80Mi"}))
    assert await m.synchronize() == "ns/first"
    uid, message, grace = fakes.evicted[0]
    assert uid == "uid-first" and grace == 2
    assert message == "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi."
    assert m.evictions == {"memory.available": 1}
    assert m.memory_condition().pressure
    assert m.memory_condition().detail.startswith("memory.available 80Mi is below the hard threshold 100Mi (from the signal file")
    assert ("Normal", "NodeHasInsufficientMemory", "Node mac status is now: NodeHasInsufficientMemory") in fakes.node_events
    assert ("Warning", "EvictionThresholdMet", "Attempting to reclaim memory") in fakes.node_events

    assert await m.synchronize() == "ns/second"  # still low: the next one, one per round
    assert m.evictions == {"memory.available": 2} and len(fakes.evicted) == 2

    signal.write_text("")  # cleared: the machine's 8 Gi again, pressure held for the transition period
    assert await m.synchronize() is None and m.memory_condition().pressure
    for _ in range(5):
        await m.synchronize()
    assert not m.memory_condition().pressure
    assert fakes.node_events[-1][1] == "NodeHasSufficientMemory" and len(fakes.evicted) == 2


async def test_critical_pods_are_never_evicted(tmp_path: Path, monkeypatch):
    signal = tmp_path / "signal"
    signal.write_text("50Mi")
    fakes = Fakes([pod("critical", priority=2_000_000_000, uid="c")])
    monkeypatch.setattr(eviction, "read_usage", lambda instances: {})
    m = manager(fakes, signal)
    assert await m.synchronize() is None
    assert fakes.evicted == [] and m.evictions == {} and m.memory_condition().pressure


async def test_unreadable_signal_file_raises_and_keeps_the_condition(tmp_path: Path):
    signal = tmp_path / "signal"
    signal.write_text("50Mi")
    fakes = Fakes([])
    m = manager(fakes, signal)
    await m.synchronize()
    assert m.memory_condition().pressure
    signal.write_text("not a quantity")
    with pytest.raises(ValueError):
        await m.synchronize()
    assert m.memory_condition().pressure


async def test_no_thresholds_no_reading_no_pressure(tmp_path: Path):
    fakes = Fakes([pod("a")])
    m = manager(fakes, None, thresholds=[])
    assert await m.synchronize() is None
    assert fakes.host_reads == 0 and not m.memory_condition().pressure


async def test_run_survives_a_bad_round_and_stops_when_cancelled():
    import asyncio

    from vnode.provider.host import HostCommandError

    reads = []

    async def flaky():
        reads.append(1)
        if len(reads) == 1:
            raise HostCommandError("vm_stat timed out after 5s")
        if len(reads) == 2:
            raise RuntimeError("something unexpected")
        return MemorySignal(available_bytes=50 * Mi, capacity_bytes=CAPACITY, detail="")

    fakes = Fakes([])
    m = EvictionManager(thresholds=HARD, read_host=flaky, capacity=CAPACITY, pods=list, running=list, evict=fakes.evict,
                        interval=0.01, transition_seconds=5)
    task = asyncio.create_task(m.run())
    for _ in range(200):
        if len(reads) >= 3 or task.done():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)
    assert not task.done() and len(reads) >= 3
    assert m.memory_condition().pressure  # the third round read 50Mi
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task



async def test_a_bug_in_every_round_is_logged_once_and_counted(caplog):
    """A programming error repeats every round: one ERROR with its traceback, not one per
    interval forever, and each round counted in vnode_task_failures_total."""
    import asyncio
    import logging

    from vnode.event_metrics import TASK_FAILURES

    reads = []

    async def buggy():
        reads.append(1)
        return {}["available"]

    before = TASK_FAILURES.labels(task="eviction-round")._value.get()
    m = EvictionManager(thresholds=HARD, read_host=buggy, capacity=CAPACITY, pods=list, running=list, evict=Fakes([]).evict,
                        interval=0.01, transition_seconds=5)
    with caplog.at_level(logging.DEBUG, logger="vnode.pods.eviction"):
        task = asyncio.create_task(m.run())
        for _ in range(200):
            if len(reads) >= 5:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(reads) >= 5 and len(errors) == 1 and errors[0].exc_info[0] is KeyError
    assert TASK_FAILURES.labels(task="eviction-round")._value.get() - before == len(reads)

async def test_the_controllers_narrow_view():
    """active_pods: what may still run; evict: hands over to the pod's worker, once."""
    import asyncio
    from types import SimpleNamespace

    from vnode.pods.controller import PodController

    class Worker:
        def __init__(self, name, **state):
            self.pod, self.uid = pod(name), f"uid-{name}"
            self.terminal, self.failed = state.get("terminal", False), state.get("failed")
            self.deleting, self.done = asyncio.Event(), asyncio.Event()
            if state.get("deleting"):
                self.deleting.set()
            self.evicted = []

        async def evict(self, message, *, grace):
            self.evicted.append((message, grace))
            self.failed = ("Evicted", message)

    controller = PodController(SimpleNamespace(node_name="mac"))
    workers = [Worker("running"), Worker("failed", failed=("InsufficientMemory", "x")), Worker("old", terminal=True),
               Worker("deleting", deleting=True)]
    controller.workers = {w.uid: w for w in workers}
    assert [p["metadata"]["name"] for p in controller.active_pods()] == ["running"]
    assert await controller.evict("uid-running", message="low", grace=2)
    assert workers[0].evicted == [("low", 2)]
    assert not await controller.evict("uid-running", message="low", grace=2)  # already evicted
    assert not await controller.evict("uid-deleting", message="low", grace=2)
    assert not await controller.evict("uid-missing", message="low", grace=2)
    assert controller.active_pods() == []
