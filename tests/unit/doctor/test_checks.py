"""The doctor's checks through their command layer: on Linux, macOS's answers (llama-server
--list-devices, sysctl, launchctl) come from outputs recorded on Macs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vnode.doctor import checks
from vnode.doctor.checks import Inputs
from vnode.provider.host import HostFacts

RECORDED = Path(__file__).parent / "recorded"
SHIM = Path(__file__).resolve().parents[2] / "support" / "launchctl"
GiB = 1024**3


def _inputs(tmp_path: Path, **changes) -> Inputs:
    base = dict(llama_server=None, kubeconfig=None, node_name="studio", host_ip=None, kubelet_port=10250,
                state_dir=tmp_path / "state", memory_fraction=None, tls_cert_file=None, system=False, macos=True)
    return Inputs(**{**base, **changes})


def _facts(memory: int) -> HostFacts:
    return HostFacts(os="darwin", architecture="arm64", kernel_version="24.4.0", os_image="macOS 15.4", hostname="studio",
                     machine_id="x", cpu_count=12, memory_bytes=memory, chip="Apple M2 Max")


@pytest.fixture
def mac_answers(monkeypatch):
    """Replace the commands with recorded Mac outputs, keyed by the command's last word."""
    answers: dict[str, tuple[int, str]] = {}

    async def output(*argv: str, timeout: float = 30.0) -> tuple[int, str]:
        return answers[argv[-1]]

    monkeypatch.setattr(checks, "_output", output)
    return answers


async def test_metal_listed(mac_answers, tmp_path):
    mac_answers["--list-devices"] = (0, (RECORDED / "list-devices-m2max.txt").read_text())
    check = await checks.metal(_inputs(tmp_path), Path("/opt/homebrew/bin/llama-server"))
    assert check.status == "ok" and "MTL0 Apple M2 Max" in check.detail


async def test_a_server_without_metal_fails_on_a_mac_and_is_skipped_elsewhere(mac_answers, tmp_path):
    mac_answers["--list-devices"] = (0, (RECORDED / "list-devices-cpu-only.txt").read_text())
    check = await checks.metal(_inputs(tmp_path), Path("/x/llama-server"))
    assert check.status == "fail" and "no Metal device" in check.detail and "brew install llama.cpp" in check.fix
    assert (await checks.metal(_inputs(tmp_path, macos=False), Path("/x/llama-server"))).status == "skip"


async def test_budget_above_the_gpu_wired_limit_fails_with_the_sysctl_to_run(mac_answers, tmp_path):
    mac_answers["iogpu.wired_limit_mb"] = (0, (RECORDED / "sysctl-wired-set.txt").read_text())  # 56 GiB
    check = await checks.memory(_inputs(tmp_path, memory_fraction=0.75), _facts(96 * GiB))  # budget 72 GiB
    assert check.status == "fail", check
    assert "GPU wired limit 56.0 GiB (iogpu.wired_limit_mb)" in check.detail
    assert "sudo sysctl iogpu.wired_limit_mb=" in check.fix
    ok = await checks.memory(_inputs(tmp_path, memory_fraction=0.5), _facts(96 * GiB))
    assert ok.status == "ok", ok


async def test_the_default_wired_limit_against_the_default_budget(mac_answers, tmp_path):
    mac_answers["iogpu.wired_limit_mb"] = (0, (RECORDED / "sysctl-wired-default.txt").read_text())
    for memory in (16 * GiB, 24 * GiB, 64 * GiB):
        check = await checks.memory(_inputs(tmp_path), _facts(memory))
        assert check.status == "ok", (memory, check)
    # From 128 GB the budget is 90 %, above macOS's default (about 75 %): said, not failed.
    big = await checks.memory(_inputs(tmp_path), _facts(192 * GiB))
    assert big.status == "warn" and "macOS default" in big.detail and "iogpu.wired_limit_mb=" in big.fix


async def test_model_store(tmp_path):
    assert (await checks.model_store(_inputs(tmp_path))).status == "ok"
    assert not (tmp_path / "state").exists(), "the doctor creates nothing"
    (tmp_path / "state" / "models").mkdir(parents=True)
    check = await checks.model_store(_inputs(tmp_path))
    assert check.status == "ok" and "writable" in check.detail
    assert os.listdir(tmp_path / "state" / "models") == []
    (tmp_path / "file").write_text("")
    bad = await checks.model_store(_inputs(tmp_path, state_dir=tmp_path / "file" / "state"))
    assert bad.status == "fail" and "not a directory" in bad.detail and "--state-dir" in bad.fix


async def test_host_ip_must_be_local_and_its_port_usable(tmp_path):
    check = await checks.host_ip(_inputs(tmp_path, host_ip="192.0.2.77"))
    assert check.status == "fail" and "not an address of this machine" in check.detail
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        free = await checks.host_ip(_inputs(tmp_path, host_ip="127.0.0.1", kubelet_port=port + 1 if port < 65535 else 1024))
        s.listen()
        listening = await checks.host_ip(_inputs(tmp_path, host_ip="127.0.0.1", kubelet_port=port))
    assert listening.status == "ok" and "answers" in listening.detail
    assert free.status in ("ok", "fail")  # the next port may be someone else's


async def test_service_state_through_launchctl(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{SHIM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LAUNCHCTL_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("LAUNCHCTL_STATE", str(tmp_path / "launchd"))
    check = await checks.service(_inputs(tmp_path))
    assert check.status == "warn" and "vnode service install" in check.fix
    from vnode.service import command

    await command.install(["--kubeconfig=/k", "--host-ip=192.0.2.10"], system=False, say=lambda _: None)
    check = await checks.service(_inputs(tmp_path))
    assert check.status == "ok" and "running, pid 4242" in check.detail
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert (await checks.service(_inputs(tmp_path))).status == "skip"


async def test_serving_certificate_found_in_the_state_dir(tmp_path):
    from vnode.node import certs

    pki = tmp_path / "state" / "pki"
    pki.mkdir(parents=True)
    assert (await checks.serving_certificate(_inputs(tmp_path))).status == "skip"
    certs.self_signed(pki, node_name="studio", host_ip="192.0.2.10")
    check = await checks.serving_certificate(_inputs(tmp_path))
    assert check.status == "ok" and "serving-self-signed.crt" in check.detail and "days left" in check.detail


async def test_without_a_kubeconfig_the_cluster_checks_are_skipped(tmp_path):
    found = await checks.api_server(_inputs(tmp_path))
    assert [c.status for c in found] == ["skip"] * 3


async def test_an_unreadable_kubeconfig_fails(tmp_path):
    (tmp_path / "kc").write_text("not: [a kubeconfig")
    found = await checks.api_server(_inputs(tmp_path, kubeconfig=tmp_path / "kc"))
    assert found[0].status == "fail" and "vnode join" in found[0].fix
