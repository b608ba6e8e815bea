"""Taking over an aiohttp connection for SPDY/3.1 after `101 Switching Protocols`.

aiohttp upgrades only to WebSocket (and "tcp") by itself. For SPDY we install a payload
parser that feeds every later byte of the connection to a ChunkReader *before*
answering 101 (the client sends frames only after it), and write frames straight to the
transport; the connection is closed when the session ends. The reader pauses the
transport when its buffer passes twice its limit, so a client pushing faster than the
session consumes is held back by TCP instead of filling the agent's memory.
"""

from __future__ import annotations

from aiohttp import web

from vnode.kubelet_api.rawio import ChunkReader

SPDY = "SPDY/3.1"
READ_BUFFER = 4 * 1024 * 1024  # the transport pauses at twice this, resumes at it


def wants_spdy(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == SPDY.lower()


def wants_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def offered_protocols(request: web.Request) -> list[str]:
    out: list[str] = []
    for value in request.headers.getall("X-Stream-Protocol-Version", []):
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


class _Feeder:
    """The object aiohttp's protocol feeds raw bytes to once it has a payload parser."""

    def __init__(self, reader: ChunkReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class RawWriter:
    """write/drain/close over the request's transport, for SpdySession."""

    def __init__(self, request: web.Request) -> None:
        self._transport = request.transport
        self._protocol = request.protocol

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        helper = getattr(self._protocol, "_drain_helper", None)
        if helper is not None and self._transport is not None and not self._transport.is_closing():
            await helper()

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def accept_spdy(request: web.Request, *, protocol: str) -> tuple[ChunkReader, RawWriter, web.StreamResponse]:
    """Answer 101 with the chosen X-Stream-Protocol-Version; return the raw byte streams."""
    reader = ChunkReader(limit=READ_BUFFER)
    if request.transport is not None:
        reader.set_transport(request.transport)  # pause_reading/resume_reading: backpressure
    request.protocol.set_parser(_Feeder(reader))  # type: ignore[arg-type]
    response = web.StreamResponse(
        status=101,
        headers={"Connection": "Upgrade", "Upgrade": SPDY, "X-Stream-Protocol-Version": protocol},
    )
    await response.prepare(request)
    return reader, RawWriter(request), response
