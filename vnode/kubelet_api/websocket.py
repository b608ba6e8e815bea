"""Kubernetes' WebSocket channel protocols (exec/attach and port-forward), server side.

Clients that speak WebSocket to the API server (the Python client, browsers) are passed
through to the kubelet, so the node must speak `*.channel.k8s.io` itself. This module is the
codec plus sessions that leave the process and socket plumbing to read and write bytes.

The channel protocols have no flow control of their own, so one reader task serves every
channel of a socket: each channel buffers up to STDIN_BUFFER, and only a channel that is
full makes the reader wait (TCP then holds the client back). For port-forward such a wait
is bounded: a port whose pod side takes nothing for `stall_timeout` is ended with an error
so the other ports go on. Writes wait for the transport (aiohttp drains past 64 KiB).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from vnode.kubelet_api.idle import IdleTimer

log = logging.getLogger(__name__)

Kind = Literal["exec", "portforward"]
Message = bytes | bytearray | memoryview | str

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_CHANNEL = 255  # v5 only: payload is the one channel the client half-closes
EXEC_CHANNELS = frozenset({STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_CHANNEL})

MAX_MESSAGE_SIZE = 1 << 20  # largest message decode() accepts
WIRE_LIMIT = 2 * MAX_MESSAGE_SIZE  # aiohttp drops bigger frames before buffering them
OUT_CHUNK = 256 * 1024  # payload bytes per outgoing message
STDIN_BUFFER = 4 << 20  # bytes buffered per readable channel before the reader waits
MAX_PORTS = 32  # keeps every port-forward channel a single ASCII char in base64 mode
_BASE64_MAX_CHANNEL = 127 - ord("0")


class ChannelError(ValueError):
    """A message that breaks the channel protocol.

    `close_code` is None when the message can be skipped (as Kubernetes does with
    unknown channels and bad base64), else the WebSocket close code to end with.
    """

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


# --- protocols ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolSpec:
    name: str  # "" = the client sent no Sec-WebSocket-Protocol (Kubernetes treats it as v1)
    version: int
    base64: bool

    @property
    def json_status(self) -> bool:
        """v4+ put a metav1.Status JSON on the error channel; older ones plain text."""
        return self.version >= 4

    @property
    def close_signal(self) -> bool:
        return self.version >= 5


# Preference order: newest version first, binary before base64 within a version. The kubelet's
# own WebSocket handler lists only v4, v4.base64, channel, base64.channel and "" (v5 reaches it
# once the API server stops translating); v2/v3 are SPDY names, taken here with v1 semantics.
EXEC_PROTOCOLS: tuple[ProtocolSpec, ...] = (
    ProtocolSpec("v5.channel.k8s.io", 5, False),
    ProtocolSpec("v4.channel.k8s.io", 4, False),
    ProtocolSpec("v4.base64.channel.k8s.io", 4, True),
    ProtocolSpec("v3.channel.k8s.io", 3, False),
    ProtocolSpec("v2.channel.k8s.io", 2, False),
    ProtocolSpec("channel.k8s.io", 1, False),
    ProtocolSpec("base64.channel.k8s.io", 1, True),
    ProtocolSpec("", 1, False),
)
# What the kubelet's port-forward WebSocket handler accepts ("portforward.k8s.io" is SPDY only).
PORTFORWARD_PROTOCOLS: tuple[ProtocolSpec, ...] = (
    ProtocolSpec("v4.channel.k8s.io", 4, False),
    ProtocolSpec("v4.base64.channel.k8s.io", 4, True),
    ProtocolSpec("", 4, False),  # the version means nothing for port-forward
)


def _table(kind: Kind) -> tuple[ProtocolSpec, ...]:
    if kind == "exec":
        return EXEC_PROTOCOLS
    if kind == "portforward":
        return PORTFORWARD_PROTOCOLS
    raise ValueError(f"unknown stream kind {kind!r}")


def offered_protocols(headers: Mapping[str, str]) -> list[str]:
    """The subprotocols a request offers, from every Sec-WebSocket-Protocol header."""
    values = _query_values(headers, "Sec-WebSocket-Protocol")
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def choose_protocol(offered: Sequence[str], *, kind: Kind) -> str | None:
    """The subprotocol to answer with: "" when none was offered, None when none fits."""
    names = {p.strip() for item in offered for p in item.split(",")} - {""}
    table = _table(kind)
    if not names:
        return ""
    return next((spec.name for spec in table if spec.name in names), None)


def protocol_spec(protocol: str, *, kind: Kind) -> ProtocolSpec:
    for spec in _table(kind):
        if spec.name == protocol:
            return spec
    raise ValueError(f"{protocol!r} is not a {kind} WebSocket protocol")


# --- codec -------------------------------------------------------------------------------


def encode(channel: int, data: bytes, *, base64: bool) -> bytes | str:
    """One message: the channel byte (or digit char in base64 mode) and the payload."""
    if not 0 <= channel <= 255:
        raise ChannelError(f"channel {channel} does not fit in a byte")
    if not base64:
        return bytes((channel,)) + bytes(data)
    if channel > _BASE64_MAX_CHANNEL:
        raise ChannelError(f"channel {channel} has no base64 channel character")
    return chr(ord("0") + channel) + binascii.b2a_base64(bytes(data), newline=False).decode("ascii")


def _message_bytes(message: object) -> bytes:
    if isinstance(message, str):
        if len(message) > MAX_MESSAGE_SIZE:
            raise _too_big(len(message))
        try:
            message = message.encode("utf-8")
        except UnicodeEncodeError:
            raise ChannelError("text message is not valid UTF-8") from None
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ChannelError(f"unsupported message type {type(message).__name__}")
    raw = bytes(message)
    if len(raw) > MAX_MESSAGE_SIZE:
        raise _too_big(len(raw))
    return raw


def _too_big(size: int) -> ChannelError:
    return ChannelError(f"message of {size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit", close_code=WSCloseCode.MESSAGE_TOO_BIG)


def _b64decode(data: bytes) -> bytes:
    try:  # Go's StdEncoding: padding required, CR and LF ignored
        return binascii.a2b_base64(data.replace(b"\r", b"").replace(b"\n", b""), strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ChannelError(f"bad base64 payload: {exc}") from None


def _check_close(payload: bytes, channels: Collection[int]) -> None:
    if len(payload) != 1:
        raise ChannelError(f"close signal needs one channel byte, got {len(payload)}", close_code=WSCloseCode.PROTOCOL_ERROR)
    if payload[0] == CLOSE_CHANNEL or payload[0] not in channels:
        raise ChannelError(f"close signal for unknown channel {payload[0]}", close_code=WSCloseCode.PROTOCOL_ERROR)


def decode(message: Message, *, base64: bool, channels: Collection[int] = EXEC_CHANNELS) -> tuple[int, bytes]:
    """(channel, payload) of one message; ChannelError for anything malformed.

    `channels` are the valid channel numbers; include CLOSE_CHANNEL only for v5.
    """
    raw = _message_bytes(message)
    if not raw:
        raise ChannelError("empty message")
    channel, payload = (raw[0] - ord("0"), _b64decode(raw[1:])) if base64 else (raw[0], raw[1:])
    if channel not in channels:
        raise ChannelError(f"unknown channel {channel}")
    if channel == CLOSE_CHANNEL:  # unreachable in base64 mode: '0'+255 is no byte
        _check_close(payload, channels)
    return channel, payload


# --- exit status on the error channel ----------------------------------------------------


def command_exit_message(command: Sequence[str], exit_code: int) -> str:
    """The CRI runtimes' wording for a non-zero exit (Go's %v of the argv)."""
    return f"error executing command [{' '.join(command)}], exit code {exit_code}"


def _normalize_exit_code(exit_code: int) -> int:
    code = 128 - exit_code if exit_code < 0 else exit_code  # Python's -SIG -> shell's 128+SIG
    if not 0 <= code <= 255:
        raise ValueError(f"exit code {exit_code} is outside 0-255 (clients parse a uint8)")
    return code


def exit_status(exit_code: int | None, message: str = "") -> dict[str, Any]:
    """The metav1.Status the kubelet writes for an exec/attach that ended.

    0 -> Success; N -> Failure/NonZeroExitCode with an ExitCode cause (what client-go and
    the Python client read the code from); None -> Failure/InternalError with `message`.
    """
    if exit_code is None:
        detail = message or "unknown error"
        return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {detail}",
                "reason": "InternalError", "details": {"causes": [{"message": detail}]}, "code": 500}
    code = _normalize_exit_code(exit_code)
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {message or f'exit code {code}'}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def status_json(status: Mapping[str, Any]) -> bytes:
    """Byte-for-byte what Go's json.Marshal makes of the Status (compact, HTML-escaped)."""
    text = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _GO_ESCAPES[m.group()], text).encode("utf-8")


def status_payload(status: Mapping[str, Any], spec: ProtocolSpec) -> bytes | None:
    """Error-channel bytes for `spec`: JSON for v4+, else the message text (nothing on success)."""
    if spec.json_status:
        return status_json(status)
    if status.get("status") == "Success":
        return None
    return str(status.get("message", "")).encode("utf-8")


# --- request parameters ------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def stream_flags(query: Mapping[str, str]) -> StreamOptions:
    """exec/attach flags as the kubelet reads them: the API server sends input/output/error=1,
    clients that call the kubelet directly write stdin/stdout/stderr ("1" or "true"); like the
    kubelet, tty drops stderr."""
    def on(*names: str) -> bool:
        return any(str(query.get(n, "")).lower() in ("1", "true") for n in names)

    tty = on("tty")
    return StreamOptions(stdin=on("stdin", "input"), stdout=on("stdout", "output"), stderr=on("stderr", "error") and not tty, tty=tty)


def parse_stream_options(query: Mapping[str, str]) -> StreamOptions:
    """stream_flags, refusing a request that asks for no stream at all."""
    opts = stream_flags(query)
    if not (opts.stdin or opts.stdout or opts.stderr):
        raise ValueError("you must specify at least 1 of stdin, stdout, stderr")
    return opts


def _query_values(query: Mapping[str, str], key: str) -> list[str]:
    """Every value of `key` in a (multi)dict."""
    getall = getattr(query, "getall", None)
    if getall is not None:
        return list(getall(key, []))
    return [query[key]] if key in query else []


def parse_ports(query: Mapping[str, str]) -> tuple[int, ...]:
    """Ports of a port-forward request: `port` (what the API server sends the kubelet) or
    `ports` (the pod subresource's name), repeated and/or comma-separated."""
    values = _query_values(query, "port") + _query_values(query, "ports")
    if not values:
        raise ValueError('query parameter "port" is required')
    ports: list[int] = []
    for value in values:
        if not value:
            raise ValueError('query parameter "port" cannot be empty')
        for item in value.split(","):
            if not re.fullmatch(r"[0-9]{1,5}", item) or not 0 < int(item) <= 65535:
                raise ValueError(f"unable to parse {item!r} as a port in 1-65535")
            ports.append(int(item))
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports per request, got {len(ports)}")
    return tuple(ports)


async def accept(request: web.Request, *, kind: Kind) -> tuple[web.WebSocketResponse, str]:
    """Negotiate the subprotocol and upgrade; 403 when no offered protocol fits (as the
    kubelet's golang.org/x/net/websocket handshake answers)."""
    offered = offered_protocols(request.headers)
    protocol = choose_protocol(offered, kind=kind)
    if protocol is None:
        supported = [spec.name for spec in _table(kind) if spec.name]
        raise web.HTTPForbidden(text=f"requested protocol(s) are not supported: {offered}; supports {supported}")
    ws = web.WebSocketResponse(protocols=(protocol,) if protocol else (), max_msg_size=WIRE_LIMIT, decode_text=False)
    await ws.prepare(request)
    return ws, protocol


# --- sessions ----------------------------------------------------------------------------


class _Sink(Protocol):
    async def put(self, data: bytes) -> bool | None: ...  # False: the channel stalled and was closed
    def close(self) -> None: ...


class _Inbox:
    """Bytes from one client channel, bounded so a slow consumer slows the socket."""

    def __init__(self, limit: int = STDIN_BUFFER, *, stall_timeout: float | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._size, self._limit, self._eof = 0, limit, False
        self._stall_timeout = stall_timeout
        self._readable, self._progress = asyncio.Event(), asyncio.Event()

    async def put(self, data: bytes) -> bool:
        """Buffer data, waiting while the inbox is full; False (and closed) when the
        consumer took nothing for `stall_timeout`."""
        while self._size >= self._limit and not self._eof:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), self._stall_timeout)
            except TimeoutError:
                self.close()
                return False
        if not self._eof and data:
            self._chunks.append(data)
            self._size += len(data)
            self._readable.set()
        return True

    def close(self) -> None:
        self._eof = True
        self._readable.set()
        self._progress.set()

    async def get(self) -> bytes:
        while not self._chunks and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        self._progress.set()
        return chunk


class _ResizeSink:
    """JSON TerminalSize objects ({"Width":w,"Height":h}) from the resize channel.

    Only the newest sizes matter, so old ones are dropped instead of blocking the socket.
    Like the kubelet, a malformed stream ends resize handling.
    """

    def __init__(self, keep: int = 8, limit: int = 4096) -> None:
        self._sizes: deque[tuple[int, int]] = deque(maxlen=keep)
        self._pending, self._limit, self._done = "", limit, False
        self._ready = asyncio.Event()

    async def put(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._pending += data.decode("utf-8")
            while (size := self._next()) is not None:
                self._sizes.append(size)
                self._ready.set()
        except (UnicodeDecodeError, ChannelError) as exc:
            log.debug("resize stream ended: %s", exc)
            self.close()

    def _next(self) -> tuple[int, int] | None:
        """The next complete size in the pending text, None until more arrives."""
        text = self._pending.lstrip()
        self._pending = text
        if not text:
            return None
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            if not text.startswith("{") or len(text) > self._limit:
                raise ChannelError("malformed resize JSON") from None
            return None  # an object split across messages: wait for the rest
        self._pending = text[end:]
        return _terminal_size(obj)

    def close(self) -> None:
        self._done = True
        self._ready.set()

    async def get(self) -> tuple[int, int] | None:
        """The next size; None once the channel ended and every size was taken."""
        while not self._sizes:
            if self._done:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._sizes.popleft()


def _terminal_size(obj: object) -> tuple[int, int]:
    if not isinstance(obj, dict):
        raise ChannelError("resize message is not a JSON object")
    fields = {str(k).lower(): v for k, v in obj.items()}  # Go matches field names case-insensitively
    width, height = fields.get("width", 0), fields.get("height", 0)
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ChannelError(f"terminal dimension {value!r} is not a uint16")
    return width, height


class _Mux:
    """One WebSocket carrying numbered channels: a reader task feeds the sinks, writes are
    serialized. Protocol violations end the connection via `on_fatal` then a close."""

    def __init__(self, ws: web.WebSocketResponse, spec: ProtocolSpec, channels: frozenset[int],
                 sinks: Mapping[int, _Sink], on_fatal: Callable[[str], Awaitable[None]], *,
                 on_stall: Callable[[int], Awaitable[None]] | None = None, idle_timeout: float | None = None) -> None:
        self.spec = spec
        self._ws, self._channels, self._sinks, self._on_fatal = ws, channels, sinks, on_fatal
        self._on_stall = on_stall
        self._lock = asyncio.Lock()
        self._closing = False
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle_timeout = idle_timeout
        self._idle: IdleTimer | None = None
        self._idle_close: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._idle = IdleTimer(self._idle_timeout, self._on_idle)
        self._task = asyncio.create_task(self._run(), name="k8s-channel-reader")

    def _on_idle(self) -> None:
        log.info("WebSocket stream idle for %ss (streaming connection idle timeout): closing it", self._idle_timeout)
        self._idle_close = asyncio.create_task(self.close(code=WSCloseCode.GOING_AWAY, message=b"idle timeout"))

    @property
    def closed(self) -> bool:
        return self._closing or self._ws.closed

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def send(self, channel: int, data: bytes) -> None:
        """Send `data` on `channel` (an empty payload still makes one message); dropped once closed."""
        chunks = [data[i:i + OUT_CHUNK] for i in range(0, len(data), OUT_CHUNK)] or [b""]
        async with self._lock:
            for chunk in chunks:
                if self.closed:
                    return
                frame = encode(channel, chunk, base64=self.spec.base64)
                if self._idle is not None:
                    self._idle.touch()
                try:
                    await (self._ws.send_str(frame) if isinstance(frame, str) else self._ws.send_bytes(frame))
                except (ConnectionError, RuntimeError) as exc:
                    log.debug("write on channel %d dropped: %s", channel, exc)
                    return

    async def _run(self) -> None:
        try:
            while not self.closed:
                msg = await self._ws.receive()
                if self._idle is not None:
                    self._idle.touch()
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    continue
                if not await self._dispatch(msg.data):
                    break
        except (ConnectionError, RuntimeError, asyncio.TimeoutError) as exc:
            log.debug("channel reader stopped: %s", exc)
        finally:
            if self._idle is not None:
                self._idle.cancel()
            self._end_inputs()
            self._done.set()

    async def _dispatch(self, data: Message) -> bool:
        try:
            channel, payload = decode(data, base64=self.spec.base64, channels=self._channels)
        except ChannelError as exc:
            if exc.close_code is None:
                log.debug("skipped a message: %s", exc)
                return True
            log.warning("closing a %s stream: %s", self.spec.name or "channel", exc)
            await self._on_fatal(str(exc))
            await self.close(code=exc.close_code, message=str(exc).encode()[:120])
            return False
        if channel == CLOSE_CHANNEL:  # v5 half-close: EOF for that channel's reader
            closing = self._sinks.get(payload[0])
            if closing is not None:
                closing.close()
            return True
        sink = self._sinks.get(channel)
        if sink is not None and payload and await sink.put(payload) is False and self._on_stall is not None:
            await self._on_stall(channel)
        return True

    def _end_inputs(self) -> None:
        for sink in self._sinks.values():
            sink.close()

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        if not self._closing:
            self._closing = True
            self._end_inputs()
            try:
                await self._ws.close(code=code, message=message)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("close: %s", exc)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except asyncio.TimeoutError:
                task.cancel()
        self._done.set()


class _Session:
    """What exec and port-forward sessions share: the multiplexed WebSocket underneath."""

    _mux: _Mux

    @property
    def protocol(self) -> str:
        return self._mux.spec.name

    @property
    def closed(self) -> bool:
        return self._mux.closed

    async def wait_closed(self) -> None:
        """Returns when the client went away or close() was called."""
        await self._mux.wait_closed()

    async def close(self) -> None:
        await self._mux.close()


class ExecStreams(_Session):
    """stdin/stdout/stderr/resize/status of one exec or attach over a channel protocol.

    Writes after the connection closed are dropped (watch `closed`/`wait_closed()` to stop
    the process); call close() when the command is done, after send_status().
    """

    def __init__(self, ws: web.WebSocketResponse, spec: ProtocolSpec, options: StreamOptions, *,
                 idle_timeout: float | None = None) -> None:
        self._options = options
        self._stdin, self._resize = _Inbox(), _ResizeSink()
        if not options.stdin:
            self._stdin.close()
        sinks: dict[int, _Sink] = {RESIZE: self._resize}
        if options.stdin:
            sinks[STDIN] = self._stdin
        channels = EXEC_CHANNELS if spec.close_signal else EXEC_CHANNELS - {CLOSE_CHANNEL}
        self._mux = _Mux(ws, spec, channels, sinks, self._fatal, idle_timeout=idle_timeout)

    async def read_stdin(self) -> bytes:
        """The next stdin chunk; b"" at EOF (v5 close signal, disconnect, or no stdin)."""
        return await self._stdin.get()

    async def write_stdout(self, data: bytes) -> None:
        if data and self._options.stdout:
            await self._mux.send(STDOUT, data)

    async def write_stderr(self, data: bytes) -> None:
        if data and self._options.stderr:
            await self._mux.send(STDERR, data)

    async def resize_events(self) -> AsyncIterator[tuple[int, int]]:
        """(width, height) per terminal resize until the channel ends."""
        while (size := await self._resize.get()) is not None:
            yield size

    async def send_status(self, exit_code: int | None, message: str = "") -> None:
        """Report how the command ended on the error channel; see exit_status()."""
        payload = status_payload(exit_status(exit_code, message), self._mux.spec)
        if payload is not None:
            await self._mux.send(ERROR, payload)

    async def _fatal(self, reason: str) -> None:
        await self.send_status(None, reason)

    async def _start(self) -> None:
        # Like the kubelet: an empty message on the lowest writable channel says "ready".
        opts = self._options
        await self._mux.send(STDOUT if opts.stdout else STDERR if opts.stderr else ERROR, b"")
        self._mux.start()


async def exec_session(ws: web.WebSocketResponse, protocol: str, *, stdin: bool = True,
                       stdout: bool = True, stderr: bool = True, idle_timeout: float | None = None) -> ExecStreams:
    """Streams of an exec/attach on a prepared WebSocket that negotiated `protocol`."""
    streams = ExecStreams(ws, protocol_spec(protocol, kind="exec"), StreamOptions(stdin, stdout, stderr, tty=False),
                          idle_timeout=idle_timeout)
    await streams._start()
    return streams


class PortStream:
    """One forwarded port: data channel 2*i (both ways) and error channel 2*i+1 (to the client)."""

    def __init__(self, mux: _Mux, index: int, port: int, inbox: _Inbox) -> None:
        self.index, self.port = index, port
        self._mux, self._inbox = mux, inbox

    async def read(self) -> bytes:
        """Next bytes the client sent for this port; b"" when the connection ended."""
        return await self._inbox.get()

    async def write(self, data: bytes) -> None:
        if data:
            await self._mux.send(2 * self.index, data)

    async def write_error(self, message: str) -> None:
        """Tell the client forwarding this port failed (plain text, as the kubelet does)."""
        await self._mux.send(2 * self.index + 1, message.encode("utf-8"))


class PortForwardStreams(_Session):
    """The ports of one port-forward request, in query order (a port may repeat).

    Iterate (or index) for the PortStreams; call close() once every port is done.
    """

    def __init__(self, ws: web.WebSocketResponse, spec: ProtocolSpec, ports: Sequence[int], *,
                 idle_timeout: float | None = None, stall_timeout: float | None = None) -> None:
        self.ports = tuple(ports)
        self._stall_timeout = stall_timeout
        inboxes = [_Inbox(stall_timeout=stall_timeout) for _ in self.ports]
        sinks: dict[int, _Sink] = {2 * i: inbox for i, inbox in enumerate(inboxes)}
        self._mux = _Mux(ws, spec, frozenset(range(2 * len(self.ports))), sinks, self._fatal,
                         on_stall=self._stalled, idle_timeout=idle_timeout)
        self._streams = tuple(PortStream(self._mux, i, port, inboxes[i]) for i, port in enumerate(self.ports))

    def __getitem__(self, index: int) -> PortStream:
        return self._streams[index]

    def __iter__(self) -> Iterator[PortStream]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    async def run(self, connect: Connect) -> None:
        """Forward every port to a connection from `connect(port)`, like the kubelet's
        PortForwarder: a failure goes to that port's error channel as text."""
        await asyncio.gather(*(_forward(stream, connect) for stream in self._streams))

    async def _fatal(self, reason: str) -> None:
        for stream in self._streams:
            await stream.write_error(reason)

    async def _stalled(self, channel: int) -> None:
        stream = self._streams[channel // 2]
        log.info("port-forward to port %d: the pod took nothing for %ss; ending that stream", stream.port, self._stall_timeout)
        await stream.write_error(f"error forwarding port {stream.port}: the pod's connection took no data for "
                                 f"{self._stall_timeout:g}s with {STDIN_BUFFER >> 20} MiB waiting; closed it")

    async def _start(self) -> None:
        for stream in self._streams:  # the kubelet's greeting: the port, uint16 LE, on both channels
            prefix = struct.pack("<H", stream.port)
            await self._mux.send(2 * stream.index, prefix)
            await self._mux.send(2 * stream.index + 1, prefix)
        self._mux.start()


Connect = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _forward(stream: PortStream, connect: Connect) -> None:
    try:
        reader, writer = await connect(stream.port)
    except OSError as exc:
        await stream.write_error(f"error forwarding port {stream.port}: {exc}")
        return
    try:
        await _pump(stream, reader, writer)
    except OSError as exc:
        await stream.write_error(f"error forwarding port {stream.port}: {exc}")
    finally:
        writer.close()


async def _pump(stream: PortStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy both ways until either side ends (v4 has no half-close: the client's side ends
    only with the connection, and a finished pod socket ends the port)."""

    async def upstream() -> None:
        while data := await stream.read():
            writer.write(data)
            await writer.drain()

    async def downstream() -> None:
        while data := await reader.read(OUT_CHUNK):
            await stream.write(data)

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # re-raise an OSError from either side


def _check_ports(ports: Sequence[int]) -> None:
    if not ports:
        raise ValueError("port-forward needs at least one port")
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports per request")
    if any(not 0 < p <= 0xFFFF for p in ports):
        raise ValueError(f"ports must be in 1-65535: {list(ports)}")


async def portforward_session(ws: web.WebSocketResponse, protocol: str, ports: Sequence[int], *,
                              idle_timeout: float | None = None, stall_timeout: float | None = None) -> PortForwardStreams:
    """Port-forward channels on a prepared WebSocket; `ports` usually from parse_ports()."""
    _check_ports(ports)
    streams = PortForwardStreams(ws, protocol_spec(protocol, kind="portforward"), ports,
                                 idle_timeout=idle_timeout, stall_timeout=stall_timeout)
    await streams._start()
    return streams
