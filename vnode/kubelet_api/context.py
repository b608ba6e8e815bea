"""What the kubelet API may see of the agent: read-only views, no pod writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from vnode.pods.controller import PodController
from vnode.provider.supervisor import Supervisor


@dataclass
class ApiContext:
    node_name: str
    pods: PodController
    supervisor: Supervisor
    log_dir: Path | None  # vnode's own log directory, served read-only on /logs/
    config: dict[str, Any] = field(default_factory=dict)  # what /configz shows
    ready: Any = None  # callable -> list of problems (empty when healthy)
    metrics: Any = None  # prometheus CollectorRegistry served on /metrics
    probe_metrics: Any = None  # prometheus CollectorRegistry served on /metrics/probes (the prober's stats)
    exec_enabled: bool = True
    running: Any = None  # callable -> list[Instance]: the container instances running now
    state_dir: Path | None = None  # the agent's state dir: the node filesystem of /stats/summary
    store_usage: Any = None  # blocking callable -> diskusage.DirUsage of the model store (imageFs)

    def find_pod(self, namespace: str, name: str):
        for worker in list(self.pods.workers.values()):
            meta = worker.pod["metadata"]
            if meta["namespace"] == namespace and meta["name"] == name:
                return worker
        return None


CTX_KEY = web.AppKey("ctx", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CTX_KEY]
