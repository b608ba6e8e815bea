"""Process-tree usage: the server and its children, CPU seconds and working set; macOS's
physical footprint read from a recorded rusage_info_v2."""

import ctypes
import os
import struct
import subprocess
import sys
import time

import pytest

from vnode.provider import stats


def test_rusage_v2_layout_and_footprint():
    # A buffer as proc_pid_rusage(pid, RUSAGE_INFO_V2) fills it: uuid[16] then 18 uint64.
    values = list(range(1, 19))
    values[7] = 3_221_225_472  # ri_phys_footprint: 3 GiB, e.g. a model in Metal buffers
    values[6] = 412_090_368  # ri_resident_size: what RSS shows
    raw = bytes(range(16)) + struct.pack("<18Q", *values)
    assert ctypes.sizeof(stats.RUsageInfoV2) == len(raw) == 160
    info = stats.parse_rusage_v2(raw + b"\0" * 8)
    assert info.ri_phys_footprint == 3_221_225_472 and info.ri_resident_size == 412_090_368
    assert (info.ri_user_time, info.ri_diskio_byteswritten) == (1, 18)
    with pytest.raises(ValueError):
        stats.parse_rusage_v2(raw[:100])


def test_tree_counts_children():
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'x = bytearray(64 << 20); import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        usage = None
        while time.monotonic() < deadline:
            usage = stats.tree_usage(parent.pid)
            if usage and usage.processes == 2 and usage.working_set_bytes > 64 << 20:
                break
            time.sleep(0.1)
        assert usage and usage.processes == 2
        assert usage.working_set_bytes > 64 << 20  # the child's memory is the container's
        assert usage.cpu_seconds > 0
    finally:
        for p in __import__("psutil").Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()


def test_gone_process_is_none():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert stats.tree_usage(proc.pid) is None


def test_node_usage_is_sane():
    usage = stats.node_usage()
    assert usage.cpu_seconds > 0 and 0 < usage.working_set_bytes < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
