"""/metrics: Prometheus text of the agent's own state (vnode/metrics.py).

The kubelet's other metric paths have a module each: /metrics/resource
(resource_metrics.py), /metrics/cadvisor, /metrics/probes and /stats/summary.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vnode.kubelet_api.context import context


async def agent_metrics(request: web.Request) -> web.Response:
    registry = context(request).metrics
    if registry is None:
        raise web.HTTPNotFound(reason="metrics are not enabled")
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", agent_metrics)
