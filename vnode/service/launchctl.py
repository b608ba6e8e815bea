"""Install, remove and inspect vnode's launchd job with launchctl, idempotently.

launchctl is found on PATH, as a user's shell finds it: on Linux (and in the tests) a
stand-in placed first on PATH answers instead and records its calls (tests/support/
launchctl). `bootstrap`/`bootout` are the current verbs (load/unload are deprecated); a job
already loaded from the same plist is left alone, so installing twice changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vnode.files import replace_private
from vnode.service.launchd import DAEMON_USER, Layout, problems


class ServiceError(RuntimeError):
    """The job could not be installed, removed or read; the message says what to do."""


@dataclass(frozen=True)
class JobState:
    """What `launchctl print` says of the job (loaded False: launchd does not know it)."""

    installed: bool  # the plist is in place
    loaded: bool
    state: str | None = None  # running, waiting, ...
    pid: int | None = None
    last_exit: str | None = None
    runs: int | None = None
    plist: str = ""
    details: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.loaded:
            return "installed, not loaded" if self.installed else "not installed"
        parts = [self.state or "loaded"]
        if self.pid:
            parts.append(f"pid {self.pid}")
        if self.last_exit is not None:
            parts.append(f"last exit {self.last_exit}")
        if self.runs is not None:
            parts.append(f"{self.runs} run{'s' if self.runs != 1 else ''}")
        return ", ".join(parts)


_FIELD = re.compile(r"^\t(state|pid|last exit code|runs) = (.+)$")


def parse_print(text: str) -> dict[str, str]:
    """The job's own top-level fields from `launchctl print` (nested blocks are indented
    further and skipped)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    return found


async def _launchctl(*args: str) -> tuple[int, str]:
    exe = shutil.which("launchctl")
    if exe is None:
        raise ServiceError("launchctl not found: `vnode service` manages a launchd job, which only macOS has; "
                           "elsewhere run `vnode run ...` under the system's own service manager")
    proc = await asyncio.create_subprocess_exec(exe, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def state(layout: Layout) -> JobState:
    installed = layout.plist.exists()
    rc, out = await _launchctl("print", layout.service)
    if rc != 0:
        return JobState(installed=installed, loaded=False, plist=str(layout.plist))
    fields = parse_print(out)
    pid = fields.get("pid")
    runs = fields.get("runs")
    return JobState(installed=installed, loaded=True, state=fields.get("state"),
                    pid=int(pid) if pid and pid.isdigit() else None, last_exit=fields.get("last exit code"),
                    runs=int(runs) if runs and runs.isdigit() else None, plist=str(layout.plist), details=fields)


def _account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(
            f"no user {user!r} for the LaunchDaemon: create an unprivileged role account first, e.g. "
            f"`sudo sysadminctl -addUser {user} -fullName vnode -roleAccount -UID 299` (or pass --user)") from None


def _prepare(layout: Layout, data: bytes, user: str | None) -> None:
    """Directories the job needs, owned by whoever runs it; then the plist, replaced whole.
    Blocking: called in a thread."""
    owner = _account(user) if layout.system and user else None
    for directory in (layout.log_dir, layout.working_dir):
        directory.mkdir(parents=True, exist_ok=True)
        if owner is not None and os.geteuid() == 0:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
    layout.plist.parent.mkdir(parents=True, exist_ok=True)
    replace_private(layout.plist, data)


async def install(layout: Layout, data: bytes, *, user: str | None = None) -> str:
    """Put the job in place and load it; what changed, in one line."""
    if found := problems(data):
        raise ServiceError(f"refusing to install an invalid job: {'; '.join(found)}")
    if layout.system and os.geteuid() != 0:
        raise ServiceError("a LaunchDaemon is installed by root: run `sudo vnode service install --system ...`")
    if layout.system:
        user = user or DAEMON_USER
        _account(user)
    before = await state(layout)
    same = before.installed and await asyncio.to_thread(layout.plist.read_bytes) == data
    if same and before.loaded:
        return f"already installed: {layout.kind} {layout.plist} is loaded ({before.summary()}); nothing changed"
    await asyncio.to_thread(_prepare, layout, data, user)
    if before.loaded:  # loaded from an older plist: launchd only rereads it on a fresh bootstrap
        await _launchctl("bootout", layout.service)
    await _launchctl("enable", layout.service)  # a job once disabled refuses to bootstrap
    rc, out = await _launchctl("bootstrap", layout.domain, str(layout.plist))
    if rc != 0:
        raise ServiceError(f"`launchctl bootstrap {layout.domain} {layout.plist}` failed ({rc}): {out.strip()}")
    verb = "updated" if before.installed else "installed"
    return f"{verb}: {layout.kind} {layout.plist}, loaded into {layout.domain}; logs in {layout.log_dir / 'vnode.log'}"


async def uninstall(layout: Layout) -> str:
    if layout.system and os.geteuid() != 0:
        raise ServiceError("a LaunchDaemon is removed by root: run `sudo vnode service uninstall --system`")
    before = await state(layout)
    if not before.installed and not before.loaded:
        return f"not installed: no {layout.kind} {layout.plist}; nothing changed"
    if before.loaded:
        rc, out = await _launchctl("bootout", layout.service)
        if rc != 0:
            raise ServiceError(f"`launchctl bootout {layout.service}` failed ({rc}): {out.strip()}")
    await asyncio.to_thread(Path(layout.plist).unlink, missing_ok=True)
    return (f"uninstalled: {layout.kind} {layout.plist} stopped and removed (the Node stays in the cluster, NotReady; "
            "`kubectl delete node NAME` if this Mac leaves for good)")
