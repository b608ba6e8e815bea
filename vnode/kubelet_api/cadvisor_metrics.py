"""/metrics/cadvisor: the container_* series that dashboards and kube-prometheus-stack's
rules read from every kubelet, with cadvisor's labels (cpu="total" on the CPU counter; a
non-empty image, which the rules select on) and millisecond timestamps. One series set
per running container from the shared snapshot; cadvisor's pod and root cgroup series
have no counterpart here and are not invented.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnode.kubelet_api.snapshot import ContainerSample, Snapshot, prometheus_handler, prometheus_text

LABELS = ["container", "id", "image", "name", "namespace", "pod"]


def labels(c: ContainerSample) -> list[str]:
    """cadvisor's labels in LABELS order: `id` stands where the cgroup path would, `name` is
    the container ID without its scheme (as cadvisor names a containerd container)."""
    inst = c.inst
    return [inst.container, f"/vnode/pod{inst.pod_uid}/{inst.container}/{inst.instance}", inst.image,
            inst.container_id.removeprefix("vnode://"), inst.namespace, inst.pod_name]


class _CadvisorCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "Cumulative CPU time of the container, in seconds",
                                  labels=["container", "cpu", *LABELS[1:]])
        wss = GaugeMetricFamily("container_memory_working_set_bytes", "Working set of the container, in bytes", labels=LABELS)
        rss = GaugeMetricFamily("container_memory_rss", "Resident set size of the container, in bytes", labels=LABELS)
        start = GaugeMetricFamily("container_start_time_seconds", "Start time of the container, in seconds since the epoch",
                                  labels=LABELS)
        seen = GaugeMetricFamily("container_last_seen", "When the container was last seen, in seconds since the epoch",
                                 labels=LABELS)
        for c in self.snap.containers:
            values, ts = labels(c), c.usage.timestamp
            cpu.add_metric([values[0], "total", *values[1:]], c.usage.cpu_seconds, timestamp=ts)
            wss.add_metric(values, c.usage.working_set_bytes, timestamp=ts)
            rss.add_metric(values, c.usage.rss_bytes, timestamp=ts)
            start.add_metric(values, c.started_at)
            seen.add_metric(values, int(ts), timestamp=ts)
        yield cpu
        yield wss
        yield rss
        yield start
        yield seen
        error = GaugeMetricFamily("container_scrape_error",
                                  "1 if there was an error while getting container metrics, 0 otherwise")
        error.add_metric([], 1 if self.snap.errors else 0)
        yield error


render = prometheus_text(_CadvisorCollector)
cadvisor_metrics = prometheus_handler(render)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics/cadvisor", cadvisor_metrics)
