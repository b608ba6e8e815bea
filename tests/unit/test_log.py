"""With --log-format json every line on stderr is a JSON object: log records, warnings and
exceptions that escape a thread, which Python would otherwise print as text."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = r"""
import logging, threading, warnings
from vnode import log
log.setup(fmt="json")
logging.getLogger("vnode.test").info("hello", extra={"pod": "ml/a"})
warnings.warn("an old API")
t = threading.Thread(target=lambda: {}["missing"], name="pump")
t.start(); t.join()
raise RuntimeError("the end")
"""


def test_everything_on_stderr_is_json():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    entries = [json.loads(line) for line in out.stderr.splitlines()]  # raises on any plain-text line
    assert [e["msg"] for e in entries][:1] == ["hello"] and entries[0]["pod"] == "ml/a"
    assert any("an old API" in e["msg"] and e["logger"] == "py.warnings" for e in entries)
    assert any(e["msg"] == "uncaught exception in thread pump" and "KeyError" in e["exc"] for e in entries)
    assert entries[-1]["level"] == "critical" and "RuntimeError: the end" in entries[-1]["exc"]
