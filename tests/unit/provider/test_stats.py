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


def test_fault_counters_parse():
    # comm may hold spaces and parentheses; minflt is the 10th field, majflt the 12th
    line = "4242 (llama (x) server) S 1 4242 4242 0 -1 4194304 1500 7 25 0 3 1 0 0 20 0 4 0 17 1000 200"
    assert stats.parse_proc_stat_faults(line) == (1525, 25)
    assert stats.parse_vmstat_faults("nr_free_pages 5\npgfault 900\npgmajfault 12\npgrefill 1\n") == (900, 12)
    assert stats.parse_vmstat_faults("nr_free_pages 5\n") is None


def test_summary_fields_of_a_tree_and_of_the_node():
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tree = stats.tree_usage(parent.pid)
            if tree and tree.processes == 2:
                break
            time.sleep(0.1)
        alone = stats.tree_usage(parent.pid, children=False)
        assert tree.processes == 2 and alone.processes == 1  # children=False: the process only
        assert tree.usage_bytes >= tree.working_set_bytes > alone.working_set_bytes
        if sys.platform.startswith("linux"):  # python's start-up alone faults in thousands of pages
            assert tree.page_faults > alone.page_faults > 100 and tree.major_page_faults is not None
    finally:
        for p in __import__("psutil").Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
    node = stats.node_usage()
    assert node.usage_bytes >= node.working_set_bytes and 0 < node.available_bytes
    if sys.platform.startswith("linux"):
        assert node.page_faults >= node.major_page_faults >= 0 and node.page_faults > 0


def test_many_trees_from_one_pass():
    """tree_usages: each root with its own descendants, the same as tree_usage one by one."""
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parents = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    alone = subprocess.Popen(["sleep", "30"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = stats.tree_usages([p.pid for p in parents] + [alone.pid, gone.pid])
            if all(got[p.pid] and got[p.pid].processes == 2 for p in parents):
                break
            time.sleep(0.1)
        assert [got[p.pid].processes for p in parents] == [2, 2]
        assert got[alone.pid].processes == 1 and got[gone.pid] is None
    finally:
        for p in parents:
            for c in __import__("psutil").Process(p.pid).children(recursive=True):
                c.kill()
            p.kill()
            p.wait()
        alone.kill()
        alone.wait()
