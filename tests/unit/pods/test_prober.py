"""exec probes, when the operator allows them: run in the container's directory with its
environment, bounded by timeoutSeconds, and fed to the kubelet's probe semantics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from pathlib import Path

import psutil
import pytest

from vnode.pods.probe_stats import ProbeStats
from vnode.pods.prober import ContainerProber, probe_once, run_command
from vnode.provider.spec import ContainerIn, Probe

pytestmark = pytest.mark.asyncio


def _probe(command: list[str], **extra) -> Probe:
    return Probe.model_validate({"exec": {"command": command}, "timeoutSeconds": 1, **extra})


def _container(**probes) -> ContainerIn:
    return ContainerIn.model_validate({"name": "server", "image": "llama.cpp", **probes})


async def _once(probe: Probe, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[bool, str]:
    run = functools.partial(run_command, cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", **(env or {})})
    return await probe_once(probe, container=_container(), host="127.0.0.1", session=None, run_exec=run)  # type: ignore[arg-type]


async def test_exit_code_decides_and_runs_where_the_container_does(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    assert await _once(_probe(["sh", "-c", 'test -f ready && test "$MODEL" = gemma']), tmp_path, {"MODEL": "gemma"}) == (True, "")
    ok, detail = await _once(_probe(["sh", "-c", "echo not yet; exit 3"]), tmp_path)
    assert not ok and detail == "command exited 3: not yet\n"


async def test_a_missing_command_is_a_failed_probe(tmp_path: Path) -> None:
    ok, detail = await _once(_probe(["no-such-command-here"]), tmp_path)
    assert not ok and "probe failed" in detail


async def test_timeout_kills_the_command_group(tmp_path: Path) -> None:
    """Both children of the probe's shell, the background one and the foreground one, are
    killed with it: each writes its pid, and the test checks those processes, not the shell."""
    started = time.monotonic()
    script = 'sleep 30 & echo $! > bg.pid; sh -c \'echo $$ > fg.pid; exec sleep 30\'; echo never'
    ok, detail = await _once(_probe(["sh", "-c", script]), tmp_path)
    assert not ok and detail == "probe timed out after 1s"
    assert time.monotonic() - started < 5
    children = [int((tmp_path / name).read_text()) for name in ("bg.pid", "fg.pid")]
    for _ in range(20):  # SIGKILL is delivered at once; the reaping by init may take a moment
        if not [pid for pid in children if _running(pid)]:
            break
        await asyncio.sleep(0.05)
    assert not [pid for pid in children if _running(pid)], "the probe's process group is gone, its children too"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_without_the_operators_consent_an_exec_probe_never_runs(tmp_path: Path) -> None:
    ok, detail = await probe_once(_probe(["touch", str(tmp_path / "ran")]), container=_container(), host="127.0.0.1",
                                  session=None)  # type: ignore[arg-type]
    assert (ok, detail) == (False, "unsupported probe") and not (tmp_path / "ran").exists()


async def test_readiness_from_an_exec_probe(tmp_path: Path) -> None:
    changes: list[bool] = []

    async def unhealthy(kind: str, detail: str) -> None:
        pass

    container = _container(readinessProbe={"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1, "timeoutSeconds": 1})
    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: changes.append(prober.ready),  # type: ignore[arg-type]
                             on_unhealthy=unhealthy, run_exec=functools.partial(run_command, cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"}))
    task = asyncio.create_task(prober.run())
    try:
        await asyncio.sleep(0.3)
        assert not prober.ready
        (tmp_path / "ready").write_text("")
        for _ in range(30):
            if prober.ready:
                break
            await asyncio.sleep(0.1)
        assert prober.ready and changes == [True]
    finally:
        task.cancel()


async def test_every_attempt_is_recorded_with_its_probe_type_and_result(tmp_path: Path) -> None:
    async def unhealthy(kind: str, detail: str) -> None:
        pass

    stats = ProbeStats()
    pod = {"metadata": {"name": "gemma", "namespace": "llm", "uid": "u1"}}
    container = _container(readinessProbe={"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1, "timeoutSeconds": 1})
    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: None,  # type: ignore[arg-type]
                             on_unhealthy=unhealthy, run_exec=functools.partial(run_command, cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"}),
                             stats=stats.recorder(pod, "server"))
    task = asyncio.create_task(prober.run())
    try:
        for _ in range(50):
            if stats.totals().get(("Readiness", "failed")):
                break
            await asyncio.sleep(0.05)
        (tmp_path / "ready").write_text("")
        for _ in range(30):
            if prober.ready:
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
    assert prober.ready
    assert stats.totals() == {("Readiness", "failed"): 1, ("Readiness", "successful"): 1}


async def test_an_attempt_vnode_cannot_make_is_unknown() -> None:
    async def unhealthy(kind: str, detail: str) -> None:
        pass

    stats = ProbeStats()
    container = _container(livenessProbe={"exec": {"command": ["true"]}, "failureThreshold": 1})
    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: None,  # type: ignore[arg-type]
                             on_unhealthy=unhealthy, stats=stats.recorder({"metadata": {"name": "p", "namespace": "n", "uid": "u"}}, "c"))
    await asyncio.wait_for(prober.run(), 5)
    assert prober.failed.is_set() and stats.totals() == {("Liveness", "unknown"): 1}



async def test_a_bug_in_an_attempt_is_logged_once_and_probing_goes_on(monkeypatch, caplog) -> None:
    """As the kubelet throws away a prober error: no result (readiness does not flip), the
    traceback once at ERROR, every such attempt counted, and the next attempts still run."""
    from vnode.event_metrics import TASK_FAILURES
    from vnode.pods import prober as prober_module

    attempts = []

    async def buggy_then_fine(probe, **_kw):
        attempts.append(1)
        if len(attempts) <= 3:
            raise KeyError("port")
        return True, ""

    monkeypatch.setattr(prober_module, "probe_once", buggy_then_fine)
    before = TASK_FAILURES.labels(task="probe-attempt")._value.get()
    changes: list[bool] = []

    async def unhealthy(kind: str, detail: str) -> None:
        changes.append(False)

    container = _container(readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 1})
    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: changes.append(prober.ready),  # type: ignore[arg-type]
                             on_unhealthy=unhealthy)
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep)
    with caplog.at_level("DEBUG", logger="vnode.pods.prober"):
        task = asyncio.create_task(prober.run())
        try:
            for _ in range(200):
                if prober.ready:
                    break
                await _real_sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert prober.ready and changes == [True], "the failed attempts were no results, not failures"
    errors = [r for r in caplog.records if r.levelno >= 40]
    assert len(errors) == 1 and errors[0].exc_info[0] is KeyError
    assert TASK_FAILURES.labels(task="probe-attempt")._value.get() == before + 3


_real_sleep = asyncio.sleep


async def _fast_sleep(delay: float, result=None):
    return await _real_sleep(min(delay, 0.01), result)


async def test_a_probe_loop_that_dies_leaves_no_sibling_running(monkeypatch) -> None:
    """Readiness dies of a bug: liveness goes on under run(), and when run() is cancelled
    both are gone (with gather() the sibling would keep probing, owned by nobody)."""
    attempts: list[str] = []

    async def counting(probe, **_kw):
        attempts.append("probe")
        return True, ""

    async def broken_readiness(self, probe):
        raise TypeError("a bug")

    from vnode.pods import prober as prober_module

    monkeypatch.setattr(prober_module, "probe_once", counting)
    monkeypatch.setattr(ContainerProber, "_readiness", broken_readiness)
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep)
    container = _container(readinessProbe={"exec": {"command": ["true"]}}, livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1})

    async def unhealthy(kind: str, detail: str) -> None:
        pass

    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: None,  # type: ignore[arg-type]
                             on_unhealthy=unhealthy)
    task = asyncio.create_task(prober.run())
    await _real_sleep(0.1)
    assert attempts, "liveness runs on after readiness died"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    seen = len(attempts)
    await _real_sleep(0.1)
    assert len(attempts) == seen, "no probe loop runs after its prober was cancelled"


@pytest.mark.parametrize("kind", ["readinessProbe", "startupProbe"])
async def test_a_nudge_brings_the_next_probe_forward_once(monkeypatch, kind) -> None:
    """The server says it serves: the probe waiting out its 30 s period runs now, and the
    period holds again after that one extra attempt."""
    from vnode.pods import prober as prober_module

    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def loading_then_up(probe, **_kw):
        attempts.append(loop.time())
        return len(attempts) >= 2, "" if len(attempts) >= 2 else "HTTP probe failed with statuscode: 503"

    monkeypatch.setattr(prober_module, "probe_once", loading_then_up)
    container = _container(**{kind: {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 30}})
    prober = ContainerProber(container, host="127.0.0.1", session=None, on_change=lambda: None,  # type: ignore[arg-type]
                             on_unhealthy=lambda kind, detail: asyncio.sleep(0))
    task = asyncio.create_task(prober.run())
    try:
        await _real_sleep(0.2)
        assert len(attempts) == 1
        prober.nudge()
        for _ in range(100):
            if prober.started and prober.ready:
                break
            await _real_sleep(0.01)
        assert prober.started and prober.ready, attempts
        assert attempts[1] - attempts[0] < 1.0
        prober.nudge()  # nothing is waiting for it any more: no extra attempt
        await _real_sleep(0.1)
        assert len(attempts) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_http_probe_reads_at_most_10_kib_of_an_endless_body() -> None:
    """A server answering /health with an endless body: the probe succeeds at once instead of
    reading until its timeout (or the agent's memory) runs out."""
    import aiohttp
    from aiohttp import web

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while True:
                await resp.write(chunk)
        return resp

    app = web.Application()
    app.router.add_get("/health", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    probe = Probe.model_validate({"httpGet": {"path": "/health", "port": port}, "timeoutSeconds": 5})
    try:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ok, detail = await probe_once(probe, container=_container(), host="127.0.0.1", session=session)
            assert (ok, detail) == (True, "") and loop.time() - started < 2.0
    finally:
        await runner.cleanup()
