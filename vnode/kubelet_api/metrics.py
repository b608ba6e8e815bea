"""/metrics: Prometheus text of the agent's own state (downloads, restarts, workers).

/metrics/resource and /stats/summary (what metrics-server and `kubectl top` read) will
share this module's route family.
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
