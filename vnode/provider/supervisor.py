"""Starting, watching, stopping and re-adopting native server processes.

Each container instance runs under a shim (shim.py) in its own session; a state file per
container records the shim's pid and start time and the instance's process group, so a
restarted agent finds its servers again (`adopt`) instead of restarting them: no model
reload, no port change. A server can outlive its shim (kill -9 of the shim): it is still
found through the recorded group and killed with it (`stop`), never left holding its port
and memory. Nothing is signalled unless a member of the group is proven ours: the shim by
its start time, the server by its group, command line and start time (pid reuse).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from vnode.provider import shim as shim_module
from vnode.provider.exits import describe_signal
from vnode.provider.spec import LaunchSpec

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
CHECK_EVERY = 10  # polls of an adopted shim between full checks of its identity (2 s)
SHIM_RECORD_SECONDS = 2.0  # after SIGKILL of a server, how long its shim gets to record the exit
# The server gets these on top of the pod's env: enough to run, nothing of the agent's.
BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TMPDIR", "TZ")


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Instance:
    """One run of one container: what the state file holds."""

    pod_uid: str
    namespace: str
    pod_name: str
    container: str
    instance: int  # 0 for the first run, +1 per restart (the restartCount at start)
    shim_pid: int
    shim_start: float
    started_at: float
    port: int
    host: str
    log_path: str
    exit_path: str
    pid_path: str
    args: list[str]
    # The process group of the shim and its server (the shim's pid: its own session); 0 in
    # state files of older agents, where it was the shim's pid too.
    pgid: int = 0
    binary: str = ""  # the server's argv[0]: with `args`, how a server is recognised as ours
    # For stats (/stats/summary, /metrics/cadvisor); empty in state files of older agents.
    image: str = ""
    sandbox: str = ""  # the pod's working directory (its containers' rootfs in the stats)
    volumes: dict[str, str] = field(default_factory=dict)  # hostPath volume name -> host path

    @property
    def container_id(self) -> str:
        return f"vnode://{self.pod_uid}/{self.container}/{self.instance}"

    def started_rfc3339(self) -> str:
        return _rfc3339(self.started_at)

    @property
    def group(self) -> int:
        return self.pgid or self.shim_pid

    def server_pid(self) -> int | None:
        try:
            return int(json.loads(Path(self.pid_path).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    signal: int | None
    reason: str
    message: str
    finished_at: str


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_process(inst: Instance) -> psutil.Process | None:
    """The instance's server while it runs, found from the shim's pid file even after the
    shim died; None unless the process is provably that server: still in the recorded
    group, started after the shim, running the recorded command."""
    pid = inst.server_pid()
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != inst.group:
            return None
        if inst.shim_start and p.create_time() < inst.shim_start - 1.0:
            return None
        cmdline = p.cmdline()
        if cmdline[1:] != inst.args or (inst.binary and cmdline[:1] != [inst.binary]):
            return None
        return p
    except (psutil.Error, OSError):
        return None


class Supervisor:
    """Owns every server process of this node, and nothing else."""

    def __init__(self, state_dir: Path, *, log_max_bytes: int = 10 * 1024 * 1024, log_max_files: int = 5) -> None:
        self.root = state_dir / "pods"
        self.root.mkdir(parents=True, exist_ok=True)
        self._log_max_bytes, self._log_max_files = log_max_bytes, log_max_files
        self._children: dict[int, asyncio.subprocess.Process] = {}

    def pod_dir(self, pod_uid: str) -> Path:
        return self.root / pod_uid

    def sandbox(self, pod_uid: str) -> Path:
        return self.pod_dir(pod_uid) / "sandbox"

    def container_dir(self, pod_uid: str, container: str) -> Path:
        return self.pod_dir(pod_uid) / "containers" / container

    def log_path(self, pod_uid: str, container: str, instance: int) -> Path:
        return self.container_dir(pod_uid, container) / f"{instance}.log"

    async def start(self, spec: LaunchSpec, *, model_path: Path | None, instance: int) -> Instance:
        """A new instance of the container. One container never has two: whatever is left of
        the one its state file records (a server whose shim died) is killed first."""
        cdir = self.container_dir(spec.pod_uid, spec.container)
        cdir.mkdir(parents=True, exist_ok=True)
        previous = self._load(self._state_file(spec.pod_uid, spec.container))
        if previous is not None and self.alive(previous):
            log.warning("container %s of %s/%s: instance %d is still running; killing it before starting instance %d",
                        spec.container, spec.namespace, spec.pod_name, previous.instance, instance)
            await self.stop(previous, grace=0)
        Path(spec.workdir).mkdir(parents=True, exist_ok=True)
        for stale in (f"{instance}.exit.json", f"{instance}.pid.json"):
            (cdir / stale).unlink(missing_ok=True)
        args = list(spec.args) + (["--model", str(model_path)] if model_path else [])
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(spec.env)
        log_path = cdir / f"{instance}.log"
        exit_path, pid_path = cdir / f"{instance}.exit.json", cdir / f"{instance}.pid.json"
        # The previous-but-one instance's log is dropped: kubectl logs --previous needs one.
        for old in cdir.glob("*.log*"):
            if old.name.split(".")[0].isdigit() and int(old.name.split(".")[0]) < instance - 1:
                old.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-I", "-S", shim_module.__file__,  # stdlib only: skip site (~50 ms)
            "--log", str(log_path), "--exit-file", str(exit_path), "--pid-file", str(pid_path),
            "--max-bytes", str(self._log_max_bytes), "--max-files", str(self._log_max_files),
            "--", spec.binary, *args,
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=spec.workdir, env=env, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        self._children[proc.pid] = proc
        try:
            shim_start = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            shim_start = 0.0
        inst = Instance(
            pod_uid=spec.pod_uid, namespace=spec.namespace, pod_name=spec.pod_name, container=spec.container,
            instance=instance, shim_pid=proc.pid, shim_start=shim_start, started_at=dt.datetime.now().timestamp(),
            port=spec.port, host=spec.host, log_path=str(log_path), exit_path=str(exit_path), pid_path=str(pid_path),
            args=args, image=spec.image, sandbox=str(self.sandbox(spec.pod_uid)), volumes=dict(spec.host_volumes),
            pgid=self._pgid(proc.pid), binary=spec.binary,
        )
        self._save(inst)
        log.info("started %s/%s container %s (instance %d, pid %d)", spec.namespace, spec.pod_name, spec.container, instance, proc.pid)
        return inst

    def _state_file(self, pod_uid: str, container: str) -> Path:
        return self.container_dir(pod_uid, container) / "state.json"

    @staticmethod
    def _pgid(pid: int) -> int:
        try:
            return os.getpgid(pid)
        except ProcessLookupError:  # the shim is gone already; it was its own group's leader
            return pid

    @staticmethod
    def _load(path: Path) -> Instance | None:
        try:
            return Instance(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable state file %s", path)
            return None

    def _save(self, inst: Instance) -> None:
        path = self._state_file(inst.pod_uid, inst.container)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(inst)))
        os.replace(tmp, path)

    def shim_alive(self, inst: Instance) -> bool:
        """The instance's shim runs (it, not the agent, reaps the server and records its exit)."""
        child = self._children.get(inst.shim_pid)
        if child is not None:
            return child.returncode is None
        try:
            p = psutil.Process(inst.shim_pid)
            return abs(p.create_time() - inst.shim_start) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def server_process(self, inst: Instance) -> psutil.Process | None:
        return server_process(inst)

    def alive(self, inst: Instance) -> bool:
        """Anything of the instance runs: its shim, or its server (whose shim may be dead)."""
        return self.shim_alive(inst) or self.server_process(inst) is not None

    def orphaned(self, inst: Instance) -> bool:
        """Its server runs without its shim: nobody reads its output or will record its exit."""
        return not self.shim_alive(inst) and self.server_process(inst) is not None

    async def wait(self, inst: Instance) -> ExitInfo:
        """Until the instance's shim exits; its exit as the shim recorded it. The server may
        outlive a shim that was killed: see `orphaned` and `stop`."""
        child = self._children.get(inst.shim_pid)
        if child is not None:
            await child.wait()
            self._children.pop(inst.shim_pid, None)
        else:
            # An adopted shim is not our child: polled. The full check (start time, zombie)
            # runs every CHECK_EVERY polls; in between, a signal-0 probe of the pid (one
            # system call) sees it go. With 100 adopted pods the full check every 0.2 s cost
            # 3-4 % of a core (bench/scale.py), this ~0.5 %.
            polls = 0
            while True:
                if polls % CHECK_EVERY == 0:
                    if not self.shim_alive(inst):
                        break
                elif not _pid_exists(inst.shim_pid):
                    break
                polls += 1
                await asyncio.sleep(POLL_SECONDS)
        return self.exit_info(inst)

    async def _gone(self, inst: Instance) -> None:
        """Until neither the shim nor the server of the instance runs."""
        await self.wait(inst)
        while self.server_process(inst) is not None:
            await asyncio.sleep(POLL_SECONDS)

    def exit_info(self, inst: Instance) -> ExitInfo:
        recorded = self._recorded_exit(inst)
        if recorded is not None:
            return recorded
        # The shim itself was killed: like the kubelet, report it as unknown with 137.
        return ExitInfo(137, signal.SIGKILL, "ContainerStatusUnknown",
                        "the container's process disappeared without an exit status", _rfc3339(dt.datetime.now().timestamp()))

    @staticmethod
    def _recorded_exit(inst: Instance) -> ExitInfo | None:
        try:
            data = json.loads(Path(inst.exit_path).read_text())
            sig = data.get("signal")
            message = data.get("message") or (describe_signal(sig) if sig else "")
            return ExitInfo(int(data["exitCode"]), sig, data.get("reason") or "Error",
                            message, data.get("finishedAt") or _rfc3339(dt.datetime.now().timestamp()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def stop(self, inst: Instance, *, grace: float) -> ExitInfo:
        """SIGTERM, wait `grace` seconds, then SIGKILL; returns when nothing of the instance
        runs. SIGTERM goes to the shim, which forwards it and records the exit; a server
        whose shim died gets it directly. SIGKILL goes to the server first (so the shim still
        records the exit), then to the whole recorded group for whatever is left."""
        shimless = not self.shim_alive(inst)
        if shimless and self.server_process(inst) is None:
            return self.exit_info(inst)
        if shimless:
            log.warning("container %s of %s/%s lost its shim (pid %d); stopping its server (pid %s) through its process group %d",
                        inst.container, inst.namespace, inst.pod_name, inst.shim_pid, inst.server_pid(), inst.group)
            self._signal_group(inst, signal.SIGTERM)
        else:
            self._signal_shim(inst, signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(self._gone(inst), timeout=max(grace, 0.0))
        except TimeoutError:
            log.info("container %s of %s did not stop within %.0fs; killing it", inst.container, inst.pod_name, grace)
            killed = True
            server = self.server_process(inst)
            if server is not None and not shimless:
                with contextlib.suppress(psutil.Error):
                    server.send_signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wait(inst), timeout=SHIM_RECORD_SECONDS)
            self._signal_group(inst, signal.SIGKILL)
            await self._gone(inst)
        recorded = self._recorded_exit(inst)
        if recorded is not None:
            return recorded
        now = _rfc3339(dt.datetime.now().timestamp())
        if shimless:
            return ExitInfo(137, None, "ContainerStatusUnknown",
                            "vnode's shim of the container died while its server ran; the server was stopped "
                            "(its exit status is unknown)", now)
        if killed:
            return ExitInfo(137, signal.SIGKILL, "Error", describe_signal(signal.SIGKILL), now)
        return self.exit_info(inst)

    def _signal_shim(self, inst: Instance, sig: signal.Signals) -> None:
        if self.shim_alive(inst):
            with contextlib.suppress(ProcessLookupError):
                os.kill(inst.shim_pid, sig)

    def _signal_group(self, inst: Instance, sig: signal.Signals) -> None:
        """killpg of the recorded group, if a member of it is provably this instance's: a
        group number is free for reuse once all its members are gone."""
        if self.alive(inst):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(inst.group, sig)

    def adopt(self) -> list[Instance]:
        """Instances recorded by an earlier agent, alive or not (their exit file tells)."""
        return [inst for path in self.root.glob("*/containers/*/state.json") if (inst := self._load(path)) is not None]

    async def remove_pod(self, pod_uid: str) -> None:
        """Forget a pod whose processes are all stopped: state, logs and sandbox. A process
        still running (a server whose shim died unnoticed) is killed first: once its state
        file is gone, nothing would find it again."""
        for path in self.pod_dir(pod_uid).glob("containers/*/state.json"):
            inst = self._load(path)
            if inst is not None and self.alive(inst):
                log.warning("container %s of %s/%s still runs as its pod goes; killing it", inst.container, inst.namespace, inst.pod_name)
                await self.stop(inst, grace=0)
        await asyncio.to_thread(shutil.rmtree, self.pod_dir(pod_uid), True)

    async def close(self) -> None:
        """Agent shutdown: servers keep running (adopted by the next agent); reap nothing."""
        self._children.clear()
