"""List once, then watch from the last resourceVersion: client-go's reflector, for the pod
and node controllers.

A watch the API server ends (its timeoutSeconds) or that breaks is started again from the
last resourceVersion seen, bookmarks included, so an idle node costs one request per watch
period instead of a list and a watch; only 410 Gone (the version was compacted away) makes
it list again. It also says how long the watch has been failing, for /healthz/syncloop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain
from vnode.tasks import PROGRAMMING_ERRORS, Failures

log = logging.getLogger(__name__)

# client-go's reflector asks for a random timeout between 5 and 10 minutes, so the watches
# of many nodes do not all end (and come back) at once.
WATCH_MIN_SECONDS = 300


class Reflector:
    """Keeps `on_list` / `on_event` fed with the objects at `path` that match `selector`.

    `on_list(items)` gets every object after a (re)list, `on_event(type, object)` every
    ADDED/MODIFIED/DELETED; bookmarks only move the resourceVersion on."""

    def __init__(
        self,
        api: KubeClient,
        path: str,
        *,
        selector: str,
        what: str,
        on_list: Callable[[list[dict]], Awaitable[None]],
        on_event: Callable[[str, dict], None],
        watch_seconds: Callable[[], int] | None = None,
    ) -> None:
        self._api, self._path, self._selector = api, path, selector
        self._on_list, self._on_event = on_list, on_event
        self._watch_seconds = watch_seconds or (lambda: random.randint(WATCH_MIN_SECONDS, 2 * WATCH_MIN_SECONDS))
        self._outage = Outage(log, f"watching {what}")
        self.what = what
        self.resource_version: str | None = None
        self.lists = 0  # requests sent, for tests and the benchmark
        self.watches = 0
        self._failing_since: float | None = None
        self._delay = 0.0
        self._deadline: asyncio.Timeout | None = None  # of the watch under way, for restart()
        self._restarting = False
        self._wake = asyncio.Event()  # restart() while waiting out a back-off: try now
        self._short_and_empty = False
        self._failures = Failures(f"{what.split()[0]}-watch", logger=log)

    def restart(self) -> None:
        """Drop the watch connection and watch again from the last resourceVersion: after an
        outage it may hang on a connection that no longer carries anything (HTTP/1.1 has no
        pings to notice), while the new watch replays what changed meanwhile."""
        self._wake.set()  # a watch waiting out its back-off (the API server was away) goes now
        if self._deadline is not None:
            self._restarting = True
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def failing_for(self) -> float:
        """Seconds since the list or watch last worked, 0 while it works."""
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    def _working(self) -> None:
        self._failing_since = None
        self._outage.recovered()

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            self._wake.clear()
            try:
                if self.resource_version is None:
                    self.lists += 1
                    listing = await self._api.get(self._path, fieldSelector=self._selector)
                    self._working()
                    await self._on_list(listing.get("items") or [])
                    self.resource_version = listing["metadata"]["resourceVersion"]
                try:
                    async with asyncio.timeout(None) as self._deadline:
                        await self._watch()
                except TimeoutError:
                    if not self._restarting:
                        raise
                    log.debug("%s: watching again from %s", self.what, self.resource_version)
                finally:
                    self._deadline, self._restarting = None, False
                if self._short_and_empty:  # as client-go's "very short watch": not a reason to spin
                    self._failed(ConnectionError("the watch ended at once without an event"), backoff)
                    await self._pause(backoff)
                    continue
                backoff.reset()  # the server ended the watch: go on from where it stopped
            except ApiError as exc:
                if exc.status == 410:
                    log.debug("%s: resourceVersion %s is gone (%s); listing again", self.what, self.resource_version, exc.message)
                    self.resource_version = None
                    continue
                self._failed(exc, backoff)
                await self._pause(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network trouble: watch again from the same version
                if isinstance(exc, PROGRAMMING_ERRORS):
                    self._failures.report(exc, what=f"watching {self.what}")  # a bug: its traceback once, and counted
                self._failed(exc, backoff)
                await self._pause(backoff)

    async def _pause(self, backoff: Backoff) -> None:
        """The back-off delay, cut short by restart() (the Lease got through again: the API
        server is back, and a watch that waits out up to 30 s more would keep pod status stale)."""
        try:
            async with asyncio.timeout(self._delay):
                await self._wake.wait()
            backoff.reset()
        except TimeoutError:
            pass

    def _failed(self, exc: BaseException, backoff: Backoff) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._delay = backoff.next_delay()
        self._outage.failed(explain(exc, server=self._api.server), retry_in=self._delay)

    async def _watch(self) -> None:
        self.watches += 1
        started, events = time.monotonic(), 0
        self._short_and_empty = False
        stream = self._api.watch(self._path, fieldSelector=self._selector, resourceVersion=self.resource_version,
                                 timeout_seconds=self._watch_seconds(), on_open=self._working)
        async for event in stream:
            kind, obj = event.get("type"), event.get("object") or {}
            if kind != "BOOKMARK":
                self._on_event(kind, obj)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = version
            events += 1
        self._short_and_empty = events == 0 and time.monotonic() - started < 1.0
