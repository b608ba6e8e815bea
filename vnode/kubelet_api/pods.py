"""/pods and /runningpods: the pods this node runs, as a PodList (with or without the
trailing slash, as the kubelet: client-go drops it). /runningpods are those with a server
running now, as the kubelet asks its runtime; not the phase last echoed by the API server's
watch, which lags vnode's own status write by a moment (a client that saw the pod Running in
the API server could ask before the echo arrived)."""

from __future__ import annotations

import json

from aiohttp import web

from vnode.kubelet_api.context import context


async def pods(request: web.Request) -> web.Response:
    ctx = context(request)
    items = [w.pod for w in list(ctx.pods.workers.values())]
    if request.path.startswith("/runningpods"):
        running = {inst.pod_uid for inst in (ctx.running() if ctx.running else [])}
        items = [p for p in items if p["metadata"]["uid"] in running]
    body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
    return web.Response(text=json.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/pods", pods)
    app.router.add_get("/pods/", pods)
    app.router.add_get("/runningpods", pods)
    app.router.add_get("/runningpods/", pods)
