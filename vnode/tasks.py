"""Inner tasks that cannot die unnoticed or outlive their owner (kopf's guarded tasks).

asyncio keeps only a weak reference to a task and reports an exception nobody retrieved at
garbage collection, if ever: a probe loop dead of a bug would just stop probing. `spawn`
logs and counts (vnode_task_failures_total{task}) a task that fails or ends too early;
`cancel_and_wait` ends an owner's tasks; `Failures` serves a loop that survives a bad round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from vnode.event_metrics import TASK_FAILURES

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors no retry can cure: a bug in vnode, not the network or the host.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError)

_running: set[asyncio.Task] = set()  # the strong references asyncio does not keep


class Failures:
    """The failures of one loop or task kind: each is counted; the first of each kind (its
    type and where it was raised) is logged at ERROR with its traceback, later ones at DEBUG,
    so a bug repeated every round neither floods the log nor goes unseen."""

    def __init__(self, task: str, *, logger: logging.Logger | None = None) -> None:
        self.task = task
        self._log = logger or log
        self._seen: set[tuple[type[BaseException], str, int]] = set()

    def report(self, exc: BaseException, *, what: str | None = None) -> None:
        TASK_FAILURES.labels(task=self.task).inc()
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        key = (type(exc), tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        if key in self._seen:
            self._log.debug("%s failed again: %r", what or self.task, exc)
            return
        self._seen.add(key)
        self._log.error("%s failed: %r (counted in vnode_task_failures_total{task=%r}; repeats are not logged again)",
                        what or self.task, exc, self.task, exc_info=exc)


_failures: dict[str, Failures] = {}


def spawn(coro: Coroutine[Any, Any, T], *, name: str, task: str, forever: bool = False,
          logger: logging.Logger | None = None) -> asyncio.Task[T]:
    """asyncio.create_task, guarded: `task` is the metric label (a kind, not a pod), `name`
    the task's name in logs. With `forever`, returning at all is a failure too."""
    created = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(created)
    failures = _failures.setdefault(task, Failures(task, logger=logger))

    def done(t: asyncio.Task) -> None:
        _running.discard(t)
        if t.cancelled():
            return
        exc = t.exception()  # retrieved here, so asyncio never reports it at garbage collection
        if exc is not None:
            failures.report(exc, what=f"task {name!r}")
        elif forever:
            TASK_FAILURES.labels(task=task).inc()
            (logger or log).error("task %r ended although it should run until cancelled", name)

    created.add_done_callback(done)
    return created


async def cancel_and_wait(tasks: Iterable[asyncio.Future], *, timeout: float | None = None) -> None:
    """Cancel `tasks` and wait until each has ended (their failures are the guard's to report).
    A task still running after `timeout` seconds (it swallowed the cancellation) is logged."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=timeout)
    for t in still:
        log.warning("task %r did not stop within %.0fs of its cancellation", t.get_name() if isinstance(t, asyncio.Task) else t, timeout)
