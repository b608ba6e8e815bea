"""nodeInfo.bootID: macOS's kern.bootsessionuuid (parsed from recorded sysctl output) and
Linux's boot_id, so a reboot shows."""

from __future__ import annotations

from vnode.node import bootid
from vnode.node.status import node_info

from .test_status import FACTS

# `sysctl kern.bootsessionuuid` on macOS 15 (an M2 Max).
RECORDED = "kern.bootsessionuuid: 6E3B5D1A-93C4-4F7E-8B2A-0C1D2E3F4A5B\n"


def test_macos_boot_session_is_parsed_and_lowercased():
    assert bootid.parse_boot_session(RECORDED) == "6e3b5d1a-93c4-4f7e-8b2a-0c1d2e3f4a5b"


def test_missing_or_garbled_output_gives_nothing():
    assert bootid.parse_boot_session("") == ""
    assert bootid.parse_boot_session("kern.bootsessionuuid: not-a-uuid\n") == ""


async def test_linux_reads_proc(tmp_path, monkeypatch):
    f = tmp_path / "boot_id"
    f.write_text("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
    monkeypatch.setattr(bootid, "LINUX_BOOT_ID", str(f))
    assert await bootid.read_boot_id("Linux") == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


async def test_macos_runs_sysctl(monkeypatch, tmp_path):
    fake = tmp_path / "sysctl"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = kern.bootsessionuuid ] && printf '{RECORDED}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert await bootid.read_boot_id("Darwin") == "6e3b5d1a-93c4-4f7e-8b2a-0c1d2e3f4a5b"


def test_node_info_carries_it():
    assert node_info(FACTS, boot_id="b-1")["bootID"] == "b-1"
