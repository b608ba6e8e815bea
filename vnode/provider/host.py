"""Facts about the machine vnode runs on: identity, size, memory/disk/PID pressure, and
memory.available, the signal the eviction manager (pods/eviction.py) compares with its thresholds.

MacHost is the real target (Apple Silicon, unified memory); LinuxHost lets the agent and
its tests run anywhere. Command outputs are parsed by small pure functions so the macOS
path is testable from recorded samples. No Kubernetes imports: the node layer maps these
plain values onto Node capacity, nodeInfo and conditions.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
from pydantic import BaseModel, ConfigDict

from vnode.provider.subproc import communicate

__all__ = [
    "GiB",
    "Host",
    "HostCommandError",
    "HostFacts",
    "LinuxHost",
    "MacHost",
    "MemorySignal",
    "Pressure",
    "VmStat",
    "detect_host",
    "disk_pressure",
    "existing_parent",
    "goarch",
    "linux_memory_pressure",
    "linux_memory_signal",
    "mac_memory_signal",
    "parse_cpuinfo_model",
    "parse_ioreg_platform_uuid",
    "parse_loadavg_tasks",
    "parse_meminfo",
    "parse_os_release",
    "parse_pressure_level",
    "parse_psi",
    "parse_sw_vers",
    "parse_sysctl_output",
    "parse_vm_stat",
    "pid_pressure",
    "vm_available_bytes",
]

GiB = 1024**3
COMMAND_TIMEOUT_S = 5.0

T = TypeVar("T")


class HostFacts(BaseModel):
    """What the Node reports about the machine; stable for the life of the process."""

    model_config = ConfigDict(frozen=True)

    os: str
    architecture: str
    kernel_version: str
    os_image: str
    hostname: str
    machine_id: str
    cpu_count: int
    memory_bytes: int
    chip: str | None


class Pressure(BaseModel):
    """One sample of the three node pressure conditions, with messages for humans."""

    model_config = ConfigDict(frozen=True)

    memory: bool
    memory_level: str
    memory_detail: str
    disk: bool
    disk_detail: str
    pid: bool
    pid_detail: str


class MemorySignal(BaseModel):
    """One reading of the eviction signal memory.available (the kubelet's name), with the
    capacity that percentage thresholds are taken of and what else the OS says about memory
    (reported in messages, not acted on: the thresholds decide, as in the kubelet)."""

    model_config = ConfigDict(frozen=True)

    available_bytes: int
    capacity_bytes: int
    detail: str  # e.g. "macOS memory pressure level warn" or "PSI some avg10=1.20%"


class Host(Protocol):
    async def facts(self) -> HostFacts: ...

    async def pressure(self, *, disk_path: str) -> Pressure: ...

    async def available_memory(self) -> int: ...

    async def memory_signal(self) -> MemorySignal: ...


class HostCommandError(RuntimeError):
    """A host command or file could not be read; the caller decides (e.g. condition Unknown)."""


# --------------------------------------------------------------------------- parsing


_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def goarch(machine: str) -> str:
    """Map `uname -m` to the GOARCH spelling Kubernetes uses in nodeInfo and labels."""
    return _GOARCH.get(machine.lower(), machine.lower())


def parse_sysctl_output(text: str) -> dict[str, str]:
    """`sysctl a.b c.d` prints `a.b: value` lines; unknown oids go to stderr and are absent."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            values[key.strip()] = value.strip()
    return values


_PRESSURE_LEVELS = {1: "normal", 2: "warn", 4: "critical"}


def parse_pressure_level(text: str) -> str:
    """kern.memorystatus_vm_pressure_level is a bit value: 1 normal, 2 warn, 4 critical."""
    try:
        return _PRESSURE_LEVELS[int(text.strip())]
    except (ValueError, KeyError):
        raise ValueError(f"unexpected memory pressure level {text.strip()!r}") from None


_IOREG_UUID = re.compile(r'"IOPlatformUUID"\s*=\s*"([0-9A-Fa-f-]+)"')


def parse_ioreg_platform_uuid(text: str) -> str:
    """IOPlatformUUID survives reinstalls and renames: the Mac's stable identity."""
    match = _IOREG_UUID.search(text)
    if match is None:
        raise ValueError("IOPlatformUUID not found in ioreg output")
    return match.group(1).upper()


def parse_sw_vers(text: str) -> str:
    """`sw_vers` -> osImage like "macOS 15.1 (24B83)"."""
    fields = parse_sysctl_output(text)
    name = fields.get("ProductName", "macOS")
    version = fields.get("ProductVersion")
    if not version:
        raise ValueError("ProductVersion not found in sw_vers output")
    build = fields.get("BuildVersion")
    return f"{name} {version} ({build})" if build else f"{name} {version}"


class VmStat(BaseModel):
    """`vm_stat` counters, in pages, keyed by their label as printed."""

    model_config = ConfigDict(frozen=True)

    page_size: int
    pages: dict[str, int]


_VM_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
_VM_LINE = re.compile(r'^"?([^:"]+)"?:\s+(\d+)\.?\s*$')


def parse_vm_stat(text: str) -> VmStat:
    """Page size comes from the header: 16 KiB on Apple Silicon, 4 KiB on Intel."""
    header = _VM_PAGE_SIZE.search(text)
    if header is None:
        raise ValueError("vm_stat header with page size not found")
    pages = {}
    for line in text.splitlines():
        match = _VM_LINE.match(line.strip())
        if match:
            pages[match.group(1).strip()] = int(match.group(2))
    return VmStat(page_size=int(header.group(1)), pages=pages)


def vm_available_bytes(vm: VmStat) -> int:
    """Free + speculative + inactive + purgeable pages: what macOS can hand out without
    compressing or swapping anything, the Mac's memory.available. Purgeable pages are
    caches their owners marked volatile (the kernel drops them before it compresses a
    page), the counterpart of the inactive file pages the kubelet counts as available;
    they can also sit on the inactive queue, so the sum may over-count by at most the
    purgeable pages (megabytes, next to the gigabytes of the others). Active file-backed
    pages are deliberately excluded: they are mostly the mmapped weights of models
    already running, which are not really free to reuse."""
    names = ("Pages free", "Pages speculative", "Pages inactive", "Pages purgeable")
    return sum(vm.pages.get(name, 0) for name in names) * vm.page_size


def mac_memory_signal(*, vm_stat: str, pressure_level: str | None, capacity: int) -> MemorySignal:
    """memory.available from `vm_stat` output; the kernel's pressure level
    (kern.memorystatus_vm_pressure_level), when known, goes into the detail."""
    level = parse_pressure_level(pressure_level) if pressure_level is not None else None
    return MemorySignal(
        available_bytes=vm_available_bytes(parse_vm_stat(vm_stat)),
        capacity_bytes=capacity,
        detail=f"macOS memory pressure level {level}" if level else "macOS memory pressure level unknown",
    )


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes: `MemAvailable:   23595012 kB` -> {"MemAvailable": 24161292288}."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            continue
        unit = fields[1].lower() if len(fields) > 1 else ""
        values[key.strip()] = int(fields[0]) * (1024 if unit == "kb" else 1)
    return values


def linux_memory_signal(*, meminfo: str, psi: str | None) -> MemorySignal:
    """memory.available is MemAvailable (the kernel's own estimate of what can be given
    out without swapping, page cache included, like the kubelet's capacity - working
    set); PSI "some avg10", when the kernel has it, goes into the detail."""
    values = parse_meminfo(meminfo)
    if "MemAvailable" not in values or "MemTotal" not in values:
        raise ValueError("MemAvailable/MemTotal not found in /proc/meminfo")
    some = parse_psi(psi).get("some", {}).get("avg10") if psi else None
    return MemorySignal(
        available_bytes=values["MemAvailable"],
        capacity_bytes=values["MemTotal"],
        detail=f"PSI some avg10={some:.2f}%" if some is not None else "PSI unavailable",
    )


def parse_os_release(text: str) -> str:
    """PRETTY_NAME from /etc/os-release, as the kubelet reports osImage."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    if fields.get("PRETTY_NAME"):
        return fields["PRETTY_NAME"]
    name = " ".join(v for v in (fields.get("NAME"), fields.get("VERSION")) if v)
    return name or "Linux"


def parse_cpuinfo_model(text: str) -> str | None:
    """First "model name" in /proc/cpuinfo; arm64 kernels often have none."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """/proc/pressure/* lines: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`."""
    result: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind not in ("some", "full"):
            continue
        result[kind] = {k: float(v) for k, _, v in (f.partition("=") for f in rest.split())}
    return result


def parse_loadavg_tasks(text: str) -> int:
    """Total task count, the `N` in `0.10 0.20 0.30 2/N last_pid` (what the kubelet uses)."""
    fields = text.split()
    if len(fields) < 4 or "/" not in fields[3]:
        raise ValueError(f"unexpected /proc/loadavg: {text.strip()!r}")
    return int(fields[3].split("/", 1)[1])


# --------------------------------------------------------------------- evaluation


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def linux_memory_pressure(
    *,
    available: int,
    total: int,
    full_avg10: float | None,
    warn_psi: float = 10.0,
    critical_psi: float = 40.0,
    warn_available: float = 0.05,
    critical_available: float = 0.02,
) -> tuple[str, str]:
    """(level, detail). PSI "full" is time all tasks stalled on memory: the early signal;
    low available memory catches kernels without PSI."""
    share = available / total if total > 0 else 0.0
    psi = full_avg10 if full_avg10 is not None else 0.0
    if psi > critical_psi or share < critical_available:
        level = "critical"
    elif psi > warn_psi or share < warn_available:
        level = "warn"
    else:
        level = "normal"
    psi_text = "PSI unavailable" if full_avg10 is None else f"PSI full avg10={full_avg10:.2f}%"
    detail = (
        f"memory pressure {level}: {_gib(available)} of {_gib(total)} available "
        f"({share:.0%}), {psi_text}"
    )
    return level, detail


def disk_pressure(
    *,
    free: int,
    total: int,
    path: str,
    min_free_fraction: float = 0.10,
    min_free_bytes: int = 5 * GiB,
) -> tuple[bool, str]:
    """Either limit trips it: a big volume needs headroom in bytes (a model download is
    many GiB), a small one in proportion."""
    share = free / total if total > 0 else 0.0
    low = share < min_free_fraction or free < min_free_bytes
    state = "low" if low else "ok"
    return low, f"disk space {state} on {path}: {_gib(free)} free of {_gib(total)} ({share:.0%})"


def pid_pressure(*, used: int, limit: int, threshold: float = 0.90) -> tuple[bool, str]:
    """Processes (or tasks) against the system limit."""
    share = used / limit if limit > 0 else 0.0
    high = share > threshold
    state = "high" if high else "ok"
    return high, f"process count {state}: {used} of {limit} ({share:.0%})"


def existing_parent(path: str) -> str:
    """The model store may not exist yet; its volume's free space is what matters."""
    current = Path(path).expanduser().absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return str(current)


# -------------------------------------------------------------------------- I/O


async def _run(*argv: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """(exit code, stdout). Non-zero exit is returned, not raised: `sysctl` exits 1 when
    one of several oids is unknown but still prints the others."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        raise HostCommandError(f"cannot run {argv[0]}: {exc}") from exc
    try:
        stdout, _ = await communicate(proc, timeout)
    except TimeoutError:
        raise HostCommandError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
    return proc.returncode or 0, stdout.decode(errors="replace")


async def _read_text(path: str) -> str | None:
    """File contents, or None if absent/unreadable (callers have fallbacks)."""

    def read() -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    return await asyncio.to_thread(read)


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


class _HostBase:
    """Shared by both hosts: facts gathered once (they never change while the agent runs,
    even under concurrent first calls) and the disk check, which is portable."""

    def __init__(
        self,
        *,
        min_free_fraction: float = 0.10,
        min_free_bytes: int = 5 * GiB,
        pid_threshold: float = 0.90,
    ) -> None:
        self._facts: HostFacts | None = None
        self._lock = asyncio.Lock()
        self._min_free_fraction = min_free_fraction
        self._min_free_bytes = min_free_bytes
        self._pid_threshold = pid_threshold

    async def facts(self) -> HostFacts:
        if self._facts is None:
            async with self._lock:
                if self._facts is None:
                    self._facts = await self._gather_facts()
        return self._facts

    async def _gather_facts(self) -> HostFacts:
        raise NotImplementedError

    async def _disk(self, disk_path: str) -> tuple[bool, str]:
        path = await asyncio.to_thread(existing_parent, disk_path)
        usage = await asyncio.to_thread(shutil.disk_usage, path)
        return disk_pressure(
            free=usage.free,
            total=usage.total,
            path=disk_path,
            min_free_fraction=self._min_free_fraction,
            min_free_bytes=self._min_free_bytes,
        )


class MacHost(_HostBase):
    """macOS via sysctl, sw_vers, ioreg and vm_stat."""

    FACT_OIDS = (
        "hw.memsize",
        "hw.perflevel0.physicalcpu",
        "hw.physicalcpu",
        "hw.optional.arm64",
        "machdep.cpu.brand_string",
        "kern.osrelease",
    )
    PRESSURE_OIDS = (
        "kern.memorystatus_vm_pressure_level",
        "kern.memorystatus_level",
        "kern.maxproc",
    )

    async def _sysctl(self, *oids: str) -> dict[str, str]:
        _, out = await _run("sysctl", *oids)
        return parse_sysctl_output(out)

    async def _gather_facts(self) -> HostFacts:
        sysctl, (_, sw_vers), (_, ioreg) = await asyncio.gather(
            self._sysctl(*self.FACT_OIDS),
            _run("sw_vers"),
            _run("ioreg", "-rd1", "-c", "IOPlatformExpertDevice"),
        )
        if "hw.memsize" not in sysctl:
            raise HostCommandError("sysctl hw.memsize returned nothing")
        cpus = sysctl.get("hw.perflevel0.physicalcpu") or sysctl.get("hw.physicalcpu") or "0"
        # hw.optional.arm64 is 1 on Apple Silicon even when Python runs under Rosetta.
        arch = "arm64" if sysctl.get("hw.optional.arm64") == "1" else goarch(platform.machine())
        return HostFacts(
            os="darwin",
            architecture=arch,
            kernel_version=sysctl.get("kern.osrelease") or platform.release(),
            os_image=parse_sw_vers(sw_vers),
            hostname=socket.gethostname(),
            machine_id=parse_ioreg_platform_uuid(ioreg),
            cpu_count=int(cpus) or (os.cpu_count() or 1),
            memory_bytes=int(sysctl["hw.memsize"]),
            chip=sysctl.get("machdep.cpu.brand_string") or None,
        )

    async def available_memory(self) -> int:
        return (await self.memory_signal()).available_bytes

    async def memory_signal(self) -> MemorySignal:
        facts, sysctl, (_, vm_stat) = await asyncio.gather(
            self.facts(), self._sysctl("kern.memorystatus_vm_pressure_level"), _run("vm_stat")
        )
        return mac_memory_signal(
            vm_stat=vm_stat, pressure_level=sysctl.get("kern.memorystatus_vm_pressure_level"), capacity=facts.memory_bytes
        )

    async def pressure(self, *, disk_path: str) -> Pressure:
        sysctl, pids, (disk, disk_detail) = await asyncio.gather(
            self._sysctl(*self.PRESSURE_OIDS),
            _in_thread(psutil.pids),
            self._disk(disk_path),
        )
        raw_level = sysctl.get("kern.memorystatus_vm_pressure_level")
        if raw_level is None:
            raise HostCommandError("sysctl kern.memorystatus_vm_pressure_level returned nothing")
        level = parse_pressure_level(raw_level)
        free = sysctl.get("kern.memorystatus_level")
        memory_detail = f"memory pressure {level}" + (f": {free}% free system-wide" if free else "")
        pid, pid_detail = pid_pressure(
            used=len(pids),
            limit=int(sysctl.get("kern.maxproc", "0")),
            threshold=self._pid_threshold,
        )
        return Pressure(
            memory=level != "normal",
            memory_level=level,
            memory_detail=memory_detail,
            disk=disk,
            disk_detail=disk_detail,
            pid=pid,
            pid_detail=pid_detail,
        )


class LinuxHost(_HostBase):
    """Linux via /proc, /etc and psutil: for development and CI, not a production target."""

    async def _gather_facts(self) -> HostFacts:
        os_release, cpuinfo, machine_id, memory = await asyncio.gather(
            _read_text("/etc/os-release"),
            _read_text("/proc/cpuinfo"),
            self._machine_id(),
            _in_thread(psutil.virtual_memory),
        )
        uname = platform.uname()
        return HostFacts(
            os="linux",
            architecture=goarch(uname.machine),
            kernel_version=uname.release,
            os_image=parse_os_release(os_release or ""),
            hostname=socket.gethostname(),
            machine_id=machine_id,
            cpu_count=psutil.cpu_count(logical=True) or 1,
            memory_bytes=memory.total,
            chip=parse_cpuinfo_model(cpuinfo or ""),
        )

    @staticmethod
    async def _machine_id() -> str:
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            text = (await _read_text(path) or "").strip()
            if text:
                return text
        # Stable as long as the hostname is; better than a fresh random id each start.
        return uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()).hex

    async def available_memory(self) -> int:
        return (await _in_thread(psutil.virtual_memory)).available

    async def memory_signal(self) -> MemorySignal:
        meminfo, psi = await asyncio.gather(_read_text("/proc/meminfo"), _read_text("/proc/pressure/memory"))
        if meminfo is None:
            raise HostCommandError("cannot read /proc/meminfo")
        return linux_memory_signal(meminfo=meminfo, psi=psi)

    async def pressure(self, *, disk_path: str) -> Pressure:
        psi_text, memory, (disk, disk_detail), (pid, pid_detail) = await asyncio.gather(
            _read_text("/proc/pressure/memory"),
            _in_thread(psutil.virtual_memory),
            self._disk(disk_path),
            self._pid_pressure(),
        )
        full = parse_psi(psi_text).get("full", {}).get("avg10") if psi_text else None
        level, memory_detail = linux_memory_pressure(
            available=memory.available, total=memory.total, full_avg10=full
        )
        return Pressure(
            memory=level != "normal",
            memory_level=level,
            memory_detail=memory_detail,
            disk=disk,
            disk_detail=disk_detail,
            pid=pid,
            pid_detail=pid_detail,
        )

    async def _pid_pressure(self) -> tuple[bool, str]:
        """Like the kubelet: tasks (threads included, they take PIDs) from /proc/loadavg
        against min(pid_max, threads-max)."""
        limits = [
            int(text)
            for text in await asyncio.gather(
                _read_text("/proc/sys/kernel/pid_max"), _read_text("/proc/sys/kernel/threads-max")
            )
            if text and text.strip().isdigit()
        ]
        loadavg = await _read_text("/proc/loadavg")
        used = parse_loadavg_tasks(loadavg) if loadavg else len(await _in_thread(psutil.pids))
        limit = min(limits) if limits else 0
        return pid_pressure(used=used, limit=limit, threshold=self._pid_threshold)


def detect_host() -> Host:
    """MacHost on macOS, LinuxHost everywhere else."""
    return MacHost() if sys.platform == "darwin" else LinuxHost()
