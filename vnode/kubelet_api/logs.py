"""/containerLogs/{namespace}/{pod}/{container} (what `kubectl logs` reaches) and /logs/.

Query parameters as the kubelet takes them: follow, previous, tailLines, limitBytes,
sinceSeconds, sinceTime, timestamps. Bad values are a 400 naming the parameter. /logs/
serves vnode's own log directory read-only, with no way out of it.
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from vnode.kubelet_api.context import context, find_pod
from vnode.provider.logs import LogOptions, parse_time, stream


def _int_param(request: web.Request, name: str, *, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name}: {raw!r} is not an integer") from None
    if value < minimum:
        raise web.HTTPBadRequest(reason=f"{name}: must be >= {minimum}")
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0", ""):
        return False
    raise web.HTTPBadRequest(reason=f"{name}: {raw!r} is not a boolean")


def options(request: web.Request) -> tuple[LogOptions, bool, bool]:
    since = None
    seconds = _int_param(request, "sinceSeconds", minimum=1)
    if seconds is not None:
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    if request.query.get("sinceTime"):
        if since is not None:
            raise web.HTTPBadRequest(reason="at most one of sinceTime or sinceSeconds may be specified")
        since = parse_time(request.query["sinceTime"])
        if since is None:
            raise web.HTTPBadRequest(reason=f"sinceTime: {request.query['sinceTime']!r} is not an RFC 3339 time")
    opts = LogOptions(
        tail_lines=_int_param(request, "tailLines", minimum=0),
        since=since,
        timestamps=_bool_param(request, "timestamps"),
        limit_bytes=_int_param(request, "limitBytes", minimum=1),
    )
    return opts, _bool_param(request, "follow"), _bool_param(request, "previous")


async def container_logs(request: web.Request) -> web.StreamResponse:
    name, container = request.match_info["pod"], request.match_info["container"]
    opts, follow, previous = options(request)
    handle = find_pod(request).container(container)
    if handle is None:
        raise web.HTTPNotFound(reason=f'container "{container}" is not in pod "{name}"')
    current = handle.instance()
    number = current if current is not None else handle.restart_count()
    if previous:
        number -= 1
        if number < 0 or not handle.log_path(number).exists():
            raise web.HTTPBadRequest(reason=f'previous terminated container "{container}" in pod "{name}" not found')
    path = handle.log_path(number)
    if not path.exists() and current is None:
        raise web.HTTPBadRequest(reason=f'container "{container}" in pod "{name}" is waiting to start: {handle.waiting_reason()}')

    def finished() -> bool:
        # Also when the client went away: a quiet log would otherwise keep an abandoned
        # follower polling until its next line.
        if request.transport is None or request.transport.is_closing():
            return True
        return previous or not handle.alive(number)

    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    try:
        async for chunk in stream(path, opts, follow=follow and not previous, finished=finished):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client stopped following (Ctrl-C on `kubectl logs -f`): not an error
    return response


async def own_logs(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    if ctx.log_dir is None:
        raise web.HTTPNotFound(reason="vnode writes no log directory (it logs to stderr)")
    root = ctx.log_dir.resolve()
    target = (root / request.match_info.get("path", "")).resolve()
    if target != root and root not in target.parents:
        raise web.HTTPNotFound(reason="no such log file")
    if target.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        return web.Response(text="".join(f'<a href="{n}">{n}</a>\n' for n in names), content_type="text/html")
    if not target.is_file():
        raise web.HTTPNotFound(reason="no such log file")
    return web.FileResponse(target)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    app.router.add_get("/logs/", own_logs)
    app.router.add_get("/logs/{path:.*}", own_logs)
