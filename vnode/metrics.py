"""Prometheus metrics on the agent's own state, read at scrape time.

A collector asks the owners (model store, pod controller) for their current numbers
instead of every code path updating gauges, so there is one source of truth. The kubelet
API serves this registry on /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

from vnode.node.certs import ServingState
from vnode.pods.controller import PodController
from vnode.provider.models import ModelStore


class AgentCollector(Collector):
    def __init__(self, *, models: ModelStore, pods: PodController, serving: ServingState | None = None) -> None:
        self._models, self._pods, self._serving = models, pods, serving

    def collect(self) -> Iterator[GaugeMetricFamily]:
        done = GaugeMetricFamily("vnode_model_download_bytes", "Bytes of a model download received so far", labels=["model"])
        total = GaugeMetricFamily("vnode_model_download_size_bytes", "Size of a model being downloaded (0 if unknown)", labels=["model"])
        for key, (got, size) in self._models.progress().items():
            done.add_metric([key], got)
            total.add_metric([key], size)
        yield done
        yield total
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
        if self._serving is not None and self._serving.not_after is not None:
            expiry = GaugeMetricFamily("vnode_serving_certificate_expiry_timestamp_seconds",
                                       "When the kubelet API's serving certificate expires (Unix time)")
            expiry.add_metric([], self._serving.not_after.timestamp())
            yield expiry


def registry(*, models: ModelStore, pods: PodController, serving: ServingState | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(AgentCollector(models=models, pods=pods, serving=serving))
    return reg
