"""/exec and /attach: `kubectl exec` and `kubectl attach` on the Mac node.

exec runs the command as vnode's user in the pod's sandbox directory with the pod's
environment (there is no container to enter), with stdin/stdout/stderr and, for `-t`, a
pty whose size follows the client's resize stream. attach streams the server's output as
it is written. Both speak SPDY/3.1 (what the API server uses towards kubelets) and the
WebSocket channel protocols (clients that reach the kubelet that way). Exec can be turned
off by configuration: then every exec is a 403 that says so.

Output is pulled, never pushed: the pty or pipe is read only when the previous chunk has
been handed to the transport (which waits for the client to read), so a client that
stops reading stops the command at its next write instead of growing the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pty
import struct
import termios
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web

from vnode.kubelet_api import websocket as ws
from vnode.kubelet_api.context import ContainerHandle, Launch, context, find_pod
from vnode.kubelet_api.spdy import SpdySession, SpdyStream
from vnode.kubelet_api.upgrade import accept_spdy, offered_protocols, wants_spdy, wants_websocket
from vnode.provider.logs import LogOptions
from vnode.provider.logs import stream as log_stream
from vnode.provider.subproc import kill

log = logging.getLogger(__name__)

SPDY_EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
READ_CHUNK = 64 * 1024  # bytes read from the pty or a pipe per write to the client


class Channels(Protocol):
    """What exec/attach need from a transport (SPDY streams or WebSocket channels)."""

    async def read_stdin(self) -> bytes: ...
    async def write_stdout(self, data: bytes) -> None: ...
    async def write_stderr(self, data: bytes) -> None: ...
    def resize_events(self) -> AsyncIterator[tuple[int, int]]: ...
    async def send_status(self, exit_code: int | None, message: str = "") -> None: ...
    async def wait_closed(self) -> None: ...  # returns when the client went away (or close())
    async def close(self) -> None: ...


class SpdyChannels:
    """Exec channels over SPDY streams identified by their `streamtype` header."""

    def __init__(self, session: SpdySession, protocol: str) -> None:
        self.session, self.protocol = session, protocol
        self.streams: dict[str, SpdyStream] = {}

    async def collect(self, wanted: set[str], *, timeout: float) -> None:
        async def gather() -> None:
            while not wanted <= set(self.streams):
                stream = await self.session.accept()
                if stream is None:
                    raise ConnectionError("the client closed the connection before opening its streams")
                self.streams[stream.header("streamtype") or ""] = stream

        await asyncio.wait_for(gather(), timeout)

    async def read_stdin(self) -> bytes:
        s = self.streams.get("stdin")
        return await s.read(65536) if s else b""

    async def write_stdout(self, data: bytes) -> None:
        if "stdout" in self.streams:
            await self.streams["stdout"].write(data)

    async def write_stderr(self, data: bytes) -> None:
        if "stderr" in self.streams:
            await self.streams["stderr"].write(data)

    async def resize_events(self) -> AsyncIterator[tuple[int, int]]:
        s = self.streams.get("resize")
        if s is None:
            return
        buffer = b""
        while True:
            chunk = await s.read(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer or buffer.strip().endswith(b"}"):
                line, _, buffer = buffer.partition(b"\n") if b"\n" in buffer else (buffer, b"", b"")
                try:
                    size = json.loads(line)
                    yield int(size["Width"]), int(size["Height"])
                except (ValueError, KeyError, TypeError):
                    continue

    async def send_status(self, exit_code: int | None, message: str = "") -> None:
        err = self.streams.get("error")
        if err is None:
            return
        if self.protocol == "v4.channel.k8s.io":
            await err.write(ws.status_json(ws.exit_status(exit_code, message)))
        elif exit_code or message:
            await err.write((message or f"command terminated with non-zero exit code: exit status {exit_code}").encode())

    async def wait_closed(self) -> None:
        await self.session.wait_closed()

    async def close(self) -> None:
        for s in self.streams.values():
            with contextlib.suppress(Exception):
                await s.close()
        await self.session.close()


async def _end(channels: Channels, request: web.Request) -> None:
    """Close the streams, then the upgraded connection (it is never reused for HTTP)."""
    with contextlib.suppress(Exception):
        await channels.close()
    if request.transport is not None:
        request.transport.close()


def _wanted(flags: ws.StreamOptions, *, attach: bool) -> set[str]:
    """The streams to expect: always error; attach has no stdin (the server's is not
    attachable) and no resize."""
    names = ("stdout", "stderr") if attach else ("stdin", "stdout", "stderr")
    wanted = {"error"} | {name for name in names if getattr(flags, name)}
    if flags.tty and not attach:
        wanted.add("resize")
    return wanted


def _target(request: web.Request) -> tuple[ContainerHandle, Launch, int]:
    """The container, how it was launched, and its running instance; 404/400 otherwise."""
    pod = find_pod(request)
    name = request.match_info["container"]
    container = pod.container(name)
    if container is None:
        raise web.HTTPNotFound(reason=f'container "{name}" is not in pod {pod.pod_ref}')
    launch, instance = container.launch(), container.instance()
    if launch is None or instance is None:
        raise web.HTTPBadRequest(reason=f'container "{name}" in pod {pod.pod_ref} is not running')
    return container, launch, instance


async def _open(request: web.Request, *, wanted: set[str]) -> tuple[Channels, web.StreamResponse]:
    """Upgrade to SPDY or WebSocket and return the exec channels the client asked for."""
    if wants_spdy(request):
        offered = offered_protocols(request)
        protocol = next((p for p in SPDY_EXEC_PROTOCOLS if p in offered), None)
        if protocol is None:
            raise web.HTTPBadRequest(reason=f"unsupported streaming protocol(s) {offered}; vnode speaks {list(SPDY_EXEC_PROTOCOLS)}")
        limits = context(request).streams
        reader, writer, response = await accept_spdy(request, protocol=protocol)
        session = SpdySession(reader, writer, idle_timeout=limits.idle_timeout)
        session.start()
        channels = SpdyChannels(session, protocol)
        try:
            await channels.collect(wanted, timeout=limits.creation_timeout)
        except (TimeoutError, ConnectionError):
            await session.close()
            writer.close()
            raise ConnectionError("streams not opened in time") from None
        return channels, response
    if wants_websocket(request):
        socket, protocol = await ws.accept(request, kind="exec")
        session = await ws.exec_session(socket, protocol, stdin="stdin" in wanted, stdout="stdout" in wanted, stderr="stderr" in wanted,
                                        idle_timeout=context(request).streams.idle_timeout)
        return session, socket
    raise web.HTTPBadRequest(reason="exec, attach and port-forward need an upgrade: SPDY/3.1 or WebSocket")


async def exec_handler(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    container, launch, _ = _target(request)
    if not ctx.exec_enabled:
        raise web.HTTPForbidden(reason="exec is disabled on this node (vnode run --no-enable-exec)")
    command = request.query.getall("command", [])
    if not command:
        raise web.HTTPBadRequest(reason="command is required")
    flags = ws.stream_flags(request.query)
    tty, want_stdin = flags.tty, flags.stdin
    wanted = _wanted(flags, attach=False)
    try:
        channels, response = await _open(request, wanted=wanted)
    except ConnectionError:
        return web.Response(status=400)
    log.info("exec in %s/%s: %s", container.pod_ref, container.name, command[0])
    try:
        code, message = await _run(command, cwd=launch.workdir, env=launch.env, channels=channels, tty=tty, stdin=want_stdin)
        await channels.send_status(code, message)
    except asyncio.CancelledError:
        # The agent is shutting down: end the session with a Status, not a reset.
        with contextlib.suppress(Exception):
            await asyncio.shield(channels.send_status(None, "vnode is shutting down; the command was stopped"))
        raise
    except Exception as exc:  # noqa: BLE001 - report it to the client as a Status
        log.warning("exec in %s failed: %s", container.pod_ref, exc)
        with contextlib.suppress(Exception):
            await channels.send_status(None, f"vnode: exec failed: {exc}")
    finally:
        await _end(channels, request)
    return response


async def _run(command: list[str], *, cwd: str, env: dict[str, str], channels: Channels, tty: bool, stdin: bool) -> tuple[int | None, str]:
    if tty:
        master, slave = pty.openpty()
        resizes = channels.resize_events()
        first = None
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            first = await asyncio.wait_for(resizes.__anext__(), 1.0)
        if first:
            _set_size(master, *first)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
        except OSError as exc:
            os.close(master)
            os.close(slave)
            return 126 if isinstance(exc, PermissionError) else 127, f"vnode: cannot run {command[0]}: {exc.strerror}"
        os.close(slave)
        os.set_blocking(master, False)

        async def pump_out() -> None:
            while (data := await _read_fd(master)):
                await channels.write_stdout(data)  # returns once the transport took it

        async def pump_in() -> None:
            while stdin and (data := await channels.read_stdin()):
                await _write_fd(master, data)

        async def follow_resize() -> None:
            async for w, h in resizes:
                _set_size(master, w, h)

        tasks = [asyncio.create_task(pump_in()), asyncio.create_task(follow_resize()), _kill_when_gone(channels, proc)]
        out = asyncio.create_task(pump_out())
        exited = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({exited, out}, return_when=asyncio.FIRST_COMPLETED)
            if out.done() and not exited.done() and out.exception() is not None:
                # The client is gone: nobody will read the pty again, so the command would
                # block on its next write for good.
                kill(proc, group=True)
            code = await _wait_or_kill(proc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(out), 2.0)
        finally:
            for t in (*tasks, out, exited):
                t.cancel()
            await asyncio.gather(*tasks, out, exited, return_exceptions=True)
            if proc.returncode is None:  # the session ended first (cancelled, or an error)
                kill(proc, group=True)
                await _reap(proc)
            os.close(master)
    else:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=cwd, env=env, start_new_session=True,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return 126 if isinstance(exc, PermissionError) else 127, f"vnode: cannot run {command[0]}: {exc.strerror}"

        async def copy(source: asyncio.StreamReader, write) -> None:
            # The pipe's reader pauses its transport past 64 KiB, and this reads again only
            # after the client side took the last chunk: a stalled client stalls the command.
            while (data := await source.read(READ_CHUNK)):
                await write(data)

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                while (data := await channels.read_stdin()):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    proc.stdin.close()

        feeder = asyncio.create_task(feed()) if stdin else None
        watcher = _kill_when_gone(channels, proc)
        try:
            await asyncio.gather(copy(proc.stdout, channels.write_stdout), copy(proc.stderr, channels.write_stderr))
            code = await _wait_or_kill(proc)
        except BaseException:  # cancelled, or the client is gone: the command would block on its pipe
            kill(proc, group=True)
            await _reap(proc)
            raise
        finally:
            for task in (feeder, watcher):
                if task is not None:
                    task.cancel()
    if code < 0:
        code = 128 - code
    return code, ""


def _kill_when_gone(channels: Channels, proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
    """Once the client is gone (disconnect, idle timeout) the command's output has nowhere
    to go: kill its process group rather than let it run, or block on its output, for good."""

    async def watch() -> None:
        await channels.wait_closed()
        if proc.returncode is None:
            log.info("exec client went away: stopping the command (process group %d)", proc.pid)
            kill(proc, group=True)

    return asyncio.create_task(watch(), name="exec-client-watch")


async def _wait_or_kill(proc: asyncio.subprocess.Process) -> int:
    """The exit code; if the session is cancelled first, the command's process group dies."""
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        kill(proc, group=True)
        await _reap(proc)
        raise


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait (briefly) for a killed command, so no zombie or transport outlives the session."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(proc.wait()), 2.0)


async def _read_fd(fd: int) -> bytes:
    """The next chunk from a non-blocking fd, waiting until it is readable; b"" at its end
    (EIO: a pty whose other side closed)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:
            await _ready(loop.add_reader, loop.remove_reader, fd)
        except OSError:
            return b""


async def _write_fd(fd: int, data: bytes) -> None:
    """Write all of data to a non-blocking fd, waiting while it is full (no thread)."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _ready(loop.add_writer, loop.remove_writer, fd)


async def _ready(add, remove, fd: int) -> None:
    waiter = asyncio.get_running_loop().create_future()
    add(fd, lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        remove(fd)


def _set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def attach_handler(request: web.Request) -> web.StreamResponse:
    """Stream the running server's output from now on (its stdin is not attachable)."""
    container, _, instance = _target(request)
    try:
        channels, response = await _open(request, wanted=_wanted(ws.stream_flags(request.query), attach=True))
    except ConnectionError:
        return web.Response(status=400)
    path = container.log_path(instance)
    try:
        # Only what is written from now on, as attaching to a process's output does.
        opts = LogOptions(tail_lines=0)
        async for line in log_stream(path, opts, follow=True, finished=lambda: not container.alive(instance)):
            await channels.write_stdout(line)
        await channels.send_status(0)
    except Exception as exc:  # noqa: BLE001 - the client went away, most likely
        log.debug("attach to %s ended: %s", container.pod_ref, exc)
    finally:
        await _end(channels, request)
    return response


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST"):
        app.router.add_route(method, "/exec/{namespace}/{pod}/{container}", exec_handler)
        app.router.add_route(method, "/exec/{namespace}/{pod}/{uid}/{container}", exec_handler)
        app.router.add_route(method, "/attach/{namespace}/{pod}/{container}", attach_handler)
        app.router.add_route(method, "/attach/{namespace}/{pod}/{uid}/{container}", attach_handler)

