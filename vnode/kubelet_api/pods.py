"""/pods and /runningpods: the pods this node runs, as a PodList (with or without the
trailing slash, as the kubelet: client-go drops it)."""

from __future__ import annotations

import json

from aiohttp import web

from vnode.kubelet_api.context import context


async def pods(request: web.Request) -> web.Response:
    ctx = context(request)
    items = [w.pod for w in list(ctx.pods.workers.values())]
    if request.path.startswith("/runningpods"):
        items = [p for p in items if (p.get("status") or {}).get("phase") == "Running"]
    body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
    return web.Response(text=json.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/pods", pods)
    app.router.add_get("/pods/", pods)
    app.router.add_get("/runningpods", pods)
    app.router.add_get("/runningpods/", pods)
