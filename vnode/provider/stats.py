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
Blocking (psutil, ctypes): callers run it in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from dataclasses import dataclass

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


def working_set(proc: psutil.Process) -> int:
    """One process's working set (see the module docstring)."""
    if sys.platform == "darwin":
        info = _proc_pid_rusage(proc.pid)
        if info is not None:
            return int(info.ri_phys_footprint)
    return int(proc.memory_info().rss)


@dataclass(frozen=True)
class Usage:
    """A point-in-time reading of a process tree or of the node."""

    timestamp: float  # Unix seconds when read
    cpu_seconds: float  # cumulative user + system
    working_set_bytes: int
    rss_bytes: int
    processes: int = 1


def tree_usage(pid: int) -> Usage | None:
    """The process `pid` and all its descendants; None when `pid` is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu = 0.0
    wss = rss = count = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                wss += working_set(proc)
                rss += proc.memory_info().rss
                count += 1
        except psutil.Error:
            continue  # a child exited while we looked
    if count == 0:
        return None
    return Usage(timestamp=time.time(), cpu_seconds=cpu, working_set_bytes=wss, rss_bytes=rss, processes=count)


def node_usage() -> Usage:
    """The whole machine: CPU seconds of all cores not idle, memory in use (total - available)."""
    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    # guest time is already counted in user on Linux
    busy -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    vm = psutil.virtual_memory()
    return Usage(timestamp=time.time(), cpu_seconds=busy, working_set_bytes=int(vm.total - vm.available),
                 rss_bytes=int(vm.total - vm.available))
