"""Events go through a bounded buffer: recording never waits on the API server, a full
buffer drops its oldest (counted), repeats are aggregated into one Event's count."""

from __future__ import annotations

import asyncio

from vnode.event_metrics import EVENTS_DROPPED
from vnode.kubeclient import ApiError
from vnode.pods.events import EventRecorder

POD = {"metadata": {"namespace": "ns", "name": "p", "uid": "u1"}}


class SlowApi:
    """An API server that answers only when `open` is set; records what it was sent."""

    server = "https://slow"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.created: list[dict] = []
        self.patched: list[tuple[str, dict]] = []

    async def create(self, path: str, body: dict) -> dict:
        await self.open.wait()
        self.created.append(body)
        return body

    async def patch(self, path: str, body: dict, **kw) -> dict:
        await self.open.wait()
        self.patched.append((path.rsplit("/", 1)[1], body))
        return body


async def test_recording_returns_at_once_while_the_api_server_hangs():
    api = SlowApi()
    events = EventRecorder(api, node_name="mac", buffer=4)  # type: ignore[arg-type]
    sender = asyncio.create_task(events.run())
    try:
        async with asyncio.timeout(0.5):  # would block on the hung server if recording waited
            for i in range(10):
                await events.pod_event(POD, kind="Warning", reason="Unhealthy", message=f"probe failed {i}")
        await asyncio.sleep(0.05)
        assert events.queued() == 4 and events.dropped >= 5  # one may be in flight
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_a_full_buffer_drops_the_oldest_and_counts_it():
    before = EVENTS_DROPPED._value.get()
    events = EventRecorder(SlowApi(), node_name="mac", buffer=2)  # type: ignore[arg-type]  # no sender: nothing leaves
    for i in range(5):
        await events.pod_event(POD, kind="Normal", reason="R", message=str(i))
    assert events.dropped == 3 and EVENTS_DROPPED._value.get() - before == 3
    assert [p.message for p in events._queue.values()] == ["3", "4"]


async def test_repeats_are_aggregated_in_the_buffer_and_after_writing():
    api = SlowApi()
    events = EventRecorder(api, node_name="mac")  # type: ignore[arg-type]
    for _ in range(3):
        await events.pod_event(POD, kind="Warning", reason="BackOff", message="Back-off restarting failed container")
    assert events.queued() == 1
    sender = asyncio.create_task(events.run())
    try:
        api.open.set()
        await asyncio.sleep(0.05)
        assert len(api.created) == 1 and api.created[0]["count"] == 3
        await events.pod_event(POD, kind="Warning", reason="BackOff", message="Back-off restarting failed container")
        await asyncio.sleep(0.05)
        assert len(api.created) == 1 and api.patched[0][0] == api.created[0]["metadata"]["name"]
        assert api.patched[0][1]["count"] == 4
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_an_unreachable_api_server_is_retried_and_an_invalid_event_dropped(monkeypatch):
    monkeypatch.setattr("vnode.pods.events.Backoff.next_delay", lambda self: 0.01)

    class Flaky(SlowApi):
        def __init__(self) -> None:
            super().__init__()
            self.open.set()
            self.failures = 3

        async def create(self, path: str, body: dict) -> dict:
            if body["reason"] == "Invalid":
                raise ApiError(422, "Invalid", "bad event")
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("reset")
            return await super().create(path, body)

    api = Flaky()
    events = EventRecorder(api, node_name="mac")  # type: ignore[arg-type]
    sender = asyncio.create_task(events.run())
    try:
        await events.node_event(kind="Warning", reason="Invalid", message="x")
        await events.node_event(kind="Normal", reason="Started", message="y")
        await asyncio.sleep(0.2)
        assert [e["reason"] for e in api.created] == ["Started"] and events.queued() == 0
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
