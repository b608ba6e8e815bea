"""ChunkReader/ChunkStream: chunks handed on whole, flow control both ways, half-close."""

from __future__ import annotations

import asyncio

import pytest

from vnode.kubelet_api import rawio

pytestmark = pytest.mark.asyncio


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.paused = False
        self.calls.append("resume")


async def test_whole_chunks_are_handed_on_without_copies() -> None:
    r = rawio.ChunkReader()
    a, b = b"a" * 1000, b"b" * 10
    r.feed_data(a)
    r.feed_data(b)
    got = await r.read(4096)
    assert got is a  # the very object the transport gave
    assert await r.read(4) == b"bbbb" and await r.read(100) == b"bbbbbb"
    r.feed_data(b"xy")
    r.feed_data(b"z")
    r.feed_eof()
    assert await r.read(-1) == b"xyz"
    assert await r.read(10) == b"" and r.at_eof()


async def test_read_waits_for_data_and_eof() -> None:
    r = rawio.ChunkReader()
    task = asyncio.create_task(r.read(10))
    await asyncio.sleep(0)
    assert not task.done()
    r.feed_data(b"hi")
    assert await task == b"hi"
    task = asyncio.create_task(r.read(10))
    await asyncio.sleep(0)
    r.feed_eof()
    assert await task == b""
    r.feed_data(b"late")  # after EOF: dropped
    assert await r.read(10) == b""


async def test_exception_is_raised_once_buffered_data_is_read() -> None:
    r = rawio.ChunkReader()
    r.feed_data(b"last")
    r.set_exception(ConnectionResetError("gone"))
    assert await r.read(10) == b"last"
    with pytest.raises(ConnectionResetError):
        await r.read(10)


async def test_transport_pauses_over_twice_the_limit_and_resumes_at_it() -> None:
    t = _Transport()
    r = rawio.ChunkReader(limit=100)
    r.set_transport(t)  # type: ignore[arg-type]
    for _ in range(20):
        r.feed_data(b"x" * 10)
    assert not t.paused and r.buffered == 200
    r.feed_data(b"x" * 10)
    assert t.paused and t.calls == ["pause"]
    r.feed_data(b"x" * 10)  # data already in flight is still taken
    assert r.buffered == 220 and t.calls == ["pause"]
    while r.buffered > 110:
        await r.read(10)
    assert t.paused
    await r.read(10)
    assert not t.paused and t.calls == ["pause", "resume"]


async def test_stream_round_trip_half_close_and_drain() -> None:
    """A real TCP peer: everything written arrives, our write_eof is seen, its reply still comes."""
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until our EOF
        writer.write(str(len(data)).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await rawio.open_connection("127.0.0.1", port)
        block = b"z" * (1 << 20)
        for _ in range(32):
            conn.write(block)
            await conn.drain()
        conn.write_eof()
        reply = b""
        while chunk := await conn.reader.read(1024):
            reply += chunk
        assert reply == str(32 << 20).encode()
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_drain_raises_once_the_peer_is_gone() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await rawio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionError):
            for _ in range(1000):
                conn.write(b"q" * 65536)
                await asyncio.wait_for(conn.drain(), 5)
                await asyncio.sleep(0)
        conn.close()
    finally:
        server.close()
        await server.wait_closed()
