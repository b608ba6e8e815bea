"""Short-lived child processes of the agent: bounded waits and a Python child's environment.

Every helper command (sysctl, the GGUF header reader, exec probes) must not outlive a
timeout or a cancelled caller, and a vnode child (`python -m vnode.provider....`) must find
the package even when vnode runs from a checkout rather than an install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


async def communicate(proc: asyncio.subprocess.Process, timeout: float, *, group: bool = False) -> tuple[bytes, bytes]:
    """proc.communicate() within `timeout`. On the timeout (TimeoutError) or a cancellation
    the process, or with `group` its whole process group, is killed and reaped first."""
    try:
        return await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        kill(proc, group=group)
        await proc.wait()
        raise


def kill(proc: asyncio.subprocess.Process, *, group: bool = False) -> None:
    """SIGKILL the process, or its whole process group (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.returncode is None:
            proc.kill()


def python_child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with vnode's package root first on PYTHONPATH."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)}
