"""Draining a terminating server: what counts as busy, how much of the grace period the
wait may take, and the wait itself against a small HTTP server that plays llama-server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from vnode.pods import drain

METRICS_BUSY = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
"""


def test_slots_busy_reads_is_processing():
    assert drain.slots_busy([{"id": 0, "is_processing": False}, {"id": 1, "is_processing": True}])
    assert not drain.slots_busy([{"id": 0, "is_processing": False}])
    with pytest.raises(ValueError):
        drain.slots_busy({"error": "not a list"})


def test_metrics_busy_counts_processing_and_deferred():
    assert drain.metrics_busy(METRICS_BUSY)
    assert drain.metrics_busy(METRICS_BUSY.replace("processing 1", "processing 0").replace("deferred 0", "deferred 2"))
    assert not drain.metrics_busy(METRICS_BUSY.replace("processing 1", "processing 0"))


@pytest.mark.parametrize(("grace", "quiet", "budget"), [(30, 2, 28), (5, 2, 3.75), (1, 2, 0.75), (0, 2, 0), (30, 0, 0)])
def test_the_wait_keeps_time_for_the_shutdown(grace, quiet, budget):
    assert drain.drain_budget(grace, quiet) == pytest.approx(budget)


class FakeServer:
    """/slots busy until `release` is set; or /slots missing and /metrics instead."""

    def __init__(self, *, slots: bool = True) -> None:
        self.busy = True
        self.slots = slots
        self.app = web.Application()
        self.app.router.add_get("/slots", self._slots)
        self.app.router.add_get("/metrics", self._metrics)

    async def _slots(self, _request: web.Request) -> web.Response:
        if not self.slots:
            return web.Response(status=501, text="slots disabled")
        return web.json_response([{"id": 0, "is_processing": self.busy}])

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=METRICS_BUSY.replace("processing 1", f"processing {int(self.busy)}"))


async def _serve(fake: FakeServer):
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("slots", [True, False])
async def test_waits_until_the_last_request_ends_then_the_quiet_period(slots):
    fake = FakeServer(slots=slots)
    runner, base = await _serve(fake)
    try:
        async with aiohttp.ClientSession() as session:
            async def finish_later() -> None:
                await asyncio.sleep(0.6)
                fake.busy = False

            task = asyncio.create_task(finish_later())
            result = await drain.wait_idle(session, base=base, quiet=0.4, budget=5)
            await task
    finally:
        await runner.cleanup()
    assert result.idle and 0.9 <= result.waited < 3, result


async def test_gives_up_at_the_budget_and_says_so():
    fake = FakeServer()
    runner, base = await _serve(fake)
    try:
        async with aiohttp.ClientSession() as session:
            result = await drain.wait_idle(session, base=base, quiet=0.2, budget=0.7)
    finally:
        await runner.cleanup()
    assert not result.idle and "still serving" in result.detail and result.waited < 1.5


async def test_a_server_that_does_not_answer_is_not_waited_for():
    async with aiohttp.ClientSession() as session:
        result = await drain.wait_idle(session, base="http://127.0.0.1:9", quiet=1, budget=10)
    assert result.idle and result.waited < 1 and "does not report" in result.detail


async def test_a_request_in_the_quiet_period_starts_it_again():
    fake = FakeServer()
    fake.busy = False
    runner, base = await _serve(fake)
    try:
        async with aiohttp.ClientSession() as session:
            async def late_request() -> None:
                await asyncio.sleep(0.2)
                fake.busy = True
                await asyncio.sleep(0.5)
                fake.busy = False

            task = asyncio.create_task(late_request())
            result = await drain.wait_idle(session, base=base, quiet=0.6, budget=5)
            await task
    finally:
        await runner.cleanup()
    assert result.idle and result.waited >= 1.2, result


async def test_without_time_for_a_quiet_period_an_idle_server_stops_at_once():
    """A hard eviction leaves less time than the quiet period: only what is in flight
    is waited for, and an idle server is not held back."""
    fake = FakeServer()
    fake.busy = False
    runner, base = await _serve(fake)
    try:
        async with aiohttp.ClientSession() as session:
            result = await drain.wait_idle(session, base=base, quiet=2.0, budget=1.5)
    finally:
        await runner.cleanup()
    assert result.idle and result.waited < 0.5, result


async def test_a_quiet_period_cut_short_by_the_deadline_is_not_reported_busy():
    fake = FakeServer()
    runner, base = await _serve(fake)
    try:
        async with aiohttp.ClientSession() as session:
            async def finish_soon() -> None:
                await asyncio.sleep(0.3)
                fake.busy = False

            task = asyncio.create_task(finish_soon())
            result = await drain.wait_idle(session, base=base, quiet=1.0, budget=1.2)
            await task
    finally:
        await runner.cleanup()
    assert result.idle and "quiet for" in result.detail, result
