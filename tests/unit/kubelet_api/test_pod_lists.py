"""/pods and /runningpods from plain data: /runningpods are the pods with a server running
now, whatever phase the API server's echo of the pod still shows."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from vnode.kubelet_api import pods as handlers
from vnode.kubelet_api.context import CTX_KEY


def _pod(uid: str, phase: str) -> dict:
    return {"metadata": {"namespace": "ml", "name": f"p-{uid}", "uid": uid}, "status": {"phase": phase}}


async def _names(path: str, workers: dict, running: list) -> list[str]:
    import json

    app = web.Application()
    app[CTX_KEY] = SimpleNamespace(pods=SimpleNamespace(workers=workers), running=lambda: running)  # type: ignore[assignment]
    resp = await handlers.pods(make_mocked_request("GET", path, app=app))
    return sorted(p["metadata"]["name"] for p in json.loads(resp.text)["items"])


async def test_running_pods_are_those_with_a_live_server():
    workers = {
        "a": SimpleNamespace(pod=_pod("a", "Pending")),  # started; the API server's echo has not come back yet
        "b": SimpleNamespace(pod=_pod("b", "Running")),  # its server just exited
        "c": SimpleNamespace(pod=_pod("c", "Pending")),
    }
    running = [SimpleNamespace(pod_uid="a")]
    assert await _names("/runningpods/", workers, running) == ["p-a"]
    assert await _names("/runningpods", workers, running) == ["p-a"]
    assert await _names("/pods", workers, running) == ["p-a", "p-b", "p-c"]
