"""The llama-server binary: where it is, and proof that it runs on this machine.

A binary built for another CPU starts, prints its banner and dies with SIGILL on its first
matrix kernel, so "it starts" proves nothing; one real completion does (`smoke_test`:
load a model, generate a token). Used before a build is cached (cluster/build.py), by
`vnode doctor`, and by the agent to find its default binary. Blocking on purpose: it runs
in command-line tools and build steps, never on the agent's event loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from vnode.provider.exits import describe_exit
from vnode.provider.tinymodel import write_tiny_model

_LOADED = re.compile(r"loaded (\S+) backend from (\S+)")


def find_llama_server(explicit: Path | None = None) -> Path | None:
    """`explicit` (--llama-server) if it is a file, else llama-server on PATH, else the
    build `vnode cluster build` cached."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    from vnode.cluster.build import cached_llama_server

    return cached_llama_server()


@dataclass
class SmokeResult:
    ok: bool
    stage: str  # "started", "loaded", "generated", or where it stopped
    detail: str = ""
    seconds: float = 0.0
    backends: list[str] = field(default_factory=list)  # e.g. ["CPU: libggml-cpu-haswell.so"]
    log_tail: str = ""

    def summary(self) -> str:
        loaded = f"; backends {', '.join(self.backends)}" if self.backends else ""
        return f"{self.detail} ({self.seconds:.1f}s{loaded})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _complete(base: str, timeout: float) -> dict:
    body = json.dumps({"prompt": "The capital of France is", "n_predict": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"{base}/completion", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def smoke_test(binary: Path, *, model: Path | None = None, wrapper: list[str] | None = None,
               timeout: float = 120.0, work: Path | None = None) -> SmokeResult:
    """Start `binary` on `model` (default: a generated tiny model) on a loopback port, wait
    for /health, ask for one token, stop it. `wrapper` runs it under e.g. an emulator."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vnode-smoke-", dir=work) as tmp:
        model = model or write_tiny_model(Path(tmp) / "tiny.gguf")
        port = _free_port()
        log_path = Path(tmp) / "server.log"
        cmd = [*(wrapper or []), str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-c", "512", "-np", "1", "-t", str(min(os.cpu_count() or 1, 4))]
        with open(log_path, "wb") as out:
            try:
                # verbosity 4 logs which CPU variant ggml loaded; an env var, so a binary
                # without the option is not refused for it
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, "LLAMA_ARG_LOG_VERBOSITY": "4"}, start_new_session=True)
            except OSError as exc:
                return SmokeResult(False, "start", f"cannot run {binary}: {exc.strerror}")
        base = f"http://127.0.0.1:{port}"
        result = SmokeResult(False, "started")
        try:
            result = _drive(proc, base, deadline=started + timeout)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            text = log_path.read_text(errors="replace")
            result.seconds = time.monotonic() - started
            result.backends = [f"{name}: {Path(path).name}" for name, path in _LOADED.findall(text)]
            result.log_tail = "\n".join(text.splitlines()[-15:])
        return result


def _drive(proc: subprocess.Popen, base: str, *, deadline: float) -> SmokeResult:
    stage = "started"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return _died(proc, stage)
        try:
            if _get(f"{base}/health", timeout=2) == 200:
                stage = "loaded"
                break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    else:
        return SmokeResult(False, stage, "the server did not answer /health in time")
    try:
        answer = _complete(base, timeout=max(deadline - time.monotonic(), 1.0))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        time.sleep(0.5)  # a crash mid-request: let the exit status arrive
        if proc.poll() is not None:
            return _died(proc, "loaded")
        return SmokeResult(False, "loaded", f"the completion request failed: {exc}")
    predicted = int(answer.get("tokens_predicted") or answer.get("timings", {}).get("predicted_n") or 0)
    if predicted < 1:
        return SmokeResult(False, "loaded", f"the server answered without generating a token: {str(answer)[:200]}")
    return SmokeResult(True, "generated", f"generated {predicted} token(s)")


def _died(proc: subprocess.Popen, stage: str) -> SmokeResult:
    code = proc.returncode
    sig = -code if code is not None and code < 0 else None
    when = "while loading" if stage == "started" else "during its first completion"
    return SmokeResult(False, stage, f"the server died {when}: {describe_exit(code, sig)}")
