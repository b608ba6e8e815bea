"""Startup, readiness and liveness probes, run with the kubelet's semantics.

initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold and
failureThreshold mean what they mean on any node; readiness and liveness wait for the
startup probe. httpGet and tcpSocket are supported. exec probes would let anyone who can
create a pod run a command on the Mac, so they are refused unless the operator enables
them (--allow-exec-probes); grpc is not supported. Each attempt's result and duration go
to the container's ProbeRecorder (probe_stats.py) when it has one. An attempt that fails by
a bug in vnode (KeyError, TypeError, ...) is thrown away as the kubelet throws away a
prober error: no result, logged once and counted (vnode.tasks), the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from vnode import tasks as guarded
from vnode.pods.probe_stats import FAILED, SUCCESSFUL, UNKNOWN, ProbeRecorder
from vnode.provider.spec import ContainerIn, Probe
from vnode.provider.subproc import communicate

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported probe"  # the detail of an attempt vnode could not make at all


MAX_BODY_BYTES = 10 * 1024  # the kubelet's maxRespBodyLength: a probe reads no more of a response


class ProbeSpecError(Exception):
    reason = "InvalidProbe"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def resolve_port(port: object, container: ContainerIn) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.ports:
        if p.name == port:
            return p.container_port
    raise ProbeSpecError(f"probe port {port!r} is not a number and no containerPort is named so")


def validate_probes(container: ContainerIn, *, allow_exec: bool) -> None:
    """Refuse probes vnode cannot run, before the container starts."""
    for kind, probe in (("startup", container.startup_probe), ("readiness", container.readiness_probe), ("liveness", container.liveness_probe)):
        if probe is None:
            continue
        handlers = [h for h in ("http_get", "tcp_socket", "exec", "grpc") if getattr(probe, h) is not None]
        if len(handlers) != 1:
            raise ProbeSpecError(f"{kind}Probe of container {container.name} must have exactly one handler (httpGet, tcpSocket)")
        if probe.exec is not None and not allow_exec:
            raise ProbeSpecError(
                f"{kind}Probe of container {container.name} uses exec, which would run a command on the Mac node; "
                "use httpGet (llama-server: path /health) or tcpSocket, or ask the operator for --allow-exec-probes"
            )
        if probe.grpc is not None:
            raise ProbeSpecError(f"{kind}Probe of container {container.name}: grpc probes are not supported; use httpGet /health")
        if probe.period_seconds < 1 or probe.timeout_seconds < 1 or probe.failure_threshold < 1 or probe.success_threshold < 1:
            raise ProbeSpecError(f"{kind}Probe of container {container.name}: periodSeconds, timeoutSeconds and thresholds must be >= 1")
        if probe.http_get is not None:
            resolve_port(probe.http_get.get("port"), container)
        if probe.tcp_socket is not None:
            resolve_port(probe.tcp_socket.get("port"), container)


RunExec = Callable[[list[str], float], Awaitable[tuple[int, str]]]


async def run_command(command: list[str], timeout: float, *, cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """One exec probe's command (only with --allow-exec-probes): exit code and output; past
    the timeout its whole process group is killed and TimeoutError raised."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    out, _ = await communicate(proc, timeout, group=True)  # the timeout or the container stopping: nothing left running
    return proc.returncode or 0, out.decode(errors="replace")


async def probe_once(
    probe: Probe, *, container: ContainerIn, host: str, session: aiohttp.ClientSession,
    run_exec: RunExec | None = None,
) -> tuple[bool, str]:
    """(success, detail) of one probe attempt."""
    timeout = float(probe.timeout_seconds)
    try:
        if probe.http_get is not None:
            spec = probe.http_get
            port = resolve_port(spec.get("port"), container)
            scheme = (spec.get("scheme") or "HTTP").lower()
            target = spec.get("host") or host
            path = spec.get("path") or "/"
            headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
            url = f"{scheme}://{target}:{port}{path if path.startswith('/') else '/' + path}"
            async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), ssl=False, allow_redirects=False) as resp:
                await resp.content.read(MAX_BODY_BYTES)  # as the kubelet: the rest is never read
                if 200 <= resp.status < 400:
                    return True, ""
                return False, f"HTTP probe failed with statuscode: {resp.status}"
        if probe.tcp_socket is not None:
            port = resolve_port(probe.tcp_socket.get("port"), container)
            target = probe.tcp_socket.get("host") or host
            _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout)
            writer.close()
            await writer.wait_closed()
            return True, ""
        if probe.exec is not None and run_exec is not None:
            code, out = await run_exec(list(probe.exec.get("command") or []), timeout)
            return code == 0, "" if code == 0 else f"command exited {code}: {out[-200:]}"
    except TimeoutError:
        return False, f"probe timed out after {timeout:.0f}s"
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"probe failed: {exc}"
    return False, UNSUPPORTED


class ContainerProber:
    """The three probes of one running container instance."""

    def __init__(
        self, container: ContainerIn, *, host: str, session: aiohttp.ClientSession,
        on_change: Callable[[], None], on_unhealthy: Callable[[str, str], Awaitable[None]],
        run_exec: RunExec | None = None, stats: ProbeRecorder | None = None, resume: tuple[bool, bool] | None = None,
    ) -> None:
        self.container, self.host, self.session, self._run_exec = container, host, session, run_exec
        self._stats = stats
        self._on_change, self._on_unhealthy = on_change, on_unhealthy
        self.started = container.startup_probe is None
        self.ready = container.readiness_probe is None
        if resume is not None:
            # (ready, started) as the pod showed them for an adopted server (an agent restart):
            # kept until the probes, with their thresholds, say otherwise; a started container
            # is not startup-probed again.
            self.started = self.started or resume[1]
            self.ready = self.ready or (resume[0] and self.started)
        self.failed = asyncio.Event()  # startup or liveness gave up: restart the container
        self.failure = ""
        self._bugs = guarded.Failures("probe-attempt", logger=log)
        self._nudge = asyncio.Event()

    def nudge(self) -> None:
        """The server just said it serves (its log): a startup or readiness probe that is
        waiting out its period runs now, once. The kubelet cannot know this moment; without
        it Ready lags the server by up to periodSeconds. Nothing when already Ready."""
        if not (self.started and self.ready):
            self._nudge.set()

    async def _pause(self, seconds: float) -> None:
        """The period, or less if nudged meanwhile."""
        waits = [asyncio.ensure_future(asyncio.sleep(seconds)), asyncio.ensure_future(self._nudge.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def run(self) -> None:
        c = self.container
        if c.startup_probe is not None and not self.started:
            if not await self._until(c.startup_probe, "Startup"):
                return
            self.started = True
            self._on_change()
        loops = []
        if c.readiness_probe is not None:
            loops.append(guarded.spawn(self._readiness(c.readiness_probe), name=f"readiness probe {c.name}", task="readiness-probe",
                                       forever=True, logger=log))
        if c.liveness_probe is not None:
            loops.append(guarded.spawn(self._liveness(c.liveness_probe), name=f"liveness probe {c.name}", task="liveness-probe",
                                       logger=log))
        if not loops:
            self._on_change()
            return
        try:
            # Not gather(): a loop that failed must not leave its sibling running unowned.
            await asyncio.wait(loops)
        finally:
            await guarded.cancel_and_wait(loops)

    async def _attempt(self, probe: Probe, kind: str) -> tuple[bool, str] | None:
        """One attempt, recorded; None if vnode itself failed making it (no result)."""
        if kind != "Liveness":
            self._nudge.clear()  # only news that comes while a probe waits brings it forward
        started = time.monotonic()
        try:
            ok, detail = await probe_once(probe, container=self.container, host=self.host, session=self.session,
                                          run_exec=self._run_exec)
        except guarded.PROGRAMMING_ERRORS as exc:
            self._bugs.report(exc, what=f"{kind} probe of container {self.container.name}")
            return None
        if self._stats is not None:
            result = SUCCESSFUL if ok else UNKNOWN if detail == UNSUPPORTED else FAILED
            self._stats.record(kind, result, time.monotonic() - started)
        return ok, detail

    async def _until(self, probe: Probe, kind: str) -> bool:
        """Startup: probe until success (True) or failureThreshold failures (False)."""
        await asyncio.sleep(probe.initial_delay_seconds)
        failures = 0
        while True:
            result = await self._attempt(probe, kind)
            if result is None:
                await self._pause(probe.period_seconds)
                continue
            ok, detail = result
            if ok:
                return True
            failures += 1
            if failures >= probe.failure_threshold:
                await self._give_up(kind, detail)
                return False
            await self._pause(probe.period_seconds)

    async def _give_up(self, kind: str, detail: str) -> None:
        """Startup or liveness failed failureThreshold times: the container is restarted."""
        self.failure = f"{kind} probe failed: {detail}"
        await self._on_unhealthy(kind, detail)
        self.failed.set()

    async def _readiness(self, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay_seconds)
        successes = failures = 0
        while True:
            result = await self._attempt(probe, "Readiness")
            if result is None:
                await self._pause(probe.period_seconds)
                continue
            ok, detail = result
            if ok:
                successes, failures = successes + 1, 0
                if not self.ready and successes >= probe.success_threshold:
                    self.ready = True
                    self._on_change()
            else:
                successes, failures = 0, failures + 1
                if self.ready and failures >= probe.failure_threshold:
                    self.ready = False
                    self._on_change()
                if failures == probe.failure_threshold:
                    await self._on_unhealthy("Readiness", detail)
            await self._pause(probe.period_seconds)

    async def _liveness(self, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay_seconds)
        failures = 0
        while True:
            result = await self._attempt(probe, "Liveness")
            if result is None:
                await asyncio.sleep(probe.period_seconds)
                continue
            ok, detail = result
            failures = 0 if ok else failures + 1
            if failures >= probe.failure_threshold:
                await self._give_up("Liveness", detail)
                return
            await asyncio.sleep(probe.period_seconds)
