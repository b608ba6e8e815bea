"""The launchd job vnode renders: a valid plist (plistlib round trip, as `plutil -lint`
would check on the Mac) with the keys launchd needs, nothing secret in it, and the
example in deploy/launchd/ is exactly what `vnode service install` writes."""

from __future__ import annotations

import plistlib
import subprocess
from pathlib import Path

import pytest

from vnode.service import launchctl
from vnode.service.launchd import LABEL, REQUIRED_KEYS, Layout, problems, render

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "launchd"
SUPPORT = Path(__file__).resolve().parents[2] / "support" / "launchctl"
AGENT = Layout(system=False, home=Path("/Users/a"), uid=501)
DAEMON = Layout(system=True, home=Path("/var/root"), uid=0)
PROGRAM = ["/opt/homebrew/bin/python3", "-m", "vnode", "run", "--kubeconfig=/Users/a/.local/state/vnode/kubeconfig",
           "--host-ip=192.168.1.50", "--memory-fraction=0.7", "--log-format=json"]


def test_agent_job_round_trips_with_the_required_keys():
    job = plistlib.loads(render(AGENT, PROGRAM))
    assert all(key in job for key in REQUIRED_KEYS)
    assert job["Label"] == LABEL
    assert job["ProgramArguments"] == PROGRAM
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}, "restarted after a failure, not after a clean stop"
    assert job["ThrottleInterval"] >= 10 and job["ExitTimeOut"] >= 30
    assert job["WorkingDirectory"] == "/Users/a/.local/state/vnode"
    assert job["SoftResourceLimits"]["NumberOfFiles"] >= 4096, "launchd's 256 would stop vnode near 500 pods"
    assert job["StandardOutPath"] == job["StandardErrorPath"] == "/Users/a/Library/Logs/vnode/vnode.log"
    assert "UserName" not in job
    assert problems(render(AGENT, PROGRAM)) == []
    assert AGENT.plist == Path("/Users/a/Library/LaunchAgents/dev.llmkube.vnode.plist")
    assert AGENT.service == "gui/501/dev.llmkube.vnode"


def test_daemon_job_runs_as_an_unprivileged_account_at_boot():
    job = plistlib.loads(render(DAEMON, PROGRAM))
    assert job["UserName"] == job["GroupName"] == "_vnode"
    assert job["WorkingDirectory"] == "/Library/Application Support/vnode"
    assert DAEMON.plist == Path("/Library/LaunchDaemons/dev.llmkube.vnode.plist")
    assert DAEMON.service == "system/dev.llmkube.vnode"
    assert plistlib.loads(render(DAEMON, PROGRAM, user="_llm"))["UserName"] == "_llm"


def test_no_secret_from_the_environment_is_written(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("VNODE_KUBECONFIG", "/secret/place")
    data = render(AGENT, PROGRAM)
    assert b"hf_secret_value" not in data and b"/secret/place" not in data
    assert set(plistlib.loads(data)["EnvironmentVariables"]) == {"PATH"}


def test_a_relative_program_is_refused():
    with pytest.raises(ValueError, match="absolute"):
        render(AGENT, ["vnode", "run"])


@pytest.mark.parametrize(("data", "why"), [
    (b"<plist><dict><key>Label</key>", "not a property list"),
    (plistlib.dumps(["a"]), "not a dictionary"),
    (plistlib.dumps({"Label": LABEL}), "missing key ProgramArguments"),
    (plistlib.dumps({**plistlib.loads(render(AGENT, PROGRAM)), "ProgramArguments": ["vnode"]}), "not an absolute path"),
    (plistlib.dumps({**plistlib.loads(render(AGENT, PROGRAM)), "ProgramArguments": []}), "non-empty list"),
    (plistlib.dumps({**plistlib.loads(render(AGENT, PROGRAM)), "Label": "x"}), "Label is 'x'"),
])
def test_problems_name_what_is_wrong(data, why):
    assert any(why in p for p in problems(data)), problems(data)


def test_the_example_in_deploy_is_what_install_writes():
    example = (DEPLOY / "dev.llmkube.vnode.plist.example").read_bytes()
    assert example == render(AGENT, PROGRAM), "regenerate deploy/launchd/dev.llmkube.vnode.plist.example"


def test_print_output_recorded_on_a_mac_parses():
    fields = launchctl.parse_print((SUPPORT / "print-running.txt").read_text())
    assert fields == {"state": "running", "runs": "1", "pid": "4242", "last exit code": "(never exited)"}


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh", "../node-credentials.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
