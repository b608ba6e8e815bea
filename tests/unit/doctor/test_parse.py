"""The doctor's readings of command output recorded on Macs and its verdicts on numbers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from vnode.doctor import parse

RECORDED = Path(__file__).parent / "recorded"
GiB = parse.GiB
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def test_metal_device_is_read_from_a_mac_listing():
    devices = parse.list_devices((RECORDED / "list-devices-m2max.txt").read_text())
    assert devices == [parse.Device("MTL0", "Apple M2 Max", 73727, 73727)]
    assert devices[0].metal


def test_older_builds_name_the_device_metal_and_a_cpu_build_lists_none():
    assert parse.list_devices("Available devices:\n  Metal: Apple M1 Pro (21845 MiB, 21844 MiB free)\n")[0].metal
    assert parse.list_devices((RECORDED / "list-devices-cpu-only.txt").read_text()) == []
    assert not parse.list_devices("Available devices:\n  CUDA0: NVIDIA L4 (22478 MiB, 22100 MiB free)\n")[0].metal


def test_server_version():
    assert parse.server_version((RECORDED / "version-mac.txt").read_text()) == "b6641 (1a2b3c4d)"
    assert parse.server_version("nothing here") is None


@pytest.mark.parametrize(("name", "memory", "limit", "default"), [
    ("sysctl-wired-default.txt", 96 * GiB, 72 * GiB, True),
    ("sysctl-wired-default.txt", 24 * GiB, 16 * GiB, True),
    ("sysctl-wired-set.txt", 96 * GiB, 56 * GiB, False),
])
def test_wired_limit(name, memory, limit, default):
    from vnode.provider.host import parse_sysctl_output

    mb = parse.sysctl_int(parse_sysctl_output((RECORDED / name).read_text())["iogpu.wired_limit_mb"])
    assert parse.wired_limit_bytes(memory, mb) == (limit, default)


def test_sysctl_int_reads_both_spellings():
    assert parse.sysctl_int("57344\n") == parse.sysctl_int("iogpu.wired_limit_mb: 57344") == 57344
    assert parse.sysctl_int("") is None


@pytest.mark.parametrize(("start", "end", "status", "words"), [
    (NOW - dt.timedelta(days=10), NOW + dt.timedelta(days=355), "ok", "355 days left"),
    (NOW - dt.timedelta(days=95), NOW + dt.timedelta(days=5), "warn", "past 90 %"),
    (NOW - dt.timedelta(days=2), NOW - dt.timedelta(minutes=1), "fail", "expired"),
    (NOW + dt.timedelta(hours=1), NOW + dt.timedelta(days=30), "fail", "not valid before"),
])
def test_certificate_verdict(start, end, status, words):
    got, text = parse.certificate_verdict(start, end, NOW)
    assert got == status and words in text, text


@pytest.mark.parametrize(("skew", "status"), [(0.4, "ok"), (-2.0, "ok"), (12, "warn"), (-45, "fail")])
def test_skew_verdict(skew, status):
    assert parse.skew_verdict(skew)[0] == status


def test_a_portable_build_keeps_its_own_version_line():
    assert parse.server_version("version: 0.6.0-dev (build 0, commit unknown)\nbuilt with GNU 12.2.0") == \
        "0.6.0-dev (build 0, commit unknown)"
