"""Starting, watching, stopping and re-adopting native server processes.

Each container instance runs under a shim (shim.py) in its own session; a state file per
container records the shim's pid and start time, so a restarted agent finds its servers
again (`adopt`) instead of restarting them: no model reload, no port change. A recorded
pid whose start time no longer matches is never signalled.
"""

from __future__ import annotations

import asyncio
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
    # For stats (/stats/summary, /metrics/cadvisor); empty in state files of older agents.
    image: str = ""
    sandbox: str = ""  # the pod's working directory (its containers' rootfs in the stats)
    volumes: dict[str, str] = field(default_factory=dict)  # hostPath volume name -> host path

    @property
    def container_id(self) -> str:
        return f"vnode://{self.pod_uid}/{self.container}/{self.instance}"

    def started_rfc3339(self) -> str:
        return _rfc3339(self.started_at)

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
        cdir = self.container_dir(spec.pod_uid, spec.container)
        cdir.mkdir(parents=True, exist_ok=True)
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
        )
        self._save(inst)
        log.info("started %s/%s container %s (instance %d, pid %d)", spec.namespace, spec.pod_name, spec.container, instance, proc.pid)
        return inst

    def _state_file(self, pod_uid: str, container: str) -> Path:
        return self.container_dir(pod_uid, container) / "state.json"

    def _save(self, inst: Instance) -> None:
        path = self._state_file(inst.pod_uid, inst.container)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(inst)))
        os.replace(tmp, path)

    def alive(self, inst: Instance) -> bool:
        child = self._children.get(inst.shim_pid)
        if child is not None:
            return child.returncode is None
        try:
            p = psutil.Process(inst.shim_pid)
            return abs(p.create_time() - inst.shim_start) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    async def wait(self, inst: Instance) -> ExitInfo:
        """Until the instance exits; its exit as the shim recorded it."""
        child = self._children.get(inst.shim_pid)
        if child is not None:
            await child.wait()
            self._children.pop(inst.shim_pid, None)
        else:
            while self.alive(inst):
                await asyncio.sleep(POLL_SECONDS)
        return self.exit_info(inst)

    def exit_info(self, inst: Instance) -> ExitInfo:
        try:
            data = json.loads(Path(inst.exit_path).read_text())
            sig = data.get("signal")
            message = data.get("message") or (describe_signal(sig) if sig else "")
            return ExitInfo(int(data["exitCode"]), sig, data.get("reason") or "Error",
                            message, data.get("finishedAt") or _rfc3339(dt.datetime.now().timestamp()))
        except (OSError, ValueError, KeyError):
            # The shim itself was killed: like the kubelet, report it as unknown with 137.
            return ExitInfo(137, signal.SIGKILL, "ContainerStatusUnknown",
                            "the container's process disappeared without an exit status", _rfc3339(dt.datetime.now().timestamp()))

    async def stop(self, inst: Instance, *, grace: float) -> ExitInfo:
        """SIGTERM (the shim forwards it), wait `grace` seconds, then SIGKILL the whole group."""
        if self.alive(inst):
            self._signal(inst, signal.SIGTERM, group=False)
            try:
                return await asyncio.wait_for(self.wait(inst), timeout=max(grace, 0.0))
            except TimeoutError:
                log.info("container %s of %s did not stop within %.0fs; killing it", inst.container, inst.pod_name, grace)
                self._signal(inst, signal.SIGKILL, group=True)
        return await self.wait(inst)

    def _signal(self, inst: Instance, sig: signal.Signals, *, group: bool) -> None:
        if not self.alive(inst):
            return
        try:
            if group:
                os.killpg(inst.shim_pid, sig)
            else:
                os.kill(inst.shim_pid, sig)
        except ProcessLookupError:
            pass

    def adopt(self) -> list[Instance]:
        """Instances recorded by an earlier agent, alive or not (their exit file tells)."""
        found = []
        for path in self.root.glob("*/containers/*/state.json"):
            try:
                found.append(Instance(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                log.warning("ignoring unreadable state file %s", path)
        return found

    async def remove_pod(self, pod_uid: str) -> None:
        """Forget a pod whose processes are all stopped: state, logs and sandbox."""
        await asyncio.to_thread(shutil.rmtree, self.pod_dir(pod_uid), True)

    async def close(self) -> None:
        """Agent shutdown: servers keep running (adopted by the next agent); reap nothing."""
        self._children.clear()
