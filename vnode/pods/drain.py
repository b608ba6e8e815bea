"""Let a server finish its requests before it is stopped.

The kubelet signals a deleted pod's containers at once and leaves the rest to preStop
hooks; llama-server, on SIGTERM, stops and cuts the generations in flight. vnode knows
its servers, so a terminating pod is first marked not ready (it leaves its Services'
endpoints), then vnode waits, within the grace period, until the server has had no
request in flight for a quiet period (clients following the EndpointSlice have moved on
by then), and only then sends SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

POLL = 0.2
BODY_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Drained:
    idle: bool  # the server was idle for the quiet period (False: the deadline came first)
    waited: float
    detail: str = ""


def slots_busy(slots: object) -> bool:
    """llama-server's /slots: a list of slots, each with `is_processing`."""
    if not isinstance(slots, list):
        raise ValueError("/slots did not answer a list")
    return any(isinstance(s, dict) and s.get("is_processing") for s in slots)


def metrics_busy(text: str) -> bool:
    """llama-server's /metrics (with --metrics): requests processing or deferred."""
    names = {"llamacpp:requests_processing", "llamacpp:requests_deferred"}
    return any(s.value > 0 for f in text_string_to_metric_families(text) for s in f.samples if s.name in names)


async def in_flight(session: aiohttp.ClientSession, base: str) -> bool | None:
    """Whether the server is working on a request; None when it cannot tell (no /slots,
    no /metrics, or not answering: nothing left to wait for)."""
    timeout = aiohttp.ClientTimeout(total=1.0)
    try:
        async with session.get(f"{base}/slots", timeout=timeout) as resp:
            if resp.status == 200:
                return slots_busy(await resp.json(content_type=None))
        async with session.get(f"{base}/metrics", timeout=timeout) as resp:
            if resp.status == 200:
                return metrics_busy((await resp.content.read(BODY_LIMIT)).decode(errors="replace"))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None
    return None


async def wait_idle(session: aiohttp.ClientSession, *, base: str, quiet: float, budget: float) -> Drained:
    """Wait until `base` has been idle for `quiet` seconds, for at most `budget` seconds."""
    if quiet >= budget:
        # No time for a quiet period (a hard eviction's short grace): finish what is in
        # flight and no more.
        quiet = 0.0
    start = time.monotonic()
    idle_since: float | None = None
    while True:
        now = time.monotonic()
        if now - start >= budget:
            if idle_since is not None:  # idle, only the quiet period was cut short
                return Drained(idle=True, waited=now - start, detail=f"quiet for {now - idle_since:.1f}s of {quiet:.1f}s")
            return Drained(idle=False, waited=now - start, detail=f"still serving after {budget:.1f}s")
        busy = await in_flight(session, base)
        now = time.monotonic()
        if busy is None:
            return Drained(idle=True, waited=now - start, detail="the server does not report its requests")
        if busy:
            idle_since = None
        else:
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= quiet:
                return Drained(idle=True, waited=now - start)
        await asyncio.sleep(POLL)


def drain_budget(grace: float, quiet: float) -> float:
    """How long of the grace period may go to waiting: most of it, keeping a quarter (at
    most 2 s) for the server's own shutdown after SIGTERM; nothing when there is no grace."""
    if grace <= 0 or quiet <= 0:
        return 0.0
    return max(0.0, grace - min(2.0, grace * 0.25))
