"""Byte streams for bulk forwarding that hand on received chunks as they arrived.

asyncio's StreamReader copies every received chunk into one bytearray and copies it out
again on read; at port-forward rates those two copies are a visible share of the agent's
CPU. ChunkReader keeps the chunks (bytes from the transport) in a deque and returns one
whole when it fits the read, and holds the sender back the same way StreamReader does:
the transport pauses reading once more than twice `limit` bytes wait, and resumes at
`limit`. ChunkStream is the reader and a writer with drain() over one TCP connection.
"""

from __future__ import annotations

import asyncio
import collections


class ChunkReader:
    def __init__(self, limit: int = 4 * 1024 * 1024) -> None:
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._paused = False

    @property
    def buffered(self) -> int:
        return self._buffered

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        """The transport to pause when the reader falls behind (its `pause_reading`)."""
        self._transport = transport

    def feed_data(self, data: bytes) -> None:
        if not data or self._eof:
            return
        self._chunks.append(bytes(data))  # bytes stays bytes (no copy); a bytearray is snapshotted
        self._buffered += len(data)
        self._wake()
        if not self._paused and self._buffered > 2 * self._limit and self._transport is not None:
            try:
                self._transport.pause_reading()  # type: ignore[attr-defined]
            except (NotImplementedError, RuntimeError):
                return
            self._paused = True

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._wake()

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes (everything buffered if n < 0); b"" at EOF. One whole chunk when it fits."""
        if n == 0:
            return b""
        while not self._chunks:
            if self._exception is not None:
                raise self._exception
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        first = self._chunks[0]
        if n < 0:
            data = b"".join(self._chunks)
            self._chunks.clear()
        elif len(first) <= n:
            data = self._chunks.popleft()
        else:
            data, self._chunks[0] = first[:n], first[n:]
        self._buffered -= len(data)
        if self._paused and self._buffered <= self._limit and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()  # type: ignore[attr-defined]
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class ChunkStream(asyncio.Protocol):
    """One TCP connection: `reader` (a ChunkReader) and write/drain/write_eof/close."""

    def __init__(self, limit: int = 4 * 1024 * 1024) -> None:
        self.reader = ChunkReader(limit)
        self._transport: asyncio.WriteTransport | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._closed = asyncio.get_running_loop().create_future()

    # -- protocol callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.reader.set_transport(transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def eof_received(self) -> bool:
        self.reader.feed_eof()
        return True  # keep the transport open: our half may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed")
        if exc is None:
            self.reader.feed_eof()
        else:
            self.reader.set_exception(exc)
        self._wake_drain()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # -- writer side --

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        if self._transport is None or self._transport.is_closing():
            if self._lost is not None:
                raise ConnectionResetError(str(self._lost))
            return
        if not self._paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self._lost is not None:
            raise ConnectionResetError(str(self._lost))

    def write_eof(self) -> None:
        if self._transport is not None and not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)


async def open_connection(host: str, port: int, *, limit: int = 4 * 1024 * 1024) -> ChunkStream:
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: ChunkStream(limit), host, port)
    return stream
