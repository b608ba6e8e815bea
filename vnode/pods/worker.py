"""One worker per pod: from a bound Pod to running servers, and back to nothing.

A PodWorker owns its pod's containers (one ContainerRunner each) and is the only code
that starts or stops them. A container goes: translate -> environment -> model in the
store -> memory estimate and admission -> start (or adopt after an agent restart) ->
probes -> exit -> restart by restartPolicy with the kubelet's back-off. Every decision a
user may ask about leaves a container state reason, a message and an Event. Inner tasks are
guarded (vnode.tasks): cancelled and awaited when their instance or pod ends, and a server
whose shim died is stopped before the container starts again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from vnode import tasks as guarded
from vnode.kubeclient import ApiError, KubeClient
from vnode.pods import drain
from vnode.pods.admission import AdmissionError, MemoryBudget, PortRegistry
from vnode.pods.env import EnvError, EnvResolver, command_env
from vnode.pods.events import EventRecorder
from vnode.pods.probe_stats import ProbeStats
from vnode.pods.prober import ContainerProber, ProbeSpecError, run_command, validate_probes
from vnode.pods.status import EVICTED, ContainerView, StatusManager, now_rfc3339, pod_status
from vnode.provider import logs
from vnode.provider.estimate import EstimateError, MemoryEstimate, estimate_in_subprocess
from vnode.provider.models import ModelError, ModelStore
from vnode.provider.spec import ContainerIn, LaunchSpec, PodSpecIn
from vnode.provider.supervisor import ExitInfo, Instance, Supervisor
from vnode.provider.translate import RuntimeTable, TranslateError, translate

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0  # a container that ran this long restarts without back-off
MODEL_RETRY_MAX = 300.0
CONFIG_RETRY_INITIAL = 1.0
CONFIG_RETRY_MAX = 60.0


@dataclass
class PodContext:
    """Everything a worker needs from the agent, passed down once."""

    api: KubeClient
    node_name: str
    pod_ip: str
    status: StatusManager
    events: EventRecorder
    supervisor: Supervisor
    models: ModelStore
    runtime: RuntimeTable
    budget: MemoryBudget
    ports: PortRegistry
    env: EnvResolver
    http: aiohttp.ClientSession
    model_store: Path
    allow_exec_probes: bool = False
    drain_quiet_seconds: float = 2.0  # idle time a terminating server needs before SIGTERM (drain.py)
    probe_stats: ProbeStats | None = None  # each probe attempt, for /metrics/probes


def _estimate_params(launch: LaunchSpec) -> dict:
    return {"ctx_size": launch.ctx_size, "parallel": launch.parallel, "cache_type_k": launch.cache_type_k,
            "cache_type_v": launch.cache_type_v, "kv_unified": launch.kv_unified, "flash_attn": launch.flash_attn,
            "swa_full": launch.swa_full, **({"n_ubatch": launch.n_ubatch} if launch.n_ubatch else {})}


def _held(launch: LaunchSpec, estimate_bytes: int) -> int:
    """What the budget holds for the server: its estimate and a prompt cache sized by --cache-ram."""
    return estimate_bytes + (launch.cache_ram_mib or 0) * 1024 * 1024


def _cache_ram(launch: LaunchSpec) -> str:
    return f" + prompt cache {launch.cache_ram_mib} MiB (--cache-ram)" if launch.cache_ram_mib else ""


class ContainerFailed(Exception):
    """The container cannot start as specified; it waits with this reason (and, if
    `retry`, tries again later because the cause may go away)."""

    def __init__(self, reason: str, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


class PodWorker:
    def __init__(self, ctx: PodContext, pod: dict, *, adopted: dict[str, Instance] | None = None, terminal: bool = False) -> None:
        self.ctx = ctx
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.ref = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.adopted = adopted or {}
        self.failed: tuple[str, str] | None = None
        self.views: dict[str, ContainerView] = {}
        self.runners: dict[str, ContainerRunner] = {}
        self.deleting = asyncio.Event()
        self.gone = False  # the Pod object no longer exists
        self.done = asyncio.Event()
        self.terminal = terminal  # finished before this agent saw it: only the deletion is left
        self.updated = asyncio.Event()  # set on every update from the API server
        self._loops: list[asyncio.Task] = []  # the container loops, while they run
        status = pod.get("status") or {}
        self.start_time = status.get("startTime") or now_rfc3339()

    # -- from the controller -------------------------------------------------------------
    def update(self, pod: dict) -> None:
        self.pod = pod
        self.updated.set()
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()
        elif self.views and (pod.get("spec") or {}).get("readinessGates"):
            # Another writer may have set a gate's condition: Ready is re-evaluated (the
            # status manager patches only if that changed anything).
            self.publish()

    def object_deleted(self) -> None:
        self.gone = True
        self.deleting.set()

    # -- status --------------------------------------------------------------------------
    def publish(self) -> None:
        if self.gone:
            return
        views = [self.views[c] for c in self.views]
        self.ctx.status.set(self.pod, pod_status(self.pod, views, pod_ip=self.ctx.pod_ip, start_time=self.start_time, failed=self.failed))

    async def event(self, kind: str, reason: str, message: str, *, container: str | None = None) -> None:
        if not self.gone:
            field = f"spec.containers{{{container}}}" if container else None
            await self.ctx.events.pod_event(self.pod, kind=kind, reason=reason, message=message, field_path=field)

    # -- from the eviction manager --------------------------------------------------------
    async def evict(self, message: str, *, grace: float) -> None:
        """Node-pressure eviction (eviction.py): the pod fails with reason Evicted. The
        kubelet does not delete an evicted pod, its controller (a ReplicaSet, say) replaces
        it; budget and ports are given back at once so that replacement fits here."""
        await self.fail(EVICTED, message, grace=grace)

    async def fail(self, reason: str, message: str, *, grace: float) -> None:
        """End the pod as Failed with `reason` (eviction, active deadline): its containers
        stop within `grace` and never restart, and the worker stays until the pod is
        deleted."""
        if self.failed is not None or self.deleting.is_set():
            return
        self.failed = (reason, message)
        await self.event("Warning", reason, message)
        # The container loops go first, as on deletion, so nothing restarts or starts;
        # `_live` sees `failed` and waits for the deletion.
        await guarded.cancel_and_wait(list(self._loops))
        await asyncio.gather(*(r.stop(grace=grace) for r in self.runners.values()))
        self.ctx.budget.release_pod(self.uid)
        self.ctx.ports.release_pod(self.uid)
        self.publish()
        await self.ctx.status.flush(self.uid)
        log.info("pod %s failed with %s (grace period %.0fs): %s", self.ref, reason, grace, message)

    async def _active_deadline(self, spec: PodSpecIn) -> None:
        """spec.activeDeadlineSeconds, counted from the pod's startTime as the kubelet
        does; the field may be updated (shortened) while the pod runs."""
        started = dt.datetime.fromisoformat(self.start_time.replace("Z", "+00:00")).timestamp()
        while True:
            deadline = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
            left = None if deadline is None else started + float(deadline) - time.time()
            if left is not None and left <= 0:
                await self.fail("DeadlineExceeded", "Pod was active on the node longer than the specified deadline",
                                grace=self._grace(spec))
                return
            self.updated.clear()
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that meets a set()
                async with asyncio.timeout(left):
                    await self.updated.wait()
            except TimeoutError:
                pass

    # -- the pod's life ------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._live()
        finally:
            self.done.set()

    async def _live(self) -> None:
        if self.terminal:
            await self.deleting.wait()
            await self._finish([], keep_status=True)
            return
        try:
            spec = PodSpecIn.model_validate(self.pod["spec"])
        except ValidationError as exc:
            first = exc.errors()[0]
            self.failed = ("InvalidPodSpec", f"vnode cannot run this pod: {'.'.join(map(str, first['loc']))}: {first['msg']}")
            self.publish()
            await self.event("Warning", "InvalidPodSpec", self.failed[1])
            await self.deleting.wait()
            await self._finish([])
            return
        previous = {c["name"]: c for c in (self.pod.get("status") or {}).get("containerStatuses") or []}
        for container in spec.containers:
            view = ContainerView(name=container.name, image=container.image)
            if container.name in previous:
                view.restart_count = int(previous[container.name].get("restartCount") or 0)
                view.last_state = previous[container.name].get("lastState") or {}
                _resume_view(view, previous[container.name], self.adopted.get(container.name), self.ctx.supervisor)
            self.views[container.name] = view
        if spec.init_containers:
            self.failed = ("UnsupportedInitContainers", "initContainers are not supported on the Mac node yet; "
                           "fetch models with -hf or a hostPath volume under the model store instead")
        self.publish()
        if self.failed:
            await self.event("Warning", self.failed[0], self.failed[1])
            await self.deleting.wait()
            await self._finish([])
            return
        for container in spec.containers:
            self.runners[container.name] = ContainerRunner(self, spec, container, adopted=self.adopted.get(container.name))
        tasks = [guarded.spawn(r.run(), name=f"container {self.ref}/{n}", task="container", logger=log)
                 for n, r in self.runners.items()]
        self._loops = tasks
        deadline = guarded.spawn(self._active_deadline(spec), name=f"deadline {self.ref}", task="active-deadline", logger=log)
        deleting = guarded.spawn(self.deleting.wait(), name=f"deletion {self.ref}", task="deletion-watch", logger=log)
        try:
            while True:
                done, _ = await asyncio.wait([deleting, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if deleting in done:
                    break
                if self.failed or all(t.done() for t in tasks):
                    # Admission failed, or every container ended for good: stay until deleted.
                    await guarded.cancel_and_wait(tasks)
                    await self.deleting.wait()
                    break
                tasks = [t for t in tasks if not t.done()]
        finally:
            await guarded.cancel_and_wait([deleting, deadline, *tasks])
            self._loops = []
        await self._finish(list(self.runners.values()), grace=self._grace(spec))

    def _grace(self, spec: PodSpecIn) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        return float(grace if grace is not None else spec.termination_grace_period_seconds)

    async def _finish(self, runners: list[ContainerRunner], *, grace: float = 0.0, keep_status: bool = False) -> None:
        """Graceful deletion: stop every container, write terminal status, then DELETE with
        gracePeriodSeconds=0 and a UID precondition (the handshake drain and evictions need)."""
        if runners:
            await asyncio.gather(*(r.stop(grace=grace) for r in runners))
            await self.event("Normal", "Killing", f"Stopped all containers (grace period {grace:.0f}s)")
        self.ctx.budget.release_pod(self.uid)
        self.ctx.ports.release_pod(self.uid)
        if not self.gone:
            if not keep_status:
                self.publish()
                await self.ctx.status.flush(self.uid)
            meta = self.pod["metadata"]
            try:
                await self.ctx.api.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.warning("final delete of pod %s failed: %s", self.ref, exc.message)
        self.ctx.status.forget(self.uid)
        await self.ctx.supervisor.remove_pod(self.uid)
        log.info("pod %s is gone", self.ref)


class ContainerRunner:
    """One container of a pod: prepared once, then run and restarted until the pod goes."""

    def __init__(self, worker: PodWorker, spec: PodSpecIn, container: ContainerIn, *, adopted: Instance | None) -> None:
        self.w, self.spec, self.c = worker, spec, container
        self.view = worker.views[container.name]
        self.adopted = adopted
        self.instance: Instance | None = None
        self.launch: LaunchSpec | None = None
        self.prober: ContainerProber | None = None
        self._posting: set[asyncio.Task] = set()  # download-progress Events still being posted
        # An adopted server the pod showed running (this instance): its status stays as it was
        # while the runner prepares and until a probe says otherwise, so an agent restart
        # neither flips the pod to ContainerCreating nor takes it out of its Services.
        self._resume = adopted is not None and "running" in self.view.state and self.view.container_id == adopted.container_id

    @property
    def ctx(self) -> PodContext:
        return self.w.ctx

    def _waiting(self, reason: str, message: str = "") -> None:
        self.view.state = {"waiting": {"reason": reason, "message": message} if message else {"reason": reason}}
        self.view.ready = False
        self.w.publish()

    async def run(self) -> None:
        delay = CONFIG_RETRY_INITIAL
        while True:
            try:
                launch, model_path = await self._prepare()
                break
            except ContainerFailed as exc:
                self._waiting(exc.reason, exc.message)
                await self.w.event("Warning", "Failed", f"{exc.reason}: {exc.message}", container=self.c.name)
                if not exc.retry:
                    return
                # A Secret or ConfigMap may appear later, and the Node authorizer learns of a
                # new pod's references asynchronously: retry like the kubelet's pod sync.
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONFIG_RETRY_MAX)
            except AdmissionError as exc:
                self.w.failed = (exc.reason, exc.message)
                self._waiting(exc.reason, exc.message)
                await self.w.event("Warning", exc.reason, exc.message)
                return
        self.launch = launch
        await self._loop(launch, model_path)

    # -- preparing -----------------------------------------------------------------------
    async def _prepare(self) -> tuple[LaunchSpec, Path | None]:
        w, c = self.w, self.c
        meta = w.pod["metadata"]
        try:
            validate_probes(c, allow_exec=self.ctx.allow_exec_probes)
            env = await self.ctx.env.resolve(w.pod, c, pod_ip=self.ctx.pod_ip, node_name=self.ctx.node_name)
            launch = translate(
                namespace=meta["namespace"], pod_name=meta["name"], pod_uid=w.uid, spec=self.spec, container=c, env=env,
                runtime=self.ctx.runtime, pod_ip=self.ctx.pod_ip, model_store=self.ctx.model_store,
                sandbox=self.ctx.supervisor.sandbox(w.uid),
            )
        except EnvError as exc:
            raise ContainerFailed(exc.reason, exc.message, retry=True) from None
        except (TranslateError, ProbeSpecError) as exc:
            raise ContainerFailed(exc.reason, exc.message) from None
        adopted_alive = self.adopted is not None and self.ctx.supervisor.alive(self.adopted)
        self.ctx.ports.claim(launch.port, pod_uid=w.uid, pod_ref=w.ref, probe_socket=not adopted_alive)
        if launch.model is not None and not adopted_alive:
            await self._admit_from_header(launch)
        model_path = await self._model(launch, quiet=self._resume)
        if model_path is not None:
            try:
                estimate = await estimate_in_subprocess(model_path, **_estimate_params(launch))
            except EstimateError as exc:
                raise ContainerFailed(exc.reason, exc.message) from None
            self.ctx.budget.reserve((w.uid, c.name), _held(launch, estimate.total_bytes),
                                    what=f"container {c.name} ({estimate.describe()}{_cache_ram(launch)})")
        return launch, model_path

    async def _admit_from_header(self, launch: LaunchSpec) -> None:
        """Refuse a model too big for the budget before downloading it: its GGUF header,
        fetched with Range requests, is enough for the estimate (AdmissionError
        InsufficientMemory). Without a header the estimate waits for the download."""
        assert launch.model is not None
        # Pods created together ask for the same model at once: one header fetch and one
        # estimate serve them all (not a Python child per pod, twice).
        key = json.dumps([launch.model.model_dump(), _token_id(launch.hf_token), _estimate_params(launch)], sort_keys=True, default=str)
        flight = _header_estimates.get(key)
        if flight is None:
            flight = asyncio.ensure_future(_estimate_from_header(self.ctx.models, launch))
            _header_estimates[key] = flight
            flight.add_done_callback(lambda t: _header_estimates.pop(key, None) if _header_estimates.get(key) is t else None)
        estimate = await asyncio.shield(flight)  # one pod deleted meanwhile does not cancel the others' estimate
        if estimate is None:
            return
        self.ctx.budget.reserve((self.w.uid, self.c.name), _held(launch, estimate.total_bytes),
                                what=f"container {self.c.name} ({estimate.describe()}{_cache_ram(launch)}; estimated from the "
                                     "model's header, before downloading it)")

    async def _model(self, launch: LaunchSpec, *, quiet: bool = False) -> Path | None:
        if launch.model is None:
            return None
        delay = BACKOFF_INITIAL
        last_report = [0.0, -1]

        def progress(done: int, total: int) -> None:
            percent = int(done * 100 / total) if total else 0
            now = time.monotonic()
            if now - last_report[0] >= 1.0 or percent == 100:
                last_report[0] = now
                self._waiting("PullingModel", f"downloading {describe_source(launch)}: {percent}% ({done >> 20} MiB of {total >> 20} MiB)")
            if percent // 25 != last_report[1] // 25 and percent < 100:
                last_report[1] = percent
                # A sync callback: the Event is posted from a task of its own, held by the runner
                # until done (the loop keeps only weak references to tasks).
                task = guarded.spawn(
                    self.w.event("Normal", "PullingModel", f"Downloading {describe_source(launch)}: {percent}%", container=self.c.name),
                    name=f"download event {self.w.ref}/{self.c.name}", task="event", logger=log,
                )
                self._posting.add(task)
                task.add_done_callback(self._posting.discard)

        while True:
            try:
                if not quiet:
                    self._waiting("PullingModel", f"resolving {describe_source(launch)}")
                started = time.monotonic()
                path = await self.ctx.models.ensure(launch.model, token=launch.hf_token, on_progress=progress)
                took = time.monotonic() - started
                if took > 1.0:
                    await self.w.event("Normal", "PulledModel", f"Model {path.name} is in the store ({took:.0f}s)", container=self.c.name)
                if not quiet:
                    self._waiting("ContainerCreating")
                return path
            except ModelError as exc:
                if exc.reason in ("ModelNotFound", "InvalidModelPath", "OfflineMissing"):
                    raise ContainerFailed(exc.reason, exc.message) from None
                self._waiting("ModelPullBackOff", f"{exc.reason}: {exc.message}; retrying in {delay:.0f}s")
                await self.w.event("Warning", exc.reason, exc.message, container=self.c.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MODEL_RETRY_MAX)

    # -- running -------------------------------------------------------------------------
    async def _loop(self, launch: LaunchSpec, model_path: Path | None) -> None:
        sup = self.ctx.supervisor
        backoff = BACKOFF_INITIAL
        while True:
            inst = self.adopted
            self.adopted = None
            resume = False
            if inst is not None and sup.shim_alive(inst):
                log.info("adopted %s container %s (pid %d)", self.w.ref, self.c.name, inst.shim_pid)
                resume = self._resume
            elif inst is not None:
                if sup.orphaned(inst):
                    # Its shim died while no agent was watching, its server did not: nobody
                    # reads that server's output or would record its exit, so it is stopped
                    # and the container restarts as after any exit (not re-adopted).
                    exit_info = await self._stop_orphaned(inst)
                else:
                    # It died while no agent was watching: its shim recorded how.
                    exit_info = sup.exit_info(inst)
                self._terminated(inst, exit_info)
                if not self._should_restart(exit_info):
                    self._final()
                    return
                self.view.restart_count = max(self.view.restart_count, inst.instance + 1)
                inst = None
            self._resume = False
            if inst is None:
                inst = await sup.start(launch, model_path=model_path, instance=self.view.restart_count)
                await self.w.event("Normal", "Started", f"Started container {self.c.name} (pid {inst.shim_pid})", container=self.c.name)
            self.instance = inst
            self.view.state = {"running": {"startedAt": inst.started_rfc3339()}}
            self.view.container_id = inst.container_id
            started_mono = time.monotonic()
            exit_info = await self._run_instance(inst, resume=resume)
            self._terminated(inst, exit_info)
            if not self._should_restart(exit_info):
                self._final()
                return
            ran = time.monotonic() - started_mono
            if ran >= BACKOFF_RESET_AFTER:
                backoff = BACKOFF_INITIAL
            delay = 0.0 if self.view.restart_count == 0 else backoff
            self.view.restart_count += 1
            if delay:
                message = f"back-off {delay:.0f}s restarting failed container={self.c.name} pod={self.w.pod['metadata']['name']}"
                self._waiting("CrashLoopBackOff", message)
                await self.w.event("Warning", "BackOff", f"Back-off restarting failed container {self.c.name}", container=self.c.name)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_instance(self, inst: Instance, *, resume: bool = False) -> ExitInfo:
        sup = self.ctx.supervisor
        run_exec = None
        if self.ctx.allow_exec_probes and self.launch is not None:
            run_exec = functools.partial(run_command, cwd=self.launch.workdir, env=command_env(self.launch, self.w.pod["metadata"]["name"]))
        prober = ContainerProber(
            self.c, host=self.ctx.pod_ip, session=self.ctx.http, on_change=self._probe_changed,
            on_unhealthy=self._unhealthy, run_exec=run_exec, resume=(self.view.ready, self.view.started) if resume else None,
            stats=self.ctx.probe_stats.recorder(self.w.pod, self.c.name) if self.ctx.probe_stats else None,
        )
        self.prober = prober
        self._probe_changed()
        probes = guarded.spawn(prober.run(), name=f"probes {self.w.ref}/{self.c.name}", task="probes", logger=log)
        exited = guarded.spawn(sup.wait(inst), name=f"exit waiter {self.w.ref}/{self.c.name}", task="exit-waiter", logger=log)
        failed = guarded.spawn(prober.failed.wait(), name=f"probe failure {self.w.ref}/{self.c.name}", task="probe-failure", logger=log)
        serving = guarded.spawn(self._nudge_when_serving(inst, prober), name=f"serving {self.w.ref}/{self.c.name}",
                                task="serving-watch", logger=log)
        try:
            done, _ = await asyncio.wait([exited, failed], return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                if sup.orphaned(inst):
                    return await self._stop_orphaned(inst)
                return exited.result()
            await self.w.event("Normal", "Killing", f"Container {self.c.name} {prober.failure}, will be restarted", container=self.c.name)
            return await sup.stop(inst, grace=float(self.spec.termination_grace_period_seconds))
        finally:
            await guarded.cancel_and_wait([probes, exited, failed, serving])
            self.prober = None
            self.view.ready = False

    async def _nudge_when_serving(self, inst: Instance, prober: ContainerProber) -> None:
        """Probe at once when the server logs that it serves: Ready follows the server, not
        the next probe period (one extra probe; the pod's own period is kept otherwise)."""
        if prober.started and prober.ready:
            return  # no probe to bring forward
        if await logs.wait_for_serving(Path(inst.log_path), done=lambda: prober.started and prober.ready):
            prober.nudge()

    async def _stop_orphaned(self, inst: Instance) -> ExitInfo:
        """The instance's shim died and its server lives on: the server is stopped (as on
        deletion, within the grace period) so that the next instance gets the port."""
        message = (f"The shim of container {self.c.name} (pid {inst.shim_pid}) died while its server (pid {inst.server_pid()}) "
                   "ran; stopping the server, the container will be restarted")
        log.warning("pod %s: %s", self.w.ref, message)
        await self.w.event("Warning", "ShimDied", message, container=self.c.name)
        return await self.ctx.supervisor.stop(inst, grace=float(self.spec.termination_grace_period_seconds))

    def _probe_changed(self) -> None:
        p = self.prober
        if p is None or "running" not in self.view.state:
            return
        self.view.started = p.started
        self.view.ready = p.started and p.ready
        self.w.publish()

    async def _unhealthy(self, kind: str, detail: str) -> None:
        await self.w.event("Warning", "Unhealthy", f"{kind} probe failed: {detail}", container=self.c.name)

    def _terminated(self, inst: Instance, exit_info: ExitInfo) -> None:
        self.view.last_state = {"terminated": _termination(inst, exit_info)}
        self.view.ready = False
        self.view.started = False
        self.w.publish()

    def _final(self) -> None:
        """The last exit is final (restartPolicy): it becomes the current state."""
        self.view.state = dict(self.view.last_state)
        self.view.last_state = {}
        self.view.will_restart = False
        self.w.publish()

    def _should_restart(self, exit_info: ExitInfo) -> bool:
        if self.w.deleting.is_set():
            return False
        policy = self.spec.restart_policy
        return policy == "Always" or (policy == "OnFailure" and exit_info.exit_code != 0)

    async def stop(self, *, grace: float) -> None:
        inst = self.instance or (self.adopted if self.adopted and self.ctx.supervisor.alive(self.adopted) else None)
        if inst is None:
            return
        grace -= await self._drain(inst, grace=grace)
        exit_info = await self.ctx.supervisor.stop(inst, grace=max(grace, 0.0))
        self.view.state = {"terminated": _termination(inst, exit_info)}
        self.view.ready = False
        self.view.will_restart = False

    async def _drain(self, inst: Instance, *, grace: float) -> float:
        """Leave the endpoints, then let the server finish what it is serving (drain.py);
        returns the seconds of the grace period spent."""
        budget = drain.drain_budget(grace, self.ctx.drain_quiet_seconds)
        if budget <= 0 or not self.ctx.supervisor.alive(inst):
            return 0.0
        self.view.ready = False
        self.w.publish()
        result = await drain.wait_idle(self.ctx.http, base=f"http://{inst.host}:{inst.port}",
                                       quiet=self.ctx.drain_quiet_seconds, budget=budget)
        if not result.idle:
            await self.w.event("Warning", "DrainTimeout", f"Stopping the server with requests in flight: {result.detail}",
                               container=self.c.name)
        log.info("container %s/%s drained in %.1fs%s", self.w.ref, self.c.name, result.waited,
                 f" ({result.detail})" if result.detail else "")
        return result.waited


def _resume_view(view: ContainerView, previous: dict, adopted: Instance | None, supervisor: Supervisor) -> None:
    """A container whose server an earlier agent started and that still runs keeps the
    state, readiness and start its pod showed for that very instance (its containerID)."""
    if adopted is None or previous.get("containerID") != adopted.container_id or not supervisor.shim_alive(adopted):
        return
    state = previous.get("state") or {}
    if "running" not in state:
        return
    view.state = {"running": dict(state["running"])}
    view.container_id = adopted.container_id
    view.ready = bool(previous.get("ready"))
    view.started = bool(previous.get("started"))


_header_estimates: dict[str, asyncio.Future] = {}  # header fetches + estimates under way, by model and parameters


def _token_id(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


async def _estimate_from_header(models: ModelStore, launch: LaunchSpec) -> MemoryEstimate | None:
    """The memory estimate from the GGUF header alone (fetched with Range requests), or
    None when there is no header to be had (the estimate then waits for the download)."""
    assert launch.model is not None
    got = await models.header(launch.model, token=launch.hf_token)
    if got is None:
        return None
    head, total = got
    try:
        return await estimate_in_subprocess(head, model_bytes=total, use_cache=False, **_estimate_params(launch))
    except EstimateError:
        return None  # the download and the estimate of the whole file say what is wrong
    finally:
        await asyncio.to_thread(head.unlink, missing_ok=True)


def _termination(inst: Instance, exit_info: ExitInfo) -> dict:
    """A terminated container state (ContainerStateTerminated)."""
    term = {
        "exitCode": exit_info.exit_code, "reason": exit_info.reason, "startedAt": inst.started_rfc3339(),
        "finishedAt": exit_info.finished_at, "containerID": inst.container_id,
    }
    if exit_info.signal:
        term["signal"] = exit_info.signal
    if exit_info.message:
        term["message"] = exit_info.message
    return term


def describe_source(launch: LaunchSpec) -> str:
    m = launch.model
    if m is None:
        return "no model"
    if m.kind == "hf":
        return f"{m.repo}{':' + m.quant if m.quant else ''}{' ' + m.file if m.file else ''}"
    return m.url or m.path or "model"
