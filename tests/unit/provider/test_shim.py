"""The shim writes CRI log lines, records exit codes, and forwards SIGTERM."""

import json
import signal
import subprocess
import sys
import time

from vnode.provider import shim


def run_shim(tmp_path, *cmd):
    files = {k: tmp_path / f"x.{k}" for k in ("log", "exit", "pid")}
    proc = subprocess.Popen([sys.executable, shim.__file__, "--log", str(files["log"]), "--exit-file", str(files["exit"]),
                             "--pid-file", str(files["pid"]), "--max-bytes", "300", "--max-files", "3", "--", *cmd])
    return proc, files


def test_cri_lines_and_exit_code(tmp_path):
    proc, files = run_shim(tmp_path, sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert proc.wait(10) == 0
    lines = files["log"].read_text().splitlines()
    streams = sorted(line.split(" ")[1] for line in lines)
    assert streams == ["stderr", "stdout"]
    assert all(line.split(" ")[0].endswith("Z") and line.split(" ")[2] == "F" for line in lines)
    assert json.loads(files["exit"].read_text())["exitCode"] == 3


def test_rotation_keeps_bounded_files(tmp_path):
    proc, files = run_shim(tmp_path, sys.executable, "-c", "[print('x' * 50) for _ in range(100)]")
    proc.wait(10)
    rotated = sorted(p.name for p in tmp_path.glob("x.log*"))
    assert rotated == ["x.log", "x.log.1", "x.log.2"]


def test_sigterm_is_forwarded_and_recorded(tmp_path):
    proc, files = run_shim(tmp_path, sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)")
    for _ in range(100):
        if files["pid"].exists():
            break
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    info = json.loads(files["exit"].read_text())
    assert info["exitCode"] == 128 + signal.SIGTERM and info["signal"] == signal.SIGTERM


def test_missing_binary_is_recorded(tmp_path):
    proc, files = run_shim(tmp_path, "/nonexistent/llama-server")
    proc.wait(10)
    assert json.loads(files["exit"].read_text())["reason"] == "StartError"
