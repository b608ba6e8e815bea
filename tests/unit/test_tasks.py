"""Guarded tasks: a failure is logged once with its traceback and counted, a task that
should have run on is reported when it ends, and an owner's tasks are awaited, not only
cancelled, before it goes on."""

from __future__ import annotations

import asyncio
import logging

from vnode import tasks
from vnode.event_metrics import TASK_FAILURES


def _count(task: str) -> float:
    return TASK_FAILURES.labels(task=task)._value.get()


async def test_a_failing_task_is_logged_with_its_traceback_and_counted(caplog):
    async def buggy() -> None:
        await asyncio.sleep(0)
        {}["missing"]

    before = _count("t-buggy")
    with caplog.at_level(logging.DEBUG, logger="vnode.tasks"):
        task = tasks.spawn(buggy(), name="buggy of pod ns/p", task="t-buggy")
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "buggy of pod ns/p" in errors[0].getMessage()
    assert errors[0].exc_info and errors[0].exc_info[0] is KeyError, "logged with its traceback"
    assert _count("t-buggy") == before + 1


async def test_a_bug_repeated_by_a_loop_is_logged_once_and_counted_every_time(caplog):
    failures = tasks.Failures("t-loop")
    before = _count("t-loop")
    with caplog.at_level(logging.DEBUG, logger="vnode.tasks"):
        for _ in range(5):
            try:
                None.missing  # type: ignore[attr-defined]
            except AttributeError as exc:
                failures.report(exc)
        try:
            len(3)  # type: ignore[arg-type]
        except TypeError as exc:
            failures.report(exc)  # another bug: logged too
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in errors] == [AttributeError, TypeError]
    assert _count("t-loop") == before + 6


async def test_a_task_that_should_run_forever_is_reported_when_it_returns(caplog):
    async def gives_up() -> None:
        return None

    before = _count("t-forever")
    with caplog.at_level(logging.ERROR, logger="vnode.tasks"):
        await tasks.spawn(gives_up(), name="loop", task="t-forever", forever=True)
        await asyncio.sleep(0)
    assert _count("t-forever") == before + 1 and "ended although it should run" in caplog.text


async def test_cancellation_is_not_a_failure(caplog):
    before = _count("t-cancel")
    task = tasks.spawn(asyncio.sleep(30), name="sleeper", task="t-cancel", forever=True)
    await asyncio.sleep(0)
    await tasks.cancel_and_wait([task])
    await asyncio.sleep(0)
    assert task.cancelled() and _count("t-cancel") == before and not caplog.records


async def test_cancel_and_wait_returns_once_every_task_has_finished_its_cleanup():
    cleaned: list[str] = []

    async def with_cleanup(name: str) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # a cleanup that itself awaits (closing a connection, say)
            cleaned.append(name)

    running = [tasks.spawn(with_cleanup(n), name=n, task="t-cleanup") for n in ("a", "b")]
    await asyncio.sleep(0)
    await tasks.cancel_and_wait(running)
    assert sorted(cleaned) == ["a", "b"] and all(t.done() for t in running)


async def test_a_task_that_ignores_its_cancellation_is_named_after_the_timeout(caplog):
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation until released

    task = tasks.spawn(stubborn(), name="stubborn", task="t-stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="vnode.tasks"):
        await tasks.cancel_and_wait([task], timeout=0.1)
    assert not task.done() and "'stubborn' did not stop within" in caplog.text
    release.set()
    await task
