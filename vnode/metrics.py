"""Prometheus metrics on the agent's own state, read at scrape time (served on /metrics).

A collector asks the owners (model store, pod controller, memory budget, prober stats, eviction
manager) for their numbers instead of every code path updating gauges: one source of truth.
Events no owner keeps (bytes received, downloads, API requests) are in event_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnode import event_metrics
from vnode.node.certs import ServingState
from vnode.pods.admission import MemoryBudget
from vnode.pods.controller import PodController
from vnode.pods.probe_stats import ProbeStats
from vnode.provider.models import ModelStore


Evictions = Callable[[], Mapping[str, int]]  # eviction signal -> pods evicted for it since the start


class AgentCollector(Collector):
    def __init__(self, *, models: ModelStore, pods: PodController, serving: ServingState | None = None,
                 budget: MemoryBudget | None = None, probes: ProbeStats | None = None,
                 evictions: Evictions | None = None) -> None:
        self._models, self._pods, self._serving = models, pods, serving
        self._budget, self._probes, self._evictions = budget, probes, evictions

    def collect(self) -> Iterator[Metric]:
        done = GaugeMetricFamily("vnode_model_download_bytes", "Bytes of a model download received so far", labels=["model"])
        total = GaugeMetricFamily("vnode_model_download_size_bytes", "Size of a model being downloaded (0 if unknown)", labels=["model"])
        for key, (got, size) in self._models.progress().items():
            done.add_metric([key], got)
            total.add_metric([key], size)
        yield done
        yield total
        if self._models.stored_bytes is not None:
            yield GaugeMetricFamily("vnode_model_store_bytes", "Disk space the model store takes (models and partial downloads)",
                                    value=self._models.stored_bytes)
        restarts = GaugeMetricFamily("vnode_container_restarts", "Restart count of each container on this node",
                                     labels=["namespace", "pod", "container"])
        workers = GaugeMetricFamily("vnode_pod_workers", "Pods this node is running or stopping")
        workers.add_metric([], len(self._pods.workers))
        for worker in list(self._pods.workers.values()):
            meta = worker.pod["metadata"]
            for name, view in worker.views.items():
                restarts.add_metric([meta["namespace"], meta["name"], name], view.restart_count)
        yield workers
        yield restarts
        phases = GaugeMetricFamily("vnode_pods", "Pods on this node by the phase vnode reports", labels=["phase"])
        for phase, count in self._pods.phase_counts().items():
            phases.add_metric([phase], count)
        yield phases
        if self._budget is not None:
            used = self._budget.used
            yield GaugeMetricFamily("vnode_memory_budget_bytes", "Memory the node offers to pods (allocatable)", value=self._budget.total)
            yield GaugeMetricFamily("vnode_memory_budget_used_bytes", "Memory held by admitted containers' estimates", value=used)
            yield GaugeMetricFamily("vnode_memory_budget_free_bytes", "Memory budget not held by any container",
                                    value=max(self._budget.total - used, 0))
        if self._probes is not None:
            probes = CounterMetricFamily("vnode_probe_results", "Probe attempts on this node since the agent started, by type and result",
                                         labels=["probe_type", "result"])
            for (probe_type, result), count in sorted(self._probes.totals().items()):
                probes.add_metric([probe_type, result], count)
            yield probes
        if self._evictions is not None:
            evicted = CounterMetricFamily("vnode_evictions", "Pods this node evicted, by the eviction signal that made it",
                                          labels=["signal"])
            for signal, count in sorted(self._evictions().items()):
                evicted.add_metric([signal], count)
            yield evicted
        if self._serving is not None and self._serving.not_after is not None:
            expiry = GaugeMetricFamily("vnode_serving_certificate_expiry_timestamp_seconds",
                                       "When the kubelet API's serving certificate expires (Unix time)")
            expiry.add_metric([], self._serving.not_after.timestamp())
            yield expiry


def registry(*, models: ModelStore, pods: PodController, serving: ServingState | None = None,
             budget: MemoryBudget | None = None, probes: ProbeStats | None = None,
             evictions: Evictions | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(AgentCollector(models=models, pods=pods, serving=serving, budget=budget, probes=probes, evictions=evictions))
    for metric in event_metrics.ALL:
        reg.register(metric)
    return reg


def probe_registry(probes: ProbeStats) -> CollectorRegistry:
    """The registry /metrics/probes serves: the kubelet's prober series, nothing else."""
    reg = CollectorRegistry()
    reg.register(probes)
    return reg
