"""The raw SPDY upgrade on a real aiohttp server: 101 answer and bounded input buffering."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from vnode.kubelet_api import upgrade

pytestmark = pytest.mark.asyncio


async def _start(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/up", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_a_client_outpacing_the_session_is_held_back_by_tcp() -> None:
    """Nobody reads the upgraded stream: the agent buffers about twice the reader's limit, not all
    the client sends; once the session reads, the transport resumes and every byte arrives."""
    got: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()
    release: asyncio.Future[int] = asyncio.get_running_loop().create_future()  # bytes the client sent

    async def handler(request: web.Request) -> web.StreamResponse:
        reader, writer, response = await upgrade.accept_spdy(request, protocol="portforward.k8s.io")
        got.set_result(reader)
        expected, total = await asyncio.wait_for(release, 30), 0
        while total < expected and (chunk := await reader.read(1 << 20)):
            total += len(chunk)
        writer.write(f"{total}\n".encode())
        await writer.drain()
        writer.close()
        return response

    runner, port = await _start(handler)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                b"X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"portforward.k8s.io" in head
        reader = await got
        block, sent = b"x" * (1 << 20), 0
        with pytest.raises(TimeoutError):  # the client is blocked by a full TCP window
            while sent < 256 << 20:
                w.write(block)
                await asyncio.wait_for(w.drain(), 1.0)
                sent += len(block)
        await asyncio.sleep(0.2)
        assert reader.buffered <= 2 * upgrade.READ_BUFFER + (1 << 20)
        assert sent < 64 << 20
        sent += len(block)  # the block whose drain timed out is in flight too
        release.set_result(sent)
        await asyncio.wait_for(w.drain(), 30)
        assert int((await asyncio.wait_for(r.readline(), 30)).decode()) == sent
        w.close()
    finally:
        await runner.cleanup()
