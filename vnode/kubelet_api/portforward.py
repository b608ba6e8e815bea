"""/portForward/{namespace}/{pod}: `kubectl port-forward` to a pod on the Mac node.

Over SPDY (portforward.k8s.io) the client opens a pair of streams per connection, an
`error` and a `data` stream sharing `port` and `requestID` headers; each data stream is
spliced to a TCP connection to the pod IP. Only the ports vnode launched the pod's servers
on are reachable, not every containerPort the pod declares: the pod IP is the Mac's own
address, so a declared extra port would reach whatever else listens on the Mac (sshd, a
database). Every splice moves one chunk at a time and waits for the other side to take
it, so a stalled client or pod holds back its own connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from vnode.kubelet_api import rawio
from vnode.kubelet_api import websocket as ws
from vnode.kubelet_api.context import PodHandle, StreamLimits, context, find_pod
from vnode.kubelet_api.spdy import SpdySession, SpdyStream
from vnode.kubelet_api.upgrade import accept_spdy, offered_protocols, wants_spdy, wants_websocket

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
BULK_FRAME = 256 * 1024


def allowed_ports(pod: PodHandle) -> set[int]:
    """The ports vnode launched the pod's servers on: the only ones port-forward reaches."""
    return {launch.port for launch in pod.launches()}


def refusal(port: int, pod_ref: str, ports: set[int]) -> str:
    served = ", ".join(map(str, sorted(ports))) or "none yet: its server has not started"
    return (f"port {port} is not a port vnode serves for pod {pod_ref}: pods on this node share the host's network, "
            f"so port-forward reaches only the port their server was launched on ({served})")


async def _connect(host: str, port: int) -> rawio.ChunkStream:
    return await rawio.open_connection(host, port)


async def _splice(data: SpdyStream, error: SpdyStream | None, *, host: str, port: int, pod_ref: str, limits: StreamLimits) -> None:
    try:
        conn = await asyncio.wait_for(_connect(host, port), limits.connect_timeout)
    except (OSError, TimeoutError) as exc:
        why = f"timed out after {limits.connect_timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
        message = f"error forwarding port {port} to pod {pod_ref}: failed to connect to {host}:{port}: {why}"
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
    limits = context(request).streams
    pod = find_pod(request)
    launches = pod.launches()
    ports = {launch.port for launch in launches}
    hosts = {launch.port: launch.host for launch in launches}
    if wants_websocket(request):
        return await _websocket(request, ports=ports, hosts=hosts, pod_ref=pod.pod_ref, limits=limits)
    if not wants_spdy(request):
        raise web.HTTPBadRequest(reason="port-forward needs an upgrade: SPDY/3.1 or WebSocket")
    if PROTOCOL not in offered_protocols(request):
        raise web.HTTPBadRequest(reason=f"unsupported port-forward protocol; vnode speaks {PROTOCOL}")
    reader, writer, response = await accept_spdy(request, protocol=PROTOCOL)
    # Bulk data: large frames and reads cut the per-frame Python overhead (spdystream
    # accepts frames up to 16 MiB).
    session = SpdySession(reader, writer, max_send_frame=BULK_FRAME, read_size=BULK_FRAME, receive_window=16 * 1024 * 1024,
                          read_stall_timeout=limits.stall_timeout, idle_timeout=limits.idle_timeout)
    session.start()
    errors: dict[str, SpdyStream] = {}
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    def orphaned(request_id: str) -> None:
        """The kubelet's stream creation timeout: an error stream whose data stream never came."""
        stream = errors.pop(request_id, None)
        if stream is not None:
            task = asyncio.create_task(_fail(stream, f"timed out waiting for the data stream of request {request_id}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    timers: dict[str, asyncio.TimerHandle] = {}
    data_first: set[str] = set()  # request IDs whose data stream came before their error stream
    try:
        while (stream := await session.accept()) is not None:
            kind, request_id = stream.header("streamtype"), stream.header("requestid") or ""
            try:
                port = int(stream.header("port") or "")
            except ValueError:
                stream.reset()
                continue
            if kind == "error":
                if port not in ports:
                    await _fail(stream, refusal(port, pod.pod_ref, ports))
                    continue
                if request_id in data_first:  # its data stream is already being spliced
                    data_first.discard(request_id)
                    await _fail(stream, "")
                    continue
                errors[request_id] = stream
                timers[request_id] = loop.call_later(limits.creation_timeout, orphaned, request_id)
                continue
            if (timer := timers.pop(request_id, None)) is not None:
                timer.cancel()
            elif len(data_first) < 1024:
                data_first.add(request_id)
            if kind != "data" or port not in ports:
                stream.reset()
                continue
            task = asyncio.create_task(_splice(stream, errors.pop(request_id, None), host=hosts[port], port=port,
                                               pod_ref=pod.pod_ref, limits=limits))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for timer in timers.values():
            timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await session.close()
        writer.close()
    return response


async def _fail(stream: SpdyStream, message: str) -> None:
    """Say why on an error stream (if there is anything to say), then close it."""
    with contextlib.suppress(Exception):
        if message:
            await stream.write(message.encode())
        await stream.close()


async def _websocket(request: web.Request, *, ports: set[int], hosts: dict[int, str], pod_ref: str,
                     limits: StreamLimits) -> web.StreamResponse:
    try:
        wanted = ws.parse_ports(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"port: {exc}") from None
    bad = [p for p in wanted if p not in ports]
    if bad:
        raise web.HTTPBadRequest(reason=refusal(bad[0], pod_ref, ports))
    socket, protocol = await ws.accept(request, kind="portforward")
    streams = await ws.portforward_session(socket, protocol, wanted, idle_timeout=limits.idle_timeout,
                                           stall_timeout=limits.stall_timeout)

    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(_ws_connect(hosts[port], port), limits.connect_timeout)
        except TimeoutError:
            raise OSError(f"connecting to {hosts[port]}:{port} timed out after {limits.connect_timeout:g}s") from None

    try:
        await streams.run(connect)
    finally:
        with contextlib.suppress(Exception):
            await streams.close()
    return socket


async def _ws_connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST"):
        app.router.add_route(method, "/portForward/{namespace}/{pod}", portforward_handler)
        app.router.add_route(method, "/portForward/{namespace}/{pod}/{uid}", portforward_handler)
