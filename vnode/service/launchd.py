"""The launchd job that keeps `vnode run` going on a Mac: what the plist says, where it lives.

Pure data: rendering and reading the job, no launchctl (launchctl.py) and no prompts (the
CLI). A LaunchAgent runs in the user's login session (the default: the user's own files and
Hugging Face token, Metal as the user sees it); a LaunchDaemon runs at boot, before anyone
logs in, as a dedicated unprivileged account. Nothing secret goes into the plist: it names
the kubeconfig, it never copies credentials or tokens out of the environment.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABEL = "dev.llmkube.vnode"
DAEMON_USER = "_vnode"
# launchd starts jobs with a minimal PATH; llama-server from Homebrew lives in one of these.
PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
THROTTLE_SECONDS = 10  # a bad setting exits 2 at once: launchd waits this long between starts
EXIT_TIMEOUT_SECONDS = 60  # SIGTERM, then SIGKILL after this: pods drain and get their grace period
# launchd's default of 256 open files would stop vnode near 500 pods (about half a file per pod
# measured, bench/scale.py): as the kubelet's unit files, a limit no pod count reaches.
OPEN_FILES = 65536
REQUIRED_KEYS = ("Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ThrottleInterval", "WorkingDirectory",
                 "StandardOutPath", "StandardErrorPath")


@dataclass(frozen=True)
class Layout:
    """Where a job of one kind lives. `root` is "/" on a Mac; tests point it elsewhere."""

    system: bool
    home: Path
    uid: int
    root: Path = Path("/")

    @property
    def plist(self) -> Path:
        if self.system:
            return self.root / "Library" / "LaunchDaemons" / f"{LABEL}.plist"
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def log_dir(self) -> Path:
        return (self.root / "Library" / "Logs" / "vnode") if self.system else self.home / "Library" / "Logs" / "vnode"

    @property
    def working_dir(self) -> Path:
        """The daemon account has no home of its own: its state lives where macOS keeps
        system-wide application data."""
        return (self.root / "Library" / "Application Support" / "vnode") if self.system else self.home / ".local" / "state" / "vnode"

    @property
    def domain(self) -> str:
        """launchctl's domain target: the system domain, or the user's login (GUI) session."""
        return "system" if self.system else f"gui/{self.uid}"

    @property
    def service(self) -> str:
        return f"{self.domain}/{LABEL}"

    @property
    def kind(self) -> str:
        return "LaunchDaemon" if self.system else "LaunchAgent"


def render(layout: Layout, program: list[str], *, user: str | None = None) -> bytes:
    """The plist for `program` (the full `vnode run ...` argument vector, absolute paths)."""
    if not program or not Path(program[0]).is_absolute():
        raise ValueError("the job's program must be an absolute path (launchd does not search PATH)")
    job: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": list(program),
        "RunAtLoad": True,
        # Restart after a crash or a refused start, not after a clean exit (vnode exits 0
        # only when asked to stop).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SECONDS,
        "ExitTimeOut": EXIT_TIMEOUT_SECONDS,
        "ProcessType": "Interactive",  # not throttled as a background job: servers answer requests
        "WorkingDirectory": str(layout.working_dir),
        "StandardOutPath": str(layout.log_dir / "vnode.log"),
        "StandardErrorPath": str(layout.log_dir / "vnode.log"),
        "EnvironmentVariables": {"PATH": PATH},
        "SoftResourceLimits": {"NumberOfFiles": OPEN_FILES},
        "HardResourceLimits": {"NumberOfFiles": OPEN_FILES},
    }
    if layout.system:
        job["UserName"] = user or DAEMON_USER
        job["GroupName"] = user or DAEMON_USER
    return plistlib.dumps(job, sort_keys=True)


def problems(data: bytes) -> list[str]:
    """Why `data` is not a job launchd would run as vnode's (empty: none), as `plutil -lint`
    and launchd's own checks would say it."""
    try:
        job = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several types for a malformed file
        return [f"not a property list: {exc}"]
    if not isinstance(job, dict):
        return ["the property list is not a dictionary"]
    found = [f"missing key {key}" for key in REQUIRED_KEYS if key not in job]
    args = job.get("ProgramArguments")
    if args is not None and (not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args)):
        found.append("ProgramArguments must be a non-empty list of strings")
    elif args and not Path(args[0]).is_absolute():
        found.append(f"ProgramArguments[0] {args[0]!r} is not an absolute path")
    if job.get("Label") not in (None, LABEL):
        found.append(f"Label is {job.get('Label')!r}, not {LABEL}")
    return found


def installed_program(layout: Layout) -> list[str] | None:
    """The `vnode run` flags of the installed job (after `python -m vnode run`), if any."""
    try:
        job = plistlib.loads(layout.plist.read_bytes())
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None
    args = job.get("ProgramArguments") if isinstance(job, dict) else None
    if not isinstance(args, list) or "run" not in args:
        return None
    return [str(a) for a in args[args.index("run") + 1:]]
