"""What the prober saw: each probe attempt's result and duration, per container. The prober
records; /metrics/probes renders the kubelet's prober series and /metrics the node totals.
A pod's series go at the first scrape after its worker is gone, as the kubelet drops them
with the pod's probe workers. Nothing here probes, and nothing here knows workers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

SUCCESSFUL, FAILED, UNKNOWN = "successful", "failed", "unknown"  # the kubelet's result label values
# The kubelet's histogram has the client library's default buckets; so does this one.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass
class _Timing:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # per bucket, last = above 10 s
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(frozen=True)
class _Container:
    pod_uid: str
    namespace: str
    pod: str
    container: str


class ProbeStats:
    """Probe outcomes of the node's containers: a prometheus collector of the kubelet's
    `prober_probe_total` and `prober_probe_duration_seconds`, and node-wide totals.

    `live` returns the UIDs of the pods that still have a worker; series of any other pod
    are dropped at the next collect or recorder().
    """

    def __init__(self, *, live: Callable[[], Collection[str]] | None = None) -> None:
        self._live = live
        self._results: dict[tuple[_Container, str, str], int] = {}  # (container, probe type, result) -> count
        self._timings: dict[tuple[_Container, str], _Timing] = {}
        self._totals: dict[tuple[str, str], int] = {}  # (probe type, result) -> count, never dropped

    def recorder(self, pod: dict, container: str) -> ProbeRecorder:
        """What one container's prober records into (the pod's identity bound once). Also
        forgets gone pods, so nothing grows where nobody scrapes /metrics/probes."""
        self._drop_gone()
        meta = pod["metadata"]
        return ProbeRecorder(self, _Container(meta["uid"], meta["namespace"], meta["name"], container))

    def record(self, target: _Container, probe_type: str, result: str, seconds: float) -> None:
        key = (target, probe_type, result)
        self._results[key] = self._results.get(key, 0) + 1
        self._totals[(probe_type, result)] = self._totals.get((probe_type, result), 0) + 1
        # As the kubelet: failed attempts are not timed (a timeout would only measure timeoutSeconds).
        if result != FAILED:
            self._timings.setdefault((target, probe_type), _Timing()).observe(seconds)

    def totals(self) -> dict[tuple[str, str], int]:
        """(probe type, result) -> attempts on this node since the agent started."""
        return dict(self._totals)

    def collect(self) -> Iterator[Metric]:
        self._drop_gone()
        results = CounterMetricFamily(
            "prober_probe", "Probe attempts of each container, by probe type (Startup, Readiness, Liveness) and result.",
            labels=["probe_type", "result", "container", "pod", "namespace", "pod_uid"],
        )
        for (c, probe_type, result), count in sorted(self._results.items(), key=_order):
            results.add_metric([probe_type, result, c.container, c.pod, c.namespace, c.pod_uid], count)
        yield results
        # No pod_uid label on the kubelet's histogram: two pods of one name (a replaced
        # StatefulSet pod still terminating) share a series there, and so here.
        merged: dict[tuple[str, str, str, str], _Timing] = {}
        for (c, probe_type), timing in self._timings.items():
            into = merged.setdefault((probe_type, c.container, c.pod, c.namespace), _Timing())
            into.counts = [a + b for a, b in zip(into.counts, timing.counts)]
            into.total += timing.total
        durations = HistogramMetricFamily(
            "prober_probe_duration_seconds", "Duration in seconds of a probe attempt that did not fail.",
            labels=["probe_type", "container", "pod", "namespace"],
        )
        for labels, timing in sorted(merged.items()):
            running, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), timing.counts):
                running += count
                buckets.append((floatToGoString(bound), running))
            durations.add_metric(list(labels), buckets, timing.total)
        yield durations

    def _drop_gone(self) -> None:
        if self._live is None:
            return
        live = set(self._live())
        self._results = {k: v for k, v in self._results.items() if k[0].pod_uid in live}
        self._timings = {k: v for k, v in self._timings.items() if k[0].pod_uid in live}


@dataclass(frozen=True)
class ProbeRecorder:
    """One container's handle on ProbeStats, given to its ContainerProber."""

    stats: ProbeStats
    target: _Container

    def record(self, probe_type: str, result: str, seconds: float) -> None:
        self.stats.record(self.target, probe_type, result, seconds)


def _order(item: tuple[tuple[_Container, str, str], int]) -> tuple[str, ...]:
    (c, probe_type, result), _ = item
    return (c.namespace, c.pod, c.pod_uid, c.container, probe_type, result)
