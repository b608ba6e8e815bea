"""/portForward/{namespace}/{pod}: `kubectl port-forward` to a pod on the Mac node.

Over SPDY (portforward.k8s.io) the client opens a pair of streams per connection, an
`error` and a `data` stream sharing `port` and `requestID` headers; each data stream is
spliced to a TCP connection to the pod IP. Only ports the pod's containers declare (or
serve on) are reachable: the pod IP is the Mac's own address, so forwarding any port
would reach any service on the Mac.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from vnode.kubelet_api import rawio
from vnode.kubelet_api import websocket as ws
from vnode.kubelet_api.context import context
from vnode.kubelet_api.spdy import SpdySession, SpdyStream
from vnode.kubelet_api.upgrade import accept_spdy, offered_protocols, wants_spdy, wants_websocket

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
BULK_FRAME = 256 * 1024


def allowed_ports(worker) -> set[int]:
    ports: set[int] = set()
    for container in (worker.pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            ports.add(int(p["containerPort"]))
    for runner in worker.runners.values():
        if runner.launch is not None:
            ports.add(runner.launch.port)
    return ports


async def _splice(data: SpdyStream, error: SpdyStream | None, *, host: str, port: int, pod_ref: str) -> None:
    try:
        conn = await asyncio.wait_for(rawio.open_connection(host, port), 10)
    except (OSError, TimeoutError) as exc:
        message = f"error forwarding port {port} to pod {pod_ref}: failed to connect to {host}:{port}: {exc}"
        if error is not None:
            with contextlib.suppress(Exception):
                await error.write(message.encode())
                await error.close()
        data.reset()
        return

    async def up() -> None:
        try:
            while (chunk := await data.read(BULK_FRAME)):
                conn.write(chunk)
                await conn.drain()
        finally:
            with contextlib.suppress(Exception):
                conn.write_eof()

    async def down() -> None:
        while (chunk := await conn.reader.read(BULK_FRAME)):
            await data.write(chunk)
        with contextlib.suppress(Exception):
            await data.close()

    try:
        await asyncio.gather(up(), down())
    except Exception as exc:  # noqa: BLE001 - one connection's trouble is not the session's
        log.debug("port-forward connection to %s:%d ended: %s", host, port, exc)
    finally:
        conn.close()
        if error is not None:
            with contextlib.suppress(Exception):
                await error.close()


async def portforward_handler(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    ns, name = request.match_info["namespace"], request.match_info["pod"]
    worker = ctx.find_pod(ns, name)
    if worker is None:
        raise web.HTTPNotFound(reason=f'pod "{name}" in namespace "{ns}" is not on node {ctx.node_name}')
    ports = allowed_ports(worker)
    host = str(worker.ctx.pod_ip)
    if wants_websocket(request):
        return await _websocket(request, ports=ports, host=host, pod_ref=worker.ref)
    if not wants_spdy(request):
        raise web.HTTPBadRequest(reason="port-forward needs an upgrade: SPDY/3.1 or WebSocket")
    if PROTOCOL not in offered_protocols(request):
        raise web.HTTPBadRequest(reason=f"unsupported port-forward protocol; vnode speaks {PROTOCOL}")
    reader, writer, response = await accept_spdy(request, protocol=PROTOCOL)
    # Bulk data: large frames and reads cut the per-frame Python overhead (spdystream
    # accepts frames up to 16 MiB).
    session = SpdySession(reader, writer, max_send_frame=BULK_FRAME, read_size=BULK_FRAME, receive_window=16 * 1024 * 1024)
    session.start()
    errors: dict[str, SpdyStream] = {}
    tasks: set[asyncio.Task] = set()
    try:
        while (stream := await session.accept()) is not None:
            kind, request_id = stream.header("streamtype"), stream.header("requestid") or ""
            try:
                port = int(stream.header("port") or "")
            except ValueError:
                stream.reset()
                continue
            if kind == "error":
                errors[request_id] = stream
                if port not in ports:
                    await stream.write(f"port {port} is not a port of pod {worker.ref} (declared: {sorted(ports)})".encode())
                    await stream.close()
                continue
            if kind != "data" or port not in ports:
                stream.reset()
                continue
            task = asyncio.create_task(_splice(stream, errors.pop(request_id, None), host=host, port=port, pod_ref=worker.ref))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await session.close()
        writer.close()
    return response


async def _websocket(request: web.Request, *, ports: set[int], host: str, pod_ref: str) -> web.StreamResponse:
    try:
        wanted = ws.parse_ports(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"port: {exc}") from None
    bad = [p for p in wanted if p not in ports]
    if not wanted or bad:
        raise web.HTTPBadRequest(reason=f"ports {bad or '(none)'} are not ports of pod {pod_ref} (declared: {sorted(ports)})")
    socket, protocol = await ws.accept(request, kind="portforward")
    streams = await ws.portforward_session(socket, protocol, wanted)
    try:
        await streams.run(lambda port: asyncio.open_connection(host, port))
    finally:
        with contextlib.suppress(Exception):
            await streams.close()
    return socket


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST"):
        app.router.add_route(method, "/portForward/{namespace}/{pod}", portforward_handler)
        app.router.add_route(method, "/portForward/{namespace}/{pod}/{uid}", portforward_handler)
