"""/metrics/resource: the kubelet's resource metrics, which metrics-server scrapes.

Exactly the series metrics-server reads (node, pod and container CPU seconds, working
set, container start time, resource_scrape_error), with millisecond timestamps as the
kubelet writes them. Values come from each server's real process tree
(provider/stats.py), read in a thread by the shared snapshot (snapshot.py), which
takes the pods from the context's narrow `running` view, never from worker internals.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnode.kubelet_api.snapshot import Snapshot, prometheus_handler, prometheus_text


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap, labels = self.snap, ["container", "pod", "namespace"]
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "[STABLE] Cumulative cpu time consumed by the container in core-seconds", labels=labels)
        mem = GaugeMetricFamily("container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", labels=labels)
        start = GaugeMetricFamily("container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", labels=labels)
        pods: dict[tuple[str, str], tuple[float, int, float]] = {}
        for c in snap.containers:
            key = [c.container, c.pod, c.namespace]
            cpu.add_metric(key, c.usage.cpu_seconds, timestamp=c.usage.timestamp)
            mem.add_metric(key, c.usage.working_set_bytes, timestamp=c.usage.timestamp)
            start.add_metric(key, c.started_at, timestamp=c.usage.timestamp)
            total_cpu, total_mem, ts = pods.get((c.namespace, c.pod), (0.0, 0, 0.0))
            pods[(c.namespace, c.pod)] = (total_cpu + c.usage.cpu_seconds, total_mem + c.usage.working_set_bytes, max(ts, c.usage.timestamp))
        yield cpu
        yield mem
        yield start
        node_cpu = CounterMetricFamily("node_cpu_usage_seconds", "[STABLE] Cumulative cpu time consumed by the node in core-seconds")
        node_cpu.add_metric([], snap.node.cpu_seconds, timestamp=snap.node.timestamp)
        node_mem = GaugeMetricFamily("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes")
        node_mem.add_metric([], snap.node.working_set_bytes, timestamp=snap.node.timestamp)
        yield node_cpu
        yield node_mem
        pod_cpu = CounterMetricFamily("pod_cpu_usage_seconds", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", labels=["pod", "namespace"])
        pod_mem = GaugeMetricFamily("pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", labels=["pod", "namespace"])
        for (namespace, pod), (total_cpu, total_mem, ts) in pods.items():
            pod_cpu.add_metric([pod, namespace], total_cpu, timestamp=ts)
            pod_mem.add_metric([pod, namespace], total_mem, timestamp=ts)
        yield pod_cpu
        yield pod_mem
        scrape = GaugeMetricFamily("resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise")
        scrape.add_metric([], 1 if snap.errors else 0)
        yield scrape


render = prometheus_text(_SnapshotCollector)
resource_metrics = prometheus_handler(render)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics/resource", resource_metrics)
