"""What `vnode doctor` reads off command output, and the verdicts on numbers: pure functions.

Kept apart from the checks so that outputs recorded on a Mac (llama-server --list-devices,
sysctl, launchctl print) are tested on any machine.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]
GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Device:
    name: str  # MTL0, CUDA0, ...
    description: str
    total_mib: int | None
    free_mib: int | None

    @property
    def metal(self) -> bool:
        return self.name.upper().startswith("MTL") or "metal" in self.name.lower()


_DEVICE = re.compile(r"^\s+(\S+?):\s+(.*?)(?:\s+\((\d+) MiB, (\d+) MiB free\))?\s*$")


def list_devices(text: str) -> list[Device]:
    """The devices `llama-server --list-devices` prints under "Available devices:"."""
    devices: list[Device] = []
    listing = False
    for line in text.splitlines():
        if line.strip().lower().startswith("available devices"):
            listing = True
            continue
        if listing and (m := _DEVICE.match(line)):
            total, free = m.group(3), m.group(4)
            devices.append(Device(m.group(1), m.group(2), int(total) if total else None, int(free) if free else None))
    return devices


_VERSION = re.compile(r"^version:\s*(.+?)\s*$", re.MULTILINE)


def server_version(text: str) -> str | None:
    """llama-server --version: "version: 6641 (1a2b3c4)" -> "b6641 (1a2b3c4)" (llama.cpp's
    build numbers are written bNNNN); other builds' lines are kept as they are."""
    m = _VERSION.search(text)
    if m is None:
        return None
    line = m.group(1)
    return f"b{line}" if line.split(" ")[0].isdigit() else line


def sysctl_int(text: str) -> int | None:
    """`sysctl -n NAME` (a bare number) or `sysctl NAME` ("name: 1234")."""
    value = text.strip().rpartition(":")[2].strip()
    return int(value) if value.isdigit() else None


def wired_limit_bytes(memory_bytes: int, limit_mb: int) -> tuple[int, bool]:
    """How much memory the GPU may wire, and whether that is macOS's default.

    iogpu.wired_limit_mb 0 means the default, which Apple does not document; measured on
    Apple Silicon it is about two thirds of memory up to 36 GiB and three quarters above.
    """
    if limit_mb > 0:
        return limit_mb * MiB, False
    share = 2 / 3 if memory_bytes <= 36 * GiB else 3 / 4
    return int(memory_bytes * share), True


def certificate_verdict(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> tuple[Status, str]:
    """Expired or not yet valid fails; past 90 % of its life warns (rotation renews at 70-90 %)."""
    if now < not_before:
        return "fail", f"not valid before {not_before:%Y-%m-%d %H:%M} UTC (this machine's clock is behind?)"
    if now >= not_after:
        return "fail", f"expired {not_after:%Y-%m-%d %H:%M} UTC"
    life = (not_after - not_before).total_seconds()
    left = not_after - now
    text = f"valid until {not_after:%Y-%m-%d %H:%M} UTC ({_span(left)} left)"
    if life > 0 and (now - not_before).total_seconds() / life > 0.9:
        return "warn", text + ", past 90 % of its life: it should have been renewed by now"
    return "ok", text


def skew_verdict(skew_seconds: float) -> tuple[Status, str]:
    """The API server's Date header has one-second resolution: up to 2 s is no skew. Tokens
    and certificates tolerate little more than a few seconds (NotBefore is backdated 5 min)."""
    size = abs(skew_seconds)
    text = f"{'ahead of' if skew_seconds > 0 else 'behind'} the API server by {size:.0f} s"
    if size <= 2:
        return "ok", "in step with the API server (within 2 s)"
    return ("warn" if size <= 30 else "fail"), text


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} h"
    return f"{max(seconds // 60, 0)} min"
