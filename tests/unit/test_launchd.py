"""The launchd job template renders to a valid plist (checked here with plistlib, as
`plutil -lint` would on the Mac) and the install scripts parse as bash."""

import plistlib
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "launchd"


def test_plist_template_renders():
    text = (DEPLOY / "dev.llmkube.vnode.plist.in").read_text()
    rendered = text.replace("@VNODE@", "/opt/homebrew/bin/vnode").replace("@CONFIG@", "/Users/a/.vnode/vnode.yaml").replace(
        "@LOGDIR@", "/Users/a/Library/Logs/vnode"
    )
    job = plistlib.loads(rendered.encode())
    assert job["Label"] == "dev.llmkube.vnode"
    assert job["ProgramArguments"][:4] == ["/opt/homebrew/bin/vnode", "run", "--config", "/Users/a/.vnode/vnode.yaml"]
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ExitTimeOut"] >= 30


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh", "../node-credentials.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
