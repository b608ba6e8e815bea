"""/healthz/syncloop: unhealthy before the first list, and when the pod watch has been
failing longer than the threshold."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vnode.kubelet_api import health
from vnode.kubelet_api.context import CTX_KEY


async def get(pods) -> tuple[int, str]:
    app = web.Application()
    app[CTX_KEY] = SimpleNamespace(pods=pods)  # type: ignore[assignment]
    health.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz/syncloop")
        return resp.status, await resp.text()


async def test_syncloop_follows_the_pod_watch():
    synced = asyncio.Event()
    failing = [0.0]
    pods = SimpleNamespace(synced=synced, watch_failing_for=lambda: failing[0])
    assert (await get(pods))[0] == 500
    synced.set()
    assert await get(pods) == (200, "ok")
    failing[0] = health.SYNCLOOP_WATCH_FAILING_SECONDS - 1
    assert (await get(pods))[0] == 200
    failing[0] = health.SYNCLOOP_WATCH_FAILING_SECONDS + 5
    status, text = await get(pods)
    assert status == 500 and "pod watch has been failing" in text
