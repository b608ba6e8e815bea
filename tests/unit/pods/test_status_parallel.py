"""Many pods' status is written several at a time (bench/scale.py: with one patch after the
other, Ready of the last of 100 pods reached the API server ~2 s after their servers
served), never two patches of one pod at once, and every pod's latest status lands."""

from __future__ import annotations

import asyncio

from vnode.pods.status import ContainerView, StatusManager, pod_status


def _pod(i: int) -> dict:
    return {"metadata": {"uid": f"u{i}", "namespace": "ns", "name": f"p{i}", "resourceVersion": "1"}, "spec": {}, "status": {}}


def _status(pod: dict, *, ready: bool) -> dict:
    view = ContainerView(name="server", image="img", state={"running": {"startedAt": "2026-01-01T00:00:01Z"}}, ready=ready,
                         started=True, container_id="vnode://1")
    return pod_status(pod, [view], pod_ip="198.18.0.2", start_time="2026-01-01T00:00:01Z")


class SlowApi:
    server = "https://api"

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.most = 0
        self.per_pod_most = 0
        self.last: dict[str, dict] = {}

    async def patch(self, path: str, body: dict, *, content_type: str) -> dict:
        name = path.split("/")[-2]
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.most = max(self.most, sum(self.in_flight.values()))
        self.per_pod_most = max(self.per_pod_most, self.in_flight[name])
        await asyncio.sleep(0.05)
        self.in_flight[name] -= 1
        self.last[name] = body["status"]
        return {}


async def test_status_of_many_pods_is_written_in_parallel() -> None:
    api = SlowApi()
    manager = StatusManager(api)  # type: ignore[arg-type]
    pods = [_pod(i) for i in range(32)]
    runner = asyncio.create_task(manager.run())
    try:
        started = asyncio.get_running_loop().time()
        for pod in pods:
            manager.set(pod, _status(pod, ready=False))
        await asyncio.sleep(0.01)
        for pod in pods:  # Ready arrives while the first round is still being written
            manager.set(pod, _status(pod, ready=True))
        for pod in pods:
            await manager.flush(pod["metadata"]["uid"], timeout=5)
        took = asyncio.get_running_loop().time() - started
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert 1 < api.most <= StatusManager.WRITERS
    assert api.per_pod_most == 1
    assert all(next(c for c in api.last[p["metadata"]["name"]]["conditions"] if c["type"] == "Ready")["status"] == "True"
               for p in pods)
    assert took < 32 * 0.05  # one after the other would take 1.6 s at least
