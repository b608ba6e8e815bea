"""Background processes of the local cluster, recorded so they are stopped by pid.

A pid alone can be reused after a crash, so each record carries the process start time
and `stop` leaves alone a pid whose start time no longer matches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    create_time: float
    log: str
    cmd: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Proc:
        return cls(**data)

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """Start `cmd` in its own session (so it outlives the caller and can be stopped as a group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    try:
        created = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    # Popen's handle is dropped: the process is tracked by pid from here on; reap it in the
    # background if it is our child so it does not linger as a zombie.
    _children.append(popen)
    return Proc(name=name, pid=popen.pid, create_time=created, log=str(log), cmd=cmd)


_children: list[subprocess.Popen] = []


def stop(proc: Proc, *, timeout: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL it; a no-op if the pid is not ours."""
    if not proc.alive():
        _reap()
        return
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if not proc.alive():
            return
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    for _ in range(100):
        _reap()
        if not proc.alive():
            return
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap() -> None:
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)
