"""/stats/summary in the kubelet's statsapi shape: node, pods, containers, filesystems;
usageNanoCores as the rate between two scrapes; only_cpu_and_memory leaves filesystems out;
a real process tree and real files end to end through the route."""

import asyncio
import json
import subprocess
import sys
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vnode.kubelet_api import stats_summary
from vnode.kubelet_api.context import CTX_KEY, ApiContext
from vnode.kubelet_api.snapshot import ContainerSample, Snapshot
from vnode.kubelet_api.stats_summary import CpuRates, PodFs, Reading, build
from vnode.provider.diskusage import DirUsage, Filesystem, PathUsage, dir_usage
from vnode.provider.stats import Usage
from vnode.provider.supervisor import Instance

T0 = 1_700_000_000.0
FS = Filesystem(capacity_bytes=500 << 30, available_bytes=200 << 30, used_bytes=300 << 30, inodes=1000, inodes_free=400)


def _instance(pod: str, container: str, *, uid: str | None = None, pid_path: str = "", log_path: str = "", sandbox: str = "",
              volumes: dict | None = None, started_at: float = T0) -> Instance:
    return Instance(pod_uid=uid or "u-" + pod, namespace="ns", pod_name=pod, container=container, instance=0, shim_pid=1,
                    shim_start=0.0, started_at=started_at, port=8080, host="198.18.0.2", log_path=log_path, exit_path="",
                    pid_path=pid_path, args=[], image="ghcr.io/ggml-org/llama.cpp:server", sandbox=sandbox,
                    volumes=volumes or {})


def _usage(ts: float, cpu: float, wss: int, *, faults: int | None = 10) -> Usage:
    return Usage(timestamp=ts, cpu_seconds=cpu, working_set_bytes=wss, rss_bytes=wss - 1, usage_bytes=wss,
                 page_faults=faults, major_page_faults=1 if faults is not None else None, processes=2)


def _reading(ts: float, cpu_a: float, cpu_b: float) -> Reading:
    """One pod with two containers, a sandbox, logs and a model volume; plain data."""
    a, b = _instance("gemma", "server", started_at=T0 + 5), _instance("gemma", "sidecar", started_at=T0 + 7)
    node = Usage(timestamp=ts, cpu_seconds=1000 + cpu_a + cpu_b, working_set_bytes=8 << 30, rss_bytes=6 << 30,
                 usage_bytes=10 << 30, available_bytes=24 << 30, page_faults=5000, major_page_faults=50)
    snap = Snapshot(node=node, containers=[ContainerSample(a, _usage(ts, cpu_a, 3 << 30)),
                                           ContainerSample(b, _usage(ts, cpu_b, 1 << 20, faults=None))])
    logs = {a.container_id: DirUsage(FS, PathUsage(bytes=40_960, inodes=2)),
            b.container_id: DirUsage(FS, PathUsage(bytes=4096, inodes=1))}
    pods_fs = {"u-gemma": PodFs(rootfs=DirUsage(FS, PathUsage(bytes=8192, inodes=3)),
                                volumes={"models": DirUsage(FS, PathUsage(bytes=2 << 30, inodes=1))})}
    return Reading(snap=snap, boot_time=T0 - 3600, agent=_usage(ts, 2.0, 50 << 20), agent_started=T0, node_fs=FS,
                   image_fs=DirUsage(FS, PathUsage(bytes=5 << 30, inodes=7)), logs=logs, pods_fs=pods_fs)


def _dump(summary) -> dict:
    return json.loads(summary.to_json())


def test_summary_shape_and_pod_totals():
    rates = CpuRates()
    first = _dump(build(_reading(T0 + 100, 10.0, 1.0), node_name="mac-1", rates=rates))
    node = first["node"]
    assert node["nodeName"] == "mac-1" and node["startTime"] == "2023-11-14T21:13:20Z"
    assert node["cpu"] == {"time": "2023-11-14T22:15:00Z", "usageCoreNanoSeconds": 1011 * 10**9}  # no rate yet
    assert node["memory"] == {"time": "2023-11-14T22:15:00Z", "availableBytes": 24 << 30, "usageBytes": 10 << 30,
                              "workingSetBytes": 8 << 30, "rssBytes": 6 << 30, "pageFaults": 5000, "majorPageFaults": 50}
    assert node["fs"] == {"time": "2023-11-14T22:15:00Z", "availableBytes": 200 << 30, "capacityBytes": 500 << 30,
                          "usedBytes": 300 << 30, "inodesFree": 400, "inodes": 1000, "inodesUsed": 600}
    assert node["runtime"]["imageFs"]["usedBytes"] == 5 << 30 and node["runtime"]["imageFs"]["inodesUsed"] == 7
    assert [c["name"] for c in node["systemContainers"]] == ["kubelet", "pods"]
    (pod,) = first["pods"]
    assert pod["podRef"] == {"name": "gemma", "namespace": "ns", "uid": "u-gemma"}
    assert pod["startTime"] == "2023-11-14T22:13:25Z"  # the earliest container
    server, sidecar = pod["containers"]
    assert server["name"] == "server" and server["startTime"] == "2023-11-14T22:13:25Z"
    assert server["memory"]["workingSetBytes"] == 3 << 30 and server["memory"]["pageFaults"] == 10
    assert "pageFaults" not in sidecar["memory"]  # unknown stays absent, never 0
    assert server["logs"]["usedBytes"] == 40_960 and server["logs"]["capacityBytes"] == 500 << 30
    assert server["rootfs"]["usedBytes"] == 8192 == sidecar["rootfs"]["usedBytes"]  # one sandbox per pod
    assert pod["memory"]["workingSetBytes"] == (3 << 30) + (1 << 20) and "pageFaults" not in pod["memory"]
    assert pod["cpu"]["usageCoreNanoSeconds"] == 11 * 10**9
    # sandbox once plus every container's logs
    assert pod["ephemeral-storage"]["usedBytes"] == 8192 + 40_960 + 4096 and pod["ephemeral-storage"]["inodesUsed"] == 6
    assert pod["volume"] == [{"time": "2023-11-14T22:15:00Z", "availableBytes": 200 << 30, "capacityBytes": 500 << 30,
                              "usedBytes": 2 << 30, "inodesFree": 400, "inodes": 1000, "inodesUsed": 1, "name": "models"}]
    assert pod["process_stats"] == {"process_count": 4}
    # Ten seconds later: server used 5 s of CPU (0.5 core), sidecar 1 s (0.1 core).
    second = _dump(build(_reading(T0 + 110, 15.0, 2.0), node_name="mac-1", rates=rates))
    (pod,) = second["pods"]
    server, sidecar = pod["containers"]
    assert server["cpu"]["usageNanoCores"] == 500_000_000 and sidecar["cpu"]["usageNanoCores"] == 100_000_000
    assert pod["cpu"]["usageNanoCores"] == 600_000_000
    assert second["node"]["cpu"]["usageNanoCores"] == 600_000_000
    assert second["node"]["systemContainers"][1]["cpu"]["usageNanoCores"] == 600_000_000  # "pods": all containers


def test_only_cpu_and_memory_leaves_filesystems_out():
    got = _dump(build(_reading(T0, 1.0, 1.0), node_name="mac-1", rates=CpuRates(), only_cpu_and_memory=True))
    assert set(got["node"]) == {"nodeName", "startTime", "systemContainers", "cpu", "memory"}
    (pod,) = got["pods"]
    assert set(pod) == {"podRef", "startTime", "containers", "cpu", "memory"}
    assert all(set(c) == {"name", "startTime", "cpu", "memory"} for c in pod["containers"])


def test_cpu_rate_between_scrapes():
    rates = CpuRates(min_window=1.0)
    assert rates.observe("c", 100.0, 50.0) is None  # the first reading has nothing to compare with
    assert rates.observe("c", 102.0, 51.0) == 500_000_000
    # a second client 0.2 s later: the rate so far, and the 102.0 reading stays the baseline
    assert rates.observe("c", 102.2, 51.2) == 500_000_000
    assert rates.observe("c", 104.0, 53.0) == 1_000_000_000
    assert rates.observe("c", 106.0, 1.0) is None  # the counter went back: a new process, start over
    assert rates.observe("c", 107.0, 1.25) == 250_000_000
    rates.retain({"other"})
    assert rates.observe("c", 108.0, 2.0) is None  # forgotten once it was not seen


async def test_route_reads_real_processes_and_files(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", "x = bytearray(32 << 20)\nwhile True: pass"])
    try:
        cdir, sandbox, store = tmp_path / "c", tmp_path / "sandbox", tmp_path / "store"
        for d in (cdir, sandbox, store):
            d.mkdir()
        (cdir / "0.pid.json").write_text(json.dumps({"pid": server.pid}))
        (cdir / "0.log").write_bytes(b"l" * 30_000)
        (cdir / "0.log.1").write_bytes(b"l" * 30_000)
        (sandbox / "slot.bin").write_bytes(b"s" * 20_000)
        (store / "m.gguf").write_bytes(b"GGUF" + b"\0" * 300_000)
        inst = _instance("gemma", "server", pid_path=str(cdir / "0.pid.json"), log_path=str(cdir / "0.log"),
                         sandbox=str(sandbox), volumes={"models": str(store)}, started_at=time.time())
        gone = _instance("gone", "server", pid_path=str(tmp_path / "missing.pid.json"))
        ctx = ApiContext(node_name="mac-1", pods=None, supervisor=None, log_dir=None, running=lambda: [inst, gone],
                         state_dir=tmp_path, store_usage=lambda: dir_usage(store))
        app = web.Application()
        app[CTX_KEY] = ctx
        stats_summary.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/stats/summary")
            assert resp.status == 200 and resp.content_type == "application/json"
            first = await resp.json()
            await asyncio.sleep(1.2)
            second = await (await client.get("/stats/summary")).json()
            only = await (await client.get("/stats/summary", params={"only_cpu_and_memory": "true"})).json()
            not_only = await (await client.get("/stats/summary", params={"only_cpu_and_memory": "1"})).json()
    finally:
        server.kill()
        server.wait()
    (pod,) = first["pods"]  # the vanished server's pod is not listed
    (c,) = pod["containers"]
    assert pod["podRef"]["name"] == "gemma" and "usageNanoCores" not in c["cpu"]  # no rate from one reading
    assert c["logs"]["usedBytes"] >= 60_000 and c["logs"]["inodesUsed"] == 2  # the log and its rotation
    assert c["rootfs"]["usedBytes"] >= 20_000
    assert pod["ephemeral-storage"]["usedBytes"] == c["logs"]["usedBytes"] + c["rootfs"]["usedBytes"]
    assert pod["volume"][0]["name"] == "models" and pod["volume"][0]["usedBytes"] >= 300_000
    assert first["node"]["runtime"]["imageFs"]["usedBytes"] == pod["volume"][0]["usedBytes"]
    assert first["node"]["fs"]["capacityBytes"] > 0
    (c2,) = second["pods"][0]["containers"]
    assert c2["cpu"]["usageNanoCores"] > 0 and second["node"]["cpu"]["usageNanoCores"] > 0
    assert c2["cpu"]["usageCoreNanoSeconds"] > 0 and c2["memory"]["workingSetBytes"] > 32 << 20
    assert "fs" not in only["node"] and "logs" not in only["pods"][0]["containers"][0]
    assert "fs" in not_only["node"]  # only the exact value "true" counts, as in the kubelet
