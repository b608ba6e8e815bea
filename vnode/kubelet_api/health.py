"""/healthz, /healthz/ping, /healthz/syncloop and /configz."""

from __future__ import annotations

import json

from aiohttp import web


from vnode.kubelet_api.context import context as _ctx


async def healthz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    problems = ctx.ready() if ctx.ready else []
    if problems:
        return web.Response(status=500, text="[-]syncloop failed: " + "; ".join(problems) + "\nhealthz check failed\n")
    return web.Response(text="ok")


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# The pods this node must run come from the watch: failing longer than this, the node no
# longer follows its pods (deletions, new pods), which is what the kubelet's syncloop check
# reports, so a supervisor (launchd's KeepAlive probe, a monitoring check) can act.
SYNCLOOP_WATCH_FAILING_SECONDS = 60.0


async def syncloop(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    if not ctx.pods.synced.is_set():
        return web.Response(status=500, text="[-]syncloop failed: pods not listed yet\n")
    failing = ctx.pods.watch_failing_for()
    if failing > SYNCLOOP_WATCH_FAILING_SECONDS:
        return web.Response(status=500, text=f"[-]syncloop failed: the pod watch has been failing for {failing:.0f}s "
                                             f"(more than {SYNCLOOP_WATCH_FAILING_SECONDS:.0f}s)\n")
    return web.Response(text="ok")


async def configz(request: web.Request) -> web.Response:
    body = {"kubeletconfig": {"kind": "KubeletConfiguration", "apiVersion": "kubelet.config.k8s.io/v1beta1", **_ctx(request).config}}
    return web.Response(text=json.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/ping", ping)
    app.router.add_get("/healthz/syncloop", syncloop)
    app.router.add_get("/configz", configz)
