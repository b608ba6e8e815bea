#!/usr/bin/env python3
"""Scale benchmark: one vnode node at the kubelet's pod limit, N real llama-server pods.

Starts a local control plane, a local Hugging Face-like hub (tests/support/hfserver.py)
serving a tiny real llama GGUF (vnode/provider/tinymodel.py, ~20 MB RSS per server) and one
vnode agent (--max-pods as needed), then:
  1. create: POSTs N pods at once (`-hf` the tiny model, `-t 1 -c 256`, ports base+i, a
     readiness probe on /health with the default periodSeconds 10), the model not yet in
     the node's store; times first POST -> all Ready, and per pod POST -> shim and
     llama-server forked (vnode's own part, with the scheduler's) -> Ready (llama-server's
     load). CPU seconds of the agent (and its helper processes) per pod;
  2. steady state: agent RSS, CPU (% of one core), open files and threads with all N pods
     probed, over --steady-seconds, next to the idle agent measured before the pods;
  3. agent restart: SIGTERM, start again; every pod adopted (log), none restarted
     (restartCount, shim and server pids unchanged), the time it took, and the agent's CPU
     once it runs adopted servers;
  4. delete: one DELETE of the collection; time until every Pod object, server process and
     listening port is gone.
The machine may be shared: CPU used by anything outside this script's process tree is
recorded per phase (`noise`). Prints min/median next to the targets (agent <= 150 MiB and
<= 10 % of a core at 100 pods; vnode's own work >= 20 pods/s, KWOK's figure; the kubelet:
300 MiB and 0.35-0.5 core at 100 pods) and writes JSON to bench/results/. No assertions.
The phases are functions the e2e test (tests/e2e/test_scale.py) runs at a smaller count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import hfserver  # noqa: E402
from vnode.cluster.local import LocalCluster  # noqa: E402
from vnode.cluster.processes import Proc  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402
from vnode.provider.tinymodel import write_tiny_model  # noqa: E402

NODE = "bench-scale"
NAMESPACE = "vnode-scale"
LABEL = "vnode-scale"
REPO = "vnode-test/tiny-GGUF"
FILE = "tiny-Q8_0.gguf"
IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
CTX = 256
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"agent_rss_mib": 150.0, "agent_cpu_percent_of_one_core": 10.0, "vnode_pods_per_s": 20.0}
KUBELET = {"rss_mib_at_100_pods": 300, "cores_at_100_pods": [0.35, 0.5], "kwok_pods_per_s": 20}
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def summary(values: list[float]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"n": 0}
    return {"min": values[0], "median": statistics.median(values), "max": values[-1], "n": len(values)}


# --------------------------------------------------------------------------- set-up


def start_hub(cluster: LocalCluster) -> tuple[Proc, str]:
    """The local hub serving the tiny model as REPO:Q8_0, bound on the control plane's side."""
    state = cluster.state
    model = write_tiny_model(Path(state.directory) / "models-src" / FILE)
    proc, url = hfserver.start_hub(Path(state.directory) / "hub", state.host.root_ip, {REPO: (FILE, model)},
                                   log=Path(state.directory) / "logs" / "hfserver-scale.log")
    state.procs.append(proc.to_dict())
    state.save()
    return proc, url


def agent_args(hub_url: str, binary: Path, pods: int) -> list[str]:
    return [f"--hf-endpoint={hub_url}", f"--llama-server={binary}", f"--max-pods={max(110, pods + 10)}"]


def pod_manifest(name: str, port: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": LABEL}},
        "spec": {
            "nodeSelector": {"llmkube.dev/accelerator": "metal"},
            "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "server", "image": IMAGE,
                "args": ["-hf", f"{REPO}:Q8_0", "--port", str(port), "-c", str(CTX), "-t", "1"],
                "ports": [{"containerPort": port, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},  # periodSeconds 10, the default
            }],
        },
    }


# --------------------------------------------------------------------------- watching


@dataclass
class PodSeen:
    uid: str = ""
    bound: float | None = None
    running: float | None = None
    ready: float | None = None
    deleting: float | None = None
    deleted: float | None = None
    restart_count: int = 0
    is_ready: bool = False


class PodsWatch(threading.Thread):
    """Watches every pod of the namespace with the bench label, noting when (bench clock, at
    receipt) each pod was first seen bound, running, Ready and deleted, and counting the
    MODIFIED events (writes to the pods) per window."""

    def __init__(self, core: k8s.CoreV1Api, namespace: str) -> None:
        super().__init__(daemon=True, name="pods watch")
        self.core, self.namespace = core, namespace
        self.version = core.list_namespaced_pod(namespace, label_selector=f"app={LABEL}").metadata.resource_version
        self.pods: dict[str, PodSeen] = {}
        self.modified = 0  # MODIFIED events so far
        self.unready_flips = 0  # Ready True -> False seen (an agent restart must not cause any)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        version = self.version
        while not self.stopping.is_set():
            try:
                for event in k8s_watch.Watch().stream(self.core.list_namespaced_pod, self.namespace, label_selector=f"app={LABEL}",
                                                      resource_version=version, timeout_seconds=60, _request_timeout=70,
                                                      allow_watch_bookmarks=True):
                    t = now()
                    pod = event["object"]
                    if isinstance(pod, dict):  # BOOKMARK or ERROR, not deserialised into a pod
                        if event["type"] == "ERROR":
                            version = self.core.list_namespaced_pod(self.namespace, label_selector=f"app={LABEL}").metadata.resource_version
                            break
                        version = (pod.get("metadata") or {}).get("resourceVersion") or version
                        continue
                    version = pod.metadata.resource_version
                    if event["type"] != "BOOKMARK":
                        self._note(t, event["type"], pod)
                    if self.stopping.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - reported by the waiters
                self.error = exc
                return

    def _note(self, t: float, kind: str, pod: k8s.V1Pod) -> None:
        with self.lock:
            seen = self.pods.setdefault(pod.metadata.name, PodSeen(uid=pod.metadata.uid))
            if kind == "MODIFIED":
                self.modified += 1
            if kind == "DELETED":
                seen.deleted = seen.deleted or t
                return
            if pod.spec.node_name and seen.bound is None:
                seen.bound = t
            if pod.metadata.deletion_timestamp and seen.deleting is None:
                seen.deleting = t
            for cs in pod.status.container_statuses or []:
                seen.restart_count = cs.restart_count
                if cs.state.running is not None and seen.running is None:
                    seen.running = t
            was_ready = seen.is_ready
            seen.is_ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if was_ready and not seen.is_ready and not pod.metadata.deletion_timestamp:
                self.unready_flips += 1
            if seen.is_ready and seen.ready is None:
                seen.ready = t

    def wait(self, predicate, *, timeout: float, what: str) -> float:
        deadline = now() + timeout
        while now() < deadline:
            if self.error is not None:
                raise RuntimeError(f"watching the pods failed: {self.error!r}")
            with self.lock:
                if predicate(self.pods):
                    return now()
            time.sleep(0.05)
        with self.lock:
            states = Counter("deleted" if p.deleted else "ready" if p.is_ready else "running" if p.running else
                             "bound" if p.bound else "created" for p in self.pods.values())
        raise TimeoutError(f"not {what} within {timeout:.0f}s (pods seen: {dict(states)})")


# --------------------------------------------------------------------------- processes


def agent_dir(cluster: LocalCluster, node: str) -> Path:
    return cluster.dir / "agents" / node


def containers(cluster: LocalCluster, node: str) -> dict[str, dict]:
    """Pod name -> {uid, shim pid, server pid} from the agent's own state files."""
    out = {}
    for record in agent_dir(cluster, node).glob("pods/*/containers/*/state.json"):
        try:
            data = json.loads(record.read_text())
            server = json.loads(Path(data["pid_path"]).read_text())["pid"]
        except (OSError, ValueError, KeyError):
            server = None
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
        out[data["pod_name"]] = {"uid": data["pod_uid"], "shim_pid": data["shim_pid"], "server_pid": server,
                                 "instance": data.get("instance", 0), "port": data.get("port")}
    return out


def cpu_s(p: psutil.Process, *, children: bool = False) -> float:
    t = p.cpu_times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def group_usage(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) summed over processes that still run."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                cpu += cpu_s(p)
                rss += p.memory_info().rss
        except psutil.Error:
            pass
    return cpu, rss


def listening_ports(netns_pid: int) -> set[int]:
    """TCP ports in LISTEN in the network namespace of `netns_pid`."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{netns_pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A":
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Noise:
    """CPU used by processes outside this script's tree (other tests, other clusters)."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), *self._clock()

    @staticmethod
    def _clock() -> tuple[float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        me = psutil.Process()
        ours = 0.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                ours += cpu_s(proc, children=True)
            except psutil.Error:
                pass
        return busy, ours

    def done(self) -> dict:
        busy, ours = self._clock()
        dt = time.monotonic() - self.t0
        return {"foreign_cores": round(max(0.0, (busy - self.busy0) - (ours - self.ours0)) / dt, 3),
                "our_cores": round((ours - self.ours0) / dt, 3), "load_avg": [round(x, 2) for x in os.getloadavg()]}


# --------------------------------------------------------------------------- the phases


@dataclass
class Scale:
    """One node with N pods: the phases of the benchmark, each returning its numbers."""

    cluster: LocalCluster
    core: k8s.CoreV1Api
    node: str
    namespace: str
    agent: Proc
    start_agent: object  # () -> Proc: starts the node's agent again with the same flags
    pods: int
    base_port: int = 18200
    watch: PodsWatch | None = None
    names: list[str] = field(default_factory=list)

    def agent_process(self) -> psutil.Process:
        """The `vnode run` python process (the Proc may be `ip netns exec`, which execs it)."""
        p = psutil.Process(self.agent.pid)
        return p

    def footprint(self, seconds: float) -> dict:
        """The agent over `seconds`: RSS samples every second, CPU as % of one core, fds, threads."""
        p = self.agent_process()
        rss, fds, threads = [], [], []
        noise = Noise()
        c0, t0 = cpu_s(p, children=True), time.monotonic()
        own0 = cpu_s(p)
        m0 = self.watch.modified if self.watch else 0
        end = t0 + seconds
        while time.monotonic() < end:
            with p.oneshot():
                rss.append(p.memory_info().rss / 2**20)
                fds.append(p.num_fds())
                threads.append(p.num_threads())
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        c1, t1 = cpu_s(p, children=True), time.monotonic()
        return {
            "seconds": round(t1 - t0, 1),
            "rss_mib": summary(rss),
            "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
            "cpu_percent_agent_process_only": round(100 * (cpu_s(p) - own0) / (t1 - t0), 2),
            "open_fds": summary(fds), "threads": summary(threads),
            "pod_writes_seen": (self.watch.modified - m0) if self.watch else None,
            "noise": noise.done(),
        }

    # -- 1. create
    def create(self, *, timeout: float = 600) -> dict:
        self.watch = PodsWatch(self.core, self.namespace)
        self.watch.start()
        p = self.agent_process()
        api = self._apiserver()
        noise = Noise()
        cpu0, own0, api0 = cpu_s(p, children=True), cpu_s(p), cpu_s(api) if api else 0.0
        self.names = [f"scale-{i:03d}" for i in range(self.pods)]
        posted: dict[str, float] = {}

        def post(i: int) -> None:
            t = now()
            self.core.create_namespaced_pod(self.namespace, pod_manifest(self.names[i], self.base_port + i))
            posted[self.names[i]] = t

        t_first = now()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, range(self.pods)))
        t_posted = now()
        t_all_ready = self.watch.wait(lambda pods: sum(1 for n in self.names if n in pods and pods[n].ready) == self.pods,
                                      timeout=timeout, what=f"all {self.pods} pods Ready")
        cpu1, own1, api1 = cpu_s(p, children=True), cpu_s(p), cpu_s(api) if api else 0.0
        noise_out = noise.done()
        procs = containers(self.cluster, self.node)
        shim_cpu, shim_rss = group_usage([c["shim_pid"] for c in procs.values()])
        srv_cpu, srv_rss = group_usage([c["server_pid"] for c in procs.values() if c["server_pid"]])
        per_pod = []
        for name in self.names:
            seen, c = self.watch.pods[name], procs.get(name, {})
            t0 = posted[name]
            shim = proc_start(c["shim_pid"]) if c.get("shim_pid") else None
            server = proc_start(c["server_pid"]) if c.get("server_pid") else None
            per_pod.append({
                "name": name, "post": t0 - t_first,
                "bound": seen.bound - t0 if seen.bound else None,
                "shim_forked": shim - t0 if shim else None,
                "server_forked": server - t0 if server else None,
                "running_seen": seen.running - t0 if seen.running else None,
                "ready_seen": seen.ready - t0 if seen.ready else None,
                "bound_to_server_forked": (server - seen.bound) if server and seen.bound else None,
                "server_forked_to_ready": (seen.ready - server) if server and seen.ready else None,
            })
        forks = [proc_start(c["server_pid"]) for c in procs.values() if c.get("server_pid")]
        forks = [f for f in forks if f]
        span = (max(forks) - t_first) if forks else None
        bound = [self.watch.pods[n].bound for n in self.names if self.watch.pods[n].bound]
        agent_span = (max(forks) - min(bound)) if forks and bound else None
        shims = [f for c in procs.values() if (f := proc_start(c["shim_pid"]))]
        start_span = (max(forks) - min(shims)) if forks and shims else None  # once the model is in the store
        return {
            "pods": self.pods,
            "post_s": t_posted - t_first,
            "first_post_to_all_ready_s": t_all_ready - t_first,
            "pods_per_s_post_to_all_ready": self.pods / (t_all_ready - t_first),
            "first_post_to_last_server_forked_s": span,
            "vnode_pods_per_s_post_to_server_forked": self.pods / span if span else None,
            "first_bound_to_last_server_forked_s": agent_span,
            "agent_pods_per_s_bound_to_server_forked": self.pods / agent_span if agent_span else None,
            "first_shim_to_last_server_forked_s": start_span,
            "pods_per_s_starting_with_model_in_store": self.pods / start_span if start_span else None,
            "per_pod_s": {k: summary([p[k] for p in per_pod]) for k in
                          ("bound", "shim_forked", "server_forked", "running_seen", "ready_seen", "bound_to_server_forked",
                           "server_forked_to_ready")},
            "agent_cpu_s": round(cpu1 - cpu0, 2),
            "agent_cpu_s_process_only": round(own1 - own0, 2),
            "agent_cpu_s_per_pod": round((cpu1 - cpu0) / self.pods, 4),
            "agent_cpu_bound_pods_per_s": round(self.pods / (cpu1 - cpu0), 1) if cpu1 > cpu0 else None,
            "shims_cpu_s_per_pod": round(shim_cpu / self.pods, 4),
            "servers_cpu_s_per_pod": round(srv_cpu / self.pods, 4),
            "apiserver_cpu_s": round(api1 - api0, 2) if api else None,
            "shims_rss_mib": round(shim_rss / 2**20, 1),
            "servers_rss_mib": round(srv_rss / 2**20, 1),
            "per_server_rss_mib": round(srv_rss / 2**20 / max(1, len(procs)), 1),
            "noise": noise_out,
            "per_pod": per_pod,
        }

    def _apiserver(self) -> psutil.Process | None:
        for rec in self.cluster.state.procs:
            if rec["name"] == "kube-apiserver":
                try:
                    return psutil.Process(rec["pid"])
                except psutil.Error:
                    return None
        return None

    def snapshot(self) -> dict[str, dict]:
        """Pod name -> restartCount, Ready, shim and server pids (with start times)."""
        procs = containers(self.cluster, self.node)
        with self.watch.lock:
            seen = {n: (p.restart_count, p.is_ready) for n, p in self.watch.pods.items()}
        out = {}
        for name in self.names:
            c = procs.get(name, {})
            out[name] = {"restart_count": seen.get(name, (None, None))[0], "ready": seen.get(name, (None, False))[1],
                         "shim": (c.get("shim_pid"), proc_start(c["shim_pid"]) if c.get("shim_pid") else None),
                         "server": (c.get("server_pid"), proc_start(c["server_pid"]) if c.get("server_pid") else None)}
        return out

    # -- 3. restart
    def restart(self, *, settle: float = 15.0, after_seconds: float = 30.0, timeout: float = 300) -> dict:
        before = self.snapshot()
        m0, f0 = self.watch.modified, self.watch.unready_flips
        log_before = set(Path(self.agent.log).parent.glob(f"vnode-{self.node}.*.log"))
        t0 = now()
        stop_process(self.agent, timeout=30)
        self.cluster.forget(self.agent)
        t_stopped = now()
        self.agent = self.start_agent()
        t_started = now()
        log = Path(self.agent.log)
        assert log not in log_before
        adopted = 0
        deadline = now() + timeout
        while now() < deadline:
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = ""
            adopted = text.count("vnode.pods.worker: adopted ")
            if adopted >= self.pods:
                break
            if not self.agent.alive():
                raise RuntimeError(f"the restarted agent exited; see {log}")
            time.sleep(0.05)
        t_adopted = now()
        time.sleep(settle)  # past one probe period: a restarted or unready pod would show by now
        after = self.snapshot()
        restarted = [n for n in self.names if after[n]["restart_count"] != before[n]["restart_count"]]
        moved = [n for n in self.names if after[n]["server"] != before[n]["server"] or after[n]["shim"] != before[n]["shim"]]
        unready = [n for n in self.names if not after[n]["ready"]]
        return {
            "sigterm_to_stopped_s": t_stopped - t0,
            "start_to_all_adopted_s": t_adopted - t_started,
            "adopted": adopted,
            "pods_restarted": restarted,
            "servers_changed": moved,
            "pods_not_ready_after": unready,
            "pod_writes_seen_during_restart": self.watch.modified - m0,
            "ready_flips_to_false": self.watch.unready_flips - f0,
            "after_restart": self.footprint(after_seconds) if after_seconds else None,
        }

    # -- 4. delete
    def delete(self, *, timeout: float = 300) -> dict:
        procs = containers(self.cluster, self.node)
        pids = [pid for c in procs.values() for pid in (c["shim_pid"], c["server_pid"]) if pid]
        ports = {self.base_port + i for i in range(self.pods)}
        netns_pid = self.agent_process().pid
        noise = Noise()
        t0 = now()
        self.core.delete_collection_namespaced_pod(self.namespace, label_selector=f"app={LABEL}")
        t_pods = self.watch.wait(lambda pods: all(pods[n].deleted for n in self.names if n in pods), timeout=timeout,
                                 what=f"all {self.pods} pods deleted")
        t_procs = t_ports = None
        deadline = now() + 60
        while now() < deadline and (t_procs is None or t_ports is None):
            if t_procs is None and not any(alive(pid) for pid in pids):
                t_procs = now()
            if t_ports is None and not (listening_ports(netns_pid) & ports):
                t_ports = now()
            time.sleep(0.05)
        left = [pid for pid in pids if alive(pid)]
        return {
            "delete_to_all_pods_gone_s": t_pods - t0,
            "delete_to_all_processes_gone_s": (t_procs - t0) if t_procs else None,
            "delete_to_all_ports_closed_s": (t_ports - t0) if t_ports else None,
            "processes_left": left,
            "ports_left": sorted(listening_ports(netns_pid) & ports),
            "pod_dirs_left": len(list(agent_dir(self.cluster, self.node).glob("pods/*"))),
            "noise": noise.done(),
        }

    def events(self) -> dict:
        """Events vnode recorded in the namespace, by reason (an event storm would show here);
        read once the count has stopped growing for 3 s (vnode writes them from a queue)."""
        def ours() -> list:
            items = self.core.list_namespaced_event(self.namespace).items
            return [e for e in items if (e.source and e.source.component == "vnode") or e.reporting_component == "vnode"]

        found, stable_since, deadline = ours(), time.monotonic(), time.monotonic() + 30
        while time.monotonic() - stable_since < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            again = ours()
            if len(again) != len(found):
                found, stable_since = again, time.monotonic()
        ours = found
        return {"objects": len(ours), "count_total": sum(e.count or 1 for e in ours),
                "by_reason": dict(Counter(e.reason for e in ours))}

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stopping.set()


def node_ready(core: k8s.CoreV1Api, name: str) -> bool:
    try:
        node = core.read_node_status(name, _request_timeout=2)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def wait_node(core: k8s.CoreV1Api, name: str, agent: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not node_ready(core, name):
        if not agent.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not make {name} Ready; see {agent.log}")
        time.sleep(0.1)


def stop_leftover_shims(directory: Path) -> list[int]:
    stopped = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = proc.info["cmdline"] or []
        if any(a.endswith("/vnode/provider/shim.py") for a in cmd) and any(str(directory) in a for a in cmd):
            stop_process(Proc(name="shim", pid=proc.pid, create_time=proc.info["create_time"], log="", cmd=cmd))
            stopped.append(proc.pid)
    return stopped


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one; logs are kept)")
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--base-port", type=int, default=18200)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="the idle agent, before any pod")
    parser.add_argument("--after-restart-seconds", type=float, default=30.0)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pods import foreign_activity, machine  # noqa: PLC0415 - bench/pods.py: shared result helpers
    from vnode.cluster.build import ensure_llama_server  # noqa: PLC0415

    from kubernetes import config as k8s_config  # noqa: PLC0415

    directory = (args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-scale-"))).resolve()
    noise = {"load_avg_at_start": os.getloadavg(), "foreign_at_start": foreign_activity(directory)}
    try:
        noise["fd_limit_soft"] = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]
    except (ImportError, OSError):
        pass
    binary = ensure_llama_server()
    cluster = LocalCluster(directory, node_name=NODE)
    state = cluster.up()
    hub = None
    scale: Scale | None = None
    result: dict = {}
    started = time.monotonic()
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        hub, hub_url = start_hub(cluster)
        flags = agent_args(hub_url, binary, args.pods)

        def start_agent() -> Proc:
            return cluster.start_agent(*flags, node_name=NODE)

        agent = start_agent()
        wait_node(core, NODE, agent)
        # The default ServiceAccount of the namespace must exist before pods can be created.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", NAMESPACE)
                break
            except k8s.ApiException:
                time.sleep(0.2)
        scale = Scale(cluster, core, NODE, NAMESPACE, agent, start_agent, args.pods, base_port=args.base_port)
        time.sleep(3)
        print(f"cluster in {directory}; idle agent for {args.idle_seconds:.0f} s ...", flush=True)
        result["idle"] = scale.footprint(args.idle_seconds)
        print(f"create: {args.pods} pods at once ...", flush=True)
        result["create"] = scale.create()
        print(f"steady state: {args.steady_seconds:.0f} s with all pods probed ...", flush=True)
        time.sleep(10)  # the first probe round after Ready, the nudges' log followers ending
        result["steady"] = scale.footprint(args.steady_seconds)
        print("agent restart ...", flush=True)
        result["restart"] = scale.restart(after_seconds=args.after_restart_seconds)
        print("delete all ...", flush=True)
        result["delete"] = scale.delete()
        result["events"] = scale.events()
    finally:
        if scale is not None:
            scale.close()
            try:
                scale.core.delete_collection_namespaced_pod(NAMESPACE, label_selector=f"app={LABEL}", grace_period_seconds=0)
            except Exception:  # noqa: BLE001 - best effort; servers are stopped by pid below
                pass
        if hub is not None:
            stop_process(hub)
        cluster.down()
        leftovers = stop_leftover_shims(directory)
        if leftovers:
            print(f"warning: stopped {len(leftovers)} shim(s) left running: {leftovers}", file=sys.stderr)
        for bulky in (directory / "agents" / NODE / "models", directory / "etcd"):
            shutil.rmtree(bulky, ignore_errors=True)
    noise["load_avg_at_end"] = os.getloadavg()
    noise["foreign_at_end"] = foreign_activity(directory)

    out_json = {"bench": "scale", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
                "noise": noise, "elapsed_s": round(time.monotonic() - started, 1), "llama_server": str(binary),
                "args": vars(args) | {"dir": str(directory)}, "targets": TARGETS, "kubelet": KUBELET, **result}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(out_json, indent=2, default=str))
    report(out_json, args.pods)
    print(f"written to {out}")
    return 0


def report(r: dict, n: int) -> None:
    def s(d: dict, scale: float = 1.0, unit: str = "s") -> str:
        if not d.get("n"):
            return "n/a"
        return f"min {d['min'] * scale:.2f}  median {d['median'] * scale:.2f}  max {d['max'] * scale:.2f} {unit}"

    def foreign(d: dict) -> str:
        return f"(other load on the machine: {d['noise']['foreign_cores']:.2f} cores, load avg {d['noise']['load_avg'][0]})"

    c = r["create"]
    print(f"create {n} pods (tiny model, -t 1 -c {CTX}, readiness periodSeconds 10) {foreign(c)}:")
    print(f"  POSTs took {c['post_s']:.2f} s; first POST -> all Ready {c['first_post_to_all_ready_s']:.2f} s "
          f"({c['pods_per_s_post_to_all_ready']:.1f} pods/s)")
    if c["first_post_to_last_server_forked_s"]:
        print(f"  vnode's share: first POST -> last llama-server forked {c['first_post_to_last_server_forked_s']:.2f} s = "
              f"{c['vnode_pods_per_s_post_to_server_forked']:.1f} pods/s (target >= {TARGETS['vnode_pods_per_s']:.0f}, KWOK's); "
              f"first bound -> last forked {c['first_bound_to_last_server_forked_s']:.2f} s = "
              f"{c['agent_pods_per_s_bound_to_server_forked']:.1f} pods/s")
    if c.get("first_shim_to_last_server_forked_s"):
        print(f"  with the model in the store (first shim forked -> last llama-server forked): "
              f"{c['first_shim_to_last_server_forked_s']:.2f} s = {c['pods_per_s_starting_with_model_in_store']:.1f} pods/s")
    pp = c["per_pod_s"]
    for k in ("bound", "shim_forked", "server_forked", "ready_seen"):
        print(f"  per pod POST -> {k:14s} {s(pp[k])}")
    print(f"  per pod llama-server forked -> Ready seen {s(pp['server_forked_to_ready'])}")
    print(f"  agent CPU {c['agent_cpu_s']:.1f} s = {c['agent_cpu_s_per_pod'] * 1000:.0f} ms per pod (its process alone "
          f"{c['agent_cpu_s_process_only']:.1f} s), i.e. {c['agent_cpu_bound_pods_per_s']} pods/s per core of agent CPU; "
          f"shims {c['shims_cpu_s_per_pod'] * 1000:.0f} ms, servers {c['servers_cpu_s_per_pod'] * 1000:.0f} ms per pod; "
          f"kube-apiserver {c['apiserver_cpu_s']} s")
    print(f"  servers' RSS {c['servers_rss_mib']:.0f} MiB ({c['per_server_rss_mib']:.1f} per server), shims' {c['shims_rss_mib']:.0f} MiB")
    for label, key in (("idle agent, no pods", "idle"), (f"steady state, {n} pods probed", "steady")):
        f = r[key]
        print(f"{label} over {f['seconds']:.0f} s {foreign(f)}:")
        print(f"  RSS {s(f['rss_mib'], unit='MiB')}  (target <= {TARGETS['agent_rss_mib']:.0f} MiB; kubelet 300 MiB at 100 pods)")
        print(f"  CPU {f['cpu_percent_of_one_core']:.2f} % of one core (target <= {TARGETS['agent_cpu_percent_of_one_core']:.0f} %; "
              f"kubelet 35-50 % at 100 pods); open fds median {f['open_fds'].get('median')}, threads median {f['threads'].get('median')}; "
              f"pod writes seen {f['pod_writes_seen']}")
    if r["idle"]["rss_mib"].get("n") and r["steady"]["rss_mib"].get("n"):
        per = (r["steady"]["rss_mib"]["median"] - r["idle"]["rss_mib"]["median"]) / n
        fds = (r["steady"]["open_fds"]["median"] - r["idle"]["open_fds"]["median"]) / n
        print(f"  per pod: {per * 1024:.0f} KiB of agent RSS, {fds:.2f} open fds")
    rs = r["restart"]
    print(f"agent restart with {n} pods: SIGTERM -> stopped {rs['sigterm_to_stopped_s']:.2f} s; start -> all {rs['adopted']} adopted "
          f"{rs['start_to_all_adopted_s']:.2f} s; restarted {len(rs['pods_restarted'])}, servers changed {len(rs['servers_changed'])}, "
          f"not Ready after {len(rs['pods_not_ready_after'])}; pod writes {rs['pod_writes_seen_during_restart']}, "
          f"Ready flipped to False {rs['ready_flips_to_false']} times")
    if rs.get("after_restart"):
        f = rs["after_restart"]
        print(f"  after the restart over {f['seconds']:.0f} s: RSS median {f['rss_mib']['median']:.1f} MiB, "
              f"CPU {f['cpu_percent_of_one_core']:.2f} % of one core {foreign(f)}")
    d = r["delete"]
    print(f"delete all {n}: pods gone {d['delete_to_all_pods_gone_s']:.2f} s, processes gone {d['delete_to_all_processes_gone_s']}, "
          f"ports closed {d['delete_to_all_ports_closed_s']} s; left: {len(d['processes_left'])} processes, {len(d['ports_left'])} ports, "
          f"{d['pod_dirs_left']} pod dirs {foreign(d)}")
    e = r["events"]
    print(f"events vnode recorded: {e['objects']} objects ({e['count_total']} with repeats): {e['by_reason']}")


if __name__ == "__main__":
    sys.exit(main())
