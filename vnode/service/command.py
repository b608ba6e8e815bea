"""`vnode service install | uninstall | status`: the user's `vnode run` settings as a launchd job.

The job runs the same interpreter and package that ran this command (`python -m vnode run`),
so a virtualenv or a Homebrew install keeps working without PATH; every path it names is
made absolute here, because launchd starts jobs in their WorkingDirectory with a bare
environment. `vnode join` installs through the same function.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from vnode.service import launchctl
from vnode.service.launchd import DAEMON_USER, Layout, render
from vnode.service.launchctl import ServiceError


def layout(*, system: bool, root: Path = Path("/")) -> Layout:
    return Layout(system=system, home=Path.home(), uid=os.getuid(), root=root)


def program(run_args: list[str], *, where: Layout) -> list[str]:
    """`python -m vnode run ...` with the defaults a service needs: JSON log lines (the log
    file is read by tools), and for a LaunchDaemon a state directory its account owns."""
    args = list(run_args)
    if not any(a == "--log-format" or a.startswith("--log-format=") for a in args):
        args.append("--log-format=json")
    if where.system and not any(a == "--state-dir" or a.startswith("--state-dir=") for a in args):
        args.append(f"--state-dir={where.working_dir}")
    return [sys.executable, "-m", "vnode", "run", *args]


def environment_not_carried(environ: dict[str, str] | None = None) -> list[str]:
    """VNODE_* settings this shell has that a launchd job would not (it gets no environment)."""
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.startswith("VNODE_") and k not in ("VNODE_CACHE_DIR", "VNODE_CLUSTER_DIR"))


async def install(run_args: list[str], *, system: bool, user: str | None = None,
                  say: Callable[[str], None] = print, root: Path = Path("/")) -> None:
    where = layout(system=system, root=root)
    for name in environment_not_carried():
        say(f"note: {name} is set in this shell but a launchd job does not inherit it; give it as a flag instead")
    data = render(where, program(run_args, where=where), user=(user or DAEMON_USER) if system else None)
    say(await launchctl.install(where, data, user=(user or DAEMON_USER) if system else None))


async def uninstall(*, system: bool, say: Callable[[str], None] = print, root: Path = Path("/")) -> None:
    say(await launchctl.uninstall(layout(system=system, root=root)))


async def status(*, system: bool, as_json: bool, say: Callable[[str], None] = print, root: Path = Path("/")) -> int:
    """0 when the job is loaded and running, 1 otherwise (as `systemctl is-active`)."""
    where = layout(system=system, root=root)
    job = await launchctl.state(where)
    if as_json:
        say(json.dumps({"kind": where.kind, "service": where.service, **asdict(job)}, indent=2))
    else:
        say(f"{where.kind} {where.service}: {job.summary()}")
        if job.installed:
            say(f"  plist: {job.plist}")
            say(f"  logs:  {where.log_dir / 'vnode.log'}")
    return 0 if job.loaded and job.state == "running" else 1


__all__ = ["ServiceError", "install", "layout", "program", "status", "uninstall"]
