"""`vnode service install | uninstall | status` end to end on Linux, with launchctl replaced
by the recording stand-in in tests/support/launchctl (first on PATH) and HOME in a
temporary directory: what is written, which launchctl calls are made, and that doing
anything twice changes nothing."""

from __future__ import annotations

import json
import os
import plistlib
import sys
from pathlib import Path

import pytest

from vnode.cli import main

SHIM = Path(__file__).resolve().parents[2] / "support" / "launchctl"


@pytest.fixture
def mac(tmp_path: Path, monkeypatch) -> Path:
    """A home directory and a launchctl that records its calls (the file returned)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{SHIM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LAUNCHCTL_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("LAUNCHCTL_STATE", str(tmp_path / "launchd"))
    for name in [k for k in os.environ if k.startswith("VNODE_")]:
        monkeypatch.delenv(name)
    (tmp_path / "calls").write_text("")
    return tmp_path / "calls"


def _calls(record: Path) -> list[str]:
    return record.read_text().splitlines()


def _plist(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / "dev.llmkube.vnode.plist"


def test_install_status_uninstall_each_idempotent(mac: Path, tmp_path: Path, capsys, monkeypatch):
    home = Path(os.environ["HOME"])
    monkeypatch.chdir(tmp_path)
    uid = os.getuid()
    argv = ["service", "install", "--kubeconfig", "kc", "--host-ip", "192.0.2.10", "--memory-fraction", "0.7",
            "--label", "team=ml", "--no-register-taint"]
    assert main(argv) == 0
    assert "installed: LaunchAgent" in capsys.readouterr().out
    job = plistlib.loads(_plist(home).read_bytes())
    assert job["ProgramArguments"] == [sys.executable, "-m", "vnode", "run", f"--kubeconfig={tmp_path / 'kc'}",
                                       "--host-ip=192.0.2.10", "--memory-fraction=0.7", "--label=team=ml",
                                       "--no-register-taint", "--log-format=json"]
    assert (_plist(home).stat().st_mode & 0o777) == 0o600
    assert (home / "Library" / "Logs" / "vnode").is_dir() and Path(job["WorkingDirectory"]).is_dir()
    assert _calls(mac) == [f"print gui/{uid}/dev.llmkube.vnode", f"enable gui/{uid}/dev.llmkube.vnode",
                           f"bootstrap gui/{uid} {_plist(home)}"]

    mac.write_text("")
    assert main(argv) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert _calls(mac) == [f"print gui/{uid}/dev.llmkube.vnode"], "the same job is not reloaded"

    mac.write_text("")
    assert main([*argv, "--max-pods", "20"]) == 0
    assert capsys.readouterr().out.startswith("updated:")
    assert _calls(mac)[1:] == [f"bootout gui/{uid}/dev.llmkube.vnode", f"enable gui/{uid}/dev.llmkube.vnode",
                               f"bootstrap gui/{uid} {_plist(home)}"], "a changed job is reloaded from the new plist"
    assert "--max-pods=20" in plistlib.loads(_plist(home).read_bytes())["ProgramArguments"]

    assert main(["service", "status"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"LaunchAgent gui/{uid}/dev.llmkube.vnode: running, pid 4242, "
                                                       "last exit (never exited), 1 run")
    assert main(["service", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["loaded"] and status["state"] == "running" and status["pid"] == 4242

    mac.write_text("")
    assert main(["service", "uninstall"]) == 0
    assert capsys.readouterr().out.startswith("uninstalled:")
    assert not _plist(home).exists()
    assert _calls(mac)[1:] == [f"bootout gui/{uid}/dev.llmkube.vnode"]
    assert main(["service", "uninstall"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["service", "status"]) == 1
    assert "not installed" in capsys.readouterr().out


def test_bad_settings_are_refused_before_anything_is_written(mac: Path, capsys):
    assert main(["service", "install", "--kubeconfig", "kc", "--host-ip", "not-an-ip"]) == 2
    err = capsys.readouterr().err
    assert "--host-ip" in err and len(err.strip().splitlines()) == 1
    assert not _plist(Path(os.environ["HOME"])).exists() and _calls(mac) == []


def test_a_daemon_needs_its_account(mac: Path, capsys):
    assert main(["service", "install", "--system", "--user", "_no_such_user_here", "--kubeconfig", "/k", "--host-ip",
                 "192.0.2.10"]) == 1
    err = capsys.readouterr().err
    assert "no user '_no_such_user_here'" in err and "sysadminctl" in err


async def test_a_daemon_is_written_for_its_account_with_its_own_state_dir(mac: Path, tmp_path: Path):
    import pwd

    from vnode.service import command

    me = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() != 0:
        pytest.skip("a LaunchDaemon is installed by root")
    said: list[str] = []
    await command.install(["--kubeconfig=/k", "--host-ip=192.0.2.10"], system=True, user=me, say=said.append, root=tmp_path)
    plist = tmp_path / "Library" / "LaunchDaemons" / "dev.llmkube.vnode.plist"
    job = plistlib.loads(plist.read_bytes())
    assert job["UserName"] == me
    assert f"--state-dir={tmp_path / 'Library' / 'Application Support' / 'vnode'}" in job["ProgramArguments"]
    assert _calls(mac)[-1] == f"bootstrap system {plist}"
    assert said[-1].startswith("installed: LaunchDaemon")


def test_without_launchctl_the_message_says_why(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["service", "status"]) == 1
    assert "launchctl not found" in capsys.readouterr().err
