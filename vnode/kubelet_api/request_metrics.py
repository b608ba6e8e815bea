"""How long kubelet API requests take: vnode_kubelet_api_request_duration_seconds{path, method,
code}. `path` is the route family (/pods, /exec, /metrics/resource, ...; else "other"), never
the raw path, which names namespaces and pods: a series per pod would grow without bound.
Streams (exec, attach, port-forward, logs -f) are timed until they end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from vnode.event_metrics import KUBELET_API_SECONDS

FAMILIES = frozenset({
    "/pods", "/runningpods", "/healthz", "/configz", "/spec", "/logs", "/containerLogs", "/exec", "/attach",
    "/portForward", "/run", "/stats", "/stats/summary", "/metrics", "/metrics/resource", "/metrics/probes",
    "/metrics/cadvisor",
})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NO_ANSWER = "0"  # the code of a request whose client went away before it was answered


def path_family(path: str) -> str:
    """The route family of a request path: its first two segments if they name one
    (/metrics/resource), else its first (/exec), else "other"."""
    parts = path.strip("/").split("/")
    for family in ("/" + "/".join(parts[:2]), "/" + parts[0]):
        if family in FAMILIES:
            return family
    return "other"


@web.middleware
async def timing(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Outermost middleware, so refused (401/403) and failed requests are timed too."""
    started = time.monotonic()
    code: str | None = NO_ANSWER
    try:
        response = await handler(request)
        code = str(response.status)
        return response
    except web.HTTPException as exc:
        code = str(exc.status)
        raise
    except asyncio.CancelledError:
        code = None  # the server is shutting down: not a request outcome
        raise
    finally:
        if code is not None:
            method = request.method if request.method in METHODS else "other"
            KUBELET_API_SECONDS.labels(path=path_family(request.path), method=method, code=code).observe(time.monotonic() - started)
