"""`vnode join` as a command: bad input is one line naming the flag (exit 2); a node
kubeconfig still good for this node and cluster is left alone without asking the cluster;
a refusal is one message on stderr (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnode.cli import main
from vnode.join import command, discovery
from vnode.join.discovery import BootstrapToken, DiscoveryError

from .test_tls_bootstrap import NODE, SERVER, _joined

TOKEN = "abcdef.0123456789abcdef"
PIN = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("argv", "flag"), [
    ([SERVER, "--token=abc", f"--discovery-token-ca-cert-hash={PIN}"], "--token"),
    ([SERVER, f"--token={TOKEN}", "--discovery-token-ca-cert-hash=sha256:12"], "--discovery-token-ca-cert-hash"),
    ([SERVER, f"--token={TOKEN}"], "--discovery-token-unsafe-skip-ca-verification"),
    (["http://192.0.2.1:6443", f"--token={TOKEN}", f"--discovery-token-ca-cert-hash={PIN}"], "https://"),
    ([SERVER, f"--token={TOKEN}", f"--discovery-token-ca-cert-hash={PIN}", "--host-ip=127.0.0.1"], "--host-ip"),
    ([SERVER, f"--token={TOKEN}", f"--discovery-token-ca-cert-hash={PIN}", "--node-name=Bad_Name"], "--node-name"),
    ([SERVER, f"--token={TOKEN}", f"--discovery-token-ca-cert-hash={PIN}", "--discovery-timeout=0"], "--discovery-timeout"),
])
def test_bad_input_is_one_line_naming_the_flag(capsys, argv, flag):
    assert main(["join", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def _options(tmp_path: Path, **changes) -> command.JoinOptions:
    base = dict(server=SERVER, token=BootstrapToken("abcdef", "0123456789abcdef"), pins=frozenset(), node_name=NODE,
                host_ip="192.0.2.10", state_dir=tmp_path, kubeconfig=tmp_path / "kubeconfig", service=False,
                discovery_timeout=1, bootstrap_timeout=1)
    return command.JoinOptions(**{**base, **changes})


async def test_joining_again_changes_nothing_and_says_so(tmp_path: Path, monkeypatch):
    kubeconfig, ca = _joined(tmp_path)
    before = kubeconfig.read_bytes()

    async def no_discovery(*args, **kwargs):
        raise AssertionError("an already joined node does not ask the cluster again")

    monkeypatch.setattr(command, "discover", no_discovery)
    said: list[str] = []
    options = _options(tmp_path, pins=frozenset({discovery.ca_cert_hash(ca.cert)}))
    assert await command.join(options, say=said.append) == 0
    assert any(line.startswith("already joined") and "nothing changed" in line for line in said), said
    assert kubeconfig.read_bytes() == before
    assert any("vnode run --kubeconfig=" in line and "--host-ip=192.0.2.10" in line for line in said)


async def test_a_kubeconfig_for_another_node_is_not_kept(tmp_path: Path, monkeypatch, capsys):
    _joined(tmp_path, node="someone-else")
    asked: list[str] = []

    async def refusing_discovery(server, *args, **kwargs):
        asked.append(server)
        raise DiscoveryError("refused for the test")

    monkeypatch.setattr(command, "discover", refusing_discovery)
    assert await command.join(_options(tmp_path), say=print) == 1
    assert asked == [SERVER] and "vnode join: refused for the test" in capsys.readouterr().err


def test_the_run_line_keeps_a_non_default_state_dir(tmp_path: Path):
    line = command.run_command(_options(tmp_path), "192.0.2.10")
    assert f"--state-dir={tmp_path}" in line and f"--kubeconfig={tmp_path / 'kubeconfig'}" in line
    default = command.run_command(_options(tmp_path, state_dir=command.DEFAULT_STATE_DIR), "192.0.2.10")
    assert not any(arg.startswith("--state-dir") for arg in default)


async def test_join_installs_the_service_that_runs_the_printed_line(tmp_path: Path, monkeypatch):
    shim = Path(__file__).resolve().parents[2] / "support" / "launchctl"
    kubeconfig, ca = _joined(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", f"{shim}:/usr/bin:/bin")
    monkeypatch.setenv("LAUNCHCTL_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("LAUNCHCTL_STATE", str(tmp_path / "launchd"))
    said: list[str] = []
    options = _options(tmp_path, pins=frozenset({discovery.ca_cert_hash(ca.cert)}), service=True)
    assert await command.join(options, say=said.append) == 0
    import plistlib

    job = plistlib.loads((tmp_path / "home" / "Library" / "LaunchAgents" / "dev.llmkube.vnode.plist").read_bytes())
    assert job["ProgramArguments"][3:] == [*command.run_command(options, "192.0.2.10")[1:], "--log-format=json"]
    assert any(line.startswith("installed: LaunchAgent") for line in said), said
    said.clear()
    assert await command.join(options, say=said.append) == 0
    assert any(line.startswith("already installed") for line in said), said


async def test_join_without_launchd_says_how_to_start(tmp_path: Path, monkeypatch):
    kubeconfig, ca = _joined(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    said: list[str] = []
    options = _options(tmp_path, pins=frozenset({discovery.ca_cert_hash(ca.cert)}), service=True)
    assert await command.join(options, say=said.append) == 0
    assert any("no launchd on this machine" in line for line in said), said


async def test_a_loopback_route_is_refused_before_anything_is_asked(tmp_path: Path, monkeypatch, capsys):
    async def no_discovery(*args, **kwargs):
        raise AssertionError("nothing is asked of the cluster")

    monkeypatch.setattr(command, "discover", no_discovery)
    options = _options(tmp_path, server="https://127.0.0.1:6443", host_ip=None)
    assert await command.join(options, say=lambda _: None) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "pass --host-ip" in err
    assert not (tmp_path / "kubeconfig").exists()


def test_the_printed_run_line_verifies_the_api_server_s_client_certificate(tmp_path: Path):
    line = command.run_command(_options(tmp_path), "192.0.2.10")
    assert f"--client-ca-file={tmp_path / 'pki' / 'ca.crt'}" in line and "--bootstrap-serving-cert" in line
