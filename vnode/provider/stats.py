"""Resource usage of this node and of each server, measured on their real process trees.

What metrics-server, `kubectl top`, the HPA and the eviction manager read. A container is
its server process and every descendant (not the shim, as conmon is not counted by the
kubelet). CPU is user + system seconds, monotonic while the process lives. Memory is the
working set:
- macOS: the physical footprint from proc_pid_rusage (what Activity Monitor calls
  Memory); it counts Metal/IOAccelerator buffers that RSS misses, so a model on the GPU
  is not reported as a few hundred MB.
- Linux: the kubelet's working set is cgroup usage minus inactive file pages; a process
  tree without a cgroup of its own comes closest with RSS (anonymous memory plus the
  mapped model pages in use), which is what is reported.
Page faults (for /stats/summary): Linux reads minflt/majflt of /proc/<pid>/stat and
pgfault/pgmajfault of /proc/vmstat; macOS has only page-ins (major faults) per process,
from the same rusage_info_v2, and nothing for the node.
Blocking (psutil, ctypes, /proc): callers run it in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

RUSAGE_INFO_V2 = 2


class RUsageInfoV2(ctypes.Structure):
    """struct rusage_info_v2 of <sys/resource.h> (macOS)."""

    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        ("ri_user_time", ctypes.c_uint64),
        ("ri_system_time", ctypes.c_uint64),
        ("ri_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_interrupt_wkups", ctypes.c_uint64),
        ("ri_pageins", ctypes.c_uint64),
        ("ri_wired_size", ctypes.c_uint64),
        ("ri_resident_size", ctypes.c_uint64),
        ("ri_phys_footprint", ctypes.c_uint64),
        ("ri_proc_start_abstime", ctypes.c_uint64),
        ("ri_proc_exit_abstime", ctypes.c_uint64),
        ("ri_child_user_time", ctypes.c_uint64),
        ("ri_child_system_time", ctypes.c_uint64),
        ("ri_child_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_child_interrupt_wkups", ctypes.c_uint64),
        ("ri_child_pageins", ctypes.c_uint64),
        ("ri_child_elapsed_abstime", ctypes.c_uint64),
        ("ri_diskio_bytesread", ctypes.c_uint64),
        ("ri_diskio_byteswritten", ctypes.c_uint64),
    ]


def parse_rusage_v2(raw: bytes) -> RUsageInfoV2:
    """A rusage_info_v2 from its bytes (as proc_pid_rusage fills them)."""
    if len(raw) < ctypes.sizeof(RUsageInfoV2):
        raise ValueError(f"rusage_info_v2 needs {ctypes.sizeof(RUsageInfoV2)} bytes, got {len(raw)}")
    return RUsageInfoV2.from_buffer_copy(raw[: ctypes.sizeof(RUsageInfoV2)])


_libproc: ctypes.CDLL | None = None


def _proc_pid_rusage(pid: int) -> RUsageInfoV2 | None:
    global _libproc
    if _libproc is None:
        _libproc = ctypes.CDLL(ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib", use_errno=True)
    info = RUsageInfoV2()
    if _libproc.proc_pid_rusage(ctypes.c_int(pid), ctypes.c_int(RUSAGE_INFO_V2), ctypes.byref(info)) != 0:
        return None
    return info


def parse_proc_stat_faults(text: str) -> tuple[int, int]:
    """(all page faults, major page faults) from the text of /proc/<pid>/stat."""
    # Fields after the parenthesised command (which may hold spaces): state ppid pgrp
    # session tty_nr tpgid flags minflt cminflt majflt ...
    fields = text.rsplit(")", 1)[1].split()
    minor, major = int(fields[7]), int(fields[9])
    return minor + major, major


def _memory(proc: psutil.Process) -> tuple[int, int, int | None, int | None]:
    """(working set, rss, page faults, major page faults) of one process; faults None when unknown."""
    rss = int(proc.memory_info().rss)
    if sys.platform == "darwin":
        info = _proc_pid_rusage(proc.pid)
        if info is None:
            return rss, rss, None, None
        return int(info.ri_phys_footprint), rss, None, int(info.ri_pageins)
    faults: int | None = None
    major: int | None = None
    if sys.platform.startswith("linux"):
        try:
            faults, major = parse_proc_stat_faults(Path(f"/proc/{proc.pid}/stat").read_text())
        except OSError:
            faults = major = 0  # it exited after psutil read it: its faults left with it
        except (ValueError, IndexError):
            pass
    return rss, rss, faults, major


def working_set(proc: psutil.Process) -> int:
    """One process's working set (see the module docstring)."""
    return _memory(proc)[0]


def _add(total: int | None, value: int | None) -> int | None:
    return None if total is None or value is None else total + value


@dataclass(frozen=True)
class Usage:
    """A point-in-time reading of a process tree or of the node."""

    timestamp: float  # Unix seconds when read
    cpu_seconds: float  # cumulative user + system
    working_set_bytes: int
    rss_bytes: int
    processes: int = 1
    # For /stats/summary's MemoryStats; None when the platform does not tell.
    usage_bytes: int | None = None  # a tree: max(working set, rss); the node: total - free (cache included)
    available_bytes: int | None = None  # the node only: memory that can still be had
    page_faults: int | None = None  # cumulative, major ones included
    major_page_faults: int | None = None


def _children_map() -> dict[int, list[psutil.Process]]:
    """Parent pid -> its child processes, from one pass over the process table."""
    kids: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid is not None and ppid != proc.pid:
            kids.setdefault(ppid, []).append(proc)
    return kids


def _tree(root: psutil.Process, kids: dict[int, list[psutil.Process]]) -> list[psutil.Process]:
    tree, stack, seen = [root], [root.pid], {root.pid}
    while stack:
        for child in kids.get(stack.pop(), ()):
            if child.pid not in seen:
                seen.add(child.pid)
                tree.append(child)
                stack.append(child.pid)
    return tree


def _sum_usage(procs: list[psutil.Process]) -> Usage | None:
    cpu = 0.0
    wss = rss = count = 0
    faults: int | None = 0
    major: int | None = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                p_wss, p_rss, p_faults, p_major = _memory(proc)
        except psutil.Error:
            continue  # a child exited while we looked
        cpu += times.user + times.system
        wss += p_wss
        rss += p_rss
        faults, major = _add(faults, p_faults), _add(major, p_major)
        count += 1
    if count == 0:
        return None
    return Usage(timestamp=time.time(), cpu_seconds=cpu, working_set_bytes=wss, rss_bytes=rss, processes=count,
                 usage_bytes=max(wss, rss), page_faults=faults, major_page_faults=major)


# psutil's children() scans the whole process table at each call; our own map of it costs
# about as much as this many scans (process_iter builds a Process per entry).
_SCANS_PER_MAP = 3


def tree_usages(pids: list[int]) -> dict[int, Usage | None]:
    """tree_usage of many roots: with more than a few, the process table is read once rather
    than once per root (which would make a scrape of every container quadratic)."""
    kids = _children_map() if len(pids) > _SCANS_PER_MAP else None
    out: dict[int, Usage | None] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = _tree(root, kids) if kids is not None else [root, *root.children(recursive=True)]
        except psutil.Error:
            out[pid] = None
            continue
        out[pid] = _sum_usage(tree)
    return out


def tree_usage(pid: int, *, children: bool = True) -> Usage | None:
    """The process `pid` and (unless `children` is False) all its descendants; None when
    `pid` is gone."""
    if children:
        return tree_usages([pid])[pid]
    try:
        return _sum_usage([psutil.Process(pid)])
    except psutil.Error:
        return None


def parse_vmstat_faults(text: str) -> tuple[int, int] | None:
    """(pgfault, pgmajfault) from the text of /proc/vmstat; None when either is missing."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("pgfault", "pgmajfault"):
            values[key] = int(value)
    if len(values) != 2:
        return None
    return values["pgfault"], values["pgmajfault"]


def _node_faults() -> tuple[int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return parse_vmstat_faults(Path("/proc/vmstat").read_text())
    except (OSError, ValueError):
        return None


def node_usage() -> Usage:
    """The whole machine: CPU seconds of all cores not idle, memory in use (total - available)."""
    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    # guest time is already counted in user on Linux
    busy -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    vm = psutil.virtual_memory()
    faults = _node_faults()
    return Usage(timestamp=time.time(), cpu_seconds=busy, working_set_bytes=int(vm.total - vm.available),
                 rss_bytes=int(vm.total - vm.available), usage_bytes=int(vm.total - vm.free),
                 available_bytes=int(vm.available), page_faults=faults[0] if faults else None,
                 major_page_faults=faults[1] if faults else None)
