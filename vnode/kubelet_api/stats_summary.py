"""/stats/summary: the kubelet's statsapi Summary (node, pods, containers, filesystems) that
autoscalers and dashboards read. Usage comes from the shared process-tree snapshot, disk
from provider/diskusage.py (node fs = the state dir, imageFs = the model store, logs,
the sandbox as rootfs), read and built in a thread; usageNanoCores is the rate between
two scrapes (CpuRates), as the kubelet's CRI stats provider computes it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiohttp import web

from vnode.kubelet_api import statsapi as api
from vnode.kubelet_api.context import context
from vnode.kubelet_api.snapshot import ContainerSample, Snapshot, running, take_snapshot
from vnode.provider.diskusage import DirUsage, Filesystem, dir_usage, filesystem
from vnode.provider.stats import Usage, tree_usage
from vnode.provider.supervisor import Instance

NANO = 1_000_000_000


@dataclass
class _Reading:
    timestamp: float
    cpu_seconds: float
    nano_cores: int | None


class CpuRates:
    """The last cumulative CPU reading per key (node, container instance, system container),
    so each scrape can report the average rate since the one before.

    A reading less than `min_window` seconds after the kept one (two clients scraping
    together) reports the kept rate and keeps the older reading: a rate over a few
    milliseconds of clock ticks is noise. A counter that went back (a new process under
    the same key) starts over. Keys not seen in a scrape are forgotten.
    """

    def __init__(self, *, min_window: float = 1.0) -> None:
        self.min_window = min_window
        self._last: dict[str, _Reading] = {}
        self.lock = threading.Lock()  # one scrape's observations at a time (scrapes build in threads)

    def observe(self, key: str, timestamp: float, cpu_seconds: float) -> int | None:
        prev = self._last.get(key)
        if prev is None or cpu_seconds < prev.cpu_seconds or timestamp <= prev.timestamp:
            self._last[key] = _Reading(timestamp, cpu_seconds, None)
            return None
        if timestamp - prev.timestamp < self.min_window:
            return prev.nano_cores
        rate = int((cpu_seconds - prev.cpu_seconds) / (timestamp - prev.timestamp) * NANO)
        self._last[key] = _Reading(timestamp, cpu_seconds, rate)
        return rate

    def retain(self, keys: set[str]) -> None:
        for key in self._last.keys() - keys:
            del self._last[key]


RATES_KEY = web.AppKey("cpu_rates", CpuRates)


# --------------------------------------------------------------------------- reading (blocking)


@dataclass(frozen=True)
class PodFs:
    rootfs: DirUsage | None  # the pod's sandbox, shared by its containers
    volumes: dict[str, DirUsage] = field(default_factory=dict)


@dataclass(frozen=True)
class Reading:
    """Everything one summary needs, read in one go in a thread."""

    snap: Snapshot
    boot_time: float
    agent: Usage | None  # vnode itself: the "kubelet" system container
    agent_started: float
    node_fs: Filesystem | None = None
    image_fs: DirUsage | None = None
    logs: dict[str, DirUsage] = field(default_factory=dict)  # container_id -> its log files
    pods_fs: dict[str, PodFs] = field(default_factory=dict)  # pod uid -> sandbox and volumes


def _is_log(name: str) -> bool:
    return name.endswith(".log") or ".log." in name  # N.log and its rotations N.log.1 ...


def read(instances: list[Instance], *, state_dir: Path | None, store_usage: Callable[[], DirUsage] | None,
         filesystems: bool) -> Reading:
    """Blocking: the snapshot, vnode's own usage and (when `filesystems`) every FsStats source."""
    snap = take_snapshot(instances)
    me = psutil.Process()
    reading = Reading(snap=snap, boot_time=psutil.boot_time(), agent=tree_usage(os.getpid(), children=False),
                      agent_started=me.create_time())
    if not filesystems:
        return reading
    logs: dict[str, DirUsage] = {}
    pods_fs: dict[str, PodFs] = {}
    for c in snap.containers:
        inst = c.inst
        if inst.log_path:
            logs[inst.container_id] = dir_usage(Path(inst.log_path).parent, match=_is_log)
        pod = pods_fs.get(inst.pod_uid)
        if pod is None:
            pod = pods_fs[inst.pod_uid] = PodFs(rootfs=dir_usage(inst.sandbox) if inst.sandbox else None)
        for name, host_path in inst.volumes.items():
            if name not in pod.volumes:
                pod.volumes[name] = dir_usage(host_path)
    return Reading(snap=snap, boot_time=reading.boot_time, agent=reading.agent, agent_started=reading.agent_started,
                   node_fs=filesystem(state_dir) if state_dir is not None else None,
                   image_fs=store_usage() if store_usage is not None else None, logs=logs, pods_fs=pods_fs)


# --------------------------------------------------------------------------- building (on the loop)


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _memory(u: Usage, *, available: int | None = None) -> api.MemoryStats:
    return api.MemoryStats(time=api.rfc3339(u.timestamp), available_bytes=available, usage_bytes=u.usage_bytes,
                           working_set_bytes=u.working_set_bytes, rss_bytes=u.rss_bytes, page_faults=u.page_faults,
                           major_page_faults=u.major_page_faults)


def _fs(ts: float, usage: DirUsage | None) -> api.FsStats | None:
    if usage is None or (usage.filesystem is None and usage.used is None):
        return None
    fs, used = usage.filesystem, usage.used
    return api.FsStats(
        time=api.rfc3339(ts),
        available_bytes=fs.available_bytes if fs else None, capacity_bytes=fs.capacity_bytes if fs else None,
        inodes=fs.inodes if fs else None, inodes_free=fs.inodes_free if fs else None,
        used_bytes=used.bytes if used else None, inodes_used=used.inodes if used else None,
    )


def _node_fs(ts: float, fs: Filesystem | None) -> api.FsStats | None:
    if fs is None:
        return None
    inodes_used = fs.inodes - fs.inodes_free if fs.inodes is not None and fs.inodes_free is not None else None
    return api.FsStats(time=api.rfc3339(ts), available_bytes=fs.available_bytes, capacity_bytes=fs.capacity_bytes,
                       used_bytes=fs.used_bytes, inodes=fs.inodes, inodes_free=fs.inodes_free, inodes_used=inodes_used)


class _Builder:
    def __init__(self, reading: Reading, rates: CpuRates, *, only_cpu_and_memory: bool) -> None:
        self.r, self.rates, self.only = reading, rates, only_cpu_and_memory
        self.seen: set[str] = set()

    def cpu(self, key: str, u: Usage) -> api.CPUStats:
        self.seen.add(key)
        return api.CPUStats(time=api.rfc3339(u.timestamp), usage_nano_cores=self.rates.observe(key, u.timestamp, u.cpu_seconds),
                            usage_core_nano_seconds=int(u.cpu_seconds * NANO))

    def container(self, c: ContainerSample) -> api.ContainerStats:
        inst = c.inst
        pod_fs = self.r.pods_fs.get(inst.pod_uid)
        return api.ContainerStats(
            name=inst.container, start_time=api.rfc3339(inst.started_at),
            cpu=self.cpu("container/" + inst.container_id, c.usage), memory=_memory(c.usage),
            rootfs=None if self.only or pod_fs is None else _fs(c.usage.timestamp, pod_fs.rootfs),
            logs=None if self.only else _fs(c.usage.timestamp, self.r.logs.get(inst.container_id)),
        )

    def pod(self, samples: list[ContainerSample]) -> api.PodStats:
        first = samples[0].inst
        containers = [self.container(c) for c in samples]
        ts = max(c.usage.timestamp for c in samples)
        time = api.rfc3339(ts)
        usages = [c.usage for c in samples]
        cpu = api.CPUStats(time=time, usage_nano_cores=_sum([c.cpu.usage_nano_cores for c in containers if c.cpu]),
                           usage_core_nano_seconds=sum(int(u.cpu_seconds * NANO) for u in usages))
        memory = api.MemoryStats(
            time=time, usage_bytes=_sum([u.usage_bytes for u in usages]),
            working_set_bytes=sum(u.working_set_bytes for u in usages), rss_bytes=sum(u.rss_bytes for u in usages),
            page_faults=_sum([u.page_faults for u in usages]), major_page_faults=_sum([u.major_page_faults for u in usages]),
        )
        stats = api.PodStats(
            pod_ref=api.PodReference(name=first.pod_name, namespace=first.namespace, uid=first.pod_uid),
            start_time=api.rfc3339(min(c.inst.started_at for c in samples)), containers=containers, cpu=cpu, memory=memory,
        )
        if self.only:
            return stats
        pod_fs = self.r.pods_fs.get(first.pod_uid)
        volumes = []
        for name, usage in sorted((pod_fs.volumes if pod_fs else {}).items()):
            fs = _fs(ts, usage)
            if fs is not None:
                volumes.append(api.VolumeStats(name=name, **fs.model_dump()))
        return stats.model_copy(update={
            "volume": volumes or None,
            "ephemeral_storage": self.ephemeral(ts, samples, pod_fs),
            "process_stats": api.ProcessStats(process_count=sum(u.processes for u in usages)),
        })

    def ephemeral(self, ts: float, samples: list[ContainerSample], pod_fs: PodFs | None) -> api.FsStats | None:
        """The pod's sandbox (once: its containers share it) plus every container's logs."""
        parts = [pod_fs.rootfs if pod_fs else None] + [self.r.logs.get(c.inst.container_id) for c in samples]
        parts = [p for p in parts if p is not None and p.used is not None]
        if not parts:
            return None
        fs = next((p.filesystem for p in parts if p.filesystem is not None), None)
        used = sum(p.used.bytes for p in parts if p.used)
        inodes_used = sum(p.used.inodes for p in parts if p.used)
        return api.FsStats(time=api.rfc3339(ts), available_bytes=fs.available_bytes if fs else None,
                           capacity_bytes=fs.capacity_bytes if fs else None, inodes=fs.inodes if fs else None,
                           inodes_free=fs.inodes_free if fs else None, used_bytes=used, inodes_used=inodes_used)

    def system_containers(self) -> list[api.ContainerStats]:
        r, out = self.r, []
        started = api.rfc3339(r.agent_started)
        if r.agent is not None:
            out.append(api.ContainerStats(name="kubelet", start_time=started, cpu=self.cpu("system/kubelet", r.agent),
                                          memory=_memory(r.agent)))
        usages = [c.usage for c in r.snap.containers]
        pods = Usage(
            timestamp=r.snap.node.timestamp, cpu_seconds=sum(u.cpu_seconds for u in usages),
            working_set_bytes=sum(u.working_set_bytes for u in usages), rss_bytes=sum(u.rss_bytes for u in usages),
            processes=sum(u.processes for u in usages), usage_bytes=_sum([u.usage_bytes for u in usages]),
            page_faults=_sum([u.page_faults for u in usages]), major_page_faults=_sum([u.major_page_faults for u in usages]),
        )
        out.append(api.ContainerStats(name="pods", start_time=started, cpu=self.cpu("system/pods", pods), memory=_memory(pods)))
        return out

    def summary(self, node_name: str) -> api.Summary:
        r = self.r
        node_u = r.snap.node
        by_pod: dict[str, list[ContainerSample]] = {}
        for c in r.snap.containers:
            by_pod.setdefault(c.inst.pod_uid, []).append(c)
        node = api.NodeStats(
            node_name=node_name, start_time=api.rfc3339(r.boot_time), system_containers=self.system_containers(),
            cpu=self.cpu("node", node_u), memory=_memory(node_u, available=node_u.available_bytes),
        )
        if not self.only:
            node = node.model_copy(update={
                "fs": _node_fs(node_u.timestamp, r.node_fs),
                "runtime": api.RuntimeStats(image_fs=_fs(node_u.timestamp, r.image_fs)),
            })
        pods = [self.pod(samples) for samples in by_pod.values()]
        self.rates.retain(self.seen)
        return api.Summary(node=node, pods=pods)


def build(reading: Reading, *, node_name: str, rates: CpuRates, only_cpu_and_memory: bool = False) -> api.Summary:
    """The Summary of one reading; updates `rates`."""
    with rates.lock:
        return _Builder(reading, rates, only_cpu_and_memory=only_cpu_and_memory).summary(node_name)


async def stats_summary(request: web.Request) -> web.Response:
    ctx = context(request)
    # The kubelet's test: exactly one value, exactly "true".
    only = request.query.getall("only_cpu_and_memory", []) == ["true"]
    instances, rates = running(request), request.app[RATES_KEY]

    def summary_json() -> str:  # in a thread: with hundreds of pods, building alone takes tens of ms
        reading = read(instances, state_dir=ctx.state_dir, store_usage=ctx.store_usage, filesystems=not only)
        return build(reading, node_name=ctx.node_name, rates=rates, only_cpu_and_memory=only).to_json()

    return web.Response(text=await asyncio.to_thread(summary_json), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app[RATES_KEY] = CpuRates()
    app.router.add_get("/stats/summary", stats_summary)
