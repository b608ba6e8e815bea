"""/metrics/probes: the kubelet's prober series (prober_probe_total by result,
prober_probe_duration_seconds) for every container probe on this node.

The prober records them (pods/probe_stats.py); this handler only renders the registry the
context hands it, so nothing here reaches into the pod layer.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vnode.kubelet_api.context import context


async def probe_metrics(request: web.Request) -> web.Response:
    registry = context(request).probe_metrics
    if registry is None:
        raise web.HTTPNotFound(reason="probe metrics are not enabled")
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics/probes", probe_metrics)
