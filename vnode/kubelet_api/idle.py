"""A timer that fires once nothing happened for a while: the streaming connections' idle
timeout (the kubelet's --streaming-connection-idle-timeout).

`touch()` is a float store, cheap enough to call per frame; the timer re-arms itself
lazily instead of being rescheduled on every touch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleTimer:
    def __init__(self, timeout: float | None, expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout, self._expire = timeout, expire
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None and timeout > 0:
            self._handle = self._loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        assert self._timeout is not None
        left = self._last + self._timeout - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self._handle = None
        self._expire()
