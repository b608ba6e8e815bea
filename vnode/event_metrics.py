"""Metrics of events (model bytes received, downloads finished, kubelet API requests), counted
where they happen; numbers an owner keeps anyway are read at scrape time by vnode.metrics.
Module-level, as prometheus-client's own are, so no layer needs an object handed down; it imports
nothing of vnode (no import cycles). vnode.metrics.registry() registers them (never globally).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MODEL_DOWNLOADED_BYTES = Counter(
    "vnode_model_downloaded_bytes", "Bytes of model files received from the network (a resumed download counts only the rest)",
    registry=None,
)
MODEL_DOWNLOAD_SECONDS = Histogram(
    "vnode_model_download_duration_seconds", "How long model downloads took, by result (success, failure)",
    ["result"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400), registry=None,
)
KUBELET_API_SECONDS = Histogram(
    "vnode_kubelet_api_request_duration_seconds",
    "Kubelet API request latency by route family, method and status code (streams: until they end)",
    ["path", "method", "code"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=None,
)

TASK_FAILURES = Counter(
    "vnode_task_failures",
    "Inner tasks and loop rounds of the agent that failed by an exception (a bug: KeyError, TypeError, ...) "
    "or that ended when they should have run on, by task kind (vnode.tasks)",
    ["task"], registry=None,
)

EVENTS_DROPPED = Counter(
    "vnode_events_dropped",
    "Events not recorded because the buffer in front of a slow or absent API server was full (the oldest go first)",
    registry=None,
)

ALL = (EVENTS_DROPPED, MODEL_DOWNLOADED_BYTES, MODEL_DOWNLOAD_SECONDS, KUBELET_API_SECONDS, TASK_FAILURES)
