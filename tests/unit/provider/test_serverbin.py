"""smoke_test reports how a server binary failed; the real binary is proven in
tests/e2e/test_portable_binary.py (natively and under an emulated older CPU)."""

import os
import stat

from vnode.provider.serverbin import find_llama_server, smoke_test


def _script(tmp_path, body: str):
    path = tmp_path / "llama-server"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_binary_killed_by_sigill_is_named(tmp_path):
    binary = _script(tmp_path, 'echo "load_backend: loaded CPU backend from /x/libggml-cpu-skylakex.so"\nkill -ILL $$')
    result = smoke_test(binary, model=tmp_path / "m.gguf", timeout=20)
    assert not result.ok and result.stage == "started"
    assert "signal 4 (SIGILL): illegal instruction" in result.detail
    assert result.backends == ["CPU: libggml-cpu-skylakex.so"]
    assert "skylakex" in result.log_tail


def test_a_failing_binary_reports_its_exit_code(tmp_path):
    binary = _script(tmp_path, "echo 'error: unknown argument' >&2; exit 1")
    result = smoke_test(binary, model=tmp_path / "m.gguf", timeout=20)
    assert not result.ok and "exit code 1" in result.detail and "unknown argument" in result.log_tail


def test_a_silent_binary_times_out(tmp_path):
    binary = _script(tmp_path, "sleep 30")
    result = smoke_test(binary, model=tmp_path / "m.gguf", timeout=1.5)
    assert not result.ok and "did not answer /health" in result.detail


def test_a_missing_binary(tmp_path):
    result = smoke_test(tmp_path / "nope", model=tmp_path / "m.gguf", timeout=5)
    assert not result.ok and result.stage == "start"


def test_find_prefers_the_explicit_path(tmp_path, monkeypatch):
    binary = _script(tmp_path, "exit 0")
    assert find_llama_server(binary) == binary
    assert find_llama_server(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert find_llama_server() == binary
